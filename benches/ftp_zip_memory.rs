//! Memory of one FTP delivery with large vehicles (`cargo bench --bench ftp_zip_memory`):
//! the Uploader, in this process, uploads one vehicle of VC_BENCH_ZIP_IMAGES (default 60)
//! images of VC_BENCH_ZIP_IMAGE_MIB (default 10) MiB, in the `zip` and then the `files`
//! layout, to vsftpd (a separate process) on loopback; the images come from an HTTP server in
//! this process that serves one shared buffer. Prints the process RSS before and its peak
//! during each delivery (sampled every 5 ms): the growth is what the delivery holds. Needs
//! root and vsftpd, like the vsftpd tests. Asserts only that the deliveries succeed.

mod support;
use support::{env_usize, rss_mib};

#[path = "../tests/support/peer_script.rs"]
mod peer_script;
#[path = "../tests/support/vsftpd.rs"]
#[allow(dead_code)]
mod vsftpd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use serde_json::json;
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, Layout};
use vehicle_connect::delivery::files::{UploadResult, Uploader};
use vehicle_connect::endpoint::FtpEndpoint;
use vehicle_connect::ingest::envelope::validate;
use vehicle_connect::routing::FtpTarget;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};
use vsftpd::{Vsftpd, VsftpdTls};

/// Highest VmRSS seen while `running`, in MiB.
fn sample_peak(running: Arc<AtomicBool>) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let pid = std::process::id();
        let mut peak = 0f64;
        while running.load(Ordering::Relaxed) {
            peak = peak.max(rss_mib(pid, "VmRSS:"));
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("VC_BENCH_ZIP_IMAGES", 60);
    let mib = env_usize("VC_BENCH_ZIP_IMAGE_MIB", 10);
    let server = Vsftpd::start("bench", "bench-pw", VsftpdTls::None)?;
    // Incompressible-looking bytes, one buffer for every image (Bytes clones share it).
    let image = Bytes::from(
        (0..mib * 1024 * 1024)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let body = image.clone();
    let app = Router::new().route(
        "/img/{n}",
        get(move || {
            let b = body.clone();
            async move { b }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let uploader = Uploader::new(
        TargetGuard::new(parse_allow_list("127.0.0.0/8").map_err(anyhow::Error::msg)?),
        (mib as u64 + 1) << 20,
    )?;
    let pid = std::process::id();
    println!(
        "FTP delivery memory: 1 vehicle x {n} images x {mib} MiB = {} MiB, vsftpd on loopback",
        n * mib
    );
    for layout in [Layout::Zip, Layout::Files] {
        let images: Vec<_> = (1..=n)
            .map(|i| json!({"index": i, "url": format!("http://127.0.0.1:{port}/img/{i}.jpg"), "bytes": image.len()}))
            .collect();
        let ev = validate(
            json!({"id": format!("evt_mem_{layout:?}"), "type": "vehicle.processed",
                "timestamp": "2026-11-27T10:15:30Z", "clientId": "bench",
                "data": {"vehicle": {"id": "veh-1", "vin": format!("MEM{layout:?}")}, "images": images}}),
            "",
        )
        .map_err(|e| anyhow::anyhow!("bad event: {e:?}"))?;
        let target = FtpTarget {
            endpoint: FtpEndpoint {
                host: "127.0.0.1".into(),
                port: server.port(),
                protocol: FtpProtocol::Ftp,
                username: "bench".into(),
                password: "bench-pw".into(),
                ca_pem: None,
                connect_timeout: Duration::from_secs(10),
                command_timeout: Duration::from_secs(60),
                passive: true,
                epsv: false,
                nat_workaround: true,
                ssh: Default::default(),
            },
            rules: FtpRules {
                base_directory: format!("/mem-{layout:?}"),
                layout,
                ..FtpRules::default()
            },
            retry: Default::default(),
            max_connections: 1,
        };
        let before = rss_mib(pid, "VmRSS:");
        let running = Arc::new(AtomicBool::new(true));
        let sampler = sample_peak(running.clone());
        let start = Instant::now();
        let result = uploader.deliver(&target, &ev, &[]).await;
        let took = start.elapsed();
        running.store(false, Ordering::Relaxed);
        let peak = sampler.join().unwrap_or(f64::NAN);
        match &result {
            UploadResult::Uploaded { files, bytes, .. } => println!(
                "RESULT {layout:?} layout: {files} files, {:.0} MiB in {:.1}s; RSS before {before:.0} MiB, peak {peak:.0} MiB, growth {:.0} MiB",
                *bytes as f64 / 1048576.0,
                took.as_secs_f64(),
                peak - before
            ),
            other => anyhow::bail!("{layout:?} delivery failed: {other:?}\n{}", server.log()),
        }
        let _ = std::fs::remove_dir_all(server.path(&format!("/mem-{layout:?}")));
    }
    Ok(())
}
