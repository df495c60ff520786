//! Training losses (docs/methods.md), each checked against hand-computed values. Tensors in,
//! tensors out, batch first.

pub mod dense_crf;
pub mod dfr;
pub mod fsl;
pub mod irn;
pub mod isl;
pub mod multilabel;
pub mod objective;
pub mod segmentation;

pub use fsl::{feature_similarity_loss, feature_similarity_loss_windowed, image_at, prediction_vectors};
pub use isl::{importance_sample, importance_sampling_loss};
pub use multilabel::multilabel_soft_margin;
pub use objective::Objective;

/// Helpers of the losses' tests.
#[cfg(test)]
pub(crate) mod testing {
    use tch::Tensor;

    /// The central difference `(f(x + ε·e_i) − f(x − ε·e_i)) / 2ε` of `f` at `x` along entry
    /// `index` of a 4-d tensor (on detached copies of `x`).
    pub fn central_difference(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, index: [i64; 4], eps: f64) -> f64 {
        let shifted = |delta: f64| {
            let x = x.detach().copy();
            let _ = x.get(index[0]).get(index[1]).get(index[2]).get(index[3]).g_add_scalar_(delta);
            f(&x).double_value(&[])
        };
        (shifted(eps) - shifted(-eps)) / (2.0 * eps)
    }
}
