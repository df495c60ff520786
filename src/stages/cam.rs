//! `wsss-dist cam --config F`: CAM inference (METHODS.md §1; for AMR checkpoints both branches
//! and the recalibration `α·M_spot + (1−α)·M_comp` of §2, α = `method.amr.alpha`) over the
//! images of `cam.split` with the run's latest checkpoint (or `cam.checkpoint`), written as a CAM dataset
//! (`cam.out`, default `<run dir>/cams/<split>`): f16 maps at stride 4 for the classes of each
//! image's labels, plus the classifier's logits of those classes.
//!
//! The unit of work is one input shard → one output shard of the same number; under `mpirun`
//! rank r takes every size-th shard. The dataset is built in a hidden staging directory and
//! renamed into place with its manifest by rank 0 once every rank's shards are written. An image that
//! does not decode is skipped with a warning and counted; its row is absent from the output.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::{progress_bar, Summary};
use crate::checkpoint::model_in;
use crate::config::Config;
use crate::data::codec::decode_row_image;
use crate::data::importer::{replace_dir, staging_dir};
use crate::data::schema::{ShardInfo, CAM_STRIDE, FORMAT_VERSION};
use crate::data::shard::{shard_file_name, write_shard, ShardLayout};
use crate::data::{CamRow, Dataset, DatasetKind, ImageRow, Manifest};
use crate::dist::comm::all_gather_text;
use crate::dist::{self, Backend, World};
use crate::model::{weights, Base, Model};

pub fn run(config: &Config, world: &World) -> anyhow::Result<Summary> {
    let device = super::compute_device(config, world)?;
    let input_dir = config.dataset(config.cam.split);
    let input: Dataset = Dataset::open(input_dir).with_context(|| format!("the images of cam.split ({})", input_dir.display()))?;
    let checkpoint = checkpoint_path(config)?;
    let model = Model::new(config.method.base, config.model.depth, config.model.strides, input.manifest().num_classes() as i64, device);
    weights::restore(&model.vs, &checkpoint).context("loading the CAM model (do [model], method.base and the dataset's classes match the training run?)")?;
    let out = config.cam_dir();
    // Coordination only (paths, shard records): CPU tensors whatever the compute device.
    let comm = dist::connect(world, Backend::Mpi, Device::Cpu)?;
    info!("CAMs of {} ({} images) with {} on {} rank(s) → {}", input_dir.display(), input.len(), checkpoint.display(), world.size, out.display());
    let started = Instant::now();
    let staging = if world.is_root() { staging_dir(&out)?.display().to_string() } else { String::new() };
    let staging = PathBuf::from(&all_gather_text(comm.as_ref(), &staging, Device::Cpu)?[0]);
    let normalise = Normalise::new(config.loader.mean, config.loader.std, device);
    // Rank r writes every size-th shard (the dynamic map phase of issue 6 will balance this).
    let my_shards: Vec<usize> = (0..input.num_shards()).filter(|s| s % world.size == world.rank).collect();
    let bar = progress_bar(world, my_shards.iter().map(|&s| input.manifest().shards[s].rows).sum(), "cam");
    let mut written = Vec::new();
    let mut skipped = Vec::new();
    for shard in my_shards {
        let reader = input.shard(shard)?;
        let mut rows = Vec::with_capacity(reader.num_rows());
        for group in 0..reader.num_row_groups() {
            for (i, image) in reader.read_row_group(group)?.into_iter().enumerate() {
                match cam_row(&model, &image, &normalise, config) {
                    Ok(row) => rows.push(row),
                    Err(reason) => {
                        let what = format!("{} row group {group} item {i} id {}: {reason}", input.manifest().shards[shard].file, image.id);
                        warn!("skipped {what}");
                        skipped.push(what);
                    }
                }
                bar.inc(1);
            }
        }
        written.push((shard, write_shard(&staging.join(shard_file_name(shard)), &rows, ShardLayout::default())?));
    }
    bar.finish_and_clear();
    let mine = serde_json::to_string(&(written, skipped))?;
    let mut shards = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for text in all_gather_text(comm.as_ref(), &mine, Device::Cpu)? {
        let (written, rank_skipped): (Vec<(usize, ShardInfo)>, Vec<String>) = serde_json::from_str(&text).context("reading another rank's shard records")?;
        shards.extend(written);
        skipped.extend(rank_skipped);
    }
    if !world.is_root() {
        return Ok(Summary::ok(json!({ "rank": world.rank, "written_by": "rank 0" })));
    }
    shards.sort_by_key(|(index, _)| *index);
    let shards: Vec<ShardInfo> = shards.into_iter().map(|(_, info)| info).collect();
    let rows = shards.iter().map(|s| s.rows).sum();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: DatasetKind::Cams,
        split: input.manifest().split.clone(),
        classes: input.manifest().classes.clone(),
        rows,
        shards,
        source: format!("wsss-dist cam of {} with {} ({}, scales {:?}, flip {})", input_dir.display(), checkpoint.display(), method_summary(config), config.cam.scales, config.cam.flip),
    };
    manifest.write(&staging)?;
    replace_dir(&staging, &out)?;
    let seconds = started.elapsed().as_secs_f64();
    info!("wrote {rows} CAM rows to {} in {seconds:.1} s ({:.1} images/s); skipped {}", out.display(), rows as f64 / seconds.max(1e-9), skipped.len());
    Ok(Summary::ok(json!({ "out": out, "rows": rows, "skipped": skipped.len(), "skipped_items": skipped, "seconds": seconds, "checkpoint": checkpoint })))
}

/// `cam.checkpoint`, or the model of the run's newest checkpoint.
fn checkpoint_path(config: &Config) -> anyhow::Result<PathBuf> {
    if !config.cam.checkpoint.as_os_str().is_empty() {
        return Ok(config.cam.checkpoint.clone());
    }
    model_in(&config.run_dir())?.with_context(|| {
        format!("no checkpoint in {}/checkpoints: run `wsss-dist train cam` first, or set cam.checkpoint", config.run_dir().display())
    })
}

/// The loader's normalisation, `(x/255 − mean)/std`, as tensors on the device.
struct Normalise {
    mean: Tensor,
    std: Tensor,
}

impl Normalise {
    fn new(mean: [f32; 3], std: [f32; 3], device: Device) -> Normalise {
        let column = |v: [f32; 3]| Tensor::from_slice(&v).view([3, 1, 1]).to_device(device);
        Normalise { mean: column(mean), std: column(std) }
    }

    /// HWC RGB bytes → normalised [3, H, W] f32.
    fn apply(&self, pixels: &[u8], width: u32, height: u32) -> Tensor {
        let image = Tensor::from_slice(pixels).view([height as i64, width as i64, 3]).permute([2, 0, 1]);
        (image.to_device(self.mean.device()).to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std
    }
}

/// The CAM row of one image; an error is the reason to skip it.
fn cam_row(model: &Model, image: &ImageRow, normalise: &Normalise, config: &Config) -> Result<CamRow, String> {
    let rgb = decode_row_image(image)?;
    let classes: Vec<i64> = image.labels.iter().map(|&c| c as i64 - 1).collect();
    let (cams, logits) = tch::no_grad(|| {
        let image = normalise.apply(&rgb.pixels, rgb.width, rgb.height);
        model.multiscale_cams(&image, &classes, &config.cam.scales, config.cam.flip, CAM_STRIDE as i64, config.method.amr.alpha)
    });
    let half = cams.to_kind(Kind::Half).to_device(Device::Cpu).contiguous();
    let mut cam = vec![0u8; half.numel() * 2];
    half.copy_data_u8(&mut cam, half.numel());
    let scores = Vec::<f32>::try_from(logits.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
    Ok(CamRow { id: image.id.clone(), classes: image.labels.clone(), scores, cam, height: rgb.height, width: rgb.width })
}

/// How the CAMs were computed, for the manifest's `source`.
fn method_summary(config: &Config) -> String {
    match config.method.base {
        Base::Cam => "CAM".into(),
        Base::Amr => format!("AMR, recalibrated with alpha {}", config.method.amr.alpha),
    }
}
