//! Runs a backbone on the tensors of a safetensors file and writes its features, for the
//! parity check against torchvision (`benchmarks/check_mobilenet_torch.py`):
//!
//!     cargo bench --bench backbone_forward -- --weights W.safetensors --input IN.safetensors --out OUT.safetensors [--strides 2,2,2,1]
//!
//! IN holds `images` [N, 3, H, W]; OUT gets `features` (the backbone's last map) and `logits`
//! (ImageNet logits: global average pool and the file's `classifier.1` linear layer, as
//! torchvision's head does in eval mode).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use wsss_dist::model::backbone::{Backbone, BackboneSpec};
use wsss_dist::model::layers::Mode;
use wsss_dist::model::weights;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    weights: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_delimiter = ',', default_value = "2,2,2,2")]
    strides: Vec<i64>,
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let strides: [i64; 4] = args.strides.as_slice().try_into()?;
    let vs = VarStore::new(Device::Cpu);
    let backbone = Backbone::new(&vs.root(), BackboneSpec::mobilenet_v2(strides), false);
    weights::import(&vs, &args.weights, &weights::TORCHVISION_BACKBONE)?;
    let file: BTreeMap<String, Tensor> = Tensor::read_safetensors(&args.weights)?.into_iter().collect();
    let input: BTreeMap<String, Tensor> = Tensor::read_safetensors(&args.input)?.into_iter().collect();
    let images = input.get("images").ok_or_else(|| anyhow::anyhow!("{}: no `images` tensor", args.input.display()))?;
    let (features, logits) = tch::no_grad(|| {
        let features = backbone.run(&images.to_kind(Kind::Float), Mode::Eval);
        let pooled = features.mean_dim([2, 3].as_slice(), false, Kind::Float);
        let logits = pooled.linear(&file["classifier.1.weight"], Some(&file["classifier.1.bias"]));
        (features, logits)
    });
    let out = BTreeMap::from([("features".to_string(), features), ("logits".to_string(), logits)]);
    weights::save(&out, &args.out)?;
    Ok(())
}
