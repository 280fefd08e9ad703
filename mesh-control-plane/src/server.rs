//! The ADS server: SotW and Delta over one stream per client, ACK/NACK tracking, pushes on
//! change, wildcard LDS/CDS, and short listener names expanded the way istiod does.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::translate::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resources};

/// istiod's push order.
const PUSH_ORDER: [&str; 4] = [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE];

/// The configuration being served, with its version.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Push counter; `version_info` is `v<version>`.
    pub version: u64,
    /// The resources.
    pub resources: Arc<Resources>,
    /// What the recent pushes changed, oldest first, so that a stream pushes what changed
    /// instead of comparing everything it serves.
    log: Arc<VecDeque<Arc<Changes>>>,
}

/// What one push changed in one type: names added or whose bytes changed, and names removed.
#[derive(Debug, Default)]
struct TypeChanges {
    changed: BTreeSet<String>,
    removed: BTreeSet<String>,
}

/// What one push changed, per type (indexed by [`type_index`]).
#[derive(Debug, Default)]
struct Changes {
    version: u64,
    types: [TypeChanges; 4],
}

impl Changes {
    fn names(&self) -> usize {
        self.types
            .iter()
            .map(|t| t.changed.len() + t.removed.len())
            .sum()
    }
}

/// The most pushes kept in the change log, and the most names in it: a stream further behind
/// compares everything it serves, as on a fresh stream.
const LOG_PUSHES: usize = 256;
const LOG_NAMES: usize = 1_000_000;

impl Served {
    /// The changes after `seen` up to this version, or `None` when the log no longer reaches
    /// back that far.
    fn since(&self, seen: u64) -> Option<Vec<Arc<Changes>>> {
        let out: Vec<Arc<Changes>> = self
            .log
            .iter()
            .filter(|c| c.version > seen)
            .cloned()
            .collect();
        let reaches = seen == self.version || out.first().is_some_and(|c| c.version == seen + 1);
        reaches.then_some(out)
    }
}

/// The position of a type in [`Changes`].
fn type_index(type_url: &str) -> Option<usize> {
    match type_url {
        LISTENER_TYPE => Some(0),
        ROUTE_TYPE => Some(1),
        CLUSTER_TYPE => Some(2),
        ENDPOINT_TYPE => Some(3),
        _ => None,
    }
}

/// Whether the pushes in `log` changed or removed a name of type `index` that `wanted`
/// accepts.
fn touched(log: &[Arc<Changes>], index: usize, wanted: impl Fn(&str) -> bool) -> bool {
    log.iter().any(|c| {
        let t = &c.types[index];
        t.changed.iter().chain(&t.removed).any(|n| wanted(n))
    })
}

/// The names of type `index` that the pushes in `log` changed (`removed`: removed instead)
/// and that `wanted` accepts.
fn logged(
    log: &[Arc<Changes>],
    index: usize,
    removed: bool,
    wanted: impl Fn(&str) -> bool,
) -> BTreeSet<&String> {
    log.iter()
        .flat_map(|c| {
            let t = &c.types[index];
            if removed { &t.removed } else { &t.changed }
        })
        .filter(|n| wanted(n))
        .collect()
}

/// One client's state per type, for the status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Subscribed names (empty with `wildcard`).
    pub subscribed: usize,
    /// Subscribed to everything.
    pub wildcard: bool,
    /// Version of the last response sent (queued on the stream).
    pub sent: String,
    /// Last version the client ACKed.
    pub acked: String,
    /// Last NACK's error, cleared by the next ACK.
    pub nack: Option<String>,
}

/// A connected client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// Stream id.
    pub id: u64,
    /// Node id from the first request.
    pub node: String,
    /// `sotw` or `delta`.
    pub protocol: &'static str,
    /// Per type short name (`LDS`, ...).
    pub types: BTreeMap<&'static str, TypeStatus>,
}

/// The control plane: what it serves and who is connected.
#[derive(Clone)]
pub struct ControlPlane {
    served: Arc<watch::Sender<Served>>,
    clients: Arc<Mutex<BTreeMap<u64, ClientStatus>>>,
    next_id: Arc<AtomicU64>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn short(type_url: &str) -> &'static str {
    match type_url {
        LISTENER_TYPE => "LDS",
        ROUTE_TYPE => "RDS",
        CLUSTER_TYPE => "CDS",
        ENDPOINT_TYPE => "EDS",
        _ => "?",
    }
}

/// The namespace of a proxy: metadata `NAMESPACE`, else the node id's DNS domain.
fn node_namespace(node: &Node) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    if let Some(Kind::StringValue(ns)) = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get("NAMESPACE"))
        .and_then(|v| v.kind.as_ref())
    {
        return Some(ns.clone());
    }
    let domain = node.id.split('~').nth(3)?;
    domain.split('.').next().map(String::from)
}

/// The resources a client gets for `names` of a type: exact names, or for listeners the short
/// spellings istiod expands (`ui:9080`, `ui.default:9080`, `ui.default.svc:9080`), emitted
/// under the requested name.
fn lookup(
    resources: &Resources,
    type_url: &str,
    names: &BTreeSet<String>,
    wildcard: bool,
    namespace: Option<&str>,
) -> BTreeMap<String, Any> {
    let Some(all) = resources.of(type_url) else {
        return BTreeMap::new();
    };
    if wildcard {
        return all.clone();
    }
    let mut out = BTreeMap::new();
    for n in names {
        if let Some(a) = all.get(n).or_else(|| {
            (type_url == LISTENER_TYPE)
                .then(|| resources.inbound_listeners.get(n))
                .flatten()
        }) {
            out.insert(n.clone(), a.clone());
        } else if type_url == LISTENER_TYPE
            && let Some(ns) = namespace
            && let Some((host, port)) = n.rsplit_once(':')
        {
            let full = match host.matches('.').count() {
                0 => format!("{host}.{ns}.svc.cluster.local"),
                1 => format!("{host}.svc.cluster.local"),
                2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
                _ => continue,
            };
            if let Some(a) = all.get(&format!("{full}:{port}"))
                && let Ok(mut l) = Listener::decode(&*a.value)
            {
                l.name = n.clone();
                out.insert(
                    n.clone(),
                    Any {
                        type_url: a.type_url.clone(),
                        value: l.encode_to_vec(),
                    },
                );
            }
        }
    }
    out
}

/// Records in `out` how `new` differs from `old`, walking both in name order.
///
/// Protobuf maps (endpoint metadata) encode in hash order, so a resource translated twice can
/// differ in bytes and not in meaning. Such a resource takes the old bytes back, which keeps
/// versions stable and leaves it out of the changes.
fn reconcile(old: &BTreeMap<String, Any>, new: &mut BTreeMap<String, Any>, out: &mut TypeChanges) {
    let mut old_iter = old.iter().peekable();
    for (name, a) in new.iter_mut() {
        while let Some((o_name, _)) = old_iter.peek()
            && o_name.as_str() < name.as_str()
        {
            out.removed.insert((*o_name).clone());
            old_iter.next();
        }
        match old_iter.peek() {
            Some((o_name, o)) if *o_name == name => {
                if *o != a {
                    if same(o, a) {
                        *a = (*o).clone();
                    } else {
                        out.changed.insert(name.clone());
                    }
                }
                old_iter.next();
            }
            _ => {
                out.changed.insert(name.clone());
            }
        }
    }
    out.removed.extend(old_iter.map(|(n, _)| n.clone()));
}

fn same(a: &Any, b: &Any) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    fn eq<M: Message + Default + PartialEq>(a: &[u8], b: &[u8]) -> bool {
        matches!((M::decode(a), M::decode(b)), (Ok(x), Ok(y)) if x == y)
    }
    a.type_url == b.type_url
        && match a.type_url.as_str() {
            LISTENER_TYPE => eq::<Listener>(&a.value, &b.value),
            ROUTE_TYPE => eq::<RouteConfiguration>(&a.value, &b.value),
            CLUSTER_TYPE => eq::<Cluster>(&a.value, &b.value),
            ENDPOINT_TYPE => eq::<ClusterLoadAssignment>(&a.value, &b.value),
            _ => false,
        }
}

fn version_of(a: &Any) -> String {
    format!(
        "{:016x}",
        a.value
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b))
                .wrapping_mul(0x0100_0000_01b3))
    )
}

impl ControlPlane {
    /// A control plane serving `resources` as version 1.
    pub fn new(resources: Resources) -> Self {
        Self {
            served: Arc::new(
                watch::channel(Served {
                    version: 1,
                    resources: Arc::new(resources),
                    log: Arc::default(),
                })
                .0,
            ),
            clients: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Serves new resources: the version goes up and every stream gets what changed for it.
    pub fn update(&self, mut resources: Resources) {
        let previous = self.served.borrow().resources.clone();
        let mut changes = Changes::default();
        for type_url in PUSH_ORDER {
            if let (Some(old), Some(new), Some(i)) = (
                previous.of(type_url),
                resources.of_mut(type_url),
                type_index(type_url),
            ) {
                reconcile(old, new, &mut changes.types[i]);
            }
        }
        reconcile(
            &previous.inbound_listeners,
            &mut resources.inbound_listeners,
            &mut changes.types[0],
        );
        self.served.send_modify(|s| {
            s.version += 1;
            s.resources = Arc::new(resources);
            changes.version = s.version;
            let mut log = (*s.log).clone();
            log.push_back(Arc::new(changes));
            let mut names: usize = log.iter().map(|c| c.names()).sum();
            while log.len() > LOG_PUSHES || (log.len() > 1 && names > LOG_NAMES) {
                if let Some(c) = log.pop_front() {
                    names -= c.names();
                }
            }
            s.log = Arc::new(log);
        });
    }

    /// What is served now.
    pub fn served(&self) -> Served {
        self.served.borrow().clone()
    }

    /// The connected clients and their ACK/NACK state.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The tonic service.
    pub fn service(&self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// Serves on a bound listener until the future is dropped.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(self.service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    }

    /// Binds `addr` and serves in the background; returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener).await {
                tracing::error!("ADS server stopped: {e}");
            }
        });
        Ok(bound)
    }

    fn with_client(&self, id: u64, f: impl FnOnce(&mut ClientStatus)) {
        let mut c = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        f(c.entry(id).or_insert_with(|| ClientStatus {
            id,
            ..Default::default()
        }));
    }

    /// Records a client's node; returns its namespace (for short listener names).
    fn note_node(&self, id: u64, node: &Node, protocol: &'static str) -> Option<String> {
        let node_id = node.id.clone();
        self.with_client(id, |c| {
            c.node = node_id;
            c.protocol = protocol;
        });
        node_namespace(node)
    }

    /// Records what a client subscribes to and, for an ACK, the version it accepted.
    fn note_request(
        &self,
        id: u64,
        kind: &'static str,
        subscribed: usize,
        wildcard: bool,
        acked: Option<String>,
    ) {
        self.with_client(id, |c| {
            let t = c.types.entry(kind).or_default();
            t.subscribed = subscribed;
            t.wildcard = wildcard;
            if let Some(v) = acked {
                t.acked = v;
                t.nack = None;
            }
        });
    }

    /// Logs a NACK at warn and records its error for the status output.
    fn note_nack(&self, id: u64, type_url: &str, nonce: &str, error: &str) {
        tracing::warn!(client = id, %type_url, %nonce, "NACK: {error}");
        self.with_client(id, |c| {
            c.types.entry(short(type_url)).or_default().nack = Some(error.to_string())
        });
    }

    /// Queues a response on a stream and records its version as sent; false when the stream
    /// is gone.
    async fn queue<T>(
        &self,
        tx: &mpsc::Sender<Result<T, Status>>,
        id: u64,
        type_url: &str,
        version: String,
        resp: T,
    ) -> bool {
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        self.with_client(id, |c| {
            c.types.entry(short(type_url)).or_default().sent = version
        });
        true
    }

    fn drop_client(&self, id: u64) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Per type, per SotW stream.
#[derive(Default)]
struct SotwType {
    names: BTreeSet<String>,
    wildcard: bool,
    nonce: String,
    /// A response of this type has been sent on the stream.
    sent: bool,
}

impl SotwType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// Listeners and clusters are sent whole in every SotW response; route configurations and
/// endpoint sets may be sent alone (a client does not take their absence for a deletion), so
/// a change to one of them costs what it changed.
fn full_state(type_url: &str) -> bool {
    matches!(type_url, LISTENER_TYPE | CLUSTER_TYPE)
}

/// Builds a SotW response of `type_url` from `current`: every resource the stream subscribes
/// to, or only `only`.
fn sotw_response(
    t: &mut SotwType,
    type_url: &str,
    current: &Served,
    namespace: Option<&str>,
    nonce: &mut u64,
    only: Option<&BTreeSet<String>>,
) -> DiscoveryResponse {
    let resources = match only {
        Some(names) => lookup(&current.resources, type_url, names, false, namespace),
        None => lookup(
            &current.resources,
            type_url,
            &t.names,
            t.wildcard,
            namespace,
        ),
    };
    *nonce += 1;
    t.nonce = format!("{}/{}", current.version, nonce);
    t.sent = true;
    DiscoveryResponse {
        version_info: format!("v{}", current.version),
        resources: resources.into_values().collect(),
        type_url: type_url.to_string(),
        nonce: t.nonce.clone(),
        ..Default::default()
    }
}

/// The SotW response a push owes a stream for one type: `None` when nothing it subscribes to
/// changed. `log` is what changed since the stream's last push (`None`: unknown, so all is
/// sent); `clusters_pushed` says clusters went out in this push.
fn sotw_push(
    t: &mut SotwType,
    type_url: &str,
    current: &Served,
    log: Option<&[Arc<Changes>]>,
    namespace: Option<&str>,
    nonce: &mut u64,
    clusters_pushed: bool,
) -> Option<DiscoveryResponse> {
    let (Some(log), Some(i)) = (log, type_index(type_url)) else {
        return Some(sotw_response(t, type_url, current, namespace, nonce, None));
    };
    // A changed cluster is warming in Envoy until its endpoints come again.
    if type_url == ENDPOINT_TYPE && clusters_pushed {
        return Some(sotw_response(t, type_url, current, namespace, nonce, None));
    }
    if type_url == LISTENER_TYPE {
        // Subscriptions may use short names, so any listener change is sent.
        return touched(log, i, |_| true)
            .then(|| sotw_response(t, type_url, current, namespace, nonce, None));
    }
    if full_state(type_url) {
        return touched(log, i, |n| t.wants(n))
            .then(|| sotw_response(t, type_url, current, namespace, nonce, None));
    }
    let changed = logged(log, i, false, |n| t.wants(n));
    if changed.is_empty() {
        return None;
    }
    let only: BTreeSet<String> = changed.into_iter().cloned().collect();
    Some(sotw_response(
        t,
        type_url,
        current,
        namespace,
        nonce,
        Some(&only),
    ))
}

/// Per type, per Delta stream: what it subscribes to and what it holds (name → version).
#[derive(Default)]
struct DeltaType {
    names: BTreeSet<String>,
    wildcard: bool,
    known: BTreeMap<String, String>,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The response that brings the stream up to `current` for `type_url`: over every name it
    /// subscribes to, or only over `only` (names it wants or holds). `force` sends resources
    /// it already holds at their version. `None` when nothing is owed.
    fn diff(
        &mut self,
        type_url: &str,
        current: &Served,
        namespace: Option<&str>,
        nonce: &mut u64,
        only: Option<&BTreeSet<String>>,
        force: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let (resources, removed) = match only {
            Some(names) => {
                let wanted: BTreeSet<String> =
                    names.iter().filter(|n| self.wants(n)).cloned().collect();
                let resources = lookup(&current.resources, type_url, &wanted, false, namespace);
                let removed: Vec<String> = names
                    .iter()
                    .filter(|n| !resources.contains_key(*n) && self.known.contains_key(*n))
                    .cloned()
                    .collect();
                (resources, removed)
            }
            None => {
                let resources = lookup(
                    &current.resources,
                    type_url,
                    &self.names,
                    self.wildcard,
                    namespace,
                );
                let removed: Vec<String> = self
                    .known
                    .keys()
                    .filter(|n| !resources.contains_key(*n))
                    .cloned()
                    .collect();
                (resources, removed)
            }
        };
        let mut out = Vec::new();
        for (n, a) in resources {
            let v = version_of(&a);
            if force || self.known.get(&n) != Some(&v) {
                self.known.insert(n.clone(), v.clone());
                out.push(Resource {
                    name: n,
                    version: v,
                    resource: Some(a),
                    ..Default::default()
                });
            }
        }
        for n in &removed {
            self.known.remove(n);
        }
        if out.is_empty() && removed.is_empty() {
            return None;
        }
        *nonce += 1;
        Some(DeltaDiscoveryResponse {
            system_version_info: format!("v{}", current.version),
            resources: out,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce: format!("{}/{}", current.version, nonce),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for ControlPlane {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let cp = self.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut served = self.served.subscribe();
        let mut seen = served.borrow_and_update().version;
        tokio::spawn(async move {
            let mut types: HashMap<String, SotwType> = HashMap::new();
            let mut namespace = None;
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let r = match msg {
                            Ok(Some(r)) => r,
                            _ => break,
                        };
                        if let Some(node) = &r.node {
                            namespace = cp.note_node(id, node, "sotw");
                        }
                        let kind = short(&r.type_url);
                        let t = types.entry(r.type_url.clone()).or_default();
                        if let Some(err) = &r.error_detail {
                            cp.note_nack(id, &r.type_url, &r.response_nonce, &err.message);
                            continue;
                        }
                        if !r.response_nonce.is_empty() && r.response_nonce != t.nonce {
                            // istiod ignores stale requests entirely.
                            continue;
                        }
                        let first = !t.sent;
                        // An ACK repeats every name: in the order they were kept (the common
                        // case) they compare without building a set.
                        let same_names = r.resource_names.iter().eq(t.names.iter());
                        let wildcard = if first { r.resource_names.is_empty() && full_state(&r.type_url) } else { t.wildcard };
                        let changed = first || !same_names || wildcard != t.wildcard;
                        let mut added = BTreeSet::new();
                        if !same_names {
                            let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
                            // Route configurations and endpoint sets: only the newly named ones.
                            added = names.difference(&t.names).cloned().collect();
                            t.names = names;
                        }
                        t.wildcard = wildcard;
                        let acked = (!r.response_nonce.is_empty()).then(|| r.version_info.clone());
                        cp.note_request(id, kind, t.names.len(), wildcard, acked);
                        if changed {
                            let current = served.borrow().clone();
                            let only = (!first && !full_state(&r.type_url)).then_some(&added);
                            if only.is_some_and(BTreeSet::is_empty) {
                                continue;
                            }
                            let resp = sotw_response(t, &r.type_url, &current, namespace.as_deref(), &mut nonce, only);
                            let version = resp.version_info.clone();
                            if !cp.queue(&tx, id, &r.type_url, version, resp).await {
                                break;
                            }
                        }
                    }
                    changed = served.changed() => {
                        if changed.is_err() { break; }
                        let current = served.borrow_and_update().clone();
                        let log = current.since(seen);
                        seen = current.version;
                        let mut clusters_pushed = false;
                        for type_url in PUSH_ORDER {
                            let Some(t) = types.get_mut(type_url) else { continue };
                            if !t.sent { continue; }
                            if let Some(resp) = sotw_push(t, type_url, &current, log.as_deref(), namespace.as_deref(), &mut nonce, clusters_pushed) {
                                clusters_pushed |= type_url == CLUSTER_TYPE;
                                let version = resp.version_info.clone();
                                if !cp.queue(&tx, id, type_url, version, resp).await { break; }
                            }
                        }
                    }
                }
            }
            cp.drop_client(id);
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        req: tonic::Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let cp = self.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut served = self.served.subscribe();
        let mut seen = served.borrow_and_update().version;
        tokio::spawn(async move {
            let mut streams: HashMap<String, DeltaType> = HashMap::new();
            let mut namespace = None;
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    msg = inbound.message() => {
                        let r = match msg {
                            Ok(Some(r)) => r,
                            _ => break,
                        };
                        if let Some(node) = &r.node {
                            namespace = cp.note_node(id, node, "delta");
                        }
                        let kind = short(&r.type_url);
                        if let Some(err) = &r.error_detail {
                            cp.note_nack(id, &r.type_url, &r.response_nonce, &err.message);
                            continue;
                        }
                        let first = !streams.contains_key(&r.type_url);
                        let d = streams.entry(r.type_url.clone()).or_default();
                        let was_wildcard = d.wildcard;
                        if first && r.resource_names_subscribe.is_empty() && full_state(&r.type_url) {
                            d.wildcard = true;
                        }
                        let mut added = BTreeSet::new();
                        for n in &r.resource_names_subscribe {
                            if n == "*" {
                                d.wildcard = true;
                            } else if d.names.insert(n.clone()) {
                                added.insert(n.clone());
                            }
                        }
                        for n in &r.resource_names_unsubscribe {
                            if n == "*" { d.wildcard = false } else { d.names.remove(n); }
                        }
                        for (n, v) in &r.initial_resource_versions {
                            d.known.insert(n.clone(), v.clone());
                        }
                        for n in &r.resource_names_unsubscribe {
                            d.known.remove(n);
                        }
                        // Delta responses carry no version: the nonce starts with the push version.
                        let acked = (!r.response_nonce.is_empty())
                            .then(|| r.response_nonce.split('/').next().map(|v| format!("v{v}")).unwrap_or_default());
                        cp.note_request(id, kind, d.names.len(), d.wildcard, acked);
                        // A plain ACK asks for nothing new; a new wildcard asks for everything,
                        // new names for themselves.
                        let everything = d.wildcard && (first || !was_wildcard);
                        if !everything && added.is_empty() {
                            continue;
                        }
                        let current = served.borrow().clone();
                        let only = (!everything).then_some(&added);
                        if let Some(resp) = d.diff(&r.type_url, &current, namespace.as_deref(), &mut nonce, only, false) {
                            let version = resp.system_version_info.clone();
                            if !cp.queue(&tx, id, &r.type_url, version, resp).await {
                                break;
                            }
                        }
                    }
                    changed = served.changed() => {
                        if changed.is_err() { break; }
                        let current = served.borrow_and_update().clone();
                        let log = current.since(seen);
                        seen = current.version;
                        let mut clusters_pushed = false;
                        for type_url in PUSH_ORDER {
                            let Some(d) = streams.get_mut(type_url) else { continue };
                            let force = type_url == ENDPOINT_TYPE && clusters_pushed;
                            // Listener subscriptions may use short names: a listener change
                            // compares them all.
                            let names: Option<BTreeSet<String>> = match (&log, type_index(type_url)) {
                                (Some(log), Some(i)) if type_url == LISTENER_TYPE && !touched(log, i, |_| true) => continue,
                                (Some(log), Some(i)) if !force && type_url != LISTENER_TYPE => Some(
                                    logged(log, i, false, |n| d.wants(n))
                                        .into_iter()
                                        .chain(logged(log, i, true, |n| d.known.contains_key(n)))
                                        .cloned()
                                        .collect(),
                                ),
                                _ => None,
                            };
                            if names.as_ref().is_some_and(BTreeSet::is_empty) {
                                continue;
                            }
                            if let Some(resp) = d.diff(type_url, &current, namespace.as_deref(), &mut nonce, names.as_ref(), force) {
                                clusters_pushed |= type_url == CLUSTER_TYPE;
                                let version = resp.system_version_info.clone();
                                if !cp.queue(&tx, id, type_url, version, resp).await { break; }
                            }
                        }
                    }
                }
            }
            cp.drop_client(id);
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(version: u64, logged: &[u64]) -> Served {
        Served {
            version,
            resources: Arc::default(),
            log: Arc::new(
                logged
                    .iter()
                    .map(|&v| {
                        Arc::new(Changes {
                            version: v,
                            ..Default::default()
                        })
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_change_log_answers_only_when_it_reaches_back_far_enough() {
        let s = served(5, &[3, 4, 5]);
        let versions = |seen| {
            s.since(seen)
                .map(|l| l.iter().map(|c| c.version).collect::<Vec<_>>())
        };
        assert_eq!(versions(2), Some(vec![3, 4, 5]));
        assert_eq!(versions(4), Some(vec![5]));
        assert_eq!(versions(5), Some(vec![]));
        assert_eq!(versions(1), None, "version 2's changes are gone");
    }
}
