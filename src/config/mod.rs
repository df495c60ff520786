//! Typed TOML configuration with `--set section.key=value` overrides.
//!
//! A config file is read into a TOML table, the overrides are applied to that table, every key
//! is checked against the keys the typed [`Config`] knows (an unknown key is an error naming the
//! nearest valid key), and only then is the table deserialised. The resolved config (defaults
//! filled in) is what `config show` prints and what every run directory stores.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::augment::{AugmentParams, ColorJitter, ResizeFilter};
use crate::data::loader::LoaderSpec;
use crate::data::sampler::Uneven;
use crate::data::synthetic::SyntheticParams;
use crate::dist::Backend;
use crate::loss::dense_crf::DenseCrfLoss;
use crate::loss::dfr::DfrSettings;
use crate::model::backbone::{Arch, BackboneSpec};
use crate::model::deeplab::{SegKind, V3_DROPOUT};
use crate::model::mobilenet;
use crate::model::resnet::{Depth, Strides};
use crate::model::vit::VitSize;
use crate::model::Base;
use crate::refine::crf::CrfParams;
use crate::refine::diffusion::{AdCamParams, CamRefine};
use crate::refine::pseudo::{PseudoMethod, PseudoParams};

mod file;
mod keys;
mod paths;

pub use file::merge_into;
pub use paths::RunPaths;

/// A configuration error: names the file or the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown config key `{key}`{hint}")]
    UnknownKey { key: String, hint: String },
    #[error("config key `{key}` is now `{new}`")]
    Renamed { key: String, new: String },
    #[error("--set {arg}: expected `section.key=value`")]
    BadOverride { arg: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The whole configuration. Every section has defaults, so an empty file is valid.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub run: RunConfig,
    pub data: DataConfig,
    pub loader: LoaderConfig,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub cam: CamConfig,
    pub eval: EvalConfig,
    pub dist: DistConfig,
    pub method: MethodConfig,
    pub pseudo_label: PseudoLabelConfig,
    pub seg: SegConfig,
    pub irn: IrnConfig,
}

/// `[run]`: where a run writes and the seed every random choice derives from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run directory is `<dir>/<name>`.
    pub name: String,
    pub dir: PathBuf,
    pub seed: u64,
    /// "auto" (the local rank's GPU when CUDA is available, else the CPU), "cpu", "cuda" (the
    /// local rank's GPU) or "cuda:N".
    pub device: crate::dist::DeviceSpec,
    /// libtorch intra-op threads; 0 keeps libtorch's default (one per core).
    pub threads: usize,
    /// The largest image (width × height) that `cam`, `pseudo-label` and `seg` process: their
    /// outputs and the dense CRF are at full resolution (the CRF needs ~400 bytes a pixel per
    /// thread). Larger images are skipped with a warning; resize them before import.
    pub max_image_pixels: u64,
}

/// 4096 × 4096: a 16 MP photo, 85 times a PASCAL VOC image.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 4096 * 4096;

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: "default".into(),
            dir: "runs".into(),
            seed: 0,
            device: crate::dist::DeviceSpec::Auto,
            threads: 0,
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
        }
    }
}

/// A backbone and where its weights start: the keys `[model]`, `[seg.model]` and `[irn]` share
/// (flattened into each: their unknown keys are caught by the key check of `Config::load`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackboneConfig {
    /// `resnet` (of `depth`) or `mobilenet_v2`.
    pub arch: Arch,
    pub depth: Depth,
    /// torchvision ImageNet weights as safetensors (tools/pth_to_safetensors.py); "" starts from
    /// a random initialisation.
    pub init: PathBuf,
}

impl BackboneConfig {
    fn of(arch: Arch, depth: Depth) -> BackboneConfig {
        BackboneConfig { arch, depth, init: PathBuf::new() }
    }

    /// This backbone at `strides`.
    pub fn spec(&self, strides: Strides) -> BackboneSpec {
        BackboneSpec { arch: self.arch, depth: self.depth, strides, vit: VitSize::Tiny }
    }
}

impl Default for BackboneConfig {
    fn default() -> Self {
        BackboneConfig::of(Arch::Resnet, Depth::Resnet50)
    }
}

/// `[model]`: the CAM network (docs/methods.md §1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelConfig {
    #[serde(flatten)]
    pub backbone: BackboneConfig,
    /// Strides of conv1, layer2, layer3, layer4 (MobileNetV2: of the stem and its 32-, 64- and
    /// 160-channel stages, a stride of 1 there dilating instead); (2, 2, 2, 1) keeps output
    /// stride 16.
    pub strides: Strides,
    /// With `arch = "vit"`: "tiny", "small" or "base" (DeiT's widths; patch 16, 12 blocks).
    pub vit: VitSize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { backbone: BackboneConfig::default(), strides: [2, 2, 2, 1], vit: VitSize::Tiny }
    }
}

impl ModelConfig {
    pub fn backbone(&self) -> BackboneSpec {
        BackboneSpec { vit: self.vit, ..self.backbone.spec(self.strides) }
    }
}

/// `[seg]`: the segmenter trained on the pseudo-labels (docs/segmenter.md). Its model, training
/// and loader settings are sections of their own (`[seg.model]`, `[seg.train]`, `[seg.loader]`),
/// with the keys of `[model]`-like, `[train]` and `[loader]`, so the CAM classifier and the
/// segmenter are set apart in one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SegConfig {
    /// Whether `wsss-dist run` goes on to train and evaluate the segmenter.
    pub enabled: bool,
    /// The pseudo-label dataset of `data.train` to train on; "" is `<run dir>/pseudo_labels/train`.
    pub labels: PathBuf,
    pub model: SegModelConfig,
    pub train: TrainConfig,
    pub loader: LoaderConfig,
    pub loss: SegLossConfig,
    pub infer: SegInferConfig,
}

/// `[irn]`: IRNet's inter-pixel relation network (docs/methods.md §8), trained by `train irn` on
/// the `irn_seeds` pseudo-labels of the train split into `<run dir>/irn`. Its training and
/// loader settings are sections of their own, as the segmenter's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct IrnConfig {
    /// The `irn_seeds` pseudo-labels of `data.train`; "" is `<run dir>/pseudo_labels/train`.
    pub labels: PathBuf,
    /// The frozen backbone at strides (2, 2, 2, 1): a ResNet of `irn.depth` (IRNet's ResNet-50),
    /// or torchvision's MobileNetV2 (whose ImageNet weights `make weights` fetches). Without
    /// `irn.init` it starts from a random backbone with calibrated BatchNorm statistics (tests
    /// only: the boundaries need ImageNet features).
    #[serde(flatten)]
    pub backbone: BackboneConfig,
    /// Radius of the training pairs (IRNet's 10: 152 directions).
    pub radius: i32,
    /// The network `pseudo-label --method irn_rw` uses; "" is the newest checkpoint in
    /// `<run dir>/irn`.
    pub checkpoint: PathBuf,
    pub train: TrainConfig,
    pub loader: LoaderConfig,
}

impl Default for IrnConfig {
    fn default() -> Self {
        IrnConfig {
            labels: PathBuf::new(),
            backbone: BackboneConfig::default(),
            radius: 10,
            checkpoint: PathBuf::new(),
            // IRNet's recipe: batch 32, crop 512, 3 epochs, lr 0.1 (the displacement branch at
            // 10×), weight decay 1e-4, poly 0.9. Its `SGD(params, lr, weight_decay)` puts the
            // weight decay where momentum goes: it trains with momentum 1e-4, i.e. none, and so
            // does this default (with 0.9 the displacement branch at lr 1.0 takes steps ten
            // times the reference's).
            train: TrainConfig { epochs: 3, lr: 0.1, momentum: 0.0, weight_decay: 1e-4, head_lr_mult: 10.0, ..TrainConfig::default() },
            // IRNet's `rescale=(0.5, 1.5)` of the photo, flip, crop 512; no colour jitter.
            loader: LoaderConfig::without_colour_jitter(32, 512),
        }
    }
}

impl IrnConfig {
    /// The backbone of `irn.arch` / `irn.depth` at IRNet's strides.
    pub fn backbone(&self) -> BackboneSpec {
        self.backbone.spec([2, 2, 2, 1])
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate("irn.train")?;
        self.loader.validate("irn.loader")?;
        if !(2..=16).contains(&self.radius) {
            return invalid("irn.radius", "must be in 2..=16 (IRNet trains at 10)");
        }
        if self.loader.crop < 4 * (2 * self.radius as u32 + 1) {
            return invalid("irn.loader.crop", "must leave a stride-4 grid larger than the pairs' reach: at least 4 × (2 · irn.radius + 1) pixels");
        }
        Ok(())
    }
}

/// DeepLab's training crops, by `seg.model.kind` when `seg.loader.crop` is not set: 513 for v3+
/// (VainF's), 321 for v2 (kazuto1011's).
const V3PLUS_CROP: u32 = 513;
const V2_CROP: u32 = 321;
/// DeepLab v2's output stride (layer3 dilated 2, layer4 dilated 4).
const V2_OUTPUT_STRIDE: i64 = 8;

impl Default for SegConfig {
    fn default() -> Self {
        SegConfig::of_kind(SegKind::DeeplabV3plus)
    }
}

impl SegConfig {
    /// The defaults of a segmenter of `kind`: its reference's crop and output stride
    /// (docs/methods.md §5), DeepLab's recipe otherwise.
    pub fn of_kind(kind: SegKind) -> SegConfig {
        let (crop, output_stride) = match kind {
            SegKind::DeeplabV3plus => (V3PLUS_CROP, 16),
            SegKind::DeeplabV2 => (V2_CROP, V2_OUTPUT_STRIDE),
        };
        SegConfig {
            enabled: false,
            labels: PathBuf::new(),
            model: SegModelConfig { kind, output_stride, ..SegModelConfig::default() },
            infer: SegInferConfig::default(),
            loss: SegLossConfig::default(),
            // DeepLab's recipe: SGD momentum 0.9, weight decay 5e-4, head x10, poly 0.9.
            // The base rate is the backbone's: 0.001 puts the head at 0.01, as the v3+ reference
            // (VainF: head 0.01, backbone 0.1x); DeepLab v2's reference trains at 2.5e-4.
            train: TrainConfig { lr: 0.001, weight_decay: 5e-4, ..TrainConfig::default() },
            // Random scale, flip and crop only: DeepLab does no colour jitter.
            loader: LoaderConfig::without_colour_jitter(10, crop),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.train.validate("seg.train")?;
        self.loader.validate("seg.loader")?;
        if self.model.kind == SegKind::DeeplabV3plus && self.loader.batch_size < 2 {
            // Its BatchNorms train on batch statistics (and the image-pooling one would see a
            // single value per channel).
            return invalid("seg.loader.batch_size", "DeepLab v3+ trains its BatchNorms on batch statistics: at least 2");
        }
        if self.model.kind == SegKind::DeeplabV2 && self.model.backbone.arch != Arch::Resnet {
            return invalid("seg.model.arch", "DeepLab v2 is built on a ResNet (`resnet`, with seg.model.depth)");
        }
        if ![8, 16].contains(&self.model.output_stride) {
            return invalid("seg.model.output_stride", "must be 8 or 16");
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            return invalid("seg.model.dropout", "must be in [0, 1)");
        }
        self.infer.inference.validate("seg.infer")?;
        self.loss.validate()?;
        check_crf(&self.infer.crf, "seg.infer.crf")
    }
}

/// `[seg.loss]`: the pixel cross-entropy (ignoring 255: on scribbles, the partial cross-entropy)
/// and a regularized loss: the dense-CRF loss of Tang et al. (docs/segmenter.md; the reference's
/// defaults) or the dynamic feature regularized loss (docs/methods.md §10).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SegLossConfig {
    pub regularizer: Regularizer,
    /// The dense-CRF loss's settings; also DFR's shallow kernel, weight and scale.
    pub crf: DenseCrfLoss,
    /// DFR's deep kernel and feature consistency head.
    pub dfr: DfrSettings,
    /// p of the cross-entropy's class weights `w_c ∝ f_c^−p`, f_c the share of class c among
    /// the labelled pixels of `seg.labels`, scaled to average 1 over them: 0 weighs every pixel
    /// alike, 0.5 by the inverse square root of its class's frequency, 1 by the inverse.
    pub class_balance: f64,
    /// The largest weight `class_balance` gives a class, as a multiple of the most frequent
    /// class's (0: no cap); with a few thousand labelled pixels a class would otherwise weigh
    /// 10–60× (docs/segmenter.md).
    pub class_balance_max_ratio: f64,
}

/// The regularized loss added to the cross-entropy (`seg.loss.regularizer`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Regularizer {
    #[default]
    None,
    /// `[seg.loss.crf]`'s bilateral kernel.
    DenseCrf,
    /// The same with a deep-feature kernel and the feature consistency head (`[seg.loss.dfr]`).
    Dfr,
}

impl Default for SegLossConfig {
    fn default() -> Self {
        SegLossConfig {
            regularizer: Regularizer::None,
            crf: DenseCrfLoss::default(),
            dfr: DfrSettings::default(),
            class_balance: 0.0,
            class_balance_max_ratio: 0.0,
        }
    }
}

impl SegLossConfig {
    /// The feature consistency head's output channels, when the loss trains one.
    pub fn consistency_dims(&self) -> Option<i64> {
        (self.regularizer == Regularizer::Dfr).then_some(self.dfr.feature_dims)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let crf = &self.crf;
        if !(crf.weight >= 0.0 && crf.weight.is_finite()) {
            return invalid("seg.loss.crf.weight", "must be a non-negative number");
        }
        for (key, sigma) in [("appearance_srgb", crf.appearance_srgb), ("appearance_sxy", crf.appearance_sxy)] {
            if !(sigma > 0.0 && sigma.is_finite()) {
                return invalid(&format!("seg.loss.crf.{key}"), "must be a positive number");
            }
        }
        if !(crf.scale > 0.0 && crf.scale <= 1.0) {
            return invalid("seg.loss.crf.scale", "must lie in (0, 1]");
        }
        let dfr = &self.dfr;
        if !(1..=3).contains(&dfr.feature_dims) {
            return invalid("seg.loss.dfr.feature_dims", "must be 1, 2 or 3 (the lattice takes 8 dimensions, 5 of them the shallow kernel's)");
        }
        if !(dfr.feature_sigma > 0.0 && dfr.feature_sigma.is_finite()) {
            return invalid("seg.loss.dfr.feature_sigma", "must be a positive number");
        }
        if !(dfr.consistency_weight >= 0.0 && dfr.consistency_weight.is_finite()) {
            return invalid("seg.loss.dfr.consistency_weight", "must be a non-negative number");
        }
        if dfr.consistency_points < 2 {
            return invalid("seg.loss.dfr.consistency_points", "must be at least 2 (the loss pairs them)");
        }
        if !(0.0..=2.0).contains(&self.class_balance) {
            return invalid("seg.loss.class_balance", "must lie in [0, 2]");
        }
        let ratio = self.class_balance_max_ratio;
        if !(ratio == 0.0 || (ratio >= 1.0 && ratio.is_finite())) {
            return invalid("seg.loss.class_balance_max_ratio", "must be 0 (no cap) or a number of at least 1");
        }
        Ok(())
    }
}

/// `[seg.infer]`: `wsss-dist seg`, the segmenter's predictions over a split (a map phase).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SegInferConfig {
    /// Its softmax outputs are averaged over the scales and flips.
    #[serde(flatten)]
    pub inference: InferenceConfig,
    /// Predict only each image's own classes (its image-level labels) and background, as the
    /// CAMs are: for labelling the training photos anew from a trained segmenter (a second
    /// round, docs/segmenter.md), never for a score to compare with a segmenter's.
    pub image_labels: bool,
    /// Dense-CRF post-processing of the averaged softmax, with `[seg.infer.crf]`.
    pub dense_crf: bool,
    /// DeepLab's CRF: 10 iterations, Gaussian sxy 1 weight 3, bilateral sxy 67 srgb 3 weight 4.
    pub crf: CrfParams,
    /// CRF threads per rank, each refining one image while the network waits; 0 = one per core.
    pub crf_threads: usize,
}

/// A network run over a split (the keys `[cam]` and `[seg.infer]` share).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InferenceConfig {
    pub split: Split,
    /// Input scales whose outputs are averaged, each with its horizontal flip when `flip`.
    pub scales: Vec<f64>,
    pub flip: bool,
    /// Model weights; "" takes the newest intact checkpoint of the run's (or the segmenter's).
    pub checkpoint: PathBuf,
    /// The network sees an image at most this long (long side, before `scales`): larger ones
    /// are downscaled for it and its output resized to the image.
    pub max_side: u32,
}

impl InferenceConfig {
    fn of(split: Split, scales: Vec<f64>) -> InferenceConfig {
        InferenceConfig { split, scales, flip: true, checkpoint: PathBuf::new(), max_side: DEFAULT_MAX_SIDE }
    }

    /// `section`: where the keys sit ("cam" or "seg.infer"), for the error's key.
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.scales.is_empty() || self.scales.iter().any(|s| !(*s > 0.0 && *s <= 8.0)) {
            return invalid(&format!("{section}.scales"), "must list at least one scale in (0, 8]");
        }
        if self.max_side < 32 {
            return invalid(&format!("{section}.max_side"), "must be at least 32 pixels");
        }
        Ok(())
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig::of(Split::Train, vec![1.0])
    }
}

/// The default bound of the network's input (`cam.max_side`, `seg.infer.max_side`): twice the
/// long side of a PASCAL VOC photo, above COCO's 640.
pub const DEFAULT_MAX_SIDE: u32 = 1024;

impl Default for SegInferConfig {
    fn default() -> Self {
        SegInferConfig {
            inference: InferenceConfig::of(Split::Val, vec![1.0]),
            image_labels: false,
            dense_crf: false,
            crf: CrfParams { iterations: 10, smoothness_sxy: 1.0, smoothness_weight: 3.0, appearance_sxy: 67.0, appearance_srgb: 3.0, appearance_weight: 4.0 },
            crf_threads: 0,
        }
    }
}

/// `[seg.model]`: which segmenter, on which backbone.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SegModelConfig {
    /// `deeplab_v2` or `deeplab_v3plus`.
    pub kind: SegKind,
    /// `mobilenet_v2` for v3+ only.
    #[serde(flatten)]
    pub backbone: BackboneConfig,
    /// 8 or 16, by dilation.
    pub output_stride: i64,
    /// Start the backbone from the run's trained CAM classifier (its newest intact checkpoint)
    /// instead of `init`: its features have already learnt to tell the dataset's classes apart
    /// (docs/segmenter.md, "Initialisation"). The classifier must be a CAM network (`method.base
    /// = "cam"`) of this backbone.
    pub init_from_cam: bool,
    /// v3+'s dropout rate after the ASPP projection, in [0, 1).
    pub dropout: f64,
}

impl Default for SegModelConfig {
    fn default() -> Self {
        SegModelConfig {
            kind: SegKind::DeeplabV3plus,
            backbone: BackboneConfig::of(Arch::MobilenetV2, Depth::Resnet101),
            output_stride: 16,
            init_from_cam: false,
            dropout: V3_DROPOUT,
        }
    }
}

impl SegModelConfig {
    pub fn backbone(&self) -> BackboneSpec {
        self.backbone.spec(if self.output_stride == 8 { [2, 2, 1, 1] } else { [2, 2, 2, 1] })
    }
}

/// What training does when the loss of a step is not finite.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Stop with an error that names the step.
    Error,
    /// Leave the parameters as they are, count the step as skipped, go on.
    Skip,
}

/// `[train]`: classifier training (docs/methods.md §1, IRNet's settings by default).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: u64,
    /// Step budget of the poly schedule; 0: `epochs` × the steps of one epoch.
    pub steps: u64,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    /// Learning-rate multiplier of the new classifier layer.
    pub head_lr_mult: f64,
    pub poly_power: f64,
    /// Mixed precision: convolutions in bf16, head and loss in f32 (meant for CUDA).
    pub bf16: bool,
    /// Write a checkpoint every this many steps (and always at the end).
    pub checkpoint_every: u64,
    /// Checkpoints kept in the run directory (older ones are deleted).
    pub keep_checkpoints: usize,
    /// Append a line to metrics.jsonl every this many steps.
    pub log_every: u64,
    pub on_nonfinite: OnNonFinite,
    /// Gradient accumulation: each optimiser step sums the gradients of this many
    /// micro-batches of `loader.batch_size`, and ranks communicate on the last one only.
    pub accumulate: u64,
    /// End this invocation after this many steps, with a checkpoint (0: run to the end);
    /// `--resume` continues. For time-limited job slots.
    pub stop_after: u64,
    /// Let `--resume` continue on data other than the checkpoint was trained on (a dataset
    /// written again since), with a warning; refused by default.
    pub allow_data_change: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            steps: 0,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            head_lr_mult: 10.0,
            poly_power: 0.9,
            bf16: false,
            checkpoint_every: 500,
            keep_checkpoints: 3,
            log_every: 1,
            on_nonfinite: OnNonFinite::Error,
            accumulate: 1,
            stop_after: 0,
            allow_data_change: false,
        }
    }
}

/// `[method]`: the WSSS method the classifier trains with. The base is the CAM network
/// (docs/methods.md §1) or AMR (§2); HFPL's ISL and FSL (§3) are add-ons that combine with
/// either.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MethodConfig {
    pub base: Base,
    pub isl: IslConfig,
    pub fsl: FslConfig,
    pub amr: AmrConfig,
}

impl MethodConfig {
    /// The loss terms this method trains with.
    pub fn objective_terms(&self) -> crate::loss::objective::ObjectiveTerms {
        let fsl = &self.fsl;
        crate::loss::objective::ObjectiveTerms {
            isl: self.isl.enabled.then_some((self.isl.samples, self.isl.weight)),
            fsl: fsl.enabled.then_some(crate::loss::objective::FslTerm { mu: fsl.mu, sigma: fsl.sigma, weight: fsl.weight, window: fsl.window }),
            lambda_cps: self.amr.lambda_cps,
            spotlight_trains: !self.amr.freeze_spotlight,
        }
    }
}

/// `[method.isl]`: importance sampling loss; the classification loss of every trained branch
/// becomes `(1 − weight) · L_cls(GAP) + weight · L_IS`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IslConfig {
    pub enabled: bool,
    /// K: pixels drawn per image and class.
    pub samples: i64,
    /// w.
    pub weight: f64,
}

impl Default for IslConfig {
    fn default() -> Self {
        IslConfig { enabled: false, samples: 10, weight: 0.2 }
    }
}

/// `[method.fsl]`: feature similarity loss, `weight · L_FS` added for every trained branch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FslConfig {
    pub enabled: bool,
    /// μ of the colour term.
    pub mu: f64,
    /// σ of the spatial kernel, in feature-map pixels.
    pub sigma: f64,
    pub weight: f64,
    /// Pairs farther apart than this many feature-map pixels are skipped (the efficient form;
    /// 3σ keeps every pair whose kernel is above 1% of its peak); 0 computes the exact sum over
    /// all pairs (memory grows with (h·w)²).
    pub window: f64,
}

impl Default for FslConfig {
    fn default() -> Self {
        FslConfig { enabled: false, mu: 2.5, sigma: 5.0, weight: 1.0, window: 15.0 }
    }
}

/// `[method.amr]`: AMR's settings (used when `method.base = "amr"`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AmrConfig {
    /// λ of the cross pseudo supervision.
    pub lambda_cps: f64,
    /// α of the recalibration `α · M_spot + (1−α) · M_comp` at inference (1: spotlight only,
    /// 0: compensation only).
    pub alpha: f64,
    /// A trained CAM network to start the spotlight branch from: its model safetensors, or its
    /// run directory (the latest checkpoint). "" starts it as `model.init` says.
    pub spotlight_init: PathBuf,
    /// Keep the spotlight branch as initialised (the reference recipe).
    pub freeze_spotlight: bool,
    /// Learning-rate multiplier of the compensation backbone (its AMMs included).
    pub compensation_lr_mult: f64,
}

impl Default for AmrConfig {
    fn default() -> Self {
        AmrConfig { lambda_cps: 0.05, alpha: 0.5, spotlight_init: PathBuf::new(), freeze_spotlight: true, compensation_lr_mult: 10.0 }
    }
}

impl MethodConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let (isl, fsl, amr) = (&self.isl, &self.fsl, &self.amr);
        if isl.samples < 1 {
            return invalid("method.isl.samples", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&isl.weight) {
            return invalid("method.isl.weight", "must lie in [0, 1]");
        }
        if !(fsl.sigma > 0.0 && fsl.sigma.is_finite()) {
            return invalid("method.fsl.sigma", "must be a positive number");
        }
        if !(fsl.weight >= 0.0 && fsl.weight.is_finite()) || !fsl.mu.is_finite() {
            return invalid("method.fsl", "weight must be >= 0 and mu finite");
        }
        if !(fsl.window >= 0.0 && fsl.window.is_finite()) {
            return invalid("method.fsl.window", "must be >= 0 (0: the exact pair sum)");
        }
        if !(0.0..=1.0).contains(&amr.alpha) {
            return invalid("method.amr.alpha", "must lie in [0, 1]");
        }
        if !(amr.lambda_cps >= 0.0 && amr.lambda_cps.is_finite()) || !(amr.compensation_lr_mult > 0.0) {
            return invalid("method.amr", "lambda_cps must be >= 0 and compensation_lr_mult > 0");
        }
        if self.base == Base::Amr && amr.freeze_spotlight && amr.spotlight_init.as_os_str().is_empty() {
            return invalid(
                "method.amr.freeze_spotlight",
                "a frozen spotlight branch needs method.amr.spotlight_init (a trained CAM run or checkpoint); set freeze_spotlight = false to train it",
            );
        }
        Ok(())
    }
}

/// `[dist]`: how the ranks of a data-parallel job talk (see `launch/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DistConfig {
    /// "auto" (NCCL for CUDA, MPI for CPU), "mpi" or "nccl".
    pub backend: Backend,
    /// Gradient bucket size in MiB: gradients are all-reduced one bucket at a time.
    pub bucket_mb: f64,
    /// Start each bucket's all-reduce during backward, as soon as its gradients are in
    /// (docs/architecture.md, "Overlapped gradient all-reduce"); the same sums either way.
    pub overlap: bool,
}

impl Default for DistConfig {
    fn default() -> Self {
        DistConfig { backend: Backend::Auto, bucket_mb: 25.0, overlap: true }
    }
}

impl DistConfig {
    pub fn bucket_bytes(&self) -> usize {
        (self.bucket_mb * 1024.0 * 1024.0) as usize
    }
}

/// Which dataset of `[data]` a stage reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    /// "train" or "val": the split's folder name in a run directory.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// `[cam]`: CAM inference (docs/methods.md §1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CamConfig {
    /// The CAMs of an image larger than `max_side` are resized to its stride-4 grid.
    #[serde(flatten)]
    pub inference: InferenceConfig,
    /// Output CAM dataset; "" is `<run dir>/cams/<split>`.
    pub out: PathBuf,
    /// "none", "couple" (the direct coupling of CAM and attention) or "ad_cam" (AD-CAM's
    /// diffusion along the refined attention, `[cam.ad_cam]`; docs/methods.md §9).
    pub refine: CamRefine,
    pub ad_cam: AdCamParams,
}

impl Default for CamConfig {
    fn default() -> Self {
        CamConfig {
            inference: InferenceConfig::of(Split::Train, vec![1.0, 0.5, 1.5, 2.0]),
            out: PathBuf::new(),
            refine: CamRefine::None,
            ad_cam: AdCamParams::default(),
        }
    }
}

/// `[pseudo_label]`: refinement of the CAMs of `cam.split` into pseudo-labels
/// (docs/methods.md §1, §4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PseudoLabelConfig {
    /// `method` is "threshold" (with `tau`), "crf" (with `bg_power`, α of the background
    /// probability (1 − max_c A_c)^α), "irn_seeds" (with `fg_threshold`, `bg_threshold` and
    /// `gt_prob`) or "irn_rw" (IRNet's random walk, `[pseudo_label.walk]`, over the boundaries of
    /// `train irn`'s network, `irn.checkpoint`). `[pseudo_label.crf]`: the dense CRF (IRNet's
    /// settings by default; SEAM/HFPL use appearance_sxy 80, appearance_srgb 13).
    #[serde(flatten)]
    pub params: PseudoParams,
    /// Refinement threads per rank; 0 = one per core.
    pub threads: usize,
    /// Output pseudo-label dataset; "" is `<run dir>/pseudo_labels/<split>`.
    pub out: PathBuf,
}

impl PseudoLabelConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let params = &self.params;
        for (key, value) in [("tau", params.tau), ("fg_threshold", params.fg_threshold), ("bg_threshold", params.bg_threshold)] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(&format!("pseudo_label.{key}"), "must lie in [0, 1]");
            }
        }
        if !(params.gt_prob > 0.0 && params.gt_prob < 1.0) {
            return invalid("pseudo_label.gt_prob", "must lie in (0, 1)");
        }
        if !(params.bg_power > 0.0 && params.bg_power.is_finite()) {
            return invalid("pseudo_label.bg_power", "must be a positive number");
        }
        params.walk.check().map_err(|(key, message)| ConfigError::Invalid { key: format!("pseudo_label.walk.{key}"), message: message.into() })?;
        check_crf(&params.crf, "pseudo_label.crf")
    }
}

/// The dense CRF's settings at `section`.
fn check_crf(crf: &CrfParams, section: &str) -> Result<(), ConfigError> {
    if crf.iterations == 0 {
        return invalid(&format!("{section}.iterations"), "must be at least 1");
    }
    crf.check().map_err(|message| {
        let key = message.split_whitespace().next().unwrap_or_default();
        ConfigError::Invalid { key: format!("{section}.{key}"), message }
    })
}

/// `[eval]`: CAM evaluation against the ground-truth masks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// The background threshold τ of the method (0.15 IRNet, 0.20 AMR).
    pub tau: f32,
    /// The τ sweep.
    pub thresholds: Vec<f32>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { tau: 0.15, thresholds: (1..=12).map(|i| i as f32 * 0.05).collect() }
    }
}

/// Where a dataset comes from when `wsss-dist run` finds it missing.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Generated by `run` itself (the embedded default).
    Synthetic,
    /// Imported beforehand with `wsss-dist data import voc|coco`.
    Imported,
}

/// `[data]`: the datasets a run reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub source: DataSource,
    pub train: PathBuf,
    pub val: PathBuf,
    pub synthetic: SyntheticConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            source: DataSource::Synthetic,
            train: "data/synthetic/train".into(),
            val: "data/synthetic/val".into(),
            synthetic: SyntheticConfig::default(),
        }
    }
}

/// `[data.synthetic]`: the dataset sizes and generator settings `run` uses for the embedded
/// default dataset. The generator's fields (`size`, `classes`, `min_object_scale`, ...) sit
/// directly in the section (docs/synthetic.md, "Parameters").
// No `deny_unknown_fields`: serde does not support it with `flatten`; `check_keys` already
// refuses unknown keys before deserialising.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SyntheticConfig {
    pub train_images: u64,
    pub val_images: u64,
    pub shard_rows: usize,
    #[serde(flatten)]
    pub generator: SyntheticParams,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { train_images: 2000, val_images: 500, shard_rows: 500, generator: SyntheticParams::default() }
    }
}

impl SyntheticConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.generator.validate().or_else(|message| {
            // The generator's message starts with its field's name.
            let field = message.split(' ').next().unwrap_or_default();
            invalid(&format!("data.synthetic.{field}"), &message)
        })
    }
}

/// `[loader]`: batching, threads and the training augmentations (docs/methods.md §7).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Decode/augment worker threads.
    pub threads: usize,
    /// Batches prepared ahead of the consumer (bounds memory).
    pub prefetch: usize,
    pub shuffle: bool,
    /// How ranks get equal shares when the dataset does not divide evenly.
    pub uneven: Uneven,
    /// Random resize of the long side to an integer in [min, max]; [0, 0] disables it.
    pub resize_long: [u32; 2],
    pub resize_filter: ResizeFilter,
    pub hflip: bool,
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    pub hue: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Random crop (with padding) to crop×crop; 0 keeps the resized size (batch_size must be 1).
    pub crop: u32,
    /// Also deliver the ground-truth masks (for segmenter training and tests).
    pub with_mask: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 16,
            threads: 2,
            prefetch: 4,
            shuffle: true,
            uneven: Uneven::Pad,
            resize_long: [320, 640],
            resize_filter: ResizeFilter::Bilinear,
            hflip: true,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.3,
            hue: 0.1,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            crop: 512,
            with_mask: false,
        }
    }
}

impl LoaderConfig {
    /// Batches of `batch_size` crops of `crop` from photos resized to 250–750 px (long side),
    /// flipped, without colour jitter: IRNet's and DeepLab's training augmentation.
    fn without_colour_jitter(batch_size: usize, crop: u32) -> LoaderConfig {
        LoaderConfig { batch_size, crop, resize_long: [250, 750], brightness: 0.0, contrast: 0.0, saturation: 0.0, hue: 0.0, ..LoaderConfig::default() }
    }

    /// The augmentation parameters this section describes.
    pub fn augment_params(&self) -> AugmentParams {
        AugmentParams {
            resize_long: (self.resize_long[0], self.resize_long[1]),
            filter: self.resize_filter,
            hflip: self.hflip,
            jitter: ColorJitter { brightness: self.brightness, contrast: self.contrast, saturation: self.saturation, hue: self.hue },
            mean: self.mean,
            std: self.std,
            crop: self.crop,
        }
    }

    /// The loader settings for a run seeded with `seed`.
    pub fn spec(&self, seed: u64) -> LoaderSpec {
        LoaderSpec {
            batch_size: self.batch_size,
            threads: self.threads,
            prefetch: self.prefetch,
            augment: self.augment_params(),
            with_mask: self.with_mask,
            seed,
        }
    }

    /// `section`: where the keys sit ("loader" or "seg.loader"), for the error's key.
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| Err(ConfigError::Invalid { key: format!("{section}.{key}"), message: message.into() });
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if self.threads == 0 {
            return invalid("threads", "must be at least 1");
        }
        if self.prefetch == 0 {
            return invalid("prefetch", "must be at least 1");
        }
        let [lo, hi] = self.resize_long;
        if lo > hi || (lo == 0) != (hi == 0) {
            return invalid("resize_long", "must be [min, max] with 0 < min <= max, or [0, 0] to disable");
        }
        if self.crop == 0 && self.batch_size > 1 {
            return invalid("crop", &format!("0 (no crop) gives images of different sizes: it needs {section}.batch_size = 1"));
        }
        for (key, value) in [("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(key, "must be in [0, 1]");
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return invalid("hue", "must be in [0, 0.5]");
        }
        if self.std.iter().any(|s| *s <= 0.0) {
            return invalid("std", "every entry must be positive");
        }
        Ok(())
    }
}

fn invalid(key: &str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key: key.into(), message: message.into() })
}

impl TrainConfig {
    /// The optimiser's settings for a schedule of `total_steps`.
    pub fn sgd_settings(&self, total_steps: u64) -> crate::optim::SgdSettings {
        crate::optim::SgdSettings { lr: self.lr, momentum: self.momentum, weight_decay: self.weight_decay, poly_power: self.poly_power, total_steps }
    }

    /// `section`: where the keys sit ("train" or "seg.train"), for the error's key.
    fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| invalid(&format!("{section}{}{key}", if key.is_empty() { "" } else { "." }), message);
        if self.epochs == 0 && self.steps == 0 {
            return invalid("epochs", "must be at least 1 (or set the step budget `steps`)");
        }
        if !(self.lr > 0.0) || !self.lr.is_finite() {
            return invalid("lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return invalid("momentum", "must be in [0, 1)");
        }
        if self.weight_decay < 0.0 || self.head_lr_mult <= 0.0 || self.poly_power < 0.0 {
            return invalid("", "weight_decay and poly_power must be >= 0 and head_lr_mult > 0");
        }
        if self.accumulate == 0 {
            return invalid("accumulate", "must be at least 1");
        }
        if self.checkpoint_every == 0 || self.log_every == 0 || self.keep_checkpoints == 0 {
            return invalid("", "checkpoint_every, log_every and keep_checkpoints must be at least 1");
        }
        Ok(())
    }
}

impl EvalConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.thresholds.is_empty() || self.thresholds.iter().chain([&self.tau]).any(|t| !(0.0..=1.0).contains(t)) {
            return invalid("eval.thresholds", "τ values (eval.tau and eval.thresholds) must lie in [0, 1], at least one threshold");
        }
        Ok(())
    }
}

impl Config {
    /// The defaults a config table is written over: the segmenter's follow the kind it names
    /// (`seg.model.kind`), the rest are `Config::default()`'s.
    fn for_table(table: &toml::Table) -> Config {
        let kind = table.get("seg").and_then(|seg| seg.get("model")).and_then(|model| model.get("kind")).and_then(|kind| kind.clone().try_into().ok());
        Config { seg: SegConfig::of_kind(kind.unwrap_or(SegKind::DeeplabV3plus)), ..Config::default() }
    }

    /// Reads `path` (or starts from the defaults when `None`) and applies `overrides`
    /// (`section.key=value`, the value in TOML syntax; a bare word is taken as a string).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let table = file::read(path, overrides)?;
        keys::check(&table, &defaults_table(&Config::default()))?;
        // Keys left out take the defaults of their own place in the config, nested sections
        // included: serde's `default` would fill a partly written `[seg.train]` from
        // `TrainConfig::default()` and lose the segmenter's own defaults.
        let defaults = defaults_table(&Config::for_table(&table));
        let mut merged = defaults.clone();
        merge_into(&mut merged, table.clone());
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = key_at_fault(&e.path().to_string(), &table, &defaults);
            ConfigError::Invalid { message: format!("{} (in {})", e.inner().message(), file::origin_of(&key, path, overrides)), key }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Value checks that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.data.synthetic.validate()?;
        self.loader.validate("loader")?;
        self.train.validate("train")?;
        self.seg.validate()?;
        self.irn.validate()?;
        self.cam.inference.validate("cam")?;
        self.cam.ad_cam.check().map_err(|(key, message)| ConfigError::Invalid { key: format!("cam.ad_cam.{key}"), message: message.into() })?;
        self.eval.validate()?;
        self.method.validate()?;
        self.pseudo_label.validate()?;
        if self.model.strides.iter().any(|s| !(1..=2).contains(s)) {
            return Err(ConfigError::Invalid { key: "model.strides".into(), message: "every stride must be 1 or 2".into() });
        }
        if self.model.backbone.arch == Arch::MobilenetV2 && !mobilenet::VALID_STRIDES.contains(&self.model.strides) {
            return Err(ConfigError::Invalid {
                key: "model.strides".into(),
                message: format!("MobileNetV2 takes one of {:?} (output stride 32, 16, 8)", mobilenet::VALID_STRIDES),
            });
        }
        self.check_init_from_cam()?;
        self.check_vit()?;
        if !(self.dist.bucket_mb > 0.0 && self.dist.bucket_mb.is_finite()) {
            return Err(ConfigError::Invalid { key: "dist.bucket_mb".into(), message: "must be a positive number of MiB".into() });
        }
        // The run directory is <run.dir>/<run.name>: a name with a separator or `..` would put
        // checkpoints and metrics elsewhere.
        if self.run.max_image_pixels == 0 {
            return invalid("run.max_image_pixels", "must be a positive number of pixels");
        }
        crate::data::schema::check_id(&self.run.name)
            .map_err(|e| ConfigError::Invalid { key: "run.name".into(), message: format!("must name one directory inside run.dir: {e}") })?;
        Ok(())
    }

    /// A ViT is a CAM classifier of its own (no AMMs for AMR's compensation branch, no dilated
    /// stages for DeepLab, no stride-4 features for IRNet).
    fn check_vit(&self) -> Result<(), ConfigError> {
        for (key, arch) in [("seg.model.arch", self.seg.model.backbone.arch), ("irn.arch", self.irn.backbone.arch)] {
            if arch == Arch::Vit {
                return invalid(key, "a ViT is the CAM classifier's backbone only (model.arch); take \"resnet\" or \"mobilenet_v2\" here");
            }
        }
        if self.model.backbone.arch == Arch::Vit && self.method.base == Base::Amr {
            return invalid("method.base", "AMR's compensation branch puts attention modules in CNN blocks: not with model.arch = \"vit\"");
        }
        Ok(())
    }

    /// `seg.model.init_from_cam` needs a CAM classifier whose parameters the segmenter's
    /// backbone can take: a plain CAM network (AMR's are two) of the same backbone.
    fn check_init_from_cam(&self) -> Result<(), ConfigError> {
        if !self.seg.model.init_from_cam {
            return Ok(());
        }
        if self.method.base != Base::Cam {
            return invalid("seg.model.init_from_cam", "takes a plain CAM classifier (method.base = \"cam\"), not AMR's two branches");
        }
        let (seg, cam) = (&self.seg.model.backbone, &self.model.backbone);
        let same_depth = seg.arch == Arch::MobilenetV2 || seg.depth == cam.depth;
        if seg.arch != cam.arch || !same_depth {
            return invalid(
                "seg.model.init_from_cam",
                "the CAM classifier's backbone (model.arch, model.depth) must be the segmenter's (seg.model.arch, seg.model.depth)",
            );
        }
        Ok(())
    }

    /// Where this run's stages read and write.
    pub fn paths(&self) -> RunPaths<'_> {
        RunPaths::new(self)
    }

    /// The image dataset of `split`.
    pub fn dataset(&self, split: Split) -> &Path {
        match split {
            Split::Train => &self.data.train,
            Split::Val => &self.data.val,
        }
    }

    /// The name of the evaluation `run` writes of the CAMs of the segmenter's split (`cam`
    /// being that of `cam.split`): `<run dir>/eval/cam_val.json`.
    pub fn cam_eval_name(split: Split) -> String {
        format!("cam_{}", split.name())
    }

    /// The name of `eval pseudo`'s report in `<run dir>/eval`: the random walk's labels are
    /// scored apart from the irn_seeds labels it starts from.
    pub fn pseudo_eval_name(&self) -> &'static str {
        if self.pseudo_label.params.method == PseudoMethod::IrnRw {
            "pseudo_rw"
        } else {
            "pseudo"
        }
    }

    /// This config with `cam.split` set to `split`, for running the CAM stage on another split:
    /// its CAMs go to `<run dir>/cams/<split>` (`cam.out` names those of `cam.split` only).
    pub fn with_cam_split(&self, split: Split) -> Config {
        let mut config = self.clone();
        if split != self.cam.inference.split {
            config.cam.inference.split = split;
            config.cam.out = PathBuf::new();
        }
        config
    }

    /// "train" or "val": the name of `cam.split`.
    pub fn split_name(&self) -> &'static str {
        self.cam.inference.split.name()
    }

    /// The resolved config as TOML text (what `config show` prints and runs store).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a Config always serialises to TOML")
    }

    /// A short hash of the resolved config, stored with checkpoints to detect mismatches.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(self.to_toml().as_bytes())[..8])
    }
}

/// The key whose value failed to deserialise, where serde's path names only its section: the
/// sections that share a type (`BackboneConfig`, `InferenceConfig`) are flattened, and serde
/// loses the key inside them; each value the config gives there is then tried alone.
fn key_at_fault(path: &str, table: &toml::Table, defaults: &toml::Table) -> String {
    let section = path.split('.').try_fold(table, |node, key| node.get(key).and_then(toml::Value::as_table));
    let Some(section) = section else {
        return path.to_string();
    };
    let fails_alone = |key: &str, value: &toml::Value| {
        let mut merged = defaults.clone();
        let leaf = path.split('.').rev().fold(toml::Table::from_iter([(key.to_string(), value.clone())]), |inner, name| {
            toml::Table::from_iter([(name.to_string(), toml::Value::Table(inner))])
        });
        merge_into(&mut merged, leaf);
        toml::Value::Table(merged).try_into::<Config>().is_err()
    };
    let culprit = section.iter().find(|(key, value)| !value.is_table() && fails_alone(key, value));
    culprit.map_or_else(|| path.to_string(), |(key, _)| format!("{path}.{key}"))
}

/// `defaults` as a TOML table.
fn defaults_table(defaults: &Config) -> toml::Table {
    match toml::Value::try_from(defaults).expect("defaults serialise") {
        toml::Value::Table(table) => table,
        _ => unreachable!("a struct serialises to a table"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refine::pseudo::PseudoMethod;

    fn load_str(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::load(Some(&path), &overrides)
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(load_str("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn file_values_and_overrides_apply_in_order() {
        let c = load_str("[loader]\nbatch_size = 8\ncrop = 256\n", &["loader.batch_size=4", "run.name=demo", "loader.resize_long=[100, 200]"]).unwrap();
        assert_eq!(c.loader.batch_size, 4);
        assert_eq!(c.loader.crop, 256);
        assert_eq!(c.run.name, "demo");
        assert_eq!(c.loader.resize_long, [100, 200]);
    }

    /// The segmenter's backbone can start from the CAM classifier only where the parameters
    /// fit: a plain CAM network of the same backbone.
    #[test]
    fn init_from_cam_needs_a_cam_network_of_the_same_backbone() {
        let mobilenet = ["model.arch=\"mobilenet_v2\"", "seg.model.arch=\"mobilenet_v2\"", "seg.model.init_from_cam=true"];
        assert!(load_str("", &mobilenet).unwrap().seg.model.init_from_cam);
        for (extra, why) in [("method.base=\"amr\"", "method.base"), ("model.arch=\"resnet\"", "model.arch")] {
            let err = load_str("", &[&mobilenet[..], &[extra, "method.amr.freeze_spotlight=false"]].concat()).unwrap_err().to_string();
            assert!(err.contains("seg.model.init_from_cam") && err.contains(why), "{extra}: {err}");
        }
        let resnets = ["seg.model.arch=\"resnet\"", "seg.model.depth=\"resnet101\"", "seg.model.init_from_cam=true"];
        let err = load_str("", &resnets).unwrap_err().to_string();
        assert!(err.contains("model.depth"), "ResNet-50 classifier, ResNet-101 segmenter: {err}");
        assert!(load_str("", &[&resnets[..], &["model.depth=\"resnet101\""]].concat()).is_ok());
    }

    #[test]
    fn unknown_key_names_the_nearest() {
        let err = load_str("[loader]\nbatchsize = 8\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`loader.batchsize`") && err.contains("did you mean `loader.batch_size`"), "{err}");
        let err = load_str("", &["loadr.crop=3"]).unwrap_err().to_string();
        assert!(err.contains("`loadr`") && err.contains("`loader`"), "{err}");
        let err = load_str("[data.synthetic]\nclases = 3\n", &[]).unwrap_err().to_string();
        assert!(err.contains("did you mean `data.synthetic.classes`"), "{err}");
    }

    /// Names from other tools point at the key that means the same, not the nearest spelling.
    #[test]
    fn unknown_key_hints_by_meaning() {
        for (given, expected) in [
            ("[train]\nlearning_rate = 0.1\n", "train.lr"),
            ("[seg.train]\nmax_iters = 100\n", "seg.train.steps"),
            ("[loader]\nnum_workers = 4\n", "loader.threads"),
            ("[seg.loader]\ncrop_size = 321\n", "seg.loader.crop"),
            ("[train]\nbatch_size = 8\n", "loader.batch_size"),
        ] {
            let err = load_str(given, &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("did you mean `{expected}`?")), "{given}: {err}");
        }
    }

    #[test]
    fn wrong_type_and_bad_values_name_the_key() {
        let err = load_str("[loader]\nbatch_size = \"many\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`loader.batch_size`") && err.contains("c.toml"), "{err}");
        let err = load_str("", &["loader.batch_size=0"]).unwrap_err().to_string();
        assert!(err.contains("loader.batch_size"), "{err}");
        // A type error from --set is blamed on the --set, not on the file.
        let err = load_str("[loader]\ncrop = 64\n", &["loader.batch_size=\"many\""]).unwrap_err().to_string();
        assert!(err.contains("`loader.batch_size`") && err.contains("(in --set loader.batch_size=\"many\")") && !err.contains("c.toml"), "{err}");
        let err = load_str("", &["loader.resize_long=[700, 600]"]).unwrap_err().to_string();
        assert!(err.contains("loader.resize_long"), "{err}");
        let err = load_str("", &["loader"]).unwrap_err().to_string();
        assert!(err.contains("section.key=value"), "{err}");
        let err = load_str("", &["seg.loss.class_balance_max_ratio=0.5"]).unwrap_err().to_string();
        assert!(err.contains("seg.loss.class_balance_max_ratio"), "{err}");
        // run.device is checked as the config loads, not when a stage first picks a device.
        let err = load_str("[run]\ndevice = \"gpu\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("`run.device`") && err.contains("\"gpu\" is not"), "{err}");
        assert_eq!(load_str("", &["run.device=\"cuda:1\""]).unwrap().run.device, crate::dist::DeviceSpec::CudaIndex(1));
        // Keys of the shared section types are named as well as any other.
        for (given, key) in [
            ("[model]\narch = \"vgg\"\n", "`model.arch`"),
            ("[seg.model]\nkind = \"deeplab_v2\"\ndepth = 50\n", "`seg.model.depth`"),
            ("[irn]\ninit = 3\n", "`irn.init`"),
            ("[cam]\nflip = \"yes\"\n", "`cam.flip`"),
            ("[seg.infer]\nscales = 1.0\n", "`seg.infer.scales`"),
        ] {
            let err = load_str(given, &[]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("c.toml"), "{given}: {err}");
        }
    }

    /// `seg.loader.crop` follows the segmenter unless given: 513 for v3+, 321 for v2.
    #[test]
    fn the_segmenter_crop_and_stride_follow_the_kind_unless_given() {
        let v3 = load_str("", &[]).unwrap().seg;
        assert_eq!((v3.loader.crop, v3.model.output_stride), (513, 16));
        let v2 = "[seg.model]\nkind = \"deeplab_v2\"\narch = \"resnet\"\n";
        let c = load_str(v2, &[]).unwrap().seg;
        assert_eq!((c.loader.crop, c.model.output_stride), (321, 8));
        let c = load_str(v2, &["seg.loader.crop=400", "seg.model.output_stride=16"]).unwrap().seg;
        assert_eq!((c.loader.crop, c.model.output_stride), (400, 16));
    }

    /// A ViT is the CAM classifier's backbone only; AD-CAM's settings are checked by key.
    #[test]
    fn a_vit_and_ad_cam_settings_and_their_errors() {
        let c = load_str("[model]\narch = \"vit\"\nvit = \"small\"\n[cam]\nrefine = \"ad_cam\"\n", &[]).unwrap();
        assert_eq!((c.model.backbone().arch, c.model.backbone().vit), (Arch::Vit, VitSize::Small));
        for (set, key) in [
            (vec!["seg.model.arch=vit"], "seg.model.arch"),
            (vec!["irn.arch=vit"], "irn.arch"),
            (vec!["model.arch=vit", "method.base=amr", "method.amr.freeze_spotlight=false"], "method.base"),
            (vec!["model.vit=huge"], "model.vit"),
            (vec!["cam.ad_cam.layers=0"], "cam.ad_cam.layers"),
            (vec!["cam.ad_cam.temperature=0"], "cam.ad_cam.temperature"),
            (vec!["cam.ad_cam.refinement=sinkhorn"], "cam.ad_cam.refinement"),
            (vec!["cam.refine=adcam"], "cam.refine"),
        ] {
            let err = load_str("", &set).unwrap_err().to_string();
            assert!(err.contains(key), "{set:?}: {err}");
        }
    }

    /// Keys of earlier versions fail with the name of the key that took their place.
    #[test]
    fn renamed_keys_name_their_new_key() {
        for (given, new) in [
            ("[seg.infer]\ncrf = true\n", "seg.infer.dense_crf"),
            ("[seg.infer.crf_params]\niterations = 5\n", "seg.infer.crf"),
            ("[seg.loss]\ncrf_sigma_rgb = 10.0\n", "seg.loss.crf.appearance_srgb"),
            ("[seg.loss]\ncrf_weight = 1e-9\n", "seg.loss.crf.weight"),
            ("[seg.loss]\ndense_crf = true\n", "seg.loss.regularizer = \"dense_crf\""),
        ] {
            let err = load_str(given, &[]).unwrap_err().to_string();
            assert!(err.contains(&format!("is now `{new}`")), "{given}: {err}");
        }
        let c = load_str("[seg.infer]\ndense_crf = true\n[seg.infer.crf]\niterations = 5\n[seg.loss.crf]\nappearance_sxy = 50.0\n", &[]).unwrap();
        assert!(c.seg.infer.dense_crf && c.seg.infer.crf.iterations == 5 && c.seg.loss.crf.appearance_sxy == 50.0);
        assert_eq!(c.seg.loss.crf.appearance_srgb, DenseCrfLoss::default().appearance_srgb);
    }

    /// `seg.loss.regularizer` and DFR's settings: each bad value names its key.
    #[test]
    fn regularizer_settings_are_checked_by_key() {
        let c = load_str("[seg.loss]\nregularizer = \"dfr\"\n[seg.loss.dfr]\nfeature_dims = 2\n", &[]).unwrap();
        assert_eq!((c.seg.loss.regularizer, c.seg.loss.consistency_dims()), (Regularizer::Dfr, Some(2)));
        assert_eq!(load_str("[seg.loss]\nregularizer = \"dense_crf\"\n", &[]).unwrap().seg.loss.consistency_dims(), None);
        for (bad, key) in [
            ("seg.loss.dfr.feature_dims=4", "seg.loss.dfr.feature_dims"),
            ("seg.loss.dfr.feature_sigma=0", "seg.loss.dfr.feature_sigma"),
            ("seg.loss.dfr.consistency_weight=-1", "seg.loss.dfr.consistency_weight"),
            ("seg.loss.dfr.consistency_points=1", "seg.loss.dfr.consistency_points"),
            ("seg.loss.regularizer=crf", "seg.loss.regularizer"),
        ] {
            let err = load_str("", &[bad]).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
    }

    /// A config file written over base files states only what differs; bases apply in order,
    /// paths relative to the file that names them, and a circle is an error.
    #[test]
    fn a_config_is_written_over_its_bases() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        std::fs::create_dir(dir.path().join("base")).unwrap();
        write("base/model.toml", "[model]\narch = \"mobilenet_v2\"\n[loader]\ncrop = 128\nbatch_size = 4\n");
        write("base/train.toml", "_base_ = \"model.toml\"\n[train]\nlr = 0.5\n[loader]\ncrop = 96\n");
        write("variant.toml", "_base_ = [\"base/train.toml\"]\n[train]\nepochs = 2\n");
        let c = Config::load(Some(&dir.path().join("variant.toml")), &["loader.batch_size=2".into()]).unwrap();
        assert_eq!(c.model.backbone.arch, Arch::MobilenetV2);
        assert_eq!((c.loader.crop, c.loader.batch_size, c.train.lr, c.train.epochs), (96, 2, 0.5, 2));
        assert!(!c.to_toml().contains("_base_"));
        write("a.toml", "_base_ = \"b.toml\"\n");
        write("b.toml", "_base_ = \"a.toml\"\n");
        let err = Config::load(Some(&dir.path().join("a.toml")), &[]).unwrap_err().to_string();
        assert!(err.contains("_base_") && err.contains("include each other") && err.contains("b.toml"), "{err}");
        write("missing.toml", "_base_ = \"nowhere.toml\"\n");
        let err = Config::load(Some(&dir.path().join("missing.toml")), &[]).unwrap_err().to_string();
        assert!(err.contains("nowhere.toml"), "{err}");
        write("bad.toml", "_base_ = 3\n");
        let err = Config::load(Some(&dir.path().join("bad.toml")), &[]).unwrap_err().to_string();
        assert!(err.contains("_base_") && err.contains("bad.toml"), "{err}");
    }

    /// A partly written nested section keeps the other defaults of *its* place in the config.
    #[test]
    fn nested_sections_keep_their_own_defaults() {
        let c = load_str("[seg.train]\nepochs = 2\n[train]\nlr = 0.5\n", &["seg.loader.crop=64"]).unwrap();
        assert_eq!(c.seg.train.epochs, 2);
        assert_eq!(c.seg.train.lr, SegConfig::default().train.lr);
        assert_eq!(c.seg.train.weight_decay, 5e-4);
        assert_eq!(c.seg.loader.crop, 64);
        assert_eq!(c.seg.loader.batch_size, SegConfig::default().loader.batch_size);
        assert_eq!((c.train.lr, c.train.weight_decay), (0.5, TrainConfig::default().weight_decay));
    }

    #[test]
    fn synthetic_generator_keys_reach_the_generator() {
        let c = load_str("[data.synthetic]\nmax_object_scale = 0.7\nmin_mark_fraction = 0.04\nsize = 96\n", &[]).unwrap();
        let g = &c.data.synthetic.generator;
        assert_eq!((g.max_object_scale, g.min_mark_fraction, g.size), (0.7, 0.04, 96));
        assert_eq!(g.context_prob, SyntheticParams::default().context_prob);
        let err = load_str("", &["data.synthetic.max_object_scale=0.9"]).unwrap_err().to_string();
        assert!(err.contains("`data.synthetic.max_object_scale`") && err.contains("0.9"), "{err}");
        let err = load_str("", &["data.synthetic.min_mark_fraction=0.5"]).unwrap_err().to_string();
        assert!(err.contains("`data.synthetic.min_mark_fraction`"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = load_str("", &["loader.hue=0.05", "data.source=imported", "seg.loss.class_balance_max_ratio=3.0"]).unwrap();
        let again: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(c, again);
        assert_eq!(again.data.source, DataSource::Imported);
        assert_eq!(c.hash().len(), 16);
    }

    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut bases = Vec::new();
        // (`configs/_base_/` holds parts that other files are written over, not configs.)
        for path in std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().path()).filter(|path| path.is_file()) {
            let config = Config::load(Some(&path), &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            bases.push((path.file_name().unwrap().to_string_lossy().into_owned(), config.method));
        }
        bases.sort_by(|a, b| a.0.cmp(&b.0));
        let voc_amr_hfpl = &bases.iter().find(|(name, _)| name == "voc_amr_hfpl.toml").unwrap().1;
        assert!(voc_amr_hfpl.base == Base::Amr && voc_amr_hfpl.isl.enabled && voc_amr_hfpl.fsl.enabled && voc_amr_hfpl.amr.freeze_spotlight);
    }

    #[test]
    fn method_combinations_and_their_errors() {
        for set in [
            vec![],
            vec!["method.isl.enabled=true"],
            vec!["method.fsl.enabled=true", "method.fsl.window=0"],
            vec!["method.base=amr", "method.amr.freeze_spotlight=false", "method.isl.enabled=true", "method.fsl.enabled=true"],
        ] {
            load_str("", &set).unwrap();
        }
        let err = load_str("", &["method.base=amr"]).unwrap_err().to_string();
        assert!(err.contains("method.amr.freeze_spotlight") && err.contains("spotlight_init"), "{err}");
        for (set, key) in [
            ("method.isl.weight=1.5", "method.isl.weight"),
            ("method.isl.samples=0", "method.isl.samples"),
            ("method.fsl.sigma=0", "method.fsl.sigma"),
            ("method.fsl.window=-1", "method.fsl.window"),
            ("method.amr.alpha=2", "method.amr.alpha"),
            ("method.base=deeplab", "method.base"),
        ] {
            let err = load_str("", &[set]).unwrap_err().to_string();
            assert!(err.contains(key), "{set}: {err}");
        }
    }
    #[test]
    fn pseudo_label_settings_and_their_errors() {
        let config = load_str("[pseudo_label]\nmethod = \"crf\"\nthreads = 3\n[pseudo_label.crf]\nappearance_sxy = 80.0\n", &[]).unwrap();
        assert_eq!((config.pseudo_label.params.method, config.pseudo_label.threads), (PseudoMethod::Crf, 3));
        assert_eq!((config.pseudo_label.params.crf.appearance_sxy, config.pseudo_label.params.crf.appearance_srgb), (80.0, 5.0));
        assert_eq!(config.pseudo_label.params.fg_threshold, 0.30);
        // The resolved config lists the flattened keys, and reads back as itself.
        let text = config.to_toml();
        assert!(text.contains("[pseudo_label]") && text.contains("method = \"crf\"") && text.contains("[pseudo_label.crf]"), "{text}");
        assert_eq!(load_str(&text, &[]).unwrap(), config);
        let err = load_str("", &["pseudo_label.methd=crf"]).unwrap_err().to_string();
        assert!(err.contains("pseudo_label.method"), "{err}");
        for (set, key) in [
            ("pseudo_label.tau=1.5", "pseudo_label.tau"),
            ("pseudo_label.gt_prob=1", "pseudo_label.gt_prob"),
            ("pseudo_label.crf.appearance_srgb=0", "pseudo_label.crf.appearance_srgb"),
            ("pseudo_label.crf.iterations=0", "pseudo_label.crf.iterations"),
            ("pseudo_label.method=random_walk", "pseudo_label.method"),
        ] {
            let err = load_str("", &[set]).unwrap_err().to_string();
            assert!(err.contains(key), "{set}: {err}");
        }
    }
}
