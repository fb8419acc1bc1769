//! `delivery::files::Uploader` end to end: images served by a real HTTP server on
//! 127.0.0.1, uploaded to a real FTP server (libunftp in process, and Debian's vsftpd, plain
//! and FTPS), checked on the server's disk.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::ftp_server::FtpServer;
use crate::support::vsftpd::{Vsftpd, VsftpdTls};
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, Layout, MetadataFile, OnExisting};
use vehicle_connect::delivery::files::{UploadResult, Uploader};
use vehicle_connect::endpoint::FtpEndpoint;
use vehicle_connect::ingest::Envelope;
use vehicle_connect::ingest::envelope::validate;
use vehicle_connect::routing::FtpTarget;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

const USER: &str = "dealer";
const PASSWORD: &str = "upload-s3cret";
pub(crate) const VIN: &str = "WVWZZZ1JZXW000001";
pub(crate) const KB: usize = 1024;

// ---------------------------------------------------------------------------------------
// Image server

/// Image name → (bytes, content type).
type Files = HashMap<String, (Vec<u8>, String)>;

#[derive(Clone, Default)]
struct ImageStore {
    files: Arc<Mutex<Files>>,
    redirects: Arc<Mutex<HashMap<String, String>>>,
    hits: Arc<AtomicUsize>,
}

/// Serves `/img/{name}` from memory, `/status/{code}/{name}` with that status and
/// `/redirect/{name}` as a 302 to wherever the test says.
pub(crate) struct Images {
    addr: SocketAddr,
    store: ImageStore,
}

impl Images {
    pub(crate) async fn start() -> Images {
        Images::start_on("127.0.0.1").await
    }

    async fn start_on(ip: &str) -> Images {
        let store = ImageStore::default();
        let app = Router::new()
            .route("/img/{name}", get(serve_image))
            .route("/status/{code}/{name}", get(serve_status))
            .route("/redirect/{name}", get(serve_redirect))
            .with_state(store.clone());
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Images { addr, store }
    }

    /// Adds an image and returns its URL.
    pub(crate) fn add(&self, name: &str, data: &[u8], content_type: &str) -> String {
        self.store
            .files
            .lock()
            .unwrap()
            .insert(name.to_string(), (data.to_vec(), content_type.to_string()));
        format!("http://{}/img/{name}", self.addr)
    }

    fn status_url(&self, code: u16, name: &str) -> String {
        format!("http://{}/status/{code}/{name}", self.addr)
    }

    fn redirect_url(&self, name: &str, location: &str) -> String {
        self.store
            .redirects
            .lock()
            .unwrap()
            .insert(name.to_string(), location.to_string());
        format!("http://{}/redirect/{name}", self.addr)
    }

    fn hits(&self) -> usize {
        self.store.hits.load(Ordering::Relaxed)
    }
}

async fn serve_image(State(store): State<ImageStore>, UrlPath(name): UrlPath<String>) -> Response {
    store.hits.fetch_add(1, Ordering::Relaxed);
    match store.files.lock().unwrap().get(&name) {
        Some((data, ct)) => ([(header::CONTENT_TYPE, ct.clone())], data.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve_redirect(
    State(store): State<ImageStore>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    store.hits.fetch_add(1, Ordering::Relaxed);
    let to = store.redirects.lock().unwrap().get(&name).cloned().unwrap();
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn serve_status(
    State(store): State<ImageStore>,
    UrlPath((code, _)): UrlPath<(u16, String)>,
) -> Response {
    store.hits.fetch_add(1, Ordering::Relaxed);
    StatusCode::from_u16(code).unwrap().into_response()
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill(&mut v[..]);
    v
}

pub(crate) fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// One source image of a test vehicle.
pub(crate) struct Src {
    pub(crate) index: u32,
    pub(crate) url: String,
    pub(crate) content_type: Option<String>,
    pub(crate) data: Vec<u8>,
    /// What the event says; `None` leaves the field out.
    pub(crate) sha256: Option<String>,
}

/// `n` random images of `size` bytes, JPEG unless the name says otherwise.
pub(crate) fn jpegs(images: &Images, tag: &str, n: u32, size: usize) -> Vec<Src> {
    (1..=n)
        .map(|i| {
            let data = random_bytes(size);
            let url = images.add(&format!("{tag}-{i}.jpg"), &data, "image/jpeg");
            Src {
                index: i,
                url,
                content_type: Some("image/jpeg".into()),
                sha256: Some(sha256(&data)),
                data,
            }
        })
        .collect()
}

pub(crate) fn vehicle_event(id: &str, ty: &str, vehicle: Value, srcs: &[Src]) -> Envelope {
    let imgs: Vec<Value> = srcs
        .iter()
        .map(|s| {
            let mut v = json!({"index": s.index, "url": s.url, "bytes": s.data.len()});
            if let Some(ct) = &s.content_type {
                v["contentType"] = json!(ct);
            }
            if let Some(h) = &s.sha256 {
                v["sha256"] = json!(h);
            }
            v
        })
        .collect();
    let body = json!({
        "id": id, "type": ty, "timestamp": "2026-11-27T10:15:30Z",
        "clientId": "dealer-123", "userId": "u-42",
        "data": {
            "vehicle": vehicle,
            "user": {"id": "u-42", "name": "Ana Pérez", "email": "ana@dealer-123.example"},
            "images": imgs,
        }
    });
    // The ingest API's own validation: these are events it would accept.
    validate(body, "").unwrap_or_else(|e| panic!("bad test event: {e:?}"))
}

pub(crate) fn vehicle(vin: &str) -> Value {
    json!({"id": "veh-9", "vin": vin, "stockNumber": "A1234", "make": "Volkswagen",
           "model": "Golf", "year": 2021})
}

pub(crate) fn processed(id: &str, srcs: &[Src]) -> Envelope {
    vehicle_event(id, "vehicle.processed", vehicle(VIN), srcs)
}

pub(crate) fn deleted(id: &str, vehicle: Value) -> Envelope {
    vehicle_event(id, "vehicle.deleted", vehicle, &[])
}

// ---------------------------------------------------------------------------------------
// Targets and checks

fn endpoint(port: u16, protocol: FtpProtocol, ca: Option<&str>) -> FtpEndpoint {
    FtpEndpoint {
        host: "127.0.0.1".to_string(),
        port,
        protocol,
        username: USER.to_string(),
        password: PASSWORD.to_string(),
        ca_pem: ca.map(|c| c.as_bytes().to_vec()),
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(10),
        passive: true,
        epsv: false,
        nat_workaround: true,
        ssh: Default::default(),
    }
}

fn target(port: u16, rules: FtpRules) -> FtpTarget {
    FtpTarget {
        endpoint: endpoint(port, FtpProtocol::Ftp, None),
        rules,
        retry: Default::default(),
        max_connections: 2,
    }
}

pub(crate) fn rules(base: &str) -> FtpRules {
    FtpRules {
        base_directory: base.to_string(),
        ..FtpRules::default()
    }
}

pub(crate) fn with_metadata(mut r: FtpRules) -> FtpRules {
    r.metadata = Some(MetadataFile {
        file_name: "{vin}.json".to_string(),
    });
    r
}

pub(crate) fn uploader() -> Uploader {
    Uploader::new(
        TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap()),
        16 * 1024 * 1024,
    )
    .unwrap()
}

async fn ftp_server() -> FtpServer {
    FtpServer::start(USER, PASSWORD).await.unwrap()
}

#[track_caller]
pub(crate) fn expect_uploaded(r: &UploadResult, files: u32) -> u64 {
    match r {
        UploadResult::Uploaded {
            files: f, bytes, ..
        } if *f == files => *bytes,
        other => panic!("expected Uploaded with {files} files, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn expect_failure(r: &UploadResult, retryable: bool, reason: &str) -> String {
    match (r, retryable) {
        (
            UploadResult::Retryable {
                reason: got,
                message,
                ..
            },
            true,
        )
        | (
            UploadResult::Permanent {
                reason: got,
                message,
                ..
            },
            false,
        ) if got == reason => {
            assert!(
                !message.contains(PASSWORD),
                "password in message: {message}"
            );
            message.clone()
        }
        _ => panic!(
            "expected {} {reason}, got {r:?}",
            if retryable { "Retryable" } else { "Permanent" }
        ),
    }
}

/// Every regular file under `root`, as paths relative to it, sorted.
pub(crate) fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[track_caller]
pub(crate) fn assert_same_bytes(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        sha256(&got),
        sha256(expected),
        "{}: {} bytes on disk, {} expected",
        path.display(),
        got.len(),
        expected.len()
    );
}

pub(crate) fn read_zip(path: &Path) -> Vec<(String, Vec<u8>, zip::CompressionMethod)> {
    let file = std::fs::File::open(path).unwrap();
    let mut z = zip::ZipArchive::new(file).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            (f.name().unwrap().to_string(), data, f.compression())
        })
        .collect()
}

/// Checks the `files` layout result in `dir` (a host path): default names, same bytes,
/// optional metadata, no temporaries.
pub(crate) fn check_files(dir: &Path, srcs: &[Src], ext: &str, metadata: bool) {
    for s in srcs {
        assert_same_bytes(&dir.join(format!("{VIN}_{:02}.{ext}", s.index)), &s.data);
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.iter().all(|n| !n.starts_with(".vc-tmp-")),
        "temporaries left: {names:?}"
    );
    let expected = srcs.len() + usize::from(metadata);
    assert_eq!(names.len(), expected, "{names:?}");
    assert_eq!(dir.join(format!("{VIN}.json")).exists(), metadata);
}

// ---------------------------------------------------------------------------------------
// A proxy that cuts the cable

/// Forwards an FTP control connection and its passive data connections (rewriting PASV
/// replies to its own listeners), and drops every open connection on [`CutProxy::cut`] or
/// once `cut_after` data bytes went through: a network failure in the middle of a transfer.
struct CutProxy {
    port: u16,
    generation: watch::Sender<u64>,
    _task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(server_port: u16, cut_after: Option<usize>) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (generation, _) = watch::channel(0u64);
        let budget = Arc::new(AtomicUsize::new(cut_after.unwrap_or(usize::MAX)));
        let gen_tx = generation.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let gen_tx = gen_tx.clone();
                let budget = budget.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                        return;
                    };
                    control(client, server, gen_tx, budget).await;
                });
            }
        });
        CutProxy {
            port,
            generation,
            _task: task,
        }
    }

    /// Drops every connection open now; later ones go through.
    fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Resolves when the generation moves past `at`.
async fn cut_signal(mut rx: watch::Receiver<u64>, at: u64) {
    let _ = rx.wait_for(|g| *g != at).await;
}

async fn control(
    client: TcpStream,
    server: TcpStream,
    gen_tx: watch::Sender<u64>,
    budget: Arc<AtomicUsize>,
) {
    let rx = gen_tx.subscribe();
    let at = *rx.borrow();
    let (mut client_r, mut client_w) = client.into_split();
    let (server_r, mut server_w) = server.into_split();
    let up = async { tokio::io::copy(&mut client_r, &mut server_w).await };
    let down = async {
        let mut lines = BufReader::new(server_r);
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if let Some(rest) = line.strip_prefix("227 ") {
                let nums: Vec<u16> = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap())
                    .collect();
                let data_port = nums[4] * 256 + nums[5];
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let p = l.local_addr().unwrap().port();
                tokio::spawn(data(l, data_port, gen_tx.clone(), at, budget.clone()));
                line = format!(
                    "227 Entering Passive Mode (127,0,0,1,{},{})\r\n",
                    p / 256,
                    p % 256
                );
            }
            if client_w.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut_signal(rx, at) => {}
    }
}

async fn data(
    listener: TcpListener,
    server_port: u16,
    gen_tx: watch::Sender<u64>,
    at: u64,
    budget: Arc<AtomicUsize>,
) {
    let rx = gen_tx.subscribe();
    let transfer = async {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
            return;
        };
        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        // Uploads flow client → server; count those bytes against the budget. Listings flow
        // the other way, at the same time.
        let up = async {
            let mut buf = vec![0u8; 16 * KB];
            loop {
                let n = match client_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let left = budget.load(Ordering::SeqCst);
                if n >= left {
                    budget.store(usize::MAX, Ordering::SeqCst);
                    let _ = server_w.write_all(&buf[..left]).await;
                    gen_tx.send_modify(|g| *g += 1);
                    return;
                }
                if left != usize::MAX {
                    budget.store(left - n, Ordering::SeqCst);
                }
                if server_w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = server_w.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
            let _ = client_w.shutdown().await;
        };
        tokio::join!(up, down);
    };
    tokio::select! {
        _ = transfer => {}
        _ = cut_signal(rx, at) => {}
    }
}

// ---------------------------------------------------------------------------------------
// libunftp

#[tokio::test]
async fn files_layout_writes_default_names_same_bytes_and_metadata_last() {
    let server = ftp_server().await;
    let images = Images::start().await;
    // Three ways to tell the extension: URL path, contentType only, neither (jpg).
    let png = random_bytes(300 * KB);
    let webp = random_bytes(200 * KB);
    let plain = random_bytes(250 * KB);
    let srcs = vec![
        Src {
            index: 2,
            url: images.add("two.png", &png, "image/png"),
            content_type: None,
            sha256: Some(sha256(&png)),
            data: png,
        },
        Src {
            index: 1,
            url: images.add("one", &webp, "image/webp"),
            content_type: Some("image/webp".into()),
            sha256: Some(sha256(&webp)),
            data: webp,
        },
        Src {
            index: 3,
            url: images.add("three", &plain, "application/octet-stream"),
            content_type: None,
            sha256: None,
            data: plain,
        },
    ];
    let t = target(server.port(), with_metadata(rules("/in")));
    let up = uploader();
    let r = up.deliver(&t, &processed("evt_files-1", &srcs), &[]).await;
    let bytes = expect_uploaded(&r, 4);

    let dir = server.path("/in");
    assert_same_bytes(&dir.join(format!("{VIN}_01.webp")), &srcs[1].data);
    assert_same_bytes(&dir.join(format!("{VIN}_02.png")), &srcs[0].data);
    assert_same_bytes(&dir.join(format!("{VIN}_03.jpg")), &srcs[2].data);
    assert_eq!(
        files_under(server.root()),
        vec![
            format!("in/{VIN}.json"),
            format!("in/{VIN}_01.webp"),
            format!("in/{VIN}_02.png"),
            format!("in/{VIN}_03.jpg"),
        ]
    );
    let meta_bytes = std::fs::read(dir.join(format!("{VIN}.json"))).unwrap();
    let image_bytes: usize = srcs.iter().map(|s| s.data.len()).sum();
    assert_eq!(bytes, (image_bytes + meta_bytes.len()) as u64);

    let meta: Value = serde_json::from_slice(&meta_bytes).unwrap();
    assert_eq!(meta["id"], "evt_files-1");
    assert_eq!(meta["type"], "vehicle.processed");
    assert_eq!(meta["timestamp"], "2026-11-27T10:15:30Z");
    assert_eq!(meta["clientId"], "dealer-123");
    assert_eq!(meta["userId"], "u-42");
    assert_eq!(meta["vehicle"]["vin"], VIN);
    assert_eq!(meta["vehicle"]["stockNumber"], "A1234");
    assert_eq!(meta["user"]["name"], "Ana Pérez");
    let listed = meta["images"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for (entry, (index, ext, src)) in listed.iter().zip([
        (1, "webp", &srcs[1]),
        (2, "png", &srcs[0]),
        (3, "jpg", &srcs[2]),
    ]) {
        assert_eq!(entry["index"], index);
        assert_eq!(entry["fileName"], format!("{VIN}_{index:02}.{ext}"));
        assert_eq!(entry["bytes"], src.data.len());
        assert_eq!(entry["sha256"], sha256(&src.data));
    }

    // The metadata file, the commit marker, is the newest file.
    let mtime = |p: PathBuf| std::fs::metadata(p).unwrap().modified().unwrap();
    let meta_time = mtime(dir.join(format!("{VIN}.json")));
    for s in ["01.webp", "02.png", "03.jpg"] {
        assert!(mtime(dir.join(format!("{VIN}_{s}"))) <= meta_time);
    }
}

#[tokio::test]
async fn zip_layout_holds_the_images_in_index_order_stored() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let mut srcs = jpegs(&images, "zip", 5, 200 * KB);
    // The event lists them out of order; the archive must not.
    srcs.reverse();
    let mut r = with_metadata(rules("out"));
    r.layout = Layout::Zip;
    let t = target(server.port(), r);
    let result = uploader()
        .deliver(&t, &processed("evt_zip-1", &srcs), &[])
        .await;
    expect_uploaded(&result, 2);

    assert_eq!(
        files_under(server.root()),
        vec![format!("out/{VIN}.json"), format!("out/{VIN}.zip")]
    );
    let entries = read_zip(&server.path(&format!("out/{VIN}.zip")));
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    let expected: Vec<String> = (1..=5).map(|i| format!("{VIN}_{i:02}.jpg")).collect();
    assert_eq!(names, expected);
    for (name, data, method) in &entries {
        assert_eq!(*method, zip::CompressionMethod::Stored, "{name}");
        let index: u32 = name[VIN.len() + 1..VIN.len() + 3].parse().unwrap();
        let src = srcs.iter().find(|s| s.index == index).unwrap();
        assert_eq!(sha256(data), sha256(&src.data), "{name}");
    }
    let meta: Value =
        serde_json::from_slice(&std::fs::read(server.path(&format!("out/{VIN}.json"))).unwrap())
            .unwrap();
    assert_eq!(meta["archive"], format!("{VIN}.zip"));
    assert_eq!(meta["images"][0]["fileName"], format!("{VIN}_01.jpg"));
    assert_eq!(meta["images"][4]["index"], 5);
}

#[tokio::test]
async fn directory_templates_create_nested_directories() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "dirs", 2, 100 * KB);
    let mut r = rules("/photos/in");
    r.directory = "{make}/{year}/{vin}".to_string();
    r.file_name = "{stock}-{index}.{ext}".to_string();
    let t = target(server.port(), r);
    let up = uploader();
    expect_uploaded(
        &up.deliver(&t, &processed("evt_dirs-1", &srcs), &[]).await,
        2,
    );
    assert_eq!(
        files_under(server.root()),
        vec![
            format!("photos/in/Volkswagen/2021/{VIN}/A1234-1.jpg"),
            format!("photos/in/Volkswagen/2021/{VIN}/A1234-2.jpg"),
        ]
    );
    // A second vehicle reuses the session and its known directories, and gets its own.
    let other = vehicle_event(
        "evt_dirs-2",
        "vehicle.processed",
        json!({"id": "veh-10", "vin": "VIN2", "stockNumber": "B7", "make": "Volkswagen", "year": 2021}),
        &srcs,
    );
    expect_uploaded(&up.deliver(&t, &other, &[]).await, 2);
    assert!(
        server
            .path("photos/in/Volkswagen/2021/VIN2/B7-2.jpg")
            .is_file()
    );
    assert_eq!(up.sessions_opened(), 1);
}

/// VINs and stock numbers that try to leave the base directory, hide, or smuggle controls.
pub(crate) const HOSTILE: [(&str, &str); 4] = [
    ("../../etc", "a/b"),
    ("..", "../.."),
    ("/etc/passwd", "x\u{1}\ny\\z"),
    ("a\u{7f}b:c*d?e", ".hidden"),
];

/// Every file is under `base` in one directory (the stock number), nothing hidden or parent.
#[track_caller]
pub(crate) fn assert_inside(files: &[String], base: &str) {
    for f in files {
        let rest = f
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("{f} escaped the base directory"));
        let parts: Vec<&str> = rest.split('/').collect();
        assert_eq!(parts.len(), 2, "{f}");
        assert!(
            parts
                .iter()
                .all(|p| !p.starts_with('.') && !p.chars().any(char::is_control)),
            "{f}"
        );
    }
}

#[tokio::test]
async fn hostile_vin_and_stock_stay_inside_the_base_directory() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "evil", 2, 50 * KB);
    let mut r = with_metadata(rules("/base/in"));
    r.directory = "{stock}".to_string();
    let t = target(server.port(), r);
    let up = uploader();
    for (i, (vin, stock)) in HOSTILE.into_iter().enumerate() {
        let ev = vehicle_event(
            &format!("evt_evil-{i}"),
            "vehicle.processed",
            json!({"id": "veh-x", "vin": vin, "stockNumber": stock}),
            &srcs,
        );
        let r = up.deliver(&t, &ev, &[]).await;
        expect_uploaded(&r, 3);
    }
    let all = files_under(server.root());
    assert_eq!(all.len(), 12, "{all:#?}");
    assert_inside(&all, "base/in/");
    assert!(!server.root().join("etc").exists());
}

#[tokio::test]
async fn on_existing_skip_fail_and_overwrite() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let first = jpegs(&images, "v1", 2, 100 * KB);
    let second = jpegs(&images, "v2", 2, 120 * KB);
    let up = uploader();
    let mut r = with_metadata(rules("/in"));
    let t = target(server.port(), r.clone());
    expect_uploaded(
        &up.deliver(&t, &processed("evt_ex-1", &first), &[]).await,
        3,
    );
    let dir = server.path("/in");

    r.on_existing = OnExisting::Skip;
    let t = target(server.port(), r.clone());
    let hits = images.hits();
    match up.deliver(&t, &processed("evt_ex-2", &second), &[]).await {
        UploadResult::Skipped { reason } => assert!(reason.contains("exist"), "{reason}"),
        other => panic!("expected Skipped, got {other:?}"),
    }
    assert_eq!(
        images.hits(),
        hits,
        "nothing downloaded when every file exists"
    );
    check_files(&dir, &first, "jpg", true);

    // Skip writes what is missing, and only that.
    std::fs::remove_file(dir.join(format!("{VIN}_02.jpg"))).unwrap();
    let hits = images.hits();
    expect_uploaded(
        &up.deliver(&t, &processed("evt_ex-3", &second), &[]).await,
        1,
    );
    assert_eq!(
        images.hits(),
        hits + 1,
        "only the missing image is downloaded"
    );
    assert_same_bytes(&dir.join(format!("{VIN}_01.jpg")), &first[0].data);
    assert_same_bytes(&dir.join(format!("{VIN}_02.jpg")), &second[1].data);

    r.on_existing = OnExisting::Fail;
    let t = target(server.port(), r.clone());
    let msg = expect_failure(
        &up.deliver(&t, &processed("evt_ex-4", &second), &[]).await,
        false,
        "FileExists",
    );
    assert!(msg.contains(&format!("/in/{VIN}_01.jpg")), "{msg}");
    assert!(msg.contains(&server.addr().to_string()), "{msg}");
    assert_same_bytes(&dir.join(format!("{VIN}_01.jpg")), &first[0].data);

    r.on_existing = OnExisting::Overwrite;
    let t = target(server.port(), r);
    expect_uploaded(
        &up.deliver(&t, &processed("evt_ex-5", &second), &[]).await,
        3,
    );
    check_files(&dir, &second, "jpg", true);
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{VIN}.json"))).unwrap()).unwrap();
    assert_eq!(meta["id"], "evt_ex-5");
}

#[tokio::test]
async fn checksum_mismatch_is_permanent_and_writes_nothing() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let mut srcs = jpegs(&images, "sum", 3, 100 * KB);
    srcs[1].sha256 = Some(sha256(b"something else"));
    let t = target(server.port(), with_metadata(rules("/in")));
    let msg = expect_failure(
        &uploader()
            .deliver(&t, &processed("evt_sum-1", &srcs), &[])
            .await,
        false,
        "ChecksumMismatch",
    );
    assert!(msg.starts_with("image 2 (http://127.0.0.1:"), "{msg}");
    assert!(files_under(server.root()).is_empty());
}

#[tokio::test]
async fn image_server_errors_are_classified_and_write_nothing() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let t = target(server.port(), rules("/in"));
    let up = uploader();
    let mut srcs = jpegs(&images, "st", 2, 10 * KB);

    srcs[1].url = images.status_url(404, "gone.jpg");
    let msg = expect_failure(
        &up.deliver(&t, &processed("evt_st-1", &srcs), &[]).await,
        false,
        "ImageNotFound",
    );
    assert!(msg.contains("404"), "{msg}");

    srcs[1].url = images.status_url(503, "busy.jpg");
    let msg = expect_failure(
        &up.deliver(&t, &processed("evt_st-2", &srcs), &[]).await,
        true,
        "ImageServerError",
    );
    assert!(msg.contains("503"), "{msg}");

    // A body longer than the event declares.
    let mut srcs = jpegs(&images, "size", 1, 10 * KB);
    srcs[0].data.truncate(5 * KB);
    srcs[0].sha256 = None;
    expect_failure(
        &up.deliver(&t, &processed("evt_st-3", &srcs), &[]).await,
        false,
        "ImageSizeMismatch",
    );

    // Larger than the uploader's cap.
    let small = Uploader::new(
        TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap()),
        8 * KB as u64,
    )
    .unwrap();
    let mut big = jpegs(&images, "big", 1, 64 * KB);
    expect_failure(
        &small.deliver(&t, &processed("evt_st-4", &big), &[]).await,
        false,
        "ImageTooLarge",
    );
    big[0].data.clear(); // event without `bytes`: the cap applies while reading
    let ev = {
        let mut ev = processed("evt_st-5", &big);
        ev.data["images"][0]
            .as_object_mut()
            .unwrap()
            .remove("bytes");
        ev
    };
    expect_failure(&small.deliver(&t, &ev, &[]).await, false, "ImageTooLarge");
    // Images stored before the failure were temporaries, and are deleted.
    assert!(
        files_under(server.root()).is_empty(),
        "{:?}",
        files_under(server.root())
    );
}

#[tokio::test]
async fn image_urls_the_guard_refuses_are_permanent() {
    let server = ftp_server().await;
    // The FTP server is on 127.0.0.1, which the guard allows; images on 127.0.0.2 are not.
    let allowed = Images::start().await;
    let forbidden = Images::start_on("127.0.0.2").await;
    let guard = TargetGuard::new(parse_allow_list("127.0.0.1/32").unwrap());
    let up = Uploader::new(guard, 1 << 20).unwrap();
    let t = target(server.port(), rules("/in"));

    let srcs = jpegs(&forbidden, "guard", 1, KB);
    let msg = expect_failure(
        &up.deliver(&t, &processed("evt_guard-1", &srcs), &[]).await,
        false,
        "TargetNotAllowed",
    );
    assert!(msg.starts_with("image 1 (http://127.0.0.2:"), "{msg}");

    // A redirect from an allowed server to a forbidden address is refused too.
    let mut srcs = jpegs(&forbidden, "hop", 1, KB);
    srcs[0].url = allowed.redirect_url("hop.jpg", &srcs[0].url);
    let msg = expect_failure(
        &up.deliver(&t, &processed("evt_guard-2", &srcs), &[]).await,
        false,
        "TargetNotAllowed",
    );
    assert!(msg.contains("127.0.0.2"), "{msg}");
    assert_eq!(allowed.hits(), 1);
    assert_eq!(forbidden.hits(), 0);

    // Redirects within allowed addresses are followed.
    let mut srcs = jpegs(&allowed, "ok", 1, KB);
    let direct = srcs[0].url.clone();
    srcs[0].url = allowed.redirect_url("ok.jpg", &direct);
    expect_uploaded(
        &up.deliver(&t, &processed("evt_guard-3", &srcs), &[]).await,
        1,
    );
    assert!(
        files_under(server.root())
            .iter()
            .all(|f| !f.contains("127.0.0.2"))
    );
}

#[tokio::test]
async fn single_image_events_upload_that_image_without_rewriting_the_vehicle() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let up = uploader();
    let t = target(server.port(), with_metadata(rules("/in")));
    let all = jpegs(&images, "all", 3, 20 * KB);
    expect_uploaded(&up.deliver(&t, &processed("evt_one-1", &all), &[]).await, 4);
    let meta_before = std::fs::read(server.path(&format!("/in/{VIN}.json"))).unwrap();

    let cropped = jpegs(&images, "crop", 2, 30 * KB);
    let ev = vehicle_event(
        "evt_one-2",
        "image.cropped_processed",
        vehicle(VIN),
        &cropped[1..],
    );
    expect_uploaded(&up.deliver(&t, &ev, &[]).await, 1);
    let dir = server.path("/in");
    assert_same_bytes(&dir.join(format!("{VIN}_01.jpg")), &all[0].data);
    assert_same_bytes(&dir.join(format!("{VIN}_02.jpg")), &cropped[1].data);
    assert_same_bytes(&dir.join(format!("{VIN}_03.jpg")), &all[2].data);
    // The metadata still lists the whole vehicle.
    assert_eq!(
        std::fs::read(dir.join(format!("{VIN}.json"))).unwrap(),
        meta_before
    );

    // An archive is never rebuilt from one image.
    let mut z = rules("/zip");
    z.layout = Layout::Zip;
    let r = up.deliver(&target(server.port(), z), &ev, &[]).await;
    assert!(matches!(r, UploadResult::Skipped { .. }), "{r:?}");
    assert!(!server.path("/zip").exists());
}

#[tokio::test]
async fn missing_template_value_is_permanent() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "tpl", 1, KB);
    let mut r = rules("/in");
    r.file_name = "{stock}_{index}.{ext}".to_string();
    let t = target(server.port(), r);
    let ev = vehicle_event(
        "evt_tpl-1",
        "vehicle.processed",
        json!({"id": "veh-9", "vin": VIN}),
        &srcs,
    );
    let msg = expect_failure(
        &uploader().deliver(&t, &ev, &[]).await,
        false,
        "TemplateError",
    );
    assert!(
        msg.contains("rules.fileName") && msg.contains("{stock}"),
        "{msg}"
    );
    assert_eq!(
        images.hits(),
        0,
        "nothing downloaded for a name that cannot render"
    );
}

#[tokio::test]
async fn events_without_images_and_other_types_are_skipped() {
    let server = ftp_server().await;
    let t = target(server.port(), rules("/in"));
    let up = uploader();
    let r = up.deliver(&t, &processed("evt_none-1", &[]), &[]).await;
    assert!(matches!(r, UploadResult::Skipped { .. }), "{r:?}");
    let r = up
        .deliver(&t, &deleted("evt_none-2", vehicle(VIN)), &[])
        .await;
    match r {
        UploadResult::Skipped { reason } => assert!(reason.contains("deleteOnVehicleDeleted")),
        other => panic!("{other:?}"),
    }
    assert_eq!(up.sessions_opened(), 0);
}

#[tokio::test]
async fn closed_port_is_retryable() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let images = Images::start().await;
    let srcs = jpegs(&images, "closed", 1, KB);
    let msg = expect_failure(
        &uploader()
            .deliver(
                &target(port, rules("/in")),
                &processed("evt_cl-1", &srcs),
                &[],
            )
            .await,
        true,
        "ConnectionRefused",
    );
    assert!(msg.contains(&port.to_string()), "{msg}");
}

#[tokio::test]
async fn connection_cut_mid_upload_is_retryable_and_leaves_no_partial_final_file() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let size = 600 * KB;
    let srcs = jpegs(&images, "cut", 4, size);
    // Through image 1 and half of image 2, then the network fails.
    let proxy = CutProxy::start(server.port(), Some(size + size / 2)).await;
    let t = target(proxy.port, with_metadata(rules("/in")));
    let up = uploader();
    let r = up.deliver(&t, &processed("evt_cut-1", &srcs), &[]).await;
    let msg = expect_failure(&r, true, "ConnectionLost");
    assert!(
        msg.contains("/in/.vc-tmp-") && msg.contains("-2 on "),
        "{msg}"
    );

    let dir = server.path("/in");
    // Give the server a moment to finish writing what it received.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let names: Vec<String> = files_under(&dir);
    // Renames come after every file is stored: this attempt left no final name at all.
    assert!(names.iter().all(|n| n.starts_with(".vc-tmp-")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with("-1")), "{names:?}");

    // The retry (straight to the server, a new session) deletes the dead attempt's
    // temporaries before storing its own.
    let direct = target(server.port(), with_metadata(rules("/in")));
    let r = up
        .deliver(&direct, &processed("evt_cut-1", &srcs), &[])
        .await;
    expect_uploaded(&r, 5);
    check_files(&dir, &srcs, "jpg", true);
}

#[tokio::test]
async fn sessions_are_reused_bounded_and_replaced_when_dead() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "pool", 2, 64 * KB);
    let proxy = CutProxy::start(server.port(), None).await;
    let mut t = target(proxy.port, rules("/in"));
    let up = uploader();
    for i in 0..3 {
        let ev = vehicle_event(
            &format!("evt_pool-{i}"),
            "vehicle.processed",
            vehicle(&format!("VIN{i}")),
            &srcs,
        );
        expect_uploaded(&up.deliver(&t, &ev, &[]).await, 2);
    }
    assert_eq!(up.sessions_opened(), 1, "one session for sequential events");
    assert_eq!(up.idle_sessions(), 1);

    // The network drops the idle session: NOOP fails, a new one is opened.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ev = vehicle_event("evt_pool-x", "vehicle.processed", vehicle("VINX"), &srcs);
    expect_uploaded(&up.deliver(&t, &ev, &[]).await, 2);
    assert_eq!(up.sessions_opened(), 2);

    // Eight vehicles at once through at most two sessions.
    t.max_connections = 2;
    let up = uploader();
    let events: Vec<Envelope> = (0..8)
        .map(|i| {
            vehicle_event(
                &format!("evt_par-{i}"),
                "vehicle.processed",
                vehicle(&format!("PAR{i}")),
                &srcs,
            )
        })
        .collect();
    let results = futures::future::join_all(events.iter().map(|e| up.deliver(&t, e, &[]))).await;
    for r in &results {
        expect_uploaded(r, 2);
    }
    assert!(
        up.sessions_opened() <= 2,
        "{} sessions",
        up.sessions_opened()
    );
    assert_eq!(files_under(&server.path("/in")).len(), 2 * 12);
    up.close_idle().await;
    assert_eq!(up.idle_sessions(), 0);
}

#[tokio::test]
async fn idle_sessions_are_closed_after_the_idle_time() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "idle", 1, KB);
    let t = target(server.port(), rules("/in"));
    let up = uploader();
    up.set_session_idle(Duration::from_millis(300));
    expect_uploaded(
        &up.deliver(&t, &processed("evt_idle-1", &srcs), &[]).await,
        1,
    );
    assert_eq!(up.idle_sessions(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.idle_sessions() > 0 {
        assert!(
            Instant::now() < deadline,
            "the idle session was never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_uploaded(
        &up.deliver(&t, &processed("evt_idle-2", &srcs), &[]).await,
        1,
    );
    assert_eq!(up.sessions_opened(), 2);
}

/// The final paths an upload reports, for the record a later deletion gets.
#[track_caller]
fn paths_of(r: &UploadResult) -> Vec<String> {
    match r {
        UploadResult::Uploaded { paths, files, .. } => {
            assert_eq!(paths.len(), *files as usize, "{r:?}");
            paths.clone()
        }
        other => panic!("expected Uploaded, got {other:?}"),
    }
}

#[tokio::test]
async fn vehicle_deleted_removes_the_recorded_files_of_that_vehicle_only() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let up = uploader();
    let mut r = with_metadata(rules("/in"));
    r.delete_on_vehicle_deleted = true;
    let t = target(server.port(), r.clone());
    // Two uploads of the vehicle: the record is what both wrote.
    let first = up
        .deliver(
            &t,
            &processed("evt_del-1", &jpegs(&images, "d1", 3, KB)),
            &[],
        )
        .await;
    expect_uploaded(&first, 4);
    let mut record = paths_of(&first);
    assert_eq!(
        record,
        vec![
            format!("/in/{VIN}_01.jpg"),
            format!("/in/{VIN}_02.jpg"),
            format!("/in/{VIN}_03.jpg"),
            format!("/in/{VIN}.json"),
        ],
        "every final path, metadata last"
    );
    let second = up
        .deliver(
            &t,
            &processed("evt_del-1b", &jpegs(&images, "d1b", 2, KB)),
            &[],
        )
        .await;
    record.extend(paths_of(&second));
    let other = vehicle_event(
        "evt_del-2",
        "vehicle.processed",
        vehicle("OTHERVIN"),
        &jpegs(&images, "d2", 2, KB),
    );
    expect_uploaded(&up.deliver(&t, &other, &[]).await, 3);
    // Not recorded for the vehicle, so kept even though its name starts like the vehicle's.
    std::fs::write(server.path(&format!("/in/{VIN}_notes.txt")), b"keep").unwrap();

    match up
        .deliver(&t, &deleted("evt_del-3", vehicle(VIN)), &record)
        .await
    {
        UploadResult::Deleted {
            files, vin, paths, ..
        } => {
            assert_eq!(files, 4);
            assert_eq!(vin.as_deref(), Some(VIN));
            let mut paths = paths.clone();
            paths.sort();
            let mut want: Vec<String> = record.clone();
            want.sort();
            want.dedup();
            assert_eq!(paths, want);
        }
        other => panic!("expected Deleted, got {other:?}"),
    }
    assert_eq!(
        files_under(&server.path("/in")),
        vec![
            "OTHERVIN.json".to_string(),
            "OTHERVIN_01.jpg".into(),
            "OTHERVIN_02.jpg".into(),
            format!("{VIN}_notes.txt"),
        ]
    );
    // Nothing left to delete; without a record nothing is looked for.
    let res = up
        .deliver(&t, &deleted("evt_del-4", vehicle(VIN)), &record)
        .await;
    assert!(matches!(res, UploadResult::Skipped { .. }), "{res:?}");
    let res = up
        .deliver(&t, &deleted("evt_del-4b", vehicle(VIN)), &[])
        .await;
    assert!(matches!(res, UploadResult::Skipped { .. }), "{res:?}");

    // Zip layout in a per-vehicle directory: archive, metadata and the directory go.
    r.layout = Layout::Zip;
    r.directory = "{vin}".to_string();
    let t = target(server.port(), r);
    let zipped = up
        .deliver(
            &t,
            &processed("evt_del-5", &jpegs(&images, "d3", 2, KB)),
            &[],
        )
        .await;
    expect_uploaded(&zipped, 2);
    assert!(server.path(&format!("/in/{VIN}/{VIN}.zip")).is_file());
    match up
        .deliver(&t, &deleted("evt_del-6", vehicle(VIN)), &paths_of(&zipped))
        .await
    {
        UploadResult::Deleted { files: 2, .. } => {}
        other => panic!("expected Deleted of 2 files, got {other:?}"),
    }
    assert!(!server.path(&format!("/in/{VIN}")).exists());
    // The base directory stays, even when empty.
    assert!(server.path("/in").is_dir());
}

/// Names without separators: `{stock}{index}.{ext}` renders A11.jpg for stock A1 and
/// A12011.jpg for stock A1201, which a pattern for A1 also matches (A1 + index 2011).
#[tokio::test]
async fn deleting_stock_a1_leaves_the_files_of_stock_a1201() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let up = uploader();
    let mut r = rules("/in");
    r.file_name = "{stock}{index}.{ext}".to_string();
    r.delete_on_vehicle_deleted = true;
    let t = target(server.port(), r);
    let stock =
        |s: &str| json!({"id": format!("veh-{s}"), "vin": format!("VIN{s}"), "stockNumber": s});
    let a1 = up
        .deliver(
            &t,
            &vehicle_event(
                "evt_a1",
                "vehicle.processed",
                stock("A1"),
                &jpegs(&images, "a1", 2, KB),
            ),
            &[],
        )
        .await;
    let a1201 = up
        .deliver(
            &t,
            &vehicle_event(
                "evt_a1201",
                "vehicle.processed",
                stock("A1201"),
                &jpegs(&images, "a1201", 2, KB),
            ),
            &[],
        )
        .await;
    expect_uploaded(&a1, 2);
    expect_uploaded(&a1201, 2);
    assert_eq!(
        files_under(&server.path("/in")),
        vec!["A11.jpg", "A12.jpg", "A12011.jpg", "A12012.jpg"]
    );
    match up
        .deliver(&t, &deleted("evt_a1-gone", stock("A1")), &paths_of(&a1))
        .await
    {
        UploadResult::Deleted {
            files: 2, paths, ..
        } => {
            assert_eq!(paths, vec!["/in/A12.jpg", "/in/A11.jpg"]);
        }
        other => panic!("expected Deleted of 2 files, got {other:?}"),
    }
    assert_eq!(
        files_under(&server.path("/in")),
        vec!["A12011.jpg", "A12012.jpg"]
    );
}

/// Event ids that sanitise to the same text (`a:b`, `a_b`) uploaded at once into one
/// directory: each vehicle gets its own bytes (shared temporary names would swap them).
#[tokio::test]
async fn temporaries_of_ids_that_sanitise_alike_do_not_collide() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let up = uploader();
    let mut t = target(server.port(), rules("/in"));
    t.max_connections = 2;
    let (one, two) = (
        jpegs(&images, "colon", 3, 256 * KB),
        jpegs(&images, "under", 3, 256 * KB),
    );
    let ev1 = vehicle_event("a:b", "vehicle.processed", vehicle("VINCOLON"), &one);
    let ev2 = vehicle_event("a_b", "vehicle.processed", vehicle("VINUNDER"), &two);
    for round in 0..3 {
        let (r1, r2) = tokio::join!(up.deliver(&t, &ev1, &[]), up.deliver(&t, &ev2, &[]));
        expect_uploaded(&r1, 3);
        expect_uploaded(&r2, 3);
        for (vin, srcs) in [("VINCOLON", &one), ("VINUNDER", &two)] {
            for s in srcs.iter() {
                assert_same_bytes(
                    &server.path(&format!("/in/{vin}_{:02}.jpg", s.index)),
                    &s.data,
                );
            }
        }
        let names = files_under(&server.path("/in"));
        assert_eq!(names.len(), 6, "round {round}: {names:?}");
    }
}

/// A dead session's temporaries (older than the bound, with our prefix) are deleted by the
/// next session that stores into that directory; fresh ones, legacy ones and other dot files
/// stay.
#[tokio::test]
async fn stale_temporaries_are_deleted_by_the_next_session_to_the_directory() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let dir = server.path("/in/Volkswagen");
    std::fs::create_dir_all(&dir).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = now - 7 * 3600;
    let stale = [
        format!(".vc-tmp-{old}-0123456789abcdef-1a2b3c4d0-1"),
        format!(".vc-tmp-{old}-fedcba9876543210-1a2b3c4d7-json"),
    ];
    let kept = [
        format!(".vc-tmp-{}-0123456789abcdef-1a2b3c4d1-1", now - 60),
        ".vc-tmp-evt_legacy-1".to_string(),
        ".hidden".to_string(),
        "other.jpg".to_string(),
    ];
    for name in stale.iter().chain(&kept) {
        std::fs::write(dir.join(name), b"x").unwrap();
    }
    let mut r = rules("/in");
    r.directory = "{make}".to_string();
    let t = target(server.port(), r);
    let srcs = jpegs(&images, "stale", 2, KB);
    expect_uploaded(
        &uploader()
            .deliver(&t, &processed("evt_stale-1", &srcs), &[])
            .await,
        2,
    );
    let mut want: Vec<String> = kept.to_vec();
    want.extend([format!("{VIN}_01.jpg"), format!("{VIN}_02.jpg")]);
    want.sort();
    assert_eq!(files_under(&dir), want);
}

#[tokio::test]
async fn server_refusals_are_classified_by_reply_code() {
    let server = ftp_server().await;
    let images = Images::start().await;
    let srcs = jpegs(&images, "refuse", 1, KB);
    // A file where the directory should be: MKD fails, then STOR is refused with a 5xx.
    std::fs::write(server.path("/blocked"), b"file").unwrap();
    let t = target(server.port(), rules("/blocked/in"));
    let r = uploader()
        .deliver(&t, &processed("evt_ref-1", &srcs), &[])
        .await;
    let msg = expect_failure(&r, false, "FileUnavailable");
    assert!(msg.contains("/blocked/in/.vc-tmp-"), "{msg}");
    assert!(msg.contains(&server.addr().to_string()), "{msg}");
    assert!(msg.contains("550"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// vsftpd

fn vsftpd(tls: VsftpdTls) -> Vsftpd {
    Vsftpd::start(USER, PASSWORD, tls).unwrap_or_else(|e| panic!("{e:#}"))
}

fn vsftpd_target(server: &Vsftpd, protocol: FtpProtocol, rules: FtpRules) -> FtpTarget {
    FtpTarget {
        endpoint: endpoint(server.port(), protocol, server.ca_pem()),
        rules,
        retry: Default::default(),
        max_connections: 2,
    }
}

#[track_caller]
fn vs_expect_uploaded(server: &Vsftpd, r: &UploadResult, files: u32) {
    if !matches!(r, UploadResult::Uploaded { files: f, .. } if *f == files) {
        panic!(
            "expected Uploaded with {files} files, got {r:?}\nvsftpd log:\n{}",
            server.log()
        );
    }
}

#[tokio::test]
async fn vsftpd_files_zip_overwrite_and_delete() {
    let server = vsftpd(VsftpdTls::None);
    let images = Images::start().await;
    let up = uploader();
    let first = jpegs(&images, "vs1", 3, 300 * KB);
    let second = jpegs(&images, "vs2", 3, 310 * KB);
    let mut r = with_metadata(rules("/dms/in"));
    r.directory = "{make}".to_string();
    r.delete_on_vehicle_deleted = true;
    let t = vsftpd_target(&server, FtpProtocol::Ftp, r.clone());

    let r1 = up.deliver(&t, &processed("evt_vs-1", &first), &[]).await;
    vs_expect_uploaded(&server, &r1, 4);
    let dir = server.path("/dms/in/Volkswagen");
    check_files(&dir, &first, "jpg", true);
    // vsftpd renames over an existing file: overwrite replaces them in place.
    let r2 = up.deliver(&t, &processed("evt_vs-2", &second), &[]).await;
    vs_expect_uploaded(&server, &r2, 4);
    check_files(&dir, &second, "jpg", true);
    let mut record = paths_of(&r1);
    record.extend(paths_of(&r2));

    r.on_existing = OnExisting::Fail;
    let tf = vsftpd_target(&server, FtpProtocol::Ftp, r.clone());
    expect_failure(
        &up.deliver(&tf, &processed("evt_vs-3", &first), &[]).await,
        false,
        "FileExists",
    );

    match up
        .deliver(&t, &deleted("evt_vs-4", vehicle(VIN)), &record)
        .await
    {
        UploadResult::Deleted { files: 4, .. } => {}
        other => panic!("expected Deleted of 4, got {other:?}\n{}", server.log()),
    }
    assert!(!dir.exists(), "the emptied per-make directory is removed");

    let mut z = with_metadata(rules("archives"));
    z.layout = Layout::Zip;
    let tz = vsftpd_target(&server, FtpProtocol::Ftp, z);
    vs_expect_uploaded(
        &server,
        &up.deliver(&tz, &processed("evt_vs-5", &first), &[]).await,
        2,
    );
    let entries = read_zip(&server.path(&format!("archives/{VIN}.zip")));
    assert_eq!(entries.len(), 3);
    for ((name, data, _), src) in entries.iter().zip(&first) {
        assert_eq!(name, &format!("{VIN}_{:02}.jpg", src.index));
        assert_eq!(sha256(data), sha256(&src.data));
    }
    assert_eq!(up.sessions_opened(), 1, "one vsftpd session for everything");
}

#[tokio::test]
async fn vsftpd_explicit_ftps_upload() {
    let server = vsftpd(VsftpdTls::Explicit);
    let images = Images::start().await;
    let srcs = jpegs(&images, "tls", 3, 400 * KB);
    let t = vsftpd_target(&server, FtpProtocol::Ftps, with_metadata(rules("/in")));
    let up = uploader();
    vs_expect_uploaded(
        &server,
        &up.deliver(&t, &processed("evt_tls-1", &srcs), &[]).await,
        4,
    );
    check_files(&server.path("/in"), &srcs, "jpg", true);
    // Again over the pooled TLS session.
    vs_expect_uploaded(
        &server,
        &up.deliver(&t, &processed("evt_tls-2", &srcs), &[]).await,
        4,
    );
    assert_eq!(up.sessions_opened(), 1);
}

#[tokio::test]
async fn vsftpd_implicit_ftps_upload() {
    let server = vsftpd(VsftpdTls::Implicit);
    let images = Images::start().await;
    let srcs = jpegs(&images, "itls", 2, 200 * KB);
    let mut r = rules("/in");
    r.layout = Layout::Zip;
    let t = vsftpd_target(&server, FtpProtocol::FtpsImplicit, r);
    vs_expect_uploaded(
        &server,
        &uploader()
            .deliver(&t, &processed("evt_itls-1", &srcs), &[])
            .await,
        1,
    );
    assert_eq!(read_zip(&server.path(&format!("/in/{VIN}.zip"))).len(), 2);
}

/// Not an assertion: MB/s of the Uploader against a plain suppaftp loop that stores the
/// same bytes to the same server over one session.
#[tokio::test]
async fn vsftpd_upload_throughput_figure() {
    const VEHICLES: usize = 8;
    const PER_VEHICLE: u32 = 8;
    const SIZE: usize = 512 * KB;
    let server = vsftpd(VsftpdTls::None);
    let images = Images::start().await;
    let fleet: Vec<Vec<Src>> = (0..VEHICLES)
        .map(|v| jpegs(&images, &format!("bench{v}"), PER_VEHICLE, SIZE))
        .collect();
    let total = (VEHICLES * PER_VEHICLE as usize * SIZE) as f64;
    let mb_s = |d: Duration| total / d.as_secs_f64() / 1e6;

    let events: Vec<Envelope> = fleet
        .iter()
        .enumerate()
        .map(|(v, srcs)| {
            vehicle_event(
                &format!("evt_bench-{v}"),
                "vehicle.processed",
                vehicle(&format!("BENCH{v}")),
                srcs,
            )
        })
        .collect();
    let mut t1 = vsftpd_target(&server, FtpProtocol::Ftp, rules("/"));
    t1.max_connections = 1;
    let mut t4 = t1.clone();
    t4.max_connections = 4;
    let (up1, up4) = (uploader(), uploader());
    // Best of three: the machine is shared, and the figure is about the code.
    let (mut plain, mut sequential, mut parallel) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..3 {
        // Plain loop: one session, STOR each image under its final name.
        let mut session = vehicle_connect::delivery::files::ftp::connect(
            &endpoint(server.port(), FtpProtocol::Ftp, None),
            &TargetGuard::new(parse_allow_list("127.0.0.0/8").unwrap()),
        )
        .await
        .unwrap();
        let start = Instant::now();
        let stream = session.stream_mut();
        stream.mkdir(format!("/plain{round}")).await.unwrap();
        for (v, srcs) in fleet.iter().enumerate() {
            for s in srcs {
                let mut reader = s.data.as_slice();
                stream
                    .put_file(
                        format!("/plain{round}/V{v}_{:02}.jpg", s.index),
                        &mut reader,
                    )
                    .await
                    .unwrap();
            }
        }
        plain = plain.min(start.elapsed());
        session.quit().await.unwrap();

        t1.rules.base_directory = format!("/seq{round}");
        let start = Instant::now();
        for e in &events {
            vs_expect_uploaded(&server, &up1.deliver(&t1, e, &[]).await, PER_VEHICLE);
        }
        sequential = sequential.min(start.elapsed());

        t4.rules.base_directory = format!("/par{round}");
        let start = Instant::now();
        let results =
            futures::future::join_all(events.iter().map(|e| up4.deliver(&t4, e, &[]))).await;
        parallel = parallel.min(start.elapsed());
        for r in &results {
            vs_expect_uploaded(&server, r, PER_VEHICLE);
        }
    }
    println!(
        "upload figure ({VEHICLES} vehicles x {PER_VEHICLE} images x {} KiB = {:.1} MB, vsftpd on loopback): \
         plain suppaftp loop {:.1} MB/s; Uploader 1 session {:.1} MB/s (ratio {:.2}); \
         Uploader 4 sessions {:.1} MB/s (ratio {:.2}); the Uploader also downloads, hashes, \
         renames and creates directories",
        SIZE / KB,
        total / 1e6,
        mb_s(plain),
        mb_s(sequential),
        plain.as_secs_f64() / sequential.as_secs_f64(),
        mb_s(parallel),
        plain.as_secs_f64() / parallel.as_secs_f64(),
    );
}
