//! Connections per endpoint, over hyper's connection API.
//!
//! The stack knows the endpoint of every attempt by index, so its pools are per endpoint and
//! found without hashing a key, as linkerd2-proxy's per-endpoint stacks are. HTTP/1.1
//! connections are reused LIFO once their response body has been read to the end; HTTP/2 uses
//! one multiplexed connection. Connections of either kind unused for the idle timeout close.
//!
//! Connections count against the cluster's circuit breaker as Envoy's pools do: at most
//! `max_connections` open, and up to `max_pending_requests` requests waiting for a
//! connection, each served by the first connection returned to this endpoint's pool or by a
//! new one once a slot frees. When an endpoint leaves EDS its pool is dropped, and with it the
//! idle connections; in-flight requests finish on theirs, which then close.

mod body;
mod h1;
mod h2;
mod idle;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2;
use mesh_core::{BreakerPermit, BreakerResource, CircuitBreaker, Cluster, Overflow};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{BoxError, MeshBody};
use crate::connector::{ConnectTarget, Limited, MeshConnector};
use h2::into_h2;
use idle::Idle;

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A circuit-breaker threshold refused a new connection or a place in the queue.
    Overflow(Overflow),
    /// Connecting (or the HTTP/2 handshake) failed.
    Connect(BoxError),
    /// The connection failed while the request was sent or its response awaited; with the
    /// I/O error that failed it, when one was seen.
    Request(hyper::Error, Option<String>),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Overflow(o) => write!(f, "{o}"),
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Request(e, _) => write!(f, "request: {e}"),
        }
    }
}

/// Circuit-breaker permits a request holds until its response body has been read or dropped.
#[derive(Debug, Default)]
pub(crate) struct Held {
    _request: Option<BreakerPermit>,
    _retry: Option<BreakerPermit>,
}

impl Held {
    /// The `max_requests` permit, and the `max_retries` one for a retry.
    pub fn new(request: BreakerPermit, retry: Option<BreakerPermit>) -> Self {
        Self {
            _request: Some(request),
            _retry: retry,
        }
    }
}

/// What every endpoint pool of one cluster shares.
pub(crate) struct ClusterConns<C> {
    pub connector: C,
    pub breaker: Arc<CircuitBreaker>,
    /// Woken when a connection of the cluster closes and its slot frees.
    pub freed: Arc<Notify>,
    pub idle_timeout: Duration,
    /// The cluster as of its last update (it may change with CDS; the pools stay): what each
    /// connect's target and timeout come from.
    pub cluster: RwLock<Arc<Cluster>>,
}

/// The connections to one endpoint.
pub(crate) struct EndpointPool<C> {
    cluster: Arc<ClusterConns<C>>,
    address: SocketAddr,
    /// A connection to this endpoint negotiated `h2` (ALPN): every request goes over HTTP/2.
    alpn_h2: AtomicBool,
    idle: Mutex<Idle>,
    /// Woken when an HTTP/1.1 connection comes back to `idle`.
    returned: Notify,
    /// Requests waiting on `returned`: returning a connection touches the `Notify` (a lock)
    /// only when someone waits.
    waiting: AtomicUsize,
    /// The HTTP/2 connection and when it was last used.
    h2: Mutex<Option<(http2::SendRequest<MeshBody>, Instant)>>,
    /// Held while an HTTP/2 connection is being opened, so that only one is.
    h2_connecting: tokio::sync::Mutex<()>,
    /// The last I/O error of this endpoint's connections.
    last_io_error: crate::connector::LastIoError,
    /// The identity the endpoint's newest connection verified (mTLS), for the metrics.
    peer: Mutex<Option<Arc<str>>>,
}

impl<C: MeshConnector> EndpointPool<C> {
    /// An empty pool for the endpoint at `address`.
    pub fn new(cluster: Arc<ClusterConns<C>>, address: SocketAddr) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            address,
            alpn_h2: AtomicBool::new(false),
            idle: Mutex::default(),
            returned: Notify::new(),
            waiting: AtomicUsize::new(0),
            h2: Mutex::default(),
            h2_connecting: tokio::sync::Mutex::new(()),
            last_io_error: Default::default(),
            peer: Mutex::default(),
        })
    }

    /// The SPIFFE ID the endpoint's newest connection verified, if it was mTLS.
    pub fn peer_identity(&self) -> Option<Arc<str>> {
        self.peer.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends `req` (origin-form URI and `Host` for HTTP/1.1; scheme and authority for HTTP/2);
    /// `held` stays with the response body until it ends or is dropped.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<MeshBody>,
        h2: bool,
        held: Held,
    ) -> Result<Response<MeshBody>, SendError> {
        if h2 {
            self.send_h2(req, held).await
        } else if self.alpn_h2.load(Ordering::Relaxed) {
            self.send_h2(into_h2(req), held).await
        } else {
            self.send_h1(req, held).await
        }
    }

    /// A connection slot if one is free; otherwise a place in the pending queue (taken once,
    /// kept while waiting) or the overflow that refused it.
    fn slot(
        &self,
        pending: &mut Option<BreakerPermit>,
    ) -> Result<Option<BreakerPermit>, SendError> {
        let breaker = &self.cluster.breaker;
        match breaker.try_acquire(BreakerResource::Connections) {
            Ok(p) => Ok(Some(p)),
            Err(_) if pending.is_some() => Ok(None),
            Err(_) => {
                *pending = Some(
                    breaker
                        .try_acquire(BreakerResource::PendingRequests)
                        .map_err(SendError::Overflow)?,
                );
                Ok(None)
            }
        }
    }

    /// A new connection for an HTTP/2 (`h2`) or HTTP/1.1 request.
    async fn connect(
        &self,
        permit: BreakerPermit,
        h2: bool,
    ) -> Result<Limited<C::Conn>, SendError> {
        let cluster = self
            .cluster
            .cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let limit = cluster.connect_timeout();
        let target = ConnectTarget::new(self.address, cluster).for_h2(h2);
        let connecting = self.cluster.connector.clone().oneshot(target);
        let io = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| SendError::Connect(format!("connect timeout after {limit:?}").into()))?
            .map_err(|e| SendError::Connect(e.into()))?;
        *self.peer.lock().unwrap_or_else(|e| e.into_inner()) =
            crate::connector::MeshConnection::peer_identity(&io);
        // What an older connection met explains nothing about this one.
        self.last_io_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        Ok(Limited::new(
            io,
            permit,
            self.cluster.freed.clone(),
            self.last_io_error.clone(),
        ))
    }

    /// A failed request, with the I/O error behind it if a connection of this endpoint met
    /// one (taken, so that it explains one failure only).
    pub(super) fn request_error(&self, e: hyper::Error) -> SendError {
        let io = self
            .last_io_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        SendError::Request(e, io)
    }
}
