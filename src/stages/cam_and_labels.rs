//! `wsss-dist cam --pseudo-labels` and the map phase of `run` on a GPU: CAM inference and
//! refinement in one pass. Task t = image shard t → CAM shard t and pseudo-label shard t,
//! both written, read back and committed before the task counts as done
//! (`engine::map_phase`). Each CAM goes to the refinement threads (`pseudo_label.threads`) as
//! soon as it is made, so that inference (libtorch, `run.threads`, or the GPU) and refinement
//! overlap: at most 2 × (refinement threads) images wait for or are in refinement, which
//! bounds the memory.
//!
//! The outputs are the bytes `cam` then `pseudo-label` write (the pseudo-labels' fingerprint
//! names the CAMs by their job, not by their checksums, so either way gives the same one).
//! When the CAMs are already complete for these settings, only the refinement runs.

use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use super::cam::CamInference;
use super::pseudo_label::Labelling;
use super::{cam, pseudo_label, Summary};
use crate::config::Config;
use crate::data::PseudoRow;
use crate::dist::map::job_fingerprint;
use crate::dist::World;
use crate::engine::map_phase::{execute, keep_or_skip, ShardOutput, TaskOutput};

/// The summaries of the two outputs: (CAMs, pseudo-labels).
pub fn run(config: &Config, world: &World, force: bool) -> anyhow::Result<(Summary, Summary)> {
    let inference = CamInference::new(config, world)?;
    let cams_done = crate::data::Manifest::exists(&config.paths().cams(config.cam.inference.split))
        && job_fingerprint(&config.paths().cams(config.cam.inference.split)).as_deref() == Some(&inference.job.fingerprint);
    if cams_done && !force {
        return Ok((cam::run_with(&inference, world, false)?, pseudo_label::run(config, world, false)?));
    }
    anyhow::ensure!(
        config.pseudo_label.params.method != crate::refine::pseudo::PseudoMethod::IrnRw,
        "config key `pseudo_label.method`: irn_rw walks over the boundaries of IRNet's network, which the one-pass `cam --pseudo-labels` does not compute: run `cam`, then `pseudo-label`"
    );
    let labelling = Labelling::new(config, inference.input.manifest(), &inference.job.fingerprint, "")?;
    // pseudo_label.threads = 0 is one thread per core: count the pool's.
    let in_flight_limit = 2 * labelling.pool.current_num_threads();
    let jobs = [inference.job.clone(), labelling.job.clone()];
    let details = execute(world, &jobs, force, |task, images_done| {
        let mut cam_rows = Vec::new();
        let labelled: Mutex<Vec<Labelled>> = Mutex::new(Vec::new());
        // Each refinement signals its end, so that inference can wait for a free place.
        let (ended, end) = crossbeam_channel::unbounded::<()>();
        let (mut in_flight, mut waited) = (0usize, 0.0);
        let (outcome, inference_end) = labelling.pool.in_place_scope(|scope| {
            let outcome = inference.task(task, images_done, |place, image, cam| {
                if in_flight == in_flight_limit {
                    let wait = Instant::now();
                    end.recv().expect("every refinement signals its end");
                    waited += wait.elapsed().as_secs_f64();
                    in_flight -= 1;
                }
                in_flight += 1;
                let (labelling, labelled, ended, place, for_labels) = (&labelling, &labelled, ended.clone(), place.to_string(), cam.clone());
                cam_rows.push(cam);
                scope.spawn(move |_| {
                    let started = Instant::now();
                    let result = labelling.label(&image, Some(&for_labels), None);
                    let seconds = started.elapsed().as_secs_f64();
                    labelled.lock().expect("the results lock is never poisoned").push(Labelled { place, id: image.id, result, seconds });
                    let _ = ended.send(());
                });
            });
            // The scope returns when the last refinement has ended.
            (outcome, Instant::now())
        });
        let (cam_skipped, mut seconds) = outcome?;
        let mut labelled = labelled.into_inner().expect("the results lock is never poisoned");
        labelled.sort_by(|a, b| a.id.cmp(&b.id));
        seconds.insert("refine".into(), labelled.iter().map(|l| l.seconds).sum());
        seconds.insert("refine_wait".into(), waited + inference_end.elapsed().as_secs_f64());
        let (mut label_rows, mut label_skipped) = (Vec::with_capacity(labelled.len()), cam_skipped.clone());
        for l in labelled {
            label_rows.extend(keep_or_skip(l.result, &l.place, &l.id, &mut label_skipped));
        }
        Ok(TaskOutput { shards: vec![ShardOutput::new(cam_rows, cam_skipped), ShardOutput::new(label_rows, label_skipped)], seconds })
    })?;
    let [cam_details, label_details]: [serde_json::Value; 2] = details.try_into().map_err(|_| anyhow::anyhow!("a summary per output"))?;
    Ok((
        Summary::ok(json!({ "checkpoint": inference.checkpoint, "map": cam_details, "with": "pseudo-labels" })),
        Summary::ok(json!({ "method": config.pseudo_label.params.method.name(), "map": label_details, "with": "cam" })),
    ))
}

/// One refined image: where it came from, its row or why it was skipped, and the time taken.
struct Labelled {
    place: String,
    id: String,
    result: Result<PseudoRow, String>,
    seconds: f64,
}
