//! Connecting to a real istiod.
//!
//! - In a pod injected with the `grpc-agent` template (`examples/k8s/deployment.yaml`),
//!   istio-agent writes the gRPC bootstrap and sets `GRPC_XDS_BOOTSTRAP`; mesh reads it and
//!   talks to istiod through the agent's unix socket.
//! - With `--direct`, no agent: TLS to `istiod.istio-system.svc:15012` with the mesh root
//!   certificate and the pod's projected token, node identity from the pod's environment
//!   (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`), as istio-agent would send.
//!
//! `cargo run --example istiod -- [--direct] http://reviews.default.svc.cluster.local:9080/ [N]`

use std::time::Duration;

use mesh::tower::{MeshConfig, MeshInfo, MeshService};
use mesh::xds::{Bootstrap, IstiodBootstrap, XdsClientBuilder};
use tower::ServiceExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let direct = args.iter().any(|a| a == "--direct");
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let url: http::Uri = positional
        .next()
        .ok_or("usage: istiod [--direct] URL [N]")?
        .parse()?;
    let n: usize = positional
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(10);
    let target = format!(
        "{}:{}",
        url.host().ok_or("the URL needs a host")?,
        url.port_u16().unwrap_or(80)
    );

    let bootstrap = if direct {
        IstiodBootstrap::default().build()?
    } else {
        Bootstrap::from_env()?
    };
    println!(
        "xDS server: {} (node {})",
        bootstrap.server().address,
        bootstrap.node.id
    );
    let xds = XdsClientBuilder::new(bootstrap)
        .target(&target)
        .cache_dir(std::env::temp_dir().join("mesh-xds-cache"))
        .start()?;
    let snapshot = tokio::time::timeout(Duration::from_secs(30), xds.ready()).await??;
    println!(
        "configuration ready{}: {} clusters",
        if snapshot.is_stale() {
            " (from the disk cache: istiod is unreachable)"
        } else {
            ""
        },
        snapshot.clusters().count()
    );

    let client =
        MeshService::with_certificates(xds.snapshots(), xds.certificates(), MeshConfig::default());
    for _ in 0..n {
        let req =
            http::Request::get(url.clone()).body(http_body_util::Full::new(bytes::Bytes::new()))?;
        let Ok(resp) = client.clone().oneshot(req).await;
        let info = resp.extensions().get::<MeshInfo>().cloned();
        println!(
            "{} via {} → {}",
            resp.status(),
            info.as_ref()
                .and_then(|i| i.cluster.as_deref())
                .unwrap_or("-"),
            info.as_ref()
                .and_then(|i| i.endpoint)
                .map_or("-".into(), |e| e.to_string())
        );
    }
    Ok(())
}
