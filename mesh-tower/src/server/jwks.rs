//! The remote key sets (`remote_jwks`) of a server's JWT providers: fetched over HTTP(S),
//! refreshed every `cache_duration`, refetched when a token names a key the set lacks, and
//! the last good set kept through fetch errors, so an identity provider outage does not turn
//! valid tokens away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use mesh_core::jwt::{Jwks, JwtAuthn, KeyStore, RemoteJwks};
use tokio::time::Instant;

/// A key set document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Forced refetches (an unknown `kid`, no keys yet) of one URI are at least this far apart, so
/// tokens naming random keys cannot make the server hammer the identity provider.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Entry {
    keys: Option<Arc<Jwks>>,
    /// When the last fetch (good or not) finished.
    fetched_at: Option<Instant>,
    last_error: Option<String>,
    /// Held while a fetch runs: one fetch per URI at a time.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

/// The remote key sets of one server, shared by its connections.
#[derive(Clone)]
pub struct JwksStore {
    entries: Arc<Mutex<HashMap<Arc<str>, Entry>>>,
    min_refetch: Duration,
}

impl Default for JwksStore {
    fn default() -> Self {
        Self::new(MIN_REFETCH_INTERVAL)
    }
}

impl std::fmt::Debug for JwksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_map()
            .entries(
                entries
                    .iter()
                    .map(|(k, e)| (k, e.keys.as_ref().map(|k| k.len()))),
            )
            .finish()
    }
}

/// A [`KeyStore`] view of the store for one request: reading a stale set starts its refresh.
pub(crate) struct Lookup<'a> {
    pub(crate) store: &'a JwksStore,
    pub(crate) jwt: &'a JwtAuthn,
}

impl KeyStore for Lookup<'_> {
    fn keys(&self, uri: &str) -> Option<Arc<Jwks>> {
        let (keys, stale) = {
            let entries = self.store.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = entries.get(uri);
            let cache = self
                .jwt
                .remote_keys()
                .find(|r| &*r.uri == uri)
                .map(|r| r.cache_duration);
            // A good set is refreshed every cache_duration; a missing or failing one sooner.
            let stale = match (e, cache) {
                (Some(e), Some(cache)) => e.fetched_at.is_none_or(|at| {
                    let healthy = e.keys.is_some() && e.last_error.is_none();
                    at.elapsed()
                        >= if healthy {
                            cache
                        } else {
                            self.store.min_refetch
                        }
                }),
                (None, _) => true,
                (Some(_), None) => false,
            };
            (e.and_then(|e| e.keys.clone()), stale)
        };
        if let Some(r) = self.jwt.remote_keys().find(|r| stale && &*r.uri == uri) {
            self.store.refresh_in_background(r);
        }
        keys
    }
}

impl JwksStore {
    /// A store whose forced refetches of one URI are at least `min_refetch` apart.
    pub fn new(min_refetch: Duration) -> Self {
        Self {
            entries: Arc::default(),
            min_refetch,
        }
    }

    /// The least time between two forced fetches of one URI.
    pub fn min_refetch(&self) -> Duration {
        self.min_refetch
    }

    /// The last good key set of a URI.
    pub fn keys(&self, uri: &str) -> Option<Arc<Jwks>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(uri).and_then(|e| e.keys.clone())
    }

    /// The last fetch error of a URI, if the last fetch failed.
    pub fn last_error(&self, uri: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(uri).and_then(|e| e.last_error.clone())
    }

    /// Starts fetching the sets that were never fetched (when a listener with remote keys
    /// first serves a connection), without waiting.
    pub fn prefetch<'a>(&self, remotes: impl Iterator<Item = &'a RemoteJwks>) {
        for r in remotes {
            let never = {
                let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries.get(&r.uri).is_none_or(|e| e.fetched_at.is_none())
            };
            if never {
                self.refresh_in_background(r);
            }
        }
    }

    fn refresh_in_background(&self, r: &RemoteJwks) {
        let (me, r) = (self.clone(), r.clone());
        // A refresh already under way is joined, not repeated.
        if self.lock_for(&r.uri).try_lock().is_err() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { me.refresh(&r, me.min_refetch).await });
        }
    }

    fn lock_for(&self, uri: &Arc<str>) -> Arc<tokio::sync::Mutex<()>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(uri.clone()).or_default().fetching.clone()
    }

    /// Fetches the set now unless one finished less than `min_age` ago (then it waits for a
    /// fetch under way, if any, and returns). Whether the set is usable afterwards.
    pub async fn refresh(&self, r: &RemoteJwks, min_age: Duration) -> bool {
        let lock = self.lock_for(&r.uri);
        let _fetching = lock.lock().await;
        let recent = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .get(&r.uri)
                .and_then(|e| e.fetched_at)
                .is_some_and(|at| at.elapsed() < min_age)
        };
        if !recent {
            let result = match tokio::time::timeout(r.timeout, fetch(&r.uri)).await {
                Ok(Ok(body)) => Jwks::parse(&body).map_err(|e| format!("the key set {e}")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("no answer within {:?}", r.timeout)),
            };
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = entries.entry(r.uri.clone()).or_default();
            e.fetched_at = Some(Instant::now());
            match result {
                Ok(keys) => {
                    tracing::debug!(uri = %r.uri, keys = keys.len(), "JWKS fetched");
                    e.keys = Some(Arc::new(keys));
                    e.last_error = None;
                }
                Err(why) => {
                    // The last good set stays.
                    tracing::warn!(uri = %r.uri, kept = e.keys.is_some(), "JWKS fetch: {why}");
                    e.last_error = Some(why);
                }
            }
        }
        self.keys(&r.uri).is_some()
    }
}

/// GETs a JWKS document over HTTP/1.1, with TLS for `https` (the system's roots).
async fn fetch(uri: &str) -> Result<String, String> {
    let parsed: http::Uri = uri.parse().map_err(|e| format!("{uri:?}: {e}"))?;
    let https = parsed.scheme_str() == Some("https");
    let host = parsed
        .host()
        .ok_or_else(|| format!("{uri:?} has no host"))?;
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::net::TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let authority = parsed
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.to_string());
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = if https {
        let config = tls_config()?;
        let name = rustls_pki_types::ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {host}:{port}: {e}"))?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{uri} answered {status}"));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading {uri}: {e}"))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|_| format!("{uri} answered a body that is not UTF-8"))
}

async fn send<I>(
    io: I,
    request: http::Request<Empty<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system root certificates to verify the JWKS server".into());
            }
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}
