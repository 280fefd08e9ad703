//! What the stack tells about each request as it goes: [`MeshInfo`] on every response, and
//! an optional per-request [`Observer`] (the seam for metrics, access logs and trace
//! propagation).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode, Uri};
use mesh_core::route::AttemptFailure;

use crate::reply::{LocalReason, ResponseFlags};

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
    fn on_response(self: Box<Self>, response: &ResponseEnd<'_>);
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
    /// The upstream's status, if a response head arrived.
    pub status: Option<StatusCode>,
    /// What failed, as the retry policy sees it (`None`: a success).
    pub failure: Option<AttemptFailure>,
    /// Why no response arrived, if none did.
    pub reason: Option<LocalReason>,
    /// From sending to the end of the attempt.
    pub elapsed: Duration,
}

/// The response going back.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResponseEnd<'a> {
    /// What the stack did.
    pub info: &'a MeshInfo,
    /// The status the caller gets.
    pub status: StatusCode,
    /// From the request's arrival to its response head.
    pub latency: Duration,
}
