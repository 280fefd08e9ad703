//! The `mesh` CLI's commands, as functions that return their output (so tests can run them).

pub mod proxy_config;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use mesh_core::MeshSnapshot;
use mesh_tower::MeshBody;
use mesh_xds_client::dump::{certificates_json, snapshot_json, status_json};
use mesh_xds_client::{Bootstrap, Protocol, ResourceState, XdsClientBuilder, XdsStatus};
use serde_json::{Value, json};

/// How the CLI connects to the control plane (shared by its commands).
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// Bootstrap file; `None` reads the gRPC environment variables.
    pub bootstrap: Option<PathBuf>,
    /// `sotw` or `delta`.
    pub protocol: Option<String>,
    /// Disk cache directory.
    pub cache_dir: Option<PathBuf>,
    /// How long to wait for the configuration.
    pub timeout: Duration,
    /// One JSON object instead of text.
    pub json: bool,
}

/// Starts an xDS client for `targets` and waits until their configuration is complete; on
/// timeout the error says what is still missing.
async fn connect(
    opts: &XdsOptions,
    targets: &[String],
) -> Result<(mesh_xds_client::XdsClient, std::sync::Arc<MeshSnapshot>), String> {
    connect_with(opts, load_bootstrap(opts)?, targets).await
}

/// The bootstrap `opts` names (else the gRPC environment variables').
fn load_bootstrap(opts: &XdsOptions) -> Result<Bootstrap, String> {
    match &opts.bootstrap {
        Some(path) => Bootstrap::from_file(path),
        None => Bootstrap::from_env(),
    }
    .map_err(|e| e.to_string())
}

/// [`connect`] with this bootstrap.
async fn connect_with(
    opts: &XdsOptions,
    bootstrap: Bootstrap,
    targets: &[String],
) -> Result<(mesh_xds_client::XdsClient, std::sync::Arc<MeshSnapshot>), String> {
    let mut builder = XdsClientBuilder::new(bootstrap);
    if let Some(p) = &opts.protocol {
        builder = builder.protocol(
            p.parse::<Protocol>()
                .map_err(|e| format!("--xds-protocol: {e}"))?,
        );
    }
    if let Some(dir) = &opts.cache_dir {
        builder = builder.cache_dir(dir);
    }
    for t in targets {
        builder = builder.target(t);
    }
    let client = builder.start().map_err(|e| e.to_string())?;
    match tokio::time::timeout(opts.timeout, client.ready()).await {
        Ok(Ok(snapshot)) => Ok((client, snapshot)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            let status = client.status().await.ok_or("the xDS client stopped")?;
            Err(missing(&status, opts.timeout))
        }
    }
}

/// Arguments of `mesh config-dump`.
#[derive(Debug, Clone)]
pub struct ConfigDumpArgs {
    /// Targets (`host:port` or `xds:///host:port`).
    pub targets: Vec<String>,
    /// The resources as received, decoded whole (`raw_dump`), instead of mesh's view.
    pub raw: bool,
    /// Connection options.
    pub xds: XdsOptions,
}

/// Connects, waits until the targets' configuration is complete, and renders it with the xDS
/// status. On timeout the error lists what is still missing.
pub async fn config_dump(args: ConfigDumpArgs) -> Result<String, String> {
    let (client, snapshot) = connect(&args.xds, &args.targets).await?;
    if args.raw {
        let raw = client
            .raw_resources()
            .await
            .ok_or("the xDS client stopped")?;
        return Ok(raw_dump(&raw));
    }
    let status = client.status().await.ok_or("the xDS client stopped")?;
    let certificates = certificates_json(&client.certificates().borrow());
    Ok(if args.xds.json {
        let mut v = snapshot_json(&snapshot);
        v["xds"] = status_json(&status);
        v["certificates"] = certificates;
        format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
    } else {
        render_text(&snapshot, &status, &certificates)
    })
}

fn missing(status: &XdsStatus, timeout: Duration) -> String {
    let mut msg = format!("no complete configuration after {timeout:?}");
    if let Some(e) = &status.health.last_error {
        let _ = write!(msg, "; last error: {e}");
    } else if !status.health.connected {
        msg.push_str("; not connected to the control plane");
    }
    let waiting: Vec<String> = status
        .resources
        .iter()
        .filter(|r| r.state == ResourceState::Requested)
        .map(|r| format!("{} {}", r.resource_type, r.name))
        .collect();
    if !waiting.is_empty() {
        let _ = write!(msg, "; still waiting for: {}", waiting.join(", "));
    }
    msg
}

fn render_text(s: &MeshSnapshot, st: &XdsStatus, certificates: &Value) -> String {
    let v = snapshot_json(s);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "configuration{}:",
        if s.is_stale() {
            " (STALE: from the disk cache, not yet confirmed)"
        } else {
            ""
        }
    );
    for l in v["listeners"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  listener {}", l["name"].as_str().unwrap_or_default());
        for vh in l["route_config"]["virtual_hosts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let _ = writeln!(
                out,
                "    virtual host {} {}",
                vh["name"].as_str().unwrap_or_default(),
                vh["domains"]
            );
            for r in vh["routes"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "      route {:<16} → {}",
                    r["name"].as_str().unwrap_or_default(),
                    r["clusters"]
                );
            }
        }
    }
    for c in v["clusters"].as_array().into_iter().flatten() {
        let tls = match c["tls"]["identity_provider"].as_str() {
            Some(p) => format!("  mTLS(provider={p})"),
            None if c["tls"].is_object() => "  TLS".to_string(),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  cluster {}  lb={} max_requests={}{tls}",
            c["name"].as_str().unwrap_or_default(),
            c["lb_policy"].as_str().unwrap_or_default(),
            c["circuit_breakers"]["max_requests"]
        );
        for e in c["endpoints"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    endpoint {} {} weight={}",
                e["address"].as_str().unwrap_or_default(),
                e["health"].as_str().unwrap_or_default(),
                e["weight"]
            );
        }
    }
    if let Some(providers) = certificates.as_object().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "certificates:");
        for (name, p) in providers {
            let id = &p["identity"];
            let what = if id.is_object() {
                format!(
                    "{} serial {} valid {} to {}",
                    id["spiffe_id"].as_str().unwrap_or("(no SPIFFE ID)"),
                    id["serial"].as_str().unwrap_or_default(),
                    id["not_before"].as_str().unwrap_or_default(),
                    id["not_after"].as_str().unwrap_or_default()
                )
            } else {
                "no workload certificate".to_string()
            };
            let _ = writeln!(out, "  {name}: {what}; roots: {}", p["roots"]);
            if let Some(e) = p["last_error"].as_str() {
                let _ = writeln!(out, "    last error: {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "xDS ({:?}, {}):",
        st.protocol,
        if st.health.connected {
            "connected"
        } else {
            "disconnected"
        }
    );
    for (t, version, nonce) in &st.types {
        let _ = writeln!(out, "  {t} version={version:?} nonce={nonce:?}");
    }
    for r in &st.resources {
        let state = match &r.state {
            ResourceState::Nacked { version, error } => {
                format!("NACKED version {version}: {error}")
            }
            other => format!("{other:?}").to_uppercase(),
        };
        let _ = writeln!(
            out,
            "  {} {} version={:?} {}",
            r.resource_type, r.name, r.version, state
        );
    }
    out
}

/// Runs `mesh control-plane`: serves the directory, prints each reload and each client's
/// ACK/NACK changes, until interrupted.
#[cfg(feature = "control-plane")]
pub async fn control_plane(dir: PathBuf, listen: std::net::SocketAddr) -> Result<(), String> {
    use mesh_control_plane::ControlPlane;
    use mesh_control_plane::watch::{Reload, load, watch_dir};

    let resources = load(&dir).map_err(|e| e.to_string())?;
    for w in &resources.warnings {
        println!("warning: {w}");
    }
    let summary = |r: &mesh_control_plane::Resources| {
        format!(
            "{} listeners, {} route configurations, {} clusters, {} endpoint sets",
            r.listeners.len(),
            r.routes.len(),
            r.clusters.len(),
            r.endpoints.len()
        )
    };
    println!("serving {} from {}", summary(&resources), dir.display());
    for name in resources.listeners.keys() {
        println!("  listener {name}");
    }
    for name in resources.clusters.keys() {
        println!("  cluster {name}");
    }
    let cp = ControlPlane::new(resources);
    let addr = cp
        .clone()
        .spawn(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    println!("ADS (SotW and Delta) on {addr}");
    let watcher_cp = cp.clone();
    tokio::spawn(watch_dir(
        dir,
        cp.clone(),
        Duration::from_millis(250),
        move |r| match r {
            Reload::Served { version, warnings } => {
                for w in warnings {
                    println!("warning: {w}");
                }
                println!(
                    "config changed: now serving version v{version}: {}",
                    summary(&watcher_cp.served().resources)
                );
            }
            Reload::Rejected(e) => {
                println!("rejected edit (still serving the previous config): {e}")
            }
        },
    ));
    let mut last: std::collections::BTreeMap<u64, String> = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        let mut now = std::collections::BTreeMap::new();
        for c in cp.clients() {
            let types: Vec<String> = c
                .types
                .iter()
                .map(|(t, s)| match &s.nack {
                    Some(e) => format!("{t} NACK ({e})"),
                    None if s.sent.is_empty() => format!("{t} requested"),
                    None if s.acked.is_empty() => format!("{t} sent {}", s.sent),
                    None if s.acked != s.sent => format!("{t} sent {}, ACK {}", s.sent, s.acked),
                    None => format!("{t} ACK {}", s.acked),
                })
                .collect();
            now.insert(
                c.id,
                format!(
                    "client {} {} [{}]: {}",
                    c.id,
                    c.protocol,
                    c.node,
                    types.join(", ")
                ),
            );
        }
        for (id, line) in &now {
            if last.get(id) != Some(line) {
                println!("{line}");
            }
        }
        for id in last.keys().filter(|id| !now.contains_key(id)) {
            println!("client {id} disconnected");
        }
        last = now;
    }
}

/// Arguments of `mesh request`.
#[derive(Debug, Clone)]
pub struct RequestArgs {
    /// The URL; its `host:port` names the listener.
    pub url: String,
    /// Requests to send.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Method.
    pub method: String,
    /// Extra headers `name: value`.
    pub headers: Vec<String>,
    /// What each request carries.
    pub body: RequestBody,
    /// Serve an admin endpoint here while the requests run.
    pub admin: Option<std::net::SocketAddr>,
    /// Write the client's metrics (Prometheus text) here at the end.
    pub metrics_file: Option<PathBuf>,
    /// Propagate traces, sampling this percentage of the traces it starts.
    pub trace_sampling: Option<f64>,
    /// Push the client's metrics to this OTLP/gRPC collector at the end.
    pub otlp: Option<String>,
    /// Connection options.
    pub xds: XdsOptions,
}

/// The body of `mesh request`'s requests.
#[derive(Debug, Clone, Default)]
pub enum RequestBody {
    /// None.
    #[default]
    Empty,
    /// These bytes.
    Data(bytes::Bytes),
    /// A gRPC call with an empty message (`POST`, `content-type: application/grpc`).
    GrpcEmpty,
}

impl RequestBody {
    /// From `--data` and `--grpc`.
    pub fn from_flags(data: Option<String>, grpc: bool) -> Self {
        match (data, grpc) {
            (_, true) => Self::GrpcEmpty,
            (Some(d), false) => Self::Data(d.into()),
            (None, false) => Self::Empty,
        }
    }
}

/// Runs `mesh request`: waits for the URL's configuration, sends the requests through the full
/// stack and summarizes statuses, stack errors, clusters, endpoints, attempts and latency.
pub async fn request(args: RequestArgs) -> Result<String, String> {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let uri: http::Uri = args
        .url
        .parse()
        .map_err(|e| format!("invalid URL {:?}: {e}", args.url))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("the URL {:?} has no host", args.url))?;
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    let target = format!("{host}:{port}");
    let method: http::Method = args
        .method
        .parse()
        .map_err(|_| format!("invalid method {:?}", args.method))?;
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} is not `name: value`"))?;
        let k: http::HeaderName = k
            .trim()
            .parse()
            .map_err(|_| format!("invalid header name in {h:?}"))?;
        let v: http::HeaderValue = v
            .trim()
            .parse()
            .map_err(|_| format!("invalid header value in {h:?}"))?;
        headers.append(k, v);
    }
    let bootstrap = load_bootstrap(&args.xds)?;
    // Metrics only when someone will read them.
    let telemetry = (args.admin.is_some() || args.metrics_file.is_some() || args.otlp.is_some())
        .then(|| {
            mesh_tower::telemetry::Telemetry::for_node(bootstrap.workload(), &bootstrap.node.id)
        });
    let (client, _) = connect_with(&args.xds, bootstrap, std::slice::from_ref(&target)).await?;
    let client = std::sync::Arc::new(client);
    if let Some(t) = &telemetry {
        t.follow_identity(
            client.certificates(),
            mesh_xds_client::certs::DEFAULT_INSTANCE,
        );
    }
    let mut config = mesh_tower::MeshConfig::default();
    let tracer = args
        .trace_sampling
        .map(mesh_tower::telemetry::Tracer::with_sampling);
    if let Some(o) = mesh_tower::telemetry::client_observer(telemetry.as_ref(), tracer) {
        config = config.observer(o);
    }
    let svc = mesh_tower::MeshService::with_certificates(
        client.snapshots(),
        client.certificates(),
        config,
    );
    if let Some(addr) = args.admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        let stack = svc.clone();
        let admin = mesh::admin::with_xds(
            mesh_tower::admin::Admin::new(telemetry.clone()).runtime(move || stack.runtime()),
            &client,
            &format!("xds:///{target}"),
        );
        eprintln!("admin on {addr}");
        tokio::spawn(admin.serve(listener));
    }
    let uri = std::sync::Arc::new(uri);
    let headers = std::sync::Arc::new(headers);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (svc, uri, headers, method, next, body) = (
            svc.clone(),
            uri.clone(),
            headers.clone(),
            method.clone(),
            next.clone(),
            args.body.clone(),
        );
        let n = args.requests;
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let mut req = http::Request::new(http_body_util::Full::new(match &body {
                    RequestBody::Empty => bytes::Bytes::new(),
                    RequestBody::Data(d) => d.clone(),
                    // A length-prefixed empty message: flag 0, length 0.
                    RequestBody::GrpcEmpty => bytes::Bytes::from_static(&[0; 5]),
                }));
                *req.method_mut() = method.clone();
                *req.uri_mut() = (*uri).clone();
                *req.headers_mut() = (*headers).clone();
                if matches!(body, RequestBody::GrpcEmpty) {
                    *req.method_mut() = http::Method::POST;
                    let h = req.headers_mut();
                    h.insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
                }
                let started = tokio::time::Instant::now();
                let Ok(resp) = svc.clone().oneshot(req).await;
                let status = resp.status().as_u16();
                let error = resp
                    .headers()
                    .get(mesh_tower::ERROR_HEADER)
                    .or_else(|| resp.headers().get(mesh_tower::OVERFLOW_HEADER))
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let info = resp.extensions().get::<mesh_tower::MeshInfo>().cloned();
                let grpc_header = resp.headers().get("grpc-status").cloned();
                let (body, trailers) = match resp.into_body().collect().await {
                    Ok(c) => {
                        let t = c.trailers().cloned();
                        (c.to_bytes(), t)
                    }
                    Err(_) => (bytes::Bytes::new(), None),
                };
                let grpc_status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .or(grpc_header.as_ref())
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let shown = match &grpc_status {
                    Some(s) => format!("grpc-status {s}"),
                    None => {
                        let text = String::from_utf8_lossy(&body);
                        text.trim().chars().take(200).collect()
                    }
                };
                results.push((status, error, info, started.elapsed(), shown));
            }
            results
        }));
    }
    let mut status: std::collections::BTreeMap<String, u64> = Default::default();
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    let mut clusters: std::collections::BTreeMap<String, u64> = Default::default();
    let mut endpoints: std::collections::BTreeMap<String, u64> = Default::default();
    let mut bodies: std::collections::BTreeMap<String, u64> = Default::default();
    let (mut attempts, mut latencies) = (0u64, Vec::new());
    for w in workers {
        for (s, e, info, latency, shown) in w.await.map_err(|e| e.to_string())? {
            if e.is_none() {
                *bodies.entry(shown).or_default() += 1;
            }
            *status.entry(s.to_string()).or_default() += 1;
            if let Some(e) = e {
                *errors.entry(e).or_default() += 1;
            }
            if let Some(i) = info {
                attempts += u64::from(i.attempts);
                if let Some(c) = &i.cluster {
                    *clusters.entry(c.to_string()).or_default() += 1;
                }
                if let Some(ep) = i.endpoint {
                    *endpoints.entry(ep.to_string()).or_default() += 1;
                }
            }
            latencies.push(latency.as_micros() as u64);
        }
    }
    latencies.sort_unstable();
    let q = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    if let (Some(path), Some(t)) = (&args.metrics_file, &telemetry) {
        std::fs::write(path, t.encode())
            .map_err(|e| format!("cannot write the metrics to {}: {e}", path.display()))?;
    }
    if let (Some(url), Some(t)) = (&args.otlp, &telemetry) {
        mesh::otlp::push_metrics_once(t, url, "mesh")
            .await
            .map_err(|e| e.to_string())?;
    }
    let summary = json!({
        "requests": latencies.len(),
        "status": status,
        "errors": errors,
        "clusters": clusters,
        "endpoints": endpoints,
        "bodies": bodies,
        "attempts": attempts,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": latencies.last().copied().unwrap_or(0)},
    });
    if args.xds.json {
        return Ok(format!("{summary}\n"));
    }
    let mut out = format!(
        "{} requests to {} ({} attempts)\n",
        latencies.len(),
        args.url,
        attempts
    );
    for (k, title) in [
        ("status", "status"),
        ("errors", "errors"),
        ("clusters", "clusters"),
        ("endpoints", "endpoints"),
        ("bodies", "answers (body, or gRPC status)"),
    ] {
        if let Some(m) = summary[k].as_object().filter(|m| !m.is_empty()) {
            let _ = writeln!(out, "{title}:");
            for (name, n) in m {
                let _ = writeln!(out, "  {name}: {n}");
            }
        }
    }
    let _ = writeln!(
        out,
        "latency: p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
        q(0.5),
        q(0.9),
        q(0.99),
        latencies.last().copied().unwrap_or(0)
    );
    Ok(out)
}

/// Arguments of `mesh serve`.
#[derive(Debug, Clone)]
pub struct ServeArgs {
    /// The gRPC bootstrap (default: `GRPC_XDS_BOOTSTRAP` / `GRPC_XDS_BOOTSTRAP_CONFIG`).
    pub bootstrap: Option<PathBuf>,
    /// Where to listen (the listener is named after it).
    pub listen: std::net::SocketAddr,
    /// Where to serve the admin endpoint (liveness, readiness, metrics), if anywhere.
    pub admin: Option<std::net::SocketAddr>,
    /// Continue callers' traces, sampling this percentage of the traces it starts.
    pub trace_sampling: Option<f64>,
}

/// The body `mesh serve` answers with: who answered, what, for whom.
fn serve_answer(workload: &str, req: &http::Request<mesh_tower::server::InboundBody>) -> String {
    let caller = req
        .extensions()
        .get::<mesh_tower::PeerInfo>()
        .map(|p| match &p.spiffe_id {
            Some(id) => id.to_string(),
            None if p.tls => "an unnamed TLS peer".to_string(),
            None => format!("anonymous ({})", p.remote),
        })
        .unwrap_or_else(|| "unknown".into());
    let user = req
        .extensions()
        .get::<mesh_core::jwt::RequestAuth>()
        .map(|a| format!(" (request principal {})", a.principal))
        .unwrap_or_default();
    format!(
        "{workload} answered {} {} for {caller}{user}",
        req.method(),
        req.uri().path()
    )
}

/// A gRPC answer: one message whose field 1 is `text` (`helloworld.HelloReply`), then OK.
fn grpc_answer(text: &str) -> http::Response<MeshBody> {
    use http_body_util::BodyExt;
    let mut msg = vec![0x0a];
    let mut n = text.len();
    // A protobuf varint of the length.
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            msg.push(byte);
            break;
        }
        msg.push(byte | 0x80);
    }
    msg.extend_from_slice(text.as_bytes());
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&msg);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(frame))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(tokio_stream::iter(frames))
        .map_err(|e: std::convert::Infallible| match e {})
        .boxed_unsync();
    let mut r = http::Response::new(body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    r
}

/// Runs `mesh serve`: the server stack on `listen`, configured by the control plane, answering
/// every request with who answered and for whom; prints each change of its serving state.
pub async fn serve(args: ServeArgs) -> Result<(), String> {
    let bootstrap = match &args.bootstrap {
        Some(path) => Bootstrap::from_file(path),
        None => Bootstrap::from_env(),
    }
    .map_err(|e| e.to_string())?;
    let workload = bootstrap
        .node
        .metadata
        .get("WORKLOAD_NAME")
        .and_then(|v| v.as_str())
        .map(String::from)
        .unwrap_or_else(|| bootstrap.node.id.clone());
    let telemetry =
        mesh_tower::telemetry::Telemetry::for_node(bootstrap.workload(), &bootstrap.node.id);
    let client = std::sync::Arc::new(
        XdsClientBuilder::new(bootstrap)
            .start()
            .map_err(|e| e.to_string())?,
    );
    telemetry.follow_identity(
        client.certificates(),
        mesh_xds_client::certs::DEFAULT_INSTANCE,
    );
    let name = client
        .subscribe_server(args.listen)
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let server = mesh_tower::MeshServer::new(
        name.clone(),
        args.listen,
        client.snapshots(),
        client.certificates(),
    )
    .telemetry(telemetry.clone());
    let server = match args.trace_sampling {
        Some(p) => server.tracing(mesh_tower::telemetry::Tracer::with_sampling(p)),
        None => server,
    };
    if let Some(addr) = args.admin {
        let admin_listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (admin): {e}"))?;
        let state = server.serving();
        let admin = mesh_tower::admin::Admin::new(Some(telemetry)).ready_while_serving(state);
        let admin = mesh::admin::with_xds(admin, &client, "#server");
        println!("admin on {addr}");
        tokio::spawn(admin.serve(admin_listener));
    }
    let mut serving = server.serving();
    let listen = args.listen;
    tokio::spawn(async move {
        loop {
            let state = serving.borrow_and_update().clone();
            match state {
                mesh_tower::ServingState::Serving => println!("serving on {listen} ({name})"),
                mesh_tower::ServingState::NotServing(why) => println!("not serving: {why}"),
            }
            if serving.changed().await.is_err() {
                return;
            }
        }
    });
    let workload: std::sync::Arc<str> = workload.into();
    let app = tower::service_fn(move |req: http::Request<mesh_tower::server::InboundBody>| {
        let text = serve_answer(&workload, &req);
        async move {
            let resp = if mesh_tower::protocol::is_grpc(req.headers()) {
                grpc_answer(&text)
            } else {
                http::Response::new(mesh_tower::body::full(format!("{text}\n")))
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let result = server.serve(listener, app).await;
    drop(client);
    result.map_err(|e| format!("accepting on {listen}: {e}"))
}

/// Resources exactly as received, each decoded and printed with its nested `Any`s decoded too
/// (listeners' connection managers and filters, TLS contexts, RBAC, faults), sorted by type and
/// name: the raw material of a diff between two control planes. Map fields keep protobuf's
/// unordered iteration; `scripts/istiod/xds-diff.sh` sorts them.
pub fn raw_dump(
    resources: &[(
        mesh_xds_client::ResourceType,
        String,
        envoy_types::pb::google::protobuf::Any,
    )],
) -> String {
    let mut sorted: Vec<_> = resources.iter().collect();
    sorted.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out = String::new();
    for (ty, name, any) in sorted {
        let _ = writeln!(out, "=== {ty} {name}");
        out.push_str(&expand_any(&any.type_url, &any.value));
        out.push('\n');
    }
    out
}

/// The pretty `Debug` of the message an `Any` holds, nested `Any`s expanded in turn.
fn expand_any(type_url: &str, value: &[u8]) -> String {
    use envoy_types::pb::envoy::config as c;
    use envoy_types::pb::envoy::extensions::filters::http as h;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use prost::Message;
    fn show<M: Message + Default + std::fmt::Debug>(v: &[u8]) -> Option<String> {
        M::decode(v).ok().map(|m| format!("{m:#?}"))
    }
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let text = match name {
        "envoy.config.listener.v3.Listener" => show::<c::listener::v3::Listener>(value),
        "envoy.config.route.v3.RouteConfiguration" => {
            show::<c::route::v3::RouteConfiguration>(value)
        }
        "envoy.config.cluster.v3.Cluster" => show::<c::cluster::v3::Cluster>(value),
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => {
            show::<c::endpoint::v3::ClusterLoadAssignment>(value)
        }
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            show::<HttpConnectionManager>(value)
        }
        "envoy.extensions.filters.http.router.v3.Router" => show::<h::router::v3::Router>(value),
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => {
            show::<h::fault::v3::HttpFault>(value)
        }
        "envoy.extensions.filters.http.rbac.v3.RBAC" => show::<h::rbac::v3::Rbac>(value),
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => {
            show::<h::rbac::v3::RbacPerRoute>(value)
        }
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => {
            show::<tls::UpstreamTlsContext>(value)
        }
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => {
            show::<tls::DownstreamTlsContext>(value)
        }
        _ => None,
    };
    match text {
        Some(t) => expand_nested(&t),
        None => format!("<{} bytes of {name}>", value.len()),
    }
}

/// Replaces each pretty-printed `Any { type_url, value: [bytes] }` in `text` by what it holds.
fn expand_nested(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let url = lines
            .get(i + 1)
            .and_then(|l| l.trim().strip_prefix("type_url: \""))
            .and_then(|l| l.strip_suffix("\","));
        if line.trim_end().ends_with("Any {") && url.is_some() {
            // `value: [` then one byte per line, then `],`, then the closing `}`.
            let url = url.unwrap_or_default();
            let mut bytes = Vec::new();
            let mut j = i + 3;
            while let Some(l) = lines.get(j) {
                match l.trim().trim_end_matches(',').parse::<u8>() {
                    Ok(b) => bytes.push(b),
                    Err(_) => break,
                }
                j += 1;
            }
            let head = &line[..line.len() - "Any {".len()];
            let pad = " ".repeat(indent);
            let inner = expand_any(url, &bytes);
            let _ = write!(out, "{head}{url} ");
            for (k, l) in inner.lines().enumerate() {
                if k > 0 {
                    out.push_str(&pad);
                }
                out.push_str(l);
                out.push('\n');
            }
            // Skip `],` and the Any's closing brace, keeping what follows it (`},` → `,`).
            let close = lines.get(j + 1).map(|l| l.trim()).unwrap_or("}");
            if close.ends_with(',') {
                out.pop();
                out.push_str(",\n");
            }
            i = j + 2;
            continue;
        }
        out.push_str(line);
        out.push('\n');
        i += 1;
    }
    out
}
