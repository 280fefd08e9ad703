//! Endpoints of a cluster (EDS `ClusterLoadAssignment`): priorities, localities, weights, health.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;

use crate::error::{ConfigError, FieldError, ResourceKind};
use crate::fraction::Fraction;

/// Where an endpoint runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Locality {
    /// Region, e.g. `us-east1`.
    pub region: String,
    /// Zone, e.g. `us-east1-b`.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

/// An endpoint's health as the control plane reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HealthStatus {
    /// Not reported; treated as healthy.
    #[default]
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: not picked unless the cluster is in panic.
    Unhealthy,
    /// Draining: not picked unless the cluster is in panic.
    Draining,
    /// Health check timed out: not picked unless the cluster is in panic.
    Timeout,
    /// Degraded: still picked.
    Degraded,
}

impl HealthStatus {
    /// Whether load balancers may pick the endpoint outside panic mode.
    pub fn is_usable(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy | Self::Degraded)
    }
}

/// An unvalidated endpoint (`LbEndpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// IP and port.
    pub address: SocketAddr,
    /// Load-balancing weight; `None` means 1, `Some(0)` is invalid.
    pub weight: Option<u32>,
    /// Reported health.
    pub health: HealthStatus,
    /// Optional hostname (for SNI and logs).
    pub hostname: Option<String>,
    /// Labels (from the `istio` filter metadata, e.g. `version: v1`).
    pub labels: BTreeMap<String, String>,
}

impl EndpointSpec {
    /// A healthy, weight-1 endpoint at `address` with no labels.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            weight: None,
            health: HealthStatus::Unknown,
            hostname: None,
            labels: BTreeMap::new(),
        }
    }
}

/// Unvalidated endpoints of one locality at one priority (`LocalityLbEndpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalityEndpointsSpec {
    /// The locality.
    pub locality: Locality,
    /// Locality weight; unset or 0 skips the locality under locality-weighted balancing.
    pub weight: Option<u32>,
    /// Priority (0 is the highest); priorities must be contiguous from 0.
    pub priority: u32,
    /// The endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// An unvalidated `ClusterLoadAssignment`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterLoadAssignmentSpec {
    /// The cluster (or EDS service) name.
    pub cluster_name: String,
    /// Endpoints grouped by locality and priority.
    pub localities: Vec<LocalityEndpointsSpec>,
    /// Overprovisioning factor in percent; `None` means Envoy's 140.
    pub overprovisioning_factor: Option<u32>,
    /// Drop categories and their shares.
    pub drop_overloads: Vec<(String, Fraction)>,
}

/// A validated endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// IP and port.
    pub address: SocketAddr,
    /// Load-balancing weight (≥ 1).
    pub weight: u32,
    /// Reported health.
    pub health: HealthStatus,
    /// Optional hostname.
    pub hostname: Option<Box<str>>,
    /// Labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Index of its locality group in [`EndpointSet::localities`].
    pub locality: u32,
    /// Its priority.
    pub priority: u32,
}

/// A validated locality group: its endpoints are a contiguous range of [`EndpointSet::endpoints`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalityGroup {
    /// The locality.
    pub locality: Arc<Locality>,
    /// Weight; `None` when unset or 0.
    pub weight: Option<u32>,
    /// Priority.
    pub priority: u32,
    /// Indices of its endpoints.
    pub endpoints: Range<usize>,
}

/// Envoy's default overprovisioning factor (percent).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// A validated `ClusterLoadAssignment`: endpoints ordered by priority, then locality.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSet {
    cluster_name: Arc<str>,
    endpoints: Box<[Endpoint]>,
    localities: Box<[LocalityGroup]>,
    /// Locality-group index range of each priority.
    priorities: Box<[Range<usize>]>,
    overprovisioning_factor: u32,
    drop_overloads: Box<[(Box<str>, Fraction)]>,
    by_address: HashMap<SocketAddr, usize>,
}

impl EndpointSet {
    /// Validates a spec with the xDS rules: non-empty cluster name, priorities contiguous from
    /// 0, no locality twice in a priority, no address twice, endpoint weights non-zero, weight
    /// sums within `u32`.
    pub fn new(spec: &ClusterLoadAssignmentSpec) -> Result<Self, ConfigError> {
        let err =
            |e: FieldError| e.resource(ResourceKind::ClusterLoadAssignment, &spec.cluster_name);
        if spec.cluster_name.is_empty() {
            return Err(err(FieldError::new("cluster_name", "must not be empty")));
        }
        let overprovisioning_factor = spec
            .overprovisioning_factor
            .unwrap_or(DEFAULT_OVERPROVISIONING_FACTOR);
        if overprovisioning_factor == 0 {
            return Err(err(FieldError::new(
                "policy.overprovisioning_factor",
                "must be greater than 0",
            )));
        }
        // Contiguity means every priority is below the number of localities; checking that
        // first also bounds the allocation below by the input's size.
        let max_priority = spec.localities.iter().map(|l| l.priority).max();
        let priority_count = max_priority.map_or(0, |p| p as usize + 1);
        let mut seen_priorities = vec![false; priority_count.min(spec.localities.len())];
        for l in &spec.localities {
            if let Some(seen) = seen_priorities.get_mut(l.priority as usize) {
                *seen = true;
            }
        }
        if let Some(gap) =
            (0..priority_count).find(|&p| !seen_priorities.get(p).copied().unwrap_or(false))
        {
            return Err(err(FieldError::new(
                "endpoints",
                format!(
                    "priorities must be contiguous from 0, but priority {gap} has no locality while {} has",
                    max_priority.unwrap_or(0)
                ),
            )));
        }
        let mut order: Vec<usize> = (0..spec.localities.len()).collect();
        order.sort_by_key(|&i| spec.localities[i].priority);

        let mut endpoints = Vec::new();
        let mut localities = Vec::with_capacity(order.len());
        let mut priorities: Vec<Range<usize>> = Vec::new();
        let mut by_address = HashMap::new();
        let mut locality_seen: HashSet<(u32, &Locality)> = HashSet::new();
        let mut locality_weight_sum = vec![0u64; seen_priorities.len()];
        for &li in &order {
            let l = &spec.localities[li];
            let at = |e: FieldError| err(e.within(format!("endpoints[{li}]")));
            if !locality_seen.insert((l.priority, &l.locality)) {
                return Err(at(FieldError::new(
                    "locality",
                    format!(
                        "locality {} appears twice in priority {}",
                        l.locality, l.priority
                    ),
                )));
            }
            let sum = &mut locality_weight_sum[l.priority as usize];
            *sum += u64::from(l.weight.unwrap_or(0));
            if *sum > u64::from(u32::MAX) {
                return Err(at(FieldError::new(
                    "load_balancing_weight",
                    format!(
                        "locality weights of priority {} sum to more than {}",
                        l.priority,
                        u32::MAX
                    ),
                )));
            }
            let group = localities.len();
            let start = endpoints.len();
            let mut endpoint_weight_sum: u64 = 0;
            for (ei, e) in l.endpoints.iter().enumerate() {
                let at = |x: FieldError| at(x.within(format!("lb_endpoints[{ei}]")));
                let weight = match e.weight {
                    None => 1,
                    Some(0) => {
                        return Err(at(FieldError::new(
                            "load_balancing_weight",
                            "must be greater than 0",
                        )));
                    }
                    Some(w) => w,
                };
                endpoint_weight_sum += u64::from(weight);
                if endpoint_weight_sum > u64::from(u32::MAX) {
                    return Err(at(FieldError::new(
                        "load_balancing_weight",
                        format!(
                            "endpoint weights of the locality sum to more than {}",
                            u32::MAX
                        ),
                    )));
                }
                if e.address.port() == 0 {
                    return Err(at(FieldError::new(
                        "endpoint.address.socket_address.port_value",
                        "must not be 0",
                    )));
                }
                if by_address.insert(e.address, endpoints.len()).is_some() {
                    return Err(at(FieldError::new(
                        "endpoint.address",
                        format!("{} appears more than once in the cluster", e.address),
                    )));
                }
                endpoints.push(Endpoint {
                    address: e.address,
                    weight,
                    health: e.health,
                    hostname: e.hostname.as_deref().map(Into::into),
                    labels: Arc::new(e.labels.clone()),
                    locality: group as u32,
                    priority: l.priority,
                });
            }
            localities.push(LocalityGroup {
                locality: Arc::new(l.locality.clone()),
                weight: l.weight.filter(|w| *w > 0),
                priority: l.priority,
                endpoints: start..endpoints.len(),
            });
            let p = l.priority as usize;
            if priorities.len() <= p {
                priorities.push(group..group);
            }
            priorities[p].end = group + 1;
        }
        let drop_overloads = spec
            .drop_overloads
            .iter()
            .map(|(c, f)| (c.as_str().into(), *f))
            .collect();
        Ok(Self {
            cluster_name: spec.cluster_name.as_str().into(),
            endpoints: endpoints.into(),
            localities: localities.into(),
            priorities: priorities.into(),
            overprovisioning_factor,
            drop_overloads,
            by_address,
        })
    }

    /// The cluster (EDS service) name.
    pub fn cluster_name(&self) -> &Arc<str> {
        &self.cluster_name
    }

    /// Every endpoint, ordered by priority and locality.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The locality groups, ordered by priority.
    pub fn localities(&self) -> &[LocalityGroup] {
        &self.localities
    }

    /// The locality groups of each priority, highest priority first.
    pub fn priorities(&self) -> impl ExactSizeIterator<Item = &[LocalityGroup]> {
        self.priorities.iter().map(|r| &self.localities[r.clone()])
    }

    /// The number of priorities.
    pub fn priority_count(&self) -> usize {
        self.priorities.len()
    }

    /// The overprovisioning factor in percent.
    pub fn overprovisioning_factor(&self) -> u32 {
        self.overprovisioning_factor
    }

    /// Drop categories and their shares.
    pub fn drop_overloads(&self) -> &[(Box<str>, Fraction)] {
        &self.drop_overloads
    }

    /// The index of the endpoint at `address`.
    pub fn index_of(&self, address: SocketAddr) -> Option<usize> {
        self.by_address.get(&address).copied()
    }

    /// The number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are no endpoints.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8) -> EndpointSpec {
        EndpointSpec::new(SocketAddr::from(([10, 0, 0, last], 8080)))
    }

    fn loc(zone: &str, priority: u32, endpoints: Vec<EndpointSpec>) -> LocalityEndpointsSpec {
        LocalityEndpointsSpec {
            locality: Locality {
                region: "r".into(),
                zone: zone.into(),
                sub_zone: String::new(),
            },
            weight: Some(1),
            priority,
            endpoints,
        }
    }

    fn cla(localities: Vec<LocalityEndpointsSpec>) -> ClusterLoadAssignmentSpec {
        ClusterLoadAssignmentSpec {
            cluster_name: "outbound|80||ui".into(),
            localities,
            ..Default::default()
        }
    }

    fn error(spec: &ClusterLoadAssignmentSpec) -> String {
        EndpointSet::new(spec).unwrap_err().to_string()
    }

    #[test]
    fn orders_by_priority_and_indexes_addresses() {
        let s = EndpointSet::new(&cla(vec![
            loc("b", 1, vec![ep(3)]),
            loc("a", 0, vec![ep(1), ep(2)]),
        ]))
        .unwrap();
        assert_eq!(s.priority_count(), 2);
        let zones: Vec<Vec<&str>> = s
            .priorities()
            .map(|g| g.iter().map(|l| l.locality.zone.as_str()).collect())
            .collect();
        assert_eq!(zones, [vec!["a"], vec!["b"]]);
        assert_eq!(s.endpoints()[2].priority, 1);
        assert_eq!(s.index_of(SocketAddr::from(([10, 0, 0, 3], 8080))), Some(2));
        assert_eq!(s.overprovisioning_factor(), 140);
        assert_eq!(s.localities()[1].endpoints, 2..3);
    }

    #[test]
    fn rejects_what_xds_rejects() {
        assert_eq!(
            error(&cla(vec![
                loc("a", 0, vec![ep(1)]),
                loc("b", 2, vec![ep(2)])
            ])),
            "cluster load assignment \"outbound|80||ui\": endpoints: priorities must be contiguous from 0, but priority 1 has no locality while 2 has"
        );
        assert_eq!(
            error(&cla(vec![
                loc("a", 0, vec![ep(1)]),
                loc("a", 0, vec![ep(2)])
            ])),
            "cluster load assignment \"outbound|80||ui\": endpoints[1].locality: locality r/a/ appears twice in priority 0"
        );
        assert_eq!(
            error(&cla(vec![
                loc("a", 0, vec![ep(1)]),
                loc("b", 1, vec![ep(1)])
            ])),
            "cluster load assignment \"outbound|80||ui\": endpoints[1].lb_endpoints[0].endpoint.address: 10.0.0.1:8080 appears more than once in the cluster"
        );
        let mut zero = ep(1);
        zero.weight = Some(0);
        assert_eq!(
            error(&cla(vec![loc("a", 0, vec![zero])])),
            "cluster load assignment \"outbound|80||ui\": endpoints[0].lb_endpoints[0].load_balancing_weight: must be greater than 0"
        );
        let mut heavy = loc("a", 0, vec![ep(1)]);
        heavy.weight = Some(u32::MAX);
        assert!(
            error(&cla(vec![heavy, loc("b", 0, vec![ep(2)])]))
                .ends_with("locality weights of priority 0 sum to more than 4294967295")
        );
        assert_eq!(
            error(&ClusterLoadAssignmentSpec::default()),
            "cluster load assignment \"\": cluster_name: must not be empty"
        );
    }

    #[test]
    fn a_huge_priority_is_a_gap_not_an_allocation() {
        assert_eq!(
            error(&cla(vec![loc("a", u32::MAX, vec![ep(1)])])),
            "cluster load assignment \"outbound|80||ui\": endpoints: priorities must be contiguous from 0, but priority 0 has no locality while 4294967295 has"
        );
    }

    #[test]
    fn empty_assignment_is_valid() {
        let s = EndpointSet::new(&cla(vec![])).unwrap();
        assert!(s.is_empty());
        assert_eq!(s.priority_count(), 0);
    }
}
