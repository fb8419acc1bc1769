//! The event envelope (SPEC "Events"): validation of what clients post, with errors that
//! name the field, and the typed form the rest of the operator uses.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::EventType;

/// Largest batch accepted in one request.
pub const MAX_BATCH: usize = 1000;

/// One vehicle event, as posted to `POST /v1/events` and as delivered in webhook bodies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "evt_01JD2Y6W9Q4M5T7V8X0Z1A2B3C", "type": "vehicle.processed",
    "timestamp": "2026-11-27T10:15:30Z", "clientId": "dealer-123", "userId": "u-42",
    "data": { "vehicle": { "id": "veh-9", "vin": "WVWZZZ1JZXW000001", "stockNumber": "A1234",
        "make": "Volkswagen", "model": "Golf", "year": 2021 },
        "user": { "id": "u-42", "name": "Ana Pérez", "email": "ana@dealer-123.example" },
        "images": [{ "index": 1, "url": "https://cdn.example/veh-9/1.jpg", "contentType": "image/jpeg", "bytes": 183022 }] }
}))]
pub struct Envelope {
    /// Unique per event; the idempotency key (1-128 of `A-Z a-z 0-9 _ . : -`).
    pub id: String,
    /// One of the eleven event types.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "vehicle.processed")]
    pub type_: EventType,
    /// When it happened, RFC 3339.
    pub timestamp: String,
    /// The client (dealer) the event belongs to.
    pub client_id: String,
    /// The user who caused it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Depends on the type; `vehicle.*` and `image.*` carry `vehicle`, and `images` where
    /// images exist.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// `data.vehicle` (documentation of the shape; extra fields are kept).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vehicle {
    pub id: String,
    pub vin: Option<String>,
    pub stock_number: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<u16>,
}

/// One entry of `data.images`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// 1-based position.
    pub index: u32,
    /// http(s) URL the image is downloaded from.
    pub url: String,
    pub content_type: Option<String>,
    pub bytes: Option<u64>,
    /// Hex SHA-256 of the file, checked after download when given.
    pub sha256: Option<String>,
}

/// A refused request body: what is wrong and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// Path of the bad field, e.g. `[2].data.vehicle.id` (`$` for the whole body).
    pub field: String,
    pub message: String,
}

impl Envelope {
    /// Ordering key: events of one vehicle are delivered in order; others in parallel.
    pub fn lane(&self) -> String {
        if let Some(v) = self
            .data
            .get("vehicle")
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
        {
            return format!("vehicle:{v}");
        }
        match &self.user_id {
            Some(u) => format!("user:{u}"),
            None => format!("client:{}", self.client_id),
        }
    }

    pub fn vehicle(&self) -> Option<&Value> {
        self.data.get("vehicle")
    }
}

fn err(field: String, message: impl Into<String>) -> FieldError {
    FieldError {
        field,
        message: message.into(),
    }
}

fn id_like(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '@'))
}

/// Parses a request body: one event object or an array of 1..=MAX_BATCH of them.
pub fn parse_body(body: &[u8]) -> Result<Vec<Envelope>, FieldError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| err("$".into(), format!("not valid JSON: {e}")))?;
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(err("$".into(), "empty batch"));
            }
            if items.len() > MAX_BATCH {
                return Err(err(
                    "$".into(),
                    format!("batch of {} events; at most {MAX_BATCH}", items.len()),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| validate(item, &format!("[{i}].")))
                .collect()
        }
        other => Ok(vec![validate(other, "")?]),
    }
}

/// Validates one event object; `at` prefixes field paths (e.g. `[3].`).
pub fn validate(v: Value, at: &str) -> Result<Envelope, FieldError> {
    let f = |name: &str| format!("{at}{name}");
    let Value::Object(obj) = &v else {
        return Err(err(
            if at.is_empty() {
                "$".into()
            } else {
                at.trim_end_matches('.').into()
            },
            "an event must be a JSON object",
        ));
    };
    let string = |name: &str| -> Result<&str, FieldError> {
        match obj.get(name) {
            None | Some(Value::Null) => Err(err(f(name), "required")),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(err(f(name), "must be a string")),
        }
    };
    let id = string("id")?;
    if !id_like(id, 128) {
        return Err(err(
            f("id"),
            "must be 1-128 characters of A-Z a-z 0-9 _ . : - @",
        ));
    }
    let ty = string("type")?;
    let type_ = EventType::from_str(ty).map_err(|_| {
        let known: Vec<_> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        err(
            f("type"),
            format!("unknown event type {ty:?}; one of {}", known.join(", ")),
        )
    })?;
    let ts = string("timestamp")?;
    if ts.parse::<k8s_openapi::jiff::Timestamp>().is_err() {
        return Err(err(
            f("timestamp"),
            "must be an RFC 3339 time such as 2026-11-27T10:15:30Z",
        ));
    }
    let client = string("clientId")?;
    if !id_like(client, 128) {
        return Err(err(
            f("clientId"),
            "must be 1-128 characters of A-Z a-z 0-9 _ . : - @",
        ));
    }
    let user = match obj.get("userId") {
        None | Some(Value::Null) => None,
        Some(Value::String(u)) if id_like(u, 128) => Some(u.clone()),
        Some(_) => {
            return Err(err(
                f("userId"),
                "must be 1-128 characters of A-Z a-z 0-9 _ . : - @",
            ));
        }
    };
    let data = match obj.get("data") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => return Err(err(f("data"), "required")),
        Some(_) => return Err(err(f("data"), "must be an object")),
    };
    let ts_name = ty.split('.').next().unwrap_or_default();
    if ts_name == "vehicle" || ts_name == "image" {
        let vehicle = match data.get("vehicle") {
            Some(Value::Object(v)) => v,
            None | Some(Value::Null) => {
                return Err(err(f("data.vehicle"), format!("required for {ty}")));
            }
            Some(_) => return Err(err(f("data.vehicle"), "must be an object")),
        };
        match vehicle.get("id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => {}
            _ => {
                return Err(err(
                    f("data.vehicle.id"),
                    "required: a non-empty string of at most 128 characters",
                ));
            }
        }
        for key in ["vin", "stockNumber", "make", "model"] {
            match vehicle.get(key) {
                None | Some(Value::Null) | Some(Value::String(_)) => {}
                Some(_) => return Err(err(f(&format!("data.vehicle.{key}")), "must be a string")),
            }
        }
        if let Some(y) = vehicle.get("year")
            && !y.is_null()
            && !y.as_u64().is_some_and(|y| (1886..=2200).contains(&y))
        {
            return Err(err(f("data.vehicle.year"), "must be a year such as 2021"));
        }
    }
    if let Some(images) = data.get("images").filter(|i| !i.is_null()) {
        let Value::Array(list) = images else {
            return Err(err(f("data.images"), "must be an array"));
        };
        for (i, img) in list.iter().enumerate() {
            let p = |k: &str| f(&format!("data.images[{i}].{k}"));
            let Value::Object(img) = img else {
                return Err(err(f(&format!("data.images[{i}]")), "must be an object"));
            };
            if !img
                .get("index")
                .and_then(Value::as_u64)
                .is_some_and(|n| (1..=9999).contains(&n))
            {
                return Err(err(p("index"), "required: an integer from 1"));
            }
            match img.get("url").and_then(Value::as_str).map(url::Url::parse) {
                Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                }
                _ => return Err(err(p("url"), "required: an absolute http(s) URL")),
            }
            if let Some(h) = img.get("sha256").filter(|h| !h.is_null())
                && !h
                    .as_str()
                    .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(err(p("sha256"), "must be 64 hex characters"));
            }
        }
    }
    let (id, timestamp, client_id) = (id.to_string(), ts.to_string(), client.to_string());
    // Moved out, not cloned: `data` is most of an event.
    let data = match v {
        Value::Object(mut obj) => obj.remove("data").unwrap_or_default(),
        _ => Value::Null,
    };
    Ok(Envelope {
        id,
        type_,
        timestamp,
        client_id,
        user_id: user,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "id": "evt_1", "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": "dealer-123", "userId": "u-42",
            "data": { "vehicle": { "id": "veh-9", "vin": "WVWZZZ1JZXW000001", "year": 2021 },
                      "images": [{ "index": 1, "url": "https://cdn.example/1.jpg" }] }
        })
    }

    fn field_of(body: Value) -> String {
        parse_body(body.to_string().as_bytes()).unwrap_err().field
    }

    #[test]
    fn accepts_one_event_or_a_batch() {
        let one = parse_body(sample().to_string().as_bytes()).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].lane(), "vehicle:veh-9");
        let batch = parse_body(json!([sample(), sample()]).to_string().as_bytes()).unwrap();
        assert_eq!(batch.len(), 2);
        let user = json!({"id": "e", "type": "user.created", "timestamp": "2026-01-01T00:00:00Z", "clientId": "c", "userId": "u", "data": {}});
        assert_eq!(
            parse_body(user.to_string().as_bytes()).unwrap()[0].lane(),
            "user:u"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = sample();
        s["type"] = json!("vehicle.exploded");
        assert_eq!(field_of(s), "type");
        let mut s = sample();
        s.as_object_mut().unwrap().remove("clientId");
        assert_eq!(field_of(s), "clientId");
        let mut s = sample();
        s["data"]["vehicle"].as_object_mut().unwrap().remove("id");
        assert_eq!(field_of(json!([sample(), s])), "[1].data.vehicle.id");
        let mut s = sample();
        s["data"]["images"][0]["url"] = json!("ftp://x/1.jpg");
        assert_eq!(field_of(s), "data.images[0].url");
        let mut s = sample();
        s["timestamp"] = json!("yesterday");
        assert_eq!(field_of(s), "timestamp");
        let mut s = sample();
        s["id"] = json!("has space");
        assert_eq!(field_of(s), "id");
        assert_eq!(parse_body(b"{not json").unwrap_err().field, "$");
        assert_eq!(parse_body(b"[]").unwrap_err().field, "$");
        assert_eq!(field_of(json!([1])), "[0]");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "id",
            "type",
            "timestamp",
            "clientId",
            "userId",
            "data",
            "vehicle",
            "images",
            "index",
            "url",
            "sha256",
            "year",
            "vin",
            "make",
        ];
        const VALUES: &[&str] = &[
            "vehicle.processed",
            "image.added",
            "2026-11-27T10:15:30Z",
            "https://h/1.jpg",
        ];

        fn any_json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                any::<f64>().prop_map(|f| json!(f)),
                ".{0,40}".prop_map(Value::String),
                // Field names and values the validator looks at, so deep paths get hit.
                prop::sample::select([KEYS, VALUES].concat()).prop_map(|s| Value::String(s.into())),
            ];
            leaf.prop_recursive(5, 64, 8, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(KEYS).prop_map(String::from),
                        inner,
                        0..8,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn ident() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.:@-]{1,128}"
        }

        fn timestamp() -> impl Strategy<Value = String> {
            (0i64..4_102_444_800, 0u32..1_000_000_000, any::<bool>()).prop_map(
                |(secs, nanos, frac)| {
                    let t = k8s_openapi::jiff::Timestamp::new(
                        secs,
                        if frac { nanos as i32 } else { 0 },
                    )
                    .unwrap();
                    t.to_string()
                },
            )
        }

        fn image() -> impl Strategy<Value = Value> {
            (1u32..=9999, "[a-z]{1,10}", prop::option::of("[0-9a-f]{64}")).prop_map(
                |(index, path, sha)| {
                    let mut i =
                        json!({ "index": index, "url": format!("https://cdn.example/{path}.jpg") });
                    if let Some(h) = sha {
                        i["sha256"] = json!(h);
                    }
                    i
                },
            )
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            (
                ident(),
                prop::sample::select(EventType::ALL.to_vec()),
                timestamp(),
                ident(),
                prop::option::of(ident()),
                ".{1,32}",
                prop::option::of(1886u64..=2200),
                prop::option::of(prop::collection::vec(image(), 0..4)),
                any_json(),
            )
                .prop_map(
                    |(id, type_, timestamp, client_id, user_id, vid, year, images, extra)| {
                        let mut data = json!({ "extra": extra });
                        if matches!(type_.as_str().split('.').next(), Some("vehicle" | "image")) {
                            data["vehicle"] = json!({ "id": vid, "year": year });
                        }
                        if let Some(i) = images {
                            data["images"] = Value::Array(i);
                        }
                        Envelope {
                            id,
                            type_,
                            timestamp,
                            client_id,
                            user_id,
                            data,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse_body(&body);
            }

            #[test]
            fn arbitrary_json_never_panics(v in any_json()) {
                let _ = parse_body(v.to_string().as_bytes());
                let _ = parse_body(json!([v]).to_string().as_bytes());
            }

            #[test]
            fn valid_envelopes_round_trip(batch in prop::collection::vec(envelope(), 1..5)) {
                let one = serde_json::to_vec(&batch[0]).unwrap();
                prop_assert_eq!(parse_body(&one).unwrap(), vec![batch[0].clone()]);
                let many = serde_json::to_vec(&batch).unwrap();
                prop_assert_eq!(parse_body(&many).unwrap(), batch);
            }

            #[test]
            fn errors_point_into_the_batch(batch in prop::collection::vec(envelope(), 1..5), bad in 0usize..5) {
                let bad = bad % batch.len();
                let mut v = serde_json::to_value(&batch).unwrap();
                v[bad]["clientId"] = json!("has space");
                let e = parse_body(v.to_string().as_bytes()).unwrap_err();
                prop_assert_eq!(e.field, format!("[{bad}].clientId"));
            }
        }
    }
}
