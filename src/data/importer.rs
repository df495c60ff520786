//! The import driver shared by every source (synthetic, VOC, COCO): rows are produced in
//! parallel one shard at a time (memory bounded by one shard), written as Parquet shards into a
//! hidden staging directory, and the finished dataset is renamed into place only when its
//! manifest is written, so an interrupted import never leaves a dataset that looks whole.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::schema::{DatasetKind, ImageRow, Manifest, FORMAT_VERSION};
use super::shard::{shard_file_name, write_shard, ShardLayout};
use super::DataError;

/// What a source makes of one of its items.
#[derive(Debug)]
pub enum RowOutcome {
    Row(ImageRow),
    /// Left out, with the reason (naming the file): counted and reported, not fatal.
    Skip(String),
}

/// A dataset to import: `len` items, each turned into a row independently (in parallel).
pub trait ImportSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names for ids 0..=C, "background" first.
    fn classes(&self) -> Vec<String>;
    fn split(&self) -> String;
    /// How the dataset was made, recorded in the manifest.
    fn describe(&self) -> String;
    /// Item `index` as a row; an error is fatal (a missing file, an inconsistent annotation).
    fn row(&self, index: usize) -> Result<RowOutcome, DataError>;
}

#[derive(Debug, Clone, Copy)]
pub struct ImportOptions {
    /// Images per shard file.
    pub shard_rows: usize,
    pub layout: ShardLayout,
    /// Replace an existing dataset at the output path.
    pub force: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions { shard_rows: 1000, layout: ShardLayout::default(), force: false }
    }
}

#[derive(Debug, Clone)]
pub struct ImportSummary {
    pub rows: u64,
    pub shards: usize,
    pub bytes: u64,
    /// Reasons, one per skipped item.
    pub skipped: Vec<String>,
}

/// Imports `source` into the dataset directory `out`; `progress(n)` is called as items finish.
pub fn import(source: &dyn ImportSource, out: &Path, options: ImportOptions, progress: &(dyn Fn(usize) + Sync)) -> Result<ImportSummary, DataError> {
    if out.exists() && !options.force {
        return Err(DataError::Exists { path: out.into() });
    }
    let staging = staging_dir(out)?;
    let result = write_all(source, &staging, options, progress);
    match result {
        Ok(summary) => {
            replace_dir(&staging, out)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn write_all(source: &dyn ImportSource, staging: &Path, options: ImportOptions, progress: &(dyn Fn(usize) + Sync)) -> Result<ImportSummary, DataError> {
    let classes = source.classes();
    let num_classes = classes.len().saturating_sub(1) as u16;
    let mut shards = Vec::new();
    let mut skipped = Vec::new();
    let mut seen_ids = HashSet::new();
    let mut bytes = 0u64;
    let indices: Vec<usize> = (0..source.len()).collect();
    for chunk in indices.chunks(options.shard_rows.max(1)) {
        let outcomes: Vec<Result<RowOutcome, DataError>> = chunk
            .par_iter()
            .map(|&i| {
                let outcome = source.row(i);
                progress(1);
                outcome
            })
            .collect();
        let mut rows = Vec::with_capacity(chunk.len());
        for outcome in outcomes {
            match outcome? {
                RowOutcome::Row(row) => {
                    check_row(&row, num_classes)?;
                    if !seen_ids.insert(row.id.clone()) {
                        return Err(DataError::Invalid(format!("image id {} occurs twice in the source", row.id)));
                    }
                    rows.push(row);
                }
                RowOutcome::Skip(reason) => skipped.push(reason),
            }
        }
        if rows.is_empty() {
            continue;
        }
        let path = staging.join(shard_file_name(shards.len()));
        let info = write_shard(&path, &rows, options.layout)?;
        bytes += std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?.len();
        shards.push(info);
    }
    let rows = shards.iter().map(|s| s.rows).sum();
    let manifest =
        Manifest { format_version: FORMAT_VERSION, kind: DatasetKind::Images, split: source.split(), classes, rows, shards, source: source.describe() };
    manifest.write(staging)?;
    Ok(ImportSummary { rows, shards: manifest.shards.len(), bytes, skipped })
}

/// The invariants every importer must meet, checked once here.
fn check_row(row: &ImageRow, num_classes: u16) -> Result<(), DataError> {
    let sorted_unique = row.labels.windows(2).all(|w| w[0] < w[1]);
    if let Some(&bad) = row.labels.iter().find(|&&l| l == 0 || l > num_classes) {
        return Err(DataError::ClassOutOfRange { what: format!("image {}", row.id), value: bad.into(), classes: num_classes });
    }
    if !sorted_unique {
        return Err(DataError::Invalid(format!("image {}: labels {:?} are not sorted and unique", row.id, row.labels)));
    }
    Ok(())
}

/// A fresh, empty hidden directory next to `out` to build a dataset in (then [`replace_dir`]).
pub fn staging_dir(out: &Path) -> Result<PathBuf, DataError> {
    let staging = sibling(out, "partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| DataError::io(&staging, e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| DataError::io(&staging, e))?;
    Ok(staging)
}

/// `<parent>/.<name>.<what>-<pid>`: hidden next to `path`, so the final rename stays on one filesystem.
fn sibling(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
    path.with_file_name(format!(".{name}.{what}-{}", std::process::id()))
}

/// Moves the finished `staging` directory to `out`, replacing an old dataset there.
pub fn replace_dir(staging: &Path, out: &Path) -> Result<(), DataError> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    }
    let old = sibling(out, "old");
    let had_old = out.exists();
    if had_old {
        std::fs::rename(out, &old).map_err(|e| DataError::io(out, e))?;
    }
    std::fs::rename(staging, out).map_err(|e| DataError::io(out, e))?;
    if had_old {
        std::fs::remove_dir_all(&old).map_err(|e| DataError::io(&old, e))?;
    }
    Ok(())
}
