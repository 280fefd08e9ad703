//! The harness of the stack tests: hyper backends on 127.0.0.1, the local control plane
//! translating Istio YAML, mesh's xDS client over ADS, and a stack in front.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_control_plane::{ControlPlane, IstioConfig, translate};
use mesh_tower::{ERROR_HEADER, MeshConfig, MeshInfo, MeshService, OVERFLOW_HEADER};
use mesh_xds_client::{Bootstrap, XdsClient, XdsClientBuilder};
use tower::ServiceExt;

pub mod tls;

pub const HOST: &str = "ui.default.svc.cluster.local";

/// How a backend answers.
#[derive(Clone, Copy)]
pub enum Behavior {
    Ok,
    /// 503 on every other request.
    FailHalf,
    /// 503 always.
    FailAll,
    /// Waits, then answers.
    Slow(Duration),
    /// Waits, then answers 503.
    SlowFail(Duration),
}

pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

pub async fn backend(name: &'static str, behavior: Behavior) -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = h.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let _ = req.into_body().collect().await;
                        let status = match behavior {
                            Behavior::Ok => StatusCode::OK,
                            Behavior::FailHalf if n.is_multiple_of(2) => {
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                            Behavior::FailHalf => StatusCode::OK,
                            Behavior::FailAll => StatusCode::SERVICE_UNAVAILABLE,
                            Behavior::Slow(d) => {
                                tokio::time::sleep(d).await;
                                StatusCode::OK
                            }
                            Behavior::SlowFail(d) => {
                                tokio::time::sleep(d).await;
                                StatusCode::SERVICE_UNAVAILABLE
                            }
                        };
                        let mut r = Response::new(Full::new(Bytes::from(name)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Backend { addr, hits }
}

/// YAML for `ui` with version-1 on `v1` and version-2-beta on `v2`, a DestinationRule with
/// `policy` (indented under trafficPolicy), and the VirtualService `http` block.
pub fn yaml(v1: &[SocketAddr], v2: &[SocketAddr], policy: &str, http: &str) -> String {
    let mut eps = String::new();
    for (addrs, version) in [(v1, "v1"), (v2, "v2")] {
        for a in addrs {
            eps.push_str(&format!("  - address: 127.0.0.1\n    ports: {{http: {}}}\n    labels: {{version: {version}}}\n", a.port()));
        }
    }
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  ports: [{{number: 9080, name: http}}]\n  endpoints:\n{eps}---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: ui}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n{policy}\n  subsets:\n  - name: version-1\n    labels: {{version: v1}}\n  - name: version-2-beta\n    labels: {{version: v2}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ui}}\nspec:\n  hosts: [{HOST}]\n  http:\n{http}"
    )
}

pub const SPLIT_90_10: &str = "  - name: beta\n    match:\n    - headers: {version: {exact: beta}}\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-2-beta}\n  - name: canary\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n      weight: 90\n    - destination: {host: ui.default.svc.cluster.local, subset: version-2-beta}\n      weight: 10\n";

pub fn resources(yaml: &str) -> mesh_control_plane::Resources {
    let mut cfg = IstioConfig::default();
    cfg.add_text("test.yaml", yaml).unwrap();
    translate(&cfg).unwrap()
}

pub struct Mesh {
    pub cp: ControlPlane,
    pub client: XdsClient,
    pub svc: MeshService,
}

/// A DestinationRule policy balancing round robin.
pub const ROUND_ROBIN: &str = "    loadBalancer: {simple: ROUND_ROBIN}";

/// `ui` with these version-1 endpoints, balanced round robin, routed by `http`.
pub async fn round_robin(v1: &[SocketAddr], http: &str) -> Mesh {
    mesh(&yaml(v1, &[], ROUND_ROBIN, http)).await
}

pub async fn mesh(yaml: &str) -> Mesh {
    mesh_with(yaml, MeshConfig::default()).await
}

pub async fn mesh_with(yaml: &str, config: MeshConfig) -> Mesh {
    mesh_with_bootstrap(yaml, config, "").await
}

/// [`mesh_with`] with `extra` (`"key": value` pairs) added to the bootstrap.
pub async fn mesh_with_bootstrap(yaml: &str, config: MeshConfig, extra: &str) -> Mesh {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    let cp = ControlPlane::new(resources(yaml));
    let addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let b = Bootstrap::from_json(
        &format!(r#"{{"xds_servers": [{{"server_uri": "{addr}", "channel_creds": [{{"type": "insecure"}}]}}], "node": {{"id": "sidecar~127.0.0.1~t.default~default.svc.cluster.local"}}{extra}}}"#),
        "test",
    )
    .unwrap();
    let client = XdsClientBuilder::new(b)
        .target(format!("{HOST}:9080"))
        .start()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.ready())
        .await
        .expect("config ready")
        .expect("config ready");
    let svc = MeshService::with_certificates(client.snapshots(), client.certificates(), config);
    Mesh { cp, client, svc }
}

pub async fn send<C: mesh_tower::MeshConnector>(
    svc: &MeshService<C>,
    headers: &[(&str, &str)],
) -> (StatusCode, String, Option<MeshInfo>) {
    let mut req = Request::get(format!("http://{HOST}:9080/productpage"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = svc
        .clone()
        .oneshot(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let info = resp.extensions().get::<MeshInfo>().cloned();
    let err = resp
        .headers()
        .get(ERROR_HEADER)
        .or(resp.headers().get(OVERFLOW_HEADER))
        .map(|v| v.to_str().unwrap().to_string());
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).to_string();
    (status, err.unwrap_or(body), info)
}

/// A backend that counts its open connections.
pub async fn counting_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicU64::new(0));
    let o = open.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            o.fetch_add(1, Ordering::Relaxed);
            let o = o.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"v1"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                o.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    (addr, open)
}

/// What a recording backend saw.
#[derive(Default)]
pub struct Seen {
    /// Per request: request target, `Host` header, HTTP version, URI authority.
    pub requests: std::sync::Mutex<Vec<(String, String, http::Version, String)>>,
    pub accepted: AtomicU64,
    pub open: AtomicU64,
}

/// A backend (HTTP/1.1 and h2c) recording its requests and connections; with `keep_alive`
/// off it closes each connection after one response.
pub async fn recording_backend(keep_alive: bool) -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            s.accepted.fetch_add(1, Ordering::Relaxed);
            s.open.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let s2 = s.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .map(|h| h.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let target = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    // The request line as sent: origin-form has no scheme.
                    let target = match req.uri().scheme() {
                        Some(_) if req.version() == http::Version::HTTP_11 => req.uri().to_string(),
                        _ => target,
                    };
                    s2.requests
                        .lock()
                        .unwrap()
                        .push((target, host, req.version(), authority));
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(keep_alive);
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                s.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    (addr, seen)
}

pub const ROUTE_V1: &str = "  - name: r\n    route:\n    - destination: {host: ui.default.svc.cluster.local, subset: version-1}\n";

/// Sends an HTTP/2 request (h2c upstream) and reads its body.
pub async fn send_h2(svc: &MeshService) -> StatusCode {
    let req = Request::get(format!("http://{HOST}:9080/productpage"))
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = svc.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// A recording backend as the only endpoint of `ui`, and a stack in front of it.
pub async fn one_recorded_endpoint(keep_alive: bool, config: MeshConfig) -> (Mesh, Arc<Seen>) {
    let (a, seen) = recording_backend(keep_alive).await;
    (
        mesh_with(&yaml(&[a], &[], ROUND_ROBIN, ROUTE_V1), config).await,
        seen,
    )
}

/// The request headers a backend saw, in arrival order.
pub type SeenHeaders = Arc<std::sync::Mutex<Vec<http::HeaderMap>>>;

/// A backend recording each request's headers; the first `fail_first` requests get 503.
pub async fn header_backend(fail_first: u64) -> (SocketAddr, SeenHeaders) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = SeenHeaders::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let n = {
                        let mut all = s.lock().unwrap();
                        all.push(req.headers().clone());
                        all.len() as u64
                    };
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                        if n <= fail_first {
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
    (addr, seen)
}

/// A GET of `path` on `ui` through `svc`, its body read; its status.
pub async fn get_path(svc: &MeshService, path: &str) -> StatusCode {
    let resp = svc
        .clone()
        .oneshot(
            Request::get(format!("http://{HOST}:9080{path}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}
