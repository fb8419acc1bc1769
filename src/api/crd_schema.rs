//! Post-processing of the CRD schemas schemars generates, so that the API server both
//! understands them and enforces what the Rust types can hold.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// metav1.Condition's validation, as controller-gen emits it for Go types: k8s-openapi's
/// schema of Condition carries none of it.
const CONDITION_TYPE_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";
const CONDITION_REASON_PATTERN: &str = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";
/// Longest `message` a condition may carry (metav1.Condition's maxLength).
pub const CONDITION_MESSAGE_MAX: usize = 32768;

/// Tightens every version's schema of `crd` in place.
pub fn tighten(crd: &mut CustomResourceDefinition) {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            walk(schema);
        }
    }
}

/// The bounds of the integer formats schemars emits that are no OpenAPI format the API
/// server knows (it warns about each one since 1.34). u64 gets no maximum: the API server
/// keeps integers as int64, which a u64 always holds.
fn integer_bounds(format: &str) -> Option<(Option<f64>, Option<f64>)> {
    Some(match format {
        "uint8" => (Some(0.0), Some(u8::MAX.into())),
        "uint16" => (Some(0.0), Some(u16::MAX.into())),
        "uint32" => (Some(0.0), Some(u32::MAX.into())),
        "uint" | "uint64" | "uint128" => (Some(0.0), None),
        "int8" => (Some(i8::MIN.into()), Some(i8::MAX.into())),
        "int16" => (Some(i16::MIN.into()), Some(i16::MAX.into())),
        "int" | "int128" => (None, None),
        _ => return None,
    })
}

fn walk(s: &mut JSONSchemaProps) {
    if let Some((min, max)) = s.format.as_deref().and_then(integer_bounds) {
        s.format = None;
        // A bound of the field's own (e.g. `maximum: 256`) is tighter than its type's.
        s.minimum = tighter(s.minimum, min, f64::max);
        s.maximum = tighter(s.maximum, max, f64::min);
    }
    if let Some(conditions) = s
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("conditions"))
        .and_then(|c| match c.items.as_mut() {
            Some(JSONSchemaPropsOrArray::Schema(item)) => Some(item),
            _ => None,
        })
    {
        constrain_condition(conditions);
    }
    for child in s.properties.iter_mut().flat_map(|p| p.values_mut()) {
        walk(child);
    }
    match s.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => walk(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => items.iter_mut().for_each(walk),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = s.additional_properties.as_mut() {
        walk(extra);
    }
    for list in [&mut s.all_of, &mut s.any_of, &mut s.one_of] {
        list.iter_mut().flatten().for_each(walk);
    }
    if let Some(not) = s.not.as_mut() {
        walk(not);
    }
}

fn tighter(own: Option<f64>, bound: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (own, bound) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// Adds metav1.Condition's limits to `item` if it is that schema (an object with type,
/// status, reason and message).
fn constrain_condition(item: &mut JSONSchemaProps) {
    let Some(props) = item.properties.as_mut() else {
        return;
    };
    if !["type", "status", "reason", "message"]
        .iter()
        .all(|k| props.contains_key(*k))
    {
        return;
    }
    if let Some(t) = props.get_mut("type") {
        t.max_length = Some(316);
        t.pattern = Some(CONDITION_TYPE_PATTERN.into());
    }
    if let Some(st) = props.get_mut("status") {
        st.enum_ = Some(
            ["True", "False", "Unknown"]
                .into_iter()
                .map(|v| JSON(v.into()))
                .collect(),
        );
    }
    if let Some(r) = props.get_mut("reason") {
        r.min_length = Some(1);
        r.max_length = Some(1024);
        r.pattern = Some(CONDITION_REASON_PATTERN.into());
    }
    if let Some(m) = props.get_mut("message") {
        m.max_length = Some(CONDITION_MESSAGE_MAX as i64);
    }
    if let Some(g) = props.get_mut("observedGeneration") {
        g.minimum = Some(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn int(format: &str, min: Option<f64>, max: Option<f64>) -> JSONSchemaProps {
        JSONSchemaProps {
            type_: Some("integer".into()),
            format: Some(format.into()),
            minimum: min,
            maximum: max,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_integer_formats_become_bounds() {
        let mut s = JSONSchemaProps {
            properties: Some(BTreeMap::from([
                ("a".into(), int("uint32", None, None)),
                ("b".into(), int("uint32", Some(1.0), Some(256.0))),
                ("c".into(), int("uint64", Some(0.0), None)),
                ("d".into(), int("uint16", None, None)),
                ("e".into(), int("int64", None, None)),
                ("f".into(), int("int8", None, Some(100.0))),
            ])),
            ..Default::default()
        };
        walk(&mut s);
        let p = s.properties.unwrap();
        let got = |k: &str| (p[k].format.clone(), p[k].minimum, p[k].maximum);
        assert_eq!(got("a"), (None, Some(0.0), Some(4_294_967_295.0)));
        assert_eq!(got("b"), (None, Some(1.0), Some(256.0)));
        assert_eq!(got("c"), (None, Some(0.0), None));
        assert_eq!(got("d"), (None, Some(0.0), Some(65535.0)));
        // int64 is an OpenAPI format the API server knows.
        assert_eq!(got("e"), (Some("int64".into()), None, None));
        assert_eq!(got("f"), (None, Some(-128.0), Some(100.0)));
    }

    #[test]
    fn nested_schemas_are_reached() {
        let mut s = JSONSchemaProps {
            items: Some(JSONSchemaPropsOrArray::Schema(Box::new(JSONSchemaProps {
                additional_properties: Some(JSONSchemaPropsOrBool::Schema(Box::new(int(
                    "uint8", None, None,
                )))),
                ..Default::default()
            }))),
            ..Default::default()
        };
        walk(&mut s);
        let Some(JSONSchemaPropsOrArray::Schema(item)) = s.items else {
            panic!("items lost")
        };
        let Some(JSONSchemaPropsOrBool::Schema(v)) = item.additional_properties else {
            panic!("additionalProperties lost")
        };
        assert_eq!((v.format, v.maximum), (None, Some(255.0)));
    }
}
