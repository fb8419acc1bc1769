//! Crash safety: the operator is SIGKILLed in the middle of a stream of accepted events and
//! restarted on the same data dir; every event it answered 202 for is delivered.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::support::operator::{apply_value, subscription_ready};
use crate::support::process::TOKEN;
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;
use kube::api::Api;
use serde_json::json;
use tokio::sync::Mutex;
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_survives_sigkill() {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new("crash");
    let ns = scope.namespace(cp, "crash", "dealer-1").await;
    let client = cp.client().await.unwrap();
    let receiver = Receiver::start(None).await;
    // The receiver is down while events stream in, so most deliveries are still pending
    // (in the store, retrying) when the operator is killed.
    receiver.script("sink", vec![crate::support::receiver::Reply::Status(503)]);
    let op = crate::support::process::start(cp, cp.dir.join("crash-operator"), &scope).await;
    apply_value(&client, &ns.name, json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
        "metadata": { "name": "sink" },
        "spec": { "url": receiver.url("sink"), "clientId": "dealer-1", "events": ["vehicle.processed"],
                  "retry": { "maxAttempts": 100, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 } }
    }))
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    subscription_ready(&api, "sink").await;

    // Four posters stream events until the operator dies under them.
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let url = op.url("/v1/events");
    let mut posters = Vec::new();
    for p in 0..4 {
        let (accepted, url) = (accepted.clone(), url.clone());
        posters.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            for i in 0..100_000 {
                let id = format!("evt-crash-{p}-{i:06}");
                let body = json!({
                    "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
                    "clientId": "dealer-1", "data": { "vehicle": { "id": format!("veh-{p}-{}", i % 10) } }
                });
                match http.post(&url).bearer_auth(TOKEN).header("content-type", "application/json").body(body.to_string()).timeout(Duration::from_secs(5)).send().await {
                    Ok(r) if r.status() == 202 => {
                        accepted.lock().await.insert(id);
                    }
                    // Refused or cut off by the crash: not accepted, may or may not arrive.
                    _ => return,
                }
            }
        }));
    }
    // Let a few hundred go through, then kill.
    loop {
        if accepted.lock().await.len() >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut op = op;
    op.kill();
    for p in posters {
        let _ = p.await;
    }
    let accepted: BTreeSet<String> = accepted.lock().await.clone();
    let attempted: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.body["id"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "accepted before SIGKILL: {}, attempted (all refused with 503) before SIGKILL: {}",
        accepted.len(),
        attempted.len()
    );

    let op = op.restart(cp).await.expect("operator restarted");
    receiver.script("sink", vec![crate::support::receiver::Reply::Status(200)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<String> = receiver
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.body["id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<_> = accepted.difference(&got).collect();
        if missing.is_empty() {
            eprintln!(
                "all {} accepted events delivered after restart ({} successful deliveries, duplicates allowed)",
                accepted.len(),
                receiver
                    .received()
                    .iter()
                    .filter(|r| r.status == 200)
                    .count()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} accepted events never delivered, e.g. {:?}\n--- operator log\n{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
