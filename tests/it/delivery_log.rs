//! The delivery log (`GET /v1/deliveries`, `/v1/deliveries/{id}`, `/v1/events/{id}`) of the
//! operator as a real process: real receivers that fail, answer huge bodies or echo the
//! credentials they got, a real FTP server refusing the login; filters, paging, a client
//! token's view, and entries kept across a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vc_envtest::ControlPlane;

use crate::support::ftp_server::FtpServer;
use crate::support::operator::apply_value;
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::scope::Scope;
use crate::trust_delivery::{WHSEC, subscription};

const OPS: &str = "ops-token-0123456789";
const DEALER_A: &str = "dealer-a-token-0123456789";
const TOKENS: &str = "\
ops-token-0123456789 *
dealer-a-token-0123456789 log-dealer-a
";
const BASIC_USER: &str = "hookuser";
const BASIC_PASSWORD: &str = "B4sic-s3cret-pw";
const BIG: usize = 10 * 1024 * 1024;

async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    cp
}

/// Receivers: `/flaky` answers 500 with a body twice, then 200; `/huge` answers 200 with a
/// 10 MB body; `/echo` answers 200 with the Authorization header it got; `/img.jpg` is an
/// image for FTP uploads.
async fn receivers() -> (u16, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    async fn flaky(State(calls): State<Arc<AtomicUsize>>) -> (StatusCode, String) {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        if n < 2 {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{{\"error\":\"busy-{n}\"}}"),
            )
        } else {
            (StatusCode::OK, "{\"ok\":true}".to_owned())
        }
    }
    let app = Router::new()
        .route("/flaky", post(flaky))
        .route("/huge", post(|| async { "x".repeat(BIG) }))
        .route(
            "/echo",
            post(|h: HeaderMap| async move {
                let auth = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                format!("you sent {auth} ({BASIC_USER}:{BASIC_PASSWORD})")
            }),
        )
        .route("/ok", post(|| async { "fine" }))
        .route("/img.jpg", axum::routing::get(|| async { image() }))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, calls)
}

fn image() -> Vec<u8> {
    (0..2048u32).map(|i| (i % 251) as u8).collect()
}

fn event(client: &str, id: &str, vehicle: &str) -> Value {
    json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-1",
        "data": { "vehicle": { "id": vehicle, "vin": "WVWZZZ1JZXW000001" } }
    })
}

async fn post_events(op: &OperatorProcess, events: Vec<Value>) {
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
}

async fn get(op: &OperatorProcess, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(op.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The log's entries matching `query` once `pred` holds for them (within 30 s).
async fn until(op: &OperatorProcess, query: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(op, OPS, &format!("/v1/deliveries?limit=500&{query}")).await;
        assert_eq!(code, 200, "{body}");
        let entries = body["entries"].as_array().cloned().unwrap_or_default();
        if pred(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "log never got there for {query}: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An operator of the test's own (own store) with the manage tokens above.
async fn operator(cp: &ControlPlane, scope: &Scope) -> (OperatorProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("manage-tokens");
    std::fs::write(&tokens, TOKENS).unwrap();
    let op = crate::support::process::start_with(
        cp,
        dir.path().join("data"),
        scope,
        &["--manage-token-file", tokens.to_str().unwrap()],
    )
    .await;
    (op, dir)
}

async fn namespace(cp: &ControlPlane, scope: &Scope, prefix: &str, client: &str) -> String {
    let ns = scope.namespace(cp, prefix, client).await;
    let kube = cp.client().await.unwrap();
    apply_value(
        &kube,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" },
                "stringData": { "secret": WHSEC } }),
    )
    .await;
    ns.name.clone()
}

#[tokio::test]
async fn delivery_log_records_every_attempt_and_shows_each_client_its_own() {
    let cp = control_plane().await;
    let scope = Scope::new("dlog");
    let (port, flaky_calls) = receivers().await;
    let url = |p: &str| format!("http://127.0.0.1:{port}/{p}");
    let ns_a = namespace(cp, &scope, "dlog-a", "log-dealer-a").await;
    let ns_b = namespace(cp, &scope, "dlog-b", "log-dealer-b").await;
    let kube = cp.client().await.unwrap();
    let fast = json!({ "retry": { "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 } });
    apply_value(
        &kube,
        &ns_a,
        subscription("flaky", "log-dealer-a", &url("flaky"), fast.clone()),
    )
    .await;
    apply_value(
        &kube,
        &ns_a,
        subscription("huge", "log-dealer-a", &url("huge"), fast.clone()),
    )
    .await;
    // Basic auth from a Secret; the receiver echoes the header (and the pair) back.
    apply_value(
        &kube,
        &ns_b,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "basic" },
                "stringData": { "username": BASIC_USER, "password": BASIC_PASSWORD } }),
    )
    .await;
    let mut basic = fast.clone();
    basic["auth"] = json!({ "basic": { "secretRef": { "name": "basic" } } });
    apply_value(
        &kube,
        &ns_b,
        subscription("echo", "log-dealer-b", &url("echo"), basic),
    )
    .await;

    let (op, _dir) = operator(cp, &scope).await;

    // Retried twice, then delivered: three entries.
    post_events(&op, vec![event("log-dealer-a", "evt-flaky", "veh-f")]).await;
    let flaky = format!("target=whs/{ns_a}/flaky");
    let entries = until(&op, &flaky, |e| e.len() >= 3).await;
    assert_eq!(flaky_calls.load(Ordering::SeqCst), 3);
    let results: Vec<&str> = entries
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["delivered", "retry", "retry"], "newest first");
    let attempts: Vec<u64> = entries
        .iter()
        .map(|e| e["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [3, 2, 1]);
    let statuses: Vec<u64> = entries
        .iter()
        .map(|e| e["httpStatus"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 500, 500]);
    assert_eq!(entries[0]["response"], "{\"ok\":true}");
    assert_eq!(entries[2]["response"], "{\"error\":\"busy-0\"}");
    assert_eq!(entries[1]["reason"], "HttpStatus");
    assert!(entries.iter().all(|e| e["durationMs"].is_u64()));
    assert_eq!(entries[0]["event"]["vehicle"], "veh-f");
    assert_eq!(entries[0]["event"]["client"], "log-dealer-a");
    assert_eq!(
        entries[0]["target"]["namespace"].as_str(),
        Some(ns_a.as_str())
    );

    // A 10 MB answer: the snippet is capped, the attempt not held up by the body.
    post_events(&op, vec![event("log-dealer-a", "evt-huge", "veh-h")]).await;
    let huge = until(&op, &format!("target=whs/{ns_a}/huge"), |e| !e.is_empty()).await;
    assert_eq!(huge[0]["result"], "delivered");
    let snippet = huge[0]["response"].as_str().unwrap();
    assert!(
        snippet.len() <= 512 && snippet.starts_with("xxx"),
        "{}",
        snippet.len()
    );
    assert!(
        huge[0]["durationMs"].as_u64().unwrap() < 2000,
        "{:?}",
        huge[0]
    );

    // Basic auth echoed by the receiver: never in the log.
    post_events(&op, vec![event("log-dealer-b", "evt-echo", "veh-e")]).await;
    let echo = until(&op, &format!("target=whs/{ns_b}/echo"), |e| !e.is_empty()).await;
    assert_eq!(echo[0]["result"], "delivered");

    // More vehicles of dealer-a, for the vehicle filter and paging.
    let more: Vec<Value> = (0..7)
        .map(|i| event("log-dealer-a", &format!("evt-p{i}"), &format!("veh-p{i}")))
        .collect();
    post_events(&op, more).await;
    until(
        &op,
        &format!("target=whs/{ns_a}/flaky&status=delivered"),
        |e| e.len() >= 8,
    )
    .await;

    let all = until(&op, "", |e| e.len() >= 12).await;
    let text = serde_json::to_string(&all).unwrap();
    for secret in [BASIC_PASSWORD, &format!("{BASIC_USER}:{BASIC_PASSWORD}")] {
        assert!(!text.contains(secret), "credential in the log: {text}");
    }
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"));
    assert!(!text.contains(&encoded), "encoded credential in the log");

    // status=failed: the two retries only.
    let (_, failed) = get(
        &op,
        OPS,
        &format!("/v1/deliveries?status=failed&target=whs/{ns_a}/flaky"),
    )
    .await;
    let failed = failed["entries"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|e| e["result"] == "retry"));
    // Vehicle filter (each dealer-a event goes to both of its subscriptions).
    let (_, v) = get(
        &op,
        OPS,
        &format!("/v1/deliveries?vehicle=veh-p3&target=whs/{ns_a}/flaky"),
    )
    .await;
    let v = v["entries"].as_array().unwrap();
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0]["event"]["id"], "evt-p3");

    // Paging: pages of 5 cover every entry once, newest first.
    let mut seen: Vec<u64> = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let (code, page) = get(&op, OPS, &format!("/v1/deliveries?limit=5&cursor={cursor}")).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        seen.extend(
            page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| number(e["id"].as_str().unwrap())),
        );
        match page["next"].as_str() {
            Some(n) => cursor = n.to_owned(),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages}");
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(seen, sorted, "newest first, each once");
    assert!(seen.len() >= 12);

    // dealer-a's token: only dealer-a's entries, full pages; dealer-b's are 404.
    let (_, mine) = get(&op, DEALER_A, "/v1/deliveries?limit=500").await;
    let mine = mine["entries"].as_array().unwrap();
    assert!(mine.len() >= 11 && mine.iter().all(|e| e["event"]["client"] == "log-dealer-a"));
    let (_, page) = get(&op, DEALER_A, "/v1/deliveries?limit=4").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 4);
    let b_id = echo[0]["id"].as_str().unwrap();
    let (code, _) = get(&op, DEALER_A, &format!("/v1/deliveries/{b_id}")).await;
    assert_eq!(code, 404);
    let (code, nothing) = get(&op, DEALER_A, "/v1/deliveries/99999999").await;
    assert_eq!(code, 404);
    assert_eq!(nothing["error"], "not_found");
    let (code, body) = get(&op, OPS, &format!("/v1/deliveries/{b_id}")).await;
    assert_eq!((code, &body["event"]["id"]), (200, &json!("evt-echo")));
    let (code, _) = get(&op, DEALER_A, "/v1/events/evt-echo?client=log-dealer-b").await;
    assert_eq!(code, 404);
    let (_, other) = get(&op, DEALER_A, "/v1/deliveries?client=log-dealer-b").await;
    assert_eq!(other["entries"], json!([]));

    // One event with its attempts per target.
    let (code, ev) = get(&op, DEALER_A, "/v1/events/evt-flaky").await;
    assert_eq!(code, 200, "{ev}");
    assert_eq!(ev["event"]["id"], "evt-flaky");
    assert!(ev["accepted"].as_str().unwrap().ends_with('Z'));
    let targets = ev["targets"].as_array().unwrap();
    let flaky_t = targets
        .iter()
        .find(|t| t["target"]["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky_t["pending"], false);
    assert_eq!(flaky_t["attempts"].as_array().unwrap().len(), 3);
    let (code, err) = get(&op, OPS, "/v1/events/evt-flaky").await;
    assert_eq!((code, &err["field"]), (400, &json!("client")));

    // Bad parameters name their field.
    for (q, field) in [
        ("status=nope", "status"),
        ("limit=501", "limit"),
        ("since=yesterday", "since"),
        ("target=whs/only-ns", "target"),
        ("cursor=!!", "cursor"),
    ] {
        let (code, err) = get(&op, OPS, &format!("/v1/deliveries?{q}")).await;
        assert_eq!(
            (code, err["error"].as_str(), err["field"].as_str()),
            (400, Some("invalid_request"), Some(field)),
            "{q}"
        );
    }
    let (code, _) = get(&op, "not-a-token", "/v1/deliveries").await;
    assert_eq!(code, 401);

    // Kept across a restart, and ids go on.
    let before = until(&op, "", |e| e.len() >= 12).await;
    let op = op.restart(cp).await.expect("operator restarted");
    let after = until(&op, "", |e| e.len() >= before.len()).await;
    assert_eq!(
        after[..before.len()],
        before[..],
        "same entries after the restart"
    );
    post_events(&op, vec![event("log-dealer-a", "evt-after", "veh-f")]).await;
    let newest = until(&op, "event=evt-after", |e| !e.is_empty()).await;
    let newest_id = number(newest[0]["id"].as_str().unwrap());
    assert!(newest_id > seen[0], "ids continue after the restart");
}

/// The number of an entry id; on JetStream an id names its replica first (`<replica>.<n>`).
fn number(id: &str) -> u64 {
    id.rsplit_once('.').map_or(id, |(_, n)| n).parse().unwrap()
}

#[tokio::test]
async fn delivery_log_carries_the_ftp_servers_reply() {
    let cp = control_plane().await;
    let scope = Scope::new("dlog-ftp");
    let (port, _) = receivers().await;
    let ns = scope.namespace(cp, "dlog-ftp", "log-ftp").await;
    let kube = cp.client().await.unwrap();
    let server = FtpServer::start("dealer", "right-password").await.unwrap();
    apply_value(
        &kube,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ftp" },
                "stringData": { "username": "dealer", "password": "wrong-password" } }),
    )
    .await;
    apply_value(
        &kube,
        &ns.name,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                "metadata": { "name": "files" },
                "spec": { "host": "127.0.0.1", "port": server.port(), "clientId": "log-ftp",
                          "credentialsSecretRef": { "name": "ftp" },
                          "rules": { "baseDirectory": "/files" },
                          "retry": { "maxAttempts": 1, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 } } }),
    )
    .await;
    let (op, _dir) = operator(cp, &scope).await;
    let sha = Sha256::digest(image())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let mut ev = event("log-ftp", "evt-ftp", "veh-ftp");
    ev["data"]["images"] = json!([{ "index": 1, "url": format!("http://127.0.0.1:{port}/img.jpg"),
                                    "contentType": "image/jpeg", "sha256": sha }]);
    post_events(&op, vec![ev]).await;
    let entries = until(&op, &format!("target=ftpc/{}/files", ns.name), |e| {
        !e.is_empty()
    })
    .await;
    let e = &entries[0];
    assert_eq!(e["result"], "failed", "{e}");
    assert_eq!(e["ftpReply"]["code"], 530, "{e}");
    assert!(
        e["ftpReply"]["text"].as_str().unwrap().starts_with("530"),
        "{e}"
    );
    assert!(e["httpStatus"].is_null());
    let text = e.to_string();
    assert!(!text.contains("wrong-password"), "{text}");
}
