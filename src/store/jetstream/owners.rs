//! Which replica owns which partition: one key per partition in the KV bucket [`BUCKET`],
//! taken with `create` (atomic: JetStream refuses a second create of a live key) and kept
//! with `update` at the revision its holder last wrote. The bucket's `max_age` is the lease
//! time: a key its holder stops renewing (killed, stalled, cut off) expires, and another
//! replica's `create` takes it.
//!
//! Fencing: a holder counts a partition as its own only until `ttl - margin` after it *sent*
//! the renewal that succeeded, measured on its own monotonic clock. The server wrote that
//! renewal at or after the send, so the key lives at least `ttl` beyond it: the old holder
//! stops (see [`Owners::owns`]) before the key can expire and be taken, even if it is frozen
//! (SIGSTOP) and wakes up late. Two owners of one partition at once would break per-vehicle
//! order; this gives up a margin of availability on every handover to rule that out.
//!
//! Balance: each replica also renews a `member.<id>` key. With n live members, the first
//! `partitions % n` of them by id hold ceil(partitions / n) partitions and the others the
//! floor, so the shares add up to every partition. A replica above its share releases the
//! rest (deletes them at its own revision), so one that joins gets its share within a
//! renewal or two.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use futures::TryStreamExt;
use tokio::time::Instant;

/// The KV bucket of partition owners and live members.
pub const BUCKET: &str = "vc-owners";
const MEMBER_PREFIX: &str = "member.";
const PARTITION_PREFIX: &str = "p.";

/// How ownership is kept.
#[derive(Debug, Clone)]
pub struct OwnersOptions {
    /// Partitions to share (the event log's).
    pub partitions: u32,
    /// How long a key outlives its last renewal: the longest a dead replica's partitions wait
    /// for a new owner.
    pub ttl: Duration,
    /// Replicas of the bucket (3 in a cluster).
    pub replicas: usize,
    /// How long a partition this replica gives up on purpose (above its share, or leaving)
    /// stays held while its reader finishes what it took and calls [`Owners::release`], so the
    /// next owner does not deliver those events again. Zero: released at once.
    pub drain: Duration,
}

impl Default for OwnersOptions {
    fn default() -> Self {
        OwnersOptions {
            partitions: super::DEFAULT_PARTITIONS,
            ttl: Duration::from_secs(10),
            replicas: 3,
            drain: Duration::ZERO,
        }
    }
}

impl OwnersOptions {
    /// How often [`Owners::run`] renews: four times per ttl, so one lost renewal (a slow
    /// answer, a NATS node changing leaders) costs nothing.
    pub fn period(&self) -> Duration {
        self.ttl / 4
    }

    /// Kept between a holder's own deadline and the key's expiry: covers the two clocks'
    /// drift and the time between deciding to deliver and the delivery.
    fn margin(&self) -> Duration {
        self.ttl / 5
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OwnersError {
    #[error("replica id {0:?} is not a valid key: use letters, digits, '-', '_' and '='")]
    BadId(String),
    #[error("creating or opening the KV bucket {BUCKET}: {0}")]
    Bucket(String),
    #[error("renewing membership in {BUCKET}: {0}")]
    Member(String),
    #[error("listing the members in {BUCKET}: {0}")]
    Members(String),
}

#[derive(Debug, Clone, Copy)]
struct Held {
    revision: u64,
    /// The revision of the `create` that took it: one per holding, so a replica that lost a
    /// partition and took it again tells the two apart.
    epoch: u64,
    /// Until when this replica may act as the owner (its own clock).
    valid_until: Instant,
}

/// One replica's view of its partitions. Cheap to clone.
#[derive(Clone)]
pub struct Owners {
    kv: kv::Store,
    me: String,
    /// Written as the value of held keys: the id plus this process's pid and start time, so
    /// that two processes given one id (a force-deleted pod still running, a copied config)
    /// never take each other's renewals for their own.
    token: bytes::Bytes,
    options: OwnersOptions,
    held: Arc<Mutex<BTreeMap<u32, Held>>>,
    /// The live members the last round listed (watched by whoever divides work by member).
    members: tokio::sync::watch::Sender<Vec<String>>,
    /// Partitions being handed over on purpose, since when (see [`OwnersOptions::drain`]).
    handover: Arc<Mutex<BTreeMap<u32, Instant>>>,
    /// Set by [`Owners::hand_over_all`]: a replica shutting down takes nothing new.
    leaving: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("me", &self.me)
            .field("owned", &self.owned())
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// Joins as replica `me` (the pod name, say), creating the bucket if it is missing.
    /// Owns nothing until the first [`Self::tick`].
    pub async fn join(
        context: &Context,
        me: &str,
        options: OwnersOptions,
    ) -> Result<Owners, OwnersError> {
        if me.is_empty()
            || !me
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        {
            return Err(OwnersError::BadId(me.to_owned()));
        }
        let config = kv::Config {
            bucket: BUCKET.to_owned(),
            description: "vehicle-connect: partition owners and live replicas".to_owned(),
            history: 1,
            max_age: options.ttl,
            num_replicas: options.replicas.max(1),
            ..Default::default()
        };
        let kv = context
            .create_or_update_key_value(config)
            .await
            .map_err(|e| OwnersError::Bucket(e.to_string()))?;
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok(Owners {
            kv,
            token: format!("{me} {} {started}", std::process::id()).into(),
            me: me.to_owned(),
            options,
            held: Arc::default(),
            members: tokio::sync::watch::Sender::new(Vec::new()),
            handover: Arc::default(),
            leaving: Arc::default(),
        })
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    /// The value this process's keys hold (id, pid, start time): what `kubectl`-side tools
    /// or a `nats kv get` show as the owner.
    pub fn token(&self) -> &[u8] {
        &self.token
    }

    /// Whether this replica may deliver from `partition` now. Checked before every
    /// attempt: cheap (a lock and a clock read), and false as soon as the renewal is late.
    pub fn owns(&self, partition: u32) -> bool {
        let now = Instant::now();
        self.lock()
            .get(&partition)
            .is_some_and(|h| now < h.valid_until)
    }

    /// The ids of the live replicas as the last round listed them (sorted; empty before the
    /// first round).
    pub fn members(&self) -> Vec<String> {
        self.members.borrow().clone()
    }

    /// The live members, seen again each time a round lists others than the last.
    pub fn watch_members(&self) -> tokio::sync::watch::Receiver<Vec<String>> {
        self.members.subscribe()
    }

    /// Which holding of `partition` this replica is in, while it may deliver from it: changes
    /// each time the partition is taken, so work of an earlier holding is told apart.
    pub fn epoch(&self, partition: u32) -> Option<u64> {
        let now = Instant::now();
        self.lock()
            .get(&partition)
            .filter(|h| now < h.valid_until)
            .map(|h| h.epoch)
    }

    /// The partitions this replica may deliver from now.
    pub fn owned(&self) -> Vec<u32> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, h)| now < h.valid_until)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Renews, balances and takes partitions every [`OwnersOptions::period`] until the task
    /// is dropped. Errors are logged and retried: a replica cut off from NATS simply stops
    /// owning once its deadlines pass.
    pub async fn run(self) {
        let mut every = tokio::time::interval(self.options.period());
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, replica = %self.me, "partition ownership round failed");
            }
        }
    }

    /// One round: renew membership and held partitions, release any above this replica's
    /// share, take free ones up to it. Public so tests can drive (and withhold) rounds.
    pub async fn tick(&self) -> Result<(), OwnersError> {
        let sent = Instant::now();
        // Renew what is held first: nothing below may keep a replica from keeping its own.
        // A key someone else now holds is dropped.
        let held: Vec<(u32, Held)> = self.lock().iter().map(|(p, h)| (*p, *h)).collect();
        for (p, h) in held {
            let sent = Instant::now();
            match self.renew(p, h.revision).await {
                Some(revision) => self.keep(p, revision, sent),
                None => {
                    self.lock().remove(&p);
                }
            }
        }
        self.kv
            .put(
                format!("{MEMBER_PREFIX}{}", self.me),
                self.me.clone().into(),
            )
            .await
            .map_err(|e| OwnersError::Member(e.to_string()))?;
        // Listing keys runs an ordered consumer, which can go silent for good when its NATS
        // node dies (see partition.rs): bounded, and this round ends without balancing.
        let members = tokio::time::timeout(self.options.period(), self.list_members())
            .await
            .map_err(|_| OwnersError::Members("no answer within a round".to_owned()))??;
        self.members.send_if_modified(|m| {
            let changed = *m != members;
            if changed {
                m.clone_from(&members);
            }
            changed
        });
        let partitions = self.options.partitions.max(1);
        let share = share(partitions, &members, &self.me);

        // Above the share (a replica joined): release the highest partitions.
        let extra: Vec<(u32, Held)> = {
            let held = self.lock();
            held.iter()
                .rev()
                .take(held.len().saturating_sub(share))
                .map(|(p, h)| (*p, *h))
                .collect()
        };
        {
            // Only partitions still held can be on their way out.
            let held = self
                .lock()
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>();
            self.handovers().retain(|p, _| held.contains(p));
        }
        for (p, _) in extra {
            let asked = *self.handovers().entry(p).or_insert_with(Instant::now);
            // Its reader releases it once drained; it goes anyway when that takes too long.
            if asked.elapsed() >= self.options.drain {
                self.release(p).await;
            }
        }

        // Below the share: take free partitions, starting at a place of this replica's own
        // so that replicas joining together do not all race for partition 0.
        let start = super::partition(&self.me, "", partitions);
        let leaving = self.leaving.load(std::sync::atomic::Ordering::Acquire);
        for i in (0..partitions).take_while(|_| !leaving) {
            if self.lock().len() >= share {
                break;
            }
            let p = (start + i) % partitions;
            if self.lock().contains_key(&p) {
                continue;
            }
            let sent = Instant::now();
            match self.kv.create(key(p), self.token.clone()).await {
                Ok(revision) => self.keep(p, revision, sent),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => tracing::debug!(error = %e, partition = p, "taking a partition failed"),
            }
        }
        tracing::trace!(replica = %self.me, members = members.len(), share, owned = ?self.owned(), sent = ?sent.elapsed(), "ownership round");
        Ok(())
    }

    /// Whether `partition` is being handed over: its reader should take nothing more from the
    /// log, finish what it took, move the floor and call [`Self::release`].
    pub fn handing_over(&self, partition: u32) -> bool {
        self.handovers().contains_key(&partition)
    }

    /// Asks every held partition to be handed over (a clean shutdown, before [`Self::leave`]).
    pub fn hand_over_all(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Release);
        let held: Vec<u32> = self.lock().keys().copied().collect();
        let mut handover = self.handovers();
        for p in held {
            handover.entry(p).or_insert_with(Instant::now);
        }
    }

    /// Gives `partition` up now: stops owning it, then frees its key (never a moment of two
    /// owners). A failed delete lets it expire instead.
    pub async fn release(&self, partition: u32) {
        self.handovers().remove(&partition);
        let Some(h) = self.lock().remove(&partition) else {
            return;
        };
        if let Err(e) = self
            .kv
            .delete_expect_revision(key(partition), Some(h.revision))
            .await
        {
            tracing::debug!(error = %e, partition, "releasing a partition failed; it expires instead");
        }
    }

    fn handovers(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Instant>> {
        self.handover.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives up every partition and the membership at once (a clean shutdown), so the others
    /// take over in their next round instead of after the ttl.
    pub async fn leave(&self) {
        let held: Vec<(u32, Held)> = std::mem::take(&mut *self.lock()).into_iter().collect();
        for (p, h) in held {
            let _ = self
                .kv
                .delete_expect_revision(key(p), Some(h.revision))
                .await;
        }
        let _ = self.kv.delete(format!("{MEMBER_PREFIX}{}", self.me)).await;
    }

    /// The revision after renewing `p`, or `None` if this replica no longer holds it.
    async fn renew(&self, p: u32, revision: u64) -> Option<u64> {
        match self.kv.update(key(p), self.token.clone(), revision).await {
            Ok(revision) => Some(revision),
            // An earlier renewal may have been written although its answer was lost: the key
            // is still ours if it holds our token, at a revision we did not see.
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                match self.kv.entry(key(p)).await {
                    Ok(Some(entry))
                        if entry.operation == kv::Operation::Put && entry.value == self.token =>
                    {
                        self.kv
                            .update(key(p), self.token.clone(), entry.revision)
                            .await
                            .ok()
                    }
                    _ => None,
                }
            }
            Err(e) => {
                // Unknown whether it was written: keep the old deadline (it runs out on its
                // own) and the revision; the next round finds out.
                tracing::debug!(error = %e, partition = p, "renewing a partition failed");
                self.lock().get(&p).map(|h| h.revision)
            }
        }
    }

    fn keep(&self, p: u32, revision: u64, sent: Instant) {
        let mut held = self.lock();
        let valid_until = sent + self.options.ttl.saturating_sub(self.options.margin());
        match held.get_mut(&p) {
            // A failed renewal answered with the old revision: the deadline stays.
            Some(h) if h.revision == revision => {}
            Some(h) => {
                h.revision = revision;
                h.valid_until = valid_until;
            }
            None => {
                held.insert(
                    p,
                    Held {
                        revision,
                        epoch: revision,
                        valid_until,
                    },
                );
            }
        }
    }

    /// The ids of the live members, sorted.
    async fn list_members(&self) -> Result<Vec<String>, OwnersError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| OwnersError::Members(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| OwnersError::Members(e.to_string()))?;
        let mut ids: Vec<String> = keys
            .iter()
            .filter_map(|k| k.strip_prefix(MEMBER_PREFIX))
            .map(str::to_owned)
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Held>> {
        // A panic elsewhere while holding it leaves plain data behind: keep using it.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How many partitions `me` should hold among `members` (sorted ids): the first
/// `partitions % n` hold one more than the rest. A replica not (yet) listed counts itself in.
fn share(partitions: u32, members: &[String], me: &str) -> usize {
    let mut ids: Vec<&str> = members.iter().map(String::as_str).collect();
    if let Err(at) = ids.binary_search(&me) {
        ids.insert(at, me);
    }
    let n = ids.len() as u32;
    let index = ids.binary_search(&me).unwrap_or(0) as u32;
    (partitions / n + u32::from(index < partitions % n)) as usize
}

fn key(partition: u32) -> String {
    format!("{PARTITION_PREFIX}{partition}")
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_add_up_to_every_partition() {
        for n in 1..=7usize {
            let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
            for partitions in [1u32, 5, 16, 64] {
                let total: usize = ids.iter().map(|me| share(partitions, &ids, me)).sum();
                assert_eq!(
                    total, partitions as usize,
                    "{n} members, {partitions} partitions"
                );
            }
        }
        // 16 over 3: 6, 5, 5 by id.
        let ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let got: Vec<usize> = ids.iter().map(|me| share(16, &ids, me)).collect();
        assert_eq!(got, [6, 5, 5]);
        // Not listed yet: counted in.
        assert_eq!(share(16, &ids[..1], "b"), 8);
    }
}
