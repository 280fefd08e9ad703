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

pub mod admin;
pub mod body;
pub mod client;
mod cluster;
pub mod connector;
pub mod layers;
pub mod observe;
mod pool;
pub mod protocol;
pub mod reply;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use body::MeshBody;
pub use client::{ClusterRuntime, MeshConfig, MeshService, ResponseFuture};
pub use connector::{ConnectTarget, MeshConnection, MeshConnector, Negotiated, TcpConnector};
pub use observe::{MeshInfo, Observer, RequestObserver};
pub use protocol::{ERROR_HEADER, FLAGS_HEADER, OVERFLOW_HEADER};
pub use reply::{LocalReason, ResponseFlags};
pub use server::{MeshServer, PeerInfo, ServingState};
pub use tls::{MeshStream, TlsConnectError, TlsConnector};
