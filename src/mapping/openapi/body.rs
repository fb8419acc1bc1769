//! Request bodies against the operation's `requestBody`: sent exactly when it takes one, of
//! a media type it accepts, a JSON body valid for its schema, multipart parts its schema has.

use serde_json::Value;

use super::doc::{self, Operation};
use super::{Checker, EventContext, Rendered, RenderedBody, Step};
use crate::api::EventType;

impl Checker<'_> {
    pub(super) fn body(
        &mut self,
        step: &Step<'_>,
        t: EventType,
        r: &Rendered,
        ctx: &EventContext,
        op: &Operation<'_>,
    ) {
        let request_body = match op.op.get("requestBody") {
            Some(rb) => match self.doc.resolve(rb, format!("{}/requestBody", op.pointer)) {
                Ok(found) => Some(found),
                Err(m) => return self.push(step, t, "body", None, m),
            },
            None => None,
        };
        let required = request_body
            .as_ref()
            .is_some_and(|(rb, _)| rb.get("required") == Some(&Value::Bool(true)));
        let (rb, rb_pointer) = match (&r.body, request_body) {
            (RenderedBody::Empty, _) => {
                if required {
                    self.push(
                        step,
                        t,
                        "body",
                        None,
                        "the operation requires a request body; the mapping sends none".into(),
                    );
                }
                return;
            }
            (_, None) => {
                return self.push(
                    step,
                    t,
                    "body",
                    None,
                    "the operation takes no request body; the mapping sends one".into(),
                );
            }
            (_, Some(found)) => found,
        };
        let content = rb.get("content").and_then(Value::as_object);
        let accepts = || {
            content
                .map(|c| c.keys().cloned().collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        let (sent_type, json) = match &r.body {
            RenderedBody::Json(_) => (
                r.header("content-type")
                    .map_or("application/json".to_owned(), media_type),
                true,
            ),
            RenderedBody::Raw { image } => {
                let ct = ctx
                    .images()
                    .get(*image)
                    .and_then(|i| i.get("contentType"))
                    .and_then(Value::as_str);
                (
                    ct.map_or("application/octet-stream".to_owned(), media_type),
                    false,
                )
            }
            RenderedBody::Multipart { .. } => ("multipart/form-data".to_owned(), false),
            RenderedBody::Empty => return,
        };
        let Some((key, media)) = content.and_then(|c| pick_media(c, &sent_type, json)) else {
            let message = format!(
                "the operation does not accept {sent_type} (it accepts {})",
                accepts()
            );
            return self.push(step, t, "body", None, message);
        };
        let schema_pointer = format!("{rb_pointer}/content/{}/schema", doc::escape(key));
        match &r.body {
            RenderedBody::Json(bytes) => {
                let Some(_) = media.get("schema") else { return };
                let Ok(instance) = serde_json::from_slice::<Value>(bytes) else {
                    return;
                };
                match self.schemas.validate(&schema_pointer, &instance) {
                    Ok(failures) => {
                        for f in failures {
                            let location = if f.instance_path.is_empty() {
                                "body".to_owned()
                            } else {
                                format!("body {}", f.instance_path)
                            };
                            self.push(step, t, &location, Some(f.schema_path), f.message);
                        }
                    }
                    Err(m) => self.push(step, t, "body", None, m),
                }
            }
            RenderedBody::Multipart {
                file_field, fields, ..
            } => {
                let mut sent: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                sent.push(file_field);
                self.multipart(step, t, media, &schema_pointer, &sent);
            }
            _ => {}
        }
    }

    /// Parts sent against the multipart schema's properties (`allOf` branches merged).
    fn multipart(
        &mut self,
        step: &Step<'_>,
        t: EventType,
        media: &Value,
        pointer: &str,
        sent: &[&str],
    ) {
        let Some(schema) = media.get("schema") else {
            return;
        };
        let mut properties = Vec::new();
        let mut required = Vec::new();
        let mut closed = false;
        let mut stack = vec![(schema, pointer.to_owned())];
        while let Some((s, p)) = stack.pop() {
            let Ok((s, p)) = self.doc.resolve(s, p) else {
                continue;
            };
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                properties.extend(props.keys().cloned());
            }
            required.extend(
                s.get("required")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
            closed |= s.get("additionalProperties") == Some(&Value::Bool(false));
            for (i, branch) in s
                .get("allOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                stack.push((branch, format!("{p}/allOf/{i}")));
            }
        }
        if !properties.is_empty() || closed {
            for name in sent.iter().filter(|n| !properties.iter().any(|p| p == *n)) {
                let message = format!(
                    "is not a property of the operation's multipart schema (it has {})",
                    properties.join(", ")
                );
                self.push(
                    step,
                    t,
                    &format!("multipart field {name}"),
                    Some(format!("{pointer}/properties")),
                    message,
                );
            }
        }
        for name in required.iter().filter(|r| !sent.contains(&r.as_str())) {
            let message = "is required by the operation; the mapping does not send it".to_owned();
            self.push(
                step,
                t,
                &format!("multipart field {name}"),
                Some(format!("{pointer}/required")),
                message,
            );
        }
    }
}

/// `type/subtype` of a Content-Type value, lowercase.
fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The document's media type entry for what is sent: the exact type, `type/*`, `*/*`; a
/// JSON body also takes `application/json` and `+json` entries, an image
/// `application/octet-stream`.
fn pick_media<'d>(
    content: &'d serde_json::Map<String, Value>,
    sent: &str,
    json: bool,
) -> Option<(&'d str, &'d Value)> {
    let major = sent.split('/').next().unwrap_or("");
    let entries: Vec<(String, &'d str, &'d Value)> = content
        .iter()
        .map(|(k, v)| (media_type(k), k.as_str(), v))
        .collect();
    let find = |want: &dyn Fn(&str) -> bool| {
        entries
            .iter()
            .find(|(m, _, _)| want(m))
            .map(|(_, k, v)| (*k, *v))
    };
    find(&|m| m == sent)
        .or_else(|| {
            json.then(|| find(&|m| m == "application/json" || m.ends_with("+json")))
                .flatten()
        })
        .or_else(|| {
            (!json && major == "image")
                .then(|| find(&|m| m == "application/octet-stream"))
                .flatten()
        })
        .or_else(|| find(&|m| m == format!("{major}/*")))
        .or_else(|| find(&|m| m == "*/*"))
}
