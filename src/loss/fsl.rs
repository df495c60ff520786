//! HFPL's feature similarity loss (docs/methods.md, FSL), binomial form. For pixel pairs (i, j) of
//! the feature grid:
//! - `dx = clamp(‖x_i − x_j‖₁ / 3, 0, 1)`, `dx' = tanh(μ + log((dx + ε)/(1 − dx + ε)))`: close
//!   to −1 for similar colours, positive across colour edges (the sign changes at dx = σ(−μ));
//! - `dy = ½ ‖y_i − y_j‖₂²` between the prediction vectors;
//! - `k = exp(−½ (d_ij/σ)²) / (2πσ²)` with `d_ij` the pixel distance;
//! - `L = −(1/(N h w)) Σ_n Σ_{i,j} k · dy · dx'`, over ordered pairs.
//!
//! Minimising it pulls predictions together inside colour regions and pushes them apart across
//! edges. [`feature_similarity_loss`] is the exact O((hw)²) pair sum; [`feature_similarity_loss_windowed`]
//! visits only pairs within a radius (the kernel makes far pairs negligible: at 3σ it is
//! e^−4.5 ≈ 1% of its peak) and equals the exact sum whenever the window covers the grid.

use tch::{Device, Kind, Tensor};

/// ε of the colour-distance logit and of the prediction normalisation.
const EPS: f64 = 1e-5;

/// `dx'` from colour distances `dx` (already divided by 3).
fn colour_term(dx: &Tensor, mu: f64) -> Tensor {
    let dx = dx.clamp(0.0, 1.0);
    ((&dx + EPS) / ((-&dx) + (1.0 + EPS))).log().g_add_scalar(mu).tanh()
}

/// The spatial kernel `k(d)` for squared distances `d2`.
fn kernel(d2: &Tensor, sigma: f64) -> Tensor {
    (d2 * (-0.5 / (sigma * sigma))).exp() / (2.0 * std::f64::consts::PI * sigma * sigma)
}

fn check_shapes(image: &Tensor, predictions: &Tensor) -> (i64, i64, i64) {
    let (xs, ys) = (image.size(), predictions.size());
    assert!(
        xs.len() == 4 && ys.len() == 4 && xs[0] == ys[0] && xs[2..] == ys[2..] && xs[1] == 3,
        "feature_similarity_loss: image [N, 3, h, w] and predictions [N, K, h, w] expected, got {xs:?} and {ys:?}"
    );
    (xs[0], xs[2], xs[3])
}

/// The exact pair sum. `image`: [N, 3, h, w] RGB in [0, 1] (values outside are clamped);
/// `predictions`: [N, K, h, w] prediction vectors per pixel (any values; the method uses
/// [`prediction_vectors`], in [0, 1]); `mu` μ, `sigma` σ in pixels. Returns the scalar loss;
/// gradients flow into `predictions` (the image term is a constant). Memory O(N (hw)²).
pub fn feature_similarity_loss(image: &Tensor, predictions: &Tensor, mu: f64, sigma: f64) -> Tensor {
    let (n, h, w) = check_shapes(image, predictions);
    let device = predictions.device();
    let x = image.to_kind(Kind::Float).clamp(0.0, 1.0).flatten(2, -1).transpose(1, 2); // [N, hw, 3]
    let colour = tch::no_grad(|| colour_term(&(Tensor::cdist(&x, &x, 1.0, None::<i64>) / 3.0), mu));
    let y = predictions.to_kind(Kind::Float).flatten(2, -1).transpose(1, 2); // [N, hw, K]
                                                                             // ½‖y_i − y_j‖² = ½(‖y_i‖² + ‖y_j‖²) − y_i·y_j: smooth everywhere (cdist's square root is not at 0).
    let norms = y.square().sum_dim_intlist([2].as_slice(), true, Kind::Float);
    let dy = (&norms + norms.transpose(1, 2)) * 0.5 - y.bmm(&y.transpose(1, 2));
    let k = kernel(&pairwise_squared_distances(h, w, device), sigma);
    -(k * dy * colour).sum(Kind::Float) / (n * h * w) as f64
}

/// [hw, hw] squared pixel distances of an h×w grid (row-major pixels).
fn pairwise_squared_distances(h: i64, w: i64, device: Device) -> Tensor {
    let rows = Tensor::arange(h, (Kind::Float, device)).repeat_interleave_self_int(w, None, None);
    let cols = Tensor::arange(w, (Kind::Float, device)).repeat([h]);
    let dr = rows.unsqueeze(1) - rows.unsqueeze(0);
    let dc = cols.unsqueeze(1) - cols.unsqueeze(0);
    dr.square() + dc.square()
}

/// The pair sum over pairs at distance ≤ `window` pixels, offset by offset: memory O(N K h w),
/// time O(window² N K h w). Same arguments and value range as [`feature_similarity_loss`];
/// identical to it (up to rounding) when `window` ≥ the grid's diagonal.
pub fn feature_similarity_loss_windowed(image: &Tensor, predictions: &Tensor, mu: f64, sigma: f64, window: f64) -> Tensor {
    let (n, h, w) = check_shapes(image, predictions);
    let x = image.to_kind(Kind::Float).clamp(0.0, 1.0);
    let y = predictions.to_kind(Kind::Float);
    let reach = window.floor() as i64;
    let mut total = Tensor::zeros([], (Kind::Float, y.device()));
    // Each unordered pair once, from the offsets (a, b) of one half-plane, counted twice below.
    for a in 0..=reach.min(h - 1) {
        for b in -reach.min(w - 1)..=reach.min(w - 1) {
            let d2 = (a * a + b * b) as f64;
            if (a == 0 && b <= 0) || d2 > window * window {
                continue;
            }
            // Pixel (r, c) pairs with (r + a, c + b): rows 0..h−a, columns c0..c1.
            let (c0, c1) = ((-b).max(0), w - b.max(0));
            let first = |t: &Tensor| t.narrow(2, 0, h - a).narrow(3, c0, c1 - c0);
            let second = |t: &Tensor| t.narrow(2, a, h - a).narrow(3, c0 + b, c1 - c0);
            let colour = tch::no_grad(|| colour_term(&((first(&x) - second(&x)).abs().sum_dim_intlist([1].as_slice(), false, Kind::Float) / 3.0), mu));
            let dy = (first(&y) - second(&y)).square().sum_dim_intlist([1].as_slice(), false, Kind::Float) * 0.5;
            let k = kernel(&Tensor::from(d2), sigma).double_value(&[]);
            total += (dy * colour).sum(Kind::Float) * (2.0 * k);
        }
    }
    -total / (n * h * w) as f64
}

/// The prediction vectors FSL compares (docs/methods.md, FSL), from class logit maps `Z`
/// ([N, C, h, w], no ReLU) and labels `targets` ([N, C] multi-hot): each map is ReLU'd,
/// min-max normalised per image and class, `(ReLU(Z) − min − ε)₊ / (max − min + ε)`, and
/// multiplied by its label (absent classes are 0); a background channel `1 − max_c` comes
/// first. Returns [N, C+1, h, w] in [0, 1], differentiable with respect to `Z`.
pub fn prediction_vectors(logit_map: &Tensor, targets: &Tensor) -> Tensor {
    let a = logit_map.relu();
    let dims = [2i64, 3];
    let max = a.amax(dims.as_slice(), true);
    let min = a.amin(dims.as_slice(), true);
    let normalised = (&a - &min - EPS).relu() / (max - min + EPS);
    let classes = normalised * targets.to_kind(Kind::Float).unsqueeze(-1).unsqueeze(-1);
    let background = 1.0 - classes.amax([1].as_slice(), true);
    Tensor::cat(&[background, classes], 1)
}

/// The image FSL compares colours of: normalised images [N, 3, H, W] (`(x − mean)/std`)
/// resized to h×w (bilinear, corners aligned), the normalisation undone, clamped to [0, 1].
pub fn image_at(images: &Tensor, h: i64, w: i64, mean: [f32; 3], std: [f32; 3]) -> Tensor {
    let column = |v: [f32; 3]| Tensor::from_slice(&v).view([1, 3, 1, 1]).to_device(images.device());
    tch::no_grad(|| (images.to_kind(Kind::Float).upsample_bilinear2d([h, w], true, None, None) * column(std) + column(mean)).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss by its definition, in f64 loops over ordered pairs, with an optional cutoff.
    fn reference(x: &[Vec<[f64; 3]>], y: &[Vec<Vec<f64>>], h: usize, w: usize, mu: f64, sigma: f64, cutoff: f64) -> f64 {
        let mut sum = 0.0;
        for (xn, yn) in x.iter().zip(y) {
            for i in 0..h * w {
                for j in 0..h * w {
                    let (ri, ci, rj, cj) = ((i / w) as f64, (i % w) as f64, (j / w) as f64, (j % w) as f64);
                    let d2 = (ri - rj).powi(2) + (ci - cj).powi(2);
                    if d2 > cutoff * cutoff {
                        continue;
                    }
                    let dx = ((0..3).map(|c| (xn[i][c] - xn[j][c]).abs()).sum::<f64>() / 3.0).clamp(0.0, 1.0);
                    let dxp = (mu + ((dx + 1e-5) / (1.0 - dx + 1e-5)).ln()).tanh();
                    let dy = 0.5 * yn[i].iter().zip(&yn[j]).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
                    let k = (-0.5 * d2 / (sigma * sigma)).exp() / (2.0 * std::f64::consts::PI * sigma * sigma);
                    sum += k * dy * dxp;
                }
            }
        }
        -sum / (x.len() * h * w) as f64
    }

    /// Tensors → the per-pixel vectors `reference` reads.
    /// Per image: each pixel's colour, and each pixel's prediction vector.
    type Pixels = (Vec<Vec<[f64; 3]>>, Vec<Vec<Vec<f64>>>);

    fn unpack(image: &Tensor, predictions: &Tensor) -> Pixels {
        let (n, k, h, w) = predictions.size4().unwrap();
        let xv: Vec<f64> = Vec::try_from(image.to_kind(Kind::Double).clamp(0.0, 1.0).permute([0, 2, 3, 1]).flatten(0, -1)).unwrap();
        let yv: Vec<f64> = Vec::try_from(predictions.to_kind(Kind::Double).permute([0, 2, 3, 1]).flatten(0, -1)).unwrap();
        let p = (h * w) as usize;
        let x = (0..n as usize).map(|b| (0..p).map(|i| std::array::from_fn(|c| xv[(b * p + i) * 3 + c])).collect()).collect();
        let y = (0..n as usize).map(|b| (0..p).map(|i| yv[(b * p + i) * k as usize..(b * p + i + 1) * k as usize].to_vec()).collect()).collect();
        (x, y)
    }

    /// 2×2: left column black, right column white; predictions (1, 0) left, (0, 1) right.
    /// Only the 8 ordered cross-column pairs count: dx = 1 (dx' = tanh(2.5 + ln((1+1e-5)/1e-5))
    /// ≈ 1), dy = ½·2 = 1; four at distance 1, four at √2. L = −(4k(1) + 4k(√2))/4 =
    /// −(e^−0.02 + e^−0.04)/(50π) = −0.0123568...
    #[test]
    fn two_by_two_by_hand() {
        let image = Tensor::from_slice(&[0.0f32, 1.0, 0.0, 1.0]).view([1, 1, 2, 2]).repeat([1, 3, 1, 1]);
        let predictions = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]).view([1, 2, 2, 2]);
        let dxp = (2.5f64 + ((1.0 + 1e-5) / 1e-5f64).ln()).tanh();
        let expected = -((-0.02f64).exp() + (-0.04f64).exp()) / (50.0 * std::f64::consts::PI) * dxp;
        assert!((expected + 0.0123568).abs() < 1e-6);
        let exact = feature_similarity_loss(&image, &predictions, 2.5, 5.0).double_value(&[]);
        let windowed = feature_similarity_loss_windowed(&image, &predictions, 2.5, 5.0, 15.0).double_value(&[]);
        assert!((exact - expected).abs() < 1e-8, "{exact} vs {expected}");
        assert!((windowed - expected).abs() < 1e-8, "{windowed} vs {expected}");
    }

    /// 4×4 with two images, three prediction channels, against the f64 loop definition.
    #[test]
    fn four_by_four_matches_the_definition() {
        tch::manual_seed(5);
        let image = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu)) * 1.2 - 0.1;
        let predictions = Tensor::rand([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let (x, y) = unpack(&image, &predictions);
        let expected = reference(&x, &y, 4, 4, 2.5, 5.0, f64::INFINITY);
        let exact = feature_similarity_loss(&image, &predictions, 2.5, 5.0).double_value(&[]);
        assert!((exact - expected).abs() < 1e-7, "{exact} vs {expected}");
        // Another μ and σ, and a window that cuts the grid (radius 2): the loop with that cutoff.
        let windowed = feature_similarity_loss_windowed(&image, &predictions, 1.0, 1.5, 2.0).double_value(&[]);
        let expected = reference(&x, &y, 4, 4, 1.0, 1.5, 2.0);
        assert!((windowed - expected).abs() < 1e-7, "{windowed} vs {expected}");
    }

    /// Random inputs within the window's reach (a 9×11 grid, diagonal 13.5 < 15): the windowed
    /// form and the exact one agree to 1e-6, values and gradients.
    #[test]
    fn windowed_equals_exact_within_reach() {
        tch::manual_seed(6);
        let image = Tensor::rand([3, 3, 9, 11], (Kind::Float, Device::Cpu));
        let logits = Tensor::randn([3, 4, 9, 11], (Kind::Float, Device::Cpu));
        let predictions = prediction_vectors(&logits, &Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]).view([3, 4]));
        let p1 = predictions.detach().set_requires_grad(true);
        let p2 = predictions.detach().set_requires_grad(true);
        let exact = feature_similarity_loss(&image, &p1, 2.5, 5.0);
        let windowed = feature_similarity_loss_windowed(&image, &p2, 2.5, 5.0, 15.0);
        let (e, wv) = (exact.double_value(&[]), windowed.double_value(&[]));
        assert!((e - wv).abs() < 1e-6, "{e} vs {wv}");
        assert!(e.abs() > 1e-4, "a non-trivial value");
        exact.backward();
        windowed.backward();
        let diff = (p1.grad() - p2.grad()).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
    }

    /// Inside one colour region differing predictions cost (L > 0) and a gradient step brings
    /// them together; across a colour edge the same predictions pay off (L < 0) and a gradient
    /// step pushes them further apart.
    #[test]
    fn pulls_inside_colour_regions_and_pushes_across_edges() {
        let predictions = || Tensor::from_slice(&[0.6f32, 0.4, 0.6, 0.4]).view([1, 1, 2, 2]).set_requires_grad(true);
        let gap = |p: &Tensor| (p.double_value(&[0, 0, 0, 0]) - p.double_value(&[0, 0, 0, 1])).abs();
        for (image, inside) in [
            (Tensor::full([1, 3, 2, 2], 0.5, (Kind::Float, Device::Cpu)), true),
            (Tensor::from_slice(&[0.1f32, 0.9, 0.1, 0.9]).view([1, 1, 2, 2]).repeat([1, 3, 1, 1]), false),
        ] {
            let p = predictions();
            let loss = feature_similarity_loss(&image, &p, 2.5, 5.0);
            assert_eq!(loss.double_value(&[]) > 0.0, inside);
            loss.backward();
            let stepped = tch::no_grad(|| &p - p.grad() * 10.0);
            assert_eq!(gap(&stepped) < gap(&p), inside, "inside a region: {inside}");
        }
    }

    #[test]
    fn prediction_vectors_normalise_mask_and_add_background() {
        // One image, two classes on 1×3: Z0 = (−1, 1, 3) → ReLU (0, 1, 3), min 0, max 3;
        // Z1 absent. y0 = ((0−1e-5)₊, 1−1e-5, 3−1e-5)/(3+1e-5); background = 1 − y0.
        let z = Tensor::from_slice(&[-1.0f32, 1.0, 3.0, 5.0, 6.0, 7.0]).view([1, 2, 1, 3]);
        let y = prediction_vectors(&z, &Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]));
        let got: Vec<f64> = Vec::try_from(y.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let d = 3.0 + 1e-5;
        let y0 = [0.0, (1.0 - 1e-5) / d, (3.0 - 1e-5) / d];
        let expected = [1.0 - y0[0], 1.0 - y0[1], 1.0 - y0[2], y0[0], y0[1], y0[2], 0.0, 0.0, 0.0];
        assert!(got.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?}");
    }

    #[test]
    fn image_at_undoes_the_normalisation() {
        let (mean, std) = ([0.5f32, 0.4, 0.3], [0.2f32, 0.25, 0.5]);
        // Pixel values 0.7, 0.4, 0.3 normalised, on a 2×2 image → 1×1 (corners aligned: top-left).
        let raw = Tensor::from_slice(&[0.7f32, 0.4, 0.3]).view([1, 3, 1, 1]).repeat([1, 1, 2, 2]);
        let normalised = (&raw - Tensor::from_slice(&mean).view([1, 3, 1, 1])) / Tensor::from_slice(&std).view([1, 3, 1, 1]);
        let x = image_at(&normalised, 1, 1, mean, std);
        assert!(x.allclose(&Tensor::from_slice(&[0.7f32, 0.4, 0.3]).view([1, 3, 1, 1]), 1e-6, 1e-6, false));
    }
}
