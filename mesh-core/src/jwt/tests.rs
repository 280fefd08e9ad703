use std::sync::Arc;

use http::{HeaderMap, Method, Uri};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.example";

fn jwks(kid: &str) -> String {
    json!({"keys": [{"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(SECRET)}]})
        .to_string()
}

fn token_with(secret: &[u8], kid: Option<&str>, claims: serde_json::Value) -> String {
    let header = Header {
        kid: kid.map(str::to_string),
        ..Header::new(Algorithm::HS256)
    };
    encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn token(claims: serde_json::Value) -> String {
    token_with(SECRET, Some("k1"), claims)
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "sub": "alice", "aud": ["api", "web"], "azp": "cli", "exp": NOW + 600,
           "groups": ["dev", "ops"], "org": {"team": "payments"}, "n": 3})
}

fn provider(f: impl FnOnce(&mut JwtProviderSpec)) -> JwtProviderSpec {
    let mut p = JwtProviderSpec {
        issuer: ISS.into(),
        jwks: Some(JwksSpec::Inline(jwks("k1"))),
        clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
        ..Default::default()
    };
    f(&mut p);
    p
}

/// istiod's shape: one rule for `/`, any provider or a missing token.
fn istiod_filter(p: JwtProviderSpec) -> JwtAuthn {
    JwtAuthn::new(&JwtAuthnSpec {
        name: "envoy.filters.http.jwt_authn".into(),
        providers: vec![("origins-0".into(), p)],
        rules: vec![JwtRuleSpec {
            matcher: RouteMatchSpec::prefix("/"),
            requires: Some(RequirementSpec::Any(vec![
                RequirementSpec::Provider("origins-0".into()),
                RequirementSpec::AllowMissing,
            ])),
        }],
        bypass_cors_preflight: true,
    })
    .unwrap()
}

fn no_remote(_: &str) -> Option<Arc<Jwks>> {
    None
}

fn judge(f: &JwtAuthn, headers: &[(&str, &str)], uri: &str) -> Result<Option<Verified>, JwtError> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let uri: Uri = uri.parse().unwrap();
    let req = RouteRequest::new(&Method::GET, &uri, &map);
    f.authenticate(&req, &no_remote, NOW, &mut rand::rng())
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn a_valid_token_gives_the_request_principal_and_claims() {
    let f = istiod_filter(provider(|_| {}));
    let v = judge(&f, &[("authorization", &bearer(&token(claims())))], "/x")
        .unwrap()
        .expect("verified");
    assert_eq!(v.auth.principal, format!("{ISS}/alice"));
    assert_eq!(v.auth.audiences, ["api", "web"]);
    assert_eq!(v.auth.presenter.as_deref(), Some("cli"));
    assert_eq!(&*v.auth.provider, "origins-0");
    assert_eq!(
        v.auth.values(&AuthField::Principal),
        [format!("{ISS}/alice")]
    );
    assert_eq!(
        v.auth.values(&AuthField::Claim(vec!["groups".into()])),
        ["dev", "ops"]
    );
    assert_eq!(
        v.auth
            .values(&AuthField::Claim(vec!["org".into(), "team".into()])),
        ["payments"]
    );
    // Istio matches strings only: a number claim has no value to match.
    assert!(
        v.auth
            .values(&AuthField::Claim(vec!["n".into()]))
            .is_empty()
    );
    // Not forwarded (the default): the token's header is removed.
    assert_eq!(v.remove, Some(http::header::AUTHORIZATION));
    // The prefix is matched without regard to case, as Envoy does.
    let lower = format!("bearer {}", token(claims()));
    assert!(
        judge(&f, &[("authorization", &lower)], "/")
            .unwrap()
            .is_some()
    );
}

#[test]
fn each_refusal_has_envoys_reason() {
    let f = istiod_filter(provider(|p| p.audiences = vec!["api".into()]));
    let with = |c: serde_json::Value| judge(&f, &[("authorization", &bearer(&token(c)))], "/");
    let mut c = claims();
    c["exp"] = json!(NOW - 61);
    assert_eq!(with(c).unwrap_err(), JwtError::Expired);
    // Within Envoy's 60 s of clock skew.
    let mut c = claims();
    c["exp"] = json!(NOW - 59);
    assert!(with(c).unwrap().is_some());
    let mut c = claims();
    c["nbf"] = json!(NOW + 61);
    assert_eq!(with(c).unwrap_err(), JwtError::NotYetValid);
    let mut c = claims();
    c["aud"] = json!("other");
    assert_eq!(with(c).unwrap_err(), JwtError::Audience);
    let mut c = claims();
    c["iss"] = json!("https://elsewhere");
    assert_eq!(with(c).unwrap_err(), JwtError::UnknownIssuer);
    let forged = token_with(b"another secret, not the issuer's!", Some("k1"), claims());
    let r = judge(&f, &[("authorization", &bearer(&forged))], "/");
    assert_eq!(r.unwrap_err(), JwtError::Signature);
    let unknown_kid = token_with(SECRET, Some("k2"), claims());
    let r = judge(&f, &[("authorization", &bearer(&unknown_kid))], "/");
    assert_eq!(r.unwrap_err(), JwtError::NoMatchingKey(None));
    let r = judge(&f, &[("authorization", "Bearer not-a-jwt")], "/");
    assert_eq!(r.unwrap_err(), JwtError::BadFormat);
    let r = judge(&f, &[("authorization", "Bearer e30.e30.x")], "/");
    assert_eq!(r.unwrap_err(), JwtError::BadHeader);
    // `alg: none` is never accepted.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    let r = judge(&f, &[("authorization", &bearer(&none))], "/");
    assert_eq!(r.unwrap_err(), JwtError::UnsupportedAlg);
    assert_eq!(
        JwtError::Expired.to_string(),
        "Jwt is expired",
        "the 401 body is Envoy's"
    );
}

#[test]
fn a_missing_token_passes_only_where_the_requirement_allows_it() {
    let f = istiod_filter(provider(|_| {}));
    assert!(judge(&f, &[], "/").unwrap().is_none());
    let strict = JwtAuthn::new(&JwtAuthnSpec {
        name: "jwt".into(),
        providers: vec![("p".into(), provider(|_| {}))],
        rules: vec![
            JwtRuleSpec {
                matcher: RouteMatchSpec::prefix("/public"),
                requires: None,
            },
            JwtRuleSpec {
                matcher: RouteMatchSpec::prefix("/"),
                requires: Some(RequirementSpec::Provider("p".into())),
            },
        ],
        bypass_cors_preflight: false,
    })
    .unwrap();
    assert_eq!(
        judge(&strict, &[], "/private").unwrap_err(),
        JwtError::Missing
    );
    assert!(judge(&strict, &[], "/public/x").unwrap().is_none());
    // The default locations: the header, then the `access_token` parameter.
    let t = token(claims());
    assert!(
        judge(&strict, &[], &format!("/p?access_token={t}"))
            .unwrap()
            .is_some()
    );
}

#[test]
fn tokens_are_read_from_the_configured_places_and_forwarded_as_asked() {
    let f = istiod_filter(provider(|p| {
        p.from_headers = vec![JwtHeaderSpec {
            name: "X-Jwt".into(),
            value_prefix: String::new(),
        }];
        p.from_cookies = vec!["session".into()];
        p.forward = true;
        p.forward_payload_header = "x-jwt-payload".into();
        p.claim_to_headers = vec![("x-sub".into(), "sub".into()), ("x-n".into(), "n".into())];
    }));
    let t = token(claims());
    let v = judge(&f, &[("x-jwt", &t)], "/").unwrap().unwrap();
    assert_eq!(v.remove, None, "forward keeps the token");
    let payload = t.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        v.set,
        [
            (http::HeaderName::from_static("x-jwt-payload"), payload),
            (http::HeaderName::from_static("x-sub"), "alice".into()),
            (http::HeaderName::from_static("x-n"), "3".into()),
        ]
    );
    let cookie = format!("a=b; session={t}; c=d");
    assert!(judge(&f, &[("cookie", &cookie)], "/").unwrap().is_some());
    // Only the configured places: a bearer header is no token for this provider.
    assert!(
        judge(&f, &[("authorization", &bearer(&t))], "/")
            .unwrap()
            .is_none()
    );
}

#[test]
fn cors_preflights_skip_authentication() {
    let f = istiod_filter(provider(|_| {}));
    let mut map = HeaderMap::new();
    map.insert("authorization", "Bearer garbage".parse().unwrap());
    map.insert("origin", "https://web".parse().unwrap());
    map.insert("access-control-request-method", "POST".parse().unwrap());
    let uri: Uri = "/".parse().unwrap();
    let req = RouteRequest::new(&Method::OPTIONS, &uri, &map);
    assert!(
        f.authenticate(&req, &no_remote, NOW, &mut rand::rng())
            .unwrap()
            .is_none()
    );
    let req = RouteRequest::new(&Method::GET, &uri, &map);
    assert_eq!(
        f.authenticate(&req, &no_remote, NOW, &mut rand::rng())
            .unwrap_err(),
        JwtError::BadFormat
    );
}

#[test]
fn remote_keys_come_from_the_store_and_name_what_to_fetch() {
    let uri = "https://idp.example/jwks";
    let f = istiod_filter(provider(|p| {
        p.jwks = Some(JwksSpec::Remote {
            uri: uri.into(),
            timeout: Duration::ZERO,
            cache_duration: Duration::ZERO,
        });
    }));
    let remote = f.remote_keys().next().unwrap();
    assert_eq!(remote.timeout, DEFAULT_JWKS_TIMEOUT);
    assert_eq!(remote.cache_duration, DEFAULT_JWKS_CACHE);
    let t = bearer(&token(claims()));
    let mut map = HeaderMap::new();
    map.insert("authorization", t.parse().unwrap());
    let u: Uri = "/".parse().unwrap();
    let req = RouteRequest::new(&Method::GET, &u, &map);
    let e = f
        .authenticate(&req, &no_remote, NOW, &mut rand::rng())
        .unwrap_err();
    assert_eq!(e, JwtError::KeysUnavailable(uri.into()));
    assert_eq!(e.refetch().map(|u| &**u), Some(uri));
    let rotated = Arc::new(Jwks::parse(&jwks("k0")).unwrap());
    let old = |_: &str| Some(rotated.clone());
    let e = f
        .authenticate(&req, &old, NOW, &mut rand::rng())
        .unwrap_err();
    assert_eq!(e, JwtError::NoMatchingKey(Some(uri.into())));
    let current = Arc::new(Jwks::parse(&jwks("k1")).unwrap());
    let new = |_: &str| Some(current.clone());
    assert!(
        f.authenticate(&req, &new, NOW, &mut rand::rng())
            .unwrap()
            .is_some()
    );
}

#[test]
fn key_sets_keep_the_keys_they_can_use() {
    let doc = json!({"keys": [
        {"kty": "RSA", "use": "enc", "kid": "e", "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "crv": "P-521", "kid": "big", "x": "AA", "y": "AA"},
        {"kty": "what", "kid": "odd"},
        {"kty": "oct", "kid": "k1", "k": URL_SAFE_NO_PAD.encode(SECRET)},
    ]});
    let set = Jwks::parse(&doc.to_string()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(Jwks::parse(r#"{"keys": []}"#).unwrap_err(), "has no keys");
    assert_eq!(
        Jwks::parse(r#"{"k": 1}"#).unwrap_err(),
        "has no \"keys\" array"
    );
    assert!(
        Jwks::parse("not json")
            .unwrap_err()
            .starts_with("is not JSON")
    );
    let e = Jwks::parse(r#"{"keys": [{"kty": "oct", "kid": "x", "alg": "RS256", "k": "AA"}]}"#)
        .unwrap_err();
    assert_eq!(
        e,
        "has no usable key (keys[0] has alg RS256, which its key type cannot verify)"
    );
}

#[test]
fn invalid_filters_are_refused_by_name() {
    let err = |spec: JwtAuthnSpec| JwtAuthn::new(&spec).unwrap_err().to_string();
    let base = || JwtAuthnSpec {
        name: "jwt".into(),
        providers: vec![("p".into(), provider(|_| {}))],
        ..Default::default()
    };
    let mut s = base();
    s.rules = vec![JwtRuleSpec {
        matcher: RouteMatchSpec::prefix("/"),
        requires: Some(RequirementSpec::Any(vec![RequirementSpec::Provider(
            "q".into(),
        )])),
    }];
    assert_eq!(
        err(s),
        "rules[0].requires.requires_any.requirements[0].provider_name: names undefined provider \"q\""
    );
    let mut s = base();
    s.providers[0].1.jwks = Some(JwksSpec::Inline("{}".into()));
    assert_eq!(
        err(s),
        "providers[\"p\"].local_jwks.inline_string: has no \"keys\" array"
    );
    let mut s = base();
    s.providers[0].1.jwks = Some(JwksSpec::Remote {
        uri: "file:///etc/jwks".into(),
        timeout: Duration::ZERO,
        cache_duration: Duration::ZERO,
    });
    assert_eq!(
        err(s),
        "providers[\"p\"].remote_jwks.http_uri.uri: \"file:///etc/jwks\" is not an http or https URI"
    );
    let mut deep = RequirementSpec::Provider("p".into());
    for _ in 0..20 {
        deep = RequirementSpec::All(vec![deep]);
    }
    let mut s = base();
    s.rules = vec![JwtRuleSpec {
        matcher: RouteMatchSpec::prefix("/"),
        requires: Some(deep),
    }];
    assert!(err(s).ends_with("nests deeper than 16"));
}

#[test]
fn of_several_providers_the_tokens_issuer_picks_one() {
    let other = "https://other.example";
    let f = JwtAuthn::new(&JwtAuthnSpec {
        name: "jwt".into(),
        providers: vec![
            ("origins-0".into(), provider(|_| {})),
            ("origins-1".into(), provider(|p| p.issuer = other.into())),
        ],
        rules: vec![JwtRuleSpec {
            matcher: RouteMatchSpec::prefix("/"),
            requires: Some(RequirementSpec::Any(vec![
                RequirementSpec::Provider("origins-0".into()),
                RequirementSpec::Provider("origins-1".into()),
                RequirementSpec::AllowMissing,
            ])),
        }],
        bypass_cors_preflight: false,
    })
    .unwrap();
    let mut c = claims();
    c["iss"] = json!(other);
    let v = judge(&f, &[("authorization", &bearer(&token(c.clone())))], "/")
        .unwrap()
        .unwrap();
    assert_eq!(&*v.auth.provider, "origins-1");
    // A forged token of the second issuer is reported as forged, not as of an unknown issuer.
    let forged = token_with(b"another secret, not the issuer's!", Some("k1"), c);
    let r = judge(&f, &[("authorization", &bearer(&forged))], "/");
    assert_eq!(r.unwrap_err(), JwtError::Signature);
    c = claims();
    c["iss"] = json!("https://third.example");
    let r = judge(&f, &[("authorization", &bearer(&token(c)))], "/");
    assert_eq!(r.unwrap_err(), JwtError::UnknownIssuer);
}

#[test]
fn a_remembered_token_is_still_held_to_its_times_and_to_its_keys() {
    let f = istiod_filter(provider(|_| {}));
    let t = bearer(&token(claims()));
    let mut map = HeaderMap::new();
    map.insert("authorization", t.parse().unwrap());
    let u: Uri = "/".parse().unwrap();
    let req = RouteRequest::new(&Method::GET, &u, &map);
    let at = |now| f.authenticate(&req, &no_remote, now, &mut rand::rng());
    assert!(at(NOW).unwrap().is_some());
    assert!(at(NOW + 1).unwrap().is_some(), "from the cache");
    assert_eq!(at(NOW + 600 + 61).unwrap_err(), JwtError::Expired);

    // Remote keys: a refetched set that no longer has the key is checked again.
    let uri = "https://idp.example/jwks";
    let f = istiod_filter(provider(|p| {
        p.jwks = Some(JwksSpec::Remote {
            uri: uri.into(),
            timeout: Duration::ZERO,
            cache_duration: Duration::ZERO,
        });
    }));
    let with_k1 = Arc::new(Jwks::parse(&jwks("k1")).unwrap());
    let keys = |_: &str| Some(with_k1.clone());
    assert!(
        f.authenticate(&req, &keys, NOW, &mut rand::rng())
            .unwrap()
            .is_some()
    );
    assert!(
        f.authenticate(&req, &keys, NOW, &mut rand::rng())
            .unwrap()
            .is_some()
    );
    let rotated = Arc::new(Jwks::parse(&jwks("k2")).unwrap());
    let keys = |_: &str| Some(rotated.clone());
    assert_eq!(
        f.authenticate(&req, &keys, NOW, &mut rand::rng())
            .unwrap_err(),
        JwtError::NoMatchingKey(Some(uri.into()))
    );
}
