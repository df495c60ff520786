//! The gradient all-reduce of data-parallel training, run under mpirun: a ResNet-50-sized set
//! of gradients (the shapes of torchvision's ResNet-50 with a 1000-class head, 25.6M f32)
//! all-reduced in 25 MiB buckets as `train cam` does, against one plain MPI all-reduce of the
//! same number of floats. Rank 0 prints one JSON line (median seconds of `--repeats`).
//!
//!     launch/mpirun.sh 2 <bench binary> [--repeats 10] [--bucket-mb 25]

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tch::{Device, Kind, Tensor};
use wsss_dist::dist::{connect, Backend, Communicator, GradientBuckets, World};
use wsss_dist::model::backbone::BackboneSpec;
use wsss_dist::model::resnet::Depth;
use wsss_dist::model::weights;
use wsss_dist::model::{Base, Model};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    #[arg(long, default_value_t = 25.0)]
    bucket_mb: f64,
    /// cargo bench passes --bench to the harness.
    #[arg(long, hide = true)]
    bench: bool,
}

fn median_seconds(comm: &dyn Communicator, repeats: usize, mut run: impl FnMut()) -> f64 {
    run(); // warm-up
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            comm.barrier().expect("barrier");
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let args = Args::parse();
    let world = World::from_env().expect("joins the MPI world");
    let comm: Arc<dyn Communicator> = Arc::from(connect(&world, Backend::Mpi, Device::Cpu).expect("an MPI communicator"));
    let model = Model::new(Base::Cam, BackboneSpec::resnet(Depth::Resnet50, [2, 2, 2, 2]), 1000, Device::Cpu);
    let grads: Vec<Tensor> = weights::named(&model.vs)
        .into_iter()
        .filter(|(name, _)| !name.contains("running_"))
        .map(|(_, t)| Tensor::ones(t.size().as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let mut buckets = GradientBuckets::new(&grads, (args.bucket_mb * 1048576.0) as usize, comm.clone());
    let floats = buckets.numel();
    let bucketed = median_seconds(comm.as_ref(), args.repeats, || buckets.all_reduce().expect("bucketed all-reduce"));
    let mut flat = Tensor::ones([floats as i64], (Kind::Float, Device::Cpu));
    let plain = median_seconds(comm.as_ref(), args.repeats, || comm.all_reduce_sum(&mut flat).expect("plain all-reduce"));
    if world.is_root() {
        println!(
            "{}",
            serde_json::json!({ "ranks": world.size, "floats": floats, "tensors": grads.len(), "buckets": buckets.len(), "bucketed_s": bucketed, "plain_mpi_s": plain, "ratio": bucketed / plain })
        );
    }
}
