//! The `mesh` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh::cli;

#[derive(Parser)]
#[command(name = "mesh", version, about = "A proxyless service mesh for Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Connects to the control plane, waits for the targets' configuration and prints it as
    /// this client resolves it, with the xDS status of every resource.
    /// Sends requests through the full mesh stack and summarizes what happened.
    Request {
        /// The URL; its `host:port` names the listener (e.g. http://ui.default.svc.cluster.local:9080/).
        url: String,
        /// gRPC xDS bootstrap file (default: GRPC_XDS_BOOTSTRAP / GRPC_XDS_BOOTSTRAP_CONFIG).
        #[arg(long)]
        bootstrap: Option<PathBuf>,
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
        /// `sotw` or `delta`.
        #[arg(long = "xds-protocol")]
        protocol: Option<String>,
        /// Persist the configuration here; serve from it when the control plane is unreachable.
        #[arg(long = "cache-dir")]
        cache_dir: Option<PathBuf>,
        /// How long to wait for the configuration, in seconds.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    ConfigDump {
        /// gRPC xDS bootstrap file (default: GRPC_XDS_BOOTSTRAP / GRPC_XDS_BOOTSTRAP_CONFIG).
        #[arg(long)]
        bootstrap: Option<PathBuf>,
        /// A target `host:port` (or `xds:///host:port`); repeatable.
        #[arg(long = "target", required = true)]
        targets: Vec<String>,
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        #[cfg(feature = "control-plane")]
        Command::ControlPlane { config, listen } => cli::control_plane(config, listen)
            .await
            .map(|()| String::new()),
        Command::Request {
            url,
            bootstrap,
            requests,
            concurrency,
            method,
            headers,
            protocol,
            cache_dir,
            timeout,
            json,
        } => {
            cli::request(cli::RequestArgs {
                url,
                bootstrap,
                requests,
                concurrency,
                method,
                headers,
                protocol,
                cache_dir,
                timeout: Duration::from_secs(timeout),
                json,
            })
            .await
        }
        Command::ConfigDump {
            bootstrap,
            targets,
            protocol,
            cache_dir,
            timeout,
            json,
        } => {
            cli::config_dump(cli::ConfigDumpArgs {
                bootstrap,
                targets,
                protocol,
                cache_dir,
                timeout: Duration::from_secs(timeout),
                json,
            })
            .await
        }
    };
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
