//! `kubectl vc` as an operator uses it: through kubectl's plugin lookup (the binary on the
//! PATH as `kubectl-vc`), against a real operator process, control plane and receiver. The
//! questions of the issue — did event X reach target Y, when, what did they answer — then
//! redo it: retry, replay, test send; and a client's token never sees another client's.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::TOKEN;
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::Scope;

const PLATFORM: &str = "kp-platform-token-0123456789";
const DEALER: &str = "kp-dealer-token-0123456789";
const OTHER: &str = "kp-other-token-0123456789";

/// `kubectl vc ARGS` with the plugin's directory first on the PATH: kubectl itself finds it.
fn kubectl_vc(server: &str, token: &str, args: &[&str]) -> Output {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-vc"));
    let dir = bin.parent().expect("the plugin's directory");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("kubectl")
        .arg("vc")
        .args(args)
        .env("PATH", path)
        .env("VC_SERVER", server)
        .env("VC_TOKEN", token)
        // No kubeconfig of the machine's: the namespace comes from -n.
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run kubectl (on the PATH?)");
    eprintln!(
        "$ kubectl vc {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "kubectl vc failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_str(&stdout(o)).expect("-o json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_vc_answers_did_it_arrive_and_redoes_it() {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new("kubectl-vc");
    let ns = scope.namespace(cp, "kp", "kp-dealer").await;
    let client = cp.client().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("manage-tokens");
    std::fs::write(
        &tokens,
        format!("{PLATFORM} *\n{DEALER} kp-dealer\n{OTHER} kp-other\n"),
    )
    .unwrap();
    let op = crate::support::process::start_with(
        cp,
        dir.path().join("data"),
        &scope,
        &["--manage-token-file", tokens.to_str().unwrap()],
    )
    .await;
    let server = op.url("");
    let receiver = Receiver::start(None).await;
    // The first attempt fails, the retry gets through.
    receiver.script("crm", vec![Reply::Status(500), Reply::Status(200)]);
    apply_value(&client, &ns.name, json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
        "metadata": { "name": "crm" },
        "spec": { "url": receiver.url("crm"), "clientId": "kp-dealer",
                  "events": ["vehicle.processed", "vehicle.created"],
                  "retry": { "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 } }
    }))
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "crm", "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;
    let event = json!({ "id": "evt-kp-1", "type": "vehicle.processed",
        "timestamp": "2026-12-03T10:15:30Z", "clientId": "kp-dealer",
        "data": { "vehicle": { "id": "veh-kp-1", "vin": "WVWZZZ1JZXW000001" } } });
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    receiver.wait_for("crm", 2).await;

    // Did it arrive, when, what did they answer: both attempts, newest first.
    let target = "whs/crm".to_string();
    let log = loop_until(|| {
        let v = json_out(&kubectl_vc(
            &server,
            DEALER,
            &["deliveries", &target, "-n", &ns.name, "-o", "json"],
        ));
        (v.as_array().map_or(0, Vec::len) >= 2).then_some(v)
    })
    .await;
    let log = log.as_array().unwrap();
    assert_eq!(log[0]["result"], "delivered", "{log:?}");
    assert_eq!(log[0]["httpStatus"], 200);
    assert_eq!(log[0]["attempt"], 2);
    assert_eq!(log[1]["result"], "retry");
    assert_eq!(log[1]["httpStatus"], 500);
    assert_eq!(log[0]["event"]["id"], "evt-kp-1");
    assert_eq!(log[0]["event"]["vehicle"], "veh-kp-1");
    let table = stdout(&kubectl_vc(
        &server,
        DEALER,
        &["deliveries", &target, "-n", &ns.name],
    ));
    let header = table.lines().next().unwrap();
    for col in ["ID", "AT", "TARGET", "EVENT", "RESULT", "ANSWER"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(
        table.contains("evt-kp-1") && table.contains("delivered") && table.contains("retry"),
        "{table}"
    );
    let failed = json_out(&kubectl_vc(
        &server,
        DEALER,
        &[
            "deliveries",
            &target,
            "-n",
            &ns.name,
            "--status",
            "failed",
            "-o",
            "json",
        ],
    ));
    assert_eq!(failed.as_array().unwrap().len(), 1, "{failed}");
    let event_view = stdout(&kubectl_vc(&server, DEALER, &["event", "evt-kp-1"]));
    assert!(
        event_view.contains(&format!("webhooksubscription/{}/crm", ns.name)),
        "{event_view}"
    );

    // Another client's token sees nothing of it, and cannot redo it.
    let other = kubectl_vc(
        &server,
        OTHER,
        &["deliveries", &target, "-n", &ns.name, "-o", "json"],
    );
    let seen = String::from_utf8_lossy(&other.stdout);
    assert!(
        !seen.contains("evt-kp-1"),
        "another client saw the entry: {seen}"
    );
    let id = log[0]["id"].as_str().unwrap().to_string();
    let refused = kubectl_vc(&server, OTHER, &["retry", &id]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("404"));
    let wrong = kubectl_vc(&server, "not-a-token-0123456789", &["deliveries"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    assert_eq!(
        receiver.received_on("crm").len(),
        2,
        "nothing was sent for the refused retry"
    );

    // Redo it: a retry by the log entry's id, the same event again.
    let retried = stdout(&kubectl_vc(&server, PLATFORM, &["retry", &id]));
    assert!(retried.contains("queued again"), "{retried}");
    let got = receiver.wait_for("crm", 3).await;
    assert_eq!(got[2].body["id"], "evt-kp-1");
    assert_eq!(got[2].raw, got[1].raw, "the same event, byte for byte");

    // A replay of the last hour: the one event again.
    let replayed = stdout(&kubectl_vc(
        &server,
        DEALER,
        &["replay", &target, "-n", &ns.name, "--since", "1h"],
    ));
    assert!(replayed.contains("replay queued"), "{replayed}");
    let got = receiver.wait_for("crm", 4).await;
    assert_eq!(got[3].body["id"], "evt-kp-1");

    // A test send: the receiver's answer comes back, no log entry of a real delivery.
    let test = stdout(&kubectl_vc(
        &server,
        DEALER,
        &["test", &target, "-n", &ns.name, "--type", "vehicle.created"],
    ));
    assert!(
        test.contains("Result:   delivered") && test.contains("Answer:   200"),
        "{test}"
    );
    let got = receiver.wait_for("crm", 5).await;
    assert_eq!(got[4].body["type"], "vehicle.created");
    assert_eq!(got[4].body["clientId"], "kp-dealer");
}

/// Calls `f` until it gives `Some`, for up to 30 s.
async fn loop_until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
