//! A readable listing of the requests an event becomes (`vehicle-connect render`): what a
//! person checks a mapping with before applying it.

use std::collections::BTreeMap;
use std::fmt::{self, Write};

use serde_json::Value;

use super::compile::Compiled;
use super::render::{ConnectionRef, EventContext, Rendered, RenderedBody};
use super::{RenderError, TemplateError};
use crate::api::EventType;
use crate::api::apiconnection::{ApiConnectionSpec, Capture};

#[derive(Debug)]
pub enum PreviewError {
    /// Templates that do not compile.
    Invalid(Vec<TemplateError>),
    /// The event has no known `type`.
    NotAnEvent(String),
    /// No mapping lists the event's type.
    NoMapping(EventType),
    /// A request failed to render: the listing up to it, and why (the chain stops there).
    Render {
        listing: String,
        error: Box<RenderError>,
    },
}

impl fmt::Display for PreviewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PreviewError::Invalid(errors) => {
                writeln!(f, "invalid templates:")?;
                errors.iter().try_for_each(|e| writeln!(f, "  {e}"))
            }
            PreviewError::NotAnEvent(m) => write!(f, "not an event: {m}"),
            PreviewError::NoMapping(t) => write!(f, "no mapping handles {t}"),
            PreviewError::Render { listing, error } => {
                write!(f, "{listing}error: {error}\n(the chain stops here)")
            }
        }
    }
}

impl std::error::Error for PreviewError {}

/// Every request `event` would produce for the connection `namespace/name`, starting from the
/// captured values `remote`. A request that captures values is followed as if the API had
/// answered: its captures not in `remote` yet become `sample-<name>`.
pub fn render_preview(
    spec: &ApiConnectionSpec,
    name: &str,
    namespace: &str,
    event: &Value,
    remote: &BTreeMap<String, String>,
) -> Result<String, PreviewError> {
    let type_name = event.get("type").and_then(Value::as_str).unwrap_or("");
    let t: EventType = type_name.parse().map_err(PreviewError::NotAnEvent)?;
    let compiled = Compiled::new(spec).map_err(PreviewError::Invalid)?;
    let chain = compiled.chain(t).ok_or(PreviewError::NoMapping(t))?;
    let connection = ConnectionRef {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
    };
    let mut ctx = EventContext::new(event, &connection, remote.clone());

    let mut out = String::new();
    let id = event.get("id").and_then(Value::as_str).unwrap_or("?");
    let _ = writeln!(out, "{t} {id} → {namespace}/{name} ({})", spec.base_url);
    let _ = writeln!(out, "remote: {}\n", show_remote(ctx.remote()));

    for step in chain.steps() {
        let n = step.index() + 1;
        let runs = step.runs(&ctx);
        if runs.is_empty() {
            let _ = writeln!(
                out,
                "{n}. {}: not sent, the event has no images\n",
                step.name()
            );
        }
        let total = runs.len();
        for image in runs {
            let mut title = format!("{n}. {}", step.name());
            if let Some(i) = image {
                let url = image_field(&ctx, i, "url");
                let _ = write!(title, ", image {} of {total} ({url})", i + 1);
            }
            let rendered = match step.render(&ctx, image) {
                Ok(r) => r,
                Err(error) => {
                    let _ = writeln!(out, "{title}: fails");
                    return Err(PreviewError::Render {
                        listing: out,
                        error: Box::new(error),
                    });
                }
            };
            let Some(r) = rendered else {
                let when = step.request().when.as_deref().unwrap_or("");
                let _ = writeln!(out, "{title}: skipped (when: {when})\n");
                continue;
            };
            let _ = writeln!(out, "{title}:");
            write_request(&mut out, spec, &r, &ctx);
            let assumed = assume_captures(&mut ctx, &r.captures);
            if !assumed.is_empty() {
                let _ = writeln!(out, "   (continuing with {})", show_remote(&assumed));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

fn write_request(out: &mut String, spec: &ApiConnectionSpec, r: &Rendered, ctx: &EventContext) {
    let url = r.url(&spec.base_url).map_or_else(
        |e| format!("{}{} ({e})", spec.base_url, r.path),
        |u| u.to_string(),
    );
    let _ = writeln!(out, "   {} {url}", r.method.as_str());
    let mut headers: Vec<(String, String)> = Vec::new();
    if let Some(auth) = &spec.auth {
        let header = auth.api_key.as_ref().map_or("Authorization", |k| &k.header);
        headers.push((header.to_owned(), "<from spec.auth>".to_owned()));
    }
    headers.push((
        spec.idempotency_header.clone(),
        "<per event, request and image>".to_owned(),
    ));
    let content_type = match &r.body {
        RenderedBody::Empty => None,
        RenderedBody::Json(_) => Some("application/json".to_owned()),
        RenderedBody::Raw { image } => Some(image_field(ctx, *image, "contentType")),
        RenderedBody::Multipart { .. } => Some("multipart/form-data; boundary=<generated>".into()),
    };
    if let Some(ct) = content_type.filter(|_| r.header("content-type").is_none()) {
        headers.push(("Content-Type".to_owned(), ct));
    }
    headers.extend(r.headers.iter().cloned());
    for (k, v) in headers {
        let _ = writeln!(out, "   {k}: {v}");
    }
    match &r.body {
        RenderedBody::Empty => {}
        RenderedBody::Json(bytes) => {
            for line in pretty_json(&String::from_utf8_lossy(bytes)).lines() {
                let _ = writeln!(out, "   {line}");
            }
        }
        RenderedBody::Raw { image } => {
            let _ = writeln!(
                out,
                "   <image {} from {}>",
                image + 1,
                image_field(ctx, *image, "url")
            );
        }
        RenderedBody::Multipart {
            file_field,
            fields,
            image,
        } => {
            for (k, v) in fields {
                let _ = writeln!(out, "   part {k}: {v}");
            }
            let ct = image_field(ctx, *image, "contentType");
            let url = image_field(ctx, *image, "url");
            let _ = writeln!(
                out,
                "   part {file_field}: <image {} ({ct}) from {url}>",
                image + 1
            );
        }
    }
    let _ = writeln!(out, "   expect: {}", r.expect);
    for (name, c) in &r.captures {
        let _ = writeln!(out, "   capture remote.{name} ← {}", show_capture(c));
    }
}

/// Captures of a rendered request that `remote` lacks, as placeholders.
fn assume_captures(
    ctx: &mut EventContext,
    captures: &BTreeMap<String, Capture>,
) -> BTreeMap<String, String> {
    let assumed: BTreeMap<String, String> = captures
        .keys()
        .filter(|k| !ctx.remote().contains_key(*k))
        .map(|k| (k.clone(), format!("sample-{k}")))
        .collect();
    ctx.remember(assumed.clone());
    assumed
}

fn show_capture(c: &Capture) -> String {
    match (&c.json_pointer, &c.header) {
        (Some(p), _) => format!("response body at {p:?}"),
        (None, Some(h)) if c.last_segment => format!("last path segment of the {h} header"),
        (None, Some(h)) => format!("the {h} header"),
        (None, None) => "nothing".to_owned(),
    }
}

fn show_remote(remote: &BTreeMap<String, String>) -> String {
    if remote.is_empty() {
        return "nothing captured".to_owned();
    }
    let pairs: Vec<String> = remote
        .iter()
        .map(|(k, v)| format!("remote.{k} = {v:?}"))
        .collect();
    pairs.join(", ")
}

fn image_field(ctx: &EventContext, image: usize, field: &str) -> String {
    (ctx.images().get(image))
        .and_then(|i| i.get(field))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// Valid JSON text re-indented by two spaces, keys in their order (serde_json would sort).
fn pretty_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let (mut in_string, mut escaped) = (false, false);
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.next_if(|c| c.is_whitespace()).is_some() {}
                if let Some(&close @ ('}' | ']')) = chars.peek() {
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pretty_json_keeps_order_and_strings() {
        let text = r#"{"b": 1, "a": ["x, \"}{", [], {}, {"c" : null}], "e":"\\"}"#;
        let pretty = super::pretty_json(text);
        assert_eq!(
            pretty,
            "{\n  \"b\": 1,\n  \"a\": [\n    \"x, \\\"}{\",\n    [],\n    {},\n    {\n      \"c\": null\n    }\n  ],\n  \"e\": \"\\\\\"\n}"
        );
        let a: serde_json::Value = serde_json::from_str(text).unwrap();
        let b: serde_json::Value = serde_json::from_str(&pretty).unwrap();
        assert_eq!(a, b);
    }
}
