//! mesh's xDS client.
//!
//! This crate will hold the gRPC xDS bootstrap loader, one ADS stream (SotW and Delta) to istiod
//! or any xDS control plane, validation of Listener/RouteConfiguration/Cluster/
//! ClusterLoadAssignment resources into the [`mesh_core`] model with ACK/NACK, reconnects, and a
//! last-known-good snapshot cache. It publishes `Arc<mesh_core::MeshSnapshot>` through a
//! `tokio::sync::watch` channel; it never depends on `mesh-tower`.
#![forbid(unsafe_code)]
