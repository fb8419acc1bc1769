//! Request bodies validated against the document's schemas with `jsonschema`: the whole
//! document is the root resource, so `$ref`s into `#/components/...` (or anywhere) resolve,
//! and failures name the schema keyword by its place in the document.

use std::collections::HashMap;

use jsonschema::{Draft, Validator};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde_json::Value;

use super::doc::{Document, Version};

/// Base URI of the document while validating; never fetched (no retrieval features).
const BASE: &str = "https://openapi.invalid/document.json";
/// Failures reported per body: the first few tell what is wrong.
const MAX_FAILURES: usize = 8;

/// What a JSON Pointer may not hold unencoded in a URI fragment.
const FRAGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^')
    .add(b'%')
    .add(b'#')
    .add(b'[')
    .add(b']');

pub(super) struct Failure {
    pub(super) instance_path: String,
    pub(super) schema_path: String,
    pub(super) message: String,
}

/// Validators per schema pointer, built on first use.
pub(super) struct Schemas {
    root: Value,
    draft: Draft,
    built: HashMap<String, Result<Validator, String>>,
}

impl Schemas {
    pub(super) fn new(doc: &Document) -> Schemas {
        let mut root = doc.root.clone();
        let read_only = read_only_required(&doc.root);
        if doc.version == Version::V30 {
            translate_nullable(&mut root);
        }
        for (pointer, names) in read_only {
            drop_required(&mut root, &pointer, &names);
        }
        let draft = match doc.version {
            Version::V30 => Draft::Draft4,
            Version::V31 => Draft::Draft202012,
        };
        Schemas {
            root,
            draft,
            built: HashMap::new(),
        }
    }

    /// Validates `instance` against the schema at `pointer`; `Err` when the schema itself
    /// cannot be used.
    pub(super) fn validate(
        &mut self,
        pointer: &str,
        instance: &Value,
    ) -> Result<Vec<Failure>, String> {
        let validator = match self.built.entry(pointer.to_owned()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut root = self.root.clone();
                if let Some(obj) = root.as_object_mut() {
                    let fragment = utf8_percent_encode(pointer, FRAGMENT);
                    obj.insert("$ref".into(), Value::String(format!("#{fragment}")));
                }
                let built = jsonschema::options()
                    .with_draft(self.draft)
                    .with_base_uri(BASE)
                    // Samples carry placeholders (`sample-id`) where real values have formats.
                    .should_validate_formats(false)
                    .build(&root)
                    .map_err(|e| format!("the schema at {pointer} cannot be used: {e}"));
                e.insert(built)
            }
        };
        let validator = validator.as_ref().map_err(Clone::clone)?;
        Ok(validator
            .iter_errors(instance)
            .take(MAX_FAILURES)
            .map(|e| {
                let schema_path = match e.absolute_keyword_location() {
                    Some(uri) => {
                        let fragment = uri.as_str().split_once('#').map_or("", |(_, f)| f);
                        percent_decode_str(fragment)
                            .decode_utf8_lossy()
                            .into_owned()
                    }
                    // Relative to the root, whose `$ref` stands for `pointer`.
                    None => {
                        let p = e.schema_path().as_str();
                        format!("{pointer}{}", p.strip_prefix("/$ref").unwrap_or(p))
                    }
                };
                Failure {
                    instance_path: e.instance_path().as_str().to_owned(),
                    schema_path,
                    message: e.to_string(),
                }
            })
            .collect())
    }
}

/// OpenAPI 3.0 `nullable: true` as JSON Schema: `null` added to `type` (and `enum`).
fn translate_nullable(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            if obj.get("nullable") == Some(&Value::Bool(true)) {
                obj.remove("nullable");
                if let Some(Value::String(t)) = obj.get("type") {
                    let t = Value::String(t.clone());
                    obj.insert("type".into(), Value::Array(vec![t, "null".into()]));
                }
                if let Some(Value::Array(list)) = obj.get_mut("enum")
                    && !list.contains(&Value::Null)
                {
                    list.push(Value::Null);
                }
            }
            obj.values_mut().for_each(translate_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(translate_nullable),
        _ => {}
    }
}

/// Required properties that are `readOnly`, per schema (pointer → names): OpenAPI requires
/// them in responses only, so a request body need not have them.
fn read_only_required(root: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root)];
    while let Some((pointer, v)) = stack.pop() {
        match v {
            Value::Object(obj) => {
                if let (Some(Value::Array(required)), Some(Value::Object(props))) =
                    (obj.get("required"), obj.get("properties"))
                {
                    let names: Vec<String> = (required.iter().filter_map(Value::as_str))
                        .filter(|name| props.get(*name).is_some_and(|p| is_read_only(root, p)))
                        .map(str::to_owned)
                        .collect();
                    if !names.is_empty() {
                        out.push((pointer.clone(), names));
                    }
                }
                for (k, child) in obj {
                    stack.push((format!("{pointer}/{}", super::doc::escape(k)), child));
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    stack.push((format!("{pointer}/{i}"), child));
                }
            }
            _ => {}
        }
    }
    out
}

fn is_read_only<'a>(root: &'a Value, mut schema: &'a Value) -> bool {
    for _ in 0..8 {
        if schema.get("readOnly") == Some(&Value::Bool(true)) {
            return true;
        }
        let target = (schema.get("$ref").and_then(Value::as_str))
            .and_then(|r| r.strip_prefix('#'))
            .and_then(|p| root.pointer(&percent_decode_str(p).decode_utf8_lossy()));
        match target {
            Some(t) => schema = t,
            None => return false,
        }
    }
    false
}

fn drop_required(root: &mut Value, pointer: &str, names: &[String]) {
    let Some(Value::Object(obj)) = root.pointer_mut(pointer) else {
        return;
    };
    if let Some(Value::Array(required)) = obj.get_mut("required") {
        required.retain(|n| !n.as_str().is_some_and(|n| names.iter().any(|x| x == n)));
        // Draft 4 wants at least one name.
        if required.is_empty() {
            obj.remove("required");
        }
    }
}
