//! SFTP behind [`Transport`]: file transfer over SSH (`protocol: sftp`), with the server's
//! host key pinned (`known_hosts` from a Secret) and password or private-key login.
//!
//! The TCP connection goes to the addresses the guard approved, as for FTP; SSH runs on the
//! stream we connected (`russh`), SFTP v3 on its `sftp` subsystem (`russh-sftp`). Writes are
//! pipelined ([`writer`]); overwriting renames use OpenSSH's atomic `posix-rename`.

mod connect;
pub use connect::PREFERRED_CIPHERS;
mod error;
mod known_hosts;
mod session;
mod writer;

use std::time::Duration;

use tokio::time::Instant;

use super::ftp::ProbeError;
use super::net::{approve, connect_tcp};
use super::outcome::Failure;
use super::transport::{MAX_LISTING_BYTES, MAX_LISTING_ENTRIES, OpenError, Transport};
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;
use connect::{Auth, ConnectOptions};
pub use error::SftpError;
use known_hosts::KnownHostsDb;
use session::SftpSession;
use writer::SftpWriter;

/// Checks `known_hosts` text before it is used: at least one entry must parse, and lines
/// that do not are named (a pasted key cut in half should not pass as "pinned").
pub fn check_known_hosts(text: &str) -> Result<(), String> {
    let db = KnownHostsDb::parse(text);
    match (db.len(), db.skipped_lines()) {
        (0, _) => Err("no host key in OpenSSH known_hosts format (host keytype base64-key)".into()),
        (_, 0) => Ok(()),
        (_, n) => Err(format!(
            "{n} line(s) are not in OpenSSH known_hosts format (host keytype base64-key)"
        )),
    }
}

/// Logs in as an upload would and checks the session answers, then quits: what the
/// `Connected` condition reports. `Err` is (reason, message).
pub async fn probe(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<(), (String, String)> {
    let session = open(ep, guard)
        .await
        .map_err(|f| (f.reason.to_string(), f.message))?;
    let answered = session.inner.noop().await;
    session.quit().await;
    answered.map_err(|e| (reason(&e).to_string(), format!("{}: {e}", ep.target())))
}

/// A logged-in SFTP session.
pub struct Session {
    inner: SftpSession,
    target: String,
    usable: bool,
}

/// The `Connected`/`Ready` reason of a failure.
fn reason(e: &SftpError) -> &'static str {
    match e {
        SftpError::Connect(_) => "ConnectionFailed",
        SftpError::HostKeyMismatch { .. } => "HostKeyMismatch",
        SftpError::HostKeyUnknown { .. } => "HostKeyUnknown",
        SftpError::HostKeyRevoked { .. } => "HostKeyRevoked",
        SftpError::LoginFailed(_) => "LoginFailed",
        SftpError::InvalidKey(_) => "InvalidKey",
        SftpError::NoSuchFile(_) => "FileUnavailable",
        SftpError::PermissionDenied(_) => "PermissionDenied",
        SftpError::AlreadyExists(_) => "FileExists",
        SftpError::Unsupported(_) => "Unsupported",
        SftpError::Failure(_) => "SftpFailure",
        SftpError::ListingTooLarge(_) => "ListingTooLarge",
        SftpError::Protocol(_) => "ProtocolError",
        SftpError::ConnectionLost(_) => "ConnectionLost",
        SftpError::Timeout(_) => "Timeout",
    }
}

/// A failed connect or login is retried, as for FTP: events wait out a rotated host key or
/// password until it is fixed (`Connected` says what) or the retry policy gives up.
fn connect_failure(ep: &FtpEndpoint, e: SftpError) -> Failure {
    Failure::retry(reason(&e), format!("{}: {e}", ep.target()))
}

async fn open(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<Session, Failure> {
    let target = ep.target();
    let deadline = Instant::now() + ep.connect_timeout;
    let network = |e: ProbeError| match e {
        ProbeError::TargetNotAllowed(_) => Failure::permanent(e.reason(), e.to_string()),
        ProbeError::ConnectionRefused { .. } => Failure::retry(
            e.reason(),
            format!("connection refused by {target}: no SSH server listens on that port"),
        ),
        e => Failure::retry(e.reason(), e.to_string()),
    };
    let addrs = approve(ep, guard, deadline).await.map_err(network)?;
    let tcp = connect_tcp(&target, &addrs, deadline, ep.connect_timeout)
        .await
        .map_err(network)?;
    let auth = match &ep.ssh.private_key {
        Some(pem) => Auth::PrivateKey {
            pem: pem.clone(),
            passphrase: ep.ssh.passphrase.clone(),
        },
        None => Auth::Password(ep.password.clone()),
    };
    let mut opts = ConnectOptions::new(ep.host.clone(), ep.port, ep.username.clone(), auth);
    opts.known_hosts = ep.ssh.known_hosts.clone().unwrap_or_default();
    opts.insecure_ignore_host_key = ep.ssh.known_hosts.is_none();
    // What is left of the connect budget after DNS and TCP.
    opts.connect_timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    opts.command_timeout = ep.command_timeout;
    let inner = connect::connect(tcp, &opts)
        .await
        .map_err(|e| connect_failure(ep, e))?;
    Ok(Session {
        inner,
        target,
        usable: true,
    })
}

impl Session {
    /// Runs one operation: the session counts as unusable while it runs (so a cancelled one
    /// is never pooled) and after a failure of the connection rather than of the request.
    async fn run<T>(
        &mut self,
        what: &str,
        op: impl AsyncFnOnce(&SftpSession) -> Result<T, SftpError>,
    ) -> Result<T, Failure> {
        self.usable = false;
        let result = op(&self.inner).await;
        self.usable = match &result {
            Ok(_) => true,
            Err(e) => {
                !matches!(
                    e,
                    SftpError::ConnectionLost(_) | SftpError::Timeout(_) | SftpError::Protocol(_)
                ) && !self.inner.is_closed()
            }
        };
        result.map_err(|e| self.failure(what, e))
    }

    fn failure(&self, what: &str, e: SftpError) -> Failure {
        let message = format!("{what} on {}: {e}", self.target);
        if e.retryable() {
            Failure::retry(reason(&e), message)
        } else {
            Failure::permanent(reason(&e), message)
        }
    }
}

impl Transport for Session {
    type Upload = SftpWriter;

    async fn connect(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<Self, Failure> {
        open(ep, guard).await
    }

    fn target(&self) -> &str {
        &self.target
    }

    fn usable(&self) -> bool {
        self.usable && !self.inner.is_closed()
    }

    async fn noop(&mut self) -> Result<(), String> {
        self.run("checking the session", async |s| s.noop().await)
            .await
            .map_err(|f| f.message)
    }

    async fn mkdir(&mut self, dir: &str) -> Result<bool, Failure> {
        match self
            .run("creating directory", async |s| s.mkdir(dir).await)
            .await
        {
            Ok(()) => Ok(true),
            // The server said no (usually: it exists); the write that follows tells.
            Err(_) if self.usable => Ok(false),
            Err(f) => Err(f),
        }
    }

    async fn open_write(&mut self, path: &str) -> Result<SftpWriter, OpenError> {
        self.usable = false;
        let opened = self.inner.put(path).await;
        match opened {
            // In use until closed: a session dropped half-way must not return to the pool.
            Ok(w) => Ok(w),
            Err(e) => {
                self.usable = !matches!(
                    e,
                    SftpError::ConnectionLost(_) | SftpError::Timeout(_) | SftpError::Protocol(_)
                );
                let maybe_missing_dir = matches!(e, SftpError::NoSuchFile(_));
                Err(OpenError {
                    failure: self.failure(&format!("storing {path}"), e),
                    maybe_missing_dir,
                })
            }
        }
    }

    async fn write(&mut self, upload: &mut SftpWriter, data: &[u8]) -> Result<(), Failure> {
        let what = "storing";
        upload.write(data).await.map_err(|e| self.failure(what, e))
    }

    async fn close_write(&mut self, upload: SftpWriter) -> Result<(), Failure> {
        match upload.close().await {
            Ok(_) => {
                self.usable = true;
                Ok(())
            }
            Err(e) => {
                self.usable = !matches!(
                    e,
                    SftpError::ConnectionLost(_) | SftpError::Timeout(_) | SftpError::Protocol(_)
                );
                Err(self.failure("storing", e))
            }
        }
    }

    async fn exists(&mut self, path: &str) -> Result<bool, Failure> {
        self.run(&format!("checking {path}"), async |s| s.exists(path).await)
            .await
    }

    async fn list(&mut self, dir: &str) -> Result<Vec<String>, Failure> {
        let listed = self
            .run(&format!("listing {dir}"), async |s| {
                s.list(dir, MAX_LISTING_ENTRIES, MAX_LISTING_BYTES).await
            })
            .await;
        match listed {
            Ok(names) => Ok(names),
            // A missing directory lists nothing, as for FTP.
            Err(f) if f.reason == "FileUnavailable" => Ok(Vec::new()),
            Err(f) => Err(f),
        }
    }

    async fn remove(&mut self, path: &str) -> Result<bool, Failure> {
        self.run(&format!("deleting {path}"), async |s| s.remove(path).await)
            .await
    }

    async fn remove_dir(&mut self, dir: &str) -> Result<(), Failure> {
        match self
            .run(&format!("removing directory {dir}"), async |s| {
                s.rmdir(dir).await
            })
            .await
        {
            // Refusals (typically: not empty) are fine, as for FTP.
            Err(_) if self.usable => Ok(()),
            other => other,
        }
    }

    async fn rename(&mut self, from: &str, to: &str, overwrite: bool) -> Result<(), Failure> {
        self.run(&format!("renaming into place {to}"), async |s| {
            s.rename(from, to, overwrite).await
        })
        .await
    }

    async fn quit(self) {
        let _ = self.inner.quit().await;
    }
}
