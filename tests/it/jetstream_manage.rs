//! Redeliver and replay with two replicas sharing one JetStream log: whichever replica the
//! request reaches (the Service picks one), the event is delivered again, by the owner of the
//! vehicle's partition; and a `spec.replay` that both replicas' reconcilers carry out queues
//! each event once, not once per replica.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vc_envtest::nats::NatsCluster;
use vehicle_connect::api::WebhookSubscription;

use crate::replay::{OPS, event, ingest, manage, manage_tokens};
use crate::support::operator::{condition, wait_for};
use crate::support::process::{OperatorProcess, metrics, replica_launch, start_launch};
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;

const CLIENT: &str = "rp-a";
const VEHICLES: usize = 24;

struct Replicas {
    ops: Vec<OperatorProcess>,
    api: Api<WebhookSubscription>,
    ns: String,
    _scope: Scope,
    _nats: NatsCluster,
    _dir: tempfile::TempDir,
}

/// Two replicas on one NATS node with a subscription of `CLIENT` to `receiver`'s `path`, once
/// both own partitions (each has the partition reader log line).
async fn replicas(name: &str, receiver: &Receiver, path: &str) -> Replicas {
    replicas_of(name, receiver, path, &["replica-a", "replica-b"]).await
}

/// [`replicas`] with the replica ids `ids`.
async fn replicas_of(name: &str, receiver: &Receiver, path: &str, ids: &[&str]) -> Replicas {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new(name);
    let ns = scope.namespace(cp, name, CLIENT).await;
    let client = cp.client().await.unwrap();
    let nats = NatsCluster::single().await.expect("nats-server");
    let dir = tempfile::tempdir().unwrap();
    let tokens = manage_tokens(dir.path());
    let mut ops = Vec::new();
    for id in ids {
        let launch = replica_launch(&nats.urls(), id).args(&["--manage-token-file", &tokens]);
        ops.push(start_launch(cp, dir.path().join(id), &scope, launch).await);
    }
    // Ready needs a running operator.
    crate::replay::subscription(
        &client,
        &ns.name,
        "hook",
        json!({ "url": receiver.url(path), "clientId": CLIENT, "events": ["vehicle.processed"] }),
    )
    .await;
    // Both own partitions before the vehicles come.
    crate::support::process::wait_partitions_owned(&ops).await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    Replicas {
        ops,
        api,
        ns: ns.name.clone(),
        _scope: scope,
        _nats: nats,
        _dir: dir,
    }
}

/// `GET path` with the platform's manage token; the JSON answer (200 required).
async fn get(op: &OperatorProcess, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(op.url(path))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Arrivals per event id on `path`.
fn arrivals(receiver: &Receiver, path: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for r in receiver.received_on(path) {
        let id = r.body["id"].as_str().unwrap_or_default().to_owned();
        *seen.entry(id).or_default() += 1;
    }
    seen
}

/// Deliveries each replica made, by its own metrics.
async fn delivered(ops: &[OperatorProcess]) -> Vec<u64> {
    let mut out = Vec::new();
    for op in ops {
        let text = metrics(op).await;
        out.push(
            text.lines()
                .filter(|l| {
                    l.starts_with("vehicle_connect_deliveries_total{")
                        && l.contains("result=\"delivered\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_asked_of_either_replica_is_delivered_by_the_partition_owner() {
    let receiver = Receiver::start(Some(crate::replay::WHSEC)).await;
    let r = replicas("js-redeliver", &receiver, "rd").await;
    let events: Vec<Value> = (0..VEHICLES)
        .map(|i| {
            event(
                &format!("evt-jsrd-{i}"),
                CLIENT,
                "vehicle.processed",
                &format!("veh-{i}"),
            )
        })
        .collect();
    ingest(&r.ops[0], events).await;
    receiver.wait_for("rd", VEHICLES).await;
    let by = delivered(&r.ops).await;
    assert!(
        by.iter().all(|n| *n > 0),
        "both replicas should deliver some of {VEHICLES} vehicles: {by:?}"
    );

    // Every event redelivered once through each replica: about half of them are asked of a
    // replica that neither owns the vehicle's partition nor ever took the event.
    let target = format!("/v1/targets/whs/{}/hook", r.ns);
    for i in 0..VEHICLES {
        for op in &r.ops {
            let (status, body) = manage(
                op,
                OPS,
                &format!("{target}/redeliver"),
                json!({ "eventId": format!("evt-jsrd-{i}") }),
            )
            .await;
            assert_eq!(status, 202, "redeliver evt-jsrd-{i}: {body}");
            assert_eq!(body["queued"], 1, "{body}");
        }
    }
    receiver.wait_for("rd", 3 * VEHICLES).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = arrivals(&receiver, "rd");
    let wrong: Vec<_> = seen.iter().filter(|(_, n)| **n != 3).collect();
    assert!(
        seen.len() == VEHICLES && wrong.is_empty(),
        "each event once and then once per redelivery (3 times): {wrong:?} of {seen:?}\n{}\n{}",
        r.ops[0].log_text(),
        r.ops[1].log_text()
    );
    // Signed as first delivered: the independent verifier checked every arrival.
    assert!(
        receiver
            .received_on("rd")
            .iter()
            .all(|x| x.signature_ok == Some(true))
    );

    // The delivery log: every replica's attempts, through either replica.
    let query = format!("/v1/deliveries?target=whs/{}/hook&limit=500", r.ns);
    for op in &r.ops {
        let page = get(op, &query).await;
        let entries = page["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3 * VEHICLES, "{page}");
        let replicas: std::collections::BTreeSet<_> = entries
            .iter()
            .map(|e| e["id"].as_str().unwrap().rsplit_once('.').unwrap().0)
            .collect();
        assert_eq!(replicas.len(), 2, "entries of both replicas: {replicas:?}");
        assert!(page["next"].is_null(), "{page}");
    }
    // Paged by 10 through replica B: every entry once, newest first.
    let (mut ids, mut cursor, mut pages) = (Vec::<String>::new(), None::<String>, 0);
    loop {
        let mut q = format!("/v1/deliveries?target=whs/{}/hook&limit=10", r.ns);
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = get(&r.ops[1], &q).await;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 10);
        ids.extend(entries.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages <= 20, "the pages never end: {ids:?}");
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (3 * VEHICLES, 3 * VEHICLES),
        "{ids:?}"
    );
    // One event: its three attempts, made by both replicas, through either.
    for op in &r.ops {
        let view = get(op, &format!("/v1/events/evt-jsrd-0?client={CLIENT}")).await;
        let attempts = view["targets"][0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{view}");
    }
    // An entry made by replica A, read and retried through replica B.
    let of_a = ids.iter().find(|i| i.starts_with("replica-a.")).unwrap();
    let entry = get(&r.ops[1], &format!("/v1/deliveries/{of_a}")).await;
    assert_eq!(entry["id"], of_a.as_str(), "{entry}");
    let retried = entry["event"]["id"].as_str().unwrap().to_owned();
    let (status, body) = manage(
        &r.ops[1],
        OPS,
        &format!("/v1/deliveries/{of_a}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    receiver.wait_for("rd", 3 * VEHICLES + 1).await;
    assert_eq!(arrivals(&receiver, "rd")[&retried], 4);

    // An event the log never had is a 404 on either replica, not a silent 202.
    for op in &r.ops {
        let (status, body) = manage(
            op,
            OPS,
            &format!("{target}/redeliver"),
            json!({ "eventId": "evt-jsrd-never" }),
        )
        .await;
        assert_eq!(status, 404, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_reads_the_whole_log_and_spec_replay_is_queued_once_by_two_replicas() {
    let receiver = Receiver::start(Some(crate::replay::WHSEC)).await;
    let r = replicas("js-replay", &receiver, "rp").await;
    let since = k8s_openapi::jiff::Timestamp::now();
    // Half through each replica's ingest, so neither store holds every event.
    for half in 0..2 {
        let events: Vec<Value> = (0..VEHICLES / 2)
            .map(|i| {
                let n = half * VEHICLES / 2 + i;
                event(
                    &format!("evt-jsrp-{n}"),
                    CLIENT,
                    "vehicle.processed",
                    &format!("veh-{n}"),
                )
            })
            .collect();
        ingest(&r.ops[half], events).await;
    }
    receiver.wait_for("rp", VEHICLES).await;

    // The management API's replay, asked of one replica: every event of the window again.
    let (status, body) = manage(
        &r.ops[1],
        OPS,
        &format!("/v1/targets/whs/{}/hook/replay", r.ns),
        json!({ "since": since.to_string() }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], VEHICLES, "{body}");
    assert_eq!(body["matched"], VEHICLES, "{body}");
    receiver.wait_for("rp", 2 * VEHICLES).await;

    // spec.replay: both replicas' reconcilers carry it out; each event comes once more.
    r.api
        .patch(
            "hook",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "replay": { "id": "js-once", "since": since.to_string() } } }),
            ),
        )
        .await
        .unwrap();
    let w = wait_for(&r.api, "hook", "lastReplay js-once", |w| {
        w.status
            .as_ref()
            .and_then(|s| s.last_replay.as_ref())
            .is_some_and(|l| l.id == "js-once")
    })
    .await;
    let last = w
        .status
        .as_ref()
        .and_then(|s| s.last_replay.as_ref())
        .unwrap();
    assert_eq!(last.queued, VEHICLES as u64, "{last:?}");
    receiver.wait_for("rp", 3 * VEHICLES).await;
    // Long enough for a second replica's copy of the replay to arrive, were there one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let both = [r.ops[0].log_text(), r.ops[1].log_text()];
    let carried = both
        .iter()
        .filter(|l| l.contains("spec.replay carried out"))
        .count();
    let seen = arrivals(&receiver, "rp");
    let wrong: Vec<_> = seen.iter().filter(|(_, n)| **n != 3).collect();
    assert!(
        seen.len() == VEHICLES && wrong.is_empty(),
        "each event once, once for the API replay and once for spec.replay (3 times), with {carried} replica(s) carrying it out: {wrong:?}\n{}\n{}",
        both[0],
        both[1]
    );
    assert!(
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    );
    println!("spec.replay carried out by {carried} replica(s); every event arrived 3 times");
}

/// Delivery log entries this operator copied to JetStream, by its metrics.
async fn copied(op: &OperatorProcess) -> u64 {
    crate::support::process::metric_value(op, "vehicle_connect_delivery_log_copied_total")
        .await
        .expect("vehicle_connect_delivery_log_copied_total is exported") as u64
}

/// The ids of the log's entries for the test's subscription, newest first.
async fn entry_ids(op: &OperatorProcess, ns: &str) -> Vec<String> {
    let page = get(
        op,
        &format!("/v1/deliveries?target=whs/{ns}/hook&limit=500"),
    )
    .await;
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_volume_gets_its_delivery_log_back_from_jetstream() {
    let receiver = Receiver::start(Some(crate::replay::WHSEC)).await;
    let mut r = replicas_of("js-logcopy", &receiver, "lc", &["replica-a"]).await;
    let (cp, ns) = (ControlPlane::shared(), r.ns.clone());
    let op = r.ops.remove(0);
    let batch = |from: usize, n: usize| -> Vec<Value> {
        (from..from + n)
            .map(|i| {
                event(
                    &format!("evt-jslc-{i}"),
                    CLIENT,
                    "vehicle.processed",
                    &format!("veh-{i}"),
                )
            })
            .collect()
    };
    ingest(&op, batch(0, 20)).await;
    receiver.wait_for("lc", 20).await;
    let before = entry_ids(&op, &ns).await;
    assert_eq!(before.len(), 20, "{before:?}");
    // Copied (every half second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while copied(&op).await < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not copied in 20 s:\n{}",
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The volume is gone: SIGKILL, the data dir removed, the same replica id again.
    let mut op = op;
    op.kill();
    std::fs::remove_dir_all(&op.data_dir).expect("remove the replica's data dir");
    std::fs::create_dir_all(&op.data_dir).unwrap();
    let op = op.restart(cp).await.expect("restart replica-a");
    crate::support::process::wait_partitions_owned(std::slice::from_ref(&op)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let restored = loop {
        let ids = entry_ids(&op, &ns).await;
        if ids.len() >= 20 || std::time::Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        restored,
        before,
        "the log after a new volume, newest first, should be the old one under its ids:\n{}",
        op.log_text()
    );
    // New attempts go on above the restored ids; both show.
    ingest(&op, batch(20, 5)).await;
    receiver.wait_for("lc", 25).await;
    let after = entry_ids(&op, &ns).await;
    assert_eq!(after.len(), 25, "{after:?}");
    assert_eq!(&after[5..], &before[..], "old entries below the new");
    let number = |id: &str| id.rsplit_once('.').unwrap().1.parse::<u64>().unwrap();
    let oldest_new = after[..5].iter().map(|i| number(i)).min().unwrap();
    let newest_old = before.iter().map(|i| number(i)).max().unwrap();
    assert!(oldest_new > newest_old, "{after:?}");
    // A restored entry reads as before.
    let one = get(&op, &format!("/v1/deliveries/{}", before[3])).await;
    assert_eq!(one["result"], "delivered", "{one}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_gone_for_good_has_its_delivery_log_served_by_a_live_one() {
    let receiver = Receiver::start(Some(crate::replay::WHSEC)).await;
    let mut r = replicas("js-adopt", &receiver, "ad").await;
    let ns = r.ns.clone();
    let since = k8s_openapi::jiff::Timestamp::now();
    let events: Vec<Value> = (0..VEHICLES)
        .map(|i| {
            event(
                &format!("evt-jsad-{i}"),
                CLIENT,
                "vehicle.processed",
                &format!("veh-{i}"),
            )
        })
        .collect();
    ingest(&r.ops[0], events).await;
    receiver.wait_for("ad", VEHICLES).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (copied(&r.ops[0]).await, copied(&r.ops[1]).await);
        if a + b >= VEHICLES as u64 {
            assert!(a > 0 && b > 0, "both replicas delivered: {a} + {b}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the logs were not copied in 20 s: {a} + {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = entry_ids(&r.ops[0], &ns).await;
    assert_eq!(before.len(), VEHICLES, "{before:?}");
    let of_b: Vec<&String> = before
        .iter()
        .filter(|i| i.starts_with("replica-b."))
        .collect();
    let b_event = get(&r.ops[0], &format!("/v1/deliveries/{}", of_b[0])).await["event"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Replica B is gone for good: killed, never started again.
    let mut b = r.ops.remove(1);
    b.kill();
    let a = &r.ops[0];
    // Its log is missing while B could still be restarting (lease, then grace), then served
    // by A from the copy: the same entries under the same ids.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut lapsed = false;
    let after = loop {
        let ids = entry_ids(a, &ns).await;
        lapsed |= ids.len() < VEHICLES;
        if ids.len() == VEHICLES && lapsed {
            break ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B's entries were not served again in 60 s (lapsed: {lapsed}, {} entries):\n{}",
            ids.len(),
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        after, before,
        "the merged log after B is gone, newest first"
    );
    assert!(
        a.log_text()
            .contains("serving a gone replica's delivery log here"),
        "{}",
        a.log_text()
    );
    // One of B's entries by its id.
    let one = get(a, &format!("/v1/deliveries/{}", of_b[0])).await;
    assert_eq!(one["id"], of_b[0].as_str(), "{one}");
    assert_eq!(one["result"], "delivered", "{one}");
    // Paged by 5: every entry once, B's among them.
    let (mut paged, mut cursor) = (Vec::<String>::new(), None::<String>);
    loop {
        let mut q = format!("/v1/deliveries?target=whs/{ns}/hook&limit=5");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let page = get(a, &q).await;
        paged.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        assert!(paged.len() <= 2 * VEHICLES, "{paged:?}");
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, before);

    // A replay through A delivers B's event again: its view holds A's new attempt and B's.
    let (status, body) = manage(
        a,
        OPS,
        &format!("/v1/targets/whs/{ns}/hook/replay"),
        json!({ "since": since.to_string() }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    receiver.wait_for("ad", 2 * VEHICLES).await;
    let view = get(a, &format!("/v1/events/{b_event}?client={CLIENT}")).await;
    let ids: Vec<&str> = view["targets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["attempts"].as_array().unwrap())
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{view}");
    assert_eq!(
        ids[0],
        of_b[0].as_str(),
        "B's attempt first (oldest first): {view}"
    );
    assert!(ids[1].starts_with("replica-a."), "{view}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let all = loop {
        let ids = entry_ids(a, &ns).await;
        if ids.len() == 2 * VEHICLES {
            break ids;
        }
        assert!(std::time::Instant::now() < deadline, "{ids:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(&all[VEHICLES..], &before[..]);

    // B comes back after all: it serves its own log again and A lets go of its copy; every
    // entry shows once meanwhile.
    let b = b
        .restart(ControlPlane::shared())
        .await
        .expect("restart replica-b");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while !a
        .log_text()
        .contains("no longer serving a gone replica's delivery log here")
    {
        let ids = entry_ids(&b, &ns).await;
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "A kept serving B's log after B came back:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(entry_ids(&b, &ns).await, all);
    assert_eq!(entry_ids(a, &ns).await, all);
}
