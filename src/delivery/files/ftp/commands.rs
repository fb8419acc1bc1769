//! FTP behind [`Transport`]: the commands uploads use, each bounded by the command timeout,
//! with FTP replies classified into retryable and permanent failures.

use suppaftp::tokio::{AsyncRustlsStream, TransferStream};
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::time::{Instant, timeout, timeout_at};

use super::{FtpStream, ProbeError, Session};
use crate::delivery::files::outcome::{Failure, timed_out};
use crate::delivery::files::transport::{
    MAX_LISTING_BYTES, MAX_LISTING_ENTRIES, OpenError, Transport,
};
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;

/// Size of each write to an FTP data connection; each is bounded by the command timeout.
const WRITE_CHUNK: usize = 64 * 1024;
/// Longest listing line kept; longer ones name no file of ours (segments are <= 255 bytes).
const MAX_LISTING_LINE: usize = 4096;

/// An open STOR.
pub struct Transfer {
    stream: TransferStream<AsyncRustlsStream>,
    path: String,
    /// A write failed or timed out: the data connection is in an unknown state.
    broken: bool,
}

impl Session {
    /// One control command, bounded by the command timeout.
    async fn cmd<T, F>(&mut self, what: &'static str, path: &str, op: F) -> Result<T, FtpFailure>
    where
        F: for<'a> FnOnce(
            &'a mut FtpStream,
        ) -> futures::future::BoxFuture<'a, suppaftp::FtpResult<T>>,
    {
        let t = self.command_timeout;
        self.usable = false;
        let result = match timeout(t, op(&mut self.stream)).await {
            Ok(r) => r,
            Err(_) => return Err(FtpFailure::Other(timed_out(&self.target, what, path, t))),
        };
        match result {
            Ok(v) => {
                self.usable = true;
                Ok(v)
            }
            Err(e) => {
                let f = ftp_failure(&self.target, what, path, e);
                self.usable = f.session_usable();
                Err(f)
            }
        }
    }
}

impl Transport for Session {
    type Upload = Transfer;

    async fn connect(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<Self, Failure> {
        // Checks the host again (its addresses may have changed) and connects to exactly the
        // addresses it approves; data connections are checked too.
        super::connect(ep, guard).await.map_err(|e| match e {
            ProbeError::TargetNotAllowed(_) => Failure::permanent(e.reason(), e.to_string()),
            // Connecting and logging in fail for reasons of the connection, not of the
            // event: all are retried, so events wait out a wrong password or certificate
            // until it is fixed (the `Connected` condition says what) or the retry policy
            // gives up.
            ProbeError::LoginFailed { ref reply, .. } => {
                Failure::retry(e.reason(), e.to_string()).with_reply(reply)
            }
            e => Failure::retry(e.reason(), e.to_string()),
        })
    }

    fn target(&self) -> &str {
        &self.target
    }

    fn usable(&self) -> bool {
        self.usable
    }

    async fn noop(&mut self) -> Result<(), String> {
        self.usable = false;
        self.stream.noop().await.map_err(|e| super::describe(&e))?;
        self.usable = true;
        Ok(())
    }

    async fn mkdir(&mut self, dir: &str) -> Result<bool, Failure> {
        let made = self
            .cmd("creating directory", dir, {
                let p = dir.to_owned();
                move |s| Box::pin(s.mkdir(p))
            })
            .await;
        match made {
            Ok(()) => Ok(true),
            Err(FtpFailure::Reply { .. }) => Ok(false),
            Err(FtpFailure::Other(f)) => Err(f),
        }
    }

    async fn open_write(&mut self, path: &str) -> Result<Transfer, OpenError> {
        let opened = self
            .cmd("storing", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.put_with_stream(p))
            })
            .await;
        let stream = match opened {
            Ok(stream) => stream,
            Err(FtpFailure::Reply { code, failure }) => {
                return Err(OpenError {
                    failure,
                    maybe_missing_dir: (550..=553).contains(&code),
                });
            }
            Err(FtpFailure::Other(failure)) => return Err(failure.into()),
        };
        // In use until closed: a session dropped half-way must not return to the pool.
        self.usable = false;
        Ok(Transfer {
            stream,
            path: path.to_string(),
            broken: false,
        })
    }

    /// Writes `data` to an open STOR, each piece bounded by the command timeout.
    async fn write(&mut self, t: &mut Transfer, data: &[u8]) -> Result<(), Failure> {
        let limit = self.command_timeout;
        for chunk in data.chunks(WRITE_CHUNK) {
            let failure = match timeout(limit, t.stream.write_all(chunk)).await {
                Ok(Ok(())) => continue,
                // The data connection is gone; what the server kept is a partial temporary.
                Ok(Err(e)) => ftp_failure(
                    &self.target,
                    "storing",
                    &t.path,
                    FtpError::ConnectionError(e),
                )
                .into(),
                Err(_) => timed_out(&self.target, "storing", &t.path, limit),
            };
            t.broken = true;
            return Err(failure);
        }
        Ok(())
    }

    /// Ends a STOR and reads the server's verdict. After a failed write the connection is
    /// given up instead.
    async fn close_write(&mut self, t: Transfer) -> Result<(), Failure> {
        let limit = self.command_timeout;
        if t.broken {
            return Err(Failure::retry(
                "ConnectionLost",
                format!("storing {} on {}: transfer broken", t.path, self.target),
            ));
        }
        match timeout(limit, t.stream.finish()).await {
            Ok(Ok(())) => {
                self.usable = true;
                Ok(())
            }
            Ok(Err(e)) => {
                let f = ftp_failure(&self.target, "storing", &t.path, e);
                self.usable = f.session_usable();
                Err(f.into())
            }
            Err(_) => Err(timed_out(&self.target, "storing", &t.path, limit)),
        }
    }

    /// Whether a file exists: SIZE, or a listing of its directory where SIZE is not
    /// implemented.
    async fn exists(&mut self, path: &str) -> Result<bool, Failure> {
        match self
            .cmd("checking", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.size(p))
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(FtpFailure::Reply { code: 550, .. }) => Ok(false),
            Err(FtpFailure::Reply {
                code: 500 | 501 | 502 | 504,
                ..
            }) => {
                let name = path.rsplit('/').next().unwrap_or(path);
                let dir = path
                    .rsplit_once('/')
                    .map_or("", |(d, _)| if d.is_empty() { "/" } else { d });
                Ok(self.list(dir).await?.iter().any(|n| n == name))
            }
            Err(f) => Err(f.into()),
        }
    }

    /// Names in `dir` (last path segments; servers differ in what NLST prints). A missing
    /// or empty directory lists nothing. The listing is foreign input: at most
    /// [`MAX_LISTING_BYTES`] and [`MAX_LISTING_ENTRIES`], all within the command timeout.
    async fn list(&mut self, dir: &str) -> Result<Vec<String>, Failure> {
        const WHAT: &str = "listing";
        let limit = self.command_timeout;
        let deadline = Instant::now() + limit;
        let command = if dir.is_empty() {
            "NLST".to_string()
        } else {
            format!("NLST {dir}")
        };
        let opened = self
            .cmd(WHAT, dir, move |s| {
                Box::pin(
                    s.custom_data_command(command, &[Status::AboutToSend, Status::AlreadyOpen]),
                )
            })
            .await;
        let transfer = match opened {
            Ok((_, transfer)) => transfer,
            // "No files found" (450/550) is how several servers list an empty directory.
            Err(FtpFailure::Reply {
                code: 450 | 550, ..
            }) => return Ok(Vec::new()),
            Err(f) => return Err(f.into()),
        };
        self.usable = false;
        let mut reader = tokio::io::BufReader::new(transfer);
        let mut names = Vec::new();
        let read = timeout_at(deadline, read_listing(&mut reader, &mut names)).await;
        let target = self.target.clone();
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                // Dropping the data connection aborts the listing; suppaftp reads the
                // transfer's reply before the next command.
                drop(reader);
                self.usable = true;
                return Err(Failure::permanent(
                    "ListingTooLarge",
                    format!(
                        "{WHAT} {} on {target}: more than {MAX_LISTING_BYTES} bytes or {MAX_LISTING_ENTRIES} entries",
                        if dir.is_empty() {
                            "the login directory"
                        } else {
                            dir
                        }
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err(ftp_failure(&target, WHAT, dir, FtpError::ConnectionError(e)).into());
            }
            Err(_) => return Err(timed_out(&target, WHAT, dir, limit)),
        }
        match timeout_at(deadline, reader.into_inner().finish()).await {
            Ok(Ok(())) => {
                self.usable = true;
                Ok(names)
            }
            Ok(Err(e)) => {
                let f = ftp_failure(&target, WHAT, dir, e);
                self.usable = f.session_usable();
                Err(f.into())
            }
            Err(_) => Err(timed_out(&target, WHAT, dir, limit)),
        }
    }

    /// DELE; false when there was no such file.
    async fn remove(&mut self, path: &str) -> Result<bool, Failure> {
        match self
            .cmd("deleting", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.rm(p))
            })
            .await
        {
            Ok(()) => Ok(true),
            Err(FtpFailure::Reply { code: 550, .. }) => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// RMD, ignoring refusals (typically: not empty, because other files live there).
    async fn remove_dir(&mut self, dir: &str) -> Result<(), Failure> {
        match self
            .cmd("removing directory", dir, {
                let d = dir.to_owned();
                move |s| Box::pin(s.rmdir(d))
            })
            .await
        {
            Ok(()) | Err(FtpFailure::Reply { .. }) => Ok(()),
            Err(FtpFailure::Other(f)) => Err(f),
        }
    }

    /// RNFR/RNTO. With `overwrite`, servers that refuse to rename over an existing file
    /// (Windows ones) get the file deleted first; POSIX servers (vsftpd, libunftp) replace
    /// it atomically on the first try.
    async fn rename(&mut self, temp: &str, path: &str, overwrite: bool) -> Result<(), Failure> {
        let first = self
            .cmd("renaming into place", path, {
                let (from, to) = (temp.to_owned(), path.to_owned());
                move |s| Box::pin(s.rename(from, to))
            })
            .await;
        match first {
            Ok(()) => Ok(()),
            Err(FtpFailure::Reply { code, .. }) if overwrite && (500..600).contains(&code) => {
                self.remove(path).await?;
                self.cmd("renaming into place", path, {
                    let (from, to) = (temp.to_owned(), path.to_owned());
                    move |s| Box::pin(s.rename(from, to))
                })
                .await
                .map_err(Failure::from)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn quit(mut self) {
        // Politeness only: the socket closes when the session drops anyway.
        let _ = self.run("sending QUIT", |s| Box::pin(s.quit())).await;
    }
}

/// Reads NLST lines into `names` (last path segments); false when the listing passed
/// [`MAX_LISTING_BYTES`] or [`MAX_LISTING_ENTRIES`] (reading stops there).
async fn read_listing<R>(reader: &mut R, names: &mut Vec<String>) -> std::io::Result<bool>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let (mut total, mut entries) = (0usize, 0usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        let room = (MAX_LISTING_BYTES - total) as u64 + 1;
        let n = (&mut *reader)
            .take(room)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(true);
        }
        total += n;
        entries += 1;
        if total > MAX_LISTING_BYTES || entries > MAX_LISTING_ENTRIES {
            return Ok(false);
        }
        if line.len() > MAX_LISTING_LINE {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        if let Some(name) = text.trim_end().rsplit('/').next()
            && !name.is_empty()
            && name != "."
            && name != ".."
        {
            names.push(name.to_string());
        }
    }
}

/// A failed FTP command: a reply (the session is still usable) or anything else.
#[derive(Debug)]
enum FtpFailure {
    Reply { code: u32, failure: Failure },
    Other(Failure),
}

impl FtpFailure {
    fn session_usable(&self) -> bool {
        // 421: the server is closing the connection.
        matches!(self, FtpFailure::Reply { code, .. } if *code != 421)
    }
}

impl From<FtpFailure> for Failure {
    fn from(f: FtpFailure) -> Failure {
        match f {
            FtpFailure::Reply { failure, .. } | FtpFailure::Other(failure) => failure,
        }
    }
}

/// Classifies a failed command: 4xx replies are transient, 5xx permanent, and anything but a
/// reply leaves the session unusable.
fn ftp_failure(target: &str, what: &str, path: &str, e: FtpError) -> FtpFailure {
    let detail = super::describe(&e);
    let message = format!("{what} {path} on {target}: {detail}");
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = reply_code(&r);
            let failure = match code {
                421 => Failure::retry("ServiceUnavailable", message),
                400..=499 => Failure::retry("FtpTransientReply", message),
                530 => Failure::permanent("NotLoggedIn", message),
                550 => Failure::permanent("FileUnavailable", message),
                552 => Failure::permanent("StorageExceeded", message),
                553 => Failure::permanent("FileNameNotAllowed", message),
                500..=599 => Failure::permanent("FtpPermanentReply", message),
                _ => return FtpFailure::Other(Failure::retry("ProtocolError", message)),
            };
            FtpFailure::Reply {
                code,
                failure: failure.with_reply(&detail),
            }
        }
        // The server named a data address the guard refuses: retrying cannot help.
        FtpError::ConnectionError(_) if super::data_target_refused(&e).is_some() => {
            FtpFailure::Other(Failure::permanent("TargetNotAllowed", message))
        }
        FtpError::ConnectionError(_) => {
            FtpFailure::Other(Failure::retry("ConnectionLost", message))
        }
        FtpError::SecureError(_) => FtpFailure::Other(Failure::retry("TlsFailed", message)),
        _ => FtpFailure::Other(Failure::retry("ProtocolError", message)),
    }
}

/// The reply code; suppaftp maps codes it has no name for to 0, so read those from the text.
fn reply_code(r: &suppaftp::types::Response) -> u32 {
    match r.status.code() {
        0 => r
            .body
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        code => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listings_are_capped_in_bytes_and_entries() {
        let mut names = Vec::new();
        let ok = b"/in/a.jpg\r\nb.jpg\n.\n..\n\n".to_vec();
        assert!(read_listing(&mut &ok[..], &mut names).await.unwrap());
        assert_eq!(names, ["a.jpg", "b.jpg"]);
        // One endless line: stops after the byte cap, does not buffer more.
        let huge = vec![b'x'; MAX_LISTING_BYTES + 10];
        let mut names = Vec::new();
        assert!(!read_listing(&mut &huge[..], &mut names).await.unwrap());
        assert!(names.is_empty());
        let many = "a\n".repeat(MAX_LISTING_ENTRIES + 1).into_bytes();
        let mut names = Vec::new();
        assert!(!read_listing(&mut &many[..], &mut names).await.unwrap());
        assert_eq!(names.len(), MAX_LISTING_ENTRIES);
    }

    #[test]
    fn reply_codes_without_a_name_are_read_from_the_text() {
        let r = suppaftp::types::Response::new(
            suppaftp::Status::Unknown,
            b"554 Requested action not taken\r\n".to_vec(),
        );
        assert_eq!(reply_code(&r), 554);
        let f = ftp_failure("h:21", "storing", "/a", FtpError::UnexpectedResponse(r));
        assert!(matches!(&f, FtpFailure::Reply { code: 554, failure } if !failure.retryable));
        let r = suppaftp::types::Response::new(
            suppaftp::Status::ActionAborted,
            b"451 Local error\r\n".to_vec(),
        );
        let f = ftp_failure("h:21", "storing", "/a", FtpError::UnexpectedResponse(r));
        assert!(matches!(&f, FtpFailure::Reply { code: 451, failure } if failure.retryable));
        let f = ftp_failure(
            "h:21",
            "storing",
            "/a",
            FtpError::ConnectionError(std::io::ErrorKind::BrokenPipe.into()),
        );
        assert!(!f.session_usable());
    }
}
