//! The operator, in-process, against the test control plane: each started once per process
//! on a thread with its own runtime, so tests can read its routing registry. Each serves
//! only its own scope's namespaces (see [`super::scope`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use vc_envtest::ControlPlane;
use vehicle_connect::controller::{self, Settings};
use vehicle_connect::routing::Registry;
use vehicle_connect::ssrf::{TargetGuard, parse_allow_list};

use super::scope::Scope;

pub struct Operator {
    pub cp: &'static ControlPlane,
    pub registry: Arc<Registry>,
    pub scope: Scope,
}

/// The control plane with CRDs installed and the operator running (allow-list: loopback),
/// shared by the tests that need no particular settings.
pub fn operator() -> &'static Operator {
    operator_with("shared", |s| s)
}

/// An operator of its own named `name` (one per name and process), with `adjust` applied to
/// its settings. Its `watch_selector` is its scope's: an `adjust` that changes it must keep
/// it at least as narrow, or the operator acts on other tests' resources.
pub fn operator_with(name: &'static str, adjust: fn(Settings) -> Settings) -> &'static Operator {
    static OPERATORS: Mutex<BTreeMap<&str, &Operator>> = Mutex::new(BTreeMap::new());
    // Held while one starts: a second caller of the same name waits for it.
    let mut started = OPERATORS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(op) = started.get(name) {
        return op;
    }
    let op: &'static Operator = Box::leak(Box::new(start(name, adjust)));
    started.insert(name, op);
    op
}

fn start(name: &str, adjust: fn(Settings) -> Settings) -> Operator {
    let cp = ControlPlane::shared();
    let scope = Scope::new(name);
    let registry = Arc::new(Registry::new());
    let reg = registry.clone();
    let selector = scope.selector();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("operator-{name}"))
        .spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let crds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
                cp.install_crds(&crds).await.expect("install CRDs");
                let client = cp.client().await.expect("client");
                tx.send(()).expect("signal");
                let settings = adjust(Settings {
                    guard: TargetGuard::new(
                        parse_allow_list("127.0.0.0/8,::1").expect("allow list"),
                    ),
                    probe_interval: Duration::from_secs(30),
                    watch_selector: Some(selector),
                    ..Settings::default()
                });
                controller::run(
                    client,
                    reg,
                    settings,
                    None,
                    Arc::new(vehicle_connect::metrics::Metrics::new()),
                )
                .await;
            })
        })
        .expect("operator thread");
    rx.recv_timeout(Duration::from_secs(120))
        .expect("operator did not start");
    Operator {
        cp,
        registry,
        scope,
    }
}

/// A fresh namespace of `op`'s scope (name starting with `prefix`) whose annotation allows
/// `clients`, and a client of the control plane.
pub async fn tenant(
    op: &Operator,
    prefix: &str,
    clients: &str,
) -> (vc_envtest::TestNamespace, Client) {
    tenant_in(op.cp, &op.scope, prefix, clients).await
}

/// A fresh namespace of `scope` (served by an operator process, say), as [`tenant`] makes.
pub async fn tenant_in(
    cp: &ControlPlane,
    scope: &Scope,
    prefix: &str,
    clients: &str,
) -> (vc_envtest::TestNamespace, Client) {
    let ns = scope.namespace(cp, prefix, clients).await;
    (ns, cp.client().await.expect("client"))
}

/// Applies a Secret `name` of `type_` (None: untyped) with `string_data` into `ns`.
pub async fn put_secret(
    client: &Client,
    ns: &str,
    name: &str,
    type_: Option<&str>,
    string_data: serde_json::Value,
) {
    let mut v = serde_json::json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name }, "stringData": string_data });
    if let Some(t) = type_ {
        v["type"] = t.into();
    }
    apply_value(client, ns, v).await;
}

/// Server-side applies YAML (one or more documents) into `ns` (overriding their namespace;
/// our resources get the scope label of `ns`).
pub async fn apply_yaml(client: &Client, ns: &str, yaml: &str) -> Vec<DynamicObject> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("yaml");
        if v.is_null() {
            continue;
        }
        out.push(apply_value(client, ns, v).await);
    }
    out
}

/// Server-side applies `v` into `ns`; our resources get the scope label of `ns`.
pub async fn apply_value(client: &Client, ns: &str, mut v: serde_json::Value) -> DynamicObject {
    v["metadata"]["namespace"] = ns.into();
    super::scope::label(client, ns, &mut v).await;
    let api_version = v["apiVersion"].as_str().expect("apiVersion").to_string();
    let kind = v["kind"].as_str().expect("kind").to_string();
    let name = v["metadata"]["name"].as_str().expect("name").to_string();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    api.patch(
        &name,
        &PatchParams::apply("vehicle-connect-tests").force(),
        &Patch::Apply(&v),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind}/{name}: {e}"))
}

/// Polls `name` until `pred` holds (30 s), returning the object; panics with the last
/// state seen.
pub async fn wait_for<K, F>(api: &Api<K>, name: &str, what: &str, pred: F) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    loop {
        if let Ok(Some(o)) = api.get_opt(name).await {
            if pred(&o) {
                return o;
            }
            last = Some(o);
        }
        if Instant::now() > deadline {
            panic!("{name}: timed out waiting for {what}; last seen: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(status, reason, message)` of condition `type_` in a status with `conditions`.
pub fn condition(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<(String, String, String)> {
    conds
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits (30 s) until the WebhookSubscription `name` of `api` is Ready=True.
pub async fn subscription_ready(
    api: &Api<vehicle_connect::api::WebhookSubscription>,
    name: &str,
) -> vehicle_connect::api::WebhookSubscription {
    wait_for(api, name, "Ready", |w| {
        w.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|c| c.0 == "True")
    })
    .await
}
