//! The threshold every pseudo-label method starts from (docs/methods.md §1): each pixel to
//! its strongest CAM, or to background where none passes τ.

/// Per pixel, `argmax({τ} ∪ {A_k})` as an index: 0 for τ (which wins ties), k + 1 for map k.
pub fn threshold_labels(cams: &[f32], pixels: usize, tau: f32) -> Vec<u8> {
    let mut best = vec![tau; pixels];
    let mut label = vec![0u8; pixels];
    for (k, map) in cams.chunks_exact(pixels.max(1)).enumerate() {
        for (p, &v) in map.iter().enumerate() {
            if v > best[p] {
                best[p] = v;
                label[p] = k as u8 + 1;
            }
        }
    }
    label
}
