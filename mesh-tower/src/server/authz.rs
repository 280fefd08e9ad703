//! Per request on a server connection: the chain's routes (non-forwarding only, gRFC A36), its
//! JWT filter (RequestAuthentication), its RBAC (A41), then the application with the caller's
//! identity ([`PeerInfo`], and the token's [`RequestAuth`]) in the request extensions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body_util::Either;
use mesh_core::jwt::{JwtError, RemoteJwks, RequestAuth};
use mesh_core::rbac::{AuthzRequest, RbacOverrides};
use mesh_core::route::RouteAction;
use mesh_core::{FilterChain, LeafInfo, MeshSnapshot, RouteRequest, RouteSource};
use tokio::sync::watch;

use super::jwks::{JwksStore, Lookup};
use crate::body::{MeshBody, full};
use crate::protocol::{grpc_status_response, is_grpc};

/// Who is calling, on which connection: in every request's extensions on a mesh server.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The local address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The client certificate's leaf, if one was presented.
    pub certificate: Option<Arc<LeafInfo>>,
    /// Its SPIFFE ID.
    pub spiffe_id: Option<Arc<str>>,
    /// The filter chain that serves the connection.
    pub chain: Arc<FilterChain>,
}

/// The gRPC code for PERMISSION_DENIED.
const PERMISSION_DENIED: u32 = 7;
/// The gRPC code for UNAUTHENTICATED.
const UNAUTHENTICATED: u32 = 16;
/// The gRPC code for UNAVAILABLE.
const UNAVAILABLE: u32 = 14;

/// A mesh server's per-request stage in front of the application's service.
#[derive(Clone)]
pub struct AuthzService<S> {
    inner: S,
    /// The connection's caller; `None`: read per request from the extensions (an
    /// application's own server fed by `MeshServer::incoming`).
    peer: Option<Arc<PeerInfo>>,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    jwks: JwksStore,
}

impl<S> AuthzService<S> {
    /// `inner` behind the routes, JWT filter and RBAC of `peer.chain`, with remote key sets
    /// from `jwks`.
    pub fn new(
        inner: S,
        peer: Arc<PeerInfo>,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        jwks: JwksStore,
    ) -> Self {
        Self {
            inner,
            peer: Some(peer),
            snapshots,
            jwks,
        }
    }

    /// `inner` behind the stage, with each request's [`PeerInfo`] taken from its extensions
    /// (an `Arc<PeerInfo>`, as tonic puts a connection's `ConnectInfo` there).
    pub fn per_request_peer(
        inner: S,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        jwks: JwksStore,
    ) -> Self {
        Self {
            inner,
            peer: None,
            snapshots,
            jwks,
        }
    }
}

fn refuse(status: StatusCode, code: u32, message: &str, grpc: bool) -> Response<MeshBody> {
    if grpc {
        grpc_status_response(code, message)
    } else {
        let mut r = Response::new(full(format!("{message}\n")));
        *r.status_mut() = status;
        r
    }
}

/// Envoy's 401 for a token it refused.
fn unauthenticated(e: &JwtError, grpc: bool) -> Response<MeshBody> {
    let mut r = refuse(
        StatusCode::UNAUTHORIZED,
        UNAUTHENTICATED,
        &e.to_string(),
        grpc,
    );
    let challenge = if matches!(e, JwtError::Missing) {
        "Bearer realm=\"mesh\""
    } else {
        "Bearer realm=\"mesh\", error=\"invalid_token\""
    };
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static(challenge),
    );
    r
}

/// The route that serves a request on the chain (A36: a non-forwarding one), as its RBAC
/// overrides, or why there is none.
fn route_for(
    chain: &FilterChain,
    snapshots: &watch::Receiver<Arc<MeshSnapshot>>,
    rr: &RouteRequest<'_>,
) -> Result<Option<Arc<RbacOverrides>>, String> {
    let rc = match chain.routes() {
        RouteSource::Inline(rc) => rc.clone(),
        // Only RDS routes need the snapshot (istiod's are inline).
        RouteSource::Rds(name) => match snapshots.borrow().route_config(name) {
            Some(rc) => rc.clone(),
            None => return Err(format!("route configuration {name:?} is not available")),
        },
    };
    match rc.route(rr, &mut rand::rng()) {
        Ok(route) => match route.action() {
            RouteAction::NonForwarding => Ok(route.rbac_overrides().cloned()),
            RouteAction::Forward(_) => Err(format!(
                "route {:?} forwards, and a server's routes must be non-forwarding",
                route.name()
            )),
        },
        Err(e) => Err(e.to_string()),
    }
}

/// What the stage decided for a request.
enum Admit {
    /// Let it through to the application.
    Pass,
    /// Answer it locally.
    Refuse(Response<MeshBody>),
    /// The token names keys a (re)fetch of this remote set may bring: ask again after it.
    NeedKeys(RemoteJwks),
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S> AuthzService<S> {
    /// Routes, JWT and RBAC for one request; on `Pass` the request carries the caller's
    /// identity and the JWT filter's header changes. `refetched`: the remote keys were just
    /// fetched for this request, so missing keys are final.
    fn admit<B>(&self, req: &mut Request<B>, refetched: bool) -> Admit {
        let grpc = is_grpc(req.headers());
        let Some(peer) = self
            .peer
            .clone()
            .or_else(|| req.extensions().get::<Arc<PeerInfo>>().cloned())
        else {
            // Not a mesh connection: nothing says who is calling, so nothing is allowed.
            return Admit::Refuse(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                "not a mesh connection (serve MeshServer::incoming)",
                grpc,
            ));
        };
        let chain = &peer.chain;
        // One view of the request for the route, the JWT filter and RBAC.
        let rr = RouteRequest::from_request(req);
        let overrides = match route_for(chain, &self.snapshots, &rr) {
            Ok(o) => o,
            Err(problem) => {
                tracing::debug!(chain = %chain.name(), "{problem}");
                return Admit::Refuse(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    UNAVAILABLE,
                    &problem,
                    grpc,
                ));
            }
        };
        let verified = match chain.jwt() {
            None => None,
            Some(jwt) => {
                let lookup = Lookup {
                    store: &self.jwks,
                    jwt,
                };
                match jwt.authenticate(&rr, &lookup, now_seconds(), &mut rand::rng()) {
                    Ok(v) => v,
                    Err(e) => {
                        if let Some(r) = e
                            .refetch()
                            .filter(|_| !refetched)
                            .and_then(|uri| jwt.remote_keys().find(|r| r.uri == *uri))
                        {
                            return Admit::NeedKeys(r.clone());
                        }
                        tracing::debug!(
                            target: "mesh::server::decision",
                            caller = peer.spiffe_id.as_deref().unwrap_or("anonymous"),
                            remote = %peer.remote,
                            path = rr.path(),
                            "unauthenticated: {e}"
                        );
                        return Admit::Refuse(unauthenticated(&e, grpc));
                    }
                }
            }
        };
        if !chain.rbac().is_empty() || (overrides.is_some() && chain.rbac().has_filters()) {
            let request = AuthzRequest {
                request: rr,
                source: peer.remote,
                destination: peer.local,
                peer: peer.certificate.as_deref(),
                tls: peer.tls,
                auth: verified.as_ref().map(|v| &*v.auth),
            };
            let verdict = chain.rbac().evaluate_on_route(
                &request,
                overrides.as_deref(),
                chain.jwt().is_some(),
            );
            for a in &verdict.audit {
                // gRFC A59's stdout logger fields.
                tracing::info!(
                    target: "mesh::rbac::audit",
                    rpc_method = req.uri().path(),
                    principal = peer.spiffe_id.as_deref().unwrap_or(""),
                    policy_name = %a.filter,
                    matched_rule = a.policy.as_deref().unwrap_or(""),
                    authorized = a.authorized,
                    "rbac"
                );
            }
            if let Some(denied) = verdict.denied {
                tracing::debug!(
                    target: "mesh::server::decision",
                    caller = peer.spiffe_id.as_deref().unwrap_or("anonymous"),
                    request_principal = verified.as_ref().map_or("", |v| v.auth.principal.as_str()),
                    remote = %peer.remote,
                    path = req.uri().path(),
                    "denied: {denied}"
                );
                let message = format!("RBAC: access denied: {denied}");
                return Admit::Refuse(refuse(
                    StatusCode::FORBIDDEN,
                    PERMISSION_DENIED,
                    &message,
                    grpc,
                ));
            }
        }
        tracing::debug!(
            target: "mesh::server::decision",
            caller = peer.spiffe_id.as_deref().unwrap_or("anonymous"),
            request_principal = verified.as_ref().map_or("", |v| v.auth.principal.as_str()),
            remote = %peer.remote,
            path = req.uri().path(),
            chain = %chain.name(),
            "allowed"
        );
        if let Some(v) = verified {
            let headers = req.headers_mut();
            if let Some(h) = &v.remove {
                headers.remove(h);
            }
            for (name, value) in &v.set {
                if let Ok(value) = http::HeaderValue::try_from(value.as_str()) {
                    headers.insert(name.clone(), value);
                }
            }
            req.extensions_mut().insert(RequestAuth::clone(&v.auth));
        }
        req.extensions_mut().insert((*peer).clone());
        Admit::Pass
    }
}

type Answer<RB> = Response<Either<RB, MeshBody>>;
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for AuthzService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = Answer<RB>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        futures_util::future::Either<
            futures_util::future::MapOk<S::Future, fn(Response<RB>) -> Answer<RB>>,
            std::future::Ready<Result<Answer<RB>, S::Error>>,
        >,
        BoxFuture<Result<Answer<RB>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        use futures_util::future::Either as E;
        let map: fn(Response<RB>) -> Answer<RB> = |r| r.map(Either::Left);
        match self.admit(&mut req, false) {
            Admit::Pass => E::Left(E::Left(self.inner.call(req).map_ok(map))),
            Admit::Refuse(r) => E::Left(E::Right(std::future::ready(Ok(r.map(Either::Right))))),
            Admit::NeedKeys(remote) => {
                // Only this request waits, and only for the fetch (bounded by its timeout).
                let inner = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, inner);
                let me = AuthzService {
                    inner: (),
                    peer: self.peer.clone(),
                    snapshots: self.snapshots.clone(),
                    jwks: self.jwks.clone(),
                };
                E::Right(Box::pin(async move {
                    me.jwks.refresh(&remote, me.jwks.min_refetch()).await;
                    match me.admit(&mut req, true) {
                        Admit::Pass => inner.call(req).await.map(map),
                        Admit::Refuse(r) => Ok(r.map(Either::Right)),
                        Admit::NeedKeys(_) => Ok(unauthenticated(
                            &JwtError::KeysUnavailable(remote.uri.clone()),
                            is_grpc(req.headers()),
                        )
                        .map(Either::Right)),
                    }
                }))
            }
        }
    }
}
