//! Server-side (inbound) listeners `xds.istio.io/grpc/lds/inbound/IP:PORT`, from
//! PeerAuthentication (mTLS chain or plaintext) and AuthorizationPolicy (RBAC filters), as
//! istiod's grpc generator builds them. mesh's server side will enforce them; the translation
//! is here now so that the shapes can be checked against real clients.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::google::protobuf::{Any, BoolValue};
use prost::Message;

use crate::config::{IstioConfig, Named};
use crate::istio;

/// The server listener name prefix istio-agent puts in the bootstrap template.
pub const INBOUND_PREFIX: &str = "xds.istio.io/grpc/lds/inbound/";
const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
/// Istio's root namespace: its policies apply to every workload of the mesh.
pub const ROOT_NAMESPACE: &str = "istio-system";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.into(),
        value: m.encode_to_vec(),
    }
}

/// A workload port: where a server listens, and the workload's labels and namespace.
#[derive(Debug, Clone)]
pub struct WorkloadPort {
    /// IP.
    pub ip: String,
    /// Target port.
    pub port: u32,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// Whether a policy in `namespace` covers the workload: its own namespace, or the root one.
fn in_scope(namespace: &str, w: &WorkloadPort) -> bool {
    namespace == w.namespace || namespace == ROOT_NAMESPACE
}

fn selects(selector: Option<&istio::LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    selector.is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The mTLS mode for a workload port: the most specific PeerAuthentication (with a selector
/// over namespace-wide), port-level settings over the workload-wide one.
fn mtls_mode(cfg: &IstioConfig, w: &WorkloadPort) -> String {
    let applicable = cfg
        .peer_authentications
        .iter()
        .filter(|p| in_scope(&p.namespace, w) && selects(p.spec.selector.as_ref(), &w.labels));
    // A workload selector over the namespace's policy over the root namespace's.
    let best = applicable.max_by_key(|p| (p.spec.selector.is_some(), p.namespace == w.namespace));
    let mode = best
        .and_then(|p| p.spec.port_level_mtls.get(&w.port).or(p.spec.mtls.as_ref()))
        .map(|m| m.mode.to_ascii_uppercase())
        .unwrap_or_default();
    match mode.as_str() {
        "STRICT" => "STRICT".into(),
        "DISABLE" => "DISABLE".into(),
        // PERMISSIVE (and unset): plaintext, unless the workload is labelled for Istio mTLS.
        _ if w
            .labels
            .get("security.istio.io/tlsMode")
            .map(String::as_str)
            == Some("istio") =>
        {
            "STRICT".into()
        }
        _ => "PERMISSIVE".into(),
    }
}

/// The inbound listener for a workload port.
pub fn inbound_listener(cfg: &IstioConfig, w: &WorkloadPort) -> Any {
    let name = format!("{INBOUND_PREFIX}{}:{}", w.ip, w.port);
    let mtls = mtls_mode(cfg, w) == "STRICT";
    let suffix = if mtls { "mtls" } else { "plaintext" };
    let mut http_filters = Vec::new();
    http_filters.extend(jwt_filter(cfg, w));
    for (action, filter_name) in [
        ("DENY", "envoy.filters.http.rbac.DENY"),
        ("ALLOW", "envoy.filters.http.rbac"),
    ] {
        let policies = rbac_policies(cfg, w, action);
        if policies.is_empty() {
            // istiod omits an action without policies (so an empty ALLOW allows everything).
            continue;
        }
        let rules = rbac::Rbac {
            action: if action == "ALLOW" {
                rbac::rbac::Action::Allow as i32
            } else {
                rbac::rbac::Action::Deny as i32
            },
            policies,
            ..Default::default()
        };
        http_filters.push(hcm::HttpFilter {
            name: filter_name.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
                RBAC_TYPE,
                &rbac_filter::Rbac {
                    rules: Some(rules),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
    }
    http_filters.push(hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: ROUTER_TYPE.into(),
            value: vec![],
        })),
        ..Default::default()
    });
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rpb::RouteConfiguration {
                name: "inbound".into(),
                virtual_hosts: vec![rpb::VirtualHost {
                    domains: vec!["*".into()],
                    routes: vec![rpb::Route {
                        r#match: Some(rpb::RouteMatch {
                            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(rpb::route::Action::NonForwardingAction(
                            rpb::NonForwardingAction {},
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters,
        ..Default::default()
    };
    let transport_socket = mtls.then(|| {
        let provider = |cert: &str| tls::CertificateProviderPluginInstance {
            instance_name: "default".into(),
            certificate_name: cert.into(),
        };
        let ctx = tls::DownstreamTlsContext {
            require_client_certificate: Some(BoolValue { value: true }),
            common_tls_context: Some(tls::CommonTlsContext {
                tls_certificate_provider_instance: Some(provider("default")),
                validation_context_type: Some(
                    tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                        tls::common_tls_context::CombinedCertificateValidationContext {
                            default_validation_context: Some(tls::CertificateValidationContext {
                                ca_certificate_provider_instance: Some(provider("ROOTCA")),
                                ..Default::default()
                            }),
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
                DOWNSTREAM_TLS_TYPE,
                &ctx,
            ))),
        }
    });
    let listener = lpb::Listener {
        name,
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: w.ip.clone(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(w.port)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![lpb::FilterChain {
            name: format!("inbound-{suffix}"),
            filters: vec![lpb::Filter {
                name: format!("inbound-hcm{suffix}"),
                config_type: Some(lpb::filter::ConfigType::TypedConfig(any(
                    HCM_TYPE, &manager,
                ))),
            }],
            transport_socket,
            ..Default::default()
        }],
        ..Default::default()
    };
    any(crate::translate::LISTENER_TYPE, &listener)
}

/// The `jwt_authn` filter for a workload, as istiod writes it for sidecars: one provider
/// `origins-N` per jwtRule of every RequestAuthentication that applies, and one rule for `/`
/// requiring any of them or no token (a token that no provider accepts is refused; a request
/// without one goes on to RBAC without a request principal). istiod's gRPC generator writes
/// no JWT filter at all.
fn jwt_filter(cfg: &IstioConfig, w: &WorkloadPort) -> Option<hcm::HttpFilter> {
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as jwt;
    let rules: Vec<&istio::JwtRule> = cfg
        .request_authentications
        .iter()
        .filter(|r| in_scope(&r.namespace, w) && selects(r.spec.selector.as_ref(), &w.labels))
        .flat_map(|r| r.spec.jwt_rules.iter())
        .collect();
    if rules.is_empty() {
        return None;
    }
    let mut providers = HashMap::new();
    let mut requirements = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let name = format!("origins-{i}");
        let jwks = if r.jwks.is_empty() {
            let host = r
                .jwks_uri
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(|h| (h.to_string(), u.port_u16())))
                .unwrap_or_default();
            let port = host.1.unwrap_or(if r.jwks_uri.starts_with("http://") {
                80
            } else {
                443
            });
            jwt::jwt_provider::JwksSourceSpecifier::RemoteJwks(jwt::RemoteJwks {
                http_uri: Some(core::HttpUri {
                    uri: r.jwks_uri.clone(),
                    timeout: Some(crate::translate::pb_duration(
                        r.timeout
                            .as_deref()
                            .and_then(crate::translate::parse_duration)
                            .unwrap_or(std::time::Duration::from_secs(5)),
                    )),
                    http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(format!(
                        "outbound|{port}||{}",
                        host.0
                    ))),
                }),
                cache_duration: Some(crate::translate::pb_duration(
                    std::time::Duration::from_secs(300),
                )),
                ..Default::default()
            })
        } else {
            jwt::jwt_provider::JwksSourceSpecifier::LocalJwks(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(r.jwks.clone())),
                ..Default::default()
            })
        };
        providers.insert(
            name.clone(),
            jwt::JwtProvider {
                issuer: r.issuer.clone(),
                audiences: r.audiences.clone(),
                forward: r.forward_original_token,
                from_headers: r
                    .from_headers
                    .iter()
                    .map(|h| jwt::JwtHeader {
                        name: h.name.clone(),
                        value_prefix: h.prefix.clone(),
                    })
                    .collect(),
                from_params: r.from_params.clone(),
                from_cookies: r.from_cookies.clone(),
                forward_payload_header: r.output_payload_to_header.clone(),
                payload_in_metadata: r.issuer.clone(),
                claim_to_headers: r
                    .output_claim_to_headers
                    .iter()
                    .map(|c| jwt::JwtClaimToHeader {
                        header_name: c.header.clone(),
                        claim_name: c.claim.clone(),
                    })
                    .collect(),
                jwks_source_specifier: Some(jwks),
                ..Default::default()
            },
        );
        requirements.push(jwt::JwtRequirement {
            requires_type: Some(jwt::jwt_requirement::RequiresType::ProviderName(name)),
        });
    }
    requirements.push(jwt::JwtRequirement {
        requires_type: Some(jwt::jwt_requirement::RequiresType::AllowMissing(
            Default::default(),
        )),
    });
    let config = jwt::JwtAuthentication {
        providers,
        rules: vec![jwt::RequirementRule {
            r#match: Some(rpb::RouteMatch {
                path_specifier: Some(rpb::route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(jwt::requirement_rule::RequirementType::Requires(
                jwt::JwtRequirement {
                    requires_type: Some(jwt::jwt_requirement::RequiresType::RequiresAny(
                        jwt::JwtRequirementOrList { requirements },
                    )),
                },
            )),
        }],
        bypass_cors_preflight: true,
        ..Default::default()
    };
    Some(hcm::HttpFilter {
        name: "envoy.filters.http.jwt_authn".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(
            JWT_AUTHN_TYPE,
            &config,
        ))),
        ..Default::default()
    })
}

fn exact(s: &str) -> mpb::StringMatcher {
    mpb::StringMatcher {
        match_pattern: Some(mpb::string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

/// Istio's path/principal wildcards: `x*` prefix, `*x` suffix, `*` any, else exact.
fn wildcard(s: &str) -> mpb::StringMatcher {
    use mpb::string_matcher::MatchPattern as P;
    let p = if s == "*" {
        P::SafeRegex(mpb::RegexMatcher {
            regex: ".+".into(),
            ..Default::default()
        })
    } else if let Some(prefix) = s.strip_suffix('*') {
        P::Prefix(prefix.into())
    } else if let Some(suffix) = s.strip_prefix('*') {
        P::Suffix(suffix.into())
    } else {
        P::Exact(s.into())
    };
    mpb::StringMatcher {
        match_pattern: Some(p),
        ignore_case: false,
    }
}

fn or_perm(rules: Vec<rbac::permission::Rule>) -> Option<rbac::Permission> {
    match rules.len() {
        0 => None,
        1 => Some(rbac::Permission {
            rule: rules.into_iter().next(),
        }),
        _ => Some(rbac::Permission {
            rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
                rules: rules
                    .into_iter()
                    .map(|r| rbac::Permission { rule: Some(r) })
                    .collect(),
            })),
        }),
    }
}

fn or_id(ids: Vec<rbac::principal::Identifier>) -> Option<rbac::Principal> {
    match ids.len() {
        0 => None,
        1 => Some(rbac::Principal {
            identifier: ids.into_iter().next(),
        }),
        _ => Some(rbac::Principal {
            identifier: Some(rbac::principal::Identifier::OrIds(rbac::principal::Set {
                ids: ids
                    .into_iter()
                    .map(|i| rbac::Principal {
                        identifier: Some(i),
                    })
                    .collect(),
            })),
        }),
    }
}

/// `request.auth.*` lives in the dynamic metadata of the JWT filter (`istio_authn`, as istiod
/// writes it for sidecars): the principal and presenter are strings, the audiences and claims
/// lists (matched by `one_of`). gRPC never matches metadata; mesh reads them from the token.
#[allow(deprecated)] // istiod still emits the metadata principal
fn authn_metadata(path: &[&str], value: &str) -> rbac::principal::Identifier {
    let string = mpb::value_matcher::MatchPattern::StringMatch(wildcard(value));
    let list = path[0] != "request.auth.principal" && path[0] != "request.auth.presenter";
    let pattern = if list {
        mpb::value_matcher::MatchPattern::ListMatch(Box::new(mpb::ListMatcher {
            match_pattern: Some(mpb::list_matcher::MatchPattern::OneOf(Box::new(
                mpb::ValueMatcher {
                    match_pattern: Some(string),
                },
            ))),
        }))
    } else {
        string
    };
    rbac::principal::Identifier::Metadata(mpb::MetadataMatcher {
        filter: "istio_authn".into(),
        path: path
            .iter()
            .map(|k| mpb::metadata_matcher::PathSegment {
                segment: Some(mpb::metadata_matcher::path_segment::Segment::Key(
                    (*k).into(),
                )),
            })
            .collect(),
        value: Some(mpb::ValueMatcher {
            match_pattern: Some(pattern),
        }),
        ..Default::default()
    })
}

fn header(name: &str, m: mpb::StringMatcher) -> rpb::HeaderMatcher {
    rpb::HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(rpb::header_matcher::HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn cidr(block: &str) -> core::CidrRange {
    let (ip, len) = block
        .split_once('/')
        .map_or((block, None), |(a, l)| (a, l.parse().ok()));
    let len = len.unwrap_or(if ip.contains(':') { 128 } else { 32 });
    core::CidrRange {
        address_prefix: ip.into(),
        prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: len }),
    }
}

/// One field of an operation: any of `values`, none of `not_values` (istiod's `not_rule`).
fn perm_field(
    and: &mut Vec<rbac::Permission>,
    values: &[String],
    not_values: &[String],
    rule: impl Fn(&str) -> rbac::permission::Rule,
) {
    and.extend(or_perm(values.iter().map(|v| rule(v)).collect()));
    if let Some(not) = or_perm(not_values.iter().map(|v| rule(v)).collect()) {
        and.push(rbac::Permission {
            rule: Some(rbac::permission::Rule::NotRule(Box::new(not))),
        });
    }
}

/// One field of a source: any of `values`, none of `not_values` (istiod's `not_id`).
fn id_field(
    and: &mut Vec<rbac::Principal>,
    values: &[String],
    not_values: &[String],
    id: impl Fn(&str) -> rbac::principal::Identifier,
) {
    and.extend(or_id(values.iter().map(|v| id(v)).collect()));
    if let Some(not) = or_id(not_values.iter().map(|v| id(v)).collect()) {
        and.push(rbac::Principal {
            identifier: Some(rbac::principal::Identifier::NotId(Box::new(not))),
        });
    }
}

fn authenticated(m: mpb::StringMatcher) -> rbac::principal::Identifier {
    rbac::principal::Identifier::Authenticated(rbac::principal::Authenticated {
        principal_name: Some(m),
    })
}

fn namespace_id(n: &str) -> rbac::principal::Identifier {
    authenticated(mpb::StringMatcher {
        match_pattern: Some(mpb::string_matcher::MatchPattern::SafeRegex(
            mpb::RegexMatcher {
                regex: format!(".*/ns/{n}/.*"),
                ..Default::default()
            },
        )),
        ignore_case: false,
    })
}

fn and_permissions(rules: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(if rules.is_empty() {
            rbac::permission::Rule::Any(true)
        } else {
            rbac::permission::Rule::AndRules(rbac::permission::Set { rules })
        }),
    }
}

/// The `when` keys mesh translates; the config loader refuses any other (a condition mesh
/// ignored would make a DENY policy deny nothing).
pub const CONDITION_KEYS: &[&str] = &[
    "request.headers[NAME]",
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "request.auth.claims[NAME]",
    "destination.ip",
    "destination.port",
];

/// Whether mesh translates a `when` key.
pub fn condition_key_supported(key: &str) -> bool {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix(']'))
            .is_some_and(|k| !k.is_empty())
    };
    bracketed("request.headers[")
        || bracketed("request.auth.claims[")
        || CONDITION_KEYS.contains(&key)
}

/// A `when` condition as principals (source keys, request.auth) or permissions (destination
/// keys, headers), the way istiod's authz model splits them.
enum Condition {
    Ids(Vec<rbac::principal::Identifier>),
    Perms(Vec<rbac::permission::Rule>),
}

fn condition(key: &str, values: &[String]) -> Condition {
    use rbac::permission::Rule as R;
    use rbac::principal::Identifier as I;
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return Condition::Ids(
            values
                .iter()
                .map(|v| I::Header(header(name, wildcard(v))))
                .collect(),
        );
    }
    if let Some(claim) = key
        .strip_prefix("request.auth.claims[")
        .and_then(|k| k.strip_suffix(']'))
    {
        let mut path = vec!["request.auth.claims"];
        path.extend(claim.split("]["));
        return Condition::Ids(values.iter().map(|v| authn_metadata(&path, v)).collect());
    }
    match key {
        "source.ip" | "remote.ip" => {
            Condition::Ids(values.iter().map(|v| I::DirectRemoteIp(cidr(v))).collect())
        }
        "source.namespace" => Condition::Ids(values.iter().map(|v| namespace_id(v)).collect()),
        "source.principal" => Condition::Ids(
            values
                .iter()
                .map(|v| authenticated(wildcard(&format!("spiffe://{v}"))))
                .collect(),
        ),
        "destination.ip" => {
            Condition::Perms(values.iter().map(|v| R::DestinationIp(cidr(v))).collect())
        }
        "destination.port" => Condition::Perms(
            values
                .iter()
                .filter_map(|v| v.parse().ok())
                .map(R::DestinationPort)
                .collect(),
        ),
        // request.auth.principal, .audiences, .presenter (the loader refused anything else).
        _ => Condition::Ids(values.iter().map(|v| authn_metadata(&[key], v)).collect()),
    }
}

fn rule_policy(r: &istio::AuthzRule) -> rbac::Policy {
    use rbac::permission::Rule as R;
    let mut perms = Vec::new();
    for t in &r.to {
        let op = &t.operation;
        let mut and = Vec::new();
        perm_field(&mut and, &op.methods, &op.not_methods, |m| {
            R::Header(header(":method", exact(m)))
        });
        let path = |p: &str| {
            R::UrlPath(mpb::PathMatcher {
                rule: Some(mpb::path_matcher::Rule::Path(wildcard(p))),
            })
        };
        perm_field(&mut and, &op.paths, &op.not_paths, path);
        perm_field(&mut and, &op.hosts, &op.not_hosts, |h| {
            R::Header(header(":authority", wildcard(h)))
        });
        // A port that is not a number never matches, as in istiod's validation.
        let port = |p: &str| match p.parse() {
            Ok(p) => R::DestinationPort(p),
            Err(_) => R::NotRule(Box::new(rbac::Permission {
                rule: Some(R::Any(true)),
            })),
        };
        perm_field(&mut and, &op.ports, &op.not_ports, port);
        perms.push(and_permissions(and));
    }
    // Sources are any-of; the fields of one source all-of.
    let mut sources = Vec::new();
    for f in &r.from {
        let s = &f.source;
        let mut and_ids = Vec::new();
        let principal = |p: &str| authenticated(wildcard(&format!("spiffe://{p}")));
        id_field(&mut and_ids, &s.principals, &s.not_principals, principal);
        id_field(&mut and_ids, &s.namespaces, &s.not_namespaces, namespace_id);
        id_field(
            &mut and_ids,
            &s.request_principals,
            &s.not_request_principals,
            |p| authn_metadata(&["request.auth.principal"], p),
        );
        let ip = |b: &str| rbac::principal::Identifier::DirectRemoteIp(cidr(b));
        id_field(&mut and_ids, &s.ip_blocks, &s.not_ip_blocks, ip);
        id_field(
            &mut and_ids,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            ip,
        );
        sources.push(and_ids);
    }
    let mut and_ids = Vec::new();
    let mut condition_perms = Vec::new();
    for c in &r.when {
        for (values, negate) in [(&c.values, false), (&c.not_values, true)] {
            if values.is_empty() {
                continue;
            }
            match condition(&c.key, values) {
                Condition::Ids(ids) => {
                    if let Some(p) = or_id(ids) {
                        and_ids.push(if negate {
                            rbac::Principal {
                                identifier: Some(rbac::principal::Identifier::NotId(Box::new(p))),
                            }
                        } else {
                            p
                        });
                    }
                }
                Condition::Perms(rules) => {
                    if let Some(p) = or_perm(rules) {
                        condition_perms.push(if negate {
                            rbac::Permission {
                                rule: Some(R::NotRule(Box::new(p))),
                            }
                        } else {
                            p
                        });
                    }
                }
            }
        }
    }
    if perms.is_empty() {
        perms.push(and_permissions(Vec::new()));
    }
    if !condition_perms.is_empty() {
        // Destination conditions hold for every operation.
        perms = perms
            .into_iter()
            .map(|p| {
                let mut all = vec![p];
                all.extend(condition_perms.iter().cloned());
                and_permissions(all)
            })
            .collect();
    }
    // Conditions on the source hold for every source.
    if sources.is_empty() {
        sources.push(Vec::new());
    }
    let principals = sources
        .into_iter()
        .map(|mut ids| {
            ids.extend(and_ids.iter().cloned());
            if ids.is_empty() {
                rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::Any(true)),
                }
            } else {
                rbac::Principal {
                    identifier: Some(rbac::principal::Identifier::AndIds(rbac::principal::Set {
                        ids,
                    })),
                }
            }
        })
        .collect();
    rbac::Policy {
        permissions: perms,
        principals,
        ..Default::default()
    }
}

/// The RBAC policies of one action for a workload: `<namespace>-<name>-<rule index>`.
fn rbac_policies(
    cfg: &IstioConfig,
    w: &WorkloadPort,
    action: &str,
) -> HashMap<String, rbac::Policy> {
    let applies = |p: &&Named<istio::AuthorizationPolicy>| {
        in_scope(&p.namespace, w)
            && selects(p.spec.selector.as_ref(), &w.labels)
            && p.spec
                .action
                .as_deref()
                .unwrap_or("ALLOW")
                .eq_ignore_ascii_case(action)
    };
    cfg.authorization_policies
        .iter()
        .filter(applies)
        .flat_map(|p| {
            p.spec
                .rules
                .iter()
                .enumerate()
                .map(move |(i, r)| (format!("{}-{}-{i}", p.namespace, p.name), rule_policy(r)))
        })
        .collect()
}
