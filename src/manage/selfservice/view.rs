//! What the self-service API answers about a resource: its spec as a client sends it, the
//! names (never the values) of its credentials, and its health from status.

use kube::api::DynamicObject;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::credentials::CredentialSet;
use super::kind::Kind;

/// One self-service resource.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "kind": "WebhookSubscription", "name": "crm", "namespace": "selfservice-dealer-1",
    "clientId": "dealer-1", "uid": "3c2d3a57-8a41-4f1e-9d0e-5b7e1c9f0a11",
    "resourceVersion": "48213", "generation": 2, "createdAt": "2026-12-03T10:15:02Z",
    "spec": { "url": "https://crm.dealer-1.example/hooks/vc", "events": ["vehicle.processed"],
              "clientId": "dealer-1", "timeoutSeconds": 15, "maxConcurrency": 8, "suspend": false },
    "credentials": ["basic", "signingSecret"],
    "health": { "ready": "True", "reason": "Ready", "message": "delivering to crm.dealer-1.example", "current": true },
    "status": { "observedGeneration": 2, "delivered": 1289, "failed": 0, "pending": 0,
                "consecutiveFailures": 0,
                "conditions": [{ "type": "Ready", "status": "True", "reason": "Ready",
                                 "message": "delivering to crm.dealer-1.example",
                                 "lastTransitionTime": "2026-12-03T10:15:04Z", "observedGeneration": 2 }] }
}))]
pub struct ResourceView {
    /// `WebhookSubscription`, `FtpConnection` or `ApiConnection`.
    pub kind: &'static str,
    pub name: String,
    /// The client's self-service namespace.
    pub namespace: String,
    #[serde(rename = "clientId")]
    pub client_id: String,
    pub uid: String,
    /// Send it back on `PUT` to refuse (409) a change made meanwhile.
    pub resource_version: String,
    pub generation: Option<i64>,
    pub created_at: Option<String>,
    /// The resource's spec as in the CRD (camelCase), without the Secret references the API
    /// manages: what `PUT` takes back as it is.
    #[schema(value_type = Object)]
    pub spec: Value,
    /// Names of the credentials set (fields of `credentials`); values are never returned.
    pub credentials: Vec<String>,
    /// The `Ready` condition, in short.
    pub health: Health,
    /// The resource's status as the operator writes it: conditions, counters, last delivery
    /// and failure. Empty until the operator first looked at it.
    #[schema(value_type = Object)]
    pub status: Value,
}

/// The `Ready` condition.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `True`, `False`, or `Unknown` (no verdict yet).
    pub ready: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Whether status describes the current spec (`observedGeneration` is `generation`).
    pub current: bool,
}

impl ResourceView {
    pub fn of(kind: Kind, client_id: &str, o: DynamicObject, keys: &CredentialSet) -> ResourceView {
        let mut spec = o.data.get("spec").cloned().unwrap_or_else(|| json!({}));
        if let Some(m) = spec.as_object_mut() {
            kind.strip_refs(m);
        }
        let status = o.data.get("status").cloned().unwrap_or_else(|| json!({}));
        let ready = status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
        let text = |c: Option<&Value>, k: &str| c.and_then(|c| c[k].as_str()).map(str::to_string);
        let generation = o.metadata.generation;
        ResourceView {
            kind: kind.kind_name(),
            name: o.metadata.name.unwrap_or_default(),
            namespace: o.metadata.namespace.unwrap_or_default(),
            client_id: client_id.to_string(),
            uid: o.metadata.uid.unwrap_or_default(),
            resource_version: o.metadata.resource_version.unwrap_or_default(),
            generation,
            created_at: o.metadata.creation_timestamp.map(|t| t.0.to_string()),
            spec,
            credentials: keys.names(),
            health: Health {
                ready: text(ready, "status").unwrap_or_else(|| "Unknown".into()),
                reason: text(ready, "reason"),
                message: text(ready, "message"),
                current: generation.is_some()
                    && status["observedGeneration"].as_i64() == generation,
            },
            status,
        }
    }
}
