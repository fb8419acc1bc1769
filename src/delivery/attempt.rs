//! One attempt, whatever the kind: every sender's result becomes an [`Attempt`], and the
//! dispatcher schedules, retries, records and counts from that alone.

use std::time::Duration;

use crate::delivery::api::ApiSender;
use crate::delivery::files::{UploadResult, Uploader};
use crate::delivery::webhook::{AttemptResult, WebhookSender};
use crate::ingest::Envelope;
use crate::routing::{Kind, TargetConfig};
use crate::store::{FtpReply, Outcome, Why};

/// What the receiver answered, for the delivery log: whatever of it the kind knows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub http_status: Option<u16>,
    pub ftp_reply: Option<FtpReply>,
    /// At most [`crate::store::MAX_RESPONSE_SNIPPET`] bytes of the answer's body, credentials
    /// masked.
    pub response: Option<String>,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Attempt {
    /// Finished: `outcome` is what the store records; `skipped` when there was nothing to do.
    Done {
        outcome: Outcome,
        skipped: bool,
        elapsed: Option<Duration>,
    },
    /// Worth trying again, not before `retry_after` if the peer said so.
    Retry {
        why: Why,
        retry_after: Option<Duration>,
        elapsed: Option<Duration>,
    },
    /// Retrying cannot help.
    Fail { why: Why, elapsed: Option<Duration> },
    /// The receiver says the endpoint is gone: hold the target, keep the event.
    Gone { elapsed: Option<Duration> },
}

impl Attempt {
    pub fn elapsed(&self) -> Option<Duration> {
        match self {
            Attempt::Done { elapsed, .. }
            | Attempt::Retry { elapsed, .. }
            | Attempt::Fail { elapsed, .. }
            | Attempt::Gone { elapsed } => *elapsed,
        }
    }
}

impl From<AttemptResult> for Attempt {
    fn from(r: AttemptResult) -> Self {
        match r {
            AttemptResult::Delivered { status, elapsed } => Attempt::Done {
                outcome: Outcome::Delivered {
                    status: Some(status),
                },
                skipped: false,
                elapsed: Some(elapsed),
            },
            AttemptResult::Retryable {
                reason,
                message,
                retry_after,
                elapsed,
                ..
            } => Attempt::Retry {
                why: Why::new(reason, message),
                retry_after,
                elapsed: Some(elapsed),
            },
            AttemptResult::Permanent {
                reason,
                message,
                elapsed,
                ..
            } => Attempt::Fail {
                why: Why::new(reason, message),
                elapsed: Some(elapsed),
            },
            AttemptResult::Gone { elapsed } => Attempt::Gone {
                elapsed: Some(elapsed),
            },
        }
    }
}

impl From<UploadResult> for Attempt {
    fn from(r: UploadResult) -> Self {
        match r {
            UploadResult::Uploaded {
                vin,
                files,
                bytes,
                elapsed,
                paths,
            } => Attempt::Done {
                outcome: Outcome::Uploaded {
                    files,
                    bytes,
                    vin,
                    paths,
                },
                skipped: false,
                elapsed: Some(elapsed),
            },
            UploadResult::Deleted { paths, elapsed, .. } => Attempt::Done {
                outcome: Outcome::Removed { paths },
                skipped: false,
                elapsed: Some(elapsed),
            },
            UploadResult::Skipped { reason } => {
                tracing::debug!(%reason, "nothing to upload");
                Attempt::Done {
                    outcome: Outcome::Delivered { status: None },
                    skipped: true,
                    elapsed: None,
                }
            }
            UploadResult::Retryable {
                reason, message, ..
            } => Attempt::Retry {
                why: Why::new(reason, message),
                retry_after: None,
                elapsed: None,
            },
            UploadResult::Permanent {
                reason, message, ..
            } => Attempt::Fail {
                why: Why::new(reason, message),
                elapsed: None,
            },
        }
    }
}

/// The senders of every kind behind one call.
pub struct Senders {
    pub webhook: WebhookSender,
    pub files: Uploader,
    pub api: ApiSender,
}

/// What an attempt gets: the event as stored, where it is queued (target row, seq, lane)
/// and, for file targets, the paths recorded as uploaded for its vehicle.
pub struct Delivery<'a> {
    pub row: &'a str,
    pub seq: u64,
    pub lane: &'a str,
    pub event_id: &'a str,
    pub body: &'a [u8],
    pub uploaded: &'a [String],
}

impl Senders {
    /// Attempts of a kind in flight at once over all its targets: webhook attempts are cheap;
    /// an FTP delivery holds its vehicle's files while uploading, so 400 connections
    /// uploading at once must not mean 400 vehicles in memory.
    pub fn in_flight(kind: Kind) -> usize {
        match kind {
            Kind::Webhook => 1024,
            Kind::Ftp => 32,
            // A chain may stream images through; fewer than webhooks, more than uploads.
            Kind::Api => 256,
        }
    }

    /// Whether attempts of this target need the vehicle's upload record.
    pub fn needs_upload_record(config: &TargetConfig) -> bool {
        matches!(config, TargetConfig::Ftp(_))
    }

    /// One attempt of `d` to the target `config` describes, and the receiver's answer.
    ///
    /// The file-transfer and API futures are boxed: an async fn's state is as large as its
    /// largest arm, and theirs (14 KiB) made every webhook attempt, the common case, allocate
    /// and copy that much twice.
    pub async fn attempt(&self, config: &TargetConfig, d: Delivery<'_>) -> (Attempt, Answer) {
        match config {
            TargetConfig::Webhook(w) => {
                let (result, response) = self.webhook.send_answered(w, d.event_id, d.body).await;
                let answer = Answer {
                    http_status: result.status(),
                    ftp_reply: None,
                    response,
                };
                (result.into(), answer)
            }
            TargetConfig::Ftp(f) => match serde_json::from_slice::<Envelope>(d.body) {
                Ok(event) => {
                    let result = Box::pin(self.files.deliver(f, &event, d.uploaded)).await;
                    let ftp_reply = match &result {
                        UploadResult::Retryable { reply, .. }
                        | UploadResult::Permanent { reply, .. } => reply.clone(),
                        _ => None,
                    };
                    let answer = Answer {
                        ftp_reply,
                        ..Answer::default()
                    };
                    (result.into(), answer)
                }
                Err(e) => (
                    Attempt::Fail {
                        why: Why::new("BadEvent", format!("stored event cannot be read: {e}")),
                        elapsed: None,
                    },
                    Answer::default(),
                ),
            },
            TargetConfig::Api(a) => {
                let mut answer = Answer::default();
                let attempt = Box::pin(self.api.deliver_answered(a, d, &mut answer)).await;
                (attempt, answer)
            }
        }
    }
}
