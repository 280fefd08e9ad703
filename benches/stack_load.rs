//! Load harness: a bare hyper client → a hyper backend, against the same through the full mesh
//! stack (route match, weighted cluster, retry policy and budget, breaker, P2C-free round robin,
//! outlier detection), same run, loopback, same concurrency.
//!
//! `cargo bench --bench stack_load [-- REQUESTS CONCURRENCY]`. Prints throughput, CPU time per
//! request (the whole process: client and backend; the difference is the stack's cost) and
//! latency, each for the baseline and the mesh, and their ratio.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::tower::{MeshConfig, MeshService};
use mesh::xds::{Bootstrap, XdsClientBuilder};
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use tower::ServiceExt;

const HOST: &str = "ui.default.svc.cluster.local";

async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Process CPU time (user + system) from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

struct Run {
    rps: f64,
    cpu_us: f64,
    p50_us: u64,
    p99_us: u64,
}

async fn drive<F, Fut>(requests: usize, concurrency: usize, send: F) -> Run
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (send, next) = (send.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(requests / concurrency + 1);
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let s = Instant::now();
                assert!(send().await, "request failed");
                lat.push(s.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    lat.sort_unstable();
    Run {
        rps: requests as f64 / wall.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / requests as f64,
        p50_us: lat[lat.len() / 2],
        p99_us: lat[lat.len() * 99 / 100],
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(200_000);
    let concurrency = args.get(1).copied().unwrap_or(32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let addr = backend().await;
        let yaml = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{http: {}}}\n    labels: {{version: v1}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ui}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    outlierDetection: {{consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s}}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  http:\n  - name: api\n    match:\n    - uri: {{prefix: /api}}\n      headers: {{x-tenant: {{exact: a}}}}\n    route:\n    - destination: {{host: {HOST}, subset: v1}}\n  - name: main\n    route:\n    - destination: {{host: {HOST}, subset: v1}}\n    retries: {{attempts: 2, retryOn: 5xx}}\n",
            addr.port()
        );
        let mut cfg = IstioConfig::default();
        cfg.add_text("bench.yaml", &yaml).unwrap();
        let cp = ControlPlane::new(translate(&cfg).unwrap());
        let xds = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = Bootstrap::from_json(
            &format!(r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~b.default~default.svc.cluster.local"}}}}"#),
            "bench",
        )
        .unwrap();
        let client = XdsClientBuilder::new(b).target(format!("{HOST}:9080")).start().unwrap();
        client.ready().await;
        let mesh = MeshService::new(client.snapshots(), MeshConfig::default());

        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let bare: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let bare_uri: http::Uri = format!("http://{addr}/productpage").parse().unwrap();
        let send_bare = move || {
            let (bare, uri) = (bare.clone(), bare_uri.clone());
            async move {
                let mut req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("ui.default.svc.cluster.local:9080"));
                match bare.request(req).await {
                    Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        let send_mesh = move || {
            let mesh = mesh.clone();
            async move {
                let req = Request::get(format!("http://{HOST}:9080/productpage")).body(Full::new(Bytes::new())).unwrap();
                let Ok(r) = mesh.oneshot(req).await;
                r.status().is_success() && r.into_body().collect().await.is_ok()
            }
        };
        // Warm up both paths (connections, caches), then alternate rounds.
        drive(5_000, concurrency, send_bare.clone()).await;
        drive(5_000, concurrency, send_mesh.clone()).await;
        let (mut bare_runs, mut mesh_runs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            bare_runs.push(drive(requests, concurrency, send_bare.clone()).await);
            mesh_runs.push(drive(requests, concurrency, send_mesh.clone()).await);
        }
        let med = |runs: &mut Vec<Run>| {
            runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
            runs.remove(runs.len() / 2)
        };
        let (b, m) = (med(&mut bare_runs), med(&mut mesh_runs));
        println!("stack load: {requests} requests × 3 rounds (median shown), concurrency {concurrency}, loopback, 2 worker threads; client and backend in one process");
        println!("| path | req/s | CPU µs/request (client + backend) | p50 µs | p99 µs |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        println!("| bare hyper client | {:.0} | {:.1} | {} | {} |", b.rps, b.cpu_us, b.p50_us, b.p99_us);
        println!("| mesh stack | {:.0} | {:.1} | {} | {} |", m.rps, m.cpu_us, m.p50_us, m.p99_us);
        println!(
            "mesh vs bare: throughput {:.1}% of bare ({:+.1}%), added CPU {:.2} µs/request ({:.2}× bare CPU)",
            100.0 * m.rps / b.rps,
            100.0 * (m.rps / b.rps - 1.0),
            m.cpu_us - b.cpu_us,
            m.cpu_us / b.cpu_us
        );
    });
}
