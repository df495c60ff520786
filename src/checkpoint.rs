//! Training checkpoints in a run directory (docs/architecture.md, "Formats"): per checkpoint a
//! model state (`step-NNNNNNNN.safetensors`, torchvision names), an optimiser state
//! (`step-NNNNNNNN.optim.safetensors`) and a JSON sidecar (`step-NNNNNNNN.json`) with the
//! step, epoch, sampler cursor, RNG and optimiser settings, the config hash and the SHA-256 of
//! both files. The sidecar is written last, so a checkpoint without one is incomplete and never
//! used. Loading checks the files against their checksums: a damaged newest checkpoint (bit
//! flips, truncation) is passed over for the newest intact one, and reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::data::sampler::Cursor;
use crate::data::shard::file_sha256;
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
    #[error("{path}: damaged: SHA-256 {found}, its sidecar {sidecar} recorded {expected}")]
    Damaged { path: PathBuf, sidecar: PathBuf, expected: String, found: String },
    #[error("{dir}: no intact checkpoint, {} damaged: {}", .damaged.len(), .damaged.join("; "))]
    AllDamaged { dir: PathBuf, damaged: Vec<String> },
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
    /// SHA-256 of `model_file` and `optimizer_file`, checked on load (absent from checkpoints
    /// written before checksums were recorded: those load unchecked).
    #[serde(default)]
    pub model_sha256: Option<String>,
    #[serde(default)]
    pub optimizer_sha256: Option<String>,
    /// The identity of the data trained on ([`crate::data::Dataset::identity`] of the images,
    /// and of the labels where a task learns from a label dataset), checked on resume (absent
    /// from checkpoints written before it was recorded).
    #[serde(default)]
    pub data_identity: Option<String>,
}

/// The checkpoint a load uses, and the newer ones passed over as damaged (one line each, for
/// the stage to warn about).
#[derive(Debug)]
pub struct Found {
    pub meta: CheckpointMeta,
    pub damaged: Vec<String>,
}

/// A model state to load, and the newer checkpoints passed over as damaged.
#[derive(Debug)]
pub struct FoundModel {
    pub path: PathBuf,
    pub damaged: Vec<String>,
}

/// The model state a path names: a safetensors file as it is (checked against its sidecar's
/// checksum when it is a checkpoint's model file), or a run directory's newest intact
/// checkpoint (`<dir>/checkpoints`). `None` when the directory holds no checkpoint yet.
pub fn model_in(path: &Path) -> Result<Option<FoundModel>, CheckpointError> {
    if !path.is_dir() {
        check_against_sidecar(path)?;
        return Ok(Some(FoundModel { path: path.to_path_buf(), damaged: Vec::new() }));
    }
    let checkpoints = Checkpoints::new(path.join("checkpoints"));
    Ok(checkpoints.latest()?.map(|found| FoundModel { path: checkpoints.model_path(&found.meta), damaged: found.damaged }))
}

/// A model file named directly (`cam.checkpoint`): when a sidecar of this project sits beside
/// it and records the file's checksum, the file must match it.
fn check_against_sidecar(model: &Path) -> Result<(), CheckpointError> {
    let Some(sidecar) = model.to_str().and_then(|p| p.strip_suffix(".safetensors")).map(|stem| PathBuf::from(format!("{stem}.json"))) else { return Ok(()) };
    let Ok(meta) = read_meta(&sidecar) else { return Ok(()) };
    if meta.model_file == model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default() {
        check_file(model, &sidecar, meta.model_sha256.as_deref())?;
    }
    Ok(())
}

/// `path`'s SHA-256 against the one `sidecar` recorded, when it recorded one.
fn check_file(path: &Path, sidecar: &Path, expected: Option<&str>) -> Result<(), CheckpointError> {
    let Some(expected) = expected else { return Ok(()) };
    let found = file_sha256(path)?;
    if found != expected {
        return Err(CheckpointError::Damaged { path: path.into(), sidecar: sidecar.into(), expected: expected.into(), found });
    }
    Ok(())
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

    /// The newest intact checkpoint: its sidecar reads and both its files match their
    /// checksums. Newer ones that do not are passed over and listed in [`Found::damaged`];
    /// checkpoints that are all damaged are an error, not a fresh start.
    pub fn latest(&self) -> Result<Option<Found>, CheckpointError> {
        let list = self.list()?;
        let mut damaged = Vec::new();
        for (_, sidecar) in list.iter().rev() {
            match self.intact(sidecar) {
                Ok(meta) => return Ok(Some(Found { meta, damaged })),
                Err(e) => damaged.push(e.to_string()),
            }
        }
        if damaged.is_empty() {
            return Ok(None);
        }
        Err(CheckpointError::AllDamaged { dir: self.dir.clone(), damaged })
    }

    /// The sidecar at `sidecar`, if its checkpoint is whole and matches its checksums.
    fn intact(&self, sidecar: &Path) -> Result<CheckpointMeta, CheckpointError> {
        let meta = read_meta(sidecar)?;
        check_file(&self.model_path(&meta), sidecar, meta.model_sha256.as_deref())?;
        check_file(&self.optimizer_path(&meta), sidecar, meta.optimizer_sha256.as_deref())?;
        Ok(meta)
    }

    /// Deletes what killed writers left here: hidden temporary files (`.name.tmp-<pid>`). Call
    /// only while holding the run's lock, when no other writer can be at work.
    pub fn remove_temporaries(&self) -> Result<(), CheckpointError> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(()) };
        for entry in entries {
            let path = entry.map_err(|e| DataError::io(&self.dir, e))?.path();
            if crate::data::is_temp_name(&path) {
                std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
            }
        }
        Ok(())
    }

    pub fn model_path(&self, meta: &CheckpointMeta) -> PathBuf {
        self.dir.join(&meta.model_file)
    }

    pub fn optimizer_path(&self, meta: &CheckpointMeta) -> PathBuf {
        self.dir.join(&meta.optimizer_file)
    }

    /// Writes a checkpoint (model, optimiser, then the sidecar) and deletes all but the newest
    /// `keep`. `meta`'s file names are filled in here.
    pub fn save(
        &self,
        mut meta: CheckpointMeta,
        model: &BTreeMap<String, Tensor>,
        optimizer: &BTreeMap<String, Tensor>,
        keep: usize,
    ) -> Result<CheckpointMeta, CheckpointError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        let stem = Self::stem(meta.step);
        meta.model_file = format!("{stem}.safetensors");
        meta.optimizer_file = format!("{stem}.optim.safetensors");
        for (tensors, file, sha256) in [(model, &meta.model_file, &mut meta.model_sha256), (optimizer, &meta.optimizer_file, &mut meta.optimizer_sha256)] {
            let path = self.dir.join(file);
            weights::save(tensors, &path)?;
            *sha256 = Some(file_sha256(&path)?);
        }
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
            model_sha256: None,
            optimizer_sha256: None,
            data_identity: None,
        }
    }

    fn save_three(checkpoints: &Checkpoints) {
        let model = BTreeMap::from([("w".to_string(), Tensor::ones([2], (Kind::Float, Device::Cpu)))]);
        for step in [2, 4, 6] {
            checkpoints.save(meta(step), &model, &BTreeMap::new(), 3).unwrap();
        }
    }

    /// Flips one bit in the middle of `path`, keeping its length.
    fn flip_a_bit(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    }

    /// A bit flip in the newest model, a truncated optimiser file, a truncated sidecar: each
    /// checkpoint is passed over, with its reason, for the newest intact one.
    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path().join("checkpoints"));
        save_three(&checkpoints);
        let newest = checkpoints.latest().unwrap().unwrap();
        assert_eq!((newest.meta.step, newest.damaged.len()), (6, 0));
        assert_eq!(newest.meta.model_sha256.as_deref(), Some(file_sha256(&checkpoints.model_path(&newest.meta)).unwrap().as_str()));

        flip_a_bit(&checkpoints.model_path(&newest.meta));
        let found = checkpoints.latest().unwrap().unwrap();
        assert_eq!(found.meta.step, 4);
        assert!(found.damaged[0].contains("step-00000006.safetensors: damaged") && found.damaged[0].contains("step-00000006.json"), "{:?}", found.damaged);
        let err = model_in(&checkpoints.model_path(&newest.meta)).unwrap_err().to_string();
        assert!(err.contains("damaged"), "a model named directly is checked against its sidecar: {err}");
        let chosen = model_in(dir.path()).unwrap().unwrap();
        assert_eq!((chosen.path.file_name().unwrap().to_str(), chosen.damaged.len()), (Some("step-00000004.safetensors"), 1));

        let optimizer = checkpoints.optimizer_path(&found.meta);
        let bytes = std::fs::read(&optimizer).unwrap();
        std::fs::write(&optimizer, &bytes[..bytes.len() - 3]).unwrap();
        let sidecar = checkpoints.dir().join("step-00000002.json");
        let text = std::fs::read_to_string(&sidecar).unwrap();
        std::fs::write(&sidecar, &text[..text.len() / 2]).unwrap();
        let err = checkpoints.latest().unwrap_err().to_string();
        assert!(err.contains("no intact checkpoint, 3 damaged") && err.contains("invalid checkpoint sidecar"), "{err}");
    }

    /// A checkpoint written before checksums were recorded loads unchecked.
    #[test]
    fn a_sidecar_without_checksums_loads() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoints = Checkpoints::new(dir.path().join("checkpoints"));
        save_three(&checkpoints);
        let sidecar = checkpoints.dir().join("step-00000006.json");
        let mut value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
        value.as_object_mut().unwrap().retain(|k, _| !k.ends_with("sha256"));
        std::fs::write(&sidecar, value.to_string()).unwrap();
        flip_a_bit(&checkpoints.dir().join("step-00000006.safetensors"));
        assert_eq!(checkpoints.latest().unwrap().unwrap().meta.step, 6);
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
        let latest = checkpoints.latest().unwrap().unwrap().meta;
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
        assert_eq!(checkpoints.latest().unwrap().unwrap().meta.step, 6);
    }
}
