//! The permutohedral lattice (Adams, Baek & Davis 2010): Gaussian filtering of values attached
//! to points of a d-dimensional feature space in time linear in the number of points. Each
//! point is splatted onto the d+1 vertices of its enclosing simplex with barycentric weights,
//! the lattice is blurred with a [½ 1 ½] kernel along each of its d+1 axes, and the result is
//! sliced back with the same weights.
//!
//! The arithmetic follows Krähenbühl's densecrf `Permutohedral` (the code pydensecrf wraps)
//! step for step in f32, including its scale factors and the slicing constant 1/(1+2^-d), so
//! that a dense CRF built on it gives that implementation's label maps.

/// Lattice vertex index of "no neighbour": slot 0 of the value buffers, kept at zero.
const NONE: u32 = 0;

/// A lattice built for one set of points; [`Lattice::filter`] applies it to any values.
#[derive(Debug, Clone)]
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
    /// divided by the kernel's standard deviations. `dim` must be at least 1.
    pub fn new(features: &[f32], dim: usize) -> Lattice {
        assert!(dim >= 1 && features.len() % dim == 0, "features must be points × dim");
        let points = features.len() / dim;
        let d = dim;
        // Points of an image share vertices (a 500×375 photo: 64k for 1.1M incidences): start
        // small, so that the table stays in cache, and let it grow.
        let mut keys = KeyTable::new(d, points / 16 + 64);
        let mut offsets = Vec::with_capacity(points * (d + 1));
        let mut weights = Vec::with_capacity(points * (d + 1));

        // canonical[r][i]: the offset of coordinate i of remainder-r vertex of the simplex.
        let canonical: Vec<Vec<i32>> = (0..=d as i32)
            .map(|r| (0..=d as i32).map(|j| if j <= d as i32 - r { r } else { r - (d as i32 + 1) }).collect())
            .collect();
        // The expected standard deviation of the filter (p. 6 of the paper) and E's diagonal.
        let inv_std_dev = (2.0f32 / 3.0).sqrt() * (d as f32 + 1.0);
        let scale: Vec<f32> = (0..d).map(|i| (1.0 / (((i + 2) * (i + 1)) as f64).sqrt()) as f32 * inv_std_dev).collect();
        let down = 1.0f32 / (d as f32 + 1.0);
        let up = d as f32 + 1.0;

        let mut elevated = vec![0f32; d + 1];
        let mut rem0 = vec![0f32; d + 1];
        let mut rank = vec![0i32; d + 1];
        let mut barycentric = vec![0f32; d + 2];
        let mut key = vec![0i16; d];
        for f in features.chunks_exact(d) {
            // Elevate onto the hyperplane: y = E·f.
            let mut sum_scaled = 0f32;
            for j in (1..=d).rev() {
                let cf = f[j - 1] * scale[j - 1];
                elevated[j] = sum_scaled - j as f32 * cf;
                sum_scaled += cf;
            }
            elevated[0] = sum_scaled;
            // The nearest 0-coloured lattice point, by rounding each coordinate.
            let mut sum = 0i32;
            for i in 0..=d {
                let v = down * elevated[i];
                let up_v = v.ceil() * up;
                let down_v = v.floor() * up;
                let rounded = if up_v - elevated[i] < elevated[i] - down_v { up_v } else { down_v };
                rem0[i] = rounded;
                sum += (rounded * down) as i32;
            }
            // The simplex: the rank of each coordinate's remainder in sorted order.
            rank.iter_mut().for_each(|r| *r = 0);
            for i in 0..d {
                let di = elevated[i] - rem0[i];
                for j in i + 1..=d {
                    if di < elevated[j] - rem0[j] {
                        rank[i] += 1;
                    } else {
                        rank[j] += 1;
                    }
                }
            }
            // Bring the point back onto the plane if the rounding left it (sum != 0).
            for i in 0..=d {
                rank[i] += sum;
                if rank[i] < 0 {
                    rank[i] += d as i32 + 1;
                    rem0[i] += d as f32 + 1.0;
                } else if rank[i] > d as i32 {
                    rank[i] -= d as i32 + 1;
                    rem0[i] -= d as f32 + 1.0;
                }
            }
            // Barycentric coordinates (p. 10 of the paper).
            barycentric.iter_mut().for_each(|b| *b = 0.0);
            for i in 0..=d {
                let v = (elevated[i] - rem0[i]) * down;
                barycentric[d - rank[i] as usize] += v;
                barycentric[d - rank[i] as usize + 1] -= v;
            }
            barycentric[0] += 1.0 + barycentric[d + 1];
            for remainder in 0..=d {
                for i in 0..d {
                    key[i] = (rem0[i] as i32 + canonical[remainder][rank[i] as usize]) as i16;
                }
                offsets.push(keys.insert(&key));
                weights.push(barycentric[remainder]);
            }
        }

        let vertices = keys.len();
        let mut neighbours = vec![[NONE; 2]; (d + 1) * (vertices + 1)];
        let mut n1 = vec![0i16; d];
        let mut n2 = vec![0i16; d];
        let mut k = vec![0i16; d];
        for j in 0..=d {
            for v in 0..vertices {
                unpack(keys.key(v as u32 + 1), &mut k);
                for i in 0..d {
                    n1[i] = k[i] - 1;
                    n2[i] = k[i] + 1;
                }
                // Along axis d every stored coordinate moves; along j < d coordinate j moves by d.
                if j < d {
                    n1[j] = k[j] + d as i16;
                    n2[j] = k[j] - d as i16;
                }
                neighbours[j * (vertices + 1) + v + 1] = [keys.find(&n1), keys.find(&n2)];
            }
        }
        Lattice { dim, points, vertices, offsets, weights, neighbours }
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
        self.filter_with(input, channels, out, &mut FilterScratch::default());
    }

    /// [`Lattice::filter`] with caller-owned buffers, for repeated filtering (mean field).
    pub fn filter_with(&self, input: &[f32], channels: usize, out: &mut [f32], scratch: &mut FilterScratch) {
        assert!(channels >= 1 && input.len() == self.points * channels, "input must be points × channels");
        assert_eq!(out.len(), input.len(), "out must be points × channels");
        // Values travel in blocks of up to BLOCK channels, as 1..=4 lanes of 4: every inner loop
        // then has a fixed width the compiler vectorises, and the arithmetic per channel is
        // unchanged (padding lanes are zero).
        let mut first = 0;
        while first < channels {
            let block = (channels - first).min(BLOCK);
            match block.div_ceil(LANE) {
                1 => self.filter_block::<1>(input, channels, first, block, out, scratch),
                2 => self.filter_block::<2>(input, channels, first, block, out, scratch),
                3 => self.filter_block::<3>(input, channels, first, block, out, scratch),
                _ => self.filter_block::<4>(input, channels, first, block, out, scratch),
            }
            first += block;
        }
    }

    /// Filters channels `first..first + block` of `input` into the same channels of `out`,
    /// in `W` lanes.
    fn filter_block<const W: usize>(&self, input: &[f32], channels: usize, first: usize, block: usize, out: &mut [f32], scratch: &mut FilterScratch) {
        let d = self.dim;
        let slots = self.vertices + 1;
        let values = scratch.values.lanes::<W>(slots);
        for ((value, offsets), weights) in input.chunks_exact(channels).zip(self.offsets.chunks_exact(d + 1)).zip(self.weights.chunks_exact(d + 1)) {
            let mut point = [[0f32; LANE]; W];
            for (c, &x) in value[first..first + block].iter().enumerate() {
                point[c / LANE][c % LANE] = x;
            }
            for (&o, &w) in offsets.iter().zip(weights) {
                let acc = &mut values[o as usize];
                for l in 0..W {
                    for k in 0..LANE {
                        acc[l][k] += w * point[l][k];
                    }
                }
            }
        }
        let blurred = scratch.blurred.lanes::<W>(slots);
        let (mut from, mut to) = (values, blurred);
        for j in 0..=d {
            let axis = &self.neighbours[j * slots..(j + 1) * slots];
            for v in 1..slots {
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
        let alpha = 1.0f32 / (1.0 + 2f32.powi(-(d as i32)));
        for ((result, offsets), weights) in out.chunks_exact_mut(channels).zip(self.offsets.chunks_exact(d + 1)).zip(self.weights.chunks_exact(d + 1)) {
            let mut point = [[0f32; LANE]; W];
            for (&o, &w) in offsets.iter().zip(weights) {
                let x = &from[o as usize];
                for l in 0..W {
                    for k in 0..LANE {
                        point[l][k] += w * x[l][k] * alpha;
                    }
                }
            }
            for (c, y) in result[first..first + block].iter_mut().enumerate() {
                *y = point[c / LANE][c % LANE];
            }
        }
    }
}

/// Width of a value lane of [`Lattice::filter_with`].
const LANE: usize = 4;
/// Channels filtered in one traversal: at most 4 lanes.
const BLOCK: usize = 4 * LANE;

/// Buffers of [`Lattice::filter_with`], kept between calls.
#[derive(Debug, Default)]
pub struct FilterScratch {
    values: LaneBuffer,
    blurred: LaneBuffer,
}

/// A buffer reused as `[[f32; 4]; W]` entries of any width W ≤ 4.
#[derive(Debug, Default)]
struct LaneBuffer(Vec<[[f32; LANE]; 4]>);

impl LaneBuffer {
    /// `slots` zeroed entries of W lanes.
    fn lanes<const W: usize>(&mut self, slots: usize) -> &mut [[[f32; LANE]; W]] {
        const { assert!(W >= 1 && W <= 4) };
        let floats = slots * W * LANE;
        self.0.clear();
        self.0.resize(floats.div_ceil(4 * LANE), [[0.0; LANE]; 4]);
        let flat: &mut [f32] = &mut self.0.as_flattened_mut().as_flattened_mut()[..floats];
        let (entries, rest) = flat.as_chunks_mut::<LANE>();
        debug_assert!(rest.is_empty());
        entries.as_chunks_mut::<W>().0
    }
}

/// Open-addressing hash table from lattice keys (d ≤ 8 coordinates, packed 16 bits each into a
/// u128) to 1-based vertex numbers: the lattice's hot loop, so one integer compare per probe.
struct KeyTable {
    keys: Vec<u128>,
    /// 0 = empty, else the vertex number.
    slots: Vec<u32>,
}

/// A key's coordinates packed into one integer.
fn pack(key: &[i16]) -> u128 {
    key.iter().enumerate().fold(0u128, |packed, (i, &k)| packed | (k as u16 as u128) << (16 * i))
}

/// The coordinates of a packed key.
fn unpack(packed: u128, key: &mut [i16]) {
    for (i, k) in key.iter_mut().enumerate() {
        *k = (packed >> (16 * i)) as u16 as i16;
    }
}

impl KeyTable {
    fn new(dim: usize, expected: usize) -> KeyTable {
        assert!(dim <= 8, "lattice keys hold at most 8 coordinates");
        KeyTable { keys: Vec::with_capacity(expected), slots: vec![0; (2 * expected).next_power_of_two()] }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn key(&self, vertex: u32) -> u128 {
        self.keys[vertex as usize - 1]
    }

    fn hash(key: u128) -> usize {
        // Fibonacci hashing of the folded key; the high bits of the product depend on every
        // input bit, so the slot is taken from them.
        let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
        folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) as usize
    }

    /// The slot holding `key`, or the empty slot where it belongs.
    fn slot(&self, key: u128) -> usize {
        let mask = self.slots.len() - 1;
        let mut s = Self::hash(key) >> (usize::BITS - self.slots.len().trailing_zeros());
        loop {
            let vertex = self.slots[s];
            if vertex == 0 || self.key(vertex) == key {
                return s;
            }
            s = (s + 1) & mask;
        }
    }

    fn find(&self, key: &[i16]) -> u32 {
        self.slots[self.slot(pack(key))]
    }

    fn insert(&mut self, key: &[i16]) -> u32 {
        if 2 * (self.len() + 1) > self.slots.len() {
            self.grow();
        }
        let packed = pack(key);
        let s = self.slot(packed);
        if self.slots[s] == 0 {
            self.keys.push(packed);
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
