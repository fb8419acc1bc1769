//! FTP sessions: connect, TLS, login (and, later, uploads).
//!
//! Every connection a session opens goes to an address the [`TargetGuard`] approved: the
//! control connection to exactly the addresses the guard resolved (no second lookup a DNS
//! rebinding could answer differently), and each passive data connection to an address checked
//! again, as the server names it (PASV without `natWorkaround`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsStream, ImplAsyncFtpStream};
use suppaftp::types::ActivePeerCheck;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpResult, Mode, Status};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::api::ftp::FtpProtocol;
use crate::ssrf::{TargetError, TargetGuard};

/// Everything needed to open a session to one FtpConnection's server.
#[derive(Clone)]
pub struct FtpEndpoint {
    pub host: String,
    pub port: u16,
    pub protocol: FtpProtocol,
    pub username: String,
    pub password: String,
    /// PEM CA bundle for FTPS; system roots when `None`.
    pub ca_pem: Option<Vec<u8>>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub passive: bool,
    pub epsv: bool,
    pub nat_workaround: bool,
}

impl std::fmt::Debug for FtpEndpoint {
    // Never print the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FtpEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl FtpEndpoint {
    /// `host:port`, bracketing IPv6 literals, as shown in messages.
    pub fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

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

/// What a session's passive data connector does with an address the guard approved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataChannel {
    Connect,
    /// Probes: report the approval (as [`DataCheckOnly`]) and never connect.
    CheckOnly,
}

/// The "error" a check-only data connector returns for an approved address.
#[derive(Debug, thiserror::Error)]
#[error("data address approved; not connecting (probe)")]
struct DataCheckOnly;

fn is_check_only(e: &FtpError) -> bool {
    matches!(e, FtpError::ConnectionError(io)
        if io.get_ref().is_some_and(|inner| inner.is::<DataCheckOnly>()))
}

type DataStreamFuture = Pin<Box<dyn Future<Output = FtpResult<TcpStream>> + Send + Sync>>;

/// suppaftp's passive stream builder, guarded: it receives the address suppaftp derived from
/// the PASV/EPSV reply (after `natWorkaround`) and refuses it before any packet is sent unless
/// the guard approves it, as it approved the control connection's.
fn data_connector(
    guard: TargetGuard,
    target: String,
    channel: DataChannel,
) -> impl Fn(SocketAddr) -> DataStreamFuture + Send + Sync + 'static {
    move |addr| {
        let checked = match guard.refused_class(addr.ip()) {
            None => Ok(()),
            Some(class) => Err(DataTargetRefused {
                target: target.clone(),
                addr,
                class,
            }),
        };
        Box::pin(async move {
            if let Err(refused) = checked {
                tracing::warn!(server = %refused.target, data_addr = %addr, "refused an FTP data connection to a non-public address");
                return Err(FtpError::ConnectionError(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    refused,
                )));
            }
            if channel == DataChannel::CheckOnly {
                return Err(FtpError::ConnectionError(io::Error::other(DataCheckOnly)));
            }
            TcpStream::connect(addr)
                .await
                .map_err(FtpError::ConnectionError)
        })
    }
}

async fn open(
    ep: &FtpEndpoint,
    guard: &TargetGuard,
    channel: DataChannel,
) -> Result<Session, ProbeError> {
    let deadline = Instant::now() + ep.connect_timeout;
    // Fail on a bad CA bundle before touching the network.
    let tls = match ep.protocol {
        FtpProtocol::Ftp => None,
        FtpProtocol::Ftps | FtpProtocol::FtpsImplicit => Some(tls_connector(ep, &ep.target())?),
    };
    let addrs = approve(ep, guard, deadline).await?;
    open_approved(ep, guard, channel, tls, &addrs, deadline).await
}

/// Resolves and checks the host; the addresses returned are the only ones to connect to.
async fn approve(
    ep: &FtpEndpoint,
    guard: &TargetGuard,
    deadline: Instant,
) -> Result<Vec<SocketAddr>, ProbeError> {
    let fail = |detail: String| ProbeError::DnsFailed {
        host: ep.host.clone(),
        detail,
    };
    match timeout_at(
        deadline,
        guard.check_host(&ep.host, ep.port, ep.connect_timeout),
    )
    .await
    {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(TargetError::Unresolvable { message, .. })) => Err(fail(message)),
        Ok(Err(e)) => Err(ProbeError::TargetNotAllowed(e)),
        Err(_) => Err(fail(format!("no answer within {:?}", ep.connect_timeout))),
    }
}

/// Connects to `addrs` (approved by `guard`; never resolved again), then greeting, TLS, login.
async fn open_approved(
    ep: &FtpEndpoint,
    guard: &TargetGuard,
    channel: DataChannel,
    tls: Option<AsyncRustlsConnector>,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> Result<Session, ProbeError> {
    let target = ep.target();
    let timeout = |during| ProbeError::Timeout {
        target: target.clone(),
        during,
        after: ep.connect_timeout,
    };

    let mut stream = match (ep.protocol, tls) {
        (FtpProtocol::FtpsImplicit, Some(tls)) => {
            let mut stream = implicit_tls(ep, &target, addrs, tls, deadline).await?;
            // suppaftp's implicit connect leaves the data channel at PROT C (clear), which
            // servers that force TLS on data refuse (vsftpd: "522 Data connections must be
            // encrypted") while suppaftp would speak TLS on it anyway. Ask for PROT P, as
            // `into_secure` does for explicit FTPS.
            for command in ["PBSZ 0", "PROT P"] {
                timeout_at(
                    deadline,
                    stream.custom_command(command, &[Status::CommandOk]),
                )
                .await
                .map_err(|_| timeout("negotiating TLS for data connections"))?
                .map_err(|e| ProbeError::TlsFailed {
                    target: target.clone(),
                    detail: format!("{command}: {}", describe(&e)),
                })?;
            }
            stream
        }
        (_, tls) => {
            let tcp = connect_tcp(&target, addrs, deadline, ep.connect_timeout).await?;
            let plain = timeout_at(deadline, FtpStream::connect_with_stream(tcp))
                .await
                .map_err(|_| timeout("waiting for the server greeting"))?
                .map_err(|e| greeting_error(&target, &e))?;
            // `tls` is set exactly for the TLS protocols; here that is explicit FTPS.
            match tls {
                Some(tls) => timeout_at(deadline, plain.into_secure(tls, &ep.host))
                    .await
                    .map_err(|_| timeout("negotiating TLS (AUTH TLS)"))?
                    .map_err(|e| ProbeError::TlsFailed {
                        target: target.clone(),
                        detail: tls_detail(&e),
                    })?,
                None => plain,
            }
        }
    };

    timeout_at(
        deadline,
        stream.login(ep.username.as_str(), ep.password.as_str()),
    )
    .await
    .map_err(|_| timeout("logging in"))?
    .map_err(|e| login_error(ep, &target, &e))?;

    if !ep.passive {
        // The server connects back to us; wait for it as long as for any command.
        stream = stream.active_mode(ep.command_timeout);
    } else if ep.epsv {
        stream.set_mode(Mode::ExtendedPassive);
    } else {
        stream.set_mode(Mode::Passive);
    }
    stream.set_passive_nat_workaround(ep.nat_workaround);
    stream = stream.passive_stream_builder(data_connector(guard.clone(), target.clone(), channel));
    // Active mode opens nothing: the server connects to us, and only it may.
    stream.set_active_peer_check(ActivePeerCheck::ControlPeer);

    let mut session = Session {
        stream,
        target,
        command_timeout: ep.command_timeout,
    };
    session
        .run("setting binary mode (TYPE I)", |s| {
            Box::pin(s.transfer_type(FileType::Binary))
        })
        .await?;
    tracing::debug!(target = %session.target, user = %ep.username, "FTP session open");
    Ok(session)
}

fn tls_connector(ep: &FtpEndpoint, target: &str) -> Result<AsyncRustlsConnector, ProbeError> {
    let fail = |detail: String| ProbeError::TlsFailed {
        target: target.to_string(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    match &ep.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| fail(format!("CA bundle is not valid PEM: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| fail(format!("CA bundle holds an unusable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(fail("CA bundle holds no PEM certificate".to_string()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    // An explicit provider: the process may hold more than one rustls backend, and a global
    // default installed elsewhere must not decide which one FTPS uses.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(format!("TLS setup: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(AsyncRustlsConnector::from(
        suppaftp::tokio_rustls::TlsConnector::from(Arc::new(config)),
    ))
}

/// Tries each address in turn, as `TcpStream::connect` does, but within our deadline.
async fn connect_tcp(
    target: &str,
    addrs: &[SocketAddr],
    deadline: Instant,
    budget: Duration,
) -> Result<TcpStream, ProbeError> {
    let mut last = None;
    for addr in addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => return Ok(tcp),
            Ok(Err(e)) => last = Some(e),
            Err(_) => break,
        }
    }
    Err(match last {
        Some(e) => connect_io_error(target, &e, budget),
        None => ProbeError::Timeout {
            target: target.to_string(),
            during: "connecting",
            after: budget,
        },
    })
}

/// Implicit FTPS: suppaftp opens the socket itself, so the address loop lives here.
async fn implicit_tls(
    ep: &FtpEndpoint,
    target: &str,
    addrs: &[SocketAddr],
    tls: AsyncRustlsConnector,
    deadline: Instant,
) -> Result<FtpStream, ProbeError> {
    // suppaftp consumes the connector, so each further address needs a fresh one; the config
    // is cheap to rebuild.
    let mut tls = Some(tls);
    let mut last = None;
    for addr in addrs {
        let connector = match tls.take() {
            Some(c) => c,
            None => tls_connector(ep, target)?,
        };
        match timeout_at(
            deadline,
            FtpStream::connect_secure_implicit(*addr, connector, &ep.host),
        )
        .await
        {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(FtpError::ConnectionError(e))) if is_connect_error(&e) => last = Some(e),
            Ok(Err(e @ FtpError::SecureError(_))) => {
                return Err(ProbeError::TlsFailed {
                    target: target.to_string(),
                    detail: tls_detail(&e),
                });
            }
            Ok(Err(e)) => return Err(greeting_error(target, &e)),
            Err(_) => {
                return Err(ProbeError::Timeout {
                    target: target.to_string(),
                    during: "connecting with implicit TLS",
                    after: ep.connect_timeout,
                });
            }
        }
    }
    Err(match last {
        Some(e) => connect_io_error(target, &e, ep.connect_timeout),
        None => ProbeError::Timeout {
            target: target.to_string(),
            during: "connecting with implicit TLS",
            after: ep.connect_timeout,
        },
    })
}

/// Errors that mean "this address did not take the TCP connection", worth trying the next.
fn is_connect_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable | TimedOut
    )
}

fn connect_io_error(target: &str, e: &std::io::Error, budget: Duration) -> ProbeError {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => ProbeError::ConnectionRefused {
            target: target.to_string(),
        },
        std::io::ErrorKind::TimedOut => ProbeError::Timeout {
            target: target.to_string(),
            during: "connecting",
            after: budget,
        },
        _ => ProbeError::ConnectionFailed {
            target: target.to_string(),
            detail: e.to_string(),
        },
    }
}

fn greeting_error(target: &str, e: &FtpError) -> ProbeError {
    ProbeError::ProtocolError {
        target: target.to_string(),
        during: "waiting for the server greeting",
        detail: describe(e),
    }
}

fn login_error(ep: &FtpEndpoint, target: &str, e: &FtpError) -> ProbeError {
    match e {
        // 530 is the standard "bad credentials"; 430 is the RFC 7151 variant some servers use.
        FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 530 | 430) => {
            ProbeError::LoginFailed {
                user: ep.username.clone(),
                target: target.to_string(),
                reply: redact(&describe(e), &ep.password),
            }
        }
        _ => ProbeError::ProtocolError {
            target: target.to_string(),
            during: "logging in",
            detail: redact(&describe(e), &ep.password),
        },
    }
}

fn tls_detail(e: &FtpError) -> String {
    let detail = match e {
        FtpError::SecureError(detail) => detail.clone(),
        FtpError::UnexpectedResponse(_) => {
            return format!("server refused TLS: {}", describe(e));
        }
        _ => describe(e),
    };
    // suppaftp wraps its connector's error once more ("Secure error: Secure error: ...").
    let mut detail = detail.as_str();
    while let Some(rest) = detail.strip_prefix("Secure error: ") {
        detail = rest;
    }
    let hint = if detail.contains("UnknownIssuer") {
        " (the server certificate is not signed by a trusted CA; put its CA in caSecretRef)"
    } else if detail.contains("NotValidForName") {
        " (the server certificate does not name this host)"
    } else if detail.contains("corrupt message") {
        " (the server did not answer in TLS; check protocol ftps vs ftps-implicit and the port)"
    } else {
        ""
    };
    format!("{detail}{hint}")
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
    use super::*;

    fn endpoint() -> FtpEndpoint {
        FtpEndpoint {
            host: "ftp.example.com".into(),
            port: 21,
            protocol: FtpProtocol::Ftp,
            username: "bob".into(),
            password: "s3cret".into(),
            ca_pem: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            passive: true,
            epsv: false,
            nat_workaround: true,
        }
    }

    #[test]
    fn probe_future_is_send() {
        // The controller spawns probes onto the multi-threaded runtime.
        fn assert_send<T: Send>(_: &T) {}
        let ep = endpoint();
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
        let mut ep = endpoint();
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
        let mut ep = endpoint();
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
        let ep = endpoint();
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
        let mut ep = endpoint();
        ep.host = "::1".into();
        assert_eq!(ep.target(), "[::1]:21");
    }

    #[test]
    fn empty_ca_bundle_is_a_tls_error() {
        let mut ep = endpoint();
        ep.protocol = FtpProtocol::Ftps;
        ep.ca_pem = Some(b"not a certificate".to_vec());
        let err = tls_connector(&ep, "ftp.example.com:21").err();
        assert!(
            matches!(&err, Some(ProbeError::TlsFailed { detail, .. }) if detail.contains("no PEM certificate")),
            "{err:?}"
        );
    }
}
