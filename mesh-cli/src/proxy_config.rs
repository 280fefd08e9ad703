//! `mesh config-dump --admin ADDR`: a running process's live configuration, read from its
//! admin endpoint's `/config_dump`, in one view at a time (as `istioctl proxy-config` shows a
//! sidecar's), as JSON, YAML or a table.

use std::fmt::Write as _;

use http_body_util::BodyExt;
use serde_json::{Value, json};

/// What part of the configuration to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Everything.
    All,
    /// Listeners.
    Listeners,
    /// Routes, per listener and virtual host.
    Routes,
    /// Clusters.
    Clusters,
    /// Endpoints, with health and ejection.
    Endpoints,
    /// Workload certificates.
    Secrets,
    /// The xDS status of every resource.
    Xds,
}

impl std::str::FromStr for View {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "all" => Self::All,
            "listeners" | "listener" => Self::Listeners,
            "routes" | "route" => Self::Routes,
            "clusters" | "cluster" => Self::Clusters,
            "endpoints" | "endpoint" => Self::Endpoints,
            "secrets" | "secret" => Self::Secrets,
            "xds" => Self::Xds,
            _ => {
                return Err(format!(
                    "unknown view {s:?}: all, listeners, routes, clusters, endpoints, secrets or xds"
                ));
            }
        })
    }
}

/// How to print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Pretty JSON.
    Json,
    /// YAML.
    Yaml,
    /// A table.
    Short,
}

impl std::str::FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Self::Json),
            "yaml" => Ok(Self::Yaml),
            "short" => Ok(Self::Short),
            _ => Err(format!("unknown output {s:?}: json, yaml or short")),
        }
    }
}

/// GETs `/config_dump` from the admin endpoint at `addr`.
pub async fn fetch(addr: std::net::SocketAddr) -> Result<Value, String> {
    let unreachable = |e: &dyn std::fmt::Display| format!("admin endpoint {addr}: {e}");
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unreachable(&e))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(conn);
    let req = http::Request::get("/config_dump")
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let resp = tx.send_request(req).await.map_err(|e| unreachable(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "admin endpoint {addr}: /config_dump answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("admin endpoint {addr}: /config_dump is not JSON: {e}"))
}

/// The rows of a view: one JSON object per line of the table.
fn rows(dump: &Value, view: View) -> Value {
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match view {
        View::All => dump.clone(),
        View::Listeners => {
            let mut out = Vec::new();
            for (key, kind) in [("listeners", "outbound"), ("server_listeners", "inbound")] {
                for mut l in arr(&dump[key]) {
                    l["kind"] = json!(kind);
                    out.push(l);
                }
            }
            json!(out)
        }
        View::Routes => {
            let mut out = Vec::new();
            let mut add = |listener: &Value, rc: &Value| {
                for vh in arr(&rc["virtual_hosts"]) {
                    for r in arr(&vh["routes"]) {
                        out.push(json!({
                            "listener": listener, "route_config": rc["name"], "virtual_host": vh["name"],
                            "domains": vh["domains"], "route": r["name"], "clusters": r["clusters"],
                            "timeout_ms": r["timeout_ms"], "retry": r["retry"],
                        }));
                    }
                }
            };
            for l in arr(&dump["listeners"]) {
                add(&l["name"], &l["route_config"]);
            }
            for l in arr(&dump["server_listeners"]) {
                for c in arr(&l["filter_chains"]) {
                    add(&l["name"], &c["route_config"]);
                }
            }
            json!(out)
        }
        View::Clusters => json!(
            arr(&dump["clusters"])
                .into_iter()
                .map(|mut c| {
                    if let Some(o) = c.as_object_mut() {
                        o.remove("endpoints");
                    }
                    c
                })
                .collect::<Vec<_>>()
        ),
        View::Endpoints => {
            let mut out = Vec::new();
            for c in arr(&dump["clusters"]) {
                for e in arr(&c["endpoints"]) {
                    let mut e = e.clone();
                    e["cluster"] = c["name"].clone();
                    out.push(e);
                }
            }
            json!(out)
        }
        View::Secrets => dump["certificates"].clone(),
        View::Xds => dump["xds"].clone(),
    }
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        v => v.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let n = cells.len();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        out.push('\n');
    };
    line(&mut out, header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn short(dump: &Value, view: View) -> String {
    let v = rows(dump, view);
    let arr = v.as_array().cloned().unwrap_or_default();
    let pick = |keys: &[&str]| -> Vec<Vec<String>> {
        arr.iter()
            .map(|r| keys.iter().map(|k| cell(&r[*k])).collect())
            .collect()
    };
    match view {
        View::All => [
            View::Listeners,
            View::Routes,
            View::Clusters,
            View::Endpoints,
            View::Secrets,
            View::Xds,
        ]
        .iter()
        .map(|v| short(dump, *v))
        .collect::<Vec<_>>()
        .join("\n"),
        View::Listeners => {
            let rds = |v: &Value| match v.as_str() {
                Some(r) => format!("RDS {r}"),
                None => "inline".into(),
            };
            let rows = arr
                .iter()
                .map(|l| {
                    let chains = l["filter_chains"].as_array();
                    let detail = match chains {
                        // A server's chains: each one's TLS and routes.
                        Some(chains) => chains
                            .iter()
                            .map(|c| {
                                let tls = match &c["tls"] {
                                    t if t["require_client_certificate"] == true => "mTLS",
                                    t if t.is_object() => "TLS",
                                    _ => "plaintext",
                                };
                                format!("{} {tls} {}", cell(&c["name"]), rds(&c["rds"]))
                            })
                            .collect::<Vec<_>>()
                            .join("; "),
                        None => format!(
                            "{}, {} virtual hosts",
                            rds(&l["rds"]),
                            l["route_config"]["virtual_hosts"]
                                .as_array()
                                .map_or(0, Vec::len)
                        ),
                    };
                    vec![cell(&l["name"]), cell(&l["kind"]), detail]
                })
                .collect();
            table(&["LISTENER", "KIND", "ROUTES"], rows)
        }
        View::Routes => table(
            &["LISTENER", "VIRTUAL HOST", "DOMAINS", "ROUTE", "CLUSTERS"],
            pick(&["listener", "virtual_host", "domains", "route", "clusters"]),
        ),
        View::Clusters => table(
            &["CLUSTER", "LB", "TLS", "ACTIVE"],
            arr.iter()
                .map(|c| {
                    let tls = match c["tls"]["identity_provider"].as_str() {
                        Some(p) => format!("mTLS({p})"),
                        None if c["tls"].is_object() => "TLS".into(),
                        None => "-".into(),
                    };
                    vec![
                        cell(&c["name"]),
                        cell(&c["lb_policy"]),
                        tls,
                        cell(&c["active"]),
                    ]
                })
                .collect(),
        ),
        View::Endpoints => table(
            &["ENDPOINT", "HEALTH", "EJECTED", "WEIGHT", "CLUSTER"],
            pick(&["address", "health", "ejected", "weight", "cluster"]),
        ),
        View::Secrets => {
            let rows = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(name, p)| {
                            vec![
                                name.clone(),
                                cell(&p["identity"]["spiffe_id"]),
                                cell(&p["identity"]["serial"]),
                                cell(&p["identity"]["not_after"]),
                                cell(&p["roots"]),
                                cell(&p["last_error"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &[
                    "PROVIDER",
                    "IDENTITY",
                    "SERIAL",
                    "NOT AFTER",
                    "ROOTS",
                    "ERROR",
                ],
                rows,
            )
        }
        View::Xds => {
            let rows = v["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    ["type", "name", "version", "state", "error"]
                        .iter()
                        .map(|k| cell(&r[*k]))
                        .collect()
                })
                .collect();
            let head = format!(
                "connected={} stale={} protocol={}\n",
                cell(&v["connected"]),
                cell(&v["stale"]),
                cell(&v["protocol"])
            );
            head + &table(&["TYPE", "NAME", "VERSION", "STATE", "ERROR"], rows)
        }
    }
}

/// `dump`'s `view`, printed as `output` says.
pub fn render(dump: &Value, view: View, output: Output) -> Result<String, String> {
    Ok(match output {
        Output::Json => {
            let mut s = serde_json::to_string_pretty(&rows(dump, view)).unwrap_or_default();
            s.push('\n');
            s
        }
        Output::Yaml => {
            serde_yaml_ng::to_string(&rows(dump, view)).map_err(|e| format!("as YAML: {e}"))?
        }
        Output::Short => short(dump, view),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Value {
        json!({
            "listeners": [{"name": "ui:9080", "rds": "ui-routes", "route_config": {"virtual_hosts": [
                {"name": "ui", "domains": ["ui", "ui:9080"], "routes": [{"name": "r", "clusters": {"outbound|9080|v1|ui": 1}}]}
            ]}}],
            "server_listeners": [{"name": "in:8080", "filter_chains": [
                {"name": "c0", "tls": {"require_client_certificate": true}, "rds": "r1", "route_config": null}
            ]}],
            "clusters": [{"name": "outbound|9080|v1|ui", "lb_policy": "ROUND_ROBIN", "tls": null, "active": true,
                "endpoints": [{"address": "127.0.0.1:1", "health": "HEALTHY", "weight": 1, "ejected": true}]}],
            "certificates": {},
            "xds": {"connected": true, "stale": false, "protocol": "sotw", "resources": [
                {"type": "LDS", "name": "ui:9080", "version": "3", "state": "NACKED", "error": "version 3: bad"}
            ]},
        })
    }

    #[test]
    fn tables_show_one_view_each() {
        let d = dump();
        assert_eq!(
            render(&d, View::Listeners, Output::Short).unwrap(),
            "LISTENER  KIND      ROUTES\nui:9080   outbound  RDS ui-routes, 1 virtual hosts\nin:8080   inbound   c0 mTLS RDS r1\n"
        );
        assert_eq!(
            render(&d, View::Endpoints, Output::Short).unwrap(),
            "ENDPOINT     HEALTH   EJECTED  WEIGHT  CLUSTER\n127.0.0.1:1  HEALTHY  true     1       outbound|9080|v1|ui\n"
        );
        assert_eq!(
            render(&d, View::Routes, Output::Short).unwrap(),
            "LISTENER  VIRTUAL HOST  DOMAINS     ROUTE  CLUSTERS\nui:9080   ui            ui,ui:9080  r      outbound|9080|v1|ui=1\n"
        );
        assert_eq!(
            render(&d, View::Xds, Output::Short).unwrap(),
            "connected=true stale=false protocol=sotw\nTYPE  NAME     VERSION  STATE   ERROR\nLDS   ui:9080  3        NACKED  version 3: bad\n"
        );
        // Clusters without their endpoints; YAML of the same rows.
        let yaml = render(&d, View::Clusters, Output::Yaml).unwrap();
        assert!(yaml.contains("lb_policy: ROUND_ROBIN"), "{yaml}");
        assert!(!yaml.contains("127.0.0.1:1"), "{yaml}");
        assert_eq!(
            "pods".parse::<View>().unwrap_err(),
            "unknown view \"pods\": all, listeners, routes, clusters, endpoints, secrets or xds"
        );
    }
}
