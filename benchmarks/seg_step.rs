//! The segmenter's training step as `train seg` runs it (the task's loss, backward, SGD update of
//! its parameter groups) on random inputs: the same model, batch and input size as
//! benchmarks/seg_step_torch.py. Prints one JSON line with the median step time after warm-up;
//! `--regularizer` adds the dense-CRF loss or DFR, so runs give their share of the step. Under
//! mpirun the step is data-parallel as `train seg` runs it (synchronised BatchNorms, gradient
//! buckets summed over MPI; `--overlap` during backward) and rank 0 prints the JSON, with
//! `allreduce_wait_s`, the median wait for the sums after backward.
//!
//! With `--dump DIR` it times nothing and writes the forward-parity files that
//! benchmarks/check_deeplab_torch.py compares against PyTorch: `weights.safetensors` (random
//! weights, torchvision/VainF names), `input.safetensors` (`images`) and `out.safetensors`
//! (`eval`: inference logits; `train.N`: the training outputs, dropout off, head BatchNorms on
//! batch statistics).
//!
//!     cargo bench --bench seg_step -- [--kind deeplab_v3plus] [--arch mobilenet_v2] [--batch 4] [--size 321] [--steps 5] [--threads 2] [--regularizer none] [--overlap] [--bucket-mb 25]
//!     launch/mpirun.sh 2 <bench binary> --threads 1 --overlap
//!     cargo bench --bench seg_step -- --kind deeplab_v2 --arch resnet50 --size 97 --dump DIR

#[path = "timing.rs"]
mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};
use wsss_dist::config::Config;
use wsss_dist::data::loader::Batch;
use wsss_dist::dist::{connect, Backend, Communicator, GradientBuckets, World};
use wsss_dist::engine::trainer::{Task, TaskContext};
use wsss_dist::model::backbone::Arch;
use wsss_dist::model::deeplab::SegKind;
use wsss_dist::model::resnet::Depth;
use wsss_dist::model::weights;
use wsss_dist::optim::Sgd;
use wsss_dist::stages::train_seg::SegTask;

#[derive(Parser)]
struct Args {
    /// deeplab_v3plus | deeplab_v2
    #[arg(long, default_value = "deeplab_v3plus")]
    kind: String,
    /// mobilenet_v2 | resnet18 | resnet50 | resnet101
    #[arg(long, default_value = "mobilenet_v2")]
    arch: String,
    #[arg(long, default_value_t = 4)]
    batch: i64,
    #[arg(long, default_value_t = 321)]
    size: i64,
    /// Classes including background (VOC: 21).
    #[arg(long, default_value_t = 21)]
    classes: i64,
    #[arg(long, default_value_t = 5)]
    steps: usize,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// none | dense_crf | dfr (`seg.loss.regularizer`).
    #[arg(long, default_value = "none")]
    regularizer: String,
    #[arg(long)]
    dump: Option<PathBuf>,
    #[arg(long)]
    overlap: bool,
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// cargo bench passes --bench to the harness.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The `[seg]` settings of `args`: v2 at output stride 8, v3+ at 16; no dropout for a dump.
fn config(args: &Args) -> Config {
    let mut config = Config::default();
    let model = &mut config.seg.model;
    model.kind = serde_json::from_value(serde_json::json!(args.kind)).expect("deeplab_v3plus|deeplab_v2");
    (model.backbone.arch, model.backbone.depth) = match args.arch.as_str() {
        "mobilenet_v2" => (Arch::MobilenetV2, Depth::Resnet101),
        depth => (Arch::Resnet, serde_json::from_value(serde_json::json!(depth)).expect("mobilenet_v2|resnet18|34|50|101")),
    };
    model.output_stride = if model.kind == SegKind::DeeplabV2 { 8 } else { 16 };
    if args.dump.is_some() {
        model.dropout = 0.0;
    }
    config.seg.loss.regularizer = serde_json::from_value(serde_json::json!(args.regularizer)).expect("none|dense_crf|dfr");
    config.seg.train.steps = (args.warmup + args.steps) as u64;
    config
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let config = config(&args);
    let world = World::from_env().expect("joins the MPI world when launched by mpirun");
    let comm: Arc<dyn Communicator> = Arc::from(connect(&world, Backend::Mpi, Device::Cpu).expect("a communicator"));
    // The task counts classes without background.
    let context = TaskContext { device: Device::Cpu, num_classes: args.classes - 1, comm: comm.clone() };
    let task = SegTask::new(&config, &context);
    let images = Tensor::randn([args.batch, 3, args.size, args.size], (Kind::Float, Device::Cpu));
    if let Some(dir) = &args.dump {
        return dump(&task, &images, dir);
    }
    let masks = Tensor::randint(args.classes, [args.batch, args.size, args.size], (Kind::Int64, Device::Cpu));
    let batch = Batch {
        images,
        labels: Tensor::zeros([args.batch, args.classes - 1], (Kind::Float, Device::Cpu)),
        masks: Some(masks),
        ids: vec![],
        indices: (0..args.batch as usize).collect(),
        skipped: vec![],
        cursor: Default::default(),
    };
    let train = &config.seg.train;
    let mut sgd = Sgd::new(train.sgd_settings(train.steps), task.param_groups());
    let params: Vec<Tensor> = sgd.params().map(|p| p.shallow_clone()).collect();
    let bucket_bytes = (args.bucket_mb * 1048576.0) as usize;
    let mut buckets = if args.overlap {
        // Their own communicator, as the trainer gives them: the BatchNorms' sums use `comm`.
        GradientBuckets::overlapped(&params, bucket_bytes, Arc::from(connect(&world, Backend::Mpi, Device::Cpu)?))?
    } else {
        GradientBuckets::new(&params, bucket_bytes, comm)
    };
    let mut waits = Vec::new();
    let (median, times) = timing::median_step_seconds(train.steps as usize, args.warmup, |step| {
        sgd.zero_grad();
        let loss = task.loss(&batch, Kind::Float, &mut ChaCha8Rng::seed_from_u64(step as u64));
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
        waits.sort_by(f64::total_cmp);
        let variant = format!("{}/{}+{}", args.kind, args.arch, args.regularizer);
        println!(
            "{}",
            serde_json::json!({ "tool": "wsss-dist", "variant": variant, "ranks": world.size, "overlap": args.overlap, "bucket_mb": args.bucket_mb,
                "median_step_s": median, "allreduce_wait_s": waits[waits.len() / 2], "images_per_s": (args.batch as usize * world.size) as f64 / median, "steps": times })
        );
    }
    Ok(())
}

/// The parity files: the weights before any training-mode pass (which moves the head's running
/// statistics), the inference logits, then the training outputs.
fn dump(task: &SegTask, images: &Tensor, dir: &PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    weights::save(&weights::named(task.vars()), &dir.join("weights.safetensors"))?;
    weights::save(&BTreeMap::from([("images".to_string(), images.shallow_clone())]), &dir.join("input.safetensors"))?;
    let mut out = BTreeMap::from([("eval".to_string(), tch::no_grad(|| task.net().logits(images)))]);
    let train = tch::no_grad(|| task.net().forward_train(images, Kind::Float));
    out.extend(train.logits.into_iter().enumerate().map(|(i, l)| (format!("train.{i}"), l)));
    weights::save(&out, &dir.join("out.safetensors"))?;
    Ok(())
}
