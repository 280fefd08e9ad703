//! Builders of istiod-shaped xDS resources, for tests and examples.
//!
//! Not a control plane: `mesh-control-plane` translates Istio YAML. These make the minimal
//! resources a test needs, shaped and named the way istiod's grpc generator sends them.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use prost::Message;

use crate::decode::ResourceType;

pub mod ca;
pub mod jwt;

/// Wraps a message in an `Any` with the given type URL.
pub fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

/// The RDS / CDS name istiod uses for a service port: `outbound|PORT|SUBSET|HOST`.
pub fn subset_key(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

fn ads() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn filter(name: &str, type_url: &str) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: type_url.into(),
            value: vec![],
        })),
        ..Default::default()
    }
}

/// A client listener named `name` whose routes come over RDS as `rds`, with istiod's filters
/// (fault, then router).
pub fn listener(name: &str, rds: &str) -> Any {
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: rds.into(),
            },
        )),
        http_filters: vec![
            filter("envoy.filters.http.fault", crate::decode::FAULT_TYPE),
            filter(
                "envoy.filters.http.router",
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            ),
        ],
        ..Default::default()
    };
    let l = listener::Listener {
        name: name.into(),
        api_listener: Some(listener::ApiListener {
            api_listener: Some(any(crate::decode::HCM_TYPE, &manager)),
        }),
        ..Default::default()
    };
    any(ResourceType::Listener.type_url(), &l)
}

/// A route configuration with one virtual host for `domains` whose single `/` route splits
/// across `clusters` by weight (one entry: a plain cluster route).
pub fn route_config(name: &str, domains: &[&str], clusters: &[(&str, u32)]) -> Any {
    let action = match clusters {
        [(c, _)] => route::route_action::ClusterSpecifier::Cluster(c.to_string()),
        many => route::route_action::ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: many
                .iter()
                .map(|(c, w)| route::weighted_cluster::ClusterWeight {
                    name: c.to_string(),
                    weight: Some(UInt32Value { value: *w }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let rc = route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: domains.first().copied().unwrap_or_default().into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![route::Route {
                name: "default".into(),
                r#match: Some(route::RouteMatch {
                    path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::route::Action::Route(route::RouteAction {
                    cluster_specifier: Some(action),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    any(ResourceType::RouteConfiguration.type_url(), &rc)
}

/// An EDS cluster fed by ADS, with the service name equal to the cluster name (as istiod).
pub fn eds_cluster(name: &str) -> Any {
    any(ResourceType::Cluster.type_url(), &eds_cluster_message(name))
}

/// The message behind [`eds_cluster`], for tests that change fields.
pub fn eds_cluster_message(name: &str) -> cluster::Cluster {
    cluster::Cluster {
        name: name.into(),
        alt_stat_name: format!("{name};"),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.into(),
        }),
        ..Default::default()
    }
}

/// A load assignment with the given endpoints in one locality.
pub fn endpoints(cluster_name: &str, addrs: &[std::net::SocketAddr]) -> Any {
    let cla = endpoint::ClusterLoadAssignment {
        cluster_name: cluster_name.into(),
        endpoints: vec![endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality::default()),
            load_balancing_weight: Some(UInt32Value {
                value: addrs.len() as u32,
            }),
            lb_endpoints: addrs
                .iter()
                .map(|a| endpoint::LbEndpoint {
                    health_status: core::HealthStatus::Healthy as i32,
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(core::Address {
                                address: Some(core::address::Address::SocketAddress(
                                    core::SocketAddress {
                                        address: a.ip().to_string(),
                                        port_specifier: Some(
                                            core::socket_address::PortSpecifier::PortValue(
                                                a.port().into(),
                                            ),
                                        ),
                                        ..Default::default()
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    any(ResourceType::ClusterLoadAssignment.type_url(), &cla)
}

/// The transport socket istiod's grpc generator sends for DestinationRule `ISTIO_MUTUAL`: both
/// the current and the deprecated certificate-provider fields, instance `default`, exact SAN
/// matchers, no SNI and no ALPN.
#[allow(deprecated)]
pub fn istio_mutual(sans: &[&str]) -> core::TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use envoy_types::pb::envoy::r#type::matcher::v3 as m;
    let provider = |cert: &str| tls::CertificateProviderPluginInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    let legacy = |cert: &str| tls::common_tls_context::CertificateProviderInstance {
        instance_name: "default".into(),
        certificate_name: cert.into(),
    };
    let ctx = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificate_provider_instance: Some(provider("default")),
            tls_certificate_certificate_provider_instance: Some(legacy("default")),
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::CombinedValidationContext(
                    tls::common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(tls::CertificateValidationContext {
                            ca_certificate_provider_instance: Some(provider("ROOTCA")),
                            match_subject_alt_names: sans
                                .iter()
                                .map(|s| m::StringMatcher {
                                    match_pattern: Some(m::string_matcher::MatchPattern::Exact(
                                        s.to_string(),
                                    )),
                                    ignore_case: false,
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_certificate_provider_instance: Some(legacy("ROOTCA")),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    core::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(any(
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            &ctx,
        ))),
    }
}

/// An EDS cluster with istiod's `ISTIO_MUTUAL` transport socket.
pub fn mtls_cluster(name: &str, sans: &[&str]) -> Any {
    let mut c = eds_cluster_message(name);
    c.transport_socket = Some(istio_mutual(sans));
    any(ResourceType::Cluster.type_url(), &c)
}
