//! The xDS client against a real tonic ADS server on 127.0.0.1 (and a unix socket).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use mesh_core::{MeshSnapshot, RouteRequest};
use mesh_xds_client::testing::{self, subset_key};
use mesh_xds_client::{
    Backoff, Bootstrap, Protocol, ResourceState, ResourceType, XdsClient, XdsClientBuilder,
};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use support::FakeAds;

const HOST: &str = "ui.default.svc.cluster.local";
const TARGET: &str = "xds:///ui.default.svc.cluster.local:80";
const LISTENER: &str = "ui.default.svc.cluster.local:80";

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

fn canary(ads: &FakeAds, w1: u32, w2: u32) {
    ads.set(
        ResourceType::Listener,
        vec![testing::listener(LISTENER, &rds())],
    );
    ads.set(
        ResourceType::RouteConfiguration,
        vec![testing::route_config(
            &rds(),
            &[HOST, LISTENER],
            &[(&v1(), w1), (&v2(), w2)],
        )],
    );
    ads.set(
        ResourceType::Cluster,
        vec![testing::eds_cluster(&v1()), testing::eds_cluster(&v2())],
    );
    ads.set(
        ResourceType::ClusterLoadAssignment,
        vec![
            testing::endpoints(&v1(), &[addr(18081)]),
            testing::endpoints(&v2(), &[addr(18082)]),
        ],
    );
}

fn bootstrap(server_uri: &str, token: Option<&std::path::Path>) -> Bootstrap {
    let call_creds = token
        .map(|t| format!(r#", "call_creds": [{{"type": "jwt_token_file", "config": {{"jwt_token_file": "{}"}}}}]"#, t.display()))
        .unwrap_or_default();
    Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{server_uri}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]{call_creds}}}],
                "node": {{"id": "sidecar~127.0.0.1~ui-0.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc"}}}}}}"#
        ),
        "test",
    )
    .unwrap()
}

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    }
}

fn client(server_uri: &str, protocol: Protocol) -> XdsClient {
    XdsClientBuilder::new(bootstrap(server_uri, None))
        .protocol(protocol)
        .target(TARGET)
        .backoff(fast())
        .start()
        .unwrap()
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits until a published snapshot satisfies `f`.
async fn until(
    client: &XdsClient,
    what: &str,
    f: impl Fn(&MeshSnapshot) -> bool,
) -> Arc<MeshSnapshot> {
    let mut rx = client.snapshots();
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

/// Whether a cache file (not just a temporary one being written) is in `dir`.
fn cache_file_in(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.starts_with("mesh-xds-") && name.ends_with(".pb")
    })
}

fn v2_share(snap: &MeshSnapshot) -> f64 {
    let (m, h) = (Method::GET, HeaderMap::new());
    let u: Uri = format!("http://{LISTENER}/").parse().unwrap();
    let req = RouteRequest::new(&m, &u, &h);
    let mut rng = SmallRng::seed_from_u64(3);
    let n = 4000;
    let hits = (0..n)
        .filter(|_| {
            *snap
                .route(LISTENER, &req, &mut rng)
                .unwrap()
                .cluster
                .unwrap()
                .to_string()
                == v2()
        })
        .count();
    hits as f64 / n as f64
}

async fn happy_path(protocol: Protocol) {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let c = client(&server.addr.unwrap().to_string(), protocol);
    let snap = within("ready", c.ready()).await.expect("ready");
    assert!(!snap.is_stale());
    assert!(
        (0.08..=0.12).contains(&v2_share(&snap)),
        "{}",
        v2_share(&snap)
    );
    let status = c.status().await.unwrap();
    assert!(status.health.connected && status.health.ready);
    assert_eq!(status.resources.len(), 6);
    assert!(
        status
            .resources
            .iter()
            .all(|r| r.state == ResourceState::Acked),
        "{:?}",
        status.resources
    );
    // Every type went over the one stream, the node only on the first request.
    let seen = ads.seen();
    assert!(seen[0].has_node && seen[1..].iter().all(|s| !s.has_node));

    // A push moves the weights; the next snapshot follows.
    ads.set(
        ResourceType::RouteConfiguration,
        vec![testing::route_config(
            &rds(),
            &[HOST, LISTENER],
            &[(&v1(), 0), (&v2(), 100)],
        )],
    );
    let snap = until(&c, "0/100", |s| {
        s.listener(LISTENER).is_some() && v2_share(s) == 1.0
    })
    .await;
    assert!(snap.dangling().is_empty());
    // One endpoint changes.
    ads.set(
        ResourceType::ClusterLoadAssignment,
        vec![
            testing::endpoints(&v1(), &[addr(18081)]),
            testing::endpoints(&v2(), &[addr(18092), addr(18093)]),
        ],
    );
    until(&c, "new endpoints", |s| {
        s.endpoints(&v2()).is_some_and(|e| e.len() == 2)
    })
    .await;
}

#[tokio::test]
async fn sotw_happy_path() {
    happy_path(Protocol::Sotw).await;
}

#[tokio::test]
async fn delta_happy_path() {
    happy_path(Protocol::Delta).await;
}

#[tokio::test]
async fn an_invalid_cluster_is_nacked_by_name_and_the_others_applied() {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let mut bad = testing::eds_cluster_message(&v2());
    bad.cluster_discovery_type = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(
            envoy_types::pb::envoy::config::cluster::v3::cluster::DiscoveryType::LogicalDns as i32,
        ),
    );
    ads.set(
        ResourceType::Cluster,
        vec![
            testing::eds_cluster(&v1()),
            testing::any(ResourceType::Cluster.type_url(), &bad),
        ],
    );
    let server = ads.serve_tcp(0).await;
    let c = client(&server.addr.unwrap().to_string(), Protocol::Sotw);
    let nack = ads
        .wait_for("a CDS NACK", |s| {
            s.type_url == ResourceType::Cluster.type_url() && s.error.is_some()
        })
        .await;
    assert_eq!(
        nack.error.as_deref(),
        Some(format!("cluster {:?}: type: only EDS clusters are supported", v2()).as_str())
    );
    assert_eq!(nack.version, "", "nothing accepted before");
    assert!(nack.nonce.starts_with("nonce-"));
    let snap = within("ready", c.ready()).await.expect("ready");
    assert!(snap.cluster(&v1()).is_some() && snap.endpoints(&v1()).is_some());
    assert!(snap.cluster(&v2()).is_none());
}

#[tokio::test]
async fn reconnects_keep_serving_and_resubscribe() {
    for protocol in [Protocol::Sotw, Protocol::Delta] {
        let ads = FakeAds::new();
        canary(&ads, 90, 10);
        let server = ads.serve_tcp(0).await;
        let port = server.addr.unwrap().port();
        let c = client(&format!("127.0.0.1:{port}"), protocol);
        let before = within("ready", c.ready()).await.expect("ready");
        assert_eq!(c.status().await.unwrap().server_failures, 0);
        server.stop().await;
        let mut health = c.health();
        within("disconnect", health.wait_for(|h| !h.connected))
            .await
            .unwrap();
        // The old snapshot is still served while the server is gone.
        assert!(Arc::ptr_eq(&c.snapshot(), &before));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(c.health().borrow().last_error.is_some());
        // Several failed reconnects, one healthy-to-unhealthy transition (gRFC A78).
        assert_eq!(c.status().await.unwrap().server_failures, 1);
        ads.clear_seen();
        let _server = ads.serve_tcp(port).await;
        within("reconnect", c.health().wait_for(|h| h.connected))
            .await
            .unwrap();
        let lds = ads
            .wait_for("LDS after reconnect", |s| {
                s.type_url == ResourceType::Listener.type_url()
            })
            .await;
        assert!(
            lds.has_node && lds.nonce.is_empty(),
            "a new stream starts without nonces: {lds:?}"
        );
        let eds = ads
            .wait_for("EDS after reconnect", |s| {
                s.type_url == ResourceType::ClusterLoadAssignment.type_url()
            })
            .await;
        match protocol {
            Protocol::Sotw => assert_eq!(eds.names, [v1(), v2()]),
            Protocol::Delta => {
                assert_eq!(eds.names, [v1(), v2()]);
                assert_eq!(
                    eds.initial_versions.len(),
                    2,
                    "Delta keeps versions: {eds:?}"
                );
            }
        }
        assert!(Arc::ptr_eq(&c.snapshot(), &before) || c.snapshot().dangling().is_empty());
    }
}

#[tokio::test]
async fn deletion_rules() {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let c = client(&server.addr.unwrap().to_string(), Protocol::Sotw);
    within("ready", c.ready()).await.expect("ready");
    // EDS absence does not delete.
    ads.set(
        ResourceType::ClusterLoadAssignment,
        vec![testing::endpoints(&v1(), &[addr(18081)])],
    );
    ads.wait_for("EDS ACK", |s| {
        s.type_url == ResourceType::ClusterLoadAssignment.type_url() && s.version == "v5"
    })
    .await;
    assert!(c.snapshot().endpoints(&v2()).is_some());
    // LDS absence deletes.
    ads.set(ResourceType::Listener, vec![]);
    until(&c, "listener removed", |s| s.listener(LISTENER).is_none()).await;
    let status = c.status().await.unwrap();
    let l = status
        .resources
        .iter()
        .find(|r| r.name == LISTENER)
        .unwrap();
    assert_eq!(l.state, ResourceState::DoesNotExist);
}

#[tokio::test]
async fn a_missing_listener_times_out_as_does_not_exist() {
    let ads = FakeAds::new();
    let server = ads.serve_tcp(0).await;
    let c = XdsClientBuilder::new(bootstrap(&server.addr.unwrap().to_string(), None))
        .protocol(Protocol::Delta)
        .target("xds:///nothing.default.svc.cluster.local:80")
        .does_not_exist_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    let snap = within("ready after the does-not-exist timer", c.ready())
        .await
        .expect("ready");
    assert!(
        snap.listener("nothing.default.svc.cluster.local:80")
            .is_none()
    );
    let status = c.status().await.unwrap();
    assert_eq!(status.resources[0].state, ResourceState::DoesNotExist);
}

#[tokio::test]
async fn unix_socket_and_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("XDS");
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "header.payload.sig\n").unwrap();
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let _server = ads.serve_unix(&sock).await;
    let c = XdsClientBuilder::new(bootstrap(
        &format!("unix://{}", sock.display()),
        Some(&token),
    ))
    .target(TARGET)
    .start()
    .unwrap();
    within("ready over a unix socket", c.ready())
        .await
        .expect("ready");
    assert_eq!(
        ads.seen()[0].authorization.as_deref(),
        Some("Bearer header.payload.sig")
    );
}

#[tokio::test]
async fn cold_start_from_the_disk_cache_while_the_server_is_down() {
    let cache = tempfile::tempdir().unwrap();
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let port = server.addr.unwrap().port();
    let uri = format!("127.0.0.1:{port}");
    let start = |uri: &str| {
        XdsClientBuilder::new(bootstrap(uri, None))
            .target(TARGET)
            .cache_dir(cache.path())
            .backoff(fast())
            .start()
            .unwrap()
    };
    {
        let c = start(&uri);
        within("ready", c.ready()).await.expect("ready");
        // The cache is written within a tick of the publication.
        within("cache written", async {
            while !cache_file_in(cache.path()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;

    // The control plane is down: a new process starts from the cache, marked stale.
    let c = start(&uri);
    let snap = within("ready from the cache", c.ready())
        .await
        .expect("ready");
    assert!(snap.is_stale() && c.health().borrow().stale);
    assert!((0.08..=0.12).contains(&v2_share(&snap)));
    assert!(!c.health().borrow().connected);

    // It comes back: the client reconciles and the mark goes.
    let _server = ads.serve_tcp(port).await;
    let fresh = until(&c, "confirmed", |s| !s.is_stale()).await;
    assert!(fresh.dangling().is_empty());
}

#[tokio::test]
async fn bad_targets_are_reported() {
    let b = bootstrap("127.0.0.1:1", None);
    let e = XdsClientBuilder::new(b.clone())
        .target("ui")
        .start()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid target \"ui\": expected host:port or xds:///host:port"
    );
}

/// A CA and a `localhost` server certificate it signed, as PEM: (ca, cert, key).
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

fn tls_bootstrap(port: u16, ca: &std::path::Path, token: &std::path::Path) -> Bootstrap {
    Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "localhost:{port}", "channel_creds": [{{"type": "tls", "config": {{"ca_certificate_file": "{}"}}}}],
                "call_creds": [{{"type": "jwt_token_file", "config": {{"jwt_token_file": "{}"}}}}], "server_features": ["xds_v3"]}}],
                "node": {{"id": "sidecar~127.0.0.1~ui-0.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc"}}}}}}"#,
            ca.display(),
            token.display()
        ),
        "test",
    )
    .unwrap()
}

#[tokio::test]
async fn tls_to_the_control_plane_with_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki();
    let ca_file = dir.path().join("root-cert.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let token = dir.path().join("istio-token");
    std::fs::write(&token, "tok-1").unwrap();
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tls(&cert, &key).await;
    let port = server.addr.unwrap().port();
    let c = XdsClientBuilder::new(tls_bootstrap(port, &ca_file, &token))
        .target(TARGET)
        .start()
        .unwrap();
    within("ready over TLS", c.ready()).await.expect("ready");
    assert_eq!(ads.seen()[0].authorization.as_deref(), Some("Bearer tok-1"));

    // A client that trusts another CA never gets a configuration, and says why.
    let (other_ca, _, _) = pki();
    let other = dir.path().join("other-root.pem");
    std::fs::write(&other, other_ca).unwrap();
    let c = XdsClientBuilder::new(tls_bootstrap(port, &other, &token))
        .target(TARGET)
        .backoff(fast())
        .start()
        .unwrap();
    let mut health = c.health();
    let h = within("a TLS error", health.wait_for(|h| h.last_error.is_some()))
        .await
        .unwrap()
        .clone();
    assert!(!h.ready);
    let e = h.last_error.unwrap();
    assert!(
        e.starts_with(&format!("cannot connect to localhost:{port}")) && e.contains("certificate"),
        "{e}"
    );
}

/// A server that answers once and closes each stream: the client backs off (jittered, growing
/// to the cap) instead of reconnecting in a hot loop.
#[tokio::test]
async fn a_server_that_answers_once_and_closes_is_not_reconnected_to_in_a_hot_loop() {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    ads.close_after_first_response();
    let server = ads.serve_tcp(0).await;
    let _c = client(&server.addr.unwrap().to_string(), Protocol::Sotw);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Waits of at least 25, 50, 100, 200, 200, ... ms (half of 50 ms doubling to 400 ms):
    // within 2 s at most 12 reconnects after the first stream.
    let streams = ads.streams();
    assert!((3..=13).contains(&streams), "{streams} streams in 2 s");
}

/// A server that stops reading: once the request queue is full the stream is reopened, and the
/// new stream carries every subscription (none is lost to a dropped request).
#[tokio::test]
async fn a_server_that_stops_reading_gets_a_new_stream_with_every_subscription() {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    ads.stall_next_stream();
    let server = ads.serve_tcp(0).await;
    let c = client(&server.addr.unwrap().to_string(), Protocol::Sotw);
    within("the first stream", async {
        while ads.streams() < 1 || ads.seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Each subscription is one more LDS request naming every listener so far: megabytes,
    // more than the stream's flow-control window and the client's queue hold.
    let names: Vec<String> = (0..400)
        .map(|i| format!("service-{i:03}.default.svc.cluster.local:8080"))
        .collect();
    for n in &names {
        c.subscribe(n).unwrap();
    }
    let seen = within("every name on a new stream", async {
        loop {
            let last = ads
                .seen()
                .into_iter()
                .rev()
                .find(|s| s.type_url == ResourceType::Listener.type_url());
            if ads.streams() >= 2
                && let Some(s) = last
                && s.names.len() == names.len() + 1
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(names.iter().all(|n| seen.names.contains(n)));
    assert!(
        seen.names
            .iter()
            .any(|n| n == "ui.default.svc.cluster.local:80")
    );
}

/// A pod that lives only a moment still leaves its configuration behind, and a new pod of the
/// same workload (another IP, another name) starts from it while the control plane is down.
#[tokio::test]
async fn a_new_pod_of_the_workload_starts_from_the_cache_its_predecessor_wrote_at_once() {
    let cache = tempfile::tempdir().unwrap();
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let uri = format!("127.0.0.1:{}", server.addr.unwrap().port());
    let pod = |ip: &str, name: &str| {
        let b = Bootstrap::from_json(
            &format!(
                r#"{{"xds_servers": [{{"server_uri": "{uri}", "channel_creds": [{{"type": "insecure"}}]}}],
                    "node": {{"id": "sidecar~{ip}~{name}.default~default.svc.cluster.local",
                              "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default", "WORKLOAD_NAME": "ui"}}}}}}"#
            ),
            "test",
        )
        .unwrap();
        XdsClientBuilder::new(b)
            .target(TARGET)
            .cache_dir(cache.path())
            .backoff(fast())
            .start()
            .unwrap()
    };
    {
        let first = pod("10.0.0.1", "ui-6d4b-abcde");
        within("ready", first.ready()).await.expect("ready");
        // Dropped at once: no tick, no shutdown.
    }
    within("cache written", async {
        while !cache_file_in(cache.path()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    server.stop().await;
    let second = pod("10.0.0.2", "ui-6d4b-fghij");
    let snap = within("ready from the cache", second.ready())
        .await
        .expect("ready");
    assert!(snap.is_stale());
    assert!((0.08..=0.12).contains(&v2_share(&snap)));
}

#[tokio::test]
async fn a_response_over_the_maximum_message_size_fails_the_stream_with_a_clear_error() {
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let c = XdsClientBuilder::new(bootstrap(&server.addr.unwrap().to_string(), None))
        .target(TARGET)
        .backoff(fast())
        .max_message_size(64)
        .start()
        .unwrap();
    let error = within("the stream fails", async {
        loop {
            if let Some(e) = c.health().borrow().last_error.clone() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(error.contains("message length too large"), "{error}");
    assert!(!c.health().borrow().ready);
}

/// A server that accepts connections and says nothing: opening the stream times out, and the
/// client answers status and shutdown meanwhile.
#[tokio::test]
async fn a_silent_server_times_out_while_commands_are_served() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = XdsClientBuilder::new(bootstrap(&addr.to_string(), None))
        .target(TARGET)
        .backoff(fast())
        .stream_open_timeout(Duration::from_millis(300))
        .start()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = tokio::time::timeout(Duration::from_secs(1), c.status())
        .await
        .expect("status is served while the stream is opening")
        .unwrap();
    assert!(!status.health.connected);
    let error = within("the open times out", async {
        loop {
            if let Some(e) = c.health().borrow().last_error.clone() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        error.ends_with(&format!("{addr} timed out after 300ms")),
        "{error}"
    );
    tokio::time::timeout(Duration::from_secs(1), c.shutdown())
        .await
        .expect("shutdown is served while the stream is opening");
}

/// Shutdown writes what a tick has not written yet: the configuration a new process starts
/// from is the last one, not the first.
#[tokio::test]
async fn shutdown_writes_the_newest_configuration_to_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let ads = FakeAds::new();
    canary(&ads, 90, 10);
    let server = ads.serve_tcp(0).await;
    let uri = server.addr.unwrap().to_string();
    let start = || {
        XdsClientBuilder::new(bootstrap(&uri, None))
            .target(TARGET)
            .cache_dir(cache.path())
            .backoff(fast())
            .start()
            .unwrap()
    };
    let c = start();
    within("ready", c.ready()).await.expect("ready");
    canary(&ads, 0, 100);
    until(&c, "the new weights", |s| v2_share(s) == 1.0).await;
    c.shutdown().await;
    drop(c);
    server.stop().await;
    let offline = start();
    let snap = within("ready from the cache", offline.ready())
        .await
        .expect("ready");
    assert!(snap.is_stale());
    assert_eq!(
        v2_share(&snap),
        1.0,
        "the cache holds the newest configuration"
    );
}
