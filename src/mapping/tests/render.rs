//! Rendering: escaping per place, undefined values, `when`, images, captures between steps.

use serde_json::json;

use super::*;

const HOSTILE: [&str; 8] = [
    r#"WVW"ZZZ"#,
    r"back\slash\",
    "}{\"admin\": true, \"x\": \"",
    "line\nbreak\r\n",
    "</script><script>alert(1)</script>",
    "Pérez 🚗 \u{2028}\u{0000}",
    "{{ 7*7 }}{% raw %}",
    "\"}, {\"vin\": \"evil",
];

#[test]
fn hostile_values_stay_inside_their_json_strings() {
    let request = r#"
name: create
method: POST
path: /v
body: |
  {"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "list": [{{ vehicle.model }}], "n": {{ vehicle.year }}}
"#;
    for bad in HOSTILE {
        let event =
            event_with_vehicle(json!({"vin": bad, "make": bad, "model": bad, "year": 2021}));
        let r = render_one(request, &event).unwrap().unwrap();
        let body = json_body(&r);
        assert_eq!(
            body,
            json!({"vin": bad, "make": bad, "list": [bad], "n": 2021}),
            "{bad:?}"
        );
    }
}

#[test]
fn tojson_is_written_as_is_and_safe_text_must_be_json() {
    let event = event_with_vehicle(json!({"vin": "V\"1", "make": "VW", "tags": ["a", "b"]}));
    let ok = r#"
name: create
method: POST
path: /v
body: '{"vehicle": {{ vehicle | tojson }}, "tags": {{ vehicle.tags }}, "vin": {{ vehicle.vin | tojson }}}'
"#;
    let r = render_one(ok, &event).unwrap().unwrap();
    assert_eq!(
        json_body(&r),
        json!({"vehicle": {"vin": "V\"1", "make": "VW", "tags": ["a", "b"]}, "tags": ["a", "b"], "vin": "V\"1"})
    );
    let unsafe_ =
        "name: create\nmethod: POST\npath: /v\nbody: '{\"vin\": \"{{ vehicle.vin | safe }}\"}'";
    let err = render_one(unsafe_, &event).unwrap_err();
    assert_eq!(err.field, "body");
    assert!(err.message.contains("one JSON value"), "{err}");
    // Quoting a value by hand gives invalid JSON, with a hint.
    let quoted = "name: create\nmethod: POST\npath: /v\nbody: '{\"make\": \"{{ vehicle.make }}\"}'";
    let err = render_one(quoted, &event).unwrap_err();
    assert!(
        err.message.contains("not JSON") && err.message.contains("without quotes"),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("request \"create\" body: "),
        "{err}"
    );
}

#[test]
fn autoescape_blocks_do_not_switch_json_escaping_off() {
    let event = event_with_vehicle(json!({"vin": "a\", \"admin\": true, \"b\": \""}));
    let request = "name: create\nmethod: POST\npath: /v\nbody: '{% autoescape false %}{\"vin\": {{ vehicle.vin }}}{% endautoescape %}'";
    let r = render_one(request, &event).unwrap().unwrap();
    assert_eq!(
        json_body(&r),
        json!({"vin": "a\", \"admin\": true, \"b\": \""})
    );
}

#[test]
fn path_values_stay_inside_one_segment() {
    let request = "name: get\nmethod: GET\npath: '/v1/vehicles/{{ vehicle.id }}/photos'";
    let cases = [
        ("/../admin", "/v1/vehicles/%2F..%2Fadmin/photos"),
        ("a%2Fb", "/v1/vehicles/a%252Fb/photos"),
        ("x?x=1", "/v1/vehicles/x%3Fx%3D1/photos"),
        ("frag#top", "/v1/vehicles/frag%23top/photos"),
        ("with space", "/v1/vehicles/with%20space/photos"),
        ("Pérez", "/v1/vehicles/P%C3%A9rez/photos"),
        ("veh-9_a.b~c", "/v1/vehicles/veh-9_a.b~c/photos"),
    ];
    for (id, want) in cases {
        let r = render_one(request, &event_with_vehicle(json!({"id": id})))
            .unwrap()
            .unwrap();
        assert_eq!(r.path, want, "{id:?}");
        let url = r.url("https://dms.example/api/").unwrap();
        assert_eq!(url.path(), format!("/api{want}"), "{id:?}");
        assert_eq!(url.query(), None);
        assert_eq!(url.fragment(), None);
    }
    // Numbers are text; `.`, `..`, empty and null are refused.
    let r = render_one(request, &event_with_vehicle(json!({"id": 42})))
        .unwrap()
        .unwrap();
    assert_eq!(r.path, "/v1/vehicles/42/photos");
    for id in [
        json!(".."),
        json!("."),
        json!(""),
        json!(null),
        json!({"a": 1}),
    ] {
        let err = render_one(request, &event_with_vehicle(json!({"id": id}))).unwrap_err();
        assert_eq!(err.field, "path", "{id}: {err}");
    }
    // A dot segment written as text or reached by encoding is refused too.
    let err = render_one(
        "name: get\nmethod: GET\npath: '/v1/%2e%2e/{{ vehicle.id }}'",
        &event_with_vehicle(json!({"id": "x"})),
    )
    .unwrap_err();
    assert!(err.message.contains("'..'"), "{err}");
    // A trailing slash written in the template stays.
    let r = render_one(
        "name: get\nmethod: GET\npath: '/v1/{{ vehicle.id }}/'",
        &event_with_vehicle(json!({"id": "x"})),
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.path, "/v1/x/");
}

#[test]
fn header_values_with_line_breaks_are_refused() {
    let request = "name: get\nmethod: GET\npath: /v\nheaders: {X-Vin: '{{ vehicle.vin }}'}";
    let err = render_one(
        request,
        &event_with_vehicle(json!({"vin": "V1\r\nX-Injected: 1"})),
    )
    .unwrap_err();
    assert_eq!(err.field, "headers.X-Vin");
    assert!(err.to_string().contains("line break"), "{err}");
    let err = render_one(request, &event_with_vehicle(json!({"vin": "a\u{7}b"}))).unwrap_err();
    assert_eq!(err.field, "headers.X-Vin");
    let r = render_one(request, &event_with_vehicle(json!({"vin": "Pérez\tV1"})))
        .unwrap()
        .unwrap();
    assert_eq!(r.header("x-vin"), Some("Pérez\tV1"));
}

#[test]
fn query_values_are_plain_and_none_is_empty() {
    let request = "name: get\nmethod: GET\npath: /v\nquery: {vin: '{{ vehicle.vin }}', stock: '{{ vehicle.stockNumber }}'}";
    let r = render_one(
        request,
        &event_with_vehicle(json!({"vin": "a&b=c d", "stockNumber": null})),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        r.query,
        vec![
            ("stock".to_string(), String::new()),
            ("vin".to_string(), "a&b=c d".to_string())
        ]
    );
    let url = r.url("https://dms.example/api").unwrap();
    assert_eq!(
        url.as_str(),
        "https://dms.example/api/v?stock=&vin=a%26b%3Dc+d"
    );
    let err = render_one(
        "name: get\nmethod: GET\npath: /v\nquery: {all: '{{ vehicle }}'}",
        &event_with_vehicle(json!({"vin": "x"})),
    )
    .unwrap_err();
    assert!(err.message.contains("map is not text"), "{err}");
}

#[test]
fn undefined_values_are_errors_but_testable() {
    let event = event_with_vehicle(json!({"id": "veh-9"}));
    // Printing a missing capture fails with where and what.
    let err = render_one("name: put\nmethod: PUT\npath: '/v/{{ remote.id }}'", &event).unwrap_err();
    assert_eq!(err.field, "path");
    assert_eq!((err.line, err.column), (Some(1), Some(7)));
    assert!(
        err.message.contains("undefined") && err.message.contains("remote.id"),
        "{err}"
    );
    // Strict about typos elsewhere as well.
    let err = render_one(
        "name: put\nmethod: PUT\npath: /v\nbody: '{{ vehicle.vni }}'",
        &event,
    )
    .unwrap_err();
    assert_eq!(err.field, "body");
    let err = render_one(
        "name: put\nmethod: PUT\npath: '/v/{{ vehicel.id }}'",
        &event,
    )
    .unwrap_err();
    assert!(err.message.contains("undefined"), "{err}");
    // Tests and defaults see undefined values without failing.
    for (when, runs) in [
        ("not remote.id", true),
        ("remote.id is defined", false),
        ("remote.id is undefined and vehicle.id == 'veh-9'", true),
        ("vehicle.trim", false),
    ] {
        let request = format!(
            "name: put\nmethod: PUT\npath: /v\nwhen: \"{when}\"\nbody: '{{{{ vehicle.trim | default(\"none\") }}}}'"
        );
        let r = render_one(&request, &event).unwrap();
        assert_eq!(r.is_some(), runs, "{when}");
    }
}

#[test]
fn when_skips_and_captures_feed_the_next_step() {
    let spec = dms();
    let compiled = Compiled::new(&spec).unwrap();
    let event = samples::sample(crate::api::EventType::VehicleUpdated).unwrap();
    let chain = compiled
        .chain(crate::api::EventType::VehicleUpdated)
        .unwrap();
    assert_eq!(chain.len(), 2);
    let mut c = ctx(event, &[]);
    let create = chain.step(0).unwrap().render(&c, None).unwrap().unwrap();
    assert_eq!(
        (create.method, create.path.as_str()),
        (HttpMethod::Post, "/v1/vehicles")
    );
    assert!(create.expect.accepts(201) && !create.expect.accepts(200));
    // The API answers with the new id; the update now runs against it.
    let body = br#"{"id": "dms/77"}"#;
    let got = capture(&create.captures, 201, &http::HeaderMap::new(), body).unwrap();
    c.remember(got);
    assert!(chain.step(0).unwrap().render(&c, None).unwrap().is_none());
    let update = chain.step(1).unwrap().render(&c, None).unwrap().unwrap();
    assert_eq!(update.path, "/v1/vehicles/dms%2F77");
    assert_eq!(update.header("X-Source"), Some("vehicle-connect/dms"));
    assert!(update.expect.accepts(204) && !update.expect.accepts(301));
}

#[test]
fn images_render_once_each_with_their_position() {
    let compiled = Compiled::new(&dms()).unwrap();
    let event = samples::sample(crate::api::EventType::VehicleProcessed).unwrap();
    let chain = compiled
        .chain(crate::api::EventType::VehicleProcessed)
        .unwrap();
    let step = chain.step(1).unwrap();
    let c = ctx(event, &[("id", "veh 9")]);
    assert_eq!(step.runs(&c), vec![Some(0), Some(1), Some(2)]);
    let r = step.render(&c, Some(1)).unwrap().unwrap();
    assert_eq!(r.path, "/v1/vehicles/veh%209/photos");
    assert_eq!(
        r.body,
        RenderedBody::Multipart {
            file_field: "file".into(),
            fields: vec![("position".into(), "2".into())],
            image: 1
        }
    );
    assert!(step.render(&c, None).is_err());
    assert!(step.render(&c, Some(3)).is_err());
    assert!(chain.step(0).unwrap().render(&c, Some(0)).is_err());
    // No images: nothing to send.
    let created = samples::sample(crate::api::EventType::VehicleCreated).unwrap();
    assert!(step.runs(&ctx(created, &[])).is_empty());
}

#[test]
fn every_sample_event_renders_its_whole_chain() {
    let spec = dms();
    let compiled = Compiled::new(&spec).unwrap();
    for event in samples::samples() {
        let t: crate::api::EventType = event["type"].as_str().unwrap().parse().unwrap();
        let chain = compiled.chain(t).unwrap();
        // First without anything captured, then as a vehicle the API already knows.
        for remote in [&[][..], &[("id", "dms-77")][..]] {
            let mut c = ctx(event, remote);
            let mut sent = 0;
            for step in chain.steps() {
                for image in step.runs(&c) {
                    let Some(r) = step
                        .render(&c, image)
                        .unwrap_or_else(|e| panic!("{t}: {e}"))
                    else {
                        continue;
                    };
                    sent += 1;
                    assert!(r.url(&spec.base_url).is_ok());
                    if let RenderedBody::Json(b) = &r.body {
                        serde_json::from_slice::<serde_json::Value>(b).unwrap();
                    }
                    if !r.captures.is_empty() {
                        let mut h = http::HeaderMap::new();
                        h.insert(
                            "location",
                            "https://dms.example/api/v1/vehicles/dms-1".parse().unwrap(),
                        );
                        let got = capture(&r.captures, 201, &h, br#"{"id": "dms-1"}"#).unwrap();
                        c.remember(got);
                    }
                }
            }
            let deleted_unknown = t == crate::api::EventType::VehicleDeleted && remote.is_empty();
            assert_eq!(sent > 0, !deleted_unknown, "{t} with {remote:?}");
        }
    }
}

#[test]
fn output_and_work_are_bounded() {
    let event = event_with_vehicle(json!({"vin": "x"}));
    let big = "name: p\nmethod: POST\npath: /v\nbody: '{{ \"x\" * 2000000 }}'";
    let err = render_one(big, &event).unwrap_err();
    assert!(err.message.contains("more than"), "{err}");
    let slow = "name: p\nmethod: POST\npath: /v\nbody: '[{% for i in range(1000) %}{% for j in range(1000) %}1,{% endfor %}{% endfor %}1]'";
    let err = render_one(slow, &event).unwrap_err();
    assert!(err.message.contains("too long"), "{err}");
}

#[test]
fn compiled_mappings_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    shared::<Compiled>();
    shared::<EventContext>();
    shared::<Rendered>();
}
