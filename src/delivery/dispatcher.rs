//! From accepted events to delivery attempts. Ingest routes each event (the routing index) and
//! stores it with its pending deliveries in one durable transaction; the store is the queue.
//!
//! Per target (keyed by the object's uid) a pump pages pending rows out of the store into
//! per-vehicle lanes, never more than a window of them, and only while the target can be
//! delivered to: a held or unregistered target's backlog stays on disk, so memory follows the
//! deliveries in flight, not the backlog. Lanes deliver one vehicle's events to one target
//! strictly in order; lanes run in parallel up to the target's concurrency, then share the
//! kind's global capacity fairly per namespace. Every attempt re-checks that the target still
//! takes the event (same object, client, user and type) and that the event is younger than
//! the retry policy's maximum age. Outcomes are recorded in the store; the counter writer
//! publishes them on the resources' status.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::api::RetryPolicy;
use crate::delivery::attempt::{Answer, Attempt, Delivery, Senders};
use crate::delivery::fair::FairPool;
use crate::delivery::recent::{FRESH_BYTES, Head, Loaded, Recent};
use crate::delivery::retry::{backoff, should_give_up};
use crate::ingest::{EventResult, EventSink, Incoming};
use crate::metrics::{KindLabel, KindResult, Metrics};
use crate::routing::{Kind, Registry, Target, TargetId, TargetKey};
use crate::status::CounterWriter;
use crate::store::{
    AcceptOutcome, AttemptLog, DeliveryUpdate, LogResult, NewEvent, Outcome, Store, Why,
};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Bounds of the dispatcher.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Pending deliveries in the store above which ingest answers 429.
    pub max_pending: u64,
    /// Pending deliveries of one target held in memory at once.
    pub window: usize,
    /// Pending deliveries held in memory at once, over all targets.
    pub in_memory: usize,
    /// Lanes worked on at once over all targets (see [`Runners`]).
    pub active_lanes: usize,
    /// How often backlogs are checked for expired events and stranded rows.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: 5_000_000,
            window: 1024,
            in_memory: 200_000,
            active_lanes: 2048,
            sweep_interval: Duration::from_secs(30),
        }
    }
}

/// Ingest refused events because the backlog on disk is at its limit.
#[derive(Debug, thiserror::Error)]
#[error(
    "{pending} deliveries are pending, the limit is {limit}; nothing was accepted, retry later"
)]
pub struct BacklogFull {
    pub pending: u64,
    pub limit: u64,
}

/// Which events this process may deliver, when replicas share the work (the JetStream
/// store): asked right before every attempt. Without one, every event is this process's.
pub trait Gate: Send + Sync {
    /// Whether this replica may deliver the event `event_id` of `client`'s vehicle `lane`
    /// now: it owns the vehicle's partition, and took the event in this holding of it (not in
    /// an earlier one, which another replica has delivered on from since).
    fn owns(&self, client: &str, lane: &str, event_id: &str) -> bool;
    /// The event was queued again here (a replay, a retry from the management API): it is
    /// this replica's to deliver while it holds the partition as it does now.
    fn requeued(&self, client: &str, lane: &str, event_id: &str);
}

/// One pending delivery in memory: no body (read from the store when it is attempted).
#[derive(Clone, Debug)]
struct Job {
    seq: u64,
    event_id: String,
    attempts: u32,
    next_attempt_ms: u64,
    /// When the event was accepted; known once it was read for an attempt.
    received_ms: u64,
}

#[derive(Default)]
struct Lanes {
    queues: HashMap<String, VecDeque<Job>>,
    /// Jobs in `queues`.
    loaded: usize,
    /// Every pending row of this target up to this seq is in memory or done, except those
    /// in `behind`.
    cursor: u64,
    /// Rows queued again (redeliver, replay) at or below `cursor`: the pump reads them
    /// before reading on from the cursor.
    behind: std::collections::BTreeSet<u64>,
}

struct TargetState {
    id: TargetId,
    /// `id` as the store keys it.
    row: String,
    wake: Notify,
    /// Wakes lanes parked while the target was held once the pump sees it active.
    resumed: Notify,
    /// Set (under the dispatcher's target map lock) when new rows may be in the store.
    woken: AtomicBool,
    /// Set when the target was deleted or may no longer take its client's events.
    dropped: AtomicBool,
    /// Outcomes being written: the pump stays until they are, so a new pump never reloads a
    /// delivery that was already made.
    recording: AtomicUsize,
    permits: Mutex<(u32, Arc<Semaphore>)>,
    lanes: Mutex<Lanes>,
}

impl TargetState {
    fn new(id: TargetId, row: String) -> Self {
        TargetState {
            id,
            row,
            wake: Notify::new(),
            resumed: Notify::new(),
            woken: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
            recording: AtomicUsize::new(0),
            // Resized to the target's concurrency before its first attempt.
            permits: Mutex::new((1, Arc::new(Semaphore::new(1)))),
            lanes: Mutex::new(Lanes::default()),
        }
    }

    /// The target's concurrency bound, resized when its spec changed.
    fn permits(&self, target: &Target) -> Arc<Semaphore> {
        let want = target.concurrency();
        let mut p = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        if p.0 != want {
            // Attempts holding the old semaphore's permits finish; new ones use the new one.
            *p = (want, Arc::new(Semaphore::new(want as usize)));
        }
        p.1.clone()
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Dispatcher {
    store: Store,
    registry: Arc<Registry>,
    senders: Senders,
    metrics: Arc<Metrics>,
    counters: Arc<CounterWriter>,
    limits: Limits,
    targets: Mutex<HashMap<String, Arc<TargetState>>>,
    /// Jobs in memory over all targets.
    loaded: AtomicUsize,
    /// Events in memory for their attempts.
    recent: Recent,
    /// Shared capacity per kind ([`Kind::index`]), see [`Senders::in_flight`].
    pools: [FairPool; Kind::ALL.len()],
    /// Lane tasks at work and lanes waiting for one.
    runners: Mutex<Runners>,
    /// Outcomes on their way to the store (see [`record_outcomes`]).
    outcomes: mpsc::UnboundedSender<(DeliveryUpdate, Arc<TargetState>)>,
    /// Set once, when replicas share partitions (see [`Gate`]).
    gate: std::sync::OnceLock<Arc<dyn Gate>>,
}

/// The delivery log entry of an attempt's end (or of a delivery ended without one). `head`:
/// the event's, when it could be read.
fn log_entry(
    job: &Job,
    lane: &str,
    head: Option<&Head>,
    result: LogResult,
    elapsed: Option<Duration>,
    answer: Answer,
) -> Box<AttemptLog> {
    Box::new(AttemptLog {
        result,
        event_id: job.event_id.clone(),
        client: head.map(|h| h.client_id.clone()).unwrap_or_default(),
        event_type: head.map_or("", |h| h.type_.as_str()),
        lane: lane.to_owned(),
        vin: head.and_then(|h| h.vin().map(str::to_owned)),
        attempt: job.attempts,
        duration_ms: elapsed.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
        http_status: answer.http_status,
        ftp_reply: answer.ftp_reply,
        response: answer.response,
        why: None,
    })
}

/// How long an attempt that reads a vehicle's uploaded paths waits for the target's outcomes
/// in flight to be recorded.
const RECORDED_WAIT: Duration = Duration::from_secs(2);

/// Most outcomes written in one store request.
const OUTCOME_BATCH: usize = 4096;

/// Writes outcomes in batches: whatever arrived while the previous batch committed goes in
/// the next one. One store request per delivery (a task, a reply channel and a writer job
/// each) was a tenth of the engine's CPU at 1,000 subscriptions.
async fn record_outcomes(
    store: Store,
    counters: Arc<CounterWriter>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<(DeliveryUpdate, Arc<TargetState>)>,
) {
    let mut received = Vec::with_capacity(OUTCOME_BATCH);
    while rx.recv_many(&mut received, OUTCOME_BATCH).await > 0 {
        let (updates, owners): (Vec<_>, Vec<_>) = received.drain(..).unzip();
        let updates: Arc<[DeliveryUpdate]> = updates.into();
        // Retried until the store takes it (it reopens itself after I/O errors): a lost
        // outcome would deliver the event again after a restart and skew the counters.
        let mut attempt = 0u32;
        while let Err(e) = store.record(updates.clone()).await {
            if attempt < 3 || attempt.is_multiple_of(20) {
                tracing::error!(error = %e, attempt, "could not record delivery outcomes; retrying");
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
        }
        // Replicas sharing the work: the next owner of the vehicle needs its uploaded paths.
        for u in updates.iter() {
            if let (Outcome::Uploaded { .. } | Outcome::Removed { .. }, Some(log)) =
                (&u.outcome, &u.log)
                && let Err(e) = store.share_uploaded(&u.target, &log.lane).await
            {
                tracing::warn!(error = %e, target = %u.target, "could not share the uploaded paths");
            }
        }
        let mut last: Option<&Arc<TargetState>> = None;
        for ts in &owners {
            ts.recording.fetch_sub(1, Ordering::AcqRel);
            // Outcomes of one target tend to come in runs: touch it once per run.
            if !last.is_some_and(|l| Arc::ptr_eq(l, ts)) {
                counters.touch(&ts.id.key);
            }
            last = Some(ts);
        }
        metrics.queue_depth.set(store.stats().pending as i64);
    }
}

/// Lane tasks busy at once are bounded by [`Limits::active_lanes`]; further lanes wait in
/// [`Runners::ready`] as a name, not a task (20,000 waiting lane tasks were the largest part
/// of a burst's memory).
#[derive(Default)]
struct Runners {
    /// Lane tasks not waiting for time or for their target.
    busy: usize,
    /// Lanes with jobs and no task, oldest first.
    ready: VecDeque<(Arc<TargetState>, String)>,
}

/// How one attempt ended, for the lane.
enum Step {
    /// Finished (delivered, given up, dropped): the lane moves on.
    Done,
    /// Try again (the next attempt time is set).
    Again,
}

impl Dispatcher {
    pub fn with_limits(
        store: Store,
        registry: Arc<Registry>,
        senders: Senders,
        metrics: Arc<Metrics>,
        counters: Arc<CounterWriter>,
        limits: Limits,
    ) -> Arc<Self> {
        let (outcomes, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_outcomes(
            store.clone(),
            counters.clone(),
            metrics.clone(),
            rx,
        ));
        Arc::new(Dispatcher {
            runners: Mutex::default(),
            outcomes,
            gate: std::sync::OnceLock::new(),
            store,
            registry,
            senders,
            metrics,
            counters,
            limits,
            targets: Mutex::new(HashMap::new()),
            loaded: AtomicUsize::new(0),
            recent: Recent::new(FRESH_BYTES),
            // No namespace takes more than half of a pool: one tenant's hanging receivers
            // leave the other half to everyone else.
            pools: Kind::ALL.map(|k| {
                let n = Senders::in_flight(k);
                FairPool::new(n, n / 2)
            }),
        })
    }

    /// Starts a pump for every target with pending deliveries (after a restart) and the
    /// sweeper that keeps doing so; returns how many deliveries are pending.
    pub fn resume(self: &Arc<Self>) -> anyhow::Result<u64> {
        for row in self.store.pending_targets()? {
            self.wake(&row);
        }
        let me = self.clone();
        tokio::spawn(async move { me.sweep_forever().await });
        let pending = self.store.stats().pending;
        self.metrics.queue_depth.set(pending as i64);
        Ok(pending)
    }

    /// New rows may be pending for `row` (a target id as the store keys it).
    fn wake(self: &Arc<Self>, row: &str) {
        let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ts) = map.get(row) {
            ts.woken.store(true, Ordering::Release);
            ts.wake.notify_one();
            return;
        }
        let Ok(id) = row.parse::<TargetId>() else {
            tracing::warn!(target = %row, "pending deliveries for an unknown target kind");
            return;
        };
        let ts = Arc::new(TargetState::new(id, row.to_string()));
        map.insert(row.to_string(), ts.clone());
        let me = self.clone();
        tokio::spawn(async move { me.pump(ts).await });
    }

    /// Rows of stored events were queued again for `row` (a redeliver or a replay): a pump
    /// reads them, also those at or below its cursor, which it would otherwise never look
    /// at again. Under the target map's lock, so that a pump cannot end unaware of them.
    /// Deliveries a replay or redelivery may still queue: up to half of
    /// `--max-pending-deliveries`, so that one client replaying its history never fills the
    /// backlog bound and has every client's ingest refused with `backlog_full`.
    pub fn replay_room(&self) -> u64 {
        (self.limits.max_pending / 2).saturating_sub(self.store.stats().pending)
    }

    /// Deliveries of `row` queued again by a replay or a retry (rows already in the store).
    pub fn requeued(self: &Arc<Self>, row: &str, seqs: &[u64]) {
        // Replicas sharing the work: they become this holding's to deliver. A partition's
        // reader marks what it takes itself, so `take_over` skips this.
        if let Some(gate) = self.gate.get() {
            for &seq in seqs {
                if let Ok(Some(e)) = self.store.event(seq)
                    && let Ok(head) = serde_json::from_slice::<Head>(&e.body)
                {
                    gate.requeued(&head.client_id, &e.lane, &e.id);
                }
            }
        }
        self.requeue_rows(row, seqs);
    }

    /// Has the pump of `row` read `seqs` (rows already in the store) again.
    fn requeue_rows(self: &Arc<Self>, row: &str, seqs: &[u64]) {
        let map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ts) = map.get(row) {
            let mut lanes = ts.lanes();
            let cursor = lanes.cursor;
            lanes
                .behind
                .extend(seqs.iter().copied().filter(|s| *s <= cursor));
        }
        drop(map);
        self.wake(row);
        if let Ok(id) = row.parse::<TargetId>() {
            self.counters.touch(&id.key);
        }
    }

    /// Loads up to `room` rows of `behind` that are still pending and not in memory;
    /// returns how many it loaded.
    fn load_behind(self: &Arc<Self>, ts: &Arc<TargetState>, room: usize) -> usize {
        let (take, loaded): (Vec<u64>, std::collections::HashSet<u64>) = {
            let mut lanes = ts.lanes();
            if lanes.behind.is_empty() {
                return 0;
            }
            let mut take = Vec::new();
            while take.len() < room
                && let Some(s) = lanes.behind.pop_first()
            {
                take.push(s);
            }
            let loaded = lanes.queues.values().flatten().map(|j| j.seq).collect();
            (take, loaded)
        };
        let mut rows = Vec::new();
        for seq in take.into_iter().filter(|s| !loaded.contains(s)) {
            match self.store.pending_after(&ts.row, seq.saturating_sub(1), 1) {
                Ok(r) => rows.extend(r.into_iter().filter(|p| p.seq == seq)),
                Err(e) => {
                    tracing::error!(error = %e, "store read failed");
                    ts.lanes().behind.insert(seq);
                }
            }
        }
        let n = rows.len();
        self.load(ts, rows);
        n
    }

    /// The senders attempts go through (test sends use them too).
    pub fn senders(&self) -> &Senders {
        &self.senders
    }

    /// The registered object the target's rows belong to, if it can be delivered to now.
    fn active(&self, ts: &TargetState) -> Option<Arc<Target>> {
        self.registry
            .get(&ts.id.key)
            .filter(|t| ts.id.is(t) && t.held.is_none() && t.config.is_some())
    }

    /// Pages the target's pending rows into lanes while it is active; exits when nothing is
    /// left for it in memory or in the store.
    async fn pump(self: Arc<Self>, ts: Arc<TargetState>) {
        let mut idle_rounds = 0u32;
        // Rows may be on disk past the cursor: until a read comes back short, and again after
        // every wake-up by ingest (new rows) or the timer. Lanes freeing room wake the pump
        // after each delivery; without this it would read the store for each one.
        let mut more = true;
        loop {
            if ts.dropped.load(Ordering::Acquire) {
                return;
            }
            let woken = ts.woken.swap(false, Ordering::AcqRel);
            more |= woken;
            let registered = self.registry.get(&ts.id.key);
            if let Some(t) = &registered
                && !ts.id.is(t)
            {
                // The object of these rows was replaced by another of the same name.
                self.forget_rows(&ts, "TargetReplaced").await;
                return;
            }
            let mut exhausted = false;
            if self.active(&ts).is_some() {
                ts.resumed.notify_waiters();
                let room = {
                    let lanes = ts.lanes();
                    let global = self
                        .limits
                        .in_memory
                        .saturating_sub(self.loaded.load(Ordering::Acquire));
                    self.limits.window.saturating_sub(lanes.loaded).min(global)
                };
                if !more && ts.lanes().behind.is_empty() {
                    exhausted = true;
                } else if room > 0 {
                    let room = room - self.load_behind(&ts, room);
                    let cursor = ts.lanes().cursor;
                    match self.store.pending_after(&ts.row, cursor, room) {
                        Ok(rows) => {
                            exhausted = rows.len() < room;
                            more = !exhausted;
                            self.load(&ts, rows);
                        }
                        Err(e) => tracing::error!(error = %e, "store read failed"),
                    }
                }
            } else {
                idle_rounds += 1;
                // A held target's backlog may expire meanwhile: look now and then.
                exhausted = idle_rounds.is_multiple_of(10)
                    && self
                        .store
                        .pending_after(&ts.row, 0, 1)
                        .is_ok_and(|r| r.is_empty());
            }
            let idle = {
                let lanes = ts.lanes();
                lanes.loaded == 0 && lanes.behind.is_empty()
            };
            if exhausted && idle && ts.recording.load(Ordering::Acquire) == 0 {
                let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
                if !ts.woken.load(Ordering::Acquire) {
                    if map.get(&ts.row).is_some_and(|t| Arc::ptr_eq(t, &ts)) {
                        map.remove(&ts.row);
                    }
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = ts.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => more = true,
            }
        }
    }

    fn load(self: &Arc<Self>, ts: &Arc<TargetState>, rows: Vec<crate::store::PendingDelivery>) {
        if rows.is_empty() {
            return;
        }
        let mut start = Vec::new();
        {
            let mut lanes = ts.lanes();
            for p in rows {
                lanes.cursor = lanes.cursor.max(p.seq);
                lanes.loaded += 1;
                self.loaded.fetch_add(1, Ordering::AcqRel);
                let q = lanes.queues.entry(p.lane.clone()).or_default();
                q.push_back(Job {
                    seq: p.seq,
                    event_id: p.event_id,
                    attempts: p.attempts,
                    next_attempt_ms: p.next_attempt_unix_ms,
                    received_ms: 0,
                });
                // A new entry: no task runs this lane (see `run_lane`).
                if q.len() == 1 {
                    start.push(p.lane);
                }
            }
        }
        for lane in start {
            self.start_lane(ts.clone(), lane);
        }
    }

    fn runners(&self) -> std::sync::MutexGuard<'_, Runners> {
        self.runners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a lane that has no task: in a new task while fewer than
    /// [`Limits::active_lanes`] are busy, else queued for the next task that finishes its lane.
    fn start_lane(self: &Arc<Self>, ts: Arc<TargetState>, lane: String) {
        let mut r = self.runners();
        if r.busy < self.limits.active_lanes {
            r.busy += 1;
            drop(r);
            self.spawn_runner(ts, lane);
        } else {
            r.ready.push_back((ts, lane));
        }
    }

    /// A task for `lane`, already counted as busy.
    fn spawn_runner(self: &Arc<Self>, ts: Arc<TargetState>, lane: String) {
        let me = self.clone();
        tokio::spawn(async move { me.run_lanes(ts, lane).await });
    }

    /// Runs `lane`, then queued lanes while the task is needed.
    async fn run_lanes(self: Arc<Self>, mut ts: Arc<TargetState>, mut lane: String) {
        loop {
            self.run_lane(&ts, &lane).await;
            let mut r = self.runners();
            // Over the limit when tasks that stepped aside came back: this one ends.
            if r.busy <= self.limits.active_lanes
                && let Some((t, l)) = r.ready.pop_front()
            {
                (ts, lane) = (t, l);
                continue;
            }
            r.busy -= 1;
            return;
        }
    }

    /// A task waits for time or for its target (not for capacity): it stops counting as
    /// busy, and a queued lane gets a task in its place, so lanes waiting to retry never
    /// keep others from running.
    fn step_aside(self: &Arc<Self>) {
        let mut r = self.runners();
        r.busy -= 1;
        while r.busy < self.limits.active_lanes
            && let Some((ts, lane)) = r.ready.pop_front()
        {
            r.busy += 1;
            self.spawn_runner(ts, lane);
        }
    }

    fn step_in(&self) {
        self.runners().busy += 1;
    }

    /// Delivers one lane's jobs in order; returns when the lane is empty. A lane's entry exists
    /// exactly while one task runs it or it is queued for one: the task removes it in the same
    /// critical section that finds it empty, so `load` starting a new entry never starts a
    /// second runner beside the first (two tasks once delivered the same job).
    async fn run_lane(self: &Arc<Self>, ts: &Arc<TargetState>, lane: &str) {
        let first = {
            let mut lanes = ts.lanes();
            let next = lanes.queues.get(lane).and_then(|q| q.front().cloned());
            if next.is_none() {
                lanes.queues.remove(lane);
            }
            next
        };
        let Some(mut job) = first else {
            return;
        };
        loop {
            let finished = self.deliver(ts, lane, job).await;
            let (freed, next, left) = {
                let mut lanes = ts.lanes();
                let Some(q) = lanes.queues.get_mut(lane) else {
                    return;
                };
                let n = if finished {
                    q.pop_front().map_or(0, |_| 1)
                } else {
                    // The target is gone: the rest of this lane goes with it.
                    std::mem::take(q).len()
                };
                let next = q.front().cloned();
                if next.is_none() {
                    lanes.queues.remove(lane);
                }
                lanes.loaded -= n;
                (n, next, lanes.loaded)
            };
            self.loaded.fetch_sub(freed, Ordering::AcqRel);
            // Room in the window: the pump may load more, once half of it is free (loading a
            // few rows after each delivery was a store read per delivery).
            if left <= self.limits.window / 2 {
                ts.wake.notify_one();
            }
            match next {
                Some(j) => job = j,
                None => return,
            }
        }
    }

    /// Attempts `job` until it is finished; false if the target was dropped.
    async fn deliver(self: &Arc<Self>, ts: &Arc<TargetState>, lane: &str, mut job: Job) -> bool {
        loop {
            if ts.dropped.load(Ordering::Acquire) {
                return false;
            }
            // Held, suspended, not registered (yet) or replaced: keep the event and wait for
            // the pump to see the target active again (a held target's lanes stay parked,
            // not polling).
            let Some(target) = self.active(ts) else {
                self.step_aside();
                tokio::select! {
                    _ = ts.resumed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                self.step_in();
                continue;
            };
            let wait = job.next_attempt_ms.saturating_sub(now_ms());
            if wait > 0 {
                self.step_aside();
                tokio::time::sleep(Duration::from_millis(wait.min(5_000))).await;
                self.step_in();
                continue;
            }
            // The target's own permit first: waiting for it holds no shared capacity.
            let permits = ts.permits(&target);
            let Ok(_own) = permits.acquire_owned().await else {
                continue;
            };
            let _shared = self.pools[ts.id.key.kind.index()]
                .acquire(&ts.id.key.namespace)
                .await;
            // The target may have changed while this waited for capacity.
            let Some(target) = self.active(ts) else {
                continue;
            };
            let event = match self.event(job.seq) {
                Ok(Some(Ok(e))) => e,
                Ok(Some(Err(e))) => {
                    let why = Why::new("BadEvent", format!("the stored event cannot be read: {e}"));
                    let log =
                        log_entry(&job, lane, None, LogResult::Failed, None, Answer::default());
                    self.give_up(ts, &job, ts.id.key.kind.label(), why, log);
                    return true;
                }
                Ok(None) => {
                    tracing::error!(kind = ts.id.key.kind.label(), namespace = %ts.id.key.namespace, name = %ts.id.key.name, seq = job.seq, "event missing from the store; dropping the delivery");
                    let outcome = Outcome::GaveUp {
                        why: Why::new("EventMissing", "the event is no longer in the store"),
                    };
                    let log =
                        log_entry(&job, lane, None, LogResult::Failed, None, Answer::default());
                    self.record(ts, &job, outcome, Some(log));
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            job.received_ms = event.received_ms;
            let step = Box::pin(self.attempt(ts, lane, &target, &mut job, &event)).await;
            match step {
                Step::Done => return true,
                Step::Again => {}
            }
        }
    }

    /// The event of `seq`: from memory if it was accepted recently, else from the store
    /// (`Some(Err)` if its stored body cannot be read).
    fn event(
        &self,
        seq: u64,
    ) -> Result<Option<Result<Arc<Loaded>, serde_json::Error>>, crate::store::StoreError> {
        if let Some(e) = self.recent.take(seq) {
            return Ok(Some(Ok(e)));
        }
        let Some(stored) = self.store.event(seq)? else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_slice(&stored.body).map(|head| {
            let e = Arc::new(Loaded {
                body: stored.body,
                received_ms: stored.received_unix_ms,
                head,
            });
            self.recent.read_back(seq, e.clone());
            e
        })))
    }

    /// One attempt of a delivery the target can take now.
    async fn attempt(
        &self,
        ts: &Arc<TargetState>,
        lane: &str,
        target: &Target,
        job: &mut Job,
        event: &Loaded,
    ) -> Step {
        let kind = ts.id.key.kind.label();
        // First, and right before the send: a replica that lost the vehicle's partition (its
        // lease ran out, it stalled) leaves the event to the new owner, which resumes from the
        // log; it neither sends nor counts anything of it.
        if let Some(gate) = self.gate.get()
            && !gate.owns(&event.head.client_id, lane, &job.event_id)
        {
            tracing::debug!(kind, seq = job.seq, event = %job.event_id, "partition owned elsewhere now; delivery handed over");
            self.record(ts, job, Outcome::HandedOver, None);
            return Step::Done;
        }
        let age = Duration::from_millis(now_ms().saturating_sub(event.received_ms));
        let max_age = Duration::from_secs(target.retry.max_age_seconds.into());
        if age >= max_age {
            let why = Why::new(
                "Expired",
                format!(
                    "the event is {}s old, older than maxAgeSeconds {} of the retry policy",
                    age.as_secs(),
                    max_age.as_secs()
                ),
            );
            let log = log_entry(
                job,
                lane,
                Some(&event.head),
                LogResult::Expired,
                None,
                Answer::default(),
            );
            self.give_up(ts, job, kind, why, log);
            return Step::Done;
        }
        let head = &event.head;
        // The target's selector as it is now, not when the event was routed: a subscription
        // moved to another client (or user, or event type) never gets the old one's events.
        if !target
            .selector
            .matches(&head.client_id, head.user_id.as_deref(), head.type_)
        {
            self.ended(kind, "dropped", 1);
            tracing::info!(kind = ts.id.key.kind.label(), namespace = %ts.id.key.namespace, name = %ts.id.key.name, event = %job.event_id, client = %head.client_id, "queued event no longer selected by its target; dropped");
            let why = Why::new(
                "NotSelected",
                format!(
                    "the target no longer takes {} events of client {:?}",
                    head.type_, head.client_id
                ),
            );
            let log = log_entry(
                job,
                lane,
                Some(head),
                LogResult::Dropped,
                None,
                Answer::default(),
            );
            self.record(ts, job, Outcome::Dropped { why }, Some(log));
            return Step::Done;
        }
        let Some(config) = &target.config else {
            return Step::Again;
        };
        let uploaded = if Senders::needs_upload_record(config) {
            // The vehicle's previous upload or removal is recorded first: its paths are what
            // this attempt reads (a vehicle processed and deleted at once would otherwise skip
            // the removal and leave its files). Outcomes are recorded within milliseconds;
            // bounded all the same.
            let waited = std::time::Instant::now();
            while ts.recording.load(Ordering::Acquire) > 0 && waited.elapsed() < RECORDED_WAIT {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            match self.store.uploaded_paths_now(&ts.row, lane).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "store read failed; retrying");
                    job.next_attempt_ms = now_ms() + 1000;
                    return Step::Again;
                }
            }
        } else {
            Vec::new()
        };
        let delivery = Delivery {
            row: &ts.row,
            seq: job.seq,
            lane,
            event_id: &job.event_id,
            body: &event.body,
            uploaded: &uploaded,
        };
        // Boxed: a lane waiting for its turn keeps only a small future, not the state of a
        // request or an upload (thousands of lanes wait at once).
        let (attempt, answer) = Box::pin(self.senders.attempt(config, delivery)).await;
        // One entry per attempt: the answer moves into it.
        let answer = std::cell::Cell::new(answer);
        let log = |job: &Job, result, elapsed| {
            log_entry(job, lane, Some(&event.head), result, elapsed, answer.take())
        };
        self.conclude(ts, job, kind, &target.retry, attempt, log)
    }

    /// Schedules, retries, records and counts one attempt's end, the same for every kind.
    fn conclude(
        &self,
        ts: &Arc<TargetState>,
        job: &mut Job,
        kind: &'static str,
        policy: &RetryPolicy,
        attempt: Attempt,
        log: impl Fn(&Job, LogResult, Option<Duration>) -> Box<AttemptLog>,
    ) -> Step {
        job.attempts += 1;
        let elapsed = attempt.elapsed();
        if let Some(elapsed) = elapsed {
            self.observe_attempt(kind, elapsed);
        }
        match attempt {
            Attempt::Done {
                outcome, skipped, ..
            } => {
                let (result, logged) = if skipped {
                    ("skipped", LogResult::Skipped)
                } else {
                    ("delivered", LogResult::Delivered)
                };
                self.count(kind, result);
                self.ended(kind, result, 1);
                if !skipped {
                    self.observe_latency(kind, job);
                }
                self.record(ts, job, outcome, Some(log(job, logged, elapsed)));
                Step::Done
            }
            Attempt::Retry {
                why, retry_after, ..
            } => {
                let log = |job: &Job, result| log(job, result, elapsed);
                self.retry_or_give_up(ts, job, kind, policy, (why, retry_after), log)
            }
            Attempt::Fail { why, .. } => {
                self.count(kind, "failed");
                self.give_up(ts, job, kind, why, log(job, LogResult::Failed, elapsed));
                Step::Done
            }
            Attempt::Gone { .. } => {
                self.count(kind, "gone");
                // The receiver says this endpoint is gone: suspend the target (an annotation
                // the reconciler turns into a held target) and keep the event.
                self.counters.receiver_gone(&ts.id.key);
                let mut entry = log(job, LogResult::Gone, elapsed);
                entry.why = Some(Why::new(
                    "Gone",
                    "HTTP 410 Gone: the receiver says the endpoint is gone; the target is held",
                ));
                self.record(ts, job, Outcome::Held, Some(entry));
                job.attempts -= 1;
                Step::Again
            }
        }
    }

    /// Counts an attempt's result.
    fn count(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .delivery_attempts
            .get_or_create(&KindResult { kind, result })
            .inc();
    }

    /// Counts `n` deliveries that ended (none is attempted again) with `outcome`.
    fn ended(&self, kind: &'static str, outcome: &'static str, n: u64) {
        self.metrics
            .deliveries
            .get_or_create(&KindResult {
                kind,
                result: outcome,
            })
            .inc_by(n);
    }

    fn observe_attempt(&self, kind: &'static str, elapsed: Duration) {
        let label = KindLabel { kind };
        self.metrics
            .attempt_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    fn observe_latency(&self, kind: &'static str, job: &Job) {
        let latency = now_ms().saturating_sub(job.received_ms) as f64 / 1000.0;
        self.metrics
            .delivery_latency_seconds
            .get_or_create(&KindLabel { kind })
            .observe(latency);
    }

    /// The delivery failed for good: counted, recorded, and the resource's status is due.
    fn give_up(
        &self,
        ts: &Arc<TargetState>,
        job: &Job,
        kind: &'static str,
        why: Why,
        log: Box<AttemptLog>,
    ) {
        self.ended(kind, "failed", 1);
        self.counters.failure(&ts.id.key);
        self.record(ts, job, Outcome::GaveUp { why }, Some(log));
    }

    /// After a retryable failure: schedules the next attempt by the policy, or gives up when
    /// the policy's attempts are spent (its age is checked before every attempt).
    fn retry_or_give_up(
        &self,
        ts: &Arc<TargetState>,
        job: &mut Job,
        kind: &'static str,
        policy: &RetryPolicy,
        (why, retry_after): (Why, Option<Duration>),
        log: impl Fn(&Job, LogResult) -> Box<AttemptLog>,
    ) -> Step {
        if should_give_up(policy, job.attempts, Duration::ZERO) {
            self.count(kind, "failed");
            let message = format!("{} (gave up after {} attempts)", why.message, job.attempts);
            let entry = log(job, LogResult::Failed);
            self.give_up(ts, job, kind, Why::new(why.reason, message), entry);
            return Step::Done;
        }
        self.count(kind, "retry");
        job.next_attempt_ms =
            now_ms() + backoff(policy, job.attempts, retry_after).as_millis() as u64;
        let outcome = Outcome::Retry {
            next_attempt_unix_ms: job.next_attempt_ms,
            why,
        };
        self.record(ts, job, outcome, Some(log(job, LogResult::Retry)));
        Step::Again
    }

    /// Records an outcome without holding up the lane: the next event of the vehicle goes
    /// out while this one commits (group commit batches them). A crash before the commit
    /// only repeats a delivery, which at-least-once allows; updates for a delivery that is
    /// no longer pending are ignored by the store, so their order does not matter.
    fn record(
        &self,
        ts: &Arc<TargetState>,
        job: &Job,
        outcome: Outcome,
        log: Option<Box<AttemptLog>>,
    ) {
        let update = DeliveryUpdate {
            target: ts.row.clone(),
            seq: job.seq,
            outcome,
            at_unix_ms: now_ms(),
            log,
        };
        ts.recording.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError((update, ts))) = self.outcomes.send((update, ts.clone()))
        {
            // Only at shutdown: the delivery is repeated after the restart (at-least-once).
            ts.recording.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(kind = ts.id.key.kind.label(), namespace = %ts.id.key.namespace, name = %ts.id.key.name, seq = update.seq, "outcome not recorded: the recorder has stopped");
        }
    }

    /// Drops every pending row of `ts` (its object is gone or was replaced).
    async fn forget_rows(&self, ts: &Arc<TargetState>, why: &str) {
        ts.dropped.store(true, Ordering::Release);
        {
            let mut map = self.targets.lock().unwrap_or_else(|e| e.into_inner());
            if map.get(&ts.row).is_some_and(|t| Arc::ptr_eq(t, ts)) {
                map.remove(&ts.row);
            }
        }
        match self.store.drop_target(&ts.row).await {
            Ok(n) if n > 0 => {
                self.ended(ts.id.key.kind.label(), "dropped", n);
                tracing::info!(kind = ts.id.key.kind.label(), namespace = %ts.id.key.namespace, name = %ts.id.key.name, dropped = n, reason = why, "pending deliveries dropped");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, kind = ts.id.key.kind.label(), namespace = %ts.id.key.namespace, name = %ts.id.key.name, "could not drop pending deliveries")
            }
        }
        self.metrics
            .queue_depth
            .set(self.store.stats().pending as i64);
    }

    /// A target was deleted (`uid`: that object only, not a newer one of the same name), or
    /// its namespace no longer allows its client (`None`: every object that had the name):
    /// its queued deliveries are dropped and counted.
    pub async fn drop_target(self: &Arc<Self>, key: &TargetKey, uid: Option<&str>) {
        // Rows written before rows carried uids follow the name.
        let theirs = |id: &TargetId| {
            id.key == *key && uid.is_none_or(|u| id.uid.as_deref().is_none_or(|r| r == u))
        };
        self.drop_rows(theirs, "TargetRemoved").await;
    }

    /// The objects of `kind` with deliveries queued.
    pub fn queued(&self, kind: crate::routing::Kind) -> Vec<TargetId> {
        match self.store.pending_targets() {
            Ok(rows) => rows
                .iter()
                .filter_map(|r| r.parse::<TargetId>().ok())
                .filter(|id| id.key.kind == kind)
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "could not list pending targets");
                Vec::new()
            }
        }
    }

    async fn drop_rows(self: &Arc<Self>, which: impl Fn(&TargetId) -> bool, why: &str) {
        let mut rows: Vec<String> = match self.store.pending_targets() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "could not list pending targets");
                Vec::new()
            }
        };
        rows.retain(|r| r.parse::<TargetId>().is_ok_and(|id| which(&id)));
        let mut known: Vec<Arc<TargetState>> = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| which(&t.id))
            .cloned()
            .collect();
        for row in rows {
            if !known.iter().any(|t| t.row == row)
                && let Ok(id) = row.parse::<TargetId>()
            {
                known.push(Arc::new(TargetState::new(id, row)));
            }
        }
        for ts in known {
            self.forget_rows(&ts, why).await;
        }
    }

    /// Every `sweep_interval`: expires backlogs past their retry policy's maximum age (held
    /// and unregistered targets included) and makes sure every target with pending rows has
    /// a pump (so nothing is stranded, whatever happened to the request that stored it).
    async fn sweep_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.limits.sweep_interval).await;
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "backlog sweep failed");
            }
        }
    }

    pub async fn sweep(self: &Arc<Self>) -> anyhow::Result<u64> {
        self.recent.prune(now_ms());
        let mut expired = 0;
        for row in self.store.pending_targets()? {
            let Ok(id) = row.parse::<TargetId>() else {
                continue;
            };
            let policy = self
                .registry
                .get(&id.key)
                .filter(|t| id.is(t))
                .map(|t| t.retry.clone())
                .unwrap_or_default();
            let cutoff =
                now_ms().saturating_sub(u64::from(policy.max_age_seconds).saturating_mul(1000));
            // A read first: most sweeps find nothing old, and need no write transaction.
            let oldest = self.store.pending_after(&row, 0, 1)?.first().map(|p| p.seq);
            let due = match oldest {
                Some(seq) => self
                    .store
                    .event(seq)?
                    .is_none_or(|e| e.received_unix_ms < cutoff),
                None => false,
            };
            const CHUNK: usize = 10_000;
            let mut n = 0;
            if due {
                loop {
                    let k = self.store.expire(&row, cutoff, CHUNK).await?;
                    n += k;
                    if k < CHUNK as u64 {
                        break;
                    }
                }
            }
            if n > 0 {
                self.ended(id.key.kind.label(), "expired", n);
                // Events lost: worth an Event each time, unlike a failed attempt.
                self.counters.notice(
                    &id.key,
                    crate::status::Check::fail(
                        "Expired",
                        format!(
                            "{n} event(s) older than maxAgeSeconds {} were not delivered",
                            policy.max_age_seconds
                        ),
                    ),
                );
                tracing::warn!(kind = id.key.kind.label(), namespace = %id.key.namespace, name = %id.key.name, expired = n, "pending deliveries expired");
                expired += n;
            }
            self.wake(&row);
        }
        self.metrics
            .queue_depth
            .set(self.store.stats().pending as i64);
        Ok(expired)
    }

    /// Err when this store's pending deliveries are at `--max-pending-deliveries`: ingest
    /// refuses new events (429) rather than accept what could not be kept.
    pub fn check_backlog(&self) -> Result<(), BacklogFull> {
        let pending = self.store.stats().pending;
        if pending >= self.limits.max_pending {
            return Err(BacklogFull {
                pending,
                limit: self.limits.max_pending,
            });
        }
        Ok(())
    }

    /// Makes every attempt ask `gate` first; once, at start-up.
    pub fn set_gate(&self, gate: Arc<dyn Gate>) {
        if self.gate.set(gate).is_err() {
            tracing::warn!("a delivery gate was set twice; the first one stays");
        }
    }

    /// Whether the target of `row` no longer exists: `None` until the registry has listed
    /// every resource once (a target not seen yet may simply not be listed yet).
    pub fn is_gone(&self, row: &str) -> Option<bool> {
        if !self.registry.is_synced() {
            return None;
        }
        let Ok(id) = row.parse::<TargetId>() else {
            return Some(true);
        };
        Some(self.registry.get(&id.key).is_none_or(|t| !id.is(&t)))
    }

    /// The target rows `e` goes to, by the registry as it is now.
    pub fn route(&self, e: &Incoming) -> Vec<String> {
        self.registry
            .route(&e.client_id, e.user_id.as_deref(), e.type_)
            .into_iter()
            .map(|t| t.id().to_string())
            .collect()
    }

    /// Events read from the shared log of a partition this replica just took, each with the
    /// targets ingest routed it to: stored and delivered here. An event this store already
    /// holds (it owned the partition before) is queued again for its targets, unless still
    /// pending. Returns each event's local seq, in order.
    pub async fn take_over(
        self: &Arc<Self>,
        events: Vec<(Incoming, Vec<String>)>,
    ) -> anyhow::Result<Vec<u64>> {
        let mut seqs = Vec::with_capacity(events.len());
        let mut fresh: Vec<(Incoming, Vec<String>)> = Vec::new();
        for (e, targets) in events {
            match self.store.seq_of(&e.client_id, &e.id)? {
                Some(seq) => {
                    // Earlier events first, so a vehicle's events are queued in order.
                    if !fresh.is_empty() {
                        seqs.extend(self.take_fresh(std::mem::take(&mut fresh)).await?);
                    }
                    for row in &targets {
                        self.store.add_deliveries(row, vec![seq]).await?;
                        self.requeue_rows(row, &[seq]);
                    }
                    seqs.push(seq);
                }
                None => fresh.push((e, targets)),
            }
        }
        if !fresh.is_empty() {
            seqs.extend(self.take_fresh(fresh).await?);
        }
        Ok(seqs)
    }

    async fn take_fresh(
        self: &Arc<Self>,
        events: Vec<(Incoming, Vec<String>)>,
    ) -> anyhow::Result<Vec<u64>> {
        let (events, routed): (Vec<_>, Vec<_>) = events.into_iter().unzip();
        let (_, outcomes) = self.clone().accept_routed(events, routed).await?;
        Ok(outcomes.iter().map(AcceptOutcome::seq).collect())
    }

    async fn accept_now(
        self: Arc<Self>,
        events: Vec<Incoming>,
    ) -> anyhow::Result<Vec<EventResult>> {
        let routed = events.iter().map(|e| self.route(e)).collect();
        Ok(self.accept_routed(events, routed).await?.0)
    }

    async fn accept_routed(
        self: Arc<Self>,
        mut events: Vec<Incoming>,
        routed_in: Vec<Vec<String>>,
    ) -> anyhow::Result<(Vec<EventResult>, Vec<AcceptOutcome>)> {
        let mut routed = Vec::with_capacity(events.len());
        let mut batch = Vec::with_capacity(events.len());
        let mut bodies = Vec::with_capacity(events.len());
        for (e, targets) in events.iter_mut().zip(routed_in) {
            // Kept for the attempts only if there will be any.
            bodies.push((!targets.is_empty()).then(|| e.body.clone()));
            batch.push(NewEvent {
                client: e.client_id.clone(),
                id: e.id.clone(),
                body: std::mem::take(&mut e.body),
                lane: std::mem::take(&mut e.lane),
                event_type: e.type_.as_str(),
                targets: targets.clone(),
            });
            routed.push(targets);
        }
        // The store stamps its own receive time a moment later; an attempt working from this
        // one counts the event as older by the commit's duration, never younger.
        let accepted_at = now_ms();
        let outcomes = self.store.accept(batch).await?;
        let mut results = Vec::with_capacity(events.len());
        let mut touched = std::collections::BTreeSet::new();
        for (((e, targets), outcome), body) in events
            .iter()
            .zip(routed)
            .zip(outcomes.iter().copied())
            .zip(bodies)
        {
            match outcome {
                AcceptOutcome::New { seq } => {
                    if let Some(body) = body {
                        let head = Head::new(
                            e.client_id.clone(),
                            e.user_id.clone(),
                            e.type_,
                            e.vin.clone(),
                        );
                        let received_ms = accepted_at;
                        let event = Arc::new(Loaded {
                            body,
                            received_ms,
                            head,
                        });
                        let due = u32::try_from(targets.len()).unwrap_or(u32::MAX);
                        self.recent.accepted(seq, event, due, accepted_at);
                    }
                    results.push(EventResult {
                        id: e.id.clone(),
                        status: "accepted",
                        deliveries: targets.len(),
                    });
                    touched.extend(targets);
                }
                AcceptOutcome::Duplicate { .. } => results.push(EventResult {
                    id: e.id.clone(),
                    status: "duplicate",
                    deliveries: 0,
                }),
            }
        }
        for row in touched {
            if let Ok(id) = row.parse::<TargetId>() {
                self.counters.touch(&id.key);
            }
            self.wake(&row);
        }
        self.metrics
            .queue_depth
            .set(self.store.stats().pending as i64);
        Ok((results, outcomes))
    }
}

impl EventSink for Arc<Dispatcher> {
    fn accept(&self, events: Vec<Incoming>) -> BoxFuture<'_, anyhow::Result<Vec<EventResult>>> {
        let me = self.clone();
        Box::pin(async move {
            me.check_backlog()?;
            // Commit and hand-off run as their own task: a client that hangs up mid-request
            // drops this future, never the step between the commit and the pumps' wake-up.
            tokio::spawn(me.accept_now(events)).await?
        })
    }
}
/// What the controllers tell the dispatcher about objects that are gone.
pub struct ForgetDeliveries(pub Arc<Dispatcher>);

impl crate::controller::Forget for ForgetDeliveries {
    fn object(
        &self,
        key: TargetKey,
        uid: Option<String>,
    ) -> futures::future::BoxFuture<'static, ()> {
        let d = self.0.clone();
        Box::pin(async move { d.drop_target(&key, uid.as_deref()).await })
    }

    fn queued(&self, kind: crate::routing::Kind) -> Vec<TargetId> {
        self.0.queued(kind)
    }
}
