//! FtpConnection reconciler against the real control plane and real FTP servers: templates,
//! Secrets and the `Connected` login probe.

use std::time::{Duration, Instant};

use crate::support::ftp_server::FtpServer;
use crate::support::operator::{apply_value, condition, operator, tenant, wait_for};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use vehicle_connect::api::FtpConnection;
use vehicle_connect::controller::ftp::key;

fn cond(c: &FtpConnection, t: &str) -> Option<(String, String, String)> {
    c.status.as_ref().and_then(|s| condition(&s.conditions, t))
}

fn is(c: &FtpConnection, t: &str, status: &str, reason: &str) -> bool {
    cond(c, t).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn connection(name: &str, port: u16, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "host": "127.0.0.1", "port": port, "clientId": "dealer-1",
        "credentialsSecretRef": { "name": "ftp-creds" },
        "timeouts": { "connectSeconds": 2, "commandSeconds": 5 }
    });
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection", "metadata": { "name": name }, "spec": spec })
}

fn creds(user: &str, pw: &str) -> serde_json::Value {
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "ftp-creds" }, "stringData": { "username": user, "password": pw } })
}

#[tokio::test]
async fn examples_and_a_real_login_make_it_ready() {
    let op = operator();
    let server = FtpServer::start("dealer123", "dealer123-secret")
        .await
        .unwrap();
    let (ns, client) = tenant(op, "ftp-examples", "dealer-123").await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    crate::support::operator::apply_yaml(
        &client,
        &ns.name,
        &std::fs::read_to_string(dir.join("10-secrets.yaml")).unwrap(),
    )
    .await;
    // The examples point at the demo's FTP server port; here, at this test's server.
    let yaml = std::fs::read_to_string(dir.join("30-ftpconnections.yaml"))
        .unwrap()
        .replace("port: 2121", &format!("port: {}", server.port()));
    crate::support::operator::apply_yaml(&client, &ns.name, &yaml).await;
    let api: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);
    for name in ["dms-files", "ana-zip"] {
        let c = wait_for(&api, name, "Ready and Connected", |c| {
            is(c, "Ready", "True", "Ready") && is(c, "Connected", "True", "LoggedIn")
        })
        .await;
        assert_eq!(
            c.status.as_ref().unwrap().observed_generation,
            c.metadata.generation
        );
        let t = op.registry.get(&key(&ns.name, name)).expect("registered");
        assert!(t.held.is_none());
    }
    // The FTPS example is valid for the API server; with its placeholder CA it says what to fix.
    let ftps = std::fs::read_to_string(dir.join("ftps/ftpconnection-ftps.yaml")).unwrap();
    crate::support::operator::apply_yaml(&client, &ns.name, &ftps).await;
    let c = wait_for(
        &api,
        "dms-ftps",
        "SecretInvalid for the placeholder CA",
        |c| is(c, "Ready", "False", "SecretInvalid"),
    )
    .await;
    assert!(cond(&c, "Ready").unwrap().2.contains("spec.caSecretRef"));
    let t = op.registry.get(&key(&ns.name, "ana-zip")).unwrap();
    assert!(
        t.selector.user_ids.as_ref().unwrap().contains("u-42"),
        "user-level connection"
    );
    assert!(
        op.registry
            .get(&key(&ns.name, "dms-files"))
            .unwrap()
            .selector
            .user_ids
            .is_none(),
        "client-level connection"
    );
}

#[tokio::test]
async fn login_failures_are_clear_conditions() {
    let op = operator();
    let server = FtpServer::start("bob", "right").await.unwrap();
    let (ns, client) = tenant(op, "ftp-fail", "dealer-1").await;
    apply_value(&client, &ns.name, creds("bob", "wrong")).await;

    // A closed port, and a port that accepts but never greets.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });

    apply_value(
        &client,
        &ns.name,
        connection("wrong-password", server.port(), json!({})),
    )
    .await;
    apply_value(&client, &ns.name, connection("refused", closed, json!({}))).await;
    apply_value(
        &client,
        &ns.name,
        connection("silent", silent_port, json!({})),
    )
    .await;
    let api: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);

    let c = wait_for(&api, "wrong-password", "LoginFailed", |c| {
        is(c, "Connected", "False", "LoginFailed")
    })
    .await;
    let (_, reason, msg) = cond(&c, "Ready").unwrap();
    assert_eq!(reason, "LoginFailed");
    assert!(
        msg.contains("bob") && !msg.contains("wrong"),
        "names the user, never the password: {msg}"
    );
    let c = wait_for(&api, "refused", "ConnectionRefused", |c| {
        is(c, "Connected", "False", "ConnectionRefused")
    })
    .await;
    assert!(
        cond(&c, "Connected")
            .unwrap()
            .2
            .contains(&closed.to_string())
    );
    let c = wait_for(&api, "silent", "Timeout", |c| {
        is(c, "Connected", "False", "Timeout")
    })
    .await;
    assert!(cond(&c, "Ready").unwrap().1 == "Timeout");

    // Fixing the Secret is picked up (Secret watch) and the probe is retried.
    let started = Instant::now();
    apply_value(&client, &ns.name, creds("bob", "right")).await;
    wait_for(&api, "wrong-password", "Connected after the fix", |c| {
        is(c, "Connected", "True", "LoggedIn") && is(c, "Ready", "True", "Ready")
    })
    .await;
    eprintln!("fixed credentials picked up in {:?}", started.elapsed());
}

#[tokio::test]
async fn bad_templates_and_secrets_are_reported_not_probed() {
    let op = operator();
    let (ns, client) = tenant(op, "ftp-config", "dealer-1").await;
    let api: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);

    apply_value(&client, &ns.name, connection("no-secret", 2121, json!({}))).await;
    let c = wait_for(&api, "no-secret", "SecretNotFound", |c| {
        is(c, "Ready", "False", "SecretNotFound")
    })
    .await;
    assert!(
        cond(&c, "Ready")
            .unwrap()
            .2
            .contains("spec.credentialsSecretRef")
    );
    assert!(is(&c, "Connected", "Unknown", "NotProbed"));

    apply_value(&client, &ns.name, creds("u", "p")).await;
    apply_value(
        &client,
        &ns.name,
        connection(
            "bad-template",
            2121,
            json!({ "rules": { "fileName": "{vim}_{index}.{ext}" } }),
        ),
    )
    .await;
    let c = wait_for(&api, "bad-template", "InvalidTemplate", |c| {
        is(c, "Ready", "False", "InvalidTemplate")
    })
    .await;
    let msg = cond(&c, "Ready").unwrap().2;
    assert!(
        msg.contains("rules.fileName") && msg.contains("{vim}"),
        "{msg}"
    );
    assert_eq!(
        op.registry
            .get(&key(&ns.name, "bad-template"))
            .unwrap()
            .held
            .as_deref(),
        Some("InvalidTemplate")
    );

    apply_value(&client, &ns.name, connection("bad-ca", 2121, json!({ "protocol": "ftps", "caSecretRef": { "name": "ftp-creds", "key": "username" } }))).await;
    let c = wait_for(&api, "bad-ca", "SecretInvalid", |c| {
        is(c, "Ready", "False", "SecretInvalid")
    })
    .await;
    assert!(cond(&c, "Ready").unwrap().2.contains("PEM"));

    apply_value(
        &client,
        &ns.name,
        connection("private", 21, json!({ "host": "10.9.8.7" })),
    )
    .await;
    wait_for(&api, "private", "TargetNotAllowed", |c| {
        is(c, "Ready", "False", "TargetNotAllowed")
    })
    .await;
    assert!(op.registry.get(&key(&ns.name, "private")).is_none());

    // Fixing the template: the generation moves on and so does the status.
    api.patch(
        "bad-template",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "rules": { "fileName": "{vin}_{index}.{ext}" } } })),
    )
    .await
    .unwrap();
    wait_for(&api, "bad-template", "past InvalidTemplate", |c| {
        c.status.as_ref().and_then(|s| s.observed_generation) == Some(2)
            && !is(c, "Ready", "False", "InvalidTemplate")
    })
    .await;

    // Deleting removes the target, seen on the watch (there is no finalizer to wait on).
    api.delete("bad-template", &DeleteParams::default())
        .await
        .unwrap();
    assert!(api.get_opt("bad-template").await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(30);
    while op.registry.get(&key(&ns.name, "bad-template")).is_some() {
        assert!(Instant::now() < deadline, "target survived deletion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
