//! What the stack reads from a request's head: `grpc-timeout`, route matching and hash
//! policies (header with a regex rewrite, cookie, query parameter) over a fuzzed header value
//! and path.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;
use mesh_core::RouteRequest;
use mesh_core::route::{HashPolicy, HashPolicyKind, HashPolicySpec, request_hash};

fn policies() -> &'static [HashPolicy] {
    static P: OnceLock<Vec<HashPolicy>> = OnceLock::new();
    P.get_or_init(|| {
        [
            HashPolicyKind::Header {
                name: "x-user".into(),
                regex_rewrite: Some(("^(.*)-[0-9]+$".into(), "\\1".into())),
            },
            HashPolicyKind::Cookie {
                name: "session".into(),
            },
            HashPolicyKind::QueryParameter {
                name: "user".into(),
            },
        ]
        .into_iter()
        .map(|kind| {
            HashPolicy::new(&HashPolicySpec {
                kind,
                terminal: false,
            })
            .unwrap()
        })
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (value, path) = data.split_at(split);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert("grpc-timeout", v.clone());
        headers.insert("x-user", v.clone());
        headers.insert("cookie", v);
    }
    let _ = mesh_tower::protocol::grpc_timeout(&headers);
    let path = path.get(1..).unwrap_or_default();
    let uri = Uri::builder()
        .scheme("http")
        .authority("svc.ns.svc.cluster.local:80")
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let req = RouteRequest::new(&Method::GET, &uri, &headers);
    let _ = request_hash(policies(), &req, 7);
});
