//! `wsss-dist data verify DIR [--images IMAGES]`: lists every bad row and checksum mismatch;
//! fails if any.

use std::path::Path;

use anyhow::Context;
use tracing::info;

use super::{progress_bar, Summary};
use crate::data::verify::{image_sizes, verify};
use crate::dist::World;

pub fn run(dir: &Path, images: Option<&Path>, json: bool, world: &World) -> anyhow::Result<Summary> {
    let manifest = crate::data::Manifest::read(dir)?;
    let sizes = images.map(|images| image_sizes(images).with_context(|| format!("--images {}", images.display()))).transpose()?;
    let bar = progress_bar(world, manifest.rows, "verify");
    let report = verify(dir, sizes.as_ref(), &|n| bar.inc(n as u64)).with_context(|| format!("verifying {}", dir.display()))?;
    bar.finish_and_clear();
    let details = serde_json::to_value(&report)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&details)?);
    } else {
        for problem in &report.problems {
            println!("{problem}");
        }
        println!("{}: {} shard(s), {} rows checked, {} problem(s)", dir.display(), report.shards, report.rows_checked, report.problems.len());
    }
    info!("verified {}", dir.display());
    Ok(Summary { ok: report.problems.is_empty(), details })
}
