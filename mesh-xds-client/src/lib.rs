//! mesh's xDS client.
//!
//! Turns a control plane's resources into the [`mesh_core::MeshSnapshot`] that the tower stack
//! reads: the gRPC xDS bootstrap ([`bootstrap`]), resource validation into `mesh-core` types
//! ([`decode`]), and the ADS protocol. Snapshots are published through a
//! `tokio::sync::watch`; this crate never depends on `mesh-tower`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
pub mod cache;
pub mod certs;
mod channel;
pub mod client;
pub mod csds;
pub mod decode;
pub mod dump;
pub mod state;
#[doc(hidden)]
pub mod testing;

/// The crypto provider every TLS connection and key of this crate uses (ring, as tonic's).
pub fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

pub use bootstrap::{Bootstrap, BootstrapError, IstiodBootstrap};
pub use client::{Backoff, Health, NotReady, StartError, XdsClient, XdsClientBuilder, XdsStatus};
pub use decode::ResourceType;
pub use state::{Protocol, ResourceState, ResourceStatus};
