//! `wsss-dist seg --config F [--force]`: the segmenter's predictions over `seg.infer.split`, a
//! map phase (`engine::map_phase`: dynamic over the ranks, resumable task by task, the same
//! bytes for any number of ranks). Per image: the softmax averaged over `seg.infer.scales`
//! (and their flips) and its argmax, written as a dataset in the pseudo-label format
//! (`<run dir>/seg/pred/<split>`); with `seg.infer.dense_crf` also the argmax after the dense CRF
//! (DeepLab's settings) from the same forward passes (`pred_crf/<split>`). `export png` and
//! `eval seg` read them.

use anyhow::Context;
use rayon::prelude::*;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::Summary;
use crate::config::{Config, SegInferConfig};
use crate::data::codec::{decode_row_image, encode_mask, Rgb};
use crate::data::preprocess::{fit_long_side, Normalise};
use crate::data::shard::file_sha256;
use crate::data::{Dataset, DatasetKind, ImageRow, PseudoRow};
use crate::dist::World;
use crate::engine::map_phase::{execute, fingerprint, for_each_image, MapJob, ShardOutput, TaskOutput};
use crate::model::deeplab::Segmenter;
use crate::model::weights;
use crate::refine::crf::{argmax_groups, pixel_major, CrfParams, DenseCrf};

pub fn run(config: &Config, world: &World, force: bool) -> anyhow::Result<Summary> {
    let device = super::compute_device(config, world)?;
    let infer = &config.seg.infer;
    let input_dir = config.dataset(infer.inference.split);
    let input = Dataset::open(input_dir).with_context(|| format!("the images of seg.infer.split ({})", input_dir.display()))?;
    input.check_unique_ids()?;
    let checkpoint = super::model_to_load(&infer.inference.checkpoint, &config.paths().seg(), "run `wsss-dist train seg` first, or set seg.infer.checkpoint")?;
    let vs = VarStore::new(device);
    let model = &config.seg.model;
    let net = super::segmenter(config, &vs.root(), input.manifest().classes.len() as i64);
    weights::restore(&vs, &checkpoint).context("loading the segmenter (do [seg.model] and the dataset's classes match the training run?)")?;
    let normalise = Normalise::new(config.seg.loader.mean, config.seg.loader.std, device);
    // What shapes the predictions: the weights, the network, the inference settings, the
    // normalisation (and, for those with the CRF, its settings).
    let settings = serde_json::to_string(&json!({
        "checkpoint": file_sha256(&checkpoint)?, "model": model, "infer": { "scales": infer.inference.scales, "flip": infer.inference.flip, "image_labels": infer.image_labels },
        "mean": config.seg.loader.mean, "std": config.seg.loader.std,
    }))?;
    let method = model.kind.name();
    // Without the CRF always; with it too when asked, from the same forward passes.
    let variants: Vec<bool> = if infer.dense_crf { vec![false, true] } else { vec![false] };
    let jobs: Vec<MapJob> = variants
        .iter()
        .map(|&crf| MapJob {
            what: if crf { "seg + crf" } else { "seg" },
            out: config.paths().seg_predictions(crf),
            fingerprint: fingerprint(
                &[input.manifest()],
                &format!("{settings}|crf {}", if crf { serde_json::to_string(&infer.crf).unwrap_or_default() } else { String::new() }),
            ),
            task_images: input.manifest().shards.iter().map(|s| s.rows).collect(),
            kind: DatasetKind::PseudoLabels,
            split: input.manifest().split.clone(),
            classes: input.manifest().classes.clone(),
            source: format!(
                "wsss-dist seg of {} with {} ({method}, scales {:?}, flip {}, image labels {}, crf {crf})",
                input_dir.display(),
                checkpoint.display(),
                infer.inference.scales,
                infer.inference.flip,
                infer.image_labels
            ),
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(infer.crf_threads).build().context("starting the CRF threads")?;
    let details = execute(world, &jobs, force, |task, images_done| {
        let (mut plain, mut refined) = (Vec::new(), Vec::new());
        // The CRF of a few images at a time, one per thread: it costs ~10× the forward passes on
        // a CPU, and the network runs on libtorch's own threads.
        let mut pending: Vec<CrfInput> = Vec::new();
        let refine = |pending: &mut Vec<CrfInput>, refined: &mut Vec<PseudoRow>| {
            refined.extend(pool.install(|| pending.par_drain(..).map(|input| input.refine(&infer.crf, method)).collect::<Vec<_>>()));
        };
        let (skipped, seconds) = for_each_image(
            &input,
            task,
            config.run.max_image_pixels,
            images_done,
            |image| predict(&net, image, &normalise, infer, method),
            |_, _, (row, crf_input)| {
                plain.push(row);
                pending.extend(crf_input);
                if pending.len() >= pool.current_num_threads() {
                    refine(&mut pending, &mut refined);
                }
            },
        )?;
        refine(&mut pending, &mut refined);
        let mut shards = vec![ShardOutput::new(plain, skipped.clone())];
        if infer.dense_crf {
            shards.push(ShardOutput::new(refined, skipped));
        }
        Ok(TaskOutput { shards, seconds })
    })?;
    Ok(Summary::ok(json!({ "checkpoint": checkpoint, "map": details })))
}

/// The prediction row of one image without the CRF, and (when `infer.dense_crf`) what its CRF needs;
/// an error is the reason to skip the image.
fn predict(net: &Segmenter, image: &ImageRow, normalise: &Normalise, infer: &SegInferConfig, method: &str) -> Result<(PseudoRow, Option<CrfInput>), String> {
    let rgb = decode_row_image(image)?;
    let image_size = [rgb.height as i64, rgb.width as i64];
    let probabilities = tch::no_grad(|| {
        let mean = mean_softmax(
            net,
            &fit_long_side(&normalise.apply(&rgb.pixels, rgb.width, rgb.height), infer.inference.max_side),
            image_size,
            &infer.inference.scales,
            infer.inference.flip,
        );
        if infer.image_labels {
            keep_image_classes(&mean, &image.labels)
        } else {
            mean
        }
    });
    let classes = probabilities.size()[0] as usize;
    let q = pixel_major(&probabilities);
    let row = prediction_row(&image.id, &rgb, argmax_groups(&q, classes), method);
    Ok((row, infer.dense_crf.then(|| CrfInput { id: image.id.clone(), rgb, q, classes })))
}

/// `probabilities` [C, H, W] with the classes not in the image's labels (background always in)
/// set to 0 and each pixel renormalised over the rest.
fn keep_image_classes(probabilities: &Tensor, labels: &[u16]) -> Tensor {
    let classes = probabilities.size()[0];
    let mut keep = vec![0f32; classes as usize];
    keep[0] = 1.0;
    for &label in labels.iter().filter(|&&l| (l as i64) < classes) {
        keep[label as usize] = 1.0;
    }
    let kept = probabilities * Tensor::from_slice(&keep).to_device(probabilities.device()).view([classes, 1, 1]);
    let total = kept.sum_dim_intlist([0].as_slice(), true, Kind::Float).clamp_min(1e-12);
    kept / total
}

/// One image's averaged softmax (pixel-major) and colours, awaiting the dense CRF.
struct CrfInput {
    id: String,
    rgb: Rgb,
    q: Vec<f32>,
    classes: usize,
}

impl CrfInput {
    /// The prediction row after the CRF, its unaries the softmax's negative log.
    fn refine(self, params: &CrfParams, method: &str) -> PseudoRow {
        let unary: Vec<f32> = self.q.iter().map(|p| -p.max(1e-8).ln()).collect();
        let crf = DenseCrf::new(&self.rgb.pixels, self.rgb.width as usize, self.rgb.height as usize, params);
        prediction_row(&self.id, &self.rgb, argmax_groups(&crf.inference(&unary, self.classes, 1), self.classes), method)
    }
}

fn prediction_row(id: &str, rgb: &Rgb, labels: Vec<u8>, method: &str) -> PseudoRow {
    PseudoRow { id: id.into(), mask: encode_mask(rgb.width, rgb.height, &labels), method: method.into() }
}

/// The softmax of the logits at each scale (and of the flipped input, flipped back), resized to
/// `out` (the image's [H, W]; `image` may be a downscaled copy) and averaged: [C, H, W].
fn mean_softmax(net: &Segmenter, image: &Tensor, out: [i64; 2], scales: &[f64], flip: bool) -> Tensor {
    let size = image.size();
    let (h, w) = (size[1], size[2]);
    let mut sum: Option<Tensor> = None;
    let mut count = 0.0;
    for &scale in scales {
        let side = |s: i64| ((s as f64 * scale).round() as i64).max(1);
        let scaled = image.unsqueeze(0).upsample_bilinear2d([side(h), side(w)], false, None, None);
        let batch = if flip { Tensor::cat(&[scaled.shallow_clone(), scaled.flip([3])], 0) } else { scaled };
        let probabilities = net.logits(&batch).upsample_bilinear2d(out, false, None, None).softmax(1, Kind::Float);
        let probabilities = if flip { probabilities.get(0) + probabilities.get(1).flip([2]) } else { probabilities.get(0) };
        count += if flip { 2.0 } else { 1.0 };
        sum = Some(match sum {
            Some(total) => total + probabilities,
            None => probabilities,
        });
    }
    sum.expect("at least one scale") / count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes at two pixels, the image labelled with class 2 only: class 1's share goes,
    /// the rest is renormalised (0.2, 0.3 → 0.4, 0.6 at the first pixel).
    #[test]
    fn image_labels_keep_background_and_the_images_classes() {
        let probabilities = Tensor::from_slice(&[0.2f32, 0.6, 0.5, 0.1, 0.3, 0.3]).view([3, 1, 2]);
        let kept = keep_image_classes(&probabilities, &[2]);
        let values: Vec<f32> = Vec::try_from(kept.flatten(0, -1)).unwrap();
        let expected = [0.4f32, 2.0 / 3.0, 0.0, 0.0, 0.6, 1.0 / 3.0];
        assert!(values.iter().zip(&expected).all(|(v, e)| (v - e).abs() < 1e-6), "{values:?}");
    }
}
