//! Scribble datasets (docs/datasets.md, "Scribbles"): `wsss-dist data scribbles --from-masks`
//! draws strokes from each image's ground-truth mask, and `data import voc --scribbles DIR`
//! rasterises ScribbleSup's XML files (`data::scribble`). Either is a map phase over the image
//! dataset's shards (`engine::map_phase`: resumable, the same bytes on any number of ranks)
//! that writes a dataset in the pseudo-label format (method `scribble`), shard k from image
//! shard k, so that `train seg` joins it by id with `seg.labels` pointing at it. An image
//! without a mask, or without a readable scribble file, is skipped with a warning and counted.

use std::path::Path;

use anyhow::Context;
use serde_json::json;
use tracing::info;

use super::Summary;
use crate::config::DEFAULT_MAX_IMAGE_PIXELS;
use crate::data::codec::{decode_mask, encode_mask};
use crate::data::scribble::{labelled_share, parse_scribblesup, rasterise, scribbles_from_mask, FromMasks};
use crate::data::{Dataset, DatasetKind, ImageRow, PseudoRow};
use crate::dist::World;
use crate::engine::map_phase::{execute, fingerprint, for_each_image, MapJob, TaskOutput};

/// Where the strokes come from.
#[derive(Debug, Clone)]
pub enum ScribbleSource<'a> {
    /// Drawn from the ground-truth masks.
    FromMasks(FromMasks),
    /// ScribbleSup's `<id>.xml` files in `dir`, drawn with a brush of `brush` pixels.
    ScribbleSup { dir: &'a Path, brush: f64 },
}

impl ScribbleSource<'_> {
    /// The scribble row of one image and the share of its pixels labelled; an error is the
    /// reason to skip it.
    fn scribble(&self, image: &ImageRow, classes: &[String]) -> Result<(PseudoRow, f64), String> {
        let (width, height) = (image.width, image.height);
        let map = match self {
            ScribbleSource::FromMasks(params) => {
                let bytes = image.mask.as_ref().ok_or("the image has no ground-truth mask to draw scribbles from")?;
                let (w, h, mask) = decode_mask(bytes)?;
                if (w, h) != (width, height) {
                    return Err(format!("its mask is {w}x{h} but the image is {width}x{height}"));
                }
                scribbles_from_mask(&mask, width, height, &image.id, params)
            }
            ScribbleSource::ScribbleSup { dir, brush } => {
                let path = dir.join(format!("{}.xml", image.id));
                let xml = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let strokes = parse_scribblesup(&xml, classes, (width, height)).map_err(|e| format!("{}: {e}", path.display()))?;
                rasterise(&strokes, width, height, *brush)
            }
        };
        let row = PseudoRow { id: image.id.clone(), mask: encode_mask(width, height, &map), method: "scribble".into() };
        Ok((row, labelled_share(&map)))
    }

    fn describe(&self) -> String {
        match self {
            ScribbleSource::FromMasks(params) => format!("drawn from the ground-truth masks ({})", serde_json::to_string(params).unwrap_or_default()),
            ScribbleSource::ScribbleSup { dir, brush } => format!("ScribbleSup files in {} (brush {brush} px)", dir.display()),
        }
    }
}

/// Writes the scribbles of the image dataset `images_dir` into `out`.
pub fn run(images_dir: &Path, out: &Path, source: &ScribbleSource, world: &World, force: bool) -> anyhow::Result<Summary> {
    if let ScribbleSource::FromMasks(params) = source {
        params.validate().map_err(anyhow::Error::msg)?;
    }
    let input = Dataset::open(images_dir).with_context(|| format!("the images to scribble ({})", images_dir.display()))?;
    input.check_unique_ids()?;
    let manifest = input.manifest();
    let description = source.describe();
    let job = MapJob {
        what: "scribbles",
        out: out.to_path_buf(),
        fingerprint: fingerprint(&[manifest], &description),
        task_images: manifest.shards.iter().map(|s| s.rows).collect(),
        kind: DatasetKind::PseudoLabels,
        split: manifest.split.clone(),
        classes: manifest.classes.clone(),
        source: format!("wsss-dist scribbles of {}: {description}", images_dir.display()),
    };
    // The labelled share of the images scribbled by this rank in this run.
    let (mut labelled, mut pixels) = (0.0f64, 0u64);
    let details = execute(world, std::slice::from_ref(&job), force, |task, images_done| {
        let mut rows = Vec::new();
        let (skipped, seconds) = for_each_image(
            &input,
            task,
            DEFAULT_MAX_IMAGE_PIXELS,
            images_done,
            |image| source.scribble(image, &manifest.classes),
            |_, image, (row, share)| {
                let area = u64::from(image.width) * u64::from(image.height);
                labelled += share * area as f64;
                pixels += area;
                rows.push(row);
            },
        )?;
        Ok(TaskOutput::single(rows, skipped, seconds))
    })?;
    let share = labelled / pixels.max(1) as f64;
    if pixels > 0 {
        info!("scribbles label {:.2}% of the pixels of the images made here", 100.0 * share);
    }
    Ok(Summary::ok(json!({ "map": details[0], "labelled_share": share })))
}
