//! The delivery log: one entry per attempt (and per drop or expiry), written by the writer in
//! the transaction that records the outcome, so logging costs no commit of its own. Entries
//! get a monotonic id (kept in `meta`), are indexed by target and by event seq, and are read
//! newest first by the management API. The periodic gc removes them by age and count.
//!
//! Entries are stored in a small binary layout (a version byte, fixed fields, length-prefixed
//! strings) rather than JSON: the writer encodes one per attempt on the delivery path.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use serde::{Serialize, Serializer};
use utoipa::ToSchema;

use super::tables::{ATTEMPTS, ATTEMPTS_BY_SEQ, ATTEMPTS_BY_TARGET};
use super::{Store, StoreError, Why};

/// Most bytes of a receiver's answer kept in an entry.
pub const MAX_RESPONSE_SNIPPET: usize = 512;
/// Most bytes of an FTP reply's text kept in an entry.
const MAX_FTP_TEXT: usize = 512;
/// Entries the gc removes per write transaction.
pub(super) const LOG_GC_CHUNK: usize = 10_000;
/// Entries may be stamped a little out of id order (an outcome waits for its batch); a scan
/// newest first stops this far below `since`, not at the first older entry.
const SINCE_SLACK_MS: u64 = 3_600_000;
/// Entries one list request reads at most before it answers with what it found and a cursor
/// to go on from: a filter that matches almost nothing must not read the whole log at once.
const SCAN_BUDGET: usize = 200_000;

const FORMAT: u8 = 2;
/// Entries written before the VIN was kept.
const FORMAT_NO_VIN: u8 = 1;
const CURSOR_VERSION: u8 = 1;

/// How an attempt ended, as the log says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogResult {
    Delivered,
    /// Nothing to do.
    Skipped,
    /// Failed, tried again later.
    Retry,
    /// Given up.
    Failed,
    /// HTTP 410: the target is held, the event kept.
    Gone,
    /// The target no longer takes the event.
    Dropped,
    /// Older than the retry policy's `maxAgeSeconds`.
    Expired,
}

impl LogResult {
    pub const ALL: [LogResult; 7] = [
        LogResult::Delivered,
        LogResult::Skipped,
        LogResult::Retry,
        LogResult::Failed,
        LogResult::Gone,
        LogResult::Dropped,
        LogResult::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogResult::Delivered => "delivered",
            LogResult::Skipped => "skipped",
            LogResult::Retry => "retry",
            LogResult::Failed => "failed",
            LogResult::Gone => "gone",
            LogResult::Dropped => "dropped",
            LogResult::Expired => "expired",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(c: u8) -> Option<Self> {
        Self::ALL.get(usize::from(c)).copied()
    }

    /// Counts as a failure in a `status=failed` query.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            LogResult::Retry | LogResult::Failed | LogResult::Gone | LogResult::Expired
        )
    }
}

/// The last reply of an FTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FtpReply {
    pub code: u16,
    pub text: String,
}

/// What the dispatcher knows of an attempt beyond its outcome; rides on
/// [`super::DeliveryUpdate::log`] so the entry is written with the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptLog {
    pub result: LogResult,
    pub event_id: String,
    pub client: String,
    pub event_type: &'static str,
    pub lane: String,
    /// The vehicle's VIN, when the event names one.
    pub vin: Option<String>,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub duration_ms: u32,
    pub http_status: Option<u16>,
    pub ftp_reply: Option<FtpReply>,
    /// At most [`MAX_RESPONSE_SNIPPET`] bytes of the receiver's answer.
    pub response: Option<String>,
    /// Why, when the outcome carries none (410 Gone).
    pub why: Option<Why>,
}

/// The event an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryEvent {
    /// The store's sequence number of the event (not shown).
    #[serde(skip)]
    pub seq: u64,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub client: String,
    /// The vehicle id; `null` for events not about one.
    pub vehicle: Option<String>,
    /// The vehicle's VIN, when the event names one.
    pub vin: Option<String>,
    /// The event's ordering lane (`vehicle:<id>`, `user:<id>`, `client:<id>`; not shown).
    #[serde(skip)]
    pub lane: String,
}

/// The target an entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct EntryTarget {
    /// The target as the store keys it: `kind/namespace/name[/uid]` (not shown).
    #[serde(skip)]
    pub row: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl EntryTarget {
    /// The parts of a store target row `kind/namespace/name[/uid]`.
    pub fn from_row(row: &str) -> Self {
        let mut parts = row.splitn(4, '/');
        let mut next = || parts.next().unwrap_or_default().to_owned();
        let (kind, namespace, name) = (next(), next(), next());
        let uid = Some(next()).filter(|u| !u.is_empty());
        EntryTarget {
            row: row.to_owned(),
            kind,
            namespace,
            name,
            uid,
        }
    }

    /// `kind/namespace/name`: what the log's target index and filter use.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One entry of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "id": "18342",
    "at": "2026-12-03T10:15:02.114Z",
    "event": {"id": "evt-1", "type": "vehicle.processed", "client": "dealer-1", "vehicle": "veh-42"},
    "target": {"kind": "webhooksubscription", "namespace": "dealer-1", "name": "crm", "uid": "6f1c2e0a-8d4b-4f7e-9a51-3c2b1d0e9f87"},
    "attempt": 2,
    "result": "delivered",
    "durationMs": 38,
    "httpStatus": 200,
    "ftpReply": null,
    "reason": null,
    "message": null,
    "response": "{\"ok\":true}"
}))]
pub struct AttemptEntry {
    #[serde(serialize_with = "as_string")]
    #[schema(value_type = String)]
    pub id: u64,
    /// When the attempt ended.
    #[serde(rename = "at", serialize_with = "as_rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at_unix_ms: u64,
    pub event: EntryEvent,
    pub target: EntryTarget,
    pub attempt: u32,
    pub result: LogResult,
    pub duration_ms: u32,
    pub http_status: Option<u16>,
    pub ftp_reply: Option<FtpReply>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// At most 512 bytes of the receiver's answer.
    pub response: Option<String>,
}

fn as_string<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn as_rfc3339<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&rfc3339(*ms))
}

/// Unix ms as an RFC 3339 UTC time with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    match k8s_openapi::jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => format!("{t:.3}"),
        Err(_) => ms.to_string(),
    }
}

/// An entry to write, borrowed from whoever has its parts.
pub(super) struct NewEntry<'a> {
    pub seq: u64,
    pub event_id: &'a str,
    pub client: &'a str,
    pub event_type: &'a str,
    pub lane: &'a str,
    pub vin: Option<&'a str>,
    pub target: &'a str,
    pub attempt: u32,
    pub at: u64,
    pub duration_ms: u32,
    pub result: LogResult,
    pub http_status: Option<u16>,
    pub ftp_reply: Option<(u16, &'a str)>,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
    pub response: Option<&'a str>,
}

/// The VIN of an event body (`data.vehicle.vin`), if it names one.
pub fn vin_of(body: &[u8]) -> Option<String> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    struct Event {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        vehicle: Vehicle,
    }
    #[derive(Deserialize)]
    struct Vehicle {
        vin: Option<String>,
    }
    serde_json::from_slice::<Event>(body).ok()?.data.vehicle.vin
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Takes out `user:password@` of any URL in `text`: messages are redacted where they are built,
/// this makes sure none that was missed lands in the log.
fn without_userinfo(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return text.into();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let authority_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out.into()
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_opt(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

impl NewEntry<'_> {
    /// The stored bytes, into `buf` (cleared first; the writer reuses one buffer).
    pub(super) fn encode(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.push(FORMAT);
        buf.extend_from_slice(&self.seq.to_le_bytes());
        buf.extend_from_slice(&self.at.to_le_bytes());
        buf.extend_from_slice(&self.attempt.to_le_bytes());
        buf.extend_from_slice(&self.duration_ms.to_le_bytes());
        buf.push(self.result.code());
        buf.extend_from_slice(&self.http_status.unwrap_or(0).to_le_bytes());
        buf.extend_from_slice(&self.ftp_reply.map_or(0, |r| r.0).to_le_bytes());
        put_str(buf, self.event_id);
        put_str(buf, self.client);
        put_str(buf, self.event_type);
        put_str(buf, self.lane);
        put_str(buf, self.target);
        put_opt(buf, self.vin.map(|v| truncate(v, 64)));
        put_opt(buf, self.reason);
        put_opt(
            buf,
            self.message
                .map(|m| without_userinfo(truncate(m, 4096)))
                .as_deref(),
        );
        put_opt(
            buf,
            self.ftp_reply
                .map(|r| without_userinfo(truncate(r.1, MAX_FTP_TEXT)))
                .as_deref(),
        );
        put_opt(
            buf,
            self.response
                .map(|r| without_userinfo(truncate(r, MAX_RESPONSE_SNIPPET)))
                .as_deref(),
        );
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn opt(&mut self) -> Option<Option<&'a str>> {
        let n = self.u32()?;
        if n == u32::MAX {
            return Some(None);
        }
        let bytes = self.take(n as usize)?;
        std::str::from_utf8(bytes).ok().map(Some)
    }
    fn str(&mut self) -> Option<&'a str> {
        self.opt()?
    }
}

/// The few fields the gc and filters need, without copying the strings.
struct Head<'a> {
    seq: u64,
    at: u64,
    result: LogResult,
    event_id: &'a str,
    client: &'a str,
    event_type: &'a str,
    lane: &'a str,
    target: &'a str,
    vin: Option<&'a str>,
}

fn head(bytes: &[u8]) -> Option<(Head<'_>, Reader<'_>, [u32; 2], [u16; 2])> {
    let mut r = Reader(bytes);
    let format = r.u8()?;
    if format != FORMAT && format != FORMAT_NO_VIN {
        return None;
    }
    let seq = r.u64()?;
    let at = r.u64()?;
    let attempt = r.u32()?;
    let duration = r.u32()?;
    let result = LogResult::from_code(r.u8()?)?;
    let status = r.u16()?;
    let ftp_code = r.u16()?;
    let h = Head {
        seq,
        at,
        result,
        event_id: r.str()?,
        client: r.str()?,
        event_type: r.str()?,
        lane: r.str()?,
        target: r.str()?,
        vin: if format == FORMAT { r.opt()? } else { None },
    };
    Some((h, r, [attempt, duration], [status, ftp_code]))
}

fn decode(id: u64, bytes: &[u8]) -> Result<AttemptEntry, StoreError> {
    let bad = || StoreError::BadAttempt { id };
    let (h, mut r, [attempt, duration_ms], [status, ftp_code]) = head(bytes).ok_or_else(bad)?;
    let reason = r.opt().ok_or_else(bad)?;
    let message = r.opt().ok_or_else(bad)?;
    let ftp_text = r.opt().ok_or_else(bad)?;
    let response = r.opt().ok_or_else(bad)?;
    Ok(AttemptEntry {
        id,
        at_unix_ms: h.at,
        event: EntryEvent {
            seq: h.seq,
            id: h.event_id.to_owned(),
            event_type: h.event_type.to_owned(),
            client: h.client.to_owned(),
            vehicle: h.lane.strip_prefix("vehicle:").map(str::to_owned),
            vin: h.vin.map(str::to_owned),
            lane: h.lane.to_owned(),
        },
        target: EntryTarget::from_row(h.target),
        attempt,
        result: h.result,
        duration_ms,
        http_status: (status != 0).then_some(status),
        ftp_reply: (ftp_code != 0).then(|| FtpReply {
            code: ftp_code,
            text: ftp_text.unwrap_or_default().to_owned(),
        }),
        reason: reason.map(str::to_owned),
        message: message.map(str::to_owned),
        response: response.map(str::to_owned),
    })
}

/// `kind/namespace/name` of a target row `kind/namespace/name[/uid]`.
/// The by-target index's key of a target (`kind/namespace/name`): FNV-1a, stable across
/// versions and machines as the store file must be.
fn target_hash(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(key.as_bytes());
    h.finish()
}

fn target_key(row: &str) -> &str {
    match row.match_indices('/').nth(2) {
        Some((i, _)) => &row[..i],
        None => row,
    }
}

/// The log's tables in one write transaction.
pub(super) struct LogTables<'txn> {
    entries: Table<'txn, u64, &'static [u8]>,
    by_target: Table<'txn, (u64, u64), ()>,
    by_seq: Table<'txn, (u64, u64), ()>,
    next_id: u64,
    buf: Vec<u8>,
}

impl<'txn> LogTables<'txn> {
    /// `next_id`: `meta`'s `next_attempt` (the caller has `meta` open).
    pub(super) fn open(txn: &'txn WriteTransaction, next_id: u64) -> Result<Self, StoreError> {
        Ok(LogTables {
            entries: txn.open_table(ATTEMPTS)?,
            by_target: txn.open_table(ATTEMPTS_BY_TARGET)?,
            by_seq: txn.open_table(ATTEMPTS_BY_SEQ)?,
            next_id,
            buf: Vec::new(),
        })
    }

    /// Puts back entries as [`Store::attempts_after`] read them (a copy kept elsewhere), under
    /// their own ids; an unreadable one is skipped. The highest event seq they name.
    pub(super) fn restore(&mut self, rows: &[(u64, Vec<u8>)]) -> Result<u64, StoreError> {
        let mut top_seq = 0;
        for (id, bytes) in rows {
            let Some((h, ..)) = head(bytes) else {
                continue;
            };
            self.entries.insert(*id, bytes.as_slice())?;
            self.by_target
                .insert((target_hash(target_key(h.target)), *id), ())?;
            self.by_seq.insert((h.seq, *id), ())?;
            self.next_id = self.next_id.max(id + 1);
            top_seq = top_seq.max(h.seq);
        }
        Ok(top_seq)
    }

    /// Writes an entry: three inserts.
    pub(super) fn add(&mut self, e: &NewEntry<'_>) -> Result<u64, StoreError> {
        let id = self.next_id;
        self.next_id += 1;
        e.encode(&mut self.buf);
        self.entries.insert(id, self.buf.as_slice())?;
        self.by_target
            .insert((target_hash(target_key(e.target)), id), ())?;
        self.by_seq.insert((e.seq, id), ())?;
        Ok(id)
    }

    /// The next id, for `meta` (written once per transaction).
    pub(super) fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Removes up to `limit` of the oldest entries that are older than `cutoff_unix_ms` or
    /// beyond the newest `max_entries`. Returns how many went.
    pub(super) fn gc(
        &mut self,
        cutoff_unix_ms: u64,
        max_entries: u64,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let mut over = self.entries.len()?.saturating_sub(max_entries);
        let mut victims: Vec<(u64, u64, u64)> = Vec::new();
        for row in self.entries.iter()? {
            if victims.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let id = k.value();
            match head(v.value()) {
                Some((h, ..)) if over == 0 && h.at >= cutoff_unix_ms => break,
                Some((h, ..)) => victims.push((id, h.seq, target_hash(target_key(h.target)))),
                // Unreadable: of no use to anyone.
                None => victims.push((id, u64::MAX, 0)),
            }
            over = over.saturating_sub(1);
        }
        for (id, seq, target) in &victims {
            self.entries.remove(*id)?;
            self.by_target.remove((*target, *id))?;
            self.by_seq.remove((*seq, *id))?;
        }
        Ok(victims.len() as u64)
    }
}

/// Which entries a list request wants; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AttemptQuery {
    /// `kind/namespace/name`.
    pub target: Option<String>,
    pub results: Option<Vec<LogResult>>,
    /// A vehicle by its id (or the event's whole lane) or its VIN (VINs compared without
    /// case).
    pub vehicle: Option<String>,
    pub event_type: Option<String>,
    pub event_id: Option<String>,
    /// Entries of these clients only (what the caller may see, narrowed by its `client=`);
    /// `None`: every client.
    pub clients: Option<Vec<String>>,
    pub since_unix_ms: Option<u64>,
    pub until_unix_ms: Option<u64>,
    /// Entries with ids below this one (from a cursor).
    pub before: Option<u64>,
    pub limit: usize,
}

/// One page of the log, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPage {
    pub entries: Vec<AttemptEntry>,
    /// Where the next page starts, if there may be one.
    pub next: Option<AttemptCursor>,
}

/// A position in the log (opaque to clients: base64url of a version byte and an id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCursor(pub u64);

impl AttemptCursor {
    pub fn encode(self) -> String {
        let mut b = [0u8; 9];
        b[0] = CURSOR_VERSION;
        b[1..].copy_from_slice(&self.0.to_be_bytes());
        URL_SAFE_NO_PAD.encode(b)
    }

    pub fn decode(s: &str) -> Option<Self> {
        let b = URL_SAFE_NO_PAD.decode(s).ok()?;
        let (&v, id) = b.split_first()?;
        (v == CURSOR_VERSION)
            .then(|| id.try_into().ok().map(u64::from_be_bytes))
            .flatten()
            .map(AttemptCursor)
    }
}

impl AttemptQuery {
    fn matches(&self, h: &Head<'_>) -> bool {
        self.results.as_ref().is_none_or(|r| r.contains(&h.result))
            && self.vehicle.as_deref().is_none_or(|v| {
                h.lane == v
                    || h.lane.strip_prefix("vehicle:") == Some(v)
                    || h.vin.is_some_and(|vin| vin.eq_ignore_ascii_case(v))
            })
            && self.event_type.as_deref().is_none_or(|t| t == h.event_type)
            && self.event_id.as_deref().is_none_or(|e| e == h.event_id)
            && self
                .clients
                .as_ref()
                .is_none_or(|c| c.iter().any(|c| c == h.client))
            && self.since_unix_ms.is_none_or(|s| h.at >= s)
            && self.until_unix_ms.is_none_or(|u| h.at < u)
            && self
                .target
                .as_deref()
                .is_none_or(|t| t == target_key(h.target))
    }

    /// Below the window: entries older than this end a scan (ids are nearly time-ordered).
    fn past(&self, h: &Head<'_>) -> bool {
        self.since_unix_ms
            .is_some_and(|s| h.at.saturating_add(SINCE_SLACK_MS) < s)
    }
}

impl Store {
    /// One entry of the delivery log.
    pub fn attempt(&self, id: u64) -> Result<Option<AttemptEntry>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(ATTEMPTS)?;
        match table.get(id)? {
            Some(g) => decode(id, g.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Entries of the log that match `q`, newest first: through the target index when the
    /// query names a target, else the whole log; filters apply before the page is cut, so a
    /// page is short only at the end of the log (or after a long scan, with a cursor).
    pub fn attempts(&self, q: &AttemptQuery) -> Result<AttemptPage, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ATTEMPTS)?;
        let before = q.before.unwrap_or(u64::MAX);
        let limit = q.limit.max(1);
        let mut page = Vec::new();
        let mut scanned = 0usize;
        // Why the scan stopped: `None` at the end of the log (or of the window).
        let mut more_after: Option<u64> = None;
        let mut consider = |id: u64, bytes: &[u8], page: &mut Vec<AttemptEntry>| {
            scanned += 1;
            match head(bytes) {
                Some((h, ..)) if q.past(&h) => return Ok::<_, StoreError>(false),
                Some((h, ..)) if q.matches(&h) => page.push(decode(id, bytes)?),
                _ => {}
            }
            if page.len() >= limit || scanned >= SCAN_BUDGET {
                more_after = Some(id);
                return Ok(false);
            }
            Ok(true)
        };
        if let Some(target) = &q.target {
            let index = txn.open_table(ATTEMPTS_BY_TARGET)?;
            let hash = target_hash(target);
            for row in index.range::<(u64, u64)>((hash, 0)..(hash, before))?.rev() {
                let id = row?.0.value().1;
                let Some(g) = entries.get(id)? else { continue };
                if !consider(id, g.value(), &mut page)? {
                    break;
                }
            }
        } else {
            for row in entries.range(..before)?.rev() {
                let (k, v) = row?;
                if !consider(k.value(), v.value(), &mut page)? {
                    break;
                }
            }
        }
        let next = more_after.map(AttemptCursor);
        Ok(AttemptPage {
            entries: page,
            next,
        })
    }

    /// Every entry of the event `seq`, oldest first.
    pub fn attempts_of_event(&self, seq: u64) -> Result<Vec<AttemptEntry>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ATTEMPTS)?;
        let index = txn.open_table(ATTEMPTS_BY_SEQ)?;
        let mut out = Vec::new();
        for row in index.range::<(u64, u64)>((seq, 0)..=(seq, u64::MAX))? {
            let id = row?.0.value().1;
            if let Some(g) = entries.get(id)? {
                out.push(decode(id, g.value())?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` entries with ids above `after`, oldest first, as stored: what a copy of
    /// the log elsewhere (the JetStream backend's) takes, and [`Self::restore_attempts`]
    /// puts back.
    pub fn attempts_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ATTEMPTS)?;
        let mut out = Vec::new();
        for row in entries.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The id of the newest entry (0: none).
    pub fn last_attempt_id(&self) -> Result<u64, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ATTEMPTS)?;
        Ok(entries.last()?.map_or(0, |(k, _)| k.value()))
    }

    /// Puts back entries [`Self::attempts_after`] read (into a log that lost them: a new
    /// volume). Ids stay as they were and new entries get higher ones; new events get seqs
    /// above the ones the entries name, so that an event's view never shows another's.
    pub async fn restore_attempts(&self, rows: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
        self.submit(|reply| super::writer::Job::RestoreAttempts { rows, reply })
            .await
    }

    /// Entries in the log now.
    pub fn attempt_count(&self) -> Result<u64, StoreError> {
        let db = self.inner.shared.db()?;
        let txn = db.begin_read()?;
        Ok(txn.open_table(ATTEMPTS)?.len()?)
    }

    /// Removes log entries older than `retention` and beyond the newest `max_entries`, in
    /// chunks so the writer is never held long. Returns how many went.
    pub async fn gc_attempts(
        &self,
        retention: std::time::Duration,
        max_entries: u64,
    ) -> Result<u64, StoreError> {
        let retention_ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff_unix_ms = super::now_unix_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            let removed = self
                .submit(|reply| super::writer::Job::GcAttempts {
                    cutoff_unix_ms,
                    max_entries,
                    limit: LOG_GC_CHUNK,
                    reply,
                })
                .await?;
            total += removed;
            if removed < LOG_GC_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn entries_round_trip_and_userinfo_never_lands() {
        let e = NewEntry {
            seq: 7,
            event_id: "evt-1",
            client: "dealer-1",
            event_type: "vehicle.processed",
            lane: "vehicle:veh-42",
            vin: Some("WVWZZZ1JZXW000042"),
            target: "webhooksubscription/ns/crm/uid-1",
            attempt: 2,
            at: 1_800_000_000_123,
            duration_ms: 38,
            result: LogResult::Retry,
            http_status: Some(500),
            ftp_reply: Some((550, "550 no")),
            reason: Some("HttpStatus"),
            message: Some("posting to https://user:secret@example.com/x failed"),
            response: Some(&"é".repeat(600)),
        };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        let d = decode(9, &buf).unwrap();
        assert_eq!(d.event.seq, 7);
        assert_eq!(d.target.kind, "webhooksubscription");
        assert_eq!(d.target.uid.as_deref(), Some("uid-1"));
        assert_eq!(d.target.key(), "webhooksubscription/ns/crm");
        assert_eq!(d.http_status, Some(500));
        assert_eq!(d.ftp_reply.as_ref().map(|r| r.code), Some(550));
        assert_eq!(
            d.message.as_deref(),
            Some("posting to https://example.com/x failed")
        );
        let response = d.response.unwrap();
        assert!(response.len() <= MAX_RESPONSE_SNIPPET && response.len() >= 510);
        let json = serde_json::to_value(decode(9, &buf).unwrap()).unwrap();
        assert_eq!(json["id"], "9");
        assert_eq!(json["at"], "2027-01-15T08:00:00.123Z");
        assert_eq!(json["event"]["vehicle"], "veh-42");
        assert_eq!(json["result"], "retry");
        assert_eq!(json["durationMs"], 38);
        assert!(json["event"].get("seq").is_none());
        assert_eq!(json["event"]["vin"], "WVWZZZ1JZXW000042");
        assert!(decode(9, &buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn entries_written_before_the_vin_still_read() {
        let e = NewEntry {
            seq: 7,
            event_id: "evt-1",
            client: "dealer-1",
            event_type: "vehicle.processed",
            lane: "vehicle:veh-42",
            vin: None,
            target: "webhooksubscription/ns/crm/uid-1",
            attempt: 1,
            at: 1_800_000_000_123,
            duration_ms: 3,
            result: LogResult::Delivered,
            http_status: Some(200),
            ftp_reply: None,
            reason: None,
            message: None,
            response: None,
        };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        // The first format: no VIN field after the target.
        let strings = [e.event_id, e.client, e.event_type, e.lane, e.target];
        let vin_at = 30 + strings.iter().map(|s| 4 + s.len()).sum::<usize>();
        buf.drain(vin_at..vin_at + 4);
        buf[0] = FORMAT_NO_VIN;
        let d = decode(3, &buf).unwrap();
        assert_eq!(d.event.vehicle.as_deref(), Some("veh-42"));
        assert_eq!(d.event.vin, None);
        assert_eq!(d.http_status, Some(200));
    }

    #[test]
    fn cursors_are_opaque_and_checked() {
        let c = AttemptCursor(12345);
        assert_eq!(AttemptCursor::decode(&c.encode()), Some(c));
        assert_eq!(AttemptCursor::decode("nope!"), None);
        assert_eq!(AttemptCursor::decode(""), None);
    }

    #[test]
    fn target_keys_drop_the_uid() {
        assert_eq!(target_key("whs/ns/name/uid"), "whs/ns/name");
        assert_eq!(target_key("whs/ns/name"), "whs/ns/name");
    }
}
