//! `wsss-dist train irn --config F [--resume]`: trains IRNet's inter-pixel relation network
//! (`model::irn`, docs/methods.md §8) on `data.train` ⋈ its `irn_seeds` pseudo-labels
//! (`irn.labels`, by id), as a task of the shared trainer (`engine::trainer`), into
//! `<run dir>/irn`: the boundary branch at `irn.train.lr`, the displacement branch at
//! `irn.train.head_lr_mult` times it (IRNet's 10×), the backbone frozen.

use std::cell::RefCell;

use anyhow::{ensure, Context};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::Summary;
use crate::config::Config;
use crate::data::loader::Batch;
use crate::dist::World;
use crate::engine::trainer::{self, Stage, Task, TaskContext, TrainData};
use crate::loss::irn::{irn_loss, PairIndex};
use crate::loss::segmentation::resize_labels;
use crate::model::irn::{IrnNet, DISPLACEMENT, EDGE};
use crate::model::layers::Mode;
use crate::model::weights;
use crate::optim::ParamGroup;

pub fn run(config: &Config, world: &World, resume: bool) -> anyhow::Result<Summary> {
    let data = TrainData::with_labels(config, &config.paths().irn_labels(), "irn.labels")?;
    let stage = Stage { keys: "irn.", train: &config.irn.train, loader: &config.irn.loader, dir: config.paths().irn() };
    trainer::train(config, world, resume, &stage, data, |context| Ok(IrnTask::new(config, context))).map(Summary::ok)
}

/// The network, and the pair index of the crops' stride-4 grid (made for the first batch's
/// size and kept: every batch of a run has the loader's crop).
pub struct IrnTask<'a> {
    config: &'a Config,
    vs: VarStore,
    net: IrnNet,
    pairs: RefCell<Option<((i64, i64), PairIndex)>>,
    device: Device,
}

impl<'a> IrnTask<'a> {
    pub fn new(config: &'a Config, context: &TaskContext) -> IrnTask<'a> {
        let vs = VarStore::new(context.device);
        let net = IrnNet::new(&vs.root(), config.irn.backbone());
        IrnTask { config, vs, net, pairs: RefCell::new(None), device: context.device }
    }
}

impl Task for IrnTask<'_> {
    fn vars(&self) -> &VarStore {
        &self.vs
    }

    /// The boundary branch at the base rate, the displacement branch at `head_lr_mult` (IRNet's
    /// 10×), weight decay on both (IRNet decays every parameter of both groups).
    fn param_groups(&self) -> Vec<ParamGroup> {
        let mut trainable: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let (displacement, edge): (Vec<_>, Vec<_>) =
            trainable.into_iter().filter(|(n, _)| n.starts_with(EDGE) || n.starts_with(DISPLACEMENT)).partition(|(n, _)| n.starts_with(DISPLACEMENT));
        vec![
            ParamGroup { name: "boundary".into(), lr_mult: 1.0, decay: true, params: edge },
            ParamGroup { name: "displacement".into(), lr_mult: self.config.irn.train.head_lr_mult, decay: true, params: displacement },
        ]
    }

    /// The backbone from `irn.init` (torchvision's ImageNet ResNet or MobileNetV2), or a random
    /// one with its frozen BatchNorm statistics calibrated on the first batch.
    fn initialise(&self, calibration: &dyn Fn() -> anyhow::Result<Batch>) -> anyhow::Result<()> {
        let init = &self.config.irn.backbone.init;
        if init.as_os_str().is_empty() {
            warn!("irn.init is not set: IRNet's backbone starts from a random initialisation (its boundaries need ImageNet features)");
            let batch = calibration().context("calibrating BatchNorm")?;
            self.net.calibrate_batch_norm(&batch.images.to_device(self.device));
            return Ok(());
        }
        ensure!(init.exists(), "config key `irn.init`: {} does not exist", init.display());
        let report = weights::import(&self.vs, init, &weights::TORCHVISION_IRN_BACKBONE).context("config key `irn.init`")?;
        info!("IRNet backbone: loaded {} tensors from {} (new: the two branches)", report.loaded, init.display());
        Ok(())
    }

    /// IRNet's loss of the batch against its seed labels downscaled ×0.25 (nearest) to the
    /// network's stride-4 grid.
    fn loss(&self, batch: &Batch, compute: Kind, _generator: &mut ChaCha8Rng) -> Tensor {
        let images = batch.images.to_device(self.device).to_kind(compute);
        let masks = batch.masks.as_ref().expect("the irn loader reads pseudo-label masks").to_device(self.device);
        let out = self.net.forward(&images, Mode::Train);
        let grid = (out.edge_logits.size()[2], out.edge_logits.size()[3]);
        let seeds = resize_labels(&masks, grid.0, grid.1);
        let mut pairs = self.pairs.borrow_mut();
        if pairs.as_ref().is_none_or(|(size, _)| *size != grid) {
            *pairs = Some((grid, PairIndex::new(grid.0, grid.1, self.config.irn.radius, self.device)));
        }
        let (_, index) = pairs.as_ref().expect("set above");
        irn_loss(index, &out.edge_logits.to_kind(Kind::Float), &out.displacement.to_kind(Kind::Float), &seeds).total()
    }
}
