//! The routing index: which delivery targets want which event. Pure and in memory, fed by
//! the reconcilers (upsert on apply, remove on delete or when a namespace stops allowing the
//! client), read by ingest and delivery.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::api::ftp::FtpRules;
use crate::api::{EventType, RetryPolicy};
use crate::endpoint::{ApiEndpoint, FtpEndpoint, TlsMaterial};
use crate::mapping::Compiled;

/// Which resource a target belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Webhook,
    Ftp,
    Api,
}

/// Identity of a target: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl Kind {
    /// Every kind, in [`Kind::index`] order.
    pub const ALL: [Kind; 3] = [Kind::Webhook, Kind::Ftp, Kind::Api];

    /// Position in [`Kind::ALL`], for tables kept per kind.
    pub fn index(self) -> usize {
        match self {
            Kind::Webhook => 0,
            Kind::Ftp => 1,
            Kind::Api => 2,
        }
    }

    /// The `kind` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Ftp => "ftp",
            Kind::Api => "api",
        }
    }

    /// The kind's resource name (`webhooksubscription`, ...), as target references use it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhooksubscription",
            Kind::Ftp => "ftpconnection",
            Kind::Api => "apiconnection",
        }
    }
}

impl std::fmt::Display for TargetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a target key: {0:?}")]
pub struct BadTargetKey(String);

impl std::str::FromStr for TargetKey {
    type Err = BadTargetKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TargetId::from_str(s)?.key)
    }
}

/// A target as the store keys its rows: the resource plus the uid of the object, so that
/// rows queued for a deleted (or recreated) object never reach another one of that name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetId {
    pub key: TargetKey,
    /// `None` for rows written before targets carried uids: they follow the name.
    pub uid: Option<String>,
}

impl TargetId {
    /// Whether `target` (the registered object) is the one these rows belong to.
    pub fn is(&self, target: &Target) -> bool {
        self.uid.as_deref().is_none_or(|u| u == target.uid)
    }
}

impl std::fmt::Display for TargetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.uid {
            Some(uid) => write!(f, "{}/{uid}", self.key),
            None => write!(f, "{}", self.key),
        }
    }
}

impl std::str::FromStr for TargetId {
    type Err = BadTargetKey;

    /// `kind/namespace/name[/uid]` (namespaces, names and uids never contain `/`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadTargetKey(s.to_string());
        let mut it = s.split('/');
        let kind = match it.next() {
            Some("webhooksubscription") => Kind::Webhook,
            Some("ftpconnection") => Kind::Ftp,
            Some("apiconnection") => Kind::Api,
            _ => return Err(bad()),
        };
        let namespace = it.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let name = it.next().filter(|p| !p.is_empty()).ok_or_else(bad)?;
        let uid = it.next().map(str::to_string);
        if it.next().is_some() || uid.as_deref() == Some("") {
            return Err(bad());
        }
        Ok(TargetId {
            key: TargetKey {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            },
            uid,
        })
    }
}

/// Which events a target takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub client_id: String,
    /// `None`: every user of the client.
    pub user_ids: Option<BTreeSet<String>>,
    pub events: BTreeSet<EventType>,
}

impl Selector {
    pub fn matches(&self, client_id: &str, user_id: Option<&str>, ty: EventType) -> bool {
        self.client_id == client_id
            && self.events.contains(&ty)
            && match &self.user_ids {
                None => true,
                Some(users) => user_id.is_some_and(|u| users.contains(u)),
            }
    }
}

/// HTTP authentication resolved from Secrets.
#[derive(Clone, PartialEq, Eq)]
pub enum WebhookAuth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for WebhookAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WebhookAuth::None => "None",
            WebhookAuth::Basic { .. } => "Basic(<redacted>)",
            WebhookAuth::Bearer(_) => "Bearer(<redacted>)",
        })
    }
}

/// A resolved, ready-to-use webhook target.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: url::Url,
    pub auth: WebhookAuth,
    /// Decoded `whsec_` keys; each signs every request.
    pub signing_keys: Vec<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub max_concurrency: u32,
    /// The receiver's CA bundle (`spec.tls`), none for the system roots.
    pub tls: TlsMaterial,
    /// `tls.fingerprint()`, computed once: attempts find their HTTP client by it.
    pub tls_id: [u8; 32],
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url.as_str())
            .field("auth", &self.auth)
            .field("signing_keys", &self.signing_keys.len())
            .field("timeout", &self.timeout)
            .field("ca", &self.tls.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// A resolved FTP target.
#[derive(Clone, Debug)]
pub struct FtpTarget {
    pub endpoint: FtpEndpoint,
    pub rules: FtpRules,
    pub retry: RetryPolicy,
    pub max_connections: u32,
}

/// A resolved API target: where, how to authenticate, and the compiled mapping.
#[derive(Clone)]
pub struct ApiTarget {
    pub name: String,
    pub namespace: String,
    pub endpoint: ApiEndpoint,
    pub mapping: Arc<Compiled>,
    /// Identifies the mapping: a chain stopped under another one starts over.
    pub fingerprint: String,
    pub max_concurrency: u32,
}

impl std::fmt::Debug for ApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTarget")
            .field("endpoint", &self.endpoint)
            .field("mapping", &self.fingerprint)
            .field("max_concurrency", &self.max_concurrency)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub enum TargetConfig {
    Webhook(WebhookTarget),
    Ftp(FtpTarget),
    Api(ApiTarget),
}

/// One delivery target.
#[derive(Clone, Debug)]
pub struct Target {
    pub key: TargetKey,
    pub uid: String,
    pub generation: i64,
    pub selector: Selector,
    /// From the spec; applies even while held (events older than its maximum age expire).
    pub retry: RetryPolicy,
    /// `Some(reason)`: events are routed and kept, but not delivered (suspended, or a
    /// fixable problem such as a missing Secret); delivery resumes when it clears.
    pub held: Option<String>,
    /// `None` while held for a problem that left no usable configuration.
    pub config: Option<TargetConfig>,
}

impl Target {
    pub fn id(&self) -> TargetId {
        TargetId {
            key: self.key.clone(),
            uid: Some(self.uid.clone()),
        }
    }

    /// Attempts in flight the target allows.
    pub fn concurrency(&self) -> u32 {
        match &self.config {
            Some(TargetConfig::Webhook(w)) => w.max_concurrency,
            Some(TargetConfig::Ftp(f)) => f.max_connections,
            Some(TargetConfig::Api(a)) => a.max_concurrency,
            None => 1,
        }
        .max(1)
    }
}

#[derive(Default)]
struct Index {
    targets: HashMap<TargetKey, Arc<Target>>,
    by_client: HashMap<String, BTreeSet<TargetKey>>,
    /// Keys a reconciler has concluded on (registered or removed): a start-up
    /// registration from the watch cache never overrides them.
    settled: std::collections::HashSet<TargetKey>,
    /// Uids of objects seen deleted (most recent last, bounded): a reconcile of one that was
    /// still running when the deletion arrived must not register it again.
    deleted: std::collections::VecDeque<String>,
}

/// Deleted uids remembered; a reconcile outlives its object's deletion by seconds at most.
const DELETED_REMEMBERED: usize = 4096;

/// Thread-safe registry of targets, indexed by client.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Index>,
    /// Kinds whose existing objects have all been registered since start-up.
    synced: std::sync::Mutex<BTreeSet<Kind>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters here, so poisoning is ignored.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds or replaces a target (a reconciler's conclusion), unless its object was deleted.
    pub fn upsert(&self, target: Target) {
        let mut idx = self.write();
        if !target.uid.is_empty() && idx.deleted.contains(&target.uid) {
            return;
        }
        idx.settled.insert(target.key.clone());
        Self::insert(&mut idx, target);
    }

    /// Registers a target found in the watch cache at start-up, before its reconciler has
    /// run, so that events accepted meanwhile are routed to it (and wait while it is held).
    /// Ignored once a reconciler has concluded on that key.
    pub fn preregister(&self, target: Target) -> bool {
        let mut idx = self.write();
        if idx.settled.contains(&target.key) || idx.targets.contains_key(&target.key) {
            return false;
        }
        Self::insert(&mut idx, target);
        true
    }

    fn insert(idx: &mut Index, target: Target) {
        let key = target.key.clone();
        if let Some(old) = idx.targets.get(&key).cloned()
            && old.selector.client_id != target.selector.client_id
            && let Some(set) = idx.by_client.get_mut(&old.selector.client_id)
        {
            set.remove(&key);
        }
        idx.by_client
            .entry(target.selector.client_id.clone())
            .or_default()
            .insert(key.clone());
        idx.targets.insert(key, Arc::new(target));
    }

    /// The object `uid` named `key` was deleted: removes its target (not a newer object's of
    /// the same name) and refuses it from now on. True if it was registered.
    pub fn deleted(&self, key: &TargetKey, uid: &str) -> bool {
        let mut idx = self.write();
        if !idx.deleted.iter().any(|u| u == uid) {
            if idx.deleted.len() >= DELETED_REMEMBERED {
                idx.deleted.pop_front();
            }
            idx.deleted.push_back(uid.to_string());
        }
        idx.targets.get(key).is_some_and(|t| t.uid == uid) && Self::remove_from(&mut idx, key)
    }

    /// Removes a target (a reconciler's conclusion); true if it was there.
    pub fn remove(&self, key: &TargetKey) -> bool {
        Self::remove_from(&mut self.write(), key)
    }

    fn remove_from(idx: &mut Index, key: &TargetKey) -> bool {
        idx.settled.insert(key.clone());
        match idx.targets.remove(key) {
            Some(old) => {
                let client = old.selector.client_id.clone();
                if let Some(set) = idx.by_client.get_mut(&client) {
                    set.remove(key);
                    if set.is_empty() {
                        idx.by_client.remove(&client);
                    }
                }
                true
            }
            None => false,
        }
    }

    /// Holds a target until its reconciler registers it again (e.g. a receiver said 410).
    pub fn hold(&self, key: &TargetKey, reason: &str) {
        let mut idx = self.write();
        if let Some(t) = idx.targets.get(key) {
            let mut held = (**t).clone();
            held.held = Some(reason.to_string());
            idx.targets.insert(key.clone(), Arc::new(held));
        }
    }

    pub fn get(&self, key: &TargetKey) -> Option<Arc<Target>> {
        self.read().targets.get(key).cloned()
    }

    /// Every target that takes an event of this client, user and type, in key order.
    pub fn route(&self, client_id: &str, user_id: Option<&str>, ty: EventType) -> Vec<Arc<Target>> {
        let idx = self.read();
        idx.by_client
            .get(client_id)
            .into_iter()
            .flatten()
            .filter_map(|k| idx.targets.get(k))
            .filter(|t| t.selector.matches(client_id, user_id, ty))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object of `kind` that existed at start-up is registered (from the watch cache,
    /// ahead of its reconcile): events are routed to all of them from now on.
    pub fn mark_synced(&self, kind: Kind) {
        self.synced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind);
    }

    /// Whether every kind has been synced: until then ingest is not ready, since an event
    /// accepted earlier could miss a target that exists.
    pub fn is_synced(&self) -> bool {
        let s = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        Kind::ALL.iter().all(|k| s.contains(k))
    }

    pub fn keys(&self) -> Vec<TargetKey> {
        let mut k: Vec<_> = self.read().targets.keys().cloned().collect();
        k.sort();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_waits_until_every_kind_is_synced() {
        let r = Registry::new();
        r.mark_synced(Kind::Webhook);
        r.mark_synced(Kind::Ftp);
        // An ApiConnection that exists must get the events accepted after the restart.
        assert!(!r.is_synced());
        r.mark_synced(Kind::Api);
        assert!(r.is_synced());
    }

    fn target(
        ns: &str,
        name: &str,
        client: &str,
        users: Option<&[&str]>,
        events: &[EventType],
    ) -> Target {
        Target {
            key: TargetKey {
                kind: Kind::Webhook,
                namespace: ns.into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            generation: 1,
            selector: Selector {
                client_id: client.into(),
                user_ids: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
                events: events.iter().copied().collect(),
            },
            retry: RetryPolicy::default(),
            held: None,
            config: None,
        }
    }

    fn names(v: Vec<Arc<Target>>) -> Vec<String> {
        v.into_iter().map(|t| t.key.name.clone()).collect()
    }

    #[test]
    fn routes_by_client_user_and_type() {
        use EventType::*;
        let r = Registry::new();
        r.upsert(target(
            "a",
            "all-users",
            "dealer-1",
            None,
            &[VehicleProcessed, VehicleCreated],
        ));
        r.upsert(target(
            "a",
            "ana-only",
            "dealer-1",
            Some(&["u-ana"]),
            &[VehicleProcessed],
        ));
        r.upsert(target(
            "b",
            "other-client",
            "dealer-2",
            None,
            &[VehicleProcessed],
        ));
        r.upsert(target("a", "users", "dealer-1", None, &[UserCreated]));

        assert_eq!(
            names(r.route("dealer-1", Some("u-ana"), VehicleProcessed)),
            ["all-users", "ana-only"]
        );
        assert_eq!(
            names(r.route("dealer-1", Some("u-bob"), VehicleProcessed)),
            ["all-users"]
        );
        assert_eq!(
            names(r.route("dealer-1", None, VehicleProcessed)),
            ["all-users"]
        );
        assert_eq!(
            names(r.route("dealer-1", Some("u-ana"), VehicleCreated)),
            ["all-users"]
        );
        assert_eq!(names(r.route("dealer-1", None, UserCreated)), ["users"]);
        assert!(r.route("dealer-1", None, DataNew).is_empty());
        assert_eq!(
            names(r.route("dealer-2", Some("u-ana"), VehicleProcessed)),
            ["other-client"]
        );
        assert!(r.route("dealer-3", None, VehicleProcessed).is_empty());
    }

    #[test]
    fn upsert_replaces_and_moves_between_clients_and_remove_cleans_up() {
        use EventType::*;
        let r = Registry::new();
        r.upsert(target("a", "s", "dealer-1", None, &[VehicleProcessed]));
        r.upsert(target("a", "s", "dealer-2", None, &[VehicleProcessed]));
        assert_eq!(r.len(), 1);
        assert!(r.route("dealer-1", None, VehicleProcessed).is_empty());
        assert_eq!(r.route("dealer-2", None, VehicleProcessed).len(), 1);
        let key = r.keys()[0].clone();
        assert!(r.remove(&key));
        assert!(!r.remove(&key));
        assert!(r.is_empty());
        assert!(r.route("dealer-2", None, VehicleProcessed).is_empty());
    }

    #[test]
    fn preregistration_never_overrides_a_reconciler() {
        use EventType::*;
        let r = Registry::new();
        assert!(r.preregister(target("a", "s", "dealer-1", None, &[VehicleProcessed])));
        r.upsert(target("a", "s", "dealer-2", None, &[VehicleProcessed]));
        assert!(!r.preregister(target("a", "s", "dealer-1", None, &[VehicleProcessed])));
        assert_eq!(r.route("dealer-2", None, VehicleProcessed).len(), 1);
        let key = r.keys()[0].clone();
        r.remove(&key);
        assert!(!r.preregister(target("a", "s", "dealer-1", None, &[VehicleProcessed])));
        assert!(r.is_empty());
    }

    #[test]
    fn target_ids_round_trip_and_legacy_rows_follow_the_name() {
        let t = target("ns", "s", "c", None, &[]);
        let id = t.id();
        assert_eq!(id.to_string(), "webhooksubscription/ns/s/uid-s");
        assert_eq!(id.to_string().parse::<TargetId>(), Ok(id.clone()));
        assert!(id.is(&t));
        let legacy: TargetId = "webhooksubscription/ns/s".parse().unwrap();
        assert_eq!(legacy.uid, None);
        assert!(legacy.is(&t));
        let other: TargetId = "webhooksubscription/ns/s/uid-old".parse().unwrap();
        assert!(!other.is(&t));
        assert_eq!(
            "ftpconnection/a/b".parse::<TargetKey>().unwrap().kind,
            Kind::Ftp
        );
        for bad in [
            "",
            "x/a/b",
            "webhooksubscription/a",
            "webhooksubscription//b",
            "webhooksubscription/a/b/",
            "webhooksubscription/a/b/c/d",
        ] {
            assert!(bad.parse::<TargetId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_deleted_object_is_never_registered_again_but_its_successor_is() {
        let r = Registry::new();
        let mut old = target("a", "s", "dealer-1", None, &[EventType::VehicleProcessed]);
        old.uid = "uid-old".into();
        r.upsert(old.clone());
        let key = old.key.clone();
        let mut newer = old.clone();
        newer.uid = "uid-new".into();
        // A deletion of another uid leaves the registered object alone.
        assert!(!r.deleted(&key, "uid-other"));
        assert!(r.get(&key).is_some());
        assert!(r.deleted(&key, "uid-old"));
        assert!(r.get(&key).is_none());
        // A reconcile of the deleted object that finishes late changes nothing.
        r.upsert(old);
        assert!(r.get(&key).is_none());
        r.upsert(newer);
        assert_eq!(
            r.get(&key).map(|t| t.uid.clone()).as_deref(),
            Some("uid-new")
        );
    }
}
