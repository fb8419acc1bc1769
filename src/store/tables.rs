//! Table layout of the store file. Changing a key or value type here changes the file format:
//! bump [`SCHEMA_VERSION`] with it.

use redb::TableDefinition;

use super::{StoreError, TargetCounters};

/// Version of this layout, kept in `meta` so that an incompatible file is refused, not misread.
/// 2 added the per-client feed index ([`CLIENT_EVENTS`], [`FEED_GONE`]); a version 1 file is
/// migrated on open (`feed::migrate_v1`).
pub(super) const SCHEMA_VERSION: u64 = 2;
/// The layout before the feed index: read and migrated, never written.
pub(super) const SCHEMA_V1: u64 = 1;

/// `meta`: `schema` → [`SCHEMA_VERSION`]; `next_seq` → the next sequence number to hand out;
/// `store_id` → a random number fixed when the file is created (or migrated), carried in feed
/// cursors so that a cursor of another store (a reset volume) is recognised;
/// `feed_indexed_to` → the last seq the v1 migration indexed, only while it runs.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const META_SCHEMA: &str = "schema";
pub(super) const META_NEXT_SEQ: &str = "next_seq";
pub(super) const META_STORE_ID: &str = "store_id";
pub(super) const META_FEED_INDEXED_TO: &str = "feed_indexed_to";

/// `events`: seq → (dedupe key, lane, received unix ms, body as received). The dedupe key is
/// `client/id` ([`super::dedupe_key`]); rows written before clients were part of it hold the
/// bare id, which still dedupes (and is gc'd) under that key.
pub(super) const EVENTS: TableDefinition<u64, (&str, &str, u64, &[u8])> =
    TableDefinition::new("events");

/// `client_events`: (clientId, seq) → event type; one row per stored event, written and removed
/// with it, so one client's feed is a range read (never a scan of every client's events).
pub(super) const CLIENT_EVENTS: TableDefinition<(&str, u64), &str> =
    TableDefinition::new("client_events");

/// `feed_gone`: clientId → the highest seq of that client's events gc removed. The key `""`
/// (never a clientId) holds the highest seq removed whose client is unknown (before the index
/// existed): it counts for every client. A feed cursor below it has missed events.
pub(super) const FEED_GONE: TableDefinition<&str, u64> = TableDefinition::new("feed_gone");

/// `event_ids`: dedupe key → seq; the dedupe index.
pub(super) const EVENT_IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");

/// `pending`: (target, seq) → (event id, lane, attempts so far, next attempt unix ms).
/// Id and lane are copied here so that resuming and recording never read the event bodies.
pub(super) const PENDING: TableDefinition<(&str, u64), (&str, &str, u32, u64)> =
    TableDefinition::new("pending");

/// `event_refs`: seq → number of pending deliveries of that event. No row means none left, so
/// gc can decide without scanning `pending`.
pub(super) const EVENT_REFS: TableDefinition<u64, u32> = TableDefinition::new("event_refs");

/// `uploaded_files`: (target, lane) → JSON list of remote paths uploaded for that vehicle, so
/// that `vehicle.deleted` removes exactly those files and never matches by pattern.
pub(super) const UPLOADED: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("uploaded_files");

/// `target_state`: (target, key) → bytes a kind keeps between attempts: an API connection's
/// values captured per vehicle (`remote/<lane>`) and how far an event's request chain got
/// (`chain/<seq>`). Removed with the target. A table added to layout 1: opening creates it.
pub(super) const TARGET_STATE: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("target_state");

/// `target_counters`: target → [`TargetCounters`] as JSON, so fields can be added without a
/// schema bump (missing ones default).
pub(super) const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("target_counters");

pub(super) fn decode_counters(target: &str, bytes: &[u8]) -> Result<TargetCounters, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Counters {
        target: target.to_owned(),
        source,
    })
}

pub(super) fn encode_counters(
    target: &str,
    counters: &TargetCounters,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(counters).map_err(|source| StoreError::Counters {
        target: target.to_owned(),
        source,
    })
}

/// `meta` key: the next delivery log entry id to hand out (absent: 1).
pub(super) const META_NEXT_ATTEMPT: &str = "next_attempt";

/// `attempts`: entry id → one delivery log entry (`attempts.rs`'s binary layout). Tables added
/// to layout 2 without a version bump: opening creates them, and older versions ignore them.
pub(super) const ATTEMPTS: TableDefinition<u64, &[u8]> = TableDefinition::new("attempts");

/// `attempts_by_target_hash`: (FNV-1a of `kind/namespace/name`, entry id) → (); the log of one
/// target, newest first by a reverse range (entries of another target under the same hash are
/// filtered out by the query). Keyed without the uid: a recreated object keeps its history.
/// A hash, not the name: 16-byte keys put six times more of them in a page, and a batch of
/// outcomes for a thousand targets dirtied a page per target (the name keys cost a fifth of
/// the operator's CPU per delivery).
pub(super) const ATTEMPTS_BY_TARGET: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("attempts_by_target_hash");

/// `attempts_by_seq`: (event seq, entry id) → (); every entry of one event.
pub(super) const ATTEMPTS_BY_SEQ: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("attempts_by_seq");
