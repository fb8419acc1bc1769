//! The `render` listing.

use std::collections::BTreeMap;

use super::*;
use crate::api::EventType;

fn preview(t: EventType, remote: &[(&str, &str)]) -> Result<String, PreviewError> {
    let remote: BTreeMap<String, String> = remote
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    render_preview(
        &dms(),
        "dms",
        "dealer-123",
        samples::sample(t).unwrap(),
        &remote,
    )
}

#[test]
fn a_request_is_listed_with_its_url_headers_and_body() {
    assert_eq!(
        preview(EventType::DataNew, &[]).unwrap(),
        r#"data.new evt_sample_data_new → dealer-123/dms (https://dms.example/api)
remote: nothing captured

1. notify:
   POST https://dms.example/api/v1/notifications?dataset=price-list
   Authorization: <from spec.auth>
   Idempotency-Key: <per event, request and image>
   Content-Type: application/json
   {
     "records": 42
   }
   expect: 2xx

"#
    );
}

#[test]
fn captures_carry_on_and_images_are_listed_one_by_one() {
    let out = preview(EventType::VehicleProcessed, &[]).unwrap();
    for line in [
        "1. create-vehicle:\n   POST https://dms.example/api/v1/vehicles\n",
        "   capture remote.id ← last path segment of the Location header\n   (continuing with remote.id = \"sample-id\")\n",
        "2. upload-photo, image 2 of 3 (http://127.0.0.1:8788/images/veh-9/2.jpg):\n   POST https://dms.example/api/v1/vehicles/sample-id/photos\n",
        "   Content-Type: multipart/form-data; boundary=<generated>\n   part position: 2\n   part file: <image 2 (image/jpeg) from http://127.0.0.1:8788/images/veh-9/2.jpg>\n",
    ] {
        assert!(out.contains(line), "{line}\nnot in\n{out}");
    }
    assert_eq!(out.matches("2. upload-photo, image").count(), 3);

    let out = preview(EventType::VehicleUpdated, &[("id", "dms 77")]).unwrap();
    assert!(out.contains("remote: remote.id = \"dms 77\"\n"), "{out}");
    assert!(
        out.contains("1. create-vehicle: skipped (when: not remote.id)\n"),
        "{out}"
    );
    assert!(
        out.contains("   PUT https://dms.example/api/v1/vehicles/dms%2077\n"),
        "{out}"
    );
    assert!(out.contains("   X-Source: vehicle-connect/dms\n"), "{out}");
    // The body keeps the template's key order.
    let vin = out.find("\"vin\"").unwrap();
    assert!(vin < out.find("\"make\"").unwrap() && vin < out.find("\"year\"").unwrap());
}

#[test]
fn failures_say_where_the_chain_stops() {
    let out = preview(EventType::VehicleDeleted, &[]).unwrap();
    assert!(
        out.contains("1. delete-vehicle: skipped (when: remote.id is defined)"),
        "{out}"
    );

    let mut spec = dms();
    spec.mappings[1].requests[0].when = None;
    let event = samples::sample(EventType::VehicleDeleted).unwrap();
    let err = render_preview(&spec, "dms", "ns", event, &BTreeMap::new()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PreviewError::Render { .. }));
    assert!(text.contains("1. delete-vehicle: fails\nerror: request \"delete-vehicle\" path, line 1 column 17: undefined value (remote.id)\n(the chain stops here)"), "{text}");

    spec.events.retain(|e| *e != EventType::DataNew);
    spec.mappings
        .retain(|m| !m.events.contains(&EventType::DataNew));
    let event = samples::sample(EventType::DataNew).unwrap();
    let err = render_preview(&spec, "dms", "ns", event, &BTreeMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "no mapping handles data.new");
    let err = render_preview(
        &spec,
        "dms",
        "ns",
        &serde_json::json!({"type": "x"}),
        &BTreeMap::new(),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "not an event: unknown event type \"x\"");
    spec.mappings[0].requests[0].body = Some("{{ ".into());
    let err = render_preview(&spec, "dms", "ns", event, &BTreeMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid templates:\n  request \"create-vehicle\" body"),
        "{err}"
    );
}
