//! `crds/` must be exactly what the Rust types generate (regenerate: `make crds`).

use vehicle_connect::api::crd_files;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected = Vec::new();
    for (name, yaml) in crd_files().unwrap() {
        let path = dir.join(&name);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{} missing ({e}); run `make crds`", path.display()));
        assert!(
            on_disk == yaml,
            "{} drifted from the Rust types; run `make crds` and commit",
            path.display()
        );
        expected.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected.sort();
    assert_eq!(
        present, expected,
        "crds/ holds files the types do not generate"
    );
}

#[test]
fn cli_prints_the_same_crds() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vehicle-connect"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        vehicle_connect::api::crds_yaml().unwrap()
    );
}

#[test]
fn sample_events_cover_the_catalogue_and_validate() {
    use vehicle_connect::api::EventType;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/events");
    for t in EventType::ALL {
        let path = dir.join(format!("{}.json", t.as_str()));
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let events = vehicle_connect::ingest::envelope::parse_body(&body)
            .unwrap_or_else(|e| panic!("{}: {} {}", path.display(), e.field, e.message));
        assert_eq!(events[0].type_, t);
    }
}

/// Every `format` in the CRDs is one the API server knows (1.36 warns about the others,
/// such as schemars' uint32), and the bounds those formats implied are still there.
#[test]
fn crds_use_only_formats_the_api_server_knows() {
    fn walk(v: &serde_yaml::Value, path: &str, found: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                if let Some(f) = m.get("format").and_then(|f| f.as_str()) {
                    found.push(format!("{path}: {f}"));
                }
                for (k, child) in m {
                    walk(
                        child,
                        &format!("{path}.{}", k.as_str().unwrap_or("?")),
                        found,
                    );
                }
            }
            serde_yaml::Value::Sequence(items) => items.iter().for_each(|i| walk(i, path, found)),
            _ => {}
        }
    }
    let mut text = String::new();
    for (name, yaml) in crd_files().unwrap() {
        let value: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let mut found = Vec::new();
        walk(&value, &name, &mut found);
        let odd: Vec<_> = found
            .iter()
            .filter(|f| {
                !["int32", "int64", "date-time"]
                    .iter()
                    .any(|k| f.ends_with(&format!(": {k}")))
            })
            .collect();
        assert!(odd.is_empty(), "formats unknown to Kubernetes: {odd:#?}");
        text.push_str(&yaml);
    }
    // The u32 counter keeps its range, condition statuses their enum.
    assert!(text.contains("maximum: 4294967295.0"), "u32 maximum lost");
    assert!(text.contains("- Unknown"), "condition status enum missing");
    assert!(
        text.contains("maxLength: 32768"),
        "condition message limit missing"
    );
}
