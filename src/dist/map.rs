//! The map phase (docs/commands.md, "Map phases"): one input shard → one output shard, scheduled
//! dynamically over the ranks and resumable task by task.
//!
//! Output layout: the output directory itself receives each finished shard
//! (`part-NNNNN.parquet`, written under a temporary name, renamed into place and read back)
//! and then its record `.map/part-NNNNN.json` (rows, SHA-256, who made it and how fast). A
//! task is done when its record exists and the shard's SHA-256 matches it. `_manifest.json`
//! is written by rank 0 last, when every task is done: until then the directory is not a
//! dataset (readers refuse it), so an interrupted job never looks complete. `.map/job.json`
//! holds the fingerprint of the inputs and settings: a rerun with the same fingerprint skips
//! the done tasks; another fingerprint (or `--force`) starts over.
//!
//! Scheduling: rank 0 keeps the queue of pending tasks. Its coordinator thread answers the
//! other ranks' requests (each request carries the record of the task just finished) over
//! MPI point-to-point messages, while rank 0's own worker takes tasks from the same queue. A
//! slow rank simply asks less often. Every output is a function of its task alone, so the
//! bytes do not depend on the number of ranks or on which rank did what.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::Communicator as _;
use serde::{Deserialize, Serialize};

use super::World;
use crate::data::schema::{Manifest, ShardInfo};
use crate::data::shard::{file_sha256, shard_file_name};
use crate::data::{atomic_write, is_temp_name, DataError};
use crate::stop;

/// Hidden folder of the map's bookkeeping inside the output directory.
const MAP_DIR: &str = ".map";
const JOB_FILE: &str = "job.json";
/// MPI message tags of the scheduler.
const TAG_REQUEST: i32 = 7101;
const TAG_TASK: i32 = 7102;
/// The reply that says "no task left".
const NO_TASK: i64 = -1;
/// How often rank 0's coordinator looks for requests.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// How often the other ranks tell rank 0 how many images they have done.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{0}")]
    Task(String),
    #[error("map scheduler: {0}")]
    Protocol(String),
}

/// What one finished task reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub task: usize,
    pub shard: ShardInfo,
    pub rank: usize,
    /// Input images of the task (rows written + skipped).
    pub images: u64,
    /// One line per skipped input (shard, row, id and reason).
    pub skipped: Vec<String>,
    /// Seconds by phase (e.g. "read", "inference", "refine", "write").
    pub seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct JobFile {
    fingerprint: String,
    tasks: usize,
}

/// One map job's output directory and bookkeeping.
pub struct MapOutput {
    dir: PathBuf,
    tasks: usize,
    fingerprint: String,
}

/// The fingerprint of the job that wrote `dir`, if a map job did.
pub fn job_fingerprint(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(MAP_DIR).join(JOB_FILE)).ok()?;
    serde_json::from_slice::<JobFile>(&bytes).ok().map(|job| job.fingerprint)
}

/// Where a job stands before it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MapPlan {
    /// Tasks still to do, in order.
    pub pending: Vec<usize>,
    /// Records of the tasks done by earlier runs.
    pub done: Vec<TaskRecord>,
    /// The output is already complete (manifest written) for this fingerprint.
    pub complete: bool,
    /// Tasks of an output that was complete whose shard or record has gone or changed since:
    /// the manifest is withdrawn and they are redone (the others are kept).
    pub repaired: Vec<usize>,
}

impl MapOutput {
    pub fn new(dir: &Path, tasks: usize, fingerprint: String) -> MapOutput {
        MapOutput { dir: dir.to_path_buf(), tasks, fingerprint }
    }

    /// The final path of task `task`'s shard.
    pub fn shard_path(&self, task: usize) -> PathBuf {
        self.dir.join(shard_file_name(task))
    }

    fn record_path(&self, task: usize) -> PathBuf {
        self.dir.join(MAP_DIR).join(format!("part-{task:05}.json"))
    }

    /// Rank 0, before the job: keeps the done tasks of an earlier run with the same
    /// fingerprint (all of them when the output is complete), and clears everything else
    /// (all of it with `force`).
    pub fn prepare(&self, force: bool) -> Result<MapPlan, DataError> {
        let map_dir = self.dir.join(MAP_DIR);
        let job = JobFile { fingerprint: self.fingerprint.clone(), tasks: self.tasks };
        let same_job = std::fs::read(map_dir.join(JOB_FILE)).ok().and_then(|b| serde_json::from_slice::<JobFile>(&b).ok()).is_some_and(|j| j == job);
        if force || !same_job {
            if self.dir.exists() {
                std::fs::remove_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
            }
        } else if Manifest::exists(&self.dir) {
            let done = (0..self.tasks).map(|t| self.read_record(t)).collect::<Result<Vec<_>, _>>()?;
            let repaired: Vec<usize> = (0..self.tasks).filter(|&t| done[t].is_none()).collect();
            if repaired.is_empty() {
                return Ok(MapPlan { pending: Vec::new(), done: done.into_iter().flatten().collect(), complete: true, repaired });
            }
            // No longer a dataset until the missing tasks are done again.
            let manifest = Manifest::path_in(&self.dir);
            std::fs::remove_file(&manifest).map_err(|e| DataError::io(&manifest, e))?;
            let plan = self.plan_tasks()?;
            return Ok(MapPlan { repaired, ..plan });
        }
        std::fs::create_dir_all(&map_dir).map_err(|e| DataError::io(&map_dir, e))?;
        self.remove_temporaries()?;
        atomic_write(&map_dir.join(JOB_FILE), &serde_json::to_vec_pretty(&job).expect("a job file serialises"))?;
        self.plan_tasks()
    }

    /// The tasks done (record and shard intact) and those still to do.
    fn plan_tasks(&self) -> Result<MapPlan, DataError> {
        let mut plan = MapPlan { pending: Vec::new(), done: Vec::new(), complete: false, repaired: Vec::new() };
        for task in 0..self.tasks {
            match self.read_record(task)? {
                Some(record) => plan.done.push(record),
                None => plan.pending.push(task),
            }
        }
        Ok(plan)
    }

    /// Deletes what killed writers left: hidden temporary files (`.name.tmp-<pid>`).
    fn remove_temporaries(&self) -> Result<(), DataError> {
        for dir in [self.dir.clone(), self.dir.join(MAP_DIR)] {
            for entry in std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))? {
                let path = entry.map_err(|e| DataError::io(&dir, e))?.path();
                if is_temp_name(&path) {
                    std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
                }
            }
        }
        Ok(())
    }

    /// The record of a done task: its record file exists and the shard's SHA-256 matches it.
    fn read_record(&self, task: usize) -> Result<Option<TaskRecord>, DataError> {
        let Ok(bytes) = std::fs::read(self.record_path(task)) else { return Ok(None) };
        let Ok(record) = serde_json::from_slice::<TaskRecord>(&bytes) else { return Ok(None) };
        let shard = self.shard_path(task);
        if record.task != task || !shard.exists() || file_sha256(&shard)? != record.shard.sha256 {
            return Ok(None);
        }
        Ok(Some(record))
    }

    /// Marks a task done: its shard is in place (renamed by the shard writer); the record
    /// goes in last, atomically.
    pub fn commit(&self, record: &TaskRecord) -> Result<(), DataError> {
        let bytes = serde_json::to_vec_pretty(record).expect("a task record serialises");
        atomic_write(&self.record_path(record.task), &bytes)
    }
}

/// A `!Send` MPI handle lent to the coordinator thread. Sound because, while that thread
/// runs, no other thread of this process calls MPI (rank 0's worker computes only), the
/// world is initialised with `MPI_THREAD_SERIALIZED`, and the thread is joined before the
/// main thread uses MPI again.
struct Lent<'a>(&'a mpi::topology::SimpleCommunicator);
unsafe impl Send for Lent<'_> {}

/// What rank 0 learns as the job runs, for its progress bar.
pub struct Progress<'a, R> {
    /// Images done, on any rank, as `work` reports them.
    pub images: &'a (dyn Fn(u64) + Sync),
    /// A finished task's report.
    pub done: &'a (dyn Fn(&R) + Sync),
}

/// Runs `work(task, images_done)` on every task of `pending` across the ranks (every rank
/// calls this with the same `pending`); `work` reports images as it finishes them through
/// `images_done`, and those of every rank reach `progress.images` on rank 0 within about
/// [`PROGRESS_INTERVAL`]. `progress.done` sees each finished task's report (`R`: its records)
/// on rank 0 as it arrives. Returns, on rank 0, the reports of every task of this run; on the
/// other ranks their own.
///
/// A stop signal ([`crate::stop`]) on any rank ends the job after the tasks under way: that
/// rank takes no new task, and rank 0 hands out no more. The reports then cover fewer tasks
/// than `pending`.
pub fn schedule<R, W>(world: &World, pending: &[usize], mut work: W, progress: &Progress<R>) -> Result<Vec<R>, MapError>
where
    R: Serialize + serde::de::DeserializeOwned + Send,
    W: FnMut(usize, &dyn Fn(u64)) -> Result<R, MapError>,
{
    let (on_images, on_done) = (progress.images, progress.done);
    let Some(comm) = world.mpi_communicator().filter(|_| world.size > 1) else {
        let mut records = Vec::with_capacity(pending.len());
        for &task in pending.iter().take_while(|_| stop::requested().is_none()) {
            let record = work(task, on_images)?;
            on_done(&record);
            records.push(record);
        }
        return Ok(records);
    };
    if !world.is_root() {
        return serve_remote(comm, work);
    }
    let queue = Mutex::new(pending.iter().copied().collect::<VecDeque<usize>>());
    let records = Mutex::new(Vec::new());
    // Set when another rank reports that it stops: then no rank gets a new task.
    let stopping = AtomicBool::new(false);
    let next = || {
        if stopping.load(Ordering::SeqCst) || stop::requested().is_some() {
            return None;
        }
        queue.lock().expect("the queue lock is never poisoned").pop_front()
    };
    let finish = |record: R| {
        on_done(&record);
        records.lock().expect("the records lock is never poisoned").push(record);
    };
    let lent = Lent(comm);
    let remotes = world.size - 1;
    std::thread::scope(|scope| -> Result<(), MapError> {
        let coordinator = scope.spawn(|| {
            let lent = lent;
            coordinate(lent.0, remotes, &next, &finish, on_images, &stopping)
        });
        let mut local = Ok(());
        while let Some(task) = next() {
            match work(task, on_images) {
                Ok(record) => finish(record),
                Err(e) => {
                    // Stop taking tasks; the stage aborts the job (the others may wait on us).
                    local = Err(e);
                    break;
                }
            }
        }
        local?;
        coordinator.join().map_err(|_| MapError::Protocol("the coordinator thread panicked".into()))?
    })?;
    Ok(records.into_inner().expect("the records lock is never poisoned"))
}

/// What a rank other than 0 sends to rank 0. Both kinds travel with the same tag, so that MPI
/// keeps them in order: a rank's last progress arrives before its last request.
#[derive(Serialize, Deserialize)]
enum Message<R> {
    /// Images done since the last progress message.
    Progress(u64),
    /// The record of the task just finished (none on the first request); asks for the next.
    Request(Option<R>),
    /// The record of the task just finished, if any; this rank stops (a stop signal).
    Last(Option<R>),
}

/// Rank 0's coordinator: answers requests until every other rank has been told "no task".
fn coordinate<R: serde::de::DeserializeOwned>(
    comm: &mpi::topology::SimpleCommunicator,
    remotes: usize,
    next: &dyn Fn() -> Option<usize>,
    finish: &dyn Fn(R),
    on_images: &dyn Fn(u64),
    stopping: &AtomicBool,
) -> Result<(), MapError> {
    let mut finished = 0;
    while finished < remotes {
        // Poll and sleep rather than block: a blocking receive spins a core in MPI's progress
        // loop, which rank 0's own worker needs.
        let Some(probed) = comm.any_process().immediate_matched_probe_with_tag(TAG_REQUEST) else {
            std::thread::sleep(POLL_INTERVAL);
            continue;
        };
        let (message, status) = probed.matched_receive_vec::<u8>();
        let source = status.source_rank();
        match serde_json::from_slice(&message).map_err(|e| MapError::Protocol(format!("a message from rank {source}: {e}")))? {
            Message::Progress(images) => {
                on_images(images);
                continue;
            }
            Message::Request(Some(record)) => finish(record),
            Message::Request(None) => {}
            Message::Last(record) => {
                record.map(finish);
                stopping.store(true, Ordering::SeqCst);
                finished += 1;
                continue;
            }
        }
        let reply = next().map_or(NO_TASK, |t| t as i64);
        comm.process_at_rank(source).send_with_tag(&reply, TAG_TASK);
        if reply == NO_TASK {
            finished += 1;
        }
    }
    Ok(())
}

/// A rank other than 0: asks for a task (reporting the previous one), does it, until told
/// there is none left; passes on its images done every [`PROGRESS_INTERVAL`] and before each
/// request.
fn serve_remote<R: Serialize, W>(comm: &mpi::topology::SimpleCommunicator, mut work: W) -> Result<Vec<R>, MapError>
where
    W: FnMut(usize, &dyn Fn(u64)) -> Result<R, MapError>,
{
    let root = comm.process_at_rank(0);
    let send = |message: &Message<&R>| root.send_with_tag(&serde_json::to_vec(message).expect("a map message serialises")[..], TAG_REQUEST);
    let unsent = std::cell::Cell::new(0u64);
    let sent_at = std::cell::Cell::new(std::time::Instant::now());
    let flush = || {
        if unsent.get() > 0 {
            send(&Message::Progress(unsent.replace(0)));
            sent_at.set(std::time::Instant::now());
        }
    };
    let images_done = |images: u64| {
        unsent.set(unsent.get() + images);
        if sent_at.get().elapsed() >= PROGRESS_INTERVAL {
            flush();
        }
    };
    let mut records: Vec<R> = Vec::new();
    loop {
        flush();
        if stop::requested().is_some() {
            send(&Message::Last(records.last()));
            return Ok(records);
        }
        send(&Message::Request(records.last()));
        let (task, _) = root.receive_with_tag::<i64>(TAG_TASK);
        if task == NO_TASK {
            return Ok(records);
        }
        records.push(work(task as usize, &images_done)?);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::shard_file_name;

    fn record(output: &MapOutput, task: usize, bytes: &[u8]) -> TaskRecord {
        std::fs::write(output.shard_path(task), bytes).unwrap();
        let sha256 = file_sha256(&output.shard_path(task)).unwrap();
        TaskRecord { task, shard: ShardInfo { file: shard_file_name(task), rows: 1, sha256 }, rank: 0, images: 1, skipped: vec![], seconds: BTreeMap::new() }
    }

    #[test]
    fn done_tasks_survive_a_rerun_and_changed_ones_are_redone() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let output = MapOutput::new(&out, 4, "a".into());
        assert_eq!(output.prepare(false).unwrap().pending, vec![0, 1, 2, 3]);
        for task in [0, 2, 3] {
            output.commit(&record(&output, task, &[task as u8])).unwrap();
        }
        // Task 3's shard changed after its record: not done. Task 1 has a shard, no record.
        std::fs::write(output.shard_path(3), b"changed").unwrap();
        std::fs::write(output.shard_path(1), b"half").unwrap();
        let plan = output.prepare(false).unwrap();
        assert_eq!(plan.pending, vec![1, 3]);
        assert_eq!(plan.done.iter().map(|r| r.task).collect::<Vec<_>>(), vec![0, 2]);
        assert!(!plan.complete);
        // Another fingerprint starts over; so does force.
        assert_eq!(MapOutput::new(&out, 4, "b".into()).prepare(false).unwrap().pending.len(), 4);
        let output = MapOutput::new(&out, 4, "b".into());
        for task in 0..4 {
            output.commit(&record(&output, task, &[task as u8])).unwrap();
        }
        std::fs::write(out.join(crate::data::schema::MANIFEST_FILE), b"{}").unwrap();
        let plan = output.prepare(false).unwrap();
        assert!(plan.complete && plan.pending.is_empty() && plan.done.len() == 4);
        assert_eq!(output.prepare(true).unwrap().pending.len(), 4);
        assert!(!Manifest::exists(&out));
    }

    #[test]
    fn one_rank_runs_every_pending_task_in_order() {
        let seen = Mutex::new(Vec::new());
        let images = std::sync::atomic::AtomicU64::new(0);
        let records = schedule(
            &World::single(),
            &[2, 0, 5],
            |task, images_done| {
                images_done(task as u64 + 1);
                Ok(TaskRecord {
                    task,
                    shard: ShardInfo { file: String::new(), rows: 0, sha256: String::new() },
                    rank: 0,
                    images: 0,
                    skipped: vec![],
                    seconds: BTreeMap::new(),
                })
            },
            &Progress { images: &|n| _ = images.fetch_add(n, std::sync::atomic::Ordering::Relaxed), done: &|r: &TaskRecord| seen.lock().unwrap().push(r.task) },
        )
        .unwrap();
        assert_eq!(records.iter().map(|r| r.task).collect::<Vec<_>>(), vec![2, 0, 5]);
        assert_eq!(*seen.lock().unwrap(), vec![2, 0, 5]);
        assert_eq!(images.into_inner(), 3 + 1 + 6);
    }
}
