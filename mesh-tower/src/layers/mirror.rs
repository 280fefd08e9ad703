//! Request mirroring as a standalone layer: a copy of a share of requests goes to a shadow
//! service, fire-and-forget, with the authority suffixed `-shadow` as Envoy does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use mesh_core::Fraction;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use crate::protocol::shadow_authority;

/// Mirrors `fraction` of requests to a shadow service. At most `max_in_flight` copies run at
/// once; beyond that a copy is skipped (and counted) rather than queued, so a slow or dead
/// shadow never slows the main path. Request bodies must be cloneable (`Bytes`-like).
#[derive(Clone)]
pub struct MirrorLayer<M> {
    shadow: M,
    fraction: Fraction,
    permits: Arc<Semaphore>,
    skipped: Arc<AtomicU64>,
}

impl<M> MirrorLayer<M> {
    /// A layer copying `fraction` of requests to `shadow`, at most `max_in_flight` at once.
    pub fn new(shadow: M, fraction: Fraction, max_in_flight: usize) -> Self {
        Self {
            shadow,
            fraction,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            skipped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Copies not sent because `max_in_flight` copies were already running.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

impl<S, M: Clone> Layer<S> for MirrorLayer<M> {
    type Service = MirrorService<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        MirrorService {
            inner,
            mirror: self.clone(),
        }
    }
}

/// The service behind [`MirrorLayer`].
#[derive(Clone)]
pub struct MirrorService<S, M> {
    inner: S,
    mirror: MirrorLayer<M>,
}

impl<S, M, B, RB> Service<Request<B>> for MirrorService<S, M>
where
    S: Service<Request<B>>,
    M: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    M::Future: Send,
    B: Clone + Send + 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let m = &self.mirror;
        if m.fraction.sample(&mut rand::rng()) {
            match m.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let copy = shadow_request(&req);
                    let shadow = m.shadow.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let Ok(resp) = shadow.oneshot(copy).await else {
                            return;
                        };
                        // Read to the end so that a pooled connection can be reused.
                        let _ = resp.into_body().collect().await;
                    });
                }
                Err(_) => {
                    m.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.inner.call(req)
    }
}

/// A copy of `req` with `-shadow` appended to the host of its URI authority and `Host` header.
fn shadow_request<B: Clone>(req: &Request<B>) -> Request<B> {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.uri_mut() = match req.uri().authority() {
        Some(a) => {
            let mut parts = req.uri().clone().into_parts();
            parts.authority = shadow_authority(a.as_str()).parse().ok();
            Uri::from_parts(parts).unwrap_or_else(|_| req.uri().clone())
        }
        None => req.uri().clone(),
    };
    if let Some(host) = req.headers().get(http::header::HOST)
        && let Ok(h) = host.to_str()
        && let Ok(v) = HeaderValue::from_str(&shadow_authority(h))
    {
        copy.headers_mut().insert(http::header::HOST, v);
    }
    copy
}
