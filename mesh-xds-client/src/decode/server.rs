//! LDS for servers (gRFC A36): socket listeners with filter chains, each one HttpConnectionManager
//! with RBAC filters (A41) and a `DownstreamTlsContext` (A29), in the shape istiod's grpc
//! generator sends for `xds.istio.io/grpc/lds/inbound/IP:PORT`.

use std::collections::HashSet;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter::ConfigType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, common_tls_context::ValidationContextType,
};
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::jwt::{AuthField, JwtAuthnSpec};
use mesh_core::matcher::StringMatcherSpec;
use mesh_core::rbac::{
    AuditCondition, CidrSpec, PermissionSpec, PolicySpec, PrincipalSpec, RbacAction, RbacSpec,
};
use mesh_core::server::{
    DownstreamTlsSpec, FilterChainMatchSpec, FilterChainSpec, ServerListenerSpec,
};

use super::jwt::{JWT_AUTHN_TYPE, jwt_authn_spec};
use super::listener::{HCM_TYPE, hcm_routes};
use super::route::header_matcher;
use super::{string_matcher, unpack};

const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// The RBAC filter's type URL.
pub const RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const DOWNSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const STDOUT_AUDIT_TYPE: &str =
    "type.googleapis.com/envoy.extensions.rbac.audit_loggers.stream.v3.StdoutAuditLog";

type FieldResult<T> = Result<T, FieldError>;

/// Whether a listener is a server's (a socket listener) rather than a client's API listener.
pub fn is_server_listener(l: &lpb::Listener) -> bool {
    l.api_listener.is_none() && (l.address.is_some() || !l.filter_chains.is_empty())
}

/// Maps a server listener to a spec.
pub fn server_listener_spec(l: &lpb::Listener) -> Result<ServerListenerSpec, ConfigError> {
    let err = |e: FieldError| e.resource(ResourceKind::Listener, &l.name);
    if !l.listener_filters.is_empty() {
        return Err(err(FieldError::new("listener_filters", "must be empty")));
    }
    if l.use_original_dst.as_ref().is_some_and(|b| b.value) {
        return Err(err(FieldError::new("use_original_dst", "is not supported")));
    }
    let address = address(l.address.as_ref()).map_err(err)?;
    let chains = l
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| filter_chain(c).map_err(|e| err(e.within(format!("filter_chains[{i}]")))))
        .collect::<Result<_, _>>()?;
    let default_chain = l
        .default_filter_chain
        .as_ref()
        .map(|c| filter_chain(c).map_err(|e| err(e.within("default_filter_chain"))))
        .transpose()?;
    Ok(ServerListenerSpec {
        name: l.name.clone(),
        address: Some(address),
        chains,
        default_chain,
    })
}

fn address(a: Option<&core::Address>) -> FieldResult<SocketAddr> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier;
    let Some(A::SocketAddress(s)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(FieldError::new("address", "must be a socket address"));
    };
    let ip = s.address.parse().map_err(|_| {
        FieldError::new(
            "address.socket_address.address",
            format!("{:?} is not an IP address", s.address),
        )
    })?;
    let port = match s.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok(),
        _ => None,
    }
    .ok_or_else(|| FieldError::new("address.socket_address.port_value", "is not a port"))?;
    Ok(SocketAddr::new(ip, port))
}

fn filter_chain(c: &lpb::FilterChain) -> FieldResult<FilterChainSpec> {
    let matcher = c
        .filter_chain_match
        .as_ref()
        .map(chain_match)
        .transpose()
        .map_err(|e| e.within("filter_chain_match"))?
        .unwrap_or_default();
    let tls = c
        .transport_socket
        .as_ref()
        .map(downstream_tls)
        .transpose()
        .map_err(|e| e.within("transport_socket"))?;
    // Exactly one network filter, the HttpConnectionManager, last (A36).
    let mut names = HashSet::new();
    let mut hcm = None;
    for (i, f) in c.filters.iter().enumerate() {
        let at = format!("filters[{i}]");
        if !names.insert(f.name.as_str()) {
            return Err(FieldError::new(
                at,
                format!("duplicate filter name {:?}", f.name),
            ));
        }
        use lpb::filter::ConfigType as F;
        let Some(F::TypedConfig(any)) = &f.config_type else {
            return Err(FieldError::new(at, "has no typed_config"));
        };
        if any.type_url != HCM_TYPE {
            return Err(FieldError::new(
                at,
                format!("unsupported network filter {:?}", any.type_url),
            ));
        }
        if i != c.filters.len() - 1 {
            return Err(FieldError::new(
                at,
                "the HttpConnectionManager must be the last filter",
            ));
        }
        hcm = Some(unpack::<HttpConnectionManager>(any, HCM_TYPE, &at)?);
    }
    let hcm = hcm.ok_or_else(|| FieldError::new("filters", "need an HttpConnectionManager"))?;
    let at = |e: FieldError| e.within(format!("filters[{}]", c.filters.len() - 1));
    let routes = hcm_routes(&hcm).map_err(at)?;
    let (jwt, rbac) = http_filters(&hcm).map_err(at)?;
    Ok(FilterChainSpec {
        name: c.name.clone(),
        matcher,
        tls,
        routes: Some(routes),
        jwt,
        rbac,
    })
}

fn cidr(c: &core::CidrRange) -> CidrSpec {
    CidrSpec {
        address: c.address_prefix.clone(),
        prefix_len: c.prefix_len.as_ref().map_or(0, |p| p.value),
    }
}

fn chain_match(m: &lpb::FilterChainMatch) -> FieldResult<FilterChainMatchSpec> {
    Ok(FilterChainMatchSpec {
        destination_port: m.destination_port.as_ref().map(|p| p.value),
        prefix_ranges: m.prefix_ranges.iter().map(cidr).collect(),
        server_names: m.server_names.clone(),
        transport_protocol: m.transport_protocol.clone(),
        application_protocols: m.application_protocols.clone(),
        source_type: m.source_type,
        source_prefix_ranges: m.source_prefix_ranges.iter().map(cidr).collect(),
        source_ports: m.source_ports.clone(),
    })
}

// istiod sends both the current and the deprecated provider fields.
#[allow(deprecated)]
fn downstream_tls(ts: &core::TransportSocket) -> FieldResult<DownstreamTlsSpec> {
    use core::transport_socket::ConfigType;
    if ts.name != "envoy.transport_sockets.tls" {
        return Err(FieldError::new(
            "name",
            format!("unsupported transport socket {:?}", ts.name),
        ));
    }
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(FieldError::new("typed_config", "is not set"));
    };
    let ctx: DownstreamTlsContext = unpack(any, DOWNSTREAM_TLS_TYPE, "typed_config")?;
    let refuse = |f: &str, why: &str| {
        Err(FieldError::new(
            format!("typed_config.{f}"),
            why.to_string(),
        ))
    };
    if ctx.require_sni.as_ref().is_some_and(|b| b.value) {
        return refuse("require_sni", "is not supported");
    }
    // 0 is LENIENT_STAPLING.
    if ctx.ocsp_staple_policy != 0 {
        return refuse("ocsp_staple_policy", "only LENIENT_STAPLING is supported");
    }
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    if common.tls_params.is_some() {
        return refuse("common_tls_context.tls_params", "is not supported");
    }
    if common.custom_handshaker.is_some() {
        return refuse("common_tls_context.custom_handshaker", "is not supported");
    }
    let identity_provider = super::identity_instance(&common);
    let (validation, deprecated_root) = match &common.validation_context_type {
        None => (None, None),
        Some(ValidationContextType::ValidationContext(v)) => (Some(v.clone()), None),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            if c.validation_context_sds_secret_config.is_some() {
                return refuse(
                    "common_tls_context.combined_validation_context.validation_context_sds_secret_config",
                    "is not supported",
                );
            }
            (
                c.default_validation_context.clone(),
                c.validation_context_certificate_provider_instance
                    .as_ref()
                    .map(|p| p.instance_name.clone()),
            )
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(p)) => {
            (None, Some(p.instance_name.clone()))
        }
        Some(_) => {
            return refuse(
                "common_tls_context.validation_context_type",
                "only certificate provider instances are supported",
            );
        }
    };
    if let Some(v) = &validation {
        for (set, field) in [
            (
                !v.match_subject_alt_names.is_empty(),
                "match_subject_alt_names",
            ),
            (v.system_root_certs.is_some(), "system_root_certs"),
            (
                !v.verify_certificate_spki.is_empty(),
                "verify_certificate_spki",
            ),
            (
                !v.verify_certificate_hash.is_empty(),
                "verify_certificate_hash",
            ),
            (v.crl.is_some(), "crl"),
            (
                v.custom_validator_config.is_some(),
                "custom_validator_config",
            ),
        ] {
            if set {
                return refuse(
                    &format!("common_tls_context.validation_context.{field}"),
                    "is not supported on a server",
                );
            }
        }
    }
    let root_provider = validation
        .as_ref()
        .and_then(|v| v.ca_certificate_provider_instance.as_ref())
        .map(|p| p.instance_name.clone())
        .or(deprecated_root);
    Ok(DownstreamTlsSpec {
        identity_provider,
        root_provider,
        require_client_certificate: ctx
            .require_client_certificate
            .as_ref()
            .is_some_and(|b| b.value),
    })
}

/// The JWT filter and the RBAC filters of an HCM, in order; the list must end with the router
/// (A39), and the JWT filter must come before RBAC, whose principals read what it verified.
fn http_filters(hcm: &HttpConnectionManager) -> FieldResult<(Option<JwtAuthnSpec>, Vec<RbacSpec>)> {
    if hcm.http_filters.is_empty() {
        return Err(FieldError::new("http_filters", "must not be empty"));
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    let mut jwt = None;
    let last = hcm.http_filters.len() - 1;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let at = format!("http_filters[{i}]");
        if !names.insert(f.name.as_str()) {
            return Err(FieldError::new(
                at,
                format!("duplicate filter name {:?}", f.name),
            ));
        }
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            _ => return Err(FieldError::new(at, "has no typed_config")),
        };
        match any.type_url.as_str() {
            ROUTER_TYPE if i == last => {}
            ROUTER_TYPE => return Err(FieldError::new(at, "the router must be the last filter")),
            _ if i == last => {
                return Err(FieldError::new(at, "the last filter must be the router"));
            }
            RBAC_TYPE => {
                let r: RbacFilter = unpack(any, RBAC_TYPE, &at)?;
                out.push(rbac_filter(&f.name, &r).map_err(|e| e.within(&at))?);
            }
            JWT_AUTHN_TYPE => {
                if jwt.is_some() {
                    return Err(FieldError::new(at, "a second JWT filter is not supported"));
                }
                if !out.is_empty() {
                    return Err(FieldError::new(
                        at,
                        "the JWT filter must come before the RBAC filters",
                    ));
                }
                let j: JwtAuthentication = unpack(any, JWT_AUTHN_TYPE, &at)?;
                jwt = Some(jwt_authn_spec(&f.name, &j).map_err(|e| e.within(&at))?);
            }
            _ if f.is_optional => {}
            other => {
                return Err(FieldError::new(
                    at,
                    format!("unsupported server filter {other:?}"),
                ));
            }
        }
    }
    Ok((jwt, out))
}

/// An RBAC filter config (the listener's, or a route's `RBACPerRoute`) as a spec.
pub(crate) fn rbac_filter(name: &str, f: &RbacFilter) -> FieldResult<RbacSpec> {
    let Some(rules) = &f.rules else {
        return Ok(RbacSpec {
            name: name.into(),
            action: None,
            policies: Vec::new(),
            audit: AuditCondition::None,
        });
    };
    let action = match rbac::rbac::Action::try_from(rules.action) {
        Ok(rbac::rbac::Action::Allow) => RbacAction::Allow,
        Ok(rbac::rbac::Action::Deny) => RbacAction::Deny,
        Ok(rbac::rbac::Action::Log) => RbacAction::Log,
        Err(_) => {
            return Err(FieldError::new(
                "rules.action",
                format!("unknown action {}", rules.action),
            ));
        }
    };
    let audit = match &rules.audit_logging_options {
        None => AuditCondition::None,
        Some(o) => {
            for (i, l) in o.logger_configs.iter().enumerate() {
                let url = l
                    .audit_logger
                    .as_ref()
                    .and_then(|t| t.typed_config.as_ref())
                    .map_or("", |a| a.type_url.as_str());
                if url != STDOUT_AUDIT_TYPE && !l.is_optional {
                    return Err(FieldError::new(
                        format!("rules.audit_logging_options.logger_configs[{i}]"),
                        format!("unsupported audit logger {url:?}"),
                    ));
                }
            }
            match o.audit_condition {
                0 => AuditCondition::None,
                1 => AuditCondition::OnDeny,
                2 => AuditCondition::OnAllow,
                3 => AuditCondition::OnDenyAndAllow,
                c => {
                    return Err(FieldError::new(
                        "rules.audit_logging_options.audit_condition",
                        format!("unknown condition {c}"),
                    ));
                }
            }
        }
    };
    // Policies in name order: the map has none, and a stable order keeps verdicts stable.
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    let policies = names
        .into_iter()
        .map(|n| {
            let p = &rules.policies[n];
            let at = format!("rules.policies[{n:?}]");
            if p.condition.is_some() || p.checked_condition.is_some() {
                return Err(FieldError::new(
                    format!("{at}.condition"),
                    "CEL conditions are not supported",
                ));
            }
            Ok((
                n.clone(),
                PolicySpec {
                    permissions: p
                        .permissions
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            permission(x).map_err(|e| e.within(format!("{at}.permissions[{i}]")))
                        })
                        .collect::<FieldResult<_>>()?,
                    principals: p
                        .principals
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            principal(x).map_err(|e| e.within(format!("{at}.principals[{i}]")))
                        })
                        .collect::<FieldResult<_>>()?,
                },
            ))
        })
        .collect::<FieldResult<_>>()?;
    Ok(RbacSpec {
        name: name.into(),
        action: Some(action),
        policies,
        audit,
    })
}

fn path(
    p: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher,
) -> FieldResult<StringMatcherSpec> {
    use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule;
    match &p.rule {
        Some(Rule::Path(s)) => string_matcher(s).map_err(|e| e.within("path")),
        None => Err(FieldError::new("rule", "is not set")),
    }
}

#[allow(deprecated)] // istiod still sends the deprecated metadata matchers
fn permission(p: &rbac::Permission) -> FieldResult<PermissionSpec> {
    use rbac::permission::Rule as R;
    let set = |s: &rbac::permission::Set, kind: &str| -> FieldResult<Vec<PermissionSpec>> {
        s.rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(r).map_err(|e| e.within(format!("{kind}.rules[{i}]"))))
            .collect()
    };
    Ok(match &p.rule {
        Some(R::Any(true)) => PermissionSpec::Any,
        Some(R::Any(false)) | None => {
            return Err(FieldError::new("rule", "is not set"));
        }
        Some(R::AndRules(s)) => PermissionSpec::And(set(s, "and_rules")?),
        Some(R::OrRules(s)) => PermissionSpec::Or(set(s, "or_rules")?),
        Some(R::NotRule(r)) => {
            PermissionSpec::Not(Box::new(permission(r).map_err(|e| e.within("not_rule"))?))
        }
        Some(R::Header(h)) => {
            PermissionSpec::Header(header_matcher(h).map_err(|e| e.within("header"))?)
        }
        Some(R::UrlPath(u)) => PermissionSpec::UrlPath(path(u).map_err(|e| e.within("url_path"))?),
        Some(R::DestinationIp(c)) => PermissionSpec::DestinationIp(cidr(c)),
        Some(R::DestinationPort(p)) => PermissionSpec::DestinationPort(*p),
        Some(R::DestinationPortRange(r)) => PermissionSpec::DestinationPortRange(
            u32::try_from(r.start).unwrap_or(0),
            u32::try_from(r.end).unwrap_or(0),
        ),
        Some(R::Metadata(_)) => PermissionSpec::Metadata,
        Some(R::RequestedServerName(s)) => PermissionSpec::RequestedServerName(
            string_matcher(s).map_err(|e| e.within("requested_server_name"))?,
        ),
        Some(other) => {
            return Err(FieldError::new(
                "rule",
                format!("{} is not supported", rule_name(other)),
            ));
        }
    })
}

fn rule_name(r: &rbac::permission::Rule) -> &'static str {
    use rbac::permission::Rule as R;
    match r {
        R::Matcher(_) => "matcher",
        R::UriTemplate(_) => "uri_template",
        R::SourcedMetadata(_) => "sourced_metadata",
        _ => "this rule",
    }
}

/// A metadata matcher on what istiod's sidecar RBAC reads from the JWT filter (`istio_authn`:
/// `request.auth.principal`, `.audiences`, `.presenter`, `.claims` with a claim path), with a
/// string or a list (`one_of`) value matcher; any other metadata never matches (`None`).
fn request_auth(
    m: &envoy_types::pb::envoy::r#type::matcher::v3::MetadataMatcher,
) -> FieldResult<Option<(AuthField, StringMatcherSpec)>> {
    use envoy_types::pb::envoy::r#type::matcher::v3::list_matcher::MatchPattern as ListPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
    use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern;
    let keys: Vec<&str> = m
        .path
        .iter()
        .map(|p| match &p.segment {
            Some(Segment::Key(k)) => k.as_str(),
            None => "",
        })
        .collect();
    if m.filter != "istio_authn" || m.invert {
        return Ok(None);
    }
    let field = match keys.as_slice() {
        ["request.auth.principal"] => AuthField::Principal,
        ["request.auth.audiences"] => AuthField::Audiences,
        ["request.auth.presenter"] => AuthField::Presenter,
        ["request.auth.claims", claim @ ..] if !claim.is_empty() => {
            AuthField::Claim(claim.iter().map(|c| c.to_string()).collect())
        }
        _ => return Ok(None),
    };
    let string = match m.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
        Some(MatchPattern::StringMatch(s)) => Some((s, "value.string_match")),
        Some(MatchPattern::ListMatch(l)) => match &l.match_pattern {
            Some(ListPattern::OneOf(v)) => match v.match_pattern.as_ref() {
                Some(MatchPattern::StringMatch(s)) => {
                    Some((s, "value.list_match.one_of.string_match"))
                }
                _ => None,
            },
            None => None,
        },
        _ => None,
    };
    match string {
        Some((s, at)) => Ok(Some((field, string_matcher(s).map_err(|e| e.within(at))?))),
        None => Ok(None),
    }
}

#[allow(deprecated)] // istiod still sends the deprecated metadata and source_ip
fn principal(p: &rbac::Principal) -> FieldResult<PrincipalSpec> {
    use rbac::principal::Identifier as I;
    let set = |s: &rbac::principal::Set, kind: &str| -> FieldResult<Vec<PrincipalSpec>> {
        s.ids
            .iter()
            .enumerate()
            .map(|(i, r)| principal(r).map_err(|e| e.within(format!("{kind}.ids[{i}]"))))
            .collect()
    };
    Ok(match &p.identifier {
        Some(I::Any(true)) => PrincipalSpec::Any,
        Some(I::Any(false)) | None => return Err(FieldError::new("identifier", "is not set")),
        Some(I::AndIds(s)) => PrincipalSpec::And(set(s, "and_ids")?),
        Some(I::OrIds(s)) => PrincipalSpec::Or(set(s, "or_ids")?),
        Some(I::NotId(p)) => {
            PrincipalSpec::Not(Box::new(principal(p).map_err(|e| e.within("not_id"))?))
        }
        Some(I::Authenticated(a)) => PrincipalSpec::Authenticated(
            a.principal_name
                .as_ref()
                .map(|m| string_matcher(m).map_err(|e| e.within("authenticated.principal_name")))
                .transpose()?,
        ),
        #[allow(deprecated)]
        Some(I::SourceIp(c)) => PrincipalSpec::RemoteIp(cidr(c)),
        Some(I::DirectRemoteIp(c)) | Some(I::RemoteIp(c)) => PrincipalSpec::RemoteIp(cidr(c)),
        Some(I::Header(h)) => {
            PrincipalSpec::Header(header_matcher(h).map_err(|e| e.within("header"))?)
        }
        Some(I::UrlPath(u)) => PrincipalSpec::UrlPath(path(u).map_err(|e| e.within("url_path"))?),
        Some(I::Metadata(m)) => {
            PrincipalSpec::Metadata(request_auth(m).map_err(|e| e.within("metadata"))?)
        }
        Some(I::FilterState(_)) => return Err(FieldError::new("filter_state", "is not supported")),
        Some(_) => return Err(FieldError::new("identifier", "is not supported")),
    })
}
