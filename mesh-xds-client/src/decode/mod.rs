//! Decoding xDS resources (`Any`-wrapped protobuf) into validated `mesh-core` types.
//!
//! One resource at a time, so that one bad resource is rejected on its own and the others in
//! the same response are still used (gRFC A46). Errors name the resource, the field and why.

mod cluster;
mod endpoint;
mod jwt;
mod listener;
mod route;
mod server;

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::matcher::{StringMatcherSpec, StringPattern};
use mesh_core::{Cluster, EndpointSet, Fraction, Listener, RouteConfig, ServerListener};
use prost::Message;

pub use cluster::cluster_spec;
pub use endpoint::load_assignment_spec;
pub use listener::{FAULT_TYPE, HCM_TYPE, listener_spec};
pub use route::route_config_spec;
pub use server::{is_server_listener, server_listener_spec};

/// The four resource types of a proxyless client, in the order their dependencies cascade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// LDS `Listener`.
    Listener,
    /// RDS `RouteConfiguration`.
    RouteConfiguration,
    /// CDS `Cluster`.
    Cluster,
    /// EDS `ClusterLoadAssignment`.
    ClusterLoadAssignment,
}

impl ResourceType {
    /// All types, in cascade order.
    pub const ALL: [Self; 4] = [
        Self::Listener,
        Self::RouteConfiguration,
        Self::Cluster,
        Self::ClusterLoadAssignment,
    ];

    /// The type URL on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            Self::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Self::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            Self::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Self::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
        }
    }

    /// The type for a type URL.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// `LDS`, `RDS`, `CDS` or `EDS`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Listener => "LDS",
            Self::RouteConfiguration => "RDS",
            Self::Cluster => "CDS",
            Self::ClusterLoadAssignment => "EDS",
        }
    }

    /// The matching `mesh-core` resource kind.
    pub fn kind(self) -> ResourceKind {
        match self {
            Self::Listener => ResourceKind::Listener,
            Self::RouteConfiguration => ResourceKind::RouteConfiguration,
            Self::Cluster => ResourceKind::Cluster,
            Self::ClusterLoadAssignment => ResourceKind::ClusterLoadAssignment,
        }
    }

    /// Whether a SotW response that omits a subscribed name deletes it (LDS and CDS only).
    pub fn absence_deletes(self) -> bool {
        matches!(self, Self::Listener | Self::Cluster)
    }
}

impl std::fmt::Display for ResourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.short_name())
    }
}

/// A validated resource, shared with every snapshot that holds it.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// A client (API) listener.
    Listener(Arc<Listener>),
    /// A server (socket) listener.
    ServerListener(Arc<ServerListener>),
    /// A route configuration.
    RouteConfig(Arc<RouteConfig>),
    /// A cluster.
    Cluster(Arc<Cluster>),
    /// Endpoints.
    Endpoints(Arc<EndpointSet>),
}

impl Decoded {
    /// The resource name.
    pub fn name(&self) -> &str {
        match self {
            Self::Listener(l) => l.name(),
            Self::ServerListener(l) => l.name(),
            Self::RouteConfig(r) => r.name(),
            Self::Cluster(c) => c.name(),
            Self::Endpoints(e) => e.cluster_name(),
        }
    }
}

/// A resource that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResourceError {
    /// Its name, when it could be read.
    pub name: Option<String>,
    /// What was wrong, naming the resource and field.
    pub message: String,
}

impl From<ConfigError> for ResourceError {
    fn from(e: ConfigError) -> Self {
        Self {
            name: Some(e.name.clone()),
            message: e.to_string(),
        }
    }
}

/// Decodes and validates one resource of type `ty`.
///
/// A panic in a decoder or validator (a bug) costs one resource, not the subscription: it
/// comes back as an error ("internal error decoding ..."), so the resource is NACKed, its
/// last good version stays, and the others apply.
pub fn decode(ty: ResourceType, any: &Any) -> Result<Decoded, ResourceError> {
    std::panic::catch_unwind(|| decode_unguarded(ty, any)).unwrap_or_else(|panic| {
        Err(ResourceError {
            name: None,
            message: format!(
                "internal error decoding a {} resource: {}",
                ty.kind(),
                panic_message(&*panic)
            ),
        })
    })
}

/// What a caught panic said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

#[cfg(test)]
thread_local! {
    /// Makes the next decode of this type panic, as a decoder bug would.
    pub(crate) static PANIC_ON: std::cell::Cell<Option<ResourceType>> = const { std::cell::Cell::new(None) };
}

fn decode_unguarded(ty: ResourceType, any: &Any) -> Result<Decoded, ResourceError> {
    #[cfg(test)]
    if PANIC_ON.with(|p| p.get() == Some(ty)) {
        panic!("injected decoder bug");
    }
    if any.type_url != ty.type_url() {
        return Err(ResourceError {
            name: None,
            message: format!(
                "{} response holds a resource of type {:?}, expected {:?}",
                ty,
                any.type_url,
                ty.type_url()
            ),
        });
    }
    let undecodable = |e: prost::DecodeError| ResourceError {
        name: None,
        message: format!("{} resource does not decode: {e}", ty.kind()),
    };
    Ok(match ty {
        ResourceType::Listener => {
            let l = envoy_types::pb::envoy::config::listener::v3::Listener::decode(&*any.value)
                .map_err(undecodable)?;
            if server::is_server_listener(&l) {
                Decoded::ServerListener(Arc::new(ServerListener::new(&server_listener_spec(&l)?)?))
            } else {
                Decoded::Listener(Arc::new(Listener::new(&listener_spec(&l)?)?))
            }
        }
        ResourceType::RouteConfiguration => {
            let r =
                envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(&*any.value)
                    .map_err(undecodable)?;
            Decoded::RouteConfig(Arc::new(RouteConfig::new(&route_config_spec(&r)?)?))
        }
        ResourceType::Cluster => {
            let c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&*any.value)
                .map_err(undecodable)?;
            Decoded::Cluster(Arc::new(Cluster::new(&cluster_spec(&c)?)?))
        }
        ResourceType::ClusterLoadAssignment => {
            let e = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(
                &*any.value,
            )
            .map_err(undecodable)?;
            Decoded::Endpoints(Arc::new(EndpointSet::new(&load_assignment_spec(&e)?)?))
        }
    })
}

/// A protobuf duration as a `std` one, capped at [`mesh_core::MAX_DURATION`] (one year);
/// negative or out-of-range values are errors.
pub(crate) fn duration(d: &PbDuration, field: &str) -> Result<Duration, FieldError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(FieldError::new(
            field,
            format!(
                "{}s {}ns is not a valid non-negative duration",
                d.seconds, d.nanos
            ),
        ));
    }
    // Both checked non-negative above; nanos < 1e9 fits a u32.
    let secs = u64::try_from(d.seconds).unwrap_or(u64::MAX);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Ok(mesh_core::time::capped(Duration::new(secs, nanos)))
}

/// An optional protobuf duration.
pub(crate) fn opt_duration(
    d: Option<&PbDuration>,
    field: &str,
) -> Result<Option<Duration>, FieldError> {
    d.map(|d| duration(d, field)).transpose()
}

/// An xDS `StringMatcher`.
pub(crate) fn string_matcher(
    m: &envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher,
) -> Result<StringMatcherSpec, FieldError> {
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let pattern = match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => StringPattern::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => StringPattern::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => StringPattern::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => StringPattern::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => StringPattern::Regex(r.regex.clone()),
        Some(MatchPattern::Custom(_)) => {
            return Err(FieldError::new(
                "custom",
                "custom string matchers are not supported",
            ));
        }
        None => return Err(FieldError::new("match_pattern", "is not set")),
    };
    Ok(StringMatcherSpec {
        pattern,
        ignore_case: m.ignore_case,
    })
}

/// An xDS `FractionalPercent`.
pub(crate) fn fraction(f: &envoy_types::pb::envoy::r#type::v3::FractionalPercent) -> Fraction {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    Fraction {
        numerator: f.numerator,
        denominator: match DenominatorType::try_from(f.denominator) {
            Ok(DenominatorType::TenThousand) => mesh_core::Denominator::TenThousand,
            Ok(DenominatorType::Million) => mesh_core::Denominator::Million,
            _ => mesh_core::Denominator::Hundred,
        },
    }
}

/// The identity's certificate-provider instance of a TLS context: the current field, else the
/// deprecated one (istiod sends both, for gRPC before and after 1.66).
#[allow(deprecated)]
pub(crate) fn identity_instance(
    common: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::CommonTlsContext,
) -> Option<String> {
    common
        .tls_certificate_provider_instance
        .as_ref()
        .map(|p| p.instance_name.clone())
        .or_else(|| {
            common
                .tls_certificate_certificate_provider_instance
                .as_ref()
                .map(|p| p.instance_name.clone())
        })
}

/// Decodes an `Any` that must hold `M`, naming `field` on failure.
pub(crate) fn unpack<M: Message + Default>(
    any: &Any,
    type_url: &str,
    field: &str,
) -> Result<M, FieldError> {
    if any.type_url != type_url {
        return Err(FieldError::new(
            field,
            format!("expected {type_url:?}, got {:?}", any.type_url),
        ));
    }
    M::decode(&*any.value).map_err(|e| FieldError::new(field, format!("does not decode: {e}")))
}

#[cfg(test)]
mod tests;
