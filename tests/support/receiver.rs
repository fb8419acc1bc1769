//! A real webhook receiver on 127.0.0.1: records every request, verifies signatures with the
//! independent `standardwebhooks` crate, and answers as each test scripts it; over HTTPS
//! when started so, and serving files to GET (event images) when given some.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::tls::{ServerTls, serve};

/// One received request.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    /// The body as received.
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
    /// A status with a JSON body.
    Body(u16, &'static str),
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    script: HashMap<String, Vec<Reply>>,
    calls: HashMap<String, usize>,
    secret: Option<String>,
    /// Path → (bytes, content type) answered to GET.
    files: HashMap<String, (Bytes, String)>,
}

#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Mutex<Inner>>,
    pub port: u16,
    scheme: &'static str,
}

impl Receiver {
    /// Starts a receiver; `whsec` is the signing secret used to verify requests.
    pub async fn start(whsec: Option<&str>) -> Receiver {
        Self::start_on(whsec, None).await
    }

    /// An HTTPS receiver behind `tls`. Every answer closes its connection, so that each
    /// request shakes hands with the certificate `tls` presents at that time.
    pub async fn start_tls(whsec: Option<&str>, tls: &ServerTls) -> Receiver {
        Self::start_on(whsec, Some(tls)).await
    }

    async fn start_on(whsec: Option<&str>, tls: Option<&ServerTls>) -> Receiver {
        let inner = Arc::new(Mutex::new(Inner {
            secret: whsec.map(str::to_string),
            ..Default::default()
        }));
        let mut app = Router::new()
            .route("/{*path}", post(handle).get(file))
            .with_state(inner.clone());
        if tls.is_some() {
            app = app.layer(axum::middleware::map_response(
                |mut r: Response| async move {
                    r.headers_mut()
                        .insert("connection", "close".parse().unwrap());
                    r
                },
            ));
        }
        let port = serve(app, tls).await;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Receiver {
            inner,
            port,
            scheme,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}/{}",
            self.scheme,
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// Answers GET `path` with `bytes` of `content_type`; returns its URL.
    pub fn serve_file(&self, path: &str, bytes: &[u8], content_type: &str) -> String {
        self.inner.lock().unwrap().files.insert(
            format!("/{}", path.trim_start_matches('/')),
            (Bytes::copy_from_slice(bytes), content_type.into()),
        );
        self.url(path)
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
            Some(Reply::Status(s))
            | Some(Reply::StatusWithRetryAfter(s, _))
            | Some(Reply::Body(s, _)) => *s,
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
        Some(Reply::Body(s, body)) => (
            StatusCode::from_u16(s).unwrap(),
            [("content-type", "application/json")],
            body,
        )
            .into_response(),
        Some(Reply::Hang(d)) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn file(State(inner): State<Arc<Mutex<Inner>>>, Path(path): Path<String>) -> Response {
    let found = inner
        .lock()
        .unwrap()
        .files
        .get(&format!("/{path}"))
        .cloned();
    match found {
        Some((bytes, ct)) => ([("content-type", ct)], bytes).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
