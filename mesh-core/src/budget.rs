//! Retry budget: retries may add at most a share of recent requests, plus a minimum rate.
//!
//! Not `tower::retry::budget::TpsBudget`: that reads `std::time::Instant::now()` itself, so a
//! test cannot drive it with a paused clock, and it panics on out-of-range settings. This one
//! takes the time from the caller and validates its config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{FieldError, FieldResult};

/// The window is kept as this many buckets.
const BUCKETS: usize = 10;

/// An unvalidated retry budget; `None` fields take their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RetryBudgetSpec {
    /// Retries allowed as a percentage of requests in the window (default 20, 0..=1000).
    pub retry_percent: Option<f64>,
    /// Retries always allowed per second regardless of traffic (default 10).
    pub min_retries_per_second: Option<u32>,
    /// How far back requests and retries count (default 10 s, 1 s..=60 s).
    pub window: Option<Duration>,
}

/// A validated retry budget config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    ratio: f64,
    min_per_second: u32,
    window: Duration,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

impl RetryBudgetConfig {
    /// Validates a spec.
    pub fn new(spec: &RetryBudgetSpec) -> FieldResult<Self> {
        let d = Self::default();
        let percent = spec.retry_percent.unwrap_or(d.ratio * 100.0);
        if !(0.0..=1000.0).contains(&percent) {
            return Err(FieldError::new(
                "retry_percent",
                format!("{percent} is not in 0..=1000"),
            ));
        }
        let window = spec.window.unwrap_or(d.window);
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
            return Err(FieldError::new(
                "window",
                format!("{window:?} is not between 1s and 60s"),
            ));
        }
        Ok(Self {
            ratio: percent / 100.0,
            min_per_second: spec.min_retries_per_second.unwrap_or(d.min_per_second),
            window,
        })
    }

    /// Retries allowed per request (0.2 for 20%).
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Retries always allowed per second.
    pub fn min_per_second(&self) -> u32 {
        self.min_per_second
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Retries allowed in any window regardless of traffic.
    pub fn reserve(&self) -> f64 {
        f64::from(self.min_per_second) * self.window.as_secs_f64()
    }
}

#[derive(Debug, Default)]
struct Bucket {
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A retry budget for one cluster (or route), shared by its requests.
///
/// Invariant: for every retry it allows, the window of ten buckets ending with that
/// retry's bucket holds at most `ratio × requests + reserve` retries, itself included.
///
/// Deposits (one per request) take no lock while their bucket is current; bucket resets and
/// withdrawals (one per retry) are serialized by a mutex.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    bucket_nanos: u64,
    origin: OnceLock<Instant>,
    buckets: [Bucket; BUCKETS],
    lock: Mutex<()>,
}

impl RetryBudget {
    /// An empty budget.
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self {
            bucket_nanos: (config.window.as_nanos() / BUCKETS as u128).max(1) as u64,
            config,
            origin: OnceLock::new(),
            buckets: Default::default(),
            lock: Mutex::new(()),
        }
    }

    /// The config.
    pub fn config(&self) -> &RetryBudgetConfig {
        &self.config
    }

    fn epoch(&self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        (now.saturating_duration_since(origin).as_nanos() / u128::from(self.bucket_nanos)) as u64
    }

    /// The bucket for `epoch`, cleared first if it still holds an older epoch's counts.
    fn bucket(&self, epoch: u64) -> &Bucket {
        let b = &self.buckets[(epoch % BUCKETS as u64) as usize];
        if b.epoch.load(Ordering::Acquire) < epoch {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            if b.epoch.load(Ordering::Acquire) < epoch {
                b.requests.store(0, Ordering::Relaxed);
                b.retries.store(0, Ordering::Relaxed);
                b.epoch.store(epoch, Ordering::Release);
            }
        }
        b
    }

    /// Records a first attempt (not a retry).
    pub fn deposit(&self, now: Instant) {
        self.bucket(self.epoch(now))
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget if it allows one, and records it.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let current = self.bucket(epoch);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            let e = b.epoch.load(Ordering::Acquire);
            if e <= epoch && epoch - e < BUCKETS as u64 {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        if (retries + 1) as f64 <= self.config.ratio * requests as f64 + self.config.reserve() {
            current.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(percent: f64, min: u32, window_s: u64) -> RetryBudget {
        RetryBudget::new(
            RetryBudgetConfig::new(&RetryBudgetSpec {
                retry_percent: Some(percent),
                min_retries_per_second: Some(min),
                window: Some(Duration::from_secs(window_s)),
            })
            .unwrap(),
        )
    }

    #[test]
    fn validation() {
        let e = RetryBudgetConfig::new(&RetryBudgetSpec {
            retry_percent: Some(-1.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e, FieldError::new("retry_percent", "-1 is not in 0..=1000"));
        let e = RetryBudgetConfig::new(&RetryBudgetSpec {
            retry_percent: Some(f64::NAN),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field, "retry_percent");
        let e = RetryBudgetConfig::new(&RetryBudgetSpec {
            window: Some(Duration::from_millis(10)),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e,
            FieldError::new("window", "10ms is not between 1s and 60s")
        );
        let d = RetryBudgetConfig::default();
        assert_eq!(
            (d.ratio(), d.min_per_second(), d.reserve()),
            (0.2, 10, 100.0)
        );
    }

    #[test]
    fn reserve_then_ratio() {
        let b = budget(20.0, 1, 10);
        let t = Instant::now();
        // With no traffic, only the reserve: 1/s × 10 s.
        assert_eq!((0..50).filter(|_| b.try_withdraw(t)).count(), 10);
        // 100 requests buy 20 more.
        for _ in 0..100 {
            b.deposit(t);
        }
        assert_eq!((0..50).filter(|_| b.try_withdraw(t)).count(), 20);
        // A window later everything has expired and the reserve is back.
        let later = t + Duration::from_secs(10);
        assert_eq!((0..50).filter(|_| b.try_withdraw(later)).count(), 10);
    }

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(128))]

        /// For every allowed retry, the ten buckets ending with its own hold at most
        /// ratio × requests + reserve retries.
        #[test]
        fn never_allows_more_than_its_share(
            events in proptest::collection::vec((0u64..3000, any::<bool>()), 1..2000),
            percent in 0.0f64..100.0,
            min in 0u32..5,
        ) {
            let b = budget(percent, min, 1);
            let t0 = Instant::now();
            let mut events = events;
            events.sort_by_key(|e| e.0);
            // The budget's buckets start at its first event.
            let first = events[0].0;
            // Per 100 ms bucket: (requests, allowed retries).
            let mut per_bucket = std::collections::BTreeMap::<u64, (u64, u64)>::new();
            for (ms, is_retry) in events {
                let now = t0 + Duration::from_millis(ms);
                let e = per_bucket.entry((ms - first) / 100).or_default();
                if is_retry {
                    if b.try_withdraw(now) {
                        e.1 += 1;
                    }
                } else {
                    b.deposit(now);
                    e.0 += 1;
                }
            }
            let with_retries: Vec<u64> = per_bucket.iter().filter(|(_, v)| v.1 > 0).map(|(k, _)| *k).collect();
            for end in with_retries {
                let (mut req, mut ret) = (0u64, 0u64);
                for (_, (q, r)) in per_bucket.range(end.saturating_sub(9)..=end) {
                    req += q;
                    ret += r;
                }
                let limit = percent / 100.0 * req as f64 + f64::from(min);
                prop_assert!(ret as f64 <= limit + 1e-9, "window ending {}: {} retries for {} requests", end, ret, req);
            }
        }
    }
}
