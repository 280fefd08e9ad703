//! OTLP export end to end: `mesh request` and `mesh serve` with traces on, over STRICT mTLS,
//! their spans exported through the tracing-opentelemetry layer of `mesh::otlp` to a collector
//! on 127.0.0.1 as one trace. Its own process: it installs the global subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tracing_subscriber::layer::SubscriberExt;

/// A collector keeping every span and every metrics export it is sent.
#[derive(Clone, Default)]
struct Collector(
    Arc<Mutex<Vec<Span>>>,
    Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
);

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.1.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_spans_reach_the_collector_as_one_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let (layer, provider) =
        mesh::otlp::layer(&format!("http://{collector_addr}"), "otlp-test", 100.0).unwrap();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let echo = common::echo_world("").await;
    tokio::spawn(mesh_cli::serve(mesh_cli::ServeArgs {
        bootstrap: Some(echo.server.clone()),
        listen: format!("127.0.0.1:{}", echo.port).parse().unwrap(),
        admin: None,
        trace_sampling: Some(100.0),
    }));
    let caller_trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";
    let send = || {
        mesh_cli::request(mesh_cli::RequestArgs {
            url: "http://echo.default.svc.cluster.local:9080/hello".into(),
            requests: 1,
            concurrency: 1,
            method: "GET".into(),
            headers: vec![format!("traceparent: 00-{caller_trace}-{caller_span}-01")],
            body: mesh_cli::RequestBody::Empty,
            admin: None,
            metrics_file: None,
            trace_sampling: Some(100.0),
            otlp: None,
            xds: mesh_cli::XdsOptions {
                bootstrap: Some(echo.client.clone()),
                protocol: None,
                cache_dir: None,
                timeout: Duration::from_secs(10),
                json: true,
            },
        })
    };
    // The server may take a moment to have its listener.
    for _ in 0..50 {
        let out: serde_json::Value = serde_json::from_str(&send().await.unwrap()).unwrap();
        if out["status"]["200"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Flushing blocks on the export, which needs this runtime.
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .unwrap()
        .unwrap();
    let spans = collector.0.lock().unwrap().clone();
    // The last (answered) request's spans: the server span names its parent attempt.
    let server = spans
        .iter()
        .rfind(|s| s.name == "mesh.server")
        .unwrap_or_else(|| {
            panic!(
                "mesh.server in {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
        .clone();
    let attempt = spans
        .iter()
        .find(|s| s.name == "mesh.attempt" && s.span_id == server.parent_span_id)
        .expect("the server's parent is an attempt")
        .clone();
    let client = spans
        .iter()
        .find(|s| s.name == "mesh.client" && s.span_id == attempt.parent_span_id)
        .expect("the attempt's parent is a client span")
        .clone();
    // One trace, the caller's, from the client's span through the attempt to the server's.
    for s in [&client, &attempt, &server] {
        assert_eq!(hex(&s.trace_id), caller_trace, "{}", s.name);
    }
    assert_eq!(hex(&client.parent_span_id), caller_span);
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(client.kind, 3, "SPAN_KIND_CLIENT");
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
    // The answered attempt is the request's last (earlier ones may have met the server
    // before its listener was up and been retried).
    let digits = |v: String| v.chars().filter(char::is_ascii_digit).collect::<String>();
    let (number, attempts) = (
        digits(attr(&attempt, "attempt")),
        digits(attr(&client, "attempts")),
    );
    assert!(!number.is_empty(), "{attempt:?}");
    assert_eq!(number, attempts, "{attempt:?} {client:?}");

    // Istio's metrics over OTLP: a facade client with telemetry calls echo twice, then pushes.
    use tower::ServiceExt;
    let bootstrap = mesh::xds::Bootstrap::from_file(&echo.client).unwrap();
    let client = mesh::Client::builder()
        .bootstrap(bootstrap)
        .telemetry()
        .build()
        .unwrap();
    for _ in 0..2 {
        let resp = client
            .clone()
            .oneshot(
                http::Request::get("http://echo.default.svc.cluster.local:9080/hello")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
    }
    mesh::otlp::push_metrics_once(
        client.telemetry().unwrap(),
        &format!("http://{collector_addr}"),
        "otlp-test",
    )
    .await
    .unwrap();
    let exports = collector.1.lock().unwrap().clone();
    assert_eq!(exports.len(), 1);
    let metrics = &exports[0].resource_metrics[0].scope_metrics[0].metrics;
    let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "istio_requests_total",
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes"
        ]
    );
    use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
    let Some(Data::Sum(requests)) = &metrics[0].data else {
        panic!("{:?}", metrics[0])
    };
    assert!(requests.is_monotonic);
    let point = &requests.data_points[0];
    assert_eq!(requests.data_points.len(), 1);
    assert_eq!(point.value, Some(Value::AsInt(2)));
    let attr = |key: &str| {
        point
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    };
    assert_eq!(point.attributes.len(), 25);
    assert!(attr("reporter").contains("\"source\""), "{point:?}");
    assert!(attr("response_code").contains("\"200\""), "{point:?}");
    assert!(
        attr("destination_principal").contains("spiffe://cluster.local/ns/default/sa/echo"),
        "{point:?}"
    );
    let Some(Data::Histogram(duration)) = &metrics[1].data else {
        panic!("{:?}", metrics[1])
    };
    let d = &duration.data_points[0];
    assert_eq!(
        (d.count, d.explicit_bounds.len(), d.bucket_counts.len()),
        (2, 19, 20)
    );
    assert_eq!(d.bucket_counts.iter().sum::<u64>(), 2);
    assert_eq!(metrics[1].unit, "ms");
}
