//! `wsss-dist data inspect DIR`: counts, class histogram and image sizes.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use super::{human_bytes, Summary};
use crate::data::stats::{dataset_stats, label_pixel_counts, DatasetStats};
use crate::data::{Dataset, DatasetKind, Manifest, PseudoRow};

pub fn run(dir: &Path, json: bool) -> anyhow::Result<Summary> {
    if Manifest::read(dir)?.kind == DatasetKind::PseudoLabels {
        return run_labels(dir, json);
    }
    let dataset = Dataset::open(dir)?;
    let stats = dataset_stats(&dataset).with_context(|| format!("inspecting {}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print!("{}", render(dir, &stats));
    }
    Ok(Summary::ok(serde_json::to_value(&stats)?))
}

/// The statistics as a human-readable report.
pub fn render(dir: &Path, s: &DatasetStats) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "dataset   {}", dir.display());
    let _ = writeln!(w, "kind      {} (split {})", s.kind, s.split);
    let _ = writeln!(w, "source    {}", s.source);
    let _ = writeln!(w, "rows      {} in {} shard(s), {}", s.rows, s.shards, human_bytes(s.bytes_on_disk));
    let _ = writeln!(w, "width     min {} / mean {:.1} / max {}", s.width.min, s.width.mean, s.width.max);
    let _ = writeln!(w, "height    min {} / mean {:.1} / max {}", s.height.min, s.height.mean, s.height.max);
    let _ = writeln!(w, "masks     {} of {} rows", s.rows_with_mask, s.rows);
    let bins: Vec<String> =
        s.labels_per_image.iter().enumerate().map(|(k, n)| if k + 1 == s.labels_per_image.len() { format!("{k}+:{n}") } else { format!("{k}:{n}") }).collect();
    let _ = writeln!(w, "labels    per image {}", bins.join(" "));
    let width = s.classes.iter().map(String::len).max().unwrap_or(0).max("ignore".len());
    let _ = writeln!(w, "\n  id  {:<width$}  images  pixels", "class");
    for (c, name) in s.classes.iter().enumerate() {
        let images = if c == 0 { "-".to_string() } else { s.images_per_class[c].to_string() };
        let pixels = if s.rows_with_mask > 0 { format!("{:6.2}%", 100.0 * s.pixel_fraction[c]) } else { "-".into() };
        let _ = writeln!(w, "{c:>4}  {name:<width$} {images:>7}  {pixels}");
    }
    if s.rows_with_mask > 0 {
        let _ = writeln!(w, " 255  {:<width$} {:>7}  {:6.2}%", "ignore", "-", 100.0 * s.ignore_fraction);
    }
    out
}

/// A pseudo-label (or scribble) dataset: rows, the share of pixels labelled, each class's share
/// of the pixels, and the masks that label nothing.
fn run_labels(dir: &Path, json: bool) -> anyhow::Result<Summary> {
    let labels: Dataset<PseudoRow> = Dataset::open_as(dir)?;
    let manifest = labels.manifest();
    let counts = label_pixel_counts(&labels, manifest.num_classes() as usize).with_context(|| format!("inspecting {}", dir.display()))?;
    let all = (counts.labelled() + counts.unlabelled).max(1) as f64;
    let stats = serde_json::json!({
        "kind": "pseudo_labels", "split": manifest.split, "source": manifest.source, "rows": labels.len(), "shards": labels.num_shards(),
        "classes": manifest.classes, "labelled_share": counts.labelled_share(), "masks_without_labels": counts.empty_masks,
        "pixel_fraction": counts.pixels.iter().map(|&n| n as f64 / all).collect::<Vec<_>>(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        let mut out = String::new();
        let w = &mut out;
        let _ = writeln!(w, "dataset   {}", dir.display());
        let _ = writeln!(w, "kind      pseudo-labels (split {})", manifest.split);
        let _ = writeln!(w, "source    {}", manifest.source);
        let _ = writeln!(w, "rows      {} in {} shard(s)", labels.len(), labels.num_shards());
        let _ = writeln!(w, "labelled  {:.2}% of the pixels; {} mask(s) label none", 100.0 * counts.labelled_share(), counts.empty_masks);
        let width = manifest.classes.iter().map(String::len).max().unwrap_or(0);
        let _ = writeln!(w, "\n  id  {:<width$}  pixels", "class");
        for (c, (name, &n)) in manifest.classes.iter().zip(&counts.pixels).enumerate() {
            let _ = writeln!(w, "{c:>4}  {name:<width$}  {:6.2}%", 100.0 * n as f64 / all);
        }
        print!("{out}");
    }
    Ok(Summary::ok(stats))
}
