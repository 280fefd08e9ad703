//! Per-endpoint load that outlives pickers: in-flight requests and a peak-EWMA of latency.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load of one endpoint, shared by every picker built over it.
///
/// The owner keeps one per endpoint address across EDS updates, so that counts of requests
/// already in flight survive a picker rebuild.
#[derive(Debug)]
pub struct EndpointLoad {
    active: AtomicU32,
    /// The current latency estimate in nanoseconds, as `f64` bits; 0 before any sample.
    ewma_bits: AtomicU64,
    last_sample: Mutex<Option<Instant>>,
}

impl Default for EndpointLoad {
    fn default() -> Self {
        Self {
            active: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(0f64.to_bits()),
            last_sample: Mutex::new(None),
        }
    }
}

impl EndpointLoad {
    /// A fresh load: nothing in flight, no latency sample.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Requests currently in flight.
    #[inline]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest { load: self.clone() }
    }

    /// The latency estimate, or `None` before the first sample.
    pub fn latency_estimate(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    #[inline]
    pub(crate) fn estimate_ns(&self, default_rtt_ns: f64) -> f64 {
        let ns = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        if ns > 0.0 { ns } else { default_rtt_ns }
    }

    /// Records a response latency. Peak-sensitive, as linkerd2-proxy: a sample above the
    /// estimate replaces it at once; otherwise the estimate decays towards the sample with
    /// weight `exp(-elapsed / decay)` for the time since the previous sample.
    pub fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let sample = rtt.as_nanos() as f64;
        let mut last = self.last_sample.lock().unwrap_or_else(|p| p.into_inner());
        let current = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let next = match *last {
            _ if current <= 0.0 || sample > current => sample,
            Some(prev) => {
                let elapsed = now.saturating_duration_since(prev).as_nanos() as f64;
                let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
                current * w + sample * (1.0 - w)
            }
            None => sample,
        };
        *last = Some(now);
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }
}

/// An in-flight request on an endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct ActiveRequest {
    load: Arc<EndpointLoad>,
}

impl ActiveRequest {
    /// The endpoint's load.
    pub fn load(&self) -> &Arc<EndpointLoad> {
        &self.load
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.load.active.fetch_sub(1, Ordering::Relaxed);
    }
}
