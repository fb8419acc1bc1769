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

/// After a full list of `kind`: targets and queued deliveries of objects that are not in it
/// were deleted unseen (there is no finalizer to wait for the operator). With a watch
/// selector an object missing from the list may only have lost its labels: it is looked up,
/// and if it still exists it only stops being routed to, its deliveries kept for when it
/// matches again.
async fn after_list<K>(
    ctx: Arc<Context>,
    objects: reflector::Store<DeserializeGuard<K>>,
    kind: Kind,
    label: &'static str,
    scoped: bool,
) where
    K: super::Namespaced,
{
    let present: std::collections::HashSet<(String, String, String)> = objects
        .state()
        .iter()
        .filter_map(|o| {
            let m = o.meta();
            Some((m.namespace.clone()?, m.name.clone()?, m.uid.clone()?))
        })
        .collect();
    let listed = |key: &TargetKey, uid: Option<&str>| {
        present.iter().any(|(ns, name, u)| {
            *ns == key.namespace && *name == key.name && uid.is_none_or(|uid| uid == u)
        })
    };
    // What is routed or queued for objects the list does not hold.
    let mut missing: Vec<(TargetKey, Option<String>)> = ctx
        .registry
        .keys()
        .into_iter()
        .filter(|k| k.kind == kind)
        .filter_map(|k| {
            let uid = ctx.registry.get(&k).map(|t| t.uid.clone())?;
            (!listed(&k, Some(&uid))).then_some((k, Some(uid)))
        })
        .collect();
    if let Some(hook) = &ctx.on_delete {
        for id in hook.queued(kind) {
            if !listed(&id.key, id.uid.as_deref())
                && !missing.contains(&(id.key.clone(), id.uid.clone()))
            {
                missing.push((id.key, id.uid));
            }
        }
    }
    for (key, uid) in missing {
        if scoped && still_exists::<K>(&ctx, &key, uid.as_deref()).await {
            ctx.metrics.forget(&key);
            if ctx.registry.remove(&key) {
                tracing::info!(kind = label, namespace = %key.namespace, name = %key.name, "no longer matches the watch selector: not routed to any more");
            }
            continue;
        }
        match uid {
            Some(uid) => super::deleted(&ctx, key, &uid).await,
            // Rows from before rows carried uids follow the name.
            None => super::forget(&ctx, key).await,
        }
    }
}

/// Whether object `key` (of `uid`, if given) exists; unsure counts as yes (nothing dropped).
async fn still_exists<K>(ctx: &Context, key: &TargetKey, uid: Option<&str>) -> bool
where
    K: super::Namespaced,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &key.namespace);
    match api.get_metadata_opt(&key.name).await {
        Ok(Some(o)) => uid.is_none_or(|u| o.metadata.uid.as_deref() == Some(u)),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, error = %e, "could not tell a deletion from a label change");
            true
        }
    }
}

/// The watch reported object `uid` gone. With a watch selector that may mean its labels no
/// longer match: if it still exists, it only stops being routed to.
async fn gone_from_watch<K>(
    ctx: Arc<Context>,
    key: TargetKey,
    uid: String,
    scoped: bool,
    label: &'static str,
) where
    K: super::Namespaced,
{
    if scoped && still_exists::<K>(&ctx, &key, Some(&uid)).await {
        ctx.metrics.forget(&key);
        if ctx.registry.remove(&key) {
            tracing::info!(kind = label, namespace = %key.namespace, name = %key.name, "no longer matches the watch selector: not routed to any more");
        }
        return;
    }
    super::deleted(&ctx, key, &uid).await;
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
    let scoped = ctx.settings.watch_selector.is_some();
    let (on_list, on_delete) = (ctx.clone(), ctx.clone());
    let listed_store = store.clone();
    // managedFields are most of a cached object's size and nothing here reads them (the
    // scale bench's 11,000 resources: peak RSS 94 MiB without them, 167 MiB with).
    let objects = reflector::reflector(
        writer,
        watcher(Api::<DeserializeGuard<K>>::all(client.clone()), watch)
            .modify(|o| o.managed_fields_mut().clear()),
    )
    // The reflector has applied each event to the store before this sees it.
    .inspect(move |ev| match ev {
        Ok(watcher::Event::InitDone) => {
            let _ = listed_tx.send(true);
            // A (re)list reports no Delete for what went meanwhile (or before a restart).
            tokio::spawn(after_list(
                on_list.clone(),
                listed_store.clone(),
                kind,
                label,
                scoped,
            ));
        }
        Ok(watcher::Event::Delete(o)) => {
            let m = o.meta();
            if let (Some(ns), Some(name), Some(uid)) = (&m.namespace, &m.name, &m.uid) {
                let key = TargetKey {
                    kind,
                    namespace: ns.clone(),
                    name: name.clone(),
                };
                tokio::spawn(gone_from_watch::<K>(
                    on_delete.clone(),
                    key,
                    uid.clone(),
                    scoped,
                    label,
                ));
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
        )
        .modify(|n| n.managed_fields_mut().clear()),
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
        )
        .modify(|s| s.managed_fields_mut().clear()),
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
    // Every reconcile of every kind passes here: counted once, by its result.
    let metrics = ctx.metrics.clone();
    let mut reconcile = reconcile;
    let counted = move |obj: Arc<DeserializeGuard<K>>, kctx: Arc<KindContext>| {
        let fut = reconcile(obj, kctx);
        let metrics = metrics.clone();
        async move {
            let result = fut.await;
            metrics.reconciled(label, result.as_ref().err().map(Error::label));
            result
        }
    };
    let writers = ctx.settings.writers.as_ref().map(|w| w.changes());
    let kctx = Arc::new(KindContext {
        shared: ctx,
        namespaces: ns_reader,
        secrets: secret_reader,
    });
    let mut ctrl = ctrl;
    // Replicas joined or left: the statuses this replica writes changed, and the last change
    // of one may not be on it yet (its former writer skipped or died).
    if let Some(members) = writers {
        ctrl = ctrl.reconcile_all_on(futures::stream::unfold(members, |mut m| async move {
            m.changed().await.ok().map(|()| ((), m))
        }));
    }
    if let Some(config_map_names) = reads.config_maps {
        // Metadata only, as for Secrets: the reconcile reads the one it needs.
        let (_, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
        let config_maps = reflector::reflector(
            cm_writer,
            watcher(
                Api::<PartialObjectMeta<ConfigMap>>::all(client),
                watcher::Config::default(),
            )
            .modify(|c| c.managed_fields_mut().clear()),
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
    .run(counted, error_policy, kctx)
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %crate::status::redact(&e.to_string()), kind = label, "reconcile");
        }
    })
    .await;
}
