//! `wsss-dist run --config F`: the whole pipeline of a config: make sure the datasets exist
//! (generating the synthetic default when `data.source = "synthetic"`), train the CAM
//! classifier (continuing the run's checkpoints if there are any), make the CAMs of
//! `cam.split` and refine them into pseudo-labels (on a GPU in one map phase,
//! `cam_and_labels`; on the CPU in two), then evaluate both. With `seg.enabled` it goes on:
//! train the segmenter on those pseudo-labels (`cam.split` must then be the train split),
//! predict `seg.infer.split` with it (and with the CRF too when `seg.infer.dense_crf`) and evaluate
//! the predictions. With `pseudo_label.method = "irn_rw"` the labels come in three steps
//! (docs/methods.md §8): `irn_seeds` labels of the train split (to `irn.labels`), `train irn`
//! on them, then the random walk. The map phases skip what an earlier run finished, and
//! training continues the stage's checkpoints.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::json;
use tracing::info;

use super::{cam, cam_and_labels, eval, import::import_source, pseudo_label, seg, train_cam, train_irn, train_seg, Summary};
use crate::config::{Config, DataSource, Split};
use crate::data::importer::ImportOptions;
use crate::data::synthetic::SyntheticSource;
use crate::data::{atomic_write, Dataset};
use crate::dist::World;
use crate::metrics::report::side_by_side;
use crate::refine::pseudo::PseudoMethod;

/// Sample images in the report `run` writes.
const REPORT_SAMPLES: usize = 8;

pub fn run(config: &Config, world: &World) -> anyhow::Result<Summary> {
    let random_walk = config.pseudo_label.params.method == PseudoMethod::IrnRw;
    let learners = [
        (config.seg.enabled, "with seg.enabled the segmenter trains on the pseudo-labels of cam.split"),
        (random_walk, "pseudo_label.method = \"irn_rw\" trains IRNet's network on the irn_seeds labels of cam.split"),
    ];
    if let Some((_, why)) = learners.iter().find(|(needed, _)| *needed && config.cam.inference.split != Split::Train) {
        bail!("config key `cam.split`: {why}, which must be \"train\"");
    }
    if config.seg.enabled && config.seg.infer.image_labels {
        // The segmenter's score would then know each photo's classes (docs/segmenter.md).
        bail!("config key `seg.infer.image_labels`: `run` scores the segmenter on {}, which must not see the images' labels; set it for `wsss-dist seg` on the training photos only", config.seg.infer.inference.split.name());
    }
    let run_dir = config.run.dir.join(&config.run.name);
    if world.is_root() {
        std::fs::create_dir_all(&run_dir).with_context(|| format!("creating run directory {}", run_dir.display()))?;
        atomic_write(&run_dir.join("config.toml"), config.to_toml().as_bytes())?;
        ensure_dataset(config, &config.data.train, "train", "data.train", 0, world)?;
        ensure_dataset(config, &config.data.val, "val", "data.val", 1, world)?;
    }
    world.barrier();
    let mut details = json!({ "run_dir": run_dir, "config_hash": config.hash() });
    for (split, dir) in [("train", &config.data.train), ("val", &config.data.val)] {
        let dataset = Dataset::open(dir)?;
        info!("{split}: {} images in {} ({} classes)", dataset.len(), dir.display(), dataset.manifest().num_classes());
    }
    details["train"] = train_cam::run(config, world, true)?.details;
    // The random walk's network learns from irn_seeds labels, made from the CAMs as any
    // other method's labels are.
    let first_labels = if random_walk { seeds_config(config) } else { config.clone() };
    // One pass (refinement fed by inference) pays when inference runs on a GPU; on the CPU
    // both stages already use every core, and two passes measured faster (3.48 vs 3.26 img/s,
    // benchmarks/results/refine.md).
    let (cams, labels) = if super::compute_device(config, world)?.is_cuda() {
        cam_and_labels::run(&first_labels, world, false)?
    } else {
        (cam::run(config, world, false)?, pseudo_label::run(&first_labels, world, false)?)
    };
    details["cam"] = cams.details;
    details["eval_cam"] = eval::run_cam(config, world)?.details;
    if random_walk {
        details["seeds"] = labels.details;
        details["eval_seeds"] = eval::run_pseudo(&first_labels, world)?.details;
        details["train_irn"] = train_irn::run(config, world, true)?.details;
        details["pseudo_label"] = pseudo_label::run(config, world, false)?.details;
    } else {
        details["pseudo_label"] = labels.details;
    }
    details["eval_pseudo"] = eval::run_pseudo(config, world)?.details;
    if config.seg.enabled {
        details["train_seg"] = train_seg::run(config, world, true)?.details;
        details["seg"] = seg::run(config, world, false)?.details;
        details["eval_seg"] = eval::run_seg(config, world)?.details;
        // The CAMs of the photos the segmenter is scored on, so that the run compares its
        // stages on one split.
        let seg_split = config.seg.infer.inference.split;
        if seg_split != config.cam.inference.split {
            let cams_of_seg_split = config.with_cam_split(seg_split);
            details["cam_seg_split"] = cam::run(&cams_of_seg_split, world, false)?.details;
            details["eval_cam_seg_split"] = eval::run_cam_as(&cams_of_seg_split, world, &Config::cam_eval_name(seg_split))?.details;
        }
    }
    if world.is_root() {
        atomic_write(&run_dir.join("summary.json"), serde_json::to_string_pretty(&details)?.as_bytes())?;
        info!("{}", side_by_side(&details));
        super::report::run(config, None, REPORT_SAMPLES)?;
        info!("run directory {}", run_dir.display());
    }
    Ok(Summary::ok(details))
}

/// `config` making the `irn_seeds` labels that `train irn` reads.
fn seeds_config(config: &Config) -> Config {
    let mut seeds = config.clone();
    seeds.pseudo_label.params.method = PseudoMethod::IrnSeeds;
    seeds.pseudo_label.out = config.paths().irn_labels();
    seeds
}

/// Generates a missing synthetic split (seeded apart from the other split by `stream`), or
/// explains how to import a missing real one.
fn ensure_dataset(config: &Config, dir: &Path, split: &str, key: &str, stream: u64, world: &World) -> anyhow::Result<()> {
    if crate::data::Manifest::exists(dir) {
        return Ok(());
    }
    if config.data.source != DataSource::Synthetic {
        bail!("config key `{key}`: no dataset at {} (import one with `wsss-dist data import voc|coco --out {}`)", dir.display(), dir.display());
    }
    let s = &config.data.synthetic;
    let images = if split == "train" { s.train_images } else { s.val_images };
    let params = s.generator.clone();
    let seed = crate::data::sampler::mix_seed(&[config.run.seed, stream]);
    let source = SyntheticSource::new(params, seed, images, split)?;
    let options = ImportOptions { shard_rows: s.shard_rows, ..ImportOptions::default() };
    import_source(&source, dir, options, world)?;
    Ok(())
}
