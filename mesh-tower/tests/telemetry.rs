//! Istio's standard metrics from the client stack, end to end: real backends on 127.0.0.1,
//! the local control plane's endpoint metadata, exact counts and labels in the exported text.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mesh_core::telemetry::Workload;
use mesh_tower::MeshConfig;
use mesh_tower::telemetry::Telemetry;
use support::*;
use tower::ServiceExt;

fn local() -> Workload {
    Workload::from_node_metadata(
        |k| match k {
            "WORKLOAD_NAME" => Some("web"),
            "NAMESPACE" => Some("front"),
            "CLUSTER_ID" => Some("Kubernetes"),
            _ => None,
        },
        |k| match k {
            "app" => Some("web"),
            "version" => Some("v1"),
            _ => None,
        },
    )
}

/// The source and destination labels every request in these tests has (the destination is
/// the `ui` ServiceEntry's first endpoint, `ui-0`, labelled `version: v1`).
const PEERS: &str = "reporter=\"source\",source_workload=\"web\",source_workload_namespace=\"front\",source_principal=\"unknown\",source_app=\"web\",source_version=\"v1\",source_canonical_service=\"web\",source_canonical_revision=\"v1\",source_cluster=\"Kubernetes\",destination_workload=\"ui-0\",destination_workload_namespace=\"default\",destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"ui.default.svc.cluster.local\",destination_service_name=\"ui\",destination_service_namespace=\"default\",destination_canonical_service=\"ui-0\",destination_canonical_revision=\"v1\",destination_cluster=\"Kubernetes\"";

/// The `istio_requests_total` lines of the exported text, without the shared peer labels.
fn requests(t: &Telemetry) -> Vec<String> {
    let mut rows: Vec<String> = t
        .encode()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(|l| l.replace(PEERS, "…"))
        .collect();
    rows.sort();
    rows
}

async fn get(m: &Mesh, path: &str) -> StatusCode {
    get_path(&m.svc, path).await
}

#[tokio::test]
async fn each_request_is_counted_once_with_istios_labels() {
    let ok = backend("v1", Behavior::Ok).await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(&yaml(&[ok.addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    for _ in 0..3 {
        assert_eq!(get(&m, "/a").await, StatusCode::OK);
    }
    assert_eq!(
        requests(&t),
        [
            "istio_requests_total{…,request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 3"
        ]
    );
    let text = t.encode();
    // Durations in Envoy's buckets, one observation per request; the bodies' bytes ("v1").
    assert!(
        text.lines().any(
            |l| l.starts_with("istio_request_duration_milliseconds_count{")
                && l.contains("response_code=\"200\"")
                && l.ends_with(" 3")
        ),
        "{text}"
    );
    assert!(
        text.lines().any(
            |l| l.starts_with("istio_request_duration_milliseconds_bucket{")
                && l.contains("le=\"3600000.0\"")
                && l.ends_with(" 3")
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_sum{") && l.ends_with(" 6.0")),
        "{text}"
    );
}

#[tokio::test]
async fn retries_are_attempts_not_requests_and_local_replies_carry_their_flags() {
    // Every other request fails: each first attempt gets 503, its retry 200.
    let flaky = backend("v1", Behavior::FailHalf).await;
    let retry = "  - name: r\n    match:\n    - uri: {prefix: /retry}\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 2, retryOn: 5xx}\n  - name: plain\n    match:\n    - uri: {prefix: /plain}\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 0}\n";
    let t = Telemetry::new(local());
    let budget = mesh_core::RetryBudgetConfig::new(&mesh_core::RetryBudgetSpec {
        retry_percent: Some(100.0),
        ..Default::default()
    })
    .unwrap();
    let config = MeshConfig::default()
        .observer(t.client_observer())
        .retry_budget(budget);
    let m = mesh_with(&yaml(&[flaky.addr], &[], ROUND_ROBIN, retry), config).await;
    for _ in 0..2 {
        assert_eq!(get(&m, "/retry").await, StatusCode::OK);
    }
    // Without retries: one 503, one 200.
    assert_eq!(get(&m, "/plain").await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&m, "/plain").await, StatusCode::OK);
    // No route: the stack's own 404, flagged NR, with no destination known.
    assert_eq!(get(&m, "/elsewhere").await, StatusCode::NOT_FOUND);
    let rows = requests(&t);
    assert_eq!(
        rows.iter()
            .filter(|r| r.starts_with("istio_requests_total{…"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            "istio_requests_total{…,request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 3",
            "istio_requests_total{…,request_protocol=\"http\",response_code=\"503\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 1",
        ]
    );
    let no_route: Vec<&String> = rows
        .iter()
        .filter(|r| r.contains("response_flags=\"NR\""))
        .collect();
    assert_eq!(no_route.len(), 1, "{rows:?}");
    assert!(
        no_route[0].contains("destination_workload=\"unknown\"")
            && no_route[0].contains("destination_service=\"unknown\"")
            && no_route[0].contains("response_code=\"404\"")
            && no_route[0].ends_with("} 1"),
        "{}",
        no_route[0]
    );
    // Five requests counted, for six upstream attempts.
    assert_eq!(flaky.hits.load(std::sync::atomic::Ordering::Relaxed), 6);
}

/// A gRPC backend over h2c: `/ok` answers one message and `grpc-status: 0` in the
/// trailers, `/missing` a message and `grpc-status: 5` (NOT_FOUND) in the trailers, and
/// `/denied` a trailers-only `grpc-status: 7` (PERMISSION_DENIED); `/stream` three
/// messages over frames that split their prefixes, then `grpc-status: 0`.
async fn grpc_backend() -> std::net::SocketAddr {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let _ = req.into_body().collect().await;
                    let mut builder =
                        http::Response::builder().header("content-type", "application/grpc");
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                        match path.as_str() {
                            "/denied" => {
                                builder = builder.header("grpc-status", "7");
                                Vec::new()
                            }
                            p => {
                                let mut trailers = http::HeaderMap::new();
                                let code = if p == "/missing" { "5" } else { "0" };
                                trailers.insert("grpc-status", code.parse().unwrap());
                                let data: &[&'static [u8]] = if p == "/stream" {
                                    &[
                                        &[0, 0, 0, 0, 1, 9, 0, 0],
                                        &[0, 0, 2, 1, 1, 0],
                                        &[0, 0, 0, 0],
                                    ]
                                } else {
                                    &[&[0, 0, 0, 0, 2, 8, 1]]
                                };
                                data.iter()
                                    .map(|d| Ok(Frame::data(Bytes::from_static(d))))
                                    .chain([Ok(Frame::trailers(trailers))])
                                    .collect()
                            }
                        };
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(builder.body(body).unwrap())
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
            );
        }
    });
    addr
}

#[tokio::test]
async fn grpc_statuses_come_from_the_trailers_or_a_trailers_only_response() {
    let addr = grpc_backend().await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(&yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    for path in ["/ok", "/ok", "/missing", "/denied"] {
        let resp = m
            .svc
            .clone()
            .oneshot(
                Request::post(format!("http://{HOST}:9080{path}"))
                    .version(http::Version::HTTP_2)
                    .header("content-type", "application/grpc")
                    .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(
        requests(&t),
        [
            "istio_requests_total{…,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\",connection_security_policy=\"unknown\"} 2",
            "istio_requests_total{…,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"5\",response_flags=\"-\",connection_security_policy=\"unknown\"} 1",
            "istio_requests_total{…,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"7\",response_flags=\"-\",connection_security_policy=\"unknown\"} 1",
        ]
    );
}

#[tokio::test]
async fn mirrored_copies_are_not_requests() {
    let main = backend("v1", Behavior::Ok).await;
    let shadow = backend("v2", Behavior::Ok).await;
    let mirror = "  - name: mirrored\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    mirror: {host: ui.default.svc.cluster.local, subset: version-2-beta}\n    mirrorPercentage: {value: 100}\n";
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(
        &yaml(&[main.addr], &[shadow.addr], ROUND_ROBIN, mirror),
        config,
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&m, "/a").await, StatusCode::OK);
    }
    // Every copy reached the shadow backend...
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while shadow.hits.load(std::sync::atomic::Ordering::Relaxed) < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("mirrored");
    // ...and only the three requests are counted, to the main destination.
    assert_eq!(
        requests(&t),
        [
            "istio_requests_total{…,request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 3"
        ]
    );
}

#[tokio::test]
async fn request_bytes_are_the_bytes_read_from_the_callers_body() {
    let ok = backend("v1", Behavior::Ok).await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(&yaml(&[ok.addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    for body in ["hello world", "hello"] {
        let resp = m
            .svc
            .clone()
            .oneshot(
                Request::post(format!("http://{HOST}:9080/upload"))
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.unwrap();
    }
    let text = t.encode();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(line("istio_request_bytes_sum{"), "16.0");
    assert_eq!(line("istio_request_bytes_count{"), "2");
    // Message counts are gRPC's alone.
    assert!(!text.contains("_messages_total{"), "{text}");
}

#[tokio::test]
async fn grpc_messages_are_counted_each_way_however_the_frames_split_them() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let addr = grpc_backend().await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(&yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    // Two request messages (lengths 1 and 0), the first prefix split over two frames.
    let two: [&'static [u8]; 2] = [&[0, 0, 0], &[0, 1, 7, 0, 0, 0, 0, 0]];
    for (path, frames) in [("/ok", &two[..1]), ("/stream", &two[..])] {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = frames
            .iter()
            .map(|d| Ok(Frame::data(Bytes::from_static(d))))
            .collect();
        let resp = m
            .svc
            .clone()
            .oneshot(
                Request::post(format!("http://{HOST}:9080{path}"))
                    .version(http::Version::HTTP_2)
                    .header("content-type", "application/grpc")
                    .body(StreamBody::new(futures_util::stream::iter(frames)))
                    .unwrap(),
            )
            .await
            .unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let text = t.encode();
    let rows = |name: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(name))
            .map(|l| l.replace(PEERS, "…"))
            .collect()
    };
    // `/ok`: its one (truncated) request message and one response message; `/stream`: two
    // and three.
    assert_eq!(
        rows("istio_request_messages_total{"),
        [
            "istio_request_messages_total{…,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\",connection_security_policy=\"unknown\"} 3"
        ]
    );
    assert_eq!(
        rows("istio_response_messages_total{"),
        [
            "istio_response_messages_total{…,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\",connection_security_policy=\"unknown\"} 4"
        ]
    );
}

/// A header's value as text.
fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn each_attempt_continues_the_callers_trace_with_a_span_of_its_own() {
    use mesh_tower::telemetry::Tracer;
    // The first attempt of each request gets 503, the retry 200.
    let (addr, seen) = header_backend(1).await;
    let retry = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let t = Telemetry::new(local());
    let config =
        MeshConfig::default().observer(t.client_observer_traced(Tracer::with_sampling(0.0)));
    let m = mesh_with(&yaml(&[addr], &[], ROUND_ROBIN, retry), config).await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = m
        .svc
        .clone()
        .oneshot(
            Request::get(format!("http://{HOST}:9080/a"))
                .header("traceparent", caller)
                .header("tracestate", "congo=t61rcWkgMzE")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "one request, two attempts");
    let spans: Vec<&str> = seen
        .iter()
        .map(|h| {
            let tp = header(h, "traceparent");
            // The caller's trace and sampling decision, its vendor state unchanged.
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            assert!(tp.ends_with("-01"), "{tp}");
            assert_eq!(header(h, "tracestate"), "congo=t61rcWkgMzE");
            // A W3C caller's trace goes on in single-header B3 too (Envoy's Zipkin tracer reads
            // no traceparent), naming the same span.
            assert_eq!(
                &header(h, "b3")[..49],
                format!("{}-{}", &tp[3..35], &tp[36..52])
            );
            assert!(h.get("x-b3-traceid").is_none());
            &tp[36..52]
        })
        .collect();
    assert_ne!(spans[0], spans[1], "each attempt has its own span");
    assert!(spans.iter().all(|s| *s != "00f067aa0ba902b7"));
    // Retries are attempts: still one request in the metrics.
    assert_eq!(
        requests(&t),
        [
            "istio_requests_total{…,request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"unknown\"} 1"
        ]
    );
}

#[tokio::test]
async fn b3_callers_get_b3_back_and_traces_start_when_none_came() {
    use mesh_tower::telemetry::Tracer;
    let (addr, seen) = header_backend(0).await;
    let config = MeshConfig::default().observer(Tracer::with_sampling(100.0).client_observer());
    let m = mesh_with(&yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    let send = |headers: &'static [(&'static str, &'static str)]| {
        let svc = m.svc.clone();
        async move {
            let mut req = Request::get(format!("http://{HOST}:9080/a"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let resp = svc
                .oneshot(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            resp.into_body().collect().await.unwrap();
        }
    };
    send(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0")]).await;
    send(&[
        ("x-b3-traceid", "463ac35c9f6413ad"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-flags", "1"),
    ])
    .await;
    send(&[]).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    // B3 single: the same trace, not sampled, a new span, the client's span as its parent.
    let b3: Vec<&str> = header(&seen[0], "b3").split('-').collect();
    assert_eq!(b3[0], "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(b3[2], "0");
    assert_ne!(b3[1], "e457b5a2e4d86bd1");
    assert_ne!(
        b3[3], "e457b5a2e4d86bd1",
        "the client's own span sits between"
    );
    assert_eq!(
        header(&seen[0], "traceparent"),
        format!("00-{}-{}-00", b3[0], b3[1])
    );
    // B3 multi: the 64-bit trace id widened, debug read as sampled.
    let h = &seen[1];
    assert_eq!(
        header(h, "x-b3-traceid"),
        "0000000000000000463ac35c9f6413ad"
    );
    assert_eq!(header(h, "x-b3-sampled"), "1");
    assert!(h.get("x-b3-flags").is_none());
    assert_eq!(header(h, "x-b3-parentspanid").len(), 16);
    assert_eq!(
        header(h, "traceparent"),
        format!(
            "00-0000000000000000463ac35c9f6413ad-{}-01",
            header(h, "x-b3-spanid")
        )
    );
    // No context: a new trace, sampled at 100%, as W3C and single-header B3 (which Envoy's
    // Zipkin tracer, Istio's default, reads); no multi-header B3.
    let h = &seen[2];
    let tp = header(h, "traceparent");
    assert_eq!(tp.len(), 55);
    let b3: Vec<&str> = header(h, "b3").split('-').collect();
    assert_eq!((b3[0], b3[1], b3[2]), (&tp[3..35], &tp[36..52], "1"));
    assert_eq!(b3[3].len(), 16, "the client's span is the attempt's parent");
    assert!(tp.ends_with("-01"));
    assert!(h.get("x-b3-traceid").is_none());
}

#[tokio::test]
async fn the_exchange_headers_go_to_mesh_workloads_only() {
    let t = Telemetry::for_node(
        local(),
        "sidecar~127.0.0.1~web-1.front~front.svc.cluster.local",
    );
    let mut seen = Vec::new();
    for location in ["MESH_INTERNAL", "MESH_EXTERNAL"] {
        let (addr, headers) = header_backend(0).await;
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  location: {location}\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n",
            addr.port()
        );
        let m = mesh_with(&yaml, MeshConfig::default().observer(t.client_observer())).await;
        assert_eq!(get(&m, "/").await, StatusCode::OK);
        let h = headers.lock().unwrap().pop().unwrap();
        seen.push((
            h.contains_key("x-envoy-peer-metadata"),
            h.get("x-envoy-peer-metadata-id").cloned(),
        ));
    }
    assert_eq!(
        seen,
        [
            (
                true,
                Some(http::HeaderValue::from_static(
                    "sidecar~127.0.0.1~web-1.front~front.svc.cluster.local"
                ))
            ),
            (false, None)
        ]
    );
}

/// `(destination_canonical_revision, source_principal, count)` of each `istio_requests_total`
/// series.
fn revisions_and_principals(t: &Telemetry) -> Vec<(String, String, u64)> {
    let label = |l: &str, name: &str| {
        let start = l.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        l[start..start + l[start..].find('"').unwrap()].to_string()
    };
    let mut rows: Vec<_> = t
        .encode()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(|l| {
            (
                label(l, "destination_canonical_revision"),
                label(l, "source_principal"),
                l.rsplit(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn new_endpoint_metadata_and_a_new_principal_start_new_series() {
    // Series are found by the identity of the endpoint's metadata: an EDS update that
    // relabels the same address must start a series under the new labels, and a workload
    // certificate arriving must start series under the new principal.
    let ok = backend("v1", Behavior::Ok).await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let any_version =
        "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local}\n";
    let relabelled = |version: &str| {
        yaml(&[ok.addr], &[], ROUND_ROBIN, any_version).replace(
            "labels: {version: v1}\n",
            &format!("labels: {{version: {version}}}\n"),
        )
    };
    let m = mesh_with(&relabelled("v1"), config).await;
    for _ in 0..2 {
        assert_eq!(get(&m, "/").await, StatusCode::OK);
    }
    let unknown = || "unknown".to_string();
    assert_eq!(
        revisions_and_principals(&t),
        [("v1".to_string(), unknown(), 2)]
    );

    m.cp.update(resources(&relabelled("v3")));
    let mut sent = 2;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !revisions_and_principals(&t).iter().any(|r| r.0 == "v3") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update never arrived"
        );
        assert_eq!(get(&m, "/").await, StatusCode::OK);
        sent += 1;
    }
    let rows = revisions_and_principals(&t);
    let v1 = rows[0].2;
    assert_eq!(
        rows,
        [
            ("v1".into(), unknown(), v1),
            ("v3".into(), unknown(), sent - v1)
        ]
    );
    for _ in 0..5 {
        assert_eq!(get(&m, "/").await, StatusCode::OK);
    }
    assert_eq!(
        revisions_and_principals(&t),
        [
            ("v1".into(), unknown(), v1),
            ("v3".into(), unknown(), sent - v1 + 5)
        ]
    );

    let me = "spiffe://cluster.local/ns/front/sa/web";
    t.set_principal(me);
    for _ in 0..4 {
        assert_eq!(get(&m, "/").await, StatusCode::OK);
    }
    assert_eq!(
        revisions_and_principals(&t),
        [
            ("v1".into(), unknown(), v1),
            ("v3".into(), me.to_string(), 4),
            ("v3".into(), unknown(), sent - v1 + 5),
        ]
    );
}

/// A backend answering with `x-envoy-peer-metadata` naming the workload `names[n % 2]` on its
/// n-th request, as two sidecars behind one address would (a rolled-over pod).
async fn exchanging_backend(names: [&'static str; 2], switch_after: u64) -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(AtomicU64::new(0));
    let values = names.map(|name| {
        let w = Workload::from_node_metadata(
            |k| match k {
                "WORKLOAD_NAME" => Some(name),
                "NAMESPACE" => Some("back"),
                _ => None,
            },
            |_| None,
        );
        http::HeaderValue::from_str(&mesh_core::telemetry::peer_metadata::encode(&w, "pod"))
            .unwrap()
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (served, values) = (served.clone(), values.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let n = served.fetch_add(1, Ordering::Relaxed);
                        let value = values[usize::from(n >= switch_after)].clone();
                        async move {
                            let mut r = http::Response::new(Full::new(Bytes::from_static(b"ok")));
                            r.headers_mut().insert("x-envoy-peer-metadata", value);
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn what_the_server_says_it_is_names_the_destination_request_by_request() {
    // The same endpoint answers as `old` for three requests, then as `new`: each request is
    // counted under the workload its own answer named (series are cached by endpoint).
    let addr = exchanging_backend(["old", "new"], 3).await;
    let t = Telemetry::new(local());
    let config = MeshConfig::default().observer(t.client_observer());
    let m = mesh_with(&yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1), config).await;
    for _ in 0..8 {
        assert_eq!(get(&m, "/").await, StatusCode::OK);
    }
    let mut rows: Vec<(String, String)> = t
        .encode()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .map(|l| {
            let start = l.find("destination_workload=\"").unwrap() + 22;
            let name = &l[start..start + l[start..].find('"').unwrap()];
            (name.to_string(), l.rsplit(' ').next().unwrap().to_string())
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            ("new".to_string(), "5".to_string()),
            ("old".to_string(), "3".to_string())
        ]
    );
}
