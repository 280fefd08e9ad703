//! The `jwt_authn` HTTP filter of a server listener, as istiod writes it for sidecars from
//! RequestAuthentication (istiod's gRPC generator writes none; mesh's local control plane
//! does). What mesh cannot do as Envoy would is refused by name, never skipped.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3 as pb;
use mesh_core::error::FieldError;
use mesh_core::jwt::{
    DEFAULT_CLOCK_SKEW_SECONDS, JwksSpec, JwtAuthnSpec, JwtHeaderSpec, JwtProviderSpec,
    JwtRuleSpec, RequirementSpec,
};

use super::opt_duration;
use super::route::route_match;

type FieldResult<T> = Result<T, FieldError>;

/// The filter's type URL.
pub const JWT_AUTHN_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

/// Requirement trees deeper than this are refused while decoding.
const MAX_DEPTH: usize = 16;

/// Maps a `JwtAuthentication` to a spec.
pub fn jwt_authn_spec(name: &str, f: &pb::JwtAuthentication) -> FieldResult<JwtAuthnSpec> {
    if f.filter_state_rules.is_some() {
        return Err(FieldError::new("filter_state_rules", "is not supported"));
    }
    if !f.requirement_map.is_empty() {
        return Err(FieldError::new("requirement_map", "is not supported"));
    }
    // Providers in name order: the map has none, and errors and dumps should be stable.
    let mut names: Vec<&String> = f.providers.keys().collect();
    names.sort();
    let providers = names
        .into_iter()
        .map(|n| {
            provider(&f.providers[n])
                .map(|p| (n.clone(), p))
                .map_err(|e| e.within(format!("providers[{n:?}]")))
        })
        .collect::<FieldResult<_>>()?;
    let rules = f
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r).map_err(|e| e.within(format!("rules[{i}]"))))
        .collect::<FieldResult<_>>()?;
    Ok(JwtAuthnSpec {
        name: name.into(),
        providers,
        rules,
        bypass_cors_preflight: f.bypass_cors_preflight,
    })
}

fn provider(p: &pb::JwtProvider) -> FieldResult<JwtProviderSpec> {
    use pb::jwt_provider::JwksSourceSpecifier as S;
    let refuse = |field: &str| Err(FieldError::new(field, "is not supported"));
    if p.subjects.is_some() {
        return refuse("subjects");
    }
    if p.max_lifetime.is_some() {
        return refuse("max_lifetime");
    }
    if p.pad_forward_payload_header {
        return refuse("pad_forward_payload_header");
    }
    let jwks = match &p.jwks_source_specifier {
        None => return Err(FieldError::new("jwks_source_specifier", "is not set")),
        Some(S::LocalJwks(d)) => JwksSpec::Inline(match &d.specifier {
            Some(Specifier::InlineString(s)) => s.clone(),
            Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
                .map_err(|_| FieldError::new("local_jwks.inline_bytes", "is not UTF-8"))?,
            _ => {
                return Err(FieldError::new(
                    "local_jwks",
                    "only inline_string and inline_bytes are supported",
                ));
            }
        }),
        Some(S::RemoteJwks(r)) => {
            let uri = r
                .http_uri
                .as_ref()
                .ok_or_else(|| FieldError::new("remote_jwks.http_uri", "is not set"))?;
            JwksSpec::Remote {
                uri: uri.uri.clone(),
                timeout: opt_duration(uri.timeout.as_ref(), "remote_jwks.http_uri.timeout")?
                    .unwrap_or_default(),
                cache_duration: opt_duration(
                    r.cache_duration.as_ref(),
                    "remote_jwks.cache_duration",
                )?
                .unwrap_or_default(),
            }
        }
    };
    let claim_to_headers = p
        .claim_to_headers
        .iter()
        .map(|c| (c.header_name.clone(), c.claim_name.clone()))
        .collect();
    Ok(JwtProviderSpec {
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks: Some(jwks),
        from_headers: p
            .from_headers
            .iter()
            .map(|h| JwtHeaderSpec {
                name: h.name.clone(),
                value_prefix: h.value_prefix.clone(),
            })
            .collect(),
        from_params: p.from_params.clone(),
        from_cookies: p.from_cookies.clone(),
        forward: p.forward,
        forward_payload_header: p.forward_payload_header.clone(),
        claim_to_headers,
        // Envoy reads 0 as its default of 60 s.
        clock_skew_seconds: match p.clock_skew_seconds {
            0 => DEFAULT_CLOCK_SKEW_SECONDS,
            s => s,
        },
        require_expiration: p.require_expiration,
    })
}

fn rule(r: &pb::RequirementRule) -> FieldResult<JwtRuleSpec> {
    use pb::requirement_rule::RequirementType as T;
    let matcher = route_match(
        r.r#match
            .as_ref()
            .ok_or_else(|| FieldError::new("match", "is not set"))?,
    )
    .map_err(|e| e.within("match"))?;
    let requires = match &r.requirement_type {
        None => None,
        Some(T::Requires(q)) => Some(requirement(q, 0).map_err(|e| e.within("requires"))?),
        Some(T::RequirementName(_)) => {
            return Err(FieldError::new("requirement_name", "is not supported"));
        }
    };
    Ok(JwtRuleSpec { matcher, requires })
}

fn requirement(r: &pb::JwtRequirement, depth: usize) -> FieldResult<RequirementSpec> {
    use pb::jwt_requirement::RequiresType as T;
    if depth > MAX_DEPTH {
        return Err(FieldError::new(
            "",
            format!("nests deeper than {MAX_DEPTH}"),
        ));
    }
    let list = |l: &[pb::JwtRequirement], kind: &str| -> FieldResult<Vec<RequirementSpec>> {
        l.iter()
            .enumerate()
            .map(|(i, q)| {
                requirement(q, depth + 1).map_err(|e| e.within(format!("{kind}.requirements[{i}]")))
            })
            .collect()
    };
    Ok(match &r.requires_type {
        None => return Err(FieldError::new("requires_type", "is not set")),
        Some(T::ProviderName(n)) => RequirementSpec::Provider(n.clone()),
        Some(T::ProviderAndAudiences(p)) => {
            RequirementSpec::ProviderWithAudiences(p.provider_name.clone(), p.audiences.clone())
        }
        Some(T::RequiresAny(l)) => RequirementSpec::Any(list(&l.requirements, "requires_any")?),
        Some(T::RequiresAll(l)) => RequirementSpec::All(list(&l.requirements, "requires_all")?),
        Some(T::AllowMissing(_)) => RequirementSpec::AllowMissing,
        Some(T::AllowMissingOrFailed(_)) => RequirementSpec::AllowMissingOrFailed,
        Some(T::ExtractOnlyWithoutValidation(_)) => {
            return Err(FieldError::new(
                "extract_only_without_validation",
                "is not supported",
            ));
        }
    })
}
