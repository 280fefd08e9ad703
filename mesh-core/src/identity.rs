//! Workload identity: the certificates each certificate-provider instance currently holds, as
//! the xDS client publishes them and the connectors (and servers) read them, and the SAN check
//! a client applies to the peer it reached (gRFC A29).
//!
//! Everything here is already validated: a [`WorkloadCert`]'s key matches its leaf, and the
//! leaf's fields were read when it was loaded, so that a handshake reads them without parsing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster::UpstreamTls;

/// Why a certificate could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// A chain with no certificate.
    #[error("the certificate chain is empty")]
    EmptyChain,
    /// A certificate that is not X.509 DER.
    #[error("not an X.509 certificate: {0}")]
    Malformed(String),
}

/// What a leaf certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Its subject alternative names.
    pub sans: SubjectAltNames,
    /// Its subject, as text (for RBAC's fallback when it has no SANs).
    pub subject: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it becomes valid.
    pub not_before: SystemTime,
    /// When it expires.
    pub not_after: SystemTime,
}

impl LeafInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let malformed = |e: &dyn fmt::Display| CertError::Malformed(e.to_string());
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| malformed(&e))?;
        let mut sans = SubjectAltNames::default();
        if let Some(ext) = cert.subject_alternative_name().map_err(|e| malformed(&e))? {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.dns.push(d.to_string()),
                    GeneralName::URI(u) => sans.uri.push(u.to_string()),
                    GeneralName::RFC822Name(e) => sans.email.push(e.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            sans.ip.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            sans.ip.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let time = |t: i64| {
            let secs = t.unsigned_abs();
            if t >= 0 {
                SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
            } else {
                SystemTime::UNIX_EPOCH.checked_sub(std::time::Duration::from_secs(secs))
            }
            .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        let validity = cert.validity();
        Ok(Self {
            sans,
            subject: cert.subject().to_string(),
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
        })
    }
}

/// A workload's certificate chain (leaf first) and private key, with what was read from the
/// leaf. `Debug` never prints the key.
pub struct WorkloadCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    spiffe_id: Option<Box<str>>,
    serial: Box<str>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl WorkloadCert {
    /// A certificate from its chain (leaf first) and key, with the leaf's fields read. The
    /// caller checks that the key belongs to the leaf (that needs a crypto provider; the xDS
    /// client's loaders do it).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::EmptyChain)?;
        let info = LeafInfo::parse(leaf)?;
        Ok(Self {
            spiffe_id: info.sans.spiffe_id().map(Into::into),
            serial: info.serial.into(),
            not_before: info.not_before,
            not_after: info.not_after,
            chain,
            key,
        })
    }

    /// The chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The leaf's SPIFFE ID (`spiffe://TRUST_DOMAIN/ns/NS/sa/SA`), if it has one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.spiffe_id.as_deref()
    }

    /// The leaf's serial number, hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// When the leaf becomes valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Whether the leaf is valid at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

impl fmt::Debug for WorkloadCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCert")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Trusted root certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoots {
    certs: Vec<CertificateDer<'static>>,
}

impl TrustRoots {
    /// Roots from DER certificates (the caller checked each parses).
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        Self { certs }
    }

    /// The roots.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }
}

/// What one certificate-provider instance holds now.
#[derive(Debug, Clone, Default)]
pub struct ProviderCerts {
    /// The identity, once one has been loaded.
    pub identity: Option<Arc<WorkloadCert>>,
    /// The roots, once loaded.
    pub roots: Option<Arc<TrustRoots>>,
    /// The last load or renewal error, kept while the last good certificates stay in use.
    pub last_error: Option<String>,
}

/// Every certificate-provider instance's certificates, published as one value: a change to
/// any instance publishes a new `Certificates` with a higher generation.
#[derive(Debug, Clone, Default)]
pub struct Certificates {
    generation: u64,
    providers: BTreeMap<Box<str>, ProviderCerts>,
}

impl WorkloadCert {
    /// The chain's leaf (a chain is never empty).
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }
}

impl Certificates {
    /// No instance has anything yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts publications, so that a reader can tell whether what it built from an older
    /// value is stale.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// One instance's certificates.
    pub fn provider(&self, name: &str) -> Option<&ProviderCerts> {
        self.providers.get(name)
    }

    /// Every instance, by name.
    pub fn providers(&self) -> impl Iterator<Item = (&str, &ProviderCerts)> {
        self.providers.iter().map(|(k, v)| (&**k, v))
    }

    /// A copy with `name`'s entry replaced and the generation advanced.
    pub fn with(&self, name: &str, certs: ProviderCerts) -> Self {
        let mut next = self.clone();
        next.generation = self.generation.wrapping_add(1);
        next.providers.insert(name.into(), certs);
        next
    }
}

/// The subject alternative names of a peer's leaf certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectAltNames {
    /// DNS names.
    pub dns: Vec<String>,
    /// URIs (SPIFFE IDs are URIs).
    pub uri: Vec<String>,
    /// Email addresses.
    pub email: Vec<String>,
    /// IP addresses.
    pub ip: Vec<IpAddr>,
}

impl SubjectAltNames {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.dns.is_empty() && self.uri.is_empty() && self.email.is_empty() && self.ip.is_empty()
    }

    /// The single SPIFFE ID among the URIs (`None` for none or several, as SPIFFE requires
    /// exactly one).
    pub fn spiffe_id(&self) -> Option<&str> {
        let mut ids = self.uri.iter().filter(|u| u.starts_with("spiffe://"));
        match (ids.next(), ids.next()) {
            (Some(id), None) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for SubjectAltNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut put = |f: &mut fmt::Formatter<'_>, kind: &str, v: &dyn fmt::Display| {
            let sep = if first { "" } else { ", " };
            first = false;
            write!(f, "{sep}{kind}:{v}")
        };
        for d in &self.dns {
            put(f, "DNS", d)?;
        }
        for u in &self.uri {
            put(f, "URI", u)?;
        }
        for e in &self.email {
            put(f, "email", e)?;
        }
        for i in &self.ip {
            put(f, "IP", i)?;
        }
        if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl UpstreamTls {
    /// Whether a peer presenting `sans` is accepted (gRFC A29): no matchers accept any peer
    /// whose chain verified; otherwise some non-empty SAN must match some matcher, where an
    /// exact matcher also accepts a DNS SAN that is a wildcard (`*.example.com`) over it, and
    /// IP SANs are compared in their canonical form.
    pub fn accepts(&self, sans: &SubjectAltNames) -> bool {
        if self.san_matchers.is_empty() {
            return true;
        }
        self.san_matchers.iter().any(|m| {
            let exact = m.exact();
            sans.dns.iter().any(|d| {
                !d.is_empty()
                    && (m.matches(d) || exact.is_some_and(|(want, _)| dns_wildcard_covers(d, want)))
            }) || sans.uri.iter().any(|u| !u.is_empty() && m.matches(u))
                || sans.email.iter().any(|e| !e.is_empty() && m.matches(e))
                || sans.ip.iter().any(|ip| {
                    m.matches(&ip.to_string())
                        || exact.is_some_and(|(want, _)| want.parse::<IpAddr>() == Ok(*ip))
                })
        })
    }
}

/// Whether a wildcard DNS SAN (`*.example.com`) covers `name`: one whole left-most label, over
/// a suffix of at least two labels (`*.com` covers nothing).
fn dns_wildcard_covers(san: &str, name: &str) -> bool {
    let Some(suffix) = san.strip_prefix("*.") else {
        return false;
    };
    let Some((label, rest)) = name.split_once('.') else {
        return false;
    };
    !label.is_empty() && suffix.contains('.') && rest.eq_ignore_ascii_case(suffix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matcher::{StringMatcherSpec, StringPattern};
    use crate::{Cluster, ClusterSpec, UpstreamTlsSpec};

    fn tls(matchers: Vec<StringMatcherSpec>) -> UpstreamTls {
        let c = Cluster::new(&ClusterSpec {
            name: "c".into(),
            tls: Some(UpstreamTlsSpec {
                san_matchers: matchers,
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        c.tls().unwrap().clone()
    }

    fn m(p: StringPattern) -> StringMatcherSpec {
        StringMatcherSpec {
            pattern: p,
            ignore_case: false,
        }
    }

    #[test]
    fn san_rules_of_a29() {
        let exact = tls(vec![m(StringPattern::Exact(
            "spiffe://cluster.local/ns/a/sa/b".into(),
        ))]);
        let uri = |u: &str| SubjectAltNames {
            uri: vec![u.into()],
            ..Default::default()
        };
        assert!(exact.accepts(&uri("spiffe://cluster.local/ns/a/sa/b")));
        assert!(!exact.accepts(&uri("spiffe://cluster.local/ns/a/sa/c")));
        assert!(!exact.accepts(&SubjectAltNames::default()));
        // No matchers: any verified peer.
        assert!(tls(vec![]).accepts(&SubjectAltNames::default()));

        let host = tls(vec![m(StringPattern::Exact("foo.example.com".into()))]);
        let dns = |d: &str| SubjectAltNames {
            dns: vec![d.into()],
            ..Default::default()
        };
        assert!(host.accepts(&dns("*.example.com")));
        assert!(host.accepts(&dns("*.EXAMPLE.com")));
        assert!(!host.accepts(&dns("*.foo.example.com")));
        assert!(!host.accepts(&dns("*.com.evil")));
        assert!(!tls(vec![m(StringPattern::Exact("example.com".into()))]).accepts(&dns("*.com")));

        let ip = tls(vec![m(StringPattern::Exact("2001:DB8:0:0::1".into()))]);
        let v6 = SubjectAltNames {
            ip: vec!["2001:db8::1".parse().unwrap()],
            ..Default::default()
        };
        assert!(ip.accepts(&v6));
        let canon = tls(vec![m(StringPattern::Prefix("2001:db8::".into()))]);
        assert!(canon.accepts(&v6));

        let mail = tls(vec![StringMatcherSpec {
            pattern: StringPattern::Suffix("@EXAMPLE.COM".into()),
            ignore_case: true,
        }]);
        assert!(mail.accepts(&SubjectAltNames {
            email: vec!["ops@example.com".into()],
            ..Default::default()
        }));
        // An empty SAN never matches, even a matcher that would accept "".
        let any = tls(vec![m(StringPattern::Regex(".*".into()))]);
        assert!(!any.accepts(&uri("")));
    }

    #[test]
    fn leaf_fields_are_read() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://td/ns/a/sa/b".try_into().unwrap(),
        ));
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("10.0.0.1".parse().unwrap()));
        params.serial_number = Some(vec![0x0a, 0xbc].into());
        params.not_before = rcgen::date_time_ymd(2030, 1, 2);
        params.not_after = rcgen::date_time_ymd(2030, 1, 3);
        let cert = params.self_signed(&key).unwrap();
        let info = LeafInfo::parse(cert.der()).unwrap();
        assert_eq!(info.sans.dns, ["a.example"]);
        assert_eq!(info.sans.spiffe_id(), Some("spiffe://td/ns/a/sa/b"));
        assert_eq!(info.sans.ip, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(info.serial, "0abc");
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(info.not_after.duration_since(info.not_before).unwrap(), day);
        assert_eq!(
            LeafInfo::parse(b"nope").unwrap_err().to_string(),
            "not an X.509 certificate: Parsing Error: NomError(Eof)"
        );
    }

    #[test]
    fn one_spiffe_id_or_none() {
        let mut s = SubjectAltNames {
            uri: vec!["https://x".into(), "spiffe://td/ns/a/sa/b".into()],
            ..Default::default()
        };
        assert_eq!(s.spiffe_id(), Some("spiffe://td/ns/a/sa/b"));
        s.uri.push("spiffe://td/ns/a/sa/c".into());
        assert_eq!(s.spiffe_id(), None);
        assert_eq!(
            s.to_string(),
            "URI:https://x, URI:spiffe://td/ns/a/sa/b, URI:spiffe://td/ns/a/sa/c"
        );
    }
}
