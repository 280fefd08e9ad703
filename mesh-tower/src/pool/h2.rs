//! HTTP/2: one multiplexed connection per endpoint, opened by one request while the others
//! wait for it.

use std::sync::Arc;

use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::TokioExecutor;
use mesh_core::BreakerResource;
use tokio::time::Instant;

use super::body::PooledBody;
use super::{EndpointPool, Held, SendError};
use crate::body::MeshBody;
use crate::connector::{Limited, MeshConnection, MeshConnector, Negotiated};

impl<C: MeshConnector> EndpointPool<C> {
    pub(super) async fn send_h2(
        self: &Arc<Self>,
        req: Request<MeshBody>,
        held: Held,
    ) -> Result<Response<MeshBody>, SendError> {
        let mut tx = self.checkout_h2().await?;
        tx.ready().await.map_err(|e| self.request_error(e))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| self.request_error(e))?;
        Ok(resp.map(|body| {
            PooledBody::<C> {
                body,
                conn: None,
                held: Some(held),
            }
            .boxed_unsync()
        }))
    }

    pub(super) fn live_h2(&self) -> Option<http2::SendRequest<MeshBody>> {
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
        let io = self.connect(permit, true).await?;
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
    pub(super) async fn handshake_h2(
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
}

/// An HTTP/1.1-form request (origin-form URI, `Host`) in HTTP/2 form (scheme and authority).
pub(super) fn into_h2(mut req: Request<MeshBody>) -> Request<MeshBody> {
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
