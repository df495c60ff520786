//! `wsss-dist train cam --config F [--resume]`: trains the classifier of `[method]` (the CAM
//! network or AMR's two branches, with HFPL's ISL/FSL add-ons: see `loss::objective` and
//! docs/methods.md) on `data.train`, as a task of the shared trainer (`engine::trainer`), into
//! the run directory.

use std::sync::Arc;

use anyhow::{ensure, Context};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::Summary;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::data::Dataset;
use crate::dist::World;
use crate::engine::trainer::{self, Stage, Task, TaskContext, TrainData};
use crate::loss::Objective;
use crate::model::amr::{COMPENSATION, SPOTLIGHT};
use crate::model::cam::CamNet;
use crate::model::{weights, Base, Model, Network};
use crate::optim::ParamGroup;

pub fn run(config: &Config, world: &World, resume: bool) -> anyhow::Result<Summary> {
    let dataset = Arc::new(Dataset::open(&config.data.train).with_context(|| format!("config key `data.train` ({})", config.data.train.display()))?);
    let stage = Stage { keys: "", train: &config.train, loader: &config.loader, dir: config.paths().root() };
    let data = TrainData { images: dataset, pseudo_labels: None, label_pixels: Vec::new() };
    trainer::train(config, world, resume, &stage, data, |context| Ok(CamTask::new(config, context))).map(Summary::ok)
}

/// The classifier of `[method]` and its loss.
struct CamTask<'a> {
    config: &'a Config,
    model: Model,
    objective: Objective,
    device: Device,
}

impl<'a> CamTask<'a> {
    fn new(config: &'a Config, context: &TaskContext) -> CamTask<'a> {
        let model = Model::new(config.method.base, config.model.backbone(), context.num_classes, context.device);
        if config.method.base == Base::Amr && config.method.amr.freeze_spotlight {
            model.freeze(&format!("{SPOTLIGHT}."));
        }
        let objective = Objective::new(config.method.objective_terms(), config.loader.mean, config.loader.std);
        CamTask { config, model, objective, device: context.device }
    }
}

impl Task for CamTask<'_> {
    fn vars(&self) -> &VarStore {
        &self.model.vs
    }

    fn param_groups(&self) -> Vec<ParamGroup> {
        let amr = &self.config.method.amr;
        let backbone_lr_mult = |branch: &str| if branch == COMPENSATION { amr.compensation_lr_mult } else { 1.0 };
        self.model.param_groups(self.config.train.head_lr_mult, backbone_lr_mult)
    }

    fn initialise(&self, calibration: &dyn Fn() -> anyhow::Result<Batch>) -> anyhow::Result<()> {
        initialise(self.config, &self.model, calibration, self.device)
    }

    fn loss(&self, batch: &Batch, compute: Kind, generator: &mut ChaCha8Rng) -> Tensor {
        let images = batch.images.to_device(self.device);
        let labels = batch.labels.to_device(self.device);
        self.objective.loss(&self.model.net, &images, &labels, compute, generator)
    }
}

/// Starts each branch from its initialisation: AMR's spotlight from `method.amr.spotlight_init`
/// when set (a trained CAM network, every key must match); every other branch from
/// `model.init` (torchvision weights), or from a random initialisation whose frozen BatchNorm
/// statistics are calibrated on the first batch of epoch 0 as one rank sees the whole dataset
/// (`calibration`), so that every rank calibrates identically. Warns that a random start will
/// not give good CAMs on real photos.
fn initialise(config: &Config, model: &Model, calibration: &dyn Fn() -> anyhow::Result<Batch>, device: Device) -> anyhow::Result<()> {
    let branches: Vec<(&str, &CamNet)> = match &model.net {
        Network::Cam(net) => vec![("", net)],
        Network::Amr(net) => vec![(SPOTLIGHT, &net.spotlight), (COMPENSATION, &net.compensation)],
    };
    let mut calibrate = Vec::new();
    for (branch, net) in branches {
        let prefix = if branch.is_empty() { String::new() } else { format!("{branch}.") };
        let spotlight_init = &config.method.amr.spotlight_init;
        if branch == SPOTLIGHT && !spotlight_init.as_os_str().is_empty() {
            let path =
                super::model_to_load(spotlight_init, spotlight_init, "config key `method.amr.spotlight_init` names a run of `train cam` or its model file")?;
            let report = weights::import_under(&model.vs, &prefix, &path, &weights::EXACT)
                .context("config key `method.amr.spotlight_init` (a CAM network of the same model.arch, depth and classes)")?;
            info!("spotlight branch: loaded {} tensors from {}", report.loaded, path.display());
        } else if config.model.backbone.init.as_os_str().is_empty() {
            calibrate.push((branch, net));
        } else {
            ensure!(
                config.model.backbone.init.exists(),
                "config key `model.init`: {} does not exist (`make weights` fetches torchvision's ImageNet MobileNetV2 into weights/; docs/weights.md)",
                config.model.backbone.init.display()
            );
            let report =
                weights::import_under(&model.vs, &prefix, &config.model.backbone.init, &weights::TORCHVISION_BACKBONE).context("config key `model.init`")?;
            info!(
                "{}loaded {} tensors from {} (new: {}; ignored: {} key(s))",
                branch_label(branch),
                report.loaded,
                config.model.backbone.init.display(),
                report.kept_init.join(", "),
                report.ignored.len()
            );
        }
    }
    if calibrate.is_empty() {
        return Ok(());
    }
    warn!("model.init is not set: training from a random initialisation. CAMs need ImageNet weights (`make weights`, docs/weights.md)");
    let batch = calibration().context("calibrating BatchNorm")?;
    for (branch, net) in calibrate {
        if net.calibrate_batch_norm(&batch.images.to_device(device)) {
            info!("{}BatchNorm statistics calibrated on {} images", branch_label(branch), batch.indices.len());
        }
    }
    Ok(())
}

/// "spotlight branch: " for log lines, "" for the single CAM network.
fn branch_label(branch: &str) -> String {
    if branch.is_empty() {
        String::new()
    } else {
        format!("{branch} branch: ")
    }
}
