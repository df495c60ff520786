//! The segmenter's pixel cross-entropy (docs/segmenter.md): labels 0..C, 255 ignored.
//!
//! Each image's loss is the mean over *its* labelled pixels, and the batch's loss the mean
//! over its images, so that the trainer's split of a batch into ranks and micro-batches (which
//! weights each image equally) gives the same gradient. An image with no labelled pixel
//! contributes 0, never a NaN. With class weights each pixel's term is weighted by its class's
//! and the image's sum still divided by its count of labelled pixels: the weights average 1 over
//! the dataset's labelled pixels, so they shift the loss between classes, not its scale.

use tch::{Kind, Reduction, Tensor};

/// The ignored label.
pub const IGNORE: i64 = 255;

/// `logits` [N, C, h, w] (f32), `labels` [N, h, w] integer (255 ignored), optional
/// `class_weights` [C] (f32) → a scalar.
pub fn pixel_cross_entropy(logits: &Tensor, labels: &Tensor, class_weights: Option<&Tensor>) -> Tensor {
    let labels = labels.to_kind(Kind::Int64);
    let per_pixel = logits.cross_entropy_loss(&labels, class_weights, Reduction::None, IGNORE, 0.0);
    let labelled = labels.ne(IGNORE).to_kind(Kind::Float).sum_dim_intlist([1, 2].as_slice(), false, Kind::Float);
    let per_image = per_pixel.sum_dim_intlist([1, 2].as_slice(), false, Kind::Float) / labelled.clamp_min(1.0);
    per_image.mean(Kind::Float)
}

/// The class weights `w_c ∝ min(f_c^−p, r · min_k f_k^−p)` of the pixel counts `counts[c]`
/// (`seg.loss.class_balance` = p, `seg.loss.class_balance_max_ratio` = r), scaled so that
/// Σ_c f_c·w_c = 1: no class weighs more than r times the most frequent one. A class without
/// pixels gets 0 (it is never a target).
pub fn class_weights(counts: &[u64], power: f64, max_ratio: f64) -> Vec<f64> {
    let total = counts.iter().sum::<u64>().max(1) as f64;
    let share: Vec<f64> = counts.iter().map(|&n| n as f64 / total).collect();
    let unclipped: Vec<f64> = share.iter().map(|&f| if f > 0.0 { f.powf(-power) } else { 0.0 }).collect();
    let least = unclipped.iter().copied().filter(|&w| w > 0.0).fold(f64::INFINITY, f64::min);
    let raw: Vec<f64> = unclipped.iter().map(|&w| w.min(max_ratio * least)).collect();
    let mean: f64 = share.iter().zip(&raw).map(|(f, w)| f * w).sum();
    raw.iter().map(|w| w / mean).collect()
}

/// `labels` [N, H, W] resized to [N, h, w] by nearest neighbour as PIL's `NEAREST` does it
/// (source index ⌊(i + ½)·H/h⌋), as DeepLab v2's reference resizes labels to each output.
pub fn resize_labels(labels: &Tensor, h: i64, w: i64) -> Tensor {
    let size = labels.size();
    let index = |src: i64, dst: i64| {
        let rows: Vec<i64> = (0..dst).map(|i| (((2 * i + 1) * src) / (2 * dst)).min(src - 1)).collect();
        Tensor::from_slice(&rows).to_device(labels.device())
    };
    labels.index_select(1, &index(size[1], h)).index_select(2, &index(size[2], w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two classes, logits (0, ln 3) at every pixel: p(class 1) = 3/4, so CE is −ln ¾ for a
    /// pixel of class 1 and −ln ¼ for class 0.
    #[test]
    fn per_image_means_over_labelled_pixels() {
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 3f32.ln(), 3f32.ln(), 3f32.ln(), 3f32.ln()]).view([1, 2, 2, 2]);
        let logits = Tensor::cat(&[logits.shallow_clone(), logits], 0);
        // Image 0: pixels 1, 0, 255, 255 → (−ln ¾ − ln ¼)/2; image 1: all 255 → 0.
        let labels = Tensor::from_slice(&[1i64, 0, 255, 255, 255, 255, 255, 255]).view([2, 2, 2]);
        let loss = pixel_cross_entropy(&logits, &labels, None).double_value(&[]);
        let image0 = (-(0.75f64).ln() - (0.25f64).ln()) / 2.0;
        assert!((loss - image0 / 2.0).abs() < 1e-6, "{loss} vs {}", image0 / 2.0);
        // Every pixel ignored: 0 and a zero gradient, not NaN.
        let logits = Tensor::zeros([1, 2, 2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let loss = pixel_cross_entropy(&logits, &Tensor::full([1, 2, 2], 255, (Kind::Int64, Device::Cpu)), None);
        loss.backward();
        assert_eq!(loss.double_value(&[]), 0.0);
        assert_eq!(logits.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    /// Counts (6, 2, 0): shares ¾, ¼; p = 1 gives raw weights 4/3, 4, whose share-weighted
    /// mean is 2, so w = (2/3, 2, 0); p = 0 gives 1 for every class present.
    #[test]
    fn class_weights_average_one_over_the_labelled_pixels() {
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        let unbounded = f64::INFINITY;
        assert!(close(&class_weights(&[6, 2, 0], 1.0, unbounded), &[2.0 / 3.0, 2.0, 0.0]));
        assert!(close(&class_weights(&[6, 2, 0], 0.0, unbounded), &[1.0, 1.0, 0.0]));
        // p = ½: raw (4/3)^½, 2; mean ¾·(4/3)^½ + ¼·2.
        let mean = 0.75 * (4.0f64 / 3.0).sqrt() + 0.5;
        assert!(close(&class_weights(&[6, 2, 0], 0.5, unbounded), &[(4.0f64 / 3.0).sqrt() / mean, 2.0 / mean, 0.0]));
    }

    /// Counts (80, 16, 4): shares 0.8, 0.16, 0.04; at p = 1 the raw weights 5/4, 25/4, 25 are 1 : 5 : 20;
    /// a ratio cap of 4 makes them 5/4, 5, 5, whose share-weighted mean is
    /// 0.8·5/4 + 0.16·5 + 0.04·5 = 2, so w = (5/8, 5/2, 5/2).
    #[test]
    fn class_weights_are_capped_at_a_ratio_to_the_most_frequent_class() {
        let weights = class_weights(&[80, 16, 4], 1.0, 4.0);
        let expected = [0.625, 2.5, 2.5];
        assert!(weights.iter().zip(&expected).all(|(w, e)| (w - e).abs() < 1e-12), "{weights:?}");
    }

    /// The image of the first test with weights (3, 1): class 0's pixel counts three times, and
    /// the sum is still divided by the 2 labelled pixels.
    #[test]
    fn class_weights_scale_each_pixel_term() {
        let logits = Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 3f32.ln(), 3f32.ln(), 3f32.ln(), 3f32.ln()]).view([1, 2, 2, 2]);
        let labels = Tensor::from_slice(&[1i64, 0, 255, 255]).view([1, 2, 2]);
        let weights = Tensor::from_slice(&[3.0f32, 1.0]);
        let loss = pixel_cross_entropy(&logits, &labels, Some(&weights)).double_value(&[]);
        let expected = (-(0.75f64).ln() - 3.0 * (0.25f64).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn labels_resize_like_pil_nearest() {
        // 4 → 2: source rows ⌊(2i+1)·4/4⌋ = 1, 3. 3 → 2: ⌊(2i+1)·3/4⌋ = 0, 2.
        let labels = Tensor::arange(12, (Kind::Int64, Device::Cpu)).view([1, 4, 3]);
        let small = resize_labels(&labels, 2, 2);
        let values: Vec<i64> = Vec::try_from(small.flatten(0, -1)).unwrap();
        assert_eq!(values, [3, 5, 9, 11]);
        // Upsampling 2 → 4 repeats: ⌊(2i+1)·2/8⌋ = 0, 0, 1, 1.
        let up = resize_labels(&Tensor::from_slice(&[1i64, 2]).view([1, 2, 1]), 4, 1);
        assert_eq!(Vec::<i64>::try_from(up.flatten(0, -1)).unwrap(), [1, 1, 2, 2]);
    }
}
