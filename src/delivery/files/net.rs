//! Connections to a file server: only to the addresses the guard approved when it resolved
//! the host (no second lookup a DNS rebinding could answer differently).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use super::ftp::ProbeError;
use crate::endpoint::FtpEndpoint;
use crate::ssrf::{TargetError, TargetGuard};

/// Resolves and checks the host; the addresses returned are the only ones to connect to.
pub(crate) async fn approve(
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

/// Tries each address in turn, as `TcpStream::connect` does, but within our deadline.
pub(crate) async fn connect_tcp(
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

pub(crate) fn connect_io_error(target: &str, e: &std::io::Error, budget: Duration) -> ProbeError {
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
