//! Webhook attempts against real HTTP receivers on 127.0.0.1. Signatures are checked by the
//! independent `standardwebhooks` crate, never by our own code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures::future::BoxFuture;
use standardwebhooks::Webhook;
use vehicle_connect::api::RetryPolicy;
use vehicle_connect::controller::secrets::decode_whsec;
use vehicle_connect::delivery::webhook::{AttemptResult, WebhookSender};
use vehicle_connect::endpoint::TlsMaterial;
use vehicle_connect::routing::{WebhookAuth, WebhookTarget};
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const WHSEC_NEW: &str = "whsec_dGhlIG5ldyBrZXkgYWZ0ZXIgcm90YXRpb24hIQ==";
const UA: &str = "vehicle-connect-test/1";
const EVENT: &[u8] = r#"{"id":"evt_01","type":"vehicle.processed","clientId":"dealer-1","data":{"vehicle":{"vin":"WVWZZZ1JZXW000001","make":"Škoda"}}}"#.as_bytes();

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
}

type Reply = Arc<dyn Fn(usize) -> BoxFuture<'static, Response> + Send + Sync>;

#[derive(Clone)]
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn requests(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

/// Starts a receiver that records every request and answers the n-th (from 0) with `reply(n)`.
async fn receiver(
    reply: impl Fn(usize) -> BoxFuture<'static, Response> + Send + Sync + 'static,
) -> Receiver {
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let state = (seen.clone(), Arc::new(reply) as Reply);
    async fn handle(
        State((seen, reply)): State<(Arc<Mutex<Vec<Received>>>, Reply)>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(Received {
                peer,
                headers,
                body,
            });
            seen.len() - 1
        };
        reply(n).await
    }
    let app = axum::Router::new().fallback(handle).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Receiver {
        url: format!("http://{addr}/hooks/vehicles"),
        seen,
    }
}

fn status(code: u16) -> impl Fn(usize) -> BoxFuture<'static, Response> + Send + Sync + 'static {
    move |_| Box::pin(async move { StatusCode::from_u16(code).unwrap().into_response() })
}

fn loopback_sender() -> WebhookSender {
    WebhookSender::new(
        TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap()),
        UA,
    )
    .unwrap()
}

fn target(url: &str) -> WebhookTarget {
    WebhookTarget {
        url: url.parse().unwrap(),
        auth: WebhookAuth::None,
        signing_keys: decode_whsec(WHSEC).unwrap(),
        headers: vec![],
        timeout: Duration::from_secs(5),
        retry: RetryPolicy::default(),
        max_concurrency: 4,
        tls: TlsMaterial::default(),
        tls_id: TlsMaterial::default().fingerprint(),
    }
}

fn verify(whsec: &str, r: &Received) -> Result<(), standardwebhooks::WebhookError> {
    Webhook::new(whsec).unwrap().verify(&r.body, &r.headers)
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn signed_post_carries_headers_and_verifies_with_standardwebhooks() {
    let rx = receiver(status(204)).await;
    let mut t = target(&rx.url);
    t.headers = vec![
        ("X-Tenant".into(), "dealer-1".into()),
        ("X-Trace".into(), "a b c".into()),
    ];
    let res = loopback_sender().send(&t, "evt_01", EVENT).await;
    assert!(
        matches!(res, AttemptResult::Delivered { status: 204, .. }),
        "{res:?}"
    );

    let got = rx.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(&r.body[..], EVENT, "body bytes as given");
    verify(WHSEC, r).expect("standardwebhooks accepts our signature");
    assert_eq!(header(r, "webhook-id"), "evt_01");
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() <= 5, "timestamp {ts} vs now {now}");
    assert!(header(r, "webhook-signature").starts_with("v1,"));
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "user-agent"), UA);
    assert_eq!(header(r, "x-tenant"), "dealer-1");
    assert_eq!(header(r, "x-trace"), "a b c");
    assert!(r.headers.get("authorization").is_none());

    // A tampered body or another key is rejected by the same verifier.
    let mut tampered = r.clone();
    tampered.body = Bytes::from_static(br#"{"id":"evt_01"}"#);
    assert!(verify(WHSEC, &tampered).is_err());
    assert!(verify(WHSEC_NEW, r).is_err());
}

#[tokio::test]
async fn both_keys_verify_during_rotation() {
    let rx = receiver(status(200)).await;
    let mut t = target(&rx.url);
    t.signing_keys = decode_whsec(&format!("{WHSEC} {WHSEC_NEW}")).unwrap();
    let res = loopback_sender().send(&t, "evt_rot", EVENT).await;
    assert!(res.is_delivered(), "{res:?}");
    let r = &rx.requests()[0];
    assert_eq!(header(r, "webhook-signature").split(' ').count(), 2);
    verify(WHSEC, r).expect("old key verifies");
    verify(WHSEC_NEW, r).expect("new key verifies");
    assert!(verify("whsec_c29tZSBvdGhlciBrZXkgZW50aXJlbHkh", r).is_err());
}

#[tokio::test]
async fn unsigned_target_sends_no_signature_headers() {
    let rx = receiver(status(200)).await;
    let mut t = target(&rx.url);
    t.signing_keys.clear();
    assert!(
        loopback_sender()
            .send(&t, "evt_1", EVENT)
            .await
            .is_delivered()
    );
    let r = &rx.requests()[0];
    for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(r.headers.get(h).is_none(), "{h}");
    }
}

#[tokio::test]
async fn basic_auth_is_decoded_by_the_receiver() {
    let rx = receiver(status(200)).await;
    let mut t = target(&rx.url);
    t.auth = WebhookAuth::Basic {
        username: "dms-user".into(),
        password: "p@ss:wörd".into(),
    };
    assert!(
        loopback_sender()
            .send(&t, "evt_1", EVENT)
            .await
            .is_delivered()
    );
    let r = &rx.requests()[0];
    let b64 = header(r, "authorization")
        .strip_prefix("Basic ")
        .expect("Basic scheme");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "dms-user:p@ss:wörd");
    verify(WHSEC, r).unwrap();
}

#[tokio::test]
async fn bearer_auth() {
    let rx = receiver(status(202)).await;
    let mut t = target(&rx.url);
    t.auth = WebhookAuth::Bearer("tok-123.abc".into());
    let res = loopback_sender().send(&t, "evt_1", EVENT).await;
    assert!(matches!(res, AttemptResult::Delivered { status: 202, .. }));
    assert_eq!(
        header(&rx.requests()[0], "authorization"),
        "Bearer tok-123.abc"
    );
}

#[tokio::test]
async fn an_auth_value_that_is_no_header_is_permanent_and_not_printed() {
    let rx = receiver(status(200)).await;
    let mut t = target(&rx.url);
    t.auth = WebhookAuth::Bearer("secret-part\nsecond-line".into());
    match loopback_sender().send(&t, "evt_1", EVENT).await {
        AttemptResult::Permanent {
            reason, message, ..
        } => {
            assert_eq!(reason, "InvalidRequest");
            assert!(!message.contains("secret-part"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(rx.requests().is_empty());
}

#[tokio::test]
async fn server_error_then_success_keeps_the_webhook_id() {
    let rx = receiver(|n| {
        Box::pin(async move {
            if n == 0 {
                (StatusCode::INTERNAL_SERVER_ERROR, "database\n  down").into_response()
            } else {
                StatusCode::OK.into_response()
            }
        })
    })
    .await;
    let t = target(&rx.url);
    let s = loopback_sender();
    match s.send(&t, "evt_retry", EVENT).await {
        AttemptResult::Retryable {
            reason,
            message,
            status,
            retry_after,
            ..
        } => {
            assert_eq!(reason, "HttpStatus");
            assert_eq!(status, Some(500));
            assert_eq!(retry_after, None);
            assert_eq!(message, "HTTP 500 Internal Server Error: database down");
        }
        other => panic!("{other:?}"),
    }
    let res = s.send(&t, "evt_retry", EVENT).await;
    assert!(matches!(res, AttemptResult::Delivered { status: 200, .. }));
    let got = rx.requests();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_eq!(header(r, "webhook-id"), "evt_retry");
        verify(WHSEC, r).unwrap();
    }
}

#[tokio::test]
async fn too_many_requests_with_retry_after_seconds() {
    let rx = receiver(|_| {
        Box::pin(async {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "2")],
                "slow down",
            )
                .into_response()
        })
    })
    .await;
    match loopback_sender()
        .send(&target(&rx.url), "evt_1", EVENT)
        .await
    {
        AttemptResult::Retryable {
            reason,
            status,
            retry_after,
            ..
        } => {
            assert_eq!(reason, "HttpStatus");
            assert_eq!(status, Some(429));
            assert_eq!(retry_after, Some(Duration::from_secs(2)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unavailable_with_retry_after_date_and_request_timeout_are_retryable() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(60));
    let rx = receiver(move |n| {
        let date = date.clone();
        Box::pin(async move {
            if n == 0 {
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", date)]).into_response()
            } else {
                StatusCode::REQUEST_TIMEOUT.into_response()
            }
        })
    })
    .await;
    let s = loopback_sender();
    let t = target(&rx.url);
    match s.send(&t, "evt_1", EVENT).await {
        AttemptResult::Retryable {
            status: Some(503),
            retry_after: Some(d),
            ..
        } => assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{d:?}"
        ),
        other => panic!("{other:?}"),
    }
    let res = s.send(&t, "evt_1", EVENT).await;
    assert!(
        matches!(
            res,
            AttemptResult::Retryable {
                status: Some(408),
                ..
            }
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn client_errors_are_permanent_and_410_is_gone() {
    let rx = receiver(status(400)).await;
    match loopback_sender()
        .send(&target(&rx.url), "evt_1", EVENT)
        .await
    {
        AttemptResult::Permanent { reason, status, .. } => {
            assert_eq!(reason, "HttpStatus");
            assert_eq!(status, Some(400));
        }
        other => panic!("{other:?}"),
    }
    let rx = receiver(status(404)).await;
    let res = loopback_sender()
        .send(&target(&rx.url), "evt_1", EVENT)
        .await;
    assert!(
        matches!(
            res,
            AttemptResult::Permanent {
                status: Some(404),
                ..
            }
        ),
        "{res:?}"
    );

    let rx = receiver(status(410)).await;
    let res = loopback_sender()
        .send(&target(&rx.url), "evt_1", EVENT)
        .await;
    assert!(matches!(res, AttemptResult::Gone { .. }), "{res:?}");
}

#[tokio::test]
async fn redirects_are_permanent_and_not_followed() {
    let elsewhere = receiver(status(200)).await;
    let location = elsewhere.url.clone();
    let rx = receiver(move |_| {
        let location = location.clone();
        Box::pin(async move { (StatusCode::FOUND, [("location", location)]).into_response() })
    })
    .await;
    match loopback_sender()
        .send(&target(&rx.url), "evt_1", EVENT)
        .await
    {
        AttemptResult::Permanent {
            reason,
            status,
            message,
            ..
        } => {
            assert_eq!(reason, "Redirect");
            assert_eq!(status, Some(302));
            assert!(message.contains(&elsewhere.url), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.requests().len(), 1);
    assert!(elsewhere.requests().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out() {
    let rx = receiver(|_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK.into_response()
        })
    })
    .await;
    let mut t = target(&rx.url);
    t.timeout = Duration::from_millis(600);
    let started = Instant::now();
    let res = loopback_sender().send(&t, "evt_1", EVENT).await;
    let took = started.elapsed();
    match res {
        AttemptResult::Retryable {
            reason, elapsed, ..
        } => {
            assert_eq!(reason, "Timeout");
            assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(rx.requests().len(), 1, "the request did arrive");
}

#[tokio::test]
async fn a_body_that_never_ends_does_not_outlive_the_timeout() {
    // Headers arrive at once, the body trickles forever: the failure is reported with what
    // arrived, within the timeout.
    let rx = receiver(|_| {
        Box::pin(async {
            let chunks = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"busy ")), ()))
            });
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::body::Body::from_stream(chunks),
            )
                .into_response()
        })
    })
    .await;
    let mut t = target(&rx.url);
    t.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let res = loopback_sender().send(&t, "evt_1", EVENT).await;
    assert!(started.elapsed() < Duration::from_millis(1500));
    match res {
        AttemptResult::Retryable {
            status: Some(503),
            message,
            ..
        } => assert!(
            message.starts_with("HTTP 503 Service Unavailable: busy busy"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_closed_port_is_connection_refused() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The query token must not leak into the message.
    let t = target(&format!("http://127.0.0.1:{port}/hook?token=s3cr3t-t0ken"));
    match loopback_sender().send(&t, "evt_1", EVENT).await {
        AttemptResult::Retryable {
            reason, message, ..
        } => {
            assert_eq!(reason, "ConnectionRefused", "{message}");
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn guard_without_allow_list_refuses_loopback_at_connect_time() {
    let rx = receiver(status(200)).await;
    let strict = WebhookSender::new(TargetGuard::default(), UA).unwrap();
    let port = rx
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();

    // An IP literal (never seen by a resolver) and a name (checked by the resolver when
    // the connection is made).
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
    ] {
        match strict.send(&target(&url), "evt_1", EVENT).await {
            AttemptResult::Permanent {
                reason, message, ..
            } => {
                assert_eq!(reason, "TargetNotAllowed", "{url}: {message}");
                if url.contains("localhost") {
                    // Only the resolver inside the connector checks names.
                    assert!(message.contains("cluster-internal name"), "{message}");
                } else {
                    assert!(message.contains("loopback address"), "{message}");
                }
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(rx.requests().is_empty(), "a refused target got a request");

    // The same sender setup with the allow-list reaches it, by IP and by name.
    let open = WebhookSender::new(
        TargetGuard::new(parse_allow_list("127.0.0.0/8,::1/128").unwrap()),
        UA,
    )
    .unwrap();
    assert!(
        open.send(&target(&rx.url), "evt_1", EVENT)
            .await
            .is_delivered()
    );
    let by_name = format!("http://localhost:{port}/hook");
    // localhost may also resolve to ::1, where nothing listens; the connector then goes
    // on to 127.0.0.1.
    let res = open.send(&target(&by_name), "evt_1", EVENT).await;
    assert!(res.is_delivered(), "{res:?}");
    assert_eq!(rx.requests().len(), 2);
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let rx = receiver(|_| Box::pin(async { (StatusCode::OK, "ok").into_response() })).await;
    let t = target(&rx.url);
    let s = loopback_sender();
    for i in 0..20 {
        let res = s.send(&t, &format!("evt_{i}"), EVENT).await;
        assert!(res.is_delivered(), "{res:?}");
    }
    let peers: std::collections::BTreeSet<SocketAddr> =
        rx.requests().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "sequential attempts should share one connection: {peers:?}"
    );
}
