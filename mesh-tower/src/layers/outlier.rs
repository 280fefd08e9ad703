//! Outlier detection as a standalone layer, for endpoints balanced by any tower balancer.
//!
//! Every endpoint's service is wrapped with the layer for its address; all of them share one
//! [`OutlierDetection`]. An ejected endpoint reports not ready from `poll_ready` until it
//! returns, which is how tower's balancers (`tower::balance::p2c`) skip a service, and its
//! in-flight requests finish undisturbed.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::Response;
use mesh_core::{Outcome, OutlierDetectionConfig, OutlierDetector};
use tower::{Layer, Service};

/// Outlier-detection state shared by the endpoints of one backend.
#[derive(Clone)]
pub struct OutlierDetection {
    shared: Arc<Mutex<Detection>>,
}

struct Detection {
    detector: OutlierDetector,
    hosts: Vec<SocketAddr>,
    next_sweep: Instant,
}

impl Detection {
    /// Runs the interval sweep when it is due: ejections end, rate-based ejections happen.
    fn sweep_if_due(&mut self, now: Instant) {
        if now >= self.next_sweep {
            self.detector.tick(now, &mut rand::rng());
            self.next_sweep = mesh_core::time::after(now, self.detector.config().interval);
        }
    }
}

fn now() -> Instant {
    // tokio's clock, so that tests can drive ejection times with a paused clock.
    tokio::time::Instant::now().into_std()
}

impl OutlierDetection {
    /// Detection with `config` and no endpoints yet; the first sweep is one interval away.
    pub fn new(config: OutlierDetectionConfig) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Detection {
                detector: OutlierDetector::new(config),
                hosts: Vec::new(),
                next_sweep: now() + config.interval,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Detection> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layer for the endpoint at `address`, which joins the detection's endpoints.
    pub fn layer(&self, address: SocketAddr) -> OutlierDetectionLayer {
        let mut d = self.lock();
        if !d.hosts.contains(&address) {
            d.hosts.push(address);
            let hosts = d.hosts.clone();
            d.detector.set_hosts(hosts);
        }
        OutlierDetectionLayer {
            detection: self.clone(),
            address,
        }
    }

    /// Replaces the set of endpoints: new ones start clean, removed ones are forgotten (their
    /// services then pass requests through uncounted).
    pub fn set_endpoints(&self, addresses: impl IntoIterator<Item = SocketAddr>) {
        let mut d = self.lock();
        d.hosts = addresses.into_iter().collect();
        let hosts = d.hosts.clone();
        d.detector.set_hosts(hosts);
    }

    /// Whether `address` is ejected now.
    pub fn is_ejected(&self, address: SocketAddr) -> bool {
        let mut d = self.lock();
        d.sweep_if_due(now());
        d.detector.is_ejected(&address)
    }

    /// How many endpoints are ejected now.
    pub fn ejected_count(&self) -> usize {
        let mut d = self.lock();
        d.sweep_if_due(now());
        d.detector.ejected_count()
    }

    fn record(&self, address: SocketAddr, outcome: Outcome) {
        let now = now();
        let mut d = self.lock();
        d.detector.record(address, outcome, now, &mut rand::rng());
        d.sweep_if_due(now);
    }

    /// When the endpoint may be back, if it is ejected: the next sweep.
    fn ejected_until_sweep(&self, address: SocketAddr) -> Option<Instant> {
        let mut d = self.lock();
        d.sweep_if_due(now());
        d.detector.is_ejected(&address).then_some(d.next_sweep)
    }
}

/// Wraps one endpoint's service; built by [`OutlierDetection::layer`].
#[derive(Clone)]
pub struct OutlierDetectionLayer {
    detection: OutlierDetection,
    address: SocketAddr,
}

impl<S> Layer<S> for OutlierDetectionLayer {
    type Service = OutlierDetectionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutlierDetectionService {
            inner,
            detection: self.detection.clone(),
            address: self.address,
            wait: None,
        }
    }
}

/// The service behind [`OutlierDetectionLayer`]: not ready while ejected; every response
/// (5xx or not) and every error is counted.
pub struct OutlierDetectionService<S> {
    inner: S,
    detection: OutlierDetection,
    address: SocketAddr,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: Clone> Clone for OutlierDetectionService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            detection: self.detection.clone(),
            address: self.address,
            wait: None,
        }
    }
}

impl<S, Req, RB> Service<Req> for OutlierDetectionService<S>
where
    S: Service<Req, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Ejected: wait for the sweep that may return it, then look again.
        while let Some(at) = self.detection.ejected_until_sweep(self.address) {
            let at = tokio::time::Instant::from_std(at);
            match &mut self.wait {
                Some(sleep) => sleep.as_mut().reset(at),
                None => self.wait = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            if let Some(sleep) = &mut self.wait
                && sleep.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
        }
        self.wait = None;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let detection = self.detection.clone();
        let address = self.address;
        Box::pin(async move {
            let result = fut.await;
            let outcome = match &result {
                Ok(r) if r.status().is_server_error() => Outcome::ServerError(r.status().as_u16()),
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::LocalFailure,
            };
            detection.record(address, outcome);
            result
        })
    }
}
