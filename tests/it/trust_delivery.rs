//! Trust: nothing accepted is lost, queued events follow the tenant, one tenant's hanging
//! receiver does not stall the others. The operator runs as a real process against the real
//! control plane; receivers are real HTTP servers (signatures checked by `standardwebhooks`).
//! Each test has its own operator (serving its own scope), namespace(s) and client, so they
//! never see each other.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::Scope;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

pub(crate) const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    cp
}

async fn operator(cp: &ControlPlane, scope: &Scope, args: &[&str]) -> OperatorProcess {
    let dir = cp.dir.join(format!("trust-{scope}"));
    crate::support::process::start_with(cp, dir, scope, args).await
}

fn event(client: &str, id: &str, vehicle: &str) -> Value {
    json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-1",
        "data": { "vehicle": { "id": vehicle, "vin": "WVWZZZ1JZXW000001" } }
    })
}

async fn post(op: &OperatorProcess, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub(crate) fn subscription(name: &str, client: &str, url: &str, extra: Value) -> Value {
    let mut spec = json!({
        "url": url, "clientId": client, "events": ["vehicle.processed"],
        "signing": { "secretRef": { "name": "signing" } },
        "timeoutSeconds": 5,
        "retry": { "maxAttempts": 50, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 }
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut spec, extra) {
        a.extend(b);
    }
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
        "metadata": { "name": name }, "spec": spec
    })
}

async fn namespace(cp: &ControlPlane, scope: &Scope, prefix: &str, clients: &str) -> String {
    let ns = scope.namespace(cp, prefix, clients).await;
    let client = cp.client().await.unwrap();
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" }, "stringData": { "secret": WHSEC } }),
    )
    .await;
    ns.name.clone()
}

/// The control plane, the scope of the test's operator, a namespace of it allowing `client`
/// (with the signing Secret), a client and a receiver: what every test here starts from.
async fn tenant(
    prefix: &str,
    client: &str,
) -> (&'static ControlPlane, Scope, String, kube::Client, Receiver) {
    let cp = control_plane().await;
    let scope = Scope::new(prefix);
    let ns = namespace(cp, &scope, prefix, client).await;
    let kube = cp.client().await.unwrap();
    (cp, scope, ns, kube, Receiver::start(Some(WHSEC)).await)
}

async fn ready(api: &Api<WebhookSubscription>, name: &str) {
    wait_for(api, name, "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;
}

/// Restart window: /readyz used to turn ready before any target was registered, so events
/// posted right after a restart were accepted with 0 deliveries and never delivered.
#[tokio::test]
async fn events_posted_the_moment_readyz_says_ok_after_a_restart_all_arrive() {
    let client_id = "dealer-restart";
    let (cp, scope, ns, kube, receiver) = tenant("restart", client_id).await;
    const SUBS: usize = 60;
    for i in 0..SUBS {
        apply_value(
            &kube,
            &ns,
            subscription(
                &format!("s{i}"),
                client_id,
                &receiver.url(&format!("s{i}")),
                json!({}),
            ),
        )
        .await;
    }
    let mut op = operator(cp, &scope, &[]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    for i in 0..SUBS {
        ready(&api, &format!("s{i}")).await;
    }
    for round in 0..3 {
        op = op.restart(cp).await.expect("operator restarted");
        // At once: the first events after readiness are the ones that used to be lost.
        let batch: Vec<Value> = (0..5)
            .map(|k| event(client_id, &format!("r{round}-e{k}"), &format!("veh-{k}")))
            .collect();
        let (code, body) = post(&op, &Value::Array(batch)).await;
        assert_eq!(code, 202, "{body}");
        for e in body["events"].as_array().unwrap() {
            assert_eq!(
                e["deliveries"], SUBS,
                "round {round}: event routed to fewer subscriptions than exist: {e}"
            );
        }
    }
    for i in 0..SUBS {
        let got = receiver.wait_for(&format!("s{i}"), 15).await;
        assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    }
}

/// A client that hangs up mid-request must not strand what the store committed: every event
/// the store holds is delivered without a restart.
#[tokio::test]
async fn clients_hanging_up_mid_request_strand_nothing() {
    let client_id = "dealer-hangup";
    let (cp, scope, ns, kube, receiver) = tenant("hangup", client_id).await;
    apply_value(
        &kube,
        &ns,
        subscription(
            "all",
            client_id,
            &receiver.url("all"),
            json!({ "maxConcurrency": 64 }),
        ),
    )
    .await;
    let op = operator(cp, &scope, &[]).await;
    ready(&Api::namespaced(kube.clone(), &ns), "all").await;

    // Load generator that cuts its connections at random points of the request.
    let base = op.url("/v1/events");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for b in 0..40 {
                let batch: Vec<Value> = (0..10)
                    .map(|k| {
                        event(
                            client_id,
                            &format!("w{w}-b{b}-{k}"),
                            &format!("veh-{w}-{k}"),
                        )
                    })
                    .collect();
                ids.extend(batch.iter().map(|e| e["id"].as_str().unwrap().to_string()));
                let cut = Duration::from_micros(200 + (w * 97 + b * 131) % 3000);
                let _ = reqwest::Client::new()
                    .post(&base)
                    .bearer_auth(TOKEN)
                    .timeout(cut)
                    .header("content-type", "application/json")
                    .body(Value::Array(batch).to_string())
                    .send()
                    .await;
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    // Which of them did the store take? Posting again answers `duplicate` for those; the
    // others are accepted now. Either way every id must arrive.
    let mut stored_before = 0;
    for chunk in all.chunks(100) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|id| {
                let w = id.split('-').next().unwrap().to_string();
                event(client_id, id, &format!("veh-{w}"))
            })
            .collect();
        let (code, body) = post(&op, &Value::Array(batch)).await;
        assert_eq!(code, 202, "{body}");
        stored_before += body["duplicates"].as_u64().unwrap();
    }
    assert!(
        stored_before > 0,
        "the load generator never got an event stored"
    );
    let want: HashSet<String> = all.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<String> = receiver
            .received_on("all")
            .iter()
            .filter_map(|r| r.body["id"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<_> = want.difference(&got).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never delivered ({stored_before} were stored by cut requests), e.g. {:?}",
            missing.len(),
            want.len(),
            missing.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "hang-up: {} events, {stored_before} stored by requests that were cut, all delivered",
        want.len()
    );
}

/// Queued deliveries follow the tenant, not the name: events queued for client A are never
/// sent to the URL the subscription gets after it moves to client B.
#[tokio::test]
async fn queued_events_never_follow_a_subscription_to_another_client() {
    let (cp, scope, ns, kube, receiver) = tenant("tenant", "dealer-a").await;
    receiver.script("down", vec![Reply::Status(503)]);
    apply_value(
        &kube,
        &ns,
        subscription("moving", "dealer-a", &receiver.url("down"), json!({})),
    )
    .await;
    let op = operator(cp, &scope, &[]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    ready(&api, "moving").await;
    let batch: Vec<Value> = (0..20)
        .map(|k| event("dealer-a", &format!("a-{k}"), &format!("veh-{k}")))
        .collect();
    let (code, body) = post(&op, &Value::Array(batch)).await;
    assert_eq!((code, body["accepted"].as_u64()), (202, Some(20)), "{body}");
    receiver.wait_for("down", 20).await;

    // The namespace now allows B only, and the subscription moves to B with a new URL.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(kube.clone());
    nss.patch(
        &ns,
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "metadata": { "annotations": { "connect.vehicles.io/clients": "dealer-b" } } }),
        ),
    )
    .await
    .unwrap();
    apply_value(
        &kube,
        &ns,
        subscription("moving", "dealer-b", &receiver.url("new"), json!({})),
    )
    .await;
    wait_for(&api, "moving", "Ready for dealer-b", |w| {
        w.spec.client_id == "dealer-b"
            && w.status.as_ref().is_some_and(|s| {
                s.observed_generation == w.metadata.generation
                    && condition(&s.conditions, "Ready").is_some_and(|c| c.0 == "True")
            })
    })
    .await;
    let on_new = only_the_new_event(&op, &receiver, "dealer-b", "b-1").await;
    assert_eq!(on_new, ["b-1"], "client A's events reached client B's URL");
    let w = api.get("moving").await.unwrap();
    let st = serde_json::to_value(w.status.unwrap()).unwrap();
    assert_eq!(st["pending"], 0, "{st}");
}

/// Posts `id` for `client`, waits for it on the receiver's `new` path, gives queued retries
/// (1 s backoff) time to go wrong, and returns every id that reached `new`.
async fn only_the_new_event(
    op: &OperatorProcess,
    receiver: &Receiver,
    client: &str,
    id: &str,
) -> Vec<String> {
    let (code, body) = post(op, &event(client, id, "veh-new")).await;
    assert_eq!(code, 202, "{body}");
    receiver.wait_for("new", 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    receiver
        .received_on("new")
        .iter()
        .map(|r| r.body["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// maxAgeSeconds applies to held (suspended) subscriptions too: their backlog expires, is
/// counted as failed and is never delivered after resuming.
#[tokio::test]
async fn a_held_subscriptions_backlog_expires_by_max_age() {
    let client_id = "dealer-expiry";
    let (cp, scope, ns, kube, receiver) = tenant("expiry", client_id).await;
    let held = json!({ "suspend": true, "retry": { "maxAgeSeconds": 10, "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 } });
    apply_value(
        &kube,
        &ns,
        subscription("held", client_id, &receiver.url("held"), held),
    )
    .await;
    let op = operator(cp, &scope, &["--sweep-interval-seconds", "1"]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    wait_for(&api, "held", "Suspended", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.1 == "Suspended")
    })
    .await;
    let batch: Vec<Value> = (0..10)
        .map(|k| event(client_id, &format!("x-{k}"), &format!("veh-{k}")))
        .collect();
    let (code, body) = post(&op, &Value::Array(batch)).await;
    assert_eq!(
        (code, body["events"][0]["deliveries"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    let started = Instant::now();
    let w = wait_for(&api, "held", "expired backlog", |w| {
        w.status.as_ref().is_some_and(|s| {
            let v = serde_json::to_value(s).unwrap();
            v["failed"] == 10 && v["pending"] == 0
        })
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(25));
    let st = serde_json::to_value(w.status.unwrap()).unwrap();
    assert_eq!(st["lastFailure"]["reason"], "Expired", "{st}");
    // Resuming delivers nothing of it.
    apply_value(&kube, &ns, subscription("held", client_id, &receiver.url("held"), json!({ "suspend": false, "retry": { "maxAgeSeconds": 10, "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 } }))).await;
    ready(&api, "held").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(receiver.received_on("held").is_empty());
}

/// When the backlog on disk is at its limit, ingest answers 429 with Retry-After instead of
/// accepting what it could not keep.
#[tokio::test]
async fn a_full_backlog_is_refused_with_429_and_retry_after() {
    let client_id = "dealer-backlog";
    let (cp, scope, ns, kube, receiver) = tenant("backlog", client_id).await;
    apply_value(
        &kube,
        &ns,
        subscription(
            "held",
            client_id,
            &receiver.url("held"),
            json!({ "suspend": true }),
        ),
    )
    .await;
    let op = operator(cp, &scope, &["--max-pending-deliveries", "5"]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    wait_for(&api, "held", "Suspended", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.1 == "Suspended")
    })
    .await;
    let batch: Vec<Value> = (0..5)
        .map(|k| event(client_id, &format!("k-{k}"), "veh"))
        .collect();
    let (code, body) = post(&op, &Value::Array(batch)).await;
    assert_eq!(code, 202, "{body}");
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(event(client_id, "k-over", "veh").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "backlog_full", "{body}");
    // Nothing of the refused request was kept: after the backlog drains it is new.
    apply_value(
        &kube,
        &ns,
        subscription(
            "held",
            client_id,
            &receiver.url("held"),
            json!({ "suspend": false }),
        ),
    )
    .await;
    receiver.wait_for("held", 5).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = post(&op, &event(client_id, "k-over", "veh")).await;
        if code == 202 {
            assert_eq!(body["accepted"], 1, "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "still refused: {code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// maxConcurrency used to be frozen at a default of 8 for deliveries resumed after a
/// restart: a receiver that allows one request at a time got eight.
#[tokio::test]
async fn max_concurrency_holds_for_deliveries_resumed_after_a_restart() {
    let client_id = "dealer-conc";
    let (cp, scope, ns, kube, receiver) = tenant("conc", client_id).await;
    receiver.script("one", vec![Reply::Hang(Duration::from_millis(300))]);
    let spec = |suspend: bool| json!({ "suspend": suspend, "maxConcurrency": 1 });
    apply_value(
        &kube,
        &ns,
        subscription("one", client_id, &receiver.url("one"), spec(true)),
    )
    .await;
    let mut op = operator(cp, &scope, &[]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    wait_for(&api, "one", "Suspended", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.1 == "Suspended")
    })
    .await;
    let batch: Vec<Value> = (0..8)
        .map(|k| event(client_id, &format!("c-{k}"), &format!("veh-{k}")))
        .collect();
    assert_eq!(post(&op, &Value::Array(batch)).await.0, 202);
    op.kill();
    apply_value(
        &kube,
        &ns,
        subscription("one", client_id, &receiver.url("one"), spec(false)),
    )
    .await;
    let _op = op.restart(cp).await.expect("operator restarted");
    let got = receiver.wait_for("one", 8).await;
    let mut at: Vec<Instant> = got.iter().map(|r| r.at).collect();
    at.sort();
    let closest = at.windows(2).map(|w| w[1] - w[0]).min().unwrap();
    assert!(
        closest >= Duration::from_millis(250),
        "two requests {closest:?} apart: more than maxConcurrency 1 in flight"
    );
}

/// Fair share: one tenant's receiver that hangs does not stall another tenant's deliveries;
/// the healthy one's latency stays within 2x of running alone.
#[tokio::test]
async fn a_hanging_receiver_does_not_slow_another_tenant() {
    let cp = control_plane().await;
    let scope = Scope::new("fair");
    let (bad, good) = ("dealer-tarpit", "dealer-healthy");
    let ns_bad = namespace(cp, &scope, "tarpit", bad).await;
    let ns_good = namespace(cp, &scope, "healthy", good).await;
    let kube = cp.client().await.unwrap();
    let receiver = Receiver::start(Some(WHSEC)).await;
    receiver.script("hang", vec![Reply::Hang(Duration::from_secs(60))]);
    apply_value(
        &kube,
        &ns_bad,
        subscription(
            "hang",
            bad,
            &receiver.url("hang"),
            json!({ "maxConcurrency": 256, "timeoutSeconds": 60 }),
        ),
    )
    .await;
    apply_value(
        &kube,
        &ns_good,
        subscription(
            "ok",
            good,
            &receiver.url("ok"),
            json!({ "maxConcurrency": 16 }),
        ),
    )
    .await;
    let op = operator(cp, &scope, &[]).await;
    ready(&Api::namespaced(kube.clone(), &ns_bad), "hang").await;
    ready(&Api::namespaced(kube.clone(), &ns_good), "ok").await;

    async fn latencies(
        op: &OperatorProcess,
        receiver: &Receiver,
        client: &str,
        tag: &str,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        for k in 0..30 {
            let id = format!("{tag}-{k}");
            let before = receiver.received_on("ok").len();
            let sent = Instant::now();
            assert_eq!(
                post(op, &event(client, &id, &format!("veh-{k}"))).await.0,
                202
            );
            let got = receiver.wait_for("ok", before + 1).await;
            let r = got.iter().find(|r| r.body["id"] == id.as_str()).unwrap();
            out.push(r.at.saturating_duration_since(sent));
        }
        out.sort();
        out
    }
    let alone = latencies(&op, &receiver, good, "alone").await;
    // More waiting vehicles than the global pool has permits.
    for b in 0..12 {
        let batch: Vec<Value> = (0..100)
            .map(|k| event(bad, &format!("h-{b}-{k}"), &format!("veh-{b}-{k}")))
            .collect();
        assert_eq!(post(&op, &Value::Array(batch)).await.0, 202);
    }
    receiver.wait_for("hang", 256).await;
    let loaded = latencies(&op, &receiver, good, "loaded").await;
    let (a, l) = (alone[alone.len() / 2], loaded[loaded.len() / 2]);
    eprintln!("fair share: healthy p50 alone {a:?}, beside a hanging receiver {l:?}");
    assert!(
        l <= (a * 2).max(a + Duration::from_millis(20)),
        "healthy median latency {l:?} beside a hanging receiver, {a:?} alone"
    );
    let distinct: BTreeSet<_> = receiver
        .received_on("hang")
        .iter()
        .filter_map(|r| r.body["id"].as_str().map(str::to_string))
        .collect();
    assert!(distinct.len() <= 256, "more than maxConcurrency in flight");
}

/// Rows are kept per object (uid): a subscription deleted and recreated under the same name
/// while the operator was down never receives what was queued for the old object; those
/// rows are dropped. (The patch that removes finalizers stands for objects of earlier
/// versions, which carried one.)
#[tokio::test]
async fn a_recreated_subscription_never_gets_the_old_objects_queue() {
    let client_id = "dealer-recreate";
    let (cp, scope, ns, kube, receiver) = tenant("recreate", client_id).await;
    receiver.script("old", vec![Reply::Status(503)]);
    apply_value(
        &kube,
        &ns,
        subscription("same", client_id, &receiver.url("old"), json!({})),
    )
    .await;
    let mut op = operator(cp, &scope, &[]).await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    ready(&api, "same").await;
    let batch: Vec<Value> = (0..10)
        .map(|k| event(client_id, &format!("old-{k}"), &format!("veh-{k}")))
        .collect();
    assert_eq!(post(&op, &Value::Array(batch)).await.0, 202);
    receiver.wait_for("old", 10).await;

    // While the operator is down: deleted (nothing waits for it), recreated.
    op.kill();
    api.patch(
        "same",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
    api.delete("same", &Default::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.get_opt("same").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "old object not gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    apply_value(
        &kube,
        &ns,
        subscription("same", client_id, &receiver.url("new"), json!({})),
    )
    .await;
    let op = op.restart(cp).await.expect("operator restarted");
    ready(&api, "same").await;
    let on_new = only_the_new_event(&op, &receiver, client_id, "new-1").await;
    assert_eq!(
        on_new,
        ["new-1"],
        "the old object's queue reached the new one"
    );
}

/// Deleted while the operator was down, with events queued for it: deleting does not wait
/// (no finalizer), and the next start drops that queue (seen missing from the first list)
/// instead of keeping it until it expires.
#[tokio::test]
async fn a_subscription_deleted_while_the_operator_is_down_loses_its_queue_at_start() {
    let client_id = "dealer-orphan";
    let (cp, scope, ns, kube, receiver) = tenant("orphan", client_id).await;
    receiver.script("orphan", vec![Reply::Status(503)]);
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    apply_value(
        &kube,
        &ns,
        subscription("orphan", client_id, &receiver.url("orphan"), json!({})),
    )
    .await;
    let mut op = operator(cp, &scope, &[]).await;
    ready(&api, "orphan").await;
    let batch: Vec<Value> = (0..7)
        .map(|k| event(client_id, &format!("orphan-{k}"), &format!("veh-{k}")))
        .collect();
    assert_eq!(post(&op, &Value::Array(batch)).await.0, 202);
    receiver.wait_for("orphan", 7).await;
    op.kill();
    api.delete("orphan", &Default::default()).await.unwrap();
    assert!(
        api.get_opt("orphan").await.unwrap().is_none(),
        "deleting waited for the operator"
    );
    let op = op.restart(cp).await.expect("operator restarted");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = crate::support::process::metrics(&op).await;
        let dropped = metrics.lines().any(|l| {
            l.starts_with("vehicle_connect_deliveries_total{")
                && l.contains("result=\"dropped\"")
                && l.ends_with(" 7")
        });
        if dropped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted subscription's 7 queued deliveries were not dropped:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        op.log_text().contains("pending deliveries dropped"),
        "the drop is logged"
    );
}

/// Few active lanes (`--max-active-lanes 2`) and many vehicles: the lanes beyond two wait
/// queued, and lanes waiting to retry a failing receiver step aside, so a healthy target
/// still gets every event, in order per vehicle, while the failing one retries; the failing
/// one gets them all in order too once its receiver recovers.
#[tokio::test]
async fn lanes_waiting_to_retry_never_hold_back_other_lanes() {
    let client_id = "dealer-lanes";
    let (cp, scope, ns, kube, receiver) = tenant("lanes", client_id).await;
    let op = operator(cp, &scope, &["--max-active-lanes", "2"]).await;
    receiver.script("failing", vec![Reply::Status(500)]);
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns);
    for name in ["failing", "healthy"] {
        apply_value(
            &kube,
            &ns,
            subscription(name, client_id, &receiver.url(name), json!({})),
        )
        .await;
        ready(&api, name).await;
    }
    const VEHICLES: usize = 10;
    const PER_VEHICLE: usize = 3;
    for n in 0..PER_VEHICLE {
        let batch: Vec<Value> = (0..VEHICLES)
            .map(|v| event(client_id, &format!("ln-{v}-{n}"), &format!("veh-{v}")))
            .collect();
        let (code, body) = post(&op, &Value::Array(batch)).await;
        assert_eq!(code, 202, "{body}");
    }
    let in_order = |got: &[crate::support::receiver::Received], what: &str| {
        let mut per: std::collections::HashMap<String, Vec<String>> = Default::default();
        for r in got.iter().filter(|r| r.status == 200) {
            assert_eq!(r.signature_ok, Some(true));
            per.entry(r.body["data"]["vehicle"]["id"].as_str().unwrap().into())
                .or_default()
                .push(r.body["id"].as_str().unwrap().into());
        }
        assert_eq!(per.len(), VEHICLES, "{what}: vehicles");
        for (v, ids) in per {
            let want: Vec<String> = (0..PER_VEHICLE)
                .map(|n| format!("ln-{}-{n}", v.trim_start_matches("veh-")))
                .collect();
            assert_eq!(
                ids, want,
                "{what}: vehicle {v} out of order, duplicated or lost"
            );
        }
    };
    // Retries are 1 s apart and up to 50: a lane that kept its place while waiting would
    // hold the healthy target's lanes back far longer than wait_for's 30 s.
    let healthy = receiver.wait_for("healthy", VEHICLES * PER_VEHICLE).await;
    in_order(&healthy, "healthy");
    assert!(
        receiver
            .received_on("failing")
            .iter()
            .all(|r| r.status == 500),
        "the failing receiver answered only 500 so far"
    );
    receiver.script("failing", vec![Reply::Status(200)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = receiver
            .received_on("failing")
            .into_iter()
            .filter(|r| r.status == 200)
            .count();
        if ok >= VEHICLES * PER_VEHICLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failing: {ok} delivered after recovery"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    in_order(&receiver.received_on("failing"), "failing");
}
