//! `mesh::Client` and `mesh::Channel`, the one-line entry points, against the local control
//! plane and a hyper backend on 127.0.0.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::xds::Bootstrap;
use mesh::{Channel, Client};
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use tower::ServiceExt;

const HOST: &str = "ui.default.svc.cluster.local";

async fn backend() -> SocketAddr {
    backend_answering(StatusCode::OK, "ui").await
}

/// A backend answering every request with `status` and `body`.
async fn backend_answering(status: StatusCode, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(
                move |_req: Request<hyper::body::Incoming>| async move {
                    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                },
            );
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    addr
}

async fn control_plane(backend: SocketAddr) -> SocketAddr {
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
        backend.port()
    );
    let mut cfg = IstioConfig::default();
    cfg.add_text("ui.yaml", &yaml).unwrap();
    ControlPlane::new(translate(&cfg).unwrap())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn bootstrap(cp: SocketAddr) -> Bootstrap {
    Bootstrap::from_json(
        &format!(r#"{{"xds_servers": [{{"server_uri": "{cp}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~t.default~default.svc.cluster.local"}}}}"#),
        "test",
    )
    .unwrap()
}

async fn get<S>(svc: S, url: &str) -> (StatusCode, String)
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<mesh::tower::MeshBody>>,
    S::Error: std::fmt::Debug,
{
    let resp = svc
        .oneshot(Request::get(url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_client_subscribes_to_an_authority_on_first_use() {
    let cp = control_plane(backend().await).await;
    let client = Client::builder().bootstrap(bootstrap(cp)).build().unwrap();
    // Nobody subscribed to ui beforehand: the first request waits for its configuration.
    let url = format!("http://{HOST}:9080/");
    assert_eq!(
        get(client.clone(), &url).await,
        (StatusCode::OK, "ui".into())
    );
    assert_eq!(get(client.clone(), &url).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_authority_the_control_plane_does_not_know_times_out_with_a_clear_error() {
    let cp = control_plane(backend().await).await;
    let client = Client::builder()
        .bootstrap(bootstrap(cp))
        .config_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let (status, body) = get(client, "http://nothere.default.svc.cluster.local:9080/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "configuration not received in time: no listener nothere.default.svc.cluster.local:9080 after 300ms; the control plane has not sent it\n"
    );
}

#[tokio::test]
async fn a_channel_sends_every_call_to_its_target() {
    let cp = control_plane(backend().await).await;
    let channel = Channel::from_builder(
        Client::builder()
            .bootstrap(bootstrap(cp))
            .target(format!("xds:///{HOST}:9080")),
    )
    .unwrap();
    // The request's own authority does not matter to a channel.
    assert_eq!(
        get(channel, "http://anything:1234/").await,
        (StatusCode::OK, "ui".into())
    );
}

#[tokio::test]
async fn shutdown_writes_the_cache_and_health_says_stopped() {
    let cp = control_plane(backend().await).await;
    let dir = tempfile::tempdir().unwrap();
    let client = Client::builder()
        .bootstrap(bootstrap(cp))
        .target(format!("xds:///{HOST}:9080"))
        .cache_dir(dir.path())
        .build()
        .unwrap();
    client.xds().ready().await.expect("configuration");
    client.shutdown().await;
    assert!(client.health().borrow().stopped);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "the cache is written at shutdown");
    // The last configuration keeps serving.
    assert_eq!(
        get(client, &format!("http://{HOST}:9080/")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_client_with_telemetry_counts_its_requests_under_its_node_metadata() {
    let cp = control_plane(backend().await).await;
    let b = Bootstrap::from_json(
        &format!(r#"{{"xds_servers": [{{"server_uri": "{cp}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~web-1.front~front.svc.cluster.local", "metadata": {{"WORKLOAD_NAME": "web", "NAMESPACE": "front", "CLUSTER_ID": "east", "LABELS": {{"app": "web", "version": "v2"}}}}}}}}"#),
        "test",
    )
    .unwrap();
    let client = Client::builder().bootstrap(b).telemetry().build().unwrap();
    for _ in 0..2 {
        let (status, _) = get(client.clone(), &format!("http://{HOST}:9080/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let text = client.telemetry().expect("telemetry").encode();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    for label in [
        "source_workload=\"web\"",
        "source_workload_namespace=\"front\"",
        "source_app=\"web\"",
        "source_version=\"v2\"",
        "source_canonical_service=\"web\"",
        "source_canonical_revision=\"v2\"",
        "source_cluster=\"east\"",
        "destination_service=\"ui.default.svc.cluster.local\"",
        "destination_workload=\"ui-0\"",
        "response_code=\"200\"",
    ] {
        assert!(rows[0].contains(label), "{label} in {}", rows[0]);
    }
    assert!(rows[0].ends_with("} 2"), "{}", rows[0]);
    // Without `.telemetry()`, nothing is recorded or kept.
    let plain = Client::builder().bootstrap(bootstrap(cp)).build().unwrap();
    assert!(plain.telemetry().is_none());
}

#[tokio::test]
async fn a_clients_admin_endpoint_dumps_its_live_config_and_answers_csds() {
    use envoy_types::pb::envoy::admin::v3::ClientResourceStatus;
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    let (good, bad) = (
        backend().await,
        backend_answering(StatusCode::SERVICE_UNAVAILABLE, "down").await,
    );
    // Two endpoints; two 5xx in a row eject one for a minute.
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ui}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    loadBalancer: {{simple: ROUND_ROBIN}}\n    outlierDetection: {{consecutive5xxErrors: 2, interval: 60s, baseEjectionTime: 60s, maxEjectionPercent: 50}}\n",
        good.port(),
        bad.port()
    );
    let mut cfg = IstioConfig::default();
    cfg.add_text("ui.yaml", &yaml).unwrap();
    let cp = ControlPlane::new(translate(&cfg).unwrap())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = Client::builder()
        .bootstrap(bootstrap(cp))
        .telemetry()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    tokio::spawn(client.admin().serve(listener));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(client.clone(), &format!("http://{HOST}:9080/")).await.0);
    }
    // Round robin alternates until the failing endpoint's second 503 ejects it; then the
    // good endpoint answers alone.
    let fails = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert_eq!(fails, 2, "{statuses:?}");
    let http = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(admin_addr).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nhost: admin\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    };
    assert!(http("/ready").await.0.starts_with("HTTP/1.0 200"));
    // Istio's metrics and the xDS client's (gRFC A78) in one scrape, one `# EOF` at its end.
    let (_, metrics) = http("/stats/prometheus").await;
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {metrics}"))
            .to_string()
    };
    assert_eq!(
        line("grpc_xds_client_connected{"),
        format!("grpc_xds_client_connected{{grpc_target=\"#client\",grpc_xds_server=\"{cp}\"}} 1")
    );
    assert!(
        line("grpc_xds_client_resources{grpc_target=\"#client\",grpc_xds_authority=\"#old\",grpc_xds_cache_state=\"acked\",grpc_xds_resource_type=\"envoy.config.cluster.v3.Cluster\"}")
            .ends_with(" 1")
    );
    let requests: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(requests, 6, "{metrics}");
    let (head, body) = http("/config_dump").await;
    assert!(head.contains("content-type: application/json"), "{head}");
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cluster = format!("outbound|9080||{HOST}");
    let c = dump["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cluster.as_str())
        .unwrap_or_else(|| panic!("{cluster} in {dump}"));
    assert_eq!(c["active"], true);
    let ejected: Vec<(String, bool)> = c["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["ejected"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ejected,
        [(good.to_string(), false), (bad.to_string(), true)],
        "{c}"
    );
    let listener_status = dump["xds"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "LDS")
        .unwrap()
        .clone();
    assert_eq!(listener_status["name"], format!("{HOST}:9080"));
    assert_eq!(listener_status["state"], "ACKED");
    // CSDS on the same port: every resource, raw, with its status.
    let mut csds = ClientStatusDiscoveryServiceClient::connect(format!("http://{admin_addr}"))
        .await
        .unwrap();
    let full = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.config.len(), 1);
    let config = &full.config[0];
    assert_eq!(
        config.node.as_ref().unwrap().id,
        "sidecar~127.0.0.1~t.default~default.svc.cluster.local"
    );
    let types: std::collections::BTreeSet<&str> = config
        .generic_xds_configs
        .iter()
        .map(|g| g.type_url.rsplit('.').next().unwrap())
        .collect();
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        [
            "Cluster",
            "ClusterLoadAssignment",
            "Listener",
            "RouteConfiguration"
        ]
    );
    for g in &config.generic_xds_configs {
        assert_eq!(
            g.client_status,
            ClientResourceStatus::Acked as i32,
            "{}",
            g.name
        );
        assert_eq!(
            g.xds_config.as_ref().map(|a| a.type_url.as_str()),
            Some(g.type_url.as_str())
        );
        assert!(g.last_updated.is_some());
    }
    let bare = csds
        .fetch_client_status(ClientStatusRequest {
            exclude_resource_contents: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        bare.config[0]
            .generic_xds_configs
            .iter()
            .all(|g| g.xds_config.is_none())
    );
    let refused = csds
        .fetch_client_status(ClientStatusRequest {
            node_matchers: vec![Default::default()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}
