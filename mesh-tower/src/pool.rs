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

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use mesh_core::{BreakerPermit, BreakerResource, CircuitBreaker, Cluster, Overflow};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{BoxError, MeshBody};
use crate::connector::{ConnectTarget, Limited, MeshConnection, MeshConnector, Negotiated};

/// Why a request could not be sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// A circuit-breaker threshold refused a new connection or a place in the queue.
    Overflow(Overflow),
    /// Connecting (or the HTTP/2 handshake) failed.
    Connect(BoxError),
    /// The connection failed while the request was sent or its response awaited.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Overflow(o) => write!(f, "{o}"),
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Request(e) => write!(f, "request: {e}"),
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
}

#[derive(Default)]
struct Idle {
    /// Oldest first; taken from the back (the warmest connection).
    conns: Vec<(http1::SendRequest<MeshBody>, Instant)>,
    reaper: bool,
}

impl Idle {
    fn expire(&mut self, now: Instant, timeout: Duration) {
        let keep = self
            .conns
            .iter()
            .position(|(_, since)| now.saturating_duration_since(*since) < timeout)
            .unwrap_or(self.conns.len());
        self.conns.drain(..keep);
    }
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
        })
    }

    /// Sends `req` (origin-form URI and `Host` for HTTP/1.1; scheme and authority for HTTP/2).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<MeshBody>,
        h2: bool,
    ) -> Result<Response<MeshBody>, SendError> {
        if h2 {
            self.send_h2(req).await
        } else if self.alpn_h2.load(Ordering::Relaxed) {
            self.send_h2(into_h2(req)).await
        } else {
            self.send_h1(req).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<MeshBody>,
    ) -> Result<Response<MeshBody>, SendError> {
        // A reused connection may have been closed by the server while idle; hyper hands the
        // unsent request back, and it goes on another connection. Bounded: a new connection
        // is never retried this way.
        loop {
            let (mut tx, reused) = match self.checkout_h1().await? {
                Checkout::H1(tx, reused) => (tx, reused),
                // The connection negotiated HTTP/2: the request goes over it.
                Checkout::NegotiatedH2 => return self.send_h2(into_h2(req)).await,
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| {
                        PooledBody {
                            body,
                            conn: Some((tx, pool)),
                        }
                        .boxed_unsync()
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// A ready HTTP/1.1 connection, and whether it was reused.
    async fn checkout_h1(self: &Arc<Self>) -> Result<Checkout, SendError> {
        // The common case first: an idle connection or a free slot, without registering as a
        // waiter (which takes the `Notify`s' locks).
        if let Some(tx) = self.ready_idle().await {
            return Ok(Checkout::H1(tx, true));
        }
        // The rest (connecting, waiting) is rare per request: boxed, so that it does not
        // enlarge every request's future.
        Box::pin(self.checkout_h1_slow()).await
    }

    async fn checkout_h1_slow(self: &Arc<Self>) -> Result<Checkout, SendError> {
        let mut pending = None;
        if let Some(permit) = self.slot(&mut pending)? {
            return self.connect_h1(permit).await;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let returned = self.returned.notified();
            let freed = self.cluster.freed.notified();
            tokio::pin!(returned, freed);
            returned.as_mut().enable();
            freed.as_mut().enable();
            // Registered first, then looked again: nothing returned in between is missed.
            if let Some(tx) = self.ready_idle().await {
                return Ok(Checkout::H1(tx, true));
            }
            if let Some(permit) = self.slot(&mut pending)? {
                return self.connect_h1(permit).await;
            }
            tokio::select! {
                _ = returned => {}
                _ = freed => {}
            }
        }
    }

    /// The warmest idle connection that is ready, or else the warmest still open once it is.
    ///
    /// A connection is put back when its response body ends, a moment before its connection
    /// task has noticed; preferring one that is ready already saves a wait and a wake-up.
    async fn ready_idle(&self) -> Option<http1::SendRequest<MeshBody>> {
        loop {
            let mut tx = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.conns.retain(|(tx, _)| !tx.is_closed());
                match idle.conns.iter().rposition(|(tx, _)| tx.is_ready()) {
                    Some(i) => return Some(idle.conns.remove(i).0),
                    None => idle.conns.pop()?.0,
                }
            };
            if tx.ready().await.is_ok() {
                return Some(tx);
            }
        }
    }

    async fn connect_h1(self: &Arc<Self>, permit: BreakerPermit) -> Result<Checkout, SendError> {
        let io = self.connect(permit).await?;
        if io.negotiated() == Negotiated::H2 {
            self.alpn_h2.store(true, Ordering::Relaxed);
            let _connecting = self.h2_connecting.lock().await;
            if self.live_h2().is_none() {
                self.handshake_h2(io).await?;
            }
            return Ok(Checkout::NegotiatedH2);
        }
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        // With upgrades, so that `hyper::upgrade::on` works on responses (WebSocket, 101).
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Checkout::H1(tx, false))
    }

    /// Puts a connection whose response was read to the end back, for the next request.
    fn put_idle(self: &Arc<Self>, tx: http1::SendRequest<MeshBody>) {
        if tx.is_closed() {
            return;
        }
        let now = Instant::now();
        let spawn_reaper = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.expire(now, self.cluster.idle_timeout);
            idle.conns.push((tx, now));
            !std::mem::replace(&mut idle.reaper, true)
        };
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.returned.notify_waiters();
        }
        if spawn_reaper {
            self.spawn_reaper();
        }
    }

    /// Closes idle connections after the idle timeout even when no request comes; stops when
    /// nothing is idle or the pool is gone.
    fn spawn_reaper(self: &Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Outside a runtime (shutting down): HTTP/1.1 connections still expire when one is
            // next put back.
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).reaper = false;
            return;
        };
        let pool = Arc::downgrade(self);
        let every = self.cluster.idle_timeout;
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let now = Instant::now();
                // Lock order: `idle`, then `h2` (as in `open_h2`), so that a connection stored
                // while the reaper stops is seen by one or the other.
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.expire(now, every);
                let h2_left = {
                    let mut h2 = pool.h2.lock().unwrap_or_else(|e| e.into_inner());
                    // Dropping the last sender lets the connection close once its streams end.
                    if h2.as_ref().is_some_and(|(tx, used)| {
                        tx.is_closed() || now.saturating_duration_since(*used) >= every
                    }) {
                        *h2 = None;
                    }
                    h2.is_some()
                };
                if idle.conns.is_empty() && !h2_left {
                    idle.reaper = false;
                    return;
                }
            }
        });
    }

    async fn send_h2(
        self: &Arc<Self>,
        req: Request<MeshBody>,
    ) -> Result<Response<MeshBody>, SendError> {
        let mut tx = self.checkout_h2().await?;
        tx.ready().await.map_err(SendError::Request)?;
        let resp = tx.send_request(req).await.map_err(SendError::Request)?;
        Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }

    fn live_h2(&self) -> Option<http2::SendRequest<MeshBody>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        match h2.as_mut() {
            Some((tx, used)) if !tx.is_closed() => {
                *used = Instant::now();
                Some(tx.clone())
            }
            _ => None,
        }
    }

    async fn checkout_h2(self: &Arc<Self>) -> Result<http2::SendRequest<MeshBody>, SendError> {
        match self.live_h2() {
            Some(tx) => Ok(tx),
            // Boxed: opening a connection is rare per request (see `checkout_h1`).
            None => Box::pin(self.open_h2()).await,
        }
    }

    async fn open_h2(self: &Arc<Self>) -> Result<http2::SendRequest<MeshBody>, SendError> {
        let mut pending = None;
        // A request waiting for another's connect is pending, as an HTTP/1.1 waiter is: it
        // holds a `max_pending_requests` place while it waits, or overflows.
        let _connecting = match self.h2_connecting.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                pending = Some(
                    self.cluster
                        .breaker
                        .try_acquire(BreakerResource::PendingRequests)
                        .map_err(SendError::Overflow)?,
                );
                self.h2_connecting.lock().await
            }
        };
        if let Some(tx) = self.live_h2() {
            return Ok(tx);
        }
        let permit = loop {
            let freed = self.cluster.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(p) = self.slot(&mut pending)? {
                break p;
            }
            freed.await;
        };
        let io = self.connect(permit).await?;
        if io.negotiated() == Negotiated::Http1 {
            return Err(SendError::Connect(
                format!(
                    "{} negotiated http/1.1, and this request needs HTTP/2",
                    self.address
                )
                .into(),
            ));
        }
        self.handshake_h2(io).await
    }

    /// Sets up HTTP/2 on a new connection and makes it the endpoint's HTTP/2 connection.
    async fn handshake_h2(
        self: &Arc<Self>,
        io: Limited<C::Conn>,
    ) -> Result<http2::SendRequest<MeshBody>, SendError> {
        let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let spawn_reaper = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            *self.h2.lock().unwrap_or_else(|e| e.into_inner()) = Some((tx.clone(), Instant::now()));
            !std::mem::replace(&mut idle.reaper, true)
        };
        if spawn_reaper {
            self.spawn_reaper();
        }
        Ok(tx)
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

    async fn connect(&self, permit: BreakerPermit) -> Result<Limited<C::Conn>, SendError> {
        let cluster = self
            .cluster
            .cluster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let limit = cluster.connect_timeout();
        let target = ConnectTarget::new(self.address, cluster);
        let connecting = self.cluster.connector.clone().oneshot(target);
        let io = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| SendError::Connect(format!("connect timeout after {limit:?}").into()))?
            .map_err(|e| SendError::Connect(e.into()))?;
        Ok(Limited::new(io, permit, self.cluster.freed.clone()))
    }
}

/// What an HTTP/1.1 checkout found.
enum Checkout {
    /// A ready connection, and whether it was reused.
    H1(http1::SendRequest<MeshBody>, bool),
    /// The new connection negotiated `h2` and is now the endpoint's HTTP/2 connection.
    NegotiatedH2,
}

/// An HTTP/1.1-form request (origin-form URI, `Host`) in HTTP/2 form (scheme and authority).
fn into_h2(mut req: Request<MeshBody>) -> Request<MeshBody> {
    *req.version_mut() = Version::HTTP_2;
    let authority = req
        .headers_mut()
        .remove(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    if req.uri().authority().is_none()
        && let Some(authority) = authority
    {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Counts a request as waiting for a connection while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that gives its HTTP/1.1 connection back to the pool once read to the end.
struct PooledBody<C: MeshConnector> {
    body: Incoming,
    /// The connection and its pool (kept alive by a body still being read, so that the
    /// connection has somewhere to go back to; dropped with the body otherwise).
    conn: Option<(http1::SendRequest<MeshBody>, Arc<EndpointPool<C>>)>,
}

impl<C: MeshConnector> PooledBody<C> {
    fn give_back(&mut self) {
        if let Some((tx, pool)) = self.conn.take() {
            pool.put_idle(tx);
        }
    }
}

impl<C: MeshConnector> Body for PooledBody<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.give_back(),
            // A failed body leaves the connection in an unknown state: do not reuse it.
            Some(Err(_)) => this.conn = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<C: MeshConnector> Drop for PooledBody<C> {
    fn drop(&mut self) {
        // Dropped unread (hyper then closes the connection), unless nothing was left to read.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}
