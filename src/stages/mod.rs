//! Pipeline stages: one file per CLI subcommand. Stages own logging, progress bars and what is
//! printed; the library modules they call return errors and never print.

pub mod cam;
pub mod cam_and_labels;
pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod inspect;
pub mod map_phase;
pub mod pseudo_label;
pub mod report;
pub mod run;
pub mod seg;
pub mod train_cam;
pub mod train_irn;
pub mod train_seg;
pub mod trainer;
pub mod verify;

use indicatif::{ProgressBar, ProgressStyle};

use crate::dist::World;

/// What a stage reports: whether it succeeded (the exit code) and a JSON summary.
pub struct Summary {
    pub ok: bool,
    pub details: serde_json::Value,
}

impl Summary {
    pub fn ok(details: serde_json::Value) -> Summary {
        Summary { ok: true, details }
    }
}

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

/// Human-readable byte count.
pub fn human_bytes(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The model a stage loads: `explicit` when set (a file, checked against its checkpoint
/// sidecar if it has one), otherwise the newest intact checkpoint in `stage_dir`. Damaged
/// checkpoints passed over on the way are warned about. `hint` ends the error when there is
/// none: how to get one.
pub fn model_to_load(explicit: &std::path::Path, stage_dir: &std::path::Path, hint: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    let source = if explicit.as_os_str().is_empty() { stage_dir } else { explicit };
    // A path that is not there at all is not a damaged or foreign model file.
    anyhow::ensure!(source.exists(), "{} does not exist: nothing was trained there; {hint}", source.display());
    let found = crate::checkpoint::model_in(source)?.with_context(|| format!("no checkpoint in {}/checkpoints: {hint}", source.display()))?;
    for line in &found.damaged {
        tracing::warn!("passed over a damaged checkpoint: {line}");
    }
    Ok(found.path)
}

/// The device of this rank (`run.device`), with libtorch's threads set from `run.threads`.
pub fn compute_device(config: &crate::config::Config, world: &World) -> anyhow::Result<tch::Device> {
    if config.run.threads > 0 {
        tch::set_num_threads(config.run.threads as i32);
    }
    crate::dist::select_device(&config.run.device, world.local_rank).map_err(anyhow::Error::msg)
}
