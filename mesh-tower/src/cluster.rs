//! Per-cluster runtime state that outlives snapshots: picker, in-flight loads, circuit
//! breaker, retry budget and outlier detection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use mesh_core::{
    CircuitBreaker, Cluster, ClusterPicker, EndpointLoad, EndpointSet, Outcome, OutlierDetector,
    RetryBudget, RetryBudgetConfig,
};

/// Runtime state of one cluster.
pub struct ClusterState {
    /// The cluster config this state was built for.
    pub cluster: Arc<Cluster>,
    /// The endpoints it was built for.
    pub endpoints: Arc<EndpointSet>,
    picker: RwLock<Arc<ClusterPicker>>,
    loads: Arc<[Arc<EndpointLoad>]>,
    /// Circuit-breaker counters.
    pub breaker: Arc<CircuitBreaker>,
    /// Retry budget.
    pub budget: Arc<RetryBudget>,
    outlier: Option<OutlierState>,
    seed: u64,
}

struct Outlier {
    detector: OutlierDetector,
    next_sweep: Instant,
}

/// Outlier detection plus what lets a success skip the lock: when no rate-based ejection is
/// enforced, a success only matters to an endpoint with a failure streak to reset, or when a
/// sweep is due.
struct OutlierState {
    inner: Mutex<Outlier>,
    needs_counts: bool,
    /// Per endpoint: a failure was recorded since its last success.
    streak: Box<[AtomicBool]>,
    base: Instant,
    /// `next_sweep` as nanoseconds after `base`.
    next_sweep_nanos: AtomicU64,
}

impl ClusterState {
    /// Builds state for a cluster, carrying over what `previous` had for the same endpoints
    /// (in-flight counts, breaker counters, budget, ejections).
    pub fn new(
        cluster: Arc<Cluster>,
        endpoints: Arc<EndpointSet>,
        previous: Option<&ClusterState>,
        budget_override: Option<RetryBudgetConfig>,
        now: Instant,
    ) -> Self {
        let by_addr: HashMap<SocketAddr, Arc<EndpointLoad>> = previous
            .map(|p| {
                p.endpoints
                    .endpoints()
                    .iter()
                    .map(|e| e.address)
                    .zip(p.loads.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let loads: Arc<[Arc<EndpointLoad>]> = endpoints
            .endpoints()
            .iter()
            .map(|e| {
                by_addr
                    .get(&e.address)
                    .cloned()
                    .unwrap_or_else(EndpointLoad::new)
            })
            .collect();
        let breaker = match previous {
            Some(p) => {
                p.breaker.set_thresholds(*cluster.thresholds());
                p.breaker.clone()
            }
            None => CircuitBreaker::new(*cluster.thresholds()),
        };
        let budget_config = budget_override.unwrap_or(*cluster.retry_budget());
        let budget = match previous {
            Some(p) if *p.budget.config() == budget_config => p.budget.clone(),
            _ => Arc::new(RetryBudget::new(budget_config)),
        };
        let outlier = cluster.outlier_detection().map(|cfg| {
            let mut detector = previous
                .and_then(|p| p.outlier.as_ref())
                .map(|o| {
                    let mut o = o.inner.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::replace(&mut o.detector, OutlierDetector::new(*cfg))
                })
                .unwrap_or_else(|| OutlierDetector::new(*cfg));
            detector.set_config(*cfg);
            detector.set_hosts(endpoints.endpoints().iter().map(|e| e.address));
            OutlierState {
                inner: Mutex::new(Outlier {
                    detector,
                    next_sweep: mesh_core::time::after(now, cfg.interval),
                }),
                needs_counts: cfg.enforcing_success_rate > 0
                    || cfg.enforcing_failure_percentage > 0,
                // Streaks may have been carried over: each endpoint's first success clears it.
                streak: endpoints
                    .endpoints()
                    .iter()
                    .map(|_| AtomicBool::new(true))
                    .collect(),
                base: now,
                next_sweep_nanos: AtomicU64::new(mesh_core::time::nanos(cfg.interval)),
            }
        });
        let seed = rand::random();
        let state = Self {
            picker: RwLock::new(Arc::new(ClusterPicker::new(
                cluster.lb(),
                &endpoints,
                cluster.picker_options(),
                |_| true,
                Some(loads.clone()),
                seed,
            ))),
            cluster,
            endpoints,
            loads,
            breaker,
            budget,
            outlier,
            seed,
        };
        state.rebuild_picker();
        state
    }

    /// Picks an endpoint with the current picker, avoiding the endpoints in `avoid` where
    /// possible (up to three more draws; hash-based picks are never redrawn).
    pub fn pick(
        &self,
        hash: Option<u64>,
        avoid: &[usize],
        rng: &mut impl rand::RngCore,
    ) -> Option<usize> {
        // Picked under the read lock rather than with a clone of the picker's `Arc`: two
        // fewer updates of a counter every thread shares, per attempt.
        let picker = self.picker.read().unwrap_or_else(|e| e.into_inner());
        let mut pick = picker.pick(hash, rng);
        for _ in 0..3 {
            match pick {
                Some(i) if hash.is_none() && avoid.contains(&i) => pick = picker.pick(None, rng),
                _ => break,
            }
        }
        pick
    }

    /// Each endpoint's address and whether outlier detection has ejected it now.
    pub fn ejections(&self) -> Vec<(SocketAddr, bool)> {
        let o = self
            .outlier
            .as_ref()
            .map(|o| o.inner.lock().unwrap_or_else(|e| e.into_inner()));
        self.endpoints
            .endpoints()
            .iter()
            .map(|e| {
                let ejected = o
                    .as_ref()
                    .is_some_and(|o| o.detector.is_ejected(&e.address));
                (e.address, ejected)
            })
            .collect()
    }

    fn rebuild_picker(&self) {
        let ejected: Vec<bool> = match &self.outlier {
            Some(o) => {
                let o = o.inner.lock().unwrap_or_else(|e| e.into_inner());
                self.endpoints
                    .endpoints()
                    .iter()
                    .map(|e| o.detector.is_ejected(&e.address))
                    .collect()
            }
            None => Vec::new(),
        };
        let picker = ClusterPicker::new(
            self.cluster.lb(),
            &self.endpoints,
            self.cluster.picker_options(),
            |i| !ejected.get(i).copied().unwrap_or(false),
            Some(self.loads.clone()),
            self.seed,
        );
        *self.picker.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(picker);
    }

    /// Feeds endpoint `i`'s attempt outcome to outlier detection, sweeping when an interval
    /// has passed; rebuilds the picker when an endpoint is ejected or returns.
    pub fn record(&self, i: usize, address: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(o) = &self.outlier else { return };
        let success = outcome == Outcome::Success;
        let since = mesh_core::time::nanos(now.saturating_duration_since(o.base));
        if success
            && !o.needs_counts
            && !o.streak[i].load(Ordering::Relaxed)
            && since < o.next_sweep_nanos.load(Ordering::Relaxed)
        {
            return;
        }
        o.streak[i].store(!success, Ordering::Relaxed);
        let changed = {
            let mut inner = o.inner.lock().unwrap_or_else(|e| e.into_inner());
            let mut rng = rand::rng();
            let mut changed = inner
                .detector
                .record(address, outcome, now, &mut rng)
                .is_some();
            if now >= inner.next_sweep {
                changed |= !inner.detector.tick(now, &mut rng).is_empty();
                inner.next_sweep = mesh_core::time::after(now, inner.detector.config().interval);
                o.next_sweep_nanos.store(
                    mesh_core::time::nanos(inner.next_sweep.saturating_duration_since(o.base)),
                    Ordering::Relaxed,
                );
            }
            changed
        };
        if changed {
            self.rebuild_picker();
        }
    }

    /// Sweeps if an interval has passed (so that ejected endpoints come back even when no
    /// response is recorded).
    pub fn maybe_sweep(&self, now: Instant) {
        let Some(o) = &self.outlier else { return };
        let changed = {
            let mut inner = o.inner.lock().unwrap_or_else(|e| e.into_inner());
            if now < inner.next_sweep {
                return;
            }
            inner.next_sweep = mesh_core::time::after(now, inner.detector.config().interval);
            o.next_sweep_nanos.store(
                mesh_core::time::nanos(inner.next_sweep.saturating_duration_since(o.base)),
                Ordering::Relaxed,
            );
            !inner.detector.tick(now, &mut rand::rng()).is_empty()
        };
        if changed {
            self.rebuild_picker();
        }
    }

    /// The load of endpoint `i`.
    pub fn load(&self, i: usize) -> &Arc<EndpointLoad> {
        &self.loads[i]
    }
}
