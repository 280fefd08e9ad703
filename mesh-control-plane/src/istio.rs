//! The Istio resources the control plane reads, as serde types (only the fields it uses;
//! unknown fields are ignored, as `kubectl apply` would not).

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Name.
    pub name: String,
    /// Namespace (default `default`).
    pub namespace: Option<String>,
}

/// A `ServiceEntry`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Hosts (FQDNs or short names).
    pub hosts: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Inline endpoints.
    pub endpoints: Vec<WorkloadEntry>,
    /// Selects `WorkloadEntry`s by label.
    pub workload_selector: Option<WorkloadSelector>,
    /// SANs expected from the workloads.
    pub subject_alt_names: Vec<String>,
    /// `MESH_INTERNAL` (default) or `MESH_EXTERNAL`: whether the endpoints are mesh workloads.
    pub location: Option<String>,
}

/// A ServiceEntry port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number.
    pub number: u32,
    /// Name.
    pub name: String,
    /// Protocol.
    pub protocol: String,
    /// Port on the endpoints (default: `number`).
    pub target_port: Option<u32>,
}

/// `workloadSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WorkloadSelector {
    /// Labels a WorkloadEntry must carry.
    pub labels: BTreeMap<String, String>,
}

/// A `WorkloadEntry` (also the shape of a ServiceEntry's inline endpoints).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address.
    pub address: String,
    /// Port by ServiceEntry port name.
    pub ports: BTreeMap<String, u32>,
    /// Labels, e.g. `version: v1`.
    pub labels: BTreeMap<String, String>,
    /// `region/zone/subzone`.
    pub locality: String,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// Service account (for the SPIFFE SANs).
    pub service_account: String,
}

/// A `VirtualService`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VirtualService {
    /// Hosts it applies to.
    pub hosts: Vec<String>,
    /// HTTP routes, in order.
    pub http: Vec<HttpRoute>,
}

/// An HTTP route of a VirtualService.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRoute {
    /// Name.
    pub name: String,
    /// Match conditions (any of them).
    #[serde(rename = "match")]
    pub matches: Vec<HttpMatch>,
    /// Destinations with weights.
    pub route: Vec<RouteDestination>,
    /// Retries.
    pub retries: Option<Retries>,
    /// Request timeout.
    pub timeout: Option<String>,
    /// Fault injection.
    pub fault: Option<Fault>,
    /// Mirror destination.
    pub mirror: Option<Destination>,
    /// Share mirrored.
    pub mirror_percentage: Option<Percent>,
    /// Header manipulation (not applied by a proxyless client: warned about).
    pub headers: Option<serde_yaml_ng::Value>,
    /// URI/authority rewrite (not applied: warned about).
    pub rewrite: Option<serde_yaml_ng::Value>,
}

/// A string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StringMatch {
    /// Exact.
    pub exact: Option<String>,
    /// Prefix.
    pub prefix: Option<String>,
    /// RE2 regex.
    pub regex: Option<String>,
}

/// An HTTP match condition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMatch {
    /// Name.
    pub name: String,
    /// Path match.
    pub uri: Option<StringMatch>,
    /// Header matches.
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Method match.
    pub method: Option<StringMatch>,
    /// Authority match.
    pub authority: Option<StringMatch>,
    /// Query parameter matches.
    pub query_params: BTreeMap<String, StringMatch>,
    /// Only for this service port.
    pub port: Option<u32>,
    /// Case-insensitive URI match.
    pub ignore_uri_case: bool,
}

/// A weighted destination.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Weight (percent).
    pub weight: Option<u32>,
}

/// A destination service, subset and port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Destination {
    /// Host.
    pub host: String,
    /// Subset.
    pub subset: Option<String>,
    /// Port.
    pub port: Option<PortSelector>,
}

/// `port: {number: N}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PortSelector {
    /// Number.
    pub number: u32,
}

/// `retries`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Retries {
    /// Attempts (retries).
    pub attempts: u32,
    /// Per-try timeout.
    pub per_try_timeout: Option<String>,
    /// Conditions.
    pub retry_on: Option<String>,
}

/// `{value: 10.0}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Percent {
    /// Percent, fractional allowed.
    pub value: f64,
}

/// `fault`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Fault {
    /// Delay.
    pub delay: Option<FaultDelay>,
    /// Abort.
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultDelay {
    /// Fixed delay.
    pub fixed_delay: Option<String>,
    /// Share delayed.
    pub percentage: Option<Percent>,
    /// Deprecated integer percent.
    pub percent: Option<u32>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultAbort {
    /// HTTP status.
    pub http_status: Option<u32>,
    /// gRPC status name, e.g. `UNAVAILABLE`.
    pub grpc_status: Option<String>,
    /// Share aborted.
    pub percentage: Option<Percent>,
}

/// A `DestinationRule`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DestinationRule {
    /// Host.
    pub host: String,
    /// Policy for every subset.
    pub traffic_policy: Option<TrafficPolicy>,
    /// Subsets.
    pub subsets: Vec<Subset>,
}

/// A subset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Subset {
    /// Name.
    pub name: String,
    /// Labels the endpoints must carry.
    pub labels: BTreeMap<String, String>,
    /// Overrides.
    pub traffic_policy: Option<TrafficPolicy>,
}

/// `trafficPolicy`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// Load balancer.
    pub load_balancer: Option<LoadBalancer>,
    /// Connection pool.
    pub connection_pool: Option<ConnectionPool>,
    /// Outlier detection.
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS.
    pub tls: Option<Tls>,
}

/// `loadBalancer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `PASSTHROUGH`.
    pub simple: Option<String>,
    /// Consistent hashing.
    pub consistent_hash: Option<ConsistentHash>,
}

/// `consistentHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ConsistentHash {
    /// Hash this header.
    pub http_header_name: Option<String>,
    /// Hash this cookie.
    pub http_cookie: Option<Cookie>,
    /// Hash the source IP.
    pub use_source_ip: Option<bool>,
    /// Hash this query parameter.
    pub http_query_parameter_name: Option<String>,
    /// Ring hash settings.
    pub ring_hash: Option<RingHash>,
    /// Maglev settings.
    pub maglev: Option<Maglev>,
    /// Legacy minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `httpCookie`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Cookie {
    /// Name.
    pub name: String,
}

/// `ringHash`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RingHash {
    /// Minimum ring size.
    pub minimum_ring_size: Option<u64>,
}

/// `maglev`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Maglev {
    /// Table size.
    pub table_size: Option<u64>,
}

/// `connectionPool`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionPool {
    /// TCP settings.
    pub tcp: Option<TcpSettings>,
    /// HTTP settings.
    pub http: Option<HttpSettings>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TcpSettings {
    /// Max connections.
    pub max_connections: Option<u32>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpSettings {
    /// Max pending requests.
    pub http1_max_pending_requests: Option<u32>,
    /// Max requests.
    pub http2_max_requests: Option<u32>,
    /// Max retries outstanding.
    pub max_retries: Option<u32>,
}

/// `outlierDetection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Deprecated: consecutive gateway errors.
    pub consecutive_errors: Option<u32>,
    /// Consecutive 5xx.
    #[serde(rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive 502/503/504.
    pub consecutive_gateway_errors: Option<u32>,
    /// Sweep interval.
    pub interval: Option<String>,
    /// Base ejection time.
    pub base_ejection_time: Option<String>,
    /// Max ejection percent.
    pub max_ejection_percent: Option<u32>,
    /// Panic threshold.
    pub min_health_percent: Option<u32>,
}

/// `tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Tls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL`, `ISTIO_MUTUAL`.
    pub mode: String,
}

/// `selector: {matchLabels: ...}` of security resources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels a workload must carry.
    pub match_labels: BTreeMap<String, String>,
}

/// A `PeerAuthentication`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Workloads it applies to (all in the namespace when absent).
    pub selector: Option<LabelSelector>,
    /// `mtls.mode`.
    pub mtls: Option<Mtls>,
    /// Per-port modes.
    pub port_level_mtls: BTreeMap<u32, Mtls>,
}

/// `mtls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Mtls {
    /// `STRICT`, `PERMISSIVE`, `DISABLE`, `UNSET`.
    pub mode: String,
}

/// An `AuthorizationPolicy`. Unknown fields are errors: a policy field mesh ignored would
/// allow or deny what the author did not mean.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizationPolicy {
    /// Workloads it applies to.
    pub selector: Option<LabelSelector>,
    /// `ALLOW` (default), `DENY`, `AUDIT`, `CUSTOM`.
    pub action: Option<String>,
    /// Rules.
    pub rules: Vec<AuthzRule>,
}

/// An authorization rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzRule {
    /// Sources (any).
    pub from: Vec<AuthzFrom>,
    /// Operations (any).
    pub to: Vec<AuthzTo>,
    /// Conditions (all).
    pub when: Vec<AuthzCondition>,
}

/// `from`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzFrom {
    /// The source.
    pub source: AuthzSource,
}

/// `from.source`: each list any-of, all lists together, `not*` lists none-of.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzSource {
    /// Peer identities (without `spiffe://`).
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    pub not_principals: Vec<String>,
    /// Request principals (`iss/sub`).
    pub request_principals: Vec<String>,
    /// Request principals that must not match.
    pub not_request_principals: Vec<String>,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    pub not_namespaces: Vec<String>,
    /// IP blocks.
    pub ip_blocks: Vec<String>,
    /// IP blocks that must not match.
    pub not_ip_blocks: Vec<String>,
    /// Remote IP blocks (the same as `ipBlocks` without proxies in front).
    pub remote_ip_blocks: Vec<String>,
    /// Remote IP blocks that must not match.
    pub not_remote_ip_blocks: Vec<String>,
}

/// `to`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzTo {
    /// The operation.
    pub operation: AuthzOperation,
}

/// `to.operation`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzOperation {
    /// Methods.
    pub methods: Vec<String>,
    /// Methods that must not match.
    pub not_methods: Vec<String>,
    /// Paths (`/orders*` prefix, `*x` suffix).
    pub paths: Vec<String>,
    /// Paths that must not match.
    pub not_paths: Vec<String>,
    /// Hosts.
    pub hosts: Vec<String>,
    /// Hosts that must not match.
    pub not_hosts: Vec<String>,
    /// Ports.
    pub ports: Vec<String>,
    /// Ports that must not match.
    pub not_ports: Vec<String>,
}

/// `when`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthzCondition {
    /// Key, e.g. `request.auth.claims[groups]`.
    pub key: String,
    /// Values (any).
    pub values: Vec<String>,
    /// Values that must not match.
    pub not_values: Vec<String>,
}

/// A `RequestAuthentication`: which JWTs a workload accepts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthentication {
    /// Workloads it applies to.
    pub selector: Option<LabelSelector>,
    /// The accepted issuers.
    pub jwt_rules: Vec<JwtRule>,
}

/// A `jwtRules` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRule {
    /// `iss`.
    pub issuer: String,
    /// Accepted audiences (empty: any).
    pub audiences: Vec<String>,
    /// Where the keys are fetched from.
    pub jwks_uri: String,
    /// The keys, inline (a JWKS document).
    pub jwks: String,
    /// Headers tokens are read from.
    pub from_headers: Vec<JwtHeader>,
    /// Query parameters tokens are read from.
    pub from_params: Vec<String>,
    /// Cookies tokens are read from.
    pub from_cookies: Vec<String>,
    /// A header the verified payload is written to.
    pub output_payload_to_header: String,
    /// Whether the token is passed on to the application.
    pub forward_original_token: bool,
    /// Claims copied to headers.
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    /// The JWKS fetch timeout (`5s`).
    pub timeout: Option<String>,
}

/// `fromHeaders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtHeader {
    /// The header.
    pub name: String,
    /// What precedes the token.
    pub prefix: String,
}

/// `outputClaimToHeaders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClaimToHeader {
    /// The header.
    pub header: String,
    /// The claim.
    pub claim: String,
}
