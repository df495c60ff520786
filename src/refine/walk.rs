//! IRNet's random walk (docs/methods.md §8): class activation spread along inter-pixel
//! affinities that a boundary map `B` (values in [0, 1], on the CAMs' stride-4 grid) allows.
//!
//! Affinities: for a pixel `i` and each direction `d` of the path index of radius `r` (a
//! half-neighbourhood: every pair once), `a_ij = 1 − max_{k on the path i→j} B_k`, with the path
//! cells those within distance 1 of the segment; a path that leaves the image has affinity 0
//! (IRNet pads `B` with 1 there). With the symmetric pairs and a self-loop of 1 per pixel they
//! make `A`; `T = A^∘β` normalised by columns; the walk is `vᵀ T^(2^k)` for
//! `v = vec(CAM_c ⊙ (1 − B))`, each class separately.
//!
//! IRNet builds the dense n × n matrix and squares it k times (n ≈ 11.8k for a 500×375 photo:
//! more than 0.5 GB in f32, and k matrix products of n³). Here `T` stays sparse — at most
//! 2·|directions| + 1 non-zeros per column — and `vᵀ T^(2^k)` is 2^k sparse products
//! `v ← vᵀ T`, i.e. `v'_j = (Σ_i v_i A^β_ij) / d_j` with `d_j` the column sums: the same
//! matrix power, computed as repeated products instead of repeated squaring (equal in exact
//! arithmetic; tested against the dense formula).

/// One direction of the path index: the offset of the destination and the cells the path
/// crosses (offsets from the source, the source and the destination included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direction {
    pub dy: i32,
    pub dx: i32,
    pub path: Vec<(i32, i32)>,
}

/// The directions of radius `radius`, in IRNet's order (`misc/indexing.py`, `PathIndex`):
/// `(0, x)` for `x` in `1..r`, then `(y, x)` for `y` in `1..r`, `x` in `-r+1..r` with
/// `x² + y² < r²`. 34 directions at radius 5, 152 at radius 10.
pub fn path_index(radius: i32) -> Vec<Direction> {
    let mut offsets: Vec<(i32, i32)> = (1..radius).map(|x| (0, x)).collect();
    for y in 1..radius {
        offsets.extend((-radius + 1..radius).filter(|x| x * x + y * y < radius * radius).map(|x| (y, x)));
    }
    offsets
        .into_iter()
        .map(|(dy, dx)| {
            let length_sq = (dy * dy + dx * dx) as f64;
            let mut path = Vec::new();
            for y in dy.min(0)..=dy.max(0) {
                for x in dx.min(0)..=dx.max(0) {
                    // Squared distance of (y, x) from the line through 0 and (dy, dx).
                    let across = (dy * x - dx * y) as f64;
                    if across * across / length_sq < 1.0 {
                        path.push((y, x));
                    }
                }
            }
            Direction { dy, dx, path }
        })
        .collect()
}

/// The sparse symmetric matrix `A^∘β` of an h × w grid, with its column sums: per pixel its
/// neighbours (the pixel itself first, weight 1) and their weights.
#[derive(Debug, Clone)]
pub struct Transition {
    /// `neighbours[starts[i]..starts[i + 1]]` are pixel i's.
    starts: Vec<usize>,
    neighbours: Vec<u32>,
    weights: Vec<f32>,
    /// `1 / d_j`: the reciprocal column sums.
    inverse_sums: Vec<f32>,
}

impl Transition {
    /// From the boundary map `boundary` ([h, w] row-major), `directions` and `beta`.
    pub fn new(boundary: &[f32], height: usize, width: usize, directions: &[Direction], beta: f32) -> Transition {
        assert_eq!(boundary.len(), height * width, "the boundary map must be h × w");
        let n = height * width;
        let mut pairs: Vec<Vec<(u32, f32)>> = (0..n).map(|i| vec![(i as u32, 1.0)]).collect();
        let inside = |y: i64, x: i64| y >= 0 && x >= 0 && (y as usize) < height && (x as usize) < width;
        for y in 0..height as i64 {
            for x in 0..width as i64 {
                let i = y as usize * width + x as usize;
                for d in directions {
                    let (ty, tx) = (y + d.dy as i64, x + d.dx as i64);
                    if !inside(ty, tx) || !d.path.iter().all(|&(py, px)| inside(y + py as i64, x + px as i64)) {
                        continue;
                    }
                    let max = d.path.iter().map(|&(py, px)| boundary[(y + py as i64) as usize * width + (x + px as i64) as usize]).fold(0.0f32, f32::max);
                    let affinity = (1.0 - max).max(0.0).powf(beta);
                    let j = ty as usize * width + tx as usize;
                    pairs[i].push((j as u32, affinity));
                    pairs[j].push((i as u32, affinity));
                }
            }
        }
        let mut starts = Vec::with_capacity(n + 1);
        let (mut neighbours, mut weights) = (Vec::new(), Vec::new());
        let mut inverse_sums = Vec::with_capacity(n);
        for list in pairs {
            starts.push(neighbours.len());
            inverse_sums.push(1.0 / list.iter().map(|p| p.1).sum::<f32>());
            for (j, a) in list {
                neighbours.push(j);
                weights.push(a);
            }
        }
        starts.push(neighbours.len());
        Transition { starts, neighbours, weights, inverse_sums }
    }

    /// Pixels of the grid.
    pub fn len(&self) -> usize {
        self.inverse_sums.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inverse_sums.is_empty()
    }

    /// `vᵀ T`: `out_j = (Σ_i v_i A_ij) / d_j` (A symmetric: the sum runs over j's neighbours).
    fn step(&self, v: &[f32], out: &mut [f32]) {
        for (j, slot) in out.iter_mut().enumerate() {
            let range = self.starts[j]..self.starts[j + 1];
            let sum: f32 = self.neighbours[range.clone()].iter().zip(&self.weights[range]).map(|(&i, &a)| v[i as usize] * a).sum();
            *slot = sum * self.inverse_sums[j];
        }
    }

    /// `vᵀ T^steps`, in place.
    pub fn walk(&self, v: &mut Vec<f32>, steps: usize) {
        assert_eq!(v.len(), self.len(), "one value per pixel");
        let mut scratch = vec![0.0; v.len()];
        for _ in 0..steps {
            self.step(v, &mut scratch);
            std::mem::swap(v, &mut scratch);
        }
    }
}

/// IRNet's settings of the walk and its labels (`make_sem_seg_labels.py`): radius 5, β 10,
/// 2^8 steps, background score 0.25 (`[pseudo_label.walk]`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalkParams {
    pub radius: i32,
    pub beta: f32,
    /// The walk takes 2^exp_times steps (IRNet squares the matrix this many times).
    pub exp_times: u32,
    /// The background's score against the walked maps divided by their maximum.
    pub bg_threshold: f32,
}

impl Default for WalkParams {
    fn default() -> Self {
        WalkParams { radius: 5, beta: 10.0, exp_times: 8, bg_threshold: 0.25 }
    }
}

impl WalkParams {
    /// The key at fault and why, for values the walk cannot take.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(2..=16).contains(&self.radius) {
            return Err(("radius", "must be in 2..=16 (IRNet walks at 5)"));
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return Err(("beta", "must be a positive number"));
        }
        if self.exp_times > 16 {
            return Err(("exp_times", "must be at most 16 (2^16 steps)"));
        }
        if !(0.0..=1.0).contains(&self.bg_threshold) {
            return Err(("bg_threshold", "must lie in [0, 1]"));
        }
        Ok(())
    }
}

/// Each class map of `cams` ([K, h, w]) walked: `vec(CAM_c ⊙ (1 − B))ᵀ T^(2^exp_times)`,
/// [K, h, w].
pub fn propagate(cams: &[f32], boundary: &[f32], height: usize, width: usize, params: &WalkParams) -> Vec<f32> {
    let n = height * width;
    assert!(n > 0 && cams.len().is_multiple_of(n), "cams must be K × h × w");
    let transition = Transition::new(boundary, height, width, &path_index(params.radius), params.beta);
    let mut out = Vec::with_capacity(cams.len());
    for map in cams.chunks_exact(n) {
        let mut v: Vec<f32> = map.iter().zip(boundary).map(|(c, b)| c * (1.0 - b)).collect();
        transition.walk(&mut v, 1 << params.exp_times);
        out.extend(v);
    }
    out
}

/// IRNet's pseudo-label of one image (`make_sem_seg_labels.py`): its stride-4 CAMs ([K, h, w],
/// the maps of `classes`) walked over `boundary` ([h, w]), upsampled ×4 (bilinear) and cropped
/// to `height` × `width`, divided by their global maximum, with a background score of
/// `params.bg_threshold` in front; the argmax as class ids (background wins ties). An image whose walked
/// maps are nowhere positive is all background.
pub fn walk_labels(cams: &[f32], classes: &[u16], boundary: &[f32], grid: (usize, usize), size: (usize, usize), params: &WalkParams) -> Vec<u8> {
    labels_of_walked(&propagate(cams, boundary, grid.0, grid.1, params), classes, grid, size, params.bg_threshold)
}

/// The label step of [`walk_labels`] on maps already walked.
fn labels_of_walked(walked: &[f32], classes: &[u16], (h, w): (usize, usize), (height, width): (usize, usize), bg_threshold: f32) -> Vec<u8> {
    let pixels = height * width;
    if classes.is_empty() {
        return vec![0; pixels];
    }
    let up = super::resize::resize_bilinear(walked, h, w, 4 * h, 4 * w);
    let mut cropped: Vec<f32> = Vec::with_capacity(classes.len() * pixels);
    for map in up.chunks_exact(16 * h * w) {
        for row in map.chunks_exact(4 * w).take(height) {
            cropped.extend_from_slice(&row[..width]);
        }
    }
    let top = cropped.iter().copied().fold(0.0f32, f32::max);
    if top <= 0.0 {
        return vec![0; pixels];
    }
    cropped.iter_mut().for_each(|v| *v /= top);
    let keys: Vec<u8> = std::iter::once(0).chain(classes.iter().map(|&c| c as u8)).collect();
    super::threshold::threshold_labels(&cropped, pixels, bg_threshold).into_iter().map(|l| keys[l as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IRNet's counts: 34 directions at radius 5 (training uses 10: 152); every direction
    /// points right or down, its path starts at the source and ends at the destination.
    #[test]
    fn path_index_counts_and_hand_worked_paths() {
        assert_eq!(path_index(5).len(), 34);
        assert_eq!(path_index(10).len(), 152);
        let dirs = path_index(5);
        assert_eq!((dirs[0].dy, dirs[0].dx), (0, 1));
        assert_eq!((dirs[4].dy, dirs[4].dx), (1, -4), "the first of y = 1 after (0, 1..4)");
        for d in &dirs {
            assert!(d.dy > 0 || d.dx > 0);
            assert!(d.path.contains(&(0, 0)) && d.path.contains(&(d.dy, d.dx)), "{d:?}");
        }
        // By hand, cells (y, x) of the box with (dy·x − dx·y)² / (dy² + dx²) < 1:
        // (0, 3) is its row; (2, 1): (2x − y)²/5 is at most 0.8, every cell of the box;
        // (2, 4): (2x − 4y)²/20 drops (0, 3), (0, 4), (2, 0), (2, 1) at 1.8 and 3.2.
        let find = |dy, dx| dirs.iter().find(|d| (d.dy, d.dx) == (dy, dx)).unwrap().path.clone();
        assert_eq!(find(0, 3), [(0, 0), (0, 1), (0, 2), (0, 3)]);
        assert_eq!(find(2, 1), [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]);
        assert_eq!(find(2, 4), [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 2), (2, 3), (2, 4)]);
    }

    /// The dense formula of IRNet's `propagate_to_edge`, in f64: A with the self-loops and
    /// both directions of each pair, `T = A^β / colsum`, `T^(2^k)` by k squarings, `vᵀ T`.
    fn dense_walk(cams: &[f32], boundary: &[f32], h: usize, w: usize, params: &WalkParams) -> Vec<f64> {
        let n = h * w;
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            a[i * n + i] = 1.0;
        }
        for (y, x) in (0..h).flat_map(|y| (0..w).map(move |x| (y, x))) {
            for d in path_index(params.radius) {
                let cells: Option<Vec<usize>> = d
                    .path
                    .iter()
                    .map(|&(py, px)| {
                        let (cy, cx) = (y as i64 + py as i64, x as i64 + px as i64);
                        (cy >= 0 && cx >= 0 && (cy as usize) < h && (cx as usize) < w).then(|| cy as usize * w + cx as usize)
                    })
                    .collect();
                let Some(cells) = cells else { continue };
                let affinity = 1.0 - cells.iter().map(|&c| boundary[c] as f64).fold(0.0, f64::max);
                let (i, j) = (y * w + x, (y as i64 + d.dy as i64) as usize * w + (x as i64 + d.dx as i64) as usize);
                a[i * n + j] = affinity.powf(params.beta as f64);
                a[j * n + i] = a[i * n + j];
            }
        }
        let sums: Vec<f64> = (0..n).map(|j| (0..n).map(|i| a[i * n + j]).sum()).collect();
        let mut t: Vec<f64> = (0..n * n).map(|k| a[k] / sums[k % n]).collect();
        for _ in 0..params.exp_times {
            let mut square = vec![0f64; n * n];
            for i in 0..n {
                for k in 0..n {
                    let tik = t[i * n + k];
                    for j in 0..n {
                        square[i * n + j] += tik * t[k * n + j];
                    }
                }
            }
            t = square;
        }
        cams.chunks_exact(n)
            .flat_map(|map| {
                let v: Vec<f64> = map.iter().zip(boundary).map(|(&c, &b)| c as f64 * (1.0 - b as f64)).collect();
                (0..n).map(|j| (0..n).map(|i| v[i] * t[i * n + j]).sum::<f64>()).collect::<Vec<_>>()
            })
            .collect()
    }

    /// A 9 × 11 grid with a vertical boundary and two classes: the sparse walk equals the dense
    /// formula within 1e-4 of the largest value, and activation does not cross the boundary.
    #[test]
    fn the_sparse_walk_equals_the_dense_formula() {
        let (h, w) = (9usize, 11usize);
        let boundary: Vec<f32> = (0..h * w).map(|p| if p % w == 6 { 0.9 } else { 0.05 * ((p * 7) % 3) as f32 }).collect();
        let cams: Vec<f32> = (0..2 * h * w).map(|k| if (k % (h * w)) % w < 3 + 4 * (k / (h * w)) { 1.0 } else { 0.1 }).collect();
        for params in [WalkParams::default(), WalkParams { radius: 3, beta: 2.0, exp_times: 4, bg_threshold: 0.25 }] {
            let sparse = propagate(&cams, &boundary, h, w, &params);
            let dense = dense_walk(&cams, &boundary, h, w, &params);
            let top = dense.iter().cloned().fold(0.0, f64::max);
            let worst = sparse.iter().zip(&dense).map(|(&s, &d)| (s as f64 - d).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-4 * top, "{params:?}: {worst} of {top}");
        }
        // Class 0 lives left of the boundary (column 6): after the walk its mass stays there.
        let walked = propagate(&cams, &boundary, h, w, &WalkParams::default());
        let (left, right): (f32, f32) = (0..h * w).fold((0.0, 0.0), |(l, r), p| if p % w < 6 { (l + walked[p], r) } else { (l, r + walked[p]) });
        assert!(left > 5.0 * right, "left {left}, right {right}");
    }

    /// IRNet's label step on the sparse walk and on the dense formula gives the same labels, on
    /// an image whose size is not a multiple of 4 (the ×4 upsampling is cropped).
    #[test]
    fn walked_labels_equal_the_dense_formulas() {
        let (h, w, height, width) = (9usize, 11usize, 34usize, 43usize);
        let boundary: Vec<f32> = (0..h * w).map(|p| if p % w == 6 { 0.9 } else { 0.0 }).collect();
        // Class 3 on the left (columns 0–2), class 7 right of the boundary (columns 8–10).
        let active = |class: usize, x: usize| if class == 0 { x < 3 } else { x >= 8 };
        let cams: Vec<f32> = (0..2 * h * w).map(|k| if active(k / (h * w), (k % (h * w)) % w) { 0.9 } else { 0.05 }).collect();
        let params = WalkParams::default();
        let sparse = walk_labels(&cams, &[3, 7], &boundary, (h, w), (height, width), &params);
        let dense: Vec<f32> = dense_walk(&cams, &boundary, h, w, &params).into_iter().map(|v| v as f32).collect();
        let reference = labels_of_walked(&dense, &[3, 7], (h, w), (height, width), 0.25);
        assert_eq!(sparse.len(), height * width);
        assert_eq!(sparse, reference);
        // Both classes and the background occur: the comparison is not of a constant map.
        for id in [0, 3, 7] {
            assert!(sparse.contains(&id), "{id} missing");
        }
        assert_eq!(labels_of_walked(&vec![0.0; 2 * h * w], &[3, 7], (h, w), (height, width), 0.25), vec![0; height * width]);
    }

    /// With no boundary anywhere a connected grid mixes towards the stationary distribution:
    /// every pixel ends near the same value, and the total mass `Σ_j d_j v_j` is kept.
    #[test]
    fn without_boundaries_the_walk_mixes_and_keeps_mass() {
        let (h, w) = (6usize, 7usize);
        let boundary = vec![0.0f32; h * w];
        let directions = path_index(5);
        let transition = Transition::new(&boundary, h, w, &directions, 10.0);
        let mut v: Vec<f32> = (0..h * w).map(|p| if p == 0 { 1.0 } else { 0.0 }).collect();
        let sums: Vec<f32> = transition.inverse_sums.iter().map(|s| 1.0 / s).collect();
        let mass = |v: &[f32]| v.iter().zip(&sums).map(|(a, d)| a * d).sum::<f32>();
        let before = mass(&v);
        transition.walk(&mut v, 256);
        assert!((mass(&v) - before).abs() < 1e-4 * before, "{} vs {before}", mass(&v));
        let (lo, hi) = v.iter().fold((f32::MAX, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        assert!(hi - lo < 1e-3 * hi, "{lo} .. {hi}");
    }
}
