//! Opening an SFTP session over a TCP stream the caller connected: SSH handshake with the
//! host key checked against the pinned `known_hosts`, authentication, the `sftp` subsystem.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client::{self, AuthResult, Handle};
use russh::keys::ssh_key::Algorithm;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate, decode_secret_key};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::rawsession::Limits;
use tokio::net::TcpStream;

use super::error::{SftpError, classify_handshake, classify_ssh, map_raw_error};
use super::known_hosts::{HostKeyVerdict, KnownHostsDb};
use super::session::SftpSession;

/// AES-GCM first: ring runs it on the CPU's AES instructions, several times faster than
/// russh's ChaCha20-Poly1305 (its default first choice) for file transfers; every cipher
/// here is an AEAD or CTR mode OpenSSH offers by default.
pub const PREFERRED_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];
const POSIX_RENAME: &str = "posix-rename@openssh.com";
const LIMITS: &str = "limits@openssh.com";
/// Largest write every SFTP v3 server must accept (draft-02 says packets of at least
/// 34000 bytes); used when the server does not advertise `limits@openssh.com`.
const SAFE_WRITE_LEN: usize = 32 * 1024;
/// Room for the SSH_FXP_WRITE header (length, type, id, handle, offset, data length).
const WRITE_HEADER_SLACK: u64 = 1024;

/// Credentials.
#[derive(Clone)]
pub(super) enum Auth {
    Password(String),
    /// OpenSSH (`BEGIN OPENSSH PRIVATE KEY`), PKCS#1 RSA, PKCS#8 (optionally encrypted)
    /// or PuTTY PPK text.
    PrivateKey {
        pem: String,
        passphrase: Option<String>,
    },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Password(_) => f.write_str("Password(<redacted>)"),
            Auth::PrivateKey { passphrase, .. } => write!(
                f,
                "PrivateKey(<redacted>, passphrase: {})",
                if passphrase.is_some() {
                    "<redacted>"
                } else {
                    "none"
                }
            ),
        }
    }
}

/// Connection parameters. `host`/`port` are what the user wrote (used for known_hosts
/// lookup only; the TCP connection is made by the caller).
#[derive(Debug, Clone)]
pub(super) struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub username: String,
    pub auth: Auth,
    /// OpenSSH known_hosts file *contents*.
    pub known_hosts: String,
    /// Accept any host key (explicit opt-out of pinning).
    pub insecure_ignore_host_key: bool,
    /// Bound for SSH handshake + authentication + SFTP init.
    pub connect_timeout: Duration,
    /// Bound for every later operation (each write-ack wait, each request).
    pub command_timeout: Duration,
    /// SSH keepalive for pooled idle sessions (`None` disables); 3 unanswered → closed.
    pub keepalive_interval: Option<Duration>,
    /// Max payload bytes per SSH_FXP_WRITE (clamped to the server's `limits@openssh.com`
    /// max-write-length, or to 32 KiB when the server does not advertise limits).
    pub write_chunk_len: usize,
    /// Max outstanding SSH_FXP_WRITE requests per open file (1 = stop-and-wait).
    pub max_in_flight_writes: usize,
    /// Use `posix-rename@openssh.com` for overwriting renames when the server offers it.
    /// `false` forces the remove-then-rename fallback.
    pub use_posix_rename: bool,
}

impl ConnectOptions {
    pub fn new(
        host: impl Into<String>,
        port: u16,
        username: impl Into<String>,
        auth: Auth,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            username: username.into(),
            auth,
            known_hosts: String::new(),
            insecure_ignore_host_key: false,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            keepalive_interval: Some(Duration::from_secs(30)),
            write_chunk_len: 64 * 1024,
            max_in_flight_writes: 32,
            use_posix_rename: true,
        }
    }
}

/// Connects an SFTP session over an already connected TCP stream.
pub(super) async fn connect(
    stream: TcpStream,
    opts: &ConnectOptions,
) -> Result<SftpSession, SftpError> {
    // Best effort: small SFTP requests (stat, rename) should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    match tokio::time::timeout(opts.connect_timeout, connect_inner(stream, opts)).await {
        Ok(result) => result,
        Err(_) => Err(SftpError::Timeout(format!(
            "SSH handshake/login/SFTP init with {}:{} not done within {:?}",
            opts.host, opts.port, opts.connect_timeout
        ))),
    }
}

async fn connect_inner(stream: TcpStream, opts: &ConnectOptions) -> Result<SftpSession, SftpError> {
    let known_hosts = if opts.insecure_ignore_host_key {
        None
    } else {
        Some(KnownHostsDb::parse(&opts.known_hosts))
    };

    let mut config = client::Config {
        keepalive_interval: opts.keepalive_interval,
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    };
    config.preferred.cipher = Cow::Borrowed(PREFERRED_CIPHERS);
    if let Some(db) = &known_hosts {
        let pinned = db.key_algorithms_for(&opts.host, opts.port);
        if !pinned.is_empty() {
            config.preferred.key =
                Cow::Owned(pinned_algorithms_first(&config.preferred.key, &pinned));
        }
    }

    let handler = ClientHandler {
        host: opts.host.clone(),
        port: opts.port,
        known_hosts,
    };
    let mut ssh = client::connect_stream(Arc::new(config), stream, handler)
        .await
        .map_err(|e| match e {
            HandshakeError::HostKey(e) => e,
            HandshakeError::Ssh(e) => classify_handshake(e),
        })?;

    authenticate(&mut ssh, opts).await?;

    let mut channel = ssh
        .channel_open_session()
        .await
        .map_err(|e| classify_ssh("open session channel", e, ssh.is_closed()))?;
    channel
        .request_subsystem(true, "sftp")
        .await
        .map_err(|e| classify_ssh("request sftp subsystem", e, ssh.is_closed()))?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) => {
                return Err(SftpError::Protocol(
                    "server refused the sftp subsystem".to_owned(),
                ));
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                return Err(SftpError::ConnectionLost(
                    "channel closed before the sftp subsystem started".to_owned(),
                ));
            }
            Some(_) => {}
        }
    }

    let raw_config = russh_sftp::client::Config {
        // Our own tokio timeout (command_timeout) fires first; this is only a backstop.
        request_timeout_secs: opts.command_timeout.as_secs().saturating_add(5),
        ..Default::default()
    };
    let mut raw = RawSftpSession::new_with_config(channel.into_stream(), raw_config);
    let version = raw
        .init()
        .await
        .map_err(|e| map_raw_error("sftp init", "", e))?;
    let posix_rename = opts.use_posix_rename && version.extensions.contains_key(POSIX_RENAME);
    let mut write_len = opts.write_chunk_len.max(1);
    if version.extensions.get(LIMITS).is_some_and(|v| v == "1") {
        let limits = raw
            .limits()
            .await
            .map_err(|e| map_raw_error("limits@openssh.com", "", e))?;
        if limits.max_write_len > 0 {
            write_len = write_len.min(usize::try_from(limits.max_write_len).unwrap_or(usize::MAX));
        }
        if limits.max_packet_len > WRITE_HEADER_SLACK {
            let max = limits.max_packet_len - WRITE_HEADER_SLACK;
            write_len = write_len.min(usize::try_from(max).unwrap_or(usize::MAX));
        }
        raw.set_limits(Limits::from(limits));
    } else {
        write_len = write_len.min(SAFE_WRITE_LEN);
    }

    Ok(SftpSession {
        ssh,
        sftp: Arc::new(raw),
        posix_rename,
        write_len,
        max_in_flight: opts.max_in_flight_writes.max(1),
        command_timeout: opts.command_timeout,
    })
}

/// Puts the host-key algorithms pinned in known_hosts first (OpenSSH does the same), so a
/// server with several host keys presents the pinned one.
fn pinned_algorithms_first(defaults: &[Algorithm], pinned: &[Algorithm]) -> Vec<Algorithm> {
    let is_pinned = |a: &Algorithm| {
        pinned.iter().any(|p| match (a, p) {
            // known_hosts says "ssh-rsa" for every RSA key; any RSA signature hash will do.
            (Algorithm::Rsa { .. }, Algorithm::Rsa { .. }) => true,
            _ => a == p,
        })
    };
    let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) =
        defaults.iter().cloned().partition(is_pinned);
    first.extend(rest);
    first
}

async fn authenticate(
    ssh: &mut Handle<ClientHandler>,
    opts: &ConnectOptions,
) -> Result<(), SftpError> {
    let user = opts.username.clone();
    let (method, result) = match &opts.auth {
        Auth::Password(password) => (
            "password",
            ssh.authenticate_password(user, password.clone()).await,
        ),
        Auth::PrivateKey { pem, passphrase } => {
            let key = decode_secret_key(pem, passphrase.as_deref()).map_err(|e| {
                SftpError::InvalidKey(match passphrase {
                    Some(_) => format!("{e} (wrong passphrase?)"),
                    None => e.to_string(),
                })
            })?;
            let hash_alg = if matches!(key.algorithm(), Algorithm::Rsa { .. }) {
                // None = the server did not send server-sig-algs: assume rsa-sha2-256.
                ssh.best_supported_rsa_hash()
                    .await
                    .map_err(|e| classify_ssh("query server-sig-algs", e, ssh.is_closed()))?
                    .unwrap_or(Some(HashAlg::Sha256))
            } else {
                None
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash_alg);
            ("publickey", ssh.authenticate_publickey(user, key).await)
        }
    };
    match result {
        Ok(AuthResult::Success) => Ok(()),
        // russh reports a connection that died mid-auth as an auth *failure*.
        Ok(AuthResult::Failure { .. }) if ssh.is_closed() => Err(SftpError::ConnectionLost(
            "connection closed during authentication".to_owned(),
        )),
        Ok(AuthResult::Failure {
            remaining_methods, ..
        }) => Err(SftpError::LoginFailed(format!(
            "server rejected {method} authentication for user {:?} (methods that can continue: {:?})",
            opts.username, remaining_methods
        ))),
        Err(e) => Err(classify_ssh("authenticate", e, ssh.is_closed())),
    }
}

pub(super) struct ClientHandler {
    host: String,
    port: u16,
    /// `None` = insecure_ignore_host_key.
    known_hosts: Option<KnownHostsDb>,
}

#[derive(Debug)]
pub(super) enum HandshakeError {
    Ssh(russh::Error),
    HostKey(SftpError),
}

impl From<russh::Error> for HandshakeError {
    fn from(e: russh::Error) -> Self {
        HandshakeError::Ssh(e)
    }
}

impl client::Handler for ClientHandler {
    type Error = HandshakeError;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let Some(db) = &self.known_hosts else {
            return Ok(true);
        };
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            // Not negotiated unless Preferred::host_key_certificates is set (it is not).
            PublicKeyOrCertificate::Certificate(_) => {
                return Err(HandshakeError::HostKey(SftpError::Protocol(
                    "server presented a host certificate; only plain host keys are supported"
                        .to_owned(),
                )));
            }
        };
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let host = KnownHostsDb::lookup_name(&self.host, self.port);
        match db.verify(&self.host, self.port, key) {
            HostKeyVerdict::Trusted => Ok(true),
            HostKeyVerdict::Revoked => Err(HandshakeError::HostKey(SftpError::HostKeyRevoked {
                host,
                fingerprint,
            })),
            HostKeyVerdict::Mismatch => Err(HandshakeError::HostKey(SftpError::HostKeyMismatch {
                host,
                fingerprint,
            })),
            HostKeyVerdict::Unknown => Err(HandshakeError::HostKey(SftpError::HostKeyUnknown {
                host,
                fingerprint,
            })),
        }
    }
}
