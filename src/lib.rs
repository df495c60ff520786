//! wsss-dist: distributed weakly-supervised semantic segmentation.
//!
//! Library modules (`data`, `dist`, `config`) return typed errors and never print; the
//! `stages` own logging, progress bars and exit codes (README, "Layout").

pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod data;
pub mod dist;
pub mod engine;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod refine;
pub mod report;
pub mod rounding;
pub mod stages;
pub mod stop;
