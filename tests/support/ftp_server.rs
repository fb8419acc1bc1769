//! An in-process FTP(S) server for tests: libunftp serving a temp dir on 127.0.0.1.
//!
//! ```ignore
//! let server = FtpServer::builder().account("bob", "pw").ftps().start().await?;
//! // connect to 127.0.0.1:{server.port()}, trust server.ca_pem() for FTPS,
//! // then look at files under server.root().
//! server.stop().await;
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use libunftp::ServerBuilder;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use unftp_core::auth::{AuthenticationError, Authenticator, Credentials, Principal};
use unftp_sbe_fs::Filesystem;

/// Below Linux's ephemeral range (32768+), so outgoing sockets rarely hold these ports.
pub const DEFAULT_PASSIVE_PORTS: RangeInclusive<u16> = 30000..=32000;

/// What to start; see [`FtpServer::builder`].
#[derive(Debug, Clone)]
pub struct FtpServerBuilder {
    accounts: Vec<(String, String)>,
    ftps: bool,
    ftps_required: bool,
    passive_ports: RangeInclusive<u16>,
    active_mode: bool,
    greeting: &'static str,
}

/// A running server. Dropping it stops accepting connections; [`FtpServer::stop`] does the
/// same and waits until the port is closed.
#[derive(Debug)]
pub struct FtpServer {
    addr: SocketAddr,
    root: tempfile::TempDir,
    ca_pem: Option<String>,
    accounts: Vec<(String, String)>,
    accept: Option<JoinHandle<()>>,
    // Certificate and key files that libunftp reads on every session.
    _tls_dir: Option<tempfile::TempDir>,
}

impl FtpServer {
    pub fn builder() -> FtpServerBuilder {
        FtpServerBuilder {
            accounts: Vec::new(),
            ftps: false,
            ftps_required: false,
            passive_ports: DEFAULT_PASSIVE_PORTS,
            active_mode: false,
            greeting: "vehicle-connect test FTP server",
        }
    }

    /// Plain FTP with one account.
    pub async fn start(user: &str, password: &str) -> anyhow::Result<FtpServer> {
        Self::builder().account(user, password).start().await
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The served directory, shared by all accounts: `/` on the server is this path.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Host path of a server path such as `/in/a.jpg`.
    pub fn path(&self, server_path: &str) -> PathBuf {
        self.root.path().join(server_path.trim_start_matches('/'))
    }

    /// PEM of the CA that signed the server certificate (for `localhost` and `127.0.0.1`),
    /// when FTPS is on.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    pub fn accounts(&self) -> &[(String, String)] {
        &self.accounts
    }

    /// Stops accepting connections and returns once the control port is closed. Sessions
    /// already open end when the test's runtime shuts down.
    pub async fn stop(mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            // The abort error is what we asked for; the listener is dropped by now.
            let _ = accept.await;
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl FtpServerBuilder {
    /// Adds a username/password account (at least one is needed).
    pub fn account(mut self, user: &str, password: &str) -> Self {
        self.accounts.push((user.to_string(), password.to_string()));
        self
    }

    /// Offers explicit FTPS (AUTH TLS) with a certificate from a fresh test CA. Plain
    /// sessions stay allowed unless [`FtpServerBuilder::ftps_required`] is set.
    pub fn ftps(mut self) -> Self {
        self.ftps = true;
        self
    }

    /// Refuses login and transfers without TLS (implies [`FtpServerBuilder::ftps`]).
    pub fn ftps_required(mut self) -> Self {
        self.ftps = true;
        self.ftps_required = true;
        self
    }

    pub fn passive_ports(mut self, ports: RangeInclusive<u16>) -> Self {
        self.passive_ports = ports;
        self
    }

    /// Also accepts active mode (PORT/EPRT: the server connects back to the client).
    pub fn active_mode(mut self) -> Self {
        self.active_mode = true;
        self
    }

    pub fn greeting(mut self, greeting: &'static str) -> Self {
        self.greeting = greeting;
        self
    }

    pub async fn start(self) -> anyhow::Result<FtpServer> {
        anyhow::ensure!(
            !self.accounts.is_empty(),
            "the test FTP server needs an account"
        );
        let root = tempfile::tempdir().context("temp dir for the FTP root")?;
        let (tls_dir, tls_files, ca_pem) = if self.ftps {
            let (dir, files, ca) = write_test_certificates()?;
            (Some(dir), Some(files), Some(ca))
        } else {
            (None, None, None)
        };

        let settings = Arc::new(Settings {
            root: root.path().to_path_buf(),
            accounts: Arc::new(Accounts(self.accounts.iter().cloned().collect())),
            tls_files,
            ftps_required: self.ftps_required,
            passive_ports: self.passive_ports.clone(),
            active_mode: self.active_mode,
            greeting: self.greeting,
        });
        // Fail here, not on the first connection, if the configuration is bad.
        settings.build()?;

        // Our own listener: port 0 gives a free port without a bind race, and libunftp's
        // `listen` only takes an address.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(accept_loop(listener, settings));
        Ok(FtpServer {
            addr,
            root,
            ca_pem,
            accounts: self.accounts,
            accept: Some(accept),
            _tls_dir: tls_dir,
        })
    }
}

struct Settings {
    root: PathBuf,
    accounts: Arc<Accounts>,
    tls_files: Option<(PathBuf, PathBuf)>,
    ftps_required: bool,
    passive_ports: RangeInclusive<u16>,
    active_mode: bool,
    greeting: &'static str,
}

type Server = libunftp::Server<Filesystem, unftp_core::auth::DefaultUser>;

impl Settings {
    /// A libunftp `Server` serves one connection through `service`, so each gets its own.
    fn build(&self) -> anyhow::Result<Server> {
        let root = self.root.clone();
        let mut builder = ServerBuilder::with_authenticator(
            Box::new(move || {
                // The root is a temp dir that outlives the server; libunftp gives this
                // factory no way to report an error.
                Filesystem::new(root.clone()).expect("FTP root directory is readable")
            }),
            self.accounts.clone(),
        )
        .greeting(self.greeting)
        .passive_ports(self.passive_ports.clone())
        .passive_host(libunftp::options::PassiveHost::FromConnection)
        .active_passive_mode(if self.active_mode {
            libunftp::options::ActivePassiveMode::ActiveAndPassive
        } else {
            libunftp::options::ActivePassiveMode::PassiveOnly
        });
        if let Some((cert, key)) = &self.tls_files {
            builder = builder.ftps(cert.clone(), key.clone());
            if self.ftps_required {
                builder = builder.ftps_required(
                    libunftp::options::FtpsRequired::All,
                    libunftp::options::FtpsRequired::All,
                );
            }
        }
        builder
            .build()
            .map_err(|e| anyhow::anyhow!("libunftp server: {e}"))
    }
}

async fn accept_loop(listener: TcpListener, settings: Arc<Settings>) {
    // Owned here so that aborting this task also aborts the per-connection tasks.
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match settings.build() {
                    Ok(server) => {
                        sessions.spawn(async move {
                            if let Err(e) = server.service(tcp).await {
                                eprintln!("test FTP server: session from {peer}: {e:?}");
                            }
                        });
                    }
                    Err(e) => eprintln!("test FTP server: {e:#}"),
                },
                Err(e) => eprintln!("test FTP server: accept: {e}"),
            },
            // Reap finished sessions so the set does not grow for the server's lifetime.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

#[derive(Debug)]
struct Accounts(HashMap<String, String>);

#[async_trait::async_trait]
impl Authenticator for Accounts {
    async fn authenticate(
        &self,
        username: &str,
        creds: &Credentials,
    ) -> Result<Principal, AuthenticationError> {
        match self.0.get(username) {
            None => Err(AuthenticationError::BadUser),
            Some(expected) if creds.password.as_deref() == Some(expected.as_str()) => {
                Ok(Principal {
                    username: username.to_string(),
                })
            }
            Some(_) => Err(AuthenticationError::BadPassword),
        }
    }
}

/// A throwaway CA and a server certificate for `localhost` and `127.0.0.1`, written as PEM
/// files. Returns the dir holding them, (cert chain, key) paths, and the CA PEM.
fn write_test_certificates() -> anyhow::Result<(tempfile::TempDir, (PathBuf, PathBuf), String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "vehicle-connect test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    let dir = tempfile::tempdir().context("temp dir for TLS files")?;
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem()))?;
    std::fs::write(&key_path, leaf_key.serialize_pem())?;
    Ok((dir, (cert_path, key_path), ca.pem()))
}
