//! The xDS scale bench, shared by `xds_scale` (the system allocator, with dhat's heap figures)
//! and `xds_scale_mimalloc` (the same timings under mimalloc).
//!
//! 1,000 services × 10 subsets = 10,000 clusters × 10 endpoints, with a listener and a route
//! configuration per service, fed to the protocol core (no sockets, so the figure is the
//! client's own cost). Prints time from the first response to the published snapshot, the cost
//! of a Delta update of one endpoint, and the heap the client keeps, each with the baseline
//! measured in the same run: protobuf-decoding the same resources (time) and their encoded size
//! (memory).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use mesh::xds::ResourceType;
use mesh::xds::state::{AdsState, Output, Protocol};
use mesh::xds::testing::{self, subset_key};
use prost::Message;

/// How the bench reads the heap: runs the closure and returns (bytes kept, peak bytes) over
/// what existed before it, or `None` when the allocator cannot tell.
pub type HeapProbe = fn(&mut dyn FnMut()) -> (usize, usize);

/// Services in the mesh (ten clusters each): `XDS_SCALE_SERVICES`, default 1,000.
fn services() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::env::var("XDS_SCALE_SERVICES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000)
    })
}
const SUBSETS: usize = 10;
const ENDPOINTS: usize = 10;

struct Mesh {
    listeners: Vec<String>,
    by_type: [Vec<Any>; 4],
}

fn mesh() -> Mesh {
    let mut by_type: [Vec<Any>; 4] = Default::default();
    let mut listeners = Vec::new();
    for s in 0..services() {
        let host = format!("svc-{s}.ns.svc.cluster.local");
        let listener = format!("{host}:8080");
        let rds = subset_key(8080, "", &host);
        let clusters: Vec<String> = (0..SUBSETS)
            .map(|k| subset_key(8080, &format!("v{k}"), &host))
            .collect();
        let weights: Vec<(&str, u32)> = clusters.iter().map(|c| (c.as_str(), 10)).collect();
        by_type[0].push(testing::listener(&listener, &rds));
        by_type[1].push(testing::route_config(&rds, &[&host, &listener], &weights));
        for (k, c) in clusters.iter().enumerate() {
            by_type[2].push(testing::eds_cluster(c));
            let addrs: Vec<SocketAddr> = (0..ENDPOINTS)
                .map(|e| {
                    SocketAddr::from((
                        [
                            10,
                            (s >> 8) as u8,
                            (s & 0xff) as u8,
                            (k * ENDPOINTS + e) as u8,
                        ],
                        8080,
                    ))
                })
                .collect();
            by_type[3].push(testing::endpoints(c, &addrs));
        }
        listeners.push(listener);
    }
    Mesh { listeners, by_type }
}

fn response(ty: ResourceType, resources: &[Any]) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: "v1".into(),
        resources: resources.to_vec(),
        type_url: ty.type_url().into(),
        nonce: format!("n-{ty}"),
        ..Default::default()
    }
}

/// Subscribes, connects, and feeds one SotW response per type; returns the state and the time
/// from the first response to the published snapshot.
fn converge(m: &Mesh, protocol: Protocol) -> (AdsState, Duration) {
    let now = Instant::now();
    let mut s = AdsState::new(protocol, Node::default(), true);
    for l in &m.listeners {
        s.subscribe_listener(l, now);
    }
    s.on_connected(now);
    // Only the protocol's own responses, so the peak heap holds one copy of the input.
    let sotw = protocol == Protocol::Sotw;
    let responses: Vec<DiscoveryResponse> = ResourceType::ALL
        .iter()
        .filter(|_| sotw)
        .map(|&t| response(t, &m.by_type[t as usize]))
        .collect();
    let deltas: Vec<DeltaDiscoveryResponse> = ResourceType::ALL
        .iter()
        .filter(|_| !sotw)
        .map(|&t| DeltaDiscoveryResponse {
            type_url: t.type_url().into(),
            resources: m.by_type[t as usize]
                .iter()
                .map(|a| Resource {
                    name: mesh::xds::decode::decode(t, a).unwrap().name().to_string(),
                    version: "1".into(),
                    resource: Some(a.clone()),
                    ..Default::default()
                })
                .collect(),
            nonce: format!("d-{t}"),
            ..Default::default()
        })
        .collect();
    let start = Instant::now();
    let mut published = false;
    for r in responses {
        let out = s.on_sotw_response(r, now);
        published |= out.iter().any(|o| matches!(o, Output::Publish(_)));
    }
    for d in deltas {
        let out = s.on_delta_response(d, now);
        published |= out.iter().any(|o| matches!(o, Output::Publish(_)));
    }
    let took = start.elapsed();
    assert!(published, "the mesh was published");
    (s, took)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the bench; `allocator` names the global allocator in the report.
pub fn run(allocator: &str, heap_probe: Option<HeapProbe>) {
    let m = mesh();
    let total_bytes: usize = m.by_type.iter().flatten().map(|a| a.value.len()).sum();
    let clusters = services() * SUBSETS;

    // Baseline: protobuf decoding alone, no validation or indexing.
    let baseline = median(
        (0..3)
            .map(|_| {
                let start = Instant::now();
                for (i, ty) in ResourceType::ALL.iter().enumerate() {
                    for a in &m.by_type[i] {
                        let n = match ty {
                            ResourceType::Listener => envoy_types::pb::envoy::config::listener::v3::Listener::decode(&*a.value).unwrap().encoded_len(),
                            ResourceType::RouteConfiguration => envoy_types::pb::envoy::config::route::v3::RouteConfiguration::decode(&*a.value).unwrap().encoded_len(),
                            ResourceType::Cluster => envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&*a.value).unwrap().encoded_len(),
                            ResourceType::ClusterLoadAssignment => envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&*a.value).unwrap().encoded_len(),
                        };
                        std::hint::black_box(n);
                    }
                }
                start.elapsed()
            })
            .collect(),
    );

    // `XDS_SCALE_ONLY=update`: only the updates, with the slowest listed (for profiling).
    let only_updates = std::env::var("XDS_SCALE_ONLY").is_ok_and(|v| v == "update");
    let full_sotw = if only_updates {
        Duration::ZERO
    } else {
        median((0..3).map(|_| converge(&m, Protocol::Sotw).1).collect())
    };
    let full_delta = if only_updates {
        Duration::ZERO
    } else {
        median((0..3).map(|_| converge(&m, Protocol::Delta).1).collect())
    };

    // A Delta update of one endpoint set in the converged mesh.
    let (mut s, _) = converge(&m, Protocol::Delta);
    let target = subset_key(8080, "v3", "svc-500.ns.svc.cluster.local");
    let mut updates = Vec::new();
    let count: u16 = std::env::var("XDS_SCALE_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    for i in 0..count {
        let cla = testing::endpoints(&target, &[SocketAddr::from(([10, 9, 9, 9], 1000 + i))]);
        let resp = DeltaDiscoveryResponse {
            type_url: ResourceType::ClusterLoadAssignment.type_url().into(),
            resources: vec![Resource {
                name: target.clone(),
                version: format!("u{i}"),
                resource: Some(cla),
                ..Default::default()
            }],
            nonce: format!("u{i}"),
            ..Default::default()
        };
        let start = Instant::now();
        let out = s.on_delta_response(resp, Instant::now());
        updates.push(start.elapsed());
        assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));
    }
    if only_updates {
        let mut slowest: Vec<(usize, Duration)> = updates.iter().copied().enumerate().collect();
        slowest.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        println!(
            "slowest updates (index, µs): {:?}",
            slowest
                .iter()
                .take(8)
                .map(|(i, d)| (*i, d.as_micros()))
                .collect::<Vec<_>>()
        );
        return;
    }
    let first_updates: Vec<u128> = updates.iter().take(4).map(|d| d.as_micros()).collect();
    let mut later = updates.get(4..).unwrap_or_default().to_vec();
    later.sort();
    let later_p99 = later
        .get(later.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    updates.sort();
    drop(s);

    // A SotW EDS response with every endpoint set, one of them changed: what it costs when the
    // others are skipped by their unchanged bytes.
    let (mut s, _) = converge(&m, Protocol::Sotw);
    let eds = ResourceType::ClusterLoadAssignment;
    let position = m.by_type[eds as usize]
        .iter()
        .position(|a| mesh::xds::decode::decode(eds, a).unwrap().name() == target)
        .unwrap();
    let mut sotw_updates = Vec::new();
    for i in 0..20u16 {
        let mut resources = m.by_type[eds as usize].clone();
        resources[position] =
            testing::endpoints(&target, &[SocketAddr::from(([10, 9, 9, 8], 1000 + i))]);
        let resp = DiscoveryResponse {
            version_info: format!("s{i}"),
            nonce: format!("s{i}"),
            ..response(eds, &resources)
        };
        let start = Instant::now();
        let out = s.on_sotw_response(resp, Instant::now());
        sotw_updates.push(start.elapsed());
        assert!(out.iter().any(|o| matches!(o, Output::Publish(_))));
    }
    sotw_updates.sort();
    let sotw_p50 = sotw_updates[sotw_updates.len() / 2];
    let (update_p50, update_p99) = (
        updates[updates.len() / 2],
        updates[updates.len() * 99 / 100],
    );
    drop(s);

    // Heap kept by a converged client (the published snapshot, validated resources and the raw
    // copies kept for the disk cache), measured after the inputs exist.
    // The state is dropped outside the probe, so what it reports is what the state held.
    let heap = heap_probe.map(|probe| {
        let mut state = None;
        let figures = probe(&mut || state = Some(converge(&m, Protocol::Sotw).0));
        drop(state);
        figures
    });

    println!(
        "xDS client at scale ({allocator}): {} services, {clusters} clusters × {ENDPOINTS} endpoints, {} resources, {:.1} MB encoded",
        services(),
        m.by_type.iter().map(Vec::len).sum::<usize>(),
        total_bytes as f64 / 1e6
    );
    println!("| measure | value | baseline | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| first response → published snapshot, SotW | {:.0} ms | {:.0} ms (protobuf decode only) | {:.1}× |",
        ms(full_sotw),
        ms(baseline),
        ratio(full_sotw, baseline)
    );
    println!(
        "| first response → published snapshot, Delta | {:.0} ms | {:.0} ms | {:.1}× |",
        ms(full_delta),
        ms(baseline),
        ratio(full_delta, baseline)
    );
    println!(
        "| Delta update of one endpoint set → published, p50 | {:.1} µs | | |",
        update_p50.as_secs_f64() * 1e6
    );
    println!(
        "| Delta update of one endpoint set → published, p99 | {:.1} µs | | |",
        update_p99.as_secs_f64() * 1e6
    );
    println!("| the first four of those updates after the load, µs | {first_updates:?} | | |");
    println!(
        "| the same p99, from the fifth update on | {:.1} µs | | |",
        later_p99.as_secs_f64() * 1e6
    );
    println!(
        "| SotW EDS response of every endpoint set, one changed → published, p50 | {:.1} ms | | |",
        ms(sotw_p50)
    );
    if let Some((heap, peak)) = heap {
        println!(
            "| peak heap during the first load (SotW; the responses themselves included), per cluster | {:.1} KB | | |",
            peak as f64 / clusters as f64 / 1e3
        );
        println!(
            "| heap kept, per cluster | {:.1} KB | {:.1} KB (encoded resources) | {:.1}× |",
            heap as f64 / clusters as f64 / 1e3,
            total_bytes as f64 / clusters as f64 / 1e3,
            heap as f64 / total_bytes as f64
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
