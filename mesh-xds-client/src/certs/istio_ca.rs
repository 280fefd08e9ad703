//! Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`), for workloads that
//! run without istio-agent: a fresh key and CSR for the workload's SPIFFE ID, sent to istiod on
//! the same TLS port and with the same bearer token as xDS, renewed at half the lifetime.
//!
//! As istio-agent does: rotation at `not_after − lifetime × (0.5 ± 0.01)`, a new key each time,
//! and a failed request retried with backoff. A certificate that is still valid is never
//! withdrawn because a renewal failed; the error is published next to it. The roots for
//! workloads are the last element of the CA's answer (leaf first, root last).

use std::time::{Duration, SystemTime};

use mesh_core::{ProviderCerts, TrustRoots};
use rand::Rng;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

use super::{CertificatePublisher, parse_certs};
use crate::bootstrap::XdsServer;
use crate::client::Backoff;

/// The `plugin_name` of a certificate-provider instance served by Istio's CA.
pub const PLUGIN_NAME: &str = "istio_ca";

/// The RPC's path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `istio.v1.auth.IstioCertificateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM CSR.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested lifetime, seconds.
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Extra request metadata (`CertSigner`).
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<envoy_types::pb::google::protobuf::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    /// PEM certificates: the leaf first, the root last.
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// How to reach the CA and what to ask it for.
#[derive(Debug, Clone, PartialEq)]
pub struct IstioCaConfig {
    /// istiod (TLS 15012), with the bearer token and `clusterid` header of xDS.
    pub server: XdsServer,
    /// The identity asked for (`spiffe://TRUST_DOMAIN/ns/NS/sa/SA`). istiod issues the one it
    /// authenticated, whatever the CSR says.
    pub spiffe_id: String,
    /// The lifetime asked for (istio-agent: `SECRET_TTL`, 24 h).
    pub ttl: Duration,
}

/// One certificate-provider instance served by Istio's CA.
pub struct IstioCaProvider {
    name: String,
    config: IstioCaConfig,
    publisher: CertificatePublisher,
    retry: Backoff,
}

impl IstioCaProvider {
    /// A provider publishing instance `name` through `publisher`.
    pub fn new(name: &str, config: IstioCaConfig, publisher: CertificatePublisher) -> Self {
        Self {
            name: name.into(),
            config,
            publisher,
            retry: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
        }
    }

    /// The delays between failed requests (default 1 s doubling to 60 s, with jitter).
    pub fn retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// Requests a certificate, renews it for ever, and retries failures.
    pub async fn run(self) {
        let mut delay = self.retry.initial;
        loop {
            match self.request().await {
                Ok((cert, roots)) => {
                    delay = self.retry.initial;
                    let renew = renewal_delay(&cert, SystemTime::now(), &mut rand::rng());
                    tracing::info!(provider = %self.name, serial = cert.serial(), spiffe_id = ?cert.spiffe_id(), renew_in = ?renew, "workload certificate issued by Istio's CA");
                    self.publisher.update(&self.name, |p: &mut ProviderCerts| {
                        p.identity = Some(Arc::new(cert));
                        p.roots = Some(Arc::new(roots));
                        p.last_error = None;
                    });
                    tokio::time::sleep(renew).await;
                }
                Err(e) => {
                    let e = format!("Istio CA at {}: {e}", self.config.server.address);
                    tracing::warn!(provider = %self.name, retry_in = ?delay, "{e}");
                    self.publisher
                        .update(&self.name, |p: &mut ProviderCerts| p.last_error = Some(e));
                    let jitter = rand::rng().random_range(0.8..1.2);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay = delay.saturating_mul(2).min(self.retry.max);
                }
            }
        }
    }

    /// One CreateCertificate call, with a new key.
    async fn request(&self) -> Result<(mesh_core::WorkloadCert, TrustRoots), String> {
        let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            self.config
                .spiffe_id
                .clone()
                .try_into()
                .map_err(|e| format!("{:?} is not a URI: {e}", self.config.spiffe_id))?,
        )];
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| format!("CSR: {e}"))?;
        // mTLS with the current certificate while it is valid, as istio-agent renews.
        let current = self
            .publisher
            .current()
            .provider(&self.name)
            .and_then(|p| p.identity.clone())
            .filter(|c| c.is_valid_at(SystemTime::now()));
        let channel = crate::channel::connect(&self.config.server, current.as_deref()).await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| crate::channel::source_chain(&e))?;
        let mut req = tonic::Request::new(IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.config.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        });
        *req.metadata_mut() = crate::channel::call_metadata(&self.config.server)?;
        req.set_timeout(Duration::from_secs(10));
        let resp = grpc
            .unary(
                req,
                http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE),
                tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default(),
            )
            .await
            .map_err(|s| format!("CreateCertificate: {}: {}", s.code(), s.message()))?
            .into_inner();
        issued(resp, key.serialize_der())
    }
}

/// The identity and roots in a CA answer for the key `key_der` (PKCS#8).
pub fn issued(
    resp: IstioCertificateResponse,
    key_der: Vec<u8>,
) -> Result<(mesh_core::WorkloadCert, TrustRoots), String> {
    let n = resp.cert_chain.len();
    if n < 2 {
        return Err(format!(
            "the answer holds {n} certificate(s); expected the leaf and the root"
        ));
    }
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    for (i, pem) in resp.cert_chain[..n - 1].iter().enumerate() {
        chain.extend(
            parse_certs(pem.as_bytes(), &format!("cert_chain[{i}]")).map_err(|e| e.to_string())?,
        );
    }
    let roots_pem = &resp.cert_chain[n - 1];
    let roots = super::parse_roots(roots_pem.as_bytes(), &format!("cert_chain[{}]", n - 1))
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let cert = super::identity(chain, key, "the CSR's key").map_err(|e| e.to_string())?;
    Ok((cert, roots))
}

/// How long until `cert` is renewed: at `not_after − lifetime × (0.5 ± 0.01)`, and at once
/// when that has passed.
pub fn renewal_delay(
    cert: &mesh_core::WorkloadCert,
    now: SystemTime,
    rng: &mut impl Rng,
) -> Duration {
    let lifetime = cert
        .not_after()
        .duration_since(cert.not_before())
        .unwrap_or_default();
    let grace = lifetime.mul_f64(0.5 + rng.random_range(-0.01..=0.01));
    let at = cert.not_after().checked_sub(grace).unwrap_or(now);
    at.duration_since(now).unwrap_or_default()
}
