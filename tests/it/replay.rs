//! Redeliver, replay and test sends of the management API, against the operator as a real
//! process, the real control plane and real receivers that verify every signature with the
//! independent `standardwebhooks` crate: a redelivered event arrives again with its
//! webhook-id; a replay sends exactly the window's events of the chosen types, each vehicle's
//! in order; a client token cannot act on another client's target; a target moved to another
//! client never gets the old client's events; a test send returns the receiver's answer, or a
//! timeout within the target's timeout.

use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

use crate::support::operator::{apply_value, condition, put_secret, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::Scope;

pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const OPS: &str = "ops-token-0123456789";
const CLIENT_A: &str = "rp-a-token-0123456789";
const CLIENT_B: &str = "rp-b-token-0123456789";

pub struct Op {
    pub op: OperatorProcess,
    pub scope: Scope,
    pub _dir: tempfile::TempDir,
}

/// The manage tokens of these tests: the platform, and one per client.
pub fn manage_tokens(dir: &std::path::Path) -> String {
    let path = dir.join("manage-tokens");
    std::fs::write(
        &path,
        format!("{OPS} *\n{CLIENT_A} rp-a\n{CLIENT_B} rp-b\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// An operator of its own with the manage tokens above and `args`.
pub async fn start(name: &str, args: &[&str]) -> Op {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = manage_tokens(dir.path());
    let mut all = vec!["--manage-token-file", tokens.as_str()];
    all.extend_from_slice(args);
    let scope = Scope::new(name);
    let op = crate::support::process::start_with(cp, dir.path().join("data"), &scope, &all).await;
    Op {
        op,
        scope,
        _dir: dir,
    }
}

async fn shared() -> &'static Op {
    static OP: OnceCell<Op> = OnceCell::const_new();
    OP.get_or_init(|| start("replay", &[])).await
}

pub fn event(id: &str, client: &str, type_: &str, vehicle: &str) -> Value {
    json!({ "id": id, "type": type_, "timestamp": "2026-11-27T10:15:30Z", "clientId": client,
            "data": { "vehicle": { "id": vehicle } } })
}

pub async fn ingest(op: &OperatorProcess, events: Vec<Value>) {
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

/// `POST {path}` of the management API with `token`: status and JSON body.
pub async fn manage(op: &OperatorProcess, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(op.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Applies a signed WebhookSubscription `name` to `path` of `rx` and waits for Ready.
pub async fn subscription(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> WebhookSubscription {
    put_secret(client, ns, "signing", None, json!({ "secret": WHSEC })).await;
    let mut full = json!({ "signing": { "secretRef": { "name": "signing" } },
                           "retry": { "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 } });
    for (k, v) in spec.as_object().unwrap() {
        full[k] = v.clone();
    }
    apply_value(
        client,
        ns,
        json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": name }, "spec": full,
        }),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), ns);
    let generation = api.get(name).await.unwrap().metadata.generation;
    wait_for(&api, name, "Ready at its generation", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.observed_generation == generation
                && condition(&s.conditions, "Ready").is_some_and(|c| c.0 == "True")
        })
    })
    .await
}

/// Asks for `rp-a`'s event `id` again at `target`.
async fn redeliver(op: &OperatorProcess, token: &str, target: &str, id: &str) -> (u16, Value) {
    let body = json!({ "eventId": id, "client": "rp-a" });
    manage(op, token, &format!("{target}/redeliver"), body).await
}

fn ids(got: &[crate::support::receiver::Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.body["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Nothing more than `n` requests reach `path` for a while.
async fn stays_at(rx: &Receiver, path: &str, n: usize) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = rx.received_on(path);
    assert_eq!(got.len(), n, "unexpected requests: {:?}", ids(&got));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_and_replay_send_again_only_what_was_asked() {
    let cp = ControlPlane::shared();
    let op = shared().await;
    let ns = op.scope.namespace(cp, "replay", "rp-a,rp-b").await;
    let client = cp.client().await.unwrap();
    let rx = Receiver::start(Some(WHSEC)).await;
    subscription(&client, &ns.name, "hook", json!({
        "url": rx.url("hook"), "clientId": "rp-a", "events": ["vehicle.processed", "vehicle.created"],
    }))
    .await;
    let target = format!("/v1/targets/whs/{}/hook", ns.name);

    // Redeliver: the receiver gets the event twice, with the same webhook-id.
    ingest(
        &op.op,
        vec![event("evt-rd-1", "rp-a", "vehicle.processed", "veh-0")],
    )
    .await;
    rx.wait_for("hook", 1).await;
    let (status, body) = redeliver(&op.op, OPS, &target, "evt-rd-1").await;
    assert_eq!((status, body["queued"].as_u64()), (202, Some(1)), "{body}");
    let got = rx.wait_for("hook", 2).await;
    assert_eq!(ids(&got), ["evt-rd-1", "evt-rd-1"]);
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    // A retry of a delivery log entry: the same event to the same target, a third time.
    let log = reqwest::Client::new()
        .get(op.op.url("/v1/deliveries?event=evt-rd-1&client=rp-a"))
        .bearer_auth(CLIENT_A)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let log: Value = serde_json::from_slice(&log).unwrap();
    let entry = log["entries"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = manage(
        &op.op,
        CLIENT_B,
        &format!("/v1/deliveries/{entry}/retry"),
        json!({}),
    )
    .await;
    assert_eq!(status, 404, "another client's entry");
    let (status, body) = manage(
        &op.op,
        CLIENT_A,
        &format!("/v1/deliveries/{entry}/retry"),
        json!({}),
    )
    .await;
    assert_eq!((status, body["queued"].as_u64()), (202, Some(1)), "{body}");
    let got = rx.wait_for("hook", 3).await;
    assert_eq!(ids(&got), ["evt-rd-1", "evt-rd-1", "evt-rd-1"]);
    assert_eq!(got[0].headers["webhook-id"], got[2].headers["webhook-id"]);
    // An event that was never accepted, and one the target does not take.
    let (status, body) = redeliver(&op.op, OPS, &target, "evt-never").await;
    assert_eq!(status, 404, "{body}");
    ingest(
        &op.op,
        vec![event("evt-rd-user", "rp-a", "user.created", "veh-0")],
    )
    .await;
    let (status, body) = redeliver(&op.op, OPS, &target, "evt-rd-user").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("not_taken")),
        "{body}"
    );

    // A window: two vehicles, three events each, of two types.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let since = k8s_openapi::jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let window = [
        ("evt-w-a1", "vehicle.created", "veh-a"),
        ("evt-w-b1", "vehicle.processed", "veh-b"),
        ("evt-w-a2", "vehicle.processed", "veh-a"),
        ("evt-w-b2", "vehicle.created", "veh-b"),
        ("evt-w-a3", "vehicle.processed", "veh-a"),
        ("evt-w-b3", "vehicle.processed", "veh-b"),
    ];
    for (id, ty, veh) in window {
        ingest(&op.op, vec![event(id, "rp-a", ty, veh)]).await;
    }
    rx.wait_for("hook", 9).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let until = k8s_openapi::jiff::Timestamp::now();
    // After the window: not replayed.
    ingest(
        &op.op,
        vec![event("evt-after", "rp-a", "vehicle.processed", "veh-a")],
    )
    .await;
    rx.wait_for("hook", 10).await;

    // Another client's token: the same 404 as a target that does not exist, nothing sent.
    for (action, body) in [
        (
            "redeliver",
            json!({ "eventId": "evt-rd-1", "client": "rp-a" }),
        ),
        (
            "replay",
            json!({ "since": since.to_string(), "until": until.to_string() }),
        ),
        ("test", json!({})),
    ] {
        let (status, answer) = manage(&op.op, CLIENT_B, &format!("{target}/{action}"), body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (404, Some("not_found")),
            "{action}: {answer}"
        );
        let (status, _) = manage(
            &op.op,
            CLIENT_B,
            &format!("/v1/targets/whs/{}/nope/{action}", ns.name),
            json!({}),
        )
        .await;
        assert_eq!(status, 404);
    }
    let (status, _) = manage(
        &op.op,
        "not-a-token-0123456789",
        &format!("{target}/test"),
        json!({}),
    )
    .await;
    assert_eq!(status, 401);
    stays_at(&rx, "hook", 10).await;

    // The client's own token replays the window's vehicle.processed events.
    let (status, body) = manage(
        &op.op,
        CLIENT_A,
        &format!("{target}/replay"),
        json!({
            "since": since.to_string(), "until": until.to_string(), "types": ["vehicle.processed"],
        }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["queued"].as_u64(), body["matched"].as_u64()),
        (Some(4), Some(4)),
        "{body}"
    );
    assert_eq!(body["limit"].as_u64(), Some(100_000));
    let got = rx.wait_for("hook", 14).await;
    let replayed = ids(&got[10..]);
    let mut sorted = replayed.clone();
    sorted.sort();
    assert_eq!(sorted, ["evt-w-a2", "evt-w-a3", "evt-w-b1", "evt-w-b3"]);
    let order = |veh: &str| -> Vec<String> {
        got[10..]
            .iter()
            .filter(|r| r.body["data"]["vehicle"]["id"] == veh)
            .map(|r| r.body["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(order("veh-a"), ["evt-w-a2", "evt-w-a3"]);
    assert_eq!(order("veh-b"), ["evt-w-b1", "evt-w-b3"]);
    assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    stays_at(&rx, "hook", 14).await;

    // Moved to another client: a replay of the whole history sends nothing of rp-a.
    subscription(&client, &ns.name, "hook", json!({
        "url": rx.url("hook"), "clientId": "rp-b", "events": ["vehicle.processed", "vehicle.created"],
    }))
    .await;
    let (status, body) = manage(
        &op.op,
        OPS,
        &format!("{target}/replay"),
        json!({
            "since": "2020-01-01T00:00:00Z",
        }),
    )
    .await;
    assert_eq!((status, body["queued"].as_u64()), (202, Some(0)), "{body}");
    let (status, body) = redeliver(&op.op, OPS, &target, "evt-rd-1").await;
    assert_eq!(status, 409, "{body}");
    // rp-a's token no longer sees it.
    let (status, _) = manage(
        &op.op,
        CLIENT_A,
        &format!("{target}/replay"),
        json!({ "since": "2020-01-01T00:00:00Z" }),
    )
    .await;
    assert_eq!(status, 404);
    stays_at(&rx, "hook", 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_send_returns_the_receivers_answer_or_a_timeout() {
    let cp = ControlPlane::shared();
    let op = shared().await;
    let ns = op.scope.namespace(cp, "testsend", "rp-a").await;
    let client = cp.client().await.unwrap();
    let rx = Receiver::start(Some(WHSEC)).await;
    rx.script(
        "ok",
        vec![Reply::Body(201, r#"{"ok":true,"ticket":"T-1"}"#)],
    );
    rx.script("slow", vec![Reply::Hang(Duration::from_secs(20))]);
    subscription(&client, &ns.name, "ok", json!({
        "url": rx.url("ok"), "clientId": "rp-a", "events": ["vehicle.processed"], "suspend": true,
    }))
    .await;
    subscription(&client, &ns.name, "slow", json!({
        "url": rx.url("slow"), "clientId": "rp-a", "events": ["vehicle.processed"], "timeoutSeconds": 2,
    }))
    .await;

    // Suspended, still testable: an explicit request.
    let (status, body) = manage(
        &op.op,
        CLIENT_A,
        &format!("/v1/targets/webhooksubscription/{}/ok/test", ns.name),
        json!({ "type": "vehicle.created" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "delivered", "{body}");
    assert_eq!(body["httpStatus"], 201, "{body}");
    assert!(body["durationMs"].as_u64().is_some(), "{body}");
    let got = rx.wait_for("ok", 1).await;
    assert_eq!(got[0].signature_ok, Some(true));
    assert_eq!(got[0].body["clientId"], "rp-a");
    assert_eq!(got[0].body["type"], "vehicle.created");
    assert_eq!(got[0].body["id"], body["eventId"]);
    assert_eq!(
        got[0].headers["webhook-id"].to_str().unwrap(),
        body["eventId"].as_str().unwrap()
    );
    let ok_answer = body;

    // A hanging receiver: the target's 2 s timeout, not the caller's patience.
    let started = Instant::now();
    let (status, body) = manage(
        &op.op,
        OPS,
        &format!("/v1/targets/whs/{}/slow/test", ns.name),
        json!({}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["result"].as_str(), body["reason"].as_str()),
        (Some("failed"), Some("Timeout")),
        "{body}"
    );
    assert_eq!(body["retryable"], true);
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert!(
        body["durationMs"]
            .as_u64()
            .is_some_and(|ms| (1900..6000).contains(&ms)),
        "{body}"
    );

    // Not a delivery: nothing counted on the resource.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for name in ["ok", "slow"] {
        let s = api.get(name).await.unwrap().status.unwrap();
        assert_eq!((s.delivered, s.failed, s.pending), (0, 0, 0), "{name}");
    }
    // A bad type is named.
    let (status, body) = manage(
        &op.op,
        OPS,
        &format!("/v1/targets/whs/{}/ok/test", ns.name),
        json!({ "type": "vehicle.exploded" }),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("type")),
        "{body}"
    );
    // The receiver's own answer comes back.
    assert_eq!(
        ok_answer["response"], r#"{"ok":true,"ticket":"T-1"}"#,
        "{ok_answer}"
    );
}

/// `status.lastReplay` of `name` once its id is `id`.
async fn last_replay(api: &Api<WebhookSubscription>, name: &str, id: &str) -> Value {
    let w = wait_for(api, name, &format!("lastReplay {id}"), |w| {
        w.status
            .as_ref()
            .and_then(|s| s.last_replay.as_ref())
            .is_some_and(|l| l.id == id)
    })
    .await;
    serde_json::to_value(w.status.unwrap().last_replay.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_replay_is_carried_out_once_per_id() {
    let cp = ControlPlane::shared();
    let Op { op, scope, _dir } = start("spec-replay", &[]).await;
    let ns = scope.namespace(cp, "specreplay", "rp-a").await;
    let client = cp.client().await.unwrap();
    let rx = Receiver::start(Some(WHSEC)).await;
    let spec = |replay: Value| json!({ "url": rx.url("git"), "clientId": "rp-a", "events": ["vehicle.processed"], "replay": replay });
    subscription(&client, &ns.name, "git", spec(Value::Null)).await;
    // Resource times are whole seconds: the window is a little wider than the events (its
    // own operator's store holds no others).
    let second = k8s_openapi::jiff::SignedDuration::from_secs(1);
    let since = k8s_openapi::jiff::Timestamp::now() - second;
    ingest(
        &op,
        vec![
            event("evt-g-1", "rp-a", "vehicle.processed", "veh-g"),
            event("evt-g-2", "rp-a", "vehicle.processed", "veh-g"),
            event("evt-g-other", "rp-a", "vehicle.created", "veh-g"),
        ],
    )
    .await;
    rx.wait_for("git", 2).await;
    let until = k8s_openapi::jiff::Timestamp::now() + second;

    // Applied as from Git: the window goes out again, once.
    let window =
        |id: &str| json!({ "id": id, "since": since.to_string(), "until": until.to_string() });
    subscription(&client, &ns.name, "git", spec(window("ticket-1"))).await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let last = last_replay(&api, "git", "ticket-1").await;
    assert_eq!(last["queued"], 2, "{last}");
    let got = rx.wait_for("git", 4).await;
    assert_eq!(ids(&got[2..]), ["evt-g-1", "evt-g-2"]);
    assert!(got.iter().all(|r| r.signature_ok == Some(true)));
    // Re-reconciles (another spec change) do not repeat it.
    let mut changed = spec(window("ticket-1"));
    changed["maxConcurrency"] = 3.into();
    subscription(&client, &ns.name, "git", changed.clone()).await;
    stays_at(&rx, "git", 4).await;

    // Nor does a restart of the operator (its memory is gone; the status remembers).
    let op = op.restart(cp).await.expect("operator restarted");
    let generation = api.get("git").await.unwrap().metadata.generation;
    wait_for(&api, "git", "reconciled after the restart", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == generation)
    })
    .await;
    ingest(
        &op,
        vec![event("evt-g-3", "rp-a", "vehicle.processed", "veh-g")],
    )
    .await;
    let got = rx.wait_for("git", 5).await;
    assert_eq!(ids(&got[4..]), ["evt-g-3"]);
    stays_at(&rx, "git", 5).await;

    // A new id replays again.
    changed["replay"] = window("ticket-2");
    subscription(&client, &ns.name, "git", changed).await;
    let last = last_replay(&api, "git", "ticket-2").await;
    assert_eq!(last["queued"], 2, "{last}");
    assert!(
        last["at"].as_str().is_some() && last["until"].as_str().is_some(),
        "{last}"
    );
    let got = rx.wait_for("git", 7).await;
    assert_eq!(ids(&got[5..]), ["evt-g-1", "evt-g-2"]);
    stays_at(&rx, "git", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_webhook_tells_the_platform_of_failing_recovered_gone_suspended_resumed_signed() {
    let cp = ControlPlane::shared();
    let platform = Receiver::start(Some(WHSEC)).await;
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{WHSEC}\n")).unwrap();
    let url = platform.url("ops");
    let Op { op, scope, _dir } = start(
        "ops-webhook",
        &[
            "--ops-webhook-url",
            &url,
            "--ops-webhook-secret-file",
            secret.path().to_str().unwrap(),
            "--delivering-failures",
            "1",
        ],
    )
    .await;
    let ns = scope.namespace(cp, "opshook", "rp-a").await;
    let client = cp.client().await.unwrap();
    let rx = Receiver::start(Some(WHSEC)).await;
    // Refused until the platform has heard that delivery is failing, then delivered.
    rx.script("flaky", vec![Reply::Status(503)]);
    subscription(
        &client,
        &ns.name,
        "flaky",
        json!({
            "url": rx.url("flaky"), "clientId": "rp-a", "events": ["vehicle.processed"],
            "retry": { "maxAttempts": 100, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 },
        }),
    )
    .await;
    ingest(
        &op,
        vec![event("evt-ops-1", "rp-a", "vehicle.processed", "veh-o")],
    )
    .await;
    platform.wait_for("ops", 1).await;
    rx.script("flaky", vec![Reply::Status(200)]);
    let got = platform.wait_for("ops", 2).await;
    assert_eq!(rx.received_on("flaky").last().map(|r| r.status), Some(200));
    let types: Vec<&str> = got
        .iter()
        .map(|r| r.body["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["target.delivery_failing", "target.recovered"],
        "{got:#?}"
    );
    for r in &got {
        assert_eq!(
            r.signature_ok,
            Some(true),
            "verified by standardwebhooks: {r:?}"
        );
        assert_eq!(
            r.body["target"],
            json!({ "kind": "webhooksubscription", "namespace": ns.name, "name": "flaky" })
        );
        assert!(r.body["at"].as_str().is_some() && r.body["reason"].as_str().is_some());
    }
    assert_eq!(got[0].body["reason"], "DeliveryFailing");
    assert_eq!(got[1].body["reason"], "Delivered");
    assert_ne!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);

    // The receiver says 410: the target is held, and the platform hears it.
    rx.script("flaky", vec![Reply::Status(410)]);
    ingest(
        &op,
        vec![event("evt-ops-2", "rp-a", "vehicle.processed", "veh-o")],
    )
    .await;
    let gone = ops_signal(&platform, "target.gone").await;
    assert_eq!(gone.body["reason"], "ReceiverGone");
    // Suspended from Git (which also lifts the 410 hold): heard too.
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "flaky",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "suspend": true } })),
    )
    .await
    .unwrap();
    let suspended = ops_signal(&platform, "target.suspended").await;
    assert_eq!(suspended.body["reason"], "Suspended");
    // And resumed.
    rx.script("flaky", vec![Reply::Status(200)]);
    api.patch(
        "flaky",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await
    .unwrap();
    let resumed = ops_signal(&platform, "target.resumed").await;
    assert_eq!(resumed.body["reason"], "Ready");
    for r in [&gone, &suspended, &resumed] {
        assert_eq!(
            r.signature_ok,
            Some(true),
            "verified by standardwebhooks: {r:?}"
        );
        assert_eq!(r.body["target"]["name"], "flaky");
    }
}

/// The first signal of type `ty` the platform got, waiting up to 30 s for it.
async fn ops_signal(platform: &Receiver, ty: &str) -> crate::support::receiver::Received {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = platform
            .received_on("ops")
            .into_iter()
            .find(|r| r.body["type"] == ty)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {ty} signal; got {:?}",
            platform
                .received_on("ops")
                .iter()
                .map(|r| r.body["type"].clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client replaying its history may fill half the backlog bound, never all of it: past that
/// its replay is cut short (saying where to go on from) and redeliveries are refused with
/// 429, while every client's ingest still has its room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_leave_ingest_its_half_of_the_backlog() {
    let o = start("replay-backlog", &["--max-pending-deliveries", "4"]).await;
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = o.scope.namespace(cp, "rpb", "rp-a").await;
    let rx = Receiver::start(Some(WHSEC)).await;
    subscription(
        &client,
        &ns.name,
        "crm",
        json!({ "url": rx.url("crm"), "clientId": "rp-a", "events": ["vehicle.processed"],
                "retry": { "maxAttempts": 50, "initialBackoffSeconds": 60, "maxBackoffSeconds": 60 } }),
    )
    .await;
    let since = k8s_openapi::jiff::Timestamp::now().to_string();
    let events: Vec<Value> = (1..=3)
        .map(|i| event(&format!("bl-{i}"), "rp-a", "vehicle.processed", "veh-bl"))
        .collect();
    ingest(&o.op, events).await;
    rx.wait_for("crm", 3).await;
    // From now on the receiver fails (and the next attempt is a minute away): what is
    // queued again stays pending.
    rx.script("crm", vec![Reply::Status(503); 20]);
    let target = format!("/v1/targets/webhooksubscription/{}/crm", ns.name);

    // Half of 4 is 2: the first two of the window are queued, the answer says where it
    // stopped.
    let (status, body) = manage(
        &o.op,
        CLIENT_A,
        &format!("{target}/replay"),
        json!({ "since": since }),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], 2, "{body}");
    assert_eq!(body["backlogFull"], true, "{body}");
    assert_eq!(body["truncated"], true, "{body}");
    assert!(body["stoppedAt"].is_string(), "{body}");

    // No more room for replays or redeliveries...
    let (status, body) = redeliver(&o.op, CLIENT_A, &target, "bl-3").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("backlog_full")),
        "{body}"
    );
    let (status, body) = manage(
        &o.op,
        CLIENT_A,
        &format!("{target}/replay"),
        json!({ "since": since }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("backlog_full")),
        "{body}"
    );

    // ...while ingest still takes events: the bound's other half is its own.
    ingest(
        &o.op,
        vec![event("bl-4", "rp-a", "vehicle.processed", "veh-bl-2")],
    )
    .await;
}

/// A test send to an FTP connection uploads the caller's event's images to the real server
/// now and answers what happened; with an image the server cannot be given (a 404 at the
/// image server) it answers the failure and its reason, and the real queue never sees either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_send_to_an_ftp_connection_uploads_now() {
    let Op { op, scope, _dir } = start("replay-ftp-test", &[]).await;
    let cp = ControlPlane::shared();
    let client = cp.client().await.unwrap();
    let ns = scope.namespace(cp, "rpf", "rp-a").await;
    let server = crate::support::ftp_server::FtpServer::start("dealer", "ftp-s3cret")
        .await
        .unwrap();
    let images = Receiver::start(None).await;
    let jpeg = [&[0xff, 0xd8, 0xff, 0xe0][..], &[7u8; 4000], &[0xff, 0xd9]].concat();
    let url = images.serve_file("img/1.jpg", &jpeg, "image/jpeg");
    put_secret(
        &client,
        &ns.name,
        "ftp",
        None,
        json!({ "username": "dealer", "password": "ftp-s3cret" }),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                "metadata": { "name": "dms" },
                "spec": { "host": "127.0.0.1", "port": server.port(), "clientId": "rp-a",
                          "credentialsSecretRef": { "name": "ftp" },
                          "rules": { "baseDirectory": "/in", "fileName": "{vin}_{index:02}.{ext}" } } }),
    )
    .await;
    let api: Api<vehicle_connect::api::FtpConnection> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "dms", "Ready", |c| {
        c.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;
    let target = format!("/v1/targets/ftpconnection/{}/dms/test", ns.name);
    let event = |image_url: &str| {
        json!({ "type": "vehicle.processed", "timestamp": "2026-12-03T10:00:00Z",
                "data": { "vehicle": { "id": "veh-t", "vin": "WVWZZZ1JZXW000077" },
                          "images": [{ "index": 1, "url": image_url, "contentType": "image/jpeg" }] } })
    };

    let (status, answer) = manage(&op, CLIENT_A, &target, json!({ "event": event(&url) })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "delivered", "{answer}");
    assert_eq!(answer["event"]["clientId"], "rp-a");
    let uploaded = std::fs::read(server.path("/in/WVWZZZ1JZXW000077_01.jpg")).unwrap();
    assert_eq!(uploaded, jpeg);

    let missing = images.url("img/none.jpg");
    let (status, answer) =
        manage(&op, CLIENT_A, &target, json!({ "event": event(&missing) })).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"], "failed", "{answer}");
    assert!(
        answer["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{answer}"
    );

    // Neither went through the queue: no log entry, no counters.
    let r = reqwest::Client::new()
        .get(op.url("/v1/deliveries?client=rp-a"))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    let page: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(page["entries"], json!([]), "{page}");
}
