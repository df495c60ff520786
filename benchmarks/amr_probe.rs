//! AMR diagnosis (benchmarks/results/voc.md): for an AMR run's checkpoint, how many of the
//! (image, present class) logit maps of each branch are <= 0 everywhere, their mean logit and
//! mean ReLU map, with the compensation branch run as `cam` runs it (AMM spatial BatchNorm on
//! running statistics, the image batched with its flip), with batch statistics, and alone.
//!
//!   cargo bench --bench amr_probe -- RUN_DIR [IMAGE_DATASET]     (default: the run's data.val)
use std::path::Path;
use tch::{Device, Kind, Tensor};
use wsss_dist::config::Config;
use wsss_dist::data::codec::decode_row_image;
use wsss_dist::data::Dataset;
use wsss_dist::model::layers::Mode;
use wsss_dist::model::{weights, Base, Model, Network};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let run = Path::new(&args[1]);
    let config = Config::load(Some(&run.join("config.toml")), &[]).unwrap();
    let ds = Dataset::open(args.get(2).map(Path::new).unwrap_or(&config.data.val)).unwrap();
    let model = Model::new(Base::Amr, config.model.backbone(), ds.manifest().num_classes() as i64, Device::Cpu);
    let ckpt = wsss_dist::checkpoint::model_in(run).unwrap().unwrap().path;
    weights::restore(&model.vs, &ckpt).unwrap();
    let Network::Amr(net) = &model.net else { panic!() };
    let mean = Tensor::from_slice(&config.loader.mean).view([3, 1, 1]);
    let std = Tensor::from_slice(&config.loader.std).view([3, 1, 1]);
    let rows = ds.read(&(0..ds.len()).collect::<Vec<_>>()).unwrap();
    let mut stats = std::collections::BTreeMap::<String, (usize, usize, f64, f64)>::new();
    for row in &rows {
        let rgb = decode_row_image(row).unwrap();
        let img = Tensor::from_slice(&rgb.pixels).view([rgb.height as i64, rgb.width as i64, 3]).permute([2, 0, 1]).to_kind(Kind::Float) / 255.0;
        let img = ((img - &mean) / &std).unsqueeze(0);
        let pair = Tensor::cat(&[&img, &img.flip([3])], 0);
        let classes: Vec<i64> = row.labels.iter().map(|&c| c as i64 - 1).collect();
        let idx = Tensor::from_slice(&classes);
        for (name, input, mode, branch) in [
            ("comp eval pair", &pair, Mode::Eval, &net.compensation),
            ("comp train pair", &pair, Mode::Train, &net.compensation),
            ("comp eval single", &img, Mode::Eval, &net.compensation),
            ("spot eval pair", &pair, Mode::Eval, &net.spotlight),
        ] {
            let out = tch::no_grad(|| branch.forward(input, Kind::Float, mode));
            let maps = out.logit_maps.get(0).index_select(0, &idx);
            let logits = out.logits.get(0).index_select(0, &idx);
            let e = stats.entry(name.to_string()).or_default();
            for c in 0..classes.len() as i64 {
                e.0 += 1;
                if maps.get(c).max().double_value(&[]) <= 0.0 {
                    e.1 += 1;
                }
                e.2 += logits.double_value(&[c]);
                e.3 += maps.get(c).relu().mean(Kind::Float).double_value(&[]);
            }
        }
    }
    for (name, (n, zero, logit, mean_relu)) in stats {
        println!("{name:>18}: {n} class maps, {zero} all <= 0, mean logit {:.3}, mean ReLU map {:.4}", logit / n as f64, mean_relu / n as f64);
    }
}
