//! What a file delivery did, and the failures on the way: retryable (network, timeouts,
//! transient replies) or permanent (the server or the event says no).

use std::time::Duration;

use crate::store::FtpReply;

/// What one delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadResult {
    /// Files were written (images or the archive, and the metadata file).
    Uploaded {
        vin: Option<String>,
        files: u32,
        bytes: u64,
        elapsed: Duration,
        /// Every final remote path this delivery wrote, metadata file included: what a later
        /// `vehicle.deleted` is to remove.
        paths: Vec<String>,
    },
    /// `vehicle.deleted`: the vehicle's recorded files were removed.
    Deleted {
        vin: Option<String>,
        files: u32,
        elapsed: Duration,
        /// The recorded paths that were removed (those already gone are not listed).
        paths: Vec<String>,
    },
    /// Nothing to do: no images, every file exists with `onExisting: skip`, an event this
    /// connection does not act on.
    Skipped { reason: String },
    /// Worth retrying: network errors, timeouts, 4xx FTP replies, image server 5xx. `reply`:
    /// the FTP server's reply that failed it, if one did.
    Retryable {
        reason: String,
        message: String,
        reply: Option<FtpReply>,
    },
    /// Retrying cannot help: 5xx FTP replies, image 404, checksum mismatch, an existing file
    /// with `onExisting: fail`, a template that does not render for this vehicle.
    Permanent {
        reason: String,
        message: String,
        reply: Option<FtpReply>,
    },
}

impl UploadResult {
    /// CamelCase reason of a failure or skip-less outcome; `None` on success.
    pub fn reason(&self) -> Option<&str> {
        match self {
            UploadResult::Retryable { reason, .. } | UploadResult::Permanent { reason, .. } => {
                Some(reason)
            }
            UploadResult::Skipped { .. } => Some("Skipped"),
            UploadResult::Uploaded { .. } | UploadResult::Deleted { .. } => None,
        }
    }

    /// Whether the event is done with (success or nothing to do).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            UploadResult::Uploaded { .. }
                | UploadResult::Deleted { .. }
                | UploadResult::Skipped { .. }
        )
    }
}

/// A failure on the way; becomes [`UploadResult::Retryable`] or [`UploadResult::Permanent`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) retryable: bool,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    /// The server's reply that failed it (FTP), for the delivery log.
    pub(crate) reply: Option<FtpReply>,
}

impl Failure {
    pub(crate) fn retry(reason: &'static str, message: String) -> Self {
        Failure {
            retryable: true,
            reason,
            message,
            reply: None,
        }
    }

    pub(crate) fn permanent(reason: &'static str, message: String) -> Self {
        Failure {
            retryable: false,
            reason,
            message,
            reply: None,
        }
    }

    /// With the server reply `text` (`"550 No such file"`) that caused it, if it is one.
    pub(crate) fn with_reply(mut self, text: &str) -> Self {
        self.reply = ftp_reply(text);
        self
    }

    pub(crate) fn into_result(self) -> UploadResult {
        let (reason, message, reply) = (self.reason.to_string(), self.message, self.reply);
        if self.retryable {
            UploadResult::Retryable {
                reason,
                message,
                reply,
            }
        } else {
            UploadResult::Permanent {
                reason,
                message,
                reply,
            }
        }
    }
}

/// An FTP reply line: a three-digit code, then its text.
fn ftp_reply(text: &str) -> Option<FtpReply> {
    let text = text.trim();
    let code: u16 = text.get(..3)?.parse().ok()?;
    (100..600).contains(&code).then(|| FtpReply {
        code,
        text: text.to_owned(),
    })
}

/// Only after the lease dropped its session, which it does not while in use.
pub(crate) fn closed(target: &str) -> Failure {
    Failure::retry(
        "ConnectionLost",
        format!("the session with {target} is closed"),
    )
}

pub(crate) fn timed_out(target: &str, what: &str, path: &str, after: Duration) -> Failure {
    Failure::retry(
        "Timeout",
        format!("no answer from {target} within {after:?} while {what} {path}"),
    )
}
