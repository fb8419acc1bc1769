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
    let fetched = fetch(&w, ctx, &ns, &name).await?;
    let verdict = validate(&w, fetched, ctx.shared.settings.recheck_interval);

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

/// Everything a reconcile reads besides the object itself, read before anything is decided
/// (Stackable's fetch → validate → conclude): each Secret value or the check that says why it
/// is unusable, the address guard's verdict and the 410 hold. `validate` then needs no API.
#[derive(Default)]
struct Fetched {
    /// The namespace does not allow the client: nothing else is read.
    refused: Option<Check>,
    basic: Option<Result<(String, String), Check>>,
    bearer: Option<Result<String, Check>>,
    /// (the key read, its value).
    signing: Option<(String, Result<String, Check>)>,
    ca: Option<Result<Vec<u8>, Check>>,
    /// The guard's refusal of the URL's address, and whether it is only unresolvable now.
    address: Option<(Check, bool)>,
    gone: Option<ReceiverGone>,
}

async fn fetch(
    w: &WebhookSubscription,
    ctx: &KindContext,
    ns: &str,
    name: &str,
) -> Result<Fetched, Error> {
    let spec = &w.spec;
    // Tenancy first: a namespace that does not allow the client gets nothing read for it.
    if let Some(check) = ctx.client_refused(ns, &spec.client_id).await? {
        return Ok(Fetched {
            refused: Some(check),
            ..Fetched::default()
        });
    }
    let mut secrets = SecretReader::new(ctx, ns);
    let mut f = Fetched::default();
    if let Some(b) = spec.auth.as_ref().and_then(|a| a.basic.as_ref()) {
        let s = &b.secret_ref.name;
        let field = "spec.auth.basic.secretRef";
        f.basic = Some(match secrets.value(s, "username", field).await? {
            Ok(user) => secrets
                .value(s, "password", field)
                .await?
                .map(|password| (user, password)),
            Err(c) => Err(c),
        });
    } else if let Some(b) = spec.auth.as_ref().and_then(|a| a.bearer.as_ref()) {
        let k = b.secret_ref.key_or("token");
        f.bearer = Some(
            secrets
                .value(&b.secret_ref.name, k, "spec.auth.bearer.secretRef")
                .await?,
        );
    }
    if let Some(sg) = &spec.signing {
        let k = sg.secret_ref.key_or("secret");
        let v = secrets
            .value(&sg.secret_ref.name, k, "spec.signing.secretRef")
            .await?;
        f.signing = Some((k.to_string(), v));
    }
    if let Some(t) = &spec.tls {
        f.ca = Some(
            secrets
                .ca_bundle(&t.ca_secret_ref, "spec.tls.caSecretRef")
                .await?,
        );
    }
    if let Ok(url) = url::Url::parse(&spec.url) {
        f.address = ctx.address_refused("spec.url", &url).await;
    }
    let generation = w.metadata.generation.unwrap_or_default();
    f.gone = receiver_gone(w, ctx, ns, name, generation).await?;
    Ok(f)
}

/// The verdict on `w` from what was fetched: no API access, so every branch is unit-tested
/// without a cluster. Problems the user can fix hold the events instead of dropping them.
fn validate(w: &WebhookSubscription, f: Fetched, recheck: Duration) -> Verdict {
    let spec = &w.spec;
    let (ns, name) = (
        w.metadata.namespace.clone().unwrap_or_default(),
        w.metadata.name.clone().unwrap_or_default(),
    );
    let mk = |held: Option<String>, config: Option<TargetConfig>| Target {
        held,
        config,
        ..provisional(w, &ns, &name)
    };
    if let Some(check) = f.refused {
        return Verdict {
            ready: check,
            target: None,
            requeue: None,
            gone: None,
        };
    }
    let held = |c: Check| Verdict {
        target: Some(mk(Some(c.reason.clone()), None)),
        ready: c,
        requeue: None,
        gone: None,
    };
    let auth = match (f.basic, f.bearer) {
        (Some(Ok((username, password))), _) => WebhookAuth::Basic { username, password },
        (Some(Err(c)), _) | (None, Some(Err(c))) => return held(c),
        (None, Some(Ok(token))) => WebhookAuth::Bearer(token),
        (None, None) => WebhookAuth::None,
    };
    let signing_keys = match f.signing {
        Some((_, Err(c))) => return held(c),
        Some((k, Ok(v))) => match decode_whsec(&v) {
            Ok(keys) => keys,
            Err(why) => {
                let secret = spec
                    .signing
                    .as_ref()
                    .map(|s| s.secret_ref.name.as_str())
                    .unwrap_or_default();
                return held(Check::fail(
                    "SecretInvalid",
                    format!(
                        "key {k:?} of Secret {secret:?} (spec.signing.secretRef) must hold whsec_<base64> secrets: {why}"
                    ),
                ));
            }
        },
        None => Vec::new(),
    };
    let tls = match f.ca {
        Some(Ok(pem)) => TlsMaterial {
            ca_pem: Some(pem),
            client_cert: None,
        },
        Some(Err(c)) => return held(c),
        None => TlsMaterial::default(),
    };

    // The target address: refused outright when it points inside.
    let url = match url::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => return held(Check::fail("InvalidURL", format!("spec.url: {e}"))),
    };
    if let Some((check, unresolvable)) = f.address {
        return if unresolvable {
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
        };
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
    if let Some(gone) = f.gone {
        let since = serde_json::to_value(&gone.since)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return Verdict {
            ready: Check::fail(
                "ReceiverGone",
                format!(
                    "the receiver answered 410 Gone at {since}; events are kept; change the spec to resume, e.g. kubectl patch webhooksubscription {name} -n {ns} --type merge -p '{{\"spec\":{{\"resumeAfterGone\":\"<any new value>\"}}}}'"
                ),
            ),
            target: Some(mk(Some("ReceiverGone".into()), Some(config))),
            requeue: None,
            gone: Some(gone),
        };
    }
    if spec.suspend {
        return Verdict {
            // True: what the user asked for, so GitOps tools (kstatus) see it as done.
            ready: Check::ok(
                "Suspended",
                "spec.suspend is true: events are kept and delivered after resuming",
            ),
            target: Some(mk(Some("Suspended".into()), Some(config))),
            requeue: None,
            gone: None,
        };
    }
    Verdict {
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
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn whs(spec: serde_json::Value) -> WebhookSubscription {
        let mut s = serde_json::json!({
            "url": "https://hooks.example/in", "clientId": "c", "events": ["vehicle.processed"]
        });
        if let (Some(a), Some(b)) = (s.as_object_mut(), spec.as_object()) {
            a.extend(b.clone());
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": "w", "namespace": "ns", "uid": "u1", "generation": 3 },
            "spec": s
        }))
        .unwrap()
    }

    const RECHECK: Duration = Duration::from_secs(300);

    /// (Ready status, reason, held reason if routed, routed at all, requeue).
    fn verdict(
        w: &WebhookSubscription,
        f: Fetched,
    ) -> (Tri, String, Option<String>, bool, Option<Duration>) {
        let v = validate(w, f, RECHECK);
        let routed = v.target.is_some();
        (
            v.ready.status,
            v.ready.reason,
            v.target.and_then(|t| t.held),
            routed,
            v.requeue,
        )
    }
    use crate::status::Tri;

    #[test]
    fn a_namespace_that_refuses_the_client_routes_nothing() {
        let f = Fetched {
            refused: Some(Check::fail("ClientNotAllowed", "no")),
            ..Fetched::default()
        };
        assert_eq!(
            verdict(&whs(serde_json::json!({})), f),
            (Tri::False, "ClientNotAllowed".into(), None, false, None)
        );
    }

    #[test]
    fn secret_problems_hold_the_events() {
        let w = whs(serde_json::json!({ "signing": { "secretRef": { "name": "s" } } }));
        let missing = Fetched {
            signing: Some(("secret".into(), Err(Check::fail("SecretNotFound", "gone")))),
            ..Fetched::default()
        };
        assert_eq!(
            verdict(&w, missing),
            (
                Tri::False,
                "SecretNotFound".into(),
                Some("SecretNotFound".into()),
                true,
                None
            )
        );
        let bad = Fetched {
            signing: Some(("secret".into(), Ok("not-a-whsec".into()))),
            ..Fetched::default()
        };
        let v = validate(&w, bad, RECHECK);
        assert_eq!(
            (v.ready.reason.as_str(), v.target.and_then(|t| t.held)),
            ("SecretInvalid", Some("SecretInvalid".into()))
        );
        assert!(
            v.ready.message.contains("spec.signing.secretRef"),
            "{}",
            v.ready.message
        );
        let basic =
            whs(serde_json::json!({ "auth": { "basic": { "secretRef": { "name": "b" } } } }));
        let no_password = Fetched {
            basic: Some(Err(Check::fail("SecretInvalid", "no key password"))),
            ..Fetched::default()
        };
        assert_eq!(verdict(&basic, no_password).1, "SecretInvalid");
    }

    #[test]
    fn addresses_the_guard_refuses_are_not_routed_but_unresolvable_ones_wait() {
        let w = whs(serde_json::json!({}));
        let refused = Fetched {
            address: Some((Check::fail("TargetNotAllowed", "private"), false)),
            ..Fetched::default()
        };
        assert_eq!(
            verdict(&w, refused),
            (
                Tri::False,
                "TargetNotAllowed".into(),
                None,
                false,
                Some(RECHECK)
            )
        );
        let unresolvable = Fetched {
            address: Some((Check::fail("TargetUnresolvable", "nxdomain"), true)),
            ..Fetched::default()
        };
        assert_eq!(
            verdict(&w, unresolvable),
            (
                Tri::False,
                "TargetUnresolvable".into(),
                Some("TargetUnresolvable".into()),
                true,
                Some(Duration::from_secs(30))
            )
        );
    }

    #[test]
    fn a_410_hold_and_suspension_keep_the_configuration_ready_to_resume() {
        let w = whs(serde_json::json!({ "suspend": true }));
        let gone = ReceiverGone {
            since: crate::status::now(),
            generation: 3,
        };
        let v = validate(
            &w,
            Fetched {
                gone: Some(gone.clone()),
                ..Fetched::default()
            },
            RECHECK,
        );
        assert_eq!(
            (v.ready.status, v.ready.reason.as_str()),
            (Tri::False, "ReceiverGone")
        );
        assert!(
            v.ready.message.contains("resumeAfterGone"),
            "{}",
            v.ready.message
        );
        assert_eq!(v.gone, Some(gone));
        assert!(v.target.as_ref().is_some_and(|t| t.config.is_some()));
        assert_eq!(
            verdict(&w, Fetched::default()),
            (
                Tri::True,
                "Suspended".into(),
                Some("Suspended".into()),
                true,
                None
            )
        );
    }

    #[test]
    fn everything_in_place_is_ready_with_its_credentials() {
        let w = whs(serde_json::json!({
            "auth": { "bearer": { "secretRef": { "name": "t" } } },
            "signing": { "secretRef": { "name": "s" } }
        }));
        let f = Fetched {
            bearer: Some(Ok("tok".into())),
            signing: Some(("secret".into(), Ok(WHSEC.into()))),
            ..Fetched::default()
        };
        let v = validate(&w, f, RECHECK);
        assert_eq!(
            (v.ready.status, v.ready.reason.as_str(), v.requeue),
            (Tri::True, "Ready", Some(RECHECK))
        );
        let t = v.target.unwrap();
        assert_eq!(t.held, None);
        let Some(TargetConfig::Webhook(cfg)) = &t.config else {
            panic!("not a webhook config")
        };
        assert!(matches!(&cfg.auth, WebhookAuth::Bearer(tok) if tok == "tok"));
        assert_eq!(cfg.signing_keys.len(), 1);
        assert_eq!(t.uid, "u1");
    }
}
