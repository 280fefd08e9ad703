use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_core::route::{
    FaultAbortKind, FaultAbortSpec, FaultDelayKind, FaultDelaySpec, FaultSpec, RetryPolicySpec,
};
use mesh_core::{CircuitBreakerSpec, Fraction, RetryBudgetConfig, RetryBudgetSpec, Thresholds};
use tower::ServiceExt;

use super::*;

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
