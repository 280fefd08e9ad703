//! LDS: client listeners are `api_listener`s holding an HttpConnectionManager (A27, A39).

use std::collections::HashSet;

use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter::ConfigType,
};
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::{ListenerSpec, RouteSourceSpec};

use super::{opt_duration, route::route_config_spec, unpack};

/// The HttpConnectionManager type URL.
pub const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// The HTTP fault filter type URL.
pub const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// Filters we accept and do not act on (session affinity is not implemented yet).
const IGNORED_TYPES: [&str; 1] =
    ["type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession"];

/// Whether a config source is one we can follow: ADS or `self`.
pub(crate) fn is_ads(source: Option<&ConfigSource>) -> bool {
    matches!(
        source.and_then(|s| s.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_) | ConfigSourceSpecifier::Self_(_))
    )
}

/// Maps a client listener to a spec.
pub fn listener_spec(l: &PbListener) -> Result<ListenerSpec, ConfigError> {
    let err = |e: FieldError| e.resource(ResourceKind::Listener, &l.name);
    let any = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or_else(|| {
            err(FieldError::new(
                "api_listener",
                "is not set: only API listeners are supported on clients",
            ))
        })?;
    let hcm: HttpConnectionManager =
        unpack(any, HCM_TYPE, "api_listener.api_listener").map_err(err)?;
    let at = |e: FieldError| err(e.within("api_listener"));
    if hcm.xff_num_trusted_hops != 0 {
        return Err(at(FieldError::new("xff_num_trusted_hops", "must be 0")));
    }
    if !hcm.original_ip_detection_extensions.is_empty() {
        return Err(at(FieldError::new(
            "original_ip_detection_extensions",
            "must be empty",
        )));
    }
    let fault_filter = http_filters(&hcm).map_err(at)?;
    let routes = hcm_routes(&hcm).map_err(at)?;
    let max_stream_duration = opt_duration(
        hcm.common_http_protocol_options
            .as_ref()
            .and_then(|o| o.max_stream_duration.as_ref()),
        "common_http_protocol_options.max_stream_duration",
    )
    .map_err(at)?;
    Ok(ListenerSpec {
        name: l.name.clone(),
        routes,
        max_stream_duration,
        fault_filter,
    })
}

/// Where an HttpConnectionManager's routes come from: RDS over ADS, or inline (client and
/// server listeners alike); errors name fields below the HCM.
pub(crate) fn hcm_routes(hcm: &HttpConnectionManager) -> Result<RouteSourceSpec, FieldError> {
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => {
            if !is_ads(rds.config_source.as_ref()) {
                return Err(FieldError::new("rds.config_source", "must be ads or self"));
            }
            Ok(RouteSourceSpec::Rds(rds.route_config_name.clone()))
        }
        Some(RouteSpecifier::RouteConfig(rc)) => Ok(RouteSourceSpec::Inline(
            route_config_spec(rc)
                .map_err(|e| FieldError::new(format!("route_config.{}", e.field), e.reason))?,
        )),
        _ => Err(FieldError::new(
            "route_specifier",
            "must be rds or route_config",
        )),
    }
}

/// Validates the filter chain (A39) and says whether the fault filter is in it.
fn http_filters(hcm: &HttpConnectionManager) -> Result<bool, FieldError> {
    if hcm.http_filters.is_empty() {
        return Err(FieldError::new("http_filters", "must not be empty"));
    }
    let mut names = HashSet::new();
    let mut fault = false;
    let last = hcm.http_filters.len() - 1;
    for (i, f) in hcm.http_filters.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        if !names.insert(f.name.as_str()) {
            return Err(FieldError::new(
                field,
                format!("duplicate filter name {:?}", f.name),
            ));
        }
        let type_url = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any.type_url.as_str(),
            _ => "",
        };
        let is_router = type_url == ROUTER_TYPE;
        match type_url {
            ROUTER_TYPE => {}
            FAULT_TYPE => fault = true,
            t if IGNORED_TYPES.contains(&t) => {}
            _ if f.is_optional => continue,
            t => {
                return Err(FieldError::new(
                    field,
                    format!("filter {:?} has unsupported type {t:?}", f.name),
                ));
            }
        }
        if is_router != (i == last) {
            return Err(FieldError::new(
                field,
                "the router filter must be the last filter, and only the last",
            ));
        }
    }
    Ok(fault)
}
