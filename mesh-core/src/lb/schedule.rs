//! Weighted round robin (a precomputed smooth schedule) and weighted random (alias table).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::RngCore;

use crate::rand_util::below;

/// Above this many slots a weighted schedule is scaled down, trading weight precision
/// (every endpoint keeps at least one slot) for memory: 64 Ki slots = 256 KiB.
const MAX_SCHEDULE: u64 = 1 << 16;

/// Smooth weighted round robin.
///
/// Equal weights cycle through the targets. Unequal weights are laid out once, at build time,
/// in earliest-deadline-first order — each target's turns are spread evenly over the cycle, so
/// a heavy endpoint never gets a burst — and a pick is one atomic increment and one load.
#[derive(Debug)]
pub(crate) struct RoundRobin {
    targets: Box<[u32]>,
    /// Positions into `targets`; empty when all weights are equal.
    schedule: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// `targets` are endpoint indices with their weights (≥ 1); `start` desynchronises clients.
    pub(crate) fn new(targets: &[(u32, u32)], start: usize) -> Self {
        let uniform = targets.windows(2).all(|w| w[0].1 == w[1].1);
        let schedule = if uniform {
            Box::default()
        } else {
            smooth_schedule(targets)
        };
        Self {
            targets: targets.iter().map(|t| t.0).collect(),
            schedule,
            next: AtomicUsize::new(start),
        }
    }

    #[inline]
    pub(crate) fn pick(&self) -> u32 {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.schedule.is_empty() {
            self.targets[n % self.targets.len()]
        } else {
            self.targets[self.schedule[n % self.schedule.len()] as usize]
        }
    }
}

fn smooth_schedule(targets: &[(u32, u32)]) -> Box<[u32]> {
    let total: u64 = targets.iter().map(|t| u64::from(t.1)).sum();
    let weights: Vec<u64> = if total > MAX_SCHEDULE {
        targets
            .iter()
            .map(|t| (u64::from(t.1) * MAX_SCHEDULE / total).max(1))
            .collect()
    } else {
        targets.iter().map(|t| u64::from(t.1)).collect()
    };
    let slots: u64 = weights.iter().sum();
    // Earliest deadline first: target i's k-th turn is due at (k - 1 + φᵢ) / wᵢ of the cycle.
    // The phase φᵢ (golden-ratio steps) keeps equal deadlines of different targets apart, so
    // light targets interleave with heavy ones instead of queueing behind them.
    let phase =
        |i: usize| ((0.5 + i as f64 * 0.618_033_988_75).fract() * (1u64 << 20) as f64) as u128;
    let due = |k: u64, i: usize, w: u64| -> u128 {
        ((u128::from(k - 1) << 20) + phase(i)) * u128::from(slots) / u128::from(w)
    };
    let mut heap: BinaryHeap<Reverse<(u128, usize)>> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Reverse((due(1, i, w), i)))
        .collect();
    let mut taken = vec![0u64; weights.len()];
    let mut schedule = Vec::with_capacity(slots as usize);
    while let Some(Reverse((_, i))) = heap.pop() {
        schedule.push(i as u32);
        taken[i] += 1;
        if taken[i] < weights[i] {
            heap.push(Reverse((due(taken[i] + 1, i, weights[i]), i)));
        }
    }
    schedule.into()
}

/// Weighted random choice in O(1) with Vose's alias method (uniform when weights are equal).
#[derive(Debug)]
pub(crate) struct WeightedRandom {
    targets: Box<[u32]>,
    /// `(threshold scaled to 2^32, alias position)`; empty when uniform.
    alias: Box<[(u64, u32)]>,
}

impl WeightedRandom {
    pub(crate) fn new(targets: &[(u32, u32)]) -> Self {
        let uniform = targets.windows(2).all(|w| w[0].1 == w[1].1);
        Self {
            targets: targets.iter().map(|t| t.0).collect(),
            alias: if uniform {
                Box::default()
            } else {
                alias_table(targets)
            },
        }
    }

    /// A position into the targets.
    #[inline]
    pub(crate) fn pick_position<R: RngCore + ?Sized>(&self, rng: &mut R) -> usize {
        let i = below(rng, self.targets.len() as u32) as usize;
        if self.alias.is_empty() {
            return i;
        }
        let (threshold, alias) = self.alias[i];
        if u64::from(rng.next_u32()) < threshold {
            i
        } else {
            alias as usize
        }
    }

    #[inline]
    pub(crate) fn pick<R: RngCore + ?Sized>(&self, rng: &mut R) -> u32 {
        self.targets[self.pick_position(rng)]
    }

    pub(crate) fn target(&self, position: usize) -> u32 {
        self.targets[position]
    }
}

fn alias_table(targets: &[(u32, u32)]) -> Box<[(u64, u32)]> {
    let n = targets.len() as u128;
    let total: u128 = targets.iter().map(|t| u128::from(t.1)).sum();
    let one: u128 = 1 << 32;
    // Probability of each column, scaled so that the mean column is exactly 2^32.
    let mut scaled: Vec<u128> = targets
        .iter()
        .map(|t| u128::from(t.1) * n * one / total)
        .collect();
    let mut table = vec![(one as u64, 0u32); targets.len()];
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..targets.len()).partition(|&i| scaled[i] < one);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        table[s] = (scaled[s] as u64, l as u32);
        scaled[l] = scaled[l] + scaled[s] - one;
        if scaled[l] < one {
            large.pop();
            small.push(l);
        }
    }
    for i in large.into_iter().chain(small) {
        table[i] = (one as u64, i as u32);
    }
    table.into()
}
