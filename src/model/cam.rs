//! The CAM network (docs/methods.md): a backbone (ResNet, MobileNetV2 or a ViT's patch tokens,
//! docs/methods.md, Backbones) and a 1×1 classifier without bias.
//! Training logits are `z = W · GAP(F)`; class activation maps are `A_c = ReLU(W_c · F)`.

use tch::nn;
use tch::{Kind, Tensor};

use super::backbone::{Arch, Backbone, BackboneSpec};
use super::layers::Mode;
use super::vit::{Vit, PATCH};

/// Name of the classifier layer, new on top of the torchvision backbone (it trains with the
/// head learning-rate multiplier and is absent from ImageNet weights).
pub const CLASSIFIER: &str = "classifier";

/// One CAM branch's outputs on a batch.
pub struct BranchOutput {
    /// z = W · GAP(F): [N, C].
    pub logits: Tensor,
    /// Z = W · F, the class logit maps (no ReLU): [N, C, h, w].
    pub logit_maps: Tensor,
}

impl BranchOutput {
    /// A = ReLU(Z), the training-time CAMs: [N, C, h, w].
    pub fn cams(&self) -> Tensor {
        self.logit_maps.relu()
    }
}

/// Where a CAM network's feature map comes from.
#[derive(Debug)]
pub enum Features {
    Cnn(Backbone),
    /// The patch tokens of the last block, as a stride-16 map.
    Vit(Vit),
}

impl Features {
    fn new(vs: &nn::Path, spec: BackboneSpec, with_amm: bool) -> Features {
        match spec.arch {
            Arch::Vit => Features::Vit(Vit::new(vs, spec.vit)),
            _ => Features::Cnn(Backbone::new(vs, spec, with_amm)),
        }
    }

    fn out_channels(&self) -> i64 {
        match self {
            Features::Cnn(backbone) => backbone.out_channels(),
            Features::Vit(vit) => vit.out_channels(),
        }
    }

    fn output_stride(&self) -> i64 {
        match self {
            Features::Cnn(backbone) => backbone.output_stride(),
            Features::Vit(_) => PATCH,
        }
    }

    /// [N, 3, H, W] in the compute precision → the feature map; a ViT computes in f32 (its
    /// LayerNorms and softmaxes; no BatchNorm to calibrate).
    fn run(&self, images: &Tensor, mode: Mode) -> Tensor {
        match self {
            Features::Cnn(backbone) => backbone.run(images, mode),
            Features::Vit(vit) => vit.run(&images.to_kind(Kind::Float)),
        }
    }
}

#[derive(Debug)]
pub struct CamNet {
    backbone: Features,
    /// [C, D, 1, 1]
    classifier: Tensor,
}

impl CamNet {
    /// Builds the network under `vs` (the root, for torchvision's names plus `classifier.weight`).
    pub fn new(vs: &nn::Path, spec: BackboneSpec, num_classes: i64) -> CamNet {
        CamNet::with_backbone(vs, Features::new(vs, spec, false), num_classes)
    }

    /// The same network with AMMs in the backbone (every ResNet block; the MobileNetV2 blocks
    /// that have a shortcut): AMR's compensation branch.
    pub fn with_amm(vs: &nn::Path, spec: BackboneSpec, num_classes: i64) -> CamNet {
        CamNet::with_backbone(vs, Features::new(vs, spec, true), num_classes)
    }

    fn with_backbone(vs: &nn::Path, backbone: Features, num_classes: i64) -> CamNet {
        let d = backbone.out_channels();
        // PyTorch's default for a fresh Conv2d (kaiming_uniform with a = √5): U(±1/√fan_in).
        let bound = 1.0 / (d as f64).sqrt();
        let init = Tensor::empty([num_classes, d, 1, 1], (Kind::Float, vs.device())).uniform_(-bound, bound);
        let classifier = (vs / CLASSIFIER).add("weight", init, true);
        CamNet { backbone, classifier }
    }

    pub fn output_stride(&self) -> i64 {
        self.backbone.output_stride()
    }

    /// See [`Backbone::calibrate_batch_norm`]; whether there were BatchNorms to calibrate (a
    /// ViT has none).
    pub fn calibrate_batch_norm(&self, images: &Tensor) -> bool {
        match &self.backbone {
            Features::Cnn(backbone) => {
                backbone.calibrate_batch_norm(images);
                true
            }
            Features::Vit(_) => false,
        }
    }

    /// The ViT's patch attention (see [`Vit::patch_attention`]) of one normalised image
    /// [3, H, W], averaged over its last `layers` blocks: [h·w, h·w] and the grid; `None` for a
    /// CNN.
    pub fn vit_attention(&self, image: &Tensor, layers: usize) -> Option<(Tensor, [i64; 2])> {
        match &self.backbone {
            Features::Vit(vit) => {
                let (attention, grid) = vit.patch_attention(&image.unsqueeze(0).to_kind(Kind::Float), layers);
                Some((attention.get(0), grid))
            }
            Features::Cnn(_) => None,
        }
    }

    /// Backbone features F in f32, computed in `compute` precision (f32, or bf16 for
    /// mixed-precision training: convolutions run in bf16, the head and the loss stay f32).
    pub fn features(&self, images: &Tensor, compute: Kind, mode: Mode) -> Tensor {
        self.backbone.run(&images.to_kind(compute), mode).to_kind(Kind::Float)
    }

    /// Logits and logit maps of a batch of normalised images [N, 3, H, W].
    pub fn forward(&self, images: &Tensor, compute: Kind, mode: Mode) -> BranchOutput {
        let features = self.features(images, compute, mode);
        BranchOutput { logits: self.logits(&features), logit_maps: self.logit_maps(&features) }
    }

    /// z = W · GAP(F): [N, C] logits.
    pub fn logits(&self, features: &Tensor) -> Tensor {
        let pooled = features.mean_dim([2, 3].as_slice(), true, Kind::Float);
        pooled.conv2d(&self.classifier, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).flatten(1, -1)
    }

    /// Z = W · F: [N, C, h, w].
    pub fn logit_maps(&self, features: &Tensor) -> Tensor {
        features.conv2d(&self.classifier, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
    }

    /// A_c = ReLU(W_c · F) for the classes `classes` (0-based columns of W): [N, |classes|, h, w].
    pub fn cams(&self, features: &Tensor, classes: &[i64]) -> Tensor {
        let index = Tensor::from_slice(classes).to_device(self.classifier.device());
        let weight = self.classifier.index_select(0, &index);
        features.conv2d(&weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).relu()
    }
}

/// Added to each class map's maximum before dividing (docs/methods.md).
const NORM_EPS: f64 = 1e-5;

impl CamNet {
    /// Multi-scale CAMs of one normalised image `[3, H, W]` for the 0-based `classes`
    /// (docs/methods.md): at each scale the image is resized (bilinear), run with its horizontal
    /// flip when `flip`, the flipped maps are flipped back and added, every map is resized
    /// (bilinear) to the stride-`stride` grid ⌈H/stride⌉ × ⌈W/stride⌉ and summed over scales;
    /// each class map is then divided by its maximum + 1e-5. Also returns the classifier's
    /// logits of `classes` on the unscaled, unflipped image. Run it under `tch::no_grad`.
    pub fn multiscale_cams(&self, image: &Tensor, classes: &[i64], scales: &[f64], flip: bool, stride: i64) -> (Tensor, Tensor) {
        let (h, w) = (image.size()[1], image.size()[2]);
        let grid = [(h + stride - 1) / stride, (w + stride - 1) / stride];
        let device = self.classifier.device();
        let image = image.to_device(device).unsqueeze(0);
        let index = Tensor::from_slice(classes).to_device(device);
        let logits_of = |features: &Tensor| self.logits(features).get(0).index_select(0, &index);
        let mut sum = Tensor::zeros([classes.len() as i64, grid[0], grid[1]], (Kind::Float, device));
        // The scale-1 logits come from the scale-1 pass when there is one (frozen BN: the image's
        // features do not depend on its flip being in the batch), else from a pass of their own.
        let mut logits = None;
        if classes.is_empty() {
            return (sum, logits_of(&self.features(&image, Kind::Float, Mode::Eval)));
        }
        for &scale in scales {
            let size = [((h as f64) * scale).round().max(1.0) as i64, ((w as f64) * scale).round().max(1.0) as i64];
            let scaled = if size == [h, w] { image.shallow_clone() } else { image.upsample_bilinear2d(size, false, None, None) };
            let input = if flip { Tensor::cat(&[&scaled, &scaled.flip([3])], 0) } else { scaled };
            let features = self.features(&input, Kind::Float, Mode::Eval);
            if size == [h, w] && logits.is_none() {
                logits = Some(logits_of(&features));
            }
            let maps = self.cams(&features, classes);
            let maps = if flip { maps.get(0) + maps.get(1).flip([2]) } else { maps.get(0) };
            sum += maps.unsqueeze(0).upsample_bilinear2d(grid, false, None, None).squeeze_dim(0);
        }
        let logits = logits.unwrap_or_else(|| logits_of(&self.features(&image, Kind::Float, Mode::Eval)));
        let max = sum.amax([1, 2].as_slice(), true);
        (sum / (max + NORM_EPS), logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Depth;
    use tch::{nn::VarStore, Device};

    /// With F and W set by hand: logits are W·mean(F) and CAMs ReLU(W·F) per pixel.
    #[test]
    fn logits_and_cams_follow_the_formulas() {
        let vs = VarStore::new(Device::Cpu);
        let mut net = CamNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 2);
        // W: class 0 = (1, 0, 0, ...), class 1 = (−2, 1, 0, ...).
        let mut w = vec![0f32; 2 * 512];
        (w[0], w[512], w[513]) = (1.0, -2.0, 1.0);
        net.classifier = Tensor::from_slice(&w).view([2, 512, 1, 1]);
        // F: channel 0 = [1, 3], channel 1 = [4, 0], other channels 0 (1×2 feature map).
        let features = Tensor::zeros([1, 512, 1, 2], (Kind::Float, Device::Cpu));
        tch::no_grad(|| {
            features.get(0).get(0).copy_(&Tensor::from_slice(&[1.0f32, 3.0]).view([1, 2]));
            features.get(0).get(1).copy_(&Tensor::from_slice(&[4.0f32, 0.0]).view([1, 2]));
        });
        // GAP: c0 = 2, c1 = 2 → z0 = 2, z1 = −4 + 2 = −2.
        let logits: Vec<f32> = Vec::try_from(net.logits(&features).flatten(0, -1)).unwrap();
        assert_eq!(logits, [2.0, -2.0]);
        // A0 = [1, 3]; A1 = ReLU([−2+4, −6+0]) = [2, 0]; asking for class 1 only gives A1.
        let cams: Vec<f32> = Vec::try_from(net.cams(&features, &[0, 1]).flatten(0, -1)).unwrap();
        assert_eq!(cams, [1.0, 3.0, 2.0, 0.0]);
        let only: Vec<f32> = Vec::try_from(net.cams(&features, &[1]).flatten(0, -1)).unwrap();
        assert_eq!(only, [2.0, 0.0]);
    }

    /// With a single scale, no flip and a 1×1 classifier reading one (non-negative) feature channel, the
    /// stride-4 CAM is that channel's map resized to the grid, divided by its max + 1e-5.
    #[test]
    fn multiscale_cams_are_max_normalised_on_the_stride_grid() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let mut net = CamNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3);
        let image = Tensor::randn([3, 70, 45], (Kind::Float, Device::Cpu));
        let features = tch::no_grad(|| net.features(&image.unsqueeze(0), Kind::Float, Mode::Eval));
        // The most active channel, so that the maps are not all zero.
        let c = features.get(0).amax([1, 2].as_slice(), false).argmax(0, false).int64_value(&[]) as usize;
        let channel = features.get(0).get(c as i64);
        let mut w = vec![0f32; 3 * 512];
        (w[c], w[2 * 512 + c]) = (1.0, 1.0);
        net.classifier = Tensor::from_slice(&w).view([3, 512, 1, 1]);
        let (cams, logits) = tch::no_grad(|| net.multiscale_cams(&image, &[2], &[1.0], false, 4));
        assert_eq!(cams.size(), [1, 18, 12], "⌈70/4⌉ × ⌈45/4⌉");
        let expected = channel.view([1, 1, 5, 3]).upsample_bilinear2d([18, 12], false, None, None).view([1, 18, 12]);
        let expected = &expected / (expected.max().double_value(&[]) + 1e-5);
        assert!(cams.allclose(&expected, 1e-5, 1e-6, false));
        assert!((logits.double_value(&[0]) - channel.mean(Kind::Float).double_value(&[])).abs() < 1e-5);
        // With flip and several scales every map still peaks at just below 1.
        let (cams, _) = tch::no_grad(|| net.multiscale_cams(&image, &[0, 2], &[1.0, 0.5, 1.5], true, 4));
        let peaks: Vec<f32> = Vec::try_from(cams.amax([1, 2].as_slice(), false)).unwrap();
        assert!(peaks.iter().all(|p| *p > 0.999 && *p < 1.0), "{peaks:?}");
    }

    #[test]
    fn bf16_compute_gives_f32_features_and_gradients() {
        let vs = VarStore::new(Device::Cpu);
        let net = CamNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3);
        let images = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let features = net.features(&images, Kind::BFloat16, Mode::Train);
        assert_eq!(features.kind(), Kind::Float);
        net.logits(&features).sum(Kind::Float).backward();
        let grad = vs.variables()["layer1.0.conv1.weight"].grad();
        assert_eq!(grad.kind(), Kind::Float);
        assert!(grad.isfinite().all().int64_value(&[]) == 1);
    }
}
