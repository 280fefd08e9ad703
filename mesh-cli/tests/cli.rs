//! `mesh config-dump` against the local control plane serving the bundled examples.

mod common;

use std::path::Path;
use std::time::Duration;

use mesh_cli::{ConfigDumpArgs, XdsOptions, config_dump};
use mesh_control_plane::ControlPlane;
use mesh_control_plane::watch::load;

fn bootstrap(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("bootstrap.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{server}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
                "node": {{"id": "sidecar~127.0.0.1~cli.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default"}}}}}}"#
        ),
    )
    .unwrap();
    path
}

fn xds(bootstrap: std::path::PathBuf, timeout: Duration, protocol: Option<&str>) -> XdsOptions {
    XdsOptions {
        bootstrap: Some(bootstrap),
        protocol: protocol.map(String::from),
        cache_dir: None,
        timeout,
        json: true,
    }
}

fn args(bootstrap: std::path::PathBuf, timeout: Duration) -> ConfigDumpArgs {
    ConfigDumpArgs {
        targets: vec!["xds:///ui.default.svc.cluster.local:9080".into()],
        raw: false,
        xds: xds(bootstrap, timeout, Some("delta")),
    }
}

#[tokio::test]
async fn config_dump_shows_what_the_client_resolved() {
    let cp = ControlPlane::new(
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")).unwrap(),
    );
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = config_dump(args(
        bootstrap(dir.path(), &addr.to_string()),
        Duration::from_secs(10),
    ))
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &v["listeners"][0];
    assert_eq!(l["name"], "ui.default.svc.cluster.local:9080");
    let canary = &l["route_config"]["virtual_hosts"][0]["routes"][1];
    assert_eq!(canary["name"], "canary");
    assert_eq!(
        canary["clusters"]["outbound|9080|version-1|ui.default.svc.cluster.local"],
        90
    );
    assert_eq!(canary["retry"]["num_retries"], 3);
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["clusters"][0]["outlier_detection"]["base_ejection_time_ms"],
        300_000
    );
    assert_eq!(v["xds"]["protocol"], "delta");
    assert!(
        v["xds"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "ACKED")
    );
}

#[tokio::test]
async fn config_dump_says_what_is_missing() {
    // A port with nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = config_dump(args(
        bootstrap(dir.path(), &free.to_string()),
        Duration::from_millis(1500),
    ))
    .await
    .unwrap_err();
    assert!(
        err.starts_with(
            "no complete configuration after 1.5s; last error: cannot connect to 127.0.0.1:"
        ),
        "{err}"
    );
    assert!(
        err.ends_with("still waiting for: LDS ui.default.svc.cluster.local:9080"),
        "{err}"
    );
}

async fn ok_backend(body: &'static str) -> std::net::SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |_req: http::Request<hyper::body::Incoming>| async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn request_reports_statuses_clusters_endpoints_attempts_and_latency() {
    let (v1, v2) = (ok_backend("v1").await, ok_backend("v2").await);
    // The bundled examples, with the ServiceEntry pointed at these two backends.
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config");
    for f in ["ui-service.yaml", "ui-routes.yaml"] {
        let text = std::fs::read_to_string(examples.join(f)).unwrap();
        let text = text
            .replace("http: 18081}", &format!("http: {}}}", v1.port()))
            .replace("  - address: 127.0.0.1\n    ports: {http: 18082}\n    labels: {app: ui, version: v1}\n", "")
            .replace("  - address: 127.0.0.1\n    ports: {http: 18083}\n    labels: {app: ui, version: v1}\n", "")
            .replace("http: 18091}", &format!("http: {}}}", v2.port()));
        std::fs::write(dir.path().join(f), text).unwrap();
    }
    let cp = ControlPlane::new(load(dir.path()).unwrap());
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let out = mesh_cli::request(mesh_cli::RequestArgs {
        url: "http://ui.default.svc.cluster.local:9080/".into(),
        requests: 2000,
        concurrency: 8,
        method: "GET".into(),
        headers: vec![],
        body: mesh_cli::RequestBody::Empty,
        admin: None,
        metrics_file: Some(dir.path().join("metrics.txt")),
        trace_sampling: None,
        otlp: None,
        xds: xds(
            bootstrap(dir.path(), &addr.to_string()),
            Duration::from_secs(10),
            None,
        ),
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["requests"], 2000);
    assert_eq!(v["status"]["200"], 2000);
    assert_eq!(v["attempts"], 2000);
    assert_eq!(v["errors"], serde_json::json!({}));
    let to_v2 = v["clusters"]["outbound|9080|version-2-beta|ui.default.svc.cluster.local"]
        .as_u64()
        .unwrap();
    assert!((140..=260).contains(&to_v2), "{v}");
    assert_eq!(v["endpoints"][v2.to_string()].as_u64(), Some(to_v2));
    assert_eq!(v["bodies"]["v2"].as_u64(), Some(to_v2));
    assert_eq!(v["bodies"]["v1"].as_u64(), Some(2000 - to_v2));
    for k in ["p50", "p90", "p99", "max"] {
        assert!(v["latency_us"][k].is_u64(), "{k}");
    }
    // The metrics written at exit: every request, under its destination.
    let text = std::fs::read_to_string(dir.path().join("metrics.txt")).unwrap();
    let count = |service: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("reporter=\"source\"")
                    && l.contains("response_code=\"200\"")
                    && l.contains(&format!("destination_service=\"{service}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(count("ui.default.svc.cluster.local"), 2000, "{text}");
}

#[tokio::test]
async fn config_dump_shows_the_workload_identity_in_use() {
    use mesh_xds_client::testing::ca::{TestCa, Validity};
    let cp = ControlPlane::new(
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")).unwrap(),
    );
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("mesh-test-ca");
    let id = "spiffe://cluster.local/ns/default/sa/cli";
    let leaf = ca.leaf(
        vec![rcgen::SanType::URI(id.try_into().unwrap())],
        Validity {
            not_before: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            not_after: std::time::UNIX_EPOCH + Duration::from_secs(1_800_086_400),
        },
    );
    for (f, body) in [
        ("cert-chain.pem", &leaf.chain_pem),
        ("key.pem", &leaf.key_pem),
        ("root-cert.pem", &ca.root_pem()),
    ] {
        std::fs::write(dir.path().join(f), body).unwrap();
    }
    let f = |n: &str| dir.path().join(n).display().to_string();
    let path = dir.path().join("bootstrap.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{addr}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
                "node": {{"id": "sidecar~127.0.0.1~cli.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default"}}}},
                "certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}", "refresh_interval": "900s"}}}}}}}}"#,
            f("cert-chain.pem"),
            f("key.pem"),
            f("root-cert.pem")
        ),
    )
    .unwrap();
    let serial = mesh_core::LeafInfo::parse(&leaf.der).unwrap().serial;
    let out = config_dump(args(path.clone(), Duration::from_secs(10)))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let d = &v["certificates"]["default"];
    assert_eq!(d["identity"]["spiffe_id"], id);
    assert_eq!(d["identity"]["serial"], serial.as_str());
    assert_eq!(d["identity"]["not_before"], "2027-01-15T08:00:00Z");
    assert_eq!(d["identity"]["not_after"], "2027-01-16T08:00:00Z");
    assert_eq!(d["roots"], 1);
    assert!(!out.contains("PRIVATE KEY"));

    let mut text = args(path, Duration::from_secs(10));
    text.xds.json = false;
    let out = config_dump(text).await.unwrap();
    assert!(
        out.contains(&format!(
            "certificates:\n  default: {id} serial {serial} valid 2027-01-15T08:00:00Z to 2027-01-16T08:00:00Z; roots: 1\n"
        )),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_with_who_called_and_enforces_its_policies() {
    let echo = common::echo_world(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: default}\nspec:\n  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin*]}\n",
    )
    .await;
    let (port, server, client) = (echo.port, echo.server.clone(), echo.client.clone());
    let admin: std::net::SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    tokio::spawn(mesh_cli::serve(mesh_cli::ServeArgs {
        bootstrap: Some(server),
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: Some(admin),
        trace_sampling: None,
    }));
    let send = |path: &str, body: mesh_cli::RequestBody| {
        let client = client.clone();
        let url = format!("http://echo.default.svc.cluster.local:9080{path}");
        async move {
            let out = mesh_cli::request(mesh_cli::RequestArgs {
                url,
                requests: 10,
                concurrency: 2,
                method: "GET".into(),
                headers: vec![],
                body,
                admin: None,
                metrics_file: None,
                trace_sampling: None,
                otlp: None,
                xds: xds(client, Duration::from_secs(10), None),
            })
            .await
            .unwrap();
            serde_json::from_str::<serde_json::Value>(&out).unwrap()
        }
    };
    // The server may take a moment to have its listener: retry the first call until it answers.
    let mut v = send("/hello", mesh_cli::RequestBody::Empty).await;
    for _ in 0..50 {
        if v["status"]["200"] == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        v = send("/hello", mesh_cli::RequestBody::Empty).await;
    }
    assert_eq!(
        v["bodies"]["echo answered GET /hello for spiffe://cluster.local/ns/default/sa/client"], 10,
        "{v}"
    );
    let v = send("/demo.Echo/Who", mesh_cli::RequestBody::GrpcEmpty).await;
    assert_eq!(v["bodies"]["grpc-status 0"], 10, "{v}");
    let v = send("/admin/users", mesh_cli::RequestBody::Empty).await;
    assert_eq!(v["status"]["403"], 10, "{v}");
    assert_eq!(
        v["bodies"]["RBAC: access denied: denied by policy \"default-no-admin-0\" of envoy.filters.http.rbac.DENY"],
        10,
        "{v}"
    );
    // The admin endpoint: ready while serving, and the requests served as Istio counts them
    // (recorded as each response body ends, so the last may land just after the client).
    let fetch = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nhost: admin\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    };
    assert!(fetch("/ready").await.starts_with("HTTP/1.0 200"));
    let count = |text: &str, protocol: &str, code: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains(
                        "source_principal=\"spiffe://cluster.local/ns/default/sa/client\"",
                    )
                    && l.contains("destination_workload=\"echo\"")
                    && l.contains(
                        "destination_principal=\"spiffe://cluster.local/ns/default/sa/echo\"",
                    )
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains(&format!("request_protocol=\"{protocol}\""))
                    && l.contains(&format!("response_code=\"{code}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let mut text = String::new();
    for _ in 0..100 {
        text = fetch("/stats/prometheus").await;
        if count(&text, "http", "403") == 10 && count(&text, "grpc", "200") == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&text, "http", "403"), 10, "{text}");
    assert_eq!(count(&text, "grpc", "200"), 10, "{text}");
    assert!(count(&text, "http", "200") >= 10, "{text}");
    assert!(text.contains("grpc_response_status=\"0\""), "{text}");
    // `mesh config-dump --admin`: the server's live configuration, a view at a time.
    use mesh_cli::proxy_config::{Output, View, render};
    let dump = mesh_cli::proxy_config::fetch(admin).await.unwrap();
    let listeners = render(&dump, View::Listeners, Output::Short).unwrap();
    assert!(
        listeners.starts_with("LISTENER")
            && listeners.contains(&format!("xds.istio.io/grpc/lds/inbound/127.0.0.1:{port}")),
        "{listeners}"
    );
    let secrets = render(&dump, View::Secrets, Output::Short).unwrap();
    assert!(
        secrets.contains("spiffe://cluster.local/ns/default/sa/echo"),
        "{secrets}"
    );
    let xds_rows = render(&dump, View::Xds, Output::Short).unwrap();
    assert!(xds_rows.starts_with("connected=true"), "{xds_rows}");
    assert!(
        xds_rows.lines().skip(2).all(|l| l.contains("ACKED")),
        "{xds_rows}"
    );
}

#[tokio::test]
async fn config_dump_raw_shows_the_resources_as_received_with_nested_anys_decoded() {
    let cp = ControlPlane::new(
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")).unwrap(),
    );
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(
        bootstrap(dir.path(), &addr.to_string()),
        Duration::from_secs(10),
    );
    a.raw = true;
    let out = config_dump(a).await.unwrap();
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("=== ")).collect();
    assert_eq!(
        headers,
        [
            "=== LDS ui.default.svc.cluster.local:9080",
            "=== RDS outbound|9080||ui.default.svc.cluster.local",
            "=== CDS outbound|9080|version-1|ui.default.svc.cluster.local",
            "=== CDS outbound|9080|version-2-beta|ui.default.svc.cluster.local",
            "=== EDS outbound|9080|version-1|ui.default.svc.cluster.local",
            "=== EDS outbound|9080|version-2-beta|ui.default.svc.cluster.local",
        ]
    );
    // The listener's HttpConnectionManager and its filters are decoded, not left as bytes.
    assert!(out.contains("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager HttpConnectionManager {"), "{out}");
    assert!(
        out.contains("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router Router {"),
        "{out}"
    );
    assert!(!out.contains("value: ["), "every Any is decoded");
}
