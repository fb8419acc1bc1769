//! FTP naming templates: parse a client's `rules` templates once, render them per vehicle and
//! image with every substituted value sanitised, and join the parts into a path that cannot
//! leave `baseDirectory`.
//!
//! Placeholders (see [`FtpRules`]): `{vin}`, `{stock}`, `{index}` / `{index:0N}` (N = 1..9),
//! `{ext}`, `{client}`, `{user}`, `{vehicle}`, `{make}`, `{model}`, `{year}`, `{event}` (the
//! event type, e.g. `vehicle.processed`), `{date}` (YYYYMMDD, UTC), `{time}` (HHMMSS, UTC);
//! `{{` and `}}` are literal braces.

use std::fmt;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;

use crate::api::EventType;
use crate::api::ftp::{FtpRules, Layout};

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

/// Why FTP path parts cannot be joined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("{part} {path:?} must be relative")]
    Absolute { part: PathPart, path: String },
    #[error("{part} {path:?} must not contain '..' segments")]
    Parent { part: PathPart, path: String },
    #[error("{part} {path:?} must not contain backslashes or control characters")]
    BadCharacter { part: PathPart, path: String },
    #[error("{part} {path:?} has a segment longer than {MAX_SEGMENT_BYTES} bytes")]
    TooLong { part: PathPart, path: String },
    #[error(
        "file name {name:?} must be one non-empty name without '/' (use rules.directory for sub-directories)"
    )]
    BadFileName { name: String },
}

/// Which argument of [`join_path`] a [`PathError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathPart {
    Base,
    Directory,
    File,
}

impl fmt::Display for PathPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathPart::Base => "base directory",
            PathPart::Directory => "directory",
            PathPart::File => "file name",
        })
    }
}

impl PathError {
    pub fn part(&self) -> PathPart {
        match self {
            PathError::Absolute { part, .. }
            | PathError::Parent { part, .. }
            | PathError::BadCharacter { part, .. }
            | PathError::TooLong { part, .. } => *part,
            PathError::BadFileName { .. } => PathPart::File,
        }
    }
}

/// One placeholder of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Vin,
    Stock,
    /// Image index, zero-padded to `width` digits when set.
    Index {
        width: Option<u8>,
    },
    Ext,
    Client,
    User,
    Vehicle,
    Make,
    Model,
    Year,
    Event,
    Date,
    Time,
}

impl Placeholder {
    const NAMES: [(&'static str, Placeholder); 13] = [
        ("vin", Placeholder::Vin),
        ("stock", Placeholder::Stock),
        ("index", Placeholder::Index { width: None }),
        ("ext", Placeholder::Ext),
        ("client", Placeholder::Client),
        ("user", Placeholder::User),
        ("vehicle", Placeholder::Vehicle),
        ("make", Placeholder::Make),
        ("model", Placeholder::Model),
        ("year", Placeholder::Year),
        ("event", Placeholder::Event),
        ("date", Placeholder::Date),
        ("time", Placeholder::Time),
    ];

    /// Its name inside the braces.
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Vin => "vin",
            Placeholder::Stock => "stock",
            Placeholder::Index { .. } => "index",
            Placeholder::Ext => "ext",
            Placeholder::Client => "client",
            Placeholder::User => "user",
            Placeholder::Vehicle => "vehicle",
            Placeholder::Make => "make",
            Placeholder::Model => "model",
            Placeholder::Year => "year",
            Placeholder::Event => "event",
            Placeholder::Date => "date",
            Placeholder::Time => "time",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Placeholder::Vin => "the vehicle's VIN",
            Placeholder::Stock => "the vehicle's stock number",
            Placeholder::Index { .. } => "the image index (only image file names have one)",
            Placeholder::Ext => "the image extension (only image file names have one)",
            Placeholder::Client => "the client id",
            Placeholder::User => "the user id",
            Placeholder::Vehicle => "the vehicle id",
            Placeholder::Make => "the vehicle's make",
            Placeholder::Model => "the vehicle's model",
            Placeholder::Year => "the vehicle's year",
            Placeholder::Event => "the event type",
            Placeholder::Date | Placeholder::Time => "the event time",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Placeholder(Placeholder),
}

/// A parsed naming template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The values a template is rendered with. Optional values that a template uses but the
/// context lacks make [`Template::render`] fail rather than produce a surprising name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamingContext<'a> {
    pub vin: Option<&'a str>,
    pub stock: Option<&'a str>,
    /// 1-based index of the image; `None` for names of the whole vehicle.
    pub index: Option<u32>,
    /// Image file extension without the dot; `None` for names of the whole vehicle.
    pub ext: Option<&'a str>,
    pub client: &'a str,
    pub user: Option<&'a str>,
    /// The platform's vehicle id.
    pub vehicle: Option<&'a str>,
    pub make: Option<&'a str>,
    pub model: Option<&'a str>,
    pub year: Option<u16>,
    pub event: EventType,
    /// Event time; `{date}` and `{time}` are taken from it in UTC.
    pub time: Timestamp,
}

impl<'a> NamingContext<'a> {
    /// A context with only the values every event has.
    pub fn new(client: &'a str, event: EventType, time: Timestamp) -> Self {
        NamingContext {
            vin: None,
            stock: None,
            index: None,
            ext: None,
            client,
            user: None,
            vehicle: None,
            make: None,
            model: None,
            year: None,
            event,
            time,
        }
    }

    /// The SPEC's example vehicle, image 1: what `validate_rules` renders templates with.
    pub fn sample() -> NamingContext<'static> {
        NamingContext {
            vin: Some("WVWZZZ1JZXW000001"),
            stock: Some("A1234"),
            index: Some(1),
            ext: Some("jpg"),
            client: "dealer-123",
            user: Some("u-42"),
            vehicle: Some("veh-9"),
            make: Some("Volkswagen"),
            model: Some("Golf"),
            year: Some(2021),
            event: EventType::VehicleProcessed,
            // 2026-11-27T10:15:30Z, the SPEC's example event time.
            time: Timestamp::from_second(1_795_774_530).unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }

    /// The same context for a name of the whole vehicle (no image index or extension).
    pub fn for_vehicle(&self) -> Self {
        NamingContext {
            index: None,
            ext: None,
            ..self.clone()
        }
    }

    /// The same context for image `index` with extension `ext`.
    pub fn for_image(&self, index: u32, ext: &'a str) -> Self {
        NamingContext {
            index: Some(index),
            ext: Some(ext),
            ..self.clone()
        }
    }
}

impl Template {
    /// Parses `source`; see the module documentation for the syntax.
    pub fn parse(source: &str) -> Result<Template, ParseError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = source.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, n)| n == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, n)| n == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => return Err(ParseError::UnmatchedClose { at }),
                '{' => {
                    let rest = &source[at + 1..];
                    // A second '{' before the '}' means this one was never closed.
                    let end = match rest.find(['{', '}']) {
                        Some(i) if rest[i..].starts_with('}') => i,
                        _ => return Err(ParseError::Unclosed { at }),
                    };
                    let placeholder = parse_placeholder(&rest[..end], at)?;
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(placeholder));
                    // Skip the placeholder's characters and its closing brace.
                    while chars.next_if(|&(i, _)| i <= at + 1 + end).is_some() {}
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The placeholders it uses, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = Placeholder> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(p) => Some(*p),
            Part::Literal(_) => None,
        })
    }

    /// Whether it has an `{index}` placeholder, so each image of a vehicle gets its own name.
    pub fn uses_index(&self) -> bool {
        self.placeholders()
            .any(|p| matches!(p, Placeholder::Index { .. }))
    }

    /// Substitutes every placeholder with its sanitised value. Literal text is kept as
    /// written; [`join_path`] checks the result.
    pub fn render(&self, ctx: &NamingContext<'_>) -> Result<String, RenderError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Placeholder(p) => out.push_str(&value(*p, ctx)?),
            }
        }
        Ok(out)
    }

    /// Whether `name` is a name this template renders for the vehicle in `ctx` (a context
    /// for the whole vehicle) with any image index and extension, and any event time and
    /// type: what a vehicle's earlier uploads may have been called. `{index}` matches digits
    /// (at least its padding width), `{ext}` letters and digits, `{date}` 8 digits, `{time}`
    /// 6, `{event}` an event type; every other placeholder must equal its value in `ctx`,
    /// which fails like [`Template::render`] when the context lacks it.
    ///
    /// Linear in the template and the name (names come from servers' listings, so no
    /// backtracking), and a name longer than [`MAX_SEGMENT_BYTES`] never matches: no upload
    /// is called that.
    pub fn matches(&self, ctx: &NamingContext<'_>, name: &str) -> Result<bool, RenderError> {
        // Values first, so that a missing one is an error whatever `name` is.
        let mut fixed = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            fixed.push(match part {
                Part::Placeholder(p) if !varies_per_upload(*p) => Some(value(*p, ctx)?),
                _ => None,
            });
        }
        Ok(match_parts(&self.parts, &fixed, name))
    }

    /// Whether it has a placeholder that differs between uploads of one vehicle (`{date}`,
    /// `{time}`, `{event}`), so that a later event cannot render the same name.
    pub fn varies_per_upload(&self) -> bool {
        self.placeholders().any(|p| {
            matches!(
                p,
                Placeholder::Date | Placeholder::Time | Placeholder::Event
            )
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl std::str::FromStr for Template {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

fn parse_placeholder(inner: &str, at: usize) -> Result<Placeholder, ParseError> {
    if inner.is_empty() {
        return Err(ParseError::EmptyPlaceholder { at });
    }
    let (name, format) = match inner.split_once(':') {
        Some((name, format)) => (name, Some(format)),
        None => (inner, None),
    };
    let Some(&(_, placeholder)) = Placeholder::NAMES.iter().find(|(n, _)| *n == name) else {
        return Err(ParseError::UnknownPlaceholder {
            name: inner.to_owned(),
            at,
            hint: suggestion(name),
        });
    };
    match (placeholder, format) {
        (p, None) => Ok(p),
        (Placeholder::Index { .. }, Some(format)) => match format.as_bytes() {
            [b'0', d @ b'1'..=b'9'] => Ok(Placeholder::Index {
                width: Some(d - b'0'),
            }),
            _ => Err(ParseError::BadFormat {
                spec: inner.to_owned(),
                at,
            }),
        },
        (_, Some(_)) => Err(ParseError::BadFormat {
            spec: inner.to_owned(),
            at,
        }),
    }
}

/// ` (did you mean {x}?)` for a name one or two edits away from a known one: typos such as
/// `{vim}` are the usual mistake.
fn suggestion(name: &str) -> String {
    Placeholder::NAMES
        .iter()
        .map(|(known, _)| (edit_distance(name, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| format!(" (did you mean {{{known}}}?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Placeholders whose value depends on the image or the event rather than on the vehicle.
fn varies_per_upload(p: Placeholder) -> bool {
    matches!(
        p,
        Placeholder::Index { .. }
            | Placeholder::Ext
            | Placeholder::Date
            | Placeholder::Time
            | Placeholder::Event
    )
}

/// Match of `name` against `parts`; `fixed[i]` is the value of part `i` when it is a
/// placeholder with one value for the vehicle. Tracks the set of name positions the parts so
/// far can end at, so each part costs O(name length) whatever the template: no backtracking.
fn match_parts(parts: &[Part], fixed: &[Option<String>], name: &str) -> bool {
    let name = name.as_bytes();
    if name.len() > MAX_SEGMENT_BYTES {
        return false;
    }
    let n = name.len();
    // Length of the run of digits (letters and digits) starting at each position.
    let run = |class: fn(&u8) -> bool| {
        let mut r = vec![0usize; n + 1];
        for p in (0..n).rev() {
            r[p] = if class(&name[p]) { r[p + 1] + 1 } else { 0 };
        }
        r
    };
    let (digits, alnum) = (run(u8::is_ascii_digit), run(u8::is_ascii_alphanumeric));
    let events: Vec<String> = EventType::ALL
        .iter()
        .map(|t| sanitize(t.as_str()))
        .collect();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for (part, value) in parts.iter().zip(fixed) {
        let mut next = vec![false; n + 1];
        // Ranges of end positions, added up after the loop: +1 at the start, -1 past the end.
        let mut ranges = vec![0i32; n + 2];
        let exact = |p: usize, s: &[u8], next: &mut Vec<bool>| {
            if name[p..].starts_with(s) {
                next[p + s.len()] = true;
            }
        };
        for p in (0..=n).filter(|&p| reach[p]) {
            match part {
                Part::Literal(l) => exact(p, l.as_bytes(), &mut next),
                Part::Placeholder(Placeholder::Index { width }) => {
                    let min = usize::from(width.unwrap_or(1)).max(1);
                    if digits[p] >= min {
                        ranges[p + min] += 1;
                        ranges[p + digits[p] + 1] -= 1;
                    }
                }
                Part::Placeholder(Placeholder::Ext) => {
                    if alnum[p] >= 1 {
                        ranges[p + 1] += 1;
                        ranges[p + alnum[p] + 1] -= 1;
                    }
                }
                Part::Placeholder(Placeholder::Date) if digits[p] >= 8 => next[p + 8] = true,
                Part::Placeholder(Placeholder::Time) if digits[p] >= 6 => next[p + 6] = true,
                Part::Placeholder(Placeholder::Event) => {
                    for e in &events {
                        exact(p, e.as_bytes(), &mut next);
                    }
                }
                Part::Placeholder(Placeholder::Date | Placeholder::Time) => {}
                Part::Placeholder(_) => {
                    if let Some(v) = value {
                        exact(p, v.as_bytes(), &mut next);
                    }
                }
            }
        }
        let mut open = 0;
        for (q, reached) in next.iter_mut().enumerate() {
            open += ranges[q];
            *reached |= open > 0;
        }
        if !next.contains(&true) {
            return false;
        }
        reach = next;
    }
    reach[n]
}

fn value(p: Placeholder, ctx: &NamingContext<'_>) -> Result<String, RenderError> {
    let raw = match p {
        Placeholder::Vin => ctx.vin.map(str::to_owned),
        Placeholder::Stock => ctx.stock.map(str::to_owned),
        Placeholder::Index { width } => ctx
            .index
            .map(|i| format!("{i:0w$}", w = usize::from(width.unwrap_or(0)))),
        // `.jpg` and `jpg` both mean jpg; more dots are left to `sanitize`.
        Placeholder::Ext => ctx.ext.map(|e| e.strip_prefix('.').unwrap_or(e).to_owned()),
        Placeholder::Client => Some(ctx.client.to_owned()),
        Placeholder::User => ctx.user.map(str::to_owned),
        Placeholder::Vehicle => ctx.vehicle.map(str::to_owned),
        Placeholder::Make => ctx.make.map(str::to_owned),
        Placeholder::Model => ctx.model.map(str::to_owned),
        Placeholder::Year => ctx.year.map(|y| y.to_string()),
        Placeholder::Event => Some(ctx.event.as_str().to_owned()),
        Placeholder::Date => {
            let t = Offset::UTC.to_datetime(ctx.time);
            Some(format!("{:04}{:02}{:02}", t.year(), t.month(), t.day()))
        }
        Placeholder::Time => {
            let t = Offset::UTC.to_datetime(ctx.time);
            Some(format!("{:02}{:02}{:02}", t.hour(), t.minute(), t.second()))
        }
    };
    raw.map(|v| sanitize(&v))
        .filter(|v| !v.is_empty())
        .ok_or(RenderError::Missing {
            placeholder: p.name(),
            what: p.what(),
        })
}

/// Makes a value safe inside one path segment: the values come from dealers' data, so a VIN
/// like `../../etc/passwd` must stay a harmless name. Separators, control characters and
/// characters Windows FTP servers refuse become `_`, runs of dots become `_` (no `..`), a
/// leading dot becomes `_` (no hidden files); the result is trimmed and at most
/// [`MAX_VALUE_CHARS`] characters.
pub fn sanitize(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' if chars.peek() == Some(&'.') => {
                while chars.next_if_eq(&'.').is_some() {}
                out.push('_');
            }
            '.' if out.is_empty() => out.push('_'),
            c if c.is_control()
                || matches!(c, '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|') =>
            {
                out.push('_')
            }
            c => out.push(c),
        }
    }
    let capped: String = out.chars().take(MAX_VALUE_CHARS).collect();
    capped.trim_end().to_owned()
}

/// Joins an FTP base directory (literal, relative to the login directory or absolute), a
/// rendered sub-directory (relative, may hold several segments) and a rendered file name
/// (one segment) with single slashes. Refuses anything that could leave `base`: `..`
/// segments, an absolute `dir`, a file name with a separator, backslashes (Windows servers
/// read them as separators) and control characters.
pub fn join_path(base: &str, dir: &str, file: &str) -> Result<String, PathError> {
    if dir.starts_with('/') {
        return Err(PathError::Absolute {
            part: PathPart::Directory,
            path: dir.to_owned(),
        });
    }
    if file.is_empty() || file.contains('/') || file == "." || file == ".." {
        return Err(PathError::BadFileName {
            name: file.to_owned(),
        });
    }
    let mut segments: Vec<&str> = Vec::new();
    for (part, path) in [
        (PathPart::Base, base),
        (PathPart::Directory, dir),
        (PathPart::File, file),
    ] {
        if path.chars().any(|c| c == '\\' || c.is_control()) {
            return Err(PathError::BadCharacter {
                part,
                path: path.to_owned(),
            });
        }
        for seg in path.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    return Err(PathError::Parent {
                        part,
                        path: path.to_owned(),
                    });
                }
                s if s.len() > MAX_SEGMENT_BYTES => {
                    return Err(PathError::TooLong {
                        part,
                        path: path.to_owned(),
                    });
                }
                s => segments.push(s),
            }
        }
    }
    let joined = segments.join("/");
    Ok(if base.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    })
}

/// Checks that every template of `rules` parses and renders for a sample vehicle into a path
/// inside `baseDirectory`, and that images of one vehicle get distinct names.
pub fn validate_rules(rules: &FtpRules) -> Result<(), TemplateError> {
    let sample = NamingContext::sample();
    let vehicle = sample.for_vehicle();

    let directory = parse_field("directory", &rules.directory)?;
    let dir = render_field("directory", &directory, &vehicle)?;
    check_path("directory", &rules.base_directory, &dir, "x")?;

    let file_name = parse_field("fileName", &rules.file_name)?;
    if !file_name.uses_index() {
        let what = match rules.layout {
            Layout::Files => "every image of a vehicle would get the same file name",
            Layout::Zip => "every image in the archive would get the same entry name",
        };
        return Err(TemplateError {
            field: "fileName",
            message: format!("needs an {{index}} or {{index:0N}} placeholder: {what}"),
        });
    }
    let first = render_field("fileName", &file_name, &sample)?;
    check_path("fileName", &rules.base_directory, &dir, &first)?;

    // Names of one upload that would overwrite each other.
    let mut taken = vec![("fileName", first)];
    if rules.layout == Layout::Zip {
        let archive = parse_field("archiveName", &rules.archive_name)?;
        let name = render_field("archiveName", &archive, &vehicle)?;
        check_path("archiveName", &rules.base_directory, &dir, &name)?;
        // Entries live inside the archive; only the archive shares the directory.
        taken = vec![("archiveName", name)];
    }
    if let Some(metadata) = &rules.metadata {
        let field = "metadata.fileName";
        let template = parse_field(field, &metadata.file_name)?;
        let name = render_field(field, &template, &vehicle)?;
        check_path(field, &rules.base_directory, &dir, &name)?;
        if let Some((other, _)) = taken.iter().find(|(_, n)| *n == name) {
            return Err(TemplateError {
                field,
                message: format!(
                    "renders {name:?} for the sample vehicle, the same as rules.{other}; the files would overwrite each other"
                ),
            });
        }
    }
    Ok(())
}

fn parse_field(field: &'static str, source: &str) -> Result<Template, TemplateError> {
    Template::parse(source).map_err(|e| TemplateError {
        field,
        message: e.to_string(),
    })
}

fn render_field(
    field: &'static str,
    template: &Template,
    ctx: &NamingContext<'_>,
) -> Result<String, TemplateError> {
    template.render(ctx).map_err(|e| TemplateError {
        field,
        message: match e {
            // Only per-vehicle names lack values in the sample context.
            RenderError::Missing { placeholder, .. } => format!(
                "{{{placeholder}}} is per image and cannot be used in a name of the whole vehicle"
            ),
        },
    })
}

fn check_path(field: &'static str, base: &str, dir: &str, file: &str) -> Result<(), TemplateError> {
    join_path(base, dir, file)
        .map(drop)
        .map_err(|e| TemplateError {
            field: match e.part() {
                PathPart::Base => "baseDirectory",
                PathPart::Directory => "directory",
                PathPart::File => field,
            },
            message: format!("renders an unusable path for the sample vehicle: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ftp::MetadataFile;

    fn render(template: &str, ctx: &NamingContext<'_>) -> String {
        Template::parse(template).unwrap().render(ctx).unwrap()
    }

    fn rules() -> FtpRules {
        FtpRules::default()
    }

    #[test]
    fn default_templates_render_the_documented_names() {
        let ctx = NamingContext::sample();
        let r = rules();
        assert_eq!(render(&r.file_name, &ctx), "WVWZZZ1JZXW000001_01.jpg");
        assert_eq!(
            render(&r.file_name, &ctx.for_image(12, "png")),
            "WVWZZZ1JZXW000001_12.png"
        );
        assert_eq!(
            render(&r.archive_name, &ctx.for_vehicle()),
            "WVWZZZ1JZXW000001.zip"
        );
        assert_eq!(
            render("{vin}.json", &ctx.for_vehicle()),
            "WVWZZZ1JZXW000001.json"
        );
        validate_rules(&r).unwrap();
    }

    #[test]
    fn sample_time_is_the_spec_example() {
        assert_eq!(
            NamingContext::sample().time,
            "2026-11-27T10:15:30Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn every_placeholder_renders_its_value() {
        let ctx = NamingContext::sample();
        let all = "{vin}|{stock}|{index}|{ext}|{client}|{user}|{vehicle}|{make}|{model}|{year}|{event}|{date}|{time}";
        // '|' is sanitised only inside values; as literal text it stays.
        assert_eq!(
            render(all, &ctx),
            "WVWZZZ1JZXW000001|A1234|1|jpg|dealer-123|u-42|veh-9|Volkswagen|Golf|2021|vehicle.processed|20261127|101530"
        );
        let t = Template::parse(all).unwrap();
        let names: Vec<_> = t.placeholders().map(Placeholder::name).collect();
        assert_eq!(names.len(), Placeholder::NAMES.len());
    }

    #[test]
    fn date_and_time_are_utc_and_zero_padded() {
        let mut ctx = NamingContext::sample();
        ctx.time = "2024-02-03T04:05:06+09:00".parse::<Timestamp>().unwrap();
        assert_eq!(render("{date}-{time}", &ctx), "20240202-190506");
    }

    #[test]
    fn index_is_padded_to_any_width_and_never_truncated() {
        let ctx = NamingContext::sample().for_image(7, ".jpeg");
        assert_eq!(render("{index}", &ctx), "7");
        assert_eq!(render("{index:01}", &ctx), "7");
        assert_eq!(render("{index:02}", &ctx), "07");
        assert_eq!(render("{index:03}", &ctx), "007");
        assert_eq!(render("{index:09}", &ctx), "000000007");
        assert_eq!(render("{index:02}", &ctx.for_image(123, "jpg")), "123");
        // A leading dot of the extension is not doubled.
        assert_eq!(render("x.{ext}", &ctx), "x.jpeg");
    }

    #[test]
    fn bad_index_formats_are_refused() {
        for bad in [
            "{index:00}",
            "{index:2}",
            "{index:010}",
            "{index:}",
            "{index:0x}",
            "{vin:02}",
        ] {
            assert!(
                matches!(Template::parse(bad), Err(ParseError::BadFormat { .. })),
                "{bad}: {:?}",
                Template::parse(bad)
            );
        }
    }

    #[test]
    fn doubled_braces_are_literal() {
        let ctx = NamingContext::sample();
        assert_eq!(render("{{vin}}", &ctx), "{vin}");
        assert_eq!(render("{{{vin}}}", &ctx), "{WVWZZZ1JZXW000001}");
        assert_eq!(render("a}}b{{c", &ctx), "a}b{c");
        assert_eq!(render("{{}}", &ctx), "{}");
        assert_eq!(render("", &ctx), "");
        assert_eq!(render("no placeholders", &ctx), "no placeholders");
    }

    #[test]
    fn parse_errors_say_where_and_what() {
        assert_eq!(
            Template::parse("ab{vin"),
            Err(ParseError::Unclosed { at: 2 })
        );
        assert_eq!(
            Template::parse("{vin{index}}"),
            Err(ParseError::Unclosed { at: 0 })
        );
        assert_eq!(
            Template::parse("a}b"),
            Err(ParseError::UnmatchedClose { at: 1 })
        );
        assert_eq!(
            Template::parse("x{}"),
            Err(ParseError::EmptyPlaceholder { at: 1 })
        );
        let e = Template::parse("{VIN}").unwrap_err().to_string();
        assert!(
            e.starts_with("unknown placeholder {VIN} at position 0"),
            "{e}"
        );
        // Non-ASCII text before an error gives byte positions, not a panic.
        assert_eq!(
            Template::parse("é{x").unwrap_err(),
            ParseError::Unclosed { at: 2 }
        );
    }

    #[test]
    fn unknown_placeholder_error_names_the_field_and_suggests() {
        let r = FtpRules {
            file_name: "{vim}_{index:02}.{ext}".into(),
            ..rules()
        };
        let e = validate_rules(&r).unwrap_err();
        assert_eq!(e.field, "fileName");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "rules.fileName: unknown placeholder {vim} at position 0 (did you mean {vin}?)"
            ),
            "{msg}"
        );
        assert!(msg.contains("known: {vin}, {stock}"), "{msg}");
    }

    #[test]
    fn unclosed_brace_error_names_the_field() {
        let r = FtpRules {
            directory: "{client}/{vin".into(),
            ..rules()
        };
        assert_eq!(
            validate_rules(&r).unwrap_err().to_string(),
            "rules.directory: unclosed '{' at position 9; write '{{' for a literal brace"
        );
        let r = FtpRules {
            layout: Layout::Zip,
            archive_name: "{vin}}.zip".into(),
            ..rules()
        };
        let e = validate_rules(&r).unwrap_err().to_string();
        assert!(e.starts_with("rules.archiveName: unmatched '}'"), "{e}");
        let r = FtpRules {
            metadata: Some(MetadataFile {
                file_name: "{nope}.json".into(),
            }),
            ..rules()
        };
        let e = validate_rules(&r).unwrap_err().to_string();
        assert!(
            e.starts_with("rules.metadata.fileName: unknown placeholder {nope}"),
            "{e}"
        );
    }

    #[test]
    fn missing_values_are_render_errors_naming_the_placeholder() {
        let mut ctx = NamingContext::sample();
        ctx.stock = None;
        let t = Template::parse("{stock}_{index}").unwrap();
        let e = t.render(&ctx).unwrap_err();
        assert_eq!(
            e,
            RenderError::Missing {
                placeholder: "stock",
                what: "the vehicle's stock number"
            }
        );
        assert!(e.to_string().starts_with("no value for {stock}"), "{e}");
        // Blank counts as missing: "_01" is not a useful name.
        ctx.stock = Some("  \t ");
        assert!(t.render(&ctx).is_err());
        let bare = NamingContext::new("dealer-123", EventType::VehicleProcessed, ctx.time);
        for p in [
            "vin", "user", "vehicle", "make", "model", "year", "index", "ext",
        ] {
            let t = Template::parse(&format!("{{{p}}}")).unwrap();
            assert!(
                matches!(t.render(&bare), Err(RenderError::Missing { placeholder, .. }) if placeholder == p),
                "{p}"
            );
        }
        assert_eq!(
            render("{client}-{event}", &bare),
            "dealer-123-vehicle.processed"
        );
    }

    #[test]
    fn file_names_need_an_index_in_both_layouts() {
        for layout in [Layout::Files, Layout::Zip] {
            let r = FtpRules {
                layout,
                file_name: "{vin}.{ext}".into(),
                ..rules()
            };
            let e = validate_rules(&r).unwrap_err();
            assert_eq!(e.field, "fileName");
            assert!(e.message.contains("{index}"), "{e}");
        }
        let r = FtpRules {
            file_name: "{index}".into(),
            ..rules()
        };
        validate_rules(&r).unwrap();
    }

    #[test]
    fn per_image_placeholders_are_refused_in_vehicle_names() {
        let r = FtpRules {
            directory: "{vin}/{index}".into(),
            ..rules()
        };
        let e = validate_rules(&r).unwrap_err();
        assert_eq!(e.field, "directory");
        assert!(e.message.contains("{index} is per image"), "{e}");
        let r = FtpRules {
            layout: Layout::Zip,
            archive_name: "{vin}.{ext}".into(),
            ..rules()
        };
        assert_eq!(validate_rules(&r).unwrap_err().field, "archiveName");
        // The archive name is not checked in the files layout, where it is unused.
        let r = FtpRules {
            archive_name: "{vin}.{ext}".into(),
            ..rules()
        };
        validate_rules(&r).unwrap();
    }

    #[test]
    fn literal_paths_that_escape_or_are_empty_are_refused() {
        let cases: [(FtpRules, &str); 6] = [
            (
                FtpRules {
                    directory: "../{vin}".into(),
                    ..rules()
                },
                "directory",
            ),
            (
                FtpRules {
                    directory: "/abs/{vin}".into(),
                    ..rules()
                },
                "directory",
            ),
            (
                FtpRules {
                    file_name: "sub/{vin}_{index}.jpg".into(),
                    ..rules()
                },
                "fileName",
            ),
            (
                FtpRules {
                    base_directory: "in/../..".into(),
                    ..rules()
                },
                "baseDirectory",
            ),
            (
                FtpRules {
                    layout: Layout::Zip,
                    archive_name: "..".into(),
                    ..rules()
                },
                "archiveName",
            ),
            (
                FtpRules {
                    metadata: Some(MetadataFile {
                        file_name: String::new(),
                    }),
                    ..rules()
                },
                "metadata.fileName",
            ),
        ];
        for (r, field) in cases {
            let e = validate_rules(&r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn metadata_colliding_with_the_archive_is_refused() {
        let r = FtpRules {
            layout: Layout::Zip,
            archive_name: "{vin}".into(),
            metadata: Some(MetadataFile {
                file_name: "{vin}".into(),
            }),
            ..rules()
        };
        let e = validate_rules(&r).unwrap_err();
        assert_eq!(e.field, "metadata.fileName");
        assert!(e.message.contains("rules.archiveName"), "{e}");
        let ok = FtpRules {
            metadata: Some(MetadataFile {
                file_name: "{vin}.json".into(),
            }),
            ..r
        };
        validate_rules(&ok).unwrap();
    }

    #[test]
    fn realistic_rules_validate() {
        let r = FtpRules {
            base_directory: "/incoming/photos/".into(),
            directory: "{client}/{date}/{stock}".into(),
            layout: Layout::Zip,
            file_name: "{stock}-{index:03}.{ext}".into(),
            archive_name: "{make}_{model}_{year}_{vin}.zip".into(),
            metadata: Some(MetadataFile {
                file_name: "{vin}.json".into(),
            }),
            ..rules()
        };
        validate_rules(&r).unwrap();
        let ctx = NamingContext::sample();
        let dir = render(&r.directory, &ctx.for_vehicle());
        let name = render(&r.archive_name, &ctx.for_vehicle());
        assert_eq!(
            join_path(&r.base_directory, &dir, &name).unwrap(),
            "/incoming/photos/dealer-123/20261127/A1234/Volkswagen_Golf_2021_WVWZZZ1JZXW000001.zip"
        );
    }

    #[test]
    fn sanitize_neutralises_separators_dots_and_control_characters() {
        assert_eq!(sanitize("../../etc/passwd"), "____etc_passwd");
        assert_eq!(sanitize("a/b"), "a_b");
        assert_eq!(sanitize("a\\b"), "a_b");
        // Trimmed first (the newline goes), then the NUL is replaced.
        assert_eq!(sanitize("\x00\n"), "_");
        assert_eq!(sanitize("a\x00\tb"), "a__b");
        assert_eq!(sanitize(".."), "_");
        assert_eq!(sanitize("..."), "_");
        assert_eq!(sanitize("."), "_");
        assert_eq!(sanitize(".hidden"), "_hidden");
        assert_eq!(sanitize("a..b"), "a_b");
        assert_eq!(sanitize("a.b"), "a.b");
        assert_eq!(sanitize("  WVW 1  "), "WVW 1");
        assert_eq!(sanitize("C:*?\"<>|"), "C_______");
        assert_eq!(sanitize("Pérez"), "Pérez");
        assert_eq!(sanitize(&"é".repeat(500)).chars().count(), MAX_VALUE_CHARS);
        // Cutting must not leave trailing blanks.
        let long = format!("{}  x", "a".repeat(MAX_VALUE_CHARS - 1));
        assert_eq!(sanitize(&long), "a".repeat(MAX_VALUE_CHARS - 1));
    }

    #[test]
    fn hostile_values_stay_inside_the_base_directory() {
        let base = "/upload/dealer";
        let hostile = [
            "../../etc/passwd",
            "a/b",
            "\x00\n",
            "..",
            "/abs",
            "\\..\\..\\windows",
            " ../ ",
            ".",
            "x/../../y",
        ];
        let templates = [
            ("{vin}/{stock}", "{vin}_{index:02}.{ext}"),
            ("{make}/{model}", "{stock}"),
            ("{user}", "{vin}"),
            ("{vin}", "{vin}.{ext}"),
        ];
        for evil in hostile {
            let ctx = NamingContext {
                vin: Some(evil),
                stock: Some(evil),
                user: Some(evil),
                make: Some(evil),
                model: Some(evil),
                ..NamingContext::sample()
            };
            for (dir_t, file_t) in templates {
                let dir = render(dir_t, &ctx);
                let file = render(file_t, &ctx);
                assert!(
                    !file.contains('/')
                        && !file.contains('\\')
                        && !file.chars().any(char::is_control),
                    "{evil:?} -> file {file:?}"
                );
                assert!(!file.starts_with('.'), "{evil:?} -> file {file:?}");
                let path = join_path(base, &dir, &file)
                    .unwrap_or_else(|e| panic!("{evil:?} in {dir_t} / {file_t}: {e}"));
                assert!(path.starts_with("/upload/dealer/"), "{evil:?} -> {path}");
                let rest = &path["/upload/dealer/".len()..];
                assert_eq!(
                    rest.split('/').count(),
                    dir_t.split('/').count() + 1,
                    "{evil:?} added segments: {path}"
                );
                assert!(
                    rest.split('/')
                        .all(|s| !s.is_empty() && s != "." && s != ".."),
                    "{evil:?} -> {path}"
                );
            }
        }
    }

    #[test]
    fn hostile_extensions_stay_one_name() {
        let ctx = NamingContext::sample();
        assert_eq!(render("a.{ext}", &ctx.for_image(1, "../x")), "a.__x");
        assert_eq!(render("a.{ext}", &ctx.for_image(1, "..")), "a._");
        assert_eq!(render("a.{ext}", &ctx.for_image(1, "j/p\\g")), "a.j_p_g");
        // Nothing is left of "." once its dot is dropped: no extension is an error.
        let e = Template::parse("a.{ext}")
            .unwrap()
            .render(&ctx.for_image(1, "."))
            .unwrap_err();
        assert!(matches!(
            e,
            RenderError::Missing {
                placeholder: "ext",
                ..
            }
        ));
    }

    #[test]
    fn join_path_collapses_slashes_and_keeps_absolute_bases() {
        assert_eq!(join_path("", "", "a.jpg").unwrap(), "a.jpg");
        assert_eq!(join_path("in", "", "a.jpg").unwrap(), "in/a.jpg");
        assert_eq!(join_path("/", "", "a.jpg").unwrap(), "/a.jpg");
        assert_eq!(
            join_path("//in//photos/", "x//y/./", "a.jpg").unwrap(),
            "/in/photos/x/y/a.jpg"
        );
        assert_eq!(join_path("./in", "", "a.jpg").unwrap(), "in/a.jpg");
    }

    #[test]
    fn join_path_refuses_escapes() {
        use PathPart::*;
        let refused = [
            (("in", "..", "a"), Directory),
            (("in", "x/../../y", "a"), Directory),
            (("in", "/etc", "a"), Directory),
            (("in/..", "", "a"), Base),
            (("in", "x\\..", "a"), Directory),
            (("in", "x\ny", "a"), Directory),
            (("in", "", ".."), File),
            (("in", "", "."), File),
            (("in", "", ""), File),
            (("in", "", "a/b"), File),
            (("in", "", "a\\b"), File),
            (("in", "", "a\x00"), File),
        ];
        for ((base, dir, file), part) in refused {
            let e = join_path(base, dir, file).unwrap_err();
            assert_eq!(e.part(), part, "{base:?} {dir:?} {file:?}: {e}");
        }
        let long = "a".repeat(MAX_SEGMENT_BYTES + 1);
        assert!(matches!(
            join_path("in", "", &long),
            Err(PathError::TooLong { part: File, .. })
        ));
    }

    #[test]
    fn matches_names_of_any_index_extension_and_time_but_only_this_vehicle() {
        let ctx = NamingContext::sample().for_vehicle();
        let t = Template::parse("{vin}_{index:02}.{ext}").unwrap();
        for yes in [
            "WVWZZZ1JZXW000001_01.jpg",
            "WVWZZZ1JZXW000001_12.png",
            "WVWZZZ1JZXW000001_123.webp",
        ] {
            assert!(t.matches(&ctx, yes).unwrap(), "{yes}");
        }
        for no in [
            "WVWZZZ1JZXW000002_01.jpg",
            "WVWZZZ1JZXW000001_1.jpg",
            "WVWZZZ1JZXW000001_01.",
            "WVWZZZ1JZXW000001_01.jpg.bak",
            "xWVWZZZ1JZXW000001_01.jpg",
            "WVWZZZ1JZXW000001.json",
        ] {
            assert!(!t.matches(&ctx, no).unwrap(), "{no}");
        }
        let t = Template::parse("{date}-{event}-{stock}-{index}.{ext}").unwrap();
        assert!(
            t.matches(&ctx, "20250101-vehicle.processed-A1234-3.jpg")
                .unwrap()
        );
        assert!(
            !t.matches(&ctx, "2025011-vehicle.processed-A1234-3.jpg")
                .unwrap()
        );
        assert!(
            !t.matches(&ctx, "20250101-vehicle.exploded-A1234-3.jpg")
                .unwrap()
        );
        assert!(t.varies_per_upload());
        // A sanitised hostile value matches its sanitised form only.
        let mut evil = ctx.clone();
        evil.vin = Some("../../etc");
        let t = Template::parse("{vin}.zip").unwrap();
        assert_eq!(render("{vin}.zip", &evil), "____etc.zip");
        assert!(t.matches(&evil, "____etc.zip").unwrap());
        assert!(!t.matches(&evil, "../../etc.zip").unwrap());
        // A value the template needs and the context lacks is an error, as in render.
        let mut anon = ctx.clone();
        anon.stock = None;
        assert!(
            Template::parse("{stock}.zip")
                .unwrap()
                .matches(&anon, "A1234.zip")
                .is_err()
        );
    }

    #[test]
    fn matching_is_linear_for_hostile_templates_and_names() {
        // 16 {index} placeholders against a long run of digits: a backtracking matcher tries
        // every split of the digits (exponential); this one must answer at once.
        let t = Template::parse(&"{index}".repeat(16)).unwrap();
        let ctx = NamingContext::sample().for_vehicle();
        let (tx, rx) = std::sync::mpsc::channel();
        let (t2, ctx2) = (t.clone(), ctx.clone());
        std::thread::spawn(move || {
            let (t, ctx) = (t2, ctx2);
            let start = std::time::Instant::now();
            let digits = "1".repeat(MAX_SEGMENT_BYTES - 1) + "x";
            let no = t.matches(&ctx, &digits).unwrap();
            let yes = t.matches(&ctx, &"7".repeat(200)).unwrap();
            let too_long = t.matches(&ctx, &"7".repeat(MAX_SEGMENT_BYTES + 1)).unwrap();
            let _ = tx.send((no, yes, too_long, start.elapsed()));
        });
        let (no, yes, too_long, took) = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("matching a hostile name did not finish within 5 s");
        assert!(!no && yes && !too_long);
        assert!(took < std::time::Duration::from_millis(500), "{took:?}");
        // Same for {ext} runs and alternating classes.
        let t = Template::parse(&"{ext}{index}".repeat(8)).unwrap();
        let name = "a1".repeat(120) + "-";
        let start = std::time::Instant::now();
        assert!(!t.matches(&ctx, &name).unwrap());
        assert!(start.elapsed() < std::time::Duration::from_millis(500));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("vim", "vin"), 1);
        assert_eq!(edit_distance("", "vin"), 3);
        assert_eq!(edit_distance("indx", "index"), 1);
        assert_eq!(suggestion("zzzzzz"), "");
    }
}
