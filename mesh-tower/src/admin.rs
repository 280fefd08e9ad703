//! The admin endpoint: liveness, readiness and Istio's metrics, as a tower service the
//! application mounts or runs on its own port ([`Admin::serve`]).
//!
//! - `/live`: 200 while the process answers.
//! - `/ready`: 200 while the readiness check passes (the configuration is complete and, for a
//!   server, it is serving), else 503 with the reason.
//! - `/stats/prometheus` and `/metrics`: the metrics as OpenMetrics text (what Prometheus and
//!   istio-agent's metrics merge read).
//! - `/config_dump`: the live configuration as JSON (listeners, routes, clusters, endpoints
//!   with their ejections, certificates, xDS status), from the sources attached.
//! - gRPC requests go to the attached gRPC service (CSDS, gRFC A40).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::{BoxError, MeshBody, full};
use crate::client::ClusterRuntime;
use crate::telemetry::Telemetry;

/// Why the workload is not ready, or `Ok` when it is.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A future the admin endpoint awaits.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The live configuration as JSON (`None`: no longer available, the xDS client stopped).
pub type ConfigSource = Arc<dyn Fn() -> BoxFuture<Option<Value>> + Send + Sync>;

/// The stacks' runtime state (cluster by cluster) that `/config_dump` adds to the
/// configuration: which endpoints are ejected now.
pub type RuntimeSource = Arc<dyn Fn() -> Vec<ClusterRuntime> + Send + Sync>;

/// More metric families for `/stats/prometheus` (OpenMetrics text without `# EOF`).
pub type MetricsSource = Arc<dyn Fn() -> BoxFuture<String> + Send + Sync>;

/// A gRPC service the endpoint also answers (CSDS, gRFC A40).
pub type GrpcService =
    tower::util::BoxCloneSyncService<Request<MeshBody>, Response<MeshBody>, Infallible>;

/// The OpenMetrics content type the metrics are served with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin service. Cheap to clone.
#[derive(Clone, Default)]
pub struct Admin {
    telemetry: Option<Arc<Telemetry>>,
    ready: Option<ReadinessCheck>,
    config: Option<ConfigSource>,
    runtime: Vec<RuntimeSource>,
    metrics: Vec<MetricsSource>,
    grpc: Option<GrpcService>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("telemetry", &self.telemetry.is_some())
            .field("config", &self.config.is_some())
            .field("grpc", &self.grpc.is_some())
            .finish_non_exhaustive()
    }
}

fn text(status: StatusCode, body: String) -> Response<MeshBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Marks each endpoint of `dump`'s clusters with what `runtime` knows: `ejected` (by
/// outlier detection, now) and `active` (its cluster has had traffic).
pub fn annotate_runtime(dump: &mut Value, runtime: &[ClusterRuntime]) {
    let Some(clusters) = dump.get_mut("clusters").and_then(Value::as_array_mut) else {
        return;
    };
    let by_name: std::collections::HashMap<&str, &ClusterRuntime> =
        runtime.iter().map(|r| (&*r.name, r)).collect();
    for c in clusters {
        let state = c["name"].as_str().and_then(|n| by_name.get(n).copied());
        c["active"] = Value::Bool(state.is_some());
        let ejected: std::collections::HashSet<std::net::SocketAddr> = state
            .map(|s| {
                s.endpoints
                    .iter()
                    .filter(|(_, e)| *e)
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default();
        let Some(eps) = c.get_mut("endpoints").and_then(Value::as_array_mut) else {
            continue;
        };
        for e in eps {
            let address = e["address"].as_str().and_then(|a| a.parse().ok());
            e["ejected"] = Value::Bool(address.is_some_and(|a| ejected.contains(&a)));
        }
    }
}

impl Admin {
    /// An admin endpoint serving `telemetry`'s metrics (if any), ready until told otherwise.
    pub fn new(telemetry: Option<Arc<Telemetry>>) -> Self {
        Self {
            telemetry,
            ..Self::default()
        }
    }

    /// `/ready` answers 200 only while `check` passes; its error is the 503's body.
    pub fn ready_when(
        mut self,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.ready = Some(Arc::new(check));
        self
    }

    /// `/ready` answers 200 only while the server `serving` follows is serving; else 503 with
    /// why not.
    pub fn ready_while_serving(
        self,
        serving: tokio::sync::watch::Receiver<crate::ServingState>,
    ) -> Self {
        self.ready_when(move || match &*serving.borrow() {
            crate::ServingState::Serving => Ok(()),
            crate::ServingState::NotServing(why) => Err(why.clone()),
        })
    }

    /// `/config_dump` serves what `source` gives (the xDS client's configuration, status and
    /// certificates: `mesh_xds_client::dump::config_dump`).
    pub fn config_dump<F>(mut self, source: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = Option<Value>> + Send + 'static,
    {
        self.config = Some(Arc::new(move || Box::pin(source())));
        self
    }

    /// Adds a stack's runtime state (a [`crate::MeshService`]'s `runtime`) to `/config_dump`.
    pub fn runtime(
        mut self,
        source: impl Fn() -> Vec<ClusterRuntime> + Send + Sync + 'static,
    ) -> Self {
        self.runtime.push(Arc::new(source));
        self
    }

    /// Adds the metric families `source` writes (OpenMetrics text without `# EOF`: the xDS
    /// client's, say) to `/stats/prometheus`.
    pub fn metrics_from<F>(mut self, source: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = String> + Send + 'static,
    {
        self.metrics.push(Arc::new(move || Box::pin(source())));
        self
    }

    /// Answers gRPC requests (`content-type: application/grpc`) with `service`: CSDS.
    pub fn grpc(mut self, service: GrpcService) -> Self {
        self.grpc = Some(service);
        self
    }

    fn metrics(&self) -> BoxFuture<Response<MeshBody>> {
        let mut body = self
            .telemetry
            .as_ref()
            .map(|t| t.encode())
            .unwrap_or_default();
        // One `# EOF`, after every family.
        if body.ends_with("# EOF\n") {
            body.truncate(body.len() - "# EOF\n".len());
        }
        let more: Vec<BoxFuture<String>> = self.metrics.iter().map(|m| m()).collect();
        Box::pin(async move {
            for m in more {
                body.push_str(&m.await);
            }
            body.push_str("# EOF\n");
            let mut r = Response::new(full(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(OPENMETRICS),
            );
            r
        })
    }

    fn dump(&self) -> BoxFuture<Response<MeshBody>> {
        let Some(source) = &self.config else {
            return Box::pin(std::future::ready(text(
                StatusCode::NOT_FOUND,
                "no configuration source is attached to this admin endpoint\n".into(),
            )));
        };
        let config = source();
        let runtime = self.runtime.clone();
        Box::pin(async move { Self::render_dump(config.await, &runtime) })
    }

    fn render_dump(dump: Option<Value>, runtime: &[RuntimeSource]) -> Response<MeshBody> {
        let Some(mut dump) = dump else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the xDS client has stopped\n".into(),
            );
        };
        let runtime: Vec<ClusterRuntime> = runtime.iter().flat_map(|r| r()).collect();
        annotate_runtime(&mut dump, &runtime);
        let mut body = serde_json::to_string_pretty(&dump).unwrap_or_default();
        body.push('\n');
        let mut r = Response::new(full(body));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        r
    }

    /// The answer to one request.
    pub fn answer<B>(&self, req: Request<B>) -> BoxFuture<Response<MeshBody>>
    where
        B: Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Some(grpc) = &self.grpc
            && crate::protocol::is_grpc(req.headers())
        {
            let req: Request<MeshBody> = req.map(|b| b.map_err(Into::into).boxed_unsync());
            let call: tower::util::Oneshot<GrpcService, Request<MeshBody>> =
                tower::ServiceExt::oneshot(grpc.clone(), req);
            let unwrap: fn(Result<Response<MeshBody>, Infallible>) -> Response<MeshBody> =
                |r| match r {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
            return Box::pin(futures_util::FutureExt::map(call, unwrap));
        }
        let now = match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => match self.ready.as_ref().map_or(Ok(()), |check| check()) {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/stats/prometheus" | "/metrics" => return self.metrics(),
            "/config_dump" => return self.dump(),
            path => text(StatusCode::NOT_FOUND, format!("no admin page at {path}\n")),
        };
        Box::pin(std::future::ready(now))
    }

    /// Serves the endpoint on `listener` (HTTP/1.1 and h2) until the future is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let answer = admin.answer(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    }
}

impl<B> tower::Service<Request<B>> for Admin
where
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MeshBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<MeshBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let answer = self.answer(req);
        Box::pin(async move { Ok(answer.await) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String, String) {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut tx, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, "admin")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        let status = resp.status();
        let kind = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn live_ready_and_metrics_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = Arc::new(AtomicBool::new(false));
        let s = serving.clone();
        let t = Telemetry::new(Default::default());
        let admin = Admin::new(Some(t)).ready_when(move || {
            if s.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("no inbound listener yet".into())
            }
        });
        tokio::spawn(admin.serve(listener));
        assert_eq!(get(addr, "/live").await.0, StatusCode::OK);
        let (status, _, body) = get(addr, "/ready").await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no inbound listener yet\n"
            )
        );
        serving.store(true, Ordering::Relaxed);
        assert_eq!(get(addr, "/ready").await.0, StatusCode::OK);
        for path in ["/stats/prometheus", "/metrics"] {
            let (status, kind, body) = get(addr, path).await;
            assert_eq!((status, kind.as_str()), (StatusCode::OK, OPENMETRICS));
            // Nothing recorded yet: families without series print nothing.
            assert_eq!(body, "# EOF\n");
        }
        let (status, _, body) = get(addr, "/config_dump").await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::NOT_FOUND,
                "no configuration source is attached to this admin endpoint\n"
            )
        );
        let (status, _, body) = get(addr, "/config").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "no admin page at /config\n")
        );
    }
}
