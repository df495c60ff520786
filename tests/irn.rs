//! `train irn` through the binary, on the irn_seeds pseudo-labels of a real (tiny) CAM run:
//! it learns (the loss falls), checkpoints IRNet's branches, and a stopped run resumes bitwise.

mod common;

use std::path::Path;

use common::{wsss_fails, wsss_ok};

/// 48 synthetic images of 32 px; ResNet-18 for the CAMs and for IRNet's backbone; IRNet on 32 px
/// crops (a stride-4 grid of 8) with pairs of radius 3.
const TINY: &str = r#"
[run]
name = "tiny"
device = "cpu"
threads = 1
[data]
source = "synthetic"
train = "data/train"
val = "data/val"
[loader]
batch_size = 8
resize_long = [24, 40]
crop = 32
[model]
depth = "resnet18"
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
"#;

fn metrics(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap()).collect()
}

#[test]
fn train_irn_learns_from_irn_seeds_and_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), TINY).unwrap();
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
