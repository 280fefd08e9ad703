//! mesh-core micro-benchmarks: endpoint picks, route matching, retry budget and breaker, RBAC
//! and JWT verification.
//!
//! `cargo bench --bench core`. Each group has a baseline measured in the same run, so the
//! figures in BENCHMARKS.md are ratios as well as nanoseconds.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use mesh::core::lb::{MAX_RING_SIZE, PickerOptions};
use mesh::core::matcher::{HeaderMatchSpec, HeaderMatcherSpec, PathMatchSpec, StringMatcherSpec};
use mesh::core::route::ForwardActionSpec;
use mesh::core::{
    BreakerResource, CircuitBreaker, ClusterLoadAssignmentSpec, ClusterPicker, EndpointSet,
    EndpointSpec, LbConfig, LocalityEndpointsSpec, RetryBudget, RetryBudgetConfig, RouteActionSpec,
    RouteConfig, RouteConfigSpec, RouteMatchSpec, RouteRequest, RouteSpec, Thresholds,
    VirtualHostSpec,
};
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};

fn endpoints(n: usize) -> EndpointSet {
    EndpointSet::new(&ClusterLoadAssignmentSpec {
        cluster_name: "bench".into(),
        localities: vec![LocalityEndpointsSpec {
            endpoints: (0..n)
                .map(|i| {
                    EndpointSpec::new(SocketAddr::from((
                        [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                        8080,
                    )))
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .expect("valid endpoints")
}

fn lb_picks(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb_pick");
    let policies = [
        ("round_robin", LbConfig::RoundRobin),
        ("random", LbConfig::Random),
        (
            "least_request_p2c",
            LbConfig::LeastRequest { choice_count: 2 },
        ),
        (
            "peak_ewma_p2c",
            LbConfig::PeakEwma {
                decay: Duration::from_secs(10),
                default_rtt: Duration::from_millis(30),
            },
        ),
        (
            "ring_hash",
            LbConfig::RingHash {
                min_ring_size: 1024,
                max_ring_size: MAX_RING_SIZE,
            },
        ),
        ("maglev", LbConfig::Maglev { table_size: 65537 }),
    ];
    for n in [10usize, 1_000, 10_000] {
        let set = endpoints(n);
        let mut rng = SmallRng::seed_from_u64(1);
        // Baseline: the cheapest possible pick, a uniform random index into the endpoints.
        g.bench_with_input(BenchmarkId::new("baseline_random_index", n), &n, |b, &n| {
            b.iter(|| black_box(rng.random_range(0..n)))
        });
        for (name, config) in &policies {
            let picker =
                ClusterPicker::new(config, &set, PickerOptions::default(), |_| true, None, 0);
            let mut rng = SmallRng::seed_from_u64(1);
            let hashed = config.is_hash_based();
            g.bench_with_input(BenchmarkId::new(*name, n), &n, |b, _| {
                b.iter(|| {
                    let hash = hashed.then(|| rng.next_u64());
                    black_box(picker.pick(hash, &mut rng))
                })
            });
        }
    }
    g.finish();
}

/// A 20-route virtual host: 18 prefix routes with a header each, one regex route, one default.
fn route_config() -> RouteConfig {
    let mut routes = Vec::new();
    for i in 0..18 {
        let mut m = RouteMatchSpec::prefix(format!("/api/v{i}/"));
        m.headers.push(HeaderMatcherSpec::new(
            "x-tenant",
            HeaderMatchSpec::String(StringMatcherSpec::exact(format!("tenant-{i}"))),
        ));
        routes.push(RouteSpec {
            name: format!("r{i}"),
            matcher: m,
            action: RouteActionSpec::Forward(Box::new(ForwardActionSpec::to_cluster(format!(
                "c{i}"
            )))),
            fault: None,
            rbac: Vec::new(),
        });
    }
    let mut regex = RouteMatchSpec::prefix("");
    regex.path = PathMatchSpec::Regex("/users/[0-9]+/orders(/.*)?".into());
    for (name, m) in [("regex", regex), ("default", RouteMatchSpec::prefix("/"))] {
        routes.push(RouteSpec {
            name: name.into(),
            matcher: m,
            action: RouteActionSpec::Forward(Box::new(ForwardActionSpec::to_cluster("c"))),
            fault: None,
            rbac: Vec::new(),
        });
    }
    RouteConfig::new(&RouteConfigSpec {
        name: "bench".into(),
        virtual_hosts: vec![VirtualHostSpec {
            name: "svc".into(),
            domains: vec!["svc.ns.svc.cluster.local:8080".into(), "*".into()],
            routes,
            ..Default::default()
        }],
        ignore_port_in_host_matching: false,
    })
    .expect("valid routes")
}

fn route_match(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_match");
    let rc = route_config();
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("tenant-17"));
    headers.insert("user-agent", HeaderValue::from_static("bench"));
    let mut rng = SmallRng::seed_from_u64(1);
    // Baseline: one hash-map lookup of the path, the floor of any router.
    let table: HashMap<String, usize> = (0..20).map(|i| (format!("/api/v{i}/items"), i)).collect();
    g.bench_function("baseline_hashmap_path_lookup", |b| {
        b.iter(|| black_box(table.get(black_box("/api/v17/items"))))
    });
    for (name, uri) in [
        (
            "route_18_of_20_header",
            "http://svc.ns.svc.cluster.local:8080/api/v17/items",
        ),
        (
            "route_19_of_20_regex",
            "http://svc.ns.svc.cluster.local:8080/users/42/orders/7",
        ),
        (
            "route_20_of_20_default",
            "http://svc.ns.svc.cluster.local:8080/other",
        ),
    ] {
        let uri: Uri = uri.parse().expect("uri");
        g.bench_function(name, |b| {
            b.iter(|| {
                let req = RouteRequest::new(&Method::GET, &uri, &headers);
                black_box(rc.route(&req, &mut rng).map(|r| r.name().len()))
            })
        });
    }
    g.finish();
}

fn budget_and_breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("resilience");
    let budget = RetryBudget::new(RetryBudgetConfig::default());
    let t0 = Instant::now();
    let mut i = 0u64;
    // Baseline: reading the clock, which the stack does per request anyway.
    g.bench_function("baseline_instant_now", |b| {
        b.iter(|| black_box(Instant::now()))
    });
    g.bench_function("budget_deposit", |b| {
        b.iter(|| {
            i += 1;
            budget.deposit(t0 + Duration::from_micros(i));
        })
    });
    g.bench_function("budget_try_withdraw", |b| {
        b.iter(|| {
            i += 1;
            black_box(budget.try_withdraw(t0 + Duration::from_micros(i)))
        })
    });
    let breaker = CircuitBreaker::new(Thresholds::default());
    g.bench_function("breaker_acquire_release", |b| {
        b.iter(|| black_box(breaker.try_acquire(BreakerResource::Requests).is_ok()))
    });
    g.finish();
}

/// RBAC as istiod sends it for ten AuthorizationPolicies: a DENY filter with two policies and
/// an ALLOW filter with eight (principals, namespaces, methods, paths), the allowed caller
/// matching the last one. Baseline: the route match of the same request.
/// Ten policies as istiod writes them: 2 DENY by namespace, 8 ALLOW by identity, method and
/// path (a caller `client7` on `/api7/...` is allowed by the last).
fn ten_policies() -> [mesh::core::rbac::RbacSpec; 2] {
    use mesh::core::matcher::StringPattern;
    use mesh::core::rbac::*;
    let m = |p: StringPattern| StringMatcherSpec {
        pattern: p,
        ignore_case: false,
    };
    let policy = |sa: &str, path: &str| PolicySpec {
        permissions: vec![PermissionSpec::And(vec![
            PermissionSpec::Or(vec![PermissionSpec::Header(HeaderMatcherSpec::new(
                ":method",
                HeaderMatchSpec::String(StringMatcherSpec::exact("GET")),
            ))]),
            PermissionSpec::Or(vec![PermissionSpec::UrlPath(StringMatcherSpec::prefix(
                path,
            ))]),
        ])],
        principals: vec![PrincipalSpec::Or(vec![PrincipalSpec::Authenticated(Some(
            StringMatcherSpec::prefix(format!("spiffe://cluster.local/ns/default/sa/{sa}")),
        ))])],
    };
    let deny = RbacSpec {
        name: "envoy.filters.http.rbac.DENY".into(),
        action: Some(RbacAction::Deny),
        policies: (0..2)
            .map(|i| {
                (
                    format!("default-deny-{i}-0"),
                    PolicySpec {
                        permissions: vec![PermissionSpec::Any],
                        principals: vec![PrincipalSpec::Authenticated(Some(m(
                            StringPattern::Regex(format!(".*/ns/blocked{i}/.*")),
                        )))],
                    },
                )
            })
            .collect(),
        audit: AuditCondition::None,
    };
    let allow = RbacSpec {
        name: "envoy.filters.http.rbac".into(),
        action: Some(RbacAction::Allow),
        policies: (0..8)
            .map(|i| {
                (
                    format!("default-allow-{i}-0"),
                    policy(&format!("client{i}"), &format!("/api{i}")),
                )
            })
            .collect(),
        audit: AuditCondition::None,
    };
    [deny, allow]
}

/// The caller of the RBAC and server-stage benches: `sa/client7`'s certificate.
fn client7() -> mesh::core::identity::LeafInfo {
    use mesh::core::identity::{LeafInfo, SubjectAltNames};
    LeafInfo {
        sans: SubjectAltNames {
            uri: vec!["spiffe://cluster.local/ns/default/sa/client7".into()],
            ..Default::default()
        },
        subject: String::new(),
        serial: "01".into(),
        not_before: std::time::UNIX_EPOCH,
        not_after: std::time::UNIX_EPOCH,
    }
}

fn rbac(c: &mut Criterion) {
    use mesh::core::rbac::*;
    let rbac = Rbac::new(&ten_policies()).expect("rbac");
    let leaf = client7();
    let uri: Uri = "http://svc.ns.svc.cluster.local:8080/api7/orders"
        .parse()
        .expect("uri");
    let headers = HeaderMap::new();
    let (source, destination): (SocketAddr, SocketAddr) = (
        "10.0.0.9:40000".parse().expect("addr"),
        "10.0.0.1:8080".parse().expect("addr"),
    );
    let mut g = c.benchmark_group("rbac");
    g.bench_function("baseline_route_request", |b| {
        b.iter(|| black_box(RouteRequest::new(&Method::GET, &uri, &headers).path().len()))
    });
    g.bench_function("ten_policies_allowed_by_the_last", |b| {
        b.iter(|| {
            let v = rbac.evaluate(&AuthzRequest {
                request: RouteRequest::new(&Method::GET, &uri, &headers),
                source,
                destination,
                peer: Some(&leaf),
                tls: true,
                auth: None,
            });
            black_box(v.denied.is_none())
        })
    });
    g.finish();
}

fn jwt(c: &mut Criterion) {
    use mesh::core::jwt::*;
    use mesh::xds::testing::jwt::JwtIssuer;
    let idp = JwtIssuer::new("https://idp.example", "k1");
    // istiod's sidecar shape: any provider, or no token.
    let filter = JwtAuthn::new(&JwtAuthnSpec {
        name: "envoy.filters.http.jwt_authn".into(),
        providers: vec![(
            "origins-0".into(),
            JwtProviderSpec {
                issuer: idp.issuer.clone(),
                jwks: Some(JwksSpec::Inline(JwtIssuer::jwks(&[&idp]))),
                clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
                ..Default::default()
            },
        )],
        rules: vec![JwtRuleSpec {
            matcher: RouteMatchSpec::prefix("/"),
            requires: Some(RequirementSpec::Any(vec![
                RequirementSpec::Provider("origins-0".into()),
                RequirementSpec::AllowMissing,
            ])),
        }],
        bypass_cors_preflight: true,
    })
    .expect("jwt filter");
    let token = idp.token("alice", serde_json::json!({"groups": ["a", "b"]}));
    let mut with = HeaderMap::new();
    with.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let without = HeaderMap::new();
    let uri: Uri = "http://svc/api/orders".parse().expect("uri");
    let no_remote = |_: &str| None;
    let now = JwtIssuer::now();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut g = c.benchmark_group("jwt");
    g.bench_function("no_token", |b| {
        b.iter(|| {
            let req = RouteRequest::new(&Method::GET, &uri, &without);
            black_box(filter.authenticate(&req, &no_remote, now, &mut rng).is_ok())
        })
    });
    g.bench_function("es256_signature_check", |b| {
        b.iter(|| black_box(filter.providers()[0].verify(&token, None, now).is_ok()))
    });
    g.bench_function("es256_token_seen_before", |b| {
        b.iter(|| {
            let req = RouteRequest::new(&Method::GET, &uri, &with);
            black_box(filter.authenticate(&req, &no_remote, now, &mut rng).is_ok())
        })
    });
    g.finish();
}

/// The server stack's per-request stage (routes, RBAC with ten policies, the caller's
/// `PeerInfo` into the extensions) on an mTLS connection, against the bare application called
/// the same way: what the stack adds per request, apart from TLS (which both servers pay) and
/// the connection driver.
fn server_stage(c: &mut Criterion) {
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Full;
    use mesh::core::RouteSourceSpec;
    use mesh::core::server::{DownstreamTlsSpec, FilterChainSpec, ServerListenerSpec};
    use mesh::tower::server::{AuthzService, JwksStore};
    use tower::{Service, ServiceExt};

    let spec = ServerListenerSpec {
        name: "xds.istio.io/grpc/lds/inbound/10.0.0.1:8080".into(),
        address: Some("10.0.0.1:8080".parse().expect("addr")),
        chains: vec![FilterChainSpec {
            name: "inbound-mtls".into(),
            tls: Some(DownstreamTlsSpec {
                identity_provider: Some("default".into()),
                root_provider: Some("default".into()),
                require_client_certificate: true,
            }),
            routes: Some(RouteSourceSpec::Inline(RouteConfigSpec {
                name: "inbound".into(),
                virtual_hosts: vec![VirtualHostSpec {
                    domains: vec!["*".into()],
                    routes: vec![RouteSpec {
                        name: String::new(),
                        matcher: RouteMatchSpec::prefix("/"),
                        action: RouteActionSpec::NonForwarding,
                        fault: None,
                        rbac: Vec::new(),
                    }],
                    ..Default::default()
                }],
                ignore_port_in_host_matching: false,
            })),
            rbac: ten_policies().to_vec(),
            ..Default::default()
        }],
        default_chain: None,
    };
    let listener = mesh::core::ServerListener::new(&spec).expect("listener");
    let leaf = client7();
    let peer = Arc::new(mesh::tower::PeerInfo {
        local: "10.0.0.1:8080".parse().expect("addr"),
        remote: "10.0.0.9:40000".parse().expect("addr"),
        tls: true,
        spiffe_id: leaf.sans.spiffe_id().map(Arc::from),
        certificate: Some(Arc::new(leaf)),
        chain: listener.chains()[0].clone(),
    });
    let (_tx, snapshots) =
        tokio::sync::watch::channel(Arc::new(mesh::core::MeshSnapshot::default()));
    let app = tower::service_fn(|_req: http::Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let request = || {
        http::Request::get("http://svc.ns.svc.cluster.local:8080/api7/orders")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut stage = AuthzService::new(app, peer, snapshots, JwksStore::default());
    let mut g = c.benchmark_group("server_stage");
    g.bench_function("bare_app", |b| {
        b.iter(|| black_box(rt.block_on(app.oneshot(request())).is_ok()))
    });
    g.bench_function("mesh_stage_mtls_ten_policies", |b| {
        b.iter(|| {
            let r = rt.block_on(stage.call(request())).expect("answer");
            black_box(r.status().is_success())
        })
    });
    g.finish();
}

/// The request path's lookups in a snapshot of 100 and of 100,000 clusters (each with its
/// endpoints, one listener and route configuration per service): the route, the cluster, its
/// endpoints, and a pick. The figure must not grow with the mesh.
fn snapshot_scale(c: &mut Criterion) {
    use mesh::core::{Cluster, ClusterSpec, Listener, ListenerSpec, MeshSnapshot, RouteSourceSpec};
    let mut g = c.benchmark_group("snapshot_scale");
    for n in [100usize, 100_000] {
        let mut snap = MeshSnapshot::new();
        for i in 0..n {
            let name = format!("outbound|8080||svc-{i}.ns.svc.cluster.local");
            snap.insert_cluster(
                Cluster::new(&ClusterSpec {
                    name: name.clone(),
                    ..Default::default()
                })
                .expect("cluster"),
            );
            let mut set = ClusterLoadAssignmentSpec {
                cluster_name: name.clone(),
                localities: vec![LocalityEndpointsSpec {
                    endpoints: (0..10u8)
                        .map(|e| EndpointSpec::new(SocketAddr::from(([10, 1, 0, e], 8080))))
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            set.cluster_name = name.clone();
            snap.insert_endpoints(EndpointSet::new(&set).expect("endpoints"));
            if i % 10 == 0 {
                let host = format!("svc-{i}.ns.svc.cluster.local");
                snap.insert_listener(
                    Listener::new(&ListenerSpec {
                        name: format!("{host}:8080"),
                        routes: RouteSourceSpec::Rds(name.clone()),
                        max_stream_duration: None,
                        fault_filter: false,
                    })
                    .expect("listener"),
                );
                snap.insert_route_config(
                    RouteConfig::new(&RouteConfigSpec {
                        name: name.clone(),
                        virtual_hosts: vec![VirtualHostSpec {
                            domains: vec!["*".into()],
                            routes: vec![RouteSpec {
                                name: String::new(),
                                matcher: RouteMatchSpec::prefix("/"),
                                action: RouteActionSpec::Forward(Box::new(
                                    ForwardActionSpec::to_cluster(name.clone()),
                                )),
                                fault: None,
                                rbac: Vec::new(),
                            }],
                            ..Default::default()
                        }],
                        ignore_port_in_host_matching: false,
                    })
                    .expect("route config"),
                );
            }
        }
        let target = n / 2 / 10 * 10;
        let listener = format!("svc-{target}.ns.svc.cluster.local:8080");
        let uri: Uri = format!("http://svc-{target}.ns.svc.cluster.local:8080/api")
            .parse()
            .expect("uri");
        let headers = HeaderMap::new();
        let picker = {
            let routed = snap
                .route(
                    &listener,
                    &RouteRequest::new(&Method::GET, &uri, &headers),
                    &mut SmallRng::seed_from_u64(1),
                )
                .expect("routed");
            let cluster = snap
                .cluster(routed.cluster.expect("a cluster"))
                .expect("cluster");
            let eps = snap.cluster_endpoints(cluster).expect("endpoints");
            ClusterPicker::new(
                &LbConfig::RoundRobin,
                eps,
                PickerOptions::default(),
                |_| true,
                None,
                0,
            )
        };
        let mut rng = SmallRng::seed_from_u64(7);
        g.bench_with_input(
            BenchmarkId::new("route_cluster_endpoints_pick", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let req = RouteRequest::new(&Method::GET, &uri, &headers);
                    let routed = snap.route(&listener, &req, &mut rng).expect("routed");
                    let cluster = snap
                        .cluster(routed.cluster.expect("cluster"))
                        .expect("cluster");
                    let eps = snap.cluster_endpoints(cluster).expect("endpoints");
                    black_box((eps.endpoints().len(), picker.pick(None, &mut rng)))
                })
            },
        );
    }
    g.finish();
}

/// Recording one request under Istio's 25 labels, with the label set already built (each
/// library's best case): the OpenTelemetry SDK (no exporter; a manual reader) against
/// prometheus-client keyed by the label values. The stack's own recording, which keys series
/// by interned peers instead of hashing 25 strings, is measured in `stack_load` with
/// `STACK_LOAD_TELEMETRY=1`.
fn telemetry_record(c: &mut Criterion) {
    use mesh::core::telemetry::DURATION_BUCKETS_MS;
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::MeterProvider as _;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;
    const LABELS: [&str; 25] = [
        "reporter",
        "source_workload",
        "source_workload_namespace",
        "source_principal",
        "source_app",
        "source_version",
        "source_canonical_service",
        "source_canonical_revision",
        "source_cluster",
        "destination_workload",
        "destination_workload_namespace",
        "destination_principal",
        "destination_app",
        "destination_version",
        "destination_service",
        "destination_service_name",
        "destination_service_namespace",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_cluster",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ];
    let values: Vec<(&'static str, String)> =
        LABELS.iter().map(|k| (*k, format!("{k}-value"))).collect();
    let mut g = c.benchmark_group("telemetry_record");

    let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_reader(opentelemetry_sdk::metrics::ManualReader::builder().build())
        .build();
    let meter = provider.meter("mesh");
    let counter = meter.u64_counter("istio_requests_total").build();
    let histogram = meter
        .f64_histogram("istio_request_duration_milliseconds")
        .with_boundaries(DURATION_BUCKETS_MS.to_vec())
        .build();
    let attributes: Vec<KeyValue> = values
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect();
    g.bench_function("opentelemetry_sdk", |b| {
        b.iter(|| {
            counter.add(1, black_box(&attributes));
            histogram.record(1.5, black_box(&attributes));
        })
    });

    let requests = Family::<Vec<(&'static str, String)>, Counter>::default();
    let durations =
        Family::<Vec<(&'static str, String)>, Histogram, _>::new_with_constructor(|| {
            Histogram::new(DURATION_BUCKETS_MS)
        });
    g.bench_function("prometheus_client", |b| {
        b.iter(|| {
            requests.get_or_create(black_box(&values)).inc();
            durations.get_or_create(black_box(&values)).observe(1.5);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = lb_picks, route_match, budget_and_breaker, rbac, jwt, server_stage, snapshot_scale, telemetry_record
}
criterion_main!(benches);
