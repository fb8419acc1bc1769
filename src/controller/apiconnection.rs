//! Reconciler of `ApiConnection`: validate (tenancy, templates, Secrets, the client's OpenAPI
//! document, addresses) → register the resolved target → write status. Every problem the user
//! can fix holds the events (they wait, up to the retry policy's maximum age) instead of
//! dropping them.

use std::sync::Arc;
use std::time::Duration;

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::secrets::SecretReader;
use super::{Context, Error, KindContext, name_ns};
use crate::api::apiconnection::{ApiConnection, ApiConnectionSpec, ClientAuthMethod};
use crate::endpoint::{ApiCredentials, ApiEndpoint, OAuth2Client, TlsMaterial};
use crate::mapping::Compiled;
use crate::routing::{ApiTarget, Kind, Target, TargetConfig, TargetKey};
use crate::status::{Check, READY};

type Guarded = DeserializeGuard<ApiConnection>;

/// Largest OpenAPI document read from a ConfigMap (ConfigMaps hold at most 1 MiB).
const MAX_OPENAPI_BYTES: usize = 1 << 20;

pub fn key(ns: &str, name: &str) -> TargetKey {
    TargetKey {
        kind: Kind::Api,
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    super::runner::run::<ApiConnection, _, _>(
        ctx,
        ("api", Kind::Api),
        super::runner::Reads {
            secrets: |o| {
                secret_names(&o.spec)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            },
            config_maps: Some(|o| {
                o.spec
                    .openapi
                    .iter()
                    .map(|r| r.config_map_ref.name.clone())
                    .collect()
            }),
        },
        |o| {
            let (ns, name) = (o.namespace()?, o.name_any());
            Some(provisional(o, &ns, &name))
        },
        reconcile,
    )
    .await;
}

fn secret_names(spec: &ApiConnectionSpec) -> Vec<&str> {
    let mut v = Vec::new();
    if let Some(a) = &spec.auth {
        if let Some(b) = &a.basic {
            v.push(b.secret_ref.name.as_str());
        }
        if let Some(b) = &a.bearer {
            v.push(b.secret_ref.name.as_str());
        }
        if let Some(k) = &a.api_key {
            v.push(k.secret_ref.name.as_str());
        }
        if let Some(o) = &a.oauth2 {
            v.push(o.client_secret_ref.name.as_str());
        }
    }
    if let Some(t) = &spec.tls {
        if let Some(c) = &t.ca_secret_ref {
            v.push(c.name.as_str());
        }
        if let Some(c) = &t.client_cert_secret_ref {
            v.push(c.name.as_str());
        }
    }
    v
}

async fn reconcile(obj: Arc<Guarded>, ctx: Arc<KindContext>) -> Result<Action, Error> {
    let conn = match &obj.0 {
        Ok(c) => Arc::new(c.clone()),
        Err(invalid) => return super::unreadable::<ApiConnection>(&ctx, invalid, key).await,
    };
    let (_, ns) = name_ns(conn.as_ref())?;
    let api: Api<ApiConnection> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let (name, _) = name_ns(conn.as_ref())?;
    super::without_finalizer(&ctx, conn, key(&ns, &name), |o| {
        let (ctx, api) = (&ctx, &api);
        async move { apply(o, ctx, api).await }
    })
    .await
}

struct Verdict {
    ready: Check,
    target: Option<Target>,
    requeue: Option<Duration>,
}

async fn apply(
    c: Arc<ApiConnection>,
    ctx: &KindContext,
    api: &Api<ApiConnection>,
) -> Result<Action, Error> {
    let (name, ns) = name_ns(c.as_ref())?;
    let verdict = validate(&c, ctx, &ns, &name).await?;
    let old = c.status.clone().unwrap_or_default();
    super::conclude(
        ctx,
        api,
        c.as_ref(),
        (key(&ns, &name), verdict.target),
        super::Observed {
            conditions: &old.conditions,
            generation: old.observed_generation,
            receiver_gone: None,
        },
        (&[(READY, &verdict.ready)], None),
        verdict.requeue,
    )
    .await
}

async fn validate(
    c: &ApiConnection,
    ctx: &KindContext,
    ns: &str,
    name: &str,
) -> Result<Verdict, Error> {
    let spec = &c.spec;
    let recheck = ctx.shared.settings.recheck_interval;
    let mk = |held: Option<String>, config: Option<TargetConfig>| Target {
        held,
        config,
        ..provisional(c, ns, name)
    };
    let held = |check: Check| Verdict {
        target: Some(mk(Some(check.reason.clone()), None)),
        ready: check,
        requeue: None,
    };

    if let Some(check) = ctx.client_refused(ns, &spec.client_id).await? {
        return Ok(Verdict {
            ready: check,
            target: None,
            requeue: None,
        });
    }

    // The mapping: every template compiled now, not at the first event.
    let compiled = match Compiled::new(spec) {
        Ok(m) => m,
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Ok(held(Check::fail("InvalidTemplate", list.join("; "))));
        }
    };

    let mut secrets = SecretReader::new(ctx, ns);
    let auth = match resolve_auth(spec, &mut secrets).await? {
        Ok(a) => a,
        Err(check) => return Ok(held(check)),
    };
    let tls = match resolve_tls(spec, &mut secrets).await? {
        Ok(t) => t,
        Err(check) => return Ok(held(check)),
    };
    if let Err(e) = crate::delivery::http::tls_config(&tls) {
        return Ok(held(Check::fail("SecretInvalid", format!("spec.tls: {e}"))));
    }

    // The client's own specification: the mapping must fit it before any event is sent.
    let mut checked_against = None;
    if let Some(o) = &spec.openapi {
        let doc = match super::config_map_value(
            ctx,
            ns,
            &o.config_map_ref,
            "openapi.yaml",
            "spec.openapi.configMapRef",
        )
        .await?
        {
            Ok(d) => d,
            // Watched: a ConfigMap created or fixed later re-checks this connection.
            Err(c) => return Ok(held(c)),
        };
        if doc.len() > MAX_OPENAPI_BYTES {
            return Ok(held(Check::fail(
                "ConfigMapInvalid",
                "the OpenAPI document is larger than 1 MiB",
            )));
        }
        match crate::mapping::openapi::check(
            &doc,
            &compiled,
            spec,
            crate::mapping::samples::samples(),
        ) {
            Ok(()) => checked_against = Some(format!("in ConfigMap {:?}", o.config_map_ref.name)),
            Err(mismatches) => {
                let list: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
                return Ok(held(Check::fail("SpecMismatch", list.join("; "))));
            }
        }
    }

    // Addresses: the API and the token endpoint, refused outright when they point inside.
    let base_url = match url::Url::parse(spec.base_url.trim_end_matches('/')) {
        Ok(u) => u,
        Err(e) => {
            return Ok(held(Check::fail(
                "InvalidURL",
                format!("spec.baseUrl: {e}"),
            )));
        }
    };
    let mut urls = vec![("spec.baseUrl", base_url.clone())];
    if let ApiCredentials::OAuth2(o) = &auth {
        urls.push(("spec.auth.oauth2.tokenUrl", o.token_url.clone()));
    }
    for (field, url) in &urls {
        if let Some((check, unresolvable)) = ctx.address_refused(field, url).await {
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
    }

    let idempotency_header = match http::HeaderName::from_bytes(spec.idempotency_header.as_bytes())
    {
        Ok(h) => h,
        Err(_) => {
            return Ok(held(Check::fail(
                "InvalidSpec",
                "spec.idempotencyHeader is not a header name",
            )));
        }
    };
    let requests: usize = spec.mappings.iter().map(|m| m.requests.len()).sum();
    let config = TargetConfig::Api(ApiTarget {
        name: name.to_owned(),
        namespace: ns.to_owned(),
        endpoint: ApiEndpoint {
            base_url,
            auth,
            tls_id: tls.fingerprint(),
            tls,
            idempotency_header,
            timeout: Duration::from_secs(spec.timeout_seconds.into()),
        },
        mapping: Arc::new(compiled),
        fingerprint: fingerprint(spec),
        max_concurrency: spec.max_concurrency,
    });
    if spec.suspend {
        return Ok(Verdict {
            // True: what the user asked for, so GitOps tools (kstatus) see it as done.
            ready: Check::ok(
                "Suspended",
                "spec.suspend is true: events are kept and sent after resuming",
            ),
            target: Some(mk(Some("Suspended".into()), Some(config))),
            requeue: None,
        });
    }
    let checked = match checked_against {
        Some(place) => format!("; every request matches the OpenAPI document {place}"),
        None => String::new(),
    };
    Ok(Verdict {
        ready: Check::ok(
            "Ready",
            format!(
                "sending {} event type(s) of client {:?} to {} as {requests} mapped request(s){checked}",
                spec.events.len(),
                spec.client_id,
                spec.base_url
            ),
        ),
        target: Some(mk(None, Some(config))),
        requeue: Some(recheck),
    })
}

/// Identifies the mapping (its requests as the spec has them), so that a chain stopped under
/// another mapping starts over.
fn fingerprint(spec: &ApiConnectionSpec) -> String {
    use sha2::{Digest, Sha256};
    let bytes = serde_json::to_vec(&spec.mappings).unwrap_or_default();
    let digest = Sha256::digest(bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

async fn resolve_auth(
    spec: &ApiConnectionSpec,
    secrets: &mut SecretReader<'_>,
) -> Result<Result<ApiCredentials, Check>, kube::Error> {
    let Some(a) = &spec.auth else {
        return Ok(Ok(ApiCredentials::None));
    };
    if let Some(b) = &a.basic {
        let s = &b.secret_ref.name;
        let field = "spec.auth.basic.secretRef";
        let username = match secrets.value(s, "username", field).await? {
            Ok(v) => v,
            Err(c) => return Ok(Err(c)),
        };
        let password = match secrets.value(s, "password", field).await? {
            Ok(v) => v,
            Err(c) => return Ok(Err(c)),
        };
        return Ok(Ok(ApiCredentials::Basic { username, password }));
    }
    if let Some(b) = &a.bearer {
        let r = &b.secret_ref;
        return Ok(secrets
            .value(&r.name, r.key_or("token"), "spec.auth.bearer.secretRef")
            .await?
            .map(ApiCredentials::Bearer));
    }
    if let Some(k) = &a.api_key {
        let r = &k.secret_ref;
        let value = match secrets
            .value(&r.name, r.key_or("apiKey"), "spec.auth.apiKey.secretRef")
            .await?
        {
            Ok(v) => v,
            Err(c) => return Ok(Err(c)),
        };
        let Ok(name) = http::HeaderName::from_bytes(k.header.as_bytes()) else {
            return Ok(Err(Check::fail(
                "InvalidSpec",
                "spec.auth.apiKey.header is not a header name",
            )));
        };
        let prefix = k.prefix.clone().unwrap_or_default();
        if http::HeaderValue::from_str(&format!("{prefix}{value}")).is_err() {
            return Ok(Err(Check::fail(
                "SecretInvalid",
                format!(
                    "key {:?} of Secret {:?} (spec.auth.apiKey.secretRef) is not usable in a header",
                    r.key_or("apiKey"),
                    r.name
                ),
            )));
        }
        return Ok(Ok(ApiCredentials::Header {
            name,
            prefix,
            key: value,
        }));
    }
    if let Some(o) = &a.oauth2 {
        let s = &o.client_secret_ref.name;
        let field = "spec.auth.oauth2.clientSecretRef";
        let client_id = match secrets.value(s, "client-id", field).await? {
            Ok(v) => v,
            Err(c) => return Ok(Err(c)),
        };
        let client_secret = match secrets.value(s, "client-secret", field).await? {
            Ok(v) => v,
            Err(c) => return Ok(Err(c)),
        };
        let token_url = match url::Url::parse(&o.token_url) {
            Ok(u) => u,
            Err(e) => {
                return Ok(Err(Check::fail(
                    "InvalidURL",
                    format!("spec.auth.oauth2.tokenUrl: {e}"),
                )));
            }
        };
        return Ok(Ok(ApiCredentials::OAuth2(OAuth2Client {
            token_url,
            client_id,
            client_secret,
            scopes: o.scopes.clone().unwrap_or_default(),
            audience: o.audience.clone(),
            basic: o.client_auth == ClientAuthMethod::Basic,
        })));
    }
    Ok(Ok(ApiCredentials::None))
}

async fn resolve_tls(
    spec: &ApiConnectionSpec,
    secrets: &mut SecretReader<'_>,
) -> Result<Result<TlsMaterial, Check>, kube::Error> {
    let mut tls = TlsMaterial::default();
    let Some(t) = &spec.tls else {
        return Ok(Ok(tls));
    };
    if let Some(r) = &t.ca_secret_ref {
        match secrets.ca_bundle(r, "spec.tls.caSecretRef").await? {
            Ok(b) => tls.ca_pem = Some(b),
            Err(c) => return Ok(Err(c)),
        }
    }
    if let Some(r) = &t.client_cert_secret_ref {
        let field = "spec.tls.clientCertSecretRef";
        let cert = match secrets.bytes(&r.name, "tls.crt", field).await? {
            Ok(b) => b,
            Err(c) => return Ok(Err(c)),
        };
        let key = match secrets.bytes(&r.name, "tls.key", field).await? {
            Ok(b) => b,
            Err(c) => return Ok(Err(c)),
        };
        tls.client_cert = Some((cert, key));
    }
    Ok(Ok(tls))
}

/// The target as its spec alone describes it, held until the reconciler has resolved it.
pub fn provisional(c: &ApiConnection, ns: &str, name: &str) -> Target {
    let spec = &c.spec;
    super::provisional_target(
        key(ns, name),
        c,
        super::Selects {
            client_id: &spec.client_id,
            user_ids: spec.user_ids.as_deref(),
            events: &spec.events,
        },
        spec.retry_policy(),
    )
}
