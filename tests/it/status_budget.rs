//! `--status-writes-per-second`: the status writer spends at most that many status writes a
//! second over all resources (sparing the API server during a burst), and every status still
//! becomes current, each in its turn.

use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::json;
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

use crate::replay::{event, ingest};
use crate::support::process::{Launch, OperatorProcess, binary, metric_value, start_launch};
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;

const CLIENT: &str = "sb-a";
const SUBSCRIPTIONS: usize = 6;
const EVENTS: usize = 10;

/// Status writes of delivery counters so far, by the operator's metrics.
async fn delivery_writes(op: &OperatorProcess) -> u64 {
    metric_value(op, "vehicle_connect_status_writes_total{part=\"delivery\"}")
        .await
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_budget_of_one_a_second_writes_the_statuses_in_turn() {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new("status-budget");
    let ns = scope.namespace(cp, "status-budget", CLIENT).await;
    let client = cp.client().await.unwrap();
    let receiver = Receiver::start(Some(crate::replay::WHSEC)).await;
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch::new(binary()).args(&["--status-writes-per-second", "1"]);
    let op = start_launch(cp, dir.path().join("op"), &scope, launch).await;
    for i in 0..SUBSCRIPTIONS {
        crate::replay::subscription(
            &client,
            &ns.name,
            &format!("hook-{i}"),
            json!({ "url": receiver.url("sb"), "clientId": CLIENT, "events": ["vehicle.processed"] }),
        )
        .await;
    }
    // Whatever the new subscriptions left to write is written first.
    tokio::time::sleep(Duration::from_secs(SUBSCRIPTIONS as u64 + 2)).await;

    let events = (0..EVENTS)
        .map(|i| {
            event(
                &format!("evt-sb-{i}"),
                CLIENT,
                "vehicle.processed",
                &format!("veh-{i}"),
            )
        })
        .collect();
    let (start, writes_before) = (Instant::now(), delivery_writes(&op).await);
    ingest(&op, events).await;
    receiver.wait_for("sb", SUBSCRIPTIONS * EVENTS).await;
    let delivered = start.elapsed();

    // Every status comes to count every delivery, one resource a second.
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let deadline = Instant::now() + Duration::from_secs(60);
    let current = loop {
        let list = api.list(&Default::default()).await.unwrap();
        let done = list
            .items
            .iter()
            .filter(|w| {
                w.status
                    .as_ref()
                    .is_some_and(|s| s.delivered == EVENTS as u64 && s.pending == 0)
            })
            .count();
        if done == SUBSCRIPTIONS {
            break start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {SUBSCRIPTIONS} statuses current after 60 s:\n{}",
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let writes = delivery_writes(&op).await - writes_before;
    println!(
        "delivered in {delivered:?}; every status current after {current:?}, {writes} status writes"
    );
    // At least one write per resource, and no more than one a second (the flush runs once a
    // second; one more for the tick at either end).
    assert!(writes >= SUBSCRIPTIONS as u64, "{writes} writes");
    assert!(
        writes as f64 <= current.as_secs_f64() + 2.0,
        "{writes} status writes in {current:?}: over the budget of 1 a second"
    );
    // Six resources at one write a second cannot all be current within 4 s of the last
    // delivery (with the default budget they are within about 1 s).
    assert!(
        current >= delivered + Duration::from_secs(4),
        "every status current {current:?} after the ingest, deliveries done after {delivered:?}: the budget was not applied"
    );
}
