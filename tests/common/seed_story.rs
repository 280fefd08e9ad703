//! The seed story's configuration as istiod would serve it: `ui` split 90/10 between
//! `version-1` and `version-2-beta`, a `version: beta` header canary, retries
//! `attempts: 3, perTryTimeout: 2s`, and outlier detection `consecutiveErrors: 1,
//! interval: 5s, baseEjectionTime: 5m, maxEjectionPercent: 100`.
//!
//! Used by `tests/core_scenario.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use mesh::core::matcher::{HeaderMatchSpec, HeaderMatcherSpec, StringMatcherSpec};
use mesh::core::route::{DestinationSpec, ForwardActionSpec, RetryPolicySpec};
use mesh::core::{
    Cluster, ClusterLoadAssignmentSpec, ClusterSpec, ConfigError, EndpointSet, EndpointSpec,
    Listener, ListenerSpec, LocalityEndpointsSpec, MeshSnapshot, OutlierDetectionSpec,
    RouteActionSpec, RouteConfig, RouteConfigSpec, RouteMatchSpec, RouteSourceSpec, RouteSpec,
    VirtualHostSpec,
};

/// The service host.
pub const HOST: &str = "ui.default.svc.cluster.local";
/// The client listener (`host:port`).
pub const LISTENER: &str = "ui.default.svc.cluster.local:9080";
/// The `version-1` subset cluster.
pub const V1: &str = "outbound|9080|version-1|ui.default.svc.cluster.local";
/// The `version-2-beta` subset cluster.
pub const V2: &str = "outbound|9080|version-2-beta|ui.default.svc.cluster.local";

/// A loopback address.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The snapshot istiod would serve for the seed talks' VirtualService and DestinationRule;
/// `version-1` has endpoints 127.0.0.1:18081..=18083, `version-2-beta` 127.0.0.1:18091.
pub fn snapshot() -> Result<MeshSnapshot, ConfigError> {
    let mut s = MeshSnapshot::new();
    let rds = format!("outbound|9080||{HOST}");
    s.insert_listener(Listener::new(&ListenerSpec {
        name: LISTENER.into(),
        routes: RouteSourceSpec::Rds(rds.clone()),
        max_stream_duration: None,
        fault_filter: true,
    })?);
    let retries = RetryPolicySpec {
        retry_on: "5xx,connect-failure,refused-stream".into(),
        num_retries: Some(3),
        per_try_timeout: Some(Duration::from_secs(2)),
        ..Default::default()
    };
    let mut beta = RouteMatchSpec::prefix("/");
    beta.headers.push(HeaderMatcherSpec::new(
        "version",
        HeaderMatchSpec::String(StringMatcherSpec::exact("beta")),
    ));
    let mut canary = ForwardActionSpec::to_cluster(V2);
    canary.retry_policy = Some(retries.clone());
    let mut split = ForwardActionSpec::to_cluster(V1);
    split.destination = DestinationSpec::Weighted(vec![(V1.into(), 90), (V2.into(), 10)]);
    split.retry_policy = Some(retries);
    s.insert_route_config(RouteConfig::new(&RouteConfigSpec {
        name: rds,
        virtual_hosts: vec![VirtualHostSpec {
            name: LISTENER.into(),
            domains: vec![HOST.into(), LISTENER.into(), "ui".into(), "ui:9080".into()],
            routes: vec![
                RouteSpec {
                    name: "header-canary".into(),
                    matcher: beta,
                    action: RouteActionSpec::Forward(Box::new(canary)),
                    fault: None,
                    rbac: Vec::new(),
                },
                RouteSpec {
                    name: "canary-90-10".into(),
                    matcher: RouteMatchSpec::prefix("/"),
                    action: RouteActionSpec::Forward(Box::new(split)),
                    fault: None,
                    rbac: Vec::new(),
                },
            ],
            ..Default::default()
        }],
        ignore_port_in_host_matching: false,
    })?);
    let outlier = OutlierDetectionSpec {
        consecutive_5xx: Some(1),
        interval: Some(Duration::from_secs(5)),
        base_ejection_time: Some(Duration::from_secs(300)),
        max_ejection_percent: Some(100),
        ..Default::default()
    };
    for (name, ports) in [(V1, &[18081u16, 18082, 18083][..]), (V2, &[18091][..])] {
        s.insert_cluster(Cluster::new(&ClusterSpec {
            name: name.into(),
            outlier_detection: Some(outlier),
            ..Default::default()
        })?);
        s.insert_endpoints(EndpointSet::new(&ClusterLoadAssignmentSpec {
            cluster_name: name.into(),
            localities: vec![LocalityEndpointsSpec {
                endpoints: ports.iter().map(|&p| EndpointSpec::new(addr(p))).collect(),
                ..Default::default()
            }],
            ..Default::default()
        })?);
    }
    Ok(s)
}
