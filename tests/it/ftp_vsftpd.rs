//! `delivery::files::ftp` against Debian's vsftpd, a production FTP server (plain, explicit and
//! implicit FTPS). These tests fail, never skip, when vsftpd is missing: CI installs it.

use std::time::Duration;

use crate::support::vsftpd::{Vsftpd, VsftpdTls};
use vehicle_connect::api::ftp::FtpProtocol;
use vehicle_connect::delivery::files::ftp::{self, FtpEndpoint};
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

fn loopback() -> TargetGuard {
    TargetGuard::new(parse_allow_list("127.0.0.0/8,::1").unwrap())
}

const USER: &str = "dealer";
const PASSWORD: &str = "vsftpd-s3cret";

fn start(tls: VsftpdTls) -> Vsftpd {
    Vsftpd::start(USER, PASSWORD, tls).unwrap_or_else(|e| panic!("{e:#}"))
}

fn endpoint(server: &Vsftpd, host: &str, protocol: FtpProtocol) -> FtpEndpoint {
    FtpEndpoint {
        host: host.to_string(),
        port: server.port(),
        protocol,
        username: USER.to_string(),
        password: PASSWORD.to_string(),
        ca_pem: server.ca_pem().map(|pem| pem.as_bytes().to_vec()),
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        passive: true,
        epsv: false,
        nat_workaround: true,
        ssh: Default::default(),
    }
}

async fn probe_ok(server: &Vsftpd, ep: &FtpEndpoint) {
    if let Err(e) = ftp::probe(ep, &loopback()).await {
        panic!("probe failed: {e}\nvsftpd log:\n{}", server.log());
    }
}

async fn upload(server: &Vsftpd, ep: &FtpEndpoint, name: &str) {
    const BODY: &[u8] = b"\x00\x01vsftpd\r\n\xff";
    let mut session = ftp::connect(ep, &loopback()).await.unwrap();
    let remote = format!("/{name}");
    let written = session
        .run("uploading", |s| {
            Box::pin(async move {
                let mut reader = BODY;
                s.put_file(remote.as_str(), &mut reader).await
            })
        })
        .await
        .unwrap_or_else(|e| panic!("upload failed: {e}\nvsftpd log:\n{}", server.log()));
    assert_eq!(written, BODY.len() as u64);
    session.quit().await.unwrap();
    assert_eq!(std::fs::read(server.path(name)).unwrap(), BODY);
}

#[tokio::test]
async fn plain_probe_and_uploads() {
    let server = start(VsftpdTls::None);
    let mut ep = endpoint(&server, "127.0.0.1", FtpProtocol::Ftp);
    probe_ok(&server, &ep).await;
    upload(&server, &ep, "pasv.bin").await;
    ep.epsv = true;
    upload(&server, &ep, "epsv.bin").await;
    ep.passive = false;
    upload(&server, &ep, "active.bin").await;
}

#[tokio::test]
async fn wrong_password_is_login_failed() {
    let server = start(VsftpdTls::None);
    let mut ep = endpoint(&server, "127.0.0.1", FtpProtocol::Ftp);
    ep.password = "not-the-password".to_string();
    let err = ftp::probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(err.reason(), "LoginFailed", "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "login refused for user 'dealer' at 127.0.0.1:{}: 530 Login incorrect.",
            server.port()
        )
    );
}

#[tokio::test]
async fn plain_login_to_a_server_that_requires_tls_is_login_failed() {
    let server = start(VsftpdTls::Explicit);
    let ep = endpoint(&server, "127.0.0.1", FtpProtocol::Ftp);
    let err = ftp::probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(err.reason(), "LoginFailed", "{err}");
    assert!(err.to_string().contains("encryption"), "{err}");
}

#[tokio::test]
async fn explicit_ftps_probe_and_upload() {
    let server = start(VsftpdTls::Explicit);
    let ep = endpoint(&server, "localhost", FtpProtocol::Ftps);
    probe_ok(&server, &ep).await;
    upload(&server, &ep, "ftps.bin").await;
}

#[tokio::test]
async fn explicit_ftps_without_the_ca_is_tls_failed() {
    let server = start(VsftpdTls::Explicit);
    let mut ep = endpoint(&server, "localhost", FtpProtocol::Ftps);
    ep.ca_pem = None;
    let err = ftp::probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(err.reason(), "TlsFailed", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn implicit_ftps_probe_and_upload() {
    let server = start(VsftpdTls::Implicit);
    let ep = endpoint(&server, "127.0.0.1", FtpProtocol::FtpsImplicit);
    probe_ok(&server, &ep).await;
    upload(&server, &ep, "implicit.bin").await;
}

#[tokio::test]
async fn explicit_ftps_client_against_implicit_server_is_an_error_not_a_hang() {
    let server = start(VsftpdTls::Implicit);
    let mut ep = endpoint(&server, "127.0.0.1", FtpProtocol::Ftps);
    ep.connect_timeout = Duration::from_secs(2);
    let err = ftp::probe(&ep, &loopback()).await.unwrap_err();
    // The server waits for a TLS ClientHello while we wait for its greeting.
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(err.to_string().contains("greeting"), "{err}");
}
