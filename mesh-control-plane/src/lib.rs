//! A local control plane for development and tests.
//!
//! Reads a directory of Istio YAML (`ServiceEntry`, `WorkloadEntry`, `VirtualService`,
//! `DestinationRule`, `PeerAuthentication`, `AuthorizationPolicy`) and serves xDS named and
//! shaped the way istiod's grpc generator serves proxyless clients: client listeners
//! `host:port` (API listeners, HttpConnectionManager → RDS), route configurations and clusters
//! `outbound|PORT|SUBSET|HOST`, EDS with localities, weights and the `istio` filter metadata.
//!
//! Where istiod's grpc generator leaves out something mesh's client supports, this control
//! plane sends it anyway, shaped as istiod shapes it for Envoy sidecars:
//! - outlier detection (`outlierDetection`, with Istio's mapping: `consecutiveErrors` and
//!   `consecutiveGatewayErrors` are gateway failures, success-rate ejection off, panic
//!   threshold from `minHealthPercent`, default 0);
//! - request mirroring (`mirror`, `mirrorPercentage`);
//! - every connection-pool threshold (istiod sends only `http2MaxRequests`), unlimited by
//!   default as for sidecars;
//! - `RANDOM` load balancing;
//! - endpoint labels as string fields of the `istio` filter metadata, next to `workload`.
//!
//! Nothing in the data plane depends on this crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod inbound;
pub mod istio;
pub mod translate;

pub use config::{ConfigError, IstioConfig};
pub use translate::{Resources, translate};
pub mod server;
pub mod watch;

pub use server::{ClientStatus, ControlPlane};
