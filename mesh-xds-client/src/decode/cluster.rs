//! CDS: EDS clusters with their LB policy, circuit breakers, outlier detection and TLS.

use envoy_types::pb::envoy::config::cluster::v3 as pb;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    UpstreamTlsContext, common_tls_context::ValidationContextType,
};
use mesh_core::error::{ConfigError, FieldError, ResourceKind};
use mesh_core::{
    CircuitBreakerSpec, ClusterSpec, LbPolicySpec, OutlierDetectionSpec, RetryBudgetSpec,
    UpstreamTlsSpec,
};

use super::listener::is_ads;
use super::{opt_duration, string_matcher, unpack};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM_TLS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

type FieldResult<T> = Result<T, FieldError>;

/// Maps a cluster to a spec. Only EDS clusters fed by ADS are supported.
pub fn cluster_spec(c: &pb::Cluster) -> Result<ClusterSpec, ConfigError> {
    let err = |e: FieldError| e.resource(ResourceKind::Cluster, &c.name);
    match &c.cluster_discovery_type {
        Some(pb::cluster::ClusterDiscoveryType::Type(t))
            if *t == pb::cluster::DiscoveryType::Eds as i32 => {}
        _ => {
            return Err(err(FieldError::new(
                "type",
                "only EDS clusters are supported",
            )));
        }
    }
    let eds = c.eds_cluster_config.as_ref();
    if !is_ads(eds.and_then(|e| e.eds_config.as_ref())) {
        return Err(err(FieldError::new(
            "eds_cluster_config.eds_config",
            "must be ads or self",
        )));
    }
    let eds_service_name = eds
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty());
    let lb_policy = lb_policy(c).map_err(err)?;
    let (circuit_breakers, retry_budget) = circuit_breakers(c.circuit_breakers.as_ref());
    let outlier_detection = c
        .outlier_detection
        .as_ref()
        .map(outlier_detection)
        .transpose()
        .map_err(|e| err(e.within("outlier_detection")))?;
    let tls = c
        .transport_socket
        .as_ref()
        .map(tls)
        .transpose()
        .map_err(|e| err(e.within("transport_socket")))?;
    if !c.transport_socket_matches.is_empty() {
        return Err(err(FieldError::new(
            "transport_socket_matches",
            "are not supported",
        )));
    }
    let common = c.common_lb_config.as_ref();
    let panic_threshold_percent = common
        .and_then(|l| l.healthy_panic_threshold.as_ref())
        .map(|p| p.value)
        .map(|v| {
            if (0.0..=100.0).contains(&v) {
                Ok(v.round() as u32)
            } else {
                Err(err(FieldError::new(
                    "common_lb_config.healthy_panic_threshold",
                    format!("{v} is not in 0..=100"),
                )))
            }
        })
        .transpose()?;
    let locality_weighted = matches!(
        common.and_then(|l| l.locality_config_specifier.as_ref()),
        Some(pb::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    );
    Ok(ClusterSpec {
        name: c.name.clone(),
        eds_service_name,
        lb_policy,
        circuit_breakers,
        outlier_detection,
        retry_budget,
        tls,
        locality_weighted,
        panic_threshold_percent,
        connect_timeout: opt_duration(c.connect_timeout.as_ref(), "connect_timeout")
            .map_err(err)?,
    })
}

fn lb_policy(c: &pb::Cluster) -> FieldResult<LbPolicySpec> {
    use pb::cluster::{LbConfig, LbPolicy};
    let config = c.lb_config.as_ref();
    Ok(match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => LbPolicySpec::RoundRobin,
        Ok(LbPolicy::Random) => LbPolicySpec::Random,
        Ok(LbPolicy::LeastRequest) => LbPolicySpec::LeastRequest {
            choice_count: match config {
                Some(LbConfig::LeastRequestLbConfig(l)) => l.choice_count.as_ref().map(|c| c.value),
                _ => None,
            },
        },
        Ok(LbPolicy::RingHash) => {
            let (mut min, mut max) = (None, None);
            if let Some(LbConfig::RingHashLbConfig(r)) = config {
                if r.hash_function != pb::cluster::ring_hash_lb_config::HashFunction::XxHash as i32
                {
                    return Err(FieldError::new(
                        "ring_hash_lb_config.hash_function",
                        "only XX_HASH is supported",
                    ));
                }
                min = r.minimum_ring_size.as_ref().map(|v| v.value);
                max = r.maximum_ring_size.as_ref().map(|v| v.value);
            }
            LbPolicySpec::RingHash {
                min_ring_size: min,
                max_ring_size: max,
            }
        }
        Ok(LbPolicy::Maglev) => LbPolicySpec::Maglev {
            table_size: match config {
                Some(LbConfig::MaglevLbConfig(m)) => m.table_size.as_ref().map(|v| v.value),
                _ => None,
            },
        },
        _ => {
            return Err(FieldError::new(
                "lb_policy",
                format!("unsupported policy {}", c.lb_policy),
            ));
        }
    })
}

/// The DEFAULT-priority thresholds (the first entry with priority DEFAULT).
fn circuit_breakers(
    cb: Option<&pb::CircuitBreakers>,
) -> (CircuitBreakerSpec, Option<RetryBudgetSpec>) {
    let t = cb.and_then(|cb| cb.thresholds.iter().find(|t| t.priority == 0));
    let Some(t) = t else {
        return (CircuitBreakerSpec::default(), None);
    };
    let v = |x: Option<&envoy_types::pb::google::protobuf::UInt32Value>| x.map(|x| x.value);
    let budget = t.retry_budget.as_ref().map(|b| RetryBudgetSpec {
        retry_percent: b.budget_percent.as_ref().map(|p| p.value),
        ..Default::default()
    });
    (
        CircuitBreakerSpec {
            max_connections: v(t.max_connections.as_ref()),
            max_pending_requests: v(t.max_pending_requests.as_ref()),
            max_requests: v(t.max_requests.as_ref()),
            max_retries: v(t.max_retries.as_ref()),
        },
        budget,
    )
}

fn outlier_detection(o: &pb::OutlierDetection) -> FieldResult<OutlierDetectionSpec> {
    let v =
        |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>| x.as_ref().map(|x| x.value);
    Ok(OutlierDetectionSpec {
        interval: opt_duration(o.interval.as_ref(), "interval")?,
        base_ejection_time: opt_duration(o.base_ejection_time.as_ref(), "base_ejection_time")?,
        max_ejection_time: opt_duration(o.max_ejection_time.as_ref(), "max_ejection_time")?,
        max_ejection_percent: v(&o.max_ejection_percent),
        consecutive_5xx: v(&o.consecutive_5xx),
        enforcing_consecutive_5xx: v(&o.enforcing_consecutive_5xx),
        consecutive_gateway_failure: v(&o.consecutive_gateway_failure),
        enforcing_consecutive_gateway_failure: v(&o.enforcing_consecutive_gateway_failure),
        enforcing_success_rate: v(&o.enforcing_success_rate),
        success_rate_minimum_hosts: v(&o.success_rate_minimum_hosts),
        success_rate_request_volume: v(&o.success_rate_request_volume),
        success_rate_stdev_factor: v(&o.success_rate_stdev_factor),
        failure_percentage_threshold: v(&o.failure_percentage_threshold),
        enforcing_failure_percentage: v(&o.enforcing_failure_percentage),
        failure_percentage_minimum_hosts: v(&o.failure_percentage_minimum_hosts),
        failure_percentage_request_volume: v(&o.failure_percentage_request_volume),
    })
}

// istiod sends both the current and the deprecated provider fields (for older gRPC).
#[allow(deprecated)]
fn tls(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> FieldResult<UpstreamTlsSpec> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    if ts.name != TLS_SOCKET {
        return Err(FieldError::new(
            "name",
            format!("unsupported transport socket {:?}", ts.name),
        ));
    }
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(FieldError::new("typed_config", "is not set"));
    };
    let ctx: UpstreamTlsContext = unpack(any, UPSTREAM_TLS_TYPE, "typed_config")?;
    let at = |f: &str| format!("typed_config.common_tls_context.{f}");
    let refuse = |f: &str, why: &str| Err(FieldError::new(at(f), why.to_string()));
    let common = ctx.common_tls_context.unwrap_or_default();
    // gRFC A29: what a client cannot honour is a NACK, never silently dropped.
    if common.tls_params.is_some() {
        return refuse("tls_params", "is not supported");
    }
    if common.custom_handshaker.is_some() {
        return refuse("custom_handshaker", "is not supported");
    }
    if common.custom_tls_certificate_selector.is_some() {
        return refuse("custom_tls_certificate_selector", "is not supported");
    }
    let identity_provider = super::identity_instance(&common);
    if identity_provider.is_none()
        && (!common.tls_certificates.is_empty()
            || !common.tls_certificate_sds_secret_configs.is_empty())
    {
        return refuse(
            "tls_certificates",
            "inline and SDS certificates are not supported; use tls_certificate_provider_instance",
        );
    }
    let (validation, deprecated_root) = match &common.validation_context_type {
        Some(ValidationContextType::ValidationContext(v)) => (v.clone(), None),
        Some(ValidationContextType::CombinedValidationContext(c)) => {
            if c.validation_context_sds_secret_config.is_some() {
                return refuse(
                    "combined_validation_context.validation_context_sds_secret_config",
                    "is not supported",
                );
            }
            (
                c.default_validation_context.clone().unwrap_or_default(),
                c.validation_context_certificate_provider_instance
                    .as_ref()
                    .map(|p| p.instance_name.clone()),
            )
        }
        Some(ValidationContextType::ValidationContextCertificateProviderInstance(p)) => {
            (Default::default(), Some(p.instance_name.clone()))
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(_)) => {
            return refuse("validation_context_sds_secret_config", "is not supported");
        }
        Some(ValidationContextType::ValidationContextCertificateProvider(_)) => {
            return refuse(
                "validation_context_certificate_provider",
                "is not supported; use ca_certificate_provider_instance",
            );
        }
        None => return refuse("validation_context_type", "has no validation context"),
    };
    let v = &validation;
    for (set, field) in [
        (
            !v.verify_certificate_spki.is_empty(),
            "verify_certificate_spki",
        ),
        (
            !v.verify_certificate_hash.is_empty(),
            "verify_certificate_hash",
        ),
        (
            v.require_signed_certificate_timestamp
                .as_ref()
                .is_some_and(|b| b.value),
            "require_signed_certificate_timestamp",
        ),
        (v.crl.is_some(), "crl"),
        (
            v.custom_validator_config.is_some(),
            "custom_validator_config",
        ),
        (v.system_root_certs.is_some(), "system_root_certs"),
        (
            !v.match_typed_subject_alt_names.is_empty(),
            "match_typed_subject_alt_names",
        ),
    ] {
        if set {
            return refuse(&format!("validation_context.{field}"), "is not supported");
        }
    }
    let root_provider = v
        .ca_certificate_provider_instance
        .as_ref()
        .map(|p| p.instance_name.clone())
        .or(deprecated_root);
    if root_provider.is_none() {
        return refuse(
            "validation_context.ca_certificate_provider_instance",
            "is required (the roots that verify the server)",
        );
    }
    let san_matchers = v
        .match_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            string_matcher(m).map_err(|e| {
                e.within(at(&format!(
                    "validation_context.match_subject_alt_names[{i}]"
                )))
            })
        })
        .collect::<FieldResult<_>>()?;
    Ok(UpstreamTlsSpec {
        sni: Some(ctx.sni).filter(|s| !s.is_empty()),
        san_matchers,
        identity_provider,
        root_provider,
    })
}
