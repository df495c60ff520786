//! CAM evaluation (docs/methods.md): CAMs become label maps with a constant background score τ,
//! `label(p) = argmax({τ} ∪ {A_c(p) : y_c = 1})` (background wins ties), for every τ of a sweep
//! at once; plus the image-label baseline, where every pixel gets the present class with the
//! highest classifier score (no localisation at all).

use serde::Serialize;

use super::confusion::{ConfusionMatrix, OutOfRange};

/// The mIoU and per-class IoU of one way of labelling (IoU `None`: class absent everywhere).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Scores {
    pub miou: f64,
    pub iou: Vec<Option<f64>>,
    pub pixel_accuracy: f64,
    /// The share of object pixels given their class, and of pixels given an object class that
    /// are that object ([`ConfusionMatrix::foreground_coverage_precision`]).
    pub coverage: f64,
    pub precision: f64,
}

impl Scores {
    fn of(matrix: &ConfusionMatrix) -> Scores {
        let (coverage, precision) = matrix.foreground_coverage_precision();
        Scores { miou: matrix.miou(), iou: matrix.iou(), pixel_accuracy: matrix.pixel_accuracy(), coverage, precision }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SweepPoint {
    pub tau: f32,
    pub miou: f64,
}

/// Everything `eval cam` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CamReport {
    /// Class names, background first.
    pub classes: Vec<String>,
    pub sweep: Vec<SweepPoint>,
    pub best_tau: f32,
    pub best: Scores,
    /// The method's own τ (`eval.tau`).
    pub tau: f32,
    pub at_tau: Scores,
    pub baseline: Scores,
}

pub struct CamSweep {
    pub thresholds: Vec<f32>,
    /// One matrix per threshold.
    pub matrices: Vec<ConfusionMatrix>,
    pub baseline: ConfusionMatrix,
}

impl CamSweep {
    /// `classes` counts background: C + 1.
    pub fn new(classes: usize, thresholds: &[f32]) -> CamSweep {
        CamSweep {
            thresholds: thresholds.to_vec(),
            matrices: thresholds.iter().map(|_| ConfusionMatrix::new(classes)).collect(),
            baseline: ConfusionMatrix::new(classes),
        }
    }

    /// Adds one image: `gt` its H·W ground truth, `cams` the maps of `labels` at full
    /// resolution ([K, H, W] flattened), `scores` the classifier's logits of `labels`.
    pub fn add_image(&mut self, gt: &[u8], cams: &[f32], labels: &[u16], scores: &[f32]) -> Result<(), OutOfRange> {
        let pixels = gt.len();
        debug_assert_eq!(cams.len(), labels.len() * pixels);
        let (best_score, best_class) = strongest(cams, pixels);
        for (tau, matrix) in self.thresholds.iter().zip(&mut self.matrices) {
            let pred: Vec<u8> = (0..pixels).map(|p| if best_score[p] > *tau { labels[best_class[p]] as u8 } else { 0 }).collect();
            matrix.add(gt, &pred)?;
        }
        let top = (0..labels.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)));
        let baseline = top.map_or(0, |k| labels[k] as u8);
        self.baseline.add(gt, &vec![baseline; pixels])
    }

    /// (τ, mIoU) of the threshold with the highest mIoU (the first of equals).
    /// Every matrix: one per threshold, then the baseline's.
    pub fn matrices_mut(&mut self) -> impl Iterator<Item = &mut ConfusionMatrix> {
        self.matrices.iter_mut().chain([&mut self.baseline])
    }

    pub fn best(&self) -> (f32, f64) {
        self.thresholds
            .iter()
            .zip(&self.matrices)
            .map(|(t, m)| (*t, m.miou()))
            .fold((f32::NAN, f64::NEG_INFINITY), |best, cur| if cur.1 > best.1 { cur } else { best })
    }

    /// The report, with `tau` (one of the thresholds) as the method's own setting.
    pub fn report(&self, classes: Vec<String>, tau: f32) -> CamReport {
        let matrix_at = |t: f32| {
            let k = self.thresholds.iter().position(|x| *x == t).expect("τ is one of the sweep's thresholds");
            &self.matrices[k]
        };
        let (best_tau, _) = self.best();
        CamReport {
            classes,
            sweep: self.thresholds.iter().zip(&self.matrices).map(|(t, m)| SweepPoint { tau: *t, miou: m.miou() }).collect(),
            best_tau,
            best: Scores::of(matrix_at(best_tau)),
            tau,
            at_tau: Scores::of(matrix_at(tau)),
            baseline: Scores::of(&self.baseline),
        }
    }
}

/// Per pixel, the highest of the K maps in `cams` ([K, pixels]) and which one (the first of
/// equals); with K = 0 every score is −∞.
fn strongest(cams: &[f32], pixels: usize) -> (Vec<f32>, Vec<usize>) {
    let mut best = vec![f32::NEG_INFINITY; pixels];
    let mut which = vec![0usize; pixels];
    for (k, map) in cams.chunks_exact(pixels.max(1)).enumerate() {
        for (p, &v) in map.iter().enumerate() {
            if v > best[p] {
                best[p] = v;
                which[p] = k;
            }
        }
    }
    (best, which)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pixels per row, image 1×4, labels {3, 5}:
    ///   A_3 = [0.9, 0.1, 0.3, 0.00]
    ///   A_5 = [0.2, 0.6, 0.3, 0.05]
    /// τ = 0.25 → [3, 5, 3 (tie between classes: the first), 0]; τ = 0.3 → [3, 5, 0 (τ wins
    /// the tie), 0]; τ = 0.95 → all background.
    #[test]
    fn labels_follow_the_argmax_with_tau_first() {
        let gt = [3u8, 5, 3, 0];
        let cams = [0.9f32, 0.1, 0.3, 0.0, 0.2, 0.6, 0.3, 0.05];
        let mut sweep = CamSweep::new(6, &[0.25, 0.3, 0.95]);
        sweep.add_image(&gt, &cams, &[3, 5], &[-1.0, 2.0]).unwrap();
        // τ = 0.25: all four right → IoU 1 for classes 0, 3, 5 → mIoU 1.
        assert_eq!(sweep.matrices[0].miou(), 1.0);
        // τ = 0.3: pixel 2 (gt 3) predicted 0 → class 3: 1/2, class 0: 1/2, class 5: 1 → 2/3.
        assert!((sweep.matrices[1].miou() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(sweep.matrices[1].count(3, 0), 1);
        // τ = 0.95: everything background → class 0: 1/4, classes 3, 5: 0 → 1/12.
        assert!((sweep.matrices[2].miou() - 1.0 / 12.0).abs() < 1e-12);
        assert_eq!(sweep.best(), (0.25, 1.0));
        let report = sweep.report((0..6).map(|c| format!("c{c}")).collect(), 0.3);
        assert_eq!((report.best_tau, report.best.miou, report.tau), (0.25, 1.0, 0.3));
        assert_eq!(report.at_tau.iou[3], Some(0.5));
        assert_eq!(report.sweep.len(), 3);
        // Baseline: class 5 has the higher score → all four pixels 5: class 5 IoU 1/4,
        // classes 0 and 3 IoU 0 → 1/12.
        assert_eq!(sweep.baseline.count(3, 5), 2);
        assert!((sweep.baseline.miou() - 1.0 / 12.0).abs() < 1e-12);
    }

    #[test]
    fn an_image_without_labels_is_all_background() {
        let mut sweep = CamSweep::new(3, &[0.1]);
        sweep.add_image(&[0, 2, 255], &[], &[], &[]).unwrap();
        assert_eq!(sweep.matrices[0].count(0, 0), 1);
        assert_eq!(sweep.matrices[0].count(2, 0), 1);
        assert_eq!(sweep.baseline.count(2, 0), 1);
    }
}
