//! ApiConnection end to end: the operator process, the real control plane, and a made-up DMS
//! (`tests/peers/dms`) whose every request is checked by openapi-core against its own OpenAPI
//! document, not by our code. OAuth2 client credentials, remote ids, multipart photos
//! streamed from an image server, a failure in the middle of a chain, token expiry, and
//! mappings refused before any event because they do not fit the DMS's document.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use kube::api::Api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use vc_envtest::ControlPlane;
use vehicle_connect::api::ApiConnection;

use crate::support::dms::Dms;
use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::scope::Scope;

static OPERATOR: OnceLock<Mutex<Option<OperatorProcess>>> = OnceLock::new();
static SCOPE: LazyLock<Scope> = LazyLock::new(|| Scope::new("api-e2e"));

async fn operator_url() -> String {
    let cell = OPERATOR.get_or_init(|| Mutex::new(None));
    let mut g = cell.lock().await;
    if g.is_none() {
        let cp = ControlPlane::shared();
        cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
            .await
            .unwrap();
        let dir = cp.dir.join(format!("operator-api-{}", std::process::id()));
        *g = Some(crate::support::process::start(cp, dir, &SCOPE).await);
    }
    g.as_ref().unwrap().url("")
}

/// The bytes of image `n` of vehicle `v`: different per image, a few hundred KiB.
fn image_bytes(v: &str, n: u32) -> Vec<u8> {
    let seed = format!("{v}-{n}");
    let mut out = Vec::with_capacity(300_000);
    let mut h = Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < 300_000 {
        out.extend_from_slice(&h);
        h = Sha256::digest(&h).to_vec();
    }
    out
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves `/img/{vehicle}/{n}.jpg` on loopback.
async fn image_server() -> u16 {
    let app = Router::new().route(
        "/img/{v}/{file}",
        get(
            |axum::extract::Path((v, file)): axum::extract::Path<(String, String)>| async move {
                let n: u32 = file.trim_end_matches(".jpg").parse().unwrap_or(0);
                ([("content-type", "image/jpeg")], image_bytes(&v, n))
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

struct Setup {
    client_id: String,
    ns: String,
    client: kube::Client,
    api: Api<ApiConnection>,
    dms: Dms,
    base: String,
    img_port: u16,
}

async fn setup(prefix: &str) -> Setup {
    setup_in(&SCOPE, operator_url().await, prefix).await
}

/// A namespace of `scope` with the DMS and its Secrets, for the operator at `base`.
async fn setup_in(scope: &Scope, base: String, prefix: &str) -> Setup {
    let cp = ControlPlane::shared();
    let client_id = format!("dealer-{prefix}");
    let ns = scope.namespace(cp, prefix, &client_id).await;
    let client = cp.client().await.unwrap();
    let dms = Dms::start("vc-client", "vc-secret-123", None).await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "dms-oauth" },
                "stringData": { "client-id": dms.client_id(), "client-secret": dms.client_secret() } }),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "dms-openapi" },
                "data": { "openapi.yaml": dms.openapi_yaml() } }),
    )
    .await;
    Setup {
        client_id,
        ns: ns.name.clone(),
        api: Api::namespaced(client.clone(), &ns.name),
        client,
        dms,
        base,
        img_port: image_server().await,
    }
}

/// The DMS mapping: create with the remote id captured, update, processed = update to
/// `ready` then one multipart photo per image, delete.
fn dms_spec(s: &Setup) -> Value {
    let vehicle_body = |status: &str| {
        format!(
            r#"{{ "vin": {{{{ vehicle.vin }}}}, "make": {{{{ vehicle.make }}}}, "model": {{{{ vehicle.model }}}}, "year": {{{{ vehicle.year }}}}, "stockNumber": {{{{ vehicle.stockNumber }}}}, "status": "{status}" }}"#
        )
    };
    json!({
        "clientId": s.client_id,
        "events": ["vehicle.created", "vehicle.updated", "vehicle.processed", "vehicle.deleted"],
        "baseUrl": s.dms.base_url(),
        "auth": { "oauth2": { "tokenUrl": s.dms.token_url(), "clientSecretRef": { "name": "dms-oauth" } } },
        "openapi": { "configMapRef": { "name": "dms-openapi" } },
        "timeoutSeconds": 5,
        "retry": { "maxAttempts": 6, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 },
        "mappings": [
            { "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": "/v1/vehicles",
                  "body": vehicle_body("draft"), "expect": [201],
                  "capture": { "id": { "jsonPointer": "/id" } } } ] },
            { "events": ["vehicle.updated"], "requests": [
                { "name": "update", "method": "PUT", "path": "/v1/vehicles/{{ remote.id }}",
                  "body": vehicle_body("draft") } ] },
            { "events": ["vehicle.processed"], "requests": [
                { "name": "ready", "method": "PUT", "path": "/v1/vehicles/{{ remote.id }}",
                  "body": vehicle_body("ready") },
                { "name": "photo", "method": "POST", "path": "/v1/vehicles/{{ remote.id }}/photos",
                  "forEachImage": { "send": "multipart", "fields": { "position": "{{ image.index }}" } },
                  "expect": [201] } ] },
            { "events": ["vehicle.deleted"], "requests": [
                { "name": "delete", "method": "DELETE", "path": "/v1/vehicles/{{ remote.id }}",
                  "expect": [204] } ] }
        ]
    })
}

impl Setup {
    async fn connect(&self, name: &str, spec: Value) {
        apply_value(
            &self.client,
            &self.ns,
            json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "ApiConnection",
                    "metadata": { "name": name }, "spec": spec }),
        )
        .await;
    }

    async fn ready_condition(&self, name: &str) -> (String, String, String) {
        let c = wait_for(&self.api, name, "a Ready condition", |c| {
            c.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some()
        })
        .await;
        let st = c.status.unwrap();
        let cond = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        (cond.status, cond.reason, cond.message)
    }

    fn event(&self, id: &str, ty: &str, vehicle: &str, images: u32) -> Value {
        let imgs: Vec<Value> = (1..=images)
            .map(|n| {
                let b = image_bytes(vehicle, n);
                json!({ "index": n, "contentType": "image/jpeg", "bytes": b.len(), "sha256": sha256_hex(&b),
                        "url": format!("http://127.0.0.1:{}/img/{vehicle}/{n}.jpg", self.img_port) })
            })
            .collect();
        json!({
            "id": id, "type": ty, "timestamp": "2026-11-27T10:15:30Z", "clientId": self.client_id,
            "data": {
                "vehicle": { "id": vehicle, "vin": "WVWZZZ1JZXW000001", "make": "Volkswagen \"VW\"",
                             "model": "Golf\n8", "year": 2021, "stockNumber": "A1234" },
                "images": imgs
            }
        })
    }

    async fn post(&self, body: Value) {
        self.post_to(&self.base, body).await
    }

    /// Posts to the operator at `base`.
    async fn post_to(&self, base: &str, body: Value) {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/events"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            202,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }

    /// The client's id of the one vehicle the DMS holds.
    async fn only_vehicle_id(&self) -> String {
        let state = self.dms.state().await;
        let vehicles = state["vehicles"].as_object().expect("vehicles");
        assert_eq!(vehicles.len(), 1, "{state}");
        vehicles.keys().next().expect("one vehicle").clone()
    }

    async fn delivered(&self, name: &str, n: u64) -> vehicle_connect::api::ApiConnectionStatus {
        wait_for(&self.api, name, &format!("delivered={n}"), |c| {
            c.status.as_ref().is_some_and(|s| s.delivered >= n)
        })
        .await
        .status
        .unwrap()
    }
}

/// Requests the DMS logged for `/v1` (not the token endpoint), as (method, path, status).
fn v1_log(requests: &[Value]) -> Vec<(String, String, u64)> {
    requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v1/")))
        .map(|r| {
            (
                r["method"].as_str().unwrap_or_default().to_string(),
                r["path"].as_str().unwrap_or_default().to_string(),
                r["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_vehicle_lifecycle_drives_the_dms_with_its_own_ids() {
    let s = setup("lifecycle").await;
    s.connect("dms", dms_spec(&s)).await;
    let (status, reason, message) = s.ready_condition("dms").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Ready"),
        "{message}"
    );
    assert!(message.contains("OpenAPI document"), "{message}");

    s.post(s.event("evt-c1", "vehicle.created", "veh-1", 0))
        .await;
    s.post(s.event("evt-p1", "vehicle.processed", "veh-1", 2))
        .await;
    s.delivered("dms", 2).await;

    let state = s.dms.state().await;
    let vehicles = state["vehicles"].as_object().unwrap();
    assert_eq!(vehicles.len(), 1, "{state}");
    let (id, v) = vehicles.iter().next().unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(
        v["make"], "Volkswagen \"VW\"",
        "values reach the API as JSON strings"
    );
    assert_eq!(v["model"], "Golf\n8");
    let photos = v["photos"].as_array().unwrap();
    assert_eq!(photos.len(), 2, "{v}");
    for p in photos {
        let n = p["position"].as_u64().unwrap() as u32;
        assert_eq!(p["sha256"], sha256_hex(&image_bytes("veh-1", n)));
        assert_eq!(p["contentType"], "image/jpeg");
    }

    s.post(s.event("evt-d1", "vehicle.deleted", "veh-1", 0))
        .await;
    let st = s.delivered("dms", 3).await;
    assert_eq!(st.failed, 0);
    assert_eq!(st.last_delivery.unwrap().event_id, "evt-d1");
    let state = s.dms.state().await;
    assert_eq!(state["vehicles"][id]["deleted"], true, "{state}");

    let requests = s.dms.requests().await;
    for r in &requests {
        assert_eq!(r["valid"], true, "openapi-core refused a request: {r}");
    }
    let log = v1_log(&requests);
    let want = [
        ("POST", "/v1/vehicles".to_string(), 201),
        ("PUT", format!("/v1/vehicles/{id}"), 200),
        ("POST", format!("/v1/vehicles/{id}/photos"), 201),
        ("POST", format!("/v1/vehicles/{id}/photos"), 201),
        ("DELETE", format!("/v1/vehicles/{id}"), 204),
    ];
    let got: Vec<_> = log
        .iter()
        .map(|(m, p, c)| (m.as_str(), p.clone(), *c))
        .collect();
    assert_eq!(got, want);
    let keys: std::collections::BTreeSet<_> = requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v1/")))
        .map(|r| r["idempotencyKey"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        keys.len(),
        5,
        "one distinct idempotency key per request: {keys:?}"
    );
    assert_eq!(
        state["tokensIssued"], 1,
        "the token is cached across requests"
    );
}

#[tokio::test]
async fn a_failure_mid_chain_resumes_at_the_failed_photo_and_an_expired_token_is_renewed() {
    let s = setup("resume").await;
    s.connect("dms", dms_spec(&s)).await;
    let (status, _, message) = s.ready_condition("dms").await;
    assert_eq!(status, "True", "{message}");
    s.post(s.event("evt-c1", "vehicle.created", "veh-7", 0))
        .await;
    s.delivered("dms", 1).await;
    let id = s.only_vehicle_id().await;

    // The token the operator holds stops working; the second photo fails once with a 500.
    s.dms.expire_tokens().await;
    s.dms
        .fail_after("POST", &format!("/v1/vehicles/{id}/photos"), 500, 1, 1)
        .await;
    s.post(s.event("evt-p7", "vehicle.processed", "veh-7", 3))
        .await;
    let st = s.delivered("dms", 2).await;
    assert_eq!(st.failed, 0);

    let requests = s.dms.requests().await;
    let log = v1_log(&requests);
    let puts = log
        .iter()
        .filter(|(m, _, c)| m == "PUT" && *c == 200)
        .count();
    assert_eq!(
        puts, 1,
        "the chain resumed after the PUT, not before it: {log:?}"
    );
    let photos_ok = log
        .iter()
        .filter(|(m, p, c)| m == "POST" && p.ends_with("/photos") && *c == 201)
        .count();
    assert_eq!(photos_ok, 3, "{log:?}");
    let photo_500s: Vec<_> = log
        .iter()
        .filter(|(m, p, c)| m == "POST" && p.ends_with("/photos") && *c == 500)
        .collect();
    assert_eq!(photo_500s.len(), 1, "{log:?}");
    let photo_requests = log
        .iter()
        .filter(|(_, p, _)| p.ends_with("/photos"))
        .count();
    assert_eq!(
        photo_requests, 4,
        "photo 1 was not sent again after photo 2 failed: {log:?}"
    );
    let state = s.dms.state().await;
    assert_eq!(
        state["vehicles"][&id]["photos"].as_array().unwrap().len(),
        3
    );
    assert!(
        requests.iter().any(|r| r["status"] == 401),
        "the expired token was refused once"
    );
    assert_eq!(state["tokensIssued"], 2, "a new token after the 401");
}

#[tokio::test]
async fn mappings_that_do_not_fit_the_dms_document_are_refused_before_any_event() {
    let s = setup("mismatch").await;
    let mut spec = dms_spec(&s);
    spec["mappings"][0]["requests"][0]["path"] = json!("/v1/vehicle");
    s.connect("wrong-path", spec).await;
    let (status, reason, message) = s.ready_condition("wrong-path").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SpecMismatch")
    );
    assert!(message.contains("create"), "names the request: {message}");

    let mut spec = dms_spec(&s);
    spec["mappings"][0]["requests"][0]["body"] =
        json!(r#"{ "vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "status": "draft" }"#);
    s.connect("missing-model", spec).await;
    let (status, reason, message) = s.ready_condition("missing-model").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SpecMismatch")
    );
    assert!(
        message.contains("model"),
        "names the missing property: {message}"
    );

    let mut spec = dms_spec(&s);
    spec["mappings"][1]["requests"][0]["path"] = json!("/v1/vehicles/{{ remote.id ");
    s.connect("bad-template", spec).await;
    let (status, reason, message) = s.ready_condition("bad-template").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "InvalidTemplate")
    );
    assert!(
        message.contains("update") && message.contains("line 1"),
        "{message}"
    );

    // Events for this client are held, not sent: the DMS saw nothing but its own checks.
    s.post(s.event("evt-m1", "vehicle.created", "veh-9", 0))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        v1_log(&s.dms.requests().await).is_empty(),
        "nothing reached the DMS"
    );
}

/// `vehicle-connect render` lists what an event becomes without sending anything; a value
/// that would break JSON or escape a path segment cannot.
#[test]
fn render_lists_the_requests_of_an_event_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut event: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/events/vehicle.processed.json"),
        )
        .unwrap(),
    )
    .unwrap();
    event["data"]["vehicle"]["make"] = json!("VW\", \"status\": \"sold");
    let event_path = dir.path().join("event.json");
    std::fs::write(&event_path, event.to_string()).unwrap();
    let out = std::process::Command::new(crate::support::process::binary())
        .args(["render", "--connection"])
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/api/apiconnection-autodms.yaml"),
        )
        .arg("--event")
        .arg(&event_path)
        .args(["--remote", "id=dms/../7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The create step is skipped: the vehicle is known as dms/../7, kept as one segment.
    assert!(
        stdout.contains("PUT http://127.0.0.1:8789/v1/vehicles/dms%2F..%2F7"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("POST http://127.0.0.1:8789/v1/vehicles\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#""make": "VW\", \"status\": \"sold""#),
        "{stdout}"
    );
    assert_eq!(stdout.matches("/photos").count(), 3, "{stdout}");
}

/// The OpenAPI document is watched: a connection waiting for its ConfigMap becomes Ready when
/// it appears, and a changed document that no longer fits is SpecMismatch, within seconds
/// (not at the next periodic recheck).
#[tokio::test]
async fn a_changed_openapi_document_is_rechecked() {
    let s = setup("openapi-watch").await;
    let mut spec = dms_spec(&s);
    spec["openapi"] = json!({ "configMapRef": { "name": "later" } });
    s.connect("dms", spec).await;
    let (status, reason, message) = s.ready_condition("dms").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConfigMapNotFound"),
        "{message}"
    );

    let put_doc = |doc: String| {
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "later" },
                "data": { "openapi.yaml": doc } })
    };
    apply_value(&s.client, &s.ns, put_doc(s.dms.openapi_yaml())).await;
    let started = std::time::Instant::now();
    wait_for(&s.api, "dms", "Ready after the ConfigMap appeared", |c| {
        c.status
            .as_ref()
            .and_then(|st| condition(&st.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // The client renames its photos endpoint: the mapping no longer fits.
    let renamed = s.dms.openapi_yaml().replace("/photos:", "/pictures:");
    assert_ne!(renamed, s.dms.openapi_yaml());
    apply_value(&s.client, &s.ns, put_doc(renamed)).await;
    let c = wait_for(&s.api, "dms", "SpecMismatch after the change", |c| {
        c.status
            .as_ref()
            .and_then(|st| condition(&st.conditions, "Ready"))
            .is_some_and(|c| c.1 == "SpecMismatch")
    })
    .await;
    let msg = c
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("photo"), "names the request: {msg}");
}

/// Two replicas on one JetStream log: a vehicle created at the client through one replica is
/// updated through the other after the first dies, at the id the client gave it (the captured
/// remote id is shared in the KV bucket `vc-state`, not kept in the dead replica's store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_whose_partition_moves_to_another_replica_keeps_its_remote_id() {
    use crate::support::process::{replica_launch, start_launch};
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let nats = vc_envtest::nats::NatsCluster::single()
        .await
        .expect("nats-server");
    let scope = Scope::new("api-replicas");
    let dir = tempfile::tempdir().unwrap();
    let replica = |id: &str| replica_launch(&nats.urls(), id);
    let mut a = start_launch(cp, dir.path().join("a"), &scope, replica("replica-a")).await;
    let s = setup_in(&scope, a.url(""), "moved").await;
    s.connect("dms", dms_spec(&s)).await;
    let (status, _, message) = s.ready_condition("dms").await;
    assert_eq!(status, "True", "{message}");
    s.post(s.event("evt-m-c1", "vehicle.created", "veh-m", 0))
        .await;
    s.delivered("dms", 1).await;
    let id = s.only_vehicle_id().await;

    // Replica A dies; B takes every partition once A's lease has run out.
    a.kill();
    let b = start_launch(cp, dir.path().join("b"), &scope, replica("replica-b")).await;
    let r = reqwest::Client::new()
        .post(b.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(
            s.event("evt-m-u1", "vehicle.updated", "veh-m", 0)
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let st = s.delivered("dms", 2).await;
    assert_eq!(st.failed, 0, "{st:?}\n{}", b.log_text());
    let got = v1_log(&s.dms.requests().await);
    assert_eq!(
        got,
        [
            ("POST".to_string(), "/v1/vehicles".to_string(), 201),
            ("PUT".to_string(), format!("/v1/vehicles/{id}"), 200),
        ],
        "replica B must update the vehicle A created, at its id\n{}",
        b.log_text()
    );
}
