//! Per request on a server connection: the chain's routes (non-forwarding only, gRFC A36) and
//! its RBAC (A41), then the application with the caller's identity in the request extensions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body_util::Either;
use mesh_core::rbac::AuthzRequest;
use mesh_core::route::RouteAction;
use mesh_core::{FilterChain, LeafInfo, MeshSnapshot, RouteRequest, RouteSource};
use tokio::sync::watch;

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
/// The gRPC code for UNAVAILABLE.
const UNAVAILABLE: u32 = 14;

/// A mesh server's per-request stage in front of the application's service.
#[derive(Clone)]
pub struct AuthzService<S> {
    inner: S,
    peer: Arc<PeerInfo>,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
}

impl<S> AuthzService<S> {
    /// `inner` behind the routes and RBAC of `peer.chain`.
    pub fn new(
        inner: S,
        peer: Arc<PeerInfo>,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    ) -> Self {
        Self {
            inner,
            peer,
            snapshots,
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

/// Why the chain cannot serve a request (A36): `None` if a non-forwarding route matches.
fn route_problem(
    chain: &FilterChain,
    snapshots: &watch::Receiver<Arc<MeshSnapshot>>,
    rr: &RouteRequest<'_>,
) -> Option<String> {
    let rc = match chain.routes() {
        RouteSource::Inline(rc) => rc.clone(),
        // Only RDS routes need the snapshot (istiod's are inline).
        RouteSource::Rds(name) => match snapshots.borrow().route_config(name) {
            Some(rc) => rc.clone(),
            None => return Some(format!("route configuration {name:?} is not available")),
        },
    };
    match rc.route(rr, &mut rand::rng()) {
        Ok(route) => match route.action() {
            RouteAction::NonForwarding => None,
            RouteAction::Forward(_) => Some(format!(
                "route {:?} forwards, and a server's routes must be non-forwarding",
                route.name()
            )),
        },
        Err(e) => Some(e.to_string()),
    }
}

impl<S, B, RB> tower::Service<Request<B>> for AuthzService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<Either<RB, MeshBody>>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        futures_util::future::MapOk<S::Future, fn(Response<RB>) -> Response<Either<RB, MeshBody>>>,
        std::future::Ready<Result<Response<Either<RB, MeshBody>>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        let grpc = is_grpc(req.headers());
        let chain = &self.peer.chain;
        let local = |r: Response<MeshBody>| {
            futures_util::future::Either::Right(std::future::ready(Ok(r.map(Either::Right))))
        };
        // One view of the request for the route and for RBAC.
        let rr = RouteRequest::from_request(&req);
        if let Some(problem) = route_problem(chain, &self.snapshots, &rr) {
            tracing::debug!(chain = %chain.name(), "{problem}");
            return local(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                UNAVAILABLE,
                &problem,
                grpc,
            ));
        }
        if !chain.rbac().is_empty() {
            let verdict = chain.rbac().evaluate(&AuthzRequest {
                request: rr,
                source: self.peer.remote,
                destination: self.peer.local,
                peer: self.peer.certificate.as_deref(),
                tls: self.peer.tls,
                request_principal: None,
            });
            for a in &verdict.audit {
                // gRFC A59's stdout logger fields.
                tracing::info!(
                    target: "mesh::rbac::audit",
                    rpc_method = req.uri().path(),
                    principal = self.peer.spiffe_id.as_deref().unwrap_or(""),
                    policy_name = %a.filter,
                    matched_rule = a.policy.as_deref().unwrap_or(""),
                    authorized = a.authorized,
                    "rbac"
                );
            }
            if let Some(denied) = verdict.denied {
                tracing::debug!(
                    target: "mesh::server::decision",
                    caller = self.peer.spiffe_id.as_deref().unwrap_or("anonymous"),
                    remote = %self.peer.remote,
                    path = req.uri().path(),
                    "denied: {denied}"
                );
                let message = format!("RBAC: access denied: {denied}");
                return local(refuse(
                    StatusCode::FORBIDDEN,
                    PERMISSION_DENIED,
                    &message,
                    grpc,
                ));
            }
        }
        tracing::debug!(
            target: "mesh::server::decision",
            caller = self.peer.spiffe_id.as_deref().unwrap_or("anonymous"),
            remote = %self.peer.remote,
            path = req.uri().path(),
            chain = %chain.name(),
            "allowed"
        );
        req.extensions_mut().insert((*self.peer).clone());
        let map: fn(Response<RB>) -> Response<Either<RB, MeshBody>> = |r| r.map(Either::Left);
        futures_util::future::Either::Left(self.inner.call(req).map_ok(map))
    }
}
