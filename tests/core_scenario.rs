//! The seed story through mesh-core's pieces together, as the tower stack will compose them:
//! snapshot routing, endpoint picking, outlier ejection with picker rebuilds, and the retry
//! budget. Seeded randomness and explicit time: deterministic.

#[path = "common/seed_story.rs"]
#[allow(dead_code)]
mod config;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use config::{LISTENER, V1, V2, addr, snapshot};
use http::{HeaderMap, HeaderValue, Method, Uri};
use mesh::core::lb::PickerOptions;
use mesh::core::outlier::Change;
use mesh::core::route::AttemptFailure;
use mesh::core::{ClusterPicker, Outcome, OutlierDetector, RetryBudget, RouteRequest};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn uri() -> Uri {
    format!("http://{LISTENER}/productpage").parse().unwrap()
}

#[test]
fn canary_split_and_header_canary() {
    let snap = snapshot().unwrap();
    assert!(snap.dangling().is_empty());
    let mut rng = SmallRng::seed_from_u64(11);
    let (uri, plain) = (uri(), HeaderMap::new());
    let req = RouteRequest::new(&Method::GET, &uri, &plain);
    let mut per_cluster = HashMap::<String, usize>::new();
    for _ in 0..2_000 {
        let r = snap.route(LISTENER, &req, &mut rng).unwrap();
        *per_cluster
            .entry(r.cluster.unwrap().to_string())
            .or_default() += 1;
    }
    // 90/10 within ±3 points (sd of the v2 share is 0.67 points at n = 2000).
    let v2 = per_cluster[V2] as f64 / 20.0;
    assert!((7.0..=13.0).contains(&v2), "{per_cluster:?}");

    let mut beta = HeaderMap::new();
    beta.insert("version", HeaderValue::from_static("beta"));
    let req = RouteRequest::new(&Method::GET, &uri, &beta);
    for _ in 0..500 {
        assert_eq!(
            &**snap
                .route(LISTENER, &req, &mut rng)
                .unwrap()
                .cluster
                .unwrap(),
            V2
        );
    }
    // The short name with its port is a domain of the virtual host too.
    let short: Uri = "http://ui:9080/".parse().unwrap();
    let req = RouteRequest::new(&Method::GET, &short, &plain).with_authority("ui:9080");
    assert!(snap.route(LISTENER, &req, &mut rng).is_ok());
}

#[test]
fn a_failing_endpoint_is_ejected_and_returns_on_schedule() {
    let snap = snapshot().unwrap();
    let v1 = snap.cluster(V1).unwrap();
    let eps = snap.cluster_endpoints(v1).unwrap().clone();
    let mut detector = OutlierDetector::new(*v1.outlier_detection().unwrap());
    detector.set_hosts(eps.endpoints().iter().map(|e| e.address));
    let mut rng = SmallRng::seed_from_u64(5);
    let build = |d: &OutlierDetector| {
        ClusterPicker::new(
            v1.lb(),
            &eps,
            PickerOptions::default(),
            |i| !d.is_ejected(&eps.endpoints()[i].address),
            None,
            0,
        )
    };
    let mut picker = build(&detector);
    let bad = addr(18082);
    let t0 = Instant::now();
    let mut ejected_at = None;
    let mut picks_after = HashMap::<_, usize>::new();
    for i in 0..3_000u64 {
        let now = t0 + Duration::from_millis(i);
        let target = eps.endpoints()[picker.pick(None, &mut rng).unwrap()].address;
        if ejected_at.is_some() {
            *picks_after.entry(target).or_default() += 1;
        }
        let outcome = if target == bad {
            Outcome::ServerError(503)
        } else {
            Outcome::Success
        };
        if let Some(Change::Ejected { address, until, .. }) =
            detector.record(target, outcome, now, &mut rng)
        {
            assert_eq!((address, until - now), (bad, Duration::from_secs(300)));
            ejected_at = Some(now);
            picker = build(&detector);
        }
    }
    assert!(ejected_at.is_some());
    assert!(!picks_after.contains_key(&bad), "{picks_after:?}");
    assert_eq!(picks_after.len(), 2);

    // Sweeps every 5 s: still out at 295 s, back in at the first sweep ≥ 300 s.
    let ejected_at = ejected_at.unwrap();
    let mut t = t0;
    let mut returned = None;
    while returned.is_none() && t < t0 + Duration::from_secs(400) {
        t += Duration::from_secs(5);
        if detector.tick(t, &mut rng).contains(&Change::Returned(bad)) {
            returned = Some(t);
        }
    }
    let back = returned.unwrap();
    assert!(
        back >= ejected_at + Duration::from_secs(300)
            && back < ejected_at + Duration::from_secs(305)
    );
    picker = build(&detector);
    let after: Vec<_> = (0..30)
        .map(|_| eps.endpoints()[picker.pick(None, &mut rng).unwrap()].address)
        .collect();
    assert!(after.contains(&bad));
}

#[test]
fn the_budget_caps_retries_against_a_dead_cluster() {
    let snap = snapshot().unwrap();
    let (uri, plain) = (uri(), HeaderMap::new());
    let mut rng = SmallRng::seed_from_u64(3);
    let policy = snap
        .route(
            LISTENER,
            &RouteRequest::new(&Method::GET, &uri, &plain),
            &mut rng,
        )
        .unwrap()
        .route
        .forward()
        .unwrap()
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(policy.num_retries(), 3);
    let budget = RetryBudget::new(*snap.cluster(V1).unwrap().retry_budget());
    let t0 = Instant::now();
    let requests = 5_000u64;
    let mut attempts = 0u64;
    // Every attempt fails with 503, 1,000 requests a second for 5 s (inside one 10 s window).
    for i in 0..requests {
        let now = t0 + Duration::from_millis(i);
        budget.deposit(now);
        attempts += 1;
        let mut retries = 0;
        while retries < policy.num_retries()
            && policy.is_retriable(AttemptFailure::HttpStatus(503))
            && budget.try_withdraw(now)
        {
            retries += 1;
            attempts += 1;
        }
    }
    let reserve = budget.config().reserve() as u64;
    assert!(
        attempts <= requests * 12 / 10 + reserve,
        "{attempts} attempts"
    );
    // And the budget is used, not refused outright: without it there would be 4 × 5,000.
    assert!(attempts >= requests * 12 / 10, "{attempts} attempts");
}
