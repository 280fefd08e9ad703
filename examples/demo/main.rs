//! The mesh demo: the local control plane serves the seed talks' Istio YAML, four `ui`
//! backends run on 127.0.0.1 (version-1 ×3, version-2-beta ×1), and a client sends steady
//! traffic through the mesh stack while the demo rewrites the YAML the control plane watches:
//! 90/10 canary, header canary, shift to 0/100, fault injection, and a failing backend ejected
//! while retries keep requests succeeding. A table is printed every second.
//!
//! `cargo run --release --example demo` finishes by itself in under a minute;
//! `-- --stay` keeps it running so you can edit the YAML (the path is printed) and watch.

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Lab, TARGET};
use http::Request;
use http_body_util::{BodyExt, Full};
use mesh::tower::MeshService;
use mesh_control_plane::watch::Reload;
use tokio::time::Instant;
use tower::ServiceExt;

#[derive(Default)]
struct Window {
    by_version: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    latencies_us: Vec<u64>,
}

async fn traffic(
    svc: MeshService,
    stats: Arc<Mutex<Window>>,
    header: Option<(&'static str, &'static str)>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut req = Request::get(format!("http://{TARGET}/productpage"));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let started = Instant::now();
        let Ok(resp) = svc
            .clone()
            .oneshot(req.body(Full::new(Bytes::new())).unwrap_or_default())
            .await;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut w = stats.lock().unwrap_or_else(|e| e.into_inner());
        w.latencies_us.push(started.elapsed().as_micros() as u64);
        *w.by_status.entry(status).or_default() += 1;
        if status == 200 {
            *w.by_version
                .entry(String::from_utf8_lossy(&body).into_owned())
                .or_default() += 1;
        }
    }
}

fn report(label: &str, w: &mut Window) {
    let total: u64 = w.by_status.values().sum();
    if total == 0 {
        println!("  {label:<7} no requests");
        return;
    }
    let ok = w.by_status.get(&200).copied().unwrap_or(0);
    let pct = |v: &str| 100.0 * w.by_version.get(v).copied().unwrap_or(0) as f64 / total as f64;
    w.latencies_us.sort_unstable();
    let q =
        |p: f64| w.latencies_us[((w.latencies_us.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    let others: Vec<String> = w
        .by_status
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(s, n)| format!("{s}×{n}"))
        .collect();
    println!(
        "  {label:<7} {total:>6} req/s   v1 {:>5.1}%   v2 {:>5.1}%   success {:>5.1}%   p50 {:>5.2} ms   p99 {:>5.2} ms   {}",
        pct("v1"),
        pct("v2"),
        100.0 * ok as f64 / total as f64,
        q(0.5),
        q(0.99),
        others.join(" ")
    );
    *w = Window::default();
}

/// What a stage changes when it starts.
enum Change {
    Nothing,
    Routes(Option<&'static str>),
    FailBackend(usize),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stay = std::env::args().any(|a| a == "--stay");
    let lab = Lab::start(|r| match r {
        Reload::Served { version, .. } => println!("  control plane: serving v{version}"),
        Reload::Rejected(e) => println!("  control plane: rejected edit: {e}"),
    })
    .await?;
    println!(
        "mesh demo: control plane on {} serving {}",
        lab.xds,
        lab.dir.display()
    );
    println!(
        "backends: {}",
        lab.backends
            .iter()
            .map(|b| format!("{}@{}", b.version, b.addr))
            .collect::<Vec<_>>()
            .join("  ")
    );

    let stop = Arc::new(AtomicBool::new(false));
    let users = Arc::new(Mutex::new(Window::default()));
    let testers = Arc::new(Mutex::new(Window::default()));
    for _ in 0..4 {
        tokio::spawn(traffic(lab.svc.clone(), users.clone(), None, stop.clone()));
    }
    tokio::spawn(traffic(
        lab.svc.clone(),
        testers.clone(),
        Some(("version", "beta")),
        stop.clone(),
    ));

    let stages = [
        (
            "90/10 canary: users split between version-1 and version-2-beta; testers (version: beta) get version-2-beta",
            Change::Nothing,
        ),
        (
            "shift to 0/100: everyone moves to version-2-beta",
            Change::Routes(Some("ui-routes-shift-0-100.yaml")),
        ),
        (
            "fault injection: 10% of requests aborted with HTTP 400 (routes to version-1)",
            Change::Routes(Some("ui-routes-fault.yaml")),
        ),
        (
            "back to 90/10 with retries (attempts 3)",
            Change::Routes(None),
        ),
        (
            "a version-1 backend starts answering 503: outlier detection ejects it, retries keep success high",
            Change::FailBackend(1),
        ),
    ];
    let mut hits_when_failing = 0;
    for (i, (title, change)) in stages.iter().enumerate() {
        println!("\nstage {}: {title}", i + 1);
        match change {
            Change::Nothing => {}
            Change::Routes(v) => lab.use_routes(*v).await?,
            Change::FailBackend(b) => {
                hits_when_failing = lab.backends[*b].hits.load(Ordering::Relaxed);
                lab.backends[*b].failing.store(true, Ordering::Relaxed);
            }
        }
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            report(
                "users",
                &mut users.lock().unwrap_or_else(|e| e.into_inner()),
            );
            report(
                "testers",
                &mut testers.lock().unwrap_or_else(|e| e.into_inner()),
            );
        }
    }
    let failing = &lab.backends[1];
    println!(
        "\nafter it started failing, backend {} received {} request(s): outlier detection ejected it (consecutiveErrors: 1) and retries sent the failed ones elsewhere",
        failing.addr,
        failing.hits.load(Ordering::Relaxed) - hits_when_failing
    );
    if stay {
        println!(
            "\n--stay: edit {}/ui-routes.yaml and watch the traffic move (Ctrl-C to stop)",
            lab.dir.display()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    report("users", &mut users.lock().unwrap_or_else(|e| e.into_inner()));
                    report("testers", &mut testers.lock().unwrap_or_else(|e| e.into_inner()));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    print_requests(&lab.telemetry.encode());
    println!("\ndone");
    Ok(())
}

/// The `istio_requests_total` rows the demo produced, as a dashboard groups them, and one
/// whole row as Prometheus scrapes it.
fn print_requests(text: &str) {
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    let label = |row: &str, key: &str| -> String {
        let Some(start) = row.find(&format!(",{key}=\"")).map(|i| i + key.len() + 3) else {
            return String::new();
        };
        row[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    println!(
        "\nistio_requests_total (reporter=\"source\", source_workload=\"example\"), by destination:"
    );
    println!(
        "  {:<34} {:<16} {:<8} {:<6} {:>9}",
        "destination_service", "workload", "revision", "code", "requests"
    );
    for row in &rows {
        println!(
            "  {:<34} {:<16} {:<8} {:<6} {:>9}",
            label(row, "destination_service"),
            label(row, "destination_workload"),
            label(row, "destination_canonical_revision"),
            format!(
                "{} {}",
                label(row, "response_code"),
                label(row, "response_flags")
            ),
            row.rsplit(' ').next().unwrap_or_default()
        );
    }
    if let Some(first) = rows.first() {
        println!("one row as scraped:\n  {first}");
    }
}
