//! `wsss-dist data verify DIR`: lists every bad row and checksum mismatch; fails if any.

use std::path::Path;

use anyhow::Context;
use tracing::info;

use super::{progress_bar, Summary};
use crate::data::verify::verify;
use crate::dist::World;

pub fn run(dir: &Path, json: bool, world: &World) -> anyhow::Result<Summary> {
    let manifest = crate::data::Manifest::read(dir)?;
    let bar = progress_bar(world, manifest.rows, "verify");
    let report = verify(dir, &|n| bar.inc(n as u64)).with_context(|| format!("verifying {}", dir.display()))?;
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
