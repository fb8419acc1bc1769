//! The delivery logs of replicas gone for good (a StatefulSet scaled down, a replica id
//! retired): their entries stay in `VC_ATTEMPTS` for the log's retention, and one live replica
//! (the rendezvous choice among the members, so each gone log has one server) puts them into a
//! store of their own under the data directory and answers queries about them as the gone
//! replica would have. A replica absent for less than [`grace`] is only restarting (a
//! rollout): its log is not copied, so rollouts cost no reads of the stream.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::TryStreamExt as _;

use super::log_copy;
use crate::store::jetstream::owners::Owners;
use crate::store::{Store, StoreOptions};

/// How often the members and the stream's subjects are looked at again (and on every
/// change of the members).
const LOOK_EVERY: Duration = Duration::from_secs(10);
/// A gone log's store needs little cache: it is read by the odd query, never written.
const CACHE_BYTES: usize = 2 * 1024 * 1024;

/// How long a replica must be absent before its log is served by another: several leases, so
/// that a pod restarting in a rollout is never taken for gone.
pub fn grace(lease: Duration) -> Duration {
    lease * 6
}

/// The gone replicas' logs this replica serves, and every gone replica the stream knows of
/// (which a query must wait for an answer about). Cheap to clone.
#[derive(Clone, Default)]
pub struct Adopted {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    stores: BTreeMap<String, Store>,
    gone: Vec<String>,
}

impl std::fmt::Debug for Adopted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adopted")
            .field("gone", &self.gone())
            .finish()
    }
}

impl Adopted {
    /// The logs served here: (gone replica, its store).
    pub fn stores(&self) -> Vec<(String, Store)> {
        match self.inner.lock() {
            Ok(s) => s
                .stores
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Every gone replica whose log some live replica serves (or soon will).
    pub fn gone(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|s| s.gone.clone())
            .unwrap_or_default()
    }
}

/// A replica id as a directory name: only what pod names and NATS subject tokens share.
fn safe(replica: &str) -> bool {
    !replica.is_empty()
        && replica.len() <= 253
        && replica
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !replica.starts_with('-')
}

/// Keeps `adopted` current until the process ends: every gone replica's log is served by
/// one live replica, from a store under `dir` filled from the stream.
pub async fn run(
    context: jetstream::Context,
    owners: Owners,
    dir: PathBuf,
    lease: Duration,
    retention: Duration,
    adopted: Adopted,
) {
    let mut changes = owners.watch_members();
    // Since when each replica with a log in the stream has been missing from the members.
    let mut missing: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    // What an earlier run left is refilled from the stream: it may be stale.
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, dir = %dir.display(), "could not clear the gone replicas' logs");
    }
    loop {
        match logged_replicas(&context).await {
            Ok(logged) => {
                let members: BTreeSet<String> = owners.members().into_iter().collect();
                let now = tokio::time::Instant::now();
                missing.retain(|r, _| logged.contains(r) && !members.contains(r));
                for r in logged.iter().filter(|r| !members.contains(*r)) {
                    missing.entry(r.clone()).or_insert(now);
                }
                let gone: Vec<String> = missing
                    .iter()
                    .filter(|(r, since)| now.duration_since(**since) >= grace(lease) && safe(r))
                    .map(|(r, _)| r.clone())
                    .collect();
                // With no members known yet (start-up), nothing is adopted or dropped.
                if !members.is_empty() {
                    let list: Vec<String> = members.iter().cloned().collect();
                    let mine: BTreeSet<String> = gone
                        .iter()
                        .filter(|g| {
                            super::writers::writer_of(&list, &format!("log/{g}"))
                                == Some(owners.id())
                        })
                        .cloned()
                        .collect();
                    settle(&context, &dir, &adopted, &mine).await;
                    for (_, store) in adopted.stores() {
                        if let Err(e) = store.gc_attempts(retention, u64::MAX).await {
                            tracing::warn!(error = %e, "could not expire a gone replica's log");
                        }
                    }
                }
                if let Ok(mut s) = adopted.inner.lock() {
                    s.gone = gone;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not list the replicas' logs in {}", log_copy::STREAM)
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// The replicas with entries in the stream.
async fn logged_replicas(context: &jetstream::Context) -> anyhow::Result<BTreeSet<String>> {
    let stream = context.get_stream(log_copy::STREAM).await?;
    let mut subjects = stream.info_with_subjects("vc.attempts.*").await?;
    let mut out = BTreeSet::new();
    while let Some((subject, count)) = subjects.try_next().await? {
        if count > 0
            && let Some(r) = subject.strip_prefix("vc.attempts.")
        {
            out.insert(r.to_owned());
        }
    }
    Ok(out)
}

/// Drops the logs no longer this replica's to serve (their replica is back, or another
/// serves them now) and fills a store for each new one.
async fn settle(
    context: &jetstream::Context,
    dir: &std::path::Path,
    adopted: &Adopted,
    mine: &BTreeSet<String>,
) {
    let dropped: Vec<String> = match adopted.inner.lock() {
        Ok(mut s) => {
            let out: Vec<String> = s
                .stores
                .keys()
                .filter(|r| !mine.contains(*r))
                .cloned()
                .collect();
            for r in &out {
                s.stores.remove(r);
            }
            out
        }
        Err(_) => return,
    };
    for r in dropped {
        tracing::info!(replica = %r, "no longer serving a gone replica's delivery log here");
        let _ = std::fs::remove_dir_all(dir.join(&r));
    }
    let have: BTreeSet<String> = adopted.stores().into_iter().map(|(r, _)| r).collect();
    for r in mine.difference(&have) {
        match fill(context, &dir.join(r), r).await {
            Ok((store, n)) => {
                tracing::info!(replica = %r, entries = n, "serving a gone replica's delivery log here");
                if let Ok(mut s) = adopted.inner.lock() {
                    s.stores.insert(r.clone(), store);
                }
            }
            Err(e) => {
                tracing::warn!(replica = %r, error = %e, "could not read a gone replica's delivery log; trying again");
                let _ = std::fs::remove_dir_all(dir.join(r));
            }
        }
    }
}

/// A new store at `dir` holding every entry the stream has of `replica`.
async fn fill(
    context: &jetstream::Context,
    dir: &std::path::Path,
    replica: &str,
) -> anyhow::Result<(Store, usize)> {
    let _ = std::fs::remove_dir_all(dir);
    let store = Store::open(
        dir,
        StoreOptions {
            cache_bytes: CACHE_BYTES,
            ..StoreOptions::default()
        },
    )?;
    let n = log_copy::restore_above(context, replica, 0, &store).await?;
    Ok((store, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_replica_ids_become_directories() {
        assert!(safe("vehicle-connect-2"));
        assert!(safe("replica_b"));
        assert!(!safe(""));
        assert!(!safe(".."));
        assert!(!safe("a/b"));
        assert!(!safe("-rf"));
    }
}
