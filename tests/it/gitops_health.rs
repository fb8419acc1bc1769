//! Health that GitOps tools read (docs/health.md): the kstatus conditions (`Reconciling`
//! while the operator still works or retries on its own, `Stalled` when only the user can
//! fix it) and `Delivering`, with one Event per transition. The operator runs as a real
//! process against the real control plane; receivers and FTP peers are real servers.

use std::time::Duration;

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::Scope;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use vc_envtest::ControlPlane;
use vehicle_connect::api::{FtpConnection, WebhookSubscription};

use crate::trust_delivery::{WHSEC, subscription};

async fn setup(
    prefix: &str,
    client: &str,
    args: &[&str],
) -> (OperatorProcess, String, kube::Client, Receiver) {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new(prefix);
    let ns = scope.namespace(cp, prefix, client).await.name.clone();
    let kube = cp.client().await.unwrap();
    apply_value(
        &kube,
        &ns,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" }, "stringData": { "secret": WHSEC } }),
    )
    .await;
    let dir = cp.dir.join(format!("health-{scope}"));
    let op = crate::support::process::start_with(cp, dir, &scope, args).await;
    (op, ns, kube, Receiver::start(Some(WHSEC)).await)
}

async fn post(op: &OperatorProcess, client: &str, id: &str) {
    let body = json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-1",
        "data": { "vehicle": { "id": "veh-1", "vin": "WVWZZZ1JZXW000001" } }
    });
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
}

/// (status, reason) of condition `t`, `None` when absent.
fn cond(
    conds: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
    t: &str,
) -> Option<(String, String)> {
    conds.and_then(|c| condition(c, t)).map(|(s, r, _)| (s, r))
}

fn pair(s: &str, r: &str) -> Option<(String, String)> {
    Some((s.to_string(), r.to_string()))
}

/// What kstatus, Argo CD (docs/health/argocd.lua) and Flux (docs/health/flux-health-checks.yaml)
/// say about the object as the API server returned it.
fn judged<K: serde::Serialize>(obj: &K) -> [String; 3] {
    let v = crate::support::health::verdicts(&serde_json::to_value(obj).unwrap());
    [v.kstatus, v.argocd, v.flux]
}

fn says(k: &str, a: &str, f: &str) -> [String; 3] {
    [k.to_string(), a.to_string(), f.to_string()]
}

/// Events of `reason` on object `name`.
async fn events(kube: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(kube.clone(), ns);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(name) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

/// Failures in a row turn `Delivering` False (one Warning Event, however many failures
/// follow); a success turns it True again (one Normal Event). `Ready` stays True throughout:
/// the configuration is fine, the receiver is not.
#[tokio::test]
async fn delivering_follows_the_receiver_with_one_event_per_transition() {
    let client = "dealer-delivering";
    let (op, ns, kube, receiver) =
        setup("delivering", client, &["--delivering-failures", "3"]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    let mut replies = vec![Reply::Status(500); 8];
    replies.push(Reply::Status(200));
    receiver.script("flaky", replies);
    apply_value(
        &kube,
        &ns,
        subscription("flaky", client, &receiver.url("flaky"), json!({})),
    )
    .await;
    wait_for(&api, "flaky", "Ready", |w| {
        cond(w.status.as_ref().map(|s| &s.conditions), "Ready") == pair("True", "Ready")
    })
    .await;
    post(&op, client, "evt-d-1").await;
    let w = wait_for(&api, "flaky", "Delivering=False", |w| {
        cond(w.status.as_ref().map(|s| &s.conditions), "Delivering")
            == pair("False", "DeliveryFailing")
    })
    .await;
    // Applied and configured (kstatus, Flux), but Argo CD shows the receiver's trouble.
    assert_eq!(judged(&w), says("Current", "Degraded", "Current"));
    let st = w.status.unwrap();
    assert_eq!(cond(Some(&st.conditions), "Ready"), pair("True", "Ready"));
    let (_, _, message) = condition(&st.conditions, "Delivering").unwrap();
    assert!(
        message.contains("HTTP 500") || message.contains("500"),
        "{message}"
    );
    // More failures: no more Events.
    receiver.wait_for("flaky", 7).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        events(&kube, &ns, "flaky", "DeliveryFailing").await.len(),
        1
    );

    // The 9th attempt succeeds.
    let w = wait_for(&api, "flaky", "Delivering=True", |w| {
        cond(w.status.as_ref().map(|s| &s.conditions), "Delivering") == pair("True", "Delivered")
    })
    .await;
    assert_eq!(judged(&w), says("Current", "Healthy", "Current"));
    assert_eq!(w.status.unwrap().delivered, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let back = events(&kube, &ns, "flaky", "Delivered").await;
        if let Some(e) = back.first() {
            assert_eq!(e.type_.as_deref(), Some("Normal"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery Event");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        events(&kube, &ns, "flaky", "DeliveryFailing").await.len(),
        1
    );
}

/// A backlog that waits longer than the threshold is `DeliveryDelayed`, before any number of
/// failures says so; a suspended one is not (it waits because the user asked).
#[tokio::test]
async fn a_backlog_waiting_too_long_is_delayed_unless_suspended() {
    let client = "dealer-delayed";
    let (op, ns, kube, receiver) = setup(
        "delayed",
        client,
        &[
            "--delivering-failures",
            "50",
            "--delivering-max-wait-seconds",
            "3",
        ],
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    receiver.script("slow", vec![Reply::Status(503)]);
    let backoff = json!({ "retry": { "maxAttempts": 5, "initialBackoffSeconds": 60, "maxBackoffSeconds": 60 } });
    apply_value(
        &kube,
        &ns,
        subscription("slow", client, &receiver.url("slow"), backoff.clone()),
    )
    .await;
    let mut held = backoff;
    held["suspend"] = json!(true);
    apply_value(
        &kube,
        &ns,
        subscription("held", client, &receiver.url("held"), held),
    )
    .await;
    for name in ["slow", "held"] {
        wait_for(&api, name, "reconciled", |w| {
            cond(w.status.as_ref().map(|s| &s.conditions), "Ready").is_some()
        })
        .await;
    }
    post(&op, client, "evt-slow-1").await;
    wait_for(&api, "slow", "DeliveryDelayed", |w| {
        cond(w.status.as_ref().map(|s| &s.conditions), "Delivering")
            == pair("False", "DeliveryDelayed")
    })
    .await;
    let w = api.get("held").await.unwrap();
    let st = w.status.unwrap();
    assert_eq!(st.pending, 1, "the suspended one keeps the event");
    assert_ne!(
        cond(Some(&st.conditions), "Delivering").map(|c| c.1),
        Some("DeliveryDelayed".to_string()),
        "suspended means waiting on purpose"
    );
    assert_eq!(
        cond(Some(&st.conditions), "Ready"),
        pair("True", "Suspended")
    );
    assert_eq!(cond(Some(&st.conditions), "Stalled"), None);
    assert_eq!(cond(Some(&st.conditions), "Reconciling"), None);
}

/// kstatus conditions: `Stalled` for what only the user can fix (a missing Secret, a wrong
/// password), `Reconciling` for what the operator retries itself (a server that refuses
/// connections), neither once Ready; `observedGeneration` follows the spec.
#[tokio::test]
async fn stalled_and_reconciling_say_who_has_to_act() {
    let client = "dealer-kstatus";
    let (_op, ns, kube, _receiver) = setup("kstatus", client, &[]).await;
    let hooks: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    let mut v = subscription("nosecret", client, "http://127.0.0.1:9/h", json!({}));
    v["spec"]["signing"]["secretRef"]["name"] = json!("later");
    apply_value(&kube, &ns, v).await;
    let w = wait_for(&hooks, "nosecret", "Stalled", |w| {
        cond(w.status.as_ref().map(|s| &s.conditions), "Stalled") == pair("True", "SecretNotFound")
    })
    .await;
    assert_eq!(judged(&w), says("Failed", "Degraded", "Failed"));
    let st = w.status.unwrap();
    assert_eq!(cond(Some(&st.conditions), "Reconciling"), None);
    assert_eq!(st.observed_generation, w.metadata.generation);
    apply_value(
        &kube,
        &ns,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "later" }, "stringData": { "secret": WHSEC } }),
    )
    .await;
    let w = wait_for(&hooks, "nosecret", "Ready, Stalled gone", |w| {
        let c = w.status.as_ref().map(|s| &s.conditions);
        cond(c, "Ready") == pair("True", "Ready") && cond(c, "Stalled").is_none()
    })
    .await;
    assert_eq!(judged(&w), says("Current", "Healthy", "Current"));

    // An FTP server that is not there: the operator keeps probing.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    apply_value(
        &kube,
        &ns,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ftp" }, "stringData": { "username": "u", "password": "p" } }),
    )
    .await;
    apply_value(
        &kube,
        &ns,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                "metadata": { "name": "down" },
                "spec": { "host": "127.0.0.1", "port": port, "clientId": client,
                          "credentialsSecretRef": { "name": "ftp" } } }),
    )
    .await;
    let conns: Api<FtpConnection> = Api::namespaced(kube.clone(), &ns);
    let c = wait_for(&conns, "down", "Reconciling", |c| {
        cond(c.status.as_ref().map(|s| &s.conditions), "Reconciling")
            .is_some_and(|(s, r)| s == "True" && r == "ConnectionRefused")
    })
    .await;
    assert_eq!(judged(&c), says("InProgress", "Progressing", "InProgress"));
    let st = c.status.unwrap();
    assert_eq!(cond(Some(&st.conditions), "Stalled"), None);
    assert_eq!(
        cond(Some(&st.conditions), "Ready"),
        pair("False", "ConnectionRefused")
    );

    // A spec change: the status catches up with the generation.
    conns
        .patch(
            "down",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "suspend": true } })),
        )
        .await
        .unwrap();
    let c = wait_for(&conns, "down", "Suspended at generation 2", |c| {
        let s = c.status.as_ref();
        s.and_then(|s| s.observed_generation) == Some(2)
            && cond(s.map(|s| &s.conditions), "Ready") == pair("True", "Suspended")
            && cond(s.map(|s| &s.conditions), "Reconciling").is_none()
    })
    .await;
    assert_eq!(judged(&c), says("Current", "Suspended", "Current"));
}
