//! An in-process ADS server for tests: serves resources set by the test, answers SotW and
//! Delta like istiod (no response to ACKs or NACKs, pushes on change), and records every
//! request it receives.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds_client::ResourceType;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

/// What the server holds: resources by type, by name.
#[derive(Default)]
pub struct Store {
    resources: BTreeMap<String, BTreeMap<String, Any>>,
    version: u64,
}

/// A request as received, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Seen {
    pub type_url: String,
    pub names: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub version: String,
    pub nonce: String,
    pub error: Option<String>,
    pub has_node: bool,
    pub initial_versions: BTreeMap<String, String>,
    pub authorization: Option<String>,
    /// The SPIFFE ID of the client certificate the stream's connection presented.
    pub peer: Option<String>,
}

#[derive(Clone)]
pub struct FakeAds {
    store: Arc<Mutex<Store>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    pushes: broadcast::Sender<String>,
    /// Bumped by `Running::stop` to end every open stream, as a server going away does.
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// SotW streams opened.
    streams: Arc<std::sync::atomic::AtomicUsize>,
    /// End each SotW stream right after its first response (a server that answers once and
    /// closes).
    close_after_first: Arc<std::sync::atomic::AtomicBool>,
    /// The next SotW stream stops reading requests after answering its first (a server that
    /// is stuck), and keeps the stream open.
    stall_next: Arc<std::sync::atomic::AtomicBool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn name_of(ty: ResourceType, any: &Any) -> String {
    mesh_xds_client::decode::decode(ty, any)
        .map(|d| d.name().to_string())
        .unwrap_or_else(|e| e.name.unwrap_or_default())
}

impl FakeAds {
    pub fn new() -> Self {
        Self {
            store: Arc::default(),
            seen: Arc::default(),
            pushes: broadcast::channel(64).0,
            generation: Arc::new(tokio::sync::watch::channel(0).0),
            streams: Arc::default(),
            close_after_first: Arc::default(),
            stall_next: Arc::default(),
        }
    }

    /// The next SotW stream stops reading after its first answer, without closing.
    pub fn stall_next_stream(&self) {
        self.stall_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// SotW streams opened so far.
    /// Ends every open stream with UNAVAILABLE, as a restarting server would.
    pub fn end_streams(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn streams(&self) -> usize {
        self.streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, ends each SotW stream right after its first response.
    pub fn close_after_first_response(&self) {
        self.close_after_first
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Replaces every resource of a type and pushes the change to open streams.
    pub fn set(&self, ty: ResourceType, resources: Vec<Any>) {
        {
            let mut s = self.store.lock().unwrap();
            s.version += 1;
            let map = resources
                .into_iter()
                .map(|a| (name_of(ty, &a), a))
                .collect();
            s.resources.insert(ty.type_url().to_string(), map);
        }
        let _ = self.pushes.send(ty.type_url().to_string());
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    fn record(&self, s: Seen) {
        self.seen.lock().unwrap().push(s);
    }

    fn sotw_response(
        &self,
        type_url: &str,
        names: &BTreeSet<String>,
        nonce: u64,
    ) -> DiscoveryResponse {
        let s = self.store.lock().unwrap();
        let resources = s
            .resources
            .get(type_url)
            .map(|m| {
                m.iter()
                    .filter(|(n, _)| names.contains(*n))
                    .map(|(_, a)| a.clone())
                    .collect()
            })
            .unwrap_or_default();
        DiscoveryResponse {
            version_info: format!("v{}", s.version),
            resources,
            type_url: type_url.to_string(),
            nonce: format!("nonce-{nonce}"),
            ..Default::default()
        }
    }

    /// Serves on 127.0.0.1:`port` (0: any) until the returned handle is stopped or dropped.
    pub async fn serve_tcp(&self, port: u16) -> Running {
        self.serve_on_tcp(port, tonic::transport::Server::builder())
            .await
    }

    /// Serves TLS on 127.0.0.1 (any port) with this certificate chain and key (PEM).
    pub async fn serve_tls(&self, cert_pem: &str, key_pem: &str) -> Running {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        let builder = tonic::transport::Server::builder().tls_config(tls).unwrap();
        self.serve_on_tcp(0, builder).await
    }

    async fn serve_on_tcp(&self, port: u16, builder: tonic::transport::Server) -> Running {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        self.serve(builder, incoming, Some(addr))
    }

    /// Serves on a unix socket.
    pub async fn serve_unix(&self, path: &Path) -> Running {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        self.serve(tonic::transport::Server::builder(), incoming, None)
    }

    /// Runs the ADS service on `incoming` until the returned handle is stopped or dropped.
    fn serve<I, IO>(
        &self,
        mut builder: tonic::transport::Server,
        incoming: I,
        addr: Option<SocketAddr>,
    ) -> Running
    where
        I: Stream<Item = std::io::Result<IO>> + Send + 'static,
        IO: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + tonic::transport::server::Connected
            + Unpin
            + Send
            + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(self.clone());
        let task = tokio::spawn(async move {
            let _ = builder
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        Running {
            addr,
            stop: Some(tx),
            task,
            generation: self.generation.clone(),
        }
    }

    /// Waits (up to 10 s) until a recorded request satisfies `f`.
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
        for _ in 0..1000 {
            if let Some(s) = self.seen().into_iter().find(|s| f(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}; seen: {:#?}", self.seen());
    }
}

pub struct Running {
    pub addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Running {
    /// Stops the server and closes its streams.
    pub async fn stop(mut self) {
        self.generation.send_modify(|g| *g += 1);
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn peer<T>(req: &tonic::Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let info = mesh_core::LeafInfo::parse(certs.first()?).ok()?;
    info.sans.spiffe_id().map(String::from)
}

fn auth<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        let authorization = auth(&req);
        let peer = peer(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let mut pushes = self.pushes.subscribe();
        let mut stopped = self.generation.subscribe();
        self.streams
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let close_after_first = self
            .close_after_first
            .load(std::sync::atomic::Ordering::SeqCst);
        let stall = self
            .stall_next
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        tokio::spawn(async move {
            let mut subs: HashMap<String, BTreeSet<String>> = HashMap::new();
            let mut last_nonce: HashMap<String, String> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    _ = stopped.changed() => {
                        let _ = tx.send(Err(Status::unavailable("server stopping"))).await;
                        return;
                    }
                    msg = inbound.message() => {
                        let Ok(Some(r)) = msg else { return };
                        me.record(Seen {
                            type_url: r.type_url.clone(),
                            names: r.resource_names.clone(),
                            unsubscribe: vec![],
                            version: r.version_info.clone(),
                            nonce: r.response_nonce.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: r.node.is_some(),
                            initial_versions: BTreeMap::new(),
                            authorization: authorization.clone(),
                            peer: peer.clone(),
                        });
                        if r.error_detail.is_some() {
                            continue;
                        }
                        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
                        let stale = !r.response_nonce.is_empty() && last_nonce.get(&r.type_url) != Some(&r.response_nonce);
                        if stale {
                            continue;
                        }
                        let prev = subs.insert(r.type_url.clone(), names.clone());
                        let is_ack = !r.response_nonce.is_empty() && prev.as_ref() == Some(&names);
                        if is_ack {
                            continue;
                        }
                        nonce += 1;
                        let resp = me.sotw_response(&r.type_url, &names, nonce);
                        last_nonce.insert(r.type_url.clone(), resp.nonce.clone());
                        if tx.send(Ok(resp)).await.is_err() || close_after_first { return; }
                        if stall {
                            // Never reads again; holds the stream (and its unread requests)
                            // open until the client gives up on it or the server stops.
                            let _ = stopped.changed().await;
                            return;
                        }
                    }
                    pushed = pushes.recv() => {
                        let Ok(type_url) = pushed else { continue };
                        let Some(names) = subs.get(&type_url) else { continue };
                        nonce += 1;
                        let resp = me.sotw_response(&type_url, names, nonce);
                        last_nonce.insert(type_url, resp.nonce.clone());
                        if tx.send(Ok(resp)).await.is_err() { return; }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let authorization = auth(&req);
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let mut pushes = self.pushes.subscribe();
        let mut stopped = self.generation.subscribe();
        tokio::spawn(async move {
            // Per type: subscribed names and the version of each resource the client has.
            let mut subs: HashMap<String, BTreeSet<String>> = HashMap::new();
            let mut known: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            let mut nonce = 0u64;
            let version_of = |a: &Any| {
                format!(
                    "{:x}",
                    a.value
                        .iter()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
                )
            };
            let diff = |me: &FakeAds,
                        type_url: &str,
                        names: &BTreeSet<String>,
                        known: &mut BTreeMap<String, String>,
                        nonce: u64| {
                let s = me.store.lock().unwrap();
                let empty = BTreeMap::new();
                let current = s.resources.get(type_url).unwrap_or(&empty);
                let mut resources = Vec::new();
                let mut removed = Vec::new();
                for n in names {
                    match current.get(n) {
                        Some(a) => {
                            let v = version_of(a);
                            if known.get(n) != Some(&v) {
                                known.insert(n.clone(), v.clone());
                                resources.push(Resource {
                                    name: n.clone(),
                                    version: v,
                                    resource: Some(a.clone()),
                                    ..Default::default()
                                });
                            }
                        }
                        None => {
                            if known.remove(n).is_some() {
                                removed.push(n.clone());
                            }
                        }
                    }
                }
                (!resources.is_empty() || !removed.is_empty()).then(|| DeltaDiscoveryResponse {
                    type_url: type_url.to_string(),
                    resources,
                    removed_resources: removed,
                    nonce: format!("delta-{nonce}"),
                    ..Default::default()
                })
            };
            loop {
                tokio::select! {
                    _ = stopped.changed() => {
                        let _ = tx.send(Err(Status::unavailable("server stopping"))).await;
                        return;
                    }
                    msg = inbound.message() => {
                        let Ok(Some(r)) = msg else { return };
                        me.record(Seen {
                            type_url: r.type_url.clone(),
                            names: r.resource_names_subscribe.clone(),
                            unsubscribe: r.resource_names_unsubscribe.clone(),
                            version: String::new(),
                            nonce: r.response_nonce.clone(),
                            error: r.error_detail.as_ref().map(|e| e.message.clone()),
                            has_node: r.node.is_some(),
                            initial_versions: r.initial_resource_versions.clone().into_iter().collect(),
                            authorization: authorization.clone(),
                            peer: None,
                        });
                        let s = subs.entry(r.type_url.clone()).or_default();
                        s.extend(r.resource_names_subscribe.iter().cloned());
                        for n in &r.resource_names_unsubscribe { s.remove(n); }
                        let k = known.entry(r.type_url.clone()).or_default();
                        for (n, v) in &r.initial_resource_versions { k.insert(n.clone(), v.clone()); }
                        for n in &r.resource_names_unsubscribe { k.remove(n); }
                        let names = s.clone();
                        nonce += 1;
                        if let Some(resp) = diff(&me, &r.type_url, &names, k, nonce)
                            && tx.send(Ok(resp)).await.is_err() { return; }
                    }
                    pushed = pushes.recv() => {
                        let Ok(type_url) = pushed else { continue };
                        let Some(names) = subs.get(&type_url).cloned() else { continue };
                        nonce += 1;
                        let k = known.entry(type_url.clone()).or_default();
                        if let Some(resp) = diff(&me, &type_url, &names, k, nonce)
                            && tx.send(Ok(resp)).await.is_err() { return; }
                    }
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
