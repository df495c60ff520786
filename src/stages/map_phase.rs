//! The driver the map-phase stages (`cam`, `pseudo-label`) share: plan on rank 0 (which tasks
//! an earlier run finished), dynamic scheduling over the ranks, each task's shard written,
//! read back and committed, and the manifest written by rank 0 when every task is done
//! (`dist::map` has the rules).
//!
//! Memory per rank: one task's inputs as the stage streams them plus its output rows (one
//! shard), whatever the size of the dataset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context};
use indicatif::ProgressBar;
use serde_json::json;
use tch::Device;
use tracing::{info, warn};

use super::progress_bar;
use crate::data::schema::{Manifest, ShardInfo, FORMAT_VERSION};
use crate::data::shard::{write_shard, ShardLayout, ShardReader};
use crate::data::{DatasetKind, ShardRow};
use crate::dist::comm::all_gather_text;
use crate::dist::map::{schedule, MapError, MapOutput, TaskRecord};
use crate::dist::{self, Backend, World};

/// What the stage describes of its job.
pub struct MapJob {
    /// The stage's name, for logs and the bar ("cam", "pseudo-label").
    pub what: &'static str,
    pub out: PathBuf,
    /// Changes whenever an input or a setting that shapes the output changes.
    pub fingerprint: String,
    /// Input images of each task (task t = input shard t).
    pub task_images: Vec<u64>,
    pub kind: DatasetKind,
    pub split: String,
    pub classes: Vec<String>,
    /// The manifest's `source`: how the output was made.
    pub source: String,
}

/// What a task's work produces; the driver sorts the rows by id and writes the shard.
pub struct TaskOutput<R> {
    pub rows: Vec<R>,
    pub skipped: Vec<String>,
    /// Seconds by phase.
    pub seconds: BTreeMap<String, f64>,
}

/// Runs the job; `work(task, bar)` computes one task (and may tick the bar per image).
/// Returns the summary details (the same on every rank for what all ranks know).
pub fn execute<R, W>(world: &World, job: &MapJob, force: bool, mut work: W) -> anyhow::Result<serde_json::Value>
where
    R: ShardRow,
    W: FnMut(usize, &ProgressBar) -> anyhow::Result<TaskOutput<R>>,
{
    let started = Instant::now();
    let comm = dist::connect(world, Backend::Mpi, Device::Cpu)?;
    let output = MapOutput::new(&job.out, job.task_images.len(), job.fingerprint.clone());
    let plan_text = if world.is_root() {
        let plan = output.prepare(force).with_context(|| format!("preparing {}", job.out.display()))?;
        serde_json::to_string(&(plan.pending, plan.done, plan.complete))?
    } else {
        String::new()
    };
    let plan_text = all_gather_text(comm.as_ref(), &plan_text, Device::Cpu)?.swap_remove(0);
    let (pending, done, complete): (Vec<usize>, Vec<TaskRecord>, bool) = serde_json::from_str(&plan_text).context("reading rank 0's plan")?;
    if complete {
        info!("{}: {} is complete for these inputs and settings ({} tasks; --force redoes them)", job.what, job.out.display(), done.len());
        return Ok(summary(job, &done, 0, &[], started));
    }
    info!("{}: {} task(s) to do, {} done by an earlier run, on {} rank(s) → {}", job.what, pending.len(), done.len(), world.size, job.out.display());

    let bar = progress_bar(world, pending.iter().map(|&t| job.task_images[t]).sum(), job.what);
    let tasks_done = std::sync::atomic::AtomicUsize::new(0);
    let on_done = |record: &TaskRecord| {
        // Rank 0 ticks its own images as it goes; other ranks' arrive with their records.
        if record.rank != 0 {
            bar.inc(record.images);
        }
        let n = tasks_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        bar.set_message(format!("{} {n}/{}", job.what, pending.len()));
    };
    let records = schedule(
        world,
        &pending,
        |task| {
            let started = Instant::now();
            let out = work(task, &bar).map_err(|e| MapError::Task(format!("{e:#}")))?;
            let write_started = Instant::now();
            let mut record = write_task(&output, world.rank, task, out, job.task_images[task])?;
            record.seconds.insert("write".into(), write_started.elapsed().as_secs_f64());
            record.seconds.insert("total".into(), started.elapsed().as_secs_f64());
            output.commit(&record)?;
            Ok(record)
        },
        &on_done,
    )?;
    bar.finish_and_clear();
    if !world.is_root() {
        return Ok(json!({ "rank": world.rank, "tasks": records.len(), "written_by": "rank 0" }));
    }
    let mut all: Vec<TaskRecord> = done.iter().cloned().chain(records.iter().cloned()).collect();
    all.sort_by_key(|r| r.task);
    ensure!(all.iter().map(|r| r.task).eq(0..job.task_images.len()), "{}: the tasks done do not cover every input shard", job.what);
    let shards: Vec<ShardInfo> = all.iter().map(|r| r.shard.clone()).collect();
    let rows = shards.iter().map(|s| s.rows).sum();
    let manifest = Manifest { format_version: FORMAT_VERSION, kind: job.kind, split: job.split.clone(), classes: job.classes.clone(), rows, shards, source: job.source.clone() };
    manifest.write(&job.out)?;
    let details = summary(job, &all, records.len(), &records, started);
    crate::data::atomic_write(&job.out.join(".map/summary.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
    let skipped = all.iter().map(|r| r.skipped.len()).sum::<usize>();
    if skipped > 0 {
        warn!("{}: {skipped} input(s) skipped (listed in the summary)", job.what);
    }
    info!("{}: wrote {rows} rows to {} in {:.1} s: {} task(s) computed, {} reused; {skipped} skipped", job.what, job.out.display(), started.elapsed().as_secs_f64(), records.len(), done.len());
    for rank in details["ranks"].as_array().into_iter().flatten() {
        info!("{}: rank {}: {} images in {} task(s), {:.2} images/s", job.what, rank["rank"], rank["images"], rank["tasks"], rank["images_per_second"].as_f64().unwrap_or(0.0));
    }
    Ok(details)
}

/// Sorts, writes and reads back one task's shard; the record is not committed yet.
fn write_task<R: ShardRow>(output: &MapOutput, rank: usize, task: usize, mut out: TaskOutput<R>, images: u64) -> Result<TaskRecord, MapError> {
    out.rows.sort_by(|a, b| a.id().cmp(b.id()));
    if let Some(pair) = out.rows.windows(2).find(|w| w[0].id() == w[1].id()) {
        return Err(MapError::Task(format!("task {task}: image id {} appears twice", pair[0].id())));
    }
    let path = output.shard_path(task);
    let shard = write_shard(&path, &out.rows, ShardLayout::default())?;
    let reader = ShardReader::<R>::open(&path)?;
    if reader.num_rows() as u64 != shard.rows {
        return Err(MapError::Task(format!("{}: read back {} rows, wrote {}", path.display(), reader.num_rows(), shard.rows)));
    }
    Ok(TaskRecord { task, shard, rank, images, skipped: out.skipped, seconds: out.seconds })
}

/// The job's summary: counts, skipped inputs, and per rank of this run its images/s.
fn summary(job: &MapJob, all: &[TaskRecord], computed: usize, this_run: &[TaskRecord], started: Instant) -> serde_json::Value {
    let mut ranks: BTreeMap<usize, (u64, usize, f64)> = BTreeMap::new();
    let mut phases: BTreeMap<String, f64> = BTreeMap::new();
    for r in this_run {
        let entry = ranks.entry(r.rank).or_default();
        entry.0 += r.images;
        entry.1 += 1;
        entry.2 += r.seconds.get("total").copied().unwrap_or(0.0);
        for (phase, s) in &r.seconds {
            *phases.entry(phase.clone()).or_default() += s;
        }
    }
    let ranks: Vec<serde_json::Value> = ranks
        .into_iter()
        .map(|(rank, (images, tasks, seconds))| json!({ "rank": rank, "images": images, "tasks": tasks, "seconds": seconds, "images_per_second": images as f64 / seconds.max(1e-9) }))
        .collect();
    let skipped: Vec<&String> = all.iter().flat_map(|r| &r.skipped).collect();
    json!({
        "out": job.out,
        "rows": all.iter().map(|r| r.shard.rows).sum::<u64>(),
        "tasks": all.len(),
        "computed": computed,
        "reused": all.len() - computed,
        "skipped": skipped.len(),
        "skipped_items": skipped,
        "seconds": started.elapsed().as_secs_f64(),
        "seconds_by_phase": phases,
        "ranks": ranks,
    })
}

/// SHA-256 over the input manifests' shard checksums and the settings.
pub fn fingerprint(inputs: &[&Manifest], settings: &str) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for manifest in inputs {
        for shard in &manifest.shards {
            hasher.update(shard.sha256.as_bytes());
        }
        hasher.update(b"|");
    }
    hasher.update(settings.as_bytes());
    hex::encode(hasher.finalize())
}
