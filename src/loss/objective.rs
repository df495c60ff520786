//! The training loss of a `[method]` configuration: the base (CAM or AMR) with the HFPL
//! add-ons switched on, in any combination.
//!
//! - Classification loss of a branch: `L_cls(GAP)`, or with ISL `(1−w) L_cls(GAP) + w L_IS`.
//! - CAM: `L = cls + w_FS · L_FS`.
//! - AMR: `L = ½ cls_spot + ½ cls_comp + λ · mean|A_spot − A_comp| + w_FS · Σ L_FS`.
//!
//! The add-ons apply to every branch that trains. A frozen spotlight (AMR's reference recipe)
//! runs without gradients and contributes its plain `L_cls(GAP)`, a constant that keeps the
//! logged loss comparable with an unfrozen run; ISL and FSL are not computed for it, since
//! they could not change it. HFPL's reference (on SEAM) likewise adds FSL once per trained
//! network at full weight, and its ISL replaces part of that network's GAP loss.

use rand::Rng;
use tch::{Kind, Tensor};

use super::fsl::{feature_similarity_loss, feature_similarity_loss_windowed, image_at, prediction_vectors};
use super::isl::importance_sampling_loss;
use super::multilabel::multilabel_soft_margin;
use crate::model::amr::cross_supervision;
use crate::model::cam::BranchOutput;
use crate::model::layers::Mode;
use crate::model::Network;

/// FSL's term (docs/methods.md §3): μ of the colour term, σ of the spatial kernel (feature-map
/// pixels), its weight, and the window of the efficient form (0: every pair).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FslTerm {
    pub mu: f64,
    pub sigma: f64,
    pub weight: f64,
    pub window: f64,
}

/// The terms of a method's loss and their settings (`[method]` builds them:
/// `MethodConfig::objective_terms`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObjectiveTerms {
    /// ISL's samples per image and class, and its weight.
    pub isl: Option<(i64, f64)>,
    pub fsl: Option<FslTerm>,
    /// AMR's cross pseudo supervision weight.
    pub lambda_cps: f64,
    /// Whether AMR's spotlight branch trains (and so gets the add-ons).
    pub spotlight_trains: bool,
}

/// A method's loss, built from its terms and the loader's normalisation (FSL compares colours
/// of the un-normalised image).
pub struct Objective {
    isl: Option<(i64, f64)>,
    fsl: Option<FslTerm>,
    lambda_cps: f64,
    spotlight_trains: bool,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Objective {
    pub fn new(terms: ObjectiveTerms, mean: [f32; 3], std: [f32; 3]) -> Objective {
        let ObjectiveTerms { isl, fsl, lambda_cps, spotlight_trains } = terms;
        Objective { isl, fsl, lambda_cps, spotlight_trains, mean, std }
    }

    /// The mean loss over a batch: `images` [N, 3, H, W] normalised, `labels` [N, C]
    /// multi-hot. The forward pass runs in training mode with `compute` precision; `generator`
    /// feeds ISL's draw.
    pub fn loss(&self, net: &Network, images: &Tensor, labels: &Tensor, compute: Kind, generator: &mut impl Rng) -> Tensor {
        match net {
            Network::Cam(net) => {
                let out = net.forward(images, compute, Mode::Train);
                self.add_fsl(self.classification(&out, labels, generator), &out, images, labels)
            }
            Network::Amr(net) => {
                let spotlight = if self.spotlight_trains {
                    net.spotlight.forward(images, compute, Mode::Train)
                } else {
                    tch::no_grad(|| net.spotlight.forward(images, compute, Mode::Train))
                };
                let compensation = net.compensation.forward(images, compute, Mode::Train);
                let spot_cls =
                    if self.spotlight_trains { self.classification(&spotlight, labels, generator) } else { multilabel_soft_margin(&spotlight.logits, labels) };
                let loss = (spot_cls + self.classification(&compensation, labels, generator)) * 0.5
                    + cross_supervision(&spotlight.logit_maps, &compensation.logit_maps) * self.lambda_cps;
                let loss = self.add_fsl(loss, &compensation, images, labels);
                if self.spotlight_trains {
                    self.add_fsl(loss, &spotlight, images, labels)
                } else {
                    loss
                }
            }
        }
    }

    fn classification(&self, out: &BranchOutput, labels: &Tensor, generator: &mut impl Rng) -> Tensor {
        let gap = multilabel_soft_margin(&out.logits, labels);
        match self.isl {
            Some((samples, weight)) => gap * (1.0 - weight) + importance_sampling_loss(&out.logit_maps, labels, samples, generator) * weight,
            None => gap,
        }
    }

    fn add_fsl(&self, loss: Tensor, out: &BranchOutput, images: &Tensor, labels: &Tensor) -> Tensor {
        let Some(fsl) = &self.fsl else { return loss };
        let size = out.logit_maps.size();
        let x = image_at(images, size[2], size[3], self.mean, self.std);
        let y = prediction_vectors(&out.logit_maps, labels);
        let term = if fsl.window > 0.0 {
            feature_similarity_loss_windowed(&x, &y, fsl.mu, fsl.sigma, fsl.window)
        } else {
            feature_similarity_loss(&x, &y, fsl.mu, fsl.sigma)
        };
        loss + term * fsl.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backbone::BackboneSpec;
    use crate::model::resnet::Depth;
    use crate::model::{Base, Model};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];

    fn batch() -> (Tensor, Tensor) {
        tch::manual_seed(4);
        (Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu)), Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 1.0, 0.0]).view([2, 3]))
    }

    /// The terms at the papers' settings (`[method]`'s defaults), the spotlight training.
    fn terms(isl: bool, fsl: bool) -> ObjectiveTerms {
        ObjectiveTerms {
            isl: isl.then_some((10, 0.2)),
            fsl: fsl.then_some(FslTerm { mu: 2.5, sigma: 5.0, weight: 1.0, window: 15.0 }),
            lambda_cps: 0.05,
            spotlight_trains: true,
        }
    }

    fn loss(model: &Model, m: &ObjectiveTerms, images: &Tensor, labels: &Tensor) -> f64 {
        Objective::new(*m, MEAN, STD).loss(&model.net, images, labels, Kind::Float, &mut ChaCha8Rng::seed_from_u64(0)).double_value(&[])
    }

    /// Each combination is the sum of its terms, recomputed here from the network's outputs
    /// with the library's term functions.
    #[test]
    fn terms_add_up_for_every_combination() {
        let (images, labels) = batch();
        let cam = Model::new(Base::Cam, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3, Device::Cpu);
        let Network::Cam(net) = &cam.net else { unreachable!() };
        let out = tch::no_grad(|| net.forward(&images, Kind::Float, Mode::Train));
        let gap = multilabel_soft_margin(&out.logits, &labels).double_value(&[]);
        let is = importance_sampling_loss(&out.logit_maps, &labels, 10, &mut ChaCha8Rng::seed_from_u64(0)).double_value(&[]);
        let fs = feature_similarity_loss(&image_at(&images, 4, 4, MEAN, STD), &prediction_vectors(&out.logit_maps, &labels), 2.5, 5.0).double_value(&[]);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(loss(&cam, &terms(false, false), &images, &labels), gap));
        assert!(close(loss(&cam, &terms(true, false), &images, &labels), 0.8 * gap + 0.2 * is));
        assert!(close(loss(&cam, &terms(false, true), &images, &labels), gap + fs));
        assert!(close(loss(&cam, &terms(true, true), &images, &labels), 0.8 * gap + 0.2 * is + fs));

        let amr = Model::new(Base::Amr, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3, Device::Cpu);
        let Network::Amr(net) = &amr.net else { unreachable!() };
        // Training-mode forward passes update the AMMs' running statistics but do not read
        // them, so the outputs below equal those inside the objective.
        let out = tch::no_grad(|| net.forward(&images, Kind::Float, Mode::Train));
        let gap_s = multilabel_soft_margin(&out.spotlight.logits, &labels).double_value(&[]);
        let gap_c = multilabel_soft_margin(&out.compensation.logits, &labels).double_value(&[]);
        let cps = cross_supervision(&out.spotlight.logit_maps, &out.compensation.logit_maps).double_value(&[]);
        assert!(close(loss(&amr, &terms(false, false), &images, &labels), 0.5 * gap_s + 0.5 * gap_c + 0.05 * cps));
        // Frozen spotlight: the add-ons apply to the compensation branch only (ISL's draw then
        // starts with the compensation branch's maps).
        let mut frozen = terms(true, true);
        frozen.spotlight_trains = false;
        let is_c = importance_sampling_loss(&out.compensation.logit_maps, &labels, 10, &mut ChaCha8Rng::seed_from_u64(0)).double_value(&[]);
        let fs_c = feature_similarity_loss(&image_at(&images, 4, 4, MEAN, STD), &prediction_vectors(&out.compensation.logit_maps, &labels), 2.5, 5.0)
            .double_value(&[]);
        let expected = 0.5 * gap_s + 0.5 * (0.8 * gap_c + 0.2 * is_c) + 0.05 * cps + fs_c;
        assert!(close(loss(&amr, &frozen, &images, &labels), expected));
    }

    /// A frozen spotlight gets no gradient; the compensation branch does, through all terms.
    #[test]
    fn a_frozen_spotlight_gets_no_gradient() {
        let (images, labels) = batch();
        let amr = Model::new(Base::Amr, BackboneSpec::resnet(Depth::Resnet18, [2, 2, 2, 1]), 3, Device::Cpu);
        amr.freeze("spotlight.");
        let mut m = terms(true, true);
        m.spotlight_trains = false;
        Objective::new(m, MEAN, STD).loss(&amr.net, &images, &labels, Kind::Float, &mut ChaCha8Rng::seed_from_u64(0)).backward();
        let vars = amr.vs.variables();
        assert!(!vars["spotlight.layer4.1.conv2.weight"].grad().defined());
        assert!(vars["compensation.layer4.1.conv2.weight"].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Into the AMM's parameters (not necessarily every one: at a random start the channel
        // MLP's hidden ReLUs can all be 0 for a batch, which zeroes its last weight's gradient).
        let amm: f64 = vars
            .iter()
            .filter(|(name, v)| name.starts_with("compensation.layer1.0.amm.") && v.grad().defined())
            .map(|(_, v)| v.grad().abs().sum(Kind::Float).double_value(&[]))
            .sum();
        assert!(amm > 0.0, "no gradient reaches compensation.layer1.0.amm");
        assert!(vars["compensation.layer1.0.amm.spatial.conv.weight"].grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
