//! The segmenter's pixel cross-entropy (docs/segmenter.md): labels 0..C, 255 ignored.
//!
//! Each image's loss is the mean over *its* labelled pixels, and the batch's loss the mean
//! over its images, so that the trainer's split of a batch into ranks and micro-batches (which
//! weights each image equally) gives the same gradient. An image with no labelled pixel
//! contributes 0, never a NaN.

use tch::{Kind, Reduction, Tensor};

/// The ignored label.
pub const IGNORE: i64 = 255;

/// `logits` [N, C, h, w] (f32), `labels` [N, h, w] integer (255 ignored) → a scalar.
pub fn pixel_cross_entropy(logits: &Tensor, labels: &Tensor) -> Tensor {
    let labels = labels.to_kind(Kind::Int64);
    let per_pixel = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::None, IGNORE, 0.0);
    let labelled = labels.ne(IGNORE).to_kind(Kind::Float).sum_dim_intlist([1, 2].as_slice(), false, Kind::Float);
    let per_image = per_pixel.sum_dim_intlist([1, 2].as_slice(), false, Kind::Float) / labelled.clamp_min(1.0);
    per_image.mean(Kind::Float)
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
        let loss = pixel_cross_entropy(&logits, &labels).double_value(&[]);
        let image0 = (-(0.75f64).ln() - (0.25f64).ln()) / 2.0;
        assert!((loss - image0 / 2.0).abs() < 1e-6, "{loss} vs {}", image0 / 2.0);
        // Every pixel ignored: 0 and a zero gradient, not NaN.
        let logits = Tensor::zeros([1, 2, 2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let loss = pixel_cross_entropy(&logits, &Tensor::full([1, 2, 2], 255, (Kind::Int64, Device::Cpu)));
        loss.backward();
        assert_eq!(loss.double_value(&[]), 0.0);
        assert_eq!(logits.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
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
