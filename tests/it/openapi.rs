//! `docs/openapi.json` must be what the operator serves (regenerate: `make openapi`).

use std::path::Path;

use serde_json::{Value, json};
use vehicle_connect::api::EventType;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_openapi_matches_the_code() {
    let path = root().join("docs/openapi.json");
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} missing ({e}); run `make openapi`", path.display()));
    let generated = format!("{}\n", vehicle_connect::ingest::openapi_document());
    assert!(
        on_disk == generated,
        "docs/openapi.json drifted from the code; run `make openapi` and commit"
    );
    let doc: Value = serde_json::from_str(&on_disk).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/v1/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} is not documented");
    }
    let schemas = &doc["components"]["schemas"];
    // One schema per type, as posted and as delivered, each with its sample as example.
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(schemas["EventType"]["enum"], json!(types));
    for t in EventType::ALL {
        for input in [true, false] {
            let name = vehicle_connect::ingest::schema::event_schema_name(t, input);
            let s = &schemas[&name];
            assert_eq!(s["properties"]["type"]["const"], t.as_str(), "{name}");
            assert_eq!(s["example"]["type"], t.as_str(), "{name} has no example");
        }
    }
    let mapping = &schemas["EventInput"]["discriminator"]["mapping"];
    assert_eq!(mapping.as_object().map(|m| m.len()), Some(11));
    let body = &doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(body["schema"]["$ref"], "#/components/schemas/EventsInput");
    assert!(body["examples"]["one"]["value"].is_object());
    assert!(body["examples"]["batch"]["value"].is_array());
    // The pull feed: GET beside POST on /v1/events, its parameters and an example page.
    let feed = &doc["paths"]["/v1/events"]["get"];
    let params: Vec<&str> = feed["parameters"]
        .as_array()
        .expect("feed parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["after", "types", "limit", "wait", "clientId"]);
    let page = &schemas["FeedResponse"];
    assert_eq!(
        page["properties"]["events"]["items"]["$ref"],
        "#/components/schemas/Event"
    );
    assert!(
        page["example"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(page["example"]["next"].is_string());
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
    // A webhook per type, its body that type's event as delivered.
    let webhooks = doc["webhooks"].as_object().expect("a webhooks section");
    assert_eq!(webhooks.len(), 11);
    for t in EventType::ALL {
        let op = &webhooks[t.as_str()]["post"];
        let name = vehicle_connect::ingest::schema::event_schema_name(t, false);
        assert_eq!(
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{name}")
        );
        for status in ["2XX", "410", "429", "5XX", "default"] {
            assert!(op["responses"].get(status).is_some(), "{t}: {status}");
        }
    }
}
