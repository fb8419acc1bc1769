//! The HTTP API: `POST /v1/events` (bearer tokens; 202 once durable), the clients' pull feed
//! `GET /v1/events` (`feed`), health, metrics and the OpenAPI document of this API.

pub mod envelope;
pub mod feed;
pub mod schema;
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
    #[schema(schema_with = result_status)]
    pub status: &'static str,
    /// Delivery targets it was routed to (0 for duplicates).
    pub deliveries: usize,
}

fn result_status() -> utoipa::openapi::Object {
    string_enum(
        &["accepted", "duplicate"],
        "`accepted` (new, durable) or `duplicate` (this id was accepted before, nothing is delivered again).",
    )
}

fn string_enum(values: &[&str], description: &str) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

/// Body of a 202.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "accepted": 1, "duplicates": 1,
    "events": [
        { "id": "evt_sample_vehicle_created", "status": "duplicate", "deliveries": 0 },
        { "id": "evt_sample_vehicle_processed_2", "status": "accepted", "deliveries": 3 }
    ]
}))]
pub struct AcceptResponse {
    /// Events accepted now.
    pub accepted: usize,
    /// Events whose id was accepted before (not stored or delivered again).
    pub duplicates: usize,
    /// One per event of the request, in its order.
    pub events: Vec<EventResult>,
}

/// Body of every error response.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code.
    #[schema(schema_with = error_code)]
    pub error: &'static str,
    /// For people: what is wrong and what to do.
    pub message: String,
    /// The bad field, for `invalid_event` (e.g. `[2].data.vehicle.id`, `$` for the whole body)
    /// and `forbidden_client`; the bad query parameter, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

fn error_code() -> utoipa::openapi::Object {
    string_enum(
        &[
            "invalid_event",
            "invalid_request",
            "unauthorized",
            "forbidden_client",
            "timeout",
            "too_large",
            "unsupported_media_type",
            "backlog_full",
            "busy",
            "unavailable",
            "storage_full",
            "not_found",
            "conflict",
            "invalid_resource",
            "self_service_disabled",
            "client_not_allowed",
            "misconfigured",
        ],
        "Machine-readable; `invalid_request` is the feed's (its parameters).",
    )
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
///
/// Each event is checked (errors name the field), routed to the delivery targets that select
/// it and stored durably before the answer: `202` means every event of the request is either
/// accepted or a `duplicate` of an id accepted before, and will be delivered at least once. A
/// request is accepted or refused as a whole.
#[utoipa::path(
    post, path = "/v1/events", tag = "ingest",
    request_body(
        content = ref("#/components/schemas/EventsInput"), content_type = "application/json",
        description = "One event, or an array of 1-1000 events; the whole body at most `--max-body-bytes` (default 1 MiB)",
        examples(
            ("one" = (summary = "One event", value = json!(schema::input_example(false)))),
            ("batch" = (summary = "A batch", value = json!(schema::input_example(true)))),
        ),
    ),
    responses(
        (status = 202, description = "Stored durably; delivery follows (at least once)", body = AcceptResponse),
        (status = 400, description = "`invalid_event`: not JSON, not an event or a batch of 1-1000, or an event fails a check; `field` names the bad field", body = ErrorBody,
            example = json!({ "error": "invalid_event", "message": "[1].data.vehicle.id: required: a non-empty string of at most 128 characters", "field": "[1].data.vehicle.id" })),
        (status = 401, description = "`unauthorized`: missing or unknown bearer token (answered before the body is read)", body = ErrorBody,
            example = json!({ "error": "unauthorized", "message": "a valid bearer token is required (Authorization: Bearer <token>)" })),
        (status = 403, description = "`forbidden_client`: the token may not post for the `clientId` of an event (`field` names it); the whole request is refused", body = ErrorBody,
            example = json!({ "error": "forbidden_client", "message": "this token may not post events for client \"dealer-9\"; nothing in this request was accepted", "field": "[3].clientId" })),
        (status = 408, description = "`timeout`: the body did not arrive within 30 s", body = ErrorBody,
            example = json!({ "error": "timeout", "message": "the body did not arrive within 30s" })),
        (status = 413, description = "`too_large`: body larger than `--max-body-bytes`", body = ErrorBody,
            example = json!({ "error": "too_large", "message": "body larger than 1048576 bytes" })),
        (status = 415, description = "`unsupported_media_type`: Content-Type is not application/json", body = ErrorBody,
            example = json!({ "error": "unsupported_media_type", "message": "Content-Type must be application/json" })),
        (status = 429, description = "`backlog_full`: the backlog of pending deliveries is at its limit; nothing was accepted, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds (30)")),
            example = json!({ "error": "backlog_full", "message": "5000000 deliveries are pending, the limit is 5000000; nothing was accepted, retry later" })),
        (status = 503, description = "`unavailable` (starting up, or the store cannot write) or `busy` (too many ingest requests in flight); nothing was accepted, retry (after `Retry-After` seconds, when given)", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds; sent with `busy` (1) and when the store cannot write")),
            example = json!({ "error": "busy", "message": "more than 64 ingest requests in flight; retry shortly" })),
        (status = 507, description = "`storage_full`: the operator's disk is full; nothing was accepted, retry after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds")),
            example = json!({ "error": "storage_full", "message": "the operator's disk is full; nothing was accepted, retry in 5s" })),
    ),
    security(("bearer" = []))
)]
async fn post_events(State(st): State<ApiState>, req: Request) -> Response {
    let response = accept_events(&st, req).await;
    st.metrics
        .ingest_requests
        .get_or_create(&crate::metrics::CodeLabel {
            code: response.status().as_u16(),
        })
        .inc();
    response
}

async fn accept_events(st: &ApiState, req: Request) -> Response {
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

/// Liveness.
///
/// Fails when the store could not reopen its file for longer than the bound (a restart is
/// the remedy left). A store that cannot write because the disk is full stays live (a restart
/// would not free the disk) and says so in the body.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses(
    (status = 200, description = "The process is alive; the body says if the store is degraded (writes refused and retried, e.g. a full disk)", body = String, content_type = "text/plain", example = "ok"),
    (status = 503, description = "The store cannot reopen its file; a restart is the remedy left", body = String, content_type = "text/plain",
        example = "store failed for 312s and cannot reopen its file: Input/output error (os error 5)"),
))]
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
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready: events posted now reach every target that exists", body = String, content_type = "text/plain", example = "ok"),
    (status = 503, description = "Starting", body = String, content_type = "text/plain", example = "starting"),
))]
async fn readyz(State(st): State<ApiState>) -> Response {
    if st.ready.load(Ordering::Acquire) {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "OpenMetrics text (`application/openmetrics-text; version=1.0.0; charset=utf-8`), which Prometheus reads", body = String, content_type = "application/openmetrics-text",
        example = "# TYPE vehicle_connect_events counter\nvehicle_connect_events_total{result=\"accepted\"} 42\n# EOF\n"),
))]
async fn metrics(State(st): State<ApiState>) -> Response {
    st.metrics
        .store(st.store.health().level(), st.store.stats());
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
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses(
    (status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json"),
))]
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
    info(title = "vehicle-connect", description = "HTTP API of the vehicle-connect operator: the platform posts vehicle events; they are delivered to the clients' webhooks (described under `webhooks`: what a client's receiver gets and how its answers are taken), FTP servers and APIs, and clients whose systems cannot receive webhooks read them with GET /v1/events (the pull feed, with its own feed tokens)."),
    paths(
        post_events, feed::get_feed, healthz, readyz, metrics, openapi_json,
        crate::manage::deliveries::list, crate::manage::deliveries::one,
        crate::manage::deliveries::event, crate::manage::replay::retry,
        crate::manage::replay::redeliver, crate::manage::replay::replay,
        crate::manage::replay::test_send,
        crate::manage::targets::list, crate::manage::targets::one,
        crate::manage::preview::preview,
    ),
    components(schemas(
        AcceptResponse, EventResult, ErrorBody, feed::FeedResponse,
        crate::manage::deliveries::DeliveriesPage, crate::manage::deliveries::EventView,
        crate::manage::deliveries::TargetAttempts, crate::store::AttemptEntry,
        crate::store::EntryEvent, crate::store::EntryTarget, crate::store::FtpReply,
        crate::store::LogResult, crate::manage::replay::RedeliverRequest,
        crate::manage::replay::ReplayRequest, crate::manage::replay::TestRequest,
        crate::manage::targets::TargetList, crate::manage::targets::TargetView,
        crate::manage::targets::ConditionView, crate::manage::targets::CountersView,
        crate::manage::targets::LastDeliveryView, crate::manage::targets::LastFailureView,
        crate::manage::preview::Preview,
    )),
    tags(
        (name = "ingest", description = "The platform posts events (ingest tokens, `--ingest-token-file`)."),
        (name = "feed", description = "A client reads its events (feed tokens, `--feed-token-file`)."),
        (name = "operations", description = "Probes, metrics and this document; no token."),
        (name = "management", description = "What operators and clients use to see deliveries (manage tokens, `--manage-token-file`; a client token sees only its clients)."),
        (name = "webhooks", description = "What a client's receiver gets: one signed POST per event and subscription (Standard Webhooks), and how the operator takes its answer."),
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `docs/openapi.json` holds).
pub fn openapi_document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let mut doc = match serde_json::to_value(&doc) {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(_) => serde_json::Map::new(),
        Err(e) => return format!("{{\"error\": \"{e}\"}}"),
    };
    schema::complete(&mut doc);
    crate::manage::selfservice::openapi::complete(&mut doc);
    serde_json::to_string_pretty(&TopLevel(&doc))
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The document's sections in the order the specification lists them (a JSON map would sort
/// them, putting `components` first).
struct TopLevel<'a>(&'a serde_json::Map<String, serde_json::Value>);

impl Serialize for TopLevel<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        const ORDER: [&str; 8] = [
            "openapi",
            "info",
            "servers",
            "tags",
            "paths",
            "webhooks",
            "components",
            "security",
        ];
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for k in ORDER {
            if let Some(v) = self.0.get(k) {
                m.serialize_entry(k, v)?;
            }
        }
        for (k, v) in self.0.iter().filter(|(k, _)| !ORDER.contains(&k.as_str())) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}
