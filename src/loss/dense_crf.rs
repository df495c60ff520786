//! The dense-CRF regularized loss of "On Regularized Losses for Weakly-supervised CNN
//! Segmentation" (Tang et al. 2018; reference: meng-tang/rloss, `DenseCRFLoss.py`), as
//! docs/segmenter.md states it:
//!
//! `E = −(w/N) Σ_n Σ_k S̃_nkᵀ W S̃_nk`, `S̃ = S ⊙ ROI`,
//!
//! on the image and the softmax `S` downscaled by `scale` (0.5: the image by nearest
//! neighbour, the softmax bilinearly, the region of interest by nearest neighbour; σ_xy scaled
//! with them), N the images of the batch, W the unnormalised Gaussian bilateral kernel over
//! (x/σ_xy, y/σ_xy, rgb/σ_rgb) applied with the permutohedral lattice (`refine::permutohedral`,
//! the filter the reference's lattice computes). The gradient with respect to S̃ is
//! `−2wWS̃/N` (W is symmetric), and it flows back through the ROI, the downscale and the softmax.

use tch::{Kind, Tensor};

use crate::refine::crf::{bilateral_features, pixel_major};
use crate::refine::Lattice;

/// The loss's settings (`[seg.loss.crf]`): w, its bilateral kernel's widths σ_xy and σ_rgb (named
/// as the dense CRF's appearance kernel, which it is) and the scale.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DenseCrfLoss {
    /// w: 2e-9 for VOC crops of 513 px; the energy grows with the square of the pixel count.
    pub weight: f64,
    /// σ_rgb.
    pub appearance_srgb: f32,
    /// σ_xy, in pixels of the input (scaled with it).
    pub appearance_sxy: f32,
    /// The image and softmax are downscaled by this before the loss.
    pub scale: f64,
}

/// The reference's defaults: w 2e-9, σ_rgb 15, σ_xy 100, scale 0.5.
impl Default for DenseCrfLoss {
    fn default() -> Self {
        DenseCrfLoss { weight: 2e-9, appearance_srgb: 15.0, appearance_sxy: 100.0, scale: 0.5 }
    }
}

impl DenseCrfLoss {
    /// `probabilities` [N, K, H, W] (the softmax, with its graph), `rgb` [N, 3, H, W] in 0..255
    /// and `roi` [N, H, W] (1 on image pixels, 0 on padding). A scalar whose value is E and
    /// whose gradient with respect to `probabilities` is E's.
    pub fn loss(&self, probabilities: &Tensor, rgb: &Tensor, roi: &Tensor) -> Tensor {
        self.loss_with_features(probabilities, rgb, roi, None)
    }

    /// As [`DenseCrfLoss::loss`], with `extra` kernel features [N, d, H, W] (d ≤ 3, already
    /// divided by their σ; no gradient) appended to each pixel's (x, y, rgb) after the same
    /// bilinear downscale as the softmax: W becomes the product of the bilateral kernel and a
    /// Gaussian kernel on them (the dynamic feature regularized loss, `loss::dfr`).
    pub fn loss_with_features(&self, probabilities: &Tensor, rgb: &Tensor, roi: &Tensor, extra: Option<&Tensor>) -> Tensor {
        let size = probabilities.size();
        let (n, k) = (size[0], size[1]);
        let side = |s: i64| ((s as f64) * self.scale).floor() as i64;
        let (h, w) = (side(size[2]), side(size[3]));
        // The scale factor itself, as `F.interpolate(scale_factor=…)` passes it: libtorch maps output
        // pixel i to input i / scale.
        let nearest = |t: &Tensor| t.upsample_nearest2d([h, w], Some(self.scale), Some(self.scale));
        let roi = nearest(&roi.unsqueeze(1).to_kind(Kind::Float));
        let rgb = nearest(&rgb.to_kind(Kind::Float));
        let bilinear = |t: &Tensor| t.upsample_bilinear2d([h, w], false, Some(self.scale), Some(self.scale));
        let masked = bilinear(probabilities) * &roi;
        let extra = extra.map(|e| bilinear(&e.detach().to_kind(Kind::Float)));
        let sigma_xy = self.appearance_sxy * self.scale as f32;
        let (energy, filtered) = tch::no_grad(|| {
            let mut energy = 0.0;
            let mut filtered = Vec::with_capacity(n as usize);
            for i in 0..n {
                let features = kernel_features(&rgb.get(i), extra.as_ref().map(|e| e.get(i)).as_ref(), self.appearance_srgb, sigma_xy);
                let (e, ws) = energy_of_image(&masked.get(i), &features);
                energy += e;
                filtered.push(ws);
            }
            (energy, Tensor::stack(&filtered, 0).to_device(probabilities.device()))
        });
        debug_assert_eq!(filtered.size(), [n, k, h, w]);
        let factor = self.weight / n as f64;
        // The gradient of `surrogate` with respect to S̃ is −2w·WS̃/N; its value is replaced by E.
        let surrogate = (&masked * &filtered).sum(Kind::Float) * (-2.0 * factor);
        &surrogate - surrogate.detach() + factor * energy
    }
}

/// Each pixel's kernel features, pixel-major: (x/σ_xy, y/σ_xy, rgb/σ_rgb) of `rgb` [3, h, w]
/// (0..255), then the values of `extra` [d, h, w] when given. Returns the features and their
/// dimension.
pub(crate) fn kernel_features(rgb: &Tensor, extra: Option<&Tensor>, sigma_rgb: f32, sigma_xy: f32) -> (Vec<f32>, usize) {
    let size = rgb.size();
    let (h, w) = (size[1] as usize, size[2] as usize);
    let shallow = bilateral_features(&pixel_major(rgb), w, h, sigma_xy, sigma_rgb);
    let Some(extra) = extra else {
        return (shallow, 5);
    };
    let d = extra.size()[0] as usize;
    let deep = pixel_major(extra);
    let features = shallow.chunks_exact(5).zip(deep.chunks_exact(d)).flat_map(|(s, e)| s.iter().chain(e).copied()).collect();
    (features, 5 + d)
}

/// `(−Σ_k S̃_kᵀ W S̃_k, W S̃)` of one image: `masked` [K, h, w] and the kernel's `features`.
fn energy_of_image(masked: &Tensor, features: &(Vec<f32>, usize)) -> (f64, Tensor) {
    let size = masked.size();
    let (k, h, w) = (size[0] as usize, size[1] as usize, size[2] as usize);
    let seg = pixel_major(masked);
    let filtered = gaussian_filter(&features.0, features.1, &seg, k);
    let energy = -seg.iter().zip(&filtered).map(|(&s, &f)| s as f64 * f as f64).sum::<f64>();
    let tensor = Tensor::from_slice(&filtered).view([h as i64, w as i64, k as i64]).permute([2, 0, 1]).contiguous();
    (energy, tensor)
}

/// `W·S` with W the Gaussian kernel `exp(−½‖f_i − f_j‖²)` over `features` (pixels × `dim`) by
/// the permutohedral lattice; `seg` and the result are pixels × `channels`.
pub fn gaussian_filter(features: &[f32], dim: usize, seg: &[f32], channels: usize) -> Vec<f32> {
    let mut out = vec![0f32; seg.len()];
    Lattice::new(features, dim).filter(seg, channels, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::testing::central_difference;
    use tch::Device;

    /// `W·S` for one image: `rgb` (pixels × 3, row-major, 0..255) gives the features
    /// (x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb); `seg` and the result are pixels × `channels`.
    fn bilateral_filter(rgb: &[f32], width: usize, height: usize, sigma_rgb: f32, sigma_xy: f32, seg: &[f32], channels: usize) -> Vec<f32> {
        gaussian_filter(&bilateral_features(rgb, width, height, sigma_xy, sigma_rgb), 5, seg, channels)
    }

    /// The exact kernel `Σ_j exp(−½‖f_i − f_j‖²) s_j` (the self term included), in f64.
    fn exact_filter(rgb: &[f32], width: usize, height: usize, sigma_rgb: f32, sigma_xy: f32, seg: &[f32], channels: usize) -> Vec<f64> {
        let feature = |p: usize| {
            let (x, y) = ((p % width) as f64, (p / width) as f64);
            [
                x / sigma_xy as f64,
                y / sigma_xy as f64,
                rgb[3 * p] as f64 / sigma_rgb as f64,
                rgb[3 * p + 1] as f64 / sigma_rgb as f64,
                rgb[3 * p + 2] as f64 / sigma_rgb as f64,
            ]
        };
        let pixels = width * height;
        let mut out = vec![0f64; pixels * channels];
        for i in 0..pixels {
            let fi = feature(i);
            for j in 0..pixels {
                let fj = feature(j);
                let d2: f64 = fi.iter().zip(&fj).map(|(a, b)| (a - b) * (a - b)).sum();
                let kernel = (-0.5 * d2).exp();
                for c in 0..channels {
                    out[i * channels + c] += kernel * seg[j * channels + c] as f64;
                }
            }
        }
        out
    }

    /// A small two-region image with a soft segmentation: the lattice's W·S follows the exact
    /// Gaussian kernel up to densecrf's constant factor (the lattice blurs with a kernel of
    /// about the same width and its own scale), so E's value and gradient follow it too.
    #[test]
    fn lattice_filter_follows_the_exact_kernel() {
        let (width, height, channels) = (12, 10, 2);
        let mut rgb = Vec::new();
        let mut seg = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let left = x < 6;
                rgb.extend(if left { [200f32, 40.0, 40.0] } else { [30.0, 60.0, 190.0] });
                let p = if left { 0.8 } else { 0.3 } + 0.01 * y as f32;
                seg.extend([p, 1.0 - p]);
            }
        }
        let (sigma_rgb, sigma_xy) = (15.0, 3.0);
        let lattice = bilateral_filter(&rgb, width, height, sigma_rgb, sigma_xy, &seg, channels);
        let exact = exact_filter(&rgb, width, height, sigma_rgb, sigma_xy, &seg, channels);
        // The constant: least squares of lattice against exact.
        let scale = lattice.iter().zip(&exact).map(|(&l, &e)| l as f64 * e).sum::<f64>() / exact.iter().map(|e| e * e).sum::<f64>();
        let worst = lattice.iter().zip(&exact).map(|(&l, &e)| ((l as f64 - scale * e) / (scale * e)).abs()).fold(0.0, f64::max);
        assert!(worst < 0.25, "the lattice is the Gaussian kernel × {scale:.3} to within {worst:.3}");
        // Colour separates the regions: pixel 0 (left, p ≈ 0.8) gathers little of the right
        // region's (p ≈ 0.3) mass, so its second channel stays well below its first.
        let left_from_right = exact[1] / exact[0];
        assert!(left_from_right < 0.3, "{left_from_right}");
    }

    /// E and its gradient through the whole loss, on a 1-image batch with no downscale and no
    /// padding: the value is −(w/N)·Σ S·(W S) with the lattice's W, the gradient −2w·WS/N
    /// (checked against central finite differences of E in two entries).
    #[test]
    fn value_and_gradient_match_the_formula_and_finite_differences() {
        let (k, h, w) = (2i64, 6i64, 8i64);
        let loss = DenseCrfLoss { weight: 0.01, appearance_srgb: 20.0, appearance_sxy: 2.0, scale: 1.0 };
        tch::manual_seed(1);
        let logits = Tensor::randn([1, k, h, w], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let rgb = (Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 255.0).round();
        let roi = Tensor::ones([1, h, w], (Kind::Float, Device::Cpu));
        let energy = |logits: &Tensor| loss.loss(&logits.softmax(1, Kind::Float), &rgb, &roi);
        let value = energy(&logits);
        // The value by the formula, with the same filter.
        let s = logits.softmax(1, Kind::Float).detach();
        let colours: Vec<f32> = Vec::try_from(rgb.get(0).permute([1, 2, 0]).flatten(0, -1)).unwrap();
        let seg: Vec<f32> = Vec::try_from(s.get(0).permute([1, 2, 0]).flatten(0, -1)).unwrap();
        let ws = bilateral_filter(&colours, w as usize, h as usize, 20.0, 2.0, &seg, k as usize);
        let expected = -0.01 * seg.iter().zip(&ws).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
        assert!((value.double_value(&[]) - expected).abs() < 1e-6 * expected.abs(), "{} vs {expected}", value.double_value(&[]));
        value.backward();
        let grad = logits.grad();
        for index in [[0, 0, 1, 2], [0, 1, 4, 5]] {
            let numeric = central_difference(energy, &logits, index, 1e-3);
            let analytic = grad.double_value(&index);
            assert!((numeric - analytic).abs() < 1e-2 * analytic.abs().max(1e-3), "{index:?}: {analytic} vs finite differences {numeric}");
        }
    }

    /// Padding (ROI 0) is excluded: its probabilities get no gradient and add nothing.
    #[test]
    fn padding_is_excluded() {
        let loss = DenseCrfLoss { weight: 1.0, appearance_srgb: 15.0, appearance_sxy: 5.0, scale: 0.5 };
        let logits = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let rgb = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)) * 255.0;
        let roi = Tensor::zeros([2, 8, 8], (Kind::Float, Device::Cpu));
        let value = loss.loss(&logits.softmax(1, Kind::Float), &rgb, &roi);
        value.backward();
        assert_eq!(value.double_value(&[]), 0.0);
        assert_eq!(logits.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
