//! The gRPC channel to an xDS server (and to Istio's CA on the same port): the transport the
//! bootstrap's `channel_creds` describe, and the per-call metadata (bearer token, headers).

use std::time::Duration;

use hyper_util::rt::TokioIo;
use mesh_core::WorkloadCert;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::bootstrap::{CallCredentials, ChannelCredentials, ServerAddress, XdsServer};

/// A workload certificate as tonic takes it (PEM).
fn pem_identity(id: &WorkloadCert) -> Identity {
    let chain: String = id
        .chain()
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    let (tag, der) = match id.key() {
        rustls::pki_types::PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        rustls::pki_types::PrivateKeyDer::Sec1(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => ("PRIVATE KEY", &[][..]),
    };
    Identity::from_pem(chain, pem::encode(&pem::Pem::new(tag, der.to_vec())))
}

/// Metadata for the stream: bearer tokens (re-read on every connect) and bootstrap headers.
pub(crate) fn call_metadata(server: &XdsServer) -> Result<tonic::metadata::MetadataMap, String> {
    // Checked when the bootstrap is parsed too; this holds for servers built by hand.
    if server.sends_token_in_clear() {
        return Err(format!(
            "refusing to send a bearer token to {} over an insecure channel",
            server.address
        ));
    }
    let mut md = tonic::metadata::MetadataMap::new();
    for c in &server.call_credentials {
        match c {
            CallCredentials::JwtTokenFile(path) => {
                let token = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
                let mut value: tonic::metadata::MetadataValue<_> =
                    format!("Bearer {}", token.trim()).parse().map_err(|_| {
                        format!(
                            "the token in {} is not a valid header value",
                            path.display()
                        )
                    })?;
                // Kept out of HPACK's dynamic table and of debug output.
                value.set_sensitive(true);
                md.insert("authorization", value);
            }
        }
    }
    for (k, v) in &server.headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse(),
        ) {
            md.insert(k, v);
        }
    }
    Ok(md)
}

pub(crate) async fn connect(
    server: &XdsServer,
    identity: Option<&WorkloadCert>,
) -> Result<Channel, String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot connect to {}: {e}", server.address);
    match &server.address {
        ServerAddress::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .map_err(|e| fail(&source_chain(&e)))
        }
        ServerAddress::Tcp { host, port } => {
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let tls = match &server.channel_credentials {
                ChannelCredentials::Insecure => None,
                ChannelCredentials::Tls {
                    ca_certificate_file,
                    certificate_file,
                    private_key_file,
                    ..
                } => {
                    let mut cfg = ClientTlsConfig::new().domain_name(
                        server
                            .tls_server_name
                            .clone()
                            .unwrap_or_else(|| host.clone()),
                    );
                    cfg = match ca_certificate_file {
                        Some(ca) => {
                            let pem = std::fs::read(ca).map_err(|e| {
                                format!("cannot read the CA file {}: {e}", ca.display())
                            })?;
                            cfg.ca_certificate(Certificate::from_pem(pem))
                        }
                        None => cfg.with_native_roots(),
                    };
                    if let (Some(c), Some(k)) = (certificate_file, private_key_file) {
                        let cert = std::fs::read(c)
                            .map_err(|e| format!("cannot read {}: {e}", c.display()))?;
                        let key = std::fs::read(k)
                            .map_err(|e| format!("cannot read {}: {e}", k.display()))?;
                        cfg = cfg.identity(Identity::from_pem(cert, key));
                    } else if let Some(id) = identity {
                        // The workload certificate, once there is one: istiod then
                        // authenticates this client by it (mTLS), as it does istio-agent.
                        cfg = cfg.identity(pem_identity(id));
                    }
                    Some(cfg)
                }
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut ep = Endpoint::from_shared(format!("{scheme}://{authority}"))
                .map_err(|e| fail(&e))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30));
            if let Some(tls) = tls {
                ep = ep.tls_config(tls).map_err(|e| fail(&source_chain(&e)))?;
            }
            ep.connect().await.map_err(|e| fail(&source_chain(&e)))
        }
    }
}

/// An error with its `source()` chain, for messages users can act on.
pub(crate) fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_sensitive_and_never_sent_in_the_clear_off_the_machine() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret-token\n").unwrap();
        let mut server = XdsServer {
            server_uri: "127.0.0.1:15010".into(),
            address: ServerAddress::parse("127.0.0.1:15010").unwrap(),
            channel_credentials: ChannelCredentials::Insecure,
            call_credentials: vec![CallCredentials::JwtTokenFile(token)],
            server_features: vec![],
            tls_server_name: None,
            headers: vec![],
        };
        let md = call_metadata(&server).unwrap();
        let auth = md.get("authorization").unwrap();
        assert!(auth.is_sensitive());
        assert_eq!(format!("{auth:?}"), "Sensitive");
        server.address = ServerAddress::parse("10.0.0.7:15010").unwrap();
        assert_eq!(
            call_metadata(&server).unwrap_err(),
            "refusing to send a bearer token to 10.0.0.7:15010 over an insecure channel"
        );
    }
}
