//! The stack's per-cluster runtime state (picker, breaker, budget, outlier detection and the
//! endpoints' connection pools), kept across snapshots and found by cluster name.
//!
//! State is built lazily, for clusters that get traffic, and rebuilt when the cluster or its
//! endpoints change. Three rules keep it honest while snapshots change under requests:
//! - building (a picker can be a 5M-slot Maglev table) happens outside the map's lock, so
//!   requests to other clusters never wait for it; builds are serialised among themselves,
//!   as each takes over what the previous state had (counters, ejections, pools);
//! - state is built for the newest snapshot: a request still holding an older one uses the
//!   newer state rather than replacing it (a cluster the newest snapshot lacks gets state for
//!   that request only);
//! - entries of clusters that left the snapshot are dropped, closing their idle connections.

use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mesh_core::{MeshSnapshot, RetryBudgetConfig};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::ClusterState;
use crate::connector::MeshConnector;
use crate::pool::{ClusterConns, EndpointPool};

/// A cluster's runtime state and the connection pools of its endpoints (by endpoint index).
pub(crate) struct ClusterEntry<C> {
    pub state: ClusterState,
    pub conns: Arc<ClusterConns<C>>,
    pub pools: Box<[Arc<EndpointPool<C>>]>,
}

impl<C> std::ops::Deref for ClusterEntry<C> {
    type Target = ClusterState;

    fn deref(&self) -> &ClusterState {
        &self.state
    }
}

/// A cluster's runtime state as an admin page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterRuntime {
    /// The cluster.
    pub name: Arc<str>,
    /// Its endpoints, each with whether outlier detection has ejected it.
    pub endpoints: Vec<(std::net::SocketAddr, bool)>,
}

/// What building an entry needs from the stack's settings.
pub(crate) struct BuildSettings {
    pub retry_budget: Option<RetryBudgetConfig>,
    pub idle_timeout: Duration,
}

/// Every cluster's entry, by name.
pub(crate) struct Clusters<C> {
    map: RwLock<HashMap<Arc<str>, Arc<ClusterEntry<C>>>>,
    /// Held while an entry is built (never while the map is locked).
    building: Mutex<()>,
    /// The address of the snapshot entries were last pruned for: a request that sees another
    /// one checks for clusters that left. Only compared, never dereferenced.
    pruned_for: AtomicUsize,
    /// The snapshot `pruned_for` names, held so that its address cannot be reused by a later
    /// snapshot (which would then look pruned when it is not).
    pruned_snapshot: Mutex<Option<Arc<MeshSnapshot>>>,
}

impl<C> Default for Clusters<C> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
            building: Mutex::default(),
            pruned_for: AtomicUsize::new(0),
            pruned_snapshot: Mutex::default(),
        }
    }
}

fn current_for<C>(e: &ClusterEntry<C>, snap: &MeshSnapshot, name: &str) -> bool {
    snap.cluster(name).is_some_and(|c| {
        Arc::ptr_eq(&e.cluster, c)
            && snap
                .cluster_endpoints(c)
                .is_some_and(|eps| Arc::ptr_eq(&e.endpoints, eps))
    })
}

impl<C: MeshConnector> Clusters<C> {
    /// The state of cluster `name` for a request routed with `snap`; `newest` is the stack's
    /// snapshot channel. `None` when neither snapshot has the cluster and its endpoints.
    pub fn get(
        &self,
        snap: &Arc<MeshSnapshot>,
        newest: &watch::Receiver<Arc<MeshSnapshot>>,
        name: &str,
        connector: &C,
        settings: &BuildSettings,
    ) -> Option<Arc<ClusterEntry<C>>> {
        if self.pruned_for.load(Ordering::Relaxed) != Arc::as_ptr(snap) as usize {
            self.prune(snap, newest);
        }
        let found = self.lookup(name);
        if let Some(e) = &found
            && current_for(e, snap, name)
        {
            return found;
        }
        self.rebuild(snap, newest, name, found, connector, settings)
    }

    fn lookup(&self, name: &str) -> Option<Arc<ClusterEntry<C>>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    #[cold]
    fn rebuild(
        &self,
        snap: &Arc<MeshSnapshot>,
        newest: &watch::Receiver<Arc<MeshSnapshot>>,
        name: &str,
        found: Option<Arc<ClusterEntry<C>>>,
        connector: &C,
        settings: &BuildSettings,
    ) -> Option<Arc<ClusterEntry<C>>> {
        let latest = newest.borrow().clone();
        if !Arc::ptr_eq(snap, &latest) {
            if let Some(e) = &found
                && current_for(e, &latest, name)
            {
                // The request's snapshot is older than this state: use the newer state.
                return found;
            }
            if latest.cluster(name).is_none() {
                // Gone from the newest snapshot: state for this request only, stored nowhere.
                return build(snap, name, found.as_deref(), connector, settings).map(Arc::new);
            }
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        // Another request may have built it while this one waited.
        let previous = self.lookup(name);
        if let Some(e) = &previous
            && current_for(e, &latest, name)
        {
            return previous;
        }
        let entry = Arc::new(build(
            &latest,
            name,
            previous.as_deref(),
            connector,
            settings,
        )?);
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(entry.cluster.name().clone(), entry.clone());
        Some(entry)
    }

    /// Drops the entries of clusters `snap` does not have, if `snap` is the newest snapshot
    /// (pruning for an older one could drop state a newer snapshot still needs).
    #[cold]
    fn prune(&self, snap: &Arc<MeshSnapshot>, newest: &watch::Receiver<Arc<MeshSnapshot>>) {
        if !Arc::ptr_eq(snap, &newest.borrow()) {
            return;
        }
        let seen = Arc::as_ptr(snap) as usize;
        {
            let mut held = self
                .pruned_snapshot
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if held.as_ref().is_some_and(|h| Arc::ptr_eq(h, snap)) {
                return;
            }
            *held = Some(snap.clone());
            self.pruned_for.store(seen, Ordering::Relaxed);
        }
        let gone: Vec<Arc<ClusterEntry<C>>> = {
            let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
            let names: Vec<Arc<str>> = map
                .keys()
                .filter(|n| snap.cluster(n).is_none())
                .cloned()
                .collect();
            names.iter().filter_map(|n| map.remove(n)).collect()
        };
        // Dropped outside the lock: closing connections is not the map's business.
        drop(gone);
    }

    /// Each cluster with state: its name and its endpoints' ejections.
    pub fn runtime(&self) -> Vec<ClusterRuntime> {
        let entries: Vec<Arc<ClusterEntry<C>>> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut all: Vec<ClusterRuntime> = entries
            .iter()
            .map(|e| ClusterRuntime {
                name: e.cluster.name().clone(),
                endpoints: e.state.ejections(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// How many clusters have state (for tests and `config-dump`).
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Builds the entry of cluster `name` from `snap`, taking over what `previous` had: counters,
/// ejections, and the pools of endpoints that stay (their connections with them).
fn build<C: MeshConnector>(
    snap: &MeshSnapshot,
    name: &str,
    previous: Option<&ClusterEntry<C>>,
    connector: &C,
    settings: &BuildSettings,
) -> Option<ClusterEntry<C>> {
    let cluster = snap.cluster(name)?;
    let endpoints = snap.cluster_endpoints(cluster)?;
    let state = ClusterState::new(
        cluster.clone(),
        endpoints.clone(),
        previous.map(|p| &p.state),
        settings.retry_budget,
        Instant::now().into_std(),
    );
    // Connections made under other transport settings (plaintext, other SANs or roots) are
    // not reused: the cluster's new requirements apply to every request from now on.
    let same_transport = previous.is_some_and(|p| p.state.cluster.tls() == cluster.tls());
    let reusable = previous.filter(|_| same_transport);
    let conns = match reusable {
        Some(p) => p.conns.clone(),
        None => Arc::new(ClusterConns {
            connector: connector.clone(),
            breaker: state.breaker.clone(),
            freed: Default::default(),
            idle_timeout: settings.idle_timeout,
            cluster: RwLock::new(cluster.clone()),
        }),
    };
    *conns.cluster.write().unwrap_or_else(|e| e.into_inner()) = cluster.clone();
    let pools = endpoints
        .endpoints()
        .iter()
        .map(|e| {
            reusable
                .and_then(|p| Some(p.pools[p.endpoints.index_of(e.address)?].clone()))
                .unwrap_or_else(|| EndpointPool::new(conns.clone(), e.address))
        })
        .collect();
    Some(ClusterEntry {
        state,
        conns,
        pools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::TcpConnector;
    use mesh_core::{
        Cluster, ClusterLoadAssignmentSpec, ClusterSpec, EndpointSet, EndpointSpec,
        LocalityEndpointsSpec,
    };

    fn snapshot(ports: &[u16]) -> Arc<MeshSnapshot> {
        let mut snap = MeshSnapshot::new();
        snap.insert_cluster(
            Cluster::new(&ClusterSpec {
                name: "c".into(),
                ..Default::default()
            })
            .unwrap(),
        );
        snap.insert_endpoints(
            EndpointSet::new(&ClusterLoadAssignmentSpec {
                cluster_name: "c".into(),
                localities: vec![LocalityEndpointsSpec {
                    weight: Some(1),
                    endpoints: ports
                        .iter()
                        .map(|p| EndpointSpec::new(([127, 0, 0, 1], *p).into()))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .unwrap(),
        );
        Arc::new(snap)
    }

    fn ports(e: &ClusterEntry<TcpConnector>) -> Vec<u16> {
        e.endpoints
            .endpoints()
            .iter()
            .map(|e| e.address.port())
            .collect()
    }

    const SETTINGS: BuildSettings = BuildSettings {
        retry_budget: None,
        idle_timeout: Duration::from_secs(90),
    };

    #[tokio::test]
    async fn a_request_holding_an_old_snapshot_never_replaces_newer_state() {
        let old = snapshot(&[1]);
        let (tx, rx) = watch::channel(old.clone());
        let clusters = Clusters::<TcpConnector>::default();
        let first = clusters
            .get(&old, &rx, "c", &TcpConnector, &SETTINGS)
            .unwrap();
        assert_eq!(ports(&first), [1]);

        let new = snapshot(&[2, 3]);
        tx.send(new.clone()).unwrap();
        let newer = clusters
            .get(&new, &rx, "c", &TcpConnector, &SETTINGS)
            .unwrap();
        assert_eq!(ports(&newer), [2, 3]);
        // A request still routed with the old snapshot uses the newer state...
        let late = clusters
            .get(&old, &rx, "c", &TcpConnector, &SETTINGS)
            .unwrap();
        assert!(Arc::ptr_eq(&late, &newer));
        // ...and leaves it in place.
        let again = clusters
            .get(&new, &rx, "c", &TcpConnector, &SETTINGS)
            .unwrap();
        assert!(Arc::ptr_eq(&again, &newer));
    }

    #[tokio::test]
    async fn an_old_request_to_a_removed_cluster_gets_state_that_is_not_kept() {
        let old = snapshot(&[1]);
        let (tx, rx) = watch::channel(old.clone());
        let clusters = Clusters::<TcpConnector>::default();
        tx.send(Arc::new(MeshSnapshot::new())).unwrap();
        let e = clusters
            .get(&old, &rx, "c", &TcpConnector, &SETTINGS)
            .unwrap();
        assert_eq!(ports(&e), [1]);
        assert_eq!(clusters.len(), 0);
    }

    #[tokio::test]
    async fn a_snapshot_at_a_freed_snapshots_address_is_still_pruned() {
        let clusters = Clusters::<TcpConnector>::default();
        let (tx, rx) = watch::channel(Arc::new(MeshSnapshot::new()));
        for _ in 0..16 {
            let with_c = snapshot(&[1]);
            tx.send(with_c.clone()).unwrap();
            clusters
                .get(&with_c, &rx, "c", &TcpConnector, &SETTINGS)
                .unwrap();
            // The snapshot goes away, and the allocator may hand its address to the next one.
            drop(with_c);
            tx.send(Arc::new(MeshSnapshot::new())).unwrap();
            let without_c = Arc::new(MeshSnapshot::new());
            tx.send(without_c.clone()).unwrap();
            assert!(
                clusters
                    .get(&without_c, &rx, "c", &TcpConnector, &SETTINGS)
                    .is_none()
            );
            assert_eq!(clusters.len(), 0, "the removed cluster's state is dropped");
        }
    }

    #[tokio::test]
    async fn state_is_built_only_for_the_clusters_that_get_traffic() {
        let mut snap = MeshSnapshot::new();
        for i in 0..1_000 {
            let name = format!("c{i}");
            snap.insert_cluster(
                Cluster::new(&ClusterSpec {
                    name: name.clone(),
                    ..Default::default()
                })
                .unwrap(),
            );
            snap.insert_endpoints(
                EndpointSet::new(&ClusterLoadAssignmentSpec {
                    cluster_name: name,
                    localities: vec![LocalityEndpointsSpec {
                        weight: Some(1),
                        endpoints: vec![EndpointSpec::new(([127, 0, 0, 1], 1).into())],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .unwrap(),
            );
        }
        let snap = Arc::new(snap);
        let (_tx, rx) = watch::channel(snap.clone());
        let clusters = Clusters::<TcpConnector>::default();
        assert_eq!(clusters.len(), 0, "subscribed to 1,000, nothing built yet");
        for name in ["c1", "c20", "c300", "c999", "c1", "c20"] {
            clusters
                .get(&snap, &rx, name, &TcpConnector, &SETTINGS)
                .unwrap();
        }
        assert_eq!(clusters.len(), 4, "one state per cluster that got traffic");
    }
}
