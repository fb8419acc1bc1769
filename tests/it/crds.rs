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
