//! The operator as a real process for these tests: `vc_envtest::operator` with this crate's
//! binary, serving one [`Scope`].

use std::path::PathBuf;

use vc_envtest::ControlPlane;

use super::scope::Scope;
pub use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};

/// The binary under test: this crate's, or `VC_TEST_OPERATOR_BIN` (another build, e.g. of an
/// older commit, to show a test fails without its fix).
pub fn binary() -> PathBuf {
    std::env::var_os("VC_TEST_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vehicle-connect")))
}

/// Starts the operator serving `scope` and waits for `/readyz` (CRDs must be installed).
pub async fn start(cp: &ControlPlane, data_dir: PathBuf, scope: &Scope) -> OperatorProcess {
    start_with(cp, data_dir, scope, &[]).await
}

/// Starts the operator serving `scope` with extra `run` arguments (kept across restarts).
pub async fn start_with(
    cp: &ControlPlane,
    data_dir: PathBuf,
    scope: &Scope,
    args: &[&str],
) -> OperatorProcess {
    start_launch(cp, data_dir, scope, Launch::new(binary()).args(args)).await
}

/// Starts the operator as `launch` says (its allow-list, arguments, log level), serving
/// `scope`.
pub async fn start_launch(
    cp: &ControlPlane,
    data_dir: PathBuf,
    scope: &Scope,
    launch: Launch,
) -> OperatorProcess {
    let mut launch = launch.args(&["--watch-label-selector", &scope.selector()]);
    // A test that sets its own store keeps it.
    let own_store = launch.args.iter().any(|a| a == "--store");
    if !own_store && let Some(args) = store_args(&data_dir).await {
        launch = launch.args(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    OperatorProcess::start(cp, data_dir, launch)
        .await
        .expect("operator started")
}

/// One of several replicas sharing the JetStream log at `urls` (one NATS node: one stream
/// replica), as `id`, with a 2 s lease so a dead one's partitions move soon.
pub fn replica_launch(urls: &str, id: &str) -> Launch {
    Launch::new(binary()).args(&[
        "--store",
        urls,
        "--nats-replicas",
        "1",
        "--replica-id",
        id,
        "--partition-lease-seconds",
        "2",
    ])
}

/// Waits (30 s at most) until every replica in `ops` logged that it owns a partition, then
/// a round more, so the shares have settled and no partition moves during a test.
pub async fn wait_partitions_owned(ops: &[OperatorProcess]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ops
        .iter()
        .all(|op| op.log_text().contains("partition owned"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "every replica should own partitions within 30 s:\n{}",
            ops.iter()
                .map(|op| op.log_text())
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
}

/// The text of `op`'s `/metrics`.
pub async fn metrics(op: &OperatorProcess) -> String {
    reqwest::get(op.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body")
}

/// The value of one series of `op`'s metrics, named with its labels as exported (e.g.
/// `family_total{part="delivery"}`); `None` while it is not exported.
pub async fn metric_value(op: &OperatorProcess, series: &str) -> Option<f64> {
    let text = metrics(op).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// The backend the end-to-end tests run on: `VC_TEST_STORE=nats` runs each operator process on
/// a JetStream server of its own (one node, so one replica of the stream), started here and
/// kept for the rest of the test process; unset or `embedded`, the embedded store. Every
/// operator gets its own server: two operators on one stream would share its partitions, and
/// each would hold the other's events for targets outside its scope.
async fn store_args(data_dir: &std::path::Path) -> Option<Vec<String>> {
    // By data dir: an operator started again on the same data dir finds its stream again.
    static SERVERS: std::sync::Mutex<Vec<(PathBuf, vc_envtest::nats::NatsCluster)>> =
        std::sync::Mutex::new(Vec::new());
    match std::env::var("VC_TEST_STORE").as_deref() {
        Err(_) | Ok("") | Ok("embedded") => return None,
        Ok("nats") => {}
        Ok(other) => panic!("VC_TEST_STORE={other:?}: expected `embedded` or `nats`"),
    }
    let known = SERVERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(dir, _)| dir == data_dir)
        .map(|(_, nats)| nats.urls());
    let url = match known {
        Some(url) => url,
        None => {
            let nats = vc_envtest::nats::NatsCluster::single()
                .await
                .expect("VC_TEST_STORE=nats: start nats-server (scripts/build-nats.sh builds it)");
            let url = nats.urls();
            SERVERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((data_dir.to_owned(), nats));
            url
        }
    };
    let id: String = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(vec![
        "--store".into(),
        url,
        "--nats-replicas".into(),
        "1".into(),
        "--replica-id".into(),
        format!("op-{id}"),
        // One replica: a restarted process takes its partitions back within a second.
        "--partition-lease-seconds".into(),
        "2".into(),
    ])
}
