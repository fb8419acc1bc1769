//! FTP sessions: connect, TLS, login; the commands uploads use are in [`commands`].
//!
//! Every connection a session opens goes to an address the [`TargetGuard`] approved: the
//! control connection to exactly the addresses the guard resolved (no second lookup a DNS
//! rebinding could answer differently), and each passive data connection to an address checked
//! again, as the server names it (PASV without `natWorkaround`).

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::BoxFuture;
use suppaftp::tokio::{AsyncRustlsStream, ImplAsyncFtpStream};
use suppaftp::{FtpError, FtpResult};
use tokio::time::{Instant, timeout_at};

pub use crate::endpoint::FtpEndpoint;
use crate::ssrf::{TargetError, TargetGuard};

pub mod commands;
mod open;

use open::{DataChannel, is_check_only, open};

/// Why connecting to (or talking to) an FTP server failed. Messages are meant for a user
/// reading `kubectl describe`; they never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot resolve FTP host '{host}': {detail}")]
    DnsFailed { host: String, detail: String },
    #[error("connection refused by {target}: no FTP server listens on that port")]
    ConnectionRefused { target: String },
    /// A TCP-level failure other than a refusal, e.g. an unreachable network.
    #[error("cannot connect to {target}: {detail}")]
    ConnectionFailed { target: String, detail: String },
    #[error("no answer from {target} within {after:?} while {during}")]
    Timeout {
        target: String,
        during: &'static str,
        after: Duration,
    },
    #[error("TLS with {target} failed: {detail}")]
    TlsFailed { target: String, detail: String },
    #[error("login refused for user '{user}' at {target}: {reply}")]
    LoginFailed {
        user: String,
        target: String,
        reply: String,
    },
    #[error("FTP error from {target} while {during}: {detail}")]
    ProtocolError {
        target: String,
        during: &'static str,
        detail: String,
    },
    /// The host resolves to an address the guard refuses.
    #[error("{0}")]
    TargetNotAllowed(TargetError),
    /// The server named a data-connection address the guard refuses.
    #[error("{0}")]
    DataTargetNotAllowed(#[from] DataTargetRefused),
}

/// A passive data connection the guard refused before connecting: the server's PASV reply
/// named an address the operator must not open connections to.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{target} asked for a data connection to {addr}, a {class} address; the operator refuses it \
     unless --allow-targets covers it (natWorkaround: true connects data connections to the \
     server's own address instead)"
)]
pub struct DataTargetRefused {
    pub target: String,
    pub addr: SocketAddr,
    pub class: &'static str,
}

/// The guard's refusal inside an error from a data command, if that is what failed.
pub fn data_target_refused(e: &FtpError) -> Option<&DataTargetRefused> {
    match e {
        FtpError::ConnectionError(io) => io.get_ref()?.downcast_ref(),
        _ => None,
    }
}

impl ProbeError {
    /// CamelCase reason for the `Connected` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            ProbeError::DnsFailed { .. } => "DnsFailed",
            ProbeError::ConnectionRefused { .. } => "ConnectionRefused",
            ProbeError::ConnectionFailed { .. } => "ConnectionFailed",
            ProbeError::Timeout { .. } => "Timeout",
            ProbeError::TlsFailed { .. } => "TlsFailed",
            ProbeError::LoginFailed { .. } => "LoginFailed",
            ProbeError::ProtocolError { .. } => "ProtocolError",
            ProbeError::TargetNotAllowed(e) => e.reason(),
            ProbeError::DataTargetNotAllowed(_) => "TargetNotAllowed",
        }
    }
}

/// The suppaftp stream behind a [`Session`]. One type for plain and TLS sessions: without
/// `into_secure` it simply never uses its TLS side.
pub type FtpStream = ImplAsyncFtpStream<AsyncRustlsStream>;

/// A logged-in FTP session in binary mode, with the endpoint's data-connection settings.
pub struct Session {
    stream: FtpStream,
    target: String,
    command_timeout: Duration,
    /// See [`Transport::usable`](crate::delivery::files::transport::Transport::usable).
    usable: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// `host:port` of the server.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The raw stream, for callers that bound their own timeouts.
    pub fn stream_mut(&mut self) -> &mut FtpStream {
        &mut self.stream
    }

    /// Runs one command (`what` names it in errors, e.g. "NOOP") bounded by the command
    /// timeout, mapping failures to [`ProbeError`].
    pub async fn run<T, F>(&mut self, what: &'static str, op: F) -> Result<T, ProbeError>
    where
        F: for<'a> FnOnce(&'a mut FtpStream) -> BoxFuture<'a, FtpResult<T>>,
    {
        let deadline = Instant::now() + self.command_timeout;
        match timeout_at(deadline, op(&mut self.stream)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(ProbeError::ProtocolError {
                target: self.target.clone(),
                during: what,
                detail: describe(&e),
            }),
            Err(_) => Err(ProbeError::Timeout {
                target: self.target.clone(),
                during: what,
                after: self.command_timeout,
            }),
        }
    }

    pub async fn noop(&mut self) -> Result<(), ProbeError> {
        self.run("sending NOOP", |s| Box::pin(s.noop())).await
    }

    /// Ends the session politely.
    pub async fn quit(mut self) -> Result<(), ProbeError> {
        self.run("sending QUIT", |s| Box::pin(s.quit())).await
    }
}

/// Connects, negotiates TLS as configured, logs in, checks the passive data address the
/// server announces (without connecting to it), and quits.
pub async fn probe(endpoint: &FtpEndpoint, guard: &TargetGuard) -> Result<(), ProbeError> {
    let mut session = open(endpoint, guard, DataChannel::CheckOnly).await?;
    session.noop().await?;
    if endpoint.passive && !endpoint.epsv && !endpoint.nat_workaround {
        // Only PASV without the NAT workaround lets the server choose the address.
        check_passive_address(&mut session).await?;
    }
    // The server has accepted login and a command; a QUIT that goes unanswered (some servers
    // just close) says nothing about whether uploads will work.
    if let Err(e) = session.quit().await {
        tracing::debug!(target = %endpoint.target(), error = %e, "QUIT after probe failed");
    }
    Ok(())
}

/// Asks for a passive data connection with a data connector that only checks the address:
/// suppaftp parses the reply and applies `natWorkaround` exactly as for an upload, and the
/// command that would use the connection is never sent.
async fn check_passive_address(session: &mut Session) -> Result<(), ProbeError> {
    const DURING: &str = "asking for a passive data address (PASV)";
    let after = session.command_timeout;
    let target = session.target.clone();
    let result = timeout_at(Instant::now() + after, session.stream.nlst(None)).await;
    match result {
        Err(_) => Err(ProbeError::Timeout {
            target,
            during: DURING,
            after,
        }),
        Ok(Err(e)) => match data_target_refused(&e) {
            Some(refused) => Err(refused.clone().into()),
            None if is_check_only(&e) => Ok(()),
            None => Err(ProbeError::ProtocolError {
                target,
                during: DURING,
                detail: describe(&e),
            }),
        },
        // The check-only connector never returns a connection.
        Ok(Ok(_)) => Ok(()),
    }
}

/// Opens a logged-in session in binary mode. `connect_timeout` bounds everything up to and
/// including login (DNS, TCP, greeting, TLS); later commands are bounded by `command_timeout`.
/// The control connection goes to the addresses `guard` approves, data connections only to
/// addresses it approves.
pub async fn connect(ep: &FtpEndpoint, guard: &TargetGuard) -> Result<Session, ProbeError> {
    open(ep, guard, DataChannel::Connect).await
}

/// One line for a user: the server's reply text, or what went wrong on the wire.
pub(crate) fn describe(e: &FtpError) -> String {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let text = String::from_utf8_lossy(&r.body);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            if text.is_empty() {
                format!("reply {}", r.status.code())
            } else {
                text
            }
        }
        FtpError::ConnectionError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection".to_string()
        }
        FtpError::ConnectionError(io) => io.to_string(),
        FtpError::SecureError(detail) => format!("TLS: {detail}"),
        FtpError::BadResponse => "malformed reply (is this an FTP server?)".to_string(),
        other => other.to_string(),
    }
}

/// Servers do not echo passwords, but a reply is foreign text: make sure ours never shows.
fn redact(text: &str, password: &str) -> String {
    if password.is_empty() {
        text.to_string()
    } else {
        text.replace(password, "***")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use suppaftp::Status;

    use super::open::{login_error, open_approved, tls_connector};
    use super::*;
    use crate::api::ftp::FtpProtocol;

    #[test]
    fn probe_future_is_send() {
        // The controller spawns probes onto the multi-threaded runtime.
        fn assert_send<T: Send>(_: &T) {}
        let ep = FtpEndpoint::example();
        let guard = TargetGuard::default();
        let fut = probe(&ep, &guard);
        assert_send(&fut);
    }

    /// A minimal FTP server on 127.0.0.1 that logs anyone in; counts its connections.
    async fn login_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let (read, mut write) = tcp.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 ready\r\n").await.unwrap();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let reply: &[u8] = match line.split(' ').next().unwrap_or_default() {
                            "USER" => b"331 password please\r\n",
                            "PASS" => b"230 logged in\r\n",
                            "QUIT" => b"221 bye\r\n",
                            _ => b"200 OK\r\n",
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (addr, hits)
    }

    /// DNS rebinding: the session goes to the addresses the guard approved, and the host name
    /// is not resolved again. `.invalid` never resolves, so any second lookup would fail.
    #[tokio::test]
    async fn connects_to_the_approved_addresses_without_resolving_again() {
        let (addr, hits) = login_server().await;
        let mut ep = FtpEndpoint::example();
        ep.host = "rebinding.invalid".into();
        ep.port = addr.port();
        let guard = TargetGuard::new(crate::ssrf::parse_allow_list("127.0.0.1/32").unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        let session = open_approved(&ep, &guard, DataChannel::Connect, None, &[addr], deadline)
            .await
            .unwrap();
        session.quit().await.unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        // `connect` resolves once, through the guard; for this name that lookup fails.
        let err = connect(&ep, &guard).await.unwrap_err();
        assert_eq!(err.reason(), "DnsFailed", "{err}");
    }

    /// An address the guard refuses is never connected to, for the probe as for uploads.
    #[tokio::test]
    async fn refused_host_is_never_contacted() {
        let (addr, hits) = login_server().await;
        let mut ep = FtpEndpoint::example();
        ep.host = "127.0.0.1".into();
        ep.port = addr.port();
        let guard = TargetGuard::default();
        let err = connect(&ep, &guard).await.unwrap_err();
        assert_eq!(err.reason(), "TargetNotAllowed", "{err}");
        assert!(err.to_string().contains("a loopback address"), "{err}");
        let err = probe(&ep, &guard).await.unwrap_err();
        assert_eq!(err.reason(), "TargetNotAllowed", "{err}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn login_reply_is_redacted() {
        let ep = FtpEndpoint::example();
        let reply = suppaftp::types::Response::new(
            Status::NotLoggedIn,
            b"530 bad password s3cret\r\n".to_vec(),
        );
        let err = login_error(
            &ep,
            "ftp.example.com:21",
            &FtpError::UnexpectedResponse(reply),
        );
        assert_eq!(err.reason(), "LoginFailed");
        let msg = err.to_string();
        assert_eq!(
            msg,
            "login refused for user 'bob' at ftp.example.com:21: 530 bad password ***"
        );
    }

    #[test]
    fn ipv6_target_is_bracketed() {
        let mut ep = FtpEndpoint::example();
        ep.host = "::1".into();
        assert_eq!(ep.target(), "[::1]:21");
    }

    #[test]
    fn empty_ca_bundle_is_a_tls_error() {
        let mut ep = FtpEndpoint::example();
        ep.protocol = FtpProtocol::Ftps;
        ep.ca_pem = Some(b"not a certificate".to_vec());
        let err = tls_connector(&ep, "ftp.example.com:21").err();
        assert!(
            matches!(&err, Some(ProbeError::TlsFailed { detail, .. }) if detail.contains("no PEM certificate")),
            "{err:?}"
        );
    }
}
