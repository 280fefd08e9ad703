//! Client listeners (LDS `api_listener` with an HttpConnectionManager).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ConfigError, FieldError, ResourceKind};
use crate::route::{RouteConfig, RouteConfigSpec};

/// Where a listener's routes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSourceSpec {
    /// Fetched over RDS by this name.
    Rds(String),
    /// Inline in the listener.
    Inline(RouteConfigSpec),
}

/// An unvalidated listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Name: `host:port` for client listeners.
    pub name: String,
    /// Its routes.
    pub routes: RouteSourceSpec,
    /// HCM `common_http_options.max_stream_duration`: default cap on request time.
    pub max_stream_duration: Option<Duration>,
    /// Whether the HCM has the fault filter (per-route faults apply only then, as in Envoy).
    pub fault_filter: bool,
}

/// A validated listener's route source.
#[derive(Debug, Clone)]
pub enum RouteSource {
    /// The route configuration is the RDS resource with this name.
    Rds(Arc<str>),
    /// The route configuration is inline.
    Inline(Arc<RouteConfig>),
}

/// A validated listener.
#[derive(Debug, Clone)]
pub struct Listener {
    name: Arc<str>,
    routes: RouteSource,
    max_stream_duration: Option<Duration>,
    fault_filter: bool,
}

impl Listener {
    /// Validates a spec: the name and RDS name must be non-empty; inline routes must be valid.
    pub fn new(spec: &ListenerSpec) -> Result<Self, ConfigError> {
        // Its regexes share one budget (see `matcher::REGEX_BUDGET_PER_RESOURCE`).
        crate::matcher::with_regex_budget(|| Self::validate(spec))
    }

    fn validate(spec: &ListenerSpec) -> Result<Self, ConfigError> {
        let err = |e: FieldError| e.resource(ResourceKind::Listener, &spec.name);
        if spec.name.is_empty() {
            return Err(err(FieldError::new("name", "must not be empty")));
        }
        let routes = match &spec.routes {
            RouteSourceSpec::Rds(n) if n.is_empty() => {
                return Err(err(FieldError::new(
                    "api_listener.rds.route_config_name",
                    "must not be empty",
                )));
            }
            RouteSourceSpec::Rds(n) => RouteSource::Rds(n.as_str().into()),
            RouteSourceSpec::Inline(rc) => {
                RouteSource::Inline(Arc::new(RouteConfig::new(rc).map_err(|e| {
                    err(FieldError::new(
                        format!("api_listener.route_config.{}", e.field),
                        e.reason,
                    ))
                })?))
            }
        };
        Ok(Self {
            name: spec.name.as_str().into(),
            routes,
            max_stream_duration: spec.max_stream_duration.filter(|d| !d.is_zero()),
            fault_filter: spec.fault_filter,
        })
    }

    /// The listener name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Where its routes come from.
    pub fn routes(&self) -> &RouteSource {
        &self.routes
    }

    /// The default cap on request time.
    pub fn max_stream_duration(&self) -> Option<Duration> {
        self.max_stream_duration
    }

    /// Whether per-route fault configs apply.
    pub fn fault_filter(&self) -> bool {
        self.fault_filter
    }
}
