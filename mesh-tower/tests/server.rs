//! The server stack end to end: its inbound listener from the local control plane
//! (PeerAuthentication, AuthorizationPolicy), its certificate from `file_watcher`, real
//! handshakes with mesh's client stack and with plain hyper clients on 127.0.0.1.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_control_plane::ControlPlane;
use mesh_tower::{ERROR_HEADER, MeshConfig, MeshServer, MeshService, PeerInfo, ServingState};
use mesh_xds_client::testing::ca::TestCa;
use mesh_xds_client::{Bootstrap, XdsClient, XdsClientBuilder};
use support::tls::{certificate_providers, write_identity};
use support::{HOST, resources};
use tower::ServiceExt;

const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";
const OTHER: &str = "spiffe://cluster.local/ns/default/sa/other";
const SERVER: &str = "spiffe://cluster.local/ns/default/sa/ui";

/// `ui` on `port` (service account ui), mTLS from clients, the server side under `mode`, and
/// an ALLOW policy for `sa/client`.
fn yaml(port: u16, mode: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui, namespace: default}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: ui, labels: {{app: ui}}}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ui, namespace: default}}\nspec:\n  host: {HOST}\n  trafficPolicy: {{tls: {{mode: ISTIO_MUTUAL}}}}\n---\n\
apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: ui, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: ui}}}}\n  mtls: {{mode: {mode}}}\n---\n\
apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: clients-only, namespace: default}}\nspec:\n  selector: {{matchLabels: {{app: ui}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/default/sa/client]}}\n"
    )
}

fn bootstrap(xds: SocketAddr, node: &str, dir: &std::path::Path) -> Bootstrap {
    Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}],
                "node": {{"id": "sidecar~127.0.0.1~{node}.default~default.svc.cluster.local", "metadata": {{"NAMESPACE": "default"}}}},
                "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
                {}}}"#,
            certificate_providers(dir, "0.05s")
        ),
        "test",
    )
    .unwrap()
}

/// The application: answers who called and how.
async fn app(
    req: Request<mesh_tower::server::InboundBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let p = req.extensions().get::<PeerInfo>().cloned();
    let who = p
        .as_ref()
        .map(|p| {
            format!(
                "{} tls={} chain={}",
                p.spiffe_id.as_deref().unwrap_or("anonymous"),
                p.tls,
                p.chain.name()
            )
        })
        .unwrap_or_else(|| "no peer info".into());
    Ok(Response::new(Full::new(Bytes::from(who))))
}

struct World {
    cp: ControlPlane,
    addr: SocketAddr,
    xds: SocketAddr,
    ca: Arc<TestCa>,
    server_xds: XdsClient,
    serving: tokio::sync::watch::Receiver<ServingState>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn world(mode: &str) -> World {
    world_with(mode, |s| s).await
}

async fn world_with(mode: &str, tune: impl FnOnce(MeshServer) -> MeshServer) -> World {
    let (w, server, listener) = setup(mode, tune).await;
    tokio::spawn(server.serve(listener, tower::service_fn(app)));
    w
}

/// The world, with the server serving but not yet accepting.
async fn setup(
    mode: &str,
    tune: impl FnOnce(MeshServer) -> MeshServer,
) -> (World, MeshServer, tokio::net::TcpListener) {
    let ca = Arc::new(TestCa::new("mesh-test-ca"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cp = ControlPlane::new(resources(&yaml(addr.port(), mode)));
    let xds = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_identity(dir.path(), &ca, &ca.workload(SERVER));
    let server_xds = XdsClientBuilder::new(bootstrap(xds, "ui", dir.path()))
        .start()
        .unwrap();
    let name = server_xds.subscribe_server(addr).unwrap();
    assert_eq!(name, format!("xds.istio.io/grpc/lds/inbound/{addr}"));
    let server = tune(MeshServer::new(
        name,
        addr,
        server_xds.snapshots(),
        server_xds.certificates(),
    ));
    let mut serving = server.serving();
    tokio::time::timeout(
        Duration::from_secs(10),
        serving.wait_for(|s| *s == ServingState::Serving),
    )
    .await
    .expect("serving in time")
    .unwrap();
    let w = World {
        cp,
        addr,
        xds,
        ca,
        server_xds,
        serving,
        _dirs: vec![dir],
    };
    (w, server, listener)
}

/// A mesh client with identity `id`.
async fn client(w: &World, id: &str) -> (MeshService, XdsClient, tempfile::TempDir) {
    client_with(w, id, MeshConfig::default()).await
}

/// [`client`] with these stack settings.
async fn client_with(
    w: &World,
    id: &str,
    config: MeshConfig,
) -> (MeshService, XdsClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    write_identity(dir.path(), &w.ca, &w.ca.workload(id));
    let xds = XdsClientBuilder::new(bootstrap(w.xds, "client", dir.path()))
        .target(format!("{HOST}:9080"))
        .start()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), xds.ready())
        .await
        .unwrap()
        .unwrap();
    let svc = MeshService::with_certificates(xds.snapshots(), xds.certificates(), config);
    (svc, xds, dir)
}

async fn get(svc: &MeshService) -> (StatusCode, String) {
    let req = Request::get(format!("http://{HOST}:9080/orders"))
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
        err.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string()),
    )
}

/// A plain hyper HTTP/1.1 request straight to the server; `Err` if the connection fails.
async fn plain_get(addr: SocketAddr) -> Result<(StatusCode, String), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get("/orders")
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).trim().to_string()))
}

/// Sends a request head and checks that the server closed the connection without writing.
async fn assert_closed_without_a_byte(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: ui\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(buf, b"", "not a byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_with_rbac_lets_in_the_allowed_identity_only() {
    let w = world("STRICT").await;
    let (allowed, _x1, _d1) = client(&w, CLIENT).await;
    assert_eq!(
        get(&allowed).await,
        (
            StatusCode::OK,
            format!("{CLIENT} tls=true chain=inbound-mtls")
        )
    );
    let (other, _x2, _d2) = client(&w, OTHER).await;
    assert_eq!(
        get(&other).await,
        (
            StatusCode::FORBIDDEN,
            "RBAC: access denied: no policy of envoy.filters.http.rbac allows it".to_string()
        )
    );
    // Plaintext to a STRICT server: closed without an answer.
    assert!(plain_get(w.addr).await.is_err());
    assert_closed_without_a_byte(w.addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_plaintext_and_mtls_on_one_port() {
    let w = world("PERMISSIVE").await;
    // istiod (and the local control plane) write PERMISSIVE as a plaintext chain.
    let (allowed, _x, _d) = client(&w, CLIENT).await;
    assert_eq!(
        get(&allowed).await,
        (
            StatusCode::OK,
            format!("{CLIENT} tls=true chain=inbound-plaintext")
        )
    );
    // A plaintext caller has no identity, so the ALLOW policy for sa/client refuses it.
    assert_eq!(
        plain_get(w.addr).await.unwrap(),
        (
            StatusCode::FORBIDDEN,
            "RBAC: access denied: no policy of envoy.filters.http.rbac allows it".to_string()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_listener_the_server_closes_every_connection() {
    let w = world("PERMISSIVE").await;
    // The workload leaves the mesh configuration: no listener, not serving.
    w.cp.update(resources(&yaml(w.addr.port() + 1, "PERMISSIVE")));
    let mut serving = w.serving.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        serving.wait_for(|s| *s != ServingState::Serving),
    )
    .await
    .unwrap()
    .unwrap();
    assert_closed_without_a_byte(w.addr).await;
    // Back: serving again.
    w.cp.update(resources(&yaml(w.addr.port(), "PERMISSIVE")));
    tokio::time::timeout(
        Duration::from_secs(10),
        serving.wait_for(|s| *s == ServingState::Serving),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(plain_get(w.addr).await.unwrap().0, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_change_drains_old_connections_and_other_changes_do_not() {
    let w = world("PERMISSIVE").await;
    let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let send = |tx: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>| {
        let req = Request::get("/orders")
            .header("host", HOST)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let f = tx.send_request(req);
        async move { f.await.map(|r| r.status()) }
    };
    assert_eq!(send(&mut tx).await.unwrap(), StatusCode::FORBIDDEN);

    // Another service changes: the server's listener does not, and the connection stays.
    let mut snaps = w.server_xds.snapshots();
    snaps.borrow_and_update();
    let mut more = yaml(w.addr.port(), "PERMISSIVE");
    more.push_str("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: other, namespace: default}\nspec:\n  hosts: [other.default.svc.cluster.local]\n  ports: [{number: 9080, name: http}]\n  endpoints:\n  - {address: 127.0.0.1, ports: {http: 1}}\n");
    let before = w.server_xds.snapshot();
    w.cp.update(resources(&more));
    // The control plane pushes; give the client time to take it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let name = format!("xds.istio.io/grpc/lds/inbound/{}", w.addr);
    assert!(Arc::ptr_eq(
        before.server_listener(&name).unwrap(),
        w.server_xds.snapshot().server_listener(&name).unwrap()
    ));
    tx.ready().await.unwrap();
    assert_eq!(send(&mut tx).await.unwrap(), StatusCode::FORBIDDEN);

    // The policy changes (the listener's RBAC): the old connection is drained...
    let open = yaml(w.addr.port(), "PERMISSIVE").replace(
        "  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/default/sa/client]}\n",
        "  rules:\n  - {}\n",
    );
    w.cp.update(resources(&open));
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the idle HTTP/1.1 connection is closed")
        .unwrap()
        .unwrap();
    // ...and a new one gets the new policy.
    assert_eq!(plain_get(w.addr).await.unwrap().0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stalls_before_or_in_its_handshake_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world_with("STRICT", |s| {
        s.handshake_timeout(Duration::from_millis(200))
    })
    .await;
    // Silent after connecting; then the first bytes of a ClientHello and nothing more.
    for opening in [&b""[..], &[0x16, 0x03, 0x01][..]] {
        let mut tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
        tcp.write_all(opening).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "closed by the server, not left open");
        assert_eq!(buf, b"");
    }
}

/// The application as a tonic service: answers who called and how.
#[derive(Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<Request<tonic::body::Body>> for Echo {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let who = req
            .extensions()
            .get::<PeerInfo>()
            .map_or("no peer info".to_string(), |p| {
                format!(
                    "{} via tonic",
                    p.spiffe_id.as_deref().unwrap_or("anonymous")
                )
            });
        std::future::ready(Ok(Response::new(tonic::body::Body::new(Full::new(
            Bytes::from(who),
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonics_own_server_serves_mesh_connections_behind_the_mesh_layer() {
    let t = mesh_tower::telemetry::Telemetry::new(Default::default());
    let tt = t.clone();
    let (w, server, listener) = setup("STRICT", move |s| s.telemetry(tt)).await;
    let layer = server.layer();
    tokio::spawn(
        // The test's service port is `http` (HTTP/1.1 from mesh clients).
        tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(layer)
            .add_service(Echo)
            .serve_with_incoming(server.incoming(listener)),
    );
    let (allowed, _x1, _d1) = client(&w, CLIENT).await;
    // tonic's router answers unknown paths itself; Echo is mounted at /test.Echo/.
    let req = Request::post(format!("http://{HOST}:9080/test.Echo/Say"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = allowed.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("{CLIENT} via tonic").as_bytes());
    let (other, _x2, _d2) = client(&w, OTHER).await;
    let req = Request::post(format!("http://{HOST}:9080/test.Echo/Say"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = other.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    resp.into_body().collect().await.unwrap();
    // STRICT still holds: a plaintext caller is closed without a byte.
    assert_closed_without_a_byte(w.addr).await;
    // The layer records what tonic's server served, the caller read from each request.
    let rows = |text: String| -> Vec<String> {
        let mut r: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| {
                let principal = l.split("source_principal=\"").nth(1).unwrap();
                let code = l.split("response_code=\"").nth(1).unwrap();
                format!(
                    "{} {}",
                    &principal[..principal.find('"').unwrap()],
                    &code[..code.find('"').unwrap()]
                )
            })
            .collect();
        r.sort();
        r
    };
    let want = vec![format!("{CLIENT} 200"), format!("{OTHER} 403")];
    tokio::time::timeout(Duration::from_secs(5), async {
        while rows(t.encode()) != want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{:?}", rows(t.encode())));
}

#[tokio::test]
async fn the_mesh_layer_refuses_requests_that_did_not_come_through_a_mesh_connection() {
    let (_w, server, _listener) = setup("STRICT", |s| s).await;
    let svc = tower::Layer::layer(&server.layer(), tower::service_fn(app_any));
    let resp = svc
        .oneshot(Request::get("/").body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        "not a mesh connection (serve MeshServer::incoming)\n".as_bytes()
    );
}

async fn app_any(
    _: Request<mesh_tower::body::CountedBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"reached"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_counts_each_request_as_its_destination_denied_ones_included() {
    use mesh_core::telemetry::Workload;
    use mesh_tower::telemetry::Telemetry;
    let local = Workload::from_node_metadata(
        |k| match k {
            "WORKLOAD_NAME" => Some("ui"),
            "NAMESPACE" => Some("default"),
            _ => None,
        },
        |k| (k == "app").then_some("ui"),
    );
    let t = Telemetry::new(local);
    let tt = t.clone();
    let w = world_with("PERMISSIVE", move |s| s.telemetry(tt)).await;
    let (allowed, _x1, _d1) = client(&w, CLIENT).await;
    let (other, _x2, _d2) = client(&w, OTHER).await;
    assert_eq!(get(&allowed).await.0, StatusCode::OK);
    assert_eq!(get(&allowed).await.0, StatusCode::OK);
    assert_eq!(get(&other).await.0, StatusCode::FORBIDDEN);
    assert_eq!(plain_get(w.addr).await.unwrap().0, StatusCode::FORBIDDEN);
    // A server records a request when its response body ends, which may be just after the
    // client has read the last byte.
    let count = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while count(&t.encode()) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("four requests recorded");
    let text = t.encode();
    let mut rows: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(|l| {
            // The labels that tell these requests apart, in Istio's order.
            let pick = |k: &str| {
                let start = l.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                l[start..start + l[start..].find('"').unwrap()].to_string()
            };
            format!(
                "{} {} {} {} {} {} {}",
                pick("reporter"),
                pick("source_principal"),
                pick("source_workload_namespace"),
                pick("destination_workload"),
                pick("destination_service"),
                pick("response_code"),
                pick("connection_security_policy"),
            ) + &l[l.rfind(' ').unwrap()..]
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            format!("destination {CLIENT} default ui {HOST} 200 mutual_tls 2"),
            format!("destination {OTHER} default ui {HOST} 403 mutual_tls 1"),
            format!("destination unknown unknown ui {HOST} 403 none 1"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_client_and_server_name_each_other_through_the_peer_metadata_headers() {
    use mesh_core::telemetry::Workload;
    use mesh_tower::telemetry::Telemetry;
    let workload = |name: &'static str, app: &'static str| {
        Workload::from_node_metadata(
            move |k| match k {
                "WORKLOAD_NAME" => Some(name),
                "NAMESPACE" => Some("default"),
                "CLUSTER_ID" => Some("Kubernetes"),
                _ => None,
            },
            move |k| match k {
                "app" => Some(app),
                "version" => Some("v7"),
                _ => None,
            },
        )
    };
    let server_metrics = Telemetry::for_node(
        workload("ui-deploy", "ui"),
        "sidecar~127.0.0.1~ui-deploy-1.default~default.svc.cluster.local",
    );
    let sm = server_metrics.clone();
    let (w, server, listener) = setup("STRICT", move |s| s.telemetry(sm)).await;
    // Each side names itself by its certificate, as a sidecar does.
    server_metrics.follow_identity(w.server_xds.certificates(), "default");
    // The application says whether the exchange headers reached it (they must not).
    tokio::spawn(server.serve(
        listener,
        tower::service_fn(|req: Request<mesh_tower::server::InboundBody>| async move {
            let leaked = req.headers().contains_key("x-envoy-peer-metadata")
                || req.headers().contains_key("x-envoy-peer-metadata-id");
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                "leaked={leaked}"
            )))))
        }),
    ));
    let client_metrics = Telemetry::for_node(
        workload("web-deploy", "web"),
        "sidecar~127.0.0.1~web-deploy-2.default~default.svc.cluster.local",
    );
    let (svc, client_xds, _dir) = client_with(
        &w,
        CLIENT,
        MeshConfig::default().observer(client_metrics.client_observer()),
    )
    .await;
    client_metrics.follow_identity(client_xds.certificates(), "default");
    assert_eq!(get(&svc).await, (StatusCode::OK, "leaked=false".into()));
    let row = |t: &Telemetry| -> String {
        let text = t.encode();
        text.lines()
            .find(|l| l.starts_with("istio_requests_total{"))
            .unwrap_or_default()
            .to_string()
    };
    // The client learned the server's name from its answer, not from endpoint metadata.
    let c = row(&client_metrics);
    for label in [
        "reporter=\"source\"",
        "source_workload=\"web-deploy\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        "destination_workload=\"ui-deploy\"",
        // From the server's certificate, verified in the handshake.
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/ui\"",
        "destination_app=\"ui\"",
        "destination_version=\"v7\"",
        "destination_canonical_service=\"ui\"",
    ] {
        assert!(c.contains(label), "{label} in {c}");
    }
    tokio::time::timeout(Duration::from_secs(5), async {
        while row(&server_metrics).is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let s = row(&server_metrics);
    for label in [
        "reporter=\"destination\"",
        "source_workload=\"web-deploy\"",
        "source_app=\"web\"",
        "source_version=\"v7\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
        "destination_workload=\"ui-deploy\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/ui\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(s.contains(label), "{label} in {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_counts_what_its_application_read_and_grpc_messages_each_way() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let t = mesh_tower::telemetry::Telemetry::new(Default::default());
    let tt = t.clone();
    let (w, server, listener) = setup("STRICT", move |s| s.telemetry(tt)).await;
    // The application reads the whole request, then answers two messages.
    tokio::spawn(server.serve(
        listener,
        tower::service_fn(|req: Request<mesh_tower::server::InboundBody>| async move {
            let read = req.into_body().collect().await.unwrap().to_bytes().len();
            assert_eq!(read, 17);
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "0")
                    .body(Full::new(Bytes::from_static(&[
                        0, 0, 0, 0, 1, 5, 0, 0, 0, 0, 0,
                    ])))
                    .unwrap(),
            )
        }),
    ));
    let (svc, _xds, _dir) = client(&w, CLIENT).await;
    // Three messages (lengths 2, 0, 0), 17 bytes, streamed without a content-length.
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = [
        &[0u8, 0, 0][..],
        &[0, 2, 1, 2, 0, 0],
        &[0, 0, 0, 0, 0, 0, 0, 0],
    ]
    .into_iter()
    .map(|d| Ok(Frame::data(Bytes::copy_from_slice(d))))
    .collect();
    let req = Request::post(format!("http://{HOST}:9080/test.Echo/Say"))
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let value = |text: &str, prefix: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
    };
    let want = [
        ("istio_requests_total{", "1"),
        ("istio_request_bytes_sum{", "17.0"),
        ("istio_request_messages_total{", "3"),
        ("istio_response_messages_total{", "2"),
        ("istio_response_bytes_sum{", "11.0"),
    ];
    tokio::time::timeout(Duration::from_secs(5), async {
        while value(&t.encode(), "istio_requests_total{").is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let text = t.encode();
    for (prefix, v) in want {
        assert_eq!(
            value(&text, prefix).as_deref(),
            Some(v),
            "{prefix} in {text}"
        );
    }
    assert!(text.contains("request_protocol=\"grpc\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_continues_from_client_through_server_to_the_servers_own_calls() {
    use mesh_tower::telemetry::{Tracer, trace};
    let tracer = Tracer::with_sampling(0.0);
    // What the server's application calls: a backend recording the headers it gets.
    let (backend, onward) = support::header_backend(0).await;
    let outbound = support::mesh_with(
        &support::yaml(&[backend], &[], support::ROUND_ROBIN, support::ROUTE_V1),
        MeshConfig::default().observer(tracer.client_observer()),
    )
    .await;
    let (w, server, listener) = setup("STRICT", {
        let t = tracer.clone();
        move |s| s.tracing(t)
    })
    .await;
    let app_saw = Arc::new(std::sync::Mutex::new(Vec::new()));
    let saw = app_saw.clone();
    let svc = outbound.svc.clone();
    // The application calls onward without touching any trace header.
    tokio::spawn(server.serve(
        listener,
        tower::service_fn(move |req: Request<mesh_tower::server::InboundBody>| {
            let (svc, saw) = (svc.clone(), saw.clone());
            async move {
                saw.lock().unwrap().push((
                    req.headers().get("traceparent").cloned(),
                    trace::current().map(|c| c.span_id),
                ));
                support::get_path(&svc, "/next").await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        }),
    ));
    let (client, _xds, _dir) = client_with(
        &w,
        CLIENT,
        MeshConfig::default().observer(tracer.client_observer()),
    )
    .await;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let resp = client
        .oneshot(
            Request::get(format!("http://{HOST}:9080/orders"))
                .header("traceparent", caller)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let (app_header, current) = app_saw.lock().unwrap().pop().unwrap();
    let app_header = app_header.unwrap().to_str().unwrap().to_string();
    let onward = onward.lock().unwrap().pop().unwrap();
    let onward = onward.get("traceparent").unwrap().to_str().unwrap();
    let trace_of = |tp: &str| tp[3..35].to_string();
    let span_of = |tp: &str| u64::from_str_radix(&tp[36..52], 16).unwrap();
    // One trace end to end, the caller's sampling decision kept.
    assert_eq!(trace_of(&app_header), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(trace_of(onward), "0af7651916cd43dd8448eb211c80319c");
    assert!(app_header.ends_with("-01") && onward.ends_with("-01"));
    // The application sees the server's span, in its headers and as the task's context; the
    // onward call is a span of its own.
    assert_eq!(Some(span_of(&app_header)), current);
    let spans = [0xb7ad6b7169203331, span_of(&app_header), span_of(onward)];
    assert!(spans[0] != spans[1] && spans[1] != spans[2] && spans[0] != spans[2]);
}

#[tokio::test]
async fn each_request_is_counted_as_the_caller_it_says_it_is() {
    // One plaintext connection whose requests carry different peer metadata in turn (what
    // the server caches is keyed by what each request says, not by the connection).
    use mesh_core::telemetry::{Workload, peer_metadata};
    use mesh_tower::telemetry::Telemetry;
    let named = |name: &'static str| {
        Workload::from_node_metadata(
            move |k| match k {
                "WORKLOAD_NAME" => Some(name),
                "NAMESPACE" => Some("shop"),
                _ => None,
            },
            |_| None,
        )
    };
    let t = Telemetry::new(named("ui"));
    let tt = t.clone();
    let w = world_with("PERMISSIVE", move |s| s.telemetry(tt)).await;
    let tcp = tokio::net::TcpStream::connect(w.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let callers = [
        Some("cart"),
        Some("cart"),
        Some("pay"),
        None,
        Some("pay"),
        Some("pay"),
    ];
    for caller in callers {
        let mut req = Request::get("/orders").header("host", HOST);
        if let Some(name) = caller {
            req = req.header(
                "x-envoy-peer-metadata",
                peer_metadata::encode(&named(name), "pod"),
            );
        }
        let resp = tx
            .send_request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let rows = || {
        let mut rows: Vec<String> = t
            .encode()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| {
                let start = l.find("source_workload=\"").unwrap() + 17;
                let name = &l[start..start + l[start..].find('"').unwrap()];
                format!("{name}{}", &l[l.rfind(' ').unwrap()..])
            })
            .collect();
        rows.sort();
        rows
    };
    tokio::time::timeout(Duration::from_secs(5), async {
        while rows() != ["cart 2", "pay 3", "unknown 1"] {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("rows: {:?}", rows()));
}
