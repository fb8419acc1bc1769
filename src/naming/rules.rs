//! An FtpConnection's rules checked as a whole, before any upload: every template parses and
//! renders for a sample vehicle into a path inside `baseDirectory`.

use super::{NamingContext, PathPart, RenderError, Template, TemplateError, join_path};
use crate::api::ftp::{FtpRules, Layout};

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
