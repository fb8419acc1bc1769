//! Several replicas on one NATS JetStream event log (`--store nats://…`).
//!
//! Every replica serves ingest: it routes each event as a single replica does and publishes it
//! to the stream, answering 202 only after JetStream acknowledged it (stored on a quorum).
//! Events are spread over partitions by (client, vehicle), and each partition is owned by one
//! replica at a time (`store::jetstream::owners`). The owner reads its partitions from the
//! log, from each partition's floor, into its own store, where the dispatcher delivers them as
//! it delivers a single replica's events. It moves a partition's floor up as the events below
//! it finish, so whoever owns the partition next resumes there. Before every attempt the
//! dispatcher asks whether this replica still owns the event's partition (the [`Gate`]); one
//! that lost it (a lapsed lease, a stall) leaves the delivery to the new owner.
//!
//! At-least-once: events between the floor and what the old owner had finished are delivered
//! again by the new one. A vehicle's events still reach each target in order of their first
//! arrival, as the new owner reads the partition in stream order.

pub mod adopted;
mod counters;
mod log_copy;
mod slots;
mod state;
mod writers;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::delivery::dispatcher::{Dispatcher, Gate};
use crate::ingest::envelope::{Envelope, Incoming};
use crate::ingest::{EventResult, EventSink};
use crate::store::jetstream::owners::{Owners, OwnersOptions};
use crate::store::jetstream::partition::{FloorError, Partitions};
use crate::store::jetstream::{JetStreamLog, JetStreamOptions, LoggedEvent, partition};
use crate::store::{AcceptOutcome, NewEvent, Store, dedupe_key};

/// How often the supervisor looks at which partitions are owned, and a worker at what
/// finished.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How old an event may be before a target this replica has not listed counts as deleted
/// rather than not listed yet (watches of the replicas lag each other by far less).
const UNLISTED_GRACE_MS: u64 = 30_000;
/// Longest a clean shutdown waits for its partitions' readers to drain.
const DRAIN_ON_LEAVE: Duration = Duration::from_secs(5);
/// Events of one partition handed to the dispatcher at once.
const TAKE_BATCH: usize = 256;

/// How this replica joins the others.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Comma-separated NATS URLs.
    pub urls: String,
    pub jetstream: JetStreamOptions,
    /// This replica's id (the pod name).
    pub replica_id: String,
    /// How long a partition's lease lasts without renewal.
    pub lease: Duration,
    /// How long delivery log entries are kept (`--delivery-log-retention-hours`): their copy
    /// in JetStream too.
    pub log_retention: Duration,
    /// Where the delivery logs of gone replicas served here are kept (filled from JetStream).
    pub adopted_dir: std::path::PathBuf,
}

/// A running replica's share of the cluster: ingest into the log, and delivery of the
/// partitions it owns.
#[derive(Clone)]
pub struct Cluster {
    log: JetStreamLog,
    owners: Owners,
    dispatcher: Arc<Dispatcher>,
    counters: Arc<counters::KvCounters>,
    slots: Arc<slots::KvSlots>,
    adopted: adopted::Adopted,
}

impl Cluster {
    /// Connects, joins the replicas and starts reading owned partitions into `dispatcher`.
    pub async fn start(
        options: &ClusterOptions,
        dispatcher: Arc<Dispatcher>,
        store: Store,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Cluster> {
        let log = JetStreamLog::connect(&options.urls, &options.jetstream).await?;
        let partitions = log.partitions();
        let replicas = options.jetstream.replicas;
        // Replicas starting together on a new cluster create the buckets at once, and a
        // cluster electing leaders answers late: try again until the connect timeout.
        let deadline = tokio::time::Instant::now() + options.jetstream.connect_timeout;
        let (owners, floors, shared, kv_state, slots, copied) = loop {
            let joined = async {
                let owners = Owners::join(
                    log.context(),
                    &options.replica_id,
                    OwnersOptions {
                        partitions,
                        ttl: options.lease,
                        replicas,
                        // Long enough for deliveries in flight, well inside a lease.
                        drain: (options.lease / 2).min(Duration::from_secs(5)),
                    },
                )
                .await?;
                let floors = Partitions::open(&log, replicas).await?;
                // Every bucket in this loop: any create can time out while leaders are elected.
                let shared =
                    counters::KvCounters::open(log.context(), owners.clone(), replicas).await?;
                let kv_state = state::KvState::open(log.context(), replicas).await?;
                let slots = slots::KvSlots::open(
                    log.context(),
                    &options.replica_id,
                    options.lease,
                    replicas,
                )
                .await?;
                log_copy::open(log.context(), replicas, options.log_retention).await?;
                // Before any delivery is logged here: see log_copy.
                let copied = log_copy::restore(log.context(), &options.replica_id, &store).await?;
                anyhow::Ok((owners, floors, shared, kv_state, slots, copied))
            };
            match joined.await {
                Ok(j) => break j,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "JetStream buckets not ready yet; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        store.share_state(Arc::new(kv_state));
        let gate = Arc::new(OwnersGate {
            owners: owners.clone(),
            partitions,
            taken: Default::default(),
        });
        dispatcher.set_gate(gate.clone());
        tokio::spawn(owners.clone().run());
        let adopted = adopted::Adopted::default();
        tokio::spawn(adopted::run(
            log.context().clone(),
            owners.clone(),
            options.adopted_dir.clone(),
            options.lease,
            options.log_retention,
            adopted.clone(),
        ));
        tokio::spawn(replicas_view(&log, &owners, &adopted).serve(store.clone()));
        tokio::spawn(log_copy::run(
            log.context().clone(),
            options.replica_id.clone(),
            store.clone(),
            copied,
            metrics,
        ));
        tokio::spawn(supervise(
            owners.clone(),
            floors,
            dispatcher.clone(),
            store,
            gate,
        ));
        tracing::info!(replica = %options.replica_id, partitions, "joined the replicas on JetStream");
        Ok(Cluster {
            log,
            owners,
            dispatcher,
            counters: Arc::new(shared),
            slots: Arc::new(slots),
            adopted,
        })
    }

    /// Where the status writer adds up every replica's counters.
    pub fn shared_counters(&self) -> Arc<dyn crate::status::SharedCounters> {
        self.counters.clone()
    }

    /// Which replica writes each resource's status.
    pub fn status_writers(&self) -> Arc<dyn crate::status::StatusWriters> {
        Arc::new(writers::MemberWriters::new(self.owners.clone()))
    }

    /// The event log (the pull feed reads it).
    pub fn log(&self) -> &JetStreamLog {
        &self.log
    }

    /// File-transfer session limits (`maxConnections`) held over every replica.
    pub fn session_slots(&self) -> Arc<dyn crate::delivery::files::SessionSlots> {
        self.slots.clone()
    }

    /// Every replica's delivery log, for the management API.
    pub fn replicas(&self) -> crate::manage::replicas::Replicas {
        replicas_view(&self.log, &self.owners, &self.adopted)
    }

    /// Ingest's sink: events go to the log.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.clone())
    }

    /// Hands every partition over (a clean shutdown), instead of leaving them to the lease:
    /// the readers first finish what they took, for up to the drain time.
    pub async fn leave(&self) {
        self.owners.hand_over_all();
        let deadline = tokio::time::Instant::now() + DRAIN_ON_LEAVE;
        while !self.owners.owned().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        self.owners.leave().await;
    }
}

fn replicas_view(
    log: &JetStreamLog,
    owners: &Owners,
    adopted: &adopted::Adopted,
) -> crate::manage::replicas::Replicas {
    let members = owners.clone();
    crate::manage::replicas::Replicas::new(
        log.context().client(),
        owners.id().to_owned(),
        Arc::new(move || members.members()),
        adopted.clone(),
    )
}

/// Opens (or creates) a KV bucket of the cluster's own, holding one value per key.
async fn open_bucket(
    context: &async_nats::jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    context
        .create_or_update_key_value(async_nats::jetstream::kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the KV bucket {bucket}: {e}"))
}

/// The dispatcher's [`Gate`]: an event may be delivered here while this replica holds its
/// partition in the holding ([`Owners::epoch`]) that took it. A replica that lost a partition
/// and took it back (a stall longer than the lease) still has the jobs of its earlier holding
/// queued; another replica has delivered from the floor on since, so those jobs are handed
/// over, never sent: the new holding takes again what is still unfinished.
struct OwnersGate {
    owners: Owners,
    partitions: u32,
    /// `client/id` → (partition, epoch) of the holding that took it.
    taken: std::sync::Mutex<HashMap<String, (u32, u64)>>,
}

impl OwnersGate {
    fn taken(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, u64)>> {
        self.taken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks events as taken by the holding `epoch` of `partition`; before they are stored,
    /// so no attempt can come first.
    fn take<'a>(&self, partition: u32, epoch: u64, keys: impl Iterator<Item = &'a str>) {
        let mut taken = self.taken();
        for key in keys {
            taken.insert(key.to_owned(), (partition, epoch));
        }
    }

    /// Forgets an event of the holding `epoch` that is finished.
    fn finished(&self, key: &str, partition: u32, epoch: u64) {
        let mut taken = self.taken();
        if taken.get(key) == Some(&(partition, epoch)) {
            taken.remove(key);
        }
    }
}

impl Gate for OwnersGate {
    fn owns(&self, client: &str, lane: &str, event_id: &str) -> bool {
        let k = partition(client, lane, self.partitions);
        let Some(epoch) = self.owners.epoch(k) else {
            return false;
        };
        let key = dedupe_key(client, event_id);
        let mut taken = self.taken();
        match taken.get(&key) {
            Some(&held) if held == (k, epoch) => true,
            // Of an earlier holding: handed over now, so forgotten.
            Some(_) => {
                taken.remove(&key);
                false
            }
            None => false,
        }
    }

    fn requeued(&self, client: &str, lane: &str, event_id: &str) {
        let k = partition(client, lane, self.partitions);
        if let Some(epoch) = self.owners.epoch(k) {
            self.take(
                k,
                epoch,
                std::iter::once(dedupe_key(client, event_id).as_str()),
            );
        }
    }
}

impl EventSink for Cluster {
    fn accept(&self, events: Vec<Incoming>) -> BoxFuture<'_, anyhow::Result<Vec<EventResult>>> {
        Box::pin(async move {
            // This replica's own backlog stands for the cluster's: with partitions spread
            // evenly, one full replica means every one is close.
            self.dispatcher.check_backlog()?;
            let mut batch = Vec::with_capacity(events.len());
            let mut routed = Vec::with_capacity(events.len());
            for e in events {
                let targets = self.dispatcher.route(&e);
                routed.push(targets.len());
                batch.push(NewEvent {
                    client: e.client_id,
                    id: e.id,
                    body: e.body,
                    lane: e.lane,
                    event_type: e.type_.as_str(),
                    targets,
                });
            }
            let ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
            let outcomes = self.log.accept(batch).await?;
            Ok(ids
                .into_iter()
                .zip(routed)
                .zip(outcomes)
                .map(|((id, deliveries), outcome)| match outcome {
                    AcceptOutcome::New { .. } => EventResult {
                        id,
                        status: "accepted",
                        deliveries,
                    },
                    AcceptOutcome::Duplicate { .. } => EventResult {
                        id,
                        status: "duplicate",
                        deliveries: 0,
                    },
                })
                .collect())
        })
    }
}

/// Runs one worker per owned partition, and stops the workers of partitions no longer owned.
async fn supervise(
    owners: Owners,
    floors: Partitions,
    dispatcher: Arc<Dispatcher>,
    store: Store,
    gate: Arc<OwnersGate>,
) {
    // By partition: the holding (epoch) its reader works for, and the reader.
    let mut workers: HashMap<u32, (u64, JoinHandle<()>)> = HashMap::new();
    let mut every = tokio::time::interval(LOOK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        workers.retain(|k, (epoch, w)| {
            let keep = owners.epoch(*k) == Some(*epoch) && !w.is_finished();
            if !keep {
                w.abort();
                tracing::info!(
                    partition = k,
                    "partition no longer owned here; its reader stopped"
                );
            }
            keep
        });
        for k in owners.owned() {
            let Some(epoch) = owners.epoch(k) else {
                continue;
            };
            workers.entry(k).or_insert_with(|| {
                tracing::info!(
                    partition = k,
                    epoch,
                    "partition owned; reading it from its floor"
                );
                let worker = Worker {
                    partition: k,
                    epoch,
                    owners: owners.clone(),
                    floors: floors.clone(),
                    dispatcher: dispatcher.clone(),
                    store: store.clone(),
                    gate: gate.clone(),
                };
                (epoch, tokio::spawn(worker.run()))
            });
        }
    }
}

/// An event handed to the dispatcher, until all its deliveries are finished.
struct Open {
    /// Its stream sequence.
    seq: u64,
    /// `client/id`.
    key: String,
    /// Its seq in this replica's store.
    local: u64,
    targets: Vec<String>,
}

struct Worker {
    partition: u32,
    /// The holding of the partition this reader works for.
    epoch: u64,
    gate: Arc<OwnersGate>,
    owners: Owners,
    floors: Partitions,
    dispatcher: Arc<Dispatcher>,
    store: Store,
}

impl Worker {
    /// Reads the partition into the dispatcher while it is owned here; starts over from the
    /// floor after an error.
    async fn run(self) {
        while self.holds() {
            match self.read().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(partition = self.partition, error = %e, "partition reader failed; starting again from its floor");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Whether this replica still holds the partition, in this reader's holding.
    fn holds(&self) -> bool {
        self.owners.epoch(self.partition) == Some(self.epoch)
    }

    /// Ok when the partition is no longer owned here.
    async fn read(&self) -> anyhow::Result<()> {
        let k = self.partition;
        let mut floor = self.floors.floor(k).await?;
        let events = self.floors.read_after(k, floor.seq).await?;
        let mut events = std::pin::pin!(events.ready_chunks(TAKE_BATCH));
        let mut open: VecDeque<Open> = VecDeque::new();
        // Everything of the partition up to here is finished (events with nothing to deliver
        // and unreadable ones included).
        let mut finished = floor.seq;
        let mut read_to = floor.seq;
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Handing the partition over: nothing more is taken, and it is released once what
        // was taken is finished and the floor says so.
        let mut draining = false;
        loop {
            tokio::select! {
                batch = events.next(), if !draining => {
                    let Some(batch) = batch else {
                        anyhow::bail!("the partition's reader ended");
                    };
                    if !self.holds() {
                        return Ok(());
                    }
                    // A full backlog here: the events wait in the log, which is durable.
                    while self.dispatcher.check_backlog().is_err() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        if !self.holds() {
                            return Ok(());
                        }
                    }
                    let (taken, last) = self.take(batch).await?;
                    read_to = read_to.max(last);
                    open.extend(taken);
                }
                _ = every.tick() => {
                    if !self.holds() {
                        return Ok(());
                    }
                    draining = self.owners.handing_over(k);
                }
            }
            while let Some(front) = open.front() {
                if self.is_open(front)? {
                    break;
                }
                finished = front.seq;
                self.gate.finished(&front.key, k, self.epoch);
                open.pop_front();
            }
            if open.is_empty() {
                finished = read_to;
            }
            if finished > floor.seq {
                match self.floors.advance(k, floor, finished).await {
                    Ok(moved) => floor = moved,
                    Err(FloorError::Moved { .. }) => {
                        tracing::warn!(
                            partition = k,
                            "another replica moved this partition's floor; leaving it"
                        );
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(partition = k, error = %e, "could not move the partition's floor; trying again")
                    }
                }
            }
            if draining && open.is_empty() && floor.seq >= finished {
                tracing::info!(
                    partition = k,
                    floor = floor.seq,
                    "partition drained; handed over"
                );
                self.owners.release(k).await;
                return Ok(());
            }
        }
    }

    /// Hands a batch read from the log to the dispatcher; returns what is now open and the
    /// highest stream seq in the batch.
    async fn take(
        &self,
        batch: Vec<Result<LoggedEvent, crate::store::jetstream::JetStreamError>>,
    ) -> anyhow::Result<(Vec<Open>, u64)> {
        let mut last = 0;
        let mut events = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for item in batch {
            let logged = match item {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(partition = self.partition, error = %e, "an event in the log cannot be read; skipped");
                    continue;
                }
            };
            let seq = logged.event.seq;
            last = last.max(seq);
            // Events without targets are stored too: the owner's pull feed serves them.
            let incoming = match serde_json::from_slice::<Envelope>(&logged.event.body)
                .and_then(|e| Incoming::from_envelope(&e))
            {
                Ok(mut i) => {
                    // Delivered byte for byte as accepted.
                    i.body = logged.event.body;
                    i
                }
                Err(e) => {
                    tracing::error!(partition = self.partition, seq, error = %e, "an event in the log is not an event; skipped");
                    continue;
                }
            };
            // A target deleted since ingest routed the event: its replica dropped the queued
            // deliveries then, and this one would wait for a target that never comes back,
            // holding the floor. One not listed yet (just created) is kept for a while.
            let age = crate::store::now_unix_ms().saturating_sub(logged.event.received_unix_ms);
            let targets: Vec<String> = logged
                .targets
                .into_iter()
                .filter(|row| match self.dispatcher.is_gone(row) {
                    Some(true) if age > UNLISTED_GRACE_MS => {
                        tracing::info!(partition = self.partition, seq, target = %row, "the event's target is gone; not queued");
                        false
                    }
                    _ => true,
                })
                .collect();
            let key = dedupe_key(&incoming.client_id, &incoming.id);
            seqs.push((seq, key, targets.clone()));
            events.push((incoming, targets));
        }
        if events.is_empty() {
            return Ok((Vec::new(), last));
        }
        self.gate.take(
            self.partition,
            self.epoch,
            seqs.iter().map(|(_, key, _)| key.as_str()),
        );
        let locals = self.dispatcher.take_over(events).await?;
        Ok((
            seqs.into_iter()
                .zip(locals)
                .map(|((seq, key, targets), local)| Open {
                    seq,
                    key,
                    local,
                    targets,
                })
                .collect(),
            last,
        ))
    }

    /// Whether any of the event's deliveries is still pending here.
    fn is_open(&self, e: &Open) -> anyhow::Result<bool> {
        for t in &e.targets {
            if self.store.is_pending(t, e.local)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
