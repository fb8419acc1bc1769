//! Opening an FTP session: the address checks, TCP, greeting, TLS (explicit or implicit),
//! login, and the guarded connector for passive data connections.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use suppaftp::tokio::AsyncRustlsConnector;
use suppaftp::types::ActivePeerCheck;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpResult, Mode, Status};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::{DataTargetRefused, FtpStream, ProbeError, Session, describe, redact};
use crate::api::ftp::FtpProtocol;
use crate::delivery::files::net::{approve, connect_io_error, connect_tcp};
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;

/// What a session's passive data connector does with an address the guard approved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DataChannel {
    Connect,
    /// Probes: report the approval (as [`DataCheckOnly`]) and never connect.
    CheckOnly,
}

/// The "error" a check-only data connector returns for an approved address.
#[derive(Debug, thiserror::Error)]
#[error("data address approved; not connecting (probe)")]
struct DataCheckOnly;

pub(super) fn is_check_only(e: &FtpError) -> bool {
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

pub(super) async fn open(
    ep: &FtpEndpoint,
    guard: &TargetGuard,
    channel: DataChannel,
) -> Result<Session, ProbeError> {
    let deadline = Instant::now() + ep.connect_timeout;
    // Fail on a bad CA bundle before touching the network.
    let tls = match ep.protocol {
        FtpProtocol::Ftp => None,
        FtpProtocol::Ftps | FtpProtocol::FtpsImplicit => Some(tls_connector(ep, &ep.target())?),
        FtpProtocol::Sftp => {
            return Err(ProbeError::ProtocolError {
                target: ep.target(),
                during: "connecting",
                detail: "sftp is not an FTP protocol".to_string(),
            });
        }
    };
    let addrs = approve(ep, guard, deadline).await?;
    open_approved(ep, guard, channel, tls, &addrs, deadline).await
}

/// Connects to `addrs` (approved by `guard`; never resolved again), then greeting, TLS, login.
pub(super) async fn open_approved(
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
        usable: true,
    };
    session
        .run("setting binary mode (TYPE I)", |s| {
            Box::pin(s.transfer_type(FileType::Binary))
        })
        .await?;
    tracing::debug!(target = %session.target, user = %ep.username, "FTP session open");
    Ok(session)
}

pub(super) fn tls_connector(
    ep: &FtpEndpoint,
    target: &str,
) -> Result<AsyncRustlsConnector, ProbeError> {
    let fail = |detail: String| ProbeError::TlsFailed {
        target: target.to_string(),
        detail,
    };
    let roots = crate::delivery::http::root_store(ep.ca_pem.as_deref()).map_err(fail)?;
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

fn greeting_error(target: &str, e: &FtpError) -> ProbeError {
    ProbeError::ProtocolError {
        target: target.to_string(),
        during: "waiting for the server greeting",
        detail: describe(e),
    }
}

pub(super) fn login_error(ep: &FtpEndpoint, target: &str, e: &FtpError) -> ProbeError {
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
