//! `wsss-dist cam --config F`: CAM inference (docs/methods.md; for AMR checkpoints both branches
//! and the recalibration `α·M_spot + (1−α)·M_comp`, α = `method.amr.alpha`) over the
//! images of `cam.split` with the run's latest checkpoint (or `cam.checkpoint`), written as a CAM dataset
//! (`cam.out`, default `<run dir>/cams/<split>`): f16 maps at stride 4 for the classes of each
//! image's labels, plus the classifier's logits of those classes.
//!
//! A map phase (`engine::map_phase`): task t = input shard t → output shard t (rows sorted by
//! id), scheduled dynamically over the ranks, resumable task by task; the same bytes for any
//! number of ranks. An image that does not decode is skipped with a warning and counted; its
//! row is absent from the output.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;
use tch::{Device, Kind};

use super::Summary;
use crate::config::Config;
use crate::data::codec::decode_row_image;
use crate::data::preprocess::{fit_long_side, Normalise};
use crate::data::schema::CAM_STRIDE;
use crate::data::shard::file_sha256;
use crate::data::{CamRow, Dataset, DatasetKind, ImageRow, ShardRow};
use crate::dist::World;
use crate::engine::map_phase::{execute, fingerprint, for_each_image, MapJob, TaskOutput};
use crate::model::{weights, Base, Model};
use crate::refine::diffusion::{refine_cams, CamRefine};

pub fn run(config: &Config, world: &World, force: bool) -> anyhow::Result<Summary> {
    run_with(&CamInference::new(config, world)?, world, force)
}

/// `cam` with its model and job already set up.
pub(super) fn run_with(inference: &CamInference, world: &World, force: bool) -> anyhow::Result<Summary> {
    let details = execute(world, std::slice::from_ref(&inference.job), force, |task, images_done| {
        let mut rows = Vec::new();
        let (skipped, seconds) = inference.task(task, images_done, |_, _, cam| rows.push(cam))?;
        Ok(TaskOutput::single(rows, skipped, seconds))
    })?;
    Ok(Summary::ok(json!({ "checkpoint": inference.checkpoint, "map": details[0] })))
}

/// What CAM inference over `cam.split` needs: the images, the model and the map job; shared
/// by `cam` and the map phase of `run`, which refines each CAM as it comes.
pub(super) struct CamInference<'a> {
    config: &'a Config,
    pub input: Dataset,
    pub checkpoint: PathBuf,
    model: Model,
    normalise: Normalise,
    pub job: MapJob,
}

impl<'a> CamInference<'a> {
    pub fn new(config: &'a Config, world: &World) -> anyhow::Result<CamInference<'a>> {
        let device = super::compute_device(config, world)?;
        let input_dir = config.dataset(config.cam.inference.split);
        let input: Dataset = Dataset::open(input_dir).with_context(|| format!("the images of cam.split ({})", input_dir.display()))?;
        input.check_unique_ids()?;
        let checkpoint =
            super::model_to_load(&config.cam.inference.checkpoint, &config.paths().root(), "run `wsss-dist train cam` first, or set cam.checkpoint")?;
        let model = Model::new(config.method.base, config.model.backbone(), input.manifest().num_classes() as i64, device);
        weights::restore(&model.vs, &checkpoint)
            .context("loading the CAM model (do [model], method.base and the dataset's classes match the training run?)")?;
        let normalise = Normalise::new(config.loader.mean, config.loader.std, device);
        // What shapes the CAMs: the weights, the network, the scales, the normalisation.
        let mut settings = json!({
            "checkpoint": file_sha256(&checkpoint)?,
            "model": config.model, "base": config.method.base, "alpha": config.method.amr.alpha,
            "scales": config.cam.inference.scales, "flip": config.cam.inference.flip, "mean": config.loader.mean, "std": config.loader.std,
        });
        // (Unrefined CAMs keep the fingerprint they had before refinement existed.)
        if config.cam.refine != CamRefine::None {
            settings["refine"] = json!(refine_settings(config));
        }
        let settings = serde_json::to_string(&settings)?;
        let job = MapJob {
            what: "cam",
            out: config.paths().cams(config.cam.inference.split),
            fingerprint: fingerprint(&[input.manifest()], &settings),
            task_images: input.manifest().shards.iter().map(|s| s.rows).collect(),
            kind: DatasetKind::Cams,
            split: input.manifest().split.clone(),
            classes: input.manifest().classes.clone(),
            source: format!(
                "wsss-dist cam of {} with {} ({}, scales {:?}, flip {})",
                input_dir.display(),
                checkpoint.display(),
                method_summary(config),
                config.cam.inference.scales,
                config.cam.inference.flip
            ),
        };
        Ok(CamInference { config, input, checkpoint, model, normalise, job })
    }

    /// The CAMs of task `task`'s images, in order, each handed to `each(where, image, cam)`
    /// (`where`: file and row group, for messages) and counted to `images_done`. Returns the
    /// skipped images and the seconds by phase.
    pub fn task(
        &self,
        task: usize,
        images_done: &dyn Fn(u64),
        each: impl FnMut(&str, ImageRow, CamRow),
    ) -> anyhow::Result<(Vec<String>, BTreeMap<String, f64>)> {
        for_each_image(
            &self.input,
            task,
            self.config.run.max_image_pixels,
            images_done,
            |image| cam_row(&self.model, image, &self.normalise, self.config, self.input.manifest().num_classes()),
            each,
        )
    }
}

/// The CAM row of one image; an error is the reason to skip it.
fn cam_row(model: &Model, image: &ImageRow, normalise: &Normalise, config: &Config, num_classes: u16) -> Result<CamRow, String> {
    let rgb = decode_row_image(image)?;
    let classes: Vec<i64> = image.labels.iter().map(|&c| c as i64 - 1).collect();
    let (cams, logits) = tch::no_grad(|| {
        let image = fit_long_side(&normalise.apply(&rgb.pixels, rgb.width, rgb.height), config.cam.inference.max_side);
        let (cams, logits) =
            model.multiscale_cams(&image, &classes, &config.cam.inference.scales, config.cam.inference.flip, CAM_STRIDE as i64, config.method.amr.alpha);
        let grid = [rgb.height.div_ceil(CAM_STRIDE) as i64, rgb.width.div_ceil(CAM_STRIDE) as i64];
        let cams = if cams.size()[1..] == grid { cams } else { cams.unsqueeze(0).upsample_bilinear2d(grid, false, None, None).squeeze_dim(0) };
        let cams = match config.cam.refine {
            CamRefine::None => cams,
            refine => refine_cams(&cams, &model.attention_source(&image, config.cam.ad_cam.layers), refine, &config.cam.ad_cam),
        };
        (cams, logits)
    });
    let half = cams.to_kind(Kind::Half).to_device(Device::Cpu).contiguous();
    let mut cam = vec![0u8; half.numel() * 2];
    half.copy_data_u8(&mut cam, half.numel());
    let scores = Vec::<f32>::try_from(logits.to_device(Device::Cpu)).map_err(|e| e.to_string())?;
    let row = CamRow { id: image.id.clone(), classes: image.labels.clone(), scores, cam, height: rgb.height, width: rgb.width };
    // A network that computes NaN (a diverged checkpoint) must not leave CAMs that look real.
    row.check(num_classes).map_err(|e| format!("the network's output: {e}"))?;
    Ok(row)
}

/// How the CAMs were computed, for the manifest's `source`.
fn method_summary(config: &Config) -> String {
    let base = match config.method.base {
        Base::Cam => "CAM".into(),
        Base::Amr => format!("AMR, recalibrated with alpha {}", config.method.amr.alpha),
    };
    match config.cam.refine {
        CamRefine::None => base,
        CamRefine::Couple => format!("{base}, coupled with its feature attention"),
        CamRefine::AdCam => format!("{base}, AD-CAM {}", refine_settings(config)),
    }
}

/// The refinement's settings, as they shape the CAMs.
fn refine_settings(config: &Config) -> String {
    match config.cam.refine {
        CamRefine::None => String::new(),
        CamRefine::Couple => "couple".into(),
        CamRefine::AdCam => serde_json::to_string(&config.cam.ad_cam).unwrap_or_default(),
    }
}
