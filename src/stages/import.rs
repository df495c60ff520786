//! `wsss-dist data import {synthetic,voc,coco}`: any source into a Parquet dataset.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tracing::{info, warn};

use super::scribbles::ScribbleSource;
use super::{human_bytes, progress_bar, Summary};
use crate::cli::{ImportSourceArgs, WriteArgs};
use crate::data::coco::CocoSource;
use crate::data::importer::{import, ImportOptions, ImportSource};
use crate::data::shard::ShardLayout;
use crate::data::synthetic::{SyntheticParams, SyntheticSource};
use crate::data::voc::VocSource;
use crate::dist::World;

/// Runs on rank 0 only: an import writes one dataset, whatever the number of ranks.
pub fn run(args: &ImportSourceArgs, world: &World) -> anyhow::Result<Summary> {
    if !world.is_root() {
        return Ok(Summary::ok(json!({ "rank": world.rank, "skipped": "import runs on rank 0" })));
    }
    let (source, out, write): (Box<dyn ImportSource>, &Path, &WriteArgs) = match args {
        ImportSourceArgs::Synthetic { out, images, seed, size, classes, split, write } => {
            let params = SyntheticParams { classes: *classes, size: *size, ..SyntheticParams::default() };
            (Box::new(SyntheticSource::new(params, *seed, *images, split)?), out, write)
        }
        ImportSourceArgs::Voc { root, split, out, write, .. } => (Box::new(VocSource::open(root, split)?), out, write),
        ImportSourceArgs::Coco { annotations, images, out, keep_unlabeled, write } => {
            info!("reading {}", annotations.display());
            (Box::new(CocoSource::open(annotations, images, *keep_unlabeled)?), out, write)
        }
    };
    let options = ImportOptions {
        shard_rows: write.shard_rows,
        layout: ShardLayout { rows_per_group: write.rows_per_group, ..ShardLayout::default() },
        force: write.force,
    };
    let imported = import_source(source.as_ref(), out, options, world)?;
    let ImportSourceArgs::Voc { scribbles: Some(dir), scribbles_out, scribble_brush, .. } = args else {
        return Ok(imported);
    };
    let scribbles_out = scribbles_out.clone().unwrap_or_else(|| with_suffix(out, "-scribbles"));
    // Rank 0 alone, as the import: a map phase of one rank.
    let source = ScribbleSource::ScribbleSup { dir, brush: *scribble_brush };
    let scribbled = super::scribbles::run(out, &scribbles_out, &source, &World::single(), write.force)?;
    Ok(Summary { ok: imported.ok && scribbled.ok, details: json!({ "import": imported.details, "scribbles": scribbled.details }) })
}

/// `path` with `suffix` added to its last component.
fn with_suffix(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

/// Imports with a progress bar and logs the summary; shared with `wsss-dist run`.
pub fn import_source(source: &dyn ImportSource, out: &Path, options: ImportOptions, world: &World) -> anyhow::Result<Summary> {
    info!("importing {} ({} items) into {}", source.describe(), source.len(), out.display());
    let started = Instant::now();
    // One writer per output directory (docs/commands.md, "Safety of inputs and outputs").
    let _lock = crate::data::lock::DirLock::acquire(out)?;
    let bar = progress_bar(world, source.len() as u64, "import");
    let summary = import(source, out, options, &|n| bar.inc(n as u64)).with_context(|| format!("importing into {}", out.display()))?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    for reason in &summary.skipped {
        warn!("skipped {reason}");
    }
    info!(
        "imported {} images into {} shard(s), {}, in {seconds:.1} s ({:.0} images/s); skipped {}",
        summary.rows,
        summary.shards,
        human_bytes(summary.bytes),
        summary.rows as f64 / seconds.max(1e-9),
        summary.skipped.len()
    );
    Ok(Summary::ok(json!({
        "out": out, "rows": summary.rows, "shards": summary.shards, "bytes": summary.bytes,
        "skipped": summary.skipped.len(), "skipped_items": summary.skipped, "seconds": seconds,
    })))
}
