//! `wsss-dist report --config F [--out FILE] [--samples N]`: the run's report as one
//! self-contained HTML file (default `<run dir>/report.html`; `crate::report` builds it):
//! loss, learning-rate and images/s curves of each training stage from its `metrics.jsonl`,
//! the CAMs' τ sweep, per-class IoU of the CAMs, the pseudo-labels and (when present) the
//! segmenter and the CAMs of its split, sample images of `cam.split` with their CAM heat map and
//! pseudo-label, and of the segmenter's split with their CAM heat map and predictions, each
//! beside its ground truth. What the run has not made yet is said on the page.
//! `run` writes it at the end.

use std::path::Path;

use anyhow::Context;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::Summary;
use crate::config::{Config, Split};
use crate::data::codec::{decode_mask, decode_row_image, Rgb};
use crate::data::{atomic_write, CamRow, Dataset, ImageRow, PseudoRow, ShardRow};
use crate::metrics::report::side_by_side;
use crate::refine::pseudo::PseudoMethod;
use crate::refine::resize::full_resolution;
use crate::report::{html, overlay_heat, overlay_labels, thumbnail, Chart, Point, Report, SampleRow, Table};

/// Height of a sample panel in pixels.
const PANEL_HEIGHT: u32 = 160;

pub fn run(config: &Config, out: Option<&Path>, samples: usize) -> anyhow::Result<Summary> {
    let run_dir = config.paths().root();
    let mut report = Report { title: format!("wsss-dist run {} ({})", config.run.name, run_dir.display()), ..Report::default() };
    if let Some(summary) = read_json(&run_dir.join("summary.json")).filter(|s| s.get("eval_cam").is_some()) {
        report.summary.push(side_by_side(&summary));
    }
    for (stage, dir) in [("CAM classifier", run_dir.clone()), ("segmenter", config.paths().seg())] {
        match read_metrics(&dir.join("metrics.jsonl")) {
            Some(lines) => report.charts.extend(curves(stage, &lines)),
            None if stage == "CAM classifier" => report.notes.push(format!("no training metrics at {}/metrics.jsonl", dir.display())),
            None => {}
        }
    }
    let evaluations = Evaluations::read(config, &run_dir.join("eval"), &mut report.notes);
    if let Some(cam) = &evaluations.cam {
        report.charts.push(sweep_chart(&cam["report"]));
    }
    let seg_split = config.seg.infer.inference.split;
    report.tables.push(iou_table(config, &evaluations));
    report.samples = sample_rows(config, config.cam.inference.split, samples, &mut report.notes)?;
    if config.seg.enabled && seg_split != config.cam.inference.split {
        report.samples.extend(sample_rows(config, seg_split, samples, &mut report.notes)?);
    }
    let page = html(&report)?;
    let out = out.map_or_else(|| run_dir.join("report.html"), Path::to_path_buf);
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    atomic_write(&out, page.as_bytes())?;
    info!(
        "report: {} ({} charts, {} sample images, {:.1} MiB)",
        out.display(),
        report.charts.len(),
        report.samples.len(),
        page.len() as f64 / (1 << 20) as f64
    );
    Ok(Summary::ok(json!({ "out": out, "charts": report.charts.len(), "samples": report.samples.len(), "notes": report.notes })))
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The `eval/*.json` files the report shows: each one the run should have made and has not is
/// a note on the page; one that cannot be read is a warning naming it and a note.
struct Evaluations {
    cam: Option<Value>,
    pseudo: Option<Value>,
    /// The random walk's labels, with `pseudo_label.method = "irn_rw"` (`pseudo` then holds
    /// the irn_seeds labels it starts from).
    pseudo_rw: Option<Value>,
    /// The CAMs of the segmenter's split, where it is not `cam.split`.
    cam_seg_split: Option<Value>,
    seg: Option<Value>,
    seg_crf: Option<Value>,
}

impl Evaluations {
    fn read(config: &Config, eval: &Path, notes: &mut Vec<String>) -> Evaluations {
        let seg_split = config.seg.infer.inference.split;
        let mut read = |file: String, command: &str, expected: bool| expected.then(|| read_evaluation(&eval.join(file), command, notes)).flatten();
        let seg = config.seg.enabled;
        Evaluations {
            cam: read("cam.json".into(), "wsss-dist eval cam", true),
            pseudo: read("pseudo.json".into(), "wsss-dist eval pseudo", true),
            pseudo_rw: read("pseudo_rw.json".into(), "wsss-dist eval pseudo", config.pseudo_label.params.method == PseudoMethod::IrnRw),
            cam_seg_split: read(format!("{}.json", Config::cam_eval_name(seg_split)), "wsss-dist run", seg && seg_split != config.cam.inference.split),
            seg: read("seg.json".into(), "wsss-dist eval seg", seg),
            seg_crf: read("seg_crf.json".into(), "wsss-dist eval seg", seg && config.seg.infer.dense_crf),
        }
    }
}

/// An evaluation's `report`, or a note (and for a damaged file a warning) saying why its
/// column is not on the page.
fn read_evaluation(path: &Path, command: &str, notes: &mut Vec<String>) -> Option<Value> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            notes.push(format!("no evaluation at {} (`{command}` makes it): not in the tables", path.display()));
            return None;
        }
        Err(e) => return damaged(path, &e.to_string(), notes),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) if value["report"].is_object() => Some(value),
        Ok(_) => damaged(path, "no `report` object in it", notes),
        Err(e) => damaged(path, &e.to_string(), notes),
    }
}

fn damaged(path: &Path, why: &str, notes: &mut Vec<String>) -> Option<Value> {
    warn!("{}: cannot read this evaluation ({why}): left out of the report", path.display());
    notes.push(format!("{} cannot be read ({why}): not in the tables", path.display()));
    None
}

/// The lines of a `metrics.jsonl`, or `None` where there is none (or nothing in it).
fn read_metrics(path: &Path) -> Option<Vec<Value>> {
    let text = std::fs::read_to_string(path).ok()?;
    let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (!lines.is_empty()).then_some(lines)
}

/// Loss, learning rate and images/s against the step.
fn curves(stage: &str, lines: &[Value]) -> Vec<Chart> {
    let series = |key: &str| -> Vec<Point> { lines.iter().filter_map(|l| Some(Point { x: l["step"].as_f64()?, y: l[key].as_f64()? })).collect() };
    [("loss", "training loss"), ("lr", "learning rate"), ("images_per_s", "images/s")]
        .into_iter()
        .map(|(key, label)| Chart {
            title: format!("{stage}: {label}"),
            x_label: "step".into(),
            y_label: label.into(),
            series: vec![(label.into(), series(key))],
        })
        .collect()
}

/// CAM mIoU (%) over τ, and the image-label baseline as a flat line.
fn sweep_chart(report: &Value) -> Chart {
    let sweep: Vec<Point> =
        report["sweep"].as_array().into_iter().flatten().filter_map(|p| Some(Point { x: p["tau"].as_f64()?, y: 100.0 * p["miou"].as_f64()? })).collect();
    let baseline = 100.0 * report["baseline"]["miou"].as_f64().unwrap_or(f64::NAN);
    let flat = sweep.iter().map(|p| Point { x: p.x, y: baseline }).collect();
    Chart {
        title: "CAM mIoU over the background threshold τ".into(),
        x_label: "τ".into(),
        y_label: "mIoU (%)".into(),
        series: vec![("CAM".into(), sweep), ("image-label baseline".into(), flat)],
    }
}

/// Per-class IoU (%) of every evaluation the run has, each column naming its split: the CAMs
/// of `cam.split` at their best τ, the image-label baseline, the pseudo-labels, the CAMs of
/// the segmenter's split (when it is another), the segmenter (without and with the CRF).
fn iou_table(config: &Config, evaluations: &Evaluations) -> Table {
    let (cam_split, seg_split) = (config.cam.inference.split.name(), config.seg.infer.inference.split.name());
    let mut columns: Vec<(String, Value)> = Vec::new();
    let cam_column =
        |cam: &Value, split: &str| (format!("CAM, {split} (τ {:.2})", cam["report"]["best_tau"].as_f64().unwrap_or(f64::NAN)), cam["report"]["best"].clone());
    if let Some(cam) = &evaluations.cam {
        columns.push(cam_column(cam, cam_split));
        columns.push((format!("image-label baseline, {cam_split}"), cam["report"]["baseline"].clone()));
    }
    let evaluated = |evaluation: &Option<Value>, name: &str, split: &str| evaluation.as_ref().map(|e| (format!("{name}, {split}"), e["report"].clone()));
    columns.extend(evaluated(&evaluations.pseudo, "pseudo-labels", cam_split));
    columns.extend(evaluated(&evaluations.pseudo_rw, "random-walk pseudo-labels", cam_split));
    columns.extend(evaluations.cam_seg_split.as_ref().map(|cam| cam_column(cam, seg_split)));
    columns.extend(evaluated(&evaluations.seg, "segmenter", seg_split));
    columns.extend(evaluated(&evaluations.seg_crf, "segmenter + CRF", seg_split));
    let classes: Vec<String> = columns.first().and_then(|(_, r)| serde_json::from_value(r["classes"].clone()).ok()).unwrap_or_default();
    let percent = |v: &Value| v.as_f64().map_or("–".to_string(), |x| format!("{:.1}", 100.0 * x));
    let mut rows: Vec<Vec<String>> =
        classes.iter().enumerate().map(|(c, name)| std::iter::once(name.clone()).chain(columns.iter().map(|(_, r)| percent(&r["iou"][c]))).collect()).collect();
    rows.push(std::iter::once("mIoU".to_string()).chain(columns.iter().map(|(_, r)| percent(&r["miou"]))).collect());
    Table { caption: "IoU per class (%)".into(), header: std::iter::once("class".to_string()).chain(columns.into_iter().map(|(n, _)| n)).collect(), rows }
}

/// The first `count` images of `split` (in shard and row order) with their CAM heat map, the
/// pseudo-label (on `cam.split`), the segmenter's predictions (on its split) and the ground
/// truth. A missing dataset is noted and its column left out.
fn sample_rows(config: &Config, split: Split, count: usize, notes: &mut Vec<String>) -> anyhow::Result<Vec<SampleRow>> {
    let images_dir = config.dataset(split);
    let Ok(images) = Dataset::open(images_dir) else {
        notes.push(format!("no images at {} for the samples", images_dir.display()));
        return Ok(Vec::new());
    };
    let rows = first_rows(&images, count)?;
    let cams: Option<Dataset<CamRow>> = open_or_note(&config.paths().cams(split), "CAMs", notes);
    let labels: Option<Dataset<PseudoRow>> =
        (split == config.cam.inference.split).then(|| open_or_note(&config.paths().pseudo_labels(), "pseudo-labels", notes)).flatten();
    let predictions: Vec<(&str, Dataset<PseudoRow>)> = [(false, "segmenter"), (true, "segmenter + CRF")]
        .into_iter()
        .filter(|_| split == config.seg.infer.inference.split)
        .filter_map(|(crf, name)| Dataset::open_as(&config.paths().seg_predictions(crf)).ok().map(|d| (name, d)))
        .collect();
    let num_classes = images.manifest().num_classes();
    let mut out = Vec::with_capacity(rows.len());
    for (shard, image) in rows {
        image.check(num_classes).map_err(|e| anyhow::anyhow!("{} id {}: {e}", images_dir.display(), image.id))?;
        let photo = decode_row_image(&image).map_err(|e| anyhow::anyhow!("{} id {}: {e}", images_dir.display(), image.id))?;
        let mut panels = vec![("photo".to_string(), thumbnail(&photo, PANEL_HEIGHT))];
        if let Some(cam) = cams.as_ref().and_then(|d| row_of(d, shard, &image.id)) {
            match cam.check(num_classes) {
                Ok(()) => panels.push(("CAM (max over its classes)".into(), thumbnail(&overlay_heat(&photo, &max_over_classes(&cam)), PANEL_HEIGHT))),
                Err(e) => notes.push(format!("the CAM of id {} ({}) is not drawn: {e}", image.id, split.name())),
            }
        }
        for (name, dataset) in labels.iter().map(|d| ("pseudo-labels", d)).chain(predictions.iter().map(|(n, d)| (*n, d))) {
            if let Some(row) = row_of(dataset, shard, &image.id) {
                panels.push((name.into(), label_panel(&photo, &row.mask)?));
            }
        }
        if let Some(mask) = &image.mask {
            panels.push(("ground truth".into(), label_panel(&photo, mask)?));
        }
        out.push(SampleRow { id: format!("{} ({})", image.id, split.name()), panels });
    }
    Ok(out)
}

/// The dataset at `dir`, or a note saying it is missing.
fn open_or_note<R: ShardRow>(dir: &Path, what: &str, notes: &mut Vec<String>) -> Option<Dataset<R>> {
    match Dataset::open_as(dir) {
        Ok(dataset) => Some(dataset),
        Err(_) => {
            notes.push(format!("no {what} at {}: not in the samples", dir.display()));
            None
        }
    }
}

/// The first `count` rows, with their shard.
fn first_rows(images: &Dataset, count: usize) -> anyhow::Result<Vec<(usize, ImageRow)>> {
    let mut rows = Vec::new();
    for shard in 0..images.num_shards() {
        let reader = images.shard(shard)?;
        for group in 0..reader.num_row_groups() {
            if rows.len() >= count {
                return Ok(rows);
            }
            rows.extend(reader.read_row_group(group)?.into_iter().map(|r| (shard, r)).take(count - rows.len()));
        }
    }
    Ok(rows)
}

/// The row of `id` in shard `shard` (map-phase outputs keep the image shards' split).
fn row_of<R: ShardRow>(dataset: &Dataset<R>, shard: usize, id: &str) -> Option<R> {
    dataset.shard(shard).ok()?.read_all().ok()?.into_iter().find(|r| r.id() == id)
}

/// Each pixel's largest CAM value over the image's classes (0 with none).
fn max_over_classes(cam: &CamRow) -> Vec<f32> {
    let pixels = (cam.width * cam.height) as usize;
    let maps = full_resolution(cam);
    (0..pixels).map(|p| maps.iter().skip(p).step_by(pixels.max(1)).copied().fold(0.0, f32::max)).collect()
}

fn label_panel(photo: &Rgb, mask: &[u8]) -> anyhow::Result<Rgb> {
    let (w, h, ids) = decode_mask(mask).map_err(anyhow::Error::msg)?;
    anyhow::ensure!((w, h) == (photo.width, photo.height), "a {w}x{h} label map for a {}x{} image", photo.width, photo.height);
    Ok(thumbnail(&overlay_labels(photo, &ids), PANEL_HEIGHT))
}
