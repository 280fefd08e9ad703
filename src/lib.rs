//! mesh: a proxyless service mesh for Rust.
//!
//! Add this one crate, wrap your hyper or tonic clients and servers in its tower layers, and
//! the service joins an Istio (or any xDS) mesh without a sidecar. This facade re-exports the
//! workspace crates:
//! - [`core`]: the validated model and the request-path algorithms (no I/O);
//! - [`xds`]: the xDS client that turns a control plane's resources into snapshots;
//! - [`tower`]: the layers and stacks that apply a snapshot to each request.
#![forbid(unsafe_code)]

pub use mesh_core as core;
pub use mesh_tower as tower;
pub use mesh_xds_client as xds;

pub mod admin;
pub mod client;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod server;

pub use client::{Channel, Client, ClientBuilder, Error};
pub use mesh_tower::server::InboundBody;
pub use server::Server;

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
