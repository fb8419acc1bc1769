//! `docs/openapi.json` must be what the operator serves (regenerate: `make openapi`).

#[test]
fn checked_in_openapi_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} missing ({e}); run `make openapi`", path.display()));
    let generated = format!("{}\n", vehicle_connect::ingest::openapi_document());
    assert!(
        on_disk == generated,
        "docs/openapi.json drifted from the code; run `make openapi` and commit"
    );
    let doc: serde_json::Value = serde_json::from_str(&on_disk).unwrap();
    for p in [
        "/v1/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} is not documented");
    }
    assert!(doc["components"]["schemas"].get("Envelope").is_some());
    // The pull feed: GET beside POST on /v1/events, its parameters and an example page.
    let feed = &doc["paths"]["/v1/events"]["get"];
    let params: Vec<&str> = feed["parameters"]
        .as_array()
        .expect("feed parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["after", "types", "limit", "wait", "clientId"]);
    assert!(doc["paths"]["/v1/events"].get("post").is_some());
    let page = &doc["components"]["schemas"]["FeedResponse"];
    assert!(
        page["example"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(page["example"]["next"].is_string());
    assert!(doc["components"]["securitySchemes"].get("bearer").is_some());
}
