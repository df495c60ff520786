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
use serde_json::json;
use tch::Device;
use tracing::{info, warn};

use super::progress_bar;
use crate::data::lock::DirLock;
use crate::data::schema::{Manifest, ShardInfo, FORMAT_VERSION};
use crate::data::shard::{write_shard, ShardLayout, ShardReader};
use crate::data::{Dataset, DatasetKind, ImageRow, ShardRow};
use crate::dist::comm::{all_gather_text, sum_values};
use crate::dist::map::{schedule, MapError, MapOutput, MapPlan, Progress, TaskRecord};
use crate::dist::{self, Backend, Communicator, World};
use crate::stop::Stopped;

/// What the stage describes of its job.
#[derive(Clone)]
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

/// What a task's work produces: one shard for each output of the job (in the order of
/// [`execute`]'s jobs); the driver sorts each shard's rows by id and writes it.
pub struct TaskOutput {
    pub shards: Vec<ShardOutput>,
    /// Seconds by phase.
    pub seconds: BTreeMap<String, f64>,
}

impl TaskOutput {
    /// The output of a job with one output.
    pub fn single<R: ShardRow + 'static>(rows: Vec<R>, skipped: Vec<String>, seconds: BTreeMap<String, f64>) -> TaskOutput {
        TaskOutput { shards: vec![ShardOutput::new(rows, skipped)], seconds }
    }
}

/// One output shard of a task: its rows and the inputs it skipped.
pub struct ShardOutput {
    rows: Box<dyn TaskRows>,
    skipped: Vec<String>,
}

impl ShardOutput {
    pub fn new<R: ShardRow + 'static>(rows: Vec<R>, skipped: Vec<String>) -> ShardOutput {
        ShardOutput { rows: Box::new(rows), skipped }
    }
}

/// The rows of one shard, whatever their type, so that one task can fill several outputs.
trait TaskRows {
    /// Sorts the rows by id, writes the shard of `task` and reads it back.
    fn write(self: Box<Self>, output: &MapOutput, task: usize) -> Result<ShardInfo, MapError>;
}

impl<R: ShardRow> TaskRows for Vec<R> {
    fn write(mut self: Box<Self>, output: &MapOutput, task: usize) -> Result<ShardInfo, MapError> {
        self.sort_by(|a, b| a.id().cmp(b.id()));
        if let Some(pair) = self.windows(2).find(|w| w[0].id() == w[1].id()) {
            return Err(MapError::Task(format!("task {task}: image id {} appears twice", pair[0].id())));
        }
        let path = output.shard_path(task);
        let shard = write_shard(&path, &self, ShardLayout::default())?;
        let reader = ShardReader::<R>::open(&path)?;
        if reader.num_rows() as u64 != shard.rows {
            return Err(MapError::Task(format!("{}: read back {} rows, wrote {}", path.display(), reader.num_rows(), shard.rows)));
        }
        Ok(shard)
    }
}

/// Where a job with several outputs stands: a task is done only where every output has it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Plan {
    pending: Vec<usize>,
    /// Per done task, its record in each output.
    done: Vec<Vec<TaskRecord>>,
    complete: bool,
}

impl Plan {
    fn merge(plans: Vec<MapPlan>, tasks: usize) -> Plan {
        let outputs = plans.len();
        let complete = plans.iter().all(|p| p.complete);
        let mut by_task: Vec<Vec<TaskRecord>> = vec![Vec::new(); tasks];
        for record in plans.into_iter().flat_map(|p| p.done) {
            by_task[record.task].push(record);
        }
        let pending = (0..tasks).filter(|&t| by_task[t].len() < outputs).collect();
        Plan { pending, done: by_task.into_iter().filter(|r| r.len() == outputs).collect(), complete }
    }
}

/// Runs a map job whose tasks fill every one of `jobs`' outputs (the jobs share their tasks);
/// `work(task, images_done)` computes one task and reports its images (done or skipped) as
/// it goes, for rank 0's bar. Returns each job's summary details (the same on every rank for
/// what all ranks know).
pub fn execute<W>(world: &World, jobs: &[MapJob], force: bool, mut work: W) -> anyhow::Result<Vec<serde_json::Value>>
where
    W: FnMut(usize, &dyn Fn(u64)) -> anyhow::Result<TaskOutput>,
{
    let started = Instant::now();
    let task_images = &jobs[0].task_images;
    ensure!(jobs.iter().all(|j| &j.task_images == task_images), "the outputs of one map job must share its tasks");
    let what = jobs.iter().map(|j| j.what).collect::<Vec<_>>().join(" + ");
    let comm = dist::connect(world, Backend::Mpi, Device::Cpu)?;
    let outputs: Vec<MapOutput> = jobs.iter().map(|j| MapOutput::new(&j.out, task_images.len(), j.fingerprint.clone())).collect();
    // Rank 0 holds every output's lock until the job ends: one writer per output directory.
    let _locks = if world.is_root() { jobs.iter().map(|j| DirLock::acquire(&j.out)).collect::<Result<Vec<_>, _>>()? } else { Vec::new() };
    let plan = agree_on_plan(world, comm.as_ref(), &outputs, jobs, force)?;
    let done_in = |i: usize| plan.done.iter().map(|records| records[i].clone()).collect::<Vec<_>>();
    if plan.complete {
        for job in jobs {
            info!("{}: {} is complete for these inputs and settings ({} tasks; --force redoes them)", job.what, job.out.display(), plan.done.len());
        }
        return Ok(jobs.iter().enumerate().map(|(i, job)| summary(job, &done_in(i), 0, &[], started)).collect());
    }
    let pending = &plan.pending;
    let outs = jobs.iter().map(|j| j.out.display().to_string()).collect::<Vec<_>>().join(", ");
    info!("{what}: {} task(s) to do, {} done by an earlier run, on {} rank(s) → {outs}", pending.len(), plan.done.len(), world.size);

    let bar = progress_bar(world, pending.iter().map(|&t| task_images[t]).sum(), &what);
    let tasks_done = std::sync::atomic::AtomicUsize::new(0);
    let on_done = |_: &Vec<TaskRecord>| {
        let n = tasks_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        bar.set_message(format!("{what} {n}/{}", pending.len()));
    };
    let on_images = |images: u64| bar.inc(images);
    let reports = schedule(
        world,
        pending,
        |task, images_done| {
            let started = Instant::now();
            let out = work(task, images_done).map_err(|e| MapError::Task(format!("{e:#}")))?;
            if out.shards.len() != outputs.len() {
                return Err(MapError::Task(format!("task {task} made {} shard(s) for {} output(s)", out.shards.len(), outputs.len())));
            }
            let write_started = Instant::now();
            let written = outputs
                .iter()
                .zip(out.shards)
                .map(|(output, shard)| Ok((shard.rows.write(output, task)?, shard.skipped)))
                .collect::<Result<Vec<_>, MapError>>()?;
            let mut seconds = out.seconds;
            seconds.insert("write".into(), write_started.elapsed().as_secs_f64());
            seconds.insert("total".into(), started.elapsed().as_secs_f64());
            let records: Vec<TaskRecord> = written
                .into_iter()
                .map(|(shard, skipped)| TaskRecord { task, shard, rank: world.rank, images: task_images[task], skipped, seconds: seconds.clone() })
                .collect();
            // The shards are all in place before any record goes in.
            for (output, record) in outputs.iter().zip(&records) {
                output.commit(record)?;
            }
            Ok(records)
        },
        &Progress { images: &on_images, done: &on_done },
    )?;
    bar.finish_and_clear();
    let images_seen = bar.position();
    // Every rank learns whether the job stopped early (rank 0 knows it from the tasks done).
    let unfinished = if world.is_root() { (pending.len() - reports.len()) as f64 } else { 0.0 };
    let unfinished = sum_values(comm.as_ref(), &[unfinished], Device::Cpu)?[0];
    if unfinished > 0.0 {
        let kept = format!(
            "{} of {} task(s) done and kept in {outs} ({unfinished} left, no manifest yet); run the same command again to finish",
            plan.done.len() + pending.len() - unfinished as usize,
            task_images.len()
        );
        return Err(Stopped { cause: crate::stop::cause(), kept }.into());
    }
    if !world.is_root() {
        return Ok(jobs.iter().map(|_| json!({ "rank": world.rank, "tasks": reports.len(), "written_by": "rank 0" })).collect());
    }
    jobs.iter().enumerate().map(|(i, job)| finish_job(job, done_in(i), reports.iter().map(|r| r[i].clone()).collect(), started, images_seen)).collect()
}

/// Rank 0 prepares every output (warning of each one repaired) and every rank gets the
/// merged plan.
fn agree_on_plan(world: &World, comm: &dyn Communicator, outputs: &[MapOutput], jobs: &[MapJob], force: bool) -> anyhow::Result<Plan> {
    let plan_text = if world.is_root() {
        let plans = outputs
            .iter()
            .zip(jobs)
            .map(|(o, j)| o.prepare(force).with_context(|| format!("preparing {}", j.out.display())))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for (plan, job) in plans.iter().zip(jobs).filter(|(p, _)| !p.repaired.is_empty()) {
            warn!(
                "{}: {} was complete, but the shard or record of task(s) {:?} has gone or changed since: redoing them",
                job.what,
                job.out.display(),
                plan.repaired
            );
        }
        serde_json::to_string(&Plan::merge(plans, jobs[0].task_images.len()))?
    } else {
        String::new()
    };
    let plan_text = all_gather_text(comm, &plan_text, Device::Cpu)?.swap_remove(0);
    serde_json::from_str(&plan_text).context("reading rank 0's plan")
}

/// Rank 0, once every task is done: the manifest and summary of one output, and its logs.
/// `images_seen`: what rank 0's bar counted, every image of this run, each rank's as it went.
fn finish_job(job: &MapJob, done: Vec<TaskRecord>, records: Vec<TaskRecord>, started: Instant, images_seen: u64) -> anyhow::Result<serde_json::Value> {
    let mut all: Vec<TaskRecord> = done.into_iter().chain(records.iter().cloned()).collect();
    all.sort_by_key(|r| r.task);
    ensure!(all.iter().map(|r| r.task).eq(0..job.task_images.len()), "{}: the tasks done do not cover every input shard", job.what);
    let shards: Vec<ShardInfo> = all.iter().map(|r| r.shard.clone()).collect();
    let rows = shards.iter().map(|s| s.rows).sum();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: job.kind,
        split: job.split.clone(),
        classes: job.classes.clone(),
        rows,
        shards,
        source: job.source.clone(),
    };
    manifest.write(&job.out)?;
    let mut details = summary(job, &all, records.len(), &records, started);
    details["progress_images"] = json!(images_seen);
    crate::data::atomic_write(&job.out.join(".map/summary.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
    let skipped = all.iter().map(|r| r.skipped.len()).sum::<usize>();
    if skipped > 0 {
        warn!("{}: {skipped} input(s) skipped (listed in the summary)", job.what);
    }
    info!(
        "{}: wrote {rows} rows to {} in {:.1} s: {} task(s) computed, {} reused; {skipped} skipped",
        job.what,
        job.out.display(),
        started.elapsed().as_secs_f64(),
        records.len(),
        all.len() - records.len()
    );
    for rank in details["ranks"].as_array().into_iter().flatten() {
        info!(
            "{}: rank {}: {} images in {} task(s), {:.2} images/s",
            job.what,
            rank["rank"],
            rank["images"],
            rank["tasks"],
            rank["images_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(details)
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

/// Runs `infer` on every image of input shard `task` in order, row group by row group, and
/// hands each result to `each(where, image, result)` (`where`: file, row group and item, for
/// messages); an error is the reason to skip that image, warned about and returned: a row
/// that fails [`ShardRow::check`], an image over `max_pixels`, or an `infer` that failed
/// (a libtorch error such as a failed allocation included, [`guarded`]). Counts every image
/// to `images_done`. Returns the skipped images and the seconds by phase.
pub fn for_each_image<R>(
    input: &Dataset,
    task: usize,
    max_pixels: u64,
    images_done: &dyn Fn(u64),
    mut infer: impl FnMut(&ImageRow) -> Result<R, String>,
    mut each: impl FnMut(&str, ImageRow, R),
) -> anyhow::Result<(Vec<String>, BTreeMap<String, f64>)> {
    let num_classes = input.manifest().num_classes();
    let mut skipped = Vec::new();
    let mut inference_seconds = 0.0;
    let read_seconds = for_each_group(input, task, |group, images| {
        for (i, image) in images.into_iter().enumerate() {
            let inference = Instant::now();
            let result = usable(&image, num_classes, max_pixels).and_then(|()| guarded(|| infer(&image)));
            inference_seconds += inference.elapsed().as_secs_f64();
            let place = format!("{group} item {i}");
            if let Some(result) = keep_or_skip(result, &place, &image.id, &mut skipped) {
                each(&place, image, result);
            }
            images_done(1);
        }
        Ok(())
    })?;
    Ok((skipped, BTreeMap::from([("read".to_string(), read_seconds), ("inference".to_string(), inference_seconds)])))
}

/// As [`for_each_image`], for a stage that works on a row group's images at once (the
/// refinement threads of `pseudo-label`): `process` gets every image of the group and returns
/// a result for each, in order (it checks [`usable`] itself); `each(image, result)` gets the
/// good ones. Returns the skipped images and the seconds spent reading.
pub fn for_each_row_group<R>(
    input: &Dataset,
    task: usize,
    images_done: &dyn Fn(u64),
    mut process: impl FnMut(&[ImageRow]) -> Vec<Result<R, String>>,
    mut each: impl FnMut(ImageRow, R),
) -> anyhow::Result<(Vec<String>, f64)> {
    let mut skipped = Vec::new();
    let read_seconds = for_each_group(input, task, |group, images| {
        let results = process(&images);
        ensure!(results.len() == images.len(), "{group}: {} results for {} images", results.len(), images.len());
        let count = images.len() as u64;
        for (i, (image, result)) in images.into_iter().zip(results).enumerate() {
            if let Some(result) = keep_or_skip(result, &format!("{group} item {i}"), &image.id, &mut skipped) {
                each(image, result);
            }
        }
        images_done(count);
        Ok(())
    })?;
    Ok((skipped, read_seconds))
}

/// Reads input shard `task` a row group at a time and hands each to `work(where, images)`
/// (`where`: "<file> row group <g>"). Returns the seconds spent reading.
fn for_each_group(input: &Dataset, task: usize, mut work: impl FnMut(&str, Vec<ImageRow>) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let reader = input.shard(task)?;
    let file = &input.manifest().shards[task].file;
    let mut read_seconds = 0.0;
    for group in 0..reader.num_row_groups() {
        let read = Instant::now();
        let images = reader.read_row_group(group)?;
        read_seconds += read.elapsed().as_secs_f64();
        work(&format!("{file} row group {group}"), images)?;
    }
    Ok(read_seconds)
}

/// The value of a good result; a failed one is recorded in `skipped` as "<where> id <id>:
/// <reason>" and warned about.
pub fn keep_or_skip<R>(result: Result<R, String>, place: &str, id: &str, skipped: &mut Vec<String>) -> Option<R> {
    result
        .map_err(|reason| {
            let what = format!("{place} id {id}: {reason}");
            warn!("skipped {what}");
            skipped.push(what);
        })
        .ok()
}

/// Whether a stage can process the image of `row`: the row passes [`ShardRow::check`] and the
/// image is at most `max_pixels` (`run.max_image_pixels`; checked before it is decoded).
pub fn usable(row: &ImageRow, num_classes: u16, max_pixels: u64) -> Result<(), String> {
    row.check(num_classes)?;
    let pixels = u64::from(row.width) * u64::from(row.height);
    if pixels > max_pixels {
        return Err(format!(
            "the image is {}x{} = {pixels} pixels, over run.max_image_pixels = {max_pixels} (resize it before import, or raise the key)",
            row.width, row.height
        ));
    }
    Ok(())
}

thread_local! {
    /// Inside [`guarded`] on this thread: panics there are reported as errors, not printed.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs one image's computation so that a panic in it (tch turns every libtorch error into
/// one, a failed allocation of a huge tensor included) becomes an error for that image
/// instead of ending the job. The panic message is not printed: the error carries it.
pub fn guarded<T>(work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    static QUIET_HOOK: std::sync::Once = std::sync::Once::new();
    QUIET_HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(std::cell::Cell::get) {
                default(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    GUARDED.with(|g| g.set(outer));
    result.unwrap_or_else(|payload| {
        let message = payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or("unknown panic");
        Err(format!("failed: {message}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A libtorch error (tch panics with it) becomes an error for the image, carrying libtorch's
    /// message; the thread goes on, and panics outside `guarded` are untouched.
    #[test]
    fn guarded_turns_a_libtorch_failure_into_an_error() {
        let err = guarded(|| {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, Device::Cpu));
            Ok(a.matmul(&a).numel())
        })
        .unwrap_err();
        assert!(err.starts_with("failed: ") && err.contains("shapes cannot be multiplied"), "{err}");
        assert_eq!(guarded(|| Ok(7)), Ok(7));
        assert_eq!(guarded(|| Err::<(), _>("bad".to_string())), Err("bad".to_string()));
        assert!(std::panic::catch_unwind(|| panic!("outside")).is_err());
    }

    #[test]
    fn images_over_the_pixel_bound_are_refused_before_decoding() {
        let row = ImageRow { id: "big".into(), image: vec![], width: 5000, height: 4000, labels: vec![1], mask: None };
        assert!(usable(&row, 3, 20_000_000).is_ok());
        let err = usable(&row, 3, 16_777_216).unwrap_err();
        assert!(err.contains("5000x4000 = 20000000 pixels, over run.max_image_pixels = 16777216"), "{err}");
        assert!(usable(&ImageRow { labels: vec![4], ..row }, 3, 20_000_000).unwrap_err().contains("class id 4"));
    }
}
