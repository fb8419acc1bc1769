//! Where and how to reach a client's system, resolved from a resource and its Secrets: what
//! routing keeps per target and what the transports (file servers, APIs) connect with.

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
    /// For `sftp`: the pinned host keys and key authentication.
    pub ssh: SshAuth,
}

/// How an SFTP session trusts the server and proves who it is.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SshAuth {
    /// OpenSSH `known_hosts` text with the server's keys; `None` only when the user opted
    /// out of host-key checking.
    pub known_hosts: Option<String>,
    /// OpenSSH or PEM private key; password authentication when `None`.
    pub private_key: Option<String>,
    /// Passphrase of an encrypted `private_key`.
    pub passphrase: Option<String>,
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
    /// A digest of every setting and credential: sessions and login probes are shared only
    /// between endpoints with the same one, so none outlives a rotated password or key.
    /// (A digest, not the fields: it is kept long and must hold no secret.)
    pub fn fingerprint(&self) -> [u8; 32] {
        let port = self.port.to_be_bytes();
        let flags = [
            self.protocol as u8,
            u8::from(self.passive),
            u8::from(self.epsv),
            u8::from(self.nat_workaround),
            u8::from(self.ssh.known_hosts.is_some()),
        ];
        let connect = self.connect_timeout.as_millis().to_be_bytes();
        let command = self.command_timeout.as_millis().to_be_bytes();
        let text = |o: &Option<String>| o.as_deref().unwrap_or_default().as_bytes().to_vec();
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            self.host.as_bytes(),
            &port,
            self.username.as_bytes(),
            self.password.as_bytes(),
            self.ca_pem.as_deref().unwrap_or_default(),
            &flags,
            &connect,
            &command,
            &text(&self.ssh.known_hosts),
            &text(&self.ssh.private_key),
            &text(&self.ssh.passphrase),
        ] {
            d.update(&(part.len() as u64).to_be_bytes());
            d.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }

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
            ssh: SshAuth::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_change_with_every_credential() {
        let base = FtpEndpoint::example();
        let mut seen = vec![base.fingerprint()];
        let variants: [fn(&mut FtpEndpoint); 8] = [
            |e| e.password = "other".into(),
            |e| e.username = "other".into(),
            |e| e.port = 2121,
            |e| e.protocol = FtpProtocol::Sftp,
            |e| e.ca_pem = Some(b"pem".to_vec()),
            |e| e.ssh.known_hosts = Some("h ssh-ed25519 AAAA".into()),
            |e| e.ssh.private_key = Some("key".into()),
            |e| e.ssh.passphrase = Some("pass".into()),
        ];
        for change in variants {
            let mut e = FtpEndpoint::example();
            change(&mut e);
            let f = e.fingerprint();
            assert!(!seen.contains(&f));
            seen.push(f);
        }
        assert_eq!(FtpEndpoint::example().fingerprint(), base.fingerprint());
    }
}

/// Everything needed to call one ApiConnection's API, resolved from its spec and Secrets.
#[derive(Clone)]
pub struct ApiEndpoint {
    /// `baseUrl`, with a trailing `/` removed: request paths start with `/`.
    pub base_url: url::Url,
    pub auth: ApiCredentials,
    pub tls: TlsMaterial,
    /// `tls.fingerprint()`, computed once: requests find their HTTP client by it.
    pub tls_id: [u8; 32],
    pub idempotency_header: http::HeaderName,
    pub timeout: Duration,
}

/// Credentials of an API, from the Secrets `spec.auth` names.
#[derive(Clone, PartialEq, Eq)]
pub enum ApiCredentials {
    None,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
    /// A key sent as `header: prefix + key`.
    Header {
        name: http::HeaderName,
        prefix: String,
        key: String,
    },
    OAuth2(OAuth2Client),
}

/// An OAuth2 client-credentials client.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OAuth2Client {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    /// Credentials as HTTP Basic (`true`) or as form fields.
    pub basic: bool,
}

/// PEM material for TLS to a client's system (an API, a webhook receiver): CA bundle (trusted
/// instead of the system roots; those when `None`) and client identity.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key, both PEM.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsMaterial {
    /// Identifies the material without holding it, to share one HTTP client per material.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.ca_pem.as_deref(),
            self.client_cert.as_ref().map(|c| c.0.as_slice()),
            self.client_cert.as_ref().map(|c| c.1.as_slice()),
        ] {
            match part {
                Some(p) => {
                    h.update([1]);
                    h.update((p.len() as u64).to_le_bytes());
                    h.update(p);
                }
                None => h.update([0]),
            }
        }
        h.finalize().into()
    }
}

impl std::fmt::Debug for ApiEndpoint {
    // Never print credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            ApiCredentials::None => "none",
            ApiCredentials::Basic { .. } => "basic",
            ApiCredentials::Bearer(_) => "bearer",
            ApiCredentials::Header { .. } => "header",
            ApiCredentials::OAuth2(_) => "oauth2",
        };
        f.debug_struct("ApiEndpoint")
            .field("base_url", &self.base_url.as_str())
            .field("auth", &auth)
            .field("ca", &self.tls.ca_pem.is_some())
            .field("client_cert", &self.tls.client_cert.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}
