//! First proofs through `kube::Client` against the real control plane, from this crate's
//! tests (the harness's own tests are vc-envtest's).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use vc_envtest::ControlPlane;

#[tokio::test]
async fn server_side_apply_round_trip() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("basics").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &ns.name);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "ssa" },
        "data": { "a": "1" }
    });
    let pp = PatchParams::apply("vehicle-connect-test");
    cms.patch("ssa", &pp, &Patch::Apply(&cm)).await.unwrap();
    let got = cms.get("ssa").await.unwrap();
    assert_eq!(got.data.unwrap()["a"], "1");
    let managers: Vec<_> = got
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.contains(&"vehicle-connect-test".to_string()),
        "{managers:?}"
    );
}

#[tokio::test]
async fn server_reports_the_pinned_version() {
    let cp = ControlPlane::shared();
    let info = cp
        .client()
        .await
        .unwrap()
        .apiserver_version()
        .await
        .unwrap();
    assert_eq!(info.major, "1");
    assert!(
        info.git_version.starts_with("v1.35."),
        "{}",
        info.git_version
    );
}
