//! The `mesh` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_cli as cli;
use tracing_subscriber::Layer as _;

#[derive(Parser)]
#[command(name = "mesh", version, about = "A proxyless service mesh for Rust")]
struct Cli {
    /// Export trace spans to the OTLP/gRPC collector at URL (e.g. http://127.0.0.1:4317); `request`
    /// also pushes its metrics there at the end.
    #[arg(long, global = true, value_name = "URL")]
    otlp: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the control plane, for the commands that connect as a mesh client.
#[derive(clap::Args)]
struct XdsArgs {
    /// gRPC xDS bootstrap file (default: GRPC_XDS_BOOTSTRAP / GRPC_XDS_BOOTSTRAP_CONFIG).
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// `sotw` or `delta` (default: MESH_XDS_PROTOCOL, else sotw).
    #[arg(long = "xds-protocol")]
    protocol: Option<String>,
    /// Persist the last good configuration here; serve from it when the control plane is down.
    #[arg(long = "cache-dir")]
    cache_dir: Option<PathBuf>,
    /// How long to wait for the configuration, in seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

impl From<XdsArgs> for cli::XdsOptions {
    fn from(a: XdsArgs) -> Self {
        Self {
            bootstrap: a.bootstrap,
            protocol: a.protocol,
            cache_dir: a.cache_dir,
            timeout: Duration::from_secs(a.timeout),
            json: a.json,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serves xDS from a directory of Istio YAML, the way istiod serves proxyless clients,
    /// re-translating when a file changes.
    #[cfg(feature = "control-plane")]
    ControlPlane {
        /// Directory of Istio YAML files.
        #[arg(long)]
        config: PathBuf,
        /// Address to serve ADS on.
        #[arg(long, default_value = "127.0.0.1:15010")]
        listen: std::net::SocketAddr,
    },
    /// Sends requests through the full mesh stack and summarizes what happened.
    Request {
        /// The URL; its `host:port` names the listener (e.g. http://ui.default.svc.cluster.local:9080/).
        url: String,
        /// Requests to send.
        #[arg(short = 'n', default_value_t = 1)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(short = 'c', default_value_t = 1)]
        concurrency: usize,
        /// Method.
        #[arg(short = 'X', default_value = "GET")]
        method: String,
        /// A header `name: value`; repeatable.
        #[arg(short = 'H')]
        headers: Vec<String>,
        /// The request body.
        #[arg(short = 'd', long = "data", conflicts_with = "grpc")]
        data: Option<String>,
        /// A gRPC call with an empty message (`content-type: application/grpc`, HTTP/2): the
        /// URL's path is the method, e.g. `/demo.Echo/Who`.
        #[arg(long)]
        grpc: bool,
        /// An admin endpoint on ADDR while the requests run: /ready, /stats/prometheus,
        /// /config_dump (with endpoint ejections), CSDS.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Write the client's Istio metrics (Prometheus text) to FILE at the end.
        #[arg(long = "metrics-file")]
        metrics_file: Option<PathBuf>,
        /// Propagate traces (W3C and B3), sampling PERCENT of the traces it starts.
        #[arg(long = "trace-sampling", value_name = "PERCENT")]
        trace_sampling: Option<f64>,
        #[command(flatten)]
        xds: XdsArgs,
    },
    /// A mesh workload: the server stack on ADDR, configured by the control plane (its inbound
    /// listener: mTLS, RBAC), answering every request with who answered and for whom.
    Serve {
        /// gRPC xDS bootstrap file (default: GRPC_XDS_BOOTSTRAP / GRPC_XDS_BOOTSTRAP_CONFIG); it
        /// needs `server_listener_resource_name_template`.
        #[arg(long)]
        bootstrap: Option<PathBuf>,
        /// Where to listen, e.g. 127.0.0.1:8080.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// An admin endpoint on ADDR: /live, /ready (while serving), /stats/prometheus and
        /// /metrics (Istio's metrics of the requests served).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Continue callers' traces (W3C and B3), sampling PERCENT of the traces it starts.
        #[arg(long = "trace-sampling", value_name = "PERCENT")]
        trace_sampling: Option<f64>,
    },
    /// Prints a configuration: a running process's, read from its admin endpoint (`--admin`,
    /// like `istioctl proxy-config`), or the targets' as a new client resolves them.
    ConfigDump {
        /// What to show with --admin: all, listeners, routes, clusters, endpoints, secrets, xds.
        #[arg(default_value = "all", requires = "admin")]
        view: String,
        /// Read the live configuration of the process serving an admin endpoint on ADDR.
        #[arg(long, conflicts_with_all = ["targets", "raw"])]
        admin: Option<std::net::SocketAddr>,
        /// With --admin: json, yaml or short (a table).
        #[arg(short = 'o', long = "output", default_value = "short")]
        output: String,
        /// A target `host:port` (or `xds:///host:port`); repeatable.
        #[arg(long = "target", required_unless_present = "admin")]
        targets: Vec<String>,
        /// Print the resources as received, decoded whole, instead of mesh's view.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        xds: XdsArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let args = Cli::parse();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs piped to files and scripts stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            // `mesh serve` logs each decision (allowed, denied by which policy) unless told
            // otherwise.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,mesh::server::decision=debug,mesh::rbac::audit=info".into()
            }),
        );
    let (otlp, provider) = match &args.otlp {
        Some(url) => {
            // Every span to the collector, whatever the log filter; sampling decides.
            let sampling = match &args.command {
                Command::Request { trace_sampling, .. } | Command::Serve { trace_sampling, .. } => {
                    trace_sampling.unwrap_or(1.0)
                }
                _ => 1.0,
            };
            match mesh::otlp::layer(url, "mesh", sampling) {
                Ok((layer, provider)) => (Some(layer), Some(provider)),
                Err(e) => {
                    eprintln!("mesh: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(otlp).init();
    let result = match args.command {
        #[cfg(feature = "control-plane")]
        Command::ControlPlane { config, listen } => cli::control_plane(config, listen)
            .await
            .map(|()| String::new()),
        Command::Request {
            url,
            requests,
            concurrency,
            method,
            headers,
            data,
            grpc,
            admin,
            metrics_file,
            trace_sampling,
            xds,
        } => {
            let args = cli::RequestArgs {
                url,
                requests,
                concurrency,
                method,
                headers,
                body: cli::RequestBody::from_flags(data, grpc),
                admin,
                metrics_file,
                trace_sampling,
                otlp: args.otlp.clone(),
                xds: xds.into(),
            };
            cli::request(args).await
        }
        Command::Serve {
            bootstrap,
            listen,
            admin,
            trace_sampling,
        } => cli::serve(cli::ServeArgs {
            bootstrap,
            listen,
            admin,
            trace_sampling,
        })
        .await
        .map(|()| String::new()),
        Command::ConfigDump {
            view,
            admin: Some(addr),
            output,
            ..
        } => {
            async {
                let view: cli::proxy_config::View = view.parse()?;
                let output: cli::proxy_config::Output = output.parse()?;
                let dump = cli::proxy_config::fetch(addr).await?;
                cli::proxy_config::render(&dump, view, output)
            }
            .await
        }
        Command::ConfigDump {
            targets, raw, xds, ..
        } => {
            cli::config_dump(cli::ConfigDumpArgs {
                targets,
                raw,
                xds: xds.into(),
            })
            .await
        }
    };
    if let Some(p) = provider {
        // Flushes the spans still batched.
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
    }
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh: {e}");
            ExitCode::FAILURE
        }
    }
}
