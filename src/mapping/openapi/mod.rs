//! Mapped requests checked against the client's OpenAPI document (3.0 or 3.1, JSON or YAML)
//! before any event is sent: each request is rendered for the sample event of each of its
//! mapping's types, and what it would send is compared with the operation it reaches.
//!
//! Checked: the path matches a path template of the document (`{param}` is one non-empty
//! segment) and that path has the method; required query, header and cookie parameters are
//! sent (headers the operator sets count: the idempotency header, `Authorization` or the
//! API-key header when `spec.auth` says so); an operation with `security` has `spec.auth`;
//! a JSON body validates against the operation's `application/json` (or `+json`) schema; a
//! multipart body is accepted, its parts are properties of the schema and its required
//! properties are sent; a raw image's content type is accepted; a body is sent exactly when
//! the operation takes one (and always when it requires one).
//!
//! Not checked: values of parameters and multipart fields against their schemas, `format`s
//! (the samples have placeholders for captured values), responses, the `capture`s against
//! response schemas, and parts of a template no sample reaches.

mod body;
mod doc;
mod schema;

use std::fmt;

use serde_json::Value;

use super::compile::{Compiled, Step};
use super::render::{EventContext, Rendered, RenderedBody};
use super::samples;
use crate::api::EventType;
use crate::api::apiconnection::ApiConnectionSpec;
use doc::{Document, Found, Operation};
use schema::Schemas;

/// A difference between a mapping and the document: `Ready=False/SpecMismatch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMismatch {
    /// The request; empty when the document itself is the problem.
    pub request: String,
    /// Type of the sample event that showed it.
    pub event_type: Option<EventType>,
    /// `document`, `path`, `method`, `query <name>`, `header <name>`, `cookie <name>`,
    /// `auth`, `body`, `body <instance path>`, `multipart field <name>`; or, when the
    /// request does not render for the sample, its field and position (`body, line 1
    /// column 12`).
    pub location: String,
    /// JSON Pointer into the document of the schema keyword that failed.
    pub schema_path: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.request.is_empty() {
            return write!(f, "openapi document: {}", self.message);
        }
        write!(f, "request {:?}", self.request)?;
        if let Some(t) = self.event_type {
            write!(f, " ({t})")?;
        }
        write!(f, " {}: {}", self.location, self.message)?;
        if let Some(p) = &self.schema_path {
            write!(f, " (schema {p})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecMismatch {}

/// Checks every mapping of `spec` (compiled as `compiled`) against the OpenAPI document
/// `doc_text`, rendering with `samples` (usually [`samples::samples`]) and `remote` filled
/// with `sample-<name>` for every capture; a request skipped by `when` that way is rendered
/// again with nothing captured. Per-image requests are checked with the first image.
pub fn check(
    doc_text: &str,
    compiled: &Compiled,
    spec: &ApiConnectionSpec,
    samples: &[Value],
) -> Result<(), Vec<SpecMismatch>> {
    let doc = Document::parse(doc_text).map_err(|message| {
        vec![SpecMismatch {
            request: String::new(),
            event_type: None,
            location: "document".into(),
            schema_path: None,
            message,
        }]
    })?;
    let base_path =
        url::Url::parse(&spec.base_url).map_or_else(|_| String::new(), |u| u.path().to_owned());
    let mut checker = Checker {
        doc: &doc,
        spec,
        base_path,
        schemas: Schemas::new(&doc),
        out: Vec::new(),
    };
    let full = samples::sample_remote(spec);
    for chain in compiled.chains() {
        for event in samples {
            let Some(t) = event.get("type").and_then(Value::as_str) else {
                continue;
            };
            let Ok(t) = t.parse::<EventType>() else {
                continue;
            };
            if !chain.events().contains(&t) {
                continue;
            }
            for step in chain.steps() {
                let with = EventContext::new(event, &samples::connection(), full.clone());
                let image = match step.for_each_image() {
                    Some(_) if with.images().is_empty() => continue,
                    Some(_) => Some(0),
                    None => None,
                };
                let rendered = match step.render(&with, image) {
                    Ok(None) => {
                        let without =
                            EventContext::new(event, &samples::connection(), Default::default());
                        step.render(&without, image)
                            .map(|r| r.map(|r| (r, without)))
                    }
                    other => other.map(|r| r.map(|r| (r, with))),
                };
                match rendered {
                    Ok(Some((r, ctx))) => checker.request(&step, t, &r, &ctx),
                    Ok(None) => {}
                    Err(e) => {
                        let mut location = e.field;
                        if let Some(line) = e.line {
                            location.push_str(&format!(", line {line}"));
                        }
                        if let Some(column) = e.column {
                            location.push_str(&format!(" column {column}"));
                        }
                        checker.push(&step, t, &location, None, e.message)
                    }
                }
            }
        }
    }
    let mut out = checker.out;
    // One report per problem, not one per sample event that shows it.
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|m| seen.insert((m.request.clone(), m.location.clone(), m.message.clone())));
    if out.is_empty() { Ok(()) } else { Err(out) }
}

struct Checker<'a> {
    doc: &'a Document,
    spec: &'a ApiConnectionSpec,
    base_path: String,
    schemas: Schemas,
    out: Vec<SpecMismatch>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        step: &Step<'_>,
        t: EventType,
        location: &str,
        schema_path: Option<String>,
        message: String,
    ) {
        self.out.push(SpecMismatch {
            request: step.name().to_owned(),
            event_type: Some(t),
            location: location.to_owned(),
            schema_path,
            message,
        });
    }

    fn request(&mut self, step: &Step<'_>, t: EventType, r: &Rendered, ctx: &EventContext) {
        let method = r.method.as_str();
        let op = match self
            .doc
            .operation(&self.base_path, &r.path, &method.to_lowercase())
        {
            Found::Operation(op) => op,
            Found::NoMethod(key, has) => {
                let message = format!(
                    "{method} {} matches {key}, which has no {method} (it has {})",
                    r.path,
                    has.join(", ")
                );
                return self.push(step, t, "method", None, message);
            }
            Found::NoPath => {
                let mut known = self.doc.list_operations();
                known.truncate(12);
                let message = format!(
                    "no operation {method} {} (path template {:?}); the document has {}",
                    r.path,
                    step.request().path,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
                return self.push(step, t, "path", None, message);
            }
        };
        self.parameters(step, t, r, &op);
        if self.doc.needs_auth(&op) && self.spec.auth.is_none() {
            let message = format!(
                "{method} {} requires authentication (security) and spec.auth is not set",
                op.path_key
            );
            self.push(step, t, "auth", None, message);
        }
        self.body(step, t, r, ctx, &op);
    }

    fn parameters(&mut self, step: &Step<'_>, t: EventType, r: &Rendered, op: &Operation<'_>) {
        for p in self.doc.parameters(op) {
            if p.get("required") != Some(&Value::Bool(true)) {
                continue;
            }
            let name = p.get("name").and_then(Value::as_str).unwrap_or("");
            let place = p.get("in").and_then(Value::as_str).unwrap_or("");
            let sent = match place {
                "query" => r.query.iter().any(|(k, _)| k == name),
                "header" => self.header_sent(r, name),
                "cookie" => r.header("cookie").is_some_and(|c| {
                    c.split(';')
                        .any(|kv| kv.trim().starts_with(&format!("{name}=")))
                }),
                // Path parameters are there when the path matched.
                _ => true,
            };
            if !sent {
                let message = format!(
                    "the operation requires {place} parameter {name:?}; the mapping does not send it"
                );
                self.push(step, t, &format!("{place} {name}"), None, message);
            }
        }
    }

    fn header_sent(&self, r: &Rendered, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        let auth = self.spec.auth.as_ref();
        // OpenAPI ignores Accept and Content-Type parameters; the HTTP client sets them.
        lower == "accept"
            || lower == "content-type"
            || r.header(name).is_some()
            || self.spec.idempotency_header.eq_ignore_ascii_case(name)
            || (lower == "authorization" && auth.is_some_and(|a| a.api_key.is_none()))
            || auth
                .and_then(|a| a.api_key.as_ref())
                .is_some_and(|k| k.header.eq_ignore_ascii_case(name))
    }
}
