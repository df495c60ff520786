//! The two engines every stage runs on: the data-parallel trainer (a training stage is a
//! [`trainer::Task`]) and the map phase (a map stage says what it does to one image or shard),
//! with what both share: the device of a rank and rank 0's progress bar. Like the stages they
//! log; they return what a stage reports.

pub mod map_phase;
pub mod trainer;

use indicatif::{ProgressBar, ProgressStyle};

use crate::dist::World;

/// A progress bar on stderr, shown on rank 0 only (and by indicatif only on a terminal).
pub fn progress_bar(world: &World, len: u64, what: &str) -> ProgressBar {
    if !world.is_root() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template("{msg:>10} {wide_bar} {pos}/{len} [{elapsed_precise}, {per_sec}, eta {eta}]").expect("a valid template"));
    bar.set_message(what.to_string());
    bar
}

/// The device of this rank (`run.device`), with libtorch's threads set from `run.threads`.
pub fn compute_device(config: &crate::config::Config, world: &World) -> anyhow::Result<tch::Device> {
    if config.run.threads > 0 {
        tch::set_num_threads(config.run.threads as i32);
    }
    crate::dist::select_device(config.run.device, world.local_rank).map_err(anyhow::Error::msg)
}
