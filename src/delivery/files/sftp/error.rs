//! SSH and SFTP failures, classified: what a retry on a new session can fix, and what not.

use std::time::Duration;

use russh_sftp::client::error::Error as RawError;
use russh_sftp::protocol::{Status, StatusCode};

/// Classified SFTP/SSH error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SftpError {
    /// The SSH transport could not be established (EOF/reset during the handshake, server
    /// dropped us because of MaxStartups, ...).
    #[error("SSH connect failed: {0}")]
    Connect(String),
    /// known_hosts has entries for this host but none with the presented key.
    #[error("host key mismatch for {host}: server presented {fingerprint}, not the pinned key")]
    HostKeyMismatch { host: String, fingerprint: String },
    /// known_hosts has no entry for this host (the fingerprint is what the server presented).
    #[error("host key unknown: no known_hosts entry for {host} (server presented {fingerprint})")]
    HostKeyUnknown { host: String, fingerprint: String },
    /// The presented key is listed on a `@revoked` line.
    #[error("host key revoked for {host}: {fingerprint}")]
    HostKeyRevoked { host: String, fingerprint: String },
    /// The server rejected the credentials.
    #[error("login failed: {0}")]
    LoginFailed(String),
    /// The private key could not be parsed or decrypted (bad PEM, missing/wrong passphrase).
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// SSH_FX_NO_SUCH_FILE.
    #[error("no such file: {0}")]
    NoSuchFile(String),
    /// SSH_FX_PERMISSION_DENIED.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Target exists (rename without overwrite, or a non-directory in a `mkdir_p` path).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// SSH_FX_OP_UNSUPPORTED.
    #[error("unsupported by server: {0}")]
    Unsupported(String),
    /// A directory listing past the caps (foreign input).
    #[error("{0}")]
    ListingTooLarge(String),
    /// SSH_FX_FAILURE (the catch-all: ENOSPC, EIO, EEXIST, ... are indistinguishable).
    #[error("SFTP failure: {0}")]
    Failure(String),
    /// Protocol violation / unexpected packet / no common algorithm / subsystem refused.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The SSH connection or SFTP channel went away.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No reply within `connect_timeout` / `command_timeout`.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl SftpError {
    /// Whether retrying (on a *new* session) may succeed. Network problems, timeouts and
    /// the generic SSH_FX_FAILURE are retryable; host-key, auth, key, permission,
    /// missing-file and protocol problems are permanent.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            SftpError::Connect(_)
                | SftpError::ConnectionLost(_)
                | SftpError::Timeout(_)
                | SftpError::Failure(_)
        )
    }
}

/// russh error before the session exists.
pub(super) fn classify_handshake(e: russh::Error) -> SftpError {
    use russh::Error as E;
    match e {
        E::IO(_) | E::HUP | E::Disconnect | E::SendError | E::RecvError | E::Join(_) => {
            SftpError::Connect(e.to_string())
        }
        E::Elapsed(_) | E::ConnectionTimeout | E::KeepaliveTimeout | E::InactivityTimeout => {
            SftpError::Timeout(format!("SSH handshake: {e}"))
        }
        other => SftpError::Protocol(format!("SSH handshake: {other}")),
    }
}

/// russh error on an established session.
pub(super) fn classify_ssh(context: &str, e: russh::Error, transport_closed: bool) -> SftpError {
    use russh::Error as E;
    match e {
        _ if transport_closed => SftpError::ConnectionLost(format!("{context}: {e}")),
        E::IO(_) | E::HUP | E::Disconnect | E::SendError | E::RecvError | E::Join(_) => {
            SftpError::ConnectionLost(format!("{context}: {e}"))
        }
        E::Elapsed(_) | E::ConnectionTimeout | E::KeepaliveTimeout | E::InactivityTimeout => {
            SftpError::Timeout(format!("{context}: {e}"))
        }
        // e.g. MaxSessions reached ("administratively prohibited"): may clear up.
        E::ChannelOpenFailure(reason) => {
            SftpError::Failure(format!("{context}: channel open refused ({reason:?})"))
        }
        other => SftpError::Protocol(format!("{context}: {other}")),
    }
}

pub(super) fn map_status(op: &str, path: &str, status: &Status) -> SftpError {
    let msg = format!("{op} {path}: {}", status.error_message);
    match status.status_code {
        StatusCode::NoSuchFile => SftpError::NoSuchFile(msg),
        StatusCode::PermissionDenied => SftpError::PermissionDenied(msg),
        StatusCode::OpUnsupported => SftpError::Unsupported(msg),
        StatusCode::NoConnection | StatusCode::ConnectionLost => SftpError::ConnectionLost(msg),
        StatusCode::BadMessage => SftpError::Protocol(msg),
        StatusCode::Failure | StatusCode::Eof | StatusCode::Ok => SftpError::Failure(msg),
    }
}

/// russh-sftp reports a dead transport only as free-form strings.
pub(super) fn is_transport_gone(msg: &str) -> bool {
    ["sender dropped", "session closed", "SendError", "RecvError"]
        .iter()
        .any(|m| msg.contains(m))
}

pub(super) fn map_raw_error(op: &str, path: &str, e: RawError) -> SftpError {
    match e {
        RawError::Status(status) => map_status(op, path, &status),
        RawError::Timeout => SftpError::Timeout(format!("{op} {path}: no reply (russh-sftp)")),
        RawError::IO(m) => SftpError::ConnectionLost(format!("{op} {path}: {m}")),
        RawError::Limited(m) => SftpError::Failure(format!("{op} {path}: {m}")),
        RawError::UnexpectedPacket => {
            SftpError::Protocol(format!("{op} {path}: unexpected reply packet"))
        }
        RawError::UnexpectedBehavior(m) if is_transport_gone(&m) => {
            SftpError::ConnectionLost(format!("{op} {path}: {m}"))
        }
        RawError::UnexpectedBehavior(m) => SftpError::Protocol(format!("{op} {path}: {m}")),
    }
}

pub(super) fn timeout_error(op: &str, path: &str, limit: Duration) -> SftpError {
    SftpError::Timeout(format!("{op} {path}: no reply within {limit:?}"))
}
