//! Tests of templates, paths and rules.

use super::placeholder::{edit_distance, suggestion};
use super::*;
use k8s_openapi::jiff::Timestamp;

use crate::api::EventType;
use crate::api::ftp::{FtpRules, Layout, MetadataFile};

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
                !file.contains('/') && !file.contains('\\') && !file.chars().any(char::is_control),
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
