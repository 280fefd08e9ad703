//! JWT authentication: Envoy's `jwt_authn` filter, in the shape istiod writes for
//! RequestAuthentication (providers `origins-N`, one rule for `/` that requires any provider or
//! allows a missing token).
//!
//! What a request carries is judged as Envoy judges it: a token that fails every provider is
//! rejected (401) with Envoy's reason; a request without a token passes when the requirement
//! allows it, without an identity; a valid token gives the request principal `ISS/SUB`, its
//! audiences, presenter and claims, which RBAC's `requestPrincipals` and `request.auth.claims`
//! conditions read. Key sets are either inline or fetched by the stack (this module does no I/O:
//! it says when a fetch would help).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderName;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::error::FieldError;
use crate::request::RouteRequest;
use crate::route::{RouteMatch, RouteMatchSpec};

type FieldResult<T> = Result<T, FieldError>;

/// The default remote key set refresh (Envoy's `cache_duration`).
pub const DEFAULT_JWKS_CACHE: Duration = Duration::from_secs(600);
/// The default remote key set fetch timeout (Istio's `timeout`).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// Envoy's default clock skew allowance.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u32 = 60;
/// A longer token is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSpec {
    /// `local_jwks.inline_string`: a JWKS document.
    Inline(String),
    /// `remote_jwks`: fetched from `uri`, refreshed every `cache_duration`.
    Remote {
        /// The JWKS URI (http or https).
        uri: String,
        /// The fetch timeout.
        timeout: Duration,
        /// How long a fetched key set is used before it is fetched again.
        cache_duration: Duration,
    },
}

/// A header a token is read from, after a prefix (`Authorization`, `Bearer `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeaderSpec {
    /// The header name.
    pub name: String,
    /// What precedes the token in the value.
    pub value_prefix: String,
}

/// An unvalidated `JwtProvider`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtProviderSpec {
    /// The `iss` a token must have (empty: any).
    pub issuer: String,
    /// Audiences of which a token must name one (empty: no check).
    pub audiences: Vec<String>,
    /// The key set.
    pub jwks: Option<JwksSpec>,
    /// Headers tokens are read from.
    pub from_headers: Vec<JwtHeaderSpec>,
    /// Query parameters tokens are read from.
    pub from_params: Vec<String>,
    /// Cookies tokens are read from.
    pub from_cookies: Vec<String>,
    /// Whether the token stays in the request after verification.
    pub forward: bool,
    /// A header the verified payload (base64url) is written to.
    pub forward_payload_header: String,
    /// Headers verified claims are copied to: (header, claim).
    pub claim_to_headers: Vec<(String, String)>,
    /// Allowed clock skew for `exp` and `nbf`.
    pub clock_skew_seconds: u32,
    /// Whether a token without `exp` is refused.
    pub require_expiration: bool,
}

/// An unvalidated `JwtRequirement`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequirementSpec {
    /// A valid token of this provider.
    Provider(String),
    /// A valid token of this provider, with one of these audiences instead of its own.
    ProviderWithAudiences(String, Vec<String>),
    /// Any of these.
    Any(Vec<RequirementSpec>),
    /// All of these.
    All(Vec<RequirementSpec>),
    /// No token, or a valid one.
    AllowMissing,
    /// Anything; a valid token still gives an identity.
    AllowMissingOrFailed,
}

/// An unvalidated `RequirementRule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRuleSpec {
    /// Which requests it covers.
    pub matcher: RouteMatchSpec,
    /// What they need; `None`: nothing.
    pub requires: Option<RequirementSpec>,
}

/// An unvalidated `JwtAuthentication` filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwtAuthnSpec {
    /// The filter instance name.
    pub name: String,
    /// Providers by name.
    pub providers: Vec<(String, JwtProviderSpec)>,
    /// Rules, the first matching one applies.
    pub rules: Vec<JwtRuleSpec>,
    /// Whether CORS preflight requests skip authentication.
    pub bypass_cors_preflight: bool,
}

/// Why a token (or its absence) was refused: Envoy's wording, which the 401 carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No token where the requirement needs one.
    #[error("Jwt is missing")]
    Missing,
    /// Not three base64url parts.
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    /// A token over [`MAX_TOKEN_BYTES`].
    #[error("Jwt is too long")]
    TooLong,
    /// The header is not base64url JSON with an `alg`.
    #[error("Jwt header is an invalid JSON")]
    BadHeader,
    /// `alg` is not one mesh verifies.
    #[error("Jwt header [alg] is not supported")]
    UnsupportedAlg,
    /// The payload is not base64url JSON.
    #[error("Jwt payload is an invalid JSON")]
    BadPayload,
    /// `iss` names no provider that reads this token's location.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// `exp` is past (beyond the clock skew).
    #[error("Jwt is expired")]
    Expired,
    /// `nbf` is ahead (beyond the clock skew).
    #[error("Jwt not yet valid")]
    NotYetValid,
    /// No `exp`, and the provider requires one.
    #[error("Jwt doesn't have expiration time")]
    NoExpiration,
    /// No audience the provider accepts.
    #[error("Audiences in Jwt are not allowed")]
    Audience,
    /// No key of the set has the token's `kid` and `alg`.
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    NoMatchingKey(Option<Arc<str>>),
    /// The signature does not verify.
    #[error("Jwt verification fails")]
    Signature,
    /// The provider's remote key set has not been fetched.
    #[error("Jwks remote fetch is failed")]
    KeysUnavailable(Arc<str>),
}

impl JwtError {
    /// The remote key set whose (re)fetch could change the outcome, if any.
    pub fn refetch(&self) -> Option<&Arc<str>> {
        match self {
            Self::NoMatchingKey(uri) => uri.as_ref(),
            Self::KeysUnavailable(uri) => Some(uri),
            _ => None,
        }
    }
}

/// One verification key of a set.
struct Key {
    kid: Option<String>,
    /// The algorithms the key can verify (from its type and curve, narrowed by its `alg`).
    algs: &'static [Algorithm],
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// A parsed key set (JWKS).
pub struct Jwks {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")))
            .finish()
    }
}

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl Jwks {
    /// Parses a JWKS document. Keys mesh cannot use (encryption keys, P-521, unknown types) are
    /// skipped; a document with no usable key is an error, as is one that is not a JWKS.
    pub fn parse(json: &str) -> Result<Self, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| format!("is not JSON: {e}"))?;
        let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
            return Err("has no \"keys\" array".into());
        };
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match Self::key(k) {
                Ok(key) => out.push(key),
                Err(why) => skipped.push(format!("keys[{i}] {why}")),
            }
        }
        if out.is_empty() {
            return Err(if skipped.is_empty() {
                "has no keys".into()
            } else {
                format!("has no usable key ({})", skipped.join("; "))
            });
        }
        Ok(Self { keys: out })
    }

    fn key(k: &Value) -> Result<Key, String> {
        let jwk: Jwk =
            serde_json::from_value(k.clone()).map_err(|e| format!("is not a JWK: {e}"))?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            return Err("is an encryption key".into());
        }
        let algs: &'static [Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => RSA_ALGS,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => return Err("has an unsupported curve".into()),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
                _ => return Err("has an unsupported curve".into()),
            },
            AlgorithmParameters::OctetKey(_) => HMAC_ALGS,
        };
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => {
                let a: Algorithm = a
                    .to_string()
                    .parse()
                    .map_err(|_| format!("has an unsupported alg {a}"))?;
                if !algs.contains(&a) {
                    return Err(format!("has alg {a:?}, which its key type cannot verify"));
                }
                Some(a)
            }
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("is not a valid key: {e}"))?;
        Ok(Key {
            kid: jwk.common.key_id,
            algs,
            alg,
            key,
        })
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys a token with this header may be verified with: by `kid` when it has one, else
    /// every key of its algorithm.
    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg.map_or(k.algs.contains(&alg), |a| a == alg)
                && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }
}

/// Where a provider's keys are.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Inline, parsed with the configuration.
    Inline(Arc<Jwks>),
    /// Fetched by the stack.
    Remote(RemoteJwks),
}

/// A remote key set: what the stack fetches and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The URI.
    pub uri: Arc<str>,
    /// The fetch timeout.
    pub timeout: Duration,
    /// The refresh period.
    pub cache_duration: Duration,
}

/// Where a token is read from.
#[derive(Debug, Clone)]
enum Location {
    Header(HeaderName, Box<str>),
    Param(Box<str>),
    Cookie(Box<str>),
}

/// A validated provider.
#[derive(Debug)]
pub struct JwtProvider {
    name: Arc<str>,
    issuer: Box<str>,
    audiences: Box<[Box<str>]>,
    keys: KeySource,
    locations: Box<[Location]>,
    forward: bool,
    forward_payload_header: Option<HeaderName>,
    claim_to_headers: Box<[(HeaderName, Box<str>)]>,
    clock_skew: u64,
    require_expiration: bool,
    /// Tokens this provider verified, so a caller's next request with the same token costs a
    /// lookup and a time check instead of a signature check (Envoy's `jwt_cache_config`).
    verified: Mutex<HashMap<Box<str>, Remembered>>,
}

/// A verified token, and the remote key set it was verified with (a refetched set verifies
/// again, so a key withdrawn by the issuer stops being honoured).
#[derive(Debug, Clone)]
struct Remembered {
    auth: Arc<RequestAuth>,
    keys: Option<Arc<Jwks>>,
}

/// How many verified tokens a provider remembers (Envoy's default `jwt_cache_size`).
pub const VERIFIED_TOKEN_CACHE: usize = 100;

impl JwtProvider {
    fn new(name: &str, spec: &JwtProviderSpec) -> FieldResult<Self> {
        let header = |n: &str, at: String| {
            HeaderName::try_from(n.to_ascii_lowercase())
                .map_err(|_| FieldError::new(at, format!("{n:?} is not a header name")))
        };
        let keys = match &spec.jwks {
            None => return Err(FieldError::new("jwks_source_specifier", "is required")),
            Some(JwksSpec::Inline(json)) => KeySource::Inline(Arc::new(
                Jwks::parse(json).map_err(|e| FieldError::new("local_jwks.inline_string", e))?,
            )),
            Some(JwksSpec::Remote {
                uri,
                timeout,
                cache_duration,
            }) => {
                let lower = uri.to_ascii_lowercase();
                if !(lower.starts_with("http://") || lower.starts_with("https://"))
                    || uri
                        .parse::<http::Uri>()
                        .map_or(true, |u| u.host().is_none())
                {
                    return Err(FieldError::new(
                        "remote_jwks.http_uri.uri",
                        format!("{uri:?} is not an http or https URI"),
                    ));
                }
                KeySource::Remote(RemoteJwks {
                    uri: uri.as_str().into(),
                    timeout: if timeout.is_zero() {
                        DEFAULT_JWKS_TIMEOUT
                    } else {
                        *timeout
                    },
                    cache_duration: if cache_duration.is_zero() {
                        DEFAULT_JWKS_CACHE
                    } else {
                        *cache_duration
                    },
                })
            }
        };
        let mut locations = Vec::new();
        for (i, h) in spec.from_headers.iter().enumerate() {
            locations.push(Location::Header(
                header(&h.name, format!("from_headers[{i}].name"))?,
                h.value_prefix.as_str().into(),
            ));
        }
        locations.extend(
            spec.from_params
                .iter()
                .map(|p| Location::Param(p.as_str().into())),
        );
        locations.extend(
            spec.from_cookies
                .iter()
                .map(|c| Location::Cookie(c.as_str().into())),
        );
        if locations.is_empty() {
            // Envoy's defaults: `Authorization: Bearer`, then `access_token`.
            locations.push(Location::Header(
                http::header::AUTHORIZATION,
                "Bearer ".into(),
            ));
            locations.push(Location::Param("access_token".into()));
        }
        let forward_payload_header = (!spec.forward_payload_header.is_empty())
            .then(|| {
                header(
                    &spec.forward_payload_header,
                    "forward_payload_header".into(),
                )
            })
            .transpose()?;
        let claim_to_headers = spec
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, (h, c))| {
                Ok((
                    header(h, format!("claim_to_headers[{i}].header_name"))?,
                    c.as_str().into(),
                ))
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            name: name.into(),
            issuer: spec.issuer.as_str().into(),
            audiences: spec.audiences.iter().map(|a| a.as_str().into()).collect(),
            keys,
            locations: locations.into(),
            forward: spec.forward,
            forward_payload_header,
            claim_to_headers,
            clock_skew: u64::from(spec.clock_skew_seconds),
            require_expiration: spec.require_expiration,
            verified: Mutex::default(),
        })
    }

    /// The provider's name (`origins-0` from istiod).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Where its keys come from.
    pub fn keys(&self) -> &KeySource {
        &self.keys
    }

    /// The first token in one of its locations, and where it was.
    fn token<'r>(&self, req: &RouteRequest<'r>) -> Option<(std::borrow::Cow<'r, str>, usize)> {
        self.locations.iter().enumerate().find_map(|(i, l)| {
            let token = match l {
                Location::Header(name, prefix) => {
                    let v = req.header_value(name)?;
                    let rest = strip_prefix_ignore_case(&v, prefix)?.trim();
                    // The token ends at the first character a JWT cannot have.
                    let end = rest
                        .find(|c: char| c == ',' || c.is_whitespace())
                        .unwrap_or(rest.len());
                    let t = rest[..end].to_string();
                    std::borrow::Cow::Owned(t)
                }
                Location::Param(p) => std::borrow::Cow::Borrowed(req.query_param(p)?),
                Location::Cookie(c) => {
                    let v = req.header_value(&http::header::COOKIE)?;
                    let t = v
                        .split(';')
                        .filter_map(|kv| kv.trim().split_once('='))
                        .find(|(k, _)| *k == &**c)?
                        .1
                        .trim_matches('"')
                        .to_string();
                    std::borrow::Cow::Owned(t)
                }
            };
            (!token.is_empty()).then_some((token, i))
        })
    }

    /// Verifies a token against this provider with `keys` (for a remote set, the last fetched),
    /// at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        token: &str,
        keys: Option<&Jwks>,
        now: u64,
    ) -> Result<RequestAuth, JwtError> {
        let parsed = ParsedToken::parse(token)?;
        self.verify_parsed(&parsed, keys, now, &self.audiences)
    }

    fn verify_parsed(
        &self,
        t: &ParsedToken<'_>,
        keys: Option<&Jwks>,
        now: u64,
        accepted: &[Box<str>],
    ) -> Result<RequestAuth, JwtError> {
        if !self.issuer.is_empty() && t.issuer() != Some(&*self.issuer) {
            return Err(JwtError::UnknownIssuer);
        }
        let remote = match &self.keys {
            KeySource::Remote(r) => Some(&r.uri),
            KeySource::Inline(_) => None,
        };
        let keys = match (&self.keys, keys) {
            (KeySource::Inline(k), _) => &**k,
            (KeySource::Remote(_), Some(k)) => k,
            (KeySource::Remote(r), None) => return Err(JwtError::KeysUnavailable(r.uri.clone())),
        };
        let mut tried = false;
        let mut verified = false;
        for k in keys.candidates(t.kid.as_deref(), t.alg) {
            tried = true;
            if jsonwebtoken::crypto::verify(t.signature, t.signed.as_bytes(), &k.key, t.alg)
                .unwrap_or(false)
            {
                verified = true;
                break;
            }
        }
        if !tried {
            return Err(JwtError::NoMatchingKey(remote.cloned()));
        }
        if !verified {
            return Err(JwtError::Signature);
        }
        // Times and audiences only once the signature holds, as Envoy orders them.
        match t.claims.get("exp").and_then(Value::as_u64) {
            Some(exp) if exp.saturating_add(self.clock_skew) < now => {
                return Err(JwtError::Expired);
            }
            None if self.require_expiration => return Err(JwtError::NoExpiration),
            _ => {}
        }
        if t.claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew))
        {
            return Err(JwtError::NotYetValid);
        }
        let audiences = string_list(t.claims.get("aud"));
        if !accepted.is_empty()
            && !audiences
                .iter()
                .any(|a| accepted.iter().any(|x| **x == **a))
        {
            return Err(JwtError::Audience);
        }
        let issuer = t.issuer().unwrap_or_default().to_string();
        let subject = t
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(RequestAuth {
            provider: self.name.clone(),
            principal: format!("{issuer}/{subject}"),
            issuer,
            subject,
            audiences,
            presenter: t
                .claims
                .get("azp")
                .and_then(Value::as_str)
                .map(str::to_string),
            payload: t.payload_b64.to_string(),
            claims: t.claims.clone(),
        })
    }
}

impl JwtProvider {
    fn check_times(&self, claims: &Map<String, Value>, now: u64) -> Result<(), JwtError> {
        match claims.get("exp").and_then(Value::as_u64) {
            Some(exp) if exp.saturating_add(self.clock_skew) < now => {
                return Err(JwtError::Expired);
            }
            None if self.require_expiration => return Err(JwtError::NoExpiration),
            _ => {}
        }
        if claims
            .get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|nbf| nbf > now.saturating_add(self.clock_skew))
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }

    /// A token this provider verified before with the same keys, if it is still within its
    /// times.
    fn remembered(
        &self,
        token: &str,
        keys: Option<&Arc<Jwks>>,
        now: u64,
    ) -> Option<Result<Arc<RequestAuth>, JwtError>> {
        let hit = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()?;
        let same_keys = match (&hit.keys, keys) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_keys.then(|| self.check_times(&hit.auth.claims, now).map(|()| hit.auth))
    }

    fn remember(&self, token: &str, auth: &Arc<RequestAuth>, keys: Option<Arc<Jwks>>) {
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_TOKEN_CACHE {
            // Simple and bounded: a full cache starts over.
            cache.clear();
        }
        cache.insert(
            token.into(),
            Remembered {
                auth: auth.clone(),
                keys,
            },
        );
    }
}

fn strip_prefix_ignore_case<'a>(v: &'a str, prefix: &str) -> Option<&'a str> {
    let head = v.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &v[prefix.len()..])
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// A token split and decoded, not yet verified.
struct ParsedToken<'t> {
    alg: Algorithm,
    kid: Option<String>,
    signed: &'t str,
    payload_b64: &'t str,
    signature: &'t str,
    claims: Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

impl<'t> ParsedToken<'t> {
    fn parse(token: &'t str) -> Result<Self, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::BadFormat);
        };
        let header: RawHeader = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::BadHeader)?;
        let alg: Algorithm = header.alg.parse().map_err(|_| JwtError::UnsupportedAlg)?;
        let claims: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::BadPayload)?;
        Ok(Self {
            alg,
            kid: header.kid,
            signed: &token[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature: s,
            claims,
        })
    }

    fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Who a verified token says is calling: in the request extensions, and what RBAC reads.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuth {
    /// The provider that verified it.
    pub provider: Arc<str>,
    /// `ISS/SUB`: Istio's request principal.
    pub principal: String,
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `aud`.
    pub audiences: Vec<String>,
    /// `azp`.
    pub presenter: Option<String>,
    /// The payload as sent (base64url).
    pub payload: String,
    /// Every claim.
    pub claims: Map<String, Value>,
}

/// What of a verified token an RBAC metadata matcher reads (`istio_authn`'s keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthField {
    /// `request.auth.principal`.
    Principal,
    /// `request.auth.audiences`.
    Audiences,
    /// `request.auth.presenter`.
    Presenter,
    /// `request.auth.claims` and a path into them (nested claims).
    Claim(Vec<String>),
}

impl RequestAuth {
    /// The values of a field: a string claim is one value, a list of strings each of its
    /// strings; other claim types have none (Istio matches only strings).
    pub fn values(&self, field: &AuthField) -> Vec<&str> {
        match field {
            AuthField::Principal => vec![self.principal.as_str()],
            AuthField::Audiences => self.audiences.iter().map(String::as_str).collect(),
            AuthField::Presenter => self.presenter.as_deref().into_iter().collect(),
            AuthField::Claim(path) => {
                let mut v: Option<&Value> = None;
                for (i, k) in path.iter().enumerate() {
                    v = if i == 0 {
                        self.claims.get(k)
                    } else {
                        v.and_then(|v| v.get(k))
                    };
                }
                match v {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                }
            }
        }
    }
}

#[derive(Debug)]
enum Requirement {
    Provider(usize, Option<Box<[Box<str>]>>),
    Any(Box<[Requirement]>),
    All(Box<[Requirement]>),
    AllowMissing,
    AllowMissingOrFailed,
}

#[derive(Debug)]
struct Rule {
    matcher: RouteMatch,
    requires: Option<Requirement>,
}

/// A validated `jwt_authn` filter.
#[derive(Debug)]
pub struct JwtAuthn {
    name: Arc<str>,
    providers: Box<[JwtProvider]>,
    rules: Box<[Rule]>,
    bypass_cors_preflight: bool,
}

/// A token verified for a request, and what its provider does to the request after.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The identity.
    pub auth: Arc<RequestAuth>,
    /// The header to remove (the token's, when the provider does not forward it).
    pub remove: Option<HeaderName>,
    /// Headers to set: the payload and copied claims.
    pub set: Vec<(HeaderName, String)>,
}

/// The keys of remote providers, as the stack last fetched them.
pub trait KeyStore {
    /// The last good key set of `uri`, if any.
    fn keys(&self, uri: &str) -> Option<Arc<Jwks>>;
}

impl<F: Fn(&str) -> Option<Arc<Jwks>>> KeyStore for F {
    fn keys(&self, uri: &str) -> Option<Arc<Jwks>> {
        self(uri)
    }
}

/// Outcome of one requirement: a verified token, none (allowed without one), or a failure.
type Judged = Result<Option<Verified>, JwtError>;

impl JwtAuthn {
    /// Validates a spec: providers with key sets, requirements naming defined providers.
    pub fn new(spec: &JwtAuthnSpec) -> FieldResult<Self> {
        let mut providers = Vec::with_capacity(spec.providers.len());
        for (name, p) in &spec.providers {
            if providers.iter().any(|x: &JwtProvider| &*x.name == name) {
                return Err(FieldError::new(
                    format!("providers[{name:?}]"),
                    "is defined twice",
                ));
            }
            providers.push(
                JwtProvider::new(name, p).map_err(|e| e.within(format!("providers[{name:?}]")))?,
            );
        }
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let at = format!("rules[{i}]");
                Ok(Rule {
                    matcher: RouteMatch::new(&r.matcher).map_err(|e| e.within(&at))?,
                    requires: r
                        .requires
                        .as_ref()
                        .map(|q| requirement(q, &providers, 0))
                        .transpose()
                        .map_err(|e| e.within(format!("{at}.requires")))?,
                })
            })
            .collect::<FieldResult<_>>()?;
        Ok(Self {
            name: spec.name.as_str().into(),
            providers: providers.into(),
            rules,
            bypass_cors_preflight: spec.bypass_cors_preflight,
        })
    }

    /// The filter's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its providers.
    pub fn providers(&self) -> &[JwtProvider] {
        &self.providers
    }

    /// The remote key sets its providers use.
    pub fn remote_keys(&self) -> impl Iterator<Item = &RemoteJwks> {
        self.providers.iter().filter_map(|p| match &p.keys {
            KeySource::Remote(r) => Some(r),
            KeySource::Inline(_) => None,
        })
    }

    /// Judges a request at `now` (seconds since the epoch): `Ok(None)` lets it through without
    /// an identity; an error is the 401's reason.
    pub fn authenticate<R: RngCore + ?Sized>(
        &self,
        req: &RouteRequest<'_>,
        keys: &dyn KeyStore,
        now: u64,
        rng: &mut R,
    ) -> Result<Option<Verified>, JwtError> {
        if self.bypass_cors_preflight
            && req.method() == http::Method::OPTIONS
            && req.header_value(&http::header::ORIGIN).is_some()
            && req
                .header_value(&http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .is_some()
        {
            return Ok(None);
        }
        let Some(rule) = self.rules.iter().find(|r| r.matcher.matches(req, rng)) else {
            return Ok(None);
        };
        let Some(requirement) = &rule.requires else {
            return Ok(None);
        };
        self.judge(requirement, req, keys, now)
    }

    fn judge(
        &self,
        r: &Requirement,
        req: &RouteRequest<'_>,
        keys: &dyn KeyStore,
        now: u64,
    ) -> Judged {
        match r {
            Requirement::Provider(i, audiences) => {
                let p = &self.providers[*i];
                let Some((token, at)) = p.token(req) else {
                    return Err(JwtError::Missing);
                };
                let fetched = match &p.keys {
                    KeySource::Remote(r) => keys.keys(&r.uri),
                    KeySource::Inline(_) => None,
                };
                let auth = match (audiences, p.remembered(&token, fetched.as_ref(), now)) {
                    (None, Some(hit)) => hit?,
                    _ => {
                        let parsed = ParsedToken::parse(&token)?;
                        // A requirement's audiences replace the provider's.
                        let accepted = audiences.as_deref().unwrap_or(&p.audiences);
                        let auth = Arc::new(p.verify_parsed(
                            &parsed,
                            fetched.as_deref(),
                            now,
                            accepted,
                        )?);
                        if audiences.is_none() {
                            p.remember(&token, &auth, fetched);
                        }
                        auth
                    }
                };
                let mut set = Vec::new();
                if let Some(h) = &p.forward_payload_header {
                    set.push((h.clone(), auth.payload.clone()));
                }
                for (h, claim) in p.claim_to_headers.iter() {
                    let v = match auth.claims.get(&**claim) {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => Some(v.to_string()),
                        _ => None,
                    };
                    set.extend(v.map(|v| (h.clone(), v)));
                }
                let remove = match (&p.locations[at], p.forward) {
                    (Location::Header(h, _), false) => Some(h.clone()),
                    _ => None,
                };
                Ok(Some(Verified { auth, remove, set }))
            }
            Requirement::Any(list) => {
                let mut worst = JwtError::Missing;
                for r in list.iter() {
                    match self.judge(r, req, keys, now) {
                        Ok(v) => return Ok(v),
                        Err(e) if rank(&e) > rank(&worst) => worst = e,
                        Err(_) => {}
                    }
                }
                Err(worst)
            }
            Requirement::All(list) => {
                let mut out = None;
                for r in list.iter() {
                    if let Some(v) = self.judge(r, req, keys, now)? {
                        out.get_or_insert(v);
                    }
                }
                Ok(out)
            }
            Requirement::AllowMissing => {
                if self.providers.iter().any(|p| p.token(req).is_some()) {
                    // A token is there: it must be valid for a provider.
                    self.any_provider(req, keys, now)
                } else {
                    Ok(None)
                }
            }
            Requirement::AllowMissingOrFailed => {
                Ok(self.any_provider(req, keys, now).ok().flatten())
            }
        }
    }

    /// The first provider that accepts the request's token, else the most telling failure.
    fn any_provider(&self, req: &RouteRequest<'_>, keys: &dyn KeyStore, now: u64) -> Judged {
        let mut worst = JwtError::Missing;
        for i in 0..self.providers.len() {
            match self.judge(&Requirement::Provider(i, None), req, keys, now) {
                Ok(v) => return Ok(v),
                Err(e) if rank(&e) > rank(&worst) => worst = e,
                Err(_) => {}
            }
        }
        Err(worst)
    }
}

/// Which failure of several says most: a token one provider rejected, over a token of another
/// issuer, over no token.
fn rank(e: &JwtError) -> u8 {
    match e {
        JwtError::Missing => 0,
        JwtError::UnknownIssuer => 1,
        _ => 2,
    }
}

/// Requirement trees deeper than this are refused (a hostile config cannot blow the stack).
const MAX_REQUIREMENT_DEPTH: usize = 16;

fn requirement(
    spec: &RequirementSpec,
    providers: &[JwtProvider],
    depth: usize,
) -> FieldResult<Requirement> {
    if depth > MAX_REQUIREMENT_DEPTH {
        return Err(FieldError::new(
            "",
            format!("nests deeper than {MAX_REQUIREMENT_DEPTH}"),
        ));
    }
    let provider = |name: &str, at: &str| {
        providers
            .iter()
            .position(|p| &*p.name == name)
            .ok_or_else(|| FieldError::new(at, format!("names undefined provider {name:?}")))
    };
    let list = |l: &[RequirementSpec], kind: &str| -> FieldResult<Box<[Requirement]>> {
        l.iter()
            .enumerate()
            .map(|(i, r)| {
                requirement(r, providers, depth + 1)
                    .map_err(|e| e.within(format!("{kind}.requirements[{i}]")))
            })
            .collect()
    };
    Ok(match spec {
        RequirementSpec::Provider(n) => Requirement::Provider(provider(n, "provider_name")?, None),
        RequirementSpec::ProviderWithAudiences(n, a) => Requirement::Provider(
            provider(n, "provider_and_audiences.provider_name")?,
            Some(a.iter().map(|a| a.as_str().into()).collect()),
        ),
        RequirementSpec::Any(l) => Requirement::Any(list(l, "requires_any")?),
        RequirementSpec::All(l) => Requirement::All(list(l, "requires_all")?),
        RequirementSpec::AllowMissing => Requirement::AllowMissing,
        RequirementSpec::AllowMissingOrFailed => Requirement::AllowMissingOrFailed,
    })
}

#[cfg(test)]
mod tests;
