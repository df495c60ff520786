//! The dynamic feature regularized loss (DFR; Zhang, Xiao and Zhao, "Dynamic Feature Regularized
//! Loss for Weakly Supervised Semantic Segmentation", 2021), as docs/methods.md §10 reads it:
//!
//! - **The regularizer**: the dense-CRF loss (`loss::dense_crf`) whose kernel is the product of
//!   the shallow bilateral kernel and a Gaussian kernel on the segmenter's deep features, re-read
//!   every step: `W_ij = exp(−‖p_i − p_j‖²/2σ_xy² − ‖I_i − I_j‖²/2σ_rgb² − ‖g_i − g_j‖²/2σ_f²)`,
//!   g the unit-length output of the feature consistency head, taken without gradient (the
//!   regularizer moves the segmentation, never the features it is measured with: it would
//!   otherwise pull every feature together to raise W everywhere).
//! - **The feature consistency head's objective**: on pairs of scribbled pixels, the kernel's deep
//!   factor `a_ij = exp(−‖g_i − g_j‖²/2σ_f²)` is trained toward 1 for pairs of one class and
//!   toward 0 for pairs of two, by binary cross-entropy, the positive and the negative pairs
//!   averaged apart and the two averages averaged (IRNet's balance of its affinity loss).

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::segmentation::{resize_labels, IGNORE};

/// `[seg.loss.dfr]`: the deep kernel and the consistency head. The shallow kernel, the weight w
/// and the scale are the dense-CRF loss's (`[seg.loss.crf]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DfrSettings {
    /// d: the consistency head's output channels, the deep dimensions of the kernel (1 to 3: the
    /// lattice takes 8 with the 5 shallow ones).
    pub feature_dims: i64,
    /// σ_f of the deep kernel, on unit vectors (‖g_i − g_j‖² ≤ 4).
    pub feature_sigma: f64,
    /// The consistency loss's weight in the total.
    pub consistency_weight: f64,
    /// Scribbled pixels per image the consistency loss pairs: evenly spaced in raster order
    /// among those the (downscaled) scribbles label, every pair of them.
    pub consistency_points: i64,
}

impl Default for DfrSettings {
    fn default() -> Self {
        DfrSettings { feature_dims: 3, feature_sigma: 0.5, consistency_weight: 1.0, consistency_points: 64 }
    }
}

/// `t` [N, C, h, w] divided by its L2 norm over the channels.
pub fn unit_channels(t: &Tensor) -> Tensor {
    t / t.norm_scalaropt_dim(2.0, [1].as_slice(), true).clamp_min(1e-12)
}

impl DfrSettings {
    /// The deep part of the kernel's features from `embedding` [N, d, h, w] (unit vectors): at
    /// `size` (bilinear), unit length again, divided by σ_f; without gradient.
    pub fn kernel_features(&self, embedding: &Tensor, size: [i64; 2]) -> Tensor {
        let resized = embedding.detach().upsample_bilinear2d(size, false, None, None);
        unit_channels(&resized) / self.feature_sigma
    }

    /// The consistency loss of `embedding` [N, d, h, w] (unit vectors, with its graph) against
    /// the scribbles `labels` [N, H, W] (255 unlabelled), resized to h×w by nearest neighbour:
    /// the mean over the images of each image's balanced binary cross-entropy (0 for an image
    /// with fewer than two labelled pixels).
    pub fn consistency(&self, embedding: &Tensor, labels: &Tensor) -> Tensor {
        let size = embedding.size();
        let labels = resize_labels(labels, size[2], size[3]).to_kind(Kind::Int64).to_device(Device::Cpu);
        let per_image: Vec<Tensor> = (0..size[0]).map(|i| self.consistency_of_image(&embedding.get(i), &labels.get(i))).collect();
        Tensor::stack(&per_image, 0).mean(embedding.kind())
    }

    /// One image's term: `embedding` [d, h, w], `labels` [h, w] on the CPU.
    fn consistency_of_image(&self, embedding: &Tensor, labels: &Tensor) -> Tensor {
        let flat: Vec<i64> = Vec::try_from(labels.flatten(0, -1)).expect("int64 labels convert");
        let labelled: Vec<usize> = flat.iter().enumerate().filter(|(_, &l)| l != IGNORE).map(|(p, _)| p).collect();
        let m = labelled.len().min(self.consistency_points.max(0) as usize);
        // A zero that keeps the graph, for images with nothing to pair.
        let kind = embedding.kind();
        let zero = embedding.sum(kind) * 0.0;
        if m < 2 {
            return zero;
        }
        let chosen: Vec<i64> = (0..m).map(|k| labelled[k * labelled.len() / m] as i64).collect();
        let device = embedding.device();
        let g = embedding.flatten(1, -1).index_select(1, &Tensor::from_slice(&chosen).to_device(device)).transpose(0, 1);
        let classes = Tensor::from_slice(&chosen.iter().map(|&p| flat[p as usize]).collect::<Vec<i64>>()).to_device(device);
        let squared = (g.unsqueeze(1) - g.unsqueeze(0)).square().sum_dim_intlist([2].as_slice(), false, kind);
        let affinity = (squared * (-0.5 / (self.feature_sigma * self.feature_sigma))).exp().clamp(1e-6, 1.0 - 1e-6);
        let same = classes.unsqueeze(1).eq_tensor(&classes.unsqueeze(0));
        let off_diagonal = Tensor::eye(m as i64, (Kind::Bool, device)).logical_not();
        let mean_over = |pairs: Tensor, loss: Tensor| {
            let pairs = pairs.to_kind(kind);
            let count = pairs.sum(kind).double_value(&[]);
            (count > 0.0).then(|| (loss * pairs).sum(kind) / count)
        };
        let positive = mean_over(same.logical_and(&off_diagonal), -affinity.log());
        let negative = mean_over(same.logical_not(), -(affinity.ones_like() - &affinity).log());
        match (positive, negative) {
            (Some(p), Some(n)) => (p + n) * 0.5,
            (Some(term), None) | (None, Some(term)) => term,
            (None, None) => zero,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::dense_crf::{gaussian_filter, kernel_features, DenseCrfLoss};
    use crate::loss::testing::central_difference;
    use crate::refine::crf::{bilateral_features, pixel_major};

    /// Three pixels, g = (1, 0), (1, 0), (0, 1), classes 1, 1, 0, σ_f = 1: the positive pairs
    /// (0, 1) have a = 1 (clamped to 1 − 1e-6), the negative pairs ‖g_i − g_j‖² = 2, a = e⁻¹;
    /// the loss is ½(−ln(1 − 1e-6) − ln(1 − e⁻¹)).
    #[test]
    fn consistency_matches_the_hand_computed_value() {
        let embedding = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0, 0.0, 1.0]).view([1, 2, 1, 3]);
        let labels = Tensor::from_slice(&[1i64, 1, 0]).view([1, 1, 3]);
        let settings = DfrSettings { feature_sigma: 1.0, ..DfrSettings::default() };
        let value = settings.consistency(&embedding, &labels).double_value(&[]);
        let expected = 0.5 * (-(1.0f64 - 1e-6).ln() - (1.0 - (-1.0f64).exp()).ln());
        assert!((value - expected).abs() < 1e-5, "{value} vs {expected}");
        // Unlabelled pixels take no part: labelling the third 255 leaves one positive pair.
        let one_class = settings.consistency(&embedding, &Tensor::from_slice(&[1i64, 1, 255]).view([1, 1, 3])).double_value(&[]);
        assert!(one_class.abs() < 1e-5, "{one_class}");
        // Nothing to pair: 0 and a zero gradient.
        let embedding = embedding.set_requires_grad(true);
        let none = settings.consistency(&embedding, &Tensor::from_slice(&[255i64, 255, 1]).view([1, 1, 3]));
        none.backward();
        assert_eq!(none.double_value(&[]), 0.0);
        assert_eq!(embedding.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// The consistency loss's gradient against central finite differences, on a random
    /// embedding of two images.
    #[test]
    fn consistency_gradient_matches_finite_differences() {
        tch::manual_seed(3);
        let embedding = Tensor::randn([2, 3, 4, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::randint(3, [2, 4, 5], (Kind::Int64, Device::Cpu));
        let settings = DfrSettings { consistency_points: 12, ..DfrSettings::default() };
        let loss = |e: &Tensor| settings.consistency(&unit_channels(e), &labels);
        loss(&embedding).backward();
        let grad = embedding.grad();
        for index in [[0, 0, 0, 0], [0, 2, 1, 3], [1, 1, 2, 2]] {
            let numeric = central_difference(loss, &embedding, index, 1e-5);
            let analytic = grad.double_value(&index);
            assert!((numeric - analytic).abs() < 1e-4 * analytic.abs().max(1e-2), "{index:?}: {analytic} vs {numeric}");
        }
    }

    /// The exact product kernel over (x/σ_xy, y/σ_xy, rgb/σ_rgb, g/σ_f): `Σ_j exp(−½‖f_i − f_j‖²) s_j`.
    fn exact_filter(features: &[f32], dim: usize, seg: &[f32], channels: usize) -> Vec<f64> {
        let pixels = features.len() / dim;
        let mut out = vec![0f64; pixels * channels];
        for i in 0..pixels {
            for j in 0..pixels {
                let d2: f64 = (0..dim).map(|k| (features[i * dim + k] as f64 - features[j * dim + k] as f64).powi(2)).sum();
                for c in 0..channels {
                    out[i * channels + c] += (-0.5 * d2).exp() * seg[j * channels + c] as f64;
                }
            }
        }
        out
    }

    /// A 12×10 image of one colour whose deep features split it in two halves (g = e₀ on the
    /// left, e₁ on the right): the lattice's 8-dimensional product kernel follows the exact
    /// O(N²) kernel up to the lattice's constant, and the deep factor cuts the mass a pixel
    /// gathers from the other half, as colour would.
    #[test]
    fn the_product_kernel_follows_the_exact_kernel() {
        let (h, w) = (10i64, 12i64);
        let settings = DfrSettings::default();
        let rgb = Tensor::full([3, h, w], 120.0, (Kind::Float, Device::Cpu));
        let left = Tensor::arange(w, (Kind::Int64, Device::Cpu)).lt(6).view([1, 1, 1, w]).expand([1, 1, h, w], false).to_kind(Kind::Float);
        let embedding = Tensor::cat(&[left.shallow_clone(), left.ones_like() - &left, left.zeros_like()], 1);
        let deep = settings.kernel_features(&embedding, [h, w]);
        let (features, dim) = kernel_features(&rgb, Some(&deep.get(0)), 15.0, 4.0);
        assert_eq!(dim, 8);
        tch::manual_seed(5);
        let seg = pixel_major(&Tensor::rand([2, h, w], (Kind::Float, Device::Cpu)));
        let lattice = gaussian_filter(&features, 8, &seg, 2);
        let exact = exact_filter(&features, 8, &seg, 2);
        let scale = lattice.iter().zip(&exact).map(|(&l, &e)| l as f64 * e).sum::<f64>() / exact.iter().map(|e| e * e).sum::<f64>();
        let worst = lattice.iter().zip(&exact).map(|(&l, &e)| ((l as f64 - scale * e) / (scale * e)).abs()).fold(0.0, f64::max);
        assert!(worst < 0.3, "the 8-d lattice is the exact kernel × {scale:.3} to within {worst:.3}");
        // What pixel (5, 5) on the left gathers from (6, 5) on the right is
        // exp(−½‖e₀ − e₁‖²/σ_f²) = exp(−½·2/0.25) = e⁻⁴ times what the shallow kernel alone gives.
        let shallow = bilateral_features(&pixel_major(&rgb), w as usize, h as usize, 4.0, 15.0);
        let from = |features: &[f32], dim: usize| {
            let mut one_hot = vec![0f32; (h * w) as usize];
            one_hot[5 * w as usize + 6] = 1.0;
            exact_filter(features, dim, &one_hot, 1)[5 * w as usize + 5]
        };
        let across = from(&features, 8) / from(&shallow, 5);
        assert!((across - (-4.0f64).exp()).abs() < 1e-6, "{across}");
    }

    /// The regularizer through the whole loss on a 6×8 image with random colours and deep
    /// features: its value is −(w/N)·Σ S·(W S) with the lattice's product kernel, and its
    /// gradient matches central finite differences.
    #[test]
    fn regularizer_value_and_gradient_match_the_formula_and_finite_differences() {
        let (k, h, w) = (2i64, 6i64, 8i64);
        let crf = DenseCrfLoss { weight: 0.01, appearance_srgb: 20.0, appearance_sxy: 2.0, scale: 1.0 };
        let settings = DfrSettings::default();
        tch::manual_seed(1);
        let rgb = (Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 255.0).round();
        let deep = settings.kernel_features(&unit_channels(&Tensor::randn([1, 3, h, w], (Kind::Float, Device::Cpu))), [h, w]);
        let roi = Tensor::ones([1, h, w], (Kind::Float, Device::Cpu));
        let logits = Tensor::randn([1, k, h, w], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let energy = |l: &Tensor| crf.loss_with_features(&l.softmax(1, Kind::Double), &rgb, &roi, Some(&deep));
        let value = energy(&logits);
        let (features, dim) = kernel_features(&rgb.get(0), Some(&deep.get(0)), 20.0, 2.0);
        let seg = pixel_major(&logits.softmax(1, Kind::Float).detach().get(0));
        let filtered = gaussian_filter(&features, dim, &seg, k as usize);
        let expected = -0.01 * seg.iter().zip(&filtered).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
        assert!((value.double_value(&[]) - expected).abs() < 1e-6 * expected.abs(), "{} vs {expected}", value.double_value(&[]));
        value.backward();
        let grad = logits.grad();
        for index in [[0, 0, 1, 2], [0, 1, 4, 5], [0, 0, 5, 7]] {
            let numeric = central_difference(energy, &logits, index, 1e-3);
            let analytic = grad.double_value(&index);
            assert!((numeric - analytic).abs() < 1e-2 * analytic.abs().max(1e-3), "{index:?}: {analytic} vs finite differences {numeric}");
        }
    }
}
