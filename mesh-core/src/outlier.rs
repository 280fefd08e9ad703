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
                Some(d) => Ok(crate::time::capped(d)),
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
            max_ejection_time: positive(spec.max_ejection_time, 300, "max_ejection_time")?
                .max(base),
            max_ejection_percent: percent(spec.max_ejection_percent, 10, "max_ejection_percent")?,
            consecutive_5xx: spec.consecutive_5xx.unwrap_or(5),
            enforcing_consecutive_5xx: percent(
                spec.enforcing_consecutive_5xx,
                100,
                "enforcing_consecutive_5xx",
            )?,
            consecutive_gateway_failure: spec.consecutive_gateway_failure.unwrap_or(5),
            enforcing_consecutive_gateway_failure: percent(
                spec.enforcing_consecutive_gateway_failure,
                0,
                "enforcing_consecutive_gateway_failure",
            )?,
            enforcing_success_rate: percent(
                spec.enforcing_success_rate,
                100,
                "enforcing_success_rate",
            )?,
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
        self.ejected = self
            .hosts
            .values()
            .filter(|h| h.ejected_until.is_some())
            .count();
    }

    /// Whether `address` is ejected.
    pub fn is_ejected(&self, address: &SocketAddr) -> bool {
        self.hosts
            .get(address)
            .is_some_and(|h| h.ejected_until.is_some())
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

    fn eject(
        &mut self,
        address: SocketAddr,
        reason: EjectionReason,
        now: Instant,
    ) -> Option<Change> {
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
        // A config can ask for an ejection longer than `Instant` can represent from now.
        let until = crate::time::after(now, time);
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
                .map(|(a, h)| {
                    (
                        a,
                        100.0 * h.failures as f64 / (h.successes + h.failures) as f64,
                    )
                })
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
            .filter(move |(_, h)| {
                h.ejected_until.is_none() && h.successes + h.failures >= volume.max(1)
            })
            .map(|(a, h)| (*a, h))
    }

    /// The earliest time an ejected host is due back, to schedule the next sweep.
    pub fn next_return(&self) -> Option<Instant> {
        self.hosts.values().filter_map(|h| h.ejected_until).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn detector(spec: OutlierDetectionSpec, hosts: u8) -> OutlierDetector {
        let mut d = OutlierDetector::new(OutlierDetectionConfig::new(&spec).unwrap());
        d.set_hosts((1..=hosts).map(addr));
        d
    }

    /// The seed talks' policy: consecutiveErrors 1, interval 5s, baseEjectionTime 5m, maxEjectionPercent 100.
    fn istio_example() -> OutlierDetectionSpec {
        OutlierDetectionSpec {
            consecutive_5xx: Some(1),
            interval: Some(Duration::from_secs(5)),
            base_ejection_time: Some(Duration::from_secs(300)),
            max_ejection_percent: Some(100),
            ..Default::default()
        }
    }

    #[test]
    fn consecutive_errors_eject_until_the_first_sweep_after_the_ejection_time() {
        let mut d = detector(istio_example(), 3);
        let mut r = SmallRng::seed_from_u64(0);
        let t0 = Instant::now();
        assert_eq!(d.record(addr(1), Outcome::Success, t0, &mut r), None);
        let change = d.record(addr(1), Outcome::ServerError(500), t0, &mut r);
        assert_eq!(
            change,
            Some(Change::Ejected {
                address: addr(1),
                reason: EjectionReason::Consecutive5xx,
                until: t0 + Duration::from_secs(300)
            })
        );
        assert!(d.is_ejected(&addr(1)));
        // Sweeps every 5 s; still out at 295 s, back at the 300 s sweep.
        let mut t = t0;
        while t < t0 + Duration::from_secs(295) {
            t += Duration::from_secs(5);
            let changes = d.tick(t, &mut r);
            if t < t0 + Duration::from_secs(300) {
                assert!(changes.is_empty(), "at {:?}", t - t0);
            }
        }
        assert!(d.is_ejected(&addr(1)));
        assert_eq!(
            d.tick(t0 + Duration::from_secs(300), &mut r),
            vec![Change::Returned(addr(1))]
        );
        assert!(!d.is_ejected(&addr(1)));
        // A second ejection soon after lasts twice as long (capped by max_ejection_time = 300 s).
        let t1 = t0 + Duration::from_secs(301);
        match d.record(addr(1), Outcome::ServerError(503), t1, &mut r) {
            Some(Change::Ejected { until, .. }) => assert_eq!(until - t1, Duration::from_secs(300)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ejection_time_grows_and_the_multiplier_decays() {
        let spec = OutlierDetectionSpec {
            consecutive_5xx: Some(2),
            interval: Some(Duration::from_secs(1)),
            base_ejection_time: Some(Duration::from_secs(10)),
            max_ejection_time: Some(Duration::from_secs(25)),
            max_ejection_percent: Some(100),
            ..Default::default()
        };
        let mut d = detector(spec, 2);
        let mut r = SmallRng::seed_from_u64(0);
        let mut t = Instant::now();
        let mut eject = |d: &mut OutlierDetector, t: Instant| {
            d.record(addr(1), Outcome::ServerError(500), t, &mut r);
            match d.record(addr(1), Outcome::ServerError(500), t, &mut r) {
                Some(Change::Ejected { until, .. }) => until - t,
                other => panic!("{other:?}"),
            }
        };
        let mut r2 = SmallRng::seed_from_u64(1);
        for expected in [10, 20, 25] {
            assert_eq!(eject(&mut d, t), Duration::from_secs(expected));
            t += Duration::from_secs(expected);
            assert_eq!(d.tick(t, &mut r2), vec![Change::Returned(addr(1))]);
        }
        // Three healthy sweeps bring the multiplier from 3 to 0: base time again.
        for _ in 0..3 {
            t += Duration::from_secs(1);
            d.tick(t, &mut r2);
        }
        assert_eq!(eject(&mut d, t), Duration::from_secs(10));
    }

    #[test]
    fn max_ejection_percent_is_respected_but_one_may_always_go() {
        let spec = OutlierDetectionSpec {
            consecutive_5xx: Some(1),
            ..Default::default()
        };
        let mut d = detector(spec, 3);
        let mut r = SmallRng::seed_from_u64(0);
        let t = Instant::now();
        assert!(
            d.record(addr(1), Outcome::ServerError(500), t, &mut r)
                .is_some()
        );
        assert!(
            d.record(addr(2), Outcome::ServerError(500), t, &mut r)
                .is_none()
        );
        assert_eq!(d.ejected_count(), 1);
    }

    #[test]
    fn gateway_failures_need_enforcement() {
        let spec = OutlierDetectionSpec {
            consecutive_5xx: Some(10),
            consecutive_gateway_failure: Some(2),
            max_ejection_percent: Some(100),
            ..Default::default()
        };
        let mut r = SmallRng::seed_from_u64(0);
        let t = Instant::now();
        let mut d = detector(spec, 2);
        for _ in 0..5 {
            assert!(
                d.record(addr(1), Outcome::LocalFailure, t, &mut r)
                    .is_none()
            );
        }
        let mut d = detector(
            OutlierDetectionSpec {
                enforcing_consecutive_gateway_failure: Some(100),
                ..spec
            },
            2,
        );
        d.record(addr(1), Outcome::ServerError(502), t, &mut r);
        match d.record(addr(1), Outcome::LocalFailure, t, &mut r) {
            Some(Change::Ejected { reason, .. }) => {
                assert_eq!(reason, EjectionReason::ConsecutiveGatewayFailure)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn success_rate_and_failure_percentage_sweeps() {
        let mut r = SmallRng::seed_from_u64(0);
        let t = Instant::now();
        let load = |d: &mut OutlierDetector, r: &mut SmallRng, bad_share: u32| {
            for host in 1..=6u8 {
                for i in 0..200u32 {
                    let fail = host == 1 && i % 100 < bad_share;
                    let o = if fail {
                        Outcome::ServerError(500)
                    } else {
                        Outcome::Success
                    };
                    d.record(addr(host), o, t, r);
                }
            }
        };
        let base = OutlierDetectionSpec {
            consecutive_5xx: Some(0),
            max_ejection_percent: Some(50),
            ..Default::default()
        };
        let mut d = detector(base, 6);
        load(&mut d, &mut r, 30);
        let changes = d.tick(t + Duration::from_secs(10), &mut r);
        assert!(
            matches!(changes[..], [Change::Ejected { address, reason: EjectionReason::SuccessRate, .. }] if address == addr(1)),
            "{changes:?}"
        );
        // Too few hosts with volume: no success-rate ejection.
        let mut d = detector(base, 6);
        for i in 0..200u32 {
            let o = if i % 2 == 0 {
                Outcome::ServerError(500)
            } else {
                Outcome::Success
            };
            d.record(addr(1), o, t, &mut r);
        }
        assert!(d.tick(t + Duration::from_secs(10), &mut r).is_empty());
        // Failure percentage: off by default, ejects at ≥ threshold when enforced.
        let fp = OutlierDetectionSpec {
            enforcing_success_rate: Some(0),
            enforcing_failure_percentage: Some(100),
            failure_percentage_threshold: Some(90),
            ..base
        };
        let mut d = detector(fp, 6);
        load(&mut d, &mut r, 89);
        assert!(d.tick(t + Duration::from_secs(10), &mut r).is_empty());
        let mut d = detector(fp, 6);
        load(&mut d, &mut r, 90);
        let changes = d.tick(t + Duration::from_secs(10), &mut r);
        assert!(
            matches!(
                changes[..],
                [Change::Ejected {
                    reason: EjectionReason::FailurePercentage,
                    ..
                }]
            ),
            "{changes:?}"
        );
    }

    #[test]
    fn validation_and_host_sync() {
        let e = OutlierDetectionConfig::new(&OutlierDetectionSpec {
            max_ejection_percent: Some(101),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e,
            FieldError::new("max_ejection_percent", "101 is greater than 100")
        );
        let e = OutlierDetectionConfig::new(&OutlierDetectionSpec {
            interval: Some(Duration::ZERO),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e, FieldError::new("interval", "must be greater than 0"));
        let c = OutlierDetectionConfig::new(&OutlierDetectionSpec {
            base_ejection_time: Some(Duration::from_secs(600)),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            c.max_ejection_time,
            Duration::from_secs(600),
            "never below the base"
        );

        let mut d = detector(istio_example(), 3);
        let mut r = SmallRng::seed_from_u64(0);
        d.record(addr(2), Outcome::ServerError(500), Instant::now(), &mut r);
        d.set_hosts([addr(2), addr(3), addr(4)]);
        assert!(d.is_ejected(&addr(2)), "kept hosts keep their state");
        assert_eq!(d.ejected_count(), 1);
        d.set_hosts([addr(3)]);
        assert_eq!(d.ejected_count(), 0);
        assert_eq!(
            d.record(addr(9), Outcome::ServerError(500), Instant::now(), &mut r),
            None
        );
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(128))]

        /// Whatever the timing, a host comes back at the first sweep at or after
        /// `ejected + min(base × n, max)`, and never before.
        #[test]
        fn ejections_follow_the_schedule(
            interval_ms in 100u64..5_000,
            base_ms in 100u64..20_000,
            errors_at in proptest::collection::vec(0u64..60_000, 1..30),
        ) {
            let spec = OutlierDetectionSpec {
                consecutive_5xx: Some(1),
                interval: Some(Duration::from_millis(interval_ms)),
                base_ejection_time: Some(Duration::from_millis(base_ms)),
                max_ejection_percent: Some(100),
                ..Default::default()
            };
            let mut d = detector(spec, 1);
            let mut r = SmallRng::seed_from_u64(0);
            let t0 = Instant::now();
            let mut errors_at = errors_at;
            errors_at.sort_unstable();
            let mut errors = errors_at.into_iter().peekable();
            let mut until: Option<Instant> = None;
            let mut sweep = 0u64;
            while sweep < 200_000 {
                let next_sweep = sweep + interval_ms;
                while let Some(&e) = errors.peek().filter(|&&e| e < next_sweep) {
                    errors.next();
                    let at = t0 + Duration::from_millis(e);
                    let change = d.record(addr(1), Outcome::ServerError(500), at, &mut r);
                    match (until, change) {
                        (None, Some(Change::Ejected { until: u, .. })) => {
                            prop_assert!(u > at);
                            until = Some(u);
                        }
                        (Some(_), None) => {}
                        (u, c) => prop_assert!(false, "ejected until {:?}, change {:?}", u, c),
                    }
                }
                sweep = next_sweep;
                let now = t0 + Duration::from_millis(sweep);
                let changes = d.tick(now, &mut r);
                match until {
                    Some(u) if now >= u => {
                        prop_assert_eq!(changes, vec![Change::Returned(addr(1))]);
                        until = None;
                    }
                    _ => prop_assert!(changes.is_empty()),
                }
                prop_assert_eq!(d.is_ejected(&addr(1)), until.is_some());
                if errors.peek().is_none() && until.is_none() {
                    break;
                }
            }
        }
    }
}
