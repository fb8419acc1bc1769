//! Reconciler of `WebhookSubscription`: validate (tenancy, Secrets, target address) →
//! register the resolved target in the routing index → write status.

use std::sync::Arc;
use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, ResourceExt};

use super::secrets::{SecretReader, decode_whsec};
use super::{Context, Error, KindContext, name_ns};
use crate::api::FINALIZER;
use crate::api::webhook::{WebhookSubscription, WebhookSubscriptionSpec};
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
    let action = finalizer(&api, FINALIZER, whs, |ev| async {
        match ev {
            Finalizer::Apply(w) => apply(w, &ctx, &api).await,
            Finalizer::Cleanup(w) => cleanup(w, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    Ok(action)
}

/// What validation concluded.
struct Verdict {
    ready: Check,
    /// `None`: not routed at all; `Some(target)` routed (possibly held).
    target: Option<Target>,
    requeue: Option<Duration>,
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
        (&old.conditions, old.observed_generation),
        &[(READY, &verdict.ready)],
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
        });
    }

    // Secrets: a fixable problem holds the events instead of dropping them.
    let mut secrets = SecretReader::new(ctx, ns);
    let held = |c: Check| Verdict {
        target: Some(mk(Some(c.reason.clone()), None)),
        ready: c,
        requeue: None,
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
            }
        } else {
            Verdict {
                ready: check,
                target: None,
                requeue: Some(recheck),
            }
        });
    }

    let gone = w.annotations().get(RECEIVER_GONE_ANNOTATION).cloned();
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
    if let Some(since) = gone {
        return Ok(Verdict {
            ready: Check::fail(
                "ReceiverGone",
                format!(
                    "the receiver answered 410 Gone at {since}; events are kept; remove the annotation {RECEIVER_GONE_ANNOTATION} to resume"
                ),
            ),
            target: Some(mk(Some("ReceiverGone".into()), Some(config))),
            requeue: None,
        });
    }
    if spec.suspend {
        return Ok(Verdict {
            ready: Check::fail(
                "Suspended",
                "spec.suspend is true: events are kept and delivered after resuming",
            ),
            target: Some(mk(Some("Suspended".into()), Some(config))),
            requeue: None,
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
    })
}

async fn cleanup(w: Arc<WebhookSubscription>, ctx: &KindContext) -> Result<Action, Error> {
    let (name, ns) = name_ns(w.as_ref())?;
    super::forget(&ctx.shared, key(&ns, &name)).await;
    Ok(Action::await_change())
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
