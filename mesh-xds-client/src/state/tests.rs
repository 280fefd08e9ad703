use std::collections::VecDeque;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::discovery::v3::Resource;
use http::{HeaderMap, Method, Uri};
use mesh_core::RouteRequest;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;
use crate::testing::{self, subset_key};

const L: &str = "ui.default.svc.cluster.local:80";
const HOST: &str = "ui.default.svc.cluster.local";

fn rds() -> String {
    subset_key(80, "", HOST)
}
fn v1() -> String {
    subset_key(80, "v1", HOST)
}
fn v2() -> String {
    subset_key(80, "v2", HOST)
}
fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

fn node() -> PbNode {
    PbNode {
        id: "sidecar~10.0.0.1~ui.default~default.svc.cluster.local".into(),
        ..Default::default()
    }
}

/// The control plane's current resources, answered by name.
struct World {
    lds: Vec<Any>,
    rds: Vec<Any>,
    cds: Vec<Any>,
    eds: Vec<Any>,
    version: u32,
}

impl World {
    fn canary(w1: u32, w2: u32) -> Self {
        Self {
            lds: vec![testing::listener(L, &rds())],
            rds: vec![testing::route_config(
                &rds(),
                &[HOST, L],
                &[(&v1(), w1), (&v2(), w2)],
            )],
            cds: vec![testing::eds_cluster(&v1()), testing::eds_cluster(&v2())],
            eds: vec![
                testing::endpoints(&v1(), &[addr(8081)]),
                testing::endpoints(&v2(), &[addr(8082)]),
            ],
            version: 1,
        }
    }

    fn of(&self, ty: ResourceType) -> &[Any] {
        match ty {
            ResourceType::Listener => &self.lds,
            ResourceType::RouteConfiguration => &self.rds,
            ResourceType::Cluster => &self.cds,
            ResourceType::ClusterLoadAssignment => &self.eds,
        }
    }

    fn name_of(ty: ResourceType, any: &Any) -> String {
        crate::decode::decode(ty, any)
            .map(|d| d.name().to_string())
            .unwrap_or_else(|e| e.name.unwrap_or_default())
    }

    fn sotw(&self, req: &DiscoveryRequest, nonce: u32) -> DiscoveryResponse {
        let ty = ResourceType::from_type_url(&req.type_url).unwrap();
        DiscoveryResponse {
            version_info: format!("v{}", self.version),
            resources: self
                .of(ty)
                .iter()
                .filter(|a| req.resource_names.contains(&Self::name_of(ty, a)))
                .cloned()
                .collect(),
            type_url: req.type_url.clone(),
            nonce: format!("n{nonce}"),
            ..Default::default()
        }
    }
}

/// Runs requests against the world until the state stops asking; returns every request sent
/// and the last snapshot published.
fn converge(
    state: &mut AdsState,
    world: &World,
    first: Vec<Output>,
    now: Instant,
) -> (Vec<Request>, Option<Arc<MeshSnapshot>>) {
    let mut queue: VecDeque<Output> = first.into();
    let (mut sent, mut published, mut nonce) = (Vec::new(), None, 100);
    while let Some(o) = queue.pop_front() {
        match o {
            Output::Publish(s) => published = Some(s),
            Output::Send(r) => {
                sent.push(r.clone());
                if let Request::Sotw(req) = &r {
                    // A request that only ACKs (same nonce, same names) gets no answer, as istiod.
                    // istiod logs a NACK and sends nothing.
                    let is_ack = req.error_detail.is_some() || !req.response_nonce.is_empty()
                        && sent.iter().rev().skip(1).any(|p| matches!(p, Request::Sotw(p) if p.type_url == req.type_url && p.resource_names == req.resource_names));
                    if !is_ack {
                        nonce += 1;
                        queue.extend(state.on_sotw_response(world.sotw(req, nonce), now));
                    }
                }
            }
        }
        assert!(sent.len() < 100, "no convergence");
    }
    (sent, published)
}

fn sotw(r: &Request) -> &DiscoveryRequest {
    match r {
        Request::Sotw(r) => r,
        Request::Delta(_) => panic!("expected SotW"),
    }
}

fn route(snap: &MeshSnapshot, n: usize) -> BTreeMap<String, usize> {
    let (m, h, u) = (
        Method::GET,
        HeaderMap::new(),
        Uri::from_static("http://ui.default.svc.cluster.local:80/"),
    );
    let req = RouteRequest::new(&m, &u, &h);
    let mut rng = SmallRng::seed_from_u64(1);
    let mut out = BTreeMap::new();
    for _ in 0..n {
        *out.entry(
            snap.route(L, &req, &mut rng)
                .unwrap()
                .cluster
                .unwrap()
                .to_string(),
        )
        .or_default() += 1;
    }
    out
}

#[test]
fn sotw_cascade_acks_and_publishes_a_complete_snapshot() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    assert!(
        s.subscribe_listener(L, now).is_empty(),
        "nothing to send before a stream"
    );
    let first = s.on_connected(now);
    let (sent, published) = converge(&mut s, &World::canary(90, 10), first, now);
    // LDS, ACK+RDS, ACK+CDS, ACK+EDS, ACK: the order of the cascade.
    let summary: Vec<(String, Vec<String>, String, String)> = sent
        .iter()
        .map(sotw)
        .map(|r| {
            (
                ResourceType::from_type_url(&r.type_url)
                    .unwrap()
                    .to_string(),
                r.resource_names.clone(),
                r.version_info.clone(),
                r.response_nonce.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("LDS".into(), vec![L.to_string()], "".into(), "".into()),
            (
                "LDS".into(),
                vec![L.to_string()],
                "v1".into(),
                "n101".into()
            ),
            ("RDS".into(), vec![rds()], "".into(), "".into()),
            ("RDS".into(), vec![rds()], "v1".into(), "n102".into()),
            ("CDS".into(), vec![v1(), v2()], "".into(), "".into()),
            ("CDS".into(), vec![v1(), v2()], "v1".into(), "n103".into()),
            ("EDS".into(), vec![v1(), v2()], "".into(), "".into()),
            ("EDS".into(), vec![v1(), v2()], "v1".into(), "n104".into()),
        ]
    );
    assert!(
        sotw(&sent[0]).node.is_some(),
        "the node goes on the first request"
    );
    assert!(sent[1..].iter().all(|r| sotw(r).node.is_none()));
    let snap = published.expect("published");
    assert!(!snap.is_stale());
    let split = route(&snap, 2000);
    assert!((120..=280).contains(&split[&v2()]), "{split:?}");
    assert!(snap.dangling().is_empty());
    assert!(
        s.statuses()
            .iter()
            .all(|st| st.state == ResourceState::Acked && st.version == "v1")
    );
}

#[test]
fn an_invalid_cluster_is_nacked_by_name_and_the_rest_applied() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let mut world = World::canary(90, 10);
    let mut bad = testing::eds_cluster_message(&v2());
    bad.lb_policy = 6; // CLUSTER_PROVIDED
    world.cds[1] = testing::any(ResourceType::Cluster.type_url(), &bad);
    let first = s.on_connected(now);
    let (sent, published) = converge(&mut s, &world, first, now);
    let nack = sent
        .iter()
        .map(sotw)
        .find(|r| r.error_detail.is_some())
        .expect("a NACK");
    assert_eq!(nack.type_url, ResourceType::Cluster.type_url());
    assert_eq!(
        nack.version_info, "",
        "a NACK carries the last accepted version"
    );
    assert_eq!(nack.response_nonce, "n103");
    let detail = nack.error_detail.as_ref().unwrap();
    assert_eq!(detail.code, 3);
    assert_eq!(
        detail.message,
        format!("cluster {:?}: lb_policy: unsupported policy 6", v2())
    );
    // v1 was applied and its endpoints fetched; v2 is rejected with no last good value, so the
    // snapshot is published without it rather than waiting for ever.
    let snap = published.expect("published");
    assert!(snap.cluster(&v1()).is_some() && snap.cluster(&v2()).is_none());
    let v2_status = s
        .statuses()
        .into_iter()
        .find(|st| st.name == v2() && st.resource_type == ResourceType::Cluster)
        .unwrap();
    assert!(
        matches!(v2_status.state, ResourceState::Nacked { ref version, .. } if version == "v1")
    );
}

#[test]
fn a_tls_cluster_naming_an_undefined_certificate_provider_is_nacked() {
    let now = Instant::now();
    let nack_of = |instances: &[&str]| {
        let mut s = AdsState::new(Protocol::Sotw, node(), true);
        s.set_certificate_instances(instances.iter().map(|s| s.to_string()).collect());
        s.subscribe_listener(L, now);
        let mut world = World::canary(90, 10);
        world.cds[1] = testing::mtls_cluster(&v2(), &["spiffe://cluster.local/ns/default/sa/ui"]);
        let first = s.on_connected(now);
        let (sent, published) = converge(&mut s, &world, first, now);
        let nack = sent
            .iter()
            .map(sotw)
            .find_map(|r| r.error_detail.as_ref().map(|d| d.message.clone()));
        let snap = published.expect("published");
        (nack, snap.cluster(&v2()).is_some())
    };
    assert_eq!(
        nack_of(&[]),
        (
            Some(format!(
                "cluster {:?}: transport_socket: tls_certificate_provider_instance \"default\" is not a certificate provider of the bootstrap (defined: none)",
                v2()
            )),
            false
        )
    );
    assert_eq!(
        nack_of(&["other"]).0.unwrap(),
        format!(
            "cluster {:?}: transport_socket: tls_certificate_provider_instance \"default\" is not a certificate provider of the bootstrap (defined: \"other\")",
            v2()
        )
    );
    assert_eq!(nack_of(&["default"]), (None, true));
}

#[test]
fn a_nacked_update_keeps_the_last_good_value() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    let (_, first_snap) = converge(&mut s, &World::canary(90, 10), first, now);
    let first_snap = first_snap.unwrap();
    // The control plane pushes a route configuration whose weights sum to 0.
    let bad = testing::route_config(&rds(), &[HOST], &[(&v1(), 0), (&v2(), 0)]);
    let out = s.on_sotw_response(
        DiscoveryResponse {
            version_info: "v2".into(),
            resources: vec![bad],
            type_url: ResourceType::RouteConfiguration.type_url().into(),
            nonce: "n9".into(),
            ..Default::default()
        },
        now,
    );
    assert_eq!(out.len(), 1, "only the NACK: {out:?}");
    let Output::Send(Request::Sotw(nack)) = &out[0] else {
        panic!()
    };
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n9")
    );
    assert!(
        nack.error_detail
            .as_ref()
            .unwrap()
            .message
            .ends_with("the sum of weights is 0")
    );
    assert!(
        Arc::ptr_eq(s.published().unwrap(), &first_snap),
        "nothing new published"
    );
    assert_eq!(s.version(ResourceType::RouteConfiguration), "v1");
    // gRFC A78's counts: one valid route configuration, then one invalid; the resource is
    // NACKed but keeps its last good value.
    let counts = s.update_counts();
    assert_eq!(counts[1], (ResourceType::RouteConfiguration, 1, 1));
    let status = crate::XdsStatus {
        health: crate::Health {
            connected: true,
            ..Default::default()
        },
        protocol: Protocol::Sotw,
        resources: s.statuses(),
        types: Vec::new(),
        updates: counts,
        server_failures: 2,
        server: "127.0.0.1:15010".into(),
    };
    let text = crate::dump::openmetrics(&status, "xds:///ui:9080");
    for line in [
        "grpc_xds_client_connected{grpc_target=\"xds:///ui:9080\",grpc_xds_server=\"127.0.0.1:15010\"} 1",
        "grpc_xds_client_server_failure_total{grpc_target=\"xds:///ui:9080\",grpc_xds_server=\"127.0.0.1:15010\"} 2",
        "grpc_xds_client_resource_updates_valid_total{grpc_target=\"xds:///ui:9080\",grpc_xds_server=\"127.0.0.1:15010\",grpc_xds_resource_type=\"envoy.config.route.v3.RouteConfiguration\"} 1",
        "grpc_xds_client_resource_updates_invalid_total{grpc_target=\"xds:///ui:9080\",grpc_xds_server=\"127.0.0.1:15010\",grpc_xds_resource_type=\"envoy.config.route.v3.RouteConfiguration\"} 1",
        "grpc_xds_client_resources{grpc_target=\"xds:///ui:9080\",grpc_xds_authority=\"#old\",grpc_xds_cache_state=\"nacked_but_cached\",grpc_xds_resource_type=\"envoy.config.route.v3.RouteConfiguration\"} 1",
        "grpc_xds_client_resources{grpc_target=\"xds:///ui:9080\",grpc_xds_authority=\"#old\",grpc_xds_cache_state=\"acked\",grpc_xds_resource_type=\"envoy.config.cluster.v3.Cluster\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}\nin\n{text}");
    }
}

#[test]
fn no_torn_snapshot_while_a_new_cluster_is_on_its_way() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    let (_, snap) = converge(&mut s, &World::canary(90, 10), first, now);
    let before = snap.unwrap();
    let v3 = subset_key(80, "v3", HOST);
    let out = s.on_sotw_response(
        DiscoveryResponse {
            version_info: "v2".into(),
            resources: vec![testing::route_config(
                &rds(),
                &[HOST, L],
                &[(&v1(), 50), (&v3, 50)],
            )],
            type_url: ResourceType::RouteConfiguration.type_url().into(),
            nonce: "n20".into(),
            ..Default::default()
        },
        now,
    );
    // ACK, then a CDS request naming v3; no publication yet.
    assert!(out.iter().all(|o| matches!(o, Output::Send(_))), "{out:?}");
    let cds = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(Request::Sotw(r)) if r.type_url == ResourceType::Cluster.type_url() => {
                Some(r)
            }
            _ => None,
        })
        .next()
        .unwrap();
    assert_eq!(cds.resource_names, [v1(), v3.clone()]);
    assert!(Arc::ptr_eq(s.published().unwrap(), &before));
    let out = s.on_sotw_response(
        DiscoveryResponse {
            version_info: "v2".into(),
            resources: vec![testing::eds_cluster(&v1()), testing::eds_cluster(&v3)],
            type_url: ResourceType::Cluster.type_url().into(),
            nonce: "n21".into(),
            ..Default::default()
        },
        now,
    );
    assert!(
        out.iter().all(|o| matches!(o, Output::Send(_))),
        "still waiting for v3's endpoints"
    );
    let out = s.on_sotw_response(
        DiscoveryResponse {
            version_info: "v2".into(),
            resources: vec![testing::endpoints(&v3, &[addr(8083)])],
            type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
            nonce: "n22".into(),
            ..Default::default()
        },
        now,
    );
    let snap = out
        .iter()
        .find_map(|o| match o {
            Output::Publish(s) => Some(s.clone()),
            _ => None,
        })
        .expect("published");
    assert!(snap.dangling().is_empty());
    assert!(snap.cluster(&v2()).is_none(), "v2 is no longer referenced");
    // EDS was partial (only v3): v1's endpoints are kept.
    assert!(snap.endpoints(&v1()).is_some());
}

#[test]
fn lds_absence_deletes_but_eds_absence_does_not() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    converge(&mut s, &World::canary(90, 10), first, now);
    let empty = |ty: ResourceType, nonce: &str| DiscoveryResponse {
        version_info: "v2".into(),
        type_url: ty.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    };
    let out = s.on_sotw_response(empty(ResourceType::ClusterLoadAssignment, "n30"), now);
    assert!(!out.iter().any(|o| matches!(o, Output::Publish(_))));
    let out = s.on_sotw_response(empty(ResourceType::Listener, "n31"), now);
    let snap = out
        .iter()
        .find_map(|o| match o {
            Output::Publish(s) => Some(s.clone()),
            _ => None,
        })
        .expect("published");
    assert!(snap.listener(L).is_none());
    let st = s.statuses().into_iter().find(|st| st.name == L).unwrap();
    assert_eq!(st.state, ResourceState::DoesNotExist);
    // With ignore_resource_deletion the listener stays.
    let mut keep = AdsState::new(Protocol::Sotw, node(), false);
    keep.subscribe_listener(L, now);
    let first = keep.on_connected(now);
    converge(&mut keep, &World::canary(90, 10), first, now);
    let out = keep.on_sotw_response(empty(ResourceType::Listener, "n32"), now);
    assert!(!out.iter().any(|o| matches!(o, Output::Publish(_))));
    assert!(keep.published().unwrap().listener(L).is_some());
}

#[test]
fn does_not_exist_timer_starts_when_the_request_goes_out() {
    let t0 = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, t0);
    // Not connected: no request went out, so no timer runs.
    assert!(s.on_tick(t0 + Duration::from_secs(60)).is_empty());
    let t1 = t0 + Duration::from_secs(100);
    s.on_connected(t1);
    assert!(s.on_tick(t1 + Duration::from_secs(14)).is_empty());
    assert_eq!(s.statuses()[0].state, ResourceState::Requested);
    let out = s.on_tick(t1 + Duration::from_secs(15));
    assert_eq!(s.statuses()[0].state, ResourceState::DoesNotExist);
    // Resolved as missing: an (empty) snapshot is published so callers stop waiting.
    assert!(matches!(&out[..], [Output::Publish(snap)] if snap.listener(L).is_none()));
}

#[test]
fn reconnect_resets_nonces_and_resends_node_and_subscriptions() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    converge(&mut s, &World::canary(90, 10), first, now);
    assert_eq!(s.nonce(ResourceType::Listener), "n101");
    s.on_disconnected();
    let again = s.on_connected(now);
    let reqs: Vec<&DiscoveryRequest> = again
        .iter()
        .map(|o| match o {
            Output::Send(r) => sotw(r),
            _ => panic!(),
        })
        .collect();
    assert_eq!(reqs.len(), 4);
    assert!(reqs[0].node.is_some() && reqs[1..].iter().all(|r| r.node.is_none()));
    assert!(
        reqs.iter()
            .all(|r| r.response_nonce.is_empty() && r.version_info == "v1")
    );
    assert_eq!(reqs[2].resource_names, [v1(), v2()]);
}

#[test]
fn delta_subscribes_acks_and_keeps_versions_across_reconnects() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Delta, node(), true);
    s.subscribe_listener(L, now);
    let out = s.on_connected(now);
    let Output::Send(Request::Delta(lds)) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(lds.resource_names_subscribe, [L]);
    assert!(lds.node.is_some() && lds.initial_resource_versions.is_empty());
    let world = World::canary(90, 10);
    let resource = |name: &str, a: &Any, v: &str| Resource {
        name: name.into(),
        version: v.into(),
        resource: Some(a.clone()),
        ..Default::default()
    };
    let delta = |ty: ResourceType, resources: Vec<Resource>, removed: Vec<String>, nonce: &str| {
        DeltaDiscoveryResponse {
            type_url: ty.type_url().into(),
            resources,
            removed_resources: removed,
            nonce: nonce.into(),
            ..Default::default()
        }
    };
    let out = s.on_delta_response(
        delta(
            ResourceType::Listener,
            vec![resource(L, &world.lds[0], "l1")],
            vec![],
            "d1",
        ),
        now,
    );
    let reqs: Vec<&DeltaDiscoveryRequest> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(Request::Delta(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(reqs[0].response_nonce, "d1");
    assert!(reqs[0].resource_names_subscribe.is_empty() && reqs[0].error_detail.is_none());
    assert_eq!(reqs[1].resource_names_subscribe, [rds()]);
    s.on_delta_response(
        delta(
            ResourceType::RouteConfiguration,
            vec![resource(&rds(), &world.rds[0], "r1")],
            vec![],
            "d2",
        ),
        now,
    );
    s.on_delta_response(
        delta(
            ResourceType::Cluster,
            vec![
                resource(&v1(), &world.cds[0], "c1"),
                resource(&v2(), &world.cds[1], "c1"),
            ],
            vec![],
            "d3",
        ),
        now,
    );
    let out = s.on_delta_response(
        delta(
            ResourceType::ClusterLoadAssignment,
            vec![
                resource(&v1(), &world.eds[0], "e1"),
                resource(&v2(), &world.eds[1], "e1"),
            ],
            vec![],
            "d4",
        ),
        now,
    );
    assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));

    // One endpoint changes: only that resource travels, and the snapshot follows.
    let out = s.on_delta_response(
        delta(
            ResourceType::ClusterLoadAssignment,
            vec![resource(
                &v2(),
                &testing::endpoints(&v2(), &[addr(9999)]),
                "e2",
            )],
            vec![],
            "d5",
        ),
        now,
    );
    let snap = out
        .iter()
        .find_map(|o| match o {
            Output::Publish(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        snap.endpoints(&v2()).unwrap().endpoints()[0].address,
        addr(9999)
    );

    // Reconnect: subscriptions again, with the versions we hold.
    s.on_disconnected();
    let again = s.on_connected(now);
    let eds = again
        .iter()
        .find_map(|o| match o {
            Output::Send(Request::Delta(r))
                if r.type_url == ResourceType::ClusterLoadAssignment.type_url() =>
            {
                Some(r)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(eds.resource_names_subscribe, [v1(), v2()]);
    assert_eq!(
        eds.initial_resource_versions.get(&v2()).map(String::as_str),
        Some("e2")
    );
    assert!(eds.response_nonce.is_empty());

    // The server removes v2's cluster: it goes, and its endpoints are unsubscribed.
    let out = s.on_delta_response(delta(ResourceType::Cluster, vec![], vec![v2()], "d6"), now);
    let unsub = out
        .iter()
        .find_map(|o| match o {
            Output::Send(Request::Delta(r))
                if r.type_url == ResourceType::ClusterLoadAssignment.type_url() =>
            {
                Some(r)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(unsub.resource_names_unsubscribe, [v2()]);
}

#[test]
fn cold_start_from_cache_is_stale_until_confirmed() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    converge(&mut s, &World::canary(90, 10), first, now);
    let cached = s.cache_contents();
    assert_eq!(cached.len(), 6);

    let mut cold = AdsState::new(Protocol::Sotw, node(), true);
    cold.subscribe_listener(L, now);
    let mut shuffled = cached.clone();
    shuffled.reverse();
    let out = cold.load_cached(shuffled, now);
    let snap = out
        .iter()
        .find_map(|o| match o {
            Output::Publish(s) => Some(s.clone()),
            _ => None,
        })
        .expect("published from cache");
    assert!(snap.is_stale() && cold.is_stale());
    assert_eq!(route(&snap, 100).values().sum::<usize>(), 100);
    // The stream comes back with the same config: confirmed, no longer stale.
    let first = cold.on_connected(now);
    let (_, confirmed) = converge(&mut cold, &World::canary(90, 10), first, now);
    assert!(!cold.is_stale());
    assert!(!confirmed.expect("republished once confirmed").is_stale());
}

#[test]
fn protocol_parsing() {
    assert_eq!("Delta".parse::<Protocol>(), Ok(Protocol::Delta));
    assert_eq!("sotw".parse::<Protocol>(), Ok(Protocol::Sotw));
    assert_eq!(
        "grpc".parse::<Protocol>(),
        Err("unknown xDS protocol \"grpc\" (expected \"sotw\" or \"delta\")".into())
    );
}

#[test]
fn a_decoder_panic_nacks_that_resource_and_the_subscription_goes_on() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    let (_, first_snap) = converge(&mut s, &World::canary(90, 10), first, now);
    let first_snap = first_snap.unwrap();
    let rds_response = |w1, w2, version: &str, nonce: &str| DiscoveryResponse {
        version_info: version.into(),
        resources: vec![testing::route_config(
            &rds(),
            &[HOST, L],
            &[(&v1(), w1), (&v2(), w2)],
        )],
        type_url: ResourceType::RouteConfiguration.type_url().into(),
        nonce: nonce.into(),
        ..Default::default()
    };
    crate::decode::PANIC_ON.with(|p| p.set(Some(ResourceType::RouteConfiguration)));
    let out = s.on_sotw_response(rds_response(50, 50, "v2", "n9"), now);
    crate::decode::PANIC_ON.with(|p| p.set(None));
    let [Output::Send(Request::Sotw(nack))] = &out[..] else {
        panic!("only the NACK: {out:?}")
    };
    assert_eq!(
        (nack.version_info.as_str(), nack.response_nonce.as_str()),
        ("v1", "n9")
    );
    let message = &nack.error_detail.as_ref().unwrap().message;
    assert!(
        message.ends_with(
            "internal error decoding a route configuration resource: injected decoder bug"
        ),
        "{message}"
    );
    assert!(Arc::ptr_eq(s.published().unwrap(), &first_snap));
    // The next update applies as if nothing had happened.
    let out = s.on_sotw_response(rds_response(0, 100, "v3", "n10"), now);
    let published = out.iter().find_map(|o| match o {
        Output::Publish(p) => Some(p.clone()),
        Output::Send(_) => None,
    });
    let snap = published.expect("the next good update is published");
    assert_eq!(route(&snap, 100), BTreeMap::from([(v2(), 100)]));
    assert_eq!(s.version(ResourceType::RouteConfiguration), "v3");
}

/// istiod reads a SotW LDS or CDS request naming nothing as "everything": unsubscribing the
/// last listener must not ask for every listener in the mesh.
#[test]
fn no_request_names_nothing_where_that_reads_as_a_wildcard() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    let world = World::canary(90, 10);
    converge(&mut s, &world, first, now);
    let out = s.unsubscribe_listener(L, now);
    let sent: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(r) => Some(sotw(r)),
            Output::Publish(_) => None,
        })
        .collect();
    let types: Vec<_> = sent.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(
        types,
        [
            ResourceType::RouteConfiguration.type_url(),
            ResourceType::ClusterLoadAssignment.type_url()
        ],
        "RDS and EDS unsubscribe with an empty list; LDS and CDS send nothing"
    );
    assert!(sent.iter().all(|r| r.resource_names.is_empty()));
    // A push of the old clusters afterwards is not ACKed with an empty (wildcard) list either.
    let push = DiscoveryResponse {
        version_info: "v2".into(),
        resources: world.cds.clone(),
        type_url: ResourceType::Cluster.type_url().into(),
        nonce: "n50".into(),
        ..Default::default()
    };
    let out = s.on_sotw_response(push, now);
    assert!(!out.iter().any(|o| matches!(o, Output::Send(_))), "{out:?}");
    // Nor does a new stream start with one.
    s.on_disconnected();
    assert!(s.on_connected(now).is_empty());
}

#[test]
fn delta_rejects_duplicates_and_misnamed_bodies_and_can_ignore_deletions() {
    let now = Instant::now();
    let resource = |name: &str, a: &Any| Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(a.clone()),
        ..Default::default()
    };
    let lds =
        |resources: Vec<Resource>, removed: Vec<String>, nonce: &str| DeltaDiscoveryResponse {
            type_url: ResourceType::Listener.type_url().into(),
            resources,
            removed_resources: removed,
            nonce: nonce.into(),
            ..Default::default()
        };
    let nack_of = |out: &[Output]| {
        out.iter()
            .find_map(|o| match o {
                Output::Send(Request::Delta(r)) => {
                    r.error_detail.as_ref().map(|e| e.message.clone())
                }
                _ => None,
            })
            .unwrap_or_default()
    };
    let world = World::canary(90, 10);
    let mut s = AdsState::new(Protocol::Delta, node(), true);
    s.subscribe_listener(L, now);
    s.on_connected(now);
    // A body naming another listener may not overwrite it, nor stand in for the one named.
    let other = testing::listener("other.default.svc.cluster.local:80", &rds());
    let out = s.on_delta_response(lds(vec![resource(L, &other)], vec![], "d1"), now);
    assert_eq!(
        nack_of(&out),
        format!(
            "listener {L:?}: the resource's body is named \"other.default.svc.cluster.local:80\""
        )
    );
    // The same name twice.
    let out = s.on_delta_response(
        lds(
            vec![resource(L, &world.lds[0]), resource(L, &world.lds[0])],
            vec![],
            "d2",
        ),
        now,
    );
    assert_eq!(
        nack_of(&out),
        format!("resource {L:?} appears twice in the response")
    );

    // With ignore_resource_deletion, a removal leaves the listener in place.
    let mut s = AdsState::new(Protocol::Delta, node(), false);
    s.subscribe_listener(L, now);
    s.on_connected(now);
    s.on_delta_response(lds(vec![resource(L, &world.lds[0])], vec![], "d1"), now);
    s.on_delta_response(lds(vec![], vec![L.to_string()], "d2"), now);
    let status = s.statuses();
    let l = status.iter().find(|r| r.name == L).unwrap();
    assert_eq!(l.state, ResourceState::Acked, "{status:?}");
}

#[test]
fn nack_messages_are_bounded() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    converge(&mut s, &World::canary(90, 10), first, now);
    // 500 route configurations that fail validation, each with its own error.
    let bad: Vec<Any> = (0..500)
        .map(|i| testing::route_config(&format!("rc-{i}"), &[HOST], &[(&v1(), 0), (&v2(), 0)]))
        .collect();
    let out = s.on_sotw_response(
        DiscoveryResponse {
            version_info: "v2".into(),
            resources: bad,
            type_url: ResourceType::RouteConfiguration.type_url().into(),
            nonce: "n9".into(),
            ..Default::default()
        },
        now,
    );
    let Output::Send(Request::Sotw(nack)) = &out[0] else {
        panic!("{out:?}")
    };
    let message = &nack.error_detail.as_ref().unwrap().message;
    assert!(message.len() <= 4096 + 40, "{}", message.len());
    assert!(message.ends_with(" ... (500 errors in all)"), "{message}");
}

/// A route to a cluster the server does not have: the snapshot is still published once that is
/// known (the SotW CDS response omits it), with the reference listed as dangling, and the other
/// routes work.
#[test]
fn a_route_to_a_cluster_that_does_not_exist_is_published_as_dangling() {
    let now = Instant::now();
    let mut s = AdsState::new(Protocol::Sotw, node(), true);
    s.subscribe_listener(L, now);
    let first = s.on_connected(now);
    let mut world = World::canary(90, 10);
    world
        .cds
        .retain(|c| World::name_of(ResourceType::Cluster, c) == v1());
    world.eds.truncate(1);
    let (_, snap) = converge(&mut s, &world, first, now);
    let snap = snap.expect("published although one cluster does not exist");
    let dangling = snap.dangling();
    assert_eq!(dangling.len(), 1, "{dangling:?}");
    assert_eq!(dangling[0].missing, v2());
    assert!(snap.cluster(&v1()).is_some());
}
