//! The connector seam ([`MeshConnector`]), and connections that hold their circuit-breaker
//! slot (`max_connections`) for as long as they are open.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use mesh_core::BreakerPermit;
use tokio::sync::Notify;

use crate::body::BoxError;

/// What the stack can connect with: a `tower::Service<Uri>` (asked for `http://address` of
/// an endpoint) yielding hyper I/O (the seam for mTLS). hyper-util's `HttpConnector` is one.
pub trait MeshConnector:
    tower::Service<Uri, Response = Self::Conn, Future = Self::Fut, Error = Self::Err>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// The connection type.
    type Conn: Read + Write + Unpin + Send + 'static;
    /// The connect future.
    type Fut: Future<Output = Result<Self::Conn, Self::Err>> + Send + 'static;
    /// The connect error.
    type Err: Into<BoxError>;
}

impl<C> MeshConnector for C
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Conn = C::Response;
    type Fut = C::Future;
    type Err = C::Error;
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
pub(crate) struct Limited<T> {
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
