//! Events in, files out: the operator process, the real control plane, images served over
//! HTTP on 127.0.0.1 and a real FTP server; client-level and user-level connections.

use std::time::{Duration, Instant};

use crate::support::ftp_server::FtpServer;
use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::TOKEN;
use crate::support::scope::Scope;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use kube::api::Api;
use serde_json::json;
use sha2::{Digest, Sha256};
use vc_envtest::ControlPlane;
use vehicle_connect::api::FtpConnection;

fn image(n: u32) -> Vec<u8> {
    (0..150_000u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(n * 7) % 251) as u8)
        .collect()
}

async fn wait_file(path: &std::path::Path) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(b) = std::fs::read(path) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Images over HTTP on 127.0.0.1 (`/img/<vehicle>/<n>.jpg` is [`image`]`(n)`); its port.
async fn serve_images() -> u16 {
    let app = Router::new().route(
        "/img/{veh}/{n}",
        get(|Path((_v, n)): Path<(String, String)>| async move {
            let n: u32 = n.trim_end_matches(".jpg").parse().unwrap_or(0);
            image(n)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_vehicles_land_on_the_ftp_server_by_the_rules() {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let scope = Scope::new("ftp-e2e");
    let ns = scope.namespace(cp, "ftp-e2e", "dealer-ftp").await;
    let client = cp.client().await.unwrap();

    let img_port = serve_images().await;

    let server = FtpServer::start("dealer", "ftp-s3cret").await.unwrap();
    let op = crate::support::process::start(cp, cp.dir.join("ftp-e2e-operator"), &scope).await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ftp" },
        "stringData": { "username": "dealer", "password": "ftp-s3cret" } }),
    )
    .await;
    for (name, extra) in [
        (
            "all-files",
            json!({ "rules": { "baseDirectory": "/files", "directory": "{stock}", "metadata": { "fileName": "{vin}.json" } } }),
        ),
        (
            "ana-zip",
            json!({ "userIds": ["u-ana"], "rules": { "baseDirectory": "/zips", "layout": "zip", "archiveName": "{vin}.zip" } }),
        ),
    ] {
        let mut spec = json!({ "host": "127.0.0.1", "port": server.port(), "clientId": "dealer-ftp",
            "credentialsSecretRef": { "name": "ftp" },
            "retry": { "maxAttempts": 5, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 } });
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        apply_value(
            &client,
            &ns.name,
            json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
            "metadata": { "name": name }, "spec": spec }),
        )
        .await;
    }
    let api: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);
    for name in ["all-files", "ana-zip"] {
        wait_for(&api, name, "Ready", |c| {
            c.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.0 == "True")
        })
        .await;
    }

    let ev = |id: &str, user: &str, vin: &str, stock: &str| {
        let images: Vec<_> = (1..=3u32)
            .map(|n| json!({ "index": n, "url": format!("http://127.0.0.1:{img_port}/img/{vin}/{n}.jpg"),
                             "contentType": "image/jpeg", "sha256": hex(&Sha256::digest(image(n))) }))
            .collect();
        json!({ "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": "dealer-ftp", "userId": user,
            "data": { "vehicle": { "id": format!("veh-{vin}"), "vin": vin, "stockNumber": stock },
                      "user": { "id": user, "name": "Ana Pérez" }, "images": images } })
    };
    let r = reqwest::Client::new()
        .post(op.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(
            json!([
                ev("evt-ftp-1", "u-ana", "VINANA0000000001", "A1"),
                ev("evt-ftp-2", "u-bob", "VINBOB0000000002", "B2")
            ])
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Client-level: both vehicles, one file per image, same bytes, metadata written last.
    for (vin, stock) in [("VINANA0000000001", "A1"), ("VINBOB0000000002", "B2")] {
        let meta = wait_file(&server.path(&format!("/files/{stock}/{vin}.json"))).await;
        let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
        assert_eq!(meta["vehicle"]["vin"], vin, "{meta}");
        for n in 1..=3u32 {
            let got =
                std::fs::read(server.path(&format!("/files/{stock}/{vin}_{n:02}.jpg"))).unwrap();
            assert_eq!(
                Sha256::digest(&got),
                Sha256::digest(image(n)),
                "{vin} image {n} differs"
            );
        }
    }
    // User-level: only Ana's vehicle, as one zip in index order.
    let zip = wait_file(&server.path("/zips/VINANA0000000001.zip")).await;
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "VINANA0000000001_01.jpg",
            "VINANA0000000001_02.jpg",
            "VINANA0000000001_03.jpg"
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !server.path("/zips/VINBOB0000000002.zip").exists(),
        "a user-level connection got another user's vehicle"
    );
    let leftovers: Vec<_> = walk(server.root())
        .into_iter()
        .filter(|p| p.contains(".vc-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Status counts vehicles, files and bytes.
    let c = wait_for(&api, "all-files", "uploaded=2", |c| {
        c.status.as_ref().is_some_and(|s| s.uploaded == 2)
    })
    .await;
    let st = c.status.unwrap();
    assert_eq!(st.files, 8, "3 images + metadata, twice");
    assert!(st.bytes >= 6 * 150_000, "{}", st.bytes);
    let last = st.last_upload.unwrap();
    assert!(last.vin.is_some() && last.files.is_some(), "{last:?}");
    assert!(condition(&st.conditions, "Ready").is_some_and(|c| c.0 == "True"));
    drop(op);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// What the replica tests share: a NATS node, a namespace of `client`, images over HTTP, an
/// FTP server with the account `dealer` and its Secret `ftp`.
struct Replicated {
    cp: &'static ControlPlane,
    nats: vc_envtest::nats::NatsCluster,
    scope: Scope,
    ns: String,
    client: kube::Client,
    img_port: u16,
    server: FtpServer,
    dir: tempfile::TempDir,
}

impl Replicated {
    async fn new(name: &str, client_id: &str) -> Replicated {
        let cp = ControlPlane::shared();
        cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
            .await
            .unwrap();
        let nats = vc_envtest::nats::NatsCluster::single()
            .await
            .expect("nats-server");
        let scope = Scope::new(name);
        let ns = scope.namespace(cp, name, client_id).await.name.clone();
        let client = cp.client().await.unwrap();
        apply_value(
            &client,
            &ns,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ftp" },
            "stringData": { "username": "dealer", "password": "ftp-s3cret" } }),
        )
        .await;
        Replicated {
            cp,
            nats,
            scope,
            ns,
            client,
            img_port: serve_images().await,
            server: FtpServer::start("dealer", "ftp-s3cret").await.unwrap(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An operator process as replica `id`.
    async fn replica(&self, id: &str) -> crate::support::process::OperatorProcess {
        let launch = crate::support::process::replica_launch(&self.nats.urls(), id);
        crate::support::process::start_launch(
            self.cp,
            self.dir.path().join(id),
            &self.scope,
            launch,
        )
        .await
    }

    /// The FtpConnection `files` with `spec` (host, account and retry filled in), once Ready.
    async fn connection(&self, mut spec: serde_json::Value) -> Api<FtpConnection> {
        for (k, v) in [
            ("host", json!("127.0.0.1")),
            ("credentialsSecretRef", json!({ "name": "ftp" })),
            (
                "retry",
                json!({ "maxAttempts": 10, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 }),
            ),
        ] {
            spec[k] = v;
        }
        apply_value(
            &self.client,
            &self.ns,
            json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
            "metadata": { "name": "files" }, "spec": spec }),
        )
        .await;
        let api: Api<FtpConnection> = Api::namespaced(self.client.clone(), &self.ns);
        wait_for(&api, "files", "Ready", |c| {
            c.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.0 == "True")
        })
        .await;
        api
    }

    /// Two images of `vin`, served here.
    fn images(&self, vin: &str) -> Vec<serde_json::Value> {
        (1..=2u32)
            .map(|n| {
                json!({ "index": n, "url": format!("http://127.0.0.1:{}/img/{vin}/{n}.jpg", self.img_port),
                        "contentType": "image/jpeg", "sha256": hex(&Sha256::digest(image(n))) })
            })
            .collect()
    }
}

/// Two replicas on JetStream: replica A uploads a vehicle's files and dies; its partition
/// moves to replica B, which on `vehicle.deleted` removes the files A uploaded. B knows them
/// only from the shared per-vehicle state (the KV bucket `vc-state`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_whose_partition_moves_to_another_replica_has_its_files_removed() {
    let r = Replicated::new("ftp-replicas", "dealer-moved").await;
    let mut a = r.replica("replica-a").await;
    let api = r
        .connection(json!({ "port": r.server.port(), "clientId": "dealer-moved",
            "events": ["vehicle.processed", "vehicle.deleted"],
            "rules": { "baseDirectory": "/moved", "deleteOnVehicleDeleted": true } }))
        .await;
    let vin = "VINMOVED00000001";
    let images = r.images(vin);
    crate::replay::ingest(
        &a,
        vec![json!({ "id": "evt-mv-1", "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": "dealer-moved",
            "data": { "vehicle": { "id": "veh-moved", "vin": vin }, "images": images } })],
    )
    .await;
    let files: Vec<std::path::PathBuf> = (1..=2u32)
        .map(|n| r.server.path(&format!("/moved/{vin}_{n:02}.jpg")))
        .collect();
    for f in &files {
        wait_file(f).await;
    }

    // A dies; B takes its partitions once A's lease has run out, and deletes the vehicle.
    a.kill();
    let b = r.replica("replica-b").await;
    crate::replay::ingest(
        &b,
        vec![json!({ "id": "evt-mv-2", "type": "vehicle.deleted", "timestamp": "2026-11-27T11:00:00Z",
            "clientId": "dealer-moved", "data": { "vehicle": { "id": "veh-moved", "vin": vin } } })],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while files.iter().any(|f| f.exists()) {
        assert!(
            Instant::now() < deadline,
            "replica B left the files replica A uploaded: {:?}\n{}",
            files.iter().filter(|f| f.exists()).collect::<Vec<_>>(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let st = wait_for(&api, "files", "nothing pending", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.uploaded >= 1 && s.pending == 0)
    })
    .await
    .status
    .unwrap();
    assert_eq!(st.failed, 0, "{st:?}");
}

/// Accepts on 127.0.0.1 and forwards each connection to `to`; how many are open at most.
async fn counting_proxy(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (open, most) = (open.clone(), most.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, seen)
}

/// Two replicas on JetStream share an FtpConnection's `maxConnections: 1`: the FTP server
/// (behind a proxy that counts control connections) never sees two sessions at once, while
/// both replicas upload vehicles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_max_connections() {
    use std::sync::atomic::Ordering;
    let r = Replicated::new("ftp-slots", "dealer-slots").await;
    let (proxy, most) = counting_proxy(r.server.port()).await;
    let ops = vec![r.replica("replica-a").await, r.replica("replica-b").await];
    r.connection(
        json!({ "port": proxy, "clientId": "dealer-slots", "maxConnections": 1,
        "rules": { "baseDirectory": "/slots" } }),
    )
    .await;
    // Both own partitions before the vehicles come.
    crate::support::process::wait_partitions_owned(&ops).await;
    // The Ready probe's login is over; count from here.
    most.store(0, Ordering::SeqCst);
    let vins: Vec<String> = (0..16).map(|i| format!("VINSLOTS{i:08}")).collect();
    for (k, half) in vins.chunks(8).enumerate() {
        let events = half
            .iter()
            .map(|vin| {
                let images = r.images(vin);
                json!({ "id": format!("evt-{vin}"), "type": "vehicle.processed",
                    "timestamp": "2026-11-27T10:15:30Z", "clientId": "dealer-slots",
                    "data": { "vehicle": { "id": format!("veh-{vin}"), "vin": vin }, "images": images } })
            })
            .collect();
        crate::replay::ingest(&ops[k], events).await;
    }
    for vin in &vins {
        for n in 1..=2u32 {
            wait_file(&r.server.path(&format!("/slots/{vin}_{n:02}.jpg"))).await;
        }
    }
    let mut by = Vec::new();
    for op in &ops {
        let text = crate::support::process::metrics(op).await;
        by.push(
            text.lines()
                .filter(|l| {
                    l.starts_with("vehicle_connect_deliveries_total{")
                        && l.contains("kind=\"ftp\"")
                        && l.contains("result=\"delivered\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64,
        );
    }
    let delivered: Vec<String> = ops.iter().map(|op| op.log_text()).collect();
    println!(
        "16 vehicles uploaded ({by:?} per replica); at most {} session(s) at once",
        most.load(Ordering::SeqCst)
    );
    assert!(
        by.iter().all(|n| *n > 0),
        "both replicas should upload: {by:?}"
    );
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "maxConnections 1 over both replicas:\n{}\n{}",
        delivered[0],
        delivered[1]
    );
}
