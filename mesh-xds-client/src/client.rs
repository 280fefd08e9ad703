//! The I/O around [`AdsState`]: one ADS stream over tonic (TCP, TLS or a unix socket),
//! reconnects with capped, jittered exponential backoff, the snapshot `watch`, the on-disk
//! cache, and the status API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    Locality as PbLocality, Node as PbNode, node::UserAgentVersionType,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use mesh_core::{Certificates, MeshSnapshot};
use rand::Rng;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::bootstrap::{Bootstrap, XdsServer};
use crate::cache::DiskCache;
use crate::certs::CertificatePublisher;
use crate::certs::file_watcher::FileWatcher;
use crate::certs::istio_ca::IstioCaProvider;
use crate::channel::{call_metadata, connect};
use crate::decode::ResourceType;
use crate::state::{AdsState, Output, Protocol, Request, ResourceStatus};

/// Env var selecting the protocol (`sotw` or `delta`).
pub const PROTOCOL_ENV: &str = "MESH_XDS_PROTOCOL";
/// Env var naming the cache directory.
pub const CACHE_DIR_ENV: &str = "MESH_XDS_CACHE_DIR";

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `MESH_XDS_PROTOCOL` holds something else than `sotw` or `delta`.
    #[error("{PROTOCOL_ENV}: {0}")]
    Protocol(String),
    /// A target is not `host:port` (optionally `xds:///host:port`).
    #[error("invalid target {0:?}: expected host:port or xds:///host:port")]
    Target(String),
    /// A server needs `server_listener_resource_name_template` in the bootstrap.
    #[error(
        "the bootstrap {0} has no server_listener_resource_name_template, so a server cannot name its listener"
    )]
    NoServerTemplate(String),
}

/// Why [`XdsClient::ready`] has no configuration to return: the client stopped first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the xDS client stopped before a complete configuration arrived: {reason}")]
pub struct NotReady {
    /// What stopped it (the last error, or the shutdown).
    pub reason: String,
}

/// Connection state and readiness, cheap to watch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Health {
    /// A stream to the control plane is up.
    pub connected: bool,
    /// A complete configuration has been published (from the server or the disk cache).
    pub ready: bool,
    /// The published configuration comes from the disk cache and is not yet confirmed.
    pub stale: bool,
    /// The last connection or stream error.
    pub last_error: Option<String>,
    /// Snapshots published so far.
    pub generation: u64,
    /// The client was shut down: no more configuration will come.
    pub stopped: bool,
}

/// Per-resource and per-type xDS status.
#[derive(Debug, Clone)]
pub struct XdsStatus {
    /// Connection and readiness.
    pub health: Health,
    /// The protocol in use.
    pub protocol: Protocol,
    /// Every resource: version, state (ACKed, NACKed with the error, ...), last update.
    pub resources: Vec<ResourceStatus>,
    /// Per type: last accepted version and last nonce on this stream.
    pub types: Vec<(ResourceType, String, String)>,
    /// Per type: resources received valid and invalid (gRFC A78).
    pub updates: Vec<(ResourceType, u64, u64)>,
    /// Times the xDS server went from healthy to unhealthy: a connection that failed, or a
    /// stream that ended before any response (gRFC A78's `server_failure`).
    pub server_failures: u64,
    /// The xDS server's address.
    pub server: String,
}

/// The default largest xDS response.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;

/// Reconnect backoff.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay after a failed attempt.
    pub initial: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Builds an [`XdsClient`].
#[derive(Debug, Clone)]
pub struct XdsClientBuilder {
    bootstrap: Bootstrap,
    protocol: Option<Protocol>,
    cache_dir: Option<PathBuf>,
    targets: Vec<String>,
    dne_timeout: Duration,
    backoff: Backoff,
    cache_max_age: Option<Duration>,
    max_message_size: usize,
    open_timeout: Duration,
    ca_retry: Backoff,
}

impl XdsClientBuilder {
    /// A builder for a bootstrap. The protocol and cache directory default to
    /// `MESH_XDS_PROTOCOL` and `MESH_XDS_CACHE_DIR` when set.
    pub fn new(bootstrap: Bootstrap) -> Self {
        Self {
            bootstrap,
            protocol: None,
            cache_dir: std::env::var_os(CACHE_DIR_ENV).map(PathBuf::from),
            targets: Vec::new(),
            dne_timeout: crate::state::DOES_NOT_EXIST_TIMEOUT,
            backoff: Backoff::default(),
            cache_max_age: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            open_timeout: Duration::from_secs(10),
            ca_retry: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }

    /// SotW (default) or Delta.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Persist the last good configuration here and start from it when the control plane is
    /// unreachable.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = Some(dir.into());
        self
    }

    /// A target to subscribe to from the start: `host:port` or `xds:///host:port`.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.targets.push(target.into());
        self
    }

    /// Do not start from a cache file older than this (default: any age; a stale cache is
    /// still marked stale until the control plane confirms it).
    pub fn cache_max_age(mut self, max_age: Duration) -> Self {
        self.cache_max_age = Some(max_age);
        self
    }

    /// The largest xDS response accepted (default 256 MiB, room for the LDS or CDS of a large
    /// mesh); a larger one fails the stream, which is then reopened with backoff.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// How long connecting to the server and opening the stream may take before the attempt
    /// counts as failed (default 10 s).
    pub fn stream_open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// The does-not-exist timeout (default 15 s).
    pub fn does_not_exist_timeout(mut self, timeout: Duration) -> Self {
        self.dne_timeout = timeout;
        self
    }

    /// Delays between failed requests to Istio's CA (default 1 s doubling to 60 s).
    pub fn ca_retry(mut self, retry: Backoff) -> Self {
        self.ca_retry = retry;
        self
    }

    /// Reconnect backoff (default 1 s doubling to 30 s).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts the client on the current tokio runtime.
    pub fn start(self) -> Result<XdsClient, StartError> {
        let protocol = match self.protocol {
            Some(p) => p,
            None => match std::env::var(PROTOCOL_ENV) {
                Ok(v) if !v.is_empty() => v.parse().map_err(StartError::Protocol)?,
                _ => Protocol::Sotw,
            },
        };
        let listeners = self
            .targets
            .iter()
            .map(|t| listener_for(&self.bootstrap, t))
            .collect::<Result<Vec<_>, _>>()?;
        let server = self.bootstrap.server().clone();
        let delete_on_absence = !server.has_feature("ignore_resource_deletion");
        let mut state = AdsState::new(protocol, node(&self.bootstrap), delete_on_absence);
        state.set_does_not_exist_timeout(self.dne_timeout);
        state.set_certificate_instances(crate::certs::served_instances(&self.bootstrap));
        let now = Instant::now().into_std();
        for l in &listeners {
            state.subscribe_listener(l, now);
        }
        let cache = self.cache_dir.as_ref().map(|dir| {
            DiskCache::new(dir, &cache_key(&self.bootstrap, &listeners))
                .with_max_age(self.cache_max_age)
        });
        let certificates = CertificatePublisher::new();
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(MeshSnapshot::new()));
        let (health_tx, health_rx) = watch::channel(Health::default());
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let mut worker = Worker {
            state,
            server,
            cache,
            snapshot_tx,
            health_tx,
            commands: command_rx,
            backoff: self.backoff,
            cache_dirty: false,
            request_lost: false,
            cache_write: None,
            max_message_size: self.max_message_size,
            open_timeout: self.open_timeout,
            certificates: certificates.subscribe(),
            server_healthy: true,
            server_failures: 0,
        };
        if let Some(cache) = worker.cache.clone() {
            match cache.load() {
                Ok(Some(resources)) => {
                    let outputs = worker.state.load_cached(resources, now);
                    worker.handle(outputs, None);
                    tracing::info!(path = %cache.path().display(), ready = worker.health_tx.borrow().ready, "loaded the xDS cache");
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("ignoring the xDS cache: {e}"),
            }
        }
        let mut cert_tasks = Vec::new();
        for (name, p) in &self.bootstrap.certificate_providers {
            if let Some(fw) = &p.file_watcher {
                // The first read is synchronous, so that a client started next to its
                // certificate files has an identity before its first request.
                let mut watcher = FileWatcher::new(name, fw.clone(), certificates.clone());
                watcher.poll();
                cert_tasks.push(tokio::spawn(watcher.run()).abort_handle());
            }
            if let Some(ca) = &p.istio_ca {
                let provider = IstioCaProvider::new(name, ca.clone(), certificates.clone())
                    .retry(self.ca_retry);
                cert_tasks.push(tokio::spawn(provider.run()).abort_handle());
            }
        }
        let health_tx = worker.health_tx.clone();
        let task = tokio::spawn(worker.run());
        let task_handle = task.abort_handle();
        // If the worker ever ends other than by shutdown (a bug, a panic), health says so:
        // nothing will follow the control plane any more, and readiness must not pretend.
        tokio::spawn(async move {
            let Err(e) = task.await else { return };
            if !e.is_panic() {
                return;
            }
            let panic = e.into_panic();
            let reason = format!(
                "the xDS client stopped after an internal error: {}",
                crate::decode::panic_message(&*panic)
            );
            tracing::error!("{reason}");
            health_tx.send_modify(|h| {
                h.connected = false;
                h.stopped = true;
                h.last_error = Some(reason);
            });
        });
        Ok(XdsClient {
            snapshots: snapshot_rx,
            health: health_rx,
            commands: command_tx,
            bootstrap: Arc::new(self.bootstrap),
            task: task_handle,
            certificates,
            cert_tasks,
        })
    }
}

/// What the cache file is keyed by: the server, the workload and the listeners. The workload
/// is the node's `NAMESPACE` and `WORKLOAD_NAME` metadata (set by istio-agent and by
/// `IstiodBootstrap`) rather than the node id, which holds the pod's IP and name: so a new pod
/// of the same deployment starts from what the last one had, not only a restarted container.
/// Pods of one workload get the same configuration from istiod except for their own
/// addresses, which a client configuration does not carry. Without that metadata the node id
/// is used.
fn cache_key(bootstrap: &Bootstrap, listeners: &[String]) -> String {
    let meta = |k: &str| {
        bootstrap
            .node
            .metadata
            .get(k)
            .and_then(serde_json::Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let workload = match (meta("NAMESPACE"), meta("WORKLOAD_NAME")) {
        (Some(ns), Some(w)) => format!("workload {ns}/{w}"),
        _ => format!("node {}", bootstrap.node.id),
    };
    format!(
        "{}|{workload}|{}",
        bootstrap.server().server_uri,
        listeners.join(",")
    )
}

/// The listener name for a target: `xds:///` stripped, the bootstrap template applied.
fn listener_for(bootstrap: &Bootstrap, target: &str) -> Result<String, StartError> {
    let t = target
        .strip_prefix("xds:///")
        .or_else(|| target.strip_prefix("xds:"))
        .unwrap_or(target);
    let ok = t
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !ok {
        return Err(StartError::Target(target.to_string()));
    }
    Ok(bootstrap.listener_name(t))
}

fn json_to_pb(v: &serde_json::Value) -> PbValue {
    use serde_json::Value as J;
    let kind = match v {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_pb).collect(),
        }),
        J::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_to_pb(v))).collect(),
        }),
    };
    PbValue { kind: Some(kind) }
}

/// The `Node` sent on each stream: the bootstrap's, plus user agent and client features.
fn node(b: &Bootstrap) -> PbNode {
    PbNode {
        id: b.node.id.clone(),
        cluster: b.node.cluster.clone(),
        metadata: Some(Struct {
            fields: b
                .node
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), json_to_pb(v)))
                .collect(),
        }),
        locality: b.node.locality.as_ref().map(|l| PbLocality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        user_agent_name: "mesh".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        client_features: vec!["xds.config.resource-in-sotw".into()],
        ..Default::default()
    }
}

enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Status(oneshot::Sender<XdsStatus>),
    Raw(oneshot::Sender<Vec<(ResourceType, String, envoy_types::pb::google::protobuf::Any)>>),
    Shutdown(oneshot::Sender<()>),
}

/// A running xDS client; dropping it stops the background task.
#[derive(Debug)]
pub struct XdsClient {
    snapshots: watch::Receiver<Arc<MeshSnapshot>>,
    health: watch::Receiver<Health>,
    commands: mpsc::UnboundedSender<Command>,
    bootstrap: Arc<Bootstrap>,
    task: tokio::task::AbortHandle,
    certificates: CertificatePublisher,
    cert_tasks: Vec<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Drop for XdsClient {
    fn drop(&mut self) {
        self.task.abort();
        for t in &self.cert_tasks {
            t.abort();
        }
    }
}

impl XdsClient {
    /// A receiver of every published snapshot, for the tower stack.
    pub fn snapshots(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.snapshots.clone()
    }

    /// A receiver of the workload certificates each certificate-provider instance holds, for
    /// the connectors and servers.
    pub fn certificates(&self) -> watch::Receiver<Arc<Certificates>> {
        self.certificates.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.snapshots.borrow().clone()
    }

    /// Connection state and readiness.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.clone()
    }

    /// Waits until a complete configuration for the subscribed listeners is in (from the
    /// server, or from the disk cache when the server is unreachable) and returns it. After
    /// [`XdsClient::shutdown`] it returns what was last published; if the client stopped
    /// before any configuration was complete (shut down, or ended by an internal error), it
    /// says so instead of returning an empty configuration.
    pub async fn ready(&self) -> Result<Arc<MeshSnapshot>, NotReady> {
        let mut h = self.health.clone();
        let health = match h.wait_for(|h| h.ready || h.stopped).await {
            Ok(h) => h.clone(),
            // The supervisor holds a sender until the worker is gone.
            Err(_) => Health {
                stopped: true,
                ..self.health.borrow().clone()
            },
        };
        if health.ready {
            Ok(self.snapshot())
        } else {
            Err(NotReady {
                reason: health
                    .last_error
                    .unwrap_or_else(|| "the xDS client was shut down".into()),
            })
        }
    }

    /// Adds a target (`host:port` or `xds:///host:port`).
    pub fn subscribe(&self, target: &str) -> Result<(), StartError> {
        let l = listener_for(&self.bootstrap, target)?;
        let _ = self.commands.send(Command::Subscribe(l));
        Ok(())
    }

    /// Subscribes to the listener of a server listening on `addr` (the bootstrap's server
    /// template with `IP:port`), and returns its name.
    pub fn subscribe_server(&self, addr: std::net::SocketAddr) -> Result<String, StartError> {
        let name = self
            .bootstrap
            .server_listener_name(addr)
            .ok_or_else(|| StartError::NoServerTemplate(self.bootstrap.source_name.clone()))?;
        let _ = self.commands.send(Command::Subscribe(name.clone()));
        Ok(name)
    }

    /// Removes a target.
    pub fn unsubscribe(&self, target: &str) -> Result<(), StartError> {
        let l = listener_for(&self.bootstrap, target)?;
        let _ = self.commands.send(Command::Unsubscribe(l));
        Ok(())
    }

    /// Stops following the control plane: the last-known-good cache is written if the last
    /// complete configuration is not in it yet, the stream closes, and health says `stopped`.
    /// The last snapshot stays published.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Every resource held, exactly as the control plane sent it; `None` if the client
    /// stopped.
    pub async fn raw_resources(
        &self,
    ) -> Option<Vec<(ResourceType, String, envoy_types::pb::google::protobuf::Any)>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Raw(tx)).ok()?;
        rx.await.ok()
    }

    /// The node this client presents to the control plane.
    pub fn node_proto(&self) -> PbNode {
        node(&self.bootstrap)
    }

    /// Every resource's status and each type's version and nonce.
    pub async fn status(&self) -> Option<XdsStatus> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Status(tx)).ok()?;
        rx.await.ok()
    }
}

struct Worker {
    state: AdsState,
    server: XdsServer,
    cache: Option<DiskCache>,
    snapshot_tx: watch::Sender<Arc<MeshSnapshot>>,
    health_tx: watch::Sender<Health>,
    commands: mpsc::UnboundedReceiver<Command>,
    backoff: Backoff,
    cache_dirty: bool,
    /// A request could not be queued on this stream, which must then end.
    request_lost: bool,
    /// The largest response accepted.
    max_message_size: usize,
    /// How long connecting and opening a stream may take.
    open_timeout: Duration,
    /// The last cache write started (none yet: the next complete configuration is written
    /// at once), which shutdown waits for.
    cache_write: Option<tokio::task::JoinHandle<()>>,
    /// The workload certificates, for mTLS to the server once there is one.
    certificates: watch::Receiver<Arc<Certificates>>,
    /// Whether the server was healthy at the last stream's end (it starts so).
    server_healthy: bool,
    /// Healthy-to-unhealthy transitions of the server.
    server_failures: u64,
}

enum Sink {
    Sotw(mpsc::Sender<DiscoveryRequest>),
    Delta(mpsc::Sender<DeltaDiscoveryRequest>),
}

impl Sink {
    /// Queues a request for the stream; false when it could not be (the queue is full: the
    /// server is not reading). The worker then ends the stream, since a lost request would
    /// lose a subscription, and the next stream resends every subscription.
    ///
    /// Not awaited: waiting for room while not reading the server's responses could deadlock
    /// a server that waits for its responses to be read before it reads again.
    #[must_use]
    fn send(&self, r: Request) -> bool {
        match (self, r) {
            (Self::Sotw(tx), Request::Sotw(r)) => tx.try_send(r).is_ok(),
            (Self::Delta(tx), Request::Delta(r)) => tx.try_send(r).is_ok(),
            _ => false,
        }
    }
}

/// Requests queued for the stream before it counts as stuck.
const OUTBOUND_QUEUE: usize = 64;

enum StreamEnd {
    /// Closed after at least one response (e.g. istiod's max connection age), having lived
    /// this long.
    AfterResponse(Duration),
    /// Failed before any response.
    Failed(String),
    /// The client was dropped.
    Shutdown,
}

impl Worker {
    async fn run(mut self) {
        let mut delay = self.backoff.initial;
        loop {
            match self.stream_once().await {
                StreamEnd::Shutdown => return,
                StreamEnd::AfterResponse(lived) => {
                    self.server_healthy = true;
                    self.state.on_disconnected();
                    self.health_tx.send_modify(|h| h.connected = false);
                    // A stream that lived (istiod closes them at their maximum age) starts
                    // the backoff over; one that keeps closing right after answering, as a
                    // broken server's would, backs off like a failure instead of looping hot.
                    if lived >= self.backoff.max {
                        delay = self.backoff.initial;
                    }
                    tracing::info!(server = %self.server.address, ?lived, "ADS stream closed after responses; reconnecting in about {delay:?}");
                }
                StreamEnd::Failed(e) => {
                    if std::mem::take(&mut self.server_healthy) {
                        self.server_failures = self.server_failures.saturating_add(1);
                    }
                    self.state.on_disconnected();
                    tracing::warn!(server = %self.server.address, "ADS stream failed: {e}; retrying in about {delay:?}");
                    self.health_tx.send_modify(|h| {
                        h.connected = false;
                        h.last_error = Some(e);
                    });
                }
            }
            let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
            if !self.idle(jittered).await {
                return;
            }
            delay = delay.saturating_mul(2).min(self.backoff.max);
        }
    }

    /// Waits while disconnected, still taking commands. False when the client was dropped.
    async fn idle(&mut self, duration: Duration) -> bool {
        self.serving_commands(tokio::time::sleep(duration), None)
            .await
            .is_some()
    }

    /// Runs `step` while serving commands (status, subscriptions, shutdown), their requests
    /// going to `sink`; `None` when the client was shut down or dropped meanwhile.
    async fn serving_commands<T>(
        &mut self,
        step: impl Future<Output = T>,
        sink: Option<&Sink>,
    ) -> Option<T> {
        tokio::pin!(step);
        loop {
            tokio::select! {
                out = &mut step => return Some(out),
                cmd = self.commands.recv() => match cmd {
                    None => return None,
                    Some(Command::Shutdown(done)) => {
                        self.shutdown(done).await;
                        return None;
                    }
                    Some(c) => self.command(c, sink),
                },
            }
        }
    }

    fn command(&mut self, c: Command, sink: Option<&Sink>) {
        let now = Instant::now().into_std();
        let outputs = match c {
            #[cfg(test)]
            Command::Subscribe(l) if l == tests::PANIC_LISTENER => panic!("injected worker bug"),
            Command::Subscribe(l) => self.state.subscribe_listener(&l, now),
            Command::Unsubscribe(l) => self.state.unsubscribe_listener(&l, now),
            // Handled where the worker can stop.
            Command::Shutdown(_) => Vec::new(),
            Command::Raw(reply) => {
                let _ = reply.send(self.state.raw_resources());
                Vec::new()
            }
            Command::Status(reply) => {
                let _ = reply.send(XdsStatus {
                    health: self.health_tx.borrow().clone(),
                    protocol: self.state.protocol(),
                    resources: self.state.statuses(),
                    types: ResourceType::ALL
                        .iter()
                        .map(|&t| {
                            (
                                t,
                                self.state.version(t).to_string(),
                                self.state.nonce(t).to_string(),
                            )
                        })
                        .collect(),
                    updates: self.state.update_counts(),
                    server_failures: self.server_failures,
                    server: self.server.address.to_string(),
                });
                Vec::new()
            }
        };
        self.handle(outputs, sink);
    }

    fn handle(&mut self, outputs: Vec<Output>, sink: Option<&Sink>) {
        for o in outputs {
            match o {
                Output::Send(r) => {
                    if let Some(s) = sink
                        && !s.send(r)
                    {
                        self.request_lost = true;
                    }
                }
                Output::Publish(snap) => {
                    let stale = snap.is_stale();
                    self.snapshot_tx.send_replace(snap);
                    self.health_tx.send_modify(|h| {
                        h.ready = true;
                        h.stale = stale;
                        h.generation += 1;
                    });
                    self.cache_dirty = !stale && self.cache.is_some();
                    // The first complete configuration is written at once (a process may
                    // not live to the next tick); later ones at most once per tick.
                    if self.cache_dirty && self.cache_write.is_none() {
                        self.persist();
                    }
                }
            }
        }
    }

    /// Writes what the cache lacks, then says the worker is done.
    async fn shutdown(&mut self, done: oneshot::Sender<()>) {
        self.persist();
        // Writes are ordered by generation, so once the last one started is done, the file
        // holds the newest configuration.
        if let Some(w) = self.cache_write.take() {
            let _ = w.await;
        }
        self.health_tx.send_modify(|h| {
            h.connected = false;
            h.stopped = true;
        });
        let _ = done.send(());
    }

    fn persist(&mut self) {
        if !self.cache_dirty {
            return;
        }
        self.cache_dirty = false;
        if let Some(cache) = self.cache.clone() {
            let contents = self.state.cache_contents();
            // Ordered by generation: a write that loses the race to a newer one is skipped.
            let generation = self.health_tx.borrow().generation;
            // Written off the async threads.
            self.cache_write = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = cache.store(generation, &contents) {
                    tracing::warn!(path = %cache.path().display(), "cannot write the xDS cache: {e}");
                }
            }));
        }
    }

    /// Waits for `step` of opening a stream (connecting, then the server's answer to the
    /// stream request) for at most the open timeout, serving commands meanwhile (status,
    /// subscriptions, shutdown) so that a silent server does not stop the client.
    async fn opening<T>(
        &mut self,
        step: impl Future<Output = T>,
        sink: Option<&Sink>,
        what: &str,
    ) -> Result<T, StreamEnd> {
        let limit = self.open_timeout;
        match self
            .serving_commands(tokio::time::timeout(limit, step), sink)
            .await
        {
            Some(Ok(out)) => Ok(out),
            Some(Err(_)) => Err(StreamEnd::Failed(format!(
                "{what} {} timed out after {limit:?}",
                self.server.address
            ))),
            None => Err(StreamEnd::Shutdown),
        }
    }

    async fn stream_once(&mut self) -> StreamEnd {
        let server = self.server.clone();
        let identity = self
            .certificates
            .borrow()
            .provider(crate::certs::DEFAULT_INSTANCE)
            .and_then(|p| p.identity.clone())
            .filter(|id| id.is_valid_at(std::time::SystemTime::now()));
        let channel = match self
            .opening(connect(&server, identity.as_deref()), None, "connecting to")
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return StreamEnd::Failed(e),
            Err(end) => return end,
        };
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_size);
        let metadata = match call_metadata(&self.server) {
            Ok(m) => m,
            Err(e) => return StreamEnd::Failed(e),
        };
        let now = Instant::now().into_std();
        let opened = Instant::now();
        self.request_lost = false;
        let first = self.state.on_connected(now);
        let mut got_response = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        macro_rules! drive {
            ($sink:expr, $inbound:expr, $on_response:ident) => {{
                let sink = $sink;
                let mut inbound = $inbound;
                self.health_tx.send_modify(|h| {
                    h.connected = true;
                    h.last_error = None;
                });
                loop {
                    if self.request_lost {
                        break Some(format!(
                            "the control plane is not reading this stream's requests ({OUTBOUND_QUEUE} queued); reopening it"
                        ));
                    }
                    tokio::select! {
                        msg = inbound.message() => match msg {
                            Ok(Some(resp)) => {
                                got_response = true;
                                let out = self.state.$on_response(resp, Instant::now().into_std());
                                self.handle(out, Some(&sink));
                            }
                            Ok(None) => break None,
                            Err(status) => break Some(format!("{}: {}", status.code(), status.message())),
                        },
                        cmd = self.commands.recv() => match cmd {
                            None => return StreamEnd::Shutdown,
                            Some(Command::Shutdown(done)) => {
                                self.shutdown(done).await;
                                return StreamEnd::Shutdown;
                            }
                            Some(c) => self.command(c, Some(&sink)),
                        },
                        _ = tick.tick() => {
                            let out = self.state.on_tick(Instant::now().into_std());
                            self.handle(out, Some(&sink));
                            self.persist();
                        }
                    }
                }
            }};
        }
        let ended = match self.state.protocol() {
            Protocol::Sotw => {
                let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
                let sink = Sink::Sotw(tx);
                self.handle(first, Some(&sink));
                let mut req = tonic::Request::new(ReceiverStream::new(rx));
                *req.metadata_mut() = metadata;
                let open = client.stream_aggregated_resources(req);
                match self
                    .opening(open, Some(&sink), "opening the ADS stream to")
                    .await
                {
                    Ok(Ok(resp)) => drive!(sink, resp.into_inner(), on_sotw_response),
                    Ok(Err(s)) => Some(format!("{}: {}", s.code(), s.message())),
                    Err(end) => return end,
                }
            }
            Protocol::Delta => {
                let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
                let sink = Sink::Delta(tx);
                self.handle(first, Some(&sink));
                let mut req = tonic::Request::new(ReceiverStream::new(rx));
                *req.metadata_mut() = metadata;
                let open = client.delta_aggregated_resources(req);
                match self
                    .opening(open, Some(&sink), "opening the ADS stream to")
                    .await
                {
                    Ok(Ok(resp)) => drive!(sink, resp.into_inner(), on_delta_response),
                    Ok(Err(s)) => Some(format!("{}: {}", s.code(), s.message())),
                    Err(end) => return end,
                }
            }
        };
        self.persist();
        // A stream that lost a request failed, however much it answered.
        let lost = std::mem::take(&mut self.request_lost);
        match (got_response && !lost, ended) {
            (true, _) => StreamEnd::AfterResponse(opened.elapsed()),
            (false, Some(e)) => StreamEnd::Failed(e),
            (false, None) => {
                StreamEnd::Failed("the server closed the stream before any response".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Subscribing to this listener panics the worker (a stand-in for any bug in it).
    pub(super) const PANIC_LISTENER: &str = "mesh-test-panic:1";

    #[tokio::test]
    async fn a_worker_that_dies_says_so_and_ready_does_not_pretend() {
        // A server that is never there: the worker is between connect attempts.
        let bootstrap = Bootstrap::from_json(
            r#"{"xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}],
                "node": {"id": "sidecar~127.0.0.1~a.default~default.svc.cluster.local"}}"#,
            "test",
        )
        .unwrap();
        let client = XdsClientBuilder::new(bootstrap).start().unwrap();
        client.subscribe(PANIC_LISTENER).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), client.ready())
            .await
            .expect("ready answers once the worker is gone")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the xDS client stopped before a complete configuration arrived: \
             the xDS client stopped after an internal error: injected worker bug"
        );
        let h = client.health().borrow().clone();
        assert!(h.stopped && !h.connected && !h.ready, "{h:?}");
    }
}
