//! The gRPC xDS bootstrap (gRFC A27 and what istio-agent writes), and a builder for talking to
//! istiod directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// Where a bootstrap came from, for error messages.
const INLINE_SOURCE: &str = "GRPC_XDS_BOOTSTRAP_CONFIG";

/// A bootstrap that could not be loaded: names the file (or variable), the JSON path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("xDS bootstrap {source_name}: {path}{sep}{message}", sep = if path.is_empty() { "" } else { ": " })]
pub struct BootstrapError {
    /// The file path, `GRPC_XDS_BOOTSTRAP_CONFIG`, or `builder`.
    pub source_name: String,
    /// JSON path of the bad value (`xds_servers[0].server_uri`), empty for whole-file errors.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// How to reach an xDS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    /// `host:port` or `dns:///host:port`.
    Tcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// `unix:///path` (istio-agent's `/etc/istio/proxy/XDS`).
    Unix(PathBuf),
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "{host}:{port}"),
            Self::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl ServerAddress {
    /// Whether the address stays on this machine: a unix socket, `localhost`, or a loopback
    /// IP (names other than `localhost` are not resolved to find out).
    pub fn is_local(&self) -> bool {
        match self {
            Self::Unix(_) => true,
            Self::Tcp { host, .. } => {
                host.eq_ignore_ascii_case("localhost")
                    || host
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// Parses `host:port`, `dns:///host:port`, `dns://authority/host:port` or `unix:///path`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        if let Some(path) = uri.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{uri:?}: a unix socket path must be absolute (unix:///path)"
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = uri.strip_prefix("unix:") {
            return Ok(Self::Unix(PathBuf::from(rest)));
        }
        let target = match uri.strip_prefix("dns:") {
            Some(rest) => match rest.strip_prefix("//") {
                Some(with_authority) => with_authority
                    .split_once('/')
                    .map_or(with_authority, |(_, t)| t),
                None => rest,
            },
            None => uri,
        };
        let (host, port) = if let Some(v6) = target.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| format!("{uri:?}: expected [ipv6]:port"))?;
            (h, p)
        } else {
            target
                .rsplit_once(':')
                .ok_or_else(|| format!("{uri:?}: expected host:port"))?
        };
        if host.is_empty() {
            return Err(format!("{uri:?}: the host is empty"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{uri:?}: {port:?} is not a port"))?;
        Ok(Self::Tcp {
            host: host.to_string(),
            port,
        })
    }
}

/// Channel credentials for the xDS stream (the first supported entry of `channel_creds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelCredentials {
    /// Plaintext.
    Insecure,
    /// TLS (gRFC A65): no CA means the system roots; certificate and key come together.
    Tls {
        /// CA bundle.
        ca_certificate_file: Option<PathBuf>,
        /// Client certificate chain.
        certificate_file: Option<PathBuf>,
        /// Client key.
        private_key_file: Option<PathBuf>,
        /// How often the files are re-read (default 600 s).
        refresh_interval: Duration,
    },
}

/// Per-call credentials (gRFC A97).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallCredentials {
    /// `authorization: Bearer <contents>`, re-read on every (re)connect.
    JwtTokenFile(PathBuf),
}

/// One `xds_servers` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsServer {
    /// The `server_uri` as written.
    pub server_uri: String,
    /// Where it points.
    pub address: ServerAddress,
    /// Channel credentials.
    pub channel_credentials: ChannelCredentials,
    /// Call credentials (all supported ones are used).
    pub call_credentials: Vec<CallCredentials>,
    /// `server_features`, e.g. `xds_v3`, `ignore_resource_deletion`.
    pub server_features: Vec<String>,
    /// The TLS server name to verify (defaults to the host).
    pub tls_server_name: Option<String>,
    /// Extra gRPC metadata sent on the stream (istio-agent sends `ClusterID`).
    pub headers: Vec<(String, String)>,
}

impl XdsServer {
    /// Whether a bearer token would go over an insecure channel off this machine (refused).
    pub fn sends_token_in_clear(&self) -> bool {
        !self.call_credentials.is_empty()
            && matches!(self.channel_credentials, ChannelCredentials::Insecure)
            && !self.address.is_local()
    }

    /// Whether the server declared `feature`.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.server_features.iter().any(|f| f == feature)
    }
}

/// `node.locality`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeLocality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// The `node` sent on the first request of every stream.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    /// `sidecar~IP~POD.NS~NS.svc.cluster.local` for istiod; may be empty.
    pub id: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.metadata` (istiod needs `GENERATOR: grpc`).
    pub metadata: Map<String, Value>,
    /// `node.locality`.
    pub locality: Option<NodeLocality>,
}

/// A `file_watcher` certificate provider's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileWatcherConfig {
    /// Certificate chain.
    pub certificate_file: Option<PathBuf>,
    /// Private key.
    pub private_key_file: Option<PathBuf>,
    /// Roots.
    pub ca_certificate_file: Option<PathBuf>,
    /// Re-read interval (default 600 s).
    pub refresh_interval: Duration,
}

/// One `certificate_providers` instance.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateProvider {
    /// `plugin_name`.
    pub plugin_name: String,
    /// The parsed config when the plugin is `file_watcher`.
    pub file_watcher: Option<FileWatcherConfig>,
    /// Istio's CA, when the instance is served by it (built by [`IstiodBootstrap`]).
    pub istio_ca: Option<crate::certs::istio_ca::IstioCaConfig>,
    /// The raw config.
    pub config: Value,
}

/// A parsed bootstrap.
#[derive(Debug, Clone, PartialEq)]
pub struct Bootstrap {
    /// Servers in priority order; only the first is used (no A71 fallback yet).
    pub xds_servers: Vec<XdsServer>,
    /// The node.
    pub node: Node,
    /// Certificate-provider instances by name (Istio: `default`).
    pub certificate_providers: BTreeMap<String, CertificateProvider>,
    /// `server_listener_resource_name_template` (Istio: `xds.istio.io/grpc/lds/inbound/%s`).
    pub server_listener_resource_name_template: Option<String>,
    /// `client_default_listener_resource_name_template` (default `%s`).
    pub client_default_listener_resource_name_template: String,
    /// Where it was loaded from.
    pub source_name: String,
}

struct Ctx<'a> {
    source: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> BootstrapError {
        BootstrapError {
            source_name: self.source.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }

    fn string<'v>(&self, v: &'v Value, path: &str) -> Result<&'v str, BootstrapError> {
        v.as_str()
            .ok_or_else(|| self.err(path, format!("expected a string, found {}", kind(v))))
    }

    fn opt_string(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<String>, BootstrapError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => self
                .string(v, &format!("{path}.{key}"))
                .map(|s| Some(s.to_string())),
        }
    }

    fn object<'v>(
        &self,
        v: &'v Value,
        path: &str,
    ) -> Result<&'v Map<String, Value>, BootstrapError> {
        v.as_object()
            .ok_or_else(|| self.err(path, format!("expected an object, found {}", kind(v))))
    }

    fn array<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Vec<Value>, BootstrapError> {
        v.as_array()
            .ok_or_else(|| self.err(path, format!("expected an array, found {}", kind(v))))
    }

    fn duration(
        &self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        default: Duration,
    ) -> Result<Duration, BootstrapError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => {
                let p = format!("{path}.{key}");
                let s = self.string(v, &p)?;
                parse_json_duration(s)
                    .ok_or_else(|| self.err(p, format!("{s:?} is not a duration like \"600s\"")))
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A Go duration as Istio's environment writes them: `90s`, `15m`, `24h`, `1h30m`.
fn go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            _ => return None,
        };
        total = total.checked_add(Duration::from_secs(n.checked_mul(unit)?))?;
        rest = &rest[unit_len..];
    }
    Some(mesh_core::time::capped(total))
}

/// Parses a protobuf-JSON duration: decimal seconds with an `s` suffix.
pub fn parse_json_duration(s: &str) -> Option<Duration> {
    let secs = s.strip_suffix('s')?;
    let f: f64 = secs.parse().ok()?;
    (0.0..1e12).contains(&f).then(|| Duration::from_secs_f64(f))
}

impl Bootstrap {
    /// This workload as Istio's metrics label it, from the node metadata istio-agent writes
    /// (`WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID`, `LABELS`).
    pub fn workload(&self) -> mesh_core::telemetry::Workload {
        let metadata = &self.node.metadata;
        mesh_core::telemetry::Workload::from_node_metadata(
            |k| metadata.get(k).and_then(|v| v.as_str()),
            |k| {
                metadata
                    .get("LABELS")
                    .and_then(|l| l.get(k))
                    .and_then(|v| v.as_str())
            },
        )
    }

    /// Loads the bootstrap the way gRPC does: the file named by `GRPC_XDS_BOOTSTRAP`, else the
    /// JSON in `GRPC_XDS_BOOTSTRAP_CONFIG`.
    pub fn from_env() -> Result<Self, BootstrapError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`Bootstrap::from_env`], with the variables from `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, BootstrapError> {
        if let Some(path) = var("GRPC_XDS_BOOTSTRAP").filter(|p| !p.is_empty()) {
            return Self::from_file(path);
        }
        if let Some(json) = var(INLINE_SOURCE).filter(|j| !j.is_empty()) {
            return Self::from_json(&json, INLINE_SOURCE);
        }
        Err(BootstrapError {
            source_name: "(none)".into(),
            path: String::new(),
            message: "neither GRPC_XDS_BOOTSTRAP (a file) nor GRPC_XDS_BOOTSTRAP_CONFIG (inline JSON) is set".into(),
        })
    }

    /// Loads a bootstrap file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BootstrapError> {
        let path = path.as_ref();
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BootstrapError {
            source_name: source.clone(),
            path: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::from_json(&text, &source)
    }

    /// Parses bootstrap JSON; `source` names it in errors. Unknown keys are ignored.
    pub fn from_json(text: &str, source: &str) -> Result<Self, BootstrapError> {
        let cx = Ctx { source };
        let root: Value = serde_json::from_str(text).map_err(|e| {
            cx.err(
                "",
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let root = cx.object(&root, "(root)")?;
        let servers = root.get("xds_servers").ok_or_else(|| {
            cx.err(
                "xds_servers",
                "is missing: the bootstrap must name at least one xDS server",
            )
        })?;
        let servers = cx.array(servers, "xds_servers")?;
        if servers.is_empty() {
            return Err(cx.err(
                "xds_servers",
                "is empty: the bootstrap must name at least one xDS server",
            ));
        }
        let xds_servers = servers
            .iter()
            .enumerate()
            .map(|(i, s)| parse_server(&cx, s, &format!("xds_servers[{i}]")))
            .collect::<Result<_, _>>()?;
        let node = match root.get("node") {
            None | Some(Value::Null) => Node::default(),
            Some(n) => parse_node(&cx, n)?,
        };
        let mut certificate_providers = BTreeMap::new();
        if let Some(cp) = root.get("certificate_providers").filter(|v| !v.is_null()) {
            for (name, v) in cx.object(cp, "certificate_providers")? {
                let path = format!("certificate_providers.{name}");
                let obj = cx.object(v, &path)?;
                let plugin_name = cx
                    .opt_string(obj, "plugin_name", &path)?
                    .ok_or_else(|| cx.err(format!("{path}.plugin_name"), "is missing"))?;
                let config = obj
                    .get("config")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                let file_watcher = if plugin_name == "file_watcher" {
                    let cpath = format!("{path}.config");
                    let c = cx.object(&config, &cpath)?;
                    let file = |k: &str| cx.opt_string(c, k, &cpath).map(|o| o.map(PathBuf::from));
                    let fw = FileWatcherConfig {
                        certificate_file: file("certificate_file")?,
                        private_key_file: file("private_key_file")?,
                        ca_certificate_file: file("ca_certificate_file")?,
                        refresh_interval: cx.duration(
                            c,
                            "refresh_interval",
                            &cpath,
                            Duration::from_secs(600),
                        )?,
                    };
                    if fw.certificate_file.is_some() != fw.private_key_file.is_some() {
                        return Err(cx.err(
                            cpath,
                            "certificate_file and private_key_file must be given together",
                        ));
                    }
                    if fw.certificate_file.is_none() && fw.ca_certificate_file.is_none() {
                        return Err(cx.err(cpath, "needs certificate_file or ca_certificate_file"));
                    }
                    Some(fw)
                } else {
                    None
                };
                certificate_providers.insert(
                    name.clone(),
                    CertificateProvider {
                        plugin_name,
                        file_watcher,
                        istio_ca: None,
                        config,
                    },
                );
            }
        }
        Ok(Self {
            xds_servers,
            node,
            certificate_providers,
            server_listener_resource_name_template: cx.opt_string(
                root,
                "server_listener_resource_name_template",
                "",
            )?,
            client_default_listener_resource_name_template: cx
                .opt_string(root, "client_default_listener_resource_name_template", "")?
                .unwrap_or_else(|| "%s".into()),
            source_name: source.to_string(),
        })
    }

    /// The server this client talks to.
    pub fn server(&self) -> &XdsServer {
        &self.xds_servers[0]
    }

    /// The LDS name for a target `host:port` (the client listener template applied).
    pub fn listener_name(&self, target: &str) -> String {
        self.client_default_listener_resource_name_template
            .replace("%s", target)
    }

    /// The LDS name of a server listening on `addr` (gRFC A36: the server template with
    /// `IP:port`, IPv6 in brackets); `None` without a template.
    pub fn server_listener_name(&self, addr: std::net::SocketAddr) -> Option<String> {
        let t = self.server_listener_resource_name_template.as_ref()?;
        Some(t.replace("%s", &addr.to_string()))
    }
}

fn parse_server(cx: &Ctx<'_>, v: &Value, path: &str) -> Result<XdsServer, BootstrapError> {
    let obj = cx.object(v, path)?;
    let server_uri = cx
        .opt_string(obj, "server_uri", path)?
        .ok_or_else(|| cx.err(format!("{path}.server_uri"), "is missing"))?;
    let address =
        ServerAddress::parse(&server_uri).map_err(|m| cx.err(format!("{path}.server_uri"), m))?;
    let creds_path = format!("{path}.channel_creds");
    let creds = obj
        .get("channel_creds")
        .ok_or_else(|| cx.err(&creds_path, "is missing"))?;
    let mut channel_credentials = None;
    let mut seen = Vec::new();
    for (i, c) in cx.array(creds, &creds_path)?.iter().enumerate() {
        let cpath = format!("{creds_path}[{i}]");
        let c = cx.object(c, &cpath)?;
        let ty = cx
            .opt_string(c, "type", &cpath)?
            .ok_or_else(|| cx.err(format!("{cpath}.type"), "is missing"))?;
        let parsed = match ty.as_str() {
            "insecure" => ChannelCredentials::Insecure,
            "tls" => {
                let config = c
                    .get("config")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                let conf_path = format!("{cpath}.config");
                let conf = cx.object(&config, &conf_path)?;
                let file = |k: &str| {
                    cx.opt_string(conf, k, &conf_path)
                        .map(|o| o.map(PathBuf::from))
                };
                let (cert, key) = (file("certificate_file")?, file("private_key_file")?);
                if cert.is_some() != key.is_some() {
                    return Err(cx.err(
                        conf_path,
                        "certificate_file and private_key_file must be given together",
                    ));
                }
                ChannelCredentials::Tls {
                    ca_certificate_file: file("ca_certificate_file")?,
                    certificate_file: cert,
                    private_key_file: key,
                    refresh_interval: cx.duration(
                        conf,
                        "refresh_interval",
                        &conf_path,
                        Duration::from_secs(600),
                    )?,
                }
            }
            _ => {
                seen.push(ty);
                continue;
            }
        };
        channel_credentials = Some(parsed);
        break;
    }
    let channel_credentials = channel_credentials.ok_or_else(|| {
        cx.err(
            &creds_path,
            format!("no supported type (supported: \"insecure\", \"tls\"; found {seen:?})"),
        )
    })?;
    let mut call_credentials = Vec::new();
    if let Some(cc) = obj.get("call_creds").filter(|v| !v.is_null()) {
        let cc_path = format!("{path}.call_creds");
        for (i, c) in cx.array(cc, &cc_path)?.iter().enumerate() {
            let cpath = format!("{cc_path}[{i}]");
            let c = cx.object(c, &cpath)?;
            if c.get("type").and_then(Value::as_str) == Some("jwt_token_file") {
                let conf = c
                    .get("config")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                let conf = cx.object(&conf, &format!("{cpath}.config"))?;
                let file = cx
                    .opt_string(conf, "jwt_token_file", &format!("{cpath}.config"))?
                    .ok_or_else(|| {
                        cx.err(format!("{cpath}.config.jwt_token_file"), "is missing")
                    })?;
                call_credentials.push(CallCredentials::JwtTokenFile(file.into()));
            }
        }
    }
    // A socket path has no TLS in this client: a configuration asking for it gets an error,
    // not a silent plaintext stream.
    if matches!(address, ServerAddress::Unix(_))
        && matches!(channel_credentials, ChannelCredentials::Tls { .. })
    {
        return Err(cx.err(
            &creds_path,
            "\"tls\" is not supported for a unix: server_uri; use \"insecure\" (the socket is local)",
        ));
    }
    let mut server_features = Vec::new();
    if let Some(f) = obj.get("server_features").filter(|v| !v.is_null()) {
        let fpath = format!("{path}.server_features");
        for (i, x) in cx.array(f, &fpath)?.iter().enumerate() {
            server_features.push(cx.string(x, &format!("{fpath}[{i}]"))?.to_string());
        }
    }
    let server = XdsServer {
        server_uri,
        address,
        channel_credentials,
        call_credentials,
        server_features,
        tls_server_name: None,
        headers: Vec::new(),
    };
    // As gRPC does, a bearer token never travels in the clear off this machine.
    if server.sends_token_in_clear() {
        return Err(cx.err(
            format!("{path}.call_creds"),
            format!(
                "a bearer token is only sent over TLS or to a local address, and {} with \"insecure\" credentials is neither",
                server.server_uri
            ),
        ));
    }
    Ok(server)
}

fn parse_node(cx: &Ctx<'_>, v: &Value) -> Result<Node, BootstrapError> {
    let obj = cx.object(v, "node")?;
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(m) => cx.object(m, "node.metadata")?.clone(),
    };
    let locality = match obj.get("locality") {
        None | Some(Value::Null) => None,
        Some(l) => {
            let l = cx.object(l, "node.locality")?;
            let s = |k: &str| {
                cx.opt_string(l, k, "node.locality")
                    .map(Option::unwrap_or_default)
            };
            Some(NodeLocality {
                region: s("region")?,
                zone: s("zone")?,
                sub_zone: s("sub_zone")?,
            })
        }
    };
    Ok(Node {
        id: cx.opt_string(obj, "id", "node")?.unwrap_or_default(),
        cluster: cx.opt_string(obj, "cluster", "node")?.unwrap_or_default(),
        metadata,
        locality,
    })
}

/// Builds a bootstrap for talking to istiod directly (no istio-agent), the way istio-agent
/// would describe this pod: TLS to `istiod.istio-system.svc:15012` with the mesh root
/// certificate, the pod's projected service-account token as a bearer token, and node id and
/// metadata from the standard pod environment.
#[derive(Debug, Clone)]
pub struct IstiodBootstrap {
    address: String,
    root_cert: PathBuf,
    token_file: PathBuf,
    cluster_domain: String,
}

impl Default for IstiodBootstrap {
    fn default() -> Self {
        Self {
            address: "istiod.istio-system.svc:15012".into(),
            root_cert: "/var/run/secrets/istio/root-cert.pem".into(),
            token_file: "/var/run/secrets/tokens/istio-token".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

impl IstiodBootstrap {
    /// istiod's address (`host:port`).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// The mesh root certificate used to verify istiod.
    pub fn root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_cert = path.into();
        self
    }

    /// The projected token sent as `authorization: Bearer`.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = path.into();
        self
    }

    /// The Kubernetes cluster domain (default `cluster.local`).
    pub fn cluster_domain(mut self, domain: impl Into<String>) -> Self {
        self.cluster_domain = domain.into();
        self
    }

    /// Builds it from the process environment.
    pub fn build(self) -> Result<Bootstrap, BootstrapError> {
        self.build_from(|k| std::env::var(k).ok())
    }

    /// Builds it with the variables from `var`: `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`
    /// (or `INSTANCE_IPS`), `SERVICE_ACCOUNT`, `ISTIO_META_CLUSTER_ID` (default `Kubernetes`),
    /// `ISTIO_VERSION`, `ISTIO_META_WORKLOAD_NAME` (the deployment) and `ISTIO_METAJSON_LABELS`
    /// (a JSON object).
    ///
    /// The workload certificate comes from istiod's CA (certificate provider `default`), for
    /// `spiffe://TRUST_DOMAIN/ns/POD_NAMESPACE/sa/SERVICE_ACCOUNT` (`TRUST_DOMAIN` defaults to
    /// `cluster.local`, the account to `default`) and `SECRET_TTL` (default `24h`). As the
    /// injector and istio-agent do, the environment overrides where istiod is (revisions):
    /// `PROXY_CONFIG`'s `discoveryAddress` (JSON), `CA_ADDR` for the CA alone, and
    /// `ISTIOD_SAN` for the name istiod's certificate is checked against.
    pub fn build_from(
        self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Bootstrap, BootstrapError> {
        let cx = Ctx {
            source: "istiod builder",
        };
        let need = |k: &str| {
            var(k)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| cx.err(k, "environment variable is not set"))
        };
        let pod = need("POD_NAME")?;
        let ns = need("POD_NAMESPACE")?;
        let ips = var("INSTANCE_IPS")
            .or_else(|| var("INSTANCE_IP"))
            .filter(|v| !v.is_empty());
        let ips = ips.ok_or_else(|| cx.err("INSTANCE_IP", "environment variable is not set"))?;
        let first_ip = ips.split(',').next().unwrap_or_default().trim().to_string();
        let mut metadata = Map::new();
        let mut put = |k: &str, v: String| {
            metadata.insert(k.into(), Value::String(v));
        };
        put("GENERATOR", "grpc".into());
        put("NAMESPACE", ns.clone());
        put("INSTANCE_IPS", ips.clone());
        put("NAME", pod.clone());
        put(
            "CLUSTER_ID",
            var("ISTIO_META_CLUSTER_ID").unwrap_or_else(|| "Kubernetes".into()),
        );
        if let Some(v) = var("ISTIO_VERSION") {
            put("ISTIO_VERSION", v);
        }
        if let Some(sa) = var("SERVICE_ACCOUNT") {
            put("SERVICE_ACCOUNT", sa);
        }
        if let Some(w) = var("ISTIO_META_WORKLOAD_NAME") {
            put("WORKLOAD_NAME", w);
        }
        if let Some(labels) = var("ISTIO_METAJSON_LABELS") {
            let v: Value = serde_json::from_str(&labels)
                .map_err(|e| cx.err("ISTIO_METAJSON_LABELS", format!("is not JSON: {e}")))?;
            cx.object(&v, "ISTIO_METAJSON_LABELS")?;
            metadata.insert("LABELS".into(), v);
        }
        let mut xds_address = self.address.clone();
        if let Some(pc) = var("PROXY_CONFIG").filter(|v| !v.trim().is_empty()) {
            let v: Value = serde_json::from_str(&pc)
                .map_err(|e| cx.err("PROXY_CONFIG", format!("is not JSON: {e}")))?;
            if let Some(a) = v.get("discoveryAddress").and_then(Value::as_str) {
                xds_address = a.to_string();
            }
        }
        let ca_address = var("CA_ADDR")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| xds_address.clone());
        let server_name = var("ISTIOD_SAN").filter(|v| !v.is_empty());
        let cluster_id = metadata
            .get("CLUSTER_ID")
            .and_then(Value::as_str)
            .unwrap_or("Kubernetes")
            .to_string();
        let server = |uri: &str, what: &str| -> Result<XdsServer, BootstrapError> {
            let address = ServerAddress::parse(uri).map_err(|m| cx.err(what, m))?;
            let host = match &address {
                ServerAddress::Tcp { host, .. } => Some(host.clone()),
                ServerAddress::Unix(_) => None,
            };
            Ok(XdsServer {
                server_uri: uri.to_string(),
                address,
                channel_credentials: ChannelCredentials::Tls {
                    ca_certificate_file: Some(self.root_cert.clone()),
                    certificate_file: None,
                    private_key_file: None,
                    refresh_interval: Duration::from_secs(600),
                },
                call_credentials: vec![CallCredentials::JwtTokenFile(self.token_file.clone())],
                server_features: vec!["xds_v3".into()],
                tls_server_name: server_name.clone().or(host),
                headers: vec![("clusterid".into(), cluster_id.clone())],
            })
        };
        let trust_domain = var("TRUST_DOMAIN")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "cluster.local".into());
        let account = var("SERVICE_ACCOUNT")
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "default".into());
        let ttl = match var("SECRET_TTL").filter(|v| !v.is_empty()) {
            None => Duration::from_secs(24 * 3600),
            Some(t) => go_duration(&t).ok_or_else(|| {
                cx.err(
                    "SECRET_TTL",
                    format!("{t:?} is not a duration like \"24h\""),
                )
            })?,
        };
        let mut certificate_providers = BTreeMap::new();
        certificate_providers.insert(
            crate::certs::DEFAULT_INSTANCE.to_string(),
            CertificateProvider {
                plugin_name: crate::certs::istio_ca::PLUGIN_NAME.into(),
                file_watcher: None,
                istio_ca: Some(crate::certs::istio_ca::IstioCaConfig {
                    server: server(&ca_address, "CA_ADDR")?,
                    spiffe_id: format!("spiffe://{trust_domain}/ns/{ns}/sa/{account}"),
                    ttl,
                }),
                config: Value::Object(Map::new()),
            },
        );
        Ok(Bootstrap {
            xds_servers: vec![server(&xds_address, "address")?],
            node: Node {
                id: format!(
                    "sidecar~{first_ip}~{pod}.{ns}~{ns}.svc.{}",
                    self.cluster_domain
                ),
                cluster: String::new(),
                metadata,
                locality: None,
            },
            certificate_providers,
            server_listener_resource_name_template: Some("xds.istio.io/grpc/lds/inbound/%s".into()),
            client_default_listener_resource_name_template: "%s".into(),
            source_name: "istiod builder".into(),
        })
    }
}

#[cfg(test)]
mod tests;
