use super::*;
use crate::route::{RouteActionSpec, RouteConfigSpec, RouteMatchSpec, RouteSpec, VirtualHostSpec};

fn inline() -> Option<RouteSourceSpec> {
    Some(RouteSourceSpec::Inline(RouteConfigSpec {
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
    }))
}

fn chain(name: &str, m: FilterChainMatchSpec, tls: bool) -> FilterChainSpec {
    FilterChainSpec {
        name: name.into(),
        matcher: m,
        tls: tls.then(|| DownstreamTlsSpec {
            identity_provider: Some("default".into()),
            root_provider: Some("default".into()),
            require_client_certificate: true,
        }),
        routes: inline(),
        jwt: None,
        rbac: vec![],
    }
}

fn listener(chains: Vec<FilterChainSpec>, default: Option<FilterChainSpec>) -> ServerListener {
    ServerListener::new(&ServerListenerSpec {
        name: "xds.istio.io/grpc/lds/inbound/10.0.0.1:9080".into(),
        address: Some("10.0.0.1:9080".parse().unwrap()),
        chains,
        default_chain: default,
    })
    .unwrap()
}

fn conn(local: &str, peer: &str, tls: bool) -> ConnectionFacts {
    ConnectionFacts {
        local: local.parse().unwrap(),
        peer: peer.parse().unwrap(),
        tls,
    }
}

fn pick(l: &ServerListener, c: ConnectionFacts) -> Option<&str> {
    l.select(&c).map(|c| &**c.name())
}

#[test]
fn istiods_one_chain_serves_every_connection() {
    let strict = listener(vec![chain("inbound-mtls", Default::default(), true)], None);
    let c = strict
        .select(&conn("10.0.0.1:9080", "10.0.0.9:4000", false))
        .unwrap();
    // A plaintext connection gets the mTLS chain: the server then refuses it (STRICT).
    assert!(c.tls().unwrap().require_client_certificate);
    let permissive = listener(
        vec![chain("inbound-plaintext", Default::default(), false)],
        None,
    );
    // PERMISSIVE as istiod writes it (a plaintext chain) serves TLS connections too.
    assert_eq!(
        pick(&permissive, conn("10.0.0.1:9080", "10.0.0.9:4000", true)),
        Some("inbound-plaintext")
    );
}

#[test]
fn the_most_specific_chain_wins_in_envoys_order() {
    let port = |p| FilterChainMatchSpec {
        destination_port: Some(p),
        ..Default::default()
    };
    let tls = FilterChainMatchSpec {
        transport_protocol: "tls".into(),
        ..Default::default()
    };
    let raw = FilterChainMatchSpec {
        transport_protocol: "raw_buffer".into(),
        ..Default::default()
    };
    let src = |a: &str, len| FilterChainMatchSpec {
        source_prefix_ranges: vec![CidrSpec {
            address: a.into(),
            prefix_len: len,
        }],
        ..Default::default()
    };
    let l = listener(
        vec![
            chain("any", Default::default(), false),
            chain("port", port(9080), false),
            chain("tls", tls, true),
            chain("raw", raw, false),
            chain("wide", src("10.0.0.0", 8), false),
            chain("narrow", src("10.0.0.0", 24), false),
        ],
        None,
    );
    // The destination port outranks everything after it.
    assert_eq!(
        pick(&l, conn("10.0.0.1:9080", "10.0.0.9:1", true)),
        Some("port")
    );
    // Then the transport protocol, then the source prefix (longest).
    assert_eq!(
        pick(&l, conn("10.0.0.1:9090", "10.0.0.9:1", true)),
        Some("tls")
    );
    assert_eq!(
        pick(&l, conn("10.0.0.1:9090", "10.0.0.9:1", false)),
        Some("raw")
    );
    let l2 = listener(
        vec![
            chain("any", Default::default(), false),
            chain("wide", src("10.0.0.0", 8), false),
            chain("narrow", src("10.0.0.0", 24), false),
        ],
        None,
    );
    assert_eq!(
        pick(&l2, conn("10.0.0.1:9090", "10.0.0.9:1", false)),
        Some("narrow")
    );
    assert_eq!(
        pick(&l2, conn("10.0.0.1:9090", "10.1.0.9:1", false)),
        Some("wide")
    );
    assert_eq!(
        pick(&l2, conn("10.0.0.1:9090", "192.0.2.1:1", false)),
        Some("any")
    );
}

#[test]
fn what_never_matches_falls_to_the_default_chain_or_closes() {
    let sni = FilterChainMatchSpec {
        server_names: vec!["ui.example".into()],
        ..Default::default()
    };
    let l = listener(vec![chain("sni", sni.clone(), true)], None);
    assert_eq!(pick(&l, conn("10.0.0.1:9080", "10.0.0.9:1", true)), None);
    let l = listener(
        vec![chain("sni", sni, true)],
        Some(chain("default", Default::default(), false)),
    );
    assert_eq!(
        pick(&l, conn("10.0.0.1:9080", "10.0.0.9:1", true)),
        Some("default")
    );
    // A chain that insists on TLS leaves plaintext connections without a chain.
    let tls_only = FilterChainMatchSpec {
        transport_protocol: "tls".into(),
        ..Default::default()
    };
    let l = listener(vec![chain("tls", tls_only, true)], None);
    assert_eq!(pick(&l, conn("10.0.0.1:9080", "10.0.0.9:1", false)), None);
}

#[test]
fn invalid_listeners_are_refused_with_the_field() {
    let err = |spec: ServerListenerSpec| ServerListener::new(&spec).unwrap_err().to_string();
    let name = "xds.istio.io/grpc/lds/inbound/10.0.0.1:9080".to_string();
    assert_eq!(
        err(ServerListenerSpec {
            name: name.clone(),
            chains: vec![
                chain("a", Default::default(), false),
                chain("b", Default::default(), true)
            ],
            ..Default::default()
        }),
        format!(
            "listener {name:?}: filter_chains[1]: has the same filter_chain_match as filter_chains[0]"
        )
    );
    let mut no_identity = chain("a", Default::default(), true);
    no_identity.tls.as_mut().unwrap().identity_provider = None;
    assert_eq!(
        err(ServerListenerSpec {
            name: name.clone(),
            chains: vec![no_identity],
            ..Default::default()
        }),
        format!(
            "listener {name:?}: filter_chains[0].transport_socket.common_tls_context.tls_certificate_provider_instance: is required"
        )
    );
    let mut no_roots = chain("a", Default::default(), true);
    no_roots.tls.as_mut().unwrap().root_provider = None;
    assert_eq!(
        err(ServerListenerSpec {
            name: name.clone(),
            chains: vec![no_roots],
            ..Default::default()
        }),
        format!(
            "listener {name:?}: filter_chains[0].transport_socket.require_client_certificate: needs a validation context"
        )
    );
}
