//! The delivery part of each resource's status (counters, last delivery and failure, the
//! `Delivering` condition), written under its own field manager by [`CounterWriter`], and the
//! Events that go with it.

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Check, DELIVERING, Tri, find, gone_annotation, now, redact, transitioned};

/// Field manager of the delivery counters (delivered, failed, pending, last*).
pub const DELIVERY_MANAGER: &str = "vehicle-connect-delivery";
/// Set by the operator when a receiver answers 410 Gone (see [`gone_annotation`]): it keeps
/// the hold across restarts. A spec change (a later generation) or removing it resumes.
pub const RECEIVER_GONE_ANNOTATION: &str = "connect.vehicles.io/receiver-gone";

/// Status writes of delivery counters per second, over all resources, unless
/// `--status-writes-per-second` says otherwise. Each write costs the API server a patch and a
/// watch event to every watcher (about 7 ms of API server and etcd CPU, measured); with 1,000
/// busy subscriptions an unbounded writer made the API server the busiest process on the
/// node. Resources take turns (least recently written first), so each is current within
/// `dirty / budget` seconds.
pub const STATUS_WRITES_PER_SECOND: usize = 25;
/// Status writes in flight at once.
const STATUS_WRITE_CONCURRENCY: usize = 8;

/// Resources whose counters changed, in the order they are due to be written.
#[derive(Default)]
struct Dirty {
    order: std::collections::VecDeque<crate::routing::TargetKey>,
    queued: std::collections::HashSet<crate::routing::TargetKey>,
}

impl Dirty {
    /// A key already waiting keeps its turn; one written since goes to the back.
    fn push(&mut self, key: &crate::routing::TargetKey) {
        if self.queued.insert(key.clone()) {
            self.order.push_back(key.clone());
        }
    }

    /// The next `n` keys due.
    fn take(&mut self, n: usize) -> Vec<crate::routing::TargetKey> {
        let n = n.min(self.order.len());
        let due: Vec<_> = self.order.drain(..n).collect();
        for k in &due {
            self.queued.remove(k);
        }
        due
    }
}

/// Publishes delivery counters on the resources' status, at most about once a second per
/// resource and its budget ([`STATUS_WRITES_PER_SECOND`] by default) in all however high the
/// delivery rate, plus
/// Events for failures and suspension.
pub struct CounterWriter {
    /// Status writes per second over all resources.
    budget: usize,
    client: kube::Client,
    store: crate::store::Store,
    registry: std::sync::Arc<crate::routing::Registry>,
    recorder: kube::runtime::events::Recorder,
    dirty: std::sync::Mutex<Dirty>,
    gone: std::sync::Mutex<std::collections::BTreeSet<crate::routing::TargetKey>>,
    /// Events to publish at the next flush (bounded).
    notices: std::sync::Mutex<Vec<(crate::routing::TargetKey, Check)>>,
    policy: DeliveringPolicy,
    /// The `Delivering` condition last written per target: its transition time is kept while
    /// it holds, and an Event marks each transition (never each failure).
    delivering: std::sync::Mutex<std::collections::HashMap<crate::routing::TargetKey, Condition>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The platform's operational webhook (`--ops-webhook-url`), told of each transition.
    ops: std::sync::OnceLock<std::sync::Arc<super::ops::OpsWebhook>>,
    /// Where replicas sharing the work add up their counters (`--store nats://…`), and
    /// which of them writes each resource's status.
    shared: std::sync::OnceLock<(
        std::sync::Arc<dyn SharedCounters>,
        std::sync::Arc<dyn super::StatusWriters>,
    )>,
    /// The sum and oldest wait the last write of each shared target saw, while something
    /// waited: the wait of another replica's backlog grows with time alone.
    merged_waiting: std::sync::Mutex<
        std::collections::HashMap<crate::routing::TargetKey, (crate::store::TargetCounters, u64)>,
    >,
    /// Which target a shared counters key belongs to (see [`SharedCounters::key`]).
    shared_keys: std::sync::Mutex<std::collections::HashMap<String, crate::routing::TargetKey>>,
}

/// Counters of one target over every replica that delivers to it: each replica publishes its
/// own and reads the sum, so a resource's status counts every replica's deliveries.
pub trait SharedCounters: Send + Sync {
    /// Publishes this replica's `mine` (and the time its oldest pending delivery waits since)
    /// for `target`; answers the counters of all replicas added up, and the oldest wait of
    /// the live ones.
    fn merge<'a>(
        &'a self,
        target: &'a str,
        mine: crate::store::TargetCounters,
        oldest: Option<u64>,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<(crate::store::TargetCounters, Option<u64>)>>;
    /// The key `target`'s counters are kept under.
    fn key(&self, target: &str) -> String;
    /// Keys whose counters another replica changed, as they change (never ends: a lost watch
    /// is started again where it stopped).
    fn changed(&self) -> futures::stream::BoxStream<'static, String>;
}

/// When delivery counts as unhealthy (`Delivering=False`).
#[derive(Clone, Copy, Debug)]
pub struct DeliveringPolicy {
    /// Failed attempts in a row.
    pub failures: u32,
    /// Age of the oldest pending event (not counted while the target is suspended).
    pub max_wait: std::time::Duration,
}

impl Default for DeliveringPolicy {
    fn default() -> Self {
        DeliveringPolicy {
            failures: 5,
            max_wait: std::time::Duration::from_secs(900),
        }
    }
}

impl DeliveringPolicy {
    /// The `Delivering` check for `c`. `oldest_ms`: when the oldest pending event arrived,
    /// `None` when nothing waits or the wait is what the user asked for (suspended).
    pub fn check(
        &self,
        c: &crate::store::TargetCounters,
        oldest_ms: Option<u64>,
        now_ms: u64,
    ) -> Check {
        if c.consecutive_failures >= self.failures.max(1) {
            let last = c
                .last_failure
                .as_ref()
                .map(|f| format!("; last: {}: {}", f.why.reason, f.why.message))
                .unwrap_or_default();
            return Check::fail(
                "DeliveryFailing",
                format!("the last {} attempts failed{last}", c.consecutive_failures),
            );
        }
        let waited = oldest_ms.map(|ms| now_ms.saturating_sub(ms) / 1000);
        if let Some(secs) = waited.filter(|s| *s >= self.max_wait.as_secs()) {
            return Check::fail(
                "DeliveryDelayed",
                format!(
                    "the oldest of {} pending events has waited {secs} s (threshold {} s)",
                    c.pending,
                    self.max_wait.as_secs()
                ),
            );
        }
        match &c.last_delivery {
            Some((id, ms, _)) => Check::ok(
                "Delivered",
                format!(
                    "last delivered event {id} at {}",
                    Timestamp::from_millisecond(*ms as i64).unwrap_or(Timestamp::UNIX_EPOCH)
                ),
            ),
            None => Check::unknown("NoDeliveries", "nothing delivered yet"),
        }
    }
}

/// The delivery part of a WebhookSubscription's status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookDelivery {
    delivered: u64,
    failed: u64,
    pending: u64,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_delivery: Option<crate::api::DeliveryRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failure: Option<crate::api::FailureRecord>,
}

/// The delivery part of an FtpConnection's status.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FtpDelivery {
    uploaded: u64,
    files: u64,
    bytes: u64,
    failed: u64,
    pending: u64,
    consecutive_failures: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_upload: Option<crate::api::DeliveryRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_failure: Option<crate::api::FailureRecord>,
}

/// A kind whose status carries delivery counters, written by the [`CounterWriter`] (its own
/// field manager, beside the reconciler's conditions).
pub trait Delivers:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
    /// The typed delivery part of the status, from the store's counters.
    fn delivery(c: &crate::store::TargetCounters) -> impl Serialize;
}

fn last_delivery(c: &crate::store::TargetCounters) -> Option<crate::api::DeliveryRecord> {
    c.last_delivery
        .clone()
        .map(|(id, ms, code)| crate::api::DeliveryRecord {
            event_id: id,
            event_type: None,
            time: time_of_ms(ms),
            status_code: code,
            vin: None,
            files: None,
        })
}

fn last_failure(c: &crate::store::TargetCounters) -> Option<crate::api::FailureRecord> {
    c.last_failure.clone().map(|f| crate::api::FailureRecord {
        event_id: f.event_id,
        time: time_of_ms(f.at_unix_ms),
        reason: f.why.reason,
        message: redact(&f.why.message),
    })
}

impl Delivers for crate::api::WebhookSubscription {
    fn delivery(c: &crate::store::TargetCounters) -> impl Serialize {
        WebhookDelivery {
            delivered: c.delivered,
            failed: c.failed,
            pending: c.pending,
            consecutive_failures: c.consecutive_failures,
            last_delivery: last_delivery(c),
            last_failure: last_failure(c),
        }
    }
}

/// Same shape as a WebhookSubscription's: events whose whole chain succeeded.
impl Delivers for crate::api::ApiConnection {
    fn delivery(c: &crate::store::TargetCounters) -> impl Serialize {
        crate::api::WebhookSubscription::delivery(c)
    }
}

impl Delivers for crate::api::FtpConnection {
    fn delivery(c: &crate::store::TargetCounters) -> impl Serialize {
        FtpDelivery {
            uploaded: c.delivered,
            files: c.files,
            bytes: c.bytes,
            failed: c.failed,
            pending: c.pending,
            consecutive_failures: c.consecutive_failures,
            last_upload: last_delivery(c).map(|d| crate::api::DeliveryRecord {
                vin: c.last_upload.as_ref().and_then(|(vin, _)| vin.clone()),
                files: c.last_upload.as_ref().map(|(_, f)| *f),
                ..d
            }),
            last_failure: last_failure(c),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn time_of_ms(ms: u64) -> Time {
    Time(Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl CounterWriter {
    pub fn new(
        client: kube::Client,
        store: crate::store::Store,
        registry: std::sync::Arc<crate::routing::Registry>,
        policy: DeliveringPolicy,
        budget: usize,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> std::sync::Arc<Self> {
        let reporter = kube::runtime::events::Reporter {
            controller: "vehicle-connect".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        std::sync::Arc::new(CounterWriter {
            budget: budget.max(1),
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            store,
            registry,
            dirty: Default::default(),
            gone: Default::default(),
            notices: Default::default(),
            policy,
            delivering: Default::default(),
            metrics,
            ops: Default::default(),
            shared: Default::default(),
            shared_keys: Default::default(),
            merged_waiting: Default::default(),
        })
    }

    /// Adds every replica's counters up in each status write from now on, and writes only
    /// the statuses `writers` gives this replica (set once, before [`Self::run`]).
    pub fn set_shared(
        &self,
        shared: std::sync::Arc<dyn SharedCounters>,
        writers: std::sync::Arc<dyn super::StatusWriters>,
    ) {
        let _ = self.shared.set((shared, writers));
    }

    fn writes(&self, key: &crate::routing::TargetKey) -> bool {
        super::writes(self.shared.get().map(|(_, w)| w), key)
    }

    /// The registered target whose shared counters are kept under `shared_key`.
    fn target_of(
        &self,
        shared: &dyn SharedCounters,
        shared_key: &str,
    ) -> Option<crate::routing::TargetKey> {
        let mut keys = self.shared_keys.lock().ok()?;
        if let Some(k) = keys.get(shared_key) {
            return Some(k.clone());
        }
        // Rebuilt on a miss: targets come and go, and a rebuild is a hash per target.
        keys.clear();
        for key in self.registry.keys() {
            if let Some(t) = self.registry.get(&key) {
                keys.insert(shared.key(&t.id().to_string()), key);
            }
        }
        keys.get(shared_key).cloned()
    }

    /// Tells `ops` of every transition from now on (set once, at start-up).
    pub fn set_ops(&self, ops: std::sync::Arc<super::ops::OpsWebhook>) {
        let _ = self.ops.set(ops);
    }

    fn signal(
        &self,
        type_: super::ops::SignalType,
        key: &crate::routing::TargetKey,
        check: &Check,
    ) {
        if let Some(ops) = self.ops.get() {
            ops.signal(type_, key, check);
        }
    }

    /// The target's counters changed.
    pub fn touch(&self, key: &crate::routing::TargetKey) {
        if let Ok(mut d) = self.dirty.lock() {
            d.push(key);
        }
    }

    /// A delivery was given up. Not an Event of its own: `Delivering` turning False is one
    /// (a storm of failures must not become a storm of Events); `lastFailure` names it.
    pub fn failure(&self, key: &crate::routing::TargetKey) {
        self.touch(key);
    }

    /// Something the resource's Events should tell (events expired undelivered); its counters
    /// changed too.
    pub fn notice(&self, key: &crate::routing::TargetKey, check: Check) {
        if let Ok(mut n) = self.notices.lock()
            && n.len() < 100
        {
            n.push((key.clone(), check));
        }
        self.touch(key);
    }

    /// The receiver answered 410 Gone: hold the target now, persist it as an annotation.
    pub fn receiver_gone(&self, key: &crate::routing::TargetKey) {
        self.registry.hold(key, "ReceiverGone");
        if let Ok(mut g) = self.gone.lock() {
            g.insert(key.clone());
        }
    }

    /// Flushes once a second until the process ends; every few seconds also looks at the
    /// targets with a backlog, whose `Delivering` can change with time alone.
    pub async fn run(self: std::sync::Arc<Self>) {
        if let Some((shared, writers)) = self.shared.get() {
            tokio::spawn(self.clone().follow(shared.clone(), writers.clone()));
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            if n.is_multiple_of(5) {
                self.recheck_waiting();
            }
            self.flush().await;
        }
    }

    /// With replicas: writes the statuses this replica writes again when another replica's
    /// counters change, and all of them when replicas join or leave (the resources a replica
    /// writes move then, and the new writer may not have seen the last change).
    async fn follow(
        self: std::sync::Arc<Self>,
        shared: std::sync::Arc<dyn SharedCounters>,
        writers: std::sync::Arc<dyn super::StatusWriters>,
    ) {
        let mut members = writers.changes();
        let mut changed = shared.changed();
        loop {
            tokio::select! {
                moved = members.changed() => {
                    if moved.is_err() {
                        return;
                    }
                    for key in self.registry.keys() {
                        if writers.writes(&key) {
                            self.touch(&key);
                        }
                    }
                }
                key = changed.next() => {
                    let Some(key) = key else { return };
                    if let Some(target) = self.target_of(shared.as_ref(), &key)
                        && writers.writes(&target)
                    {
                        self.touch(&target);
                    }
                }
            }
        }
    }

    /// Marks due the targets with pending events whose `Delivering` would read otherwise now
    /// (a backlog that has waited past the threshold): reads only, a write only on change.
    fn recheck_waiting(&self) {
        let rows = match self.store.pending_targets() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not list pending targets");
                return;
            }
        };
        let now = now_ms();
        for id in rows
            .iter()
            .filter_map(|r| r.parse::<crate::routing::TargetId>().ok())
        {
            let Some(target) = self.registry.get(&id.key).filter(|t| id.is(t)) else {
                continue;
            };
            let row = target.id().to_string();
            let (Ok(c), Ok(oldest)) = (
                self.store.counters(&row),
                self.store.oldest_pending_ms(&row),
            ) else {
                continue;
            };
            let oldest = oldest.filter(|_| target.held.as_deref() != Some("Suspended"));
            self.touch_if_changed(&id.key, &c, oldest, now);
        }
        // Backlogs of other replicas, as the last shared write saw them.
        let merged: Vec<_> = self
            .merged_waiting
            .lock()
            .map(|mut w| {
                w.retain(|k, _| self.registry.get(k).is_some());
                w.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            })
            .unwrap_or_default();
        for (key, (c, oldest)) in merged {
            self.touch_if_changed(&key, &c, Some(oldest), now);
        }
    }

    /// Marks `key` due if its `Delivering` would read otherwise than last written.
    fn touch_if_changed(
        &self,
        key: &crate::routing::TargetKey,
        c: &crate::store::TargetCounters,
        oldest: Option<u64>,
        now: u64,
    ) {
        let check = self.policy.check(c, oldest, now);
        let changed = self.delivering.lock().is_ok_and(|d| {
            d.get(key)
                .is_none_or(|o| o.status != check.status.as_str() || o.reason != check.reason)
        });
        if changed {
            self.touch(key);
        }
    }

    pub async fn flush(&self) {
        let gone: Vec<_> = self
            .gone
            .lock()
            .map(|mut g| std::mem::take(&mut *g).into_iter().collect())
            .unwrap_or_default();
        for key in gone {
            self.mark_gone(&key).await;
        }
        let notices: Vec<_> = self
            .notices
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default();
        for (key, check) in notices {
            self.publish(&key, &check).await;
        }
        let due: Vec<_> = self
            .dirty
            .lock()
            .map(|mut d| d.take(self.budget))
            .unwrap_or_default();
        futures::stream::iter(due)
            .for_each_concurrent(STATUS_WRITE_CONCURRENCY, |key| async move {
                if let Err(e) = self.write(&key).await {
                    tracing::warn!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, error = %e, "could not write delivery status");
                }
            })
            .await;
    }

    async fn write(&self, key: &crate::routing::TargetKey) -> anyhow::Result<()> {
        // Counters are kept per object (uid); an unregistered target has none to show.
        let Some(target) = self.registry.get(key) else {
            return Ok(());
        };
        let id = target.id().to_string();
        let c = self.store.counters(&id)?;
        // A suspended target's backlog waits because the user asked it to.
        let oldest = match target.held.as_deref() {
            Some("Suspended") => None,
            _ => self.store.oldest_pending_ms(&id)?,
        };
        let (c, oldest) = match self.shared.get() {
            Some((shared, _)) => shared.merge(&id, c, oldest).await?,
            None => (c, oldest),
        };
        // Another replica writes this status: it has this replica's part now.
        if !self.writes(key) {
            return Ok(());
        }
        if self.shared.get().is_some()
            && let Ok(mut w) = self.merged_waiting.lock()
        {
            match oldest {
                Some(ms) => w.insert(key.clone(), (c.clone(), ms)),
                None => w.remove(key),
            };
        }
        let check = self.policy.check(&c, oldest, now_ms());
        let previous = self
            .delivering
            .lock()
            .ok()
            .and_then(|d| d.get(key).cloned());
        let cond = check.to_condition(DELIVERING, Some(target.generation), previous.as_slice());
        let res = match key.kind {
            crate::routing::Kind::Webhook => {
                self.patch_delivery::<crate::api::WebhookSubscription>(
                    key,
                    &c,
                    &cond,
                    previous.is_none(),
                )
                .await
            }
            crate::routing::Kind::Ftp => {
                self.patch_delivery::<crate::api::FtpConnection>(key, &c, &cond, previous.is_none())
                    .await
            }
            crate::routing::Kind::Api => {
                self.patch_delivery::<crate::api::ApiConnection>(key, &c, &cond, previous.is_none())
                    .await
            }
        };
        self.metrics.status_written("delivery");
        let (old, cond) = match res {
            // Deleted meanwhile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            other => other?,
        };
        let before = previous.or(old);
        self.metrics.delivering(key, &cond.status);
        if let Ok(mut d) = self.delivering.lock() {
            d.insert(key.clone(), cond.clone());
        }
        // One Event per transition: into trouble (Warning), or out of it (Normal).
        let into_trouble = check.status == Tri::False;
        let recovered =
            check.status == Tri::True && before.as_ref().is_some_and(|b| b.status == "False");
        if (into_trouble || recovered) && transitioned(before.as_slice(), &cond) {
            use super::ops::SignalType;
            let signal = match check.reason.as_str() {
                _ if recovered => SignalType::Recovered,
                "DeliveryDelayed" => SignalType::DeliveryDelayed,
                _ => SignalType::DeliveryFailing,
            };
            self.signal(signal, key, &check);
            self.publish(key, &check).await;
        }
        Ok(())
    }

    /// Server-side applies the delivery part of `K`'s status with its `Delivering`
    /// condition. With `read_first` (the first write of this process), the condition on the
    /// object is read before, so its transition time survives a restart; it is returned.
    async fn patch_delivery<K: Delivers>(
        &self,
        key: &crate::routing::TargetKey,
        c: &crate::store::TargetCounters,
        cond: &Condition,
        read_first: bool,
    ) -> kube::Result<(Option<Condition>, Condition)> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &key.namespace);
        let mut cond = cond.clone();
        let mut old = None;
        if read_first {
            let obj = api.get_status(&key.name).await?;
            let conditions: Vec<Condition> = serde_json::to_value(&obj)
                .ok()
                .and_then(|v| v.pointer("/status/conditions").cloned())
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
            old = find(&conditions, DELIVERING).cloned();
            if let Some(o) = old.as_ref().filter(|o| o.status == cond.status) {
                cond.last_transition_time = o.last_transition_time.clone();
            }
        }
        let mut status = serde_json::to_value(K::delivery(c)).unwrap_or_default();
        if let Some(m) = status.as_object_mut() {
            m.insert(
                "conditions".into(),
                serde_json::to_value([&cond]).unwrap_or_default(),
            );
        }
        let body = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": status,
        });
        let pp = PatchParams::apply(DELIVERY_MANAGER).force();
        api.patch_status(&key.name, &pp, &Patch::Apply(&body))
            .await
            .map(|_| (old, cond))
    }

    async fn mark_gone(&self, key: &crate::routing::TargetKey) {
        let when = now();
        let generation = self
            .registry
            .get(key)
            .map(|t| t.generation)
            .unwrap_or_default();
        let patch = serde_json::json!({ "metadata": { "annotations": { RECEIVER_GONE_ANNOTATION: gone_annotation(&when, generation) } } });
        let res = match key.kind {
            crate::routing::Kind::Webhook => {
                let api: Api<crate::api::WebhookSubscription> =
                    Api::namespaced(self.client.clone(), &key.namespace);
                api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            crate::routing::Kind::Ftp | crate::routing::Kind::Api => Ok(()),
        };
        if let Err(e) = res {
            tracing::warn!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, error = %e, "could not mark the subscription as suspended");
        }
        let check = Check::fail(
            "ReceiverGone",
            "the receiver answered 410 Gone; delivery is suspended and events are kept; change the spec (e.g. spec.resumeAfterGone) to resume",
        );
        self.signal(super::ops::SignalType::Gone, key, &check);
        self.publish(key, &check).await;
    }

    async fn publish(&self, key: &crate::routing::TargetKey, check: &Check) {
        let (api_version, kind) = match key.kind {
            crate::routing::Kind::Webhook => (
                crate::api::WebhookSubscription::api_version(&()).to_string(),
                crate::api::WebhookSubscription::kind(&()).to_string(),
            ),
            crate::routing::Kind::Ftp => (
                crate::api::FtpConnection::api_version(&()).to_string(),
                crate::api::FtpConnection::kind(&()).to_string(),
            ),
            crate::routing::Kind::Api => (
                crate::api::ApiConnection::api_version(&()).to_string(),
                crate::api::ApiConnection::kind(&()).to_string(),
            ),
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(api_version),
            kind: Some(kind),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: self.registry.get(key).map(|t| t.uid.clone()),
            ..Default::default()
        };
        let ev = kube::runtime::events::Event {
            type_: if check.status == Tri::True {
                kube::runtime::events::EventType::Normal
            } else {
                kube::runtime::events::EventType::Warning
            },
            reason: check.reason.clone(),
            note: Some(check.message.chars().take(1000).collect()),
            action: "Deliver".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_resources_take_turns_for_status_writes() {
        let key = |i: usize| crate::routing::TargetKey {
            kind: crate::routing::Kind::Webhook,
            namespace: "ns".into(),
            name: format!("w{i}"),
        };
        let mut d = Dirty::default();
        for i in 0..5 {
            d.push(&key(i));
        }
        // Touched again while waiting: keeps its turn, written once.
        d.push(&key(0));
        assert_eq!(d.take(2), vec![key(0), key(1)]);
        // Written and touched again: behind everyone still waiting.
        d.push(&key(0));
        assert_eq!(d.take(10), vec![key(2), key(3), key(4), key(0)]);
        assert!(d.take(10).is_empty());
    }

    #[test]
    fn delivering_reads_failures_in_a_row_and_the_oldest_wait() {
        let p = DeliveringPolicy {
            failures: 3,
            max_wait: std::time::Duration::from_secs(60),
        };
        let mut c = crate::store::TargetCounters::default();
        assert_eq!(p.check(&c, None, 0).reason, "NoDeliveries");
        c.last_delivery = Some(("e1".into(), 1_000, Some(200)));
        assert_eq!(p.check(&c, None, 2_000).status, Tri::True);
        c.consecutive_failures = 2;
        assert_eq!(
            p.check(&c, Some(1_000), 30_000).reason,
            "Delivered",
            "below both thresholds"
        );
        assert_eq!(p.check(&c, Some(1_000), 61_000).reason, "DeliveryDelayed");
        c.consecutive_failures = 3;
        let failing = p.check(&c, Some(1_000), 2_000);
        assert_eq!(
            (failing.status, failing.reason.as_str()),
            (Tri::False, "DeliveryFailing")
        );
    }
}
