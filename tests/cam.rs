//! The first half of the pipeline through the binary: `train cam` (resume, non-finite losses),
//! `cam` and `eval cam` on synthetic data and on the real voc-mini photos.

mod common;

use std::path::Path;

use common::{run_python, s, voc_mini, wsss, wsss_fails, wsss_ok};

/// A small synthetic run: 600 + 150 images of 96 px, ResNet-18, 3 epochs (113 steps).
const SMALL: &str = r#"
[run]
name = "small"
seed = 0
device = "cpu"
[data]
source = "synthetic"
train = "data/train"
val = "data/val"
[data.synthetic]
train_images = 600
val_images = 150
size = 96
classes = 6
shard_rows = 100
[loader]
batch_size = 16
resize_long = [72, 120]
crop = 96
hue = 0.0
[model]
depth = "resnet18"
[train]
epochs = 3
lr = 0.01
checkpoint_every = 50
[cam]
split = "val"
scales = [1.0, 0.5, 1.5]
"#;

/// A tiny run for the training mechanics: 48 images of 32 px, 12 steps of 8.
fn tiny() -> String {
    common::tiny_config(
        r#"
[data.synthetic]
train_images = 48
val_images = 8
size = 32
shard_rows = 20
[train]
epochs = 2
lr = 0.01
checkpoint_every = 4
"#,
    )
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    s(&path).to_string()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The embedded-default pipeline in small: the CAMs must localise better than giving every
/// pixel the image's top-scoring class, and the CAM dataset must be readable with pyarrow.
#[test]
fn synthetic_cams_beat_the_image_label_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), SMALL);
    let table = wsss_ok(tmp.path(), &["run", "--config", &config]);
    assert!(table.contains("| **mIoU** |"), "the run prints the mIoU table:\n{table}");
    let report = &json(&tmp.path().join("runs/small/eval/cam.json"))["report"];
    let (cam, baseline) = (report["best"]["miou"].as_f64().unwrap(), report["baseline"]["miou"].as_f64().unwrap());
    assert!(cam > baseline + 0.01, "CAM mIoU {cam} vs image-label baseline {baseline}");
    assert_eq!(report["sweep"].as_array().unwrap().len(), 12, "τ = 0.05, 0.10, ..., 0.60");
    assert_eq!(report["classes"].as_array().unwrap().len(), 7);

    // The CAM dataset, read with no code of ours: one row per val image, f16 maps of
    // [classes, ⌈96/4⌉, ⌈96/4⌉], each peaking at 1 (max/(max + 1e-5) in f16) unless all zero.
    let cams = tmp.path().join("runs/small/cams/val");
    let out = run_python(
        "import glob, json, sys, numpy as np, pyarrow.parquet as pq\n\
         d = sys.argv[1]; m = json.load(open(d + '/_manifest.json'))\n\
         t = pq.read_table(sorted(glob.glob(d + '/*.parquet'))).to_pylist()\n\
         peaks = []\n\
         for r in t:\n\
         \x20   a = np.frombuffer(r['cam'], dtype='<f2').reshape(len(r['classes']), -(-r['height'] // 4), -(-r['width'] // 4))\n\
         \x20   assert len(r['scores']) == len(r['classes']) >= 1\n\
         \x20   peaks += [float(x.max()) for x in a]\n\
         print(m['kind'], len(t), all(p == 0 or 0.99 < p <= 1 for p in peaks), sum(p > 0.99 for p in peaks) > len(peaks) // 2)",
        &[s(&cams)],
    );
    assert_eq!(out.trim(), "cams 150 True True");
    // The directory as one table, as pyarrow and pandas read a folder (the manifest, the
    // `.map/` records and `.verified.json` are skipped by name).
    let out = run_python(
        "import sys, pyarrow.parquet as pq, pandas as pd\nprint(pq.read_table(sys.argv[1]).num_rows, len(pd.read_parquet(sys.argv[1])))",
        &[s(&cams)],
    );
    assert_eq!(out.trim(), "150 150");

    // `run` again continues the finished run: nothing is retrained.
    wsss_ok(tmp.path(), &["run", "--config", &config]);
    assert_eq!(json(&tmp.path().join("runs/small/summary.json"))["train"]["steps"], 114);
}

/// Stopping after 5 steps and resuming gives bitwise the parameters and optimiser state of a
/// run that was never interrupted, and metrics.jsonl reads as one run.
#[test]
fn resumed_training_is_bitwise_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny());
    wsss_ok(tmp.path(), &["run", "--config", &config, "--set", "run.name=whole"]);
    wsss_ok(tmp.path(), &["train", "cam", "--config", &config, "--set", "run.name=parts", "--set", "train.stop_after=5"]);
    let parts = tmp.path().join("runs/parts");
    let steps: Vec<u64> = std::fs::read_dir(parts.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json")?.strip_prefix("step-")?.parse().ok())
        .collect();
    assert_eq!(steps.iter().max(), Some(&5), "stopped after 5 steps with a checkpoint: {steps:?}");
    let err = wsss_fails(tmp.path(), &["train", "cam", "--config", &config, "--set", "run.name=parts"], 2);
    assert!(err.contains("--resume"), "{err}");
    wsss_ok(tmp.path(), &["train", "cam", "--config", &config, "--set", "run.name=parts", "--resume"]);
    for file in ["step-00000012.safetensors", "step-00000012.optim.safetensors"] {
        let whole = std::fs::read(tmp.path().join("runs/whole/checkpoints").join(file)).unwrap();
        let resumed = std::fs::read(parts.join("checkpoints").join(file)).unwrap();
        assert!(whole == resumed, "{file} differs after resuming");
    }
    let lines = |run: &str| -> Vec<(u64, f64)> {
        std::fs::read_to_string(tmp.path().join("runs").join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(lines("whole"), lines("parts"));
    assert_eq!(lines("whole").iter().map(|l| l.0).collect::<Vec<_>>(), (1..=12).collect::<Vec<_>>());
    let meta = json(&parts.join("checkpoints/step-00000012.json"));
    assert_eq!(meta["cursor"], serde_json::json!({ "epoch": 2, "position": 0 }));
    assert_eq!(meta["optimizer"]["total_steps"], 12);
}

/// A diverging run stops with an error that names the step, and never writes a checkpoint of
/// non-finite parameters, whether such steps are errors or skipped.
#[test]
fn non_finite_losses_stop_training_without_a_nan_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &tiny());
    let err = wsss_fails(tmp.path(), &["run", "--config", &config, "--set", "train.lr=1e39"], 2);
    assert!(err.contains("step 1 (epoch 0, images of rank 0: syn_") && err.contains("the loss is"), "{err}");
    let err = wsss_fails(
        tmp.path(),
        &["train", "cam", "--config", &config, "--set", "run.name=skip", "--set", "train.lr=1e39", "--set", "train.on_nonfinite=skip"],
        2,
    );
    assert!(err.contains("step 1: the loss is") && err.contains("skipped"), "{err}");
    assert!(err.contains("after step 4 parameter") && err.contains("not writing a checkpoint"), "{err}");
    let written = std::fs::read_dir(tmp.path().join("runs/skip/checkpoints")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(written, 0);
    let err = wsss_fails(tmp.path(), &["train", "cam", "--config", &config, "--set", "run.name=w", "--set", "model.init=missing.safetensors"], 2);
    assert!(err.contains("model.init") && err.contains("missing.safetensors"), "{err}");
}

/// Real photos, random initialisation: the pipeline runs end to end (the figures are printed,
/// whatever they are) and every val image gets a CAM.
#[test]
fn voc_mini_runs_end_to_end() {
    let Some(voc) = voc_mini("voc_mini_runs_end_to_end") else { return };
    let tmp = tempfile::tempdir().unwrap();
    for split in ["train_aug", "val"] {
        wsss_ok(tmp.path(), &["data", "import", "voc", "--root", s(&voc), "--split", split, "--out", &format!("data/{split}")]);
    }
    let config = write_config(
        tmp.path(),
        "[run]\nname = \"voc\"\ndevice = \"cpu\"\n[data]\nsource = \"imported\"\ntrain = \"data/train_aug\"\nval = \"data/val\"\n\
         [loader]\nbatch_size = 8\nresize_long = [96, 192]\ncrop = 160\n[model]\ndepth = \"resnet18\"\n\
         [train]\nepochs = 1\nlr = 0.01\n[cam]\nsplit = \"val\"\nscales = [0.5]\nflip = false\n",
    );
    let table = wsss_ok(tmp.path(), &["run", "--config", &config]);
    assert!(table.contains("| aeroplane |") && table.contains("| **mIoU** |"), "{table}");
    let eval = json(&tmp.path().join("runs/voc/eval/cam.json"));
    let val_images = std::fs::read_to_string(voc.join("ImageSets/Segmentation/val.txt")).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(eval["images"].as_u64(), Some(val_images as u64));
    assert_eq!(eval["missing"].as_array().unwrap().len(), 0);
}

/// AMR + ISL + FSL in run `amr`, its spotlight the run `base` (the first 4 items: AMR alone).
const AMR_HFPL_ON_BASE: [&str; 10] = [
    "--set",
    "run.name=amr",
    "--set",
    "method.base=amr",
    "--set",
    "method.amr.spotlight_init=runs/base",
    "--set",
    "method.isl.enabled=true",
    "--set",
    "method.fsl.enabled=true",
];

/// AMR with ISL and FSL: the spotlight branch starts from a trained baseline run and stays
/// frozen, so the AMR checkpoint's CAMs at α = 1 are the baseline's CAMs byte for byte; at the
/// default α = 0.5 the compensation branch changes them, and `eval cam` scores them.
#[test]
fn amr_with_hfpl_trains_on_a_frozen_baseline_and_recalibrates() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &format!("{}[cam]\nsplit = \"val\"\nscales = [1.0, 0.5]\n", tiny()));
    wsss_ok(tmp.path(), &["run", "--config", &config, "--set", "run.name=base"]);
    let amr = AMR_HFPL_ON_BASE;
    let err = wsss_fails(tmp.path(), &[&["train", "cam", "--config", &config][..], &amr[..4]].concat(), 2);
    assert!(err.contains("method.amr.freeze_spotlight") && err.contains("spotlight_init"), "{err}");
    wsss_ok(tmp.path(), &[&["train", "cam", "--config", &config][..], &amr[..]].concat());
    let summary = json(&tmp.path().join("runs/amr/summary.json"));
    assert_eq!(summary["steps"], 12);

    let shards = |dir: &str| -> Vec<Vec<u8>> {
        let mut files: Vec<_> =
            std::fs::read_dir(tmp.path().join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
        files.sort();
        files.iter().map(|f| std::fs::read(f).unwrap()).collect()
    };
    let cam_at = |alpha: &str, out: &str| {
        wsss_ok(
            tmp.path(),
            &[&["cam", "--config", &config][..], &amr[..], &["--set", &format!("method.amr.alpha={alpha}"), "--set", &format!("cam.out={out}")][..]].concat(),
        );
    };
    cam_at("1.0", "cams_spotlight");
    assert!(shards("cams_spotlight") == shards("runs/base/cams/val"), "α = 1 gives the frozen spotlight's (the baseline's) CAMs");
    cam_at("0.5", "cams_recalibrated");
    assert!(shards("cams_recalibrated") != shards("runs/base/cams/val"));
    let manifest = json(&tmp.path().join("cams_recalibrated/_manifest.json"));
    assert!(manifest["source"].as_str().unwrap().contains("AMR, recalibrated with alpha 0.5"), "{manifest}");
    wsss_ok(tmp.path(), &[&["eval", "cam", "--config", &config][..], &amr[..], &["--set", "cam.out=cams_recalibrated"][..]].concat());
    let report = &json(&tmp.path().join("runs/amr/eval/cam.json"))["report"];
    assert!(report["best"]["miou"].as_f64().unwrap() > 0.0);
}

/// MobileNetV2 serves the same pipeline: a CAM run from a random start (BatchNorm calibrated),
/// then AMR + ISL + FSL whose compensation branch starts from that run's weights through the
/// torchvision import (its AMMs new) and whose spotlight is that run; a missing `model.init`
/// says how to fetch the ImageNet weights.
#[test]
fn mobilenet_v2_runs_cam_and_amr_with_hfpl() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &format!("{}[cam]\nsplit = \"val\"\nscales = [1.0, 0.5]\n", tiny()));
    let mobilenet = ["--set", "model.arch=mobilenet_v2", "--set", "model.strides=[2, 2, 1, 1]"];
    wsss_ok(tmp.path(), &[&["run", "--config", &config, "--set", "run.name=base"][..], &mobilenet[..]].concat());
    let report = &json(&tmp.path().join("runs/base/eval/cam.json"))["report"];
    assert!(report["best"]["miou"].as_f64().unwrap() > 0.0);
    let init = "model.init=runs/base/checkpoints/step-00000012.safetensors";
    let amr = [&AMR_HFPL_ON_BASE[..], &["--set", init]].concat();
    let log = wsss(tmp.path(), &[&["train", "cam", "--config", &config][..], &mobilenet[..], &amr[..]].concat());
    let stderr = String::from_utf8_lossy(&log.stderr);
    assert!(log.status.success(), "{stderr}");
    assert!(stderr.contains("compensation branch: loaded 261 tensors") && stderr.contains("features.16.amm.spatial.conv.weight"), "{stderr}");
    assert_eq!(json(&tmp.path().join("runs/amr/summary.json"))["steps"], 12);
    wsss_ok(tmp.path(), &[&["cam", "--config", &config][..], &mobilenet[..], &amr[..]].concat());
    let err = wsss_fails(
        tmp.path(),
        &[&["train", "cam", "--config", &config, "--set", "run.name=w", "--set", "model.init=weights/mobilenet_v2.safetensors"][..], &mobilenet[..]].concat(),
        2,
    );
    assert!(err.contains("model.init") && err.contains("make weights"), "{err}");
}
