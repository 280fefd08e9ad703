//! mTLS to upstream clusters: [`TlsConnector`] connects plaintext clusters over TCP and TLS
//! clusters over rustls, with the workload certificate and roots of the certificate-provider
//! instances the cluster names, read from the xDS client's certificate watch.
//!
//! It fails closed: a cluster with a TLS context is never connected in plaintext. No
//! certificate yet, an expired one, a failed handshake or a server whose SANs do not match is
//! a connect failure naming the cause, which the stack answers 503 `UF` and outlier detection
//! counts. A rotated certificate is used by the next connection; connections open already keep
//! the one they were made with (TLS needs it only at the handshake).

mod verify;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use mesh_core::{Certificates, Cluster, UpstreamTls};
use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

use crate::connector::{ConnectTarget, MeshConnection, Negotiated};
use verify::SanVerifier;

/// ALPN offered for HTTP/2: `h2`, and Istio's `istio-h2`, which an Envoy sidecar's inbound
/// mTLS filter chain matches to send the connection through its HTTP chain.
pub const ALPN_H2: [&[u8]; 2] = [b"h2", b"istio-h2"];
/// ALPN offered for HTTP/1.1, with Istio's `istio-http/1.1`.
pub const ALPN_HTTP1: [&[u8]; 2] = [b"http/1.1", b"istio-http/1.1"];

/// The crypto provider of every TLS connection the stack makes (ring, as tonic's `tls-ring`
/// and the xDS client's).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Why [`TlsConnector`] did not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectError {
    /// The cluster's identity provider has no certificate yet.
    #[error(
        "cluster {cluster}: no workload certificate yet from certificate provider {provider:?}"
    )]
    NoCertificate {
        /// The cluster.
        cluster: Arc<str>,
        /// The provider instance.
        provider: String,
    },
    /// The workload certificate is outside its validity.
    #[error("cluster {cluster}: the workload certificate (serial {serial}) is not valid now")]
    CertificateNotValid {
        /// The cluster.
        cluster: Arc<str>,
        /// Its serial.
        serial: String,
    },
    /// The cluster's root provider has no roots yet.
    #[error("cluster {cluster}: no root certificates yet from certificate provider {provider:?}")]
    NoRoots {
        /// The cluster.
        cluster: Arc<str>,
        /// The provider instance.
        provider: String,
    },
    /// The certificates could not make a TLS configuration.
    #[error("cluster {cluster}: {reason}")]
    Config {
        /// The cluster.
        cluster: Arc<str>,
        /// What rustls said.
        reason: String,
    },
    /// The TCP connect failed.
    #[error("tcp connect to {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// The TLS handshake failed (including a server certificate that did not verify).
    #[error("tls handshake with {0}: {1}")]
    Handshake(SocketAddr, std::io::Error),
    /// The server's certificate verified, but names no identity the cluster accepts.
    #[error("tls handshake with {0}: {1}")]
    WrongIdentity(SocketAddr, String),
}

/// A connection made by [`TlsConnector`].
pub enum MeshStream {
    /// Plaintext (a cluster without a TLS context).
    Plain(TokioIo<TcpStream>),
    /// TLS (boxed: a rustls connection is large, a TCP stream small).
    Tls(Box<TlsConn>),
}

/// A TLS connection, with what was negotiated and who answered.
pub struct TlsConn {
    io: TokioIo<TlsStream<TcpStream>>,
    negotiated: Negotiated,
    peer: Option<Arc<str>>,
}

impl MeshStream {
    /// The server's SPIFFE identity (TLS only).
    pub fn peer_identity(&self) -> Option<&Arc<str>> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(t) => t.peer.as_ref(),
        }
    }
}

impl MeshConnection for MeshStream {
    fn negotiated(&self) -> Negotiated {
        match self {
            Self::Plain(_) => Negotiated::Unknown,
            Self::Tls(t) => t.negotiated,
        }
    }

    fn peer_identity(&self) -> Option<Arc<str>> {
        MeshStream::peer_identity(self).cloned()
    }
}

macro_rules! both {
    ($self:ident, $io:ident => $e:expr) => {
        match $self.get_mut() {
            MeshStream::Plain($io) => $e,
            MeshStream::Tls(t) => {
                let $io = &mut t.io;
                $e
            }
        }
    };
}

impl Read for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        both!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        both!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        both!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        both!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(io) => io.is_write_vectored(),
            Self::Tls(t) => t.io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        both!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}

/// A TLS configuration built for one cluster, protocol and publication of certificates.
struct Built {
    cluster: Arc<Cluster>,
    generation: u64,
    h2: bool,
    config: Arc<ClientConfig>,
}

/// Connects plaintext clusters over TCP and TLS clusters over rustls (see the module docs).
#[derive(Clone)]
pub struct TlsConnector {
    certificates: watch::Receiver<Arc<Certificates>>,
    provider: Arc<CryptoProvider>,
    // One entry per cluster and protocol; rebuilt when the cluster or the certificates change,
    // so that a handshake does not rebuild root stores and key schedules.
    built: Arc<Mutex<Vec<Built>>>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// A connector reading certificates from `certificates` (the xDS client's
    /// `certificates()` watch).
    pub fn new(certificates: watch::Receiver<Arc<Certificates>>) -> Self {
        Self {
            certificates,
            provider: crypto_provider(),
            built: Arc::default(),
        }
    }

    /// The TLS configuration for a target, from the cache or built now.
    fn config(
        &self,
        cluster: &Arc<Cluster>,
        tls: &UpstreamTls,
        h2: bool,
    ) -> Result<Arc<ClientConfig>, TlsConnectError> {
        let certs = self.certificates.borrow().clone();
        let now = SystemTime::now();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = built.iter().find(|b| {
            b.h2 == h2 && b.generation == certs.generation() && Arc::ptr_eq(&b.cluster, cluster)
        }) {
            // The cache is per publication, so only the clock can make its identity invalid.
            check_identity(cluster, tls, &certs, now)?;
            return Ok(b.config.clone());
        }
        let config = Arc::new(self.build(cluster, tls, &certs, h2, now)?);
        built.retain(|b| !(b.h2 == h2 && b.cluster.name() == cluster.name()));
        built.push(Built {
            cluster: cluster.clone(),
            generation: certs.generation(),
            h2,
            config: config.clone(),
        });
        Ok(config)
    }

    fn build(
        &self,
        cluster: &Arc<Cluster>,
        tls: &UpstreamTls,
        certs: &Certificates,
        h2: bool,
        now: SystemTime,
    ) -> Result<ClientConfig, TlsConnectError> {
        let name = cluster.name();
        let root_provider = tls.root_provider.as_deref().unwrap_or_default();
        let roots = certs
            .provider(root_provider)
            .and_then(|p| p.roots.clone())
            .ok_or_else(|| TlsConnectError::NoRoots {
                cluster: name.clone(),
                provider: root_provider.to_string(),
            })?;
        let mut store = rustls::RootCertStore::empty();
        let (_, unusable) = store.add_parsable_certificates(roots.certs().iter().cloned());
        if store.is_empty() {
            return Err(TlsConnectError::Config {
                cluster: name.clone(),
                reason: format!("none of the {unusable} roots of {root_provider:?} is usable"),
            });
        }
        let verifier = SanVerifier::new(Arc::new(store), tls.clone(), self.provider.clone());
        let config_err = |e: rustls::Error| TlsConnectError::Config {
            cluster: name.clone(),
            reason: e.to_string(),
        };
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match check_identity(cluster, tls, certs, now)? {
            Some(id) => builder
                .with_client_auth_cert(id.chain().to_vec(), id.key().clone_key())
                .map_err(config_err)?,
            None => builder.with_no_client_auth(),
        };
        let alpn: &[&[u8]] = if h2 { &ALPN_H2 } else { &ALPN_HTTP1 };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // SNI only when the cluster names one (istiod sends none).
        config.enable_sni = tls.sni.is_some();
        Ok(config)
    }

    async fn connect_tls(
        self,
        target: ConnectTarget,
        tls: UpstreamTls,
    ) -> Result<MeshStream, TlsConnectError> {
        let addr = target.address();
        let cluster = target.cluster().clone();
        let config = self.config(&cluster, &tls, target.wants_h2())?;
        let server_name = match tls.sni.as_deref() {
            Some(sni) => {
                ServerName::try_from(sni.to_string()).map_err(|e| TlsConnectError::Config {
                    cluster: cluster.name().clone(),
                    reason: format!("sni {sni:?}: {e}"),
                })?
            }
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let tcp = tcp(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| handshake_error(addr, e))?;
        let (_, session) = stream.get_ref();
        let negotiated = match session.alpn_protocol() {
            Some(b"h2") => Negotiated::H2,
            Some(b"http/1.1") => Negotiated::Http1,
            _ => Negotiated::Unknown,
        };
        let peer = session
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| mesh_core::LeafInfo::parse(leaf).ok())
            .and_then(|info| info.sans.spiffe_id().map(Arc::from));
        Ok(MeshStream::Tls(Box::new(TlsConn {
            io: TokioIo::new(stream),
            negotiated,
            peer,
        })))
    }
}

/// The identity a TLS cluster presents: `None` when it names no identity provider; an error
/// when it names one that has no certificate, or one outside its validity.
fn check_identity(
    cluster: &Arc<Cluster>,
    tls: &UpstreamTls,
    certs: &Certificates,
    now: SystemTime,
) -> Result<Option<Arc<mesh_core::WorkloadCert>>, TlsConnectError> {
    let Some(provider) = tls.identity_provider.as_deref() else {
        return Ok(None);
    };
    let id = certs
        .provider(provider)
        .and_then(|p| p.identity.clone())
        .ok_or_else(|| TlsConnectError::NoCertificate {
            cluster: cluster.name().clone(),
            provider: provider.to_string(),
        })?;
    if !id.is_valid_at(now) {
        return Err(TlsConnectError::CertificateNotValid {
            cluster: cluster.name().clone(),
            serial: id.serial().to_string(),
        });
    }
    Ok(Some(id))
}

/// A handshake error, with a SAN mismatch told as such (rustls would show it with `Debug`).
fn handshake_error(addr: SocketAddr, e: std::io::Error) -> TlsConnectError {
    let mismatch = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<verify::SanMismatch>()
                    .map(|m| m.to_string())
            }
            _ => None,
        });
    match mismatch {
        Some(m) => TlsConnectError::WrongIdentity(addr, m),
        None => TlsConnectError::Handshake(addr, e),
    }
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream, TlsConnectError> {
    crate::connector::tcp_connect(addr)
        .await
        .map_err(|e| TlsConnectError::Io(addr, e))
}

impl tower::Service<ConnectTarget> for TlsConnector {
    type Response = MeshStream;
    type Error = TlsConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, TlsConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TlsConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: ConnectTarget) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            match target.tls().cloned() {
                Some(tls) => this.connect_tls(target, tls).await,
                None => Ok(MeshStream::Plain(TokioIo::new(
                    tcp(target.address()).await?,
                ))),
            }
        })
    }
}
