//! An SFTP session's operations, on `russh` (SSH transport) and `russh-sftp` (SFTP v3 protocol).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use russh::Disconnect;
use russh::client::Handle;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as RawError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use super::connect::ClientHandler;
use super::error::{SftpError, map_raw_error, map_status, timeout_error};
use super::writer::SftpWriter;

const POSIX_RENAME: &str = "posix-rename@openssh.com";

/// SSH wire encoding of a list of strings (u32 length + bytes each).
fn ssh_strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

/// An authenticated SFTP session (one SSH connection, one SFTP channel).
pub(super) struct SftpSession {
    pub(super) ssh: Handle<ClientHandler>,
    pub(super) sftp: Arc<RawSftpSession>,
    pub(super) posix_rename: bool,
    pub(super) write_len: usize,
    pub(super) max_in_flight: usize,
    pub(super) command_timeout: Duration,
}

impl SftpSession {
    /// True once the SSH transport is gone (cheap, local; use [`Self::noop`] for a real probe).
    pub fn is_closed(&self) -> bool {
        self.ssh.is_closed()
    }

    /// Runs `fut` under `command_timeout`, keeping russh-sftp's error for the caller to inspect.
    async fn timed<T>(
        &self,
        op: &str,
        path: &str,
        fut: impl Future<Output = Result<T, RawError>>,
    ) -> Result<Result<T, RawError>, SftpError> {
        tokio::time::timeout(self.command_timeout, fut)
            .await
            .map_err(|_| timeout_error(op, path, self.command_timeout))
    }

    /// Like [`Self::timed`] but classifies the error.
    async fn run<T>(
        &self,
        op: &str,
        path: &str,
        fut: impl Future<Output = Result<T, RawError>>,
    ) -> Result<T, SftpError> {
        match self.timed(op, path, fut).await? {
            Ok(v) => Ok(v),
            Err(e) => Err(self.classify(op, path, e)),
        }
    }

    fn classify(&self, op: &str, path: &str, e: RawError) -> SftpError {
        match map_raw_error(op, path, e) {
            SftpError::Protocol(m) if self.ssh.is_closed() => SftpError::ConnectionLost(m),
            other => other,
        }
    }

    /// Opens `path` for writing (create + truncate). Stream data with
    /// [`SftpWriter::write`] and finish with [`SftpWriter::close`].
    pub async fn put(&self, path: &str) -> Result<SftpWriter, SftpError> {
        let handle = self
            .run(
                "open",
                path,
                self.sftp.open(
                    path,
                    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
                    FileAttributes::empty(),
                ),
            )
            .await?
            .handle;
        Ok(SftpWriter {
            sftp: self.sftp.clone(),
            handle,
            path: path.to_owned(),
            offset: 0,
            in_flight: VecDeque::with_capacity(self.max_in_flight),
            write_len: self.write_len,
            max_in_flight: self.max_in_flight,
            command_timeout: self.command_timeout,
            failed: None,
            closed: false,
        })
    }

    /// Renames `from` to `to`.
    ///
    /// `overwrite = true`: `posix-rename@openssh.com` (atomic rename(2)) when offered,
    /// otherwise remove `to` (if present) then SSH_FXP_RENAME (not atomic).
    /// `overwrite = false`: refuses with AlreadyExists when `to` exists (checked first,
    /// because some servers overwrite on SSH_FXP_RENAME despite the v3 spec), then
    /// SSH_FXP_RENAME (OpenSSH implements it with link()+unlink(), so it never clobbers).
    pub async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), SftpError> {
        if overwrite && self.posix_rename {
            let data = ssh_strings(&[from, to]);
            let reply = self
                .run("posix-rename", from, self.sftp.extended(POSIX_RENAME, data))
                .await?;
            return match reply {
                Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
                Packet::Status(s) => {
                    Err(map_status("posix-rename", &format!("{from} -> {to}"), &s))
                }
                _ => Err(SftpError::Protocol(format!(
                    "posix-rename {from} -> {to}: unexpected reply packet"
                ))),
            };
        }
        if overwrite {
            self.remove(to).await?;
        } else if self.exists(to).await? {
            return Err(SftpError::AlreadyExists(format!("rename {from} -> {to}")));
        }
        let err = match self
            .timed("rename", from, self.sftp.rename(from, to))
            .await?
        {
            Ok(_) => return Ok(()),
            Err(e) => self.classify("rename", &format!("{from} -> {to}"), e),
        };
        // Lost a race with another writer of `to` (OpenSSH: link() EEXIST → SSH_FX_FAILURE).
        if !overwrite && matches!(err, SftpError::Failure(_)) && self.exists(to).await? {
            return Err(SftpError::AlreadyExists(format!("rename {from} -> {to}")));
        }
        Err(err)
    }

    /// stat(path): true if it exists (file or directory), false on SSH_FX_NO_SUCH_FILE.
    pub async fn exists(&self, path: &str) -> Result<bool, SftpError> {
        match self.timed("stat", path, self.sftp.stat(path)).await? {
            Ok(_) => Ok(true),
            Err(RawError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(false),
            Err(e) => Err(self.classify("stat", path, e)),
        }
    }

    /// Names in `dir` (without "." and ".."), in server order: at most `max_entries` names
    /// and `max_bytes` of them, else [`SftpError::ListingTooLarge`]; names longer than any
    /// file system allows are skipped (the listing is foreign input).
    pub async fn list(
        &self,
        dir: &str,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<String>, SftpError> {
        const MAX_NAME: usize = 4096;
        let handle = self
            .run("opendir", dir, self.sftp.opendir(dir))
            .await?
            .handle;
        let mut names = Vec::new();
        let mut bytes = 0usize;
        let listed = loop {
            match self
                .timed("readdir", dir, self.sftp.readdir(handle.as_str()))
                .await
            {
                Ok(Ok(batch)) => {
                    let mut too_many = false;
                    for file in batch.files {
                        bytes += file.filename.len();
                        if names.len() >= max_entries || bytes > max_bytes {
                            too_many = true;
                            break;
                        }
                        if file.filename != "."
                            && file.filename != ".."
                            && file.filename.len() <= MAX_NAME
                        {
                            names.push(file.filename);
                        }
                    }
                    if too_many {
                        break Err(SftpError::ListingTooLarge(format!(
                            "listing {dir}: more than {max_entries} entries or {max_bytes} bytes"
                        )));
                    }
                }
                Ok(Err(RawError::Status(s))) if s.status_code == StatusCode::Eof => break Ok(()),
                Ok(Err(e)) => break Err(self.classify("readdir", dir, e)),
                Err(timeout) => break Err(timeout),
            }
        };
        let closed = self.run("closedir", dir, self.sftp.close(handle)).await;
        listed?;
        closed?;
        Ok(names)
    }

    /// Creates one directory. `Err` with a status (usually SSH_FX_FAILURE: it exists) leaves
    /// the session usable.
    pub async fn mkdir(&self, dir: &str) -> Result<(), SftpError> {
        self.run("mkdir", dir, self.sftp.mkdir(dir, FileAttributes::empty()))
            .await
            .map(|_| ())
    }

    /// Removes a file: true if removed, false if it did not exist.
    pub async fn remove(&self, path: &str) -> Result<bool, SftpError> {
        match self.timed("remove", path, self.sftp.remove(path)).await? {
            Ok(_) => Ok(true),
            Err(RawError::Status(s)) if s.status_code == StatusCode::NoSuchFile => Ok(false),
            Err(e) => Err(self.classify("remove", path, e)),
        }
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, dir: &str) -> Result<(), SftpError> {
        self.run("rmdir", dir, self.sftp.rmdir(dir))
            .await
            .map(|_| ())
    }

    /// Cheap liveness probe for a pooled session: realpath(".") round trip.
    pub async fn noop(&self) -> Result<(), SftpError> {
        if self.ssh.is_closed() {
            return Err(SftpError::ConnectionLost("SSH transport closed".to_owned()));
        }
        self.run("realpath", ".", self.sftp.realpath("."))
            .await
            .map(|_| ())
    }

    /// Closes the SFTP channel and disconnects. Best effort; never waits longer than
    /// `command_timeout`.
    pub async fn quit(self) -> Result<(), SftpError> {
        // Ignored: fails only if the SFTP writer task is already gone.
        let _ = self.sftp.close_session();
        if self.ssh.is_closed() {
            return Ok(());
        }
        match tokio::time::timeout(
            self.command_timeout,
            self.ssh.disconnect(Disconnect::ByApplication, "bye", "en"),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            // Already gone: that is what we wanted.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(timeout_error("disconnect", "", self.command_timeout)),
        }
    }
}
