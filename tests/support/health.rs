//! What kstatus, Argo CD and Flux say about an object: `vc-health` (tests/peers/health, built
//! once by `scripts/build-health-checker.sh`) run with the health definitions that users get,
//! `docs/health/argocd.lua` and `docs/health/flux-health-checks.yaml`.
//!
//! `verdicts(&serde_json::to_value(&live_object)?)` gives all three, e.g. `("Current",
//! "Healthy", "Current")` for a ready object.
//!
//! Standalone (`#[path]`-includable): uses only crates of Cargo.toml.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

/// The three verdicts on one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    /// kstatus `status.Compute`: Current, InProgress, Failed, Terminating, ...
    pub kstatus: String,
    /// Argo CD health: Healthy, Progressing, Degraded, Suspended, Unknown, ...
    pub argocd: String,
    /// Flux `healthCheckExprs`: Current, InProgress, Failed or Unknown.
    pub flux: String,
    pub messages: Messages,
}

/// The message each tool shows beside its verdict (may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Messages {
    pub kstatus: String,
    pub argocd: String,
    /// Flux keeps only a failed evaluation's error.
    pub flux: String,
}

/// What `vc-health` prints.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Printed {
    kstatus: String,
    kstatus_message: String,
    argocd: String,
    argocd_message: String,
    flux: String,
    flux_message: String,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Argo CD health script users install.
pub fn argocd_lua_path() -> PathBuf {
    root().join("docs/health/argocd.lua")
}

/// The Flux Kustomization snippet whose `healthCheckExprs` users copy.
pub fn flux_exprs_path() -> PathBuf {
    root().join("docs/health/flux-health-checks.yaml")
}

/// `VC_HEALTH_CHECKER` if set, else what the build script prints (building on first use).
/// Panics with the reason when there is none (no Go, no module proxy): a health test that
/// cannot run must fail, never pass.
pub fn checker() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate) {
        Ok(bin) => bin,
        Err(e) => panic!("{e}"),
    }
}

fn locate() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("VC_HEALTH_CHECKER") {
        return Ok(PathBuf::from(bin));
    }
    let script = root().join("scripts/build-health-checker.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "scripts/build-health-checker.sh failed ({}), so kstatus, Argo CD and Flux cannot be \
             asked about any object (it needs Go 1.24+ and the Go module proxy): {}",
            out.status,
            stderr.trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last().map(str::trim) {
        Some(bin) if Path::new(bin).is_file() => Ok(PathBuf::from(bin)),
        _ => Err(format!(
            "scripts/build-health-checker.sh printed no binary path: {stdout} {stderr}"
        )),
    }
}

/// Asks kstatus, Argo CD (docs/health/argocd.lua) and Flux (the `healthCheckExprs` of
/// docs/health/flux-health-checks.yaml) about `obj`, a whole object as the API server returns
/// it. Panics if the checker cannot run or refuses the inputs.
pub fn verdicts(obj: &Value) -> Verdicts {
    let mut child = Command::new(checker())
        .arg("--argocd-lua")
        .arg(argocd_lua_path())
        .arg("--flux-exprs")
        .arg(flux_exprs_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", checker().display()));
    let input = serde_json::to_vec(obj).expect("serialize the object");
    child
        .stdin
        .take()
        .expect("vc-health stdin")
        .write_all(&input)
        .expect("write the object to vc-health");
    let out = child.wait_with_output().expect("wait for vc-health");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vc-health failed ({}): {}\nobject: {obj:#}",
        out.status,
        stderr.trim()
    );
    let p: Printed = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("vc-health printed {stdout:?}: {e}"));
    Verdicts {
        kstatus: p.kstatus,
        argocd: p.argocd,
        flux: p.flux,
        messages: Messages {
            kstatus: p.kstatus_message,
            argocd: p.argocd_message,
            flux: p.flux_message,
        },
    }
}
