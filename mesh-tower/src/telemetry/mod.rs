//! Istio's standard metrics (`istio_requests_total` and friends) from the client and server
//! stacks, with the names and labels an Envoy sidecar exports, so that Kiali and Istio's
//! Grafana dashboards read a mesh workload as they read a sidecar.
//!
//! [`Telemetry`] holds the metrics and the interned label sets; `client` is the client stack's
//! [`Observer`] (reporter `source`, [`Telemetry::client_observer`]), `server` the server's
//! wrapper (reporter `destination`), and [`Telemetry::encode`] writes them as OpenMetrics text.
//! A request is recorded once, when its response body ends (gRPC's status is in the
//! trailers), whatever its retries; mirrored copies are not requests.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::telemetry::peer_metadata::{self, METADATA_HEADER, METADATA_ID_HEADER};
use mesh_core::telemetry::{DURATION_BUCKETS_MS, SIZE_BUCKETS, Workload, cluster_service};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;

use crate::observe::{Observer, StreamEnd};
use crate::reply::ResponseFlags;
use client::ClientObserver;
pub use histogram::HistogramPoint;
use histogram::{FixedHistogram, ShardedCounter};

/// The exchange's header names, parsed once (parsing a name costs more than inserting it).
const METADATA: HeaderName = HeaderName::from_static(METADATA_HEADER);
const METADATA_ID: HeaderName = HeaderName::from_static(METADATA_ID_HEADER);

/// Istio's value for a label nobody knows.
const UNKNOWN: &str = "unknown";

/// The labels that stay the same for every request between two workloads: interned, so that
/// a series' key compares and hashes by pointer.
#[derive(Debug)]
struct Peers {
    reporter: &'static str,
    source: Workload,
    destination: Workload,
    service: Arc<str>,
    service_name: Arc<str>,
    service_namespace: Arc<str>,
    security: &'static str,
}

/// An interned [`Peers`]: one `Arc` per distinct label set, so pointer identity is content
/// identity.
#[derive(Debug, Clone)]
struct Interned(Arc<Peers>);

impl PartialEq for Interned {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Interned {}

impl Hash for Interned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// One time series: the peers and what varies per request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Series {
    peers: Interned,
    grpc: bool,
    code: u16,
    grpc_status: Option<u32>,
    flags: ResponseFlags,
}

/// `value`, or Istio's `unknown` when empty.
fn or_unknown(value: &str) -> &str {
    if value.is_empty() { UNKNOWN } else { value }
}

impl Series {
    /// Istio's labels of this series, in Istio's order.
    fn label_pairs(&self) -> Vec<(&'static str, String)> {
        let p = &self.peers.0;
        let (s, d) = (&p.source, &p.destination);
        let code = self.code.to_string();
        let grpc_status = self.grpc_status.map(|c| c.to_string()).unwrap_or_default();
        let flags = self.flags.to_string();
        let destination_revision = if d.canonical_revision.is_empty() {
            "latest"
        } else {
            &d.canonical_revision
        };
        let pairs: [(&'static str, &str); 25] = [
            ("reporter", p.reporter),
            ("source_workload", or_unknown(&s.name)),
            ("source_workload_namespace", or_unknown(&s.namespace)),
            ("source_principal", or_unknown(&s.principal)),
            ("source_app", or_unknown(&s.app)),
            ("source_version", or_unknown(&s.version)),
            ("source_canonical_service", or_unknown(&s.canonical_service)),
            (
                "source_canonical_revision",
                or_unknown(&s.canonical_revision),
            ),
            ("source_cluster", or_unknown(&s.cluster)),
            ("destination_workload", or_unknown(&d.name)),
            ("destination_workload_namespace", or_unknown(&d.namespace)),
            ("destination_principal", or_unknown(&d.principal)),
            ("destination_app", or_unknown(&d.app)),
            ("destination_version", or_unknown(&d.version)),
            ("destination_service", or_unknown(&p.service)),
            ("destination_service_name", or_unknown(&p.service_name)),
            (
                "destination_service_namespace",
                or_unknown(&p.service_namespace),
            ),
            (
                "destination_canonical_service",
                or_unknown(&d.canonical_service),
            ),
            ("destination_canonical_revision", destination_revision),
            ("destination_cluster", or_unknown(&d.cluster)),
            ("request_protocol", if self.grpc { "grpc" } else { "http" }),
            ("response_code", &code),
            ("grpc_response_status", &grpc_status),
            ("response_flags", &flags),
            ("connection_security_policy", p.security),
        ];
        pairs.into_iter().map(|(k, v)| (k, v.to_string())).collect()
    }
}

impl EncodeLabelSet for Series {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pairs = self.label_pairs();
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        borrowed.encode(encoder)
    }
}

type HistogramFamily = Family<Series, FixedHistogram, fn() -> FixedHistogram>;

/// Interned peers under a four-part key (client: cluster, endpoint `workload` metadata, the
/// server's exchanged metadata, the server's verified identity; server: caller, service, the
/// caller's exchanged metadata, nothing), nested so that a lookup borrows the parts and
/// allocates nothing.
type PeersMap =
    FxHashMap<Box<str>, FxHashMap<Box<str>, FxHashMap<Box<str>, FxHashMap<Box<str>, Interned>>>>;

/// The interned peers under `key`, built by `build` the first time.
fn intern(map: &RwLock<PeersMap>, key: [&str; 4], build: impl FnOnce() -> Peers) -> Interned {
    if let Some(p) = map
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(key[0])
        .and_then(|m| m.get(key[1]))
        .and_then(|m| m.get(key[2]))
        .and_then(|m| m.get(key[3]))
    {
        return p.clone();
    }
    let peers = Interned(Arc::new(build()));
    map.write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(Box::from(key[0]))
        .or_default()
        .entry(Box::from(key[1]))
        .or_default()
        .entry(Box::from(key[2]))
        .or_default()
        .entry(Box::from(key[3]))
        .or_insert(peers)
        .clone()
}

/// One series' metrics, taken from the families once: recording is then one lookup keyed by
/// a pointer and a few integers instead of one per family (which hash with SipHash).
struct Handles {
    requests: ShardedCounter,
    duration: FixedHistogram,
    request_bytes: FixedHistogram,
    response_bytes: FixedHistogram,
    /// gRPC's message counts (`None` for HTTP series, which Istio does not give them).
    messages: Option<(ShardedCounter, ShardedCounter)>,
}

impl Handles {
    /// Records one request that ended as `end` says.
    fn add(&self, end: &StreamEnd<'_>) {
        let s = histogram::shard();
        self.requests.inc_by(s, 1);
        self.duration.observe(s, end.duration.as_secs_f64() * 1e3);
        self.request_bytes
            .observe(s, end.request_bytes.unwrap_or_default() as f64);
        self.response_bytes.observe(s, end.body_bytes as f64);
        if let Some((request, response)) = &self.messages {
            request.inc_by(s, end.request_messages.unwrap_or_default());
            response.inc_by(s, end.response_messages);
        }
    }
}

fn duration_histogram() -> FixedHistogram {
    FixedHistogram::new(&DURATION_BUCKETS_MS)
}

fn size_histogram() -> FixedHistogram {
    FixedHistogram::new(&SIZE_BUCKETS)
}

/// `value` as a header value whose clones share nothing: every request of every thread sends
/// the exchange headers, and clones of an allocated value would all count references in one
/// place, a cache line the cores pass around. Kept for the process's life, once per distinct
/// value (a workload's metadata and node id: a handful per process), so it cannot grow with
/// use. `None` when empty or not a valid header value.
fn static_header_value(value: &str) -> Option<HeaderValue> {
    static KEPT: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    if value.is_empty() {
        return None;
    }
    // What `from_static` accepts (it panics on the rest): visible ASCII and tabs. Anything
    // else a header may carry takes the allocated path.
    if !value.bytes().all(|b| b == b'\t' || (32..127).contains(&b)) {
        return HeaderValue::from_str(value).ok();
    }
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let kept = kept.get_or_insert_with(Default::default);
    let value: &'static str = match kept.get(value) {
        Some(v) => v,
        None => {
            let v: &'static str = Box::leak(value.into());
            kept.insert(v);
            v
        }
    };
    Some(HeaderValue::from_static(value))
}

/// The destination a service host names: its first label, and its namespace when the host is
/// a Kubernetes service name (`name.namespace.svc...`).
fn service_parts(host: &str) -> (&str, Option<&str>) {
    let mut labels = host.split('.');
    let name = labels.next().unwrap_or_default();
    let namespace = labels.next();
    let svc = labels.next();
    (name, namespace.filter(|_| svc == Some("svc")))
}

/// Istio's standard metrics of one workload.
pub struct Telemetry {
    registry: Registry,
    requests: Family<Series, ShardedCounter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
    request_messages: Family<Series, ShardedCounter>,
    response_messages: Family<Series, ShardedCounter>,
    /// This workload; its principal is set once its certificate is known.
    local: RwLock<Workload>,
    /// This workload's `x-envoy-peer-metadata` and `x-envoy-peer-metadata-id` values.
    exchange: (Option<HeaderValue>, Option<HeaderValue>),
    peers: RwLock<PeersMap>,
    server_peers: RwLock<PeersMap>,
    series: RwLock<FxHashMap<Series, Arc<Handles>>>,
    /// Tells this `Telemetry` apart in the threads' caches of client series.
    id: u64,
    /// Bumped when the interned label sets are dropped (a new principal): cached client
    /// series of an older generation are not used.
    generation: AtomicU64,
    started: std::time::SystemTime,
}

/// A client series named by what the stack hands the observer, compared by pointer: the
/// cluster's name, the endpoint's metadata and its verified identity (each an `Arc` the
/// snapshot or the connection holds for as long as it lasts), the server's exchanged
/// metadata by this thread's id for it, and what varies per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClientKey {
    telemetry: u64,
    generation: u64,
    cluster: usize,
    labels: usize,
    peer: usize,
    exchanged: u64,
    grpc: bool,
    code: u16,
    grpc_status: Option<u32>,
    flags: ResponseFlags,
}

/// What [`ClientKey`]'s pointers point at, held so that no other value can take their
/// addresses while the entry lives; and the series' metrics.
struct ClientEntry {
    _named_by: NamedBy,
    handles: Arc<Handles>,
}

/// A client series' cluster name, endpoint metadata and endpoint identity.
pub(super) type NamedBy = (
    Option<Arc<str>>,
    Option<Arc<BTreeMap<String, String>>>,
    Option<Arc<str>>,
);

thread_local! {
    /// Each thread's client series by [`ClientKey`]: found without a lock or any write to
    /// memory other threads read, so that recording a request touches no shared cache line
    /// but its own shard of the series' metrics.
    static CLIENT_SERIES: std::cell::RefCell<FxHashMap<ClientKey, ClientEntry>> =
        std::cell::RefCell::default();
}

thread_local! {
    /// Each thread's ids for the label-bearing strings it has seen (a server's exchanged
    /// metadata, a caller's SPIFFE ID, a requested host: the same bytes request after request,
    /// in a new `HeaderValue` each time, so there is no pointer to go by), and the next id.
    /// Ids are never reused, so that a cached entry never meets an id that once meant other
    /// bytes: the map starts over at a cap, the counter does not.
    static BYTE_IDS: std::cell::RefCell<ByteIds> = std::cell::RefCell::default();

    /// Each thread's series by [`Series`] (an interned pointer and a few integers; the key
    /// holds the interned peers, so no other set can take their address), in front of the
    /// shared map and its lock.
    static LOCAL_SERIES: std::cell::RefCell<FxHashMap<Series, Arc<Handles>>> =
        std::cell::RefCell::default();

    /// Each thread's interned server peers by the ids of (Telemetry, generation, caller,
    /// host, exchanged metadata).
    static SERVER_PEERS: std::cell::RefCell<FxHashMap<[u64; 5], Interned>> =
        std::cell::RefCell::default();
}

/// Distinct strings a thread keeps ids for, and entries each of its caches holds, before
/// starting over (bounded memory whatever the traffic; a full cache only costs lookups).
const THREAD_CACHE_CAP: usize = 4096;

/// A thread's ids for strings: the last few seen, compared whole (a request's strings are
/// mostly the ones the last requests had, and comparing equal bytes is cheaper than hashing
/// them), in front of a map of all of them.
struct ByteIds {
    recent: Vec<(Box<[u8]>, u64)>,
    /// Which of `recent` goes next.
    hand: usize,
    all: FxHashMap<Box<[u8]>, u64>,
    next: u64,
}

impl Default for ByteIds {
    fn default() -> Self {
        Self {
            recent: Vec::new(),
            hand: 0,
            all: FxHashMap::default(),
            next: 1,
        }
    }
}

/// How many of a thread's last strings are compared before the map is asked.
const RECENT_IDS: usize = 8;

impl ByteIds {
    fn id(&mut self, bytes: &[u8]) -> u64 {
        if let Some((_, id)) = self.recent.iter().find(|(b, _)| **b == *bytes) {
            return *id;
        }
        let id = match self.all.get(bytes) {
            Some(id) => *id,
            None => {
                if self.all.len() >= THREAD_CACHE_CAP {
                    self.all.clear();
                    // The recent ones stay: their ids still mean their bytes.
                }
                let id = self.next;
                self.next = self.next.wrapping_add(1).max(1);
                self.all.insert(bytes.into(), id);
                id
            }
        };
        if self.recent.len() < RECENT_IDS {
            self.recent.push((bytes.into(), id));
        } else if let Some(slot) = self.recent.get_mut(self.hand) {
            *slot = (bytes.into(), id);
            self.hand = (self.hand + 1) % RECENT_IDS;
        }
        id
    }
}

/// Puts `key` in this thread's `cache`, which starts over when full (nothing, while the
/// thread is being torn down).
fn keep<K: Eq + Hash, V>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<FxHashMap<K, V>>>,
    key: K,
    value: V,
) {
    let _ = cache.try_with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= THREAD_CACHE_CAP {
            m.clear();
        }
        m.insert(key, value);
    });
}

/// This thread's id for `bytes`, assigned on first sight.
fn byte_id(bytes: &[u8]) -> u64 {
    BYTE_IDS
        .try_with(|ids| ids.borrow_mut().id(bytes))
        // A thread being torn down: an id no cached entry has.
        .unwrap_or(u64::MAX)
}

/// This thread's id for the exchanged metadata `value` (0 for none).
fn exchanged_id(value: Option<&HeaderValue>) -> u64 {
    value.map_or(0, |v| byte_id(v.as_bytes()))
}

/// The address of what `arc` holds (0 for none), for [`ClientKey`].
fn address<T: ?Sized>(arc: Option<&Arc<T>>) -> usize {
    arc.map_or(0, |a| Arc::as_ptr(a).cast::<()>() as usize)
}

/// One series' values: Istio's labels, `istio_requests_total`, the three histograms and, for
/// gRPC, the message counts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SeriesPoint {
    /// Istio's 25 labels, in Istio's order.
    pub labels: Vec<(&'static str, String)>,
    /// Whether the series is gRPC's (it then has message counts).
    pub grpc: bool,
    /// `istio_requests_total`.
    pub requests: u64,
    /// `istio_request_duration_milliseconds`.
    pub duration_ms: HistogramPoint,
    /// `istio_request_bytes`.
    pub request_bytes: HistogramPoint,
    /// `istio_response_bytes`.
    pub response_bytes: HistogramPoint,
    /// `istio_request_messages_total` and `istio_response_messages_total` (gRPC only).
    pub messages: Option<(u64, u64)>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("local", &self.local())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The metrics of the workload `local` (from its node metadata and certificate).
    pub fn new(local: Workload) -> Arc<Self> {
        Self::for_node(local, "")
    }

    /// The same, for the node `node_id` (the bootstrap's), which the peer-metadata exchange
    /// sends as `x-envoy-peer-metadata-id`.
    pub fn for_node(local: Workload, node_id: &str) -> Arc<Self> {
        // The pod name is the node id's second field (`sidecar~IP~POD.NS~DOMAIN`).
        let pod = node_id
            .split('~')
            .nth(2)
            .and_then(|p| p.split('.').next())
            .unwrap_or_default();
        let exchange = (
            static_header_value(&peer_metadata::encode(&local, pod)),
            static_header_value(node_id),
        );
        let mut registry = Registry::default();
        let requests = Family::<Series, ShardedCounter>::default();
        let duration: HistogramFamily = Family::new_with_constructor(duration_histogram);
        let request_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        let response_bytes: HistogramFamily = Family::new_with_constructor(size_histogram);
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes in bytes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes in bytes",
            response_bytes.clone(),
        );
        let request_messages = Family::<Series, ShardedCounter>::default();
        let response_messages = Family::<Series, ShardedCounter>::default();
        // prometheus-client adds the counters' `_total`.
        registry.register(
            "istio_request_messages",
            "gRPC messages the caller sent",
            request_messages.clone(),
        );
        registry.register(
            "istio_response_messages",
            "gRPC messages the server sent",
            response_messages.clone(),
        );
        Arc::new(Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            request_messages,
            response_messages,
            local: RwLock::new(local),
            exchange,
            peers: RwLock::default(),
            server_peers: RwLock::default(),
            series: RwLock::default(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
            generation: AtomicU64::new(0),
            started: std::time::SystemTime::now(),
        })
    }

    /// This workload as its labels name it.
    fn local(&self) -> Workload {
        self.local.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Names this workload by its certificate's SPIFFE ID (`source_principal` of what it
    /// sends, `destination_principal` of what it serves), as a sidecar does once it has its
    /// certificate. Requests recorded before keep the labels they had.
    pub fn set_principal(&self, spiffe_id: &str) {
        {
            let mut local = self.local.write().unwrap_or_else(|p| p.into_inner());
            if *local.principal == *spiffe_id {
                return;
            }
            *local = local.clone().with_spiffe_id(spiffe_id);
        }
        // The interned label sets hold the old principal: built anew from here on.
        self.peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.server_peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps [`Self::set_principal`] up to date from the workload certificate that
    /// `certificates` holds under `instance` (`default`: istio-agent's), until the sender
    /// goes away. Must run inside a tokio runtime.
    pub fn follow_identity(
        self: &Arc<Self>,
        mut certificates: tokio::sync::watch::Receiver<Arc<mesh_core::Certificates>>,
        instance: &str,
    ) {
        let identity = move |c: &mut tokio::sync::watch::Receiver<Arc<mesh_core::Certificates>>,
                             instance: &str| {
            c.borrow_and_update()
                .provider(instance)
                .and_then(|p| p.identity.as_ref())
                .and_then(|i| i.spiffe_id().map(str::to_owned))
        };
        // The certificate already in hand labels the very next request.
        if let Some(id) = identity(&mut certificates, instance) {
            self.set_principal(&id);
        }
        let (me, instance) = (Arc::downgrade(self), instance.to_string());
        tokio::spawn(async move {
            while certificates.changed().await.is_ok() {
                let Some(me) = me.upgrade() else { return };
                if let Some(id) = identity(&mut certificates, &instance) {
                    me.set_principal(&id);
                }
            }
        });
    }

    /// Adds this workload's peer-metadata headers to `headers`.
    fn announce(&self, headers: &mut HeaderMap) {
        if let Some(v) = &self.exchange.0 {
            headers.insert(METADATA, v.clone());
        }
        if let Some(v) = &self.exchange.1 {
            headers.insert(METADATA_ID, v.clone());
        }
    }

    /// The client stack's observer: records each request with reporter `source`.
    pub fn client_observer(self: &Arc<Self>) -> Arc<dyn Observer> {
        Arc::new(ClientObserver(self.clone(), None))
    }

    /// The client stack's observer recording metrics and propagating traces with `tracer`
    /// (one observer, so a request still costs one allocation).
    pub fn client_observer_traced(self: &Arc<Self>, tracer: Arc<Tracer>) -> Arc<dyn Observer> {
        Arc::new(ClientObserver(self.clone(), Some(tracer)))
    }

    /// Every series' values now, for exporters other than the Prometheus text (OTLP).
    pub fn points(&self) -> Vec<SeriesPoint> {
        let series = self.series.read().unwrap_or_else(|p| p.into_inner());
        series
            .iter()
            .map(|(s, h)| SeriesPoint {
                labels: s.label_pairs(),
                grpc: s.grpc,
                requests: h.requests.get(),
                duration_ms: h.duration.point(),
                request_bytes: h.request_bytes.point(),
                response_bytes: h.response_bytes.point(),
                messages: h.messages.as_ref().map(|(q, r)| (q.get(), r.get())),
            })
            .collect()
    }

    /// When these metrics started counting (the start of their cumulative values).
    pub fn started(&self) -> std::time::SystemTime {
        self.started
    }

    /// The metrics as OpenMetrics text (what Prometheus and istio-agent's merge read).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The interned peers of a server's request from `caller` (its SPIFFE ID, empty without
    /// a client certificate) to the service `host`, the caller described by its peer
    /// metadata (`exchanged`, empty when it sent none).
    fn server_peers(&self, caller: &str, host: &str, exchanged: &str) -> Interned {
        intern(&self.server_peers, [caller, host, exchanged, ""], || {
            let mut source = peer_metadata::decode(exchanged.as_bytes())
                .filter(|_| !exchanged.is_empty())
                .unwrap_or_default();
            if !caller.is_empty() {
                source = source.with_spiffe_id(caller);
            }
            let (name, namespace) = service_parts(host);
            Peers {
                reporter: "destination",
                source,
                service_namespace: Arc::from(namespace.unwrap_or(&self.local().namespace)),
                destination: self.local(),
                service: Arc::from(host),
                service_name: Arc::from(name),
                // Istio's rule: mutual TLS when the caller presented a certificate.
                security: if caller.is_empty() {
                    "none"
                } else {
                    "mutual_tls"
                },
            }
        })
    }

    /// The metrics of `series`, created on its first request.
    fn handles(&self, series: Series) -> Arc<Handles> {
        if let Some(h) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&series)
        {
            return h.clone();
        }
        let handles = Handles {
            requests: self.requests.get_or_create(&series).clone(),
            duration: self.duration.get_or_create(&series).clone(),
            request_bytes: self.request_bytes.get_or_create(&series).clone(),
            response_bytes: self.response_bytes.get_or_create(&series).clone(),
            messages: series.grpc.then(|| {
                (
                    self.request_messages.get_or_create(&series).clone(),
                    self.response_messages.get_or_create(&series).clone(),
                )
            }),
        };
        let mut all = self.series.write().unwrap_or_else(|p| p.into_inner());
        all.entry(series)
            .or_insert_with(|| Arc::new(handles))
            .clone()
    }

    /// Records one request of `series` (its metrics created on its first request), found in
    /// this thread's cache when it can be.
    fn record(&self, series: Series, end: &StreamEnd<'_>) {
        let found = LOCAL_SERIES
            .try_with(|m| m.borrow().get(&series).map(|h| h.add(end)).is_some())
            .unwrap_or(false);
        if found {
            return;
        }
        let handles = self.handles(series.clone());
        handles.add(end);
        keep(&LOCAL_SERIES, series, handles);
    }

    /// [`Self::server_peers`], found by this thread's ids for the strings when it can be
    /// (hashing three strings instead of walking four maps under a lock every core takes).
    fn server_peers_cached(&self, caller: &str, host: &str, exchanged: &str) -> Interned {
        let key = [
            self.id,
            self.generation.load(Ordering::Relaxed),
            byte_id(caller.as_bytes()),
            byte_id(host.as_bytes()),
            byte_id(exchanged.as_bytes()),
        ];
        if let Some(p) = SERVER_PEERS
            .try_with(|m| m.borrow().get(&key).cloned())
            .ok()
            .flatten()
        {
            return p;
        }
        let peers = self.server_peers(caller, host, exchanged);
        keep(&SERVER_PEERS, key, peers.clone());
        peers
    }

    /// The key of a client series named by `named_by` and what varies per request.
    pub(super) fn client_key(
        &self,
        named_by: &NamedBy,
        exchanged: Option<&HeaderValue>,
        grpc: bool,
        code: u16,
        grpc_status: Option<u32>,
        flags: ResponseFlags,
    ) -> ClientKey {
        ClientKey {
            telemetry: self.id,
            generation: self.generation.load(Ordering::Relaxed),
            cluster: address(named_by.0.as_ref()),
            labels: address(named_by.1.as_ref()),
            peer: address(named_by.2.as_ref()),
            exchanged: exchanged_id(exchanged),
            grpc,
            code,
            grpc_status,
            flags,
        }
    }

    /// Records one client request under `key` if this thread knows its series; false if not.
    fn record_client(key: &ClientKey, end: &StreamEnd<'_>) -> bool {
        CLIENT_SERIES
            .try_with(|cached| match cached.borrow().get(key) {
                Some(e) => {
                    e.handles.add(end);
                    true
                }
                None => false,
            })
            .unwrap_or(false)
    }

    /// Remembers on this thread that `key`, named by `named_by`, is `handles`' series.
    fn remember_client(key: ClientKey, named_by: NamedBy, handles: Arc<Handles>) {
        keep(
            &CLIENT_SERIES,
            key,
            ClientEntry {
                _named_by: named_by,
                handles,
            },
        );
    }

    /// The interned peers for a request to `cluster` answered by an endpoint whose `workload`
    /// metadata is `workload`, or by a server that described itself with `exchanged` (what
    /// it said wins, as in Envoy), and whose certificate named it `principal` (mTLS); each
    /// empty when unknown.
    fn client_peers(
        &self,
        cluster: &str,
        workload: &str,
        exchanged: &str,
        principal: &str,
    ) -> Interned {
        intern(
            &self.peers,
            [cluster, workload, exchanged, principal],
            || {
                let mut destination = if exchanged.is_empty() {
                    Workload::from_endpoint_metadata(workload)
                } else {
                    peer_metadata::decode(exchanged.as_bytes())
                }
                .unwrap_or_default();
                if !principal.is_empty() {
                    destination = destination.with_spiffe_id(principal);
                }
                let service = cluster_service(cluster).unwrap_or_default();
                let (name, namespace) = service_parts(service);
                Peers {
                    reporter: "source",
                    source: self.local(),
                    service_namespace: Arc::from(namespace.unwrap_or(&destination.namespace)),
                    destination,
                    service: Arc::from(service),
                    service_name: Arc::from(name),
                    // A client does not know the server's policy.
                    security: UNKNOWN,
                }
            },
        )
    }
}

/// The client stack's observer for what is asked: metrics (`telemetry`), traces (`tracer`),
/// both in one observer, or none.
pub fn client_observer(
    telemetry: Option<&Arc<Telemetry>>,
    tracer: Option<Arc<Tracer>>,
) -> Option<Arc<dyn Observer>> {
    match (telemetry, tracer) {
        (Some(t), Some(tracer)) => Some(t.client_observer_traced(tracer)),
        (Some(t), None) => Some(t.client_observer()),
        (None, Some(tracer)) => Some(tracer.client_observer()),
        (None, None) => None,
    }
}

/// A gRPC status from `grpc-status`.
fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

mod client;
mod histogram;
mod server;
pub mod trace;

pub use server::{CountableBody, ServerMetrics};
pub use trace::Tracer;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_values_are_kept_once_and_odd_bytes_do_not_panic() {
        let a = static_header_value("sidecar~10.0.0.1~web-1.front~front.svc.cluster.local");
        let b = static_header_value("sidecar~10.0.0.1~web-1.front~front.svc.cluster.local");
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a, b);
        // One kept copy: both values point at the same bytes.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        // Not visible ASCII: still a header value (obs-text), not a panic.
        let odd = static_header_value("pod-é").unwrap();
        assert_eq!(odd.as_bytes(), "pod-é".as_bytes());
        assert_eq!(static_header_value(""), None);
        assert_eq!(static_header_value("line\nbreak"), None);
    }

    #[test]
    fn string_ids_are_stable_and_never_mean_two_strings() {
        let mut ids = ByteIds::default();
        let a = ids.id(b"spiffe://cluster.local/ns/a/sa/a");
        // More distinct strings than the recent ones and than the map keeps.
        let mut seen = std::collections::HashMap::new();
        for i in 0..THREAD_CACHE_CAP + RECENT_IDS + 10 {
            let s = format!("host-{i}");
            let id = ids.id(s.as_bytes());
            assert_eq!(ids.id(s.as_bytes()), id, "{s} asked twice in a row");
            assert!(
                seen.insert(id, s.clone()).is_none(),
                "id {id} given to two strings"
            );
        }
        // Asked again after the map started over: an id, perhaps a new one, never another
        // string's.
        let again = ids.id(b"spiffe://cluster.local/ns/a/sa/a");
        assert!(again == a || !seen.contains_key(&again));
        assert_ne!(a, 0);
    }
}
