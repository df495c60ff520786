//! Bilinear resizing of stacked maps with PyTorch's `interpolate(mode="bilinear",
//! align_corners=False)` semantics, in plain Rust so that refinement threads need no libtorch.

use crate::data::CamRow;

/// A CAM row's stride-4 f16 maps resized to the image: [K, H, W] f32 (empty without classes).
pub fn full_resolution(cam: &CamRow) -> Vec<f32> {
    if cam.classes.is_empty() {
        return Vec::new();
    }
    let (h4, w4) = cam.map_size();
    let maps: Vec<f32> = cam.cam.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
    resize_bilinear(&maps, h4 as usize, w4 as usize, cam.height as usize, cam.width as usize)
}

/// Resizes `maps` ([K, h, w] row-major) to [K, height, width].
pub fn resize_bilinear(maps: &[f32], h: usize, w: usize, height: usize, width: usize) -> Vec<f32> {
    assert!(h > 0 && w > 0 && maps.len().is_multiple_of(h * w), "maps must be K × h × w");
    let rows = taps(h, height);
    let cols = taps(w, width);
    let mut out = Vec::with_capacity(maps.len() / (h * w) * height * width);
    for map in maps.chunks_exact(h * w) {
        for &(y0, y1, ly) in &rows {
            let (top, bottom) = (&map[y0 * w..(y0 + 1) * w], &map[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, lx) in &cols {
                let upper = (1.0 - lx) * top[x0] + lx * top[x1];
                let lower = (1.0 - lx) * bottom[x0] + lx * bottom[x1];
                out.push((1.0 - ly) * upper + ly * lower);
            }
        }
    }
    out
}

/// For each output index: the two input indices and the weight of the second
/// (PyTorch's `area_pixel_compute_source_index`, negative sources clamped to 0).
fn taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let source = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (source as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            (i0, i1, source - i0 as f32)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn matches_torch_interpolate() {
        let (k, h, w) = (2usize, 5usize, 7usize);
        let maps: Vec<f32> = (0..k * h * w).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
        for (height, width) in [(17, 27), (5, 7), (3, 4), (20, 25)] {
            let ours = resize_bilinear(&maps, h, w, height, width);
            let reference =
                Tensor::from_slice(&maps).view([1, k as i64, h as i64, w as i64]).upsample_bilinear2d([height as i64, width as i64], false, None, None);
            let reference = Vec::<f32>::try_from(reference.to_kind(Kind::Float).flatten(0, -1)).unwrap();
            let diff = ours.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-6, "{height}x{width}: max difference {diff}");
        }
    }

    #[test]
    fn a_2x2_map_doubled_by_hand() {
        // Sources for 4 outputs of 2 inputs: -0.25→0, 0.25, 0.75, 1.25→(1, 1).
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 1, 4);
        // One output row samples y = 0.5 between rows: (0+2)/2 = 1 at x 0, +0.25, +0.75, +1.
        assert_eq!(out, vec![1.0, 1.25, 1.75, 2.0]);
    }
}
