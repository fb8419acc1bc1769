//! The operator's only persistence: an embedded redb file holding accepted events, their pending
//! deliveries and per-target counters.
//!
//! Writes go through one writer thread that group-commits: it drains every queued request (up to
//! [`StoreOptions::max_batch`]), applies them all in one write transaction, fsyncs once, then
//! answers each caller. A caller's `Ok` therefore means "on disk". Reads open their own redb read
//! transaction and never wait for the writer.
//!
//! Table layout: see `tables.rs`.

mod tables;
mod writer;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use tables::{COUNTERS, EVENT_IDS, EVENTS, PENDING, UPLOADED};
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
        reason: String,
    },
    Retry {
        next_attempt_unix_ms: u64,
        reason: String,
    },
    GaveUp {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryUpdate {
    pub target: String,
    pub seq: u64,
    pub outcome: Outcome,
    pub at_unix_ms: u64,
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
    /// (event id, unix ms, reason) of the last failed attempt, `Retry` or `GaveUp`.
    pub last_failure: Option<(String, u64, String)>,
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_batch: 4096,
            queue: 16_384,
            cache_bytes: 32 * 1024 * 1024,
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
    #[error("store file has schema version {found}, this build reads {expected}")]
    Schema { found: u64, expected: u64 },
    #[error("counters of target {target} cannot be encoded or decoded: {source}")]
    Counters {
        target: String,
        #[source]
        source: serde_json::Error,
    },
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
    db: Arc<Database>,
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
        // redb's default page cache is 1 GiB; the operator must stay small, and recent
        // events (the ones deliveries read) are few.
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(options.cache_bytes)
                .create(dir.join(DB_FILE))?,
        );
        writer::init_schema(&db)?;

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

        let (tx, rx) = mpsc::channel(options.queue.max(1));
        let writer = writer::Writer::new(
            db.clone(),
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
                db,
                jobs: Some(tx),
                writer: Some(handle),
                stats,
            }),
        })
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

    /// Records delivery outcomes. Durable when it returns `Ok`. Updates for a (target, seq)
    /// that is not pending (delivered already, target dropped) are ignored.
    pub async fn record(&self, updates: Vec<DeliveryUpdate>) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.submit(|reply| Job::Record { updates, reply }).await
    }

    /// A target was deleted (or may no longer take its client's events): removes its pending
    /// deliveries, its counters and its upload records. Returns how many pending deliveries
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
        let txn = self.inner.db.begin_read()?;
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
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let rows = table.range::<(&str, u64)>((target, after + 1)..=(target, u64::MAX))?;
        collect_pending(rows.take(limit))
    }

    /// Every target that has pending deliveries (without reading them all).
    pub fn pending_targets(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
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

    /// Remote paths recorded as uploaded for `lane` (a vehicle) at `target`.
    pub fn uploaded_paths(&self, target: &str, lane: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(UPLOADED)?;
        match table.get((target, lane))? {
            Some(g) => Ok(serde_json::from_slice(g.value()).unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    pub fn event_body(&self, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        Ok(table.get(seq)?.map(|g| g.value().3.to_vec()))
    }

    pub fn event(&self, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        let txn = self.inner.db.begin_read()?;
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
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(EVENT_IDS)?;
        Ok(table
            .get(dedupe_key(client, event_id).as_str())?
            .map(|g| g.value()))
    }

    /// Persisted counters of a target; all zero for a target with no history.
    pub fn counters(&self, target: &str) -> Result<TargetCounters, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(COUNTERS)?;
        match table.get(target)? {
            Some(g) => tables::decode_counters(target, g.value()),
            None => Ok(TargetCounters::default()),
        }
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
