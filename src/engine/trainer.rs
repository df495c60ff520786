//! The data-parallel trainer every training stage runs on. A stage describes *what* it trains
//! as a [`Task`] (its network and parameter groups, its initialisation, the loss of one
//! micro-batch); the trainer owns the rest: schedule, SGD, gradient buckets, communicator,
//! checkpoints and bitwise resume, metrics, non-finite handling and progress.
//!
//! It writes the stage directory: the resolved `config.toml`, `metrics.jsonl` (one object per
//! logged step), `checkpoints/` (model + optimiser safetensors and a JSON sidecar) every
//! `checkpoint_every` steps and at the end, and `summary.json`.
//!
//! Data-parallel under `mpirun`/`srun` (DDP's recipe): every rank holds the whole model, rank
//! 0's parameters and buffers are broadcast at the start, each rank trains on its part of every
//! epoch (the sampler's stride), and a step is: for each of `accumulate` micro-batches wait for
//! the loader, forward, loss, backward (gradients accumulate in the buckets); then agree on the
//! step's sample count and loss over the ranks, all-reduce the gradient buckets, divide by the
//! count, update. Rank 0 alone logs, shows progress and writes checkpoints. Resuming restores
//! the model, the optimiser and the sampler cursor, and the loader's augmentations are a
//! function of (seed, epoch, sample), so a resumed run continues exactly where an
//! uninterrupted one would.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::progress_bar;
use crate::checkpoint::{CheckpointMeta, Checkpoints, RngState};
use crate::config::{Config, LoaderConfig, OnNonFinite, TrainConfig};
use crate::data::loader::{Batch, Loader, LoaderSpec};
use crate::data::lock::DirLock;
use crate::data::sampler::{mix_seed, Cursor, Sampler};
use crate::data::schema::PseudoRow;
use crate::data::stats::{label_pixel_counts, LabelCounts};
use crate::data::{atomic_write, Dataset};
use crate::dist::comm::sum_values;
use crate::dist::{self, Communicator, GradientBuckets, World};
use crate::model::weights;
use crate::optim::{ParamGroup, Sgd};
use crate::stop::Stopped;

/// What a training stage trains.
pub trait Task {
    /// The variable store of every parameter and buffer: checkpointed, and broadcast from rank
    /// 0 at the start.
    fn vars(&self) -> &VarStore;
    /// The trainable parameters in groups, each with its learning-rate multiplier.
    fn param_groups(&self) -> Vec<ParamGroup>;
    /// Sets the starting weights of a fresh run (not called on resume). `calibration` gives
    /// the first batch of epoch 0 as one rank seeing the whole dataset would get it (the same
    /// on every rank), for statistics a random start calibrates on.
    fn initialise(&self, calibration: &dyn Fn() -> anyhow::Result<Batch>) -> anyhow::Result<()>;
    /// The mean loss of one micro-batch (a scalar on the task's device), the forward pass in
    /// training mode with `compute` precision; `generator` feeds any random draw of the loss.
    fn loss(&self, batch: &Batch, compute: Kind, generator: &mut ChaCha8Rng) -> Tensor;
    /// Whether the forward and backward passes sum over the ranks (synchronised BatchNorm):
    /// every rank must then run both for a micro-batch, or none.
    fn synchronises(&self) -> bool {
        false
    }
}

/// A training stage's settings: which config sections it reads and where it writes.
pub struct Stage<'a> {
    /// Prefix of the stage's config keys in error messages: "" (`train.*`) or "seg." (`seg.train.*`).
    pub keys: &'static str,
    pub train: &'a TrainConfig,
    pub loader: &'a LoaderConfig,
    /// The stage directory (config.toml, metrics.jsonl, checkpoints/, summary.json).
    pub dir: PathBuf,
}

/// The training images, and for a segmenter the pseudo-labels its masks come from.
pub struct TrainData {
    pub images: Arc<Dataset>,
    /// A pseudo-label dataset of the same images and, for each image row, its row there
    /// ([`crate::data::join::join_by_id`]).
    pub pseudo_labels: Option<PseudoLabelRows>,
    /// The labelled pixels of each class in the pseudo-labels (empty without them).
    pub label_pixels: Vec<u64>,
}

/// A pseudo-label dataset and, for each image row, its row there.
pub type PseudoLabelRows = (Arc<Dataset<PseudoRow>>, Arc<Vec<usize>>);

impl TrainData {
    /// `data.train` joined by id with the pseudo-label dataset at `labels_dir` (`key` names its
    /// config key in errors): what the segmenter and IRNet's network learn from.
    pub fn with_labels(config: &Config, labels_dir: &Path, key: &str) -> anyhow::Result<TrainData> {
        let images = Dataset::open(&config.data.train).with_context(|| format!("config key `data.train` ({})", config.data.train.display()))?;
        let labels = Dataset::<PseudoRow>::open_as(labels_dir).with_context(|| {
            format!(
                "config key `{key}` ({}): make the pseudo-labels of the train split first (`wsss-dist cam --pseudo-labels` with cam.split = \"train\")",
                labels_dir.display()
            )
        })?;
        ensure!(
            labels.manifest().classes == images.manifest().classes,
            "{}: its classes {:?} differ from those of the images in {} ({:?})",
            labels_dir.display(),
            labels.manifest().classes,
            images.dir().display(),
            images.manifest().classes
        );
        let rows = crate::data::join::join_by_id(&images, &labels)?;
        let counts = label_pixel_counts(&labels, labels.manifest().num_classes() as usize)
            .with_context(|| format!("config key `{key}` ({}): reading the masks", labels_dir.display()))?;
        check_labelled(&counts, labels_dir, key)?;
        Ok(TrainData { images: Arc::new(images), pseudo_labels: Some((Arc::new(labels), Arc::new(rows))), label_pixels: counts.pixels })
    }

    /// What the checkpoints record of the data: the images' identity, and the labels'.
    fn identity(&self) -> String {
        match &self.pseudo_labels {
            Some((labels, _)) => format!("images {}, labels {}", self.images.identity(), labels.identity()),
            None => format!("images {}", self.images.identity()),
        }
    }

    /// The directory of a dataset replaced on disk since it was opened, if one was.
    fn changed_on_disk(&self) -> Option<&Path> {
        if self.images.changed_on_disk() {
            return Some(self.images.dir());
        }
        self.pseudo_labels.as_ref().map(|(labels, _)| labels).filter(|labels| labels.changed_on_disk()).map(|labels| labels.dir())
    }

    /// A batch that could not be read: a dataset replaced under the job is then the cause to
    /// name (its shards no longer match what the job opened), not the shard's bytes.
    fn read_failure(&self, error: anyhow::Error, step: u64) -> anyhow::Error {
        let error = error.context(format!("loading a batch of step {step}"));
        match self.changed_on_disk() {
            Some(dir) => error.context(format!(
                "{}: the dataset changed since this job started (written again by `data import --force`?); start a new run on it",
                dir.display()
            )),
            None => error,
        }
    }

    /// Refuses to resume on other data than the checkpoint was trained on, unless
    /// `{keys}train.allow_data_change` says to go on (with a warning).
    fn check_resumes_on_same_data(&self, meta: &CheckpointMeta, stage: &Stage) -> anyhow::Result<()> {
        let (Some(then), now) = (&meta.data_identity, self.identity()) else { return Ok(()) };
        if *then == now {
            return Ok(());
        }
        let message = format!(
            "the training data differ from those the checkpoint of step {} in {} was trained on ({then} then, {now} now): a dataset was written again since the run started",
            meta.step,
            stage.dir.display()
        );
        let key = format!("{}train.allow_data_change", stage.keys);
        ensure!(stage.train.allow_data_change, "{message}; start a new run (run.name), or set {key} = true to continue on the new data");
        warn!("{message}; continuing on the new data ({key} = true)");
        Ok(())
    }

    fn loader(&self, sampler: Sampler, spec: LoaderSpec) -> anyhow::Result<Loader> {
        let loader = Loader::new(self.images.clone(), sampler, spec)?;
        Ok(match &self.pseudo_labels {
            Some((labels, rows)) => loader.with_pseudo_labels(labels.clone(), rows.clone()),
            None => loader,
        })
    }
}

/// Share of masks with no labelled pixel above which training on them is warned about.
const EMPTY_MASKS_WARNED: f64 = 0.05;

/// A label dataset with no labelled pixel at all trains nothing (every loss 0): an error. Many
/// empty masks: a warning with the count.
fn check_labelled(counts: &LabelCounts, dir: &Path, key: &str) -> anyhow::Result<()> {
    ensure!(
        counts.labelled() > 0,
        "config key `{key}` ({}): none of its {} masks labels a pixel (every pixel 255, uncertain): there is nothing to learn from; remake the pseudo-labels (lower pseudo_label.fg_threshold?)",
        dir.display(),
        counts.masks
    );
    if counts.empty_masks as f64 > EMPTY_MASKS_WARNED * counts.masks as f64 {
        warn!(
            "config key `{key}` ({}): {} of its {} masks label no pixel (every pixel 255); those images teach nothing",
            dir.display(),
            counts.empty_masks,
            counts.masks
        );
    }
    Ok(())
}

/// What a task is built from, known once the trainer has opened the data.
pub struct TaskContext {
    pub device: Device,
    pub num_classes: i64,
    /// The job's ranks, for a task whose passes sum over them.
    pub comm: Arc<dyn Communicator>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
struct StepMetrics {
    step: u64,
    epoch: u64,
    loss: f64,
    lr: f64,
    images: f64,
    images_per_s: f64,
    data_wait_s: f64,
    compute_s: f64,
    /// Of `compute_s`, the wait for the gradient all-reduce after backward: the communication
    /// not hidden behind it (all of it when not overlapped).
    allreduce_s: f64,
}

/// Trains `make_task`'s task on `data` as `stage` says, on this rank of `world`; returns the
/// summary's details (also written to `summary.json`).
pub fn train<T: Task>(
    config: &Config,
    world: &World,
    resume: bool,
    stage: &Stage,
    data: TrainData,
    make_task: impl FnOnce(&TaskContext) -> anyhow::Result<T>,
) -> anyhow::Result<serde_json::Value> {
    let mut training = Training::set_up(Job { config, world, stage }, resume, data, make_task)?;
    training.run()?;
    training.finish()
}

/// What a training job is given: its config, its place among the ranks and its stage.
#[derive(Clone, Copy)]
struct Job<'a> {
    config: &'a Config,
    world: &'a World,
    stage: &'a Stage<'a>,
}

/// What the job knows before the task's weights are set: its data, schedule and checkpoints.
struct Plan<'a> {
    job: Job<'a>,
    data: TrainData,
    sampler: Sampler,
    loader_spec: LoaderSpec,
    schedule: Schedule,
    checkpoints: Checkpoints,
}

impl Plan<'_> {
    /// With `--resume`, restores the newest intact checkpoint; otherwise (or with none yet)
    /// initialises the task. Returns the cursor to continue from.
    fn start<T: Task>(&self, resume: bool, task: &T, sgd: &mut Sgd) -> anyhow::Result<Cursor> {
        let Job { config, world, stage } = self.job;
        let checkpoints = &self.checkpoints;
        let latest = if resume { checkpoints.latest()? } else { None };
        match (resume, latest, checkpoints.list()?.last()) {
            (true, Some(found), _) => {
                for line in found.damaged.iter().filter(|_| world.is_root()) {
                    warn!("passed over a damaged checkpoint: {line}");
                }
                self.data.check_resumes_on_same_data(&found.meta, stage)?;
                restore(config, world, &self.schedule, checkpoints, &found.meta, task.vars(), sgd)
            }
            (false, _, Some((step, _))) => bail!(
                "{} already holds checkpoints (latest: step {step}): pass --resume to continue that run, or set run.name to start another",
                checkpoints.dir().display()
            ),
            (resume, _, _) => {
                if resume {
                    info!("no checkpoint in {} yet: starting from step 0", checkpoints.dir().display());
                }
                let spec = LoaderSpec { batch_size: self.schedule.global_batch, ..self.loader_spec.clone() };
                let whole = Sampler { rank: 0, world: 1, ..self.sampler.clone() };
                task.initialise(&|| {
                    let loader = self.data.loader(whole.clone(), spec.clone())?;
                    let batch = loader.epoch(Cursor::default()).next().context("no batch to calibrate on")?;
                    batch.context("reading the calibration batch")
                })?;
                Ok(Cursor::default())
            }
        }
    }
}

/// The gradient buckets of `sgd`'s parameters; overlapped with backward (`dist.overlap`) on
/// more than one rank, or on one with `dist.backend = "nccl"` named (a single GPU then runs a
/// cluster's path), on a communicator of their own so that no other collective (the
/// synchronised BatchNorm's, the step's agreement) interleaves with theirs.
fn gradient_buckets(config: &Config, world: &World, device: Device, sgd: &Sgd, comm: &Arc<dyn Communicator>) -> anyhow::Result<GradientBuckets> {
    let params: Vec<Tensor> = sgd.params().map(|p| p.shallow_clone()).collect();
    let bytes = config.dist.bucket_bytes();
    let communicates = world.size > 1 || config.dist.backend == dist::Backend::Nccl;
    if !config.dist.overlap || !communicates {
        return Ok(GradientBuckets::new(&params, bytes, comm.clone()));
    }
    let own = Arc::from(dist::connect(world, config.dist.backend, device)?);
    Ok(GradientBuckets::overlapped(&params, bytes, own)?)
}

/// The job's ranks, buckets and batch arithmetic, in one log line.
fn log_layout<T>(Job { config, world, stage }: Job, trainer: &Trainer<T>, schedule: &Schedule) {
    info!(
        "{} rank(s) ({}, {} gradient bucket(s) of at most {} MiB{}); global batch {} = {} per rank x {} rank(s) x {} micro-batch(es); {} steps per epoch",
        world.size,
        trainer.comm.backend(),
        trainer.buckets.len(),
        config.dist.bucket_mb,
        if trainer.buckets.overlaps() { ", all-reduced during backward" } else { "" },
        schedule.global_batch,
        stage.loader.batch_size,
        world.size,
        stage.train.accumulate,
        schedule.steps_per_epoch
    );
}

/// What the job has done so far, for the log and the summary.
#[derive(Default)]
struct Tally {
    skipped_samples: usize,
    skipped_steps: u64,
    images_trained: f64,
    /// The finite losses since the last checkpoint (its sidecar's mean).
    losses: Vec<f64>,
}

/// Whether the loop goes on after a step.
enum Flow {
    Continue,
    Done,
}

/// A training job on this rank: set up, run step by step, then summed up.
struct Training<'a, T> {
    job: Job<'a>,
    data: TrainData,
    trainer: Trainer<T>,
    schedule: Schedule,
    loader: Loader,
    checkpoints: Checkpoints,
    metrics: MetricsLog,
    bar: indicatif::ProgressBar,
    cursor: Cursor,
    /// The step this invocation ends at (`stop_after`, or the last).
    stop_at: u64,
    first_step: u64,
    started: Instant,
    tally: Tally,
    /// One job writes a stage directory at a time; rank 0 holds the lock for the job.
    _lock: Option<DirLock>,
}

impl<'a, T: Task> Training<'a, T> {
    /// Device, communicator, data and schedule; the task and its optimiser; the lock and the
    /// checkpoints; resume or initialise; rank 0's state broadcast to every rank.
    fn set_up(job: Job<'a>, resume: bool, data: TrainData, make_task: impl FnOnce(&TaskContext) -> anyhow::Result<T>) -> anyhow::Result<Self> {
        let Job { config, world, stage } = job;
        let (keys, train) = (stage.keys, stage.train);
        let device = super::compute_device(config, world)?;
        ensure!(
            !train.bf16 || device.is_cuda() || config.run.device == crate::dist::DeviceSpec::Cpu,
            "config key `{keys}train.bf16`: bf16 autocast needs a CUDA device (set run.device = \"cpu\" to force it on the CPU)"
        );
        let comm: Arc<dyn Communicator> = Arc::from(dist::connect(world, config.dist.backend, device)?);
        let dataset = &data.images;
        let sampler = Sampler {
            len: dataset.len(),
            seed: config.run.seed,
            rank: world.rank,
            world: world.size,
            shuffle: stage.loader.shuffle,
            uneven: stage.loader.uneven,
        };
        let schedule = Schedule::new(stage, &sampler);
        ensure!(schedule.steps_per_epoch > 0, "{}: no training images for rank {} of {}", dataset.dir().display(), world.rank, world.size);
        let loader_spec = stage.loader.spec(config.run.seed);
        let loader = data.loader(sampler.clone(), loader_spec.clone())?;

        tch::manual_seed(config.run.seed as i64);
        let task = make_task(&TaskContext { device, num_classes: dataset.manifest().num_classes() as i64, comm: comm.clone() })?;
        let mut sgd = Sgd::new(train.sgd_settings(schedule.total_steps), task.param_groups());

        let lock = world.is_root().then(|| DirLock::acquire(&stage.dir)).transpose()?;
        let checkpoints = Checkpoints::new(stage.dir.join("checkpoints"));
        if world.is_root() {
            checkpoints.remove_temporaries()?;
        }
        let plan = Plan { job, data, sampler, loader_spec, schedule, checkpoints };
        let cursor = plan.start(resume, &task, &mut sgd)?;
        broadcast_state(comm.as_ref(), task.vars())?;
        let Plan { data, schedule, checkpoints, .. } = plan;
        let trainer = Trainer {
            buckets: gradient_buckets(config, world, device, &sgd, &comm)?,
            task,
            sgd,
            comm,
            device,
            compute: if train.bf16 { Kind::BFloat16 } else { Kind::Float },
            seed: config.run.seed,
            rank: world.rank,
            data_identity: data.identity(),
        };
        log_layout(job, &trainer, &schedule);
        if world.is_root() {
            std::fs::create_dir_all(&stage.dir).with_context(|| format!("creating run directory {}", stage.dir.display()))?;
            atomic_write(&stage.dir.join("config.toml"), config.to_toml().as_bytes())?;
        }
        let first_step = trainer.sgd.step_count();
        let metrics = MetricsLog::open(&stage.dir.join("metrics.jsonl"), first_step, world.is_root())?;
        let stop_at = match train.stop_after {
            0 => schedule.total_steps,
            n => (first_step + n).min(schedule.total_steps),
        };
        let bar = progress_bar(world, schedule.total_steps, "train");
        bar.set_position(first_step);
        Ok(Training {
            job,
            data,
            trainer,
            schedule,
            loader,
            checkpoints,
            metrics,
            bar,
            cursor,
            stop_at,
            first_step,
            started: Instant::now(),
            tally: Tally::default(),
            _lock: lock,
        })
    }

    /// Steps until `stop_at`: each step waits for and runs its micro-batches, then updates.
    fn run(&mut self) -> anyhow::Result<()> {
        let mut step_input = StepInput::default();
        self.trainer.sgd.zero_grad();
        while self.trainer.sgd.step_count() < self.stop_at {
            let mut wait_start = Instant::now();
            for batch in self.loader.epoch(self.cursor) {
                let batch = batch.map_err(|e| self.data.read_failure(e.into(), self.trainer.sgd.step_count()))?;
                step_input.data_wait_s += wait_start.elapsed().as_secs_f64();
                self.micro_batch(&batch, &mut step_input)?;
                self.cursor = batch.cursor;
                let epoch_done = self.schedule.epoch_done(self.cursor);
                if !self.ends_step(step_input.micro_batches, self.cursor) {
                    wait_start = Instant::now();
                    continue;
                }
                if let Flow::Done = self.step(&mut step_input, epoch_done)? {
                    return Ok(());
                }
                step_input = StepInput::default();
                self.trainer.sgd.zero_grad();
                wait_start = Instant::now();
            }
        }
        Ok(())
    }

    /// Whether a step's `micro_batches`-th micro-batch, ending at `cursor`, is its last: the
    /// accumulation is complete or the epoch ends.
    fn ends_step(&self, micro_batches: u64, cursor: Cursor) -> bool {
        micro_batches >= self.job.stage.train.accumulate || self.schedule.epoch_done(cursor)
    }

    /// Forward and backward of one micro-batch (its skipped samples warned about).
    fn micro_batch(&mut self, batch: &Batch, step_input: &mut StepInput) -> anyhow::Result<()> {
        for skip in &batch.skipped {
            warn!("skipped sample: {skip}");
        }
        self.tally.skipped_samples += batch.skipped.len();
        let compute_start = Instant::now();
        let last = self.ends_step(step_input.micro_batches + 1, batch.cursor);
        self.trainer
            .forward_backward(batch, step_input, last)
            .with_context(|| format!("step {} on rank {}", self.trainer.sgd.step_count(), self.job.world.rank))?;
        step_input.compute_s += compute_start.elapsed().as_secs_f64();
        Ok(())
    }

    /// The update of a step whose micro-batches have run, and what follows it: the metrics,
    /// a checkpoint when due, a requested stop.
    fn step(&mut self, step_input: &mut StepInput, epoch_done: bool) -> anyhow::Result<Flow> {
        let (step_taken, lr) = (self.trainer.sgd.step_count(), self.trainer.sgd.lr());
        let compute_start = Instant::now();
        let (outcome, stop_requested) = self.trainer.finish_step(step_input)?;
        step_input.compute_s += compute_start.elapsed().as_secs_f64();
        let (loss, images) = self.record(step_taken, outcome, step_input)?;
        let step = self.trainer.sgd.step_count();
        if loss.is_finite() {
            self.log(step, (loss, images, lr), step_input)?;
        }
        self.bar.set_position(step);
        if epoch_done {
            self.cursor = Cursor { epoch: self.cursor.epoch + 1, position: 0 };
        }
        let train = self.job.stage.train;
        if step.is_multiple_of(train.checkpoint_every) || step == self.stop_at || stop_requested {
            save_checkpoint(self.job.config, self.job.world, train, &self.checkpoints, &self.trainer, self.cursor, &mut self.tally.losses)?;
        }
        if stop_requested && step < self.stop_at {
            self.bar.finish_and_clear();
            let kept = format!(
                "every rank finished step {step} of {}, checkpoint written to {}; continue with --resume",
                self.schedule.total_steps,
                self.checkpoints.dir().display()
            );
            return Err(Stopped { cause: crate::stop::cause(), kept }.into());
        }
        Ok(if step >= self.stop_at { Flow::Done } else { Flow::Continue })
    }

    /// Counts what step `step` (numbered as before its update) did; returns its loss (NaN for
    /// a skipped step) and the images it trained on over every rank. A non-finite loss ends the
    /// job unless `on_nonfinite` says to skip such steps.
    fn record(&mut self, step: u64, outcome: StepOutcome, step_input: &StepInput) -> anyhow::Result<(f64, f64)> {
        Ok(match outcome {
            StepOutcome::Trained { loss, images } => {
                self.tally.images_trained += images;
                self.tally.losses.push(loss);
                (loss, images)
            }
            StepOutcome::EmptyBatch => {
                warn!("step {step}: no sample of the batch could be read on any rank; step skipped");
                self.tally.skipped_steps += 1;
                (f64::NAN, 0.0)
            }
            StepOutcome::NonFinite(loss) => {
                let keys = self.job.stage.keys;
                if self.job.stage.train.on_nonfinite == OnNonFinite::Error {
                    bail!("step {step} (epoch {}, images of rank {}: {}): the loss is {loss}; stopping, no checkpoint written for this step ({keys}train.on_nonfinite = \"skip\" skips such steps)", self.cursor.epoch, self.job.world.rank, step_input.ids.join(", "));
                }
                warn!("step {step}: the loss is {loss}; step skipped (parameters unchanged)");
                self.tally.skipped_steps += 1;
                (loss, 0.0)
            }
        })
    }

    /// A line of `metrics.jsonl` every `log_every` steps (rank 0), and the bar's message.
    fn log(&mut self, step: u64, (loss, images, lr): (f64, f64, f64), step_input: &StepInput) -> anyhow::Result<()> {
        if !self.job.world.is_root() || !step.is_multiple_of(self.job.stage.train.log_every) {
            return Ok(());
        }
        let images_per_s = images / (step_input.data_wait_s + step_input.compute_s);
        self.metrics.append(&StepMetrics {
            step,
            epoch: self.cursor.epoch,
            loss,
            lr,
            images,
            images_per_s,
            data_wait_s: step_input.data_wait_s,
            compute_s: step_input.compute_s,
            allreduce_s: step_input.allreduce_s,
        })?;
        self.bar.set_message(format!("train loss {loss:.4} {images_per_s:.1} img/s"));
        Ok(())
    }

    /// The summary line and `summary.json`.
    fn finish(self) -> anyhow::Result<serde_json::Value> {
        let Job { config, world, stage } = self.job;
        self.bar.finish_and_clear();
        let seconds = self.started.elapsed().as_secs_f64();
        let steps = self.trainer.sgd.step_count();
        let total_steps = self.schedule.total_steps;
        let Tally { skipped_samples, skipped_steps, images_trained, .. } = self.tally;
        let images_per_s = images_trained / seconds.max(1e-9);
        info!("trained steps {}..{steps} of {total_steps} in {seconds:.1} s ({images_per_s:.1} images/s over {} rank(s)); skipped {skipped_samples} sample(s) on rank {}, {skipped_steps} step(s)", self.first_step, world.size, world.rank);
        let details = json!({
            "run_dir": stage.dir, "steps": steps, "total_steps": total_steps, "finished": steps == total_steps,
            "seconds": seconds, "images_per_s": images_per_s, "skipped_samples_rank0": skipped_samples, "skipped_steps": skipped_steps,
            "device": format!("{:?}", self.trainer.device), "config_hash": config.hash(), "world_size": world.size, "backend": self.trainer.comm.backend(),
            "global_batch": self.schedule.global_batch,
        });
        if world.is_root() {
            atomic_write(&stage.dir.join("summary.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
        }
        Ok(details)
    }
}

/// Batch and step arithmetic of a job: it depends on the number of ranks.
struct Schedule {
    /// Samples per optimiser step over all ranks: per-rank batch × ranks × micro-batches.
    global_batch: usize,
    steps_per_epoch: u64,
    total_steps: u64,
    /// Samples each rank sees per epoch.
    per_rank: usize,
    world: usize,
}

impl Schedule {
    fn new(stage: &Stage, sampler: &Sampler) -> Schedule {
        let batch_size = stage.loader.batch_size;
        let micro_batches = sampler.per_rank().div_ceil(batch_size) as u64;
        let steps_per_epoch = micro_batches.div_ceil(stage.train.accumulate);
        Schedule {
            global_batch: batch_size * sampler.world * stage.train.accumulate as usize,
            steps_per_epoch,
            total_steps: if stage.train.steps > 0 { stage.train.steps } else { stage.train.epochs * steps_per_epoch },
            per_rank: sampler.per_rank(),
            world: sampler.world,
        }
    }

    /// Whether a rank standing at `cursor` has seen its whole epoch.
    fn epoch_done(&self, cursor: Cursor) -> bool {
        cursor.position >= self.per_rank
    }

    /// Steps taken when a rank stands at `cursor` (a step boundary).
    fn steps_at(&self, cursor: Cursor) -> u64 {
        let samples_per_step = self.global_batch / self.world;
        cursor.epoch * self.steps_per_epoch + cursor.position.min(self.per_rank).div_ceil(samples_per_step) as u64
    }
}

/// One step's micro-batches as this rank saw them.
#[derive(Default)]
struct StepInput {
    micro_batches: u64,
    /// Samples of this rank, and the sum of their losses (finite ones only).
    images: f64,
    loss_sum: f64,
    /// A micro-batch whose loss was not finite (its backward was not run).
    non_finite: bool,
    ids: Vec<String>,
    data_wait_s: f64,
    compute_s: f64,
    allreduce_s: f64,
}

/// The task, the optimiser and the gradient buckets of one rank.
struct Trainer<T> {
    task: T,
    sgd: Sgd,
    buckets: GradientBuckets,
    comm: Arc<dyn Communicator>,
    device: Device,
    compute: Kind,
    /// With the step, the rank and the micro-batch, what a loss's random draw is seeded from.
    seed: u64,
    rank: usize,
    /// [`TrainData::identity`], recorded in each checkpoint.
    data_identity: String,
}

/// What one step did. A skipped step still advances the schedule.
enum StepOutcome {
    Trained {
        loss: f64,
        images: f64,
    },
    /// Every sample of the step was skipped (unreadable) on every rank.
    EmptyBatch,
    /// The loss was not finite on some rank: no update anywhere.
    NonFinite(f64),
}

impl<T: Task> Trainer<T> {
    /// Forward and backward of one micro-batch. The loss backpropagated is the *sum* over the
    /// batch; `finish_step` divides the summed gradients by the step's sample count over all
    /// ranks, so any split into ranks and micro-batches gives the gradient of the mean loss.
    ///
    /// A task that synchronises runs its passes on every rank or on none: a micro-batch that
    /// some rank could not read a sample of is skipped everywhere, and a loss that is not
    /// finite on some rank is backpropagated nowhere (`finish_step` then skips the step).
    fn forward_backward(&self, batch: &Batch, input: &mut StepInput, last: bool) -> anyhow::Result<()> {
        input.micro_batches += 1;
        input.ids.extend(batch.ids.iter().cloned());
        // This rank's `flag`, or for a synchronising task whether it holds on every rank.
        let synchronised = self.task.synchronises() && self.comm.size() > 1;
        let on_every_rank = |flag: bool| -> anyhow::Result<bool> {
            if !synchronised {
                return Ok(flag);
            }
            Ok(sum_values(self.comm.as_ref(), &[f64::from(u8::from(!flag))], self.device)?[0] == 0.0)
        };
        if !on_every_rank(!batch.indices.is_empty())? {
            if !batch.indices.is_empty() {
                warn!("micro-batch {} of step {}: another rank has no readable sample, and the synchronised BatchNorm needs every rank: its {} sample(s) skipped here", input.micro_batches, self.sgd.step_count(), batch.indices.len());
            }
            return Ok(());
        }
        let mut generator = ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, self.sgd.step_count(), self.rank as u64, input.micro_batches]));
        let loss_sum = self.task.loss(batch, self.compute, &mut generator) * batch.indices.len() as f64;
        let value = loss_sum.double_value(&[]);
        input.images += batch.indices.len() as f64;
        input.non_finite |= !value.is_finite();
        if !on_every_rank(value.is_finite())? {
            return Ok(());
        }
        input.loss_sum += value;
        if last {
            self.buckets.arm();
        }
        loss_sum.f_backward().context("backpropagating the loss")?;
        Ok(())
    }

    /// Agrees with the other ranks on the step's samples and loss, sums the gradients over the
    /// ranks, divides them by the sample count, updates. Also returns whether a stop signal
    /// reached any rank: the same answer on every rank, so all stop after the same step.
    fn finish_step(&mut self, input: &mut StepInput) -> anyhow::Result<(StepOutcome, bool)> {
        let flags = [input.images, input.loss_sum, f64::from(u8::from(input.non_finite)), f64::from(u8::from(crate::stop::requested().is_some()))];
        let [images, loss_sum, non_finite, stop] = sum_values(self.comm.as_ref(), &flags, self.device)?[..] else { unreachable!("four values in, four out") };
        // Also in a step that is then skipped: overlapped, some buckets may have started.
        let wait_start = Instant::now();
        self.buckets.all_reduce()?;
        input.allreduce_s = wait_start.elapsed().as_secs_f64();
        Ok((self.update(images, loss_sum, non_finite > 0.0)?, stop > 0.0))
    }

    /// The step's update from the totals over the ranks.
    fn update(&mut self, images: f64, loss_sum: f64, non_finite: bool) -> anyhow::Result<StepOutcome> {
        if images == 0.0 {
            self.sgd.skip_step();
            return Ok(StepOutcome::EmptyBatch);
        }
        if non_finite || !loss_sum.is_finite() {
            self.sgd.skip_step();
            return Ok(StepOutcome::NonFinite(if loss_sum.is_finite() { f64::NAN } else { loss_sum / images }));
        }
        self.buckets.scale(1.0 / images);
        self.sgd.step();
        if let Device::Cuda(index) = self.device {
            // Honest compute times: wait for the queued kernels.
            tch::Cuda::synchronize(index as i64);
        }
        Ok(StepOutcome::Trained { loss: loss_sum / images, images })
    }
}

/// Rank 0's parameters and buffers to every rank, so that all start from the same state.
fn broadcast_state(comm: &dyn Communicator, vars: &VarStore) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for (name, mut tensor) in weights::named(vars) {
        comm.broadcast(&mut tensor, 0).with_context(|| format!("broadcasting `{name}` from rank 0"))?;
    }
    Ok(())
}

fn save_checkpoint<T: Task>(
    config: &Config,
    world: &World,
    train: &TrainConfig,
    checkpoints: &Checkpoints,
    trainer: &Trainer<T>,
    cursor: Cursor,
    losses: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let sgd = &trainer.sgd;
    let step = sgd.step_count();
    let loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
    losses.clear();
    if !world.is_root() {
        return Ok(());
    }
    let state = weights::named(trainer.task.vars());
    if let Some((name, _)) = state.iter().find(|(_, t)| !weights::finite(t)) {
        bail!("after step {step} parameter `{name}` holds non-finite values: not writing a checkpoint (lower the learning rate?)");
    }
    let meta = CheckpointMeta {
        step,
        epoch: cursor.epoch,
        cursor,
        world_size: world.size,
        rng: RngState { seed: config.run.seed, scheme: "ChaCha8 per sample from (seed, epoch, dataset index); epoch order from (seed, epoch)".into() },
        model_file: String::new(),
        optimizer_file: String::new(),
        optimizer: *sgd.settings(),
        config_hash: config.hash(),
        loss,
        model_sha256: None,
        optimizer_sha256: None,
        data_identity: Some(trainer.data_identity.clone()),
    };
    checkpoints.save(meta, &state, &sgd.state(), train.keep_checkpoints)?;
    Ok(())
}

/// Loads a checkpoint into the model and the optimiser; returns the cursor to continue from.
///
/// With the same number of ranks the run continues exactly. With another number, the model,
/// the momentum buffers and the epoch's sample order carry over exactly; the samples already
/// consumed (position × old ranks) are split among the new ranks, rounded down to a whole
/// position per rank (a few samples are then seen twice); the step counter is renumbered to
/// the new steps per epoch, so the learning-rate schedule continues at the same fraction of
/// the training; the global batch is the new per-rank batch × ranks × micro-batches.
fn restore(
    config: &Config,
    world: &World,
    schedule: &Schedule,
    checkpoints: &Checkpoints,
    meta: &CheckpointMeta,
    vars: &VarStore,
    sgd: &mut Sgd,
) -> anyhow::Result<Cursor> {
    let (cursor, step) = if meta.world_size == world.size {
        (meta.cursor, meta.step)
    } else {
        let consumed = meta.cursor.position * meta.world_size;
        let cursor = Cursor { epoch: meta.cursor.epoch, position: consumed / schedule.world };
        if !consumed.is_multiple_of(schedule.world) {
            warn!("resuming on {} rank(s) a run of {}: {consumed} samples of epoch {} were consumed, which does not divide among {} ranks; {} sample(s) will be seen twice", world.size, meta.world_size, cursor.epoch, world.size, consumed % schedule.world);
        }
        let step = schedule.steps_at(cursor);
        warn!("resuming on {} rank(s) a run written by {}: step {} becomes step {step} of {} (global batch {}); parameters and momentum are exact, the schedule continues at the same fraction", world.size, meta.world_size, meta.step, schedule.total_steps, schedule.global_batch);
        (cursor, step)
    };
    if meta.config_hash != config.hash() {
        warn!(
            "the config differs from the one that wrote the checkpoint of step {} (hash {} vs {}): continuing with the current config",
            meta.step,
            meta.config_hash,
            config.hash()
        );
    }
    weights::restore(vars, &checkpoints.model_path(meta))?;
    let path = checkpoints.optimizer_path(meta);
    let state: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?.into_iter().collect();
    sgd.restore(state, step).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    info!("resumed from step {step} (epoch {}, position {})", cursor.epoch, cursor.position);
    Ok(cursor)
}

/// `metrics.jsonl`, appended line by line; on resume the lines past the checkpoint's step are
/// dropped first, so the file reads as one uninterrupted run.
struct MetricsLog {
    file: Option<std::fs::File>,
}

impl MetricsLog {
    fn open(path: &Path, resume_step: u64, write: bool) -> anyhow::Result<MetricsLog> {
        if !write {
            return Ok(MetricsLog { file: None });
        }
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|line| serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s <= resume_step))
                .map(|line| format!("{line}\n"))
                .collect(),
            Err(_) => String::new(),
        };
        atomic_write(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog { file: Some(file) })
    }

    fn append(&mut self, metrics: &StepMetrics) -> anyhow::Result<()> {
        if let Some(file) = &mut self.file {
            writeln!(file, "{}", serde_json::to_string(metrics)?).context("writing metrics.jsonl")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::data::importer::{import, ImportOptions};
    use crate::data::synthetic::{SyntheticParams, SyntheticSource};
    use crate::dist::comm::LocalComm;
    use crate::optim::SgdSettings;

    /// Imports 4 synthetic images of `seed` into `out`, replacing what is there.
    fn import_images(out: &Path, seed: u64) {
        let params = SyntheticParams { size: 32, ..SyntheticParams::default() };
        let source = SyntheticSource::new(params, seed, 4, "train").unwrap();
        import(&source, out, ImportOptions { force: true, ..ImportOptions::default() }, &|_| {}).unwrap();
    }

    /// A dataset imported again under a job: a failed read then names the change, and the
    /// checkpoints' data identity no longer matches; the same rows imported again keep it.
    #[test]
    fn a_dataset_written_again_under_a_job_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("train");
        import_images(&out, 0);
        let data = TrainData { images: Arc::new(Dataset::open(&out).unwrap()), pseudo_labels: None, label_pixels: Vec::new() };
        let identity = data.identity();
        let error = data.read_failure(anyhow::anyhow!("part-00000.parquet: truncated"), 3);
        assert_eq!(format!("{error:#}"), "loading a batch of step 3: part-00000.parquet: truncated", "unchanged: the error as it was");
        import_images(&out, 0);
        assert!(data.changed_on_disk().is_none(), "the same rows again");
        assert_eq!(TrainData { images: Arc::new(Dataset::open(&out).unwrap()), ..data }.identity(), identity);

        let data = TrainData { images: Arc::new(Dataset::open(&out).unwrap()), pseudo_labels: None, label_pixels: Vec::new() };
        import_images(&out, 1);
        let error = format!("{:#}", data.read_failure(anyhow::anyhow!("part-00000.parquet: truncated"), 3));
        assert!(error.starts_with(&format!("{}: the dataset changed since this job started", out.display())) && error.ends_with("truncated"), "{error}");
        let now = TrainData { images: Arc::new(Dataset::open(&out).unwrap()), pseudo_labels: None, label_pixels: Vec::new() };
        assert_ne!(now.identity(), identity);
    }

    /// One parameter `w` of 2 values; the loss is `value · Σw`, and the task counts its calls.
    struct Probe {
        vs: VarStore,
        w: Tensor,
        value: f64,
        calls: Cell<usize>,
    }

    impl Task for Probe {
        fn vars(&self) -> &VarStore {
            &self.vs
        }
        fn param_groups(&self) -> Vec<ParamGroup> {
            vec![ParamGroup { name: "all".into(), lr_mult: 1.0, decay: true, params: vec![("w".into(), self.w.shallow_clone())] }]
        }
        fn initialise(&self, _calibration: &dyn Fn() -> anyhow::Result<Batch>) -> anyhow::Result<()> {
            Ok(())
        }
        fn loss(&self, _batch: &Batch, _compute: Kind, _generator: &mut ChaCha8Rng) -> Tensor {
            self.calls.set(self.calls.get() + 1);
            (&self.w * self.value).sum(Kind::Float)
        }
    }

    fn probe_trainer(value: f64) -> Trainer<Probe> {
        let vs = VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[2]);
        let task = Probe { vs, w, value, calls: Cell::new(0) };
        let settings = SgdSettings { lr: 0.1, momentum: 0.9, weight_decay: 0.0, poly_power: 0.9, total_steps: 10 };
        let sgd = Sgd::new(settings, task.param_groups());
        let buckets = GradientBuckets::new(&sgd.params().map(|p| p.shallow_clone()).collect::<Vec<_>>(), 1 << 20, Arc::new(LocalComm));
        Trainer { task, sgd, buckets, comm: Arc::new(LocalComm), device: Device::Cpu, compute: Kind::Float, seed: 0, rank: 0, data_identity: String::new() }
    }

    fn batch(images: usize) -> Batch {
        let indices: Vec<usize> = (0..images).collect();
        Batch {
            images: Tensor::zeros([images as i64, 3, 4, 4], (Kind::Float, Device::Cpu)),
            labels: Tensor::zeros([images as i64, 2], (Kind::Float, Device::Cpu)),
            masks: None,
            ids: indices.iter().map(|i| format!("img{i}")).collect(),
            indices,
            skipped: vec![],
            cursor: Cursor::default(),
        }
    }

    fn gradient(trainer: &Trainer<Probe>) -> Vec<f32> {
        let grad = trainer.task.w.grad();
        if grad.defined() {
            Vec::try_from(&grad).unwrap()
        } else {
            vec![0.0, 0.0]
        }
    }

    /// A micro-batch with no readable sample runs no forward pass and counts no image.
    #[test]
    fn an_empty_micro_batch_is_not_run() {
        let trainer = probe_trainer(1.0);
        let mut input = StepInput::default();
        trainer.forward_backward(&batch(0), &mut input, true).unwrap();
        assert_eq!((trainer.task.calls.get(), input.micro_batches, input.images, input.non_finite), (0, 1, 0.0, false));
    }

    /// A non-finite loss is flagged and not backpropagated: the gradient stays zero.
    #[test]
    fn a_non_finite_loss_is_not_backpropagated() {
        let trainer = probe_trainer(f64::NAN);
        let mut input = StepInput::default();
        trainer.forward_backward(&batch(2), &mut input, true).unwrap();
        assert!(input.non_finite);
        assert_eq!((input.images, input.loss_sum), (2.0, 0.0));
        assert_eq!(gradient(&trainer), [0.0, 0.0]);
        // A finite one is: the loss summed over the 2 images is 2·Σw, whose gradient is 2.
        let trainer = probe_trainer(1.0);
        let mut input = StepInput::default();
        trainer.forward_backward(&batch(2), &mut input, true).unwrap();
        assert_eq!(gradient(&trainer), [2.0, 2.0]);
    }
}
