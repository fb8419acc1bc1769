//! The reconcilers, one per kind, and what they share: context, errors and the one error
//! policy. Each reconcile runs validate → resolve → register (routing) → status.

pub mod apiconnection;
pub mod ftp;
pub mod replay;
mod runner;
pub mod secrets;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::Semaphore;

use futures::future::BoxFuture;

use crate::routing::{Registry, TargetKey};
use crate::ssrf::TargetGuard;
use crate::status::{Check, Tri};
use crate::tenancy::AllowedClients;

/// Why a reconcile failed. Problems a user can fix (a missing Secret, a bad template) are
/// not errors: they become conditions. Errors are for the API server and the like.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("spec.replay: {0}")]
    Replay(String),
}

impl Error {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingField(_) => "missing_field",
            Error::Replay(_) => "replay",
        }
    }
}

/// Operator-wide settings the reconcilers need.
#[derive(Clone, Debug)]
pub struct Settings {
    pub guard: TargetGuard,
    /// How often a healthy FTP connection is probed again.
    pub probe_interval: Duration,
    /// Resolution of webhook targets is re-checked this often (DNS may change).
    pub recheck_interval: Duration,
    /// Label selector (`--secret-selector`): only Secrets matching it are watched and read.
    pub secret_selector: Option<String>,
    /// Label selector (`--watch-label-selector`): only WebhookSubscriptions and
    /// FtpConnections matching it are watched, reconciled and routed to; others belong to
    /// another installation.
    pub watch_selector: Option<String>,
    /// Carries out `spec.replay` (none: the field is ignored).
    pub replay: Option<replay::ReplayHook>,
    /// The platform's operational webhook, told when a resource is suspended.
    pub ops: Option<Arc<crate::status::ops::OpsWebhook>>,
    /// With replicas: which of them writes each resource's status (none: this one, all).
    pub writers: Option<Arc<dyn crate::status::StatusWriters>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            guard: TargetGuard::default(),
            probe_interval: Duration::from_secs(300),
            recheck_interval: Duration::from_secs(300),
            secret_selector: None,
            watch_selector: None,
            replay: None,
            ops: None,
            writers: None,
        }
    }
}

/// Checks a label selector with the API server (one metadata list of at most one `K`), so a
/// typo stops the start instead of failing every watch.
pub async fn check_selector<K>(client: &Client, selector: &str) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    api.list_metadata(&kube::api::ListParams::default().labels(selector).limit(1))
        .await
        .map(|_| ())
}

/// What happens to the queued deliveries of objects that are gone (the dispatcher drops
/// them). There is no finalizer: deletions are seen on the watch, and a full list catches
/// those that happened while nobody watched.
pub trait Forget: Send + Sync {
    /// Object `uid` named `key` was deleted (`None`: every object of that name is done with,
    /// e.g. its namespace stopped allowing the client).
    fn object(&self, key: TargetKey, uid: Option<String>) -> BoxFuture<'static, ()>;
    /// The objects of `kind` that have deliveries queued.
    fn queued(&self, kind: crate::routing::Kind) -> Vec<crate::routing::TargetId>;
}

pub type DeleteHook = Arc<dyn Forget>;

/// State shared by both controllers.
pub struct Context {
    pub on_delete: Option<DeleteHook>,
    pub client: Client,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    pub recorder: Recorder,
    pub probes: ftp::ProbeCache,
    /// Secrets read by reconciles, by namespace/name, valid while their resourceVersion is.
    pub secret_values: secrets::SecretCache,
    /// Bounds concurrent FTP login probes across all connections.
    pub probe_permits: Semaphore,
    /// Consecutive reconcile errors per object, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `spec.replay` carried out by this process, per object uid.
    replays_done: Mutex<HashMap<String, crate::api::LastReplay>>,
}

impl Context {
    pub fn new(
        client: Client,
        registry: Arc<Registry>,
        settings: Settings,
        on_delete: Option<DeleteHook>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "vehicle-connect".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Context {
            on_delete,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            registry,
            settings,
            probes: ftp::ProbeCache::default(),
            secret_values: secrets::SecretCache::default(),
            probe_permits: Semaphore::new(64),
            failures: Mutex::new(HashMap::new()),
            metrics,
            replays_done: Mutex::default(),
        })
    }

    fn reset_failures(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Publishes a Kubernetes Event on `obj`; failures to publish are logged, not fatal.
    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        check: &Check,
        action: &str,
    ) {
        let ev = Event {
            type_: if check.status == Tri::True {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: check.reason.clone(),
            note: Some(check.message.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish event");
        }
    }
}

/// Reconciles in flight per controller: enough to keep a local API server busy, bounded so
/// that 10,000 objects at start-up do not flood it (or the operator's memory).
pub fn controller_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(32)
}

/// Per-controller context: the shared one plus that controller's namespace cache.
pub struct KindContext {
    pub shared: Arc<Context>,
    pub namespaces: Store<Namespace>,
    /// Secret metadata (never values): tells whether a cached value is current.
    pub secrets: Store<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>>,
}

impl KindContext {
    /// The clients `ns` allows, from the watch cache or, before it has synced, the API.
    pub async fn allowed_clients(&self, ns: &str) -> Result<AllowedClients, Error> {
        if let Some(n) = self.namespaces.get(&ObjectRef::new(ns)) {
            return Ok(AllowedClients::of(&n));
        }
        let api: Api<Namespace> = Api::all(self.shared.client.clone());
        Ok(api
            .get_opt(ns)
            .await?
            .map(|n| AllowedClients::of(&n))
            .unwrap_or(AllowedClients::Only(Default::default())))
    }

    /// `ClientNotAllowed` when `ns` may not receive `client`'s events.
    pub async fn client_refused(
        &self,
        ns: &str,
        client: &str,
    ) -> Result<Option<crate::status::Check>, Error> {
        if self.allowed_clients(ns).await?.allows(client) {
            return Ok(None);
        }
        Ok(Some(crate::status::Check::fail(
            "ClientNotAllowed",
            format!(
                "namespace {ns:?} is not allowed client {client:?}; a cluster admin adds it to the namespace annotation {}",
                crate::api::CLIENTS_ANNOTATION
            ),
        )))
    }

    /// The guard's refusal of the address `url` (of spec field `field`), if any, and
    /// whether it is only unresolvable for now (hold the events) rather than forbidden.
    pub async fn address_refused(
        &self,
        field: &str,
        url: &url::Url,
    ) -> Option<(crate::status::Check, bool)> {
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        let e = (self.shared.settings.guard)
            .check_host(host, port, std::time::Duration::from_secs(5))
            .await
            .err()?;
        let unresolvable = matches!(e, crate::ssrf::TargetError::Unresolvable { .. });
        Some((
            crate::status::Check::fail(e.reason(), format!("{field}: {e}")),
            unresolvable,
        ))
    }
}

fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// The one error policy: exponential backoff per object, 1 s doubling to 5 min.
pub fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<KindContext>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let key = object_key(obj.as_ref());
    let n = ctx
        .shared
        .failures
        .lock()
        .map(|mut f| {
            let n = f.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        })
        .unwrap_or(1);
    let delay =
        Duration::from_secs(1u64 << n.min(9).saturating_sub(1)).min(Duration::from_secs(300));
    // API errors may quote the object (its URL, say): redacted like every shown message.
    let m = obj.meta();
    tracing::warn!(kind = %K::kind(&()), namespace = m.namespace.as_deref().unwrap_or_default(), name = m.name.as_deref().unwrap_or_default(), error = %crate::status::redact(&err.to_string()), error_kind = err.label(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The last step of every apply: registers (or removes) the target, writes the reconciler's
/// conditions when they changed, publishes an Event for a problem or a recovery, and
/// returns when to look again. `checks` are (condition type, check), `Ready` first.
pub(crate) async fn conclude<K>(
    ctx: &KindContext,
    api: &Api<K>,
    obj: &K,
    target: (TargetKey, Option<crate::routing::Target>),
    old: Observed<'_>,
    (checks, receiver_gone): (&[(&str, &Check)], Option<crate::api::webhook::ReceiverGone>),
    requeue: Option<Duration>,
) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let (key, registered) = target;
    match registered {
        Some(t) => ctx.shared.registry.upsert(t),
        // The namespace no longer allows the client: what was queued for it must never be
        // delivered, whatever the resource says next.
        None if checks
            .first()
            .is_some_and(|(_, c)| c.reason == "ClientNotAllowed") =>
        {
            forget(&ctx.shared, key.clone()).await;
        }
        None => {
            ctx.shared.registry.remove(&key);
        }
    }
    let Observed {
        conditions: old_conditions,
        generation: old_generation,
        receiver_gone: old_gone,
    } = old;
    let generation = obj.meta().generation;
    let kstatus = checks
        .first()
        .and_then(|(_, ready)| crate::status::kstatus_conditions(ready));
    let conditions: Vec<_> = checks
        .iter()
        .map(|(t, c)| (*t, *c))
        .chain(kstatus.as_ref().map(|(t, c)| (*t, c)))
        .map(|(t, c)| c.to_condition(t, generation, old_conditions))
        .collect();
    let changed = conditions
        .iter()
        .any(|c| crate::status::transitioned(old_conditions, c));
    // A Reconciling or Stalled condition that no longer applies goes with this apply.
    let dropped = [crate::status::RECONCILING, crate::status::STALLED]
        .iter()
        .any(|t| {
            crate::status::find(old_conditions, t).is_some()
                && !conditions.iter().any(|c| c.type_ == *t)
        });
    let stale = old_generation != generation
        || dropped
        || old_gone != receiver_gone.as_ref()
        || conditions
            .iter()
            .any(|c| crate::status::differs(old_conditions, c));
    // With replicas, one of them writes this status, publishes its Events and tells the ops
    // webhook; the others only keep their routing current.
    let writes = crate::status::writes(ctx.shared.settings.writers.as_ref(), &key);
    if stale && writes {
        let st = crate::status::ReconcilerStatus {
            observed_generation: generation,
            conditions,
            receiver_gone,
        };
        crate::status::apply(api, obj, crate::status::RECONCILER_MANAGER, &st).await?;
        ctx.shared.metrics.status_written("conditions");
    }
    if let Some((_, ready)) = checks.first() {
        ctx.shared
            .metrics
            .ready(&key, ready.status.as_str(), &ready.reason);
    }
    if let Some((_, ready)) = checks.first()
        && changed
        && writes
    {
        let was_suspended = crate::status::find(old_conditions, crate::status::READY)
            .is_some_and(|c| c.reason == "Suspended");
        if let Some(ops) = &ctx.shared.settings.ops {
            let suspended = ready.reason == "Suspended";
            if suspended && !was_suspended {
                ops.signal(crate::status::ops::SignalType::Suspended, &key, ready);
            } else if was_suspended && !suspended {
                ops.signal(crate::status::ops::SignalType::Resumed, &key, ready);
            }
        }
        if crate::status::worth_an_event(old_conditions, ready) {
            ctx.shared.publish(obj, ready, "Reconcile").await;
        }
        tracing::info!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, ready = ?ready.status, reason = %ready.reason, "status changed");
    }
    reconciled(ctx, obj);
    Ok(requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// What the object's status showed before this reconcile.
pub(crate) struct Observed<'a> {
    pub conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    pub generation: Option<i64>,
    /// A WebhookSubscription's 410 hold; other kinds have none.
    pub receiver_gone: Option<&'a crate::api::webhook::ReceiverGone>,
}

/// Called by reconcilers after a successful pass.
pub fn reconciled<K: Resource<DynamicType = ()>>(ctx: &KindContext, obj: &K) {
    ctx.shared.reset_failures(&object_key(obj));
}

/// The fields of a spec that select events, the same in every kind.
pub struct Selects<'a> {
    pub client_id: &'a str,
    pub user_ids: Option<&'a [String]>,
    pub events: &'a [crate::api::EventType],
}

/// An object's target as its spec alone describes it, held until its reconciler has
/// resolved it: what start-up registers from the watch cache so that no event misses it.
pub fn provisional_target<K: Resource<DynamicType = ()>>(
    key: TargetKey,
    obj: &K,
    selects: Selects<'_>,
    retry: crate::api::RetryPolicy,
) -> crate::routing::Target {
    crate::routing::Target {
        key,
        uid: obj.meta().uid.clone().unwrap_or_default(),
        generation: obj.meta().generation.unwrap_or_default(),
        selector: crate::routing::Selector {
            client_id: selects.client_id.to_string(),
            user_ids: selects.user_ids.map(|u| u.iter().cloned().collect()),
            events: selects.events.iter().copied().collect(),
        },
        retry,
        held: Some("Pending".into()),
        config: None,
    }
}

/// Name and namespace of an object, or an error naming the missing part.
/// The text of `key` (default `default_key`) in ConfigMap `r` of `ns`. Outer `Err` is an API
/// error; inner `Err` a check to report (`ConfigMapNotFound`, `ConfigMapInvalid`).
pub async fn config_map_value(
    ctx: &KindContext,
    ns: &str,
    r: &crate::api::ConfigMapKeyRef,
    default_key: &str,
    field: &str,
) -> Result<Result<String, crate::status::Check>, kube::Error> {
    use crate::status::Check;
    let key = r.key_or(default_key);
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(ctx.shared.client.clone(), ns);
    let Some(cm) = api.get_opt(&r.name).await? else {
        return Ok(Err(Check::fail(
            "ConfigMapNotFound",
            format!(
                "ConfigMap {:?} ({field}) not found in namespace {ns:?}; create it there",
                r.name
            ),
        )));
    };
    match cm.data.and_then(|mut d| d.remove(key)) {
        Some(v) => Ok(Ok(v)),
        None => Ok(Err(Check::fail(
            "ConfigMapInvalid",
            format!("ConfigMap {:?} ({field}) has no key {key:?}", r.name),
        ))),
    }
}

pub fn name_ns<K: ResourceExt>(obj: &K) -> Result<(String, String), Error> {
    let ns = obj
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    Ok((obj.name_any(), ns))
}

/// A namespaced kind the operator reads (through `DeserializeGuard` too).
pub(crate) trait Namespaced:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// Removes a target and the queued deliveries of every object of its name (its namespace no
/// longer allows its client).
pub async fn forget(ctx: &Context, key: TargetKey) {
    ctx.metrics.forget(&key);
    if ctx.registry.remove(&key) {
        tracing::info!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, "target removed");
    }
    if let Some(hook) = &ctx.on_delete {
        hook.object(key, None).await;
    }
}

/// Object `uid` named `key` was deleted: its target and queued deliveries go, and a reconcile
/// of it still running cannot register it again.
pub async fn deleted(ctx: &Context, key: TargetKey, uid: &str) {
    if ctx.registry.deleted(&key, uid) {
        tracing::info!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, "deleted: target removed");
    }
    // Unless a newer object of the name is registered: its state is the one counted.
    if ctx.registry.get(&key).is_none() {
        ctx.metrics.forget(&key);
    }
    if let Some(hook) = &ctx.on_delete {
        hook.object(key, Some(uid.to_string())).await;
    }
}

/// Every reconcile goes through here. The operator adds no finalizer (deletions are seen on
/// the watch, and missed ones at the next full list), so deleting never waits for it, even
/// when it is not installed. Objects still carrying the finalizer of earlier versions lose
/// it: at once when they are being deleted, else on their first reconcile.
pub(crate) async fn without_finalizer<K, F, Fut>(
    ctx: &KindContext,
    obj: Arc<K>,
    key: TargetKey,
    apply: F,
) -> Result<Action, Error>
where
    K: Namespaced + replay::Replays,
    F: FnOnce(Arc<K>) -> Fut,
    Fut: std::future::Future<Output = Result<Action, Error>>,
{
    let legacy = obj
        .meta()
        .finalizers
        .iter()
        .flatten()
        .position(|f| f == crate::api::FINALIZER);
    if obj.meta().deletion_timestamp.is_some() {
        if let Some(uid) = obj.meta().uid.as_deref() {
            deleted(&ctx.shared, key.clone(), uid).await;
        }
        if let Some(i) = legacy {
            remove_finalizer::<K>(ctx, &key.namespace, &key.name, i).await?;
        }
        return Ok(Action::await_change());
    }
    if let Some(i) = legacy {
        remove_finalizer::<K>(ctx, &key.namespace, &key.name, i).await?;
    }
    let action = apply(obj.clone()).await?;
    replay::carry_out(ctx, obj.as_ref(), &key).await?;
    Ok(action)
}

/// Removes our finalizer at index `i` (JSON patch, tested at that index so that a concurrent
/// change to the list is not clobbered); through `DeserializeGuard`, so it works on objects
/// the types cannot read too.
async fn remove_finalizer<K>(ctx: &KindContext, ns: &str, name: &str, i: usize) -> Result<(), Error>
where
    K: Namespaced,
{
    let path =
        json_patch::jsonptr::PointerBuf::from_tokens(["metadata", "finalizers", &i.to_string()]);
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: path.clone(),
            value: crate::api::FINALIZER.into(),
        }),
        json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path }),
    ]);
    let api: Api<kube::core::DeserializeGuard<K>> = Api::namespaced(ctx.shared.client.clone(), ns);
    match api
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(kind = %K::kind(&()), %name, namespace = %ns, "finalizer of an earlier version removed");
            Ok(())
        }
        // Already gone.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An object the types cannot read (written under another schema, or with a value out of
/// range for them) is skipped, but never blocks its own deletion: once it is being deleted,
/// its target is forgotten and the finalizer of an earlier version removed.
pub(crate) async fn unreadable<K>(
    ctx: &KindContext,
    invalid: &kube::core::error_boundary::InvalidObject,
    key: impl Fn(&str, &str) -> TargetKey,
) -> Result<Action, Error>
where
    K: Namespaced,
{
    let meta = &invalid.metadata;
    let kind = K::kind(&());
    tracing::warn!(%kind, name = ?meta.name, namespace = ?meta.namespace, error = %crate::status::redact(&invalid.error), "unreadable object skipped");
    if meta.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let ns = meta
        .namespace
        .as_deref()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = meta
        .name
        .as_deref()
        .ok_or(Error::MissingField("metadata.name"))?;
    if let Some(uid) = meta.uid.as_deref() {
        deleted(&ctx.shared, key(ns, name), uid).await;
    }
    if let Some(i) = meta
        .finalizers
        .iter()
        .flatten()
        .position(|f| f == crate::api::FINALIZER)
    {
        remove_finalizer::<K>(ctx, ns, name, i).await?;
    }
    Ok(Action::await_change())
}

/// Runs the controllers of every kind until SIGTERM or Ctrl-C.
pub async fn run(
    client: Client,
    registry: Arc<Registry>,
    settings: Settings,
    on_delete: Option<DeleteHook>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let ctx = Context::new(client, registry, settings, on_delete, metrics);
    tokio::join!(
        webhook::run(ctx.clone()),
        ftp::run(ctx.clone()),
        apiconnection::run(ctx)
    );
}
