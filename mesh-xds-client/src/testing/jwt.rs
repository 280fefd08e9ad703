//! A JWT issuer for tests: an ES256 key made in the test, its JWKS, and tokens it signs.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// An issuer with one signing key.
pub struct JwtIssuer {
    /// `iss`.
    pub issuer: String,
    /// The key's `kid`.
    pub kid: String,
    key: rcgen::KeyPair,
}

impl JwtIssuer {
    /// A new P-256 key for `issuer`, named `kid`.
    pub fn new(issuer: &str, kid: &str) -> Self {
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key"),
        }
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        // The uncompressed point: 0x04, then x and y.
        let point = self.key.public_key_raw();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A JWKS document with the keys of `issuers`.
    pub fn jwks(issuers: &[&JwtIssuer]) -> String {
        json!({"keys": issuers.iter().map(|i| i.jwk()).collect::<Vec<_>>()}).to_string()
    }

    /// Seconds since the epoch now.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    /// A token for `sub` valid for an hour, with `extra` claims added (or replacing the
    /// defaults: `iss`, `sub`, `iat`, `exp`).
    pub fn token(&self, sub: &str, extra: Value) -> String {
        let now = Self::now();
        let mut claims = json!({"iss": self.issuer, "sub": sub, "iat": now, "exp": now + 3600});
        if let (Some(c), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            c.extend(extra);
        }
        self.sign(&claims)
    }

    /// Signs exactly these claims.
    pub fn sign(&self, claims: &Value) -> String {
        let header = Header {
            kid: Some(self.kid.clone()),
            ..Header::new(Algorithm::ES256)
        };
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ec_der(&self.key.serialize_der()),
        )
        .expect("signing a token")
    }
}
