//! The layout of a run directory (docs/architecture.md, "Run directories and checkpoints"): where each stage
//! writes and the next one reads, computed from the config in one place.

use std::path::{Path, PathBuf};

use super::{Config, Split};
use crate::refine::pseudo::PseudoMethod;

/// The paths of the run `<run.dir>/<run.name>` of a config; a key that names a path
/// explicitly (`cam.out`, `pseudo_label.out`, `seg.labels`, `irn.labels`) wins over the layout.
pub struct RunPaths<'a> {
    config: &'a Config,
    root: PathBuf,
}

impl<'a> RunPaths<'a> {
    pub fn new(config: &'a Config) -> RunPaths<'a> {
        RunPaths { config, root: config.run.dir.join(&config.run.name) }
    }

    /// `<run.dir>/<run.name>`: the CAM classifier's checkpoints and the run's logs.
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// The CAMs of `split`: `cam.out` for `cam.split` when set, else `<run dir>/cams/<split>`.
    pub fn cams(&self, split: Split) -> PathBuf {
        let cam = &self.config.cam;
        if cam.out.as_os_str().is_empty() || split != cam.inference.split {
            self.root.join("cams").join(split.name())
        } else {
            cam.out.clone()
        }
    }

    /// The pseudo-labels of `cam.split` that `pseudo-label` writes and `eval pseudo` reads:
    /// `<run dir>/pseudo_labels/<split>`, or `pseudo_labels_rw/` for `irn_rw`, whose network
    /// learns from the `irn_seeds` labels in `pseudo_labels/`.
    pub fn pseudo_labels(&self) -> PathBuf {
        let out = &self.config.pseudo_label.out;
        if out.as_os_str().is_empty() {
            self.root.join(self.labels_folder()).join(self.config.cam.inference.split.name())
        } else {
            out.clone()
        }
    }

    /// The pseudo-labels `train seg` learns from: `seg.labels`, else those of the train split.
    pub fn seg_labels(&self) -> PathBuf {
        self.train_labels_or(&self.config.seg.labels, self.labels_folder())
    }

    /// The `irn_seeds` pseudo-labels `train irn` learns from.
    pub fn irn_labels(&self) -> PathBuf {
        self.train_labels_or(&self.config.irn.labels, "pseudo_labels")
    }

    /// Where `train irn` writes: `<run dir>/irn`.
    pub fn irn(&self) -> PathBuf {
        self.root.join("irn")
    }

    /// Where `train seg` writes: `<run dir>/seg`.
    pub fn seg(&self) -> PathBuf {
        self.root.join("seg")
    }

    /// Where `seg` writes (and `eval seg` reads) the predictions of `seg.infer.split`:
    /// `<run dir>/seg/pred/<split>`, `pred_crf` after the dense CRF.
    pub fn seg_predictions(&self, dense_crf: bool) -> PathBuf {
        self.seg().join(if dense_crf { "pred_crf" } else { "pred" }).join(self.config.seg.infer.inference.split.name())
    }

    /// Where the evaluations go: `<run dir>/eval`.
    pub fn eval(&self) -> PathBuf {
        self.root.join("eval")
    }

    /// Where the pseudo-labels of `pseudo_label.method` go in the run directory.
    fn labels_folder(&self) -> &'static str {
        match self.config.pseudo_label.params.method {
            PseudoMethod::IrnRw => "pseudo_labels_rw",
            _ => "pseudo_labels",
        }
    }

    /// `explicit`, or the train split's pseudo-labels in `folder` of the run directory.
    fn train_labels_or(&self, explicit: &Path, folder: &str) -> PathBuf {
        if explicit.as_os_str().is_empty() {
            self.root.join(folder).join("train")
        } else {
            explicit.to_path_buf()
        }
    }
}
