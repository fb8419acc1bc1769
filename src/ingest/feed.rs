//! `GET /v1/events`: a client's pull feed. A client's system behind a firewall asks for its
//! events instead of receiving webhooks: the events it was sent, in the order they were
//! accepted, after an opaque cursor, optionally long-polling until one is accepted.
//!
//! Feed tokens are not ingest tokens: they come from their own file (`--feed-token-file`),
//! so a client that can read its feed cannot post as the platform, and the platform's
//! ingest token reads nothing.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use utoipa::{IntoParams, ToSchema};

use super::tokens::{self, Grant, TokenSet};
use super::{ApiState, Envelope, ErrorBody, bearer, error};
use crate::api::EventType;
use crate::metrics::ResultLabel;
use crate::store::jetstream::JetStreamLog;
use crate::store::{FeedCursor, FeedPage, FeedQuery, Store, StoreError};
use futures::StreamExt as _;

/// Events per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Longest `wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Long-polls waiting at once before more are answered 503 `busy`.
pub const DEFAULT_MAX_WAITERS: usize = 10_000;
/// Bodies past this size end a page early (with `more`): a page of 1,000 large events must
/// not become one huge response.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Index rows one read looks at, at most: a type filter that matches little ends the page
/// early (with `more`) instead of holding a read open over a client's whole backlog.
const MAX_SCAN: usize = 20_000;

/// What the feed endpoint needs besides the store.
#[derive(Clone)]
pub struct FeedState {
    /// `--feed-token-file`: which clients' feeds a token reads.
    pub tokens: TokenSet,
    pub max_waiters: usize,
    /// Turns true when the server shuts down: waiting long-polls answer at once, so they do
    /// not hold the shutdown for up to [`MAX_WAIT`].
    pub stopping: watch::Receiver<bool>,
    /// On the JetStream store (`--store nats://…`), the log the feed reads, so every replica
    /// serves the whole feed in the order events were accepted; `None`: this store.
    pub log: Option<crate::store::jetstream::JetStreamLog>,
}

impl Default for FeedState {
    /// No tokens (every read is 401) and no shutdown signal.
    fn default() -> Self {
        FeedState {
            tokens: TokenSet::default(),
            max_waiters: DEFAULT_MAX_WAITERS,
            stopping: watch::channel(false).1,
            log: None,
        }
    }
}

/// Query of `GET /v1/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// The `next` of the previous page. Absent: from the oldest event the operator still
    /// keeps.
    #[param(example = "AQr8H0x2kQ6uAAAAAAAAAAc")]
    pub after: Option<String>,
    /// Comma-separated event types; absent: every type.
    #[param(example = "vehicle.created,vehicle.processed")]
    pub types: Option<String>,
    /// Most events returned, 1-1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 100)]
    pub limit: Option<String>,
    /// When there is nothing to return, wait this long for an event (`500ms`, `30s`; at most
    /// `60s`). Absent or `0`: answer at once.
    #[param(example = "30s")]
    pub wait: Option<String>,
    /// The client whose feed to read. Required when the token reads for several clients (or
    /// any client, `*`); may be omitted by a token of one client.
    #[serde(rename = "clientId")]
    #[param(rename = "clientId", example = "dealer-123")]
    pub client_id: Option<String>,
}

/// A page of a client's feed.
// The schema of the 200 body; the handler writes the stored bodies as they are.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "events": [
        { "id": "evt_01JD2Y6W9Q4M5T7V8X0Z1A2B3C", "type": "vehicle.created",
          "timestamp": "2026-11-27T10:15:30Z", "clientId": "dealer-123", "userId": "u-42",
          "data": { "vehicle": { "id": "veh-9", "vin": "WVWZZZ1JZXW000001" } } },
        { "id": "evt_01JD2Y7B3C4D5E6F7G8H9J0K1M", "type": "vehicle.processed",
          "timestamp": "2026-11-27T10:16:02Z", "clientId": "dealer-123", "userId": "u-42",
          "data": { "vehicle": { "id": "veh-9", "vin": "WVWZZZ1JZXW000001" },
                    "images": [{ "index": 1, "url": "https://cdn.example/veh-9/1.jpg" }] } }
    ],
    "next": "AQr8H0x2kQ6uAAAAAAAAAAk",
    "truncated": false,
    "more": false
}))]
pub struct FeedResponse {
    /// The client's events after the cursor, in the order they were accepted, each as it was
    /// accepted (the same envelope webhooks carry).
    #[schema(schema_with = delivered_events)]
    pub events: Vec<Envelope>,
    /// Pass as `after` for the next page: resumes after the last event returned (the same
    /// cursor again when nothing was returned). Opaque.
    pub next: String,
    /// Events of this client after `after` were removed by retention before this read (or
    /// `after` came from another store, e.g. one that was reset): some events are missing
    /// from the feed. The page continues with what is kept.
    pub truncated: bool,
    /// The page ended at `limit` (or at its size or scan bound) with events possibly left:
    /// ask again with `next` at once instead of waiting.
    pub more: bool,
}

fn delivered_events() -> utoipa::openapi::Array {
    utoipa::openapi::ArrayBuilder::new()
        .items(utoipa::openapi::Ref::from_schema_name("Event"))
        .description(Some(
            "The client's events after the cursor, in the order they were accepted, each as \
             webhooks carry it.",
        ))
        .build()
}

/// Read one client's events (the pull feed).
///
/// For a client's system that cannot receive webhooks: the events of one client, in the
/// order they were accepted, after the cursor `after` (absent: from the oldest kept). Pass
/// each page's `next` as the following request's `after`; every event comes back exactly
/// once. Events stay readable as long as the operator keeps them: `--retention-hours`
/// (default 168, 7 days) after they were accepted, longer while a delivery of theirs is
/// pending. A cursor older than what was removed since gets `truncated: true`.
///
/// With `wait`, a read that finds nothing is held until an event of the client is accepted
/// (it comes back at once) or the wait ends (an empty page, `next` unchanged).
///
/// Authorised by a feed token (`--feed-token-file`), not an ingest token.
#[utoipa::path(
    get, path = "/v1/events", tag = "feed",
    params(FeedParams),
    responses(
        (status = 200, description = "The client's events after `after` (possibly none after `wait`)", body = FeedResponse),
        (status = 400, description = "`invalid_request`: `field` names the bad parameter: a malformed `after` cursor, an unknown type in `types`, `limit` outside 1-1000, `wait` not a duration of at most 60s, or `clientId` missing for a token of several clients", body = ErrorBody,
            example = json!({ "error": "invalid_request", "message": "unknown event type \"vehicle.exploded\"; known: user.created, ...", "field": "types" })),
        (status = 401, description = "Missing bearer token, or not a feed token (ingest tokens do not read the feed)", body = ErrorBody),
        (status = 403, description = "`forbidden_client`: the token may not read this `clientId`", body = ErrorBody),
        (status = 503, description = "`busy` (too many long-polls waiting) or `unavailable` (the store cannot be read now); retry after `Retry-After` seconds", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_feed(
    State(st): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<FeedParams>, QueryRejection>,
) -> Response {
    let (result, response) = match handle(&st, &headers, query).await {
        Ok((events, r)) => {
            st.metrics.feed_events.inc_by(events);
            ("ok", r)
        }
        Err(refused) => (refused.result, refused.response()),
    };
    st.metrics
        .feed_requests
        .get_or_create(&ResultLabel { result })
        .inc();
    response
}

/// A refused request: the metrics label and the answer.
/// Why a request is refused: the metrics label and what the answer says.
struct Refused {
    result: &'static str,
    status: StatusCode,
    error: &'static str,
    message: String,
    field: Option<&'static str>,
    retry_after: Option<u64>,
}

impl Refused {
    fn new(result: &'static str, status: StatusCode, error: &'static str, message: String) -> Self {
        Refused {
            result,
            status,
            error,
            message,
            field: None,
            retry_after: None,
        }
    }

    fn response(self) -> Response {
        let mut r = error(
            self.status,
            self.error,
            self.message,
            self.field.map(str::to_owned),
        );
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        r
    }
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Refused {
    Refused {
        field: Some(field),
        ..Refused::new(
            "invalid",
            StatusCode::BAD_REQUEST,
            "invalid_request",
            message.into(),
        )
    }
}

/// Answers with the number of events returned, or why not.
async fn handle(
    st: &ApiState,
    headers: &HeaderMap,
    query: Result<Query<FeedParams>, QueryRejection>,
) -> Result<(u64, Response), Refused> {
    let Some(grant) = bearer(headers).and_then(|t| st.feed.tokens.grant(t)) else {
        return Err(Refused::new(
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid feed token is required (Authorization: Bearer <token>)".into(),
        ));
    };
    let Query(p) = query.map_err(|e| invalid("$", e.body_text()))?;
    let client = client(&grant, p.client_id.as_deref())?;
    let q = FeedQuery {
        client,
        after: match p.after.as_deref() {
            None => None,
            Some(s) => Some(FeedCursor::parse(s).ok_or_else(|| {
                invalid(
                    "after",
                    "not a cursor of this feed; pass a `next` as it was returned",
                )
            })?),
        },
        types: types(p.types.as_deref())?,
        limit: limit(p.limit.as_deref())?,
        max_bytes: MAX_PAGE_BYTES,
        max_scan: MAX_SCAN,
    };
    let wait = wait(p.wait.as_deref())?;
    let page = if wait.is_zero() {
        read(st, q).await?
    } else {
        long_poll(st, q, wait).await?
    };
    let n = page.events.len() as u64;
    let response = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page_json(&page),
    )
        .into_response();
    Ok((n, response))
}

/// The client to read: the one named, if the token may read it, or the token's only one.
fn client(grant: &Grant, named: Option<&str>) -> Result<String, Refused> {
    if let Some(c) = named {
        if !tokens::client_like(c) {
            return Err(invalid(
                "clientId",
                format!("{c:?} is not a clientId (1-128 of A-Z a-z 0-9 _ . : - @)"),
            ));
        }
        if !grant.allows(c) {
            return Err(Refused {
                field: Some("clientId"),
                ..Refused::new(
                    "forbidden",
                    StatusCode::FORBIDDEN,
                    "forbidden_client",
                    format!("this token may not read the events of client {c:?}"),
                )
            });
        }
        return Ok(c.to_owned());
    }
    match grant {
        Grant::Clients(only) if only.len() == 1 => {
            Ok(only.iter().next().cloned().unwrap_or_default())
        }
        _ => Err(invalid(
            "clientId",
            "this token reads the feeds of several clients: say which with clientId=",
        )),
    }
}

fn types(list: Option<&str>) -> Result<Vec<String>, Refused> {
    let mut out: Vec<String> = Vec::new();
    for t in list
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if t.parse::<EventType>().is_err() {
            let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(invalid(
                "types",
                format!("unknown event type {t:?}; known: {}", known.join(", ")),
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_owned());
        }
    }
    Ok(out)
}

fn limit(s: Option<&str>) -> Result<usize, Refused> {
    let Some(s) = s else {
        return Ok(DEFAULT_LIMIT);
    };
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(invalid(
            "limit",
            format!("limit must be a whole number from 1 to {MAX_LIMIT}, not {s:?}"),
        )),
    }
}

/// `500ms`, `30s` or a bare number of seconds, at most [`MAX_WAIT`].
fn wait(s: Option<&str>) -> Result<Duration, Refused> {
    let Some(s) = s else {
        return Ok(Duration::ZERO);
    };
    let t = s.trim();
    let (number, unit_ms) = match t.strip_suffix("ms") {
        Some(n) => (n, 1),
        None => (t.strip_suffix('s').unwrap_or(t), 1000),
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
    {
        Some(ms) if Duration::from_millis(ms) <= MAX_WAIT => Ok(Duration::from_millis(ms)),
        _ => Err(invalid(
            "wait",
            format!("wait must be a duration such as 500ms or 30s, at most 60s, not {s:?}"),
        )),
    }
}

/// One read: from the JetStream log when the operator runs on it, else from the store.
async fn read(st: &ApiState, q: FeedQuery) -> Result<FeedPage, Refused> {
    match &st.feed.log {
        Some(log) => log.feed(&q).await.map_err(|e| log_unavailable(&e)),
        None => read_store(&st.store, q).await,
    }
}

/// One read, off the async workers (a page may read a few MiB of bodies).
async fn read_store(store: &Store, q: FeedQuery) -> Result<FeedPage, Refused> {
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || store.feed(&q)).await;
    match result {
        Ok(Ok(page)) => Ok(page),
        Ok(Err(e)) => Err(unavailable(&e)),
        Err(e) => {
            tracing::error!(error = %e, "feed read task failed");
            Err(unavailable(&StoreError::WriterStopped))
        }
    }
}

/// The JetStream log could not be read (a NATS node is down, a leader is being elected).
fn log_unavailable(e: &crate::store::jetstream::JetStreamError) -> Refused {
    tracing::debug!(error = %e, "feed read from JetStream failed");
    Refused {
        retry_after: Some(1),
        ..Refused::new(
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the event log cannot be read now; retry in 1s".into(),
        )
    }
}

fn unavailable(e: &StoreError) -> Refused {
    tracing::debug!(error = %e, "feed read failed");
    let retry_after = e.retry_after().map_or(5, |d| d.as_secs().max(1));
    Refused {
        retry_after: Some(retry_after),
        ..Refused::new(
            "unavailable",
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the operator's store cannot be read now; retry in {retry_after}s"),
        )
    }
}

/// Counts one waiting long-poll for as long as it lives (a hung-up client drops it too).
struct Waiting(Gauge);

impl Waiting {
    fn new(g: &Gauge) -> Self {
        g.inc();
        Waiting(g.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Reads; when there is nothing, waits for the commit of one of the client's events (the
/// store wakes this request; nothing polls), the end of `wait`, or the server's shutdown.
/// A client that hangs up drops this future, and with it its registration.
async fn long_poll(st: &ApiState, mut q: FeedQuery, wait: Duration) -> Result<FeedPage, Refused> {
    if st.store.feed_waiters() >= st.feed.max_waiters {
        return Err(Refused {
            retry_after: Some(1),
            ..Refused::new(
                "busy",
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "more than {} feed long-polls are waiting; retry shortly",
                    st.feed.max_waiters
                ),
            )
        });
    }
    let deadline = tokio::time::Instant::now() + wait;
    // Counts the long-poll (and wakes it on the store's commits).
    let waiter = st.store.feed_waiter(&q.client);
    // On JetStream, the client's new events arrive here as they are stored.
    let mut stored = match &st.feed.log {
        Some(log) => Some(
            log.feed_subscription(&q.client)
                .await
                .map_err(|e| log_unavailable(&e))?,
        ),
        None => None,
    };
    let _waiting = Waiting::new(&st.metrics.feed_waiting);
    let mut stopping = st.feed.stopping.clone();
    let mut last = false;
    loop {
        // Registered before the read: a commit between the read and the wait still wakes it.
        let woken = waiter.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let page = read(st, q.clone()).await?;
        if last || !page.events.is_empty() || page.more || page.truncated {
            return Ok(page);
        }
        // Other types of the client's, already looked at, are not read again.
        q.after = Some(page.next);
        let from_log = async {
            match stored.as_mut() {
                Some(sub) => {
                    // A message stored between the read and here is still queued for us;
                    // the recheck covers one lost while reconnecting.
                    let _ = tokio::time::timeout(JetStreamLog::FEED_RECHECK, sub.next()).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = woken => {}
            _ = from_log => {}
            _ = tokio::time::sleep_until(deadline) => last = true,
            _ = stopped(&mut stopping) => last = true,
        }
    }
}

/// Completes when the server shuts down; never if nothing can tell it to.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The response body: stored bodies are the envelopes as accepted, so they are written as
/// they are, not parsed and serialised again.
fn page_json(page: &FeedPage) -> Vec<u8> {
    let bodies: usize = page.events.iter().map(|e| e.body.len() + 1).sum();
    let mut out = Vec::with_capacity(bodies + 96);
    out.extend_from_slice(b"{\"events\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&e.body);
    }
    out.extend_from_slice(
        format!(
            "],\"next\":\"{}\",\"truncated\":{},\"more\":{}}}",
            page.next, page.truncated, page.more
        )
        .as_bytes(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FeedEvent;

    fn code(r: Result<impl std::fmt::Debug, Refused>) -> (StatusCode, &'static str) {
        let refused = r.expect_err("refused");
        (refused.status, refused.result)
    }

    #[test]
    fn the_page_is_json_of_the_documented_shape() {
        let body = br#"{"id":"e1","type":"data.new","timestamp":"2026-01-01T00:00:00Z","clientId":"c","data":{"x":[1,2]}}"#;
        let next = FeedCursor::parse("AQAAAAAAAAAHAAAAAAAAACo").unwrap();
        let page = FeedPage {
            events: vec![
                FeedEvent {
                    seq: 41,
                    body: body.to_vec(),
                },
                FeedEvent {
                    seq: 42,
                    body: body.to_vec(),
                },
            ],
            next,
            truncated: true,
            more: false,
        };
        let parsed: FeedResponse = serde_json::from_slice(&page_json(&page)).unwrap();
        assert_eq!(parsed.events.len(), 2);
        assert_eq!(parsed.events[1].data, serde_json::json!({"x": [1, 2]}));
        assert_eq!(parsed.next, "AQAAAAAAAAAHAAAAAAAAACo");
        assert!(parsed.truncated && !parsed.more);
        let empty = FeedPage {
            events: vec![],
            ..page
        };
        let parsed: FeedResponse = serde_json::from_slice(&page_json(&empty)).unwrap();
        assert!(parsed.events.is_empty());
    }

    #[test]
    fn parameters_are_checked_and_name_the_bad_one() {
        assert_eq!(wait(None).unwrap(), Duration::ZERO);
        assert_eq!(wait(Some("500ms")).unwrap(), Duration::from_millis(500));
        assert_eq!(wait(Some("30s")).unwrap(), Duration::from_secs(30));
        assert_eq!(wait(Some("60")).unwrap(), MAX_WAIT);
        for bad in ["61s", "1m", "-1s", "soon", "", "99999999999999999999ms"] {
            assert_eq!(
                code(wait(Some(bad))),
                (StatusCode::BAD_REQUEST, "invalid"),
                "{bad}"
            );
        }
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "ten", "-5"] {
            assert_eq!(
                code(limit(Some(bad))),
                (StatusCode::BAD_REQUEST, "invalid"),
                "{bad}"
            );
        }
        assert_eq!(
            types(Some("vehicle.created, vehicle.processed,vehicle.created")).unwrap(),
            ["vehicle.created", "vehicle.processed"]
        );
        assert!(types(None).unwrap().is_empty());
        let r = types(Some("vehicle.created,vehicle.exploded")).unwrap_err();
        assert_eq!(
            (r.status, r.field),
            (StatusCode::BAD_REQUEST, Some("types"))
        );
        assert!(r.message.contains("\"vehicle.exploded\""), "{}", r.message);
    }

    #[test]
    fn a_token_reads_only_the_clients_it_is_bound_to() {
        let one = Grant::Clients(["dealer-1".to_owned()].into());
        let two = Grant::Clients(["dealer-1".to_owned(), "dealer-2".to_owned()].into());
        assert_eq!(client(&one, None).unwrap(), "dealer-1");
        assert_eq!(client(&one, Some("dealer-1")).unwrap(), "dealer-1");
        assert_eq!(
            code(client(&one, Some("dealer-2"))),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert_eq!(
            code(client(&two, None)),
            (StatusCode::BAD_REQUEST, "invalid")
        );
        assert_eq!(client(&two, Some("dealer-2")).unwrap(), "dealer-2");
        assert_eq!(
            code(client(&Grant::AnyClient, None)),
            (StatusCode::BAD_REQUEST, "invalid")
        );
        assert_eq!(client(&Grant::AnyClient, Some("anyone")).unwrap(), "anyone");
        assert_eq!(
            code(client(&Grant::AnyClient, Some("a/b"))),
            (StatusCode::BAD_REQUEST, "invalid")
        );
    }
}
