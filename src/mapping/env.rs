//! The minijinja environment every template of a connection lives in: one formatter that
//! writes each value as its place needs (path segment, JSON, plain text), limits on work and
//! output, and minijinja errors turned into line, column and a readable message.

use std::io;

use minijinja::value::{Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Instructions one render may run: far above a real mapping (a body looping over a few
/// hundred images), low enough that a nested loop cannot hold a delivery worker.
pub(crate) const FUEL: u64 = 200_000;
/// Largest rendered body.
pub(crate) const MAX_BODY: usize = 1 << 20;
/// Largest rendered path, query value, header value or form field.
pub(crate) const MAX_TEXT: usize = 16 << 10;

/// How a template's output values are written; the prefix of its name in the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Path,
    Json,
    Text,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Path => "path",
            Kind::Json => "json",
            Kind::Text => "text",
        }
    }

    fn of(template_name: &str) -> Kind {
        match template_name.split(':').next() {
            Some("path") => Kind::Path,
            Some("json") => Kind::Json,
            _ => Kind::Text,
        }
    }

    pub(crate) fn limit(self) -> usize {
        match self {
            Kind::Json => MAX_BODY,
            _ => MAX_TEXT,
        }
    }

    /// Name of a template in the environment: unique per mapping, request and field.
    pub(crate) fn name(self, mapping: usize, request: usize, field: &str) -> String {
        format!("{}:{mapping}:{request}:{field}", self.prefix())
    }
}

/// Characters left as they are in a path value: RFC 3986 "unreserved". Everything else,
/// `/ ? # %` included, is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `value` percent-encoded to stand as (part of) one path segment.
pub fn encode_segment(value: &str) -> String {
    utf8_percent_encode(value, SEGMENT).to_string()
}

pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Bodies escape as JSON, so `escape` and `tojson` agree with the formatter.
    env.set_auto_escape_callback(|name| match Kind::of(name) {
        Kind::Json => AutoEscape::Json,
        _ => AutoEscape::None,
    });
    env.set_formatter(format_value);
    env.set_fuel(Some(FUEL));
    // Spans in errors, for line and column.
    env.set_debug(true);
    env
}

/// Writes one `{{ }}` output. Undefined values never get here (SemiStrict refuses them).
fn format_value(out: &mut minijinja::Output, state: &State, value: &Value) -> Result<(), Error> {
    let text = match Kind::of(state.name()) {
        Kind::Path => encode_segment(&path_text(value)?),
        Kind::Json => json_text(value)?,
        Kind::Text => plain_text(value)?,
    };
    out.write_str(&text).map_err(Error::from)
}

fn invalid(message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, message)
}

fn path_text(value: &Value) -> Result<String, Error> {
    let text = match value.kind() {
        ValueKind::None => return Err(invalid("none in the path".into())),
        ValueKind::String | ValueKind::Number | ValueKind::Bool => value.to_string(),
        kind => return Err(invalid(format!("a {kind} cannot be a path segment"))),
    };
    if text.is_empty() {
        return Err(invalid("empty value in the path".into()));
    }
    Ok(text)
}

fn json_text(value: &Value) -> Result<String, Error> {
    if value.is_safe() {
        let text = value.as_str().unwrap_or_default();
        // Safe text is written as is: only whole JSON values, so it cannot open or close
        // anything around it.
        return match serde_json::from_str::<serde_json::Value>(text) {
            Ok(_) => Ok(text.to_owned()),
            Err(_) => Err(invalid(
                "a value marked safe must be one JSON value; leave it unmarked or use tojson"
                    .into(),
            )),
        };
    }
    serde_json::to_string(value).map_err(|e| invalid(format!("cannot write as JSON: {e}")))
}

fn plain_text(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::None => Ok(String::new()),
        ValueKind::String | ValueKind::Number | ValueKind::Bool => Ok(value.to_string()),
        kind => Err(invalid(format!(
            "a {kind} is not text; use a filter such as join or tojson"
        ))),
    }
}

/// Output sink that refuses to grow past `limit` bytes.
pub(crate) struct Capped {
    pub(crate) buf: Vec<u8>,
    limit: usize,
    pub(crate) overflowed: bool,
}

impl Capped {
    pub(crate) fn new(limit: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where in `source` an error is and what it says, for a person.
pub(crate) struct Described {
    pub(crate) line: Option<usize>,
    pub(crate) column: Option<usize>,
    pub(crate) message: String,
}

/// Line, column (1-based, in characters) and message of a minijinja error in `source`.
/// With `quote`, the failing expression is appended (`undefined value (remote.id)`).
pub(crate) fn describe(err: &Error, source: &str, quote: bool) -> Described {
    let mut message = match err.kind() {
        ErrorKind::OutOfFuel => format!("the template runs too long (over {FUEL} steps)"),
        kind => match err.detail() {
            Some(detail) if kind == ErrorKind::SyntaxError => detail.to_owned(),
            Some(detail) => format!("{kind}: {detail}"),
            None => kind.to_string(),
        },
    };
    let range = err.range().filter(|r| source.get(..r.start).is_some());
    let (mut line, mut column) = (err.line(), None);
    if let Some(r) = &range {
        let before = &source[..r.start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        line = Some(before.matches('\n').count() + 1);
        column = Some(before[line_start..].chars().count() + 1);
        if quote
            && let Some(snippet) = source.get(r.clone())
            && !snippet.is_empty()
            && !snippet.contains('\n')
            && snippet.chars().count() <= 80
        {
            message.push_str(&format!(" ({})", snippet.trim()));
        }
    }
    Described {
        line,
        column,
        message,
    }
}
