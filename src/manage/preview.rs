//! `POST /v1/preview/file-names`: the names an FtpConnection's naming rules give a vehicle's
//! files — the live preview of the console's FTP form. Rules are checked as the reconciler
//! checks them ([`validate_rules`]), so a bad template is refused here with the same message
//! and the rules field it is in.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, ManageState};
use crate::api::EventType;
use crate::api::ftp::{FtpRules, Layout};
use crate::naming::{NamingContext, PathPart, Template, join_path, validate_rules};

pub fn routes() -> Router<ManageState> {
    Router::new().route("/v1/preview/file-names", post(preview))
}

/// Images named in a preview at most.
const MAX_IMAGES: u32 = 20;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewRequest {
    /// The FtpConnection's `spec.rules`.
    #[serde(default)]
    pub rules: FtpRules,
    /// The vehicle to name files for; the documented example vehicle when absent.
    pub vehicle: Option<SampleVehicle>,
    pub client: Option<String>,
    pub user: Option<String>,
    pub event: Option<EventType>,
    /// The event time (`{date}`, `{time}`); the example event's when absent.
    pub time: Option<String>,
    /// How many images to name (1 to 20; 3 when absent).
    pub images: Option<u32>,
}

/// The `data.vehicle` fields that names use.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SampleVehicle {
    pub id: Option<String>,
    pub vin: Option<String>,
    pub stock_number: Option<String>,
    pub make: Option<String>,
    pub model: Option<String>,
    pub year: Option<u16>,
}

#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The directory files go to (empty: the login directory).
    pub directory: String,
    /// Each image's path (`files`), or each entry's name inside the archive (`zip`).
    pub files: Vec<String>,
    /// The archive's path (`zip` layout).
    pub archive: Option<String>,
    /// The metadata file's path, when the rules write one.
    pub metadata: Option<String>,
}

fn blank_to_none(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The file names `req.rules` give `req`'s vehicle.
pub fn file_names(req: &PreviewRequest) -> Result<Preview, ApiError> {
    validate_rules(&req.rules)
        .map_err(|e| ApiError::invalid(format!("rules.{}", e.field), e.message))?;
    let images = req.images.unwrap_or(3);
    if !(1..=MAX_IMAGES).contains(&images) {
        return Err(ApiError::invalid(
            "images",
            format!("must be from 1 to {MAX_IMAGES}"),
        ));
    }
    let sample = NamingContext::sample();
    let time = match &req.time {
        Some(t) => t
            .parse::<Timestamp>()
            .map_err(|e| ApiError::invalid("time", format!("not an RFC 3339 time: {e}")))?,
        None => sample.time,
    };
    let mut ctx = match &req.vehicle {
        None => sample.for_vehicle(),
        Some(v) => NamingContext {
            vin: blank_to_none(&v.vin),
            stock: blank_to_none(&v.stock_number),
            vehicle: blank_to_none(&v.id),
            make: blank_to_none(&v.make),
            model: blank_to_none(&v.model),
            year: v.year,
            ..sample.for_vehicle()
        },
    };
    ctx.time = time;
    if let Some(c) = blank_to_none(&req.client) {
        ctx.client = c;
    }
    if req.user.is_some() {
        ctx.user = blank_to_none(&req.user);
    }
    if let Some(e) = req.event {
        ctx.event = e;
    }

    let rules = &req.rules;
    let base = rules.base_directory.as_str();
    let render = |field: &str, source: &str, ctx: &NamingContext<'_>| {
        let t = Template::parse(source)
            .map_err(|e| ApiError::invalid(format!("rules.{field}"), e.to_string()))?;
        t.render(ctx).map_err(|e| {
            ApiError::invalid(format!("rules.{field}"), format!("{e} for this vehicle"))
        })
    };
    let join = |field: &str, dir: &str, name: &str| {
        join_path(base, dir, name).map_err(|e| {
            let field = match e.part() {
                PathPart::Base => "baseDirectory",
                PathPart::Directory => "directory",
                PathPart::File => field,
            };
            ApiError::invalid(format!("rules.{field}"), e.to_string())
        })
    };

    let dir = render("directory", &rules.directory, &ctx)?;
    let mut files = Vec::new();
    for i in 1..=images {
        let name = render("fileName", &rules.file_name, &ctx.for_image(i, "jpg"))?;
        files.push(match rules.layout {
            Layout::Files => join("fileName", &dir, &name)?,
            Layout::Zip => name,
        });
    }
    let archive = match rules.layout {
        Layout::Zip => {
            let name = render("archiveName", &rules.archive_name, &ctx)?;
            Some(join("archiveName", &dir, &name)?)
        }
        Layout::Files => None,
    };
    let metadata = match &rules.metadata {
        Some(m) => {
            let name = render("metadata.fileName", &m.file_name, &ctx)?;
            Some(join("metadata.fileName", &dir, &name)?)
        }
        None => None,
    };
    // The directory as the paths have it (the base joined with the rendered sub-directory).
    let directory = match join("fileName", &dir, "x")?.rsplit_once('/') {
        Some(("", _)) => "/".to_string(),
        Some((d, _)) => d.to_string(),
        None => String::new(),
    };
    Ok(Preview {
        directory,
        files,
        archive,
        metadata,
    })
}

/// The file names FTP naming rules give a vehicle (the console's live preview).
#[utoipa::path(
    post, path = "/v1/preview/file-names", tag = "management", operation_id = "preview_file_names",
    request_body(content = Object, description = "`rules` (an FtpConnection's `spec.rules`); optional `vehicle` (`id`, `vin`, `stockNumber`, `make`, `model`, `year`), `client`, `user`, `event`, `time` (RFC 3339), `images` (1 to 20, default 3)",
        example = json!({"rules": {"baseDirectory": "in", "directory": "{make}", "fileName": "{vin}-{index:03}.{ext}"},
            "vehicle": {"vin": "WVWZZZ1JZXW000001", "make": "Audi"}, "images": 2})),
    responses(
        (status = 200, description = "The names", body = Preview,
            example = json!({"directory": "in/Audi", "files": ["in/Audi/WVWZZZ1JZXW000001-001.jpg", "in/Audi/WVWZZZ1JZXW000001-002.jpg"], "archive": null, "metadata": null})),
        (status = 400, description = "`invalid_request`: `field` names the bad rules field or parameter", body = crate::ingest::ErrorBody,
            example = json!({"error": "invalid_request", "field": "rules.fileName", "message": "unknown placeholder {vim} at position 0 (did you mean {vin}?); known: {vin}, {stock}, {index}, {index:0N}, {ext}, {client}, {user}, {vehicle}, {make}, {model}, {year}, {event}, {date}, {time}"})),
        (status = 401, description = "Missing or unknown manage token", body = crate::ingest::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn preview(
    State(state): State<ManageState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Preview>, ApiError> {
    state.caller(&headers)?;
    let req: PreviewRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid("body", format!("not a preview request: {e}")))?;
    file_names(&req).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ftp::MetadataFile;

    fn req(rules: serde_json::Value) -> PreviewRequest {
        serde_json::from_value(serde_json::json!({ "rules": rules })).expect("request")
    }

    #[test]
    fn names_the_example_vehicle_by_default() {
        let p = file_names(&req(serde_json::json!({
            "baseDirectory": "incoming", "directory": "{vin}", "fileName": "{stock}_{index:02}.{ext}"
        })))
        .expect("preview");
        assert_eq!(p.directory, "incoming/WVWZZZ1JZXW000001");
        assert_eq!(
            p.files,
            [
                "incoming/WVWZZZ1JZXW000001/A1234_01.jpg",
                "incoming/WVWZZZ1JZXW000001/A1234_02.jpg",
                "incoming/WVWZZZ1JZXW000001/A1234_03.jpg"
            ]
        );
        assert_eq!(p.archive, None);
    }

    #[test]
    fn names_a_given_vehicle_in_a_zip() {
        let mut r = req(serde_json::json!({
            "layout": "zip", "archiveName": "{make}-{year}-{date}.zip", "fileName": "{index}.{ext}"
        }));
        r.vehicle = Some(SampleVehicle {
            vin: Some("VIN9".into()),
            make: Some("Škoda".into()),
            year: Some(2019),
            ..SampleVehicle::default()
        });
        r.rules.metadata = Some(MetadataFile {
            file_name: "{vin}.json".into(),
        });
        r.images = Some(2);
        r.time = Some("2026-01-02T03:04:05Z".into());
        let p = file_names(&r).expect("preview");
        assert_eq!(p.files, ["1.jpg", "2.jpg"]);
        assert_eq!(p.archive.as_deref(), Some("Škoda-2019-20260102.zip"));
        assert_eq!(p.metadata.as_deref(), Some("VIN9.json"));
        assert_eq!(p.directory, "");
    }

    #[test]
    fn a_bad_template_names_its_field() {
        let e = file_names(&req(
            serde_json::json!({ "fileName": "{vim}_{index}.{ext}" }),
        ))
        .expect_err("refused");
        assert_eq!(e.field.as_deref(), Some("rules.fileName"));
        assert!(e.message.contains("did you mean {vin}"), "{}", e.message);

        let e =
            file_names(&req(serde_json::json!({ "directory": "{index}" }))).expect_err("refused");
        assert_eq!(e.field.as_deref(), Some("rules.directory"));
    }

    #[test]
    fn a_value_the_vehicle_lacks_is_named() {
        let mut r = req(serde_json::json!({ "fileName": "{stock}_{index}.{ext}" }));
        r.vehicle = Some(SampleVehicle {
            vin: Some("VIN9".into()),
            ..SampleVehicle::default()
        });
        let e = file_names(&r).expect_err("refused");
        assert_eq!(e.field.as_deref(), Some("rules.fileName"));
        assert!(e.message.contains("{stock}"), "{}", e.message);
    }

    #[test]
    fn image_count_is_bounded() {
        let mut r = req(serde_json::json!({}));
        r.images = Some(0);
        assert_eq!(
            file_names(&r).expect_err("0").field.as_deref(),
            Some("images")
        );
        r.images = Some(21);
        assert_eq!(
            file_names(&r).expect_err("21").field.as_deref(),
            Some("images")
        );
    }
}
