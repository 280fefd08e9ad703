//! Idle connections: the HTTP/1.1 cache in LIFO order and the reaper that closes what has
//! been idle for the timeout, of either protocol.

use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http1;
use tokio::time::Instant;

use super::EndpointPool;
use crate::body::MeshBody;
use crate::connector::MeshConnector;

#[derive(Default)]
pub(super) struct Idle {
    /// Oldest first; taken from the back (the warmest connection).
    pub(super) conns: Vec<(http1::SendRequest<MeshBody>, Instant)>,
    pub(super) reaper: bool,
}

impl Idle {
    pub(super) fn expire(&mut self, now: Instant, timeout: Duration) {
        let keep = self
            .conns
            .iter()
            .position(|(_, since)| now.saturating_duration_since(*since) < timeout)
            .unwrap_or(self.conns.len());
        self.conns.drain(..keep);
    }
}

impl<C: MeshConnector> EndpointPool<C> {
    /// Closes idle connections after the idle timeout even when no request comes; stops when
    /// nothing is idle or the pool is gone.
    pub(super) fn spawn_reaper(self: &Arc<Self>) {
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
}
