//! `wsss-dist export png --labels DIR --out DIR`: the masks of a pseudo-label dataset (or the
//! ground truth of an image dataset) as VOC palette PNGs `<out>/<id>.png` — the layout of
//! VOC's `SegmentationClass/`, which mmsegmentation, detectron2 and IRNet-style loaders read
//! (pixel value = class id, 255 = ignore). Each file is written atomically; rows without a
//! mask (image datasets) are counted and reported.

use std::path::Path;

use anyhow::{bail, Context};
use rayon::prelude::*;
use serde_json::json;
use tracing::{info, warn};

use super::Summary;
use crate::data::codec::{decode_mask, encode_voc_palette_png};
use crate::data::{atomic_write, Dataset, DatasetKind, ImageRow, Manifest, PseudoRow, ShardRow};

pub fn run_png(labels: &Path, out: &Path) -> anyhow::Result<Summary> {
    let manifest = Manifest::read(labels)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (written, without_mask) = match manifest.kind {
        DatasetKind::PseudoLabels => export(&Dataset::<PseudoRow>::open_as(labels)?, out, |r| Some(&r.mask))?,
        DatasetKind::Images => export(&Dataset::<ImageRow>::open_as(labels)?, out, |r| r.mask.as_ref())?,
        DatasetKind::Cams => bail!("{} holds CAMs, not label maps: run `wsss-dist pseudo-label` and export its output", labels.display()),
    };
    if !without_mask.is_empty() {
        warn!("{} row(s) of {} have no mask and were not exported: {}", without_mask.len(), labels.display(), without_mask.join(", "));
    }
    info!("wrote {written} palette PNGs to {}", out.display());
    Ok(Summary::ok(json!({ "out": out, "written": written, "without_mask": without_mask })))
}

/// Writes every row's mask; returns the count written and the ids without a mask.
fn export<R: ShardRow>(dataset: &Dataset<R>, out: &Path, mask: impl Fn(&R) -> Option<&Vec<u8>> + Sync) -> anyhow::Result<(usize, Vec<String>)> {
    let mut written = 0;
    let mut without_mask = Vec::new();
    for shard in 0..dataset.num_shards() {
        let rows = dataset.shard(shard)?.read_all()?;
        let file = &dataset.manifest().shards[shard].file;
        let results: Vec<anyhow::Result<bool>> = rows
            .par_iter()
            .map(|row| {
                let Some(bytes) = mask(row) else { return Ok(false) };
                let (w, h, ids) = decode_mask(bytes).map_err(|e| anyhow::anyhow!("{file} id {}: {e}", row.id()))?;
                if row.id().contains(['/', '\\']) || row.id().starts_with('.') {
                    bail!("{file} id {}: not usable as a file name", row.id());
                }
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
