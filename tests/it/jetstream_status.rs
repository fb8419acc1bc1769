//! Two operator processes sharing one JetStream log: each delivers its own partitions, and the
//! resource's status counts the deliveries of both (the counters are added up in the KV
//! bucket `vc-counters`), not whichever replica wrote last; a replica shut down cleanly
//! finishes what it took before the other takes its partitions, so nothing is sent twice.

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

/// `n` events of 40 vehicles, numbered from `from`.
fn events(prefix: &str, from: usize, n: usize) -> Vec<serde_json::Value> {
    (from..from + n)
        .map(|i| {
            json!({
                "id": format!("evt-{prefix}-{i}"), "type": "vehicle.processed",
                "timestamp": "2026-12-03T10:00:00Z", "clientId": CLIENT, "userId": "u-1",
                "data": { "vehicle": { "id": format!("veh-{}", i % 40) } }
            })
        })
        .collect()
}

/// A namespace of a new scope with a subscription to `path` on `receiver`, two replicas on
/// one NATS node serving it, once the subscription is Ready.
async fn two_replicas(
    name: &str,
    receiver: &Receiver,
    path: &str,
) -> (
    Scope,
    Vec<OperatorProcess>,
    Api<WebhookSubscription>,
    NatsCluster,
    tempfile::TempDir,
) {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new(name);
    let ns = scope.namespace(cp, name, CLIENT).await;
    let client = cp.client().await.unwrap();
    apply_value(
        &client,
        &ns.name,
        json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": "hook" },
            "spec": { "url": receiver.url(path), "clientId": CLIENT, "events": ["vehicle.processed"] }
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
    (scope, ops, api, nats, dir)
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
    let receiver = Receiver::start(None).await;
    let (_scope, ops, api, _nats, _dir) = two_replicas("js-status", &receiver, "hook").await;

    // Batches of 40 vehicles, alternately to each replica's ingest, until both have
    // delivered some (the second replica gets its share of partitions within a few rounds).
    let http = reqwest::Client::new();
    let mut posted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let batch = events("jss", posted, 40);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_shut_down_cleanly_hands_over_without_sending_anything_twice() {
    let receiver = Receiver::start(None).await;
    // Every delivery takes 50 ms: each lane has a backlog when the replica is told to stop.
    receiver.script(
        "slow",
        (0..400)
            .map(|_| crate::support::receiver::Reply::Hang(Duration::from_millis(50)))
            .collect(),
    );
    let (_scope, mut ops, _api, _nats, _dir) = two_replicas("js-leave", &receiver, "slow").await;
    // Both own partitions by now (two rounds of a 2 s lease).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let http = reqwest::Client::new();
    post(&http, &ops[0], &events("leave", 0, 200)).await;
    post(&http, &ops[1], &events("leave", 200, 200)).await;
    // SIGTERM: the operator stops its API, drains its partitions and leaves.
    let a = &mut ops[0];
    // SAFETY: signalling a child process of this test by its pid.
    unsafe { libc::kill(a.pid() as i32, libc::SIGTERM) };
    let stopped = Instant::now();
    let exit = tokio::task::block_in_place(|| a.child.wait()).expect("wait for replica A");
    let took = stopped.elapsed();
    let got = receiver.wait_for("slow", 400).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = receiver.received_on("slow").len().max(got.len());
    let log = ops[0].log_text();
    println!("replica A stopped in {took:?} ({exit}); {got} deliveries of 400 events");
    assert!(
        log.contains("partition drained; handed over"),
        "replica A handed nothing over by draining:\n{log}"
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for r in receiver.received_on("slow") {
        let id = r.body["id"].as_str().unwrap_or_default().to_owned();
        *seen.entry(id).or_default() += 1;
    }
    assert_eq!(seen.len(), 400, "every event arrived");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sent twice across a clean shutdown: {twice:?}\n{log}\n{}",
        ops[1].log_text()
    );
}

/// Merges `spec` into the subscription's spec; its new generation.
async fn patch_spec(api: &Api<WebhookSubscription>, name: &str, spec: serde_json::Value) -> i64 {
    let w = api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch the spec");
    w.metadata.generation.expect("a generation")
}

/// This operator's status patches of `part` (`conditions` or `delivery`), by its metrics.
async fn status_writes(op: &OperatorProcess, part: &str) -> u64 {
    let text = metrics(op).await;
    let line = format!("vehicle_connect_status_writes_total{{part=\"{part}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {line} in the metrics:\n{text}"))
}

async fn writes_of(ops: &[OperatorProcess], part: &str) -> Vec<u64> {
    let mut v = Vec::new();
    for op in ops {
        v.push(status_writes(op, part).await);
    }
    v
}

/// Posts batches of 40 alternately through `ops` until each has delivered some since `from`
/// (a replica's deliveries by its metrics); the number of events posted.
async fn deliver_through_all(
    http: &reqwest::Client,
    ops: &[&OperatorProcess],
    receiver: &Receiver,
    prefix: &str,
) -> usize {
    let mut before = Vec::new();
    for op in ops {
        before.push(delivered_by(op).await);
    }
    let mut posted = 0usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        post(
            http,
            ops[posted / 40 % ops.len()],
            &events(prefix, posted, 40),
        )
        .await;
        posted += 40;
        receiver.wait_for("hook", posted).await;
        let mut all = true;
        for (op, b) in ops.iter().zip(&before) {
            all &= delivered_by(op).await > *b;
        }
        if all {
            return posted;
        }
        assert!(
            Instant::now() < deadline,
            "a replica delivered nothing in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_writes_each_status_and_another_takes_over_when_it_dies() {
    let receiver = Receiver::start(None).await;
    let (_scope, mut ops, api, _nats, _dir) = two_replicas("js-writer", &receiver, "hook").await;
    crate::support::process::wait_partitions_owned(&ops).await;
    let http = reqwest::Client::new();
    let refs: Vec<&OperatorProcess> = ops.iter().collect();
    let mut total = deliver_through_all(&http, &refs, &receiver, "w1").await as u64;
    wait_for(&api, "hook", "every delivery on status", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.delivered >= total && s.pending == 0)
    })
    .await;
    // Both replicas own partitions and both deliver; from here on, one writes the status.
    let (delivery0, conditions0) = (
        writes_of(&ops, "delivery").await,
        writes_of(&ops, "conditions").await,
    );
    let more = deliver_through_all(&http, &refs, &receiver, "w2").await as u64;
    total += more;
    wait_for(&api, "hook", "the second round on status", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.delivered >= total && s.pending == 0)
    })
    .await;
    // A spec change: the reconcilers of both see it, one writes the conditions.
    let generation = patch_spec(&api, "hook", json!({ "headers": { "X-Round": "2" } })).await;
    wait_for(&api, "hook", "the new generation observed", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == Some(generation))
    })
    .await;
    // Writes that were in flight land within a second or two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let delivery1 = writes_of(&ops, "delivery").await;
    let conditions1 = writes_of(&ops, "conditions").await;
    let grew =
        |a: &[u64], b: &[u64]| -> Vec<bool> { a.iter().zip(b).map(|(x, y)| y > x).collect() };
    println!(
        "delivery status writes {delivery0:?} → {delivery1:?}; conditions {conditions0:?} → {conditions1:?}"
    );
    let writer = match grew(&delivery0, &delivery1)[..] {
        [true, false] => 0,
        [false, true] => 1,
        ref g => panic!(
            "delivery status written by {g:?} (both or neither) though both delivered: {delivery0:?} → {delivery1:?}"
        ),
    };
    assert_eq!(
        grew(&conditions0, &conditions1),
        (0..2).map(|i| i == writer).collect::<Vec<_>>(),
        "the spec change's conditions were not written by the delivery status writer alone: {conditions0:?} → {conditions1:?}"
    );

    // The writer dies: the survivor, once it sees the writer gone, writes the status itself.
    ops[writer].kill();
    let survivor = &ops[1 - writer];
    let after_kill = deliver_through_all(&http, &[survivor], &receiver, "w3").await as u64;
    total += after_kill;
    let w = wait_for(&api, "hook", "the survivor's deliveries on status", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.delivered >= total && s.pending == 0)
    })
    .await;
    let generation = patch_spec(&api, "hook", json!({ "headers": { "X-Round": "3" } })).await;
    wait_for(
        &api,
        "hook",
        "the survivor observes the new generation",
        |w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == Some(generation))
        },
    )
    .await;
    println!(
        "after the writer's SIGKILL: status delivered {} of {total} posted",
        w.status.map(|s| s.delivered).unwrap_or_default()
    );
}
