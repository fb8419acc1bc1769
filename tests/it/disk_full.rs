//! A full disk, for real: the data dir is a small tmpfs (mounting needs root, as in CI; the
//! tests fail, never skip, without it). The store must refuse writes clearly while the disk is
//! full, reopen its file by itself once space is back, and lose nothing it acknowledged.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::TOKEN;
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;
use kube::api::Api;
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;
use vehicle_connect::store::{
    AcceptOutcome, DB_FILE, NewEvent, Store, StoreError, StoreHealth, StoreOptions,
};

const TARGET: &str = "webhook/ns/full";

/// A tmpfs mounted at a fresh directory, unmounted (lazily, in case a process still holds a
/// file) when dropped.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} failed; these tests need root (CI runs as root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir,
            _parent: parent,
        }
    }

    /// Writes a filler file until the filesystem says it is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull, "{err}");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn event(id: &str) -> NewEvent {
    // Bodies of some size, so redb runs out of the room its file already has quickly.
    let pad = "x".repeat(4000);
    NewEvent {
        client: "c".into(),
        id: id.to_owned(),
        body: format!(r#"{{"id":"{id}","pad":"{pad}"}}"#).into_bytes(),
        lane: "veh-1".to_owned(),
        event_type: "vehicle.processed",
        targets: vec![TARGET.to_owned()],
    }
}

async fn accept_one(store: &Store, id: &str) -> Result<u64, StoreError> {
    let out = store.accept(vec![event(id)]).await?;
    match out[..] {
        [AcceptOutcome::New { seq }] => Ok(seq),
        _ => panic!("{id}: expected New, got {out:?}"),
    }
}

/// Accepts until the disk refuses; returns the error and the refused id. What was accepted
/// goes to `acked`.
async fn accept_until_full(store: &Store, acked: &mut Vec<(String, u64)>) -> (StoreError, String) {
    for i in 0..10_000 {
        let id = format!("fill-{i}");
        match accept_one(store, &id).await {
            Ok(seq) => acked.push((id, seq)),
            Err(e) => return (e, id),
        }
    }
    panic!("the store kept accepting on a full disk");
}

/// `writers` callers accept side by side (so group commits carry several requests) until each
/// is refused once; returns the first error. What was accepted goes to `acked`, what was
/// refused to `refused`.
async fn accept_concurrently_until_refused(
    store: &Store,
    writers: usize,
    acked: &mut Vec<(String, u64)>,
    refused: &mut Vec<String>,
) -> StoreError {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ok = Vec::new();
            for i in 0..10_000 {
                let id = format!("w{w}-{i}");
                match accept_one(&store, &id).await {
                    Ok(seq) => ok.push((id, seq)),
                    Err(e) => return (ok, id, e),
                }
            }
            panic!("the store kept accepting on a full disk");
        });
    }
    let mut first = None;
    while let Some(done) = tasks.join_next().await {
        let (ok, id, e) = done.unwrap();
        acked.extend(ok);
        refused.push(id);
        assert!(e.is_io(), "{e:?}");
        first.get_or_insert(e);
    }
    first.unwrap()
}

/// Every acknowledged event is stored and pending; nothing refused is.
fn assert_all_kept(store: &Store, acked: &[(String, u64)], refused: &[String]) {
    let pending: Vec<u64> = store
        .pending_for(TARGET)
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    for (id, seq) in acked {
        assert_eq!(store.seq_of("c", id).unwrap(), Some(*seq), "{id} lost");
        assert!(pending.contains(seq), "{id} no longer pending");
        assert!(store.event_body(*seq).unwrap().is_some(), "{id} body lost");
    }
    for id in refused {
        assert_eq!(
            store.seq_of("c", id).unwrap(),
            None,
            "{id} was refused, yet stored"
        );
    }
}

/// Polls `f` every 100 ms until it gives `Some` (timeout `secs`).
async fn eventually<T>(secs: u64, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out ({secs}s): {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refuses_while_the_disk_is_full_and_recovers_by_itself() {
    let fs = Tmpfs::mount("8m");
    let store = Store::open(&fs.dir.join("data"), StoreOptions::default()).unwrap();
    let mut acked = Vec::new();
    for i in 0..50 {
        let id = format!("before-{i}");
        let seq = accept_one(&store, &id).await.unwrap();
        acked.push((id, seq));
    }

    // Full but for a little room, which concurrent callers then use up: the write that hits
    // the wall is a group commit of several of them.
    let filler = fs.fill();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 512 * 1024).unwrap();
    drop(f);
    let mut refused = Vec::new();
    let err = accept_concurrently_until_refused(&store, 16, &mut acked, &mut refused).await;
    let first_refused = refused.remove(0);
    assert!(err.is_io() && err.is_storage_full(), "{err:?}");
    assert!(store.stats().largest_batch > 1, "{:?}", store.stats());
    eprintln!("concurrent callers on a filling disk: {:?}", store.stats());
    assert!(err.retry_after().unwrap() >= Duration::from_secs(1));
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(
        matches!(
            store.health(),
            StoreHealth::Degraded {
                storage_full: true,
                ..
            }
        ),
        "{:?}",
        store.health()
    );

    // Still full: refused, promptly (no caller hangs on a full disk). A reopened file may
    // still fit a write in room the failed one took, which then is acknowledged and kept.
    let mut in_a_row = 0;
    for i in 0..200 {
        let id = format!("full-{i}");
        let t = Instant::now();
        match accept_one(&store, &id).await {
            Ok(seq) => {
                acked.push((id, seq));
                in_a_row = 0;
            }
            Err(e) => {
                assert!(e.is_storage_full(), "{e:?}");
                refused.push(id);
                in_a_row += 1;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        if in_a_row == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(in_a_row, 10, "a full disk kept taking writes");
    // Refused without trying: a failed write would cost another close and repairing reopen.
    assert_eq!(store.stats().failed_commits, 1, "{:?}", store.stats());
    eprintln!(
        "full disk: {} acknowledged in all, {} refused",
        acked.len(),
        refused.len() + 1
    );
    // The writer reopens the file by itself (redb repairs it), so reads work again even while
    // the disk is still full.
    eventually(20, "reads while the disk is full", async || {
        store.seq_of("c", &acked[0].0).ok().flatten()
    })
    .await;

    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let seq = eventually(30, "a write after space is back", async || {
        accept_one(&store, "after-1").await.ok()
    })
    .await;
    eprintln!("first commit {:?} after space was freed", freed.elapsed());
    acked.push(("after-1".to_owned(), seq));
    assert_eq!(store.health(), StoreHealth::Healthy);
    // The first id the full disk refused is taken now, as new.
    acked.push((
        first_refused.clone(),
        accept_one(&store, &first_refused).await.unwrap(),
    ));

    assert_all_kept(&store, &acked, &refused);
    assert_eq!(store.stats().events, acked.len() as u64);
    // And on disk: a fresh open of the file sees the same.
    drop(store);
    let store = Store::open(&fs.dir.join("data"), StoreOptions::default()).unwrap();
    assert_all_kept(&store, &acked, &refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_reopen_its_file_fails_health_after_the_bound() {
    let fs = Tmpfs::mount("8m");
    let data = fs.dir.join("data");
    let options = StoreOptions {
        unhealthy_after: Duration::from_secs(2),
        ..StoreOptions::default()
    };
    let store = Store::open(&data, options).unwrap();
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        acked.push((id.clone(), accept_one(&store, &id).await.unwrap()));
    }
    let filler = fs.fill();
    let (err, _) = accept_until_full(&store, &mut acked).await;
    assert!(err.is_storage_full(), "{err:?}");

    // The file vanishes from under the store (a volume gone): a directory in its place makes
    // every reopen fail. A full disk alone never fails health; this must, after the bound.
    let moved = data.join("moved.redb");
    std::fs::rename(data.join(DB_FILE), &moved).unwrap();
    std::fs::create_dir(data.join(DB_FILE)).unwrap();
    let started = Instant::now();
    let (reason, failed_after) = eventually(30, "health Failed", async || {
        // Writes make an open file notice the disk again; their errors are expected.
        let e = accept_one(&store, "while-gone").await.unwrap_err();
        assert!(e.is_io(), "{e:?}");
        assert!(e.retry_after().is_some());
        match store.health() {
            StoreHealth::Failed { reason, .. } => Some((reason, started.elapsed())),
            _ => None,
        }
    })
    .await;
    eprintln!("health Failed after {failed_after:?}: {reason}");
    assert!(failed_after >= Duration::from_secs(2), "{failed_after:?}");
    assert!(reason.contains("directory"), "{reason}");
    assert_eq!(store.health().level(), 2);

    // The file comes back and the disk has room: the store recovers without a restart.
    std::fs::remove_dir(data.join(DB_FILE)).unwrap();
    std::fs::rename(&moved, data.join(DB_FILE)).unwrap();
    std::fs::remove_file(&filler).unwrap();
    let seq = eventually(30, "a write after the file is back", async || {
        accept_one(&store, "after-1").await.ok()
    })
    .await;
    acked.push(("after-1".to_owned(), seq));
    assert_eq!(store.health(), StoreHealth::Healthy);
    assert_all_kept(&store, &acked, &["while-gone".to_owned()]);
}

// ---------------------------------------------------------------------------------------------
// End to end: the operator as a real process, the real control plane, a real receiver.

async fn post(client: &reqwest::Client, base: &str, body: &Value) -> reqwest::Response {
    client
        .post(format!("{base}/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn store_state(metrics: &str) -> Option<i64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("vehicle_connect_store_state "))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_answers_507_while_the_disk_is_full_and_delivers_every_202() {
    let cp = ControlPlane::shared();
    cp.install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let client_id = "dealer-diskfull";
    let scope = Scope::new("diskfull");
    let ns = scope.namespace(cp, "diskfull", client_id).await;
    let kube = cp.client().await.unwrap();
    let receiver = Receiver::start(None).await;

    // The data dir is the tmpfs itself; the operator's token file and log are beside it.
    let parent = cp.dir.join(format!("diskfull-{}", std::process::id()));
    std::fs::create_dir_all(&parent).unwrap();
    let fs = Tmpfs::mount("8m");
    let data = parent.join("data");
    std::os::unix::fs::symlink(&fs.dir, &data).unwrap();
    let op = crate::support::process::start_with(
        cp,
        data.clone(),
        &scope,
        &["--store-unhealthy-after-seconds", "3"],
    )
    .await;
    let base = op.url("");

    apply_value(
        &kube,
        &ns.name,
        json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": "dms" },
            "spec": {
                "url": receiver.url("dms"), "clientId": client_id,
                "events": ["vehicle.processed"],
                "retry": { "maxAttempts": 20, "initialBackoffSeconds": 1, "maxBackoffSeconds": 2 }
            }
        }),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns.name);
    wait_for(&api, "dms", "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await;

    let http = reqwest::Client::new();
    let pad = "x".repeat(4000);
    let ev = |id: &str| {
        json!({
            "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": client_id, "userId": "u-1",
            "data": { "vehicle": { "id": "veh-1", "vin": "WVWZZZ1JZXW000001" }, "pad": pad }
        })
    };
    let mut accepted: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for i in 0..20 {
        let id = format!("before-{i}");
        let r = post(&http, &base, &ev(&id)).await;
        assert_eq!(r.status().as_u16(), 202, "{id}");
        accepted.push(id);
    }

    // Full: posts are refused with 507 and Retry-After, nothing stored.
    let filler = fs.fill();
    let mut i = 0;
    let (retry_after, body) = loop {
        let id = format!("full-{i}");
        i += 1;
        assert!(i < 5_000, "the operator kept answering 202 on a full disk");
        let r = post(&http, &base, &ev(&id)).await;
        match r.status().as_u16() {
            202 => accepted.push(id),
            507 => {
                refused.push(id);
                let ra = r.headers()["retry-after"].to_str().unwrap().to_owned();
                break (
                    ra,
                    serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap(),
                );
            }
            s => panic!("{id}: unexpected {s}: {}", r.text().await.unwrap()),
        }
    };
    assert!(retry_after.parse::<u64>().unwrap() >= 1, "{retry_after}");
    assert_eq!(body["error"], "storage_full", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted"),
        "{body}"
    );
    for n in 0..5 {
        let id = format!("still-full-{n}");
        let r = post(&http, &base, &ev(&id)).await;
        assert_eq!(r.status().as_u16(), 507, "{id}");
        assert!(r.headers().contains_key("retry-after"));
        refused.push(id);
    }
    // Live (a restart would not free the disk), and says why; the gauge says degraded.
    let (code, text) = get(&http, &op.url("/healthz")).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("degraded"), "{text}");
    let (_, metrics) = get(&http, &op.url("/metrics")).await;
    assert_eq!(store_state(&metrics), Some(1), "{metrics}");

    // The file vanishes (a volume gone): reopening fails, and after the bound liveness fails.
    let moved = fs.dir.join("moved.redb");
    std::fs::rename(fs.dir.join(DB_FILE), &moved).unwrap();
    std::fs::create_dir(fs.dir.join(DB_FILE)).unwrap();
    let text = eventually(30, "/healthz 503", async || {
        let id = format!("gone-{i}");
        i += 1;
        let r = post(&http, &base, &ev(&id)).await;
        let s = r.status().as_u16();
        assert!(s == 503 || s == 507, "{id}: {s}");
        assert!(r.headers().contains_key("retry-after"));
        refused.push(id);
        let (code, text) = get(&http, &op.url("/healthz")).await;
        (code == 503).then_some(text)
    })
    .await;
    assert!(text.contains("cannot reopen"), "{text}");
    let (_, metrics) = get(&http, &op.url("/metrics")).await;
    assert_eq!(store_state(&metrics), Some(2), "{metrics}");

    // Space and file back: no restart, the next posts are accepted and /healthz is ok.
    std::fs::remove_dir(fs.dir.join(DB_FILE)).unwrap();
    std::fs::rename(&moved, fs.dir.join(DB_FILE)).unwrap();
    std::fs::remove_file(&filler).unwrap();
    eventually(30, "202 after space is back", async || {
        let id = format!("after-{i}");
        i += 1;
        let r = post(&http, &base, &ev(&id)).await;
        match r.status().as_u16() {
            202 => {
                accepted.push(id);
                Some(())
            }
            503 | 507 => {
                refused.push(id);
                None
            }
            s => panic!("{id}: {s}"),
        }
    })
    .await;
    for n in 0..10 {
        let id = format!("after-ok-{n}");
        assert_eq!(post(&http, &base, &ev(&id)).await.status().as_u16(), 202);
        accepted.push(id);
    }
    let (code, text) = get(&http, &op.url("/healthz")).await;
    assert_eq!((code, text.as_str()), (200, "ok"));
    let (_, metrics) = get(&http, &op.url("/metrics")).await;
    assert_eq!(store_state(&metrics), Some(0), "{metrics}");

    // Every 202 arrives; nothing refused does.
    let delivered = |r: &Receiver| -> std::collections::BTreeSet<String> {
        r.received_on("dms")
            .iter()
            .filter_map(|x| x.body["id"].as_str().map(str::to_owned))
            .collect()
    };
    eventually(60, "every accepted event delivered", async || {
        let got = delivered(&receiver);
        accepted.iter().all(|id| got.contains(id)).then_some(())
    })
    .await;
    let got = delivered(&receiver);
    let leaked: Vec<&String> = refused.iter().filter(|id| got.contains(*id)).collect();
    assert!(
        leaked.is_empty(),
        "refused events were delivered: {leaked:?}"
    );
    eprintln!(
        "{} accepted and delivered, {} refused",
        accepted.len(),
        refused.len()
    );
    for line in op.log_text().lines().filter(|l| l.contains("store")) {
        eprintln!("operator: {line}");
    }
    drop(op);
}
