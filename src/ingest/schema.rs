//! The parts of the OpenAPI document that utoipa's derives cannot say: the events as JSON
//! Schema (one schema per type, chosen by `type`, stating exactly what [`super::envelope`]
//! checks) and the `webhooks` section (OpenAPI 3.1), the requests a client's receiver gets.
//!
//! Two forms of each event: `…EventInput`, what `POST /v1/events` accepts, and `…Event`,
//! what webhooks and the pull feed carry (the accepted event, normalised).

use serde_json::{Map, Value, json};

use crate::api::EventType;

/// Characters of `id`, `clientId` and `userId` (`envelope::id_like`).
const IDENT: &str = "^[A-Za-z0-9_.:@-]+$";

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// `vehicle.images_uploaded` → `VehicleImagesUploaded`.
fn camel(t: EventType) -> String {
    t.as_str()
        .split(['.', '_'])
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Name of the schema of one type's events as delivered; `…Input` as posted.
pub fn event_schema_name(t: EventType, input: bool) -> String {
    format!("{}Event{}", camel(t), if input { "Input" } else { "" })
}

/// `vehicle.*` and `image.*` events must carry `data.vehicle` (their ordering key).
fn needs_vehicle(t: EventType) -> bool {
    matches!(t.as_str().split('.').next(), Some("vehicle" | "image"))
}

/// The sample event of each type (`examples/events/`), the example of its schemas.
fn sample(t: EventType) -> Value {
    let text = match t {
        EventType::UserCreated => include_str!("../../examples/events/user.created.json"),
        EventType::UserUpdated => include_str!("../../examples/events/user.updated.json"),
        EventType::VehicleCreated => include_str!("../../examples/events/vehicle.created.json"),
        EventType::VehicleUpdated => include_str!("../../examples/events/vehicle.updated.json"),
        EventType::VehicleDeleted => include_str!("../../examples/events/vehicle.deleted.json"),
        EventType::VehicleAdded => include_str!("../../examples/events/vehicle.added.json"),
        EventType::VehicleImagesUploaded => {
            include_str!("../../examples/events/vehicle.images_uploaded.json")
        }
        EventType::VehicleImageUploaded => {
            include_str!("../../examples/events/vehicle.image_uploaded.json")
        }
        EventType::VehicleProcessed => include_str!("../../examples/events/vehicle.processed.json"),
        EventType::ImageCroppedProcessed => {
            include_str!("../../examples/events/image.cropped_processed.json")
        }
        EventType::DataNew => include_str!("../../examples/events/data.new.json"),
    };
    // The sync test checks that every type has its example.
    serde_json::from_str(text).unwrap_or_default()
}

/// What one type is about, for its schemas and webhook.
fn about(t: EventType) -> String {
    let data = if needs_vehicle(t) {
        "`data.vehicle` (with its `id`) is required."
    } else {
        "`data.vehicle` is not required (nor checked) for this type."
    };
    let mut s = format!("A `{t}` event. {data}");
    if EventType::FTP.contains(&t) {
        s.push_str(if t == EventType::VehicleDeleted {
            " FtpConnections act on it (with `rules.deleteOnVehicleDeleted` they remove the vehicle's files)."
        } else {
            " FtpConnections act on it: they upload its `data.images`."
        });
    }
    s
}

/// A line on what a type's webhook carries, for the lists renderers show.
fn summary(t: EventType) -> String {
    let of = match t.as_str().split('.').next() {
        Some("vehicle" | "image") => "Vehicle event",
        Some("user") => "User event",
        _ => "Data event",
    };
    match t {
        EventType::VehicleDeleted => format!("{of}; FtpConnections may remove its files"),
        _ if EventType::FTP.contains(&t) => format!("{of}; FtpConnections upload its images"),
        _ => of.to_string(),
    }
}

fn ident(description: &str, example: &str) -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": 128, "pattern": IDENT,
        "description": description, "example": example,
    })
}

/// The event of type `t`: as posted (`input`) or as delivered.
fn event(t: EventType, input: bool) -> Value {
    let user_id = if input {
        json!({
            "type": ["string", "null"], "minLength": 1, "maxLength": 128, "pattern": IDENT,
            "description": "The user who caused the event, if one did (1-128 of `A-Z a-z 0-9 _ . : - @`). \
                `null` counts as absent.",
            "example": "u-42",
        })
    } else {
        ident(
            "The user who caused the event; absent if none was posted.",
            "u-42",
        )
    };
    let data = if needs_vehicle(t) {
        "VehicleEventData"
    } else {
        "EventData"
    };
    let mut e = json!({
        "title": t.as_str(),
        "type": "object",
        "required": ["id", "type", "timestamp", "clientId", "data"],
        "properties": {
            "id": ident(
                "Unique per event: the idempotency key (a repeated id is answered `duplicate` \
                 and not delivered again) and the `webhook-id` of its signed webhooks. \
                 1-128 of `A-Z a-z 0-9 _ . : - @`.",
                "evt_01JD2Y6W9Q4M5T7V8X0Z1A2B3C",
            ),
            "type": { "type": "string", "const": t.as_str(), "description": "The event type." },
            "timestamp": {
                "type": "string", "format": "date-time",
                "description": "When it happened: an RFC 3339 time with an offset. Delivered as \
                    posted; the operator also takes other ISO 8601 spellings (e.g. \
                    `20261127T101530Z`), which receivers may not read.",
                "example": "2026-11-27T10:15:30Z",
            },
            "clientId": ident(
                "The client (dealer) the event belongs to; subscriptions select on it.",
                "dealer-123",
            ),
            "userId": user_id,
            "data": schema_ref(data),
        },
        "example": sample(t),
    });
    let description = if input {
        format!(
            "{} Top-level fields other than these are accepted and dropped.",
            about(t)
        )
    } else {
        format!(
            "{} As delivered: the envelope's six fields in this order, `data` as it was posted.",
            about(t)
        )
    };
    e["description"] = description.into();
    if !input {
        e["additionalProperties"] = false.into();
    }
    e
}

/// `oneOf` the types' schemas, chosen by `type`.
fn any_event(input: bool, description: &str) -> Value {
    let one_of: Vec<Value> = EventType::ALL
        .iter()
        .map(|t| schema_ref(&event_schema_name(*t, input)))
        .collect();
    let mapping: Map<String, Value> = EventType::ALL
        .iter()
        .map(|t| {
            let name = event_schema_name(*t, input);
            (
                t.as_str().to_string(),
                format!("#/components/schemas/{name}").into(),
            )
        })
        .collect();
    json!({
        "description": description,
        "oneOf": one_of,
        "discriminator": { "propertyName": "type", "mapping": mapping },
    })
}

/// The event schemas, to be added to `components.schemas`.
pub fn event_schemas() -> Map<String, Value> {
    let mut s = Map::new();
    s.insert(
        "EventType".into(),
        json!({
            "type": "string",
            "enum": EventType::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            "description": "The eleven event types, `resource.action`.",
        }),
    );
    s.insert(
        "Vehicle".into(),
        json!({
            "type": "object",
            "description": "The vehicle. `id` is required; the other fields named here are checked \
                when present (`null` counts as absent); any other field is passed through unchecked.",
            "required": ["id"],
            "properties": {
                "id": {
                    "type": "string", "minLength": 1, "maxLength": 128,
                    "description": "The platform's vehicle id, at most 128 bytes: the ordering key \
                        (events of one vehicle reach a target in order).",
                    "example": "veh-9",
                },
                "vin": { "type": ["string", "null"], "description": "Vehicle identification number.", "example": "WVWZZZ1JZXW000001" },
                "stockNumber": { "type": ["string", "null"], "description": "The dealer's stock number.", "example": "A1234" },
                "make": { "type": ["string", "null"], "example": "Volkswagen" },
                "model": { "type": ["string", "null"], "example": "Golf" },
                "year": {
                    "type": ["integer", "null"], "minimum": 1886, "maximum": 2200,
                    "description": "Written without a fraction (`2021`, not `2021.0`).", "example": 2021,
                },
            },
        }),
    );
    s.insert(
        "Image".into(),
        json!({
            "type": "object",
            "description": "One image of the event. `index` and `url` are required; `sha256` is checked \
                when present; any other field is passed through unchecked.",
            "required": ["index", "url"],
            "properties": {
                "index": {
                    "type": "integer", "minimum": 1, "maximum": 9999,
                    "description": "1-based position, written without a fraction.", "example": 1,
                },
                "url": {
                    "type": "string", "format": "uri", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]",
                    "description": "Absolute http(s) URL with a host (`scheme://host…`); FTP and API \
                        deliveries download the image from it.",
                    "example": "https://cdn.example/veh-9/1.jpg",
                },
                "sha256": {
                    "type": ["string", "null"], "pattern": "^[0-9A-Fa-f]{64}$",
                    "description": "Hex SHA-256 of the file; downloads are checked against it.",
                },
                "contentType": { "description": "The media type, e.g. `image/jpeg`. Not checked here, \
                    but FTP deliveries (and API ones that send images) fail an event whose \
                    `contentType` is not a string." },
                "bytes": { "description": "The size in bytes. Not checked here, but FTP deliveries \
                    (and API ones that send images) fail an event whose `bytes` is not a whole \
                    number." },
            },
        }),
    );
    s.insert(
        "Images".into(),
        json!({
            "type": ["array", "null"],
            "items": schema_ref("Image"),
            "description": "The event's images, where it has them; checked for every type.",
        }),
    );
    s.insert(
        "User".into(),
        json!({
            "description": "The user, conventionally `{id, name, email}`; not checked, passed through as posted.",
            "properties": {
                "id": { "description": "Conventionally the event's `userId`." },
                "name": {},
                "email": {},
            },
            "example": { "id": "u-42", "name": "Ana Pérez", "email": "ana@dealer-123.example" },
        }),
    );
    s.insert(
        "VehicleEventData".into(),
        json!({
            "type": "object",
            "description": "`data` of `vehicle.*` and `image.*` events. Fields other than these \
                (e.g. `changes` of `vehicle.updated`) are passed through unchecked.",
            "required": ["vehicle"],
            "properties": {
                "vehicle": schema_ref("Vehicle"),
                "user": schema_ref("User"),
                "images": schema_ref("Images"),
            },
        }),
    );
    s.insert(
        "EventData".into(),
        json!({
            "type": "object",
            "description": "`data` of `user.*` and `data.new` events: only `images` is checked; \
                everything else is passed through.",
            "properties": {
                "user": schema_ref("User"),
                "images": schema_ref("Images"),
            },
        }),
    );
    for t in EventType::ALL {
        s.insert(event_schema_name(t, true), event(t, true));
        s.insert(event_schema_name(t, false), event(t, false));
    }
    s.insert(
        "EventInput".into(),
        any_event(
            true,
            "One event as posted; its `type` decides what `data` must hold.",
        ),
    );
    s.insert(
        "Event".into(),
        any_event(
            false,
            "One event as webhooks and the pull feed deliver it: the accepted event, normalised \
             (its six fields only, `userId` left out when absent or null, `data` as posted).",
        ),
    );
    s.insert(
        "EventsInput".into(),
        json!({
            "description": "The body of `POST /v1/events`: one event, or an array of 1-1000 events \
                (accepted or refused as a whole).",
            "oneOf": [
                { "title": "One event", "$ref": "#/components/schemas/EventInput" },
                {
                    "title": "A batch", "type": "array", "items": schema_ref("EventInput"),
                    "minItems": 1, "maxItems": 1000,
                },
            ],
            "example": input_example(true),
        }),
    );
    s
}

/// Examples of the request body: one event, or a batch of two.
pub fn input_example(batch: bool) -> Value {
    if !batch {
        return sample(EventType::VehicleProcessed);
    }
    let mut two = [EventType::VehicleCreated, EventType::VehicleProcessed].map(sample);
    two[1]["id"] = "evt_sample_vehicle_processed_2".into();
    json!(two)
}

/// The headers of a webhook request that OpenAPI lets a document describe (it ignores
/// `Content-Type`, `Accept` and `Authorization` parameters; those are in the descriptions and
/// the security schemes).
fn webhook_parameters() -> Map<String, Value> {
    let signed = "Sent when the subscription has `spec.signing`.";
    let mut p = Map::new();
    p.insert(
        "WebhookId".into(),
        json!({
            "name": "webhook-id", "in": "header", "required": false,
            "description": format!("Standard Webhooks message id: the event's `id`, the same on every \
                attempt. Delivery is at least once: dedupe on it. {signed}"),
            "schema": { "type": "string", "minLength": 1, "maxLength": 128, "pattern": IDENT },
            "example": "evt_01JD2Y6W9Q4M5T7V8X0Z1A2B3C",
        }),
    );
    p.insert(
        "WebhookTimestamp".into(),
        json!({
            "name": "webhook-timestamp", "in": "header", "required": false,
            "description": format!("Unix time (seconds) of this attempt's signature; Standard \
                Webhooks libraries refuse one more than 5 minutes from their clock. {signed}"),
            "schema": { "type": "integer", "minimum": 0 },
            "example": 1795774530,
        }),
    );
    p.insert(
        "WebhookSignature".into(),
        json!({
            "name": "webhook-signature", "in": "header", "required": false,
            "description": format!("`v1,<base64 HMAC-SHA256>` of `<webhook-id>.<webhook-timestamp>.<body>`, \
                keyed with the base64-decoded part of a `whsec_…` secret: one per secret of the \
                subscription's Secret, space separated, so that either verifies during a rotation. \
                Verify with any Standard Webhooks library. {signed}"),
            "schema": { "type": "string", "pattern": "^v1,[A-Za-z0-9+/]{43}=( v1,[A-Za-z0-9+/]{43}=)*$" },
            "example": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        }),
    );
    p.insert(
        "WebhookUserAgent".into(),
        json!({
            "name": "user-agent", "in": "header", "required": true,
            "description": "The operator and its version.",
            "schema": { "type": "string", "pattern": "^vehicle-connect/" },
            "example": concat!("vehicle-connect/", env!("CARGO_PKG_VERSION")),
        }),
    );
    p
}

/// How the operator takes each answer of a receiver (`delivery::webhook::classify_response`).
fn webhook_responses() -> Map<String, Value> {
    let mut r = Map::new();
    r.insert(
        "WebhookDelivered".into(),
        json!({ "description": "Delivered. The body is not used." }),
    );
    r.insert(
        "WebhookRedirect".into(),
        json!({ "description": "Not followed: the delivery fails at once, without retries \
            (`lastFailure.reason: Redirect`)." }),
    );
    r.insert(
        "WebhookRetried".into(),
        json!({
            "description": "Retried, as timeouts (`timeoutSeconds`, default 15) and connection errors \
                are: after a random delay of up to `retry.initialBackoffSeconds` (default 5) doubled \
                per retry and capped at `maxBackoffSeconds` (default 36000), until `maxAttempts` \
                attempts (default 8) or the event is `maxAgeSeconds` old (default 259200). \
                `Retry-After` is a floor on the next delay, itself capped at `maxBackoffSeconds`.",
            "headers": {
                "Retry-After": {
                    "description": "Seconds, or an HTTP date; honoured on 408, 429 and every 5xx.",
                    "schema": { "type": "string" },
                    "example": "120",
                },
            },
        }),
    );
    r.insert(
        "WebhookGone".into(),
        json!({ "description": "The endpoint is gone: the subscription is suspended (annotation \
            `connect.vehicles.io/receiver-gone`, `Ready` False with reason `ReceiverGone`). This \
            event and later ones are kept, and delivered once the annotation is removed (unless \
            older than `retry.maxAgeSeconds` by then)." }),
    );
    r.insert(
        "WebhookFailed".into(),
        json!({ "description": "Any other status (a 4xx other than 408, 410 and 429): the delivery \
            fails at once, without retries (`lastFailure.reason: HttpStatus`)." }),
    );
    r
}

/// The `webhooks` section: one entry per event type, each a POST with that type's body.
fn webhooks() -> Map<String, Value> {
    let parameters: Vec<Value> = [
        "WebhookId",
        "WebhookTimestamp",
        "WebhookSignature",
        "WebhookUserAgent",
    ]
    .iter()
    .map(|p| json!({ "$ref": format!("#/components/parameters/{p}") }))
    .collect();
    let response = |name: &str| json!({ "$ref": format!("#/components/responses/{name}") });
    EventType::ALL
        .iter()
        .map(|&t| {
            let op = json!({
                "post": {
                    "operationId": format!("webhook_{}", t.as_str().replace('.', "_")),
                    "summary": summary(t),
                    "description": format!(
                        "{} POSTed to the `url` of each WebhookSubscription whose `events` include \
                         `{t}` and whose `clientId` (and `userIds`, if set) match the event.\n\n\
                         Headers: `content-type: application/json` and the `user-agent`; \
                         `webhook-id`, `webhook-timestamp` and `webhook-signature` with \
                         `spec.signing`; `authorization` (Basic or Bearer) with `spec.auth`; the \
                         subscription's `spec.headers` as given (they cannot replace these); \
                         `accept: */*` unless `spec.headers` sets it.\n\n\
                         At least once: dedupe on `webhook-id`. Events of one vehicle (events \
                         without one: of one user, else of one client) arrive one at a time, in \
                         the order they were accepted.",
                        about(t)
                    ),
                    "tags": ["webhooks"],
                    "parameters": parameters,
                    "security": [{}, { "webhookBasic": [] }, { "webhookBearer": [] }],
                    "requestBody": {
                        "required": true,
                        "description": "The event as accepted by `POST /v1/events`.",
                        "content": {
                            "application/json": { "schema": schema_ref(&event_schema_name(t, false)) },
                        },
                    },
                    "responses": {
                        "2XX": response("WebhookDelivered"),
                        "3XX": response("WebhookRedirect"),
                        "408": response("WebhookRetried"),
                        "410": response("WebhookGone"),
                        "429": response("WebhookRetried"),
                        "5XX": response("WebhookRetried"),
                        "default": response("WebhookFailed"),
                    },
                },
            });
            (t.as_str().to_string(), op)
        })
        .collect()
}

/// Adds what this module describes to `doc`, the document utoipa made.
pub fn complete(doc: &mut Map<String, Value>) {
    let mut components = take(doc, "components");
    extend(&mut components, "schemas", event_schemas());
    extend(&mut components, "parameters", webhook_parameters());
    extend(&mut components, "responses", webhook_responses());
    extend(
        &mut components,
        "securitySchemes",
        [
            (
                "webhookBasic".to_string(),
                json!({ "type": "http", "scheme": "basic",
                    "description": "Webhooks of a subscription with `spec.auth.basic`: the username \
                        and password of its Secret." }),
            ),
            (
                "webhookBearer".to_string(),
                json!({ "type": "http", "scheme": "bearer",
                    "description": "Webhooks of a subscription with `spec.auth.bearer`: the token of \
                        its Secret." }),
            ),
        ],
    );
    doc.insert("components".into(), components.into());
    extend(doc, "webhooks", webhooks());
}

/// Removes the object at `key` of `map` (empty if missing or not an object).
fn take(map: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match map.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn extend(
    map: &mut Map<String, Value>,
    key: &str,
    items: impl IntoIterator<Item = (String, Value)>,
) {
    let mut m = take(map, key);
    m.extend(items);
    map.insert(key.into(), m.into());
}
