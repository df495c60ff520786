//! `wsss-dist data inspect DIR`: counts, class histogram and image sizes.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use super::{human_bytes, Summary};
use crate::data::stats::{dataset_stats, DatasetStats};
use crate::data::Dataset;

pub fn run(dir: &Path, json: bool) -> anyhow::Result<Summary> {
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
