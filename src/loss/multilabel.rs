//! Multi-label soft margin loss (docs/methods.md):
//! `L = mean_c [ −y_c log σ(z_c) − (1−y_c) log(1−σ(z_c)) ]`, averaged over the batch too.

use tch::{Kind, Tensor};

/// `logits` and `targets` are [N, C] (targets multi-hot in {0, 1}). Written with log σ(z) and
/// log σ(−z) = log(1 − σ(z)), which stay finite for large |z|.
pub fn multilabel_soft_margin(logits: &Tensor, targets: &Tensor) -> Tensor {
    let positive = targets * logits.log_sigmoid();
    let negative = (1.0 - targets) * (-logits).log_sigmoid();
    let total: Tensor = positive + negative;
    -total.mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn loss(z: &[f32], y: &[f32], n: i64) -> f64 {
        let c = z.len() as i64 / n;
        multilabel_soft_margin(&Tensor::from_slice(z).view([n, c]), &Tensor::from_slice(y).view([n, c])).double_value(&[])
    }

    #[test]
    fn matches_hand_computed_values() {
        // z = 0: every term is log 2.
        assert!((loss(&[0.0, 0.0], &[1.0, 0.0], 1) - std::f64::consts::LN_2).abs() < 1e-6);
        // z = (ln 3, −ln 3), y = (1, 0): σ(ln 3) = 3/4, so both terms are −log(3/4).
        let l = loss(&[3f32.ln(), -(3f32.ln())], &[1.0, 0.0], 1);
        assert!((l - (4.0f64 / 3.0).ln()).abs() < 1e-6, "{l}");
        // Two images: (z=ln 3, y=0) → −log(1/4) = ln 4; (z=0, y=1) → ln 2; mean = (ln 4 + ln 2)/2.
        let l = loss(&[3f32.ln(), 0.0], &[0.0, 1.0], 2);
        assert!((l - (4f64.ln() + 2f64.ln()) / 2.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn stays_finite_for_large_logits_and_has_the_sigmoid_gradient() {
        assert!((loss(&[200.0, -200.0], &[1.0, 0.0], 1)).abs() < 1e-6);
        assert!((loss(&[-200.0], &[1.0], 1) - 200.0).abs() < 1e-3);
        // dL/dz = (σ(z) − y)/C: at z = 0, y = (1, 0), C = 2 → (−1/4, 1/4).
        let z = Tensor::zeros([1, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        multilabel_soft_margin(&z, &Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2])).backward();
        let grad: Vec<f32> = Vec::try_from(z.grad().flatten(0, -1)).unwrap();
        assert_eq!(grad, [-0.25, 0.25]);
    }
}
