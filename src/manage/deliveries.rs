//! The delivery log over HTTP: `GET /v1/deliveries` (filtered, paged newest first),
//! `GET /v1/deliveries/{id}` and `GET /v1/events/{id}` (one event and its attempts per
//! target). A client token sees only its clients' entries: the client filter is part of the
//! store query, so pages are neither short nor leaky, and what it may not see is a 404 like
//! what does not exist.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, Caller, ManageState};
use crate::api::EventType;
use crate::ingest::tokens::Grant;
use crate::store::{
    AttemptCursor, AttemptEntry, AttemptPage, AttemptQuery, EntryTarget, LogResult, Store,
    StoreError, rfc3339,
};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 500;

pub fn routes() -> Router<ManageState> {
    Router::new()
        .route("/v1/deliveries", get(list))
        .route("/v1/deliveries/{id}", get(one))
        .route("/v1/events/{id}", get(event))
}

/// Query of `GET /v1/deliveries`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `{kind}/{namespace}/{name}`; kind `webhooksubscription`, `ftpconnection`,
    /// `apiconnection` (or `whs`, `ftpc`, `apic`).
    #[param(example = "whs/dealer-1/crm")]
    pub target: Option<String>,
    /// One result: `delivered`, `skipped`, `retry`, `failed`, `gone`, `dropped`, `expired`;
    /// `failed` selects `retry`, `failed`, `gone` and `expired`.
    #[param(example = "failed")]
    pub status: Option<String>,
    /// The vehicle: its id or its VIN.
    #[param(example = "veh-42")]
    pub vehicle: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "vehicle.processed")]
    pub type_: Option<String>,
    /// The event id.
    #[param(example = "evt-1")]
    pub event: Option<String>,
    /// The client.
    #[param(example = "dealer-1")]
    pub client: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[param(example = "2026-12-03T00:00:00Z")]
    pub since: Option<String>,
    /// Entries before this time (RFC 3339).
    #[param(example = "2026-12-04T00:00:00Z")]
    pub until: Option<String>,
    /// The previous page's `next`.
    #[param(example = "AQAAAAAAAEe2")]
    pub cursor: Option<String>,
    /// Entries per page, 1-500 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500, example = 100)]
    pub limit: Option<String>,
}

/// One page of the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveriesPage {
    /// Newest first.
    pub entries: Vec<AttemptEntry>,
    /// Pass as `cursor` for the next page; `null` at the end. Opaque.
    pub next: Option<String>,
}

/// Query of `GET /v1/events/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// The event's client; required unless the token sees exactly one client.
    #[param(example = "dealer-1")]
    pub client: Option<String>,
}

/// One event and what became of it at each target.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "evt-1",
    "client": "dealer-1",
    "accepted": "2026-12-03T10:15:01.870Z",
    "event": {"id": "evt-1", "type": "vehicle.processed", "timestamp": "2026-12-03T10:15:01Z",
              "clientId": "dealer-1", "data": {"vehicle": {"id": "veh-42"}}},
    "targets": [{
        "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "6f1c2e0a-8d4b-4f7e-9a51-3c2b1d0e9f87"},
        "pending": false,
        "attempts": [{
            "id": "18342", "at": "2026-12-03T10:15:02.114Z",
            "event": {"id": "evt-1", "type": "vehicle.processed", "client": "dealer-1", "vehicle": "veh-42"},
            "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "6f1c2e0a-8d4b-4f7e-9a51-3c2b1d0e9f87"},
            "attempt": 1, "result": "delivered", "durationMs": 38, "httpStatus": 200,
            "ftpReply": null, "reason": null, "message": null, "response": "{\"ok\":true}"
        }]
    }]
}))]
pub struct EventView {
    pub id: String,
    pub client: String,
    /// When the operator accepted it.
    pub accepted: String,
    /// The event as accepted.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
    /// Every target that attempted it or still has it pending.
    pub targets: Vec<TargetAttempts>,
}

/// One target's attempts of an event.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetAttempts {
    pub target: EntryTarget,
    /// The delivery is still pending at this target.
    pub pending: bool,
    /// Oldest first.
    pub attempts: Vec<AttemptEntry>,
}

/// The delivery log, newest first.
#[utoipa::path(
    get, path = "/v1/deliveries", tag = "management",
    params(ListParams),
    responses(
        (status = 200, description = "One page of the log (only the caller's clients' entries)", body = DeliveriesPage),
        (status = 400, description = "`invalid_request`: `field` names the bad parameter", body = crate::ingest::ErrorBody,
            example = json!({"error": "invalid_request", "message": "one of delivered, skipped, retry, failed, gone, dropped, expired", "field": "status"})),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 503, description = "`unavailable`: the store cannot be read now", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(st): State<ManageState>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    if let Some(replicas) = &st.replicas {
        let (entries, next) = replicas.list(&caller, p).await?;
        return Ok(Json(serde_json::json!({ "entries": entries, "next": next })).into_response());
    }
    let q = parse_list(&caller, p)?;
    let store = st.store.clone();
    let page: AttemptPage = blocking(move || match q {
        Some(q) => store.attempts(&q),
        // A client the caller may not see: nothing, as for a client with no entries.
        None => Ok(AttemptPage {
            entries: Vec::new(),
            next: None,
        }),
    })
    .await?;
    Ok(Json(DeliveriesPage {
        entries: page.entries,
        next: page.next.map(AttemptCursor::encode),
    })
    .into_response())
}

/// One entry of the delivery log.
#[utoipa::path(
    get, path = "/v1/deliveries/{id}", tag = "management",
    params(("id" = String, Path, description = "The entry's id", example = "18342")),
    responses(
        (status = 200, description = "The entry", body = AttemptEntry),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 404, description = "No such entry, or not one of the caller's clients", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn one(
    State(st): State<ManageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let missing = || ApiError::not_found(format!("no delivery log entry {id:?}"));
    if let Some(replicas) = &st.replicas {
        return match replicas.entry(&id).await? {
            Some(e) if caller.may_see(e["event"]["client"].as_str().unwrap_or_default()) => {
                Ok(Json(e).into_response())
            }
            _ => Err(missing()),
        };
    }
    let Ok(n) = id.parse::<u64>() else {
        return Err(missing());
    };
    let store = st.store.clone();
    match blocking(move || store.attempt(n)).await? {
        Some(e) if caller.may_see(&e.event.client) => Ok(Json(e).into_response()),
        _ => Err(missing()),
    }
}

/// One event: its body, when it was accepted, and its attempts per target.
#[utoipa::path(
    get, path = "/v1/events/{id}", tag = "management",
    params(("id" = String, Path, description = "The event id", example = "evt-1"), EventParams),
    responses(
        (status = 200, description = "The event and its attempts per target", body = EventView),
        (status = 400, description = "`invalid_request` (`client`): the token sees several clients and `client` is missing", body = crate::ingest::ErrorBody),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 404, description = "No such event (or no longer kept), or not one of the caller's clients", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn event(
    State(st): State<ManageState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<EventParams>,
) -> Result<Response, ApiError> {
    let caller = st.caller(&headers)?;
    let client = match (p.client, &caller.grant) {
        (Some(c), _) => c,
        (None, Grant::Clients(set)) if set.len() == 1 => {
            set.iter().next().cloned().unwrap_or_default()
        }
        (None, _) => {
            return Err(ApiError::invalid(
                "client",
                "client is required: the token may see more than one client",
            ));
        }
    };
    let missing = || ApiError::not_found(format!("no event {id:?} of client {client:?}"));
    if !caller.may_see(&client) {
        return Err(missing());
    }
    if let Some(replicas) = &st.replicas {
        return replicas
            .event(&client, &id)
            .await?
            .map(|v| Json(v).into_response())
            .ok_or_else(missing);
    }
    let store = st.store.clone();
    let (c, i) = (client.clone(), id.clone());
    let found = blocking(move || event_view(&store, &c, &i)).await?;
    found.map(|v| Json(v).into_response()).ok_or_else(missing)
}

pub(super) fn event_view(
    store: &Store,
    client: &str,
    id: &str,
) -> Result<Option<EventView>, StoreError> {
    let Some(seq) = store.seq_of(client, id)? else {
        return Ok(None);
    };
    let Some(stored) = store.event(seq)? else {
        return Ok(None);
    };
    let mut targets: BTreeMap<String, TargetAttempts> = BTreeMap::new();
    for e in store.attempts_of_event(seq)? {
        targets
            .entry(e.target.row.clone())
            .or_insert_with(|| TargetAttempts {
                target: e.target.clone(),
                pending: false,
                attempts: Vec::new(),
            })
            .attempts
            .push(e);
    }
    for row in store.pending_targets()? {
        let pending = store
            .pending_after(&row, seq.saturating_sub(1), 1)?
            .first()
            .is_some_and(|p| p.seq == seq);
        if pending {
            targets
                .entry(row.clone())
                .or_insert_with(|| TargetAttempts {
                    target: EntryTarget::from_row(&row),
                    pending: true,
                    attempts: Vec::new(),
                })
                .pending = true;
        }
    }
    let event = serde_json::from_slice(&stored.body).unwrap_or(serde_json::Value::Null);
    Ok(Some(EventView {
        id: stored.id,
        client: client.to_owned(),
        accepted: rfc3339(stored.received_unix_ms),
        event,
        targets: targets.into_values().collect(),
    }))
}

/// The store query of a list request; `None` when it can match nothing the caller may see.
pub(super) fn parse_list(caller: &Caller, p: ListParams) -> Result<Option<AttemptQuery>, ApiError> {
    let target = p.target.as_deref().map(target_key).transpose()?;
    let results = match p.status.as_deref() {
        None => None,
        Some("failed") => Some(
            LogResult::ALL
                .into_iter()
                .filter(|r| r.is_failure())
                .collect(),
        ),
        Some(s) => match LogResult::ALL.into_iter().find(|r| r.as_str() == s) {
            Some(r) => Some(vec![r]),
            None => {
                return Err(ApiError::invalid(
                    "status",
                    "one of delivered, skipped, retry, failed, gone, dropped, expired",
                ));
            }
        },
    };
    if let Some(t) = &p.type_
        && t.parse::<EventType>().is_err()
    {
        let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        return Err(ApiError::invalid(
            "type",
            format!("unknown event type {t:?}; one of {}", known.join(", ")),
        ));
    }
    let since_unix_ms = p.since.as_deref().map(|s| time("since", s)).transpose()?;
    let until_unix_ms = p.until.as_deref().map(|s| time("until", s)).transpose()?;
    let before = match p.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            AttemptCursor::decode(c)
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this API"))?
                .0,
        ),
    };
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", "must be 1-500")),
        },
    };
    let clients = match (p.client, &caller.grant) {
        (Some(c), _) if !caller.may_see(&c) => return Ok(None),
        (Some(c), _) => Some(vec![c]),
        (None, Grant::AnyClient) => None,
        (None, Grant::Clients(set)) => Some(set.iter().cloned().collect()),
    };
    Ok(Some(AttemptQuery {
        target,
        results,
        vehicle: p.vehicle,
        event_type: p.type_,
        event_id: p.event,
        clients,
        since_unix_ms,
        until_unix_ms,
        before,
        limit,
    }))
}

/// `kind/namespace/name` with the kind spelled as the store keys it.
fn target_key(s: &str) -> Result<String, ApiError> {
    let bad = || {
        ApiError::invalid(
            "target",
            "must be {kind}/{namespace}/{name} with kind webhooksubscription (whs), \
             ftpconnection (ftpc) or apiconnection (apic)",
        )
    };
    let mut parts = s.split('/');
    let kind = match parts.next() {
        Some("webhooksubscription" | "whs") => "webhooksubscription",
        Some("ftpconnection" | "ftpc") => "ftpconnection",
        Some("apiconnection" | "apic") => "apiconnection",
        _ => return Err(bad()),
    };
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), None) if !ns.is_empty() && !name.is_empty() => {
            Ok(format!("{kind}/{ns}/{name}"))
        }
        _ => Err(bad()),
    }
}

fn time(field: &'static str, s: &str) -> Result<u64, ApiError> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_millisecond()).ok())
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                "must be an RFC 3339 time such as 2026-12-03T10:15:00Z",
            )
        })
}

/// Runs a store read off the async workers (a filtered list may scan many entries).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "delivery log read failed");
            Err(ApiError::unavailable(format!(
                "the store cannot be read now: {e}"
            )))
        }
        Err(e) => Err(ApiError::unavailable(format!(
            "the read did not finish: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_filters_take_short_and_long_kinds() {
        assert_eq!(
            target_key("whs/ns/crm").unwrap(),
            "webhooksubscription/ns/crm"
        );
        assert_eq!(
            target_key("apiconnection/ns/x").unwrap(),
            "apiconnection/ns/x"
        );
        for bad in ["whs/ns", "nope/ns/x", "whs//x", "whs/ns/x/y"] {
            assert_eq!(
                target_key(bad).unwrap_err().field.as_deref(),
                Some("target"),
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_parameters_name_their_field() {
        let caller = Caller {
            grant: Grant::AnyClient,
        };
        let field = |p: ListParams| parse_list(&caller, p).unwrap_err().field;
        let p = |f: fn(&mut ListParams)| {
            let mut p = ListParams::default();
            f(&mut p);
            p
        };
        assert_eq!(
            field(p(|p| p.status = Some("nah".into()))).as_deref(),
            Some("status")
        );
        assert_eq!(
            field(p(|p| p.limit = Some("501".into()))).as_deref(),
            Some("limit")
        );
        assert_eq!(
            field(p(|p| p.limit = Some("0".into()))).as_deref(),
            Some("limit")
        );
        assert_eq!(
            field(p(|p| p.since = Some("yesterday".into()))).as_deref(),
            Some("since")
        );
        assert_eq!(
            field(p(|p| p.until = Some("2026-13-01".into()))).as_deref(),
            Some("until")
        );
        assert_eq!(
            field(p(|p| p.cursor = Some("%%".into()))).as_deref(),
            Some("cursor")
        );
        assert_eq!(
            field(p(|p| p.type_ = Some("vehicle.x".into()))).as_deref(),
            Some("type")
        );
    }

    #[test]
    fn a_client_token_queries_only_its_clients() {
        let caller = Caller {
            grant: Grant::Clients(["c1".to_owned()].into()),
        };
        let q = parse_list(&caller, ListParams::default()).unwrap().unwrap();
        assert_eq!(q.clients, Some(vec!["c1".to_owned()]));
        let other = ListParams {
            client: Some("c2".into()),
            ..ListParams::default()
        };
        assert!(parse_list(&caller, other).unwrap().is_none());
    }
}
