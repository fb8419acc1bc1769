//! The SFTP test peer itself (`scripts/sshd.sh` through `support::sshd`), checked with the
//! stock OpenSSH client: a key-authenticated upload lands where `path` says, and a client
//! pinning another host key refuses the server. These tests fail, never skip, when sshd or
//! root is missing: `make test` installs openssh-server.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::sshd::{Sshd, SshdOptions};

fn start() -> Sshd {
    Sshd::start(SshdOptions::default()).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `sftp` in batch mode (no prompts) with the server's client key, trusting only the
/// host keys in `known_hosts`, and feeds it `batch`.
fn sftp(server: &Sshd, known_hosts: &Path, batch: &str) -> Output {
    let mut child = Command::new("sftp")
        .arg("-b")
        .arg("-")
        .arg("-F")
        .arg("/dev/null") // no ~/.ssh/config
        .arg("-i")
        .arg(server.client_key_path())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-P",
        ])
        .arg(server.port().to_string())
        .arg(format!("{}@127.0.0.1", server.user()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sftp (Debian package openssh-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(batch.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn key_auth_upload_lands_in_the_upload_dir() {
    const BODY: &[u8] = b"\x00\x01sftp peer\r\n\xff";
    let server = start();
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("local.bin");
    std::fs::write(&file, BODY).unwrap();

    // Sessions start in the upload dir: a relative name lands there.
    let out = sftp(
        &server,
        server.known_hosts_path(),
        &format!("pwd\nput {} peer.bin\n", file.display()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sftp failed: {}\n{stdout}{}\nsshd log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(
        stdout.contains(&format!(
            "Remote working directory: {}",
            server.upload_dir()
        )),
        "{stdout}"
    );
    assert_eq!(std::fs::read(server.path("peer.bin")).unwrap(), BODY);
    assert_eq!(server.path("peer.bin"), server.path("/upload/peer.bin"));
}

#[test]
fn a_foreign_host_key_is_refused() {
    let server = start();
    let local = tempfile::tempdir().unwrap();
    let known_hosts = local.path().join("known_hosts");
    std::fs::write(&known_hosts, server.foreign_known_hosts().unwrap()).unwrap();
    let file = local.path().join("local.bin");
    std::fs::write(&file, b"never sent").unwrap();

    let out = sftp(
        &server,
        &known_hosts,
        &format!("put {} refused.bin\n", file.display()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sftp trusted a foreign host key");
    assert!(
        stderr.contains("Host key verification failed"),
        "{stderr}\nsshd log:\n{}",
        server.log()
    );
    assert!(!server.path("refused.bin").exists());

    // The same client, trusting the server's own known_hosts, gets in.
    let out = sftp(&server, server.known_hosts_path(), "pwd\n");
    assert!(
        out.status.success(),
        "{}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}
