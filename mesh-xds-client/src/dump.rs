//! The live configuration of an xDS client as JSON, for admin endpoints and the CLI: the
//! snapshot (listeners with their routes, clusters with their policies and endpoints), the
//! xDS status of every resource, and the certificates in use (never a key).

use mesh_core::route::Destination;
use mesh_core::{LbConfig, MeshSnapshot, RouteAction, RouteSource};
use serde_json::{Value, json};

use crate::{ResourceState, XdsClient, XdsStatus};

/// Everything [`XdsClient`] holds now: the snapshot's `listeners` and `clusters`, `stale`,
/// `xds` (its status) and `certificates`. `None` once the client has stopped.
pub async fn config_dump(client: &XdsClient) -> Option<Value> {
    let status = client.status().await?;
    let mut v = snapshot_json(&client.snapshot());
    v["xds"] = status_json(&status);
    v["certificates"] = certificates_json(&client.certificates().borrow());
    Some(v)
}

fn lb_name(lb: &LbConfig) -> String {
    match lb {
        LbConfig::RoundRobin => "ROUND_ROBIN".into(),
        LbConfig::Random => "RANDOM".into(),
        LbConfig::LeastRequest { choice_count } => {
            format!("LEAST_REQUEST(choice_count={choice_count})")
        }
        LbConfig::PeakEwma { decay, .. } => format!("PEAK_EWMA(decay={decay:?})"),
        LbConfig::RingHash {
            min_ring_size,
            max_ring_size,
        } => format!("RING_HASH(min={min_ring_size}, max={max_ring_size})"),
        LbConfig::Maglev { table_size } => format!("MAGLEV(table_size={table_size})"),
    }
}

/// A route configuration as JSON: virtual hosts, their domains and routes.
fn route_config_json(rc: &mesh_core::RouteConfig) -> Value {
    json!({
        "name": &**rc.name(),
        "virtual_hosts": rc.virtual_hosts().iter().map(|vh| json!({
            "name": vh.name(),
            "domains": vh.domains().iter().map(|d| &**d).collect::<Vec<_>>(),
            "routes": vh.routes().iter().map(|r| match r.action() {
                RouteAction::Forward(f) => json!({
                    "name": r.name(),
                    "clusters": match &f.destination {
                        Destination::Cluster(c) => json!({&**c: 1}),
                        Destination::Weighted(w) => Value::Object(w.entries().iter().map(|(c, w)| (c.to_string(), json!(w))).collect()),
                    },
                    "timeout_ms": f.timeouts.route_timeout().map(|d| d.as_millis() as u64),
                    "retry": f.retry_policy.as_ref().map(|p| json!({
                        "retry_on": p.retry_on().names().collect::<Vec<_>>(),
                        "num_retries": p.num_retries(),
                        "per_try_timeout_ms": p.per_try_timeout().map(|d| d.as_millis() as u64),
                    })),
                    "mirrors": f.mirrors.iter().map(|m| json!({"cluster": &*m.cluster, "per_million": m.fraction.as_per_million()})).collect::<Vec<_>>(),
                    "fault": r.fault().is_some(),
                }),
                RouteAction::NonForwarding => json!({"name": r.name(), "non_forwarding": true}),
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The snapshot as JSON: listeners with their routes, clusters with policies, endpoints.
pub fn snapshot_json(s: &MeshSnapshot) -> Value {
    let mut listeners: Vec<Value> = s
        .listeners()
        .map(|l| {
            let routes = s.listener_routes(l).map(route_config_json);
            json!({
                "name": &**l.name(),
                "rds": match l.routes() { RouteSource::Rds(n) => Some(n.to_string()), RouteSource::Inline(_) => None },
                "route_config": routes,
            })
        })
        .collect();
    listeners.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut clusters: Vec<Value> = s
        .clusters()
        .map(|c| {
            let t = c.thresholds();
            let eps = s.cluster_endpoints(c);
            json!({
                "name": &**c.name(),
                "lb_policy": lb_name(c.lb()),
                "circuit_breakers": {"max_connections": t.max_connections, "max_pending_requests": t.max_pending_requests, "max_requests": t.max_requests, "max_retries": t.max_retries},
                "outlier_detection": c.outlier_detection().map(|o| json!({
                    "consecutive_5xx": o.consecutive_5xx, "interval_ms": o.interval.as_millis() as u64,
                    "base_ejection_time_ms": o.base_ejection_time.as_millis() as u64, "max_ejection_percent": o.max_ejection_percent,
                })),
                "tls": c.tls().map(|t| json!({
                    "sni": t.sni.as_deref(),
                    "identity_provider": t.identity_provider.as_deref(),
                    "root_provider": t.root_provider.as_deref(),
                    "match_subject_alt_names": t.san_matchers.len(),
                })),
                "endpoints": eps.map(|e| e.endpoints().iter().map(|ep| json!({
                    "address": ep.address.to_string(),
                    "weight": ep.weight,
                    "health": format!("{:?}", ep.health).to_uppercase(),
                    "locality": e.localities()[ep.locality as usize].locality.to_string(),
                    "priority": ep.priority,
                    "labels": &*ep.labels,
                })).collect::<Vec<_>>()),
            })
        })
        .collect();
    clusters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut servers: Vec<Value> = s
        .server_listeners()
        .map(|l| {
            json!({
                "name": &**l.name(),
                "address": l.address().map(|a| a.to_string()),
                "filter_chains": l.chains().iter().map(|c| json!({
                    "name": &**c.name(),
                    "tls": c.tls().map(|t| json!({
                        "identity_provider": &*t.identity_provider,
                        "root_provider": t.root_provider.as_deref(),
                        "require_client_certificate": t.require_client_certificate,
                    })),
                    "rds": match c.routes() { RouteSource::Rds(n) => Some(n.to_string()), RouteSource::Inline(_) => None },
                    "route_config": match c.routes() {
                        RouteSource::Rds(n) => s.route_config(n).map(|rc| route_config_json(rc)),
                        RouteSource::Inline(rc) => Some(route_config_json(rc)),
                    },
                    "jwt": c.jwt().is_some(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    servers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"stale": s.is_stale(), "listeners": listeners, "server_listeners": servers, "clusters": clusters})
}

/// RFC 3339, UTC, to the second.
fn rfc3339(t: std::time::SystemTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&format)
        .unwrap_or_default()
}

/// The workload certificates in use, per certificate-provider instance (never the key).
pub fn certificates_json(c: &mesh_core::Certificates) -> Value {
    Value::Object(
        c.providers()
            .map(|(name, p)| {
                let id = p.identity.as_ref().map(|i| {
                    json!({
                        "spiffe_id": i.spiffe_id(),
                        "serial": i.serial(),
                        "not_before": rfc3339(i.not_before()),
                        "not_after": rfc3339(i.not_after()),
                        "chain_length": i.chain().len(),
                    })
                });
                (
                    name.to_string(),
                    json!({
                        "identity": id,
                        "roots": p.roots.as_ref().map(|r| r.certs().len()),
                        "last_error": p.last_error,
                    }),
                )
            })
            .collect(),
    )
}

/// The xDS status as JSON.
pub fn status_json(st: &XdsStatus) -> Value {
    json!({
        "connected": st.health.connected,
        "stale": st.health.stale,
        "protocol": format!("{:?}", st.protocol).to_lowercase(),
        "last_error": st.health.last_error,
        "types": st.types.iter().map(|(t, v, n)| json!({"type": t.short_name(), "version": v, "nonce": n})).collect::<Vec<_>>(),
        "resources": st.resources.iter().map(|r| json!({
            "type": r.resource_type.short_name(),
            "name": r.name,
            "version": r.version,
            "state": match &r.state {
                ResourceState::Requested => "REQUESTED".to_string(),
                ResourceState::Cached => "CACHED".to_string(),
                ResourceState::Acked => "ACKED".to_string(),
                ResourceState::Nacked { .. } => "NACKED".to_string(),
                ResourceState::DoesNotExist => "DOES_NOT_EXIST".to_string(),
            },
            "error": match &r.state { ResourceState::Nacked { error, version } => Some(format!("version {version}: {error}")), _ => None },
        })).collect::<Vec<_>>(),
    })
}

/// A label value as the Prometheus text formats write it.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// gRFC A78's xDS client metrics as OpenMetrics text families (no `# EOF`, for appending to a
/// registry's), under gRPC's names with the dots written as underscores, as an OpenTelemetry
/// Prometheus exporter writes them: `grpc_xds_client_connected`,
/// `grpc_xds_client_server_failure_total`, `grpc_xds_client_resource_updates_valid_total`,
/// `grpc_xds_client_resource_updates_invalid_total` and `grpc_xds_client_resources` (by cache
/// state). `target` is the `grpc.target` label: the channel's target, `#server` for a server.
pub fn openmetrics(status: &XdsStatus, target: &str) -> String {
    use std::fmt::Write as _;
    let base = format!(
        "grpc_target=\"{}\",grpc_xds_server=\"{}\"",
        label(target),
        label(&status.server)
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP grpc_xds_client_connected Whether the xDS client has a working ADS stream to the xDS server.\n# TYPE grpc_xds_client_connected gauge\ngrpc_xds_client_connected{{{base}}} {}",
        u8::from(status.health.connected)
    );
    let _ = writeln!(
        out,
        "# HELP grpc_xds_client_server_failure Times the xDS server went from healthy to unhealthy.\n# TYPE grpc_xds_client_server_failure counter\ngrpc_xds_client_server_failure_total{{{base}}} {}",
        status.server_failures
    );
    type Pick = fn(&(crate::ResourceType, u64, u64)) -> u64;
    let families: [(&str, &str, Pick); 2] = [
        (
            "resource_updates_valid",
            "Resources received that were valid.",
            |u| u.1,
        ),
        (
            "resource_updates_invalid",
            "Resources received that were invalid (NACKed).",
            |u| u.2,
        ),
    ];
    for (name, help, pick) in families {
        let _ = writeln!(
            out,
            "# HELP grpc_xds_client_{name} {help}\n# TYPE grpc_xds_client_{name} counter"
        );
        for u in &status.updates {
            let _ = writeln!(
                out,
                "grpc_xds_client_{name}_total{{{base},grpc_xds_resource_type=\"{}\"}} {}",
                u.0.type_url().trim_start_matches("type.googleapis.com/"),
                pick(u)
            );
        }
    }
    let mut counts: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for r in &status.resources {
        let state = match &r.state {
            // Loaded from the disk cache, not yet confirmed by the server.
            ResourceState::Requested | ResourceState::Cached => "requested",
            ResourceState::Acked => "acked",
            ResourceState::Nacked { .. } if r.has_value => "nacked_but_cached",
            ResourceState::Nacked { .. } => "nacked",
            ResourceState::DoesNotExist => "does_not_exist",
        };
        let ty = r
            .resource_type
            .type_url()
            .trim_start_matches("type.googleapis.com/");
        *counts.entry((ty, state)).or_default() += 1;
    }
    let _ = writeln!(
        out,
        "# HELP grpc_xds_client_resources Resources held, by cache state.\n# TYPE grpc_xds_client_resources gauge"
    );
    for ((ty, state), n) in counts {
        let _ = writeln!(
            out,
            "grpc_xds_client_resources{{grpc_target=\"{}\",grpc_xds_authority=\"#old\",grpc_xds_cache_state=\"{state}\",grpc_xds_resource_type=\"{ty}\"}} {n}",
            label(target)
        );
    }
    out
}
