//! mTLS on the client, end to end: the local control plane's `ISTIO_MUTUAL` clusters, the xDS
//! client's `file_watcher` certificates, and real rustls handshakes with hyper backends that
//! require a client certificate from a CA made in the test.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_tower::{ERROR_HEADER, MeshConfig, MeshService};
use mesh_xds_client::testing::ca::{TestCa, Validity};
use rcgen::SanType;
use support::tls::*;
use support::{Behavior, HOST, Mesh, backend, mesh_with_bootstrap};
use tower::ServiceExt;

/// `ui` on `eps` (service account `ui`), every subset `ISTIO_MUTUAL`.
fn mtls_yaml(eps: &[SocketAddr]) -> String {
    let mut e = String::new();
    for a in eps {
        e.push_str(&format!(
            "  - address: 127.0.0.1\n    ports: {{http: {}}}\n    labels: {{version: v1}}\n    serviceAccount: ui\n",
            a.port()
        ));
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n{e}---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ui}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    tls: {{mode: ISTIO_MUTUAL}}\n"
    )
}

struct Setup {
    mesh: Mesh,
    dir: tempfile::TempDir,
    ca: Arc<TestCa>,
}

/// The mesh over `eps`, with the client's identity written before it starts (unless
/// `identity` is false) and re-read every 50 ms.
async fn setup(ca: Arc<TestCa>, eps: &[SocketAddr], identity: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    if identity {
        write_identity(dir.path(), &ca, &ca.workload(CLIENT_ID));
    }
    let mesh = mesh_with_bootstrap(
        &mtls_yaml(eps),
        MeshConfig::default(),
        &certificate_providers(dir.path(), "0.05s"),
    )
    .await;
    Setup { mesh, dir, ca }
}

/// Sends one request; returns the status and the body, or the error header of a local reply.
async fn get(svc: &MeshService, version: http::Version) -> (StatusCode, String) {
    let req = Request::get(format!("http://{HOST}:9080/"))
        .version(version)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let err = resp
        .headers()
        .get(ERROR_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        err.unwrap_or_else(|| String::from_utf8_lossy(&body).to_string()),
    )
}

/// The serial of the workload certificate the client holds now.
fn serial_in_use(client: &mesh_xds_client::XdsClient) -> String {
    let certs = client.certificates().borrow().clone();
    let id = certs.provider("default").and_then(|p| p.identity.clone());
    id.expect("a workload certificate").serial().to_string()
}

/// Waits (up to 10 s) until the client's certificates satisfy `f`.
async fn certificates_until(
    client: &mesh_xds_client::XdsClient,
    f: impl FnMut(&Arc<mesh_core::Certificates>) -> bool,
) {
    let mut certs = client.certificates();
    tokio::time::timeout(Duration::from_secs(10), certs.wait_for(f))
        .await
        .expect("certificates in time")
        .expect("the publisher lives");
}

/// Whether the `default` instance holds the certificate with `serial`.
fn holds(serial: &str) -> impl FnMut(&Arc<mesh_core::Certificates>) -> bool + '_ {
    move |c| {
        c.provider("default")
            .and_then(|p| p.identity.as_ref())
            .is_some_and(|i| i.serial() == serial)
    }
}

fn server_leaf(ca: &TestCa, id: &str, validity: Validity) -> mesh_xds_client::testing::ca::Leaf {
    ca.leaf(vec![SanType::URI(id.try_into().unwrap())], validity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_mtls_with_the_workload_identity_over_both_protocols() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let (addr, seen) =
        mtls_backend("v1", &ca, &ca.workload(SERVER_ID), TlsOptions::default()).await;
    let s = setup(ca, &[addr], true).await;
    let serial = serial_in_use(&s.mesh.client);

    let (status, body) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("v1 {CLIENT_ID} http/1.1 {serial}"));
    let (status, body) = get(&s.mesh.svc, http::Version::HTTP_2).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("v1 {CLIENT_ID} h2 {serial}"));
    // Reused connections: one handshake per protocol for four requests.
    get(&s.mesh.svc, http::Version::HTTP_11).await;
    get(&s.mesh.svc, http::Version::HTTP_2).await;
    assert_eq!(seen.requests.load(Ordering::Relaxed), 4);
    assert_eq!(seen.handshakes.load(Ordering::Relaxed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_identity_is_refused_before_any_request() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let intruder = "spiffe://cluster.local/ns/default/sa/intruder";
    let (addr, seen) = mtls_backend("v1", &ca, &ca.workload(intruder), TlsOptions::default()).await;
    let s = setup(ca, &[addr], true).await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        err,
        format!(
            "upstream connect error: tls handshake with {addr}: no SAN of the server's certificate (URI:{intruder}) matches the cluster's match_subject_alt_names"
        )
    );
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_outside_its_validity_or_from_another_ca_is_refused() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let other = TestCa::new("other-ca");
    let (expired, _) = mtls_backend(
        "v1",
        &ca,
        &server_leaf(&ca, SERVER_ID, Validity::expired()),
        TlsOptions::default(),
    )
    .await;
    let (early, _) = mtls_backend(
        "v1",
        &ca,
        &server_leaf(&ca, SERVER_ID, Validity::not_yet()),
        TlsOptions::default(),
    )
    .await;
    let (foreign, _) =
        mtls_backend("v1", &ca, &other.workload(SERVER_ID), TlsOptions::default()).await;
    for (addr, why) in [
        (expired, "certificate expired"),
        (early, "certificate not valid yet"),
        (foreign, "invalid peer certificate: UnknownIssuer"),
    ] {
        let s = setup(ca.clone(), &[addr], true).await;
        let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
        assert!(err.contains(why), "{why}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_never_falls_back_to_plaintext() {
    let plain = backend("plain", Behavior::Ok).await;
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let s = setup(ca, &[plain.addr], true).await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        err.starts_with(&format!(
            "upstream connect error: tls handshake with {}: ",
            plain.addr
        )),
        "{err}"
    );
    assert_eq!(
        plain.hits.load(Ordering::Relaxed),
        0,
        "the plaintext server answered nothing"
    );

    // A stack that can only do plaintext refuses the cluster rather than send in the clear.
    let tcp_only = MeshService::new(s.mesh.client.snapshots(), MeshConfig::default());
    let req = Request::get(format!("http://{HOST}:9080/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tcp_only.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()[ERROR_HEADER].to_str().unwrap(),
        "upstream connect error: cluster outbound|9080||ui.default.svc.cluster.local requires TLS; this connector only does plaintext"
    );
    assert_eq!(plain.hits.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_requests_fail_closed_until_one_arrives() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let (addr, seen) =
        mtls_backend("v1", &ca, &ca.workload(SERVER_ID), TlsOptions::default()).await;
    let s = setup(ca.clone(), &[addr], false).await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        err,
        "upstream connect error: cluster outbound|9080||ui.default.svc.cluster.local: no root certificates yet from certificate provider \"default\""
    );
    assert_eq!(
        seen.handshakes.load(Ordering::Relaxed) + seen.failed_handshakes.load(Ordering::Relaxed),
        0
    );

    // The roots alone: still no identity to present.
    std::fs::write(s.dir.path().join("root-cert.pem"), ca.root_pem()).unwrap();
    certificates_until(&s.mesh.client, |c| {
        c.provider("default").is_some_and(|p| p.roots.is_some())
    })
    .await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        err,
        "upstream connect error: cluster outbound|9080||ui.default.svc.cluster.local: no workload certificate yet from certificate provider \"default\""
    );

    // An expired identity is refused here, not sent to be refused by the server.
    write_identity(
        s.dir.path(),
        &s.ca,
        &server_leaf(&ca, CLIENT_ID, Validity::expired()),
    );
    certificates_until(&s.mesh.client, |c| {
        c.provider("default").is_some_and(|p| p.identity.is_some())
    })
    .await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(err.ends_with("is not valid now"), "{err}");
    assert_eq!(
        seen.handshakes.load(Ordering::Relaxed) + seen.failed_handshakes.load(Ordering::Relaxed),
        0
    );

    // The agent writes a good one: the next connection uses it.
    let good = ca.workload(CLIENT_ID);
    write_identity(s.dir.path(), &s.ca, &good);
    let serial = mesh_core::LeafInfo::parse(&good.der).unwrap().serial;
    certificates_until(&s.mesh.client, holds(&serial)).await;
    let (status, body) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, format!("v1 {CLIENT_ID} http/1.1 {serial}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request_and_the_new_certificate_is_used() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    // Backends that close every connection after one response: every request handshakes, so
    // every request meets whatever the files hold at that moment.
    let opts = TlsOptions {
        close_each: true,
        ..Default::default()
    };
    let (a, seen_a) = mtls_backend("v1", &ca, &ca.workload(SERVER_ID), opts.clone()).await;
    let (b, seen_b) = mtls_backend("v1", &ca, &ca.workload(SERVER_ID), opts).await;
    let s = Arc::new(setup(ca.clone(), &[a, b], true).await);
    let first = serial_in_use(&s.mesh.client);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, stop) = (s.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut serials = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = get(&s.mesh.svc, http::Version::HTTP_11).await;
                if status == StatusCode::OK {
                    serials.push(body.rsplit(' ').next().unwrap().to_string());
                } else {
                    failures.push(body);
                }
            }
            (serials, failures)
        }));
    }
    // Three rotations, each written file by file (key first, as the agent can be seen to).
    let mut last = first.clone();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let next = ca.workload(CLIENT_ID);
        write_identity(s.dir.path(), &s.ca, &next);
        last = mesh_core::LeafInfo::parse(&next.der).unwrap().serial;
    }
    certificates_until(&s.mesh.client, holds(&last)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut serials, mut failures) = (Vec::new(), Vec::new());
    for w in workers {
        let (s, f) = w.await.unwrap();
        serials.extend(s);
        failures.extend(f);
    }
    assert_eq!(failures, Vec::<String>::new(), "no request failed");
    assert!(serials.len() > 40, "{} requests", serials.len());
    assert!(
        serials.contains(&first) && serials.contains(&last),
        "both certificates were seen"
    );
    assert_eq!(
        seen_a.failed_handshakes.load(Ordering::Relaxed)
            + seen_b.failed_handshakes.load(Ordering::Relaxed),
        0
    );
    // The connections after the last rotation carry the last certificate.
    let (_, body) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert!(body.ends_with(&last), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_turns_to_mtls_stops_using_its_plaintext_connections() {
    let plain = backend("plain", Behavior::Ok).await;
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let s = setup(ca, &[plain.addr], true).await;
    let plaintext = mtls_yaml(&[plain.addr]).replace(
        "    tls: {mode: ISTIO_MUTUAL}\n",
        "    tls: {mode: DISABLE}\n",
    );
    s.mesh.cp.update(support::resources(&plaintext));
    let mut snaps = s.mesh.client.snapshots();
    let cluster = format!("outbound|9080||{HOST}");
    let tls_is = |want: bool| {
        let cluster = cluster.clone();
        move |snap: &Arc<mesh_core::MeshSnapshot>| {
            snap.cluster(&cluster)
                .is_some_and(|c| c.tls().is_some() == want)
        }
    };
    tokio::time::timeout(Duration::from_secs(10), snaps.wait_for(tls_is(false)))
        .await
        .unwrap()
        .unwrap();
    // A kept-alive plaintext connection is in the pool now.
    assert_eq!(
        get(&s.mesh.svc, http::Version::HTTP_11).await,
        (StatusCode::OK, "plain".to_string())
    );

    s.mesh
        .cp
        .update(support::resources(&mtls_yaml(&[plain.addr])));
    tokio::time::timeout(Duration::from_secs(10), snaps.wait_for(tls_is(true)))
        .await
        .unwrap()
        .unwrap();
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(err.contains("tls handshake"), "{err}");
    assert_eq!(
        plain.hits.load(Ordering::Relaxed),
        1,
        "nothing more was sent in the clear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_the_client_certificate_is_reported_with_its_alert() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let other = TestCa::new("other-ca");
    // The server trusts only the other CA's clients: with TLS 1.3 the client's handshake is
    // over before the server judges its certificate, so the refusal is an alert on the first
    // read.
    let opts = TlsOptions {
        client_ca_pem: Some(other.root_pem()),
        ..Default::default()
    };
    let (addr, seen) = mtls_backend("v1", &ca, &ca.workload(SERVER_ID), opts).await;
    let s = setup(ca, &[addr], true).await;
    let (status, err) = get(&s.mesh.svc, http::Version::HTTP_11).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Either way the request learns of it (written, or not yet), the alert is named.
    assert!(err.contains("received fatal alert: UnknownCA"), "{err}");
    assert_eq!(seen.requests.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_the_wrong_identity_is_ejected_as_a_connect_failure() {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let (good, seen_good) =
        mtls_backend("v1", &ca, &ca.workload(SERVER_ID), TlsOptions::default()).await;
    let intruder = ca.workload("spiffe://cluster.local/ns/default/sa/intruder");
    let (bad, seen_bad) = mtls_backend("v1", &ca, &intruder, TlsOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    write_identity(dir.path(), &ca, &ca.workload(CLIENT_ID));
    let yaml = mtls_yaml(&[bad, good]).replace(
        "    tls: {mode: ISTIO_MUTUAL}\n",
        "    tls: {mode: ISTIO_MUTUAL}\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutiveGatewayErrors: 1, interval: 10s, baseEjectionTime: 60s}\n",
    );
    let mesh = mesh_with_bootstrap(
        &yaml,
        MeshConfig::default(),
        &certificate_providers(dir.path(), "900s"),
    )
    .await;
    for _ in 0..20 {
        // The control plane's default retry policy retries the refused connection elsewhere.
        let (status, body) = get(&mesh.svc, http::Version::HTTP_11).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        seen_bad.failed_handshakes.load(Ordering::Relaxed),
        1,
        "ejected after the first"
    );
    assert_eq!(seen_bad.requests.load(Ordering::Relaxed), 0);
    assert_eq!(seen_good.requests.load(Ordering::Relaxed), 20);
}
