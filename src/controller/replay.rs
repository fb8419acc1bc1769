//! `spec.replay` from Git or kubectl: after a successful reconcile the window is replayed to
//! the registered target, once per `replay.id`. The id done is recorded in
//! `status.lastReplay` (under its own field manager), so neither a re-reconcile nor an
//! operator restart replays it again; a new id does. The replay itself is the management
//! API's (the same selection, bound and order), reached through [`Replay`].

use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};

use super::{Error, KindContext, Namespaced};
use crate::api::{LastReplay, ReplaySpec};
use crate::manage::replay::{Replayed, Window};
use crate::routing::{Target, TargetKey};

/// Field manager of `status.lastReplay`.
pub const REPLAY_MANAGER: &str = "vehicle-connect-replay";

/// Queues a window again for a registered target (the dispatcher's side).
pub trait Replay: Send + Sync {
    fn replay(
        &self,
        target: Arc<Target>,
        window: Window,
    ) -> BoxFuture<'static, Result<Replayed, String>>;
}

/// The replayer the reconcilers use; none in setups without delivery (some tests).
#[derive(Clone)]
pub struct ReplayHook(pub Arc<dyn Replay>);

impl std::fmt::Debug for ReplayHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayHook")
    }
}

/// A kind with `spec.replay` and `status.lastReplay`.
pub trait Replays {
    fn replay_spec(&self) -> Option<&ReplaySpec>;
    fn last_replay(&self) -> Option<&LastReplay>;
}

macro_rules! replays {
    ($($k:ty),*) => {$(
        impl Replays for $k {
            fn replay_spec(&self) -> Option<&ReplaySpec> {
                self.spec.replay.as_ref()
            }
            fn last_replay(&self) -> Option<&LastReplay> {
                self.status.as_ref().and_then(|s| s.last_replay.as_ref())
            }
        }
    )*};
}
replays!(
    crate::api::WebhookSubscription,
    crate::api::FtpConnection,
    crate::api::ApiConnection
);

fn ms(t: &Time) -> u64 {
    u64::try_from(t.0.as_millisecond()).unwrap_or(0)
}

fn time(ms: u64) -> Time {
    Time(
        Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// Carries out `obj`'s `spec.replay` if its id has not been carried out yet and its target
/// is registered (else a later reconcile does).
pub(crate) async fn carry_out<K>(ctx: &KindContext, obj: &K, key: &TargetKey) -> Result<(), Error>
where
    K: Namespaced + Replays,
{
    let Some(spec) = obj.replay_spec() else {
        return Ok(());
    };
    let Some(hook) = &ctx.shared.settings.replay else {
        return Ok(());
    };
    let uid = obj.uid().unwrap_or_default();
    if obj.last_replay().is_some_and(|l| l.id == spec.id) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    // Carried out by this process, but its status not written or not seen yet (the cache
    // that triggered this reconcile may predate the write): written again, not replayed.
    let remembered = ctx
        .shared
        .replays_done
        .lock()
        .ok()
        .and_then(|d| d.get(&uid).filter(|l| l.id == spec.id).cloned());
    if let Some(last) = remembered {
        return write(&api, obj, &last).await;
    }
    let Some(target) = ctx.shared.registry.get(key).filter(|t| t.uid == uid) else {
        return Ok(());
    };
    let since_ms = ms(&spec.since);
    let until_ms = spec
        .until
        .as_ref()
        .map_or_else(crate::delivery::dispatcher::now_ms, ms);
    let (queued, message) = if until_ms < since_ms {
        (
            0,
            Some("nothing replayed: until is before since".to_owned()),
        )
    } else {
        let window = Window {
            since_ms,
            until_ms,
            types: spec.types.clone().unwrap_or_default(),
            request: Some(spec.id.clone()),
        };
        let r = hook.0.replay(target, window).await.map_err(Error::Replay)?;
        let mut notes = Vec::new();
        if r.too_old > 0 {
            notes.push(format!(
                "{} event(s) older than retry.maxAgeSeconds were not queued",
                r.too_old
            ));
        }
        if let (true, Some(at)) = (r.backlog_full, &r.stopped_at) {
            notes.push(format!(
                "stopped at an event accepted at {at}: the backlog is half full (--max-pending-deliveries); replay on from there with a new id once it has drained"
            ));
        } else if let Some(at) = &r.stopped_at {
            notes.push(format!(
                "stopped at the limit of {} events, at an event accepted at {at}; replay on from there with a new id",
                crate::manage::replay::MAX_REPLAY
            ));
        }
        (r.queued, (!notes.is_empty()).then(|| notes.join("; ")))
    };
    let last = LastReplay {
        id: spec.id.clone(),
        since: spec.since.clone(),
        until: time(until_ms),
        queued,
        at: time(crate::delivery::dispatcher::now_ms()),
        message,
    };
    tracing::info!(kind = key.kind.label(), namespace = %key.namespace, name = %key.name, id = %spec.id, queued, "spec.replay carried out");
    if let Ok(mut d) = ctx.shared.replays_done.lock() {
        d.insert(uid, last.clone());
    }
    write(&api, obj, &last).await
}

async fn write<K: Namespaced>(api: &Api<K>, obj: &K, last: &LastReplay) -> Result<(), Error> {
    let status = serde_json::json!({ "lastReplay": last });
    crate::status::apply(api, obj, REPLAY_MANAGER, &status).await?;
    Ok(())
}
