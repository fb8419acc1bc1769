//! Types shared by both kinds: Secret references, retry policy, status records.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// DNS-1123 subdomain, the shape of a Secret's name.
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Shape of a Secret data key.
pub const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";
/// Shape of client and user ids: no commas or spaces, so they fit the namespace annotation.
pub const ID: &str = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$";

/// A Secret in the resource's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret (same namespace as this resource).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
}

/// One key of a Secret in the resource's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (same namespace as this resource).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: Option<String>,
}

impl SecretKeyRef {
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// One key of a ConfigMap in the resource's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// Key within its data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: Option<String>,
}

impl ConfigMapKeyRef {
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// How failed deliveries are retried: exponential backoff with full jitter, capped by
/// `maxBackoffSeconds`, until `maxAttempts` attempts were made or the event is older than
/// `maxAgeSeconds`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.initialBackoffSeconds <= self.maxBackoffSeconds").message("initialBackoffSeconds must not exceed maxBackoffSeconds").field_path(".initialBackoffSeconds"))]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 = no retries).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
    /// Backoff before the first retry; it doubles on each further retry.
    #[serde(default = "default_initial_backoff")]
    #[schemars(range(min = 1, max = 3600))]
    pub initial_backoff_seconds: u32,
    /// Upper bound of one backoff.
    #[serde(default = "default_max_backoff")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_backoff_seconds: u32,
    /// An event older than this is not retried any more.
    #[serde(default = "default_max_age")]
    #[schemars(range(min = 10, max = 604800))]
    pub max_age_seconds: u32,
}

fn default_max_attempts() -> u32 {
    8
}
fn default_initial_backoff() -> u32 {
    5
}
fn default_max_backoff() -> u32 {
    36_000
}
fn default_max_age() -> u32 {
    259_200
}

impl Default for RetryPolicy {
    /// Close to the Standard Webhooks schedule: 8 attempts over about a day, 3 days at most.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff_seconds: default_initial_backoff(),
            max_backoff_seconds: default_max_backoff(),
            max_age_seconds: default_max_age(),
        }
    }
}

/// The last successful delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    /// Id of the event delivered.
    pub event_id: String,
    /// Its type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// When it was delivered.
    pub time: Time,
    /// HTTP status the receiver answered (webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// VIN of the vehicle (FTP uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vin: Option<String>,
    /// Files written (FTP uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u32>,
}

/// The last failed delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureRecord {
    /// Id of the event that failed.
    pub event_id: String,
    /// When it failed.
    pub time: Time,
    /// Short CamelCase reason, e.g. `HttpStatus`, `Timeout`, `ConnectionRefused`.
    pub reason: String,
    /// What happened, for a human.
    pub message: String,
}

/// A replay asked for from Git or kubectl: the stored events of the window that the resource
/// takes are delivered again, once per `id` (recorded in `status.lastReplay`); a new `id`
/// replays again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Names this replay (a date, a ticket number): carried out once; change it to replay
    /// again.
    #[schemars(length(min = 1, max = 128))]
    pub id: String,
    /// Events accepted at or after this time.
    pub since: Time,
    /// Events accepted at or before this time; when left out, the time the replay is carried
    /// out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
    /// Only events of these types; when left out, every type the resource takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 11))]
    pub types: Option<Vec<super::EventType>>,
}

/// The replay last carried out (`spec.replay`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastReplay {
    /// The `spec.replay.id` carried out.
    pub id: String,
    /// The window's start.
    pub since: Time,
    /// The window's end (`spec.replay.until`, or when it was carried out).
    pub until: Time,
    /// Deliveries queued again.
    pub queued: u64,
    /// When it was carried out.
    pub at: Time,
    /// What else to know (events too old to deliver, the limit of one replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
