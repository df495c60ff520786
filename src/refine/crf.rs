//! Fully connected CRF with Gaussian edge potentials (Krähenbühl & Koltun 2011;
//! docs/methods.md §4): mean-field inference with a smoothness kernel
//! `w₂ exp(−‖p_i−p_j‖²/2θ_γ²)` and an appearance kernel
//! `w₁ exp(−‖p_i−p_j‖²/2θ_α² − ‖I_i−I_j‖²/2θ_β²)`, Potts compatibility, both filtered by a
//! [`Lattice`] in time linear in the pixels.
//!
//! As in densecrf (and pydensecrf, which IRNet calls), each kernel is normalised symmetrically,
//! `D^-½ K D^-½` with `D = K·1`, and one iteration is `Q ← softmax(−U + Σ_k w_k D_k^-½ K_k D_k^-½ Q)`.
//! The lattices depend on the image only, so one [`DenseCrf`] serves any number of inferences,
//! and [`DenseCrf::inference`] runs several independent problems ("groups") in one pass over
//! the lattices: IRNet's two CRFs per image (foreground and background seeds) cost one.

use std::sync::{Arc, Mutex};

use super::permutohedral::{FilterScratch, Lattice, PointPasses, LANE};
use crate::rounding::{floor, to_int};

/// Kernel settings (docs/methods.md §4). The default is IRNet's, for CAM seeds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrfParams {
    /// Mean-field iterations.
    pub iterations: usize,
    /// θ_γ of the smoothness kernel, in pixels.
    pub smoothness_sxy: f32,
    /// w₂.
    pub smoothness_weight: f32,
    /// θ_α of the appearance kernel, in pixels.
    pub appearance_sxy: f32,
    /// θ_β of the appearance kernel, in RGB levels (0..255).
    pub appearance_srgb: f32,
    /// w₁.
    pub appearance_weight: f32,
}

impl Default for CrfParams {
    fn default() -> CrfParams {
        CrfParams { iterations: 10, smoothness_sxy: 3.0, smoothness_weight: 3.0, appearance_sxy: 50.0, appearance_srgb: 5.0, appearance_weight: 10.0 }
    }
}

impl CrfParams {
    /// A description of what is wrong with these settings, if anything.
    pub fn check(&self) -> Result<(), String> {
        let positive = [("smoothness_sxy", self.smoothness_sxy), ("appearance_sxy", self.appearance_sxy), ("appearance_srgb", self.appearance_srgb)];
        // The lattice takes features (pixels and levels over θ) under 10⁷: θ ≥ 0.01 keeps a
        // 100k-pixel-wide image inside that.
        for (key, value) in positive {
            if !(value >= 0.01 && value.is_finite()) {
                return Err(format!("{key} must be a number of at least 0.01, not {value}"));
            }
        }
        for (key, value) in [("smoothness_weight", self.smoothness_weight), ("appearance_weight", self.appearance_weight)] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(format!("{key} must be a non-negative number, not {value}"));
            }
        }
        Ok(())
    }
}

/// The features of a bilateral kernel, pixels × 5 row-major: (x/σ_xy, y/σ_xy, r/σ_rgb,
/// g/σ_rgb, b/σ_rgb) for `rgb` (pixels × 3, row-major, 0..255 as bytes or floats).
pub fn bilateral_features<T: Copy + Into<f32>>(rgb: &[T], width: usize, height: usize, sigma_xy: f32, sigma_rgb: f32) -> Vec<f32> {
    let mut features = Vec::with_capacity(width * height * 5);
    for y in 0..height {
        for x in 0..width {
            let p = (y * width + x) * 3;
            features.extend([x as f32 / sigma_xy, y as f32 / sigma_xy]);
            features.extend(rgb[p..p + 3].iter().map(|&c| c.into() / sigma_rgb));
        }
    }
    features
}

/// A [C, H, W] tensor's values pixel-major (H·W × C, row-major, f32 on the CPU): the layout
/// of the CRF's and the lattice's inputs.
pub fn pixel_major(chw: &tch::Tensor) -> Vec<f32> {
    Vec::try_from(chw.permute([1, 2, 0]).flatten(0, -1).to_device(tch::Device::Cpu).to_kind(tch::Kind::Float)).expect("an f32 tensor converts")
}

/// One normalised kernel: its lattice, `D^-½`, its weight, and its unweighted message of a
/// marginal that is 1 everywhere, `D^-½ K D^-½ 1`.
#[derive(Debug, Clone, PartialEq)]
struct Kernel {
    lattice: Lattice,
    norm: Vec<f32>,
    weight: f32,
    unit_message: Vec<f32>,
}

impl Kernel {
    fn new(features: &[f32], dim: usize, weight: f32) -> Kernel {
        let lattice = Lattice::new(features, dim);
        let ones = vec![1f32; lattice.points()];
        let mut norm = vec![0f32; lattice.points()];
        lattice.filter(&ones, 1, &mut norm);
        norm.iter_mut().for_each(|n| *n = 1.0 / (*n + 1e-20).sqrt());
        let mut unit_message = vec![0f32; lattice.points()];
        lattice.add_filtered(&ones, 1, &norm, 1.0, &mut unit_message, &mut FilterScratch::default());
        Kernel { lattice, norm, weight, unit_message }
    }

    /// `acc += w · D^-½ K D^-½ q` (q and acc: points × channels).
    fn add_message(&self, q: &[f32], channels: usize, scratch: &mut FilterScratch, acc: &mut [f32]) {
        self.lattice.add_filtered(q, channels, &self.norm, self.weight, acc, scratch);
    }
}

/// A dense CRF over the pixels of one RGB image.
#[derive(Debug, Clone)]
pub struct DenseCrf {
    pixels: usize,
    kernels: [Arc<Kernel>; 2],
    iterations: usize,
}

impl DenseCrf {
    /// The CRF of an RGB image (`width × height × 3` bytes, row-major).
    pub fn new(rgb: &[u8], width: usize, height: usize, params: &CrfParams) -> DenseCrf {
        assert_eq!(rgb.len(), width * height * 3, "rgb must be width × height × 3 bytes");
        let appearance = bilateral_features(rgb, width, height, params.appearance_sxy, params.appearance_srgb);
        let kernels = [smoothness_kernel(width, height, params), Arc::new(Kernel::new(&appearance, 5, params.appearance_weight))];
        DenseCrf { pixels: width * height, kernels, iterations: params.iterations }
    }

    /// Mean-field marginals Q for the unary energies `unary` (pixels × (groups × labels),
    /// row-major): `groups` independent problems of `labels` labels each, inferred together.
    /// Returns Q in the same layout; each group of each pixel sums to 1.
    ///
    /// Only the first `labels − 1` labels of each group are filtered: the messages of all the
    /// labels sum to the message of Q's sum, 1, which the kernels hold (`unit_message`), so the
    /// last label's is that minus the others' (docs/methods.md §4). With two labels (IRNet's)
    /// that halves the filtering, and the softmax of two is a logistic of their difference.
    pub fn inference(&self, unary: &[f32], labels: usize, groups: usize) -> Vec<f32> {
        self.inference_by(unary, labels, groups, MAX_POINT_LANES)
    }

    /// [`DenseCrf::inference`], point by point up to `max_point_lanes` lanes of filtered
    /// channels (see [`DenseCrf::mean_field`]).
    fn inference_by(&self, unary: &[f32], labels: usize, groups: usize, max_point_lanes: usize) -> Vec<f32> {
        assert!(labels >= 1 && unary.len() == self.pixels * labels * groups, "unary must be pixels × groups × labels");
        if labels == 1 {
            return vec![1.0; unary.len()];
        }
        let unit = self.unit_messages(groups);
        let negated: Vec<f32> = unary.iter().map(|u| -u).collect();
        if labels == 2 {
            return self.two_label_inference(&negated, &unit, max_point_lanes);
        }
        let mut q = negated.clone();
        softmax_groups(&mut q, labels);
        let channels = (labels - 1) * groups;
        let mut kept = vec![0f32; self.pixels * channels];
        keep_first_labels(&q, labels, &mut kept);
        let values_per_point = labels * groups;
        self.mean_field(&mut kept, channels, max_point_lanes, |first, messages, kept| {
            let end = first + kept.len() / channels;
            let values = first * values_per_point..end * values_per_point;
            let q = &mut q[values.clone()];
            add_messages(&negated[values], messages, &unit[first * groups..end * groups], labels, q);
            softmax_groups(q, labels);
            keep_first_labels(q, labels, kept);
        });
        q
    }

    /// Per pixel and group (pixels × `groups`), both kernels' weighted message of a marginal
    /// that is 1 everywhere: the sum of a group's label messages.
    fn unit_messages(&self, groups: usize) -> Vec<f32> {
        let [a, b] = &self.kernels;
        let mut unit = Vec::with_capacity(self.pixels * groups);
        for (x, y) in a.unit_message.iter().zip(&b.unit_message) {
            unit.extend(std::iter::repeat_n(a.weight * x + b.weight * y, groups));
        }
        unit
    }

    /// [`DenseCrf::inference`] of two labels, from the negated energies: the first label's
    /// marginal alone is the state, `q₀ = 1 / (1 + e^(e₁ − e₀))` with `e₀ = −U₀ + m` and
    /// `e₁ = −U₁ + u − m` (m its message, u the unit message), i.e. `e₁ − e₀ = c − 2m`.
    fn two_label_inference(&self, negated: &[f32], unit: &[f32], max_point_lanes: usize) -> Vec<f32> {
        let channels = unit.len() / self.pixels;
        let offset: Vec<f32> = negated.chunks_exact(2).zip(unit).map(|(n, u)| n[1] - n[0] + u).collect();
        let mut q = negated.chunks_exact(2).map(|n| n[1] - n[0]).collect::<Vec<f32>>();
        logistic_of_negated(&mut q);
        self.mean_field(&mut q, channels, max_point_lanes, |first, messages, q| {
            q.iter_mut().zip(&offset[first * channels..]).zip(messages).for_each(|((q, c), m)| *q = energy_difference(*c, *m));
            logistic_of_negated(q);
        });
        let mut both = vec![0f32; 2 * q.len()];
        for (pair, &q) in both.chunks_exact_mut(2).zip(&q) {
            pair.copy_from_slice(&[q, 1.0 - q]);
        }
        both
    }

    /// The mean-field iterations on the filtered values `kept` (pixels × `channels`): each
    /// iteration filters them with both kernels into messages and hands those to `update`,
    /// which turns them into the next values. `update(first, messages, kept)` receives the
    /// points from `first` on, both `messages` and `kept` a whole number of points long.
    ///
    /// Both traversals give the same bits. Point by point, measured the faster up to
    /// [`MAX_POINT_LANES`] lanes (IRNet's two groups of up to 4 labels), holds the vertex values
    /// of four lattices at once; wider values go kernel by kernel, two at a time
    /// (docs/methods.md §4).
    fn mean_field(&self, kept: &mut [f32], channels: usize, max_point_lanes: usize, update: impl FnMut(usize, &[f32], &mut [f32])) {
        match channels {
            _ if channels.div_ceil(LANE) > max_point_lanes.min(MAX_POINT_LANES) => self.kernel_by_kernel(kept, channels, update),
            1 => self.point_by_point::<1, 1>(kept, update),
            2 => self.point_by_point::<1, 2>(kept, update),
            3 => self.point_by_point::<2, 3>(kept, update),
            4 => self.point_by_point::<2, 4>(kept, update),
            5 => self.point_by_point::<3, 5>(kept, update),
            _ => self.point_by_point::<3, 6>(kept, update),
        }
    }

    /// [`DenseCrf::mean_field`] with each kernel filtering all of `kept` in turn.
    fn kernel_by_kernel(&self, kept: &mut [f32], channels: usize, mut update: impl FnMut(usize, &[f32], &mut [f32])) {
        let mut messages = vec![0f32; kept.len()];
        let mut scratch = FilterScratch::default();
        for _ in 0..self.iterations {
            messages.fill(0.0);
            for kernel in &self.kernels {
                kernel.add_message(kept, channels, &mut scratch, &mut messages);
            }
            update(0, &messages, kept);
        }
    }

    /// [`DenseCrf::mean_field`] for `C` channels in `W` lanes (the same bits), one pass over
    /// the points per iteration: a block of points is sliced from both kernels' blurred
    /// lattices, updated, and at once splatted into their next ones, so each point's vertex
    /// numbers and weights are read once per iteration rather than twice and no message buffer
    /// is written (docs/methods.md §4). The channel count is a constant so that the per-channel
    /// loops unroll (inference −11% against a count known at run time).
    fn point_by_point<const W: usize, const C: usize>(&self, kept: &mut [f32], update: impl FnMut(usize, &[f32], &mut [f32])) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2.
            return unsafe { self.point_by_point_avx2::<W, C>(kept, update) };
        }
        self.point_by_point_lanes::<W, C>(kept, update)
    }

    /// [`DenseCrf::point_by_point_lanes`] compiled for AVX2: the same operations.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn point_by_point_avx2<const W: usize, const C: usize>(&self, kept: &mut [f32], update: impl FnMut(usize, &[f32], &mut [f32])) {
        self.point_by_point_lanes::<W, C>(kept, update)
    }

    #[inline(always)]
    fn point_by_point_lanes<const W: usize, const C: usize>(&self, kept: &mut [f32], mut update: impl FnMut(usize, &[f32], &mut [f32])) {
        const BLOCK_POINTS: usize = 64;
        const { assert!(W <= MAX_POINT_LANES) };
        const { assert!(C <= W * LANE) };
        let mut passes = self.kernels.each_ref().map(|kernel| kernel.lattice.point_passes::<W>());
        self.splat_points::<W, C>(&mut passes, kept, 0);
        self.blur_next(&mut passes);
        let mut block_messages = [0f32; BLOCK_POINTS * MAX_POINT_LANES * LANE];
        for iteration in 0..self.iterations {
            let last = iteration + 1 == self.iterations;
            for first in (0..self.pixels).step_by(BLOCK_POINTS) {
                let end = (first + BLOCK_POINTS).min(self.pixels);
                let block = &mut kept[first * C..end * C];
                // Zeroed as far as this block uses it (a whole array zeroed per block cost a
                // pass over 3 times the messages).
                let messages = &mut block_messages[..block.len()];
                messages.fill(0.0);
                // As `kernel_by_kernel`: from zero, the kernels in order.
                for (kernel, passes) in self.kernels.iter().zip(&passes) {
                    for ((incidence, norm), message) in kernel.lattice.incidence(first, end).zip(&kernel.norm[first..end]).zip(messages.chunks_exact_mut(C)) {
                        let sliced = kernel.lattice.slice_from(incidence, passes);
                        for (c, m) in message.iter_mut().enumerate() {
                            *m += kernel.weight * (sliced[c / LANE][c % LANE] * norm);
                        }
                    }
                }
                update(first, messages, block);
                if !last {
                    self.splat_points::<W, C>(&mut passes, block, first);
                }
            }
            if !last {
                self.blur_next(&mut passes);
            }
        }
    }

    /// Splats `values` (the points from `first` on, `C` each, in `W` lanes), each
    /// scaled by its `D^-½`, into both kernels' next lattices.
    #[inline(always)]
    fn splat_points<const W: usize, const C: usize>(&self, passes: &mut [PointPasses<W>; 2], values: &[f32], first: usize) {
        let end = first + values.len() / C;
        for (kernel, passes) in self.kernels.iter().zip(passes) {
            for ((values, incidence), norm) in values.chunks_exact(C).zip(kernel.lattice.incidence(first, end)).zip(&kernel.norm[first..end]) {
                let mut point = [[0f32; LANE]; W];
                for (c, &x) in values.iter().enumerate() {
                    point[c / LANE][c % LANE] = x * norm;
                }
                kernel.lattice.splat_into(incidence, &point, passes);
            }
        }
    }

    /// Blurs both kernels' splats into the lattices the next pass slices from.
    fn blur_next<const W: usize>(&self, passes: &mut [PointPasses<W>; 2]) {
        for (kernel, passes) in self.kernels.iter().zip(passes) {
            kernel.lattice.blur_next(passes);
        }
    }
}

/// The most lanes of channels [`DenseCrf::point_by_point`] takes.
const MAX_POINT_LANES: usize = 3;

/// `kept` ← the first `labels − 1` values of each group of `q`.
fn keep_first_labels(q: &[f32], labels: usize, kept: &mut [f32]) {
    // As in `add_messages`: with a constant group length each copy is two moves, not a call
    // to memcpy.
    match labels {
        3 => keep_first_labels_of::<3>(q, kept),
        4 => keep_first_labels_of::<4>(q, kept),
        _ => q.chunks_exact(labels).zip(kept.chunks_exact_mut(labels - 1)).for_each(|(group, out)| out.copy_from_slice(&group[..labels - 1])),
    }
}

#[inline(always)]
fn keep_first_labels_of<const L: usize>(q: &[f32], kept: &mut [f32]) {
    for (group, out) in q.as_chunks::<L>().0.iter().zip(kept.chunks_exact_mut(L - 1)) {
        out.copy_from_slice(&group[..L - 1]);
    }
}

/// `e₁ − e₀ = c − 2m` of [`DenseCrf::two_label_inference`], from its `offset` c and the first
/// label's message m.
#[inline(always)]
fn energy_difference(offset: f32, message: f32) -> f32 {
    offset - 2.0 * message
}

/// `energies` ← `negated` plus the messages: as given for all but each group's last label, and
/// the group's `unit` message less their sum for the last.
fn add_messages(negated: &[f32], messages: &[f32], unit: &[f32], labels: usize, energies: &mut [f32]) {
    // A constant group length for the usual label counts lets the compiler unroll each group.
    match labels {
        3 => add_messages_of::<3>(negated, messages, unit, energies),
        4 => add_messages_of::<4>(negated, messages, unit, energies),
        _ => {
            let groups = negated.chunks_exact(labels).zip(energies.chunks_exact_mut(labels));
            for (((group, out), message), u) in groups.zip(messages.chunks_exact(labels - 1)).zip(unit) {
                add_group_messages(group, message, *u, out);
            }
        }
    }
}

#[inline(always)]
fn add_messages_of<const L: usize>(negated: &[f32], messages: &[f32], unit: &[f32], energies: &mut [f32]) {
    let (negated, energies) = (negated.as_chunks::<L>().0, energies.as_chunks_mut::<L>().0);
    for (((group, out), message), u) in negated.iter().zip(energies).zip(messages.chunks_exact(L - 1)).zip(unit) {
        add_group_messages(group, message, *u, out);
    }
}

#[inline(always)]
fn add_group_messages(negated: &[f32], message: &[f32], unit: f32, out: &mut [f32]) {
    let last = negated.len() - 1;
    for ((e, n), m) in out.iter_mut().zip(negated).zip(message) {
        *e = n + m;
    }
    out[last] = negated[last] + (unit - message.iter().sum::<f32>());
}

/// In place: `v ← 1 / (1 + eᵛ)`, the softmax's first value of a pair whose difference is v.
fn logistic_of_negated(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2.
        return unsafe { logistic_of_negated_avx2(values) };
    }
    logistic_lanes(values)
}

/// [`logistic_lanes`] compiled for AVX2: the same operations per lane.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn logistic_of_negated_avx2(values: &mut [f32]) {
    logistic_lanes(values)
}

#[inline(always)]
fn logistic_lanes(values: &mut [f32]) {
    exp_in_place(values);
    values.iter_mut().for_each(|v| *v = 1.0 / (1.0 + *v));
}

/// The smoothness kernels of the latest image sizes, shared by every thread: the kernel depends
/// on the size and its settings only, and building it is ~12% of an image's refinement.
/// Bounded: [`SMOOTHNESS_SIZES`] kernels (a 640×480 one holds ~11 MB).
static SMOOTHNESS_KERNELS: Mutex<Vec<(SmoothnessKey, Arc<Kernel>)>> = Mutex::new(Vec::new());
const SMOOTHNESS_SIZES: usize = 8;

/// Width, height, and the bits of θ_γ and w₂.
type SmoothnessKey = (usize, usize, u32, u32);

/// The smoothness kernel of a `width × height` image, from [`SMOOTHNESS_KERNELS`] or built
/// (and kept, in place of the least recently used).
fn smoothness_kernel(width: usize, height: usize, params: &CrfParams) -> Arc<Kernel> {
    let key = (width, height, params.smoothness_sxy.to_bits(), params.smoothness_weight.to_bits());
    // A poisoned lock only means another thread panicked while it held it; the list is intact.
    let kernels = || SMOOTHNESS_KERNELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    {
        let mut kept = kernels();
        if let Some(i) = kept.iter().position(|(k, _)| *k == key) {
            let entry = kept.remove(i);
            let kernel = entry.1.clone();
            kept.insert(0, entry);
            return kernel;
        }
    }
    // Built outside the lock: two threads may build the same kernel once each, never wait.
    let features: Vec<f32> = (0..height).flat_map(|y| (0..width).flat_map(move |x| [x as f32, y as f32])).map(|c| c / params.smoothness_sxy).collect();
    let kernel = Arc::new(Kernel::new(&features, 2, params.smoothness_weight));
    let mut kept = kernels();
    kept.retain(|(k, _)| *k != key);
    kept.insert(0, (key, kernel.clone()));
    kept.truncate(SMOOTHNESS_SIZES);
    kernel
}

/// In place: each run of `labels` values becomes its softmax (densecrf's expAndNormalize).
fn softmax_groups(values: &mut [f32], labels: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2.
        return unsafe { softmax_groups_avx2(values, labels) };
    }
    softmax_labels(values, labels)
}

/// [`softmax_labels`] compiled for AVX2: the same operations per lane, twice the lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn softmax_groups_avx2(values: &mut [f32], labels: usize) {
    softmax_labels(values, labels)
}

#[inline(always)]
fn softmax_labels(values: &mut [f32], labels: usize) {
    // A constant group length for the usual label counts lets the compiler unroll each group.
    match labels {
        1 => softmax_blocks(values, 1),
        2 => softmax_transposed::<2>(values),
        3 => softmax_transposed::<3>(values),
        4 => softmax_transposed::<4>(values),
        5 => softmax_transposed::<5>(values),
        6 => softmax_transposed::<6>(values),
        _ => softmax_blocks(values, labels),
    }
}

/// [`softmax_blocks`]' operations for groups of L labels, on blocks of [`TRANSPOSED_GROUPS`]
/// groups copied label-major, so that every step (max, subtract, exp, sum, divide) runs across
/// the groups in whole vectors: half the time of spreading each group's max and sum.
#[inline(always)]
fn softmax_transposed<const L: usize>(values: &mut [f32]) {
    for block in values.chunks_mut(L * TRANSPOSED_GROUPS) {
        // Padding groups are zeros: finite throughout, and never copied back.
        let mut by_label = [[0f32; TRANSPOSED_GROUPS]; L];
        for (g, group) in block.chunks_exact(L).enumerate() {
            for l in 0..L {
                by_label[l][g] = group[l];
            }
        }
        // As `softmax_blocks`: the max folded from −∞ and the sum (from −0) in label order.
        let mut max = [f32::NEG_INFINITY; TRANSPOSED_GROUPS];
        by_label.iter().for_each(|values| max.iter_mut().zip(values).for_each(|(m, &v)| *m = m.max(v)));
        let mut sum = [-0.0f32; TRANSPOSED_GROUPS];
        for values in &mut by_label {
            values.iter_mut().zip(&max).for_each(|(v, m)| *v -= m);
            exp_in_place(values);
            sum.iter_mut().zip(values.iter()).for_each(|(s, &v)| *s += v);
        }
        for (g, group) in block.chunks_exact_mut(L).enumerate() {
            for l in 0..L {
                group[l] = by_label[l][g] / sum[g];
            }
        }
    }
}

/// Groups per block of [`softmax_transposed`].
const TRANSPOSED_GROUPS: usize = 64;

/// The softmax of every group, a block of groups at a time, in whole-block steps the compiler
/// vectorises: each group's max and sum are spread over its values, so that subtracting and
/// dividing run across groups (a scalar division per value, and a scalar `expf`, each took
/// about a tenth of the refinement's time). A block stays in the L1 cache between the steps.
#[inline(always)]
fn softmax_blocks(values: &mut [f32], labels: usize) {
    let block_len = labels * (VALUES_PER_BLOCK / labels).max(1);
    // On the stack unless a group is longer than a block: the point-by-point mean field calls
    // this for every 64 points.
    let (mut stack, mut heap) = ([0f32; VALUES_PER_BLOCK], Vec::new());
    let spread = if block_len <= VALUES_PER_BLOCK {
        &mut stack[..block_len]
    } else {
        heap.resize(block_len, 0.0);
        &mut heap[..]
    };
    for block in values.chunks_mut(block_len) {
        let spread = &mut spread[..block.len()];
        spread_over_groups(block, labels, spread, |group| group.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        block.iter_mut().zip(spread.iter()).for_each(|(v, max)| *v -= max);
        exp_in_place(block);
        spread_over_groups(block, labels, spread, |group| group.iter().sum());
        block.iter_mut().zip(spread.iter()).for_each(|(v, sum)| *v /= sum);
    }
}

/// Values per block of [`softmax_blocks`] (a group larger than this is a block alone).
const VALUES_PER_BLOCK: usize = 512;

/// `spread[i] = of(the group of value i)`.
#[inline(always)]
fn spread_over_groups(values: &[f32], labels: usize, spread: &mut [f32], of: impl Fn(&[f32]) -> f32) {
    for (group, out) in values.chunks_exact(labels).zip(spread.chunks_exact_mut(labels)) {
        out.fill(of(group));
    }
}

/// `v ← eᵛ` for every value, 8 at a time; a short tail goes through the same lanes, so that
/// each result depends on its value only, not on its place.
#[inline(always)]
fn exp_in_place(values: &mut [f32]) {
    let (lanes, tail) = values.as_chunks_mut::<8>();
    for lane in lanes {
        *lane = exp_lanes(*lane);
    }
    if !tail.is_empty() {
        let mut lane = [0f32; 8];
        lane[..tail.len()].copy_from_slice(tail);
        tail.copy_from_slice(&exp_lanes(lane)[..tail.len()]);
    }
}

/// Cephes' `expf` (range reduction by ln 2 in two parts, a degree-6 polynomial, the exponent
/// set by hand), written lane-wise so that it vectorises at any SIMD width with the same
/// IEEE operations per lane: the result is the same bits with or without AVX. Arguments below
/// about −87.3 (and NaN) give 0: the true value is then under f32's least normal number.
#[inline(always)]
fn exp_lanes(x: [f32; 8]) -> [f32; 8] {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    const POLYNOMIAL: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5];
    let mut result = [0f32; 8];
    for (y, x) in result.iter_mut().zip(x) {
        // max and min (unlike clamp) turn NaN into the bound.
        let x = x.max(-88.376_26).min(88.376_26);
        let whole = to_int(floor(x * LOG2_E + 0.5));
        let r = x - whole as f32 * LN2_HIGH - whole as f32 * LN2_LOW;
        let p = POLYNOMIAL.iter().fold(0.0, |p, &c| p * r + c);
        *y = (p * (r * r) + r + 1.0) * f32::from_bits(((whole + 127) << 23) as u32);
    }
    result
}

/// pydensecrf's `unary_from_labels(labels, n, gt_prob, zero_unsure=False)`: energy `−ln p` on
/// each pixel's label and `−ln((1−p)/(n−1))` on the others; pixels × n, row-major.
/// With a single label every energy is 0 (nothing to decide).
pub fn unary_from_labels(label_map: &[u8], labels: usize, gt_prob: f32) -> Vec<f32> {
    unary_from_label_maps(&[label_map], labels, gt_prob)
}

/// [`unary_from_labels`] of several label maps of one image, as the groups of one
/// [`DenseCrf::inference`]: pixels × (maps × `labels`), row-major.
pub fn unary_from_label_maps(maps: &[&[u8]], labels: usize, gt_prob: f32) -> Vec<f32> {
    let pixels = maps.first().map_or(0, |map| map.len());
    assert!(maps.iter().all(|map| map.len() == pixels), "the label maps must have one label per pixel each");
    if labels == 1 {
        return vec![0.0; pixels * maps.len()];
    }
    let on = -(gt_prob as f64).ln() as f32;
    let off = -((1.0 - gt_prob as f64) / (labels - 1) as f64).ln() as f32;
    let mut unary = vec![off; pixels * maps.len() * labels];
    for (group, map) in maps.iter().enumerate() {
        for (energies, &label) in unary.chunks_exact_mut(maps.len() * labels).zip(*map) {
            energies[group * labels..(group + 1) * labels][label as usize] = on;
        }
    }
    unary
}

/// Per pixel, the index of the largest of each group of `labels` values (first on ties).
pub fn argmax_groups(q: &[f32], labels: usize) -> Vec<u8> {
    q.chunks_exact(labels)
        .map(|g| g.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0 as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact O(N²) mean field with the same normalisation, straight from the formulas.
    fn exact_inference(rgb: &[u8], width: usize, height: usize, params: &CrfParams, unary: &[f32], labels: usize) -> Vec<f32> {
        let n = width * height;
        let pos = |i: usize| ((i % width) as f32, (i / width) as f32);
        let kernel = |i: usize, j: usize, appearance: bool| -> f32 {
            let ((xi, yi), (xj, yj)) = (pos(i), pos(j));
            let d2 = (xi - xj).powi(2) + (yi - yj).powi(2);
            if appearance {
                let c2: f32 = (0..3).map(|c| (rgb[i * 3 + c] as f32 - rgb[j * 3 + c] as f32).powi(2)).sum();
                (-d2 / (2.0 * params.appearance_sxy.powi(2)) - c2 / (2.0 * params.appearance_srgb.powi(2))).exp()
            } else {
                (-d2 / (2.0 * params.smoothness_sxy.powi(2))).exp()
            }
        };
        let mut q: Vec<f32> = unary.iter().map(|u| -u).collect();
        softmax_groups(&mut q, labels);
        for _ in 0..params.iterations {
            let mut next: Vec<f32> = unary.iter().map(|u| -u).collect();
            for (appearance, weight) in [(false, params.smoothness_weight), (true, params.appearance_weight)] {
                let degree: Vec<f32> = (0..n).map(|i| (0..n).map(|j| kernel(i, j, appearance)).sum()).collect();
                for i in 0..n {
                    for l in 0..labels {
                        let m: f32 = (0..n).map(|j| kernel(i, j, appearance) * q[j * labels + l] / degree[j].sqrt()).sum();
                        next[i * labels + l] += weight * m / degree[i].sqrt();
                    }
                }
            }
            softmax_groups(&mut next, labels);
            q = next;
        }
        q
    }

    /// A 24×16 image: a red disc on a blue-green gradient, with a noisy label map.
    fn scene() -> (Vec<u8>, usize, usize, Vec<u8>) {
        let (w, h) = (24, 16);
        let mut rgb = Vec::new();
        let mut labels = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let inside = (x as f32 - 9.0).powi(2) + (y as f32 - 8.0).powi(2) < 30.0;
                rgb.extend(if inside { [200, 30, 40] } else { [20, (100 + 4 * x) as u8, (150 - 3 * y) as u8] });
                // The seed label is a shifted, blocky version of the disc plus speckle.
                let seed = (x as f32 - 11.0).powi(2) + (y as f32 - 8.0).powi(2) < 36.0;
                labels.push(if (x * 7 + y * 13) % 23 == 0 { 1 - seed as u8 } else { seed as u8 });
            }
        }
        (rgb, w, h, labels)
    }

    #[test]
    fn exponentials_are_within_two_ulps_of_the_exact_value() {
        // −87.3 is about the least argument whose e^x is a normal f32; below −103.9 it is 0.
        let mut values: Vec<f32> = (0..=20_000).map(|i| -87.3 + i as f32 * (87.3 + 20.0) / 20_000.0).collect();
        values.extend([0.0, -0.0, 1.0, -110.0, -1e4, f32::NEG_INFINITY]);
        let mut nan = [f32::NAN];
        exp_in_place(&mut nan);
        assert_eq!(nan, [0.0]);
        let mut result = values.clone();
        exp_in_place(&mut result);
        for (&x, &y) in values.iter().zip(&result) {
            let exact = (x as f64).exp();
            let ulp = (exact as f32).abs().max(f32::MIN_POSITIVE) as f64 * f32::EPSILON as f64;
            assert!((y as f64 - exact).abs() <= 2.0 * ulp, "e^{x}: {y} vs {exact}");
        }
        // The tail of a slice (here 3 of 11 values) goes through the same lanes as the rest.
        let mut short = values[..11].to_vec();
        exp_in_place(&mut short);
        let mut alone = values[8..11].to_vec();
        exp_in_place(&mut alone);
        assert_eq!(short[8..], alone[..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn softmax_gives_the_same_bits_with_avx2() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for labels in [2, 3, 7] {
            let values: Vec<f32> = (0..labels * 301).map(|i| ((i * 7919) % 211) as f32 * 0.37 - 40.0).collect();
            let (mut baseline, mut avx2) = (values.clone(), values);
            softmax_labels(&mut baseline, labels);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { softmax_groups_avx2(&mut avx2, labels) };
            assert!(baseline.iter().zip(&avx2).all(|(a, b)| a.to_bits() == b.to_bits()), "{labels} labels");
        }
    }

    #[test]
    fn transposed_softmax_gives_the_bits_of_the_spread_one() {
        // 301 groups: 4 blocks of 64 and a tail of 45; values far apart and tied.
        for labels in [2, 3, 4, 5, 6] {
            let values: Vec<f32> = (0..labels * 301).map(|i| ((i * 7919) % 211) as f32 * 0.37 - 40.0 + ((i % 5 == 0) as u8 as f32) * 60.0).collect();
            let (mut spread, mut transposed) = (values.clone(), values);
            softmax_blocks(&mut spread, labels);
            softmax_labels(&mut transposed, labels);
            assert!(spread.iter().zip(&transposed).all(|(a, b)| a.to_bits() == b.to_bits()), "{labels} labels");
        }
    }

    #[test]
    fn softmax_of_hand_computed_groups() {
        // [0, ln 3] → [¼, ¾]; [5, 5, 5] → ⅓ each; [0, −1000] → [1, 0]; one label → 1.
        let mut two = vec![0.0, 3f32.ln(), 0.0, -1000.0];
        softmax_groups(&mut two, 2);
        let mut three = vec![5.0f32; 3];
        softmax_groups(&mut three, 3);
        let mut one = vec![-7.0f32, 40.0];
        softmax_groups(&mut one, 1);
        for (got, want) in [(two, vec![0.25, 0.75, 1.0, 0.0]), (three, vec![1.0 / 3.0; 3]), (one, vec![1.0, 1.0])] {
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-6), "{got:?} vs {want:?}");
        }
        // Nine labels (no unrolled instance): every group sums to 1 and keeps its order.
        let mut nine: Vec<f32> = (0..27).map(|i| (i % 9) as f32 * 0.5 - (i / 9) as f32).collect();
        softmax_groups(&mut nine, 9);
        for group in nine.chunks(9) {
            assert!((group.iter().sum::<f32>() - 1.0).abs() < 1e-6 && group.windows(2).all(|p| p[0] < p[1]), "{group:?}");
        }
    }

    #[test]
    fn smoothness_kernels_are_kept_per_size_and_equal_a_fresh_build() {
        // θ_γ = 2.5: no other test builds this key.
        let params = CrfParams { smoothness_sxy: 2.5, ..CrfParams::default() };
        let first = smoothness_kernel(13, 7, &params);
        assert!(Arc::ptr_eq(&first, &smoothness_kernel(13, 7, &params)), "the second call is served from the cache");
        let features: Vec<f32> = (0..7 * 13).flat_map(|p| [(p % 13) as f32 / 2.5, (p / 13) as f32 / 2.5]).collect();
        assert_eq!(*first, Kernel::new(&features, 2, params.smoothness_weight));
        let other = smoothness_kernel(13, 7, &CrfParams { smoothness_weight: 1.0, ..params });
        assert!(!Arc::ptr_eq(&first, &other) && other.weight == 1.0, "the weight is part of the key");
        for width in 1..=SMOOTHNESS_SIZES {
            smoothness_kernel(100 + width, 3, &params);
        }
        assert!(!Arc::ptr_eq(&first, &smoothness_kernel(13, 7, &params)), "the least recently used size is dropped");
    }

    #[test]
    fn unary_from_labels_matches_pydensecrf() {
        // n = 3, gt_prob 0.7: −ln 0.7 = 0.356675, −ln 0.15 = 1.89712.
        let u = unary_from_labels(&[2, 0], 3, 0.7);
        let expected = [1.89712, 1.89712, 0.356675, 0.356675, 1.89712, 1.89712];
        for (a, b) in u.iter().zip(expected) {
            assert!((a - b).abs() < 1e-5, "{u:?}");
        }
        assert_eq!(unary_from_labels(&[0, 0], 1, 0.7), vec![0.0, 0.0]);
    }

    #[test]
    fn unary_of_several_label_maps_interleaves_each_maps_unary_per_pixel() {
        let (first, second) = ([2u8, 0, 1, 1], [0u8, 0, 2, 1]);
        let (a, b) = (unary_from_labels(&first, 3, 0.7), unary_from_labels(&second, 3, 0.7));
        let interleaved: Vec<f32> = a.chunks(3).zip(b.chunks(3)).flat_map(|(a, b)| a.iter().chain(b).copied()).collect();
        assert_eq!(unary_from_label_maps(&[&first, &second], 3, 0.7), interleaved);
        assert_eq!(unary_from_label_maps(&[&first, &second], 1, 0.7), vec![0.0; 8]);
    }

    #[test]
    fn lattice_inference_agrees_with_the_exact_mean_field() {
        let (rgb, w, h, labels) = scene();
        let params = CrfParams { appearance_sxy: 8.0, ..CrfParams::default() };
        let unary = unary_from_labels(&labels, 2, 0.7);
        let approx = DenseCrf::new(&rgb, w, h, &params).inference(&unary, 2, 1);
        let exact = exact_inference(&rgb, w, h, &params, &unary, 2);
        let (a, e) = (argmax_groups(&approx, 2), argmax_groups(&exact, 2));
        let agree = a.iter().zip(&e).filter(|(x, y)| x == y).count() as f32 / a.len() as f32;
        assert!(agree >= 0.97, "label agreement {agree}");
        let max_diff = approx.iter().zip(&exact).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_diff < 0.2, "max |ΔQ| = {max_diff}");
        // The CRF snaps the labels to the disc: more agreement with the true object than the seeds.
        let truth: Vec<u8> = (0..w * h).map(|i| (rgb[i * 3] == 200) as u8).collect();
        let score = |m: &[u8]| m.iter().zip(&truth).filter(|(x, y)| x == y).count();
        assert!(score(&a) > score(&labels), "crf {} vs seeds {}", score(&a), score(&labels));
    }

    #[test]
    fn logistic_gives_the_same_bits_with_avx2_and_the_softmax_of_a_pair() {
        let values: Vec<f32> = (0..301).map(|i| ((i * 7919) % 211) as f32 * 0.37 - 40.0).collect();
        let mut baseline = values.clone();
        logistic_lanes(&mut baseline);
        // softmax([a, b])'s first value with b − a = v.
        for (v, q) in values.iter().zip(&baseline) {
            let mut pair = [0.0, *v];
            softmax_labels(&mut pair, 2);
            assert!((q - pair[0]).abs() <= 1e-6, "logistic({v}) = {q}, softmax {pair:?}");
        }
        if std::is_x86_feature_detected!("avx2") {
            let mut avx2 = values;
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { logistic_of_negated_avx2(&mut avx2) };
            assert!(baseline.iter().zip(&avx2).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    /// The mean field as densecrf runs it, every label filtered: `Q ← softmax(−U + Σ_k messages)`.
    fn every_label_filtered(crf: &DenseCrf, unary: &[f32], labels: usize) -> Vec<f32> {
        let negated: Vec<f32> = unary.iter().map(|u| -u).collect();
        let mut q = negated.clone();
        softmax_labels(&mut q, labels);
        let mut scratch = FilterScratch::default();
        for _ in 0..crf.iterations {
            let mut acc = negated.clone();
            for kernel in &crf.kernels {
                kernel.add_message(&q, labels, &mut scratch, &mut acc);
            }
            q = acc;
            softmax_labels(&mut q, labels);
        }
        q
    }

    #[test]
    fn the_last_labels_message_from_the_unit_message_equals_filtering_every_label() {
        let (rgb, w, h, seeds) = scene();
        // One iteration: only rounding apart; ten: the mean field (weights 3 and 10) amplifies
        // that rounding, but not to a different label.
        for (iterations, tolerance) in [(1, 2e-6), (10, 1e-4)] {
            let crf = DenseCrf::new(&rgb, w, h, &CrfParams { iterations, ..CrfParams::default() });
            for labels in [2, 3, 5] {
                let label_map: Vec<u8> = seeds.iter().enumerate().map(|(p, &s)| ((s as usize + p / 40) % labels) as u8).collect();
                let unary = unary_from_labels(&label_map, labels, 0.7);
                let (ours, direct) = (crf.inference(&unary, labels, 1), every_label_filtered(&crf, &unary, labels));
                let largest = ours.iter().zip(&direct).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(largest < tolerance, "{labels} labels, {iterations} iteration(s): max |ΔQ| = {largest}");
                assert_eq!(argmax_groups(&ours, labels), argmax_groups(&direct, labels), "{labels} labels");
                assert!(ours.chunks(labels).all(|g| (g.iter().sum::<f32>() - 1.0).abs() < 1e-5));
            }
            assert_eq!(crf.inference(&[0.5; 24 * 16], 1, 1), vec![1.0; 24 * 16], "one label: Q = 1");
        }
    }

    #[test]
    fn point_by_point_gives_the_bits_of_kernel_by_kernel() {
        let (rgb, w, h, seeds) = scene();
        // 15 rows: 360 points, 5 blocks of 64 and a tail of 40.
        let h = h - 1;
        let crf = DenseCrf::new(&rgb[..w * h * 3], w, h, &CrfParams::default());
        // Channels filtered: (labels − 1) × groups, from 1 (one lane) to 9 (kernel by kernel
        // both ways).
        for (labels, groups) in [(2, 1), (2, 2), (2, 3), (3, 1), (3, 2), (4, 2), (4, 3)] {
            let unary: Vec<f32> = (0..groups)
                .map(|g| {
                    unary_from_labels(
                        &seeds.iter().enumerate().map(|(p, &s)| ((s as usize + g + p / 60) % labels) as u8).take(w * h).collect::<Vec<_>>(),
                        labels,
                        0.6 + 0.1 * g as f32,
                    )
                })
                .fold(vec![Vec::new(); w * h], |mut pixels, problem| {
                    pixels.iter_mut().zip(problem.chunks(labels)).for_each(|(pixel, energies)| pixel.extend(energies));
                    pixels
                })
                .concat();
            let fused = crf.inference_by(&unary, labels, groups, MAX_POINT_LANES);
            let by_kernel = crf.inference_by(&unary, labels, groups, 0);
            assert!(fused.iter().zip(&by_kernel).all(|(a, b)| a.to_bits() == b.to_bits()), "{labels} labels, {groups} group(s)");
            assert!(fused.iter().any(|q| *q > 0.9) && fused.iter().any(|q| *q < 0.1), "the mean field decided something");
        }
    }

    #[test]
    fn groups_are_independent_problems() {
        let (rgb, w, h, labels) = scene();
        let crf = DenseCrf::new(&rgb, w, h, &CrfParams::default());
        let first = unary_from_labels(&labels, 2, 0.7);
        let flipped: Vec<u8> = labels.iter().map(|l| 1 - l).collect();
        let second = unary_from_labels(&flipped, 2, 0.6);
        let both: Vec<f32> = first.chunks(2).zip(second.chunks(2)).flat_map(|(a, b)| a.iter().chain(b).copied()).collect();
        let together = crf.inference(&both, 2, 2);
        let alone = [crf.inference(&first, 2, 1), crf.inference(&second, 2, 1)];
        for (p, q) in together.chunks(4).enumerate() {
            assert_eq!(&q[..2], &alone[0][p * 2..p * 2 + 2]);
            assert_eq!(&q[2..], &alone[1][p * 2..p * 2 + 2]);
        }
    }
}
