//! `ApiConnection`: drive a client's own REST API with requests mapped from vehicle events.

// Each `printcolumn(...)` repeats `type_ = ...`; clippy reads that as a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use super::event::EventType;
use super::webhook::{BasicAuth, BearerAuth};

/// Names of a request, a capture or a multipart field: what templates refer to.
pub const NAME: &str = r"^[a-z][a-zA-Z0-9_-]{0,62}$";
/// Header names that the operator sets itself.
pub const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "idempotency-key",
];

/// A client's REST API and how vehicle events map onto its requests.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "connect.vehicles.io",
    version = "v1alpha1",
    kind = "ApiConnection",
    doc = "A client's own REST API: which vehicle events become which requests against it, and how to authenticate.",
    namespaced,
    status = "ApiConnectionStatus",
    shortname = "apic",
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
    printcolumn(name = "Base URL", type_ = "string", json_path = ".spec.baseUrl"),
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
    validation = Rule::new("self.mappings.all(m, m.events.all(e, e in self.events))").message("every mapping's events must be listed in spec.events").field_path(".mappings"),
    validation = Rule::new("self.events.all(e, self.mappings.exists_one(m, e in m.events))").message("every event in spec.events needs exactly one mapping").field_path(".events")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiConnectionSpec {
    /// Client whose events drive this API. The namespace must allow it through its
    /// `connect.vehicles.io/clients` annotation.
    #[schemars(length(min = 1, max = 128), regex(pattern = ID))]
    pub client_id: String,

    /// Only events caused by these users (user-level). Omit for every user of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000), inner(length(min = 1, max = 128), regex(pattern = ID)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub user_ids: Option<Vec<String>>,

    /// Event types this connection acts on; each needs one entry in `mappings`.
    #[schemars(length(min = 1, max = 11))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<EventType>,

    /// Root of the client's API: an absolute http(s) URL without credentials, query or
    /// fragment. Request paths are appended to it. Loopback, private and cluster-internal
    /// addresses are refused unless the operator's `--allow-targets` lets them through.
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("must be an absolute http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')").message("must not carry credentials; use spec.auth"),
        validation = Rule::new("!self.contains('#') && !self.contains('?')").message("must not have a query or fragment; use the requests' query")
    )]
    pub base_url: String,

    /// How every request (and the OAuth2 token request) authenticates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ApiAuth>,

    /// Private CA and client certificate (mTLS), for the API and the token endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTls>,

    /// The client's OpenAPI document (3.0 or 3.1, JSON or YAML) in a ConfigMap. When set,
    /// every mapped request is checked against it before any event is sent: the path and
    /// method exist and each sample event's rendered body validates against the request
    /// schema; a mismatch is `Ready=False/SpecMismatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi: Option<OpenApiRef>,

    /// Per event type, the ordered requests it becomes.
    #[schemars(length(min = 1, max = 11))]
    pub mappings: Vec<Mapping>,

    /// Header carrying a key unique to (event, request, image) and to what the request sends,
    /// the same on every retry, so the API can drop repeats; a request changed in the mapping
    /// before its retry gets a key of its own.
    #[serde(default = "default_idempotency_header")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    )]
    pub idempotency_header: String,

    /// Seconds to wait for the API's answer to one request.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: u32,

    /// Retries of failed requests; a retry resumes the event's chain at the request that
    /// failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Vehicles handled in parallel; the events of one vehicle are always in order.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub max_concurrency: u32,

    /// Stop sending; events are kept and sent after resuming.
    #[serde(default)]
    pub suspend: bool,

    /// Deliver the stored events of a window again, once per `replay.id` (see
    /// `status.lastReplay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
}

fn default_idempotency_header() -> String {
    "Idempotency-Key".to_string()
}
fn default_timeout() -> u32 {
    30
}
fn default_concurrency() -> u32 {
    8
}

/// Exactly one way to authenticate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.basic), has(self.bearer), has(self.apiKey), has(self.oauth2)].filter(x, x).size() == 1").message("set exactly one of auth.basic, auth.bearer, auth.apiKey or auth.oauth2"))]
pub struct ApiAuth {
    /// HTTP Basic auth from a Secret with keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// `Authorization: Bearer` with a token from a Secret (key `token` unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<BearerAuth>,
    /// A key in a header of the API's choosing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// OAuth2 client credentials: a token from `tokenUrl`, cached until it expires and
    /// fetched again once when the API answers 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Auth>,
}

/// API key header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    /// Header name, for example `X-Api-Key`.
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    )]
    #[x_kube(validation = Rule::new("!(self.lowerAscii() in ['host', 'content-length', 'content-type', 'transfer-encoding', 'connection'])").message("must not be a header the operator sets"))]
    pub header: String,
    /// Secret and key (default `apiKey`) holding the key.
    pub secret_ref: SecretKeyRef,
    /// Text before the key, for example `ApiKey ` (with its space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

/// OAuth2 client credentials grant (RFC 6749 §4.4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Auth {
    /// Token endpoint: absolute http(s) URL (same address rules as `baseUrl`).
    #[schemars(length(min = 8, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("must be an absolute http:// or https:// URL with a host"))]
    pub token_url: String,
    /// Secret with keys `client-id` and `client-secret`.
    pub client_secret_ref: SecretRef,
    /// Scopes to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 32),
        inner(length(min = 1, max = 256), regex(pattern = r"^[!#-\[\]-~]+$"))
    )]
    pub scopes: Option<Vec<String>>,
    /// `audience` parameter some providers need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,
    /// How the client id and secret are sent: HTTP Basic (`basic`, the default and what
    /// RFC 6749 asks servers to support) or form fields (`body`).
    #[serde(default)]
    pub client_auth: ClientAuthMethod,
}

/// How OAuth2 client credentials reach the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMethod {
    #[default]
    Basic,
    Body,
}

/// TLS material from Secrets in the resource's namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTls {
    /// CA certificate(s) to trust (key `ca.crt` unless set) instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate for mTLS: a Secret with `tls.crt` and `tls.key` (type
    /// `kubernetes.io/tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_secret_ref: Option<SecretRef>,
}

/// Where the client's OpenAPI document is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiRef {
    /// ConfigMap (same namespace) and key (default `openapi.yaml`).
    pub config_map_ref: ConfigMapKeyRef,
}

/// The requests some event types become.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.requests.all(r, self.requests.exists_one(s, s.name == r.name))").message("request names must be unique within a mapping").field_path(".requests"))]
pub struct Mapping {
    /// Event types this mapping handles.
    #[schemars(length(min = 1, max = 11))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub events: Vec<EventType>,
    /// Sent in this order; the chain stops at the first failure and a retry resumes there.
    #[schemars(length(min = 1, max = 16))]
    pub requests: Vec<ApiRequest>,
}

/// One request of a chain. Templates are minijinja (Jinja2) over `event` (the whole
/// envelope), `vehicle` and `images` (from `event.data`), `remote` (values captured for
/// this vehicle by earlier requests) and, under `forEachImage`, `image`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.forEachImage) || self.forEachImage.send != 'raw' || !has(self.body)").message("forEachImage.send raw sends the image as the body; remove body").field_path(".body"),
    validation = Rule::new("!has(self.forEachImage) || self.forEachImage.send != 'multipart' || !has(self.body)").message("forEachImage.send multipart sends form fields; use forEachImage.fields instead of body").field_path(".body"),
    validation = Rule::new("!has(self.headers) || !has(self.forEachImage) || self.forEachImage.send == 'json' || self.headers.all(k, k.lowerAscii() != 'content-type')").message("content-type comes from the image or the multipart boundary").field_path(".headers")
)]
pub struct ApiRequest {
    /// Name, unique in its mapping: it appears in status, logs and idempotency keys.
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME))]
    pub name: String,

    /// HTTP method.
    pub method: HttpMethod,

    /// Path template appended to `baseUrl`, for example `/vehicles/{{ remote.id }}`.
    /// Every value is percent-encoded as one path segment.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message("must start with '/'"),
        validation = Rule::new("!self.contains('?') && !self.contains('#')").message("must not hold a query or fragment; use query")
    )]
    pub path: String,

    /// Query parameters: name → value template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub query: Option<BTreeMap<String, String>>,

    /// Headers: name → value template. Authentication, host, length and the idempotency
    /// header are set by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9-]{0,63}$'))").message("header names must be letters, digits and '-' (at most 64)"),
        validation = Rule::new("self.all(k, !(k.lowerAscii() in ['authorization', 'host', 'content-length', 'transfer-encoding', 'connection', 'idempotency-key']))").message("authorization, host, content-length, transfer-encoding, connection and idempotency-key are set by the operator")
    )]
    pub headers: Option<BTreeMap<String, String>>,

    /// JSON body template. Every `{{ value }}` is written as JSON (strings quoted and
    /// escaped), so no value can break the document; the result must parse as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 65536))]
    pub body: Option<String>,

    /// Expression (for example `not remote.id`); when false the request is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub when: Option<String>,

    /// Send this request once per image of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each_image: Option<ForEachImage>,

    /// Statuses that count as success (any 2xx unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(range(min = 100, max = 599)))]
    pub expect: Option<Vec<u16>>,

    /// Values to keep for this vehicle from the response: name → where to find it. Later
    /// requests (of this and later events) read them as `remote.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 8))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z][a-zA-Z0-9_]{0,62}$'))").message("capture names must be identifiers: a lowercase letter, then letters, digits or '_'"))]
    pub capture: Option<BTreeMap<String, Capture>>,
}

/// HTTP methods a mapping may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }
}

/// One request per image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForEachImage {
    /// `json`: the body template is sent, with `image` (its `url`, `index`, `contentType`)
    /// to render from; `raw`: the image bytes are the body, with the image's content type;
    /// `multipart`: a `multipart/form-data` body with the image as a file part.
    pub send: ImageSend,
    /// Name of the file part (`multipart`); `file` unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAME))]
    pub field: Option<String>,
    /// Further text parts (`multipart`): name → value template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 16, "additionalProperties" = {"type": "string", "maxLength": 1024}))]
    pub fields: Option<BTreeMap<String, String>>,
}

/// How an image travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageSend {
    Json,
    Raw,
    Multipart,
}

/// Where a captured value comes from: exactly one of `jsonPointer` or `header`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.jsonPointer) != has(self.header)").message("set exactly one of jsonPointer or header"))]
pub struct Capture {
    /// RFC 6901 pointer into the JSON response body, for example `/id` or `/data/0/id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^(/[^/]*)*$"))]
    pub json_pointer: Option<String>,
    /// Response header, for example `Location`; with `lastSegment` only what follows its
    /// last `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    )]
    pub header: Option<String>,
    /// Keep only the part after the last `/` (an id out of a `Location` URL).
    #[serde(default)]
    pub last_segment: bool,
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiConnectionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: configured, mapping compiled and (with `openapi`) matching the client's
    /// specification.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Events whose whole chain succeeded.
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
    /// The replay last carried out (`spec.replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay: Option<LastReplay>,
}

impl ApiConnectionSpec {
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }

    /// The mapping that handles `event`.
    pub fn mapping_for(&self, event: EventType) -> Option<&Mapping> {
        self.mappings.iter().find(|m| m.events.contains(&event))
    }
}
