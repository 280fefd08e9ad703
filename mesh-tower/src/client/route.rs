//! The route stage: listener → route configuration → virtual host → route → weighted cluster,
//! into a [`RoutePlan`] the later stages follow.

use std::borrow::Cow;
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
pub(crate) fn listener_name<'a>(target: Option<&str>, authority: &'a str) -> Cow<'a, str> {
    match target {
        Some(_) => Cow::Borrowed(authority),
        None => listener_for(authority),
    }
}

/// The listener for an authority: `host:port` as is, `:80` added when there is no port (a
/// bare IPv6 address in brackets has colons but no port).
pub fn listener_for(authority: &str) -> Cow<'_, str> {
    match authority.rsplit_once(':') {
        Some((_, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Cow::Borrowed(authority)
        }
        _ => Cow::Owned(format!("{authority}:80")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listener_is_host_and_port_with_80_by_default() {
        assert_eq!(listener_for("ui.ns.svc:9080"), "ui.ns.svc:9080");
        assert_eq!(listener_for("ui.ns.svc"), "ui.ns.svc:80");
        assert_eq!(listener_for("[fd00::1]:8080"), "[fd00::1]:8080");
        assert_eq!(listener_for("[fd00::1]"), "[fd00::1]:80");
        assert_eq!(listener_name(Some("t:1"), "t:1"), "t:1");
        // The stack once took any authority with a colon as having a port.
        assert_eq!(listener_name(None, "[fd00::1]"), "[fd00::1]:80");
    }
}
