//! The HTTP API: `POST /v1/events` (bearer tokens; 202 once durable), the clients' pull feed
//! `GET /v1/events` (`feed`), health, metrics and the OpenAPI document of this API.

pub mod envelope;
pub mod feed;
pub mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

pub use envelope::{Envelope, FieldError, Incoming};
pub use feed::FeedState;
use tokens::TokenSet;

use crate::metrics::{Metrics, ResultLabel};
use crate::store::{Store, StoreError, StoreHealth};

/// Default request size limit.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// Default bound on ingest requests in flight (each may hold a body of up to the limit).
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// A body slower than this is answered 408: an authorised but stalled client must not hold
/// a slot of the concurrency bound forever.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// After refusing an authorised request's body as too large, this much more of it (and for
/// this long) is read and thrown away, so the client gets to read its 413 instead of a
/// connection reset while it is still writing.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards the rest of a refused body, within [`DRAIN_BYTES`] and [`DRAIN_TIME`].
async fn drain(mut body: axum::body::Body) {
    use http_body_util::BodyExt;
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_BYTES {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// How reading a body ended.
enum BodyRead {
    Complete(axum::body::Bytes),
    TooLarge,
    Failed(String),
    TimedOut,
}

/// Reads at most `max` bytes of `body` within [`BODY_READ_TIMEOUT`]; past `max` the rest is
/// drained, not kept.
async fn read_body(mut body: axum::body::Body, max: usize) -> BodyRead {
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return BodyRead::TimedOut,
            Ok(None) => return BodyRead::Complete(buf.into()),
            Ok(Some(Err(e))) => return BodyRead::Failed(e.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if buf.len() + d.len() > max {
                        drain(body).await;
                        return BodyRead::TooLarge;
                    }
                    buf.extend_from_slice(d);
                }
            }
        }
    }
}

/// What happened to one accepted event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventResult {
    pub id: String,
    /// `accepted` (new, durable) or `duplicate` (this id was accepted before).
    pub status: &'static str,
    /// Delivery targets it was routed to (0 for duplicates).
    pub deliveries: usize,
}

/// Body of a 202.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AcceptResponse {
    pub accepted: usize,
    pub duplicates: usize,
    pub events: Vec<EventResult>,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable: `invalid_event`, `invalid_request` (feed parameters),
    /// `unauthorized`, `forbidden_client`, `timeout`, `too_large`, `unsupported_media_type`,
    /// `backlog_full`, `busy`, `unavailable`, `storage_full`.
    pub error: &'static str,
    pub message: String,
    /// The bad field, for `invalid_event`; the bad query parameter, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Where accepted events go: routes them, stores them durably, schedules delivery.
pub trait EventSink: Send + Sync {
    fn accept(&self, events: Vec<Incoming>) -> BoxFuture<'_, anyhow::Result<Vec<EventResult>>>;
}

#[derive(Clone)]
pub struct ApiState {
    pub tokens: TokenSet,
    pub sink: Arc<dyn EventSink>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub max_body: usize,
    /// Ingest requests in flight beyond its bound are answered 503 `busy` with `Retry-After`.
    pub ingest_limit: ConcurrencyLimit,
    /// For liveness, the store state gauge and the feed.
    pub store: Store,
    /// Feed tokens and long-poll bounds of `GET /v1/events`.
    pub feed: FeedState,
}

/// At most `max` ingest requests in flight; more are refused at once, never queued (a queue
/// would hold their connections and bodies, which the bound is there to avoid).
#[derive(Clone)]
pub struct ConcurrencyLimit {
    max: usize,
    permits: Arc<tokio::sync::Semaphore>,
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Self {
        ConcurrencyLimit {
            max,
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }
}

pub fn router(state: ApiState) -> Router {
    let limit = state.max_body;
    Router::new()
        .route("/v1/events", post(post_events).get(feed::get_feed))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn error(
    status: StatusCode,
    error: &'static str,
    message: impl Into<String>,
    field: Option<String>,
) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error,
            message: message.into(),
            field,
        }),
    )
        .into_response()
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &header::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
}

/// Accept one event or a batch.
#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body(content = Vec<Envelope>, description = "One event object, or an array of 1-1000 events", content_type = "application/json"),
    responses(
        (status = 202, description = "Stored durably; delivery follows (at least once)", body = AcceptResponse),
        (status = 400, description = "Invalid event; `field` names the bad field", body = ErrorBody),
        (status = 401, description = "Missing or unknown bearer token (answered before the body is read)", body = ErrorBody),
        (status = 403, description = "`forbidden_client`: the token may not post for the `clientId` of an event (`field` names it); the whole batch is refused", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the read timeout", body = ErrorBody),
        (status = 413, description = "Body larger than the limit", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "`backlog_full`: the backlog of pending deliveries is at its limit; nothing was accepted, retry after `Retry-After` seconds", body = ErrorBody),
        (status = 503, description = "Not ready, too many concurrent ingest requests (`busy`), or the store cannot write; retry after `Retry-After` seconds", body = ErrorBody),
        (status = 507, description = "`storage_full`: the operator's disk is full; nothing was accepted, retry after `Retry-After` seconds", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn post_events(State(st): State<ApiState>, req: Request) -> Response {
    let rejected = || {
        st.metrics
            .events
            .get_or_create(&ResultLabel { result: "rejected" })
            .inc()
    };
    // Everything that needs no body is decided before a byte of it is read: a bad token
    // with a huge or slow body costs one header parse.
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let Some(grant) = bearer(headers).and_then(|t| st.tokens.grant(t)) else {
        rejected();
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
            None,
        );
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        rejected();
        drain(body).await;
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
            None,
        );
    }
    if !st.ready.load(Ordering::Acquire) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "starting up; retry shortly",
            None,
        );
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {} bytes", st.max_body),
            None,
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > st.max_body as u64) {
        rejected();
        drain(body).await;
        return too_large();
    }
    // Held until the answer is built: bodies in memory and store work stay bounded.
    let Ok(_permit) = st.ingest_limit.permits.clone().try_acquire_owned() else {
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "more than {} ingest requests in flight; retry shortly",
                st.ingest_limit.max
            ),
            None,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return r;
    };
    let body = match read_body(body, st.max_body).await {
        BodyRead::Complete(b) => b,
        BodyRead::TooLarge => {
            rejected();
            return too_large();
        }
        BodyRead::Failed(e) => {
            rejected();
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                format!("could not read the body: {e}"),
                Some("$".into()),
            );
        }
        BodyRead::TimedOut => {
            rejected();
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
                None,
            );
        }
    };
    let events = match envelope::parse_body(&body) {
        Ok(e) => e,
        Err(fe) => {
            rejected();
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                format!("{}: {}", fe.field, fe.message),
                Some(fe.field),
            );
        }
    };
    // A batch is accepted whole or not at all: one foreign client refuses it.
    if let Some((i, e)) = events
        .iter()
        .enumerate()
        .find(|(_, e)| !grant.allows(&e.client_id))
    {
        rejected();
        let field = if events.len() == 1 && !body.trim_ascii_start().starts_with(b"[") {
            "clientId".to_string()
        } else {
            format!("[{i}].clientId")
        };
        return error(
            StatusCode::FORBIDDEN,
            "forbidden_client",
            format!(
                "this token may not post events for client {:?}; nothing in this request was accepted",
                e.client_id
            ),
            Some(field),
        );
    }
    match st.sink.accept(events).await {
        Ok(results) => {
            let dup = results.iter().filter(|r| r.status == "duplicate").count();
            let acc = results.len() - dup;
            st.metrics
                .events
                .get_or_create(&ResultLabel { result: "accepted" })
                .inc_by(acc as u64);
            st.metrics
                .events
                .get_or_create(&ResultLabel {
                    result: "duplicate",
                })
                .inc_by(dup as u64);
            (
                StatusCode::ACCEPTED,
                axum::Json(AcceptResponse {
                    accepted: acc,
                    duplicates: dup,
                    events: results,
                }),
            )
                .into_response()
        }
        Err(e) if e.is::<crate::delivery::dispatcher::BacklogFull>() => {
            tracing::warn!(error = %e, "backlog full; events refused");
            rejected();
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "backlog_full",
                e.to_string(),
                None,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
            r
        }
        Err(e) => {
            let store = e.downcast_ref::<StoreError>();
            st.metrics
                .events
                .get_or_create(&ResultLabel {
                    result: "unavailable",
                })
                .inc();
            // The store logs its own I/O trouble once; one line per refused request is noise.
            if store.is_some_and(StoreError::is_io) {
                tracing::debug!(error = %e, "could not store events");
            } else {
                tracing::error!(error = %e, "could not store events");
            }
            let (status, code, why) = match store {
                Some(s) if s.is_storage_full() => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    "storage_full",
                    "the operator's disk is full",
                ),
                Some(s) if s.is_io() => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the operator's store cannot write",
                ),
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "events could not be stored",
                ),
            };
            let retry_after = store
                .and_then(StoreError::retry_after)
                .map_or(5, |d| d.as_secs().max(1));
            let mut response = error(
                status,
                code,
                format!("{why}; nothing was accepted, retry in {retry_after}s"),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after.into());
            response
        }
    }
}

/// Liveness: fails when the store could not reopen its file for longer than the bound (a
/// restart is the remedy left). A store that cannot write because the disk is full stays live
/// (a restart would not free the disk) and says so in the body.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is alive (the body says if the store is degraded)"), (status = 503, description = "The store cannot recover; the body says why")))]
async fn healthz(State(st): State<ApiState>) -> Response {
    match st.store.health() {
        StoreHealth::Healthy => "ok".into_response(),
        StoreHealth::Degraded { reason, since, .. } => format!(
            "ok; store degraded for {}s, writes refused and retried: {reason}",
            since.elapsed().as_secs()
        )
        .into_response(),
        StoreHealth::Failed { reason, since } => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "store failed for {}s and cannot reopen its file: {reason}",
                since.elapsed().as_secs()
            ),
        )
            .into_response(),
    }
}

/// Readiness: the store is open and pending deliveries are loaded.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "Ready"), (status = 503, description = "Starting")))]
async fn readyz(State(st): State<ApiState>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(st): State<ApiState>) -> Response {
    st.metrics.store_state.set(st.store.health().level());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "The OpenAPI document")))]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vehicle-connect", description = "HTTP API of the vehicle-connect operator: the platform posts vehicle events; they are delivered to the clients' webhooks and FTP servers, and clients whose systems cannot receive webhooks read them with GET /v1/events (the pull feed, with its own feed tokens)."),
    paths(post_events, feed::get_feed, healthz, readyz, metrics, openapi_json),
    components(schemas(Envelope, envelope::Vehicle, envelope::Image, AcceptResponse, EventResult, ErrorBody, feed::FeedResponse)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
