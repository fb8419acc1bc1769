//! Reconciler of `WebhookSubscription`: validate (tenancy, Secrets, target address) →
//! register the resolved target in the routing index → write status.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::secrets::{SecretReader, decode_whsec};
use super::{Context, Error, KindContext, name_ns};
use crate::api::webhook::{ReceiverGone, WebhookSubscription, WebhookSubscriptionSpec};
use crate::endpoint::TlsMaterial;
use crate::routing::{Kind, Target, TargetConfig, TargetKey, WebhookAuth, WebhookTarget};
use crate::status::{Check, READY, RECEIVER_GONE_ANNOTATION};

type Guarded = DeserializeGuard<WebhookSubscription>;

pub fn key(ns: &str, name: &str) -> TargetKey {
    TargetKey {
        kind: Kind::Webhook,
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    super::runner::run::<WebhookSubscription, _, _>(
        ctx,
        ("webhook", Kind::Webhook),
        super::runner::Reads {
            secrets: |o| {
                secret_names(&o.spec)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            },
            config_maps: None,
        },
        |o| {
            let (ns, name) = (o.namespace()?, o.name_any());
            Some(provisional(o, &ns, &name))
        },
        reconcile,
    )
    .await;
}

fn secret_names(spec: &WebhookSubscriptionSpec) -> Vec<&str> {
    let mut v = Vec::new();
    if let Some(a) = &spec.auth {
        if let Some(b) = &a.basic {
            v.push(b.secret_ref.name.as_str());
        }
        if let Some(b) = &a.bearer {
            v.push(b.secret_ref.name.as_str());
        }
    }
    if let Some(s) = &spec.signing {
        v.push(s.secret_ref.name.as_str());
    }
    if let Some(t) = &spec.tls {
        v.push(t.ca_secret_ref.name.as_str());
    }
    v
}

async fn reconcile(obj: Arc<Guarded>, ctx: Arc<KindContext>) -> Result<Action, Error> {
    let whs = match &obj.0 {
        Ok(w) => Arc::new(w.clone()),
        // An object the types cannot read (e.g. written under an older CRD) must not stop
        // the others, nor its own deletion.
        Err(invalid) => return super::unreadable::<WebhookSubscription>(&ctx, invalid, key).await,
    };
    let (_, ns) = name_ns(whs.as_ref())?;
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let (name, _) = name_ns(whs.as_ref())?;
    super::without_finalizer(&ctx, whs, key(&ns, &name), |o| {
        let (ctx, api) = (&ctx, &api);
        async move { apply(o, ctx, api).await }
    })
    .await
}

/// What validation concluded.
struct Verdict {
    ready: Check,
    /// `None`: not routed at all; `Some(target)` routed (possibly held).
    target: Option<Target>,
    requeue: Option<Duration>,
    /// The 410 hold, shown in status.
    gone: Option<ReceiverGone>,
}

async fn apply(
    w: Arc<WebhookSubscription>,
    ctx: &KindContext,
    api: &Api<WebhookSubscription>,
) -> Result<Action, Error> {
    let (name, ns) = name_ns(w.as_ref())?;
    let key = key(&ns, &name);
    let verdict = validate(&w, ctx, &ns, &name).await?;

    let old = w.status.clone().unwrap_or_default();
    super::conclude(
        ctx,
        api,
        w.as_ref(),
        (key, verdict.target),
        super::Observed {
            conditions: &old.conditions,
            generation: old.observed_generation,
            receiver_gone: old.receiver_gone.as_ref(),
        },
        (&[(READY, &verdict.ready)], verdict.gone),
        verdict.requeue,
    )
    .await
}

async fn validate(
    w: &WebhookSubscription,
    ctx: &KindContext,
    ns: &str,
    name: &str,
) -> Result<Verdict, Error> {
    let spec = &w.spec;
    let recheck = ctx.shared.settings.recheck_interval;
    let mk = |held: Option<String>, config: Option<TargetConfig>| Target {
        held,
        config,
        ..provisional(w, ns, name)
    };

    // Tenancy first: a namespace that does not allow the client gets nothing.
    if let Some(check) = ctx.client_refused(ns, &spec.client_id).await? {
        return Ok(Verdict {
            ready: check,
            target: None,
            requeue: None,
            gone: None,
        });
    }

    // Secrets: a fixable problem holds the events instead of dropping them.
    let mut secrets = SecretReader::new(ctx, ns);
    let held = |c: Check| Verdict {
        target: Some(mk(Some(c.reason.clone()), None)),
        ready: c,
        requeue: None,
        gone: None,
    };
    let auth = match spec.auth.as_ref() {
        Some(a) if a.basic.is_some() => {
            let s = &a
                .basic
                .as_ref()
                .map(|b| b.secret_ref.name.clone())
                .unwrap_or_default();
            let user = match secrets
                .value(s, "username", "spec.auth.basic.secretRef")
                .await?
            {
                Ok(v) => v,
                Err(c) => return Ok(held(c)),
            };
            let password = match secrets
                .value(s, "password", "spec.auth.basic.secretRef")
                .await?
            {
                Ok(v) => v,
                Err(c) => return Ok(held(c)),
            };
            WebhookAuth::Basic {
                username: user,
                password,
            }
        }
        Some(a) => match &a.bearer {
            Some(b) => {
                let k = b.secret_ref.key_or("token");
                match secrets
                    .value(&b.secret_ref.name, k, "spec.auth.bearer.secretRef")
                    .await?
                {
                    Ok(v) => WebhookAuth::Bearer(v),
                    Err(c) => return Ok(held(c)),
                }
            }
            None => WebhookAuth::None,
        },
        None => WebhookAuth::None,
    };
    let signing_keys = match &spec.signing {
        Some(s) => {
            let k = s.secret_ref.key_or("secret");
            let v = match secrets
                .value(&s.secret_ref.name, k, "spec.signing.secretRef")
                .await?
            {
                Ok(v) => v,
                Err(c) => return Ok(held(c)),
            };
            match decode_whsec(&v) {
                Ok(keys) => keys,
                Err(why) => {
                    return Ok(held(Check::fail(
                        "SecretInvalid",
                        format!(
                            "key {k:?} of Secret {:?} (spec.signing.secretRef) must hold whsec_<base64> secrets: {why}",
                            s.secret_ref.name
                        ),
                    )));
                }
            }
        }
        None => Vec::new(),
    };
    let tls = match &spec.tls {
        Some(t) => match secrets
            .ca_bundle(&t.ca_secret_ref, "spec.tls.caSecretRef")
            .await?
        {
            Ok(pem) => TlsMaterial {
                ca_pem: Some(pem),
                client_cert: None,
            },
            Err(c) => return Ok(held(c)),
        },
        None => TlsMaterial::default(),
    };

    // The target address: refused outright when it points inside.
    let url = match url::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => return Ok(held(Check::fail("InvalidURL", format!("spec.url: {e}")))),
    };
    if let Some((check, unresolvable)) = ctx.address_refused("spec.url", &url).await {
        return Ok(if unresolvable {
            Verdict {
                target: Some(mk(Some(check.reason.clone()), None)),
                ready: check,
                requeue: Some(Duration::from_secs(30)),
                gone: None,
            }
        } else {
            Verdict {
                ready: check,
                target: None,
                requeue: Some(recheck),
                gone: None,
            }
        });
    }

    let config = TargetConfig::Webhook(WebhookTarget {
        url,
        auth,
        signing_keys,
        headers: spec
            .headers
            .as_ref()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        timeout: Duration::from_secs(spec.timeout_seconds.into()),
        retry: spec.retry_policy(),
        max_concurrency: spec.max_concurrency,
        tls_id: tls.fingerprint(),
        tls,
    });
    let generation = w.metadata.generation.unwrap_or_default();
    if let Some(gone) = receiver_gone(w, ctx, ns, name, generation).await? {
        let since = serde_json::to_value(&gone.since)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Ok(Verdict {
            ready: Check::fail(
                "ReceiverGone",
                format!(
                    "the receiver answered 410 Gone at {since}; events are kept; change the spec to resume, e.g. kubectl patch webhooksubscription {name} -n {ns} --type merge -p '{{\"spec\":{{\"resumeAfterGone\":\"<any new value>\"}}}}'"
                ),
            ),
            target: Some(mk(Some("ReceiverGone".into()), Some(config))),
            requeue: None,
            gone: Some(gone),
        });
    }
    if spec.suspend {
        return Ok(Verdict {
            // True: what the user asked for, so GitOps tools (kstatus) see it as done.
            ready: Check::ok(
                "Suspended",
                "spec.suspend is true: events are kept and delivered after resuming",
            ),
            target: Some(mk(Some("Suspended".into()), Some(config))),
            requeue: None,
            gone: None,
        });
    }
    Ok(Verdict {
        ready: Check::ok(
            "Ready",
            format!(
                "delivering {} event type(s) of client {:?} to {}",
                spec.events.len(),
                spec.client_id,
                spec.url
            ),
        ),
        target: Some(mk(None, Some(config))),
        requeue: Some(recheck),
        gone: None,
    })
}

/// The 410 hold, from the annotation that keeps it across restarts: `None` when there is
/// none, or when the spec changed since (the annotation is then removed). An annotation
/// from before generations were recorded is stamped with the current one, so that the next
/// spec change resumes.
async fn receiver_gone(
    w: &WebhookSubscription,
    ctx: &KindContext,
    ns: &str,
    name: &str,
    generation: i64,
) -> Result<Option<ReceiverGone>, Error> {
    let Some(value) = w.annotations().get(RECEIVER_GONE_ANNOTATION) else {
        return Ok(None);
    };
    let (since, at) = crate::status::parse_gone(value);
    let since = since.unwrap_or_else(crate::status::now);
    let api: Api<WebhookSubscription> = Api::namespaced(ctx.shared.client.clone(), ns);
    let set = |v: serde_json::Value| serde_json::json!({ "metadata": { "annotations": { RECEIVER_GONE_ANNOTATION: v } } });
    match at {
        Some(g) if generation > g => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(set(serde_json::Value::Null)),
            )
            .await?;
            tracing::info!(namespace = %ns, %name, "spec changed after 410 Gone: delivery resumes");
            Ok(None)
        }
        Some(g) => Ok(Some(ReceiverGone {
            since,
            generation: g,
        })),
        None => {
            let stamped = crate::status::gone_annotation(&since, generation);
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(set(stamped.into())),
            )
            .await?;
            Ok(Some(ReceiverGone { since, generation }))
        }
    }
}

/// The target as its spec alone describes it, held until the reconciler has resolved it:
/// what start-up registers from the watch cache so that no event misses it meanwhile.
pub fn provisional(w: &WebhookSubscription, ns: &str, name: &str) -> Target {
    let spec = &w.spec;
    super::provisional_target(
        key(ns, name),
        w,
        super::Selects {
            client_id: &spec.client_id,
            user_ids: spec.user_ids.as_deref(),
            events: &spec.events,
        },
        spec.retry_policy(),
    )
}
