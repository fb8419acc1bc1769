//! From accepted events to delivery attempts. Ingest routes each event (the routing index),
//! stores it with its deliveries in one durable transaction, and hands the deliveries to
//! per-target lanes: events of one lane (vehicle) go to one target strictly in order, lanes
//! run in parallel up to the target's concurrency. Outcomes are recorded in the store; the
//! counter writer publishes them on the resources' status.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::api::RetryPolicy;
use crate::delivery::upload::{UploadResult, Uploader};
use crate::delivery::webhook::{AttemptResult, WebhookSender, backoff, should_give_up};
use crate::ingest::{Envelope, EventResult, EventSink};
use crate::metrics::{KindLabel, KindResult, Metrics};
use crate::routing::{FtpTarget, Kind, Registry, TargetConfig, TargetKey};
use crate::status::CounterWriter;
use crate::store::{AcceptOutcome, DeliveryUpdate, NewEvent, Outcome, PendingDelivery, Store};

/// FTP deliveries in flight at once, across all connections (memory bound).
pub const FTP_IN_FLIGHT: usize = 32;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One delivery of one event to one target.
#[derive(Clone, Debug)]
struct Job {
    seq: u64,
    event_id: String,
    attempts: u32,
    next_attempt_ms: u64,
    /// When the event was accepted (for the retry policy's maximum age and latency).
    accepted_ms: u64,
    /// The body, when the event was just accepted (else read from the store).
    body: Option<Arc<[u8]>>,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Job>,
    running: bool,
}

struct TargetLanes {
    lanes: Mutex<HashMap<String, Lane>>,
    permits: Arc<Semaphore>,
    /// Set when the resource was deleted: its lanes stop.
    dropped: std::sync::atomic::AtomicBool,
}

pub struct Dispatcher {
    store: Store,
    registry: Arc<Registry>,
    sender: WebhookSender,
    uploader: Uploader,
    metrics: Arc<Metrics>,
    counters: Arc<CounterWriter>,
    targets: Mutex<HashMap<TargetKey, Arc<TargetLanes>>>,
    /// Bounds attempts in flight across all targets.
    global: Arc<Semaphore>,
    /// Bounds FTP deliveries in flight across all connections: each holds its vehicle's
    /// images in memory, so 400 connections uploading at once must not mean 400 vehicles
    /// buffered at once.
    ftp_global: Arc<Semaphore>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        sender: WebhookSender,
        uploader: Uploader,
        metrics: Arc<Metrics>,
        counters: Arc<CounterWriter>,
    ) -> Arc<Self> {
        Arc::new(Dispatcher {
            store,
            registry,
            sender,
            uploader,
            metrics,
            counters,
            targets: Mutex::new(HashMap::new()),
            global: Arc::new(Semaphore::new(1024)),
            ftp_global: Arc::new(Semaphore::new(FTP_IN_FLIGHT)),
        })
    }

    /// Re-queues every pending delivery found in the store (after a restart).
    pub fn resume(self: &Arc<Self>) -> anyhow::Result<usize> {
        let pending: Vec<PendingDelivery> = self.store.pending()?;
        let n = pending.len();
        for p in pending {
            let Some(key) = parse_key(&p.target) else {
                tracing::warn!(target = %p.target, "pending delivery for an unknown target kind");
                continue;
            };
            let accepted_ms = self
                .store
                .event(p.seq)?
                .map(|e| e.received_unix_ms)
                .unwrap_or_else(now_ms);
            let job = Job {
                seq: p.seq,
                event_id: p.event_id,
                attempts: p.attempts,
                next_attempt_ms: p.next_attempt_unix_ms,
                accepted_ms,
                body: None,
            };
            self.enqueue(key, p.lane, job);
        }
        self.metrics
            .queue_depth
            .set(self.store.stats().pending as i64);
        Ok(n)
    }

    fn lanes_of(&self, key: &TargetKey) -> Arc<TargetLanes> {
        let mut t = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        t.entry(key.clone())
            .or_insert_with(|| {
                let limit = self
                    .registry
                    .get(key)
                    .and_then(|t| match &t.config {
                        Some(TargetConfig::Webhook(w)) => Some(w.max_concurrency),
                        Some(TargetConfig::Ftp(f)) => Some(f.max_connections),
                        None => None,
                    })
                    .unwrap_or(8);
                Arc::new(TargetLanes {
                    lanes: Mutex::new(HashMap::new()),
                    permits: Arc::new(Semaphore::new(limit.max(1) as usize)),
                    dropped: std::sync::atomic::AtomicBool::new(false),
                })
            })
            .clone()
    }

    fn enqueue(self: &Arc<Self>, key: TargetKey, lane: String, job: Job) {
        let tl = self.lanes_of(&key);
        let start = {
            let mut lanes = tl.lanes.lock().unwrap_or_else(|e| e.into_inner());
            let l = lanes.entry(lane.clone()).or_default();
            l.queue.push_back(job);
            !std::mem::replace(&mut l.running, true)
        };
        if start {
            let me = self.clone();
            tokio::spawn(async move { me.run_lane(key, tl, lane).await });
        }
    }

    /// Delivers one lane's jobs in order; exits when the lane is empty.
    async fn run_lane(self: Arc<Self>, key: TargetKey, tl: Arc<TargetLanes>, lane: String) {
        loop {
            let job = {
                let mut lanes = tl.lanes.lock().unwrap_or_else(|e| e.into_inner());
                match lanes.get_mut(&lane).and_then(|l| l.queue.front().cloned()) {
                    Some(j) => j,
                    None => {
                        lanes.remove(&lane);
                        return;
                    }
                }
            };
            let done = self.deliver(&key, &tl, job).await;
            let mut lanes = tl.lanes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = lanes.get_mut(&lane) {
                if done {
                    l.queue.pop_front();
                } else {
                    // The target is gone: the rest of this lane goes with it.
                    l.queue.clear();
                }
            }
        }
    }

    /// Attempts `job` until it is delivered or given up; false if the target disappeared.
    async fn deliver(&self, key: &TargetKey, tl: &TargetLanes, mut job: Job) -> bool {
        let target_name = key.to_string();
        loop {
            if tl.dropped.load(std::sync::atomic::Ordering::Acquire) {
                return false;
            }
            // Not registered (yet): after a restart deliveries resume before the reconcilers
            // have registered every target. Deletion is signalled by `dropped`.
            let Some(target) = self.registry.get(key) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let config = match (&target.held, &target.config) {
                (None, Some(c)) => c.clone(),
                // Held (suspended, missing Secret, ...): keep the event, check again soon.
                _ => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let wait = job.next_attempt_ms.saturating_sub(now_ms());
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait.min(5_000))).await;
                continue;
            }
            let body = match &job.body {
                Some(b) => b.clone(),
                None => match self.store.event_body(job.seq) {
                    Ok(Some(b)) => {
                        let b: Arc<[u8]> = b.into();
                        job.body = Some(b.clone());
                        b
                    }
                    Ok(None) => {
                        tracing::error!(target = %target_name, seq = job.seq, "event body missing from the store; dropping the delivery");
                        self.record(
                            key,
                            &job,
                            Outcome::GaveUp {
                                reason: "EventMissing".into(),
                            },
                        )
                        .await;
                        return true;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "store read failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let cfg = match config {
                TargetConfig::Webhook(w) => w,
                TargetConfig::Ftp(ftp) => match self.upload(key, tl, &mut job, &ftp, &body).await {
                    Some(()) => return true,
                    None => continue,
                },
            };
            let result = {
                let _g = self.global.acquire().await;
                let _t = tl.permits.acquire().await;
                self.sender.send(&cfg, &job.event_id, &body).await
            };
            job.attempts += 1;
            const KIND: &str = "webhook";
            match result {
                AttemptResult::Delivered { status, elapsed } => {
                    self.count(KIND, "delivered");
                    self.observe_attempt(KIND, elapsed);
                    self.observe_latency(KIND, &job);
                    let outcome = Outcome::Delivered {
                        status: Some(status),
                    };
                    self.record(key, &job, outcome).await;
                    return true;
                }
                AttemptResult::Retryable {
                    reason,
                    message,
                    retry_after,
                    elapsed,
                    ..
                } => {
                    self.observe_attempt(KIND, elapsed);
                    let why = format!("{reason}: {message}");
                    if self
                        .retry_or_give_up(key, &mut job, KIND, &cfg.retry, why, retry_after)
                        .await
                    {
                        return true;
                    }
                }
                AttemptResult::Permanent {
                    reason,
                    message,
                    elapsed,
                    ..
                } => {
                    self.observe_attempt(KIND, elapsed);
                    self.give_up(key, &job, KIND, format!("{reason}: {message}"))
                        .await;
                    return true;
                }
                AttemptResult::Gone { .. } => {
                    self.count(KIND, "gone");
                    // The receiver says this endpoint is gone: suspend the subscription (an
                    // annotation the reconciler turns into a held target) and keep the event.
                    self.counters.receiver_gone(key);
                    job.attempts -= 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One FTP attempt; `Some(())` when the delivery is finished (uploaded, skipped or given
    /// up), `None` when it is to be retried (the next attempt time is set).
    async fn upload(
        &self,
        key: &TargetKey,
        tl: &TargetLanes,
        job: &mut Job,
        ftp: &FtpTarget,
        body: &[u8],
    ) -> Option<()> {
        const KIND: &str = "ftp";
        let event: Envelope = match serde_json::from_slice(body) {
            Ok(e) => e,
            Err(e) => {
                let why = format!("BadEvent: stored event cannot be read: {e}");
                self.give_up(key, job, KIND, why).await;
                return Some(());
            }
        };
        let result = {
            let _t = tl.permits.acquire().await;
            let _g = self.ftp_global.acquire().await;
            self.uploader.deliver(ftp, &event, &[]).await
        };
        job.attempts += 1;
        let outcome = match result {
            UploadResult::Uploaded {
                vin,
                files,
                bytes,
                elapsed,
                ..
            } => {
                self.count(KIND, "delivered");
                self.observe_attempt(KIND, elapsed);
                self.observe_latency(KIND, job);
                Outcome::Uploaded { files, bytes, vin }
            }
            UploadResult::Deleted { vin, files, .. } => {
                self.count(KIND, "delivered");
                tracing::info!(target = %key, event = %job.event_id, ?vin, files, "vehicle files removed");
                Outcome::Delivered { status: None }
            }
            UploadResult::Skipped { reason } => {
                self.count(KIND, "skipped");
                tracing::debug!(target = %key, event = %job.event_id, %reason, "nothing to upload");
                Outcome::Delivered { status: None }
            }
            UploadResult::Retryable { reason, message } => {
                let why = format!("{reason}: {message}");
                let done = self
                    .retry_or_give_up(key, job, KIND, &ftp.retry, why, None)
                    .await;
                return done.then_some(());
            }
            UploadResult::Permanent { reason, message } => {
                self.give_up(key, job, KIND, format!("{reason}: {message}"))
                    .await;
                return Some(());
            }
        };
        self.record(key, job, outcome).await;
        Some(())
    }

    fn count(&self, kind: &'static str, result: &'static str) {
        self.metrics
            .deliveries
            .get_or_create(&KindResult { kind, result })
            .inc();
    }

    fn observe_attempt(&self, kind: &'static str, elapsed: Duration) {
        let label = KindLabel { kind };
        self.metrics
            .attempt_seconds
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
    }

    fn observe_latency(&self, kind: &'static str, job: &Job) {
        let latency = now_ms().saturating_sub(job.accepted_ms) as f64 / 1000.0;
        self.metrics
            .delivery_latency_seconds
            .get_or_create(&KindLabel { kind })
            .observe(latency);
    }

    /// The delivery failed for good: counted, an Event on the resource, recorded.
    async fn give_up(&self, key: &TargetKey, job: &Job, kind: &'static str, why: String) {
        self.count(kind, "failed");
        self.counters.failure(key, &job.event_id, &why);
        self.record(key, job, Outcome::GaveUp { reason: why }).await;
    }

    /// After a retryable failure: schedules the next attempt by the policy, or gives up when
    /// the policy's attempts or age are spent. True when the delivery is finished.
    async fn retry_or_give_up(
        &self,
        key: &TargetKey,
        job: &mut Job,
        kind: &'static str,
        policy: &RetryPolicy,
        why: String,
        retry_after: Option<Duration>,
    ) -> bool {
        let age = Duration::from_millis(now_ms().saturating_sub(job.accepted_ms));
        if should_give_up(policy, job.attempts, age) {
            let why = format!("{why} (gave up after {} attempts)", job.attempts);
            self.give_up(key, job, kind, why).await;
            return true;
        }
        self.count(kind, "retry");
        job.next_attempt_ms =
            now_ms() + backoff(policy, job.attempts, retry_after).as_millis() as u64;
        let outcome = Outcome::Retry {
            next_attempt_unix_ms: job.next_attempt_ms,
            reason: why,
        };
        self.record(key, job, outcome).await;
        false
    }

    /// Records an outcome without holding up the lane: the next event of the vehicle goes
    /// out while this one commits (group commit batches them). A crash before the commit
    /// only repeats a delivery, which at-least-once allows; updates for a delivery that is
    /// no longer pending are ignored by the store, so their order does not matter.
    async fn record(&self, key: &TargetKey, job: &Job, outcome: Outcome) {
        let update = DeliveryUpdate {
            target: key.to_string(),
            seq: job.seq,
            outcome,
            at_unix_ms: now_ms(),
        };
        let (store, counters, metrics, key) = (
            self.store.clone(),
            self.counters.clone(),
            self.metrics.clone(),
            key.clone(),
        );
        tokio::spawn(async move {
            // A failed write is retried so the counters do not drift.
            for attempt in 0..5 {
                match store.record(vec![update.clone()]).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, attempt, "could not record a delivery outcome");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                }
            }
            counters.touch(&key);
            metrics.queue_depth.set(store.stats().pending as i64);
        });
    }

    /// A target was deleted: forget its queued deliveries.
    pub async fn drop_target(&self, key: &TargetKey) {
        let removed = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        if let Some(tl) = removed {
            tl.dropped.store(true, std::sync::atomic::Ordering::Release);
        }
        match self.store.drop_target(&key.to_string()).await {
            Ok(n) if n > 0 => {
                tracing::info!(target = %key, dropped = n, "pending deliveries of a deleted target dropped")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, target = %key, "could not drop pending deliveries")
            }
        }
    }
}

/// Parses a `TargetKey` from its Display form.
pub fn parse_key(s: &str) -> Option<TargetKey> {
    let mut it = s.splitn(3, '/');
    let kind = match it.next()? {
        "webhooksubscription" => Kind::Webhook,
        "ftpconnection" => Kind::Ftp,
        _ => return None,
    };
    Some(TargetKey {
        kind,
        namespace: it.next()?.to_string(),
        name: it.next()?.to_string(),
    })
}

impl EventSink for Arc<Dispatcher> {
    fn accept(&self, events: Vec<Envelope>) -> BoxFuture<'_, anyhow::Result<Vec<EventResult>>> {
        Box::pin(async move {
            let accepted_ms = now_ms();
            let mut routed = Vec::with_capacity(events.len());
            let mut batch = Vec::with_capacity(events.len());
            for e in &events {
                let targets: Vec<TargetKey> = self
                    .registry
                    .route(&e.client_id, e.user_id.as_deref(), e.type_)
                    .into_iter()
                    .map(|t| t.key.clone())
                    .collect();
                let body: Arc<[u8]> = serde_json::to_vec(e)?.into();
                batch.push(NewEvent {
                    id: e.id.clone(),
                    body: body.to_vec(),
                    lane: e.lane(),
                    targets: targets.iter().map(ToString::to_string).collect(),
                });
                routed.push((targets, body));
            }
            let outcomes = self.store.accept(batch).await?;
            let mut results = Vec::with_capacity(events.len());
            for ((e, (targets, body)), outcome) in events.iter().zip(routed).zip(outcomes) {
                match outcome {
                    AcceptOutcome::New { seq } => {
                        let n = targets.len();
                        for key in targets {
                            self.counters.touch(&key);
                            self.enqueue(
                                key,
                                e.lane(),
                                Job {
                                    seq,
                                    event_id: e.id.clone(),
                                    attempts: 0,
                                    next_attempt_ms: 0,
                                    accepted_ms,
                                    body: Some(body.clone()),
                                },
                            );
                        }
                        results.push(EventResult {
                            id: e.id.clone(),
                            status: "accepted",
                            deliveries: n,
                        });
                    }
                    AcceptOutcome::Duplicate { .. } => results.push(EventResult {
                        id: e.id.clone(),
                        status: "duplicate",
                        deliveries: 0,
                    }),
                }
            }
            self.metrics
                .queue_depth
                .set(self.store.stats().pending as i64);
            Ok(results)
        })
    }
}
