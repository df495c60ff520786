//! Training step time of the classifier (forward + loss + backward + SGD update) on random
//! inputs: the same model, batch and input size as benchmarks/train_step_torch.py. `--base amr`
//! (frozen spotlight, as the reference trains it), `--isl` and `--fsl` time the method variants.
//! Prints one JSON line with the median step time after warm-up. Under mpirun the step is
//! data-parallel (gradient buckets all-reduced over MPI, as `train cam` does) and rank 0 prints
//! images/s over all ranks; compare with `torchrun ... train_step_torch.py` (PyTorch DDP, gloo).
//! `--overlap` starts the buckets' all-reduces during backward (`dist.overlap`); the JSON's
//! `allreduce_wait_s` is the median wait for them after backward (the exposed communication).
//!
//!     cargo bench --bench train_step -- [--depth resnet50] [--batch 8] [--size 224] [--steps 6] [--threads 2] [--base amr] [--isl] [--fsl] [--overlap] [--bucket-mb 25]
//!     launch/mpirun.sh 2 <bench binary> --depth resnet18 --threads 1

#[path = "timing.rs"]
mod timing;

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};
use wsss_dist::config::MethodConfig;
use wsss_dist::dist::{connect, Backend, Communicator, GradientBuckets, World};
use wsss_dist::loss::Objective;
use wsss_dist::model::backbone::BackboneSpec;
use wsss_dist::model::{Base, Model};
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
    /// cam | amr
    #[arg(long, default_value = "cam")]
    base: String,
    #[arg(long)]
    isl: bool,
    #[arg(long)]
    fsl: bool,
    #[arg(long)]
    overlap: bool,
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// cargo bench passes --bench to the harness.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let spec = match args.depth.as_str() {
        "mobilenet_v2" => BackboneSpec::mobilenet_v2([2, 2, 2, 1]),
        depth => BackboneSpec::resnet(serde_json::from_value(serde_json::json!(depth)).expect("resnet18|34|50|101|mobilenet_v2"), [2, 2, 2, 1]),
    };
    let base: Base = serde_json::from_value(serde_json::json!(args.base)).expect("cam|amr");
    let mut method = MethodConfig { base, ..Default::default() };
    (method.isl.enabled, method.fsl.enabled) = (args.isl, args.fsl);
    let model = Model::new(base, spec, args.classes, Device::Cpu);
    if base == Base::Amr {
        model.freeze("spotlight.");
    }
    let objective = Objective::new(method.objective_terms(), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let groups = model.param_groups(10.0, |branch| if branch == "compensation" { 10.0 } else { 1.0 });
    let total = (args.warmup + args.steps) as u64;
    let mut sgd = Sgd::new(SgdSettings { lr: 0.01, momentum: 0.9, weight_decay: 1e-4, poly_power: 0.9, total_steps: total }, groups);
    let world = World::from_env().expect("joins the MPI world");
    let comm: Arc<dyn Communicator> = Arc::from(connect(&world, Backend::Mpi, Device::Cpu).expect("an MPI communicator"));
    let params: Vec<Tensor> = sgd.params().map(|p| p.shallow_clone()).collect();
    let bucket_bytes = (args.bucket_mb * 1048576.0) as usize;
    let mut buckets = if args.overlap {
        GradientBuckets::overlapped(&params, bucket_bytes, comm).expect("readiness hooks")
    } else {
        GradientBuckets::new(&params, bucket_bytes, comm)
    };
    let mut waits = Vec::new();
    let images = Tensor::randn([args.batch, 3, args.size, args.size], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(2, [args.batch, args.classes], (Kind::Float, Device::Cpu));
    let (median, times) = timing::median_step_seconds(total as usize, args.warmup, |step| {
        let loss = objective.loss(&model.net, &images, &labels, Kind::Float, &mut ChaCha8Rng::seed_from_u64(step as u64));
        sgd.zero_grad();
        buckets.arm();
        loss.backward();
        let wait = Instant::now();
        buckets.all_reduce().expect("gradient all-reduce");
        if step >= args.warmup {
            waits.push(wait.elapsed().as_secs_f64());
        }
        buckets.scale(1.0 / world.size as f64);
        sgd.step();
        let _ = loss.double_value(&[]);
    });
    if world.is_root() {
        let images_per_s = (args.batch as usize * world.size) as f64 / median;
        let variant = format!("{}{}{}", args.base, if args.isl { "+isl" } else { "" }, if args.fsl { "+fsl" } else { "" });
        waits.sort_by(f64::total_cmp);
        let allreduce_wait_s = waits[waits.len() / 2];
        println!(
            "{}",
            serde_json::json!({ "tool": "wsss-dist", "variant": variant, "ranks": world.size, "overlap": args.overlap, "bucket_mb": args.bucket_mb,
                "median_step_s": median, "allreduce_wait_s": allreduce_wait_s, "images_per_s": images_per_s, "steps": times })
        );
    }
}
