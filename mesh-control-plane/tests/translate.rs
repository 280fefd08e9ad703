//! Translation of the bundled examples (`examples/config/`) and of bad YAML.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_control_plane::{IstioConfig, Resources, translate};
use mesh_core::route::{Destination, FaultAbort};
use mesh_core::{Cluster, EndpointSet, LbConfig, Listener, RouteConfig, RouteSource};
use mesh_xds_client::ResourceType;
use mesh_xds_client::decode::{Decoded, decode};

const HOST: &str = "ui.default.svc.cluster.local";
const V1: &str = "outbound|9080|version-1|ui.default.svc.cluster.local";
const V2: &str = "outbound|9080|version-2-beta|ui.default.svc.cluster.local";
const DEFAULT: &str = "outbound|9080||ui.default.svc.cluster.local";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/config")
}

/// The examples directory with `ui-routes.yaml` replaced by a variant.
fn load(variant: Option<&str>) -> Resources {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(examples()).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    if let Some(v) = variant {
        std::fs::copy(
            examples().join("variants").join(v),
            dir.path().join("ui-routes.yaml"),
        )
        .unwrap();
    }
    translate(&IstioConfig::load_dir(dir.path()).unwrap()).unwrap()
}

fn listener(r: &Resources, name: &str) -> Arc<Listener> {
    match decode(ResourceType::Listener, &r.listeners[name]).unwrap() {
        Decoded::Listener(l) => l,
        _ => unreachable!(),
    }
}
fn routes(r: &Resources, name: &str) -> Arc<RouteConfig> {
    match decode(ResourceType::RouteConfiguration, &r.routes[name]).unwrap() {
        Decoded::RouteConfig(x) => x,
        _ => unreachable!(),
    }
}
fn cluster(r: &Resources, name: &str) -> Arc<Cluster> {
    match decode(ResourceType::Cluster, &r.clusters[name]).unwrap() {
        Decoded::Cluster(x) => x,
        _ => unreachable!(),
    }
}
fn endpoints(r: &Resources, name: &str) -> Arc<EndpointSet> {
    match decode(ResourceType::ClusterLoadAssignment, &r.endpoints[name]).unwrap() {
        Decoded::Endpoints(x) => x,
        _ => unreachable!(),
    }
}

fn weights(d: &Destination) -> Vec<(String, u32)> {
    match d {
        Destination::Cluster(c) => vec![(c.to_string(), 100)],
        Destination::Weighted(w) => w
            .entries()
            .iter()
            .map(|(c, w)| (c.to_string(), *w))
            .collect(),
    }
}

#[test]
fn base_config_is_named_and_shaped_like_istiod() {
    let r = load(None);
    assert_eq!(
        r.listeners.keys().collect::<Vec<_>>(),
        ["ui.default.svc.cluster.local:9080"]
    );
    assert_eq!(r.routes.keys().collect::<Vec<_>>(), [DEFAULT]);
    assert_eq!(r.clusters.keys().collect::<Vec<_>>(), [V1, V2, DEFAULT]);
    let l = listener(&r, "ui.default.svc.cluster.local:9080");
    assert!(matches!(l.routes(), RouteSource::Rds(n) if &**n == DEFAULT));
    assert!(l.fault_filter());

    let rc = routes(&r, DEFAULT);
    let vh = &rc.virtual_hosts()[0];
    assert_eq!(vh.name(), "ui.default.svc.cluster.local:9080");
    let domains: Vec<&str> = vh.domains().iter().map(|d| &**d).collect();
    // Exactly what the real istiod sends for this service (scripts/istiod/interop.sh).
    assert_eq!(
        domains,
        [
            HOST,
            "ui.default.svc.cluster.local:9080",
            "ui.default.svc.cluster.local.",
            "ui.default.svc.cluster.local.:9080",
            "ui",
            "ui:9080",
            "ui.default.svc",
            "ui.default.svc:9080",
            "ui.default",
            "ui.default:9080",
        ]
    );
    let names: Vec<&str> = vh.routes().iter().map(|r| r.name()).collect();
    assert_eq!(names, ["beta-testers", "canary"]);
    let beta = vh.routes()[0].forward().unwrap();
    assert_eq!(weights(&beta.destination), [(V2.to_string(), 100)]);
    let canary = vh.routes()[1].forward().unwrap();
    assert_eq!(
        weights(&canary.destination),
        [(V1.to_string(), 90), (V2.to_string(), 10)]
    );
    let retry = canary.retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries(), 3);
    assert_eq!(retry.per_try_timeout(), Some(Duration::from_secs(2)));
    assert_eq!(
        retry.retry_on().names().collect::<Vec<_>>(),
        ["5xx", "connect-failure", "refused-stream"]
    );
    // The route without a VS retry block gets istiod's default policy.
    let beta_retry = beta.retry_policy.as_ref().unwrap();
    assert_eq!(beta_retry.num_retries(), 2);
    // istiod's own: `retriable-status-codes` with no codes (so a 503 is not retried).
    assert_eq!(beta_retry.retriable_status_codes(), [] as [u16; 0]);
    assert_eq!(
        canary.timeouts.route_timeout(),
        None,
        "Istio disables the route timeout by default"
    );

    let c = cluster(&r, V1);
    assert_eq!(&**c.eds_service_name(), V1);
    assert_eq!(c.lb(), &LbConfig::RoundRobin);
    let t = c.thresholds();
    assert_eq!(
        (
            t.max_connections,
            t.max_pending_requests,
            t.max_requests,
            t.max_retries
        ),
        (100, 50, 100, 20)
    );
    assert_eq!(c.connect_timeout(), Duration::from_secs(1));
    let od = c.outlier_detection().unwrap();
    assert_eq!(
        (
            od.consecutive_gateway_failure,
            od.enforcing_consecutive_gateway_failure
        ),
        (1, 100)
    );
    assert_eq!(
        (od.enforcing_consecutive_5xx, od.enforcing_success_rate),
        (0, 0)
    );
    assert_eq!(
        (od.interval, od.base_ejection_time, od.max_ejection_percent),
        (Duration::from_secs(5), Duration::from_secs(300), 100)
    );
    assert_eq!(c.picker_options().panic_threshold, 0);

    let e1 = endpoints(&r, V1);
    let ports: Vec<u16> = e1.endpoints().iter().map(|e| e.address.port()).collect();
    assert_eq!(ports, [18081, 18082, 18083]);
    assert_eq!(
        e1.endpoints()[0].labels.get("version").map(String::as_str),
        Some("v1")
    );
    assert!(e1.endpoints()[0].labels.get("workload").is_some());
    // As istiod sends ServiceEntry endpoints: no health status (UNKNOWN, usable).
    assert_eq!(
        e1.endpoints()[0].health,
        mesh_core::HealthStatus::Unknown,
        "{:?}",
        e1.endpoints()[0].health
    );
    let e2 = endpoints(&r, V2);
    assert_eq!(
        e2.endpoints()
            .iter()
            .map(|e| e.address.port())
            .collect::<Vec<_>>(),
        [18091]
    );
    assert_eq!(endpoints(&r, DEFAULT).len(), 4);
}

#[test]
fn shift_to_0_100() {
    let r = load(Some("ui-routes-shift-0-100.yaml"));
    let rc = routes(&r, DEFAULT);
    let canary = rc.virtual_hosts()[0].routes()[0].forward().unwrap();
    // The zero-weight destination is dropped, as istiod does.
    assert_eq!(weights(&canary.destination), [(V2.to_string(), 100)]);
}

#[test]
fn mirroring() {
    let r = load(Some("ui-routes-mirror.yaml"));
    let rc = routes(&r, DEFAULT);
    let f = rc.virtual_hosts()[0].routes()[0].forward().unwrap();
    assert_eq!(weights(&f.destination), [(V1.to_string(), 100)]);
    assert_eq!(&*f.mirrors[0].cluster, V2);
    assert_eq!(f.mirrors[0].fraction.as_per_million(), 1_000_000);
}

#[test]
fn fault_abort_10_percent_400() {
    let r = load(Some("ui-routes-fault.yaml"));
    let rc = routes(&r, DEFAULT);
    let fault = rc.virtual_hosts()[0].routes()[0].fault().unwrap().clone();
    let abort = fault.spec().abort.unwrap();
    assert_eq!(abort.percentage.as_per_million(), 100_000);
    let (m, u, h) = (
        http::Method::GET,
        http::Uri::from_static("/"),
        http::HeaderMap::new(),
    );
    let req = mesh_core::RouteRequest::new(&m, &u, &h);
    let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(1);
    let aborted = (0..10_000)
        .filter(|_| fault.decide(&req, &mut rng).abort == Some(FaultAbort::Http(400)))
        .count();
    assert!((900..=1100).contains(&aborted), "{aborted}");
}

#[test]
fn security_resources_load() {
    let cfg = IstioConfig::load_dir(&examples()).unwrap();
    assert_eq!(
        cfg.peer_authentications[0].spec.mtls.as_ref().unwrap().mode,
        "STRICT"
    );
    let ap = &cfg.authorization_policies[0];
    assert_eq!(ap.spec.rules[0].to[0].operation.paths, ["/orders*"]);
    assert_eq!(ap.spec.rules[0].when[0].values, ["orders-readers"]);
}

fn error(yaml: &str) -> String {
    let mut cfg = IstioConfig::default();
    let base = std::fs::read_to_string(examples().join("ui-service.yaml")).unwrap();
    cfg.add_text("ui-service.yaml", &base).unwrap();
    match cfg.add_text("bad.yaml", yaml) {
        Err(e) => e.to_string(),
        Ok(()) => translate(&cfg).unwrap_err().to_string(),
    }
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: ui\nspec:\n  hosts: [ui.default.svc.cluster.local]\n  http:\n";

#[test]
fn bad_yaml_gets_exact_messages() {
    assert_eq!(
        error(
            "# a comment\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: g}\n"
        ),
        "bad.yaml:1: unknown kind \"Gateway\" (supported: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RequestAuthentication)"
    );
    assert_eq!(
        error(&format!(
            "---\n{VS_HEAD}  - route:\n    - destination: {{host: ui.default.svc.cluster.local, subset: version-1}}\n      weight: 80\n    - destination: {{host: ui.default.svc.cluster.local, subset: version-2-beta}}\n      weight: 10\n"
        )),
        "bad.yaml:2: VirtualService default/ui: spec.http[0].route: weights sum to 90; they must sum to 100"
    );
    assert_eq!(
        error(&format!(
            "{VS_HEAD}  - route:\n    - destination: {{host: ui.default.svc.cluster.local, subset: version-3}}\n"
        )),
        "bad.yaml:1: VirtualService default/ui: spec.http[0].route[0].destination.subset: subset \"version-3\" is not defined in any DestinationRule for ui.default.svc.cluster.local"
    );
    assert_eq!(
        error(&format!(
            "{VS_HEAD}  - timeout: 2 seconds\n    route:\n    - destination: {{host: ui.default.svc.cluster.local}}\n"
        )),
        "bad.yaml:1: VirtualService default/ui: spec.http[0].timeout: \"2 seconds\" is not a duration (e.g. 2s, 100ms, 5m)"
    );
    let e = error(&format!(
        "{VS_HEAD}  - route:\n    - destination: {{host: ui.default.svc.cluster.local}}\n      weight: lots\n"
    ));
    assert!(
        e.starts_with("bad.yaml:10: VirtualService ui: spec.http[0].route[0].weight: invalid type"),
        "{e}"
    );
}

#[test]
fn peer_authentication_and_authorization_policy_shape_inbound_listeners() {
    use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
    use envoy_types::pb::envoy::config::rbac::v3::{permission, principal};
    use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_filter,
    };
    use prost::Message;

    let r = load(None);
    assert_eq!(r.inbound_listeners.len(), 4);
    assert!(
        r.listeners.keys().all(|k| !k.starts_with("xds.istio.io")),
        "not in wildcard LDS"
    );
    let l = Listener::decode(
        &*r.inbound_listeners["xds.istio.io/grpc/lds/inbound/127.0.0.1:18081"].value,
    )
    .unwrap();
    assert_eq!(l.filter_chains.len(), 1);
    let chain = &l.filter_chains[0];
    assert_eq!(chain.name, "inbound-mtls", "PeerAuthentication STRICT");
    assert_eq!(
        chain.transport_socket.as_ref().unwrap().name,
        "envoy.transport_sockets.tls"
    );
    assert_eq!(chain.filters[0].name, "inbound-hcmmtls");
    let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!()
    };
    let m = HttpConnectionManager::decode(&*any.value).unwrap();
    let names: Vec<&str> = m.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["envoy.filters.http.rbac", "envoy.filters.http.router"],
        "ALLOW only; no DENY filter"
    );
    let Some(http_filter::ConfigType::TypedConfig(rbac_any)) = &m.http_filters[0].config_type
    else {
        panic!()
    };
    let rules = Rbac::decode(&*rbac_any.value).unwrap().rules.unwrap();
    let policy = &rules.policies["default-orders-read-0"];
    let Some(permission::Rule::AndRules(and)) = &policy.permissions[0].rule else {
        panic!("{policy:?}")
    };
    assert_eq!(and.rules.len(), 2, "method and path");
    let path = format!("{:?}", and.rules[1]);
    assert!(path.contains("Prefix(\"/orders\")"), "{path}");
    let Some(principal::Identifier::AndIds(ids)) = &policy.principals[0].identifier else {
        panic!()
    };
    let claims = format!("{:?}", ids.ids[1]);
    assert!(
        claims.contains("request.auth.claims")
            && claims.contains("groups")
            && claims.contains("orders-readers"),
        "{claims}"
    );
}

/// The filter chain of ui's inbound listener (127.0.0.1:18081) that serves a connection from
/// `peer`, as mesh decodes it.
fn inbound_chain(r: &Resources, peer: &str, tls: bool) -> Arc<mesh_core::FilterChain> {
    let name = "xds.istio.io/grpc/lds/inbound/127.0.0.1:18081";
    let Decoded::ServerListener(l) =
        decode(ResourceType::Listener, &r.inbound_listeners[name]).unwrap()
    else {
        panic!("a server listener")
    };
    assert_eq!(l.address(), Some("127.0.0.1:18081".parse().unwrap()));
    l.select(&mesh_core::ConnectionFacts {
        local: "127.0.0.1:18081".parse().unwrap(),
        peer: peer.parse().unwrap(),
        tls,
    })
    .expect("a chain")
    .clone()
}

#[test]
fn mesh_decodes_the_inbound_listener_into_a_server_listener() {
    let r = load(None);
    let chain = inbound_chain(&r, "127.0.0.9:40000", true);
    assert_eq!(&**chain.name(), "inbound-mtls");
    let tls = chain.tls().unwrap();
    assert!(tls.require_client_certificate);
    assert_eq!(
        (&*tls.identity_provider, tls.root_provider.as_deref()),
        ("default", Some("default"))
    );
    // The example's policy wants a JWT's claims: without one, GET /orders is denied.
    let (m, u, h) = (
        http::Method::GET,
        http::Uri::from_static("http://ui/orders/1"),
        http::HeaderMap::new(),
    );
    let v = chain.rbac().evaluate(&mesh_core::rbac::AuthzRequest {
        request: mesh_core::RouteRequest::new(&m, &u, &h),
        source: "127.0.0.9:40000".parse().unwrap(),
        destination: "127.0.0.1:18081".parse().unwrap(),
        peer: None,
        tls: true,
        auth: None,
    });
    assert_eq!(
        v.denied.unwrap().to_string(),
        "no policy of envoy.filters.http.rbac allows it"
    );
}

#[test]
fn client_listeners_carry_istiods_address_and_stay_api_listeners() {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
    use prost::Message;
    let r = load(None);
    let name = "ui.default.svc.cluster.local:9080";
    let l = PbListener::decode(&*r.listeners[name].value).unwrap();
    let Some(address::Address::SocketAddress(a)) = l.address.and_then(|a| a.address) else {
        panic!("an address")
    };
    assert_eq!(a.address, "0.0.0.0");
    assert_eq!(
        a.port_specifier,
        Some(socket_address::PortSpecifier::PortValue(9080))
    );
    // mesh still reads it as a client listener.
    assert_eq!(&**listener(&r, name).name(), name);
}

#[test]
fn a_wildcard_destination_rule_applies_to_the_hosts_it_covers_and_an_exact_one_wins() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a, namespace: default}\nspec:\n  hosts: [a.default.svc.cluster.local, b.default.svc.cluster.local]\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: 127.0.0.1, ports: {http: 8080}}]\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: all, namespace: default}\nspec: {host: '*.default.svc.cluster.local', trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: default}\nspec: {host: b.default.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}\n";
    let mut cfg = IstioConfig::default();
    cfg.add_text("w.yaml", yaml).unwrap();
    let r = translate(&cfg).unwrap();
    assert!(
        cluster(&r, "outbound|80||a.default.svc.cluster.local")
            .tls()
            .is_some()
    );
    assert!(
        cluster(&r, "outbound|80||b.default.svc.cluster.local")
            .tls()
            .is_none()
    );
}

mod no_panic {
    use mesh_control_plane::{IstioConfig, translate};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 256,
            rng_seed: proptest::test_runner::RngSeed::Fixed(11),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// The bundled YAML with a random line dropped or duplicated, or random text: an error
        /// with file and line, or a translation — never a panic.
        #[test]
        fn edited_yaml_never_panics(drop_line in any::<prop::sample::Index>(), dup_line in any::<prop::sample::Index>(), noise in "[ -~\n]{0,40}") {
            let base = std::fs::read_to_string(super::examples().join("ui-service.yaml")).unwrap()
                + "---\n" + &std::fs::read_to_string(super::examples().join("ui-routes.yaml")).unwrap();
            let mut lines: Vec<&str> = base.lines().collect();
            let d = drop_line.index(lines.len());
            lines.remove(d);
            let c = dup_line.index(lines.len());
            let copy = lines[c];
            lines.insert(c, copy);
            let text = lines.join("\n") + "\n" + &noise;
            let mut cfg = IstioConfig::default();
            if cfg.add_text("edited.yaml", &text).is_ok() {
                let _ = translate(&cfg);
            }
        }
    }
}

#[test]
fn request_authentication_becomes_a_jwt_filter_that_feeds_rbac() {
    use mesh_core::jwt::{JwtError, KeySource};
    use mesh_xds_client::testing::jwt::JwtIssuer;
    let idp = JwtIssuer::new("https://idp.example", "k1");
    let mut cfg = IstioConfig::load_dir(&examples()).unwrap();
    let jwks = JwtIssuer::jwks(&[&idp]);
    let yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: idp\n  namespace: istio-system\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n    jwks: '{jwks}'\n  - issuer: https://other.example\n    jwksUri: https://other.example/keys\n"
    );
    cfg.add_text("jwt.yaml", &yaml).unwrap();
    let r = translate(&cfg).unwrap();
    let chain = inbound_chain(&r, "127.0.0.9:40000", true);
    // A root-namespace RequestAuthentication covers every workload: one provider per rule.
    let jwt = chain.jwt().expect("a JWT filter");
    let providers: Vec<(&str, &str)> = jwt
        .providers()
        .iter()
        .map(|p| (&**p.name(), p.issuer()))
        .collect();
    assert_eq!(
        providers,
        [
            ("origins-0", "https://idp.example"),
            ("origins-1", "https://other.example")
        ]
    );
    assert!(matches!(jwt.providers()[0].keys(), KeySource::Inline(_)));
    let remote: Vec<&str> = jwt.remote_keys().map(|r| &*r.uri).collect();
    assert_eq!(remote, ["https://other.example/keys"]);

    let judge = |token: Option<String>| {
        let mut h = http::HeaderMap::new();
        if let Some(t) = token {
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (m, u) = (
            http::Method::GET,
            http::Uri::from_static("http://ui/orders/1"),
        );
        let req = mesh_core::RouteRequest::new(&m, &u, &h);
        let no_keys = |_: &str| None;
        let verified = jwt.authenticate(&req, &no_keys, JwtIssuer::now(), &mut rand::rng())?;
        let v = chain.rbac().evaluate(&mesh_core::rbac::AuthzRequest {
            request: req,
            source: "127.0.0.9:40000".parse().unwrap(),
            destination: "127.0.0.1:18081".parse().unwrap(),
            peer: None,
            tls: true,
            auth: verified.as_ref().map(|v| &*v.auth),
        });
        Ok::<_, JwtError>(v.denied.map(|d| d.to_string()))
    };
    let readers = serde_json::json!({"groups": ["orders-readers"]});
    assert_eq!(judge(Some(idp.token("alice", readers))), Ok(None));
    let denied = Some("no policy of envoy.filters.http.rbac allows it".to_string());
    assert_eq!(
        judge(Some(idp.token("bob", serde_json::json!({"groups": ["x"]})))),
        Ok(denied.clone())
    );
    assert_eq!(judge(None), Ok(denied), "no token: no request principal");
    let forged = JwtIssuer::new("https://idp.example", "k1");
    assert_eq!(
        judge(Some(forged.token("alice", serde_json::json!({})))),
        Err(JwtError::Signature)
    );
}

#[test]
fn a_request_authentication_without_keys_is_refused() {
    let e = error(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: idp\nspec:\n  jwtRules:\n  - issuer: https://idp.example\n",
    );
    assert_eq!(
        e,
        "bad.yaml:1: RequestAuthentication idp: jwtRules[0]: needs jwks or jwksUri (OpenID discovery from the issuer is not supported)"
    );
}

/// The server listener's ALLOW/DENY verdict for a request from `source` (no certificate).
fn verdict(extra_yaml: &str, method: &str, path: &str, source: &str) -> Option<String> {
    let mut cfg = IstioConfig::default();
    let base = std::fs::read_to_string(examples().join("ui-service.yaml")).unwrap();
    cfg.add_text("ui-service.yaml", &base).unwrap();
    cfg.add_text("policy.yaml", extra_yaml).unwrap();
    let r = translate(&cfg).unwrap();
    let chain = inbound_chain(&r, source, false);
    let (m, u, h) = (
        method.parse::<http::Method>().unwrap(),
        format!("http://ui{path}").parse::<http::Uri>().unwrap(),
        http::HeaderMap::new(),
    );
    chain
        .rbac()
        .evaluate(&mesh_core::rbac::AuthzRequest {
            request: mesh_core::RouteRequest::new(&m, &u, &h),
            source: source.parse().unwrap(),
            destination: "127.0.0.1:18081".parse().unwrap(),
            peer: None,
            tls: false,
            auth: None,
        })
        .denied
        .map(|d| d.to_string())
}

const AP_HEAD: &str =
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n";

#[test]
fn not_fields_sources_and_conditions_mean_what_they_mean_in_istio() {
    // notPaths / notMethods: everything but writes to /admin.
    let allow = format!(
        "{AP_HEAD}  action: ALLOW\n  rules:\n  - to:\n    - operation: {{notPaths: ['/admin*']}}\n    - operation: {{paths: ['/admin*'], notMethods: [POST, DELETE]}}\n"
    );
    let src = "127.0.0.9:40000";
    assert_eq!(verdict(&allow, "GET", "/orders", src), None);
    assert_eq!(verdict(&allow, "GET", "/admin/x", src), None);
    assert!(verdict(&allow, "POST", "/admin/x", src).is_some());
    assert_eq!(verdict(&allow, "POST", "/orders", src), None);
    // Two sources are any-of; the fields of one source all-of.
    let sources = format!(
        "{AP_HEAD}  action: ALLOW\n  rules:\n  - from:\n    - source: {{ipBlocks: [127.0.0.9/32], notIpBlocks: [127.0.0.9]}}\n    - source: {{ipBlocks: [127.0.1.0/24]}}\n"
    );
    assert!(verdict(&sources, "GET", "/", "127.0.0.9:1").is_some());
    assert_eq!(verdict(&sources, "GET", "/", "127.0.1.7:1"), None);
    assert!(verdict(&sources, "GET", "/", "127.0.2.7:1").is_some());
    // A DENY on a `when` condition denies (it used to be a metadata match that never held).
    let deny = format!(
        "{AP_HEAD}  action: DENY\n  rules:\n  - when:\n    - key: source.ip\n      values: [127.0.0.66]\n    - key: destination.port\n      notValues: ['9999']\n"
    );
    assert_eq!(
        verdict(&deny, "GET", "/", "127.0.0.66:1"),
        Some("denied by policy \"default-p-0\" of envoy.filters.http.rbac.DENY".into())
    );
    assert_eq!(verdict(&deny, "GET", "/", "127.0.0.67:1"), None);
}

#[test]
fn policy_fields_mesh_cannot_honour_are_refused_not_ignored() {
    let e = error(&format!(
        "{AP_HEAD}  rules:\n  - to:\n    - operation: {{notPath: ['/admin']}}\n"
    ));
    assert!(
        e.starts_with("bad.yaml:") && e.contains("unknown field `notPath`"),
        "{e}"
    );
    let e = error(&format!(
        "{AP_HEAD}  rules:\n  - when:\n    - key: connection.sni\n      values: [x]\n"
    ));
    assert_eq!(
        e,
        "bad.yaml:1: AuthorizationPolicy p: rules[0].when[0]: key \"connection.sni\" is not supported (supported: request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, request.auth.principal, request.auth.audiences, request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port)"
    );
    let e = error(&format!(
        "{AP_HEAD}  action: CUSTOM\n  provider: {{name: opa}}\n"
    ));
    assert!(e.contains("unknown field `provider`"), "{e}");
    let e = error(&format!("{AP_HEAD}  action: CUSTOM\n"));
    assert_eq!(
        e,
        "bad.yaml:1: AuthorizationPolicy p: action \"CUSTOM\" is not supported (ALLOW, DENY, AUDIT)"
    );
}

#[test]
fn endpoint_metadata_names_each_workload_in_its_own_namespace_with_its_canonical_labels() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: cart, namespace: shop}\nspec:\n  hosts: [cart.shop.svc.cluster.local]\n  ports: [{number: 8080, name: http}]\n  endpoints:\n  - address: 10.0.0.1\n    labels: {app: cart, version: v2}\n  workloadSelector:\n    labels: {app: cart}\n---\n\
apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: cart-vm, namespace: shop}\nspec:\n  address: 10.0.0.2\n  labels: {app: cart, service.istio.io/canonical-name: cart-svc, service.istio.io/canonical-revision: r7}\n---\n\
apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: bare, namespace: tools}\nspec:\n  hosts: [bare.tools.svc.cluster.local]\n  ports: [{number: 80, name: http}]\n  endpoints:\n  - address: 10.0.0.3\n";
    let mut cfg = IstioConfig::default();
    cfg.add_text("workloads.yaml", yaml).unwrap();
    let r = translate(&cfg).unwrap();
    let workloads = |cluster: &str| -> Vec<String> {
        endpoints(&r, cluster)
            .endpoints()
            .iter()
            .map(|e| e.labels["workload"].clone())
            .collect()
    };
    assert_eq!(
        workloads("outbound|8080||cart.shop.svc.cluster.local"),
        [
            "cart-0;shop;cart;v2;Kubernetes",
            "cart-vm;shop;cart-svc;r7;Kubernetes"
        ]
    );
    assert_eq!(
        workloads("outbound|80||bare.tools.svc.cluster.local"),
        ["bare-0;tools;bare-0;latest;Kubernetes"]
    );
}

#[test]
fn mesh_external_endpoints_are_not_named_as_workloads() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: payments, namespace: shop}\nspec:\n  hosts: [api.payments.example]\n  location: MESH_EXTERNAL\n  ports: [{number: 443, name: http}]\n  endpoints:\n  - address: 203.0.113.7\n    labels: {app: payments}\n";
    let mut cfg = IstioConfig::default();
    cfg.add_text("external.yaml", yaml).unwrap();
    let r = translate(&cfg).unwrap();
    let eps = endpoints(&r, "outbound|443||api.payments.example");
    // Its labels stay; no `istio.workload`, so clients neither label it as a mesh workload
    // nor send it their own metadata.
    assert_eq!(
        eps.endpoints()[0].labels.get("app").map(String::as_str),
        Some("payments")
    );
    assert!(!eps.endpoints()[0].labels.contains_key("workload"));
    assert_eq!(
        error(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [x.example]\n  location: OUTSIDE\n  ports: [{number: 80, name: http}]\n"
        ),
        "bad.yaml:1: ServiceEntry default/x: spec.location: \"OUTSIDE\" is not MESH_INTERNAL or MESH_EXTERNAL"
    );
}
