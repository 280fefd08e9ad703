//! What mTLS costs per request on reused connections: the mesh stack to a plaintext backend
//! against the same stack to an mTLS backend (rustls, client certificate required, SPIFFE SAN
//! checked), same run, paired rounds, loopback. Client and backends share the process, so the
//! added CPU holds both ends of each connection's TLS (each side encrypts one message and
//! decrypts one per request); the handshakes are counted, to show they happen once per
//! connection.
//!
//! `cargo bench --bench mtls_load [-- REQUESTS CONCURRENCY]`. With `MESH_ENVOY=/path/to/envoy`
//! (`benches/sidecar.sh --mtls`) it also runs an Envoy pair (hyper → Envoy → Envoy → backend)
//! plaintext and with Istio-style mTLS between the Envoys, for the same comparison.
//! `STACK_LOAD_ONLY=plain|mtls` runs one path once (for `benches/instructions.sh`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh::tower::{MeshConfig, MeshService};
use mesh::xds::testing::ca::TestCa;
use mesh::xds::{Bootstrap, XdsClientBuilder};
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tower::ServiceExt;

#[path = "load/mod.rs"]
mod load;
use load::{drive, free_port, median};

const PLAIN: &str = "plain.default.svc.cluster.local";
const SECURE: &str = "secure.default.svc.cluster.local";
const SERVED: &str = "served.default.svc.cluster.local";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bench";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/secure";

fn serve(stream: impl hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static) {
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(stream, svc)
            .await;
    });
}

async fn plain_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            serve(TokioIo::new(stream));
        }
    });
    addr
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// An mTLS backend (client certificate from `ca` required); counts its handshakes.
async fn mtls_backend(ca: &TestCa) -> (SocketAddr, Arc<AtomicU64>) {
    let provider = mesh::tower::tls::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(certs(&ca.root_pem()));
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let leaf = ca.workload(SERVER_ID);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs(&leaf.chain_pem),
            PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicU64::new(0));
    let h = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    h.fetch_add(1, Ordering::Relaxed);
                    serve(TokioIo::new(tls));
                }
            });
        }
    });
    (addr, handshakes)
}

fn yaml(plain: SocketAddr, secure: SocketAddr) -> String {
    let service = |host: &str, addr: SocketAddr, sa: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {sa}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n    serviceAccount: {sa}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {sa}}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {{mode: {tls}}}\n---\n",
            addr.port()
        )
    };
    service(PLAIN, plain, "plain", "DISABLE") + &service(SECURE, secure, "secure", "ISTIO_MUTUAL")
}

/// The mesh server's service: STRICT, and ten AuthorizationPolicies as a workload might have
/// (two DENY by namespace, eight ALLOW by identity and path; the bench client is the last).
fn served_yaml(port: u16) -> String {
    let mut y = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: served, namespace: default}}\nspec:\n  hosts: [{SERVED}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: served, labels: {{app: served}}}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: served, namespace: default}}\nspec:\n  host: {SERVED}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n---\n\
apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: served, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: served}}}}, mtls: {{mode: STRICT}}}}\n---\n"
    );
    for i in 0..2 {
        y.push_str(&format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{i}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: served}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{namespaces: [blocked{i}]}}}}]}}]\n---\n"));
    }
    for i in 0..8 {
        let (sa, path) = if i == 7 {
            ("bench".to_string(), "/productpage".to_string())
        } else {
            (format!("client{i}"), format!("/api{i}*"))
        };
        y.push_str(&format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i}, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: served}}}}\n  action: ALLOW\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/default/sa/{sa}]}}}}], to: [{{operation: {{methods: [GET], paths: [\"{path}\"]}}}}]}}]\n---\n"));
    }
    y
}

/// An Envoy on `port` forwarding to `upstream`; with `Some(false)` its upstream is mTLS (a
/// client sidecar), with `Some(true)` its listener is (a server sidecar's inbound).
fn envoy(
    bin: &str,
    port: u16,
    upstream: SocketAddr,
    dir: &std::path::Path,
    tls: Option<bool>,
) -> std::process::Child {
    // A TLS transport socket, its keys indented by `pad` spaces.
    let ctx = |kind: &str, pad: usize| {
        let d = dir.display();
        let mut lines = vec![
            "transport_socket:".to_string(),
            "  name: envoy.transport_sockets.tls".to_string(),
            "  typed_config:".to_string(),
            format!(
                "    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{kind}"
            ),
        ];
        if kind == "DownstreamTlsContext" {
            lines.push("    require_client_certificate: true".into());
        }
        lines.extend([
            "    common_tls_context:".to_string(),
            format!("      tls_certificates: [{{certificate_chain: {{filename: {d}/chain.pem}}, private_key: {{filename: {d}/key.pem}}}}]"),
            format!("      validation_context: {{trusted_ca: {{filename: {d}/root.pem}}}}"),
            "      alpn_protocols: [\"http/1.1\"]".to_string(),
        ]);
        let pad = " ".repeat(pad);
        lines
            .iter()
            .map(|l| format!("{pad}{l}\n"))
            .collect::<String>()
    };
    let (listener_tls, cluster_tls) = match tls {
        Some(true) => (ctx("DownstreamTlsContext", 6), String::new()),
        Some(false) => (String::new(), ctx("UpstreamTlsContext", 4)),
        None => (String::new(), String::new()),
    };
    let config = format!(
        r#"static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{listener_tls}  clusters:
  - name: up
    type: STATIC
{cluster_tls}    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
"#,
        upstream.ip(),
        upstream.port()
    );
    let path = dir.join(format!("envoy-{port}.yaml"));
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(bin)
        .args([
            "-c",
            path.to_str().unwrap(),
            "--concurrency",
            "1",
            "--log-level",
            "error",
        ])
        .args(["--base-id", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start envoy")
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(100_000);
    let concurrency = args.get(1).copied().unwrap_or(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ca = TestCa::new("bench-ca");
        let dir = tempfile::tempdir().unwrap();
        let client_leaf = ca.workload(CLIENT_ID);
        for (f, body) in [
            ("cert-chain.pem", &client_leaf.chain_pem),
            ("key.pem", &client_leaf.key_pem),
            ("root-cert.pem", &ca.root_pem()),
        ] {
            std::fs::write(dir.path().join(f), body).unwrap();
        }
        let plain = plain_backend().await;
        let (secure, handshakes) = mtls_backend(&ca).await;
        let served_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let served = served_listener.local_addr().unwrap();
        let mut cfg = IstioConfig::default();
        cfg.add_text("bench.yaml", &yaml(plain, secure)).unwrap();
        cfg.add_text("served.yaml", &served_yaml(served.port())).unwrap();
        let cp = ControlPlane::new(translate(&cfg).unwrap());
        let xds = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let f = |n: &str| dir.path().join(n).display().to_string();
        let b = Bootstrap::from_json(
            &format!(
                r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~b.default~default.svc.cluster.local"}},
                "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}", "refresh_interval": "900s"}}}}}}}}"#,
                f("cert-chain.pem"),
                f("key.pem"),
                f("root-cert.pem")
            ),
            "bench",
        )
        .unwrap();
        // The mesh server: its own identity and xDS client, as another workload would have.
        let sdir = tempfile::tempdir().unwrap();
        let served_leaf = ca.workload("spiffe://cluster.local/ns/default/sa/served");
        for (f, body) in [
            ("cert-chain.pem", &served_leaf.chain_pem),
            ("key.pem", &served_leaf.key_pem),
            ("root-cert.pem", &ca.root_pem()),
        ] {
            std::fs::write(sdir.path().join(f), body).unwrap();
        }
        let sf = |n: &str| sdir.path().join(n).display().to_string();
        let sb = Bootstrap::from_json(
            &format!(
                r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~served.default~default.svc.cluster.local", "metadata": {{"NAMESPACE": "default"}}}},
                "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
                "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}", "refresh_interval": "900s"}}}}}}}}"#,
                sf("cert-chain.pem"),
                sf("key.pem"),
                sf("root-cert.pem")
            ),
            "bench-server",
        )
        .unwrap();
        let server_xds = XdsClientBuilder::new(sb).start().unwrap();
        let name = server_xds.subscribe_server(served).unwrap();
        // `MTLS_LOAD_TELEMETRY=1`: Istio's metrics at both ends (the client's observer and the
        // server's stage), with the peer-metadata exchange both ways, for what telemetry adds
        // to a mesh-to-mesh request.
        let telemetry = std::env::var_os("MTLS_LOAD_TELEMETRY").is_some();
        let workload = |name: &'static str| {
            let w = mesh::core::telemetry::Workload::from_node_metadata(
                move |k| match k {
                    "WORKLOAD_NAME" => Some(name),
                    "NAMESPACE" => Some("default"),
                    "CLUSTER_ID" => Some("Kubernetes"),
                    _ => None,
                },
                move |k| (k == "app").then_some(name),
            );
            mesh::tower::telemetry::Telemetry::for_node(w, &format!("sidecar~127.0.0.1~{name}-1.default~default.svc.cluster.local"))
        };
        let mut server = mesh::tower::MeshServer::new(name, served, server_xds.snapshots(), server_xds.certificates());
        if telemetry {
            let t = workload("served");
            t.follow_identity(server_xds.certificates(), "default");
            server = server.telemetry(t);
        }
        let mut serving = server.serving();
        serving
            .wait_for(|s| *s == mesh::tower::ServingState::Serving)
            .await
            .unwrap();
        tokio::spawn(server.serve(
            served_listener,
            tower::service_fn(|_req: Request<mesh::InboundBody>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }),
        ));
        let client = XdsClientBuilder::new(b)
            .target(format!("{PLAIN}:9080"))
            .target(format!("{SECURE}:9080"))
            .target(format!("{SERVED}:9080"))
            .start()
            .unwrap();
        client.ready().await.expect("configuration");
        let config = if telemetry {
            let t = workload("bench");
            t.follow_identity(client.certificates(), "default");
            MeshConfig::default().observer(t.client_observer())
        } else {
            MeshConfig::default()
        };
        let mesh = MeshService::with_certificates(client.snapshots(), client.certificates(), config);
        let to = |host: &str| {
            let mesh = mesh.clone();
            let uri: http::Uri = format!("http://{host}:9080/productpage").parse().unwrap();
            move || {
                let (mesh, uri) = (mesh.clone(), uri.clone());
                async move {
                    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    let Ok(r) = mesh.oneshot(req).await;
                    r.status().is_success() && r.into_body().collect().await.is_ok()
                }
            }
        };
        let (send_plain, send_mtls, send_served) = (to(PLAIN), to(SECURE), to(SERVED));
        if let Ok(only) = std::env::var("STACK_LOAD_ONLY") {
            let r = match only.as_str() {
                "plain" => drive(requests, concurrency, &[], send_plain).await,
                "served" => drive(requests, concurrency, &[], send_served).await,
                _ => drive(requests, concurrency, &[], send_mtls).await,
            };
            println!("{only}: {requests} requests, {:.0} req/s", r.rps);
            return;
        }
        drive(5_000, concurrency, &[], send_plain.clone()).await;
        drive(5_000, concurrency, &[], send_mtls.clone()).await;
        drive(5_000, concurrency, &[], send_served.clone()).await;
        let warm_handshakes = handshakes.load(Ordering::Relaxed);
        let rounds = 7;
        let (mut plain_runs, mut mtls_runs, mut added) = (Vec::new(), Vec::new(), Vec::new());
        let (mut served_runs, mut stack_added) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (p, m) = if round % 2 == 0 {
                let p = drive(requests, concurrency, &[], send_plain.clone()).await;
                (p, drive(requests, concurrency, &[], send_mtls.clone()).await)
            } else {
                let m = drive(requests, concurrency, &[], send_mtls.clone()).await;
                (drive(requests, concurrency, &[], send_plain.clone()).await, m)
            };
            let sv = drive(requests, concurrency, &[], send_served.clone()).await;
            added.push(m.cpu_us - p.cpu_us);
            stack_added.push(sv.cpu_us - m.cpu_us);
            plain_runs.push(p);
            mtls_runs.push(m);
            served_runs.push(sv);
        }
        added.sort_by(f64::total_cmp);
        stack_added.sort_by(f64::total_cmp);
        let (p, m) = (median(&mut plain_runs), median(&mut mtls_runs));
        let sv = median(&mut served_runs);
        let total = handshakes.load(Ordering::Relaxed);
        println!("mTLS on reused connections: {requests} requests × {rounds} paired rounds (median shown), concurrency {concurrency}, loopback, 2 worker threads; client and backends in one process");
        println!("| path | req/s | CPU µs/request (client + backend) | p50 µs | p99 µs |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        println!("| mesh → plaintext backend | {:.0} | {:.1} | {} | {} |", p.rps, p.cpu_us, p.p50_us, p.p99_us);
        println!("| mesh → mTLS backend | {:.0} | {:.1} | {} | {} |", m.rps, m.cpu_us, m.p50_us, m.p99_us);
        println!("| mesh → mesh server (mTLS, ten RBAC policies) | {:.0} | {:.1} | {} | {} |", sv.rps, sv.cpu_us, sv.p50_us, sv.p99_us);
        println!(
            "mTLS vs plaintext: added CPU per request across the {rounds} pairs: min {:.2}, median {:.2}, max {:.2} µs (both ends of the connection); throughput {:.1}% of plaintext",
            added[0],
            added[added.len() / 2],
            added[added.len() - 1],
            100.0 * m.rps / p.rps
        );
        println!(
            "the mesh server stack vs a bare hyper+rustls server (both mTLS), across the {rounds} rounds: min {:.2}, median {:.2}, max {:.2} µs per request",
            stack_added[0],
            stack_added[stack_added.len() / 2],
            stack_added[stack_added.len() - 1]
        );
        println!(
            "handshakes: {warm_handshakes} during warm-up, {} more over {} mTLS requests",
            total - warm_handshakes,
            rounds * requests
        );

        let Ok(bin) = std::env::var("MESH_ENVOY") else { return };
        // Envoy pair: hyper → client-side Envoy → server-side Envoy → backend, plaintext and mTLS.
        let server_leaf = ca.workload(SERVER_ID);
        let edir = tempfile::tempdir().unwrap();
        std::fs::write(edir.path().join("root.pem"), ca.root_pem()).unwrap();
        std::fs::write(edir.path().join("chain.pem"), &server_leaf.chain_pem).unwrap();
        std::fs::write(edir.path().join("key.pem"), &server_leaf.key_pem).unwrap();
        let mut children = Vec::new();
        let mut pair = |tls: bool| {
            let (outer, inner) = (free_port(), free_port());
            let server_side = envoy(&bin, inner, plain, edir.path(), tls.then_some(true));
            let client_side = envoy(&bin, outer, SocketAddr::from(([127, 0, 0, 1], inner)), edir.path(), tls.then_some(false));
            let pids = [client_side.id(), server_side.id()];
            children.push(client_side);
            children.push(server_side);
            (outer, pids)
        };
        let (plain_port, plain_pids) = pair(false);
        let (mtls_port, mtls_pids) = pair(true);
        let through = |port: u16| {
            load::bare_get(format!("http://127.0.0.1:{port}/productpage").parse().unwrap())
        };
        let (via_plain, via_mtls) = (through(plain_port), through(mtls_port));
        for _ in 0..100 {
            if via_plain().await && via_mtls().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drive(5_000, concurrency, &plain_pids, via_plain.clone()).await;
        drive(5_000, concurrency, &mtls_pids, via_mtls.clone()).await;
        let (mut ep, mut em, mut eadded) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            let a = drive(requests, concurrency, &plain_pids, via_plain.clone()).await;
            let b = drive(requests, concurrency, &mtls_pids, via_mtls.clone()).await;
            eadded.push((b.cpu_us + b.envoy_cpu_us) - (a.cpu_us + a.envoy_cpu_us));
            ep.push(a);
            em.push(b);
        }
        eadded.sort_by(f64::total_cmp);
        let (a, b) = (median(&mut ep), median(&mut em));
        println!();
        println!("Envoy pair (--concurrency 1 each), same run");
        println!("| path | req/s | client+backend CPU µs/req | Envoy CPU µs/req | p50 µs | p99 µs |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        println!("| hyper → Envoy → Envoy → backend, plaintext | {:.0} | {:.1} | {:.1} | {} | {} |", a.rps, a.cpu_us, a.envoy_cpu_us, a.p50_us, a.p99_us);
        println!("| hyper → Envoy → Envoy → backend, mTLS between the Envoys | {:.0} | {:.1} | {:.1} | {} | {} |", b.rps, b.cpu_us, b.envoy_cpu_us, b.p50_us, b.p99_us);
        println!(
            "mTLS between the Envoys adds {:.2} µs CPU per request (median of 3; both ends), against {:.2} µs for the mesh stack",
            eadded[1],
            added[added.len() / 2]
        );
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    });
}
