//! Pseudo-label methods: a label map (0 background, 1..=C classes, 255 uncertain) from the
//! CAMs of an image's classes at full resolution and, for the CRF methods, the image.
//! - `threshold`: `argmax({τ} ∪ {A_c})` (docs/methods.md §1; background wins ties).
//! - `crf`: the dense CRF (§4) over the probabilities `[(1 − max_c A_c)^α, A_1, …, A_K]`
//!   with pydensecrf's `unary_from_softmax` (−ln, clipped at 1e-5) — SEAM's and HFPL's recipe.
//! - `irn_seeds`: IRNet's confident seeds: the label maps `argmax({0.30} ∪ {A_c})` and
//!   `argmax({0.05} ∪ {A_c})` each refined by the CRF with the label unary (p = 0.7); a pixel
//!   keeps the foreground pass's class, is background where both passes say background, and
//!   is 255 where only the foreground pass says background.
//! - `irn_rw`: IRNet's random walk over the boundaries of `train irn`'s network
//!   (`refine::walk::walk_labels`): it needs the boundary map, which the stage makes.

use super::threshold::threshold_labels;
use serde::{Deserialize, Serialize};

use super::crf::{argmax_groups, unary_from_label_maps, CrfParams, DenseCrf};

/// The label of uncertain pixels.
pub const UNCERTAIN: u8 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PseudoMethod {
    Threshold,
    Crf,
    IrnSeeds,
    IrnRw,
}

impl PseudoMethod {
    pub fn name(self) -> &'static str {
        match self {
            PseudoMethod::Threshold => "threshold",
            PseudoMethod::Crf => "crf",
            PseudoMethod::IrnSeeds => "irn_seeds",
            PseudoMethod::IrnRw => "irn_rw",
        }
    }
}

/// Everything a method needs besides the image and its CAMs (`[pseudo_label]`; the defaults are
/// IRNet's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PseudoParams {
    pub method: PseudoMethod,
    /// τ of `threshold`.
    pub tau: f32,
    /// α of `crf`'s background probability.
    pub bg_power: f32,
    /// `irn_seeds`: the foreground and background thresholds (0.30, 0.05).
    pub fg_threshold: f32,
    pub bg_threshold: f32,
    /// `irn_seeds`: the label unary's probability of the given label (0.7).
    pub gt_prob: f32,
    pub crf: CrfParams,
    /// `irn_rw`: the walk and its labels.
    pub walk: super::walk::WalkParams,
}

impl Default for PseudoParams {
    fn default() -> Self {
        PseudoParams {
            method: PseudoMethod::IrnSeeds,
            tau: 0.15,
            bg_power: 8.0,
            fg_threshold: 0.30,
            bg_threshold: 0.05,
            gt_prob: 0.7,
            crf: CrfParams::default(),
            walk: super::walk::WalkParams::default(),
        }
    }
}

/// One image's input: `cams` are the maps of `classes` at full resolution ([K, H, W]).
pub struct PseudoInput<'a> {
    pub classes: &'a [u16],
    pub cams: &'a [f32],
    pub width: usize,
    pub height: usize,
    /// RGB bytes, H × W × 3 (used by the CRF methods only).
    pub rgb: &'a [u8],
}

/// The pseudo-label map of one image, H × W class ids, by the methods that need only the CAMs
/// and the image (`irn_rw`, which also needs a boundary map, is an error here).
pub fn pseudo_label(input: &PseudoInput, params: &PseudoParams) -> Result<Vec<u8>, String> {
    let pixels = input.width * input.height;
    assert_eq!(input.cams.len(), input.classes.len() * pixels, "cams must be classes × H × W");
    // keys[i]: the class id of label i (0 = background).
    let keys: Vec<u8> = std::iter::once(0).chain(input.classes.iter().map(|&c| c as u8)).collect();
    Ok(match params.method {
        PseudoMethod::Threshold => threshold_labels(input.cams, pixels, params.tau).into_iter().map(|l| keys[l as usize]).collect(),
        PseudoMethod::Crf => {
            let labels = keys.len();
            let mut unary = vec![0f32; pixels * labels];
            for (p, energies) in unary.chunks_exact_mut(labels).enumerate() {
                let strongest = (0..input.classes.len()).map(|k| input.cams[k * pixels + p]).fold(0f32, f32::max);
                energies[0] = -(1.0 - strongest).powf(params.bg_power).clamp(1e-5, 1.0).ln();
                for k in 0..input.classes.len() {
                    energies[k + 1] = -input.cams[k * pixels + p].clamp(1e-5, 1.0).ln();
                }
            }
            let q = DenseCrf::new(input.rgb, input.width, input.height, &params.crf).inference(&unary, labels, 1);
            argmax_groups(&q, labels).into_iter().map(|l| keys[l as usize]).collect()
        }
        PseudoMethod::IrnSeeds => {
            let labels = keys.len();
            let fg = threshold_labels(input.cams, pixels, params.fg_threshold);
            let bg = threshold_labels(input.cams, pixels, params.bg_threshold);
            let both = unary_from_label_maps(&[&fg, &bg], labels, params.gt_prob);
            let q = DenseCrf::new(input.rgb, input.width, input.height, &params.crf).inference(&both, labels, 2);
            argmax_groups(&q, labels)
                .chunks_exact(2)
                .map(|pair| match (keys[pair[0] as usize], keys[pair[1] as usize]) {
                    (0, 0) => 0,
                    (0, _) => UNCERTAIN,
                    (fg, _) => fg,
                })
                .collect()
        }
        PseudoMethod::IrnRw => return Err("irn_rw needs the boundary map of `train irn`'s network (refine::walk::walk_labels)".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(method: PseudoMethod) -> PseudoParams {
        PseudoParams {
            method,
            tau: 0.3,
            bg_power: 8.0,
            fg_threshold: 0.3,
            bg_threshold: 0.05,
            gt_prob: 0.7,
            crf: CrfParams::default(),
            walk: Default::default(),
        }
    }

    #[test]
    fn threshold_takes_the_argmax_with_tau_first() {
        // 1×4 image, classes {3, 5}: A_3 = [0.9, 0.1, 0.3, 0.0], A_5 = [0.2, 0.6, 0.3, 0.05].
        let cams = [0.9, 0.1, 0.3, 0.0, 0.2, 0.6, 0.3, 0.05];
        let input = PseudoInput { classes: &[3, 5], cams: &cams, width: 4, height: 1, rgb: &[0; 12] };
        assert_eq!(pseudo_label(&input, &params(PseudoMethod::Threshold)).unwrap(), vec![3, 5, 0, 0]);
        let p = PseudoParams { tau: 0.25, ..params(PseudoMethod::Threshold) };
        assert_eq!(pseudo_label(&input, &p).unwrap(), vec![3, 5, 3, 0]);
        let none = PseudoInput { classes: &[], cams: &[], width: 4, height: 1, rgb: &[0; 12] };
        assert_eq!(pseudo_label(&none, &p).unwrap(), vec![0; 4]);
    }

    /// A 20×12 image split into a dark left and a bright right half; the CAM of class 7 is
    /// high on the right, fading out across the edge, and weakly positive on the far left.
    fn halves() -> (Vec<u8>, Vec<f32>) {
        let (w, h) = (20, 12);
        let rgb: Vec<u8> = (0..w * h).flat_map(|p| if p % w < 10 { [10, 10, 10] } else { [240, 240, 240] }).collect();
        let cam: Vec<f32> = (0..w * h).map(|p| ((p % w) as f32 - 4.0).clamp(0.0, 10.0) / 10.0 * 0.9 + 0.02).collect();
        (rgb, cam)
    }

    #[test]
    fn irn_seeds_follow_the_colour_edge_and_mark_disagreements() {
        let (rgb, cam) = halves();
        let input = PseudoInput { classes: &[7], cams: &cam, width: 20, height: 12, rgb: &rgb };
        let seeds = pseudo_label(&input, &params(PseudoMethod::IrnSeeds)).unwrap();
        // Row 6: the raw 0.30 threshold crosses at x = 7, inside the dark half; the CRF moves
        // the foreground to the bright half. At bg 0.05 everything is "class 7" except the
        // far left, so the dark half is uncertain, not background.
        let row: Vec<u8> = seeds[6 * 20..7 * 20].to_vec();
        assert!(row[10..].iter().all(|&l| l == 7), "{row:?}");
        assert!(row[..10].iter().all(|&l| l == UNCERTAIN || l == 0), "{row:?}");
        assert!(row[..10].contains(&UNCERTAIN), "{row:?}");
        // The same image with a much lower CAM on the left is background there.
        let low: Vec<f32> = cam.iter().enumerate().map(|(p, &v)| if p % 20 < 10 { 0.0 } else { v }).collect();
        let input = PseudoInput { cams: &low, ..input };
        let seeds = pseudo_label(&input, &params(PseudoMethod::IrnSeeds)).unwrap();
        assert!(seeds[6 * 20..6 * 20 + 10].iter().all(|&l| l == 0), "{:?}", &seeds[6 * 20..7 * 20]);
    }

    #[test]
    fn crf_method_snaps_to_the_edge() {
        let (rgb, cam) = halves();
        let input = PseudoInput { classes: &[7], cams: &cam, width: 20, height: 12, rgb: &rgb };
        let labels = pseudo_label(&input, &params(PseudoMethod::Crf)).unwrap();
        for y in 0..12 {
            assert!(labels[y * 20..y * 20 + 10].iter().all(|&l| l == 0), "row {y}: {:?}", &labels[y * 20..(y + 1) * 20]);
            assert!(labels[y * 20 + 10..(y + 1) * 20].iter().all(|&l| l == 7), "row {y}: {:?}", &labels[y * 20..(y + 1) * 20]);
        }
    }
}
