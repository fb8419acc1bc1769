//! WebhookSubscription reconciler against the real control plane.

use crate::support::operator::{apply_value, apply_yaml, condition, operator, tenant, wait_for};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use vehicle_connect::api::WebhookSubscription;
use vehicle_connect::controller::webhook::key;

fn ready(w: &WebhookSubscription) -> Option<(String, String, String)> {
    w.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
}

fn ready_is(w: &WebhookSubscription, status: &str, reason: &str) -> bool {
    ready(w).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn subscription(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn secret(name: &str, data: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": data })
}

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn examples_become_ready_and_track_generation() {
    let op = operator();
    let (ns, client) = tenant(op, "examples", "dealer-123").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for f in ["10-secrets.yaml", "20-webhooksubscriptions.yaml"] {
        apply_yaml(
            &client,
            &ns.name,
            &std::fs::read_to_string(dir.join(f)).unwrap(),
        )
        .await;
    }
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for name in ["dms-vehicle-processed", "ana-uploads"] {
        let w = wait_for(&api, name, "Ready=True", |w| ready_is(w, "True", "Ready")).await;
        let st = w.status.unwrap();
        assert_eq!(st.observed_generation, w.metadata.generation);
        assert_eq!(st.conditions[0].observed_generation, w.metadata.generation);
        // No finalizer: deleting never waits for the operator (installed or not).
        assert!(
            w.metadata.finalizers.unwrap_or_default().is_empty(),
            "{name} got a finalizer"
        );
        let t = op
            .registry
            .get(&key(&ns.name, name))
            .expect("registered target");
        assert!(t.held.is_none(), "{:?}", t.held);
    }
    let t = op.registry.get(&key(&ns.name, "ana-uploads")).unwrap();
    assert!(t.selector.user_ids.as_ref().unwrap().contains("u-42"));

    // A spec change bumps the generation; status follows it.
    api.patch(
        "ana-uploads",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "timeoutSeconds": 7 } })),
    )
    .await
    .unwrap();
    let w = wait_for(&api, "ana-uploads", "observedGeneration 2", |w| {
        w.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
    })
    .await;
    assert!(ready_is(&w, "True", "Ready"));
}

#[tokio::test]
async fn missing_secret_then_created_turns_ready_without_restart() {
    let op = operator();
    let (ns, client) = tenant(op, "secret", "dealer-1").await;
    apply_value(
        &client,
        &ns.name,
        subscription(
            "s",
            json!({
                "url": "http://127.0.0.1:9/hook", "clientId": "dealer-1", "events": ["vehicle.processed"],
                "auth": { "basic": { "secretRef": { "name": "creds" } } },
                "signing": { "secretRef": { "name": "signing" } }
            }),
        ),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let w = wait_for(&api, "s", "SecretNotFound", |w| {
        ready_is(w, "False", "SecretNotFound")
    })
    .await;
    let (_, _, msg) = ready(&w).unwrap();
    assert!(
        msg.contains("creds") && msg.contains("spec.auth.basic.secretRef"),
        "{msg}"
    );
    // Held, not dropped: events for it are kept until the Secret exists.
    let t = op.registry.get(&key(&ns.name, "s")).expect("held target");
    assert_eq!(t.held.as_deref(), Some("SecretNotFound"));

    // The failure is also a Kubernetes Event on the resource.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let mut found = false;
    for _ in 0..50 {
        let list = events.list(&ListParams::default()).await.unwrap();
        found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("SecretNotFound")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("s")
                && e.type_.as_deref() == Some("Warning")
        });
        if found {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(found, "no Warning event SecretNotFound on the subscription");

    // A Secret missing a key is SecretInvalid; a bad signing secret too.
    apply_value(
        &client,
        &ns.name,
        secret("creds", json!({ "username": "u" })),
    )
    .await;
    let w = wait_for(&api, "s", "SecretInvalid (no password)", |w| {
        ready_is(w, "False", "SecretInvalid")
    })
    .await;
    assert!(ready(&w).unwrap().2.contains("password"));
    apply_value(
        &client,
        &ns.name,
        secret("creds", json!({ "username": "u", "password": "p" })),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        secret("signing", json!({ "secret": "not-a-whsec" })),
    )
    .await;
    let w = wait_for(&api, "s", "SecretInvalid (signing)", |w| {
        ready(w).is_some_and(|(_, r, m)| r == "SecretInvalid" && m.contains("whsec_"))
    })
    .await;
    assert!(ready(&w).unwrap().2.contains("spec.signing.secretRef"));

    // Rotation to a valid secret is picked up within seconds.
    let started = std::time::Instant::now();
    apply_value(
        &client,
        &ns.name,
        secret("signing", json!({ "secret": format!("{WHSEC} {WHSEC}") })),
    )
    .await;
    wait_for(&api, "s", "Ready after fixing Secrets", |w| {
        ready_is(w, "True", "Ready")
    })
    .await;
    eprintln!("secret fix picked up in {:?}", started.elapsed());
    let t = op.registry.get(&key(&ns.name, "s")).unwrap();
    assert!(t.held.is_none());
    match t.config.as_ref().unwrap() {
        vehicle_connect::routing::TargetConfig::Webhook(wt) => assert_eq!(wt.signing_keys.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn namespace_must_allow_the_client() {
    let op = operator();
    let (ns, client) = tenant(op, "tenancy", "dealer-other").await;
    apply_value(
        &client,
        &ns.name,
        subscription("s", json!({ "url": "http://127.0.0.1:9/", "clientId": "dealer-1", "events": ["vehicle.processed"] })),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let w = wait_for(&api, "s", "ClientNotAllowed", |w| {
        ready_is(w, "False", "ClientNotAllowed")
    })
    .await;
    assert!(ready(&w).unwrap().2.contains("connect.vehicles.io/clients"));
    assert!(
        op.registry.get(&key(&ns.name, "s")).is_none(),
        "a disallowed client must get nothing"
    );

    // The admin allows it: picked up through the Namespace watch.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "annotations": { "connect.vehicles.io/clients": "dealer-other, dealer-1" } } })),
    )
    .await
    .unwrap();
    wait_for(&api, "s", "Ready once allowed", |w| {
        ready_is(w, "True", "Ready")
    })
    .await;
    assert!(op.registry.get(&key(&ns.name, "s")).is_some());

    // And revoked again: the target goes away.
    nss.patch(
        &ns.name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "metadata": { "annotations": { "connect.vehicles.io/clients": "*x" } } }),
        ),
    )
    .await
    .unwrap();
    wait_for(&api, "s", "ClientNotAllowed again", |w| {
        ready_is(w, "False", "ClientNotAllowed")
    })
    .await;
    assert!(op.registry.get(&key(&ns.name, "s")).is_none());
}

#[tokio::test]
async fn internal_targets_are_refused_and_suspend_holds() {
    let op = operator();
    let (ns, client) = tenant(op, "targets", "*").await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for (name, url) in [
        ("private", "http://10.1.2.3/hook"),
        ("metadata", "http://169.254.169.254/latest"),
        ("cluster", "https://kubernetes.default.svc.cluster.local/"),
    ] {
        apply_value(
            &client,
            &ns.name,
            subscription(
                name,
                json!({ "url": url, "clientId": "c", "events": ["data.new"] }),
            ),
        )
        .await;
        let w = wait_for(&api, name, "TargetNotAllowed", |w| {
            ready(w).is_some_and(|(s, r, _)| {
                s == "False" && (r == "TargetNotAllowed" || r == "TargetUnresolvable")
            })
        })
        .await;
        assert!(ready(&w).unwrap().2.contains("spec.url"));
        assert!(
            op.registry
                .get(&key(&ns.name, name))
                .is_none_or(|t| t.held.is_some())
        );
    }

    apply_value(
        &client,
        &ns.name,
        subscription("paused", json!({ "url": "http://127.0.0.1:9/", "clientId": "c", "events": ["data.new"], "suspend": true })),
    )
    .await;
    wait_for(&api, "paused", "Suspended", |w| {
        ready_is(w, "True", "Suspended")
    })
    .await;
    assert_eq!(
        op.registry
            .get(&key(&ns.name, "paused"))
            .unwrap()
            .held
            .as_deref(),
        Some("Suspended")
    );
    api.patch(
        "paused",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "suspend": false } })),
    )
    .await
    .unwrap();
    wait_for(&api, "paused", "Ready after resume", |w| {
        ready_is(w, "True", "Ready")
    })
    .await;
    assert!(
        op.registry
            .get(&key(&ns.name, "paused"))
            .unwrap()
            .held
            .is_none()
    );
}

#[tokio::test]
async fn deleting_is_immediate_and_removes_the_target() {
    let op = operator();
    let (ns, client) = tenant(op, "delete", "c").await;
    apply_value(
        &client,
        &ns.name,
        subscription(
            "gone",
            json!({ "url": "http://127.0.0.1:9/", "clientId": "c", "events": ["vehicle.deleted"] }),
        ),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    wait_for(&api, "gone", "Ready", |w| ready_is(w, "True", "Ready")).await;
    assert!(op.registry.get(&key(&ns.name, "gone")).is_some());
    api.delete("gone", &DeleteParams::default()).await.unwrap();
    // Nothing to wait for: the object is gone at once.
    assert!(api.get_opt("gone").await.unwrap().is_none());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while op.registry.get(&key(&ns.name, "gone")).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "target survived deletion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Objects of an earlier version carry its finalizer: the operator removes it (so deleting
/// them never hangs once it is uninstalled), and one being deleted is released at once.
#[tokio::test]
async fn the_finalizer_of_earlier_versions_is_removed() {
    let op = operator();
    let (ns, client) = tenant(op, "legacy-fin", "c").await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for name in ["old-live", "old-deleted"] {
        let mut v = subscription(
            name,
            json!({ "url": "http://127.0.0.1:9/", "clientId": "c", "events": ["vehicle.deleted"] }),
        );
        // A second finalizer (not ours) keeps "old-deleted" visible while it is deleted.
        v["metadata"]["finalizers"] = if name == "old-deleted" {
            json!(["connect.vehicles.io/cleanup", "example.com/keep"])
        } else {
            json!(["connect.vehicles.io/cleanup"])
        };
        apply_value(&client, &ns.name, v).await;
    }
    wait_for(&api, "old-live", "finalizer removed, Ready", |w| {
        w.metadata.finalizers.clone().unwrap_or_default().is_empty() && ready_is(w, "True", "Ready")
    })
    .await;
    wait_for(&api, "old-deleted", "Ready", |w| {
        ready_is(w, "True", "Ready")
    })
    .await;
    api.delete("old-deleted", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(&api, "old-deleted", "only the other finalizer left", |w| {
        w.metadata.finalizers.clone().unwrap_or_default() == ["example.com/keep"]
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while op.registry.get(&key(&ns.name, "old-deleted")).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted object stayed routed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    api.patch(
        "old-deleted",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "metadata": { "finalizers": null } })),
    )
    .await
    .unwrap();
}
