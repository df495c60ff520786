//! Segmentation metrics: one confusion matrix over a whole split, IoU per class, mIoU, and the
//! CAM threshold sweep.

pub mod cam_eval;
pub mod confusion;
pub mod report;

pub use cam_eval::CamSweep;
pub use confusion::ConfusionMatrix;
