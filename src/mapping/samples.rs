//! The built-in sample events (`examples/events/`), one of each type: what mappings are
//! rendered with when they are checked against an OpenAPI document.

use std::sync::LazyLock;

use std::collections::BTreeMap;

use super::ConnectionRef;
use crate::api::EventType;
use crate::api::apiconnection::ApiConnectionSpec;

const SOURCES: [&str; 11] = [
    include_str!("../../examples/events/user.created.json"),
    include_str!("../../examples/events/user.updated.json"),
    include_str!("../../examples/events/vehicle.created.json"),
    include_str!("../../examples/events/vehicle.updated.json"),
    include_str!("../../examples/events/vehicle.deleted.json"),
    include_str!("../../examples/events/vehicle.added.json"),
    include_str!("../../examples/events/vehicle.images_uploaded.json"),
    include_str!("../../examples/events/vehicle.image_uploaded.json"),
    include_str!("../../examples/events/vehicle.processed.json"),
    include_str!("../../examples/events/image.cropped_processed.json"),
    include_str!("../../examples/events/data.new.json"),
];

static SAMPLES: LazyLock<Vec<serde_json::Value>> = LazyLock::new(|| {
    // The files are part of the build and tested to parse; nothing to report at run time.
    SOURCES
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect()
});

/// One sample event of every type.
pub fn samples() -> &'static [serde_json::Value] {
    &SAMPLES
}

/// The sample event of `event_type`.
pub fn sample(event_type: EventType) -> Option<&'static serde_json::Value> {
    SAMPLES
        .iter()
        .find(|e| e.get("type").and_then(|t| t.as_str()) == Some(event_type.as_str()))
}

/// `sample-<name>` for every capture the connection declares: what checks render with, so
/// that requests for a vehicle the API already knows render too.
pub fn sample_remote(spec: &ApiConnectionSpec) -> BTreeMap<String, String> {
    (spec.mappings.iter())
        .flat_map(|m| &m.requests)
        .flat_map(|r| r.capture.iter().flatten())
        .map(|(name, _)| (name.clone(), format!("sample-{name}")))
        .collect()
}

/// The connection checks render for.
pub fn connection() -> ConnectionRef {
    ConnectionRef {
        name: "sample".into(),
        namespace: "sample".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_has_one_parsing_sample() {
        assert_eq!(samples().len(), SOURCES.len());
        for t in EventType::ALL {
            let s = sample(t).unwrap_or_else(|| panic!("no sample of {t}"));
            assert!(s.get("id").is_some() && s.get("data").is_some(), "{t}");
        }
    }
}
