use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vehicle_connect::controller::{self, Settings};
use vehicle_connect::routing::Registry;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

/// vehicle-connect: vehicle events to clients' webhooks and FTP servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CRD YAML (the same as crds/).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Run the operator (kubeconfig from KUBECONFIG, ~/.kube/config or in-cluster).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Addresses the SSRF guard lets through (CIDRs or IPs, comma separated), e.g.
    /// `127.0.0.0/8` for local tests. Without it, loopback, private, link-local and
    /// cluster-internal targets are refused.
    #[arg(long, env = "VC_ALLOW_TARGETS", default_value = "")]
    allow_targets: String,
    /// Seconds between login probes of a healthy FTP connection.
    #[arg(long, env = "VC_PROBE_INTERVAL_SECONDS", default_value_t = 300)]
    probe_interval_seconds: u64,
    /// Log format: `text` or `json`.
    #[arg(long, env = "VC_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir } => match out_dir {
            None => print!("{}", vehicle_connect::api::crds_yaml()?),
            Some(dir) => {
                for (name, yaml) in vehicle_connect::api::crd_files()? {
                    std::fs::write(dir.join(&name), yaml)
                        .with_context(|| format!("writing {name}"))?;
                }
            }
        },
        Command::Run(args) => {
            init_tracing(&args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(args))?;
        }
    }
    Ok(())
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let allow = parse_allow_list(&args.allow_targets).map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    let settings = Settings {
        guard: TargetGuard::new(allow.clone()),
        probe_interval: Duration::from_secs(args.probe_interval_seconds.max(5)),
        ..Settings::default()
    };
    tracing::info!(allow_targets = ?allow, "vehicle-connect starting");
    controller::run(client, Arc::new(Registry::new()), settings).await;
    tracing::info!("vehicle-connect stopped");
    Ok(())
}
