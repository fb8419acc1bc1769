//! The writer thread: owns the write side and group-commits queued requests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    WriteTransaction,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::attempts::{LogResult, LogTables, NewEntry};
use super::feed::{self, FeedTables};
use super::tables::{
    self, ATTEMPTS, ATTEMPTS_BY_SEQ, ATTEMPTS_BY_TARGET, CLIENT_EVENTS, COUNTERS, EVENT_IDS,
    EVENT_REFS, EVENTS, FEED_GONE, META, META_NEXT_ATTEMPT, META_NEXT_SEQ, META_SCHEMA,
    META_STORE_ID, PENDING, SCHEMA_V1, SCHEMA_VERSION, TARGET_STATE, UPLOADED,
};
use super::{
    AcceptOutcome, AttemptLog, DeliveryUpdate, LastFailure, NewEvent, Outcome, Shared, Stats,
    StoreError, TargetCounters, Why,
};

/// Answer slot of one request: filled while the transaction is applied, sent after commit.
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T, StoreError>>,
    value: Option<T>,
}

impl<T> Reply<T> {
    pub(super) fn new(tx: oneshot::Sender<Result<T, StoreError>>) -> Self {
        Reply { tx, value: None }
    }

    pub(super) fn set(&mut self, value: T) {
        self.value = Some(value);
    }

    pub(super) fn value(&self) -> Option<&T> {
        self.value.as_ref()
    }

    fn send_committed(self) {
        // A caller that went away no longer needs the answer; its write stands.
        let _ = self.tx.send(self.value.ok_or(StoreError::WriterStopped));
    }

    fn send_err(self, err: StoreError) {
        let _ = self.tx.send(Err(err));
    }
}

pub(crate) enum Job {
    Accept {
        events: Vec<NewEvent>,
        reply: Reply<Vec<AcceptOutcome>>,
    },
    Record {
        /// Shared so that a caller retrying after a failed commit resends without copying.
        updates: Arc<[DeliveryUpdate]>,
        reply: Reply<()>,
    },
    DropTarget {
        target: String,
        reply: Reply<u64>,
    },
    AddDeliveries {
        target: String,
        seqs: Vec<u64>,
        reply: Reply<u64>,
    },
    Gc {
        cutoff_unix_ms: u64,
        limit: usize,
        reply: Reply<u64>,
    },
    Expire {
        target: String,
        cutoff_unix_ms: u64,
        limit: usize,
        reply: Reply<u64>,
    },
    GcAttempts {
        cutoff_unix_ms: u64,
        max_entries: u64,
        limit: usize,
        reply: Reply<u64>,
    },
    RestoreAttempts {
        rows: Vec<(u64, Vec<u8>)>,
        reply: Reply<()>,
    },
    SetState {
        target: String,
        key: String,
        /// `None` removes the row.
        value: Option<Vec<u8>>,
        durable: bool,
        reply: Reply<()>,
    },
}

impl Job {
    /// Only delivery outcomes may commit without an fsync: losing one in a crash repeats a
    /// delivery, which at-least-once allows. Everything else (an accepted event above all)
    /// is durable when answered.
    fn deferrable(&self) -> bool {
        match self {
            Job::Record { .. } => true,
            Job::SetState { durable, .. } => !durable,
            _ => false,
        }
    }

    fn send_committed(self) {
        match self {
            Job::Accept { reply, .. } => reply.send_committed(),
            Job::Record { reply, .. } => reply.send_committed(),
            Job::DropTarget { reply, .. }
            | Job::AddDeliveries { reply, .. }
            | Job::Gc { reply, .. }
            | Job::Expire { reply, .. }
            | Job::GcAttempts { reply, .. } => reply.send_committed(),
            Job::RestoreAttempts { reply, .. } => reply.send_committed(),
            Job::SetState { reply, .. } => reply.send_committed(),
        }
    }

    fn send_err(self, err: StoreError) {
        match self {
            Job::Accept { reply, .. } => reply.send_err(err),
            Job::Record { reply, .. } => reply.send_err(err),
            Job::DropTarget { reply, .. }
            | Job::AddDeliveries { reply, .. }
            | Job::Gc { reply, .. }
            | Job::Expire { reply, .. }
            | Job::GcAttempts { reply, .. } => reply.send_err(err),
            Job::RestoreAttempts { reply, .. } => reply.send_err(err),
            Job::SetState { reply, .. } => reply.send_err(err),
        }
    }

    fn apply(&mut self, t: &mut Tables<'_>) -> Result<(), StoreError> {
        // Outcomes only release references; everything else may read them.
        if !matches!(self, Job::Record { .. }) {
            t.flush_releases()?;
        }
        match self {
            Job::Accept { events, reply } => reply.set(t.accept(events)?),
            Job::Record { updates, reply } => reply.set(t.record(updates)?),
            Job::DropTarget { target, reply } => reply.set(t.drop_target(target)?),
            Job::AddDeliveries {
                target,
                seqs,
                reply,
            } => reply.set(t.add_deliveries(target, seqs)?),
            Job::Gc {
                cutoff_unix_ms,
                limit,
                reply,
            } => reply.set(t.gc(*cutoff_unix_ms, *limit)?),
            Job::Expire {
                target,
                cutoff_unix_ms,
                limit,
                reply,
            } => reply.set(t.expire(target, *cutoff_unix_ms, *limit)?),
            Job::GcAttempts {
                cutoff_unix_ms,
                max_entries,
                limit,
                reply,
            } => reply.set(t.log.gc(*cutoff_unix_ms, *max_entries, *limit)?),
            Job::RestoreAttempts { rows, reply } => {
                let top_seq = t.log.restore(rows)?;
                t.next_seq = t.next_seq.max(top_seq.saturating_add(1));
                reply.set(());
            }
            Job::SetState {
                target,
                key,
                value,
                reply,
                ..
            } => reply.set(t.set_state(target, key, value.as_deref())?),
        }
        Ok(())
    }
}

/// Creates the tables of a new file, migrates a version 1 file, and refuses a file of another
/// layout.
pub(super) fn init_schema(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    let found = txn.open_table(META)?.get(META_SCHEMA)?.map(|g| g.value());
    if found == Some(SCHEMA_V1) {
        txn.abort()?;
        feed::migrate_v1(db, feed::MIGRATE_CHUNK)?;
        return init_schema(db);
    }
    {
        let mut meta = txn.open_table(META)?;
        match found {
            Some(found) if found != SCHEMA_VERSION => {
                return Err(StoreError::Schema {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
            Some(_) => {}
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
                meta.insert(META_STORE_ID, feed::new_store_id())?;
            }
        }
        // Opening creates them, so readers never meet a missing table.
        txn.open_table(EVENTS)?;
        txn.open_table(EVENT_IDS)?;
        txn.open_table(PENDING)?;
        txn.open_table(EVENT_REFS)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(UPLOADED)?;
        txn.open_table(CLIENT_EVENTS)?;
        txn.open_table(FEED_GONE)?;
        txn.open_table(TARGET_STATE)?;
        txn.open_table(ATTEMPTS)?;
        txn.open_table(ATTEMPTS_BY_TARGET)?;
        txn.open_table(ATTEMPTS_BY_SEQ)?;
    }
    txn.commit()?;
    Ok(())
}

/// Pauses between reopen attempts after an I/O error double from the first to the last; every
/// reopen after a failed write makes redb repair the file, so a full disk must not spin.
const REOPEN_BACKOFF_FIRST: Duration = Duration::from_millis(250);
const REOPEN_BACKOFF_LAST: Duration = Duration::from_secs(5);
/// How often a closed store looks for requests to refuse while it waits to reopen.
const CLOSED_POLL: Duration = Duration::from_millis(20);
/// After a full disk refused a write, writes are tried again only once the disk has this much
/// room: each failed write costs a close and a reopen that repairs the file (seconds for a large
/// one), during which readers wait too. Until then requests are refused without touching the file.
const ROOM_TO_RETRY: u64 = 1024 * 1024;
/// Outcome-only commits skip the fsync; the next durable commit (an accept, or this timer)
/// makes them durable. A crash loses at most this much of outcomes, which are delivered again.
pub(super) const SYNC_EVERY: Duration = Duration::from_millis(200);
/// An outcome-only batch waits this long for more requests, so a busy dispatcher's outcomes
/// share commits instead of each paying one.
const LINGER: Duration = Duration::from_millis(2);

/// Longest wait for readers to let go of a failed file before trying to reopen anyway.
const READERS_GRACE: Duration = Duration::from_secs(30);

pub(super) struct Writer {
    /// `None` while closed after an I/O error.
    db: Option<Arc<Database>>,
    shared: Arc<Shared>,
    jobs: mpsc::Receiver<Job>,
    stats: Arc<Stats>,
    max_batch: usize,
    /// Receive times never go backwards even if the wall clock does, so gc can stop its scan
    /// (in seq order) at the first event younger than the cutoff.
    last_now: u64,
    /// A write failed and none has committed since.
    broken: bool,
    backoff: Duration,
    next_reopen: Instant,
    /// Since when commits without an fsync wait for a durable one.
    unsynced_since: Option<Instant>,
}

impl Writer {
    pub(super) fn new(
        db: Arc<Database>,
        shared: Arc<Shared>,
        jobs: mpsc::Receiver<Job>,
        stats: Arc<Stats>,
        max_batch: usize,
        last_received: u64,
    ) -> Self {
        Writer {
            db: Some(db),
            shared,
            jobs,
            stats,
            max_batch,
            last_now: last_received,
            broken: false,
            backoff: REOPEN_BACKOFF_FIRST,
            next_reopen: Instant::now(),
            unsynced_since: None,
        }
    }

    pub(super) fn run(mut self) {
        // Only for timed waits on the request channel; the thread itself blocks on the file.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "the store writer cannot wait with a timeout; every commit is durable");
                self.unsynced_since = None;
                return self.run_untimed();
            }
        };
        let mut batch = Vec::with_capacity(self.max_batch.min(1024));
        loop {
            if self.db.is_none() && !self.wait_reopened() {
                return;
            }
            let first = match self.unsynced_since {
                Some(since) => {
                    let until = tokio::time::Instant::from_std(since + SYNC_EVERY);
                    match rt
                        .block_on(async { tokio::time::timeout_at(until, self.jobs.recv()).await })
                    {
                        Ok(Some(job)) => job,
                        Ok(None) => return self.sync(),
                        Err(_) => {
                            self.sync();
                            continue;
                        }
                    }
                }
                None => match self.jobs.blocking_recv() {
                    Some(job) => job,
                    None => return,
                },
            };
            batch.push(first);
            self.drain(&mut batch);
            if batch.iter().all(Job::deferrable) {
                let until = tokio::time::Instant::now() + LINGER;
                while batch.len() < self.max_batch {
                    match rt
                        .block_on(async { tokio::time::timeout_at(until, self.jobs.recv()).await })
                    {
                        Ok(Some(job)) => {
                            let durable = !job.deferrable();
                            batch.push(job);
                            self.drain(&mut batch);
                            if durable {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
            }
            self.last_now = self.last_now.max(super::now_unix_ms());
            self.process(std::mem::take(&mut batch));
        }
    }

    /// Every commit durable, without timers.
    fn run_untimed(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch.min(1024));
        loop {
            if self.db.is_none() && !self.wait_reopened() {
                return;
            }
            let Some(first) = self.jobs.blocking_recv() else {
                return;
            };
            batch.push(first);
            self.drain(&mut batch);
            self.last_now = self.last_now.max(super::now_unix_ms());
            self.process(std::mem::take(&mut batch));
        }
    }

    /// Adds what is queued now to `batch`, up to the batch limit.
    fn drain(&mut self, batch: &mut Vec<Job>) {
        while batch.len() < self.max_batch {
            match self.jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
    }

    /// Makes commits made without an fsync durable (an empty durable commit).
    fn sync(&mut self) {
        if self.unsynced_since.is_none() {
            return;
        }
        let Some(db) = self.db.clone() else {
            return;
        };
        let result = db
            .begin_write()
            .map_err(StoreError::from)
            .and_then(|mut txn| {
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                Ok(())
            });
        match result {
            Ok(()) => self.unsynced_since = None,
            Err(err) => {
                tracing::warn!(error = %err, "could not make delivery outcomes durable");
                self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                if err.is_io() {
                    self.close(&err);
                }
            }
        }
    }

    /// While the file is closed: refuses what arrives (callers answer "retry later" at once
    /// rather than hang) and reopens when the backoff allows. False once the store is dropped.
    fn wait_reopened(&mut self) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.next_reopen && self.reopen() {
                // Opening committed a write (the schema check): unless the disk was full, where
                // that proves little, the file takes writes again.
                if !self.shared.write_full() {
                    self.mark_recovered();
                }
                return true;
            }
            match self.jobs.try_recv() {
                Ok(job) => job.send_err(self.shared.unavailable()),
                Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => std::thread::sleep(
                    CLOSED_POLL.min(self.next_reopen.saturating_duration_since(now)),
                ),
            }
        }
    }

    fn process(&mut self, mut batch: Vec<Job>) {
        // Closed by an earlier request of a batch being retried one by one, or the disk is still
        // full.
        if self.db.is_none() || (self.broken && self.shared.write_full() && !self.room_to_retry()) {
            for job in batch {
                job.send_err(self.shared.unavailable());
            }
            return;
        }
        match self.commit_with_retry(&mut batch) {
            Ok(delta) => {
                let s = &self.stats;
                s.commits.fetch_add(1, Ordering::Relaxed);
                s.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
                s.largest_batch
                    .fetch_max(batch.len() as u64, Ordering::Relaxed);
                add_signed(&s.events, delta.events);
                add_signed(&s.pending, delta.pending);
                self.mark_recovered();
                self.shared.feed.committed(&batch);
                for job in batch {
                    job.send_committed();
                }
            }
            Err(err) if err.is_io() => {
                // Nothing of the batch is known to be stored: every caller hears so.
                for job in batch {
                    job.send_err(self.shared.unavailable());
                }
            }
            Err(err) => {
                if batch.len() == 1 {
                    if let Some(job) = batch.pop() {
                        job.send_err(err);
                    }
                    return;
                }
                // One bad request must not fail the others: retry each in its own transaction.
                tracing::warn!(error = %err, requests = batch.len(), "store group commit failed; retrying requests one by one");
                for job in batch {
                    self.process(vec![job]);
                }
            }
        }
    }

    /// Commits the batch. After an I/O error other than a full disk (which stays full for a
    /// while) the file is reopened at once and the batch tried once more.
    fn commit_with_retry(&mut self, batch: &mut [Job]) -> Result<Delta, StoreError> {
        let mut floor = None;
        match self.attempt(batch, &mut floor) {
            Err(e) if e.is_io() && !e.is_storage_full() && self.reopen() => {
                let delta = self.attempt(batch, &mut None)?;
                if let Some(floor) = floor {
                    claim_landed(batch, floor);
                }
                Ok(delta)
            }
            result => result,
        }
    }

    /// One commit; an I/O error closes the file (redb refuses everything after one).
    fn attempt(&mut self, batch: &mut [Job], floor: &mut Option<u64>) -> Result<Delta, StoreError> {
        let Some(db) = self.db.clone() else {
            return Err(self.shared.unavailable());
        };
        let result = self.commit(&db, batch, floor);
        drop(db);
        if let Err(err) = &result {
            self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
            if err.is_io() {
                self.close(err);
            }
        }
        result
    }

    fn commit(
        &mut self,
        db: &Database,
        batch: &mut [Job],
        floor: &mut Option<u64>,
    ) -> Result<Delta, StoreError> {
        let mut txn = db.begin_write()?;
        let deferred = batch.iter().all(Job::deferrable)
            && self
                .unsynced_since
                .is_none_or(|since| since.elapsed() < SYNC_EVERY);
        txn.set_durability(if deferred {
            Durability::None
        } else {
            Durability::Immediate
        })?;
        // The first seq this transaction hands out: if its commit fails but reaches the disk
        // anyway, the retry recognises its events by it (`claim_landed`).
        *floor = Some(
            txn.open_table(META)?
                .get(META_NEXT_SEQ)?
                .map(|g| g.value())
                .unwrap_or(1),
        );
        let delta = {
            let mut t = Tables::open(&txn, self.last_now)?;
            for job in batch.iter_mut() {
                job.apply(&mut t)?;
            }
            t.finish()?
        };
        txn.commit()?;
        self.unsynced_since = match (deferred, self.unsynced_since) {
            (false, _) => None,
            (true, since) => Some(since.unwrap_or_else(Instant::now)),
        };
        Ok(delta)
    }

    /// Closes the failed file so that it can be reopened: readers are cut off first and the
    /// last handle is closed before anything opens the file again (redb refuses a second open).
    fn close(&mut self, err: &StoreError) {
        self.broken = true;
        // Commits not yet made durable are lost with the file; their deliveries repeat.
        self.unsynced_since = None;
        self.shared.failed(err, false, self.backoff);
        self.schedule_reopen();
        tracing::warn!(error = %err, retry_in = ?self.until_reopen(), "store write failed; closing the file to reopen it");
        let Some(mut db) = self.db.take() else {
            return;
        };
        self.shared.install(None);
        let deadline = Instant::now() + READERS_GRACE;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    // redb reports the error that failed it again here; the file is closed anyway.
                    if let Err(e) = db.close() {
                        tracing::debug!(error = %e, "closing the failed store file");
                    }
                    return;
                }
                Err(still_shared) if Instant::now() < deadline => {
                    db = still_shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => {
                    // The last reader closes it when done; a reopen before that fails and
                    // is retried.
                    tracing::warn!(
                        "a reader holds the failed store file; reopening may have to wait"
                    );
                    return;
                }
            }
        }
    }

    fn room_to_retry(&self) -> bool {
        // Unknown: try.
        self.shared
            .free_bytes()
            .is_none_or(|free| free >= ROOM_TO_RETRY)
    }

    fn until_reopen(&self) -> Duration {
        self.next_reopen.saturating_duration_since(Instant::now())
    }

    fn schedule_reopen(&mut self) {
        self.next_reopen = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF_LAST);
    }

    /// Opens the file again (redb repairs it) and hands it to readers.
    fn reopen(&mut self) -> bool {
        match self.shared.open_db() {
            Ok(db) => {
                let db = Arc::new(db);
                // The failed commit may have reached the disk after all: count again.
                if let Err(e) = self.recount(&db) {
                    tracing::warn!(error = %e, "could not recount the store after reopening");
                }
                self.shared.install(Some(db.clone()));
                self.db = Some(db);
                self.shared.reopened();
                tracing::info!("store file reopened");
                true
            }
            Err(err) => {
                self.shared.failed(&err, true, self.backoff);
                self.schedule_reopen();
                tracing::warn!(error = %err, retry_in = ?self.until_reopen(), "could not reopen the store file");
                false
            }
        }
    }

    fn recount(&self, db: &Database) -> Result<(), StoreError> {
        let txn = db.begin_read()?;
        self.stats
            .events
            .store(txn.open_table(EVENTS)?.len()?, Ordering::Relaxed);
        self.stats
            .pending
            .store(txn.open_table(PENDING)?.len()?, Ordering::Relaxed);
        Ok(())
    }

    fn mark_recovered(&mut self) {
        if self.broken {
            self.broken = false;
            self.backoff = REOPEN_BACKOFF_FIRST;
            self.shared.recovered();
            tracing::info!("store writes commit again");
        }
    }
}

/// After a failed commit, the batch was retried on the reopened file. Events that the failed
/// commit stored after all come back as duplicates of seqs at or past `floor`, the first seq it
/// handed out: they are this batch's own, so their callers get `New` (once per seq), and the
/// events are delivered, not mistaken for earlier ones.
pub(super) fn claim_landed(batch: &mut [Job], floor: u64) {
    let mut seen = BTreeSet::new();
    for job in batch {
        let Job::Accept { reply, .. } = job else {
            continue;
        };
        for outcome in reply.value.iter_mut().flatten() {
            match *outcome {
                AcceptOutcome::New { seq } => {
                    seen.insert(seq);
                }
                AcceptOutcome::Duplicate { seq } if seq >= floor && seen.insert(seq) => {
                    *outcome = AcceptOutcome::New { seq };
                }
                AcceptOutcome::Duplicate { .. } => {}
            }
        }
    }
}

fn add_signed(counter: &std::sync::atomic::AtomicU64, delta: i64) {
    if delta >= 0 {
        counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
    } else {
        counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
    }
}

/// Changes of the gauges in one transaction, applied to [`Stats`] after it commits.
#[derive(Default)]
struct Delta {
    events: i64,
    pending: i64,
}

/// The tables of one write transaction plus the state cached across its requests.
struct Tables<'txn> {
    meta: Table<'txn, &'static str, u64>,
    events: Table<'txn, u64, (&'static str, &'static str, u64, &'static [u8])>,
    ids: Table<'txn, &'static str, u64>,
    pending: Table<'txn, (&'static str, u64), (&'static str, &'static str, u32, u64)>,
    refs: Table<'txn, u64, u32>,
    uploaded: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    state: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    counters_table: Table<'txn, &'static str, &'static [u8]>,
    feed: FeedTables<'txn>,
    log: LogTables<'txn>,
    /// `meta`'s next log entry id when the transaction began.
    log_first_id: u64,
    /// Counters touched in this transaction; `None` = delete. Written once in `finish`.
    counters: BTreeMap<String, Option<TargetCounters>>,
    /// Pending deliveries gone per event in this transaction, not yet taken off `refs`: an
    /// event's outcomes come in bursts (one per target), so its count is written once.
    released: BTreeMap<u64, u32>,
    next_seq: u64,
    now: u64,
    delta: Delta,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction, now: u64) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        let next_seq = meta.get(META_NEXT_SEQ)?.map(|g| g.value()).unwrap_or(1);
        let log_first_id = meta.get(META_NEXT_ATTEMPT)?.map_or(1, |g| g.value());
        Ok(Tables {
            meta,
            events: txn.open_table(EVENTS)?,
            ids: txn.open_table(EVENT_IDS)?,
            pending: txn.open_table(PENDING)?,
            refs: txn.open_table(EVENT_REFS)?,
            uploaded: txn.open_table(UPLOADED)?,
            state: txn.open_table(TARGET_STATE)?,
            counters_table: txn.open_table(COUNTERS)?,
            feed: FeedTables::open(txn)?,
            log: LogTables::open(txn, log_first_id)?,
            log_first_id,
            counters: BTreeMap::new(),
            released: BTreeMap::new(),
            next_seq,
            now,
            delta: Delta::default(),
        })
    }

    fn finish(mut self) -> Result<Delta, StoreError> {
        self.flush_releases()?;
        self.meta.insert(META_NEXT_SEQ, self.next_seq)?;
        if self.log.next_id() != self.log_first_id {
            self.meta.insert(META_NEXT_ATTEMPT, self.log.next_id())?;
        }
        for (target, counters) in &self.counters {
            match counters {
                Some(c) => {
                    let bytes = tables::encode_counters(target, c)?;
                    self.counters_table
                        .insert(target.as_str(), bytes.as_slice())?;
                }
                None => {
                    self.counters_table.remove(target.as_str())?;
                }
            }
        }
        Ok(self.delta)
    }

    fn counters_mut(&mut self, target: &str) -> Result<&mut TargetCounters, StoreError> {
        if !self.counters.contains_key(target) {
            let stored = match self.counters_table.get(target)? {
                Some(g) => Some(tables::decode_counters(target, g.value())?),
                None => None,
            };
            self.counters.insert(target.to_owned(), stored);
        }
        // Absent or deleted earlier in this transaction: start from zero.
        let slot = self.counters.entry(target.to_owned()).or_default();
        Ok(slot.get_or_insert_with(TargetCounters::default))
    }

    /// One pending delivery of `seq` is gone (taken off `refs` by [`Self::flush_releases`]).
    fn release(&mut self, seq: u64) -> Result<(), StoreError> {
        *self.released.entry(seq).or_default() += 1;
        self.delta.pending -= 1;
        Ok(())
    }

    /// Applies the releases so far to `refs`; before anything reads it.
    fn flush_releases(&mut self) -> Result<(), StoreError> {
        for (seq, gone) in std::mem::take(&mut self.released) {
            let left = self.refs.get(seq)?.map(|g| g.value()).unwrap_or(0);
            if left <= gone {
                self.refs.remove(seq)?;
            } else {
                self.refs.insert(seq, left - gone)?;
            }
        }
        Ok(())
    }

    /// A pending delivery of `seq` to `target`; the caller counts the event's references.
    fn add_pending(
        &mut self,
        target: &str,
        seq: u64,
        id: &str,
        lane: &str,
    ) -> Result<(), StoreError> {
        self.pending
            .insert((target, seq), (id, lane, 0u32, self.now))?;
        self.counters_mut(target)?.pending += 1;
        self.delta.pending += 1;
        Ok(())
    }

    fn accept(&mut self, events: &[NewEvent]) -> Result<Vec<AcceptOutcome>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let key = super::dedupe_key(&ev.client, &ev.id);
            // The index sees this transaction's own inserts, so dedupe also holds within a
            // batch and between concurrent callers sharing a commit.
            if let Some(seq) = self.ids.get(key.as_str())?.map(|g| g.value()) {
                out.push(AcceptOutcome::Duplicate { seq });
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.events.insert(
                seq,
                (key.as_str(), ev.lane.as_str(), self.now, ev.body.as_slice()),
            )?;
            self.ids.insert(key.as_str(), seq)?;
            self.feed.add(&ev.client, seq, ev.event_type)?;
            self.delta.events += 1;
            let targets: BTreeSet<&str> = ev.targets.iter().map(String::as_str).collect();
            for &target in &targets {
                self.add_pending(target, seq, &ev.id, &ev.lane)?;
            }
            // One reference count per event, not a read and a write per target.
            if !targets.is_empty() {
                self.refs.insert(seq, targets.len() as u32)?;
            }
            out.push(AcceptOutcome::New { seq });
        }
        Ok(out)
    }

    fn record(&mut self, updates: &[DeliveryUpdate]) -> Result<(), StoreError> {
        for u in updates {
            // Logged even when the delivery is no longer pending: the attempt was made.
            if let Some(log) = &u.log {
                self.log_attempt(u, log)?;
            }
            if matches!(u.outcome, Outcome::Held) {
                continue;
            }
            let key = (u.target.as_str(), u.seq);
            // A finished delivery's row is removed, and the removal says whether it was still
            // pending (one lookup, not two); a retry rewrites the row it reads.
            let old = if matches!(u.outcome, Outcome::Retry { .. }) {
                self.pending.get(key)?
            } else {
                self.pending.remove(key)?
            };
            let Some((event_id, lane, attempts)) = old.map(|g| {
                let (id, lane, attempts, _) = g.value();
                (id.to_owned(), lane.to_owned(), attempts)
            }) else {
                continue;
            };
            match &u.outcome {
                Outcome::Delivered { status } => {
                    self.release(u.seq)?;
                    let c = self.counters_mut(&u.target)?;
                    c.delivered += 1;
                    c.pending = c.pending.saturating_sub(1);
                    c.consecutive_failures = 0;
                    c.last_delivery = Some((event_id, u.at_unix_ms, *status));
                }
                Outcome::Uploaded {
                    files,
                    bytes,
                    vin,
                    paths,
                } => {
                    self.release(u.seq)?;
                    self.update_uploaded(&u.target, &lane, paths, &[])?;
                    let c = self.counters_mut(&u.target)?;
                    c.delivered += 1;
                    c.pending = c.pending.saturating_sub(1);
                    c.consecutive_failures = 0;
                    c.files += u64::from(*files);
                    c.bytes += *bytes;
                    c.last_upload = Some((vin.clone(), *files));
                    c.last_delivery = Some((event_id, u.at_unix_ms, None));
                }
                Outcome::Removed { paths } => {
                    self.release(u.seq)?;
                    self.update_uploaded(&u.target, &lane, &[], paths)?;
                    let c = self.counters_mut(&u.target)?;
                    c.delivered += 1;
                    c.pending = c.pending.saturating_sub(1);
                    c.consecutive_failures = 0;
                    c.last_delivery = Some((event_id, u.at_unix_ms, None));
                }
                Outcome::Dropped { .. } => {
                    self.release(u.seq)?;
                    self.forget_progress(&u.target, u.seq)?;
                    let c = self.counters_mut(&u.target)?;
                    c.dropped += 1;
                    c.pending = c.pending.saturating_sub(1);
                }
                Outcome::Retry {
                    next_attempt_unix_ms,
                    why,
                } => {
                    self.pending.insert(
                        key,
                        (
                            event_id.as_str(),
                            lane.as_str(),
                            attempts.saturating_add(1),
                            *next_attempt_unix_ms,
                        ),
                    )?;
                    let c = self.counters_mut(&u.target)?;
                    c.consecutive_failures = c.consecutive_failures.saturating_add(1);
                    c.last_failure = Some(LastFailure {
                        event_id,
                        at_unix_ms: u.at_unix_ms,
                        why: why.clone(),
                    });
                }
                Outcome::Held => {}
                Outcome::HandedOver => {
                    self.release(u.seq)?;
                    self.forget_progress(&u.target, u.seq)?;
                    let c = self.counters_mut(&u.target)?;
                    c.pending = c.pending.saturating_sub(1);
                }
                Outcome::GaveUp { why } => {
                    self.release(u.seq)?;
                    self.forget_progress(&u.target, u.seq)?;
                    let c = self.counters_mut(&u.target)?;
                    c.failed += 1;
                    c.pending = c.pending.saturating_sub(1);
                    c.consecutive_failures = c.consecutive_failures.saturating_add(1);
                    c.last_failure = Some(LastFailure {
                        event_id,
                        at_unix_ms: u.at_unix_ms,
                        why: why.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The log entry of an attempt the dispatcher made.
    fn log_attempt(&mut self, u: &DeliveryUpdate, log: &AttemptLog) -> Result<(), StoreError> {
        let why = log.why.as_ref().or(match &u.outcome {
            Outcome::Dropped { why } | Outcome::Retry { why, .. } | Outcome::GaveUp { why } => {
                Some(why)
            }
            _ => None,
        });
        self.log.add(&NewEntry {
            seq: u.seq,
            event_id: &log.event_id,
            client: &log.client,
            event_type: log.event_type,
            lane: &log.lane,
            vin: log.vin.as_deref(),
            target: &u.target,
            attempt: log.attempt,
            at: u.at_unix_ms,
            duration_ms: log.duration_ms,
            result: log.result,
            http_status: log.http_status,
            ftp_reply: log.ftp_reply.as_ref().map(|r| (r.code, r.text.as_str())),
            reason: why.map(|w| w.reason.as_str()),
            message: why.map(|w| w.message.as_str()),
            response: log.response.as_deref(),
        })?;
        Ok(())
    }

    /// The log entry of a delivery that ended in the store (expired, dropped with its target):
    /// client and type are looked up, as the pending row does not hold them.
    fn log_ended(
        &mut self,
        target: &str,
        seq: u64,
        (event_id, lane, attempts): (&str, &str, u32),
        result: LogResult,
        why: &Why,
    ) -> Result<(), StoreError> {
        let (client, vin) = match self.events.get(seq)? {
            Some(g) => {
                let (key, _, _, body) = g.value();
                (
                    feed::client_of(key, body).unwrap_or_default(),
                    super::attempts::vin_of(body),
                )
            }
            None => (String::new(), None),
        };
        let event_type = self.feed.type_of(&client, seq)?.unwrap_or_default();
        self.log.add(&NewEntry {
            seq,
            event_id,
            client: &client,
            event_type: &event_type,
            lane,
            vin: vin.as_deref(),
            target,
            attempt: attempts,
            at: self.now,
            duration_ms: 0,
            result,
            http_status: None,
            ftp_reply: None,
            reason: Some(&why.reason),
            message: Some(&why.message),
            response: None,
        })?;
        Ok(())
    }

    fn drop_target(&mut self, target: &str) -> Result<u64, StoreError> {
        let mut seqs = Vec::new();
        for row in self
            .pending
            .range::<(&str, u64)>((target, 0)..=(target, u64::MAX))?
        {
            let (k, v) = row?;
            let (id, lane, attempts, _) = v.value();
            seqs.push((k.value().1, id.to_owned(), lane.to_owned(), attempts));
        }
        let why = Why::new(
            "TargetRemoved",
            "the target was deleted or may no longer take its client's events",
        );
        for (seq, id, lane, attempts) in &seqs {
            self.pending.remove((target, *seq))?;
            self.release(*seq)?;
            self.log_ended(
                target,
                *seq,
                (id, lane, *attempts),
                LogResult::Dropped,
                &why,
            )?;
        }
        let mut lanes = Vec::new();
        for row in self.uploaded.range::<(&str, &str)>((target, "")..)? {
            let (k, _) = row?;
            let (t, lane) = k.value();
            if t != target {
                break;
            }
            lanes.push(lane.to_owned());
        }
        for lane in &lanes {
            self.uploaded.remove((target, lane.as_str()))?;
        }
        let mut keys = Vec::new();
        for row in self.state.range::<(&str, &str)>((target, "")..)? {
            let (k, _) = row?;
            let (t, key) = k.value();
            if t != target {
                break;
            }
            keys.push(key.to_owned());
        }
        for key in &keys {
            self.state.remove((target, key.as_str()))?;
        }
        self.counters.insert(target.to_owned(), None);
        Ok(seqs.len() as u64)
    }

    /// A delivery that ends without its attempt finishing leaves no chain progress behind.
    fn forget_progress(&mut self, target: &str, seq: u64) -> Result<(), StoreError> {
        self.state
            .remove((target, super::chain_progress_key(seq).as_str()))?;
        Ok(())
    }

    fn set_state(
        &mut self,
        target: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        match value {
            Some(v) => {
                self.state.insert((target, key), v)?;
            }
            None => {
                self.state.remove((target, key))?;
            }
        }
        Ok(())
    }

    /// Adds `add` to and takes `remove` from the paths recorded for (target, lane).
    fn update_uploaded(
        &mut self,
        target: &str,
        lane: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(), StoreError> {
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let mut paths: BTreeSet<String> = match self.uploaded.get((target, lane))? {
            Some(g) => serde_json::from_slice::<Vec<String>>(g.value()).unwrap_or_default(),
            None => Vec::new(),
        }
        .into_iter()
        .collect();
        paths.extend(add.iter().cloned());
        for p in remove {
            paths.remove(p);
        }
        if paths.is_empty() {
            self.uploaded.remove((target, lane))?;
        } else {
            let list: Vec<&String> = paths.iter().collect();
            let bytes = serde_json::to_vec(&list).map_err(|source| StoreError::Counters {
                target: target.to_owned(),
                source,
            })?;
            self.uploaded.insert((target, lane), bytes.as_slice())?;
        }
        Ok(())
    }

    /// The last seq received before `cutoff_unix_ms`: receive times never decrease with seq,
    /// so a binary search over seqs finds it in a few lookups, however many events are kept.
    fn last_seq_before(&self, cutoff_unix_ms: u64) -> Result<Option<u64>, StoreError> {
        let received_at = |seq: u64| -> Result<Option<(u64, u64)>, StoreError> {
            match self.events.range(seq..)?.next() {
                Some(row) => {
                    let (k, v) = row?;
                    Ok(Some((k.value(), v.value().2)))
                }
                None => Ok(None),
            }
        };
        let Some((first, first_at)) = received_at(0)? else {
            return Ok(None);
        };
        if first_at >= cutoff_unix_ms {
            return Ok(None);
        }
        // Invariant: the event at `lo` is older than the cutoff; none at or after `hi` is.
        let (mut lo, mut hi) = (first, self.next_seq);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            match received_at(mid)? {
                Some((seq, at)) if at < cutoff_unix_ms => lo = seq,
                _ => hi = mid,
            }
        }
        Ok(Some(lo))
    }

    fn expire(
        &mut self,
        target: &str,
        cutoff_unix_ms: u64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let Some(last) = self.last_seq_before(cutoff_unix_ms)? else {
            return Ok(0);
        };
        let mut victims = Vec::new();
        for row in self
            .pending
            .range::<(&str, u64)>((target, 0)..=(target, last))?
            .take(limit)
        {
            let (k, v) = row?;
            let (id, lane, attempts, _) = v.value();
            victims.push((k.value().1, id.to_owned(), lane.to_owned(), attempts));
        }
        let why = Why::new(
            "Expired",
            "older than the retry policy's maxAgeSeconds; not delivered",
        );
        for (seq, id, lane, attempts) in &victims {
            self.pending.remove((target, *seq))?;
            self.release(*seq)?;
            self.forget_progress(target, *seq)?;
            self.log_ended(
                target,
                *seq,
                (id, lane, *attempts),
                LogResult::Expired,
                &why,
            )?;
        }
        if let Some((_, event_id, _, _)) = victims.last() {
            let n = victims.len() as u64;
            let now = self.now;
            let c = self.counters_mut(target)?;
            c.failed += n;
            c.pending = c.pending.saturating_sub(n);
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.last_failure = Some(LastFailure {
                event_id: event_id.clone(),
                at_unix_ms: now,
                why: Why::new(
                    "Expired",
                    format!(
                        "{n} event(s) older than the retry policy's maxAgeSeconds were not delivered"
                    ),
                ),
            });
        }
        Ok(victims.len() as u64)
    }

    fn add_deliveries(&mut self, target: &str, seqs: &[u64]) -> Result<u64, StoreError> {
        let mut added = 0;
        for &seq in seqs {
            if self.pending.get((target, seq))?.is_some() {
                continue;
            }
            let Some((id, lane)) = self.events.get(seq)?.map(|g| {
                let (key, lane, _, _) = g.value();
                // The row holds the dedupe key (`client/id`); a delivery carries the bare id.
                (super::event_id_of(key).to_owned(), lane.to_owned())
            }) else {
                continue;
            };
            self.add_pending(target, seq, &id, &lane)?;
            let refs = self.refs.get(seq)?.map(|g| g.value()).unwrap_or(0);
            self.refs.insert(seq, refs.saturating_add(1))?;
            added += 1;
        }
        Ok(added)
    }

    fn gc(&mut self, cutoff_unix_ms: u64, limit: usize) -> Result<u64, StoreError> {
        let mut victims = Vec::new();
        for row in self.events.iter()? {
            let (k, v) = row?;
            let (id, _, received, body) = v.value();
            if received >= cutoff_unix_ms || victims.len() >= limit {
                break;
            }
            let seq = k.value();
            if self.refs.get(seq)?.is_none() {
                victims.push((seq, id.to_owned(), feed::client_of(id, body)));
            }
        }
        for (seq, id, client) in &victims {
            self.events.remove(*seq)?;
            self.feed.removed(client.as_deref(), *seq)?;
            // Only if the index still points here; it always should.
            if self.ids.get(id.as_str())?.map(|g| g.value()) == Some(*seq) {
                self.ids.remove(id.as_str())?;
            }
        }
        self.delta.events -= victims.len() as i64;
        Ok(victims.len() as u64)
    }
}
