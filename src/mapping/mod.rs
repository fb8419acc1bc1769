//! `ApiConnection` mappings: every template of a connection compiled once ([`Compiled`]),
//! rendered request by request for an event ([`Step::render`]), values kept from the
//! responses ([`capture`]), the whole mapping checked against the client's OpenAPI document
//! ([`openapi::check`]) and listed for a person ([`render_preview`]).
//!
//! Templates are minijinja (Jinja2). What a value becomes depends on where it is written:
//! - `path`: each `{{ }}` output is percent-encoded as one path segment (only `A-Z a-z 0-9
//!   - . _ ~` stay), so no value can add a segment, a query or a fragment; an empty value and
//!   a `.`/`..` segment are errors. Text written in the template stays as written.
//! - `body`: each output is written as JSON (strings quoted and escaped), and the result must
//!   parse as JSON. A value marked safe (`tojson` output) is written as it is, but only when
//!   it is one JSON value.
//! - `headers`, `query`, `forEachImage.fields`: plain text; `none` is empty; lists and maps are
//!   refused (use `join` or `tojson`). A header value with a control character is an error.
//! - `when`: an expression; the request is skipped when it is false.
//!
//! Undefined values: minijinja's `SemiStrict` mode. Printing, iterating or looking into an
//! undefined value is an error, so `{{ remote.id }}` before anything was captured never sends
//! `/vehicles/`; testing one is allowed: `not remote.id`, `remote.id is defined`,
//! `{% if vehicle.trim %}`. (`Strict` would refuse `not remote.id` too.)
//!
//! Limits: one template run takes at most 200 000 steps, a body renders at most 1 MiB and
//! any other field 16 KiB; `include`, `extends` and macros are not available.
//!
//! Context: `event` (the envelope), `vehicle`, `user` (from `event.data`, undefined when the
//! event has none), `images` (`event.data.images`, or empty), `remote` (values captured for
//! the vehicle), `connection` (`name`, `namespace`) and, under `forEachImage`, `image` (the
//! image object and `position`, its 1-based place in the event's images).

mod capture;
mod compile;
mod env;
pub mod openapi;
mod preview;
mod render;
pub mod samples;
#[cfg(test)]
mod tests;

use std::fmt;

pub use capture::{CaptureError, capture};
pub use compile::{Chain, Compiled, Step};
pub use env::encode_segment;
pub use preview::{PreviewError, render_preview};
pub use render::{ConnectionRef, EventContext, Expect, Rendered, RenderedBody};

use crate::api::EventType;

/// A template that does not compile, with where it is. Shown in `Ready=False/InvalidTemplate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Index of the mapping in `spec.mappings`.
    pub mapping: usize,
    /// The mapping's event types.
    pub event_types: Vec<EventType>,
    /// Name of the request.
    pub request: String,
    /// `path`, `body`, `when`, `query.<name>`, `headers.<name>`, `forEachImage.fields.<name>`.
    pub field: String,
    /// 1-based line and column (in characters) in the template, when known.
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {:?} {}", self.request, self.field)?;
        write_position(f, self.line, self.column)?;
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TemplateError {}

/// A request that could not be rendered for an event: the chain stops there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub request: String,
    /// As in [`TemplateError::field`].
    pub field: String,
    /// Index into `event.data.images` of the image being sent.
    pub image: Option<usize>,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {:?}", self.request)?;
        if let Some(i) = self.image {
            write!(f, " (image {})", i + 1)?;
        }
        write!(f, " {}", self.field)?;
        write_position(f, self.line, self.column)?;
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for RenderError {}

fn write_position(
    f: &mut fmt::Formatter<'_>,
    line: Option<usize>,
    column: Option<usize>,
) -> fmt::Result {
    match (line, column) {
        (Some(l), Some(c)) => write!(f, ", line {l} column {c}"),
        (Some(l), None) => write!(f, ", line {l}"),
        _ => Ok(()),
    }
}
