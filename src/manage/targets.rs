//! `GET /v1/targets` and `GET /v1/targets/{kind}/{ns}/{name}`: the caller's delivery targets
//! with their health — the resource's conditions (read from the Kubernetes API) and the
//! store's counters. A target the caller may not see is a 404, as one that does not exist.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::{Json, Router};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, Caller, ManageState};
use crate::api::{ApiConnection, FtpConnection, WebhookSubscription};
use crate::routing::{Kind, Target, TargetConfig, TargetKey};
use crate::store::TargetCounters;

/// The label the self-service API puts on the resources it writes.
pub const SELF_SERVICE_LABEL: &str = "connect.vehicles.io/self-service";

pub fn routes() -> Router<ManageState> {
    Router::new()
        .route("/v1/targets", get(list))
        .route("/v1/targets/{kind}/{namespace}/{name}", get(one))
}

/// A `{kind}` path segment: the long kind name or its short name.
pub fn parse_kind(s: &str) -> Option<Kind> {
    match s {
        "webhooksubscription" | "whs" => Some(Kind::Webhook),
        "ftpconnection" | "ftpc" => Some(Kind::Ftp),
        "apiconnection" | "apic" => Some(Kind::Api),
        _ => None,
    }
}

/// The registered target `kind/ns/name`, if the caller may see it; 404 otherwise.
pub fn visible_target(
    state: &ManageState,
    caller: &Caller,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<std::sync::Arc<Target>, ApiError> {
    let not_found = || ApiError::not_found(format!("no target {kind}/{namespace}/{name}"));
    let kind = parse_kind(kind).ok_or_else(not_found)?;
    let key = TargetKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    };
    state
        .registry
        .get(&key)
        .filter(|t| caller.may_see(&t.selector.client_id))
        .ok_or_else(not_found)
}

/// One target as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetView {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub client: String,
    /// `None`: every user of the client.
    pub users: Option<Vec<String>>,
    pub events: Vec<String>,
    /// Where it delivers: the webhook URL (without credentials), `ftp://host:port`, the API's
    /// base URL.
    pub endpoint: Option<String>,
    /// Written by the self-service API (the resource carries [`SELF_SERVICE_LABEL`]).
    pub self_service: bool,
    /// Why events wait instead of being delivered (e.g. `Suspended`), if they do.
    pub held: Option<String>,
    pub conditions: Vec<ConditionView>,
    pub counters: CountersView,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountersView {
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    pub pending: u64,
    pub consecutive_failures: u32,
    pub last_delivery: Option<LastDeliveryView>,
    pub last_failure: Option<LastFailureView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastDeliveryView {
    pub event_id: String,
    pub at: String,
    pub http_status: Option<u16>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastFailureView {
    pub event_id: String,
    pub at: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetList {
    pub targets: Vec<TargetView>,
}

fn rfc3339_ms(ms: u64) -> String {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

impl From<TargetCounters> for CountersView {
    fn from(c: TargetCounters) -> Self {
        CountersView {
            delivered: c.delivered,
            failed: c.failed,
            dropped: c.dropped,
            pending: c.pending,
            consecutive_failures: c.consecutive_failures,
            last_delivery: c
                .last_delivery
                .map(|(event_id, ms, http_status)| LastDeliveryView {
                    event_id,
                    at: rfc3339_ms(ms),
                    http_status,
                }),
            last_failure: c.last_failure.map(|f| LastFailureView {
                event_id: f.event_id,
                at: rfc3339_ms(f.at_unix_ms),
                reason: f.why.reason,
                message: f.why.message,
            }),
        }
    }
}

fn condition_view(c: &Condition) -> ConditionView {
    ConditionView {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: c.last_transition_time.0.to_string(),
    }
}

/// What the resource itself says: its conditions and whether self-service wrote it.
#[derive(Default)]
struct ResourceFacts {
    conditions: Vec<ConditionView>,
    self_service: bool,
}

fn facts_of(meta: &kube::api::ObjectMeta, conditions: Option<&[Condition]>) -> ResourceFacts {
    ResourceFacts {
        conditions: conditions
            .unwrap_or_default()
            .iter()
            .map(condition_view)
            .collect(),
        self_service: meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SELF_SERVICE_LABEL))
            .is_some_and(|v| v == "true"),
    }
}

type FactsByKey = BTreeMap<(String, String), ResourceFacts>;

/// The conditions and labels of every `K` in `namespaces` (one list per namespace: the
/// operator may be allowed no cluster-wide list).
async fn facts_of_kind<K>(
    client: &kube::Client,
    namespaces: &[&str],
    conditions: fn(&K) -> Option<&[Condition]>,
) -> Result<FactsByKey, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let mut out = FactsByKey::new();
    for ns in namespaces {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        for o in api.list(&ListParams::default()).await? {
            let f = facts_of(o.meta(), conditions(&o));
            let name = o.meta().name.clone().unwrap_or_default();
            out.insert((ns.to_string(), name), f);
        }
    }
    Ok(out)
}

async fn resource_facts(
    client: &kube::Client,
    kind: Kind,
    namespaces: &[&str],
) -> Result<FactsByKey, kube::Error> {
    match kind {
        Kind::Webhook => {
            facts_of_kind::<WebhookSubscription>(client, namespaces, |o| {
                o.status.as_ref().map(|s| s.conditions.as_slice())
            })
            .await
        }
        Kind::Ftp => {
            facts_of_kind::<FtpConnection>(client, namespaces, |o| {
                o.status.as_ref().map(|s| s.conditions.as_slice())
            })
            .await
        }
        Kind::Api => {
            facts_of_kind::<ApiConnection>(client, namespaces, |o| {
                o.status.as_ref().map(|s| s.conditions.as_slice())
            })
            .await
        }
    }
}

fn endpoint_of(t: &Target) -> Option<String> {
    match t.config.as_ref()? {
        TargetConfig::Webhook(w) => {
            let mut url = w.url.clone();
            // Credentials in a URL are Basic auth: never shown.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            Some(url.to_string())
        }
        TargetConfig::Ftp(f) => Some(format!(
            "{}://{}:{}",
            f.endpoint.protocol.as_str(),
            f.endpoint.host,
            f.endpoint.port
        )),
        TargetConfig::Api(a) => Some(a.endpoint.base_url.to_string()),
    }
}

fn view(state: &ManageState, t: &Target, facts: Option<ResourceFacts>) -> TargetView {
    let facts = facts.unwrap_or_default();
    let counters = state
        .store
        .counters(&t.id().to_string())
        .unwrap_or_else(|e| {
            tracing::warn!(target = %t.key, error = %e, "could not read counters");
            TargetCounters::default()
        });
    TargetView {
        kind: t.key.kind.as_str(),
        namespace: t.key.namespace.clone(),
        name: t.key.name.clone(),
        client: t.selector.client_id.clone(),
        users: t
            .selector
            .user_ids
            .as_ref()
            .map(|u| u.iter().cloned().collect()),
        events: t
            .selector
            .events
            .iter()
            .map(|e| e.as_str().to_string())
            .collect(),
        endpoint: endpoint_of(t),
        self_service: facts.self_service,
        held: t.held.clone(),
        conditions: facts.conditions,
        counters: counters.into(),
    }
}

fn kube_unavailable(e: kube::Error) -> ApiError {
    tracing::warn!(error = %e, "could not read resources for /v1/targets");
    ApiError::unavailable(format!(
        "cannot read the resources from the Kubernetes API: {e}"
    ))
}

/// Every registered target the caller may see, in key order.
pub fn visible_targets(state: &ManageState, caller: &Caller) -> Vec<std::sync::Arc<Target>> {
    state
        .registry
        .keys()
        .into_iter()
        .filter_map(|k| state.registry.get(&k))
        .filter(|t| caller.may_see(&t.selector.client_id))
        .collect()
}

/// The caller's targets with their health.
#[utoipa::path(
    get, path = "/v1/targets", tag = "management", operation_id = "list_targets",
    responses(
        (status = 200, description = "Every target the caller may see (the platform token: all), in kind/namespace/name order", body = TargetList,
            example = json!({"targets": [{"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "client": "dealer-1",
                "users": null, "events": ["vehicle.processed"], "endpoint": "https://crm.example.com/hooks", "selfService": true, "held": null,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "delivering to https://crm.example.com/hooks", "lastTransitionTime": "2026-12-03T10:00:00Z"}],
                "counters": {"delivered": 41, "failed": 1, "dropped": 0, "pending": 0, "consecutiveFailures": 0,
                    "lastDelivery": {"eventId": "evt-9", "at": "2026-12-03T10:15:02.114Z", "httpStatus": 200},
                    "lastFailure": {"eventId": "evt-7", "at": "2026-12-03T09:01:00Z", "reason": "HttpStatus", "message": "HTTP 503 Service Unavailable"}}}]})),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 503, description = "`unavailable`: the Kubernetes API cannot be read now", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<ManageState>,
    headers: HeaderMap,
) -> Result<Json<TargetList>, ApiError> {
    let caller = state.caller(&headers)?;
    let targets = visible_targets(&state, &caller);
    let mut facts = BTreeMap::new();
    for kind in Kind::ALL {
        let mut nss: Vec<&str> = targets
            .iter()
            .filter(|t| t.key.kind == kind)
            .map(|t| t.key.namespace.as_str())
            .collect();
        nss.dedup();
        if nss.is_empty() {
            continue;
        }
        let by_name = resource_facts(&state.client, kind, &nss)
            .await
            .map_err(kube_unavailable)?;
        facts.insert(kind, by_name);
    }
    let targets = targets
        .iter()
        .map(|t| {
            let f = facts
                .get_mut(&t.key.kind)
                .and_then(|m| m.remove(&(t.key.namespace.clone(), t.key.name.clone())));
            view(&state, t, f)
        })
        .collect();
    Ok(Json(TargetList { targets }))
}

/// One target with its health.
#[utoipa::path(
    get, path = "/v1/targets/{kind}/{namespace}/{name}", tag = "management", operation_id = "get_target",
    params(
        ("kind" = String, Path, description = "`webhooksubscription`, `ftpconnection`, `apiconnection` (or `whs`, `ftpc`, `apic`)", example = "whs"),
        ("namespace" = String, Path, example = "dealer-1"),
        ("name" = String, Path, example = "crm"),
    ),
    responses(
        (status = 200, description = "The target", body = TargetView),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
        (status = 404, description = "No such target, or not one the caller may see", body = crate::ingest::ErrorBody,
            example = json!({"error": "not_found", "message": "no target whs/dealer-2/crm"})),
        (status = 503, description = "`unavailable`: the Kubernetes API cannot be read now", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn one(
    State(state): State<ManageState>,
    headers: HeaderMap,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<TargetView>, ApiError> {
    let caller = state.caller(&headers)?;
    let target = visible_target(&state, &caller, &kind, &namespace, &name)?;
    let mut facts = resource_facts(&state.client, target.key.kind, &[namespace.as_str()])
        .await
        .map_err(kube_unavailable)?;
    let f = facts.remove(&(namespace, name));
    Ok(Json(view(&state, &target, f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_long_and_short_name() {
        for (s, k) in [
            ("webhooksubscription", Kind::Webhook),
            ("whs", Kind::Webhook),
            ("ftpconnection", Kind::Ftp),
            ("ftpc", Kind::Ftp),
            ("apiconnection", Kind::Api),
            ("apic", Kind::Api),
        ] {
            assert_eq!(parse_kind(s), Some(k), "{s}");
        }
        assert_eq!(parse_kind("WebhookSubscription"), None);
        assert_eq!(parse_kind("secret"), None);
    }

    #[test]
    fn counters_show_times_as_rfc3339() {
        let v: CountersView = TargetCounters {
            delivered: 3,
            last_delivery: Some(("evt-1".into(), 1_795_774_530_000, Some(200))),
            ..TargetCounters::default()
        }
        .into();
        let d = v.last_delivery.expect("last delivery");
        assert_eq!(d.at, "2026-11-27T10:15:30Z");
        assert_eq!(d.http_status, Some(200));
        assert_eq!(v.delivered, 3);
    }
}
