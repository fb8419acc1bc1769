//! The OpenAPI check against a made-up DMS document: the DMS mapping passes, and each kind of
//! difference is reported where it is.

use super::*;
use crate::api::EventType;
use crate::mapping::openapi::{SpecMismatch, check};

const DOC: &str = r##"
openapi: 3.0.3
info: {title: Made-up DMS, version: "1.4"}
servers:
- url: https://dms.example/api
security: [{bearer: []}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
  parameters:
    IdempotencyKey: {name: Idempotency-Key, in: header, required: true, schema: {type: string}}
    VehicleId: {name: vehicleId, in: path, required: true, schema: {type: string}}
  schemas:
    Vehicle:
      type: object
      additionalProperties: false
      required: [id, vin, make, model, status]
      properties:
        id: {type: string, readOnly: true}
        vin: {type: string, minLength: 11, maxLength: 17}
        make: {type: string}
        model: {type: string}
        year: {type: integer, minimum: 1900, exclusiveMinimum: true, maximum: 2030}
        trim: {type: string, nullable: true}
        status: {type: string, enum: [active, sold, archived]}
    User:
      type: object
      required: [name, email]
      properties:
        name: {type: string}
        email: {type: string, format: email}
paths:
  /v1/vehicles:
    post:
      parameters: [{$ref: '#/components/parameters/IdempotencyKey'}]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Vehicle'}
      responses:
        201: {description: created}
  /v1/vehicles/{vehicleId}:
    parameters: [{$ref: '#/components/parameters/VehicleId'}]
    put:
      parameters: [{$ref: '#/components/parameters/IdempotencyKey'}]
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/Vehicle'}
      responses:
        200: {description: updated}
    delete:
      responses:
        204: {description: deleted}
  /v1/vehicles/{vehicleId}/photos:
    parameters: [{$ref: '#/components/parameters/VehicleId'}]
    post:
      parameters: [{$ref: '#/components/parameters/IdempotencyKey'}]
      requestBody:
        required: true
        content:
          multipart/form-data:
            schema:
              type: object
              required: [file, position]
              properties:
                file: {type: string, format: binary}
                position: {type: integer}
                caption: {type: string}
      responses:
        201: {description: stored}
  /v1/vehicles/{vehicleId}/photos/{position}:
    put:
      requestBody:
        content:
          image/*: {schema: {type: string, format: binary}}
      responses:
        204: {description: stored}
  /v1/users/{userId}:
    put:
      requestBody:
        content:
          application/json:
            schema: {$ref: '#/components/schemas/User'}
      responses:
        204: {description: stored}
  /v1/notifications:
    post:
      parameters:
      - {name: dataset, in: query, required: true, schema: {type: string}}
      requestBody:
        required: true
        content:
          application/json:
            schema:
              type: object
              required: [records]
              properties:
                records: {type: integer, maximum: 1000}
      responses:
        202: {description: accepted}
"##;

fn run(spec: &ApiConnectionSpec, doc: &str) -> Vec<SpecMismatch> {
    let compiled = Compiled::new(spec).unwrap();
    match check(doc, &compiled, spec, samples::samples()) {
        Ok(()) => Vec::new(),
        Err(list) => list,
    }
}

/// The DMS spec changed by `edit`, checked against `DOC`.
fn mismatches(edit: impl FnOnce(&mut ApiConnectionSpec)) -> Vec<SpecMismatch> {
    let mut spec = dms();
    edit(&mut spec);
    run(&spec, DOC)
}

/// Mapping 0 (vehicle.created, .updated, .added), request `i`.
fn vehicle_request(
    spec: &mut ApiConnectionSpec,
    i: usize,
) -> &mut crate::api::apiconnection::ApiRequest {
    &mut spec.mappings[0].requests[i]
}

const BODY: &str = r#"{"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "model": {{ vehicle.model }}, "year": {{ vehicle.year }}, "trim": {{ vehicle.trim | default(none) }}, "status": "active"}"#;

#[test]
fn the_dms_mapping_matches_its_document() {
    // `trim` null is allowed by `nullable`; `id` is required but readOnly.
    let got = mismatches(|s| vehicle_request(s, 0).body = Some(BODY.into()));
    assert!(got.is_empty(), "{got:#?}");
}

#[test]
fn a_wrong_path_names_the_request_and_what_the_document_has() {
    let got = mismatches(|s| vehicle_request(s, 0).path = "/v1/vehicle".into());
    assert_eq!(got.len(), 1, "{got:#?}");
    let m = &got[0];
    assert_eq!(
        (m.request.as_str(), m.location.as_str()),
        ("create-vehicle", "path")
    );
    assert_eq!(m.event_type, Some(EventType::VehicleCreated));
    assert!(
        m.message.starts_with(
            "no operation POST /v1/vehicle (path template \"/v1/vehicle\"); the document has "
        ) && m
            .message
            .contains("POST /v1/vehicles, PUT /v1/vehicles/{vehicleId}"),
        "{m}"
    );
    assert!(
        m.to_string().starts_with(
            "request \"create-vehicle\" (vehicle.created) path: no operation POST /v1/vehicle "
        ),
        "{m}"
    );
}

#[test]
fn a_wrong_method_names_the_methods_the_path_has() {
    let got = mismatches(|s| vehicle_request(s, 1).method = HttpMethod::Patch);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].location, "method");
    assert_eq!(
        got[0].message,
        "PATCH /v1/vehicles/sample-id matches /v1/vehicles/{vehicleId}, which has no PATCH (it has PUT, DELETE)"
    );
}

#[test]
fn body_schema_failures_name_the_property_and_the_schema_keyword() {
    let vehicle = "/components/schemas/Vehicle";
    let cases = [
        // A missing required property.
        (
            r#"{"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "status": "active"}"#,
            "body",
            format!("{vehicle}/required"),
            "\"model\" is a required property",
        ),
        // A property the schema does not allow.
        (
            r#"{"vin": {{ vehicle.vin }}, "make": "VW", "model": "Golf", "status": "active", "color": "red"}"#,
            "body",
            format!("{vehicle}/additionalProperties"),
            "color",
        ),
        // A value outside the enum.
        (
            r#"{"vin": {{ vehicle.vin }}, "make": "VW", "model": "Golf", "status": "new"}"#,
            "body /status",
            format!("{vehicle}/properties/status/enum"),
            "\"new\"",
        ),
        // Out of range, and a draft 4 boolean exclusiveMinimum.
        (
            r#"{"vin": {{ vehicle.vin }}, "make": "VW", "model": "Golf", "status": "sold", "year": {{ vehicle.year + 100 }}}"#,
            "body /year",
            format!("{vehicle}/properties/year/maximum"),
            "2121",
        ),
        (
            r#"{"vin": {{ vehicle.vin }}, "make": "VW", "model": "Golf", "status": "sold", "year": 1900}"#,
            "body /year",
            format!("{vehicle}/properties/year/minimum"),
            "1900",
        ),
        // null where the schema is not nullable.
        (
            r#"{"vin": {{ vehicle.vin }}, "make": null, "model": "Golf", "status": "sold"}"#,
            "body /make",
            format!("{vehicle}/properties/make/type"),
            "null",
        ),
    ];
    for (body, location, schema_path, text) in cases {
        let got = mismatches(|s| vehicle_request(s, 0).body = Some(body.into()));
        assert_eq!(got.len(), 1, "{body}: {got:#?}");
        let m = &got[0];
        assert_eq!(m.request, "create-vehicle");
        assert_eq!(m.location, location, "{body}");
        assert_eq!(
            m.schema_path.as_deref(),
            Some(schema_path.as_str()),
            "{body}"
        );
        assert!(m.message.contains(text), "{body}: {m}");
    }
}

#[test]
fn an_inline_schema_is_named_by_its_place_under_paths() {
    let got = mismatches(|s| {
        s.mappings[4].requests[0].body =
            Some(r#"{"records": {{ event.data.records * 100 }}}"#.into())
    });
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].location, "body /records");
    assert_eq!(
        got[0].schema_path.as_deref(),
        Some(
            "/paths/~1v1~1notifications/post/requestBody/content/application~1json/schema/properties/records/maximum"
        )
    );
    assert_eq!(got[0].event_type, Some(EventType::DataNew));
}

fn fields(s: &mut ApiConnectionSpec) -> &mut std::collections::BTreeMap<String, String> {
    let each = s.mappings[2].requests[1].for_each_image.as_mut().unwrap();
    each.fields.as_mut().unwrap()
}

#[test]
fn multipart_parts_are_checked_against_the_schema() {
    let got = mismatches(|s| {
        fields(s).remove("position");
    });
    let got: Vec<_> = got
        .iter()
        .map(|m| (m.request.as_str(), m.location.as_str()))
        .collect();
    assert_eq!(got, [("upload-photo", "multipart field position")]);
    let got = mismatches(|s| {
        fields(s).insert("angle".into(), "front".into());
    });
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].location, "multipart field angle");
    assert!(got[0].message.contains("not a property"), "{}", got[0]);
}

#[test]
fn required_headers_and_query_parameters_must_be_sent() {
    // The operator's idempotency header under another name no longer supplies it.
    let got = mismatches(|s| s.idempotency_header = "X-Request-Id".into());
    let mut places: Vec<_> = got
        .iter()
        .map(|m| (m.request.as_str(), m.location.as_str()))
        .collect();
    places.sort();
    places.dedup();
    assert_eq!(
        places,
        [
            ("create-vehicle", "header Idempotency-Key"),
            ("update-vehicle", "header Idempotency-Key"),
            ("upload-photo", "header Idempotency-Key")
        ]
    );
    // A required header the mapping sets counts.
    let doc = DOC.replace(
        "  /v1/users/{userId}:\n    put:\n",
        "  /v1/users/{userId}:\n    put:\n      parameters: [{name: X-Dealer, in: header, required: true}]\n",
    );
    let got = run(&dms(), &doc);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (got[0].request.as_str(), got[0].location.as_str()),
        ("upsert-user", "header X-Dealer")
    );
    let mut spec = dms();
    spec.mappings[3].requests[0].headers =
        Some([("x-dealer".to_string(), "{{ event.clientId }}".to_string())].into());
    assert!(run(&spec, &doc).is_empty());
    let got = mismatches(|s| s.mappings[4].requests[0].query = None);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].location, "query dataset");
    assert!(
        got[0]
            .to_string()
            .contains("requires query parameter \"dataset\""),
        "{}",
        got[0]
    );
}

#[test]
fn bodies_must_be_sent_exactly_when_the_operation_takes_one() {
    let got = mismatches(|s| s.mappings[1].requests[0].body = Some("{}".into()));
    assert_eq!(
        got[0].message,
        "the operation takes no request body; the mapping sends one"
    );
    let got = mismatches(|s| vehicle_request(s, 1).body = None);
    assert_eq!(
        got[0].message,
        "the operation requires a request body; the mapping sends none"
    );
    assert_eq!(got[0].request, "update-vehicle");
}

#[test]
fn raw_images_need_an_accepted_content_type_and_auth_is_required_by_security() {
    let raw = |s: &mut ApiConnectionSpec| {
        let r = &mut s.mappings[2].requests[1];
        r.method = HttpMethod::Put;
        r.path = "/v1/vehicles/{{ remote.id }}/photos/{{ image.position }}".into();
        let each = r.for_each_image.as_mut().unwrap();
        each.send = crate::api::apiconnection::ImageSend::Raw;
        each.fields = None;
    };
    assert!(mismatches(raw).is_empty());
    let png_only = DOC.replace("image/*: {schema", "image/png: {schema");
    let mut spec = dms();
    raw(&mut spec);
    let got = run(&spec, &png_only);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].message,
        "the operation does not accept image/jpeg (it accepts image/png)"
    );
    // Without spec.auth, every operation under the document's security is refused.
    let got = mismatches(|s| s.auth = None);
    assert!(
        !got.is_empty() && got.iter().all(|m| m.location == "auth"),
        "{got:#?}"
    );
}

#[test]
fn server_paths_and_base_paths_line_up() {
    // baseUrl at the host root: mapping paths carry the server's /api prefix.
    let mut spec = dms();
    spec.base_url = "https://dms.example".into();
    for m in &mut spec.mappings {
        for r in &mut m.requests {
            r.path = format!("/api{}", r.path);
        }
    }
    assert!(run(&spec, DOC).is_empty());
    let got = run(
        &dms(),
        &DOC.replace("url: https://dms.example/api", "url: /api"),
    );
    assert!(got.is_empty(), "{got:#?}");
}

#[test]
fn a_request_that_does_not_render_for_a_sample_is_reported() {
    let got =
        mismatches(|s| vehicle_request(s, 0).body = Some(r#"{"vin": {{ vehicle.nope }}}"#.into()));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].to_string(),
        "request \"create-vehicle\" (vehicle.created) body, line 1 column 12: undefined value (vehicle.nope)"
    );
}

#[test]
fn unusable_documents_are_one_mismatch() {
    for (doc, text) in [
        ("swagger: '2.0'\npaths: {}", "Swagger 2.0"),
        ("openapi: 3.0.0\ninfo: {}", "no `paths`"),
        ("{ not yaml: [", "neither JSON nor YAML"),
        ("openapi: 4.0.0\npaths: {}", "OpenAPI 4.0.0"),
    ] {
        let got = run(&dms(), doc);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].location, "document");
        assert!(
            got[0].to_string().starts_with("openapi document: ") && got[0].message.contains(text),
            "{}",
            got[0]
        );
    }
}

#[test]
fn openapi_3_1_documents_use_draft_2020_12() {
    let doc = serde_json::json!({
        "openapi": "3.1.0",
        "info": {"title": "DMS", "version": "2"},
        "paths": {
            "/v1/users/{userId}": {"put": {
                "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/$defs/User"}}}},
                "responses": {"204": {"description": "stored"}}
            }}
        },
        "$defs": {"User": {
            "type": "object",
            "required": ["name", "email"],
            "properties": {
                "name": {"type": ["string", "null"], "maxLength": 5},
                "email": {"type": "string"}
            }
        }}
    });
    let mut spec: ApiConnectionSpec = serde_yaml::from_str(DMS).unwrap();
    spec.events = vec![EventType::UserCreated];
    spec.mappings
        .retain(|m| m.events.contains(&EventType::UserCreated));
    spec.mappings[0].events = vec![EventType::UserCreated];
    let got = run(&spec, &doc.to_string());
    // "Ana Pérez" is longer than 5.
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].location, "body /name");
    assert_eq!(
        got[0].schema_path.as_deref(),
        Some("/$defs/User/properties/name/maxLength")
    );
    spec.mappings[0].requests[0].body = Some(r#"{"name": null, "email": {{ user.email }}}"#.into());
    assert!(run(&spec, &doc.to_string()).is_empty());
}
