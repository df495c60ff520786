//! Training checkpoints in a run directory (DESIGN.md "Formats"): per checkpoint a model
//! state (`step-NNNNNNNN.safetensors`, torchvision names), an optimiser state
//! (`step-NNNNNNNN.optim.safetensors`) and a JSON sidecar (`step-NNNNNNNN.json`) with the
//! step, epoch, sampler cursor, RNG and optimiser settings and the config hash. The sidecar is
//! written last, so a checkpoint without one is incomplete and never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::sampler::Cursor;
use crate::data::{atomic_write, DataError};
use crate::model::weights::{self, WeightError};
use crate::optim::SgdSettings;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Io(#[from] DataError),
    #[error("{path}: invalid checkpoint sidecar: {message}")]
    BadSidecar { path: PathBuf, message: String },
}

/// How every random choice of a run can be reproduced: the loader draws each sample's
/// augmentation from ChaCha8 seeded by (seed, epoch, dataset index) and the epoch order from
/// (seed, epoch), so the seed and the cursor are the whole RNG state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RngState {
    pub seed: u64,
    pub scheme: String,
}

/// The JSON sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    /// Optimiser steps taken (the next step is `step`).
    pub step: u64,
    pub epoch: u64,
    /// Where each rank's sampler continues.
    pub cursor: Cursor,
    pub world_size: usize,
    pub rng: RngState,
    pub model_file: String,
    pub optimizer_file: String,
    pub optimizer: SgdSettings,
    pub config_hash: String,
    /// Mean training loss of the steps logged since the previous checkpoint.
    pub loss: Option<f64>,
}

/// The model state a path names: a safetensors file as it is, or a run directory's latest
/// checkpoint (`<dir>/checkpoints`). `None` when the directory holds no checkpoint yet.
pub fn model_in(path: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    if !path.is_dir() {
        return Ok(Some(path.to_path_buf()));
    }
    let checkpoints = Checkpoints::new(path.join("checkpoints"));
    Ok(checkpoints.latest()?.map(|meta| checkpoints.model_path(&meta)))
}

/// The checkpoint directory of a run.
pub struct Checkpoints {
    dir: PathBuf,
}

impl Checkpoints {
    pub fn new(dir: PathBuf) -> Checkpoints {
        Checkpoints { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stem(step: u64) -> String {
        format!("step-{step:08}")
    }

    /// Complete checkpoints (those with a sidecar), oldest first, as (step, sidecar path).
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DataError::io(&self.dir, e).into()),
        };
        let mut found = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| DataError::io(&self.dir, e))?.file_name().to_string_lossy().into_owned();
            if let Some(step) = name.strip_prefix("step-").and_then(|r| r.strip_suffix(".json")).and_then(|n| n.parse().ok()) {
                found.push((step, self.dir.join(name)));
            }
        }
        found.sort();
        Ok(found)
    }

    /// The newest complete checkpoint's sidecar.
    pub fn latest(&self) -> Result<Option<CheckpointMeta>, CheckpointError> {
        match self.list()?.last() {
            Some((_, path)) => Ok(Some(read_meta(path)?)),
            None => Ok(None),
        }
    }

    pub fn model_path(&self, meta: &CheckpointMeta) -> PathBuf {
        self.dir.join(&meta.model_file)
    }

    pub fn optimizer_path(&self, meta: &CheckpointMeta) -> PathBuf {
        self.dir.join(&meta.optimizer_file)
    }

    /// Writes a checkpoint (model, optimiser, then the sidecar) and deletes all but the newest
    /// `keep`. `meta`'s file names are filled in here.
    pub fn save(&self, mut meta: CheckpointMeta, model: &BTreeMap<String, Tensor>, optimizer: &BTreeMap<String, Tensor>, keep: usize) -> Result<CheckpointMeta, CheckpointError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        let stem = Self::stem(meta.step);
        meta.model_file = format!("{stem}.safetensors");
        meta.optimizer_file = format!("{stem}.optim.safetensors");
        weights::save(model, &self.dir.join(&meta.model_file))?;
        weights::save(optimizer, &self.dir.join(&meta.optimizer_file))?;
        let sidecar = self.dir.join(format!("{stem}.json"));
        atomic_write(&sidecar, serde_json::to_string_pretty(&meta).expect("a sidecar serialises").as_bytes())?;
        self.prune(keep)?;
        Ok(meta)
    }

    /// Deletes all but the newest `keep` checkpoints (sidecar first, so none is left half).
    fn prune(&self, keep: usize) -> Result<(), CheckpointError> {
        let list = self.list()?;
        for (step, sidecar) in &list[..list.len().saturating_sub(keep)] {
            let stem = Self::stem(*step);
            for path in [sidecar.clone(), self.dir.join(format!("{stem}.safetensors")), self.dir.join(format!("{stem}.optim.safetensors"))] {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DataError::io(&path, e).into()),
                }
            }
        }
        Ok(())
    }
}

fn read_meta(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::BadSidecar { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn meta(step: u64) -> CheckpointMeta {
        CheckpointMeta {
            step,
            epoch: 0,
            cursor: Cursor { epoch: 0, position: step as usize * 2 },
            world_size: 1,
            rng: RngState { seed: 1, scheme: "test".into() },
            model_file: String::new(),
            optimizer_file: String::new(),
            optimizer: SgdSettings { lr: 0.1, momentum: 0.9, weight_decay: 0.0, poly_power: 0.9, total_steps: 10 },
            config_hash: "abc".into(),
            loss: Some(0.5),
        }
    }

    #[test]
    fn saves_lists_the_latest_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path().join("checkpoints"));
        assert!(checkpoints.latest().unwrap().is_none());
        let model = BTreeMap::from([("w".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu)))]);
        for step in [2, 4, 6] {
            checkpoints.save(meta(step), &model, &BTreeMap::new(), 2).unwrap();
        }
        let latest = checkpoints.latest().unwrap().unwrap();
        assert_eq!(latest.step, 6);
        assert_eq!(latest.model_file, "step-00000006.safetensors");
        assert_eq!(latest.cursor, Cursor { epoch: 0, position: 12 });
        let steps: Vec<u64> = checkpoints.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, [4, 6]);
        let mut files: Vec<String> = std::fs::read_dir(checkpoints.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        assert_eq!(files.len(), 6, "three files per kept checkpoint, no temporaries: {files:?}");
        // A model file without its sidecar (an interrupted save) is not a checkpoint.
        std::fs::write(checkpoints.dir().join("step-00000008.safetensors"), b"partial").unwrap();
        assert_eq!(checkpoints.latest().unwrap().unwrap().step, 6);
    }
}
