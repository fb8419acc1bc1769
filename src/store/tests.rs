use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::*;

const A: &str = "webhook/ns/a";
const B: &str = "ftp/ns/b";

fn ev(id: &str, lane: &str, targets: &[&str]) -> NewEvent {
    NewEvent {
        client: "c".to_owned(),
        id: id.to_owned(),
        body: format!(r#"{{"id":"{id}","vehicleId":"{lane}"}}"#).into_bytes(),
        lane: lane.to_owned(),
        event_type: "vehicle.processed",
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn seqs(outcomes: &[AcceptOutcome]) -> Vec<u64> {
    outcomes.iter().map(AcceptOutcome::seq).collect()
}

fn update(target: &str, seq: u64, at: u64, outcome: Outcome) -> DeliveryUpdate {
    DeliveryUpdate {
        target: target.to_owned(),
        seq,
        outcome,
        at_unix_ms: at,
        log: None,
    }
}

#[test]
fn store_error_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<StoreError>();
    check::<Store>();
}

#[tokio::test]
async fn accept_then_reopen_keeps_events_pending_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let first = {
        let store = open(&data);
        let out = store
            .accept(vec![ev("e1", "v1", &[A, B]), ev("e2", "v2", &[A])])
            .await
            .unwrap();
        assert!(matches!(out[0], AcceptOutcome::New { .. }));
        assert!(matches!(out[1], AcceptOutcome::New { .. }));
        assert!(out[0].seq() < out[1].seq());
        seqs(&out)
    };

    let store = open(&data);
    let pending = store.pending().unwrap();
    let keys: Vec<(&str, u64, &str, &str)> = pending
        .iter()
        .map(|p| {
            (
                p.target.as_str(),
                p.seq,
                p.event_id.as_str(),
                p.lane.as_str(),
            )
        })
        .collect();
    // Ordered by (target, seq).
    assert_eq!(
        keys,
        vec![
            (B, first[0], "e1", "v1"),
            (A, first[0], "e1", "v1"),
            (A, first[1], "e2", "v2"),
        ]
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
    );
    assert!(pending.iter().all(|p| p.attempts == 0));
    assert_eq!(
        store.event_body(first[0]).unwrap().unwrap(),
        ev("e1", "v1", &[]).body
    );
    let stored = store.event(first[1]).unwrap().unwrap();
    assert_eq!((stored.id.as_str(), stored.lane.as_str()), ("e2", "v2"));
    assert!(stored.received_unix_ms > 0);
    assert_eq!(store.event_body(9999).unwrap(), None);
    assert_eq!(store.seq_of("c", "e2").unwrap(), Some(first[1]));

    // The id index survived too, and numbering continues past the old seqs.
    let again = store
        .accept(vec![ev("e1", "v1", &[A]), ev("e3", "v1", &[A])])
        .await
        .unwrap();
    assert_eq!(again[0], AcceptOutcome::Duplicate { seq: first[0] });
    assert!(matches!(again[1], AcceptOutcome::New { seq } if seq > first[1]));

    let stats = store.stats();
    assert_eq!((stats.events, stats.pending), (3, 4));
    assert_eq!(store.counters(A).unwrap().pending, 3);
    assert_eq!(store.counters(B).unwrap().pending, 1);
}

#[tokio::test]
async fn duplicates_within_a_batch_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![
            ev("x", "v", &[A]),
            ev("y", "v", &[A]),
            ev("x", "v", &[A, B]),
        ])
        .await
        .unwrap();
    let (x, y) = (out[0].seq(), out[1].seq());
    assert_eq!(
        out,
        vec![
            AcceptOutcome::New { seq: x },
            AcceptOutcome::New { seq: y },
            AcceptOutcome::Duplicate { seq: x },
        ]
    );
    let out = store
        .accept(vec![ev("y", "v", &[B]), ev("z", "v", &[])])
        .await
        .unwrap();
    assert_eq!(out[0], AcceptOutcome::Duplicate { seq: y });
    assert!(matches!(out[1], AcceptOutcome::New { seq } if seq > y));
    // The duplicate's different targets changed nothing.
    let pending = store.pending().unwrap();
    assert_eq!(pending.len(), 2);
    assert!(pending.iter().all(|p| p.target == A));
    assert_eq!(store.counters(B).unwrap(), TargetCounters::default());
}

#[tokio::test]
async fn a_target_listed_twice_gets_one_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.accept(vec![ev("e", "v", &[A, A])]).await.unwrap();
    assert_eq!(store.pending().unwrap().len(), 1);
    assert_eq!(store.counters(A).unwrap().pending, 1);
}

#[tokio::test]
async fn event_without_targets_is_stored_for_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let seq = store.accept(vec![ev("lonely", "v", &[])]).await.unwrap()[0].seq();
    assert!(store.pending().unwrap().is_empty());
    assert!(store.event_body(seq).unwrap().is_some());
    let again = store.accept(vec![ev("lonely", "v", &[A])]).await.unwrap();
    assert_eq!(again, vec![AcceptOutcome::Duplicate { seq }]);
    assert!(store.pending().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_with_one_id_get_one_new() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.spawn(async move {
            // Unique events as well, so the shared id lands in mixed batches.
            let out = store
                .accept(vec![
                    ev("shared", "v", &[A]),
                    ev(&format!("own-{i}"), "v", &[A]),
                ])
                .await
                .unwrap();
            out[0]
        });
    }
    let mut outcomes = Vec::new();
    while let Some(res) = tasks.join_next().await {
        outcomes.push(res.unwrap());
    }
    let new: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, AcceptOutcome::New { .. }))
        .collect();
    assert_eq!(new.len(), 1, "{outcomes:?}");
    let seq = new[0].seq();
    assert!(outcomes.iter().all(|o| o.seq() == seq));
    assert_eq!(store.pending().unwrap().len(), 101);
    assert_eq!(store.stats().events, 101);
}

#[tokio::test]
async fn record_transitions_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![ev("e1", "v", &[A, B]), ev("e2", "v", &[A])])
        .await
        .unwrap();
    let (e1, e2) = (out[0].seq(), out[1].seq());

    store
        .record(vec![update(
            A,
            e1,
            100,
            Outcome::Retry {
                next_attempt_unix_ms: 500,
                why: Why::new("HttpStatus", "HTTP 503"),
            },
        )])
        .await
        .unwrap();
    let p = &store.pending_for(A).unwrap()[0];
    assert_eq!((p.seq, p.attempts, p.next_attempt_unix_ms), (e1, 1, 500));
    let c = store.counters(A).unwrap();
    assert_eq!(
        c,
        TargetCounters {
            pending: 2,
            consecutive_failures: 1,
            last_failure: Some(LastFailure {
                event_id: "e1".into(),
                at_unix_ms: 100,
                why: Why::new("HttpStatus", "HTTP 503")
            }),
            ..TargetCounters::default()
        }
    );

    store
        .record(vec![
            update(
                A,
                e1,
                200,
                Outcome::Retry {
                    next_attempt_unix_ms: 900,
                    why: Why::new("Timeout", "no answer in 2s"),
                },
            ),
            update(A, e1, 300, Outcome::Delivered { status: Some(200) }),
        ])
        .await
        .unwrap();
    let c = store.counters(A).unwrap();
    assert_eq!(
        (c.delivered, c.failed, c.pending, c.consecutive_failures),
        (1, 0, 1, 0)
    );
    assert_eq!(c.last_delivery, Some(("e1".into(), 300, Some(200))));
    assert_eq!(
        c.last_failure,
        Some(LastFailure {
            event_id: "e1".into(),
            at_unix_ms: 200,
            why: Why::new("Timeout", "no answer in 2s")
        })
    );

    store
        .record(vec![update(
            A,
            e2,
            400,
            Outcome::GaveUp {
                why: Why::new("HttpStatus", "HTTP 400"),
            },
        )])
        .await
        .unwrap();
    // Updates for deliveries no longer pending are ignored.
    store
        .record(vec![
            update(A, e1, 500, Outcome::Delivered { status: Some(204) }),
            update(A, 777, 500, Outcome::Delivered { status: None }),
            update(
                "webhook/ns/unknown",
                e1,
                500,
                Outcome::Delivered { status: None },
            ),
        ])
        .await
        .unwrap();
    let expected_a = TargetCounters {
        delivered: 1,
        failed: 1,
        pending: 0,
        consecutive_failures: 1,
        last_delivery: Some(("e1".into(), 300, Some(200))),
        last_failure: Some(LastFailure {
            event_id: "e2".into(),
            at_unix_ms: 400,
            why: Why::new("HttpStatus", "HTTP 400"),
        }),
        ..TargetCounters::default()
    };
    assert_eq!(store.counters(A).unwrap(), expected_a);
    assert_eq!(
        store.counters("webhook/ns/unknown").unwrap(),
        TargetCounters::default()
    );
    assert!(store.pending_for(A).unwrap().is_empty());
    assert_eq!(store.pending_for(B).unwrap().len(), 1);
    assert_eq!(store.stats().pending, 1);

    drop(store);
    let store = open(dir.path());
    assert_eq!(store.counters(A).unwrap(), expected_a);
    assert_eq!(store.counters(B).unwrap().pending, 1);
    assert_eq!(store.stats().pending, 1);
}

#[tokio::test]
async fn drop_target_removes_its_deliveries_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![
            ev("e1", "v", &[A, B]),
            ev("e2", "v", &[A]),
            ev("e3", "w", &[A, B]),
        ])
        .await
        .unwrap();
    store
        .record(vec![update(
            A,
            out[0].seq(),
            1,
            Outcome::Delivered { status: Some(200) },
        )])
        .await
        .unwrap();
    // A target whose name extends A's must not be touched by dropping A.
    let longer = format!("{A}b");
    store
        .add_deliveries(&longer, vec![out[1].seq()])
        .await
        .unwrap();
    assert_eq!(store.drop_target(A).await.unwrap(), 2);
    assert_eq!(store.pending_for(&longer).unwrap().len(), 1);
    assert_eq!(store.drop_target(&longer).await.unwrap(), 1);
    assert!(store.pending_for(A).unwrap().is_empty());
    assert_eq!(store.counters(A).unwrap(), TargetCounters::default());
    assert_eq!(store.pending_for(B).unwrap().len(), 2);
    assert_eq!(store.counters(B).unwrap().pending, 2);
    assert_eq!(store.stats().pending, 2);
    assert_eq!(store.drop_target(A).await.unwrap(), 0);
    // Late outcomes for the dropped target change nothing.
    store
        .record(vec![update(
            A,
            out[1].seq(),
            2,
            Outcome::Delivered { status: None },
        )])
        .await
        .unwrap();
    assert_eq!(store.counters(A).unwrap(), TargetCounters::default());

    // e2 only had A: nothing pending, so gc can forget it; e1 and e3 wait for B.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.gc(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(store.seq_of("c", "e2").unwrap(), None);
    assert!(store.seq_of("c", "e1").unwrap().is_some());
}

#[tokio::test]
async fn add_deliveries_replays_stored_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![ev("e1", "v1", &[A]), ev("e2", "v2", &[])])
        .await
        .unwrap();
    let (e1, e2) = (out[0].seq(), out[1].seq());
    // e1 is already pending for A, 999 does not exist.
    assert_eq!(store.add_deliveries(A, vec![e1, e2, 999]).await.unwrap(), 1);
    let pending = store.pending_for(A).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.seq, p.lane.as_str()))
            .collect::<Vec<_>>(),
        vec![(e1, "v1"), (e2, "v2")]
    );
    // The delivery carries the event's own id (its webhook-id), not the store's key.
    assert_eq!(pending[1].event_id, "e2");
    assert_eq!(store.counters(A).unwrap().pending, 2);
    assert_eq!(store.stats().pending, 2);
}

#[tokio::test]
async fn gc_forgets_only_old_events_without_pending_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![
            ev("done", "v", &[A]),
            ev("waiting", "v", &[A, B]),
            ev("no-targets", "v", &[]),
        ])
        .await
        .unwrap();
    let (done, waiting, no_targets) = (out[0].seq(), out[1].seq(), out[2].seq());
    store
        .record(vec![
            update(A, done, 1, Outcome::Delivered { status: Some(200) }),
            update(
                A,
                waiting,
                1,
                Outcome::GaveUp {
                    why: Why::new("HttpStatus", "no"),
                },
            ),
        ])
        .await
        .unwrap();

    // Young events stay.
    assert_eq!(store.gc(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.stats().events, 3);

    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.gc(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(store.event_body(done).unwrap(), None);
    assert_eq!(store.event_body(no_targets).unwrap(), None);
    assert!(store.event_body(waiting).unwrap().is_some());
    assert_eq!(store.stats().events, 1);

    // Forgotten ids no longer dedupe; remembered ones do.
    let again = store
        .accept(vec![ev("done", "v", &[A]), ev("waiting", "v", &[A])])
        .await
        .unwrap();
    assert!(matches!(again[0], AcceptOutcome::New { seq } if seq > no_targets));
    assert_eq!(again[1], AcceptOutcome::Duplicate { seq: waiting });

    // Once B is done with it, "waiting" goes too.
    store
        .record(vec![update(
            B,
            waiting,
            2,
            Outcome::Delivered { status: None },
        )])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The re-accepted "done" is still pending for A.
    assert_eq!(store.gc(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(store.seq_of("c", "waiting").unwrap(), None);
    assert_eq!(store.seq_of("c", "done").unwrap(), Some(again[0].seq()));
}

#[tokio::test]
async fn a_file_of_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::META_SCHEMA, 99)
            .unwrap();
        txn.commit().unwrap();
    }
    match Store::open(dir.path(), StoreOptions::default()) {
        Err(StoreError::Schema { found: 99, .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("opened a file of schema 99"),
    }
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_fails_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(Store::open(dir.path(), StoreOptions::default()).is_err());
    drop(store);
    open(dir.path());
}

const CRASH_DIR_ENV: &str = "VC_STORE_CRASH_CHILD_DIR";
const CRASH_ROUND_ENV: &str = "VC_STORE_CRASH_CHILD_ROUND";
const CRASH_TARGETS: [&str; 2] = [A, B];

/// Helper process of `sigkill_loses_no_acknowledged_event`: accepts events from 16 tasks and
/// prints `ACK <id> <seq>` for each one acknowledged, until it is killed.
#[test]
#[ignore = "helper process, run by sigkill_loses_no_acknowledged_event"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let round = std::env::var(CRASH_ROUND_ENV).unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = open(Path::new(&dir));
        // Bounded, in case the parent dies without killing us.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = JoinSet::new();
        for task in 0..16u64 {
            let store = store.clone();
            let round = round.clone();
            tasks.spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let events: Vec<NewEvent> = (0..1 + n % 3)
                        .map(|i| {
                            let id = format!("r{round}-t{task}-{n}-{i}");
                            ev(&id, &format!("v{task}"), &CRASH_TARGETS)
                        })
                        .collect();
                    let out = store.accept(events.clone()).await.unwrap();
                    // Outcomes commit without an fsync in between: acknowledged events must
                    // survive a kill whatever mix of commits the file holds.
                    let delivered: Vec<DeliveryUpdate> = out
                        .iter()
                        .map(|o| update(B, o.seq(), 1, Outcome::Delivered { status: Some(200) }))
                        .collect();
                    store.record(delivered).await.unwrap();
                    // One small write per call: a pipe write under PIPE_BUF is atomic, so the
                    // parent never reads half a line.
                    let mut text = String::new();
                    for (e, o) in events.iter().zip(&out) {
                        text.push_str(&format!("ACK {} {}\n", e.id, o.seq()));
                    }
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(text.as_bytes()).unwrap();
                    stdout.flush().unwrap();
                    n += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// Runs `crash_child` on `dir`, SIGKILLs it once it has acknowledged `kill_after` events, and
/// returns every acknowledgement it printed (id → seq).
fn run_and_kill_child(dir: &Path, round: u32, kill_after: usize) -> HashMap<String, u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir)
        .env(CRASH_ROUND_ENV, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut acked = HashMap::new();
    let mut killed = false;
    let mut line = String::new();
    // Read to EOF: lines already in the pipe when the kill lands were acknowledged too.
    while reader.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.strip_suffix('\n').and_then(|l| l.strip_prefix("ACK ")) {
            let (id, seq) = rest.split_once(' ').unwrap();
            acked.insert(id.to_owned(), seq.parse().unwrap());
            if !killed && acked.len() >= kill_after {
                child.kill().unwrap(); // SIGKILL on Unix
                killed = true;
            }
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(killed, "child ended by itself: {status}");
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status}");
    }
    acked
}

#[test]
fn sigkill_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut acked: HashMap<String, u64> = HashMap::new();
    // Several rounds on one file: each reopen repairs what the previous kill left.
    for (round, kill_after) in [700, 1500, 2500].into_iter().enumerate() {
        acked.extend(run_and_kill_child(dir.path(), round as u32, kill_after));

        let store = open(dir.path());
        let pending: BTreeSet<(String, u64)> = store
            .pending()
            .unwrap()
            .into_iter()
            .map(|p| (p.target, p.seq))
            .collect();
        for (id, &seq) in &acked {
            assert_eq!(store.seq_of("c", id).unwrap(), Some(seq), "event {id} lost");
            // B's deliveries were recorded as made; a kill may undo that (they repeat).
            assert!(
                pending.contains(&(A.to_owned(), seq)),
                "delivery of {id} to {A} lost"
            );
        }
        let distinct: BTreeSet<u64> = acked.values().copied().collect();
        assert_eq!(distinct.len(), acked.len(), "two ids share a seq");
        let max_acked = acked.values().copied().max().unwrap();
        let next = rt
            .block_on(store.accept(vec![ev(&format!("after-{round}"), "v", &[A])]))
            .unwrap();
        assert!(next[0].seq() > max_acked);
        eprintln!(
            "crash round {round}: SIGKILL after {kill_after} acks; {} acknowledged so far, \
             all present; {} events stored",
            acked.len(),
            store.stats().events
        );
    }
}

/// A figure, not a speed assertion: single events from one caller (one fsync each) against 64
/// concurrent callers sharing commits. `cargo test store -- --nocapture` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_figures() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

    let serial = 200u64;
    let start = Instant::now();
    for i in 0..serial {
        store
            .accept(vec![ev(&format!("s{i}"), "v", &[A])])
            .await
            .unwrap();
    }
    let serial_secs = start.elapsed().as_secs_f64();

    let callers = 64u64;
    let per_caller = 100u64;
    let before = store.stats();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..callers {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..per_caller {
                let id = format!("c{c}-{i}");
                store
                    .accept(vec![ev(&id, &format!("v{c}"), &[A, B])])
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let after = store.stats();
    let total = callers * per_caller;
    let commits = after.commits - before.commits;
    eprintln!(
        "store: 1 caller: {serial} single-event accepts in {serial_secs:.3}s = {:.0}/s ({} commits)",
        serial as f64 / serial_secs,
        before.commits
    );
    eprintln!(
        "store: {callers} callers: {total} single-event accepts in {secs:.3}s = {:.0}/s, \
         {commits} commits, {:.1} events/commit, largest batch {}",
        total as f64 / secs,
        total as f64 / commits as f64,
        after.largest_batch
    );
    assert_eq!(after.events, serial + total);
    assert_eq!(after.pending, serial + 2 * total);
    assert_eq!(after.requests - before.requests, total);
    // With 64 callers waiting on each fsync, commits must be shared.
    assert!(commits < total, "{commits} commits for {total} requests");
}

#[tokio::test]
async fn uploads_count_files_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let t = "ftpconnection/ns/c";
    let out = store
        .accept(vec![
            NewEvent {
                client: "c".into(),
                id: "u1".into(),
                body: b"{}".to_vec(),
                lane: "v".into(),
                event_type: "vehicle.processed",
                targets: vec![t.into()],
            },
            NewEvent {
                client: "c".into(),
                id: "u2".into(),
                body: b"{}".to_vec(),
                lane: "v".into(),
                event_type: "vehicle.processed",
                targets: vec![t.into()],
            },
        ])
        .await
        .unwrap();
    for (o, files) in out.iter().zip([3u32, 5]) {
        store
            .record(vec![DeliveryUpdate {
                target: t.into(),
                seq: o.seq(),
                outcome: Outcome::Uploaded {
                    files,
                    bytes: u64::from(files) * 1000,
                    vin: Some("VIN1".into()),
                    paths: vec![format!("/v/{files}.jpg")],
                },
                at_unix_ms: 1,
                log: None,
            }])
            .await
            .unwrap();
    }
    let c = store.counters(t).unwrap();
    assert_eq!((c.delivered, c.files, c.bytes, c.pending), (2, 8, 8000, 0));
    assert_eq!(c.last_upload, Some((Some("VIN1".to_string()), 5)));
    assert_eq!(
        store.uploaded_paths(t, "v").unwrap(),
        ["/v/3.jpg", "/v/5.jpg"]
    );
    let removed = store.accept(vec![ev("u3", "v", &[t])]).await.unwrap()[0].seq();
    store
        .record(vec![update(
            t,
            removed,
            2,
            Outcome::Removed {
                paths: vec!["/v/3.jpg".into()],
            },
        )])
        .await
        .unwrap();
    assert_eq!(store.uploaded_paths(t, "v").unwrap(), ["/v/5.jpg"]);
    assert_eq!(store.counters(t).unwrap().delivered, 3);
    store.drop_target(t).await.unwrap();
    assert!(store.uploaded_paths(t, "v").unwrap().is_empty());
}

#[tokio::test]
async fn ids_are_unique_per_client_not_across_clients() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut theirs = ev("shared-id", "v", &[A]);
    theirs.client = "dealer-b".into();
    let mut ours = ev("shared-id", "v", &[A]);
    ours.client = "dealer-a".into();
    // One client posting another's id first must not make the real event a duplicate.
    let out = store
        .accept(vec![theirs.clone(), ours.clone()])
        .await
        .unwrap();
    assert!(matches!(out[0], AcceptOutcome::New { .. }));
    assert!(matches!(out[1], AcceptOutcome::New { .. }));
    let again = store.accept(vec![ours]).await.unwrap();
    assert_eq!(again[0], AcceptOutcome::Duplicate { seq: out[1].seq() });
    assert_eq!(
        store.seq_of("dealer-a", "shared-id").unwrap(),
        Some(out[1].seq())
    );
    assert_eq!(
        store.seq_of("dealer-b", "shared-id").unwrap(),
        Some(out[0].seq())
    );
    assert_eq!(store.event(out[1].seq()).unwrap().unwrap().id, "shared-id");
}

#[tokio::test]
async fn backlogs_are_paged_and_targets_listed_without_reading_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events: Vec<_> = (0..10)
        .map(|i| ev(&format!("p{i}"), "v", &[A, B]))
        .collect();
    let out = seqs(&store.accept(events).await.unwrap());
    let page = store.pending_after(A, 0, 4).unwrap();
    assert_eq!(page.iter().map(|p| p.seq).collect::<Vec<_>>(), out[..4]);
    let next = store.pending_after(A, page[3].seq, 100).unwrap();
    assert_eq!(next.iter().map(|p| p.seq).collect::<Vec<_>>(), out[4..]);
    assert!(store.pending_after(A, out[9], 100).unwrap().is_empty());
    let mut targets = store.pending_targets().unwrap();
    targets.sort();
    let mut want = vec![A.to_string(), B.to_string()];
    want.sort();
    assert_eq!(targets, want);
    // A target whose name is a prefix of another's is listed on its own.
    store
        .accept(vec![ev("q", "v", &["webhook/ns/a2"])])
        .await
        .unwrap();
    assert_eq!(store.pending_targets().unwrap().len(), 3);
}

#[tokio::test]
async fn expiry_gives_up_only_events_older_than_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old = seqs(
        &store
            .accept(
                (0..5)
                    .map(|i| ev(&format!("old{i}"), "v", &[A, B]))
                    .collect(),
            )
            .await
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let cutoff = super::now_unix_ms();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let young = seqs(
        &store
            .accept((0..3).map(|i| ev(&format!("new{i}"), "v", &[A])).collect())
            .await
            .unwrap(),
    );
    assert_eq!(store.expire(A, cutoff, 2).await.unwrap(), 2);
    assert_eq!(store.expire(A, cutoff, 100).await.unwrap(), 3);
    assert_eq!(store.expire(A, cutoff, 100).await.unwrap(), 0);
    let left: Vec<u64> = store
        .pending_for(A)
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(left, young);
    // The other target's rows are its own business.
    assert_eq!(store.pending_for(B).unwrap().len(), old.len());
    let c = store.counters(A).unwrap();
    assert_eq!((c.failed, c.pending), (5, 3));
    assert_eq!(c.last_failure.unwrap().why.reason, "Expired");
}

#[tokio::test]
async fn dropped_deliveries_are_counted_apart_from_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let seq = store.accept(vec![ev("d", "v", &[A])]).await.unwrap()[0].seq();
    store
        .record(vec![update(
            A,
            seq,
            1,
            Outcome::Dropped {
                why: Why::new("NotSelected", "another client"),
            },
        )])
        .await
        .unwrap();
    let c = store.counters(A).unwrap();
    assert_eq!((c.dropped, c.failed, c.pending), (1, 0, 0));
    assert!(store.pending_for(A).unwrap().is_empty());
}

/// A commit that failed yet reached the disk, retried on the reopened file: its events come back
/// as duplicates at or past the failed transaction's first seq, and their callers must hear
/// `New` (once per seq) so that the events are delivered.
#[test]
fn a_retried_batch_claims_the_events_its_failed_commit_stored() {
    use writer::{Job, Reply, claim_landed};
    let accept = |outcomes: Vec<AcceptOutcome>| {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let mut reply = Reply::new(tx);
        reply.set(outcomes);
        Job::Accept {
            events: Vec::new(),
            reply,
        }
    };
    let outcomes = |job: &Job| match job {
        Job::Accept { reply, .. } => reply.value().cloned().unwrap(),
        _ => unreachable!(),
    };
    use AcceptOutcome::{Duplicate, New};
    let mut batch = vec![
        // 7 was accepted long before the failure: stays a duplicate.
        accept(vec![Duplicate { seq: 7 }, Duplicate { seq: 10 }]),
        // The same id twice in the batch: the first caller gets New, the second Duplicate.
        accept(vec![Duplicate { seq: 10 }, Duplicate { seq: 11 }]),
        accept(vec![New { seq: 12 }, Duplicate { seq: 12 }]),
    ];
    claim_landed(&mut batch, 10);
    assert_eq!(
        outcomes(&batch[0]),
        vec![Duplicate { seq: 7 }, New { seq: 10 }]
    );
    assert_eq!(
        outcomes(&batch[1]),
        vec![Duplicate { seq: 10 }, New { seq: 11 }]
    );
    assert_eq!(
        outcomes(&batch[2]),
        vec![New { seq: 12 }, Duplicate { seq: 12 }]
    );
}

#[test]
fn io_errors_say_retry_and_full_disks_say_so() {
    let full = StoreError::Db(redb::Error::Io(std::io::Error::from(
        std::io::ErrorKind::StorageFull,
    )));
    assert!(full.is_io() && full.is_storage_full());
    assert_eq!(full.retry_after(), Some(Duration::from_secs(5)));
    let previous = StoreError::Db(redb::Error::PreviousIo);
    assert!(previous.is_io() && !previous.is_storage_full());
    let unavailable = StoreError::Unavailable {
        reason: "x".into(),
        storage_full: true,
        retry_after: Duration::from_secs(3),
    };
    assert!(unavailable.is_io() && unavailable.is_storage_full());
    assert_eq!(unavailable.retry_after(), Some(Duration::from_secs(3)));
    let schema = StoreError::Schema {
        found: 2,
        expected: 1,
    };
    assert!(!schema.is_io() && schema.retry_after().is_none());
    assert!(!StoreError::WriterStopped.is_io());
}

#[test]
fn last_failures_of_earlier_versions_are_read_with_reason_and_message_apart() {
    let old =
        br#"{"delivered":1,"last_failure":["e9",5,"HttpStatus: HTTP 503 from the receiver"]}"#;
    let c: TargetCounters = serde_json::from_slice(old).unwrap();
    assert_eq!(
        c.last_failure,
        Some(LastFailure {
            event_id: "e9".into(),
            at_unix_ms: 5,
            why: Why::new("HttpStatus", "HTTP 503 from the receiver"),
        })
    );
    let unsplittable = br#"{"last_failure":["e9",5,"something went wrong"]}"#;
    let c: TargetCounters = serde_json::from_slice(unsplittable).unwrap();
    assert_eq!(
        c.last_failure.unwrap().why,
        Why::new("DeliveryFailed", "something went wrong")
    );
    // What this version writes reads back the same.
    let now = TargetCounters {
        last_failure: Some(LastFailure {
            event_id: "e1".into(),
            at_unix_ms: 7,
            why: Why::new("Timeout", "a: b: c"),
        }),
        ..TargetCounters::default()
    };
    let back: TargetCounters = serde_json::from_slice(&serde_json::to_vec(&now).unwrap()).unwrap();
    assert_eq!(back, now);
}

#[tokio::test]
async fn outcomes_committed_without_fsync_are_durable_once_synced_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![ev("e1", "v", &[A]), ev("e2", "v", &[A])])
        .await
        .unwrap();
    let delivered = |seq| update(A, seq, 1, Outcome::Delivered { status: Some(200) });
    store.record(vec![delivered(out[0].seq())]).await.unwrap();
    // Readers see an outcome at once, before it is durable.
    assert_eq!(store.pending_for(A).unwrap().len(), 1);
    // The timer makes it durable: a copy of the file taken now has it.
    tokio::time::sleep(super::writer::SYNC_EVERY * 3).await;
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(DB_FILE), copy.path().join(DB_FILE)).unwrap();
    let reopened = open(copy.path());
    assert_eq!(reopened.pending_for(A).unwrap().len(), 1);
    drop(reopened);
    // Closing makes the last ones durable too.
    store.record(vec![delivered(out[1].seq())]).await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert!(store.pending_for(A).unwrap().is_empty());
    assert_eq!(store.counters(A).unwrap().delivered, 2);
}

#[tokio::test]
async fn chain_progress_goes_with_a_delivery_given_up_dropped_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![
            ev("p1", "v", &[A]),
            ev("p2", "w", &[A]),
            ev("p3", "x", &[A]),
        ])
        .await
        .unwrap();
    let seqs = seqs(&out);
    for &seq in &seqs {
        store
            .set_state(A, &chain_progress_key(seq), Some(b"{}".to_vec()), true)
            .await
            .unwrap();
    }
    // Kept per vehicle, not per delivery: never removed with one.
    store
        .set_state(A, "remote/v", Some(b"{\"id\":\"1\"}".to_vec()), true)
        .await
        .unwrap();
    let why = Why::new("HttpStatus", "422");
    store
        .record(vec![
            update(A, seqs[0], 1, Outcome::GaveUp { why: why.clone() }),
            update(A, seqs[1], 1, Outcome::Dropped { why }),
        ])
        .await
        .unwrap();
    assert_eq!(store.state(A, &chain_progress_key(seqs[0])).unwrap(), None);
    assert_eq!(store.state(A, &chain_progress_key(seqs[1])).unwrap(), None);
    assert!(
        store
            .state(A, &chain_progress_key(seqs[2]))
            .unwrap()
            .is_some()
    );
    assert_eq!(store.expire(A, u64::MAX, 10).await.unwrap(), 1);
    assert_eq!(store.state(A, &chain_progress_key(seqs[2])).unwrap(), None);
    assert!(store.state(A, "remote/v").unwrap().is_some());
}
