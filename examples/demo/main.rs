//! The mesh-core demo: routes requests through the seed story's configuration (a 90/10 canary
//! of `ui` between `version-1` and `version-2-beta`, a `version: beta` header canary, retries
//! with a budget, outlier ejection) and prints every decision. No network: this exercises the
//! model and algorithms that the tower stack runs per request.
//!
//! Run with `cargo run --release --example demo`.

mod config;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, Uri};
use mesh::core::lb::PickerOptions;
use mesh::core::outlier::Change;
use mesh::core::route::AttemptFailure;
use mesh::core::{ClusterPicker, Outcome, OutlierDetector, RetryBudget, RouteRequest};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use config::{LISTENER, V1, V2, addr, snapshot};

fn subset(cluster: &str) -> &str {
    cluster.split('|').nth(2).unwrap_or(cluster)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let snap = snapshot()?;
    assert!(
        snap.dangling().is_empty(),
        "the sample snapshot is complete"
    );
    let mut rng = SmallRng::seed_from_u64(2026);
    let uri: Uri = format!("http://{LISTENER}/productpage").parse()?;
    let plain = HeaderMap::new();
    let mut beta = HeaderMap::new();
    beta.insert("version", HeaderValue::from_static("beta"));

    println!("mesh-core demo: listener {LISTENER}\n");
    println!("Stage 1 — a few requests, one decision each:");
    for (label, headers) in [
        ("GET /productpage", &plain),
        ("GET /productpage  version: beta", &beta),
    ] {
        let req = RouteRequest::new(&Method::GET, &uri, headers);
        let r = snap.route(LISTENER, &req, &mut rng)?;
        let cluster = r.cluster.expect("client routes forward");
        println!(
            "  {label:<34} → route {:<14} cluster {}",
            r.route.name(),
            subset(cluster)
        );
    }

    // Pickers and outlier detectors, one per cluster, as the tower stack keeps them.
    let mut pickers = BTreeMap::new();
    let mut detectors = BTreeMap::new();
    for c in [V1, V2] {
        let cluster = snap.cluster(c).expect("cluster");
        let eps = snap.cluster_endpoints(cluster).expect("endpoints");
        pickers.insert(
            c,
            ClusterPicker::new(
                cluster.lb(),
                eps,
                PickerOptions::default(),
                |_| true,
                None,
                7,
            ),
        );
        let mut d = OutlierDetector::new(*cluster.outlier_detection().expect("outlier detection"));
        d.set_hosts(eps.endpoints().iter().map(|e| e.address));
        detectors.insert(c, d);
    }

    let run = |n: usize,
               headers: &HeaderMap,
               pickers: &BTreeMap<&str, ClusterPicker>,
               rng: &mut SmallRng| {
        let mut per_subset = BTreeMap::<String, usize>::new();
        let mut per_endpoint = BTreeMap::<SocketAddr, usize>::new();
        let req = RouteRequest::new(&Method::GET, &uri, headers);
        for _ in 0..n {
            let r = snap.route(LISTENER, &req, rng).expect("routed");
            let cluster = r.cluster.expect("forwarding route");
            *per_subset.entry(subset(cluster).to_string()).or_default() += 1;
            let eps = snap
                .cluster_endpoints(snap.cluster(cluster).expect("cluster"))
                .expect("eps");
            let i = pickers[&**cluster].pick(None, rng).expect("an endpoint");
            *per_endpoint.entry(eps.endpoints()[i].address).or_default() += 1;
        }
        (per_subset, per_endpoint)
    };

    println!("\nStage 2 — 10,000 requests without headers (weights 90/10):");
    let (subsets, endpoints) = run(10_000, &plain, &pickers, &mut rng);
    println!("  subsets:   {subsets:?}");
    println!("  endpoints: {endpoints:?}");

    println!("\nStage 3 — 1,000 requests with `version: beta`:");
    let (subsets, _) = run(1_000, &beta, &pickers, &mut rng);
    println!("  subsets:   {subsets:?}");

    println!("\nStage 4 — 127.0.0.1:18082 starts answering 503; retries under a budget:");
    let t0 = Instant::now();
    let v1 = snap.cluster(V1).expect("v1");
    let budget = RetryBudget::new(*v1.retry_budget());
    let policy = snap
        .route(
            LISTENER,
            &RouteRequest::new(&Method::GET, &uri, &plain),
            &mut rng,
        )?
        .route
        .forward()
        .and_then(|f| f.retry_policy.clone())
        .expect("retry policy");
    let (mut ok, mut attempts) = (0, 0);
    let bad = addr(18082);
    let eps = snap.cluster_endpoints(v1).expect("eps").clone();
    for i in 0..300u64 {
        let now = t0 + Duration::from_millis(i * 10);
        budget.deposit(now);
        let mut tries = 0;
        loop {
            attempts += 1;
            let idx = pickers[V1].pick(None, &mut rng).expect("endpoint");
            let target = eps.endpoints()[idx].address;
            let status = if target == bad { 503 } else { 200 };
            let outcome = if status == 200 {
                Outcome::Success
            } else {
                Outcome::ServerError(status)
            };
            let detector = detectors.get_mut(V1).expect("detector");
            if let Some(Change::Ejected { address, until, .. }) =
                detector.record(target, outcome, now, &mut rng)
            {
                println!(
                    "  t={:>5}ms ejected {address} for {:?}; rebuilding the picker",
                    i * 10,
                    until - now
                );
                let d = &detectors[V1];
                let picker = ClusterPicker::new(
                    v1.lb(),
                    &eps,
                    PickerOptions::default(),
                    |j| !d.is_ejected(&eps.endpoints()[j].address),
                    None,
                    7,
                );
                pickers.insert(V1, picker);
            }
            if status == 200 {
                ok += 1;
                break;
            }
            tries += 1;
            if tries > policy.num_retries()
                || !policy.is_retriable(AttemptFailure::HttpStatus(status))
                || !budget.try_withdraw(now)
            {
                break;
            }
        }
    }
    println!("  300 requests: {ok} succeeded in {attempts} attempts");
    let (_, endpoints) = run(1_000, &plain, &pickers, &mut rng);
    println!("  next 1,000 requests by endpoint (18082 is out): {endpoints:?}");
    println!("\ndone");
    Ok(())
}
