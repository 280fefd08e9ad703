//! The client's check of the server it reached (gRFC A29): the chain must verify against the
//! cluster's roots, and a SAN must match the cluster's `match_subject_alt_names`, which
//! replaces the hostname check (rustls checks no URI SANs, and SPIFFE identities are URIs).

use std::sync::Arc;

use mesh_core::{LeafInfo, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, RootCertStore};

/// Verifies a server's chain with webpki, then its SANs with the cluster's matchers.
#[derive(Debug)]
pub(crate) struct SanVerifier {
    roots: Arc<RootCertStore>,
    tls: UpstreamTls,
    provider: Arc<CryptoProvider>,
}

impl SanVerifier {
    pub fn new(roots: Arc<RootCertStore>, tls: UpstreamTls, provider: Arc<CryptoProvider>) -> Self {
        Self {
            roots,
            tls,
            provider,
        }
    }
}

/// Why an otherwise valid server certificate was refused.
#[derive(thiserror::Error)]
#[error(
    "no SAN of the server's certificate ({presented}) matches the cluster's match_subject_alt_names"
)]
pub(crate) struct SanMismatch {
    presented: String,
}

// rustls shows an `OtherError` with `Debug`: make that the message.
impl std::fmt::Debug for SanMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let leaf = LeafInfo::parse(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !self.tls.accepts(&leaf.sans) {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(SanMismatch {
                    presented: leaf.sans.to_string(),
                })),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
