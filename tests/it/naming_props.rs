//! Property tests of the FTP naming templates (`naming`): parsing, rendering, matching and
//! path joining never panic, whatever the input; a rendered path never leaves
//! `baseDirectory`; and a rendered name always matches its own template (render∘match).

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use vehicle_connect::api::EventType;
use vehicle_connect::naming::{MAX_SEGMENT_BYTES, NamingContext, Template, join_path};

const PLACEHOLDERS: [&str; 16] = [
    "{vin}",
    "{stock}",
    "{index}",
    "{index:02}",
    "{index:05}",
    "{ext}",
    "{client}",
    "{user}",
    "{vehicle}",
    "{make}",
    "{model}",
    "{year}",
    "{event}",
    "{date}",
    "{time}",
    "{{",
];

/// Templates that parse: placeholders between short literals (which may hold dots and
/// slashes, the characters that make paths interesting).
fn template() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        3 => proptest::sample::select(&PLACEHOLDERS[..]).prop_map(str::to_string),
        2 => "[A-Za-z0-9_.-]{1,4}",
        1 => Just("/".to_string()),
        1 => Just("..".to_string()),
    ];
    proptest::collection::vec(part, 0..8).prop_map(|p| p.concat())
}

/// Values as dealers' data may hold them: anything, often path-like.
fn value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        3 => "\\PC{0,20}".prop_map(Some),
        2 => proptest::sample::select(vec![
            "../../etc/passwd", "..", ".", "/", "\\..\\", "a/b", " .. ", "\u{0}\n", "C:*?", ".hidden",
        ])
        .prop_map(|s| Some(s.to_string())),
        1 => any::<String>().prop_map(Some),
    ]
}

#[derive(Debug, Clone)]
struct Values {
    vin: Option<String>,
    stock: Option<String>,
    user: Option<String>,
    vehicle: Option<String>,
    make: Option<String>,
    model: Option<String>,
    client: String,
    year: Option<u16>,
    index: u32,
    ext: String,
    event: EventType,
    time: Timestamp,
}

fn values() -> impl Strategy<Value = Values> {
    (
        (value(), value(), value(), value(), value(), value()),
        "\\PC{1,20}",
        proptest::option::of(any::<u16>()),
        any::<u32>(),
        "[a-z0-9]{1,5}",
        proptest::sample::select(EventType::ALL.to_vec()),
        // 1970 to 9999: {date} renders 8 digits.
        0i64..253_402_300_799,
    )
        .prop_map(
            |((vin, stock, user, vehicle, make, model), client, year, index, ext, event, secs)| {
                Values {
                    vin,
                    stock,
                    user,
                    vehicle,
                    make,
                    model,
                    client,
                    year,
                    index,
                    ext,
                    event,
                    time: Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH),
                }
            },
        )
}

impl Values {
    fn context(&self) -> NamingContext<'_> {
        NamingContext {
            vin: self.vin.as_deref(),
            stock: self.stock.as_deref(),
            index: Some(self.index),
            ext: Some(&self.ext),
            client: &self.client,
            user: self.user.as_deref(),
            vehicle: self.vehicle.as_deref(),
            make: self.make.as_deref(),
            model: self.model.as_deref(),
            year: self.year,
            event: self.event,
            time: self.time,
        }
    }
}

/// `base` as `join_path` writes it (its segments, leading slash kept).
fn normalized_base(base: &str) -> Option<String> {
    let p = join_path(base, "", "x").ok()?;
    Some(p[..p.len() - 1].to_string())
}

fn base() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/".to_string()),
        "/?([a-z]{1,5}/?){1,3}",
        "\\PC{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_anything_never_panics(source in "\\PC{0,40}", raw in any::<String>()) {
        let _ = Template::parse(&source);
        let _ = Template::parse(&raw);
    }

    #[test]
    fn rendering_and_matching_never_panic(source in template(), v in values(), name in "\\PC{0,300}") {
        if let Ok(t) = Template::parse(&source) {
            let ctx = v.context();
            let _ = t.render(&ctx);
            let _ = t.render(&ctx.for_vehicle());
            let _ = t.matches(&ctx.for_vehicle(), &name);
        }
    }

    #[test]
    fn joining_anything_never_panics_or_climbs(base in "\\PC{0,30}", dir in "\\PC{0,30}", file in "\\PC{0,30}") {
        if let Ok(p) = join_path(&base, &dir, &file) {
            prop_assert!(p.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."), "{p:?}");
            prop_assert!(!p.chars().any(|c| c == '\\' || c.is_control()), "{p:?}");
            prop_assert!(p.ends_with(&file), "{p:?} does not end with {file:?}");
            let b = normalized_base(&base).expect("a base that joined once joins again");
            prop_assert!(p.starts_with(&b), "{p:?} left {b:?}");
        }
    }

    #[test]
    fn rendered_paths_stay_inside_the_base_directory(
        base in base(),
        dir_t in template(),
        file_t in template(),
        v in values(),
    ) {
        let (Ok(dir_t), Ok(file_t)) = (Template::parse(&dir_t), Template::parse(&file_t)) else {
            return Ok(());
        };
        let ctx = v.context();
        let (Ok(dir), Ok(file)) = (dir_t.render(&ctx.for_vehicle()), file_t.render(&ctx)) else {
            return Ok(());
        };
        let Ok(p) = join_path(&base, &dir, &file) else { return Ok(()) };
        let b = normalized_base(&base).expect("base joined");
        prop_assert!(p.starts_with(&b), "{p:?} left base {b:?}");
        let rest = &p[b.len()..];
        prop_assert!(!rest.starts_with('/'), "{p:?}");
        prop_assert!(rest.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{p:?}");
        prop_assert!(!p.chars().any(|c| c == '\\' || c.is_control()), "{p:?}");
        // Values never add segments: only the templates' own slashes do.
        let literal_segments = |t: &str| t.split('/').filter(|s| !s.is_empty() && *s != ".").count();
        prop_assert!(
            rest.split('/').count() <= literal_segments(dir_t.source()) + 1,
            "values added segments: {p:?} from {:?} / {:?}", dir_t.source(), file_t.source()
        );
        prop_assert_eq!(rest.rsplit('/').next(), Some(file.as_str()));
    }

    #[test]
    fn a_rendered_name_matches_its_template(source in template(), v in values()) {
        let Ok(t) = Template::parse(&source) else { return Ok(()) };
        let ctx = v.context();
        let Ok(name) = t.render(&ctx) else { return Ok(()) };
        prop_assume!(name.len() <= MAX_SEGMENT_BYTES);
        let matched = t.matches(&ctx.for_vehicle(), &name);
        prop_assert_eq!(matched, Ok(true), "{:?} rendered {:?}", t.source(), name);
    }
}
