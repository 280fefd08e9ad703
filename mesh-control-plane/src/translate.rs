//! Istio resources → xDS resources, named and shaped the way istiod's grpc generator serves
//! proxyless clients (see the crate docs for where we deliberately send more).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as epb;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, Struct, UInt32Value, Value, value::Kind,
};
use prost::Message;

use crate::config::{ConfigError, IstioConfig, Named};
use crate::istio;

/// LDS type URL.
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// RDS type URL.
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// CDS type URL.
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// EDS type URL.
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
/// istiod's default retry conditions for every outbound route.
const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The translated resources, by type URL and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// Client listeners by `fqdn:port`.
    pub listeners: BTreeMap<String, Any>,
    /// Server listeners by `xds.istio.io/grpc/lds/inbound/IP:PORT` (served by name only: a
    /// wildcard LDS request gets the client listeners, as from istiod).
    pub inbound_listeners: BTreeMap<String, Any>,
    /// Route configurations by `outbound|port||fqdn`.
    pub routes: BTreeMap<String, Any>,
    /// Clusters by `outbound|port|subset|fqdn`.
    pub clusters: BTreeMap<String, Any>,
    /// Load assignments by cluster name.
    pub endpoints: BTreeMap<String, Any>,
    /// Things accepted but not applied (e.g. header rewrites), for the operator.
    pub warnings: Vec<String>,
}

impl Resources {
    /// The resources of a type URL, mutably.
    pub fn of_mut(&mut self, type_url: &str) -> Option<&mut BTreeMap<String, Any>> {
        match type_url {
            LISTENER_TYPE => Some(&mut self.listeners),
            ROUTE_TYPE => Some(&mut self.routes),
            CLUSTER_TYPE => Some(&mut self.clusters),
            ENDPOINT_TYPE => Some(&mut self.endpoints),
            _ => None,
        }
    }

    /// The resources of a type URL.
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        match type_url {
            LISTENER_TYPE => Some(&self.listeners),
            ROUTE_TYPE => Some(&self.routes),
            CLUSTER_TYPE => Some(&self.clusters),
            ENDPOINT_TYPE => Some(&self.endpoints),
            _ => None,
        }
    }
}

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// `outbound|PORT|SUBSET|HOST`.
pub fn subset_key(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// A short name (no dot) becomes `name.NAMESPACE.svc.cluster.local`.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') {
        host.to_ascii_lowercase()
    } else {
        format!(
            "{}.{namespace}.svc.cluster.local",
            host.to_ascii_lowercase()
        )
    }
}

/// Parses an Istio duration: `1h`, `5m`, `2s`, `100ms`, `1.5s`, `250us`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let secs = match unit {
        "h" => v * 3600.0,
        "m" => v * 60.0,
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "ns" => v / 1e9,
        _ => return None,
    };
    (secs < 1e10).then(|| Duration::from_secs_f64(secs))
}

pub(crate) fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn u32v(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

/// An endpoint of a service port.
#[derive(Debug, Clone)]
struct Ep {
    ip: String,
    port: u32,
    labels: BTreeMap<String, String>,
    locality: String,
    weight: u32,
    service_account: String,
    /// Its workload's name; empty outside the mesh (a `MESH_EXTERNAL` ServiceEntry), which
    /// then gets no `istio.workload` metadata.
    workload: String,
    /// The workload's namespace (a WorkloadEntry is selected only from its ServiceEntry's).
    namespace: String,
}

#[derive(Debug, Clone)]
struct Service {
    fqdn: String,
    namespace: String,
    port: u32,
    endpoints: Vec<Ep>,
    sans: Vec<String>,
}

/// The whole translation.
pub fn translate(cfg: &IstioConfig) -> Result<Resources, ConfigError> {
    let mut out = Resources::default();
    let services = services(cfg)?;
    let rules = destination_rules(cfg)?;
    let by_host: HashMap<&str, Vec<&Service>> = services.iter().fold(HashMap::new(), |mut m, s| {
        m.entry(s.fqdn.as_str()).or_default().push(s);
        m
    });
    // VirtualServices by host: the first one naming a host wins, as in Istio.
    let mut vs_for: HashMap<String, &Named<istio::VirtualService>> = HashMap::new();
    for vs in &cfg.virtual_services {
        for h in &vs.spec.hosts {
            vs_for.entry(fqdn(h, &vs.namespace)).or_insert(vs);
        }
    }
    for vs in &cfg.virtual_services {
        validate_virtual_service(vs, &by_host, &rules)?;
    }

    for svc in &services {
        let name = format!("{}:{}", svc.fqdn, svc.port);
        let rds = subset_key(svc.port, "", &svc.fqdn);
        out.listeners.insert(name.clone(), listener(&name, &rds));
        let vs = vs_for.get(&svc.fqdn).copied();
        let routes = match vs {
            Some(vs) => vs_routes(vs, svc, &by_host, &rules, &mut out.warnings)?,
            None => vec![default_route(svc, &rules)],
        };
        let vh = rpb::VirtualHost {
            name: name.clone(),
            domains: domains(svc),
            routes,
            include_request_attempt_count: true,
            ..Default::default()
        };
        let rc = rpb::RouteConfiguration {
            name: rds.clone(),
            virtual_hosts: vec![vh],
            ..Default::default()
        };
        out.routes.insert(rds, any(ROUTE_TYPE, &rc));

        let rule = rule_for(&rules, &svc.fqdn);
        let mut subsets: Vec<(String, Option<&istio::Subset>)> = vec![(String::new(), None)];
        if let Some(r) = rule {
            subsets.extend(r.spec.subsets.iter().map(|s| (s.name.clone(), Some(s))));
        }
        for (subset, def) in subsets {
            let cname = subset_key(svc.port, &subset, &svc.fqdn);
            let policy = merged_policy(
                rule.and_then(|r| r.spec.traffic_policy.as_ref()),
                def.and_then(|s| s.traffic_policy.as_ref()),
            );
            let c = cluster(
                &cname,
                &policy,
                svc,
                rule.map(|r| r as &Named<_>),
                &mut out.warnings,
            )?;
            out.clusters.insert(cname.clone(), any(CLUSTER_TYPE, &c));
            let selected: Vec<&Ep> = svc
                .endpoints
                .iter()
                .filter(|e| {
                    def.is_none_or(|s| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
                })
                .collect();
            out.endpoints.insert(
                cname.clone(),
                any(ENDPOINT_TYPE, &load_assignment(&cname, &selected)),
            );
        }
        for e in &svc.endpoints {
            let w = crate::inbound::WorkloadPort {
                ip: e.ip.clone(),
                port: e.port,
                namespace: svc.namespace.clone(),
                labels: e.labels.clone(),
            };
            let name = format!("{}{}:{}", crate::inbound::INBOUND_PREFIX, w.ip, w.port);
            out.inbound_listeners
                .entry(name)
                .or_insert_with(|| crate::inbound::inbound_listener(cfg, &w));
        }
    }
    Ok(out)
}

fn services(cfg: &IstioConfig) -> Result<Vec<Service>, ConfigError> {
    let mut out = Vec::new();
    let mut seen = HashMap::new();
    for se in &cfg.service_entries {
        if se.spec.hosts.is_empty() {
            return Err(se.error("ServiceEntry", "spec.hosts", "must name at least one host"));
        }
        if se.spec.ports.is_empty() {
            return Err(se.error(
                "ServiceEntry",
                "spec.ports",
                "must declare at least one port",
            ));
        }
        let external = match se.spec.location.as_deref() {
            None | Some("MESH_INTERNAL") => false,
            Some("MESH_EXTERNAL") => true,
            Some(other) => {
                return Err(se.error(
                    "ServiceEntry",
                    "spec.location",
                    format!("{other:?} is not MESH_INTERNAL or MESH_EXTERNAL"),
                ));
            }
        };
        let mut workloads: Vec<(String, &istio::WorkloadEntry)> = se
            .spec
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("{}-{i}", se.name), e))
            .collect();
        if let Some(sel) = &se.spec.workload_selector {
            for we in &cfg.workload_entries {
                if we.namespace == se.namespace
                    && sel
                        .labels
                        .iter()
                        .all(|(k, v)| we.spec.labels.get(k) == Some(v))
                {
                    workloads.push((we.name.clone(), &we.spec));
                }
            }
        }
        for (pi, p) in se.spec.ports.iter().enumerate() {
            if p.number == 0 || p.number > 65535 {
                return Err(se.error(
                    "ServiceEntry",
                    &format!("spec.ports[{pi}].number"),
                    format!("{} is not a port", p.number),
                ));
            }
            let mut endpoints = Vec::new();
            for (wi, (workload, w)) in workloads.iter().enumerate() {
                if w.address.parse::<std::net::IpAddr>().is_err() {
                    return Err(se.error(
                        "ServiceEntry",
                        &format!("spec.endpoints[{wi}].address"),
                        format!("{:?} is not an IP address (DNS endpoints are not served to proxyless clients)", w.address),
                    ));
                }
                let port = w
                    .ports
                    .get(&p.name)
                    .copied()
                    .or(p.target_port)
                    .unwrap_or(p.number);
                endpoints.push(Ep {
                    ip: w.address.clone(),
                    port,
                    labels: w.labels.clone(),
                    locality: w.locality.clone(),
                    weight: w.weight.unwrap_or(1).max(1),
                    service_account: w.service_account.clone(),
                    workload: if external {
                        String::new()
                    } else {
                        workload.clone()
                    },
                    namespace: se.namespace.clone(),
                });
            }
            for h in &se.spec.hosts {
                let host = fqdn(h, &se.namespace);
                if let Some(prev) = seen.insert((host.clone(), p.number), se.name.clone())
                    && prev != se.name
                {
                    return Err(se.error(
                        "ServiceEntry",
                        "spec.hosts",
                        format!(
                            "{host}:{} is already declared by ServiceEntry {prev}",
                            p.number
                        ),
                    ));
                }
                out.push(Service {
                    fqdn: host,
                    namespace: se.namespace.clone(),
                    port: p.number,
                    endpoints: endpoints.clone(),
                    sans: se.spec.subject_alt_names.clone(),
                });
            }
        }
    }
    Ok(out)
}

/// The DestinationRule for `host`: its own, else the longest wildcard host covering it
/// (`*.default.svc.cluster.local`, `*`), as istiod picks them.
fn rule_for<'a>(
    rules: &'a HashMap<String, &'a Named<istio::DestinationRule>>,
    host: &str,
) -> Option<&'a &'a Named<istio::DestinationRule>> {
    rules.get(host).or_else(|| {
        rules
            .iter()
            .filter(|(k, _)| {
                k.as_str() == "*"
                    || k.strip_prefix('*')
                        .is_some_and(|suffix| host.ends_with(suffix))
            })
            .max_by_key(|(k, _)| k.len())
            .map(|(_, v)| v)
    })
}

fn destination_rules(
    cfg: &IstioConfig,
) -> Result<HashMap<String, &Named<istio::DestinationRule>>, ConfigError> {
    let mut out = HashMap::new();
    for dr in &cfg.destination_rules {
        if dr.spec.host.is_empty() {
            return Err(dr.error("DestinationRule", "spec.host", "is required"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if s.name.is_empty() || !names.insert(&s.name) {
                return Err(dr.error(
                    "DestinationRule",
                    &format!("spec.subsets[{i}].name"),
                    format!("{:?} is empty or repeated", s.name),
                ));
            }
        }
        for (field, p) in std::iter::once((
            "spec.trafficPolicy".to_string(),
            dr.spec.traffic_policy.as_ref(),
        ))
        .chain(dr.spec.subsets.iter().enumerate().map(|(i, s)| {
            (
                format!("spec.subsets[{i}].trafficPolicy"),
                s.traffic_policy.as_ref(),
            )
        })) {
            if let Some(p) = p {
                check_policy(dr, &field, p)?;
            }
        }
        out.entry(fqdn(&dr.spec.host, &dr.namespace)).or_insert(dr);
    }
    Ok(out)
}

fn duration_field<T>(
    r: &Named<T>,
    kind: &str,
    field: &str,
    v: &Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) => parse_duration(s).map(Some).ok_or_else(|| {
            r.error(
                kind,
                field,
                format!("{s:?} is not a duration (e.g. 2s, 100ms, 5m)"),
            )
        }),
    }
}

fn check_policy(
    dr: &Named<istio::DestinationRule>,
    field: &str,
    p: &istio::TrafficPolicy,
) -> Result<(), ConfigError> {
    if let Some(o) = &p.outlier_detection {
        duration_field(
            dr,
            "DestinationRule",
            &format!("{field}.outlierDetection.interval"),
            &o.interval,
        )?;
        duration_field(
            dr,
            "DestinationRule",
            &format!("{field}.outlierDetection.baseEjectionTime"),
            &o.base_ejection_time,
        )?;
        if o.max_ejection_percent.is_some_and(|m| m > 100) {
            return Err(dr.error(
                "DestinationRule",
                &format!("{field}.outlierDetection.maxEjectionPercent"),
                "must be at most 100",
            ));
        }
    }
    if let Some(tcp) = p.connection_pool.as_ref().and_then(|c| c.tcp.as_ref()) {
        duration_field(
            dr,
            "DestinationRule",
            &format!("{field}.connectionPool.tcp.connectTimeout"),
            &tcp.connect_timeout,
        )?;
    }
    if let Some(lb) = &p.load_balancer
        && let Some(s) = &lb.simple
        && !matches!(
            s.as_str(),
            "ROUND_ROBIN"
                | "LEAST_REQUEST"
                | "LEAST_CONN"
                | "RANDOM"
                | "PASSTHROUGH"
                | "UNSPECIFIED"
        )
    {
        return Err(dr.error(
            "DestinationRule",
            &format!("{field}.loadBalancer.simple"),
            format!("unknown policy {s:?}"),
        ));
    }
    Ok(())
}

/// The subset's policy sections replace the top-level ones they set (Istio merges per section).
fn merged_policy(
    top: Option<&istio::TrafficPolicy>,
    subset: Option<&istio::TrafficPolicy>,
) -> istio::TrafficPolicy {
    let mut p = top.cloned().unwrap_or_default();
    if let Some(s) = subset {
        if s.load_balancer.is_some() {
            p.load_balancer = s.load_balancer.clone();
        }
        if s.connection_pool.is_some() {
            p.connection_pool = s.connection_pool.clone();
        }
        if s.outlier_detection.is_some() {
            p.outlier_detection = s.outlier_detection.clone();
        }
        if s.tls.is_some() {
            p.tls = s.tls.clone();
        }
    }
    p
}

fn validate_virtual_service(
    vs: &Named<istio::VirtualService>,
    by_host: &HashMap<&str, Vec<&Service>>,
    rules: &HashMap<String, &Named<istio::DestinationRule>>,
) -> Result<(), ConfigError> {
    const K: &str = "VirtualService";
    if vs.spec.hosts.is_empty() {
        return Err(vs.error(K, "spec.hosts", "must name at least one host"));
    }
    for (i, h) in vs.spec.http.iter().enumerate() {
        let at = |f: &str| format!("spec.http[{i}].{f}");
        if h.route.is_empty() {
            return Err(vs.error(K, &at("route"), "must have at least one destination"));
        }
        if h.route.len() > 1 {
            let sum: u32 = h.route.iter().map(|r| r.weight.unwrap_or(0)).sum();
            if sum != 100 {
                return Err(vs.error(
                    K,
                    &at("route"),
                    format!("weights sum to {sum}; they must sum to 100"),
                ));
            }
        }
        let dests = h
            .route
            .iter()
            .enumerate()
            .map(|(j, r)| (format!("route[{j}].destination"), &r.destination));
        let mirror = h.mirror.iter().map(|m| ("mirror".to_string(), m));
        for (field, d) in dests.chain(mirror) {
            let host = fqdn(&d.host, &vs.namespace);
            if !by_host.contains_key(host.as_str()) {
                return Err(vs.error(
                    K,
                    &at(&format!("{field}.host")),
                    format!("{host:?} is not a known service (declare it with a ServiceEntry)"),
                ));
            }
            if let Some(subset) = &d.subset {
                let defined = rules
                    .get(&host)
                    .is_some_and(|r| r.spec.subsets.iter().any(|s| &s.name == subset));
                if !defined {
                    return Err(vs.error(
                        K,
                        &at(&format!("{field}.subset")),
                        format!(
                            "subset {subset:?} is not defined in any DestinationRule for {host}"
                        ),
                    ));
                }
            }
        }
        duration_field(vs, K, &at("timeout"), &h.timeout)?;
        if let Some(r) = &h.retries {
            duration_field(vs, K, &at("retries.perTryTimeout"), &r.per_try_timeout)?;
        }
        if let Some(f) = &h.fault {
            if let Some(d) = &f.delay {
                match &d.fixed_delay {
                    None => return Err(vs.error(K, &at("fault.delay.fixedDelay"), "is required")),
                    Some(_) => duration_field(vs, K, &at("fault.delay.fixedDelay"), &d.fixed_delay)
                        .map(|_| ())?,
                }
            }
            if let Some(a) = &f.abort {
                match (a.http_status, &a.grpc_status) {
                    (Some(s), None) if !(200..600).contains(&s) => {
                        return Err(vs.error(
                            K,
                            &at("fault.abort.httpStatus"),
                            format!("{s} is not in 200..599"),
                        ));
                    }
                    (None, Some(g)) if grpc_code(g).is_none() => {
                        return Err(vs.error(
                            K,
                            &at("fault.abort.grpcStatus"),
                            format!("{g:?} is not a gRPC status name"),
                        ));
                    }
                    (None, None) | (Some(_), Some(_)) => {
                        return Err(vs.error(
                            K,
                            &at("fault.abort"),
                            "needs exactly one of httpStatus and grpcStatus",
                        ));
                    }
                    _ => {}
                }
            }
        }
        for (j, m) in h.matches.iter().enumerate() {
            for (f, sm) in [
                ("uri", m.uri.as_ref()),
                ("method", m.method.as_ref()),
                ("authority", m.authority.as_ref()),
            ] {
                if let Some(sm) = sm {
                    string_match(sm)
                        .map_err(|why| vs.error(K, &at(&format!("match[{j}].{f}")), why))?;
                }
            }
            for (name, sm) in m
                .headers
                .iter()
                .chain(&m.without_headers)
                .chain(&m.query_params)
            {
                string_match(sm)
                    .map_err(|why| vs.error(K, &at(&format!("match[{j}].headers.{name}")), why))?;
            }
        }
    }
    Ok(())
}

fn grpc_code(name: &str) -> Option<u32> {
    const CODES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    CODES
        .iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// Istio's exact/prefix/regex string match as an xDS `StringMatcher`.
fn string_match(m: &istio::StringMatch) -> Result<mpb::StringMatcher, String> {
    use mpb::string_matcher::MatchPattern as P;
    let pattern = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => P::Exact(e.clone()),
        (None, Some(p), None) => P::Prefix(p.clone()),
        (None, None, Some(r)) => P::SafeRegex(mpb::RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
        _ => return Err("needs exactly one of exact, prefix and regex".into()),
    };
    Ok(mpb::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// A service's virtual host domains, in istiod's order (seen from istiod 1.30 of 2026-04):
/// the FQDN, the FQDN with a trailing dot, then the short forms, each bare and with the port.
fn domains(svc: &Service) -> Vec<String> {
    let p = svc.port;
    let mut names = vec![svc.fqdn.clone(), format!("{}.", svc.fqdn)];
    if let Some(short) = svc
        .fqdn
        .strip_suffix(&format!(".{}.svc.cluster.local", svc.namespace))
    {
        names.extend([
            short.to_string(),
            format!("{short}.{}.svc", svc.namespace),
            format!("{short}.{}", svc.namespace),
        ]);
    }
    names
        .into_iter()
        .flat_map(|n| {
            let with_port = format!("{n}:{p}");
            [n, with_port]
        })
        .collect()
}

fn listener(name: &str, rds: &str) -> Any {
    let filter = |n: &str, t: &str| hcm::HttpFilter {
        name: n.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: t.into(),
            value: vec![],
        })),
        ..Default::default()
    };
    let m = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        core::AggregatedConfigSource {},
                    )),
                    ..Default::default()
                }),
                route_config_name: rds.into(),
            },
        )),
        http_filters: vec![
            filter("envoy.filters.http.fault", FAULT_TYPE),
            filter("envoy.filters.http.router", ROUTER_TYPE),
        ],
        ..Default::default()
    };
    any(
        LISTENER_TYPE,
        &lpb::Listener {
            name: name.into(),
            // istiod gives API listeners an address too, 0.0.0.0 and the port of the name
            // (clients ignore it; sending it keeps the two servers' resources equal).
            address: name
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u32>().ok())
                .map(|port| core::Address {
                    address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                        address: "0.0.0.0".into(),
                        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
                        ..Default::default()
                    })),
                }),
            api_listener: Some(lpb::ApiListener {
                api_listener: Some(any(HCM_TYPE, &m)),
            }),
            ..Default::default()
        },
    )
}

fn default_retry() -> rpb::RetryPolicy {
    // As istiod sends it (checked with scripts/istiod/xds-diff.sh): `retriable-status-codes`
    // with no codes, and a new host for each retry.
    rpb::RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.into(),
        num_retries: u32v(2),
        ..retry_hosts()
    }
}

/// istiod's part of every retry policy: retry on another host (mesh does so anyway).
fn retry_hosts() -> rpb::RetryPolicy {
    rpb::RetryPolicy {
        retry_host_predicate: vec![rpb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(rpb::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(
                "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
                &envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate::default(),
            ))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn hash_policies(
    rule: Option<&&Named<istio::DestinationRule>>,
) -> Vec<rpb::route_action::HashPolicy> {
    use rpb::route_action::hash_policy::{self as hp, PolicySpecifier as P};
    let Some(ch) = rule
        .and_then(|r| r.spec.traffic_policy.as_ref())
        .and_then(|p| p.load_balancer.as_ref())
        .and_then(|lb| lb.consistent_hash.as_ref())
    else {
        return Vec::new();
    };
    let spec = if let Some(h) = &ch.http_header_name {
        P::Header(hp::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        P::Cookie(hp::Cookie {
            name: c.name.clone(),
            ..Default::default()
        })
    } else if let Some(q) = &ch.http_query_parameter_name {
        P::QueryParameter(hp::QueryParameter { name: q.clone() })
    } else {
        P::ConnectionProperties(hp::ConnectionProperties { source_ip: true })
    };
    vec![rpb::route_action::HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }]
}

fn default_route(
    svc: &Service,
    rules: &HashMap<String, &Named<istio::DestinationRule>>,
) -> rpb::Route {
    rpb::Route {
        name: "default".into(),
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(rpb::route::Action::Route(rpb::RouteAction {
            cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(subset_key(
                svc.port, "", &svc.fqdn,
            ))),
            timeout: Some(pb_duration(Duration::ZERO)),
            retry_policy: Some(default_retry()),
            hash_policy: hash_policies(rule_for(rules, &svc.fqdn)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn fraction_million(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: 2,
    }
}

fn vs_routes(
    vs: &Named<istio::VirtualService>,
    svc: &Service,
    by_host: &HashMap<&str, Vec<&Service>>,
    rules: &HashMap<String, &Named<istio::DestinationRule>>,
    warnings: &mut Vec<String>,
) -> Result<Vec<rpb::Route>, ConfigError> {
    let mut routes = Vec::new();
    let cluster_of = |d: &istio::Destination| {
        let host = fqdn(&d.host, &vs.namespace);
        let port = match &d.port {
            Some(p) => p.number,
            None if host == svc.fqdn => svc.port,
            None => by_host
                .get(host.as_str())
                .and_then(|s| (s.len() == 1).then(|| s[0].port))
                .unwrap_or(svc.port),
        };
        subset_key(port, d.subset.as_deref().unwrap_or(""), &host)
    };
    for (i, h) in vs.spec.http.iter().enumerate() {
        if h.headers.is_some() || h.rewrite.is_some() {
            warnings.push(format!(
                "{}:{}: VirtualService {}/{}: spec.http[{i}]: headers and rewrite are not applied by proxyless clients (ignored)",
                vs.file, vs.line, vs.namespace, vs.name
            ));
        }
        let cluster = match &h.route[..] {
            [one] => rpb::route_action::ClusterSpecifier::Cluster(cluster_of(&one.destination)),
            many => rpb::route_action::ClusterSpecifier::WeightedClusters(rpb::WeightedCluster {
                clusters: many
                    .iter()
                    .filter(|r| r.weight.unwrap_or(0) > 0)
                    .map(|r| rpb::weighted_cluster::ClusterWeight {
                        name: cluster_of(&r.destination),
                        weight: u32v(r.weight.unwrap_or(0)),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        };
        let timeout = h
            .timeout
            .as_deref()
            .and_then(parse_duration)
            .unwrap_or(Duration::ZERO);
        let retry_policy = match &h.retries {
            Some(r) if r.attempts == 0 => None,
            Some(r) => {
                let mut on = Vec::new();
                let mut codes = Vec::new();
                for t in r
                    .retry_on
                    .as_deref()
                    .unwrap_or(DEFAULT_RETRY_ON)
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    match t.parse::<u32>() {
                        Ok(c) => codes.push(c),
                        Err(_) => on.push(t.to_string()),
                    }
                }
                if !codes.is_empty() && !on.iter().any(|t| t == "retriable-status-codes") {
                    on.push("retriable-status-codes".into());
                }
                Some(rpb::RetryPolicy {
                    retry_on: on.join(","),
                    num_retries: u32v(r.attempts),
                    per_try_timeout: r
                        .per_try_timeout
                        .as_deref()
                        .and_then(parse_duration)
                        .map(pb_duration),
                    retriable_status_codes: codes,
                    ..retry_hosts()
                })
            }
            None => Some(default_retry()),
        };
        let mirrors = h
            .mirror
            .iter()
            .map(|m| rpb::route_action::RequestMirrorPolicy {
                cluster: cluster_of(m),
                runtime_fraction: Some(core::RuntimeFractionalPercent {
                    default_value: Some(fraction_million(
                        h.mirror_percentage.as_ref().map_or(100.0, |p| p.value),
                    )),
                    runtime_key: String::new(),
                }),
                ..Default::default()
            })
            .collect();
        let first_dest = h
            .route
            .first()
            .map(|r| fqdn(&r.destination.host, &vs.namespace))
            .unwrap_or_default();
        let action = rpb::RouteAction {
            cluster_specifier: Some(cluster),
            timeout: Some(pb_duration(timeout)),
            max_stream_duration: Some(rpb::route_action::MaxStreamDuration {
                max_stream_duration: Some(pb_duration(timeout)),
                ..Default::default()
            }),
            retry_policy,
            hash_policy: hash_policies(rule_for(rules, &first_dest)),
            request_mirror_policies: mirrors,
            ..Default::default()
        };
        let typed_per_filter_config: HashMap<String, Any> = h
            .fault
            .as_ref()
            .map(|f| {
                HashMap::from([(
                    "envoy.filters.http.fault".to_string(),
                    any(FAULT_TYPE, &fault(f)),
                )])
            })
            .unwrap_or_default();
        let matches: Vec<Option<&istio::HttpMatch>> = if h.matches.is_empty() {
            vec![None]
        } else {
            h.matches.iter().map(Some).collect()
        };
        let mut catch_all = false;
        for m in matches {
            if m.and_then(|m| m.port).is_some_and(|p| p != svc.port) {
                continue;
            }
            let route_match = route_match(m)
                .map_err(|why| vs.error("VirtualService", &format!("spec.http[{i}].match"), why))?;
            catch_all |= m.is_none_or(|m| {
                m.uri.is_none()
                    && m.headers.is_empty()
                    && m.without_headers.is_empty()
                    && m.method.is_none()
                    && m.authority.is_none()
                    && m.query_params.is_empty()
            });
            let name = match m.map(|m| m.name.as_str()).filter(|n| !n.is_empty()) {
                Some(n) if !h.name.is_empty() => format!("{}.{n}", h.name),
                _ => h.name.clone(),
            };
            routes.push(rpb::Route {
                name,
                r#match: Some(route_match),
                action: Some(rpb::route::Action::Route(action.clone())),
                typed_per_filter_config: typed_per_filter_config.clone(),
                ..Default::default()
            });
        }
        // istiod stops after a catch-all route: nothing after it could match.
        if catch_all {
            break;
        }
    }
    Ok(routes)
}

fn route_match(m: Option<&istio::HttpMatch>) -> Result<rpb::RouteMatch, String> {
    use rpb::route_match::PathSpecifier as P;
    let Some(m) = m else {
        return Ok(rpb::RouteMatch {
            path_specifier: Some(P::Prefix("/".into())),
            ..Default::default()
        });
    };
    let path = match &m.uri {
        None => P::Prefix("/".into()),
        Some(u) => match (&u.exact, &u.prefix, &u.regex) {
            (Some(e), None, None) => P::Path(e.clone()),
            (None, Some(p), None) => P::Prefix(p.clone()),
            (None, None, Some(r)) => P::SafeRegex(mpb::RegexMatcher {
                regex: r.clone(),
                ..Default::default()
            }),
            _ => return Err("uri needs exactly one of exact, prefix and regex".into()),
        },
    };
    let header =
        |name: &str, sm: &istio::StringMatch, invert: bool| -> Result<rpb::HeaderMatcher, String> {
            // Istio turns a `regex: "*"` header match into a presence check.
            let spec = if sm.regex.as_deref() == Some("*") {
                rpb::header_matcher::HeaderMatchSpecifier::PresentMatch(true)
            } else {
                rpb::header_matcher::HeaderMatchSpecifier::StringMatch(string_match(sm)?)
            };
            Ok(rpb::HeaderMatcher {
                name: name.into(),
                header_match_specifier: Some(spec),
                invert_match: invert,
                treat_missing_header_as_empty: invert,
            })
        };
    let mut headers = Vec::new();
    for (n, sm) in &m.headers {
        headers.push(header(&n.to_ascii_lowercase(), sm, false)?);
    }
    for (n, sm) in &m.without_headers {
        headers.push(header(&n.to_ascii_lowercase(), sm, true)?);
    }
    if let Some(sm) = &m.method {
        headers.push(header(":method", sm, false)?);
    }
    if let Some(sm) = &m.authority {
        headers.push(header(":authority", sm, false)?);
    }
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    let query_parameters = m
        .query_params
        .iter()
        .map(|(n, sm)| {
            Ok(rpb::QueryParameterMatcher {
                name: n.clone(),
                query_parameter_match_specifier: Some(
                    rpb::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                        string_match(sm)?,
                    ),
                ),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(rpb::RouteMatch {
        path_specifier: Some(path),
        // istiod always writes it.
        case_sensitive: Some(BoolValue {
            value: !m.ignore_uri_case,
        }),
        headers,
        query_parameters,
        ..Default::default()
    })
}

fn fault(f: &istio::Fault) -> fault_pb::HttpFault {
    let pct = |p: &Option<istio::Percent>, legacy: Option<u32>| match (p, legacy) {
        (Some(p), _) => Some(fraction_million(p.value)),
        (None, Some(n)) => Some(FractionalPercent {
            numerator: n,
            denominator: 0,
        }),
        // Istio: no percentage means every request.
        (None, None) => Some(fraction_million(100.0)),
    };
    fault_pb::HttpFault {
        delay: f.delay.as_ref().map(|d| common_fault::FaultDelay {
            fault_delay_secifier: d
                .fixed_delay
                .as_deref()
                .and_then(parse_duration)
                .map(|x| common_fault::fault_delay::FaultDelaySecifier::FixedDelay(pb_duration(x))),
            percentage: pct(&d.percentage, d.percent),
        }),
        abort: f.abort.as_ref().map(|a| fault_pb::FaultAbort {
            error_type: match (a.http_status, &a.grpc_status) {
                (Some(s), _) => Some(fault_pb::fault_abort::ErrorType::HttpStatus(s)),
                (None, Some(g)) => grpc_code(g).map(fault_pb::fault_abort::ErrorType::GrpcStatus),
                _ => None,
            },
            percentage: pct(&a.percentage, None),
        }),
        ..Default::default()
    }
}

fn cluster(
    name: &str,
    p: &istio::TrafficPolicy,
    svc: &Service,
    rule: Option<&Named<istio::DestinationRule>>,
    warnings: &mut Vec<String>,
) -> Result<cpb::Cluster, ConfigError> {
    let mut c = cpb::Cluster {
        name: name.into(),
        alt_stat_name: format!("{name};"),
        cluster_discovery_type: Some(cpb::cluster::ClusterDiscoveryType::Type(
            cpb::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cpb::cluster::EdsClusterConfig {
            eds_config: Some(core::ConfigSource {
                config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                    core::AggregatedConfigSource {},
                )),
                ..Default::default()
            }),
            service_name: name.into(),
        }),
        ..Default::default()
    };
    if let Some(lb) = &p.load_balancer {
        if let Some(ch) = &lb.consistent_hash {
            if let Some(m) = &ch.maglev {
                c.lb_policy = cpb::cluster::LbPolicy::Maglev as i32;
                c.lb_config = Some(cpb::cluster::LbConfig::MaglevLbConfig(
                    cpb::cluster::MaglevLbConfig {
                        table_size: m
                            .table_size
                            .map(|v| envoy_types::pb::google::protobuf::UInt64Value { value: v }),
                    },
                ));
            } else {
                c.lb_policy = cpb::cluster::LbPolicy::RingHash as i32;
                let min = ch
                    .ring_hash
                    .as_ref()
                    .and_then(|r| r.minimum_ring_size)
                    .or(ch.minimum_ring_size)
                    .unwrap_or(1024);
                c.lb_config = Some(cpb::cluster::LbConfig::RingHashLbConfig(
                    cpb::cluster::RingHashLbConfig {
                        minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                            value: min,
                        }),
                        ..Default::default()
                    },
                ));
            }
        } else {
            match lb.simple.as_deref() {
                Some("LEAST_REQUEST" | "LEAST_CONN") => {
                    c.lb_policy = cpb::cluster::LbPolicy::LeastRequest as i32
                }
                Some("RANDOM") => c.lb_policy = cpb::cluster::LbPolicy::Random as i32,
                Some("PASSTHROUGH") => warnings.push(format!(
                    "cluster {name}: PASSTHROUGH is served as ROUND_ROBIN"
                )),
                _ => {}
            }
        }
    }
    // Istio's sidecar defaults: every threshold unlimited unless the connection pool says so.
    let pool = p.connection_pool.as_ref();
    let http = pool.and_then(|c| c.http.as_ref());
    let tcp = pool.and_then(|c| c.tcp.as_ref());
    c.circuit_breakers = Some(cpb::CircuitBreakers {
        thresholds: vec![cpb::circuit_breakers::Thresholds {
            max_connections: u32v(tcp.and_then(|t| t.max_connections).unwrap_or(u32::MAX)),
            max_pending_requests: u32v(
                http.and_then(|h| h.http1_max_pending_requests)
                    .unwrap_or(u32::MAX),
            ),
            max_requests: u32v(http.and_then(|h| h.http2_max_requests).unwrap_or(u32::MAX)),
            max_retries: u32v(http.and_then(|h| h.max_retries).unwrap_or(u32::MAX)),
            ..Default::default()
        }],
        ..Default::default()
    });
    if let Some(ct) = tcp
        .and_then(|t| t.connect_timeout.as_deref())
        .and_then(parse_duration)
    {
        c.connect_timeout = Some(pb_duration(ct));
    }
    if let Some(o) = &p.outlier_detection {
        let mut od = cpb::OutlierDetection {
            interval: o
                .interval
                .as_deref()
                .and_then(parse_duration)
                .map(pb_duration),
            base_ejection_time: o
                .base_ejection_time
                .as_deref()
                .and_then(parse_duration)
                .map(pb_duration),
            max_ejection_percent: o.max_ejection_percent.and_then(u32v),
            // Istio turns success-rate ejection off.
            enforcing_success_rate: u32v(0),
            // Only the consecutive-error settings Istio names are enforced.
            consecutive_5xx: u32v(0),
            enforcing_consecutive_5xx: u32v(0),
            ..Default::default()
        };
        if let Some(n) = o.consecutive_errors {
            od.consecutive_gateway_failure = u32v(n);
            od.enforcing_consecutive_gateway_failure = u32v(100);
        }
        if let Some(n) = o.consecutive_gateway_errors {
            od.consecutive_gateway_failure = u32v(n);
            od.enforcing_consecutive_gateway_failure = u32v(if n > 0 { 100 } else { 0 });
        }
        if let Some(n) = o.consecutive_5xx_errors {
            od.consecutive_5xx = u32v(n);
            od.enforcing_consecutive_5xx = u32v(if n > 0 { 100 } else { 0 });
        }
        c.outlier_detection = Some(od);
        // Istio disables the panic threshold unless minHealthPercent sets one.
        c.common_lb_config = Some(cpb::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                value: f64::from(o.min_health_percent.unwrap_or(0)),
            }),
            ..Default::default()
        });
    }
    if let Some(t) = &p.tls {
        match t.mode.as_str() {
            "ISTIO_MUTUAL" => c.transport_socket = Some(istio_mutual(svc)),
            "DISABLE" | "" => {}
            other => {
                let _ = rule;
                warnings.push(format!("cluster {name}: tls mode {other} is served as plaintext (as istiod's grpc generator does)"));
            }
        }
    }
    Ok(c)
}

#[allow(deprecated)] // istiod sends the deprecated provider fields too, for older gRPC clients
fn istio_mutual(svc: &Service) -> core::TransportSocket {
    let provider = |cert: &str| tls::CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    let legacy = |cert: &str| tls::common_tls_context::CertificateProviderInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    let mut sans: Vec<String> = svc.sans.clone();
    for e in &svc.endpoints {
        let sa = if e.service_account.is_empty() {
            "default"
        } else {
            &e.service_account
        };
        let id = format!("spiffe://cluster.local/ns/{}/sa/{sa}", svc.namespace);
        if !sans.contains(&id) {
            sans.push(id);
        }
    }
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_provider_instance: Some(provider("default")),
            tls_certificate_certificate_provider_instance: Some(legacy("default")),
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            ca_certificate_provider_instance: Some(provider("ROOTCA")),
                            match_subject_alt_names: sans
                                .iter()
                                .map(|s| mpb::StringMatcher {
                                    match_pattern: Some(mpb::string_matcher::MatchPattern::Exact(
                                        s.clone(),
                                    )),
                                    ignore_case: false,
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_certificate_provider_instance: Some(legacy("ROOTCA")),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
            UPSTREAM_TLS_TYPE,
            &ctx,
        ))),
    }
}

fn load_assignment(name: &str, eps: &[&Ep]) -> epb::ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<&Ep>> = BTreeMap::new();
    for e in eps {
        by_locality.entry(e.locality.as_str()).or_default().push(e);
    }
    let endpoints = by_locality
        .into_iter()
        .map(|(loc, eps)| {
            let mut parts = loc.splitn(3, '/');
            let locality = core::Locality {
                region: parts.next().unwrap_or_default().into(),
                zone: parts.next().unwrap_or_default().into(),
                sub_zone: parts.next().unwrap_or_default().into(),
            };
            epb::LocalityLbEndpoints {
                locality: Some(locality),
                load_balancing_weight: u32v(eps.iter().map(|e| e.weight).sum()),
                lb_endpoints: eps
                    .iter()
                    .map(|e| {
                        let mut fields: BTreeMap<String, Value> = e
                            .labels
                            .iter()
                            .map(|(k, v)| {
                                (
                                    k.clone(),
                                    Value {
                                        kind: Some(Kind::StringValue(v.clone())),
                                    },
                                )
                            })
                            .collect();
                        // Istio's canonical service and revision: the canonical labels, else
                        // `app` and `version`, else the workload's name and `latest`.
                        let label =
                            |keys: [&str; 2]| keys.iter().find_map(|k| e.labels.get(*k).cloned());
                        let canonical = label(["service.istio.io/canonical-name", "app"])
                            .unwrap_or_else(|| e.workload.clone());
                        let revision = label(["service.istio.io/canonical-revision", "version"])
                            .unwrap_or_else(|| "latest".into());
                        if !e.workload.is_empty() {
                            fields.insert(
                                "workload".into(),
                                Value {
                                    kind: Some(Kind::StringValue(format!(
                                        "{};{};{canonical};{revision};Kubernetes",
                                        e.workload, e.namespace
                                    ))),
                                },
                            );
                        }
                        // No health status, as istiod sends ServiceEntry endpoints (UNKNOWN,
                        // which gRPC and Envoy treat as healthy).
                        epb::LbEndpoint {
                            health_status: core::HealthStatus::Unknown as i32,
                            load_balancing_weight: u32v(e.weight),
                            metadata: Some(core::Metadata {
                                filter_metadata: HashMap::from([(
                                    "istio".to_string(),
                                    Struct {
                                        fields: fields.into_iter().collect(),
                                    },
                                )]),
                                ..Default::default()
                            }),
                            host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(
                                epb::Endpoint {
                                    address: Some(core::Address {
                                        address: Some(core::address::Address::SocketAddress(
                                            core::SocketAddress {
                                                address: e.ip.clone(),
                                                port_specifier: Some(
                                                    core::socket_address::PortSpecifier::PortValue(
                                                        e.port,
                                                    ),
                                                ),
                                                ..Default::default()
                                            },
                                        )),
                                    }),
                                    ..Default::default()
                                },
                            )),
                        }
                    })
                    .collect(),
                ..Default::default()
            }
        })
        .collect();
    epb::ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints,
        ..Default::default()
    }
}
