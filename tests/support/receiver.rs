//! A real webhook receiver on 127.0.0.1: records every request, verifies signatures with the
//! independent `standardwebhooks` crate, and answers as each test scripts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// One received request.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    /// The body as sent.
    pub raw: Bytes,
    pub at: Instant,
    /// `Some(true)` when the signature verified with the configured secret.
    pub signature_ok: Option<bool>,
    /// The status this receiver answered.
    pub status: u16,
}

/// How a path answers: a list of responses used in turn (the last one repeats).
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    StatusWithRetryAfter(u16, u64),
    Hang(Duration),
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: HashMap<String, Vec<Reply>>,
    calls: HashMap<String, usize>,
    secret: Option<String>,
}

#[derive(Clone, Default)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub port: u16,
}

impl Receiver {
    /// Starts a receiver; `whsec` is the signing secret used to verify requests.
    pub async fn start(whsec: Option<&str>) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            secret: whsec.map(str::to_string),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { inner, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    pub fn script(&self, path: &str, replies: Vec<Reply>) {
        self.inner
            .lock()
            .unwrap()
            .script
            .insert(format!("/{}", path.trim_start_matches('/')), replies);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        let p = format!("/{}", path.trim_start_matches('/'));
        self.received()
            .into_iter()
            .filter(|r| r.path == p)
            .collect()
    }

    /// Waits until `path` got at least `n` requests (timeout 30 s).
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received_on(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: got {} of {n} requests in 30s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/{path}");
    let (reply, secret) = {
        let mut g = inner.lock().unwrap();
        let n = *g
            .calls
            .entry(path.clone())
            .and_modify(|c| *c += 1)
            .or_insert(1);
        let reply = g
            .script
            .get(&path)
            .map(|s| s[(n - 1).min(s.len() - 1)].clone());
        (reply, g.secret.clone())
    };
    let signature_ok = secret.map(|s| {
        let wh = standardwebhooks::Webhook::new(&s).expect("whsec");
        wh.verify(&body, &headers).is_ok()
    });
    let rec = Received {
        path: path.clone(),
        headers: headers.clone(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        raw: body.clone(),
        at: Instant::now(),
        signature_ok,
        status: match &reply {
            None | Some(Reply::Hang(_)) => 200,
            Some(Reply::Status(s)) | Some(Reply::StatusWithRetryAfter(s, _)) => *s,
        },
    };
    inner.lock().unwrap().received.push(rec);
    match reply {
        None | Some(Reply::Status(200)) => StatusCode::OK.into_response(),
        Some(Reply::Status(s)) => StatusCode::from_u16(s).unwrap().into_response(),
        Some(Reply::StatusWithRetryAfter(s, secs)) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}
