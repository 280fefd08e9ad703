//! A server's metrics: each request with reporter `destination`, denied ones included.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;

use super::trace::{Tracer, in_trace, in_trace_sync};
use super::{Interned, METADATA, METADATA_ID, Series, Telemetry, grpc_status};
use crate::body::{BodyCount, BoxError, CountedBody, MeshBody};
use crate::observe::{ObservedBody, RequestObserver, StreamEnd};
use crate::protocol::is_grpc;
use crate::reply::ResponseFlags;
use crate::server::PeerInfo;
use mesh_core::telemetry::trace_context::TraceContext;
use tracing::Instrument;

/// A server's metrics (reporter `destination`) around its per-request stage, so that denied
/// requests are counted too. Without telemetry it passes responses through untouched.
#[derive(Clone)]
pub struct ServerMetrics<S> {
    inner: S,
    telemetry: Option<Arc<Telemetry>>,
    tracer: Option<Arc<Tracer>>,
    /// The connection's caller; `None`: read per request from the extensions.
    peer: Option<Arc<PeerInfo>>,
}

impl<S> ServerMetrics<S> {
    /// `inner`, recorded into `telemetry` (if any) and traced by `tracer` (if any) as served
    /// to `peer` (`None`: the `Arc<PeerInfo>` in each request's extensions).
    pub(crate) fn new(
        inner: S,
        telemetry: Option<Arc<Telemetry>>,
        tracer: Option<Arc<Tracer>>,
        peer: Option<Arc<PeerInfo>>,
    ) -> Self {
        Self {
            inner,
            telemetry,
            tracer,
            peer,
        }
    }
}

/// The service a server's request names: its authority (or `Host`) without the port. A
/// proxyless server gets no inbound cluster metadata from istiod, so the caller's authority
/// stands in for it; the caller is authenticated under mTLS.
fn requested_service<B>(req: &Request<B>) -> &str {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default();
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// A server's request body as the metrics see it: wrapped so that what the application reads
/// is counted (`istio_request_bytes` without a `content-length`, gRPC's request messages).
pub trait CountableBody: Sized {
    /// The body the service behind the metrics gets.
    type Counted;

    /// This body, counted into `counter` (gRPC messages too when `grpc`); `None`: not counted.
    fn counted(self, counter: Option<Arc<BodyCount>>, grpc: bool) -> Self::Counted;
}

/// Bodies an application's service can take wrapped: hyper's, and the in-memory ones tests
/// and in-process callers use.
macro_rules! countable_as_wrapped {
    ($($body:ty),*) => {$(
        impl CountableBody for $body {
            type Counted = CountedBody<$body>;

            fn counted(self, counter: Option<Arc<BodyCount>>, grpc: bool) -> Self::Counted {
                CountedBody::new(self, counter, grpc)
            }
        }
    )*};
}

countable_as_wrapped!(
    hyper::body::Incoming,
    http_body_util::Full<Bytes>,
    http_body_util::Empty<Bytes>
);

/// Boxed bodies stay boxed, the count inside.
impl<E: 'static> CountableBody for http_body_util::combinators::UnsyncBoxBody<Bytes, E> {
    type Counted = Self;

    fn counted(self, counter: Option<Arc<BodyCount>>, grpc: bool) -> Self::Counted {
        match counter {
            Some(c) => CountedBody::new(self, Some(c), grpc).boxed_unsync(),
            None => self,
        }
    }
}

#[cfg(feature = "tonic")]
impl CountableBody for tonic::body::Body {
    type Counted = tonic::body::Body;

    fn counted(self, counter: Option<Arc<BodyCount>>, grpc: bool) -> Self::Counted {
        match counter {
            // tonic's services take its own body type, so the count goes inside one.
            Some(c) => tonic::body::Body::new(CountedBody::new(self, Some(c), grpc)),
            None => self,
        }
    }
}

type ServerFuture<E> = Pin<Box<dyn Future<Output = Result<Response<MeshBody>, E>> + Send>>;

impl<S, B, RB> tower::Service<Request<B>> for ServerMetrics<S>
where
    B: CountableBody,
    S: tower::Service<Request<B::Counted>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<http_body_util::Either<MeshBody, RB>>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        futures_util::future::MapOk<S::Future, fn(Response<RB>) -> Self::Response>,
        futures_util::future::MapOk<
            ServerFuture<S::Error>,
            fn(Response<MeshBody>) -> Self::Response,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::TryFutureExt;
        use futures_util::future::Either as E;
        let traced = self.tracer.as_ref().map(|t| t.server_span(&mut req));
        let Some(telemetry) = self.telemetry.clone() else {
            let Some((ctx, span)) = traced else {
                let plain: fn(Response<RB>) -> Self::Response =
                    |r| r.map(http_body_util::Either::Right);
                return E::Left(
                    self.inner
                        .call(req.map(|b| b.counted(None, false)))
                        .map_ok(plain),
                );
            };
            let req = req.map(|b| b.counted(None, false));
            let fut = in_trace_sync(&ctx, || self.inner.call(req));
            let boxed = async move { Ok(fut.await?.map(|b| b.map_err(Into::into).boxed_unsync())) };
            let wrap: fn(Response<MeshBody>) -> Self::Response =
                |r| r.map(http_body_util::Either::Left);
            return E::Right(in_server_span(Some((ctx, span)), boxed).map_ok(wrap));
        };
        let started = Instant::now();
        let grpc = is_grpc(req.headers());
        // The application reads the body: what it reads is counted as it goes.
        let request = Arc::new(BodyCount::default());
        // The caller's peer metadata is for the mesh, not the application (as a sidecar
        // strips it); a caller that sent it gets this workload's in the answer.
        let exchanged = req.headers_mut().remove(&METADATA);
        req.headers_mut().remove(&METADATA_ID);
        let peer = self
            .peer
            .as_ref()
            .or_else(|| req.extensions().get::<Arc<PeerInfo>>());
        let caller = peer
            .filter(|p| p.tls)
            .and_then(|p| p.spiffe_id.as_deref())
            .unwrap_or_default();
        // Everything the labels need is known now: the peers are looked up before the
        // request goes on, and nothing of the request is kept for its end.
        let peers = telemetry.server_peers_cached(
            caller,
            requested_service(&req),
            exchanged
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        );
        let answer_exchange = exchanged.is_some();
        let req = req.map(|b| b.counted(Some(request.clone()), grpc));
        let fut = match &traced {
            Some((ctx, _)) => in_trace_sync(ctx, || self.inner.call(req)),
            None => self.inner.call(req),
        };
        let observed = async move {
            let mut resp = fut.await?;
            if answer_exchange {
                telemetry.announce(resp.headers_mut());
            }
            let call = ServerCall {
                telemetry,
                peers,
                grpc,
                code: resp.status().as_u16(),
                grpc_status: if grpc {
                    grpc_status(resp.headers())
                } else {
                    None
                },
            };
            Ok(resp.map(|b| {
                let observed = ObservedBody::new(
                    b.map_err(Into::into).boxed_unsync(),
                    Box::new(call),
                    started,
                )
                .with_request_count(Some(request));
                if grpc {
                    observed.with_grpc_messages().boxed_unsync()
                } else {
                    observed.boxed_unsync()
                }
            }))
        };
        let wrap: fn(Response<MeshBody>) -> Self::Response =
            |r| r.map(http_body_util::Either::Left);
        E::Right(in_server_span(traced, observed).map_ok(wrap))
    }
}

/// `fut` boxed, run inside the server span (`traced`, if tracing) as the task's trace context,
/// the span given the response's status.
fn in_server_span<E: Send + 'static>(
    traced: Option<(TraceContext, tracing::Span)>,
    fut: impl Future<Output = Result<Response<MeshBody>, E>> + Send + 'static,
) -> ServerFuture<E> {
    let Some((ctx, span)) = traced else {
        return Box::pin(fut);
    };
    let record = span.clone();
    Box::pin(in_trace(
        ctx,
        async move {
            let resp = fut.await;
            if let Ok(r) = &resp {
                record.record("http.status_code", r.status().as_u16());
            }
            resp
        }
        .instrument(span),
    ))
}

/// One request a server answered, as its metrics follow it.
struct ServerCall {
    telemetry: Arc<Telemetry>,
    peers: Interned,
    grpc: bool,
    code: u16,
    grpc_status: Option<u32>,
}

impl RequestObserver for ServerCall {
    fn on_end(self: Box<Self>, end: &StreamEnd<'_>) {
        let grpc_status = match end.trailers {
            Some(trailers) if self.grpc => grpc_status(trailers).or(self.grpc_status),
            _ => self.grpc_status,
        };
        let series = Series {
            peers: self.peers,
            grpc: self.grpc,
            code: self.code,
            grpc_status,
            flags: ResponseFlags::default(),
        };
        self.telemetry.record(series, end);
    }
}
