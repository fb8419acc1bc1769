//! `docs/openapi.json` must be what the operator serves (regenerate: `make openapi`), and must
//! say what the operator really accepts and sends: the sample events, the operator's own
//! verdicts on valid and invalid events, and real webhook requests are checked against it by
//! an independent validator (`tests/peers/openapi/check.py`: openapi-core and jsonschema, in
//! the venv of `scripts/dms-venv.sh`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::{Value, json};
use vehicle_connect::api::EventType;
use vehicle_connect::ingest::envelope::parse_body;

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
        "/v1/deliveries",
        "/v1/deliveries/{id}",
        "/v1/events/{id}",
        "/v1/targets",
        "/v1/targets/{kind}/{namespace}/{name}",
        "/v1/preview/file-names",
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

/// What `check.py` says of one case.
#[derive(Debug, Deserialize)]
struct Verdict {
    name: String,
    valid: bool,
    errors: Vec<String>,
}

/// Runs `tests/peers/openapi/check.py` on `cases` against `docs/openapi.json`. Panics if the
/// venv cannot be made or the checker fails: these tests never pass without it.
fn check(cases: &[Value]) -> Vec<Verdict> {
    let python = crate::support::dms::venv_python()
        .unwrap_or_else(|e| panic!("the OpenAPI checker needs the venv: {e}"));
    let script: PathBuf = root().join("tests/peers/openapi/check.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(root().join("docs/openapi.json"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", python.display(), script.display()));
    // The checker reads all of stdin before it writes anything.
    let input = serde_json::to_vec(cases).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let wrote = stdin.write_all(&input);
    drop(stdin);
    let out = child.wait_with_output().expect("check.py ran");
    assert!(
        out.status.success() && wrote.is_ok(),
        "check.py failed ({}; writing its input: {wrote:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<Verdict> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check.py printed no verdicts ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(verdicts.len(), cases.len(), "a verdict per case");
    for (v, c) in verdicts.iter().zip(cases) {
        assert_eq!(v.name, c["name"], "verdicts in the order of the cases");
    }
    verdicts
}

fn ingest_case(name: &str, body: String) -> Value {
    json!({ "name": name, "kind": "ingest", "body": body })
}

/// The sample events, by type, as files hold them.
fn samples() -> Vec<(EventType, String)> {
    let dir = root().join("examples/events");
    let mut out = Vec::new();
    for t in EventType::ALL {
        let path = dir.join(format!("{t}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push((t, text));
    }
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files,
        out.len(),
        "{}: a sample per type, nothing else",
        dir.display()
    );
    out
}

#[test]
fn every_sample_event_matches_the_request_schema() {
    let samples = samples();
    let mut cases: Vec<Value> = samples
        .iter()
        .map(|(t, text)| ingest_case(t.as_str(), text.clone()))
        .collect();
    let all: Vec<Value> = samples
        .iter()
        .map(|(_, text)| serde_json::from_str(text).unwrap())
        .collect();
    cases.push(ingest_case("all eleven as a batch", json!(all).to_string()));
    for (v, c) in check(&cases).iter().zip(&cases) {
        assert!(
            v.valid,
            "{}: refused by the schema: {:#?}",
            v.name, v.errors
        );
        let body = c["body"].as_str().unwrap();
        assert!(
            parse_body(body.as_bytes()).is_ok(),
            "{}: refused by the operator",
            v.name
        );
    }
}

/// `base` with the value at the dotted `path` (`data.images.0.url`) set, or removed (`None`).
fn with(base: &Value, path: &str, value: Option<Value>) -> Value {
    let mut v = base.clone();
    let parts: Vec<&str> = path.split('.').collect();
    let (last, parents) = parts.split_last().unwrap();
    let mut at = &mut v;
    for p in parents {
        at = match p.parse::<usize>() {
            Ok(i) => &mut at[i],
            Err(_) => &mut at[*p],
        };
    }
    match (at, value) {
        (Value::Array(a), Some(x)) => a[last.parse::<usize>().unwrap()] = x,
        (Value::Object(o), Some(x)) => {
            o.insert(last.to_string(), x);
        }
        (Value::Object(o), None) => {
            o.remove(*last);
        }
        (other, _) => panic!("{path}: cannot set in {other}"),
    }
    v
}

/// The schema accepts exactly what the operator accepts: events at and past each check of
/// `envelope::validate`, posted to the operator's own parser and to the independent
/// validator, get the same verdict (and the verdict expected here, so that neither side can
/// drift unnoticed).
#[test]
fn the_request_schema_accepts_what_the_operator_accepts() {
    let processed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/events/vehicle.processed.json")).unwrap(),
    )
    .unwrap();
    let user: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/events/user.created.json")).unwrap(),
    )
    .unwrap();
    let data_new: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/events/data.new.json")).unwrap(),
    )
    .unwrap();
    let p = |path: &str, v: Value| with(&processed, path, Some(v));
    let drop = |path: &str| with(&processed, path, None);
    let long = "x".repeat(129);
    let hex = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";
    let valid: Vec<(&str, Value)> = vec![
        ("no userId", drop("userId")),
        ("null userId", p("userId", Value::Null)),
        (
            "other top-level fields",
            p("source", json!({ "any": ["thing"] })),
        ),
        ("id of every allowed character", p("id", json!("Az09_.:@-"))),
        ("id of 128", p("id", json!("x".repeat(128)))),
        (
            "timestamp with offset and fraction",
            p("timestamp", json!("2026-11-27T11:15:30.123+01:00")),
        ),
        (
            "timestamp in lower case",
            p("timestamp", json!("2026-11-27t10:15:30z")),
        ),
        (
            "vehicle id of 128, any characters",
            p("data.vehicle.id", json!(format!("v/{}", "x".repeat(126)))),
        ),
        (
            "vehicle fields null",
            p(
                "data.vehicle",
                json!({ "id": "v", "vin": null, "stockNumber": null, "make": null, "model": null, "year": null }),
            ),
        ),
        (
            "vehicle with other fields",
            p("data.vehicle.color", json!({ "name": "red" })),
        ),
        ("year 1886", p("data.vehicle.year", json!(1886))),
        ("year 2200", p("data.vehicle.year", json!(2200))),
        ("no images", drop("data.images")),
        ("null images", p("data.images", Value::Null)),
        ("no image", p("data.images", json!([]))),
        (
            "image index 9999, upper-case scheme, sha256",
            p(
                "data.images.0",
                json!({ "index": 9999, "url": "HTTPS://cdn.example/x.jpg", "sha256": hex }),
            ),
        ),
        ("null sha256", p("data.images.0.sha256", Value::Null)),
        (
            "image fields unchecked",
            p(
                "data.images.0",
                json!({ "index": 1, "url": "http://[::1]:8080/1.jpg", "contentType": 5, "bytes": "many", "x": [] }),
            ),
        ),
        ("data of other fields", p("data.changes", json!(["vin"]))),
        ("user unchecked", p("data.user", json!("Ana"))),
        ("user event without vehicle", user.clone()),
        (
            "user event, vehicle unchecked",
            with(&user, "data.vehicle", Some(json!("not an object"))),
        ),
        (
            "data.new, vehicle without id",
            with(&data_new, "data.vehicle", Some(json!({ "vin": 5 }))),
        ),
        (
            "data.new, empty data",
            with(&data_new, "data", Some(json!({}))),
        ),
        ("batch of 1", json!([processed.clone()])),
        ("batch of 1000", Value::Array(vec![processed.clone(); 1000])),
    ];
    let invalid: Vec<(&str, Value)> = vec![
        ("a number", json!(5)),
        ("empty batch", json!([])),
        ("batch of 1001", Value::Array(vec![processed.clone(); 1001])),
        ("batch holding a number", json!([processed.clone(), 5])),
        ("no id", drop("id")),
        ("empty id", p("id", json!(""))),
        ("id of 129", p("id", json!(long))),
        ("id with a space", p("id", json!("evt 1"))),
        ("id a number", p("id", json!(1))),
        ("no type", drop("type")),
        ("unknown type", p("type", json!("vehicle.exploded"))),
        ("no timestamp", drop("timestamp")),
        ("timestamp not a time", p("timestamp", json!("yesterday"))),
        ("timestamp a date", p("timestamp", json!("2026-11-27"))),
        (
            "timestamp without offset",
            p("timestamp", json!("2026-11-27T10:15:30")),
        ),
        ("no clientId", drop("clientId")),
        ("clientId with a slash", p("clientId", json!("dealer/1"))),
        ("empty userId", p("userId", json!(""))),
        ("userId a number", p("userId", json!(42))),
        ("no data", drop("data")),
        ("null data", p("data", Value::Null)),
        ("data an array", p("data", json!([]))),
        ("no vehicle", drop("data.vehicle")),
        ("null vehicle", p("data.vehicle", Value::Null)),
        ("vehicle a string", p("data.vehicle", json!("veh-9"))),
        ("no vehicle id", drop("data.vehicle.id")),
        ("empty vehicle id", p("data.vehicle.id", json!(""))),
        ("vehicle id of 129", p("data.vehicle.id", json!(long))),
        ("vehicle id a number", p("data.vehicle.id", json!(9))),
        ("vin a number", p("data.vehicle.vin", json!(1))),
        (
            "stockNumber an object",
            p("data.vehicle.stockNumber", json!({})),
        ),
        ("year 1885", p("data.vehicle.year", json!(1885))),
        ("year 2201", p("data.vehicle.year", json!(2201))),
        ("year a string", p("data.vehicle.year", json!("2021"))),
        ("images an object", p("data.images", json!({}))),
        ("image a number", p("data.images.0", json!(1))),
        ("image index 0", p("data.images.0.index", json!(0))),
        ("image index 10000", p("data.images.0.index", json!(10000))),
        ("image index a string", p("data.images.0.index", json!("1"))),
        ("image without index", drop("data.images.0.index")),
        ("image without url", drop("data.images.0.url")),
        (
            "image url ftp",
            p("data.images.0.url", json!("ftp://cdn.example/1.jpg")),
        ),
        (
            "image url relative",
            p("data.images.0.url", json!("/images/1.jpg")),
        ),
        ("sha256 short", p("data.images.0.sha256", json!("abc123"))),
        (
            "sha256 not hex",
            p("data.images.0.sha256", json!("g".repeat(64))),
        ),
        (
            "user event, images checked",
            with(
                &user,
                "data.images",
                Some(json!([{ "index": 0, "url": "https://x/1.jpg" }])),
            ),
        ),
        ("data.new, no data", with(&data_new, "data", None)),
    ];
    // Where JSON Schema cannot follow the operator exactly (the descriptions say so): what
    // the operator accepts and the schema refuses, and the other way round.
    let schema_stricter: Vec<(&str, Value)> = vec![
        // WHATWG URL parsing, as the operator does, finds the host `1.jpg` here.
        (
            "image url of three slashes",
            p("data.images.0.url", json!("https:///1.jpg")),
        ),
        // The operator reads times with jiff, which takes ISO 8601 spellings beyond RFC 3339.
        (
            "timestamp with a space",
            p("timestamp", json!("2026-11-27 10:15:30Z")),
        ),
        (
            "timestamp without seconds",
            p("timestamp", json!("2026-11-27T10:15Z")),
        ),
        (
            "timestamp in basic format",
            p("timestamp", json!("20261127T101530Z")),
        ),
        (
            "timestamp with a zone",
            p("timestamp", json!("2026-11-27T10:15:30Z[Europe/Berlin]")),
        ),
    ];
    let schema_laxer: Vec<(&str, Value)> = vec![
        // `maxLength` counts characters; the operator counts UTF-8 bytes.
        (
            "vehicle id of 128 characters, 256 bytes",
            p("data.vehicle.id", json!("é".repeat(128))),
        ),
        // JSON Schema's integers include 2021.0; the operator wants the digits of one.
        ("year 2021.0", p("data.vehicle.year", json!(2021.0))),
        ("image index 1.0", p("data.images.0.index", json!(1.0))),
    ];
    let mut cases = Vec::new();
    let mut want = Vec::new();
    for (list, operator, schema) in [
        (&valid, true, true),
        (&invalid, false, false),
        (&schema_stricter, true, false),
        (&schema_laxer, false, true),
    ] {
        for (name, body) in list {
            cases.push(ingest_case(name, body.to_string()));
            want.push((operator, schema));
        }
    }
    let verdicts = check(&cases);
    let mut wrong = Vec::new();
    for ((v, c), (operator_ok, schema_ok)) in verdicts.iter().zip(&cases).zip(want) {
        match parse_body(c["body"].as_str().unwrap().as_bytes()) {
            Ok(_) if !operator_ok => wrong.push(format!("{}: the operator accepts it", v.name)),
            Err(e) if operator_ok => {
                wrong.push(format!("{}: the operator refuses it: {e:?}", v.name))
            }
            _ => {}
        }
        if v.valid != schema_ok {
            wrong.push(format!(
                "{}: the schema says valid={} {:#?}",
                v.name, v.valid, v.errors
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every webhook request a real receiver gets from the operator, one per type (and one of an
/// event posted with extra fields and a null `userId`, which delivery leaves out), matches
/// its entry of `webhooks`: body, headers, auth. The subscription is signed, Basic-authed and
/// has a static header, as `delivery_e2e` sets it up.
#[tokio::test]
async fn every_webhook_request_matches_the_webhooks_section() {
    let s = crate::delivery_e2e::setup("openapi").await;
    let types: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    s.subscribe("all", "all", json!({ "events": types })).await;
    let mut events: Vec<Value> = samples()
        .iter()
        .map(|(_, text)| {
            let mut e: Value = serde_json::from_str(text).unwrap();
            e["id"] = format!("oa-{}", e["id"].as_str().unwrap()).into();
            e["clientId"] = s.client_id.clone().into();
            e
        })
        .collect();
    let mut normalised = events[0].clone();
    normalised["id"] = "oa-normalised".into();
    normalised["userId"] = Value::Null;
    normalised["source"] = json!("dropped on delivery");
    events.push(normalised);
    let (code, body) = s.post(json!(events)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["accepted"], events.len(), "{body}");

    let got = s.receiver.wait_for("all", events.len()).await;
    let mut cases = Vec::new();
    for r in &got {
        assert_eq!(
            r.signature_ok,
            Some(true),
            "standardwebhooks refused {:?}",
            r.body["id"]
        );
        let ty = r.body["type"].as_str().expect("a type").to_string();
        let headers: serde_json::Map<String, Value> = r
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().into()))
            .collect();
        let body = String::from_utf8(r.raw.to_vec()).expect("UTF-8 body");
        let name = r.body["id"].as_str().unwrap().to_string();
        cases.push(json!({ "name": name, "kind": "webhook", "webhook": ty, "headers": headers, "body": body }));
    }
    // Not vacuous: a body under another type's entry, or without its signature's form, fails.
    let mut wrong_type = cases[0].clone();
    wrong_type["name"] = "under another type".into();
    wrong_type["webhook"] = if cases[0]["webhook"] == "data.new" {
        "vehicle.created"
    } else {
        "data.new"
    }
    .into();
    let mut bad_signature = cases[0].clone();
    bad_signature["name"] = "bad signature header".into();
    bad_signature["headers"]["webhook-signature"] = "v1,not-base64".into();
    let mut extra_field = cases[0].clone();
    extra_field["name"] = "a field delivery never sends".into();
    let mut b: Value = serde_json::from_str(cases[0]["body"].as_str().unwrap()).unwrap();
    b["extra"] = json!(1);
    extra_field["body"] = b.to_string().into();
    let refused = [wrong_type, bad_signature, extra_field];
    cases.extend(refused.iter().cloned());

    let verdicts = check(&cases);
    let (delivered, refused_verdicts) = verdicts.split_at(got.len());
    for v in delivered {
        assert!(
            v.valid,
            "{}: the webhook request does not match the document: {:#?}",
            v.name, v.errors
        );
    }
    for v in refused_verdicts {
        assert!(!v.valid, "{}: the document accepts it", v.name);
    }
    let mut seen: Vec<&str> = got.iter().filter_map(|r| r.body["type"].as_str()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 11, "a request of every type: {seen:?}");
    let n = got
        .iter()
        .find(|r| r.body["id"] == "oa-normalised")
        .expect("the normalised event");
    assert!(
        n.body.get("userId").is_none() && n.body.get("source").is_none(),
        "{}",
        n.body
    );
}
