//! Clusters (CDS): load-balancing policy, circuit breakers, outlier detection, retry budget, TLS.

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::{CircuitBreakerSpec, Thresholds};
use crate::budget::{RetryBudgetConfig, RetryBudgetSpec};
use crate::error::{ConfigError, FieldError, ResourceKind};
use crate::lb::{LbConfig, LbPolicySpec, PickerOptions};
use crate::matcher::{StringMatcher, StringMatcherSpec};
use crate::outlier::{OutlierDetectionConfig, OutlierDetectionSpec};

/// An unvalidated upstream TLS context.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTlsSpec {
    /// SNI to send (at most 255 bytes).
    pub sni: Option<String>,
    /// Accept the peer if any SAN matches any of these; empty accepts any verified peer.
    pub san_matchers: Vec<StringMatcherSpec>,
    /// Certificate-provider instance for our identity (Istio: `default`).
    pub identity_provider: Option<String>,
    /// Certificate-provider instance for the roots (Istio: `default`, name `ROOTCA`).
    pub root_provider: Option<String>,
}

/// A validated upstream TLS context.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// SNI to send.
    pub sni: Option<Box<str>>,
    /// SAN matchers.
    pub san_matchers: Box<[StringMatcher]>,
    /// Identity certificate-provider instance.
    pub identity_provider: Option<Box<str>>,
    /// Root certificate-provider instance.
    pub root_provider: Option<Box<str>>,
}

/// An unvalidated CDS cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClusterSpec {
    /// Name, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// EDS service name; `None` means the cluster name.
    pub eds_service_name: Option<String>,
    /// Load-balancing policy.
    pub lb_policy: LbPolicySpec,
    /// Circuit-breaker thresholds.
    pub circuit_breakers: CircuitBreakerSpec,
    /// Outlier detection; `None` disables it.
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Retry budget; `None` uses the default budget (20% + 10/s over 10 s).
    pub retry_budget: Option<RetryBudgetSpec>,
    /// Upstream TLS; `None` is plaintext.
    pub tls: Option<UpstreamTlsSpec>,
    /// Pick a locality by weight first.
    pub locality_weighted: bool,
    /// Panic threshold in percent; `None` means 50.
    pub panic_threshold_percent: Option<u32>,
    /// Connection timeout; `None` means 5 s.
    pub connect_timeout: Option<Duration>,
}

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    name: Arc<str>,
    eds_service_name: Arc<str>,
    lb: LbConfig,
    thresholds: Thresholds,
    outlier_detection: Option<OutlierDetectionConfig>,
    retry_budget: RetryBudgetConfig,
    tls: Option<UpstreamTls>,
    picker_options: PickerOptions,
    connect_timeout: Duration,
}

impl Cluster {
    /// Validates a spec.
    pub fn new(spec: &ClusterSpec) -> Result<Self, ConfigError> {
        // Its regexes share one budget (see `matcher::REGEX_BUDGET_PER_RESOURCE`).
        crate::matcher::with_regex_budget(|| Self::validate(spec))
    }

    fn validate(spec: &ClusterSpec) -> Result<Self, ConfigError> {
        let err = |e: FieldError| e.resource(ResourceKind::Cluster, &spec.name);
        if spec.name.is_empty() {
            return Err(err(FieldError::new("name", "must not be empty")));
        }
        let lb = LbConfig::new(&spec.lb_policy).map_err(err)?;
        let outlier_detection = spec
            .outlier_detection
            .as_ref()
            .map(OutlierDetectionConfig::new)
            .transpose()
            .map_err(|e| err(e.within("outlier_detection")))?;
        let retry_budget = RetryBudgetConfig::new(&spec.retry_budget.unwrap_or_default())
            .map_err(|e| err(e.within("circuit_breakers.retry_budget")))?;
        let tls = match &spec.tls {
            None => None,
            Some(t) => {
                if t.sni.as_ref().is_some_and(|s| s.len() > 255) {
                    return Err(err(FieldError::new(
                        "transport_socket.sni",
                        "is longer than 255 bytes",
                    )));
                }
                let san_matchers = t
                    .san_matchers
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        StringMatcher::new(m).map_err(|e| {
                            err(e.within(format!(
                                "transport_socket.validation_context.match_subject_alt_names[{i}]"
                            )))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Some(UpstreamTls {
                    sni: t.sni.as_deref().map(Into::into),
                    san_matchers,
                    identity_provider: t.identity_provider.as_deref().map(Into::into),
                    root_provider: t.root_provider.as_deref().map(Into::into),
                })
            }
        };
        let panic_threshold = spec.panic_threshold_percent.unwrap_or(50);
        if panic_threshold > 100 {
            return Err(err(FieldError::new(
                "common_lb_config.healthy_panic_threshold",
                format!("{panic_threshold} is greater than 100"),
            )));
        }
        let connect_timeout = spec.connect_timeout.unwrap_or(Duration::from_secs(5));
        if connect_timeout.is_zero() {
            return Err(err(FieldError::new(
                "connect_timeout",
                "must be greater than 0",
            )));
        }
        Ok(Self {
            name: spec.name.as_str().into(),
            eds_service_name: spec
                .eds_service_name
                .as_deref()
                .filter(|s| !s.is_empty())
                .unwrap_or(&spec.name)
                .into(),
            lb,
            thresholds: Thresholds::new(&spec.circuit_breakers),
            outlier_detection,
            retry_budget,
            tls,
            picker_options: PickerOptions {
                locality_weighted: spec.locality_weighted,
                panic_threshold,
            },
            connect_timeout,
        })
    }

    /// The cluster name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The EDS resource that holds its endpoints.
    pub fn eds_service_name(&self) -> &Arc<str> {
        &self.eds_service_name
    }

    /// The load-balancing policy.
    pub fn lb(&self) -> &LbConfig {
        &self.lb
    }

    /// Circuit-breaker thresholds.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Outlier detection, if enabled.
    pub fn outlier_detection(&self) -> Option<&OutlierDetectionConfig> {
        self.outlier_detection.as_ref()
    }

    /// The retry budget.
    pub fn retry_budget(&self) -> &RetryBudgetConfig {
        &self.retry_budget
    }

    /// Upstream TLS, if any.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// Locality weighting and panic threshold for pickers.
    pub fn picker_options(&self) -> PickerOptions {
        self.picker_options
    }

    /// The connection timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::MAX_RING_SIZE;

    #[test]
    fn defaults() {
        let c = Cluster::new(&ClusterSpec {
            name: "outbound|9080|v1|reviews.default.svc.cluster.local".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            &**c.eds_service_name(),
            "outbound|9080|v1|reviews.default.svc.cluster.local"
        );
        assert_eq!(c.lb(), &LbConfig::RoundRobin);
        assert_eq!(c.thresholds().max_requests, 1024);
        assert_eq!(c.thresholds().max_retries, 3);
        assert!(c.outlier_detection().is_none());
        assert_eq!(c.retry_budget().ratio(), 0.2);
        assert_eq!(c.picker_options(), PickerOptions::default());
        assert_eq!(c.connect_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn errors_name_cluster_and_field() {
        let e = Cluster::new(&ClusterSpec {
            name: "c".into(),
            lb_policy: LbPolicySpec::RingHash {
                min_ring_size: Some(MAX_RING_SIZE * 2),
                max_ring_size: None,
            },
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster \"c\": ring_hash_lb_config.minimum_ring_size: 16777216 is not in 1..=8388608"
        );
        let e = Cluster::new(&ClusterSpec {
            name: "c".into(),
            outlier_detection: Some(OutlierDetectionSpec {
                enforcing_success_rate: Some(200),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cluster \"c\": outlier_detection.enforcing_success_rate: 200 is greater than 100"
        );
        let e = Cluster::new(&ClusterSpec {
            name: "c".into(),
            tls: Some(UpstreamTlsSpec {
                san_matchers: vec![StringMatcherSpec::regex("(")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with(
            "cluster \"c\": transport_socket.validation_context.match_subject_alt_names[0].safe_regex: invalid regex"
        ));
    }

    #[test]
    fn san_matching() {
        let c = Cluster::new(&ClusterSpec {
            name: "c".into(),
            tls: Some(UpstreamTlsSpec {
                san_matchers: vec![
                    StringMatcherSpec::exact("spiffe://cluster.local/ns/default/sa/reviews"),
                    StringMatcherSpec::prefix("spiffe://cluster.local/ns/prod/"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let tls = c.tls().unwrap();
        let uris = |u: &[&str]| crate::SubjectAltNames {
            uri: u.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(tls.accepts(&uris(&[
            "dns.example",
            "spiffe://cluster.local/ns/default/sa/reviews"
        ])));
        assert!(tls.accepts(&uris(&["spiffe://cluster.local/ns/prod/sa/x"])));
        assert!(!tls.accepts(&uris(&["spiffe://cluster.local/ns/default/sa/other", ""])));
    }
}
