//! The ADS server: SotW and Delta over one stream per client, ACK/NACK tracking, pushes on
//! change, wildcard LDS/CDS, and short listener names expanded the way istiod does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
}

/// One client's state per type, for the status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// Subscribed names (empty with `wildcard`).
    pub subscribed: usize,
    /// Subscribed to everything.
    pub wildcard: bool,
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

/// Protobuf maps (endpoint metadata) encode in hash order, so a resource translated twice can
/// differ in bytes and not in meaning. Reusing the old bytes for an unchanged resource keeps
/// versions stable and avoids pushing what did not change.
fn keep_unchanged_bytes(old: &BTreeMap<String, Any>, new: &mut BTreeMap<String, Any>) {
    for (name, a) in new.iter_mut() {
        if let Some(o) = old.get(name)
            && o.value != a.value
            && same(o, a)
        {
            *a = o.clone();
        }
    }
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
        for type_url in PUSH_ORDER {
            if let (Some(old), Some(new)) = (previous.of(type_url), resources.of_mut(type_url)) {
                keep_unchanged_bytes(old, new);
            }
        }
        keep_unchanged_bytes(
            &previous.inbound_listeners,
            &mut resources.inbound_listeners,
        );
        self.served.send_modify(|s| {
            s.version += 1;
            s.resources = Arc::new(resources);
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
    sent: Option<BTreeMap<String, Any>>,
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
        tokio::spawn(async move {
            let mut types: HashMap<String, SotwType> = HashMap::new();
            let mut namespace = None;
            let mut nonce = 0u64;
            let respond = |t: &mut SotwType,
                           type_url: &str,
                           current: &Served,
                           namespace: Option<&str>,
                           nonce: &mut u64,
                           force: bool| {
                let resources = lookup(
                    &current.resources,
                    type_url,
                    &t.names,
                    t.wildcard,
                    namespace,
                );
                if !force && t.sent.as_ref() == Some(&resources) {
                    return None;
                }
                *nonce += 1;
                t.nonce = format!("{}/{}", current.version, nonce);
                let resp = DiscoveryResponse {
                    version_info: format!("v{}", current.version),
                    resources: resources.values().cloned().collect(),
                    type_url: type_url.to_string(),
                    nonce: t.nonce.clone(),
                    ..Default::default()
                };
                t.sent = Some(resources);
                Some(resp)
            };
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
                        let names: BTreeSet<String> = r.resource_names.iter().cloned().collect();
                        let first = t.sent.is_none();
                        let wildcard = if first { names.is_empty() && matches!(r.type_url.as_str(), LISTENER_TYPE | CLUSTER_TYPE) } else { t.wildcard };
                        let changed = first || names != t.names || wildcard != t.wildcard;
                        t.names = names;
                        t.wildcard = wildcard;
                        let acked = (!r.response_nonce.is_empty()).then(|| r.version_info.clone());
                        cp.note_request(id, kind, t.names.len(), wildcard, acked);
                        if changed {
                            let current = served.borrow().clone();
                            if let Some(resp) = respond(t, &r.type_url, &current, namespace.as_deref(), &mut nonce, true)
                                && tx.send(Ok(resp)).await.is_err()
                            {
                                break;
                            }
                        }
                    }
                    changed = served.changed() => {
                        if changed.is_err() { break; }
                        let current = served.borrow_and_update().clone();
                        let mut clusters_changed = false;
                        for type_url in PUSH_ORDER {
                            let Some(t) = types.get_mut(type_url) else { continue };
                            if t.sent.is_none() { continue; }
                            // A changed cluster is warming in Envoy until its endpoints come again.
                            let force = type_url == ENDPOINT_TYPE && clusters_changed;
                            if let Some(resp) = respond(t, type_url, &current, namespace.as_deref(), &mut nonce, force) {
                                clusters_changed |= type_url == CLUSTER_TYPE;
                                if tx.send(Ok(resp)).await.is_err() { break; }
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
        tokio::spawn(async move {
            // Per type: subscribed names, wildcard, and what the client holds (name → version).
            let mut subs: HashMap<String, (BTreeSet<String>, bool)> = HashMap::new();
            let mut known: HashMap<String, BTreeMap<String, String>> = HashMap::new();
            let mut namespace = None;
            let mut nonce = 0u64;
            let diff = |type_url: &str,
                        subs: &(BTreeSet<String>, bool),
                        known: &mut BTreeMap<String, String>,
                        current: &Served,
                        namespace: Option<&str>,
                        nonce: &mut u64,
                        force: bool| {
                let resources = lookup(&current.resources, type_url, &subs.0, subs.1, namespace);
                let mut out = Vec::new();
                for (n, a) in &resources {
                    let v = version_of(a);
                    if force || known.get(n) != Some(&v) {
                        known.insert(n.clone(), v.clone());
                        out.push(Resource {
                            name: n.clone(),
                            version: v,
                            resource: Some(a.clone()),
                            ..Default::default()
                        });
                    }
                }
                let removed: Vec<String> = known
                    .keys()
                    .filter(|n| !resources.contains_key(*n))
                    .cloned()
                    .collect();
                for n in &removed {
                    known.remove(n);
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
            };
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
                        let first = !subs.contains_key(&r.type_url);
                        let s = subs.entry(r.type_url.clone()).or_default();
                        if first && r.resource_names_subscribe.is_empty() && matches!(r.type_url.as_str(), LISTENER_TYPE | CLUSTER_TYPE) {
                            s.1 = true;
                        }
                        for n in &r.resource_names_subscribe {
                            if n == "*" { s.1 = true } else { s.0.insert(n.clone()); }
                        }
                        for n in &r.resource_names_unsubscribe {
                            if n == "*" { s.1 = false } else { s.0.remove(n); }
                        }
                        let k = known.entry(r.type_url.clone()).or_default();
                        for (n, v) in &r.initial_resource_versions {
                            k.insert(n.clone(), v.clone());
                        }
                        for n in &r.resource_names_unsubscribe {
                            k.remove(n);
                        }
                        // Delta responses carry no version: the nonce starts with the push version.
                        let acked = (!r.response_nonce.is_empty())
                            .then(|| r.response_nonce.split('/').next().map(|v| format!("v{v}")).unwrap_or_default());
                        cp.note_request(id, kind, s.0.len(), s.1, acked);
                        let current = served.borrow().clone();
                        if let Some(resp) = diff(&r.type_url, s, k, &current, namespace.as_deref(), &mut nonce, false)
                            && tx.send(Ok(resp)).await.is_err()
                        {
                            break;
                        }
                    }
                    changed = served.changed() => {
                        if changed.is_err() { break; }
                        let current = served.borrow_and_update().clone();
                        let mut clusters_changed = false;
                        for type_url in PUSH_ORDER {
                            let Some(s) = subs.get(type_url) else { continue };
                            let k = known.entry(type_url.to_string()).or_default();
                            let force = type_url == ENDPOINT_TYPE && clusters_changed;
                            if let Some(resp) = diff(type_url, s, k, &current, namespace.as_deref(), &mut nonce, force) {
                                clusters_changed |= type_url == CLUSTER_TYPE;
                                if tx.send(Ok(resp)).await.is_err() { break; }
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
