//! Reading one partition in order, and where its owner resumes. The owner of a partition
//! ([`super::owners`]) reads its events with an ordered consumer (ephemeral, one replica, in
//! stream order, re-created by the client on any gap) from just after the partition's
//! *floor*: the highest seq below which every event of the partition is finished. The floor
//! lives in the KV bucket [`FLOORS`] and only moves by compare-and-set from the revision its
//! writer read, so an owner that lost the partition (and whose successor has moved the floor
//! since) cannot move it: its write is refused as [`FloorError::Moved`].
//!
//! Why not a durable consumer's ack floor: a durable pull consumer redelivers an unacked
//! message only after its ack wait, while later messages flow to the new owner at once; a
//! handover would deliver a vehicle's events out of order. An ordered consumer started at the
//! floor replays the unfinished tail first, in order.

use async_nats::jetstream::consumer::DeliverPolicy;
use std::pin::Pin;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use futures::{Stream, StreamExt};

use super::{JetStreamError, JetStreamLog, LoggedEvent, partition_filter};

/// The KV bucket of partition floors: key `p.<k>`, value the floor seq in decimal.
pub const FLOORS: &str = "vc-floors";

/// A partition's floor as read: `seq` 0 means nothing finished yet; `revision` is what a
/// move must match (`None`: no floor written yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub seq: u64,
    revision: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    #[error("the floor of partition {partition} moved since it was read: another owner has it")]
    Moved { partition: u32 },
    #[error("floor of partition {partition}: {message}")]
    Kv { partition: u32, message: String },
    #[error("floor of partition {partition} is not a number: {value:?}")]
    Malformed { partition: u32, value: String },
}

/// The partition readers of one event log.
#[derive(Clone)]
pub struct Partitions {
    log: JetStreamLog,
    floors: kv::Store,
}

impl Partitions {
    /// Opens (or creates) the floors bucket beside `log`'s stream, with `replicas` replicas.
    pub async fn open(log: &JetStreamLog, replicas: usize) -> Result<Partitions, FloorError> {
        let floors = log
            .context
            .create_or_update_key_value(kv::Config {
                bucket: FLOORS.to_owned(),
                description: "vehicle-connect: where each partition's owner resumes".to_owned(),
                history: 1,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| FloorError::Kv {
                partition: 0,
                message: e.to_string(),
            })?;
        Ok(Partitions {
            log: log.clone(),
            floors,
        })
    }

    /// The floor of `partition` now.
    pub async fn floor(&self, partition: u32) -> Result<Floor, FloorError> {
        let kv_err = |e: &dyn std::fmt::Display| FloorError::Kv {
            partition,
            message: e.to_string(),
        };
        match self
            .floors
            .entry(key(partition))
            .await
            .map_err(|e| kv_err(&e))?
        {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let text = String::from_utf8_lossy(&entry.value);
                let seq = text.parse().map_err(|_| FloorError::Malformed {
                    partition,
                    value: text.to_string(),
                })?;
                Ok(Floor {
                    seq,
                    revision: Some(entry.revision),
                })
            }
            _ => Ok(Floor {
                seq: 0,
                revision: None,
            }),
        }
    }

    /// Moves the floor of `partition` from `from` (as this owner last read or wrote it) up
    /// to `to`. Never moves it down; refused if anyone else wrote it since.
    pub async fn advance(&self, partition: u32, from: Floor, to: u64) -> Result<Floor, FloorError> {
        if to <= from.seq {
            return Ok(from);
        }
        let value = to.to_string().into();
        let written = match from.revision {
            Some(revision) => self
                .floors
                .update(key(partition), value, revision)
                .await
                .map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => FloorError::Moved { partition },
                    _ => FloorError::Kv {
                        partition,
                        message: e.to_string(),
                    },
                }),
            None => self
                .floors
                .create(key(partition), value)
                .await
                .map_err(|e| match e.kind() {
                    CreateErrorKind::AlreadyExists => FloorError::Moved { partition },
                    _ => FloorError::Kv {
                        partition,
                        message: e.to_string(),
                    },
                }),
        }?;
        Ok(Floor {
            seq: to,
            revision: Some(written),
        })
    }

    /// The events of `partition` after `after`, in stream order, as they come (the stream
    /// waits for new ones). An item is an event, or an event that cannot be read (yielded, and
    /// reading goes on after it); losing the consumer (a NATS node gone) is mended inside.
    pub async fn read_after(
        &self,
        partition: u32,
        after: u64,
    ) -> Result<impl Stream<Item = Result<LoggedEvent, JetStreamError>> + use<>, JetStreamError>
    {
        let first = self.consumer(partition, after).await?;
        let reader = Reader {
            parts: self.clone(),
            partition,
            last: after,
            messages: Some(first),
        };
        Ok(futures::stream::unfold(reader, |mut r| async move {
            let item = r.next().await;
            Some((item, r))
        }))
    }

    /// An ordered consumer of `partition` from just after `after`.
    async fn consumer(
        &self,
        partition: u32,
        after: u64,
    ) -> Result<Pin<Box<Ordered>>, JetStreamError> {
        let consumer = self
            .log
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: partition_filter(partition),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| JetStreamError::Info(e.into()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| JetStreamError::Info(e.into()))?;
        Ok(Box::pin(messages))
    }
}

/// Silence after which a reader opens its consumer again from where it is. An ordered
/// consumer whose node died was seen to stop without an error and never deliver again (in
/// about half of the runs of the node-kill test); re-opening an idle one costs a consumer
/// create per partition every few seconds.
const IDLE_REOPEN: Duration = Duration::from_secs(3);

struct Reader {
    parts: Partitions,
    partition: u32,
    /// The highest seq yielded (or the start).
    last: u64,
    messages: Option<Pin<Box<Ordered>>>,
}

impl Reader {
    async fn next(&mut self) -> Result<LoggedEvent, JetStreamError> {
        loop {
            let messages = match &mut self.messages {
                Some(m) => m,
                None => match self.parts.consumer(self.partition, self.last).await {
                    Ok(m) => self.messages.insert(m),
                    Err(e) => {
                        tracing::debug!(error = %e, partition = self.partition, "opening a partition reader failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let message = match tokio::time::timeout(IDLE_REOPEN, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, partition = self.partition, "partition reader lost its consumer; re-opening");
                    self.messages = None;
                    continue;
                }
                Ok(None) | Err(_) => {
                    self.messages = None;
                    continue;
                }
            };
            let info = match message.info() {
                Ok(i) => i,
                Err(e) => return Err(JetStreamError::Info(e)),
            };
            let seq = info.stream_sequence;
            // A consumer re-created (by us, or by the client after a gap) may start earlier
            // than what was yielded: never repeat, never go back.
            if seq <= self.last {
                continue;
            }
            self.last = seq;
            let stored_ns = info.published.unix_timestamp_nanos();
            let headers = message.headers.clone().unwrap_or_default();
            return super::decode(
                seq,
                message.subject.as_str(),
                &headers,
                &message.payload,
                stored_ns,
            );
        }
    }
}

fn key(partition: u32) -> String {
    format!("p.{partition}")
}
