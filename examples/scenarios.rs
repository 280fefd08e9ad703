//! One feature at a time, each with its YAML from `examples/config/`: traffic shifting, a
//! header canary, mirroring (dark launch), fault injection, retries under a budget, and outlier
//! ejection. Each scenario starts the local control plane and four backends, sends requests
//! through the mesh stack and prints what happened.
//!
//! `cargo run --example scenarios -- [shifting|header-canary|mirroring|fault|retries|outlier|all]`

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{Lab, TARGET};
use http::Request;
use http_body_util::{BodyExt, Full};
use mesh::tower::{MeshInfo, MeshService};
use tower::ServiceExt;

/// Sends `n` requests and counts answers by "status body", plus the attempts they took.
async fn send(
    svc: &MeshService,
    n: usize,
    header: Option<(&str, &str)>,
) -> (BTreeMap<String, usize>, u32) {
    let mut seen = BTreeMap::new();
    let mut attempts = 0;
    for _ in 0..n {
        let mut req = Request::get(format!("http://{TARGET}/"));
        if let Some((k, v)) = header {
            req = req.header(k, v);
        }
        let Ok(resp) = svc
            .clone()
            .oneshot(req.body(Full::new(Bytes::new())).unwrap_or_default())
            .await;
        attempts += resp
            .extensions()
            .get::<MeshInfo>()
            .map_or(0, |i| i.attempts);
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let key = if status == 200 {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            status.to_string()
        };
        *seen.entry(key).or_default() += 1;
    }
    (seen, attempts)
}

async fn run(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let lab = Lab::start(|_| {}).await?;
    let svc = &lab.svc;
    println!("\n== {name}");
    match name {
        "shifting" => {
            println!(
                "ui-routes.yaml: 90/10       {:?}",
                send(svc, 1000, None).await.0
            );
            lab.use_routes(Some("ui-routes-shift-0-100.yaml")).await?;
            println!(
                "shift-0-100.yaml: 0/100     {:?}",
                send(svc, 1000, None).await.0
            );
        }
        "header-canary" => {
            println!(
                "users                       {:?}",
                send(svc, 1000, None).await.0
            );
            println!(
                "testers (version: beta)     {:?}",
                send(svc, 1000, Some(("version", "beta"))).await.0
            );
        }
        "mirroring" => {
            lab.use_routes(Some("ui-routes-mirror.yaml")).await?;
            let v2 = &lab.backends[3];
            let (answers, _) = send(svc, 1000, None).await;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            println!("answers (all from version-1): {answers:?}");
            println!(
                "copies received by version-2-beta: {}",
                v2.hits.load(Ordering::Relaxed)
            );
        }
        "fault" => {
            lab.use_routes(Some("ui-routes-fault.yaml")).await?;
            println!(
                "10% aborted with 400:       {:?}",
                send(svc, 1000, None).await.0
            );
        }
        "retries" => {
            // One version-1 backend of three fails; retries (attempts 3, retryOn 5xx) recover,
            // and outlier detection takes it out after its first 503.
            lab.backends[0].failing.store(true, Ordering::Relaxed);
            let (answers, attempts) = send(svc, 1000, None).await;
            println!("answers: {answers:?} in {attempts} attempts for 1000 requests");
        }
        "outlier" => {
            lab.backends[2].failing.store(true, Ordering::Relaxed);
            send(svc, 1000, None).await;
            let hits: Vec<String> = lab
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.hits.load(Ordering::Relaxed)))
                .collect();
            println!(
                "requests per backend (the failing one, {}, ejected after one): {hits:?}",
                lab.backends[2].addr
            );
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = [
        "shifting",
        "header-canary",
        "mirroring",
        "fault",
        "retries",
        "outlier",
    ];
    let names: Vec<&str> = if which == "all" {
        all.to_vec()
    } else {
        vec![which.as_str()]
    };
    for n in names {
        run(n).await?;
    }
    Ok(())
}
