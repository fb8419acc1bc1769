//! SFTP benchmark (`make bench`), in one run on loopback against Debian's OpenSSH
//! (`scripts/sshd.sh`, needs root):
//! (a) the limit: a plain loop with the same libraries (russh + russh-sftp's own file API:
//!     create, write_all, shutdown) storing the same images, over as many sessions as the
//!     FtpConnection may open;
//! (b) vehicle-connect's `Uploader` uploading N vehicles × 8 images by the rules (image
//!     download over HTTP, naming, temporary name, rename), `files` layout;
//! (c) 400 SFTP sessions held open at once (400 connections, one vehicle each), with the
//!     process's RSS.
//! Prints figures (medians of VC_BENCH_REPS repetitions, ratios from the same repetition),
//! asserts nothing. Sizes: VC_BENCH_VEHICLES (default 100), VC_BENCH_IMAGE_KIB (default
//! 256), VC_BENCH_SFTP_CONNECTIONS (default 400), VC_BENCH_REPS (default 3).

mod support;
use support::{env_usize, rss_mib};

#[path = "../tests/support/peer_script.rs"]
mod peer_script;
#[path = "../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use futures::{StreamExt, stream};
use serde_json::json;
use tokio::io::AsyncWriteExt as _;
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, Layout};
use vehicle_connect::delivery::files::{UploadResult, Uploader};
use vehicle_connect::endpoint::{FtpEndpoint, SshAuth};
use vehicle_connect::ingest::envelope::validate;
use vehicle_connect::routing::FtpTarget;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

const IMAGES: usize = 8;
const SESSIONS: usize = 4;

/// The baseline's client: accepts the loopback server's key without checking (as a loop a
/// developer writes would).
struct Plain;

impl russh::client::Handler for Plain {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// (a) `vehicles` × IMAGES files of `image` over SESSIONS sessions; seconds taken.
async fn plain_loop(server: &sshd::Sshd, image: &Bytes, vehicles: usize, rep: usize) -> f64 {
    let start = Instant::now();
    let per = vehicles.div_ceil(SESSIONS);
    let runs = (0..SESSIONS).map(|s| {
        let image = image.clone();
        let (port, user, password) = (
            server.port(),
            server.user().to_string(),
            server.password().to_string(),
        );
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            tcp.set_nodelay(true).unwrap();
            // The library at its best: the same cipher preference as vehicle-connect.
            let mut config = russh::client::Config::default();
            config.preferred.cipher = std::borrow::Cow::Borrowed(
                vehicle_connect::delivery::files::sftp::PREFERRED_CIPHERS,
            );
            let config = Arc::new(config);
            let mut h = russh::client::connect_stream(config, tcp, Plain)
                .await
                .unwrap();
            assert!(
                h.authenticate_password(user, password)
                    .await
                    .unwrap()
                    .success()
            );
            let ch = h.channel_open_session().await.unwrap();
            ch.request_subsystem(true, "sftp").await.unwrap();
            let sftp = russh_sftp::client::SftpSession::new(ch.into_stream())
                .await
                .unwrap();
            let dir = format!("/upload/plain-{rep}-{s}");
            sftp.create_dir(dir.clone()).await.unwrap();
            for v in 0..per {
                for i in 0..IMAGES {
                    let mut f = sftp.create(format!("{dir}/{v}_{i}.jpg")).await.unwrap();
                    for chunk in image.chunks(64 * 1024) {
                        f.write_all(chunk).await.unwrap();
                    }
                    f.shutdown().await.unwrap();
                }
            }
            let _ = sftp.close().await;
        }
    });
    futures::future::join_all(runs).await;
    start.elapsed().as_secs_f64()
}

fn endpoint(server: &sshd::Sshd) -> FtpEndpoint {
    FtpEndpoint {
        host: "127.0.0.1".into(),
        port: server.port(),
        protocol: FtpProtocol::Sftp,
        username: server.user().into(),
        password: server.password().into(),
        ca_pem: None,
        connect_timeout: Duration::from_secs(30),
        command_timeout: Duration::from_secs(60),
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

fn event(id: &str, vin: &str, images: usize, img_port: u16) -> vehicle_connect::ingest::Envelope {
    let imgs: Vec<_> = (1..=images)
        .map(|i| json!({ "index": i, "url": format!("http://127.0.0.1:{img_port}/img/{vin}-{i}.jpg") }))
        .collect();
    let body = json!({
        "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": "dealer-1", "data": { "vehicle": { "id": vin, "vin": vin }, "images": imgs }
    });
    validate(body, "").unwrap()
}

fn target(endpoint: FtpEndpoint, base: &str) -> FtpTarget {
    FtpTarget {
        endpoint,
        rules: FtpRules {
            base_directory: base.into(),
            layout: Layout::Files,
            ..FtpRules::default()
        },
        retry: Default::default(),
        max_connections: SESSIONS as u32,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vehicles = env_usize("VC_BENCH_VEHICLES", 100);
    let kib = env_usize("VC_BENCH_IMAGE_KIB", 256);
    let conns = env_usize("VC_BENCH_SFTP_CONNECTIONS", 400);
    let reps = env_usize("VC_BENCH_REPS", 3).max(1);
    let server = sshd::Sshd::start(sshd::SshdOptions::default())?;
    let image = Bytes::from(
        (0..kib * 1024)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let served = image.clone();
    let app = Router::new().route(
        "/img/{name}",
        get(move || {
            let b = served.clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let img_port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let mb = (vehicles * IMAGES * image.len()) as f64 / 1e6;
    println!(
        "SFTP benchmark: {vehicles} vehicles × {IMAGES} images of {kib} KiB ({mb:.0} MB) per repetition, {SESSIONS} sessions, OpenSSH on loopback, {reps} repetitions"
    );

    let guard = TargetGuard::new(parse_allow_list("127.0.0.0/8").map_err(anyhow::Error::msg)?);
    let (mut limits, mut ours, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        let limit = mb / plain_loop(&server, &image, vehicles, rep).await;
        let up = Uploader::new(guard.clone(), 64 << 20)?;
        let t = target(endpoint(&server), &format!("/upload/vc-{rep}"));
        let start = Instant::now();
        let results: Vec<UploadResult> = stream::iter(0..vehicles)
            .map(|v| {
                let (up, t) = (up.clone(), t.clone());
                async move {
                    let ev = event(
                        &format!("evt-{rep}-{v}"),
                        &format!("VIN{rep}X{v:06}"),
                        IMAGES,
                        img_port,
                    );
                    up.deliver(&t, &ev, &[]).await
                }
            })
            .buffer_unordered(SESSIONS)
            .collect()
            .await;
        let secs = start.elapsed().as_secs_f64();
        let failed = results
            .iter()
            .filter(|r| !matches!(r, UploadResult::Uploaded { .. }))
            .count();
        if failed > 0 {
            println!(
                "    repetition {rep}: {failed} vehicles not uploaded, e.g. {:?}",
                results
                    .iter()
                    .find(|r| !matches!(r, UploadResult::Uploaded { .. }))
            );
        }
        let got = mb / secs;
        println!(
            "    repetition {rep}: limit {limit:.1} MB/s, vehicle-connect {got:.1} MB/s = {:.0}%",
            100.0 * got / limit
        );
        limits.push(limit);
        ours.push(got);
        ratios.push(got / limit);
        up.close_idle().await;
    }
    println!(
        "(a) limit, plain russh-sftp loop: median {:.1} MB/s\n(b) vehicle-connect Uploader, files layout: median {:.1} MB/s",
        median(&mut limits),
        median(&mut ours)
    );

    // (c) One session per FtpConnection: endpoints that differ in a setting get pools of
    // their own (as two FtpConnections to one server do), each holding its session.
    let up = Uploader::new(guard, 64 << 20)?;
    let pid = std::process::id();
    let before = rss_mib(pid, "VmRSS:");
    let start = Instant::now();
    let failed = stream::iter(0..conns)
        .map(|c| {
            let up = up.clone();
            let mut ep = endpoint(&server);
            ep.connect_timeout = Duration::from_millis(30_000 + c as u64);
            let t = target(ep, &format!("/upload/many/{c}"));
            async move {
                let ev = event(
                    &format!("evt-many-{c}"),
                    &format!("VINM{c:06}"),
                    1,
                    img_port,
                );
                up.deliver(&t, &ev, &[]).await
            }
        })
        // sshd refuses logins beyond MaxStartups (10) in flight; held sessions are unlimited.
        .buffer_unordered(8)
        .filter(|r| futures::future::ready(!matches!(r, UploadResult::Uploaded { .. })))
        .count()
        .await;
    let held = up.idle_sessions();
    let after = rss_mib(pid, "VmRSS:");
    println!(
        "(c) {conns} SFTP connections ({failed} failed) in {:.1} s: {held} sessions held open at once; process RSS {before:.0} -> {after:.0} MiB ({:.0} KiB per session)",
        start.elapsed().as_secs_f64(),
        (after - before) * 1024.0 / held.max(1) as f64
    );
    println!(
        "RESULT sftp: vehicle-connect {:.1} MB/s = {:.0}% of the plain russh-sftp loop (median of {reps} same-repetition ratios; target 80%); {held} sessions at once, process RSS {after:.0} MiB (target 256 MiB)",
        median(&mut ours),
        100.0 * median(&mut ratios)
    );
    up.close_idle().await;
    Ok(())
}
