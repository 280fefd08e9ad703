//! TLS termination for a server's filter chains with the workload certificate.

use std::sync::{Arc, Mutex};

use mesh_core::{Certificates, FilterChain};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::tls::crypto_provider;

/// A `ServerConfig` built for one chain and one publication of certificates.
struct Built {
    chain: Arc<FilterChain>,
    generation: u64,
    config: Arc<ServerConfig>,
}

/// Terminates TLS for filter chains, with configurations cached per chain and certificates.
#[derive(Clone)]
pub(super) struct TlsTerminator {
    certificates: watch::Receiver<Arc<Certificates>>,
    built: Arc<Mutex<Vec<Built>>>,
}

impl TlsTerminator {
    pub fn new(certificates: watch::Receiver<Arc<Certificates>>) -> Self {
        Self {
            certificates,
            built: Arc::default(),
        }
    }

    /// The handshake for `chain`: a TLS chain's settings; for a plaintext chain serving TLS
    /// (PERMISSIVE), mTLS with the `default` identity and roots.
    pub async fn accept(
        &self,
        chain: &Arc<FilterChain>,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let config = self.config(chain)?;
        tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(|e| format!("tls handshake: {e}"))
    }

    fn config(&self, chain: &Arc<FilterChain>) -> Result<Arc<ServerConfig>, String> {
        let certs = self.certificates.borrow().clone();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = built
            .iter()
            .find(|b| b.generation == certs.generation() && Arc::ptr_eq(&b.chain, chain))
        {
            return Ok(b.config.clone());
        }
        let (identity, roots, require) = match chain.tls() {
            Some(t) => (
                t.identity_provider.to_string(),
                t.root_provider.as_deref().map(String::from),
                t.require_client_certificate,
            ),
            None => ("default".to_string(), Some("default".to_string()), true),
        };
        let id = certs
            .provider(&identity)
            .and_then(|p| p.identity.clone())
            .ok_or_else(|| {
                format!("no workload certificate yet from certificate provider {identity:?}")
            })?;
        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match roots {
            None => builder.with_no_client_auth(),
            Some(r) => {
                let trust = certs
                    .provider(&r)
                    .and_then(|p| p.roots.clone())
                    .ok_or_else(|| {
                        format!("no root certificates yet from certificate provider {r:?}")
                    })?;
                let mut store = rustls::RootCertStore::empty();
                store.add_parsable_certificates(trust.certs().iter().cloned());
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    provider,
                );
                let v = if require {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
            }
        };
        let mut config = builder
            .with_single_cert(id.chain().to_vec(), id.key().clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let config = Arc::new(config);
        built.retain(|b| !Arc::ptr_eq(&b.chain, chain) && Arc::strong_count(&b.chain) > 1);
        built.push(Built {
            chain: chain.clone(),
            generation: certs.generation(),
            config: config.clone(),
        });
        Ok(config)
    }
}
