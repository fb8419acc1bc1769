//! The event envelope (docs/events.md): validation of what clients post, with errors that
//! name the field, and the typed form the rest of the operator uses.

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::EventType;

/// Largest batch accepted in one request.
pub const MAX_BATCH: usize = 1000;

/// One vehicle event, as posted to `POST /v1/events` and as delivered in webhook bodies. Its
/// OpenAPI schemas, one per type, are in [`super::schema`]: keep them in step with [`validate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique per event; the idempotency key (1-128 of `A-Z a-z 0-9 _ . : - @`).
    pub id: String,
    #[serde(rename = "type")]
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
    pub data: Value,
}

/// One entry of `data.images`.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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

/// An accepted event as the store and the deliveries need it: the head fields routing
/// reads, the ordering lane, and the JSON body every delivery sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    pub id: String,
    pub type_: EventType,
    pub client_id: String,
    pub user_id: Option<String>,
    pub lane: String,
    /// `data.vehicle.vin`, for the delivery log.
    pub vin: Option<String>,
    /// The event serialised as an [`Envelope`]; `data` as the client posted it.
    pub body: Vec<u8>,
}

impl Incoming {
    pub fn from_envelope(e: &Envelope) -> serde_json::Result<Incoming> {
        Ok(Incoming {
            id: e.id.clone(),
            type_: e.type_,
            client_id: e.client_id.clone(),
            user_id: e.user_id.clone(),
            lane: e.lane(),
            vin: e
                .vehicle()
                .and_then(|v| v.get("vin"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            body: serde_json::to_vec(e)?,
        })
    }
}

/// Parses a request body: one event object or an array of 1..=MAX_BATCH of them.
///
/// Well-formed events take a typed path that never builds a tree of `data`; anything it
/// does not accept outright (a wrong type, a missing field, a duplicate key) goes through
/// [`parse_envelopes`], which decides and names the field.
pub fn parse_body(body: &[u8]) -> Result<Vec<Incoming>, FieldError> {
    if let Some(fast) = fast::parse(body) {
        return Ok(fast);
    }
    parse_envelopes(body)?
        .iter()
        .map(|e| Incoming::from_envelope(e).map_err(|e| err("$".into(), e.to_string())))
        .collect()
}

/// Parses and validates a request body into envelopes: the authority on what is valid.
pub fn parse_envelopes(body: &[u8]) -> Result<Vec<Envelope>, FieldError> {
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

/// The typed path: borrows strings from the body, keeps `data` raw, and gives up (`None`)
/// on anything [`validate`] would refuse or read differently, so it is never laxer.
mod fast {
    use std::borrow::Cow;
    use std::str::FromStr;

    use serde::{Deserialize, Serialize};
    use serde_json::value::RawValue;

    use super::{EventType, Incoming, MAX_BATCH, id_like};

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Event<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(rename = "type", borrow)]
        type_: Cow<'a, str>,
        #[serde(borrow)]
        timestamp: Cow<'a, str>,
        #[serde(borrow)]
        client_id: Cow<'a, str>,
        #[serde(default)]
        user_id: Option<String>,
        #[serde(borrow)]
        data: &'a RawValue,
    }

    /// What is written: the envelope's fields in its order, `data` copied verbatim.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Out<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        type_: &'a str,
        timestamp: &'a str,
        client_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<&'a str>,
        data: &'a RawValue,
    }

    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(default, borrow)]
        vehicle: Option<&'a RawValue>,
        #[serde(default, borrow)]
        images: Option<Vec<&'a RawValue>>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Vehicle<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
        #[serde(default, borrow)]
        vin: Option<&'a RawValue>,
        #[serde(default, borrow)]
        stock_number: Option<&'a RawValue>,
        #[serde(default, borrow)]
        make: Option<&'a RawValue>,
        #[serde(default, borrow)]
        model: Option<&'a RawValue>,
        #[serde(default, borrow)]
        year: Option<&'a RawValue>,
    }

    #[derive(Deserialize)]
    struct Image<'a> {
        #[serde(borrow)]
        index: &'a RawValue,
        #[serde(borrow)]
        url: Cow<'a, str>,
        #[serde(default, borrow)]
        sha256: Option<&'a RawValue>,
    }

    /// A struct also deserialises from a JSON array; the validator wants objects.
    fn object(v: &RawValue) -> bool {
        v.get().starts_with('{')
    }

    fn string_or_absent(v: Option<&RawValue>) -> bool {
        v.is_none_or(|v| v.get().starts_with('"'))
    }

    fn integer_in(v: &RawValue, range: std::ops::RangeInclusive<u64>) -> bool {
        v.get().parse::<u64>().is_ok_and(|n| range.contains(&n))
    }

    pub(super) fn parse(body: &[u8]) -> Option<Vec<Incoming>> {
        let body = body.trim_ascii_start();
        if body.starts_with(b"[") {
            let events: Vec<&RawValue> = serde_json::from_slice(body).ok()?;
            if events.is_empty() || events.len() > MAX_BATCH {
                return None;
            }
            events.iter().map(|e| accept(e.get().as_bytes())).collect()
        } else {
            Some(vec![accept(body)?])
        }
    }

    fn accept(json: &[u8]) -> Option<Incoming> {
        if !json.starts_with(b"{") {
            return None;
        }
        let e: Event = serde_json::from_slice(json).ok()?;
        let type_ = EventType::from_str(&e.type_).ok()?;
        let user_ok = e.user_id.as_deref().is_none_or(|u| id_like(u, 128));
        if !id_like(&e.id, 128)
            || !id_like(&e.client_id, 128)
            || !user_ok
            || e.timestamp.parse::<k8s_openapi::jiff::Timestamp>().is_err()
            || !object(e.data)
        {
            return None;
        }
        let data: Data = serde_json::from_str(e.data.get()).ok()?;
        let vehicle = match data.vehicle {
            Some(v) if object(v) => {
                let v: Vehicle = serde_json::from_str(v.get()).ok()?;
                let fine = !v.id.is_empty()
                    && v.id.len() <= 128
                    && [v.vin, v.stock_number, v.make, v.model]
                        .into_iter()
                        .all(string_or_absent)
                    && v.year.is_none_or(|y| integer_in(y, 1886..=2200));
                if !fine {
                    return None;
                }
                let vin = v
                    .vin
                    .and_then(|r| serde_json::from_str::<String>(r.get()).ok());
                Some((v.id, vin))
            }
            // Null, absent or not an object: the validator decides whether that is allowed.
            _ => None,
        };
        let family = type_.as_str().split('.').next().unwrap_or_default();
        if vehicle.is_none() && matches!(family, "vehicle" | "image") {
            return None;
        }
        if data.vehicle.is_some_and(|v| !object(v)) {
            return None;
        }
        for img in data.images.iter().flatten() {
            if !object(img) {
                return None;
            }
            let img: Image = serde_json::from_str(img.get()).ok()?;
            let url_ok = url::Url::parse(&img.url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            let sha_ok = img.sha256.is_none_or(|h| {
                serde_json::from_str::<&str>(h.get())
                    .is_ok_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
            });
            if !integer_in(img.index, 1..=9999) || !url_ok || !sha_ok {
                return None;
            }
        }
        let (vehicle, vin) = vehicle.map_or((None, None), |(id, vin)| (Some(id), vin));
        let lane = match (vehicle, &e.user_id) {
            (Some(v), _) => format!("vehicle:{v}"),
            (None, Some(u)) => format!("user:{u}"),
            (None, None) => format!("client:{}", e.client_id),
        };
        let body = serde_json::to_vec(&Out {
            id: &e.id,
            type_: type_.as_str(),
            timestamp: &e.timestamp,
            client_id: &e.client_id,
            user_id: e.user_id.as_deref(),
            data: e.data,
        })
        .ok()?;
        Some(Incoming {
            id: e.id.clone().into_owned(),
            type_,
            client_id: e.client_id.clone().into_owned(),
            user_id: e.user_id,
            lane,
            vin,
            body,
        })
    }
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
        assert_eq!(one[0].lane, "vehicle:veh-9");
        let batch = parse_body(json!([sample(), sample()]).to_string().as_bytes()).unwrap();
        assert_eq!(batch.len(), 2);
        let user = json!({"id": "e", "type": "user.created", "timestamp": "2026-01-01T00:00:00Z", "clientId": "c", "userId": "u", "data": {}});
        assert_eq!(
            parse_body(user.to_string().as_bytes()).unwrap()[0].lane,
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

    /// serde reads a struct from a JSON array of its fields in order; the validator wants
    /// objects, and so must the typed path.
    #[test]
    fn arrays_in_the_shape_of_a_struct_are_refused() {
        let data = json!({ "vehicle": { "id": "v" } });
        let as_array = json!([[
            "e",
            "vehicle.created",
            "2026-01-01T00:00:00Z",
            "c",
            null,
            data
        ]]);
        assert_eq!(field_of(as_array), "[0]");
        let mut s = sample();
        s["data"]["vehicle"] = json!(["veh-9"]);
        assert_eq!(field_of(s), "data.vehicle");
        let mut s = sample();
        s["data"]["images"] = json!([[1, "https://cdn.example/1.jpg"]]);
        assert_eq!(field_of(s), "data.images[0]");
        let mut s = sample();
        s["data"] = json!([{ "id": "veh-9" }]);
        assert_eq!(field_of(s), "data");
    }

    /// A repeated key: the typed path steps aside and the last value counts, as `Value`
    /// reads it, for the lane as for validation.
    #[test]
    fn repeated_keys_read_as_the_validator_reads_them() {
        let body = r#"{"id":"e","type":"vehicle.created","timestamp":"2026-01-01T00:00:00Z","clientId":"c",
            "data":{"vehicle":{"id":"first","id":"second"}}}"#;
        assert_eq!(
            parse_body(body.as_bytes()).unwrap()[0].lane,
            "vehicle:second"
        );
        let body = r#"{"id":"e","type":"vehicle.created","timestamp":"2026-01-01T00:00:00Z","clientId":"c",
            "data":{"vehicle":{"id":"v","year":2021,"year":"soon"}}}"#;
        assert_eq!(
            parse_body(body.as_bytes()).unwrap_err().field,
            "data.vehicle.year"
        );
        assert!(fast::parse(sample().to_string().as_bytes()).is_some());
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
                prop_assert_eq!(parse_envelopes(&one).unwrap(), vec![batch[0].clone()]);
                let many = serde_json::to_vec(&batch).unwrap();
                prop_assert_eq!(parse_envelopes(&many).unwrap(), batch.clone());
                // The typed path takes every well-formed event and writes what the
                // authoritative one would.
                let fast = fast::parse(&many);
                prop_assert!(fast.is_some(), "the typed path refused a valid batch");
                let want: Vec<_> = batch.iter().map(|e| Incoming::from_envelope(e).unwrap()).collect();
                prop_assert_eq!(fast, Some(want));
            }

            /// Never laxer: whatever the typed path accepts, the validator accepts and reads
            /// the same way (head fields, lane, body). Valid events with one field swapped
            /// for arbitrary JSON, or a key repeated, reach every branch.
            #[test]
            fn typed_path_agrees_with_the_validator(
                e in envelope(),
                path in prop::sample::select(vec![
                    "id", "type", "timestamp", "clientId", "userId", "data", "data.vehicle",
                    "data.vehicle.id", "data.vehicle.year", "data.vehicle.vin", "data.images",
                    "data.images.0", "data.images.0.index", "data.images.0.url",
                    "data.images.0.sha256", "data.user",
                ]),
                junk in any_json(),
                twice in any::<bool>(),
                batch in any::<bool>(),
            ) {
                let mut v = serde_json::to_value(&e).unwrap();
                let mut at = &mut v;
                let parts: Vec<&str> = path.split('.').collect();
                for p in &parts[..parts.len() - 1] {
                    at = match p.parse::<usize>() {
                        Ok(i) if at.get(i).is_some() => &mut at[i],
                        _ if at.get(*p).is_some() => &mut at[*p],
                        _ => return Ok(()),
                    };
                }
                let last = parts[parts.len() - 1];
                let mut text = if twice && at.is_object() {
                    // A repeated key, spliced into the text: `Value` keeps only the last.
                    let inner = at.to_string();
                    let dup = format!("{{{}:{},{}", serde_json::to_string(last).unwrap(), junk, &inner[1..]);
                    *at = json!("__DUP__");
                    v.to_string().replace("\"__DUP__\"", &dup)
                } else {
                    match at {
                        Value::Object(o) => { o.insert(last.to_string(), junk); }
                        Value::Array(a) if !a.is_empty() => { a[0] = junk; }
                        _ => {}
                    }
                    v.to_string()
                };
                if batch {
                    text = format!("[{text}]");
                }
                if let Some(fast) = fast::parse(text.as_bytes()) {
                    let slow = parse_envelopes(text.as_bytes());
                    prop_assert!(slow.is_ok(), "typed path accepted what the validator refuses: {text} ({slow:?})");
                    let slow = slow.unwrap();
                    prop_assert_eq!(fast.len(), slow.len());
                    for (f, s) in fast.iter().zip(&slow) {
                        let want = Incoming::from_envelope(s).unwrap();
                        prop_assert_eq!(&f.id, &want.id);
                        prop_assert_eq!(f.type_, want.type_);
                        prop_assert_eq!(&f.client_id, &want.client_id);
                        prop_assert_eq!(&f.user_id, &want.user_id);
                        prop_assert_eq!(&f.lane, &want.lane);
                        prop_assert_eq!(&f.vin, &want.vin);
                        let fb: Value = serde_json::from_slice(&f.body).unwrap();
                        let sb: Value = serde_json::from_slice(&want.body).unwrap();
                        prop_assert_eq!(fb, sb);
                    }
                }
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
