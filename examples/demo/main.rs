//! The mesh demo: the local control plane serves the seed talks' Istio YAML, four `ui`
//! backends run on 127.0.0.1 (version-1 ×3, version-2-beta ×1), and a client sends steady
//! traffic through the mesh stack while the demo rewrites the YAML the control plane watches:
//! 90/10 canary, header canary, shift to 0/100, fault injection, and a failing backend ejected
//! while retries keep requests succeeding. A table is printed every second.
//!
//! `cargo run --release --example demo` finishes by itself in under a minute;
//! `-- --stay` keeps it running so you can edit the YAML (the path is printed) and watch.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::tower::{MeshConfig, MeshService};
use mesh::xds::{Bootstrap, XdsClientBuilder};
use mesh_control_plane::ControlPlane;
use mesh_control_plane::watch::{Reload, load, watch_dir};
use tokio::time::Instant;
use tower::ServiceExt;

const TARGET: &str = "ui.default.svc.cluster.local:9080";
const BACKENDS: [(&str, u16); 4] = [("v1", 18081), ("v1", 18082), ("v1", 18083), ("v2", 18091)];

/// A backend that answers with its version, or 503 while `failing`.
async fn backend(version: &'static str, failing: Arc<AtomicBool>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let failing = failing.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let fail = failing.load(Ordering::Relaxed);
                    async move {
                        let mut r =
                            Response::new(Full::new(Bytes::from_static(version.as_bytes())));
                        if fail {
                            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Copies the bundled YAML to `dir`, pointing the ServiceEntry at the ports actually bound.
fn write_config(dir: &Path, ports: &[u16]) -> std::io::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    for f in std::fs::read_dir(&src)? {
        let f = f?.path();
        if f.is_file() {
            let mut text = std::fs::read_to_string(&f)?;
            for ((_, fixed), port) in BACKENDS.iter().zip(ports) {
                text = text.replace(&format!("http: {fixed}}}"), &format!("http: {port}}}"));
            }
            std::fs::write(dir.join(f.file_name().unwrap_or_default()), text)?;
        }
    }
    Ok(())
}

fn use_routes(dir: &Path, variant: Option<&str>) -> std::io::Result<()> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config");
    let from = match variant {
        Some(v) => src.join("variants").join(v),
        None => src.join("ui-routes.yaml"),
    };
    std::fs::copy(from, dir.join("ui-routes.yaml")).map(|_| ())
}

/// What a stage changes when it starts.
type StageAction = Box<dyn Fn() -> std::io::Result<()>>;

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stay = std::env::args().any(|a| a == "--stay");
    let failing: Vec<Arc<AtomicBool>> = BACKENDS
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let mut ports = Vec::new();
    for ((version, _), f) in BACKENDS.iter().zip(&failing) {
        ports.push(backend(version, f.clone()).await?.port());
    }
    let dir = tempfile::tempdir()?;
    let config_dir: PathBuf = dir.path().to_path_buf();
    write_config(&config_dir, &ports)?;

    let cp = ControlPlane::new(load(&config_dir)?);
    let xds = cp.clone().spawn("127.0.0.1:0".parse()?).await?;
    tokio::spawn(watch_dir(
        config_dir.clone(),
        cp.clone(),
        Duration::from_millis(100),
        |r| match r {
            Reload::Served { version, .. } => println!("  control plane: serving v{version}"),
            Reload::Rejected(e) => println!("  control plane: rejected edit: {e}"),
        },
    ));
    println!(
        "mesh demo: control plane on {xds} serving {}",
        config_dir.display()
    );
    println!(
        "backends: {}",
        BACKENDS
            .iter()
            .zip(&ports)
            .map(|((v, _), p)| format!("{v}@127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join("  ")
    );

    let bootstrap = Bootstrap::from_json(
        &format!(
            r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
                "node": {{"id": "sidecar~127.0.0.1~demo.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default"}}}}}}"#
        ),
        "demo",
    )?;
    let client = XdsClientBuilder::new(bootstrap)
        .target(format!("xds:///{TARGET}"))
        .start()?;
    tokio::time::timeout(Duration::from_secs(10), client.ready()).await?;
    let svc = MeshService::new(client.snapshots(), MeshConfig::default());

    let stop = Arc::new(AtomicBool::new(false));
    let users = Arc::new(Mutex::new(Window::default()));
    let testers = Arc::new(Mutex::new(Window::default()));
    for _ in 0..4 {
        tokio::spawn(traffic(svc.clone(), users.clone(), None, stop.clone()));
    }
    tokio::spawn(traffic(
        svc.clone(),
        testers.clone(),
        Some(("version", "beta")),
        stop.clone(),
    ));

    let stages: [(&str, StageAction); 5] = [
        (
            "90/10 canary: users split between version-1 and version-2-beta; testers (version: beta) get version-2-beta",
            Box::new(|| Ok(())),
        ),
        (
            "shift to 0/100: everyone moves to version-2-beta",
            Box::new({
                let d = config_dir.clone();
                move || use_routes(&d, Some("ui-routes-shift-0-100.yaml"))
            }),
        ),
        (
            "fault injection: 10% of requests aborted with HTTP 400 (routes to version-1)",
            Box::new({
                let d = config_dir.clone();
                move || use_routes(&d, Some("ui-routes-fault.yaml"))
            }),
        ),
        (
            "back to 90/10 with retries (attempts 3)",
            Box::new({
                let d = config_dir.clone();
                move || use_routes(&d, None)
            }),
        ),
        (
            "a version-1 backend starts answering 503: outlier detection ejects it, retries keep success high",
            Box::new({
                let f = failing[1].clone();
                move || {
                    f.store(true, Ordering::Relaxed);
                    Ok(())
                }
            }),
        ),
    ];
    for (i, (title, action)) in stages.iter().enumerate() {
        println!("\nstage {}: {title}", i + 1);
        action()?;
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
    if stay {
        println!(
            "\n--stay: edit {}/ui-routes.yaml and watch the traffic move (Ctrl-C to stop)",
            config_dir.display()
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
    println!("\ndone");
    Ok(())
}
