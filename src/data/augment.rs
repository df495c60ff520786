//! Training augmentations for the CAM classifiers (IRNet/AMR pipeline, docs/methods.md).
//!
//! A decoded RGB image and (optionally) its label mask go through, in this order:
//! 1. random resize of the long side (image: PIL-style antialiased bilinear/bicubic via
//!    `fast_image_resize`; mask: PIL nearest neighbour),
//! 2. horizontal flip with probability ½,
//! 3. colour jitter with torchvision `ColorJitter` tensor semantics (image only),
//! 4. per-channel normalisation,
//! 5. IRNet `random_crop`: pad (image 0.0, mask 255) or take a random window.
//!
//! The output is planar CHW `f32` plus the mask with the same geometry.
//!
//! # Random draws
//! Every random number comes from the caller's `rng`, always in this order, and all of
//! them are drawn before any pixel work (so a failed call consumes nothing):
//! 1. resize target `rng.random_range(long_min..=long_max)` (`u32`), if the resize is on;
//! 2. flip `rng.random_bool(0.5)`, if `hflip`;
//! 3. colour jitter, only the ops whose strength is non-zero: first their order by a
//!    Fisher–Yates shuffle of the enabled ops listed as (brightness, contrast, saturation,
//!    hue), drawing `rng.random_range(0..=i)` (`usize`) for `i` = n−1 down to 1; then
//!    the factors as `rng.random_range(lo..=hi)` (`f32`) in the order brightness,
//!    contrast, saturation, hue (torchvision: `randperm`, then the factors);
//! 4. crop offsets, if `crop > 0`: x then y, each `rng.random_range(0..=|size − crop|)`
//!    (`u32`), the window's offset in the image when it is larger than `crop`, else the
//!    image's offset in the padded container.
//!
//! # Fidelity to the references
//! - Resize: PIL's antialiased convolution with its pass order (horizontal first); the
//!   result matches `PIL.Image.resize` to within 1 grey level. Sizes round half to even
//!   (`np.round`). Mask: PIL `NEAREST`, source index ⌊(i + ½)·src/dst⌋, exact.
//! - Jitter: torchvision's tensor ops in `f32`, grey = 0.2989·R + 0.587·G + 0.114·B
//!   (torchvision's weights; PIL's `L` uses 0.299); agrees with `torchvision` 0.26 to
//!   about 1e-6.
//! - Normalisation is computed as `x·(1/std) − mean/std` (within an ulp or two of
//!   `(x − mean)/std`).
//!
//! # Speed
//! Flip, crop, padding and normalisation happen in the single final write; the jitter
//! ops run row by row on three small planar `f32` rows that stay in L1, and only on the
//! rows and columns that survive the crop. Contrast needs the mean over the whole
//! image, which costs one extra read pass (only when contrast is on). The mask is
//! resized, flipped and cropped in one gather.

use crate::rounding::floor;
use fast_image_resize as fir;
use rand::Rng;

/// Interpolation of the image resize (the mask always uses nearest neighbour); written
/// `"bilinear"` / `"bicubic"` in configuration files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// PIL `BILINEAR` (triangle filter, antialiased when downscaling).
    #[default]
    Bilinear,
    /// PIL `BICUBIC` (Catmull–Rom, a = −0.5, antialiased when downscaling); IRNet's choice.
    Bicubic,
}

/// Strengths of torchvision's `ColorJitter(brightness, contrast, saturation, hue)`.
///
/// Factors are drawn from `[max(0, 1 − x), 1 + x]` for the first three and from
/// `[−hue, hue]` for the hue shift; a strength of 0 disables its op. All default to 0.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ColorJitter {
    /// Brightness strength, ≥ 0.
    pub brightness: f32,
    /// Contrast strength, ≥ 0.
    pub contrast: f32,
    /// Saturation strength, ≥ 0.
    pub saturation: f32,
    /// Hue strength, in [0, 0.5] (a fraction of the colour wheel).
    pub hue: f32,
}

/// Settings of the augmentation pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentParams {
    /// Inclusive range of the resized long side; `(0, 0)` disables the resize.
    pub resize_long: (u32, u32),
    /// Image interpolation of the resize.
    pub filter: ResizeFilter,
    /// Flip horizontally with probability ½.
    pub hflip: bool,
    /// Colour jitter strengths (all 0: no jitter).
    pub jitter: ColorJitter,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided out after subtracting the mean.
    pub std: [f32; 3],
    /// Side of the square output crop; 0 keeps the resized size.
    pub crop: u32,
}

/// ImageNet channel means.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Default for AugmentParams {
    /// The CAM training recipe of the IRNet/AMR pipeline (docs/methods.md): long side in [320, 640], flip, ImageNet
    /// normalisation, crop 512, no jitter.
    fn default() -> Self {
        Self {
            resize_long: (320, 640),
            filter: ResizeFilter::Bilinear,
            hflip: true,
            jitter: ColorJitter::default(),
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            crop: 512,
        }
    }
}

impl AugmentParams {
    /// The output size for a `width`×`height` input: `(crop, crop)` when cropping, else
    /// the resized size if the resize is off or fixed, `None` when it is random.
    pub fn output_size(&self, width: u32, height: u32) -> Option<(u32, u32)> {
        let (lo, hi) = self.resize_long;
        if self.crop > 0 {
            Some((self.crop, self.crop))
        } else if hi == 0 {
            Some((width, height))
        } else if lo == hi {
            Some(resized_size(width, height, hi))
        } else {
            None
        }
    }

    fn validate(&self) -> Result<(), AugmentError> {
        let (lo, hi) = self.resize_long;
        if lo > hi || (lo == 0 && hi > 0) {
            return Err(AugmentError::InvalidParams("resize_long must be (0, 0) or 1 ≤ min ≤ max"));
        }
        let j = &self.jitter;
        if ![j.brightness, j.contrast, j.saturation, j.hue].iter().all(|s| s.is_finite() && *s >= 0.0) {
            return Err(AugmentError::InvalidParams("jitter strengths must be finite and ≥ 0"));
        }
        if j.hue > 0.5 {
            return Err(AugmentError::InvalidParams("jitter hue must be ≤ 0.5"));
        }
        if !self.mean.iter().all(|m| m.is_finite()) || !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return Err(AugmentError::InvalidParams("mean must be finite and std finite and > 0"));
        }
        Ok(())
    }
}

/// An augmented sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// Normalised image, planar CHW (3 planes of `width`×`height`).
    pub chw: Vec<f32>,
    /// Mask with the same geometry (255 = ignore, also in the padding), if one was given.
    pub mask: Option<Vec<u8>>,
}

/// Why an augmentation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AugmentError {
    /// The image has no pixels.
    #[error("image is empty ({width}x{height})")]
    EmptyImage {
        /// Given width.
        width: u32,
        /// Given height.
        height: u32,
    },
    /// The RGB buffer does not hold exactly width×height×3 bytes.
    #[error("RGB buffer has {actual} bytes, expected {expected}")]
    ImageSize {
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// The mask does not hold exactly width×height bytes.
    #[error("mask has {actual} bytes, expected {expected} (image size)")]
    MaskSize {
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// The output image buffer has the wrong length.
    #[error("output image buffer has {actual} values, expected {expected}")]
    OutputSize {
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// The output mask buffer has the wrong length.
    #[error("output mask buffer has {actual} bytes, expected {expected}")]
    OutputMaskSize {
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// Exactly one of the input mask and the output mask buffer was given.
    #[error("an input mask and an output mask buffer must be given together")]
    MaskPresence,
    /// `augment_into` needs a size known in advance: set `crop` or fix the resize.
    #[error("output size depends on the random resize; set crop > 0 or use augment()")]
    UnknownOutputSize,
    /// Inconsistent settings.
    #[error("invalid augmentation parameters: {0}")]
    InvalidParams(&'static str),
    /// The resize library refused the images.
    #[error("resize failed: {0}")]
    Resize(#[from] fir::ResizeError),
    /// The resize library refused a buffer.
    #[error("resize buffer: {0}")]
    ResizeBuffer(#[from] fir::ImageBufferError),
}

/// Augments one sample, allocating the output.
///
/// `rgb`: row-major HWC u8 (3 bytes a pixel); `mask`: row-major u8 of the same
/// width×height. See the module docs for the steps and the order of random draws.
pub fn augment(rgb: &[u8], width: u32, height: u32, mask: Option<&[u8]>, params: &AugmentParams, rng: &mut impl Rng) -> Result<Augmented, AugmentError> {
    let src = Source::new(rgb, width, height, mask, params)?;
    let plan = Plan::draw(width, height, params, rng);
    let (ow, oh) = plan.out;
    let mut chw = vec![0.0; 3 * area(ow, oh)];
    let mut out_mask = mask.map(|_| vec![0; area(ow, oh)]);
    render(&src, params, &plan, &mut chw, out_mask.as_deref_mut())?;
    Ok(Augmented { width: ow, height: oh, chw, mask: out_mask })
}

/// Same as [`augment`], but writes into caller-provided buffers (e.g. a slot of a batch
/// tensor): `out_chw` must hold exactly 3·w·h values and `out_mask` w·h bytes for the
/// size given by [`AugmentParams::output_size`] (`crop`×`crop` when cropping), and
/// `out_mask` must be given exactly when `mask` is. The output is not allocated.
#[allow(clippy::too_many_arguments)]
pub fn augment_into(
    rgb: &[u8],
    width: u32,
    height: u32,
    mask: Option<&[u8]>,
    params: &AugmentParams,
    rng: &mut impl Rng,
    out_chw: &mut [f32],
    out_mask: Option<&mut [u8]>,
) -> Result<(), AugmentError> {
    let src = Source::new(rgb, width, height, mask, params)?;
    let (ow, oh) = params.output_size(width, height).ok_or(AugmentError::UnknownOutputSize)?;
    let len = area(ow, oh);
    check_len(out_chw.len(), len.saturating_mul(3), |expected, actual| AugmentError::OutputSize { expected, actual })?;
    match (&mask, &out_mask) {
        (Some(_), Some(m)) => check_len(m.len(), len, |expected, actual| AugmentError::OutputMaskSize { expected, actual })?,
        (None, None) => {}
        _ => return Err(AugmentError::MaskPresence),
    }
    let plan = Plan::draw(width, height, params, rng);
    render(&src, params, &plan, out_chw, out_mask)
}

fn check_len(actual: usize, expected: usize, err: impl FnOnce(usize, usize) -> AugmentError) -> Result<(), AugmentError> {
    if actual == expected {
        Ok(())
    } else {
        Err(err(expected, actual))
    }
}

/// Pixel count of a `width`×`height` image (saturating, so that absurd sizes fail the
/// length checks instead of overflowing).
fn area(width: u32, height: u32) -> usize {
    (width as usize).saturating_mul(height as usize)
}

/// A checked input sample.
struct Source<'a> {
    rgb: &'a [u8],
    width: u32,
    height: u32,
    mask: Option<&'a [u8]>,
}

impl<'a> Source<'a> {
    /// Validates the settings and the buffer sizes.
    fn new(rgb: &'a [u8], width: u32, height: u32, mask: Option<&'a [u8]>, params: &AugmentParams) -> Result<Self, AugmentError> {
        params.validate()?;
        if width == 0 || height == 0 {
            return Err(AugmentError::EmptyImage { width, height });
        }
        let pixels = area(width, height);
        check_len(rgb.len(), pixels.saturating_mul(3), |expected, actual| AugmentError::ImageSize { expected, actual })?;
        if let Some(m) = mask {
            check_len(m.len(), pixels, |expected, actual| AugmentError::MaskSize { expected, actual })?;
        }
        Ok(Self { rgb, width, height, mask })
    }
}

/// Size after resizing the long side to `target`, rounded half to even like IRNet's
/// `np.round` (never below 1 pixel).
fn resized_size(width: u32, height: u32, target: u32) -> (u32, u32) {
    let scale = f64::from(target) / f64::from(width.max(height));
    let side = |s: u32| ((f64::from(s) * scale).round_ties_even() as u32).max(1);
    (side(width), side(height))
}

// ---------------------------------------------------------------------------------------
// Random plan

/// A colour jitter operation with its drawn factor.
#[derive(Debug, Clone, Copy, PartialEq)]
enum JitterOp {
    /// Multiply by the factor (blend with black).
    Brightness(f32),
    /// Blend with the image's mean grey level.
    Contrast(f32),
    /// Blend with the pixel's grey level.
    Saturation(f32),
    /// Rotate the hue by the shift (fraction of a turn).
    Hue(f32),
}

/// One axis of the crop: `len` pixels from `src` in the (flipped) resized image go to
/// `dst` in the output.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    src: u32,
    dst: u32,
    len: u32,
}

/// Every random decision of one call, drawn up front.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    resized: (u32, u32),
    flip: bool,
    jitter: [JitterOp; 4],
    jitter_len: usize,
    out: (u32, u32),
    x: Span,
    y: Span,
}

impl Plan {
    /// Draws in the order documented at the top of the module.
    fn draw(width: u32, height: u32, params: &AugmentParams, rng: &mut impl Rng) -> Self {
        let (lo, hi) = params.resize_long;
        let resized = if hi == 0 { (width, height) } else { resized_size(width, height, rng.random_range(lo..=hi)) };
        let flip = params.hflip && rng.random_bool(0.5);
        let (jitter, jitter_len) = draw_jitter(&params.jitter, rng);
        let x = draw_span(resized.0, params.crop, rng);
        let y = draw_span(resized.1, params.crop, rng);
        let out = if params.crop > 0 { (params.crop, params.crop) } else { resized };
        Self { resized, flip, jitter, jitter_len, out, x, y }
    }

    fn jitter(&self) -> &[JitterOp] {
        &self.jitter[..self.jitter_len]
    }

    /// First source column of the crop window in the unflipped resized image.
    fn src_x(&self) -> u32 {
        if self.flip {
            self.resized.0 - self.x.src - self.x.len
        } else {
            self.x.src
        }
    }
}

/// The enabled jitter ops in a random order with their factors (torchvision
/// `ColorJitter.get_params`), as a fixed array and the number in use.
fn draw_jitter(j: &ColorJitter, rng: &mut impl Rng) -> ([JitterOp; 4], usize) {
    // Canonical order: brightness, contrast, saturation, hue (index 3).
    const MAKE: [fn(f32) -> JitterOp; 4] = [JitterOp::Brightness, JitterOp::Contrast, JitterOp::Saturation, JitterOp::Hue];
    let strengths = [j.brightness, j.contrast, j.saturation, j.hue];
    let mut enabled = [0usize; 4];
    let mut n = 0;
    for k in (0..4).filter(|&k| strengths[k] > 0.0) {
        enabled[n] = k;
        n += 1;
    }
    let mut order = enabled;
    for i in (1..n).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut factors = [0.0f32; 4];
    for &k in &enabled[..n] {
        let s = strengths[k];
        factors[k] = if k == 3 { rng.random_range(-s..=s) } else { rng.random_range((1.0 - s).max(0.0)..=1.0 + s) };
    }
    let mut ops = [JitterOp::Brightness(1.0); 4];
    for (op, &k) in ops.iter_mut().zip(&order[..n]) {
        *op = MAKE[k](factors[k]);
    }
    (ops, n)
}

/// IRNet `random_crop` along one axis of length `size`.
fn draw_span(size: u32, crop: u32, rng: &mut impl Rng) -> Span {
    if crop == 0 {
        Span { src: 0, dst: 0, len: size }
    } else if size > crop {
        Span { src: rng.random_range(0..=size - crop), dst: 0, len: crop }
    } else {
        Span { src: 0, dst: rng.random_range(0..=crop - size), len: size }
    }
}

// ---------------------------------------------------------------------------------------
// Pixel work

fn render(src: &Source, params: &AugmentParams, plan: &Plan, out_chw: &mut [f32], out_mask: Option<&mut [u8]>) -> Result<(), AugmentError> {
    if let (Some(m), Some(out)) = (src.mask, out_mask) {
        write_mask(m, src.width, src.height, plan, out);
    }
    if plan.resized == (src.width, src.height) {
        write_image(src.rgb, params, plan, out_chw);
    } else {
        let resized = resize_rgb(src, plan.resized, params.filter)?;
        write_image(&resized, params, plan, out_chw);
    }
    Ok(())
}

/// PIL-equivalent antialiased resize of an RGB u8 image.
///
/// Two single-axis passes, horizontal first as PIL does: `fast_image_resize` would run
/// the vertical pass first for u8 images, and since each pass rounds and clamps to u8,
/// the order shows where a bicubic kernel overshoots.
fn resize_rgb(src: &Source, (rw, rh): (u32, u32), filter: ResizeFilter) -> Result<Vec<u8>, AugmentError> {
    let kernel = match filter {
        ResizeFilter::Bilinear => fir::FilterType::Bilinear,
        ResizeFilter::Bicubic => fir::FilterType::CatmullRom,
    };
    let options = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(kernel));
    let mut resizer = fir::Resizer::new();
    let mut pass = |src: &[u8], (sw, sh): (u32, u32), (dw, dh): (u32, u32)| {
        let src = fir::images::ImageRef::new(sw, sh, src, fir::PixelType::U8x3)?;
        let mut dst = fir::images::Image::new(dw, dh, fir::PixelType::U8x3);
        resizer.resize(&src, &mut dst, &options)?;
        Ok::<_, AugmentError>(dst.into_vec())
    };
    let wide = pass(src.rgb, (src.width, src.height), (rw, src.height))?;
    pass(&wide, (rw, src.height), (rw, rh))
}

/// PIL `NEAREST` source index of destination index `i` when `src` pixels become `dst`:
/// ⌊(i + ½)·src/dst⌋, in exact integer arithmetic.
fn nearest(i: u32, src: u32, dst: u32) -> usize {
    ((2 * u64::from(i) + 1) * u64::from(src) / (2 * u64::from(dst))) as usize
}

/// Resize (nearest), flip, crop and pad the mask in one gather.
fn write_mask(mask: &[u8], width: u32, height: u32, plan: &Plan, out: &mut [u8]) {
    let (rw, rh) = plan.resized;
    let src_x = plan.src_x();
    let mut cols: Vec<usize> = (src_x..src_x + plan.x.len).map(|x| nearest(x, width, rw)).collect();
    if plan.flip {
        cols.reverse();
    }
    let ow = plan.out.0 as usize;
    for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
        match window_row(oy, plan.y) {
            Some(y) => {
                let src_row = &mask[nearest(y, height, rh) * width as usize..][..width as usize];
                let (left, mid, right) = split_span(row, plan.x);
                left.fill(255);
                right.fill(255);
                for (o, &c) in mid.iter_mut().zip(&cols) {
                    *o = src_row[c];
                }
            }
            None => row.fill(255),
        }
    }
}

/// Source row (in the resized image) of output row `oy`, if it is inside the window.
fn window_row(oy: usize, y: Span) -> Option<u32> {
    let oy = oy as u32;
    (y.dst..y.dst + y.len).contains(&oy).then(|| y.src + oy - y.dst)
}

/// Splits an output row into left padding, the window and right padding.
fn split_span<T>(row: &mut [T], x: Span) -> (&mut [T], &mut [T], &mut [T]) {
    let (left, rest) = row.split_at_mut(x.dst as usize);
    let (mid, right) = rest.split_at_mut(x.len as usize);
    (left, mid, right)
}

/// Three planar `f32` rows (R, G, B) in [0, 1]: the working set of the jitter ops.
struct Rows {
    r: Vec<f32>,
    g: Vec<f32>,
    b: Vec<f32>,
}

impl Rows {
    fn new(len: usize) -> Self {
        Self { r: vec![0.0; len], g: vec![0.0; len], b: vec![0.0; len] }
    }

    /// Deinterleaves HWC u8 pixels into the rows, scaled to [0, 1] like `to_tensor`.
    fn load(&mut self, pixels: &[u8]) {
        let rows = self.r.iter_mut().zip(&mut self.g).zip(&mut self.b);
        for (((r, g), b), px) in rows.zip(pixels.chunks_exact(3)) {
            *r = f32::from(px[0]) / 255.0;
            *g = f32::from(px[1]) / 255.0;
            *b = f32::from(px[2]) / 255.0;
        }
    }

    fn apply(&mut self, op: JitterOp, contrast_mean: f32) {
        match op {
            JitterOp::Brightness(f) => self.blend_const(f, 0.0),
            JitterOp::Contrast(f) => self.blend_const(f, contrast_mean),
            JitterOp::Saturation(f) => self.blend_gray(f),
            JitterOp::Hue(shift) => self.shift_hue(shift),
        }
    }

    /// `x ← clamp(f·x + (1−f)·target)` on every channel.
    fn blend_const(&mut self, f: f32, target: f32) {
        let bias = (1.0 - f) * target;
        // One loop a channel: a chained iterator would not vectorise.
        for channel in [&mut self.r, &mut self.g, &mut self.b] {
            for x in channel.iter_mut() {
                *x = clamp01(f * *x + bias);
            }
        }
    }

    /// `x ← clamp(f·x + (1−f)·grey(pixel))`.
    fn blend_gray(&mut self, f: f32) {
        let k = 1.0 - f;
        for ((r, g), b) in self.r.iter_mut().zip(&mut self.g).zip(&mut self.b) {
            let gray = k * grey(*r, *g, *b);
            *r = clamp01(f * *r + gray);
            *g = clamp01(f * *g + gray);
            *b = clamp01(f * *b + gray);
        }
    }

    fn shift_hue(&mut self, shift: f32) {
        for ((r, g), b) in self.r.iter_mut().zip(&mut self.g).zip(&mut self.b) {
            [*r, *g, *b] = hue_shifted(*r, *g, *b, shift);
        }
    }

    /// Sum of the grey levels of the row (8 f32 lanes so that the compiler can
    /// vectorise; the caller accumulates rows in f64 to keep large images precise).
    fn grey_sum(&self) -> f64 {
        let mut lanes = [0.0f32; 8];
        let (r, g, b) = (&self.r, &self.g, &self.b);
        let len = r.len();
        let chunks = r.chunks_exact(8).zip(g.chunks_exact(8)).zip(b.chunks_exact(8));
        for ((r8, g8), b8) in chunks {
            for i in 0..8 {
                lanes[i] += grey(r8[i], g8[i], b8[i]);
            }
        }
        let tail = len - len % 8;
        let rest: f32 = (tail..len).map(|i| grey(r[i], g[i], b[i])).sum();
        lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + f64::from(rest)
    }
}

fn clamp01(x: f32) -> f32 {
    min(max(x, 0.0), 1.0)
}

/// Larger of two values; unlike `f32::max` it ignores NaN semantics (none arise here),
/// so it compiles to a bare `maxps`.
fn max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// Smaller of two values (see [`max`]).
fn min(a: f32, b: f32) -> f32 {
    if a < b {
        a
    } else {
        b
    }
}

/// torchvision's `rgb_to_grayscale` weights (0.2989, 0.587, 0.114; PIL uses 0.299).
fn grey(r: f32, g: f32, b: f32) -> f32 {
    0.2989 * r + 0.587 * g + 0.114 * b
}

/// torchvision `adjust_hue` on one pixel: RGB→HSV, h ← (h + shift) mod 1, HSV→RGB.
/// Written with selects only (no data-dependent branches, two divisions) so that the
/// loop over a row vectorises.
fn hue_shifted(r: f32, g: f32, b: f32, shift: f32) -> [f32; 3] {
    let v = max(max(r, g), b);
    let chroma = v - min(min(r, g), b);
    let flat = chroma == 0.0;
    let s = chroma / if flat { 1.0 } else { v };
    // (bc − gc, 2 + rc − bc, 4 + gc − rc) of torchvision with the common divisor factored.
    let (sector, diff) = if v == r {
        (0.0, g - b)
    } else if v == g {
        (2.0, b - r)
    } else {
        (4.0, r - g)
    };
    let h = (sector + diff / if flat { 1.0 } else { chroma }) / 6.0 + 1.0;
    let h = h - floor(h) + shift;
    let h6 = (h - floor(h)) * 6.0;
    // HSV→RGB in closed form: channel n ∈ {5, 3, 1} is v·(1 − s·clamp(min(k, 4−k))),
    // k = (n + 6h) mod 6, the same values as torchvision's six-sector table.
    let channel = |n: f32| {
        let k = n + h6;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        v - v * s * clamp01(min(k, 4.0 - k))
    };
    [channel(5.0), channel(3.0), channel(1.0)]
}

/// Normalises, flips, crops and pads the (resized) image into the CHW output, applying
/// the jitter ops row by row on the window only.
fn write_image(resized: &[u8], params: &AugmentParams, plan: &Plan, out: &mut [f32]) {
    let (rw, rh) = plan.resized;
    let ops = plan.jitter();
    let contrast_mean = ops.iter().position(|op| matches!(op, JitterOp::Contrast(_))).map_or(0.0, |i| grey_mean(resized, rw, rh, &ops[..i]));
    let (ow, oh) = (plan.out.0 as usize, plan.out.1 as usize);
    let mut rows = Rows::new(plan.x.len as usize);
    let row_bytes = 3 * rw as usize;
    let window = 3 * plan.src_x() as usize..3 * (plan.src_x() + plan.x.len) as usize;
    let norm = Normalizer::new(&params.mean, &params.std);
    let [pr, pg, pb] = planes(out, ow * oh);
    let out_rows = pr.chunks_exact_mut(ow).zip(pg.chunks_exact_mut(ow)).zip(pb.chunks_exact_mut(ow));
    for (oy, ((or, og), ob)) in out_rows.enumerate() {
        let Some(y) = window_row(oy, plan.y) else {
            for row in [or, og, ob] {
                row.fill(0.0);
            }
            continue;
        };
        rows.load(&resized[y as usize * row_bytes..][window.clone()]);
        for &op in ops {
            rows.apply(op, contrast_mean);
        }
        for (c, (row, src)) in [(or, &rows.r), (og, &rows.g), (ob, &rows.b)].into_iter().enumerate() {
            let (left, mid, right) = split_span(row, plan.x);
            left.fill(0.0);
            right.fill(0.0);
            norm.store(c, src, mid, plan.flip);
        }
    }
}

/// Splits CHW storage into its three planes.
fn planes(out: &mut [f32], plane: usize) -> [&mut [f32]; 3] {
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    [r, g, b]
}

/// Mean grey level of the whole resized image after the jitter ops that precede
/// contrast (torchvision takes the mean over the full image before the crop).
fn grey_mean(resized: &[u8], rw: u32, rh: u32, before: &[JitterOp]) -> f32 {
    let mut rows = Rows::new(rw as usize);
    let mut sum = 0.0f64;
    for line in resized.chunks_exact(3 * rw as usize) {
        rows.load(line);
        for &op in before {
            rows.apply(op, 0.0);
        }
        sum += rows.grey_sum();
    }
    (sum / (f64::from(rw) * f64::from(rh))) as f32
}

/// `(x − mean)/std` as `x·(1/std) − mean/std` (one multiply-add a value).
struct Normalizer {
    scale: [f32; 3],
    bias: [f32; 3],
}

impl Normalizer {
    fn new(mean: &[f32; 3], std: &[f32; 3]) -> Self {
        Self { scale: std.map(|s| 1.0 / s), bias: std::array::from_fn(|c| -mean[c] / std[c]) }
    }

    /// Writes channel `c` of a row, mirrored when `flip`.
    fn store(&self, c: usize, src: &[f32], dst: &mut [f32], flip: bool) {
        let (scale, bias) = (self.scale[c], self.bias[c]);
        if flip {
            affine(dst, src.iter().rev(), scale, bias);
        } else {
            affine(dst, src.iter(), scale, bias);
        }
    }
}

/// `dst ← src·scale + bias`; generic so that each direction gets its own tight loop.
fn affine<'a>(dst: &mut [f32], src: impl Iterator<Item = &'a f32>, scale: f32, bias: f32) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = x * scale + bias;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const TOL: f32 = 1e-5;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    /// `augment` of a w×h image and its mask with the rng of `seed`.
    fn augment_seeded(rgb: &[u8], mask: &[u8], w: usize, h: usize, params: &AugmentParams, seed: u64) -> Augmented {
        augment(rgb, w as u32, h as u32, Some(mask), params, &mut rng(seed)).unwrap()
    }

    /// No resize, flip, jitter or crop; mean 0, std 1: the output is x/255.
    fn plain() -> AugmentParams {
        AugmentParams {
            resize_long: (0, 0),
            filter: ResizeFilter::Bilinear,
            hflip: false,
            jitter: ColorJitter::default(),
            mean: [0.0; 3],
            std: [1.0; 3],
            crop: 0,
        }
    }

    fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= tol, "index {i}: {a} vs {e}");
        }
    }

    /// Pixel (x, y) of a planar CHW image of width `w` and `h` rows.
    fn px(chw: &[f32], w: usize, h: usize, x: usize, y: usize) -> [f32; 3] {
        std::array::from_fn(|c| chw[c * w * h + y * w + x])
    }

    /// A deterministic pseudo-random RGB image.
    fn noise_rgb(w: usize, h: usize, seed: u64) -> Vec<u8> {
        let mut r = rng(seed);
        (0..3 * w * h).map(|_| r.random()).collect()
    }

    /// Runs `write_image` with a hand-made plan: no resize, no flip, window = `x`, `y`.
    fn run_ops(rgb: &[u8], w: u32, h: u32, ops: &[JitterOp], x: Span, y: Span, out: (u32, u32)) -> Vec<f32> {
        let mut jitter = [JitterOp::Brightness(1.0); 4];
        jitter[..ops.len()].copy_from_slice(ops);
        let plan = Plan { resized: (w, h), flip: false, jitter, jitter_len: ops.len(), out, x, y };
        let mut chw = vec![f32::NAN; 3 * (out.0 * out.1) as usize];
        write_image(rgb, &plain(), &plan, &mut chw);
        chw
    }

    fn full(len: u32) -> Span {
        Span { src: 0, dst: 0, len }
    }

    fn one_pixel(rgb: [f32; 3], op: JitterOp) -> [f32; 3] {
        let mut rows = Rows { r: vec![rgb[0]], g: vec![rgb[1]], b: vec![rgb[2]] };
        rows.apply(op, 0.0);
        [rows.r[0], rows.g[0], rows.b[0]]
    }

    #[test]
    fn brightness_scales_and_clamps() {
        let out = one_pixel([0.2, 0.6, 0.9], JitterOp::Brightness(1.5));
        assert_close(&out, &[0.3, 0.9, 1.0], TOL);
        let out = one_pixel([0.2, 0.6, 0.9], JitterOp::Brightness(0.5));
        assert_close(&out, &[0.1, 0.3, 0.45], TOL);
    }

    #[test]
    fn contrast_blends_with_global_grey_mean() {
        // Red and blue pixels: grey 0.2989 and 0.114, mean 0.20645.
        let rgb = [255, 0, 0, 0, 0, 255];
        let out = run_ops(&rgb, 2, 1, &[JitterOp::Contrast(0.5)], full(2), full(1), (2, 1));
        let (hi, lo) = (0.5 + 0.5 * 0.20645, 0.5 * 0.20645);
        assert_close(&px(&out, 2, 1, 0, 0), &[hi, lo, lo], TOL);
        assert_close(&px(&out, 2, 1, 1, 0), &[lo, lo, hi], TOL);
        // Strong contrast clamps both ways: 3·1 − 2·0.20645 > 1, −2·0.20645 < 0.
        let out = run_ops(&rgb, 2, 1, &[JitterOp::Contrast(3.0)], full(2), full(1), (2, 1));
        assert_close(&px(&out, 2, 1, 0, 0), &[1.0, 0.0, 0.0], TOL);
        // The mean is over the whole image even when the crop keeps only the red pixel.
        let window = Span { src: 0, dst: 0, len: 1 };
        let out = run_ops(&rgb, 2, 1, &[JitterOp::Contrast(0.5)], window, full(1), (1, 1));
        assert_close(&out, &[hi, lo, lo], TOL);
    }

    #[test]
    fn contrast_mean_follows_earlier_ops() {
        // Brightness 0.5 first halves the mean: 0.103225.
        let rgb = [255, 0, 0, 0, 0, 255];
        let ops = [JitterOp::Brightness(0.5), JitterOp::Contrast(0.5)];
        let out = run_ops(&rgb, 2, 1, &ops, full(2), full(1), (2, 1));
        let m = 0.5 * 0.103225;
        assert_close(&px(&out, 2, 1, 0, 0), &[0.25 + m, m, m], TOL);
    }

    #[test]
    fn saturation_blends_with_pixel_grey() {
        // (1, 0.2, 0): grey = 0.2989 + 0.587·0.2 = 0.4163.
        let p = [1.0, 0.2, 0.0];
        let g = 0.4163;
        assert_close(&one_pixel(p, JitterOp::Saturation(0.0)), &[g, g, g], TOL);
        let half = [0.5 + 0.5 * g, 0.1 + 0.5 * g, 0.5 * g];
        assert_close(&one_pixel(p, JitterOp::Saturation(0.5)), &half, TOL);
        // 2x − grey: 1.5837 → 1, −0.0163 → 0, −0.4163 → 0.
        assert_close(&one_pixel(p, JitterOp::Saturation(2.0)), &[1.0, 0.0, 0.0], TOL);
        assert_close(&one_pixel(p, JitterOp::Saturation(1.0)), &p, TOL);
    }

    #[test]
    fn hue_shift_by_hand() {
        let cases: [([f32; 3], f32, [f32; 3]); 6] = [
            ([1.0, 0.0, 0.0], 1.0 / 3.0, [0.0, 1.0, 0.0]),
            // Red (hue 0) − 1/3 wraps around to blue (2/3).
            ([1.0, 0.0, 0.0], -1.0 / 3.0, [0.0, 0.0, 1.0]),
            // Orange (1/12) + 1/2 → 7/12 = azure.
            ([1.0, 0.5, 0.0], 0.5, [0.0, 0.5, 1.0]),
            // Pink (11/12) + 1/4 wraps past 1 to 1/6 = yellow.
            ([1.0, 0.0, 0.5], 0.25, [1.0, 1.0, 0.0]),
            // Darker, less saturated: v = 0.8, s = 0.5, hue 0 + 1/6 → (0.8, 0.8, 0.4).
            ([0.8, 0.4, 0.4], 1.0 / 6.0, [0.8, 0.8, 0.4]),
            // Grey has no hue.
            ([0.3, 0.3, 0.3], 0.4, [0.3, 0.3, 0.3]),
        ];
        for (p, shift, expected) in cases {
            assert_close(&one_pixel(p, JitterOp::Hue(shift)), &expected, TOL);
        }
    }

    #[test]
    fn hue_zero_is_identity() {
        let rgb = noise_rgb(64, 1, 7);
        for p in rgb.chunks_exact(3) {
            let p = [p[0], p[1], p[2]].map(|v| f32::from(v) / 255.0);
            assert_close(&one_pixel(p, JitterOp::Hue(0.0)), &p, 2e-6);
        }
    }

    #[test]
    fn normalisation_values() {
        let (w, h) = (5, 4);
        let rgb = noise_rgb(w, h, 3);
        let params = AugmentParams { mean: IMAGENET_MEAN, std: IMAGENET_STD, ..plain() };
        let out = augment(&rgb, w as u32, h as u32, None, &params, &mut rng(0)).unwrap();
        assert_eq!((out.width, out.height), (w as u32, h as u32));
        for y in 0..h {
            for x in 0..w {
                let expected: [f32; 3] = std::array::from_fn(|c| (f32::from(rgb[3 * (y * w + x) + c]) / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
                assert_close(&px(&out.chw, w, h, x, y), &expected, 1e-6);
            }
        }
    }

    /// Label image: id of each pixel, and an RGB image whose red channel is that id.
    fn id_image(w: usize, h: usize) -> (Vec<u8>, Vec<u8>) {
        let mask: Vec<u8> = (0..w * h).map(|i| i as u8).collect();
        let rgb = mask.iter().flat_map(|&m| [m, 100, 200]).collect();
        (rgb, mask)
    }

    #[test]
    fn pads_small_image_at_random_offset() {
        let (w, h, crop) = (3usize, 2usize, 5usize);
        let (rgb, mask) = id_image(w, h);
        let params = AugmentParams { crop: crop as u32, ..plain() };
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let out = augment_seeded(&rgb, &mask, w, h, &params, seed);
            let m = out.mask.unwrap();
            let first = m.iter().position(|&v| v != 255).unwrap();
            let (x0, y0) = (first % crop, first / crop);
            assert!(x0 <= crop - w && y0 <= crop - h, "offset ({x0}, {y0})");
            seen.insert((x0, y0));
            for y in 0..crop {
                for x in 0..crop {
                    let inside = (x0..x0 + w).contains(&x) && (y0..y0 + h).contains(&y);
                    let p = px(&out.chw, crop, crop, x, y);
                    if inside {
                        let id = ((y - y0) * w + x - x0) as u8;
                        assert_eq!(m[y * crop + x], id);
                        assert_close(&p, &[f32::from(id) / 255.0, 100.0 / 255.0, 200.0 / 255.0], 1e-6);
                    } else {
                        assert_eq!(m[y * crop + x], 255);
                        assert_eq!(p, [0.0; 3]);
                    }
                }
            }
        }
        assert_eq!(seen.len(), (crop - w + 1) * (crop - h + 1), "every offset occurs");
    }

    #[test]
    fn crops_large_image_at_random_window() {
        let (w, h, crop) = (6usize, 5usize, 3usize);
        let (rgb, mask) = id_image(w, h);
        let params = AugmentParams { crop: crop as u32, ..plain() };
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let out = augment_seeded(&rgb, &mask, w, h, &params, seed);
            let m = out.mask.unwrap();
            let (x0, y0) = (m[0] as usize % w, m[0] as usize / w);
            assert!(x0 <= w - crop && y0 <= h - crop);
            seen.insert((x0, y0));
            for y in 0..crop {
                for x in 0..crop {
                    let id = ((y0 + y) * w + x0 + x) as u8;
                    assert_eq!(m[y * crop + x], id);
                    assert_close(&px(&out.chw, crop, crop, x, y)[..1], &[f32::from(id) / 255.0], 1e-6);
                }
            }
        }
        assert_eq!(seen.len(), (w - crop + 1) * (h - crop + 1));
    }

    #[test]
    fn crops_one_axis_and_pads_the_other() {
        let (w, h, crop) = (7usize, 2usize, 4usize);
        let (rgb, mask) = id_image(w, h);
        let params = AugmentParams { crop: crop as u32, ..plain() };
        for seed in 0..50 {
            let out = augment_seeded(&rgb, &mask, w, h, &params, seed);
            let m = out.mask.unwrap();
            let rows: Vec<usize> = (0..crop).filter(|&y| m[y * crop] != 255).collect();
            assert_eq!(rows.len(), h);
            assert!(rows[1] == rows[0] + 1 && rows[0] <= crop - h);
            let x0 = m[rows[0] * crop] as usize;
            assert!(x0 <= w - crop);
            for (dy, &y) in rows.iter().enumerate() {
                let expected: Vec<u8> = (0..crop).map(|x| (dy * w + x0 + x) as u8).collect();
                assert_eq!(&m[y * crop..(y + 1) * crop], &expected[..]);
            }
        }
    }

    /// The colour of region `label` of the alignment test.
    fn region_colour(label: u8) -> [u8; 3] {
        [40 * (label % 4) + 20, 60 * (label / 4) + 30, 200 - 15 * label]
    }

    /// 500×375 image of 4×3 rectangular regions; the mask holds the region label.
    fn region_image() -> (Vec<u8>, Vec<u8>, u32, u32) {
        let (w, h) = (500u32, 375u32);
        let label = |x: u32, y: u32| (x * 4 / w + 4 * (y * 3 / h)) as u8;
        let mask: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| label(x, y))).collect();
        let rgb = mask.iter().flat_map(|&l| region_colour(l)).collect();
        (rgb, mask, w, h)
    }

    #[test]
    fn image_and_mask_stay_aligned() {
        let (rgb, mask, w, h) = region_image();
        for filter in [ResizeFilter::Bilinear, ResizeFilter::Bicubic] {
            let params = AugmentParams { filter, ..AugmentParams::default() };
            for seed in 0..6 {
                let out = augment(&rgb, w, h, Some(&mask), &params, &mut rng(seed)).unwrap();
                let checked = check_alignment(&out, &params);
                assert!(checked > 20_000, "only {checked} interior pixels checked");
            }
        }
    }

    /// Checks that pixels whose 7×7 mask neighbourhood is one region have that region's
    /// colour; returns how many were checked.
    fn check_alignment(out: &Augmented, params: &AugmentParams) -> usize {
        let (w, h) = (out.width as usize, out.height as usize);
        let m = out.mask.as_ref().unwrap();
        let r = 3;
        let mut checked = 0;
        for y in r..h - r {
            for x in r..w - r {
                let l = m[y * w + x];
                let uniform = (y - r..=y + r).all(|yy| (x - r..=x + r).all(|xx| m[yy * w + xx] == l));
                if l == 255 || !uniform {
                    continue;
                }
                let p = px(&out.chw, w, h, x, y);
                let rgb: [f32; 3] = std::array::from_fn(|c| (p[c] * params.std[c] + params.mean[c]) * 255.0);
                let expected = region_colour(l).map(f32::from);
                assert_close(&rgb, &expected, 0.51);
                checked += 1;
            }
        }
        checked
    }

    fn mirror_rgb(rgb: &[u8], w: usize) -> Vec<u8> {
        rgb.chunks_exact(3 * w).flat_map(|row| row.chunks_exact(3).rev().flatten().copied().collect::<Vec<_>>()).collect()
    }

    #[test]
    fn flip_mirrors_and_flipping_twice_restores() {
        let (w, h) = (5usize, 3usize);
        let rgb = noise_rgb(w, h, 11);
        let mask: Vec<u8> = (0..(w * h) as u8).collect();
        let params = AugmentParams { hflip: true, ..plain() };
        let unflipped = augment(&rgb, w as u32, h as u32, Some(&mask), &plain(), &mut rng(0)).unwrap();
        let mirrored_rgb = mirror_rgb(&rgb, w);
        let mirrored_mask: Vec<u8> = mask.chunks_exact(w).flat_map(|r| r.iter().rev().copied()).collect();
        let (mut flips, mut keeps) = (0, 0);
        for seed in 0..40 {
            let out = augment_seeded(&rgb, &mask, w, h, &params, seed);
            if out == unflipped {
                keeps += 1;
                continue;
            }
            flips += 1;
            assert_eq!(out.mask.as_deref(), Some(&mirrored_mask[..]));
            for (x, y) in (0..w).flat_map(|x| (0..h).map(move |y| (x, y))) {
                assert_eq!(px(&out.chw, w, h, x, y), px(&unflipped.chw, w, h, w - 1 - x, y));
            }
            // The same draw on the mirrored input flips it back.
            let back = augment(&mirrored_rgb, w as u32, h as u32, Some(&mirrored_mask), &params, &mut rng(seed));
            assert_eq!(back.unwrap(), unflipped);
        }
        assert!(flips > 5 && keeps > 5, "{flips} flips, {keeps} keeps");
    }

    #[test]
    fn flip_with_crop_takes_window_of_flipped_image() {
        // 1×…: a wide one-row image, crop 3 out of width 8, flipped.
        let w = 8usize;
        let mask: Vec<u8> = (0..w as u8).collect();
        let rgb: Vec<u8> = mask.iter().flat_map(|&m| [m, m, m]).collect();
        let params = AugmentParams { hflip: true, crop: 3, ..plain() };
        for seed in 0..40 {
            let out = augment(&rgb, w as u32, 1, Some(&mask), &params, &mut rng(seed)).unwrap();
            let m = out.mask.unwrap();
            let row = &m[3..6]; // the image row sits at some height; find it
            let row = if row[0] == 255 {
                if m[0] != 255 {
                    &m[0..3]
                } else {
                    &m[6..9]
                }
            } else {
                row
            };
            let descending = row[0] == row[1] + 1 && row[1] == row[2] + 1;
            let ascending = row[1] == row[0] + 1 && row[2] == row[1] + 1;
            assert!(descending || ascending, "{row:?}");
        }
    }

    #[test]
    fn resize_size_rule() {
        assert_eq!(resized_size(500, 375, 480), (480, 360));
        assert_eq!(resized_size(375, 500, 320), (240, 320));
        assert_eq!(resized_size(500, 375, 641), (641, 481)); // 480.75 → 481
        assert_eq!(resized_size(4, 3, 6), (6, 4)); // 4.5 → 4: half to even, like np.round
        assert_eq!(resized_size(4, 5, 3), (2, 3)); // 2.4 → 2
        assert_eq!(resized_size(1000, 1, 320), (320, 1)); // never below 1
    }

    #[test]
    fn random_resize_output_sizes() {
        let rgb = noise_rgb(50, 30, 1);
        let params = AugmentParams { resize_long: (20, 80), ..plain() };
        assert_eq!(params.output_size(50, 30), None);
        let mut longs = std::collections::HashSet::new();
        for seed in 0..100 {
            let out = augment(&rgb, 50, 30, None, &params, &mut rng(seed)).unwrap();
            assert!((20..=80).contains(&out.width));
            assert_eq!((out.width, out.height), resized_size(50, 30, out.width));
            assert_eq!(out.chw.len(), 3 * (out.width * out.height) as usize);
            longs.insert(out.width);
        }
        assert!(longs.len() > 30);
        let fixed = AugmentParams { resize_long: (64, 64), ..plain() };
        assert_eq!(fixed.output_size(50, 30), Some((64, 38)));
        let out = augment(&rgb, 50, 30, None, &fixed, &mut rng(0)).unwrap();
        assert_eq!((out.width, out.height), (64, 38));
        assert_eq!(plain().output_size(50, 30), Some((50, 30)));
        assert_eq!(AugmentParams::default().output_size(50, 30), Some((512, 512)));
    }

    #[test]
    fn resize_keeps_flat_colour_and_nearest_mask() {
        let rgb = [10u8, 128, 250].repeat(6);
        let mask = [0u8, 1, 2, 3, 4, 5];
        // 6×1 → 3×1 (long side 3): nearest takes ⌊(i + ½)·2⌋ = 1, 3, 5.
        let params = AugmentParams { resize_long: (3, 3), ..plain() };
        let out = augment(&rgb, 6, 1, Some(&mask), &params, &mut rng(0)).unwrap();
        assert_eq!(out.mask.as_deref(), Some(&[1u8, 3, 5][..]));
        assert_close(&px(&out.chw, 3, 1, 1, 0), &[10.0 / 255.0, 128.0 / 255.0, 250.0 / 255.0], 1e-6);
        // 3×1 → 6×2 up: ⌊(i + ½)/2⌋ = 0, 0, 1, 1, 2, 2 on both rows.
        let params = AugmentParams { resize_long: (6, 6), ..plain() };
        let out = augment(&rgb[..9], 3, 1, Some(&mask[..3]), &params, &mut rng(0)).unwrap();
        assert_eq!(out.mask.as_deref(), Some(&[0u8, 0, 1, 1, 2, 2].repeat(2)[..]));
    }

    #[test]
    fn errors() {
        let rgb = noise_rgb(4, 3, 0);
        let mask = [0u8; 12];
        let crop = AugmentParams { crop: 2, ..plain() };
        let mut r = rng(0);
        let err = augment(&rgb, 4, 3, Some(&mask[..11]), &plain(), &mut r).unwrap_err();
        assert!(matches!(err, AugmentError::MaskSize { expected: 12, actual: 11 }));
        let err = augment(&rgb[..35], 4, 3, None, &plain(), &mut r).unwrap_err();
        assert!(matches!(err, AugmentError::ImageSize { expected: 36, actual: 35 }));
        let err = augment(&[], 0, 3, None, &plain(), &mut r).unwrap_err();
        assert!(matches!(err, AugmentError::EmptyImage { .. }));
        let (mut chw, mut m) = (vec![0.0; 12], vec![0u8; 4]);
        let err = augment_into(&rgb, 4, 3, None, &crop, &mut r, &mut chw[..11], None).unwrap_err();
        assert!(matches!(err, AugmentError::OutputSize { expected: 12, actual: 11 }));
        let err = augment_into(&rgb, 4, 3, Some(&mask), &crop, &mut r, &mut chw, Some(&mut m[..3])).unwrap_err();
        assert!(matches!(err, AugmentError::OutputMaskSize { expected: 4, actual: 3 }));
        let err = augment_into(&rgb, 4, 3, Some(&mask), &crop, &mut r, &mut chw, None).unwrap_err();
        assert!(matches!(err, AugmentError::MaskPresence));
        let err = augment_into(&rgb, 4, 3, None, &crop, &mut r, &mut chw, Some(&mut m)).unwrap_err();
        assert!(matches!(err, AugmentError::MaskPresence));
        let random = AugmentParams { resize_long: (2, 5), ..plain() };
        let err = augment_into(&rgb, 4, 3, None, &random, &mut r, &mut chw, None).unwrap_err();
        assert!(matches!(err, AugmentError::UnknownOutputSize));
        let bad = [
            AugmentParams { resize_long: (5, 2), ..plain() },
            AugmentParams { resize_long: (0, 2), ..plain() },
            AugmentParams { std: [1.0, 0.0, 1.0], ..plain() },
            AugmentParams { jitter: ColorJitter { hue: 0.6, ..ColorJitter::default() }, ..plain() },
            AugmentParams { jitter: ColorJitter { brightness: -0.1, ..ColorJitter::default() }, ..plain() },
        ];
        for params in bad {
            let err = augment(&rgb, 4, 3, None, &params, &mut r).unwrap_err();
            assert!(matches!(err, AugmentError::InvalidParams(_)), "{params:?}");
        }
        // Refused calls draw nothing.
        assert_eq!(r.random::<u64>(), rng(0).random::<u64>());
        assert!(augment_into(&rgb, 4, 3, Some(&mask), &crop, &mut r, &mut chw, Some(&mut m)).is_ok());
    }

    fn jitter_all() -> ColorJitter {
        ColorJitter { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (rgb, mask, w, h) = region_image();
        let params = AugmentParams { jitter: jitter_all(), ..AugmentParams::default() };
        let a = augment(&rgb, w, h, Some(&mask), &params, &mut rng(5)).unwrap();
        let b = augment(&rgb, w, h, Some(&mask), &params, &mut rng(5)).unwrap();
        let bits = |v: &Augmented| v.chw.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.mask, b.mask);
        let c = augment(&rgb, w, h, Some(&mask), &params, &mut rng(6)).unwrap();
        assert_ne!(bits(&a), bits(&c));
        // augment_into writes the same values as augment.
        let mut chw = vec![0.0; 3 * 512 * 512];
        let mut m = vec![0u8; 512 * 512];
        augment_into(&rgb, w, h, Some(&mask), &params, &mut rng(5), &mut chw, Some(&mut m)).unwrap();
        assert_eq!(chw.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), bits(&a));
        assert_eq!(Some(m), a.mask);
    }

    /// torchvision `_rgb2hsv` → shift → `_hsv2rgb` with its six-sector table.
    fn reference_hue(p: [f32; 3], shift: f32) -> [f32; 3] {
        let [r, g, b] = p;
        let v = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eq = v == minc;
        let cr = v - minc;
        let s = cr / if eq { 1.0 } else { v };
        let d = if eq { 1.0 } else { cr };
        let (rc, gc, bc) = ((v - r) / d, (v - g) / d, (v - b) / d);
        let h = if v == r {
            bc - gc
        } else if v == g {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        let h = ((h / 6.0 + 1.0) % 1.0 + shift).rem_euclid(1.0);
        let i = (h * 6.0).floor();
        let f = h * 6.0 - i;
        let c = |x: f32| x.clamp(0.0, 1.0);
        let (pp, q, t) = (c(v * (1.0 - s)), c(v * (1.0 - s * f)), c(v * (1.0 - s * (1.0 - f))));
        match i as i32 % 6 {
            0 => [v, t, pp],
            1 => [q, v, pp],
            2 => [pp, v, t],
            3 => [pp, q, v],
            4 => [t, pp, v],
            _ => [v, pp, q],
        }
    }

    /// Straightforward ColorJitter on a list of pixels: op index 0..4 = b, c, s, h.
    fn reference_jitter(pixels: &mut [[f32; 3]], order: &[usize], factors: [f32; 4]) {
        let grey = |p: &[f32; 3]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
        let blend = |a: f32, b: f32, f: f32| (f * a + (1.0 - f) * b).clamp(0.0, 1.0);
        for &k in order {
            let mean = (pixels.iter().map(|p| f64::from(grey(p))).sum::<f64>() / pixels.len() as f64) as f32;
            for p in pixels.iter_mut() {
                let g = grey(p);
                *p = match k {
                    0 => p.map(|x| blend(x, 0.0, factors[0])),
                    1 => p.map(|x| blend(x, mean, factors[1])),
                    2 => p.map(|x| blend(x, g, factors[2])),
                    _ => reference_hue(*p, factors[3]),
                };
            }
        }
    }

    #[test]
    fn jitter_matches_reference_with_documented_draws() {
        let (w, h) = (13usize, 7usize);
        let rgb = noise_rgb(w, h, 2);
        let j = ColorJitter { brightness: 0.5, contrast: 0.6, saturation: 0.7, hue: 0.3 };
        let params = AugmentParams { jitter: j, ..plain() };
        let mut orders = std::collections::HashSet::new();
        for seed in 0..30 {
            let mut r = rng(seed);
            let out = augment(&rgb, w as u32, h as u32, None, &params, &mut r.clone()).unwrap();
            let mut order = [0usize, 1, 2, 3];
            for i in (1..4).rev() {
                order.swap(i, r.random_range(0..=i));
            }
            let factors = [r.random_range(0.5..=1.5f32), r.random_range(0.4..=1.6f32), r.random_range(0.3..=1.7f32), r.random_range(-0.3..=0.3f32)];
            orders.insert(order);
            let mut pixels: Vec<[f32; 3]> = rgb.chunks_exact(3).map(|p| [p[0], p[1], p[2]].map(|v| f32::from(v) / 255.0)).collect();
            reference_jitter(&mut pixels, &order, factors);
            for (i, p) in pixels.iter().enumerate() {
                assert_close(&px(&out.chw, w, h, i % w, i / w), p, 1e-4);
            }
        }
        assert!(orders.len() > 10, "the op order varies");
    }

    #[test]
    fn disabled_jitter_ops_draw_nothing() {
        let only_hue = ColorJitter { hue: 0.2, ..ColorJitter::default() };
        let params = AugmentParams { jitter: only_hue, ..plain() };
        let plan = Plan::draw(4, 4, &params, &mut rng(9));
        let mut r = rng(9);
        assert_eq!(plan.jitter(), &[JitterOp::Hue(r.random_range(-0.2..=0.2f32))]);
        assert!(Plan::draw(4, 4, &plain(), &mut rng(9)).jitter().is_empty());
    }

    /// Per-image time of the typical case (run with `--ignored --nocapture`, optimised).
    #[test]
    #[ignore]
    fn bench_typical() {
        let (rgb, mask, w, h) = region_image();
        let rgb: Vec<u8> = rgb.iter().zip(noise_rgb(500, 375, 4)).map(|(a, b)| a / 2 + b / 2).collect();
        let mut chw = vec![0.0; 3 * 512 * 512];
        let mut m = vec![0u8; 512 * 512];
        for (name, jitter, filter) in [
            ("bilinear", ColorJitter::default(), ResizeFilter::Bilinear),
            ("bicubic", ColorJitter::default(), ResizeFilter::Bicubic),
            ("bilinear+jitter", jitter_all(), ResizeFilter::Bilinear),
        ] {
            let params = AugmentParams { jitter, filter, ..AugmentParams::default() };
            let mut r = rng(1);
            // Best of 10 batches: the machine is shared, so the minimum is the stable figure.
            let per = (0..10)
                .map(|_| {
                    let start = std::time::Instant::now();
                    for _ in 0..50 {
                        augment_into(&rgb, w, h, Some(&mask), &params, &mut r, &mut chw, Some(&mut m)).unwrap();
                    }
                    start.elapsed().as_secs_f64() / 50.0 * 1e3
                })
                .fold(f64::INFINITY, f64::min);
            println!("{name}: {per:.3} ms/image");
        }
    }
}
