//! Per-cluster runtime state that outlives snapshots: picker, in-flight loads, circuit
//! breaker, retry budget and outlier detection.

use std::collections::HashMap;
use std::net::SocketAddr;
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
    outlier: Option<Mutex<Outlier>>,
    seed: u64,
    /// Each endpoint as a URI authority, built once rather than per request.
    authorities: Box<[http::uri::Authority]>,
}

struct Outlier {
    detector: OutlierDetector,
    next_sweep: Instant,
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
                    let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::replace(&mut o.detector, OutlierDetector::new(*cfg))
                })
                .unwrap_or_else(|| OutlierDetector::new(*cfg));
            detector.set_config(*cfg);
            detector.set_hosts(endpoints.endpoints().iter().map(|e| e.address));
            Mutex::new(Outlier {
                detector,
                next_sweep: now + cfg.interval,
            })
        });
        let seed = rand::random();
        let authorities = endpoints
            .endpoints()
            .iter()
            .map(|e| {
                http::uri::Authority::try_from(e.address.to_string().as_str())
                    .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
            })
            .collect();
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
            authorities,
        };
        state.rebuild_picker();
        state
    }

    /// The current picker.
    pub fn picker(&self) -> Arc<ClusterPicker> {
        self.picker
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn rebuild_picker(&self) {
        let ejected: Vec<bool> = match &self.outlier {
            Some(o) => {
                let o = o.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Feeds one attempt's outcome to outlier detection, sweeping when an interval has
    /// passed; rebuilds the picker when an endpoint is ejected or returns.
    pub fn record(&self, address: SocketAddr, outcome: Outcome, now: Instant) {
        let Some(o) = &self.outlier else { return };
        let changed = {
            let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
            let mut rng = rand::rng();
            let mut changed = o.detector.record(address, outcome, now, &mut rng).is_some();
            if now >= o.next_sweep {
                changed |= !o.detector.tick(now, &mut rng).is_empty();
                o.next_sweep = now + o.detector.config().interval;
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
            let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
            if now < o.next_sweep {
                return;
            }
            o.next_sweep = now + o.detector.config().interval;
            !o.detector.tick(now, &mut rand::rng()).is_empty()
        };
        if changed {
            self.rebuild_picker();
        }
    }

    /// Endpoint `i` as a URI authority.
    pub fn authority(&self, i: usize) -> &http::uri::Authority {
        &self.authorities[i]
    }

    /// The load of endpoint `i`.
    pub fn load(&self, i: usize) -> &Arc<EndpointLoad> {
        &self.loads[i]
    }
}
