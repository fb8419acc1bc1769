//! ApiConnection benchmark (`make bench`): the real operator process against the real control
//! plane and an in-process API receiver on loopback (an upsert answering 201 with the
//! vehicle's id, updates answering 200, an OAuth2 token endpoint), in one run:
//! (a) requests/s through one ApiConnection whose mapping sends one JSON request per event
//!     (an 8-field body), and through another whose mapping is a 3-request chain per event
//!     (POST capturing `id`, PUT `/v1/vehicles/{{ remote.id }}`, a small PATCH sent `when`
//!     the event has images), events over many vehicles; each repetition beside the limit: a
//!     plain hyper client sending the same requests pre-rendered (same methods, paths,
//!     headers and body bytes) to the same receiver with the same concurrency (64 vehicles or
//!     chains in flight). Per case: medians and per-repetition ratios, the operator's CPU per
//!     request (ingest included, as in the delivery benchmark), and at a steady rate the time
//!     from an event's POST (and from its 202) to the arrival of its first and last request;
//! (b) memory of many ApiConnections, each with a 5-request mapping of realistic templates
//!     (distinct per connection): created against a fresh operator; the time until all are
//!     Ready, the operator's RSS before and after, and bytes per connection.
//! Prints figures; asserts nothing about speed.
//!
//! Sizes: VC_BENCH_API_REQUESTS (requests per repetition and case, default 200000, about ten
//! seconds on two cores), VC_BENCH_REPS (repetitions, default 5), VC_BENCH_API_VEHICLES
//! (default 1000), VC_BENCH_LATENCY_SECONDS (seconds per latency run, default 10),
//! VC_BENCH_API_RATE (events per second of the latency runs, default 200),
//! VC_BENCH_API_CONNECTIONS (default 1000), VC_BENCH_API_CASES (which chain lengths, default
//! 1,3; e.g. 3 alone under a profiler).

mod support;
use support::{cpu_seconds, env_usize, histogram_sum_count, median, quantile, rss_mib};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use futures::{StreamExt, TryStreamExt, stream};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};
use vehicle_connect::api::ApiConnection;

/// Requests (vehicles, chains) in flight: the connections' `maxConcurrency` and the limit's.
const CONCURRENCY: usize = 64;
const ACCESS_TOKEN: &str = "at-2f8d0c4e9b7a41d5a3c6e1f0b9d8c7a6";

/// The vehicle body of the mappings: 8 fields, values from the event, one computed.
const VEHICLE_BODY: &str = r#"{ "externalId": {{ vehicle.id }}, "vin": {{ vehicle.vin }}, "stockNumber": {{ vehicle.stockNumber }}, "title": {{ vehicle.make ~ " " ~ vehicle.model }}, "year": {{ vehicle.year }}, "status": "STATUS", "photoCount": {{ images | length }}, "updatedAt": {{ event.timestamp }} }"#;
const STATUS_BODY: &str = r#"{ "status": "published", "photoCount": {{ images | length }} }"#;

/// The API receiver: counts requests, keeps arrival times by idempotency key while
/// tracking, and the size of the last body per kind of request.
#[derive(Default)]
struct Sink {
    count: AtomicU64,
    tokens: AtomicU64,
    track: AtomicBool,
    arrivals: Mutex<HashMap<String, Instant>>,
    /// Last body size per request kind (create, update, patch): from the operator, the limit.
    sizes: [[AtomicUsize; 2]; 3],
}

impl Sink {
    /// `what`: 0 create, 1 update, 2 patch. False when the request lacks the access token.
    fn hit(&self, what: usize, headers: &HeaderMap, body: usize) -> bool {
        let auth = headers.get("authorization").map(|v| v.as_bytes());
        if auth.and_then(|a| a.strip_prefix(b"Bearer ")) != Some(ACCESS_TOKEN.as_bytes()) {
            return false;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
        // The operator's keys start with `vc-`, the limit's with `lim-`.
        let op = key.is_some_and(|k| k.starts_with("vc-"));
        self.sizes[what][usize::from(!op)].store(body, Ordering::Relaxed);
        if op
            && self.track.load(Ordering::Relaxed)
            && let Some(k) = key
        {
            self.arrivals
                .lock()
                .unwrap()
                .insert(k.to_string(), Instant::now());
        }
        true
    }
}

type Answer = (StatusCode, [(&'static str, &'static str); 1], String);

fn unauthorized() -> Answer {
    (
        StatusCode::UNAUTHORIZED,
        [("content-type", "application/json")],
        r#"{"error":"invalid_token"}"#.into(),
    )
}

async fn create(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> Answer {
    if !sink.hit(0, &headers, body.len()) {
        return unauthorized();
    }
    // An upsert: the same id for the same vehicle, as the client's API would keep it.
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["externalId"].as_str().map(|s| format!("r-{s}")))
        .unwrap_or_else(|| "r-unknown".into());
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        format!(r#"{{"id":"{id}","status":"created"}}"#),
    )
}

async fn update(
    State(sink): State<Arc<Sink>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if !sink.hit(1, &headers, body.len()) {
        return unauthorized();
    }
    updated(id)
}

async fn patch(
    State(sink): State<Arc<Sink>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    if !sink.hit(2, &headers, body.len()) {
        return unauthorized();
    }
    updated(id)
}

fn updated(id: String) -> Answer {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        format!(r#"{{"id":"{id}"}}"#),
    )
}

async fn token(State(sink): State<Arc<Sink>>) -> ([(&'static str, &'static str); 1], String) {
    sink.tokens.fetch_add(1, Ordering::Relaxed);
    (
        [("content-type", "application/json")],
        format!(r#"{{"access_token":"{ACCESS_TOKEN}","token_type":"Bearer","expires_in":3600}}"#),
    )
}

fn event(client: &str, id: &str, vehicle: usize) -> Value {
    json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-42",
        "data": { "vehicle": { "id": format!("veh-{vehicle:05}"), "vin": "WVWZZZ1JZXW000001", "stockNumber": "A1234",
                  "make": "Volkswagen", "model": "Golf", "year": 2021 },
                  "user": { "id": "u-42", "name": "Ana Pérez" },
                  "images": [{ "index": 1, "url": "https://cdn.example/veh/1.jpg", "contentType": "image/jpeg", "bytes": 183022 }] }
    })
}

/// One request of a case: the mapping's and the limit's pre-rendered equivalent.
struct Step {
    mapping: Value,
    method: http::Method,
    /// For the limit, with vehicle 0's values.
    path: &'static str,
    body: Bytes,
}

/// A template rendered by hand with vehicle 0's values, as the operator writes them.
fn prerender(template: &str) -> Bytes {
    let mut s = template.to_string();
    for (from, to) in [
        ("{{ vehicle.id }}", r#""veh-00000""#),
        ("{{ vehicle.vin }}", r#""WVWZZZ1JZXW000001""#),
        ("{{ vehicle.stockNumber }}", r#""A1234""#),
        (
            r#"{{ vehicle.make ~ " " ~ vehicle.model }}"#,
            r#""Volkswagen Golf""#,
        ),
        ("{{ vehicle.year }}", "2021"),
        ("{{ images | length }}", "1"),
        ("{{ event.timestamp }}", r#""2026-11-27T10:15:30Z""#),
    ] {
        s = s.replace(from, to);
    }
    Bytes::from(s)
}

fn single_case() -> Vec<Step> {
    let body = VEHICLE_BODY.replace("STATUS", "ready");
    vec![Step {
        mapping: json!({ "name": "upsert", "method": "POST", "path": "/v1/vehicles",
                         "headers": { "X-Source": "vehicle-connect" },
                         "body": body, "expect": [201] }),
        method: http::Method::POST,
        path: "/v1/vehicles",
        body: prerender(&body),
    }]
}

fn chain_case() -> Vec<Step> {
    let (draft, ready) = (
        VEHICLE_BODY.replace("STATUS", "draft"),
        VEHICLE_BODY.replace("STATUS", "ready"),
    );
    vec![
        // The API answers the same id for the same vehicle (an upsert), so the capture is
        // written to the store once per vehicle, not per event.
        Step {
            mapping: json!({ "name": "create", "method": "POST", "path": "/v1/vehicles",
                             "headers": { "X-Source": "vehicle-connect" },
                             "body": draft, "expect": [201],
                             "capture": { "id": { "jsonPointer": "/id" } } }),
            method: http::Method::POST,
            path: "/v1/vehicles",
            body: prerender(&draft),
        },
        Step {
            mapping: json!({ "name": "update", "method": "PUT", "path": "/v1/vehicles/{{ remote.id }}",
                             "headers": { "X-Source": "vehicle-connect" }, "body": ready }),
            method: http::Method::PUT,
            path: "/v1/vehicles/r-veh-00000",
            body: prerender(&ready),
        },
        Step {
            mapping: json!({ "name": "publish", "method": "PATCH", "path": "/v1/vehicles/{{ remote.id }}",
                             "when": "images | length > 0",
                             "headers": { "X-Source": "vehicle-connect" }, "body": STATUS_BODY }),
            method: http::Method::PATCH,
            path: "/v1/vehicles/r-veh-00000",
            body: prerender(STATUS_BODY),
        },
    ]
}

fn connection(name: &str, client_id: &str, port: u16, requests: Vec<Value>) -> Value {
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "ApiConnection",
        "metadata": { "name": name },
        "spec": {
            "clientId": client_id, "events": ["vehicle.processed"],
            "baseUrl": format!("http://127.0.0.1:{port}"),
            "auth": { "oauth2": { "tokenUrl": format!("http://127.0.0.1:{port}/oauth/token"),
                                  "clientSecretRef": { "name": "api-oauth" } } },
            "timeoutSeconds": 10, "maxConcurrency": CONCURRENCY,
            "mappings": [ { "events": ["vehicle.processed"], "requests": requests } ]
        }
    })
}

/// A 5-request mapping of connection `i`: its own dealer code, header, query and texts.
fn memory_connection(i: usize, port: u16) -> Value {
    let body = format!(
        r#"{{ "dealerCode": "D{i:04}", "externalId": {{{{ vehicle.id }}}}, "vin": {{{{ vehicle.vin }}}}, "stockNumber": {{{{ vehicle.stockNumber | default("") }}}}, "title": {{{{ (vehicle.make ~ " " ~ vehicle.model) | trim }}}}, "year": {{{{ vehicle.year }}}}, "photoCount": {{{{ images | length }}}}, "updatedAt": {{{{ event.timestamp }}}} }}"#
    );
    let requests = json!([
        { "name": "create", "method": "POST", "path": format!("/v1/dealers/D{i:04}/vehicles"),
          "when": "not remote.id", "body": body, "expect": [201],
          "capture": { "id": { "jsonPointer": "/id" } } },
        { "name": "update", "method": "PUT", "path": "/v1/vehicles/{{ remote.id }}",
          "headers": { "X-Dealer": format!("D{i:04}"), "X-Event": "{{ event.id }}" },
          "body": body.replace("\"dealerCode\"", "\"status\": \"ready\", \"dealerCode\"") },
        { "name": "photo", "method": "POST", "path": "/v1/vehicles/{{ remote.id }}/photos",
          "forEachImage": { "send": "multipart", "field": "file",
                            "fields": { "position": "{{ image.position }}",
                                        "caption": format!("D{i:04} {{{{ vehicle.make }}}} {{{{ vehicle.model }}}} #{{{{ image.index }}}}") } },
          "expect": [201] },
        { "name": "publish", "method": "PATCH", "path": "/v1/vehicles/{{ remote.id }}",
          "when": "images | length > 0",
          "body": format!(r#"{{ "status": "published", "channel": "dealer-{i}", "photos": {{{{ images | map(attribute="index") | list | tojson }}}} }}"#) },
        { "name": "notify", "method": "POST", "path": "/v1/notifications",
          "query": { "source": format!("vc-{i}"), "vehicle": "{{ vehicle.id }}" },
          "body": format!(r#"{{ "dealerCode": "D{i:04}", "message": {{{{ "Vehicle " ~ vehicle.id ~ " processed" }}}}, "event": {{{{ event.id }}}} }}"#) }
    ]);
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "ApiConnection",
        "metadata": { "name": format!("dms-{i:04}") },
        "spec": {
            "clientId": format!("dealer-m{}", i % 200),
            "events": ["vehicle.created", "vehicle.updated", "vehicle.processed"],
            "baseUrl": format!("http://127.0.0.1:{port}/api/{i}"),
            "auth": { "oauth2": { "tokenUrl": format!("http://127.0.0.1:{port}/oauth/token"),
                                  "clientSecretRef": { "name": "api-oauth" }, "scopes": ["vehicles.write"] } },
            "mappings": [ { "events": ["vehicle.created", "vehicle.updated", "vehicle.processed"],
                            "requests": requests } ]
        }
    })
}

/// How many ApiConnections are Ready=True, from one watch.
fn count_ready(client: Client, counter: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut s = watcher(
            Api::<ApiConnection>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .applied_objects()
        .boxed();
        while let Ok(Some(o)) = s.try_next().await {
            let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            let ready = o.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                seen.insert(key);
            } else {
                seen.remove(&key);
            }
            counter.store(seen.len(), Ordering::Relaxed);
        }
    });
}

async fn wait_count(sink: &Sink, target: u64, limit: Duration) -> bool {
    let start = Instant::now();
    while sink.count.load(Ordering::Relaxed) < target {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

/// The plain hyper client's rate, in requests per second: `events` chains of the case's
/// pre-rendered requests, each in order, `CONCURRENCY` chains at once; and how many
/// requests failed or were not answered 2xx (a chain stops at its first).
async fn limit_once(
    hyper: &HyperClient<HttpConnector, Full<Bytes>>,
    port: u16,
    steps: &[Step],
    events: usize,
) -> (f64, usize) {
    let start = Instant::now();
    let failed = stream::iter(0..events)
        .map(|e| async move {
            for (k, s) in steps.iter().enumerate() {
                let req = hyper::Request::builder()
                    .method(s.method.clone())
                    .uri(format!("http://127.0.0.1:{port}{}", s.path))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {ACCESS_TOKEN}"))
                    .header("idempotency-key", format!("lim-{e}-{k}"))
                    .header("x-source", "vehicle-connect")
                    .header("accept", "application/json, */*;q=0.5")
                    .header("user-agent", "vehicle-connect/0.1.0")
                    .body(Full::new(s.body.clone()))
                    .expect("request");
                let ok = match hyper.request(req).await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        ok && http_body_util::BodyExt::collect(r.into_body())
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    return 1;
                }
            }
            0
        })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |n, f| async move { n + f })
        .await;
    let rate = (events * steps.len()) as f64 / start.elapsed().as_secs_f64();
    (rate, failed)
}

async fn metrics_text(http: &reqwest::Client, op: &OperatorProcess) -> String {
    match http.get(op.url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Mean attempt (whole chain) duration of ApiConnections between two metrics texts, in ms.
fn attempt_ms(before: &str, after: &str) -> f64 {
    let f = |t: &str| {
        histogram_sum_count(
            t,
            "vehicle_connect_attempt_duration_seconds",
            "{kind=\"api\"}",
        )
    };
    let ((s0, c0), (s1, c1)) = (f(before), f(after));
    if c1 > c0 {
        (s1 - s0) / (c1 - c0) * 1000.0
    } else {
        f64::NAN
    }
}

fn runs(v: &[f64], unit: &str) -> String {
    v.iter()
        .map(|x| format!("{x:.0}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn post_events(http: &reqwest::Client, ingest: &str, events: &[Value]) -> (u16, Instant) {
    let r = http
        .post(ingest)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(events).expect("json"))
        .send()
        .await;
    (r.map_or(0, |r| r.status().as_u16()), Instant::now())
}

/// When an event was posted, when the answer came, and its status (0: no answer).
type Sent = (Instant, Instant, u16);

struct CaseResult {
    name: &'static str,
    ratio: f64,
    rate: f64,
    cpu_us: f64,
    first_p50: f64,
    first_p99: f64,
    last_p50: f64,
    last_p99: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests = env_usize("VC_BENCH_API_REQUESTS", 200_000).max(3);
    let reps = env_usize("VC_BENCH_REPS", 5).max(1);
    let vehicles = env_usize("VC_BENCH_API_VEHICLES", 1000).max(1);
    let latency_secs = env_usize("VC_BENCH_LATENCY_SECONDS", 10).max(1);
    let rate = env_usize("VC_BENCH_API_RATE", 200).max(10);
    let connections = env_usize("VC_BENCH_API_CONNECTIONS", 1000);

    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/oauth/token", post(token))
        .route("/v1/vehicles", post(create))
        .route("/v1/vehicles/{id}", axum::routing::put(update).patch(patch))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "api benchmark: {requests} requests per repetition and case, {reps} repetitions, {vehicles} vehicles, {CONCURRENCY} in flight, loopback, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let hyper: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();

    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await?;
    let client = cp.client().await?;
    let ns = cp
        .namespace_with_annotations("api-bench", &[("connect.vehicles.io/clients", "*")])
        .await?;
    let pp = PatchParams::apply("vc-bench").force();
    let oauth_secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "api-oauth" },
        "stringData": { "client-id": "vc-bench", "client-secret": "s3cr3t-bench-client" }
    });
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .patch("api-oauth", &pp, &Patch::Apply(&oauth_secret))
        .await?;
    let data = tempfile::tempdir()?;
    let op = OperatorProcess::start(
        cp,
        data.path().join("store"),
        Launch::new(env!("CARGO_BIN_EXE_vehicle-connect")).rust_log("warn"),
    )
    .await?;
    let pid = op.pid();
    let http = reqwest::Client::new();
    let ingest = op.url("/v1/events");
    let apis: Api<ApiConnection> = Api::namespaced(client.clone(), &ns.name);

    let mut results = Vec::new();
    let cases: Vec<usize> = std::env::var("VC_BENCH_API_CASES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 3]);
    for (name, steps) in [
        ("1 request/event", single_case()),
        ("3-request chain", chain_case()),
    ] {
        if !cases.contains(&steps.len()) {
            continue;
        }
        let chain = steps.len();
        let client_id = format!("dealer-api{chain}");
        let conn = connection(
            &format!("dms-{chain}"),
            &client_id,
            port,
            steps.iter().map(|s| s.mapping.clone()).collect(),
        );
        apis.patch(&format!("dms-{chain}"), &pp, &Patch::Apply(&conn))
            .await?;
        let started = Instant::now();
        loop {
            let c = apis.get(&format!("dms-{chain}")).await?;
            let ready = c.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Ready")
                    .map(|c| (c.status.clone(), c.message.clone()))
            });
            match ready {
                Some((s, _)) if s == "True" => break,
                Some((_, m)) if started.elapsed() > Duration::from_secs(60) => {
                    anyhow::bail!("ApiConnection dms-{chain} not Ready in 60 s: {m}")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let events = (requests / chain).max(1);
        let total = (events * chain) as u64;

        let (mut limits, mut rates, mut ratios, mut cpus, mut limit_cpu) =
            (vec![], vec![], vec![], vec![], vec![]);
        let metrics0 = metrics_text(&http, &op).await;
        for rep in 0..reps {
            let before = cpu_seconds(std::process::id());
            sink.count.store(0, Ordering::Relaxed);
            let (limit, failed) = limit_once(&hyper, port, &steps, events).await;
            if failed > 0 {
                println!("(a) {name}, repetition {rep}: {failed} of the limit's requests failed");
            }
            limit_cpu.push((cpu_seconds(std::process::id()) - before) * 1e6 / total as f64);

            sink.count.store(0, Ordering::Relaxed);
            let batches: Vec<Vec<Value>> = (0..events)
                .map(|i| {
                    event(
                        &client_id,
                        &format!("evt_a{chain}_{rep}_{i:07}"),
                        i % vehicles,
                    )
                })
                .collect::<Vec<_>>()
                .chunks(100)
                .map(|c| c.to_vec())
                .collect();
            let cpu0 = cpu_seconds(pid);
            let start = Instant::now();
            let refused = stream::iter(batches)
                .map(|b| {
                    let (http, ingest) = (http.clone(), ingest.clone());
                    async move { post_events(&http, &ingest, &b).await.0 }
                })
                .buffer_unordered(8)
                .filter(|s| std::future::ready(*s != 202))
                .count()
                .await;
            if refused > 0 {
                println!("(a) {name}, repetition {rep}: {refused} batches not accepted");
            }
            if !wait_count(&sink, total, Duration::from_secs(600)).await {
                println!(
                    "(a) {name}, repetition {rep}: only {} of {total} requests arrived in 600 s",
                    sink.count.load(Ordering::Relaxed)
                );
                continue;
            }
            let r = total as f64 / start.elapsed().as_secs_f64();
            cpus.push((cpu_seconds(pid) - cpu0) * 1e6 / total as f64);
            limits.push(limit);
            rates.push(r);
            ratios.push(100.0 * r / limit);
        }
        let metrics1 = metrics_text(&http, &op).await;

        // Latency at a steady rate: one event per POST, as a producer sends them.
        sink.arrivals.lock().unwrap().clear();
        sink.track.store(true, Ordering::Relaxed);
        sink.count.store(0, Ordering::Relaxed);
        let n = latency_secs * rate;
        let times: Arc<Mutex<HashMap<String, Sent>>> = Arc::default();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let per_tick = (rate / 100).max(1);
        let mut tasks = Vec::new();
        let mut i = 0;
        while i < n {
            tick.tick().await;
            for _ in 0..per_tick.min(n - i) {
                let id = format!("evtlat{chain}x{i:07}");
                let ev = event(&client_id, &id, (i * 7) % vehicles);
                let (http, ingest, times) = (http.clone(), ingest.clone(), times.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let (status, answered) = post_events(&http, &ingest, &[ev]).await;
                    times.lock().unwrap().insert(id, (sent, answered, status));
                }));
                i += 1;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        wait_count(&sink, (n * chain) as u64, Duration::from_secs(120)).await;
        sink.track.store(false, Ordering::Relaxed);
        let arrivals = std::mem::take(&mut *sink.arrivals.lock().unwrap());
        // Idempotency keys: vc-<uid>-<event id>-<request>.
        let mut by_event: HashMap<&str, (Instant, Instant)> = HashMap::new();
        for (key, at) in &arrivals {
            let mut parts = key.splitn(4, '-').skip(2);
            let Some(ev) = parts.next() else { continue };
            let e = by_event.entry(ev).or_insert((*at, *at));
            e.0 = e.0.min(*at);
            e.1 = e.1.max(*at);
        }
        let times = times.lock().unwrap().clone();
        // The operator accepts an event (durably) just before it answers 202, and often sends
        // the first request before the 202 is read here; so the figures count from the POST,
        // and 202→arrival is given as well (0 when the request came first).
        let (mut ingest_ms, mut first_ms, mut last_ms, mut after_ms) =
            (vec![], vec![], vec![], vec![]);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (mut missing, mut early) = (0, 0);
        for (id, (sent, answered, status)) in &times {
            if *status != 202 {
                continue;
            }
            ingest_ms.push(ms(answered.duration_since(*sent)));
            match by_event.get(id.as_str()) {
                Some((first, last)) => {
                    first_ms.push(ms(first.saturating_duration_since(*sent)));
                    last_ms.push(ms(last.saturating_duration_since(*sent)));
                    after_ms.push(ms(first.saturating_duration_since(*answered)));
                    early += usize::from(first < answered);
                }
                None => missing += 1,
            }
        }
        for v in [&mut ingest_ms, &mut first_ms, &mut last_ms, &mut after_ms] {
            v.sort_by(|a, b| a.total_cmp(b));
        }
        let refused = times.values().filter(|t| t.2 != 202).count();

        let body_sizes = steps
            .iter()
            .map(|s| {
                let n = s.mapping["name"].as_str().unwrap_or_default();
                let what = match s.method {
                    http::Method::POST => 0,
                    http::Method::PUT => 1,
                    _ => 2,
                };
                let size = |from: usize| sink.sizes[what][from].load(Ordering::Relaxed);
                format!("{n} {}/{}", size(0), size(1))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let cpu = median(cpus.clone());
        let ratio = median(ratios.clone());
        println!(
            "(a) {name}: {events} events → {total} requests × {} repetitions: median {:.0} requests/s = {ratio:.0}% of the limit (median {:.0} requests/s)\n    runs: {} | limit {} | ratio {}\n    CPU per request (µs, median): operator {cpu:.0} (ingest included); plain hyper client + receiver {:.0}; the operator's chain attempts took {:.2} ms on average; body bytes operator/limit: {body_sizes}; operator RSS {:.0} MiB",
            rates.len(),
            median(rates.clone()),
            median(limits.clone()),
            runs(&rates, "/s"),
            runs(&limits, "/s"),
            runs(&ratios, "%"),
            median(limit_cpu),
            attempt_ms(&metrics0, &metrics1),
            rss_mib(pid, "VmRSS:"),
        );
        println!(
            "    latency at {rate} events/s for {latency_secs} s ({n} events, one per POST; {refused} not accepted, {missing} without arrivals): POST→first request p50 {:.1} ms, p99 {:.1} ms; POST→last request of the chain p50 {:.1} ms, p99 {:.1} ms\n    where the time goes: POST→202 (parse, durable accept) p50 {:.1} ms, p99 {:.1} ms; 202→first request p50 {:.1} ms, p99 {:.1} ms ({early} of {} first requests arrived before the 202 was read)",
            quantile(&first_ms, 0.5),
            quantile(&first_ms, 0.99),
            quantile(&last_ms, 0.5),
            quantile(&last_ms, 0.99),
            quantile(&ingest_ms, 0.5),
            quantile(&ingest_ms, 0.99),
            quantile(&after_ms, 0.5),
            quantile(&after_ms, 0.99),
            after_ms.len(),
        );
        results.push(CaseResult {
            name,
            ratio,
            rate: median(rates),
            cpu_us: cpu,
            first_p50: quantile(&first_ms, 0.5),
            first_p99: quantile(&first_ms, 0.99),
            last_p50: quantile(&last_ms, 0.5),
            last_p99: quantile(&last_ms, 0.99),
        });
    }
    println!(
        "    OAuth2 tokens fetched by the operator: {}",
        sink.tokens.load(Ordering::Relaxed)
    );
    drop(op);

    // (b) memory of many connections, on a fresh operator (the two above exist too).
    let data = tempfile::tempdir()?;
    let op = OperatorProcess::start(
        cp,
        data.path().join("store"),
        Launch::new(env!("CARGO_BIN_EXE_vehicle-connect")).rust_log("warn"),
    )
    .await?;
    let pid = op.pid();
    let ns = cp
        .namespace_with_annotations("api-mem", &[("connect.vehicles.io/clients", "*")])
        .await?;
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .patch("api-oauth", &pp, &Patch::Apply(&oauth_secret))
        .await?;
    let ready = Arc::new(AtomicUsize::new(0));
    count_ready(client.clone(), ready.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let base_ready = ready.load(Ordering::Relaxed);
    let rss_before = rss_mib(pid, "VmRSS:");
    let apis: Api<ApiConnection> = Api::namespaced(client.clone(), &ns.name);
    let started = Instant::now();
    let errors = stream::iter(0..connections)
        .map(|i| {
            let (apis, pp) = (apis.clone(), pp.clone());
            async move {
                let v = memory_connection(i, port);
                let name = format!("dms-{i:04}");
                apis.patch(&name, &pp, &Patch::Apply(&v)).await.err()
            }
        })
        .buffer_unordered(32)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    if let Some(e) = errors.first() {
        anyhow::bail!("{} ApiConnections not created, first: {e}", errors.len());
    }
    let created = started.elapsed();
    let mut all_ready = None;
    let mut last = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        let r = ready.load(Ordering::Relaxed).saturating_sub(base_ready);
        if r >= connections {
            all_ready = Some(started.elapsed());
            break;
        }
        if last.elapsed() >= Duration::from_secs(10) {
            println!(
                "  … {:>4.0}s: {r}/{connections} Ready; operator RSS {:.0} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib(pid, "VmRSS:")
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss_mib(pid, "VmRSS:");
    let per = (rss_after - rss_before) * 1024.0 * 1024.0 / connections.max(1) as f64;
    let ready_text = all_ready
        .map(|t| format!("{:.1}s", t.as_secs_f64()))
        .unwrap_or_else(|| "not within 600s".into());
    println!(
        "(b) {connections} ApiConnections with 5-request mappings: created in {:.1}s, all Ready {ready_text} after the first create; operator RSS {rss_before:.1} MiB before, {rss_after:.1} MiB after ({per:.0} bytes per connection), VmHWM {:.1} MiB",
        created.as_secs_f64(),
        rss_mib(pid, "VmHWM:"),
    );
    drop(op);

    println!(
        "RESULT api: {}; {connections} connections Ready in {ready_text}, {per:.0} bytes RSS each",
        results
            .iter()
            .map(|r| format!(
                "{} {:.0} req/s = {:.0}% of the hyper limit, {:.0} µs operator CPU/request, POST→first request p50 {:.1} ms p99 {:.1} ms, →last p50 {:.1} ms p99 {:.1} ms",
                r.name, r.rate, r.ratio, r.cpu_us, r.first_p50, r.first_p99, r.last_p50, r.last_p99
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}
