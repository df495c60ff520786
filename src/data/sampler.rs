//! Rank-aware epoch sampling (the semantics of PyTorch's `DistributedSampler`):
//! every epoch is a permutation of the dataset drawn from (seed, epoch) alone; rank r of n takes
//! positions r, r+n, r+2n, ... of it, so the ranks' shares are disjoint and together cover the
//! epoch; every rank gets the same count. A [`Cursor`] marks how far a rank got, so an
//! interrupted epoch resumes with no sample repeated and none lost.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// What to do when the dataset does not divide evenly among the ranks.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Uneven {
    /// Repeat the first samples of the permutation to fill the last round (nothing is left out;
    /// at most n−1 samples are seen twice in an epoch).
    Pad,
    /// Leave the last len % n samples of the permutation out (shares strictly disjoint).
    Drop,
}

/// Position within a rank's epoch: the next sample to deliver is `position` of `epoch`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub position: usize,
}

/// One rank's view of the epochs of a dataset of `len` samples.
#[derive(Debug, Clone)]
pub struct Sampler {
    pub len: usize,
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub shuffle: bool,
    pub uneven: Uneven,
}

/// Mixes values into one well-spread 64-bit seed (SplitMix64 finaliser over a running sum), so
/// nearby tuples such as (seed, epoch) and (seed, epoch+1) give unrelated streams.
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9E37_79B9_7F4A_7C15u64, |acc, &p| {
        let mut z = acc.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

impl Sampler {
    /// Samples each rank delivers per epoch.
    pub fn per_rank(&self) -> usize {
        match self.uneven {
            Uneven::Pad => self.len.div_ceil(self.world),
            Uneven::Drop => self.len / self.world,
        }
    }

    /// The dataset order of `epoch`, the same on every rank.
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if self.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(&[self.seed, epoch])));
        }
        order
    }

    /// This rank's samples of `epoch`, in delivery order (global dataset indices).
    pub fn epoch_indices(&self, epoch: u64) -> Vec<usize> {
        let order = self.permutation(epoch);
        if order.is_empty() {
            return order;
        }
        let per_rank = self.per_rank();
        (0..per_rank).map(|k| order[(self.rank + k * self.world) % order.len()]).collect()
    }

    /// The samples still to come in the cursor's epoch.
    pub fn remaining(&self, cursor: Cursor) -> Vec<usize> {
        let mut indices = self.epoch_indices(cursor.epoch);
        indices.drain(..cursor.position.min(indices.len()));
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn sampler(len: usize, rank: usize, world: usize, uneven: Uneven) -> Sampler {
        Sampler { len, seed: 7, rank, world, shuffle: true, uneven }
    }

    #[test]
    fn ranks_are_disjoint_equal_and_cover_the_epoch() {
        for (len, world) in [(10, 1), (10, 2), (10, 3), (11, 4), (3, 5)] {
            let shares: Vec<Vec<usize>> = (0..world).map(|r| sampler(len, r, world, Uneven::Drop).epoch_indices(2)).collect();
            let all: Vec<usize> = shares.iter().flatten().copied().collect();
            let unique: BTreeSet<usize> = all.iter().copied().collect();
            assert_eq!(unique.len(), all.len(), "drop: disjoint for len {len} world {world}");
            assert_eq!(all.len(), len / world * world);
            assert!(shares.iter().all(|s| s.len() == len / world));

            let shares: Vec<Vec<usize>> = (0..world).map(|r| sampler(len, r, world, Uneven::Pad).epoch_indices(2)).collect();
            let per = len.div_ceil(world);
            assert!(shares.iter().all(|s| s.len() == per), "pad: equal counts");
            let unique: BTreeSet<usize> = shares.iter().flatten().copied().collect();
            assert_eq!(unique, (0..len).collect(), "pad: every sample seen");
            assert_eq!(shares.iter().flatten().count() - len, per * world - len, "pad: only the padding repeats");
        }
    }

    #[test]
    fn permutation_depends_on_seed_and_epoch_only() {
        let a = sampler(100, 0, 1, Uneven::Pad);
        assert_eq!(a.permutation(3), a.permutation(3));
        assert_ne!(a.permutation(3), a.permutation(4));
        assert_ne!(a.permutation(3), Sampler { seed: 8, ..a.clone() }.permutation(3));
        let mut sorted = a.permutation(3);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        // The ranks interleave one shared permutation.
        let p = a.permutation(3);
        let r1 = sampler(100, 1, 4, Uneven::Pad).epoch_indices(3);
        assert_eq!(r1, (0..25).map(|k| p[1 + 4 * k]).collect::<Vec<_>>());
        assert_eq!(Sampler { shuffle: false, ..a }.permutation(0), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn resume_from_a_cursor_loses_and_repeats_nothing() {
        let s = sampler(37, 1, 3, Uneven::Pad);
        let whole = s.epoch_indices(5);
        for position in [0, 1, 6, 12, 13] {
            let mut resumed = whole[..position].to_vec();
            resumed.extend(s.remaining(Cursor { epoch: 5, position }));
            assert_eq!(resumed, whole, "position {position}");
        }
        assert!(s.remaining(Cursor { epoch: 5, position: 99 }).is_empty());
    }

    #[test]
    fn mix_seed_spreads_neighbours() {
        assert_ne!(mix_seed(&[0, 1]), mix_seed(&[1, 0]));
        assert_ne!(mix_seed(&[0, 0]), mix_seed(&[0]));
        assert_eq!(mix_seed(&[3, 4, 5]), mix_seed(&[3, 4, 5]));
    }
}
