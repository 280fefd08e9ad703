//! The route stage: listener → route configuration → virtual host → route → weighted cluster,
//! into a [`RoutePlan`] the later stages follow.

use std::sync::Arc;
use std::time::Duration;

use mesh_core::route::{FaultConfig, ForwardAction};
use mesh_core::{MeshSnapshot, RouteRequest};

use super::Local;
use crate::reply::LocalReason;

/// Where a request goes and under which rules, borrowed from the snapshot it was routed with.
pub(crate) struct RoutePlan<'s> {
    /// The route's name.
    pub route: Arc<str>,
    /// The cluster chosen (weighted choice made).
    pub cluster: Arc<str>,
    /// Timeouts, retries, hash policies, mirrors.
    pub forward: &'s ForwardAction,
    /// The route's fault, when the listener has the fault filter.
    pub fault: Option<&'s FaultConfig>,
    /// The listener's stream-duration cap.
    pub max_stream_duration: Option<Duration>,
}

impl RoutePlan<'_> {
    /// The request's deadline: the route timeout (or the caller's `grpc-timeout` where the
    /// route allows it), capped by the stream duration.
    pub fn deadline(&self, grpc_timeout: Option<Duration>) -> Option<Duration> {
        self.forward
            .timeouts
            .effective(grpc_timeout, self.max_stream_duration)
    }
}

/// Routes a request on listener `listener`.
pub(crate) fn plan<'s>(
    snap: &'s MeshSnapshot,
    listener: &str,
    req: &RouteRequest<'_>,
    rng: &mut impl rand::RngCore,
) -> Result<RoutePlan<'s>, Local> {
    let routed = snap
        .route(listener, req, rng)
        .map_err(|e| Local::new(LocalReason::NoRoute, e.to_string()))?;
    let Some(forward) = routed.route.forward() else {
        return Err(Local::new(
            LocalReason::NoRoute,
            "the route does not forward".into(),
        ));
    };
    let Some(cluster) = routed.cluster.cloned() else {
        return Err(Local::new(
            LocalReason::NoCluster,
            "the route chose no cluster".into(),
        ));
    };
    Ok(RoutePlan {
        route: routed.route.shared_name().clone(),
        cluster,
        forward,
        fault: routed
            .route
            .fault()
            .filter(|_| routed.listener.fault_filter())
            .map(|f| &**f),
        max_stream_duration: routed.listener.max_stream_duration(),
    })
}

/// The listener a request is routed on: the configured target, else the request's authority
/// (port 80 when it has none).
pub(crate) fn listener_name<'a>(
    target: Option<&str>,
    authority: &'a str,
    buf: &'a mut String,
) -> &'a str {
    if target.is_some() || authority.contains(':') {
        authority
    } else {
        *buf = format!("{authority}:80");
        buf
    }
}
