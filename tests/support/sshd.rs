//! Debian's OpenSSH server as an SFTP-only peer, started through `scripts/sshd.sh` on
//! 127.0.0.1: its own config, host key, client keys and chroot, and a temporary system
//! account that can log in with a password or a public key and do nothing but SFTP in a
//! writable `/upload` (where sessions start). Needs root and the `openssh-server` package;
//! without them `start` fails with a message saying so (`make test` installs it through
//! `scripts/install-peers.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// The type of the server's one host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyType {
    #[default]
    Ed25519,
    Rsa,
    Ecdsa,
}

impl HostKeyType {
    fn arg(self) -> &'static str {
        match self {
            HostKeyType::Ed25519 => "ed25519",
            HostKeyType::Rsa => "rsa",
            HostKeyType::Ecdsa => "ecdsa",
        }
    }
}

/// How to start [`Sshd`]; the default is a fresh account, random password, free port and
/// ed25519 host key.
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// The account's name; by default `vc-sftp-<pid>`. A named account must not exist yet:
    /// it is created, and deleted when the server stops.
    pub user: Option<String>,
    /// The account's password; by default a random one (see [`Sshd::password`]).
    pub password: Option<String>,
    /// The port on 127.0.0.1; by default a free one.
    pub port: Option<u16>,
    pub host_key_type: HostKeyType,
    /// Also authorize a second ed25519 client key, encrypted with this passphrase
    /// ([`Sshd::client_key_encrypted_pem`]).
    pub key_passphrase: Option<String>,
}

/// A running sshd; dropping it stops the server, deletes the account and removes its files.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    user: String,
    password: String,
    root: PathBuf,
    upload_dir: String,
    host_key_pub: PathBuf,
    host_key_fingerprint: String,
    known_hosts: PathBuf,
    client_key: PathBuf,
    client_key_pub: PathBuf,
    client_key_encrypted: Option<PathBuf>,
    log: PathBuf,
}

impl Sshd {
    /// Starts sshd and waits until it listens.
    pub fn start(opts: SshdOptions) -> anyhow::Result<Sshd> {
        if !sshd_installed() {
            bail!(
                "sshd is not installed, so the tests against a production SFTP server cannot \
                 run: `apt-get install -y openssh-server` (`make test` does this through \
                 scripts/install-peers.sh)"
            );
        }
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!(
                "the sshd tests need root: sshd chroots the SFTP account, which the script \
                 creates (useradd) and deletes"
            );
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sshd.sh");
        let mut cmd = Command::new(&script);
        cmd.args(["--host-key-type", opts.host_key_type.arg()]);
        if let Some(user) = &opts.user {
            cmd.args(["--user", user]);
        }
        if let Some(password) = &opts.password {
            cmd.args(["--password", password]);
        }
        if let Some(port) = opts.port {
            cmd.args(["--port", &port.to_string()]);
        }
        if let Some(passphrase) = &opts.key_passphrase {
            cmd.args(["--key-passphrase", passphrase]);
        }
        let (child, fields) = super::peer_script::start(cmd, "scripts/sshd.sh")?;
        let mut sshd = Sshd {
            child,
            port: 0,
            user: String::new(),
            password: String::new(),
            root: PathBuf::new(),
            upload_dir: String::new(),
            host_key_pub: PathBuf::new(),
            host_key_fingerprint: String::new(),
            known_hosts: PathBuf::new(),
            client_key: PathBuf::new(),
            client_key_pub: PathBuf::new(),
            client_key_encrypted: None,
            log: PathBuf::new(),
        };
        // From here on, an error drops `sshd`, which stops the script.
        let field = |k: &str| {
            fields
                .get(k)
                .cloned()
                .with_context(|| format!("scripts/sshd.sh printed no {k}="))
        };
        sshd.port = field("port")?.parse().context("port")?;
        sshd.user = field("user")?;
        sshd.password = field("password")?;
        sshd.root = PathBuf::from(field("root")?);
        sshd.upload_dir = field("upload_dir")?;
        sshd.host_key_pub = PathBuf::from(field("host_key_pub")?);
        sshd.host_key_fingerprint = field("host_key_fingerprint")?;
        sshd.known_hosts = PathBuf::from(field("known_hosts")?);
        sshd.client_key = PathBuf::from(field("client_key")?);
        sshd.client_key_pub = PathBuf::from(field("client_key_pub")?);
        sshd.client_key_encrypted = fields.get("client_key_encrypted").map(PathBuf::from);
        sshd.log = PathBuf::from(field("log")?);
        Ok(sshd)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The SFTP account.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its password (password authentication).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The host dir that uploads land in: [`Sshd::upload_dir`] as the client sees it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The writable dir as the SFTP client sees it (`/upload`); sessions start in it.
    pub fn upload_dir(&self) -> &str {
        &self.upload_dir
    }

    /// Host path of `name`: relative to the upload dir (`a.jpg`, `in/a.jpg`), or an absolute
    /// path as the client sees it (`/upload/a.jpg`).
    pub fn path(&self, name: &str) -> PathBuf {
        match name.strip_prefix('/') {
            // The chroot, `/` for the client, holds the upload dir.
            Some(absolute) => self
                .root
                .parent()
                .expect("the upload dir is in the chroot")
                .join(absolute),
            None => self.root.join(name),
        }
    }

    /// A known_hosts file (OpenSSH format) pinning `[127.0.0.1]:port` to the server's host key.
    pub fn known_hosts(&self) -> String {
        read(&self.known_hosts)
    }

    /// Where that file is, for clients that want a path (`-o UserKnownHostsFile=`).
    pub fn known_hosts_path(&self) -> &Path {
        &self.known_hosts
    }

    /// The server's public host key, one OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub fn host_key_pub(&self) -> String {
        read(&self.host_key_pub)
    }

    /// Its fingerprint as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key_fingerprint
    }

    /// The authorized client private key (ed25519, OpenSSH format, no passphrase).
    pub fn client_key_pem(&self) -> String {
        read(&self.client_key)
    }

    /// Where that key is (`-i`; the file is root's, mode 0600, as ssh wants).
    pub fn client_key_path(&self) -> &Path {
        &self.client_key
    }

    /// Its public key, one OpenSSH line.
    pub fn client_key_pub(&self) -> String {
        read(&self.client_key_pub)
    }

    /// With [`SshdOptions::key_passphrase`], a second authorized private key, encrypted with it.
    pub fn client_key_encrypted_pem(&self) -> Option<String> {
        self.client_key_encrypted.as_deref().map(read)
    }

    /// Where that key is.
    pub fn client_key_encrypted_path(&self) -> Option<&Path> {
        self.client_key_encrypted.as_deref()
    }

    /// A known_hosts line for `[127.0.0.1]:port` with another host key, made up now: a client
    /// that trusts only it must refuse this server.
    pub fn foreign_known_hosts(&self) -> anyhow::Result<String> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let key = dir.path().join("foreign_host_key");
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "vc-sshd foreign host",
                "-f",
            ])
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .context("run ssh-keygen (package openssh-client)")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let public = std::fs::read_to_string(key.with_extension("pub"))
            .context("read the foreign public key")?;
        let mut parts = public.split_whitespace();
        let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
            bail!("ssh-keygen wrote no public key: {public:?}");
        };
        Ok(format!("[127.0.0.1]:{} {kind} {blob}\n", self.port))
    }

    /// sshd's log so far (VERBOSE: connections, authentication, internal-sftp's file
    /// operations), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        super::peer_script::stop(&mut self.child);
    }
}

/// A file the script made, which exists while it runs.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn sshd_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join("sshd").is_file())
}
