//! The client feed index: written with the event, removed by gc, built for an old file, read
//! by cursor; and the long-poll wake-up.

use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable};

use super::feed::{self, FeedCursor, FeedQuery};
use super::tables::{
    CLIENT_EVENTS, EVENT_IDS, EVENT_REFS, EVENTS, FEED_GONE, META, META_NEXT_SEQ, META_SCHEMA,
    META_STORE_ID, PENDING, SCHEMA_V1, SCHEMA_VERSION,
};
use super::*;

const T: &str = "webhook/ns/t";

fn body(client: &str, id: &str, type_: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","type":"{type_}","clientId":"{client}","data":{{}}}}"#).into_bytes()
}

fn ev(client: &str, id: &str, type_: &'static str, targets: &[&str]) -> NewEvent {
    NewEvent {
        client: client.to_owned(),
        id: id.to_owned(),
        body: body(client, id, type_),
        lane: "v".to_owned(),
        event_type: type_,
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
    }
}

fn query(client: &str, after: Option<FeedCursor>) -> FeedQuery {
    FeedQuery {
        client: client.to_owned(),
        after,
        types: Vec::new(),
        limit: 100,
        max_bytes: 1 << 20,
        max_scan: 10_000,
    }
}

/// The ids of a page's events, read back from their bodies.
fn ids(page: &FeedPage) -> Vec<String> {
    page.events
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Every (client, seq, type) row of the index.
fn index_rows(db: &redb::Database) -> Vec<(String, u64, String)> {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(CLIENT_EVENTS).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            let (c, s) = k.value();
            (c.to_owned(), s, v.value().to_owned())
        })
        .collect()
}

#[test]
fn cursors_round_trip_and_garbage_is_refused() {
    let c = FeedCursor::parse(
        &FeedCursor::parse("AQAAAAAAAAAHAAAAAAAAACo")
            .unwrap()
            .to_string(),
    )
    .unwrap();
    assert_eq!(c.seq(), 42);
    for bad in [
        "",
        "x",
        "AQAAAAAAAAAHAAAAAAAAACo=",
        "AgAAAAAAAAAHAAAAAAAAACo",
        "AQAAAAAAAAAHAAAAAAAAAA",
    ] {
        assert_eq!(FeedCursor::parse(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn each_client_reads_only_its_own_events_in_order_and_pages_cover_them_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut want_a = Vec::new();
    for i in 0..7 {
        let ty = if i % 2 == 0 {
            "vehicle.created"
        } else {
            "vehicle.processed"
        };
        store
            .accept(vec![
                ev("a", &format!("a{i}"), ty, &[T]),
                ev("b", &format!("b{i}"), ty, &[]),
            ])
            .await
            .unwrap();
        want_a.push(format!("a{i}"));
    }
    // A duplicate adds no row.
    let dup = store
        .accept(vec![ev("a", "a0", "vehicle.created", &[])])
        .await
        .unwrap();
    assert!(matches!(dup[0], AcceptOutcome::Duplicate { .. }));

    let all = store.feed(&query("a", None)).unwrap();
    assert_eq!(ids(&all), want_a);
    assert!(!all.truncated && !all.more);
    assert!(all.events.windows(2).all(|w| w[0].seq < w[1].seq));
    let b = store.feed(&query("b", None)).unwrap();
    assert_eq!(ids(&b), (0..7).map(|i| format!("b{i}")).collect::<Vec<_>>());
    assert!(
        store
            .feed(&query("nobody", None))
            .unwrap()
            .events
            .is_empty()
    );

    // Pages of 3 cover every event once; the last page's next stays put when nothing is new.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .feed(&FeedQuery {
                limit: 3,
                ..query("a", after)
            })
            .unwrap();
        assert!(page.events.len() <= 3);
        seen.extend(ids(&page));
        if page.events.is_empty() {
            assert_eq!(Some(page.next), after);
            break;
        }
        assert_eq!(page.more, seen.len() < 7, "{seen:?}");
        after = Some(page.next);
    }
    assert_eq!(seen, want_a);

    // A type filter reads only matching rows; a scan limit ends the page early with `more`.
    let created = store
        .feed(&FeedQuery {
            types: vec!["vehicle.created".into()],
            ..query("a", None)
        })
        .unwrap();
    assert_eq!(ids(&created), ["a0", "a2", "a4", "a6"]);
    let scan = store
        .feed(&FeedQuery {
            types: vec!["vehicle.created".into()],
            max_scan: 2,
            ..query("a", None)
        })
        .unwrap();
    assert_eq!(ids(&scan), ["a0"]);
    assert!(scan.more);
    let rest = store
        .feed(&FeedQuery {
            types: vec!["vehicle.created".into()],
            ..query("a", Some(scan.next))
        })
        .unwrap();
    assert_eq!(ids(&rest), ["a2", "a4", "a6"]);
    // A byte limit too (but never an empty page for it).
    let small = store
        .feed(&FeedQuery {
            max_bytes: 1,
            ..query("a", None)
        })
        .unwrap();
    assert_eq!(ids(&small), ["a0"]);
    assert!(small.more);
}

#[tokio::test]
async fn gc_removes_index_rows_and_old_cursors_say_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    store
        .accept(vec![ev("a", "a1", "vehicle.created", &[])])
        .await
        .unwrap();
    let first = store.feed(&query("a", None)).unwrap();
    assert_eq!(ids(&first), ["a1"]);
    let held = store
        .accept(vec![
            ev("a", "a2", "vehicle.created", &[T]),
            ev("a", "a3", "vehicle.created", &[]),
            ev("b", "b1", "vehicle.created", &[]),
        ])
        .await
        .unwrap();
    let caught_up = store.feed(&query("a", Some(first.next))).unwrap().next;
    store
        .accept(vec![ev("a", "a4", "vehicle.created", &[])])
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(5)).await;
    // a1, a3, b1 and a4 go; a2 waits for its delivery.
    assert_eq!(store.gc(Duration::ZERO).await.unwrap(), 4);
    let db = store.inner.shared.db().unwrap();
    assert_eq!(
        index_rows(&db),
        [("a".to_owned(), held[0].seq(), "vehicle.created".to_owned())]
    );
    drop(db);

    // Cursors before what gc removed of this client say so; the event held stays readable.
    let old = store.feed(&query("a", Some(first.next))).unwrap();
    assert!(old.truncated);
    assert_eq!(ids(&old), ["a2"]);
    assert!(store.feed(&query("a", Some(caught_up))).unwrap().truncated);
    // Reading on from where that page ended reports no loss again.
    let on = store.feed(&query("a", Some(old.next))).unwrap();
    assert!(!on.truncated && on.events.is_empty());
    // No cursor: from the oldest kept, nothing to report.
    let fresh = store.feed(&query("a", None)).unwrap();
    assert!(!fresh.truncated);
    assert_eq!(ids(&fresh), ["a2"]);
    // Another client's losses are not this one's.
    let c = store.feed(&query("c", Some(first.next))).unwrap();
    assert!(!c.truncated);
}

#[tokio::test]
async fn a_cursor_of_another_store_reads_from_the_start_and_says_truncated() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = Store::open(d1.path(), StoreOptions::default()).unwrap();
    let two = Store::open(d2.path(), StoreOptions::default()).unwrap();
    for s in [&one, &two] {
        s.accept(vec![ev("a", "x", "data.new", &[])]).await.unwrap();
    }
    let foreign = one.feed(&query("a", None)).unwrap().next;
    let page = two.feed(&query("a", Some(foreign))).unwrap();
    assert!(page.truncated);
    assert_eq!(ids(&page), ["x"]);
}

#[tokio::test]
async fn a_waiter_wakes_on_its_clients_commit_only_and_unregisters_when_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let waiter = store.feed_waiter("a");
    let other = store.feed_waiter("a");
    assert_eq!((store.feed_waiters(), store.feed_waiting_clients()), (2, 1));

    {
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        store
            .accept(vec![ev("b", "b1", "data.new", &[])])
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), notified.as_mut())
                .await
                .is_err(),
            "woken by another client's event"
        );
        // The wake comes with the commit: by then the event is readable.
        let store2 = store.clone();
        let post = tokio::spawn(async move {
            store2
                .accept(vec![ev("a", "a1", "data.new", &[])])
                .await
                .unwrap()
        });
        tokio::time::timeout(Duration::from_secs(2), notified)
            .await
            .expect("not woken");
        assert_eq!(ids(&store.feed(&query("a", None)).unwrap()), ["a1"]);
        post.await.unwrap();
    }

    drop(waiter);
    assert_eq!((store.feed_waiters(), store.feed_waiting_clients()), (1, 1));
    drop(other);
    assert_eq!((store.feed_waiters(), store.feed_waiting_clients()), (0, 0));
}

/// Writes a version 1 file: events of two clients (one row keyed by its bare id, as before
/// clients were part of the key), a gap where gc removed seq 2, and seq 6 handed out and
/// removed last.
fn write_v1(path: &std::path::Path) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert(META_SCHEMA, SCHEMA_V1).unwrap();
        meta.insert(META_NEXT_SEQ, 7).unwrap();
        let mut events = txn.open_table(EVENTS).unwrap();
        let mut ids = txn.open_table(EVENT_IDS).unwrap();
        for (seq, client, id, type_, key) in [
            (1, "a", "a1", "vehicle.created", "a/a1"),
            (3, "b", "b1", "vehicle.processed", "b/b1"),
            (4, "a", "old", "user.created", "old"),
            (5, "a", "a2", "vehicle.processed", "a/a2"),
        ] {
            events
                .insert(seq, (key, "v", 1_000, body(client, id, type_).as_slice()))
                .unwrap();
            ids.insert(key, seq).unwrap();
        }
        txn.open_table(PENDING).unwrap();
        txn.open_table(EVENT_REFS).unwrap();
    }
    txn.commit().unwrap();
}

fn expected_v1_index() -> Vec<(String, u64, String)> {
    [
        ("a", 1, "vehicle.created"),
        ("a", 4, "user.created"),
        ("a", 5, "vehicle.processed"),
        ("b", 3, "vehicle.processed"),
    ]
    .into_iter()
    .map(|(c, s, t)| (c.to_owned(), s, t.to_owned()))
    .collect()
}

#[test]
fn the_migration_builds_the_index_in_chunks_and_records_the_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    write_v1(&path);
    let db = redb::Database::create(&path).unwrap();
    // Chunks of 1: every event in its own transaction, each resuming from the last.
    feed::migrate_v1(&db, 1).unwrap();
    assert_eq!(index_rows(&db), expected_v1_index());
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    assert_eq!(
        meta.get(META_SCHEMA).unwrap().unwrap().value(),
        SCHEMA_VERSION
    );
    assert!(meta.get(META_STORE_ID).unwrap().is_some());
    // Seq 6 was the highest handed out and missing.
    let gone = txn.open_table(FEED_GONE).unwrap();
    assert_eq!(gone.get("").unwrap().unwrap().value(), 6);
}

#[tokio::test]
async fn an_old_store_is_migrated_on_open_and_its_feed_works() {
    let dir = tempfile::tempdir().unwrap();
    write_v1(&dir.path().join(DB_FILE));
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let a = store.feed(&query("a", None)).unwrap();
    assert_eq!(ids(&a), ["a1", "old", "a2"]);
    let after_a1 = store
        .feed(&FeedQuery {
            limit: 1,
            ..query("a", None)
        })
        .unwrap()
        .next;
    assert_eq!(after_a1.seq(), 1);
    assert_eq!(ids(&store.feed(&query("b", None)).unwrap()), ["b1"]);
    // Past the removals before the migration: the next page does not report them.
    assert_eq!(a.next.seq(), 6);

    // New events are indexed, dedupe still holds for the old rows, gc removes old ones.
    let out = store
        .accept(vec![
            ev("a", "a2", "vehicle.processed", &[]),
            ev("a", "a3", "data.new", &[]),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], AcceptOutcome::Duplicate { seq: 5 }));
    assert_eq!(out[1], AcceptOutcome::New { seq: 7 });
    let next = store.feed(&query("a", Some(a.next))).unwrap();
    assert_eq!(ids(&next), ["a3"]);
    assert!(!next.truncated);
    assert_eq!(store.gc(Duration::from_secs(60)).await.unwrap(), 4);
    let db = store.inner.shared.db().unwrap();
    assert_eq!(
        index_rows(&db),
        [("a".to_owned(), 7, "data.new".to_owned())]
    );
    drop(db);
    // A cursor after a1 missed "old" and a2; one after them missed nothing.
    let late = store.feed(&query("a", Some(after_a1))).unwrap();
    assert!(late.truncated);
    assert_eq!(ids(&late), ["a3"]);
    assert!(!store.feed(&query("a", Some(a.next))).unwrap().truncated);
    drop(store);

    // Opening again finds version 2 and changes nothing.
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(ids(&store.feed(&query("a", None)).unwrap()), ["a3"]);
}
