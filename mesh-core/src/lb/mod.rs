//! Load balancing: policies, and pickers built over a cluster's endpoints.
//!
//! A [`ClusterPicker`] is built from an [`EndpointSet`], the LB config and which endpoints are
//! currently available (healthy and not ejected), and is rebuilt when any of these change —
//! as gRPC rebuilds its picker — so that a pick never scans for usable endpoints. It applies
//! Envoy's priority levels (overprovisioning factor, panic threshold) and locality weights,
//! then the endpoint policy.

mod hashing;
mod load;
mod p2c;
mod schedule;

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;

pub use load::{ActiveRequest, EndpointLoad};

use crate::endpoint::EndpointSet;
use crate::error::{FieldError, FieldResult};
use crate::rand_util::below;
use hashing::{HashTarget, Maglev, RingHash};
use p2c::{LeastRequest, PeakEwma};
use schedule::{RoundRobin, WeightedRandom};

/// An unvalidated load-balancing policy; `None` fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicySpec {
    /// Smooth weighted round robin (the default).
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Least request over `choice_count` random candidates (default 2, 2..=10).
    LeastRequest {
        /// Candidates per pick.
        choice_count: Option<u32>,
    },
    /// Latency-aware P2C over a peak-sensitive EWMA of response times.
    PeakEwma {
        /// Decay time of the estimate (default 10 s).
        decay: Option<Duration>,
        /// Estimate for endpoints without samples (default 30 ms).
        default_rtt: Option<Duration>,
    },
    /// Ring hash over XXH64 (defaults: min 1024, max 8M points).
    RingHash {
        /// Minimum number of points.
        min_ring_size: Option<u64>,
        /// Maximum number of points.
        max_ring_size: Option<u64>,
    },
    /// Maglev (default table size 65537, which must be prime).
    Maglev {
        /// Lookup-table size.
        table_size: Option<u64>,
    },
}

/// A validated load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbConfig {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Weighted random.
    Random,
    /// Least request.
    LeastRequest {
        /// Candidates per pick (2..=10).
        choice_count: u32,
    },
    /// Peak-EWMA P2C.
    PeakEwma {
        /// Decay time of the estimate.
        decay: Duration,
        /// Estimate for endpoints without samples.
        default_rtt: Duration,
    },
    /// Ring hash.
    RingHash {
        /// Minimum number of points.
        min_ring_size: u64,
        /// Maximum number of points.
        max_ring_size: u64,
    },
    /// Maglev.
    Maglev {
        /// Lookup-table size (prime).
        table_size: u64,
    },
}

/// The largest ring xDS allows a cluster to ask for.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// The largest ring actually built, whatever the cluster asks: 1 Mi points (12 MiB). Rings
/// grow to `max_ring_size` when endpoint weights are very uneven, and 8 Mi points per cluster
/// would cost 96 MiB; gRPC caps rings locally for the same reason (at 4096, which is too few
/// for clusters of thousands of endpoints).
pub const RING_SIZE_CAP: u64 = 1024 * 1024;
/// Envoy's largest Maglev table.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl LbConfig {
    /// This policy for one of `levels` priorities: ring and Maglev tables sized so that all
    /// levels together stay within one table's bound ([`RING_SIZE_CAP`] points, a
    /// [`MAX_MAGLEV_TABLE_SIZE`] table). Without this, thousands of priorities could each ask
    /// for a full-size table in one rebuild.
    fn shared_among(&self, levels: usize) -> Self {
        let levels = u64::try_from(levels.max(1)).unwrap_or(u64::MAX);
        match *self {
            Self::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                let max = max_ring_size.min(RING_SIZE_CAP / levels).max(1);
                Self::RingHash {
                    min_ring_size: min_ring_size.min(max),
                    max_ring_size: max,
                }
            }
            Self::Maglev { table_size } => {
                let mut m = table_size.min(MAX_MAGLEV_TABLE_SIZE / levels).max(2);
                while !is_prime(m) {
                    m -= 1;
                }
                Self::Maglev { table_size: m }
            }
            other => other,
        }
    }

    /// Validates a policy: `choice_count` ≥ 2 (clamped to 10), ring sizes within 8M with
    /// min ≤ max, Maglev table size prime and within Envoy's limit.
    pub fn new(spec: &LbPolicySpec) -> FieldResult<Self> {
        Ok(match *spec {
            LbPolicySpec::RoundRobin => Self::RoundRobin,
            LbPolicySpec::Random => Self::Random,
            LbPolicySpec::LeastRequest { choice_count } => {
                let c = choice_count.unwrap_or(2);
                if c < 2 {
                    return Err(FieldError::new(
                        "least_request_lb_config.choice_count",
                        format!("{c} is below the minimum of 2"),
                    ));
                }
                Self::LeastRequest {
                    choice_count: c.min(10),
                }
            }
            LbPolicySpec::PeakEwma { decay, default_rtt } => {
                let decay = decay.unwrap_or(Duration::from_secs(10));
                if decay.is_zero() {
                    return Err(FieldError::new("peak_ewma.decay", "must be greater than 0"));
                }
                Self::PeakEwma {
                    decay,
                    default_rtt: default_rtt.unwrap_or(Duration::from_millis(30)),
                }
            }
            LbPolicySpec::RingHash {
                min_ring_size,
                max_ring_size,
            } => {
                let min = min_ring_size.unwrap_or(1024);
                let max = max_ring_size.unwrap_or(MAX_RING_SIZE);
                for (v, f) in [(min, "minimum_ring_size"), (max, "maximum_ring_size")] {
                    if v == 0 || v > MAX_RING_SIZE {
                        return Err(FieldError::new(
                            format!("ring_hash_lb_config.{f}"),
                            format!("{v} is not in 1..={MAX_RING_SIZE}"),
                        ));
                    }
                }
                if min > max {
                    return Err(FieldError::new(
                        "ring_hash_lb_config.minimum_ring_size",
                        format!("{min} is greater than maximum_ring_size {max}"),
                    ));
                }
                Self::RingHash {
                    min_ring_size: min,
                    max_ring_size: max,
                }
            }
            LbPolicySpec::Maglev { table_size } => {
                let m = table_size.unwrap_or(65537);
                if m > MAX_MAGLEV_TABLE_SIZE || !is_prime(m) {
                    return Err(FieldError::new(
                        "maglev_lb_config.table_size",
                        format!(
                            "{m} must be a prime number no larger than {MAX_MAGLEV_TABLE_SIZE}"
                        ),
                    ));
                }
                Self::Maglev { table_size: m }
            }
        })
    }

    /// Whether picks are driven by a request hash.
    pub fn is_hash_based(&self) -> bool {
        matches!(self, Self::RingHash { .. } | Self::Maglev { .. })
    }
}

/// How endpoints are grouped for picking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickerOptions {
    /// Choose a locality by its weight first (Envoy `locality_weighted_lb_config`; always on in
    /// gRPC). Otherwise the localities of a priority are pooled.
    pub locality_weighted: bool,
    /// Below this share of available endpoints (percent, after overprovisioning) the cluster
    /// panics and uses every endpoint. 0 disables panic mode. Envoy's default is 50.
    pub panic_threshold: u32,
}

impl Default for PickerOptions {
    fn default() -> Self {
        Self {
            locality_weighted: false,
            panic_threshold: 50,
        }
    }
}

/// Picks endpoints of one cluster; immutable, shared by every request until the next rebuild.
#[derive(Debug)]
pub struct ClusterPicker {
    loads: Arc<[Arc<EndpointLoad>]>,
    /// Cumulative load (out of 100) per priority; only priorities with load are kept.
    priorities: Box<[(u32, Level)]>,
    panic: bool,
}

#[derive(Debug)]
struct Level {
    /// `None`: a single locality, or localities pooled.
    localities: Option<WeightedRandom>,
    pickers: Box<[EndpointPicker]>,
}

#[derive(Debug)]
enum EndpointPicker {
    /// Nothing to pick (e.g. no weighted locality had usable endpoints).
    Empty,
    One(u32),
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastRequest(LeastRequest),
    PeakEwma(PeakEwma),
    Ring(RingHash),
    Maglev(Maglev),
}

impl ClusterPicker {
    /// Builds a picker. `available(i)` says whether endpoint `i` may take traffic (its health
    /// is usable and outlier detection has not ejected it). `loads`, one per endpoint in
    /// order, carries in-flight counts and latency across rebuilds; `None` starts fresh ones.
    /// `seed` offsets round robin so that clients do not move in lockstep.
    pub fn new(
        config: &LbConfig,
        set: &EndpointSet,
        options: PickerOptions,
        available: impl Fn(usize) -> bool,
        loads: Option<Arc<[Arc<EndpointLoad>]>>,
        seed: u64,
    ) -> Self {
        let loads = match loads {
            Some(l) if l.len() == set.len() => l,
            _ => (0..set.len()).map(|_| EndpointLoad::new()).collect(),
        };
        let usable = |i: usize| set.endpoints()[i].health.is_usable() && available(i);
        let factor = f64::from(set.overprovisioning_factor()) / 100.0;

        // Envoy: health of a priority = min(100, factor × available / total).
        let mut health = Vec::with_capacity(set.priority_count());
        let mut sizes = Vec::with_capacity(set.priority_count());
        for groups in set.priorities() {
            let (mut total, mut up) = (0usize, 0usize);
            for g in groups {
                total += g.endpoints.len();
                up += g.endpoints.clone().filter(|&i| usable(i)).count();
            }
            sizes.push(total as u32);
            health.push(if total == 0 {
                0
            } else {
                ((factor * 100.0 * up as f64 / total as f64).floor() as u32).min(100)
            });
        }
        let total_health: u32 = health.iter().sum::<u32>().min(100);
        let panic = options.panic_threshold > 0 && total_health < options.panic_threshold;
        let loads_pct = if panic {
            proportional(&sizes)
        } else if total_health >= 100 {
            let mut left = 100u32;
            health
                .iter()
                .map(|&h| {
                    let take = h.min(left);
                    left -= take;
                    take
                })
                .collect()
        } else {
            proportional(&health)
        };

        // Hash tables are built per priority: their total is bounded, not each one's size.
        let levels = loads_pct.iter().filter(|&&l| l > 0).count();
        let shared = config.shared_among(levels);
        let config = &shared;
        let mut cumulative = 0;
        let mut priorities = Vec::new();
        for (p, groups) in set.priorities().enumerate() {
            if loads_pct[p] == 0 {
                continue;
            }
            let take = |i: usize| panic || usable(i);
            cumulative += loads_pct[p];
            priorities.push((
                cumulative,
                Level::new(config, set, groups, options, factor, take, seed),
            ));
        }
        Self {
            loads,
            priorities: priorities.into(),
            panic,
        }
    }

    /// Hash-table slots across every level (ring points and Maglev entries).
    #[cfg(test)]
    pub(crate) fn hash_slots(&self) -> usize {
        self.priorities
            .iter()
            .flat_map(|(_, level)| level.pickers.iter())
            .map(|p| match p {
                EndpointPicker::Ring(r) => r.len(),
                EndpointPicker::Maglev(m) => m.len(),
                _ => 0,
            })
            .sum()
    }

    /// Whether too few endpoints are available and every endpoint is being used.
    pub fn is_panic(&self) -> bool {
        self.panic
    }

    /// The per-endpoint loads, indexed like the endpoint set.
    pub fn loads(&self) -> &Arc<[Arc<EndpointLoad>]> {
        &self.loads
    }

    /// Picks an endpoint index, or `None` when the cluster has no endpoint to use. Hash-based
    /// policies use `hash`, or a random one when it is `None`.
    #[inline]
    pub fn pick<R: RngCore + ?Sized>(&self, hash: Option<u64>, rng: &mut R) -> Option<usize> {
        let level = match &*self.priorities {
            [] => return None,
            [(_, only)] => only,
            many => {
                let x = match hash {
                    Some(h) => (h.rotate_left(17) % 100) as u32,
                    None => below(rng, 100),
                };
                let i = many.partition_point(|(c, _)| *c <= x).min(many.len() - 1);
                &many[i].1
            }
        };
        let picker = match &level.localities {
            None => &level.pickers[0],
            Some(w) => &level.pickers[w.pick(rng) as usize],
        };
        picker.pick(hash, &self.loads, rng).map(|i| i as usize)
    }
}

/// Splits 100 in proportion to `parts` (largest remainders go first), or all zeros.
fn proportional(parts: &[u32]) -> Vec<u32> {
    let total: u64 = parts.iter().map(|&p| u64::from(p)).sum();
    if total == 0 {
        return vec![0; parts.len()];
    }
    let mut out: Vec<u32> = parts
        .iter()
        .map(|&p| (u64::from(p) * 100 / total) as u32)
        .collect();
    let mut left = 100 - out.iter().sum::<u32>();
    for (o, &p) in out.iter_mut().zip(parts) {
        if left == 0 {
            break;
        }
        if p > 0 {
            *o += 1;
            left -= 1;
        }
    }
    out
}

impl Level {
    fn new(
        config: &LbConfig,
        set: &EndpointSet,
        groups: &[crate::endpoint::LocalityGroup],
        options: PickerOptions,
        factor: f64,
        take: impl Fn(usize) -> bool,
        seed: u64,
    ) -> Self {
        let endpoints = set.endpoints();
        if config.is_hash_based() || !options.locality_weighted || groups.len() == 1 {
            // Hash policies flatten localities into one table (A42), scaling endpoint weights
            // by locality weight when localities are weighted.
            let mut targets = Vec::new();
            for g in groups {
                let lw = match (
                    options.locality_weighted && config.is_hash_based(),
                    g.weight,
                ) {
                    (false, _) => 1,
                    (true, Some(w)) => u64::from(w),
                    (true, None) => continue,
                };
                for i in g.endpoints.clone().filter(|&i| take(i)) {
                    targets.push((
                        i as u32,
                        u64::from(endpoints[i].weight) * lw,
                        endpoints[i].address,
                    ));
                }
            }
            return Self {
                localities: None,
                pickers: Box::new([EndpointPicker::new(config, &targets, seed)]),
            };
        }
        let mut pickers = Vec::new();
        let mut weights = Vec::new();
        for g in groups {
            let Some(w) = g.weight else { continue };
            let targets: Vec<HashTarget> = g
                .endpoints
                .clone()
                .filter(|&i| take(i))
                .map(|i| {
                    (
                        i as u32,
                        u64::from(endpoints[i].weight),
                        endpoints[i].address,
                    )
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            // Envoy: effective locality weight = weight × min(1, factor × available share).
            let share = (factor * targets.len() as f64 / g.endpoints.len() as f64).min(1.0);
            let effective = ((f64::from(w) * share).round() as u32).max(1);
            weights.push((pickers.len() as u32, effective));
            pickers.push(EndpointPicker::new(config, &targets, seed));
        }
        if pickers.is_empty() {
            // No weighted locality has endpoints: pool them all rather than fail.
            return Self::new(
                config,
                set,
                groups,
                PickerOptions {
                    locality_weighted: false,
                    ..options
                },
                factor,
                take,
                seed,
            );
        }
        Self {
            localities: Some(WeightedRandom::new(&weights)),
            pickers: pickers.into(),
        }
    }
}

impl EndpointPicker {
    fn new(config: &LbConfig, targets: &[HashTarget], seed: u64) -> Self {
        if let [only] = targets {
            return Self::One(only.0);
        }
        if targets.is_empty() {
            return Self::Empty;
        }
        let weighted: Vec<(u32, u32)> = targets
            .iter()
            .map(|t| (t.0, u32::try_from(t.1).unwrap_or(u32::MAX)))
            .collect();
        match *config {
            LbConfig::RoundRobin => Self::RoundRobin(RoundRobin::new(
                &weighted,
                (seed % targets.len() as u64) as usize,
            )),
            LbConfig::Random => Self::Random(WeightedRandom::new(&weighted)),
            LbConfig::LeastRequest { choice_count } => {
                Self::LeastRequest(LeastRequest::new(&weighted, choice_count))
            }
            LbConfig::PeakEwma { default_rtt, .. } => {
                Self::PeakEwma(PeakEwma::new(&weighted, default_rtt.as_nanos() as f64))
            }
            LbConfig::RingHash {
                min_ring_size,
                max_ring_size,
            } => Self::Ring(RingHash::new(
                targets,
                min_ring_size.min(RING_SIZE_CAP),
                max_ring_size.min(RING_SIZE_CAP),
            )),
            LbConfig::Maglev { table_size } => Self::Maglev(Maglev::new(targets, table_size)),
        }
    }

    #[inline]
    fn pick<R: RngCore + ?Sized>(
        &self,
        hash: Option<u64>,
        loads: &[Arc<EndpointLoad>],
        rng: &mut R,
    ) -> Option<u32> {
        Some(match self {
            Self::Empty => return None,
            Self::One(i) => *i,
            Self::RoundRobin(rr) => rr.pick(),
            Self::Random(w) => w.pick(rng),
            Self::LeastRequest(lr) => lr.pick(loads, rng),
            Self::PeakEwma(pe) => pe.pick(loads, rng),
            Self::Ring(r) => r.pick(hash.unwrap_or_else(|| rng.next_u64())),
            Self::Maglev(m) => m.pick(hash.unwrap_or_else(|| rng.next_u64())),
        })
    }
}

#[cfg(test)]
mod tests;
