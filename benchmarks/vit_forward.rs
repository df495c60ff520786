//! Runs the CAM network of a ViT on the tensors of a safetensors file and writes its outputs,
//! for the parity check against timm (`benchmarks/check_vit_timm.py`):
//!
//!     cargo bench --bench vit_forward -- --weights W.safetensors --input IN.safetensors --out OUT.safetensors --size tiny --layers 4
//!
//! W holds timm's ViT tensors and a CAM `classifier.weight` [C, D, 1, 1]; IN holds `images`
//! [N, 3, H, W]. OUT gets `features` (the patch tokens as a map), `logits` (the CAM logits
//! W·GAP(F)) and `attention` (the patch attention of the last `--layers` blocks, averaged over
//! blocks and heads, each row scaled to sum to 1: [N, h·w, h·w]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use wsss_dist::model::backbone::BackboneSpec;
use wsss_dist::model::cam::CamNet;
use wsss_dist::model::layers::Mode;
use wsss_dist::model::vit::VitSize;
use wsss_dist::model::weights;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    weights: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    size: Size,
    #[arg(long, default_value_t = 4)]
    layers: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Size {
    Tiny,
    Small,
    Base,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = match args.size {
        Size::Tiny => VitSize::Tiny,
        Size::Small => VitSize::Small,
        Size::Base => VitSize::Base,
    };
    let file: BTreeMap<String, Tensor> = Tensor::read_safetensors(&args.weights)?.into_iter().collect();
    let classes = file.get("classifier.weight").ok_or_else(|| anyhow::anyhow!("{}: no classifier.weight", args.weights.display()))?.size()[0];
    let vs = VarStore::new(Device::Cpu);
    let net = CamNet::new(&vs.root(), BackboneSpec::vit(size), classes);
    weights::import(&vs, &args.weights, &weights::TORCHVISION_BACKBONE)?;
    let input: BTreeMap<String, Tensor> = Tensor::read_safetensors(&args.input)?.into_iter().collect();
    let images = input.get("images").ok_or_else(|| anyhow::anyhow!("{}: no `images` tensor", args.input.display()))?;
    let out = tch::no_grad(|| {
        let features = net.features(images, Kind::Float, Mode::Eval);
        let logits = net.logits(&features);
        let attention: Vec<Tensor> = (0..images.size()[0]).map(|i| net.vit_attention(&images.get(i), args.layers).expect("a ViT has attention").0).collect();
        BTreeMap::from([("features".to_string(), features), ("logits".to_string(), logits), ("attention".to_string(), Tensor::stack(&attention, 0))])
    });
    weights::save(&out, &args.out)?;
    Ok(())
}
