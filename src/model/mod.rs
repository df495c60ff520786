//! Networks in tch, with torchvision's parameter names where torchvision has the model.

pub mod amm;
pub mod amr;
pub mod backbone;
pub mod cam;
pub mod deeplab;
pub mod irn;
pub mod layers;
pub mod mobilenet;
pub mod resnet;
pub mod vit;
pub mod weights;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::refine::diffusion::AttentionSource;
use layers::Mode;

use crate::optim::ParamGroup;
use amr::AmrNet;
use backbone::BackboneSpec;
use cam::CamNet;

/// The base method a classifier trains with (`method.base`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// One CAM network (docs/methods.md).
    #[default]
    Cam,
    /// AMR's spotlight and compensation branches (docs/methods.md).
    Amr,
}

/// The classification network of a method.
// One network per process: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Network {
    Cam(CamNet),
    Amr(AmrNet),
}

/// A network with the variable store that owns its tensors.
pub struct Model {
    pub vs: VarStore,
    pub net: Network,
}

impl Model {
    pub fn new(base: Base, spec: BackboneSpec, num_classes: i64, device: Device) -> Model {
        let vs = VarStore::new(device);
        let net = match base {
            Base::Cam => Network::Cam(CamNet::new(&vs.root(), spec, num_classes)),
            Base::Amr => Network::Amr(AmrNet::new(&vs.root(), spec, num_classes)),
        };
        Model { vs, net }
    }

    /// Stops training the parameters whose names start with `prefix` (AMR's frozen spotlight):
    /// they get no gradient and are in no parameter group.
    pub fn freeze(&self, prefix: &str) {
        for (_, var) in self.vs.variables().into_iter().filter(|(name, _)| name.starts_with(prefix)) {
            let _ = var.set_requires_grad(false);
        }
    }

    /// The trainable parameters in groups, sorted by name within each: per branch (none for the
    /// CAM network, `spotlight`/`compensation` for AMR) the backbone at `backbone_lr_mult(branch)`
    /// and the classifier at `head_lr_mult` (IRNet's 10× for new layers). Frozen tensors (stem,
    /// BatchNorm statistics, a frozen branch) are in none; empty groups are left out.
    pub fn param_groups(&self, head_lr_mult: f64, backbone_lr_mult: impl Fn(&str) -> f64) -> Vec<ParamGroup> {
        let branches: &[&str] = match self.net {
            Network::Cam(_) => &[""],
            Network::Amr(_) => &[amr::SPOTLIGHT, amr::COMPENSATION],
        };
        let mut trainable: Vec<(String, Tensor)> = self.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        trainable.sort_by(|a, b| a.0.cmp(&b.0));
        let head = format!("{}.", cam::CLASSIFIER);
        let mut groups = Vec::new();
        for &branch in branches {
            let prefix = if branch.is_empty() { String::new() } else { format!("{branch}.") };
            let (head, backbone): (Vec<_>, Vec<_>) = trainable
                .iter()
                .filter(|(name, _)| name.starts_with(&prefix))
                .map(|(name, t)| (name.clone(), t.shallow_clone()))
                .partition(|(name, _)| name[prefix.len()..].starts_with(&head));
            for (part, lr_mult, params) in [("backbone", backbone_lr_mult(branch), backbone), ("head", head_lr_mult, head)] {
                if !params.is_empty() {
                    groups.push(ParamGroup { name: format!("{prefix}{part}"), lr_mult, decay: true, params });
                }
            }
        }
        groups
    }

    /// Multi-scale CAMs and logits of one normalised image [3, H, W] for the 0-based `classes`:
    /// [`CamNet::multiscale_cams`], or for AMR the recalibration with `alpha`
    /// ([`AmrNet::multiscale_cams`]). Run it under `tch::no_grad`.
    /// What AD-CAM diffuses the CAMs of one normalised image [3, H, W] along
    /// (`refine::diffusion`): a ViT's patch attention of its last `layers` blocks, or a CNN's
    /// last-stage features [C, h, w] (AMR's spotlight branch's: the plain CAM network; the
    /// compensation branch's modulation uses batch statistics).
    pub fn attention_source(&self, image: &Tensor, layers: usize) -> AttentionSource {
        let net = match &self.net {
            Network::Cam(net) => net,
            Network::Amr(net) => &net.spotlight,
        };
        let image = image.to_device(self.vs.device());
        match net.vit_attention(&image, layers) {
            Some((attention, grid)) => AttentionSource::Matrix { attention, grid },
            None => AttentionSource::Features(net.features(&image.unsqueeze(0), Kind::Float, Mode::Eval).get(0)),
        }
    }

    pub fn multiscale_cams(&self, image: &Tensor, classes: &[i64], scales: &[f64], flip: bool, stride: i64, alpha: f64) -> (Tensor, Tensor) {
        match &self.net {
            Network::Cam(net) => net.multiscale_cams(image, classes, scales, flip, stride),
            Network::Amr(net) => net.multiscale_cams(image, classes, scales, flip, stride, alpha),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use resnet::Depth;

    fn group_names(groups: &[ParamGroup]) -> Vec<(String, f64, usize)> {
        groups.iter().map(|g| (g.name.clone(), g.lr_mult, g.params.len())).collect()
    }

    #[test]
    fn groups_follow_branches_and_freezing() {
        let cam = Model::new(Base::Cam, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3, Device::Cpu);
        let groups = cam.param_groups(10.0, |_| 1.0);
        // ResNet-18: 19 trainable convs after the stem (see resnet's tests), one classifier.
        assert_eq!(group_names(&groups), [("backbone".into(), 1.0, 19), ("head".into(), 10.0, 1)]);
        let amr = Model::new(Base::Amr, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3, Device::Cpu);
        let comp_mult = |branch: &str| if branch == amr::COMPENSATION { 10.0 } else { 1.0 };
        // Each of the 8 blocks' AMMs adds 4 linear tensors, the 7×7 conv and the BN's affine pair.
        let names = group_names(&amr.param_groups(10.0, comp_mult));
        assert_eq!(
            names,
            [
                ("spotlight.backbone".into(), 1.0, 19),
                ("spotlight.head".into(), 10.0, 1),
                ("compensation.backbone".into(), 10.0, 19 + 8 * 7),
                ("compensation.head".into(), 10.0, 1)
            ]
        );
        let mobilenet = Model::new(Base::Amr, BackboneSpec::mobilenet_v2([2, 2, 2, 1]), 3, Device::Cpu);
        // MobileNetV2: 51 convs after the stem; each of the 10 residual blocks' AMMs adds 7 trainable tensors.
        let names = group_names(&mobilenet.param_groups(10.0, comp_mult));
        assert_eq!(names[0], ("spotlight.backbone".into(), 1.0, 51));
        assert_eq!(names[2], ("compensation.backbone".into(), 10.0, 51 + 10 * 7));
        amr.freeze("spotlight.");
        let names = group_names(&amr.param_groups(10.0, comp_mult));
        assert_eq!(names.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(), ["compensation.backbone", "compensation.head"]);
    }
}
