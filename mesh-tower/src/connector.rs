//! The connector seam ([`MeshConnector`]): what the stack asks a connector for (a typed
//! [`ConnectTarget`]: endpoint, cluster, TLS requirements, connect timeout) and what a
//! connection reports back (the protocol it negotiated); the plain TCP connector; and
//! connections that hold their circuit-breaker slot (`max_connections`) while open.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use mesh_core::{BreakerPermit, Cluster, UpstreamTls};
use tokio::sync::Notify;

use crate::body::BoxError;

/// Where the stack wants a connection: one endpoint of one cluster, with the cluster's
/// transport requirements as of this connect.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    address: SocketAddr,
    cluster: Arc<Cluster>,
    h2: bool,
}

impl ConnectTarget {
    /// A target for endpoint `address` of `cluster`, for HTTP/1.1.
    pub fn new(address: SocketAddr, cluster: Arc<Cluster>) -> Self {
        Self {
            address,
            cluster,
            h2: false,
        }
    }

    /// The same target for a request that needs HTTP/2 (HTTP/2 and gRPC requests).
    pub fn for_h2(mut self, h2: bool) -> Self {
        self.h2 = h2;
        self
    }

    /// Whether the connection is for HTTP/2: a TLS connector offers ALPN `h2`, else
    /// `http/1.1`.
    pub fn wants_h2(&self) -> bool {
        self.h2
    }

    /// The endpoint's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The cluster, as of this connect.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The cluster's name.
    pub fn cluster_name(&self) -> &Arc<str> {
        self.cluster.name()
    }

    /// The cluster's TLS requirements (SNI, SAN matchers, certificate providers); `None`
    /// means plaintext. A connector must not connect in plaintext when this is set.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.cluster.tls()
    }

    /// The cluster's connect timeout (the stack applies it around the connector too).
    pub fn connect_timeout(&self) -> Duration {
        self.cluster.connect_timeout()
    }
}

/// The application protocol a connection negotiated (TLS ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Negotiated {
    /// Nothing was negotiated (plaintext): the request decides, HTTP/2 for HTTP/2 and gRPC.
    Unknown,
    /// `http/1.1`.
    Http1,
    /// `h2`.
    H2,
}

/// A connection the stack can speak HTTP over.
pub trait MeshConnection: Read + Write + Unpin + Send + 'static {
    /// The protocol negotiated when the connection was set up.
    fn negotiated(&self) -> Negotiated {
        Negotiated::Unknown
    }

    /// The server's SPIFFE ID, verified in the handshake (mTLS only).
    fn peer_identity(&self) -> Option<Arc<str>> {
        None
    }
}

impl<T> MeshConnection for TokioIo<T> where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
}

/// What the stack can connect with: a `tower::Service<ConnectTarget>` yielding connections
/// (the seam for mTLS). [`TcpConnector`] is the plaintext one.
pub trait MeshConnector:
    tower::Service<ConnectTarget, Response = Self::Conn, Future = Self::Fut, Error = Self::Err>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The connection type.
    type Conn: MeshConnection;
    /// The connect future.
    type Fut: Future<Output = Result<Self::Conn, Self::Err>> + Send + 'static;
    /// The connect error.
    type Err: Into<BoxError>;
}

impl<C> MeshConnector for C
where
    C: tower::Service<ConnectTarget> + Clone + Send + Sync + 'static,
    C::Response: MeshConnection,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Conn = C::Response;
    type Fut = C::Future;
    type Err = C::Error;
}

/// Plain TCP with `TCP_NODELAY`. It refuses targets whose cluster requires TLS: a cluster the
/// configuration says is encrypted is never sent plaintext.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

/// Why [`TcpConnector`] did not connect.
#[derive(Debug, thiserror::Error)]
pub enum TcpConnectError {
    /// The cluster requires TLS, which this connector does not do.
    #[error("cluster {0} requires TLS; this connector only does plaintext")]
    TlsRequired(Arc<str>),
    /// The TCP connect failed.
    #[error("tcp connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
}

impl tower::Service<ConnectTarget> for TcpConnector {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = TcpConnectError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, TcpConnectError>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TcpConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: ConnectTarget) -> Self::Future {
        Box::pin(async move {
            if target.tls().is_some() {
                return Err(TcpConnectError::TlsRequired(target.cluster_name().clone()));
            }
            let addr = target.address();
            let stream = tcp_connect(addr)
                .await
                .map_err(|e| TcpConnectError::Io(addr, e))?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A TCP connection with `TCP_NODELAY`, as every connector of the stack makes them.
pub(crate) async fn tcp_connect(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A connection slot: released, and waiters woken, when the connection closes.
struct Slot {
    permit: Option<BreakerPermit>,
    freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Release first, then wake, so that a woken waiter finds the slot free.
        drop(self.permit.take());
        self.freed.notify_waiters();
    }
}

/// The last I/O error an endpoint's connections met, for the request that fails because of it.
///
/// hyper reports a connection that failed under a request as "connection error" or, for a
/// request not yet written, "operation was canceled"; the cause (a reset, a TLS alert such as a
/// server refusing the client certificate) is seen here first, when the read or write fails,
/// before hyper fails any request.
pub(crate) type LastIoError = Arc<std::sync::Mutex<Option<String>>>;

/// A connection holding its slot.
pub(crate) struct Limited<T> {
    io: T,
    _slot: Slot,
    last_error: LastIoError,
}

impl<T> Limited<T> {
    /// `io` holding `permit` until it is dropped, then waking `freed`'s waiters; its I/O
    /// errors go to `last_error`.
    pub(crate) fn new(
        io: T,
        permit: BreakerPermit,
        freed: Arc<Notify>,
        last_error: LastIoError,
    ) -> Self {
        Self {
            io,
            _slot: Slot {
                permit: Some(permit),
                freed,
            },
            last_error,
        }
    }

    /// Passes `p` through, keeping its error if it is one (per read and write: inlined, and
    /// the rare error path out of line).
    #[inline(always)]
    fn note<R>(&self, p: Poll<std::io::Result<R>>) -> Poll<std::io::Result<R>> {
        if let Poll::Ready(Err(e)) = &p {
            self.keep(e);
        }
        p
    }

    #[cold]
    #[inline(never)]
    fn keep(&self, e: &std::io::Error) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
    }
}

impl<T: MeshConnection> MeshConnection for Limited<T> {
    fn negotiated(&self) -> Negotiated {
        self.io.negotiated()
    }

    fn peer_identity(&self) -> Option<Arc<str>> {
        self.io.peer_identity()
    }
}

impl<T: Read + Unpin> Read for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let p = Pin::new(&mut me.io).poll_read(cx, buf);
        me.note(p)
    }
}

impl<T: Write + Unpin> Write for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let p = Pin::new(&mut me.io).poll_write(cx, buf);
        me.note(p)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let p = Pin::new(&mut me.io).poll_flush(cx);
        me.note(p)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let p = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.note(p)
    }
}
