//! The server stack: a mesh workload's inbound side, configured by its server listener
//! (gRFC A36, `xds.istio.io/grpc/lds/inbound/IP:PORT` for istiod).
//!
//! Per connection: the first bytes tell TLS (a ClientHello) from plaintext, as Envoy's TLS
//! inspector does; the listener picks the filter chain; a TLS chain terminates mTLS with the
//! workload certificate (a client certificate required for STRICT); a plaintext chain serves
//! plaintext, and TLS too when it is the only chain (PERMISSIVE, which istiod writes as a
//! plaintext chain), so that mesh clients and sidecars keep their identity. A plaintext client
//! of a TLS chain, a connection no chain matches, and any connection while not serving are
//! closed without a byte. Per request: the chain's routes and RBAC ([`AuthzService`]), and the
//! caller's [`PeerInfo`] in the request extensions.
//!
//! A change of the listener drains the connections made under the old one (HTTP/2 GOAWAY, or
//! closing an idle HTTP/1.1 connection), closing them after a grace period; a change of an RDS
//! route configuration alone does not.

mod authz;
mod jwks;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::{Certificates, ConnectionFacts, LeafInfo, MeshSnapshot, ServerListener};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::telemetry::{ServerMetrics, Telemetry, Tracer};

pub use authz::{AuthzService, PeerInfo};
pub use jwks::JwksStore;

/// The request body a mesh server's application reads: hyper's, counted for telemetry as it
/// is read (nothing is counted without telemetry).
pub type InboundBody = crate::body::CountedBody<Incoming>;

/// An application a mesh server can serve: a cloneable tower service over [`InboundBody`]
/// (a hyper `service_fn`, tonic's `Routes`, an axum `Router`, ...).
pub trait AppService<RB>:
    tower::Service<
        http::Request<InboundBody>,
        Response = http::Response<RB>,
        Future: Send + 'static,
        Error: Into<crate::body::BoxError> + Send + Sync + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, RB> AppService<RB> for S where
    S: tower::Service<
            http::Request<InboundBody>,
            Response = http::Response<RB>,
            Future: Send + 'static,
            Error: Into<crate::body::BoxError> + Send + Sync + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A response body an application may answer with.
pub trait AppBody:
    http_body::Body<Data = bytes::Bytes, Error: Into<crate::body::BoxError>> + Send + 'static
{
}

impl<B> AppBody for B where
    B: http_body::Body<Data = bytes::Bytes, Error: Into<crate::body::BoxError>> + Send + 'static
{
}

/// Whether a server serves, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServingState {
    /// Its listener is here and names its address.
    Serving,
    /// Not yet, or not any more: the reason.
    NotServing(String),
}

/// How long connections of a replaced listener may finish (gRFC A36: 10 minutes).
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(600);

/// The default time a connection has to send its first bytes, and then its TLS handshake.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// A mesh server: where it listens, its listener's name, and the xDS client's watches.
#[derive(Clone)]
pub struct MeshServer {
    name: Arc<str>,
    address: SocketAddr,
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    tls: tls::TlsTerminator,
    drain_grace: Duration,
    handshake_timeout: Duration,
    jwks: JwksStore,
    telemetry: Option<Arc<Telemetry>>,
    tracer: Option<Arc<Tracer>>,
}

impl std::fmt::Debug for MeshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshServer")
            .field("name", &self.name)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl MeshServer {
    /// A server for listener `name` (from `XdsClient::subscribe_server(address)`), listening on
    /// `address`.
    pub fn new(
        name: impl Into<Arc<str>>,
        address: SocketAddr,
        snapshots: watch::Receiver<Arc<MeshSnapshot>>,
        certificates: watch::Receiver<Arc<Certificates>>,
    ) -> Self {
        Self {
            name: name.into(),
            address,
            snapshots,
            tls: tls::TlsTerminator::new(certificates),
            drain_grace: DEFAULT_DRAIN_GRACE,
            handshake_timeout: FIRST_BYTES_TIMEOUT,
            jwks: JwksStore::default(),
            telemetry: None,
            tracer: None,
        }
    }

    /// Records Istio's standard metrics for every request served (reporter `destination`),
    /// denied ones included.
    pub fn telemetry(mut self, telemetry: Arc<Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// Continues each caller's trace with a server span, and makes it the trace of the
    /// application's outbound calls while it serves the request ([`crate::telemetry::trace`]).
    pub fn tracing(mut self, tracer: Arc<Tracer>) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// How long connections of a replaced listener may finish.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// How long a connection may take to send its first bytes, and then to finish its TLS
    /// handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The least time between two fetches of one remote JWT key set forced by requests (an
    /// unknown `kid`, no keys yet); default 5 s.
    pub fn jwks_min_refetch(mut self, interval: Duration) -> Self {
        self.jwks = JwksStore::new(interval);
        self
    }

    /// The remote JWT key sets this server fetched (for dumps and checks).
    pub fn jwks(&self) -> &JwksStore {
        &self.jwks
    }

    /// The listener in force, or why the server is not serving.
    fn current(&self) -> Result<Arc<ServerListener>, String> {
        let snap = self.snapshots.borrow().clone();
        match snap.server_listener(&self.name) {
            None => Err(format!("no listener {:?} yet", self.name)),
            Some(l) if l.address() != Some(self.address) => Err(format!(
                "listener {:?} is for {}, and this server listens on {}",
                self.name,
                l.address()
                    .map_or("no address".to_string(), |a| a.to_string()),
                self.address
            )),
            Some(l) => Ok(l.clone()),
        }
    }

    fn state(&self) -> ServingState {
        match self.current() {
            Ok(_) => ServingState::Serving,
            Err(why) => ServingState::NotServing(why),
        }
    }

    /// The serving state now, and as it changes with the configuration.
    pub fn serving(&self) -> watch::Receiver<ServingState> {
        let (tx, rx) = watch::channel(self.state());
        let me = self.clone();
        let mut snaps = self.snapshots.clone();
        tokio::spawn(async move {
            while snaps.changed().await.is_ok() {
                let state = me.state();
                tx.send_if_modified(|s| {
                    let changed = *s != state;
                    *s = state;
                    changed
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        rx
    }

    /// Accepts connections on `listener` and serves each with `service` behind the mesh's
    /// per-request stage. Accept errors are logged and retried: it returns only if the task
    /// is dropped.
    pub async fn serve<S, RB>(self, listener: TcpListener, service: S) -> std::io::Result<()>
    where
        S: AppService<RB>,
        RB: AppBody,
    {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                // Out of file descriptors, a connection reset before accept, ...: the server
                // keeps serving the others and tries again.
                Err(e) => {
                    tracing::warn!(address = %self.address, "accept: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (me, service) = (self.clone(), service.clone());
            tokio::spawn(async move {
                if let Err(e) = me.connection(tcp, remote, service).await {
                    tracing::debug!(%remote, "inbound connection: {e}");
                }
            });
        }
    }

    async fn connection<S, RB>(
        self,
        tcp: TcpStream,
        remote: SocketAddr,
        service: S,
    ) -> Result<(), String>
    where
        S: AppService<RB>,
        RB: AppBody,
    {
        let (io, peer, listener) = self.handshake(tcp, remote).await?;
        let drained = drained(self.snapshots.clone(), self.name.clone(), listener);
        self.serve_http(TokioIo::new(io), peer, service, drained)
            .await
    }

    /// A new connection up to HTTP: serving or closed, the first bytes, the chain, TLS.
    async fn handshake(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
    ) -> Result<(MeshConnection, PeerInfo, Arc<ServerListener>), String> {
        // Not serving: closed without a byte (A36).
        let listener = self
            .current()
            .map_err(|why| format!("closed: not serving ({why})"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let is_tls = tokio::time::timeout(self.handshake_timeout, starts_with_client_hello(&tcp))
            .await
            .map_err(|_| "closed: no bytes in time".to_string())?
            .map_err(|e| e.to_string())?;
        let facts = ConnectionFacts {
            local,
            peer: remote,
            tls: is_tls,
        };
        let chain = listener
            .select(&facts)
            .ok_or_else(|| "closed: no filter chain matches".to_string())?
            .clone();
        let mut peer = PeerInfo {
            local,
            remote,
            tls: is_tls,
            certificate: None,
            spiffe_id: None,
            chain: chain.clone(),
        };
        if let Some(jwt) = chain.jwt() {
            self.jwks.prefetch(jwt.remote_keys());
        }
        if !is_tls {
            if chain.tls().is_some() {
                return Err("closed: the filter chain requires TLS".into());
            }
            let conn = MeshConnection {
                io: ConnectionIo::Plain(tcp),
                peer: Arc::new(peer.clone()),
            };
            return Ok((conn, peer, listener));
        }
        // A peer that stalls in its handshake does not hold the connection for ever.
        let io = tokio::time::timeout(self.handshake_timeout, self.tls.accept(&chain, tcp))
            .await
            .map_err(|_| "closed: the TLS handshake took too long".to_string())??;
        if let Some(leaf) = io
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| LeafInfo::parse(c).ok())
        {
            peer.spiffe_id = leaf.sans.spiffe_id().map(Arc::from);
            peer.certificate = Some(Arc::new(leaf));
        }
        let conn = MeshConnection {
            io: ConnectionIo::Tls(Box::new(io)),
            peer: Arc::new(peer.clone()),
        };
        Ok((conn, peer, listener))
    }

    /// The server's connections for an HTTP server of the application's (tonic's
    /// `Server::serve_with_incoming`): accepted on `listener`, refused or closed as
    /// [`MeshServer::serve`] does, handshaken concurrently, each carrying its [`PeerInfo`]
    /// (tonic puts it in every request's extensions; [`MeshServer::layer`] reads it there).
    /// Connections are not drained on a listener change: the application's server owns them.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl futures_util::Stream<Item = std::io::Result<MeshConnection>> + Send + 'static {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<MeshConnection>(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    () = tx.closed() => return,
                };
                let (tcp, remote) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(address = %self.address, "accept: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (me, tx) = (self.clone(), tx.clone());
                tokio::spawn(async move {
                    match me.handshake(tcp, remote).await {
                        Ok((conn, ..)) => {
                            let _ = tx.send(conn).await;
                        }
                        Err(e) => tracing::debug!(%remote, "inbound connection: {e}"),
                    }
                });
            }
        });
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)))
    }

    /// The per-request stage (routes, JWT, RBAC) as a tower layer, for an application's own
    /// HTTP server fed by [`MeshServer::incoming`]; a request that did not come through a mesh
    /// connection is refused.
    pub fn layer(&self) -> MeshServerLayer {
        MeshServerLayer {
            snapshots: self.snapshots.clone(),
            jwks: self.jwks.clone(),
            telemetry: self.telemetry.clone(),
            tracer: self.tracer.clone(),
        }
    }

    async fn serve_http<I, S, RB>(
        &self,
        io: I,
        peer: PeerInfo,
        service: S,
        drained: impl std::future::Future<Output = ()>,
    ) -> Result<(), String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
        S: AppService<RB>,
        RB: AppBody,
    {
        let peer = Arc::new(peer);
        let svc = AuthzService::new(
            service,
            peer.clone(),
            self.snapshots.clone(),
            self.jwks.clone(),
        );
        let svc = ServerMetrics::new(svc, self.telemetry.clone(), self.tracer.clone(), Some(peer));
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(|e| e.to_string()),
            () = drained => {}
        }
        // The listener changed: GOAWAY (HTTP/2) or close when idle (HTTP/1.1), then a grace.
        conn.as_mut().graceful_shutdown();
        match tokio::time::timeout(self.drain_grace, conn).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("closed after the drain grace".into()),
        }
    }
}

/// The layer of [`MeshServer::layer`].
#[derive(Clone, Debug)]
pub struct MeshServerLayer {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    jwks: JwksStore,
    telemetry: Option<Arc<Telemetry>>,
    tracer: Option<Arc<Tracer>>,
}

impl<S> tower::Layer<S> for MeshServerLayer {
    type Service = ServerMetrics<AuthzService<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        let stage =
            AuthzService::per_request_peer(inner, self.snapshots.clone(), self.jwks.clone());
        ServerMetrics::new(stage, self.telemetry.clone(), self.tracer.clone(), None)
    }
}

/// One accepted mesh connection: TLS terminated (or plaintext), with who is on the other end.
pub struct MeshConnection {
    io: ConnectionIo,
    peer: Arc<PeerInfo>,
}

enum ConnectionIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl MeshConnection {
    /// Who is calling, on which chain.
    pub fn peer(&self) -> &Arc<PeerInfo> {
        &self.peer
    }
}

impl std::fmt::Debug for MeshConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConnection")
            .field("remote", &self.peer.remote)
            .field("tls", &self.peer.tls)
            .finish_non_exhaustive()
    }
}

impl tokio::io::AsyncRead for MeshConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ConnectionIo::Plain(t) => std::pin::Pin::new(t).poll_read(cx, buf),
            ConnectionIo::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for MeshConnection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            ConnectionIo::Plain(t) => std::pin::Pin::new(t).poll_write(cx, buf),
            ConnectionIo::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ConnectionIo::Plain(t) => std::pin::Pin::new(t).poll_flush(cx),
            ConnectionIo::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ConnectionIo::Plain(t) => std::pin::Pin::new(t).poll_shutdown(cx),
            ConnectionIo::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for MeshConnection {
    type ConnectInfo = Arc<PeerInfo>;

    fn connect_info(&self) -> Arc<PeerInfo> {
        self.peer.clone()
    }
}

/// Resolves when the server's listener is no longer `current` (replaced or removed).
async fn drained(
    mut snaps: watch::Receiver<Arc<MeshSnapshot>>,
    name: Arc<str>,
    current: Arc<ServerListener>,
) {
    loop {
        let same = snaps
            .borrow_and_update()
            .server_listener(&name)
            .is_some_and(|l| Arc::ptr_eq(l, &current));
        if !same {
            return;
        }
        if snaps.changed().await.is_err() {
            // No more configuration will come: keep serving.
            std::future::pending::<()>().await;
        }
    }
}

/// Whether the connection opens with a TLS handshake record (0x16, version 3.x), looking
/// without consuming.
async fn starts_with_client_hello(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before any byte",
            ));
        }
        if n >= 2 || buf[0] != 0x16 {
            return Ok(buf[0] == 0x16 && buf[1] == 0x03);
        }
        // One byte so far, and peek would return it again at once: wait a little.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
