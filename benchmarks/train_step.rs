//! Training step time of the CAM classifier (forward + loss + backward + SGD update) on
//! random inputs: the same model, batch and input size as benchmarks/train_step_torch.py.
//! Prints one JSON line with the median step time after warm-up.
//!
//!     cargo bench --bench train_step -- [--depth resnet50] [--batch 8] [--size 224] [--steps 6] [--threads 2]

use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind, Tensor};
use wsss_dist::loss::multilabel::multilabel_soft_margin;
use wsss_dist::model::cam::CamModel;
use wsss_dist::model::resnet::Depth;
use wsss_dist::optim::{Sgd, SgdSettings};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "resnet50")]
    depth: String,
    #[arg(long, default_value_t = 8)]
    batch: i64,
    #[arg(long, default_value_t = 224)]
    size: i64,
    #[arg(long, default_value_t = 20)]
    classes: i64,
    #[arg(long, default_value_t = 6)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// cargo bench passes --bench to the harness.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let depth: Depth = serde_json::from_value(serde_json::json!(args.depth)).expect("resnet18|34|50|101");
    let model = CamModel::new(depth, [2, 2, 2, 1], args.classes, Device::Cpu);
    let groups = model.param_groups(10.0);
    let total = (args.warmup + args.steps) as u64;
    let mut sgd = Sgd::new(SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 1e-4, poly_power: 0.9, total_steps: total }, groups);
    let images = Tensor::randn([args.batch, 3, args.size, args.size], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(2, [args.batch, args.classes], (Kind::Float, Device::Cpu));
    let mut times = Vec::new();
    for step in 0..total as usize {
        let start = Instant::now();
        let logits = model.net.logits(&model.net.features(&images, Kind::Float));
        let loss = multilabel_soft_margin(&logits, &labels);
        sgd.zero_grad();
        loss.backward();
        sgd.step();
        let _ = loss.double_value(&[]);
        if step >= args.warmup {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("{}", serde_json::json!({ "tool": "wsss-dist", "median_step_s": median, "steps": times }));
}
