//! File delivery (FtpConnection): one event for one connection puts the vehicle's images (one
//! file each, or one zip archive) and an optional metadata JSON on the client's server, named
//! by its rules; `vehicle.deleted` removes exactly the files recorded for that vehicle when the
//! rules ask for it (never files found by a name pattern, which can belong to another vehicle).
//!
//! Atomic to the receiver (docs/delivery.md, "FTP and SFTP"): every file is stored under a
//! temporary name (`.vc-tmp-<unix time>-<attempt key>-<unique>-<n>`, a dot file that most
//! pollers ignore) in its final directory and renamed once complete, so a final name only ever
//! holds a whole file. Renames wait until every image of the event is downloaded, verified (size,
//! SHA-256) and stored: a bad image, or a connection that breaks while storing, leaves only
//! temporaries, never half a vehicle. The metadata file is renamed last and marks the vehicle
//! complete. Temporaries are unique per attempt; the first session that stores into a
//! directory deletes the ones a dead session left there (older than [`STALE_TEMP_AFTER`], or
//! of an earlier attempt of the same event and server).
//!
//! Memory does not grow with the number or size of images: each image is streamed from its
//! HTTP response to the server (or, in the `zip` layout, through the archive writer) a chunk
//! at a time, hashed on the way.
//!
//! Modules by job: [`deliver`] orchestrates without knowing the protocol, through the
//! [`transport::Transport`] interface that [`ftp`] and [`sftp`] implement; [`pool`] keeps sessions per
//! endpoint, [`images`] downloads, [`archive`] writes zips, [`names`] makes paths from the
//! rules, [`stage`] stores under temporary names, [`outcome`] says what happened.

mod archive;
mod deliver;
pub mod ftp;
pub(crate) mod images;
mod names;
mod net;
pub(crate) mod outcome;
mod pool;
pub mod sftp;
mod stage;
pub(crate) mod transport;

pub use deliver::{UploadError, Uploader};
pub use names::STALE_TEMP_AFTER;
pub use outcome::UploadResult;
pub use pool::{SESSION_IDLE, SessionSlots, SlotGuard};
pub use transport::{MAX_LISTING_BYTES, MAX_LISTING_ENTRIES};

use crate::api::ftp::FtpProtocol;
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;

/// Logs in as an upload would, then quits: what the `Connected` condition reports.
/// `Err` is (reason, message).
pub async fn probe(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<(), (String, String)> {
    match ep.protocol {
        FtpProtocol::Sftp => sftp::probe(ep, guard).await,
        FtpProtocol::Ftp | FtpProtocol::Ftps | FtpProtocol::FtpsImplicit => ftp::probe(ep, guard)
            .await
            .map_err(|e| (e.reason().to_string(), e.to_string())),
    }
}
