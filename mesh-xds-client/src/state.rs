//! The ADS protocol core, sans I/O.
//!
//! Inputs are stream events (connected, a response, disconnected), subscription changes and
//! clock ticks; outputs are requests to send and snapshots to publish. Nothing here touches a
//! socket or reads a clock, so every protocol rule is unit-tested directly.
//!
//! Rules implemented: one stream for every type; SotW or Delta; ACK/NACK per gRFC A46 (valid
//! resources are applied, the NACK carries the last accepted version, the response nonce and
//! every rejected resource with its reason); nonces per stream; Delta versions kept across
//! reconnects (`initial_resource_versions`); LDS/CDS absences delete in SotW, RDS/EDS absences
//! never do; a NACKed resource keeps its last good value (A88); the does-not-exist timer starts
//! when a request naming the resource is sent (A57); subscriptions cascade listener → route
//! configuration → cluster → endpoints (A74); a snapshot is published only when every
//! reference in it is resolved: present, or known not to exist (the server's SotW LDS/CDS
//! response omits it, a Delta removal, or the does-not-exist timer). So a reader never sees
//! half of an update (a new route before its new cluster); it may see a route to a cluster
//! that does not exist, which `MeshSnapshot::dangling` lists. As in gRPC (A74), that does not
//! hold the rest back: requests on that route fail with a local reply naming the cluster
//! (503 `NC`, gRPC `UNAVAILABLE`), and every other route works.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node as PbNode;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;
use mesh_core::{MeshSnapshot, RouteSource};

use crate::decode::{Decoded, ResourceType, decode};

/// The gRFC A57 does-not-exist timeout.
pub const DOES_NOT_EXIST_TIMEOUT: Duration = Duration::from_secs(15);
/// gRPC status code INVALID_ARGUMENT, used in NACKs.
const INVALID_ARGUMENT: i32 = 3;

/// SotW or Delta ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// State of the world (what gRPC and istio-agent use).
    #[default]
    Sotw,
    /// Incremental.
    Delta,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sotw" | "state-of-the-world" => Ok(Self::Sotw),
            "delta" | "incremental" => Ok(Self::Delta),
            _ => Err(format!(
                "unknown xDS protocol {s:?} (expected \"sotw\" or \"delta\")"
            )),
        }
    }
}

/// A request for the I/O layer to send on the current stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A SotW request.
    Sotw(DiscoveryRequest),
    /// A Delta request.
    Delta(DeltaDiscoveryRequest),
}

impl Request {
    /// The type URL.
    pub fn type_url(&self) -> &str {
        match self {
            Self::Sotw(r) => &r.type_url,
            Self::Delta(r) => &r.type_url,
        }
    }
}

/// What the state machine asks the I/O layer to do.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // short-lived, moved once: boxing would only add an allocation
pub enum Output {
    /// Send this request.
    Send(Request),
    /// Publish this snapshot.
    Publish(Arc<MeshSnapshot>),
}

/// Where a resource stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// Asked for, nothing received yet.
    Requested,
    /// Loaded from the on-disk cache and not yet confirmed by the server.
    Cached,
    /// Accepted.
    Acked,
    /// The last version received was rejected; the last good value (if any) is kept.
    Nacked {
        /// The rejected version.
        version: String,
        /// Why.
        error: String,
    },
    /// The server says (or the timer concluded) that it does not exist.
    DoesNotExist,
}

/// One resource's status, for the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// Its type.
    pub resource_type: ResourceType,
    /// Its name.
    pub name: String,
    /// The version of the value in use (empty when none).
    pub version: String,
    /// Where it stands.
    pub state: ResourceState,
    /// When its value or state last changed.
    pub last_updated: Option<Instant>,
    /// Whether a value is in use (a NACKed resource may keep its last good one).
    pub has_value: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Option<Decoded>,
    raw: Option<Any>,
    version: String,
    state: ResourceState,
    last_updated: Option<Instant>,
    /// When a request naming it went out with no value known: the does-not-exist timer.
    requested_at: Option<Instant>,
}

impl Entry {
    fn new() -> Self {
        Self {
            value: None,
            raw: None,
            version: String::new(),
            state: ResourceState::Requested,
            last_updated: None,
            requested_at: None,
        }
    }

    /// Whether references to it are settled: it has a value, or it is known to be missing.
    fn resolved(&self) -> bool {
        self.value.is_some()
            || matches!(
                self.state,
                ResourceState::DoesNotExist | ResourceState::Nacked { .. }
            )
    }
}

#[derive(Debug, Default)]
struct TypeState {
    /// Names wanted now.
    wanted: BTreeSet<String>,
    /// Names the server knows we want on this stream (`None`: nothing sent yet).
    sent: Option<BTreeSet<String>>,
    /// Last accepted SotW version.
    version: String,
    /// Last nonce received on this stream.
    nonce: String,
    entries: BTreeMap<String, Entry>,
    /// Wanted names not yet resolved (kept alongside `entries` so that checks are O(1)).
    pending: BTreeSet<String>,
    /// Names whose value came from the disk cache and is unconfirmed.
    cached: BTreeSet<String>,
    /// `wanted` changed since the last request of this type.
    wanted_changed: bool,
}

/// The protocol state of one client.
#[derive(Debug)]
pub struct AdsState {
    protocol: Protocol,
    node: PbNode,
    delete_on_absence: bool,
    dne_timeout: Duration,
    listeners: BTreeSet<String>,
    types: [TypeState; 4],
    connected: bool,
    node_sent: bool,
    /// An entry's value changed since the last publication.
    dirty: bool,
    /// A listener, route configuration or cluster changed, so the names wanted below it may have.
    derived_dirty: bool,
    /// Every entry's value, kept up to date change by change, so that publishing costs the
    /// size of what changed rather than of the whole mesh.
    working: MeshSnapshot,
    published: Option<Arc<MeshSnapshot>>,
    /// The certificate-provider instances the bootstrap defines (and this client serves); a
    /// TLS context naming another is NACKed (gRFC A29).
    cert_instances: BTreeSet<String>,
    /// Resources received from the server per type: (valid, invalid), for gRFC A78's
    /// `resource_updates_valid` / `_invalid` (unchanged resources count as valid).
    updates: [(u64, u64); 4],
}

fn index(t: ResourceType) -> usize {
    t as usize
}

/// Puts a resource into the working snapshot.
fn put(working: &mut MeshSnapshot, d: &Decoded) {
    match d {
        Decoded::Listener(l) => {
            drop(working.remove_server_listener(l.name()));
            working.insert_listener(l.clone())
        }
        Decoded::ServerListener(l) => {
            drop(working.remove_listener(l.name()));
            working.insert_server_listener(l.clone())
        }
        Decoded::RouteConfig(r) => working.insert_route_config(r.clone()),
        Decoded::Cluster(c) => working.insert_cluster(c.clone()),
        Decoded::Endpoints(e) => working.insert_endpoints(e.clone()),
    }
}

/// What became of a resource offered to the state.
enum Applied {
    /// Stored (or confirmed unchanged) under this name.
    Stored(String),
    /// Not asked for, and handed back: a cache load offers it again once the types above
    /// name it.
    Unwanted(Any),
}

/// Takes a resource out of the working snapshot.
fn take(working: &mut MeshSnapshot, ty: ResourceType, name: &str) {
    match ty {
        ResourceType::Listener => {
            drop(working.remove_listener(name));
            drop(working.remove_server_listener(name));
        }
        ResourceType::RouteConfiguration => drop(working.remove_route_config(name)),
        ResourceType::Cluster => drop(working.remove_cluster(name)),
        ResourceType::ClusterLoadAssignment => drop(working.remove_endpoints(name)),
    }
}

impl AdsState {
    /// A state with no subscriptions. `delete_on_absence` is false when the server declared
    /// `ignore_resource_deletion`.
    pub fn new(protocol: Protocol, node: PbNode, delete_on_absence: bool) -> Self {
        Self {
            protocol,
            node,
            delete_on_absence,
            dne_timeout: DOES_NOT_EXIST_TIMEOUT,
            listeners: BTreeSet::new(),
            types: Default::default(),
            connected: false,
            node_sent: false,
            dirty: false,
            derived_dirty: false,
            working: MeshSnapshot::new(),
            published: None,
            cert_instances: BTreeSet::new(),
            updates: [(0, 0); 4],
        }
    }

    /// Resources received per type, valid and invalid.
    pub fn update_counts(&self) -> Vec<(ResourceType, u64, u64)> {
        ResourceType::ALL
            .iter()
            .map(|&t| {
                let (valid, invalid) = self.updates[index(t)];
                (t, valid, invalid)
            })
            .collect()
    }

    fn count_update(&mut self, ty: ResourceType, valid: bool) {
        let c = &mut self.updates[index(ty)];
        if valid {
            c.0 = c.0.saturating_add(1);
        } else {
            c.1 = c.1.saturating_add(1);
        }
    }

    /// The certificate-provider instances TLS contexts may name (none by default).
    pub fn set_certificate_instances(&mut self, names: BTreeSet<String>) {
        self.cert_instances = names;
    }

    /// A cluster's TLS context must name instances that exist.
    fn check_instances(&self, d: &Decoded) -> Result<(), crate::decode::ResourceError> {
        let Decoded::Cluster(c) = d else {
            return Ok(());
        };
        let Some(tls) = c.tls() else { return Ok(()) };
        for (field, name) in [
            ("tls_certificate_provider_instance", &tls.identity_provider),
            ("ca_certificate_provider_instance", &tls.root_provider),
        ] {
            if let Some(name) = name
                .as_deref()
                .filter(|n| !self.cert_instances.contains(*n))
            {
                let defined = if self.cert_instances.is_empty() {
                    "none".to_string()
                } else {
                    self.cert_instances
                        .iter()
                        .map(|n| format!("{n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(crate::decode::ResourceError {
                    name: Some(c.name().to_string()),
                    message: format!(
                        "cluster {:?}: transport_socket: {field} {name:?} is not a certificate provider of the bootstrap (defined: {defined})",
                        c.name()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Changes the does-not-exist timeout (tests).
    pub fn set_does_not_exist_timeout(&mut self, timeout: Duration) {
        self.dne_timeout = timeout;
    }

    /// The protocol in use.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The listeners the application asked for.
    pub fn listeners(&self) -> &BTreeSet<String> {
        &self.listeners
    }

    /// The last snapshot published.
    pub fn published(&self) -> Option<&Arc<MeshSnapshot>> {
        self.published.as_ref()
    }

    /// Whether a stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The last nonce received for a type on this stream.
    pub fn nonce(&self, t: ResourceType) -> &str {
        &self.types[index(t)].nonce
    }

    /// The last accepted SotW version of a type.
    pub fn version(&self, t: ResourceType) -> &str {
        &self.types[index(t)].version
    }

    /// Every resource held, exactly as received (CSDS, and diffs between control planes).
    pub fn raw_resources(&self) -> Vec<(ResourceType, String, Any)> {
        ResourceType::ALL
            .iter()
            .flat_map(|&t| {
                self.types[index(t)]
                    .entries
                    .iter()
                    .filter_map(move |(name, e)| Some((t, name.clone(), e.raw.clone()?)))
            })
            .collect()
    }

    /// Every resource's status.
    pub fn statuses(&self) -> Vec<ResourceStatus> {
        ResourceType::ALL
            .iter()
            .flat_map(|&t| {
                self.types[index(t)]
                    .entries
                    .iter()
                    .map(move |(name, e)| ResourceStatus {
                        resource_type: t,
                        name: name.clone(),
                        version: e.version.clone(),
                        state: e.state.clone(),
                        last_updated: e.last_updated,
                        has_value: e.value.is_some(),
                    })
            })
            .collect()
    }

    /// Whether any resource in use came from the disk cache and is not yet confirmed.
    pub fn is_stale(&self) -> bool {
        self.types.iter().any(|t| !t.cached.is_empty())
    }

    /// Adds a listener (`host:port`, after the listener-name template).
    pub fn subscribe_listener(&mut self, name: &str, now: Instant) -> Vec<Output> {
        if !self.listeners.insert(name.to_string()) {
            return Vec::new();
        }
        self.derived_dirty = true;
        self.cascade(now, None)
    }

    /// Removes a listener.
    pub fn unsubscribe_listener(&mut self, name: &str, now: Instant) -> Vec<Output> {
        if !self.listeners.remove(name) {
            return Vec::new();
        }
        self.derived_dirty = true;
        self.cascade(now, None)
    }

    /// A new stream is up: nonces reset, every wanted name is requested again (Delta: with the
    /// versions we hold).
    pub fn on_connected(&mut self, now: Instant) -> Vec<Output> {
        self.connected = true;
        self.node_sent = false;
        for t in &mut self.types {
            t.nonce.clear();
            t.sent = None;
            t.wanted_changed = true;
        }
        let mut out = Vec::new();
        for ty in ResourceType::ALL {
            if !self.types[index(ty)].wanted.is_empty() {
                out.extend(self.request(ty, now, None).map(Output::Send));
            }
        }
        out
    }

    /// The stream went down: timers stop until requests go out again.
    pub fn on_disconnected(&mut self) {
        self.connected = false;
        for t in &mut self.types {
            for e in t.entries.values_mut() {
                e.requested_at = None;
            }
        }
    }

    /// Fires does-not-exist timers that have run out.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        let mut changed = false;
        for t in &mut self.types {
            for (name, e) in t.entries.iter_mut() {
                if let Some(at) = e.requested_at
                    && e.value.is_none()
                    && e.state == ResourceState::Requested
                    && now.saturating_duration_since(at) >= self.dne_timeout
                {
                    t.pending.remove(name);
                    e.state = ResourceState::DoesNotExist;
                    e.requested_at = None;
                    e.last_updated = Some(now);
                    changed = true;
                }
            }
        }
        if changed {
            self.dirty = true;
        }
        self.maybe_publish().into_iter().collect()
    }

    /// Handles a SotW response.
    pub fn on_sotw_response(&mut self, mut resp: DiscoveryResponse, now: Instant) -> Vec<Output> {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            let (type_url, response_nonce, error_detail) =
                unexpected_type(&resp.type_url, &resp.nonce);
            return vec![Output::Send(Request::Sotw(DiscoveryRequest {
                type_url,
                response_nonce,
                error_detail,
                ..Default::default()
            }))];
        };
        self.types[index(ty)].nonce = resp.nonce.clone();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        // Resources are moved into the state, not copied: at 100,000 resources the copies and
        // the frees of the originals are a large part of the load.
        for (i, any) in std::mem::take(&mut resp.resources).into_iter().enumerate() {
            let applied = self.apply(ty, any, &resp.version_info, now);
            self.count_update(ty, applied.is_ok());
            match applied {
                Ok(Applied::Stored(name)) => {
                    if !seen.insert(name.clone()) {
                        errors.push(format!("resource {name:?} appears twice in the response"));
                    }
                }
                Ok(Applied::Unwanted(_)) => {}
                Err((name, msg)) => {
                    if let Some(n) = &name {
                        seen.insert(n.clone());
                    }
                    errors.push(match name {
                        Some(_) => msg,
                        None => format!("resources[{i}]: {msg}"),
                    });
                }
            }
        }
        if ty.absence_deletes() && self.delete_on_absence {
            let t = &mut self.types[index(ty)];
            for (name, e) in t.entries.iter_mut() {
                if !seen.contains(name) && e.value.is_some() {
                    take(&mut self.working, ty, name);
                    t.cached.remove(name);
                    self.derived_dirty = true;
                    e.value = None;
                    e.raw = None;
                    e.version.clear();
                    e.state = ResourceState::DoesNotExist;
                    e.last_updated = Some(now);
                    self.dirty = true;
                } else if !seen.contains(name) && e.state == ResourceState::Requested {
                    // A SotW response for this type that omits a requested LDS/CDS name means
                    // the server does not have it.
                    t.pending.remove(name);
                    e.state = ResourceState::DoesNotExist;
                    e.requested_at = None;
                    e.last_updated = Some(now);
                    self.dirty = true;
                }
            }
        }
        let nack = nack_message(&errors, &resp.type_url, &resp.nonce);
        if nack.is_none() {
            self.types[index(ty)].version = resp.version_info.clone();
        }
        self.cascade(now, Some((ty, nack)))
    }

    /// Handles a Delta response.
    pub fn on_delta_response(
        &mut self,
        mut resp: DeltaDiscoveryResponse,
        now: Instant,
    ) -> Vec<Output> {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            let (type_url, response_nonce, error_detail) =
                unexpected_type(&resp.type_url, &resp.nonce);
            return vec![Output::Send(Request::Delta(DeltaDiscoveryRequest {
                type_url,
                response_nonce,
                error_detail,
                ..Default::default()
            }))];
        };
        self.types[index(ty)].nonce = resp.nonce.clone();
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, r) in std::mem::take(&mut resp.resources).into_iter().enumerate() {
            let Some(any) = r.resource else {
                self.count_update(ty, false);
                errors.push(format!("resources[{i}] ({:?}): no resource body", r.name));
                continue;
            };
            if !r.name.is_empty() && !seen.insert(r.name.clone()) {
                self.count_update(ty, false);
                errors.push(format!(
                    "resource {:?} appears twice in the response",
                    r.name
                ));
                continue;
            }
            let expect = (!r.name.is_empty()).then_some(r.name.as_str());
            let applied = self.apply_named(ty, any, &r.version, expect, now);
            self.count_update(ty, applied.is_ok());
            if let Err((name, msg)) = applied {
                errors.push(match name {
                    Some(_) => msg,
                    None => format!("resources[{i}] ({:?}): {msg}", r.name),
                });
            }
        }
        for name in &resp.removed_resources {
            if !self.delete_on_absence {
                // `ignore_resource_deletion` (A53): the server's deletions are not applied;
                // the last value stays until the server sends another.
                tracing::warn!(%name, type_url = %resp.type_url, "ignoring a deletion (the server declared ignore_resource_deletion)");
                continue;
            }
            let t = &mut self.types[index(ty)];
            if let Some(e) = t.entries.get_mut(name) {
                if e.value.is_some() {
                    take(&mut self.working, ty, name);
                    self.derived_dirty |= ty != ResourceType::ClusterLoadAssignment;
                }
                t.pending.remove(name);
                t.cached.remove(name);
                e.value = None;
                e.raw = None;
                e.version.clear();
                e.state = ResourceState::DoesNotExist;
                e.requested_at = None;
                e.last_updated = Some(now);
                self.dirty = true;
            }
        }
        let nack = nack_message(&errors, &resp.type_url, &resp.nonce);
        self.cascade(now, Some((ty, nack)))
    }

    /// Decodes one resource and stores it if it was asked for. `Stored(name)` when applied,
    /// `Unwanted` (with the resource back) when not asked for, `Err((name, reason))` when rejected.
    fn apply(
        &mut self,
        ty: ResourceType,
        any: Any,
        version: &str,
        now: Instant,
    ) -> Result<Applied, (Option<String>, String)> {
        self.apply_named(ty, any, version, None, now)
    }

    /// [`Self::apply`] for a resource the response names `expect` (Delta): a body that names
    /// another resource is rejected as `expect`, so that it cannot overwrite that other one.
    fn apply_named(
        &mut self,
        ty: ResourceType,
        any: Any,
        version: &str,
        expect: Option<&str>,
        now: Instant,
    ) -> Result<Applied, (Option<String>, String)> {
        if let Some(name) = self.unchanged(ty, &any, expect) {
            // The same bytes as the value in use: nothing to decode or validate again, so a
            // SotW response costs what changed in it.
            let t = &mut self.types[index(ty)];
            t.pending.remove(&name);
            t.cached.remove(&name);
            if let Some(e) = t.entries.get_mut(&name) {
                e.version = version.to_string();
                e.state = ResourceState::Acked;
                e.requested_at = None;
                e.last_updated = Some(now);
            }
            return Ok(Applied::Stored(name));
        }
        let decoded = decode(ty, &any).and_then(|d| {
            self.check_instances(&d)?;
            Ok(d)
        });
        let decoded = decoded.and_then(|d| match expect {
            Some(e) if e != d.name() => Err(crate::decode::ResourceError {
                name: Some(e.to_string()),
                message: format!(
                    "{} {e:?}: the resource's body is named {:?}",
                    ty.kind(),
                    d.name()
                ),
            }),
            _ => Ok(d),
        });
        match decoded {
            Ok(decoded) => {
                let name = decoded.name().to_string();
                let t = &mut self.types[index(ty)];
                // Servers may send what was not asked for; only wanted names are kept.
                let Some(e) = t.entries.get_mut(&name) else {
                    return Ok(Applied::Unwanted(any));
                };
                t.pending.remove(&name);
                t.cached.remove(&name);
                if e.raw.as_ref() != Some(&any) || e.value.is_none() {
                    self.derived_dirty |= ty != ResourceType::ClusterLoadAssignment;
                    put(&mut self.working, &decoded);
                    e.value = Some(decoded);
                    e.raw = Some(any);
                    self.dirty = true;
                }
                e.version = version.to_string();
                e.state = ResourceState::Acked;
                e.requested_at = None;
                e.last_updated = Some(now);
                Ok(Applied::Stored(name))
            }
            Err(err) => {
                let t = &mut self.types[index(ty)];
                if let Some(name) = &err.name
                    && let Some(e) = t.entries.get_mut(name)
                {
                    t.pending.remove(name);
                    t.cached.remove(name);
                    e.state = ResourceState::Nacked {
                        version: version.to_string(),
                        error: err.message.clone(),
                    };
                    e.requested_at = None;
                    e.last_updated = Some(now);
                    if e.value.is_none() {
                        self.dirty = true;
                    }
                }
                Err((err.name, err.message))
            }
        }
    }

    /// The name of a route configuration or endpoint set whose bytes are exactly those of the
    /// value in use (their validation depends on nothing but those bytes, unlike listeners'
    /// and clusters', which name certificate providers).
    fn unchanged(&self, ty: ResourceType, any: &Any, expect: Option<&str>) -> Option<String> {
        #[derive(Clone, PartialEq, prost::Message)]
        struct Named {
            // `name` of a RouteConfiguration, `cluster_name` of a ClusterLoadAssignment.
            #[prost(string, tag = "1")]
            name: String,
        }
        if !matches!(
            ty,
            ResourceType::RouteConfiguration | ResourceType::ClusterLoadAssignment
        ) || any.type_url != ty.type_url()
        {
            return None;
        }
        let name = <Named as prost::Message>::decode(&*any.value).ok()?.name;
        if expect.is_some_and(|e| e != name) {
            return None;
        }
        let e = self.types[index(ty)].entries.get(&name)?;
        (e.value.is_some() && e.raw.as_ref() == Some(any)).then_some(name)
    }

    /// Recomputes what each type wants from what the types above hold, drops what is no
    /// longer wanted, and emits: the ACK/NACK for `answered` first, then subscription changes,
    /// then a snapshot if one is complete and new.
    fn cascade(
        &mut self,
        now: Instant,
        answered: Option<(ResourceType, Option<String>)>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let answered_type = answered.as_ref().map(|a| a.0);
        let mut nack = answered.and_then(|a| a.1);
        if !std::mem::take(&mut self.derived_dirty) {
            // Only endpoints (or nothing) changed: no subscription can have moved, so the cost
            // stays proportional to the change.
            if let Some(ty) = answered_type
                && self.connected
            {
                out.extend(self.request(ty, now, nack.take()).map(Output::Send));
            }
            out.extend(self.maybe_publish());
            return out;
        }
        let listeners = self.listeners.clone();
        let (mut routes, mut clusters, mut endpoints) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for name in &listeners {
            match self.value(ResourceType::Listener, name) {
                Some(Decoded::Listener(l)) => match l.routes() {
                    RouteSource::Rds(rds) => {
                        routes.insert(rds.to_string());
                    }
                    RouteSource::Inline(rc) => clusters.extend(route_clusters(rc)),
                },
                // A server's routes are non-forwarding: they name no clusters.
                Some(Decoded::ServerListener(l)) => {
                    routes.extend(l.rds_names().map(|n| n.to_string()));
                }
                _ => {}
            }
        }
        for name in &routes {
            if let Some(Decoded::RouteConfig(rc)) =
                self.value(ResourceType::RouteConfiguration, name)
            {
                clusters.extend(route_clusters(rc));
            }
        }
        for name in &clusters {
            if let Some(Decoded::Cluster(c)) = self.value(ResourceType::Cluster, name) {
                endpoints.insert(c.eds_service_name().to_string());
            }
        }
        let mut wanted = [listeners, routes, clusters, endpoints];
        for ty in ResourceType::ALL {
            let t = &mut self.types[index(ty)];
            let changed = t.wanted != wanted[index(ty)];
            if changed {
                let next = std::mem::take(&mut wanted[index(ty)]);
                let working = &mut self.working;
                let dirty = &mut self.dirty;
                let (pending, cached) = (&mut t.pending, &mut t.cached);
                t.entries.retain(|name, e| {
                    let keep = next.contains(name);
                    if !keep {
                        pending.remove(name);
                        cached.remove(name);
                        if e.value.is_some() {
                            take(working, ty, name);
                            *dirty = true;
                        }
                    }
                    keep
                });
                for name in &next {
                    t.entries.entry(name.clone()).or_insert_with(|| {
                        pending.insert(name.clone());
                        Entry::new()
                    });
                }
                t.wanted = next;
                t.wanted_changed = true;
            }
            if (changed && self.connected) || answered_type == Some(ty) {
                let error = if answered_type == Some(ty) {
                    nack.take()
                } else {
                    None
                };
                if self.connected {
                    out.extend(self.request(ty, now, error).map(Output::Send));
                }
            }
        }
        out.extend(self.maybe_publish());
        out
    }

    fn value(&self, ty: ResourceType, name: &str) -> Option<&Decoded> {
        self.types[index(ty)].entries.get(name)?.value.as_ref()
    }

    /// Builds the request for a type from its current state; starts does-not-exist timers for
    /// names it carries that have no value yet.
    ///
    /// `None` when the request would read as a wildcard subscription: a SotW LDS or CDS
    /// request naming nothing (istiod answers an empty LDS request with every listener in
    /// scope), or a first Delta request naming nothing. The server then keeps the last names
    /// it was sent, and what it sends for them is ignored as unwanted.
    fn request(
        &mut self,
        ty: ResourceType,
        now: Instant,
        error: Option<String>,
    ) -> Option<Request> {
        let t = &self.types[index(ty)];
        let wildcard_type = matches!(ty, ResourceType::Listener | ResourceType::Cluster);
        let reads_as_wildcard = t.wanted.is_empty()
            && match self.protocol {
                Protocol::Sotw => wildcard_type,
                Protocol::Delta => t.sent.is_none(),
            };
        if reads_as_wildcard {
            return None;
        }
        let node = if self.node_sent {
            None
        } else {
            Some(self.node.clone())
        };
        self.node_sent = true;
        let protocol = self.protocol;
        let t = &mut self.types[index(ty)];
        let resubscribe = t.wanted_changed || t.sent.is_none();
        t.wanted_changed = false;
        if resubscribe {
            for (name, e) in t.entries.iter_mut() {
                let newly_sent = t.sent.as_ref().is_none_or(|s| !s.contains(name));
                if newly_sent && e.value.is_none() && e.state == ResourceState::Requested {
                    e.requested_at = Some(now);
                }
            }
        }
        let error_detail = error.map(|message| Status {
            code: INVALID_ARGUMENT,
            message,
            details: vec![],
        });
        let request = match protocol {
            Protocol::Sotw => Request::Sotw(DiscoveryRequest {
                version_info: t.version.clone(),
                node,
                resource_names: t.wanted.iter().cloned().collect(),
                type_url: ty.type_url().to_string(),
                response_nonce: t.nonce.clone(),
                error_detail,
                ..Default::default()
            }),
            Protocol::Delta if !resubscribe => Request::Delta(DeltaDiscoveryRequest {
                node,
                type_url: ty.type_url().to_string(),
                response_nonce: t.nonce.clone(),
                error_detail,
                ..Default::default()
            }),
            Protocol::Delta => {
                let first = t.sent.is_none();
                let sent = t.sent.clone().unwrap_or_default();
                let initial_resource_versions: HashMap<String, String> = if first {
                    t.entries
                        .iter()
                        .filter(|(_, e)| e.value.is_some() && !e.version.is_empty())
                        .map(|(n, e)| (n.clone(), e.version.clone()))
                        .collect()
                } else {
                    HashMap::new()
                };
                Request::Delta(DeltaDiscoveryRequest {
                    node,
                    type_url: ty.type_url().to_string(),
                    resource_names_subscribe: t.wanted.difference(&sent).cloned().collect(),
                    resource_names_unsubscribe: sent.difference(&t.wanted).cloned().collect(),
                    initial_resource_versions,
                    response_nonce: t.nonce.clone(),
                    error_detail,
                    ..Default::default()
                })
            }
        };
        if resubscribe {
            t.sent = Some(t.wanted.clone());
        }
        Some(request)
    }

    /// Publishes when something changed and every reference is settled.
    fn maybe_publish(&mut self) -> Option<Output> {
        // A confirmed cache changes nothing but the stale mark, which readers need to see.
        let stale_changed = self
            .published
            .as_ref()
            .is_some_and(|p| p.is_stale() != self.is_stale());
        if !self.dirty && !stale_changed {
            return None;
        }
        let all_resolved = self.types.iter().all(|t| t.pending.is_empty());
        debug_assert_eq!(
            all_resolved,
            self.types.iter().all(|t| t
                .wanted
                .iter()
                .all(|n| t.entries.get(n).is_some_and(Entry::resolved)))
        );
        if !all_resolved {
            return None;
        }
        let mut snap = self.working.clone();
        snap.set_stale(self.is_stale());
        self.dirty = false;
        let snap = Arc::new(snap);
        self.published = Some(snap.clone());
        Some(Output::Publish(snap))
    }

    /// The raw resources in use, for the on-disk cache: `(type, version, resource)`.
    pub fn cache_contents(&self) -> Vec<(ResourceType, String, Any)> {
        ResourceType::ALL
            .iter()
            .flat_map(|&ty| {
                self.types[index(ty)].entries.values().filter_map(move |e| {
                    e.raw
                        .as_ref()
                        .map(|raw| (ty, e.version.clone(), raw.clone()))
                })
            })
            .collect()
    }

    /// Seeds the state from the on-disk cache before any stream: each resource is validated
    /// again, kept as `Cached` (stale) until the server confirms it, and a snapshot is
    /// published if the cached configuration is complete.
    pub fn load_cached(
        &mut self,
        resources: Vec<(ResourceType, String, Any)>,
        now: Instant,
    ) -> Vec<Output> {
        let mut published = self.cascade(now, None);
        // Walk the cascade: each pass may unlock the next type's names.
        let mut pending = resources;
        for _ in 0..ResourceType::ALL.len() {
            let mut rest = Vec::new();
            for (ty, version, any) in pending {
                match self.apply(ty, any, &version, now) {
                    Ok(Applied::Stored(name)) => {
                        let t = &mut self.types[index(ty)];
                        if let Some(e) = t.entries.get_mut(&name) {
                            t.cached.insert(name);
                            e.state = ResourceState::Cached;
                        }
                    }
                    Ok(Applied::Unwanted(any)) => rest.push((ty, version, any)),
                    Err(_) => {}
                }
            }
            published.extend(self.cascade(now, None));
            pending = rest;
        }
        // Not connected, so there is nothing to send; entries found nowhere in the cache stay
        // pending and nothing is published until the server fills them in.
        published.retain(|o| matches!(o, Output::Publish(_)));
        published.split_off(published.len().saturating_sub(1))
    }
}

/// The NACK's `error_detail` message for the rejected resources of one response (`None`: ACK),
/// logged at warn.
fn nack_message(errors: &[String], type_url: &str, nonce: &str) -> Option<String> {
    if errors.is_empty() {
        return None;
    }
    let mut message = errors.join("; ");
    tracing::warn!(%type_url, %nonce, "NACK: {message}");
    // The whole list is logged; the server gets a bounded one (istiod logs it, and a response
    // of thousands of bad resources would otherwise make a megabyte-sized request).
    if message.len() > MAX_NACK_BYTES {
        let mut end = MAX_NACK_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(&format!(" ... ({} errors in all)", errors.len()));
    }
    Some(message)
}

/// The longest NACK message sent.
const MAX_NACK_BYTES: usize = 4096;

/// The NACK for a response of a type we never asked for: the type, the nonce, and why.
fn unexpected_type(type_url: &str, nonce: &str) -> (String, String, Option<Status>) {
    let error = Status {
        code: INVALID_ARGUMENT,
        message: format!("unexpected type {type_url:?}"),
        details: vec![],
    };
    (type_url.to_string(), nonce.to_string(), Some(error))
}

/// Every cluster a route configuration can send to (destinations and mirrors).
fn route_clusters(rc: &mesh_core::RouteConfig) -> impl Iterator<Item = String> + '_ {
    rc.virtual_hosts().iter().flat_map(|vh| {
        vh.routes()
            .iter()
            .filter_map(|r| r.forward())
            .flat_map(|f| {
                f.destination
                    .clusters()
                    .chain(f.mirrors.iter().map(|m| &m.cluster))
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
            })
    })
}

#[cfg(test)]
mod tests;
