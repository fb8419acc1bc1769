//! FtpConnection with `protocol: sftp` against the real control plane and Debian's OpenSSH:
//! Secrets (an `ssh-auth` key, known_hosts), the `Connected` login probe, a changed host key
//! reported as a condition and a Warning Event, and the fix picked up from the Secret.

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::support::operator::{apply_value, condition, operator, tenant, wait_for};
use crate::support::sshd::{Sshd, SshdOptions};
use vehicle_connect::api::FtpConnection;

fn is(c: &FtpConnection, t: &str, status: &str, reason: &str) -> bool {
    cond(c, t).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn cond(c: &FtpConnection, t: &str) -> Option<(String, String, String)> {
    c.status.as_ref().and_then(|s| condition(&s.conditions, t))
}

fn secret(name: &str, type_: &str, data: serde_json::Value) -> serde_json::Value {
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name },
            "type": type_, "stringData": data })
}

fn connection(name: &str, port: u16, creds: &str, known_hosts: &str) -> serde_json::Value {
    json!({ "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
            "metadata": { "name": name },
            "spec": { "host": "127.0.0.1", "port": port, "protocol": "sftp", "clientId": "dealer-1",
                      "credentialsSecretRef": { "name": creds },
                      "ssh": { "knownHostsSecretRef": { "name": known_hosts } },
                      "timeouts": { "connectSeconds": 5, "commandSeconds": 5 } } })
}

#[tokio::test]
async fn key_and_password_logins_are_connected_and_a_changed_host_key_is_not() {
    let op = operator();
    let server = Sshd::start(SshdOptions::default()).unwrap_or_else(|e| panic!("{e:#}"));
    let (ns, client) = tenant(op, "sftp-ctl", "dealer-1").await;
    let key = secret(
        "sftp-key",
        "kubernetes.io/ssh-auth",
        json!({ "username": server.user(), "ssh-privatekey": server.client_key_pem() }),
    );
    let password = secret(
        "sftp-password",
        "Opaque",
        json!({ "username": server.user(), "password": server.password() }),
    );
    let pinned = secret(
        "pinned",
        "Opaque",
        json!({ "known_hosts": server.known_hosts() }),
    );
    let other = secret(
        "other-key",
        "Opaque",
        json!({ "known_hosts": server.foreign_known_hosts().unwrap() }),
    );
    let garbage = secret(
        "garbage",
        "Opaque",
        json!({ "known_hosts": "127.0.0.1 ssh-ed25519 not-a-key" }),
    );
    for s in [key, password, pinned, other, garbage] {
        apply_value(&client, &ns.name, s).await;
    }
    let port = server.port();
    apply_value(
        &client,
        &ns.name,
        connection("by-key", port, "sftp-key", "pinned"),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        connection("by-password", port, "sftp-password", "pinned"),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        connection("mitm", port, "sftp-key", "other-key"),
    )
    .await;
    apply_value(
        &client,
        &ns.name,
        connection("bad-pin", port, "sftp-key", "garbage"),
    )
    .await;
    // Host keys are public: a ConfigMap pins them as well as a Secret.
    apply_value(
        &client,
        &ns.name,
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "pinned-cm" },
                "data": { "known_hosts": server.known_hosts() } }),
    )
    .await;
    let mut by_cm = connection("by-configmap", port, "sftp-key", "unused");
    by_cm["spec"]["ssh"] = json!({ "knownHostsConfigMapRef": { "name": "pinned-cm" } });
    apply_value(&client, &ns.name, by_cm).await;
    let api: Api<FtpConnection> = Api::namespaced(client.clone(), &ns.name);

    for name in ["by-key", "by-password", "by-configmap"] {
        let c = wait_for(&api, name, "Ready and Connected", |c| {
            is(c, "Ready", "True", "Ready") && is(c, "Connected", "True", "LoggedIn")
        })
        .await;
        let (_, _, msg) = cond(&c, "Ready").unwrap();
        assert!(msg.contains(&format!("sftp://127.0.0.1:{port}")), "{msg}");
    }

    let c = wait_for(&api, "mitm", "HostKeyMismatch", |c| {
        is(c, "Connected", "False", "HostKeyMismatch") && is(c, "Ready", "False", "HostKeyMismatch")
    })
    .await;
    let (_, _, msg) = cond(&c, "Connected").unwrap();
    assert!(msg.contains(server.host_key_fingerprint()), "{msg}");
    let c = wait_for(&api, "bad-pin", "SecretInvalid", |c| {
        is(c, "Ready", "False", "SecretInvalid")
    })
    .await;
    let (_, _, msg) = cond(&c, "Ready").unwrap();
    assert!(msg.contains("spec.ssh.knownHostsSecretRef"), "{msg}");

    // The refusal is a Warning Event on the resource, as for FTP failures.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let mut seen = false;
    for _ in 0..50 {
        let list = events.list(&ListParams::default()).await.unwrap();
        seen = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("HostKeyMismatch")
                && e.type_.as_deref() == Some("Warning")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("mitm")
        });
        if seen {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "no Warning Event with reason HostKeyMismatch for mitm"
    );

    // Pinning the right key (the Secret watch sees it) connects.
    apply_value(
        &client,
        &ns.name,
        secret(
            "other-key",
            "Opaque",
            json!({ "known_hosts": server.known_hosts() }),
        ),
    )
    .await;
    wait_for(&api, "mitm", "Connected after the fix", |c| {
        is(c, "Connected", "True", "LoggedIn") && is(c, "Ready", "True", "Ready")
    })
    .await;
}
