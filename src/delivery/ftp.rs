//! FTP sessions: connect, TLS, login (and, later, uploads).

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

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe not implemented")]
    NotImplemented,
}

impl ProbeError {
    /// CamelCase reason for the `Connected` condition.
    pub fn reason(&self) -> &'static str {
        "NotImplemented"
    }
}

/// Connects, negotiates TLS as configured, logs in, and quits.
pub async fn probe(_endpoint: &FtpEndpoint) -> Result<(), ProbeError> {
    Err(ProbeError::NotImplemented)
}
