//! Delivery benchmark (`make bench`): on loopback, in one run,
//! (a) the limit: a plain hyper client POSTing signed-size bodies to the receiver as fast as
//!     it can (64 in flight);
//! (b) vehicle-connect ingesting events and delivering them to 1, 100 and 1,000
//!     subscriptions (signed, per-vehicle ordered, durably recorded);
//! (c) ingest→delivery latency at a steady 1,000 events/s to one subscription;
//! and the operator's RSS. Prints figures and ratios; asserts nothing about speed.
//! Size: VC_BENCH_EVENTS (deliveries per case, default 20000).

mod support;
use support::{env_usize, rss_mib};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use futures::{StreamExt, stream};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vc_envtest::ControlPlane;
use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};
use vehicle_connect::api::WebhookSubscription;

#[derive(Default)]
struct Sink {
    count: AtomicU64,
    /// event id → arrival, for latency runs.
    arrivals: Mutex<HashMap<String, Instant>>,
    track: std::sync::atomic::AtomicBool,
}

async fn receive(State(sink): State<Arc<Sink>>, headers: HeaderMap, _body: Bytes) -> &'static str {
    sink.count.fetch_add(1, Ordering::Relaxed);
    if sink.track.load(Ordering::Relaxed)
        && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
    {
        sink.arrivals
            .lock()
            .unwrap()
            .insert(id.to_string(), Instant::now());
    }
    "ok"
}

fn event(client: &str, id: &str, vehicle: usize) -> serde_json::Value {
    json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-42",
        "data": { "vehicle": { "id": format!("veh-{vehicle}"), "vin": "WVWZZZ1JZXW000001", "stockNumber": "A1234",
                  "make": "Volkswagen", "model": "Golf", "year": 2021 },
                  "user": { "id": "u-42", "name": "Ana Pérez" },
                  "images": [{ "index": 1, "url": "https://cdn.example/veh/1.jpg", "contentType": "image/jpeg", "bytes": 183022 }] }
    })
}

async fn wait_count(sink: &Sink, target: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while sink.count.load(Ordering::Relaxed) < target {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("VC_BENCH_EVENTS", 20_000);
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = serde_json::to_vec(&event("dealer-bench", "evt_limit_000000", 1))?;
    println!(
        "delivery benchmark: {n} deliveries per case, body {} bytes, loopback, {} cores",
        body.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // (a) the limit, three times.
    let hyper: HyperClient<_, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    let mut limits = Vec::new();
    for _ in 0..3 {
        sink.count.store(0, Ordering::Relaxed);
        let start = Instant::now();
        stream::iter(0..n)
            .map(|_| {
                let req = hyper::Request::post(format!("http://127.0.0.1:{port}/limit"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.clone())))
                    .expect("request");
                let c = hyper.clone();
                async move { c.request(req).await.map(|r| r.status()) }
            })
            .buffer_unordered(64)
            .for_each(|_| async {})
            .await;
        limits.push(n as f64 / start.elapsed().as_secs_f64());
    }
    let limit = median(limits.clone());
    println!(
        "(a) limit, plain hyper client: median {limit:.0} req/s (runs: {})",
        limits
            .iter()
            .map(|l| format!("{l:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // The control plane and the operator.
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await?;
    let client = cp.client().await?;
    let ns = cp
        .namespace_with_annotations("delivery-bench", &[("connect.vehicles.io/clients", "*")])
        .await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let pp = PatchParams::apply("vc-bench").force();
    secrets
        .patch(
            "signing",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" },
                "stringData": { "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
            })),
        )
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

    let whs: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let make_subs = |client_id: String, count: usize| {
        let whs = whs.clone();
        let pp = pp.clone();
        async move {
            stream::iter(0..count)
                .map(|i| {
                    let (whs, pp, client_id) = (whs.clone(), pp.clone(), client_id.clone());
                    async move {
                        let name = format!("{client_id}-{i:04}");
                        whs.patch(&name, &pp, &Patch::Apply(json!({
                            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                            "metadata": { "name": name },
                            "spec": { "url": format!("http://127.0.0.1:{port}/{client_id}/{i}"), "clientId": client_id,
                                      "events": ["vehicle.processed"], "signing": { "secretRef": { "name": "signing" } },
                                      "maxConcurrency": 64 }
                        }))).await.map(|_| ())
                    }
                })
                .buffer_unordered(32)
                .for_each(|r| async move { if let Err(e) = r { eprintln!("create: {e}") } })
                .await;
            // Ready = registered; wait for all.
            loop {
                let list = whs.list(&Default::default()).await.expect("list");
                let ready = list
                    .items
                    .iter()
                    .filter(|w| w.spec.client_id == client_id)
                    .filter(|w| {
                        w.status.as_ref().is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                    })
                    .count();
                if ready >= count {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // (b) throughput to 1, 100 and 1,000 subscriptions.
    let post = |events: Vec<serde_json::Value>| {
        let (http, ingest) = (http.clone(), ingest.clone());
        async move {
            let r = http
                .post(&ingest)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&events).expect("json"))
                .send()
                .await
                .expect("post");
            assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        }
    };
    let mut results = Vec::new();
    for subs in [1usize, 100, 1000] {
        let client_id = format!("dealer-b{subs}");
        make_subs(client_id.clone(), subs).await;
        let events = (n / subs).max(1);
        let deliveries = (events * subs) as u64;
        sink.count.store(0, Ordering::Relaxed);
        let start = Instant::now();
        let batches: Vec<Vec<serde_json::Value>> = (0..events)
            .map(|i| event(&client_id, &format!("evt_b{subs}_{i:07}"), i % 500))
            .collect::<Vec<_>>()
            .chunks(100)
            .map(|c| c.to_vec())
            .collect();
        stream::iter(batches)
            .map(&post)
            .buffer_unordered(8)
            .for_each(|_| async {})
            .await;
        let ingested = start.elapsed();
        let done = wait_count(&sink, deliveries, Duration::from_secs(300)).await;
        let rss = rss_mib(pid, "VmRSS:");
        match done {
            Some(_) => {
                let t = start.elapsed().as_secs_f64();
                let rate = deliveries as f64 / t;
                println!(
                    "(b) {subs:>4} subscription(s): {events} events → {deliveries} deliveries in {t:.2}s = {rate:.0} deliveries/s ({:.0}% of the limit); ingest took {:.2}s ({:.0} events/s); RSS {rss:.0} MiB",
                    100.0 * rate / limit,
                    ingested.as_secs_f64(),
                    events as f64 / ingested.as_secs_f64()
                );
                results.push((subs, rate));
            }
            None => println!(
                "(b) {subs:>4} subscription(s): only {} of {deliveries} delivered in 300s",
                sink.count.load(Ordering::Relaxed)
            ),
        }
    }

    // (c) latency at a steady 1,000 events/s for 10 s, one subscription.
    let client_id = "dealer-b1".to_string();
    sink.arrivals.lock().unwrap().clear();
    sink.track.store(true, Ordering::Relaxed);
    sink.count.store(0, Ordering::Relaxed);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let rate = 1000u64;
    let total = 10 * rate;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut tasks = Vec::new();
    for b in 0..(total / 10) {
        tick.tick().await;
        // 10 events every 10 ms, one request each (no batching, like a real producer).
        for k in 0..10 {
            let id = format!("evt_lat_{b:05}_{k}");
            let ev = event(&client_id, &id, (b * 10 + k) as usize % 500);
            let (http, ingest, sent) = (http.clone(), ingest.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                sent.lock().unwrap().insert(id, Instant::now());
                let _ = http
                    .post(&ingest)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&ev).expect("json"))
                    .send()
                    .await;
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    wait_count(&sink, total, Duration::from_secs(60)).await;
    let arrivals = sink.arrivals.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t0)| {
            arrivals
                .get(id)
                .map(|t1| t1.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "(c) latency, POST → receiver, at {achieved:.0} events/s offered ({} delivered): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (aim: p99 ≤ 20 ms)",
        lat.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        lat[lat.len() - 1]
    );
    println!(
        "RESULT limit {limit:.0} req/s; {}",
        results
            .iter()
            .map(|(s, r)| format!("{s} subs: {r:.0}/s = {:.0}% of limit", 100.0 * r / limit))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "RESULT latency p50 {:.1} ms p99 {:.1} ms at 1,000 events/s",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "RESULT operator RSS now {:.0} MiB, peak {:.0} MiB",
        rss_mib(pid, "VmRSS:"),
        rss_mib(pid, "VmHWM:")
    );
    drop(op);
    Ok(())
}
