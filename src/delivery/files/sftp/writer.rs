//! A remote file open for writing, with pipelined SSH_FXP_WRITEs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as RawError;
use russh_sftp::protocol::Status;

use super::error::{SftpError, map_raw_error, timeout_error};

type WriteAck = Pin<Box<dyn Future<Output = Result<Status, RawError>> + Send>>;

/// A remote file opened for writing, with pipelined SSH_FXP_WRITEs.
///
/// Dropping it without [`SftpWriter::close`] closes the remote handle in the background and
/// discards any error; always call `close` to learn whether the upload succeeded.
pub struct SftpWriter {
    pub(super) sftp: Arc<RawSftpSession>,
    pub(super) handle: String,
    pub(super) path: String,
    pub(super) offset: u64,
    pub(super) in_flight: VecDeque<WriteAck>,
    pub(super) write_len: usize,
    pub(super) max_in_flight: usize,
    pub(super) command_timeout: Duration,
    pub(super) failed: Option<SftpError>,
    pub(super) closed: bool,
}

impl SftpWriter {
    /// Queues `data` (split into SSH_FXP_WRITEs of at most `write_len`). Returns once the
    /// requests are sent; waits only while `max_in_flight_writes` acks are outstanding. An
    /// error from any earlier write is reported here or at `close`.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), SftpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        for piece in data.chunks(self.write_len) {
            while self.in_flight.len() >= self.max_in_flight {
                self.wait_oldest().await?;
            }
            let sftp = self.sftp.clone();
            let handle = self.handle.clone();
            let offset = self.offset;
            let buf = piece.to_vec();
            let mut ack: WriteAck = Box::pin(async move { sftp.write(handle, offset, buf).await });
            // The first poll serialises and queues the request (it then waits for the reply),
            // so requests leave in offset order right now instead of on a later poll.
            let first = std::future::poll_fn(|cx| Poll::Ready(ack.as_mut().poll(cx))).await;
            self.offset += piece.len() as u64;
            match first {
                Poll::Pending => self.in_flight.push_back(ack),
                Poll::Ready(result) => self.check(result)?,
            }
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<(), SftpError> {
        let Some(ack) = self.in_flight.front_mut() else {
            return Ok(());
        };
        let result = tokio::time::timeout(self.command_timeout, ack).await;
        self.in_flight.pop_front();
        match result {
            Ok(result) => self.check(result),
            Err(_) => {
                let e = timeout_error("write", &self.path, self.command_timeout);
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn check(&mut self, result: Result<Status, RawError>) -> Result<(), SftpError> {
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = map_raw_error("write", &self.path, e);
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Waits for every outstanding write, then closes the handle. Returns the file size.
    /// If a write already failed, returns that error without waiting for the other acks
    /// (after a timeout or lost connection it does not even try to close the handle: the
    /// session is unusable and must be dropped).
    pub async fn close(mut self) -> Result<u64, SftpError> {
        let mut first_error = self.failed.clone();
        if first_error.is_none() {
            while !self.in_flight.is_empty() {
                if let Err(e) = self.wait_oldest().await {
                    first_error = Some(e);
                    break;
                }
            }
        }
        // Outstanding requests are abandoned; their late replies are ignored by russh-sftp.
        self.in_flight.clear();
        self.closed = true;
        if let Some(e) = &first_error
            && matches!(e, SftpError::Timeout(_) | SftpError::ConnectionLost(_))
        {
            return Err(e.clone());
        }
        let handle = std::mem::take(&mut self.handle);
        let closed = match tokio::time::timeout(self.command_timeout, self.sftp.close(handle)).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(map_raw_error("close", &self.path, e)),
            Err(_) => Err(timeout_error("close", &self.path, self.command_timeout)),
        };
        match first_error {
            Some(e) => Err(e),
            None => closed.map(|()| self.offset),
        }
    }
}

impl Drop for SftpWriter {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // Release the server-side handle so a pooled session does not leak handles.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let sftp = self.sftp.clone();
            let handle = std::mem::take(&mut self.handle);
            rt.spawn(async move {
                let _ = sftp.close(handle).await;
            });
        }
    }
}
