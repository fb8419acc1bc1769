//! The one interface file delivery needs from a protocol: what the orchestration
//! ([`super::deliver`], [`super::stage`]) and the session pool ([`super::pool`]) call, and all
//! they know of FTP ([`super::ftp`]) or any other transport.

use std::future::Future;

use super::outcome::Failure;
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;

/// Directory listings are foreign input: at most this many bytes and entries are read, and
/// the whole listing within the command timeout.
pub const MAX_LISTING_BYTES: usize = 8 << 20;
pub const MAX_LISTING_ENTRIES: usize = 100_000;

/// A failed attempt to open a file for writing.
#[derive(Debug)]
pub(crate) struct OpenError {
    pub(crate) failure: Failure,
    /// The server refused in a way a missing directory explains (FTP 550-553), so a directory
    /// that a session's cache says exists may have been removed since.
    pub(crate) maybe_missing_dir: bool,
}

impl From<Failure> for OpenError {
    fn from(failure: Failure) -> Self {
        OpenError {
            failure,
            maybe_missing_dir: false,
        }
    }
}

/// A logged-in session with a file server. Every command is bounded by the endpoint's
/// command timeout, and paths are as [`crate::naming::join_path`] writes them (`/`-separated,
/// relative ones from the login directory).
///
/// After a failure the session says whether it can still be used ([`Transport::usable`]):
/// a refusal by the server leaves it usable, a broken connection or a timeout does not, and
/// neither does a command that was cancelled half-way. Unusable sessions are never pooled.
pub(crate) trait Transport: Send + Sized + 'static {
    /// A file open for writing.
    type Upload: Send;

    /// Connects to the addresses the guard approves for the endpoint, and logs in.
    fn connect(
        ep: &FtpEndpoint,
        guard: &TargetGuard,
    ) -> impl Future<Output = Result<Self, Failure>> + Send;

    /// `host:port` of the server, for messages.
    fn target(&self) -> &str;

    /// False after a failure that left the connection in an unknown state, and while a
    /// command is in flight (so a cancelled one is never reused).
    fn usable(&self) -> bool;

    /// A cheap round trip, before a pooled session is reused; the error says why it is dead.
    fn noop(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// Creates one directory: `Ok(true)` if created, `Ok(false)` if the server refused
    /// (usually: it exists; anything else shows in the write that follows).
    fn mkdir(&mut self, dir: &str) -> impl Future<Output = Result<bool, Failure>> + Send;

    /// Opens `path` for writing, replacing any file of that name.
    fn open_write(
        &mut self,
        path: &str,
    ) -> impl Future<Output = Result<Self::Upload, OpenError>> + Send;

    fn write(
        &mut self,
        upload: &mut Self::Upload,
        data: &[u8],
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Completes a write and reads the server's verdict.
    fn close_write(
        &mut self,
        upload: Self::Upload,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    fn exists(&mut self, path: &str) -> impl Future<Output = Result<bool, Failure>> + Send;

    /// Names in `dir` (last path segments); a missing or empty directory lists nothing. At
    /// most [`MAX_LISTING_BYTES`] and [`MAX_LISTING_ENTRIES`].
    fn list(&mut self, dir: &str) -> impl Future<Output = Result<Vec<String>, Failure>> + Send;

    /// Deletes a file; `Ok(false)` when there was none.
    fn remove(&mut self, path: &str) -> impl Future<Output = Result<bool, Failure>> + Send;

    /// Removes a directory, ignoring refusals (typically: not empty).
    fn remove_dir(&mut self, dir: &str) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Renames `from` to `to`; with `overwrite`, replacing an existing `to`.
    fn rename(
        &mut self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Ends the session politely.
    fn quit(self) -> impl Future<Output = ()> + Send;
}
