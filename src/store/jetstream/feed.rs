//! The pull feed on the JetStream log: one client's events after a cursor, read from the
//! stream itself, so every replica serves the same feed in the order the events were
//! accepted. A client's events are on `vc.events.*.<client token>`; a read is one ordered
//! consumer on that filter from the cursor, and a long-poll waits on a plain subscription to
//! the same subjects (JetStream's stored messages reach it too), so nothing polls.

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;

use super::{H_CLIENT, H_REPLAY_OF, H_TYPE, JetStreamError, JetStreamLog, client_filter, unescape};
use crate::store::{FeedCursor, FeedEvent, FeedPage, FeedQuery};

impl JetStreamLog {
    /// A page of `q.client`'s events after `q.after`, in stream order; the meaning of
    /// [`crate::store::Store::feed`]. `truncated` when the cursor is another stream's, or
    /// when the stream no longer holds every event after it (retention by age or size).
    pub async fn feed(&self, q: &FeedQuery) -> Result<FeedPage, JetStreamError> {
        let (start, foreign) = match q.after {
            None => (0, false),
            Some(c) if c.store() != self.feed_id => (0, true),
            Some(c) => (c.seq(), false),
        };
        let mut page = FeedPage {
            events: Vec::new(),
            next: FeedCursor::new(self.feed_id, start),
            truncated: foreign,
            more: false,
        };
        if start == u64::MAX {
            return Ok(page);
        }
        let info = self.info().await?;
        if q.after.is_some() && !foreign && start + 1 < info.state.first_sequence {
            // Whether any of the removed ones were this client's is not known: say so.
            page.truncated = true;
        }
        let deliver = if start == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: start + 1,
            }
        };
        let Some(mut messages) = self.client_messages(&q.client, deliver).await? else {
            return Ok(page);
        };
        let (mut scanned, mut bytes) = (0usize, 0usize);
        loop {
            if q.is_full(page.events.len(), scanned, bytes) {
                page.more = true;
                break;
            }
            let message = match tokio::time::timeout(self.ack_timeout, messages.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(JetStreamError::Info(e.into())),
                // The events counted as pending were all there when the read began.
                Ok(None) | Err(_) => return Err(JetStreamError::FeedStalled),
            };
            let info = message.info().map_err(JetStreamError::Info)?;
            let (seq, left) = (info.stream_sequence, info.pending);
            scanned += 1;
            page.next = FeedCursor::new(self.feed_id, seq);
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .and_then(|v| unescape(v.as_str()))
            };
            // Another client sharing the token, a replay record (the event again, for one
            // target: not a new event), or a type not asked for.
            let mine = header(H_CLIENT).as_deref() == Some(q.client.as_str())
                && header(H_REPLAY_OF).is_none();
            let wanted = q.types.is_empty() || header(H_TYPE).is_some_and(|t| q.types.contains(&t));
            if mine && wanted {
                bytes += message.payload.len();
                page.events.push(FeedEvent {
                    seq,
                    body: message.payload.to_vec(),
                });
            }
            if left == 0 {
                break;
            }
        }
        Ok(page)
    }

    /// An ordered read of `client`'s subjects from `deliver` on; `None` when there is nothing
    /// to read (an ordered consumer would wait for the next message).
    pub(super) async fn client_messages(
        &self,
        client: &str,
        deliver: DeliverPolicy,
    ) -> Result<Option<async_nats::jetstream::consumer::pull::Ordered>, JetStreamError> {
        let mut consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subject: client_filter(client),
                deliver_policy: deliver,
                ..Default::default()
            })
            .await
            .map_err(|e| JetStreamError::Info(e.into()))?;
        let pending = consumer
            .info()
            .await
            .map_err(|e| JetStreamError::Info(e.into()))?
            .num_pending;
        if pending == 0 {
            return Ok(None);
        }
        consumer
            .messages()
            .await
            .map(Some)
            .map_err(|e| JetStreamError::Info(e.into()))
    }

    /// A subscription that receives every new event of `client` (and of clients sharing its
    /// token) as it is stored: what a long-poll waits on.
    pub async fn feed_subscription(
        &self,
        client: &str,
    ) -> Result<async_nats::Subscriber, JetStreamError> {
        self.context
            .client()
            .subscribe(client_filter(client))
            .await
            .map_err(|e| JetStreamError::Info(e.into()))
    }

    /// How long a long-poll may wait between reads at most, in case a wake-up was missed (a
    /// reconnect drops what was published meanwhile).
    pub const FEED_RECHECK: Duration = Duration::from_secs(5);
}
