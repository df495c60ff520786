//! `train irn` through the binary, on the irn_seeds pseudo-labels of a real (tiny) CAM run:
//! it learns (the loss falls), checkpoints IRNet's branches, and a stopped run resumes bitwise;
//! then `pseudo-label --method irn_rw` walks over its boundaries as a map phase: every image
//! labelled, the same bytes on 1 and 2 ranks, nothing recomputed on a rerun, and `run` chains
//! the steps to the same bytes.

mod common;

use std::path::Path;

use common::{mpirun_ok, wsss_fails, wsss_ok};

/// 48 synthetic images of 32 px; ResNet-18 for the CAMs and for IRNet's backbone; IRNet on 32 px
/// crops (a stride-4 grid of 8) with pairs of radius 3.
fn tiny() -> String {
    common::tiny_config(
        r#"
[train]
steps = 6
lr = 0.001
[cam]
split = "train"
scales = [1.0]
[pseudo_label]
method = "irn_seeds"
threads = 1
[irn]
depth = "resnet18"
radius = 3
[irn.loader]
batch_size = 8
resize_long = [24, 40]
crop = 32
[irn.train]
epochs = 2
lr = 0.1
checkpoint_every = 3
"#,
    )
}

fn metrics(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

#[test]
fn train_irn_learns_from_irn_seeds_and_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), tiny()).unwrap();
    let config = ["--config", "config.toml"];
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/val", "--images", "8", "--size", "32", "--split", "val"]);
    // No pseudo-labels yet: the error names the key and what makes them.
    let err = wsss_fails(dir, &["train", "irn", "--config", "config.toml"], 2);
    assert!(err.contains("irn.labels") && err.contains("pseudo-labels of the train split"), "{err}");
    for stage in [&["train", "cam"][..], &["cam"], &["pseudo-label"]] {
        wsss_ok(dir, &[stage, &config].concat());
    }
    wsss_ok(dir, &["train", "irn", "--config", "config.toml"]);
    let whole = metrics(&dir.join("runs/tiny/irn/metrics.jsonl"));
    assert_eq!(whole.len(), 12, "2 epochs of 6 steps");
    assert!(whole.iter().all(|l| l.is_finite()));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(mean(&whole[8..]) < mean(&whole[..4]), "the loss falls: {whole:?}");
    let state: std::collections::BTreeMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(dir.join("runs/tiny/irn/checkpoints/step-00000012.safetensors")).unwrap().into_iter().collect();
    assert!(state.contains_key("fc_edge6.bias") && state.contains_key("fc_dp7.4.running_mean") && state.contains_key("layer4.1.conv2.weight"));

    // Stopped after 5 steps, resumed: the same bytes.
    let parts = ["--set", "run.name=parts", "--set", "irn.labels=runs/tiny/pseudo_labels/train"];
    wsss_ok(dir, &[&["train", "irn"][..], &config, &parts, &["--set", "irn.train.stop_after=5"]].concat());
    wsss_ok(dir, &[&["train", "irn"][..], &config, &parts, &["--resume"]].concat());
    for file in ["step-00000012.safetensors", "step-00000012.optim.safetensors"] {
        let a = std::fs::read(dir.join("runs/tiny/irn/checkpoints").join(file)).unwrap();
        let b = std::fs::read(dir.join("runs/parts/irn/checkpoints").join(file)).unwrap();
        assert!(a == b, "{file} differs after resuming");
    }
}

#[test]
fn irn_rw_pseudo_labels_are_a_map_phase() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), tiny()).unwrap();
    let config = ["--config", "config.toml"];
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/val", "--images", "8", "--size", "32", "--split", "val"]);
    for stage in [&["train", "cam"][..], &["cam"], &["pseudo-label"], &["train", "irn"]] {
        wsss_ok(dir, &[stage, &config].concat());
    }
    let rw = ["--set", "pseudo_label.method=irn_rw"];
    // The one-pass map phase computes no boundaries: it refuses, naming the key.
    let err = wsss_fails(dir, &[&["cam", "--pseudo-labels"][..], &config, &rw, &["--set", "cam.out=fused"]].concat(), 2);
    assert!(err.contains("pseudo_label.method") && err.contains("irn_rw"), "{err}");
    wsss_ok(dir, &[&["pseudo-label"][..], &config, &rw].concat());
    let out = dir.join("runs/tiny/pseudo_labels_rw/train");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(".map/summary.json")).unwrap()).unwrap();
    assert_eq!((summary["rows"].as_u64(), summary["skipped"].as_u64()), (Some(48), Some(0)), "{summary}");
    assert!(summary["seconds_by_phase"]["boundary"].as_f64().is_some(), "{summary}");
    assert!(dir.join("runs/tiny/pseudo_labels/train/_manifest.json").exists(), "the irn_seeds labels it learnt from are kept");
    // Every label is background or a class of its image, never uncertain.
    let check = common::run_python(
        "import glob, io, sys, numpy as np, pyarrow.parquet as pq\nfrom PIL import Image\n\
         labels = {r['id']: np.asarray(Image.open(io.BytesIO(r['mask']))) for f in sorted(glob.glob(sys.argv[1] + '/*.parquet')) for r in pq.read_table(f).to_pylist()}\n\
         images = {r['id']: set(r['labels']) for f in sorted(glob.glob(sys.argv[2] + '/*.parquet')) for r in pq.read_table(f).to_pylist()}\n\
         ok = all(set(np.unique(m).tolist()) <= images[i] | {0} for i, m in labels.items())\n\
         print(len(labels), ok, sum((m > 0).mean() for m in labels.values()) > 0)",
        &[common::s(&out), common::s(&dir.join("data/train"))],
    );
    assert_eq!(check.trim(), "48 True True");
    wsss_ok(dir, &[&["eval", "pseudo"][..], &config, &rw].concat());
    // 2 ranks write the same bytes; a rerun recomputes nothing.
    mpirun_ok(dir, 2, &[&["pseudo-label"][..], &config, &rw, &["--set", "pseudo_label.out=rw2"]].concat());
    for shard in ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"] {
        assert!(std::fs::read(out.join(shard)).unwrap() == std::fs::read(dir.join("rw2").join(shard)).unwrap(), "{shard}");
    }
    let log = String::from_utf8_lossy(&common::wsss(dir, &[&["pseudo-label"][..], &config, &rw].concat()).stderr).into_owned();
    assert!(log.contains("complete for these inputs and settings"), "{log}");

    // `run` chains the same steps (irn_seeds, train irn, the walk) and writes the same bytes.
    let err = wsss_fails(dir, &[&["run"][..], &config, &rw, &["--set", "cam.split=val"]].concat(), 2);
    assert!(err.contains("cam.split") && err.contains("irn_rw"), "{err}");
    wsss_ok(dir, &[&["run"][..], &config, &rw, &["--set", "run.name=chained"]].concat());
    let chained = dir.join("runs/chained");
    for shard in ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"] {
        assert!(std::fs::read(out.join(shard)).unwrap() == std::fs::read(chained.join("pseudo_labels_rw/train").join(shard)).unwrap(), "{shard}");
    }
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(chained.join("summary.json")).unwrap()).unwrap();
    for (key, file) in [("eval_seeds", "pseudo.json"), ("eval_pseudo", "pseudo_rw.json")] {
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(chained.join("eval").join(file)).unwrap()).unwrap();
        assert_eq!(summary[key]["report"], written["report"], "{key}");
    }
    assert!(summary["eval_pseudo"]["report"]["labelled"].as_f64() == Some(1.0), "the walk labels every pixel: {}", summary["eval_pseudo"]);
    assert!(summary["eval_seeds"]["report"]["labelled"].as_f64().unwrap() < 1.0, "seeds leave pixels uncertain: {}", summary["eval_seeds"]);
}
