//! The pull feed's side of the store: a per-client index written in the transaction that
//! stores an event and removed by the gc that forgets it, the migration that builds it for a
//! file written before it existed, reading one client's events after a cursor (a read
//! transaction, never the writer), and waking long-polls once a client's event has committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::tables::{
    CLIENT_EVENTS, EVENTS, FEED_GONE, META, META_FEED_INDEXED_TO, META_NEXT_SEQ, META_SCHEMA,
    META_STORE_ID, SCHEMA_VERSION,
};
use super::writer::Job;
use super::{AcceptOutcome, Shared, Store, StoreError};

/// Events the v1 migration indexes per write transaction: a large store is migrated in
/// bounded transactions, and a crash resumes where the last one ended.
pub(super) const MIGRATE_CHUNK: usize = 50_000;

/// The key of [`FEED_GONE`] for events whose client is unknown.
const UNKNOWN_CLIENT: &str = "";

const CURSOR_VERSION: u8 = 1;

/// A position in one store's sequence: the feed returns events after it. Opaque to clients
/// (base64url of a version byte, the store id and the seq).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedCursor {
    store: u64,
    seq: u64,
}

impl FeedCursor {
    /// `None` for anything this build did not issue.
    pub fn parse(s: &str) -> Option<FeedCursor> {
        let bytes: [u8; 17] = URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()?;
        if bytes[0] != CURSOR_VERSION {
            return None;
        }
        Some(FeedCursor {
            store: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            seq: u64::from_be_bytes(bytes[9..].try_into().ok()?),
        })
    }

    /// The store sequence number it points after.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// A cursor of the store (or stream) `store` after `seq`.
    pub(crate) fn new(store: u64, seq: u64) -> FeedCursor {
        FeedCursor { store, seq }
    }

    /// The id of the store it belongs to.
    pub(crate) fn store(&self) -> u64 {
        self.store
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut bytes = [0u8; 17];
        bytes[0] = CURSOR_VERSION;
        bytes[1..9].copy_from_slice(&self.store.to_be_bytes());
        bytes[9..].copy_from_slice(&self.seq.to_be_bytes());
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// One page request of a client's feed.
#[derive(Debug, Clone)]
pub struct FeedQuery {
    pub client: String,
    /// `None`: from the oldest event the store still keeps.
    pub after: Option<FeedCursor>,
    /// Only events of these types; empty: every type.
    pub types: Vec<String>,
    /// Most events returned.
    pub limit: usize,
    /// Bodies past this many bytes end the page (it always holds at least one event).
    pub max_bytes: usize,
    /// Most index rows looked at: a type filter that skips many ends the page early, with
    /// `more` set, instead of holding a read open over a huge backlog.
    pub max_scan: usize,
}

impl FeedQuery {
    /// Whether a page holding `events` events of `bytes` bytes, after `scanned` rows, is full.
    pub(crate) fn is_full(&self, events: usize, scanned: usize, bytes: usize) -> bool {
        events >= self.limit.max(1)
            || scanned >= self.max_scan.max(1)
            || (bytes >= self.max_bytes && events > 0)
    }
}

/// One returned event: its seq and its body as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEvent {
    pub seq: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// In the order they were accepted.
    pub events: Vec<FeedEvent>,
    /// Where the next page starts; the request's cursor when nothing was looked at.
    pub next: FeedCursor,
    /// Events of this client after the request's cursor were removed by retention before it
    /// read them (or the cursor is another store's): some are missing from this feed.
    pub truncated: bool,
    /// The page ended at a limit with rows left: ask again at once.
    pub more: bool,
}

/// The head fields the index needs, from a stored body.
#[derive(Deserialize)]
struct Head {
    #[serde(rename = "type")]
    type_: String,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

fn head(body: &[u8]) -> Option<Head> {
    serde_json::from_slice(body).ok()
}

/// The client of a stored event: before the last `/` of its dedupe key, or, for rows written
/// before clients were part of the key, from its body.
pub(super) fn client_of(key: &str, body: &[u8]) -> Option<String> {
    match key.rsplit_once('/') {
        Some((client, _)) => Some(client.to_owned()),
        None => head(body).and_then(|h| h.client_id),
    }
}

/// A new store's id: what tells its cursors from another store's.
pub(super) fn new_store_id() -> u64 {
    rand::random::<u64>()
}

/// The feed tables of one write transaction.
pub(super) struct FeedTables<'txn> {
    index: Table<'txn, (&'static str, u64), &'static str>,
    gone: Table<'txn, &'static str, u64>,
}

impl<'txn> FeedTables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(FeedTables {
            index: txn.open_table(CLIENT_EVENTS)?,
            gone: txn.open_table(FEED_GONE)?,
        })
    }

    /// A new event of `client`.
    pub(super) fn add(
        &mut self,
        client: &str,
        seq: u64,
        event_type: &str,
    ) -> Result<(), StoreError> {
        self.index.insert((client, seq), event_type)?;
        Ok(())
    }

    /// The type of `client`'s event `seq`, while it is stored.
    pub(super) fn type_of(&self, client: &str, seq: u64) -> Result<Option<String>, StoreError> {
        Ok(self.index.get((client, seq))?.map(|g| g.value().to_owned()))
    }

    /// gc forgot event `seq` of `client` (`None`: unknown): its row goes, and the client's
    /// readers with a cursor before it learn that they missed it.
    pub(super) fn removed(&mut self, client: Option<&str>, seq: u64) -> Result<(), StoreError> {
        let key = match client {
            Some(c) if !c.is_empty() => {
                self.index.remove((c, seq))?;
                c
            }
            _ => UNKNOWN_CLIENT,
        };
        let before = self.gone.get(key)?.map(|g| g.value()).unwrap_or(0);
        if seq > before {
            self.gone.insert(key, seq)?;
        }
        Ok(())
    }
}

/// Builds the feed index of a version 1 file, `chunk` events per transaction, and marks the
/// file version 2. Gaps in the seqs are events gc removed before the index existed; their
/// clients are unknown, so the highest counts as removed for every client.
pub(super) fn migrate_v1(db: &Database, chunk: usize) -> Result<(), StoreError> {
    let chunk = chunk.max(1);
    let mut unreadable = 0u64;
    loop {
        let txn = db.begin_write()?;
        let done = {
            let mut meta = txn.open_table(META)?;
            let from = meta
                .get(META_FEED_INDEXED_TO)?
                .map(|g| g.value())
                .unwrap_or(0);
            let events = txn.open_table(EVENTS)?;
            let mut index = txn.open_table(CLIENT_EVENTS)?;
            let mut gone = txn.open_table(FEED_GONE)?;
            let mut unknown_gone = gone.get(UNKNOWN_CLIENT)?.map(|g| g.value()).unwrap_or(0);
            let (mut last, mut n) = (from, 0usize);
            for row in events.range(from.saturating_add(1)..)? {
                let (k, v) = row?;
                let seq = k.value();
                let (key, _, _, body) = v.value();
                if seq > last + 1 {
                    unknown_gone = unknown_gone.max(seq - 1);
                }
                match (client_of(key, body), head(body)) {
                    (Some(client), Some(h)) => {
                        index.insert((client.as_str(), seq), h.type_.as_str())?;
                    }
                    // Never expected: such an event stays deliverable but is not in the feed.
                    _ => unreadable += 1,
                }
                last = seq;
                n += 1;
                if n == chunk {
                    break;
                }
            }
            let done = n < chunk;
            if done {
                let next_seq = meta.get(META_NEXT_SEQ)?.map(|g| g.value()).unwrap_or(1);
                if next_seq > last + 1 {
                    unknown_gone = unknown_gone.max(next_seq - 1);
                }
                meta.remove(META_FEED_INDEXED_TO)?;
                meta.insert(META_STORE_ID, new_store_id())?;
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
            } else {
                meta.insert(META_FEED_INDEXED_TO, last)?;
            }
            if unknown_gone > 0 {
                gone.insert(UNKNOWN_CLIENT, unknown_gone)?;
            }
            tracing::info!(indexed_to = last, done, "store migration: feed index");
            done
        };
        txn.commit()?;
        if done {
            if unreadable > 0 {
                tracing::warn!(
                    events = unreadable,
                    "store migration: events whose client or type could not be read are left out of the feed"
                );
            }
            return Ok(());
        }
    }
}

/// Long-polls waiting per client. Accepts wake those of their clients after the commit.
#[derive(Default)]
pub(crate) struct Notifier {
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
    count: AtomicUsize,
}

impl Notifier {
    /// Wakes the waiters of every client that got a new event in `batch`, just committed.
    pub(super) fn committed(&self, batch: &[Job]) {
        // Outcome-only batches (most of them under delivery load) skip the lock.
        if !batch.iter().any(|j| matches!(j, Job::Accept { .. })) {
            return;
        }
        let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.is_empty() {
            return;
        }
        for job in batch {
            let Job::Accept { events, reply } = job else {
                continue;
            };
            for (event, outcome) in events.iter().zip(reply.value().into_iter().flatten()) {
                if let (AcceptOutcome::New { .. }, Some((notify, _))) =
                    (outcome, waiting.get(&event.client))
                {
                    notify.notify_waiters();
                }
            }
        }
    }
}

/// A long-poll registered for one client's events; unregistered when dropped (also when the
/// request is dropped because its client hung up).
pub struct FeedWaiter {
    shared: Arc<Shared>,
    client: String,
    notify: Arc<Notify>,
}

impl FeedWaiter {
    /// Completes at the next commit of an event of this client after it was created (also if
    /// not polled before then: create it before reading, await it after).
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for FeedWaiter {
    fn drop(&mut self) {
        let feed = &self.shared.feed;
        let mut waiting = feed.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, n)) = waiting.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.client);
            }
        }
        feed.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Store {
    /// A page of `q.client`'s events after `q.after`, in seq order, from the client index
    /// (a read transaction; the writer is not involved).
    pub fn feed(&self, q: &FeedQuery) -> Result<FeedPage, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let store = meta.get(META_STORE_ID)?.map(|g| g.value()).unwrap_or(0);
        let gone_table = txn.open_table(FEED_GONE)?;
        let gone_of = |key: &str| -> Result<u64, StoreError> {
            Ok(gone_table.get(key)?.map(|g| g.value()).unwrap_or(0))
        };
        let gone = gone_of(q.client.as_str())?.max(gone_of(UNKNOWN_CLIENT)?);
        let (start, truncated) = match q.after {
            // "From the oldest kept" asks for no more than what is there.
            None => (0, false),
            Some(c) if c.store != store => (0, true),
            Some(c) => (c.seq, c.seq < gone),
        };
        let index = txn.open_table(CLIENT_EVENTS)?;
        let events = txn.open_table(EVENTS)?;
        let mut page = FeedPage {
            events: Vec::new(),
            next: FeedCursor { store, seq: start },
            truncated,
            more: false,
        };
        if start == u64::MAX {
            return Ok(page);
        }
        let client = q.client.as_str();
        let (mut scanned, mut bytes) = (0usize, 0usize);
        for row in index.range::<(&str, u64)>((client, start + 1)..=(client, u64::MAX))? {
            if q.is_full(page.events.len(), scanned, bytes) {
                page.more = true;
                break;
            }
            let (k, v) = row?;
            let seq = k.value().1;
            scanned += 1;
            page.next.seq = seq;
            if !q.types.is_empty() && !q.types.iter().any(|t| t == v.value()) {
                continue;
            }
            // A row always has its event (both go in one transaction); skip one that does not.
            if let Some(e) = events.get(seq)? {
                let body = e.value().3.to_vec();
                bytes += body.len();
                page.events.push(FeedEvent { seq, body });
            }
        }
        // Everything of this client up to now was looked at: the next page may start past
        // what retention removed, so that it reports only what goes missing after this one.
        if !page.more {
            page.next.seq = page.next.seq.max(gone);
        }
        Ok(page)
    }

    /// Registers a long-poll for `client`'s events; see [`FeedWaiter::notified`].
    pub fn feed_waiter(&self, client: &str) -> FeedWaiter {
        let shared = self.inner.shared.clone();
        let notify = {
            let mut waiting = shared
                .feed
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = waiting
                .entry(client.to_owned())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            entry.1 += 1;
            shared.feed.count.fetch_add(1, Ordering::Relaxed);
            entry.0.clone()
        };
        FeedWaiter {
            shared,
            client: client.to_owned(),
            notify,
        }
    }

    /// Long-polls registered now.
    pub fn feed_waiters(&self) -> usize {
        self.inner.shared.feed.count.load(Ordering::Relaxed)
    }

    /// Clients with a registered long-poll (tests: nothing is left behind).
    pub fn feed_waiting_clients(&self) -> usize {
        self.inner
            .shared
            .feed
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
