//! One event's chain of requests: rendered one at a time (a value captured by one request is
//! what the next one's path or `when` reads), sent, judged; resumed where it stopped.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Inner;
use super::send::{self, Answer, Body, Fail, Request};
use crate::api::EventType;
use crate::delivery::attempt::{Attempt, Delivery};
use crate::ingest::envelope::Image;
use crate::mapping::{ConnectionRef, EventContext, Rendered, RenderedBody, capture};
use crate::routing::ApiTarget;
use crate::store::{Outcome, Why};

/// Where a chain stopped: the request and, for per-image requests, the image, under the
/// mapping it was started with (a changed mapping starts over: its steps are others).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    mapping: String,
    step: usize,
    image: usize,
}

fn progress_key(seq: u64) -> String {
    crate::store::chain_progress_key(seq)
}

fn remote_key(lane: &str) -> String {
    format!("remote/{lane}")
}

/// `noted`: the last answer the API gave, for the delivery log.
pub(super) async fn run(
    inner: &Inner,
    t: &ApiTarget,
    d: Delivery<'_>,
    noted: &mut crate::delivery::attempt::Answer,
) -> Attempt {
    let start = Instant::now();
    let elapsed = || Some(start.elapsed());
    let value = match serde_json::from_slice::<serde_json::Value>(d.body) {
        Ok(v) => v,
        Err(e) => {
            return Attempt::Fail {
                why: Why::new("BadEvent", format!("stored event cannot be read: {e}")),
                elapsed: None,
            };
        }
    };
    let Some(event_type) = value
        .get("type")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse::<EventType>().ok())
    else {
        return Attempt::Fail {
            why: Why::new("BadEvent", "stored event has no known type"),
            elapsed: None,
        };
    };
    let Some(chain) = t.mapping.chain(event_type) else {
        // The spec changed since the event was routed: nothing maps it any more.
        return Attempt::Done {
            outcome: Outcome::Delivered { status: None },
            skipped: true,
            elapsed: None,
        };
    };
    let store = &inner.store;
    // A record made under another mapping is of no use (its steps are others) and goes when
    // this attempt ends, as does any record once the event is done with.
    let (from, recorded) = match store.state_now(d.row, &progress_key(d.seq)).await {
        Ok(Some(bytes)) => {
            let p = serde_json::from_slice::<Progress>(&bytes)
                .ok()
                .filter(|p| p.mapping == t.fingerprint)
                .unwrap_or_default();
            (p, true)
        }
        Ok(None) => (Progress::default(), false),
        Err(e) => return store_failed(e, elapsed()),
    };
    let remote: BTreeMap<String, String> = match store.state_now(d.row, &remote_key(d.lane)).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => BTreeMap::new(),
        Err(e) => return store_failed(e, elapsed()),
    };
    let connection = ConnectionRef {
        name: t.name.clone(),
        namespace: t.namespace.clone(),
    };
    let mut ctx = EventContext::new(&value, &connection, remote);

    let mut last_status = None;
    for step_index in from.step..chain.len() {
        let Some(step) = chain.step(step_index) else {
            break;
        };
        for (run, image) in step.runs(&ctx).into_iter().enumerate() {
            if step_index == from.step && run < from.image {
                continue;
            }
            let here = (step_index, run);
            let rendered = match step.render(&ctx, image) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    let f = Fail::permanent("RenderFailed", e.to_string());
                    return stop(inner, &d, t, (here, recorded), f, elapsed()).await;
                }
            };
            let request = match to_request(t, &rendered, &ctx) {
                Ok(r) => r,
                Err(f) => return stop(inner, &d, t, (here, recorded), f, elapsed()).await,
            };
            let key = idempotency_key(
                d.row,
                d.event_id,
                &rendered.name,
                image,
                &request_digest(&request),
            );
            let answer = match send::send(inner, &t.endpoint, &request, &key).await {
                Ok(a) => a,
                Err(f) => return stop(inner, &d, t, (here, recorded), f, elapsed()).await,
            };
            noted.http_status = Some(answer.status);
            noted.response = Some(
                crate::store::truncate(&answer.shown, crate::store::MAX_RESPONSE_SNIPPET)
                    .to_owned(),
            );
            if !rendered.expect.accepts(answer.status) {
                let f = send::judge(&rendered.name, &send::shown(&request.url), &answer);
                return stop(inner, &d, t, (here, recorded), f, elapsed()).await;
            }
            if let Some(image) = &answer.unsent_image {
                let url = send::shown(&request.url);
                let f = send::answered_early(inner, &rendered.name, &url, answer.status, image);
                return stop(inner, &d, t, (here, recorded), f.await, elapsed()).await;
            }
            last_status = Some(answer.status);
            if let Err(f) = keep_captures(inner, &d, &rendered, &answer, &mut ctx).await {
                return stop(inner, &d, t, (here, recorded), f, elapsed()).await;
            }
        }
    }

    // The client's record of a deleted vehicle is gone; a new one starts afresh.
    if event_type == EventType::VehicleDeleted
        && !ctx.remote().is_empty()
        && let Err(e) = store
            .set_state(d.row, &remote_key(d.lane), None, true)
            .await
    {
        return store_failed(e, elapsed());
    }
    if recorded {
        // Losing this only means a later replay of the event starts at its first request.
        let _ = store
            .set_state(d.row, &progress_key(d.seq), None, false)
            .await;
    }
    Attempt::Done {
        outcome: Outcome::Delivered {
            status: last_status,
        },
        skipped: last_status.is_none(),
        elapsed: elapsed(),
    }
}

/// Stores the values a request captured before anything else uses them: durably, since a
/// later event that did not see them would create the vehicle at the client a second time.
async fn keep_captures(
    inner: &Inner,
    d: &Delivery<'_>,
    rendered: &Rendered,
    answer: &Answer,
    ctx: &mut EventContext,
) -> Result<(), Fail> {
    if rendered.captures.is_empty() {
        return Ok(());
    }
    let got = capture(
        &rendered.captures,
        answer.status,
        &answer.headers,
        &answer.body,
    )
    .map_err(|e| Fail::permanent("CaptureFailed", format!("request {:?}: {e}", rendered.name)))?;
    if got.iter().all(|(k, v)| ctx.remote().get(k) == Some(v)) {
        return Ok(());
    }
    ctx.remember(got);
    let bytes = serde_json::to_vec(ctx.remote())
        .map_err(|e| Fail::retry("StoreFailed", format!("captured values: {e}")))?;
    inner
        .store
        .set_state(d.row, &remote_key(d.lane), Some(bytes), true)
        .await
        .map_err(|e| Fail::retry("StoreFailed", format!("keeping captured values: {e}")))
}

/// Records where the chain stopped (so the retry resumes there) and reports the failure;
/// `recorded`: a record of an earlier attempt exists, removed when this one leaves none (the
/// event is given up, or a retry starts at the first request).
async fn stop(
    inner: &Inner,
    d: &Delivery<'_>,
    t: &ApiTarget,
    ((step, image), recorded): ((usize, usize), bool),
    f: Fail,
    elapsed: Option<Duration>,
) -> Attempt {
    let key = progress_key(d.seq);
    if f.retryable && (step, image) != (0, 0) {
        let p = Progress {
            mapping: t.fingerprint.clone(),
            step,
            image,
        };
        if let Ok(bytes) = serde_json::to_vec(&p) {
            // Lost in a crash, the retry starts over; the idempotency keys make that safe.
            let _ = inner.store.set_state(d.row, &key, Some(bytes), false).await;
        }
    } else if recorded {
        let _ = inner.store.set_state(d.row, &key, None, false).await;
    }
    let why = Why::new(f.reason, f.message);
    if f.retryable {
        Attempt::Retry {
            why,
            retry_after: f.retry_after,
            elapsed,
        }
    } else {
        Attempt::Fail { why, elapsed }
    }
}

fn store_failed(e: crate::store::StoreError, elapsed: Option<Duration>) -> Attempt {
    Attempt::Retry {
        why: Why::new(
            "StoreFailed",
            format!("reading the connection's state: {e}"),
        ),
        retry_after: Some(Duration::from_secs(1)),
        elapsed,
    }
}

/// The same for every retry of one request of one event at one object, and different for
/// any other: the object's uid (another ApiConnection to the same API is another sender),
/// the event, the request, the image, and `digest`, what the request sends
/// ([`request_digest`]): a request the user changed while the event waited for its retry is
/// another request, which an API that keeps keys would refuse (or answer with the old one's
/// result) under the old key.
fn idempotency_key(
    row: &str,
    event_id: &str,
    request: &str,
    image: Option<usize>,
    digest: &str,
) -> String {
    let uid = row.rsplit('/').next().unwrap_or_default();
    let uid: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    match image {
        Some(i) => format!("vc-{uid}-{event_id}-{request}-{}-{digest}", i + 1),
        None => format!("vc-{uid}-{event_id}-{request}-{digest}"),
    }
}

/// 8 hex digits of the SHA-256 of what `r` sends but for credentials: method, path, query,
/// the mapping's headers and the body (JSON bytes, or the image's URL and checksum and the
/// multipart fields). The API's host is not in it: the same request to a moved API is the
/// same request.
fn request_digest(r: &Request) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(r.method.as_str().as_bytes());
    part(r.url.path().as_bytes());
    part(r.url.query().unwrap_or_default().as_bytes());
    for (name, value) in &r.headers {
        part(name.to_ascii_lowercase().as_bytes());
        part(value.as_bytes());
    }
    let image = |part: &mut dyn FnMut(&[u8]), i: &Image| {
        part(i.url.as_bytes());
        part(i.sha256.as_deref().unwrap_or_default().as_bytes());
    };
    match &r.body {
        Body::Empty => part(b"empty"),
        Body::Json(bytes) => {
            part(b"json");
            part(bytes);
        }
        Body::Raw(i) => {
            part(b"raw");
            image(&mut part, i);
        }
        Body::Multipart {
            field,
            fields,
            image: i,
        } => {
            part(b"multipart");
            part(field.as_bytes());
            for (name, value) in fields {
                part(name.as_bytes());
                part(value.as_bytes());
            }
            image(&mut part, i);
        }
    }
    h.finalize()
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn to_request(t: &ApiTarget, r: &Rendered, ctx: &EventContext) -> Result<Request, Fail> {
    let url = r.url(t.endpoint.base_url.as_str()).map_err(|e| {
        Fail::permanent("InvalidRequest", format!("request {:?}: URL: {e}", r.name))
    })?;
    let method = reqwest::Method::from_bytes(r.method.as_str().as_bytes())
        .map_err(|_| Fail::permanent("InvalidRequest", "method"))?;
    let image = |i: usize| -> Result<Image, Fail> {
        ctx.images()
            .get(i)
            .and_then(|v| serde_json::from_value::<Image>(v.clone()).ok())
            .ok_or_else(|| {
                Fail::permanent(
                    "InvalidImage",
                    format!(
                        "request {:?}: image {} of the event has no usable url",
                        r.name,
                        i + 1
                    ),
                )
            })
    };
    let body = match &r.body {
        RenderedBody::Empty => Body::Empty,
        RenderedBody::Json(bytes) => Body::Json(bytes.clone()),
        RenderedBody::Raw { image: i } => Body::Raw(image(*i)?),
        RenderedBody::Multipart {
            file_field,
            fields,
            image: i,
        } => Body::Multipart {
            field: file_field.clone(),
            fields: fields.clone(),
            image: image(*i)?,
        },
    };
    Ok(Request {
        method,
        url,
        headers: r.headers.clone(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::endpoint::{ApiCredentials, ApiEndpoint, TlsMaterial};
    use crate::mapping::Compiled;
    use crate::ssrf::{TargetGuard, parse_allow_list};
    use crate::store::{Store, StoreOptions};

    /// An API on loopback: `/b` answers 503 to its first `fail_b` requests, all else 200.
    async fn api(fail_b: usize) -> String {
        let calls = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/a", axum::routing::post(|| async { http::StatusCode::OK }))
            .route(
                "/b",
                axum::routing::post(move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < fail_b {
                            http::StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            http::StatusCode::OK
                        }
                    }
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    fn target(base: &str, fingerprint: &str, b_body: &str) -> ApiTarget {
        let spec: crate::api::ApiConnectionSpec = serde_json::from_value(serde_json::json!({
            "clientId": "c", "events": ["vehicle.created"], "baseUrl": base,
            "mappings": [{ "events": ["vehicle.created"], "requests": [
                { "name": "a", "method": "POST", "path": "/a" },
                { "name": "b", "method": "POST", "path": "/b", "body": b_body } ] }]
        }))
        .unwrap();
        ApiTarget {
            name: "api".into(),
            namespace: "ns".into(),
            endpoint: ApiEndpoint {
                base_url: url::Url::parse(base).unwrap(),
                auth: ApiCredentials::None,
                tls: TlsMaterial::default(),
                tls_id: TlsMaterial::default().fingerprint(),
                idempotency_header: http::HeaderName::from_static("idempotency-key"),
                timeout: Duration::from_secs(5),
            },
            mapping: Arc::new(Compiled::new(&spec).unwrap()),
            fingerprint: fingerprint.into(),
            max_concurrency: 1,
        }
    }

    #[tokio::test]
    async fn a_chain_leaves_no_progress_record_once_it_is_done_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let guard = TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap());
        let sender = super::super::ApiSender::new(guard, store.clone(), 1 << 20, "t").unwrap();
        let event = serde_json::json!({ "id": "e1", "type": "vehicle.created",
            "data": { "vehicle": { "id": "v1" } } })
        .to_string();
        let row = "apiconnection/ns/api/6f1c2a9e-0d4b-4c1e-9a55-2b7d7f0e1a11";
        let d = |seq| Delivery {
            row,
            seq,
            lane: "vehicle:v1",
            event_id: "e1",
            body: event.as_bytes(),
            uploaded: &[],
        };
        let record = |seq| store.state(row, &progress_key(seq)).unwrap();

        // Stopped at `b`, then finished under a changed mapping (started over).
        let base = api(1).await;
        let first = sender.deliver(&target(&base, "m1", "{}"), d(1)).await;
        assert!(matches!(first, Attempt::Retry { .. }), "{first:?}");
        assert!(record(1).is_some(), "where the chain stopped is kept");
        let done = sender.deliver(&target(&base, "m2", "[]"), d(1)).await;
        assert!(matches!(done, Attempt::Done { .. }), "{done:?}");
        assert_eq!(record(1), None, "the old mapping's record is gone");

        // Stopped at `b`, then given up there (its body no longer renders).
        let base = api(1).await;
        sender.deliver(&target(&base, "m1", "{}"), d(2)).await;
        assert!(record(2).is_some());
        let bad = target(&base, "m1", "{{ vehicle.nothing.here }}");
        let failed = sender.deliver(&bad, d(2)).await;
        assert!(matches!(failed, Attempt::Fail { .. }), "{failed:?}");
        assert_eq!(record(2), None, "a given-up chain leaves no record");
    }

    #[test]
    fn idempotency_keys_differ_per_object_request_and_image() {
        let row = "apiconnection/ns/dms/6f1c2a9e-0d4b-4c1e-9a55-2b7d7f0e1a11";
        let a = idempotency_key(row, "evt-1", "create", None, "0a1b2c3d");
        assert_eq!(a, "vc-6f1c2a9e0d4b-evt-1-create-0a1b2c3d");
        assert_ne!(a, idempotency_key(row, "evt-1", "update", None, "0a1b2c3d"));
        assert_ne!(a, idempotency_key(row, "evt-2", "create", None, "0a1b2c3d"));
        assert_ne!(a, idempotency_key(row, "evt-1", "create", None, "ffffffff"));
        let other = "apiconnection/ns/dms/0a1c2a9e-0d4b-4c1e-9a55-2b7d7f0e1a11";
        assert_ne!(
            a,
            idempotency_key(other, "evt-1", "create", None, "0a1b2c3d")
        );
        assert_eq!(
            idempotency_key(row, "evt-1", "photo", Some(0), "0a1b2c3d"),
            "vc-6f1c2a9e0d4b-evt-1-photo-1-0a1b2c3d"
        );
    }

    #[test]
    fn the_request_digest_follows_what_is_sent_but_not_the_host() {
        let req = |url: &str, body: &str| Request {
            method: reqwest::Method::PUT,
            url: url::Url::parse(url).unwrap(),
            headers: vec![("X-Dealer".into(), "1".into())],
            body: Body::Json(body.as_bytes().to_vec()),
        };
        let a = request_digest(&req("https://a.example/v/1?x=1", "{}"));
        assert_eq!(a.len(), 8);
        assert_eq!(a, request_digest(&req("https://a.example/v/1?x=1", "{}")));
        assert_eq!(a, request_digest(&req("http://b.example:81/v/1?x=1", "{}")));
        assert_ne!(a, request_digest(&req("https://a.example/v/2?x=1", "{}")));
        assert_ne!(a, request_digest(&req("https://a.example/v/1?x=2", "{}")));
        assert_ne!(a, request_digest(&req("https://a.example/v/1?x=1", "{ }")));
        let mut other = req("https://a.example/v/1?x=1", "{}");
        other.headers[0].1 = "2".into();
        assert_ne!(a, request_digest(&other));
        other.headers.clear();
        other.body = Body::Empty;
        assert_ne!(a, request_digest(&other));
    }
}
