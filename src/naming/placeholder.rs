//! Placeholders: their names, and their values for one vehicle and image.

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;

use super::path::sanitize;
use super::{ParseError, RenderError};
use crate::api::EventType;

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
    pub(super) const NAMES: [(&'static str, Placeholder); 13] = [
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

    /// The example vehicle of docs/events.md (examples/events/vehicle.processed.json), image 1:
    /// what `validate_rules` renders templates with.
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
            // 2026-11-27T10:15:30Z, the example event's time (docs/events.md).
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

pub(super) fn parse_placeholder(inner: &str, at: usize) -> Result<Placeholder, ParseError> {
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
pub(super) fn suggestion(name: &str) -> String {
    Placeholder::NAMES
        .iter()
        .map(|(known, _)| (edit_distance(name, known), *known))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, known)| format!(" (did you mean {{{known}}}?)"))
        .unwrap_or_default()
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
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

pub(super) fn value(p: Placeholder, ctx: &NamingContext<'_>) -> Result<String, RenderError> {
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
