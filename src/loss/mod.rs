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
