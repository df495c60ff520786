//! What the networks' inputs go through outside the loader: the loader's normalisation for
//! inference (`cam`, `seg`, `irn_rw`) and its inverse (the dense-CRF loss compares colours),
//! and the downscale of a photo too large for the network. The training-time augmentations are
//! in [`super::augment`].

use tch::{Device, Kind, Tensor};

/// The loader's normalisation, `(x/255 − mean)/std`, as tensors on the device.
pub struct Normalise {
    mean: Tensor,
    std: Tensor,
}

impl Normalise {
    pub fn new(mean: [f32; 3], std: [f32; 3], device: Device) -> Normalise {
        let column = |v: [f32; 3]| Tensor::from_slice(&v).view([3, 1, 1]).to_device(device);
        Normalise { mean: column(mean), std: column(std) }
    }

    /// HWC RGB bytes → normalised [3, H, W] f32.
    pub fn apply(&self, pixels: &[u8], width: u32, height: u32) -> Tensor {
        let image = Tensor::from_slice(pixels).view([height as i64, width as i64, 3]).permute([2, 0, 1]);
        (image.to_device(self.mean.device()).to_kind(Kind::Float) / 255.0 - &self.mean) / &self.std
    }

    /// The inverse on a batch of the loader's images [N, 3, H, W]: `(x·std + mean)·255`, back
    /// in 0..255 (the dense-CRF loss compares colours).
    pub fn undo(&self, images: &Tensor) -> Tensor {
        (images * &self.std + &self.mean) * 255.0
    }
}

/// `image` [3, H, W] downscaled (bilinear, antialiased, aspect kept) so that its long side is
/// at most `max_side`; as it is when it already fits. Bounds what the network sees of a huge
/// photo (`cam.max_side`, `seg.infer.max_side`).
pub fn fit_long_side(image: &Tensor, max_side: u32) -> Tensor {
    let (h, w) = (image.size()[1], image.size()[2]);
    let long = h.max(w);
    if long <= i64::from(max_side) {
        return image.shallow_clone();
    }
    let scale = f64::from(max_side) / long as f64;
    let size = [((h as f64 * scale).round() as i64).max(1), ((w as f64 * scale).round() as i64).max(1)];
    image.unsqueeze(0).internal_upsample_bilinear2d_aa(size, false, None, None).squeeze_dim(0)
}
