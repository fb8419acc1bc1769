//! Templates: parsed once, rendered per vehicle and image; and whether a listed name could be
//! one a template rendered.

use std::fmt;

use super::path::sanitize;
use super::placeholder::{NamingContext, Placeholder, parse_placeholder, value};
use super::{MAX_SEGMENT_BYTES, ParseError, RenderError};
use crate::api::EventType;

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
