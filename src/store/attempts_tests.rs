//! The delivery log in the store: written with outcomes, listed with filters and cursors,
//! kept across reopen, removed by age and count.

use std::time::Duration;

use super::*;

const WH: &str = "webhooksubscription/ns/crm/uid-1";
const FTP: &str = "ftpconnection/ns/files/uid-2";

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreOptions::default()).unwrap()
}

fn event(client: &str, id: &str, lane: &str, targets: &[&str]) -> NewEvent {
    NewEvent {
        client: client.to_owned(),
        id: id.to_owned(),
        body: format!(r#"{{"id":"{id}","clientId":"{client}"}}"#).into_bytes(),
        lane: lane.to_owned(),
        event_type: "vehicle.processed",
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn logged(
    target: &str,
    seq: u64,
    (client, id, lane): (&str, &str, &str),
    attempt: u32,
    at: u64,
    outcome: Outcome,
    result: LogResult,
) -> DeliveryUpdate {
    DeliveryUpdate {
        target: target.to_owned(),
        seq,
        outcome,
        at_unix_ms: at,
        log: Some(Box::new(AttemptLog {
            result,
            event_id: id.to_owned(),
            client: client.to_owned(),
            event_type: "vehicle.processed",
            lane: lane.to_owned(),
            // One vehicle with a VIN, to find it by that.
            vin: (lane == "veh-2").then(|| "WVWZZZ1JZXW000002".to_owned()),
            attempt,
            duration_ms: 12,
            http_status: Some(if result == LogResult::Delivered {
                200
            } else {
                500
            }),
            ftp_reply: None,
            response: Some("{\"ok\":false}".to_owned()),
            why: None,
        })),
    }
}

fn retry(at: u64) -> Outcome {
    Outcome::Retry {
        next_attempt_unix_ms: at + 1000,
        why: Why::new("HttpStatus", "HTTP 500"),
    }
}

fn ids(page: &AttemptPage) -> Vec<u64> {
    page.entries.iter().map(|e| e.id).collect()
}

/// Two clients' events, three attempts of one (two retries, then delivered) and one of the
/// other, to two targets.
async fn history(store: &Store) -> (u64, u64) {
    let out = store
        .accept(vec![
            event("c1", "e1", "veh-1", &[WH]),
            event("c2", "e2", "veh-2", &[FTP]),
        ])
        .await
        .unwrap();
    let (s1, s2) = (out[0].seq(), out[1].seq());
    let now = now_unix_ms();
    let e1 = ("c1", "e1", "veh-1");
    store
        .record(vec![
            logged(WH, s1, e1, 1, now, retry(now), LogResult::Retry),
            logged(WH, s1, e1, 2, now + 1, retry(now), LogResult::Retry),
        ])
        .await
        .unwrap();
    store
        .record(vec![
            logged(
                WH,
                s1,
                e1,
                3,
                now + 2,
                Outcome::Delivered { status: Some(200) },
                LogResult::Delivered,
            ),
            logged(
                FTP,
                s2,
                ("c2", "e2", "veh-2"),
                1,
                now + 3,
                Outcome::GaveUp {
                    why: Why::new("FileUnavailable", "550 nope"),
                },
                LogResult::Failed,
            ),
        ])
        .await
        .unwrap();
    (s1, s2)
}

fn query(limit: usize) -> AttemptQuery {
    AttemptQuery {
        limit,
        ..AttemptQuery::default()
    }
}

#[tokio::test]
async fn entries_are_written_with_outcomes_and_filtered_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (s1, _) = history(&store).await;
    // The outcomes themselves were recorded as before.
    assert_eq!(store.counters(WH).unwrap().delivered, 1);

    let all = store.attempts(&query(100)).unwrap();
    assert_eq!(ids(&all), vec![4, 3, 2, 1], "newest first");
    assert_eq!(all.next, None);
    let first = &all.entries[3];
    assert_eq!(first.event.seq, s1);
    assert_eq!(first.attempt, 1);
    assert_eq!(first.result, LogResult::Retry);
    assert_eq!(first.reason.as_deref(), Some("HttpStatus"));
    assert_eq!(first.message.as_deref(), Some("HTTP 500"));
    assert_eq!(first.target.name, "crm");
    assert_eq!(
        store.attempt(4).unwrap().unwrap().reason.as_deref(),
        Some("FileUnavailable")
    );
    assert_eq!(store.attempt(99).unwrap(), None);

    let by = |q: AttemptQuery| ids(&store.attempts(&q).unwrap());
    let target = Some("webhooksubscription/ns/crm".to_owned());
    assert_eq!(
        by(AttemptQuery {
            target,
            ..query(100)
        }),
        vec![3, 2, 1]
    );
    let failed = Some(
        LogResult::ALL
            .into_iter()
            .filter(|r| r.is_failure())
            .collect(),
    );
    assert_eq!(
        by(AttemptQuery {
            results: failed,
            ..query(100)
        }),
        vec![4, 2, 1]
    );
    let vehicle = Some("veh-2".to_owned());
    assert_eq!(
        by(AttemptQuery {
            vehicle,
            ..query(100)
        }),
        vec![4]
    );
    // By its VIN too, in any case.
    let vehicle = Some("wvwzzz1jzxw000002".to_owned());
    assert_eq!(
        by(AttemptQuery {
            vehicle,
            ..query(100)
        }),
        vec![4]
    );
    let clients = Some(vec!["c1".to_owned()]);
    assert_eq!(
        by(AttemptQuery {
            clients,
            ..query(2)
        }),
        vec![3, 2],
        "a full page of c1"
    );
    let event_id = Some("e2".to_owned());
    assert_eq!(
        by(AttemptQuery {
            event_id,
            ..query(100)
        }),
        vec![4]
    );
    let later = Some(now_unix_ms() + 60_000);
    assert_eq!(
        by(AttemptQuery {
            since_unix_ms: later,
            ..query(100)
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        by(AttemptQuery {
            until_unix_ms: later,
            ..query(100)
        })
        .len(),
        4
    );
    let event_type = Some("vehicle.deleted".to_owned());
    assert!(
        by(AttemptQuery {
            event_type,
            ..query(100)
        })
        .is_empty()
    );

    let of_event: Vec<u64> = store
        .attempts_of_event(s1)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(of_event, vec![1, 2, 3]);
}

#[tokio::test]
async fn pages_follow_the_cursor_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    history(&store).await;
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .attempts(&AttemptQuery { before, ..query(3) })
            .unwrap();
        seen.extend(ids(&page));
        match page.next {
            Some(c) => {
                let token = c.encode();
                before = AttemptCursor::decode(&token).map(|c| c.0);
            }
            None => break,
        }
    }
    assert_eq!(seen, vec![4, 3, 2, 1]);
    // Through the target index too.
    let target = Some("webhooksubscription/ns/crm".to_owned());
    let page = store
        .attempts(&AttemptQuery {
            target: target.clone(),
            ..query(2)
        })
        .unwrap();
    assert_eq!(ids(&page), vec![3, 2]);
    let before = page.next.map(|c| c.0);
    let rest = store
        .attempts(&AttemptQuery {
            target,
            before,
            ..query(2)
        })
        .unwrap();
    assert_eq!(ids(&rest), vec![1]);
}

#[tokio::test]
async fn ids_and_entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        history(&store).await;
    }
    let store = open(dir.path());
    assert_eq!(store.attempt_count().unwrap(), 4);
    let out = store
        .accept(vec![event("c1", "e3", "veh-1", &[WH])])
        .await
        .unwrap();
    let now = now_unix_ms();
    store
        .record(vec![logged(
            WH,
            out[0].seq(),
            ("c1", "e3", "veh-1"),
            1,
            now,
            Outcome::Delivered { status: Some(200) },
            LogResult::Delivered,
        )])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.attempts(&query(1)).unwrap()),
        vec![5],
        "ids go on after reopen"
    );
}

#[tokio::test]
async fn held_logs_without_changing_the_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![event("c1", "e1", "veh-1", &[WH])])
        .await
        .unwrap();
    let mut u = logged(
        WH,
        out[0].seq(),
        ("c1", "e1", "veh-1"),
        1,
        5,
        Outcome::Held,
        LogResult::Gone,
    );
    if let Some(log) = u.log.as_mut() {
        log.why = Some(Why::new("Gone", "HTTP 410"));
    }
    store.record(vec![u]).await.unwrap();
    assert_eq!(store.pending_for(WH).unwrap().len(), 1);
    assert_eq!(store.pending_for(WH).unwrap()[0].attempts, 0);
    let e = store.attempt(1).unwrap().unwrap();
    assert_eq!(
        (e.result, e.reason.as_deref()),
        (LogResult::Gone, Some("Gone"))
    );
}

#[tokio::test]
async fn expiry_and_target_removal_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .accept(vec![
            event("c1", "e1", "veh-1", &[WH]),
            event("c2", "e2", "veh-2", &[FTP]),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.expire(WH, now_unix_ms() + 1000, 100).await.unwrap(),
        1
    );
    assert_eq!(store.drop_target(FTP).await.unwrap(), 1);
    let page = store.attempts(&query(10)).unwrap();
    let got: Vec<_> = page
        .entries
        .iter()
        .map(|e| {
            (
                e.result,
                e.event.client.as_str(),
                e.event.event_type.as_str(),
                e.event.id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (LogResult::Dropped, "c2", "vehicle.processed", "e2"),
            (LogResult::Expired, "c1", "vehicle.processed", "e1"),
        ]
    );
}

#[tokio::test]
async fn gc_removes_by_age_and_by_count_with_their_index_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![event("c1", "e1", "veh-1", &[WH])])
        .await
        .unwrap();
    let seq = out[0].seq();
    let now = now_unix_ms();
    let hour = 3_600_000;
    // Two old entries, then 30 recent ones.
    let mut updates = Vec::new();
    for (i, at) in [now - 10 * hour, now - 9 * hour]
        .into_iter()
        .chain((0..30).map(|i| now - i))
        .enumerate()
    {
        updates.push(logged(
            WH,
            seq,
            ("c1", "e1", "veh-1"),
            i as u32 + 1,
            at,
            retry(at),
            LogResult::Retry,
        ));
    }
    store.record(updates).await.unwrap();
    assert_eq!(store.attempt_count().unwrap(), 32);

    let removed = store
        .gc_attempts(Duration::from_secs(3600), 1_000_000)
        .await
        .unwrap();
    assert_eq!(removed, 2, "by age");
    assert_eq!(store.attempt(1).unwrap(), None);
    assert_eq!(store.attempt(3).unwrap().map(|e| e.id), Some(3));

    let removed = store
        .gc_attempts(Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert_eq!(removed, 20, "by count, oldest first");
    assert_eq!(store.attempt_count().unwrap(), 10);
    let kept: Vec<u64> = store
        .attempts_of_event(seq)
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        kept,
        (23..=32).collect::<Vec<_>>(),
        "index rows went with the entries"
    );
    let target = Some("webhooksubscription/ns/crm".to_owned());
    let page = store
        .attempts(&AttemptQuery {
            target,
            ..query(100)
        })
        .unwrap();
    assert_eq!(page.entries.len(), 10);
}

#[tokio::test]
async fn gc_works_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .accept(vec![event("c1", "e1", "veh-1", &[WH])])
        .await
        .unwrap();
    let seq = out[0].seq();
    let n = attempts::LOG_GC_CHUNK + 5;
    let updates: Vec<_> = (0..n)
        .map(|i| {
            logged(
                WH,
                seq,
                ("c1", "e1", "veh-1"),
                i as u32,
                1,
                retry(1),
                LogResult::Retry,
            )
        })
        .collect();
    store.record(updates).await.unwrap();
    let removed = store
        .gc_attempts(Duration::from_secs(60), u64::MAX)
        .await
        .unwrap();
    assert_eq!(removed, n as u64);
    assert_eq!(store.attempt_count().unwrap(), 0);
}

#[tokio::test]
async fn a_copy_of_the_log_restores_into_a_new_store_under_its_ids() {
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = open(old_dir.path());
    let (s1, _) = history(&old).await;
    let copy = old.attempts_after(0, 100).unwrap();
    assert_eq!(copy.len(), 4);
    assert_eq!(old.last_attempt_id().unwrap(), copy[3].0);
    assert_eq!(
        old.attempts_after(copy[1].0, 100).unwrap(),
        copy[2..].to_vec()
    );
    let before = old.attempts(&query(100)).unwrap();

    let new = open(new_dir.path());
    assert_eq!(new.last_attempt_id().unwrap(), 0);
    new.restore_attempts(copy.clone()).await.unwrap();
    let after = new.attempts(&query(100)).unwrap();
    assert_eq!(after.entries, before.entries, "same entries, same ids");
    let by_target = new
        .attempts(&AttemptQuery {
            target: Some("webhooksubscription/ns/crm".to_owned()),
            ..query(100)
        })
        .unwrap();
    assert_eq!(by_target.entries.len(), 3);
    // A new event never takes a seq the restored entries name (its view would show theirs),
    // and a new entry's id is above theirs.
    let out = new
        .accept(vec![event("c1", "e9", "veh-9", &[WH])])
        .await
        .unwrap();
    let seq = out[0].seq();
    assert!(seq > s1, "seq {seq} reused");
    assert!(new.attempts_of_event(seq).unwrap().is_empty());
    new.record(vec![logged(
        WH,
        seq,
        ("c1", "e9", "veh-9"),
        1,
        now_unix_ms(),
        Outcome::Delivered { status: Some(200) },
        LogResult::Delivered,
    )])
    .await
    .unwrap();
    assert_eq!(new.last_attempt_id().unwrap(), copy[3].0 + 1);
}
