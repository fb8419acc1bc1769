//! Names on the server: the rules' templates rendered for one vehicle, the paths they make,
//! and the temporary names files are stored under until they are renamed into place.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::Value;

use super::outcome::Failure;
use crate::api::ftp::FtpRules;
use crate::endpoint::FtpEndpoint;
use crate::ingest::Envelope;
use crate::ingest::envelope::Image;
use crate::naming::{NamingContext, Template, join_path};

const TEMP_PREFIX: &str = ".vc-tmp-";
/// A temporary older than this is a dead session's leftover: no delivery runs this long.
pub const STALE_TEMP_AFTER: Duration = Duration::from_secs(6 * 3600);

/// Temporary names of one attempt: `.vc-tmp-<unix seconds>-<attempt key>-<unique>-<suffix>`.
/// The key is a hash of the raw event id and the account (ids that sanitise alike,
/// `a:b` and `a_b`, differ); the unique part is random per process and counted per attempt,
/// so two attempts never share a name. The time lets a later session tell a dead session's
/// leftovers from files in use.
pub(super) struct TempNames {
    prefix: String,
    key: String,
}

impl TempNames {
    pub(super) fn new(event_id: &str, ep: &FtpEndpoint) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let process = *PROCESS.get_or_init(rand::random::<u32>);
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        // Not the host or port: the same server may be reached by another address.
        for part in [event_id.as_bytes(), ep.username.as_bytes()] {
            d.update(&(part.len() as u64).to_be_bytes());
            d.update(part);
        }
        let key = hex(&d.finish().as_ref()[..8]);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let now = Timestamp::now().as_second().max(0);
        TempNames {
            prefix: format!("{TEMP_PREFIX}{now}-{key}-{process:08x}{n:x}-"),
            key,
        }
    }

    pub(super) fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Whether `name` (a listing entry) is a temporary to delete: one of ours that is older
    /// than [`STALE_TEMP_AFTER`], or from an earlier attempt of this event on this server
    /// (only one attempt runs at a time, so that one is dead). Legacy names
    /// (`.vc-tmp-<event>-<n>`) carry no time and are left alone.
    pub(super) fn is_leftover(&self, name: &str, now: i64) -> bool {
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
            return false;
        };
        if name.starts_with(&self.prefix) {
            return false;
        }
        let mut parts = rest.splitn(3, '-');
        let (Some(time), Some(key)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(time) = time.parse::<i64>() else {
            return false;
        };
        let stale = i64::try_from(STALE_TEMP_AFTER.as_secs()).unwrap_or(i64::MAX);
        key.len() == self.key.len() && (key == self.key || now.saturating_sub(time) > stale)
    }
}

/// `data.vehicle` fields that names are made of.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VehicleFields {
    id: Option<String>,
    vin: Option<String>,
    stock_number: Option<String>,
    make: Option<String>,
    model: Option<String>,
    year: Option<u16>,
}

/// What the names of one event's files are made of.
pub(super) struct Facts {
    pub(super) vin: Option<String>,
    vehicle: VehicleFields,
    pub(super) time: Timestamp,
}

impl Facts {
    pub(super) fn of(ev: &Envelope) -> Result<Facts, Failure> {
        let vehicle: VehicleFields = match ev.data.get("vehicle") {
            None | Some(Value::Null) => VehicleFields::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Failure::permanent("InvalidEvent", format!("data.vehicle: {e}")))?,
        };
        let time = ev.timestamp.parse::<Timestamp>().map_err(|e| {
            Failure::permanent("InvalidEvent", format!("timestamp {:?}: {e}", ev.timestamp))
        })?;
        Ok(Facts {
            vin: vehicle.vin.clone(),
            vehicle,
            time,
        })
    }

    pub(super) fn context<'a>(&'a self, ev: &'a Envelope) -> NamingContext<'a> {
        let v = &self.vehicle;
        NamingContext {
            vin: v.vin.as_deref(),
            stock: v.stock_number.as_deref(),
            index: None,
            ext: None,
            client: &ev.client_id,
            user: ev.user_id.as_deref(),
            vehicle: v.id.as_deref(),
            make: v.make.as_deref(),
            model: v.model.as_deref(),
            year: v.year,
            event: ev.type_,
            time: self.time,
        }
    }

    pub(super) fn vehicle_label(&self) -> String {
        self.vehicle
            .vin
            .clone()
            .or_else(|| self.vehicle.id.clone())
            .unwrap_or_else(|| "?".to_string())
    }
}

/// The rules' name templates, parsed.
pub(super) struct Templates {
    pub(super) directory: Template,
    pub(super) file: Template,
    pub(super) archive: Template,
    pub(super) metadata: Option<Template>,
}

impl Templates {
    pub(super) fn parse(rules: &FtpRules) -> Result<Templates, Failure> {
        let parse = |field: &str, source: &str| {
            Template::parse(source)
                .map_err(|e| Failure::permanent("InvalidRules", format!("rules.{field}: {e}")))
        };
        Ok(Templates {
            directory: parse("directory", &rules.directory)?,
            file: parse("fileName", &rules.file_name)?,
            archive: parse("archiveName", &rules.archive_name)?,
            metadata: match &rules.metadata {
                Some(m) => Some(parse("metadata.fileName", &m.file_name)?),
                None => None,
            },
        })
    }
}

pub(super) fn render(
    field: &str,
    t: &Template,
    ctx: &NamingContext<'_>,
) -> Result<String, Failure> {
    t.render(ctx)
        .map_err(|e| Failure::permanent("TemplateError", format!("rules.{field}: {e}")))
}

pub(super) fn path(field: &str, base: &str, dir: &str, name: &str) -> Result<String, Failure> {
    join_path(base, dir, name)
        .map_err(|e| Failure::permanent("UnsafePath", format!("rules.{field}: {e}")))
}

/// The directory part of a path from [`join_path`] (empty: the login directory).
pub(super) fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => "",
    }
}

pub(super) fn child(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        "/" => format!("/{name}"),
        d => format!("{d}/{name}"),
    }
}

pub(super) fn display_dir(file: &str) -> &str {
    display_dir_path(parent(file))
}

pub(super) fn display_dir_path(dir: &str) -> &str {
    if dir.is_empty() {
        "the login directory"
    } else {
        dir
    }
}

/// Whether a recorded path is one we could have written: no `..` or `.` segment, no empty
/// name, no backslash or control character.
pub(super) fn is_safe_recorded_path(p: &str) -> bool {
    !p.is_empty()
        && !p.ends_with('/')
        && !p.chars().any(|c| c == '\\' || c.is_control())
        && p.split('/').all(|seg| seg != ".." && seg != ".")
}

/// Whether `dir` lies strictly inside `base` (both as [`join_path`] writes them).
pub(super) fn is_below(dir: &str, base: &str) -> bool {
    match base {
        "" => !dir.is_empty() && !dir.starts_with('/'),
        "/" => dir.len() > 1 && dir.starts_with('/'),
        b => dir
            .strip_prefix(b)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
    }
}

/// The image's file extension: from the URL path if it names an image type, else from
/// `contentType`, else `jpg`. JPEG spellings become `jpg`, TIFF ones `tif`.
pub(super) fn extension(img: &Image) -> &'static str {
    let from_url = url::Url::parse(&img.url).ok().and_then(|u| {
        let last = u.path_segments()?.next_back()?.to_string();
        let (_, ext) = last.rsplit_once('.')?;
        known_extension(&ext.to_ascii_lowercase())
    });
    let from_type = || {
        let ct = img.content_type.as_deref()?;
        let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
        known_extension(essence.strip_prefix("image/")?)
    };
    from_url.or_else(from_type).unwrap_or("jpg")
}

pub(super) fn known_extension(s: &str) -> Option<&'static str> {
    Some(match s {
        "jpg" | "jpeg" | "jpe" | "jfif" | "pjpeg" => "jpg",
        "png" => "png",
        "webp" => "webp",
        "gif" => "gif",
        "avif" => "avif",
        "heic" => "heic",
        "heif" => "heif",
        "tif" | "tiff" => "tif",
        "bmp" => "bmp",
        _ => return None,
    })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(url: &str, content_type: Option<&str>) -> Image {
        Image {
            index: 1,
            url: url.to_string(),
            content_type: content_type.map(str::to_string),
            bytes: None,
            sha256: None,
        }
    }

    #[test]
    fn extension_from_url_then_content_type_then_jpg() {
        assert_eq!(extension(&image("https://c.example/a/1.PNG", None)), "png");
        assert_eq!(
            extension(&image("https://c.example/1.jpeg?sig=x", Some("image/png"))),
            "jpg"
        );
        assert_eq!(
            extension(&image("https://c.example/img?id=1", Some("image/webp"))),
            "webp"
        );
        assert_eq!(
            extension(&image("https://c.example/x.php", Some("IMAGE/TIFF; q=1"))),
            "tif"
        );
        assert_eq!(extension(&image("https://c.example/x", None)), "jpg");
        assert_eq!(
            extension(&image("https://c.example/x", Some("application/pdf"))),
            "jpg"
        );
    }

    #[test]
    fn temp_names_are_hidden_single_segments() {
        let t = TempNames::new("evt:01/../x", &FtpEndpoint::example()).name("3");
        assert!(t.starts_with(".vc-tmp-"), "{t}");
        assert!(
            !t.contains('/') && !t.contains(':') && !t.contains(".."),
            "{t}"
        );
        assert!(join_path("/in", "", &t).is_ok());
    }

    #[test]
    fn temp_names_are_unique_per_event_and_attempt() {
        let ep = FtpEndpoint::example();
        // These ids sanitise to the same text; their temporaries must still differ.
        let (a, b) = (TempNames::new("a:b", &ep), TempNames::new("a_b", &ep));
        assert_ne!(a.name("1"), b.name("1"));
        assert_ne!(a.key, b.key);
        // Two attempts of one event: same key, different names.
        let again = TempNames::new("a:b", &ep);
        assert_eq!(a.key, again.key);
        assert_ne!(a.name("1"), again.name("1"));
    }

    #[test]
    fn leftovers_are_stale_or_earlier_attempts_of_the_same_event() {
        let ep = FtpEndpoint::example();
        let now = Timestamp::now().as_second();
        let mine = TempNames::new("evt-1", &ep);
        let other = TempNames::new("evt-2", &ep);
        let earlier = TempNames::new("evt-1", &ep);
        // Our own, and another event's fresh temporaries, stay.
        assert!(!mine.is_leftover(&mine.name("1"), now));
        assert!(!mine.is_leftover(&other.name("1"), now));
        // An earlier attempt of this event is dead.
        assert!(mine.is_leftover(&earlier.name("1"), now));
        // Anyone's, once older than the bound.
        let old = now - STALE_TEMP_AFTER.as_secs() as i64 - 1;
        let stale = format!(".vc-tmp-{old}-{}-0000000000-2", other.key);
        assert!(mine.is_leftover(&stale, now));
        let fresh = format!(".vc-tmp-{}-{}-0000000000-2", now - 60, other.key);
        assert!(!mine.is_leftover(&fresh, now));
        // Not ours, or not in our format: never.
        for name in [
            "photo.jpg",
            ".vc-tmpx",
            ".vc-tmp-evt_cut-1-1",
            &format!(".vc-tmp-{old}-short-1"),
            &format!(".vc-tmp-{old}"),
        ] {
            assert!(!mine.is_leftover(name, now), "{name}");
        }
    }

    #[test]
    fn recorded_paths_and_directories() {
        assert!(is_safe_recorded_path("/in/A1_1.jpg"));
        assert!(is_safe_recorded_path("in/A1_1.jpg"));
        for bad in ["", "/in/", "/in/../etc/passwd", "/in/./x", "a\\b", "a\nb"] {
            assert!(!is_safe_recorded_path(bad), "{bad:?}");
        }
        assert!(is_below("/in/A1", "/in"));
        assert!(!is_below("/in", "/in"));
        assert!(!is_below("/inbox/A1", "/in"));
        assert!(!is_below("/", "/in"));
        assert!(is_below("/A1", "/"));
        assert!(!is_below("/", "/"));
        assert!(is_below("A1", ""));
        assert!(!is_below("", ""));
    }

    #[test]
    fn parents_and_children() {
        assert_eq!(parent("/in/a.jpg"), "/in");
        assert_eq!(parent("/a.jpg"), "/");
        assert_eq!(parent("a.jpg"), "");
        assert_eq!(parent("in/x/a.jpg"), "in/x");
        assert_eq!(child("", "a"), "a");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/in", "a"), "/in/a");
    }
}
