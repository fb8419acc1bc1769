//! File-transfer session limits over every replica: the KV bucket [`BUCKET`] holds one key per
//! session slot, `<pool>.<i>` for `i` below the pool's `maxConnections`. A replica takes a
//! free one with `create` (atomic: a second create of a live key fails) before it opens a
//! session, renews it while the session is open, and deletes it when the session closes. The
//! bucket's `max_age` is the lease: a dead replica's slots free themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind};
use futures::future::BoxFuture;

use crate::delivery::files::{SessionSlots, SlotGuard};

/// The bucket of session slots.
pub const BUCKET: &str = "vc-slots";
/// How often a replica looks again while every slot of a pool is held elsewhere.
const RETRY: Duration = Duration::from_millis(200);
/// Failed creates in a row (not "taken") before a take gives up.
const ERRORS: usize = 5;

pub struct KvSlots {
    kv: kv::Store,
    /// The holder's id, written as the value (for whoever looks at the bucket).
    token: bytes::Bytes,
    ttl: Duration,
}

impl KvSlots {
    pub async fn open(
        context: &async_nats::jetstream::Context,
        me: &str,
        ttl: Duration,
        replicas: usize,
    ) -> anyhow::Result<KvSlots> {
        let kv = context
            .create_or_update_key_value(kv::Config {
                bucket: BUCKET.to_owned(),
                description: "vehicle-connect: file-transfer session slots".to_owned(),
                history: 1,
                max_age: ttl,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the KV bucket {BUCKET}: {e}"))?;
        Ok(KvSlots {
            kv,
            token: bytes::Bytes::from(format!("{me}/{}", std::process::id())),
            ttl,
        })
    }
}

/// A held slot: renewed until dropped, then deleted.
struct Held {
    renew: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // Stops the renewals; the task's `Release` then frees the slot now, not at the lease's
        // end.
        self.renew.abort();
    }
}

impl SessionSlots for KvSlots {
    fn take(&self, pool: String, max: usize) -> BoxFuture<'_, Result<SlotGuard, String>> {
        Box::pin(async move {
            let mut errors = 0;
            loop {
                for i in 0..max.max(1) {
                    let key = format!("{pool}.{i}");
                    match self.kv.create(&key, self.token.clone()).await {
                        Ok(revision) => return Ok(self.hold(key, revision)),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                        Err(e) => {
                            errors += 1;
                            if errors >= ERRORS {
                                return Err(e.to_string());
                            }
                        }
                    }
                }
                tokio::time::sleep(RETRY).await;
            }
        })
    }
}

impl KvSlots {
    fn hold(&self, key: String, revision: u64) -> SlotGuard {
        let (kv, token, every) = (self.kv.clone(), self.token.clone(), self.ttl / 4);
        let release = Release {
            kv: kv.clone(),
            key: key.clone(),
            revision: Arc::new(AtomicU64::new(revision)),
        };
        let renew = tokio::spawn(async move {
            // Dropped with the task, aborted or not: the key goes.
            let release = release;
            loop {
                tokio::time::sleep(every).await;
                let revision = release.revision.load(Ordering::Acquire);
                match kv.update(&key, token.clone(), revision).await {
                    Ok(r) => release.revision.store(r, Ordering::Release),
                    Err(e) => {
                        tracing::warn!(slot = %key, error = %e, "could not renew a session slot; it may be taken by another replica");
                        return;
                    }
                }
            }
        });
        Box::new(Held { renew })
    }
}

/// Deletes the slot's key when dropped (the renewal task ending, however it ends), at the
/// revision this replica last wrote: a slot that expired and was taken by another replica
/// meanwhile is left to it.
struct Release {
    kv: kv::Store,
    key: String,
    revision: Arc<AtomicU64>,
}

impl Drop for Release {
    fn drop(&mut self) {
        let (kv, key) = (self.kv.clone(), std::mem::take(&mut self.key));
        let revision = self.revision.load(Ordering::Acquire);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = kv.delete_expect_revision(&key, Some(revision)).await {
                    tracing::debug!(slot = %key, error = %e, "could not free a session slot; it expires with its lease");
                }
            });
        }
    }
}
