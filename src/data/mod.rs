//! Datasets: the Parquet format, importers, the rank-aware sampler and the training loader.
//! Library code: returns [`DataError`]s that name the file, shard, row or image id; never prints.

pub mod augment;
pub mod coco;
pub mod coco_mask;
pub mod codec;
pub mod dataset;
pub mod importer;
pub mod integrity;
pub mod join;
pub mod loader;
pub mod lock;
pub mod preprocess;
pub mod sampler;
pub mod schema;
pub mod scribble;
pub mod shard;
pub mod stats;
pub mod synthetic;
pub mod verify;
pub mod voc;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use dataset::Dataset;
pub use schema::{CamRow, DatasetKind, ImageRow, Manifest, PseudoRow, ShardInfo, ShardRow};

/// Everything that can go wrong reading or writing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir} is not a dataset: no _manifest.json in it")]
    MissingManifest { dir: PathBuf },
    #[error("{path}: invalid manifest: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("{path}: not a wsss-dist image shard: {message}")]
    ForeignShard { path: PathBuf, message: String },
    #[error("{path}: cannot read Parquet (truncated or not a Parquet file?): {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{path}: cannot write Parquet (disk full?): {source}")]
    ParquetWrite { path: PathBuf, source: parquet::errors::ParquetError },
    #[error("{path}: SHA-256 {found} is not the manifest's {expected}: the shard changed after it was written (`wsss-dist data verify {dir}` checks every row)", dir = path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    Checksum { path: PathBuf, expected: String, found: String },
    #[error("building a record batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{what}: {message}")]
    BadImage { what: String, message: String },
    #[error("{what}: class id {value} is out of range (dataset has classes 1..={classes}, 255 = ignore)")]
    ClassOutOfRange { what: String, value: u32, classes: u16 },
    #[error("{what}: mask is {mask_width}x{mask_height} but the image is {width}x{height}")]
    MaskSize { what: String, width: u32, height: u32, mask_width: u32, mask_height: u32 },
    #[error("{path} already exists (pass --force to replace it)")]
    Exists { path: PathBuf },
    #[error("{dir} is being written by another job (lock {lock} held by {holder}); wait for it to end, or write elsewhere")]
    Locked { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> DataError {
        DataError::Io { path: path.into(), source }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader never sees a partial file.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    write_via_temp(path, |tmp| {
        let mut file = std::fs::File::create(tmp).map_err(|e| DataError::io(tmp, e))?;
        file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| DataError::io(tmp, e))
    })
}

/// Runs `write` on the temporary name of `path` ([`temp_name`]) and renames the result into
/// place. If anything fails the temporary file is removed: a write that failed (a full disk)
/// leaves nothing behind to fill the disk for the next run.
pub fn write_via_temp<T, E: From<DataError>>(path: &Path, write: impl FnOnce(&Path) -> Result<T, E>) -> Result<T, E> {
    let tmp = temp_name(path);
    let result = write(&tmp).and_then(|value| {
        std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))?;
        Ok(value)
    });
    if result.is_err() {
        // It may not exist (the failure came before it was created).
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `dir/.name.tmp-<pid>`: hidden, unique per process, never mistaken for the real file.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}{TEMP_MARK}{}", std::process::id()))
}

/// What [`temp_name`] puts between the name and the process id.
const TEMP_MARK: &str = ".tmp-";

/// Whether `path` is a [`temp_name`] (e.g. one a killed writer left behind).
pub fn is_temp_name(path: &Path) -> bool {
    path.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| n.starts_with('.') && n.contains(TEMP_MARK))
}
