use super::*;

fn istio_testdata(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn parses_istio_agents_golden_bootstrap() {
    let b = Bootstrap::from_json(&istio_testdata("grpc-bootstrap.golden.json"), "golden").unwrap();
    let s = b.server();
    assert_eq!(s.address, ServerAddress::Unix("/etc/istio/XDS".into()));
    assert_eq!(s.channel_credentials, ChannelCredentials::Insecure);
    assert!(s.has_feature("xds_v3") && !s.has_feature("ignore_resource_deletion"));
    assert_eq!(
        b.node.id,
        "sidecar~127.0.0.1~pod1.fake-namespace~fake-namespace.svc.cluster.local"
    );
    assert_eq!(b.node.metadata["GENERATOR"], "grpc");
    assert_eq!(b.node.locality, Some(NodeLocality::default()));
    let fw = b.certificate_providers["default"]
        .file_watcher
        .as_ref()
        .unwrap();
    assert_eq!(
        fw.certificate_file.as_deref(),
        Some(Path::new("/cert/path/cert-chain.pem"))
    );
    assert_eq!(fw.refresh_interval, Duration::from_secs(900));
    assert_eq!(
        b.server_listener_resource_name_template.as_deref(),
        Some("xds.istio.io/grpc/lds/inbound/%s")
    );
    assert_eq!(
        b.listener_name("reviews.default.svc.cluster.local:9080"),
        "reviews.default.svc.cluster.local:9080"
    );
}

#[test]
fn parses_istiods_grpcgen_test_bootstrap_ignoring_unknown_keys() {
    let b = Bootstrap::from_json(&istio_testdata("xds_bootstrap.json"), "grpcgen").unwrap();
    assert_eq!(
        b.server().address,
        ServerAddress::Tcp {
            host: "localhost".into(),
            port: 14057
        }
    );
    assert_eq!(b.node.locality, None, "the misspelled key is ignored");
}

#[test]
fn server_uris() {
    let p = |s: &str| ServerAddress::parse(s);
    assert_eq!(
        p("istiod.istio-system.svc:15012").unwrap(),
        ServerAddress::Tcp {
            host: "istiod.istio-system.svc".into(),
            port: 15012
        }
    );
    assert_eq!(
        p("dns:///istiod.istio-system.svc:15010").unwrap(),
        ServerAddress::Tcp {
            host: "istiod.istio-system.svc".into(),
            port: 15010
        }
    );
    assert_eq!(
        p("dns://8.8.8.8/istiod:15010").unwrap(),
        ServerAddress::Tcp {
            host: "istiod".into(),
            port: 15010
        }
    );
    assert_eq!(
        p("[::1]:15010").unwrap(),
        ServerAddress::Tcp {
            host: "::1".into(),
            port: 15010
        }
    );
    assert_eq!(
        p("unix:///etc/istio/proxy/XDS").unwrap(),
        ServerAddress::Unix("/etc/istio/proxy/XDS".into())
    );
    assert_eq!(p("istiod").unwrap_err(), "\"istiod\": expected host:port");
    assert_eq!(
        p("istiod:http").unwrap_err(),
        "\"istiod:http\": \"http\" is not a port"
    );
    assert_eq!(
        p("unix://relative").unwrap_err(),
        "\"unix://relative\": a unix socket path must be absolute (unix:///path)"
    );
}

#[test]
fn errors_name_source_path_and_problem() {
    let e = Bootstrap::from_file("/nonexistent/grpc-bootstrap.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap /nonexistent/grpc-bootstrap.json: cannot read the file: No such file or directory (os error 2)"
    );
    let e = Bootstrap::from_json("{\n  \"xds_servers\": [,]\n}", "b.json").unwrap_err();
    assert_eq!(e.path, "");
    assert!(
        e.message.starts_with("invalid JSON at line 2 column 19"),
        "{}",
        e.message
    );
    let e = Bootstrap::from_json(r#"{"node": {"id": "x"}}"#, "b.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap b.json: xds_servers: is missing: the bootstrap must name at least one xDS server"
    );
    let e = Bootstrap::from_json(r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "google_default"}]}]}"#, "b.json").unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap b.json: xds_servers[0].channel_creds: no supported type (supported: \"insecure\", \"tls\"; found [\"google_default\"])"
    );
    let e = Bootstrap::from_json(
        r#"{"xds_servers": [{"server_uri": 7, "channel_creds": []}]}"#,
        "b.json",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap b.json: xds_servers[0].server_uri: expected a string, found a number"
    );
    let e = Bootstrap::from_json(
        r#"{"xds_servers": [{"server_uri": "a:1", "channel_creds": [{"type": "insecure"}]}],
            "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"certificate_file": "c.pem", "refresh_interval": "soon"}}}}"#,
        "b.json",
    )
    .unwrap_err();
    assert_eq!(
        e.path,
        "certificate_providers.default.config.refresh_interval"
    );
    let e = Bootstrap::from_json(
        r#"{"xds_servers": [{"server_uri": "unix:///etc/istio/proxy/XDS", "channel_creds": [{"type": "tls"}]}]}"#,
        "b.json",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap b.json: xds_servers[0].channel_creds: \"tls\" is not supported for a unix: server_uri; use \"insecure\" (the socket is local)"
    );
    let token = r#""call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/t"}}]"#;
    let e = Bootstrap::from_json(
        &format!(r#"{{"xds_servers": [{{"server_uri": "istiod.istio-system.svc:15010", "channel_creds": [{{"type": "insecure"}}], {token}}}]}}"#),
        "b.json",
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap b.json: xds_servers[0].call_creds: a bearer token is only sent over TLS or to a local address, and istiod.istio-system.svc:15010 with \"insecure\" credentials is neither"
    );
    for local in [
        "127.0.0.1:15010",
        "localhost:15010",
        "[::1]:15010",
        "unix:///x",
    ] {
        Bootstrap::from_json(
            &format!(r#"{{"xds_servers": [{{"server_uri": "{local}", "channel_creds": [{{"type": "insecure"}}], {token}}}]}}"#),
            "b.json",
        )
        .unwrap_or_else(|e| panic!("{local}: {e}"));
    }
    let e = Bootstrap::from_vars(|_| None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap (none): neither GRPC_XDS_BOOTSTRAP (a file) nor GRPC_XDS_BOOTSTRAP_CONFIG (inline JSON) is set"
    );
}

#[test]
fn tls_creds_call_creds_and_inline_config() {
    let json = r#"{
        "xds_servers": [{
            "server_uri": "istiod.istio-system.svc:15012",
            "channel_creds": [{"type": "fancy"}, {"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}}, {"type": "insecure"}],
            "call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/token"}}, {"type": "other"}],
            "server_features": ["xds_v3", "ignore_resource_deletion"]
        }],
        "client_default_listener_resource_name_template": "xdstp://x/%s"
    }"#;
    let b = Bootstrap::from_vars(|k| (k == "GRPC_XDS_BOOTSTRAP_CONFIG").then(|| json.to_string()))
        .unwrap();
    assert_eq!(b.source_name, "GRPC_XDS_BOOTSTRAP_CONFIG");
    let s = b.server();
    assert_eq!(
        s.channel_credentials,
        ChannelCredentials::Tls {
            ca_certificate_file: Some("/ca.pem".into()),
            certificate_file: None,
            private_key_file: None,
            refresh_interval: Duration::from_secs(600)
        }
    );
    assert_eq!(
        s.call_credentials,
        [CallCredentials::JwtTokenFile("/token".into())]
    );
    assert!(s.has_feature("ignore_resource_deletion"));
    assert_eq!(b.listener_name("a:80"), "xdstp://x/a:80");
    assert_eq!(b.node, Node::default(), "an absent node is accepted");
}

#[test]
fn istiod_direct_builder_fills_node_like_istio_agent() {
    let env = |k: &str| {
        Some(
            match k {
                "POD_NAME" => "ui-v1-abc",
                "POD_NAMESPACE" => "shop",
                "INSTANCE_IP" => "10.1.2.3",
                "SERVICE_ACCOUNT" => "ui",
                "ISTIO_VERSION" => "1.31.0",
                "ISTIO_METAJSON_LABELS" => r#"{"app":"ui","version":"v1"}"#,
                _ => return None,
            }
            .to_string(),
        )
    };
    let b = IstiodBootstrap::default().build_from(env).unwrap();
    assert_eq!(
        b.node.id,
        "sidecar~10.1.2.3~ui-v1-abc.shop~shop.svc.cluster.local"
    );
    let m = &b.node.metadata;
    assert_eq!(
        (
            m["GENERATOR"].as_str(),
            m["NAMESPACE"].as_str(),
            m["INSTANCE_IPS"].as_str()
        ),
        (Some("grpc"), Some("shop"), Some("10.1.2.3"))
    );
    assert_eq!(
        (m["CLUSTER_ID"].as_str(), m["SERVICE_ACCOUNT"].as_str()),
        (Some("Kubernetes"), Some("ui"))
    );
    assert_eq!(m["LABELS"]["version"], "v1");
    let s = b.server();
    assert_eq!(s.address.to_string(), "istiod.istio-system.svc:15012");
    assert_eq!(
        s.tls_server_name.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(
        s.call_credentials,
        [CallCredentials::JwtTokenFile(
            "/var/run/secrets/tokens/istio-token".into()
        )]
    );
    assert!(
        matches!(&s.channel_credentials, ChannelCredentials::Tls { ca_certificate_file: Some(p), .. } if p == Path::new("/var/run/secrets/istio/root-cert.pem"))
    );
    // The workload certificate comes from istiod's CA, on the same server.
    let ca = b.certificate_providers["default"]
        .istio_ca
        .as_ref()
        .unwrap();
    assert_eq!(ca.spiffe_id, "spiffe://cluster.local/ns/shop/sa/ui");
    assert_eq!(ca.ttl, Duration::from_secs(86_400));
    assert_eq!(&ca.server, s);
    let e = IstiodBootstrap::default().build_from(|_| None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "xDS bootstrap istiod builder: POD_NAME: environment variable is not set"
    );
}

#[test]
fn istiod_direct_builder_takes_revision_overrides_from_the_environment() {
    let env = |k: &str| {
        Some(
            match k {
                "POD_NAME" => "ui-v1-abc",
                "POD_NAMESPACE" => "shop",
                "INSTANCE_IP" => "10.1.2.3",
                "PROXY_CONFIG" => r#"{"discoveryAddress":"istiod-canary.istio-system.svc:15012"}"#,
                "CA_ADDR" => "ca.istio-system.svc:15012",
                "ISTIOD_SAN" => "istiod.istio-system.svc",
                "TRUST_DOMAIN" => "example.org",
                "SECRET_TTL" => "12h30m",
                _ => return None,
            }
            .to_string(),
        )
    };
    let b = IstiodBootstrap::default().build_from(env).unwrap();
    let s = b.server();
    assert_eq!(
        s.address.to_string(),
        "istiod-canary.istio-system.svc:15012"
    );
    assert_eq!(
        s.tls_server_name.as_deref(),
        Some("istiod.istio-system.svc")
    );
    let ca = b.certificate_providers["default"]
        .istio_ca
        .as_ref()
        .unwrap();
    assert_eq!(ca.server.address.to_string(), "ca.istio-system.svc:15012");
    assert_eq!(
        ca.server.tls_server_name.as_deref(),
        Some("istiod.istio-system.svc")
    );
    assert_eq!(ca.spiffe_id, "spiffe://example.org/ns/shop/sa/default");
    assert_eq!(ca.ttl, Duration::from_secs(12 * 3600 + 30 * 60));
    let bad = |k: &str| {
        if k == "SECRET_TTL" {
            Some("a day".into())
        } else {
            env(k)
        }
    };
    assert_eq!(
        IstiodBootstrap::default()
            .build_from(bad)
            .unwrap_err()
            .to_string(),
        "xDS bootstrap istiod builder: SECRET_TTL: \"a day\" is not a duration like \"24h\""
    );
}

#[test]
fn json_durations() {
    assert_eq!(parse_json_duration("900s"), Some(Duration::from_secs(900)));
    assert_eq!(
        parse_json_duration("1.5s"),
        Some(Duration::from_millis(1500))
    );
    assert_eq!(parse_json_duration("-1s"), None);
    assert_eq!(parse_json_duration("10"), None);
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 512,
            rng_seed: proptest::test_runner::RngSeed::Fixed(3),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The golden bootstrap with a random span replaced by random text: a clear error or a
        /// bootstrap, never a panic.
        #[test]
        fn damaged_bootstraps_never_panic(at in any::<prop::sample::Index>(), len in 0usize..20, noise in "[ -~]{0,12}") {
            let text = istio_testdata("grpc-bootstrap.golden.json");
            let start = at.index(text.len());
            let end = (start + len).min(text.len());
            if text.is_char_boundary(start) && text.is_char_boundary(end) {
                let damaged = format!("{}{noise}{}", &text[..start], &text[end..]);
                let _ = Bootstrap::from_json(&damaged, "damaged");
            }
        }
    }
}
