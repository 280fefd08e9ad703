//! Workload certificates: loading and checking PEM, the certificate-provider instances of the
//! bootstrap (gRFC A29's `file_watcher`, and Istio's CA for the no-agent mode), and the one
//! published view of what each instance holds (a watch of [`Certificates`]) that the connectors
//! and servers read.

pub mod file_watcher;
pub mod istio_ca;

use std::collections::BTreeSet;
use std::sync::Arc;

use mesh_core::{Certificates, ProviderCerts, TrustRoots, WorkloadCert};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;

use crate::bootstrap::Bootstrap;

/// The instance istio-agent's bootstrap defines and istiod's TLS contexts name; its identity
/// also authenticates this client to istiod (mTLS) when the channel is TLS.
pub const DEFAULT_INSTANCE: &str = "default";

/// Why a PEM certificate, key or bundle was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `CERTIFICATE` block.
    #[error("{0}: no PEM certificate")]
    NoCertificate(String),
    /// A `CERTIFICATE` block that is not X.509.
    #[error("{0}: {1}")]
    BadCertificate(String, String),
    /// No usable private key block.
    #[error("{0}: no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(String),
    /// A key of a kind the crypto provider cannot sign with.
    #[error("{0}: unsupported private key: {1}")]
    BadKey(String, String),
    /// The key is not the leaf's.
    #[error("the private key does not match the certificate {0}")]
    KeyMismatch(String),
}

/// Certificates from a PEM bundle, in order; `what` names the source in errors.
pub fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::BadCertificate(what.into(), e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate(what.into()));
    }
    for (i, c) in certs.iter().enumerate() {
        mesh_core::LeafInfo::parse(c).map_err(|e| {
            PemError::BadCertificate(format!("{what} certificate {i}"), e.to_string())
        })?;
    }
    Ok(certs)
}

/// Trust roots from a PEM bundle; each must be usable as a trust anchor.
pub fn parse_roots(pem: &[u8], what: &str) -> Result<TrustRoots, PemError> {
    let certs = parse_certs(pem, what)?;
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            PemError::BadCertificate(format!("{what} certificate {i}"), e.to_string())
        })?;
    }
    Ok(TrustRoots::new(certs))
}

/// A workload certificate from a PEM chain (leaf first) and a PEM key, checked to belong
/// together.
pub fn parse_identity(
    chain_pem: &[u8],
    chain_what: &str,
    key_pem: &[u8],
    key_what: &str,
) -> Result<WorkloadCert, PemError> {
    let chain = parse_certs(chain_pem, chain_what)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| PemError::NoKey(key_what.into()))?;
    identity(chain, key, key_what)
}

/// A workload certificate from DER, checked: the key must sign with the provider and match
/// the leaf's public key.
pub(crate) fn identity(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_what: &str,
) -> Result<WorkloadCert, PemError> {
    let signer = crate::crypto_provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| PemError::BadKey(key_what.into(), e.to_string()))?;
    let cert = WorkloadCert::new(chain, key)
        .map_err(|e| PemError::BadCertificate(key_what.into(), e.to_string()))?;
    rustls::sign::CertifiedKey::new(cert.chain().to_vec(), signer)
        .keys_match()
        .map_err(|_| PemError::KeyMismatch(format!("with serial {}", cert.serial())))?;
    Ok(cert)
}

/// Publishes what each certificate-provider instance holds.
#[derive(Debug, Clone)]
pub struct CertificatePublisher {
    tx: watch::Sender<Arc<Certificates>>,
}

impl Default for CertificatePublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl CertificatePublisher {
    /// Nothing published yet.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(Arc::new(Certificates::new())),
        }
    }

    /// A receiver of every publication.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Certificates>> {
        self.tx.subscribe()
    }

    /// What is published now.
    pub fn current(&self) -> Arc<Certificates> {
        self.tx.borrow().clone()
    }

    /// Changes instance `name`'s entry; publishes only if `change` changed something.
    pub fn update(&self, name: &str, change: impl FnOnce(&mut ProviderCerts)) {
        self.tx.send_if_modified(|all| {
            let before = all.provider(name).cloned().unwrap_or_default();
            let mut next = before.clone();
            change(&mut next);
            if same(&before, &next) {
                return false;
            }
            *all = Arc::new(all.with(name, next));
            true
        });
    }
}

fn same(a: &ProviderCerts, b: &ProviderCerts) -> bool {
    let ptr = |x: &Option<Arc<WorkloadCert>>| x.as_ref().map(Arc::as_ptr);
    let roots = |x: &Option<Arc<TrustRoots>>| x.as_ref().map(Arc::as_ptr);
    ptr(&a.identity) == ptr(&b.identity)
        && roots(&a.roots) == roots(&b.roots)
        && a.last_error == b.last_error
}

/// The certificate-provider instances this client can serve (those with a supported plugin):
/// a TLS context naming any other instance is NACKed.
pub fn served_instances(bootstrap: &Bootstrap) -> BTreeSet<String> {
    bootstrap
        .certificate_providers
        .iter()
        .filter(|(_, p)| p.file_watcher.is_some() || p.istio_ca.is_some())
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests;
