use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3 as cpb;
use envoy_types::pb::envoy::config::listener::v3 as lpb;
use envoy_types::pb::envoy::config::route::v3 as rpb;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault_pb;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::r#type::matcher::v3 as mpb;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use mesh_core::matcher::{HeaderMatchSpec, PathMatchSpec, StringPattern};
use mesh_core::route::{DestinationSpec, FaultAbortKind, FaultDelayKind};
use mesh_core::{LbPolicySpec, RouteActionSpec, RouteSourceSpec};

use super::*;
use crate::testing;

fn err(ty: ResourceType, any: &Any) -> String {
    decode(ty, any).unwrap_err().message
}

fn hcm_listener(name: &str, m: hcm::HttpConnectionManager) -> Any {
    testing::any(
        ResourceType::Listener.type_url(),
        &lpb::Listener {
            name: name.into(),
            api_listener: Some(lpb::ApiListener {
                api_listener: Some(testing::any(HCM_TYPE, &m)),
            }),
            ..Default::default()
        },
    )
}

#[test]
fn listeners() {
    let ok = testing::listener("ui:80", "outbound|80||ui");
    let Decoded::Listener(l) = decode(ResourceType::Listener, &ok).unwrap() else {
        panic!()
    };
    assert!(l.fault_filter());
    assert!(matches!(l.routes(), mesh_core::RouteSource::Rds(n) if &**n == "outbound|80||ui"));

    let socket = testing::any(
        ResourceType::Listener.type_url(),
        &lpb::Listener {
            name: "in".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        err(ResourceType::Listener, &socket),
        "listener \"in\": api_listener: is not set: only API listeners are supported on clients"
    );

    let no_router = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: None,
                route_config_name: "r".into(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "x".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/some.Unknown".into(),
                value: vec![],
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        err(
            ResourceType::Listener,
            &hcm_listener("l", no_router.clone())
        ),
        "listener \"l\": api_listener.http_filters[0]: filter \"x\" has unsupported type \"type.googleapis.com/some.Unknown\""
    );
    let mut optional = no_router;
    optional.http_filters[0].is_optional = true;
    optional.http_filters.push(hcm::HttpFilter {
        name: "router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router".into(),
            value: vec![],
        })),
        ..Default::default()
    });
    assert_eq!(
        err(ResourceType::Listener, &hcm_listener("l", optional)),
        "listener \"l\": api_listener.rds.config_source: must be ads or self"
    );

    let wrong = Any {
        type_url: ResourceType::Cluster.type_url().into(),
        value: vec![],
    };
    assert!(
        err(ResourceType::Listener, &wrong).starts_with("LDS response holds a resource of type")
    );
    let garbage = Any {
        type_url: ResourceType::Listener.type_url().into(),
        value: vec![0xff, 0xff],
    };
    assert!(err(ResourceType::Listener, &garbage).starts_with("listener resource does not decode"));
}

#[test]
fn inline_route_config_errors_are_attributed_to_the_listener() {
    let m = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rpb::RouteConfiguration {
                name: "inline".into(),
                virtual_hosts: vec![rpb::VirtualHost {
                    domains: vec!["a*b".into()],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    .into(),
                value: vec![],
            })),
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = err(ResourceType::Listener, &hcm_listener("l", m));
    assert!(
        e.starts_with(
            "listener \"l\": api_listener.route_config.virtual_hosts[0].domains[0]: \"a*b\""
        ),
        "{e}"
    );
}

fn route(action: Option<rpb::route::Action>, m: rpb::RouteMatch) -> rpb::Route {
    rpb::Route {
        name: "r".into(),
        r#match: Some(m),
        action,
        ..Default::default()
    }
}

fn prefix(p: &str) -> rpb::RouteMatch {
    rpb::RouteMatch {
        path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn to(c: &str) -> Option<rpb::route::Action> {
    Some(rpb::route::Action::Route(rpb::RouteAction {
        cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }))
}

#[test]
#[allow(deprecated)]
fn routes_map_matchers_actions_retries_and_faults() {
    let mut m = prefix("/orders");
    m.case_sensitive = Some(envoy_types::pb::google::protobuf::BoolValue { value: false });
    m.headers = vec![
        rpb::HeaderMatcher {
            name: "version".into(),
            header_match_specifier: Some(rpb::header_matcher::HeaderMatchSpecifier::ExactMatch(
                "beta".into(),
            )),
            ..Default::default()
        },
        rpb::HeaderMatcher {
            name: "x-id".into(),
            header_match_specifier: Some(rpb::header_matcher::HeaderMatchSpecifier::StringMatch(
                mpb::StringMatcher {
                    match_pattern: Some(mpb::string_matcher::MatchPattern::Prefix("a".into())),
                    ignore_case: true,
                },
            )),
            invert_match: true,
            ..Default::default()
        },
    ];
    let mut action = rpb::RouteAction {
        cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster("c".into())),
        timeout: Some(PbDuration {
            seconds: 3,
            nanos: 0,
        }),
        retry_policy: Some(rpb::RetryPolicy {
            retry_on: "5xx,connect-failure".into(),
            num_retries: Some(UInt32Value { value: 3 }),
            per_try_timeout: Some(PbDuration {
                seconds: 2,
                nanos: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    action
        .request_mirror_policies
        .push(rpb::route_action::RequestMirrorPolicy {
            cluster: "shadow".into(),
            runtime_fraction: Some(
                envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent {
                    default_value: Some(FractionalPercent {
                        numerator: 10,
                        denominator: 0,
                    }),
                    runtime_key: String::new(),
                },
            ),
            ..Default::default()
        });
    let f = fault_pb::HttpFault {
        abort: Some(fault_pb::FaultAbort {
            error_type: Some(fault_pb::fault_abort::ErrorType::HttpStatus(400)),
            percentage: Some(FractionalPercent {
                numerator: 100_000,
                denominator: 2,
            }),
        }),
        delay: Some(common_fault::FaultDelay {
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                PbDuration {
                    seconds: 0,
                    nanos: 5_000_000,
                },
            )),
            percentage: None,
        }),
        ..Default::default()
    };
    let mut r = route(Some(rpb::route::Action::Route(action)), m);
    r.typed_per_filter_config = HashMap::from([(
        "envoy.filters.http.fault".to_string(),
        testing::any(FAULT_TYPE, &f),
    )]);
    let redirect = route(
        Some(rpb::route::Action::Redirect(Default::default())),
        prefix("/old"),
    );
    let rc = rpb::RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![redirect, r],
            ..Default::default()
        }],
        ..Default::default()
    };
    let spec = route_config_spec(&rc).unwrap();
    let routes = &spec.virtual_hosts[0].routes;
    assert_eq!(routes.len(), 1, "the redirect route is ignored, not NACKed");
    let r = &routes[0];
    assert_eq!(r.matcher.path, PathMatchSpec::Prefix("/orders".into()));
    assert!(!r.matcher.case_sensitive);
    assert!(
        matches!(&r.matcher.headers[0].matcher, HeaderMatchSpec::String(s) if s.pattern == StringPattern::Exact("beta".into()))
    );
    assert!(r.matcher.headers[1].invert);
    assert!(matches!(&r.matcher.headers[1].matcher, HeaderMatchSpec::String(s) if s.ignore_case));
    let RouteActionSpec::Forward(a) = &r.action else {
        panic!()
    };
    assert_eq!(a.destination, DestinationSpec::Cluster("c".into()));
    assert_eq!(a.timeouts.timeout, Some(std::time::Duration::from_secs(3)));
    let retry = a.retry_policy.as_ref().unwrap();
    assert_eq!(
        (retry.retry_on.as_str(), retry.num_retries),
        ("5xx,connect-failure", Some(3))
    );
    assert_eq!(
        a.mirrors[0].fraction,
        Some(mesh_core::Fraction::percent(10))
    );
    let fault = r.fault.unwrap();
    assert_eq!(fault.abort.unwrap().kind, FaultAbortKind::Http(400));
    assert_eq!(fault.abort.unwrap().percentage.as_per_million(), 100_000);
    assert_eq!(
        fault.delay.unwrap().kind,
        FaultDelayKind::Fixed(std::time::Duration::from_millis(5))
    );
    assert_eq!(
        fault.delay.unwrap().percentage.as_per_million(),
        0,
        "unset percentage means 0%"
    );
}

#[test]
fn route_errors() {
    let no_path = route(to("c"), rpb::RouteMatch::default());
    let rc = rpb::RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            domains: vec!["*".into()],
            routes: vec![no_path],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        route_config_spec(&rc).unwrap_err().to_string(),
        "route configuration \"rc\": virtual_hosts[0].routes[0].match.path_specifier: is not set"
    );
    let neg = rpb::RouteAction {
        cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster("c".into())),
        timeout: Some(PbDuration {
            seconds: -1,
            nanos: 0,
        }),
        ..Default::default()
    };
    let rc = rpb::RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            domains: vec!["*".into()],
            routes: vec![route(Some(rpb::route::Action::Route(neg)), prefix("/"))],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        route_config_spec(&rc).unwrap_err().to_string(),
        "route configuration \"rc\": virtual_hosts[0].routes[0].route.timeout: -1s 0ns is not a valid non-negative duration"
    );
}

#[test]
fn clusters_map_policies_and_reject_what_they_cannot_serve() {
    let mut c = testing::eds_cluster_message("c");
    c.lb_policy = cpb::cluster::LbPolicy::RingHash as i32;
    c.lb_config = Some(cpb::cluster::LbConfig::RingHashLbConfig(
        cpb::cluster::RingHashLbConfig {
            minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value { value: 2048 }),
            ..Default::default()
        },
    ));
    c.circuit_breakers = Some(cpb::CircuitBreakers {
        thresholds: vec![cpb::circuit_breakers::Thresholds {
            max_requests: Some(UInt32Value { value: 100 }),
            max_pending_requests: Some(UInt32Value { value: 10 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c.outlier_detection = Some(cpb::OutlierDetection {
        consecutive_5xx: Some(UInt32Value { value: 1 }),
        interval: Some(PbDuration {
            seconds: 5,
            nanos: 0,
        }),
        base_ejection_time: Some(PbDuration {
            seconds: 300,
            nanos: 0,
        }),
        max_ejection_percent: Some(UInt32Value { value: 100 }),
        ..Default::default()
    });
    let spec = cluster_spec(&c).unwrap();
    assert_eq!(
        spec.lb_policy,
        LbPolicySpec::RingHash {
            min_ring_size: Some(2048),
            max_ring_size: None
        }
    );
    assert_eq!(
        (
            spec.circuit_breakers.max_requests,
            spec.circuit_breakers.max_pending_requests
        ),
        (Some(100), Some(10))
    );
    let od = spec.outlier_detection.unwrap();
    assert_eq!(
        (od.consecutive_5xx, od.max_ejection_percent),
        (Some(1), Some(100))
    );
    assert_eq!(spec.eds_service_name.as_deref(), Some("c"));

    let mut bad = testing::eds_cluster_message("c");
    bad.eds_cluster_config.as_mut().unwrap().eds_config = None;
    assert_eq!(
        cluster_spec(&bad).unwrap_err().to_string(),
        "cluster \"c\": eds_cluster_config.eds_config: must be ads or self"
    );
    let mut bad = testing::eds_cluster_message("c");
    bad.outlier_detection = Some(cpb::OutlierDetection {
        max_ejection_percent: Some(UInt32Value { value: 150 }),
        ..Default::default()
    });
    let e = decode(
        ResourceType::Cluster,
        &testing::any(ResourceType::Cluster.type_url(), &bad),
    )
    .unwrap_err();
    assert_eq!(e.name.as_deref(), Some("c"));
    assert_eq!(
        e.message,
        "cluster \"c\": outlier_detection.max_ejection_percent: 150 is greater than 100"
    );
}

#[test]
fn endpoints_map_and_validate() {
    let ok = testing::endpoints(
        "c",
        &[
            "127.0.0.1:8080".parse().unwrap(),
            "[::1]:9090".parse().unwrap(),
        ],
    );
    let Decoded::Endpoints(e) = decode(ResourceType::ClusterLoadAssignment, &ok).unwrap() else {
        panic!()
    };
    assert_eq!(e.len(), 2);
    assert_eq!(e.endpoints()[1].address, "[::1]:9090".parse().unwrap());
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::endpoint::v3 as epb;
    let cla = epb::ClusterLoadAssignment {
        cluster_name: "c".into(),
        endpoints: vec![epb::LocalityLbEndpoints {
            lb_endpoints: vec![epb::LbEndpoint {
                host_identifier: Some(epb::lb_endpoint::HostIdentifier::Endpoint(epb::Endpoint {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address: "reviews.default".into(),
                            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                                80,
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_eq!(
        load_assignment_spec(&cla).unwrap_err().to_string(),
        "cluster load assignment \"c\": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: \"reviews.default\" is not an IP address"
    );
}

#[test]
fn listeners_with_inline_routes_map() {
    let spec = listener_spec(
        &envoy_types::pb::envoy::config::listener::v3::Listener::decode(
            &*testing::listener("a:1", "r").value,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(spec.routes, RouteSourceSpec::Rds("r".into()));
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(7),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Arbitrary bytes as any resource type: an error or a value, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), t in 0usize..4) {
            let ty = ResourceType::ALL[t];
            let _ = decode(ty, &Any { type_url: ty.type_url().into(), value: bytes });
        }

        /// Valid resources with random bytes flipped: still no panic.
        #[test]
        fn corrupted_resources_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), t in 0usize..4) {
            let ty = ResourceType::ALL[t];
            let mut any = match ty {
                ResourceType::Listener => testing::listener("ui:80", "r"),
                ResourceType::RouteConfiguration => testing::route_config("r", &["ui"], &[("a", 90), ("b", 10)]),
                ResourceType::Cluster => testing::eds_cluster("a"),
                ResourceType::ClusterLoadAssignment => testing::endpoints("a", &["127.0.0.1:80".parse().unwrap()]),
            };
            for (i, b) in flips {
                let n = any.value.len();
                let at = i.index(n);
                any.value[at] = b;
            }
            let _ = decode(ty, &any);
        }
    }
}

/// A control plane sent a retry back-off near protobuf's Duration limit (2e18 s); validating it
/// multiplied the base by 10 and panicked, which ended the ADS task.
#[test]
fn durations_near_the_protobuf_limit_are_capped_not_fatal() {
    let huge = PbDuration {
        seconds: 2_000_000_000_000_000_000,
        nanos: 999_999_999,
    };
    let action = rpb::RouteAction {
        cluster_specifier: Some(rpb::route_action::ClusterSpecifier::Cluster("c".into())),
        timeout: Some(huge),
        retry_policy: Some(rpb::RetryPolicy {
            retry_on: "5xx".into(),
            num_retries: Some(UInt32Value { value: u32::MAX }),
            per_try_timeout: Some(huge),
            retry_back_off: Some(rpb::retry_policy::RetryBackOff {
                base_interval: Some(huge),
                max_interval: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rc = rpb::RouteConfiguration {
        name: "rc".into(),
        virtual_hosts: vec![rpb::VirtualHost {
            name: "v".into(),
            domains: vec!["*".into()],
            routes: vec![route(Some(rpb::route::Action::Route(action)), prefix("/"))],
            ..Default::default()
        }],
        ..Default::default()
    };
    let any = testing::any(ResourceType::RouteConfiguration.type_url(), &rc);
    let Ok(Decoded::RouteConfig(rc)) = decode(ResourceType::RouteConfiguration, &any) else {
        panic!("a huge duration is capped, not rejected");
    };
    let forward = rc.virtual_hosts()[0].routes()[0].forward().unwrap();
    let retry = forward.retry_policy.as_ref().unwrap();
    let max = mesh_core::MAX_DURATION;
    assert_eq!(retry.backoff_bounds(), (max, max));
    assert_eq!(retry.per_try_timeout(), Some(max));
    assert_eq!(retry.num_retries(), u32::MAX);
    assert_eq!(forward.timeouts.route_timeout(), Some(max));
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(7);
    assert!(retry.backoff(u32::MAX, &mut rng) <= max);
}

/// Rewrites the `UpstreamTlsContext` inside a transport socket.
fn edit_tls(
    ts: &mut envoy_types::pb::envoy::config::core::v3::TransportSocket,
    edit: impl FnOnce(
        &mut envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext,
    ),
) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &mut ts.config_type else {
        unreachable!()
    };
    let mut ctx =
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
            &*any.value,
        )
        .unwrap();
    edit(&mut ctx);
    any.value = ctx.encode_to_vec();
}

#[test]
#[allow(deprecated)]
fn istio_mutual_decodes_from_either_generation_of_provider_fields() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    let sans = ["spiffe://cluster.local/ns/default/sa/reviews"];
    let mut c = testing::eds_cluster_message("c");
    c.transport_socket = Some(testing::istio_mutual(&sans));
    let tls = cluster_spec(&c).unwrap().tls.unwrap();
    assert_eq!(tls.identity_provider.as_deref(), Some("default"));
    assert_eq!(tls.root_provider.as_deref(), Some("default"));
    assert_eq!(tls.san_matchers.len(), 1);

    // gRPC ≥ 1.66 reads only the current fields, older gRPC only the deprecated ones: either
    // alone is enough.
    let mut old = c.clone();
    edit_tls(old.transport_socket.as_mut().unwrap(), |ctx| {
        let common = ctx.common_tls_context.as_mut().unwrap();
        common.tls_certificate_provider_instance = None;
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            &mut common.validation_context_type
        else {
            unreachable!()
        };
        v.default_validation_context
            .as_mut()
            .unwrap()
            .ca_certificate_provider_instance = None;
    });
    let tls = cluster_spec(&old).unwrap().tls.unwrap();
    assert_eq!(
        (
            tls.identity_provider.as_deref(),
            tls.root_provider.as_deref()
        ),
        (Some("default"), Some("default"))
    );
}

#[test]
#[allow(deprecated)]
fn tls_fields_a29_refuses_are_nacked_with_the_field() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
    use tls::common_tls_context::ValidationContextType;
    let nack = |edit: &dyn Fn(&mut tls::UpstreamTlsContext)| {
        let mut c = testing::eds_cluster_message("c");
        c.transport_socket = Some(testing::istio_mutual(&[]));
        edit_tls(c.transport_socket.as_mut().unwrap(), edit);
        cluster_spec(&c).unwrap_err().to_string()
    };
    let validation = |ctx: &mut tls::UpstreamTlsContext| -> tls::CertificateValidationContext {
        let Some(ValidationContextType::CombinedValidationContext(v)) = &ctx
            .common_tls_context
            .as_ref()
            .unwrap()
            .validation_context_type
        else {
            unreachable!()
        };
        v.default_validation_context.clone().unwrap()
    };
    let set_validation = |ctx: &mut tls::UpstreamTlsContext,
                          v: tls::CertificateValidationContext| {
        ctx.common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type = Some(ValidationContextType::ValidationContext(v));
    };
    assert_eq!(
        nack(&|ctx| ctx.common_tls_context.as_mut().unwrap().tls_params = Some(Default::default())),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.tls_params: is not supported"
    );
    assert_eq!(
        nack(&|ctx| {
            let mut v = validation(ctx);
            v.verify_certificate_hash = vec!["ab".into()];
            set_validation(ctx, v);
        }),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.validation_context.verify_certificate_hash: is not supported"
    );
    assert_eq!(
        nack(&|ctx| {
            let mut v = validation(ctx);
            v.crl = Some(Default::default());
            set_validation(ctx, v);
        }),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.validation_context.crl: is not supported"
    );
    assert_eq!(
        nack(&|ctx| {
            let mut v = validation(ctx);
            v.ca_certificate_provider_instance = None;
            set_validation(ctx, v);
        }),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.validation_context.ca_certificate_provider_instance: is required (the roots that verify the server)"
    );
    assert_eq!(
        nack(&|ctx| ctx
            .common_tls_context
            .as_mut()
            .unwrap()
            .validation_context_type = None),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.validation_context_type: has no validation context"
    );
    assert_eq!(
        nack(&|ctx| {
            let common = ctx.common_tls_context.as_mut().unwrap();
            common.tls_certificate_provider_instance = None;
            common.tls_certificate_certificate_provider_instance = None;
            common.tls_certificates = vec![Default::default()];
        }),
        "cluster \"c\": transport_socket.typed_config.common_tls_context.tls_certificates: inline and SDS certificates are not supported; use tls_certificate_provider_instance"
    );
    let mut c = testing::eds_cluster_message("c");
    c.transport_socket = Some(testing::istio_mutual(&[]));
    c.transport_socket.as_mut().unwrap().name = "envoy.transport_sockets.raw_buffer".into();
    assert_eq!(
        cluster_spec(&c).unwrap_err().to_string(),
        "cluster \"c\": transport_socket.name: unsupported transport socket \"envoy.transport_sockets.raw_buffer\""
    );
}

/// A server listener as istiod sends it: one chain, one HCM with an inline non-forwarding
/// route and `filters` before the router.
fn server_listener(filters: Vec<hcm::HttpFilter>) -> lpb::Listener {
    use envoy_types::pb::envoy::config::core::v3 as core;
    let router = hcm::HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(testing::any(
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
            &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
        ))),
        is_optional: false,
        disabled: false,
    };
    let manager = hcm::HttpConnectionManager {
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rpb::RouteConfiguration {
                name: "inbound".into(),
                virtual_hosts: vec![rpb::VirtualHost {
                    domains: vec!["*".into()],
                    routes: vec![rpb::Route {
                        r#match: Some(rpb::RouteMatch {
                            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(
                                "/".into(),
                            )),
                            ..Default::default()
                        }),
                        action: Some(rpb::route::Action::NonForwardingAction(Default::default())),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: filters.into_iter().chain([router]).collect(),
        ..Default::default()
    };
    lpb::Listener {
        name: "xds.istio.io/grpc/lds/inbound/10.0.0.1:8080".into(),
        address: Some(core::Address {
            address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                address: "10.0.0.1".into(),
                port_specifier: Some(core::socket_address::PortSpecifier::PortValue(8080)),
                ..Default::default()
            })),
        }),
        filter_chains: vec![lpb::FilterChain {
            name: "inbound-plaintext".into(),
            filters: vec![lpb::Filter {
                name: "inbound-hcmplaintext".into(),
                config_type: Some(lpb::filter::ConfigType::TypedConfig(testing::any(
                    HCM_TYPE, &manager,
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn server_listeners_decode_and_what_a36_refuses_is_nacked() {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
    let any = |l: &lpb::Listener| testing::any(ResourceType::Listener.type_url(), l);
    let Decoded::ServerListener(l) =
        decode(ResourceType::Listener, &any(&server_listener(vec![]))).unwrap()
    else {
        panic!("a server listener")
    };
    assert_eq!(l.address(), Some("10.0.0.1:8080".parse().unwrap()));
    assert_eq!(&**l.chains()[0].name(), "inbound-plaintext");

    let mut filters = server_listener(vec![]);
    filters.listener_filters.push(Default::default());
    assert_eq!(
        err(ResourceType::Listener, &any(&filters)),
        "listener \"xds.istio.io/grpc/lds/inbound/10.0.0.1:8080\": listener_filters: must be empty"
    );
    let cel = rbac_filter::Rbac {
        rules: Some(rbac::Rbac {
            action: rbac::rbac::Action::Allow as i32,
            policies: [(
                "p".to_string(),
                rbac::Policy {
                    permissions: vec![rbac::Permission {
                        rule: Some(rbac::permission::Rule::Any(true)),
                    }],
                    principals: vec![rbac::Principal {
                        identifier: Some(rbac::principal::Identifier::Any(true)),
                    }],
                    condition: Some(Default::default()),
                    checked_condition: None,
                    cel_config: None,
                },
            )]
            .into(),
            audit_logging_options: None,
        }),
        ..Default::default()
    };
    let rbac_http = hcm::HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(testing::any(
            server::RBAC_TYPE,
            &cel,
        ))),
        is_optional: false,
        disabled: false,
    };
    assert_eq!(
        err(
            ResourceType::Listener,
            &any(&server_listener(vec![rbac_http]))
        ),
        "listener \"xds.istio.io/grpc/lds/inbound/10.0.0.1:8080\": filter_chains[0].filters[0].http_filters[0].rules.policies[\"p\"].condition: CEL conditions are not supported"
    );
    let fault = hcm::HttpFilter {
        name: "envoy.filters.http.fault".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(testing::any(
            FAULT_TYPE,
            &fault_pb::HttpFault::default(),
        ))),
        is_optional: false,
        disabled: false,
    };
    assert_eq!(
        err(ResourceType::Listener, &any(&server_listener(vec![fault]))),
        format!(
            "listener \"xds.istio.io/grpc/lds/inbound/10.0.0.1:8080\": filter_chains[0].filters[0].http_filters[0]: unsupported server filter {FAULT_TYPE:?}"
        )
    );
}

#[test]
fn rbac_per_route_replaces_or_disables_a_filter_on_its_route() {
    use envoy_types::pb::envoy::config::rbac::v3 as rbac;
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
    let rules = |principal: rbac::principal::Identifier| rbac::Rbac {
        action: rbac::rbac::Action::Allow as i32,
        policies: [(
            "p".to_string(),
            rbac::Policy {
                permissions: vec![rbac::Permission {
                    rule: Some(rbac::permission::Rule::Any(true)),
                }],
                principals: vec![rbac::Principal {
                    identifier: Some(principal),
                }],
                ..Default::default()
            },
        )]
        .into(),
        audit_logging_options: None,
    };
    // The listener allows only TLS peers.
    let listener_rbac = hcm::HttpFilter {
        name: "envoy.filters.http.rbac".into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(testing::any(
            server::RBAC_TYPE,
            &rbac_filter::Rbac {
                rules: Some(rules(rbac::principal::Identifier::Authenticated(
                    Default::default(),
                ))),
                ..Default::default()
            },
        ))),
        is_optional: false,
        disabled: false,
    };
    let mut l = server_listener(vec![listener_rbac]);
    let per_route = |rbac: Option<rbac::Rbac>| {
        let per = rbac_filter::RbacPerRoute {
            rbac: rbac.map(|r| rbac_filter::Rbac {
                rules: Some(r),
                ..Default::default()
            }),
        };
        [(
            "envoy.filters.http.rbac".to_string(),
            testing::any(
                "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                &per,
            ),
        )]
        .into()
    };
    let route = |prefix: &str, per: std::collections::HashMap<String, Any>| rpb::Route {
        r#match: Some(rpb::RouteMatch {
            path_specifier: Some(rpb::route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(rpb::route::Action::NonForwardingAction(Default::default())),
        typed_per_filter_config: per,
        ..Default::default()
    };
    {
        let Some(lpb::filter::ConfigType::TypedConfig(any)) =
            l.filter_chains[0].filters[0].config_type.as_mut()
        else {
            panic!("an HCM")
        };
        let mut m = hcm::HttpConnectionManager::decode(&*any.value).unwrap();
        let Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(rc)) =
            m.route_specifier.as_mut()
        else {
            panic!()
        };
        let vh = &mut rc.virtual_hosts[0];
        vh.routes.insert(0, route("/health", per_route(None)));
        vh.routes.insert(
            1,
            route(
                "/open",
                per_route(Some(rules(rbac::principal::Identifier::Any(true)))),
            ),
        );
        *any = testing::any(HCM_TYPE, &m);
    }
    let Decoded::ServerListener(l) = decode(
        ResourceType::Listener,
        &testing::any(ResourceType::Listener.type_url(), &l),
    )
    .unwrap() else {
        panic!("a server listener")
    };
    let chain = &l.chains()[0];
    let mesh_core::RouteSource::Inline(rc) = chain.routes() else {
        panic!("inline routes")
    };
    let denied = |path: &str| {
        let (m, u, h) = (
            http::Method::GET,
            format!("http://ui{path}").parse::<http::Uri>().unwrap(),
            http::HeaderMap::new(),
        );
        let rr = mesh_core::RouteRequest::new(&m, &u, &h);
        let route = rc.route(&rr, &mut rand::rng()).unwrap();
        chain
            .rbac()
            .evaluate_on_route(
                &mesh_core::rbac::AuthzRequest {
                    request: rr,
                    source: "10.0.0.9:4000".parse().unwrap(),
                    destination: "10.0.0.1:8080".parse().unwrap(),
                    peer: None,
                    tls: false,
                    auth: None,
                },
                route.rbac_overrides().map(|o| &**o),
                false,
            )
            .denied
            .map(|d| d.to_string())
    };
    assert_eq!(
        denied("/orders"),
        Some("no policy of envoy.filters.http.rbac allows it".into())
    );
    assert_eq!(
        denied("/health"),
        None,
        "RBACPerRoute without rules disables the filter"
    );
    assert_eq!(
        denied("/open/x"),
        None,
        "the route's rules replace the listener's"
    );
}
