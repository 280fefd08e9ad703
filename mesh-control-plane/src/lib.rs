//! A local control plane for development and tests.
//!
//! This crate will read Istio YAML (ServiceEntry, VirtualService, DestinationRule,
//! PeerAuthentication, AuthorizationPolicy) and serve xDS named and shaped the way istiod's grpc
//! generator serves proxyless clients. Nothing in the data plane depends on it.
#![forbid(unsafe_code)]
