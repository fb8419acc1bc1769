//! Debian's vsftpd, a production FTP server, started through `scripts/vsftpd.sh` on
//! 127.0.0.1. Needs root and the `vsftpd` package; without them `start` fails with a message
//! saying so (`make test` installs it through `scripts/install-peers.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsftpdTls {
    /// Plain FTP.
    None,
    /// AUTH TLS required for login and data.
    Explicit,
    /// TLS from the first byte.
    Implicit,
}

/// A running vsftpd; dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct Vsftpd {
    child: Child,
    port: u16,
    root: PathBuf,
    ca_pem: Option<String>,
    log: PathBuf,
}

impl Vsftpd {
    /// Starts vsftpd with one account whose files live under [`Vsftpd::root`].
    pub fn start(user: &str, password: &str, tls: VsftpdTls) -> anyhow::Result<Vsftpd> {
        if !vsftpd_installed() {
            bail!(
                "vsftpd is not installed, so the tests against a production FTP server cannot \
                 run: `apt-get install -y vsftpd` (`make test` does this through scripts/install-peers.sh)"
            );
        }
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the vsftpd tests need root: vsftpd chroots and authenticates through PAM");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/vsftpd.sh");
        let mut cmd = Command::new(&script);
        cmd.args(["--user", user, "--password", password]);
        match tls {
            VsftpdTls::None => {}
            VsftpdTls::Explicit => {
                cmd.arg("--ftps");
            }
            VsftpdTls::Implicit => {
                cmd.arg("--ftps-implicit");
            }
        }
        let (child, fields) = super::peer_script::start(cmd, "scripts/vsftpd.sh")?;
        let field = |k: &str| {
            fields
                .get(k)
                .cloned()
                .with_context(|| format!("scripts/vsftpd.sh printed no {k}="))
        };
        let port = field("port")?.parse().context("port")?;
        let root = PathBuf::from(field("root")?);
        let log = PathBuf::from(field("log")?);
        let ca_pem = match fields.get("ca") {
            Some(path) => Some(std::fs::read_to_string(path).context("read the CA")?),
            None => None,
        };
        Ok(Vsftpd {
            child,
            port,
            root,
            ca_pem,
            log,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The FTP root on disk (`/` for the user).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Host path of a server path such as `/in/a.jpg`.
    pub fn path(&self, server_path: &str) -> PathBuf {
        self.root.join(server_path.trim_start_matches('/'))
    }

    /// The CA to trust, with FTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// vsftpd's log so far (protocol and transfers), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Vsftpd {
    fn drop(&mut self) {
        super::peer_script::stop(&mut self.child);
    }
}

fn vsftpd_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join("vsftpd").is_file())
}
