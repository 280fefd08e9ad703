//! What the demo and the scenario examples share: four `ui` backends on 127.0.0.1, the bundled
//! YAML copied to a scratch directory watched by the local control plane, and a mesh client.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh::core::telemetry::Workload;
use mesh::tower::telemetry::Telemetry;
use mesh::tower::{MeshConfig, MeshService};
use mesh::xds::{Bootstrap, XdsClient, XdsClientBuilder};
use mesh_control_plane::ControlPlane;
use mesh_control_plane::watch::{Reload, load, watch_dir};

/// The service every example talks to.
pub const TARGET: &str = "ui.default.svc.cluster.local:9080";
/// The backends of `examples/config/ui-service.yaml`: version and the port written there.
pub const BACKENDS: [(&str, u16); 4] = [("v1", 18081), ("v1", 18082), ("v1", 18083), ("v2", 18091)];

/// A running backend.
pub struct Backend {
    /// `v1` or `v2`.
    pub version: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// While set, it answers 503.
    pub failing: Arc<AtomicBool>,
    /// Requests it has received.
    pub hits: Arc<AtomicU64>,
}

async fn backend(version: &'static str) -> std::io::Result<Backend> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let failing = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(AtomicU64::new(0));
    let (f, h) = (failing.clone(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (f, h) = (f.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    h.fetch_add(1, Ordering::Relaxed);
                    let fail = f.load(Ordering::Relaxed);
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
    Ok(Backend {
        version,
        addr,
        failing,
        hits,
    })
}

fn examples_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config")
}

/// Backends, a watched config directory, the control plane and a mesh client.
pub struct Lab {
    /// The backends, in `BACKENDS` order.
    pub backends: Vec<Backend>,
    /// The directory the control plane watches.
    pub dir: PathBuf,
    _scratch: tempfile::TempDir,
    /// Where the control plane serves ADS.
    pub xds: SocketAddr,
    /// The xDS client.
    pub client: XdsClient,
    /// The mesh stack.
    pub svc: MeshService,
    /// Istio's metrics of the stack's requests.
    pub telemetry: Arc<Telemetry>,
}

impl Lab {
    /// Starts everything; `on_reload` hears about each configuration change.
    pub async fn start(
        on_reload: impl FnMut(Reload) + Send + 'static,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let mut backends = Vec::new();
        for (version, _) in BACKENDS {
            backends.push(backend(version).await?);
        }
        let scratch = tempfile::tempdir()?;
        let dir = scratch.path().to_path_buf();
        // The bundled YAML, pointed at the ports actually bound.
        for f in std::fs::read_dir(examples_config())? {
            let f = f?.path();
            if f.is_file() {
                let mut text = std::fs::read_to_string(&f)?;
                for ((_, fixed), b) in BACKENDS.iter().zip(&backends) {
                    text = text.replace(
                        &format!("http: {fixed}}}"),
                        &format!("http: {}}}", b.addr.port()),
                    );
                }
                std::fs::write(dir.join(f.file_name().unwrap_or_default()), text)?;
            }
        }
        let cp = ControlPlane::new(load(&dir)?);
        let xds = cp.clone().spawn("127.0.0.1:0".parse()?).await?;
        tokio::spawn(watch_dir(
            dir.clone(),
            cp,
            Duration::from_millis(100),
            on_reload,
        ));
        let bootstrap = Bootstrap::from_json(
            &format!(
                r#"{{"xds_servers": [{{"server_uri": "{xds}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
                    "node": {{"id": "sidecar~127.0.0.1~example.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default", "WORKLOAD_NAME": "example"}}}}}}"#
            ),
            "example",
        )?;
        let client = XdsClientBuilder::new(bootstrap)
            .target(format!("xds:///{TARGET}"))
            .start()?;
        tokio::time::timeout(Duration::from_secs(10), client.ready()).await??;
        // This workload as the bootstrap above names it.
        let telemetry = Telemetry::new(Workload::from_node_metadata(
            |k| match k {
                "WORKLOAD_NAME" => Some("example"),
                "NAMESPACE" => Some("default"),
                _ => None,
            },
            |_| None,
        ));
        let svc = MeshService::with_certificates(
            client.snapshots(),
            client.certificates(),
            MeshConfig::default().observer(telemetry.client_observer()),
        );
        Ok(Self {
            backends,
            dir,
            _scratch: scratch,
            xds,
            client,
            svc,
            telemetry,
        })
    }

    /// Replaces `ui-routes.yaml` with a variant from `examples/config/variants/` (`None`: the
    /// original) and waits until the client has the new configuration.
    pub async fn use_routes(
        &self,
        variant: Option<&str>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let from = match variant {
            Some(v) => examples_config().join("variants").join(v),
            None => examples_config().join("ui-routes.yaml"),
        };
        let generation = self.client.health().borrow().generation;
        std::fs::copy(from, self.dir.join("ui-routes.yaml"))?;
        let mut health = self.client.health();
        tokio::time::timeout(
            Duration::from_secs(10),
            health.wait_for(|h| h.generation > generation),
        )
        .await??;
        Ok(())
    }
}
