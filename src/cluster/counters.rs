//! Status counters added up over the replicas: one key per target in the KV bucket
//! `vc-counters` holding each replica's counters, updated by compare-and-set, so that any
//! replica writing a resource's status shows every replica's deliveries.
//!
//! Counts that only grow (delivered, failed, dropped, files, bytes) are summed over every
//! replica that ever wrote, a dead one included: its deliveries happened. What describes now
//! (pending, failures in a row, the oldest wait) comes from live replicas only, as a dead
//! one's pending deliveries were taken over by the others, which count them themselves.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::status::SharedCounters;
use crate::store::TargetCounters;
use crate::store::jetstream::owners::Owners;

/// The bucket of shared counters.
pub const BUCKET: &str = "vc-counters";
/// Compare-and-set rounds before a status write gives up (it is tried again later).
const ROUNDS: usize = 8;

/// One replica's part of a target's counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Part {
    counters: TargetCounters,
    oldest_pending_ms: Option<u64>,
}

pub struct KvCounters {
    kv: kv::Store,
    owners: Owners,
    /// The revision this replica last wrote per key: its own writes are not news to it.
    written: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    context: async_nats::jetstream::Context,
}

/// The bucket's last revision now (its stream's last sequence).
async fn last_revision(context: &async_nats::jetstream::Context) -> Option<u64> {
    let mut stream = context.get_stream(format!("KV_{BUCKET}")).await.ok()?;
    stream.info().await.ok().map(|i| i.state.last_sequence)
}

impl KvCounters {
    pub async fn open(
        context: &async_nats::jetstream::Context,
        owners: Owners,
        replicas: usize,
    ) -> anyhow::Result<KvCounters> {
        let kv = super::open_bucket(
            context,
            BUCKET,
            "vehicle-connect: delivery counters per target and replica",
            replicas,
        )
        .await?;
        Ok(KvCounters {
            kv,
            owners,
            written: Default::default(),
            context: context.clone(),
        })
    }

    async fn publish(&self, target: &str, mine: Part) -> anyhow::Result<BTreeMap<String, Part>> {
        let key = digest_key("t", target);
        for _ in 0..ROUNDS {
            let entry = self.kv.entry(&key).await?;
            let (mut parts, revision) = match entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<BTreeMap<String, Part>>(&e.value).unwrap_or_default(),
                    Some(e.revision),
                ),
                Some(e) => (BTreeMap::new(), Some(e.revision)),
                None => (BTreeMap::new(), None),
            };
            // Unchanged: no write, so that the replica writing the status (which watches the
            // bucket) is not woken for nothing.
            if parts.get(self.owners.id()) == Some(&mine) {
                return Ok(parts);
            }
            parts.insert(self.owners.id().to_owned(), mine.clone());
            let bytes: bytes::Bytes = serde_json::to_vec(&parts)?.into();
            let written = match revision {
                Some(r) => self
                    .kv
                    .update(&key, bytes, r)
                    .await
                    .map_err(|e| e.to_string()),
                None => self.kv.create(&key, bytes).await.map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => {
                    if let Ok(mut w) = self.written.lock() {
                        w.insert(key, revision);
                    }
                    return Ok(parts);
                }
                // Another replica wrote in between: read again.
                Err(e) => {
                    tracing::debug!(target, error = %e, "shared counters changed meanwhile; again")
                }
            }
        }
        anyhow::bail!("the shared counters of {target} kept changing under {ROUNDS} writes")
    }
}

/// `<prefix><first 16 bytes of SHA-256(text) in hex>`: a KV key token for any text (target
/// rows hold `/`, `:` and other characters keys refuse).
pub(super) fn digest_key(prefix: &str, text: &str) -> String {
    let digest = sha2::Sha256::digest(text);
    std::iter::once(format!("{prefix}."))
        .chain(digest[..16].iter().map(|b| format!("{b:02x}")))
        .collect()
}

/// The sum (see the module docs): `live` are the replicas whose present state counts.
fn add_up(
    parts: &BTreeMap<String, Part>,
    live: &[String],
    me: &str,
) -> (TargetCounters, Option<u64>) {
    let mut sum = TargetCounters::default();
    let mut oldest: Option<u64> = None;
    let mut last_at = 0;
    for (replica, part) in parts {
        let c = &part.counters;
        sum.delivered += c.delivered;
        sum.failed += c.failed;
        sum.dropped += c.dropped;
        sum.files += c.files;
        sum.bytes += c.bytes;
        if replica == me || live.iter().any(|l| l == replica) {
            sum.pending += c.pending;
            sum.consecutive_failures = sum.consecutive_failures.max(c.consecutive_failures);
            oldest = match (oldest, part.oldest_pending_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Some(d) = &c.last_delivery
            && sum.last_delivery.as_ref().is_none_or(|s| s.1 < d.1)
        {
            sum.last_delivery = Some(d.clone());
        }
        if let Some(f) = &c.last_failure
            && sum
                .last_failure
                .as_ref()
                .is_none_or(|s| s.at_unix_ms < f.at_unix_ms)
        {
            sum.last_failure = Some(f.clone());
        }
        // The last upload of the replica that delivered last.
        if let (Some(u), Some(d)) = (&c.last_upload, &c.last_delivery)
            && d.1 >= last_at
        {
            last_at = d.1;
            sum.last_upload = Some(u.clone());
        }
    }
    (sum, oldest)
}

/// How long one watch of the bucket runs before it is started again from where it got: an
/// ordered consumer can go silent for good when its NATS node dies (see partition.rs).
const WATCH_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl SharedCounters for KvCounters {
    fn key(&self, target: &str) -> String {
        digest_key("t", target)
    }

    fn changed(&self) -> futures::stream::BoxStream<'static, String> {
        let (kv, written) = (self.kv.clone(), self.written.clone());
        let context = self.context.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            use futures::StreamExt as _;
            // The revision after the last seen; none before the first is seen.
            let mut next: Option<u64> = None;
            loop {
                if next.is_none() {
                    next = last_revision(&context).await.map(|r| r + 1);
                }
                let watch = match next {
                    Some(r) => kv.watch_all_from_revision(r).await,
                    None => kv.watch_all().await,
                };
                let mut watch = match watch {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(bucket = BUCKET, error = %e, "could not watch the shared counters; again in 1 s");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
                let until = tokio::time::Instant::now() + WATCH_FOR;
                while let Ok(Some(entry)) = tokio::time::timeout_at(until, watch.next()).await {
                    let Ok(entry) = entry else { break };
                    next = Some(entry.revision + 1);
                    let mine = written
                        .lock()
                        .is_ok_and(|w| w.get(&entry.key) == Some(&entry.revision));
                    if !mine && tx.send(entry.key).await.is_err() {
                        return;
                    }
                }
            }
        });
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|k| (k, rx))
        }))
    }

    fn merge<'a>(
        &'a self,
        target: &'a str,
        mine: TargetCounters,
        oldest: Option<u64>,
    ) -> BoxFuture<'a, anyhow::Result<(TargetCounters, Option<u64>)>> {
        Box::pin(async move {
            let parts = self
                .publish(
                    target,
                    Part {
                        counters: mine,
                        oldest_pending_ms: oldest,
                    },
                )
                .await?;
            Ok(add_up(&parts, &self.owners.members(), self.owners.id()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(delivered: u64, pending: u64, oldest: Option<u64>, at: u64) -> Part {
        Part {
            counters: TargetCounters {
                delivered,
                pending,
                consecutive_failures: pending as u32,
                last_delivery: Some((format!("evt-{at}"), at, Some(200))),
                ..TargetCounters::default()
            },
            oldest_pending_ms: oldest,
        }
    }

    #[test]
    fn growing_counts_add_up_over_all_and_the_present_over_live_replicas() {
        let parts = BTreeMap::from([
            ("a".to_owned(), part(10, 2, Some(500), 100)),
            ("b".to_owned(), part(5, 1, Some(300), 300)),
            // Dead: its deliveries count, its pending ones were taken over.
            ("c".to_owned(), part(7, 9, Some(100), 200)),
        ]);
        let (sum, oldest) = add_up(&parts, &["b".to_owned()], "a");
        assert_eq!(sum.delivered, 22);
        assert_eq!(sum.pending, 3);
        assert_eq!(sum.consecutive_failures, 2);
        assert_eq!(oldest, Some(300));
        assert_eq!(sum.last_delivery.map(|d| d.0), Some("evt-300".to_owned()));
    }
}
