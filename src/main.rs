use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};

use vehicle_connect::controller::{self, DeleteHook, Settings};
use vehicle_connect::delivery::api::ApiSender;
use vehicle_connect::delivery::attempt::Senders;
use vehicle_connect::delivery::dispatcher::{Dispatcher, ForgetDeliveries, Limits};
use vehicle_connect::delivery::files::Uploader;
use vehicle_connect::delivery::webhook::WebhookSender;
use vehicle_connect::ingest::tokens::{TokenFile, TokenSet};
use vehicle_connect::ingest::{self, ApiState, FeedState};
use vehicle_connect::manage::{self, ManageState};
use vehicle_connect::metrics::Metrics;
use vehicle_connect::routing::Registry;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};
use vehicle_connect::status::CounterWriter;
use vehicle_connect::store::{Store, StoreOptions};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long an idle FTP/SFTP session stays open for reuse when replicas share the
/// `maxConnections` slots (it holds one meanwhile); 60 s on one replica.
const SHARED_SESSION_IDLE: Duration = Duration::from_secs(5);

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
    /// Print the requests an ApiConnection would send for an event, without sending them:
    /// for developing a mapping offline.
    Render {
        /// The ApiConnection, YAML or JSON (as for kubectl apply).
        #[arg(long)]
        connection: PathBuf,
        /// The event, JSON (as POSTed to /v1/events).
        #[arg(long)]
        event: PathBuf,
        /// A value captured earlier for the vehicle, `name=value` (repeatable), e.g.
        /// `--remote id=dms-42`.
        #[arg(long, value_parser = parse_remote)]
        remote: Vec<(String, String)>,
    },
    /// Run the operator (kubeconfig from KUBECONFIG, ~/.kube/config or in-cluster).
    // Boxed: the flags are large next to the other commands.
    Run(Box<RunArgs>),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP API (ingest, health, metrics, OpenAPI document).
    #[arg(long, env = "VC_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Directory of the embedded durable store (a volume in Kubernetes).
    #[arg(long, env = "VC_DATA_DIR", default_value = "/var/lib/vehicle-connect")]
    data_dir: PathBuf,
    /// File of accepted ingest bearer tokens, one a line, each optionally followed by the
    /// clientIds it may post for (`<token> dealer-1,dealer-2`; none or `*`: any client).
    /// Re-read when it changes. Without it, every ingest request is refused with 401.
    #[arg(long, env = "VC_INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// File of feed tokens (`GET /v1/events`, the clients' pull feed): the same format as
    /// the ingest token file, each token followed by the clientIds whose events it reads
    /// (`*`: any client, with `clientId=`; a bare token is refused). Separate from the ingest
    /// tokens: a feed token cannot post and an ingest token cannot read. Re-read when it
    /// changes. Without it, every feed read is refused with 401.
    #[arg(long, env = "VC_FEED_TOKEN_FILE")]
    feed_token_file: Option<PathBuf>,
    /// File of manage tokens (delivery log, retry, replay, test sends, self-service, the
    /// console): the feed's format; `*` is the platform operator, a client list limits the
    /// token to those clients' targets. Re-read when it changes. Without it, every management
    /// request is refused with 401.
    #[arg(long, env = "VC_MANAGE_TOKEN_FILE")]
    manage_token_file: Option<PathBuf>,
    /// The platform's operational webhook: told (a signed JSON POST, a few retries, never
    /// holding up delivery) when a resource's delivery turns failing or delayed, recovers,
    /// is held by a 410 Gone or is suspended.
    #[arg(long, env = "VC_OPS_WEBHOOK_URL")]
    ops_webhook_url: Option<String>,
    /// File with the ops webhook's Standard Webhooks secret(s) (`whsec_...`, space or line
    /// separated); without it the signals are not signed.
    #[arg(long, env = "VC_OPS_WEBHOOK_SECRET_FILE", requires = "ops_webhook_url")]
    ops_webhook_secret_file: Option<PathBuf>,
    /// Feed long-polls (`wait=`) waiting at once; more are answered 503 with Retry-After.
    #[arg(long, env = "VC_MAX_FEED_WAITERS", default_value_t = ingest::feed::DEFAULT_MAX_WAITERS)]
    max_feed_waiters: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "VC_MAX_BODY_BYTES", default_value_t = vehicle_connect::ingest::DEFAULT_MAX_BODY)]
    max_body_bytes: usize,
    /// Ingest requests handled at once; more are answered 503 with Retry-After.
    #[arg(long, env = "VC_MAX_CONCURRENT_INGEST", default_value_t = vehicle_connect::ingest::DEFAULT_MAX_CONCURRENT)]
    max_concurrent_ingest: usize,
    /// Largest image downloaded for an FTP upload, in bytes.
    #[arg(long, env = "VC_MAX_IMAGE_BYTES", default_value_t = 50 * 1024 * 1024)]
    max_image_bytes: u64,
    /// How long events are kept after they are accepted, in hours (longer while a delivery
    /// of theirs is pending): their ids dedupe and the pull feed returns them meanwhile.
    #[arg(long, env = "VC_RETENTION_HOURS", default_value_t = 168)]
    retention_hours: u64,
    /// How long delivery log entries are kept, in hours.
    #[arg(long, env = "VC_DELIVERY_LOG_RETENTION_HOURS", default_value_t = 168)]
    delivery_log_retention_hours: u64,
    /// Most delivery log entries kept; the oldest go first.
    #[arg(long, env = "VC_DELIVERY_LOG_MAX_ENTRIES", default_value_t = 1_000_000)]
    delivery_log_max_entries: u64,
    /// Seconds between the store's removals of events past the retention.
    #[arg(long, env = "VC_GC_INTERVAL_SECONDS", default_value_t = 600)]
    gc_interval_seconds: u64,
    /// Addresses the SSRF guard lets through (CIDRs or IPs, comma separated), e.g.
    /// `127.0.0.0/8` for local tests. Without it, loopback, private, link-local and
    /// cluster-internal targets are refused.
    #[arg(long, env = "VC_ALLOW_TARGETS", default_value = "")]
    allow_targets: String,
    /// Failed attempts in a row after which a resource shows `Delivering=False`
    /// (`DeliveryFailing`), with a Warning Event; it turns True on the next success.
    #[arg(long, env = "VC_DELIVERING_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    delivering_failures: u32,
    /// Seconds the oldest pending event of a resource may wait before it shows
    /// `Delivering=False` (`DeliveryDelayed`); not counted while it is suspended.
    #[arg(long, env = "VC_DELIVERING_MAX_WAIT_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    delivering_max_wait_seconds: u64,
    /// Seconds between login probes of a healthy FTP connection.
    #[arg(long, env = "VC_PROBE_INTERVAL_SECONDS", default_value_t = 300)]
    probe_interval_seconds: u64,
    /// Pending deliveries in the store above which ingest answers 429 with Retry-After
    /// instead of accepting what could not be kept.
    #[arg(long, env = "VC_MAX_PENDING_DELIVERIES", default_value_t = 5_000_000)]
    max_pending_deliveries: u64,
    /// Pending deliveries held in memory at once over all targets (the rest wait in the store
    /// and are paged in as these finish): bounds the operator's memory under a backlog.
    #[arg(long, env = "VC_MAX_LOADED_DELIVERIES", default_value_t = 200_000)]
    max_loaded_deliveries: usize,
    /// Lanes (one vehicle's deliveries to one target, in order) worked on at once over all
    /// targets; more wait queued. Lanes waiting to retry do not count.
    #[arg(long, env = "VC_MAX_ACTIVE_LANES", default_value_t = 2048)]
    max_active_lanes: usize,
    /// Seconds between sweeps that expire backlogs older than their retry policy's maxAge.
    #[arg(long, env = "VC_SWEEP_INTERVAL_SECONDS", default_value_t = 30)]
    sweep_interval_seconds: u64,
    /// Label selector (e.g. `connect.vehicles.io/credential=true`): the operator then watches
    /// and reads only Secrets carrying these labels; others are SecretNotAllowed.
    #[arg(long, env = "VC_SECRET_SELECTOR")]
    secret_selector: Option<String>,
    /// Label selector (e.g. `connect.vehicles.io/shard=a`): the operator then watches,
    /// reconciles and delivers for only the WebhookSubscriptions and FtpConnections carrying
    /// these labels, leaving the others to another installation in the same cluster.
    #[arg(long, env = "VC_WATCH_LABEL_SELECTOR")]
    watch_label_selector: Option<String>,
    /// Seconds the store may fail to reopen its file after an I/O error before /healthz fails
    /// (a full disk alone never fails it: a restart would not free the disk).
    #[arg(long, env = "VC_STORE_UNHEALTHY_AFTER_SECONDS", default_value_t = 60)]
    store_unhealthy_after_seconds: u64,
    /// Where accepted events are kept: `embedded` (this replica's own store, the default), or
    /// NATS URLs (`nats://host:4222[,nats://…]`, `tls://` for TLS): events then go to the
    /// JetStream stream `VC_EVENTS` and several replicas share the deliveries by partition.
    #[arg(long, env = "VC_STORE", default_value = "embedded")]
    store: String,
    /// NATS credentials file (JWT and NKey seed), e.g. mounted from a Secret.
    #[arg(long, env = "VC_NATS_CREDENTIALS_FILE")]
    nats_credentials_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the NATS servers' certificates.
    #[arg(long, env = "VC_NATS_TLS_CA_FILE")]
    nats_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS with NATS; needs --nats-tls-key-file.
    #[arg(long, env = "VC_NATS_TLS_CERT_FILE", requires = "nats_tls_key_file")]
    nats_tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS with NATS; needs --nats-tls-cert-file.
    #[arg(long, env = "VC_NATS_TLS_KEY_FILE", requires = "nats_tls_cert_file")]
    nats_tls_key_file: Option<PathBuf>,
    /// Replicas of the JetStream stream and buckets: 3 for a NATS cluster, 1 for one server.
    #[arg(long, env = "VC_NATS_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    nats_replicas: u8,
    /// This replica's id among those sharing the partitions (letters, digits, `-`, `_`, `=`);
    /// default: $HOSTNAME, which is the pod name in Kubernetes.
    #[arg(long, env = "VC_REPLICA_ID")]
    replica_id: Option<String>,
    /// Partitions events are spread over by (client, vehicle). Every replica must use the same
    /// number, and it must not change while events are pending.
    #[arg(long, env = "VC_PARTITIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    partitions: u32,
    /// Seconds a partition's lease lasts: a replica that dies without handing its partitions
    /// over has them taken over after about this long.
    #[arg(long, env = "VC_PARTITION_LEASE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    partition_lease_seconds: u64,
    /// Status writes of delivery counters per second, over all resources: fewer spare the API
    /// server and etcd (each write costs them a patch and a watch event), at the price of
    /// statuses that lag further behind during a burst (each is current within the number of
    /// busy resources divided by this, in seconds).
    #[arg(long, env = "VC_STATUS_WRITES_PER_SECOND", default_value_t = vehicle_connect::status::STATUS_WRITES_PER_SECOND as u64, value_parser = clap::value_parser!(u64).range(1..=1000))]
    status_writes_per_second: u64,
    /// Log format: `text`, or `json` (one object a line, fields at the top level).
    #[arg(long, env = "VC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        Command::Render {
            connection,
            event,
            remote,
        } => render(&connection, &event, remote.into_iter().collect())?,
        Command::Run(args) => {
            init_tracing(args.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run(*args))?;
        }
    }
    Ok(())
}

/// A selector flag; empty (e.g. `VC_WATCH_LABEL_SELECTOR=`) means none.
fn non_empty(flag: &Option<String>) -> Option<String> {
    flag.clone().filter(|s| !s.trim().is_empty())
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let layer = tracing_subscriber::fmt::layer();
    if format == LogFormat::Json {
        tracing_subscriber::registry()
            .with(json_layer(std::io::stdout).with_filter(filter))
            .init();
    } else {
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init();
    }
}

/// JSON lines with the event's fields at the top level (`"namespace"`, not
/// `"fields":{"namespace"}`), so log queries need no nesting; the current span's fields
/// follow under `span`.
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

/// `RUST_LOG` (our default when unset or invalid), and, whatever it says, nothing from suppaftp
/// at trace level: there it logs every control command, `PASS <password>` included. A second
/// filter every event must also pass, so no directive can lift it.
fn log_filter<S>(rust_log: Option<&str>) -> impl tracing_subscriber::layer::Filter<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    let env = rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info,kube_runtime=warn,kube_client=warn"));
    let no_suppaftp_trace = filter_fn(|meta| {
        !(meta.target().starts_with("suppaftp") && *meta.level() == tracing::Level::TRACE)
    })
    // Without a hint the pair would have none, and every `log` record would be bridged.
    .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
    env.and(no_suppaftp_trace)
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
    let counters = CounterWriter::new(
        client.clone(),
        store.clone(),
        registry.clone(),
        vehicle_connect::status::DeliveringPolicy {
            failures: args.delivering_failures,
            max_wait: Duration::from_secs(args.delivering_max_wait_seconds),
        },
        usize::try_from(args.status_writes_per_second).unwrap_or(usize::MAX),
        metrics.clone(),
    );
    let ops = match &args.ops_webhook_url {
        Some(url) => {
            let ops = Arc::new(
                vehicle_connect::status::ops::OpsWebhook::start(
                    url,
                    args.ops_webhook_secret_file.as_deref(),
                )
                .context("--ops-webhook-url")?,
            );
            counters.set_ops(ops.clone());
            Some(ops)
        }
        None => None,
    };
    let sender = WebhookSender::new(
        guard.clone(),
        concat!("vehicle-connect/", env!("CARGO_PKG_VERSION")),
    )?;
    let uploader = Uploader::new(guard.clone(), args.max_image_bytes)?;
    let sessions = uploader.clone();
    let file_pools = uploader.clone();
    metrics.on_scrape(move |m| {
        let (ftp, sftp) = sessions.sessions_open();
        for (protocol, n) in [("ftp", ftp), ("sftp", sftp)] {
            m.file_sessions_open
                .get_or_create(&vehicle_connect::metrics::ProtocolLabel { protocol })
                .set(n);
        }
    });
    let api = ApiSender::new(
        guard.clone(),
        store.clone(),
        args.max_image_bytes,
        concat!("vehicle-connect/", env!("CARGO_PKG_VERSION")),
    )?;
    let dispatcher = Dispatcher::with_limits(
        store.clone(),
        registry.clone(),
        Senders {
            webhook: sender,
            files: uploader,
            api,
        },
        metrics.clone(),
        counters.clone(),
        Limits {
            max_pending: args.max_pending_deliveries,
            in_memory: args.max_loaded_deliveries.max(1),
            active_lanes: args.max_active_lanes.max(1),
            sweep_interval: Duration::from_secs(args.sweep_interval_seconds.max(1)),
            ..Limits::default()
        },
    );
    let cluster = match cluster_options(&args)? {
        Some(options) => Some(
            vehicle_connect::cluster::Cluster::start(
                &options,
                dispatcher.clone(),
                store.clone(),
                metrics.clone(),
            )
            .await
            .context("--store: joining the replicas on NATS JetStream")?,
        ),
        None => None,
    };
    if let Some(c) = &cluster {
        counters.set_shared(c.shared_counters(), c.status_writers());
        // An idle session holds a slot other replicas may wait for: kept briefly.
        file_pools.share_session_limits(c.session_slots(), SHARED_SESSION_IDLE);
    }
    let tokens = match &args.ingest_token_file {
        Some(f) => {
            TokenSet::watch_file(f.clone()).with_context(|| format!("reading {}", f.display()))?
        }
        None => {
            tracing::warn!("no --ingest-token-file: every POST /v1/events is refused with 401");
            TokenSet::default()
        }
    };
    let feed_tokens = match &args.feed_token_file {
        Some(f) => TokenSet::watch_file_as(f.clone(), TokenFile::Feed)
            .with_context(|| format!("reading {}", f.display()))?,
        None => {
            tracing::info!("no --feed-token-file: every GET /v1/events is refused with 401");
            TokenSet::default()
        }
    };
    let manage_tokens = match &args.manage_token_file {
        Some(f) => TokenSet::watch_file_as(f.clone(), TokenFile::Manage)
            .with_context(|| format!("reading {}", f.display()))?,
        None => {
            tracing::info!("no --manage-token-file: every management request is refused with 401");
            TokenSet::default()
        }
    };
    let manage_state = ManageState {
        tokens: manage_tokens,
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        registry: registry.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        self_service: manage::selfservice::SelfServiceSettings::for_selectors(
            non_empty(&args.watch_label_selector).as_deref(),
            non_empty(&args.secret_selector).as_deref(),
        ),
        log: cluster.as_ref().map(|c| c.log().clone()),
        replicas: cluster.as_ref().map(|c| c.replicas()),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ready = Arc::new(AtomicBool::new(false));
    let state = ApiState {
        tokens,
        sink: match &cluster {
            Some(c) => c.sink(),
            None => Arc::new(dispatcher.clone()),
        },
        metrics: metrics.clone(),
        ready: ready.clone(),
        max_body: args.max_body_bytes,
        ingest_limit: ingest::ConcurrencyLimit::new(args.max_concurrent_ingest.max(1)),
        store: store.clone(),
        feed: FeedState {
            tokens: feed_tokens,
            max_waiters: args.max_feed_waiters,
            stopping: stop_rx.clone(),
            log: cluster.as_ref().map(|c| c.log().clone()),
        },
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let mut api_stop = stop_rx.clone();
    let api = tokio::spawn(async move {
        axum::serve(
            listener,
            ingest::router(state).merge(manage::router(manage_state)),
        )
        .with_graceful_shutdown(async move {
            let _ = api_stop.changed().await;
        })
        .await
    });

    let secret_selector = non_empty(&args.secret_selector);
    if let Some(sel) = &secret_selector {
        controller::secrets::check_selector(&client, sel)
            .await
            .with_context(|| format!("--secret-selector {sel:?} is not a usable label selector"))?;
    }
    let watch_selector = non_empty(&args.watch_label_selector);
    if let Some(sel) = &watch_selector {
        controller::check_selector::<vehicle_connect::api::WebhookSubscription>(&client, sel)
            .await
            .with_context(|| {
                format!("--watch-label-selector {sel:?} is not a usable label selector")
            })?;
        tracing::info!(selector = %sel, "only resources matching the watch selector are served");
    }
    let settings = Settings {
        guard,
        probe_interval: Duration::from_secs(args.probe_interval_seconds.max(5)),
        secret_selector,
        watch_selector,
        replay: Some(controller::replay::ReplayHook(Arc::new(
            manage::replay::ReplayDeliveries {
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                log: cluster.as_ref().map(|c| c.log().clone()),
            },
        ))),
        ops,
        writers: cluster.as_ref().map(|c| c.status_writers()),
        ..Settings::default()
    };
    let on_delete: DeleteHook = Arc::new(ForgetDeliveries(dispatcher.clone()));
    let controllers = tokio::spawn(controller::run(
        client,
        registry.clone(),
        settings,
        Some(on_delete),
        metrics.clone(),
    ));

    // Resume what was pending before a restart; the reconcilers re-register targets meanwhile
    // (deliveries to a target not registered yet wait for it).
    let resumed = dispatcher.resume()?;
    tracing::info!(pending = resumed, "pending deliveries resumed");
    tokio::spawn(counters.clone().run());
    let gc_store = store.clone();
    let retention = Duration::from_secs(args.retention_hours.saturating_mul(3600));
    let gc_every = Duration::from_secs(args.gc_interval_seconds.max(1));
    let log_retention = Duration::from_secs(args.delivery_log_retention_hours.saturating_mul(3600));
    let log_max = args.delivery_log_max_entries;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(gc_every).await;
            match gc_store.gc(retention).await {
                Ok(n) if n > 0 => tracing::info!(forgotten = n, "old delivered events forgotten"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "store gc failed"),
            }
            match gc_store.gc_attempts(log_retention, log_max).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "old delivery log entries removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "delivery log gc failed"),
            }
        }
    });
    // Ready once every existing resource is registered for routing: an event accepted
    // earlier would miss targets that exist.
    let started = std::time::Instant::now();
    while !registry.is_synced() {
        if controllers.is_finished() {
            anyhow::bail!("the controllers stopped before the resources were listed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(targets = registry.len(), elapsed = ?started.elapsed(), "ready");
    ready.store(true, Ordering::Release);

    // The controllers end on SIGTERM/Ctrl-C (kube-runtime handles the signal); then the API
    // drains and the last counters are written.
    let _ = controllers.await;
    let _ = stop_tx.send(true);
    let _ = api.await;
    if let Some(c) = &cluster {
        c.leave().await;
    }
    counters.flush().await;
    tracing::info!("vehicle-connect stopped");
    Ok(())
}

/// The JetStream settings `--store` asks for; `None` for the embedded store.
fn cluster_options(
    args: &RunArgs,
) -> anyhow::Result<Option<vehicle_connect::cluster::ClusterOptions>> {
    use vehicle_connect::store::jetstream::JetStreamOptions;
    let store = args.store.trim();
    if store.is_empty() || store == "embedded" {
        return Ok(None);
    }
    for url in store.split(',') {
        let scheme = url.trim().split("://").next().unwrap_or_default();
        if !matches!(scheme, "nats" | "tls") || !url.contains("://") {
            anyhow::bail!(
                "--store {store:?}: expected `embedded` or NATS URLs such as nats://nats:4222 (comma separated, nats:// or tls://)"
            );
        }
    }
    let replica_id = match args
        .replica_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
    {
        Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => anyhow::bail!(
            "--store {store:?} needs --replica-id (or $HOSTNAME): each replica's own id"
        ),
    };
    let retention = Duration::from_secs(args.retention_hours.saturating_mul(3600));
    let defaults = JetStreamOptions::default();
    Ok(Some(vehicle_connect::cluster::ClusterOptions {
        urls: store.to_owned(),
        jetstream: JetStreamOptions {
            credentials_file: args.nats_credentials_file.clone(),
            tls_ca_file: args.nats_tls_ca_file.clone(),
            tls_cert_file: args.nats_tls_cert_file.clone(),
            tls_key_file: args.nats_tls_key_file.clone(),
            replicas: usize::from(args.nats_replicas),
            max_age: retention,
            partitions: args.partitions,
            // Never longer than what the stream keeps (JetStream refuses that); zero keeps
            // events forever.
            duplicate_window: if retention.is_zero() {
                defaults.duplicate_window
            } else {
                defaults.duplicate_window.min(retention)
            },
            ..defaults
        },
        replica_id,
        lease: Duration::from_secs(args.partition_lease_seconds),
        adopted_dir: args.data_dir.join("adopted"),
        log_retention: Duration::from_secs(args.delivery_log_retention_hours.saturating_mul(3600)),
    }))
}

fn parse_remote(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not name=value")),
    }
}

/// `vehicle-connect render`: the listing on stdout; a mapping that does not compile or an
/// event it cannot render is an error (exit status 1) after what could be listed.
fn render(
    connection: &std::path::Path,
    event: &std::path::Path,
    remote: std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    use serde::Deserialize;
    use vehicle_connect::api::ApiConnection;
    use vehicle_connect::mapping::{PreviewError, render_preview};
    let text = std::fs::read_to_string(connection)
        .with_context(|| format!("reading {}", connection.display()))?;
    // The first ApiConnection of the file: examples keep their Secrets beside it.
    let mut found = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("{} is not YAML", connection.display()))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("ApiConnection") {
            found = Some(value);
            break;
        }
    }
    let Some(value) = found else {
        anyhow::bail!("{} holds no ApiConnection", connection.display());
    };
    let conn: ApiConnection = serde_yaml::from_value(value)
        .with_context(|| format!("the ApiConnection in {}", connection.display()))?;
    let event_text =
        std::fs::read_to_string(event).with_context(|| format!("reading {}", event.display()))?;
    let event: serde_json::Value = serde_json::from_str(&event_text)
        .with_context(|| format!("{} is not JSON", event.display()))?;
    let name = conn.metadata.name.as_deref().unwrap_or("connection");
    let namespace = conn.metadata.namespace.as_deref().unwrap_or("default");
    match render_preview(&conn.spec, name, namespace, &event, &remote) {
        Ok(listing) => {
            print!("{listing}");
            Ok(())
        }
        Err(PreviewError::Render { listing, error }) => {
            print!("{listing}");
            anyhow::bail!("{error}")
        }
        Err(e) => anyhow::bail!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::prelude::*;

    const PASSWORD: &str = "never-logged-pw";

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_logs_have_the_fields_at_the_top_level() {
        use tracing_subscriber::prelude::*;
        let out = Captured::default();
        let writer = out.clone();
        let subscriber =
            tracing_subscriber::registry().with(super::json_layer(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile", attempt = 3);
            let _in = span.enter();
            tracing::info!(
                kind = "webhook",
                namespace = "team-a",
                name = "orders",
                "status changed"
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["namespace"], "team-a", "{line}");
        assert_eq!(line["name"], "orders", "{line}");
        assert_eq!(line["kind"], "webhook", "{line}");
        assert_eq!(line["message"], "status changed", "{line}");
        assert!(line.get("fields").is_none(), "fields nested: {line}");
        assert_eq!(line["span"]["attempt"], 3, "{line}");
    }

    #[test]
    fn an_unknown_log_format_is_refused_at_start() {
        use clap::Parser;
        let err =
            match super::Cli::try_parse_from(["vehicle-connect", "run", "--log-format", "yaml"]) {
                Ok(_) => panic!("--log-format yaml was accepted"),
                Err(e) => e.to_string(),
            };
        assert!(
            err.contains("invalid value 'yaml'") && err.contains("json"),
            "{err}"
        );
        let ok = super::Cli::try_parse_from(["vehicle-connect", "run", "--log-format", "json"]);
        assert!(ok.is_ok(), "--log-format json refused");
    }

    /// An FTP server on 127.0.0.1 that logs anyone in, for one session.
    fn one_session_server() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let mut write = tcp.try_clone().unwrap();
            write.write_all(b"220 ready\r\n").unwrap();
            for line in BufReader::new(tcp).lines() {
                let line = line.unwrap();
                let reply: &[u8] = match line.split(' ').next().unwrap_or_default() {
                    "USER" => b"331 password please\r\n",
                    "PASS" => b"230 logged in\r\n",
                    "QUIT" => b"221 bye\r\n",
                    _ => b"200 OK\r\n",
                };
                write.write_all(reply).unwrap();
            }
        });
        port
    }

    /// What a real suppaftp login logs through a subscriber filtered by `filter`.
    fn login_log<F>(filter: F) -> String
    where
        F: tracing_subscriber::layer::Filter<tracing_subscriber::Registry> + Send + Sync + 'static,
    {
        // suppaftp logs through `log`: bridge it as `init_tracing` does (once per process; the
        // bridge hands records to each thread's current subscriber).
        let _ = tracing_subscriber::registry().try_init();
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .with_filter(filter),
        );
        let port = one_session_server();
        tracing::subscriber::with_default(subscriber, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let mut ftp = vehicle_connect::delivery::files::ftp::FtpStream::connect((
                        "127.0.0.1",
                        port,
                    ))
                    .await
                    .unwrap();
                    ftp.login("bob", PASSWORD).await.unwrap();
                    ftp.quit().await.unwrap();
                })
        });
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_log_filter_keeps_rust_logs_level_hint() {
        let hint = |rust_log| {
            <_ as tracing_subscriber::layer::Filter<tracing_subscriber::Registry>>::max_level_hint(
                &super::log_filter(Some(rust_log)),
            )
        };
        assert_eq!(
            hint("info"),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
        assert_eq!(
            hint("trace"),
            Some(tracing::level_filters::LevelFilter::TRACE)
        );
    }

    #[test]
    fn the_ftp_password_is_never_logged_whatever_rust_log_says() {
        // Control: RUST_LOG alone lets suppaftp's trace output (and the password) through.
        let leaked = login_log(tracing_subscriber::EnvFilter::new("trace"));
        assert!(
            leaked.contains(PASSWORD),
            "the test no longer sees suppaftp's PASS line:\n{leaked}"
        );

        for rust_log in [
            "trace",
            "suppaftp=trace",
            "suppaftp::async_ftp::tokio_ftp::control=trace",
            "off,suppaftp[{}]=trace",
        ] {
            let log = login_log(super::log_filter(Some(rust_log)));
            assert!(
                !log.contains(PASSWORD),
                "RUST_LOG={rust_log} logged the password:\n{log}"
            );
            if ["trace", "suppaftp=trace"].contains(&rust_log) {
                // suppaftp's debug lines still come through: the filter only drops trace.
                assert!(
                    log.contains("Signin in with user 'bob'"),
                    "RUST_LOG={rust_log}:\n{log}"
                );
            }
        }
    }
}
