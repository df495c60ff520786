//! The permutohedral lattice (Adams, Baek & Davis 2010): Gaussian filtering of values attached
//! to points of a d-dimensional feature space in time linear in the number of points. Each
//! point is splatted onto the d+1 vertices of its enclosing simplex with barycentric weights,
//! the lattice is blurred with a [½ 1 ½] kernel along each of its d+1 axes, and the result is
//! sliced back with the same weights.
//!
//! The arithmetic follows Krähenbühl's densecrf `Permutohedral` (the code pydensecrf wraps)
//! step for step in f32, including its scale factors and the slicing constant 1/(1+2^-d), so
//! that a dense CRF built on it gives that implementation's label maps.

use crate::rounding::{ceil, floor, to_int};

/// Lattice vertex index of "no neighbour": slot 0 of the value buffers, kept at zero.
const NONE: u32 = 0;

/// A lattice built for one set of points; [`Lattice::filter`] applies it to any values.
#[derive(Debug, Clone, PartialEq)]
pub struct Lattice {
    dim: usize,
    points: usize,
    vertices: usize,
    /// Per point, its d+1 vertices (1-based: 0 is [`NONE`]).
    offsets: Vec<u32>,
    /// Per point, the barycentric weights of those vertices.
    weights: Vec<f32>,
    /// Per axis j and vertex v (1-based), the vertex's two neighbours along j.
    neighbours: Vec<[u32; 2]>,
}

impl Lattice {
    /// Builds the lattice of `features`: `points` rows of `dim` values (row-major), already
    /// divided by the kernel's standard deviations. `dim` must be 1 to 8 and the features finite and
    /// under 10⁷ in magnitude.
    pub fn new(features: &[f32], dim: usize) -> Lattice {
        assert!(dim >= 1 && features.len().is_multiple_of(dim), "features must be points × dim");
        // A fold, not `all`: without the early exit the check vectorises.
        assert!(features.iter().fold(true, |finite, f| finite & f.is_finite()), "lattice features must be finite");
        // One instance per dimension, so that every per-point loop has a fixed length.
        match dim {
            1 => build::<1, 2>(features),
            2 => build::<2, 3>(features),
            3 => build::<3, 4>(features),
            4 => build::<4, 5>(features),
            5 => build::<5, 6>(features),
            6 => build::<6, 7>(features),
            7 => build::<7, 8>(features),
            8 => build::<8, 9>(features),
            _ => panic!("a lattice takes 1 to 8 feature dimensions, not {dim}"),
        }
    }

    /// Number of points the lattice was built for.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Number of lattice vertices (at most points × (dim + 1)).
    pub fn vertices(&self) -> usize {
        self.vertices
    }

    /// Filters `input` (points × `channels`, row-major) into `out` (same shape):
    /// `out_i ≈ Σ_j exp(−½‖f_i − f_j‖²) · input_j`, up to densecrf's constant factor.
    pub fn filter(&self, input: &[f32], channels: usize, out: &mut [f32]) {
        self.filter_blocks(input, channels, None, out, &mut FilterScratch::default());
    }

    /// A normalised message of the mean field, with caller-owned buffers:
    /// `acc_i += weight · s_i · Σ_j k(f_i, f_j) · s_j · input_j` (s = `scale`, one per point),
    /// in the same floating-point steps as scaling, filtering and accumulating one by one.
    pub fn add_filtered(&self, input: &[f32], channels: usize, scale: &[f32], weight: f32, acc: &mut [f32], scratch: &mut FilterScratch) {
        assert_eq!(scale.len(), self.points, "one scale per point");
        self.filter_blocks(input, channels, Some((scale, weight)), acc, scratch);
    }

    /// [`Lattice::filter`] or, with `scaling`, [`Lattice::add_filtered`].
    fn filter_blocks(&self, input: &[f32], channels: usize, scaling: Option<(&[f32], f32)>, out: &mut [f32], scratch: &mut FilterScratch) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2.
            return unsafe { self.filter_blocks_avx2(input, channels, scaling, out, scratch) };
        }
        self.filter_lanes(input, channels, scaling, out, scratch)
    }

    /// [`Lattice::filter_lanes`] compiled for AVX2: the same IEEE operations per channel.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn filter_blocks_avx2(&self, input: &[f32], channels: usize, scaling: Option<(&[f32], f32)>, out: &mut [f32], scratch: &mut FilterScratch) {
        self.filter_lanes(input, channels, scaling, out, scratch)
    }

    #[inline(always)]
    fn filter_lanes(&self, input: &[f32], channels: usize, scaling: Option<(&[f32], f32)>, out: &mut [f32], scratch: &mut FilterScratch) {
        assert!(channels >= 1 && input.len() == self.points * channels, "input must be points × channels");
        assert_eq!(out.len(), input.len(), "out must be points × channels");
        // Values travel in blocks of up to BLOCK channels, as 1..=8 lanes of 2: every inner loop
        // then has a fixed width the compiler vectorises, and the arithmetic per channel is
        // unchanged (padding lanes are zero). Lanes of 2 keep a vertex of 2 channels (the
        // usual mean field: docs/methods.md §4) at 8 bytes.
        let mut first = 0;
        while first < channels {
            let block = (channels - first).min(BLOCK);
            let channels = Channels { all: channels, first, block };
            match block.div_ceil(LANE) {
                1 => self.filter_block::<1>(input, channels, scaling, out, scratch),
                2 => self.filter_block::<2>(input, channels, scaling, out, scratch),
                3 => self.filter_block::<3>(input, channels, scaling, out, scratch),
                4 => self.filter_block::<4>(input, channels, scaling, out, scratch),
                5 => self.filter_block::<5>(input, channels, scaling, out, scratch),
                6 => self.filter_block::<6>(input, channels, scaling, out, scratch),
                7 => self.filter_block::<7>(input, channels, scaling, out, scratch),
                _ => self.filter_block::<8>(input, channels, scaling, out, scratch),
            }
            first += block;
        }
    }

    /// Filters channels `first..first + block` of `input` into the same channels of `out`,
    /// in `W` lanes.
    #[inline(always)]
    fn filter_block<const W: usize>(&self, input: &[f32], channels: Channels, scaling: Option<(&[f32], f32)>, out: &mut [f32], scratch: &mut FilterScratch) {
        let Channels { all: channels, first, block } = channels;
        let slots = self.vertices + 1;
        let values = scratch.values.lanes::<W>(slots);
        for (p, (value, incidence)) in input.chunks_exact(channels).zip(self.incidence(0, self.points)).enumerate() {
            let mut point = [[0f32; LANE]; W];
            let s = scaling.map_or(1.0, |(scale, _)| scale[p]);
            for (c, &x) in value[first..first + block].iter().enumerate() {
                point[c / LANE][c % LANE] = x * s;
            }
            splat_point(incidence, &point, values);
        }
        let blurred = scratch.blurred.lanes::<W>(slots);
        let filtered: &[[[f32; LANE]; W]] = if self.blur(values, blurred) { values } else { blurred };
        for (p, (result, incidence)) in out.chunks_exact_mut(channels).zip(self.incidence(0, self.points)).enumerate() {
            let point = self.slice_point(incidence, filtered);
            let result = result[first..first + block].iter_mut().enumerate();
            match scaling {
                // densecrf: tmp −= Potts(−w · x), i.e. tmp += w · x.
                Some((scale, weight)) => result.for_each(|(c, y)| *y += weight * (point[c / LANE][c % LANE] * scale[p])),
                None => result.for_each(|(c, y)| *y = point[c / LANE][c % LANE]),
            }
        }
    }

    /// Points `first..end`'s vertex numbers and barycentric weights.
    #[inline(always)]
    pub fn incidence(&self, first: usize, end: usize) -> impl Iterator<Item = (&[u32], &[f32])> {
        let n = self.dim + 1;
        self.offsets[first * n..end * n].chunks_exact(n).zip(self.weights[first * n..end * n].chunks_exact(n))
    }

    /// Blurs `values` along each lattice axis, `spare` taking every other pass; true when the
    /// result ends in `values` (an even number of axes), false when in `spare`.
    #[inline(always)]
    fn blur<const W: usize>(&self, values: &mut [[[f32; LANE]; W]], spare: &mut [[[f32; LANE]; W]]) -> bool {
        let slots = self.vertices + 1;
        #[cfg(target_arch = "x86_64")]
        let gathered = W == 1 && std::is_x86_feature_detected!("avx2");
        let (mut from, mut to) = (values, spare);
        for j in 0..=self.dim {
            let axis = &self.neighbours[j * slots..(j + 1) * slots];
            // The first vertex left to the loop below: past those gathered four at a time.
            #[cfg(target_arch = "x86_64")]
            let first = if gathered {
                // SAFETY: this CPU has AVX2; `axis` is this lattice's (`link`: every neighbour
                // is one of its slots), and `from` and `to` have its slots.
                unsafe { blur_axis_gathered(axis, from.as_flattened().as_flattened(), to.as_flattened_mut().as_flattened_mut()) }
            } else {
                1
            };
            #[cfg(not(target_arch = "x86_64"))]
            let first = 1;
            for v in first..slots {
                let [a, b] = axis[v];
                let (old, na, nb) = (from[v], from[a as usize], from[b as usize]);
                for l in 0..W {
                    for k in 0..LANE {
                        to[v][l][k] = old[l][k] + 0.5 * (na[l][k] + nb[l][k]);
                    }
                }
            }
            std::mem::swap(&mut from, &mut to);
        }
        (self.dim + 1).is_multiple_of(2)
    }

    /// A point's filtered values from the blurred lattice (densecrf's slice, with its
    /// constant 1/(1+2^-d)).
    #[inline(always)]
    fn slice_point<const W: usize>(&self, (offsets, weights): (&[u32], &[f32]), blurred: &[[[f32; LANE]; W]]) -> [[f32; LANE]; W] {
        let alpha = 1.0f32 / (1.0 + 2f32.powi(-(self.dim as i32)));
        let mut point = [[0f32; LANE]; W];
        for (&o, &w) in offsets.iter().zip(weights) {
            let x = &blurred[o as usize];
            for l in 0..W {
                for k in 0..LANE {
                    point[l][k] += w * x[l][k] * alpha;
                }
            }
        }
        point
    }
}

/// One axis of [`Lattice::blur`] for vertices of one lane (two channels, 8 bytes), four
/// vertices at a time with their neighbours gathered: the same operations per channel.
/// `from` and `to` hold LANE values per slot; returns the first vertex left to the caller.
///
/// # Safety
/// The CPU has AVX2, and every neighbour in `axis` is one of its slots (below `axis.len()`), as
/// in every lattice `link` builds: the gathers read `from` there unchecked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blur_axis_gathered(axis: &[[u32; 2]], from: &[f32], to: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let slots = axis.len();
    assert!(from.len() == slots * LANE && to.len() == slots * LANE, "one lane of values per slot");
    debug_assert!(axis.iter().flatten().all(|&n| (n as usize) < slots));
    let half = _mm256_set1_ps(0.5);
    // [a0 b0 a1 b1 a2 b2 a3 b3] → [a0 a1 a2 a3 | b0 b1 b2 b3].
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut v = 1;
    while v + 4 <= slots {
        // SAFETY: slots v..v+4 are in `axis`, `from` and `to`; the gathered slots are in `from`.
        unsafe {
            let pairs = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(axis.as_ptr().add(v).cast()), split);
            let base = from.as_ptr().cast::<i64>();
            let na = _mm256_castsi256_ps(_mm256_i32gather_epi64::<8>(base, _mm256_castsi256_si128(pairs)));
            let nb = _mm256_castsi256_ps(_mm256_i32gather_epi64::<8>(base, _mm256_extracti128_si256::<1>(pairs)));
            let old = _mm256_loadu_ps(from.as_ptr().add(v * LANE));
            _mm256_storeu_ps(to.as_mut_ptr().add(v * LANE), _mm256_add_ps(old, _mm256_mul_ps(half, _mm256_add_ps(na, nb))));
        }
        v += 4;
    }
    v
}

/// Adds a point's values (`W` lanes) to its vertices, with its barycentric weights.
#[inline(always)]
fn splat_point<const W: usize>((offsets, weights): (&[u32], &[f32]), point: &[[f32; LANE]; W], values: &mut [[[f32; LANE]; W]]) {
    for (&o, &w) in offsets.iter().zip(weights) {
        let acc = &mut values[o as usize];
        for l in 0..W {
            for k in 0..LANE {
                acc[l][k] += w * point[l][k];
            }
        }
    }
}

/// The values of one lattice across the iterations of a mean field that slices and splats in
/// one pass over the points: the blurred values it slices from, and the zeroed buffer the next
/// splat goes into (W lanes of [`LANE`] channels per vertex).
pub struct PointPasses<const W: usize> {
    blurred: Vec<[[f32; LANE]; W]>,
    next: Vec<[[f32; LANE]; W]>,
}

impl Lattice {
    /// Zeroed buffers for a mean field of `W` lanes per vertex on this lattice.
    pub fn point_passes<const W: usize>(&self) -> PointPasses<W> {
        PointPasses { blurred: vec![[[0.0; LANE]; W]; self.vertices + 1], next: vec![[[0.0; LANE]; W]; self.vertices + 1] }
    }

    /// Adds a point's values (its [`Lattice::incidence`]) to the next splat.
    #[inline(always)]
    pub fn splat_into<const W: usize>(&self, incidence: (&[u32], &[f32]), point: &[[f32; LANE]; W], passes: &mut PointPasses<W>) {
        splat_point(incidence, point, &mut passes.next);
    }

    /// Blurs the splatted values into the ones [`Lattice::slice_from`] reads, and zeroes the
    /// splat's buffer for the next pass.
    #[inline(always)]
    pub fn blur_next<const W: usize>(&self, passes: &mut PointPasses<W>) {
        if self.blur(&mut passes.next, &mut passes.blurred) {
            std::mem::swap(&mut passes.next, &mut passes.blurred);
        }
        passes.next.fill([[0.0; LANE]; W]);
    }

    /// A point's filtered values (its [`Lattice::incidence`]), as [`Lattice::filter`] gives them.
    #[inline(always)]
    pub fn slice_from<const W: usize>(&self, incidence: (&[u32], &[f32]), passes: &PointPasses<W>) -> [[f32; LANE]; W] {
        self.slice_point(incidence, &passes.blurred)
    }
}

/// Which channels one traversal of the lattice filters.
#[derive(Debug, Clone, Copy)]
struct Channels {
    all: usize,
    first: usize,
    block: usize,
}

/// Width of a value lane of [`Lattice::filter_blocks`].
pub const LANE: usize = 2;
/// Channels filtered in one traversal: at most 8 lanes.
const BLOCK: usize = 8 * LANE;

/// Buffers of [`Lattice::add_filtered`], kept between calls.
#[derive(Debug, Default)]
pub struct FilterScratch {
    values: LaneBuffer,
    blurred: LaneBuffer,
}

/// A buffer reused as `[[f32; LANE]; W]` entries of any width W ≤ BLOCK / LANE.
#[derive(Debug, Default)]
struct LaneBuffer(Vec<[f32; BLOCK]>);

impl LaneBuffer {
    /// `slots` zeroed entries of W lanes.
    #[inline(always)]
    fn lanes<const W: usize>(&mut self, slots: usize) -> &mut [[[f32; LANE]; W]] {
        const { assert!(W >= 1 && W * LANE <= BLOCK) };
        let floats = slots * W * LANE;
        self.0.clear();
        self.0.resize(floats.div_ceil(BLOCK), [0.0; BLOCK]);
        let flat: &mut [f32] = &mut self.0.as_flattened_mut()[..floats];
        let (entries, rest) = flat.as_chunks_mut::<LANE>();
        debug_assert!(rest.is_empty());
        entries.as_chunks_mut::<W>().0
    }
}

/// The factors densecrf scales feature i by before elevating it: E's diagonal times the
/// expected standard deviation of the filter (p. 6 of the paper).
fn elevation_scale<const D: usize>() -> [f32; D] {
    let inv_std_dev = (2.0f32 / 3.0).sqrt() * (D as f32 + 1.0);
    std::array::from_fn(|i| (1.0 / (((i + 2) * (i + 1)) as f64).sqrt()) as f32 * inv_std_dev)
}

/// LANES points (`[feature][lane]`) elevated onto the lattice's hyperplane, y = E·f
/// (`[coordinate][lane]`), in densecrf's order of operations on each lane.
#[inline(always)]
fn elevate_lanes<const D: usize, const D1: usize>(features: &[[f32; LANES]; D], scale: &[f32; D]) -> [[f32; LANES]; D1] {
    let mut elevated = [[0f32; LANES]; D1];
    let mut sum_scaled = [0f32; LANES];
    for j in (1..=D).rev() {
        for l in 0..LANES {
            let cf = features[j - 1][l] * scale[j - 1];
            elevated[j][l] = sum_scaled[l] - j as f32 * cf;
            sum_scaled[l] += cf;
        }
    }
    elevated[0] = sum_scaled;
    elevated
}

/// The least and the greatest value of each of the D feature dimensions (the features are
/// finite).
fn feature_ranges<const D: usize>(features: &[f32]) -> ([f32; D], [f32; D]) {
    // Over LANES points at a time as D vectors of LANES values, so that the comparisons
    // vectorise: value l of vector k is feature (LANES·k + l) mod D of a point.
    let (mut lo, mut hi) = ([[f32::INFINITY; LANES]; D], [[f32::NEG_INFINITY; LANES]; D]);
    let chunks = features.chunks_exact(D * LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (k, values) in chunk.chunks_exact(LANES).enumerate() {
            for (l, &x) in values.iter().enumerate() {
                lo[k][l] = if x < lo[k][l] { x } else { lo[k][l] };
                hi[k][l] = if x > hi[k][l] { x } else { hi[k][l] };
            }
        }
    }
    let mut ranges = ([f32::INFINITY; D], [f32::NEG_INFINITY; D]);
    let lanes = (0..D * LANES).map(|i| (lo[i / LANES][i % LANES], hi[i / LANES][i % LANES]));
    for (i, (low, high)) in lanes.chain(tail.iter().map(|&x| (x, x))).enumerate() {
        ranges.0[i % D] = ranges.0[i % D].min(low);
        ranges.1[i % D] = ranges.1[i % D].max(high);
    }
    ranges
}

/// Bounds on every elevated coordinate of points whose features lie in `[lo, hi]` (per
/// dimension), in f64: [`elevate_lanes`]'s sums with each term at its least or greatest value.
fn elevated_bounds<const D: usize, const D1: usize>(lo: &[f32; D], hi: &[f32; D], scale: &[f32; D]) -> ([f64; D1], [f64; D1]) {
    let (mut low, mut high) = ([0f64; D1], [0f64; D1]);
    let (mut sum_low, mut sum_high) = (0f64, 0f64);
    for j in (1..=D).rev() {
        let (cf_low, cf_high) = (lo[j - 1] as f64 * scale[j - 1] as f64, hi[j - 1] as f64 * scale[j - 1] as f64);
        low[j] = sum_low - j as f64 * cf_high;
        high[j] = sum_high - j as f64 * cf_low;
        sum_low += cf_low;
        sum_high += cf_high;
    }
    (low[0], high[0]) = (sum_low, sum_high);
    (low, high)
}

/// The largest magnitude of an elevated coordinate the lattice takes, so that the rounding and
/// the conversions of its coordinates are exact (checked by [`Packing::of`]).
const MAX_ELEVATED: f32 = (1u32 << 30) as f32;

fn build<const D: usize, const D1: usize>(features: &[f32]) -> Lattice {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2.
        return unsafe { build_avx2::<D, D1>(features) };
    }
    build_lanes::<D, D1>(features)
}

/// [`build_lanes`] compiled for AVX2: the same IEEE operations per point.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn build_avx2<const D: usize, const D1: usize>(features: &[f32]) -> Lattice {
    build_lanes::<D, D1>(features)
}

#[inline(always)]
fn build_lanes<const D: usize, const D1: usize>(features: &[f32]) -> Lattice {
    const { assert!(D1 == D + 1) };
    let scale = elevation_scale::<D>();
    let packing = Packing::<D>::of::<D1>(features, &scale);
    if packing.bits * D as u32 <= u64::BITS {
        link::<D, D1, u64>(features, &scale, &packing)
    } else {
        assert!(packing.bits * D as u32 <= u128::BITS, "lattice coordinates span 2^{} values: features too spread to pack", packing.bits);
        link::<D, D1, u128>(features, &scale, &packing)
    }
}

/// Splats every point onto its simplex (vertex numbers and barycentric weights), then links
/// each vertex to its two neighbours along each axis.
#[inline(always)]
fn link<const D: usize, const D1: usize, K: PackedKey>(features: &[f32], scale: &[f32; D], packing: &Packing<D>) -> Lattice {
    let points = features.len() / D;
    // Points of an image share vertices (a 500×375 photo: 64k for 1.1M incidences): start
    // small, so that the table stays in cache, and let it grow.
    let mut keys = KeyTable::<K>::new(points / 16 + 64);
    let mut offsets = vec![NONE; points * D1];
    let mut weights = vec![0f32; points * D1];
    // Moving a packed key along a lattice axis: every coordinate +1 (`ones`), and coordinate
    // i −(d+1) (`steps[i]`; the last coordinate is implied, so its step is 0).
    let ones = K::from_wide((0..D).map(|i| 1u128 << (packing.bits * i as u32)).sum());
    let steps: [K; D1] = std::array::from_fn(|i| K::from_wide(if i < D { (D as u128 + 1) << (packing.bits * i as u32) } else { 0 }));
    let incidence = offsets.chunks_mut(D1 * LANES).zip(weights.chunks_mut(D1 * LANES));
    for (chunk, (offsets, weights)) in features.chunks(D * LANES).zip(incidence) {
        let (vertex_keys, barycentric) = Simplices::<D, D1>::of(chunk, scale).vertices(packing, ones, &steps);
        for (lane, (offsets, weights)) in offsets.chunks_exact_mut(D1).zip(weights.chunks_exact_mut(D1)).enumerate() {
            for remainder in 0..D1 {
                offsets[remainder] = keys.insert(vertex_keys[remainder][lane]);
                weights[remainder] = barycentric[remainder][lane];
            }
        }
    }

    let vertices = keys.len();
    let mut neighbours = vec![[NONE; 2]; D1 * (vertices + 1)];
    for (j, &step) in steps.iter().enumerate() {
        let axis = &mut neighbours[j * (vertices + 1)..(j + 1) * (vertices + 1)];
        for v in 1..=vertices as u32 {
            // Only the forward look-up: v is the backward neighbour of its forward neighbour.
            let forward = keys.find(keys.key(v).plus(ones).minus(step));
            axis[v as usize][1] = forward;
            if forward != NONE {
                axis[forward as usize][0] = v;
            }
        }
    }
    Lattice { dim: D, points, vertices, offsets, weights, neighbours }
}

/// Points whose simplices are found together, lane by lane, so that the arithmetic vectorises.
const LANES: usize = 8;

/// The enclosing simplices of up to [`LANES`] points, coordinate-major (`[coordinate][lane]`).
/// Every step is densecrf's, in its order of operations, on each lane.
struct Simplices<const D: usize, const D1: usize> {
    elevated: [[f32; LANES]; D1],
    /// The simplex's 0-remainder vertex.
    rem0: [[f32; LANES]; D1],
    /// Each coordinate's rank among the point's remainders.
    rank: [[i32; LANES]; D1],
}

impl<const D: usize, const D1: usize> Simplices<D, D1> {
    /// `chunk`: up to LANES points of D features (missing lanes repeat the first point).
    #[inline(always)]
    fn of(chunk: &[f32], scale: &[f32; D]) -> Self {
        let mut features = [[0f32; LANES]; D];
        for (lane, point) in chunk.chunks_exact(D).chain(std::iter::repeat(&chunk[..D])).take(LANES).enumerate() {
            for (i, &f) in point.iter().enumerate() {
                features[i][lane] = f;
            }
        }
        let elevated = elevate_lanes::<D, D1>(&features, scale);
        // The nearest 0-coloured lattice point, by rounding each coordinate.
        let down = 1.0f32 / (D as f32 + 1.0);
        let up = D as f32 + 1.0;
        let mut rem0 = [[0f32; LANES]; D1];
        let mut sum = [0i32; LANES];
        for i in 0..D1 {
            for l in 0..LANES {
                let e = elevated[i][l];
                let v = down * e;
                let (up_v, down_v) = (ceil(v) * up, floor(v) * up);
                let rounded = if up_v - e < e - down_v { up_v } else { down_v };
                rem0[i][l] = rounded;
                sum[l] += to_int(rounded * down);
            }
        }
        // The simplex: the rank of each coordinate's remainder in sorted order.
        let mut remainder = [[0f32; LANES]; D1];
        for i in 0..D1 {
            for l in 0..LANES {
                remainder[i][l] = elevated[i][l] - rem0[i][l];
            }
        }
        let mut rank = [[0i32; LANES]; D1];
        for i in 0..D {
            for j in i + 1..D1 {
                for l in 0..LANES {
                    let less = (remainder[i][l] < remainder[j][l]) as i32;
                    rank[i][l] += less;
                    rank[j][l] += 1 - less;
                }
            }
        }
        // Bring the point back onto the plane if the rounding left it (sum != 0).
        for i in 0..D1 {
            for l in 0..LANES {
                let r = rank[i][l] + sum[l];
                let (below, above) = (r < 0, r > D as i32);
                rank[i][l] = if below {
                    r + D1 as i32
                } else if above {
                    r - D1 as i32
                } else {
                    r
                };
                rem0[i][l] = if below {
                    rem0[i][l] + up
                } else if above {
                    rem0[i][l] - up
                } else {
                    rem0[i][l]
                };
            }
        }
        Simplices { elevated, rem0, rank }
    }

    /// Every lane's simplex, vertex by vertex (`[remainder][lane]`): the packed key and the
    /// barycentric weight (p. 10 of the paper) of each of its d+1 vertices. densecrf's steps,
    /// written across the lanes so that they vectorise.
    #[inline(always)]
    fn vertices<K: PackedKey>(&self, packing: &Packing<D>, ones: K, steps: &[K; D1]) -> ([[K; LANES]; D1], [[f32; LANES]; D1]) {
        let down = 1.0f32 / (D as f32 + 1.0);
        // Each coordinate's offset from the 0-remainder vertex, filed by the coordinate's rank
        // (the ranks of a point are a permutation of 0..=d).
        let mut by_rank = [[0f32; LANES]; D1];
        for i in 0..D1 {
            let offset: [f32; LANES] = std::array::from_fn(|l| (self.elevated[i][l] - self.rem0[i][l]) * down);
            for (r, by_rank) in by_rank.iter_mut().enumerate() {
                for l in 0..LANES {
                    by_rank[l] = if self.rank[i][l] == r as i32 { offset[l] } else { by_rank[l] };
                }
            }
        }
        // densecrf adds the offset of rank r to weight d − r and subtracts it from weight
        // d − r + 1, the one of rank 0 from its weight d + 1, which it then adds, plus 1, to
        // weight 0. Every weight so gets one term of each sign: the same bits in one operation.
        let mut barycentric = [[0f32; LANES]; D1];
        for l in 0..LANES {
            barycentric[0][l] = by_rank[D][l] + (1.0 - by_rank[0][l]);
        }
        for k in 1..D1 {
            for l in 0..LANES {
                barycentric[k][l] = by_rank[D - k][l] - by_rank[D - k + 1][l];
            }
        }
        // Vertex r is the 0-remainder vertex plus the canonical offsets of remainder r: from one
        // remainder to the next every coordinate gains 1 but the one ranked d − r + 1 loses d+1.
        let mut keys = [[K::from_wide(0); LANES]; D1];
        for l in 0..LANES {
            keys[0][l] = packing.pack(std::array::from_fn::<f32, D, _>(|i| self.rem0[i][l]));
        }
        for r in 1..D1 {
            for l in 0..LANES {
                let step = (0..D).fold(K::from_wide(0), |step, i| if self.rank[i][l] == (D1 - r) as i32 { steps[i] } else { step });
                keys[r][l] = keys[r - 1][l].plus(ones).minus(step);
            }
        }
        (keys, barycentric)
    }
}

/// How the d integer coordinates of a vertex pack into one integer: each less its lowest
/// possible value, in `bits` bits. The range leaves room for the moves to neighbours, so that
/// adding and subtracting packed moves never carries from one coordinate into the next.
struct Packing<const D: usize> {
    low: [i64; D],
    bits: u32,
}

impl<const D: usize> Packing<D> {
    /// The packing of the lattice of `features`, from bounds on their elevations: each elevated
    /// coordinate is a fixed combination of the scaled features, so the features' per-dimension
    /// ranges bound it (one cheap pass, instead of elevating every point twice).
    fn of<const D1: usize>(features: &[f32], scale: &[f32; D]) -> Packing<D> {
        if features.is_empty() {
            return Packing { low: [0; D], bits: 1 };
        }
        let (lo, hi) = feature_ranges::<D>(features);
        let (lo, hi) = elevated_bounds::<D, D1>(&lo, &hi, scale);
        let extreme = lo.iter().chain(&hi).fold(0f64, |m, e| m.max(e.abs()));
        assert!(extreme <= MAX_ELEVATED as f64, "lattice features too large: an elevated coordinate reaches {extreme}, over 2^30");
        // A vertex lies within 2.5(d+1) of its point's elevation (rounding, the correction,
        // the canonical offset) and its neighbours within d more; the margin also covers the
        // rounding of the elevation in f32.
        let margin = 4 * (D as i64 + 1);
        let low: [i64; D] = std::array::from_fn(|i| lo[i].floor() as i64 - margin);
        let span = (0..D).map(|i| hi[i].ceil() as i64 + margin - low[i]).max().unwrap_or(0);
        Packing { low, bits: u64::BITS - (span as u64).leading_zeros() }
    }

    /// The key of the vertex whose first D coordinates are `coordinates`'s.
    #[inline(always)]
    fn pack<K: PackedKey>(&self, coordinates: [f32; D]) -> K {
        (0..D).fold(K::from_wide(0), |key, i| key.plus(K::shifted((coordinates[i] as i64 - self.low[i]) as u64, self.bits * i as u32)))
    }
}

/// An integer holding a packed vertex key: u64 when the coordinates fit, else u128.
trait PackedKey: Copy + Eq + std::fmt::Debug {
    /// The low bits of `wide`.
    fn from_wide(wide: u128) -> Self;
    /// `value << shift`.
    fn shifted(value: u64, shift: u32) -> Self;
    fn plus(self, other: Self) -> Self;
    fn minus(self, other: Self) -> Self;
    /// 64 bits that depend on every bit of the key, for hashing.
    fn fold(self) -> u64;
}

impl PackedKey for u64 {
    fn from_wide(wide: u128) -> u64 {
        wide as u64
    }
    fn shifted(value: u64, shift: u32) -> u64 {
        value << shift
    }
    fn plus(self, other: u64) -> u64 {
        self.wrapping_add(other)
    }
    fn minus(self, other: u64) -> u64 {
        self.wrapping_sub(other)
    }
    fn fold(self) -> u64 {
        self
    }
}

impl PackedKey for u128 {
    fn from_wide(wide: u128) -> u128 {
        wide
    }
    fn shifted(value: u64, shift: u32) -> u128 {
        (value as u128) << shift
    }
    fn plus(self, other: u128) -> u128 {
        self.wrapping_add(other)
    }
    fn minus(self, other: u128) -> u128 {
        self.wrapping_sub(other)
    }
    fn fold(self) -> u64 {
        (self as u64) ^ ((self >> 64) as u64).rotate_left(29)
    }
}

/// Open-addressing hash table from packed lattice keys to 1-based vertex numbers: the
/// lattice's hot loop, so one integer compare per probe.
struct KeyTable<K> {
    keys: Vec<K>,
    /// 0 = empty, else the vertex number.
    slots: Vec<u32>,
}

impl<K: PackedKey> KeyTable<K> {
    fn new(expected: usize) -> KeyTable<K> {
        KeyTable { keys: Vec::with_capacity(expected), slots: vec![0; (4 * expected).next_power_of_two()] }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn key(&self, vertex: u32) -> K {
        self.keys[vertex as usize - 1]
    }

    /// The slot holding `key`, or the empty slot where it belongs.
    fn slot(&self, key: K) -> usize {
        let mask = self.slots.len() - 1;
        // Fibonacci hashing: the high bits of the product depend on every input bit.
        let mut s = (key.fold().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (u64::BITS - self.slots.len().trailing_zeros())) as usize;
        loop {
            let vertex = self.slots[s];
            if vertex == 0 || self.key(vertex) == key {
                return s;
            }
            s = (s + 1) & mask;
        }
    }

    /// The vertex of `key`, or [`NONE`].
    fn find(&self, key: K) -> u32 {
        self.slots[self.slot(key)]
    }

    fn insert(&mut self, key: K) -> u32 {
        // At most a quarter full: 1.09 probes per look-up on a photo's 5-D lattice against 1.33
        // half full, and the build 5% faster.
        if 4 * (self.len() + 1) > self.slots.len() {
            self.grow();
        }
        let s = self.slot(key);
        if self.slots[s] == 0 {
            self.keys.push(key);
            self.slots[s] = self.len() as u32;
        }
        self.slots[s]
    }

    fn grow(&mut self) {
        self.slots = vec![0; self.slots.len() * 2];
        for vertex in 1..=self.len() as u32 {
            let s = self.slot(self.key(vertex));
            self.slots[s] = vertex;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact Gaussian filtering, Σ_j exp(−½‖f_i − f_j‖²) v_j.
    fn exact(features: &[f32], dim: usize, values: &[f32]) -> Vec<f32> {
        let n = features.len() / dim;
        (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        let d2: f32 = (0..dim).map(|k| (features[i * dim + k] - features[j * dim + k]).powi(2)).sum();
                        (-0.5 * d2).exp() * values[j]
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn barycentric_weights_of_every_point_sum_to_one() {
        let features: Vec<f32> = (0..60).map(|i| ((i * 37) % 17) as f32 * 0.31 - 2.0).collect();
        for dim in [1, 2, 3, 5] {
            let lattice = Lattice::new(&features[..features.len() / dim * dim], dim);
            for w in lattice.weights.chunks_exact(dim + 1) {
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{w:?}");
                assert!(w.iter().all(|&x| x >= -1e-6), "{w:?}");
            }
        }
    }

    /// A point elevated onto the lattice's hyperplane, y = E·f, in densecrf's order of operations.
    fn elevate<const D: usize, const D1: usize>(f: &[f32], scale: &[f32; D]) -> [f32; D1] {
        let mut elevated = [0f32; D1];
        let mut sum_scaled = 0f32;
        for j in (1..=D).rev() {
            let cf = f[j - 1] * scale[j - 1];
            elevated[j] = sum_scaled - j as f32 * cf;
            sum_scaled += cf;
        }
        elevated[0] = sum_scaled;
        elevated
    }

    #[test]
    fn lane_parallel_elevation_gives_each_points_bits() {
        let scale = elevation_scale::<5>();
        let features: [[f32; LANES]; 5] = std::array::from_fn(|i| std::array::from_fn(|l| ((i * 31 + l * 7919) % 211) as f32 / 3.0 - 30.0));
        let lanes = elevate_lanes::<5, 6>(&features, &scale);
        for l in 0..LANES {
            let point: [f32; 5] = std::array::from_fn(|i| features[i][l]);
            let one = elevate::<5, 6>(&point, &scale);
            assert!((0..6).all(|j| lanes[j][l].to_bits() == one[j].to_bits()), "lane {l}");
        }
    }

    #[test]
    fn elevated_bounds_contain_every_elevation_and_are_reached_at_the_corners() {
        let scale = elevation_scale::<5>();
        let features: Vec<f32> = (0..500 * 5).map(|i| ((i * 2654435761u64 as usize) % 1000) as f32 / 7.0 - 40.0).collect();
        let (lo, hi) = feature_ranges::<5>(&features);
        let (low, high) = elevated_bounds::<5, 6>(&lo, &hi, &scale);
        for f in features.chunks_exact(5) {
            for (j, e) in elevate::<5, 6>(f, &scale).into_iter().enumerate() {
                assert!(low[j] - 1e-3 <= e as f64 && e as f64 <= high[j] + 1e-3, "coordinate {j}: {e} outside [{}, {}]", low[j], high[j]);
            }
        }
        // Coordinate 0 sums every scaled feature: its bounds are those at the corners lo and hi.
        let at = |f: [f32; 5]| elevate::<5, 6>(&f, &scale)[0] as f64;
        assert!((at(lo) - low[0]).abs() < 1e-3 && (at(hi) - high[0]).abs() < 1e-3);
        // Coordinate 4 is cf5 − 4·cf4: least at b = lo, g = hi.
        let corner = [lo[0], lo[1], lo[2], hi[3], lo[4]];
        assert!((elevate::<5, 6>(&corner, &scale)[4] as f64 - low[4]).abs() < 1e-3);
    }

    fn feature_ranges_are_each_dimensions_least_and_greatest<const D: usize>() {
        // Point counts around the LANES-point chunks: none, a tail alone, whole chunks, both.
        for points in [1, 7, 8, 9, 23, 64] {
            let features: Vec<f32> = (0..points * D).map(|i| ((i * 2654435761usize) % 1009) as f32 / 3.0 - 150.0).collect();
            let (lo, hi) = feature_ranges::<D>(&features);
            for i in 0..D {
                let column = features.iter().skip(i).step_by(D);
                assert_eq!(lo[i], column.clone().copied().fold(f32::INFINITY, f32::min), "D {D}, {points} points, dimension {i}");
                assert_eq!(hi[i], column.copied().fold(f32::NEG_INFINITY, f32::max), "D {D}, {points} points, dimension {i}");
            }
        }
    }

    #[test]
    fn feature_ranges_match_a_plain_fold_for_every_dimension_count_and_tail() {
        feature_ranges_are_each_dimensions_least_and_greatest::<1>();
        feature_ranges_are_each_dimensions_least_and_greatest::<2>();
        feature_ranges_are_each_dimensions_least_and_greatest::<3>();
        feature_ranges_are_each_dimensions_least_and_greatest::<5>();
        feature_ranges_are_each_dimensions_least_and_greatest::<8>();
    }

    #[test]
    #[should_panic(expected = "lattice features too large")]
    fn features_too_large_for_exact_rounding_are_refused() {
        Lattice::new(&[0.0, 0.0, 1e9, 0.0], 2);
    }

    /// densecrf's per-point loop (its `barycentric` and canonical-vertex steps), for one lane:
    /// the vertices' keys and weights.
    fn densecrf_vertices<const D: usize, const D1: usize>(simplices: &Simplices<D, D1>, lane: usize, packing: &Packing<D>) -> ([u128; D1], [f32; D1]) {
        let down = 1.0f32 / (D as f32 + 1.0);
        let rem0: [f32; D1] = std::array::from_fn(|i| simplices.rem0[i][lane]);
        let (mut barycentric, mut beyond, mut by_rank) = ([0f32; D1], 0f32, [0usize; D1]);
        for i in 0..D1 {
            let v = (simplices.elevated[i][lane] - rem0[i]) * down;
            let r = simplices.rank[i][lane] as usize;
            barycentric[D - r] += v;
            if r == 0 {
                beyond -= v;
            } else {
                barycentric[D - r + 1] -= v;
            }
            by_rank[r] = i;
        }
        barycentric[0] += 1.0 + beyond;
        let mut keys = [0u128; D1];
        for (remainder, key) in keys.iter_mut().enumerate() {
            // densecrf: key[i] = rem0[i] + canonical[remainder][rank[i]].
            let canonical = |i: usize| if simplices.rank[i][lane] as usize <= D - remainder { remainder as i64 } else { remainder as i64 - D1 as i64 };
            *key = (0..D).map(|i| ((rem0[i] as i64 + canonical(i) - packing.low[i]) as u128) << (packing.bits * i as u32)).sum();
        }
        (keys, barycentric)
    }

    fn lane_parallel_vertices_are_densecrfs<const D: usize, const D1: usize>() {
        let scale = elevation_scale::<D>();
        let features: Vec<f32> = (0..8 * 40 * D).map(|i| ((i * 2654435761usize) % 1013) as f32 / 37.0 - 9.0).collect();
        let packing = Packing::<D>::of::<D1>(&features, &scale);
        let ones = (0..D).map(|i| 1u128 << (packing.bits * i as u32)).sum();
        let steps: [u128; D1] = std::array::from_fn(|i| if i < D { (D as u128 + 1) << (packing.bits * i as u32) } else { 0 });
        for chunk in features.chunks(D * LANES) {
            let simplices = Simplices::<D, D1>::of(chunk, &scale);
            let (keys, barycentric) = simplices.vertices::<u128>(&packing, ones, &steps);
            for lane in 0..LANES {
                let (expected_keys, expected_weights) = densecrf_vertices(&simplices, lane, &packing);
                for r in 0..D1 {
                    assert_eq!(keys[r][lane], expected_keys[r], "dim {D}, vertex {r}");
                    assert_eq!(barycentric[r][lane].to_bits(), expected_weights[r].to_bits(), "dim {D}, vertex {r}");
                }
            }
        }
    }

    #[test]
    fn lane_parallel_simplices_give_densecrfs_keys_and_weight_bits() {
        lane_parallel_vertices_are_densecrfs::<2, 3>();
        lane_parallel_vertices_are_densecrfs::<5, 6>();
    }

    #[test]
    fn points_of_a_chunk_tail_get_the_simplices_they_get_in_a_full_chunk() {
        // 11 points: one chunk of 8 and a tail of 3; the same points as the head of 16.
        let features: Vec<f32> = (0..16 * 5).map(|i| ((i * 7919) % 53) as f32 / 7.0).collect();
        let (short, long) = (Lattice::new(&features[8 * 5..11 * 5], 5), Lattice::new(&features[8 * 5..], 5));
        assert_eq!(short.weights, long.weights[..3 * 6]);
    }

    #[test]
    fn one_point_filters_to_a_constant_multiple_of_itself() {
        // A lone point sees only itself: out = c·in for the lattice's constant c (same per dim).
        for dim in [2, 5] {
            let lattice = Lattice::new(&vec![0.3; dim], dim);
            let mut out = vec![0.0; 2];
            lattice.filter(&[1.0, -2.0], 2, &mut out);
            assert!(out[0] > 0.0 && (out[1] / out[0] + 2.0).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn a_far_cluster_does_not_change_the_filtering_of_another() {
        // Cluster A alone packs its keys into a u64; with a cluster 5000σ away the coordinates
        // span too much for 5 × 12 bits and the keys go into a u128. A's results must not move.
        let near: Vec<f32> = (0..40 * 5).map(|i| ((i * 7919) % 31) as f32 / 9.0).collect();
        let far: Vec<f32> = near.iter().map(|f| f + 5000.0).collect();
        let values: Vec<f32> = (0..40).map(|p| ((p * 13) % 7) as f32).collect();
        let alone = Lattice::new(&near, 5);
        assert!(Packing::<5>::of::<6>(&near, &elevation_scale::<5>()).bits * 5 <= 64);
        let both_features = [near.clone(), far.clone()].concat();
        assert!(Packing::<5>::of::<6>(&both_features, &elevation_scale::<5>()).bits * 5 > 64);
        let both = Lattice::new(&both_features, 5);
        let (mut a, mut f, mut b) = (vec![0.0; 40], vec![0.0; 40], vec![0.0; 80]);
        alone.filter(&values, 1, &mut a);
        Lattice::new(&far, 5).filter(&values, 1, &mut f);
        both.filter(&[values.clone(), values.clone()].concat(), 1, &mut b);
        assert_eq!(a, b[..40]);
        assert_eq!(f, b[40..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lattice_and_filtering_give_the_same_bits_with_avx2() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let features: Vec<f32> = (0..300 * 5).map(|i| ((i * 2654435761u64 as usize) % 97) as f32 / 30.0).collect();
        // 300 points: 37 chunks of 8 lanes and a tail of 4.
        let lattice = build_lanes::<5, 6>(&features);
        // SAFETY: the CPU has AVX2 (checked above).
        assert_eq!(lattice, unsafe { build_avx2::<5, 6>(&features) });
        let scale: Vec<f32> = (0..300).map(|p| 0.5 + (p % 7) as f32 / 7.0).collect();
        // 6 channels fill one and a half lanes; 19 take two blocks.
        for channels in [1, 6, 19] {
            let input: Vec<f32> = (0..300 * channels).map(|i| ((i * 7919) % 101) as f32 / 101.0).collect();
            let (mut baseline, mut avx2) = (vec![0.25; input.len()], vec![0.25; input.len()]);
            let mut scratch = FilterScratch::default();
            lattice.filter_lanes(&input, channels, Some((&scale, 3.0)), &mut baseline, &mut scratch);
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { lattice.filter_blocks_avx2(&input, channels, Some((&scale, 3.0)), &mut avx2, &mut scratch) };
            assert!(baseline.iter().zip(&avx2).all(|(a, b)| a.to_bits() == b.to_bits()), "{channels} channels");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_gathered_blur_axis_gives_the_bits_of_the_vertex_by_vertex_one() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        // 23 slots: slot 0 (no neighbour) and 22 vertices, 5 groups of 4 and a tail of 2 left
        // to the caller; about a third of the neighbours missing.
        let slots = 23;
        let axis: Vec<[u32; 2]> =
            (0..slots).map(|v| std::array::from_fn(|k| ((v * 7 + k * 13) % 31) as u32).map(|n| if n >= slots as u32 { NONE } else { n })).collect();
        let mut from: Vec<f32> = (0..slots * LANE).map(|i| ((i * 7919) % 101) as f32 / 7.0 - 5.0).collect();
        from[..LANE].fill(0.0);
        let mut expected = vec![0f32; slots * LANE];
        for v in 1..slots {
            let [a, b] = axis[v].map(|n| n as usize);
            for k in 0..LANE {
                expected[v * LANE + k] = from[v * LANE + k] + 0.5 * (from[a * LANE + k] + from[b * LANE + k]);
            }
        }
        let mut to = vec![0f32; slots * LANE];
        // SAFETY: the CPU has AVX2 (checked above); every neighbour is below `slots`.
        let rest = unsafe { blur_axis_gathered(&axis, &from, &mut to) };
        assert_eq!(rest, 21, "the tail of 2 vertices is left to the caller");
        let gathered = &to[LANE..rest * LANE];
        assert!(gathered.iter().zip(&expected[LANE..rest * LANE]).all(|(a, b)| a.to_bits() == b.to_bits()), "{gathered:?}");
    }

    #[test]
    fn filtering_is_close_to_the_exact_gaussian_up_to_one_constant() {
        // A 2-D grid of 12×12 points at spacing 1/3 (σ = 3 pixels) and a 5-D bilateral set.
        let grid: Vec<f32> = (0..144).flat_map(|p| [(p % 12) as f32 / 3.0, (p / 12) as f32 / 3.0]).collect();
        let values: Vec<f32> = (0..144).map(|p| ((p * 7919) % 13) as f32 / 13.0).collect();
        for (features, dim) in [(grid.clone(), 2), ((0..144 * 5).map(|i| ((i * 2654435761u64 as usize) % 97) as f32 / 40.0).collect::<Vec<_>>(), 5)] {
            let lattice = Lattice::new(&features, dim);
            let mut approx = vec![0.0; 144];
            lattice.filter(&values, 1, &mut approx);
            let reference = exact(&features, dim, &values);
            // One global constant relates the two; fit it and check the relative error.
            let c = approx.iter().zip(&reference).map(|(a, r)| a * r).sum::<f32>() / reference.iter().map(|r| r * r).sum::<f32>();
            let err = approx.iter().zip(&reference).map(|(a, r)| (a - c * r).abs()).sum::<f32>() / reference.iter().map(|r| (c * r).abs()).sum::<f32>();
            assert!(err < 0.25, "dim {dim}: mean relative error {err}");
            assert!(c > 0.0);
        }
    }
}
