//! Model weights in safetensors files: importing torchvision weights into a network (with a
//! report of every key that does not fit) and saving/restoring complete model states.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Why weights could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{path}: cannot read safetensors: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: cannot write safetensors: {message}")]
    Write { path: PathBuf, message: String },
    #[error("{path}: the weights do not fit the model:{}", list_mismatch(.mismatch))]
    Mismatch { path: PathBuf, mismatch: KeyMismatch },
    #[error("{path}: tensor `{name}` holds non-finite values")]
    NonFinite { path: PathBuf, name: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

/// The keys that do not fit, each list sorted.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyMismatch {
    /// In the model, not in the file.
    pub missing: Vec<String>,
    /// In the file, not in the model.
    pub unexpected: Vec<String>,
    /// In both with different shapes: (name, model shape, file shape).
    pub misshaped: Vec<(String, Vec<i64>, Vec<i64>)>,
}

impl KeyMismatch {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.misshaped.is_empty()
    }
}

fn list_mismatch(m: &KeyMismatch) -> String {
    let mut text = String::new();
    if !m.missing.is_empty() {
        text += &format!("\n  missing in the file ({}): {}", m.missing.len(), m.missing.join(", "));
    }
    if !m.unexpected.is_empty() {
        text += &format!("\n  unexpected in the file ({}): {}", m.unexpected.len(), m.unexpected.join(", "));
    }
    for (name, model, file) in &m.misshaped {
        text += &format!("\n  shape of {name}: model {model:?}, file {file:?}");
    }
    text
}

/// Which keys may legitimately not match when importing pretrained weights.
pub struct ImportRules<'a> {
    /// Names of layers that the file may lack (new on top of the backbone): a model key is new
    /// when one of its dot-separated parts is one of these (`classifier.weight`,
    /// `layer1.0.amm.spatial.conv.weight`).
    pub new_layers: &'a [&'a str],
    /// Prefixes or suffixes of file keys to skip (the ImageNet `fc.` head, BN
    /// `num_batches_tracked` counters).
    pub ignored_prefixes: &'a [&'a str],
    pub ignored_suffixes: &'a [&'a str],
}

/// torchvision ResNet or MobileNetV2 weights (or timm ViT/DeiT weights) into a CAM network: the
/// classifier and AMR's attention modules are new; the ImageNet heads (ResNet's `fc.`,
/// MobileNetV2's `classifier.1.`, a ViT's `head.`, DeiT's distillation `head_dist.` and
/// `dist_token`) and the BN step counters are not ours.
pub const TORCHVISION_BACKBONE: ImportRules<'static> = ImportRules {
    new_layers: &[super::cam::CLASSIFIER, "amm"],
    ignored_prefixes: &["fc.", "classifier.1.", "head.", "head_dist.", "dist_token"],
    ignored_suffixes: &["num_batches_tracked"],
};

/// torchvision ImageNet weights into a segmenter's backbone (imported under `backbone.`): the
/// ImageNet classifier and MobileNetV2's `features.18` (DeepLab ends at `features.17`) are
/// ignored; every backbone tensor must be in the file.
pub const TORCHVISION_SEG_BACKBONE: ImportRules<'static> =
    ImportRules { new_layers: &[], ignored_prefixes: &["fc.", "classifier.1.", "features.18."], ignored_suffixes: &["num_batches_tracked"] };

/// A trained CAM classifier (`train cam`, method.base = "cam": torchvision's names at the
/// root) into the segmenter's backbone (`seg.model.init_from_cam`): its classifier and
/// MobileNetV2's `features.18` are not the segmenter's.
pub const CAM_CLASSIFIER_SEG_BACKBONE: ImportRules<'static> =
    ImportRules { new_layers: &[], ignored_prefixes: &["classifier.", "features.18."], ignored_suffixes: &["num_batches_tracked"] };

/// torchvision ImageNet ResNet or MobileNetV2 weights into IRNet's backbone: the two branches
/// are new; the ImageNet classifier and MobileNetV2's `features.18` (IRNet's branches read
/// `features.17` last) are not ours.
pub const TORCHVISION_IRN_BACKBONE: ImportRules<'static> = ImportRules {
    new_layers: &super::irn::BRANCH_LAYERS,
    ignored_prefixes: &["fc.", "classifier.1.", "features.18."],
    ignored_suffixes: &["num_batches_tracked"],
};

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub loaded: usize,
    /// Model keys left at their initialisation (allowed by the rules).
    pub kept_init: Vec<String>,
    /// File keys skipped (allowed by the rules).
    pub ignored: Vec<String>,
}

fn read(path: &Path) -> Result<Vec<(String, Tensor)>, WeightError> {
    Tensor::read_safetensors(path).map_err(|e| WeightError::Read { path: path.into(), message: e.to_string() })
}

/// No key may differ: a complete state of the same network (a trained checkpoint).
pub const EXACT: ImportRules<'static> = ImportRules { new_layers: &[], ignored_prefixes: &[], ignored_suffixes: &[] };

/// Copies the tensors of `path` into `vs` (converting dtypes), checking every key against
/// `rules`: anything missing, unexpected or mis-shaped beyond what they allow is one error
/// that lists all of it, and nothing is copied.
pub fn import(vs: &VarStore, path: &Path, rules: &ImportRules) -> Result<ImportReport, WeightError> {
    import_under(vs, "", path, rules)
}

/// [`import`] into the model keys under `prefix` (e.g. `"compensation."`), with the prefix
/// removed before matching the file's keys; other model keys are left alone.
pub fn import_under(vs: &VarStore, prefix: &str, path: &Path, rules: &ImportRules) -> Result<ImportReport, WeightError> {
    let file: BTreeMap<String, Tensor> = read(path)?.into_iter().collect();
    let model: BTreeMap<String, Tensor> =
        vs.variables().into_iter().filter_map(|(name, var)| name.strip_prefix(prefix).map(|n| (n.to_string(), var))).collect();
    let mut mismatch = KeyMismatch::default();
    let mut report = ImportReport::default();
    for (name, var) in &model {
        match file.get(name) {
            Some(t) if t.size() != var.size() => mismatch.misshaped.push((name.clone(), var.size(), t.size())),
            Some(_) => report.loaded += 1,
            None if name.split('.').any(|part| rules.new_layers.contains(&part)) => report.kept_init.push(name.clone()),
            None => mismatch.missing.push(name.clone()),
        }
    }
    for name in file.keys().filter(|k| !model.contains_key(*k)) {
        if rules.ignored_prefixes.iter().any(|p| name.starts_with(p)) || rules.ignored_suffixes.iter().any(|s| name.ends_with(s)) {
            report.ignored.push(name.clone());
        } else {
            mismatch.unexpected.push(name.clone());
        }
    }
    if !mismatch.is_empty() {
        return Err(WeightError::Mismatch { path: path.into(), mismatch });
    }
    copy_into(&model, &file, path)?;
    Ok(report)
}

/// Restores a complete state saved by [`save`]: every key must match exactly.
pub fn restore(vs: &VarStore, path: &Path) -> Result<(), WeightError> {
    let file: BTreeMap<String, Tensor> = read(path)?.into_iter().collect();
    let model: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    restore_named(&model, &file, path)
}

/// Checks that `file` holds exactly the tensors of `targets` (same names and shapes) and
/// copies them in.
pub fn restore_named(targets: &BTreeMap<String, Tensor>, file: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), WeightError> {
    let mismatch = KeyMismatch {
        missing: targets.keys().filter(|k| !file.contains_key(*k)).cloned().collect(),
        unexpected: file.keys().filter(|k| !targets.contains_key(*k)).cloned().collect(),
        misshaped: targets.iter().filter_map(|(k, v)| file.get(k).filter(|t| t.size() != v.size()).map(|t| (k.clone(), v.size(), t.size()))).collect(),
    };
    if !mismatch.is_empty() {
        return Err(WeightError::Mismatch { path: path.into(), mismatch });
    }
    copy_into(targets, file, path)
}

fn copy_into(targets: &BTreeMap<String, Tensor>, file: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), WeightError> {
    for (name, source) in file {
        if !finite(source) {
            return Err(WeightError::NonFinite { path: path.into(), name: name.clone() });
        }
    }
    tch::no_grad(|| {
        for (name, target) in targets {
            if let Some(source) = file.get(name) {
                let mut target = target.shallow_clone();
                target.copy_(&source.to_device(target.device()).to_kind(target.kind()));
            }
        }
    });
    Ok(())
}

/// Whether every element of a floating-point tensor is finite (other kinds always are).
pub fn finite(tensor: &Tensor) -> bool {
    !tensor.is_floating_point() || tensor.isfinite().all().int64_value(&[]) == 1
}

/// Writes named tensors (moved to the CPU, contiguous) to `path` through a temporary file and
/// a rename.
pub fn save(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), WeightError> {
    let cpu: Vec<(&str, Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v.to_device(Device::Cpu).contiguous())).collect();
    crate::data::write_via_temp(path, |tmp| Tensor::write_safetensors(&cpu, tmp).map_err(|e| WeightError::Write { path: path.into(), message: e.to_string() }))
}

/// The model's variables by name.
pub fn named(vs: &VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backbone::BackboneSpec;
    use crate::model::cam::CamNet;
    use crate::model::resnet::Depth;
    use tch::Kind;

    fn net() -> (VarStore, CamNet) {
        let vs = VarStore::new(Device::Cpu);
        let net = CamNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 4);
        (vs, net)
    }

    /// A file laid out as torchvision's resnet18 state_dict: backbone keys, `fc.*`, and
    /// `num_batches_tracked` counters.
    fn torchvision_like(vs: &VarStore) -> BTreeMap<String, Tensor> {
        let mut file: BTreeMap<String, Tensor> =
            named(vs).into_iter().filter(|(k, _)| !k.starts_with("classifier.")).map(|(k, v)| (k, v.ones_like() * 0.5)).collect();
        file.insert("fc.weight".into(), Tensor::zeros([1000, 512], (Kind::Float, Device::Cpu)));
        file.insert("fc.bias".into(), Tensor::zeros([1000], (Kind::Float, Device::Cpu)));
        file.insert("bn1.num_batches_tracked".into(), Tensor::zeros([], (Kind::Int64, Device::Cpu)));
        file
    }

    #[test]
    fn torchvision_weights_load_and_report_what_was_left() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, _net) = net();
        let path = dir.path().join("r18.safetensors");
        save(&torchvision_like(&vs), &path).unwrap();
        let report = import(&vs, &path, &TORCHVISION_BACKBONE).unwrap();
        assert_eq!(report.kept_init, ["classifier.weight"]);
        assert_eq!(report.ignored, ["bn1.num_batches_tracked", "fc.bias", "fc.weight"]);
        assert_eq!(report.loaded, named(&vs).len() - 1);
        assert_eq!(named(&vs)["layer2.1.conv1.weight"].mean(Kind::Float).double_value(&[]), 0.5);
    }

    /// torchvision's mobilenet_v2 state dict: `features.*`, the ImageNet head `classifier.1.*`
    /// and the BN counters; it fits a MobileNetV2 CAM network (whose own `classifier.weight` is
    /// new) and AMR's compensation branch (whose `amm` keys are new).
    #[test]
    fn torchvision_mobilenet_weights_load_into_cam_and_amr_networks() {
        let dir = tempfile::tempdir().unwrap();
        let spec = BackboneSpec::mobilenet_v2([2, 2, 2, 1]);
        let source = VarStore::new(Device::Cpu);
        crate::model::backbone::Backbone::new(&source.root(), spec, false);
        let mut file: BTreeMap<String, Tensor> = named(&source).into_iter().map(|(k, v)| (k, v.ones_like() * 0.25)).collect();
        file.insert("classifier.1.weight".into(), Tensor::zeros([1000, 1280], (Kind::Float, Device::Cpu)));
        file.insert("classifier.1.bias".into(), Tensor::zeros([1000], (Kind::Float, Device::Cpu)));
        file.insert("features.3.conv.1.1.num_batches_tracked".into(), Tensor::zeros([], (Kind::Int64, Device::Cpu)));
        let path = dir.path().join("mobilenet_v2.safetensors");
        save(&file, &path).unwrap();
        let vs = VarStore::new(Device::Cpu);
        CamNet::new(&vs.root(), spec, 5);
        let report = import(&vs, &path, &TORCHVISION_BACKBONE).unwrap();
        assert_eq!((report.loaded, report.kept_init.as_slice()), (260, ["classifier.weight".to_string()].as_slice()));
        assert_eq!(report.ignored, ["classifier.1.bias", "classifier.1.weight", "features.3.conv.1.1.num_batches_tracked"]);
        assert_eq!(named(&vs)["features.17.conv.1.0.weight"].mean(Kind::Float).double_value(&[]), 0.25);
        let amr = VarStore::new(Device::Cpu);
        CamNet::with_amm(&amr.root(), spec, 5);
        let report = import(&amr, &path, &TORCHVISION_BACKBONE).unwrap();
        assert_eq!(report.loaded, 260);
        assert_eq!(report.kept_init.len(), 1 + 10 * 9, "the classifier and the 10 residual blocks' AMMs of 9 tensors");
        // IRNet's network reads features.17 last: features.18 is skipped, the branches are new.
        let irn = VarStore::new(Device::Cpu);
        crate::model::irn::IrnNet::new(&irn.root(), spec);
        let report = import(&irn, &path, &TORCHVISION_IRN_BACKBONE).unwrap();
        assert_eq!(report.loaded, 260 - 5, "all but features.18's conv and BatchNorm (5 tensors)");
        assert!(report.kept_init.iter().all(|k| k.starts_with("fc_edge") || k.starts_with("fc_dp")), "{:?}", report.kept_init);
        assert!(report.ignored.iter().any(|k| k.starts_with("features.18.")), "{:?}", report.ignored);
        assert_eq!(named(&irn)["features.13.conv.2.weight"].mean(Kind::Float).double_value(&[]), 0.25);
    }

    #[test]
    fn every_unfit_key_is_listed_and_nothing_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let (vs, _net) = net();
        let mut file = torchvision_like(&vs);
        file.remove("layer3.0.conv1.weight");
        file.insert("layer9.weight".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        file.insert("layer1.0.conv1.weight".into(), Tensor::zeros([64, 64, 1, 1], (Kind::Float, Device::Cpu)));
        let path = dir.path().join("bad.safetensors");
        save(&file, &path).unwrap();
        let before = named(&vs)["layer2.1.conv1.weight"].copy();
        let err = import(&vs, &path, &TORCHVISION_BACKBONE).unwrap_err().to_string();
        assert!(err.contains("missing in the file (1): layer3.0.conv1.weight"), "{err}");
        assert!(err.contains("unexpected in the file (1): layer9.weight"), "{err}");
        assert!(err.contains("shape of layer1.0.conv1.weight: model [64, 64, 3, 3], file [64, 64, 1, 1]"), "{err}");
        assert!(err.contains("bad.safetensors"), "{err}");
        assert!(named(&vs)["layer2.1.conv1.weight"].equal(&before), "a failed import copied weights");
    }

    #[test]
    fn save_and_restore_round_trip_bitwise_and_refuse_nan() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = net();
        let (b, _) = net();
        let path = dir.path().join("state.safetensors");
        save(&named(&a), &path).unwrap();
        restore(&b, &path).unwrap();
        for (name, tensor) in named(&a) {
            assert!(tensor.equal(&named(&b)[&name]), "{name}");
        }
        let mut poisoned = named(&a);
        poisoned.insert("classifier.weight".into(), Tensor::full([4, 512, 1, 1], f64::NAN, (Kind::Float, Device::Cpu)));
        save(&poisoned, &path).unwrap();
        let err = restore(&b, &path).unwrap_err().to_string();
        assert!(err.contains("classifier.weight") && err.contains("non-finite"), "{err}");
    }
}
