//! `protocol: sftp` end to end: images from a real HTTP server on 127.0.0.1 uploaded by
//! `Uploader` to Debian's OpenSSH server (`scripts/sshd.sh`: chrooted account, its own host
//! key), by the same rules as FTP, checked on the server's disk. These tests fail, never
//! skip, without sshd or root: `make test` installs openssh-server.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::ftp_upload::{
    HOSTILE, Images, KB, VIN, assert_inside, check_files, deleted, expect_failure, expect_uploaded,
    files_under, jpegs, processed, read_zip, rules, uploader, vehicle, vehicle_event,
    with_metadata,
};
use crate::support::sshd::{Sshd, SshdOptions};
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, Layout};
use vehicle_connect::delivery::files::probe;
use vehicle_connect::endpoint::{FtpEndpoint, SshAuth};
use vehicle_connect::routing::FtpTarget;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

fn start(opts: SshdOptions) -> Sshd {
    Sshd::start(opts).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Password login, host key pinned from the server's own known_hosts.
fn endpoint(server: &Sshd) -> FtpEndpoint {
    FtpEndpoint {
        host: "127.0.0.1".to_string(),
        port: server.port(),
        protocol: FtpProtocol::Sftp,
        username: server.user().to_string(),
        password: server.password().to_string(),
        ca_pem: None,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        passive: true,
        epsv: false,
        nat_workaround: true,
        ssh: SshAuth {
            known_hosts: Some(server.known_hosts()),
            private_key: None,
            passphrase: None,
        },
    }
}

fn target(endpoint: FtpEndpoint, rules: FtpRules) -> FtpTarget {
    FtpTarget {
        endpoint,
        rules,
        retry: Default::default(),
        max_connections: 2,
    }
}

fn loopback() -> TargetGuard {
    TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap())
}

#[tokio::test]
async fn password_login_files_layout_with_metadata_last() {
    let server = start(SshdOptions::default());
    let images = Images::start().await;
    let srcs = jpegs(&images, "sftp-files", 3, 300 * KB);
    let ep = endpoint(&server);
    if let Err(e) = probe(&ep, &loopback()).await {
        panic!("probe failed: {e:?}\nsshd log:\n{}", server.log());
    }
    let t = target(ep, with_metadata(rules("/upload/in")));
    let up = uploader();
    let r = up.deliver(&t, &processed("evt_sftp-1", &srcs), &[]).await;
    expect_uploaded(&r, 4);
    check_files(&server.root().join("in"), &srcs, "jpg", true);
    // The metadata file lists every image with its checksum, as for FTP.
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(server.root().join(format!("in/{VIN}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["images"].as_array().unwrap().len(), 3);

    // A second vehicle reuses the pooled session.
    let more = jpegs(&images, "sftp-files-2", 1, 10 * KB);
    let ev = vehicle_event(
        "evt_sftp-2",
        "vehicle.processed",
        vehicle("WVWZZZ1JZXW000002"),
        &more,
    );
    expect_uploaded(&up.deliver(&t, &ev, &[]).await, 2);
    assert_eq!(up.sessions_opened(), 1);
}

#[tokio::test]
async fn key_login_zip_layout_and_delete_of_the_recorded_files() {
    let server = start(SshdOptions {
        key_passphrase: Some("key-pass-phrase".into()),
        ..Default::default()
    });
    let images = Images::start().await;
    let srcs = jpegs(&images, "sftp-zip", 3, 100 * KB);
    let mut ep = endpoint(&server);
    // No password at all: the key alone logs in.
    ep.password = String::new();
    ep.ssh.private_key = Some(server.client_key_pem());
    let mut r = rules("/upload/zips");
    r.layout = Layout::Zip;
    r.directory = "{vin}".to_string();
    r.delete_on_vehicle_deleted = true;
    let t = target(ep.clone(), r.clone());
    let up = uploader();
    let res = up.deliver(&t, &processed("evt_sftp-zip", &srcs), &[]).await;
    expect_uploaded(&res, 1);
    let zip = server.root().join(format!("zips/{VIN}/{VIN}.zip"));
    let entries = read_zip(&zip);
    assert_eq!(entries.len(), 3);
    for (e, s) in entries.iter().zip(&srcs) {
        assert_eq!(e.1, s.data);
    }

    // An encrypted key with its passphrase; the delete removes exactly what was recorded,
    // then the vehicle's directory it leaves empty.
    let paths = match &res {
        vehicle_connect::delivery::files::UploadResult::Uploaded { paths, .. } => paths.clone(),
        other => panic!("{other:?}"),
    };
    ep.ssh.private_key = server.client_key_encrypted_pem();
    ep.ssh.passphrase = Some("key-pass-phrase".into());
    let t = target(ep, r);
    let res = up
        .deliver(&t, &deleted("evt_sftp-del", vehicle(VIN)), &paths)
        .await;
    assert!(
        matches!(
            res,
            vehicle_connect::delivery::files::UploadResult::Deleted { files: 1, .. }
        ),
        "{res:?}"
    );
    assert!(!zip.exists());
    assert!(!server.root().join(format!("zips/{VIN}")).exists());
    assert!(server.root().join("zips").exists());
}

#[tokio::test]
async fn a_changed_or_unknown_host_key_is_refused_before_logging_in() {
    let server = start(SshdOptions::default());
    let images = Images::start().await;
    let srcs = jpegs(&images, "sftp-mitm", 1, 10 * KB);
    let up = uploader();

    // Another key pinned for this host and port: what a server in the middle would present.
    let mut ep = endpoint(&server);
    ep.ssh.known_hosts = Some(server.foreign_known_hosts().unwrap());
    let (reason, message) = probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(reason, "HostKeyMismatch", "{message}");
    assert!(message.contains(server.host_key_fingerprint()), "{message}");
    let r = up
        .deliver(
            &target(ep, rules("/upload")),
            &processed("evt_mitm", &srcs),
            &[],
        )
        .await;
    expect_failure(&r, true, "HostKeyMismatch");

    // Keys pinned for another host only: unknown, not trusted.
    let mut ep = endpoint(&server);
    ep.ssh.known_hosts = Some(
        server
            .known_hosts()
            .replace("[127.0.0.1]", "[sftp.example]"),
    );
    let (reason, message) = probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(reason, "HostKeyUnknown", "{message}");

    // The password was never sent: sshd saw no authentication attempt at all.
    let log = server.log();
    assert!(
        !log.contains("Failed password") && !log.contains("Accepted password"),
        "{log}"
    );
    assert!(files_under(server.root()).is_empty());

    // Opting out of the check accepts any key (and logs in).
    let mut ep = endpoint(&server);
    ep.ssh.known_hosts = None;
    probe(&ep, &loopback()).await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_login_failed_and_never_shown() {
    let server = start(SshdOptions::default());
    let mut ep = endpoint(&server);
    ep.password = "not-the-password".to_string();
    let (reason, message) = probe(&ep, &loopback()).await.unwrap_err();
    assert_eq!(reason, "LoginFailed", "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
}

#[tokio::test]
async fn hostile_vin_and_stock_stay_inside_the_base_directory() {
    let server = start(SshdOptions::default());
    let images = Images::start().await;
    let srcs = jpegs(&images, "sftp-evil", 2, 20 * KB);
    let mut r = with_metadata(rules("/upload/base"));
    r.directory = "{stock}".to_string();
    let t = target(endpoint(&server), r);
    let up = uploader();
    for (i, (vin, stock)) in HOSTILE.into_iter().enumerate() {
        let ev = vehicle_event(
            &format!("evt_sftp-evil-{i}"),
            "vehicle.processed",
            json!({"id": "veh-x", "vin": vin, "stockNumber": stock}),
            &srcs,
        );
        expect_uploaded(&up.deliver(&t, &ev, &[]).await, 3);
    }
    let all = files_under(server.root());
    assert_eq!(all.len(), 12, "{all:#?}");
    assert_inside(&all, "base/");
}

/// Forwards one TCP connection to `to` and cuts both directions once `cut_after` bytes
/// went from the client to the server: the network failing in the middle of an upload.
async fn cutting_proxy(to: u16, cut_after: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", to)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut sent = 0;
                    let mut buf = vec![0u8; 16 * 1024];
                    while sent < cut_after {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n.min(cut_after - sent),
                        };
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n;
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                // Whichever ends first ends both: the cable is cut.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn connection_cut_mid_upload_is_retryable_and_leaves_no_partial_final_file() {
    let server = start(SshdOptions::default());
    let images = Images::start().await;
    let size = 600 * KB;
    let srcs = jpegs(&images, "sftp-cut", 4, size);
    // The handshake and about one and a half images, then nothing.
    let proxy = cutting_proxy(server.port(), size + size / 2).await;
    let mut ep = endpoint(&server);
    ep.port = proxy;
    let pinned = format!("[127.0.0.1]:{}", server.port());
    ep.ssh.known_hosts = Some(
        server
            .known_hosts()
            .replace(&pinned, &format!("[127.0.0.1]:{proxy}")),
    );
    ep.command_timeout = Duration::from_secs(3);
    let up = uploader();
    let t = target(ep, with_metadata(rules("/upload/in")));
    let r = up.deliver(&t, &processed("evt_sftp-cut", &srcs), &[]).await;
    match &r {
        vehicle_connect::delivery::files::UploadResult::Retryable { reason, .. }
            if reason == "ConnectionLost" || reason == "Timeout" => {}
        other => panic!("expected a retryable ConnectionLost or Timeout, got {other:?}"),
    }
    let dir = server.root().join("in");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let names = files_under(&dir);
    // Renames come after every file is stored: no final name from this attempt.
    assert!(names.iter().all(|n| n.starts_with(".vc-tmp-")), "{names:?}");
    assert!(!names.is_empty(), "the cut attempt stored nothing at all");

    // The retry, straight to the server on a new session, removes the dead attempt's
    // temporaries before storing its own.
    let direct = target(endpoint(&server), with_metadata(rules("/upload/in")));
    let r = up
        .deliver(&direct, &processed("evt_sftp-cut", &srcs), &[])
        .await;
    expect_uploaded(&r, 5);
    check_files(&dir, &srcs, "jpg", true);
}
