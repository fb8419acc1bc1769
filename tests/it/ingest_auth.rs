//! The ingest front door over real loopback HTTP: tokens bound to clients (403 per batch),
//! the token checked before the body is read, and the bound on concurrent requests.
//! The sink records what reaches it: these tests are about what is let through.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vehicle_connect::ingest::tokens::TokenSet;
use vehicle_connect::ingest::{self, ApiState, ConcurrencyLimit, EventResult, EventSink, Incoming};
use vehicle_connect::metrics::Metrics;

#[derive(Default)]
struct Recorder(Mutex<Vec<Incoming>>);

impl EventSink for Recorder {
    fn accept(&self, events: Vec<Incoming>) -> BoxFuture<'_, anyhow::Result<Vec<EventResult>>> {
        Box::pin(async move {
            let out = events
                .iter()
                .map(|e| EventResult {
                    id: e.id.clone(),
                    status: "accepted",
                    deliveries: 0,
                })
                .collect();
            self.0.lock().unwrap().extend(events);
            Ok(out)
        })
    }
}

struct Api {
    addr: std::net::SocketAddr,
    sink: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

/// Serves the router on 127.0.0.1 with the token file `tokens` and at most `max_concurrent`
/// requests in flight.
async fn serve(tokens: &str, max_concurrent: usize) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, tokens).unwrap();
    let sink = Arc::new(Recorder::default());
    let state = ApiState {
        tokens: TokenSet::watch_file(file).unwrap(),
        sink: sink.clone(),
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(AtomicBool::new(true)),
        max_body: ingest::DEFAULT_MAX_BODY,
        ingest_limit: ConcurrencyLimit::new(max_concurrent),
        store: vehicle_connect::store::Store::open(
            &dir.path().join("store"),
            vehicle_connect::store::StoreOptions::default(),
        )
        .unwrap(),
        feed: ingest::FeedState::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, ingest::router(state)).await });
    Api {
        addr,
        sink,
        _dir: dir,
    }
}

fn event(id: &str, client: &str) -> Value {
    json!({ "id": id, "type": "user.created", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": client, "data": {} })
}

/// Reads one HTTP/1.1 response (the server closes or sends Content-Length).
async fn read_response(s: &mut TcpStream) -> (u16, String, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        code,
        head.to_string(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Sends headers (and `body`) of a POST; the caller may keep writing to the stream.
async fn start_post(api: &Api, token: &str, extra_headers: &str, body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(api.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{extra_headers}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

async fn post(api: &Api, token: &str, body: &Value) -> (u16, String, Value) {
    let b = body.to_string();
    let mut s = start_post(
        api,
        token,
        &format!("Content-Length: {}\r\nConnection: close\r\n", b.len()),
        b.as_bytes(),
    )
    .await;
    read_response(&mut s).await
}

#[tokio::test]
async fn tokens_post_only_for_their_clients() {
    let api = serve(
        "# platform, old format\nplatform-token-000\n\
         dealer-token-111 dealer-1   # one dealer\n\
         group-token-222 dealer-2, dealer-3\n",
        8,
    )
    .await;

    let (code, _, _) = post(&api, "dealer-token-111", &event("a1", "dealer-1")).await;
    assert_eq!(code, 202);
    let (code, _, body) = post(&api, "dealer-token-111", &event("a2", "dealer-2")).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"], "forbidden_client");
    assert_eq!(body["field"], "clientId");
    assert!(
        body["message"].as_str().unwrap().contains("\"dealer-2\""),
        "{body}"
    );

    // One foreign event refuses the whole batch: nothing of it reaches the sink.
    let batch = json!([
        event("b1", "dealer-2"),
        event("b2", "dealer-3"),
        event("b3", "dealer-1")
    ]);
    let (code, _, body) = post(&api, "group-token-222", &batch).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["field"], "[2].clientId");
    assert!(body["message"].as_str().unwrap().contains("dealer-1"));
    let batch = json!([event("c1", "dealer-2"), event("c2", "dealer-3")]);
    assert_eq!(post(&api, "group-token-222", &batch).await.0, 202);

    // A bare token (the old one-token-a-line file) still posts for anyone.
    let batch = json!([event("d1", "dealer-9"), event("d2", "dealer-1")]);
    assert_eq!(post(&api, "platform-token-000", &batch).await.0, 202);
    assert_eq!(
        post(&api, "unknown-token", &event("e1", "dealer-1"))
            .await
            .0,
        401
    );

    let ids: Vec<String> = api
        .sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(ids, ["a1", "c1", "c2", "d1", "d2"]);
}

#[tokio::test]
async fn a_bad_token_is_refused_before_the_body_arrives() {
    let api = serve("good-token-000\n", 8).await;
    // A chunked body that starts and never ends, and a declared 10 GB one: both are
    // answered 401 at once (the old handler waited for the body first).
    for extra in [
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 10000000000\r\n",
    ] {
        let started = Instant::now();
        let mut s = start_post(&api, "bad-token", extra, b"").await;
        s.write_all(b"1000\r\n[{\"id\":").await.unwrap();
        let (code, _, body) = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .unwrap_or_else(|_| panic!("{extra}: no answer within 5 s: the body is being read"));
        assert_eq!(code, 401, "{extra}: {body}");
        assert_eq!(body["error"], "unauthorized");
        eprintln!("{}: 401 after {:?}", extra.trim(), started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(api.sink.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_ingest_requests_are_bounded() {
    let api = serve("good-token-000\n", 2).await;
    let body = event("x", "dealer-1").to_string();
    let declared = format!("Content-Length: {}\r\nConnection: close\r\n", body.len());
    // Two authorised requests whose bodies stall hold both slots.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(start_post(&api, "good-token-000", &declared, &body.as_bytes()[..5]).await);
    }
    // The third is answered 503 busy with Retry-After, at once (polled: the two stalled
    // requests take their slots as soon as the server has read their headers).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (head, refusal) = loop {
        let (code, head, b) = post(&api, "good-token-000", &event("y", "dealer-1")).await;
        if code == 503 {
            break (head, b);
        }
        assert_eq!(code, 202);
        assert!(Instant::now() < deadline, "never refused: no bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refusal["error"], "busy");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // A stalled request that completes frees its slot.
    let mut first = stalled.remove(0);
    first.write_all(&body.as_bytes()[5..]).await.unwrap();
    assert_eq!(read_response(&mut first).await.0, 202);
    assert_eq!(
        post(&api, "good-token-000", &event("z", "dealer-1"))
            .await
            .0,
        202
    );
}
