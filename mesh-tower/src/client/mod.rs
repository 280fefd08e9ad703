//! The client stack: one `tower::Service` that routes, injects faults, mirrors, times out,
//! retries under a budget, breaks circuits, balances and records outliers, per request, from
//! the current snapshot.
//!
//! One file per stage, each handing the next a typed value: [`route`] makes a `RoutePlan`,
//! [`fault`] a `FaultOutcome`, [`mirror`] spawns copies, [`attempts`] settles on an
//! `AttemptOutcome`, built from the request head by [`upstream`]; [`clusters`] keeps the
//! per-cluster state the attempts use.

mod attempts;
mod clusters;
mod config;
mod fault;
mod mirror;
mod route;
mod upstream;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use mesh_core::route::request_hash;
use mesh_core::{MeshSnapshot, RouteRequest};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::{BoxError, MeshBody, RequestBody};
use crate::connector::{MeshConnector, TcpConnector};
use crate::observe::{MeshInfo, ObservedBody, RequestObserver, RequestStart, ResponseEnd};
use crate::protocol::{grpc_timeout, is_grpc, local_reply};
use crate::reply::LocalReason;
use crate::tls::TlsConnector;
use attempts::{Attempts, Progress};
pub use clusters::ClusterRuntime;
use clusters::{BuildSettings, ClusterEntry, Clusters};
use upstream::Head;

pub use config::MeshConfig;
pub use route::listener_for;

/// The future of a request through the stack (and of the services built on it).
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<MeshBody>, Infallible>> + Send>>;

/// The mesh client stack as a `tower::Service`; cheap to clone.
pub struct MeshService<C = TlsConnector> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for MeshService<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// Aligned to 128 bytes (two cache lines, as adjacent-line prefetch pairs them), so that
/// what every request reads does not share a line with what every request writes: the
/// `Arc`'s reference counts sit before `Shared`, and the cluster map's lock word gets its own
/// lines.
#[repr(align(128))]
struct Shared<C> {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    clusters: CacheLines<Clusters<C>>,
    connector: C,
    config: MeshConfig,
    build: BuildSettings,
    mirrors: Arc<Semaphore>,
    /// Requests that matched no route.
    no_route: AtomicU64,
}

/// A value on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct CacheLines<T>(T);

impl<T> std::ops::Deref for CacheLines<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A local reply on its way out of a stage: the reason and what to add to its message.
pub(crate) struct Local {
    reason: LocalReason,
    detail: Option<String>,
}

impl Local {
    fn new(reason: LocalReason, detail: String) -> Self {
        Self {
            reason,
            detail: Some(detail),
        }
    }
}

impl MeshService<TcpConnector> {
    /// A stack over plain TCP only (HTTP/1.1, or HTTP/2 cleartext for HTTP/2 and gRPC
    /// requests): requests to a cluster with a TLS context fail (503 `UF`), never plaintext.
    pub fn new(snapshots: watch::Receiver<Arc<MeshSnapshot>>, config: MeshConfig) -> Self {
        Self::with_connector(snapshots, config, TcpConnector)
    }
}

impl MeshService<TlsConnector> {
    /// The stack a mesh workload uses: plaintext clusters over TCP, TLS clusters over mTLS
    /// with the workload certificates of `certificates` (the xDS client's `certificates()`).
    pub fn with_certificates(
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        certificates: watch::Receiver<Arc<mesh_core::Certificates>>,
        config: MeshConfig,
    ) -> Self {
        Self::with_connector(snapshots, config, TlsConnector::new(certificates))
    }
}

impl<C> MeshService<C> {
    /// Requests answered 404 because no route matched (or no listener, virtual host or
    /// route configuration was found), since the stack was built.
    pub fn no_route_count(&self) -> u64 {
        self.shared.no_route.load(Ordering::Relaxed)
    }

    /// The stack's configuration channel (what it reads each request's snapshot from).
    pub fn snapshots(&self) -> &watch::Receiver<Arc<MeshSnapshot>> {
        &self.shared.snapshots
    }
}

impl<C: MeshConnector> MeshService<C> {
    /// A stack over a custom connector (the seam for mTLS).
    pub fn with_connector(
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        config: MeshConfig,
        connector: C,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                snapshots,
                clusters: CacheLines::default(),
                no_route: Default::default(),
                connector,
                mirrors: Arc::new(Semaphore::new(config.mirror_concurrency)),
                build: BuildSettings {
                    retry_budget: config.retry_budget,
                    idle_timeout: config.pool_idle_timeout,
                },
                config,
            }),
        }
    }

    /// The clusters with runtime state (those that got traffic and are still in the
    /// snapshot), with their endpoints' ejections: what `/config_dump` adds to the snapshot.
    pub fn runtime(&self) -> Vec<ClusterRuntime> {
        self.shared.clusters.runtime()
    }

    /// How many clusters have runtime state (those that got traffic and are still in the
    /// snapshot).
    pub fn active_clusters(&self) -> usize {
        self.shared.clusters.len()
    }
}

impl<B, C> tower::Service<Request<B>> for MeshService<C>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: MeshConnector,
{
    type Response = Response<MeshBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let observer = self.shared.config.observer.as_ref().and_then(|o| {
            o.on_request(&RequestStart {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                grpc,
            })
        });
        let span = tracing::debug_span!("mesh.request", method = %req.method(), uri = %req.uri());
        // The request's future is made straight into its box, in one piece: each level of
        // `async` nesting would add a move of the whole (kilobytes) future, and so would
        // wrapping a disabled span around it.
        if span.is_disabled() {
            Box::pin(self.shared.clone().serve(req, grpc, observer))
        } else {
            Box::pin(
                self.shared
                    .clone()
                    .serve(req, grpc, observer)
                    .instrument(span),
            )
        }
    }
}

/// Ends a stage's part of `serve` with a local reply when the stage gave one.
macro_rules! or_reply {
    ($label:lifetime, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(l) => break $label Err(l),
        }
    };
}

impl<C: MeshConnector> Shared<C> {
    async fn serve<B>(
        self: Arc<Self>,
        req: Request<B>,
        grpc: bool,
        mut observer: Option<Box<dyn RequestObserver>>,
    ) -> Result<Response<MeshBody>, Infallible>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Clock reads are not free on every machine: only with an observer to tell.
        let started = observer.is_some().then(Instant::now);
        // Counted only for an observer (istio_request_bytes, istio_request_messages_total),
        // and only when there is a body to count.
        let request_count = (observer.is_some() && !req.body().is_end_stream())
            .then(|| Arc::new(crate::body::BodyCount::default()));
        let mut info = MeshInfo::default();
        let forwarded: Result<Response<MeshBody>, Local> = 'forward: {
            let snap = self.snapshots.borrow().clone();
            let (parts, body) = req.into_parts();
            // One owned authority per request; the listener name borrows it when it has a port.
            let authority: String = match &self.config.target {
                Some(t) => t.clone(),
                None => parts
                    .uri
                    .authority()
                    .map(|a| a.as_str())
                    .or_else(|| {
                        parts
                            .headers
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                    })
                    .unwrap_or_default()
                    .to_string(),
            };
            let listener = route::listener_name(self.config.target.as_deref(), &authority);
            // ThreadRng is not Send; a small generator seeded from it crosses awaits.
            let mut rng = SmallRng::from_rng(&mut rand::rng());
            let route_req = RouteRequest::new(&parts.method, &parts.uri, &parts.headers)
                .with_authority(&authority);
            let plan = or_reply!(
                'forward,
                route::plan(&snap, &listener, &route_req, &mut rng).inspect_err(|l| {
                    if l.reason == LocalReason::NoRoute {
                        self.no_route.fetch_add(1, Ordering::Relaxed);
                    }
                })
            );
            info.route = Some(plan.route.clone());
            info.cluster = Some(plan.cluster.clone());

            if let Some(fault) = plan.fault {
                // Boxed: rare, and it would enlarge every request's future by a timer.
                let f = Box::pin(fault::apply(fault, &route_req, grpc, &mut rng)).await;
                info.flags.delayed = f.delayed;
                if let Some(abort) = f.abort {
                    info.flags.reason = Some(LocalReason::FaultAbort);
                    break 'forward Ok(abort);
                }
            }

            let Some(state) = self.cluster(&snap, &plan.cluster) else {
                break 'forward Err(Local::new(
                    LocalReason::NoCluster,
                    format!("cluster {} is unknown or has no endpoints", plan.cluster),
                ));
            };
            let timeout = plan.deadline(grpc_timeout(&parts.headers));
            let hash = if state.cluster.lb().is_hash_based() {
                request_hash(&plan.forward.hash_policies, &route_req, 0)
            } else {
                None
            };
            // Routing is done with the request head: move it (no copy) into what attempts
            // reuse.
            let host_header = HeaderValue::from_str(&authority).ok();
            let head = Head {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                authority,
                host_header,
            };

            // Streamed from the first byte; a copy is kept for retries and mirrors.
            let body = RequestBody::new(body, self.config.max_replay_bytes);
            if let Some(c) = &request_count {
                body.count_into(c, grpc);
            }
            self.mirror(
                &snap,
                &plan.forward.mirrors,
                &head,
                &body,
                timeout,
                &mut rng,
            );
            let mut progress = Progress::default();
            let outcome = Attempts {
                head: &head,
                body: &body,
                cluster: &state,
                retry: plan.forward.retry_policy.as_ref(),
                timeout,
                hash,
                grpc,
                rng: &mut rng,
                observer: &mut observer,
                progress: &mut progress,
            }
            .run()
            .await;
            info.attempts = progress.attempts;
            // An attempt refused before it was sent names no endpoint.
            info.endpoint = progress.endpoint.filter(|_| {
                !matches!(
                    outcome.reason,
                    Some(
                        LocalReason::Overflow(_)
                            | LocalReason::NoHealthyUpstream
                            | LocalReason::RequestBody
                    )
                )
            });
            info.flags.reason = outcome.reason;
            info.flags.retries_exhausted = outcome.retries_exhausted;
            Ok(outcome.response)
        };
        let mut resp = match forwarded {
            Ok(r) => r,
            Err(l) => {
                info.flags.reason = Some(l.reason);
                local_reply(l.reason, l.detail.as_deref(), grpc)
            }
        };
        if let (Some(mut o), Some(started)) = (observer, started) {
            o.on_response(&ResponseEnd {
                info: &info,
                status: resp.status(),
                headers: resp.headers(),
                started,
            });
            resp = resp.map(|b| {
                let mut observed =
                    ObservedBody::new(b, o, started.into_std()).with_request_count(request_count);
                if grpc {
                    observed = observed.with_grpc_messages();
                }
                http_body_util::BodyExt::boxed_unsync(observed)
            });
        }
        resp.extensions_mut().insert(info);
        Ok(resp)
    }

    /// The state of cluster `name`, for a request routed with `snap`.
    fn cluster(&self, snap: &Arc<MeshSnapshot>, name: &str) -> Option<Arc<ClusterEntry<C>>> {
        self.clusters
            .get(snap, &self.snapshots, name, &self.connector, &self.build)
    }
}
