//! The harness itself, against the real control plane.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use vc_envtest::{ControlPlane, pid_alive};

#[tokio::test]
async fn namespace_and_configmap_seen_by_a_watcher() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("harness").await.unwrap();
    let client = cp.client().await.unwrap();

    // The namespace is real.
    let nss: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        nss.get(&ns.name).await.unwrap().metadata.name.as_deref(),
        Some(&*ns.name)
    );

    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let mut seen = watcher(cms.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "hello" },
        "data": { "greeting": "hola" }
    }))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    let found = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(cm) = seen.try_next().await.unwrap() {
            if cm.metadata.name.as_deref() == Some("hello") {
                return cm;
            }
        }
        panic!("watch stream ended");
    })
    .await
    .expect("watcher did not see the ConfigMap within 15s");
    assert_eq!(found.data.unwrap()["greeting"], "hola");
}

#[tokio::test]
async fn a_panicking_test_marks_the_run_and_leaves_the_cluster_usable() {
    let cp = ControlPlane::shared();
    let before = cp.failures();
    let joined = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let _ns = ControlPlane::shared().namespace("doomed").await.unwrap();
            panic!("this test panics on purpose");
        })
    })
    .join();
    assert!(joined.is_err(), "the inner test should have panicked");
    assert!(cp.failures() > before, "the panic was not recorded");
    assert!(cp.dir.join("FAILED").exists(), "failed run not marked");
    cp.forgive_failure();

    // The control plane is still there and serving.
    assert!(pid_alive(cp.apiserver_pid) && pid_alive(cp.etcd_pid));
    let ns = cp.namespace("after-panic").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(cp.client().await.unwrap(), &ns.name);
    assert!(
        cms.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn control_plane_dies_with_an_aborted_test_process() {
    let runs = std::env::temp_dir().join(format!("vc-envtest-abort-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_vc-envtest"))
        .arg("hold-and-abort")
        .env("VC_ENVTEST_DIR", &runs)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child was meant to abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pids "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no pids: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| pid_alive(*p)) {
        assert!(
            Instant::now() < deadline,
            "etcd/kube-apiserver {pids:?} outlived the aborted process"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(runs);
}

#[test]
fn startup_time_is_reported() {
    let cp = ControlPlane::shared();
    assert!(cp.startup > Duration::ZERO);
    eprintln!("control plane ready in {:.2}s", cp.startup.as_secs_f64());
}
