//! The CRDs' schema and CEL rules, against the real API server: bad specs are refused at
//! `kubectl apply` with a message naming the field, good ones are accepted and defaulted.

use std::path::Path;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::apiconnection::{HttpMethod, ImageSend};
use vehicle_connect::api::ftp::{FtpProtocol, FtpRules, FtpTimeouts};
use vehicle_connect::api::{
    ApiConnection, EventType, FtpConnection, RetryPolicy, WebhookSubscription,
};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Webhook,
    Ftp,
    Api,
}

/// One broken field: the JSON pointer to set (or remove, with `None`) in the valid base
/// object, and the field path the API server's refusal must name.
struct Case {
    name: &'static str,
    kind: Kind,
    pointer: &'static str,
    value: Option<Value>,
    field: &'static str,
}

fn case(
    name: &'static str,
    kind: Kind,
    pointer: &'static str,
    value: Value,
    field: &'static str,
) -> Case {
    Case {
        name,
        kind,
        pointer,
        value: Some(value),
        field,
    }
}

fn removed(name: &'static str, kind: Kind, pointer: &'static str, field: &'static str) -> Case {
    Case {
        name,
        kind,
        pointer,
        value: None,
        field,
    }
}

fn webhook_base() -> Value {
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "WebhookSubscription",
        "metadata": { "name": "base" },
        "spec": {
            "url": "https://hooks.dealer-123.example/vehicles?notify=ops@dealer-123.example",
            "events": ["vehicle.processed", "vehicle.deleted"],
            "clientId": "dealer-123",
            "userIds": ["u-42"],
            "auth": { "basic": { "secretRef": { "name": "hook-basic" } } },
            "signing": { "secretRef": { "name": "hook-signing" } },
            "tls": { "caSecretRef": { "name": "hook-ca", "key": "ca.pem" } },
            "headers": { "X-Dealer": "123" },
            "timeoutSeconds": 10,
            "retry": { "maxAttempts": 5, "initialBackoffSeconds": 2, "maxBackoffSeconds": 60 },
            "maxConcurrency": 4
        }
    })
}

fn ftp_base() -> Value {
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "FtpConnection",
        "metadata": { "name": "base" },
        "spec": {
            "host": "ftp.dealer-123.example",
            "port": 2121,
            "protocol": "ftps",
            "credentialsSecretRef": { "name": "ftp-creds" },
            "caSecretRef": { "name": "ftp-ca" },
            "clientId": "dealer-123",
            "userIds": ["u-42"],
            "events": ["vehicle.processed", "vehicle.deleted"],
            "rules": {
                "baseDirectory": "/incoming",
                "directory": "{vin}",
                "layout": "zip",
                "fileName": "{stock}_{index:03}.{ext}",
                "archiveName": "{vin}.zip",
                "metadata": { "fileName": "{vin}.json" },
                "onExisting": "skip"
            },
            "maxConnections": 4,
            "timeouts": { "connectSeconds": 5, "commandSeconds": 60 },
            "retry": { "maxAttempts": 3 }
        }
    })
}

fn api_base() -> Value {
    json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "ApiConnection",
        "metadata": { "name": "base" },
        "spec": {
            "clientId": "dealer-123",
            "events": ["vehicle.created", "vehicle.processed"],
            "baseUrl": "https://dms.dealer-123.example/api",
            "auth": { "bearer": { "secretRef": { "name": "dms-token" } } },
            "mappings": [
                { "events": ["vehicle.created"], "requests": [
                    { "name": "create", "method": "POST", "path": "/vehicles",
                      "body": "{ \"vin\": {{ vehicle.vin }} }", "expect": [201],
                      "capture": { "id": { "jsonPointer": "/id" } } } ] },
                { "events": ["vehicle.processed"], "requests": [
                    { "name": "photo", "method": "POST", "path": "/vehicles/{{ remote.id }}/photos",
                      "forEachImage": { "send": "raw" } } ] }
            ]
        }
    })
}

fn base(kind: Kind) -> Value {
    match kind {
        Kind::Webhook => webhook_base(),
        Kind::Ftp => ftp_base(),
        Kind::Api => api_base(),
    }
}

fn cases() -> Vec<Case> {
    use Kind::*;
    let long = "x".repeat(1025);
    vec![
        // WebhookSubscription
        case(
            "url-ftp-scheme",
            Webhook,
            "/spec/url",
            json!("ftp://hooks.example/in"),
            "spec.url",
        ),
        case(
            "url-credentials",
            Webhook,
            "/spec/url",
            json!("https://user:pw@hooks.example/in"),
            "spec.url",
        ),
        case(
            "url-fragment",
            Webhook,
            "/spec/url",
            json!("https://hooks.example/in#top"),
            "spec.url",
        ),
        case(
            "url-not-a-url",
            Webhook,
            "/spec/url",
            json!("not a url at all"),
            "spec.url",
        ),
        case(
            "url-relative",
            Webhook,
            "/spec/url",
            json!("/vehicles/hook"),
            "spec.url",
        ),
        case(
            "url-too-short",
            Webhook,
            "/spec/url",
            json!("http://"),
            "spec.url",
        ),
        removed("url-missing", Webhook, "/spec/url", "spec.url"),
        case(
            "events-empty",
            Webhook,
            "/spec/events",
            json!([]),
            "spec.events",
        ),
        case(
            "events-unknown",
            Webhook,
            "/spec/events",
            json!(["vehicle.exploded"]),
            "spec.events[0]",
        ),
        case(
            "events-duplicate",
            Webhook,
            "/spec/events",
            json!(["vehicle.processed", "vehicle.processed"]),
            "spec.events[1]",
        ),
        removed("events-missing", Webhook, "/spec/events", "spec.events"),
        case(
            "client-id-comma",
            Webhook,
            "/spec/clientId",
            json!("dealer-1,dealer-2"),
            "spec.clientId",
        ),
        case(
            "client-id-empty",
            Webhook,
            "/spec/clientId",
            json!(""),
            "spec.clientId",
        ),
        case(
            "client-id-space",
            Webhook,
            "/spec/clientId",
            json!("dealer 1"),
            "spec.clientId",
        ),
        case(
            "user-ids-empty",
            Webhook,
            "/spec/userIds",
            json!([]),
            "spec.userIds",
        ),
        case(
            "user-id-bad",
            Webhook,
            "/spec/userIds",
            json!(["u-1", "u 42"]),
            "spec.userIds[1]",
        ),
        case(
            "user-ids-duplicate",
            Webhook,
            "/spec/userIds",
            json!(["u-1", "u-1"]),
            "spec.userIds[1]",
        ),
        case(
            "auth-basic-and-bearer",
            Webhook,
            "/spec/auth",
            json!({ "basic": { "secretRef": { "name": "b" } }, "bearer": { "secretRef": { "name": "t" } } }),
            "spec.auth",
        ),
        case("auth-empty", Webhook, "/spec/auth", json!({}), "spec.auth"),
        case(
            "auth-both-null",
            Webhook,
            "/spec/auth",
            json!({ "basic": null, "bearer": null }),
            "spec.auth",
        ),
        case(
            "auth-secret-uppercase",
            Webhook,
            "/spec/auth",
            json!({ "basic": { "secretRef": { "name": "Hook-Basic" } } }),
            "spec.auth.basic.secretRef.name",
        ),
        case(
            "auth-bearer-bad-key",
            Webhook,
            "/spec/auth",
            json!({ "bearer": { "secretRef": { "name": "tok", "key": "a/b" } } }),
            "spec.auth.bearer.secretRef.key",
        ),
        case(
            "signing-no-secret-ref",
            Webhook,
            "/spec/signing",
            json!({}),
            "spec.signing.secretRef",
        ),
        case(
            "signing-secret-underscore",
            Webhook,
            "/spec/signing/secretRef/name",
            json!("hook_signing"),
            "spec.signing.secretRef.name",
        ),
        // A private CA for a receiver reached in clear text protects nothing.
        case(
            "tls-with-http-url",
            Webhook,
            "/spec/url",
            json!("http://hooks.dealer-123.example/vehicles"),
            "spec.tls",
        ),
        case(
            "tls-no-ca-secret-ref",
            Webhook,
            "/spec/tls",
            json!({}),
            "spec.tls.caSecretRef",
        ),
        case(
            "tls-ca-bad-key",
            Webhook,
            "/spec/tls/caSecretRef/key",
            json!("a/b"),
            "spec.tls.caSecretRef.key",
        ),
        case(
            "header-authorization",
            Webhook,
            "/spec/headers",
            json!({ "Authorization": "Bearer x" }),
            "spec.headers",
        ),
        case(
            "header-webhook-id",
            Webhook,
            "/spec/headers",
            json!({ "webhook-id": "msg_1" }),
            "spec.headers",
        ),
        case(
            "header-content-type",
            Webhook,
            "/spec/headers",
            json!({ "Content-TYPE": "text/plain" }),
            "spec.headers",
        ),
        case(
            "header-host",
            Webhook,
            "/spec/headers",
            json!({ "Host": "evil.example" }),
            "spec.headers",
        ),
        case(
            "header-newline-value",
            Webhook,
            "/spec/headers",
            json!({ "X-Note": "a\r\nInjected: yes" }),
            "spec.headers",
        ),
        case(
            "header-name-space",
            Webhook,
            "/spec/headers",
            json!({ "X Note": "a" }),
            "spec.headers",
        ),
        case(
            "header-name-colon",
            Webhook,
            "/spec/headers",
            json!({ "X-Note:": "a" }),
            "spec.headers",
        ),
        case(
            "header-value-too-long",
            Webhook,
            "/spec/headers",
            json!({ "X-Note": long }),
            "spec.headers",
        ),
        case(
            "timeout-zero",
            Webhook,
            "/spec/timeoutSeconds",
            json!(0),
            "spec.timeoutSeconds",
        ),
        case(
            "timeout-500",
            Webhook,
            "/spec/timeoutSeconds",
            json!(500),
            "spec.timeoutSeconds",
        ),
        case(
            "retry-initial-over-max",
            Webhook,
            "/spec/retry",
            json!({ "initialBackoffSeconds": 120, "maxBackoffSeconds": 60 }),
            "spec.retry.initialBackoffSeconds",
        ),
        case(
            "retry-initial-over-default-max",
            Webhook,
            "/spec/retry",
            json!({ "initialBackoffSeconds": 3600, "maxBackoffSeconds": 10 }),
            "spec.retry.initialBackoffSeconds",
        ),
        case(
            "retry-max-attempts-zero",
            Webhook,
            "/spec/retry/maxAttempts",
            json!(0),
            "spec.retry.maxAttempts",
        ),
        case(
            "retry-max-age-5s",
            Webhook,
            "/spec/retry/maxAgeSeconds",
            json!(5),
            "spec.retry.maxAgeSeconds",
        ),
        case(
            "max-concurrency-zero",
            Webhook,
            "/spec/maxConcurrency",
            json!(0),
            "spec.maxConcurrency",
        ),
        case(
            "suspend-not-bool",
            Webhook,
            "/spec/suspend",
            json!("yes"),
            "spec.suspend",
        ),
        // FtpConnection
        case("port-zero", Ftp, "/spec/port", json!(0), "spec.port"),
        case("port-70000", Ftp, "/spec/port", json!(70000), "spec.port"),
        case(
            "protocol-scp",
            Ftp,
            "/spec/protocol",
            json!("scp"),
            "spec.protocol",
        ),
        case(
            "ca-with-plain-ftp",
            Ftp,
            "/spec/protocol",
            json!("ftp"),
            "spec.caSecretRef",
        ),
        removed(
            "ca-with-default-protocol",
            Ftp,
            "/spec/protocol",
            "spec.caSecretRef",
        ),
        case(
            "sftp-with-ca-and-no-host-keys",
            Ftp,
            "/spec/protocol",
            json!("sftp"),
            "spec.ssh",
        ),
        case(
            "ca-with-sftp",
            Ftp,
            "/spec/protocol",
            json!("sftp"),
            "spec.caSecretRef",
        ),
        case(
            "ssh-settings-with-ftps",
            Ftp,
            "/spec/ssh",
            json!({ "insecureSkipHostKeyCheck": true }),
            "spec.ssh",
        ),
        case(
            "known-hosts-bad-key",
            Ftp,
            "/spec/ssh",
            json!({ "knownHostsSecretRef": { "name": "kh", "key": "known hosts" } }),
            "spec.ssh.knownHostsSecretRef.key",
        ),
        case(
            "ca-secret-bad-key",
            Ftp,
            "/spec/caSecretRef",
            json!({ "name": "ca", "key": "ca crt" }),
            "spec.caSecretRef.key",
        ),
        case(
            "events-vehicle-created",
            Ftp,
            "/spec/events",
            json!(["vehicle.processed", "vehicle.created"]),
            "spec.events",
        ),
        case(
            "events-data-new",
            Ftp,
            "/spec/events",
            json!(["data.new"]),
            "spec.events",
        ),
        case(
            "ftp-events-empty",
            Ftp,
            "/spec/events",
            json!([]),
            "spec.events",
        ),
        case(
            "host-space",
            Ftp,
            "/spec/host",
            json!("ftp dealer.example"),
            "spec.host",
        ),
        case(
            "host-slash",
            Ftp,
            "/spec/host",
            json!("ftp.dealer.example/in"),
            "spec.host",
        ),
        case(
            "host-url",
            Ftp,
            "/spec/host",
            json!("ftp://ftp.dealer.example"),
            "spec.host",
        ),
        case("host-empty", Ftp, "/spec/host", json!(""), "spec.host"),
        removed("host-missing", Ftp, "/spec/host", "spec.host"),
        case(
            "layout-tar",
            Ftp,
            "/spec/rules/layout",
            json!("tar"),
            "spec.rules.layout",
        ),
        case(
            "on-existing-merge",
            Ftp,
            "/spec/rules/onExisting",
            json!("merge"),
            "spec.rules.onExisting",
        ),
        case(
            "base-dir-parent",
            Ftp,
            "/spec/rules/baseDirectory",
            json!("incoming/../.."),
            "spec.rules.baseDirectory",
        ),
        case(
            "base-dir-dotdot",
            Ftp,
            "/spec/rules/baseDirectory",
            json!(".."),
            "spec.rules.baseDirectory",
        ),
        case(
            "base-dir-backslash",
            Ftp,
            "/spec/rules/baseDirectory",
            json!("..\\..\\windows"),
            "spec.rules.baseDirectory",
        ),
        case(
            "base-dir-control",
            Ftp,
            "/spec/rules/baseDirectory",
            json!("in\ncoming"),
            "spec.rules.baseDirectory",
        ),
        case(
            "max-connections-zero",
            Ftp,
            "/spec/maxConnections",
            json!(0),
            "spec.maxConnections",
        ),
        case(
            "max-connections-17",
            Ftp,
            "/spec/maxConnections",
            json!(17),
            "spec.maxConnections",
        ),
        removed(
            "credentials-missing",
            Ftp,
            "/spec/credentialsSecretRef",
            "spec.credentialsSecretRef",
        ),
        case(
            "credentials-bad-name",
            Ftp,
            "/spec/credentialsSecretRef",
            json!({ "name": "FTP_creds" }),
            "spec.credentialsSecretRef.name",
        ),
        case(
            "file-name-empty",
            Ftp,
            "/spec/rules/fileName",
            json!(""),
            "spec.rules.fileName",
        ),
        case(
            "archive-name-empty",
            Ftp,
            "/spec/rules/archiveName",
            json!(""),
            "spec.rules.archiveName",
        ),
        case(
            "metadata-name-empty",
            Ftp,
            "/spec/rules/metadata/fileName",
            json!(""),
            "spec.rules.metadata.fileName",
        ),
        case(
            "connect-timeout-zero",
            Ftp,
            "/spec/timeouts/connectSeconds",
            json!(0),
            "spec.timeouts.connectSeconds",
        ),
        case(
            "command-timeout-601",
            Ftp,
            "/spec/timeouts/commandSeconds",
            json!(601),
            "spec.timeouts.commandSeconds",
        ),
        removed(
            "ftp-client-id-missing",
            Ftp,
            "/spec/clientId",
            "spec.clientId",
        ),
        case(
            "ftp-user-id-comma",
            Ftp,
            "/spec/userIds",
            json!(["u-1,u-2"]),
            "spec.userIds[0]",
        ),
        case(
            "ftp-retry-initial-over-max",
            Ftp,
            "/spec/retry",
            json!({ "initialBackoffSeconds": 600, "maxBackoffSeconds": 300 }),
            "spec.retry.initialBackoffSeconds",
        ),
        // ApiConnection
        case(
            "api-method-trace",
            Api,
            "/spec/mappings/0/requests/0/method",
            json!("TRACE"),
            "spec.mappings[0].requests[0].method",
        ),
        case(
            "api-path-relative",
            Api,
            "/spec/mappings/0/requests/0/path",
            json!("vehicles/{{ vehicle.id }}"),
            "spec.mappings[0].requests[0].path",
        ),
        case(
            "api-expect-600",
            Api,
            "/spec/mappings/0/requests/0/expect",
            json!([201, 600]),
            "spec.mappings[0].requests[0].expect[1]",
        ),
        case(
            "api-auth-two-methods",
            Api,
            "/spec/auth",
            json!({ "bearer": { "secretRef": { "name": "t" } },
                    "apiKey": { "header": "X-Api-Key", "secretRef": { "name": "k" } } }),
            "spec.auth",
        ),
        case(
            "api-mapping-event-not-listed",
            Api,
            "/spec/events",
            json!(["vehicle.processed"]),
            "spec.mappings",
        ),
        case(
            "api-event-without-mapping",
            Api,
            "/spec/events",
            json!(["vehicle.created", "vehicle.processed", "vehicle.deleted"]),
            "spec.events",
        ),
        case(
            "api-request-names-duplicate",
            Api,
            "/spec/mappings/0/requests",
            json!([
                { "name": "create", "method": "POST", "path": "/vehicles" },
                { "name": "create", "method": "PUT", "path": "/vehicles/{{ remote.id }}" }
            ]),
            "spec.mappings[0].requests",
        ),
        case(
            "api-raw-with-body",
            Api,
            "/spec/mappings/1/requests/0/body",
            json!("{ \"vin\": {{ vehicle.vin }} }"),
            "spec.mappings[1].requests[0].body",
        ),
        case(
            "api-capture-pointer-and-header",
            Api,
            "/spec/mappings/0/requests/0/capture",
            json!({ "id": { "jsonPointer": "/id", "header": "Location" } }),
            "spec.mappings[0].requests[0].capture[id]",
        ),
    ]
}

/// Sets (or removes) the value at `pointer`; its parent must exist in `v`.
fn mutate(v: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = v
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{parent} is not an object in the base"));
    match value {
        Some(value) => obj.insert(key.to_owned(), value),
        None => obj.remove(key),
    };
}

fn api(client: &Client, ns: &str, kind: Kind) -> Api<DynamicObject> {
    let ar = match kind {
        Kind::Webhook => ApiResource::erase::<WebhookSubscription>(&()),
        Kind::Ftp => ApiResource::erase::<FtpConnection>(&()),
        Kind::Api => ApiResource::erase::<ApiConnection>(&()),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn object(mut v: Value, name: &str) -> DynamicObject {
    v["metadata"]["name"] = json!(name);
    serde_json::from_value(v).unwrap()
}

async fn setup(prefix: &str) -> (Client, String) {
    let cp = ControlPlane::shared();
    cp.install_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .unwrap();
    let ns = cp.namespace(prefix).await.unwrap();
    (cp.client().await.unwrap(), ns.name.clone())
}

#[tokio::test]
async fn invalid_specs_are_refused_naming_the_field() {
    let (client, ns) = setup("crd-invalid").await;
    let pp = PostParams::default();

    // The base objects are valid, so each refusal below is down to the one broken field.
    for kind in [Kind::Webhook, Kind::Ftp, Kind::Api] {
        api(&client, &ns, kind)
            .create(&pp, &object(base(kind), "base"))
            .await
            .unwrap_or_else(|e| panic!("valid {kind:?} base refused: {e}"));
    }

    let cases = cases();
    let mut names: Vec<_> = cases.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be distinct");

    let mut findings = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut v = base(c.kind);
        mutate(&mut v, c.pointer, c.value.clone());
        let name = format!("bad-{i:02}");
        match api(&client, &ns, c.kind)
            .create(&pp, &object(v, &name))
            .await
        {
            Ok(_) => findings.push(format!(
                "{}: ACCEPTED, expected refusal at {}",
                c.name, c.field
            )),
            Err(kube::Error::Api(status)) => {
                let causes: Vec<&str> = status
                    .details
                    .iter()
                    .flat_map(|d| &d.causes)
                    .map(|cause| cause.field.as_str())
                    .collect();
                if status.code != 422 || status.reason != "Invalid" {
                    findings.push(format!(
                        "{}: refused with {} {} (want 422 Invalid): {}",
                        c.name, status.code, status.reason, status.message
                    ));
                } else if !status.message.contains(c.field)
                    || !causes.iter().any(|f| f.starts_with(c.field))
                {
                    findings.push(format!(
                        "{}: refusal does not name {} (causes {causes:?}): {}",
                        c.name, c.field, status.message
                    ));
                }
            }
            Err(e) => findings.push(format!("{}: unexpected error {e}", c.name)),
        }
    }
    assert!(
        findings.is_empty(),
        "{} of {} cases wrong:\n{}",
        findings.len(),
        cases.len(),
        findings.join("\n")
    );
    eprintln!("{} invalid specs refused with the field named", cases.len());
}

#[tokio::test]
async fn valid_specs_are_accepted_as_written() {
    let (client, ns) = setup("crd-valid").await;
    let pp = PostParams::default();
    for (kind, base) in [(Kind::Webhook, webhook_base()), (Kind::Ftp, ftp_base())] {
        let created = api(&client, &ns, kind)
            .create(&pp, &object(base.clone(), "full"))
            .await
            .unwrap();
        // Everything written survives (nothing pruned); only defaults are added.
        let spec = &created.data["spec"];
        for (key, want) in base["spec"].as_object().unwrap() {
            match (want, &spec[key]) {
                (Value::Object(w), Value::Object(got)) => {
                    for (k, v) in w {
                        assert_eq!(&got[k], v, "{kind:?} spec.{key}.{k}");
                    }
                }
                (w, got) => assert_eq!(got, w, "{kind:?} spec.{key}"),
            }
        }
    }

    // SFTP as examples/sftp/ writes it: port 22 from the protocol, host keys pinned.
    let mut sftp = ftp_base();
    let spec = sftp["spec"].as_object_mut().unwrap();
    spec.remove("port");
    spec.remove("caSecretRef");
    spec.insert("protocol".into(), json!("sftp"));
    spec.insert(
        "ssh".into(),
        json!({ "knownHostsSecretRef": { "name": "dms-sftp-known-hosts" } }),
    );
    api(&client, &ns, Kind::Ftp)
        .create(&pp, &object(sftp, "sftp"))
        .await
        .unwrap();

    // The typed API reads them back into the Rust types.
    let ftp: Api<FtpConnection> = Api::namespaced(client.clone(), &ns);
    let got = ftp.get("sftp").await.unwrap();
    assert_eq!(got.spec.protocol, FtpProtocol::Sftp);
    assert_eq!(got.spec.port(), 22);
    let got = ftp.get("full").await.unwrap();
    assert_eq!(got.spec.protocol, FtpProtocol::Ftps);
    assert_eq!(got.spec.port(), 2121);
    assert_eq!(got.spec.rules.file_name, "{stock}_{index:03}.{ext}");
    vehicle_connect::naming::validate_rules(&got.spec.rules).unwrap();
    let whs: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns);
    let got = whs.get("full").await.unwrap();
    assert_eq!(
        got.spec.events,
        vec![EventType::VehicleProcessed, EventType::VehicleDeleted]
    );
    assert_eq!(got.spec.headers.unwrap()["X-Dealer"], "123");
    let ca = got.spec.tls.unwrap().ca_secret_ref;
    assert_eq!(
        (ca.name.as_str(), ca.key_or("ca.crt")),
        ("hook-ca", "ca.pem")
    );

    // The ApiConnection of examples/api/ as written there.
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/api/apiconnection-autodms.yaml"),
    )
    .unwrap();
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&example)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let mut example = docs
        .into_iter()
        .find(|d| d["kind"] == "ApiConnection")
        .expect("the example has an ApiConnection");
    example["metadata"]["namespace"] = json!(ns);
    let name = example["metadata"]["name"].as_str().unwrap().to_string();
    let created = api(&client, &ns, Kind::Api)
        .create(&pp, &object(example.clone(), &name))
        .await
        .unwrap_or_else(|e| panic!("the example ApiConnection is refused: {e}"));
    let names = |v: &Value| -> Vec<String> {
        v["spec"]["mappings"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|m| m["requests"].as_array().into_iter().flatten())
            .map(|r| format!("{} {} {}", r["name"], r["method"], r["path"]))
            .collect()
    };
    assert_eq!(names(&created.data), names(&example), "nothing pruned");
    let apic: Api<ApiConnection> = Api::namespaced(client, &ns);
    let got = apic.get(&name).await.unwrap();
    let processed = got
        .spec
        .mapping_for(EventType::VehicleProcessed)
        .expect("a mapping for vehicle.processed");
    let photo = &processed.requests[2];
    assert_eq!(photo.method, HttpMethod::Post);
    assert_eq!(
        photo.for_each_image.as_ref().map(|f| f.send),
        Some(ImageSend::Multipart)
    );
    assert_eq!(got.spec.idempotency_header, "Idempotency-Key");
    vehicle_connect::mapping::Compiled::new(&got.spec)
        .unwrap_or_else(|e| panic!("the example's templates: {e:?}"));
}

#[tokio::test]
async fn the_api_server_applies_the_schema_defaults() {
    let (client, ns) = setup("crd-defaults").await;
    let pp = PostParams::default();

    let ftp = json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "FtpConnection",
        "metadata": { "name": "minimal" },
        "spec": {
            "host": "192.0.2.10",
            "credentialsSecretRef": { "name": "ftp-creds" },
            "clientId": "dealer-123",
            "retry": { "maxAttempts": 3 }
        }
    });
    let created = api(&client, &ns, Kind::Ftp)
        .create(&pp, &object(ftp, "minimal"))
        .await
        .unwrap();
    // Checked on the raw object: serde defaults in the Rust types must not mask a server
    // that applied none.
    let spec = &created.data["spec"];
    // No schema default for the port: it follows the protocol (21, or 22 for sftp).
    assert!(spec.get("port").is_none(), "{spec}");
    assert_eq!(spec["protocol"], json!("ftp"));
    assert_eq!(spec["events"], json!(["vehicle.processed"]));
    assert_eq!(spec["passive"], json!(true));
    assert_eq!(spec["natWorkaround"], json!(true));
    assert_eq!(spec["epsv"], json!(false));
    assert_eq!(spec["maxConnections"], json!(2));
    assert_eq!(spec["suspend"], json!(false));
    assert_eq!(
        spec["timeouts"],
        json!({ "connectSeconds": 10, "commandSeconds": 30 })
    );
    let rules = &spec["rules"];
    assert_eq!(rules["fileName"], json!("{vin}_{index:02}.{ext}"));
    assert_eq!(rules["archiveName"], json!("{vin}.zip"));
    assert_eq!(rules["layout"], json!("files"));
    assert_eq!(rules["onExisting"], json!("overwrite"));
    assert_eq!(rules["baseDirectory"], json!(""));
    assert_eq!(rules["directory"], json!(""));
    assert_eq!(rules["deleteOnVehicleDeleted"], json!(false));
    assert!(rules.get("metadata").is_none(), "{rules}");
    // A partly written retry policy is completed field by field.
    assert_eq!(
        spec["retry"],
        json!({ "maxAttempts": 3, "initialBackoffSeconds": 5, "maxBackoffSeconds": 36000, "maxAgeSeconds": 259200 })
    );
    // The server's defaults are exactly the Rust defaults.
    let typed: FtpConnection =
        serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
    assert_eq!(typed.spec.rules, FtpRules::default());
    assert_eq!(typed.spec.timeouts, FtpTimeouts::default());
    assert_eq!(
        typed.spec.retry,
        Some(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        })
    );

    // An empty metadata object gets its default name.
    let with_meta = json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "FtpConnection",
        "spec": {
            "host": "ftp.example",
            "credentialsSecretRef": { "name": "ftp-creds" },
            "clientId": "dealer-123",
            "rules": { "layout": "zip", "metadata": {} }
        }
    });
    let created = api(&client, &ns, Kind::Ftp)
        .create(&pp, &object(with_meta, "with-meta"))
        .await
        .unwrap();
    let rules = &created.data["spec"]["rules"];
    assert_eq!(rules["metadata"], json!({ "fileName": "{vin}.json" }));
    assert_eq!(rules["fileName"], json!("{vin}_{index:02}.{ext}"));

    let whs = json!({
        "apiVersion": "connect.vehicles.io/v1alpha1",
        "kind": "WebhookSubscription",
        "spec": {
            "url": "http://hooks.example/in",
            "events": ["data.new"],
            "clientId": "dealer-123"
        }
    });
    let created = api(&client, &ns, Kind::Webhook)
        .create(&pp, &object(whs, "minimal"))
        .await
        .unwrap();
    let spec = &created.data["spec"];
    assert_eq!(spec["timeoutSeconds"], json!(15));
    assert_eq!(spec["maxConcurrency"], json!(8));
    assert_eq!(spec["suspend"], json!(false));
    for absent in ["auth", "signing", "tls", "headers", "retry", "userIds"] {
        assert!(spec.get(absent).is_none(), "{absent} defaulted: {spec}");
    }
    assert_eq!(
        created.metadata.namespace.as_deref(),
        Some(ns.as_str()),
        "created in the test namespace"
    );
}
