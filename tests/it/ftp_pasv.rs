//! A tenant's FTP server must not steer the operator's data connections: with
//! `natWorkaround: false` the address in a `227` reply must pass the same guard as the control
//! connection, for the login probe and for uploads.
//!
//! The lying server (tests/support/lying_ftp.rs) runs on 127.0.0.1 and the guard allows only
//! 127.0.0.1/32, so a lie naming 127.0.0.9 points at a loopback address outside the allow-list,
//! where a listener records any connection. Lies naming 169.254.169.254 run in a network
//! namespace of their own, where that address is a local one with a listener: even a broken
//! guard could not send a packet off the machine.

use std::net::IpAddr;
use std::time::Duration;

use crate::support::lying_ftp::{LyingFtp, Recorder};
use axum::Router;
use axum::routing::get;
use serde_json::json;
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, MetadataFile};
use vehicle_connect::delivery::files::ftp::{self, FtpEndpoint};
use vehicle_connect::delivery::files::{UploadResult, Uploader};
use vehicle_connect::ingest::envelope::validate;
use vehicle_connect::routing::FtpTarget;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

const PASSWORD: &str = "lying-server-pw";

fn guard(allow: &str) -> TargetGuard {
    TargetGuard::new(parse_allow_list(allow).unwrap())
}

fn endpoint(port: u16, nat_workaround: bool) -> FtpEndpoint {
    FtpEndpoint {
        host: "127.0.0.1".to_string(),
        port,
        protocol: FtpProtocol::Ftp,
        username: "tenant".to_string(),
        password: PASSWORD.to_string(),
        ca_pem: None,
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        passive: true,
        epsv: false,
        nat_workaround,
        ssh: Default::default(),
    }
}

fn target(port: u16, nat_workaround: bool) -> FtpTarget {
    FtpTarget {
        endpoint: endpoint(port, nat_workaround),
        rules: FtpRules {
            base_directory: "/in".to_string(),
            metadata: Some(MetadataFile {
                file_name: "{vin}.json".to_string(),
            }),
            ..FtpRules::default()
        },
        retry: Default::default(),
        max_connections: 1,
    }
}

/// Serves one small JPEG on 127.0.0.1 and returns its URL.
async fn image_server() -> String {
    let app = Router::new().route(
        "/1.jpg",
        get(|| async {
            (
                [("content-type", "image/jpeg")],
                vec![0xffu8, 0xd8, 0xff, 0xd9],
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/1.jpg")
}

async fn upload(uploader: &Uploader, port: u16, nat_workaround: bool) -> UploadResult {
    let url = image_server().await;
    let event = validate(
        json!({
            "id": "evt_pasv-1", "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": "dealer-123", "userId": "u-42",
            "data": {
                "vehicle": {"id": "veh-9", "vin": "WVWZZZ1JZXW000001", "stockNumber": "A1234"},
                "images": [{"index": 1, "url": url, "contentType": "image/jpeg", "bytes": 4}],
            }
        }),
        "",
    )
    .unwrap_or_else(|e| panic!("bad test event: {e:?}"));
    uploader
        .deliver(&target(port, nat_workaround), &event, &[])
        .await
}

/// The failure message of an upload that must have failed.
#[track_caller]
fn failure_message(r: &UploadResult) -> &str {
    match r {
        UploadResult::Retryable { message, .. } | UploadResult::Permanent { message, .. } => {
            assert!(!message.contains(PASSWORD), "{message}");
            message
        }
        other => panic!("expected the upload to fail, got {other:?}"),
    }
}

/// Lets a connection the client might have started reach the recorder before counting.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn probe_refuses_a_pasv_reply_naming_loopback_outside_the_allow_list() {
    let trap = Recorder::bind("127.0.0.9".parse().unwrap()).await;
    let server = LyingFtp::start(trap.addr()).await;
    let err = ftp::probe(&endpoint(server.port(), false), &guard("127.0.0.1/32"))
        .await
        .expect_err("the probe must refuse the lying PASV reply");
    assert_eq!(err.reason(), "TargetNotAllowed", "{err}");
    let msg = err.to_string();
    let want = format!(
        "127.0.0.1:{} asked for a data connection to {}, a loopback address; the operator refuses it unless --allow-targets covers it",
        server.port(),
        trap.addr()
    );
    assert!(msg.starts_with(&want), "{msg}");
    assert!(!msg.contains(PASSWORD), "{msg}");
    settle().await;
    assert_eq!(trap.connections(), 0, "the probe connected to the lie");
    // It asked (so the lie was told) and sent no command that would use a data connection.
    let verbs = server.verbs();
    assert!(verbs.contains(&"PASV".to_string()), "{verbs:?}");
    assert!(!verbs.contains(&"NLST".to_string()), "{verbs:?}");
}

#[tokio::test]
async fn probe_with_the_nat_workaround_does_not_ask_for_the_servers_address() {
    let trap = Recorder::bind("127.0.0.9".parse().unwrap()).await;
    let server = LyingFtp::start(trap.addr()).await;
    ftp::probe(&endpoint(server.port(), true), &guard("127.0.0.1/32"))
        .await
        .unwrap();
    assert!(!server.verbs().contains(&"PASV".to_string()));
    assert_eq!(trap.connections(), 0);
}

#[tokio::test]
async fn upload_refuses_a_pasv_reply_naming_loopback_outside_the_allow_list() {
    let trap = Recorder::bind("127.0.0.9".parse().unwrap()).await;
    let server = LyingFtp::start(trap.addr()).await;
    let uploader = Uploader::new(guard("127.0.0.1/32"), 1024 * 1024).unwrap();
    let r = upload(&uploader, server.port(), false).await;
    let msg = failure_message(&r);
    let want = format!(
        "asked for a data connection to {}, a loopback address; the operator refuses it unless --allow-targets covers it",
        trap.addr()
    );
    assert!(msg.contains(&want), "{msg}");
    settle().await;
    assert_eq!(trap.connections(), 0, "the upload connected to the lie");
    let verbs = server.verbs();
    assert!(verbs.contains(&"PASV".to_string()), "{verbs:?}");
    assert!(!verbs.contains(&"STOR".to_string()), "{verbs:?}");
}

/// The same setup detects a connection: with the lie inside the allow-list the upload follows
/// it (natWorkaround: false keeps its meaning), so the zero counts above are not vacuous.
#[tokio::test]
async fn a_lie_inside_the_allow_list_is_followed() {
    let trap = Recorder::bind("127.0.0.9".parse().unwrap()).await;
    let server = LyingFtp::start(trap.addr()).await;
    let uploader = Uploader::new(guard("127.0.0.0/8"), 1024 * 1024).unwrap();
    let r = upload(&uploader, server.port(), false).await;
    // The lying server never accepts data, so the upload fails, but only after connecting.
    failure_message(&r);
    settle().await;
    assert!(trap.connections() >= 1, "{r:?}");
    assert!(server.verbs().contains(&"STOR".to_string()));
}

/// A lie naming the cloud metadata address is refused before any connect. Runs in a network
/// namespace of its own (root; CI runs as root) in which 169.254.169.254 is a local address with
/// a listener: a regression would show as a recorded connection, and no packet can leave.
#[test]
fn a_lie_naming_the_metadata_address_is_refused_before_any_connect() {
    in_private_network(async {
        let metadata: IpAddr = "169.254.169.254".parse().unwrap();
        let trap = Recorder::bind(metadata).await;
        let server = LyingFtp::start(trap.addr()).await;

        let err = ftp::probe(&endpoint(server.port(), false), &guard("127.0.0.1/32"))
            .await
            .expect_err("the probe must refuse the lying PASV reply");
        assert_eq!(err.reason(), "TargetNotAllowed", "{err}");
        assert!(
            err.to_string().contains(&format!(
                "asked for a data connection to {}, a cloud metadata address",
                trap.addr()
            )),
            "{err}"
        );

        let uploader = Uploader::new(guard("127.0.0.1/32"), 1024 * 1024).unwrap();
        let r = upload(&uploader, server.port(), false).await;
        assert!(
            failure_message(&r).contains("a cloud metadata address"),
            "{r:?}"
        );
        settle().await;
        assert_eq!(trap.connections(), 0, "connected to the metadata address");

        // Control: allowed, the same lie is followed (inside this namespace only).
        let open = Uploader::new(guard("127.0.0.1/32,169.254.169.254/32"), 1024 * 1024).unwrap();
        let r = upload(&open, server.port(), false).await;
        failure_message(&r);
        settle().await;
        assert!(trap.connections() >= 1, "{r:?}");
    });
}

/// Runs `test` on a thread that has entered a new network namespace with only `lo` (up) and
/// 169.254.169.254/32 on it. Fails loudly when namespaces cannot be created.
fn in_private_network<F: std::future::Future<Output = ()> + Send + 'static>(test: F) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread (and what it spawns
        // from here on) into a new network namespace; no memory is involved.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET) failed: {} (this test needs root, as CI has)",
            std::io::Error::last_os_error()
        );
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "169.254.169.254/32", "dev", "lo"][..],
        ] {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
            assert!(status.success(), "ip {args:?}: {status}");
        }
        // Nothing but loopback here: a route to the world would make this test unsafe.
        let routes = std::process::Command::new("ip")
            .args(["route", "show", "default"])
            .output()
            .unwrap();
        assert!(routes.stdout.is_empty(), "a default route in the namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(test);
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
