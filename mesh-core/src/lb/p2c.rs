//! Power-of-choices pickers: least request (A48 / Envoy) and peak-EWMA (linkerd2-proxy).

use std::sync::Arc;

use rand::RngCore;

use super::load::EndpointLoad;
use super::schedule::WeightedRandom;

/// Samples `choice_count` candidates (by weight, with replacement) and keeps the one with the
/// fewest in-flight requests relative to its weight.
#[derive(Debug)]
pub(crate) struct LeastRequest {
    candidates: WeightedRandom,
    weights: Box<[u32]>,
    choice_count: u32,
}

impl LeastRequest {
    pub(crate) fn new(targets: &[(u32, u32)], choice_count: u32) -> Self {
        Self {
            candidates: WeightedRandom::new(targets),
            weights: targets.iter().map(|t| t.1).collect(),
            choice_count,
        }
    }

    #[inline]
    pub(crate) fn pick<R: RngCore + ?Sized>(
        &self,
        loads: &[Arc<EndpointLoad>],
        rng: &mut R,
    ) -> u32 {
        let mut best = self.candidates.pick_position(rng);
        let mut best_target = self.candidates.target(best);
        let mut best_load = loads[best_target as usize].active();
        for _ in 1..self.choice_count {
            let c = self.candidates.pick_position(rng);
            let target = self.candidates.target(c);
            let load = loads[target as usize].active();
            // active_c / w_c < active_best / w_best, cross-multiplied.
            if u64::from(load) * u64::from(self.weights[best])
                < u64::from(best_load) * u64::from(self.weights[c])
            {
                (best, best_target, best_load) = (c, target, load);
            }
        }
        best_target
    }
}

/// Two random candidates; the one with the lower `latency estimate × (in flight + 1)` wins.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    candidates: WeightedRandom,
    default_rtt_ns: f64,
}

impl PeakEwma {
    pub(crate) fn new(targets: &[(u32, u32)], default_rtt_ns: f64) -> Self {
        Self {
            candidates: WeightedRandom::new(targets),
            default_rtt_ns,
        }
    }

    #[inline]
    pub(crate) fn pick<R: RngCore + ?Sized>(
        &self,
        loads: &[Arc<EndpointLoad>],
        rng: &mut R,
    ) -> u32 {
        let a = self.candidates.pick(rng);
        let b = self.candidates.pick(rng);
        if a == b {
            return a;
        }
        let cost = |t: u32| {
            let load = &loads[t as usize];
            load.estimate_ns(self.default_rtt_ns) * f64::from(load.active() + 1)
        };
        if cost(b) < cost(a) { b } else { a }
    }
}
