//! Where and how to reach a client's file server, resolved from an FtpConnection and its
//! Secret: what routing keeps per target and what the file transports connect with.

use std::time::Duration;

use crate::api::ftp::FtpProtocol;

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

#[cfg(test)]
impl FtpEndpoint {
    /// An endpoint for unit tests that never connect: `bob`/`s3cret` at ftp.example.com:21.
    pub(crate) fn example() -> Self {
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
}
