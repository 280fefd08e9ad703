//! What a matched route does: destination cluster(s), timeouts, retries, mirrors, hashing.

use crate::time::capped;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use regex::Regex;
use xxhash_rust::xxh64::xxh64;

use super::retry::{RetryPolicy, RetryPolicySpec};
use crate::error::{FieldError, FieldResult};
use crate::fraction::Fraction;
use crate::rand_util::below_u64;
use crate::request::RouteRequest;

/// Where a route sends requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    /// One cluster.
    Cluster(String),
    /// Weighted clusters: `(name, weight)`; zero weights are skipped.
    Weighted(Vec<(String, u32)>),
}

/// A validated destination.
#[derive(Debug, Clone)]
pub enum Destination {
    /// One cluster.
    Cluster(Arc<str>),
    /// A weighted choice among clusters, made once per request.
    Weighted(WeightedClusters),
}

impl Destination {
    /// Picks the cluster for one request.
    #[inline]
    pub fn pick<R: RngCore + ?Sized>(&self, rng: &mut R) -> &Arc<str> {
        match self {
            Self::Cluster(c) => c,
            Self::Weighted(w) => w.pick(rng),
        }
    }

    /// Every cluster this destination can choose.
    pub fn clusters(&self) -> impl Iterator<Item = &Arc<str>> {
        let (one, many) = match self {
            Self::Cluster(c) => (Some(c), &[][..]),
            Self::Weighted(w) => (None, &w.clusters[..]),
        };
        one.into_iter().chain(many.iter().map(|(c, _)| c))
    }
}

/// Weighted clusters with non-zero weights and a precomputed cumulative table.
#[derive(Debug, Clone)]
pub struct WeightedClusters {
    clusters: Box<[(Arc<str>, u32)]>,
    cumulative: Box<[u64]>,
}

impl WeightedClusters {
    /// Validates entries: names non-empty, zero weights dropped, the sum in `1..=u32::MAX`.
    pub fn new(entries: &[(String, u32)]) -> FieldResult<Self> {
        let mut clusters = Vec::with_capacity(entries.len());
        let mut cumulative = Vec::with_capacity(entries.len());
        let mut total: u64 = 0;
        for (i, (name, weight)) in entries.iter().enumerate() {
            if name.is_empty() {
                return Err(FieldError::new(
                    format!("clusters[{i}].name"),
                    "must not be empty",
                ));
            }
            if *weight == 0 {
                continue;
            }
            total += u64::from(*weight);
            clusters.push((Arc::from(name.as_str()), *weight));
            cumulative.push(total);
        }
        if total == 0 {
            return Err(FieldError::new("clusters", "the sum of weights is 0"));
        }
        if total > u64::from(u32::MAX) {
            return Err(FieldError::new(
                "clusters",
                format!("the sum of weights {total} exceeds {}", u32::MAX),
            ));
        }
        Ok(Self {
            clusters: clusters.into(),
            cumulative: cumulative.into(),
        })
    }

    /// The non-zero entries.
    pub fn entries(&self) -> &[(Arc<str>, u32)] {
        &self.clusters
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Picks by `rand(0..sum)` over the cumulative weights.
    #[inline]
    pub fn pick<R: RngCore + ?Sized>(&self, rng: &mut R) -> &Arc<str> {
        let x = below_u64(rng, self.total());
        let i = self.cumulative.partition_point(|&c| c <= x);
        &self.clusters[i].0
    }
}

/// An unvalidated request mirror policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicySpec {
    /// The shadow cluster.
    pub cluster: String,
    /// Share of requests mirrored; `None` means all.
    pub fraction: Option<Fraction>,
}

/// A validated request mirror policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    /// The shadow cluster.
    pub cluster: Arc<str>,
    /// Share of requests mirrored.
    pub fraction: Fraction,
}

impl MirrorPolicy {
    /// Validates a spec: the cluster must be named.
    pub fn new(spec: &MirrorPolicySpec) -> FieldResult<Self> {
        if spec.cluster.is_empty() {
            return Err(FieldError::new("cluster", "must not be empty"));
        }
        Ok(Self {
            cluster: spec.cluster.as_str().into(),
            fraction: spec.fraction.unwrap_or(Fraction::ALL),
        })
    }
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashPolicyKind {
    /// A request header, optionally rewritten by `(regex, substitution)` first.
    Header {
        /// Header name.
        name: String,
        /// Optional `regex_rewrite`.
        regex_rewrite: Option<(String, String)>,
    },
    /// A cookie's value (no cookie is generated when missing).
    Cookie {
        /// Cookie name.
        name: String,
    },
    /// A query parameter's value.
    QueryParameter {
        /// Parameter name.
        name: String,
    },
    /// The client's source IP; in a proxyless client this is the process itself, so it
    /// produces no hash (documented difference from a sidecar, which sees the caller's IP).
    SourceIp,
    /// gRPC's `filter_state` key `io.grpc.channel_id`: one value per client.
    ChannelId,
}

/// An unvalidated route hash policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicySpec {
    /// What to hash.
    pub kind: HashPolicyKind,
    /// Stop evaluating further policies once a hash exists.
    pub terminal: bool,
}

/// A validated hash policy.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    kind: HashKind,
    terminal: bool,
}

#[derive(Debug, Clone)]
enum HashKind {
    Header(Box<str>, Option<(Regex, Box<str>)>),
    Cookie(Box<str>),
    Query(Box<str>),
    SourceIp,
    ChannelId,
}

impl HashPolicy {
    /// Validates a spec: names non-empty, rewrite regexes compile.
    pub fn new(spec: &HashPolicySpec) -> FieldResult<Self> {
        let named = |n: &str, field: &str| -> FieldResult<Box<str>> {
            if n.is_empty() {
                Err(FieldError::new(field, "must not be empty"))
            } else {
                Ok(n.into())
            }
        };
        let kind = match &spec.kind {
            HashPolicyKind::Header {
                name,
                regex_rewrite,
            } => {
                let name = named(&name.to_ascii_lowercase(), "header.header_name")?;
                let rewrite = match regex_rewrite {
                    None => None,
                    Some((re, sub)) => Some((
                        crate::matcher::bounded_regex(re, re, "header.regex_rewrite.pattern")?,
                        sub.as_str().into(),
                    )),
                };
                HashKind::Header(name, rewrite)
            }
            HashPolicyKind::Cookie { name } => HashKind::Cookie(named(name, "cookie.name")?),
            HashPolicyKind::QueryParameter { name } => {
                HashKind::Query(named(name, "query_parameter.name")?)
            }
            HashPolicyKind::SourceIp => HashKind::SourceIp,
            HashPolicyKind::ChannelId => HashKind::ChannelId,
        };
        Ok(Self {
            kind,
            terminal: spec.terminal,
        })
    }

    fn hash(&self, req: &RouteRequest<'_>, channel_id: u64) -> Option<u64> {
        match &self.kind {
            HashKind::Header(name, rewrite) => {
                let value = req.header(name)?;
                Some(match rewrite {
                    Some((re, sub)) => xxh64(re.replace_all(&value, &**sub).as_bytes(), 0),
                    None => xxh64(value.as_bytes(), 0),
                })
            }
            HashKind::Cookie(name) => {
                let cookies = req.header("cookie")?;
                cookies.split(';').find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == &**name).then(|| xxh64(v.as_bytes(), 0))
                })
            }
            HashKind::Query(name) => req.query_param(name).map(|v| xxh64(v.as_bytes(), 0)),
            HashKind::SourceIp => None,
            HashKind::ChannelId => Some(channel_id),
        }
    }
}

/// The request hash for ring hash / Maglev: policies combined in order as
/// `h = rotl(h, 1) ^ policy_hash`, stopping after a terminal policy that produced a hash;
/// `None` when nothing produced one (the caller then uses a random hash).
pub fn request_hash(
    policies: &[HashPolicy],
    req: &RouteRequest<'_>,
    channel_id: u64,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        if let Some(h) = p.hash(req, channel_id) {
            hash = Some(hash.map_or(h, |acc| acc.rotate_left(1) ^ h));
            if p.terminal {
                break;
            }
        }
    }
    hash
}

/// Timeout settings of a route (xDS `RouteAction.timeout` and `max_stream_duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeoutSpec {
    /// `RouteAction.timeout`: `None` is Envoy's default of 15 s; zero disables it.
    pub timeout: Option<Duration>,
    /// `max_stream_duration.max_stream_duration`; zero means no cap.
    pub max_stream_duration: Option<Duration>,
    /// `max_stream_duration.grpc_timeout_header_max`: when set, a request's `grpc-timeout` is
    /// honoured up to this cap (zero: uncapped).
    pub grpc_timeout_header_max: Option<Duration>,
}

/// Envoy's route timeout when none is configured.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Validated timeout settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    route: Option<Duration>,
    max_stream_duration: Option<Duration>,
    grpc_timeout_header_max: Option<Duration>,
}

fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

impl Timeouts {
    /// Resolves a spec: unset timeout becomes 15 s, zeros become "none".
    pub fn new(spec: &TimeoutSpec) -> Self {
        Self {
            route: nonzero(Some(spec.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT))).map(capped),
            max_stream_duration: spec.max_stream_duration.map(capped),
            grpc_timeout_header_max: spec.grpc_timeout_header_max.map(capped),
        }
    }

    /// The route timeout, if any.
    pub fn route_timeout(&self) -> Option<Duration> {
        self.route
    }

    /// The deadline for one request: the shortest of the route timeout and the stream
    /// duration cap (the route's, else the listener's). When `grpc_timeout_header_max` is set,
    /// the caller's `grpc-timeout` replaces the route timeout, capped by it (A31).
    pub fn effective(
        &self,
        grpc_timeout: Option<Duration>,
        listener_max_stream_duration: Option<Duration>,
    ) -> Option<Duration> {
        // A caller's `grpc-timeout` may say up to 99,999,999 hours.
        let grpc_timeout = grpc_timeout.map(capped);
        let base = match (self.grpc_timeout_header_max, grpc_timeout) {
            (Some(cap), Some(asked)) => Some(match nonzero(Some(cap)) {
                Some(cap) => asked.min(cap),
                None => asked,
            }),
            _ => self.route,
        };
        let cap = nonzero(self.max_stream_duration.or(listener_max_stream_duration));
        match (base, cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An unvalidated forwarding action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardActionSpec {
    /// Where to send requests.
    pub destination: DestinationSpec,
    /// Timeouts.
    pub timeouts: TimeoutSpec,
    /// Retry policy; `None` falls back to the virtual host's.
    pub retry_policy: Option<RetryPolicySpec>,
    /// Hash policies for ring hash / Maglev.
    pub hash_policies: Vec<HashPolicySpec>,
    /// Request mirror policies.
    pub mirrors: Vec<MirrorPolicySpec>,
}

impl ForwardActionSpec {
    /// An action sending everything to `cluster` with default settings.
    pub fn to_cluster(cluster: impl Into<String>) -> Self {
        Self {
            destination: DestinationSpec::Cluster(cluster.into()),
            timeouts: TimeoutSpec::default(),
            retry_policy: None,
            hash_policies: Vec::new(),
            mirrors: Vec::new(),
        }
    }
}

/// A validated forwarding action.
#[derive(Debug, Clone)]
pub struct ForwardAction {
    /// Where to send requests.
    pub destination: Destination,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// The effective retry policy (the route's, else the virtual host's).
    pub retry_policy: Option<RetryPolicy>,
    /// Hash policies.
    pub hash_policies: Box<[HashPolicy]>,
    /// Mirror policies.
    pub mirrors: Box<[MirrorPolicy]>,
}

impl ForwardAction {
    /// Validates a spec; `vhost_retry` is used when the route has no retry policy of its own.
    pub fn new(spec: &ForwardActionSpec, vhost_retry: Option<&RetryPolicy>) -> FieldResult<Self> {
        let destination = match &spec.destination {
            DestinationSpec::Cluster(c) if c.is_empty() => {
                return Err(FieldError::new("cluster", "must not be empty"));
            }
            DestinationSpec::Cluster(c) => Destination::Cluster(c.as_str().into()),
            DestinationSpec::Weighted(w) => Destination::Weighted(
                WeightedClusters::new(w).map_err(|e| e.within("weighted_clusters"))?,
            ),
        };
        let retry_policy = match &spec.retry_policy {
            Some(r) => Some(RetryPolicy::new(r).map_err(|e| e.within("retry_policy"))?),
            None => vhost_retry.cloned(),
        };
        let hash_policies = spec
            .hash_policies
            .iter()
            .enumerate()
            .map(|(i, h)| HashPolicy::new(h).map_err(|e| e.within(format!("hash_policy[{i}]"))))
            .collect::<FieldResult<_>>()?;
        let mirrors = spec
            .mirrors
            .iter()
            .enumerate()
            .map(|(i, m)| {
                MirrorPolicy::new(m).map_err(|e| e.within(format!("request_mirror_policies[{i}]")))
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            destination,
            timeouts: Timeouts::new(&spec.timeouts),
            retry_policy,
            hash_policies,
            mirrors,
        })
    }
}
