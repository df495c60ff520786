//! AMR, activation modulation and recalibration (docs/methods.md): a spotlight branch (the
//! baseline CAM network) and a compensation branch (the same network with an AMM in every
//! backbone block and its own classifier), trained with
//! `L = ½ L_cls(z_spot) + ½ L_cls(z_comp) + λ · mean|A_spot − A_comp|`, and read at inference
//! as the recalibrated CAM `M = α · M_spot + (1−α) · M_comp`.
//!
//! Parameter names: `spotlight.<CAM network's names>` and `compensation.<the same>` plus
//! `compensation.layerL.B.amm.*`.

use tch::nn;
use tch::{Kind, Tensor};

use super::backbone::BackboneSpec;
use super::cam::{BranchOutput, CamNet};
use super::layers::Mode;

/// Path of the spotlight branch's parameters.
pub const SPOTLIGHT: &str = "spotlight";
/// Path of the compensation branch's parameters.
pub const COMPENSATION: &str = "compensation";

#[derive(Debug)]
pub struct AmrNet {
    pub spotlight: CamNet,
    pub compensation: CamNet,
}

/// Both branches' outputs on one batch.
pub struct AmrOutput {
    pub spotlight: BranchOutput,
    pub compensation: BranchOutput,
}

impl AmrNet {
    pub fn new(vs: &nn::Path, spec: BackboneSpec, num_classes: i64) -> AmrNet {
        AmrNet { spotlight: CamNet::new(&(vs / SPOTLIGHT), spec, num_classes), compensation: CamNet::with_amm(&(vs / COMPENSATION), spec, num_classes) }
    }

    /// Both branches on a batch of normalised images [N, 3, H, W]: logits [N, C] and logit
    /// maps [N, C, h, w] each (see [`BranchOutput`]).
    pub fn forward(&self, images: &Tensor, compute: Kind, mode: Mode) -> AmrOutput {
        AmrOutput { spotlight: self.spotlight.forward(images, compute, mode), compensation: self.compensation.forward(images, compute, mode) }
    }

    /// Multi-scale CAMs of one image (see [`CamNet::multiscale_cams`]), each branch's
    /// max-normalised per class, recalibrated as `α · M_spot + (1−α) · M_comp`; the logits are
    /// mixed the same way. Each branch batches the image with its flip (the compensation
    /// branch's modulation uses batch statistics), so the result depends on this image alone.
    pub fn multiscale_cams(&self, image: &Tensor, classes: &[i64], scales: &[f64], flip: bool, stride: i64, alpha: f64) -> (Tensor, Tensor) {
        let (spot, spot_logits) = self.spotlight.multiscale_cams(image, classes, scales, flip, stride);
        let (comp, comp_logits) = self.compensation.multiscale_cams(image, classes, scales, flip, stride);
        (recalibrate(&spot, &comp, alpha), recalibrate(&spot_logits, &comp_logits, alpha))
    }
}

/// `α · spotlight + (1−α) · compensation`, α in [0, 1].
pub fn recalibrate(spotlight: &Tensor, compensation: &Tensor, alpha: f64) -> Tensor {
    spotlight * alpha + compensation * (1.0 - alpha)
}

/// The cross pseudo supervision `mean|A_spot − A_comp|` between the two branches' ReLU CAMs
/// (logit maps [N, C, h, w] of each; the mean runs over every element). Gradients reach
/// both maps; a frozen spotlight simply has none to receive.
pub fn cross_supervision(spotlight_maps: &Tensor, compensation_maps: &Tensor) -> Tensor {
    (spotlight_maps.relu() - compensation_maps.relu()).abs().mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Depth;
    use tch::{nn::VarStore, Device};

    #[test]
    fn cross_supervision_is_the_mean_absolute_difference_of_the_relu_maps() {
        // Spotlight Z = (−1, 2, 3, 0.5), compensation Z = (1, −2, 1, 0.5):
        // ReLU → (0, 2, 3, 0.5) vs (1, 0, 1, 0.5); |diff| = (1, 2, 2, 0) → mean 1.25.
        let s = Tensor::from_slice(&[-1.0f32, 2.0, 3.0, 0.5]).view([1, 2, 1, 2]).set_requires_grad(true);
        let c = Tensor::from_slice(&[1.0f32, -2.0, 1.0, 0.5]).view([1, 2, 1, 2]).set_requires_grad(true);
        let loss = cross_supervision(&s, &c);
        assert!((loss.double_value(&[]) - 1.25).abs() < 1e-7);
        loss.backward();
        // d/dZ_s = sign(A_s − A_c)/4 and d/dZ_c = −sign(A_s − A_c)/4 where that branch's ReLU
        // is on; 0 where it is off or the difference is 0.
        let gs: Vec<f32> = Vec::try_from(s.grad().flatten(0, -1)).unwrap();
        let gc: Vec<f32> = Vec::try_from(c.grad().flatten(0, -1)).unwrap();
        assert_eq!(gs, [0.0, 0.25, 0.25, 0.0]);
        assert_eq!(gc, [0.25, 0.0, -0.25, 0.0]);
    }

    #[test]
    fn recalibration_mixes_the_branches() {
        let s = Tensor::from_slice(&[1.0f32, 0.0]);
        let c = Tensor::from_slice(&[0.0f32, 1.0]);
        let m: Vec<f32> = Vec::try_from(recalibrate(&s, &c, 0.3)).unwrap();
        assert!((m[0] - 0.3).abs() < 1e-7 && (m[1] - 0.7).abs() < 1e-7);
    }

    #[test]
    fn two_branches_with_their_own_names_and_both_outputs() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let net = AmrNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3);
        let vars = vs.variables();
        for name in [
            "spotlight.conv1.weight",
            "spotlight.classifier.weight",
            "compensation.layer4.1.conv2.weight",
            "compensation.layer1.0.amm.channel.0.weight",
            "compensation.classifier.weight",
        ] {
            assert!(vars.contains_key(name), "{name}");
        }
        assert!(!vars.keys().any(|k| k.starts_with("spotlight.") && k.contains(".amm.")), "the spotlight has no AMM");
        let out = net.forward(&Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)), Kind::Float, Mode::Train);
        for branch in [&out.spotlight, &out.compensation] {
            assert_eq!(branch.logits.size(), [2, 3]);
            assert_eq!(branch.logit_maps.size(), [2, 3, 4, 4]);
        }
        // The losses of both branches reach both backbones, the AMMs included.
        let loss = out.spotlight.logits.sum(Kind::Float)
            + out.compensation.logits.sum(Kind::Float)
            + cross_supervision(&out.spotlight.logit_maps, &out.compensation.logit_maps);
        loss.backward();
        for name in ["spotlight.layer3.0.conv1.weight", "compensation.layer3.0.conv1.weight", "compensation.layer2.1.amm.spatial.conv.weight"] {
            assert!(vars[name].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}");
        }
    }

    /// At inference the recalibrated CAM is α·M_spot + (1−α)·M_comp of the branches' own
    /// multi-scale CAMs, and an image's CAM does not depend on anything but that image.
    #[test]
    fn inference_recalibrates_the_branch_cams() {
        tch::manual_seed(2);
        let vs = VarStore::new(Device::Cpu);
        let net = AmrNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3);
        let image = Tensor::randn([3, 48, 40], (Kind::Float, Device::Cpu));
        let (cams, _) = tch::no_grad(|| net.multiscale_cams(&image, &[0, 2], &[1.0, 0.5], true, 4, 0.3));
        let (spot, _) = tch::no_grad(|| net.spotlight.multiscale_cams(&image, &[0, 2], &[1.0, 0.5], true, 4));
        let (comp, _) = tch::no_grad(|| net.compensation.multiscale_cams(&image, &[0, 2], &[1.0, 0.5], true, 4));
        assert!(cams.allclose(&(spot * 0.3 + comp * 0.7), 1e-6, 1e-6, false));
        let (again, _) = tch::no_grad(|| net.multiscale_cams(&image, &[0, 2], &[1.0, 0.5], true, 4, 0.3));
        assert!(cams.equal(&again));
    }
}
