//! Circuit-breaker accounting: try-acquire permits for connections, pending requests, requests
//! and retries of a cluster, released when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// What a permit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerResource {
    /// Open connections (`max_connections`).
    Connections,
    /// Requests waiting for a connection (`max_pending_requests`).
    PendingRequests,
    /// Requests in flight (`max_requests`).
    Requests,
    /// Retries in flight (`max_retries`).
    Retries,
}

impl BreakerResource {
    /// The xDS threshold name.
    pub fn threshold_name(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::PendingRequests => "max_pending_requests",
            Self::Requests => "max_requests",
            Self::Retries => "max_retries",
        }
    }
}

/// An unvalidated `circuit_breakers.thresholds[DEFAULT]`; `None` fields take Envoy's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitBreakerSpec {
    /// Default 1024.
    pub max_connections: Option<u32>,
    /// Default 1024.
    pub max_pending_requests: Option<u32>,
    /// Default 1024 (also gRPC's, A32).
    pub max_requests: Option<u32>,
    /// Default 3.
    pub max_retries: Option<u32>,
}

/// Resolved thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Maximum open connections.
    pub max_connections: u32,
    /// Maximum requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Maximum requests in flight.
    pub max_requests: u32,
    /// Maximum retries in flight.
    pub max_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self::new(&CircuitBreakerSpec::default())
    }
}

impl Thresholds {
    /// Fills Envoy's defaults into a spec. Every value is valid (0 blocks the resource).
    pub fn new(spec: &CircuitBreakerSpec) -> Self {
        Self {
            max_connections: spec.max_connections.unwrap_or(1024),
            max_pending_requests: spec.max_pending_requests.unwrap_or(1024),
            max_requests: spec.max_requests.unwrap_or(1024),
            max_retries: spec.max_retries.unwrap_or(3),
        }
    }

    fn get(&self, r: BreakerResource) -> u32 {
        match r {
            BreakerResource::Connections => self.max_connections,
            BreakerResource::PendingRequests => self.max_pending_requests,
            BreakerResource::Requests => self.max_requests,
            BreakerResource::Retries => self.max_retries,
        }
    }
}

/// A resource that is at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker: {} ({limit}) reached", resource.threshold_name())]
pub struct Overflow {
    /// Which threshold.
    pub resource: BreakerResource,
    /// Its value.
    pub limit: u32,
}

/// The live counters of one cluster, shared across config updates.
#[derive(Debug)]
pub struct CircuitBreaker {
    limits: [AtomicU32; 4],
    in_use: [AtomicU32; 4],
}

fn slot(r: BreakerResource) -> usize {
    match r {
        BreakerResource::Connections => 0,
        BreakerResource::PendingRequests => 1,
        BreakerResource::Requests => 2,
        BreakerResource::Retries => 3,
    }
}

const ALL: [BreakerResource; 4] = [
    BreakerResource::Connections,
    BreakerResource::PendingRequests,
    BreakerResource::Requests,
    BreakerResource::Retries,
];

impl CircuitBreaker {
    /// Counters at zero with these limits.
    pub fn new(thresholds: Thresholds) -> Arc<Self> {
        Arc::new(Self {
            limits: ALL.map(|r| AtomicU32::new(thresholds.get(r))),
            in_use: Default::default(),
        })
    }

    /// Changes the limits; permits already held stay counted (lowering a limit does not
    /// cancel anything in flight, it only refuses new permits).
    pub fn set_thresholds(&self, thresholds: Thresholds) {
        for r in ALL {
            self.limits[slot(r)].store(thresholds.get(r), Ordering::Relaxed);
        }
    }

    /// Permits currently held for `resource`.
    pub fn in_use(&self, resource: BreakerResource) -> u32 {
        self.in_use[slot(resource)].load(Ordering::Relaxed)
    }

    /// Takes a permit, or reports the threshold that is full.
    #[inline]
    pub fn try_acquire(
        self: &Arc<Self>,
        resource: BreakerResource,
    ) -> Result<BreakerPermit, Overflow> {
        let slot = self.take(resource)?;
        Ok(BreakerPermit {
            breaker: self.clone(),
            slot,
        })
    }

    /// Takes a permit that borrows the breaker: for holders that keep the breaker alive
    /// anyway, it saves the shared reference-count updates of [`Self::try_acquire`].
    #[inline]
    pub fn try_acquire_ref(
        &self,
        resource: BreakerResource,
    ) -> Result<BreakerPermitRef<'_>, Overflow> {
        let slot = self.take(resource)?;
        Ok(BreakerPermitRef {
            breaker: self,
            slot,
        })
    }

    #[inline]
    fn take(&self, resource: BreakerResource) -> Result<usize, Overflow> {
        let i = slot(resource);
        // The count first: it takes the cache line for writing, and the limit beside it is
        // then read from the same line.
        let previous = self.in_use[i].fetch_add(1, Ordering::AcqRel);
        let limit = self.limits[i].load(Ordering::Relaxed);
        if previous >= limit {
            self.in_use[i].fetch_sub(1, Ordering::AcqRel);
            return Err(Overflow { resource, limit });
        }
        Ok(i)
    }
}

/// A held permit; dropping it releases the resource.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    slot: usize,
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.breaker.in_use[self.slot].fetch_sub(1, Ordering::AcqRel);
    }
}

/// A held permit borrowing its breaker; dropping it releases the resource.
#[derive(Debug)]
pub struct BreakerPermitRef<'a> {
    breaker: &'a CircuitBreaker,
    slot: usize,
}

impl Drop for BreakerPermitRef<'_> {
    fn drop(&mut self) {
        self.breaker.in_use[self.slot].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_limited_and_released_on_drop() {
        let b = CircuitBreaker::new(Thresholds::new(&CircuitBreakerSpec {
            max_requests: Some(2),
            ..Default::default()
        }));
        let p1 = b.try_acquire(BreakerResource::Requests).unwrap();
        let p2 = b.try_acquire(BreakerResource::Requests).unwrap();
        let overflow = b.try_acquire(BreakerResource::Requests).unwrap_err();
        assert_eq!(
            overflow.to_string(),
            "circuit breaker: max_requests (2) reached"
        );
        assert_eq!(b.in_use(BreakerResource::Requests), 2);
        drop(p1);
        assert_eq!(b.in_use(BreakerResource::Requests), 1);
        assert!(b.try_acquire(BreakerResource::Requests).is_ok());
        // Other resources are independent; Envoy's defaults apply.
        assert_eq!(b.in_use(BreakerResource::Retries), 0);
        let retries: Vec<_> = (0..3)
            .map(|_| b.try_acquire(BreakerResource::Retries).unwrap())
            .collect();
        assert!(b.try_acquire(BreakerResource::Retries).is_err());
        drop(retries);

        // Borrowing permits count against the same limits.
        drop(p2);
        let owned = b.try_acquire(BreakerResource::Requests).unwrap();
        let borrowed = b.try_acquire_ref(BreakerResource::Requests).unwrap();
        assert_eq!(
            b.try_acquire_ref(BreakerResource::Requests)
                .unwrap_err()
                .to_string(),
            "circuit breaker: max_requests (2) reached"
        );
        drop(borrowed);
        assert_eq!(b.in_use(BreakerResource::Requests), 1);
        drop(owned);
        assert_eq!(b.in_use(BreakerResource::Requests), 0);
    }

    #[test]
    fn lowering_a_limit_keeps_what_is_in_flight() {
        let b = CircuitBreaker::new(Thresholds::default());
        let held: Vec<_> = (0..5)
            .map(|_| b.try_acquire(BreakerResource::Connections).unwrap())
            .collect();
        b.set_thresholds(Thresholds::new(&CircuitBreakerSpec {
            max_connections: Some(3),
            ..Default::default()
        }));
        assert_eq!(b.in_use(BreakerResource::Connections), 5);
        assert!(b.try_acquire(BreakerResource::Connections).is_err());
        drop(held);
        assert_eq!(b.in_use(BreakerResource::Connections), 0);
        assert!(b.try_acquire(BreakerResource::Connections).is_ok());
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let b = CircuitBreaker::new(Thresholds::new(&CircuitBreakerSpec {
            max_pending_requests: Some(10),
            ..Default::default()
        }));
        let max_seen = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Ok(p) = b.try_acquire(BreakerResource::PendingRequests) {
                            max_seen.fetch_max(
                                b.in_use(BreakerResource::PendingRequests),
                                Ordering::Relaxed,
                            );
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(max_seen.load(Ordering::Relaxed) <= 10);
        assert_eq!(b.in_use(BreakerResource::PendingRequests), 0);
    }
}
