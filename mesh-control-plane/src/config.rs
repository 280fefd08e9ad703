//! Loading a directory of Istio YAML: multi-document files, kinds by API group and version,
//! errors with file, line and field.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::istio::{
    AuthorizationPolicy, DestinationRule, Metadata, PeerAuthentication, RequestAuthentication,
    ServiceEntry, VirtualService, WorkloadEntry,
};

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line (the field's when known, else its document's first line).
    pub line: usize,
    /// What is wrong, naming the resource and field.
    pub message: String,
}

/// A resource with where it came from.
#[derive(Debug, Clone)]
pub struct Named<T> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (default `default`).
    pub namespace: String,
    /// Source file.
    pub file: String,
    /// First line of its document.
    pub line: usize,
    /// The spec.
    pub spec: T,
}

impl<T> Named<T> {
    /// An error about this resource.
    pub fn error(&self, kind: &str, field: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            message: format!("{kind} {}/{}: {field}: {why}", self.namespace, self.name),
        }
    }
}

/// Everything loaded from a directory.
#[derive(Debug, Clone, Default)]
pub struct IstioConfig {
    /// ServiceEntries.
    pub service_entries: Vec<Named<ServiceEntry>>,
    /// WorkloadEntries.
    pub workload_entries: Vec<Named<WorkloadEntry>>,
    /// VirtualServices.
    pub virtual_services: Vec<Named<VirtualService>>,
    /// DestinationRules.
    pub destination_rules: Vec<Named<DestinationRule>>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<Named<PeerAuthentication>>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<Named<AuthorizationPolicy>>,
    /// RequestAuthentications.
    pub request_authentications: Vec<Named<RequestAuthentication>>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Doc<T> {
    #[serde(default)]
    spec: T,
}

const NETWORKING: [&str; 3] = [
    "networking.istio.io/v1alpha3",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1",
];
const SECURITY: [&str; 2] = ["security.istio.io/v1beta1", "security.istio.io/v1"];

/// The YAML files of a directory (`.yaml`, `.yml`), sorted, not recursing.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ConfigError {
        file: dir.display().to_string(),
        line: 0,
        message: format!("cannot read the directory: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

impl IstioConfig {
    /// Loads every YAML file of a directory.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for f in yaml_files(dir)? {
            let text = std::fs::read_to_string(&f).map_err(|e| ConfigError {
                file: f.display().to_string(),
                line: 0,
                message: format!("cannot read the file: {e}"),
            })?;
            config.add_text(&f.display().to_string(), &text)?;
        }
        Ok(config)
    }

    /// Adds the documents of one file's text.
    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), ConfigError> {
        for (start, doc) in documents(text) {
            self.add_document(file, start, &doc)?;
        }
        Ok(())
    }

    fn add_document(&mut self, file: &str, line: usize, doc: &str) -> Result<(), ConfigError> {
        let at = |e: serde_yaml_ng::Error| ConfigError {
            file: file.to_string(),
            line: line + e.location().map_or(0, |l| l.line().saturating_sub(1)),
            message: e.to_string(),
        };
        let head: Head = serde_yaml_ng::from_str(doc).map_err(at)?;
        let err = |message: String| ConfigError {
            file: file.to_string(),
            line,
            message,
        };
        if head.kind.is_empty() {
            return Err(err("missing kind".into()));
        }
        let group_ok = match head.kind.as_str() {
            "ServiceEntry" | "WorkloadEntry" | "VirtualService" | "DestinationRule" => {
                NETWORKING.contains(&head.api_version.as_str())
            }
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                SECURITY.contains(&head.api_version.as_str())
            }
            other => {
                return Err(err(format!(
                    "unknown kind {other:?} (supported: ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, RequestAuthentication)"
                )));
            }
        };
        if !group_ok {
            return Err(err(format!(
                "{} does not exist in apiVersion {:?}",
                head.kind, head.api_version
            )));
        }
        if head.metadata.name.is_empty() {
            return Err(err(format!("{}: metadata.name is missing", head.kind)));
        }
        fn named<T: DeserializeOwned + Default>(
            head: &Head,
            file: &str,
            line: usize,
            doc: &str,
            at: &dyn Fn(serde_yaml_ng::Error) -> ConfigError,
        ) -> Result<Named<T>, ConfigError> {
            let d: Doc<T> = serde_yaml_ng::from_str(doc).map_err(|e| {
                let mut c = at(e);
                c.message = format!("{} {}: {}", head.kind, head.metadata.name, c.message);
                c
            })?;
            Ok(Named {
                name: head.metadata.name.clone(),
                namespace: head
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                file: file.to_string(),
                line,
                spec: d.spec,
            })
        }
        match head.kind.as_str() {
            "ServiceEntry" => self
                .service_entries
                .push(named(&head, file, line, doc, &at)?),
            "WorkloadEntry" => self
                .workload_entries
                .push(named(&head, file, line, doc, &at)?),
            "VirtualService" => self
                .virtual_services
                .push(named(&head, file, line, doc, &at)?),
            "DestinationRule" => self
                .destination_rules
                .push(named(&head, file, line, doc, &at)?),
            "PeerAuthentication" => self
                .peer_authentications
                .push(named(&head, file, line, doc, &at)?),
            "RequestAuthentication" => {
                let ra: Named<RequestAuthentication> = named(&head, file, line, doc, &at)?;
                for (i, r) in ra.spec.jwt_rules.iter().enumerate() {
                    let problem = if r.issuer.is_empty() {
                        Some("issuer is required")
                    } else if r.jwks.is_empty() && r.jwks_uri.is_empty() {
                        Some(
                            "needs jwks or jwksUri (OpenID discovery from the issuer is not supported)",
                        )
                    } else if r.jwks.is_empty()
                        && !(r.jwks_uri.starts_with("https://")
                            || r.jwks_uri.starts_with("http://"))
                    {
                        Some("jwksUri must be an http or https URI")
                    } else {
                        None
                    };
                    if let Some(p) = problem {
                        return Err(err(format!(
                            "RequestAuthentication {}: jwtRules[{i}]: {p}",
                            ra.name
                        )));
                    }
                }
                self.request_authentications.push(ra)
            }
            _ => {
                let ap: Named<AuthorizationPolicy> = named(&head, file, line, doc, &at)?;
                let action = ap.spec.action.as_deref().unwrap_or("ALLOW");
                if !["ALLOW", "DENY", "AUDIT"].contains(&action) {
                    return Err(err(format!(
                        "AuthorizationPolicy {}: action {action:?} is not supported (ALLOW, DENY, AUDIT)",
                        ap.name
                    )));
                }
                for (i, r) in ap.spec.rules.iter().enumerate() {
                    for (j, c) in r.when.iter().enumerate() {
                        if !crate::inbound::condition_key_supported(&c.key) {
                            return Err(err(format!(
                                "AuthorizationPolicy {}: rules[{i}].when[{j}]: key {:?} is not supported (supported: {})",
                                ap.name,
                                c.key,
                                crate::inbound::CONDITION_KEYS.join(", ")
                            )));
                        }
                    }
                }
                self.authorization_policies.push(ap)
            }
        }
        Ok(())
    }
}

/// Splits YAML text on `---` lines into `(first line, text)` documents, skipping empty ones.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut start = 1;
    let mut cur = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    docs.push((start, cur));
    docs.into_iter()
        .filter(|(_, d)| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}
