//! The control plane's ADS server against real clients on 127.0.0.1: mesh's xDS client, and a
//! raw tonic stream for what Envoy sends (wildcards, warming).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use mesh_control_plane::ControlPlane;
use mesh_control_plane::translate::{CLUSTER_TYPE, ENDPOINT_TYPE};
use mesh_control_plane::watch::{Reload, load, watch_dir};
use mesh_core::MeshSnapshot;
use mesh_xds_client::{Bootstrap, Protocol, XdsClient, XdsClientBuilder};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LISTENER: &str = "ui.default.svc.cluster.local:9080";
const V2: &str = "outbound|9080|version-2-beta|ui.default.svc.cluster.local";

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")
}

fn copy_examples(to: &Path) {
    for f in std::fs::read_dir(examples()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

fn client(addr: std::net::SocketAddr, target: &str, protocol: Protocol) -> XdsClient {
    let b = Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{addr}", "channel_creds": [{{"type": "insecure"}}]}}],
                "node": {{"id": "sidecar~127.0.0.1~web-0.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default"}}}}}}"#
        ),
        "test",
    )
    .unwrap();
    XdsClientBuilder::new(b)
        .protocol(protocol)
        .target(target)
        .start()
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn until(c: &XdsClient, what: &str, f: impl Fn(&MeshSnapshot) -> bool) -> Arc<MeshSnapshot> {
    let mut rx = c.snapshots();
    within(what, async {
        loop {
            let s = rx.borrow_and_update().clone();
            if f(&s) {
                return s;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
}

/// The weights of the canary route.
fn canary(s: &MeshSnapshot, listener: &str) -> Vec<(String, u32)> {
    let l = s.listener(listener).unwrap();
    let rc = s.listener_routes(l).unwrap();
    let r = rc.virtual_hosts()[0]
        .routes()
        .iter()
        .find(|r| r.name() == "canary")
        .unwrap();
    match &r.forward().unwrap().destination {
        mesh_core::route::Destination::Weighted(w) => w
            .entries()
            .iter()
            .map(|(c, w)| (c.to_string(), *w))
            .collect(),
        mesh_core::route::Destination::Cluster(c) => vec![(c.to_string(), 100)],
    }
}

#[tokio::test]
async fn clients_subscribe_ack_and_follow_file_edits() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let cp = ControlPlane::new(load(dir.path()).unwrap());
    let addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (tx, mut reloads) = mpsc::unbounded_channel();
    let watcher = tokio::spawn(watch_dir(
        dir.path().to_path_buf(),
        cp.clone(),
        Duration::from_millis(50),
        move |r| {
            let _ = tx.send(r);
        },
    ));

    let mut clients = Vec::new();
    for protocol in [Protocol::Sotw, Protocol::Delta] {
        let c = client(addr, LISTENER, protocol);
        let snap = within("ready", c.ready()).await.expect("ready");
        assert_eq!(
            canary(&snap, LISTENER)
                .iter()
                .map(|w| w.1)
                .collect::<Vec<_>>(),
            [90, 10]
        );
        assert!(snap.dangling().is_empty());
        clients.push(c);
    }
    // A short name is expanded the way istiod does, and served under the requested name.
    let short = client(addr, "ui:9080", Protocol::Sotw);
    let snap = within("short name ready", short.ready())
        .await
        .expect("ready");
    assert!(snap.listener("ui:9080").is_some());

    // Every client ACKed every type, none NACKed.
    let watched = client(addr, LISTENER, Protocol::Sotw);
    within("ready", watched.ready()).await.expect("ready");
    within("ACKs recorded", async {
        loop {
            let clients = cp.clients();
            let acked = |c: &mesh_control_plane::ClientStatus| {
                c.types.len() == 4
                    && c.types
                        .values()
                        .all(|t| t.acked == "v1" && t.nack.is_none())
            };
            if clients.len() == 4
                && clients.iter().all(acked)
                && clients.iter().any(|c| c.protocol == "delta")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // An edit: traffic shifts to 0/100.
    std::fs::copy(
        examples().join("variants/ui-routes-shift-0-100.yaml"),
        dir.path().join("ui-routes.yaml"),
    )
    .unwrap();
    let r = within("reload", reloads.recv()).await.unwrap();
    assert!(matches!(r, Reload::Served { version: 2, .. }), "{r:?}");
    let snap = until(&watched, "0/100", |s| {
        s.listener(LISTENER)
            .is_some_and(|_| canary(s, LISTENER) == [(V2.to_string(), 100)])
    })
    .await;
    assert!(snap.dangling().is_empty());

    // A bad edit is reported with file and line, and the last good config stays served.
    std::fs::write(dir.path().join("ui-routes.yaml"), "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ui}\nspec:\n  hosts: [ui.default.svc.cluster.local]\n  http:\n  - timeout: soon\n    route:\n    - destination: {host: ui.default.svc.cluster.local}\n").unwrap();
    let r = within("rejection", reloads.recv()).await.unwrap();
    match r {
        Reload::Rejected(e) => assert_eq!(
            e.to_string(),
            format!(
                "{}:1: VirtualService default/ui: spec.http[0].timeout: \"soon\" is not a duration (e.g. 2s, 100ms, 5m)",
                dir.path().join("ui-routes.yaml").display()
            )
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(cp.served().version, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        canary(&watched.snapshot(), LISTENER),
        [(V2.to_string(), 100)]
    );
    watcher.abort();
}

#[tokio::test]
async fn wildcard_cds_and_endpoints_pushed_after_a_cluster_change() {
    let dir = tempfile::tempdir().unwrap();
    copy_examples(dir.path());
    let cp = ControlPlane::new(load(dir.path()).unwrap());
    let addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id: "sidecar~127.0.0.1~envoy.default~default.svc.cluster.local".into(),
        ..Default::default()
    };
    // Envoy asks for every cluster with an empty name list.
    tx.send(DiscoveryRequest {
        node: Some(node),
        type_url: CLUSTER_TYPE.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut inbound = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let cds = within("CDS", inbound.message()).await.unwrap().unwrap();
    assert_eq!(cds.resources.len(), 3, "all clusters");
    tx.send(DiscoveryRequest {
        type_url: CLUSTER_TYPE.into(),
        version_info: cds.version_info.clone(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let names: Vec<String> = vec![V2.into()];
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        resource_names: names.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let eds = within("EDS", inbound.message()).await.unwrap().unwrap();
    assert_eq!(eds.resources.len(), 1);
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        resource_names: names,
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // A cluster changes (connection pool) but its endpoints do not: EDS is pushed again anyway.
    let edited = std::fs::read_to_string(dir.path().join("ui-service.yaml"))
        .unwrap()
        .replace("http2MaxRequests: 100", "http2MaxRequests: 7");
    std::fs::write(dir.path().join("ui-service.yaml"), edited).unwrap();
    cp.update(load(dir.path()).unwrap());
    let first = within("push", inbound.message()).await.unwrap().unwrap();
    assert_eq!(first.type_url, CLUSTER_TYPE);
    let second = within("EDS push", inbound.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.type_url, ENDPOINT_TYPE);
    assert_eq!(
        second.resources, eds.resources,
        "same endpoints, pushed for warming"
    );
}

/// A control plane serving three clusters `c0`..`c2` whose endpoints are on `ports`.
fn three_clusters(ports: [u16; 3]) -> mesh_control_plane::Resources {
    let mut r = mesh_control_plane::Resources::default();
    for (i, port) in ports.iter().enumerate() {
        let name = format!("c{i}");
        r.clusters
            .insert(name.clone(), mesh_xds_client::testing::eds_cluster(&name));
        r.endpoints.insert(
            name.clone(),
            mesh_xds_client::testing::endpoints(&name, &[([10, 0, 0, 1], *port).into()]),
        );
    }
    r
}

#[tokio::test]
async fn an_endpoint_change_pushes_that_endpoint_set_alone_sotw_and_delta() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    let names: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    let cp = ControlPlane::new(three_clusters([1, 2, 3]));
    let addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();

    // SotW: endpoint sets may be sent alone, and are.
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest {
        node: Some(Node::default()),
        type_url: ENDPOINT_TYPE.into(),
        resource_names: names.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut sotw = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let eds = within("EDS", sotw.message()).await.unwrap().unwrap();
    assert_eq!(eds.resources.len(), 3);
    tx.send(DiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        resource_names: names.clone(),
        version_info: eds.version_info.clone(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Delta on its own stream.
    let (dtx, drx) = mpsc::channel(8);
    dtx.send(DeltaDiscoveryRequest {
        node: Some(Node::default()),
        type_url: ENDPOINT_TYPE.into(),
        resource_names_subscribe: names.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut delta = ads
        .clone()
        .delta_aggregated_resources(ReceiverStream::new(drx))
        .await
        .unwrap()
        .into_inner();
    let first = within("delta EDS", delta.message()).await.unwrap().unwrap();
    assert_eq!(first.resources.len(), 3);
    dtx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // The same resources again push nothing; then c1 changes: only c1 is sent, to both.
    cp.update(three_clusters([1, 2, 3]));
    cp.update(three_clusters([1, 20, 3]));
    let changed = three_clusters([1, 20, 3]).endpoints["c1"].clone();
    let push = within("SotW push", sotw.message()).await.unwrap().unwrap();
    assert_eq!(push.type_url, ENDPOINT_TYPE);
    assert_eq!(push.version_info, "v3");
    assert_eq!(push.resources, vec![changed.clone()]);
    let push = within("delta push", delta.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        push.resources
            .iter()
            .map(|r| (r.name.as_str(), r.resource.clone().unwrap()))
            .collect::<Vec<_>>(),
        [("c1", changed)]
    );
    assert!(push.removed_resources.is_empty());
    dtx.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT_TYPE.into(),
        response_nonce: push.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // c2 goes away: Delta says so, and sends nothing else.
    let mut without = three_clusters([1, 20, 3]);
    without.endpoints.remove("c2");
    without.clusters.remove("c2");
    cp.update(without);
    let push = within("delta removal", delta.message())
        .await
        .unwrap()
        .unwrap();
    assert!(push.resources.is_empty());
    assert_eq!(push.removed_resources, ["c2"]);
}
