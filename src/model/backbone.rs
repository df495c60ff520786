//! The backbone of every network (docs/methods.md, Backbones): a ResNet or a MobileNetV2, chosen by
//! `model.arch`, both with torchvision's parameter names and frozen BatchNorm; the CAM
//! classifier may also be a ViT (timm's names, `model::vit`).

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::layers::Mode;
use super::mobilenet::MobileNetV2;
use super::resnet::{Depth, ResNet, Strides};
use super::vit::VitSize;

/// Which backbone family (`model.arch`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// A ResNet of `model.depth`.
    #[default]
    Resnet,
    /// torchvision's MobileNetV2 (width 1.0); `model.depth` does not apply.
    MobilenetV2,
    /// A ViT/DeiT of `model.vit` with 16-pixel patches (the CAM classifier only); `model.depth`
    /// and `model.strides` do not apply.
    Vit,
}

/// Everything that determines a backbone's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackboneSpec {
    pub arch: Arch,
    pub depth: Depth,
    pub strides: Strides,
    pub vit: VitSize,
}

impl BackboneSpec {
    pub fn resnet(depth: Depth, strides: Strides) -> BackboneSpec {
        BackboneSpec { arch: Arch::Resnet, depth, strides, vit: VitSize::default() }
    }

    /// `depth` does not apply to MobileNetV2; it keeps the config's default.
    pub fn mobilenet_v2(strides: Strides) -> BackboneSpec {
        BackboneSpec { arch: Arch::MobilenetV2, depth: Depth::Resnet50, strides, vit: VitSize::default() }
    }

    pub fn vit(size: VitSize) -> BackboneSpec {
        BackboneSpec { arch: Arch::Vit, depth: Depth::Resnet50, strides: [2, 2, 2, 1], vit: size }
    }
}

/// A feature extractor: normalised images → the last feature map.
#[derive(Debug)]
pub enum Backbone {
    ResNet(ResNet),
    MobileNetV2(MobileNetV2),
}

/// A ViT is a CAM classifier's backbone only (`model::cam::Features`; the config refuses it
/// elsewhere), never one of this type.
const NOT_A_CNN: &str = "a ViT backbone is built by the CAM network only (config: model.arch)";

impl Backbone {
    /// Builds the backbone under `vs` (the root for torchvision's names); `with_amm` puts an
    /// AMM in every block (AMR's compensation branch; new keys `….amm.*`).
    pub fn new(vs: &tch::nn::Path, spec: BackboneSpec, with_amm: bool) -> Backbone {
        match (spec.arch, with_amm) {
            (Arch::Resnet, false) => Backbone::ResNet(ResNet::new(vs, spec.depth, spec.strides)),
            (Arch::Resnet, true) => Backbone::ResNet(ResNet::with_amm(vs, spec.depth, spec.strides)),
            (Arch::MobilenetV2, _) => Backbone::MobileNetV2(MobileNetV2::new(vs, spec.strides, with_amm)),
            (Arch::Vit, _) => unreachable!("{NOT_A_CNN}"),
        }
    }

    /// IRNet's frozen backbone: MobileNetV2 ends at `features.17` (its last stage output).
    pub fn for_relations(vs: &tch::nn::Path, spec: BackboneSpec) -> Backbone {
        match spec.arch {
            Arch::Resnet => Backbone::ResNet(ResNet::new(vs, spec.depth, spec.strides)),
            Arch::MobilenetV2 => Backbone::MobileNetV2(MobileNetV2::without_last(vs, spec.strides)),
            Arch::Vit => unreachable!("{NOT_A_CNN}"),
        }
    }

    /// The backbone of a DeepLab segmenter: a ResNet's stride-1 stages dilate
    /// ([`ResNet::dilated`]; MobileNetV2's always do), and MobileNetV2 ends at `features.17`
    /// ([`MobileNetV2::without_last`]).
    pub fn for_segmentation(vs: &tch::nn::Path, spec: BackboneSpec) -> Backbone {
        match spec.arch {
            Arch::Resnet => Backbone::ResNet(ResNet::dilated(vs, spec.depth, spec.strides)),
            Arch::MobilenetV2 => Backbone::MobileNetV2(MobileNetV2::without_last(vs, spec.strides)),
            Arch::Vit => unreachable!("{NOT_A_CNN}"),
        }
    }

    /// Channels of the stride-4 features of [`Backbone::run_levels`].
    pub fn low_level_channels(&self) -> i64 {
        match self {
            Backbone::ResNet(net) => net.low_level_channels(),
            Backbone::MobileNetV2(net) => net.low_level_channels(),
        }
    }

    /// The stride-4 features (ResNet layer1, MobileNetV2 `features.3`) and the last feature map.
    pub fn run_levels(&self, xs: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        match self {
            Backbone::ResNet(net) => net.run_levels(xs, mode),
            Backbone::MobileNetV2(net) => net.run_levels(xs, mode),
        }
    }

    /// Channels of the feature map.
    pub fn out_channels(&self) -> i64 {
        match self {
            Backbone::ResNet(net) => net.out_channels(),
            Backbone::MobileNetV2(net) => net.out_channels(),
        }
    }

    /// Input pixels per feature-map pixel.
    pub fn output_stride(&self) -> i64 {
        match self {
            Backbone::ResNet(net) => net.output_stride(),
            Backbone::MobileNetV2(net) => net.output_stride(),
        }
    }

    /// IRNet's five feature maps at strides 4, 4, 8, 16, 16 (strides (2, 2, 2, 1)): a ResNet's
    /// stem and layer1–4, MobileNetV2's `features.2`, `.3`, `.6`, `.13`, `.17`.
    pub fn run_stages(&self, xs: &Tensor, mode: Mode) -> Vec<Tensor> {
        match self {
            Backbone::ResNet(net) => net.run_stages(xs, mode),
            Backbone::MobileNetV2(net) => net.run_stages(xs, mode),
        }
    }

    /// Channels of [`Backbone::run_stages`]' outputs.
    pub fn stage_channels(&self) -> [i64; 5] {
        match self {
            Backbone::ResNet(net) => net.stage_channels(),
            Backbone::MobileNetV2(net) => net.stage_channels(),
        }
    }

    /// [N, 3, H, W] → [N, D, ⌈H/os⌉, ⌈W/os⌉].
    pub fn run(&self, xs: &Tensor, mode: Mode) -> Tensor {
        match self {
            Backbone::ResNet(net) => net.run(xs, mode),
            Backbone::MobileNetV2(net) => net.run(xs, mode),
        }
    }

    /// Sets every BatchNorm's statistics from one batch, layer after layer (each sees inputs
    /// already normalised by the layers before it): the initialisation of a network trained
    /// without pretrained weights.
    pub fn calibrate_batch_norm(&self, xs: &Tensor) {
        let _ = tch::no_grad(|| self.run(xs, Mode::Calibrate));
    }
}
