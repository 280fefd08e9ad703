//! The client stack end to end: real hyper backends on 127.0.0.1, the local control plane
//! translating Istio YAML, mesh's xDS client over ADS, and the stack routing requests.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mesh_tower::{ERROR_HEADER, MeshConfig, MeshService};
use support::*;
use tower::{Service, ServiceExt};

#[tokio::test]
async fn canary_split_header_canary_and_a_live_shift() {
    let (a, b) = (
        backend("v1", Behavior::Ok).await,
        backend("v2", Behavior::Ok).await,
    );
    let m = mesh(&yaml(
        &[a.addr],
        &[b.addr],
        "    loadBalancer: {simple: ROUND_ROBIN}",
        SPLIT_90_10,
    ))
    .await;
    let mut by = HashMap::<String, usize>::new();
    for _ in 0..2000 {
        let (s, body, info) = send(&m.svc, &[]).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(info.unwrap().attempts, 1);
        *by.entry(body).or_default() += 1;
    }
    // 10% ± 3 points over 2,000 requests (sd 0.67 points).
    let v2 = by.get("v2").copied().unwrap_or(0) as f64 / 20.0;
    assert!((7.0..=13.0).contains(&v2), "{by:?}");
    for _ in 0..200 {
        assert_eq!(send(&m.svc, &[("version", "beta")]).await.1, "v2");
    }

    // Shift to 0/100 while requests keep flowing: nothing fails, new traffic moves.
    let load = {
        let svc = m.svc.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..1500 {
                if send(&svc, &[]).await.0 != StatusCode::OK {
                    failed += 1;
                }
            }
            failed
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    m.cp.update(resources(&yaml(
        &[a.addr],
        &[b.addr],
        "    loadBalancer: {simple: ROUND_ROBIN}",
        &SPLIT_90_10
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 100"),
    )));
    assert_eq!(load.await.unwrap(), 0, "no request failed during the shift");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..200 {
        assert_eq!(send(&m.svc, &[]).await.1, "v2");
    }
}

const RETRY_3: &str = "  - name: canary\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}\n";

#[tokio::test]
async fn retries_turn_a_flaky_backend_into_successes() {
    let a = backend("v1", Behavior::FailHalf).await;
    // Every first attempt fails here, so one retry per request is needed: more than the
    // default budget's 20% share (see the next test), so this client allows 100%.
    let budget = mesh_core::RetryBudgetConfig::new(&mesh_core::RetryBudgetSpec {
        retry_percent: Some(100.0),
        ..Default::default()
    })
    .unwrap();
    let config = MeshConfig::default().retry_budget(budget);
    let m = mesh_with(
        &yaml(
            &[a.addr],
            &[],
            "    loadBalancer: {simple: ROUND_ROBIN}",
            RETRY_3,
        ),
        config,
    )
    .await;
    let mut ok = 0;
    for _ in 0..500 {
        let (s, _, info) = send(&m.svc, &[]).await;
        ok += usize::from(s == StatusCode::OK);
        assert!(info.unwrap().attempts <= 4);
    }
    assert!(ok >= 495, "{ok} of 500");
}

#[tokio::test]
async fn the_budget_caps_retries_against_a_dead_backend() {
    let a = backend("v1", Behavior::FailAll).await;
    // The default budget's 20% share, over a window longer than the test and without the
    // per-second reserve, so that the bound does not depend on how long the test runs (the
    // default 10 s window and 10/s reserve give about 100 more retries per 10 s).
    let budget = mesh_core::RetryBudgetConfig::new(&mesh_core::RetryBudgetSpec {
        retry_percent: Some(20.0),
        min_retries_per_second: Some(0),
        window: Some(Duration::from_secs(60)),
    })
    .unwrap();
    let m = mesh_with(
        &yaml(&[a.addr], &[], ROUND_ROBIN, RETRY_3),
        MeshConfig::default().retry_budget(budget),
    )
    .await;
    let (n, mut attempts) = (1000u64, 0u64);
    for _ in 0..n {
        let (s, _, info) = send(&m.svc, &[]).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        attempts += u64::from(info.unwrap().attempts);
    }
    // Every request wants three retries; the budget allows one per five requests.
    assert_eq!(attempts, n + n / 5, "{attempts} attempts for {n} requests");
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        attempts,
        "every attempt reached the backend"
    );
}

#[tokio::test]
async fn circuit_breaker_fails_fast_beyond_max_requests() {
    let a = backend("v1", Behavior::Slow(Duration::from_millis(300))).await;
    let policy = "    connectionPool:\n      http: {http2MaxRequests: 5}";
    let m = mesh(&yaml(
        &[a.addr],
        &[],
        policy,
        RETRY_3
            .replace(
                "    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}\n",
                "",
            )
            .as_str(),
    ))
    .await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = m.svc.clone();
            tokio::spawn(async move { send(&svc, &[]).await })
        })
        .collect();
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        let (s, why, _) = t.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(why, "max_requests");
                overflow += 1;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok, overflow), (5, 15));
}

#[tokio::test]
async fn max_connections_queue_up_to_max_pending_then_fail_fast() {
    let a = backend("v1", Behavior::Slow(Duration::from_millis(300))).await;
    let policy = "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}";
    let route = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = mesh(&yaml(&[a.addr], &[], policy, route)).await;
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let svc = m.svc.clone();
            tokio::spawn(async move { send(&svc, &[]).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        let (s, why, _) = t.await.unwrap();
        outcomes.push(if s == StatusCode::OK {
            "ok".to_string()
        } else {
            format!("{s} {why}")
        });
    }
    outcomes.sort();
    // One request on the only connection, one waiting for it (served when it is free again),
    // and the third refused at once: the pending queue is full.
    assert_eq!(
        outcomes,
        ["503 Service Unavailable max_pending_requests", "ok", "ok"]
    );
    assert_eq!(a.hits.load(Ordering::Relaxed), 2);

    // The request that waited gave its place in the queue back when it was served: the queue
    // takes one again (a connect kept waiting in the background would still hold it).
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let svc = m.svc.clone();
            tokio::spawn(async move { send(&svc, &[]).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn connections_to_an_endpoint_that_left_eds_are_closed() {
    let (a, a_open) = counting_backend().await;
    let (b, _) = counting_backend().await;
    let route = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[a, b], route).await;
    for _ in 0..10 {
        assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    }
    assert!(
        a_open.load(Ordering::Relaxed) >= 1,
        "an idle pooled connection to a"
    );
    // `a` leaves EDS; the next requests go to `b` only, and a's idle connection is closed.
    m.cp.update(resources(&yaml(&[b], &[], ROUND_ROBIN, route)));
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            send(&m.svc, &[]).await;
            if a_open.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection to the removed endpoint closes");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected() {
    let good1 = backend("good1", Behavior::Ok).await;
    let good2 = backend("good2", Behavior::Ok).await;
    let bad = backend("bad", Behavior::FailAll).await;
    let policy = "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}";
    let route = "  - name: canary\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = mesh(&yaml(
        &[good1.addr, good2.addr, bad.addr],
        &[],
        policy,
        route,
    ))
    .await;
    for _ in 0..30 {
        send(&m.svc, &[]).await;
    }
    // Two consecutive 5xx ejected it; it has had exactly those and no traffic since.
    assert_eq!(bad.hits.load(Ordering::Relaxed), 2);
    for _ in 0..100 {
        assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    }
    assert_eq!(bad.hits.load(Ordering::Relaxed), 2);
}

const MIRROR_50: &str = "  - name: mirrored\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    mirror: {host: ui.default.svc.cluster.local, subset: version-2-beta}\n    mirrorPercentage: {value: 50}\n";

#[tokio::test]
async fn mirroring_sends_the_configured_share() {
    let main = backend("v1", Behavior::Ok).await;
    let shadow = backend("v2", Behavior::Ok).await;
    let m = mesh(&yaml(
        &[main.addr],
        &[shadow.addr],
        "    loadBalancer: {simple: ROUND_ROBIN}",
        MIRROR_50,
    ))
    .await;
    for _ in 0..2000 {
        let (s, body, info) = send(&m.svc, &[]).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "v1"));
        assert_eq!(info.unwrap().attempts, 1, "mirrors are not attempts");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 50% ± 5 points (sd 1.1 points).
    let mirrored = shadow.hits.load(Ordering::Relaxed);
    assert!((900..=1100).contains(&mirrored), "{mirrored}");
    assert_eq!(main.hits.load(Ordering::Relaxed), 2000);
}

#[tokio::test]
async fn a_slow_or_dead_shadow_does_not_touch_the_main_request() {
    let main = backend("v1", Behavior::Ok).await;
    let slow = backend("v2", Behavior::Slow(Duration::from_secs(5))).await;
    let m = mesh(&yaml(
        &[main.addr],
        &[slow.addr],
        "    loadBalancer: {simple: ROUND_ROBIN}",
        MIRROR_50,
    ))
    .await;
    // Were the main request to wait for its mirror, 200 requests would take minutes.
    tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..200 {
            assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
        }
    })
    .await
    .expect("main requests do not wait for the shadow");
    // A shadow that is not even listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let m = mesh(&yaml(
        &[main.addr],
        &[dead],
        "    loadBalancer: {simple: ROUND_ROBIN}",
        MIRROR_50,
    ))
    .await;
    for _ in 0..200 {
        assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn fault_abort_share_and_timeouts() {
    let a = backend("v1", Behavior::Ok).await;
    let route = "  - name: faulty\n    fault:\n      abort: {httpStatus: 418, percentage: {value: 50}}\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[a.addr], route).await;
    let mut aborted = 0;
    for _ in 0..2000 {
        match send(&m.svc, &[]).await.0 {
            StatusCode::IM_A_TEAPOT => aborted += 1,
            s => assert_eq!(s, StatusCode::OK),
        }
    }
    // 50% ± 5 points (sd 1.1 points).
    assert!((900..=1100).contains(&aborted), "{aborted}");
    assert_eq!(
        a.hits.load(Ordering::Relaxed),
        2000 - aborted,
        "aborted requests never reach the backend"
    );

    let slow = backend("slow", Behavior::Slow(Duration::from_millis(500))).await;
    let route = "  - name: t\n    timeout: 100ms\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[slow.addr], route).await;
    let (s, why, _) = send(&m.svc, &[]).await;
    assert_eq!(
        (s, why.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
}

#[tokio::test]
async fn fault_delay_adds_the_configured_delay() {
    let a = backend("v1", Behavior::Ok).await;
    let route = "  - name: slowed\n    fault:\n      delay: {fixedDelay: 300ms, percentage: {value: 100}}\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[a.addr], route).await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let (s, body, _) = send(&m.svc, &[]).await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, "v1"));
        // A lower bound only: the delay can never make a request faster.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn unknown_targets_get_a_clear_404() {
    let a = backend("v1", Behavior::Ok).await;
    let m = round_robin(&[a.addr], SPLIT_90_10).await;
    let req = Request::get("http://elsewhere:80/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut svc = m.svc.clone();
    let resp = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        resp.headers()[ERROR_HEADER],
        "no route: no listener for this target"
    );
}

#[tokio::test]
async fn http1_reuses_one_connection_and_sends_origin_form_with_the_service_host() {
    let (m, seen) = one_recorded_endpoint(true, MeshConfig::default()).await;
    for _ in 0..50 {
        let (status, _, info) = send(&m.svc, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(info.unwrap().attempts, 1);
    }
    assert_eq!(
        seen.accepted.load(Ordering::Relaxed),
        1,
        "one pooled connection"
    );
    let requests = seen.requests.lock().unwrap();
    assert_eq!(requests.len(), 50);
    for (target, host, version, _) in requests.iter() {
        assert_eq!(target, "/productpage");
        assert_eq!(host, "ui.default.svc.cluster.local:9080");
        assert_eq!(*version, http::Version::HTTP_11);
    }
}

#[tokio::test]
async fn http2_multiplexes_one_connection_and_keeps_the_authority() {
    let (m, seen) = one_recorded_endpoint(true, MeshConfig::default()).await;
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = m.svc.clone();
            tokio::spawn(async move { send_h2(&svc).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        seen.accepted.load(Ordering::Relaxed),
        1,
        "one h2 connection"
    );
    let requests = seen.requests.lock().unwrap();
    assert_eq!(requests.len(), 20);
    for (target, _, version, authority) in requests.iter() {
        assert_eq!(target, "/productpage");
        assert_eq!(*version, http::Version::HTTP_2);
        // As Envoy does: the upstream sees the service's authority, not the endpoint address.
        assert_eq!(authority, "ui.default.svc.cluster.local:9080");
    }
}

#[tokio::test]
async fn a_backend_closing_each_connection_costs_no_failed_request() {
    let (m, seen) = one_recorded_endpoint(false, MeshConfig::default()).await;
    for _ in 0..30 {
        let (status, why, info) = send(&m.svc, &[]).await;
        assert_eq!(status, StatusCode::OK, "{why}");
        assert_eq!(info.unwrap().attempts, 1, "no retry was needed");
    }
    assert_eq!(seen.requests.lock().unwrap().len(), 30);
    assert_eq!(
        seen.accepted.load(Ordering::Relaxed),
        30,
        "a connection per request"
    );
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout() {
    let config = MeshConfig::default().pool_idle_timeout(Duration::from_millis(200));
    let (m, seen) = one_recorded_endpoint(true, config).await;
    for _ in 0..5 {
        assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    }
    assert_eq!(seen.open.load(Ordering::Relaxed), 1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle connection closes with no request sent");
    // And the pool opens a new one when needed.
    assert_eq!(send(&m.svc, &[]).await.0, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_failure_and_is_retried_elsewhere() {
    // A port with nothing listening: connections are refused.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let good = backend("good", Behavior::Ok).await;
    let retried = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 2, retryOn: connect-failure}\n";
    let m = round_robin(&[dead, good.addr], retried).await;
    let mut second_tries = 0;
    for _ in 0..20 {
        let (status, why, info) = send(&m.svc, &[]).await;
        assert_eq!(status, StatusCode::OK, "{why}");
        let info = info.unwrap();
        assert_eq!(info.endpoint, Some(good.addr));
        if info.attempts == 2 {
            second_tries += 1;
        }
    }
    assert_eq!(good.hits.load(Ordering::Relaxed), 20);
    assert!(
        second_tries >= 5,
        "round robin sends some first tries to the dead endpoint: {second_tries}"
    );

    // With retries off (Istio's default policy would retry twice) the failure is the
    // answer, named.
    let once = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 0}\n";
    let m = round_robin(&[dead], once).await;
    let (status, why, info) = send(&m.svc, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        why.starts_with(&format!(
            "upstream connect error: tcp connect to {dead}: Connection refused"
        )),
        "{why}"
    );
    let info = info.unwrap();
    assert_eq!(info.attempts, 1);
    assert_eq!(info.reason(), Some(mesh_tower::LocalReason::ConnectFailure));
    assert_eq!(info.flags.to_string(), "UF");
}

#[tokio::test]
async fn an_http_upgrade_passes_through_the_stack() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A backend that upgrades to an echo protocol.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|mut req: Request<Incoming>| async move {
                    tokio::spawn(async move {
                        let Ok(up) = hyper::upgrade::on(&mut req).await else {
                            return;
                        };
                        let mut io = TokioIo::new(up);
                        let mut buf = [0u8; 5];
                        if io.read_exact(&mut buf).await.is_ok() {
                            let _ = io.write_all(&buf).await;
                        }
                    });
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    r.headers_mut()
                        .insert(http::header::UPGRADE, "echo".parse().unwrap());
                    r.headers_mut()
                        .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    let m = round_robin(&[addr], ROUTE_V1).await;
    let req = Request::get(format!("http://{HOST}:9080/echo"))
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "echo")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = m.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let up = tokio::time::timeout(Duration::from_secs(5), hyper::upgrade::on(resp))
        .await
        .expect("upgrade in time")
        .expect("upgraded");
    let mut io = TokioIo::new(up);
    io.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&buf, b"hello");
}

#[tokio::test]
async fn idle_http2_connections_close_after_the_idle_timeout() {
    let config = MeshConfig::default().pool_idle_timeout(Duration::from_millis(200));
    let (m, seen) = one_recorded_endpoint(true, config).await;
    for _ in 0..3 {
        assert_eq!(send_h2(&m.svc).await, StatusCode::OK);
    }
    assert_eq!(seen.open.load(Ordering::Relaxed), 1);
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.open.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the idle HTTP/2 connection closes");
    assert_eq!(send_h2(&m.svc).await, StatusCode::OK);
    assert_eq!(seen.accepted.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_connect_slower_than_the_cluster_connect_timeout_fails_as_a_connect_failure() {
    // A connector whose connections never complete (a black-holed address, without leaving
    // loopback).
    let hanging = tower::service_fn(|_: mesh_tower::ConnectTarget| {
        std::future::pending::<Result<TokioIo<tokio::net::TcpStream>, std::io::Error>>()
    });
    let good = backend("good", Behavior::Ok).await;
    let policy = "    connectionPool:\n      tcp: {connectTimeout: 100ms}";
    let once = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 0}\n";
    let m = mesh(&yaml(&[good.addr], &[], policy, once)).await;
    let svc = MeshService::with_connector(m.client.snapshots(), MeshConfig::default(), hanging);
    let req = Request::get(format!("http://{HOST}:9080/productpage"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Bounded: without the cluster's connect timeout the request would wait forever.
    let resp = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(req))
        .await
        .expect("the connect timeout ends the attempt")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers()[ERROR_HEADER],
        "upstream connect error: connect timeout after 100ms"
    );
    assert_eq!(resp.headers()[mesh_tower::FLAGS_HEADER], "UF");
    assert_eq!(good.hits.load(Ordering::Relaxed), 0);
}

/// A backend whose `/open` responses keep their body open until `finish` is notified, and
/// whose `/hang` requests are never answered; `received` counts requests.
async fn holding_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<tokio::sync::Notify>,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let finish = Arc::new(tokio::sync::Notify::new());
    let received = Arc::new(AtomicU64::new(0));
    let (f, r) = (finish.clone(), received.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (f, r) = (f.clone(), r.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (f, r) = (f.clone(), r.clone());
                    async move {
                        r.fetch_add(1, Ordering::SeqCst);
                        let body = match req.uri().path() {
                            "/hang" => std::future::pending().await,
                            "/open" => {
                                let (tx, rx) = tokio::sync::mpsc::channel::<
                                    Result<hyper::body::Frame<Bytes>, Infallible>,
                                >(1);
                                tokio::spawn(async move {
                                    let _ = tx.send(Ok(hyper::body::Frame::data("a".into()))).await;
                                    f.notified().await;
                                    let _ = tx.send(Ok(hyper::body::Frame::data("b".into()))).await;
                                });
                                http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(
                                    tokio_stream::wrappers::ReceiverStream::new(rx),
                                ))
                            }
                            _ => http_body_util::BodyExt::boxed(Full::new(Bytes::from("ok"))),
                        };
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, finish, received)
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{HOST}:9080{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Envoy counts a request against `max_requests` while its stream is open: until the
/// response body has been read or dropped, and no longer once the caller gives up on it.
#[tokio::test]
async fn max_requests_counts_requests_until_their_response_body_ends_or_they_are_dropped() {
    let (addr, finish, received) = holding_backend().await;
    let policy = "    connectionPool:\n      http: {http2MaxRequests: 1}";
    let m = mesh(&yaml(&[addr], &[], policy, ROUTE_V1)).await;
    let open = m.svc.clone().oneshot(get("/open")).await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    // Headers are in, the body is still open: the request is still active.
    let refused = m.svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()[mesh_tower::OVERFLOW_HEADER],
        "max_requests"
    );
    finish.notify_one();
    let body = http_body_util::BodyExt::collect(open.into_body())
        .await
        .unwrap();
    assert_eq!(body.to_bytes(), "ab");
    assert_eq!(
        m.svc.clone().oneshot(get("/")).await.unwrap().status(),
        StatusCode::OK
    );

    // A request whose caller drops it mid-flight gives its place back.
    let before = received.load(Ordering::SeqCst);
    let svc = m.svc.clone();
    let hung = tokio::spawn(async move { svc.oneshot(get("/hang")).await });
    tokio::time::timeout(Duration::from_secs(10), async {
        while received.load(Ordering::SeqCst) == before {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let refused = m.svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    hung.abort();
    let _ = hung.await;
    assert_eq!(
        m.svc.clone().oneshot(get("/")).await.unwrap().status(),
        StatusCode::OK
    );
}

/// The request body is streamed inside the route's deadline: an upload slower than the
/// route timeout times out instead of being read whole first.
#[tokio::test]
async fn an_upload_slower_than_the_route_timeout_times_out() {
    let a = backend("v1", Behavior::Ok).await;
    let route = "  - name: t\n    timeout: 300ms\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";
    let m = round_robin(&[a.addr], route).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tx
                .send(Ok(hyper::body::Frame::data("x".into())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req = Request::post(format!("http://{HOST}:9080/upload"))
        .body(http_body_util::StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let resp = m.svc.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.headers()[ERROR_HEADER], "upstream request timeout");
}

/// A retry that `max_retries` refuses is not paid for from the retry budget.
#[tokio::test]
async fn a_retry_refused_by_max_retries_does_not_spend_the_budget() {
    // Slow enough that every retry decision falls while the first retry still holds its place.
    let a = backend("v1", Behavior::SlowFail(Duration::from_millis(500))).await;
    let budget = mesh_core::RetryBudgetConfig::new(&mesh_core::RetryBudgetSpec {
        retry_percent: Some(20.0),
        min_retries_per_second: Some(0),
        window: Some(Duration::from_secs(60)),
    })
    .unwrap();
    let policy = "    connectionPool:\n      http: {maxRetries: 1}";
    let route = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    retries: {attempts: 1, perTryTimeout: 5s, retryOn: 5xx}\n";
    let m = mesh_with(
        &yaml(&[a.addr], &[], policy, route),
        MeshConfig::default().retry_budget(budget),
    )
    .await;
    // Ten at once: they fail together, one retry gets the only `max_retries` place and the
    // others are refused it. The budget (20% of 10) had room for two; one is spent.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let svc = m.svc.clone();
            tokio::spawn(async move { send(&svc, &[]).await })
        })
        .collect();
    let mut retried = 0;
    for t in burst {
        let (_, _, info) = t.await.unwrap();
        retried += u32::from(info.unwrap().attempts == 2);
    }
    assert_eq!(retried, 1);
    // So the next request can still retry: 11 requests allow two retries, one was used.
    let (_, _, info) = send(&m.svc, &[]).await;
    assert_eq!(
        info.unwrap().attempts,
        2,
        "the budget still has the refused retry's share"
    );
}

/// A shadow that never answers gives its mirroring place back at the route's timeout.
#[tokio::test]
async fn a_hung_shadow_times_out_and_frees_its_place() {
    let main = backend("v1", Behavior::Ok).await;
    let (hang, _, received) = holding_backend().await;
    // The route timeout is long enough that the second request below comes well within it,
    // even on a slow machine.
    let route = "  - name: mirrored\n    timeout: 1s\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n    mirror: {host: ui.default.svc.cluster.local, subset: version-2-beta}\n    mirrorPercentage: {value: 100}\n";
    let m = mesh_with(
        &yaml(&[main.addr], &[hang], ROUND_ROBIN, route),
        MeshConfig::default().mirror_concurrency(1),
    )
    .await;
    let wait_for = |n: u64| {
        let received = received.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while received.load(Ordering::SeqCst) < n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    // `/hang` on the shadow too: the copy keeps the request's path.
    assert_eq!(
        m.svc.clone().oneshot(get("/hang")).await.unwrap().status(),
        StatusCode::OK
    );
    assert!(wait_for(1).await);
    // While the first copy hangs, its place is taken: this copy is skipped.
    let _ = m.svc.clone().oneshot(get("/hang")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(received.load(Ordering::SeqCst), 1);
    // After the route's timeout it is free again, and the next copy goes out.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let _ = m.svc.clone().oneshot(get("/")).await.unwrap();
    assert!(wait_for(2).await, "the next copy reached the shadow");
}
