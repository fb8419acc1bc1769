//! Doing deliveries again and trying a target out: redeliver one stored event to one target,
//! replay a window of stored events, and send a sample event now (the "send test event"
//! button). Redeliver and replay queue the stored events again for the dispatcher (the same
//! lanes, order and retry policy as their first delivery); a test send goes through the same
//! senders but not through the queue, and is neither stored nor counted.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ApiError, Caller, ManageState};
use crate::api::EventType;
use crate::delivery::attempt::{Answer, Attempt, Delivery};
use crate::routing::{Kind, Target, TargetKey};
use crate::store::jetstream::JetStreamLog;
use crate::store::jetstream::replay::ReplayRecord;
use crate::store::{FeedQuery, Outcome, StoreError, dedupe_key};

/// Most events one replay queues; a longer window is replayed in several requests (the
/// answer says where this one stopped).
pub const MAX_REPLAY: usize = 100_000;

/// A test send gives up after this long whatever the target's own timeouts (an FTP upload
/// of the sample's images, an API chain).
const TEST_DEADLINE: Duration = Duration::from_secs(150);

/// Bytes of the receiver's answer returned by a test send.
const SNIPPET: usize = 512;

pub fn routes() -> Router<ManageState> {
    Router::new()
        .route("/v1/targets/{kind}/{ns}/{name}/redeliver", post(redeliver))
        .route("/v1/targets/{kind}/{ns}/{name}/replay", post(replay))
        .route("/v1/targets/{kind}/{ns}/{name}/test", post(test_send))
        .route("/v1/deliveries/{id}/retry", post(retry))
}

/// A delivery log entry's event to that entry's target again (a redeliver).
#[utoipa::path(
    post, path = "/v1/deliveries/{id}/retry", tag = "management",
    params(("id" = String, Path, description = "The entry id", example = "18342")),
    responses(
        (status = 202, description = "Queued", body = Object, example = json!({"queued": 1, "entry": "18342", "eventId": "evt-1", "client": "dealer-1", "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "5b1c…", "client": "dealer-1"}, "note": null})),
        (status = 404, description = "No such entry or target, or not the caller's", body = crate::ingest::ErrorBody),
        (status = 409, description = "`target_replaced`, `not_taken` or `too_old`", body = crate::ingest::ErrorBody),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn retry(
    State(state): State<ManageState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = state.caller(&headers)?;
    let missing = || ApiError::not_found(format!("no delivery log entry {id:?}"));
    // The entry's client, event id and target row: from the replica whose log holds it when
    // replicas share the log.
    let (client, event_id, row) = match &state.replicas {
        Some(replicas) => {
            let e = replicas.entry(&id).await?.ok_or_else(missing)?;
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let t = &e["target"];
            (
                text(&e["event"]["client"]),
                text(&e["event"]["id"]),
                [&t["kind"], &t["namespace"], &t["name"], &t["uid"]]
                    .map(text)
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join("/"),
            )
        }
        None => {
            let n = id.parse::<u64>().map_err(|_| missing())?;
            let e = state
                .store
                .attempt(n)
                .map_err(store_error)?
                .ok_or_else(missing)?;
            (e.event.client, e.event.id, e.target.row)
        }
    };
    if !caller.may_see(&client) {
        return Err(missing());
    }
    let row: crate::routing::TargetId = row.parse().map_err(|_| missing())?;
    let target = state
        .registry
        .get(&row.key)
        .filter(|t| caller.may_see(&t.selector.client_id))
        .ok_or_else(|| ApiError::not_found(format!("no target {}", row.key)))?;
    if !row.is(&target) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "target_replaced",
            format!(
                "{} was deleted and created again since this attempt; redeliver to the new one by event id",
                row.key
            ),
        ));
    }
    let queued = redeliver_event(&state, &caller, &target, &client, &event_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "queued": queued,
            "entry": id,
            "eventId": event_id,
            "client": client,
            "target": target_json(&target),
            "note": (queued == 0).then_some("the event is already pending for this target"),
        })),
    )
        .into_response())
}

/// `{kind}/{ns}/{name}` of a request; the kind by its full or short name.
fn target_key(kind: &str, namespace: String, name: String) -> Result<TargetKey, ApiError> {
    let kind = match kind.to_ascii_lowercase().as_str() {
        "webhooksubscription" | "webhooksubscriptions" | "whs" => Kind::Webhook,
        "ftpconnection" | "ftpconnections" | "ftpc" => Kind::Ftp,
        "apiconnection" | "apiconnections" | "apic" => Kind::Api,
        _ => {
            return Err(ApiError::invalid(
                "kind",
                format!(
                    "{kind:?} is not a target kind: webhooksubscription (whs), ftpconnection (ftpc) or apiconnection (apic)"
                ),
            ));
        }
    };
    Ok(TargetKey {
        kind,
        namespace,
        name,
    })
}

/// The registered target the caller may act on; anything else is the same 404.
fn target_of(
    state: &ManageState,
    caller: &Caller,
    (kind, ns, name): (String, String, String),
) -> Result<Arc<Target>, ApiError> {
    let key = target_key(&kind, ns, name)?;
    state
        .registry
        .get(&key)
        .filter(|t| caller.may_see(&t.selector.client_id))
        .ok_or_else(|| ApiError::not_found(format!("no target {key}")))
}

fn target_json(t: &Target) -> Value {
    json!({
        "kind": t.key.kind.as_str(), "namespace": t.key.namespace, "name": t.key.name,
        "uid": t.uid, "client": t.selector.client_id,
    })
}

/// A JSON request body (an empty one reads as `{}`).
fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid("$", format!("bad body: {e}")))
}

/// The caller, the target and the body of a request on a target.
fn request<T: serde::de::DeserializeOwned>(
    state: &ManageState,
    path: (String, String, String),
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<(Caller, Arc<Target>, T), ApiError> {
    let caller = state.caller(headers)?;
    let target = target_of(state, &caller, path)?;
    Ok((caller, target, body(bytes)?))
}

/// Replays and redeliveries have used their share of the backlog (half the bound); ingest
/// keeps the rest.
fn backlog_full() -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "backlog_full",
        "the backlog is half full (--max-pending-deliveries): replays and redeliveries wait until it has drained, so that ingest keeps its room",
    )
}

fn log_error(e: crate::store::jetstream::JetStreamError) -> ApiError {
    ApiError::unavailable(format!("the event log cannot be used now: {e}"))
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::unavailable(format!("the store cannot be read now: {e}"))
}

fn now_ms() -> u64 {
    crate::delivery::dispatcher::now_ms()
}

fn rfc3339(ms: u64) -> String {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

fn parse_time(field: &str, s: &str) -> Result<u64, ApiError> {
    let t: Timestamp = s
        .parse()
        .map_err(|e| ApiError::invalid(field, format!("{s:?} is not an RFC 3339 time: {e}")))?;
    u64::try_from(t.as_millisecond())
        .map_err(|_| ApiError::invalid(field, format!("{s:?} is before 1970")))
}

/// What a stored event says of itself that decides whether a target takes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    client_id: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(rename = "type")]
    type_: EventType,
}

/// Whether `target` takes the stored `body` now, and if not why.
fn takes(target: &Target, body: &[u8]) -> Result<(), String> {
    let head: Head = serde_json::from_slice(body)
        .map_err(|e| format!("the stored event cannot be read: {e}"))?;
    if target
        .selector
        .matches(&head.client_id, head.user_id.as_deref(), head.type_)
    {
        Ok(())
    } else {
        Err(format!(
            "the target no longer takes {} events of client {:?}{}",
            head.type_,
            head.client_id,
            head.user_id
                .map(|u| format!(" and user {u:?}"))
                .unwrap_or_default()
        ))
    }
}

/// Whether an event received at `received_ms` is past the target's retry policy's maximum
/// age: queued again, it would only expire.
fn too_old(target: &Target, received_ms: u64) -> bool {
    now_ms().saturating_sub(received_ms) >= u64::from(target.retry.max_age_seconds) * 1000
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedeliverRequest {
    event_id: String,
    /// The event's client; the target's client when left out.
    #[serde(default)]
    client: Option<String>,
}

/// One stored event to one target again (queued; delivered like the first time).
#[utoipa::path(
    post, path = "/v1/targets/{kind}/{ns}/{name}/redeliver", tag = "management",
    params(("kind" = String, Path, description = "webhooksubscription, ftpconnection or apiconnection (whs, ftpc, apic)", example = "whs"), ("ns" = String, Path, description = "Namespace", example = "dealer-1"), ("name" = String, Path, description = "Name", example = "crm")),
    request_body(content = RedeliverRequest, example = json!({"eventId": "evt-1", "client": "dealer-1"})),
    responses(
        (status = 202, description = "Queued (`queued` 0: still pending there)", body = Object, example = json!({"queued": 1, "eventId": "evt-1", "client": "dealer-1", "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "5b1c…", "client": "dealer-1"}, "note": null})),
        (status = 404, description = "No such target or event (or past retention), or not the caller's", body = crate::ingest::ErrorBody),
        (status = 409, description = "`not_taken`: the target no longer takes the event; `too_old`: older than its retry.maxAgeSeconds", body = crate::ingest::ErrorBody),
        (status = 429, description = "`backlog_full`: replays and redeliveries have filled their half of `--max-pending-deliveries`", body = crate::ingest::ErrorBody),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(state): State<ManageState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (caller, target, req) = request::<RedeliverRequest>(&state, path, &headers, &bytes)?;
    let client = req
        .client
        .unwrap_or_else(|| target.selector.client_id.clone());
    let queued = redeliver_event(&state, &caller, &target, &client, &req.event_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "queued": queued,
            "eventId": req.event_id,
            "client": client,
            "target": target_json(&target),
            "note": (queued == 0).then_some("the event is already pending for this target"),
        })),
    )
        .into_response())
}

/// Queues `client`'s stored event `event_id` for `target` again; how many deliveries were
/// added (0 when it is still pending there).
pub(crate) async fn redeliver_event(
    state: &ManageState,
    caller: &Caller,
    target: &Target,
    client: &str,
    event_id: &str,
) -> Result<u64, ApiError> {
    let missing = || {
        ApiError::not_found(format!(
            "no event {event_id:?} of client {client:?} (never accepted, or past retention)"
        ))
    };
    if !caller.may_see(client) {
        return Err(missing());
    }
    if let Some(log) = &state.log {
        if state.dispatcher.replay_room() == 0 {
            return Err(backlog_full());
        }
        return redeliver_logged(state, log, target, client, event_id).await;
    }
    let seq = state
        .store
        .seq_of(client, event_id)
        .map_err(store_error)?
        .ok_or_else(missing)?;
    let event = state
        .store
        .event(seq)
        .map_err(store_error)?
        .ok_or_else(missing)?;
    takes(target, &event.body).map_err(|m| ApiError::new(StatusCode::CONFLICT, "not_taken", m))?;
    if too_old(target, event.received_unix_ms) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_old",
            format!(
                "the event was accepted at {}, longer ago than the target's retry.maxAgeSeconds ({}): it would expire at once",
                rfc3339(event.received_unix_ms),
                target.retry.max_age_seconds
            ),
        ));
    }
    if state.dispatcher.replay_room() == 0 {
        return Err(backlog_full());
    }
    let row = target.id().to_string();
    let added = state
        .store
        .add_deliveries(&row, vec![seq])
        .await
        .map_err(store_error)?;
    state.dispatcher.requeued(&row, &[seq]);
    tracing::info!(kind = target.key.kind.label(), namespace = %target.key.namespace, name = %target.key.name, event = %event_id, added, "event queued again");
    Ok(added)
}

/// [`redeliver_event`] when replicas share the log: the event (from this replica's store if it
/// took it, else from the stream, as far back as the target's retry.maxAgeSeconds) goes back
/// into the log as a replay record, which the owner of the vehicle's partition delivers, in
/// order with the vehicle's other events. Always 1: whether the event is still pending there
/// is the owner's to know (it does not queue it twice).
async fn redeliver_logged(
    state: &ManageState,
    log: &JetStreamLog,
    target: &Target,
    client: &str,
    event_id: &str,
) -> Result<u64, ApiError> {
    let now = now_ms();
    let max_age_ms = u64::from(target.retry.max_age_seconds) * 1000;
    let event = match local_event(&state.store, client, event_id).map_err(store_error)? {
        Some(e) => e,
        None => log
            .scan(client, now.saturating_sub(max_age_ms), now, 0, |e| {
                e.event.id == event_id
            })
            .await
            .map_err(log_error)?
            .pop()
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no event {event_id:?} of client {client:?} in the log within the target's retry.maxAgeSeconds ({} s; an older one would expire at once)",
                    target.retry.max_age_seconds
                ))
            })?,
    };
    takes(target, &event.event.body)
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "not_taken", m))?;
    let accepted = event.replay_of.unwrap_or(event.event.received_unix_ms);
    if too_old(target, accepted) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_old",
            format!(
                "the event was accepted at {}, longer ago than the target's retry.maxAgeSeconds ({}): it would expire at once",
                rfc3339(accepted),
                target.retry.max_age_seconds
            ),
        ));
    }
    let record = ReplayRecord {
        msg_id: format!(
            "replay/{}/{:016x}/{}",
            target.uid,
            rand::random::<u64>(),
            dedupe_key(client, event_id)
        ),
        event,
        target: target.id().to_string(),
    };
    log.replay(vec![record]).await.map_err(log_error)?;
    tracing::info!(kind = target.key.kind.label(), namespace = %target.key.namespace, name = %target.key.name, event = %event_id, "event queued again through the log");
    Ok(1)
}

/// `client`'s event `event_id` as this replica's store holds it, in the log's terms.
fn local_event(
    store: &crate::store::Store,
    client: &str,
    event_id: &str,
) -> Result<Option<crate::store::jetstream::LoggedEvent>, StoreError> {
    let Some(seq) = store.seq_of(client, event_id)? else {
        return Ok(None);
    };
    let Some(event) = store.event(seq)? else {
        return Ok(None);
    };
    let Ok(head) = serde_json::from_slice::<Head>(&event.body) else {
        return Ok(None);
    };
    Ok(Some(crate::store::jetstream::LoggedEvent {
        event,
        client: client.to_owned(),
        event_type: head.type_.as_str().to_owned(),
        targets: Vec::new(),
        partition: 0,
        replay_of: None,
    }))
}

/// [`replay_window`] when replicas share the log: the window is read from the stream (every
/// replica's events, not only those this one took) and each event the target takes goes back
/// into the log as a replay record for its partition's owner. Records of one request share
/// its id ([`Window::request`]), so replicas carrying out one `spec.replay` together store
/// each once; `queued` counts them either way.
pub async fn replay_logged(
    log: &JetStreamLog,
    dispatcher: &crate::delivery::dispatcher::Dispatcher,
    target: &Target,
    window: &Window,
) -> Result<Replayed, crate::store::jetstream::JetStreamError> {
    let types: Vec<&str> = window.types.iter().map(|t| t.as_str()).collect();
    let mut events = log
        .scan(
            &target.selector.client_id,
            window.since_ms,
            window.until_ms,
            MAX_REPLAY,
            |e| {
                (types.is_empty() || types.contains(&e.event_type.as_str()))
                    && takes(target, &e.event.body).is_ok()
            },
        )
        .await?;
    let mut out = Replayed::default();
    if events.len() > MAX_REPLAY {
        out.truncated = true;
        out.stopped_at = events.pop().map(|e| rfc3339(e.event.received_unix_ms));
    }
    out.matched = events.len() as u64;
    let request = window
        .request
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let row = target.id().to_string();
    // The same half of the backlog bound as on one replica; the room is this replica's (each
    // owner's reader also stops taking from the log while its own backlog is full).
    let room = usize::try_from(dispatcher.replay_room()).unwrap_or(usize::MAX);
    let mut records = Vec::with_capacity(events.len());
    for e in events {
        if too_old(target, e.event.received_unix_ms) {
            out.too_old += 1;
            continue;
        }
        if records.len() == room {
            out.truncated = true;
            out.backlog_full = true;
            out.stopped_at = Some(rfc3339(e.event.received_unix_ms));
            break;
        }
        records.push(ReplayRecord {
            msg_id: format!(
                "replay/{}/{request}/{}",
                target.uid,
                dedupe_key(&e.client, &e.event.id)
            ),
            event: e,
            target: row.clone(),
        });
    }
    out.queued = log.replay(records).await?.len() as u64;
    tracing::info!(kind = target.key.kind.label(), namespace = %target.key.namespace, name = %target.key.name, queued = out.queued, matched = out.matched, "window replayed through the log");
    Ok(out)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayRequest {
    since: String,
    #[serde(default)]
    until: Option<String>,
    #[serde(default)]
    types: Option<Vec<String>>,
}

/// A window of stored events to queue again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Accepted at or after (unix ms).
    pub since_ms: u64,
    /// Accepted at or before (unix ms).
    pub until_ms: u64,
    /// Only these types (and only those the target takes); empty: every type it takes.
    pub types: Vec<EventType>,
    /// Names the request when replicas share the log (`spec.replay`'s id): replicas carrying
    /// out the same one queue each event once. `None`: a request of its own.
    pub request: Option<String>,
}

/// What a replay queued.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    /// Deliveries added (events already pending for the target are not added twice).
    pub queued: u64,
    /// Events of the window the target takes now.
    pub matched: u64,
    /// Of those, events past the target's retry.maxAgeSeconds, not queued (they would expire).
    pub too_old: u64,
    /// [`MAX_REPLAY`] was reached: events accepted after `until` were not looked at.
    pub truncated: bool,
    /// The backlog had no room for the whole window (replays may fill at most half of
    /// `--max-pending-deliveries`): `truncated`, and `stoppedAt` is where to replay on from.
    pub backlog_full: bool,
    /// When the last event looked at was accepted, when `truncated` (replay on from there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<String>,
}

/// Queues again every stored event of `target`'s client accepted in `window` that the
/// target takes now, oldest first (the store's order, so each vehicle's order is kept).
pub async fn replay_window(
    store: &crate::store::Store,
    dispatcher: &Arc<crate::delivery::dispatcher::Dispatcher>,
    target: &Target,
    window: &Window,
) -> Result<Replayed, StoreError> {
    let mut out = Replayed::default();
    let mut seqs = Vec::new();
    // When each of `seqs` was accepted, to say where a cut-short replay stopped.
    let mut accepted = Vec::new();
    let mut query = FeedQuery {
        client: target.selector.client_id.clone(),
        after: None,
        types: window.types.iter().map(|t| t.as_str().to_owned()).collect(),
        limit: 1000,
        max_bytes: 8 << 20,
        max_scan: 20_000,
    };
    'pages: loop {
        let page = store.feed(&query)?;
        for e in &page.events {
            let Some(stored) = store.event(e.seq)? else {
                continue;
            };
            if stored.received_unix_ms < window.since_ms {
                continue;
            }
            // Seqs are handed out in the order events are accepted: nothing later is older.
            if stored.received_unix_ms > window.until_ms {
                break 'pages;
            }
            if takes(target, &stored.body).is_err() {
                continue;
            }
            out.matched += 1;
            if too_old(target, stored.received_unix_ms) {
                out.too_old += 1;
                continue;
            }
            if seqs.len() == MAX_REPLAY {
                out.truncated = true;
                out.stopped_at = Some(rfc3339(stored.received_unix_ms));
                out.matched -= 1;
                break 'pages;
            }
            seqs.push(e.seq);
            accepted.push(stored.received_unix_ms);
        }
        if !page.more {
            break;
        }
        query.after = Some(page.next);
    }
    let room = usize::try_from(dispatcher.replay_room()).unwrap_or(usize::MAX);
    if seqs.len() > room {
        out.truncated = true;
        out.backlog_full = true;
        out.stopped_at = accepted.get(room).map(|ms| rfc3339(*ms));
        seqs.truncate(room);
    }
    let row = target.id().to_string();
    for chunk in seqs.chunks(10_000) {
        out.queued += store.add_deliveries(&row, chunk.to_vec()).await?;
        dispatcher.requeued(&row, chunk);
    }
    tracing::info!(kind = target.key.kind.label(), namespace = %target.key.namespace, name = %target.key.name, queued = out.queued, matched = out.matched, "window replayed");
    Ok(out)
}

/// What the reconcilers use for `spec.replay`.
pub struct ReplayDeliveries {
    pub store: crate::store::Store,
    pub dispatcher: Arc<crate::delivery::dispatcher::Dispatcher>,
    /// Replicas share this log (`--store nats://…`): replays go through it.
    pub log: Option<JetStreamLog>,
}

impl crate::controller::replay::Replay for ReplayDeliveries {
    fn replay(
        &self,
        target: Arc<Target>,
        window: Window,
    ) -> futures::future::BoxFuture<'static, Result<Replayed, String>> {
        let (store, dispatcher, log) = (
            self.store.clone(),
            self.dispatcher.clone(),
            self.log.clone(),
        );
        Box::pin(async move {
            match log {
                Some(log) => replay_logged(&log, &dispatcher, &target, &window)
                    .await
                    .map_err(|e| e.to_string()),
                None => replay_window(&store, &dispatcher, &target, &window)
                    .await
                    .map_err(|e| e.to_string()),
            }
        })
    }
}

/// Every stored event of a window that the target takes now, again, oldest first (at most 100,000).
#[utoipa::path(
    post, path = "/v1/targets/{kind}/{ns}/{name}/replay", tag = "management",
    params(("kind" = String, Path, description = "webhooksubscription, ftpconnection or apiconnection (whs, ftpc, apic)", example = "whs"), ("ns" = String, Path, description = "Namespace", example = "dealer-1"), ("name" = String, Path, description = "Name", example = "crm")),
    request_body(content = ReplayRequest, example = json!({"since": "2026-12-01T08:00:00Z", "until": "2026-12-01T12:00:00Z", "types": ["vehicle.processed"]})),
    responses(
        (status = 202, description = "Queued", body = Object, example = json!({"queued": 4, "matched": 4, "tooOld": 0, "truncated": false, "backlogFull": false, "from": "2026-12-01T08:00:00Z", "until": "2026-12-01T12:00:00Z", "limit": 100000, "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "5b1c…", "client": "dealer-1"}})),
        (status = 400, description = "`invalid_request`: `field` names the bad one", body = crate::ingest::ErrorBody),
        (status = 404, description = "No such target, or not the caller's", body = crate::ingest::ErrorBody),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 429, description = "`backlog_full`: replays and redeliveries have filled their half of `--max-pending-deliveries`", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(state): State<ManageState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (_, target, req) = request::<ReplayRequest>(&state, path, &headers, &bytes)?;
    let since_ms = parse_time("since", &req.since)?;
    let until_ms = match &req.until {
        Some(u) => parse_time("until", u)?,
        None => now_ms(),
    };
    if until_ms < since_ms {
        return Err(ApiError::invalid("until", "until is before since"));
    }
    let types = req
        .types
        .unwrap_or_default()
        .iter()
        .map(|t| {
            t.parse::<EventType>()
                .map_err(|_| ApiError::invalid("types", format!("{t:?} is not an event type")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let window = Window {
        since_ms,
        until_ms,
        types,
        request: None,
    };
    let done = match &state.log {
        Some(log) => replay_logged(log, &state.dispatcher, &target, &window)
            .await
            .map_err(log_error)?,
        None => replay_window(&state.store, &state.dispatcher, &target, &window)
            .await
            .map_err(store_error)?,
    };
    if done.backlog_full && done.queued == 0 {
        return Err(backlog_full());
    }
    let mut answer = serde_json::to_value(&done).unwrap_or_default();
    if let Some(m) = answer.as_object_mut() {
        m.insert("from".into(), rfc3339(since_ms).into());
        m.insert("until".into(), rfc3339(until_ms).into());
        m.insert("limit".into(), MAX_REPLAY.into());
        m.insert("target".into(), target_json(&target));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestRequest {
    #[serde(default, rename = "type")]
    type_: Option<String>,
    /// An event of the caller's own (its `clientId` is set to the target's).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
}

/// The event a test send delivers: the built-in sample of `type_` (or the caller's
/// `event`), as the target's client, with a fresh id.
fn test_event(target: &Target, req: TestRequest) -> Result<(String, Value), ApiError> {
    let type_ = match &req.type_ {
        Some(t) => t
            .parse::<EventType>()
            .map_err(|_| ApiError::invalid("type", format!("{t:?} is not an event type")))?,
        None => EventType::VehicleProcessed,
    };
    // A sample's own id would be the same for every test: each test gets a fresh one.
    let own = req.event.is_some();
    let mut event = match req.event {
        Some(Value::Object(m)) => Value::Object(m),
        Some(_) => return Err(ApiError::invalid("event", "must be a JSON object")),
        None => crate::mapping::samples::sample(type_)
            .cloned()
            .ok_or_else(|| ApiError::invalid("type", format!("no sample of {type_}")))?,
    };
    let id = format!("evt_test_{:016x}", rand::random::<u64>());
    let m = event
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid("event", "must be a JSON object"))?;
    if req.type_.is_some() || !m.contains_key("type") {
        m.insert("type".into(), type_.as_str().into());
    }
    if !own
        || m.get("id")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        m.insert("id".into(), id.into());
    }
    m.insert("clientId".into(), target.selector.client_id.clone().into());
    m.insert("timestamp".into(), Timestamp::now().to_string().into());
    // A target of chosen users takes only their events.
    if let Some(user) = target.selector.user_ids.as_ref().and_then(|u| u.first()) {
        m.insert("userId".into(), user.clone().into());
    }
    let id = m
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((id, event))
}

/// The answer of a test send, from the attempt.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TestAnswer {
    /// `delivered`, `skipped` (nothing to do for this event), `failed` or `gone` (410).
    result: &'static str,
    /// Whether the dispatcher would have tried again.
    retryable: bool,
    http_status: Option<u16>,
    /// An FTP server's last reply, for an upload that failed.
    ftp_reply: Option<crate::store::FtpReply>,
    duration_ms: Option<u64>,
    reason: Option<String>,
    message: Option<String>,
    /// The start of the receiver's answer (at most 512 bytes), when there is one.
    response: Option<String>,
    event_id: String,
    event: Value,
}

fn answer_of((attempt, answer): (Attempt, Answer), event_id: String, event: Value) -> TestAnswer {
    let duration_ms = attempt
        .elapsed()
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut a = TestAnswer {
        result: "failed",
        retryable: false,
        http_status: answer.http_status,
        ftp_reply: answer.ftp_reply,
        duration_ms,
        reason: None,
        message: None,
        response: answer.response,
        event_id,
        event,
    };
    match attempt {
        Attempt::Done {
            outcome, skipped, ..
        } => {
            a.result = if skipped { "skipped" } else { "delivered" };
            if let Outcome::Delivered {
                status: Some(status),
            } = outcome
            {
                a.http_status = Some(status);
            }
        }
        Attempt::Retry { why, .. } => {
            a.retryable = true;
            a.reason = Some(why.reason);
            a.message = Some(crate::status::redact(&why.message));
        }
        Attempt::Fail { why, .. } => {
            a.reason = Some(why.reason);
            a.message = Some(crate::status::redact(&why.message));
        }
        Attempt::Gone { .. } => {
            a.result = "gone";
            a.http_status = Some(410);
            a.reason = Some("ReceiverGone".into());
        }
    }
    a.response = a.response.map(|r| snippet(&r));
    a
}

/// At most [`SNIPPET`] bytes of `s`, cut at a character boundary.
fn snippet(s: &str) -> String {
    let mut end = s.len().min(SNIPPET);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// A sample event delivered now through the target's sender; not queued, stored or counted.
#[utoipa::path(
    post, path = "/v1/targets/{kind}/{ns}/{name}/test", tag = "management",
    params(("kind" = String, Path, description = "webhooksubscription, ftpconnection or apiconnection (whs, ftpc, apic)", example = "whs"), ("ns" = String, Path, description = "Namespace", example = "dealer-1"), ("name" = String, Path, description = "Name", example = "crm")),
    request_body(content = TestRequest, example = json!({"type": "vehicle.processed"})),
    responses(
        (status = 200, description = "What happened", body = Object, example = json!({"result": "delivered", "retryable": false, "httpStatus": 200, "ftpReply": null, "durationMs": 38, "reason": null, "message": null, "response": "{\"ok\":true}", "eventId": "evt_test_5f0c2a9e1b7d4c3a", "event": {"id": "evt_test_5f0c2a9e1b7d4c3a", "type": "vehicle.processed", "clientId": "dealer-1"}})),
        (status = 400, description = "`invalid_request`: `type` or `event`", body = crate::ingest::ErrorBody),
        (status = 404, description = "No such target, or not the caller's", body = crate::ingest::ErrorBody),
        (status = 409, description = "`not_configured`: the target has no usable configuration", body = crate::ingest::ErrorBody),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn test_send(
    State(state): State<ManageState>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let (_, target, req) = request::<TestRequest>(&state, path, &headers, &bytes)?;
    // Held targets (suspended, 410) are tested too: it is an explicit request. One with no
    // usable configuration has nothing to send with.
    let Some(config) = &target.config else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_configured",
            format!(
                "the target has no usable configuration ({}); see its Ready condition",
                target.held.as_deref().unwrap_or("not ready")
            ),
        ));
    };
    let (event_id, event) = test_event(&target, req)?;
    let body = serde_json::to_vec(&event).unwrap_or_default();
    let lane = event
        .pointer("/data/vehicle/id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("test-{event_id}"), str::to_owned);
    // Its own rows: whatever an attempt keeps (an API chain's progress and captured values)
    // never touches the target's real ones, and is removed after.
    let row = format!("{}/test", target.id());
    let delivery = Delivery {
        row: &row,
        seq: 0,
        lane: &lane,
        event_id: &event_id,
        body: &body,
        uploaded: &[],
    };
    let attempt = tokio::time::timeout(
        TEST_DEADLINE,
        state.dispatcher.senders().attempt(config, delivery),
    )
    .await
    .unwrap_or_else(|_| {
        let attempt = Attempt::Retry {
            why: crate::store::Why::new(
                "Timeout",
                format!("no result within {} s", TEST_DEADLINE.as_secs()),
            ),
            retry_after: None,
            elapsed: Some(TEST_DEADLINE),
        };
        (attempt, Answer::default())
    });
    if matches!(target.key.kind, Kind::Api) {
        for key in [
            crate::store::chain_progress_key(0),
            format!("remote/{lane}"),
        ] {
            let _ = state.store.set_state(&row, &key, None, false).await;
        }
    }
    tracing::info!(kind = target.key.kind.label(), namespace = %target.key.namespace, name = %target.key.name, event = %event_id, "test event sent");
    Ok(axum::Json(answer_of(attempt, event_id, event)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_full_and_short_name() {
        for (k, want) in [
            ("webhooksubscription", Kind::Webhook),
            ("whs", Kind::Webhook),
            ("FtpConnection", Kind::Ftp),
            ("apic", Kind::Api),
        ] {
            assert_eq!(target_key(k, "ns".into(), "n".into()).unwrap().kind, want);
        }
        let e = target_key("secret", "ns".into(), "n".into()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
    }

    #[test]
    fn snippets_cut_at_a_character() {
        let s = "é".repeat(400);
        let cut = snippet(&s);
        assert!(cut.len() <= SNIPPET && cut.len() >= SNIPPET - 1);
        assert!(s.starts_with(&cut));
    }
}
