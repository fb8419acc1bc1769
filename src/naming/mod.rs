//! FTP naming templates: parse a client's `rules` templates once, render them per vehicle and
//! image with every substituted value sanitised, and join the parts into a path that cannot
//! leave `baseDirectory`.
//!
//! Placeholders (see [`FtpRules`](crate::api::ftp::FtpRules)): `{vin}`, `{stock}`, `{index}` /
//! `{index:0N}` (N = 1..9), `{ext}`, `{client}`, `{user}`, `{vehicle}`, `{make}`, `{model}`,
//! `{year}`, `{event}` (the event type, e.g. `vehicle.processed`), `{date}` (YYYYMMDD, UTC),
//! `{time}` (HHMMSS, UTC); `{{` and `}}` are literal braces.
//!
//! Modules: [`placeholder`] (what each placeholder stands for and its value), [`template`]
//! (parsing and rendering), [`path`] (sanitising values and joining paths), [`rules`]
//! (checking an FtpConnection's rules before any upload).

mod path;
mod placeholder;
mod rules;
mod template;
#[cfg(test)]
mod tests;

pub use path::{PathError, PathPart, join_path, sanitize};
pub use placeholder::{NamingContext, Placeholder};
pub use rules::validate_rules;
pub use template::Template;

/// Longest substituted value, in characters; longer values are cut.
pub const MAX_VALUE_CHARS: usize = 100;
/// Longest path segment, in bytes: the common limit of FTP servers' file systems.
pub const MAX_SEGMENT_BYTES: usize = 255;

/// A template that cannot be used, naming the rules field.
#[derive(Debug, thiserror::Error)]
#[error("rules.{field}: {message}")]
pub struct TemplateError {
    pub field: &'static str,
    pub message: String,
}

/// Why a template string does not parse. Positions are byte offsets into the template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown placeholder {{{name}}} at position {at}{hint}; known: {KNOWN}")]
    UnknownPlaceholder {
        name: String,
        at: usize,
        /// ` (did you mean {vin}?)` or empty.
        hint: String,
    },
    #[error("empty placeholder {{}} at position {at}; write {{{{}}}} for literal braces")]
    EmptyPlaceholder { at: usize },
    #[error(
        "bad format {{{spec}}} at position {at}; only {{index}} takes a format, as {{index:0N}} with N from 1 to 9"
    )]
    BadFormat { spec: String, at: usize },
    #[error("unclosed '{{' at position {at}; write '{{{{' for a literal brace")]
    Unclosed { at: usize },
    #[error("unmatched '}}' at position {at}; write '}}}}' for a literal brace")]
    UnmatchedClose { at: usize },
}

const KNOWN: &str = "{vin}, {stock}, {index}, {index:0N}, {ext}, {client}, {user}, {vehicle}, {make}, {model}, {year}, {event}, {date}, {time}";

/// A value that a template needs and the context does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("no value for {{{placeholder}}} ({what} missing or blank)")]
    Missing {
        placeholder: &'static str,
        what: &'static str,
    },
}
