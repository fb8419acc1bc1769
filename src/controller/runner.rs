//! What both controllers share: the main watch (tolerant of unreadable objects), the
//! triggers from Secrets (metadata only) and Namespaces, the caches the reconcilers read,
//! the concurrency bound and the error policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Context, Error, KindContext, controller_config, error_policy};
use crate::routing::{Kind, Registry, Target, TargetKey};
use crate::tenancy::AllowedClients;

/// Once the first list of `K` and of Namespaces is in, registers every object the cache
/// holds (held until its reconcile resolves it) and marks the kind synced: readiness waits
/// for that, so an event accepted right after a restart reaches every target that exists,
/// however long the reconciles (Secrets, FTP login probes) take.
async fn register_existing<K>(
    mut listed: tokio::sync::watch::Receiver<bool>,
    objects: reflector::Store<DeserializeGuard<K>>,
    namespaces: reflector::Store<Namespace>,
    registry: Arc<Registry>,
    (label, kind): (&'static str, Kind),
    provisional: fn(&K) -> Option<Target>,
) where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    if listed.wait_for(|l| *l).await.is_err() {
        tracing::error!(kind = label, "watch ended before the first list");
        return;
    }
    // Only this task waits on the namespace cache, so its wake-up cannot be taken.
    if namespaces.wait_until_ready().await.is_err() {
        tracing::error!(kind = label, "namespace cache dropped before it was ready");
        return;
    }
    let started = std::time::Instant::now();
    let mut registered = 0;
    for o in objects.state() {
        let Ok(k) = &o.0 else { continue };
        if k.meta().deletion_timestamp.is_some() {
            continue;
        }
        let Some(target) = provisional(k) else {
            continue;
        };
        let allowed = namespaces
            .get(&ObjectRef::new(&target.key.namespace))
            .map(|n| AllowedClients::of(&n))
            .unwrap_or(AllowedClients::Only(Default::default()));
        if allowed.allows(&target.selector.client_id) && registry.preregister(target) {
            registered += 1;
        }
    }
    registry.mark_synced(kind);
    tracing::info!(kind = label, registered, elapsed = ?started.elapsed(), "existing objects registered for routing");
}

/// A hash of what a reconcile reads from the object itself: the spec (by its generation,
/// which deletion also bumps), labels, annotations (receiver gone, resume), finalizers and the
/// deletion mark. Never `None`, so every other change (status) is filtered out.
fn reconcile_inputs<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let m = obj.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.generation.hash(&mut h);
    m.labels.hash(&mut h);
    m.annotations.hash(&mut h);
    m.finalizers.hash(&mut h);
    m.deletion_timestamp.as_ref().map(|t| t.0).hash(&mut h);
    Some(h.finish())
}

/// Stops routing to those of `keys` the watch no longer holds: with a watch selector, an
/// object whose labels stopped matching is gone from it (as one deleted without our finalizer
/// is). Its queued deliveries stay, for when it matches again.
fn forget_unwatched<K>(
    registry: &Registry,
    objects: &reflector::Store<DeserializeGuard<K>>,
    keys: impl IntoIterator<Item = TargetKey>,
    label: &str,
) where
    K: Resource<DynamicType = ()> + Clone,
{
    for key in keys {
        let watched = objects
            .get(&ObjectRef::new(&key.name).within(&key.namespace))
            .is_some();
        if !watched && registry.remove(&key) {
            tracing::info!(kind = label, target = %key, "no longer matches the watch selector: not routed to any more");
        }
    }
}

/// What an object reads besides itself, by name in its namespace: a change to one
/// re-reconciles it.
pub struct Reads<K> {
    pub secrets: fn(&K) -> Vec<String>,
    /// `None` for kinds that read no ConfigMap (no ConfigMap watch is started for them).
    pub config_maps: Option<fn(&K) -> Vec<String>>,
}

/// Runs the controller of kind `K` until SIGTERM or Ctrl-C. `reads` lists the Secrets (and
/// ConfigMaps) an object reads; `provisional` describes an object's target from its spec
/// alone, registered at start-up before any reconcile.
pub async fn run<K, R, F>(
    ctx: Arc<Context>,
    (label, kind): (&'static str, Kind),
    reads: Reads<K>,
    provisional: fn(&K) -> Option<Target>,
    reconcile: R,
) where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    R: FnMut(Arc<DeserializeGuard<K>>, Arc<KindContext>) -> F + Send + 'static,
    F: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let client = ctx.client.clone();
    // Our own reflector, so that the end of the first list can be seen: a second waiter on
    // the controller's store readiness would take its wake-up from the controller.
    let (store, writer) = reflector::store::<DeserializeGuard<K>>();
    let (listed_tx, listed) = tokio::sync::watch::channel(false);
    // With --watch-label-selector, objects without the labels are another installation's:
    // never listed, reconciled nor routed to.
    let mut watch = watcher::Config::default().any_semantic();
    if let Some(sel) = &ctx.settings.watch_selector {
        watch = watch.labels(sel);
    }
    let scoped = ctx
        .settings
        .watch_selector
        .is_some()
        .then(|| (ctx.registry.clone(), store.clone()));
    let objects = reflector::reflector(
        writer,
        watcher(Api::<DeserializeGuard<K>>::all(client.clone()), watch),
    )
    // The reflector has applied each event to the store before this sees it.
    .inspect(move |ev| match (ev, &scoped) {
        (Ok(watcher::Event::InitDone), scoped) => {
            let _ = listed_tx.send(true);
            // A relist (after a broken watch) reports no Delete for what left meanwhile.
            if let Some((registry, objects)) = scoped {
                let ours = registry.keys().into_iter().filter(|k| k.kind == kind);
                forget_unwatched(registry, objects, ours, label);
            }
        }
        // A deletion through our finalizer has a deletionTimestamp and was cleaned up already.
        (Ok(watcher::Event::Delete(o)), Some((registry, objects)))
            if o.meta().deletion_timestamp.is_none() =>
        {
            if let (Some(ns), Some(name)) = (&o.meta().namespace, &o.meta().name) {
                let key = TargetKey {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                };
                forget_unwatched(registry, objects, [key], label);
            }
        }
        _ => {}
    })
    .default_backoff()
    .applied_objects()
    // Status writes (the delivery counters, many a second under load) would each trigger a
    // reconcile that changes nothing; only what a reconcile reads passes.
    .predicate_filter(reconcile_inputs, Default::default());
    let ctrl = Controller::for_stream(objects, store.clone());
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let namespaces = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    // Only metadata: the operator never caches Secret values from a watch.
    // With --secret-selector, only the selected Secrets are watched (and only they are read).
    let (secret_reader, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
    let mut secret_watch = watcher::Config::default();
    if let Some(sel) = &ctx.settings.secret_selector {
        secret_watch = secret_watch.labels(sel);
    }
    let secrets = reflector::reflector(
        secret_writer,
        watcher(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            secret_watch,
        ),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(register_existing(
        listed,
        store.clone(),
        ns_reader.clone(),
        ctx.registry.clone(),
        (label, kind),
        provisional,
    ));
    let by_secret = store.clone();
    let by_config_map = store.clone();
    let by_ns = store;
    let secret_names = reads.secrets;
    let kctx = Arc::new(KindContext {
        shared: ctx,
        namespaces: ns_reader,
        secrets: secret_reader,
    });
    let mut ctrl = ctrl;
    if let Some(config_map_names) = reads.config_maps {
        // Metadata only, as for Secrets: the reconcile reads the one it needs.
        let (_, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
        let config_maps = reflector::reflector(
            cm_writer,
            watcher(
                Api::<PartialObjectMeta<ConfigMap>>::all(client),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .touched_objects();
        ctrl = ctrl.watches_stream(config_maps, move |c: PartialObjectMeta<ConfigMap>| {
            let (ns, name) = (c.namespace().unwrap_or_default(), c.name_any());
            by_config_map
                .state()
                .into_iter()
                .filter(|o| o.namespace().as_deref() == Some(&*ns))
                .filter(|o| {
                    o.0.as_ref()
                        .is_ok_and(|k| config_map_names(k).contains(&name))
                })
                .map(|o| ObjectRef::from_obj(o.as_ref()))
                .collect::<Vec<_>>()
        });
    }
    ctrl.watches_stream(secrets, move |s: PartialObjectMeta<Secret>| {
        let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
        by_secret
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(&*ns))
            .filter(|o| o.0.as_ref().is_ok_and(|k| secret_names(k).contains(&name)))
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect::<Vec<_>>()
    })
    .watches_stream(namespaces, move |n: Namespace| {
        let ns = n.name_any();
        by_ns
            .state()
            .into_iter()
            .filter(|o| o.namespace().as_deref() == Some(&*ns))
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect::<Vec<_>>()
    })
    .with_config(controller_config())
    .shutdown_on_signal()
    .run(reconcile, error_policy, kctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %crate::status::redact(&e.to_string()), kind = label, "reconcile");
        }
    })
    .await;
}
