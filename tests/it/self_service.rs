//! The self-service API (`/v1/self-service/...`) of the operator as a real process, with
//! manage tokens of clients: a client creates, reads, changes and deletes its own webhook
//! subscriptions and FTP connections in the namespace designated for it; the credentials go
//! to a Secret and really reach the receiver and the FTP server; the API server's validation
//! comes back naming the field; and nothing else (another client's resources, or objects in
//! the same namespace not created through self-service) can be seen or touched.

use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use vc_envtest::{ControlPlane, TestNamespace};
use vehicle_connect::api::{ApiConnection, FtpConnection, WebhookSubscription};

use crate::support::ftp_server::FtpServer;
use crate::support::operator::{apply_value, condition};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::Receiver;
use crate::support::scope::{LABEL, Scope};

const A: &str = "ss-a-token-0123456789";
const B: &str = "ss-b-token-0123456789";
const FTP: &str = "ss-ftp-token-0123456789";
const NONE: &str = "ss-none-token-0123456789";
const TWICE: &str = "ss-twice-token-0123456789";
const BARRED: &str = "ss-barred-token-0123456789";
const API: &str = "ss-api-token-0123456789";
const PLATFORM: &str = "ss-platform-token-0123456789";
const MANAGE_TOKENS: &str = "\
ss-a-token-0123456789 ss-a
ss-b-token-0123456789 ss-b
ss-ftp-token-0123456789 ss-ftp
ss-none-token-0123456789 ss-none
ss-twice-token-0123456789 ss-twice
ss-barred-token-0123456789 ss-barred
ss-api-token-0123456789 ss-api
ss-platform-token-0123456789 *
";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Env {
    op: OperatorProcess,
    scope: Scope,
    _dir: tempfile::TempDir,
}

/// One operator process for this module, with the manage tokens above.
async fn env() -> &'static Env {
    static ENV: OnceCell<Env> = OnceCell::const_new();
    ENV.get_or_init(|| async {
        let cp = ControlPlane::shared();
        cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("manage-tokens");
        std::fs::write(&tokens, MANAGE_TOKENS).unwrap();
        let scope = Scope::new("self-service");
        let op = crate::support::process::start_with(
            cp,
            dir.path().join("data"),
            &scope,
            // With a Secret selector: the Secrets self-service writes must carry its label,
            // or the operator could not read the credentials it wrote.
            &[
                "--manage-token-file",
                tokens.to_str().unwrap(),
                "--secret-selector",
                "connect.vehicles.io/credential=true",
            ],
        )
        .await;
        Env {
            op,
            scope,
            _dir: dir,
        }
    })
    .await
}

/// A namespace of the operator's scope designated for `client`'s self-service, allowing
/// `allowed` by the tenancy annotation.
async fn home(env: &Env, client: &str, allowed: &str) -> TestNamespace {
    let scope = env.scope.to_string();
    ControlPlane::shared()
        .namespace_labelled(
            &format!("ss-{client}"),
            &[(LABEL, &scope)],
            &[
                ("connect.vehicles.io/clients", allowed),
                ("connect.vehicles.io/self-service-client", client),
            ],
        )
        .await
        .unwrap()
}

async fn kube() -> kube::Client {
    ControlPlane::shared().client().await.unwrap()
}

/// A request to the self-service API: status and JSON body (Null when empty).
async fn call(
    op: &OperatorProcess,
    method: reqwest::Method,
    token: Option<&str>,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    send(op, method, token, &format!("/v1/self-service/{path}"), body).await
}

/// A request to `path` of the operator: status and JSON body (Null when empty).
async fn send(
    op: &OperatorProcess,
    method: reqwest::Method,
    token: Option<&str>,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, op.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(op: &OperatorProcess, token: &str, path: &str) -> (u16, Value) {
    call(op, reqwest::Method::GET, Some(token), path, None).await
}

async fn post(op: &OperatorProcess, token: &str, path: &str, body: &Value) -> (u16, Value) {
    call(op, reqwest::Method::POST, Some(token), path, Some(body)).await
}

async fn put(op: &OperatorProcess, token: &str, path: &str, body: &Value) -> (u16, Value) {
    call(op, reqwest::Method::PUT, Some(token), path, Some(body)).await
}

async fn delete(op: &OperatorProcess, token: &str, path: &str) -> (u16, Value) {
    call(op, reqwest::Method::DELETE, Some(token), path, None).await
}

/// Polls `GET path` until `pred` holds on its body (30 s).
async fn wait_view(
    op: &OperatorProcess,
    token: &str,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(op, token, path).await;
        if status == 200 && pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path}: timed out waiting for {what}; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready_and_current(v: &Value) -> bool {
    v["health"]["ready"] == "True" && v["health"]["current"] == true
}

async fn post_event(op: &OperatorProcess, id: &str, client: &str) {
    let event = json!({ "id": id, "type": "vehicle.processed", "timestamp": "2026-12-03T10:15:30Z",
                        "clientId": client, "data": { "vehicle": { "id": format!("veh-{id}") } } });
    let (status, body) = send(
        op,
        reqwest::Method::POST,
        Some(TOKEN),
        "/v1/events",
        Some(&event),
    )
    .await;
    assert_eq!(status, 202, "{body}");
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn secret_text(s: &Secret, key: &str) -> String {
    let data = s.data.as_ref().expect("data");
    String::from_utf8(
        data.get(key)
            .unwrap_or_else(|| panic!("no {key}"))
            .0
            .clone(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_manages_its_own_webhook_and_its_credentials_reach_the_receiver() {
    let env = env().await;
    let op = &env.op;
    let ns_a = home(env, "ss-a", "ss-a").await;
    let ns_b = home(env, "ss-b", "ss-b").await;
    let kube = kube().await;
    let r1 = Receiver::start(Some(WHSEC)).await;
    let r2 = Receiver::start(Some(WHSEC)).await;

    // Create, with Basic auth and a signing secret.
    let (status, created) = post(op, A, "webhooks", &json!({
        "name": "hook",
        "spec": { "url": r1.url("/a"), "events": ["vehicle.processed"] },
        "credentials": { "basic": { "username": "vc-a", "password": "pa55-a" }, "signingSecret": WHSEC },
    }))
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["namespace"], ns_a.name.as_str());
    assert_eq!(created["clientId"], "ss-a");
    assert_eq!(created["credentials"], json!(["basic", "signingSecret"]));
    assert!(created["spec"].get("auth").is_none(), "{created}");
    let text = created.to_string();
    assert!(
        !text.contains("pa55-a") && !text.contains(WHSEC),
        "credentials leaked: {text}"
    );

    // The resource: labelled as self-service (and for this operator's watch selector), its
    // spec pointing at the Secret; the Secret: the credentials, owned by the resource.
    let whs: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns_a.name);
    let res = whs.get("hook").await.unwrap();
    let labels = res.metadata.labels.clone().unwrap();
    assert_eq!(labels["connect.vehicles.io/self-service"], "true");
    assert_eq!(labels["connect.vehicles.io/client"], "ss-a");
    assert_eq!(labels[LABEL], env.scope.to_string());
    let auth = res
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.basic.as_ref())
        .expect("auth.basic");
    assert_eq!(auth.secret_ref.name, "vc-whs-hook");
    assert_eq!(
        res.spec.signing.as_ref().unwrap().secret_ref.name,
        "vc-whs-hook"
    );
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns_a.name);
    let secret = secrets.get("vc-whs-hook").await.unwrap();
    assert_eq!(secret_text(&secret, "username"), "vc-a");
    assert_eq!(secret_text(&secret, "password"), "pa55-a");
    assert_eq!(secret_text(&secret, "signing-secret"), WHSEC);
    let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("WebhookSubscription", "hook")
    );
    assert_eq!(Some(&owner.uid), res.metadata.uid.as_ref());
    let secret_labels = secret.metadata.labels.as_ref().unwrap();
    assert_eq!(secret_labels["connect.vehicles.io/self-service"], "true");
    assert_eq!(secret_labels["connect.vehicles.io/credential"], "true");

    // Ready, seen through the API; an event of the client reaches the receiver with the
    // Basic auth, signed.
    let view = wait_view(op, A, "webhooks/hook", "Ready", ready_and_current).await;
    assert_eq!(
        view["status"]["conditions"]
            .as_array()
            .map(|c| !c.is_empty()),
        Some(true)
    );
    post_event(op, "ss-a-1", "ss-a").await;
    let got = r1.wait_for("/a", 1).await;
    assert_eq!(
        got[0].headers["authorization"],
        basic("vc-a", "pa55-a").as_str()
    );
    assert_eq!(got[0].signature_ok, Some(true));
    assert_eq!(got[0].body["id"], "ss-a-1");

    // B's own webhook (same name, its own namespace) and one only B has; objects in A's
    // namespace not made through self-service for A: by hand, and forged with B's labels.
    for name in ["hook", "only-b"] {
        let spec = json!({ "url": r2.url(name), "events": ["vehicle.processed"] });
        let (status, body) = post(op, B, "webhooks", &json!({ "name": name, "spec": spec })).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["namespace"], ns_b.name.as_str());
        assert_eq!(body["credentials"], json!([]));
    }
    assert!(secrets.get_opt("vc-whs-only-b").await.unwrap().is_none());
    let manual = |name: &str, labels: Value, client: &str| {
        json!({
        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
        "metadata": { "name": name, "labels": labels },
        "spec": { "url": r1.url("/manual"), "events": ["vehicle.created"], "clientId": client } })
    };
    apply_value(&kube, &ns_a.name, manual("by-hand", json!({}), "ss-a")).await;
    apply_value(
        &kube,
        &ns_a.name,
        manual(
            "forged",
            json!({
        "connect.vehicles.io/self-service": "true", "connect.vehicles.io/client": "ss-b" }),
            "ss-b",
        ),
    )
    .await;
    apply_value(
        &kube,
        &ns_a.name,
        manual(
            "relabelled",
            json!({
        "connect.vehicles.io/self-service": "true", "connect.vehicles.io/client": "ss-a" }),
            "ss-b",
        ),
    )
    .await;

    let (status, list) = get(op, A, "webhooks").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["hook"], "{list}");
    assert!(
        !list.to_string().contains("pa55-a"),
        "credentials leaked: {list}"
    );
    assert_eq!(
        list["items"][0]["credentials"],
        json!(["basic", "signingSecret"])
    );
    let (_, list_b) = get(op, B, "webhooks").await;
    let names_b: Vec<&str> = list_b["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names_b, ["hook", "only-b"]);
    assert_eq!(list_b["items"][0]["spec"]["url"], r2.url("hook"));
    let any_spec = json!({ "spec": { "url": r1.url("/x"), "events": ["vehicle.created"] } });
    for name in ["only-b", "by-hand", "forged", "relabelled"] {
        let path = format!("webhooks/{name}");
        assert_eq!(get(op, A, &path).await.0, 404, "GET {name}");
        assert_eq!(put(op, A, &path, &any_spec).await.0, 404, "PUT {name}");
        assert_eq!(delete(op, A, &path).await.0, 404, "DELETE {name}");
    }
    for name in ["by-hand", "forged", "relabelled"] {
        let o = whs.get(name).await.unwrap();
        assert_eq!(o.spec.url, r1.url("/manual"), "{name} was changed");
    }
    let b_hook: Api<WebhookSubscription> = Api::namespaced(kube.clone(), &ns_b.name);
    assert!(b_hook.get_opt("only-b").await.unwrap().is_some());
    // A's token cannot name B's client.
    let (status, body) = get(op, A, "webhooks?client=ss-b").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden_client")),
        "{body}"
    );

    // Refusals naming the field: clientId of B, the API server's schema and CEL rules, an
    // unknown field, a bad name, a Secret reference sent by hand.
    let hook = |spec: Value| json!({ "name": "bad", "spec": spec });
    let url = r1.url("/a");
    for (body, status, error, field) in [
        (
            hook(json!({ "url": url, "events": ["vehicle.processed"], "clientId": "ss-b" })),
            400,
            "invalid_request",
            "spec.clientId",
        ),
        (
            hook(json!({ "url": url, "events": ["vehicle.processed"], "timeoutSeconds": 500 })),
            422,
            "invalid_resource",
            "spec.timeoutSeconds",
        ),
        (
            hook(json!({ "url": "ftp://files.example/in", "events": ["vehicle.processed"] })),
            422,
            "invalid_resource",
            "spec.url",
        ),
        (
            hook(json!({ "url": url, "events": ["vehicle.processed"], "colour": "red" })),
            422,
            "invalid_resource",
            "spec.colour",
        ),
        (
            json!({ "name": "Bad_Name", "spec": { "url": url, "events": ["vehicle.processed"] } }),
            400,
            "invalid_request",
            "name",
        ),
        (
            hook(
                json!({ "url": url, "events": ["vehicle.processed"], "auth": { "basic": { "secretRef": { "name": "other" } } } }),
            ),
            400,
            "invalid_request",
            "spec.auth",
        ),
        (
            json!({ "name": "bad", "spec": { "url": url, "events": ["vehicle.processed"] }, "credentials": { "password": "x" } }),
            400,
            "invalid_request",
            "credentials.password",
        ),
    ] {
        let (got, answer) = post(op, A, "webhooks", &body).await;
        assert_eq!(
            (got, answer["error"].as_str(), answer["field"].as_str()),
            (status, Some(error), Some(field)),
            "{body} → {answer}"
        );
    }
    assert!(whs.get_opt("bad").await.unwrap().is_none());
    let (status, body) = post(
        op,
        A,
        "webhooks",
        &json!({ "name": "hook", "spec": { "url": url, "events": ["vehicle.processed"] } }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    // PUT: the spec as GET returned it, with another URL and no credentials (kept); the
    // next event goes to the new receiver, with the same Basic auth.
    let (_, current) = get(op, A, "webhooks/hook").await;
    let mut spec = current["spec"].clone();
    spec["url"] = r2.url("/moved").into();
    // With the generation read: the operator's status writes since that read do not count
    // (with the resourceVersion they would, and this PUT could be refused at random).
    let (status, updated) = put(
        op,
        A,
        "webhooks/hook",
        &json!({ "spec": spec, "generation": current["generation"] }),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["credentials"], json!(["basic", "signingSecret"]));
    // The resourceVersion read before that PUT is stale now.
    let (status, body) = put(
        op,
        A,
        "webhooks/hook",
        &json!({ "spec": spec, "resourceVersion": current["resourceVersion"] }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // `generation` moves with spec changes only: the one read before the first PUT is stale...
    let (status, body) = put(
        op,
        A,
        "webhooks/hook",
        &json!({ "spec": spec, "generation": current["generation"] }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    wait_view(
        op,
        A,
        "webhooks/hook",
        "Ready for the new URL",
        ready_and_current,
    )
    .await;
    // ...while the one after it still holds, although the operator wrote status since.
    let (_, now) = get(op, A, "webhooks/hook").await;
    assert_ne!(now["resourceVersion"], updated["resourceVersion"]);
    let (status, body) = put(
        op,
        A,
        "webhooks/hook",
        &json!({ "spec": spec, "generation": updated["generation"] }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    post_event(op, "ss-a-2", "ss-a").await;
    let got = r2.wait_for("/moved", 1).await;
    assert_eq!(got[0].body["id"], "ss-a-2");
    assert_eq!(
        got[0].headers["authorization"],
        basic("vc-a", "pa55-a").as_str()
    );
    assert_eq!(got[0].signature_ok, Some(true));
    assert_eq!(
        r1.received_on("/a").len(),
        1,
        "the old URL got the event after the PUT"
    );

    // A new password only: the Secret changes, the signing secret stays.
    let (status, body) = put(op, A, "webhooks/hook", &json!({ "spec": spec, "credentials": { "basic": { "username": "vc-a", "password": "n3w" } } })).await;
    assert_eq!(status, 200, "{body}");
    let secret = secrets.get("vc-whs-hook").await.unwrap();
    assert_eq!(secret_text(&secret, "password"), "n3w");
    assert_eq!(secret_text(&secret, "signing-secret"), WHSEC);

    // DELETE takes the resource and its Secret; B's resources and the others stay.
    let (status, _) = delete(op, A, "webhooks/hook").await;
    assert_eq!(status, 204);
    assert_eq!(get(op, A, "webhooks/hook").await.0, 404);
    assert!(whs.get_opt("hook").await.unwrap().is_none());
    assert!(
        secrets.get_opt("vc-whs-hook").await.unwrap().is_none(),
        "the Secret outlived its resource"
    );
    assert!(b_hook.get_opt("hook").await.unwrap().is_some());
    assert!(whs.get_opt("by-hand").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_level_ftp_connection_logs_in_with_the_users_credentials() {
    let env = env().await;
    let op = &env.op;
    let ns = home(env, "ss-ftp", "ss-ftp").await;
    let server = FtpServer::start("anna", "an0ther-pw").await.unwrap();
    let kube = kube().await;
    let spec = json!({ "host": "127.0.0.1", "port": server.port(), "userIds": ["u-7"],
                       "rules": { "baseDirectory": "incoming" } });

    // Without a password there is nothing to log in with.
    let (status, body) = post(
        op,
        FTP,
        "ftp-connections",
        &json!({ "name": "anna", "spec": spec, "credentials": { "username": "anna" } }),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("credentials.password")),
        "{body}"
    );

    let (status, created) = post(op, FTP, "ftp-connections", &json!({
        "name": "anna", "spec": spec, "credentials": { "username": "anna", "password": "an0ther-pw" } })).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["credentials"], json!(["username", "password"]));
    assert_eq!(created["spec"]["userIds"], json!(["u-7"]));
    assert!(created["spec"].get("credentialsSecretRef").is_none());
    let view = wait_view(op, FTP, "ftp-connections/anna", "Ready", ready_and_current).await;
    let ftpc: Api<FtpConnection> = Api::namespaced(kube.clone(), &ns.name);
    let res = ftpc.get("anna").await.unwrap();
    assert_eq!(res.spec.credentials_secret_ref.name, "vc-ftpc-anna");
    let conds = &res.status.as_ref().unwrap().conditions;
    assert_eq!(
        condition(conds, "Connected").map(|c| c.0),
        Some("True".into()),
        "{view}"
    );
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns.name);
    let secret = secrets.get("vc-ftpc-anna").await.unwrap();
    assert_eq!(secret_text(&secret, "username"), "anna");
    assert_eq!(secret_text(&secret, "password"), "an0ther-pw");

    // A wrong password, set through PUT, is what the login probe then reports.
    let (status, body) = put(
        op,
        FTP,
        "ftp-connections/anna",
        &json!({ "spec": view["spec"], "credentials": { "password": "wrong" } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        secret_text(&secrets.get("vc-ftpc-anna").await.unwrap(), "password"),
        "wrong"
    );

    let (status, _) = delete(op, FTP, "ftp-connections/anna").await;
    assert_eq!(status, 204);
    assert!(ftpc.get_opt("anna").await.unwrap().is_none());
    assert!(secrets.get_opt("vc-ftpc-anna").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_connection_sends_the_clients_api_key_and_cel_errors_name_the_field() {
    let env = env().await;
    let op = &env.op;
    let ns = home(env, "ss-api", "ss-api").await;
    let receiver = Receiver::start(None).await;
    let kube = kube().await;
    let mapping = json!([{ "events": ["vehicle.processed"], "requests": [{
        "name": "notify", "method": "POST", "path": "/vehicles/{{ vehicle.id }}",
        "body": "{\"id\": {{ vehicle.id }}}" }] }]);
    let spec = json!({ "baseUrl": receiver.url("/api"), "events": ["vehicle.processed"],
                       "auth": { "apiKey": { "header": "X-Api-Key", "prefix": "Key " } },
                       "mappings": mapping });

    // A CEL rule of the CRD (every event needs a mapping), named by its field path.
    let mut unmapped = spec.clone();
    unmapped["events"] = json!(["vehicle.processed", "vehicle.created"]);
    let (status, body) = post(
        op,
        API,
        "api-connections",
        &json!({ "name": "dms", "spec": unmapped, "credentials": { "apiKey": "k-1" } }),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str(), body["field"].as_str()),
        (422, Some("invalid_resource"), Some("spec.events")),
        "{body}"
    );
    // A credential this kind does not take.
    let (status, body) = post(
        op,
        API,
        "api-connections",
        &json!({ "name": "dms", "spec": spec, "credentials": { "signingSecret": WHSEC } }),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("credentials.signingSecret")),
        "{body}"
    );

    let (status, created) = post(
        op,
        API,
        "api-connections",
        &json!({ "name": "dms", "spec": spec, "credentials": { "apiKey": "k-7f3a9c" } }),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["credentials"], json!(["apiKey"]));
    // What GET returns is what was sent (plus defaults): no Secret reference.
    assert_eq!(created["spec"]["auth"], spec["auth"], "{created}");
    let apic: Api<ApiConnection> = Api::namespaced(kube.clone(), &ns.name);
    let res = apic.get("dms").await.unwrap();
    let key = res
        .spec
        .auth
        .as_ref()
        .and_then(|a| a.api_key.as_ref())
        .expect("auth.apiKey");
    assert_eq!(
        (key.secret_ref.name.as_str(), key.secret_ref.key.as_deref()),
        ("vc-apic-dms", Some("apiKey"))
    );
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &ns.name);
    assert_eq!(
        secret_text(&secrets.get("vc-apic-dms").await.unwrap(), "apiKey"),
        "k-7f3a9c"
    );

    wait_view(op, API, "api-connections/dms", "Ready", ready_and_current).await;
    post_event(op, "ss-api-1", "ss-api").await;
    let got = receiver.wait_for("/api/vehicles/veh-ss-api-1", 1).await;
    assert_eq!(got[0].headers["x-api-key"], "Key k-7f3a9c");

    let (status, _) = delete(op, API, "api-connections/dms").await;
    assert_eq!(status, 204);
    assert!(apic.get_opt("dms").await.unwrap().is_none());
    assert!(secrets.get_opt("vc-apic-dms").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_namespaces_that_do_not_fit_are_refused_clearly() {
    let env = env().await;
    let op = &env.op;
    let spec = json!({ "name": "x", "spec": { "url": "http://127.0.0.1:9/x", "events": ["vehicle.processed"] } });

    // No token, a wrong token, an ingest token: 401.
    for token in [None, Some("not-a-token"), Some(TOKEN)] {
        let (status, body) = call(op, reqwest::Method::GET, token, "webhooks", None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}: {body}"
        );
    }
    // No namespace designated for the client.
    let (status, body) = get(op, NONE, "webhooks").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("self_service_disabled")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("connect.vehicles.io/self-service-client: ss-none"),
        "{body}"
    );
    // Two namespaces designated for one client: an error naming both, not a guess.
    let one = home(env, "ss-twice", "ss-twice").await;
    let two = home(env, "ss-twice", "ss-twice").await;
    let (status, body) = post(op, TWICE, "webhooks", &spec).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("misconfigured")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(&one.name) && message.contains(&two.name),
        "{body}"
    );
    // A namespace designated for the client but not allowing it by the tenancy annotation:
    // nothing is created there (it would never receive an event); reading works.
    let barred = home(env, "ss-barred", "someone-else").await;
    let (status, body) = post(op, BARRED, "webhooks", &spec).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("client_not_allowed")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains(&barred.name),
        "{body}"
    );
    assert_eq!(get(op, BARRED, "webhooks").await.0, 200);
    // The platform's token names the client; an unknown kind is not found.
    let (status, body) = get(op, PLATFORM, "webhooks").await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("client")),
        "{body}"
    );
    assert_eq!(get(op, PLATFORM, "webhooks?client=ss-barred").await.0, 200);
    assert_eq!(get(op, BARRED, "gateways").await.0, 404);
}

#[test]
fn the_openapi_document_has_every_self_service_operation_with_examples() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for kind in ["webhooks", "ftp-connections", "api-connections"] {
        let collection = &doc["paths"][format!("/v1/self-service/{kind}")];
        let item = &doc["paths"][format!("/v1/self-service/{kind}/{{name}}")];
        for (op, method) in [
            (collection, "get"),
            (collection, "post"),
            (item, "get"),
            (item, "put"),
            (item, "delete"),
        ] {
            assert_eq!(
                op[method]["tags"],
                json!(["self-service"]),
                "{method} {kind}"
            );
            assert!(
                op[method]["responses"]["401"].is_object(),
                "{method} {kind}"
            );
        }
        for method in ["post", "put"] {
            let body = &collection.get(method).unwrap_or(&item[method])["requestBody"]["content"]["application/json"];
            assert!(
                body["example"]["spec"].is_object(),
                "{method} {kind}: no example"
            );
        }
        assert!(collection["post"]["responses"]["422"]["content"]["application/json"]["example"]["field"].is_string());
    }
    let schemas = &doc["components"]["schemas"];
    for s in [
        "ResourceView",
        "Credentials",
        "SelfServiceWebhookSubscriptionSpec",
        "SelfServiceFtpConnectionRequest",
    ] {
        assert!(schemas[s].is_object(), "{s} missing");
    }
    assert!(schemas["ResourceView"]["example"].is_object());
}
