//! The local control plane at scale: 10,000 services × 10 subsets = 100,000 clusters × 10
//! endpoints (with a listener and a route configuration per service) served to 50 ADS streams
//! on 127.0.0.1, SotW and then Delta; then one endpoint set changes and the bench times how
//! long until every stream has it.
//!
//! `cargo bench --bench cp_scale`. `CP_SCALE_SERVICES` (default 10,000) and `CP_SCALE_CLIENTS`
//! (default 50) scale it down or up; `CP_SCALE_UPDATES` sets how many changes are timed
//! (default 10), `CP_SCALE_PROTOCOLS` which protocols run (default `sotw,delta`). The streams are raw tonic ADS clients that subscribe as the mesh's client does
//! (listeners and clusters by wildcard, every route configuration and endpoint set by name) and
//! ACK each response; they decode only what they check, so that the figure is the control
//! plane's, and 50 copies of a 100,000-cluster snapshot need not fit in memory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use mesh::xds::testing::{self, subset_key};
use mesh_control_plane::translate::{CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use mesh_control_plane::{ControlPlane, Resources};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

const SUBSETS: usize = 10;
const ENDPOINTS: usize = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The mesh, and the names a stream subscribes to by name.
fn mesh(services: usize) -> (Resources, Vec<String>, Vec<String>) {
    let mut r = Resources::default();
    let (mut routes, mut clusters) = (Vec::new(), Vec::new());
    for s in 0..services {
        let host = format!("svc-{s}.ns.svc.cluster.local");
        let listener = format!("{host}:8080");
        let rds = subset_key(8080, "", &host);
        let names: Vec<String> = (0..SUBSETS)
            .map(|k| subset_key(8080, &format!("v{k}"), &host))
            .collect();
        let weights: Vec<(&str, u32)> = names.iter().map(|c| (c.as_str(), 10)).collect();
        r.listeners
            .insert(listener.clone(), testing::listener(&listener, &rds));
        r.routes.insert(
            rds.clone(),
            testing::route_config(&rds, &[&host, &listener], &weights),
        );
        for (k, c) in names.iter().enumerate() {
            r.clusters.insert(c.clone(), testing::eds_cluster(c));
            r.endpoints.insert(c.clone(), endpoints(c, s, k, 8080));
        }
        routes.push(rds);
        clusters.extend(names);
    }
    // Clients send their names in their own (sorted) order, as mesh's and gRPC's do.
    routes.sort();
    clusters.sort();
    (r, routes, clusters)
}

fn endpoints(cluster: &str, s: usize, k: usize, port: u16) -> Any {
    let addrs: Vec<SocketAddr> = (0..ENDPOINTS)
        .map(|e| {
            SocketAddr::from((
                [
                    10,
                    (s >> 8) as u8,
                    (s & 0xff) as u8,
                    (k * ENDPOINTS + e) as u8,
                ],
                port,
            ))
        })
        .collect();
    testing::endpoints(cluster, &addrs)
}

/// What a stream reports: its first response of every type arrived, or the watched endpoint
/// set arrived with this port.
enum Event {
    Loaded,
    Port(usize, u32),
}

/// The port of the first endpoint in `any` when it is the endpoint set `target`.
fn watched_port(any: &Any, target: &str) -> Option<u32> {
    let cla = ClusterLoadAssignment::decode(&*any.value).ok()?;
    if cla.cluster_name != target {
        return None;
    }
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    let ep = cla.endpoints.first()?.lb_endpoints.first()?;
    let host = match ep.host_identifier.as_ref()? {
        envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e) => e,
        _ => return None,
    };
    match host.address.as_ref()?.address.as_ref()? {
        address::Address::SocketAddress(sa) => match sa.port_specifier.as_ref()? {
            socket_address::PortSpecifier::PortValue(p) => Some(*p),
            _ => None,
        },
        _ => None,
    }
}

/// The name field of a route configuration or endpoint set, read without decoding the rest.
fn name_of(any: &Any) -> Option<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    Named::decode(&*any.value).ok().map(|n| n.name)
}

fn node(i: usize) -> Node {
    Node {
        id: format!("sidecar~127.0.0.2~load-{i}.ns~ns.svc.cluster.local"),
        ..Default::default()
    }
}

/// An already-encoded message: a SotW ACK is its few changing fields followed by the
/// subscribed names encoded once, so that the harness's streams do not spend the cores the
/// control plane is measured on re-encoding 100,000 names per ACK (as clients on other
/// machines would not).
#[derive(Debug, Default, Clone)]
struct Encoded(Vec<u8>);

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A SotW request: `head`'s fields, then `names` already encoded as `resource_names`.
fn sotw_request(head: DiscoveryRequest, names: &[u8]) -> Encoded {
    let mut bytes = head.encode_to_vec();
    bytes.extend_from_slice(names);
    Encoded(bytes)
}

async fn sotw_client(
    addr: SocketAddr,
    i: usize,
    routes: Vec<String>,
    clusters: Vec<String>,
    target: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut names: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (type_url, subscribed) in [
        (LISTENER_TYPE, Vec::new()),
        (CLUSTER_TYPE, Vec::new()),
        (ROUTE_TYPE, routes),
        (ENDPOINT_TYPE, clusters),
    ] {
        let encoded = DiscoveryRequest {
            resource_names: subscribed,
            ..Default::default()
        }
        .encode_to_vec();
        let head = DiscoveryRequest {
            node: (type_url == LISTENER_TYPE).then(|| node(i)),
            type_url: type_url.into(),
            ..Default::default()
        };
        tx.send(sotw_request(head, &encoded)).expect("queue");
        names.insert(type_url.into(), encoded);
    }
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    let mut inbound = grpc
        .streaming(
            tonic::Request::new(UnboundedReceiverStream::new(rx)),
            path,
            tonic_prost::ProstCodec::<Encoded, DiscoveryResponse>::default(),
        )
        .await
        .expect("stream")
        .into_inner();
    let mut loaded = std::collections::BTreeSet::new();
    while let Ok(Some(r)) = inbound.message().await {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = r;
        if type_url == ENDPOINT_TYPE {
            for a in &resources {
                if name_of(a).as_deref() == Some(&target)
                    && let Some(p) = watched_port(a, &target)
                {
                    let _ = events.send(Event::Port(i, p));
                }
            }
        }
        if loaded.insert(type_url.clone()) && loaded.len() == 4 {
            let _ = events.send(Event::Loaded);
        }
        let subscribed = names.get(&type_url).map_or(&[][..], Vec::as_slice);
        let head = DiscoveryRequest {
            version_info,
            type_url,
            response_nonce: nonce,
            ..Default::default()
        };
        let _ = tx.send(sotw_request(head, subscribed));
    }
}

async fn delta_client(
    addr: SocketAddr,
    i: usize,
    routes: Vec<String>,
    clusters: Vec<String>,
    target: String,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut c = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(usize::MAX);
    let (tx, rx) = mpsc::unbounded_channel();
    for (type_url, names) in [
        (LISTENER_TYPE, Vec::new()),
        (CLUSTER_TYPE, Vec::new()),
        (ROUTE_TYPE, routes),
        (ENDPOINT_TYPE, clusters),
    ] {
        tx.send(DeltaDiscoveryRequest {
            node: (type_url == LISTENER_TYPE).then(|| node(i)),
            type_url: type_url.into(),
            resource_names_subscribe: names,
            ..Default::default()
        })
        .expect("queue");
    }
    let mut inbound = c
        .delta_aggregated_resources(UnboundedReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut loaded = std::collections::BTreeSet::new();
    while let Ok(Some(r)) = inbound.message().await {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            nonce,
            ..
        } = r;
        if type_url == ENDPOINT_TYPE {
            for res in &resources {
                if res.name == target
                    && let Some(p) = res.resource.as_ref().and_then(|a| watched_port(a, &target))
                {
                    let _ = events.send(Event::Port(i, p));
                }
            }
        }
        if loaded.insert(type_url.clone()) && loaded.len() == 4 {
            let _ = events.send(Event::Loaded);
        }
        let _ = tx.send(DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            ..Default::default()
        });
    }
}

/// Resident memory of this process (the control plane and the streams), from /proc.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e3)
}

struct Figures {
    load: Duration,
    pushes: Vec<Duration>,
    /// The part spent in `ControlPlane::update` (comparing the new resources with the old).
    updating: Vec<Duration>,
    /// Until the change was queued on every stream.
    queueing: Vec<Duration>,
    /// Until every stream had ACKed it.
    acking: Vec<Duration>,
    rss: f64,
}

async fn run(protocol: &str, services: usize, clients: usize, updates: usize) -> Figures {
    let (resources, routes, clusters) = mesh(services);
    let target = subset_key(
        8080,
        "v3",
        &format!("svc-{}.ns.svc.cluster.local", services / 2),
    );
    let cp = ControlPlane::new(resources.clone());
    let addr = cp
        .clone()
        .spawn("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let start = Instant::now();
    for i in 0..clients {
        let (r, c, t, e) = (
            routes.clone(),
            clusters.clone(),
            target.clone(),
            events_tx.clone(),
        );
        if protocol == "sotw" {
            tokio::spawn(sotw_client(addr, i, r, c, t, e));
        } else {
            tokio::spawn(delta_client(addr, i, r, c, t, e));
        }
    }
    let mut loaded = 0;
    while loaded < clients {
        if let Some(Event::Loaded) = events.recv().await {
            loaded += 1;
        }
    }
    let load = start.elapsed();
    let rss = rss_mb();
    let (s, k) = (services / 2, 3);
    let mut current = resources;
    let mut pushes = Vec::new();
    let mut updating = Vec::new();
    let mut queueing = Vec::new();
    let mut acking = Vec::new();
    for u in 0..updates {
        let port = 9000 + u as u16;
        current
            .endpoints
            .insert(target.clone(), endpoints(&target, s, k, port));
        let next = current.clone();
        let start = Instant::now();
        cp.update(next);
        updating.push(start.elapsed());
        // When the control plane has queued the change on every stream (its own work, before
        // the streams' clients do theirs on the same cores).
        let queued = {
            let (cp, version) = (cp.clone(), format!("v{}", cp.served().version));
            tokio::spawn(async move {
                loop {
                    let sent = cp
                        .clients()
                        .iter()
                        .filter(|c| c.types.get("EDS").is_some_and(|t| t.sent == version))
                        .count();
                    if sent >= clients {
                        return start.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        let mut have = vec![false; clients];
        let mut count = 0;
        while count < clients {
            match events.recv().await {
                Some(Event::Port(i, p)) if p == u32::from(port) && !have[i] => {
                    have[i] = true;
                    count += 1;
                }
                Some(_) => {}
                None => panic!("the streams ended"),
            }
        }
        pushes.push(start.elapsed());
        queueing.push(queued.await.expect("poller"));
        // The next change comes to a settled control plane: every stream has ACKed this one
        // (a SotW ACK repeats all 100,000 names, and 50 of them are work for both sides).
        let version = format!("v{}", cp.served().version);
        loop {
            let acked = cp
                .clients()
                .iter()
                .filter(|c| c.types.get("EDS").is_some_and(|t| t.acked == version))
                .count();
            if acked >= clients {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        acking.push(start.elapsed());
    }
    Figures {
        load,
        pushes,
        updating,
        queueing,
        acking,
        rss,
    }
}

fn main() {
    let services = env("CP_SCALE_SERVICES", 10_000);
    let clients = env("CP_SCALE_CLIENTS", 50);
    let updates = env("CP_SCALE_UPDATES", 10).max(1);
    println!(
        "control plane at scale: {services} services, {} clusters × {ENDPOINTS} endpoints, {clients} streams",
        services * SUBSETS
    );
    println!(
        "| protocol | every stream loaded | one-endpoint change → every stream, p50 | max | queued on every stream, p50 | of which `update()`, p50 | ACKed by every stream, p50 | RSS after load (all streams) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let protocols = std::env::var("CP_SCALE_PROTOCOLS").unwrap_or_else(|_| "sotw,delta".into());
    for protocol in protocols.split(',') {
        // A runtime per protocol, so that the first one's streams are gone before the next.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut f = rt.block_on(run(protocol, services, clients, updates));
        drop(rt);
        f.pushes.sort();
        f.updating.sort();
        f.queueing.sort();
        f.acking.sort();
        println!(
            "| {protocol} | {:.1} s | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} MB |",
            f.load.as_secs_f64(),
            f.pushes[f.pushes.len() / 2].as_secs_f64() * 1e3,
            f.pushes[f.pushes.len() - 1].as_secs_f64() * 1e3,
            f.queueing[f.queueing.len() / 2].as_secs_f64() * 1e3,
            f.updating[f.updating.len() / 2].as_secs_f64() * 1e3,
            f.acking[f.acking.len() / 2].as_secs_f64() * 1e3,
            f.rss
        );
    }
}
