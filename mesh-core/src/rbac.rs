//! RBAC on the server (gRFC A41, as istiod expresses AuthorizationPolicy): the filters of an
//! inbound HttpConnectionManager, evaluated in order for each request.
//!
//! A DENY filter denies when any of its policies matches; an ALLOW filter denies when none
//! does; LOG filters are ignored. A policy matches when any permission and any principal
//! match. What cannot match by A41 never does: metadata (so Istio's `requestPrincipals`, unless
//! a JWT filter supplies them), and `requested_server_name` other than `""`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::error::FieldError;
use crate::identity::LeafInfo;
use crate::jwt::{AuthField, RequestAuth};
use crate::matcher::{HeaderMatcher, HeaderMatcherSpec, StringMatcher, StringMatcherSpec};
use crate::request::RouteRequest;

/// An unvalidated CIDR range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrSpec {
    /// The address.
    pub address: String,
    /// The prefix length (clamped to the family's width).
    pub prefix_len: u32,
}

/// A validated CIDR range, host bits masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    len: u8,
}

impl Cidr {
    /// Validates: the address must parse; the length is clamped (A36/A41).
    pub fn new(spec: &CidrSpec) -> Result<Self, FieldError> {
        let ip: IpAddr = spec.address.parse().map_err(|_| {
            FieldError::new(
                "address_prefix",
                format!("{:?} is not an IP address", spec.address),
            )
        })?;
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let len = spec.prefix_len.min(width) as u8;
        Ok(Self {
            network: mask(ip, len),
            len,
        })
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.len) == self.network
    }
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// An unvalidated RBAC permission (what the request does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PermissionSpec {
    /// Always.
    Any,
    /// All of these.
    And(Vec<PermissionSpec>),
    /// Any of these.
    Or(Vec<PermissionSpec>),
    /// Not this.
    Not(Box<PermissionSpec>),
    /// A header (`:method`, `:authority`, `:path` included).
    Header(HeaderMatcherSpec),
    /// The path without the query.
    UrlPath(StringMatcherSpec),
    /// The local address.
    DestinationIp(CidrSpec),
    /// The local port.
    DestinationPort(u32),
    /// A local port range `[start, end)`.
    DestinationPortRange(u32, u32),
    /// Dynamic metadata: never matches (A41).
    Metadata,
    /// The SNI: matched against `""` (A41).
    RequestedServerName(StringMatcherSpec),
}

/// An unvalidated RBAC principal (who sends the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalSpec {
    /// Anyone.
    Any,
    /// All of these.
    And(Vec<PrincipalSpec>),
    /// Any of these.
    Or(Vec<PrincipalSpec>),
    /// Not this.
    Not(Box<PrincipalSpec>),
    /// A TLS peer; with a matcher, one whose principal name matches (URI SANs, else DNS SANs,
    /// else the subject).
    Authenticated(Option<StringMatcherSpec>),
    /// The peer address (`source_ip`, `direct_remote_ip` and `remote_ip` alike: no proxies in
    /// front, `xff_num_trusted_hops` is 0).
    RemoteIp(CidrSpec),
    /// A header.
    Header(HeaderMatcherSpec),
    /// The path.
    UrlPath(StringMatcherSpec),
    /// Dynamic metadata: never matches, unless it is what the JWT filter writes (istiod's
    /// `istio_authn` keys: the request principal, audiences, presenter, claims), read from the
    /// request's verified token.
    Metadata(Option<(AuthField, StringMatcherSpec)>),
}

/// An unvalidated RBAC policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySpec {
    /// Any of these permissions.
    pub permissions: Vec<PermissionSpec>,
    /// And any of these principals.
    pub principals: Vec<PrincipalSpec>,
}

/// What an RBAC filter does when a policy matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacAction {
    /// Only matching requests pass.
    Allow,
    /// Matching requests are denied.
    Deny,
    /// Nothing (shadow logging).
    Log,
}

/// When an RBAC filter writes an audit record (gRFC A59).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuditCondition {
    /// Never.
    #[default]
    None,
    /// For denied requests.
    OnDeny,
    /// For allowed requests.
    OnAllow,
    /// For both.
    OnDenyAndAllow,
}

/// An unvalidated RBAC filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbacSpec {
    /// The filter instance name (`envoy.filters.http.rbac.DENY`, `envoy.filters.http.rbac`).
    pub name: String,
    /// `None` when `rules` is unset: the filter does nothing.
    pub action: Option<RbacAction>,
    /// Policies by name, in order.
    pub policies: Vec<(String, PolicySpec)>,
    /// When to audit.
    pub audit: AuditCondition,
}

#[derive(Debug)]
enum Permission {
    Any,
    And(Box<[Permission]>),
    Or(Box<[Permission]>),
    Not(Box<Permission>),
    Header(HeaderMatcher),
    Method(http::Method),
    UrlPath(StringMatcher),
    DestinationIp(Cidr),
    DestinationPort(u32),
    DestinationPortRange(u32, u32),
    Never,
    RequestedServerName(StringMatcher),
}

#[derive(Debug)]
enum Principal {
    Any,
    And(Box<[Principal]>),
    Or(Box<[Principal]>),
    Not(Box<Principal>),
    Authenticated(Option<StringMatcher>),
    RemoteIp(Cidr),
    Header(HeaderMatcher),
    UrlPath(StringMatcher),
    Jwt(Option<(AuthField, StringMatcher)>),
}

#[derive(Debug)]
struct Policy {
    name: Arc<str>,
    permissions: Box<[Permission]>,
    principals: Box<[Principal]>,
}

#[derive(Debug)]
struct Filter {
    name: Arc<str>,
    action: RbacAction,
    policies: Box<[Policy]>,
    audit: AuditCondition,
    /// With many policies: which ones a request's path leaves in the running.
    index: Option<PathIndex>,
}

/// A literal a policy's path must meet for the policy to match: most istiod policies name
/// paths (`operation.paths`), so a filter of many policies can skip, by one or two hash
/// lookups, the ones whose paths the request cannot have, instead of trying each in turn.
#[derive(Debug, Clone)]
enum Guard {
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// The policies of one filter (at most 64) by the path literals they require.
#[derive(Debug)]
struct PathIndex {
    /// Policies without a path guard: always candidates.
    unguarded: u64,
    exact: rustc_hash::FxHashMap<Box<str>, u64>,
    prefix: rustc_hash::FxHashMap<Box<str>, u64>,
    /// The distinct prefix lengths, to look up each prefix of the path once.
    prefix_lens: Box<[usize]>,
}

/// Below this many policies a filter is tried policy by policy.
const INDEX_MIN_POLICIES: usize = 4;

impl PathIndex {
    fn new(policies: &[Policy]) -> Option<Self> {
        if policies.len() < INDEX_MIN_POLICIES || policies.len() > 64 {
            return None;
        }
        let mut index = Self {
            unguarded: 0,
            exact: Default::default(),
            prefix: Default::default(),
            prefix_lens: Box::default(),
        };
        let mut lens = Vec::new();
        for (i, p) in policies.iter().enumerate() {
            let bit = 1u64 << i;
            match policy_guards(p) {
                None => index.unguarded |= bit,
                Some(guards) => {
                    for g in guards {
                        match g {
                            Guard::Exact(s) => *index.exact.entry(s).or_default() |= bit,
                            Guard::Prefix(s) => {
                                lens.push(s.len());
                                *index.prefix.entry(s).or_default() |= bit;
                            }
                        }
                    }
                }
            }
        }
        lens.sort_unstable();
        lens.dedup();
        index.prefix_lens = lens.into();
        // An index that rules nothing out is not worth its lookups.
        (index.unguarded != u64::MAX >> (64 - policies.len())).then_some(index)
    }

    /// The policies that can match a request with this path, as a bit set.
    #[inline]
    fn candidates(&self, path: &str) -> u64 {
        let mut set = self.unguarded;
        if let Some(m) = self.exact.get(path) {
            set |= m;
        }
        for &len in self.prefix_lens.iter() {
            match path.get(..len) {
                Some(head) => {
                    if let Some(m) = self.prefix.get(head) {
                        set |= m;
                    }
                }
                None if path.len() < len => break,
                None => {}
            }
        }
        set
    }
}

/// The path literals of which a policy needs one: `None` when some permission can match
/// without any.
fn policy_guards(p: &Policy) -> Option<Vec<Guard>> {
    let mut all = Vec::new();
    for perm in p.permissions.iter() {
        all.extend(permission_guards(perm)?);
    }
    Some(all)
}

fn permission_guards(p: &Permission) -> Option<Vec<Guard>> {
    match p {
        Permission::UrlPath(m) => {
            if let Some((s, false)) = m.exact() {
                Some(vec![Guard::Exact(s.into())])
            } else if let Some((s, false)) = m.prefix() {
                Some(vec![Guard::Prefix(s.into())])
            } else {
                None
            }
        }
        // All must hold: any one child's literals are needed.
        Permission::And(v) => v.iter().find_map(permission_guards),
        // One must hold: the literals of every child, if each child has some.
        Permission::Or(v) => {
            let mut all = Vec::new();
            for c in v.iter() {
                all.extend(permission_guards(c)?);
            }
            Some(all)
        }
        _ => None,
    }
}

/// The validated RBAC filters of an inbound HttpConnectionManager, in order.
#[derive(Debug, Default)]
pub struct Rbac {
    filters: Box<[Filter]>,
    /// Every RBAC filter instance's name in order, those that do nothing included (a route may
    /// give one rules).
    names: Box<[Arc<str>]>,
}

/// A route's `RBACPerRoute` configs: for each filter named, the rules that replace the
/// filter's on that route (none: the filter does nothing there).
#[derive(Debug)]
pub struct RbacOverrides {
    with_jwt: Rbac,
    without_jwt: Rbac,
}

impl RbacOverrides {
    /// Validates the overrides, one spec per filter name.
    pub fn new(specs: &[RbacSpec]) -> Result<Self, FieldError> {
        for (i, s) in specs.iter().enumerate() {
            if specs[..i].iter().any(|o| o.name == s.name) {
                return Err(FieldError::new(
                    format!("[{:?}]", s.name),
                    "overrides the same filter twice",
                ));
            }
        }
        Ok(Self {
            with_jwt: Rbac::with_authn(specs, true)?,
            without_jwt: Rbac::with_authn(specs, false)?,
        })
    }
}

/// What a request is judged on.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// Method, path, authority and headers.
    pub request: RouteRequest<'a>,
    /// The peer's address.
    pub source: SocketAddr,
    /// The local address.
    pub destination: SocketAddr,
    /// The peer's certificate, on a TLS connection that presented one.
    pub peer: Option<&'a LeafInfo>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The request's verified JWT, if it has one.
    pub auth: Option<&'a RequestAuth>,
}

/// An audit record (gRFC A59).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The filter.
    pub filter: Arc<str>,
    /// The policy that matched, if any.
    pub policy: Option<Arc<str>>,
    /// Whether this filter let the request through.
    pub authorized: bool,
}

/// The outcome of RBAC for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `None` when allowed; otherwise why not.
    pub denied: Option<Denied>,
    /// Records the filters' audit conditions asked for.
    pub audit: Vec<AuditRecord>,
}

/// Why a request was denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The filter that denied it.
    pub filter: Arc<str>,
    /// The DENY policy that matched (`None` for an ALLOW filter none of whose policies did).
    pub policy: Option<Arc<str>>,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "denied by policy {p:?} of {}", self.filter),
            None => write!(f, "no policy of {} allows it", self.filter),
        }
    }
}

fn string(s: &StringMatcherSpec, at: &str) -> Result<StringMatcher, FieldError> {
    StringMatcher::new(s).map_err(|e| e.within(at))
}

fn header(h: &HeaderMatcherSpec, at: &str) -> Result<HeaderMatcher, FieldError> {
    // gRPC's own headers and `:scheme` are not the application's to match on (A41).
    if h.name.starts_with("grpc-") || h.name == ":scheme" {
        return Err(FieldError::new(
            format!("{at}.name"),
            format!("matching on {:?} is not allowed", h.name),
        ));
    }
    HeaderMatcher::new(h).map_err(|e| e.within(at))
}

/// The method of a case-sensitive exact `:method` matcher.
fn exact_method(h: &HeaderMatcherSpec) -> Option<http::Method> {
    use crate::matcher::{HeaderMatchSpec, StringPattern};
    match &h.matcher {
        HeaderMatchSpec::String(StringMatcherSpec {
            pattern: StringPattern::Exact(m),
            ignore_case: false,
        }) if h.name == ":method" && !h.invert => http::Method::from_bytes(m.as_bytes()).ok(),
        _ => None,
    }
}

/// How a rule reads what it cannot evaluate (metadata; the request principal without a JWT
/// filter): in ALLOW filters as never matching, in DENY filters as matching, so that the
/// policy denies more rather than less (istiod does the same to HTTP-only fields of DENY
/// policies on TCP chains); under `not` the sense flips.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    unknown_matches: bool,
    jwt: bool,
}

impl Ctx {
    fn flip(self) -> Self {
        Self {
            unknown_matches: !self.unknown_matches,
            ..self
        }
    }
}

fn permission(p: &PermissionSpec, at: &str, ctx: Ctx) -> Result<Permission, FieldError> {
    let list = |v: &[PermissionSpec], kind: &str| -> Result<Box<[Permission]>, FieldError> {
        v.iter()
            .enumerate()
            .map(|(i, p)| permission(p, &format!("{at}.{kind}.rules[{i}]"), ctx))
            .collect()
    };
    Ok(match p {
        PermissionSpec::Any => Permission::Any,
        // istiod nests every condition in one-element sets: flattened, they cost no call.
        PermissionSpec::And(v) | PermissionSpec::Or(v) if v.len() == 1 => {
            let kind = if matches!(p, PermissionSpec::And(_)) {
                "and_rules"
            } else {
                "or_rules"
            };
            permission(&v[0], &format!("{at}.{kind}.rules[0]"), ctx)?
        }
        PermissionSpec::And(v) => Permission::And(list(v, "and_rules")?),
        PermissionSpec::Or(v) => Permission::Or(list(v, "or_rules")?),
        PermissionSpec::Not(p) => Permission::Not(Box::new(permission(
            p,
            &format!("{at}.not_rule"),
            ctx.flip(),
        )?)),
        PermissionSpec::Header(h) => match exact_method(h) {
            // istiod's `methods`: compared as a method, not as text.
            Some(m) => {
                header(h, &format!("{at}.header"))?;
                Permission::Method(m)
            }
            None => Permission::Header(header(h, &format!("{at}.header"))?),
        },
        PermissionSpec::UrlPath(s) => Permission::UrlPath(string(s, &format!("{at}.url_path"))?),
        PermissionSpec::DestinationIp(c) => Permission::DestinationIp(
            Cidr::new(c).map_err(|e| e.within(format!("{at}.destination_ip")))?,
        ),
        PermissionSpec::DestinationPort(p) => Permission::DestinationPort(*p),
        PermissionSpec::DestinationPortRange(a, b) => Permission::DestinationPortRange(*a, *b),
        PermissionSpec::Metadata if ctx.unknown_matches => Permission::Any,
        PermissionSpec::Metadata => Permission::Never,
        PermissionSpec::RequestedServerName(s) => {
            Permission::RequestedServerName(string(s, &format!("{at}.requested_server_name"))?)
        }
    })
}

fn principal(p: &PrincipalSpec, at: &str, ctx: Ctx) -> Result<Principal, FieldError> {
    let list = |v: &[PrincipalSpec], kind: &str| -> Result<Box<[Principal]>, FieldError> {
        v.iter()
            .enumerate()
            .map(|(i, p)| principal(p, &format!("{at}.{kind}.ids[{i}]"), ctx))
            .collect()
    };
    Ok(match p {
        PrincipalSpec::Any => Principal::Any,
        PrincipalSpec::And(v) | PrincipalSpec::Or(v) if v.len() == 1 => {
            let kind = if matches!(p, PrincipalSpec::And(_)) {
                "and_ids"
            } else {
                "or_ids"
            };
            principal(&v[0], &format!("{at}.{kind}.ids[0]"), ctx)?
        }
        PrincipalSpec::And(v) => Principal::And(list(v, "and_ids")?),
        PrincipalSpec::Or(v) => Principal::Or(list(v, "or_ids")?),
        PrincipalSpec::Not(p) => {
            Principal::Not(Box::new(principal(p, &format!("{at}.not_id"), ctx.flip())?))
        }
        PrincipalSpec::Authenticated(m) => Principal::Authenticated(
            m.as_ref()
                .map(|m| string(m, &format!("{at}.authenticated.principal_name")))
                .transpose()?,
        ),
        PrincipalSpec::RemoteIp(c) => {
            Principal::RemoteIp(Cidr::new(c).map_err(|e| e.within(format!("{at}.remote_ip")))?)
        }
        PrincipalSpec::Header(h) => Principal::Header(header(h, &format!("{at}.header"))?),
        PrincipalSpec::UrlPath(s) => Principal::UrlPath(string(s, &format!("{at}.url_path"))?),
        PrincipalSpec::Metadata(m) if m.is_none() || !ctx.jwt => {
            if ctx.unknown_matches {
                Principal::Any
            } else {
                Principal::Jwt(None)
            }
        }
        PrincipalSpec::Metadata(m) => Principal::Jwt(
            m.as_ref()
                .map(|(f, m)| Ok((f.clone(), string(m, &format!("{at}.metadata"))?)))
                .transpose()?,
        ),
    })
}

impl Rbac {
    /// Validates the filters of one HttpConnectionManager, in order, whose requests carry the
    /// verified JWT (if any) that RBAC's request principals read.
    pub fn new(specs: &[RbacSpec]) -> Result<Self, FieldError> {
        Self::with_authn(specs, true)
    }

    /// As [`Rbac::new`]; `jwt`: whether a JWT filter runs before these filters. Without one,
    /// request principals and claims cannot be evaluated, and are read as any metadata is.
    pub fn with_authn(specs: &[RbacSpec], jwt: bool) -> Result<Self, FieldError> {
        let mut filters = Vec::new();
        let names = specs.iter().map(|s| Arc::from(s.name.as_str())).collect();
        for s in specs {
            let Some(action) = s.action else { continue };
            if action == RbacAction::Log {
                continue;
            }
            let ctx = Ctx {
                unknown_matches: action == RbacAction::Deny,
                jwt,
            };
            let at = format!("http_filters[{:?}].rules", s.name);
            let policies = s
                .policies
                .iter()
                .map(|(name, p)| {
                    let pat = format!("{at}.policies[{name:?}]");
                    Ok(Policy {
                        name: name.as_str().into(),
                        permissions: p
                            .permissions
                            .iter()
                            .enumerate()
                            .map(|(i, x)| permission(x, &format!("{pat}.permissions[{i}]"), ctx))
                            .collect::<Result<_, FieldError>>()?,
                        principals: p
                            .principals
                            .iter()
                            .enumerate()
                            .map(|(i, x)| principal(x, &format!("{pat}.principals[{i}]"), ctx))
                            .collect::<Result<_, FieldError>>()?,
                    })
                })
                .collect::<Result<Box<[Policy]>, FieldError>>()?;
            let index = PathIndex::new(&policies);
            filters.push(Filter {
                name: s.name.as_str().into(),
                action,
                policies,
                audit: s.audit,
                index,
            });
        }
        Ok(Self {
            filters: filters.into(),
            names,
        })
    }

    /// The same filters, every one tried policy by policy (to check the index against).
    #[cfg(test)]
    fn without_index(mut self) -> Self {
        let mut filters = std::mem::take(&mut self.filters).into_vec();
        for f in &mut filters {
            f.index = None;
        }
        self.filters = filters.into();
        self
    }

    /// Whether there is nothing to evaluate.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Judges one request.
    pub fn evaluate(&self, r: &AuthzRequest<'_>) -> Verdict {
        judge(self.filters.iter(), r)
    }

    /// Judges one request on a route with `overrides`; `jwt`: whether a JWT filter ran (as for
    /// [`Rbac::with_authn`]).
    pub fn evaluate_on_route(
        &self,
        r: &AuthzRequest<'_>,
        overrides: Option<&RbacOverrides>,
        jwt: bool,
    ) -> Verdict {
        let Some(o) = overrides else {
            return self.evaluate(r);
        };
        let o = if jwt { &o.with_jwt } else { &o.without_jwt };
        let filters = self.names.iter().filter_map(|name| {
            if o.names.contains(name) {
                o.filters.iter().find(|f| f.name == *name)
            } else {
                self.filters.iter().find(|f| f.name == *name)
            }
        });
        judge(filters, r)
    }

    /// Whether any RBAC filter instance is configured, even one that does nothing (a route's
    /// override may give it rules).
    pub fn has_filters(&self) -> bool {
        !self.names.is_empty()
    }
}

/// The verdict of `filters` in order: the first that does not authorize denies.
fn judge<'f>(filters: impl Iterator<Item = &'f Filter>, r: &AuthzRequest<'_>) -> Verdict {
    let mut audit = Vec::new();
    for f in filters {
        let matched = match &f.index {
            None => f.policies.iter().find(|p| p.matches(r)),
            Some(index) => {
                // The candidates in order, so the first match is the same policy.
                let mut set = index.candidates(r.request.path());
                let mut found = None;
                while set != 0 {
                    let i = set.trailing_zeros() as usize;
                    set &= set - 1;
                    if f.policies[i].matches(r) {
                        found = Some(&f.policies[i]);
                        break;
                    }
                }
                found
            }
        };
        let authorized = match f.action {
            RbacAction::Deny => matched.is_none(),
            _ => matched.is_some(),
        };
        let record = matches!(
            (f.audit, authorized),
            (AuditCondition::OnDenyAndAllow, _)
                | (AuditCondition::OnAllow, true)
                | (AuditCondition::OnDeny, false)
        );
        if record {
            audit.push(AuditRecord {
                filter: f.name.clone(),
                policy: matched.map(|p| p.name.clone()),
                authorized,
            });
        }
        if !authorized {
            return Verdict {
                denied: Some(Denied {
                    filter: f.name.clone(),
                    policy: matched
                        .filter(|_| f.action == RbacAction::Deny)
                        .map(|p| p.name.clone()),
                }),
                audit,
            };
        }
    }
    Verdict {
        denied: None,
        audit,
    }
}

impl Policy {
    fn matches(&self, r: &AuthzRequest<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(r))
            && self.principals.iter().any(|p| p.matches(r))
    }
}

impl Permission {
    fn matches(&self, r: &AuthzRequest<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(v) => v.iter().all(|p| p.matches(r)),
            Self::Or(v) => v.iter().any(|p| p.matches(r)),
            Self::Not(p) => !p.matches(r),
            Self::Header(h) => h.matches(&r.request),
            Self::Method(m) => r.request.method() == m,
            Self::UrlPath(m) => m.matches(r.request.path()),
            Self::DestinationIp(c) => c.contains(r.destination.ip()),
            Self::DestinationPort(p) => u32::from(r.destination.port()) == *p,
            Self::DestinationPortRange(a, b) => (*a..*b).contains(&u32::from(r.destination.port())),
            Self::Never => false,
            Self::RequestedServerName(m) => m.matches(""),
        }
    }
}

impl Principal {
    fn matches(&self, r: &AuthzRequest<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(v) => v.iter().all(|p| p.matches(r)),
            Self::Or(v) => v.iter().any(|p| p.matches(r)),
            Self::Not(p) => !p.matches(r),
            Self::Authenticated(None) => r.tls,
            Self::Authenticated(Some(m)) => match r.peer {
                // A41: the URI SANs, else the DNS SANs, else the subject.
                Some(leaf) if !leaf.sans.uri.is_empty() => {
                    leaf.sans.uri.iter().any(|u| m.matches(u))
                }
                Some(leaf) if !leaf.sans.dns.is_empty() => {
                    leaf.sans.dns.iter().any(|d| m.matches(d))
                }
                Some(leaf) => m.matches(&leaf.subject),
                None => m.matches(""),
            },
            Self::RemoteIp(c) => c.contains(r.source.ip()),
            Self::Header(h) => h.matches(&r.request),
            Self::UrlPath(m) => m.matches(r.request.path()),
            Self::Jwt(None) => false,
            Self::Jwt(Some((field, m))) => r
                .auth
                .is_some_and(|a| a.values(field).iter().any(|v| m.matches(v))),
        }
    }
}

#[cfg(test)]
mod tests;
