//! The connector seam ([`MeshConnector`]), and connections counted against a cluster's circuit
//! breaker as Envoy's per-cluster pools do: `max_connections` open at most, and up to
//! `max_pending_requests` requests waiting for one.
//!
//! The stack's own pools (per endpoint) apply the thresholds themselves. [`LimitedConnector`]
//! applies them to any hyper-util client: its pool races a new connection against a
//! connection becoming idle, so a request that waits here is served by the first connection
//! freed for reuse, or by a new one once a connection closes, and fails fast when the pending
//! queue is full.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use mesh_core::{BreakerPermit, BreakerResource, CircuitBreaker, Overflow};
use tokio::sync::Notify;

use crate::body::BoxError;

/// What the stack can connect with: a `tower::Service<Uri>` yielding hyper connections (the
/// seam for mTLS). `HttpConnector` is one.
pub trait MeshConnector:
    tower::Service<Uri, Response = Self::Conn, Future = Self::Fut, Error = Self::Err>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The connection type.
    type Conn: Read + Write + Connection + Unpin + Send + 'static;
    /// The connect future.
    type Fut: Future<Output = Result<Self::Conn, Self::Err>> + Send + 'static;
    /// The connect error.
    type Err: Into<BoxError>;
}

impl<C> MeshConnector for C
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Conn = C::Response;
    type Fut = C::Future;
    type Err = C::Error;
}

/// The error a connection attempt fails with when a threshold is full.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverflowError(pub Overflow);

/// Wraps a connector so that connections count against `breaker`.
#[derive(Clone)]
pub struct LimitedConnector<C> {
    inner: C,
    breaker: Arc<CircuitBreaker>,
    freed: Arc<Notify>,
}

impl<C> LimitedConnector<C> {
    /// Limits `inner`'s connections with `breaker`.
    pub fn new(inner: C, breaker: Arc<CircuitBreaker>) -> Self {
        Self {
            inner,
            breaker,
            freed: Arc::new(Notify::new()),
        }
    }
}

impl<C> tower::Service<Uri> for LimitedConnector<C>
where
    C: tower::Service<Uri> + Clone + Send + 'static,
    C::Response: Read + Write + Connection + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = Limited<C::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Limited<C::Response>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        // The inner connector was polled ready; keep that one for this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (breaker, freed) = (self.breaker.clone(), self.freed.clone());
        Box::pin(async move {
            let permit = match breaker.try_acquire(BreakerResource::Connections) {
                Ok(p) => p,
                Err(_) => {
                    let _pending = breaker
                        .try_acquire(BreakerResource::PendingRequests)
                        .map_err(|o| Box::new(OverflowError(o)) as BoxError)?;
                    loop {
                        let notified = freed.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if let Ok(p) = breaker.try_acquire(BreakerResource::Connections) {
                            break p;
                        }
                        notified.await;
                    }
                }
            };
            let io = inner.call(dst).await.map_err(Into::into)?;
            Ok(Limited::new(io, permit, freed))
        })
    }
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

/// A connection holding its slot.
pub struct Limited<T> {
    io: T,
    _slot: Slot,
}

impl<T> Limited<T> {
    /// `io` holding `permit` until it is dropped, then waking `freed`'s waiters.
    pub(crate) fn new(io: T, permit: BreakerPermit, freed: Arc<Notify>) -> Self {
        Self {
            io,
            _slot: Slot {
                permit: Some(permit),
                freed,
            },
        }
    }
}

impl<T: Read + Unpin> Read for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
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
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Limited<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// The overflow behind a client error, if a threshold refused the connection.
pub fn overflow_in(e: &(dyn std::error::Error + 'static)) -> Option<Overflow> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(o) = err.downcast_ref::<OverflowError>() {
            return Some(o.0);
        }
        cur = err.source();
    }
    None
}
