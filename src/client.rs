//! One line to join the mesh: [`Client`] (hyper) and [`Channel`] (tonic) own an xDS client
//! built from the gRPC bootstrap and the stack in front of it.
//!
//! A client subscribes to each new authority on its first request and waits for that
//! authority's configuration, bounded by a timeout, instead of answering 404 because nobody
//! subscribed to it first.

use std::borrow::Cow;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use mesh_tower::body::BoxError;
use mesh_tower::protocol::{is_grpc, local_reply};
use mesh_tower::telemetry::{Telemetry, Tracer};
use mesh_tower::{LocalReason, MeshBody, MeshConfig, MeshService, ResponseFuture};
use mesh_xds_client::{Bootstrap, BootstrapError, Health, StartError, XdsClient, XdsClientBuilder};
use tower::Service;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bootstrap could not be read.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The xDS client could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Builds a [`Client`] or [`Channel`].
pub struct ClientBuilder {
    bootstrap: Option<Bootstrap>,
    target: Option<String>,
    config: MeshConfig,
    config_timeout: Duration,
    cache_dir: Option<PathBuf>,
    telemetry: bool,
    tracer: Option<Arc<Tracer>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            bootstrap: None,
            target: None,
            config: MeshConfig::default(),
            config_timeout: Duration::from_secs(10),
            cache_dir: None,
            telemetry: false,
            tracer: None,
        }
    }
}

impl ClientBuilder {
    /// Uses this bootstrap instead of `GRPC_XDS_BOOTSTRAP` / `GRPC_XDS_BOOTSTRAP_CONFIG`.
    pub fn bootstrap(mut self, bootstrap: Bootstrap) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// Sends every request to this target (`xds:///host:port`), as a gRPC channel does.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// The stack's settings.
    pub fn config(mut self, config: MeshConfig) -> Self {
        self.config = config;
        self
    }

    /// How long a request to a new authority waits for its configuration (default 10 s).
    pub fn config_timeout(mut self, timeout: Duration) -> Self {
        self.config_timeout = timeout;
        self
    }

    /// Keeps the last good configuration in this directory, to start from when the control
    /// plane is unreachable.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// Records Istio's standard metrics for every request (reporter `source`), labelled with
    /// this workload as the bootstrap's node metadata describes it; read them with
    /// [`Client::telemetry`].
    pub fn telemetry(mut self) -> Self {
        self.telemetry = true;
        self
    }

    /// Propagates traces (W3C and B3) with `tracer`: each request continues the trace its
    /// headers carry, or the one of the request a traced [`crate::Server`] is serving in
    /// this task, and each attempt gets a span of its own.
    pub fn tracing(mut self, tracer: Arc<Tracer>) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// Starts the xDS client and builds the stack. Must run inside a tokio runtime.
    pub fn build(self) -> Result<Client, Error> {
        let bootstrap = match self.bootstrap {
            Some(b) => b,
            None => Bootstrap::from_env()?,
        };
        let mut config = self.config;
        let telemetry = self
            .telemetry
            .then(|| Telemetry::for_node(bootstrap.workload(), &bootstrap.node.id));
        if let Some(o) = mesh_tower::telemetry::client_observer(telemetry.as_ref(), self.tracer) {
            config = config.observer(o);
        }
        let mut xds = XdsClientBuilder::new(bootstrap);
        // `host:port`, without the `xds:///` a target may be written with.
        let target = self
            .target
            .as_deref()
            .map(|t| t.strip_prefix("xds:///").unwrap_or(t).to_string());
        if let (Some(t), Some(host_port)) = (&self.target, &target) {
            xds = xds.target(t.clone());
            config = config.target(host_port.clone());
        }
        if let Some(dir) = self.cache_dir {
            xds = xds.cache_dir(dir);
        }
        let xds = xds.start()?;
        if let Some(t) = &telemetry {
            t.follow_identity(xds.certificates(), mesh_xds_client::certs::DEFAULT_INSTANCE);
        }
        let svc = MeshService::with_certificates(xds.snapshots(), xds.certificates(), config);
        Ok(Client {
            inner: Arc::new(Inner {
                xds: Arc::new(xds),
                subscribed: Mutex::new(target.iter().cloned().collect()),
                config_timeout: self.config_timeout,
                target,
                telemetry,
            }),
            svc,
        })
    }
}

struct Inner {
    xds: Arc<XdsClient>,
    /// Listeners (`host:port`) subscribed to.
    subscribed: Mutex<Vec<String>>,
    config_timeout: Duration,
    /// The one listener every request goes to (a channel).
    target: Option<String>,
    telemetry: Option<Arc<Telemetry>>,
}

/// An HTTP client in the mesh: a `tower::Service` over hyper-compatible requests that routes
/// each by its authority. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    svc: MeshService,
}

impl Client {
    /// A client from `GRPC_XDS_BOOTSTRAP` (a file) or `GRPC_XDS_BOOTSTRAP_CONFIG` (inline
    /// JSON), the bootstrap istio-agent writes for proxyless workloads.
    pub fn from_env() -> Result<Self, Error> {
        ClientBuilder::default().build()
    }

    /// A builder for the settings `from_env` takes by default.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The xDS client it owns (status, subscriptions).
    pub fn xds(&self) -> &XdsClient {
        &self.inner.xds
    }

    /// The stack it sends through.
    pub fn stack(&self) -> &MeshService {
        &self.svc
    }

    /// An admin endpoint for this client: `/live`, `/ready` (200 once a complete
    /// configuration is in), its metrics, `/config_dump` (with endpoint ejections) and CSDS.
    /// Serve it with `Admin::serve` or mount it as a tower service.
    pub fn admin(&self) -> mesh_tower::admin::Admin {
        let health = self.inner.xds.health();
        let svc = self.svc.clone();
        let admin = mesh_tower::admin::Admin::new(self.inner.telemetry.clone())
            .ready_when(move || {
                let h = health.borrow();
                match (h.ready, &h.last_error) {
                    (true, _) => Ok(()),
                    (false, Some(e)) => Err(format!("no complete configuration yet ({e})")),
                    (false, None) => Err("no complete configuration yet".into()),
                }
            })
            .runtime(move || svc.runtime());
        let target = match &self.inner.target {
            Some(t) => format!("xds:///{t}"),
            None => "#client".to_string(),
        };
        crate::admin::with_xds(admin, &self.inner.xds, &target)
    }

    /// Istio's metrics of this client's requests, when built with
    /// [`ClientBuilder::telemetry`] (`encode()` gives the Prometheus text).
    pub fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.inner.telemetry.as_ref()
    }

    /// Connection state and readiness of the xDS client.
    pub fn health(&self) -> tokio::sync::watch::Receiver<Health> {
        self.inner.xds.health()
    }

    /// Stops following the control plane, writing the last-known-good cache first; requests
    /// then go on with the last configuration, and health says `stopped`.
    pub async fn shutdown(&self) {
        self.inner.xds.shutdown().await;
    }
}

/// The `host:port` a request is routed by (port 80 when the authority has none).
fn listener_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    })?;
    // The stack's own rule, so that the listener subscribed to is the one it routes on.
    Some(mesh_tower::client::listener_for(authority))
}

impl Inner {
    /// Subscribes to `listener` if nobody has, and waits until the snapshot has it.
    async fn configure(&self, svc: &MeshService, listener: &str) -> Result<(), String> {
        let first = {
            let mut subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            let first = !subscribed.iter().any(|l| l == listener);
            if first {
                subscribed.push(listener.to_string());
            }
            first
        };
        if first && let Err(e) = self.xds.subscribe(listener) {
            return Err(e.to_string());
        }
        let mut snapshots = svc.snapshots().clone();
        let mut health = self.xds.health();
        let wait = async {
            tokio::select! {
                _ = snapshots.wait_for(|s| s.listener(listener).is_some()) => Ok(()),
                _ = health.wait_for(|h| h.stopped) => Err(LocalReason::ConfigUnavailable),
            }
        };
        match tokio::time::timeout(self.config_timeout, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(format!(
                "the xDS client stopped before listener {listener} arrived"
            )),
            Err(_) => {
                let h = self.xds.health().borrow().clone();
                let mut msg = format!("no listener {listener} after {:?}", self.config_timeout);
                if let Some(e) = h.last_error {
                    msg.push_str(&format!("; last xDS error: {e}"));
                } else if h.connected {
                    msg.push_str("; the control plane has not sent it");
                }
                Err(msg)
            }
        }
    }
}

impl<B> Service<Request<B>> for Client
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MeshBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // A channel's one target was subscribed at start; a client's authorities on first use.
        // The common case (configuration already in) borrows, allocates and clones nothing.
        let listener = match &self.inner.target {
            Some(t) => Some(Cow::Borrowed(t.as_str())),
            None => listener_of(&req),
        };
        let known = listener
            .as_deref()
            .is_none_or(|l| self.svc.snapshots().borrow().listener(l).is_some());
        if known {
            return self.svc.call(req);
        }
        let listener = listener.map(Cow::into_owned);
        let mut svc = self.svc.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let listener = listener.unwrap_or_default();
            if let Err(why) = inner.configure(&svc, &listener).await {
                let stopped = inner.xds.health().borrow().stopped;
                let reason = if stopped {
                    LocalReason::ConfigUnavailable
                } else {
                    LocalReason::ConfigTimeout
                };
                let mut r = local_reply(reason, Some(&why), is_grpc(req.headers()));
                let mut info = mesh_tower::MeshInfo::default();
                info.flags.reason = Some(reason);
                r.extensions_mut().insert(info);
                return Ok(r);
            }
            svc.call(req).await
        })
    }
}

/// A tonic channel in the mesh: every call goes to one `xds:///host:port` target.
/// `GreeterClient::new(mesh::Channel::from_env("xds:///greeter.default:50051")?)`.
#[derive(Clone)]
pub struct Channel(Client);

impl Channel {
    /// A channel to `target` from the environment's gRPC bootstrap.
    pub fn from_env(target: &str) -> Result<Self, Error> {
        ClientBuilder::default().target(target).build().map(Self)
    }

    /// A channel built with these settings.
    pub fn from_builder(builder: ClientBuilder) -> Result<Self, Error> {
        builder.build().map(Self)
    }

    /// The client underneath.
    pub fn client(&self) -> &Client {
        &self.0
    }
}

impl<B> Service<Request<B>> for Channel
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<MeshBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<B>>::poll_ready(&mut self.0, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.0.call(req)
    }
}
