//! Outlier detection (Envoy, gRFC A50): consecutive 5xx, consecutive gateway failures,
//! success-rate and failure-percentage ejection, with ejection times that grow with repeats.
//!
//! Pure state driven by the caller's clock: [`OutlierDetector::record`] on every response,
//! [`OutlierDetector::tick`] every `interval`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::error::{FieldError, FieldResult};
use crate::rand_util::below;

/// An unvalidated `outlier_detection`; `None` fields take Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutlierDetectionSpec {
    /// Time between sweeps (default 10 s).
    pub interval: Option<Duration>,
    /// Ejection time for a first ejection (default 30 s).
    pub base_ejection_time: Option<Duration>,
    /// Cap on ejection time (default 300 s, never below the base).
    pub max_ejection_time: Option<Duration>,
    /// Most endpoints ejected at once, in percent (default 10; one may always be ejected).
    pub max_ejection_percent: Option<u32>,
    /// Consecutive 5xx that eject (default 5).
    pub consecutive_5xx: Option<u32>,
    /// Chance in percent that a consecutive-5xx ejection is enforced (default 100).
    pub enforcing_consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 or connection failures that eject (default 5).
    pub consecutive_gateway_failure: Option<u32>,
    /// Chance in percent for gateway-failure ejections (default 0: off).
    pub enforcing_consecutive_gateway_failure: Option<u32>,
    /// Success-rate ejection chance in percent (default 100; 0 turns it off).
    pub enforcing_success_rate: Option<u32>,
    /// Hosts with enough volume needed for success-rate ejection (default 5).
    pub success_rate_minimum_hosts: Option<u32>,
    /// Requests in an interval for a host to count (default 100).
    pub success_rate_request_volume: Option<u32>,
    /// Ejection below mean − stdev × factor / 1000 (default 1900).
    pub success_rate_stdev_factor: Option<u32>,
    /// Failure percentage that ejects (default 85).
    pub failure_percentage_threshold: Option<u32>,
    /// Failure-percentage ejection chance in percent (default 0: off).
    pub enforcing_failure_percentage: Option<u32>,
    /// Hosts with enough volume needed for failure-percentage ejection (default 5).
    pub failure_percentage_minimum_hosts: Option<u32>,
    /// Requests in an interval for a host to count (default 50).
    pub failure_percentage_request_volume: Option<u32>,
}

/// A validated outlier-detection config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetectionConfig {
    /// Time between sweeps.
    pub interval: Duration,
    /// Ejection time for a first ejection.
    pub base_ejection_time: Duration,
    /// Cap on ejection time.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Consecutive 5xx that eject.
    pub consecutive_5xx: u32,
    /// Enforcement chance in percent.
    pub enforcing_consecutive_5xx: u32,
    /// Consecutive gateway failures that eject.
    pub consecutive_gateway_failure: u32,
    /// Enforcement chance in percent.
    pub enforcing_consecutive_gateway_failure: u32,
    /// Enforcement chance in percent.
    pub enforcing_success_rate: u32,
    /// Minimum hosts with volume.
    pub success_rate_minimum_hosts: u32,
    /// Minimum requests per interval.
    pub success_rate_request_volume: u32,
    /// Stdev factor × 1000.
    pub success_rate_stdev_factor: u32,
    /// Failure percentage that ejects.
    pub failure_percentage_threshold: u32,
    /// Enforcement chance in percent.
    pub enforcing_failure_percentage: u32,
    /// Minimum hosts with volume.
    pub failure_percentage_minimum_hosts: u32,
    /// Minimum requests per interval.
    pub failure_percentage_request_volume: u32,
}

impl OutlierDetectionConfig {
    /// Validates a spec: durations positive, percentages at most 100.
    pub fn new(spec: &OutlierDetectionSpec) -> FieldResult<Self> {
        let positive = |d: Option<Duration>, default: u64, field: &str| -> FieldResult<Duration> {
            match d {
                Some(d) if d.is_zero() => Err(FieldError::new(field, "must be greater than 0")),
                Some(d) => Ok(d),
                None => Ok(Duration::from_secs(default)),
            }
        };
        let percent = |v: Option<u32>, default: u32, field: &str| -> FieldResult<u32> {
            match v.unwrap_or(default) {
                p if p > 100 => Err(FieldError::new(field, format!("{p} is greater than 100"))),
                p => Ok(p),
            }
        };
        let base = positive(spec.base_ejection_time, 30, "base_ejection_time")?;
        Ok(Self {
            interval: positive(spec.interval, 10, "interval")?,
            base_ejection_time: base,
            max_ejection_time: positive(spec.max_ejection_time, 300, "max_ejection_time")?.max(base),
            max_ejection_percent: percent(spec.max_ejection_percent, 10, "max_ejection_percent")?,
            consecutive_5xx: spec.consecutive_5xx.unwrap_or(5),
            enforcing_consecutive_5xx: percent(spec.enforcing_consecutive_5xx, 100, "enforcing_consecutive_5xx")?,
            consecutive_gateway_failure: spec.consecutive_gateway_failure.unwrap_or(5),
            enforcing_consecutive_gateway_failure: percent(
                spec.enforcing_consecutive_gateway_failure,
                0,
                "enforcing_consecutive_gateway_failure",
            )?,
            enforcing_success_rate: percent(spec.enforcing_success_rate, 100, "enforcing_success_rate")?,
            success_rate_minimum_hosts: spec.success_rate_minimum_hosts.unwrap_or(5),
            success_rate_request_volume: spec.success_rate_request_volume.unwrap_or(100),
            success_rate_stdev_factor: spec.success_rate_stdev_factor.unwrap_or(1900),
            failure_percentage_threshold: percent(
                spec.failure_percentage_threshold,
                85,
                "failure_percentage_threshold",
            )?,
            enforcing_failure_percentage: percent(
                spec.enforcing_failure_percentage,
                0,
                "enforcing_failure_percentage",
            )?,
            failure_percentage_minimum_hosts: spec.failure_percentage_minimum_hosts.unwrap_or(5),
            failure_percentage_request_volume: spec.failure_percentage_request_volume.unwrap_or(50),
        })
    }
}

/// How one request to an endpoint ended, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response that is not a server error.
    Success,
    /// An HTTP 5xx response (502, 503, 504 also count as gateway failures).
    ServerError(u16),
    /// A locally detected failure: connect failure, reset or timeout (counted as a gateway
    /// failure, as Envoy does without `split_external_local_origin_errors`).
    LocalFailure,
}

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EjectionReason {
    /// Too many consecutive 5xx.
    Consecutive5xx,
    /// Too many consecutive gateway failures.
    ConsecutiveGatewayFailure,
    /// Success rate below the cluster's mean by more than the allowed deviation.
    SuccessRate,
    /// Failure percentage at or above the threshold.
    FailurePercentage,
}

/// A change in an endpoint's ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The endpoint was ejected until the given time.
    Ejected {
        /// The endpoint.
        address: SocketAddr,
        /// Why.
        reason: EjectionReason,
        /// When it returns, at the first sweep after this time.
        until: Instant,
    },
    /// The endpoint returned to service.
    Returned(SocketAddr),
}

#[derive(Debug, Default, Clone)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    successes: u64,
    failures: u64,
    ejected_until: Option<Instant>,
    multiplier: u32,
}

/// Outlier-detection state of one cluster.
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierDetectionConfig,
    hosts: HashMap<SocketAddr, Host>,
    ejected: usize,
}

impl OutlierDetector {
    /// A detector with no hosts.
    pub fn new(config: OutlierDetectionConfig) -> Self {
        Self {
            config,
            hosts: HashMap::new(),
            ejected: 0,
        }
    }

    /// The config.
    pub fn config(&self) -> &OutlierDetectionConfig {
        &self.config
    }

    /// Replaces the config; ejections and counters stay.
    pub fn set_config(&mut self, config: OutlierDetectionConfig) {
        self.config = config;
    }

    /// Syncs the host list with EDS: new hosts start clean, removed hosts are forgotten,
    /// remaining hosts keep their state.
    pub fn set_hosts(&mut self, addresses: impl IntoIterator<Item = SocketAddr>) {
        let mut next = HashMap::new();
        for a in addresses {
            let h = self.hosts.remove(&a).unwrap_or_default();
            next.insert(a, h);
        }
        self.hosts = next;
        self.ejected = self.hosts.values().filter(|h| h.ejected_until.is_some()).count();
    }

    /// Whether `address` is ejected.
    pub fn is_ejected(&self, address: &SocketAddr) -> bool {
        self.hosts.get(address).is_some_and(|h| h.ejected_until.is_some())
    }

    /// The number of ejected hosts.
    pub fn ejected_count(&self) -> usize {
        self.ejected
    }

    fn may_eject(&self) -> bool {
        let total = self.hosts.len();
        self.ejected == 0 && self.config.max_ejection_percent > 0
            || (self.ejected + 1) * 100 <= self.config.max_ejection_percent as usize * total
    }

    fn eject(&mut self, address: SocketAddr, reason: EjectionReason, now: Instant) -> Option<Change> {
        if !self.may_eject() {
            return None;
        }
        let c = self.config;
        let host = self.hosts.get_mut(&address)?;
        if host.ejected_until.is_some() {
            return None;
        }
        host.multiplier += 1;
        let time = c
            .base_ejection_time
            .saturating_mul(host.multiplier)
            .min(c.max_ejection_time);
        let until = now + time;
        host.ejected_until = Some(until);
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        self.ejected += 1;
        Some(Change::Ejected {
            address,
            reason,
            until,
        })
    }

    /// Counts one request's outcome; may eject the host at once (consecutive errors).
    pub fn record<R: RngCore + ?Sized>(
        &mut self,
        address: SocketAddr,
        outcome: Outcome,
        now: Instant,
        rng: &mut R,
    ) -> Option<Change> {
        let c = self.config;
        let host = self.hosts.get_mut(&address)?;
        let (five_xx, gateway) = match outcome {
            Outcome::Success => {
                host.successes += 1;
                host.consecutive_5xx = 0;
                host.consecutive_gateway = 0;
                return None;
            }
            Outcome::ServerError(s) => (true, matches!(s, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        host.failures += 1;
        if host.ejected_until.is_some() {
            return None;
        }
        if five_xx {
            host.consecutive_5xx += 1;
        }
        if gateway {
            host.consecutive_gateway += 1;
        } else {
            host.consecutive_gateway = 0;
        }
        let enforce = |pct: u32, rng: &mut R| pct >= 100 || (pct > 0 && below(rng, 100) < pct);
        if c.consecutive_5xx > 0
            && host.consecutive_5xx >= c.consecutive_5xx
            && enforce(c.enforcing_consecutive_5xx, rng)
        {
            return self.eject(address, EjectionReason::Consecutive5xx, now);
        }
        let host = self.hosts.get_mut(&address)?;
        if c.consecutive_gateway_failure > 0
            && host.consecutive_gateway >= c.consecutive_gateway_failure
            && enforce(c.enforcing_consecutive_gateway_failure, rng)
        {
            return self.eject(address, EjectionReason::ConsecutiveGatewayFailure, now);
        }
        None
    }

    /// The interval sweep: returns hosts whose ejection time has passed, lowers the
    /// multiplier of hosts that stayed in, runs success-rate and failure-percentage ejection
    /// over the interval's counts, and starts a new interval.
    pub fn tick<R: RngCore + ?Sized>(&mut self, now: Instant, rng: &mut R) -> Vec<Change> {
        let c = self.config;
        let mut changes = Vec::new();
        for (addr, h) in self.hosts.iter_mut() {
            match h.ejected_until {
                Some(until) if now >= until => {
                    h.ejected_until = None;
                    self.ejected -= 1;
                    changes.push(Change::Returned(*addr));
                }
                None if h.multiplier > 0 => h.multiplier -= 1,
                _ => {}
            }
        }
        let mut candidates: Vec<(SocketAddr, f64, EjectionReason)> = Vec::new();
        if c.enforcing_success_rate > 0 {
            let rates: Vec<(SocketAddr, f64)> = self
                .volume_hosts(u64::from(c.success_rate_request_volume))
                .map(|(a, h)| (a, h.successes as f64 / (h.successes + h.failures) as f64))
                .collect();
            if rates.len() >= c.success_rate_minimum_hosts.max(1) as usize {
                let n = rates.len() as f64;
                let mean = rates.iter().map(|r| r.1).sum::<f64>() / n;
                let var = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / n;
                let limit = mean - var.sqrt() * f64::from(c.success_rate_stdev_factor) / 1000.0;
                candidates.extend(
                    rates
                        .into_iter()
                        .filter(|r| r.1 < limit)
                        .map(|(a, r)| (a, r, EjectionReason::SuccessRate)),
                );
            }
        }
        if c.enforcing_failure_percentage > 0 {
            let hosts: Vec<(SocketAddr, f64)> = self
                .volume_hosts(u64::from(c.failure_percentage_request_volume))
                .map(|(a, h)| (a, 100.0 * h.failures as f64 / (h.successes + h.failures) as f64))
                .collect();
            if hosts.len() >= c.failure_percentage_minimum_hosts.max(1) as usize {
                candidates.extend(
                    hosts
                        .into_iter()
                        .filter(|h| h.1 >= f64::from(c.failure_percentage_threshold))
                        .map(|(a, p)| (a, -p, EjectionReason::FailurePercentage)),
                );
            }
        }
        // Worst first, so that max_ejection_percent keeps the worst hosts out; deterministic
        // order for ties.
        candidates.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        for (addr, _, reason) in candidates {
            let pct = match reason {
                EjectionReason::SuccessRate => c.enforcing_success_rate,
                _ => c.enforcing_failure_percentage,
            };
            if (pct >= 100 || below(rng, 100) < pct)
                && let Some(change) = self.eject(addr, reason, now)
            {
                changes.push(change);
            }
        }
        for h in self.hosts.values_mut() {
            h.successes = 0;
            h.failures = 0;
        }
        changes
    }

    fn volume_hosts(&self, volume: u64) -> impl Iterator<Item = (SocketAddr, &Host)> {
        self.hosts
            .iter()
            .filter(move |(_, h)| h.ejected_until.is_none() && h.successes + h.failures >= volume.max(1))
            .map(|(a, h)| (*a, h))
    }

    /// The earliest time an ejected host is due back, to schedule the next sweep.
    pub fn next_return(&self) -> Option<Instant> {
        self.hosts.values().filter_map(|h| h.ejected_until).min()
    }
}
