//! `delivery::files::ftp::probe` and `connect` against a real FTP server (libunftp, in process)
//! and against sockets that misbehave on purpose.

use std::time::{Duration, Instant};

use crate::support::ftp_server::FtpServer;
use vehicle_connect::api::ftp::FtpProtocol;
use vehicle_connect::delivery::files::ftp::{self, FtpEndpoint, ProbeError};
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

const USER: &str = "bob";
const PASSWORD: &str = "correct-horse-battery";

fn endpoint(host: &str, port: u16) -> FtpEndpoint {
    FtpEndpoint {
        host: host.to_string(),
        port,
        protocol: FtpProtocol::Ftp,
        username: USER.to_string(),
        password: PASSWORD.to_string(),
        ca_pem: None,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        passive: true,
        epsv: false,
        nat_workaround: true,
        ssh: Default::default(),
    }
}

/// The guard the tests' loopback servers pass.
fn loopback() -> TargetGuard {
    TargetGuard::new(parse_allow_list("127.0.0.0/8,::1").unwrap())
}

async fn probe(ep: &FtpEndpoint) -> Result<(), ProbeError> {
    ftp::probe(ep, &loopback()).await
}

async fn connect(ep: &FtpEndpoint) -> Result<ftp::Session, ProbeError> {
    ftp::connect(ep, &loopback()).await
}

fn expect_err(result: Result<(), ProbeError>, reason: &str) -> ProbeError {
    match result {
        Ok(()) => panic!("probe succeeded, expected {reason}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "unexpected error: {e}");
            e
        }
    }
}

#[tokio::test]
async fn probe_succeeds_with_right_credentials() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    probe(&endpoint("127.0.0.1", server.port())).await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_login_failed_and_never_shows_the_password() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.password = "hunter2-wrong".to_string();
    let err = expect_err(probe(&ep).await, "LoginFailed");
    let msg = err.to_string();
    let want = format!(
        "login refused for user 'bob' at 127.0.0.1:{}: 530",
        server.port()
    );
    assert!(msg.starts_with(&want), "{msg}");
    assert!(!msg.contains("hunter2-wrong"), "{msg}");
    assert!(!format!("{err:?}").contains("hunter2-wrong"), "{err:?}");
}

#[tokio::test]
async fn unknown_user_is_login_failed() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.username = "mallory".to_string();
    let err = expect_err(probe(&ep).await, "LoginFailed");
    assert!(err.to_string().contains("'mallory'"), "{err}");
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    // A port that was free a moment ago; a stopped server proves it is closed now.
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let port = server.port();
    server.stop().await;
    let err = expect_err(
        probe(&endpoint("127.0.0.1", port)).await,
        "ConnectionRefused",
    );
    assert_eq!(
        err.to_string(),
        format!("connection refused by 127.0.0.1:{port}: no FTP server listens on that port")
    );
}

#[tokio::test]
async fn silent_server_times_out_within_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accept and hold connections without ever sending the 220 greeting.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let mut ep = endpoint("127.0.0.1", port);
    ep.connect_timeout = Duration::from_secs(1);
    ep.command_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let err = expect_err(probe(&ep).await, "Timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        err.to_string(),
        format!("no answer from 127.0.0.1:{port} within 1s while waiting for the server greeting")
    );
    holder.abort();
}

#[tokio::test]
async fn explicit_ftps_with_the_ca_succeeds() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .ftps_required()
        .start()
        .await
        .unwrap();
    let mut ep = endpoint("localhost", server.port());
    ep.protocol = FtpProtocol::Ftps;
    ep.ca_pem = Some(server.ca_pem().unwrap().as_bytes().to_vec());
    probe(&ep).await.unwrap();
}

#[tokio::test]
async fn explicit_ftps_to_an_ip_address_with_the_ca_succeeds() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .ftps()
        .start()
        .await
        .unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.protocol = FtpProtocol::Ftps;
    ep.ca_pem = Some(server.ca_pem().unwrap().as_bytes().to_vec());
    probe(&ep).await.unwrap();
}

#[tokio::test]
async fn explicit_ftps_without_the_ca_is_tls_failed() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .ftps()
        .start()
        .await
        .unwrap();
    let mut ep = endpoint("localhost", server.port());
    ep.protocol = FtpProtocol::Ftps;
    let err = expect_err(probe(&ep).await, "TlsFailed");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("TLS with localhost:{} failed: ", server.port())),
        "{msg}"
    );
    assert!(msg.contains("UnknownIssuer"), "{msg}");
    assert!(msg.contains("caSecretRef"), "{msg}");
    assert!(!msg.contains("Secure error"), "{msg}");
}

#[tokio::test]
async fn explicit_ftps_against_a_plain_server_is_tls_failed() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.protocol = FtpProtocol::Ftps;
    let err = expect_err(probe(&ep).await, "TlsFailed");
    assert!(err.to_string().contains("server refused TLS"), "{err}");
}

#[tokio::test]
async fn implicit_ftps_against_a_plain_server_is_tls_failed() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.protocol = FtpProtocol::FtpsImplicit;
    ep.connect_timeout = Duration::from_secs(3);
    let err = expect_err(probe(&ep).await, "TlsFailed");
    assert!(err.to_string().contains("ftps-implicit"), "{err}");
}

#[tokio::test]
async fn bad_ca_bundle_is_tls_failed_before_connecting() {
    let mut ep = endpoint("127.0.0.1", 9);
    ep.protocol = FtpProtocol::Ftps;
    ep.ca_pem =
        Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec());
    let err = expect_err(probe(&ep).await, "TlsFailed");
    assert!(err.to_string().contains("CA bundle"), "{err}");
}

#[tokio::test]
async fn unknown_host_is_dns_failed() {
    let err = expect_err(
        probe(&endpoint("nonexistent.invalid", 21)).await,
        "DnsFailed",
    );
    assert!(
        err.to_string()
            .starts_with("cannot resolve FTP host 'nonexistent.invalid': "),
        "{err}"
    );
}

/// The session that `connect` returns is the one uploads will use: its passive/EPSV and TLS
/// settings must carry a real data connection.
async fn upload_through_session(ep: FtpEndpoint, server: &FtpServer, name: &str) {
    let mut session = connect(&ep).await.unwrap();
    // Bytes an ASCII-mode transfer would alter (CR LF, NUL, high bit).
    const BODY: &[u8] = b"\x00\x01binary\r\n\xff";
    let remote = format!("/{name}");
    let written = session
        .run("uploading", |s| {
            Box::pin(async move {
                let mut reader = BODY;
                s.put_file(remote.as_str(), &mut reader).await
            })
        })
        .await
        .unwrap();
    assert_eq!(written, BODY.len() as u64);
    session.quit().await.unwrap();
    let on_disk = std::fs::read(server.path(name)).unwrap();
    assert_eq!(on_disk, BODY, "binary mode keeps bytes as sent");
}

#[tokio::test]
async fn session_uploads_in_passive_mode() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let ep = endpoint("127.0.0.1", server.port());
    upload_through_session(ep, &server, "pasv.bin").await;
}

/// Without the NAT workaround the data connection goes where the PASV reply says; an honest
/// server's own address passes the guard, for the probe (which checks it) and for uploads.
#[tokio::test]
async fn honest_pasv_address_passes_the_guard_without_the_nat_workaround() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.nat_workaround = false;
    probe(&ep).await.unwrap();
    upload_through_session(ep, &server, "pasv-no-nat.bin").await;
}

#[tokio::test]
async fn session_uploads_in_extended_passive_mode() {
    let server = FtpServer::start(USER, PASSWORD).await.unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.epsv = true;
    ep.nat_workaround = false;
    upload_through_session(ep, &server, "epsv.bin").await;
}

#[tokio::test]
async fn session_uploads_in_active_mode() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .active_mode()
        .start()
        .await
        .unwrap();
    let mut ep = endpoint("127.0.0.1", server.port());
    ep.passive = false;
    upload_through_session(ep, &server, "active.bin").await;
}

#[tokio::test]
async fn session_uploads_over_explicit_ftps() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .ftps_required()
        .start()
        .await
        .unwrap();
    let mut ep = endpoint("localhost", server.port());
    ep.protocol = FtpProtocol::Ftps;
    ep.ca_pem = Some(server.ca_pem().unwrap().as_bytes().to_vec());
    upload_through_session(ep, &server, "ftps.bin").await;
}

#[tokio::test]
async fn server_accepts_several_accounts() {
    let server = FtpServer::builder()
        .account(USER, PASSWORD)
        .account("alice", "other-password")
        .start()
        .await
        .unwrap();
    probe(&endpoint("127.0.0.1", server.port())).await.unwrap();
    let mut alice = endpoint("127.0.0.1", server.port());
    alice.username = "alice".to_string();
    alice.password = "other-password".to_string();
    probe(&alice).await.unwrap();
}
