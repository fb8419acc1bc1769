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
    let launch = launch.args(&["--watch-label-selector", &scope.selector()]);
    OperatorProcess::start(cp, data_dir, launch)
        .await
        .expect("operator started")
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
