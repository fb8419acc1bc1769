use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};

use vehicle_connect::controller::{self, DeleteHook, Settings};
use vehicle_connect::delivery::dispatcher::Dispatcher;
use vehicle_connect::delivery::upload::Uploader;
use vehicle_connect::delivery::webhook::WebhookSender;
use vehicle_connect::ingest::{self, ApiState, tokens::TokenSet};
use vehicle_connect::metrics::Metrics;
use vehicle_connect::routing::Registry;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};
use vehicle_connect::status::CounterWriter;
use vehicle_connect::store::{Store, StoreOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Print the OpenAPI document of the HTTP API (the same as docs/openapi.json).
    Openapi,
    /// Run the operator (kubeconfig from KUBECONFIG, ~/.kube/config or in-cluster).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP API (ingest, health, metrics, OpenAPI document).
    #[arg(long, env = "VC_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Directory of the embedded durable store (a volume in Kubernetes).
    #[arg(long, env = "VC_DATA_DIR", default_value = "/var/lib/vehicle-connect")]
    data_dir: PathBuf,
    /// File of accepted ingest bearer tokens, one a line (re-read when it changes).
    /// Without it, every ingest request is refused with 401.
    #[arg(long, env = "VC_INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "VC_MAX_BODY_BYTES", default_value_t = vehicle_connect::ingest::DEFAULT_MAX_BODY)]
    max_body_bytes: usize,
    /// Largest image downloaded for an FTP upload, in bytes.
    #[arg(long, env = "VC_MAX_IMAGE_BYTES", default_value_t = 50 * 1024 * 1024)]
    max_image_bytes: u64,
    /// How long delivered events' ids are remembered for deduplication, in hours.
    #[arg(long, env = "VC_RETENTION_HOURS", default_value_t = 168)]
    retention_hours: u64,
    /// Addresses the SSRF guard lets through (CIDRs or IPs, comma separated), e.g.
    /// `127.0.0.0/8` for local tests. Without it, loopback, private, link-local and
    /// cluster-internal targets are refused.
    #[arg(long, env = "VC_ALLOW_TARGETS", default_value = "")]
    allow_targets: String,
    /// Seconds between login probes of a healthy FTP connection.
    #[arg(long, env = "VC_PROBE_INTERVAL_SECONDS", default_value_t = 300)]
    probe_interval_seconds: u64,
    /// Seconds the store may fail to reopen its file after an I/O error before /healthz fails
    /// (a full disk alone never fails it: a restart would not free the disk).
    #[arg(long, env = "VC_STORE_UNHEALTHY_AFTER_SECONDS", default_value_t = 60)]
    store_unhealthy_after_seconds: u64,
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
        Command::Openapi => println!("{}", vehicle_connect::ingest::openapi_document()),
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
    let guard = TargetGuard::new(allow.clone());
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster)")?;
    tracing::info!(allow_targets = ?allow, data_dir = %args.data_dir.display(), listen = %args.listen, "vehicle-connect starting");

    let store_options = StoreOptions {
        unhealthy_after: Duration::from_secs(args.store_unhealthy_after_seconds),
        ..StoreOptions::default()
    };
    let store = Store::open(&args.data_dir, store_options)
        .with_context(|| format!("opening the store in {}", args.data_dir.display()))?;
    let registry = Arc::new(Registry::new());
    let metrics = Arc::new(Metrics::new());
    let counters = CounterWriter::new(client.clone(), store.clone(), registry.clone());
    let sender = WebhookSender::new(
        guard.clone(),
        concat!("vehicle-connect/", env!("CARGO_PKG_VERSION")),
    )?;
    let uploader = Uploader::new(guard.clone(), args.max_image_bytes)?;
    let dispatcher = Dispatcher::new(
        store.clone(),
        registry.clone(),
        sender,
        uploader,
        metrics.clone(),
        counters.clone(),
    );
    let tokens = match &args.ingest_token_file {
        Some(f) => {
            TokenSet::watch_file(f.clone()).with_context(|| format!("reading {}", f.display()))?
        }
        None => {
            tracing::warn!("no --ingest-token-file: every POST /v1/events is refused with 401");
            TokenSet::default()
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        tokens,
        sink: Arc::new(dispatcher.clone()),
        metrics: metrics.clone(),
        ready: ready.clone(),
        max_body: args.max_body_bytes,
        store: store.clone(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(async move {
        axum::serve(listener, ingest::router(state))
            .with_graceful_shutdown(async move {
                let _ = api_stop.changed().await;
            })
            .await
    });

    let settings = Settings {
        guard,
        probe_interval: Duration::from_secs(args.probe_interval_seconds.max(5)),
        ..Settings::default()
    };
    let d = dispatcher.clone();
    let on_delete: DeleteHook = Arc::new(move |key| {
        let d = d.clone();
        Box::pin(async move { d.drop_target(&key).await })
    });
    let controllers = tokio::spawn(controller::run(client, registry, settings, Some(on_delete)));

    // Resume what was pending before a restart; the reconcilers re-register targets meanwhile
    // (deliveries to a target not registered yet wait for it).
    let resumed = dispatcher.resume()?;
    tracing::info!(pending = resumed, "pending deliveries resumed");
    tokio::spawn(counters.clone().run());
    let gc_store = store.clone();
    let retention = Duration::from_secs(args.retention_hours * 3600);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(600)).await;
            match gc_store.gc(retention).await {
                Ok(n) if n > 0 => tracing::info!(forgotten = n, "old delivered events forgotten"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "store gc failed"),
            }
        }
    });
    ready.store(true, Ordering::Release);

    // The controllers end on SIGTERM/Ctrl-C (kube-runtime handles the signal); then the API
    // drains and the last counters are written.
    let _ = controllers.await;
    let _ = stop_tx.send(true);
    let _ = api.await;
    counters.flush().await;
    tracing::info!("vehicle-connect stopped");
    Ok(())
}
