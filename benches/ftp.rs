//! FTP benchmark (`make bench`), in one run on loopback:
//! (a) the limit: a plain suppaftp loop storing the same images on the same local server,
//!     over as many sessions as the FtpConnection may open;
//! (b) vehicle-connect (operator process: ingest, image download over HTTP, naming, upload
//!     under a temporary name, rename, metadata) uploading N vehicles × 8 images, in the
//!     `files` and the `zip` layout;
//! (c) 400 FtpConnections to 400 accounts active at once, one vehicle each;
//! with MB/s, ratios, vehicles/s and the operator's RSS. Prints figures, asserts nothing.
//! Sizes: VC_BENCH_VEHICLES (default 200), VC_BENCH_IMAGE_KIB (default 256),
//! VC_BENCH_FTP_CONNECTIONS (default 400).

mod support;
use support::{env_usize, rss_mib};

#[path = "../tests/support/ftp_server.rs"]
#[allow(dead_code)]
mod ftp_server;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use futures::{StreamExt, stream};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::ftp::FtpProtocol;
use vehicle_connect::delivery::files::ftp::{FtpEndpoint, connect};

const TOKEN: &str = "bench-token";
const IMAGES: u32 = 8;
const SESSIONS: u32 = 4;

fn count_files(dir: &std::path::Path, suffix: &str) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += count_files(&p, suffix);
            } else if p
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.ends_with(suffix) && !f.starts_with(".vc-tmp"))
            {
                n += 1;
            }
        }
    }
    n
}

async fn wait_files(
    dir: &std::path::Path,
    suffix: &str,
    n: usize,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    while count_files(dir, suffix) < n {
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(start.elapsed())
}

fn event(client: &str, user: &str, i: usize, img_port: u16) -> Value {
    let images: Vec<_> = (1..=IMAGES)
        .map(|n| json!({ "index": n, "url": format!("http://127.0.0.1:{img_port}/img/{n}.jpg"), "contentType": "image/jpeg" }))
        .collect();
    json!({ "id": format!("evt_{client}_{i:06}"), "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
        "clientId": client, "userId": user,
        "data": { "vehicle": { "id": format!("veh-{i}"), "vin": format!("VIN{i:014}"), "stockNumber": format!("S{i}") },
                  "user": { "id": user, "name": "Bench" }, "images": images } })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let vehicles = env_usize("VC_BENCH_VEHICLES", 200);
    let kib = env_usize("VC_BENCH_IMAGE_KIB", 256);
    let conns = env_usize("VC_BENCH_FTP_CONNECTIONS", 400);
    let image: Arc<Vec<u8>> = Arc::new((0..kib * 1024).map(|i| (i * 7 % 251) as u8).collect());
    let mb = (vehicles * IMAGES as usize * kib * 1024) as f64 / 1e6;
    println!(
        "FTP benchmark: {vehicles} vehicles × {IMAGES} images × {kib} KiB = {mb:.0} MB per case, {SESSIONS} sessions, loopback, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let app = Router::new()
        .route(
            "/img/{n}",
            get(
                |State(img): State<Arc<Vec<u8>>>, Path(_n): Path<String>| async move {
                    img.as_ref().clone()
                },
            ),
        )
        .with_state(image.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let img_port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut builder = ftp_server::FtpServer::builder().account("bench", "bench-pw");
    for a in 0..conns {
        builder = builder.account(&format!("acct{a}"), &format!("pw{a}"));
    }
    let server = builder.start().await?;
    let ep = FtpEndpoint {
        host: "127.0.0.1".into(),
        port: server.port(),
        protocol: FtpProtocol::Ftp,
        username: "bench".into(),
        password: "bench-pw".into(),
        ca_pem: None,
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(30),
        passive: true,
        epsv: false,
        nat_workaround: true,
        ssh: Default::default(),
    };
    let guard = vehicle_connect::ssrf::TargetGuard::new(vec!["127.0.0.0/8".parse()?]);

    // (a) the limit: SESSIONS sessions storing the same bytes, no download, no rename.
    let start = Instant::now();
    let per = vehicles.div_ceil(SESSIONS as usize);
    let mut tasks = Vec::new();
    for s in 0..SESSIONS as usize {
        let (ep, image, guard) = (ep.clone(), image.clone(), guard.clone());
        tasks.push(tokio::spawn(async move {
            let mut session = connect(&ep, &guard).await.expect("connect");
            let dir = format!("/limit{s}");
            let _ = session.stream_mut().mkdir(&dir).await;
            for v in (s * per)..((s + 1) * per).min(vehicles) {
                for n in 1..=IMAGES {
                    let mut r = image.as_slice();
                    session
                        .stream_mut()
                        .put_file(format!("{dir}/V{v}_{n:02}.jpg"), &mut r)
                        .await
                        .expect("put");
                }
            }
            let _ = session.quit().await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let limit = mb / start.elapsed().as_secs_f64();
    println!("(a) limit, plain suppaftp loop, 8 files per vehicle: {limit:.1} MB/s");
    // The zip layout writes one archive per vehicle: its limit stores one archive-sized file.
    let archive: Arc<Vec<u8>> = Arc::new(
        image
            .iter()
            .copied()
            .cycle()
            .take(image.len() * IMAGES as usize)
            .collect(),
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SESSIONS as usize {
        let (ep, archive, guard) = (ep.clone(), archive.clone(), guard.clone());
        tasks.push(tokio::spawn(async move {
            let mut session = connect(&ep, &guard).await.expect("connect");
            let dir = format!("/limitzip{s}");
            let _ = session.stream_mut().mkdir(&dir).await;
            for v in (s * per)..((s + 1) * per).min(vehicles) {
                let mut r = archive.as_slice();
                session
                    .stream_mut()
                    .put_file(format!("{dir}/V{v}.zip"), &mut r)
                    .await
                    .expect("put");
            }
            let _ = session.quit().await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let limit_zip = mb / start.elapsed().as_secs_f64();
    println!(
        "(a) limit, plain suppaftp loop, 1 archive-sized file per vehicle: {limit_zip:.1} MB/s"
    );

    // The control plane and the operator.
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await?;
    let client = cp.client().await?;
    let ns = cp
        .namespace_with_annotations("ftp-bench", &[("connect.vehicles.io/clients", "*")])
        .await?;
    let pp = PatchParams::apply("vc-bench").force();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    let ftpc: Api<vehicle_connect::api::FtpConnection> = Api::namespaced(client.clone(), &ns.name);
    let data = tempfile::tempdir()?;
    std::fs::write(data.path().join("tokens"), format!("{TOKEN}\n"))?;
    let api_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let log = std::fs::File::create(cp.dir.join("operator-ftp-bench.log"))?;
    let mut op = Command::new(env!("CARGO_BIN_EXE_vehicle-connect"))
        .args([
            "run",
            "--allow-targets",
            "127.0.0.0/8",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
        ])
        .arg("--data-dir")
        .arg(data.path().join("store"))
        .arg("--ingest-token-file")
        .arg(data.path().join("tokens"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let pid = op.id();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("http://127.0.0.1:{api_port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "operator not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ingest = format!("http://127.0.0.1:{api_port}/v1/events");
    let post_all = |events: Vec<Value>| {
        let (http, ingest) = (http.clone(), ingest.clone());
        async move {
            stream::iter(events.chunks(50).map(|c| c.to_vec()).collect::<Vec<_>>())
                .map(|batch| {
                    let (http, ingest) = (http.clone(), ingest.clone());
                    async move {
                        let r = http
                            .post(&ingest)
                            .bearer_auth(TOKEN)
                            .header("content-type", "application/json")
                            .body(serde_json::to_vec(&batch).expect("json"))
                            .send()
                            .await
                            .expect("post");
                        assert_eq!(r.status(), 202);
                    }
                })
                .buffer_unordered(4)
                .for_each(|_| async {})
                .await;
        }
    };
    let wait_ready = |name: String| {
        let ftpc = ftpc.clone();
        async move {
            loop {
                if let Ok(c) = ftpc.get(&name).await
                    && c.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    secrets
        .patch(
            "bench",
            &pp,
            &Patch::Apply(
                json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "bench" },
        "stringData": { "username": "bench", "password": "bench-pw" } }),
            ),
        )
        .await?;

    // (b) files and zip layouts.
    let mut figures = Vec::new();
    for layout in ["files", "zip"] {
        let client_id = format!("bench-{layout}");
        let name = format!("bench-{layout}");
        ftpc.patch(&name, &pp, &Patch::Apply(json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
            "metadata": { "name": name }, "spec": { "host": "127.0.0.1", "port": server.port(), "clientId": client_id,
            "credentialsSecretRef": { "name": "bench" }, "maxConnections": SESSIONS,
            "rules": { "baseDirectory": format!("/vc-{layout}"), "layout": layout } } }))).await?;
        wait_ready(name).await;
        let events: Vec<Value> = (0..vehicles)
            .map(|i| event(&client_id, "u-1", i, img_port))
            .collect();
        let start = Instant::now();
        post_all(events).await;
        let (suffix, n) = if layout == "files" {
            (".jpg", vehicles * IMAGES as usize)
        } else {
            (".zip", vehicles)
        };
        match wait_files(
            &server.path(&format!("/vc-{layout}")),
            suffix,
            n,
            Duration::from_secs(600),
        )
        .await
        {
            Some(_) => {
                let t = start.elapsed().as_secs_f64();
                let rate = mb / t;
                let lim = if layout == "zip" { limit_zip } else { limit };
                println!(
                    "(b) vehicle-connect, {layout:5} layout: {vehicles} vehicles in {t:.1}s = {rate:.1} MB/s ({:.0}% of its limit), {:.1} vehicles/s; RSS {:.0} MiB",
                    100.0 * rate / lim,
                    vehicles as f64 / t,
                    rss_mib(pid, "VmRSS:")
                );
                figures.push((layout, rate, lim));
            }
            None => println!("(b) vehicle-connect, {layout} layout: not done in 600s"),
        }
    }

    // (c) 400 connections at once, each its own account, one vehicle each (user-level).
    stream::iter(0..conns)
        .map(|a| {
            let (secrets, ftpc, pp) = (secrets.clone(), ftpc.clone(), pp.clone());
            let port = server.port();
            async move {
                secrets.patch(&format!("acct{a}"), &pp, &Patch::Apply(json!({ "apiVersion": "v1", "kind": "Secret",
                    "metadata": { "name": format!("acct{a}") }, "stringData": { "username": format!("acct{a}"), "password": format!("pw{a}") } }))).await?;
                ftpc.patch(&format!("many-{a:03}"), &pp, &Patch::Apply(json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                    "metadata": { "name": format!("many-{a:03}") }, "spec": { "host": "127.0.0.1", "port": port, "clientId": "bench-many",
                    "userIds": [format!("u-{a}")], "credentialsSecretRef": { "name": format!("acct{a}") },
                    "rules": { "baseDirectory": format!("/many/{a}") } } }))).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .for_each(|r| async move { if let Err(e) = r { eprintln!("create: {e}") } })
        .await;
    for a in 0..conns {
        wait_ready(format!("many-{a:03}")).await;
    }
    let events: Vec<Value> = (0..conns)
        .map(|a| event("bench-many", &format!("u-{a}"), a, img_port))
        .collect();
    let start = Instant::now();
    post_all(events).await;
    let many = wait_files(
        &server.path("/many"),
        ".jpg",
        conns * IMAGES as usize,
        Duration::from_secs(600),
    )
    .await;
    let peak = rss_mib(pid, "VmHWM:");
    match many {
        Some(_) => {
            let t = start.elapsed().as_secs_f64();
            println!(
                "(c) {conns} FtpConnections at once: {conns} vehicles in {t:.1}s ({:.1} vehicles/s, {:.1} MB/s); operator RSS now {:.0} MiB, peak {peak:.0} MiB (aim: < 256 MiB)",
                conns as f64 / t,
                (conns * IMAGES as usize * kib * 1024) as f64 / 1e6 / t,
                rss_mib(pid, "VmRSS:")
            );
        }
        None => println!("(c) {conns} FtpConnections: not done in 600s"),
    }
    println!(
        "RESULT {}",
        figures
            .iter()
            .map(|(l, r, lim)| format!(
                "{l}: {r:.1} MB/s vs its limit {lim:.1} MB/s = {:.0}%",
                100.0 * r / lim
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!("RESULT operator peak RSS {peak:.0} MiB");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = op.wait();
    server.stop().await;
    Ok(())
}
