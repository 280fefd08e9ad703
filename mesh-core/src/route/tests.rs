use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::*;
use crate::fraction::Denominator;
use crate::matcher::{HeaderMatchSpec, StringMatcherSpec};

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(7)
}

fn vhost(name: &str, domains: &[&str], routes: Vec<RouteSpec>) -> VirtualHostSpec {
    VirtualHostSpec {
        name: name.into(),
        domains: domains.iter().map(|d| d.to_string()).collect(),
        routes,
        ..Default::default()
    }
}

fn route(name: &str, matcher: RouteMatchSpec, cluster: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        matcher,
        action: RouteActionSpec::Forward(Box::new(ForwardActionSpec::to_cluster(cluster))),
        fault: None,
        rbac: Vec::new(),
    }
}

fn config(vhosts: Vec<VirtualHostSpec>) -> RouteConfig {
    RouteConfig::new(&RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vhosts,
        ignore_port_in_host_matching: false,
    })
    .unwrap()
}

#[test]
fn virtual_host_selection_prefers_the_most_specific_domain() {
    let any = || vec![route("r", RouteMatchSpec::prefix("/"), "c")];
    let rc = config(vec![
        vhost("any", &["*"], any()),
        vhost("exact", &["api.example.com:80", "api.example.com"], any()),
        vhost("short-suffix", &["*.com"], any()),
        vhost("long-suffix", &["*.example.com"], any()),
        vhost("prefix", &["api.*"], any()),
        vhost("long-prefix", &["api.example.*"], any()),
    ]);
    let name = |a: &str| rc.virtual_host(a).map(|v| v.name().to_string());
    assert_eq!(name("api.example.com").as_deref(), Some("exact"));
    assert_eq!(name("API.Example.COM:80").as_deref(), Some("exact"));
    assert_eq!(name("web.example.com").as_deref(), Some("long-suffix"));
    assert_eq!(name("web.other.com").as_deref(), Some("short-suffix"));
    // Suffix wildcards beat prefix wildcards, and the port is part of the comparison.
    assert_eq!(name("api.example.com:8080").as_deref(), Some("long-prefix"));
    assert_eq!(name("api.other.org").as_deref(), Some("prefix"));
    assert_eq!(name("localhost").as_deref(), Some("any"));
    // A wildcard never matches an empty remainder.
    let rc = config(vec![vhost("s", &["*.example.com"], any())]);
    assert!(rc.virtual_host(".example.com").is_none());
    assert!(rc.virtual_host("a.example.com").is_some());
}

#[test]
fn ports_are_matched_literally_unless_ignored() {
    let routes = vec![route("r", RouteMatchSpec::prefix("/"), "c")];
    let spec = RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost("v", &["reviews"], routes)],
        ignore_port_in_host_matching: false,
    };
    assert!(
        RouteConfig::new(&spec)
            .unwrap()
            .virtual_host("reviews:9080")
            .is_none()
    );
    let rc = RouteConfig::new(&RouteConfigSpec {
        ignore_port_in_host_matching: true,
        ..spec
    })
    .unwrap();
    assert!(rc.virtual_host("reviews:9080").is_some());
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("host"), "host");
}

#[test]
fn invalid_domains_and_duplicates_are_rejected_with_their_path() {
    let routes = || vec![route("r", RouteMatchSpec::prefix("/"), "c")];
    let err = RouteConfig::new(&RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost("a", &["a.*.com"], routes())],
        ignore_port_in_host_matching: false,
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route configuration \"rc\": virtual_hosts[0].domains[0]: \"a.*.com\": a wildcard '*' may only be the whole domain, its first or its last character"
    );
    let err = RouteConfig::new(&RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost("a", &["x"], routes()), vhost("b", &["X"], routes())],
        ignore_port_in_host_matching: false,
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route configuration \"rc\": virtual_hosts[1].domains[0]: \"x\" is already a domain of another virtual host"
    );
}

#[test]
fn first_matching_route_wins() {
    let mut beta = RouteMatchSpec::prefix("/");
    beta.headers.push(HeaderMatcherSpec::new(
        "version",
        HeaderMatchSpec::String(StringMatcherSpec::exact("beta")),
    ));
    let rc = config(vec![vhost(
        "v",
        &["*"],
        vec![
            route("orders", RouteMatchSpec::prefix("/orders"), "orders"),
            route("beta", beta, "v2"),
            route("exact-orders", RouteMatchSpec::prefix("/orders/1"), "never"),
            route("default", RouteMatchSpec::prefix("/"), "v1"),
        ],
    )]);
    let (m, h) = (Method::GET, HeaderMap::new());
    let mut hb = HeaderMap::new();
    hb.insert("version", HeaderValue::from_static("beta"));
    let pick = |uri: &'static str, headers: &HeaderMap| {
        let u = Uri::from_static(uri);
        let req = RouteRequest::new(&m, &u, headers);
        rc.route(&req, &mut rng()).unwrap().name().to_string()
    };
    assert_eq!(pick("http://ui/orders/1", &h), "orders");
    assert_eq!(pick("http://ui/x", &hb), "beta");
    assert_eq!(pick("http://ui/x", &h), "default");
}

#[test]
fn no_route_is_reported() {
    let rc = config(vec![vhost(
        "v",
        &["ui"],
        vec![route("r", RouteMatchSpec::prefix("/api"), "c")],
    )]);
    let (m, h) = (Method::GET, HeaderMap::new());
    let u = Uri::from_static("http://ui/other");
    assert_eq!(
        rc.route(&RouteRequest::new(&m, &u, &h), &mut rng())
            .unwrap_err(),
        NoRoute::NoRouteMatched
    );
    let u = Uri::from_static("http://nope/api");
    assert_eq!(
        rc.route(&RouteRequest::new(&m, &u, &h), &mut rng())
            .unwrap_err(),
        NoRoute::NoVirtualHost
    );
}

#[test]
fn runtime_fraction_matches_its_share() {
    let mut half = RouteMatchSpec::prefix("/");
    half.runtime_fraction = Some(Fraction {
        numerator: 5000,
        denominator: Denominator::TenThousand,
    });
    let rc = config(vec![vhost(
        "v",
        &["*"],
        vec![
            route("half", half, "a"),
            route("rest", RouteMatchSpec::prefix("/"), "b"),
        ],
    )]);
    let (m, h, u) = (Method::GET, HeaderMap::new(), Uri::from_static("/"));
    let req = RouteRequest::new(&m, &u, &h);
    let mut r = rng();
    let n = 20_000;
    let hits = (0..n)
        .filter(|_| rc.route(&req, &mut r).unwrap().name() == "half")
        .count();
    // Binomial(20000, 0.5): sd ≈ 71; ±1000 is 14 sd.
    assert!((9_000..=11_000).contains(&hits), "{hits}");
}

#[test]
fn weighted_clusters_validate_and_split() {
    let err = WeightedClusters::new(&[("a".into(), 0), ("b".into(), 0)]).unwrap_err();
    assert_eq!(err, FieldError::new("clusters", "the sum of weights is 0"));
    let err = WeightedClusters::new(&[("a".into(), u32::MAX), ("b".into(), 1)]).unwrap_err();
    assert_eq!(
        err.reason,
        "the sum of weights 4294967296 exceeds 4294967295"
    );
    let w =
        WeightedClusters::new(&[("v1".into(), 90), ("zero".into(), 0), ("v2".into(), 10)]).unwrap();
    assert_eq!(w.entries().len(), 2, "zero weights are skipped");
    let mut r = rng();
    let n = 100_000;
    let v2 = (0..n).filter(|_| &**w.pick(&mut r) == "v2").count();
    // Binomial(1e5, 0.1): sd ≈ 95; ±1000 is over 10 sd.
    assert!((9_000..=11_000).contains(&v2), "{v2}");
}

#[test]
fn retry_policy_parsing_and_classification() {
    let p = RetryPolicy::new(&RetryPolicySpec {
        retry_on: " 5xx, Unavailable,bogus ,retriable-status-codes".into(),
        num_retries: Some(3),
        per_try_timeout: Some(Duration::from_secs(2)),
        retriable_status_codes: vec![409],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        p.retry_on().names().collect::<Vec<_>>(),
        ["5xx", "retriable-status-codes", "unavailable"]
    );
    assert_eq!(p.num_retries(), 3);
    assert!(p.is_retriable(AttemptFailure::HttpStatus(503)));
    assert!(p.is_retriable(AttemptFailure::HttpStatus(409)));
    assert!(!p.is_retriable(AttemptFailure::HttpStatus(404)));
    assert!(p.is_retriable(AttemptFailure::GrpcStatus(14)));
    assert!(!p.is_retriable(AttemptFailure::GrpcStatus(13)));
    assert!(p.is_retriable(AttemptFailure::ConnectFailure));

    let gw = RetryPolicy::new(&RetryPolicySpec {
        retry_on: "gateway-error".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(gw.is_retriable(AttemptFailure::HttpStatus(502)));
    assert!(!gw.is_retriable(AttemptFailure::HttpStatus(500)));
    assert!(!gw.is_retriable(AttemptFailure::Reset));
    assert_eq!(gw.num_retries(), 1);

    let err = RetryPolicy::new(&RetryPolicySpec {
        retry_on: "5xx".into(),
        backoff_base: Some(Duration::from_millis(100)),
        backoff_max: Some(Duration::from_millis(50)),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.field, "retry_back_off.max_interval");
    assert_eq!(
        err.reason,
        "50ms is less than base_interval 100ms; it must be at least the base"
    );
    let err = RetryPolicy::new(&RetryPolicySpec {
        retriable_status_codes: vec![200, 700],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err,
        FieldError::new(
            "retriable_status_codes[1]",
            "700 is not an HTTP status code (100..=599)"
        )
    );
}

#[test]
fn backoff_is_jittered_under_an_exponential_cap() {
    let p = RetryPolicy::new(&RetryPolicySpec {
        retry_on: "5xx".into(),
        backoff_base: Some(Duration::from_millis(10)),
        backoff_max: Some(Duration::from_millis(35)),
        ..Default::default()
    })
    .unwrap();
    let mut r = rng();
    for (retry, cap) in [(1, 10), (2, 20), (3, 35), (10, 35), (40, 35)] {
        let samples: Vec<_> = (0..500).map(|_| p.backoff(retry, &mut r)).collect();
        let max = samples.iter().max().unwrap();
        assert!(*max < Duration::from_millis(cap), "retry {retry}: {max:?}");
        // Full jitter: values spread over the range, not pinned to the cap.
        assert!(
            *max > Duration::from_millis(cap) * 8 / 10,
            "retry {retry}: {max:?}"
        );
        assert!(*samples.iter().min().unwrap() < Duration::from_millis(cap) / 5);
    }
}

#[test]
fn route_retry_policy_overrides_the_virtual_host() {
    let mut vh = vhost(
        "v",
        &["*"],
        vec![route("inherits", RouteMatchSpec::prefix("/a"), "c"), {
            let mut r = route("own", RouteMatchSpec::prefix("/"), "c");
            if let RouteActionSpec::Forward(f) = &mut r.action {
                f.retry_policy = Some(RetryPolicySpec {
                    retry_on: "unsupported-only".into(),
                    ..Default::default()
                });
            }
            r
        }],
    );
    vh.retry_policy = Some(RetryPolicySpec {
        retry_on: "5xx".into(),
        num_retries: Some(2),
        ..Default::default()
    });
    let rc = config(vec![vh]);
    let routes = rc.virtual_hosts()[0].routes();
    let inherited = routes[0].forward().unwrap().retry_policy.as_ref().unwrap();
    assert_eq!(inherited.num_retries(), 2);
    // The route's own policy wins even when none of its conditions is known (A44).
    let own = routes[1].forward().unwrap().retry_policy.as_ref().unwrap();
    assert!(own.retry_on().is_empty());
}

#[test]
fn faults_draw_delay_and_abort_independently() {
    let f = FaultConfig::new(&FaultSpec {
        delay: Some(FaultDelaySpec {
            kind: FaultDelayKind::Fixed(Duration::from_millis(5)),
            percentage: Fraction::percent(20),
        }),
        abort: Some(FaultAbortSpec {
            kind: FaultAbortKind::Http(400),
            percentage: Fraction::percent(10),
        }),
        max_active_faults: None,
    })
    .unwrap();
    let (m, h, u) = (Method::GET, HeaderMap::new(), Uri::from_static("/"));
    let req = RouteRequest::new(&m, &u, &h);
    let mut r = rng();
    let n = 50_000;
    let (mut delayed, mut aborted, mut any) = (0, 0, 0);
    for _ in 0..n {
        let d = f.decide(&req, &mut r);
        delayed += usize::from(d.delay == Some(Duration::from_millis(5)));
        aborted += usize::from(d.abort == Some(FaultAbort::Http(400)));
        any += usize::from(d.is_fault());
    }
    // sd ≤ 90 for each count; tolerances are > 10 sd.
    assert!((9_000..=11_000).contains(&delayed), "{delayed}");
    assert!((4_000..=6_000).contains(&aborted), "{aborted}");
    // Independent draws: 1 - 0.8 × 0.9 = 28% affected.
    assert!((13_000..=15_000).contains(&any), "{any}");

    let err = FaultConfig::new(&FaultSpec {
        abort: Some(FaultAbortSpec {
            kind: FaultAbortKind::Http(700),
            percentage: Fraction::ALL,
        }),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(
        err,
        FieldError::new("abort.http_status", "700 is not in 200..600")
    );
}

#[test]
fn header_controlled_faults_and_percentage_headers() {
    let f = FaultConfig::new(&FaultSpec {
        delay: Some(FaultDelaySpec {
            kind: FaultDelayKind::HeaderControlled,
            percentage: Fraction::percent(100),
        }),
        abort: Some(FaultAbortSpec {
            kind: FaultAbortKind::HeaderControlled,
            percentage: Fraction::percent(50),
        }),
        max_active_faults: None,
    })
    .unwrap();
    let (m, u) = (Method::GET, Uri::from_static("/"));
    let mut h = HeaderMap::new();
    h.insert(DELAY_HEADER, HeaderValue::from_static("250"));
    h.insert(ABORT_HEADER, HeaderValue::from_static("503"));
    // The header may lower the abort share to 0 ...
    h.insert(ABORT_PERCENT_HEADER, HeaderValue::from_static("0"));
    let mut r = rng();
    let d = f.decide(&RouteRequest::new(&m, &u, &h), &mut r);
    assert_eq!(d.delay, Some(Duration::from_millis(250)));
    assert_eq!(d.abort, None);
    // ... but never raise it above the configured 50%.
    h.insert(ABORT_PERCENT_HEADER, HeaderValue::from_static("100"));
    let req = RouteRequest::new(&m, &u, &h);
    let aborted = (0..10_000)
        .filter(|_| f.decide(&req, &mut r).abort == Some(FaultAbort::Http(503)))
        .count();
    assert!((4_000..=6_000).contains(&aborted), "{aborted}");
    // gRPC status header when no HTTP one; malformed values are ignored.
    let mut h = HeaderMap::new();
    h.insert(ABORT_GRPC_HEADER, HeaderValue::from_static("14"));
    h.insert(DELAY_HEADER, HeaderValue::from_static("soon"));
    h.insert(ABORT_PERCENT_HEADER, HeaderValue::from_static("100"));
    let req = RouteRequest::new(&m, &u, &h);
    let ds: Vec<_> = (0..200).map(|_| f.decide(&req, &mut r)).collect();
    assert!(ds.iter().all(|d| d.delay.is_none()));
    assert!(ds.iter().any(|d| d.abort == Some(FaultAbort::Grpc(14))));
}

#[test]
fn timeouts_follow_envoy_and_a31() {
    let t = Timeouts::new(&TimeoutSpec::default());
    assert_eq!(t.effective(None, None), Some(DEFAULT_ROUTE_TIMEOUT));
    let t = Timeouts::new(&TimeoutSpec {
        timeout: Some(Duration::ZERO),
        ..Default::default()
    });
    assert_eq!(
        t.effective(None, None),
        None,
        "0s disables the route timeout"
    );
    assert_eq!(
        t.effective(None, Some(Duration::from_secs(3))),
        Some(Duration::from_secs(3))
    );
    let t = Timeouts::new(&TimeoutSpec {
        timeout: Some(Duration::from_secs(10)),
        max_stream_duration: Some(Duration::from_secs(4)),
        grpc_timeout_header_max: Some(Duration::from_secs(2)),
    });
    assert_eq!(t.effective(None, None), Some(Duration::from_secs(4)));
    assert_eq!(
        t.effective(Some(Duration::from_secs(1)), None),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        t.effective(Some(Duration::from_secs(9)), None),
        Some(Duration::from_secs(2))
    );
}

#[test]
fn hash_policies_combine_in_order() {
    let hp = |kind, terminal| HashPolicy::new(&HashPolicySpec { kind, terminal }).unwrap();
    let header = |n: &str| HashPolicyKind::Header {
        name: n.into(),
        regex_rewrite: None,
    };
    let (m, u) = (Method::GET, Uri::from_static("/p?user=bob"));
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("alice"));
    h.insert("cookie", HeaderValue::from_static("a=1; session=s42"));
    let req = RouteRequest::new(&m, &u, &h);
    let xx = |s: &str| xxhash_rust::xxh64::xxh64(s.as_bytes(), 0);
    assert_eq!(
        request_hash(&[hp(header("x-user"), false)], &req, 0),
        Some(xx("alice"))
    );
    assert_eq!(request_hash(&[hp(header("missing"), false)], &req, 0), None);
    let two = [
        hp(header("x-user"), false),
        hp(
            HashPolicyKind::QueryParameter {
                name: "user".into(),
            },
            false,
        ),
    ];
    assert_eq!(
        request_hash(&two, &req, 0),
        Some(xx("alice").rotate_left(1) ^ xx("bob"))
    );
    let terminal = [
        hp(header("x-user"), true),
        hp(HashPolicyKind::ChannelId, false),
    ];
    assert_eq!(request_hash(&terminal, &req, 9), Some(xx("alice")));
    let cookie = [hp(
        HashPolicyKind::Cookie {
            name: "session".into(),
        },
        false,
    )];
    assert_eq!(request_hash(&cookie, &req, 0), Some(xx("s42")));
    let rewrite = HashPolicy::new(&HashPolicySpec {
        kind: HashPolicyKind::Header {
            name: "x-user".into(),
            regex_rewrite: Some(("^a".into(), "A".into())),
        },
        terminal: false,
    })
    .unwrap();
    assert_eq!(request_hash(&[rewrite], &req, 0), Some(xx("Alice")));
}

#[test]
fn errors_name_the_route_and_field() {
    let mut bad = route("r", RouteMatchSpec::prefix("/"), "c");
    bad.matcher.headers.push(HeaderMatcherSpec::new(
        "x",
        HeaderMatchSpec::String(StringMatcherSpec::regex("[")),
    ));
    let err = RouteConfig::new(&RouteConfigSpec {
        name: "outbound|80||ui".into(),
        virtual_hosts: vec![vhost(
            "v",
            &["*"],
            vec![route("ok", RouteMatchSpec::prefix("/"), "c"), bad],
        )],
        ignore_port_in_host_matching: false,
    })
    .unwrap_err();
    assert_eq!(err.kind, crate::ResourceKind::RouteConfiguration);
    assert_eq!(err.name, "outbound|80||ui");
    assert_eq!(
        err.field,
        "virtual_hosts[0].routes[1].match.headers[0].string_match.safe_regex"
    );
    assert!(
        err.reason.starts_with("invalid regex \"[\""),
        "{}",
        err.reason
    );

    let mut weighted = route("w", RouteMatchSpec::prefix("/"), "c");
    weighted.action = RouteActionSpec::Forward(Box::new(ForwardActionSpec {
        destination: DestinationSpec::Weighted(vec![("a".into(), 0)]),
        ..ForwardActionSpec::to_cluster("unused")
    }));
    let err = RouteConfig::new(&RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost("v", &["*"], vec![weighted])],
        ignore_port_in_host_matching: false,
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "route configuration \"rc\": virtual_hosts[0].routes[0].route.weighted_clusters.clusters: the sum of weights is 0"
    );
}

#[test]
fn retry_and_timeout_durations_are_capped_without_overflow() {
    use crate::time::MAX_DURATION;
    let retry = RetryPolicy::new(&RetryPolicySpec {
        retry_on: "5xx".into(),
        backoff_base: Some(Duration::MAX),
        per_try_timeout: Some(Duration::MAX),
        num_retries: Some(u32::MAX),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(retry.backoff_bounds(), (MAX_DURATION, MAX_DURATION));
    assert_eq!(retry.per_try_timeout(), Some(MAX_DURATION));
    let mut rng = SmallRng::seed_from_u64(1);
    assert!(retry.backoff(u32::MAX, &mut rng) <= MAX_DURATION);
    let t = Timeouts::new(&TimeoutSpec {
        timeout: Some(Duration::MAX),
        grpc_timeout_header_max: Some(Duration::ZERO),
        ..Default::default()
    });
    assert_eq!(t.route_timeout(), Some(MAX_DURATION));
    assert_eq!(t.effective(Some(Duration::MAX), None), Some(MAX_DURATION));
}

#[test]
fn the_regexes_of_one_resource_share_a_budget() {
    let regex_route = |i: usize| {
        let mut m = RouteMatchSpec::prefix("/");
        m.headers.push(HeaderMatcherSpec {
            name: "x-id".into(),
            matcher: HeaderMatchSpec::String(StringMatcherSpec::regex(format!("v{i}-[0-9]+"))),
            invert: false,
            treat_missing_as_empty: false,
        });
        route(&format!("r{i}"), m, "c")
    };
    let spec = |n: usize| RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost("a", &["*"], (0..n).map(regex_route).collect())],
        ignore_port_in_host_matching: false,
    };
    // Simple regexes take the smallest class, 16 KiB: 1,024 fit the 16 MiB budget.
    assert!(RouteConfig::new(&spec(1024)).is_ok());
    let err = RouteConfig::new(&spec(1025)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "route configuration \"rc\": virtual_hosts[0].routes[1024].match.headers[0].string_match.safe_regex: regex \"v1024-[0-9]+\" is over the budget: the regexes of one resource may take 16 MiB together"
    );
    // Each resource has a budget of its own.
    assert!(RouteConfig::new(&spec(1024)).is_ok());
    // A hash policy's regex_rewrite is bounded too.
    let mut forward = ForwardActionSpec::to_cluster("c");
    forward.hash_policies.push(HashPolicySpec {
        kind: HashPolicyKind::Header {
            name: "x-user".into(),
            regex_rewrite: Some((r"\w{1,40}".into(), "x".into())),
        },
        terminal: false,
    });
    let err = RouteConfig::new(&RouteConfigSpec {
        name: "rc".into(),
        virtual_hosts: vec![vhost(
            "a",
            &["*"],
            vec![RouteSpec {
                name: "h".into(),
                matcher: RouteMatchSpec::prefix("/"),
                action: RouteActionSpec::Forward(Box::new(forward)),
                fault: None,
                rbac: Vec::new(),
            }],
        )],
        ignore_port_in_host_matching: false,
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(r#"header.regex_rewrite.pattern: invalid regex "\\w{1,40}": compiles to more than 1024 KiB"#),
        "{err}"
    );
}
