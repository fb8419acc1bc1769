//! Captures from response bodies and headers.

use std::collections::BTreeMap;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn captures(yaml: &str) -> BTreeMap<String, crate::api::apiconnection::Capture> {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn captures_from_json_bodies() {
    let c =
        captures("{id: {jsonPointer: /data/0/id}, n: {jsonPointer: /n}, whole: {jsonPointer: ''}}");
    let got = capture(
        &c,
        200,
        &headers(&[]),
        br#"{"data": [{"id": "a/b"}], "n": 12.5}"#,
    );
    let err = got.unwrap_err();
    assert_eq!(err.capture, "whole");
    assert!(err.to_string().contains("is an object"), "{err}");
    let c = captures("{id: {jsonPointer: /data/0/id}, n: {jsonPointer: /n}}");
    let got = capture(
        &c,
        200,
        &headers(&[]),
        br#"{"data": [{"id": "a/b"}], "n": 12}"#,
    )
    .unwrap();
    assert_eq!(got["id"], "a/b");
    assert_eq!(got["n"], "12");
    for (body, what) in [
        (&br#"{"data": []}"#[..], "nothing at"),
        (br#"{"data": [{"id": null}]}"#, "null"),
        (br#"{"data": [{"id": ["x"]}]}"#, "an array"),
        (br#"{"data": [{"id": ""}]}"#, "empty"),
        (br#"<html>"#, "not JSON"),
    ] {
        let c = captures("{id: {jsonPointer: /data/0/id}}");
        let err = capture(&c, 201, &headers(&[]), body).unwrap_err();
        assert!(err.message.contains(what), "{what}: {err}");
        assert!(err.to_string().starts_with("capture \"id\": "), "{err}");
    }
}

#[test]
fn captures_from_location_and_other_headers() {
    let c = captures("{id: {header: Location, lastSegment: true}, etag: {header: ETag}}");
    for (location, id) in [
        ("https://dms.example/api/v1/vehicles/77", "77"),
        ("/v1/vehicles/77/", "77"),
        ("/v1/vehicles/77?expand=all#x", "77"),
        ("/v1/vehicles/veh%209", "veh 9"),
        ("77", "77"),
    ] {
        let got = capture(
            &c,
            201,
            &headers(&[("location", location), ("etag", "\"v1\"")]),
            b"",
        )
        .unwrap();
        assert_eq!(got["id"], id, "{location}");
        assert_eq!(got["etag"], "\"v1\"");
    }
    for location in ["https://dms.example", "https://dms.example/", "/", ""] {
        let err = capture(
            &c,
            201,
            &headers(&[("location", location), ("etag", "x")]),
            b"",
        )
        .unwrap_err();
        assert_eq!(err.capture, "id", "{location}");
    }
    let err = capture(&c, 201, &headers(&[("etag", "x")]), b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "capture \"id\": the response (201) has no Location header"
    );
}
