//! The operator's only persistence: an embedded redb file holding accepted events, their pending
//! deliveries and per-target counters.
//!
//! Writes go through one writer thread that group-commits: it drains every queued request (up to
//! [`StoreOptions::max_batch`]), applies them all in one write transaction, fsyncs once, then
//! answers each caller. A caller's `Ok` therefore means "on disk" — except for delivery outcomes
//! ([`Store::record`]): a batch of only those commits without an fsync (after waiting a moment
//! for company), and becomes durable with the next accept or within 200 ms. A crash can undo
//! such an outcome; the delivery is then made again, which at-least-once allows, and the fsync
//! stays off the delivery path. Reads open their own redb read transaction, see every commit,
//! and never wait for the writer.
//!
//! After an I/O error (a full disk, say) redb refuses every later transaction until the file is
//! closed and opened again; the writer does that by itself (see [`Store::health`]) and the store
//! answers [`StoreError::Unavailable`] meanwhile, so nothing is acknowledged that is not on disk.
//!
//! Each event is also indexed by its client (`feed.rs`), in the same transaction, so that one
//! client's events can be read after a cursor without scanning anyone else's; committing an
//! accept wakes the long-polls waiting for that client.
//!
//! Table layout: see `tables.rs`.

mod attempts;
mod feed;
pub mod jetstream;
mod tables;
mod writer;

#[cfg(test)]
mod attempts_tests;
#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod tests;

pub use attempts::{
    AttemptCursor, AttemptEntry, AttemptLog, AttemptPage, AttemptQuery, EntryEvent, EntryTarget,
    FtpReply, LogResult, MAX_RESPONSE_SNIPPET, rfc3339, truncate,
};
pub use feed::{FeedCursor, FeedEvent, FeedPage, FeedQuery, FeedWaiter};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use tables::{COUNTERS, EVENT_IDS, EVENTS, PENDING, TARGET_STATE, UPLOADED};
use writer::{Job, Reply};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "vehicle-connect.redb";

/// Events gc forgets per write transaction, so one gc never holds the writer for long.
const GC_CHUNK: usize = 10_000;

/// An event to accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The client the event belongs to: ids are unique per client, so one client can never
    /// make another's events look like duplicates.
    pub client: String,
    pub id: String,
    /// The event JSON as received (canonical); delivered byte for byte.
    pub body: Vec<u8>,
    /// Ordering key, e.g. the vehicle id: one lane reaches one target in order.
    pub lane: String,
    /// The event type (`vehicle.processed`, ...), kept in the client feed index so that a
    /// type filter reads no bodies.
    pub event_type: &'static str,
    /// Target keys such as `webhook/ns/name`; duplicates are ignored.
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    New {
        seq: u64,
    },
    /// The id was accepted before (and not yet forgotten by gc); nothing was written.
    Duplicate {
        seq: u64,
    },
}

impl AcceptOutcome {
    pub fn seq(&self) -> u64 {
        match *self {
            AcceptOutcome::New { seq } | AcceptOutcome::Duplicate { seq } => seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    pub target: String,
    pub seq: u64,
    pub event_id: String,
    pub lane: String,
    /// Failed attempts so far (each `Retry` adds one).
    pub attempts: u32,
    pub next_attempt_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        status: Option<u16>,
    },
    /// Delivered by an FTP upload: also counts files and bytes, and remembers the remote
    /// paths written for the vehicle (its lane).
    Uploaded {
        files: u32,
        bytes: u64,
        vin: Option<String>,
        paths: Vec<String>,
    },
    /// Delivered by removing files (`vehicle.deleted`): they are forgotten.
    Removed {
        paths: Vec<String>,
    },
    /// Not delivered, on purpose: the target no longer takes this event (another client,
    /// user or type), or its object was replaced. Counted apart from failures.
    Dropped {
        why: Why,
    },
    Retry {
        next_attempt_unix_ms: u64,
        why: Why,
    },
    GaveUp {
        why: Why,
    },
    /// The attempt changed nothing (410 Gone: the target is held, the delivery stays
    /// pending as it was); only its log entry is written.
    Held,
    /// Not attempted here: another replica owns the event's partition now and delivers it
    /// from the shared log. The row goes without counting anything.
    HandedOver,
}

/// Why an attempt failed or a delivery was dropped: a CamelCase reason for machines and
/// a message for people, kept apart from the attempt to the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Why {
    pub reason: String,
    pub message: String,
}

impl Why {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Why {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// The last failed attempt of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastFailure {
    pub event_id: String,
    pub at_unix_ms: u64,
    pub why: Why,
}

impl<'de> Deserialize<'de> for LastFailure {
    /// Also reads the `(event id, unix ms, "Reason: message")` rows of earlier versions.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Now {
            event_id: String,
            at_unix_ms: u64,
            why: Why,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Now(Now),
            Joined((String, u64, String)),
        }
        Ok(match Stored::deserialize(d)? {
            Stored::Now(n) => LastFailure {
                event_id: n.event_id,
                at_unix_ms: n.at_unix_ms,
                why: n.why,
            },
            Stored::Joined((event_id, at_unix_ms, joined)) => {
                let why = match joined.split_once(": ") {
                    Some((r, m)) if !r.contains(' ') => Why::new(r, m),
                    _ => Why::new("DeliveryFailed", joined.clone()),
                };
                LastFailure {
                    event_id,
                    at_unix_ms,
                    why,
                }
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub target: String,
    pub seq: u64,
    pub outcome: Outcome,
    pub at_unix_ms: u64,
    /// The attempt's delivery log entry, written in the same transaction; `None` writes none.
    pub log: Option<Box<AttemptLog>>,
}

/// Persisted per-target counters. `Default` is what a target with no history has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetCounters {
    pub delivered: u64,
    /// Deliveries given up (`GaveUp`, or expired past the retry policy's maximum age).
    pub failed: u64,
    /// Deliveries dropped because the target stopped taking them (`Dropped`).
    pub dropped: u64,
    /// Deliveries still pending.
    pub pending: u64,
    /// Failed attempts (`Retry` or `GaveUp`) since the last `Delivered`.
    pub consecutive_failures: u32,
    /// (event id, unix ms, HTTP status if any) of the last `Delivered`.
    pub last_delivery: Option<(String, u64, Option<u16>)>,
    /// The last failed attempt, `Retry` or `GaveUp`.
    pub last_failure: Option<LastFailure>,
    /// Files and bytes written by `Uploaded` outcomes (FTP).
    pub files: u64,
    pub bytes: u64,
    /// (VIN, files) of the last `Uploaded`.
    pub last_upload: Option<(Option<String>, u32)>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: u64,
    /// The event id (without its client).
    pub id: String,
    pub lane: String,
    pub received_unix_ms: u64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb page cache, in bytes.
    pub cache_bytes: usize,
    /// Most requests applied in one write transaction.
    pub max_batch: usize,
    /// Requests that may wait for the writer before senders wait too (backpressure).
    pub queue: usize,
    /// How long the store may fail to reopen its file after an I/O error before
    /// [`Store::health`] says `Failed`.
    pub unhealthy_after: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 4096,
            queue: 16_384,
            cache_bytes: 16 * 1024 * 1024,
            unhealthy_after: Duration::from_secs(60),
        }
    }
}

/// Whether the store can persist, for liveness, readiness and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    Healthy,
    /// Writes fail since `since` (e.g. the disk is full); the store reopens itself and is
    /// healthy again at the first write that commits. A restart would not help: the file is
    /// open, only the disk refuses.
    Degraded {
        reason: String,
        storage_full: bool,
        since: Instant,
    },
    /// The file could not be reopened for longer than [`StoreOptions::unhealthy_after`]:
    /// restarting the process is the remedy left.
    Failed {
        reason: String,
        since: Instant,
    },
}

impl StoreHealth {
    /// 0 healthy, 1 degraded, 2 failed: the value of the metrics gauge.
    pub fn level(&self) -> i64 {
        match self {
            StoreHealth::Healthy => 0,
            StoreHealth::Degraded { .. } => 1,
            StoreHealth::Failed { .. } => 2,
        }
    }
}

/// Figures for metrics. `events` and `pending` are gauges; the rest count since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events stored (pending or kept for dedupe until gc).
    pub events: u64,
    /// Pending deliveries over all targets.
    pub pending: u64,
    /// Write transactions committed.
    pub commits: u64,
    /// Requests (`accept`, `record`, ...) those commits carried.
    pub requests: u64,
    /// Most requests carried by one commit.
    pub largest_batch: u64,
    /// Write transactions that failed (their requests were retried alone).
    pub failed_commits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Db(#[from] redb::Error),
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the store writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("store writer stopped")]
    WriterStopped,
    /// The file failed an I/O operation and is being reopened; nothing of the request was
    /// stored.
    #[error("the store cannot write now ({reason}); nothing was stored, retry in {}s", retry_after.as_secs())]
    Unavailable {
        reason: String,
        /// The disk (volume) is full.
        storage_full: bool,
        /// When a retry may succeed: the writer's next reopen attempt, at least a second.
        retry_after: Duration,
    },
    #[error("store file has schema version {found}, this build reads {expected}")]
    Schema { found: u64, expected: u64 },
    #[error("delivery log entry {id} cannot be read")]
    BadAttempt { id: u64 },
    #[error("counters of target {target} cannot be encoded or decoded: {source}")]
    Counters {
        target: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The request failed because the store could not read or write its file, not because of
    /// the request: retrying later may succeed.
    pub fn is_io(&self) -> bool {
        match self {
            StoreError::Unavailable { .. } => true,
            StoreError::Db(e) => matches!(
                e,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
            ),
            _ => false,
        }
    }

    /// The disk holding the store is full.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Unavailable { storage_full, .. } => *storage_full,
            StoreError::Db(redb::Error::Io(e)) => e.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }

    /// How long a caller should wait before retrying, for errors a retry may cure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Unavailable { retry_after, .. } => Some(*retry_after),
            e if e.is_io() => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Handle to the store; cheap to clone. The writer thread stops and the file is closed when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    stats: Arc<Stats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after its current batch; joining it releases its
        // handle on the file, so the store can be reopened at once.
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// What the readers and the writer share: the open database, swapped whole when the writer
/// reopens it, and the health it reports.
pub(crate) struct Shared {
    /// `None` while closed after an I/O error. Readers clone the `Arc` for the length of one
    /// read; only the writer replaces it, after every clone of the old one is gone.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
    unhealthy_after: Duration,
    health: Mutex<Broken>,
    /// Long-polls of the client feed, woken by the writer after a commit.
    feed: feed::Notifier,
}

/// Since when, and why, the store cannot write; `since: None` while it can.
#[derive(Debug, Default, Clone)]
pub(crate) struct Broken {
    since: Option<Instant>,
    reason: String,
    /// The last error was a full disk.
    storage_full: bool,
    /// The last failed write was refused by a full disk.
    write_full: bool,
    /// Since when every attempt to reopen the file has failed.
    reopen_failing_since: Option<Instant>,
    retry_after: Duration,
}

impl Shared {
    /// Opens the file; a file left by a crash or a failed write is repaired by redb here.
    pub(super) fn open_db(&self) -> Result<Database, StoreError> {
        // redb's default page cache is 1 GiB; the operator must stay small, and recent
        // events (the ones deliveries read) are few.
        let db = redb::Builder::new()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)?;
        writer::init_schema(&db)?;
        Ok(db)
    }

    /// Bytes free for unprivileged writers on the disk of the file; `None` if unknown.
    pub(super) fn free_bytes(&self) -> Option<u64> {
        let dir = self.path.parent()?;
        let s = rustix::fs::statvfs(dir).ok()?;
        Some(s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// The open database, or `Unavailable` while the writer reopens it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let current = self.db.read().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some(db) => Ok(db.clone()),
            None => Err(self.unavailable()),
        }
    }

    pub(super) fn install(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        let mut current = self.db.write().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *current, db)
    }

    fn broken(&self) -> std::sync::MutexGuard<'_, Broken> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error callers get while the store cannot write.
    pub(super) fn unavailable(&self) -> StoreError {
        let b = self.broken();
        StoreError::Unavailable {
            reason: if b.reason.is_empty() {
                "the store file is being reopened".to_owned()
            } else {
                b.reason.clone()
            },
            storage_full: b.storage_full,
            retry_after: b.retry_after,
        }
    }

    /// A write failed with an I/O error, or reopening the file did.
    pub(super) fn failed(&self, err: &StoreError, reopen: bool, retry_after: Duration) {
        let mut b = self.broken();
        b.since.get_or_insert_with(Instant::now);
        b.reason = err.to_string();
        b.storage_full = err.is_storage_full();
        if reopen {
            b.reopen_failing_since.get_or_insert_with(Instant::now);
        } else {
            b.write_full = b.storage_full;
        }
        // Whole seconds for the Retry-After header; a sooner retry would fail again anyway.
        b.retry_after = Duration::from_secs(retry_after.as_secs_f64().ceil().max(1.0) as u64);
    }

    pub(super) fn reopened(&self) {
        self.broken().reopen_failing_since = None;
    }

    /// A write committed: the store is healthy again.
    pub(super) fn recovered(&self) {
        *self.broken() = Broken::default();
    }

    /// Whether the last failed write was refused by a full disk.
    pub(super) fn write_full(&self) -> bool {
        self.broken().write_full
    }

    fn health(&self) -> StoreHealth {
        let b = self.broken().clone();
        let Some(since) = b.since else {
            return StoreHealth::Healthy;
        };
        // Only a file that cannot be opened is worth a restart; a full disk stays full.
        if b.reopen_failing_since
            .is_some_and(|t| t.elapsed() >= self.unhealthy_after)
        {
            StoreHealth::Failed {
                reason: b.reason,
                since,
            }
        } else {
            StoreHealth::Degraded {
                reason: b.reason,
                storage_full: b.storage_full,
                since,
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    events: AtomicU64,
    pending: AtomicU64,
    commits: AtomicU64,
    requests: AtomicU64,
    largest_batch: AtomicU64,
    failed_commits: AtomicU64,
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory, and starts the writer
    /// thread. A file left by a crash is repaired by redb here.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let shared = Arc::new(Shared {
            db: RwLock::new(None),
            path: dir.join(DB_FILE),
            cache_bytes: options.cache_bytes,
            unhealthy_after: options.unhealthy_after,
            health: Mutex::new(Broken::default()),
            feed: feed::Notifier::default(),
        });
        let db = Arc::new(shared.open_db()?);

        let stats = Arc::new(Stats::default());
        let last_received = {
            let txn = db.begin_read()?;
            let events = txn.open_table(EVENTS)?;
            stats.events.store(events.len()?, Ordering::Relaxed);
            stats
                .pending
                .store(txn.open_table(PENDING)?.len()?, Ordering::Relaxed);
            events.last()?.map(|(_, v)| v.value().2).unwrap_or(0)
        };
        shared.install(Some(db.clone()));

        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = writer::Writer::new(
            db,
            shared.clone(),
            rx,
            stats.clone(),
            options.max_batch.max(1),
            last_received,
        );
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Spawn)?;

        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                jobs: Some(tx),
                writer: Some(handle),
                stats,
            }),
        })
    }

    /// Whether the store can persist now; see [`StoreHealth`].
    pub fn health(&self) -> StoreHealth {
        self.inner.shared.health()
    }

    async fn submit<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let jobs = self.inner.jobs.as_ref().ok_or(StoreError::WriterStopped)?;
        let (tx, rx) = oneshot::channel();
        jobs.send(make(Reply::new(tx)))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Stores new events and their pending deliveries; answers in input order. Durable when it
    /// returns `Ok`. An id seen before, earlier in the same call or by a concurrent caller,
    /// is `Duplicate` with the first one's seq and changes nothing.
    pub async fn accept(&self, events: Vec<NewEvent>) -> Result<Vec<AcceptOutcome>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.submit(|reply| Job::Accept { events, reply }).await
    }

    /// Records delivery outcomes. Visible to readers when it returns `Ok`, durable within
    /// 200 ms (or with the next accept, or when the store closes). Updates for a (target, seq)
    /// that is not pending (delivered already, target dropped) are ignored.
    pub async fn record(
        &self,
        updates: impl Into<Arc<[DeliveryUpdate]>>,
    ) -> Result<(), StoreError> {
        let updates = updates.into();
        if updates.is_empty() {
            return Ok(());
        }
        self.submit(|reply| Job::Record { updates, reply }).await
    }

    /// A target was deleted (or may no longer take its client's events): removes its pending
    /// deliveries, its counters, its upload records and its state. Returns how many pending deliveries
    /// were dropped.
    pub async fn drop_target(&self, target: &str) -> Result<u64, StoreError> {
        let target = target.to_owned();
        self.submit(|reply| Job::DropTarget { target, reply }).await
    }

    /// Adds pending deliveries of already stored events to `target` (e.g. a replay). Seqs that
    /// are unknown (or forgotten by gc) or already pending for it are skipped. Returns how many
    /// were added.
    pub async fn add_deliveries(&self, target: &str, seqs: Vec<u64>) -> Result<u64, StoreError> {
        if seqs.is_empty() {
            return Ok(0);
        }
        let target = target.to_owned();
        self.submit(|reply| Job::AddDeliveries {
            target,
            seqs,
            reply,
        })
        .await
    }

    /// Gives up `target`'s pending deliveries of events received before `cutoff_unix_ms` (the
    /// retry policy's maximum age), counting them as failed; at most `limit` in one call.
    /// Returns how many expired.
    pub async fn expire(
        &self,
        target: &str,
        cutoff_unix_ms: u64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let target = target.to_owned();
        self.submit(|reply| Job::Expire {
            target,
            cutoff_unix_ms,
            limit,
            reply,
        })
        .await
    }

    /// Forgets events that have no pending delivery and were received more than `retention`
    /// ago; their ids stop deduping then. Returns how many were forgotten.
    pub async fn gc(&self, retention: Duration) -> Result<u64, StoreError> {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff_unix_ms = now_unix_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            let removed = self
                .submit(|reply| Job::Gc {
                    cutoff_unix_ms,
                    limit: GC_CHUNK,
                    reply,
                })
                .await?;
            total += removed;
            if removed < GC_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    /// Every pending delivery, ordered by (target, seq): what to resume after a restart.
    pub fn pending(&self) -> Result<Vec<PendingDelivery>, StoreError> {
        // Held for the read, so the writer closes the file only after it.
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        collect_pending(table.iter()?)
    }

    /// Pending deliveries of one target, ordered by seq.
    pub fn pending_for(&self, target: &str) -> Result<Vec<PendingDelivery>, StoreError> {
        self.pending_after(target, 0, usize::MAX)
    }

    /// At most `limit` pending deliveries of `target` with a seq above `after`, by seq: the
    /// dispatcher pages through a backlog instead of holding it in memory.
    pub fn pending_after(
        &self,
        target: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PendingDelivery>, StoreError> {
        if after == u64::MAX || limit == 0 {
            return Ok(Vec::new());
        }
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let rows = table.range::<(&str, u64)>((target, after + 1)..=(target, u64::MAX))?;
        collect_pending(rows.take(limit))
    }

    /// Whether `target`'s delivery of `seq` is still pending (one lookup).
    pub fn is_pending(&self, target: &str, seq: u64) -> Result<bool, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        Ok(table.get((target, seq))?.is_some())
    }

    /// Every target that has pending deliveries (without reading them all).
    pub fn pending_targets(&self) -> Result<Vec<String>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let mut out: Vec<String> = Vec::new();
        loop {
            let next = match out.last() {
                None => table.first()?,
                // The next key after every (last, seq): `last` followed by the smallest
                // character sorts right after all of its rows.
                Some(last) => {
                    let after = format!("{last}\u{0}");
                    table
                        .range::<(&str, u64)>((after.as_str(), 0)..)?
                        .next()
                        .transpose()?
                }
            };
            match next {
                Some((k, _)) => out.push(k.value().0.to_owned()),
                None => return Ok(out),
            }
        }
    }

    /// A row of the target's own state (see `target_state` in the table layout).
    pub fn state(&self, target: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(TARGET_STATE)?;
        Ok(table.get((target, key))?.map(|g| g.value().to_vec()))
    }

    /// Writes (`Some`) or removes (`None`) a row of the target's own state. `durable`: on
    /// disk when this returns; otherwise within 200 ms, like delivery outcomes, and never
    /// after a later durable write.
    pub async fn set_state(
        &self,
        target: &str,
        key: &str,
        value: Option<Vec<u8>>,
        durable: bool,
    ) -> Result<(), StoreError> {
        let (target, key) = (target.to_owned(), key.to_owned());
        self.submit(|reply| Job::SetState {
            target,
            key,
            value,
            durable,
            reply,
        })
        .await
    }

    /// Remote paths recorded as uploaded for `lane` (a vehicle) at `target`.
    pub fn uploaded_paths(&self, target: &str, lane: &str) -> Result<Vec<String>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(UPLOADED)?;
        match table.get((target, lane))? {
            Some(g) => Ok(serde_json::from_slice(g.value()).unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    pub fn event_body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        Ok(table.get(seq)?.map(|g| g.value().3.to_vec()))
    }

    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        Ok(table.get(seq)?.map(|g| {
            let (key, lane, received_unix_ms, body) = g.value();
            StoredEvent {
                seq,
                id: event_id_of(key).to_owned(),
                lane: lane.to_owned(),
                received_unix_ms,
                body: body.to_vec(),
            }
        }))
    }

    /// The seq of a client's accepted event id, while it is remembered.
    pub fn seq_of(&self, client: &str, event_id: &str) -> Result<Option<u64>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(EVENT_IDS)?;
        Ok(table
            .get(dedupe_key(client, event_id).as_str())?
            .map(|g| g.value()))
    }

    /// Persisted counters of a target; all zero for a target with no history.
    pub fn counters(&self, target: &str) -> Result<TargetCounters, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(COUNTERS)?;
        match table.get(target)? {
            Some(g) => tables::decode_counters(target, g.value()),
            None => Ok(TargetCounters::default()),
        }
    }

    /// When the oldest event still pending for `target` was received (unix ms): how long its
    /// backlog has waited. Two point reads, whatever the backlog's size.
    pub fn oldest_pending_ms(&self, target: &str) -> Result<Option<u64>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let pending = txn.open_table(PENDING)?;
        let Some((k, _)) = pending
            .range::<(&str, u64)>((target, 0)..=(target, u64::MAX))?
            .next()
            .transpose()?
        else {
            return Ok(None);
        };
        let seq = k.value().1;
        let events = txn.open_table(EVENTS)?;
        Ok(events.get(seq)?.map(|g| g.value().2))
    }

    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.stats;
        StoreStats {
            events: s.events.load(Ordering::Relaxed),
            pending: s.pending.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            failed_commits: s.failed_commits.load(Ordering::Relaxed),
        }
    }
}

type PendingRow<'a> = redb::Result<(
    redb::AccessGuard<'a, (&'static str, u64)>,
    redb::AccessGuard<'a, (&'static str, &'static str, u32, u64)>,
)>;

fn collect_pending<'a>(
    rows: impl Iterator<Item = PendingRow<'a>>,
) -> Result<Vec<PendingDelivery>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        let (k, v) = row?;
        let (target, seq) = k.value();
        let (event_id, lane, attempts, next_attempt_unix_ms) = v.value();
        out.push(PendingDelivery {
            target: target.to_owned(),
            seq,
            event_id: event_id.to_owned(),
            lane: lane.to_owned(),
            attempts,
            next_attempt_unix_ms,
        });
    }
    Ok(out)
}

/// The dedupe key of a client's event id. Event ids never contain `/` (the ingest API's
/// alphabet), so the last `/` separates them from any client id.
/// The `target_state` key of how far an event's request chain got (API connections); the
/// store removes it with the delivery when the event is given up, dropped or expired.
pub fn chain_progress_key(seq: u64) -> String {
    format!("chain/{seq}")
}

pub fn dedupe_key(client: &str, event_id: &str) -> String {
    format!("{client}/{event_id}")
}

fn event_id_of(key: &str) -> &str {
    key.rsplit_once('/').map_or(key, |(_, id)| id)
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
