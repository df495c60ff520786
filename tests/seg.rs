//! `train seg` through the binary on a tiny pipeline: the pseudo-labels of the train split come
//! from a real CAM run; DeepLab v3+ resumes bitwise, DeepLab v2 and v3+ (synchronised
//! BatchNorm) on 2 MPI ranks equal one process with twice the batch, and missing pseudo-labels
//! are an error naming the key.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{as_str, mpirun_ok, s, wsss_fails, wsss_ok};
use tch::Tensor;

/// 48 synthetic images of 32 px; a ResNet-18 CAM run makes the pseudo-labels of the train
/// split; the segmenters are ResNet-18 DeepLabs from a random start, 12 steps of 4 per epoch.
fn tiny() -> String {
    common::tiny_config(
        r#"
[data.synthetic]
train_images = 48
val_images = 8
size = 32
shard_rows = 20
[train]
epochs = 1
lr = 0.01
[cam]
split = "train"
scales = [1.0]
[seg.model]
arch = "resnet"
depth = "resnet18"
[seg.loader]
batch_size = 4
resize_long = [24, 40]
crop = 32
[seg.train]
epochs = 2
lr = 0.0005
checkpoint_every = 4
keep_checkpoints = 20
"#,
    )
}

/// The config and the CAM run whose pseudo-labels (`runs/tiny/pseudo_labels/train`) every
/// segmenter here trains on.
fn pipeline() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    let config = s(&config).to_string();
    wsss_ok(tmp.path(), &["run", "--config", &config]);
    assert!(tmp.path().join("runs/tiny/pseudo_labels/train/_manifest.json").exists());
    (tmp, config)
}

/// [`pipeline`] with the `seg.labels` key of its pseudo-labels.
fn with_pseudo_labels() -> (tempfile::TempDir, String, &'static str) {
    let (tmp, config) = pipeline();
    (tmp, config, "seg.labels=runs/tiny/pseudo_labels/train")
}

/// The tiny config's 48 train images with scribbles drawn from their masks into
/// `data/scribbles` (`data scribbles --from-masks`), with the `seg.labels` key pointing there.
fn with_scribbles() -> (tempfile::TempDir, String, &'static str) {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(tmp.path(), &["data", "scribbles", "--from-masks", "--data", "data/train", "--out", "data/scribbles", "--min-area", "4"]);
    (tmp, s(&config).to_string(), "seg.labels=data/scribbles")
}

fn seg_dir(dir: &Path, run: &str) -> std::path::PathBuf {
    dir.join("runs").join(run).join("seg")
}

fn metrics(dir: &Path, run: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(seg_dir(dir, run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).into_iter().collect()
}

/// DeepLab v3+ (dropout, trainable BatchNorm) with the dense-CRF loss, stopped after 5 steps
/// and resumed, ends where an uninterrupted run ends, byte for byte, and its loss goes down.
/// The CRF term (an energy below 0) lowers the first step's loss against a run without it.
#[test]
fn deeplab_v3plus_with_the_crf_loss_resumes_bitwise() {
    let (tmp, config) = pipeline();
    let dir = tmp.path();
    // 16×16 pixels after the downscale: w 1e-5 makes the energy about a tenth of the CE.
    let crf = ["--set", "seg.loss.regularizer=dense_crf", "--set", "seg.loss.crf.weight=1e-5"];
    let labels = "seg.labels=runs/tiny/pseudo_labels/train";
    let train = |extra: &[&str]| -> Vec<String> { ["train", "seg", "--config", &config].iter().chain(&crf).chain(extra).map(|a| a.to_string()).collect() };
    wsss_ok(dir, &as_str(&train(&[])));
    wsss_ok(dir, &as_str(&train(&["--set", "run.name=parts", "--set", labels, "--set", "seg.train.stop_after=5"])));
    let err = wsss_fails(dir, &as_str(&train(&["--set", "run.name=parts", "--set", labels])), 2);
    assert!(err.contains("--resume"), "{err}");
    wsss_ok(dir, &as_str(&train(&["--set", "run.name=parts", "--set", labels, "--resume"])));
    wsss_ok(dir, &["train", "seg", "--config", &config, "--set", "run.name=plain", "--set", labels, "--set", "seg.train.stop_after=1"]);
    assert!(metrics(dir, "tiny")[0].1 < metrics(dir, "plain")[0].1, "{:?} vs {:?}", metrics(dir, "tiny")[0], metrics(dir, "plain")[0]);
    for file in ["step-00000024.safetensors", "step-00000024.optim.safetensors"] {
        let whole = std::fs::read(seg_dir(dir, "tiny").join("checkpoints").join(file)).unwrap();
        let resumed = std::fs::read(seg_dir(dir, "parts").join("checkpoints").join(file)).unwrap();
        assert!(whole == resumed, "{file} differs after resuming");
    }
    let whole = metrics(dir, "tiny");
    assert_eq!(whole, metrics(dir, "parts"));
    assert_eq!(whole.len(), 24);
    let mean = |range: &[(u64, f64)]| range.iter().map(|m| m.1).sum::<f64>() / range.len() as f64;
    assert!(mean(&whole[18..]) < mean(&whole[..6]), "the loss goes down: {whole:?}");
    let state = tensors(&seg_dir(dir, "tiny").join("checkpoints/step-00000024.safetensors"));
    assert!(state.contains_key("classifier.aspp.convs.4.2.running_mean") && state.contains_key("backbone.layer4.1.conv2.weight"));
}

/// The same config, seed and libtorch threads (2 here: the multi-threaded kernels) give the
/// same checkpoint bytes, run after run (docs/commands.md, "Reproducibility").
#[test]
fn deeplab_v3plus_training_is_reproducible_at_a_given_thread_count() {
    let (tmp, config) = pipeline();
    let dir = tmp.path();
    for run in ["first", "second"] {
        let name = format!("run.name={run}");
        let args = ["--set", &name, "--set", "seg.labels=runs/tiny/pseudo_labels/train", "--set", "run.threads=2", "--set", "seg.train.steps=4"];
        wsss_ok(dir, &[&["train", "seg", "--config", &config][..], &args].concat());
    }
    for file in ["step-00000004.safetensors", "step-00000004.optim.safetensors"] {
        let first = std::fs::read(seg_dir(dir, "first").join("checkpoints").join(file)).unwrap();
        assert!(first == std::fs::read(seg_dir(dir, "second").join("checkpoints").join(file)).unwrap(), "{file} differs between two runs");
    }
}

/// Trains `model` on the labels of `setup` (a directory, its config and the `seg.labels` key)
/// once in one process with batch 4 and once on 2 ranks with batch 2, 12 steps each, and checks
/// that `files` (checkpoint files) agree within `tolerance` of each tensor's largest value. The
/// 2 ranks once more with the blocking all-reduce (`dist.overlap = false`): the same bytes.
fn two_ranks_equal_one_process(setup: (tempfile::TempDir, String, &str), model: &[&str], files: &[&str], tolerance: f64) {
    let (tmp, config, labels) = setup;
    let dir = tmp.path();
    let args = |run: &str, batch: usize| {
        let mut args: Vec<String> =
            ["train", "seg", "--config", &config, "--set", &format!("run.name={run}"), "--set", &format!("seg.loader.batch_size={batch}")]
                .map(String::from)
                .to_vec();
        let common = ["--set", labels, "--set", "seg.train.epochs=1", "--set", "seg.train.checkpoint_every=1"];
        args.extend(common.iter().chain(model).map(|a| a.to_string()));
        args
    };
    wsss_ok(dir, &as_str(&args("one", 4)));
    let log = mpirun_ok(dir, 2, &as_str(&args("two", 2)));
    assert!(log.contains("global batch 4 = 2 per rank x 2 rank(s)"), "{log}");
    assert!(log.contains("all-reduced during backward"), "{log}");
    let blocking = [args("blocking", 2), vec!["--set".into(), "dist.overlap=false".into()]].concat();
    let log = mpirun_ok(dir, 2, &as_str(&blocking));
    assert!(!log.contains("all-reduced during backward"), "{log}");
    common::assert_same_files(&seg_dir(dir, "two").join("checkpoints"), &seg_dir(dir, "blocking").join("checkpoints"), ".safetensors");
    let worst: Vec<(&str, String, f64)> = files
        .iter()
        .map(|file| {
            let (a, b) = (tensors(&seg_dir(dir, "one").join("checkpoints").join(file)), tensors(&seg_dir(dir, "two").join("checkpoints").join(file)));
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
            // Relative to each tensor's largest value.
            let relative = |k: &String, t: &Tensor| (t - &b[k]).abs().max().double_value(&[]) / t.abs().max().double_value(&[]).max(1e-12);
            let (name, difference) =
                a.iter().map(|(k, t)| (k.clone(), relative(k, t))).fold((String::new(), 0.0), |w, (k, d)| if d > w.1 { (k, d) } else { w });
            (*file, name, difference)
        })
        .collect();
    assert!(worst.iter().all(|w| w.2 < tolerance), "max relative |difference| per file (tolerance {tolerance:e}): {worst:#?}");
    assert!(metrics(dir, "one").iter().all(|m| m.1.is_finite()));
}

/// DeepLab v2 (every BatchNorm frozen, four outputs) on 2 ranks with batch 2 reaches what one
/// process with batch 4 reaches. The rate is small: from a random start v2's logits are large
/// and at 5e-4 the loss jumps between 2 and 77, which turns float-order differences into 1e-3.
/// The first step's momentum (its gradient of the whole batch) and the parameters at every
/// fourth step are compared. Not later momentum: v2's max over scales routes a pixel's gradient
/// to one scale, and where two scales' logits tie to float precision a 1e-7 difference flips
/// the route, so a later step's momentum can differ by 1e-3 (measured from step 4 to 7) while
/// the parameters stay within 1e-6.
#[test]
fn deeplab_v2_on_two_ranks_equals_one_process_with_twice_the_batch() {
    let model = ["--set", "seg.model.kind=deeplab_v2", "--set", "seg.model.output_stride=8", "--set", "seg.train.lr=0.00002"];
    two_ranks_equal_one_process(
        with_pseudo_labels(),
        &model,
        &["step-00000001.optim.safetensors", "step-00000004.safetensors", "step-00000008.safetensors", "step-00000012.safetensors"],
        1e-5,
    );
}

/// DeepLab v3+ with its trainable BatchNorms synchronised over the 2 ranks: parameters and
/// the BatchNorms' running statistics (both in the model file) at steps 1 and 4, and the
/// first step's momentum, are those of one process with batch 4 (without synchronisation the
/// first step already differs by more than 100%). Without dropout, whose masks no split into
/// ranks reproduces, and at v2's small rate for the same reason. One process runs libtorch's
/// BatchNorm, the ranks the synchronised one (f64 statistics): the two round differently, and
/// this random-start network amplifies it, so the difference grows from 5e-7 (step 1) to 2e-6
/// (step 4); later steps are not compared, because how fast it grows depends on the CPU: on
/// one machine it stayed at 3e-5 by step 12, on another an ASPP BatchNorm bias, still near its
/// zero start, differed by 0.6% of its tiny value at step 8 (a ReLU flipping for one pixel).
#[test]
fn deeplab_v3plus_on_two_ranks_equals_one_process_with_twice_the_batch() {
    let model = ["--set", "seg.model.dropout=0", "--set", "seg.train.lr=0.00002"];
    two_ranks_equal_one_process(
        with_pseudo_labels(),
        &model,
        &["step-00000001.safetensors", "step-00000001.optim.safetensors", "step-00000004.safetensors"],
        1e-5,
    );
}

/// No pseudo-labels where `seg.labels` points: an error naming the key and what makes them.
#[test]
fn missing_pseudo_labels_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/train", "--images", "8", "--size", "32"]);
    let err = wsss_fails(tmp.path(), &["train", "seg", "--config", s(&config)], 2);
    assert!(err.contains("seg.labels") && err.contains("pseudo_labels/train") && err.contains("--pseudo-labels"), "{err}");
}

/// `run` with `seg.enabled` goes on through the segmenter: trains it on the pseudo-labels of
/// the train split, predicts val without and with the CRF (one pass), makes and scores the CAMs
/// of val too, and prints the figures side by side, split by split; with `cam.split = "val"` or
/// `seg.infer.image_labels` it refuses, naming the key. 2 ranks refining 3 images at a time each
/// predict the same bytes as 1 rank refining one at a time.
#[test]
fn run_trains_predicts_and_scores_the_segmenter() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = dir.join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    let config = s(&config);
    let err = wsss_fails(dir, &["run", "--config", config, "--set", "seg.enabled=true", "--set", "cam.split=val"], 2);
    assert!(err.contains("`cam.split`"), "{err}");
    let err = wsss_fails(dir, &["run", "--config", config, "--set", "seg.enabled=true", "--set", "seg.infer.image_labels=true"], 2);
    assert!(err.contains("`seg.infer.image_labels`"), "{err}");
    let seg = ["--set", "seg.enabled=true", "--set", "seg.train.epochs=1", "--set", "seg.infer.dense_crf=true", "--set", "seg.infer.crf_threads=1"];
    let out = common::wsss(dir, &[&["run", "--config", config][..], &seg].concat());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("mIoU on train: CAM") && log.contains("On val: CAM") && log.contains("; segmenter + CRF "), "{log}");
    // The CAMs of the segmenter's split are made and scored beside those of cam.split.
    let read =
        |name: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(dir.join(format!("runs/tiny/eval/{name}.json"))).unwrap()).unwrap() };
    let (cam_train, cam_val) = (read("cam"), read("cam_val"));
    assert_eq!((cam_train["split"].as_str(), cam_val["split"].as_str()), (Some("train"), Some("val")));
    assert_eq!((cam_train["images"].as_u64(), cam_val["images"].as_u64()), (Some(48), Some(8)));
    // The report sets the CAMs of val beside the segmenter, and shows val samples with its
    // predictions as well as train samples with the pseudo-labels.
    let page = std::fs::read_to_string(dir.join("runs/tiny/report.html")).unwrap();
    for text in ["CAM, train (τ", "pseudo-labels, train", "CAM, val (τ", "segmenter + CRF, val", "(train)", "(val)"] {
        assert!(page.contains(text), "the report lacks {text:?}");
    }
    let val_samples = page.split("(val)").nth(1).unwrap();
    assert!(val_samples.contains("segmenter + CRF") && val_samples.contains("ground truth"), "val samples without predictions");
    // Both prediction sets are complete: `seg` again computes nothing.
    let again = common::wsss(dir, &[&["seg", "--config", config][..], &seg].concat());
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success() && log.matches("is complete for these inputs").count() == 2, "{log}");
    for name in ["seg", "seg_crf"] {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("runs/tiny/eval/{name}.json"))).unwrap()).unwrap();
        assert_eq!(report["images"], 8, "{name}");
        let miou = report["report"]["miou"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&miou) && report["report"]["labelled"].as_f64() == Some(1.0), "{name}: {report}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("runs/tiny/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["train_seg"]["steps"], 12);
    // The same model's predictions made by 2 MPI ranks: the same bytes.
    let checkpoint = std::fs::read_dir(dir.join("runs/tiny/seg/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with("step-00000012.safetensors"))
        .unwrap();
    let from = format!("seg.infer.checkpoint={}", s(&checkpoint));
    let two = [&seg[..], &["--set", "run.name=two", "--set", &from, "--set", "seg.infer.crf_threads=3"]].concat();
    mpirun_ok(dir, 2, &[&["seg", "--config", config][..], &two].concat());
    for pred in ["pred", "pred_crf"] {
        let shard = |run: &str| std::fs::read(dir.join(format!("runs/{run}/seg/{pred}/val/part-00000.parquet"))).unwrap();
        assert!(shard("tiny") == shard("two"), "{pred}: 2 ranks wrote other bytes");
    }
}

/// `data scribbles --from-masks`: every labelled pixel carries its ground-truth class, a few
/// percent of the pixels are labelled (as `data inspect` reports), 2 ranks write the same
/// bytes as one, and `data verify --images` passes.
#[test]
fn scribbles_from_masks_are_true_sparse_and_rank_independent() {
    use wsss_dist::data::codec::decode_mask;
    use wsss_dist::data::{Dataset, ImageRow, PseudoRow};
    let (tmp, _, _) = with_scribbles();
    let dir = tmp.path();
    let images: Dataset<ImageRow> = Dataset::open_as(&dir.join("data/train")).unwrap();
    let scribbles: Dataset<PseudoRow> = Dataset::open_as(&dir.join("data/scribbles")).unwrap();
    assert_eq!(scribbles.len(), 48);
    let (mut labelled, mut pixels) = (0usize, 0usize);
    for shard in 0..images.num_shards() {
        for (image, row) in images.shard(shard).unwrap().read_all().unwrap().iter().zip(scribbles.shard(shard).unwrap().read_all().unwrap()) {
            assert_eq!(image.id, row.id);
            let (_, _, truth) = decode_mask(image.mask.as_ref().unwrap()).unwrap();
            let (_, _, map) = decode_mask(&row.mask).unwrap();
            for (t, m) in truth.iter().zip(&map) {
                assert!(*m == 255 || m == t, "{}: a scribble says {m} where the mask says {t}", row.id);
            }
            labelled += map.iter().filter(|&&m| m != 255).count();
            pixels += map.len();
        }
    }
    let share = labelled as f64 / pixels as f64;
    assert!(share > 0.02 && share < 0.5, "labelled share {share}");
    let stats: serde_json::Value = serde_json::from_str(&wsss_ok(dir, &["data", "inspect", "--json", "data/scribbles"])).unwrap();
    let reported = stats.to_string();
    assert!(reported.contains("labelled"), "{reported}");
    mpirun_ok(dir, 2, &["data", "scribbles", "--from-masks", "--data", "data/train", "--out", "data/scribbles2", "--min-area", "4"]);
    for shard in &scribbles.manifest().shards {
        let one = std::fs::read(dir.join("data/scribbles").join(&shard.file)).unwrap();
        assert!(one == std::fs::read(dir.join("data/scribbles2").join(&shard.file)).unwrap(), "{} differs on 2 ranks", shard.file);
    }
    wsss_ok(dir, &["data", "verify", "--images", "data/train", "data/scribbles"]);
    let err = wsss_fails(dir, &["data", "scribbles", "--from-masks", "--data", "data/train", "--out", "data/x", "--erosion", "2"], 2);
    assert!(err.contains("--erosion"), "{err}");
}

/// DeepLab v3+ on scribbles with DFR (`seg.loss.regularizer = "dfr"`): stopped after 5 steps and
/// resumed, it ends where an uninterrupted run ends, byte for byte; the checkpoint holds the
/// feature consistency head, which `seg` restores to predict; the loss goes down.
#[test]
fn deeplab_v3plus_with_dfr_on_scribbles_resumes_bitwise() {
    let (tmp, config, labels) = with_scribbles();
    let dir = tmp.path();
    let dfr = ["--set", labels, "--set", "seg.loss.regularizer=dfr", "--set", "seg.loss.crf.weight=1e-5"];
    let train = |extra: &[&str]| -> Vec<String> { ["train", "seg", "--config", &config].iter().chain(&dfr).chain(extra).map(|a| a.to_string()).collect() };
    wsss_ok(dir, &as_str(&train(&[])));
    wsss_ok(dir, &as_str(&train(&["--set", "run.name=parts", "--set", "seg.train.stop_after=5"])));
    wsss_ok(dir, &as_str(&train(&["--set", "run.name=parts", "--resume"])));
    for file in ["step-00000024.safetensors", "step-00000024.optim.safetensors"] {
        let whole = std::fs::read(seg_dir(dir, "tiny").join("checkpoints").join(file)).unwrap();
        assert!(whole == std::fs::read(seg_dir(dir, "parts").join("checkpoints").join(file)).unwrap(), "{file} differs after resuming");
    }
    let whole = metrics(dir, "tiny");
    assert_eq!(whole, metrics(dir, "parts"));
    let mean = |range: &[(u64, f64)]| range.iter().map(|m| m.1).sum::<f64>() / range.len() as f64;
    assert!(mean(&whole[18..]) < mean(&whole[..6]), "the loss goes down: {whole:?}");
    let state = tensors(&seg_dir(dir, "tiny").join("checkpoints/step-00000024.safetensors"));
    assert_eq!(state["classifier.consistency.2.weight"].size(), [3, 64, 1, 1]);
    wsss_ok(
        dir,
        &as_str(&["seg", "--config", &config].iter().chain(&dfr).chain(&["--set", "seg.infer.split=train"]).map(|a| a.to_string()).collect::<Vec<_>>()),
    );
    assert!(dir.join("runs/tiny/seg/pred/train/_manifest.json").exists());
}

/// DFR on 2 ranks with batch 2 equals one process with batch 4 (DeepLab v3+ without dropout, at
/// the small rate of the test above it): its consistency loss is a mean over images of terms
/// that depend on each image alone.
#[test]
fn dfr_on_two_ranks_equals_one_process_with_twice_the_batch() {
    let model = ["--set", "seg.model.dropout=0", "--set", "seg.train.lr=0.00002", "--set", "seg.loss.regularizer=dfr", "--set", "seg.loss.crf.weight=1e-5"];
    two_ranks_equal_one_process(with_scribbles(), &model, &["step-00000001.safetensors", "step-00000001.optim.safetensors", "step-00000004.safetensors"], 1e-5);
}
