//! Tests of the mapping module, by part; shared fixtures here.

mod capture;
mod compile;
mod openapi;
mod preview;
mod render;

use super::*;
use crate::api::apiconnection::{ApiConnectionSpec, HttpMethod};

/// A made-up dealer management system: vehicles created once and updated by their id,
/// photos uploaded per image, users upserted, data notices posted.
pub(super) const DMS: &str = r#"
clientId: dealer-123
events: [vehicle.created, vehicle.updated, vehicle.added, vehicle.deleted, vehicle.processed,
         vehicle.images_uploaded, vehicle.image_uploaded, image.cropped_processed,
         user.created, user.updated, data.new]
baseUrl: https://dms.example/api
auth: {bearer: {secretRef: {name: dms-token}}}
mappings:
- events: [vehicle.created, vehicle.updated, vehicle.added]
  requests:
  - name: create-vehicle
    method: POST
    path: /v1/vehicles
    when: not remote.id
    body: |
      {"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "model": {{ vehicle.model }},
       "year": {{ vehicle.year }}, "status": "active"}
    expect: [201]
    capture: {id: {jsonPointer: /id}}
  - name: update-vehicle
    method: PUT
    path: /v1/vehicles/{{ remote.id }}
    when: remote.id is defined
    headers: {X-Source: "vehicle-connect/{{ connection.name }}"}
    body: |
      {"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "model": {{ vehicle.model }},
       "year": {{ vehicle.year }}, "status": "active"}
- events: [vehicle.deleted]
  requests:
  - name: delete-vehicle
    method: DELETE
    path: /v1/vehicles/{{ remote.id }}
    when: remote.id is defined
- events: [vehicle.processed, vehicle.images_uploaded, vehicle.image_uploaded, image.cropped_processed]
  requests:
  - name: create-vehicle
    method: POST
    path: /v1/vehicles
    when: not remote.id
    body: |
      {"vin": {{ vehicle.vin }}, "make": {{ vehicle.make }}, "model": {{ vehicle.model }},
       "year": {{ vehicle.year }}, "status": "active"}
    capture: {id: {header: Location, lastSegment: true}}
  - name: upload-photo
    method: POST
    path: /v1/vehicles/{{ remote.id }}/photos
    forEachImage:
      send: multipart
      fields: {position: "{{ image.position }}"}
- events: [user.created, user.updated]
  requests:
  - name: upsert-user
    method: PUT
    path: /v1/users/{{ user.id }}
    body: '{"name": {{ user.name }}, "email": {{ user.email }}}'
- events: [data.new]
  requests:
  - name: notify
    method: POST
    path: /v1/notifications
    query: {dataset: "{{ event.data.dataset }}"}
    body: '{"records": {{ event.data.records }}}'
"#;

pub(super) fn dms() -> ApiConnectionSpec {
    serde_yaml::from_str(DMS).unwrap()
}

/// A connection with one mapping for `vehicle.created` and the given request (YAML).
pub(super) fn one_request(request: &str) -> ApiConnectionSpec {
    let yaml = format!(
        "clientId: c\nevents: [vehicle.created]\nbaseUrl: https://api.example/root/\nmappings:\n- events: [vehicle.created]\n  requests:\n  - {}\n",
        request.trim().replace('\n', "\n    ")
    );
    serde_yaml::from_str(&yaml).unwrap()
}

pub(super) fn conn() -> ConnectionRef {
    ConnectionRef {
        name: "dms".into(),
        namespace: "dealer-123".into(),
    }
}

pub(super) fn event_with_vehicle(vehicle: serde_json::Value) -> serde_json::Value {
    let mut e = samples::sample(crate::api::EventType::VehicleCreated)
        .unwrap()
        .clone();
    e["data"]["vehicle"] = vehicle;
    e
}

pub(super) fn ctx(event: &serde_json::Value, remote: &[(&str, &str)]) -> EventContext {
    let remote = remote
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    EventContext::new(event, &conn(), remote)
}

/// Renders the only request of `one_request(request)` for `event`.
pub(super) fn render_one(
    request: &str,
    event: &serde_json::Value,
) -> Result<Option<Rendered>, RenderError> {
    let spec = one_request(request);
    let compiled = Compiled::new(&spec).unwrap();
    let chain = compiled
        .chain(crate::api::EventType::VehicleCreated)
        .unwrap();
    chain.step(0).unwrap().render(&ctx(event, &[]), None)
}

pub(super) fn compile_errors(request: &str) -> Vec<TemplateError> {
    Compiled::new(&one_request(request)).err().unwrap()
}

pub(super) fn json_body(r: &Rendered) -> serde_json::Value {
    match &r.body {
        RenderedBody::Json(b) => serde_json::from_slice(b).unwrap(),
        other => panic!("not JSON: {other:?}"),
    }
}
