//! Istio's CA (`istio.v1.auth.IstioCertificateService`), for workloads without istio-agent.

/// The `plugin_name` of a certificate-provider instance served by Istio's CA.
pub const PLUGIN_NAME: &str = "istio_ca";
