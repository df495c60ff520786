//! HFPL's importance sampling loss (docs/methods.md, ISL), the binomial form: for every image and
//! class, K pixels are drawn (with replacement) from `p_c(i) ∝ σ(Z_c(i)) + 1e-5`, and the K
//! sampled logits `Z_c(i_k)` are scored with the multi-label soft margin against `y_c`,
//! averaged over images, classes and samples. The draw is not differentiated; the sampled
//! logits are.

use rand::Rng;
use tch::{Kind, Tensor};

use super::multilabel::multilabel_soft_margin;

/// Added to σ(Z) so that no pixel has probability zero (the reference's constant).
const PROB_FLOOR: f64 = 1e-5;

/// Draws `samples` pixel indices per image and class from `p_c(i) ∝ σ(Z_c(i)) + 1e-5`.
/// `logit_map`: [N, C, h, w]; returns [N, C, samples] int64 indices into the h·w pixels.
/// The uniforms come from `generator` (not libtorch's global generator), so a training run
/// seeds the draw per step and stays reproducible when resumed.
pub fn importance_sample(logit_map: &Tensor, samples: i64, generator: &mut impl Rng) -> Tensor {
    let size = logit_map.size();
    let (n, c) = (size[0], size[1]);
    tch::no_grad(|| {
        let probs = logit_map.to_kind(Kind::Double).flatten(2, -1).sigmoid() + PROB_FLOOR;
        let cdf = probs.cumsum(-1, Kind::Double);
        let cdf = &cdf / cdf.narrow(-1, cdf.size()[2] - 1, 1);
        let uniforms: Vec<f64> = (0..n * c * samples).map(|_| generator.random::<f64>()).collect();
        let u = Tensor::from_slice(&uniforms).view([n, c, samples]).to_device(logit_map.device());
        // The first pixel whose cumulative probability exceeds u (the inverse CDF); the clamp
        // guards u against a last cumulative value rounded below 1.
        u.searchsorted(&cdf, false, true, "right", None::<Tensor>).clamp_max(cdf.size()[2] - 1)
    })
}

/// ISL. `logit_map`: [N, C, h, w] class logit maps `Z = W·F` (no ReLU), any real values;
/// `targets`: [N, C] multi-hot in {0, 1}; `samples`: K. Returns the scalar loss (mean over N,
/// C and K), differentiable with respect to `logit_map` at the sampled pixels.
pub fn importance_sampling_loss(logit_map: &Tensor, targets: &Tensor, samples: i64, generator: &mut impl Rng) -> Tensor {
    let indices = importance_sample(logit_map, samples, generator);
    let sampled = logit_map.flatten(2, -1).gather(2, &indices, false);
    multilabel_soft_margin(&sampled, &targets.unsqueeze(-1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tch::Device;

    /// One image, two classes, four pixels: 40,000 draws per class against the distribution
    /// σ(Z)+1e-5 normalised, computed here in f64. Pearson's χ² with 3 degrees of freedom stays
    /// below 16.27 (the 0.1% critical value) at this fixed seed.
    #[test]
    fn samples_follow_the_per_class_sigmoid_distribution() {
        let z = [[-2.0f64, 0.0, 1.0, 3.0], [0.5, 0.5, -4.0, 2.0]];
        let flat: Vec<f32> = z.iter().flatten().map(|v| *v as f32).collect();
        let map = Tensor::from_slice(&flat).view([1, 2, 2, 2]);
        let draws = 40_000;
        let indices = importance_sample(&map, draws, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(indices.size(), [1, 2, draws]);
        for (class, logits) in z.iter().enumerate() {
            let weights: Vec<f64> = logits.iter().map(|v| 1.0 / (1.0 + (-v).exp()) + 1e-5).collect();
            let total: f64 = weights.iter().sum();
            let counts = indices.get(0).get(class as i64).bincount(None::<Tensor>, 4);
            let counts: Vec<i64> = Vec::try_from(counts).unwrap();
            let chi2: f64 = counts
                .iter()
                .zip(&weights)
                .map(|(&o, w)| {
                    let e = draws as f64 * w / total;
                    (o as f64 - e).powi(2) / e
                })
                .sum();
            assert!(chi2 < 16.27, "class {class}: counts {counts:?}, χ² {chi2}");
        }
    }

    /// A pixel with logit 20 among pixels at −20 takes all but ~3e-5 of the mass, so every
    /// sample is that logit: the loss is the soft margin of z = 20, i.e. log(1+e^−20) ≈ 2.1e-9 for
    /// a present class and 20 + log(1+e^−20) for an absent one; averaged over both: ≈ 10.
    #[test]
    fn loss_scores_the_sampled_logits() {
        let map = Tensor::from_slice(&[20.0f32, -20.0, -20.0, -20.0, 20.0, -20.0, -20.0, -20.0]).view([1, 2, 2, 2]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let loss = importance_sampling_loss(&map, &targets, 10, &mut ChaCha8Rng::seed_from_u64(1)).double_value(&[]);
        let expected = ((1.0 + (-20f64).exp()).ln() + 20.0 + (1.0 + (-20f64).exp()).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
        // A constant map: every sample is that logit, whatever pixels are drawn.
        let map = Tensor::full([2, 3, 4, 5], 0.7, (Kind::Float, Device::Cpu));
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0, 0.0, 1.0]).view([2, 3]);
        let loss = importance_sampling_loss(&map, &targets, 10, &mut ChaCha8Rng::seed_from_u64(2)).double_value(&[]);
        let sp = |x: f64| (1.0 + x.exp()).ln(); // softplus: −log σ(−x)
        let expected = (3.0 * sp(-0.7) + 3.0 * sp(0.7)) / 6.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    /// The gradient reaches exactly the sampled pixels, (σ(z) − y)/(C·K·N) per draw.
    #[test]
    fn gradient_flows_to_the_sampled_logits_only() {
        let map = Tensor::from_slice(&[5.0f32, -30.0, -30.0, -30.0]).view([1, 1, 2, 2]).set_requires_grad(true);
        let targets = Tensor::from_slice(&[1.0f32]).view([1, 1]);
        importance_sampling_loss(&map, &targets, 4, &mut ChaCha8Rng::seed_from_u64(3)).backward();
        let grad: Vec<f32> = Vec::try_from(map.grad().flatten(0, -1)).unwrap();
        // All 4 draws hit pixel 0 (the others have ~1e-5 each): 4 · (σ(5) − 1)/4.
        let s5 = 1.0 / (1.0 + (-5f64).exp());
        assert!((grad[0] as f64 - (s5 - 1.0)).abs() < 1e-6, "{grad:?}");
        assert_eq!(&grad[1..], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_draw_is_reproducible_from_the_generator() {
        let map = Tensor::randn([2, 3, 5, 5], (Kind::Float, Device::Cpu));
        let a = importance_sample(&map, 10, &mut ChaCha8Rng::seed_from_u64(9));
        let b = importance_sample(&map, 10, &mut ChaCha8Rng::seed_from_u64(9));
        let c = importance_sample(&map, 10, &mut ChaCha8Rng::seed_from_u64(10));
        assert!(a.equal(&b) && !a.equal(&c));
        assert!(a.min().int64_value(&[]) >= 0 && a.max().int64_value(&[]) < 25);
    }
}
