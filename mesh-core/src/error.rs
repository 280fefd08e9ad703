//! Validation errors: every rejected field names its resource, its path and the reason.

use std::fmt;

/// The kind of xDS resource (or model object) an error refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// An LDS `Listener`.
    Listener,
    /// An RDS `RouteConfiguration`.
    RouteConfiguration,
    /// A CDS `Cluster`.
    Cluster,
    /// An EDS `ClusterLoadAssignment`.
    ClusterLoadAssignment,
    /// A whole snapshot (cross-resource checks).
    Snapshot,
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Listener => "listener",
            Self::RouteConfiguration => "route configuration",
            Self::Cluster => "cluster",
            Self::ClusterLoadAssignment => "cluster load assignment",
            Self::Snapshot => "snapshot",
        })
    }
}

/// A field that failed validation, before it is attributed to a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field inside its resource, e.g. `virtual_hosts[0].routes[2].match.path`.
    pub field: String,
    /// Why the value was rejected.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

/// Users of the standalone layers validate configs in code and propagate this with `?`.
impl std::error::Error for FieldError {}

impl FieldError {
    /// A field error for `field` with `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path with the path of the enclosing object.
    pub fn within(mut self, parent: impl fmt::Display) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }

    /// Attributes the error to a named resource.
    pub fn resource(self, kind: ResourceKind, name: impl Into<String>) -> ConfigError {
        ConfigError {
            kind,
            name: name.into(),
            field: self.field,
            reason: self.reason,
        }
    }
}

/// A configuration value rejected by validation.
///
/// Displays as `cluster "outbound|80||a.svc": circuit_breakers.max_retries: must be ...`, the
/// form that goes into an xDS NACK's `error_detail` and into logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name:?}: {field}: {reason}")]
pub struct ConfigError {
    /// Which kind of resource was invalid.
    pub kind: ResourceKind,
    /// The resource's name.
    pub name: String,
    /// Dotted path of the invalid field within the resource.
    pub field: String,
    /// Why the value was rejected.
    pub reason: String,
}

/// Result of validating one field.
pub(crate) type FieldResult<T> = Result<T, FieldError>;
