//! `wsss-dist export png --labels DIR --out DIR`: the masks of a pseudo-label dataset (or the
//! ground truth of an image dataset) as VOC palette PNGs `<out>/<id>.png` — the layout of
//! VOC's `SegmentationClass/`, which mmsegmentation, detectron2 and IRNet-style loaders read
//! (pixel value = class id, 255 = ignore). Every file is written into a hidden folder beside
//! `--out` first and moved in only when all of them were written: a failure leaves `--out` as
//! it was. Rows without a mask (image datasets) are counted and reported.

use std::path::Path;

use anyhow::Context;
use rayon::prelude::*;
use serde_json::json;
use tracing::{info, warn};

use super::Summary;
use crate::data::codec::{decode_mask, encode_voc_palette_png};
use crate::data::{atomic_write, temp_name, Dataset, DatasetKind, ImageRow, Manifest, PseudoRow, ShardRow};

pub fn run_png(labels: &Path, out: &Path) -> anyhow::Result<Summary> {
    let manifest = Manifest::read(labels)?;
    let _lock = crate::data::lock::DirLock::acquire(out)?;
    let staging = temp_name(out);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let exported = match manifest.kind {
        DatasetKind::PseudoLabels => Dataset::<PseudoRow>::open_as(labels).map_err(Into::into).and_then(|d| export(&d, &staging, |r| Some(&r.mask))),
        DatasetKind::Images => Dataset::<ImageRow>::open_as(labels).map_err(Into::into).and_then(|d| export(&d, &staging, |r| r.mask.as_ref())),
        DatasetKind::Cams => Err(anyhow::anyhow!("{} holds CAMs, not label maps: run `wsss-dist pseudo-label` and export its output", labels.display())),
    };
    let (written, without_mask) = match exported.and_then(|counts| move_into(&staging, out).map(|()| counts)) {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.context(format!("nothing was written to {}", out.display())));
        }
    };
    if !without_mask.is_empty() {
        warn!("{} row(s) of {} have no mask and were not exported: {}", without_mask.len(), labels.display(), without_mask.join(", "));
    }
    info!("wrote {written} palette PNGs to {}", out.display());
    Ok(Summary::ok(json!({ "out": out, "written": written, "without_mask": without_mask })))
}

/// Moves every file of `staging` into `out` (renames on one file system) and removes it.
fn move_into(staging: &Path, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for entry in std::fs::read_dir(staging).with_context(|| format!("reading {}", staging.display()))? {
        let entry = entry?;
        let target = out.join(entry.file_name());
        std::fs::rename(entry.path(), &target).with_context(|| format!("moving {} into {}", entry.path().display(), out.display()))?;
    }
    std::fs::remove_dir(staging).with_context(|| format!("removing {}", staging.display()))
}

/// Writes every row's mask; returns the count written and the ids without a mask.
fn export<R: ShardRow>(dataset: &Dataset<R>, out: &Path, mask: impl Fn(&R) -> Option<&Vec<u8>> + Sync) -> anyhow::Result<(usize, Vec<String>)> {
    let mut written = 0;
    let mut without_mask = Vec::new();
    let num_classes = dataset.manifest().num_classes();
    for shard in 0..dataset.num_shards() {
        let rows = dataset.shard(shard)?.read_all()?;
        let file = &dataset.manifest().shards[shard].file;
        let results: Vec<anyhow::Result<bool>> = rows
            .par_iter()
            .map(|row| {
                // The id names the file: it must be a plain name.
                row.check(num_classes).map_err(|e| anyhow::anyhow!("{file} id {:?}: {e}", row.id()))?;
                let Some(bytes) = mask(row) else { return Ok(false) };
                let (w, h, ids) = decode_mask(bytes).map_err(|e| anyhow::anyhow!("{file} id {}: {e}", row.id()))?;
                atomic_write(&out.join(format!("{}.png", row.id())), &encode_voc_palette_png(w, h, &ids))?;
                Ok(true)
            })
            .collect();
        for (row, result) in rows.iter().zip(results) {
            if result? {
                written += 1;
            } else {
                without_mask.push(row.id().to_string());
            }
        }
    }
    Ok((written, without_mask))
}
