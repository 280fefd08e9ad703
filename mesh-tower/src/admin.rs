//! The admin endpoint: liveness, readiness and Istio's metrics, as a tower service the
//! application mounts or runs on its own port ([`Admin::serve`]).
//!
//! - `/live`: 200 while the process answers.
//! - `/ready`: 200 while the readiness check passes (the configuration is complete and, for a
//!   server, it is serving), else 503 with the reason.
//! - `/stats/prometheus` and `/metrics`: the metrics as OpenMetrics text (what Prometheus and
//!   istio-agent's metrics merge read).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header};

use crate::body::{MeshBody, full};
use crate::telemetry::Telemetry;

/// Why the workload is not ready, or `Ok` when it is.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The OpenMetrics content type the metrics are served with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin service. Cheap to clone.
#[derive(Clone, Default)]
pub struct Admin {
    telemetry: Option<Arc<Telemetry>>,
    ready: Option<ReadinessCheck>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("telemetry", &self.telemetry.is_some())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin endpoint serving `telemetry`'s metrics (if any), ready until told otherwise.
    pub fn new(telemetry: Option<Arc<Telemetry>>) -> Self {
        Self {
            telemetry,
            ready: None,
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

    /// The answer to one request.
    pub fn answer<B>(&self, req: &Request<B>) -> Response<MeshBody> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => match self.ready.as_ref().map_or(Ok(()), |check| check()) {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/stats/prometheus" | "/metrics" => {
                let body = self
                    .telemetry
                    .as_ref()
                    .map(|t| t.encode())
                    .unwrap_or_else(|| "# EOF\n".into());
                let mut r = Response::new(full(body));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(OPENMETRICS),
                );
                r
            }
            path => text(StatusCode::NOT_FOUND, format!("no admin page at {path}\n")),
        }
    }

    /// Serves the endpoint on `listener` (HTTP/1.1 and h2) until the future is dropped.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let resp = admin.answer(&req);
                    async move { Ok::<_, Infallible>(resp) }
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

impl<B> tower::Service<Request<B>> for Admin {
    type Response = Response<MeshBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<MeshBody>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.answer(&req)))
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
        let (status, _, body) = get(addr, "/config").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::NOT_FOUND, "no admin page at /config\n")
        );
    }
}
