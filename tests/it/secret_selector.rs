//! `--secret-selector` against the real control plane: with it, the operator watches and
//! reads only Secrets carrying the selected labels (an operator of its own).

use crate::support::operator::{
    apply_value, condition, operator_with, put_secret, tenant, wait_for,
};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vehicle_connect::api::WebhookSubscription;
use vehicle_connect::controller::{Settings, secrets::check_selector, webhook::key};

const SELECTOR: &str = "connect.vehicles.io/credential=true";

fn ready_is(w: &WebhookSubscription, status: &str, reason: &str) -> bool {
    w.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .is_some_and(|(s, r, _)| s == status && r == reason)
}

#[tokio::test]
async fn only_selected_secrets_are_used() {
    let op = operator_with("secret-selector", |s| Settings {
        secret_selector: Some(SELECTOR.into()),
        ..s
    });
    let (ns, client) = tenant(op, "selector", "c").await;
    put_secret(
        &client,
        &ns.name,
        "creds",
        Some("kubernetes.io/basic-auth"),
        json!({ "username": "u", "password": "p" }),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                "metadata": { "name": "s" },
                "spec": { "url": "http://127.0.0.1:9/h", "clientId": "c", "events": ["data.new"],
                          "auth": { "basic": { "secretRef": { "name": "creds" } } } } }),
    )
    .await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    let w = wait_for(&api, "s", "SecretNotAllowed (no label)", |w| {
        ready_is(w, "False", "SecretNotAllowed")
    })
    .await;
    let msg = condition(&w.status.unwrap().conditions, "Ready").unwrap().2;
    assert!(msg.contains("creds") && msg.contains(SELECTOR), "{msg}");
    let t = op.registry.get(&key(&ns.name, "s")).expect("held target");
    assert_eq!(t.held.as_deref(), Some("SecretNotAllowed"));

    // Labelled: the selector's watch sees it and the subscription turns ready.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &ns.name);
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "labels": { "connect.vehicles.io/credential": "true" } } }),
            ),
        )
        .await
        .unwrap();
    wait_for(&api, "s", "Ready once labelled", |w| {
        ready_is(w, "True", "Ready")
    })
    .await;

    // The label removed: refused again (the cached value is not used any more either).
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "labels": { "connect.vehicles.io/credential": null } } }),
            ),
        )
        .await
        .unwrap();
    wait_for(&api, "s", "SecretNotAllowed after unlabelling", |w| {
        ready_is(w, "False", "SecretNotAllowed")
    })
    .await;

    // A Secret that does not exist at all is still reported as such.
    api.patch(
        "s",
        &PatchParams::default(),
        &Patch::Merge(
            json!({ "spec": { "auth": { "basic": { "secretRef": { "name": "nope" } } } } }),
        ),
    )
    .await
    .unwrap();
    wait_for(&api, "s", "SecretNotFound", |w| {
        ready_is(w, "False", "SecretNotFound")
    })
    .await;

    // A selector the API server cannot parse stops the start with a clear error.
    assert!(check_selector(&client, SELECTOR).await.is_ok());
    assert!(check_selector(&client, "a in (b").await.is_err());
}
