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
pub mod client;
pub mod decode;
pub mod state;
#[doc(hidden)]
pub mod testing;

pub use bootstrap::{Bootstrap, BootstrapError, IstiodBootstrap};
pub use client::{Backoff, Health, NotReady, StartError, XdsClient, XdsClientBuilder, XdsStatus};
pub use decode::ResourceType;
pub use state::{Protocol, ResourceState, ResourceStatus};
