//! `wsss-dist eval cam --config F`: the CAM dataset of `cam.split` against the ground-truth
//! masks (METHODS.md §1): one confusion matrix per τ of `eval.thresholds` over the whole split,
//! the best τ, per-class IoU, and the image-label baseline. Written to
//! `<run dir>/eval/cam.json` and `cam.md`, and printed.
//!
//! CAMs are stored at stride 4; each is resized (bilinear) to the image size here.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context};
use serde_json::json;
use tch::{Kind, Tensor};
use tracing::{info, warn};

use super::{progress_bar, Summary};
use crate::config::Config;
use crate::data::codec::decode_mask;
use crate::data::{CamRow, Dataset};
use crate::dist::World;
use crate::metrics::report::cam_markdown;
use crate::metrics::CamSweep;

pub fn run_cam(config: &Config, world: &World) -> anyhow::Result<Summary> {
    if !world.is_root() {
        return Ok(Summary::ok(json!({ "rank": world.rank, "skipped": "eval runs on rank 0" })));
    }
    let gt_dir = config.dataset(config.cam.split);
    let gt: Dataset = Dataset::open(gt_dir).with_context(|| format!("the ground truth of cam.split ({})", gt_dir.display()))?;
    let cam_dir = config.cam_dir();
    let cams: Dataset<CamRow> = Dataset::open_as(&cam_dir).with_context(|| format!("the CAMs ({}; run `wsss-dist cam` first)", cam_dir.display()))?;
    ensure!(cams.manifest().classes == gt.manifest().classes, "{} and {} have different class lists", cam_dir.display(), gt_dir.display());
    ensure!(cams.num_shards() == gt.num_shards(), "{} has {} shards but {} has {}: CAM shard k holds the CAMs of image shard k", cam_dir.display(), cams.num_shards(), gt_dir.display(), gt.num_shards());

    let mut thresholds = config.eval.thresholds.clone();
    thresholds.push(config.eval.tau);
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    let mut sweep = CamSweep::new(gt.manifest().classes.len(), &thresholds);
    let bar = progress_bar(world, gt.len() as u64, "eval cam");
    let mut missing = Vec::new();
    for shard in 0..gt.num_shards() {
        let mut by_id: HashMap<String, CamRow> = cams.shard(shard)?.read_all()?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let reader = gt.shard(shard)?;
        for group in 0..reader.num_row_groups() {
            for image in reader.read_row_group(group)? {
                let what = format!("{} id {}", gt.manifest().shards[shard].file, image.id);
                let Some(mask) = &image.mask else {
                    bail!("{what}: no ground-truth mask, so the split cannot be evaluated");
                };
                let (w, h, gt_pixels) = decode_mask(mask).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                match by_id.remove(&image.id) {
                    Some(cam) => {
                        cam.check(&what)?;
                        ensure!((cam.width, cam.height) == (w, h), "{what}: the CAM row is for {}x{}, the mask is {w}x{h}", cam.width, cam.height);
                        let full = full_resolution(&cam);
                        sweep.add_image(&gt_pixels, &full, &cam.classes, &cam.scores).with_context(|| what.clone())?;
                    }
                    None => missing.push(image.id.clone()),
                }
                bar.inc(1);
            }
        }
        if let Some(extra) = by_id.keys().next() {
            bail!("{}: CAM of image {extra}, which is not in shard {} of {}", cam_dir.display(), gt.manifest().shards[shard].file, gt_dir.display());
        }
    }
    bar.finish_and_clear();
    if !missing.is_empty() {
        warn!("{} image(s) have no CAM (skipped by `cam`) and are left out of the scores: {}", missing.len(), missing.join(", "));
    }
    let report = sweep.report(gt.manifest().classes.clone(), config.eval.tau);
    let markdown = cam_markdown(&report);
    println!("CAM evaluation of {} ({} images, {} without a CAM)\n\n{markdown}", gt_dir.display(), gt.len() - missing.len(), missing.len());
    let out = config.run_dir().join("eval");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let details = json!({ "images": gt.len() - missing.len(), "missing": missing, "report": report });
    crate::data::atomic_write(&out.join("cam.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
    crate::data::atomic_write(&out.join("cam.md"), markdown.as_bytes())?;
    info!("best τ {:.2}: mIoU {:.1}; τ {:.2}: {:.1}; image-label baseline {:.1}; written to {}", report.best_tau, 100.0 * report.best.miou, report.tau, 100.0 * report.at_tau.miou, 100.0 * report.baseline.miou, out.display());
    Ok(Summary::ok(details))
}

/// The stride-4 f16 maps of a row resized (bilinear) to the image size: [K, H, W] flattened.
fn full_resolution(cam: &CamRow) -> Vec<f32> {
    if cam.classes.is_empty() {
        return Vec::new();
    }
    let (h4, w4) = cam.map_size();
    let maps = Tensor::from_data_size(&cam.cam, &[1, cam.classes.len() as i64, h4 as i64, w4 as i64], Kind::Half).to_kind(Kind::Float);
    let full = maps.upsample_bilinear2d([cam.height as i64, cam.width as i64], false, None, None);
    Vec::<f32>::try_from(full.flatten(0, -1)).expect("a float tensor converts")
}
