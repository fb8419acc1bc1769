//! Delivery benchmark (`make bench`): on loopback, in one run,
//! (a) the limit: a plain hyper client POSTing event-size bodies to the receiver as fast as
//!     it can (64 in flight), measured again right before each repetition of each case;
//! (b) vehicle-connect ingesting events and delivering them to 1, 100 and 1,000
//!     subscriptions (signed, per-vehicle ordered, durably accepted), each case repeated;
//! (c) ingest→delivery latency at a steady 1,000 events/s to one subscription, repeated,
//!     with where the time goes (POST→202, which includes the durable commit; 202→arrival,
//!     which is queueing and the attempt; the operator's own attempt-duration mean);
//! and per case the CPU each process spent per delivery, and the operator's RSS.
//! Prints figures and ratios (medians over repetitions); asserts nothing about speed.
//! Sizes: VC_BENCH_EVENTS (deliveries per repetition, default 20000), VC_BENCH_REPS
//! (repetitions, default 5), VC_BENCH_LATENCY_SECONDS (seconds per latency repetition,
//! default 10), VC_BENCH_SUBS (which subscription counts, default 1,100,1000).

mod support;
use support::sink::{Sink, event, limit_once, receive, wait_count};
use support::{cpu_seconds, env_usize, histogram_sum_count, median, quantile, rss_mib};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use futures::{StreamExt, stream};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vc_envtest::ControlPlane;
use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};
use vehicle_connect::api::WebhookSubscription;

/// When an event was posted, when the answer came, and its status (0: no answer).
type Sent = (Instant, Instant, u16);

/// CPU seconds of the processes a case involves.
#[derive(Clone, Copy)]
struct Cpu {
    operator: f64,
    control_plane: f64,
    bench: f64,
}

impl Cpu {
    fn now(operator: u32, cp: &ControlPlane) -> Self {
        Cpu {
            operator: cpu_seconds(operator),
            control_plane: cpu_seconds(cp.apiserver_pid) + cpu_seconds(cp.etcd_pid),
            bench: cpu_seconds(std::process::id()),
        }
    }

    /// Microseconds per item since `before`.
    fn per(&self, before: &Cpu, items: u64) -> Cpu {
        let us = |a: f64, b: f64| (a - b) * 1e6 / items as f64;
        Cpu {
            operator: us(self.operator, before.operator),
            control_plane: us(self.control_plane, before.control_plane),
            bench: us(self.bench, before.bench),
        }
    }
}

fn runs(v: &[f64], unit: &str) -> String {
    v.iter()
        .map(|x| format!("{x:.0}{unit}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn metrics_text(http: &reqwest::Client, op: &OperatorProcess) -> String {
    match http.get(op.url("/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("VC_BENCH_EVENTS", 20_000);
    let reps = env_usize("VC_BENCH_REPS", 5).max(1);
    let latency_secs = env_usize("VC_BENCH_LATENCY_SECONDS", 10).max(1) as u64;
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = Bytes::from(serde_json::to_vec(&event(
        "dealer-bench",
        "evt_limit_000000",
        1,
    ))?);
    println!(
        "delivery benchmark: {n} deliveries per repetition, {reps} repetitions per case, body {} bytes, loopback, {} cores",
        body.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let hyper: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();

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

    // (b) throughput to 1, 100 and 1,000 subscriptions, each repetition beside a fresh
    // measurement of the limit.
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
    let mut summary = Vec::new();
    // VC_BENCH_SUBS=1000 (comma-separated) runs only those cases, e.g. under a profiler.
    let cases: Vec<usize> = std::env::var("VC_BENCH_SUBS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 1000]);
    for subs in cases {
        let client_id = format!("dealer-b{subs}");
        make_subs(client_id.clone(), subs).await;
        // Let the status writes of the new subscriptions settle before measuring.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let events = (n / subs).max(1);
        let deliveries = (events * subs) as u64;
        let (mut limits, mut rates, mut ratios, mut cpus) = (vec![], vec![], vec![], vec![]);
        let mut limit_cpu = Vec::new();
        for rep in 0..reps {
            let before = cpu_seconds(std::process::id());
            let limit = limit_once(&hyper, &sink, port, &body, n).await;
            limit_cpu.push((cpu_seconds(std::process::id()) - before) * 1e6 / n as f64);
            sink.count.store(0, Ordering::Relaxed);
            let batches: Vec<Vec<serde_json::Value>> = (0..events)
                .map(|i| event(&client_id, &format!("evt_b{subs}_{rep}_{i:07}"), i % 500))
                .collect::<Vec<_>>()
                .chunks(100)
                .map(|c| c.to_vec())
                .collect();
            let cpu0 = Cpu::now(pid, cp);
            let start = Instant::now();
            stream::iter(batches)
                .map(&post)
                .buffer_unordered(8)
                .for_each(|_| async {})
                .await;
            if wait_count(&sink, deliveries, Duration::from_secs(300))
                .await
                .is_none()
            {
                println!(
                    "(b) {subs:>4} subscription(s), repetition {rep}: only {} of {deliveries} delivered in 300 s",
                    sink.count.load(Ordering::Relaxed)
                );
                continue;
            }
            let rate = deliveries as f64 / start.elapsed().as_secs_f64();
            cpus.push(Cpu::now(pid, cp).per(&cpu0, deliveries));
            limits.push(limit);
            rates.push(rate);
            ratios.push(100.0 * rate / limit);
        }
        let ratio = median(ratios.clone());
        let cpu = |f: fn(&Cpu) -> f64| median(cpus.iter().map(f).collect());
        println!(
            "(b) {subs:>4} subscription(s), {events} events → {deliveries} deliveries × {} repetitions: median {:.0} deliveries/s = {ratio:.0}% of the limit (median {:.0} req/s)\n    runs: {} | limit {} | ratio {}\n    CPU per delivery (µs, median): operator {:.0}, control plane {:.0}, bench process (load + receiver) {:.0}; plain hyper client + receiver: {:.0} per request; operator RSS {:.0} MiB",
            rates.len(),
            median(rates.clone()),
            median(limits.clone()),
            runs(&rates, "/s"),
            runs(&limits, "/s"),
            runs(&ratios, "%"),
            cpu(|c| c.operator),
            cpu(|c| c.control_plane),
            cpu(|c| c.bench),
            median(limit_cpu),
            rss_mib(pid, "VmRSS:"),
        );
        summary.push((subs, ratio, cpu(|c| c.operator)));
    }

    // (c) latency at a steady 1,000 events/s, one subscription, repeated.
    let client_id = "dealer-b1".to_string();
    // Its subscription exists already unless VC_BENCH_SUBS left the 1-subscription case out.
    make_subs(client_id.clone(), 1).await;
    sink.track.store(true, Ordering::Relaxed);
    let rate = 1000u64;
    let mut all: Vec<f64> = Vec::new();
    let mut ingest_ms: Vec<f64> = Vec::new();
    let mut after_ms: Vec<f64> = Vec::new();
    let mut rep_p99 = Vec::new();
    let mut refused = std::collections::BTreeMap::new();
    let metrics0 = metrics_text(&http, &op).await;
    for rep in 0..reps {
        sink.arrivals.lock().unwrap().clear();
        sink.count.store(0, Ordering::Relaxed);
        let times: Arc<Mutex<HashMap<String, Sent>>> = Arc::default();
        let total = latency_secs * rate;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut tasks = Vec::new();
        for b in 0..(total / 10) {
            tick.tick().await;
            // 10 events every 10 ms, one request each (no batching, like a real producer).
            for k in 0..10 {
                let id = format!("evt_lat_{rep}_{b:06}_{k}");
                let ev = event(&client_id, &id, (b * 10 + k) as usize % 500);
                let (http, ingest, times) = (http.clone(), ingest.clone(), times.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let r = http
                        .post(&ingest)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&ev).expect("json"))
                        .send()
                        .await;
                    let status = r.map_or(0, |r| r.status().as_u16());
                    times
                        .lock()
                        .unwrap()
                        .insert(id, (sent, Instant::now(), status));
                }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        wait_count(&sink, total, Duration::from_secs(60)).await;
        let arrivals = sink.arrivals.lock().unwrap().clone();
        let times = times.lock().unwrap().clone();
        let mut lat = Vec::new();
        for (_, _, status) in times.values().filter(|(_, _, s)| *s != 202) {
            *refused.entry(*status).or_insert(0usize) += 1;
        }
        for (id, (sent, answered, status)) in &times {
            let Some(arrived) = arrivals.get(id) else {
                continue;
            };
            let ms = |a: &Instant, b: &Instant| a.duration_since(*b).as_secs_f64() * 1000.0;
            lat.push(ms(arrived, sent));
            if *status == 202 {
                ingest_ms.push(ms(answered, sent));
                // A delivery can arrive before the client reads its 202.
                after_ms.push(arrived.saturating_duration_since(*answered).as_secs_f64() * 1000.0);
            }
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        rep_p99.push(quantile(&lat, 0.99));
        all.extend(lat);
    }
    let metrics1 = metrics_text(&http, &op).await;
    all.sort_by(|a, b| a.total_cmp(b));
    ingest_ms.sort_by(|a, b| a.total_cmp(b));
    after_ms.sort_by(|a, b| a.total_cmp(b));
    let labels = "{kind=\"webhook\"}";
    let attempt =
        |t: &str| histogram_sum_count(t, "vehicle_connect_attempt_duration_seconds", labels);
    let ((s0, c0), (s1, c1)) = (attempt(&metrics0), attempt(&metrics1));
    let attempt_ms = if c1 > c0 {
        (s1 - s0) / (c1 - c0) * 1000.0
    } else {
        f64::NAN
    };
    println!(
        "(c) latency, POST → receiver, {} events at {rate} events/s over {reps} × {latency_secs} s (answers other than 202: {refused:?}, 503 = ingest busy, 0 = none): p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms, max {:.1} ms; p99 per repetition: {}\n    where the time goes: POST→202 (parse, route, durable commit) p50 {:.1} ms, p99 {:.1} ms; 202→arrival (queueing + attempt) p50 {:.1} ms, p99 {:.1} ms; the operator's attempts took {attempt_ms:.2} ms on average",
        all.len(),
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        quantile(&all, 0.999),
        all.last().copied().unwrap_or(f64::NAN),
        rep_p99
            .iter()
            .map(|p| format!("{p:.1} ms"))
            .collect::<Vec<_>>()
            .join(", "),
        quantile(&ingest_ms, 0.5),
        quantile(&ingest_ms, 0.99),
        quantile(&after_ms, 0.5),
        quantile(&after_ms, 0.99),
    );
    println!(
        "RESULT throughput (median of {reps}, ratio to the plain hyper limit in the same repetition): {}",
        summary
            .iter()
            .map(|(s, r, c)| format!("{s} subs {r:.0}% ({c:.0} µs operator CPU/delivery)"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!(
        "RESULT latency at 1,000 events/s: p50 {:.1} ms, p99 {:.1} ms, p999 {:.1} ms (median p99 per repetition {:.1} ms)",
        quantile(&all, 0.5),
        quantile(&all, 0.99),
        quantile(&all, 0.999),
        median(rep_p99),
    );
    println!(
        "RESULT operator RSS now {:.0} MiB, peak {:.0} MiB",
        rss_mib(pid, "VmRSS:"),
        rss_mib(pid, "VmHWM:")
    );
    drop(op);
    Ok(())
}
