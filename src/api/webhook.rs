//! `WebhookSubscription`: POST signed JSON to a client's URL when chosen events happen.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use super::event::EventType;

/// A client's webhook endpoint and the vehicle events it wants.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "connect.vehicles.io",
    version = "v1alpha1",
    kind = "WebhookSubscription",
    doc = "A client's webhook endpoint: which vehicle events to POST there, signed, and how.",
    namespaced,
    status = "WebhookSubscriptionStatus",
    shortname = "whs",
    category = "vehicle-connect",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(
        name = "Delivering",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Delivering")].status"#
    ),
    printcolumn(name = "Client", type_ = "string", json_path = ".spec.clientId"),
    printcolumn(
        name = "Events",
        type_ = "string",
        json_path = ".spec.events",
        priority = 1
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url", priority = 1),
    printcolumn(name = "Delivered", type_ = "integer", json_path = ".status.delivered"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(
        name = "Last Delivery",
        type_ = "date",
        json_path = ".status.lastDelivery.time"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].message"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.tls) || self.url.lowerAscii().startsWith('https://')").message("spec.tls needs an https:// URL").field_path(".tls")
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionSpec {
    /// Where events are POSTed: an absolute http(s) URL without credentials or fragment.
    /// Loopback, private and cluster-internal addresses are refused unless the operator's
    /// `--allow-targets` lets them through.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("must be an absolute http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("must not carry credentials; use spec.auth"),
        validation = Rule::new("!self.contains('#')").message("must not have a fragment")
    )]
    pub url: String,

    /// Event types to deliver (see the catalogue); at least one, no repeats.
    #[schemars(length(min = 1, max = 11))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<EventType>,

    /// Client whose events this subscription receives. The namespace must allow it through
    /// its `connect.vehicles.io/clients` annotation.
    #[schemars(length(min = 1, max = 128), regex(pattern = ID))]
    pub client_id: String,

    /// Only events caused by these users (user-level). Omit for every user of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 128), regex(pattern = ID)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub user_ids: Option<Vec<String>>,

    /// HTTP authentication sent with every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<WebhookAuth>,

    /// Standard Webhooks signing (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,

    /// The receiver's private CA, for an https `url` whose certificate the system roots do
    /// not vouch for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<WebhookTls>,

    /// Extra static headers. Authentication, content and `webhook-*` headers are set by the
    /// operator and cannot be overridden here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9-]{0,63}$'))").message("header names must be letters, digits and '-' (at most 64)"),
        validation = Rule::new("self.all(k, !(k.lowerAscii() in ['authorization', 'content-type', 'content-length', 'host', 'user-agent', 'transfer-encoding', 'connection']) && !k.lowerAscii().startsWith('webhook-'))").message("authorization, content-*, host, user-agent, connection and webhook-* headers are reserved"),
        validation = Rule::new("self.all(k, !self[k].contains('\\n') && !self[k].contains('\\r'))").message("header values must be single lines")
    )]
    pub headers: Option<BTreeMap<String, String>>,

    /// Seconds to wait for the receiver's answer to one attempt.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 120))]
    pub timeout_seconds: u32,

    /// Retries of failed attempts (defaults close to the Standard Webhooks schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Vehicles delivered in parallel to this URL; events of one vehicle are always in order.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub max_concurrency: u32,

    /// Stop delivering; events are kept and delivered after resuming.
    #[serde(default)]
    pub suspend: bool,

    /// Deliver the stored events of a window again, once per `replay.id` (see
    /// `status.lastReplay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,

    /// After the receiver answered 410 Gone, delivery holds (`status.receiverGone`) until the
    /// spec changes: set this to any new value (a date, a ticket number) to resume, from Git
    /// or with `kubectl patch`. Any other spec change resumes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub resume_after_gone: Option<String>,
}

/// The receiver answered 410 Gone: delivery holds until the spec changes past `generation`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverGone {
    /// When the receiver answered 410.
    pub since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// The `metadata.generation` that was delivering then; a later one resumes.
    pub generation: i64,
}

fn default_timeout() -> u32 {
    15
}
fn default_concurrency() -> u32 {
    8
}

/// Exactly one of `basic` or `bearer`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[x_kube(validation = Rule::new("has(self.basic) != has(self.bearer)").message("set exactly one of auth.basic or auth.bearer"))]
pub struct WebhookAuth {
    /// HTTP Basic auth from a Secret with keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// `Authorization: Bearer` with a token from a Secret (key `token` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
}

/// Basic auth credentials.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// Secret with keys `username` and `password`.
    pub secret_ref: SecretRef,
}

/// Bearer token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BearerAuth {
    /// Secret and key (default `token`) holding the token.
    pub secret_ref: SecretKeyRef,
}

/// Signing secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// Secret and key (default `secret`) holding one or more `whsec_<base64>` secrets,
    /// separated by spaces or newlines; each signs every request, so a receiver can rotate.
    pub secret_ref: SecretKeyRef,
}

/// TLS material from a Secret in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookTls {
    /// CA certificate(s) to trust (PEM, key `ca.crt` unless set) instead of the system
    /// roots, as `caSecretRef` does for ApiConnections and FtpConnections.
    pub ca_secret_ref: SecretKeyRef,
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscriptionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the subscription is configured and delivering.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Events delivered (2xx).
    #[serde(default)]
    pub delivered: u64,
    /// Events given up on.
    #[serde(default)]
    pub failed: u64,
    /// Events waiting for delivery or retry.
    #[serde(default)]
    pub pending: u64,
    /// Failed attempts since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DeliveryRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<FailureRecord>,
    /// Set while delivery holds after a 410 Gone; change the spec (`resumeAfterGone`) to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver_gone: Option<ReceiverGone>,
    /// The replay last carried out (`spec.replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay: Option<LastReplay>,
}

impl WebhookSubscriptionSpec {
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }
}
