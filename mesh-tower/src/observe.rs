//! What the stack tells about each request as it goes: [`MeshInfo`] on every response, and
//! an optional per-request [`Observer`] (the seam for metrics, access logs and trace
//! propagation).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use http::{HeaderMap, Method, StatusCode, Uri};
use mesh_core::route::AttemptFailure;

use crate::body::{BodyCount, BoxError, MeshBody};
use crate::reply::{LocalReason, ResponseFlags};
use mesh_core::telemetry::GrpcMessages;

/// What the stack did for a response; attached to every response as an extension.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MeshInfo {
    /// The route that matched (`None`: no route did).
    pub route: Option<Arc<str>>,
    /// The cluster chosen.
    pub cluster: Option<Arc<str>>,
    /// The endpoint that gave the final response, if one did.
    pub endpoint: Option<SocketAddr>,
    /// Upstream attempts, retries included (mirrors not).
    pub attempts: u32,
    /// Envoy's response flags: why the stack answered itself, if it did, and what else
    /// happened on the way.
    pub flags: ResponseFlags,
}

impl MeshInfo {
    /// Why the stack answered itself, if it did.
    pub fn reason(&self) -> Option<LocalReason> {
        self.flags.reason
    }
}

/// Sees every request the stack handles. Called when a request arrives; what it returns
/// follows that request through its attempts to its response. Returning `None` opts the
/// request out, and the stack then does no observing work for it at all.
pub trait Observer: Send + Sync + 'static {
    /// A request arrived.
    fn on_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestObserver>>;
}

/// Follows one request.
pub trait RequestObserver: Send + 'static {
    /// An attempt is about to be sent; its headers may be changed (trace propagation).
    fn on_attempt(&mut self, _attempt: &mut AttemptStart<'_>) {}

    /// An attempt ended: a response head arrived, or it failed.
    fn on_attempt_end(&mut self, _end: &AttemptEnd<'_>) {}

    /// The response head is going back to the caller.
    fn on_response(&mut self, _response: &ResponseEnd<'_>) {}

    /// The response body ended: read to the end (trailers included), failed, or dropped by
    /// the caller. Called once, last.
    fn on_end(self: Box<Self>, end: &StreamEnd<'_>);
}

/// A request as it arrived.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestStart<'a> {
    /// Its method.
    pub method: &'a Method,
    /// Its URI.
    pub uri: &'a Uri,
    /// Its headers.
    pub headers: &'a HeaderMap,
    /// Whether it is a gRPC call.
    pub grpc: bool,
}

/// An attempt about to be sent.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttemptStart<'a> {
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// The cluster.
    pub cluster: &'a Arc<str>,
    /// The endpoint picked.
    pub endpoint: SocketAddr,
    /// The endpoint's metadata labels (istiod's `istio` filter metadata: `workload`, ...).
    pub labels: &'a Arc<BTreeMap<String, String>>,
    /// The headers going upstream.
    pub headers: &'a mut HeaderMap,
}

/// How an attempt ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttemptEnd<'a> {
    /// Which attempt.
    pub attempt: u32,
    /// The cluster.
    pub cluster: &'a Arc<str>,
    /// The endpoint it went to.
    pub endpoint: SocketAddr,
    /// The endpoint's metadata labels.
    pub labels: &'a Arc<BTreeMap<String, String>>,
    /// The upstream's status, if a response head arrived.
    pub status: Option<StatusCode>,
    /// What failed, as the retry policy sees it (`None`: a success).
    pub failure: Option<AttemptFailure>,
    /// Why no response arrived, if none did.
    pub reason: Option<LocalReason>,
    /// When the attempt was sent (tokio's clock).
    pub(crate) sent: tokio::time::Instant,
    /// The endpoint's SPIFFE ID, as its mTLS handshake verified it.
    pub peer_identity: Option<Arc<str>>,
}

impl AttemptEnd<'_> {
    /// From sending to now, the end of the attempt (read when asked).
    pub fn elapsed(&self) -> Duration {
        self.sent.elapsed()
    }
}

/// The response going back.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResponseEnd<'a> {
    /// What the stack did.
    pub info: &'a MeshInfo,
    /// The status the caller gets.
    pub status: StatusCode,
    /// The response headers the caller gets.
    pub headers: &'a HeaderMap,
    /// When the request arrived (tokio's clock, which tests can pause).
    pub(crate) started: tokio::time::Instant,
}

impl ResponseEnd<'_> {
    /// From the request's arrival to now, its response head (read when asked: a clock read
    /// costs more than some observers' whole work).
    pub fn latency(&self) -> Duration {
        self.started.elapsed()
    }
}

/// How the response body ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct StreamEnd<'a> {
    /// The trailers, if the body ended with them (gRPC's status is there).
    pub trailers: Option<&'a HeaderMap>,
    /// Body bytes that reached the caller.
    pub body_bytes: u64,
    /// Request body bytes read from the caller, when the stack counted them.
    pub request_bytes: Option<u64>,
    /// gRPC messages in the request body, when the stack counted them (gRPC calls).
    pub request_messages: Option<u64>,
    /// gRPC messages in the response body that reached the caller (0 when not gRPC).
    pub response_messages: u64,
    /// Whether the body was read to its end (not failed, not dropped early).
    pub completed: bool,
    /// From the request's arrival to the body's end.
    pub duration: Duration,
}

/// A response body that tells its request's observer how it ended.
pub(crate) struct ObservedBody {
    inner: MeshBody,
    observer: Option<Box<dyn RequestObserver>>,
    started: Instant,
    bytes: u64,
    /// The response's gRPC framing, for a gRPC call.
    messages: Option<GrpcMessages>,
    request: RequestCount,
}

/// What is known of the request body's size.
enum RequestCount {
    /// Not counted.
    Unknown,
    /// It was empty (nothing to count).
    Empty,
    /// What a counter read from it.
    Counted(Arc<BodyCount>),
}

impl ObservedBody {
    /// Wraps `inner`; `started` is the request's arrival.
    pub(crate) fn new(
        inner: MeshBody,
        observer: Box<dyn RequestObserver>,
        started: Instant,
    ) -> Self {
        Self {
            inner,
            observer: Some(observer),
            started,
            bytes: 0,
            messages: None,
            request: RequestCount::Unknown,
        }
    }

    /// Reports what `counter` counted of the request body when the body ends (`None`: the
    /// request had no body to count).
    pub(crate) fn with_request_count(mut self, counter: Option<Arc<BodyCount>>) -> Self {
        self.request = match counter {
            Some(c) => RequestCount::Counted(c),
            None => RequestCount::Empty,
        };
        self
    }

    /// Counts the response's gRPC messages.
    pub(crate) fn with_grpc_messages(mut self) -> Self {
        self.messages = Some(GrpcMessages::new());
        self
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>, completed: bool) {
        if let Some(o) = self.observer.take() {
            let (request_bytes, request_messages) = match &self.request {
                RequestCount::Unknown => (None, None),
                RequestCount::Empty => (Some(0), Some(0)),
                RequestCount::Counted(c) => (Some(c.bytes()), Some(c.messages())),
            };
            o.on_end(&StreamEnd {
                trailers,
                body_bytes: self.bytes,
                request_bytes,
                request_messages: request_messages.filter(|_| self.messages.is_some()),
                response_messages: self.messages.map_or(0, |m| m.count()),
                completed,
                duration: self.started.elapsed(),
            });
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes = self.bytes.saturating_add(data.len() as u64);
                    if let Some(m) = &mut self.messages {
                        m.feed(data);
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    // Trailers are the last frame: the stream is complete with them.
                    self.finish(Some(trailers), true);
                }
            }
            Some(Err(_)) => self.finish(None, false),
            None => self.finish(None, true),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // A body with nothing left may never be polled: it is complete, not abandoned.
        let completed = self.inner.is_end_stream();
        self.finish(None, completed);
    }
}
