//! What both controllers share: the main watch (tolerant of unreadable objects), the
//! triggers from Secrets (metadata only) and Namespaces, the caches the reconcilers read,
//! the concurrency bound and the error policy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::{Context, Error, KindContext, controller_config, error_policy};

/// Runs the controller of kind `K` until SIGTERM or Ctrl-C. `secret_names` lists the
/// Secrets an object reads (a change to one re-reconciles it).
pub async fn run<K, R, F>(
    ctx: Arc<Context>,
    label: &'static str,
    secret_names: fn(&K) -> Vec<String>,
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
    let ctrl = Controller::new(
        Api::<DeserializeGuard<K>>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    );
    let store = ctrl.store();
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
        watcher(Api::<PartialObjectMeta<Secret>>::all(client), secret_watch),
    )
    .default_backoff()
    .touched_objects();
    let by_secret = store.clone();
    let by_ns = store;
    let kctx = Arc::new(KindContext {
        shared: ctx,
        namespaces: ns_reader,
        secrets: secret_reader,
    });
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
