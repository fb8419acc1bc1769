//! The benchmarks' webhook receiver and load: a counting receiver, the event they post, and
//! the plain hyper client's rate that deliveries are compared with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use futures::{StreamExt, stream};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

#[derive(Default)]
pub struct Sink {
    pub count: AtomicU64,
    /// event id → arrival, for latency runs.
    pub arrivals: Mutex<HashMap<String, Instant>>,
    pub track: std::sync::atomic::AtomicBool,
}

pub async fn receive(
    State(sink): State<Arc<Sink>>,
    headers: HeaderMap,
    _body: Bytes,
) -> &'static str {
    sink.count.fetch_add(1, Ordering::Relaxed);
    if sink.track.load(Ordering::Relaxed)
        && let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok())
    {
        // The first arrival: a redelivery after a failover does not move it.
        sink.arrivals
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(Instant::now);
    }
    "ok"
}

pub fn event(client: &str, id: &str, vehicle: usize) -> serde_json::Value {
    json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": "u-42",
        "data": { "vehicle": { "id": format!("veh-{vehicle}"), "vin": "WVWZZZ1JZXW000001", "stockNumber": "A1234",
                  "make": "Volkswagen", "model": "Golf", "year": 2021 },
                  "user": { "id": "u-42", "name": "Ana Pérez" },
                  "images": [{ "index": 1, "url": "https://cdn.example/veh/1.jpg", "contentType": "image/jpeg", "bytes": 183022 }] }
    })
}

pub async fn wait_count(sink: &Sink, target: u64, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while sink.count.load(Ordering::Relaxed) < target {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Some(start.elapsed())
}

/// The plain hyper client's rate, in requests per second.
pub async fn limit_once(
    hyper: &HyperClient<HttpConnector, Full<Bytes>>,
    sink: &Sink,
    port: u16,
    body: &Bytes,
    n: usize,
) -> f64 {
    sink.count.store(0, Ordering::Relaxed);
    let start = Instant::now();
    stream::iter(0..n)
        .map(|_| {
            let req = hyper::Request::post(format!("http://127.0.0.1:{port}/limit"))
                .header("content-type", "application/json")
                .body(Full::new(body.clone()))
                .expect("request");
            let c = hyper.clone();
            async move { c.request(req).await.map(|r| r.status()) }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
    n as f64 / start.elapsed().as_secs_f64()
}
