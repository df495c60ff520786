//! The segmenters (docs/segmenter.md): DeepLab v2 as the IRNet/AMR-style papers train it, and
//! DeepLab v3+. Parameter names follow torchvision's segmentation models: the backbone under
//! `backbone.` with torchvision's names (ImageNet weights load through `model.init`), the head
//! under `classifier.`.
//!
//! - **v2** (the reference: kazuto1011/deeplab-pytorch): a dilated ResNet at output stride 8,
//!   ASPP = the *sum* of four 3×3 convolutions with bias at dilations 6/12/18/24 (weights
//!   N(0, 0.01), biases 0; `classifier.c0`–`c3`). In training the network also runs on the
//!   input at scales 0.5 and 0.75, and the element-wise max of the three (the smaller ones
//!   upsampled) is a fourth output; each output is trained on labels resized to it.
//! - **v3+** (the reference: VainF/DeepLabV3Plus-Pytorch): ASPP (1×1, three 3×3 at 6/12/18 for
//!   output stride 16, twice that for 8, image pooling; 256 channels, BN + ReLU; projection
//!   1×1 + BN + ReLU + dropout 0.1) on the last features, upsampled to the stride-4 features
//!   projected to 48 channels, concatenated, a 3×3 conv + BN + ReLU and a 1×1 to the classes;
//!   logits bilinearly upsampled to the input. Its BatchNorms train; the backbone's are frozen.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::backbone::{Backbone, BackboneSpec};
use super::layers::{conv, BatchNorm, Conv, ConvSpec, Mode};
use crate::dist::sync_bn::StatsSync;

/// Which segmenter (`seg.model.kind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SegKind {
    DeeplabV2,
    #[default]
    DeeplabV3plus,
}

impl SegKind {
    /// Its name in the config (`seg.model.kind`) and in the `method` column of its predictions.
    pub fn name(self) -> &'static str {
        match self {
            SegKind::DeeplabV2 => "deeplab_v2",
            SegKind::DeeplabV3plus => "deeplab_v3plus",
        }
    }
}

/// Where the backbone's keys sit in a segmenter.
pub const BACKBONE: &str = "backbone";
/// Where the head's keys sit.
pub const HEAD: &str = "classifier";

/// v2's ASPP dilations.
const V2_RATES: [i64; 4] = [6, 12, 18, 24];
/// v2's extra training scales (kazuto1011's `MSC`).
const V2_SCALES: [f64; 2] = [0.5, 0.75];
/// v3+'s ASPP dilations at output stride 16 (doubled at 8).
const V3_RATES: [i64; 3] = [6, 12, 18];
const V3_CHANNELS: i64 = 256;
const V3_LOW_LEVEL_CHANNELS: i64 = 48;
/// v3+'s dropout after the ASPP projection (`seg.model.dropout`'s default).
pub const V3_DROPOUT: f64 = 0.1;

/// A 2-D convolution with bias (tch's `nn::Conv2D`), "same" padding at its dilation.
fn conv_bias(vs: &nn::Path, c_in: i64, c_out: i64, k: i64, dilation: i64, ws_init: nn::Init) -> nn::Conv2D {
    let config = nn::ConvConfig { padding: dilation * (k / 2), dilation, ws_init, bs_init: nn::Init::Const(0.0), ..Default::default() };
    nn::conv2d(vs, c_in, c_out, k, config)
}

/// Bias-free conv, trainable BatchNorm, ReLU: at `vs/conv` and `vs/bn` positions of a `Sequential`.
#[derive(Debug)]
struct ConvBnRelu {
    conv: Conv,
    bn: BatchNorm,
}

impl ConvBnRelu {
    fn new(vs: &nn::Path, conv_name: &str, bn_name: &str, spec: ConvSpec) -> ConvBnRelu {
        ConvBnRelu { conv: conv(vs, conv_name, spec, true), bn: BatchNorm::new(&(vs / bn_name), spec.c_out, true) }
    }

    fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        self.bn.run(&self.conv.forward(xs), mode).relu_()
    }
}

/// Bilinear resize to `size` (PyTorch's `interpolate(..., align_corners=False)`).
fn resize(xs: &Tensor, size: &[i64]) -> Tensor {
    xs.upsample_bilinear2d([size[0], size[1]], false, None, None)
}

#[derive(Debug)]
struct V2Head {
    branches: Vec<nn::Conv2D>,
}

#[derive(Debug)]
struct V3PlusHead {
    project: ConvBnRelu,
    /// 1×1, then the three dilated 3×3 (`aspp.convs.0`–`3`).
    aspp: Vec<ConvBnRelu>,
    /// After global average pooling (`aspp.convs.4.1`, `.2`).
    pooling: ConvBnRelu,
    aspp_project: ConvBnRelu,
    dropout: f64,
    fuse: ConvBnRelu,
    classifier: nn::Conv2D,
}

impl V3PlusHead {
    fn batch_norms(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        let blocks = [&mut self.project, &mut self.pooling, &mut self.aspp_project, &mut self.fuse];
        blocks.into_iter().chain(self.aspp.iter_mut()).map(|b| &mut b.bn)
    }
}

// One head per process: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Head {
    V2(V2Head),
    V3Plus(V3PlusHead),
}

/// A segmentation network.
#[derive(Debug)]
pub struct Segmenter {
    backbone: Backbone,
    head: Head,
    consistency: Option<ConsistencyHead>,
}

/// The logits a training forward pass returns, each trained on the labels resized to it, and
/// the feature consistency head's embedding when the network has one.
pub struct SegOutputs {
    pub logits: Vec<Tensor>,
    /// [N, d, h, w], unit vectors: v3+ at the decoder's stride 4, v2 at its output stride (of
    /// the full-scale input).
    pub embedding: Option<Tensor>,
}

/// DFR's feature consistency head (docs/methods.md §10): 1×1 conv to 64 channels, ReLU, 1×1
/// conv to d, on the features the classifier reads (v3+: the decoder's fused features; v2: the
/// backbone's); its output is normalised to unit length per pixel.
#[derive(Debug)]
struct ConsistencyHead {
    hidden: nn::Conv2D,
    out: nn::Conv2D,
}

/// The consistency head's hidden channels.
const CONSISTENCY_HIDDEN: i64 = 64;

impl ConsistencyHead {
    fn embed(&self, features: &Tensor) -> Tensor {
        crate::loss::dfr::unit_channels(&self.out.forward(&self.hidden.forward(&features.to_kind(Kind::Float)).relu()))
    }
}

impl Segmenter {
    /// `spec` must give output stride 8 or 16 (the config checks it).
    pub fn new(vs: &nn::Path, kind: SegKind, spec: BackboneSpec, num_classes: i64) -> Segmenter {
        let backbone = Backbone::for_segmentation(&(vs / BACKBONE), spec);
        let path = vs / HEAD;
        let d = backbone.out_channels();
        let head = match kind {
            SegKind::DeeplabV2 => Head::V2(V2Head {
                branches: V2_RATES
                    .iter()
                    .enumerate()
                    .map(|(i, &rate)| conv_bias(&(&path / format!("c{i}")), d, num_classes, 3, rate, nn::Init::Randn { mean: 0.0, stdev: 0.01 }))
                    .collect(),
            }),
            SegKind::DeeplabV3plus => {
                let scale = 16 / backbone.output_stride();
                let aspp_path = &path / "aspp";
                let convs = &aspp_path / "convs";
                let c = V3_CHANNELS;
                let mut aspp = vec![ConvBnRelu::new(&(&convs / "0"), "0", "1", ConvSpec::plain(d, c, 1, 1))];
                for (i, rate) in V3_RATES.iter().enumerate() {
                    let spec = ConvSpec { dilation: rate * scale, ..ConvSpec::plain(d, c, 3, 1) };
                    aspp.push(ConvBnRelu::new(&(&convs / (i + 1)), "0", "1", spec));
                }
                let kaiming =
                    nn::Init::Kaiming { dist: nn::init::NormalOrUniform::Normal, fan: nn::init::FanInOut::FanIn, non_linearity: nn::init::NonLinearity::ReLU };
                Head::V3Plus(V3PlusHead {
                    project: ConvBnRelu::new(&(&path / "project"), "0", "1", ConvSpec::plain(backbone.low_level_channels(), V3_LOW_LEVEL_CHANNELS, 1, 1)),
                    aspp,
                    pooling: ConvBnRelu::new(&(&convs / "4"), "1", "2", ConvSpec::plain(d, c, 1, 1)),
                    aspp_project: ConvBnRelu::new(&(&aspp_path / "project"), "0", "1", ConvSpec::plain(5 * c, c, 1, 1)),
                    dropout: V3_DROPOUT,
                    fuse: ConvBnRelu::new(&(&path / "classifier"), "0", "1", ConvSpec::plain(V3_LOW_LEVEL_CHANNELS + c, c, 3, 1)),
                    classifier: conv_bias(&(&path / "classifier" / "3"), c, num_classes, 1, 1, kaiming),
                })
            }
        };
        Segmenter { backbone, head, consistency: None }
    }

    /// Adds DFR's feature consistency head with `dims` output channels (`classifier.consistency.`).
    pub fn with_consistency_head(mut self, vs: &nn::Path, dims: i64) -> Segmenter {
        let path = vs / HEAD / "consistency";
        let features = match &self.head {
            Head::V2(_) => self.backbone.out_channels(),
            Head::V3Plus(_) => V3_CHANNELS,
        };
        let init = nn::Init::Kaiming { dist: nn::init::NormalOrUniform::Normal, fan: nn::init::FanInOut::FanIn, non_linearity: nn::init::NonLinearity::ReLU };
        self.consistency = Some(ConsistencyHead {
            hidden: conv_bias(&(&path / "0"), features, CONSISTENCY_HIDDEN, 1, 1, init),
            out: conv_bias(&(&path / "2"), CONSISTENCY_HIDDEN, dims, 1, 1, init),
        });
        self
    }

    /// v3+'s dropout rate after the ASPP projection (v2 has none).
    pub fn with_dropout(mut self, rate: f64) -> Segmenter {
        if let Head::V3Plus(head) = &mut self.head {
            head.dropout = rate;
        }
        self
    }

    /// The head's trainable BatchNorms (v3+) take their training statistics over every rank
    /// of `sync`; v2 has none.
    pub fn synchronise_batch_norm(&mut self, sync: Arc<StatsSync>) {
        if let Head::V3Plus(head) = &mut self.head {
            head.batch_norms().for_each(|bn| bn.synchronise(sync.clone()));
        }
    }

    /// Sets the backbone's frozen BatchNorm statistics from one batch (a random start).
    pub fn calibrate_batch_norm(&self, images: &Tensor) {
        self.backbone.calibrate_batch_norm(images);
    }

    pub fn kind(&self) -> SegKind {
        match self.head {
            Head::V2(_) => SegKind::DeeplabV2,
            Head::V3Plus(_) => SegKind::DeeplabV3plus,
        }
    }

    /// The training outputs of normalised images [N, 3, H, W]: v3+ one logit map at the input's
    /// size; v2 the logits at scales 1, 0.5, 0.75 (at output stride 8) and their max. Dropout
    /// draws from libtorch's generator (the caller seeds it).
    pub fn forward_train(&self, images: &Tensor, compute: Kind) -> SegOutputs {
        let images = images.to_kind(compute);
        let (logits, features) = match &self.head {
            Head::V3Plus(head) => {
                let (logits, fused) = head.run(&self.backbone, &images, Mode::Train, true);
                (vec![logits], fused)
            }
            Head::V2(head) => {
                let (full, features) = head.run(&self.backbone, &images, Mode::Train);
                let size = full.size()[2..].to_vec();
                let mut logits = vec![full];
                for scale in V2_SCALES {
                    logits.push(head.run(&self.backbone, &scaled(&images, scale), Mode::Train).0);
                }
                let max = logits[1..].iter().fold(logits[0].shallow_clone(), |m, l| m.maximum(&resize(l, &size)));
                logits.push(max);
                (logits, features)
            }
        };
        SegOutputs { logits: logits.into_iter().map(|l| l.to_kind(Kind::Float)).collect(), embedding: self.consistency.as_ref().map(|c| c.embed(&features)) }
    }

    /// Inference logits [N, C, H, W] at the input's size (v2: the max over its three scales,
    /// upsampled).
    pub fn logits(&self, images: &Tensor) -> Tensor {
        let size = images.size()[2..].to_vec();
        match &self.head {
            Head::V3Plus(head) => head.run(&self.backbone, images, Mode::Eval, false).0,
            Head::V2(head) => {
                let full = head.run(&self.backbone, images, Mode::Eval).0;
                let inner = full.size()[2..].to_vec();
                let max = V2_SCALES.iter().fold(full, |m, &scale| m.maximum(&resize(&head.run(&self.backbone, &scaled(images, scale), Mode::Eval).0, &inner)));
                resize(&max, &size)
            }
        }
    }
}

/// The input at `scale` as kazuto1011's MSC makes it, `interpolate(scale_factor=scale)`: size
/// ⌊side·scale⌋, source coordinates mapped by 1/scale (not by the ratio of the sizes).
fn scaled(images: &Tensor, scale: f64) -> Tensor {
    let size = images.size();
    let side = |s: i64| ((s as f64) * scale).floor() as i64;
    images.upsample_bilinear2d([side(size[2]), side(size[3])], false, Some(scale), Some(scale))
}

impl V2Head {
    /// The sum of the four branches, computed in f32 (as the CAM head is), and the features they
    /// read.
    fn run(&self, backbone: &Backbone, images: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        let features = backbone.run(images, mode).to_kind(Kind::Float);
        let logits = self.branches.iter().map(|c| c.forward(&features)).reduce(|a, b| a + b).expect("four branches");
        (logits, features)
    }
}

impl V3PlusHead {
    /// The logits at the input's size and the decoder's fused features they are read from.
    fn run(&self, backbone: &Backbone, images: &Tensor, mode: Mode, train: bool) -> (Tensor, Tensor) {
        let (low, high) = backbone.run_levels(images, mode);
        let high_size = high.size()[2..].to_vec();
        let mut branches: Vec<Tensor> = self.aspp.iter().map(|b| b.run(&high, mode)).collect();
        // On a batch of one the pooled branch's BatchNorm has one value per channel and uses
        // its running statistics (`BatchNorm::run`).
        let pooled = self.pooling.run(&high.adaptive_avg_pool2d([1, 1]), mode);
        branches.push(resize(&pooled, &high_size));
        let aspp = self.aspp_project.run(&Tensor::cat(&branches, 1), mode).dropout(self.dropout, train);
        let low = self.project.run(&low, mode);
        let fused = self.fuse.run(&Tensor::cat(&[low.shallow_clone(), resize(&aspp, &low.size()[2..])], 1), mode);
        (resize(&self.classifier.forward(&fused.to_kind(Kind::Float)), &images.size()[2..]), fused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Depth;
    use tch::{nn::VarStore, Device};

    /// The predictions' `method` column spells the kind as the config does.
    #[test]
    fn a_kind_is_named_as_the_config_names_it() {
        for kind in [SegKind::DeeplabV2, SegKind::DeeplabV3plus] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }

    /// DFR's consistency head: on v3+ it reads the decoder's 256 fused channels at stride 4, on v2
    /// the backbone's at output stride 8 (of the full-scale input); its embedding has unit length
    /// at every pixel; without the head there is none.
    #[test]
    fn the_consistency_head_embeds_the_classifiers_features_at_unit_length() {
        tch::manual_seed(0);
        let images = Tensor::randn([2, 3, 64, 48], (Kind::Float, Device::Cpu));
        for (kind, spec, channels, grid) in [
            (SegKind::DeeplabV3plus, BackboneSpec::mobilenet_v2([2, 2, 2, 1]), 256, [16, 12]),
            (SegKind::DeeplabV2, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 1, 1]), 512, [8, 6]),
        ] {
            let vs = VarStore::new(Device::Cpu);
            let plain = Segmenter::new(&vs.root(), kind, spec, 3);
            assert!(plain.forward_train(&images, Kind::Float).embedding.is_none());
            let net = plain.with_consistency_head(&vs.root(), 3);
            assert_eq!(vs.variables()["classifier.consistency.0.weight"].size(), [64, channels, 1, 1], "{kind:?}");
            let embedding = net.forward_train(&images, Kind::Float).embedding.expect("the head's embedding");
            assert_eq!(embedding.size(), [2, 3, grid[0], grid[1]], "{kind:?}");
            let norms = embedding.square().sum_dim_intlist([1].as_slice(), false, Kind::Float).sqrt();
            assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5, "{kind:?}");
        }
    }

    #[test]
    fn v3plus_on_mobilenet_has_torchvision_names_and_full_size_logits() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net = Segmenter::new(&vs.root(), SegKind::DeeplabV3plus, BackboneSpec::mobilenet_v2([2, 2, 2, 1]), 5);
        let vars = vs.variables();
        for (name, shape) in [
            ("backbone.features.17.conv.2.weight", vec![320, 960, 1, 1]),
            ("classifier.project.0.weight", vec![48, 24, 1, 1]),
            ("classifier.aspp.convs.0.0.weight", vec![256, 320, 1, 1]),
            ("classifier.aspp.convs.3.0.weight", vec![256, 320, 3, 3]),
            ("classifier.aspp.convs.4.1.weight", vec![256, 320, 1, 1]),
            ("classifier.aspp.convs.4.2.running_var", vec![256]),
            ("classifier.aspp.project.0.weight", vec![256, 1280, 1, 1]),
            ("classifier.classifier.0.weight", vec![256, 304, 3, 3]),
            ("classifier.classifier.3.bias", vec![5]),
        ] {
            assert_eq!(vars.get(name).map(|t| t.size()), Some(shape), "{name}");
        }
        assert!(!vars.keys().any(|k| k.starts_with("backbone.features.18")), "DeepLab's MobileNetV2 ends at features.17");
        let images = Tensor::randn([2, 3, 64, 48], (Kind::Float, Device::Cpu));
        let out = net.forward_train(&images, Kind::Float);
        assert_eq!(out.logits.len(), 1);
        assert_eq!(out.logits[0].size(), [2, 5, 64, 48]);
        assert_eq!(tch::no_grad(|| net.logits(&images)).size(), [2, 5, 64, 48]);
        // Trainable BatchNorms update their running statistics in training only.
        assert!(vars["classifier.aspp.convs.4.2.running_var"].ne(1.0).any().int64_value(&[]) == 1);
        // A batch of one image trains too (the pooled branch's BatchNorm on running statistics).
        let single = net.forward_train(&images.narrow(0, 0, 1), Kind::Float);
        assert_eq!(single.logits[0].size(), [1, 5, 64, 48]);
    }

    #[test]
    fn v2_sums_four_dilated_branches_over_three_scales() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net = Segmenter::new(&vs.root(), SegKind::DeeplabV2, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 1, 1]), 3);
        let vars = vs.variables();
        for i in 0..4 {
            assert_eq!(vars[&format!("classifier.c{i}.weight")].size(), [3, 512, 3, 3]);
            assert_eq!(vars[&format!("classifier.c{i}.bias")].abs().sum(Kind::Float).double_value(&[]), 0.0);
        }
        let std = vars["classifier.c0.weight"].std(true).double_value(&[]);
        assert!((std - 0.01).abs() < 0.001, "N(0, 0.01) init: std {std}");
        let images = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
        let out = net.forward_train(&images, Kind::Float);
        let sizes: Vec<Vec<i64>> = out.logits.iter().map(|l| l.size()[2..].to_vec()).collect();
        assert_eq!(sizes, [vec![8, 8], vec![4, 4], vec![6, 6], vec![8, 8]]);
        // The fourth output is the element-wise max of the first and the upsampled others.
        let expected = out.logits[0].maximum(&resize(&out.logits[1], &[8, 8])).maximum(&resize(&out.logits[2], &[8, 8]));
        assert!(out.logits[3].allclose(&expected, 1e-6, 1e-6, false));
        // The ASPP is a sum: with three branches zeroed, the head is the remaining branch alone.
        let Head::V2(head) = &net.head else { unreachable!() };
        let features = tch::no_grad(|| net.backbone.run(&images, Mode::Eval));
        tch::no_grad(|| {
            for c in &head.branches[1..] {
                let _ = c.ws.shallow_clone().zero_();
            }
        });
        let alone = tch::no_grad(|| head.branches[0].forward(&features));
        assert!(tch::no_grad(|| head.run(&net.backbone, &images, Mode::Eval).0).allclose(&alone, 1e-6, 1e-6, false));
        assert_eq!(tch::no_grad(|| net.logits(&images)).size(), [1, 3, 64, 64]);
    }
}
