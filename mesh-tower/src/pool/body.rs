//! The response body of both protocols: it holds the request's circuit-breaker permits until
//! it ends, and an HTTP/1.1 one hands its connection back when read to the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;

use super::{EndpointPool, Held};
use crate::body::{BoxError, MeshBody};
use crate::connector::MeshConnector;

/// A response body that releases its permits when it ends, and gives its HTTP/1.1 connection
/// back to the pool once read to the end.
pub(super) struct PooledBody<C: MeshConnector> {
    pub(super) body: Incoming,
    /// The HTTP/1.1 connection and its pool (kept alive by a body still being read, so that
    /// the connection has somewhere to go back to; dropped with the body otherwise). `None`
    /// over HTTP/2, whose connection is shared.
    pub(super) conn: Option<(http1::SendRequest<MeshBody>, Arc<EndpointPool<C>>)>,
    /// Released when the body ends.
    pub(super) held: Option<Held>,
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
            None => {
                this.held = None;
                this.give_back();
            }
            // A failed body leaves the connection in an unknown state: do not reuse it.
            Some(Err(_)) => {
                this.held = None;
                this.conn = None;
            }
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
