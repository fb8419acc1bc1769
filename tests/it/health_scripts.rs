//! The health definitions shipped in docs/health, judged by the real kstatus library and by
//! Argo CD's and Flux's evaluation (`support::health`), on hand-written objects of all three
//! kinds in every state the operator writes; and argocd-cm.yaml against the Lua
//! it inlines.

use kube::Resource;
use serde_json::{Value, json};
use vehicle_connect::api::{ApiConnection, FtpConnection, WebhookSubscription};

use crate::support::health::{self, Verdicts};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Webhook,
    Ftp,
    Api,
}

const KINDS: [Kind; 3] = [Kind::Webhook, Kind::Ftp, Kind::Api];

impl Kind {
    fn kind(self) -> String {
        match self {
            Kind::Webhook => WebhookSubscription::kind(&()).into_owned(),
            Kind::Ftp => FtpConnection::kind(&()).into_owned(),
            Kind::Api => ApiConnection::kind(&()).into_owned(),
        }
    }

    fn spec(self) -> Value {
        match self {
            Kind::Webhook => json!({
                "url": "https://dms.example.com/webhooks/vehicles",
                "clientId": "dealer-123",
                "events": ["vehicle.processed", "vehicle.deleted"],
                "signing": {"secretRef": {"name": "dms-webhook-signing"}},
                "timeoutSeconds": 10
            }),
            Kind::Ftp => json!({
                "host": "ftp.example.com",
                "port": 21,
                "protocol": "ftp",
                "credentialsSecretRef": {"name": "dms-ftp"},
                "clientId": "dealer-123",
                "rules": {"baseDirectory": "/incoming", "layout": "files"}
            }),
            Kind::Api => json!({
                "clientId": "dealer-123",
                "events": ["vehicle.created"],
                "baseUrl": "https://dms.example.com/api",
                "mappings": [{
                    "events": ["vehicle.created"],
                    "requests": [{
                        "name": "create",
                        "method": "POST",
                        "path": "/v1/vehicles",
                        "body": "{ \"vin\": {{ vehicle.vin }} }",
                        "expect": [201]
                    }]
                }]
            }),
        }
    }

    /// The delivery counters beside the conditions, as the operator keeps them.
    fn counters(self) -> Value {
        match self {
            Kind::Ftp => json!({"uploaded": 12, "files": 40, "bytes": 5_242_880, "failed": 1,
                "pending": 0, "consecutiveFailures": 0}),
            Kind::Webhook | Kind::Api => json!({"delivered": 12, "failed": 1, "pending": 0,
                "consecutiveFailures": 0}),
        }
    }

    /// A Stalled reason this kind really writes.
    fn stalled_reason(self) -> &'static str {
        match self {
            Kind::Webhook => "ReceiverGone",
            Kind::Ftp => "SecretNotFound",
            Kind::Api => "InvalidTemplate",
        }
    }
}

const OBSERVED: i64 = 3;

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": OBSERVED,
        "lastTransitionTime": "2026-11-30T08:15:00Z"
    })
}

fn ready() -> Value {
    condition("Ready", "True", "Ready", "configured and accepting events")
}

fn delivered() -> Value {
    condition(
        "Delivering",
        "True",
        "Delivered",
        "last delivery 2026-11-30T09:00:00Z",
    )
}

fn reconciling(reason: &str, message: &str) -> Value {
    condition("Reconciling", "True", reason, message)
}

/// Only the user can fix it: Stalled carries the Ready reason.
fn stalled(reason: &str, message: &str) -> Vec<Value> {
    vec![
        condition("Ready", "False", reason, message),
        condition("Stalled", "True", reason, message),
    ]
}

/// A live object as the API server returns it: `conditions: None` is one whose status the
/// operator has not written yet.
fn object(kind: Kind, generation: i64, conditions: Option<Vec<Value>>, deleting: bool) -> Value {
    let mut obj = json!({
        "apiVersion": WebhookSubscription::api_version(&()),
        "kind": kind.kind(),
        "metadata": {
            "name": "dms",
            "namespace": "dealer-123",
            "uid": "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
            "resourceVersion": "48211",
            "generation": generation,
            "creationTimestamp": "2026-11-30T08:00:00Z",
            "labels": {"app.kubernetes.io/part-of": "dealer-123"}
        },
        "spec": kind.spec()
    });
    if deleting {
        obj["metadata"]["deletionTimestamp"] = json!("2026-11-30T09:30:00Z");
        obj["metadata"]["finalizers"] = json!(["connect.vehicles.io/cleanup"]);
    }
    if let Some(conditions) = conditions {
        let mut status = kind.counters();
        status["observedGeneration"] = json!(OBSERVED);
        status["conditions"] = Value::Array(conditions);
        obj["status"] = status;
    }
    // Each fixture must be an object our own types accept, or the test proves nothing.
    let parsed = match kind {
        Kind::Webhook => serde_json::from_value::<WebhookSubscription>(obj.clone()).map(drop),
        Kind::Ftp => serde_json::from_value::<FtpConnection>(obj.clone()).map(drop),
        Kind::Api => serde_json::from_value::<ApiConnection>(obj.clone()).map(drop),
    };
    if let Err(e) = parsed {
        panic!("fixture is not a valid {}: {e}\n{obj:#}", kind.kind());
    }
    obj
}

/// An object whose status describes its current generation.
fn live(kind: Kind, conditions: Vec<Value>) -> Value {
    object(kind, OBSERVED, Some(conditions), false)
}

struct Case {
    state: String,
    obj: Value,
    /// kstatus, Argo CD, Flux.
    want: [&'static str; 3],
    messages: Vec<(Tool, Want)>,
}

#[derive(Clone, Copy, Debug)]
enum Tool {
    Kstatus,
    Argocd,
    Flux,
}

#[derive(Debug)]
enum Want {
    /// The whole message.
    Is(String),
    /// Part of it (Flux quotes the whole expression that failed).
    Has(&'static str),
}

impl Tool {
    fn message(self, v: &Verdicts) -> &str {
        match self {
            Tool::Kstatus => &v.messages.kstatus,
            Tool::Argocd => &v.messages.argocd,
            Tool::Flux => &v.messages.flux,
        }
    }
}

fn argocd_says(message: &str) -> Vec<(Tool, Want)> {
    vec![(Tool::Argocd, Want::Is(message.to_owned()))]
}

fn cases(kind: Kind) -> Vec<Case> {
    let reason = kind.stalled_reason();
    let stalled_message = "Secret or receiver missing; fix the spec";
    let failing = "12 deliveries failed in a row: connection refused by dms.example.com:443";
    vec![
        Case {
            state: "Ready=True, generation observed".into(),
            obj: live(kind, vec![ready(), delivered()]),
            want: ["Current", "Healthy", "Current"],
            messages: argocd_says("configured and accepting events"),
        },
        Case {
            state: "observedGeneration < metadata.generation".into(),
            obj: object(kind, OBSERVED + 1, Some(vec![ready(), delivered()]), false),
            want: ["InProgress", "Progressing", "InProgress"],
            messages: vec![(
                Tool::Kstatus,
                Want::Is(format!(
                    "{} generation is 4, but latest observed generation is 3",
                    kind.kind()
                )),
            )],
        },
        // kstatus sees no Reconciling, Stalled or Ready condition and calls a new object
        // Current. Flux evaluates the expressions against the object's top-level fields, and
        // with no `status` field at all every expression fails ("no such attribute"), which
        // Flux reports as Unknown and waits on until spec.timeout, like InProgress.
        Case {
            state: "no status yet".into(),
            obj: object(kind, 1, None, false),
            want: ["Current", "Progressing", "Unknown"],
            messages: vec![
                (Tool::Kstatus, Want::Is("Resource is current".into())),
                (Tool::Flux, Want::Has("no such attribute(s): status")),
            ],
        },
        Case {
            state: "Reconciling=True (not probed yet)".into(),
            obj: live(
                kind,
                vec![
                    condition(
                        "Ready",
                        "Unknown",
                        "NotProbed",
                        "waiting for the first probe",
                    ),
                    reconciling("NotProbed", "waiting for the first probe"),
                    condition("Delivering", "Unknown", "NoDeliveries", "nothing sent yet"),
                ],
            ),
            want: ["InProgress", "Progressing", "InProgress"],
            messages: argocd_says("NotProbed: waiting for the first probe"),
        },
        Case {
            state: "Reconciling=True (retrying ConnectionRefused)".into(),
            obj: live(
                kind,
                vec![
                    condition("Ready", "False", "ConnectionRefused", "dms.example.com:443"),
                    reconciling("ConnectionRefused", "retrying in 30s"),
                ],
            ),
            want: ["InProgress", "Progressing", "InProgress"],
            messages: argocd_says("ConnectionRefused: retrying in 30s"),
        },
        Case {
            state: format!("Stalled=True ({reason})"),
            obj: live(kind, stalled(reason, stalled_message)),
            want: ["Failed", "Degraded", "Failed"],
            messages: argocd_says(&format!("{reason}: {stalled_message}")),
        },
        Case {
            state: "Stalled=True (ClientNotAllowed)".into(),
            obj: live(kind, stalled("ClientNotAllowed", "dealer-123 not allowed")),
            want: ["Failed", "Degraded", "Failed"],
            messages: vec![(Tool::Kstatus, Want::Is("dealer-123 not allowed".into()))],
        },
        Case {
            state: "Ready=True, Delivering=False (DeliveryFailing)".into(),
            obj: live(
                kind,
                vec![
                    ready(),
                    condition("Delivering", "False", "DeliveryFailing", failing),
                ],
            ),
            want: ["Current", "Degraded", "Current"],
            messages: argocd_says(failing),
        },
        Case {
            state: "Ready=True, Delivering=False (DeliveryDelayed)".into(),
            obj: live(
                kind,
                vec![
                    ready(),
                    condition(
                        "Delivering",
                        "False",
                        "DeliveryDelayed",
                        "40 events waiting",
                    ),
                ],
            ),
            want: ["Current", "Degraded", "Current"],
            messages: argocd_says("40 events waiting"),
        },
        // Suspended is what the user asked for: the operator writes Ready=True with reason
        // Suspended, so kstatus (which falls back to Ready when there is neither Reconciling
        // nor Stalled) and Flux call it done, and Argo CD shows it as Suspended.
        Case {
            state: "suspended (Ready=True, Suspended)".into(),
            obj: live(
                kind,
                vec![
                    condition("Ready", "True", "Suspended", "spec.suspend is true"),
                    condition("Delivering", "Unknown", "NoDeliveries", "suspended"),
                ],
            ),
            want: ["Current", "Suspended", "Current"],
            messages: argocd_says("spec.suspend is true"),
        },
        // Not a state the operator writes; the script must not call it healthy or wait on it.
        Case {
            state: "Ready=False with neither Reconciling nor Stalled".into(),
            obj: live(
                kind,
                vec![condition("Ready", "False", "SecretInvalid", "key missing")],
            ),
            want: ["InProgress", "Degraded", "InProgress"],
            messages: argocd_says("SecretInvalid: key missing"),
        },
        // Argo CD and kstatus look at deletion before anything else; Flux' expressions do not.
        Case {
            state: "being deleted".into(),
            obj: object(kind, OBSERVED, Some(vec![ready(), delivered()]), true),
            want: ["Terminating", "Progressing", "Current"],
            messages: argocd_says("Pending deletion"),
        },
    ]
}

#[test]
fn health_verdicts_of_every_state_and_kind() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for kind in KINDS {
        for case in cases(kind) {
            let v = health::verdicts(&case.obj);
            let got = [v.kstatus.as_str(), v.argocd.as_str(), v.flux.as_str()];
            let place = format!("{} / {}", kind.kind(), case.state);
            if got != case.want {
                wrong.push(format!(
                    "{place}: (kstatus, argocd, flux) = {got:?}, want {:?}; {:?}",
                    case.want, v.messages
                ));
            }
            for (tool, want) in &case.messages {
                let got = tool.message(&v);
                let ok = match want {
                    Want::Is(text) => got == text,
                    Want::Has(part) => got.contains(part),
                };
                if !ok {
                    wrong.push(format!("{place}: {tool:?} message {got:?}, want {want:?}"));
                }
            }
            checked += 1;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} cases wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// argocd-cm.yaml inlines argocd.lua, byte for byte, under each kind's key.
#[test]
fn health_argocd_cm_inlines_the_lua_script() {
    let lua = std::fs::read_to_string(health::argocd_lua_path()).expect("read argocd.lua");
    let path = health::argocd_lua_path().with_file_name("argocd-cm.yaml");
    let cm: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("argocd-cm.yaml is YAML");
    let group = WebhookSubscription::group(&());
    let mut keys: Vec<String> = KINDS
        .iter()
        .map(|k| format!("resource.customizations.health.{group}_{}", k.kind()))
        .collect();
    keys.sort();
    let data = cm["data"].as_object().expect("argocd-cm.yaml has data");
    let mut found: Vec<String> = data.keys().cloned().collect();
    found.sort();
    assert_eq!(found, keys, "argocd-cm.yaml keys");
    for key in &keys {
        assert!(
            data[key].as_str() == Some(lua.as_str()),
            "{key} in argocd-cm.yaml differs from argocd.lua; run `make health-docs` and commit"
        );
    }
}

/// The Flux snippet covers exactly our three kinds, at the version the CRDs serve.
#[test]
fn health_flux_snippet_names_our_kinds() {
    let path = health::flux_exprs_path();
    let ks: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("flux-health-checks.yaml is YAML");
    assert_eq!(ks["kind"], "Kustomization");
    assert_eq!(ks["spec"]["wait"], true, "health checks run only with wait");
    let mut got: Vec<(String, String)> = ks["spec"]["healthCheckExprs"]
        .as_array()
        .expect("spec.healthCheckExprs")
        .iter()
        .map(|e| {
            for field in ["inProgress", "failed", "current"] {
                assert!(e[field].is_string(), "{field} missing in {e}");
            }
            (
                e["apiVersion"].as_str().unwrap_or_default().to_owned(),
                e["kind"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        (ApiConnection::api_version(&()), ApiConnection::kind(&())),
        (FtpConnection::api_version(&()), FtpConnection::kind(&())),
        (
            WebhookSubscription::api_version(&()),
            WebhookSubscription::kind(&()),
        ),
    ]
    .into_iter()
    .map(|(a, k)| (a.into_owned(), k.into_owned()))
    .collect();
    want.sort();
    assert_eq!(got, want);
}
