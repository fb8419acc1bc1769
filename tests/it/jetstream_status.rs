//! Two operator processes sharing one JetStream log: each delivers its own partitions, and the
//! resource's status counts the deliveries of both (the counters are added up in the KV
//! bucket `vc-counters`), not whichever replica wrote last.

use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::json;
use vc_envtest::ControlPlane;
use vc_envtest::nats::NatsCluster;
use vehicle_connect::api::WebhookSubscription;

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN, metrics, replica_launch, start_launch};
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;

const CLIENT: &str = "dealer-jsstatus";

/// Deliveries this operator made, by its own metrics.
async fn delivered_by(op: &OperatorProcess) -> u64 {
    let text = metrics(op).await;
    text.lines()
        .find(|l| {
            l.starts_with("vehicle_connect_deliveries_total{")
                && l.contains("kind=\"webhook\"")
                && l.contains("result=\"delivered\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn post(http: &reqwest::Client, op: &OperatorProcess, events: &[serde_json::Value]) {
    let r = http
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(events).expect("json"))
        .send()
        .await
        .expect("POST /v1/events");
    let status = r.status();
    assert_eq!(status, 202, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_the_deliveries_of_every_replica() {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new("js-status");
    let ns = scope.namespace(cp, "js-status", CLIENT).await;
    let client = cp.client().await.unwrap();
    let receiver = Receiver::start(None).await;
    apply_value(
        &client,
        &ns.name,
        json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": "hook" },
            "spec": { "url": receiver.url("hook"), "clientId": CLIENT, "events": ["vehicle.processed"] }
        }),
    )
    .await;
    let nats = NatsCluster::single().await.expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let mut ops = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let launch = replica_launch(&nats.urls(), id);
        ops.push(start_launch(cp, dir.path().join(id), &scope, launch).await);
    }
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "hook", "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;

    // Batches of 40 vehicles, alternately to each replica's ingest, until both have
    // delivered some (the second replica gets its share of partitions within a few rounds).
    let http = reqwest::Client::new();
    let mut posted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batch: Vec<_> = (0..40)
            .map(|v| {
                json!({
                    "id": format!("evt-jss-{posted}-{v}"), "type": "vehicle.processed",
                    "timestamp": "2026-12-03T10:00:00Z", "clientId": CLIENT, "userId": "u-1",
                    "data": { "vehicle": { "id": format!("veh-{v}") } }
                })
            })
            .collect();
        post(&http, &ops[posted / 40 % 2], &batch).await;
        posted += batch.len();
        receiver.wait_for("hook", posted).await;
        let (a, b) = (delivered_by(&ops[0]).await, delivered_by(&ops[1]).await);
        if a > 0 && b > 0 && posted >= 200 {
            println!("delivered by replica-a {a}, by replica-b {b}, {posted} events");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "one replica delivered nothing in 30 s (a {a}, b {b}):\n{}\n{}",
            ops[0].log_text(),
            ops[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // At least once: a partition that moved from A to B while B joined has its events since
    // A's last floor delivered again, and both count them. So the status says at least every
    // event, and no more than the two replicas' own counts together.
    let total = posted as u64;
    let w = wait_for(&api, "hook", "every replica's deliveries on status", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.delivered >= total && s.pending == 0)
    })
    .await;
    let st = w.status.unwrap();
    let (a, b) = (delivered_by(&ops[0]).await, delivered_by(&ops[1]).await);
    assert!(
        st.delivered <= a + b,
        "status {} > a {a} + b {b}",
        st.delivered
    );
    assert!(st.last_delivery.is_some(), "{st:?}");
}
