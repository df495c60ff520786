//! `wsss-dist train cam --config F [--resume]`: trains the CAM classifier (METHODS.md §1) on
//! `data.train` and writes the run directory: the resolved `config.toml`, `metrics.jsonl` (one
//! object per logged step), `checkpoints/` (model + optimiser safetensors and a JSON sidecar)
//! every `train.checkpoint_every` steps and at the end, and `summary.json`.
//!
//! A step is: wait for the loader's batch, forward, loss, check it is finite, backward, update.
//! Resuming restores the model, the optimiser and the sampler cursor, and the loader's
//! augmentations are a function of (seed, epoch, sample), so a resumed run continues exactly
//! where an uninterrupted one would be.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use serde::Serialize;
use serde_json::json;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::{progress_bar, Summary};
use crate::checkpoint::{CheckpointMeta, Checkpoints, RngState};
use crate::config::{Config, OnNonFinite};
use crate::data::loader::{Batch, Loader};
use crate::data::sampler::{Cursor, Sampler};
use crate::data::{atomic_write, Dataset};
use crate::dist::World;
use crate::loss::multilabel::multilabel_soft_margin;
use crate::model::cam::CamModel;
use crate::model::weights;
use crate::optim::{Sgd, SgdSettings};

/// One line of `metrics.jsonl`.
#[derive(Debug, Serialize)]
struct StepMetrics {
    step: u64,
    epoch: u64,
    loss: f64,
    lr: f64,
    images: usize,
    images_per_s: f64,
    data_wait_s: f64,
    compute_s: f64,
}

pub fn run(config: &Config, world: &World, resume: bool) -> anyhow::Result<Summary> {
    let device = super::compute_device(config, world)?;
    ensure!(!config.train.bf16 || device.is_cuda() || config.run.device == "cpu", "config key `train.bf16`: bf16 autocast needs a CUDA device (set run.device = \"cpu\" to force it on the CPU)");
    let dataset = Arc::new(Dataset::open(&config.data.train).with_context(|| format!("config key `data.train` ({})", config.data.train.display()))?);
    let num_classes = dataset.manifest().num_classes() as i64;
    let sampler = Sampler {
        len: dataset.len(),
        seed: config.run.seed,
        rank: world.rank,
        world: world.size,
        shuffle: config.loader.shuffle,
        uneven: config.loader.uneven,
    };
    let steps_per_epoch = sampler.per_rank().div_ceil(config.loader.batch_size) as u64;
    ensure!(steps_per_epoch > 0, "{}: no training images for rank {} of {}", config.data.train.display(), world.rank, world.size);
    let total_steps = config.train.epochs * steps_per_epoch;
    let loader = Loader::new(dataset.clone(), sampler.clone(), config.loader.spec(config.run.seed))?;

    tch::manual_seed(config.run.seed as i64);
    let model = CamModel::new(config.model.depth, config.model.strides, num_classes, device);
    let settings = SgdSettings {
        lr: config.train.lr,
        momentum: config.train.momentum,
        weight_decay: config.train.weight_decay,
        poly_power: config.train.poly_power,
        total_steps,
    };
    let mut sgd = Sgd::new(settings, model.param_groups(config.train.head_lr_mult));

    let run_dir = config.run_dir();
    let checkpoints = Checkpoints::new(run_dir.join("checkpoints"));
    let mut cursor = Cursor::default();
    match (resume, checkpoints.latest()?) {
        (true, Some(meta)) => cursor = restore(config, world, &checkpoints, &meta, &model, &mut sgd)?,
        (false, Some(meta)) => bail!(
            "{} already holds checkpoints (latest: step {}): pass --resume to continue that run, or set run.name to start another",
            checkpoints.dir().display(),
            meta.step
        ),
        (resume, None) => {
            if resume {
                info!("no checkpoint in {} yet: starting from step 0", checkpoints.dir().display());
            }
            initialise(config, &model, Loader::new(dataset, Sampler { rank: 0, world: 1, ..sampler }, config.loader.spec(config.run.seed))?, device)?;
        }
    }
    if world.is_root() {
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
        atomic_write(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
    }
    let mut metrics = MetricsLog::open(&run_dir.join("metrics.jsonl"), sgd.step_count(), world.is_root())?;

    let compute = if config.train.bf16 { Kind::BFloat16 } else { Kind::Float };
    let stop_at = match config.train.stop_after {
        0 => total_steps,
        n => (sgd.step_count() + n).min(total_steps),
    };
    let bar = progress_bar(world, total_steps, "train");
    bar.set_position(sgd.step_count());
    let started = Instant::now();
    let first_step = sgd.step_count();
    let (mut skipped_samples, mut skipped_steps) = (0usize, 0u64);
    let mut losses = Vec::new();
    while sgd.step_count() < stop_at {
        let mut wait_start = Instant::now();
        for batch in loader.epoch(cursor) {
            let batch = batch.with_context(|| format!("loading the batch of step {}", sgd.step_count()))?;
            let data_wait = wait_start.elapsed().as_secs_f64();
            for skip in &batch.skipped {
                warn!("skipped sample: {skip}");
            }
            skipped_samples += batch.skipped.len();
            let step = sgd.step_count();
            let lr = sgd.lr();
            let compute_start = Instant::now();
            let outcome = train_step(&model, &mut sgd, &batch, device, compute);
            let compute_s = compute_start.elapsed().as_secs_f64();
            cursor = next_cursor(batch.cursor, loader.sampler().per_rank());
            let loss = match outcome {
                StepOutcome::Trained(loss) => loss,
                StepOutcome::EmptyBatch => {
                    warn!("step {step}: no sample of the batch could be read; step skipped");
                    skipped_steps += 1;
                    f64::NAN
                }
                StepOutcome::NonFinite(loss) => {
                    if config.train.on_nonfinite == OnNonFinite::Error {
                        bail!("step {step} (epoch {}, images {}): the loss is {loss}; stopping, no checkpoint written for this step (train.on_nonfinite = \"skip\" skips such steps)", batch.cursor.epoch, batch.ids.join(", "));
                    }
                    warn!("step {step}: the loss is {loss}; step skipped (parameters unchanged)");
                    skipped_steps += 1;
                    loss
                }
            };
            let step = sgd.step_count();
            if loss.is_finite() {
                losses.push(loss);
                if world.is_root() && step % config.train.log_every == 0 {
                    let images = batch.indices.len();
                    let images_per_s = images as f64 / (data_wait + compute_s);
                    metrics.append(&StepMetrics { step, epoch: batch.cursor.epoch, loss, lr, images, images_per_s, data_wait_s: data_wait, compute_s })?;
                    bar.set_message(format!("train loss {loss:.4} {images_per_s:.1} img/s"));
                }
            }
            bar.set_position(step);
            if step % config.train.checkpoint_every == 0 || step == stop_at {
                save_checkpoint(config, world, &checkpoints, &model, &sgd, cursor, &mut losses)?;
            }
            if step >= stop_at {
                break;
            }
            wait_start = Instant::now();
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let steps = sgd.step_count() - first_step;
    let images_per_s = (steps as f64 * config.loader.batch_size as f64 * world.size as f64) / seconds.max(1e-9);
    info!("trained steps {first_step}..{} of {total_steps} in {seconds:.1} s ({images_per_s:.1} images/s); skipped {skipped_samples} sample(s), {skipped_steps} step(s)", sgd.step_count());
    let details = json!({
        "run_dir": run_dir, "steps": sgd.step_count(), "total_steps": total_steps, "finished": sgd.step_count() == total_steps,
        "seconds": seconds, "images_per_s": images_per_s, "skipped_samples": skipped_samples, "skipped_steps": skipped_steps,
        "device": format!("{device:?}"), "config_hash": config.hash(),
    });
    if world.is_root() {
        atomic_write(&run_dir.join("summary.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
    }
    Ok(Summary::ok(details))
}

/// Starts from `model.init` (torchvision weights), or from a random initialisation whose
/// frozen BatchNorm statistics are calibrated on the first batch of epoch 0 as one rank sees
/// the whole dataset (`calibration`), so that every rank calibrates identically. Warns that a
/// random start will not give good CAMs on real photos.
fn initialise(config: &Config, model: &CamModel, calibration: Loader, device: Device) -> anyhow::Result<()> {
    if config.model.init.as_os_str().is_empty() {
        warn!("model.init is not set: training from a random initialisation. CAMs on real photos need ImageNet weights (tools/pth_to_safetensors.py converts torchvision's)");
        let batch = calibration.epoch(Cursor::default()).next().context("no batch to calibrate BatchNorm on")?.context("reading the BatchNorm calibration batch")?;
        model.net.calibrate_batch_norm(&batch.images.to_device(device));
        info!("frozen BatchNorm statistics calibrated on {} images", batch.indices.len());
        return Ok(());
    }
    let report = weights::import(&model.vs, &config.model.init, &weights::TORCHVISION_BACKBONE).context("config key `model.init`")?;
    info!("loaded {} tensors from {} (new: {}; ignored: {} key(s))", report.loaded, config.model.init.display(), report.kept_init.join(", "), report.ignored.len());
    Ok(())
}

/// What one step did. A skipped step still advances the schedule.
enum StepOutcome {
    Trained(f64),
    /// Every sample of the batch was skipped (unreadable).
    EmptyBatch,
    /// The loss was not finite: no update.
    NonFinite(f64),
}

/// Forward, loss, backward, update.
fn train_step(model: &CamModel, sgd: &mut Sgd, batch: &Batch, device: Device, compute: Kind) -> StepOutcome {
    if batch.indices.is_empty() {
        sgd.skip_step();
        return StepOutcome::EmptyBatch;
    }
    let images = batch.images.to_device(device);
    let labels = batch.labels.to_device(device);
    let logits = model.net.logits(&model.net.features(&images, compute));
    let loss = multilabel_soft_margin(&logits, &labels);
    let value = loss.double_value(&[]);
    if !value.is_finite() {
        sgd.skip_step();
        return StepOutcome::NonFinite(value);
    }
    sgd.zero_grad();
    loss.backward();
    sgd.step();
    if let Device::Cuda(index) = device {
        // Honest compute times: wait for the queued kernels.
        tch::Cuda::synchronize(index as i64);
    }
    StepOutcome::Trained(value)
}

/// The cursor after a batch, rolled over to the next epoch at the end of one.
fn next_cursor(cursor: Cursor, per_rank: usize) -> Cursor {
    if cursor.position >= per_rank {
        Cursor { epoch: cursor.epoch + 1, position: 0 }
    } else {
        cursor
    }
}

fn save_checkpoint(config: &Config, world: &World, checkpoints: &Checkpoints, model: &CamModel, sgd: &Sgd, cursor: Cursor, losses: &mut Vec<f64>) -> anyhow::Result<()> {
    let step = sgd.step_count();
    let loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
    losses.clear();
    if !world.is_root() {
        return Ok(());
    }
    let state = weights::named(&model.vs);
    if let Some((name, _)) = state.iter().find(|(_, t)| !weights::finite(t)) {
        bail!("after step {step} parameter `{name}` holds non-finite values: not writing a checkpoint (lower train.lr?)");
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
    };
    checkpoints.save(meta, &state, &sgd.state(), config.train.keep_checkpoints)?;
    Ok(())
}

/// Loads a checkpoint into the model and the optimiser; returns the cursor to continue from.
fn restore(config: &Config, world: &World, checkpoints: &Checkpoints, meta: &CheckpointMeta, model: &CamModel, sgd: &mut Sgd) -> anyhow::Result<Cursor> {
    ensure!(
        meta.world_size == world.size,
        "the checkpoint of step {} was written by {} rank(s), this job has {}: resume with the same number of ranks",
        meta.step,
        meta.world_size,
        world.size
    );
    if meta.config_hash != config.hash() {
        warn!("the config differs from the one that wrote the checkpoint of step {} (hash {} vs {}): continuing with the current config", meta.step, meta.config_hash, config.hash());
    }
    weights::restore(&model.vs, &checkpoints.model_path(meta))?;
    let path = checkpoints.optimizer_path(meta);
    let state: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?.into_iter().collect();
    sgd.restore(state, meta.step).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    info!("resumed from step {} (epoch {}, position {})", meta.step, meta.cursor.epoch, meta.cursor.position);
    Ok(meta.cursor)
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
