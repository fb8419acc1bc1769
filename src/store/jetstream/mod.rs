//! The event log on NATS JetStream: the optional second backend for accepted events
//! (`--store nats://…`), for running several replicas with no single point of failure; ingest
//! writes to it and each partition's owner reads it (`crate::cluster`).
//!
//! Layout: one stream, [`STREAM`], on the subjects `vc.events.<partition>.<client token>`
//! (so one client's events can be read over all partitions: the pull feed), file storage,
//! R3 in a cluster. An event goes to the partition [`partition()`] gives its (client, vehicle):
//! one vehicle's events stay in one partition, in order, and each partition has one owner at a
//! time ([`owners`]). Its body is the message payload, byte for byte; what the operator needs besides
//! (client, id, lane, type, targets) travels in headers.
//!
//! Durability: [`JetStreamLog::accept`] answers `Ok` only after the PubAck, which the stream
//! leader sends once a quorum of replicas has stored the message. Without a quorum (2 of 3
//! nodes down or stalled) no PubAck comes and the accept fails after
//! [`JetStreamOptions::ack_timeout`]; it never claims an event it could not make durable.
//!
//! Dedupe: each message carries `Nats-Msg-Id: <client>/<id>` ([`crate::store::dedupe_key`]),
//! and JetStream answers a repeat within the stream's duplicate window as a duplicate with the
//! sequence of the original. **Limit:** that window ([`JetStreamOptions::duplicate_window`],
//! 2 hours by default) is all there is: the same (client, id) sent again after it is stored
//! again. The embedded store dedupes for as long as it keeps the event (the retention); a
//! dedupe that holds as long on JetStream needs an index of its own (a KV bucket keyed by the
//! dedupe key, say) and is not built yet.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, RawMessageError, RawMessageErrorKind, StorageType,
};
use async_nats::jetstream::{self as js, Context};
use bytes::Bytes;
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use tokio::sync::Semaphore;

mod feed;
pub mod owners;
pub mod partition;
pub mod replay;

use super::{AcceptOutcome, NewEvent, StoredEvent, dedupe_key};

/// The stream holding every accepted event.
pub const STREAM: &str = "VC_EVENTS";
/// Events are published to `<SUBJECT_PREFIX>.<partition>.<client token>`.
pub const SUBJECT_PREFIX: &str = "vc.events";
/// Partitions when none are configured.
pub const DEFAULT_PARTITIONS: u32 = 16;

// Header names of what an event carries besides its body.
const H_CLIENT: &str = "Vc-Client";
const H_ID: &str = "Vc-Event-Id";
const H_LANE: &str = "Vc-Lane";
const H_TYPE: &str = "Vc-Event-Type";
const H_TARGETS: &str = "Vc-Targets";
/// On a replay record (see [`JetStreamLog::replay`]): when the original was accepted (unix ms).
const H_REPLAY_OF: &str = "Vc-Replay-Of";
const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Escaped in header values: a CR or LF would end the header (async-nats panics on them),
/// the NATS parser trims spaces, `,` separates targets, `%` is the escape itself.
const HEADER_ESCAPE: &AsciiSet = &CONTROLS.add(b'%').add(b' ').add(b',');

/// The partition of a (client, vehicle) among `partitions` (0 is taken as 1): FNV-1a over
/// both, so every process and every version of the operator agrees on it. The vehicle is the
/// event's lane ([`NewEvent::lane`]).
pub fn partition(client: &str, vehicle: &str, partitions: u32) -> u32 {
    let mut h = fnv::FnvHasher::default();
    h.write(client.as_bytes());
    // A separator that cannot occur in UTF-8 keeps ("ab", "c") apart from ("a", "bc").
    h.write(&[0xff]);
    h.write(vehicle.as_bytes());
    // The remainder is below `partitions`, so it fits in a u32.
    (h.finish() % u64::from(partitions.max(1))) as u32
}

/// A client's token in subjects: FNV-1a of the client id, in hex, so any id fits a subject
/// token. Two clients may share one; readers check the `Vc-Client` header.
pub fn client_token(client: &str) -> String {
    let mut h = fnv::FnvHasher::default();
    h.write(client.as_bytes());
    format!("{:016x}", h.finish())
}

/// The subject of a client's event in a partition: `vc.events.<partition>.<client token>`.
pub fn subject(partition: u32, client: &str) -> String {
    format!("{SUBJECT_PREFIX}.{partition}.{}", client_token(client))
}

/// Every event of a partition.
pub fn partition_filter(partition: u32) -> String {
    format!("{SUBJECT_PREFIX}.{partition}.*")
}

/// Every event of a client (and of any client sharing its token), over all partitions.
pub fn client_filter(client: &str) -> String {
    format!("{SUBJECT_PREFIX}.*.{}", client_token(client))
}

/// How to reach NATS and how the stream is configured.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// A NATS credentials file (JWT and NKey seed), e.g. from a Secret.
    pub credentials_file: Option<PathBuf>,
    /// CA bundle that signs the servers' certificates (PEM); setting any TLS file requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS: both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Replicas of the stream: 3 in a cluster (a quorum of 2 acknowledges), 1 on one node.
    pub replicas: usize,
    /// Events older than this are removed by JetStream (`max_age`); zero keeps them forever.
    pub max_age: Duration,
    /// Most bytes the stream keeps; the oldest events go first. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// How long a (client, id) is remembered for dedupe; capped at `max_age` (JetStream
    /// refuses a longer window). See the module docs for the limit this sets.
    pub duplicate_window: Duration,
    /// Partitions events are spread over (by client and vehicle).
    pub partitions: u32,
    /// How long an accept waits for each PubAck (and any JetStream API call for its answer).
    pub ack_timeout: Duration,
    /// How long connecting, and creating the stream while JetStream elects its leaders, may
    /// take.
    pub connect_timeout: Duration,
}

impl Default for JetStreamOptions {
    fn default() -> Self {
        JetStreamOptions {
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            replicas: 3,
            // The embedded store's default retention (--retention-hours 168).
            max_age: Duration::from_secs(168 * 3600),
            max_bytes: None,
            duplicate_window: Duration::from_secs(2 * 3600),
            partitions: DEFAULT_PARTITIONS,
            ack_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(20),
        }
    }
}

impl JetStreamOptions {
    /// The defaults for one NATS server: one replica.
    pub fn single_node() -> Self {
        JetStreamOptions {
            replicas: 1,
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("no NATS server URL given")]
    NoUrls,
    #[error("reading the NATS credentials file {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a NATS TLS client certificate needs both a certificate and a key file")]
    TlsPair,
    #[error("connecting to NATS at {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("creating or updating the JetStream stream {STREAM}: {source}")]
    Stream {
        #[source]
        source: CreateStreamError,
    },
    /// No PubAck in time: a quorum of the stream's replicas is not reachable (or JetStream is
    /// electing a leader). The event may or may not be stored; it is not acknowledged, and
    /// sending it again is answered as a duplicate if it was.
    #[error(
        "event {key}: JetStream did not acknowledge it within {after:?}, so it is not durable \
         (is a quorum of the {STREAM} stream's replicas reachable?)"
    )]
    AckTimeout { key: String, after: Duration },
    /// Nothing answered on the event's subject: the stream is gone, or (for a few seconds
    /// after a node is lost) its replicas are electing a new leader. Nothing was stored.
    #[error(
        "event {key}: no {STREAM} stream leader answered on {subject} (leader election after \
         a lost node, or the stream was deleted); not stored"
    )]
    NoLeader { key: String, subject: String },
    #[error("event {key}: publishing to JetStream failed: {source}")]
    Publish {
        key: String,
        #[source]
        source: PublishError,
    },
    #[error("event {key}: {what} cannot be sent as a NATS header: {source}")]
    Header {
        key: String,
        what: &'static str,
        #[source]
        source: async_nats::header::ParseHeaderValueError,
    },
    #[error("the JetStream event log is closed")]
    Closed,
    #[error("reading event {seq} from JetStream: {source}")]
    Read {
        seq: u64,
        #[source]
        source: RawMessageError,
    },
    #[error("message {seq} of the {STREAM} stream is not an event: {what}")]
    Malformed { seq: u64, what: String },
    #[error("the {STREAM} stream elected no leader within the connect timeout")]
    NoStreamLeader,
    #[error("reading the {STREAM} stream's state: {0}")]
    Info(#[source] async_nats::Error),
    #[error("reading a client's feed from the {STREAM} stream stalled; retry")]
    FeedStalled,
}

/// An event read back from the log: what [`StoredEvent`] holds, and what the embedded store
/// keeps in its other tables (client, type, targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// `seq` is the stream sequence; `received_unix_ms` the time JetStream stored it.
    pub event: StoredEvent,
    pub client: String,
    pub event_type: String,
    pub targets: Vec<String>,
    /// The partition it was published to.
    pub partition: u32,
    /// A replay record: the event again, for the one target in `targets`, asked for through
    /// the management API or `spec.replay`; when the original was accepted (unix ms).
    pub replay_of: Option<u64>,
}

/// Events one accept publishes before it awaits their acks.
const WINDOW: usize = 256;
/// Acks awaited at once over all accepts (async-nats' own bound is set to the same).
const MAX_INFLIGHT: usize = 16 * WINDOW;

/// Where an accepted event's answer comes from.
#[derive(Clone, Copy)]
enum Slot {
    /// The k-th published event's ack.
    Published(usize),
    /// The answer of the j-th event of the batch, which has the same (client, id).
    RepeatOf(usize),
}

/// The event log on one JetStream stream. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct JetStreamLog {
    context: Context,
    stream: stream::Stream<()>,
    /// What feed cursors carry as their store id.
    feed_id: u64,
    partitions: u32,
    ack_timeout: Duration,
    /// Ack slots: a window takes all of its own at once (see `publish_window`).
    inflight: Arc<Semaphore>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl JetStreamLog {
    /// Connects to the NATS servers in `urls` (comma-separated, `nats://host:port` or
    /// `tls://…`; any one reachable will do) and creates [`STREAM`], or updates it to
    /// `options` if it exists.
    pub async fn connect(urls: &str, options: &JetStreamOptions) -> Result<Self, JetStreamError> {
        let addrs: Vec<&str> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(JetStreamError::NoUrls);
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name("vehicle-connect")
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.ack_timeout));
        if let Some(path) = &options.credentials_file {
            connect = connect.credentials_file(path).await.map_err(|source| {
                JetStreamError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        let mut tls = false;
        if let Some(ca) = &options.tls_ca_file {
            connect = connect.add_root_certificates(ca.clone());
            tls = true;
        }
        match (&options.tls_cert_file, &options.tls_key_file) {
            (Some(cert), Some(key)) => {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
                tls = true;
            }
            (None, None) => {}
            _ => return Err(JetStreamError::TlsPair),
        }
        if tls {
            connect = connect.require_tls(true);
        }
        let client = connect
            .connect(addrs)
            .await
            .map_err(|source| JetStreamError::Connect {
                urls: urls.to_owned(),
                source,
            })?;
        let context = js::ContextBuilder::new()
            .timeout(options.ack_timeout)
            .ack_timeout(options.ack_timeout)
            .max_ack_inflight(MAX_INFLIGHT)
            .build(client);

        let config = stream_config(options);
        // Just after a cluster forms, or while it elects a meta leader, JetStream answers
        // "unavailable" or times out for a few seconds: keep trying until connect_timeout.
        let deadline = tokio::time::Instant::now() + options.connect_timeout;
        loop {
            match context.create_or_update_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() < deadline && transient(&e) => {
                    tracing::debug!(error = %e, "JetStream stream not ready yet, retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(source) => return Err(JetStreamError::Stream { source }),
            }
        }
        let stream = context
            .get_stream_no_info(STREAM)
            .await
            .map_err(|e| JetStreamError::Info(e.into()))?;
        // A stream just created has no leader for a moment, and an accept then finds "no
        // responders": ready means the stream can take an event now.
        let created = loop {
            match stream.get_info().await {
                Ok(info) if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => {
                    break info.created;
                }
                Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(_) => return Err(JetStreamError::NoStreamLeader),
                Err(e) => return Err(JetStreamError::Info(e.into())),
            }
        };
        // The stream's creation time names it in feed cursors: a cursor of a stream that was
        // deleted and created again is recognised as another's.
        let mut h = fnv::FnvHasher::default();
        h.write(&created.unix_timestamp_nanos().to_be_bytes());
        Ok(JetStreamLog {
            context,
            stream,
            feed_id: h.finish(),
            partitions: options.partitions.max(1),
            ack_timeout: options.ack_timeout,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The JetStream context (one connection) the log uses, for the buckets beside it
    /// ([`owners::Owners`]).
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// Accepts events as [`crate::store::Store::accept`] does: `New` with the stream sequence
    /// once JetStream acknowledged it (stored on a quorum), `Duplicate` with the original's
    /// sequence when (client, id) was accepted before within the duplicate window, in the
    /// order given. The events are published back to back and their acks awaited together, in
    /// windows of 256.
    ///
    /// Unlike the embedded store, a batch is not atomic: on `Err` some of its events may be
    /// stored. Sending the batch again is safe (those are answered as duplicates), which is
    /// what ingest's 503 asks the client to do.
    pub async fn accept(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<AcceptOutcome>, JetStreamError> {
        // A (client, id) twice in one batch: the later ones take the first one's answer
        // (JetStream would refuse a repeat whose original is still being replicated).
        let mut first: HashMap<String, usize> = HashMap::new();
        let mut slots = Vec::with_capacity(events.len());
        let mut unique = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let key = dedupe_key(&event.client, &event.id);
            match first.get(&key) {
                Some(&j) => slots.push(Slot::RepeatOf(j)),
                None => {
                    first.insert(key.clone(), i);
                    slots.push(Slot::Published(unique.len()));
                    unique.push((key, event));
                }
            }
        }

        let mut published = Vec::with_capacity(unique.len());
        let mut unique = unique.into_iter().peekable();
        while unique.peek().is_some() {
            let window: Vec<_> = unique.by_ref().take(WINDOW).collect();
            published.extend(self.publish_window(window, None).await?);
        }

        let mut outcomes: Vec<AcceptOutcome> = Vec::with_capacity(slots.len());
        for slot in slots {
            outcomes.push(match slot {
                Slot::Published(k) => published[k],
                Slot::RepeatOf(j) => AcceptOutcome::Duplicate {
                    seq: outcomes[j].seq(),
                },
            });
        }
        Ok(outcomes)
    }

    /// Publishes up to [`WINDOW`] events back to back, then awaits their acks together. The
    /// window's ack slots are taken at once, so concurrent accepts never hold part of what
    /// each other waits for.
    async fn publish_window(
        &self,
        window: Vec<(String, NewEvent)>,
        replay_of: Option<&[u64]>,
    ) -> Result<Vec<AcceptOutcome>, JetStreamError> {
        // The window holds at most WINDOW events, far below u32::MAX.
        let _permits = self
            .inflight
            .acquire_many(window.len() as u32)
            .await
            .map_err(|_| JetStreamError::Closed)?;
        let mut acks = Vec::with_capacity(window.len());
        for (i, (key, event)) in window.into_iter().enumerate() {
            let subject = subject(
                partition(&event.client, &event.lane, self.partitions),
                &event.client,
            );
            let message = publish_message(&key, event, replay_of.and_then(|r| r.get(i).copied()))?;
            let ack = self
                .context
                .send_publish(subject.clone(), message.clone())
                .await
                .map_err(|source| self.publish_error(&key, &subject, source))?;
            acks.push((key, subject, message, ack));
        }
        let answers = futures::future::join_all(acks.into_iter().map(
            |(key, subject, message, ack)| async move {
                let mut answer = ack.await;
                // "No responders": no stream took the message (a node that has not yet learnt
                // a new stream's subjects, or a leader election). Nothing was stored, so it
                // is published again until the ack timeout (Nats-Msg-Id dedupes it anyway).
                let deadline = tokio::time::Instant::now() + self.ack_timeout;
                while matches!(&answer, Err(e) if e.kind() == PublishErrorKind::StreamNotFound)
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    answer = match self
                        .context
                        .send_publish(subject.clone(), message.clone())
                        .await
                    {
                        Ok(ack) => ack.await,
                        Err(e) => Err(e),
                    };
                }
                (answer, key, subject)
            },
        ))
        .await;
        answers
            .into_iter()
            .map(|(answer, key, subject)| {
                let ack = answer.map_err(|source| self.publish_error(&key, &subject, source))?;
                Ok(if ack.duplicate {
                    AcceptOutcome::Duplicate { seq: ack.sequence }
                } else {
                    AcceptOutcome::New { seq: ack.sequence }
                })
            })
            .collect()
    }

    /// The event at stream sequence `seq`, read from the stream leader (so an accepted event is
    /// always seen); `None` if there is none (never stored, or removed by age or size).
    pub async fn event(&self, seq: u64) -> Result<Option<LoggedEvent>, JetStreamError> {
        let message = match self.stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(source) => return Err(JetStreamError::Read { seq, source }),
        };
        decode(
            message.sequence,
            message.subject.as_str(),
            &message.headers,
            &message.payload,
            message.time.unix_timestamp_nanos(),
        )
        .map(Some)
    }

    /// The stream's state as JetStream reports it (messages, first and last sequence, ...) and
    /// its cluster (leader, replicas).
    pub async fn info(&self) -> Result<stream::Info, JetStreamError> {
        self.stream
            .get_info()
            .await
            .map_err(|e| JetStreamError::Info(e.into()))
    }

    fn publish_error(&self, key: &str, subject: &str, source: PublishError) -> JetStreamError {
        let key = key.to_owned();
        match source.kind() {
            PublishErrorKind::TimedOut => JetStreamError::AckTimeout {
                key,
                after: self.ack_timeout,
            },
            // async-nats' name for "no responders": nobody serves the subject right now.
            PublishErrorKind::StreamNotFound => JetStreamError::NoLeader {
                key,
                subject: subject.to_owned(),
            },
            _ => JetStreamError::Publish { key, source },
        }
    }
}

/// Whether creating the stream failed only because the cluster is not settled yet (no meta
/// leader, peers still joining); a wrong configuration fails at once.
fn transient(e: &CreateStreamError) -> bool {
    match e.kind() {
        CreateStreamErrorKind::JetStreamUnavailable | CreateStreamErrorKind::TimedOut => true,
        CreateStreamErrorKind::JetStream(e) => [
            ErrorCode::CLUSTER_NOT_AVAILABLE,
            ErrorCode::CLUSTER_NO_PEERS,
            ErrorCode::INSUFFICIENT_RESOURCES,
            ErrorCode::CLUSTER_INCOMPLETE,
            ErrorCode::CLUSTER_NOT_ACTIVE,
            ErrorCode::CLUSTER_NOT_LEADER,
        ]
        .contains(&e.error_code()),
        _ => false,
    }
}

fn stream_config(options: &JetStreamOptions) -> stream::Config {
    let duplicate_window = if options.max_age.is_zero() {
        options.duplicate_window
    } else {
        options.duplicate_window.min(options.max_age)
    };
    stream::Config {
        name: STREAM.to_owned(),
        description: Some("vehicle-connect: accepted events".to_owned()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: StorageType::File,
        num_replicas: options.replicas.max(1),
        duplicate_window,
        max_age: options.max_age,
        max_bytes: options
            .max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        discard: DiscardPolicy::Old,
        ..Default::default()
    }
}

fn publish_message(
    key: &str,
    event: NewEvent,
    replay_of: Option<u64>,
) -> Result<PublishMessage, JetStreamError> {
    let mut headers = HeaderMap::new();
    let targets: Vec<String> = event.targets.iter().map(|t| escape(t)).collect();
    if let Some(ms) = replay_of {
        headers.insert(H_REPLAY_OF, ms.to_string().as_str());
    }
    for (name, what, value) in [
        (NATS_MSG_ID, "the dedupe key", escape(key)),
        (H_CLIENT, "the client", escape(&event.client)),
        (H_ID, "the event id", escape(&event.id)),
        (H_LANE, "the lane", escape(&event.lane)),
        (H_TYPE, "the event type", escape(event.event_type)),
        (H_TARGETS, "the targets", targets.join(",")),
    ] {
        let value: async_nats::HeaderValue =
            value.parse().map_err(|source| JetStreamError::Header {
                key: key.to_owned(),
                what,
                source,
            })?;
        headers.insert(name, value);
    }
    Ok(PublishMessage::build()
        .payload(Bytes::from(event.body))
        .headers(headers))
}

fn escape(value: &str) -> String {
    utf8_percent_encode(value, HEADER_ESCAPE).to_string()
}

fn unescape(value: &str) -> Option<String> {
    percent_decode_str(value)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// An event from a stream message's parts (the direct get and the partition readers).
pub(crate) fn decode(
    seq: u64,
    subject: &str,
    headers: &HeaderMap,
    payload: &[u8],
    stored_ns: i128,
) -> Result<LoggedEvent, JetStreamError> {
    let raw_header = |name: &'static str| -> Result<&str, JetStreamError> {
        headers
            .get(name)
            .map(|v| v.as_str())
            .ok_or_else(|| JetStreamError::Malformed {
                seq,
                what: format!("no {name} header"),
            })
    };
    let header = |name: &'static str| -> Result<String, JetStreamError> {
        unescape(raw_header(name)?).ok_or_else(|| JetStreamError::Malformed {
            seq,
            what: format!("{name} is not UTF-8 once unescaped"),
        })
    };
    // Split before unescaping: a target's own commas are escaped.
    let targets = raw_header(H_TARGETS)?;
    let targets = if targets.is_empty() {
        Vec::new()
    } else {
        targets
            .split(',')
            .map(|t| {
                unescape(t).ok_or_else(|| JetStreamError::Malformed {
                    seq,
                    what: format!("{H_TARGETS} is not UTF-8 once unescaped"),
                })
            })
            .collect::<Result<_, _>>()?
    };
    let partition = subject
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|p| p.strip_prefix('.'))
        .and_then(|p| p.split('.').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| JetStreamError::Malformed {
            seq,
            what: format!("subject {subject} is not {SUBJECT_PREFIX}.<n>.<client>"),
        })?;
    Ok(LoggedEvent {
        event: StoredEvent {
            seq,
            id: header(H_ID)?,
            lane: header(H_LANE)?,
            received_unix_ms: u64::try_from(stored_ns / 1_000_000).unwrap_or(0),
            body: payload.to_vec(),
        },
        client: header(H_CLIENT)?,
        event_type: header(H_TYPE)?,
        targets,
        partition,
        replay_of: headers
            .get(H_REPLAY_OF)
            .and_then(|v| v.as_str().parse().ok()),
    })
}
