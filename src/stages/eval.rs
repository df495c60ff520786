//! `wsss-dist eval cam --config F`: the CAM dataset of `cam.split` against the ground-truth
//! masks (docs/methods.md): one confusion matrix per τ of `eval.thresholds` over the whole split,
//! the best τ, per-class IoU, and the image-label baseline. Written to
//! `<run dir>/eval/cam.json` and `cam.md`, and printed.
//!
//! CAMs are stored at stride 4; each is resized (bilinear) to the image size here. Under
//! `mpirun` each rank evaluates every size-th shard and the confusion matrices (integer counts)
//! are summed, so the figures equal a single process's exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use serde_json::json;
use tch::{Device, Tensor};
use tracing::{info, warn};

use super::{progress_bar, Summary};
use crate::config::{Config, Split};
use crate::data::codec::decode_mask;
use crate::data::{CamRow, Dataset, PseudoRow, ShardRow};
use crate::dist::comm::all_gather_text;
use crate::dist::{self, Backend, Communicator, World};
use crate::metrics::confusion::ConfusionMatrix;
use crate::metrics::report::{cam_markdown, pseudo_markdown, PseudoReport};
use crate::metrics::CamSweep;
use crate::refine::pseudo::UNCERTAIN;
use crate::refine::resize::full_resolution;

pub fn run_cam(config: &Config, world: &World) -> anyhow::Result<Summary> {
    run_cam_as(config, world, "cam")
}

/// [`run_cam`], its report written as `<run dir>/eval/<name>.json` and `.md`.
pub fn run_cam_as(config: &Config, world: &World, name: &str) -> anyhow::Result<Summary> {
    let comm = dist::connect(world, Backend::Mpi, Device::Cpu)?;
    let mut thresholds = config.eval.thresholds.clone();
    thresholds.push(config.eval.tau);
    thresholds.sort_by(f32::total_cmp);
    thresholds.dedup();
    let (gt, cams) = open_with_gt::<CamRow>(config, config.cam.inference.split, &config.paths().cams(config.cam.inference.split), "CAMs", "cam")?;
    let mut sweep = CamSweep::new(gt.manifest().classes.len(), &thresholds);
    let num_classes = gt.manifest().num_classes();
    let missing = walk_with_gt(world, comm.as_ref(), &gt, &cams, "eval cam", |what, (w, h), gt_pixels, cam| {
        // A broken CAM must not be scored: it would read as a (bad) CAM of that image.
        cam.check(num_classes).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        ensure!((cam.width, cam.height) == (w, h), "{what}: the CAM row is for {}x{}, the mask is {w}x{h}", cam.width, cam.height);
        sweep.add_image(gt_pixels, &full_resolution(&cam), &cam.classes, &cam.scores).with_context(|| what.to_string())?;
        Ok(())
    })?;
    sum_matrices(comm.as_ref(), &mut sweep)?;
    if !world.is_root() {
        return Ok(Summary::ok(json!({ "rank": world.rank, "evaluated_shards_of": gt.num_shards() })));
    }
    if !missing.is_empty() {
        warn!("{} image(s) have no CAM (skipped by `cam`) and are left out of the scores: {}", missing.len(), missing.join(", "));
    }
    let report = sweep.report(gt.manifest().classes.clone(), config.eval.tau);
    let markdown = cam_markdown(&report);
    println!("CAM evaluation of {} ({} images, {} without a CAM)\n\n{markdown}", gt.dir().display(), gt.len() - missing.len(), missing.len());
    let details = json!({ "split": config.split_name(), "images": gt.len() - missing.len(), "missing": missing, "report": report });
    let out = write_report(config, name, &details, &markdown)?;
    info!(
        "best τ {:.2}: mIoU {:.1}; τ {:.2}: {:.1}; image-label baseline {:.1}; written to {}",
        report.best_tau,
        100.0 * report.best.miou,
        report.tau,
        100.0 * report.at_tau.miou,
        100.0 * report.baseline.miou,
        out.display()
    );
    Ok(Summary::ok(details))
}

/// The ground truth of `split` and the dataset at `dir` whose shard k holds the rows of
/// image shard k, checked to fit together. `what` names the rows in errors, `stage` the stage
/// that writes them.
fn open_with_gt<R: ShardRow>(config: &Config, split: Split, dir: &Path, what: &str, stage: &str) -> anyhow::Result<(Dataset, Dataset<R>)> {
    let gt_dir = config.dataset(split);
    let gt: Dataset = Dataset::open(gt_dir).with_context(|| format!("the ground truth of the {split:?} split ({})", gt_dir.display()))?;
    let rows: Dataset<R> = Dataset::open_as(dir).with_context(|| format!("the {what} ({}; run `wsss-dist {stage}` first)", dir.display()))?;
    ensure!(rows.manifest().classes == gt.manifest().classes, "{} and {} have different class lists", dir.display(), gt_dir.display());
    gt.check_unique_ids()?;
    rows.check_unique_ids()?;
    ensure!(
        rows.num_shards() == gt.num_shards(),
        "{} has {} shards but {} has {}: shard k holds the {what} of image shard k",
        dir.display(),
        rows.num_shards(),
        gt_dir.display(),
        gt.num_shards()
    );
    Ok((gt, rows))
}

/// Walks this rank's share of the shards of `gt` together with those of `rows`:
/// `visit(what, (w, h), gt, row)` for every image with a row. Returns, gathered from every
/// rank and sorted, the ids of the images without a row. `bar_label` names the progress bar.
fn walk_with_gt<R: ShardRow>(
    world: &World,
    comm: &dyn Communicator,
    gt: &Dataset,
    rows: &Dataset<R>,
    bar_label: &str,
    mut visit: impl FnMut(&str, (u32, u32), &[u8], R) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<String>> {
    // Each rank evaluates its share of the shards; the counts are summed after.
    let my_shards: Vec<usize> = (0..gt.num_shards()).filter(|s| s % world.size == world.rank).collect();
    let bar = progress_bar(world, my_shards.iter().map(|&s| gt.manifest().shards[s].rows).sum(), bar_label);
    let mut missing = Vec::new();
    for shard in my_shards {
        let mut by_id: HashMap<String, R> = rows.shard(shard)?.read_all()?.into_iter().map(|r| (r.id().to_string(), r)).collect();
        let reader = gt.shard(shard)?;
        for group in 0..reader.num_row_groups() {
            for image in reader.read_row_group(group)? {
                let what = format!("{} id {}", gt.manifest().shards[shard].file, image.id);
                let Some(mask) = &image.mask else {
                    bail!("{what}: no ground-truth mask, so the split cannot be evaluated");
                };
                let (w, h, gt_pixels) = decode_mask(mask).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
                match by_id.remove(&image.id) {
                    Some(row) => visit(&what, (w, h), &gt_pixels, row)?,
                    None => missing.push(image.id.clone()),
                }
                bar.inc(1);
            }
        }
        if let Some(extra) = by_id.keys().next() {
            bail!("{}: a row for image {extra}, which is not in shard {} of {}", rows.dir().display(), gt.manifest().shards[shard].file, gt.dir().display());
        }
    }
    bar.finish_and_clear();
    let mut missing: Vec<String> =
        all_gather_text(comm, &missing.join("\n"), Device::Cpu)?.iter().flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>()).collect();
    missing.sort();
    // A score over no pixels would read as mIoU 0.
    ensure!(!gt.is_empty(), "{}: the dataset holds no images: nothing to score", gt.dir().display());
    ensure!(missing.len() < gt.len(), "{}: none of the {} images of {} has a row here: nothing to score", rows.dir().display(), gt.len(), gt.dir().display());
    Ok(missing)
}

/// Writes `<run dir>/eval/<name>.json` and `.md`; returns the folder.
fn write_report(config: &Config, name: &str, details: &serde_json::Value, markdown: &str) -> anyhow::Result<std::path::PathBuf> {
    let out = config.paths().eval();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::data::atomic_write(&out.join(format!("{name}.json")), serde_json::to_string_pretty(details)?.as_bytes())?;
    crate::data::atomic_write(&out.join(format!("{name}.md")), markdown.as_bytes())?;
    Ok(out)
}

/// Sums the sweep's confusion matrices over the ranks (exact: integer counts).
fn sum_matrices(comm: &dyn Communicator, sweep: &mut CamSweep) -> anyhow::Result<()> {
    let mut counts: Vec<u64> = sweep.matrices_mut().flat_map(|m| m.counts_mut().to_vec()).collect();
    sum_over_ranks(comm, &mut counts)?;
    let mut summed = counts.into_iter();
    for matrix in sweep.matrices_mut() {
        matrix.counts_mut().iter_mut().zip(&mut summed).for_each(|(count, total)| *count = total);
    }
    Ok(())
}

/// Sums integer counts over the ranks, in place.
fn sum_over_ranks(comm: &dyn Communicator, counts: &mut [u64]) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let values: Vec<i64> = counts.iter().map(|&c| c as i64).collect();
    let mut tensor = Tensor::from_slice(&values);
    comm.all_reduce_sum(&mut tensor)?;
    let summed = Vec::<i64>::try_from(&tensor).expect("an i64 tensor converts");
    counts.iter_mut().zip(summed).for_each(|(c, s)| *c = s as u64);
    Ok(())
}

/// `wsss-dist eval pseudo --config F`: the pseudo-labels of `cam.split` against the ground
/// truth: one confusion matrix over the split of the pixels the pseudo-labels label (not 255)
/// where the ground truth is not 255; per-class IoU, mIoU, and the share of pixels labelled.
/// Written to `<run dir>/eval/pseudo.{json,md}` (`pseudo_rw.*` for `irn_rw`) and printed.
pub fn run_pseudo(config: &Config, world: &World) -> anyhow::Result<Summary> {
    let maps = LabelMaps {
        split: config.cam.inference.split,
        dir: config.paths().pseudo_labels(),
        name: config.pseudo_eval_name(),
        what: "pseudo-labels",
        stage: "pseudo-label",
    };
    evaluate_label_maps(config, world, &maps)
}

/// `wsss-dist eval seg --config F`: the segmenter's predictions of `seg.infer.split` (those
/// made without and with the CRF, whichever exist) against the ground truth, as `eval pseudo`
/// scores pseudo-labels. Written to `<run dir>/eval/seg.{json,md}` and `seg_crf.*`.
pub fn run_seg(config: &Config, world: &World) -> anyhow::Result<Summary> {
    let mut details = json!({});
    for crf in [false, true] {
        let dir = config.paths().seg_predictions(crf);
        if !crate::data::Manifest::exists(&dir) {
            continue;
        }
        let name = if crf { "seg_crf" } else { "seg" };
        let maps = LabelMaps { split: config.seg.infer.inference.split, dir, name, what: "segmenter predictions", stage: "seg" };
        details[name] = evaluate_label_maps(config, world, &maps)?.details;
    }
    ensure!(
        details.as_object().is_some_and(|d| !d.is_empty()),
        "no predictions in {} (run `wsss-dist seg` first)",
        config.paths().seg_predictions(false).display()
    );
    Ok(Summary::ok(details))
}

/// The share of the pixels in one predicted class at which `eval` warns of a collapse.
const COLLAPSE_SHARE: f64 = 0.99;

/// A dataset of label maps (pseudo-labels or predictions) to score: `name` names the report
/// files, `what` the maps in messages, `stage` the stage that writes them.
struct LabelMaps {
    split: Split,
    dir: PathBuf,
    name: &'static str,
    what: &'static str,
    stage: &'static str,
}

/// One confusion matrix over the split of the pixels the maps label (not 255) where the
/// ground truth is not 255; per-class IoU, mIoU, pixel accuracy and the share labelled.
fn evaluate_label_maps(config: &Config, world: &World, maps: &LabelMaps) -> anyhow::Result<Summary> {
    let comm = dist::connect(world, Backend::Mpi, Device::Cpu)?;
    let (gt, rows) = open_with_gt::<PseudoRow>(config, maps.split, &maps.dir, maps.what, maps.stage)?;
    let classes = gt.manifest().classes.len();
    ensure!(classes < UNCERTAIN as usize, "{}: {classes} classes leave no label value for uncertain pixels (255)", gt.dir().display());
    let mut matrix = ConfusionMatrix::new(classes);
    // Every pixel, an uncertain one as an extra last class.
    let mut complete = ConfusionMatrix::new(classes + 1);
    // [labelled pixels, all pixels]
    let mut coverage = [0u64; 2];
    let missing = walk_with_gt(world, comm.as_ref(), &gt, &rows, &format!("eval {}", maps.name), |what, (w, h), gt_pixels, row| {
        let (pw, ph, labels) = decode_mask(&row.mask).map_err(|e| anyhow::anyhow!("{what}: its label map: {e}"))?;
        ensure!((pw, ph) == (w, h), "{what}: the label map is {pw}x{ph}, the mask is {w}x{h}");
        let (g, p): (Vec<u8>, Vec<u8>) = gt_pixels.iter().zip(&labels).filter(|(_, &p)| p != UNCERTAIN).map(|(&g, &p)| (g, p)).unzip();
        matrix.add(&g, &p).with_context(|| what.to_string())?;
        let as_class: Vec<u8> = labels.iter().map(|&p| if p == UNCERTAIN { classes as u8 } else { p }).collect();
        complete.add(gt_pixels, &as_class).with_context(|| what.to_string())?;
        coverage[0] += p.len() as u64;
        coverage[1] += labels.len() as u64;
        Ok(())
    })?;
    sum_over_ranks(comm.as_ref(), matrix.counts_mut())?;
    sum_over_ranks(comm.as_ref(), complete.counts_mut())?;
    sum_over_ranks(comm.as_ref(), &mut coverage)?;
    if !world.is_root() {
        return Ok(Summary::ok(json!({ "rank": world.rank, "evaluated_shards_of": gt.num_shards() })));
    }
    if !missing.is_empty() {
        warn!("{} image(s) have no {} (skipped by `{}`) and are left out: {}", missing.len(), maps.what, maps.stage, missing.join(", "));
    }
    let labelled = coverage[0] as f64 / coverage[1].max(1) as f64;
    if let Some((class, predicted, truth)) = matrix.collapse(COLLAPSE_SHARE) {
        warn!(
            "the {} call {:.1}% of the pixels {} (the ground truth {:.1}%): the model has collapsed onto one class (for the segmenter, lower seg.train.lr; docs/segmenter.md)",
            maps.what,
            100.0 * predicted,
            gt.manifest().classes[class],
            100.0 * truth
        );
    }
    let report = PseudoReport {
        classes: gt.manifest().classes.clone(),
        miou: matrix.miou(),
        iou: matrix.iou(),
        pixel_accuracy: matrix.pixel_accuracy(),
        labelled,
        miou_all_pixels: complete.miou_of_first(classes),
    };
    let markdown = pseudo_markdown(&report);
    println!("Evaluation of the {} in {} ({} images, {} without one)\n\n{markdown}", maps.what, maps.dir.display(), gt.len() - missing.len(), missing.len());
    let details = json!({ "images": gt.len() - missing.len(), "missing": missing, "method": rows.manifest().source, "report": report });
    let out = write_report(config, maps.name, &details, &markdown)?;
    info!("{}: mIoU {:.1} on the {:.1}% of pixels labelled; written to {}", maps.what, 100.0 * report.miou, 100.0 * labelled, out.display());
    Ok(Summary::ok(details))
}
