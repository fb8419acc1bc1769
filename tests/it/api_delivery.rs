//! ApiConnection delivery attacked where no happy path goes: credentials echoed back by a
//! refusing API, images whose bytes lie about their checksum, mTLS with the wrong material, an
//! allow-list narrower than loopback, a restart between two events of one vehicle, a mapping
//! changed while a chain waits for its retry, two connections to one API, and an API that
//! never answers. The operator is a real process against the real control plane; the APIs
//! are small axum servers on 127.0.0.1 (TLS by rustls with an rcgen CA where needed) that
//! record every request, including bodies that never finished.
//!
//! The module's operator runs with `--allow-targets 127.0.0.1/32`: every peer here listens on
//! 127.0.0.1, and 127.0.0.2 (loopback, but outside the list) stands for an address the guard
//! must refuse without a packet leaving.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::StreamExt;
use kube::api::Api;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vc_envtest::ControlPlane;
use vehicle_connect::api::{ApiConnection, ApiConnectionStatus};

use crate::support::operator::{apply_value, put_secret};
use crate::support::process::{Launch, OperatorProcess, TOKEN, binary, start_launch};
use crate::support::scope::Scope;
use crate::support::tls::{ServerTls, new_ca, serve, server_identity};

/// The only addresses the module's operators may reach.
const ALLOWED: &str = "127.0.0.1/32";

static OPERATOR: OnceLock<tokio::sync::Mutex<Option<OperatorProcess>>> = OnceLock::new();
static SCOPE: LazyLock<Scope> = LazyLock::new(|| Scope::new("api-delivery"));

async fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    cp
}

/// The module's operator (started once), serving [`SCOPE`]; its ingest URL.
async fn operator_url() -> String {
    let cell = OPERATOR.get_or_init(|| tokio::sync::Mutex::new(None));
    let mut g = cell.lock().await;
    if g.is_none() {
        let cp = control_plane().await;
        let dir = cp
            .dir
            .join(format!("operator-api-delivery-{}", std::process::id()));
        // Delivering turns False (a Warning Event naming the last failure) at the first
        // failure, so that every failure's message can be checked in an Event.
        let launch = Launch::new(binary())
            .allow_targets(ALLOWED)
            .args(&["--delivering-failures", "1"]);
        *g = Some(start_launch(cp, dir, &SCOPE, launch).await);
    }
    g.as_ref().unwrap().url("/v1/events")
}

// ---------------------------------------------------------------------------------------
// The peer API: records every request as it arrives (a body that never finishes stays
// `complete: false`) and answers as scripted per "METHOD /path".

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
    /// The whole body arrived.
    complete: bool,
    at: Instant,
    /// Status answered; 0 while hanging or when the request never finished.
    answered: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn key(&self) -> String {
        self.header("idempotency-key").unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Answer {
    Status(u16),
    Json(u16, Value),
    /// 201 with `{"id": "<prefix>-<n>"}`, `n` counting creations of this peer from 1.
    Created(&'static str),
    /// The status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// 401 whose body repeats every credential the request carried, as careless APIs do.
    EchoCredentials,
    /// 503 to the first request of each idempotency key, 201 to its repeats.
    FirstTryOfEachKeyFails,
    /// This status at once, before reading the body.
    Early(u16),
    /// This status, keeping each idempotency key's request as the IETF idempotency-key
    /// draft has it: the same request again gets the first answer, another request under a
    /// key already used gets 422.
    Idempotent(u16),
    /// Never answers.
    Hang,
    /// This redirect status with `Location: <url>`.
    Redirect(u16, String),
    /// 201 when `Authorization: Bearer <token>`, else 401.
    RequireBearer(&'static str),
}

#[derive(Default)]
struct PeerState {
    seen: Vec<Seen>,
    script: HashMap<String, Vec<Answer>>,
    calls: HashMap<String, usize>,
    keys: HashSet<String>,
    /// Idempotency key → (method, path, body) of its first request.
    requests_by_key: HashMap<String, (String, String, Vec<u8>)>,
    created: usize,
}

#[derive(Clone)]
struct Peer {
    state: Arc<Mutex<PeerState>>,
    port: u16,
    tls: Option<ServerTls>,
}

impl Peer {
    async fn start() -> Peer {
        Self::start_on(None).await
    }

    /// HTTPS with `config` (which may require client certificates).
    async fn start_tls(config: rustls::ServerConfig) -> Peer {
        Self::start_on(Some(ServerTls::new(config))).await
    }

    async fn start_on(tls: Option<ServerTls>) -> Peer {
        let state: Arc<Mutex<PeerState>> = Arc::default();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let port = serve(app, tls.as_ref()).await;
        Peer { state, port, tls }
    }

    fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn script(&self, method: &str, path: &str, answers: Vec<Answer>) {
        self.state
            .lock()
            .unwrap()
            .script
            .insert(format!("{method} {path}"), answers);
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn seen_at(&self, method: &str, path: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.method == method && s.path == path)
            .collect()
    }

    /// Waits until `method path` got at least `n` requests.
    async fn wait_for(&self, method: &str, path: &str, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.seen_at(method, path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{method} {path}: {} of {n} requests in {within:?}; seen: {:?}",
                got.len(),
                self.seen()
                    .iter()
                    .map(|s| format!("{} {}", s.method, s.path))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// TLS handshakes: Ok, or the server's error.
    fn handshakes(&self) -> Vec<Result<(), String>> {
        self.tls
            .as_ref()
            .map(ServerTls::handshakes)
            .unwrap_or_default()
    }
}

async fn handle(State(state): State<Arc<Mutex<PeerState>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    let (index, answer) = {
        let mut s = state.lock().unwrap();
        let key = format!("{method} {path}");
        let n = *s
            .calls
            .entry(key.clone())
            .and_modify(|c| *c += 1)
            .or_insert(1);
        let answer = s
            .script
            .get(&key)
            .map(|a| a[(n - 1).min(a.len() - 1)].clone())
            .unwrap_or(Answer::Json(200, json!({})));
        s.seen.push(Seen {
            method,
            path,
            headers: parts.headers.clone(),
            body: Vec::new(),
            complete: false,
            at: Instant::now(),
            answered: 0,
        });
        (s.seen.len() - 1, answer)
    };
    if let Answer::Early(code) = answer {
        state.lock().unwrap().seen[index].answered = code;
        return StatusCode::from_u16(code).unwrap().into_response();
    }
    // Recorded piece by piece: a client that stops sending leaves what it sent, and the
    // connection's end may drop this handler before the loop sees the error.
    let mut stream = body.into_data_stream();
    let mut complete = true;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(b) => state.lock().unwrap().seen[index].body.extend_from_slice(&b),
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let response = {
        let mut s = state.lock().unwrap();
        s.seen[index].complete = complete;
        if !complete {
            return StatusCode::BAD_REQUEST.into_response();
        }
        let headers = &s.seen[index].headers;
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (code, response) = match answer {
            Answer::Status(c) => (c, StatusCode::from_u16(c).unwrap().into_response()),
            Answer::Json(c, v) => (
                c,
                (StatusCode::from_u16(c).unwrap(), axum::Json(v)).into_response(),
            ),
            Answer::Created(prefix) => {
                s.created += 1;
                let id = format!("{prefix}-{}", s.created);
                (
                    201,
                    (StatusCode::CREATED, axum::Json(json!({ "id": id }))).into_response(),
                )
            }
            Answer::RetryAfter(c, secs) => (
                c,
                (
                    StatusCode::from_u16(c).unwrap(),
                    [("retry-after", secs.to_string())],
                )
                    .into_response(),
            ),
            Answer::EchoCredentials => {
                let authorization = header("authorization");
                let decoded = authorization
                    .strip_prefix("Basic ")
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let password = decoded.split_once(':').map(|(_, p)| p).unwrap_or("");
                let token = authorization.strip_prefix("Bearer ").unwrap_or("");
                let key = header("x-api-key");
                let text = format!(
                    "invalid credentials: Authorization {authorization:?}, password {password:?}, token {token:?}, X-Api-Key {key:?}, key {:?}",
                    key.rsplit(' ').next().unwrap_or("")
                );
                (401, (StatusCode::UNAUTHORIZED, text).into_response())
            }
            Answer::FirstTryOfEachKeyFails => {
                let key = header("idempotency-key");
                if s.keys.insert(key) {
                    (503, StatusCode::SERVICE_UNAVAILABLE.into_response())
                } else {
                    (
                        201,
                        (StatusCode::CREATED, axum::Json(json!({}))).into_response(),
                    )
                }
            }
            Answer::Idempotent(c) => {
                let key = header("idempotency-key");
                let seen = &s.seen[index];
                let request = (seen.method.clone(), seen.path.clone(), seen.body.clone());
                match s.requests_by_key.get(&key) {
                    Some(first) if *first != request => (
                        422,
                        (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "idempotency key reused for another request",
                        )
                            .into_response(),
                    ),
                    _ => {
                        s.requests_by_key.insert(key, request);
                        (c, StatusCode::from_u16(c).unwrap().into_response())
                    }
                }
            }
            Answer::Early(_) => unreachable!("answered above"),
            Answer::Hang => (0, StatusCode::OK.into_response()),
            Answer::Redirect(c, to) => (
                c,
                (StatusCode::from_u16(c).unwrap(), [("location", to)]).into_response(),
            ),
            Answer::RequireBearer(token) => {
                if header("authorization") == format!("Bearer {token}") {
                    (201, StatusCode::CREATED.into_response())
                } else {
                    (401, StatusCode::UNAUTHORIZED.into_response())
                }
            }
        };
        if code == 0 {
            None
        } else {
            s.seen[index].answered = code;
            Some(response)
        }
    };
    match response {
        Some(r) => r,
        None => futures::future::pending::<Response>().await,
    }
}

// ---------------------------------------------------------------------------------------
// Images: served from memory on 127.0.0.1, possibly other bytes than the event announces.

#[derive(Clone)]
enum Served {
    File(Vec<u8>, String),
    Redirect(String),
}

#[derive(Clone)]
struct Images {
    files: Arc<Mutex<HashMap<String, Served>>>,
    port: u16,
}

impl Images {
    async fn start() -> Images {
        let files: Arc<Mutex<HashMap<String, Served>>> = Arc::default();
        let f = files.clone();
        let app = Router::new().fallback(move |req: Request| {
            let f = f.clone();
            async move {
                let served = f.lock().unwrap().get(req.uri().path()).cloned();
                match served {
                    Some(Served::File(bytes, ct)) => {
                        ([("content-type", ct)], bytes).into_response()
                    }
                    Some(Served::Redirect(to)) => {
                        (StatusCode::FOUND, [("location", to)]).into_response()
                    }
                    None => StatusCode::NOT_FOUND.into_response(),
                }
            }
        });
        let port = serve(app, None).await;
        Images { files, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Serves `bytes` at `path`; the event's image object announcing them.
    fn put(&self, path: &str, bytes: &[u8], content_type: &str) -> Value {
        self.serve(path, bytes.to_vec(), content_type);
        announce(&self.url(path), bytes, content_type)
    }

    fn serve(&self, path: &str, bytes: Vec<u8>, content_type: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.into(), Served::File(bytes, content_type.into()));
    }

    fn redirect(&self, path: &str, to: &str) {
        self.files
            .lock()
            .unwrap()
            .insert(path.into(), Served::Redirect(to.into()));
    }
}

/// An event's image object for `bytes` at `url` (its `index` is set by [`event`]).
fn announce(url: &str, bytes: &[u8], content_type: &str) -> Value {
    json!({ "url": url, "contentType": content_type, "bytes": bytes.len(), "sha256": sha256_hex(bytes) })
}

/// `len` bytes that differ per `seed`.
fn pseudo(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut h = Sha256::digest(seed.as_bytes()).to_vec();
    while out.len() < len {
        out.extend_from_slice(&h);
        h = Sha256::digest(&h).to_vec();
    }
    out.truncate(len);
    out
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The control plane side.

struct Tenant {
    ns: String,
    client_id: String,
    client: kube::Client,
    api: Api<ApiConnection>,
    ingest: String,
}

/// A namespace of the module's operator allowing client `api-d-<prefix>`.
async fn tenant(prefix: &str) -> Tenant {
    let ingest = operator_url().await;
    tenant_in(&SCOPE, prefix, ingest).await
}

async fn tenant_in(scope: &Scope, prefix: &str, ingest: String) -> Tenant {
    let cp = control_plane().await;
    let client_id = format!("api-d-{prefix}");
    let ns = scope.namespace(cp, prefix, &client_id).await;
    let client = cp.client().await.unwrap();
    Tenant {
        ns: ns.name.clone(),
        client_id,
        api: Api::namespaced(client.clone(), &ns.name),
        client,
        ingest,
    }
}

/// A spec with one mapping per entry of `mappings`; short timeouts and quick retries.
fn spec(t: &Tenant, base_url: &str, events: &[&str], mappings: Value) -> Value {
    json!({
        "clientId": t.client_id,
        "events": events,
        "baseUrl": base_url,
        "timeoutSeconds": 5,
        "retry": { "maxAttempts": 3, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 },
        "mappings": mappings,
    })
}

/// `{ "vin": ... }`: a small body.
const VIN_BODY: &str = r#"{ "vin": {{ vehicle.vin }}, "id": {{ vehicle.id }} }"#;

/// An event of `t`'s client for `vehicle`, its images indexed from 1.
fn event(t: &Tenant, id: &str, ty: &str, vehicle: &str, images: &[Value]) -> Value {
    let images: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let mut img = img.clone();
            img["index"] = json!(i + 1);
            img
        })
        .collect();
    json!({
        "id": id, "type": ty, "timestamp": "2026-11-27T10:15:30Z", "clientId": t.client_id,
        "data": {
            "vehicle": { "id": vehicle, "vin": "WVWZZZ1JZXW000001", "make": "Volkswagen" },
            "images": images
        }
    })
}

impl Tenant {
    async fn secret(&self, name: &str, type_: Option<&str>, data: Value) {
        put_secret(&self.client, &self.ns, name, type_, data).await;
    }

    async fn connect(&self, name: &str, spec: Value) {
        apply_value(
            &self.client,
            &self.ns,
            json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "ApiConnection",
                    "metadata": { "name": name }, "spec": spec }),
        )
        .await;
    }

    async fn post(&self, body: Value) {
        let r = reqwest::Client::new()
            .post(&self.ingest)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        assert_eq!(code, 202, "{}", r.text().await.unwrap_or_default());
    }

    /// Polls `name` until `pred` holds on it (within `within`).
    async fn until(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        pred: impl Fn(&ApiConnection) -> bool,
    ) -> ApiConnection {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(Some(o)) = self.api.get_opt(name).await {
                if pred(&o) {
                    return o;
                }
                last = Some(o);
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no {what} within {within:?}; last seen: {:#?}",
                last.map(|o| o.status)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The Ready condition of the current generation: (status, reason, message).
    async fn ready(&self, name: &str) -> (String, String, String) {
        let c = self
            .until(
                name,
                "Ready of this generation",
                Duration::from_secs(30),
                |c| {
                    let st = c.status.as_ref();
                    st.and_then(|s| s.observed_generation) == c.metadata.generation
                        && st.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready"))
                },
            )
            .await;
        let st = c.status.unwrap_or_default();
        let cond = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (
            cond.status.clone(),
            cond.reason.clone(),
            cond.message.clone(),
        )
    }

    async fn ready_true(&self, name: &str) {
        let (status, reason, message) = self.ready(name).await;
        assert_eq!(status, "True", "{name}: {reason}: {message}");
    }

    async fn status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&ApiConnectionStatus) -> bool,
    ) -> ApiConnectionStatus {
        self.until(name, what, Duration::from_secs(60), |c| {
            c.status.as_ref().is_some_and(&pred)
        })
        .await
        .status
        .unwrap_or_default()
    }

    /// Notes of the Warning Events about `name` (waits for at least one).
    async fn warnings(&self, name: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notes: Vec<String> = events
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                        && e.type_.as_deref() == Some("Warning")
                })
                .map(|e| {
                    format!(
                        "{}: {}",
                        e.reason.unwrap_or_default(),
                        e.note.unwrap_or_default()
                    )
                })
                .collect();
            if !notes.is_empty() {
                return notes;
            }
            assert!(Instant::now() < deadline, "{name}: no Warning Event in 30s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn failure(st: &ApiConnectionStatus) -> (String, String) {
    st.last_failure
        .as_ref()
        .map(|f| (f.reason.clone(), f.message.clone()))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// 1. Credentials

#[tokio::test]
async fn api_auth_variants_reach_the_api_and_a_refusal_never_shows_the_credential() {
    let t = tenant("auth").await;
    let peer = Peer::start().await;
    // A colon in the password: Basic splits at the first one only.
    const USER: &str = "vc-user";
    const PASSWORD: &str = "pw-Zq8:x!7Lm";
    const BEARER: &str = "tok-5f2a9c1e77b0d4";
    const KEY: &str = "key-9e1d7a3b55c2f8";
    let basic_b64 = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    t.secret(
        "basic",
        None,
        json!({ "username": USER, "password": PASSWORD }),
    )
    .await;
    t.secret("bearer", None, json!({ "token": BEARER })).await;
    t.secret("apikey", None, json!({ "apiKey": KEY })).await;
    let auths = [
        (
            "basic",
            json!({ "basic": { "secretRef": { "name": "basic" } } }),
        ),
        (
            "bearer",
            json!({ "bearer": { "secretRef": { "name": "bearer" } } }),
        ),
        (
            "apikey",
            json!({ "apiKey": { "header": "X-Api-Key", "prefix": "ApiKey ", "secretRef": { "name": "apikey" } } }),
        ),
    ];
    for (name, auth) in &auths {
        // Updates are refused with a body that repeats the credentials.
        peer.script(
            "PUT",
            &format!("/{name}/vehicles/veh-a1"),
            vec![Answer::EchoCredentials],
        );
        let mut s = spec(
            &t,
            &peer.base_url(),
            &["vehicle.created", "vehicle.updated"],
            json!([
                { "events": ["vehicle.created"], "requests": [
                    { "name": "create", "method": "POST", "path": format!("/{name}/vehicles"), "body": VIN_BODY } ] },
                { "events": ["vehicle.updated"], "requests": [
                    { "name": "update", "method": "PUT", "path": format!("/{name}/vehicles/{{{{ vehicle.id }}}}"), "body": VIN_BODY } ] }
            ]),
        );
        s["auth"] = auth.clone();
        s["retry"] =
            json!({ "maxAttempts": 2, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 });
        t.connect(name, s).await;
    }
    // OAuth2 whose token endpoint refuses the client, repeating its secret (sent as Basic,
    // form-encoded first: RFC 6749 §2.3.1).
    const CLIENT_SECRET: &str = "cs-7Hq/2+z=k";
    let client_secret_encoded = "cs-7Hq%2F2%2Bz%3Dk";
    t.secret(
        "oauth",
        None,
        json!({ "client-id": "vc-client", "client-secret": CLIENT_SECRET }),
    )
    .await;
    peer.script("POST", "/oauth2/token", vec![Answer::EchoCredentials]);
    let mut s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.created"],
        json!([{ "events": ["vehicle.created"], "requests": [
            { "name": "create", "method": "POST", "path": "/oauth2/vehicles", "body": VIN_BODY } ] }]),
    );
    s["auth"] = json!({ "oauth2": { "tokenUrl": format!("{}/oauth2/token", peer.base_url()),
                                    "clientSecretRef": { "name": "oauth" } } });
    s["retry"] = json!({ "maxAttempts": 2, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 });
    t.connect("oauth2", s).await;
    for (name, _) in &auths {
        t.ready_true(name).await;
    }
    t.ready_true("oauth2").await;

    t.post(event(&t, "auth-c1", "vehicle.created", "veh-a1", &[]))
        .await;
    let st = t.status("oauth2", "failed=1", |s| s.failed >= 1).await;
    let (reason, message) = failure(&st);
    assert_eq!(reason, "TokenRefused", "{message}");
    assert!(message.contains("401"), "{message}");
    let shown = serde_json::to_string(&st).unwrap();
    let notes = t.warnings("oauth2").await;
    for secret in [CLIENT_SECRET, client_secret_encoded] {
        assert!(
            !shown.contains(secret),
            "oauth2: status shows the client secret: {shown}"
        );
        for n in &notes {
            assert!(
                !n.contains(secret),
                "oauth2: Event shows the client secret: {n}"
            );
        }
    }
    assert!(peer.seen_at("POST", "/oauth2/vehicles").is_empty());
    for (name, _) in &auths {
        t.status(name, "delivered=1", |s| s.delivered >= 1).await;
    }
    let basic = peer.seen_at("POST", "/basic/vehicles");
    assert_eq!(basic.len(), 1);
    assert_eq!(
        basic[0].header("authorization"),
        Some(format!("Basic {basic_b64}"))
    );
    let bearer = peer.seen_at("POST", "/bearer/vehicles");
    assert_eq!(
        bearer[0].header("authorization"),
        Some(format!("Bearer {BEARER}"))
    );
    let apikey = peer.seen_at("POST", "/apikey/vehicles");
    assert_eq!(apikey[0].header("x-api-key"), Some(format!("ApiKey {KEY}")));
    assert_eq!(
        apikey[0].header("authorization"),
        None,
        "an API key is the only credential sent"
    );

    // Refused: 401 with the credentials in the answer, twice (maxAttempts 2), then given up.
    t.post(event(&t, "auth-u1", "vehicle.updated", "veh-a1", &[]))
        .await;
    let secrets = [PASSWORD, basic_b64.as_str(), BEARER, KEY];
    for (name, _) in &auths {
        let st = t.status(name, "failed=1", |s| s.failed >= 1).await;
        let (reason, message) = failure(&st);
        assert_eq!(reason, "Unauthorized", "{name}: {message}");
        assert!(message.contains("401"), "{name}: {message}");
        let shown = serde_json::to_string(&st).unwrap();
        let notes = t.warnings(name).await;
        assert!(
            notes.iter().any(|n| n.contains("401")),
            "{name}: the Event tells of the 401: {notes:?}"
        );
        for secret in secrets {
            assert!(
                !shown.contains(secret),
                "{name}: status shows a credential: {shown}"
            );
            for n in &notes {
                assert!(!n.contains(secret), "{name}: Event shows a credential: {n}");
            }
        }
    }
    // The API did get the refused requests (the refusal was real, not a local error).
    for (name, _) in &auths {
        let refused = peer.seen_at("PUT", &format!("/{name}/vehicles/veh-a1"));
        assert_eq!(refused.len(), 2, "{name}");
        assert!(refused.iter().all(|r| r.answered == 401));
    }
}

// ---------------------------------------------------------------------------------------
// 2. Images: raw bodies and JSON bodies by URL

#[tokio::test]
async fn api_images_go_raw_with_their_content_type_or_as_json_naming_their_url() {
    let t = tenant("images").await;
    let peer = Peer::start().await;
    let images = Images::start().await;
    let jpg = pseudo("api-img-1", 300_000);
    let png = pseudo("api-img-2", 70_001);
    let announced = [
        images.put("/v/veh-i1/1.jpg", &jpg, "image/jpeg"),
        images.put("/v/veh-i1/2.png", &png, "image/png"),
    ];
    for n in [1, 2] {
        peer.script(
            "POST",
            &format!("/vehicles/veh-i1/photos/{n}"),
            vec![Answer::Status(201)],
        );
    }
    let s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.processed"],
        json!([{ "events": ["vehicle.processed"], "requests": [
            { "name": "photo", "method": "POST", "path": "/vehicles/{{ vehicle.id }}/photos/{{ image.index }}",
              "forEachImage": { "send": "raw" }, "expect": [201] },
            { "name": "link", "method": "POST", "path": "/vehicles/{{ vehicle.id }}/links",
              "forEachImage": { "send": "json" },
              "body": r#"{ "url": {{ image.url }}, "index": {{ image.index }}, "position": {{ image.position }}, "contentType": {{ image.contentType }}, "sha256": {{ image.sha256 }}, "bytes": {{ image.bytes }} }"# }
        ] }]),
    );
    t.connect("images", s).await;
    t.ready_true("images").await;
    t.post(event(
        &t,
        "img-p1",
        "vehicle.processed",
        "veh-i1",
        &announced,
    ))
    .await;
    let st = t
        .status("images", "delivered=1", |s| s.delivered >= 1)
        .await;
    assert_eq!(st.failed, 0);

    for (n, bytes, ct) in [(1, &jpg, "image/jpeg"), (2, &png, "image/png")] {
        let got = peer.seen_at("POST", &format!("/vehicles/veh-i1/photos/{n}"));
        assert_eq!(got.len(), 1, "image {n} sent once");
        let r = &got[0];
        assert!(r.complete);
        assert_eq!(r.body.len(), bytes.len(), "image {n}: size");
        assert_eq!(sha256_hex(&r.body), sha256_hex(bytes), "image {n}: sha256");
        assert_eq!(r.header("content-type").as_deref(), Some(ct));
    }
    let links = peer.seen_at("POST", "/vehicles/veh-i1/links");
    assert_eq!(links.len(), 2, "one JSON request per image");
    for (i, r) in links.iter().enumerate() {
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        let a = &announced[i];
        assert_eq!(
            body,
            json!({ "url": a["url"], "index": i + 1, "position": i + 1, "contentType": a["contentType"],
                    "sha256": a["sha256"], "bytes": a["bytes"] })
        );
    }
    let keys: BTreeSet<String> = peer.seen().iter().map(Seen::key).collect();
    assert_eq!(keys.len(), 4, "a key per request and image: {keys:?}");
}

// ---------------------------------------------------------------------------------------
// 3. An image that is not what the event says

#[tokio::test]
async fn api_an_image_failing_its_checksum_never_reaches_the_api_whole() {
    let t = tenant("checksum").await;
    let peer = Peer::start().await;
    let images = Images::start().await;
    // The event announces `good`; the image server serves the same size with the last byte
    // changed, so only the end of the stream can tell.
    let good = pseudo("api-checksum", 1 << 20);
    let mut served = good.clone();
    *served.last_mut().unwrap() ^= 0xff;
    images.serve("/v/veh-x1/1.jpg", served.clone(), "image/jpeg");
    let announced = announce(&images.url("/v/veh-x1/1.jpg"), &good, "image/jpeg");

    // Raw and multipart bodies; and an API that answers 201 before reading the body at all.
    let ways = [
        ("raw", json!({ "send": "raw" })),
        ("multipart", json!({ "send": "multipart" })),
        ("early", json!({ "send": "raw" })),
    ];
    peer.script("POST", "/early/veh-x1/1", vec![Answer::Early(201)]);
    for (name, each) in &ways {
        let mut s = spec(
            &t,
            &peer.base_url(),
            &["vehicle.processed"],
            json!([{ "events": ["vehicle.processed"], "requests": [
                { "name": "photo", "method": "POST", "path": format!("/{name}/{{{{ vehicle.id }}}}/{{{{ image.index }}}}"),
                  "forEachImage": each } ] }]),
        );
        // The early answer may race the body's write (a broken pipe, retried) before an
        // attempt reads it; a few attempts make sure one does.
        s["retry"] =
            json!({ "maxAttempts": 8, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 });
        t.connect(name, s).await;
    }
    for (name, _) in &ways {
        t.ready_true(name).await;
    }
    t.post(event(
        &t,
        "sum-p1",
        "vehicle.processed",
        "veh-x1",
        std::slice::from_ref(&announced),
    ))
    .await;
    for (name, _) in &ways {
        let st = t.status(name, "failed=1", |s| s.failed >= 1).await;
        let (reason, message) = failure(&st);
        assert_eq!(reason, "ChecksumMismatch", "{name}: {message}");
        assert_eq!(
            (st.delivered, st.failed, st.pending),
            (0, 1, 0),
            "{name}: given up at once, not retried"
        );
        assert!(
            message.contains(&sha256_hex(&served)) && message.contains(&sha256_hex(&good)),
            "{name}: {message}"
        );
        // One Warning Event marks the turn into trouble: it names the first failure, which
        // is the mismatch unless the early answer's race (a broken pipe, retried) came
        // first; the status above names the mismatch either way.
        let notes = t.warnings(name).await;
        assert!(
            notes.iter().any(|n| n.contains("ChecksumMismatch")
                || (*name == "early" && n.contains("Broken pipe"))),
            "{name}: a Warning Event tells: {notes:?}"
        );
    }
    // Give a request that would still finish time to.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, _) in &ways[..2] {
        let got = peer.seen_at("POST", &format!("/{name}/veh-x1/1"));
        assert_eq!(got.len(), 1, "{name}: one request, never repeated");
        let r = &got[0];
        assert!(
            !r.complete && r.answered == 0,
            "{name}: the API received a finished request with the wrong image ({} bytes)",
            r.body.len()
        );
        assert!(
            r.body.len() < served.len(),
            "{name}: {} bytes arrived, the image has {}",
            r.body.len(),
            served.len()
        );
    }
    // Raw: what did arrive is the start of the image, the last piece held back.
    let raw = &peer.seen_at("POST", "/raw/veh-x1/1")[0];
    assert_eq!(&served[..raw.body.len()], &raw.body[..]);
}

// ---------------------------------------------------------------------------------------
// 4. mTLS with a private CA

struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
    client_cert_pem: String,
    client_key_pem: String,
    other_ca_pem: String,
    other_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};

    let ca = new_ca("api test CA");
    let (server_chain, server_key) = server_identity(&ca);

    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, "vehicle-connect");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().unwrap();
    let client_cert = cp.signed_by(&client_key, &ca).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_chain, server_key)
        .unwrap();
    let other = new_ca("another CA");
    Pki {
        ca_pem: ca.pem(),
        server,
        client_cert_pem: client_cert.pem(),
        client_key_pem: client_key.serialize_pem(),
        other_ca_pem: other.pem(),
        other_key_pem: KeyPair::generate().unwrap().serialize_pem(),
    }
}

#[tokio::test]
async fn api_mtls_with_a_private_ca_delivers_and_wrong_material_fails_saying_why() {
    let t = tenant("mtls").await;
    let pki = pki();
    let peer = Peer::start_tls(pki.server.clone()).await;
    t.secret("api-ca", None, json!({ "ca.crt": pki.ca_pem }))
        .await;
    t.secret("other-ca", None, json!({ "ca.crt": pki.other_ca_pem }))
        .await;
    t.secret(
        "client-cert",
        Some("kubernetes.io/tls"),
        json!({ "tls.crt": pki.client_cert_pem, "tls.key": pki.client_key_pem }),
    )
    .await;
    t.secret(
        "mismatched-pair",
        Some("kubernetes.io/tls"),
        json!({ "tls.crt": pki.client_cert_pem, "tls.key": pki.other_key_pem }),
    )
    .await;
    let with_tls = |name: &str, tls: Value| {
        let mut s = spec(
            &t,
            &peer.base_url(),
            &["vehicle.created"],
            json!([{ "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": format!("/{name}/vehicles"), "body": VIN_BODY } ] }]),
        );
        s["tls"] = tls;
        s["retry"] =
            json!({ "maxAttempts": 2, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 });
        s
    };
    let ca = json!({ "name": "api-ca" });
    let cert = json!({ "name": "client-cert" });
    t.connect(
        "mtls",
        with_tls(
            "mtls",
            json!({ "caSecretRef": ca, "clientCertSecretRef": cert }),
        ),
    )
    .await;
    t.connect("no-cert", with_tls("no-cert", json!({ "caSecretRef": ca })))
        .await;
    t.connect(
        "wrong-ca",
        with_tls(
            "wrong-ca",
            json!({ "caSecretRef": { "name": "other-ca" }, "clientCertSecretRef": cert }),
        ),
    )
    .await;
    t.connect(
        "bad-pair",
        with_tls(
            "bad-pair",
            json!({ "caSecretRef": ca, "clientCertSecretRef": { "name": "mismatched-pair" } }),
        ),
    )
    .await;
    for name in ["mtls", "no-cert", "wrong-ca"] {
        t.ready_true(name).await;
    }
    // A certificate with another key is refused before any event.
    let (status, reason, message) = t.ready("bad-pair").await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "SecretInvalid"),
        "{message}"
    );

    t.post(event(&t, "tls-c1", "vehicle.created", "veh-t1", &[]))
        .await;
    let st = t.status("mtls", "delivered=1", |s| s.delivered >= 1).await;
    assert_eq!(st.failed, 0, "{:?}", st.last_failure);
    let got = peer.seen_at("POST", "/mtls/vehicles");
    assert_eq!(got.len(), 1);
    assert!(got[0].complete && got[0].answered == 200);

    let st = t.status("no-cert", "failed=1", |s| s.failed >= 1).await;
    let (reason, message) = failure(&st);
    let lower = message.to_lowercase();
    assert!(
        lower.contains("certificate"),
        "no-cert: the message tells of the missing certificate: {reason}: {message}"
    );
    let st = t.status("wrong-ca", "failed=1", |s| s.failed >= 1).await;
    let (reason, message) = failure(&st);
    assert!(
        message.contains("UnknownIssuer") || message.to_lowercase().contains("certificate"),
        "wrong-ca: the message tells of the untrusted certificate: {reason}: {message}"
    );
    for name in ["no-cert", "wrong-ca", "bad-pair"] {
        assert!(
            peer.seen_at("POST", &format!("/{name}/vehicles"))
                .is_empty(),
            "{name}: no request reached the API"
        );
    }
    let refused = peer.handshakes().iter().filter(|h| h.is_err()).count();
    assert!(
        refused >= 2,
        "the server refused the handshakes: {:?}",
        peer.handshakes()
    );
}

// ---------------------------------------------------------------------------------------
// 5. The allow-list

/// A listener on 127.0.0.2 (loopback, outside the allow-list) counting connections.
async fn forbidden_listener() -> (u16, Arc<Mutex<usize>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let accepted = Arc::new(Mutex::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            *a.lock().unwrap() += 1;
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn api_addresses_outside_the_allow_list_are_refused_without_a_connection() {
    let t = tenant("ssrf").await;
    let peer = Peer::start().await;
    let images = Images::start().await;
    let (port, accepted) = forbidden_listener().await;

    // An image at the forbidden address, and one behind a redirect from an allowed server.
    let bytes = pseudo("api-ssrf", 1000);
    let direct = announce(
        &format!("http://127.0.0.2:{port}/v/1.jpg"),
        &bytes,
        "image/jpeg",
    );
    images.redirect("/v/2.jpg", &format!("http://127.0.0.2:{port}/v/2.jpg"));
    let redirected = announce(&images.url("/v/2.jpg"), &bytes, "image/jpeg");
    let photo = |name: &str| {
        json!([{ "events": ["vehicle.processed"], "requests": [
            { "name": "photo", "method": "POST", "path": format!("/{name}/{{{{ image.index }}}}"),
              "forEachImage": { "send": "raw" } } ] }])
    };
    t.connect(
        "direct",
        spec(
            &t,
            &peer.base_url(),
            &["vehicle.processed"],
            photo("direct"),
        ),
    )
    .await;
    t.connect(
        "redirected",
        spec(
            &t,
            &peer.base_url(),
            &["vehicle.processed"],
            photo("redirected"),
        ),
    )
    .await;
    // The API itself, and an OAuth2 token endpoint, at the forbidden address.
    t.connect(
        "base",
        spec(
            &t,
            &format!("http://127.0.0.2:{port}"),
            &["vehicle.processed"],
            photo("base"),
        ),
    )
    .await;
    t.secret(
        "oauth",
        None,
        json!({ "client-id": "c", "client-secret": "s" }),
    )
    .await;
    let mut token = spec(&t, &peer.base_url(), &["vehicle.processed"], photo("token"));
    token["auth"] = json!({ "oauth2": { "tokenUrl": format!("http://127.0.0.2:{port}/token"),
                                        "clientSecretRef": { "name": "oauth" } } });
    t.connect("token", token).await;

    for (name, field) in [
        ("base", "spec.baseUrl"),
        ("token", "spec.auth.oauth2.tokenUrl"),
    ] {
        let (status, reason, message) = t.ready(name).await;
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "TargetNotAllowed"),
            "{name}: {message}"
        );
        assert!(
            message.contains(field) && message.contains("127.0.0.2"),
            "{name}: {message}"
        );
    }
    t.ready_true("direct").await;
    t.ready_true("redirected").await;

    t.post(event(
        &t,
        "ssrf-p1",
        "vehicle.processed",
        "veh-s1",
        std::slice::from_ref(&direct),
    ))
    .await;
    t.post(event(
        &t,
        "ssrf-p2",
        "vehicle.processed",
        "veh-s2",
        std::slice::from_ref(&redirected),
    ))
    .await;
    // The same address spelled otherwise: IPv4-mapped IPv6 (a dual-stack socket reaches
    // 127.0.0.2 through it), one decimal number, the short dotted form.
    let spellings = [
        format!("http://[::ffff:127.0.0.2]:{port}/v/3.jpg"),
        format!("http://2130706434:{port}/v/4.jpg"),
        format!("http://127.2:{port}/v/5.jpg"),
    ];
    for (i, url) in spellings.iter().enumerate() {
        t.post(event(
            &t,
            &format!("ssrf-p{}", i + 3),
            "vehicle.processed",
            &format!("veh-s{}", i + 3),
            &[announce(url, &bytes, "image/jpeg")],
        ))
        .await;
    }
    let st = t
        .status("direct", "failed=4", |s| s.failed >= 4 && s.pending == 0)
        .await;
    assert_eq!(st.delivered, 0, "{:?}", st.last_failure);
    for name in ["direct", "redirected"] {
        let st = t.status(name, "failed>=1", |s| s.failed >= 1).await;
        let (reason, message) = failure(&st);
        assert!(
            message.contains("127.0.0.2"),
            "{name}: names the address: {reason}: {message}"
        );
        assert!(
            reason == "TargetNotAllowed" || message.contains("--allow-targets"),
            "{name}: the guard's refusal: {reason}: {message}"
        );
        assert_eq!(st.pending, 0, "{name}: not retried");
    }
    let st = t.status("direct", "failed", |s| s.failed >= 1).await;
    assert_eq!(failure(&st).0, "TargetNotAllowed");
    // Time for anything that would still connect.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        *accepted.lock().unwrap(),
        0,
        "a connection reached 127.0.0.2"
    );
    assert!(
        peer.seen().is_empty(),
        "no request was sent to the API without its image"
    );
}

// ---------------------------------------------------------------------------------------
// 6. A restart between two events of one vehicle

#[tokio::test]
async fn api_a_restart_keeps_the_remote_id_so_an_update_addresses_the_same_vehicle() {
    let cp = control_plane().await;
    // An operator of its own: restarting the module's would cut the other tests short.
    let scope = Scope::new("api-restart");
    let dir = cp
        .dir
        .join(format!("operator-api-restart-{}", std::process::id()));
    let op = start_launch(
        cp,
        dir,
        &scope,
        Launch::new(binary()).allow_targets(ALLOWED),
    )
    .await;
    let t = tenant_in(&scope, "restart", op.url("/v1/events")).await;
    let peer = Peer::start().await;
    peer.script("POST", "/vehicles", vec![Answer::Created("dms")]);
    let create = json!({ "name": "create", "method": "POST", "path": "/vehicles", "when": "not remote.id",
                         "body": VIN_BODY, "expect": [201], "capture": { "id": { "jsonPointer": "/id" } } });
    let s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.created", "vehicle.updated"],
        json!([
            { "events": ["vehicle.created"], "requests": [create] },
            { "events": ["vehicle.updated"], "requests": [create,
                { "name": "update", "method": "PUT", "path": "/vehicles/{{ remote.id }}", "body": VIN_BODY } ] }
        ]),
    );
    t.connect("dms", s).await;
    t.ready_true("dms").await;
    t.post(event(&t, "rs-c1", "vehicle.created", "veh-r1", &[]))
        .await;
    t.status("dms", "delivered=1", |s| s.delivered >= 1).await;
    assert_eq!(peer.seen_at("POST", "/vehicles").len(), 1);

    let op = op.restart(cp).await.expect("operator restarted");
    t.post(event(&t, "rs-u1", "vehicle.updated", "veh-r1", &[]))
        .await;
    let st = t.status("dms", "delivered=2", |s| s.delivered >= 2).await;
    assert_eq!(st.failed, 0, "{:?}\n{}", st.last_failure, op.log_text());
    assert_eq!(
        peer.seen_at("POST", "/vehicles").len(),
        1,
        "the vehicle was created a second time after the restart"
    );
    let put = peer.seen_at("PUT", "/vehicles/dms-1");
    assert_eq!(put.len(), 1, "{:?}", peer.seen());
    drop(op);
}

#[tokio::test]
async fn api_a_hostile_remote_id_stays_one_path_segment() {
    let t = tenant("hostile").await;
    let peer = Peer::start().await;
    // What the API answers becomes part of later paths.
    peer.script(
        "POST",
        "/vehicles",
        vec![
            Answer::Json(201, json!({ "id": "../../admin?drop=1#x" })),
            Answer::Json(201, json!({ "id": ".." })),
        ],
    );
    let s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.created", "vehicle.updated"],
        json!([
            { "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": "/vehicles", "body": VIN_BODY,
                  "expect": [201], "capture": { "id": { "jsonPointer": "/id" } } } ] },
            { "events": ["vehicle.updated"], "requests": [
                { "name": "update", "method": "PUT", "path": "/vehicles/{{ remote.id }}/data", "body": VIN_BODY } ] }
        ]),
    );
    t.connect("hostile", s).await;
    t.ready_true("hostile").await;
    t.post(event(&t, "hst-c1", "vehicle.created", "veh-z1", &[]))
        .await;
    t.status("hostile", "delivered=1", |s| s.delivered >= 1)
        .await;
    t.post(event(&t, "hst-u1", "vehicle.updated", "veh-z1", &[]))
        .await;
    t.status("hostile", "delivered=2", |s| s.delivered >= 2)
        .await;
    let puts: Vec<String> = peer
        .seen()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        puts,
        vec!["/vehicles/..%2F..%2Fadmin%3Fdrop%3D1%23x/data".to_string()]
    );

    // `..` alone would climb out of the path even encoded: the request is not sent.
    t.post(event(&t, "hst-c2", "vehicle.created", "veh-z2", &[]))
        .await;
    t.status("hostile", "delivered=3", |s| s.delivered >= 3)
        .await;
    t.post(event(&t, "hst-u2", "vehicle.updated", "veh-z2", &[]))
        .await;
    let st = t.status("hostile", "failed=1", |s| s.failed >= 1).await;
    let (reason, message) = failure(&st);
    assert_eq!(reason, "RenderFailed", "{message}");
    assert_eq!(peer.seen().iter().filter(|r| r.method == "PUT").count(), 1);
}

#[tokio::test]
async fn api_a_fixed_secret_lets_refused_events_through_and_redirects_are_not_followed() {
    let t = tenant("rotate").await;
    let peer = Peer::start().await;
    let (port, accepted) = forbidden_listener().await;
    peer.script("POST", "/vehicles", vec![Answer::RequireBearer("tok-new")]);
    // A redirect elsewhere (where the credentials would follow) is an answer, not a hop.
    peer.script(
        "PUT",
        "/vehicles/veh-q1",
        vec![Answer::Redirect(
            307,
            format!("http://127.0.0.2:{port}/steal"),
        )],
    );
    t.secret("token", None, json!({ "token": "tok-old" })).await;
    let mut s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.created", "vehicle.updated"],
        json!([
            { "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": "/vehicles", "body": VIN_BODY } ] },
            { "events": ["vehicle.updated"], "requests": [
                { "name": "update", "method": "PUT", "path": "/vehicles/{{ vehicle.id }}", "body": VIN_BODY } ] }
        ]),
    );
    s["auth"] = json!({ "bearer": { "secretRef": { "name": "token" } } });
    s["retry"] = json!({ "maxAttempts": 30, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 });
    t.connect("rotate", s).await;
    t.ready_true("rotate").await;
    t.post(event(&t, "rot-c1", "vehicle.created", "veh-q1", &[]))
        .await;
    let st = t
        .status("rotate", "a refusal", |s| s.last_failure.is_some())
        .await;
    assert_eq!(failure(&st).0, "Unauthorized");
    assert_eq!(st.pending, 1, "kept for a retry");

    t.secret("token", None, json!({ "token": "tok-new" })).await;
    let st = t
        .status("rotate", "delivered=1", |s| s.delivered >= 1)
        .await;
    assert_eq!(st.failed, 0);
    let tries = peer.seen_at("POST", "/vehicles");
    assert_eq!(tries.last().map(|r| r.answered), Some(201));
    assert!(tries.len() >= 2);

    t.post(event(&t, "rot-u1", "vehicle.updated", "veh-q1", &[]))
        .await;
    let st = t.status("rotate", "failed=1", |s| s.failed >= 1).await;
    let (reason, message) = failure(&st);
    assert_eq!(reason, "HttpStatus", "{message}");
    assert!(message.contains("307"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(*accepted.lock().unwrap(), 0, "the redirect was followed");
}

// ---------------------------------------------------------------------------------------
// 7. The mapping changes while a chain waits for its retry

#[tokio::test]
async fn api_a_changed_mapping_starts_a_waiting_chain_over_instead_of_resuming_mid_way() {
    let t = tenant("change").await;
    let peer = Peer::start().await;
    // Step 2 of the first mapping is unavailable for a while.
    peer.script("POST", "/v1/second", vec![Answer::RetryAfter(503, 6)]);
    let step = |name: &str, path: &str| json!({ "name": name, "method": "POST", "path": path, "body": VIN_BODY });
    let mut s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.processed"],
        json!([{ "events": ["vehicle.processed"], "requests": [
            step("first", "/v1/first"), step("second", "/v1/second"), step("third", "/v1/third") ] }]),
    );
    s["retry"] = json!({ "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 10 });
    t.connect("chain", s.clone()).await;
    t.ready_true("chain").await;
    t.post(event(&t, "chg-p1", "vehicle.processed", "veh-c1", &[]))
        .await;
    let failed = peer
        .wait_for("POST", "/v1/second", 1, Duration::from_secs(30))
        .await;
    let changed_at = Instant::now();

    // Another mapping: its step 2 (index 1) is another request than the old step 2.
    s["mappings"] = json!([{ "events": ["vehicle.processed"], "requests": [
        step("alpha", "/v2/alpha"), step("beta", "/v2/beta") ] }]);
    t.connect("chain", s).await;
    t.ready_true("chain").await;
    assert!(
        changed_at.elapsed() < Duration::from_secs(5),
        "the change took effect after the retry was due; the test proves nothing"
    );
    let st = t.status("chain", "delivered=1", |s| s.delivered >= 1).await;
    assert_eq!(st.failed, 0);

    let alpha = peer.seen_at("POST", "/v2/alpha");
    let beta = peer.seen_at("POST", "/v2/beta");
    assert_eq!(
        alpha.len(),
        1,
        "the retry resumed at step 2 of the new mapping, skipping its step 1: {:?}",
        peer.seen()
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(beta.len(), 1);
    assert!(alpha[0].at < beta[0].at);
    assert!(
        alpha[0].at >= failed[0].at + Duration::from_secs(5),
        "the retry waited for Retry-After"
    );
    assert_eq!(peer.seen_at("POST", "/v1/first").len(), 1);
    assert_eq!(peer.seen_at("POST", "/v1/second").len(), 1);
    assert!(peer.seen_at("POST", "/v1/third").is_empty());
}

#[tokio::test]
async fn api_a_request_changed_before_its_retry_is_not_sent_under_the_old_requests_key() {
    let t = tenant("rekey").await;
    let peer = Peer::start().await;
    peer.script("PUT", "/vehicles/veh-k9", vec![Answer::Idempotent(200)]);
    peer.script(
        "POST",
        "/vehicles/veh-k9/notify",
        vec![Answer::RetryAfter(503, 6), Answer::Status(204)],
    );
    let mapping = |color: &str| {
        json!([{ "events": ["vehicle.processed"], "requests": [
            { "name": "update", "method": "PUT", "path": "/vehicles/{{ vehicle.id }}",
              "body": format!(r#"{{ "vin": {{{{ vehicle.vin }}}}, "color": "{color}" }}"#) },
            { "name": "notify", "method": "POST", "path": "/vehicles/{{ vehicle.id }}/notify", "body": VIN_BODY } ] }])
    };
    let mut s = spec(&t, &peer.base_url(), &["vehicle.processed"], mapping("red"));
    s["retry"] = json!({ "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 10 });
    t.connect("rekey", s.clone()).await;
    t.ready_true("rekey").await;
    t.post(event(&t, "rekey-p1", "vehicle.processed", "veh-k9", &[]))
        .await;
    peer.wait_for(
        "POST",
        "/vehicles/veh-k9/notify",
        1,
        Duration::from_secs(30),
    )
    .await;
    let changed_at = Instant::now();
    // The update now sends another body; the notification stays as it was.
    s["mappings"] = mapping("blue");
    t.connect("rekey", s).await;
    t.ready_true("rekey").await;
    assert!(changed_at.elapsed() < Duration::from_secs(5));
    let st = t
        .status("rekey", "a result", |s| s.delivered + s.failed >= 1)
        .await;
    assert_eq!(
        (st.delivered, st.failed),
        (1, 0),
        "the changed update was refused under the old one's key: {:?}",
        st.last_failure
    );
    let updates = peer.seen_at("PUT", "/vehicles/veh-k9");
    assert_eq!(
        updates.len(),
        2,
        "the chain started over with the new update"
    );
    let bodies: Vec<Value> = updates
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(
        (bodies[0]["color"].as_str(), bodies[1]["color"].as_str()),
        (Some("red"), Some("blue"))
    );
    assert_ne!(
        updates[0].key(),
        updates[1].key(),
        "another request, another key"
    );
    let notes = peer.seen_at("POST", "/vehicles/veh-k9/notify");
    assert_eq!(notes.len(), 2);
    assert_eq!(
        notes[0].key(),
        notes[1].key(),
        "the unchanged request keeps its key"
    );
}

// ---------------------------------------------------------------------------------------
// 8. Idempotency keys

#[tokio::test]
async fn api_two_connections_send_different_idempotency_keys_and_a_retry_repeats_its_own() {
    let t = tenant("idem").await;
    let peer = Peer::start().await;
    peer.script("POST", "/vehicles", vec![Answer::FirstTryOfEachKeyFails]);
    for name in ["idem-a", "idem-b"] {
        let s = spec(
            &t,
            &peer.base_url(),
            &["vehicle.created"],
            json!([{ "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": "/vehicles", "body": VIN_BODY,
                  "headers": { "X-Connection": "{{ connection.name }}" }, "expect": [201] } ] }]),
        );
        t.connect(name, s).await;
    }
    for name in ["idem-a", "idem-b"] {
        t.ready_true(name).await;
    }
    t.post(event(&t, "idem-c1", "vehicle.created", "veh-k1", &[]))
        .await;
    for name in ["idem-a", "idem-b"] {
        let st = t.status(name, "delivered=1", |s| s.delivered >= 1).await;
        assert_eq!(st.failed, 0);
    }
    let mut keys: BTreeMap<String, Vec<(String, u16)>> = BTreeMap::new();
    for r in peer.seen_at("POST", "/vehicles") {
        keys.entry(r.header("x-connection").unwrap_or_default())
            .or_default()
            .push((r.key(), r.answered));
    }
    let a = &keys["idem-a"];
    let b = &keys["idem-b"];
    for (name, tries) in [("idem-a", a), ("idem-b", b)] {
        assert_eq!(
            tries.iter().map(|(_, c)| *c).collect::<Vec<_>>(),
            vec![503, 201],
            "{name}: {tries:?}"
        );
        assert!(!tries[0].0.is_empty(), "{name}: a key is sent");
        assert_eq!(tries[0].0, tries[1].0, "{name}: the retry repeats its key");
    }
    assert_ne!(
        a[0].0, b[0].0,
        "two connections sending the same event are two senders"
    );
    // The same connection, the next event of the vehicle: another key.
    t.post(event(&t, "idem-c2", "vehicle.created", "veh-k1", &[]))
        .await;
    t.status("idem-a", "delivered=2", |s| s.delivered >= 2)
        .await;
    let later: BTreeSet<String> = peer
        .seen_at("POST", "/vehicles")
        .iter()
        .filter(|r| r.header("x-connection").as_deref() == Some("idem-a"))
        .map(Seen::key)
        .collect();
    assert_eq!(later.len(), 2, "{later:?}");
}

// ---------------------------------------------------------------------------------------
// 9. An API that never answers

#[tokio::test]
async fn api_a_hanging_request_times_out_and_is_retried_while_other_vehicles_flow() {
    let t = tenant("hang").await;
    let peer = Peer::start().await;
    const TIMEOUT: u64 = 4;
    peer.script(
        "POST",
        "/vehicles/veh-h0",
        vec![Answer::Hang, Answer::Status(201)],
    );
    let others: Vec<String> = (1..=4).map(|i| format!("veh-h{i}")).collect();
    for v in &others {
        peer.script("POST", &format!("/vehicles/{v}"), vec![Answer::Status(201)]);
    }
    let mut s = spec(
        &t,
        &peer.base_url(),
        &["vehicle.created", "vehicle.updated"],
        json!([
            { "events": ["vehicle.created"], "requests": [
                { "name": "create", "method": "POST", "path": "/vehicles/{{ vehicle.id }}", "body": VIN_BODY, "expect": [201] } ] },
            { "events": ["vehicle.updated"], "requests": [
                { "name": "update", "method": "PUT", "path": "/vehicles/{{ vehicle.id }}", "body": VIN_BODY } ] }
        ]),
    );
    s["timeoutSeconds"] = json!(TIMEOUT);
    s["retry"] = json!({ "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 });
    t.connect("hang", s).await;
    t.ready_true("hang").await;

    t.post(event(&t, "hang-c0", "vehicle.created", "veh-h0", &[]))
        .await;
    let first = peer
        .wait_for("POST", "/vehicles/veh-h0", 1, Duration::from_secs(30))
        .await[0]
        .clone();
    // The same vehicle's next event waits behind it; other vehicles do not.
    t.post(event(&t, "hang-u0", "vehicle.updated", "veh-h0", &[]))
        .await;
    for (i, v) in others.iter().enumerate() {
        t.post(event(
            &t,
            &format!("hang-c{}", i + 1),
            "vehicle.created",
            v,
            &[],
        ))
        .await;
    }
    let st = t.status("hang", "delivered=6", |s| s.delivered >= 6).await;
    assert_eq!(st.failed, 0);
    let (reason, message) = failure(&st);
    assert_eq!(reason, "Timeout", "{message}");

    let tries = peer.seen_at("POST", "/vehicles/veh-h0");
    assert_eq!(tries.len(), 2, "one timeout, one retry");
    assert_eq!(tries[0].answered, 0);
    assert_eq!(tries[1].answered, 201);
    let waited = tries[1].at - first.at;
    assert!(
        waited >= Duration::from_secs(TIMEOUT) - Duration::from_millis(200),
        "retried after {waited:?}, before timeoutSeconds {TIMEOUT}"
    );
    for v in &others {
        let r = &peer.seen_at("POST", &format!("/vehicles/{v}"))[0];
        assert!(
            r.at < tries[1].at && r.at < first.at + Duration::from_secs(TIMEOUT),
            "{v} waited for the hanging vehicle ({:?} after it)",
            r.at - first.at
        );
    }
    let update = peer.seen_at("PUT", "/vehicles/veh-h0");
    assert_eq!(update.len(), 1);
    assert!(
        update[0].at > tries[1].at,
        "the vehicle's update went out before its create was through"
    );
}
