//! `wsss-dist train seg --config F [--resume]`: trains the segmenter of `[seg.model]` on
//! `data.train` ⋈ the pseudo-labels of `seg.labels` (by id), as a task of the shared trainer
//! (`engine::trainer`), into `<run dir>/seg` (docs/segmenter.md).

use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context};
use rand::RngCore;
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use tracing::{info, warn};

use super::Summary;
use crate::config::{Config, Regularizer};
use crate::data::loader::Batch;
use crate::data::preprocess::Normalise;
use crate::dist::sync_bn::StatsSync;
use crate::dist::World;
use crate::engine::trainer::{self, Stage, Task, TaskContext, TrainData};
use crate::loss;
use crate::loss::segmentation::{pixel_cross_entropy, resize_labels};
use crate::model::deeplab::{SegKind, Segmenter, BACKBONE, HEAD};
use crate::model::weights;
use crate::optim::ParamGroup;

pub fn run(config: &Config, world: &World, resume: bool) -> anyhow::Result<Summary> {
    let data = TrainData::with_labels(config, &config.paths().seg_labels(), "seg.labels")?;
    let class_weights = class_weights(config, &data)?;
    let stage = Stage { keys: "seg.", train: &config.seg.train, loader: &config.seg.loader, dir: config.paths().seg() };
    trainer::train(config, world, resume, &stage, data, |context| Ok(SegTask::new(config, context).with_class_weights(class_weights.as_deref())))
        .map(Summary::ok)
}

/// The cross-entropy's class weights of `seg.loss.class_balance` from the labels' pixel counts
/// (every rank counts every mask: the same weights everywhere); None when it is 0.
fn class_weights(config: &Config, data: &TrainData) -> anyhow::Result<Option<Vec<f64>>> {
    let power = config.seg.loss.class_balance;
    let Some((labels, _)) = data.pseudo_labels.as_ref().filter(|_| power > 0.0) else {
        return Ok(None);
    };
    let counts = &data.label_pixels;
    let weights = loss::segmentation::class_weights(
        counts,
        power,
        match config.seg.loss.class_balance_max_ratio {
            0.0 => f64::INFINITY,
            ratio => ratio,
        },
    );
    let shown: Vec<String> = labels.manifest().classes.iter().zip(&weights).filter(|(_, w)| **w > 0.0).map(|(c, w)| format!("{c} {w:.2}")).collect();
    info!("class weights (seg.loss.class_balance {power}): {}", shown.join(", "));
    Ok(Some(weights))
}

/// The segmenter and its loss (public for the step benchmark, `benchmarks/seg_step.rs`).
pub struct SegTask<'a> {
    config: &'a Config,
    vs: VarStore,
    net: Segmenter,
    class_weights: Option<Tensor>,
    /// The loader's normalisation, undone for the dense-CRF loss's colours.
    normalise: Normalise,
    device: Device,
}

impl<'a> SegTask<'a> {
    pub fn new(config: &'a Config, context: &TaskContext) -> SegTask<'a> {
        let vs = VarStore::new(context.device);
        // Classes 0..=C: background is a class of its own here.
        let mut net = super::segmenter(config, &vs.root(), context.num_classes + 1);
        if context.comm.size() > 1 {
            net.synchronise_batch_norm(Arc::new(StatsSync::new(context.comm.clone(), context.device)));
        }
        let normalise = Normalise::new(config.seg.loader.mean, config.seg.loader.std, context.device);
        SegTask { config, vs, net, class_weights: None, normalise, device: context.device }
    }

    /// Weights the cross-entropy's pixels by class (`seg.loss.class_balance`).
    pub fn with_class_weights(mut self, weights: Option<&[f64]>) -> Self {
        self.class_weights = weights.map(|w| Tensor::from_slice(w).to_kind(Kind::Float).to_device(self.device));
        self
    }
}

impl Task for SegTask<'_> {
    fn vars(&self) -> &VarStore {
        &self.vs
    }

    /// The backbone at the base rate; the head at `seg.train.head_lr_mult` (DeepLab's 10×), its
    /// biases at the same rate (v3+) or twice it (v2's 20×); no weight decay on biases.
    fn param_groups(&self) -> Vec<ParamGroup> {
        let head_mult = self.config.seg.train.head_lr_mult;
        let bias_mult = if self.net.kind() == SegKind::DeeplabV2 { 2.0 * head_mult } else { head_mult };
        let mut trainable: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let part = |name: &str| match (name.starts_with(&format!("{HEAD}.")), name.ends_with(".bias")) {
            (false, bias) => ("backbone", 1.0, !bias),
            (true, false) => ("head", head_mult, true),
            (true, true) => ("head.bias", bias_mult, false),
        };
        let mut groups: Vec<ParamGroup> = Vec::new();
        for (name, tensor) in trainable {
            let (group, lr_mult, decay) = part(&name);
            match groups.iter_mut().find(|g| g.name == group) {
                Some(g) => g.params.push((name, tensor)),
                None => groups.push(ParamGroup { name: group.into(), lr_mult, decay, params: vec![(name, tensor)] }),
            }
        }
        groups
    }

    /// The backbone from the run's CAM classifier (`seg.model.init_from_cam`), from
    /// `seg.model.init` (torchvision's ImageNet weights), or from a random start with its frozen
    /// BatchNorm statistics calibrated on the first batch.
    fn initialise(&self, calibration: &dyn Fn() -> anyhow::Result<Batch>) -> anyhow::Result<()> {
        if self.config.seg.model.init_from_cam {
            let key = "config key `seg.model.init_from_cam`";
            let path =
                super::model_to_load(Path::new(""), &self.config.paths().root(), "train the CAM classifier first (`wsss-dist train cam`)").context(key)?;
            let report = weights::import_under(&self.vs, &format!("{BACKBONE}."), &path, &weights::CAM_CLASSIFIER_SEG_BACKBONE).context(key)?;
            info!("segmenter backbone: loaded {} tensors from the CAM classifier {}", report.loaded, path.display());
            return Ok(());
        }
        let init = &self.config.seg.model.backbone.init;
        if init.as_os_str().is_empty() {
            warn!("seg.model.init is not set: the segmenter's backbone starts from a random initialisation (`make weights`, docs/weights.md)");
            let batch = calibration().context("calibrating BatchNorm")?;
            self.net.calibrate_batch_norm(&batch.images.to_device(self.device));
            return Ok(());
        }
        ensure!(
            init.exists(),
            "config key `seg.model.init`: {} does not exist (`make weights` fetches torchvision's ImageNet MobileNetV2; docs/weights.md)",
            init.display()
        );
        let report =
            weights::import_under(&self.vs, &format!("{BACKBONE}."), init, &weights::TORCHVISION_SEG_BACKBONE).context("config key `seg.model.init`")?;
        info!("segmenter backbone: loaded {} tensors from {} (ignored: {} key(s))", report.loaded, init.display(), report.ignored.len());
        Ok(())
    }

    /// The sum over the network's outputs (v2: four) of the pixel cross-entropy against the
    /// labels resized to each output, plus the regularized loss of the final output (upsampled
    /// to the input) when on: the dense-CRF loss, or DFR's (its kernel with the consistency
    /// head's features, and the head's consistency loss). Dropout draws from libtorch's
    /// generator, seeded here from the step's generator so that a resumed run draws the same
    /// masks.
    fn loss(&self, batch: &Batch, compute: Kind, generator: &mut ChaCha8Rng) -> Tensor {
        let images = batch.images.to_device(self.device);
        let masks = batch.masks.as_ref().expect("the seg loader reads pseudo-label masks").to_device(self.device);
        tch::manual_seed(generator.next_u64() as i64);
        let outputs = self.net.forward_train(&images, compute);
        let cross_entropy = outputs
            .logits
            .iter()
            .map(|logits| {
                let size = logits.size();
                let labels = if size[2..] == masks.size()[1..] { masks.shallow_clone() } else { resize_labels(&masks, size[2], size[3]) };
                pixel_cross_entropy(logits, &labels, self.class_weights.as_ref())
            })
            .reduce(|a, b| a + b)
            .expect("at least one output");
        let loss = &self.config.seg.loss;
        if loss.regularizer == Regularizer::None {
            return cross_entropy;
        }
        let size = [images.size()[2], images.size()[3]];
        let last = outputs.logits.last().expect("at least one output");
        let probabilities = last.upsample_bilinear2d(size, false, None, None).softmax(1, Kind::Float);
        let (rgb, roi) = (self.normalise.undo(&images), padding_free(&images));
        match loss.regularizer {
            Regularizer::Dfr => {
                let embedding = outputs.embedding.as_ref().expect("stages::segmenter gives a DFR segmenter its consistency head");
                let deep = loss.dfr.kernel_features(embedding, size);
                let consistency = loss.dfr.consistency(embedding, &masks) * loss.dfr.consistency_weight;
                cross_entropy + loss.crf.loss_with_features(&probabilities, &rgb, &roi, Some(&deep)) + consistency
            }
            _ => cross_entropy + loss.crf.loss(&probabilities, &rgb, &roi),
        }
    }

    /// v3+'s trainable BatchNorms, synchronised on more than one rank (docs/segmenter.md).
    fn synchronises(&self) -> bool {
        self.net.kind() == SegKind::DeeplabV3plus
    }
}

impl SegTask<'_> {
    pub fn net(&self) -> &Segmenter {
        &self.net
    }
}

/// 1 where a pixel is part of the image, 0 on the crop's padding. The loader pads with 0 after
/// normalisation, and no image pixel normalises to 0 in all three channels unless the mean of
/// each channel is a whole multiple of 1/255 (ImageNet's are not): such a pixel would be
/// taken for padding and left out of the dense-CRF loss.
fn padding_free(images: &Tensor) -> Tensor {
    images.ne(0.0).any_dim(1, false).to_kind(Kind::Float)
}
