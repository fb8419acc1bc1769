//! The Helm chart: `helm lint`, `helm template` for several value sets, the CRD copies, and
//! a server-side dry run of the rendered manifests plus the operator running under the
//! chart's RBAC, against the tests' control plane (scripts/check-chart.sh).

use vc_envtest::ControlPlane;

#[test]
fn chart_lints_renders_and_applies_to_a_real_api_server() {
    let cp = ControlPlane::shared();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/check-chart.sh"))
        .current_dir(root)
        .env("VC_KUBECONFIG", &cp.kubeconfig)
        .env("VC_OPERATOR_BIN", env!("CARGO_BIN_EXE_vehicle-connect"))
        .output()
        .expect("run scripts/check-chart.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/check-chart.sh failed:\n{text}"
    );
    assert!(
        text.contains("dry-run"),
        "the server-side dry run did not run:\n{text}"
    );
}

/// charts/vehicle-connect/README.md's values table is what scripts/chart-readme.py makes of
/// values.yaml (every value documented, no stale default); needs neither helm nor a cluster.
#[test]
fn chart_readme_documents_the_values() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(root.join("scripts/chart-readme.py"))
        .arg("--check")
        .output()
        .expect("run python3 scripts/chart-readme.py --check");
    assert!(
        out.status.success(),
        "charts/vehicle-connect/README.md is stale; run scripts/chart-readme.py:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
