//! mesh's tower layers.
//!
//! This crate will hold the client and server stacks for hyper and tonic: per request it reads
//! the current [`mesh_core`] snapshot from a `watch` channel, matches a route, injects faults,
//! picks a cluster and an endpoint, and applies timeouts, budgeted retries, circuit breaking and
//! outlier detection. It never depends on `mesh-xds-client`.
#![forbid(unsafe_code)]
