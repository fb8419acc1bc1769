//! Conditions (built by small helpers, merged with what is on the object) and the reconcilers'
//! status writes (server-side apply of `.status` under one field manager); the delivery
//! counters and the `Delivering` condition are [`counters`].

mod counters;
pub mod ops;

pub use counters::*;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub const READY: &str = "Ready";
pub const CONNECTED: &str = "Connected";
/// kstatus: present and True while the operator is still working, or retrying on its own
/// (a probe not done yet, a server not answering); absent otherwise.
pub const RECONCILING: &str = "Reconciling";
/// kstatus: present and True when only a change by the user can make progress (a missing
/// Secret, a refused address, a bad template); absent otherwise.
pub const STALLED: &str = "Stalled";
/// Delivery health, written with the counters: False when the last attempts failed or the
/// oldest pending event waits too long, True once a delivery succeeds.
pub const DELIVERING: &str = "Delivering";

/// Ready reasons the operator gets past on its own, by retrying: everything else that is not
/// True waits for the user (or, `Suspended`, is what the user asked for).
const TRANSIENT: &[&str] = &[
    "NotProbed",
    "Pending",
    "TargetUnresolvable",
    "DnsFailed",
    "ConnectionRefused",
    "ConnectionFailed",
    "ConnectionLost",
    "Timeout",
];

/// The kstatus conditions that go with `ready`: `Reconciling` for what the operator retries
/// itself, `Stalled` for what only the user can fix; neither when Ready or suspended. Absent
/// rather than False, as Flux does: the apply that omits them removes them.
pub fn kstatus_conditions(ready: &Check) -> Option<(&'static str, Check)> {
    match ready.status {
        Tri::True => None,
        _ if ready.reason == "Suspended" => None,
        Tri::Unknown => Some((
            RECONCILING,
            Check::new(Tri::True, &*ready.reason, &*ready.message),
        )),
        Tri::False if TRANSIENT.contains(&ready.reason.as_str()) => Some((
            RECONCILING,
            Check::new(
                Tri::True,
                &*ready.reason,
                format!("retrying: {}", ready.message),
            ),
        )),
        Tri::False => Some((
            STALLED,
            Check::new(Tri::True, &*ready.reason, &*ready.message),
        )),
    }
}
/// Field manager of the reconcilers' status fields (observedGeneration, conditions).
pub const RECONCILER_MANAGER: &str = "vehicle-connect";

/// Outcome of one check, as a condition will show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub status: Tri,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    pub fn as_str(self) -> &'static str {
        match self {
            Tri::True => "True",
            Tri::False => "False",
            Tri::Unknown => "Unknown",
        }
    }
}

/// Removes credentials from every URL in a user-visible text: userinfo (`user:pass@`),
/// query and fragment become `***` (webhook tokens often live in the query). Conditions,
/// Events and `lastFailure` are readable by anyone who may read the resource.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: letters, digits, `+ - .` right before `://`.
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        if scheme_start == at {
            out.push_str(&rest[..at + 3]);
            rest = &rest[at + 3..];
            continue;
        }
        let after = &rest[at + 3..];
        let mut end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .unwrap_or(after.len());
        // Trailing punctuation and the `)` of `(http://x/?q)` belong to the text.
        loop {
            let url = &after[..end];
            if url.ends_with(['.', ',', ';', ':', '!'])
                || (url.ends_with(')') && !url.contains('('))
            {
                end -= 1;
            } else {
                break;
            }
        }
        out.push_str(&rest[..at + 3]);
        out.push_str(&redact_after_scheme(&after[..end]));
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `authority/path?query#fragment` with userinfo, query and fragment masked.
fn redact_after_scheme(s: &str) -> String {
    let auth_end = s.find(['/', '?', '#']).unwrap_or(s.len());
    let (authority, tail) = s.split_at(auth_end);
    let mut out = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..path_end]);
    let extra = &tail[path_end..];
    if extra.starts_with('?') {
        out.push_str("?***");
    }
    if extra.contains('#') {
        out.push_str("#***");
    }
    out
}

/// The CRDs refuse a condition message longer than metav1.Condition's limit, and with it
/// the whole status patch: cut it (bytes bound characters, so the cut always fits).
fn cap(mut message: String) -> String {
    if message.len() > crate::api::CONDITION_MESSAGE_MAX {
        let mut end = crate::api::CONDITION_MESSAGE_MAX - "…".len();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl Check {
    /// Every constructor redacts the message: a Check ends up in a condition or an Event.
    fn new(status: Tri, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check {
            status,
            reason: reason.into(),
            message: cap(redact(&message.into())),
        }
    }
    pub fn ok(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check::new(Tri::True, reason, message)
    }
    pub fn fail(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check::new(Tri::False, reason, message)
    }
    pub fn unknown(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Check::new(Tri::Unknown, reason, message)
    }
    pub fn is_ok(&self) -> bool {
        self.status == Tri::True
    }

    /// The condition of type `type_`, keeping `lastTransitionTime` from `old` when the
    /// status did not change.
    pub fn to_condition(
        &self,
        type_: &str,
        generation: Option<i64>,
        old: &[Condition],
    ) -> Condition {
        let status = self.status.as_str();
        let since = find(old, type_)
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(now);
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: self.reason.clone(),
            message: self.message.clone(),
            observed_generation: generation,
            last_transition_time: since,
        }
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

pub fn find<'a>(conds: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Whether `new` differs from `old` in what a user would be told about (status, reason).
pub fn transitioned(old: &[Condition], new: &Condition) -> bool {
    find(old, &new.type_).is_none_or(|o| o.status != new.status || o.reason != new.reason)
}

/// Events are for what needs attention: a problem, or recovery from one. A resource that is
/// fine from the start gets none (10,000 "Ready" Events would drown the useful ones).
pub fn worth_an_event(old: &[Condition], new: &Check) -> bool {
    match new.status {
        Tri::True => find(old, READY).is_some_and(|o| o.status == "False"),
        _ => true,
    }
}

/// Whether the condition on the object differs from `new` in anything but its time.
pub fn differs(old: &[Condition], new: &Condition) -> bool {
    find(old, &new.type_).is_none_or(|o| {
        o.status != new.status
            || o.reason != new.reason
            || o.message != new.message
            || o.observed_generation != new.observed_generation
    })
}

/// The reconcilers' part of a status: counters belong to the delivery writer (another
/// field manager), so neither erases the other's fields.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub conditions: Vec<Condition>,
    /// Omitted once delivery resumes: the apply without it removes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receiver_gone: Option<crate::api::webhook::ReceiverGone>,
}

/// The value of [`RECEIVER_GONE_ANNOTATION`]: when the receiver answered 410 and the
/// generation that was delivering then (a later generation resumes).
pub fn gone_annotation(since: &Time, generation: i64) -> String {
    let t = serde_json::to_value(since)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    format!("{t} generation={generation}")
}

/// (since, generation) of an annotation value; the generation is `None` in values written
/// before it was recorded (a bare time).
pub fn parse_gone(value: &str) -> (Option<Time>, Option<i64>) {
    let mut parts = value.split_whitespace();
    let since = parts
        .next()
        .and_then(|t| serde_json::from_value(serde_json::Value::String(t.to_owned())).ok());
    let generation = parts
        .find_map(|p| p.strip_prefix("generation="))
        .and_then(|g| g.parse().ok());
    (since, generation)
}

/// Which replica writes a resource's status when several share the work (`--store nats://…`):
/// one per resource, so that N replicas do not each patch it, each publish its Events and
/// each tell the ops webhook. Without it (one replica) this process writes every status.
pub trait StatusWriters: Send + Sync + std::fmt::Debug {
    /// Whether this replica writes `key`'s status now.
    fn writes(&self, key: &crate::routing::TargetKey) -> bool;
    /// Seen again whenever replicas join or leave, which moves resources between writers.
    fn changes(&self) -> tokio::sync::watch::Receiver<Vec<String>>;
}

/// Whether this process writes `key`'s status (`writers` absent: it writes them all).
pub fn writes(
    writers: Option<&std::sync::Arc<dyn StatusWriters>>,
    key: &crate::routing::TargetKey,
) -> bool {
    writers.is_none_or(|w| w.writes(key))
}

/// Applies `status` (a fragment owned by `manager`) to the object's status subresource.
pub async fn apply<K, S>(api: &Api<K>, obj: &K, manager: &str, status: &S) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_messages_fit_the_crd_limit() {
        let max = crate::api::CONDITION_MESSAGE_MAX;
        let long = Check::fail("Bad", "é".repeat(max));
        assert!(
            long.message.chars().count() <= max,
            "{}",
            long.message.len()
        );
        assert!(long.message.len() <= max);
        assert!(long.message.ends_with('…'));
        let short = Check::fail("Bad", "x".repeat(max));
        assert_eq!(
            short.message.len(),
            max,
            "a message at the limit is kept whole"
        );
    }

    #[test]
    fn kstatus_conditions_say_who_has_to_act() {
        let of = |c: Check| kstatus_conditions(&c).map(|(t, c)| (t, c.status, c.reason));
        assert_eq!(of(Check::ok("Ready", "fine")), None);
        assert_eq!(of(Check::ok("Suspended", "asked")), None);
        for user in [
            "SecretNotFound",
            "ClientNotAllowed",
            "InvalidTemplate",
            "ReceiverGone",
            "LoginFailed",
            "TargetNotAllowed",
        ] {
            assert_eq!(
                of(Check::fail(user, "x")),
                Some((STALLED, Tri::True, user.to_string())),
                "{user}"
            );
        }
        for retried in ["ConnectionRefused", "TargetUnresolvable", "Timeout"] {
            assert_eq!(
                of(Check::fail(retried, "x")),
                Some((RECONCILING, Tri::True, retried.to_string())),
                "{retried}"
            );
        }
        assert_eq!(
            of(Check::unknown("NotProbed", "x")),
            Some((RECONCILING, Tri::True, "NotProbed".to_string()))
        );
    }

    #[test]
    fn gone_annotation_round_trips_and_reads_bare_times() {
        let t: Time = serde_json::from_value(serde_json::json!("2026-12-02T10:00:00Z")).unwrap();
        let v = gone_annotation(&t, 7);
        assert_eq!(v, "2026-12-02T10:00:00Z generation=7");
        assert_eq!(parse_gone(&v), (Some(t.clone()), Some(7)));
        assert_eq!(parse_gone("2026-12-02T10:00:00Z"), (Some(t), None));
        assert_eq!(parse_gone("garbage"), (None, None));
    }

    #[test]
    fn transition_time_is_kept_while_status_holds() {
        let first = Check::fail("SecretNotFound", "no secret").to_condition(READY, Some(1), &[]);
        let mut old = vec![first.clone()];
        old[0].last_transition_time = Time(Timestamp::UNIX_EPOCH);
        let same = Check::fail("SecretInvalid", "bad key").to_condition(READY, Some(2), &old);
        assert_eq!(same.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        assert_eq!(same.observed_generation, Some(2));
        assert!(transitioned(&old, &same), "reason changed");
        let flipped = Check::ok("Ready", "ok").to_condition(READY, Some(2), &old);
        assert_ne!(flipped.last_transition_time, Time(Timestamp::UNIX_EPOCH));
        assert!(transitioned(&old, &flipped));
        assert!(!transitioned(std::slice::from_ref(&flipped), &flipped));
    }

    #[test]
    fn urls_lose_userinfo_query_and_fragment() {
        for (raw, want) in [
            (
                "to https://h.example/hook?token=s3cret",
                "to https://h.example/hook?***",
            ),
            (
                "https://u:p@h.example:8443/x",
                "https://***@h.example:8443/x",
            ),
            ("a http://h/?a=1#frag b", "a http://h/?***#*** b"),
            (
                "error for url (http://127.0.0.1:9/h?k=v): refused",
                "error for url (http://127.0.0.1:9/h?***): refused",
            ),
            (
                "\"https://h/p?x=1\" and ftp://me:pw@f/",
                "\"https://h/p?***\" and ftp://***@f/",
            ),
            ("no url here: ://odd", "no url here: ://odd"),
            (
                "plain https://h.example/path",
                "plain https://h.example/path",
            ),
            ("https://h?tok", "https://h?***"),
        ] {
            assert_eq!(redact(raw), want, "{raw}");
        }
        let c = Check::ok("Ready", "delivering to https://u:pw@h/x?token=abc");
        assert!(
            !c.message.contains("abc") && !c.message.contains("pw"),
            "{}",
            c.message
        );
    }
}
