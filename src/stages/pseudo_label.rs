//! `wsss-dist pseudo-label --config F [--force]`: the refinement map phase. Reads the CAM
//! dataset of `cam.split` (written by `cam`) and its images, turns each image's CAMs into a
//! pseudo-label map with `pseudo_label.method` (threshold, crf, irn_seeds; `refine::pseudo`),
//! and writes a pseudo-label dataset (`pseudo_label.out`, default
//! `<run dir>/pseudo_labels/<split>`): shard k holds the labels of image shard k, rows sorted
//! by id, masks as 8-bit PNGs (255 = uncertain).
//!
//! Task t = image shard t with CAM shard t (map phase: `engine::map_phase`). Within a rank the
//! images of each row group are refined in parallel on `pseudo_label.threads` threads. An
//! image that does not decode or has no CAM is skipped with a warning and counted.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{ensure, Context};
use rayon::prelude::*;
use serde_json::json;

use super::Summary;
use crate::config::Config;
use crate::data::codec::{decode_row_image, encode_mask};
use crate::data::preprocess::Normalise;
use crate::data::schema::Manifest;
use crate::data::shard::file_sha256;
use crate::data::{CamRow, Dataset, DatasetKind, ImageRow, PseudoRow, ShardRow};
use crate::dist::map::job_fingerprint;
use crate::dist::World;
use crate::engine::map_phase::{execute, fingerprint, for_each_row_group, guarded, usable, MapJob, TaskOutput};
use crate::model::irn::IrnNet;
use crate::model::weights;
use crate::refine::pseudo::{pseudo_label, PseudoInput, PseudoMethod, PseudoParams};
use crate::refine::resize::full_resolution;
use crate::refine::walk::walk_labels;

pub fn run(config: &Config, world: &World, force: bool) -> anyhow::Result<Summary> {
    let images_dir = config.dataset(config.cam.inference.split);
    let images: Dataset = Dataset::open(images_dir).with_context(|| format!("the images of cam.split ({})", images_dir.display()))?;
    let cam_dir = config.paths().cams(config.cam.inference.split);
    let cams: Dataset<CamRow> = Dataset::open_as(&cam_dir).with_context(|| format!("the CAMs ({}; run `wsss-dist cam` first)", cam_dir.display()))?;
    images.check_unique_ids()?;
    cams.check_unique_ids()?;
    ensure!(cams.manifest().classes == images.manifest().classes, "{} and {} have different class lists", cam_dir.display(), images_dir.display());
    ensure!(
        cams.num_shards() == images.num_shards(),
        "{} has {} shards but {} has {}: CAM shard k holds the CAMs of image shard k",
        cam_dir.display(),
        cams.num_shards(),
        images_dir.display(),
        images.num_shards()
    );
    // CAMs written by `cam` are named by its job's fingerprint; others by their checksums.
    let cam_identity = job_fingerprint(&cam_dir).unwrap_or_else(|| fingerprint(&[cams.manifest()], ""));
    let (boundaries, network) = match config.pseudo_label.params.method {
        PseudoMethod::IrnRw => Boundaries::load(config, world).map(|(b, identity)| (Some(b), identity))?,
        _ => (None, String::new()),
    };
    let labelling = Labelling::new(config, images.manifest(), &cam_identity, &network)?;
    let (num_classes, max_pixels) = (images.manifest().num_classes(), config.run.max_image_pixels);
    let details = execute(world, std::slice::from_ref(&labelling.job), force, |task, images_done| {
        let read = Instant::now();
        let mut by_id: HashMap<String, CamRow> = cams.shard(task)?.read_all()?.into_iter().map(|r| (r.id.clone(), r)).collect();
        let cams_seconds = read.elapsed().as_secs_f64();
        let (mut refine_seconds, mut boundary_seconds) = (0.0, 0.0);
        let mut rows = Vec::new();
        let label_group = |batch: &[ImageRow]| {
            let cams: Vec<Option<CamRow>> = batch.iter().map(|image| by_id.remove(&image.id)).collect();
            // irn_rw: the boundary maps first, one image after another on libtorch's threads.
            let boundary = Instant::now();
            let maps: Vec<Result<Option<Vec<f32>>, String>> =
                batch.iter().map(|image| boundaries.as_ref().map(|b| b.of(image, num_classes, max_pixels)).transpose()).collect();
            boundary_seconds += boundary.elapsed().as_secs_f64();
            // Then the refinement, a row group's images at once on the refinement threads.
            let refine = Instant::now();
            let results = labelling.pool.install(|| {
                batch
                    .par_iter()
                    .zip(&cams)
                    .zip(&maps)
                    .map(|((image, cam), map)| labelling.label(image, cam.as_ref(), map.as_ref().map_err(Clone::clone)?.as_deref()))
                    .collect()
            });
            refine_seconds += refine.elapsed().as_secs_f64();
            results
        };
        let (skipped, read_seconds) = for_each_row_group(&images, task, images_done, label_group, |_, row| rows.push(row))?;
        let file = &images.manifest().shards[task].file;
        ensure!(
            by_id.is_empty(),
            "{}: CAMs of images that are not in {file} of {}: {:?}",
            cam_dir.display(),
            images_dir.display(),
            by_id.keys().take(3).collect::<Vec<_>>()
        );
        let boundary_seconds = boundaries.is_some().then_some(boundary_seconds);
        Ok(TaskOutput::single(rows, skipped, phase_seconds(cams_seconds + read_seconds, refine_seconds, boundary_seconds)))
    })?;
    Ok(Summary::ok(json!({ "method": config.pseudo_label.params.method.name(), "map": details[0] })))
}

/// A task's seconds by phase (`boundary` with `irn_rw` only).
fn phase_seconds(read: f64, refine: f64, boundary: Option<f64>) -> BTreeMap<String, f64> {
    let phases = [("read", Some(read)), ("refine", Some(refine)), ("boundary", boundary)];
    phases.into_iter().filter_map(|(phase, seconds)| Some((phase.to_string(), seconds?))).collect()
}

/// What refinement needs: the map job, the method's parameters and the thread pool; shared by
/// `pseudo-label` and the map phase of `run`.
pub(super) struct Labelling {
    pub job: MapJob,
    params: PseudoParams,
    pub pool: rayon::ThreadPool,
    num_classes: u16,
    max_pixels: u64,
}

/// IRNet's network at inference, for the boundary maps of `irn_rw` (apart from [`Labelling`],
/// which the refinement threads share: a network runs on the stage's thread).
struct Boundaries {
    _vs: tch::nn::VarStore,
    net: IrnNet,
    normalise: Normalise,
}

impl Labelling {
    /// `cam_identity` names the CAMs: the fingerprint of the `cam` job that makes them.
    /// `network` names what else shapes the labels (`irn_rw`: the network's checkpoint).
    pub fn new(config: &Config, images: &Manifest, cam_identity: &str, network: &str) -> anyhow::Result<Labelling> {
        let settings = &config.pseudo_label;
        let job = MapJob {
            what: "pseudo-label",
            out: config.paths().pseudo_labels(),
            fingerprint: fingerprint(&[images], &format!("{cam_identity}|{}{network}", serde_json::to_string(settings)?)),
            task_images: images.shards.iter().map(|s| s.rows).collect(),
            kind: DatasetKind::PseudoLabels,
            split: images.split.clone(),
            classes: images.classes.clone(),
            source: format!(
                "wsss-dist pseudo-label ({}) of {} with the CAMs of {}",
                settings.params.method.name(),
                config.dataset(config.cam.inference.split).display(),
                config.paths().cams(config.cam.inference.split).display()
            ),
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(settings.threads).build().context("starting the refinement threads")?;
        Ok(Labelling { job, params: settings.params.clone(), pool, num_classes: images.num_classes(), max_pixels: config.run.max_image_pixels })
    }

    /// The pseudo-label row of one image (with its boundary map for `irn_rw`); an error is the
    /// reason to skip it.
    pub fn label(&self, image: &ImageRow, cam: Option<&CamRow>, boundary: Option<&[f32]>) -> Result<PseudoRow, String> {
        usable(image, self.num_classes, self.max_pixels)?;
        guarded(|| label_image(image, cam, &self.params, self.num_classes, boundary))
    }
}

/// The pseudo-label row of one image; an error is the reason to skip it.
fn label_image(image: &ImageRow, cam: Option<&CamRow>, params: &PseudoParams, num_classes: u16, boundary: Option<&[f32]>) -> Result<PseudoRow, String> {
    let cam = cam.ok_or("no CAM for this image (skipped by `cam`?)")?;
    // A NaN CAM would otherwise come out as an all-background label map.
    cam.check(num_classes).map_err(|e| format!("its CAM: {e}"))?;
    if (cam.width, cam.height) != (image.width, image.height) {
        return Err(format!("the CAM is for {}x{}, the image is {}x{}", cam.width, cam.height, image.width, image.height));
    }
    let row = |labels: Vec<u8>| PseudoRow { id: image.id.clone(), mask: encode_mask(image.width, image.height, &labels), method: params.method.name().into() };
    if let Some(boundary) = boundary {
        let (h4, w4) = cam.map_size();
        if boundary.len() != (h4 * w4) as usize {
            return Err(format!("the boundary map has {} values, the CAMs' grid {h4}x{w4}", boundary.len()));
        }
        let cams: Vec<f32> = cam.cam.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
        let size = (image.height as usize, image.width as usize);
        return Ok(row(walk_labels(&cams, &cam.classes, boundary, (h4 as usize, w4 as usize), size, &params.walk)));
    }
    let rgb = decode_row_image(image)?;
    let (w, h) = (rgb.width as usize, rgb.height as usize);
    let cams = full_resolution(cam);
    let input = PseudoInput { classes: &cam.classes, cams: &cams, width: w, height: h, rgb: &rgb.pixels };
    let labels = pseudo_label(&input, params)?;
    Ok(row(labels))
}

impl Boundaries {
    /// The network of `irn.checkpoint` (or `<run dir>/irn`'s newest), and the checkpoint's
    /// SHA-256 for the job's fingerprint.
    fn load(config: &Config, world: &World) -> anyhow::Result<(Boundaries, String)> {
        let device = super::compute_device(config, world)?;
        let checkpoint = super::model_to_load(&config.irn.checkpoint, &config.paths().irn(), "run `wsss-dist train irn` first, or set irn.checkpoint")?;
        let vs = tch::nn::VarStore::new(device);
        let net = IrnNet::new(&vs.root(), config.irn.backbone());
        weights::restore(&vs, &checkpoint).context("loading IRNet's network (do irn.arch, irn.depth and the checkpoint match?)")?;
        let normalise = Normalise::new(config.irn.loader.mean, config.irn.loader.std, device);
        Ok((Boundaries { _vs: vs, net, normalise }, format!("|irn {}", file_sha256(&checkpoint)?)))
    }

    /// The boundary map of one image at the CAMs' stride 4; an error is the reason to skip it.
    fn of(&self, image: &ImageRow, num_classes: u16, max_pixels: u64) -> Result<Vec<f32>, String> {
        usable(image, num_classes, max_pixels)?;
        guarded(|| {
            let rgb = decode_row_image(image)?;
            let map = tch::no_grad(|| self.net.boundary(&self.normalise.apply(&rgb.pixels, rgb.width, rgb.height)));
            Vec::<f32>::try_from(map.to_device(tch::Device::Cpu).flatten(0, -1)).map_err(|e| e.to_string())
        })
    }
}
