//! One request rendered for one event (and image): what the sender puts on the wire.

use std::collections::BTreeMap;
use std::fmt;

use minijinja::value::Value;
use percent_encoding::percent_decode_str;

use super::RenderError;
use super::compile::Step;
use super::env::{Capped, Kind, describe};
use crate::api::apiconnection::{Capture, HttpMethod, ImageSend};

/// The resource a render is for: `connection.name` and `connection.namespace` in templates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRef {
    pub name: String,
    pub namespace: String,
}

/// What templates see for one event; `remote` grows as requests capture values.
#[derive(Clone, Debug)]
pub struct EventContext {
    vars: BTreeMap<&'static str, Value>,
    images: Vec<serde_json::Value>,
    remote: BTreeMap<String, String>,
}

impl EventContext {
    /// `remote`: the values captured for this vehicle so far.
    pub fn new(
        event: &serde_json::Value,
        connection: &ConnectionRef,
        remote: BTreeMap<String, String>,
    ) -> EventContext {
        let data = event.get("data");
        let images = match data.and_then(|d| d.get("images")) {
            Some(serde_json::Value::Array(list)) => list.clone(),
            _ => Vec::new(),
        };
        let mut vars = BTreeMap::new();
        vars.insert("event", Value::from_serialize(event));
        vars.insert("images", Value::from_serialize(&images));
        vars.insert(
            "connection",
            Value::from_serialize(BTreeMap::from([
                ("name", &connection.name),
                ("namespace", &connection.namespace),
            ])),
        );
        // Absent rather than null, so that `vehicle is defined` tells.
        for key in ["vehicle", "user"] {
            if let Some(v) = data.and_then(|d| d.get(key)).filter(|v| !v.is_null()) {
                vars.insert(key, Value::from_serialize(v));
            }
        }
        let mut ctx = EventContext {
            vars,
            images,
            remote: BTreeMap::new(),
        };
        ctx.set_remote(remote);
        ctx
    }

    pub fn remote(&self) -> &BTreeMap<String, String> {
        &self.remote
    }

    /// Replaces the captured values.
    pub fn set_remote(&mut self, remote: BTreeMap<String, String>) {
        self.vars.insert("remote", Value::from_serialize(&remote));
        self.remote = remote;
    }

    /// Adds what a response captured; later requests of the chain see it.
    pub fn remember(&mut self, captured: BTreeMap<String, String>) {
        let mut remote = std::mem::take(&mut self.remote);
        remote.extend(captured);
        self.set_remote(remote);
    }

    /// `event.data.images`.
    pub fn images(&self) -> &[serde_json::Value] {
        &self.images
    }

    pub(crate) fn with_image(&self, image: Option<usize>) -> BTreeMap<&'static str, Value> {
        let mut vars = self.vars.clone();
        if let Some(i) = image
            && let Some(img) = self.images.get(i)
        {
            let mut img = img.clone();
            if let Some(obj) = img.as_object_mut() {
                obj.insert("position".into(), (i + 1).into());
            }
            vars.insert("image", Value::from_serialize(&img));
        }
        vars
    }
}

/// A request ready to send, relative to `baseUrl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub method: HttpMethod,
    /// Starts with `/`; values percent-encoded. Join with [`Rendered::url`].
    pub path: String,
    /// Unencoded; the HTTP client encodes them.
    pub query: Vec<(String, String)>,
    /// The mapping's headers (no control characters). Authentication and the idempotency
    /// header are the sender's.
    pub headers: Vec<(String, String)>,
    pub body: RenderedBody,
    /// Index into `event.data.images` under `forEachImage`.
    pub image: Option<usize>,
    pub expect: Expect,
    /// What to keep from the response: pass to [`capture`](super::capture).
    pub captures: BTreeMap<String, Capture>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RenderedBody {
    Empty,
    /// Valid JSON; `application/json` unless the mapping sets `Content-Type`.
    Json(Vec<u8>),
    /// The image's bytes, with its content type.
    Raw {
        image: usize,
    },
    /// `multipart/form-data`: text `fields` in order, then the image as `file_field`.
    Multipart {
        file_field: String,
        fields: Vec<(String, String)>,
        image: usize,
    },
}

/// Which statuses count as success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect(pub Option<Vec<u16>>);

impl Expect {
    pub fn accepts(&self, status: u16) -> bool {
        match &self.0 {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(list) => {
                let list: Vec<String> = list.iter().map(u16::to_string).collect();
                f.write_str(&list.join(", "))
            }
            None => f.write_str("2xx"),
        }
    }
}

impl Rendered {
    /// `base_url` with the path appended (its own trailing `/` dropped) and the query set.
    pub fn url(&self, base_url: &str) -> Result<url::Url, url::ParseError> {
        let mut url = url::Url::parse(base_url)?;
        let path = format!("{}{}", url.path().trim_end_matches('/'), self.path);
        url.set_path(&path);
        url.set_fragment(None);
        url.set_query(None);
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        Ok(url)
    }

    /// The value of a mapping header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Step<'_> {
    /// The renders this request takes for the event: `[None]` once, or `Some(i)` per image
    /// under `forEachImage` (none when the event has no images).
    pub fn runs(&self, ctx: &EventContext) -> Vec<Option<usize>> {
        match self.for_each_image() {
            Some(_) => (0..ctx.images.len()).map(Some).collect(),
            None => vec![None],
        }
    }

    /// Renders the request for `ctx` (and `image`, an index from [`Step::runs`]); `None`
    /// when `when` is false.
    pub fn render(
        &self,
        ctx: &EventContext,
        image: Option<usize>,
    ) -> Result<Option<Rendered>, RenderError> {
        let r = &self.def.request;
        let fail = |field: &str, message: String| RenderError {
            request: r.name.clone(),
            field: field.to_owned(),
            image,
            line: None,
            column: None,
            message,
        };
        let send = self.for_each_image();
        match (send, image) {
            (Some(_), None) => return Err(fail("forEachImage", "needs an image".into())),
            (None, Some(_)) => return Err(fail("forEachImage", "has no images".into())),
            (Some(_), Some(i)) if i >= ctx.images.len() => {
                return Err(fail(
                    "forEachImage",
                    format!("the event has no image {}", i + 1),
                ));
            }
            _ => {}
        }
        let vars = ctx.with_image(image);

        if let Some(when) = &r.when {
            let value = (self.env.compile_expression_owned(when.clone()))
                .and_then(|e| e.eval(&vars))
                .map_err(|e| self.error("when", image, &e, when))?;
            if !value.is_true() {
                return Ok(None);
            }
        }

        let path = self.text(&self.def.path, "path", Kind::Path, &vars, image)?;
        check_path(&path, &r.path).map_err(|m| fail("path", m))?;
        let mut query = Vec::new();
        for (k, name) in &self.def.query {
            let field = format!("query.{k}");
            query.push((
                k.clone(),
                self.text(name, &field, Kind::Text, &vars, image)?,
            ));
        }
        let mut headers = Vec::new();
        for (k, name) in &self.def.headers {
            let field = format!("headers.{k}");
            let value = self.text(name, &field, Kind::Text, &vars, image)?;
            if value.chars().any(|c| c.is_control() && c != '\t') {
                let m = "has a line break or another control character; a header value is one line";
                return Err(fail(&field, m.into()));
            }
            headers.push((k.clone(), value));
        }

        let body = match (send, image) {
            (Some(ImageSend::Raw), Some(image)) => RenderedBody::Raw { image },
            (Some(ImageSend::Multipart), Some(image)) => {
                let mut fields = Vec::new();
                for (k, name) in &self.def.fields {
                    let field = format!("forEachImage.fields.{k}");
                    fields.push((
                        k.clone(),
                        self.text(name, &field, Kind::Text, &vars, Some(image))?,
                    ));
                }
                let file_field = (r.for_each_image.as_ref())
                    .and_then(|f| f.field.clone())
                    .unwrap_or_else(|| "file".to_owned());
                RenderedBody::Multipart {
                    file_field,
                    fields,
                    image,
                }
            }
            _ => match &self.def.body {
                None => RenderedBody::Empty,
                Some(name) => {
                    let bytes = self.render_bytes(name, "body", Kind::Json, &vars, image)?;
                    check_json(&bytes).map_err(|m| fail("body", m))?;
                    RenderedBody::Json(bytes)
                }
            },
        };

        Ok(Some(Rendered {
            name: r.name.clone(),
            method: r.method,
            path,
            query,
            headers,
            body,
            image,
            expect: Expect(r.expect.clone()),
            captures: r.capture.clone().unwrap_or_default(),
        }))
    }

    fn text(
        &self,
        name: &str,
        field: &str,
        kind: Kind,
        vars: &BTreeMap<&'static str, Value>,
        image: Option<usize>,
    ) -> Result<String, RenderError> {
        let bytes = self.render_bytes(name, field, kind, vars, image)?;
        // Templates and values are UTF-8, and so is everything the formatter writes.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn render_bytes(
        &self,
        name: &str,
        field: &str,
        kind: Kind,
        vars: &BTreeMap<&'static str, Value>,
        image: Option<usize>,
    ) -> Result<Vec<u8>, RenderError> {
        let mut out = Capped::new(kind.limit());
        let result = (self.env.get_template(name))
            .and_then(|t| t.render_captured_to(vars, &mut out).map(drop));
        match result {
            Ok(_) => Ok(out.buf),
            Err(_) if out.overflowed => Err(RenderError {
                request: self.def.request.name.clone(),
                field: field.to_owned(),
                image,
                line: None,
                column: None,
                message: format!("renders more than {} bytes", kind.limit()),
            }),
            Err(e) => {
                let source = e.template_source().unwrap_or_default().to_owned();
                Err(self.error(field, image, &e, &source))
            }
        }
    }

    fn error(
        &self,
        field: &str,
        image: Option<usize>,
        e: &minijinja::Error,
        source: &str,
    ) -> RenderError {
        let d = describe(e, source, true);
        RenderError {
            request: self.def.request.name.clone(),
            field: field.to_owned(),
            image,
            line: d.line,
            column: d.column,
            message: d.message,
        }
    }
}

/// No `.`/`..` segment (also percent-encoded: URL parsers resolve `%2e%2e` too) and no empty
/// one, except a trailing `/` the template itself ends with.
fn check_path(path: &str, template: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        let decoded = percent_decode_str(seg).decode_utf8_lossy();
        if decoded == "." || decoded == ".." {
            return Err(format!(
                "renders {path:?}: '.' and '..' segments are not allowed"
            ));
        }
        let last = i + 1 == segments.len();
        if seg.is_empty() && !(last && template.ends_with('/')) {
            return Err(format!("renders {path:?}, with an empty segment"));
        }
    }
    Ok(())
}

fn check_json(bytes: &[u8]) -> Result<(), String> {
    let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().nth(e.line().saturating_sub(1)).unwrap_or("");
    let near: String = line.chars().take(120).collect();
    // `"{{ vin }}"` renders `""WVW…""`: the usual mistake.
    let hint = if near.contains("\"\"") {
        "; values are written as JSON already, so write {{ value }} without quotes"
    } else {
        ""
    };
    Err(format!(
        "the rendered body is not JSON: {e} (rendered line: {near:?}){hint}"
    ))
}
