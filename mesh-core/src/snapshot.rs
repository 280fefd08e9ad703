//! The whole configuration one client sees at one moment, shared as `Arc<MeshSnapshot>`.

use std::sync::Arc;

use rand::RngCore;

use crate::cluster::Cluster;
use crate::endpoint::EndpointSet;
use crate::error::ResourceKind;
use crate::listener::{Listener, RouteSource};
use crate::request::RouteRequest;
use crate::route::{NoRoute, Route, RouteAction, RouteConfig, VirtualHost};
use crate::server::ServerListener;
use crate::shared_map::SharedMap;

/// Listeners, route configurations, clusters and endpoints, each looked up by name in O(1).
///
/// Immutable once published: the xDS client clones it, applies a change, and publishes the new
/// one whole. Each map is a [`SharedMap`]: a clone copies a few pointers, and a change copies
/// only the shard (1/256 of one map) it touches, so an endpoint change costs the same at 100
/// clusters and at 100,000. Maps use FxHash: keys come from the control plane, and per-request
/// lookups are the hot path.
#[derive(Debug, Clone, Default)]
pub struct MeshSnapshot {
    listeners: SharedMap<Arc<Listener>>,
    route_configs: SharedMap<Arc<RouteConfig>>,
    clusters: SharedMap<Arc<Cluster>>,
    endpoints: SharedMap<Arc<EndpointSet>>,
    server_listeners: SharedMap<Arc<ServerListener>>,
    stale: bool,
}

/// A reference from one resource to another that the snapshot does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dangling {
    /// The kind of the referring resource.
    pub from_kind: ResourceKind,
    /// Its name.
    pub from: String,
    /// The kind of the missing resource.
    pub missing_kind: ResourceKind,
    /// The missing name.
    pub missing: String,
}

impl std::fmt::Display for Dangling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} refers to {} {:?}, which is missing",
            self.from_kind, self.from, self.missing_kind, self.missing
        )
    }
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The listener.
    pub listener: &'a Listener,
    /// Its route configuration.
    pub route_config: &'a RouteConfig,
    /// The selected virtual host.
    pub virtual_host: &'a VirtualHost,
    /// The first matching route.
    pub route: &'a Route,
    /// The chosen cluster (weighted choice made), or `None` for a non-forwarding route.
    pub cluster: Option<&'a Arc<str>>,
}

impl MeshSnapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the snapshot as served from a cache the control plane has not confirmed yet.
    pub fn set_stale(&mut self, stale: bool) {
        self.stale = stale;
    }

    /// Whether the snapshot comes from a cache not yet confirmed by the control plane.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// Adds or replaces a listener.
    pub fn insert_listener(&mut self, listener: impl Into<Arc<Listener>>) {
        let listener = listener.into();
        self.listeners.insert(listener.name().clone(), listener);
    }

    /// Adds or replaces a route configuration.
    pub fn insert_route_config(&mut self, rc: impl Into<Arc<RouteConfig>>) {
        let rc = rc.into();
        self.route_configs.insert(rc.name().clone(), rc);
    }

    /// Adds or replaces a cluster.
    pub fn insert_cluster(&mut self, cluster: impl Into<Arc<Cluster>>) {
        let cluster = cluster.into();
        self.clusters.insert(cluster.name().clone(), cluster);
    }

    /// Adds or replaces the endpoints of an EDS service.
    pub fn insert_endpoints(&mut self, set: impl Into<Arc<EndpointSet>>) {
        let set = set.into();
        self.endpoints.insert(set.cluster_name().clone(), set);
    }

    /// Adds or replaces a server listener.
    pub fn insert_server_listener(&mut self, listener: impl Into<Arc<ServerListener>>) {
        let l = listener.into();
        self.server_listeners.insert(l.name().clone(), l);
    }

    /// Removes a server listener.
    pub fn remove_server_listener(&mut self, name: &str) -> Option<Arc<ServerListener>> {
        if self.server_listeners.contains_key(name) {
            self.server_listeners.remove(name)
        } else {
            None
        }
    }

    /// A server listener by name.
    pub fn server_listener(&self, name: &str) -> Option<&Arc<ServerListener>> {
        self.server_listeners.get(name)
    }

    /// Every server listener.
    pub fn server_listeners(&self) -> impl Iterator<Item = &Arc<ServerListener>> {
        self.server_listeners.values()
    }

    /// Removes a client listener.
    pub fn remove_listener(&mut self, name: &str) -> Option<Arc<Listener>> {
        if self.listeners.contains_key(name) {
            self.listeners.remove(name)
        } else {
            None
        }
    }

    /// Removes a route configuration.
    pub fn remove_route_config(&mut self, name: &str) -> Option<Arc<RouteConfig>> {
        if self.route_configs.contains_key(name) {
            self.route_configs.remove(name)
        } else {
            None
        }
    }

    /// Removes a cluster.
    pub fn remove_cluster(&mut self, name: &str) -> Option<Arc<Cluster>> {
        if self.clusters.contains_key(name) {
            self.clusters.remove(name)
        } else {
            None
        }
    }

    /// Removes the endpoints of an EDS service.
    pub fn remove_endpoints(&mut self, name: &str) -> Option<Arc<EndpointSet>> {
        if self.endpoints.contains_key(name) {
            self.endpoints.remove(name)
        } else {
            None
        }
    }

    /// A listener by name.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.get(name)
    }

    /// A route configuration by name.
    pub fn route_config(&self, name: &str) -> Option<&Arc<RouteConfig>> {
        self.route_configs.get(name)
    }

    /// A cluster by name.
    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// Endpoints by EDS service name.
    pub fn endpoints(&self, eds_service_name: &str) -> Option<&Arc<EndpointSet>> {
        self.endpoints.get(eds_service_name)
    }

    /// The endpoints of a cluster.
    pub fn cluster_endpoints(&self, cluster: &Cluster) -> Option<&Arc<EndpointSet>> {
        self.endpoints.get(cluster.eds_service_name())
    }

    /// Every listener.
    pub fn listeners(&self) -> impl Iterator<Item = &Arc<Listener>> {
        self.listeners.values()
    }

    /// Every route configuration.
    pub fn route_configs(&self) -> impl Iterator<Item = &Arc<RouteConfig>> {
        self.route_configs.values()
    }

    /// Every cluster.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.values()
    }

    /// Every endpoint set.
    pub fn endpoint_sets(&self) -> impl Iterator<Item = &Arc<EndpointSet>> {
        self.endpoints.values()
    }

    /// The route configuration a listener uses.
    pub fn listener_routes<'a>(&'a self, listener: &'a Listener) -> Option<&'a RouteConfig> {
        match listener.routes() {
            RouteSource::Inline(rc) => Some(rc),
            RouteSource::Rds(name) => self.route_configs.get(name).map(|rc| &**rc),
        }
    }

    /// Routes a request arriving on `listener`: route configuration, virtual host by the
    /// request's authority, first matching route, then the weighted cluster choice.
    #[inline]
    pub fn route<'a, R: RngCore + ?Sized>(
        &'a self,
        listener: &str,
        req: &RouteRequest<'_>,
        rng: &mut R,
    ) -> Result<Routed<'a>, NoRoute> {
        let listener = self.listeners.get(listener).ok_or(NoRoute::NoListener)?;
        let route_config = self
            .listener_routes(listener)
            .ok_or(NoRoute::NoRouteConfig)?;
        let virtual_host = route_config
            .virtual_host(req.authority())
            .ok_or(NoRoute::NoVirtualHost)?;
        let route = virtual_host
            .route(req, rng)
            .ok_or(NoRoute::NoRouteMatched)?;
        let cluster = match route.action() {
            RouteAction::Forward(f) => Some(f.destination.pick(rng)),
            RouteAction::NonForwarding => None,
        };
        Ok(Routed {
            listener,
            route_config,
            virtual_host,
            route,
            cluster,
        })
    }

    /// Every reference to a resource the snapshot lacks: listener → route configuration,
    /// route → cluster (destinations and mirrors), cluster → endpoints. Sorted, for stable
    /// messages. An empty list means the snapshot is complete.
    pub fn dangling(&self) -> Vec<Dangling> {
        let mut out = Vec::new();
        let check_routes = |from_kind, from: &str, rc: &RouteConfig, out: &mut Vec<Dangling>| {
            for vh in rc.virtual_hosts() {
                for r in vh.routes() {
                    let Some(f) = r.forward() else { continue };
                    let mirrors = f.mirrors.iter().map(|m| &m.cluster);
                    for c in f.destination.clusters().chain(mirrors) {
                        if !self.clusters.contains_key(c) {
                            out.push(Dangling {
                                from_kind,
                                from: from.to_string(),
                                missing_kind: ResourceKind::Cluster,
                                missing: c.to_string(),
                            });
                        }
                    }
                }
            }
        };
        for l in self.listeners.values() {
            match l.routes() {
                RouteSource::Rds(name) if !self.route_configs.contains_key(name) => {
                    out.push(Dangling {
                        from_kind: ResourceKind::Listener,
                        from: l.name().to_string(),
                        missing_kind: ResourceKind::RouteConfiguration,
                        missing: name.to_string(),
                    })
                }
                RouteSource::Rds(_) => {}
                RouteSource::Inline(rc) => {
                    check_routes(ResourceKind::Listener, l.name(), rc, &mut out)
                }
            }
        }
        for rc in self.route_configs.values() {
            check_routes(ResourceKind::RouteConfiguration, rc.name(), rc, &mut out);
        }
        for c in self.clusters.values() {
            if !self.endpoints.contains_key(c.eds_service_name()) {
                out.push(Dangling {
                    from_kind: ResourceKind::Cluster,
                    from: c.name().to_string(),
                    missing_kind: ResourceKind::ClusterLoadAssignment,
                    missing: c.eds_service_name().to_string(),
                });
            }
        }
        out.sort_by(|a, b| (&a.from, &a.missing).cmp(&(&b.from, &b.missing)));
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSpec;
    use crate::endpoint::{ClusterLoadAssignmentSpec, EndpointSpec, LocalityEndpointsSpec};
    use crate::listener::{ListenerSpec, RouteSourceSpec};
    use crate::route::{
        DestinationSpec, ForwardActionSpec, MirrorPolicySpec, RouteActionSpec, RouteConfigSpec,
        RouteMatchSpec, RouteSpec, VirtualHostSpec,
    };
    use http::{HeaderMap, Method, Uri};
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn snapshot() -> MeshSnapshot {
        let mut s = MeshSnapshot::new();
        s.insert_listener(
            Listener::new(&ListenerSpec {
                name: "ui:80".into(),
                routes: RouteSourceSpec::Rds("outbound|80||ui".into()),
                max_stream_duration: None,
                fault_filter: true,
            })
            .unwrap(),
        );
        let mut action = ForwardActionSpec::to_cluster("unused");
        action.destination = DestinationSpec::Weighted(vec![("v1".into(), 90), ("v2".into(), 10)]);
        action.mirrors.push(MirrorPolicySpec {
            cluster: "shadow".into(),
            fraction: None,
        });
        s.insert_route_config(
            RouteConfig::new(&RouteConfigSpec {
                name: "outbound|80||ui".into(),
                virtual_hosts: vec![VirtualHostSpec {
                    name: "ui:80".into(),
                    domains: vec!["ui".into(), "ui:80".into()],
                    routes: vec![RouteSpec {
                        name: "split".into(),
                        matcher: RouteMatchSpec::prefix("/"),
                        action: RouteActionSpec::Forward(Box::new(action)),
                        fault: None,
                        rbac: Vec::new(),
                    }],
                    ..Default::default()
                }],
                ignore_port_in_host_matching: false,
            })
            .unwrap(),
        );
        for name in ["v1", "v2"] {
            s.insert_cluster(
                Cluster::new(&ClusterSpec {
                    name: name.into(),
                    ..Default::default()
                })
                .unwrap(),
            );
        }
        s.insert_endpoints(
            EndpointSet::new(&ClusterLoadAssignmentSpec {
                cluster_name: "v1".into(),
                localities: vec![LocalityEndpointsSpec {
                    endpoints: vec![EndpointSpec::new(([127, 0, 0, 1], 8081).into())],
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap(),
        );
        s
    }

    #[test]
    fn routes_end_to_end() {
        let s = snapshot();
        let (m, h, u) = (
            Method::GET,
            HeaderMap::new(),
            Uri::from_static("http://ui:80/x"),
        );
        let req = RouteRequest::new(&m, &u, &h);
        let mut r = SmallRng::seed_from_u64(1);
        let mut v2 = 0;
        for _ in 0..10_000 {
            let routed = s.route("ui:80", &req, &mut r).unwrap();
            assert_eq!(routed.route.name(), "split");
            assert_eq!(routed.virtual_host.name(), "ui:80");
            v2 += usize::from(&**routed.cluster.unwrap() == "v2");
        }
        assert!((800..=1_200).contains(&v2), "{v2}");
        assert_eq!(
            s.route("other:80", &req, &mut r).unwrap_err(),
            NoRoute::NoListener
        );
        let u = Uri::from_static("http://elsewhere/x");
        let req = RouteRequest::new(&m, &u, &h);
        assert_eq!(
            s.route("ui:80", &req, &mut r).unwrap_err(),
            NoRoute::NoVirtualHost
        );
    }

    #[test]
    fn dangling_references_are_listed() {
        let mut s = snapshot();
        let d: Vec<String> = s.dangling().iter().map(ToString::to_string).collect();
        assert_eq!(
            d,
            [
                "route configuration \"outbound|80||ui\" refers to cluster \"shadow\", which is missing",
                "cluster \"v2\" refers to cluster load assignment \"v2\", which is missing",
            ]
        );
        s.remove_route_config("outbound|80||ui");
        assert_eq!(
            s.dangling()[0].to_string(),
            "listener \"ui:80\" refers to route configuration \"outbound|80||ui\", which is missing"
        );
    }

    #[test]
    fn clones_share_resources() {
        let s = snapshot();
        let mut t = s.clone();
        assert!(Arc::ptr_eq(
            s.cluster("v1").unwrap(),
            t.cluster("v1").unwrap()
        ));
        t.remove_cluster("v1");
        assert!(s.cluster("v1").is_some() && t.cluster("v1").is_none());
    }
}
