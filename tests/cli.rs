//! `mesh config-dump` against the local control plane serving the bundled examples.

use std::path::Path;
use std::time::Duration;

use mesh::cli::{ConfigDumpArgs, config_dump};
use mesh_control_plane::ControlPlane;
use mesh_control_plane::watch::load;

fn bootstrap(dir: &Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("bootstrap.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{server}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
                "node": {{"id": "sidecar~127.0.0.1~cli.default~default.svc.cluster.local", "metadata": {{"GENERATOR": "grpc", "NAMESPACE": "default"}}}}}}"#
        ),
    )
    .unwrap();
    path
}

fn args(bootstrap: std::path::PathBuf, timeout: Duration) -> ConfigDumpArgs {
    ConfigDumpArgs {
        bootstrap: Some(bootstrap),
        targets: vec!["xds:///ui.default.svc.cluster.local:9080".into()],
        protocol: Some("delta".into()),
        cache_dir: None,
        timeout,
        json: true,
    }
}

#[tokio::test]
async fn config_dump_shows_what_the_client_resolved() {
    let cp = ControlPlane::new(
        load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config")).unwrap(),
    );
    let addr = cp.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = config_dump(args(
        bootstrap(dir.path(), &addr.to_string()),
        Duration::from_secs(10),
    ))
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let l = &v["listeners"][0];
    assert_eq!(l["name"], "ui.default.svc.cluster.local:9080");
    let canary = &l["route_config"]["virtual_hosts"][0]["routes"][1];
    assert_eq!(canary["name"], "canary");
    assert_eq!(
        canary["clusters"]["outbound|9080|version-1|ui.default.svc.cluster.local"],
        90
    );
    assert_eq!(canary["retry"]["num_retries"], 3);
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["clusters"][0]["outlier_detection"]["base_ejection_time_ms"],
        300_000
    );
    assert_eq!(v["xds"]["protocol"], "delta");
    assert!(
        v["xds"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "ACKED")
    );
}

#[tokio::test]
async fn config_dump_says_what_is_missing() {
    // A port with nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = config_dump(args(
        bootstrap(dir.path(), &free.to_string()),
        Duration::from_millis(1500),
    ))
    .await
    .unwrap_err();
    assert!(
        err.starts_with(
            "no complete configuration after 1.5s; last error: cannot connect to 127.0.0.1:"
        ),
        "{err}"
    );
    assert!(
        err.ends_with("still waiting for: LDS ui.default.svc.cluster.local:9080"),
        "{err}"
    );
}
