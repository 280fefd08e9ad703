//! Load harness: a bare hyper client → a hyper backend, against the same through the full mesh
//! stack (route match, weighted cluster, retry policy and budget, breaker, P2C-free round robin,
//! outlier detection), same run, loopback, same concurrency.
//!
//! `cargo bench --bench stack_load [-- REQUESTS CONCURRENCY]`. Prints throughput, CPU time per
//! request (the whole process: client and backend; the difference is the stack's cost) and
//! latency, each for the baseline and the mesh, and their ratio.
//!
//! With `MESH_ENVOY=/path/to/envoy` (see `benches/sidecar.sh`) it also measures the sidecar
//! paths: bare hyper → Envoy → backend (one hop) and bare hyper → Envoy → Envoy → backend
//! (sidecar to sidecar), with the Envoys' own CPU time and memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

#[path = "load/mod.rs"]
mod load;
use load::{drive, free_port, median, rss_mib};

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

/// An Envoy with one listener on `port` routing everything (retries on 5xx) to `upstream`.
fn envoy(bin: &str, port: u16, upstream: SocketAddr, dir: &std::path::Path) -> std::process::Child {
    let config = format!(
        r#"static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up, retry_policy: {{retry_on: 5xx, num_retries: 2}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: up
    type: STATIC
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}
"#,
        upstream.ip(),
        upstream.port()
    );
    let path = dir.join(format!("envoy-{port}.yaml"));
    std::fs::write(&path, config).unwrap();
    std::process::Command::new(bin)
        .args([
            "-c",
            path.to_str().unwrap(),
            "--concurrency",
            "2",
            "--log-level",
            "error",
            "--base-id",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start envoy")
}

/// An observer that adds `.0`'s values (if any) to each attempt as the four headers Istio's
/// telemetry sends, and records nothing: what carrying them costs, whoever fills them in.
struct FloorObserver(Option<Arc<[http::HeaderValue; 4]>>);

struct FloorCall(Option<Arc<[http::HeaderValue; 4]>>);

const FLOOR_NAMES: [http::HeaderName; 4] = [
    http::HeaderName::from_static("x-envoy-peer-metadata"),
    http::HeaderName::from_static("x-envoy-peer-metadata-id"),
    http::HeaderName::from_static("traceparent"),
    http::HeaderName::from_static("b3"),
];

impl mesh::tower::Observer for FloorObserver {
    fn on_request(
        &self,
        _: &mesh::tower::observe::RequestStart<'_>,
    ) -> Option<Box<dyn mesh::tower::RequestObserver>> {
        Some(Box::new(FloorCall(self.0.clone())))
    }
}

impl mesh::tower::RequestObserver for FloorCall {
    fn on_attempt(&mut self, attempt: &mut mesh::tower::observe::AttemptStart<'_>) {
        if let Some(values) = &self.0 {
            for (name, value) in FLOOR_NAMES.into_iter().zip(values.iter()) {
                attempt.headers.insert(name, value.clone());
            }
        }
    }

    fn on_end(self: Box<Self>, _: &mesh::tower::observe::StreamEnd<'_>) {}
}

/// `STACK_LOAD_BACKEND=process`: the backend in a child process (this binary again, with
/// `STACK_LOAD_BACKEND_CHILD` set), so that this process's CPU time is the client's alone and
/// the backend's is measured from its /proc. The child serves until its stdin closes.
fn backend_process() -> (SocketAddr, std::process::Child) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("STACK_LOAD_BACKEND_CHILD", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the backend process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line.trim().parse().expect("the backend's address"), child)
}

/// The child side of [`backend_process`]: one thread serving, its address on stdout.
fn serve_backend_child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = backend().await;
        println!("{addr}");
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await
        .unwrap();
    });
}

fn main() {
    if std::env::var_os("STACK_LOAD_BACKEND_CHILD").is_some() {
        return serve_backend_child();
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = args.first().copied().unwrap_or(200_000);
    let concurrency = args.get(1).copied().unwrap_or(32);
    // STACK_LOAD_THREADS=1 takes cross-core cache traffic out of the comparison.
    let threads: usize = std::env::var("STACK_LOAD_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let child =
        (std::env::var("STACK_LOAD_BACKEND").is_ok_and(|b| b == "process")).then(backend_process);
    let backend_pid: Vec<u32> = child.iter().map(|(_, c)| c.id()).collect();
    rt.block_on(async move {
        let addr = match &child {
            Some((addr, _)) => *addr,
            None => backend().await,
        };
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
        client.ready().await.expect("configuration");
        // `STACK_LOAD_TELEMETRY=1`: the baseline is the stack without telemetry, and the
        // measured path the stack recording Istio's metrics (no exporter attached).
        let telemetry = std::env::var_os("STACK_LOAD_TELEMETRY").is_some();
        // A workload as istio-agent describes one, so that the exchange headers are sent.
        let workload = mesh::core::telemetry::Workload::from_node_metadata(
            |k| match k {
                "WORKLOAD_NAME" => Some("bench"),
                "NAMESPACE" => Some("default"),
                "CLUSTER_ID" => Some("Kubernetes"),
                _ => None,
            },
            |k| match k {
                "app" => Some("bench"),
                "version" => Some("v1"),
                _ => None,
            },
        );
        let metrics = mesh::tower::telemetry::Telemetry::for_node(
            workload,
            "sidecar~127.0.0.1~bench-1.default~default.svc.cluster.local",
        );
        // `STACK_LOAD_TELEMETRY=trace`: trace propagation too (Istio's 1% sampling, no
        // subscriber or exporter attached).
        let traced = std::env::var("STACK_LOAD_TELEMETRY").is_ok_and(|v| v == "trace");
        // `STACK_LOAD_TELEMETRY=headers` / `=observer`: the floor under any telemetry that is
        // Istio's on the wire: an observer that only carries four headers the size of the
        // exchange and trace headers on each attempt, or one that does nothing at all.
        let floor = std::env::var("STACK_LOAD_TELEMETRY")
            .ok()
            .filter(|v| v == "headers" || v == "observer");
        let config = if let Some(mode) = floor {
            let carry = (mode == "headers").then(|| {
                // Static values: their clones count no shared references, so that this is
                // what carrying costs and nothing else.
                let fixed = |s: String| http::HeaderValue::from_static(Box::leak(s.into()));
                let exchange = fixed("x".repeat(232));
                let id = http::HeaderValue::from_static(
                    "sidecar~127.0.0.1~bench-1.default~default.svc.cluster.local",
                );
                let traceparent = fixed("0".repeat(55));
                let b3 = fixed("0".repeat(51));
                Arc::new([exchange, id, traceparent, b3])
            });
            MeshConfig::default().observer(Arc::new(FloorObserver(carry)))
        } else if traced {
            MeshConfig::default().observer(
                metrics.client_observer_traced(mesh::tower::telemetry::Tracer::new()),
            )
        } else if telemetry {
            MeshConfig::default().observer(metrics.client_observer())
        } else {
            MeshConfig::default()
        };
        let mesh = MeshService::new(client.snapshots(), config);
        let plain = telemetry.then(|| MeshService::new(client.snapshots(), MeshConfig::default()));
        let (base_name, test_name) = if telemetry {
            ("mesh stack, telemetry off", "mesh stack, telemetry on")
        } else {
            ("bare hyper client", "mesh stack")
        };

        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        let bare: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
        let bare_uri: http::Uri = format!("http://{addr}/productpage").parse().unwrap();
        let plain_uri: http::Uri = format!("http://{HOST}:9080/productpage").parse().unwrap();
        let send_bare = move || {
            let (bare, uri) = (bare.clone(), bare_uri.clone());
            let plain = plain.clone().map(|p| (p, plain_uri.clone()));
            async move {
                if let Some((plain, uri)) = plain {
                    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    let Ok(r) = plain.oneshot(req).await;
                    return r.status().is_success() && r.into_body().collect().await.is_ok();
                }
                let mut req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                req.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("ui.default.svc.cluster.local:9080"));
                match bare.request(req).await {
                    Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
                    Err(_) => false,
                }
            }
        };
        let mesh_uri: http::Uri = format!("http://{HOST}:9080/productpage").parse().unwrap();
        let send_mesh = move || {
            let (mesh, uri) = (mesh.clone(), mesh_uri.clone());
            async move {
                // Built like the bare request: a pre-parsed URI, so that only the stack differs.
                let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                let Ok(r) = mesh.oneshot(req).await;
                r.status().is_success() && r.into_body().collect().await.is_ok()
            }
        };
        // `STACK_LOAD_ONLY=bare|mesh`: one path, one round (for instruction counting under
        // callgrind, where CPU time means nothing; see benches/instructions.sh).
        if let Ok(only) = std::env::var("STACK_LOAD_ONLY") {
            let r = match only.as_str() {
                "bare" => drive(requests, concurrency, &backend_pid, send_bare.clone()).await,
                _ => drive(requests, concurrency, &backend_pid, send_mesh.clone()).await,
            };
            println!("{only}: {requests} requests, {:.0} req/s", r.rps);
            return;
        }
        // Warm up both paths (connections, caches), then alternate rounds.
        drive(5_000, concurrency, &[], send_bare.clone()).await;
        drive(5_000, concurrency, &[], send_mesh.clone()).await;
        // Paired rounds: the two paths back to back, so that machine noise (other tenants,
        // frequency changes) hits both, in alternating order so that neither always runs
        // second; the spread of the pairs is printed too. STACK_LOAD_ROUNDS sets the count.
        let rounds: usize = std::env::var("STACK_LOAD_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(7);
        let (mut bare_runs, mut mesh_runs, mut added, mut ratios, mut added_user) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let (b, m) = if round % 2 == 0 {
                let b = drive(requests, concurrency, &backend_pid, send_bare.clone()).await;
                (b, drive(requests, concurrency, &backend_pid, send_mesh.clone()).await)
            } else {
                let m = drive(requests, concurrency, &backend_pid, send_mesh.clone()).await;
                (drive(requests, concurrency, &backend_pid, send_bare.clone()).await, m)
            };
            added.push(m.cpu_us - b.cpu_us);
            added_user.push(m.user_us - b.user_us);
            ratios.push(m.rps / b.rps);
            bare_runs.push(b);
            mesh_runs.push(m);
        }
        added.sort_by(f64::total_cmp);
        added_user.sort_by(f64::total_cmp);
        ratios.sort_by(f64::total_cmp);
        let med = median;
        let (b, m) = (med(&mut bare_runs), med(&mut mesh_runs));
        if child.is_some() {
            println!("stack load: {requests} requests × {rounds} paired rounds (median shown), concurrency {concurrency}, loopback, {threads} worker threads; the backend in its own process (one thread)");
            println!("| path | req/s | CPU µs/request (client process) | backend CPU µs/request | p50 µs | p99 µs |");
            println!("| --- | ---: | ---: | ---: | ---: | ---: |");
            println!("| {base_name} | {:.0} | {:.2} | {:.2} | {} | {} |", b.rps, b.cpu_us, b.envoy_cpu_us, b.p50_us, b.p99_us);
            println!("| {test_name} | {:.0} | {:.2} | {:.2} | {} | {} |", m.rps, m.cpu_us, m.envoy_cpu_us, m.p50_us, m.p99_us);
        } else {
            println!("stack load: {requests} requests × {rounds} paired rounds (median shown), concurrency {concurrency}, loopback, {threads} worker threads; client and backend in one process");
            println!("| path | req/s | CPU µs/request (client + backend) | p50 µs | p99 µs |");
            println!("| --- | ---: | ---: | ---: | ---: |");
            println!("| {base_name} | {:.0} | {:.1} | {} | {} |", b.rps, b.cpu_us, b.p50_us, b.p99_us);
            println!("| {test_name} | {:.0} | {:.1} | {} | {} |", m.rps, m.cpu_us, m.p50_us, m.p99_us);
        }
        if telemetry {
            let series = metrics.encode().lines().filter(|l| l.starts_with("istio_requests_total{")).count();
            println!("telemetry: {series} istio_requests_total series recorded");
        }
        println!(
            "{test_name} vs {base_name}: throughput {:.1}% of the baseline ({:+.1}%), added CPU {:.2} µs/request ({:.2}× the baseline CPU)",
            100.0 * m.rps / b.rps,
            100.0 * (m.rps / b.rps - 1.0),
            m.cpu_us - b.cpu_us,
            m.cpu_us / b.cpu_us
        );
        println!(
            "added CPU per request across the {rounds} pairs: min {:.2}, median {:.2}, max {:.2} µs",
            added[0],
            added[added.len() / 2],
            added[added.len() - 1]
        );
        println!(
            "added user CPU per request (the stack's own code, without the kernel's share) across the {rounds} pairs: min {:.2}, median {:.2}, max {:.2} µs",
            added_user[0],
            added_user[added_user.len() / 2],
            added_user[added_user.len() - 1]
        );
        println!(
            "{test_name} throughput as a share of {base_name} across the {rounds} pairs: min {:.1}%, median {:.1}%, max {:.1}%",
            100.0 * ratios[0],
            100.0 * ratios[ratios.len() / 2],
            100.0 * ratios[ratios.len() - 1]
        );
        let Ok(bin) = std::env::var("MESH_ENVOY") else { return };
        let dir = tempfile::tempdir().unwrap();
        let (p1, p2) = (free_port(), free_port());
        let mut e1 = envoy(&bin, p1, addr, dir.path());
        let mut e2 = envoy(&bin, p2, SocketAddr::from(([127, 0, 0, 1], p1)), dir.path());
        let through = |port: u16| {
            load::bare_get(format!("http://127.0.0.1:{port}/productpage").parse().unwrap())
        };
        let (one_hop, two_hops) = (through(p1), through(p2));
        // Wait for both Envoys to serve.
        for _ in 0..100 {
            if one_hop().await && two_hops().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (pid1, pid2) = (e1.id(), e2.id());
        drive(5_000, concurrency, &[pid1], one_hop.clone()).await;
        drive(5_000, concurrency, &[pid1, pid2], two_hops.clone()).await;
        let (mut one_runs, mut two_runs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            one_runs.push(drive(requests, concurrency, &[pid1], one_hop.clone()).await);
            two_runs.push(drive(requests, concurrency, &[pid1, pid2], two_hops.clone()).await);
        }
        let (o, t) = (med(&mut one_runs), med(&mut two_runs));
        let rss = (rss_mib("self"), rss_mib(&pid1.to_string()), rss_mib(&pid2.to_string()));
        println!();
        println!("sidecar comparison (Envoy --concurrency 2 per proxy; Envoy CPU measured from its /proc)");
        println!("| path | req/s | client+backend CPU µs/req | Envoy CPU µs/req | p50 µs | p99 µs |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        for (name, r) in [("bare hyper → backend", &b), ("mesh stack → backend", &m), ("hyper → Envoy → backend", &o), ("hyper → Envoy → Envoy → backend", &t)] {
            println!("| {name} | {:.0} | {:.1} | {:.1} | {} | {} |", r.rps, r.cpu_us, r.envoy_cpu_us, r.p50_us, r.p99_us);
        }
        let mesh_added_cpu = m.cpu_us - b.cpu_us;
        let envoy_added_cpu = o.cpu_us + o.envoy_cpu_us - b.cpu_us;
        let mesh_added_p50 = m.p50_us as f64 - b.p50_us as f64;
        let envoy_added_p50 = o.p50_us as f64 - b.p50_us as f64;
        println!(
            "added per request over bare: mesh {mesh_added_cpu:.2} µs CPU, {mesh_added_p50:.0} µs p50; one Envoy hop {envoy_added_cpu:.2} µs CPU, {envoy_added_p50:.0} µs p50 → Envoy/mesh: {:.1}× CPU, {:.1}× p50",
            envoy_added_cpu / mesh_added_cpu,
            envoy_added_p50 / mesh_added_p50.max(1.0)
        );
        println!("memory (RSS): client+backend process {:.0} MiB, each Envoy {:.0} / {:.0} MiB", rss.0, rss.1, rss.2);
        let _ = e1.kill();
        let _ = e2.kill();
        let _ = e1.wait();
        let _ = e2.wait();
    });
}
