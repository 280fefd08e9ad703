//! Route configurations: virtual-host selection by authority and first-match route lookup.

mod action;
mod fault;
mod retry;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use rand::RngCore;

pub use action::{
    DEFAULT_ROUTE_TIMEOUT, Destination, DestinationSpec, ForwardAction, ForwardActionSpec,
    HashPolicy, HashPolicyKind, HashPolicySpec, MirrorPolicy, MirrorPolicySpec, TimeoutSpec,
    Timeouts, WeightedClusters, request_hash,
};
pub use fault::{
    ABORT_GRPC_HEADER, ABORT_HEADER, ABORT_PERCENT_HEADER, DELAY_HEADER, DELAY_PERCENT_HEADER,
    FaultAbort, FaultAbortKind, FaultAbortSpec, FaultConfig, FaultDecision, FaultDelayKind,
    FaultDelaySpec, FaultSpec,
};
pub use retry::{AttemptFailure, RetryOn, RetryPolicy, RetryPolicySpec};

use crate::error::{ConfigError, FieldError, FieldResult, ResourceKind};
use crate::fraction::{Fraction, sample_per_million};
use crate::matcher::{
    HeaderMatcher, HeaderMatcherSpec, PathMatchSpec, PathMatcher, QueryParamMatcher,
    QueryParamMatcherSpec,
};
use crate::rbac::{RbacOverrides, RbacSpec};
use crate::request::RouteRequest;

/// An unvalidated RDS `RouteConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteConfigSpec {
    /// Resource name, e.g. `outbound|9080||reviews.default.svc.cluster.local`.
    pub name: String,
    /// Virtual hosts.
    pub virtual_hosts: Vec<VirtualHostSpec>,
    /// Strip the port from the authority before matching domains.
    pub ignore_port_in_host_matching: bool,
}

/// An unvalidated virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtualHostSpec {
    /// Name (for errors and dumps).
    pub name: String,
    /// Domains: exact, `*suffix`, `prefix*` or `*`.
    pub domains: Vec<String>,
    /// Routes, in order.
    pub routes: Vec<RouteSpec>,
    /// Retry policy for routes that have none.
    pub retry_policy: Option<RetryPolicySpec>,
    /// Fault config for routes that have none (`typed_per_filter_config`).
    pub fault: Option<FaultSpec>,
    /// RBAC filter overrides for routes that have none (`RBACPerRoute`, by filter name).
    pub rbac: Vec<RbacSpec>,
}

/// An unvalidated route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Name (for errors, dumps and telemetry).
    pub name: String,
    /// When the route applies.
    pub matcher: RouteMatchSpec,
    /// What it does.
    pub action: RouteActionSpec,
    /// Fault config override (`typed_per_filter_config`), replacing the virtual host's.
    pub fault: Option<FaultSpec>,
    /// RBAC filter overrides (`RBACPerRoute`, by filter name), replacing the virtual host's.
    pub rbac: Vec<RbacSpec>,
}

/// An unvalidated `RouteMatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatchSpec {
    /// The path specifier.
    pub path: PathMatchSpec,
    /// `case_sensitive` (default true); does not apply to regexes.
    pub case_sensitive: bool,
    /// Headers that must all match (pseudo-headers `:method`, `:authority` included).
    pub headers: Vec<HeaderMatcherSpec>,
    /// Query parameters that must all match.
    pub query_params: Vec<QueryParamMatcherSpec>,
    /// `runtime_fraction.default_value`: the share of requests the route matches.
    pub runtime_fraction: Option<Fraction>,
}

impl RouteMatchSpec {
    /// Matches paths starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            path: PathMatchSpec::Prefix(prefix.into()),
            case_sensitive: true,
            headers: Vec::new(),
            query_params: Vec::new(),
            runtime_fraction: None,
        }
    }
}

/// An unvalidated route action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteActionSpec {
    /// Forward to a cluster (client side).
    Forward(Box<ForwardActionSpec>),
    /// Serve locally (server side, `non_forwarding_action`).
    NonForwarding,
}

/// A validated route configuration.
#[derive(Debug)]
pub struct RouteConfig {
    name: Arc<str>,
    virtual_hosts: Box<[VirtualHost]>,
    exact: HashMap<Box<str>, usize>,
    /// `(suffix, vhost)`, longest suffix first.
    suffixes: Box<[(Box<str>, usize)]>,
    /// `(prefix, vhost)`, longest prefix first.
    prefixes: Box<[(Box<str>, usize)]>,
    any: Option<usize>,
    ignore_port: bool,
}

/// A validated virtual host.
#[derive(Debug)]
pub struct VirtualHost {
    name: Box<str>,
    domains: Box<[Box<str>]>,
    routes: Box<[Route]>,
}

/// A validated route.
#[derive(Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: RouteMatch,
    action: RouteAction,
    fault: Option<Arc<FaultConfig>>,
    rbac: Option<Arc<RbacOverrides>>,
}

/// A validated `RouteMatch`: the path, headers, query parameters and runtime fraction.
#[derive(Debug)]
pub struct RouteMatch {
    path: PathMatcher,
    headers: Box<[HeaderMatcher]>,
    query_params: Box<[QueryParamMatcher]>,
    runtime_ppm: Option<u32>,
}

impl RouteMatch {
    /// Validates a spec; errors are named from the route (`match...`).
    pub fn new(m: &RouteMatchSpec) -> FieldResult<Self> {
        let path = PathMatcher::new(&m.path, m.case_sensitive).map_err(|e| e.within("match"))?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderMatcher::new(h).map_err(|e| e.within(format!("match.headers[{i}]")))
            })
            .collect::<FieldResult<_>>()?;
        let query_params = m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, q)| {
                QueryParamMatcher::new(q)
                    .map_err(|e| e.within(format!("match.query_parameters[{i}]")))
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            path,
            headers,
            query_params,
            runtime_ppm: m.runtime_fraction.map(Fraction::as_per_million),
        })
    }

    /// Whether the request matches: path, then every header and query parameter, then the
    /// runtime fraction (drawn only when everything else matched).
    #[inline]
    pub fn matches<R: RngCore + ?Sized>(&self, req: &RouteRequest<'_>, rng: &mut R) -> bool {
        self.path.matches(req.path())
            && self.headers.iter().all(|h| h.matches(req))
            && self.query_params.iter().all(|q| q.matches(req))
            && self
                .runtime_ppm
                .is_none_or(|ppm| sample_per_million(ppm, rng))
    }
}

/// What a validated route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to a cluster.
    Forward(Box<ForwardAction>),
    /// Serve locally.
    NonForwarding,
}

#[derive(Clone, Copy)]
enum DomainKind<'a> {
    Exact,
    Suffix(&'a str),
    Prefix(&'a str),
    Any,
}

fn domain_kind(domain: &str) -> Result<DomainKind<'_>, &'static str> {
    if domain.is_empty() {
        return Err("must not be empty");
    }
    if domain == "*" {
        return Ok(DomainKind::Any);
    }
    let stars = domain.matches('*').count();
    match stars {
        0 => Ok(DomainKind::Exact),
        1 if domain.starts_with('*') => Ok(DomainKind::Suffix(&domain[1..])),
        1 if domain.ends_with('*') => Ok(DomainKind::Prefix(&domain[..domain.len() - 1])),
        _ => Err("a wildcard '*' may only be the whole domain, its first or its last character"),
    }
}

impl RouteConfig {
    /// Validates a spec: every virtual host and route, and domains unique across hosts.
    pub fn new(spec: &RouteConfigSpec) -> Result<Self, ConfigError> {
        // Its regexes share one budget (see `matcher::REGEX_BUDGET_PER_RESOURCE`).
        crate::matcher::with_regex_budget(|| Self::validate(spec))
    }

    fn validate(spec: &RouteConfigSpec) -> Result<Self, ConfigError> {
        let err = |e: FieldError| e.resource(ResourceKind::RouteConfiguration, &spec.name);
        let mut exact = HashMap::default();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        let mut virtual_hosts = Vec::with_capacity(spec.virtual_hosts.len());
        for (vi, vh) in spec.virtual_hosts.iter().enumerate() {
            let at = |e: FieldError| err(e.within(format!("virtual_hosts[{vi}]")));
            if vh.domains.is_empty() {
                return Err(at(FieldError::new("domains", "must not be empty")));
            }
            let mut domains = Vec::with_capacity(vh.domains.len());
            for (di, d) in vh.domains.iter().enumerate() {
                let d = d.to_ascii_lowercase();
                let field = format!("domains[{di}]");
                let kind = domain_kind(&d)
                    .map_err(|why| at(FieldError::new(&field, format!("{d:?}: {why}"))))?;
                let fresh = match kind {
                    DomainKind::Exact => exact.insert(d.clone().into_boxed_str(), vi).is_none(),
                    DomainKind::Suffix(s) => {
                        let dup = suffixes.iter().any(|(x, _): &(Box<str>, usize)| &**x == s);
                        suffixes.push((s.into(), vi));
                        !dup
                    }
                    DomainKind::Prefix(p) => {
                        let dup = prefixes.iter().any(|(x, _): &(Box<str>, usize)| &**x == p);
                        prefixes.push((p.into(), vi));
                        !dup
                    }
                    DomainKind::Any => any.replace(vi).is_none(),
                };
                if !fresh {
                    return Err(at(FieldError::new(
                        field,
                        format!("{d:?} is already a domain of another virtual host"),
                    )));
                }
                domains.push(d.into_boxed_str());
            }
            let vhost_retry = vh
                .retry_policy
                .as_ref()
                .map(RetryPolicy::new)
                .transpose()
                .map_err(|e| at(e.within("retry_policy")))?;
            let vhost_fault = vh
                .fault
                .as_ref()
                .map(|f| FaultConfig::new(f).map(Arc::new))
                .transpose()
                .map_err(|e| at(e.within("typed_per_filter_config.fault")))?;
            let vhost_rbac = (!vh.rbac.is_empty())
                .then(|| RbacOverrides::new(&vh.rbac).map(Arc::new))
                .transpose()
                .map_err(|e| at(e.within("typed_per_filter_config")))?;
            let routes = vh
                .routes
                .iter()
                .enumerate()
                .map(|(ri, r)| {
                    Route::new(
                        r,
                        vhost_retry.as_ref(),
                        vhost_fault.as_ref(),
                        vhost_rbac.as_ref(),
                    )
                    .map_err(|e| at(e.within(format!("routes[{ri}]"))))
                })
                .collect::<Result<Box<[_]>, _>>()?;
            virtual_hosts.push(VirtualHost {
                name: vh.name.as_str().into(),
                domains: domains.into(),
                routes,
            });
        }
        suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        Ok(Self {
            name: spec.name.as_str().into(),
            virtual_hosts: virtual_hosts.into(),
            exact,
            suffixes: suffixes.into(),
            prefixes: prefixes.into(),
            any,
            ignore_port: spec.ignore_port_in_host_matching,
        })
    }

    /// The resource name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The virtual hosts, in configuration order.
    pub fn virtual_hosts(&self) -> &[VirtualHost] {
        &self.virtual_hosts
    }

    /// The virtual host for `authority`: exact, then the longest `*suffix`, then the longest
    /// `prefix*`, then `*`. Compared case-insensitively with the port included (unless the
    /// configuration ignores ports). Wildcards never match an empty remainder.
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        // A server's inbound routes have one `*` virtual host: no lookup to do.
        if self.exact.is_empty() && self.suffixes.is_empty() && self.prefixes.is_empty() {
            return self.any.map(|i| &self.virtual_hosts[i]);
        }
        let mut authority = authority;
        if self.ignore_port {
            authority = strip_port(authority);
        }
        let lowered;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            lowered.as_str()
        } else {
            authority
        };
        let index = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(&**s))
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(&**p))
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        Some(&self.virtual_hosts[index])
    }

    /// Selects the virtual host for the request's authority, then the first matching route.
    pub fn route<R: RngCore + ?Sized>(
        &self,
        req: &RouteRequest<'_>,
        rng: &mut R,
    ) -> Result<&Route, NoRoute> {
        let vh = self
            .virtual_host(req.authority())
            .ok_or(NoRoute::NoVirtualHost)?;
        vh.route(req, rng).ok_or(NoRoute::NoRouteMatched)
    }
}

/// `host:port` → `host`; `[v6]:port` → `[v6]`; anything else is returned as is.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.find(']') {
            Some(i) => &authority[..i + 2],
            None => authority,
        };
    }
    match authority.split_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Why no route was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// No listener has that name.
    #[error("no listener for this target")]
    NoListener,
    /// The listener's route configuration is not in the snapshot.
    #[error("the listener's route configuration is missing")]
    NoRouteConfig,
    /// No virtual host's domains match the authority.
    #[error("no virtual host matches the authority")]
    NoVirtualHost,
    /// The virtual host has no route matching the request.
    #[error("no route matches the request")]
    NoRouteMatched,
}

impl VirtualHost {
    /// The virtual host's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its domains, lowercased.
    pub fn domains(&self) -> &[Box<str>] {
        &self.domains
    }

    /// Its routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route that matches; later, more specific routes never win.
    #[inline]
    pub fn route<R: RngCore + ?Sized>(
        &self,
        req: &RouteRequest<'_>,
        rng: &mut R,
    ) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(req, rng))
    }
}

impl Route {
    fn new(
        spec: &RouteSpec,
        vhost_retry: Option<&RetryPolicy>,
        vhost_fault: Option<&Arc<FaultConfig>>,
        vhost_rbac: Option<&Arc<RbacOverrides>>,
    ) -> FieldResult<Self> {
        let matcher = RouteMatch::new(&spec.matcher)?;
        let action = match &spec.action {
            RouteActionSpec::Forward(f) => RouteAction::Forward(Box::new(
                ForwardAction::new(f, vhost_retry).map_err(|e| e.within("route"))?,
            )),
            RouteActionSpec::NonForwarding => RouteAction::NonForwarding,
        };
        let fault = match &spec.fault {
            Some(f) => Some(Arc::new(
                FaultConfig::new(f).map_err(|e| e.within("typed_per_filter_config.fault"))?,
            )),
            None => vhost_fault.cloned(),
        };
        let rbac = if spec.rbac.is_empty() {
            vhost_rbac.cloned()
        } else {
            Some(Arc::new(
                RbacOverrides::new(&spec.rbac).map_err(|e| e.within("typed_per_filter_config"))?,
            ))
        };
        Ok(Self {
            name: spec.name.as_str().into(),
            matcher,
            action,
            fault,
            rbac,
        })
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The route's name, shared (cheap to keep per request).
    pub fn shared_name(&self) -> &Arc<str> {
        &self.name
    }

    /// What the route does.
    pub fn action(&self) -> &RouteAction {
        &self.action
    }

    /// The forwarding action, if this is a client route.
    pub fn forward(&self) -> Option<&ForwardAction> {
        match &self.action {
            RouteAction::Forward(f) => Some(f),
            RouteAction::NonForwarding => None,
        }
    }

    /// The effective RBAC overrides (the route's, else the virtual host's).
    pub fn rbac_overrides(&self) -> Option<&Arc<RbacOverrides>> {
        self.rbac.as_ref()
    }

    /// The effective fault config (the route's, else the virtual host's).
    pub fn fault(&self) -> Option<&Arc<FaultConfig>> {
        self.fault.as_ref()
    }

    /// Whether the request matches.
    #[inline]
    pub fn matches<R: RngCore + ?Sized>(&self, req: &RouteRequest<'_>, rng: &mut R) -> bool {
        self.matcher.matches(req, rng)
    }
}

#[cfg(test)]
mod tests;
