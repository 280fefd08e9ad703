//! OTLP export end to end: `mesh request` with traces on, its spans exported through the
//! tracing-opentelemetry layer of `mesh::otlp` to a collector on 127.0.0.1, with the ids the
//! upstream saw in its `traceparent`. Its own process: it installs the global subscriber.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing_subscriber::layer::SubscriberExt;

/// A collector keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut all = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                all.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A backend recording each request's `traceparent`.
async fn backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        s.lock().unwrap().push(tp);
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_the_ids_the_upstream_saw() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (layer, provider) =
        mesh::otlp::layer(&format!("http://{collector_addr}"), "otlp-test", 100.0).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let (addr, seen) = backend().await;
    let mut cfg = IstioConfig::default();
    cfg.add_text(
        "ui.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [ui.default.svc.cluster.local]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
            addr.port()
        ),
    )
    .unwrap();
    let cp = ControlPlane::new(translate(&cfg).unwrap())
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{cp}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~cli.default~default.svc.cluster.local"}}}}"#
        ),
    )
    .unwrap();
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    mesh_cli::request(mesh_cli::RequestArgs {
        url: "http://ui.default.svc.cluster.local:9080/".into(),
        requests: 1,
        concurrency: 1,
        method: "GET".into(),
        headers: vec![format!("traceparent: 00-{caller_trace}-{caller_span}-01")],
        body: mesh_cli::RequestBody::Empty,
        admin: None,
        metrics_file: None,
        trace_sampling: Some(100.0),
        xds: mesh_cli::XdsOptions {
            bootstrap: Some(bootstrap),
            protocol: None,
            cache_dir: None,
            timeout: Duration::from_secs(10),
            json: true,
        },
    })
    .await
    .unwrap();
    // Flushing blocks on the export, which needs this runtime.
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .unwrap()
        .unwrap();
    let spans = collector.0.lock().unwrap().clone();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{name} in {:?}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let (client, attempt) = (find("mesh.client"), find("mesh.attempt"));
    let upstream = seen.lock().unwrap().pop().unwrap();
    // The caller's trace, the client span under the caller's span, the attempt under the
    // client, and the upstream told the attempt's span.
    assert_eq!(hex(&client.trace_id), caller_trace);
    assert_eq!(hex(&attempt.trace_id), caller_trace);
    assert_eq!(hex(&client.parent_span_id), caller_span);
    assert_eq!(attempt.parent_span_id, client.span_id);
    assert_eq!(
        upstream,
        format!("00-{caller_trace}-{}-01", hex(&attempt.span_id))
    );
    // The request's fields as span attributes.
    let attr = |s: &Span, key: &str| {
        s.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    };
    assert!(
        attr(&client, "http.status_code").contains("200"),
        "{client:?}"
    );
    assert!(attr(&attempt, "attempt").contains('1'), "{attempt:?}");
}
