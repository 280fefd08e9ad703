//! mesh's tower layers.
//!
//! [`MeshService`] is the client stack: per request it reads the current
//! [`mesh_core::MeshSnapshot`] from a `watch` channel (no lock held across the request, no
//! wait on the control plane), matches a route, injects faults, mirrors, picks a cluster and
//! an endpoint, and applies timeouts, budgeted retries, circuit breaking and outlier
//! detection. It never depends on `mesh-xds-client`: anything that publishes snapshots can
//! drive it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod body;
mod cluster;
pub mod connector;
pub mod layers;
mod pool;
pub mod service;

pub use body::MeshBody;
pub use service::{ERROR_HEADER, MeshConfig, MeshInfo, MeshService, OVERFLOW_HEADER, Observer};
