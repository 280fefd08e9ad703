//! The client stack: one `tower::Service` that routes, injects faults, mirrors, times out,
//! retries under a budget, breaks circuits, balances and records outliers, per request, from
//! the current snapshot.

use rustc_hash::FxHashMap as HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use mesh_core::route::{AttemptFailure, FaultAbort, ForwardAction, request_hash};
use mesh_core::{BreakerResource, LbConfig, MeshSnapshot, Outcome, RouteRequest};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use crate::body::{BoxError, MeshBody, Prepared, empty, full, prepare};
use crate::cluster::ClusterState;
use crate::connector::MeshConnector;
use crate::pool::{ClusterConns, EndpointPool, SendError};

/// `grpc-status`, parsed once rather than per lookup.
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
/// `grpc-timeout`, parsed once rather than per lookup.
static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Header naming why the stack answered instead of an upstream.
pub const ERROR_HEADER: &str = "x-mesh-error";
/// Header naming the circuit-breaker threshold that overflowed.
pub const OVERFLOW_HEADER: &str = "x-mesh-overflow";

/// What the stack did for a response; attached as a response extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshInfo {
    /// The route that matched.
    pub route: Arc<str>,
    /// The cluster chosen.
    pub cluster: Arc<str>,
    /// The endpoint that gave the final response, if one did.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts, retries included (mirrors not).
    pub attempts: u32,
}

/// A per-request hook, the seam for metrics and spans.
pub trait Observer: Send + Sync + 'static {
    /// Called once per request with the outcome.
    fn on_response(&self, info: Option<&MeshInfo>, status: StatusCode, latency: Duration);
}

/// Stack settings.
#[derive(Clone)]
pub struct MeshConfig {
    /// The listener for every request (`host:port`, from an `xds:///host:port` target);
    /// `None` takes it from each request's authority.
    pub target: Option<String>,
    /// Request bodies up to this size are kept for retries and mirrors (default 64 KiB).
    pub max_replay_bytes: usize,
    /// Mirrored requests in flight at most (default 64); beyond it mirrors are skipped.
    pub mirror_concurrency: usize,
    /// Idle connections (HTTP/1.1 and HTTP/2) are closed after this long (default 90 s;
    /// checked every timeout, so a connection may stay up to twice this long).
    pub pool_idle_timeout: Duration,
    /// Optional per-request hook.
    pub observer: Option<Arc<dyn Observer>>,
    /// Replaces every cluster's retry budget (the default budget allows 20% of requests plus
    /// 10 retries a second: it stops a dead backend from being hammered, and also caps
    /// retries against a backend that fails half its requests).
    pub retry_budget: Option<mesh_core::RetryBudgetConfig>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            target: None,
            max_replay_bytes: 64 * 1024,
            mirror_concurrency: 64,
            pool_idle_timeout: Duration::from_secs(90),
            observer: None,
            retry_budget: None,
        }
    }
}

/// The mesh client stack as a `tower::Service`; cheap to clone.
pub struct MeshService<C = HttpConnector> {
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
/// `Arc`'s reference counts sit before `Shared`, and `clusters`' lock word gets its own lines.
#[repr(align(128))]
struct Shared<C> {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    clusters: CacheLines<RwLock<ClusterMap<C>>>,
    connector: C,
    config: MeshConfig,
    mirrors: Arc<Semaphore>,
    /// Requests that matched no route.
    no_route: std::sync::atomic::AtomicU64,
}

/// Each cluster's entry, by name.
type ClusterMap<C> = HashMap<Arc<str>, Arc<ClusterEntry<C>>>;

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

/// A cluster's runtime state and the connection pools of its endpoints (by endpoint index).
struct ClusterEntry<C> {
    state: ClusterState,
    conns: Arc<ClusterConns<C>>,
    pools: Box<[Arc<EndpointPool<C>>]>,
}

impl<C> std::ops::Deref for ClusterEntry<C> {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.state
    }
}

impl MeshService<HttpConnector> {
    /// A stack over plain TCP (HTTP/1.1, or HTTP/2 cleartext for HTTP/2 and gRPC requests).
    pub fn new(snapshots: watch::Receiver<Arc<MeshSnapshot>>, config: MeshConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self::with_connector(snapshots, config, connector)
    }
}

impl<C> MeshService<C> {
    /// Requests answered 404 because no route matched (or no listener, virtual host or
    /// route configuration was found), since the stack was built.
    pub fn no_route_count(&self) -> u64 {
        self.shared
            .no_route
            .load(std::sync::atomic::Ordering::Relaxed)
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
                config,
            }),
        }
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
    type Future = Pin<Box<dyn Future<Output = Result<Response<MeshBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let fut = async move {
            // Clock reads are not free on every machine: only with an observer to tell.
            let Some(o) = &shared.config.observer else {
                return Ok(shared.handle(req).await);
            };
            let started = Instant::now();
            let resp = shared.handle(req).await;
            o.on_response(
                resp.extensions().get::<MeshInfo>(),
                resp.status(),
                started.elapsed(),
            );
            Ok(resp)
        };
        Box::pin(fut)
    }
}

/// A response the stack makes itself, with the reason in a header.
fn local(status: StatusCode, header: &'static str, reason: &str, grpc: bool) -> Response<MeshBody> {
    let mut r = if grpc {
        grpc_status_response(http_to_grpc(status.as_u16()), reason)
    } else {
        let mut r = Response::new(full(format!("{reason}\n")));
        *r.status_mut() = status;
        r
    };
    if let Ok(v) = HeaderValue::from_str(reason) {
        r.headers_mut().insert(header, v);
    }
    r
}

fn grpc_status_response(code: u32, message: &str) -> Response<MeshBody> {
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    r
}

/// The HTTP → gRPC status mapping of gRPC's spec (A33 uses it for HTTP aborts).
fn http_to_grpc(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// gRPC status → HTTP status, for outlier detection (as Envoy does).
fn grpc_to_http(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// `grpc-timeout`: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The request head each attempt is built from.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    authority: String,
    /// `authority` as a `Host` header value.
    host_header: Option<HeaderValue>,
}

impl<C: MeshConnector> Shared<C> {
    /// The runtime state of a cluster for this snapshot, rebuilt only when the cluster or its
    /// endpoints changed. Endpoints that stay keep their pools (and connections); the pools of
    /// endpoints that left are dropped, which closes their idle connections.
    fn state(&self, snap: &MeshSnapshot, name: &str) -> Option<Arc<ClusterEntry<C>>> {
        let cluster = snap.cluster(name)?;
        let endpoints = snap.cluster_endpoints(cluster)?;
        let current = |e: &Option<Arc<ClusterEntry<C>>>| {
            e.as_ref().is_some_and(|s| {
                Arc::ptr_eq(&s.cluster, cluster) && Arc::ptr_eq(&s.endpoints, endpoints)
            })
        };
        let found = self
            .clusters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if current(&found) {
            return found;
        }
        let mut clusters = self.clusters.write().unwrap_or_else(|e| e.into_inner());
        let previous = clusters.get(name).cloned();
        if current(&previous) {
            return previous;
        }
        let state = ClusterState::new(
            cluster.clone(),
            endpoints.clone(),
            previous.as_deref().map(|p| &p.state),
            self.config.retry_budget,
            Instant::now().into_std(),
        );
        let conns = match &previous {
            Some(p) => p.conns.clone(),
            None => Arc::new(ClusterConns {
                connector: self.connector.clone(),
                breaker: state.breaker.clone(),
                freed: Default::default(),
                idle_timeout: self.config.pool_idle_timeout,
                connect_timeout_nanos: Default::default(),
            }),
        };
        conns.connect_timeout_nanos.store(
            u64::try_from(cluster.connect_timeout().as_nanos()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let pools = endpoints
            .endpoints()
            .iter()
            .map(|e| {
                previous
                    .as_ref()
                    .and_then(|p| Some(p.pools[p.endpoints.index_of(e.address)?].clone()))
                    .unwrap_or_else(|| EndpointPool::new(conns.clone(), e.address))
            })
            .collect();
        let entry = Arc::new(ClusterEntry {
            state,
            conns,
            pools,
        });
        clusters.insert(cluster.name().clone(), entry.clone());
        Some(entry)
    }

    async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<MeshBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let snap = self.snapshots.borrow().clone();
        let (parts, body) = req.into_parts();
        let grpc = is_grpc(&parts.headers);
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
        let default_port;
        let listener: &str = if self.config.target.is_some() || authority.contains(':') {
            &authority
        } else {
            default_port = format!("{authority}:80");
            &default_port
        };
        // ThreadRng is not Send; a small generator seeded from it crosses awaits.
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let route_req =
            RouteRequest::new(&parts.method, &parts.uri, &parts.headers).with_authority(&authority);
        let routed = match snap.route(listener, &route_req, &mut rng) {
            Ok(r) => r,
            Err(e) => {
                self.no_route
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return local(
                    StatusCode::NOT_FOUND,
                    ERROR_HEADER,
                    &format!("no route: {e}"),
                    grpc,
                );
            }
        };
        let Some(fwd) = routed.route.forward() else {
            return local(
                StatusCode::NOT_FOUND,
                ERROR_HEADER,
                "no route: the route does not forward",
                grpc,
            );
        };
        let cluster_name = routed.cluster.cloned().unwrap_or_else(|| Arc::from(""));
        let route_name = routed.route.shared_name().clone();

        // Faults (A33): delay first, then abort, before anything is sent.
        if routed.listener.fault_filter()
            && let Some(fault) = routed.route.fault()
        {
            let decision = fault.decide(&route_req, &mut rng);
            if let Some(d) = decision.delay {
                tokio::time::sleep(d).await;
            }
            match decision.abort {
                Some(FaultAbort::Http(s)) if grpc => {
                    return grpc_status_response(
                        if s == 200 { 2 } else { http_to_grpc(s) },
                        "fault filter abort",
                    );
                }
                Some(FaultAbort::Http(s)) => {
                    let mut r = Response::new(full("fault filter abort"));
                    *r.status_mut() =
                        StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    return r;
                }
                Some(FaultAbort::Grpc(c)) => {
                    return grpc_status_response(c.min(16), "fault filter abort");
                }
                None => {}
            }
        }

        let Some(state) = self.state(&snap, &cluster_name) else {
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                ERROR_HEADER,
                &format!("cluster {cluster_name} is unknown or has no endpoints"),
                grpc,
            );
        };
        let deadline = fwd.timeouts.effective(
            grpc_timeout(&parts.headers),
            routed.listener.max_stream_duration(),
        );
        let hash = if state.cluster.lb().is_hash_based() {
            request_hash(&fwd.hash_policies, &route_req, 0)
        } else {
            None
        };
        // Routing is done with the request head: move it (no copy) into what attempts reuse.
        let host_header = HeaderValue::from_str(&authority).ok();
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            version: parts.version,
            headers: parts.headers,
            authority,
            host_header,
        };

        let mut prepared = match prepare(body, self.config.max_replay_bytes).await {
            Ok(p) => p,
            Err(e) => {
                return local(
                    StatusCode::BAD_REQUEST,
                    ERROR_HEADER,
                    &format!("request body: {e}"),
                    grpc,
                );
            }
        };
        self.mirror(fwd, &head, &prepared, &mut rng);
        let attempts = self.attempts(&head, &mut prepared, &state, fwd, hash, grpc, &mut rng);
        let (mut resp, endpoint, tries) = match deadline {
            Some(d) => match tokio::time::timeout(d, attempts).await {
                Ok(r) => r,
                Err(_) => (
                    local(
                        StatusCode::GATEWAY_TIMEOUT,
                        ERROR_HEADER,
                        "upstream request timeout",
                        grpc,
                    ),
                    None,
                    0,
                ),
            },
            None => attempts.await,
        };
        resp.extensions_mut().insert(MeshInfo {
            route: route_name,
            cluster: cluster_name,
            endpoint,
            attempts: tries,
        });
        resp
    }

    /// Sends copies to the mirror clusters, fire-and-forget, with bounded concurrency.
    fn mirror(
        self: &Arc<Self>,
        fwd: &ForwardAction,
        head: &Head,
        body: &Prepared,
        rng: &mut impl rand::RngCore,
    ) {
        let Prepared::Replayable { data, trailers } = body else {
            return;
        };
        for m in fwd.mirrors.iter() {
            if !m.fraction.sample(rng) {
                continue;
            }
            let Ok(permit) = self.mirrors.clone().try_acquire_owned() else {
                continue;
            };
            let snap = self.snapshots.borrow().clone();
            let Some(state) = self.state(&snap, &m.cluster) else {
                continue;
            };
            let Some(i) = state.pick(None, &[], rng) else {
                continue;
            };
            let shadow = shadow_authority(&head.authority);
            let h2 = wants_h2(head);
            let req = build(
                head,
                replay_body(data.clone(), trailers.clone()),
                Some(&shadow),
                h2,
            );
            let pool = state.pools[i].clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Ok(resp) = pool.send(req, h2).await {
                    // Drain so the connection can be reused.
                    let _ = resp.into_body().collect().await;
                }
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &self,
        head: &Head,
        prepared: &mut Prepared,
        state: &ClusterEntry<C>,
        fwd: &ForwardAction,
        hash: Option<u64>,
        grpc: bool,
        rng: &mut SmallRng,
    ) -> (Response<MeshBody>, Option<SocketAddr>, u32) {
        let retry = fwd.retry_policy.as_ref();
        let max_attempts = 1 + retry.map_or(0, |r| r.num_retries());
        let std_now = || Instant::now().into_std();
        // One clock read per attempt serves the budget, outlier detection and peak EWMA.
        let mut sent = Instant::now();
        state.budget.deposit(sent.into_std());
        // The last few endpoints tried (no allocation per request; usize::MAX is no endpoint).
        let mut tried = [usize::MAX; 4];
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let _request_permit = match state.breaker.try_acquire_ref(BreakerResource::Requests) {
                Ok(p) => p,
                Err(o) => {
                    return (
                        local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            OVERFLOW_HEADER,
                            o.resource.threshold_name(),
                            grpc,
                        ),
                        None,
                        attempt - 1,
                    );
                }
            };
            let _retry_permit = if attempt > 1 {
                match state.breaker.try_acquire_ref(BreakerResource::Retries) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        return (
                            local(
                                StatusCode::SERVICE_UNAVAILABLE,
                                OVERFLOW_HEADER,
                                "max_retries",
                                grpc,
                            ),
                            None,
                            attempt - 1,
                        );
                    }
                }
            } else {
                None
            };
            let Some(body) = prepared.attempt() else {
                return (
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ERROR_HEADER,
                        "request body already sent",
                        grpc,
                    ),
                    None,
                    attempt - 1,
                );
            };
            let mut pick = state.pick(hash, &tried, rng);
            if pick.is_none() {
                // Everything may be ejected with no traffic left to trigger a sweep.
                state.maybe_sweep(std_now());
                pick = state.pick(hash, &tried, rng);
            }
            let Some(i) = pick else {
                return (
                    local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ERROR_HEADER,
                        "no healthy upstream",
                        grpc,
                    ),
                    None,
                    attempt - 1,
                );
            };
            tried[(attempt as usize - 1) % tried.len()] = i;
            let addr = state.endpoints.endpoints()[i].address;
            // In-flight counts feed only the load-aware balancers; the others skip the shared
            // counter updates.
            let active = matches!(
                state.cluster.lb(),
                LbConfig::LeastRequest { .. } | LbConfig::PeakEwma { .. }
            )
            .then(|| state.load(i).start());
            let h2 = wants_h2(head);
            let req = build(head, body, None, h2);
            let pool = &state.pools[i];
            if attempt > 1 {
                sent = Instant::now();
            }
            let per_try = retry.and_then(|r| r.per_try_timeout());
            let result = match per_try {
                Some(t) => tokio::time::timeout(t, pool.send(req, h2))
                    .await
                    .map_err(|_| AttemptFailure::PerTryTimeout),
                None => Ok(pool.send(req, h2).await),
            };
            drop(active);
            let (failure, outcome, response) = match result {
                Err(f) => (Some(f), Outcome::LocalFailure, None),
                Ok(Err(SendError::Overflow(o))) => {
                    return (
                        local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            OVERFLOW_HEADER,
                            o.resource.threshold_name(),
                            grpc,
                        ),
                        None,
                        attempt,
                    );
                }
                Ok(Err(e)) => {
                    tracing::debug!(endpoint = %addr, error = %e, "upstream attempt failed");
                    let f = match e {
                        SendError::Connect(_) => AttemptFailure::ConnectFailure,
                        _ => AttemptFailure::Reset,
                    };
                    (Some(f), Outcome::LocalFailure, None)
                }
                Ok(Ok(resp)) => {
                    if let LbConfig::PeakEwma { decay, .. } = state.cluster.lb() {
                        let now = Instant::now();
                        state.load(i).observe(now - sent, now.into_std(), *decay);
                    }
                    let status = resp.status().as_u16();
                    let grpc_code = resp
                        .headers()
                        .get(&GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u32>().ok());
                    let (failure, outcome) = match grpc_code {
                        Some(c) if c != 0 => (
                            Some(AttemptFailure::GrpcStatus(c)),
                            outcome_for(grpc_to_http(c)),
                        ),
                        _ if status >= 400 => (
                            Some(AttemptFailure::HttpStatus(status)),
                            outcome_for(status),
                        ),
                        _ => (None, Outcome::Success),
                    };
                    (failure, outcome, Some(resp))
                }
            };
            state.record(i, addr, outcome, sent.into_std());
            let Some(failure) = failure else {
                return (
                    response.unwrap_or_else(|| {
                        local(StatusCode::BAD_GATEWAY, ERROR_HEADER, "no response", grpc)
                    }),
                    Some(addr),
                    attempt,
                );
            };
            let response = response.unwrap_or_else(|| match failure {
                AttemptFailure::PerTryTimeout => local(
                    StatusCode::GATEWAY_TIMEOUT,
                    ERROR_HEADER,
                    "upstream per-try timeout",
                    grpc,
                ),
                AttemptFailure::ConnectFailure => local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ERROR_HEADER,
                    "upstream connect error",
                    grpc,
                ),
                _ => local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ERROR_HEADER,
                    "upstream reset",
                    grpc,
                ),
            });
            let retry_ok = attempt < max_attempts
                && retry.is_some_and(|r| r.is_retriable(failure))
                && prepared.is_replayable()
                && state.budget.try_withdraw(std_now());
            if !retry_ok {
                return (response, Some(addr), attempt);
            }
            // Drain the failed response so its connection goes back to the pool.
            let (_, b) = response.into_parts();
            let _ = b.collect().await;
            if let Some(r) = retry {
                let wait = r.backoff(attempt, &mut rand::rng());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn outcome_for(status: u16) -> Outcome {
    if status >= 500 {
        Outcome::ServerError(status)
    } else {
        Outcome::Success
    }
}

/// `authority` with `-shadow` appended to its host, the name Envoy gives mirrored requests:
/// `ui.default:9080` → `ui.default-shadow:9080`.
pub(crate) fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

fn wants_h2(head: &Head) -> bool {
    head.version == Version::HTTP_2 || is_grpc(&head.headers)
}

fn replay_body(data: Bytes, trailers: Option<HeaderMap>) -> MeshBody {
    let mut p = Prepared::Replayable { data, trailers };
    p.attempt().unwrap_or_else(empty)
}

/// The upstream request for one attempt, addressed as the original request was (or as
/// `authority_override`, for mirrors): origin-form with `Host` over HTTP/1.1, scheme and
/// authority over HTTP/2. The endpoint is the pool's business, not the request's.
fn build(
    head: &Head,
    body: MeshBody,
    authority_override: Option<&str>,
    h2: bool,
) -> Request<MeshBody> {
    let path = || {
        head.uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.headers_mut() = head.headers.clone();
    if h2 {
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = match authority_override {
            // Reused as is when it already says what goes upstream (h2c: `http`).
            None if head.uri.scheme() == Some(&http::uri::Scheme::HTTP)
                && head.uri.authority().map(|a| a.as_str()) == Some(&head.authority) =>
            {
                head.uri.clone()
            }
            a => {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(http::uri::Scheme::HTTP);
                parts.authority = http::uri::Authority::try_from(a.unwrap_or(&head.authority)).ok();
                parts.path_and_query = Some(path());
                Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
            }
        };
    } else {
        *req.version_mut() = Version::HTTP_11;
        *req.uri_mut() = Uri::from(path());
        let host = match authority_override {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => head.host_header.clone(),
        };
        if let Some(v) = host {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    req
}
