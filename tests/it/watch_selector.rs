//! `--watch-label-selector` against the real control plane: the operator serves only the
//! resources carrying its labels, and stops routing to one relabelled away.

use std::time::{Duration, Instant};

use crate::support::operator::{apply_value, condition, operator_with, tenant, wait_for};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vehicle_connect::api::{EventType, WebhookSubscription};
use vehicle_connect::controller::{Settings, check_selector, webhook::key};

const SHARD: &str = "connect.vehicles.io/shard";

fn subscription(name: &str, shard: Option<&str>) -> serde_json::Value {
    let labels = shard.map(|s| json!({ SHARD: s })).unwrap_or(json!({}));
    json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": name, "labels": labels },
            "spec": { "url": "http://127.0.0.1:9/h", "clientId": "c", "events": ["data.new"] } })
}

fn is_ready(w: &WebhookSubscription) -> bool {
    w.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
        .is_some_and(|(s, _, _)| s == "True")
}

/// Keys of the targets an event of client `c` is routed to.
fn routed(op: &crate::support::operator::Operator) -> Vec<String> {
    op.registry
        .route("c", None, EventType::DataNew)
        .iter()
        .map(|t| t.key.name.clone())
        .collect()
}

#[tokio::test]
async fn only_resources_matching_the_selector_are_served() {
    // Its scope and shard a: the scope keeps it off other tests' resources.
    let op = operator_with("watch-selector", |s| Settings {
        watch_selector: s.watch_selector.map(|scope| format!("{scope},{SHARD}=a")),
        ..s
    });
    let (ns, client) = tenant(op, "shard", "c").await;
    let api: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    // Another installation's and nobody's first: once "mine" is Ready, an operator that
    // watched them would have reconciled them too.
    for (name, shard) in [("theirs", Some("b")), ("nobodys", None)] {
        apply_value(&client, &ns.name, subscription(name, shard)).await;
    }
    apply_value(&client, &ns.name, subscription("mine", Some("a"))).await;
    wait_for(&api, "mine", "Ready", is_ready).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for name in ["theirs", "nobodys"] {
        let w = api.get(name).await.unwrap();
        assert!(w.status.is_none(), "{name} got a status: {:?}", w.status);
        assert!(
            w.metadata.finalizers.unwrap_or_default().is_empty(),
            "{name} got a finalizer"
        );
        assert!(op.registry.get(&key(&ns.name, name)).is_none(), "{name}");
    }
    assert_eq!(routed(op), ["mine"]);

    // Relabelled to another shard: no longer routed to here.
    let relabel =
        |shard: &'static str| Patch::Merge(json!({ "metadata": { "labels": { SHARD: shard } } }));
    api.patch("mine", &PatchParams::default(), &relabel("b"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while op.registry.get(&key(&ns.name, "mine")).is_some() {
        assert!(
            Instant::now() < deadline,
            "still registered after relabelling"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(routed(op).is_empty());

    // And one relabelled into this shard is taken up.
    api.patch("theirs", &PatchParams::default(), &relabel("a"))
        .await
        .unwrap();
    wait_for(&api, "theirs", "Ready once labelled", is_ready).await;
    assert_eq!(routed(op), ["theirs"]);

    // A selector the API server cannot parse stops the start with a clear error.
    assert!(
        check_selector::<WebhookSubscription>(&client, "a in (b")
            .await
            .is_err()
    );
}
