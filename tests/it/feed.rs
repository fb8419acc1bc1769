//! The pull feed (`GET /v1/events`) of the operator as a real process: events posted with the
//! platform's ingest token come back to each client's feed token, only its own, in order,
//! page by page; long-polls wake on the commit and are freed by a hang-up; feed and ingest
//! tokens do not stand in for each other; a cursor from before gc says it missed events.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use vc_envtest::ControlPlane;

use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::scope::Scope;

const FEED_TOKENS: &str = "\
# feed tokens of the tests
feed-a-token-0123456789 feed-a
feed-b-token-0123456789 feed-b
feed-ab-token-0123456789 feed-a,feed-b
feed-lp-token-0123456789 feed-lp
feed-platform-token-0123456789 *
";

struct Op {
    op: OperatorProcess,
    _dir: tempfile::TempDir,
}

/// An operator of its own (own store and metrics) with the feed tokens above and `args`.
async fn start(name: &str, dir: tempfile::TempDir, args: &[&str]) -> Op {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let tokens = dir.path().join("feed-tokens");
    std::fs::write(&tokens, FEED_TOKENS).unwrap();
    let mut all = vec!["--feed-token-file", tokens.to_str().unwrap()];
    all.extend_from_slice(args);
    let op =
        crate::support::process::start_with(cp, dir.path().join("data"), &Scope::new(name), &all)
            .await;
    Op { op, _dir: dir }
}

/// The operator the tests that need nothing special share (each with its own clients).
async fn shared() -> &'static OperatorProcess {
    static OP: OnceCell<Op> = OnceCell::const_new();
    &OP.get_or_init(|| async { start("feed", tempfile::tempdir().unwrap(), &[]).await })
        .await
        .op
}

fn event(id: &str, client: &str, type_: &str) -> Value {
    json!({ "id": id, "type": type_, "timestamp": "2026-11-27T10:15:30Z", "clientId": client,
            "data": { "vehicle": { "id": format!("veh-{id}") } } })
}

async fn post(op: &OperatorProcess, token: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn post_ok(op: &OperatorProcess, events: Vec<Value>) {
    let (status, body) = post(op, TOKEN, &Value::Array(events)).await;
    assert_eq!(status, 202, "{body}");
}

/// `GET /v1/events?{query}` with `token`: status and JSON body.
async fn get(op: &OperatorProcess, token: Option<&str>, query: &str) -> (u16, Value) {
    get_at(&op.url(""), token, query).await
}

/// [`get`] of the operator at `base` (`http://127.0.0.1:PORT`), for spawned tasks.
async fn get_at(base: &str, token: Option<&str>, query: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .get(format!("{base}/v1/events?{query}"))
        .timeout(Duration::from_secs(90));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

async fn page(op: &OperatorProcess, token: &str, query: &str) -> Value {
    let (status, body) = get(op, Some(token), query).await;
    assert_eq!(status, 200, "GET ?{query}: {body}");
    body
}

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads every page of a feed with `limit`, checking each page's bounds; the ids in order.
async fn read_all(op: &OperatorProcess, token: &str, extra: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..1000 {
        let p = page(op, token, &format!("limit={limit}{extra}{after}")).await;
        let got = ids(&p);
        assert!(got.len() <= limit, "{p}");
        assert_eq!(p["truncated"], false, "{p}");
        let next = p["next"].as_str().unwrap().to_owned();
        if got.is_empty() {
            assert_eq!(p["more"], false, "{p}");
            // Nothing new: the cursor stays where it was.
            if !after.is_empty() {
                assert_eq!(after, format!("&after={next}"));
            }
            return seen;
        }
        seen.extend(got);
        after = format!("&after={next}");
    }
    panic!("the feed never ended: {} events so far", seen.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_reads_only_its_own_events_in_order_and_pages_cover_them_once() {
    let op = shared().await;
    let (mut want_a, mut want_b, mut created_a) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved batches of both clients, of two types.
    for batch in 0..5 {
        let mut events = Vec::new();
        for i in 0..5 {
            let n = batch * 5 + i;
            let ty = if n % 3 == 0 {
                "vehicle.created"
            } else {
                "vehicle.processed"
            };
            let a = format!("evt-a-{n:03}");
            events.push(event(&a, "feed-a", ty));
            if ty == "vehicle.created" {
                created_a.push(a.clone());
            }
            want_a.push(a);
            if i % 2 == 0 {
                let b = format!("evt-b-{n:03}");
                events.push(event(&b, "feed-b", ty));
                want_b.push(b);
            }
        }
        post_ok(op, events).await;
    }
    assert_eq!((want_a.len(), want_b.len()), (25, 15));

    // Each client's token: its own events, in the order accepted, every one exactly once,
    // whatever the page size.
    for limit in [1, 7, 100] {
        assert_eq!(
            read_all(op, "feed-a-token-0123456789", "", limit).await,
            want_a
        );
    }
    assert_eq!(read_all(op, "feed-b-token-0123456789", "", 4).await, want_b);
    // A token of both, or of any client, names the one it reads.
    let ab = "feed-ab-token-0123456789";
    assert_eq!(read_all(op, ab, "&clientId=feed-b", 6).await, want_b);
    let star = "feed-platform-token-0123456789";
    assert_eq!(read_all(op, star, "&clientId=feed-a", 10).await, want_a);
    for (token, query, status, field) in [
        (ab, "", 400, "clientId"),
        (star, "", 400, "clientId"),
        (
            "feed-a-token-0123456789",
            "clientId=feed-b",
            403,
            "clientId",
        ),
        (ab, "clientId=feed-lp", 403, "clientId"),
        (
            "feed-a-token-0123456789",
            "after=not-a-cursor",
            400,
            "after",
        ),
        (
            "feed-a-token-0123456789",
            "types=vehicle.exploded",
            400,
            "types",
        ),
        ("feed-a-token-0123456789", "limit=0", 400, "limit"),
        ("feed-a-token-0123456789", "limit=1001", 400, "limit"),
        ("feed-a-token-0123456789", "wait=2m", 400, "wait"),
    ] {
        let (got, body) = get(op, Some(token), query).await;
        assert_eq!(
            (got, body["field"].as_str()),
            (status, Some(field)),
            "?{query}: {body}"
        );
    }
    let (_, body) = get(
        op,
        Some("feed-a-token-0123456789"),
        "types=vehicle.exploded",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("vehicle.exploded"),
        "{body}"
    );

    // A types filter: only those, still in order and paged.
    let created = read_all(op, "feed-a-token-0123456789", "&types=vehicle.created", 3).await;
    assert_eq!(created, created_a);
    let both = "&types=vehicle.created,vehicle.processed";
    assert_eq!(
        read_all(op, "feed-a-token-0123456789", both, 50).await,
        want_a
    );
    let deleted = page(op, "feed-a-token-0123456789", "types=vehicle.deleted").await;
    assert!(ids(&deleted).is_empty());
    // Events are returned as accepted.
    let first = page(op, "feed-b-token-0123456789", "limit=1").await;
    assert_eq!(
        first["events"][0],
        event(&want_b[0], "feed-b", "vehicle.created")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_tokens_cannot_post_and_ingest_tokens_cannot_read() {
    let op = shared().await;
    // The platform's ingest token reads nothing; nor does no token or a wrong one.
    for token in [Some(TOKEN), None, Some("feed-a-token-wrong")] {
        let (status, body) = get(op, token, "clientId=feed-a").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}"
        );
    }
    // A client's feed token, and the platform-side reader's, post nothing.
    for token in ["feed-a-token-0123456789", "feed-platform-token-0123456789"] {
        let (status, body) = post(op, token, &event("evt-auth-1", "feed-a", "data.new")).await;
        assert_eq!(status, 401, "{body}");
    }
    let p = page(op, "feed-a-token-0123456789", "types=data.new").await;
    assert!(!ids(&p).contains(&"evt-auth-1".to_owned()), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_within_a_second_of_a_post_and_empty_after_its_wait() {
    let op = shared().await;
    let token = "feed-lp-token-0123456789";
    post_ok(op, vec![event("evt-lp-0", "feed-lp", "vehicle.created")]).await;
    let start = page(op, token, "").await;
    assert_eq!(ids(&start), ["evt-lp-0"]);
    let after = start["next"].as_str().unwrap().to_owned();

    // Nothing there: the request is held until the post.
    let q = format!("after={after}&wait=30s");
    let base = op.url("");
    let poll = tokio::spawn(async move {
        let r = get_at(&base, Some(token), &q).await;
        (r, Instant::now())
    });
    let held = Duration::from_millis(800);
    tokio::time::sleep(held).await;
    assert!(
        !poll.is_finished(),
        "the long-poll answered before anything was posted"
    );
    let posted = Instant::now();
    post_ok(op, vec![event("evt-lp-1", "feed-lp", "vehicle.processed")]).await;
    let ((status, body), answered) = poll.await.unwrap();
    let latency = answered.duration_since(posted);
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(&body), ["evt-lp-1"]);
    assert!(
        latency < Duration::from_secs(1),
        "answered {latency:?} after the post"
    );
    eprintln!("long-poll answered {latency:?} after the post began");

    // A wait with nothing: an empty page once the wait is over, the cursor unchanged.
    let next = body["next"].as_str().unwrap().to_owned();
    let began = Instant::now();
    let empty = page(op, token, &format!("after={next}&wait=700ms")).await;
    let took = began.elapsed();
    assert!(ids(&empty).is_empty(), "{empty}");
    assert_eq!(empty["next"], next.as_str());
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // An event the filter leaves out does not end the wait.
    let q = format!("after={next}&wait=1500ms&types=vehicle.deleted");
    let base = op.url("");
    let filtered = tokio::spawn(async move {
        let began = Instant::now();
        (get_at(&base, Some(token), &q).await, began.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_ok(op, vec![event("evt-lp-2", "feed-lp", "vehicle.created")]).await;
    let ((status, p), took) = filtered.await.unwrap();
    assert_eq!(status, 200, "{p}");
    assert!(ids(&p).is_empty(), "{p}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
}

/// `vehicle_connect_feed_waiting` from `/metrics`.
async fn waiting(op: &OperatorProcess) -> i64 {
    let text = crate::support::process::metrics(op).await;
    text.lines()
        .find_map(|l| l.strip_prefix("vehicle_connect_feed_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no feed_waiting gauge in:\n{text}"))
}

async fn wait_until_waiting(op: &OperatorProcess, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = waiting(op).await;
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} long-polls waiting, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_hanging_up_mid_wait_free_their_waiters() {
    // Its own operator: the gauge counts only this test's long-polls.
    let o = start("feed-hangup", tempfile::tempdir().unwrap(), &[]).await;
    let op = &o.op;
    for round in 0..3 {
        let mut conns = Vec::new();
        for i in 0..40 {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", op.port))
                .await
                .unwrap();
            let token = if i % 2 == 0 {
                "feed-a-token-0123456789"
            } else {
                "feed-b-token-0123456789"
            };
            let req = format!(
                "GET /v1/events?wait=60s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            conns.push(s);
        }
        wait_until_waiting(op, 40).await;
        // Hang up mid-wait: every waiter goes within moments, not at the end of its wait.
        let hung_up = Instant::now();
        drop(conns);
        wait_until_waiting(op, 0).await;
        eprintln!(
            "round {round}: 40 hang-ups freed in {:?}",
            hung_up.elapsed()
        );
        assert!(hung_up.elapsed() < Duration::from_secs(10));
    }
    // Still serving: a waiting long-poll gets its event.
    let poll = tokio::spawn({
        let url = op.url("/v1/events?wait=30s");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth("feed-a-token-0123456789")
                .send()
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
        }
    });
    wait_until_waiting(op, 1).await;
    post_ok(op, vec![event("evt-hang-1", "feed-a", "data.new")]).await;
    assert_eq!(ids(&poll.await.unwrap()), ["evt-hang-1"]);
    wait_until_waiting(op, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_gc_says_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = "feed-a-token-0123456789";
    let (before, caught_up, dir) = {
        let o = start("feed-gc", dir, &[]).await;
        let op = &o.op;
        post_ok(op, vec![event("evt-gc-1", "feed-a", "data.new")]).await;
        let first = page(op, token, "").await;
        assert_eq!(ids(&first), ["evt-gc-1"]);
        let before = first["next"].as_str().unwrap().to_owned();
        let more = vec![
            event("evt-gc-2", "feed-a", "data.new"),
            event("evt-gc-3", "feed-a", "data.new"),
        ];
        post_ok(op, more).await;
        let rest = page(op, token, &format!("after={before}")).await;
        assert_eq!(ids(&rest), ["evt-gc-2", "evt-gc-3"]);
        assert_eq!(rest["truncated"], false);
        let caught_up = rest["next"].as_str().unwrap().to_owned();
        let Op { mut op, _dir } = o;
        op.kill();
        // The directory stays: the operator below opens the same store.
        (before, caught_up, _dir)
    };
    assert!(data.exists());

    // Again on the same store, now forgetting delivered events at once, every second.
    let o = start(
        "feed-gc-2",
        dir,
        &["--retention-hours", "0", "--gc-interval-seconds", "1"],
    )
    .await;
    let op = &o.op;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids(&page(op, token, "").await).is_empty() {
        assert!(
            Instant::now() < deadline,
            "gc never removed the events\n{}",
            op.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The cursor after evt-gc-1 missed evt-gc-2 and -3: it says so, and moves past them.
    let late = page(op, token, &format!("after={before}")).await;
    assert_eq!(
        (late["truncated"].as_bool(), ids(&late).len()),
        (Some(true), 0),
        "{late}"
    );
    let on = page(
        op,
        token,
        &format!("after={}", late["next"].as_str().unwrap()),
    )
    .await;
    assert_eq!(on["truncated"], false, "{on}");
    // The cursor that had read everything missed nothing.
    let fine = page(op, token, &format!("after={caught_up}")).await;
    assert_eq!(fine["truncated"], false, "{fine}");
}
