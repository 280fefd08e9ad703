//! Server (inbound) listeners, gRFC A36 as istiod sends them: where a mesh server listens, and
//! per connection the filter chain that serves it (TLS or not, its routes, its RBAC).
//!
//! Chain selection follows Envoy's most-specific order (destination port, destination prefix,
//! server names, transport protocol, application protocols, source type, source prefix, source
//! ports). mesh knows whether a connection opened with a TLS ClientHello, so
//! `transport_protocol: tls` matches TLS connections and `raw_buffer` plaintext ones (gRPC
//! matches only `raw_buffer`); `server_names` and `application_protocols` never match, as in
//! gRPC. A chain without TLS still accepts a TLS connection when no chain asks for TLS: that is
//! how istiod writes PERMISSIVE (a plaintext chain), and how a sidecar treats it (both).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::error::{ConfigError, FieldError, ResourceKind};
use crate::jwt::{JwtAuthn, JwtAuthnSpec};
use crate::listener::{RouteSource, RouteSourceSpec};
use crate::rbac::{Cidr, CidrSpec, Rbac, RbacSpec};
use crate::route::RouteConfig;

/// An unvalidated `DownstreamTlsContext`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DownstreamTlsSpec {
    /// The certificate-provider instance of the server's identity (required).
    pub identity_provider: Option<String>,
    /// The instance of the roots client certificates are verified against.
    pub root_provider: Option<String>,
    /// Whether a client certificate is required (STRICT).
    pub require_client_certificate: bool,
}

/// A validated `DownstreamTlsContext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamTls {
    /// The identity's instance.
    pub identity_provider: Arc<str>,
    /// The roots' instance; `None` means plain TLS (no client certificate asked for).
    pub root_provider: Option<Arc<str>>,
    /// Whether a client certificate is required.
    pub require_client_certificate: bool,
}

/// An unvalidated `FilterChainMatch`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChainMatchSpec {
    /// `destination_port`.
    pub destination_port: Option<u32>,
    /// `prefix_ranges` (destination).
    pub prefix_ranges: Vec<CidrSpec>,
    /// `server_names` (never match).
    pub server_names: Vec<String>,
    /// `transport_protocol`: `""`, `raw_buffer` or `tls`.
    pub transport_protocol: String,
    /// `application_protocols` (never match).
    pub application_protocols: Vec<String>,
    /// `source_type`: 0 any, 1 same IP or loopback, 2 external.
    pub source_type: i32,
    /// `source_prefix_ranges`.
    pub source_prefix_ranges: Vec<CidrSpec>,
    /// `source_ports`.
    pub source_ports: Vec<u32>,
}

/// An unvalidated filter chain: its match, TLS and HttpConnectionManager.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterChainSpec {
    /// Name (istiod: `inbound-mtls` or `inbound-plaintext`).
    pub name: String,
    /// When it applies.
    pub matcher: FilterChainMatchSpec,
    /// TLS, or plaintext.
    pub tls: Option<DownstreamTlsSpec>,
    /// The routes (inline for istiod).
    pub routes: Option<RouteSourceSpec>,
    /// The JWT filter (it runs before the RBAC filters).
    pub jwt: Option<JwtAuthnSpec>,
    /// The RBAC filters, in order.
    pub rbac: Vec<RbacSpec>,
}

/// An unvalidated server listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerListenerSpec {
    /// Name (`xds.istio.io/grpc/lds/inbound/IP:PORT`).
    pub name: String,
    /// Where it listens; a server whose address differs is not serving (A36).
    pub address: Option<SocketAddr>,
    /// Filter chains.
    pub chains: Vec<FilterChainSpec>,
    /// `default_filter_chain`.
    pub default_chain: Option<FilterChainSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainMatch {
    destination_port: Option<u16>,
    prefix_ranges: Box<[Cidr]>,
    never: bool,
    transport: Transport,
    source_type: i32,
    source_prefix_ranges: Box<[Cidr]>,
    source_ports: Box<[u16]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Any,
    Plain,
    Tls,
}

/// A validated filter chain.
#[derive(Debug)]
pub struct FilterChain {
    name: Arc<str>,
    matcher: ChainMatch,
    tls: Option<DownstreamTls>,
    routes: RouteSource,
    jwt: Option<JwtAuthn>,
    rbac: Rbac,
}

impl FilterChain {
    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its TLS; `None` is plaintext.
    pub fn tls(&self) -> Option<&DownstreamTls> {
        self.tls.as_ref()
    }

    /// Its routes.
    pub fn routes(&self) -> &RouteSource {
        &self.routes
    }

    /// Its JWT filter.
    pub fn jwt(&self) -> Option<&JwtAuthn> {
        self.jwt.as_ref()
    }

    /// Its RBAC filters.
    pub fn rbac(&self) -> &Rbac {
        &self.rbac
    }

    /// Whether the chain asks for TLS in its match (`transport_protocol: tls`).
    fn wants_tls(&self) -> bool {
        self.matcher.transport == Transport::Tls
    }
}

/// What a connection is, for chain selection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionFacts {
    /// The local address.
    pub local: SocketAddr,
    /// The peer.
    pub peer: SocketAddr,
    /// Whether it opened with a TLS ClientHello.
    pub tls: bool,
}

/// A validated server listener.
#[derive(Debug)]
pub struct ServerListener {
    name: Arc<str>,
    address: Option<SocketAddr>,
    chains: Box<[Arc<FilterChain>]>,
    default_chain: Option<Arc<FilterChain>>,
}

fn cidrs(v: &[CidrSpec], at: &str) -> Result<Box<[Cidr]>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, c)| Cidr::new(c).map_err(|e| e.within(format!("{at}[{i}]"))))
        .collect()
}

fn port(p: u32, at: &str) -> Result<u16, FieldError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| FieldError::new(at, format!("{p} is not a port")))
}

fn chain(spec: &FilterChainSpec, at: &str) -> Result<FilterChain, FieldError> {
    let m = &spec.matcher;
    let transport = match m.transport_protocol.as_str() {
        "" => Transport::Any,
        "raw_buffer" => Transport::Plain,
        "tls" => Transport::Tls,
        other => {
            return Err(FieldError::new(
                format!("{at}.filter_chain_match.transport_protocol"),
                format!("{other:?} is not raw_buffer or tls"),
            ));
        }
    };
    let matcher = ChainMatch {
        destination_port: m
            .destination_port
            .map(|p| port(p, &format!("{at}.filter_chain_match.destination_port")))
            .transpose()?,
        prefix_ranges: cidrs(
            &m.prefix_ranges,
            &format!("{at}.filter_chain_match.prefix_ranges"),
        )?,
        never: !m.server_names.is_empty() || !m.application_protocols.is_empty(),
        transport,
        source_type: m.source_type,
        source_prefix_ranges: cidrs(
            &m.source_prefix_ranges,
            &format!("{at}.filter_chain_match.source_prefix_ranges"),
        )?,
        source_ports: m
            .source_ports
            .iter()
            .map(|p| port(*p, &format!("{at}.filter_chain_match.source_ports")))
            .collect::<Result<_, _>>()?,
    };
    let tls = spec
        .tls
        .as_ref()
        .map(|t| {
            let identity = t.identity_provider.as_deref().ok_or_else(|| {
                FieldError::new(
                    format!(
                        "{at}.transport_socket.common_tls_context.tls_certificate_provider_instance"
                    ),
                    "is required",
                )
            })?;
            if t.require_client_certificate && t.root_provider.is_none() {
                return Err(FieldError::new(
                    format!("{at}.transport_socket.require_client_certificate"),
                    "needs a validation context",
                ));
            }
            Ok(DownstreamTls {
                identity_provider: identity.into(),
                root_provider: t.root_provider.as_deref().map(Into::into),
                require_client_certificate: t.require_client_certificate,
            })
        })
        .transpose()?;
    let routes = match &spec.routes {
        Some(RouteSourceSpec::Rds(n)) if !n.is_empty() => RouteSource::Rds(n.as_str().into()),
        Some(RouteSourceSpec::Inline(rc)) => {
            RouteSource::Inline(Arc::new(RouteConfig::new(rc).map_err(|e| {
                FieldError::new(format!("{at}.route_config.{}", e.field), e.reason)
            })?))
        }
        _ => {
            return Err(FieldError::new(
                format!("{at}.filters"),
                "need an HttpConnectionManager with routes",
            ));
        }
    };
    let jwt = spec
        .jwt
        .as_ref()
        .map(|j| JwtAuthn::new(j).map_err(|e| e.within(format!("{at}.jwt_authn"))))
        .transpose()?;
    let rbac = Rbac::with_authn(&spec.rbac, jwt.is_some()).map_err(|e| e.within(at))?;
    Ok(FilterChain {
        name: spec.name.as_str().into(),
        matcher,
        tls,
        routes,
        jwt,
        rbac,
    })
}

impl ServerListener {
    /// Validates a spec (A36): every chain valid, no two chains with the same match.
    pub fn new(spec: &ServerListenerSpec) -> Result<Self, ConfigError> {
        crate::matcher::with_regex_budget(|| Self::validate(spec))
    }

    fn validate(spec: &ServerListenerSpec) -> Result<Self, ConfigError> {
        let err = |e: FieldError| e.resource(ResourceKind::Listener, &spec.name);
        let mut chains: Vec<Arc<FilterChain>> = Vec::new();
        for (i, c) in spec.chains.iter().enumerate() {
            let at = format!("filter_chains[{i}]");
            let built = chain(c, &at).map_err(err)?;
            if let Some(j) = chains.iter().position(|o| o.matcher == built.matcher) {
                return Err(err(FieldError::new(
                    at,
                    format!("has the same filter_chain_match as filter_chains[{j}]"),
                )));
            }
            chains.push(Arc::new(built));
        }
        let default_chain = spec
            .default_chain
            .as_ref()
            .map(|c| chain(c, "default_filter_chain").map(Arc::new))
            .transpose()
            .map_err(err)?;
        Ok(Self {
            name: spec.name.as_str().into(),
            address: spec.address,
            chains: chains.into(),
            default_chain,
        })
    }

    /// The name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Where it says the server listens.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// The chains, in order.
    pub fn chains(&self) -> &[Arc<FilterChain>] {
        &self.chains
    }

    /// The chain that serves a connection: the most specific match, else the default chain;
    /// `None` closes the connection without a byte. A TLS connection that no chain matches
    /// by `transport_protocol: tls` may be served by a plaintext-matching chain (PERMISSIVE):
    /// see the module docs.
    pub fn select(&self, conn: &ConnectionFacts) -> Option<&Arc<FilterChain>> {
        let best = |tls: bool| {
            self.chains
                .iter()
                .filter_map(|c| c.matcher.specificity(conn, tls).map(|s| (s, c)))
                .max_by(|a, b| a.0.cmp(&b.0))
                .map(|(_, c)| c)
        };
        let chosen = best(conn.tls).or(self.default_chain.as_ref());
        match chosen {
            Some(c) => Some(c),
            // No chain for TLS: serve it as the plaintext one would be (PERMISSIVE), unless a
            // chain insists on TLS, in which case TLS is not what is missing.
            None if conn.tls && !self.chains.iter().any(|c| c.wants_tls()) => best(false),
            None => None,
        }
    }

    /// The route configuration names its chains fetch over RDS.
    pub fn rds_names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.chains
            .iter()
            .chain(self.default_chain.iter())
            .filter_map(|c| match &c.routes {
                RouteSource::Rds(n) => Some(n),
                RouteSource::Inline(_) => None,
            })
    }
}

fn is_local(ip: IpAddr, local: IpAddr) -> bool {
    ip == local || ip.is_loopback()
}

impl ChainMatch {
    /// `None` when the chain does not match; otherwise its specificity, compared in Envoy's
    /// order (higher is more specific).
    fn specificity(&self, conn: &ConnectionFacts, tls: bool) -> Option<[u32; 6]> {
        if self.never {
            return None;
        }
        let dport = match self.destination_port {
            None => 0,
            Some(p) if p == conn.local.port() => 1,
            Some(_) => return None,
        };
        let longest = |ranges: &[Cidr], ip: IpAddr| -> Option<u32> {
            if ranges.is_empty() {
                return Some(0);
            }
            ranges
                .iter()
                .filter(|c| c.contains(ip))
                .map(|c| u32::from(c.prefix_len()) + 1)
                .max()
        };
        let dprefix = longest(&self.prefix_ranges, conn.local.ip())?;
        let transport = match (self.transport, tls) {
            (Transport::Any, _) => 0,
            (Transport::Plain, false) | (Transport::Tls, true) => 1,
            _ => return None,
        };
        let source_type = match self.source_type {
            0 => 0,
            1 if is_local(conn.peer.ip(), conn.local.ip()) => 1,
            2 if !is_local(conn.peer.ip(), conn.local.ip()) => 1,
            _ => return None,
        };
        let sprefix = longest(&self.source_prefix_ranges, conn.peer.ip())?;
        let sports = match self.source_ports.is_empty() {
            true => 0,
            false if self.source_ports.contains(&conn.peer.port()) => 1,
            false => return None,
        };
        Some([dport, dprefix, transport, source_type, sprefix, sports])
    }
}

#[cfg(test)]
mod tests;
