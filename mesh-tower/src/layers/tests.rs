use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_core::route::{
    FaultAbortKind, FaultAbortSpec, FaultDelayKind, FaultDelaySpec, FaultSpec, RetryPolicySpec,
};
use mesh_core::{CircuitBreakerSpec, Fraction, RetryBudgetConfig, RetryBudgetSpec, Thresholds};
use tower::ServiceExt;

use super::*;
use crate::protocol::OVERFLOW_HEADER;
use bytes::Bytes;
use http::StatusCode;

fn policy(retries: u32) -> RetryPolicy {
    RetryPolicy::new(&RetryPolicySpec {
        retry_on: "5xx".into(),
        num_retries: Some(retries),
        ..Default::default()
    })
    .unwrap()
}

/// A backend answering 503 when `fail(n)` for its n-th call.
fn backend(
    fail: fn(u64) -> bool,
    calls: Arc<AtomicU64>,
) -> impl Service<Request<Bytes>, Response = Response<MeshBody>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |_req: Request<Bytes>| {
        let n = calls.fetch_add(1, Ordering::Relaxed);
        let status = if fail(n) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        async move {
            let mut r = Response::new(crate::body::empty());
            *r.status_mut() = status;
            Ok::<_, Infallible>(r)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn retry_layer_retries_and_its_budget_caps_a_dead_backend() {
    let calls = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(RetryBudget::new(RetryBudgetConfig::default()));
    let svc = RetryBudgetLayer::new(policy(3), budget).layer(backend(|_| true, calls.clone()));
    let n = 1000u64;
    for _ in 0..n {
        let r = svc
            .clone()
            .oneshot(Request::new(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let attempts = calls.load(Ordering::Relaxed);
    assert!(attempts > n && attempts <= n * 12 / 10 + 100, "{attempts}");

    // A flaky backend with room in the budget: every request ends well.
    let calls = Arc::new(AtomicU64::new(0));
    let generous = RetryBudgetConfig::new(&RetryBudgetSpec {
        retry_percent: Some(100.0),
        ..Default::default()
    })
    .unwrap();
    let svc = RetryBudgetLayer::new(policy(3), Arc::new(RetryBudget::new(generous)))
        .layer(backend(|n| n % 2 == 0, calls.clone()));
    for _ in 0..200 {
        let r = svc
            .clone()
            .oneshot(Request::new(Bytes::from_static(b"x")))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::Relaxed), 400);
}

#[tokio::test]
async fn breaker_layer_fails_fast_beyond_the_limit() {
    let breaker = CircuitBreaker::new(Thresholds::new(&CircuitBreakerSpec {
        max_requests: Some(2),
        ..Default::default()
    }));
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let inner = tower::service_fn(move |_req: Request<()>| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok::<_, Infallible>(Response::new(crate::body::empty()))
        }
    });
    let svc = CircuitBreakerLayer::new(breaker.clone()).layer(inner);
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    while breaker.in_use(BreakerResource::Requests) < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..3 {
        let r = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[OVERFLOW_HEADER], "max_requests");
    }
    gate.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(breaker.in_use(BreakerResource::Requests), 0);
}

#[tokio::test(start_paused = true)]
async fn fault_layer_delays_and_aborts() {
    let calls = Arc::new(AtomicU64::new(0));
    let abort = FaultConfig::new(&FaultSpec {
        abort: Some(FaultAbortSpec {
            kind: FaultAbortKind::Http(418),
            percentage: Fraction::percent(100),
        }),
        ..Default::default()
    })
    .unwrap();
    let svc = FaultLayer::new(abort).layer(backend(|_| false, calls.clone()));
    let r = svc.oneshot(Request::new(Bytes::new())).await.unwrap();
    assert_eq!(r.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(
        calls.load(Ordering::Relaxed),
        0,
        "an aborted request never reaches the service"
    );

    let delay = FaultConfig::new(&FaultSpec {
        delay: Some(FaultDelaySpec {
            kind: FaultDelayKind::Fixed(std::time::Duration::from_secs(2)),
            percentage: Fraction::percent(100),
        }),
        ..Default::default()
    })
    .unwrap();
    let svc = FaultLayer::new(delay).layer(backend(|_| false, calls.clone()));
    let started = tokio::time::Instant::now();
    let r = svc.oneshot(Request::new(Bytes::new())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        started.elapsed(),
        std::time::Duration::from_secs(2),
        "paused clock: exactly the delay"
    );
}

/// A service answering 200 and counting calls, for the main path of the mirror tests.
fn ok_backend(
    calls: Arc<AtomicU64>,
) -> impl Service<Request<Bytes>, Response = Response<MeshBody>, Error = Infallible, Future: Send> + Clone
{
    backend(|_| false, calls)
}

#[tokio::test(start_paused = true)]
async fn mirror_layer_copies_its_share_with_a_shadow_host() {
    let seen: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let shadow = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Bytes>| {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let host = req.headers()[http::header::HOST]
                .to_str()
                .unwrap()
                .to_owned();
            seen.lock().unwrap().push((authority, host));
            async { Ok::<_, Infallible>(Response::new(crate::body::empty())) }
        })
    };
    let main_calls = Arc::new(AtomicU64::new(0));
    // Copies run only when the test task yields, so the bound must hold them all.
    let layer = MirrorLayer::new(shadow, Fraction::percent(20), 2000);
    let svc = layer.layer(ok_backend(main_calls.clone()));
    let n = 2000;
    for _ in 0..n {
        let req = Request::builder()
            .uri("http://ui.default:9080/x")
            .header(http::header::HOST, "ui.default:9080")
            .body(Bytes::from_static(b"body"))
            .unwrap();
        let r = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The paused clock only advances once every spawned copy has run.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(main_calls.load(Ordering::Relaxed), n);
    assert_eq!(layer.skipped(), 0);
    let seen = seen.lock().unwrap();
    let share = seen.len() as f64 / n as f64;
    assert!((0.15..=0.25).contains(&share), "mirrored share {share}");
    for (authority, host) in seen.iter() {
        assert_eq!(authority, "ui.default-shadow:9080");
        assert_eq!(host, "ui.default-shadow:9080");
    }
}

#[tokio::test(start_paused = true)]
async fn mirror_layer_skips_copies_beyond_its_bound_and_never_waits_for_the_shadow() {
    let started = Arc::new(AtomicU64::new(0));
    let hung_shadow = {
        let started = started.clone();
        tower::service_fn(move |_req: Request<Bytes>| {
            started.fetch_add(1, Ordering::Relaxed);
            std::future::pending::<Result<Response<MeshBody>, Infallible>>()
        })
    };
    let main_calls = Arc::new(AtomicU64::new(0));
    let layer = MirrorLayer::new(hung_shadow, Fraction::ALL, 4);
    let svc = layer.layer(ok_backend(main_calls.clone()));
    for _ in 0..100 {
        let req = Request::builder()
            .uri("http://ui:80/")
            .body(Bytes::new())
            .unwrap();
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 200);
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(main_calls.load(Ordering::Relaxed), 100);
    assert_eq!(started.load(Ordering::Relaxed), 4);
    assert_eq!(layer.skipped(), 96);

    // A shadow that fails outright does not fail the main request either.
    let failing = tower::service_fn(|_req: Request<Bytes>| async {
        Err::<Response<MeshBody>, _>(std::io::Error::other("shadow down"))
    });
    let svc = MirrorLayer::new(failing, Fraction::ALL, 4).layer(ok_backend(main_calls.clone()));
    let req = Request::builder().uri("/").body(Bytes::new()).unwrap();
    assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
}

#[test]
fn shadow_authority_suffixes_the_host_not_the_port() {
    use crate::protocol::shadow_authority;
    assert_eq!(
        shadow_authority("ui.default:9080"),
        "ui.default-shadow:9080"
    );
    assert_eq!(shadow_authority("ui"), "ui-shadow");
    assert_eq!(shadow_authority("[::1]:80"), "[::1]-shadow:80");
    assert_eq!(shadow_authority("[::1]"), "[::1]-shadow");
}

#[tokio::test(start_paused = true)]
async fn outlier_layer_keeps_an_ejected_endpoint_out_of_a_tower_balancer() {
    use mesh_core::{OutlierDetectionConfig, OutlierDetectionSpec};
    use std::time::Duration;
    use tower::balance::p2c::Balance;
    use tower::discover::ServiceList;
    use tower::load::Constant;

    let config = OutlierDetectionConfig::new(&OutlierDetectionSpec {
        interval: Some(Duration::from_secs(1)),
        base_ejection_time: Some(Duration::from_secs(30)),
        consecutive_5xx: Some(3),
        ..Default::default()
    })
    .unwrap();
    let detection = OutlierDetection::new(config);
    let calls: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let addrs: Vec<std::net::SocketAddr> = (1..=3)
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, i], 80)))
        .collect();
    let endpoints: Vec<_> = (0..3)
        .map(|i| {
            // Endpoint 0 always answers 500.
            let fail = if i == 0 { |_| true } else { |_| false };
            let svc = detection
                .layer(addrs[i])
                .layer(backend(fail, calls[i].clone()));
            Constant::new(svc, 0u32)
        })
        .collect();
    let mut balancer = Balance::new(ServiceList::new(endpoints));
    let mut send = async |n: usize| {
        for _ in 0..n {
            let svc = balancer.ready().await.unwrap();
            svc.call(Request::new(Bytes::new())).await.unwrap();
        }
    };
    let bad = || calls[0].load(Ordering::Relaxed);

    send(300).await;
    assert_eq!(bad(), 3, "ejected after exactly consecutive_5xx failures");
    assert!(detection.is_ejected(addrs[0]));
    assert_eq!(detection.ejected_count(), 1);
    let good = calls[1].load(Ordering::Relaxed) + calls[2].load(Ordering::Relaxed);
    assert_eq!(good, 297);

    // Still within the 30 s ejection: no traffic.
    tokio::time::sleep(Duration::from_secs(20)).await;
    send(100).await;
    assert_eq!(bad(), 3);

    // Back after its ejection time; still failing, so ejected again after three more.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(!detection.is_ejected(addrs[0]));
    send(300).await;
    assert_eq!(bad(), 6);
    assert!(detection.is_ejected(addrs[0]));
}

type Endpoint = tower::util::BoxCloneService<Request<()>, Response<()>, std::io::Error>;

/// Three endpoint services counting their calls; the third fails every call.
fn counted_endpoints(
    weights: [u32; 3],
) -> (
    Vec<(mesh_core::EndpointSpec, Endpoint)>,
    Vec<Arc<AtomicU64>>,
) {
    let counts: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let endpoints = (0..3)
        .map(|i| {
            let mut spec = mesh_core::EndpointSpec::new(std::net::SocketAddr::from((
                [10, 0, 0, i as u8 + 1],
                80,
            )));
            spec.weight = Some(weights[i]);
            let c = counts[i].clone();
            let svc = tower::service_fn(move |_req: Request<()>| {
                c.fetch_add(1, Ordering::Relaxed);
                async move {
                    if i == 2 {
                        Err(std::io::Error::other("refused"))
                    } else {
                        Ok(Response::new(()))
                    }
                }
            });
            (spec, Endpoint::new(svc))
        })
        .collect();
    (endpoints, counts)
}

#[tokio::test]
async fn load_balancer_follows_endpoint_weights_and_names_a_failing_endpoint() {
    use mesh_core::{LbConfig, LbPolicySpec};
    let (endpoints, counts) = counted_endpoints([3, 1, 1]);
    let lb = LbConfig::new(&LbPolicySpec::RoundRobin).unwrap();
    let svc = LoadBalancer::new(lb, endpoints, Vec::new()).unwrap();
    let mut errors = Vec::new();
    for _ in 0..5000 {
        if let Err(e) = svc.clone().oneshot(Request::new(())).await {
            errors.push(e.to_string());
        }
    }
    let n: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    // Smooth weighted round robin: exact shares, up to where the last cycle stopped.
    for (got, want) in n.iter().zip([3000u64, 1000, 1000]) {
        assert!(got.abs_diff(want) <= 5, "{n:?}");
    }
    assert_eq!(errors.len() as u64, n[2]);
    assert_eq!(errors[0], "endpoint 10.0.0.3:80: refused");
}

#[tokio::test]
async fn load_balancer_ring_hash_keeps_a_key_on_one_endpoint_and_spreads_keys() {
    use mesh_core::route::{HashPolicyKind, HashPolicySpec};
    use mesh_core::{LbConfig, LbPolicySpec};
    let (endpoints, counts) = counted_endpoints([1, 1, 1]);
    let lb = LbConfig::new(&LbPolicySpec::RingHash {
        min_ring_size: None,
        max_ring_size: None,
    })
    .unwrap();
    let policy = mesh_core::route::HashPolicy::new(&HashPolicySpec {
        kind: HashPolicyKind::Header {
            name: "x-user".into(),
            regex_rewrite: None,
        },
        terminal: false,
    })
    .unwrap();
    let svc = LoadBalancer::new(lb, endpoints, vec![policy]).unwrap();
    let send = |user: String| {
        let svc = svc.clone();
        async move {
            let req = Request::builder().header("x-user", user).body(()).unwrap();
            let _ = svc.oneshot(req).await;
        }
    };
    let snapshot = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    // One key: every request to the same endpoint.
    for _ in 0..50 {
        send("alice".into()).await;
    }
    let n = snapshot();
    assert_eq!(n.iter().filter(|c| **c == 50).count(), 1, "{n:?}");
    // Many keys: spread over all three.
    for u in 0..600 {
        send(format!("user-{u}")).await;
    }
    let after = snapshot();
    for (a, b) in after.iter().zip(&n) {
        let share = a - b;
        assert!((100..=300).contains(&share), "{after:?}");
    }
}

#[test]
fn load_balancer_rejects_a_duplicate_endpoint_naming_it() {
    use mesh_core::{LbConfig, LbPolicySpec};
    let (mut endpoints, _) = counted_endpoints([1, 1, 1]);
    endpoints[1].0.address = endpoints[0].0.address;
    let lb = LbConfig::new(&LbPolicySpec::RoundRobin).unwrap();
    let err = LoadBalancer::new(lb, endpoints, Vec::new()).err().unwrap();
    assert_eq!(
        err.to_string(),
        "cluster load assignment \"balancer\": endpoints[0].lb_endpoints[1].endpoint.address: 10.0.0.1:80 appears more than once in the cluster"
    );
}

fn grpc_request<B>(body: B) -> Request<B> {
    Request::builder()
        .uri("http://greeter:50051/helloworld.Greeter/SayHello")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap()
}

fn grpc_status(r: &Response<MeshBody>) -> Option<&str> {
    r.headers().get("grpc-status").map(|v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn fault_layer_answers_a_grpc_caller_in_grpc() {
    let calls = Arc::new(AtomicU64::new(0));
    let abort = FaultConfig::new(&FaultSpec {
        abort: Some(FaultAbortSpec {
            kind: FaultAbortKind::Http(503),
            percentage: Fraction::percent(100),
        }),
        ..Default::default()
    })
    .unwrap();
    let svc = FaultLayer::new(abort).layer(backend(|_| false, calls.clone()));
    let r = svc.oneshot(grpc_request(Bytes::new())).await.unwrap();
    // gRPC's HTTP → gRPC mapping: 503 is UNAVAILABLE, in a 200 trailers-only response.
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(grpc_status(&r), Some("14"));
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn breaker_layer_answers_a_grpc_caller_in_grpc() {
    let breaker = CircuitBreaker::new(Thresholds::new(&CircuitBreakerSpec {
        max_requests: Some(0),
        ..Default::default()
    }));
    let inner = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(crate::body::empty()))
    });
    let svc = CircuitBreakerLayer::new(breaker).layer(inner);
    let r = svc.clone().oneshot(grpc_request(())).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(grpc_status(&r), Some("14"));
    assert_eq!(r.headers()["grpc-message"], "max_requests");
    assert_eq!(r.headers()[OVERFLOW_HEADER], "max_requests");
    // A plain HTTP caller still gets the 503.
    let r = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn retry_layer_reads_grpc_status_before_the_http_status() {
    // A proxy's 503 that carries grpc-status UNAVAILABLE: a policy retrying on `unavailable`
    // (a gRPC condition) retries it, as the stack does.
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let inner = tower::service_fn(move |_req: Request<Bytes>| {
        let first = c.fetch_add(1, Ordering::Relaxed) == 0;
        async move {
            let mut r = Response::new(crate::body::empty());
            if first {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("14"));
            } else {
                r.headers_mut()
                    .insert("grpc-status", http::HeaderValue::from_static("0"));
            }
            Ok::<_, Infallible>(r)
        }
    });
    let unavailable = RetryPolicy::new(&RetryPolicySpec {
        retry_on: "unavailable".into(),
        num_retries: Some(1),
        ..Default::default()
    })
    .unwrap();
    let generous = RetryBudgetConfig::new(&RetryBudgetSpec {
        retry_percent: Some(100.0),
        ..Default::default()
    })
    .unwrap();
    let svc = RetryBudgetLayer::new(unavailable, Arc::new(RetryBudget::new(generous))).layer(inner);
    let r = svc.oneshot(grpc_request(Bytes::new())).await.unwrap();
    assert_eq!(grpc_status(&r), Some("0"));
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}
