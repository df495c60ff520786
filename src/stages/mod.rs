//! Pipeline stages: one file per CLI subcommand. Stages own logging, progress bars and what is
//! printed; the library modules they call return errors and never print. Training stages are
//! tasks of the shared trainer, map stages jobs of the shared map engine ([`crate::engine`]).

pub use crate::engine::{compute_device, progress_bar};

pub mod cam;
pub mod cam_and_labels;
pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod inspect;
pub mod pseudo_label;
pub mod report;
pub mod run;
pub mod scribbles;
pub mod seg;
pub mod train_cam;
pub mod train_irn;
pub mod train_seg;
pub mod verify;

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

/// The segmenter of `[seg.model]` with `classes` outputs, and the feature consistency head when
/// `[seg.loss]` trains one (DFR): what `train seg` trains and `seg` restores.
pub fn segmenter(config: &crate::config::Config, vs: &tch::nn::Path, classes: i64) -> crate::model::deeplab::Segmenter {
    let model = &config.seg.model;
    let net = crate::model::deeplab::Segmenter::new(vs, model.kind, model.backbone(), classes).with_dropout(model.dropout);
    match config.seg.loss.consistency_dims() {
        Some(dims) => net.with_consistency_head(vs, dims),
        None => net,
    }
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
