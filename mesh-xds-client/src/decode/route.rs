//! RDS: route configurations (A28, A31, A33, A42, A44 and Envoy's route semantics).

use std::collections::HashMap;

use envoy_types::pb::envoy::config::route::v3 as pb;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::google::protobuf::Any;
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::matcher::{
    HeaderMatchSpec, HeaderMatcherSpec, PathMatchSpec, QueryParamMatcherSpec, StringMatcherSpec,
};
use mesh_core::rbac::RbacSpec;
use mesh_core::route::{
    DestinationSpec, FaultAbortKind, FaultAbortSpec, FaultDelayKind, FaultDelaySpec, FaultSpec,
    ForwardActionSpec, HashPolicyKind, HashPolicySpec, MirrorPolicySpec, RetryPolicySpec,
    TimeoutSpec,
};
use mesh_core::{
    Fraction, RouteActionSpec, RouteConfigSpec, RouteMatchSpec, RouteSpec, VirtualHostSpec,
};

use super::listener::FAULT_TYPE;
use super::{fraction, opt_duration, string_matcher, unpack};

const FILTER_CONFIG_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.FilterConfig";

type FieldResult<T> = Result<T, FieldError>;

/// Maps a route configuration to a spec.
pub fn route_config_spec(rc: &pb::RouteConfiguration) -> Result<RouteConfigSpec, ConfigError> {
    let err = |e: FieldError| e.resource(ResourceKind::RouteConfiguration, &rc.name);
    let virtual_hosts = rc
        .virtual_hosts
        .iter()
        .enumerate()
        .map(|(i, vh)| virtual_host(vh).map_err(|e| err(e.within(format!("virtual_hosts[{i}]")))))
        .collect::<Result<_, _>>()?;
    Ok(RouteConfigSpec {
        name: rc.name.clone(),
        virtual_hosts,
        ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
    })
}

fn virtual_host(vh: &pb::VirtualHost) -> FieldResult<VirtualHostSpec> {
    let mut routes = Vec::with_capacity(vh.routes.len());
    for (i, r) in vh.routes.iter().enumerate() {
        if let Some(r) = route(r).map_err(|e| e.within(format!("routes[{i}]")))? {
            routes.push(r);
        }
    }
    Ok(VirtualHostSpec {
        name: vh.name.clone(),
        domains: vh.domains.clone(),
        routes,
        retry_policy: vh
            .retry_policy
            .as_ref()
            .map(retry_policy)
            .transpose()
            .map_err(|e| e.within("retry_policy"))?,
        fault: fault_override(&vh.typed_per_filter_config)?,
        rbac: rbac_overrides(&vh.typed_per_filter_config)?,
    })
}

/// A route, or `None` when its action is one a client ignores (A28: redirects, direct
/// responses, `cluster_header`, plugins).
fn route(r: &pb::Route) -> FieldResult<Option<RouteSpec>> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("match", "is not set"))?;
    let matcher = route_match(m).map_err(|e| e.within("match"))?;
    let action = match &r.action {
        Some(pb::route::Action::Route(a)) => {
            match route_action(a).map_err(|e| e.within("route"))? {
                Some(a) => RouteActionSpec::Forward(Box::new(a)),
                None => return Ok(None),
            }
        }
        Some(pb::route::Action::NonForwardingAction(_)) => RouteActionSpec::NonForwarding,
        _ => return Ok(None),
    };
    Ok(Some(RouteSpec {
        name: r.name.clone(),
        matcher,
        action,
        fault: fault_override(&r.typed_per_filter_config)?,
        rbac: rbac_overrides(&r.typed_per_filter_config)?,
    }))
}

pub(crate) fn route_match(m: &pb::RouteMatch) -> FieldResult<RouteMatchSpec> {
    use pb::route_match::PathSpecifier;
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatchSpec::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatchSpec::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => PathMatchSpec::Regex(r.regex.clone()),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            PathMatchSpec::PathSeparatedPrefix(p.clone())
        }
        Some(_) => {
            return Err(FieldError::new(
                "path_specifier",
                "unsupported path specifier",
            ));
        }
        None => return Err(FieldError::new("path_specifier", "is not set")),
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_matcher(h).map_err(|e| e.within(format!("headers[{i}]"))))
        .collect::<FieldResult<_>>()?;
    let query_params = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| query_matcher(q).map_err(|e| e.within(format!("query_parameters[{i}]"))))
        .collect::<FieldResult<_>>()?;
    Ok(RouteMatchSpec {
        path,
        case_sensitive: m.case_sensitive.as_ref().is_none_or(|b| b.value),
        headers,
        query_params,
        runtime_fraction: m
            .runtime_fraction
            .as_ref()
            .and_then(|r| r.default_value.as_ref())
            .map(fraction),
    })
}

// istiod and older control planes still send the deprecated specifiers.
#[allow(deprecated)]
pub(crate) fn header_matcher(h: &pb::HeaderMatcher) -> FieldResult<HeaderMatcherSpec> {
    use pb::header_matcher::HeaderMatchSpecifier as S;
    let matcher = match &h.header_match_specifier {
        None => HeaderMatchSpec::Present(true),
        Some(S::ExactMatch(s)) => HeaderMatchSpec::String(StringMatcherSpec::exact(s)),
        Some(S::PrefixMatch(s)) => HeaderMatchSpec::String(StringMatcherSpec::prefix(s)),
        Some(S::SuffixMatch(s)) => HeaderMatchSpec::String(StringMatcherSpec::suffix(s)),
        Some(S::ContainsMatch(s)) => HeaderMatchSpec::String(StringMatcherSpec::contains(s)),
        Some(S::SafeRegexMatch(r)) => HeaderMatchSpec::String(StringMatcherSpec::regex(&r.regex)),
        Some(S::RangeMatch(r)) => HeaderMatchSpec::Range {
            start: r.start,
            end: r.end,
        },
        Some(S::PresentMatch(p)) => HeaderMatchSpec::Present(*p),
        Some(S::StringMatch(s)) => {
            HeaderMatchSpec::String(string_matcher(s).map_err(|e| e.within("string_match"))?)
        }
    };
    Ok(HeaderMatcherSpec {
        name: h.name.clone(),
        matcher,
        invert: h.invert_match,
        treat_missing_as_empty: h.treat_missing_header_as_empty,
    })
}

fn query_matcher(q: &pb::QueryParameterMatcher) -> FieldResult<QueryParamMatcherSpec> {
    use pb::query_parameter_matcher::QueryParameterMatchSpecifier as S;
    let value = match &q.query_parameter_match_specifier {
        Some(S::StringMatch(s)) => Some(string_matcher(s).map_err(|e| e.within("string_match"))?),
        Some(S::PresentMatch(_)) | None => None,
    };
    Ok(QueryParamMatcherSpec {
        name: q.name.clone(),
        value,
    })
}

fn route_action(a: &pb::RouteAction) -> FieldResult<Option<ForwardActionSpec>> {
    use pb::route_action::ClusterSpecifier;
    let destination = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => DestinationSpec::Cluster(c.clone()),
        Some(ClusterSpecifier::WeightedClusters(w)) => DestinationSpec::Weighted(
            w.clusters
                .iter()
                .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                .collect(),
        ),
        _ => return Ok(None),
    };
    let msd = a.max_stream_duration.as_ref();
    let timeouts = TimeoutSpec {
        timeout: opt_duration(a.timeout.as_ref(), "timeout")?,
        max_stream_duration: opt_duration(
            msd.and_then(|m| m.max_stream_duration.as_ref()),
            "max_stream_duration.max_stream_duration",
        )?,
        grpc_timeout_header_max: opt_duration(
            msd.and_then(|m| m.grpc_timeout_header_max.as_ref()),
            "max_stream_duration.grpc_timeout_header_max",
        )?,
    };
    let hash_policies = a
        .hash_policy
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            hash_policy(h)
                .map_err(|e| e.within(format!("hash_policy[{i}]")))
                .transpose()
        })
        .collect::<FieldResult<_>>()?;
    let mirrors = a
        .request_mirror_policies
        .iter()
        .map(|m| MirrorPolicySpec {
            cluster: m.cluster.clone(),
            fraction: m
                .runtime_fraction
                .as_ref()
                .and_then(|r| r.default_value.as_ref())
                .map(fraction),
        })
        .collect();
    Ok(Some(ForwardActionSpec {
        destination,
        timeouts,
        retry_policy: a
            .retry_policy
            .as_ref()
            .map(retry_policy)
            .transpose()
            .map_err(|e| e.within("retry_policy"))?,
        hash_policies,
        mirrors,
    }))
}

fn retry_policy(r: &pb::RetryPolicy) -> FieldResult<RetryPolicySpec> {
    let backoff = r.retry_back_off.as_ref();
    if let Some(b) = backoff
        && b.base_interval.is_none()
    {
        return Err(FieldError::new(
            "retry_back_off.base_interval",
            "is required",
        ));
    }
    Ok(RetryPolicySpec {
        retry_on: r.retry_on.clone(),
        num_retries: r.num_retries.as_ref().map(|n| n.value),
        per_try_timeout: opt_duration(r.per_try_timeout.as_ref(), "per_try_timeout")?,
        retriable_status_codes: r.retriable_status_codes.clone(),
        backoff_base: opt_duration(
            backoff.and_then(|b| b.base_interval.as_ref()),
            "retry_back_off.base_interval",
        )?,
        backoff_max: opt_duration(
            backoff.and_then(|b| b.max_interval.as_ref()),
            "retry_back_off.max_interval",
        )?,
    })
}

/// A hash policy; `None` for kinds a client cannot compute (they are skipped, as gRPC does).
fn hash_policy(h: &pb::route_action::HashPolicy) -> FieldResult<Option<HashPolicySpec>> {
    use pb::route_action::hash_policy::PolicySpecifier as P;
    let kind = match &h.policy_specifier {
        Some(P::Header(hd)) => HashPolicyKind::Header {
            name: hd.header_name.clone(),
            regex_rewrite: hd.regex_rewrite.as_ref().map(|r| {
                (
                    r.pattern
                        .as_ref()
                        .map(|p| p.regex.clone())
                        .unwrap_or_default(),
                    r.substitution.clone(),
                )
            }),
        },
        Some(P::Cookie(c)) => HashPolicyKind::Cookie {
            name: c.name.clone(),
        },
        Some(P::QueryParameter(q)) => HashPolicyKind::QueryParameter {
            name: q.name.clone(),
        },
        Some(P::ConnectionProperties(_)) => HashPolicyKind::SourceIp,
        Some(P::FilterState(f)) if f.key == "io.grpc.channel_id" => HashPolicyKind::ChannelId,
        _ => return Ok(None),
    };
    Ok(Some(HashPolicySpec {
        kind,
        terminal: h.terminal,
    }))
}

/// The fault override in a `typed_per_filter_config` map: any entry holding an `HTTPFault`,
/// bare or in a `FilterConfig`.
fn fault_override(configs: &HashMap<String, Any>) -> FieldResult<Option<FaultSpec>> {
    for (name, any) in configs {
        let field = format!("typed_per_filter_config[{name:?}]");
        let inner;
        let any = if any.type_url == FILTER_CONFIG_TYPE {
            let fc: pb::FilterConfig = unpack(any, FILTER_CONFIG_TYPE, &field)?;
            match fc.config {
                Some(c) => {
                    inner = c;
                    &inner
                }
                None => continue,
            }
        } else {
            any
        };
        if any.type_url == FAULT_TYPE {
            let f: HttpFault = unpack(any, FAULT_TYPE, &field)?;
            return fault(&f).map(Some).map_err(|e| e.within(field));
        }
    }
    Ok(None)
}

const RBAC_PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

/// The `RBACPerRoute` entries of a `typed_per_filter_config` map, each named for the RBAC
/// filter instance it overrides (in name order, for stable errors).
fn rbac_overrides(configs: &HashMap<String, Any>) -> FieldResult<Vec<RbacSpec>> {
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute;
    let mut names: Vec<&String> = configs.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let field = format!("typed_per_filter_config[{name:?}]");
        let mut any = configs[name].clone();
        if any.type_url == FILTER_CONFIG_TYPE {
            let fc: pb::FilterConfig = unpack(&any, FILTER_CONFIG_TYPE, &field)?;
            match fc.config {
                Some(c) => any = c,
                None => continue,
            }
        }
        if any.type_url == RBAC_PER_ROUTE_TYPE {
            let per_route: RbacPerRoute = unpack(&any, RBAC_PER_ROUTE_TYPE, &field)?;
            let filter = per_route.rbac.unwrap_or_default();
            out.push(super::server::rbac_filter(name, &filter).map_err(|e| e.within(&field))?);
        }
    }
    Ok(out)
}

fn fault(f: &HttpFault) -> FieldResult<FaultSpec> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier as D;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType as A;
    let pct = |p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>| {
        p.map(fraction).unwrap_or(Fraction::percent(0))
    };
    let delay = match &f.delay {
        None => None,
        Some(d) => Some(FaultDelaySpec {
            kind: match &d.fault_delay_secifier {
                Some(D::FixedDelay(x)) => {
                    FaultDelayKind::Fixed(super::duration(x, "delay.fixed_delay")?)
                }
                Some(D::HeaderDelay(_)) => FaultDelayKind::HeaderControlled,
                None => {
                    return Err(FieldError::new(
                        "delay",
                        "has neither fixed_delay nor header_delay",
                    ));
                }
            },
            percentage: pct(d.percentage.as_ref()),
        }),
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => Some(FaultAbortSpec {
            kind: match &a.error_type {
                Some(A::HttpStatus(s)) => FaultAbortKind::Http(*s),
                Some(A::GrpcStatus(s)) => FaultAbortKind::Grpc(*s),
                Some(A::HeaderAbort(_)) => FaultAbortKind::HeaderControlled,
                None => return Err(FieldError::new("abort", "has no error type")),
            },
            percentage: pct(a.percentage.as_ref()),
        }),
    };
    Ok(FaultSpec {
        delay,
        abort,
        max_active_faults: f.max_active_faults.as_ref().map(|m| m.value),
    })
}
