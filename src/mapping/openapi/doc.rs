//! The OpenAPI document: parsed from JSON or YAML, local `$ref`s followed, the operation a
//! rendered request reaches, its parameters and whether it needs authentication.

use serde_json::{Map, Value};

/// Which JSON Schema the document's schemas are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    /// 3.0: an extended subset of draft 4 (`nullable`, boolean `exclusiveMinimum`).
    V30,
    /// 3.1: draft 2020-12.
    V31,
}

pub(super) struct Document {
    pub(super) root: Value,
    pub(super) version: Version,
    /// Path of `servers[0].url` (variables at their defaults), without a trailing `/`.
    server_path: String,
}

/// An operation of the document, with JSON pointers to where it is.
pub(super) struct Operation<'d> {
    pub(super) path_key: &'d str,
    pub(super) op: &'d Value,
    pub(super) pointer: String,
    path_item: &'d Value,
}

pub(super) enum Found<'d> {
    Operation(Operation<'d>),
    /// Paths that match but lack the method, with the methods they have.
    NoMethod(&'d str, Vec<String>),
    NoPath,
}

pub(super) const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

impl Document {
    pub(super) fn parse(text: &str) -> Result<Document, String> {
        let root: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(_) => {
                let mut yaml: serde_yaml::Value = serde_yaml::from_str(text)
                    .map_err(|e| format!("neither JSON nor YAML: {e}"))?;
                yaml.apply_merge()
                    .map_err(|e| format!("YAML merge keys: {e}"))?;
                yaml_to_json(yaml)
            }
        };
        if root.get("swagger").is_some() {
            return Err("Swagger 2.0 is not supported; give an OpenAPI 3.0 or 3.1 document".into());
        }
        let version = match root.get("openapi").and_then(Value::as_str) {
            Some(v) if v.starts_with("3.0") => Version::V30,
            Some(v) if v.starts_with("3.1") => Version::V31,
            Some(v) => return Err(format!("OpenAPI {v} is not supported (3.0 and 3.1 are)")),
            None => return Err("not an OpenAPI document: no `openapi` version".into()),
        };
        if !root.get("paths").is_some_and(Value::is_object) {
            return Err("the document has no `paths`".into());
        }
        let server_path = server_path(&root);
        Ok(Document {
            root,
            version,
            server_path,
        })
    }

    /// Follows local `$ref`s from `value` (found at `pointer`) to what they name.
    pub(super) fn resolve<'d>(
        &'d self,
        mut value: &'d Value,
        mut pointer: String,
    ) -> Result<(&'d Value, String), String> {
        for _ in 0..32 {
            let Some(r) = value.get("$ref").and_then(Value::as_str) else {
                return Ok((value, pointer));
            };
            let Some(fragment) = r.strip_prefix('#') else {
                return Err(format!("$ref {r:?} at {pointer} is not in this document"));
            };
            let target = percent_encoding::percent_decode_str(fragment).decode_utf8_lossy();
            value = (self.root.pointer(&target))
                .ok_or_else(|| format!("$ref {r:?} at {pointer} points at nothing"))?;
            pointer = target.into_owned();
        }
        Err(format!("$refs at {pointer} loop"))
    }

    /// The operation `method` (lowercase) on the rendered `path`, where `base_path` is the
    /// path of the connection's `baseUrl`. When `baseUrl`'s path ends with the server URL's
    /// path, mapping paths are matched against the document's paths as they are; otherwise
    /// `baseUrl` path + mapping path is matched against server path + document path. Of
    /// several matching paths the one with the most literal segments wins (as servers route).
    pub(super) fn operation(&self, base_path: &str, path: &str, method: &str) -> Found<'_> {
        let base = base_path.trim_end_matches('/');
        let (full, prefix) = if base.ends_with(&self.server_path) {
            (path.to_owned(), "")
        } else {
            (format!("{base}{path}"), self.server_path.as_str())
        };
        let segments: Vec<String> = full
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let Some(paths) = self.root.get("paths").and_then(Value::as_object) else {
            return Found::NoPath;
        };
        let mut matches: Vec<(usize, &str)> = paths
            .keys()
            .filter_map(|key| {
                let template = format!("{prefix}{key}");
                let t: Vec<&str> = template.split('/').collect();
                let ok = t.len() == segments.len()
                    && t.iter().zip(&segments).all(|(t, s)| segment_matches(t, s));
                ok.then(|| (t.iter().filter(|s| !s.contains('{')).count(), key.as_str()))
            })
            .collect();
        matches.sort_by_key(|m| std::cmp::Reverse(m.0));
        let mut first_without = None;
        for (_, key) in matches {
            let pointer = format!("/paths/{}", escape(key));
            let Ok((item, item_pointer)) = self.resolve(&paths[key], pointer) else {
                continue;
            };
            if let Some(op) = item.get(method) {
                return Found::Operation(Operation {
                    path_key: key,
                    op,
                    pointer: format!("{item_pointer}/{method}"),
                    path_item: item,
                });
            }
            if first_without.is_none() {
                let has = METHODS.iter().filter(|m| item.get(**m).is_some());
                first_without = Some((key, has.map(|m| m.to_uppercase()).collect()));
            }
        }
        match first_without {
            Some((key, has)) => Found::NoMethod(key, has),
            None => Found::NoPath,
        }
    }

    /// The operation's parameters (path-level ones overridden by the operation's own).
    pub(super) fn parameters<'d>(&'d self, op: &Operation<'d>) -> Vec<&'d Value> {
        let mut out: Vec<&Value> = Vec::new();
        for list in [op.path_item.get("parameters"), op.op.get("parameters")] {
            for p in list.and_then(Value::as_array).into_iter().flatten() {
                let Ok((p, _)) = self.resolve(p, String::new()) else {
                    continue;
                };
                let key = |v: &Value| (v.get("name").cloned(), v.get("in").cloned());
                out.retain(|q| key(q) != key(p));
                out.push(p);
            }
        }
        out
    }

    /// Whether the operation needs credentials: a non-empty `security` (its own, else the
    /// document's) without an empty alternative.
    pub(super) fn needs_auth(&self, op: &Operation<'_>) -> bool {
        let security = op.op.get("security").or_else(|| self.root.get("security"));
        match security.and_then(Value::as_array) {
            Some(alternatives) if !alternatives.is_empty() => !alternatives
                .iter()
                .any(|a| a.as_object().is_some_and(Map::is_empty)),
            _ => false,
        }
    }

    /// The operations of the document, `METHOD path`, for messages.
    pub(super) fn list_operations(&self) -> Vec<String> {
        let paths = self.root.get("paths").and_then(Value::as_object);
        let mut out = Vec::new();
        for (key, item) in paths.into_iter().flatten() {
            for m in METHODS.iter().filter(|m| item.get(**m).is_some()) {
                out.push(format!("{} {key}", m.to_uppercase()));
            }
        }
        out
    }
}

/// JSON Pointer escaping of one reference token.
pub(super) fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether one path segment matches one segment of a path template; `{name}` stands for one
/// or more characters.
fn segment_matches(template: &str, value: &str) -> bool {
    let Some(open) = template.find('{') else {
        return template == value;
    };
    let (literal, rest) = template.split_at(open);
    let Some(value) = value.strip_prefix(literal) else {
        return false;
    };
    let Some(close) = rest.find('}') else {
        return rest == value;
    };
    let after = &rest[close + 1..];
    (1..=value.len())
        .filter(|&k| value.is_char_boundary(k))
        .any(|k| segment_matches(after, &value[k..]))
}

fn server_path(root: &Value) -> String {
    let Some(server) = root.pointer("/servers/0") else {
        return String::new();
    };
    let mut url = server
        .get("url")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_owned();
    let variables = server.get("variables").and_then(Value::as_object);
    for (name, var) in variables.into_iter().flatten() {
        let default = var.get("default").and_then(Value::as_str).unwrap_or("");
        url = url.replace(&format!("{{{name}}}"), default);
    }
    let path = match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |i| &rest[i..]),
        None => url.as_str(),
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    if path.is_empty() || path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// YAML to JSON; scalar keys (`200:` of responses) become strings.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or(Value::Null, Value::Number)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Bool(b) => b.to_string(),
                        Y::Number(n) => n.to_string(),
                        Y::Null => "null".to_owned(),
                        other => serde_yaml::to_string(&other).unwrap_or_default(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}
