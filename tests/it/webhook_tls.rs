//! Webhook receivers behind a private CA (`spec.tls.caSecretRef`), and the system
//! trust store as the default of every HTTP client (webhooks, APIs, image downloads). The
//! operator is a real process whose system store (`SSL_CERT_FILE`) holds one CA made here;
//! receivers are HTTPS servers on 127.0.0.1 whose certificates rcgen CAs signed, each CA
//! known only where the test puts it.

use std::sync::LazyLock;

use kube::api::Api;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use vc_envtest::ControlPlane;
use vehicle_connect::api::{ApiConnection, WebhookSubscription};
use vehicle_connect::api::{FailureRecord, WebhookSubscriptionStatus};

use crate::support::operator::{
    apply_value, apply_yaml, condition, put_secret, tenant_in, wait_for,
};
use crate::support::process::{Launch, OperatorProcess, TOKEN, binary, start_launch};
use crate::support::receiver::Receiver;
use crate::support::scope::Scope;
use crate::support::tls::{Ca, ServerTls, new_ca, server_config};

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

static OPERATOR: OnceCell<OperatorProcess> = OnceCell::const_new();
static SCOPE: LazyLock<Scope> = LazyLock::new(|| Scope::new("webhook-tls"));
/// The one CA in the operator's system trust store.
static SYSTEM_CA: LazyLock<Ca> = LazyLock::new(|| new_ca("system trust store test CA"));

/// The module's operator (started once, its system trust store [`SYSTEM_CA`]); its ingest URL.
async fn operator_url() -> String {
    let op = OPERATOR
        .get_or_init(|| async {
            let cp = ControlPlane::shared();
            cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
                .await
                .unwrap();
            let dir = cp
                .dir
                .join(format!("operator-webhook-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let store = dir.join("system-roots.pem");
            std::fs::write(&store, SYSTEM_CA.pem()).unwrap();
            let launch = Launch::new(binary()).env("SSL_CERT_FILE", store.to_str().unwrap());
            start_launch(cp, dir, &SCOPE, launch).await
        })
        .await;
    op.url("/v1/events")
}

/// A namespace of its own (its own client), with the signing Secret.
struct Tenant {
    ns: String,
    client_id: String,
    client: kube::Client,
    hooks: Api<WebhookSubscription>,
    ingest: String,
}

async fn tenant(prefix: &str) -> Tenant {
    let ingest = operator_url().await;
    let client_id = format!("whtls-{prefix}");
    let (ns, client) = tenant_in(ControlPlane::shared(), &SCOPE, prefix, &client_id).await;
    put_secret(
        &client,
        &ns.name,
        "signing",
        None,
        json!({ "secret": WHSEC }),
    )
    .await;
    Tenant {
        hooks: Api::namespaced(client.clone(), &ns.name),
        ns: ns.name.clone(),
        client_id,
        client,
        ingest,
    }
}

impl Tenant {
    /// A Secret holding `ca`'s certificate under `ca.crt`.
    async fn ca_secret(&self, name: &str, ca: &Ca) {
        put_secret(
            &self.client,
            &self.ns,
            name,
            None,
            json!({ "ca.crt": ca.pem() }),
        )
        .await;
    }

    /// A signed subscription to `url` with quick retries, trusting the CA in Secret `ca`
    /// (`spec.tls.caSecretRef`) when given.
    async fn subscribe(&self, name: &str, url: &str, ca: Option<&str>) {
        let mut spec = json!({
            "url": url, "clientId": self.client_id, "events": ["vehicle.processed"],
            "signing": { "secretRef": { "name": "signing" } },
            "timeoutSeconds": 5,
            "retry": { "maxAttempts": 100, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 }
        });
        if let Some(ca) = ca {
            spec["tls"] = json!({ "caSecretRef": { "name": ca } });
        }
        apply_value(
            &self.client,
            &self.ns,
            json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                    "metadata": { "name": name }, "spec": spec }),
        )
        .await;
    }

    /// `(status, reason, message)` of Ready once `reason` is it.
    async fn ready(&self, name: &str, reason: &str) -> (String, String, String) {
        self.ready_message(name, reason, "").await
    }

    /// Like [`Self::ready`], once the message also holds `text`.
    async fn ready_message(
        &self,
        name: &str,
        reason: &str,
        text: &str,
    ) -> (String, String, String) {
        let w = wait_for(&self.hooks, name, &format!("{reason} ({text})"), |w| {
            ready_of(w).is_some_and(|(_, r, m)| r == reason && m.contains(text))
        })
        .await;
        ready_of(&w).unwrap()
    }

    async fn status(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&WebhookSubscriptionStatus) -> bool,
    ) -> WebhookSubscriptionStatus {
        let w = wait_for(&self.hooks, name, what, |w| {
            w.status.as_ref().is_some_and(&pred)
        })
        .await;
        w.status.unwrap()
    }

    /// The last failure once it is a TLS error.
    async fn tls_failure(&self, name: &str) -> FailureRecord {
        let st = self
            .status(name, "lastFailure TlsError", |s| {
                s.last_failure
                    .as_ref()
                    .is_some_and(|f| f.reason == "TlsError")
            })
            .await;
        st.last_failure.unwrap()
    }

    async fn post(&self, id: &str, images: Value) {
        let event = json!({
            "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
            "clientId": self.client_id,
            "data": { "vehicle": { "id": "veh-tls", "vin": "WVWZZZ1JZXW000001" }, "images": images }
        });
        let r = reqwest::Client::new()
            .post(&self.ingest)
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    }
}

fn ready_of(w: &WebhookSubscription) -> Option<(String, String, String)> {
    w.status
        .as_ref()
        .and_then(|s| condition(&s.conditions, "Ready"))
}

/// An HTTPS receiver (verifying signatures with [`WHSEC`]) whose certificate `ca` signed.
async fn receiver(ca: &Ca) -> (Receiver, ServerTls) {
    let tls = ServerTls::new(server_config(ca));
    (Receiver::start_tls(Some(WHSEC), &tls).await, tls)
}

#[tokio::test]
async fn tls_private_ca_only_in_the_secret_delivers_signed_and_without_it_fails_with_tls_error() {
    let t = tenant("private").await;
    let ca = new_ca("receiver private CA");
    let (rx, tls) = receiver(&ca).await;
    t.ca_secret("receiver-ca", &ca).await;
    t.subscribe("without", &rx.url("without"), None).await;
    t.subscribe("with", &rx.url("with"), Some("receiver-ca"))
        .await;
    for name in ["without", "with"] {
        assert_eq!(t.ready(name, "Ready").await.0, "True");
    }
    t.post("evt-tls-private-1", json!([])).await;

    let got = rx.wait_for("with", 1).await;
    assert_eq!(got[0].headers["webhook-id"], "evt-tls-private-1");
    assert_eq!(got[0].signature_ok, Some(true), "the signature verifies");
    let st = t.status("with", "delivered=1", |s| s.delivered == 1).await;
    assert_eq!(st.last_delivery.unwrap().event_id, "evt-tls-private-1");

    // Without the CA, the receiver's certificate is refused, and the status says so.
    let f = t.tls_failure("without").await;
    assert_eq!(f.event_id, "evt-tls-private-1");
    assert!(f.message.contains("UnknownIssuer"), "{f:?}");
    assert!(f.message.contains("spec.tls.caSecretRef"), "{f:?}");
    assert!(rx.received_on("without").is_empty(), "nothing got through");
    assert!(
        tls.handshakes().iter().any(Result::is_err),
        "the operator gave up in the handshake: {:?}",
        tls.handshakes()
    );
}

#[tokio::test]
async fn tls_a_rotated_ca_in_the_secret_is_picked_up() {
    let t = tenant("rotate").await;
    let (old, new) = (new_ca("receiver CA 2025"), new_ca("receiver CA 2026"));
    let (rx, tls) = receiver(&old).await;
    t.ca_secret("receiver-ca", &old).await;
    t.subscribe("hook", &rx.url("hook"), Some("receiver-ca"))
        .await;
    t.ready("hook", "Ready").await;
    t.post("evt-tls-rotate-1", json!([])).await;
    rx.wait_for("hook", 1).await;

    // The receiver moves to a certificate of the new CA: the old one no longer vouches for
    // it (each request is a new connection, so a pooled one cannot hide that).
    tls.set(server_config(&new));
    t.post("evt-tls-rotate-2", json!([])).await;
    let f = t.tls_failure("hook").await;
    assert_eq!(f.event_id, "evt-tls-rotate-2");
    assert_eq!(rx.received_on("hook").len(), 1);

    // Only the Secret changes, not the subscription: the retry trusts the new CA.
    t.ca_secret("receiver-ca", &new).await;
    let got = rx.wait_for("hook", 2).await;
    assert_eq!(got[1].headers["webhook-id"], "evt-tls-rotate-2");
    assert_eq!(got[1].signature_ok, Some(true));
    let st = t
        .status("hook", "delivered=2", |s| {
            s.delivered == 2 && s.consecutive_failures == 0
        })
        .await;
    assert_eq!(st.failed, 0);
}

#[tokio::test]
async fn tls_a_missing_or_bad_ca_secret_holds_the_events_until_fixed() {
    let t = tenant("bad-secret").await;
    let ca = new_ca("receiver CA, late");
    let (rx, _tls) = receiver(&ca).await;
    t.subscribe("hook", &rx.url("hook"), Some("late-ca")).await;
    let (status, _, message) = t.ready("hook", "SecretNotFound").await;
    assert_eq!(status, "False");
    assert!(
        message.contains("late-ca") && message.contains("spec.tls.caSecretRef"),
        "{message}"
    );
    // Held, not dropped.
    t.post("evt-tls-held-1", json!([])).await;

    put_secret(
        &t.client,
        &t.ns,
        "late-ca",
        None,
        json!({ "ca.pem": ca.pem() }),
    )
    .await;
    let (_, _, message) = t.ready("hook", "SecretInvalid").await;
    assert!(message.contains("has no key \"ca.crt\""), "{message}");

    put_secret(
        &t.client,
        &t.ns,
        "late-ca",
        None,
        json!({ "ca.crt": "not a certificate" }),
    )
    .await;
    let (_, _, message) = t.ready_message("hook", "SecretInvalid", "PEM").await;
    assert!(message.contains("spec.tls.caSecretRef"), "{message}");
    assert!(rx.received().is_empty(), "held while the CA is unusable");

    t.ca_secret("late-ca", &ca).await;
    t.ready("hook", "Ready").await;
    let got = rx.wait_for("hook", 1).await;
    assert_eq!(got[0].headers["webhook-id"], "evt-tls-held-1");
    assert_eq!(got[0].signature_ok, Some(true));
}

#[tokio::test]
async fn tls_the_system_trust_store_is_the_default_of_webhooks_apis_and_images() {
    let t = tenant("system").await;
    let (rx, _tls) = receiver(&SYSTEM_CA).await;
    // A private CA replaces the system roots: naming another CA refuses the system's.
    let other = new_ca("another private CA");
    t.ca_secret("other-ca", &other).await;
    t.subscribe("system", &rx.url("system"), None).await;
    t.subscribe("replaced", &rx.url("replaced"), Some("other-ca"))
        .await;
    // An API and the image it sends, both behind the system CA, without spec.tls.
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let image_url = rx.serve_file("images/veh-tls/1.jpg", &image, "image/jpeg");
    apply_value(
        &t.client,
        &t.ns,
        json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "ApiConnection",
            "metadata": { "name": "api" },
            "spec": { "clientId": t.client_id, "events": ["vehicle.processed"],
                "baseUrl": rx.url("api"), "timeoutSeconds": 5,
                "retry": { "maxAttempts": 100, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 },
                "mappings": [{ "events": ["vehicle.processed"], "requests": [
                    { "name": "photo", "method": "POST", "path": "/photos/{{ image.index }}",
                      "forEachImage": { "send": "raw" } } ] }] } }),
    )
    .await;
    for name in ["system", "replaced"] {
        t.ready(name, "Ready").await;
    }
    let apis: Api<ApiConnection> = Api::namespaced(t.client.clone(), &t.ns);
    wait_for(&apis, "api", "Ready", |c| {
        c.status
            .as_ref()
            .and_then(|s| condition(&s.conditions, "Ready"))
            .is_some_and(|r| r.0 == "True")
    })
    .await;
    t.post(
        "evt-tls-system-1",
        json!([{ "index": 1, "url": image_url, "contentType": "image/jpeg", "bytes": image.len() }]),
    )
    .await;

    let got = rx.wait_for("system", 1).await;
    assert_eq!(got[0].signature_ok, Some(true));
    let photo = rx.wait_for("api/photos/1", 1).await;
    assert_eq!(
        photo[0].raw.as_ref(),
        image.as_slice(),
        "the image, downloaded over TLS"
    );
    let f = t.tls_failure("replaced").await;
    assert!(f.message.contains("UnknownIssuer"), "{f:?}");
    assert!(rx.received_on("replaced").is_empty());
}

#[tokio::test]
async fn tls_the_example_is_valid_and_its_placeholder_ca_says_what_to_fix() {
    let op = crate::support::operator::operator();
    let (ns, client) = crate::support::operator::tenant(op, "whtls-example", "dealer-123").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    // The signing Secret it names comes with the other examples.
    for f in ["10-secrets.yaml", "webhook-private-ca.yaml"] {
        let yaml = std::fs::read_to_string(dir.join(f)).unwrap();
        apply_yaml(&client, &ns.name, &yaml).await;
    }
    let hooks: Api<WebhookSubscription> = Api::namespaced(client, &ns.name);
    let w = wait_for(&hooks, "dms-internal", "SecretInvalid", |w| {
        ready_of(w).is_some_and(|(_, r, _)| r == "SecretInvalid")
    })
    .await;
    let (_, _, message) = ready_of(&w).unwrap();
    assert!(
        message.starts_with(
            "key \"ca.crt\" of Secret \"dms-webhook-ca\" (spec.tls.caSecretRef): CA bundle"
        ) && message.contains("PEM"),
        "{message}"
    );
}
