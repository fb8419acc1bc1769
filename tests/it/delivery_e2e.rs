//! Events in, webhooks out: the operator process, the real control plane, real receivers.
//! Every delivery's signature is checked by the `standardwebhooks` crate.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::Scope;
use base64::Engine;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One operator process for these tests (two would both deliver), serving this scope.
static OPERATOR: OnceLock<Mutex<Option<OperatorProcess>>> = OnceLock::new();
static SCOPE: LazyLock<Scope> = LazyLock::new(|| Scope::new("delivery-e2e"));

async fn operator_url() -> String {
    let cell = OPERATOR.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().await;
    if g.is_none() {
        let cp = ControlPlane::shared();
        cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
            .await
            .unwrap();
        let dir = cp.dir.join(format!("operator-{}", std::process::id()));
        *g = Some(crate::support::process::start(cp, dir, &SCOPE).await);
    }
    g.as_ref().unwrap().url("")
}

pub(crate) struct Setup {
    /// Each test has its own client, so tests running side by side never see each
    /// other's events (routing is by client across namespaces).
    pub(crate) client_id: String,
    ns: String,
    client: kube::Client,
    api: Api<WebhookSubscription>,
    pub(crate) receiver: Receiver,
    base: String,
}

/// A namespace allowing `dealer-<prefix>`, Secrets (`basic`, `signing` with [`WHSEC`]), a
/// receiver, and the operator.
pub(crate) async fn setup(prefix: &str) -> Setup {
    let base = operator_url().await;
    let cp = ControlPlane::shared();
    let client_id = format!("dealer-{prefix}");
    let ns = SCOPE.namespace(cp, prefix, &client_id).await;
    let client = cp.client().await.unwrap();
    for (name, data) in [
        ("basic", json!({ "username": "dms", "password": "s3cret" })),
        ("signing", json!({ "secret": WHSEC })),
    ] {
        apply_value(&client, &ns.name, json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": data })).await;
    }
    let receiver = Receiver::start(Some(WHSEC)).await;
    let api = Api::namespaced(client.clone(), &ns.name);
    Setup {
        client_id,
        ns: ns.name.clone(),
        client,
        api,
        receiver,
        base,
    }
}

impl Setup {
    fn event(&self, id: &str, ty: &str, vehicle: &str, user: &str) -> Value {
        event_of(&self.client_id, id, ty, vehicle, user)
    }

    /// Creates a subscription to `path` on the receiver and waits until it is Ready.
    pub(crate) async fn subscribe(&self, name: &str, path: &str, extra: Value) {
        let mut spec = json!({
            "url": self.receiver.url(path), "clientId": self.client_id,
            "events": ["vehicle.processed", "vehicle.deleted"],
            "auth": { "basic": { "secretRef": { "name": "basic" } } },
            "signing": { "secretRef": { "name": "signing" } },
            "headers": { "X-Dealer": "dealer-1" },
            "timeoutSeconds": 2,
            "retry": { "maxAttempts": 4, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 }
        });
        merge(&mut spec, extra);
        apply_value(
            &self.client,
            &self.ns,
            json!({
                "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                "metadata": { "name": name }, "spec": spec
            }),
        )
        .await;
        wait_for(&self.api, name, "Ready", |w| {
            w.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.0 == "True")
        })
        .await;
    }

    pub(crate) async fn post(&self, body: Value) -> (u16, Value) {
        post_raw(
            &self.base,
            Some(TOKEN),
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }
}

fn merge(a: &mut Value, b: Value) {
    if let (Value::Object(a), Value::Object(b)) = (a, b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

async fn post_raw(base: &str, token: Option<&str>, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .header("content-type", ct)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn event_of(client: &str, id: &str, ty: &str, vehicle: &str, user: &str) -> Value {
    json!({
        "id": id, "type": ty, "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": user,
        "data": { "vehicle": { "id": vehicle, "vin": "WVWZZZ1JZXW000001" } }
    })
}

#[tokio::test]
async fn signed_delivery_with_basic_auth_and_status() {
    let s = setup("signed").await;
    s.subscribe("dms", "dms", json!({})).await;
    let (code, body) = s
        .post(s.event("evt-signed-1", "vehicle.processed", "veh-1", "u-1"))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["events"][0]["status"], "accepted");
    assert_eq!(body["events"][0]["deliveries"], 1);

    let got = s.receiver.wait_for("dms", 1).await;
    let r = &got[0];
    assert_eq!(
        r.signature_ok,
        Some(true),
        "standardwebhooks rejected the signature"
    );
    assert_eq!(r.headers["webhook-id"], "evt-signed-1");
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["x-dealer"], "dealer-1");
    let basic = base64::engine::general_purpose::STANDARD.encode("dms:s3cret");
    assert_eq!(
        r.headers["authorization"],
        format!("Basic {basic}").as_str()
    );
    assert_eq!(r.body["id"], "evt-signed-1");
    assert_eq!(r.body["data"]["vehicle"]["id"], "veh-1");

    let w = wait_for(&s.api, "dms", "delivered=1 on status", |w| {
        w.status.as_ref().is_some_and(|st| st.delivered == 1)
    })
    .await;
    let st = w.status.unwrap();
    assert_eq!(st.last_delivery.unwrap().event_id, "evt-signed-1");
    assert_eq!(st.pending, 0);
    assert!(
        condition(&st.conditions, "Ready").is_some_and(|c| c.0 == "True"),
        "counters must not erase conditions"
    );
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_nothing_is_stored() {
    let s = setup("badinput").await;
    s.subscribe("hook", "bad", json!({})).await;
    let good = s.event("evt-bad-1", "vehicle.processed", "veh-1", "u-1");

    let (c, b) = post_raw(
        &s.base,
        Some(TOKEN),
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(
        (c, b["error"].as_str()),
        (400, Some("invalid_event")),
        "{b}"
    );
    let mut e = good.clone();
    e["type"] = json!("vehicle.exploded");
    let (c, b) = s.post(e).await;
    assert_eq!((c, b["field"].as_str()), (400, Some("type")), "{b}");
    let mut e = good.clone();
    e.as_object_mut().unwrap().remove("clientId");
    let (c, b) = s.post(json!([good.clone(), e])).await;
    assert_eq!((c, b["field"].as_str()), (400, Some("[1].clientId")), "{b}");
    let (c, b) = post_raw(
        &s.base,
        Some(TOKEN),
        "application/json",
        vec![b' '; 2 * 1024 * 1024],
    )
    .await;
    assert_eq!((c, b["error"].as_str()), (413, Some("too_large")), "{b}");
    let (c, b) = post_raw(
        &s.base,
        Some("wrong-token"),
        "application/json",
        good.to_string().into_bytes(),
    )
    .await;
    assert_eq!((c, b["error"].as_str()), (401, Some("unauthorized")), "{b}");
    let (c, _) = post_raw(
        &s.base,
        None,
        "application/json",
        good.to_string().into_bytes(),
    )
    .await;
    assert_eq!(c, 401);
    let (c, b) = post_raw(
        &s.base,
        Some(TOKEN),
        "text/plain",
        good.to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (c, b["error"].as_str()),
        (415, Some("unsupported_media_type")),
        "{b}"
    );

    // None of those stored the event: the same id is still new, and delivered once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.receiver.received_on("bad").is_empty(),
        "a refused request was delivered"
    );
    let (c, b) = s.post(good.clone()).await;
    assert_eq!(
        (c, b["events"][0]["status"].as_str()),
        (202, Some("accepted")),
        "{b}"
    );
    // A repeated id is accepted once and delivered once.
    let (c, b) = s.post(good).await;
    assert_eq!(
        (c, b["events"][0]["status"].as_str()),
        (202, Some("duplicate")),
        "{b}"
    );
    s.receiver.wait_for("bad", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.receiver.received_on("bad").len(), 1);
}

#[tokio::test]
async fn retries_honour_policy_retry_after_and_permanent_errors() {
    let s = setup("retries").await;
    s.receiver.script(
        "flaky",
        vec![Reply::Status(500), Reply::Status(503), Reply::Status(200)],
    );
    s.receiver.script(
        "later",
        vec![Reply::StatusWithRetryAfter(429, 2), Reply::Status(200)],
    );
    s.receiver.script("bad", vec![Reply::Status(400)]);
    s.receiver.script(
        "slow",
        vec![Reply::Hang(Duration::from_secs(5)), Reply::Status(200)],
    );
    for (name, path) in [
        ("flaky", "flaky"),
        ("later", "later"),
        ("bad", "bad"),
        ("slow", "slow"),
    ] {
        s.subscribe(name, path, json!({})).await;
    }
    s.post(s.event("evt-retry-1", "vehicle.processed", "veh-1", "u-1"))
        .await;

    let flaky = s.receiver.wait_for("flaky", 3).await;
    assert!(
        flaky
            .iter()
            .all(|r| r.headers["webhook-id"] == "evt-retry-1"),
        "webhook-id must be stable across retries"
    );
    assert!(flaky.iter().all(|r| r.signature_ok == Some(true)));
    let later = s.receiver.wait_for("later", 2).await;
    let gap = later[1].at - later[0].at;
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 not honoured: {gap:?}"
    );
    let slow = s.receiver.wait_for("slow", 2).await;
    assert!(
        slow[1].at - slow[0].at >= Duration::from_secs(2),
        "the timed-out attempt was retried too early"
    );

    let w = wait_for(&s.api, "bad", "failed=1", |w| {
        w.status.as_ref().is_some_and(|st| st.failed == 1)
    })
    .await;
    let lf = w.status.unwrap().last_failure.unwrap();
    assert_eq!(lf.event_id, "evt-retry-1");
    assert!(lf.message.contains("400"), "{lf:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.receiver.received_on("bad").len(),
        1,
        "a 400 must not be retried"
    );
    wait_for(&s.api, "flaky", "delivered=1", |w| {
        w.status
            .as_ref()
            .is_some_and(|st| st.delivered == 1 && st.consecutive_failures == 0)
    })
    .await;
}

#[tokio::test]
async fn gone_suspends_the_subscription_and_keeps_events() {
    let s = setup("gone").await;
    s.receiver
        .script("gone", vec![Reply::Status(410), Reply::Status(200)]);
    s.subscribe("gone", "gone", json!({})).await;
    s.post(s.event("evt-gone-1", "vehicle.processed", "veh-1", "u-1"))
        .await;
    let w = wait_for(&s.api, "gone", "ReceiverGone", |w| {
        w.status
            .as_ref()
            .and_then(|st| condition(&st.conditions, "Ready"))
            .is_some_and(|c| c.1 == "ReceiverGone")
    })
    .await;
    assert!(
        w.metadata
            .annotations
            .unwrap()
            .contains_key("connect.vehicles.io/receiver-gone")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.receiver.received_on("gone").len(),
        1,
        "nothing is sent while suspended"
    );

    // The hold is in status, with the generation it holds, and only the user can lift it.
    let st = w.status.as_ref().unwrap();
    let held = st.receiver_gone.as_ref().expect("status.receiverGone");
    assert_eq!(Some(held.generation), w.metadata.generation);
    assert_eq!(
        condition(&st.conditions, "Stalled").map(|c| (c.0, c.1)),
        Some(("True".to_string(), "ReceiverGone".to_string()))
    );

    // A spec change Git can carry resumes; the kept event is delivered.
    s.api
        .patch(
            "gone",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "spec": { "resumeAfterGone": "ticket-42" } })),
        )
        .await
        .unwrap();
    let got = s.receiver.wait_for("gone", 2).await;
    assert_eq!(got[1].body["id"], "evt-gone-1");
    wait_for(&s.api, "gone", "Ready, the hold lifted", |w| {
        w.status.as_ref().is_some_and(|st| {
            st.receiver_gone.is_none()
                && condition(&st.conditions, "Ready").is_some_and(|c| c.0 == "True")
                && condition(&st.conditions, "Stalled").is_none()
        }) && !w
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("connect.vehicles.io/receiver-gone"))
    })
    .await;
}

/// A 410 recorded before the hold carried a generation (a bare time in the annotation) is
/// still lifted by removing the annotation, the one-line `kubectl annotate ... -` command.
#[tokio::test]
async fn removing_the_gone_annotation_resumes_too() {
    let s = setup("gone-annot").await;
    s.receiver.script("g2", vec![Reply::Status(200)]);
    s.subscribe("g2", "g2", json!({})).await;
    s.api
        .patch(
            "g2",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({ "metadata": { "annotations": { "connect.vehicles.io/receiver-gone": "2026-01-01T00:00:00Z" } } })),
        )
        .await
        .unwrap();
    wait_for(&s.api, "g2", "ReceiverGone", |w| {
        w.status
            .as_ref()
            .and_then(|st| condition(&st.conditions, "Ready"))
            .is_some_and(|c| c.1 == "ReceiverGone")
    })
    .await;
    s.post(s.event("evt-g2-1", "vehicle.processed", "veh-1", "u-1"))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.receiver.received_on("g2").is_empty(), "sent while held");
    s.api
        .patch("g2", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({ "metadata": { "annotations": { "connect.vehicles.io/receiver-gone": null } } })))
        .await
        .unwrap();
    let got = s.receiver.wait_for("g2", 1).await;
    assert_eq!(got[0].body["id"], "evt-g2-1");
}

#[tokio::test]
async fn per_vehicle_order_with_parallel_vehicles() {
    let s = setup("order").await;
    s.subscribe("ordered", "ordered", json!({ "maxConcurrency": 16 }))
        .await;
    let per_vehicle = 20;
    let vehicles = 50;
    // 1,000 events in batches of 100, vehicles interleaved.
    let mut all = Vec::new();
    for n in 0..per_vehicle {
        for v in 0..vehicles {
            all.push(s.event(
                &format!("evt-ord-{v}-{n:03}"),
                "vehicle.processed",
                &format!("veh-{v}"),
                "u-1",
            ));
        }
    }
    for chunk in all.chunks(100) {
        let (c, b) = s.post(Value::Array(chunk.to_vec())).await;
        assert_eq!(c, 202, "{b}");
    }
    let got = s.receiver.wait_for("ordered", per_vehicle * vehicles).await;
    let mut seen: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in &got {
        assert_eq!(r.signature_ok, Some(true));
        let v = r.body["data"]["vehicle"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        seen.entry(v)
            .or_default()
            .push(r.body["id"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), vehicles);
    for (v, ids) in seen {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "vehicle {v} out of order");
        assert_eq!(ids.len(), per_vehicle, "vehicle {v} duplicated or lost");
    }
}

#[tokio::test]
async fn events_reach_only_matching_subscriptions() {
    let s = setup("filters").await;
    s.subscribe("all", "all", json!({})).await;
    s.subscribe("ana", "ana", json!({ "userIds": ["u-ana"] }))
        .await;
    s.subscribe(
        "deleted",
        "deleted",
        json!({ "events": ["vehicle.deleted"] }),
    )
    .await;
    // Another namespace allowing only dealer-2, with a subscription for dealer-2.
    let cp = ControlPlane::shared();
    let other = SCOPE.namespace(cp, "filters-other", "dealer-2").await;
    apply_value(&s.client, &other.name, json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
        "metadata": { "name": "d2" },
        "spec": { "url": s.receiver.url("d2"), "clientId": "dealer-2", "events": ["vehicle.processed"] }
    }))
    .await;
    let d2: Api<WebhookSubscription> = Api::namespaced(s.client.clone(), &other.name);
    wait_for(&d2, "d2", "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;

    s.post(json!([
        s.event("evt-f-1", "vehicle.processed", "veh-1", "u-bob"),
        s.event("evt-f-2", "vehicle.processed", "veh-2", "u-ana"),
        s.event("evt-f-3", "vehicle.deleted", "veh-3", "u-bob"),
        s.event("evt-f-4", "vehicle.created", "veh-4", "u-ana"),
    ]))
    .await;
    let mut d2ev = s.event("evt-f-5", "vehicle.processed", "veh-5", "u-x");
    d2ev["clientId"] = json!("dealer-2");
    s.post(d2ev).await;

    let ids = |path: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .receiver
            .received_on(path)
            .iter()
            .map(|r| r.body["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    s.receiver.wait_for("all", 3).await;
    s.receiver.wait_for("d2", 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(ids("all"), ["evt-f-1", "evt-f-2", "evt-f-3"]);
    assert_eq!(ids("ana"), ["evt-f-2"]);
    assert_eq!(ids("deleted"), ["evt-f-3"]);
    assert_eq!(ids("d2"), ["evt-f-5"]);
}
