//! Deliveries asked for again (a redeliver, a replay window, `spec.replay`) when replicas share
//! the log: any replica may be asked, but only the owner of the vehicle's partition may deliver,
//! and it may not even hold the event (it took the partition later). So the request itself
//! goes through the log: a *replay record* is the event again, published to the vehicle's
//! partition with the one target it is for. The partition's owner reads it in order with the
//! vehicle's other events and queues it like a delivery of a new event (or queues its stored
//! copy again). A record's `Nats-Msg-Id` names the request, so replicas carrying out the same
//! `spec.replay` at once publish each record once.
//!
//! The events to replay are read from the stream itself ([`JetStreamLog::scan`]): what a
//! replica's own store holds is only what it took.

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt;

use super::{JetStreamError, JetStreamLog, LoggedEvent, decode};
use crate::store::{AcceptOutcome, NewEvent};

/// One event to deliver again to one target.
#[derive(Debug, Clone)]
pub struct ReplayRecord {
    /// Names the request and the event: a record published twice with one id is stored once
    /// (within the stream's duplicate window).
    pub msg_id: String,
    pub event: LoggedEvent,
    /// The target's row (`kind/namespace/name/uid`).
    pub target: String,
}

impl JetStreamLog {
    /// Publishes replay records, in order (one vehicle's records stay in its partition's
    /// order); for each, whether it was stored now (`false`: the same record was already).
    pub async fn replay(&self, records: Vec<ReplayRecord>) -> Result<Vec<bool>, JetStreamError> {
        let mut stored = Vec::with_capacity(records.len());
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let window: Vec<ReplayRecord> = records.by_ref().take(super::WINDOW).collect();
            let accepted: Vec<u64> = window
                .iter()
                .map(|r| r.event.replay_of.unwrap_or(r.event.event.received_unix_ms))
                .collect();
            let window = window
                .into_iter()
                .map(|r| {
                    let event_type = r
                        .event
                        .event_type
                        .parse::<crate::api::EventType>()
                        .map_or("", crate::api::EventType::as_str);
                    (
                        r.msg_id,
                        NewEvent {
                            client: r.event.client,
                            id: r.event.event.id,
                            body: r.event.event.body,
                            lane: r.event.event.lane,
                            event_type,
                            targets: vec![r.target],
                        },
                    )
                })
                .collect();
            stored.extend(
                self.publish_window(window, Some(&accepted))
                    .await?
                    .into_iter()
                    .map(|o| matches!(o, AcceptOutcome::New { .. })),
            );
        }
        Ok(stored)
    }

    /// `client`'s events accepted from `since_ms` on that `keep` keeps, oldest first, until
    /// one accepted after `until_ms`, `limit + 1` of them (more than `limit`: the caller cuts
    /// there and knows where), or the end of the stream: what a replay or a redeliver selects
    /// from. Replay records are not events of their own and are left out.
    pub async fn scan(
        &self,
        client: &str,
        since_ms: u64,
        until_ms: u64,
        limit: usize,
        mut keep: impl FnMut(&LoggedEvent) -> bool,
    ) -> Result<Vec<LoggedEvent>, JetStreamError> {
        let mut out = Vec::new();
        let start =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let deliver = DeliverPolicy::ByStartTime { start_time: start };
        let Some(mut messages) = self.client_messages(client, deliver).await? else {
            return Ok(out);
        };
        loop {
            let message = match tokio::time::timeout(self.ack_timeout, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(JetStreamError::Info(e.into())),
                Ok(None) | Err(_) => return Err(JetStreamError::FeedStalled),
            };
            let info = message.info().map_err(JetStreamError::Info)?;
            let (seq, left, stored_ns) = (
                info.stream_sequence,
                info.pending,
                info.published.unix_timestamp_nanos(),
            );
            let headers = message.headers.clone().unwrap_or_default();
            match decode(
                seq,
                message.subject.as_str(),
                &headers,
                &message.payload,
                stored_ns,
            ) {
                Ok(e) if e.client == client && e.replay_of.is_none() => {
                    if e.event.received_unix_ms > until_ms {
                        break;
                    }
                    if keep(&e) {
                        out.push(e);
                        if out.len() > limit {
                            break;
                        }
                    }
                }
                // Another client sharing the token, a replay record, or unreadable.
                _ => {}
            }
            if left == 0 {
                break;
            }
        }
        Ok(out)
    }
}
