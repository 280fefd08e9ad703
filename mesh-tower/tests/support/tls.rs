//! mTLS backends for the stack tests: hyper over rustls on 127.0.0.1, requiring a client
//! certificate from the test CA and answering with who called.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_xds_client::testing::ca::{Leaf, TestCa};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The client's SPIFFE ID in these tests.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// The backends' SPIFFE ID (the local control plane's SAN for service account `ui`).
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/ui";

/// What an mTLS backend saw.
#[derive(Default)]
pub struct TlsSeen {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Handshakes completed.
    pub handshakes: AtomicU64,
    /// Handshakes failed.
    pub failed_handshakes: AtomicU64,
}

/// How an mTLS backend behaves.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// Close every HTTP/1.1 connection after one response (so each request handshakes anew).
    pub close_each: bool,
    /// Trust client certificates of this CA (PEM) instead of the server's own CA.
    pub client_ca_pem: Option<String>,
}

/// An mTLS backend with `leaf` as its certificate, trusting `ca` for client certificates
/// (required). It answers `name peer-id alpn serial` with the caller's SPIFFE ID and the leaf
/// serial of the client's certificate.
pub async fn mtls_backend(
    name: &'static str,
    ca: &TestCa,
    leaf: &Leaf,
    opts: TlsOptions,
) -> (SocketAddr, Arc<TlsSeen>) {
    let provider = mesh_tower::tls::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    let client_ca = opts.client_ca_pem.clone().unwrap_or_else(|| ca.root_pem());
    for c in CertificateDer::pem_slice_iter(client_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(TlsSeen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, s, close_each) = (acceptor.clone(), s.clone(), opts.close_each);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    s.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                s.handshakes.fetch_add(1, Ordering::Relaxed);
                let (_, session) = tls.get_ref();
                let alpn = session
                    .alpn_protocol()
                    .map(|a| String::from_utf8_lossy(a).to_string())
                    .unwrap_or_else(|| "none".into());
                let leaf = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| mesh_core::LeafInfo::parse(c).unwrap());
                let peer = leaf
                    .as_ref()
                    .and_then(|l| l.sans.spiffe_id().map(str::to_string))
                    .unwrap_or_else(|| "anonymous".into());
                let serial = leaf.map(|l| l.serial).unwrap_or_default();
                let answer = Bytes::from(format!("{name} {peer} {alpn} {serial}"));
                let s2 = s.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    s2.requests.fetch_add(1, Ordering::Relaxed);
                    let answer = answer.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(Response::new(Full::new(answer)))
                    }
                });
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if close_each {
                    b.http1().keep_alive(false);
                }
                let _ = b.serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    (addr, seen)
}

/// Writes a workload identity where istio-agent does (`cert-chain.pem`, `key.pem`,
/// `root-cert.pem`), each file replaced atomically as the agent does.
pub fn write_identity(dir: &Path, ca: &TestCa, leaf: &Leaf) {
    for (file, body) in [
        ("key.pem", &leaf.key_pem),
        ("cert-chain.pem", &leaf.chain_pem),
        ("root-cert.pem", &ca.root_pem()),
    ] {
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(file)).unwrap();
    }
}

/// The bootstrap's `certificate_providers`, as istio-agent writes it, over `dir`, re-read
/// every `refresh`.
pub fn certificate_providers(dir: &Path, refresh: &str) -> String {
    let f = |n: &str| dir.join(n).display().to_string();
    format!(
        r#""certificate_providers": {{"default": {{"plugin_name": "file_watcher", "config": {{"certificate_file": "{}", "private_key_file": "{}", "ca_certificate_file": "{}", "refresh_interval": "{refresh}"}}}}}}"#,
        f("cert-chain.pem"),
        f("key.pem"),
        f("root-cert.pem")
    )
}
