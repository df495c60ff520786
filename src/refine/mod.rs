//! Refinement of CAMs into pseudo-labels (docs/methods.md §1, §4): the permutohedral lattice, the
//! dense CRF built on it, and the pseudo-label methods (threshold, CRF, IRNet's confident
//! seeds), and the diffusion of CAMs along attention (AD-CAM, §9). Library code: pure functions of their inputs, no printing.

pub mod crf;
pub mod diffusion;
pub mod permutohedral;
pub mod pseudo;
pub mod resize;
pub mod threshold;
pub mod walk;

pub use crf::{CrfParams, DenseCrf};
pub use permutohedral::{FilterScratch, Lattice};
