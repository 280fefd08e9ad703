//! Writes seed corpora for the fuzz targets into `corpus/<target>/`: resources shaped like
//! those the tests use, the bundled Istio YAML, bootstraps and request heads.

use std::path::Path;

use mesh_xds_client::ResourceType;
use mesh_xds_client::testing;
use prost::Message;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("corpus");
    let rds = testing::subset_key(80, "", "ui.default.svc.cluster.local");
    let resources = [
        (
            ResourceType::Listener,
            testing::listener("ui.default.svc.cluster.local:80", &rds),
        ),
        (
            ResourceType::RouteConfiguration,
            testing::route_config(
                &rds,
                &["ui.default.svc.cluster.local"],
                &[("v1", 90), ("v2", 10)],
            ),
        ),
        (ResourceType::Cluster, testing::eds_cluster("v1")),
        (
            ResourceType::ClusterLoadAssignment,
            testing::endpoints(
                "v1",
                &[
                    "127.0.0.1:8080".parse().unwrap(),
                    "127.0.0.1:8081".parse().unwrap(),
                ],
            ),
        ),
    ];
    let mut cache = Vec::new();
    for (i, (ty, any)) in resources.iter().enumerate() {
        let index = ResourceType::ALL.iter().position(|t| t == ty).unwrap() as u8;
        let mut bytes = vec![index];
        bytes.extend_from_slice(&any.value);
        write(&corpus.join("xds_decode"), &format!("seed-{i}"), &bytes);
        let file = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
            type_url: ty.type_url().into(),
            resources: vec![envoy_types::pb::envoy::service::discovery::v3::Resource {
                version: "1".into(),
                resource: Some(any.clone()),
                ..Default::default()
            }],
            ..Default::default()
        };
        file.encode_length_delimited(&mut cache).unwrap();
    }
    write(&corpus.join("cache_file"), "seed-0", &cache);
    for (i, b) in [
        r#"{"xds_servers": [{"server_uri": "unix:///etc/istio/proxy/XDS", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}], "node": {"id": "sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", "metadata": {"GENERATOR": "grpc"}}}"#,
        r#"{"xds_servers": [{"server_uri": "istiod.istio-system.svc:15012", "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}}], "call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/t"}}]}], "certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"certificate_file": "c.pem", "private_key_file": "k.pem", "ca_certificate_file": "ca.pem", "refresh_interval": "900s"}}}, "client_default_listener_resource_name_template": "xdstp://x/%s"}"#,
    ]
    .iter()
    .enumerate()
    {
        write(&corpus.join("bootstrap"), &format!("seed-{i}"), b.as_bytes());
    }
    let examples = root.join("../examples/config");
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "yaml") {
            write(
                &corpus.join("istio_yaml"),
                p.file_name().unwrap().to_str().unwrap(),
                &std::fs::read(&p).unwrap(),
            );
        }
    }
    for (i, h) in [
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\ntracestate: a=b",
        "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        "x-b3-traceid: 463ac35c9f6413ad\nx-b3-spanid: a2fb4a1d1a96d312\nx-b3-flags: 1",
        "b3: d",
    ]
    .iter()
    .enumerate()
    {
        write(
            &corpus.join("trace_headers"),
            &format!("seed-{i}"),
            h.as_bytes(),
        );
    }
    for (i, h) in [
        "10S\n/api/v1?user=alice",
        "250m\n/x?user=bob&x=1",
        "99999999H\n/",
        "session=abc; other=1\n/p?user",
        "alice-42\n/",
    ]
    .iter()
    .enumerate()
    {
        write(
            &corpus.join("request_headers"),
            &format!("seed-{i}"),
            h.as_bytes(),
        );
    }
}
