//! IRNet's inter-pixel relation losses (docs/methods.md §8; jiwoon-ahn/irn `step/train_irn.py`,
//! `misc/indexing.py`, `voc12/dataloader.py`), on the stride-4 grid of a training crop.
//!
//! Pairs: each source pixel of the inner region (IRNet's crop of the grid: rows `0..h − r'`,
//! columns `r'..w − r'`, r' = ⌈r⌉ − 1) with its destination along each direction of the path
//! index of radius r (10 in training: 152 directions). Labels come from the `irn_seeds`
//! pseudo-label downscaled ×0.25 (nearest): a pair of equal labels below 255 is positive,
//! background (`bg+`) or foreground (`fg+`), unequal labels below 255 negative, anything with
//! 255 ignored. Affinity `a = 1 − max_{k on the path} σ(B_k)`. Losses:
//! - `L_bg+ = Σ bg+ · −ln(a + 1e-5) / (Σ bg+ + 1e-5)`, `L_fg+` likewise, `L+ = (L_bg+ + L_fg+)/2`;
//! - `L− = Σ neg · −ln(1 + 1e-5 − a) / (Σ neg + 1e-5)`;
//! - `L_dp,fg = Σ fg+ · |D_i − D_j − δ_ij|₁ / (2 Σ fg+ + 1e-5)` with δ_ij = j − i (the direction),
//!   `L_dp,bg = Σ bg+ · |D_i − D_j|₁ / (2 Σ bg+ + 1e-5)`;
//! - total `(L+ + L−)/2 + (L_dp,fg + L_dp,bg)/2`.

use tch::{Device, Kind, Tensor};

use crate::refine::pseudo::UNCERTAIN;
use crate::refine::walk::{path_index, Direction};

/// The pairs of an h × w grid for a radius, as index tensors (flat pixel indices).
pub struct PairIndex {
    /// [S]: the source pixels.
    sources: Tensor,
    /// [D, S]: the destination of each source along each direction.
    destinations: Tensor,
    /// Per group of directions whose paths have the same length L: the directions' rows in
    /// `destinations`, and the path cells [n_dirs, L, S].
    paths: Vec<(Vec<i64>, Tensor)>,
    /// [2, D, 1]: each direction's (dy, dx), the displacement a foreground pair should show.
    offsets: Tensor,
    directions: usize,
}

impl PairIndex {
    pub fn new(height: i64, width: i64, radius: i32, device: Device) -> PairIndex {
        let dirs: Vec<Direction> = path_index(radius);
        let margin = (radius - 1) as i64;
        let (rows, cols) = (height - margin, width - 2 * margin);
        assert!(rows > 0 && cols > 0, "a {height}×{width} grid is too small for radius {radius}");
        let index = |y: i64, x: i64| y * width + x;
        let sources: Vec<i64> = (0..rows).flat_map(|y| (0..cols).map(move |x| index(y, x + margin))).collect();
        let shifted = |dy: i64, dx: i64| -> Vec<i64> { (0..rows).flat_map(|y| (0..cols).map(move |x| index(y + dy, x + margin + dx))).collect() };
        let destinations: Vec<i64> = dirs.iter().flat_map(|d| shifted(d.dy as i64, d.dx as i64)).collect();
        let mut by_length: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (k, d) in dirs.iter().enumerate() {
            by_length.entry(d.path.len()).or_default().push(k);
        }
        let paths = by_length
            .into_iter()
            .map(|(length, members)| {
                let cells: Vec<i64> = members.iter().flat_map(|&k| dirs[k].path.iter().flat_map(|&(py, px)| shifted(py as i64, px as i64))).collect();
                let tensor = Tensor::from_slice(&cells).view([members.len() as i64, length as i64, rows * cols]).to_device(device);
                (members.iter().map(|&k| k as i64).collect(), tensor)
            })
            .collect();
        let dy: Vec<f32> = dirs.iter().map(|d| d.dy as f32).collect();
        let dx: Vec<f32> = dirs.iter().map(|d| d.dx as f32).collect();
        PairIndex {
            sources: Tensor::from_slice(&sources).to_device(device),
            destinations: Tensor::from_slice(&destinations).view([dirs.len() as i64, rows * cols]).to_device(device),
            paths,
            offsets: Tensor::stack(&[Tensor::from_slice(&dy), Tensor::from_slice(&dx)], 0).unsqueeze(-1).to_device(device),
            directions: dirs.len(),
        }
    }

    /// Directions D.
    pub fn len(&self) -> usize {
        self.directions
    }

    pub fn is_empty(&self) -> bool {
        self.directions == 0
    }

    /// Affinities [N, D, S] from boundary probabilities [N, 1, h, w]: `1 − max` over each path.
    pub fn affinity(&self, boundary: &Tensor) -> Tensor {
        let flat = boundary.flatten(1, -1);
        let n = flat.size()[0];
        let s = self.sources.size()[0];
        let mut out = Tensor::zeros([n, self.directions as i64, s], (boundary.kind(), boundary.device()));
        for (members, cells) in &self.paths {
            let size = cells.size();
            let gathered = flat.index_select(1, &cells.flatten(0, -1)).view([n, size[0], size[1], size[2]]);
            let group = 1.0 - gathered.amax([2].as_slice(), false);
            out = out.index_copy(1, &Tensor::from_slice(members).to_device(boundary.device()), &group);
        }
        out
    }

    /// Pair labels from stride-4 seed labels [N, h, w] (u8: 0 background, 1..C, 255 ignored):
    /// `(bg+, fg+, neg)`, each [N, D, S] f32 of 0 and 1.
    pub fn labels(&self, seeds: &Tensor) -> (Tensor, Tensor, Tensor) {
        let flat = seeds.flatten(1, -1).to_kind(Kind::Int64);
        let (n, d) = (flat.size()[0], self.directions as i64);
        let from = flat.index_select(1, &self.sources).unsqueeze(1);
        let to = flat.index_select(1, &self.destinations.flatten(0, -1)).view([n, d, -1]);
        let ignore = i64::from(UNCERTAIN);
        let valid = from.ne(ignore).logical_and(&to.ne(ignore));
        let equal = from.eq_tensor(&to);
        let positive = equal.logical_and(&valid);
        let bg = positive.logical_and(&from.eq(0)).to_kind(Kind::Float);
        let fg = positive.logical_and(&from.gt(0)).to_kind(Kind::Float);
        let neg = equal.logical_not().logical_and(&valid).to_kind(Kind::Float);
        (bg, fg, neg)
    }

    /// `D_i − D_j` of every pair, [N, 2, D, S], from displacements [N, 2, h, w].
    pub fn displacement_differences(&self, displacement: &Tensor) -> Tensor {
        let flat = displacement.flatten(2, -1);
        let size = flat.size();
        let from = flat.index_select(2, &self.sources).unsqueeze(2);
        let to = flat.index_select(2, &self.destinations.flatten(0, -1)).view([size[0], size[1], self.directions as i64, -1]);
        from - to
    }
}

/// The four terms of one batch, and their total.
pub struct IrnLoss {
    pub positive: Tensor,
    pub negative: Tensor,
    pub displacement_fg: Tensor,
    pub displacement_bg: Tensor,
}

impl IrnLoss {
    /// `(L+ + L−)/2 + (L_dp,fg + L_dp,bg)/2`.
    pub fn total(&self) -> Tensor {
        (&self.positive + &self.negative) / 2.0 + (&self.displacement_fg + &self.displacement_bg) / 2.0
    }
}

const EPS: f64 = 1e-5;

/// The losses of boundary logits [N, 1, h, w] and displacements [N, 2, h, w] against seed
/// labels [N, h, w].
pub fn irn_loss(index: &PairIndex, edge_logits: &Tensor, displacement: &Tensor, seeds: &Tensor) -> IrnLoss {
    let affinity = index.affinity(&edge_logits.sigmoid());
    let (bg, fg, neg) = index.labels(seeds);
    let mean_over =
        |weights: &Tensor, values: Tensor, denominator_scale: f64| (weights * values).sum(Kind::Float) / (weights.sum(Kind::Float) * denominator_scale + EPS);
    let bg_pos = mean_over(&bg, -(&affinity + EPS).log(), 1.0);
    let fg_pos = mean_over(&fg, -(&affinity + EPS).log(), 1.0);
    let negative = mean_over(&neg, -(1.0 + EPS - &affinity).log(), 1.0);
    let differences = index.displacement_differences(displacement);
    let fg_offsets = (&differences - &index.offsets).abs().sum_dim_intlist([1].as_slice(), false, Kind::Float);
    let bg_offsets = differences.abs().sum_dim_intlist([1].as_slice(), false, Kind::Float);
    IrnLoss { positive: (bg_pos + fg_pos) / 2.0, negative, displacement_fg: mean_over(&fg, fg_offsets, 2.0), displacement_bg: mean_over(&bg, bg_offsets, 2.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    /// Radius 2 (directions (0, 1), (1, -1), (1, 0), (1, 1)) on a 2 × 4 grid: margin 1, so
    /// the sources are (0, 1) and (0, 2) — pixels 1 and 2.
    #[test]
    fn pairs_labels_and_affinities_by_hand() {
        let index = PairIndex::new(2, 4, 2, Device::Cpu);
        assert_eq!(index.len(), 4);
        assert_eq!(values(&index.sources), [1.0, 2.0]);
        // (0,1): 2, 3; (1,-1): 4, 5; (1,0): 5, 6; (1,1): 6, 7.
        assert_eq!(values(&index.destinations), [2.0, 3.0, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0]);
        // Seeds: row 0 = 0 0 1 255, row 1 = 0 1 1 2.
        let seeds = Tensor::from_slice(&[0u8, 0, 1, 255, 0, 1, 1, 2]).view([1, 2, 4]);
        let (bg, fg, neg) = index.labels(&seeds);
        // Source 1 (label 0) → 2 (1), 4 (0), 5 (1), 6 (1): neg, bg+, neg, neg.
        // Source 2 (label 1) → 3 (255), 5 (1), 6 (1), 7 (2): ignored, fg+, fg+, neg.
        assert_eq!(values(&bg.squeeze_dim(0)), [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(values(&fg.squeeze_dim(0)), [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(values(&neg.squeeze_dim(0)), [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]);
        // Boundary probabilities 0.1·pixel: a = 1 − max over the path's cells.
        let boundary = (Tensor::arange(8, (Kind::Float, Device::Cpu)) * 0.1).view([1, 1, 2, 4]);
        let a = values(&index.affinity(&boundary).squeeze_dim(0));
        // (0,1) paths {1,2}, {2,3}; (1,-1) {1,0,5,4}→ cells (0,0),(0,-1),(1,0),(1,-1) of source
        // 1 = pixels 1, 0, 5, 4 → max 0.5; from 2: 2, 1, 6, 5 → 0.6; (1,0): {1,5}, {2,6};
        // (1,1): {1,2,5,6}, {2,3,6,7}.
        let expected = [0.8, 0.7, 0.5, 0.4, 0.5, 0.4, 0.4, 0.3];
        assert!(a.iter().zip(expected).all(|(x, e)| (x - e).abs() < 1e-6), "{a:?}");
    }

    /// Each loss term against its formula, computed here from the labels and affinities above.
    #[test]
    fn loss_terms_follow_the_formulas() {
        let index = PairIndex::new(2, 4, 2, Device::Cpu);
        let seeds = Tensor::from_slice(&[0u8, 0, 1, 255, 0, 1, 1, 2]).view([1, 2, 4]);
        let probabilities = (Tensor::arange(8, (Kind::Float, Device::Cpu)) * 0.1).view([1, 1, 2, 4]);
        let logits = (&probabilities / (-&probabilities + (1.0 + 1e-12))).log().set_requires_grad(true);
        // Displacements: D = (pixel, −pixel) at each pixel.
        let p = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([1, 1, 2, 4]);
        let displacement = Tensor::cat(&[&p, &(-&p)], 1).set_requires_grad(true);
        let loss = irn_loss(&index, &logits, &displacement, &seeds);
        let ln = |x: f64| x.ln();
        // bg+: the pair (1 → 4) with a = 0.5; fg+: (2 → 5) a = 0.4 and (2 → 6) a = 0.4.
        let bg = -ln(0.5 + 1e-5) / (1.0 + 1e-5);
        let fg = (-ln(0.4 + 1e-5) * 2.0) / (2.0 + 1e-5);
        // neg: (1→2) 0.8, (1→5) 0.5, (1→6) 0.4, (2→7) 0.3.
        let neg = -[0.8, 0.5, 0.4, 0.3].iter().map(|a: &f64| ln(1.0 + 1e-5 - a)).sum::<f64>() / (4.0 + 1e-5);
        // D_i − D_j for (1 → 4): (1 − 4, −1 + 4) = (−3, 3): bg term |−3| + |3| = 6 over 2·1.
        // fg: (2 → 5) along (1, −1): (−3, 3) − (1, −1) = (−4, 4): 8; (2 → 6) along (1, 0):
        // (−4, 4) − (1, 0) = (−5, 4): 9. Sum 17 over 2·2.
        let expected = [
            (loss.positive.double_value(&[]), (bg + fg) / 2.0),
            (loss.negative.double_value(&[]), neg),
            (loss.displacement_bg.double_value(&[]), 6.0 / (2.0 + 1e-5)),
            (loss.displacement_fg.double_value(&[]), 17.0 / (4.0 + 1e-5)),
        ];
        for (got, want) in expected {
            assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{got} vs {want}");
        }
        let total = loss.total();
        assert!((total.double_value(&[]) - ((bg + fg) / 2.0 + neg) / 2.0 - (6.0 / 2.0 + 17.0 / 4.0) / 2.0).abs() < 1e-3);
        total.backward();
        assert!(logits.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0 && displacement.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }
}
