//! HTTP/1.1: one request per connection at a time, connections reused LIFO once their
//! response body has been read, and requests that find none free waiting for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::client::conn::http1;
use mesh_core::BreakerPermit;
use tokio::time::Instant;

use super::body::PooledBody;
use super::h2::into_h2;
use super::{EndpointPool, Held, SendError};
use crate::body::MeshBody;
use crate::connector::{MeshConnection, MeshConnector, Negotiated};

impl<C: MeshConnector> EndpointPool<C> {
    pub(super) async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<MeshBody>,
        held: Held,
    ) -> Result<Response<MeshBody>, SendError> {
        // A reused connection may have been closed by the server while idle; hyper hands the
        // unsent request back, and it goes on another connection. Bounded: a new connection
        // is never retried this way.
        loop {
            let (mut tx, reused) = match self.checkout_h1().await? {
                Checkout::H1(tx, reused) => (tx, reused),
                // The connection negotiated HTTP/2: the request goes over it.
                Checkout::NegotiatedH2 => return self.send_h2(into_h2(req), held).await,
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pool = self.clone();
                    return Ok(resp.map(|body| {
                        PooledBody {
                            body,
                            conn: Some((tx, pool)),
                            held: Some(held),
                        }
                        .boxed_unsync()
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(self.request_error(e.into_error())),
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
        let io = self.connect(permit, false).await?;
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
    pub(super) fn put_idle(self: &Arc<Self>, tx: http1::SendRequest<MeshBody>) {
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
}

/// What an HTTP/1.1 checkout found.
pub(super) enum Checkout {
    /// A ready connection, and whether it was reused.
    H1(http1::SendRequest<MeshBody>, bool),
    /// The new connection negotiated `h2` and is now the endpoint's HTTP/2 connection.
    NegotiatedH2,
}

/// Counts a request as waiting for a connection while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
