//! IRNet's inter-pixel relation network (docs/methods.md §8; jiwoon-ahn/irn
//! `net/resnet50_irn.py`): a frozen ResNet (strides (2, 2, 2, 1), its features detached; or a
//! MobileNetV2, whose five stage outputs have the same strides) with
//! two heads at stride 4 — the class-boundary branch (`edge`: each stage's features to 32
//! channels, GroupNorm(4), ReLU, upsampled to stride 4, concatenated, 1×1 to one channel) and
//! the displacement branch (`dp1` … `dp7`, GroupNorm, two output channels, a mean shift at
//! inference).
//!
//! Parameter names: the backbone's torchvision names and the reference's names of the branches
//! (`fc_edge1.0.weight` conv, `fc_edge1.1.{weight,bias}` GroupNorm, …, `fc_edge6.{weight,bias}`,
//! `fc_dp1` … `fc_dp7`, whose last conv is `fc_dp7.3.weight` and mean shift
//! `fc_dp7.4.running_mean`), so that the branches of an IRNet checkpoint load by name.

use tch::nn;
use tch::{Kind, Tensor};

use super::backbone::{Backbone, BackboneSpec};
use super::layers::Mode;

/// A 1×1 convolution (no bias) followed by GroupNorm with affine parameters.
#[derive(Debug)]
struct ConvGroupNorm {
    weight: Tensor,
    groups: i64,
    gn_weight: Tensor,
    gn_bias: Tensor,
}

impl ConvGroupNorm {
    fn new(vs: &nn::Path, c_in: i64, c_out: i64, groups: i64) -> ConvGroupNorm {
        // PyTorch's Conv2d default: kaiming_uniform(a = √5), i.e. U(±1/√fan_in).
        let bound = 1.0 / (c_in as f64).sqrt();
        ConvGroupNorm {
            weight: (vs / "0").var("weight", &[c_out, c_in, 1, 1], nn::Init::Uniform { lo: -bound, up: bound }),
            groups,
            gn_weight: (vs / "1").var("weight", &[c_out], nn::Init::Const(1.0)),
            gn_bias: (vs / "1").var("bias", &[c_out], nn::Init::Const(0.0)),
        }
    }

    /// conv → GroupNorm, then (IRNet's order) the upsampling by `scale`, then ReLU.
    fn run(&self, xs: &Tensor, scale: i64) -> Tensor {
        let h =
            xs.conv2d(&self.weight, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).group_norm(self.groups, Some(&self.gn_weight), Some(&self.gn_bias), 1e-5, false);
        let h = if scale == 1 {
            h
        } else {
            let size = h.size();
            h.upsample_bilinear2d([size[2] * scale, size[3] * scale], false, None, None)
        };
        h.relu()
    }
}

/// The network: backbone, boundary and displacement branches.
#[derive(Debug)]
pub struct IrnNet {
    backbone: Backbone,
    edge: Vec<ConvGroupNorm>,
    edge_out_weight: Tensor,
    edge_out_bias: Tensor,
    dp: Vec<ConvGroupNorm>,
    dp_out: Tensor,
    /// The mean displacement over training, removed at inference (IRNet's `MeanShift`).
    mean_shift: Tensor,
}

/// Outputs at stride 4 of the input: boundary logits [N, 1, h, w] and displacements [N, 2, h, w].
pub struct IrnOutput {
    pub edge_logits: Tensor,
    pub displacement: Tensor,
}

/// Name prefixes of the two trainable branches (the boundary branch at lr × 1, the
/// displacement branch at lr × 10, IRNet's groups).
pub const EDGE: &str = "fc_edge";
pub const DISPLACEMENT: &str = "fc_dp";
/// The branches' layers (new when ImageNet weights are imported into the backbone).
pub const BRANCH_LAYERS: [&str; 13] =
    ["fc_edge1", "fc_edge2", "fc_edge3", "fc_edge4", "fc_edge5", "fc_edge6", "fc_dp1", "fc_dp2", "fc_dp3", "fc_dp4", "fc_dp5", "fc_dp6", "fc_dp7"];

impl IrnNet {
    /// The network on the backbone of `spec` (its strides must be (2, 2, 2, 1)).
    pub fn new(vs: &nn::Path, spec: BackboneSpec) -> IrnNet {
        assert_eq!(spec.strides, [2, 2, 2, 1], "IRNet's branches expect stage strides 4, 4, 8, 16, 16");
        let backbone = Backbone::for_relations(vs, spec);
        let c = backbone.stage_channels();
        let edge = (0..5).map(|i| ConvGroupNorm::new(&(vs / format!("{EDGE}{}", i + 1)), c[i], 32, 4)).collect();
        let bound = 1.0 / 160f64.sqrt();
        let edge6 = vs / format!("{EDGE}6");
        let dp_spec = [(c[0], 64, 8), (c[1], 128, 16), (c[2], 256, 16), (c[3], 256, 16), (c[4], 256, 16), (768, 256, 16), (448, 256, 16)];
        let dp = dp_spec
            .iter()
            .enumerate()
            .map(|(i, &(c_in, c_out, groups))| ConvGroupNorm::new(&(vs / format!("{DISPLACEMENT}{}", i + 1)), c_in, c_out, groups))
            .collect();
        let dp7 = vs / format!("{DISPLACEMENT}7");
        IrnNet {
            backbone,
            edge,
            edge_out_weight: edge6.var("weight", &[1, 160, 1, 1], nn::Init::Uniform { lo: -bound, up: bound }),
            edge_out_bias: edge6.var("bias", &[1], nn::Init::Uniform { lo: -bound, up: bound }),
            dp,
            dp_out: (&dp7 / "3").var("weight", &[2, 256, 1, 1], nn::Init::Uniform { lo: -1.0 / 16.0, up: 1.0 / 16.0 }),
            mean_shift: (&dp7 / "4").zeros_no_train("running_mean", &[2]),
        }
    }

    /// Both branches on [N, 3, H, W] normalised images. The backbone runs frozen and its
    /// features are detached: only the branches learn. In training the displacement's running
    /// mean is updated (momentum 0.1) and the output left as it is; otherwise the mean is
    /// subtracted.
    pub fn forward(&self, images: &Tensor, mode: Mode) -> IrnOutput {
        let stages: Vec<Tensor> = tch::no_grad(|| self.backbone.run_stages(images, Mode::Eval)).into_iter().map(|t| t.detach()).collect();
        let crop = |t: Tensor, like: &Tensor| {
            let (h, w) = (like.size()[2], like.size()[3]);
            t.narrow(2, 0, h).narrow(3, 0, w)
        };
        // Strides 4, 4, 8, 16, 16: upsample to stride 4.
        let edge_scales = [1, 1, 2, 4, 4];
        let first = self.edge[0].run(&stages[0], 1);
        let mut edges = vec![first.shallow_clone()];
        for i in 1..5 {
            edges.push(crop(self.edge[i].run(&stages[i], edge_scales[i]), &first));
        }
        let edge_logits = Tensor::cat(&edges, 1).conv2d(&self.edge_out_weight, Some(&self.edge_out_bias), [1, 1], [0, 0], [1, 1], 1);

        let dp1 = self.dp[0].run(&stages[0], 1);
        let dp2 = self.dp[1].run(&stages[1], 1);
        let dp3 = self.dp[2].run(&stages[2], 1);
        let dp4 = crop(self.dp[3].run(&stages[3], 2), &dp3);
        let dp5 = crop(self.dp[4].run(&stages[4], 2), &dp3);
        let up3 = crop(self.dp[5].run(&Tensor::cat(&[dp3, dp4, dp5], 1), 2), &dp2);
        let hidden = self.dp[6].run(&Tensor::cat(&[dp1, dp2, up3], 1), 1);
        let displacement = hidden.conv2d(&self.dp_out, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        let displacement = match mode {
            Mode::Train => {
                tch::no_grad(|| {
                    let mean = displacement.mean_dim([0, 2, 3].as_slice(), false, Kind::Float);
                    let updated = &self.mean_shift * 0.9 + mean * 0.1;
                    let mut running = self.mean_shift.shallow_clone();
                    running.copy_(&updated);
                });
                displacement
            }
            Mode::Eval | Mode::Calibrate => displacement - self.mean_shift.view([1, 2, 1, 1]),
        };
        IrnOutput { edge_logits, displacement }
    }

    /// Sets the frozen backbone's BatchNorm statistics from one batch (a random start).
    pub fn calibrate_batch_norm(&self, images: &Tensor) {
        let _ = tch::no_grad(|| self.backbone.run_stages(images, Mode::Calibrate));
    }

    /// IRNet's boundary map of one image at inference: the image and its flip in one batch,
    /// `σ(edge₀/2 + flip(edge₁)/2)`, [h, w].
    pub fn boundary(&self, image: &Tensor) -> Tensor {
        let pair = Tensor::stack(&[image.shallow_clone(), image.flip([2])], 0);
        let logits = self.forward(&pair, Mode::Eval).edge_logits;
        ((logits.get(0) + logits.get(1).flip([2])) / 2.0).sigmoid().squeeze_dim(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resnet::Depth;
    use tch::{nn::VarStore, Device};

    /// Shapes at stride 4 of the input (⌈H/4⌉ as the CAMs' grid), IRNet's names, and only the
    /// branches learn: the backbone receives no gradient. Both backbone families.
    #[test]
    fn outputs_at_stride_4_and_only_the_branches_learn() {
        let backbones = [
            (BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), "layer3.0.conv1.weight"),
            (BackboneSpec::mobilenet_v2([2, 2, 2, 1]), "features.7.conv.0.0.weight"),
        ];
        for (spec, backbone_weight) in backbones {
            tch::manual_seed(0);
            let vs = VarStore::new(Device::Cpu);
            let net = IrnNet::new(&vs.root(), spec);
            let images = Tensor::randn([2, 3, 70, 45], (Kind::Float, Device::Cpu));
            let out = net.forward(&images, Mode::Train);
            assert_eq!(out.edge_logits.size(), [2, 1, 18, 12], "⌈70/4⌉ × ⌈45/4⌉");
            assert_eq!(out.displacement.size(), [2, 2, 18, 12]);
            (out.edge_logits.sum(Kind::Float) + out.displacement.square().sum(Kind::Float)).backward();
            let vars = vs.variables();
            for name in [
                "fc_edge1.0.weight",
                "fc_edge5.1.bias",
                "fc_edge6.weight",
                "fc_edge6.bias",
                "fc_dp1.0.weight",
                "fc_dp6.1.weight",
                "fc_dp7.0.weight",
                "fc_dp7.3.weight",
            ] {
                let grad = vars[name].grad();
                assert!(grad.defined() && grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{spec:?}: {name} got no gradient");
            }
            assert!(!vars[backbone_weight].grad().defined(), "{spec:?}: the backbone is frozen");
            assert!(vars["fc_dp7.4.running_mean"].abs().sum(Kind::Float).double_value(&[]) > 0.0, "training moved the running mean");
        }
    }

    /// The boundary map of one image averages its logits with its flip's before the sigmoid:
    /// the map of the flipped image is the flipped map, in (0, 1).
    #[test]
    fn the_boundary_map_is_flip_equivariant() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let net = IrnNet::new(&vs.root(), BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]));
        let image = Tensor::randn([3, 64, 64], (Kind::Float, Device::Cpu));
        let boundary = tch::no_grad(|| net.boundary(&image));
        assert_eq!(boundary.size(), [16, 16]);
        let of_flip = tch::no_grad(|| net.boundary(&image.flip([2])));
        assert!(of_flip.allclose(&boundary.flip([1]), 1e-5, 1e-6, false));
        let (lo, hi) = (boundary.min().double_value(&[]), boundary.max().double_value(&[]));
        assert!(lo > 0.0 && hi < 1.0, "{lo} {hi}");
    }
}
