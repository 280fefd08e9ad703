//! mesh-core: the validated configuration model and the request-path algorithms of mesh.
//!
//! Data flows one way: the xDS client validates control-plane resources into the `*Spec` →
//! validated types here ([`Listener`], [`RouteConfig`], [`Cluster`], [`EndpointSet`]), puts
//! them in an immutable [`MeshSnapshot`], and the tower stack reads that snapshot per request:
//! [`MeshSnapshot::route`] matches a route and picks a weighted cluster, a [`ClusterPicker`]
//! picks an endpoint, and the [`RetryBudget`], [`CircuitBreaker`] and [`OutlierDetector`]
//! decide retries, overload and ejection.
//!
//! Nothing here does I/O or reads a clock: time and randomness are passed in, so every
//! algorithm is deterministic under test.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod breaker;
pub mod budget;
pub mod cluster;
pub mod endpoint;
pub mod error;
pub mod fraction;
pub mod identity;
pub mod jwt;
pub mod lb;
pub mod listener;
pub mod matcher;
pub mod outlier;
mod rand_util;
pub mod rbac;
pub mod request;
pub mod route;
pub mod server;
pub mod shared_map;
pub mod snapshot;
pub mod telemetry;
#[cfg(test)]
mod test_support;
pub mod time;

pub use breaker::{
    BreakerPermit, BreakerPermitRef, BreakerResource, CircuitBreaker, CircuitBreakerSpec, Overflow,
    Thresholds,
};
pub use budget::{RetryBudget, RetryBudgetConfig, RetryBudgetSpec};
pub use cluster::{Cluster, ClusterSpec, UpstreamTls, UpstreamTlsSpec};
pub use endpoint::{
    ClusterLoadAssignmentSpec, Endpoint, EndpointSet, EndpointSpec, HealthStatus, Locality,
    LocalityEndpointsSpec,
};
pub use error::{ConfigError, FieldError, ResourceKind};
pub use fraction::{Denominator, Fraction};
pub use identity::{
    CertError, Certificates, LeafInfo, ProviderCerts, SubjectAltNames, TrustRoots, WorkloadCert,
};
pub use lb::{ClusterPicker, EndpointLoad, LbConfig, LbPolicySpec, PickerOptions};
pub use listener::{Listener, ListenerSpec, RouteSource, RouteSourceSpec};
pub use outlier::{Outcome, OutlierDetectionConfig, OutlierDetectionSpec, OutlierDetector};
pub use request::RouteRequest;
pub use route::{
    NoRoute, Route, RouteAction, RouteActionSpec, RouteConfig, RouteConfigSpec, RouteMatchSpec,
    RouteSpec, VirtualHost, VirtualHostSpec,
};
pub use server::{ConnectionFacts, FilterChain, ServerListener, ServerListenerSpec};
pub use snapshot::{Dangling, MeshSnapshot, Routed};
pub use time::MAX_DURATION;
