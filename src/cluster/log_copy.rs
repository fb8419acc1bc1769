//! A copy of each replica's delivery log in the stream `VC_ATTEMPTS`, one subject per replica
//! (`vc.attempts.<replica>`), so that the log outlives the replica's volume: a replica that
//! starts with an empty log (a new volume, its PersistentVolumeClaim deleted) puts its own
//! entries back from the stream, under the ids they had, before it delivers anything.
//!
//! The replica's own store stays where queries are answered (a query asks every replica over
//! `vc.manage.log`): the copy costs one publish per batch of entries, never one per attempt,
//! and is made from the store by a task of its own, so that delivery never waits on it.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::{self, stream};
use futures::StreamExt as _;

use crate::store::Store;

/// The stream of the copies.
pub const STREAM: &str = "VC_ATTEMPTS";
/// Entries per message at most.
const BATCH: usize = 512;
/// How often new entries are copied.
const COPY_EVERY: Duration = Duration::from_millis(500);
/// Longest wait for one message of a restore read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn subject(replica: &str) -> String {
    format!("vc.attempts.{replica}")
}

/// Creates (or updates) the stream: entries are kept as long as the log keeps them.
pub async fn open(
    context: &jetstream::Context,
    replicas: usize,
    retention: Duration,
) -> anyhow::Result<()> {
    context
        .get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            description: Some("vehicle-connect: each replica's delivery log".to_owned()),
            subjects: vec!["vc.attempts.*".to_owned()],
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            max_age: retention,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream {STREAM}: {e}"))?;
    Ok(())
}

/// `[id u64][len u32][bytes]…`, little-endian.
fn encode(rows: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(|(_, b)| b.len() + 12).sum());
    for (id, bytes) in rows {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn decode(mut data: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut rows = Vec::new();
    while !data.is_empty() {
        let (id, rest) = data.split_at_checked(8)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (bytes, rest) = rest.split_at_checked(len)?;
        rows.push((u64::from_le_bytes(id.try_into().ok()?), bytes.to_vec()));
        data = rest;
    }
    Some(rows)
}

/// The highest entry id copied for `replica` (0: none).
async fn last_copied(context: &jetstream::Context, replica: &str) -> anyhow::Result<u64> {
    let stream = context.get_stream(STREAM).await?;
    match stream
        .get_last_raw_message_by_subject(&subject(replica))
        .await
    {
        Ok(m) => Ok(decode(&m.payload)
            .and_then(|rows| rows.last().map(|(id, _)| *id))
            .unwrap_or(0)),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(anyhow::anyhow!(
            "reading the last copy of {replica}'s log: {e}"
        )),
    }
}

/// Puts back every copied entry of `replica` above `after`, oldest first, a batch at a time
/// (a log of a million entries is never held in memory); how many.
pub(super) async fn restore_above(
    context: &jetstream::Context,
    replica: &str,
    after: u64,
    store: &Store,
) -> anyhow::Result<usize> {
    let stream = context.get_stream(STREAM).await?;
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject(replica),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    if consumer.info().await?.num_pending == 0 {
        return Ok(0);
    }
    let mut messages = consumer.messages().await?;
    let mut restored = 0;
    loop {
        let message = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("no answer reading {STREAM} within {READ_TIMEOUT:?}"))?
            .ok_or_else(|| anyhow::anyhow!("{STREAM} ended while read"))??;
        let left = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.pending;
        match decode(&message.payload) {
            Some(batch) => {
                let rows: Vec<_> = batch.into_iter().filter(|(id, _)| *id > after).collect();
                if !rows.is_empty() {
                    restored += rows.len();
                    store.restore_attempts(rows).await?;
                }
            }
            None => tracing::warn!(
                replica,
                "a copied delivery log batch is unreadable; skipped"
            ),
        }
        if left == 0 {
            return Ok(restored);
        }
    }
}

/// Copies new entries of this replica's log until the process ends, from `copied` (what
/// [`restore`] answered) on.
pub async fn run(
    context: jetstream::Context,
    replica: String,
    store: Store,
    mut copied: u64,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let subject = subject(&replica);
    loop {
        tokio::time::sleep(COPY_EVERY).await;
        loop {
            let rows = match store.attempts_after(copied, BATCH) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the delivery log to copy it");
                    break;
                }
            };
            let Some(&(last, _)) = rows.last() else { break };
            let sent = async {
                context
                    .publish(subject.clone(), encode(&rows).into())
                    .await?
                    .await
            };
            if let Err(e) = sent.await {
                tracing::warn!(error = %e, "could not copy the delivery log to {STREAM}; again shortly");
                break;
            }
            copied = last;
            metrics.delivery_log_copied.inc_by(rows.len() as u64);
            if rows.len() < BATCH {
                break;
            }
        }
    }
}

/// Before this replica logs anything: puts back the entries the stream has of it above the
/// last one its store has (all of them on a new volume; none when the store is current), so
/// that new entries get ids above every copied one. The highest id the stream has of it.
pub async fn restore(
    context: &jetstream::Context,
    replica: &str,
    store: &Store,
) -> anyhow::Result<u64> {
    let copied = last_copied(context, replica).await?;
    let local = store.last_attempt_id()?;
    if copied <= local {
        // Entries the copy lacks (it expired, or was never made) are copied from where the
        // stream ends.
        return Ok(copied);
    }
    let n = restore_above(context, replica, local, store).await?;
    tracing::info!(entries = n, "delivery log restored from {STREAM}");
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_a_cut_one_is_refused() {
        let rows = vec![(7, b"abc".to_vec()), (9, Vec::new()), (12, vec![1; 300])];
        let bytes = encode(&rows);
        assert_eq!(decode(&bytes), Some(rows));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode(&[]), Some(Vec::new()));
    }
}
