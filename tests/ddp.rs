//! Data-parallel training with real MPI ranks (`mpirun -n 2` on the CPU): the collectives, the
//! equivalence of 2 ranks × batch b with 1 process × batch 2b, gradient accumulation, a killed
//! and resumed 2-rank run, and `cam` / `eval cam` giving the single-process results exactly.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{as_str, launcher, mpirun, mpirun_ok, rank_process, s, wait_for, wsss_ok};
use tch::{Device, Kind, Tensor};
use wsss_dist::dist::comm::{all_gather_text, sum_values};
use wsss_dist::dist::{connect, Backend, Communicator, GradientBuckets, World};

/// 48 synthetic images of 32 px, ResNet-18, 6 steps of 8 per epoch; lr small enough that the
/// run is not chaotic (at lr 0.01 float-order differences of 1e-8 grow to 1e-4 in 6 steps).
fn tiny() -> String {
    common::tiny_config(
        r#"
[run]
name = "one"
[train]
epochs = 1
lr = 0.001
checkpoint_every = 2
keep_checkpoints = 20
[cam]
split = "val"
scales = [1.0, 0.5]
"#,
    )
}

/// A tiny dataset pair and the config in a fresh directory.
fn setup() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/val", "--images", "30", "--size", "32", "--shard-rows", "7", "--split", "val"]);
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    (tmp, s(&config).to_string())
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// The largest absolute difference between two checkpoints of `file` (same keys required).
fn max_difference(a: &Path, b: &Path, file: &str) -> f64 {
    let (a, b) = (tensors(&a.join(file)), tensors(&b.join(file)));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{file}: different tensors");
    a.iter().map(|(k, t)| (t - &b[k]).abs().max().double_value(&[])).fold(0.0, f64::max)
}

fn checkpoints(dir: &Path, run: &str) -> PathBuf {
    dir.join("runs").join(run).join("checkpoints")
}

/// Asserts that runs `a` and `b` reached the same parameters and momentum at `step`.
fn assert_same_training(dir: &Path, a: &str, b: &str, step: u64, tolerance: f64) {
    for file in [format!("step-{step:08}.safetensors"), format!("step-{step:08}.optim.safetensors")] {
        let difference = max_difference(&checkpoints(dir, a), &checkpoints(dir, b), &file);
        println!("{a} vs {b}, {file}: max |difference| = {difference:e}");
        assert!(difference <= tolerance, "{a} vs {b}, {file}: max |difference| {difference:e} > {tolerance:e}");
    }
}

/// Runs the collective checks on every rank when started by mpirun; otherwise starts this test
/// under `mpirun -n 2` and asserts that both ranks passed.
#[test]
fn collectives_on_two_ranks() {
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
        let exe = std::env::current_exe().unwrap();
        // Its own Open MPI session directory, as common::mpirun gives every job.
        let session = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .env("TMPDIR", session.path())
            .arg(launcher())
            .arg("2")
            .arg(exe)
            .args(["--exact", "collectives_on_two_ranks", "--test-threads", "1", "--nocapture"])
            .output()
            .unwrap();
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{log}");
        assert_eq!(log.matches("rank checks passed").count(), 2, "{log}");
        return;
    }
    let world = World::from_env().unwrap();
    let comm: Arc<dyn Communicator> = Arc::from(connect(&world, Backend::Auto, Device::Cpu).unwrap());
    assert_eq!((comm.backend(), comm.size()), ("mpi", 2));
    let rank = comm.rank() as f64;

    let mut floats = Tensor::from_slice(&[1.0f32 + rank as f32, -2.0]);
    comm.all_reduce_sum(&mut floats).unwrap();
    assert_eq!(Vec::<f32>::try_from(&floats).unwrap(), vec![3.0, -4.0]);
    let mut doubles = Tensor::from_slice(&[0.25 * rank, 10.0]);
    comm.all_reduce_mean(&mut doubles).unwrap();
    assert_eq!(Vec::<f64>::try_from(&doubles).unwrap(), vec![0.125, 10.0]);
    let mut ints = Tensor::from_slice(&[(1i64 << 40) + rank as i64]);
    comm.all_reduce_sum(&mut ints).unwrap();
    assert_eq!(Vec::<i64>::try_from(&ints).unwrap(), vec![(1i64 << 41) + 1]);
    let mut from_root = Tensor::from_slice(&[rank + 5.0; 3]);
    comm.broadcast(&mut from_root, 0).unwrap();
    assert_eq!(Vec::<f64>::try_from(&from_root).unwrap(), vec![5.0; 3]);
    let gathered = comm.all_gather(&Tensor::from_slice(&[rank as i64, 7])).unwrap();
    assert_eq!(Vec::<i64>::try_from(gathered.flatten(0, -1)).unwrap(), vec![0, 7, 1, 7]);
    assert_eq!(sum_values(comm.as_ref(), &[1.0, rank], Device::Cpu).unwrap(), vec![2.0, 1.0]);
    let text = if rank == 0.0 { "rank zero".to_string() } else { String::new() };
    assert_eq!(all_gather_text(comm.as_ref(), &text, Device::Cpu).unwrap(), vec!["rank zero".to_string(), String::new()]);
    comm.barrier().unwrap();

    // Gradient buckets: rank r's gradient of Σ (r+1)·x is r+1; summed over 2 ranks: 3.
    let params: Vec<Tensor> = [3i64, 5, 2].iter().map(|&n| Tensor::ones([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
    let mut buckets = GradientBuckets::new(&params, 32, comm.clone());
    assert_eq!(buckets.len(), 2);
    let loss = params.iter().map(|p| p.sum(Kind::Float) * (rank + 1.0)).fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    loss.backward();
    buckets.all_reduce().unwrap();
    for p in &params {
        assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![3.0; p.numel()]);
    }
    drop(buckets);

    // Overlapped (MPI_Iallreduce started by the hooks during backward, on a communicator of
    // their own), with the blocking sums of other collectives in between: the same sums. Rank
    // 1 leaves the first parameter (the last bucket) without a gradient, so its buckets start
    // at different moments on the two ranks, in the same order.
    let params: Vec<Tensor> = [3i64, 5, 2].iter().map(|&n| Tensor::ones([n], (Kind::Float, Device::Cpu)).set_requires_grad(true)).collect();
    let own: Arc<dyn Communicator> = Arc::from(connect(&world, Backend::Auto, Device::Cpu).unwrap());
    let mut buckets = GradientBuckets::overlapped(&params, 32, own).unwrap();
    for step in 0..3 {
        for p in &params {
            let _ = p.grad().zero_();
        }
        buckets.arm();
        let used = if rank == 1.0 { &params[1..] } else { &params[..] };
        let loss = used.iter().map(|p| p.sum(Kind::Float) * (rank + 1.0 + step as f64)).fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        loss.backward();
        assert_eq!(sum_values(comm.as_ref(), &[1.0], Device::Cpu).unwrap(), vec![2.0]);
        buckets.all_reduce().unwrap();
        let both = 3.0 + 2.0 * step as f32;
        // Rank 0's (1 + step) alone.
        assert_eq!(Vec::<f32>::try_from(params[0].grad()).unwrap(), vec![1.0 + step as f32; 3], "step {step}");
        for p in &params[1..] {
            assert_eq!(Vec::<f32>::try_from(p.grad()).unwrap(), vec![both; p.numel()], "step {step}");
        }
    }
    println!("rank checks passed");
}

/// 2 ranks with batch 4 reach the parameters of 1 process with batch 8 on the same samples,
/// up to float summation order; `cam` and `eval cam` on 2 ranks give the 1-rank bytes and figures.
#[test]
fn two_ranks_equal_one_process_with_twice_the_batch() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config]);
    let log = mpirun_ok(dir, 2, &["train", "cam", "--config", &config, "--set", "run.name=two", "--set", "loader.batch_size=4"]);
    assert!(log.contains("global batch 8 = 4 per rank x 2 rank(s) x 1 micro-batch(es)"), "{log}");
    assert_eq!(log.matches("trained steps 0..6").count(), 1, "only rank 0 logs:\n{log}");
    assert_same_training(dir, "one", "two", 6, 1e-5);
    // Overlapped with backward (the default) and blocking: the same bytes.
    assert!(log.contains("all-reduced during backward"), "{log}");
    let blocking =
        mpirun_ok(dir, 2, &["train", "cam", "--config", &config, "--set", "run.name=blocking", "--set", "loader.batch_size=4", "--set", "dist.overlap=false"]);
    assert!(!blocking.contains("all-reduced during backward"), "{blocking}");
    common::assert_same_files(&checkpoints(dir, "two"), &checkpoints(dir, "blocking"), ".safetensors");

    // The CAMs of one model written by 1 and by 2 ranks, and their evaluation by 1 and 2 ranks.
    let checkpoint = checkpoints(dir, "one").join("step-00000006.safetensors");
    let cam_args = |out: &str| {
        vec![
            "cam".to_string(),
            "--config".into(),
            config.clone(),
            "--set".into(),
            format!("cam.checkpoint={}", s(&checkpoint)),
            "--set".into(),
            format!("cam.out={out}"),
        ]
    };
    wsss_ok(dir, &as_str(&cam_args("cams1")));
    mpirun_ok(dir, 2, &as_str(&cam_args("cams2")));
    for shard in 0..5 {
        let name = format!("part-{shard:05}.parquet");
        assert!(std::fs::read(dir.join("cams1").join(&name)).unwrap() == std::fs::read(dir.join("cams2").join(&name)).unwrap(), "{name} differs");
    }
    let eval = |ranks: usize| {
        let args = ["eval", "cam", "--config", &config, "--set", "cam.out=cams2", "--set", &format!("run.name=eval{ranks}")];
        if ranks == 1 {
            wsss_ok(dir, &args);
        } else {
            mpirun_ok(dir, 2, &args);
        }
        std::fs::read_to_string(dir.join(format!("runs/eval{ranks}/eval/cam.json"))).unwrap()
    };
    let (single, double) = (eval(1), eval(2));
    assert!(single.contains("\"images\": 30"), "{single}");
    assert_eq!(single, double, "eval cam on 2 ranks must equal 1 rank exactly");
}

/// A ViT-Tiny CAM classifier from a random start: 2 ranks with batch 4 reach the parameters of 1
/// process with batch 8; its CAMs, AD-CAM'd along its own attention, are the same bytes on 2
/// ranks.
#[test]
fn a_vit_on_two_ranks_equals_one_process_with_twice_the_batch() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let vit = ["--set", "model.arch=vit", "--set", "model.vit=tiny", "--set", "model.init="];
    wsss_ok(dir, &[&["train", "cam", "--config", &config, "--set", "run.name=vit1"], &vit[..]].concat());
    let log = mpirun_ok(dir, 2, &[&["train", "cam", "--config", &config, "--set", "run.name=vit2", "--set", "loader.batch_size=4"], &vit[..]].concat());
    assert!(log.contains("global batch 8 = 4 per rank x 2 rank(s)"), "{log}");
    assert_same_training(dir, "vit1", "vit2", 6, 1e-5);
    let checkpoint = format!("cam.checkpoint={}", s(&checkpoints(dir, "vit1").join("step-00000006.safetensors")));
    let cam = ["cam", "--config", &config, "--set", "cam.refine=ad_cam", "--set", &checkpoint];
    wsss_ok(dir, &[&cam[..], &vit[..], &["--set", "cam.out=vit_cams1"]].concat());
    mpirun_ok(dir, 2, &[&cam[..], &vit[..], &["--set", "cam.out=vit_cams2"]].concat());
    for shard in 0..5 {
        let name = format!("part-{shard:05}.parquet");
        assert!(std::fs::read(dir.join("vit_cams1").join(&name)).unwrap() == std::fs::read(dir.join("vit_cams2").join(&name)).unwrap(), "{name} differs");
    }
    let manifest = std::fs::read_to_string(dir.join("vit_cams1/_manifest.json")).unwrap();
    assert!(manifest.contains("AD-CAM"), "{manifest}");
}

/// Accumulating 2 micro-batches of 4 is one step with a batch of 8.
#[test]
fn accumulation_equals_a_larger_batch() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config]);
    let log = String::from_utf8_lossy(
        &common::wsss(dir, &["train", "cam", "--config", &config, "--set", "run.name=acc", "--set", "loader.batch_size=4", "--set", "train.accumulate=2"])
            .stderr,
    )
    .into_owned();
    assert!(log.contains("global batch 8 = 4 per rank x 1 rank(s) x 2 micro-batch(es); 6 steps per epoch"), "{log}");
    assert_same_training(dir, "one", "acc", 6, 1e-5);
}

/// Killing one rank of a 2-rank run ends the job (no rank hangs); resuming on 2 ranks reaches
/// what an uninterrupted 2-rank run reaches, and a copy resumes on 1 rank too.
#[test]
fn a_killed_two_rank_run_resumes() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let two = ["--set", "loader.batch_size=4", "--set", "train.epochs=4", "--set", "train.checkpoint_every=1"];
    let args = |name: &str, resume: bool| {
        let mut args = vec!["train", "cam", "--config", &config];
        args.extend(two);
        args.extend(["--set", name]);
        if resume {
            args.push("--resume");
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    mpirun_ok(dir, 2, &as_str(&args("run.name=whole", false)));

    let mut job = mpirun(dir, 2, &as_str(&args("run.name=killed", false))).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let marker = checkpoints(dir, "killed").join("step-00000004.json");
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint of step 4 after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank = rank_process(job.id()).expect("a wsss-dist rank under mpirun");
    unsafe { libc::kill(rank as i32, libc::SIGKILL) };
    let status = wait_for(&mut job, Duration::from_secs(60));
    assert!(!status.success(), "a killed rank must fail the job");
    let done: Vec<u64> = std::fs::read_dir(checkpoints(dir, "killed"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json")?.strip_prefix("step-")?.parse().ok())
        .collect();
    let last = *done.iter().max().unwrap();
    assert!(last < 24, "killed before the end: checkpoints {done:?}");
    println!("killed at checkpoint step {last} of 24");

    copy_dir(&dir.join("runs/killed"), &dir.join("runs/one_rank"));
    let log = mpirun_ok(dir, 2, &as_str(&args("run.name=killed", true)));
    assert!(log.contains(&format!("resumed from step {last}")), "{log}");
    assert_same_training(dir, "whole", "killed", 24, 0.0);

    // The same checkpoint on 1 rank: steps renumbered (6 → 12 per epoch), training completes.
    let log = String::from_utf8_lossy(&common::wsss(dir, &as_str(&args("run.name=one_rank", true))).stderr).into_owned();
    assert!(log.contains(&format!("step {last} becomes step {}", 2 * last)), "{log}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/one_rank/summary.json")).unwrap()).unwrap();
    assert_eq!((summary["steps"].as_u64(), summary["finished"].as_bool(), summary["world_size"].as_u64()), (Some(48), Some(true), Some(1)));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}
