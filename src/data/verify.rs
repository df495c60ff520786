//! Full check of a dataset of any kind: every shard's checksum and schema, unique ids, and every
//! row. Image rows: the image decodes to the stored size, the labels are in range, sorted and
//! unique, and the mask (if any) decodes, matches the image size and holds only 0..=C or 255.
//! CAM rows: classes, shape and finite values ([`ShardRow::check`]). Pseudo-label rows: the
//! mask decodes and holds only 0..=C or 255; their rows do not record the image size, so a
//! mask of the wrong size shows only against the image dataset ([`image_sizes`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use super::codec::{decode_mask, decode_row_image};
use super::schema::{CamRow, DatasetKind, ImageRow, Manifest, PseudoRow, ShardRow};
use super::shard::{file_sha256, ShardReader};
use super::DataError;

/// One problem found, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Problem {
    pub shard: String,
    /// Row within the shard; None for a shard-level problem.
    pub row: Option<usize>,
    pub id: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.shard)?;
        if let Some(row) = self.row {
            write!(f, " row {row}")?;
        }
        if let Some(id) = &self.id {
            write!(f, " id {id}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub shards: usize,
    pub rows_checked: u64,
    pub problems: Vec<Problem>,
}

/// The size (width, height) of each image of an image dataset, by id.
pub type ImageSizes = HashMap<String, (u32, u32)>;

/// The image sizes of the image dataset in `dir`, for checking the masks of its pseudo-labels.
pub fn image_sizes(dir: &Path) -> Result<ImageSizes, DataError> {
    let images = super::Dataset::open(dir)?;
    let mut sizes = ImageSizes::with_capacity(images.len());
    for shard in 0..images.num_shards() {
        let reader = images.shard(shard)?;
        for group in 0..reader.num_row_groups() {
            sizes.extend(reader.read_row_group(group)?.into_iter().map(|row| (row.id, (row.width, row.height))));
        }
    }
    Ok(sizes)
}

/// Checks the dataset in `dir`; `progress(n)` is called as rows are checked. With `images`
/// (the sizes of the images the rows belong to), each pseudo-label mask must have its image's
/// size and each row an image. A missing or invalid manifest is an error; everything else is
/// collected as problems.
pub fn verify(dir: &Path, images: Option<&ImageSizes>, progress: &(dyn Fn(usize) + Sync)) -> Result<VerifyReport, DataError> {
    let manifest = Manifest::read(dir)?;
    Ok(match manifest.kind {
        DatasetKind::Images => verify_rows::<ImageRow>(dir, &manifest, images, progress),
        DatasetKind::Cams => verify_rows::<CamRow>(dir, &manifest, images, progress),
        DatasetKind::PseudoLabels => verify_rows::<PseudoRow>(dir, &manifest, images, progress),
    })
}

fn verify_rows<R: FullCheck>(dir: &Path, manifest: &Manifest, images: Option<&ImageSizes>, progress: &(dyn Fn(usize) + Sync)) -> VerifyReport {
    let num_classes = manifest.num_classes();
    let results: Vec<(u64, Vec<Problem>, Vec<IdPlace>)> = manifest
        .shards
        .par_iter()
        .enumerate()
        .map(|(s, info)| {
            let mut problems = Vec::new();
            let (checked, ids) = verify_shard::<R>(dir, (s, info), num_classes, images, &mut problems, progress);
            (checked, problems, ids)
        })
        .collect();
    let mut problems = Vec::new();
    let mut rows_checked = 0;
    let mut first_seen: HashMap<String, (usize, usize)> = HashMap::new();
    for (checked, shard_problems, ids) in results {
        rows_checked += checked;
        problems.extend(shard_problems);
        for (id, shard, row) in ids {
            if let Some(&(s0, r0)) = first_seen.get(&id) {
                problems.push(Problem {
                    shard: manifest.shards[shard].file.clone(),
                    row: Some(row),
                    id: Some(id),
                    message: format!("duplicate id (first at {} row {r0})", manifest.shards[s0].file),
                });
            } else {
                first_seen.insert(id, (shard, row));
            }
        }
    }
    VerifyReport { shards: manifest.shards.len(), rows_checked, problems }
}

/// An id and where it is: (id, shard, row).
type IdPlace = (String, usize, usize);
type ShardRows = (u64, Vec<IdPlace>);

fn verify_shard<R: FullCheck>(
    dir: &Path,
    (s, info): (usize, &super::ShardInfo),
    num_classes: u16,
    images: Option<&ImageSizes>,
    problems: &mut Vec<Problem>,
    progress: &(dyn Fn(usize) + Sync),
) -> ShardRows {
    let path = dir.join(&info.file);
    let shard_problem = |message: String| Problem { shard: info.file.clone(), row: None, id: None, message };
    match file_sha256(&path) {
        Ok(sum) if sum == info.sha256 => {}
        Ok(sum) => problems.push(shard_problem(format!("checksum mismatch: manifest {} file {sum}", info.sha256))),
        Err(e) => {
            problems.push(shard_problem(e.to_string()));
            return (0, Vec::new());
        }
    }
    let reader = match ShardReader::<R>::open(&path) {
        Ok(reader) => reader,
        Err(e) => {
            problems.push(shard_problem(e.to_string()));
            return (0, Vec::new());
        }
    };
    if reader.num_rows() as u64 != info.rows {
        problems.push(shard_problem(format!("holds {} rows, the manifest says {}", reader.num_rows(), info.rows)));
    }
    let found = Mutex::new(Vec::new());
    let mut ids = Vec::new();
    let mut checked = 0u64;
    let mut row_base = 0;
    for group in 0..reader.num_row_groups() {
        let rows = match reader.read_row_group(group) {
            Ok(rows) => rows,
            Err(e) => {
                problems.push(shard_problem(format!("row group {group}: {e}")));
                break;
            }
        };
        rows.par_iter().enumerate().for_each(|(i, row)| {
            let image_size = images.map(|sizes| sizes.get(row.id()).copied().ok_or_else(|| "no image of this id in the image dataset".to_string()));
            if let Err(message) = image_size.transpose().and_then(|size| row.full_check(num_classes, size)) {
                let problem = Problem { shard: info.file.clone(), row: Some(row_base + i), id: Some(row.id().to_string()), message };
                found.lock().expect("no panics while held").push(problem);
            }
            progress(1);
        });
        ids.extend(rows.iter().enumerate().map(|(i, r)| (r.id().to_string(), s, row_base + i)));
        checked += rows.len() as u64;
        row_base += rows.len();
    }
    let mut found = found.into_inner().expect("no panics while held");
    found.sort_by_key(|p| p.row);
    problems.extend(found);
    (checked, ids)
}

/// Everything that can be wrong with one row of a kind, as a message: [`ShardRow::check`] and
/// what only decoding shows.
trait FullCheck: ShardRow {
    /// `image_size`: the size of the row's image, where known from elsewhere.
    fn full_check(&self, num_classes: u16, image_size: Option<(u32, u32)>) -> Result<(), String>;
}

impl FullCheck for ImageRow {
    fn full_check(&self, num_classes: u16, _: Option<(u32, u32)>) -> Result<(), String> {
        self.check(num_classes)?;
        // A full decode catches truncated and corrupt entropy-coded data that a header does not.
        let rgb = decode_row_image(self)?;
        match &self.mask {
            Some(bytes) => check_mask(bytes, Some((rgb.width, rgb.height)), num_classes),
            None => Ok(()),
        }
    }
}

impl FullCheck for CamRow {
    fn full_check(&self, num_classes: u16, _: Option<(u32, u32)>) -> Result<(), String> {
        self.check(num_classes)
    }
}

impl FullCheck for PseudoRow {
    fn full_check(&self, num_classes: u16, image_size: Option<(u32, u32)>) -> Result<(), String> {
        self.check(num_classes)?;
        check_mask(&self.mask, image_size, num_classes)
    }
}

/// A label PNG decodes, has the image's size (when known) and holds only 0..=C or 255.
fn check_mask(bytes: &[u8], size: Option<(u32, u32)>, num_classes: u16) -> Result<(), String> {
    let (mw, mh, ids) = decode_mask(bytes)?;
    if let Some((w, h)) = size.filter(|&s| s != (mw, mh)) {
        return Err(format!("mask is {mw}x{mh} but the image is {w}x{h}"));
    }
    if let Some(&bad) = ids.iter().find(|&&v| v as u16 > num_classes && v != 255) {
        return Err(format!("mask holds class id {bad}, out of range 0..={num_classes} (255 = ignore)"));
    }
    Ok(())
}
