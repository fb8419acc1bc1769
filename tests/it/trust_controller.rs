//! What a tenant's resource may reach, against the real control plane: Secret types that
//! are never credentials are refused, unreadable objects can still be deleted, and URL
//! credentials never appear in conditions or Events.

use std::time::{Duration, Instant};

use crate::support::operator::{apply_value, condition, operator, put_secret, tenant, wait_for};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::json;
use vehicle_connect::api::{FtpConnection, WebhookSubscription};
use vehicle_connect::controller::{ftp, webhook};

fn ready(w: &WebhookSubscription) -> Option<(String, String, String)> {
    w.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
}

fn subscription(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": name }, "spec": spec })
}

/// Warning/Normal Events on `name` with `reason`, waiting up to 10 s for one to appear.
async fn events_on(client: &kube::Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<Event> = api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            })
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn secrets_that_are_never_credentials_are_refused() {
    let op = operator();
    let (ns, client) = tenant(op, "secret-types", "c").await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": "robot" } }),
    )
    .await;
    // A service-account token and a Helm release record: readable by the operator, never
    // meant for delivery.
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                "metadata": { "name": "robot-token", "annotations": { "kubernetes.io/service-account.name": "robot" } },
                "stringData": { "token": "sa-token-must-not-leave" } }),
    )
    .await;
    put_secret(
        &client,
        &ns.name,
        "sh.helm.release.v1.app.v1",
        Some("helm.sh/release.v1"),
        json!({ "password": "helm-values-must-not-leave", "username": "u" }),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for (name, auth, secret, ty) in [
        (
            "steal-sa",
            json!({ "bearer": { "secretRef": { "name": "robot-token" } } }),
            "robot-token",
            "kubernetes.io/service-account-token",
        ),
        (
            "steal-helm",
            json!({ "basic": { "secretRef": { "name": "sh.helm.release.v1.app.v1" } } }),
            "sh.helm.release.v1.app.v1",
            "helm.sh/release.v1",
        ),
    ] {
        apply_value(
            &client,
            &ns.name,
            subscription(
                name,
                json!({ "url": "http://127.0.0.1:9/attacker", "clientId": "c",
                        "events": ["data.new"], "auth": auth }),
            ),
        )
        .await;
        let w = wait_for(&api, name, "SecretNotAllowed", |w| {
            ready(w).is_some_and(|(s, r, _)| s == "False" && r == "SecretNotAllowed")
        })
        .await;
        let msg = ready(&w).unwrap().2;
        assert!(msg.contains(secret) && msg.contains(ty), "{msg}");
        // Held like a missing Secret: nothing to deliver with, events kept.
        let t = op
            .registry
            .get(&webhook::key(&ns.name, name))
            .expect("held target");
        assert_eq!(t.held.as_deref(), Some("SecretNotAllowed"));
        assert!(t.config.is_none(), "no credentials may reach the target");
        assert!(
            !events_on(&client, &ns.name, name, "SecretNotAllowed")
                .await
                .is_empty(),
            "no SecretNotAllowed Event"
        );
    }

    // The credential types stay usable: basic-auth typed and untyped (Opaque).
    put_secret(
        &client,
        &ns.name,
        "creds",
        Some("kubernetes.io/basic-auth"),
        json!({ "username": "u", "password": "p" }),
    )
    .await;
    put_secret(&client, &ns.name, "token", None, json!({ "token": "t" })).await;
    for (name, auth) in [
        (
            "basic",
            json!({ "basic": { "secretRef": { "name": "creds" } } }),
        ),
        (
            "bearer",
            json!({ "bearer": { "secretRef": { "name": "token" } } }),
        ),
    ] {
        apply_value(
            &client,
            &ns.name,
            subscription(
                name,
                json!({ "url": "http://127.0.0.1:9/h", "clientId": "c", "events": ["data.new"], "auth": auth }),
            ),
        )
        .await;
        wait_for(&api, name, "Ready", |w| {
            ready(w).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
    }
}

/// Makes `name` unreadable for the operator's types, through a time the API server takes
/// for a `date-time` (its check lets any character through before a fraction's digits) but
/// no RFC 3339 parser does. The schema bounds every other status field to what the types
/// hold. Returns an untyped Api of that kind (which can still read and delete it).
async fn make_unreadable(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("connect.vehicles.io", "v1alpha1", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &format!("{}s", kind.to_lowercase()));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let odd_time = "2026-01-01T10:00:00x1Z";
    let failure =
        json!({ "eventId": "evt_odd", "time": odd_time, "reason": "Odd", "message": "odd" });
    if let Err(e) = api
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "lastFailure": failure } })),
        )
        .await
    {
        panic!(
            "the API server no longer stores {odd_time:?} as a date-time ({e}): find another way"
        );
    }
    api
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.get_metadata_opt(name).await.unwrap() {
            None => return,
            Some(m) => assert!(
                Instant::now() < deadline,
                "{name} never went away; finalizers: {:?}",
                m.metadata.finalizers
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn unreadable_objects_can_still_be_deleted() {
    let op = operator();
    let (ns, client) = tenant(op, "unreadable", "c").await;

    apply_value(
        &client,
        &ns.name,
        subscription(
            "odd-hook",
            json!({ "url": "http://127.0.0.1:9/", "clientId": "c", "events": ["data.new"] }),
        ),
    )
    .await;
    let hooks: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&hooks, "odd-hook", "Ready", |w| {
        ready(w).is_some_and(|(s, _, _)| s == "True")
    })
    .await;

    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                "metadata": { "name": "odd-ftp" },
                "spec": { "host": "127.0.0.1", "port": 2121, "clientId": "c",
                          "credentialsSecretRef": { "name": "absent" } } }),
    )
    .await;
    let conns: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while op.registry.get(&ftp::key(&ns.name, "odd-ftp")).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "odd-ftp never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let raw_hooks = make_unreadable(&client, &ns.name, "WebhookSubscription", "odd-hook").await;
    let raw_conns = make_unreadable(&client, &ns.name, "FtpConnection", "odd-ftp").await;
    let err = hooks.get("odd-hook").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::SerdeError(_)),
        "the types must fail to read it: {err}"
    );
    assert!(matches!(
        conns.get("odd-ftp").await.unwrap_err(),
        kube::Error::SerdeError(_)
    ));

    // The finalizer of an earlier version on an unreadable object: deleting goes through
    // the DeserializeGuard path, which still releases it.
    for (api, name) in [(&raw_hooks, "odd-hook"), (&raw_conns, "odd-ftp")] {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": ["connect.vehicles.io/cleanup"] } })),
        )
        .await
        .unwrap();
    }
    raw_hooks
        .delete("odd-hook", &DeleteParams::default())
        .await
        .unwrap();
    raw_conns
        .delete("odd-ftp", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&hooks, "odd-hook").await;
    wait_gone(&conns, "odd-ftp").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while op
        .registry
        .get(&webhook::key(&ns.name, "odd-hook"))
        .is_some()
        || op.registry.get(&ftp::key(&ns.name, "odd-ftp")).is_some()
    {
        assert!(Instant::now() < deadline, "deleted objects stayed routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn url_credentials_never_reach_conditions_or_events() {
    let op = operator();
    let (ns, client) = tenant(op, "redact", "c").await;
    // (Userinfo and fragments are refused by the CRD; the query is where tokens live.)
    let url = "http://127.0.0.1:9/hook?token=s3cr3t-t0ken&x=1";
    // First held (no signing Secret), then Ready: the recovery is an Event with the URL.
    apply_value(
        &client,
        &ns.name,
        subscription(
            "leaky",
            json!({ "url": url, "clientId": "c", "events": ["data.new"],
                    "signing": { "secretRef": { "name": "signing" } } }),
        ),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "leaky", "SecretNotFound", |w| {
        ready(w).is_some_and(|(_, r, _)| r == "SecretNotFound")
    })
    .await;
    put_secret(
        &client,
        &ns.name,
        "signing",
        None,
        json!({ "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }),
    )
    .await;
    let w = wait_for(&api, "leaky", "Ready", |w| {
        ready(w).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let msg = ready(&w).unwrap().2;
    assert!(
        msg.contains("http://127.0.0.1:9/hook?***"),
        "the message should still say where: {msg}"
    );
    let events = events_on(&client, &ns.name, "leaky", "Ready").await;
    assert!(!events.is_empty(), "no recovery Event");
    let mut shown = vec![msg];
    shown.extend(events.iter().filter_map(|e| e.note.clone()));
    for text in &shown {
        for secret in ["s3cr3t-t0ken", "x=1"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
    // The target itself keeps the full URL: only what users see is redacted.
    match op
        .registry
        .get(&webhook::key(&ns.name, "leaky"))
        .and_then(|t| t.config.clone())
    {
        Some(vehicle_connect::routing::TargetConfig::Webhook(wt)) => {
            assert_eq!(wt.url.query(), Some("token=s3cr3t-t0ken&x=1"))
        }
        other => panic!("{other:?}"),
    }
}
