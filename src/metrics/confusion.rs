//! A confusion matrix over classes 0..n (0 = background), accumulated pixel by pixel over a
//! whole split; ground truth 255 is ignored. IoU_c = TP / (TP + FP + FN); a class that appears
//! in neither the ground truth nor the prediction has no IoU and is left out of the mean (the
//! `nanmean` of IRNet's evaluation).

use serde::{Deserialize, Serialize};

/// The ground-truth value that marks pixels left out of the evaluation.
pub const IGNORE: u8 = 255;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    classes: usize,
    /// counts[gt · classes + pred]
    counts: Vec<u64>,
}

/// Why a pixel pair could not be counted.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("class {value} is out of range 0..{classes} ({what})")]
pub struct OutOfRange {
    pub value: u8,
    pub classes: usize,
    pub what: &'static str,
}

impl ConfusionMatrix {
    pub fn new(classes: usize) -> ConfusionMatrix {
        ConfusionMatrix { classes, counts: vec![0; classes * classes] }
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Counts the pixel pairs of one image (`gt` and `pred` of the same length).
    pub fn add(&mut self, gt: &[u8], pred: &[u8]) -> Result<(), OutOfRange> {
        debug_assert_eq!(gt.len(), pred.len());
        let n = self.classes;
        for (&g, &p) in gt.iter().zip(pred) {
            if g == IGNORE {
                continue;
            }
            if g as usize >= n {
                return Err(OutOfRange { value: g, classes: n, what: "ground truth" });
            }
            if p as usize >= n {
                return Err(OutOfRange { value: p, classes: n, what: "prediction" });
            }
            self.counts[g as usize * n + p as usize] += 1;
        }
        Ok(())
    }

    /// Adds another matrix of the same size (per-image or per-rank partial sums).
    pub fn merge(&mut self, other: &ConfusionMatrix) {
        assert_eq!(self.classes, other.classes, "confusion matrices of different sizes");
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// The raw counts, `[gt · classes + pred]` (to sum matrices across processes).
    pub fn counts_mut(&mut self) -> &mut [u64] {
        &mut self.counts
    }

    pub fn count(&self, gt: usize, pred: usize) -> u64 {
        self.counts[gt * self.classes + pred]
    }

    /// IoU per class; `None` where the class is in neither ground truth nor prediction.
    pub fn iou(&self) -> Vec<Option<f64>> {
        (0..self.classes)
            .map(|c| {
                let tp = self.count(c, c);
                let gt: u64 = (0..self.classes).map(|p| self.count(c, p)).sum();
                let pred: u64 = (0..self.classes).map(|g| self.count(g, c)).sum();
                let union = gt + pred - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean of the defined IoUs (0 when none is defined).
    pub fn miou(&self) -> f64 {
        self.miou_of_first(self.classes)
    }

    /// Mean of the defined IoUs of classes `0..classes`: a matrix with an extra last column
    /// for "no label" (uncertain pixels) scores those as errors of their ground-truth class.
    pub fn miou_of_first(&self, classes: usize) -> f64 {
        let defined: Vec<f64> = self.iou().into_iter().take(classes).flatten().collect();
        if defined.is_empty() {
            0.0
        } else {
            defined.iter().sum::<f64>() / defined.len() as f64
        }
    }

    /// A prediction that has collapsed onto one class: `(class, its share of the predicted
    /// pixels, its share of the ground truth)` when at least `min_share` of the counted pixels
    /// are predicted as one class that the ground truth gives less than `min_share - 0.1` of.
    pub fn collapse(&self, min_share: f64) -> Option<(usize, f64, f64)> {
        let total = self.counts.iter().sum::<u64>();
        if total == 0 {
            return None;
        }
        let share = |n: u64| n as f64 / total as f64;
        let predicted = |c: usize| share((0..self.classes).map(|g| self.count(g, c)).sum());
        let class = (0..self.classes).max_by(|&a, &b| predicted(a).total_cmp(&predicted(b)))?;
        let truth = share((0..self.classes).map(|p| self.count(class, p)).sum());
        (predicted(class) >= min_share && truth < min_share - 0.1).then(|| (class, predicted(class), truth))
    }

    /// Of the ground truth's object pixels (every class but the background, 0), the share given
    /// their own class (coverage: a recall); of the pixels given an object class, the share
    /// that are that object (precision). 0 where there are none.
    pub fn foreground_coverage_precision(&self) -> (f64, f64) {
        let objects = 1..self.classes;
        let correct: u64 = objects.clone().map(|c| self.count(c, c)).sum();
        let truth: u64 = objects.clone().flat_map(|g| (0..self.classes).map(move |p| (g, p))).map(|(g, p)| self.count(g, p)).sum();
        let labelled: u64 = objects.flat_map(|p| (0..self.classes).map(move |g| (g, p))).map(|(g, p)| self.count(g, p)).sum();
        let share = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        (share(correct, truth), share(correct, labelled))
    }

    /// Fraction of counted pixels predicted correctly.
    pub fn pixel_accuracy(&self) -> f64 {
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..self.classes).map(|c| self.count(c, c)).sum();
        if total == 0 {
            0.0
        } else {
            correct as f64 / total as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gt   = [0 0 1 1 2 255]
    /// pred = [0 1 1 1 0 2  ]
    /// class 0: TP 1, FP 1 (the 2→0), FN 1 (the 0→1) → 1/3
    /// class 1: TP 2, FP 1, FN 0 → 2/3;  class 2: TP 0, FN 1 → 0;  class 3: absent → None
    /// mIoU over the defined three = (1/3 + 2/3 + 0)/3 = 1/3; accuracy 3/5. Objects: three
    /// pixels in the truth (1, 1, 2), two given their class → coverage 2/3; three given an
    /// object class (the 0→1, both 1s), two of them right → precision 2/3.
    #[test]
    fn iou_and_miou_by_hand() {
        let mut m = ConfusionMatrix::new(4);
        m.add(&[0, 0, 1, 1, 2, 255], &[0, 1, 1, 1, 0, 2]).unwrap();
        let iou = m.iou();
        assert!((iou[0].unwrap() - 1.0 / 3.0).abs() < 1e-12);
        assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou[2], Some(0.0));
        assert_eq!(iou[3], None);
        assert!((m.miou() - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.pixel_accuracy() - 0.6).abs() < 1e-12);
        let (coverage, precision) = m.foreground_coverage_precision();
        assert!((coverage - 2.0 / 3.0).abs() < 1e-12 && (precision - 2.0 / 3.0).abs() < 1e-12, "{coverage} {precision}");
        assert_eq!(ConfusionMatrix::new(3).foreground_coverage_precision(), (0.0, 0.0));
    }

    /// 100 pixels, 60 of class 0 and 40 of class 1: all predicted 0 is a collapse (share 1.0
    /// against 0.6); 95 of them predicted 0 is not at 0.99; nor is predicting the class that
    /// the ground truth is made of.
    #[test]
    fn a_prediction_of_one_class_is_a_collapse() {
        let gt: Vec<u8> = (0..100).map(|i| u8::from(i >= 60)).collect();
        let mut all_zero = ConfusionMatrix::new(2);
        all_zero.add(&gt, &[0; 100]).unwrap();
        assert_eq!(all_zero.collapse(0.99), Some((0, 1.0, 0.6)));
        let mut mostly = ConfusionMatrix::new(2);
        let pred: Vec<u8> = (0..100).map(|i| u8::from(i >= 95)).collect();
        mostly.add(&gt, &pred).unwrap();
        assert_eq!(mostly.collapse(0.99), None);
        let mut uniform = ConfusionMatrix::new(2);
        uniform.add(&[0; 100], &[0; 100]).unwrap();
        assert_eq!(uniform.collapse(0.99), None);
        assert_eq!(ConfusionMatrix::new(2).collapse(0.99), None);
    }

    /// Two classes and an extra "uncertain" column (2): gt (0, 0, 1, 1) labelled (0, 2, 1, 2).
    /// Class 0: TP 1, one pixel uncertain → IoU 1/2; class 1 likewise; the column is left out.
    #[test]
    fn uncertain_pixels_count_against_their_class() {
        let mut m = ConfusionMatrix::new(3);
        m.add(&[0, 0, 1, 1], &[0, 2, 1, 2]).unwrap();
        assert!((m.miou_of_first(2) - 0.5).abs() < 1e-12);
        assert_eq!(m.iou()[2], Some(0.0));
    }

    #[test]
    fn merging_equals_accumulating_and_out_of_range_is_named() {
        let (gt, pred) = ([0u8, 1, 2, 2], [0u8, 2, 2, 1]);
        let mut whole = ConfusionMatrix::new(3);
        whole.add(&gt, &pred).unwrap();
        let mut a = ConfusionMatrix::new(3);
        a.add(&gt[..2], &pred[..2]).unwrap();
        let mut b = ConfusionMatrix::new(3);
        b.add(&gt[2..], &pred[2..]).unwrap();
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(whole.add(&[3], &[0]), Err(OutOfRange { value: 3, classes: 3, what: "ground truth" }));
        assert_eq!(whole.add(&[0], &[7]).unwrap_err().to_string(), "class 7 is out of range 0..3 (prediction)");
    }
}
