//! The stack's seams for what comes next, end to end: typed local replies, the per-request
//! observer, typed connect targets (TLS clusters are never sent plaintext, negotiated HTTP/2
//! is used), and cluster state that follows the snapshot.

mod support;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::Full;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use mesh_tower::observe::{AttemptEnd, AttemptStart, RequestStart, ResponseEnd, StreamEnd};
use mesh_tower::{
    ConnectTarget, FLAGS_HEADER, LocalReason, MeshConfig, MeshConnection, MeshInfo, MeshService,
    Negotiated, Observer, RequestObserver,
};
use support::*;
use tower::ServiceExt;

#[tokio::test]
async fn a_grpc_route_timeout_is_deadline_exceeded() {
    let slow = backend("v1", Behavior::Slow(Duration::from_secs(5))).await;
    let timeout = "  - name: r\n    timeout: 100ms\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[slow.addr], timeout).await;
    let req = Request::post(format!("http://{HOST}:9080/pkg.Svc/Method"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = m.svc.clone().oneshot(req).await.unwrap();
    // A31: DEADLINE_EXCEEDED, not the UNAVAILABLE that a 504 maps to.
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "4");
    assert_eq!(resp.headers()["grpc-message"], "upstream request timeout");
    assert_eq!(resp.headers()[FLAGS_HEADER], "UT");
    let info = resp.extensions().get::<MeshInfo>().unwrap();
    assert_eq!(info.reason(), Some(LocalReason::RouteTimeout));
    assert_eq!(info.attempts, 1, "the attempt that timed out is counted");
}

#[tokio::test]
async fn no_route_is_typed_in_mesh_info() {
    let a = backend("v1", Behavior::Ok).await;
    let m = round_robin(&[a.addr], ROUTE_V1).await;
    let req = Request::get("http://elsewhere.default.svc.cluster.local:9080/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = m.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()[FLAGS_HEADER], "NR");
    let info = resp.extensions().get::<MeshInfo>().unwrap();
    assert_eq!(info.reason(), Some(LocalReason::NoRoute));
    assert_eq!((info.route.as_deref(), info.attempts), (None, 0));
    assert_eq!(m.svc.no_route_count(), 1);
}

/// Everything an observer was told, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

struct Following(Arc<Log>);

/// The observer, writing to a log.
struct Watcher(Arc<Log>);

impl Observer for Watcher {
    fn on_request(&self, request: &RequestStart<'_>) -> Option<Box<dyn RequestObserver>> {
        // Only requests that ask to be observed are.
        request.headers.get("x-observe")?;
        self.0
            .0
            .lock()
            .unwrap()
            .push(format!("request {}", request.uri.path()));
        Some(Box::new(Following(self.0.clone())))
    }
}

impl RequestObserver for Following {
    fn on_attempt(&mut self, attempt: &mut AttemptStart<'_>) {
        attempt.headers.insert(
            "x-attempt",
            HeaderValue::from_str(&attempt.attempt.to_string()).unwrap(),
        );
        self.0
            .0
            .lock()
            .unwrap()
            .push(format!("attempt {}", attempt.attempt));
    }

    fn on_attempt_end(&mut self, end: &AttemptEnd<'_>) {
        self.0.0.lock().unwrap().push(format!(
            "attempt {} ended {:?}",
            end.attempt,
            end.status.map(|s| s.as_u16())
        ));
    }

    fn on_response(&mut self, response: &ResponseEnd<'_>) {
        self.0.0.lock().unwrap().push(format!(
            "response {} after {} attempts, flags {}",
            response.status.as_u16(),
            response.info.attempts,
            response.info.flags
        ));
    }

    fn on_end(self: Box<Self>, end: &StreamEnd<'_>) {
        self.0.0.lock().unwrap().push(format!(
            "body ended after {} bytes, read to the end: {}",
            end.body_bytes, end.completed
        ));
    }
}

#[tokio::test]
async fn the_observer_follows_each_request_through_its_attempts() {
    // Fails every other request: the first attempt fails, its retry succeeds.
    let flaky = backend("v1", Behavior::FailHalf).await;
    let retry = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 2, retryOn: 5xx}\n";
    let log = Arc::new(Log::default());
    let budget = mesh_core::RetryBudgetConfig::new(&mesh_core::RetryBudgetSpec {
        retry_percent: Some(100.0),
        ..Default::default()
    })
    .unwrap();
    let config = MeshConfig::default()
        .observer(Arc::new(Watcher(log.clone())))
        .retry_budget(budget);
    let m = mesh_with(&yaml(&[flaky.addr], &[], ROUND_ROBIN, retry), config).await;
    let (status, _, _) = send(&m.svc, &[("x-observe", "1")]).await;
    assert_eq!(status, StatusCode::OK);
    // Not observed: nothing is logged.
    assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    assert_eq!(
        *log.0.lock().unwrap(),
        [
            "request /productpage",
            "attempt 1",
            "attempt 1 ended Some(503)",
            "attempt 2",
            "attempt 2 ended Some(200)",
            "response 200 after 2 attempts, flags -",
            "body ended after 2 bytes, read to the end: true",
        ]
    );
    assert_eq!(flaky.hits.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn attempt_headers_set_by_the_observer_reach_the_upstream() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let g = g.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                g.lock()
                    .unwrap()
                    .push(req.headers().get("x-attempt").cloned());
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    let log = Arc::new(Log::default());
    let m = mesh_with(
        &yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1),
        MeshConfig::default().observer(Arc::new(Watcher(log.clone()))),
    )
    .await;
    assert_eq!(send(&m.svc, &[("x-observe", "1")]).await.0, StatusCode::OK);
    assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    assert_eq!(
        *got.lock().unwrap(),
        [Some(HeaderValue::from_static("1")), None]
    );
}

#[tokio::test]
async fn a_tls_cluster_without_a_certificate_provider_is_never_sent_plaintext() {
    // The bootstrap defines no certificate provider: the ISTIO_MUTUAL cluster is NACKed
    // (gRFC A29), so its route has no cluster to send to.
    let a = backend("v1", Behavior::Ok).await;
    let mtls = "    tls: {mode: ISTIO_MUTUAL}";
    let m = mesh(&yaml(&[a.addr], &[], mtls, ROUTE_V1)).await;
    let (status, why, info) = send(&m.svc, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        why,
        "no cluster: cluster outbound|9080|version-1|ui.default.svc.cluster.local is unknown or has no endpoints"
    );
    assert_eq!(info.unwrap().reason(), Some(LocalReason::NoCluster));
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        0,
        "nothing went out in the clear"
    );
}

/// A TCP connection that says it negotiated `h2`, as a TLS connector would after ALPN.
struct AlpnH2(TokioIo<tokio::net::TcpStream>);

impl MeshConnection for AlpnH2 {
    fn negotiated(&self) -> Negotiated {
        Negotiated::H2
    }
}

impl Read for AlpnH2 {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for AlpnH2 {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_connection_that_negotiated_h2_carries_http1_requests_over_http2() {
    let (addr, seen) = recording_backend(true).await;
    let m = mesh(&yaml(&[addr], &[], ROUND_ROBIN, ROUTE_V1)).await;
    let targets = Arc::new(Mutex::new(Vec::new()));
    let t = targets.clone();
    let connector = tower::service_fn(move |target: ConnectTarget| {
        t.lock()
            .unwrap()
            .push((target.address(), target.cluster_name().to_string()));
        async move {
            let s = tokio::net::TcpStream::connect(target.address()).await?;
            Ok::<_, std::io::Error>(AlpnH2(TokioIo::new(s)))
        }
    });
    let svc = MeshService::with_connector(m.client.snapshots(), MeshConfig::default(), connector);
    for _ in 0..3 {
        let (status, _, _) = send(&svc, &[]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    for (target, host, version, authority) in requests {
        assert_eq!(version, http::Version::HTTP_2);
        assert_eq!(authority, format!("{HOST}:9080"));
        assert_eq!((target.as_str(), host.as_str()), ("/productpage", ""));
    }
    assert_eq!(
        seen.accepted.load(Ordering::Relaxed),
        1,
        "one multiplexed connection"
    );
    assert_eq!(
        *targets.lock().unwrap(),
        [(
            addr,
            "outbound|9080|version-1|ui.default.svc.cluster.local".to_string()
        )]
    );
}

#[tokio::test]
async fn state_of_a_cluster_that_left_the_snapshot_is_dropped_with_its_connections() {
    let v1 = backend("v1", Behavior::Ok).await;
    let (v2, v2_open) = counting_backend().await;
    let to = |subset: &str| {
        format!(
            "  - name: r\n    route:\n    - destination: {{host: ui.default.svc.cluster.local, subset: {subset}}}\n"
        )
    };
    let m = mesh(&yaml(&[v1.addr], &[v2], ROUND_ROBIN, &to("version-2-beta"))).await;
    assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    assert_eq!(m.svc.active_clusters(), 1);
    assert_eq!(
        v2_open.load(Ordering::Relaxed),
        1,
        "a kept-alive connection"
    );

    // The subset, and with it the cluster, goes away.
    let without_v2 = yaml(&[v1.addr], &[v2], ROUND_ROBIN, &to("version-1"))
        .replace("  - name: version-2-beta\n    labels: {version: v2}\n", "");
    m.cp.update(resources(&without_v2));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (_, _, info) = send(&m.svc, &[]).await;
            if info
                .and_then(|i| i.cluster)
                .is_some_and(|c| c.contains("version-1"))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("traffic moves to version-1");
    assert_eq!(m.svc.active_clusters(), 1, "only version-1 has state");
    tokio::time::timeout(Duration::from_secs(5), async {
        while v2_open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the idle connection of the removed cluster closes");
}

#[tokio::test]
async fn http2_requests_waiting_for_a_connect_count_against_max_pending_requests() {
    let a = backend("v1", Behavior::Ok).await;
    // Connects that never complete: the first request connects, the others wait for it.
    let hanging = tower::service_fn(|_: ConnectTarget| {
        std::future::pending::<Result<TokioIo<tokio::net::TcpStream>, std::io::Error>>()
    });
    let policy = "    connectionPool:\n      tcp: {connectTimeout: 10s}\n      http: {http1MaxPendingRequests: 1}";
    let once = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 0}\n";
    let m = mesh(&yaml(&[a.addr], &[], policy, once)).await;
    let svc = MeshService::with_connector(m.client.snapshots(), MeshConfig::default(), hanging);
    let h2 = || {
        Request::get(format!("http://{HOST}:9080/"))
            .version(http::Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let connecting = tokio::spawn(svc.clone().oneshot(h2()));
    let waiting = tokio::spawn(svc.clone().oneshot(h2()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The one pending place is taken: the third request overflows at once.
    let resp = tokio::time::timeout(Duration::from_secs(2), svc.clone().oneshot(h2()))
        .await
        .expect("an overflow answers at once")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()[mesh_tower::OVERFLOW_HEADER],
        "max_pending_requests"
    );
    assert!(!connecting.is_finished() && !waiting.is_finished());
    connecting.abort();
    waiting.abort();
}
