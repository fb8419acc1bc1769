//! The three kinds a client manages itself, and where each kind's spec names the Secret
//! this API writes: the client sends the spec without those references and the
//! credentials beside it; the API sets the references, and strips them again on the way out
//! (so what GET returns can be PUT back as it is).

use kube::Resource;
use kube::discovery::ApiResource;
use serde_json::{Map, Value, json};

use super::credentials::{Credential, CredentialSet};
use crate::api::{ApiConnection, FtpConnection, WebhookSubscription};
use crate::manage::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Webhook,
    Ftp,
    Api,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Webhook, Kind::Ftp, Kind::Api];

    /// The path segment: `/v1/self-service/{segment}`.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Webhook => "webhooks",
            Kind::Ftp => "ftp-connections",
            Kind::Api => "api-connections",
        }
    }

    pub fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == s)
    }

    pub fn kind_name(self) -> &'static str {
        match self {
            Kind::Webhook => "WebhookSubscription",
            Kind::Ftp => "FtpConnection",
            Kind::Api => "ApiConnection",
        }
    }

    /// The short name, which also prefixes the credentials Secret's name.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Webhook => "whs",
            Kind::Ftp => "ftpc",
            Kind::Api => "apic",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Webhook => ApiResource::erase::<WebhookSubscription>(&()),
            Kind::Ftp => ApiResource::erase::<FtpConnection>(&()),
            Kind::Api => ApiResource::erase::<ApiConnection>(&()),
        }
    }

    pub fn api_version(self) -> String {
        match self {
            Kind::Webhook => WebhookSubscription::api_version(&()).into_owned(),
            Kind::Ftp => FtpConnection::api_version(&()).into_owned(),
            Kind::Api => ApiConnection::api_version(&()).into_owned(),
        }
    }

    /// The name of the Secret holding a resource's credentials.
    pub fn secret_name(self, name: &str) -> String {
        format!("vc-{}-{name}", self.short())
    }

    /// Which credentials this kind takes.
    pub fn takes(self, key: Credential) -> bool {
        use Credential::*;
        match self {
            Kind::Webhook => matches!(key, Basic | BearerToken | SigningSecret | CaCertificate),
            Kind::Ftp => matches!(
                key,
                Username | Password | PrivateKey | Passphrase | KnownHosts | CaCertificate
            ),
            Kind::Api => matches!(
                key,
                Basic | BearerToken | ApiKey | OAuth2 | CaCertificate | ClientCertificate
            ),
        }
    }

    /// Refuses what a client may not set in a spec: the Secret references (the API sets
    /// them from `credentials`) and references to objects a client cannot create here.
    pub fn check_client_spec(self, spec: &Map<String, Value>) -> Result<(), ApiError> {
        let managed = |field: &str| {
            ApiError::invalid(
                format!("spec.{field}"),
                format!(
                    "spec.{field} is set by the self-service API from `credentials`; send the credentials instead"
                ),
            )
        };
        let has = |path: &[&str]| get(spec, path).is_some();
        match self {
            Kind::Webhook => {
                for f in ["auth", "signing", "tls"] {
                    if has(&[f]) {
                        return Err(managed(f));
                    }
                }
            }
            Kind::Ftp => {
                for path in [
                    &["credentialsSecretRef"][..],
                    &["caSecretRef"],
                    &["ssh", "knownHostsSecretRef"],
                ] {
                    if has(path) {
                        return Err(managed(&path.join(".")));
                    }
                }
                if has(&["ssh", "knownHostsConfigMapRef"]) {
                    return Err(ApiError::invalid(
                        "spec.ssh.knownHostsConfigMapRef",
                        "self-service cannot name ConfigMaps; send the host keys as credentials.knownHosts",
                    ));
                }
            }
            Kind::Api => {
                for path in [
                    &["auth", "basic"][..],
                    &["auth", "bearer"],
                    &["auth", "apiKey", "secretRef"],
                    &["auth", "oauth2", "clientSecretRef"],
                    &["tls"],
                ] {
                    if has(path) {
                        return Err(managed(&path.join(".")));
                    }
                }
                if has(&["openapi"]) {
                    return Err(ApiError::invalid(
                        "spec.openapi",
                        "self-service cannot name ConfigMaps: spec.openapi is for resources a cluster admin applies",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sets the spec's references to Secret `secret` for the credentials in `keys`.
    pub fn set_refs(self, spec: &mut Map<String, Value>, secret: &str, keys: &CredentialSet) {
        let key_ref = |key: &str| json!({ "name": secret, "key": key });
        let name_ref = json!({ "name": secret });
        match self {
            Kind::Webhook => {
                if keys.has(Credential::Basic) {
                    spec.insert("auth".into(), json!({ "basic": { "secretRef": name_ref } }));
                } else if keys.has(Credential::BearerToken) {
                    let r = key_ref(Credential::BearerToken.secret_keys()[0]);
                    spec.insert("auth".into(), json!({ "bearer": { "secretRef": r } }));
                }
                if keys.has(Credential::SigningSecret) {
                    let r = key_ref(Credential::SigningSecret.secret_keys()[0]);
                    spec.insert("signing".into(), json!({ "secretRef": r }));
                }
                if keys.has(Credential::CaCertificate) {
                    let r = key_ref(Credential::CaCertificate.secret_keys()[0]);
                    spec.insert("tls".into(), json!({ "caSecretRef": r }));
                }
            }
            Kind::Ftp => {
                spec.insert("credentialsSecretRef".into(), name_ref);
                if keys.has(Credential::CaCertificate) {
                    spec.insert(
                        "caSecretRef".into(),
                        key_ref(Credential::CaCertificate.secret_keys()[0]),
                    );
                }
                if keys.has(Credential::KnownHosts) {
                    let r = key_ref(Credential::KnownHosts.secret_keys()[0]);
                    object_at(spec, "ssh").insert("knownHostsSecretRef".into(), r);
                }
            }
            Kind::Api => {
                if keys.has(Credential::Basic) {
                    object_at(spec, "auth")
                        .insert("basic".into(), json!({ "secretRef": name_ref }));
                }
                if keys.has(Credential::BearerToken) {
                    let r = key_ref(Credential::BearerToken.secret_keys()[0]);
                    object_at(spec, "auth").insert("bearer".into(), json!({ "secretRef": r }));
                }
                if keys.has(Credential::ApiKey) {
                    let r = key_ref(Credential::ApiKey.secret_keys()[0]);
                    object_at(object_at(spec, "auth"), "apiKey").insert("secretRef".into(), r);
                }
                if keys.has(Credential::OAuth2) {
                    object_at(object_at(spec, "auth"), "oauth2")
                        .insert("clientSecretRef".into(), json!({ "name": secret }));
                }
                if keys.has(Credential::CaCertificate) {
                    let r = key_ref(Credential::CaCertificate.secret_keys()[0]);
                    object_at(spec, "tls").insert("caSecretRef".into(), r);
                }
                if keys.has(Credential::ClientCertificate) {
                    object_at(spec, "tls")
                        .insert("clientCertSecretRef".into(), json!({ "name": secret }));
                }
            }
        }
    }

    /// The spec as a client sends it: without the references [`Kind::set_refs`] sets.
    pub fn strip_refs(self, spec: &mut Map<String, Value>) {
        match self {
            Kind::Webhook => {
                for f in ["auth", "signing", "tls"] {
                    spec.remove(f);
                }
            }
            Kind::Ftp => {
                spec.remove("credentialsSecretRef");
                spec.remove("caSecretRef");
                remove_at(spec, &["ssh"], "knownHostsSecretRef");
            }
            Kind::Api => {
                spec.remove("tls");
                remove_at(spec, &["auth"], "basic");
                remove_at(spec, &["auth"], "bearer");
                remove_at(spec, &["auth", "apiKey"], "secretRef");
                remove_at(spec, &["auth", "oauth2"], "clientSecretRef");
                if get(spec, &["auth"])
                    .and_then(Value::as_object)
                    .is_some_and(Map::is_empty)
                {
                    spec.remove("auth");
                }
            }
        }
    }
}

fn get<'a>(spec: &'a Map<String, Value>, path: &[&str]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    rest.iter()
        .try_fold(spec.get(*first)?, |v, k| v.as_object()?.get(*k))
}

/// The object at `key` of `m`, made (or replacing a non-object) if need be.
fn object_at<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let v = m.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(o) => o,
        _ => unreachable!("made an object just above"),
    }
}

fn remove_at(spec: &mut Map<String, Value>, path: &[&str], key: &str) {
    let mut cur = Some(spec);
    for p in path {
        cur = cur
            .and_then(|m| m.get_mut(*p))
            .and_then(Value::as_object_mut);
    }
    if let Some(m) = cur {
        m.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn refs_round_trip() {
        let keys: CredentialSet = [Credential::ApiKey, Credential::CaCertificate]
            .into_iter()
            .collect();
        let sent = obj(
            json!({ "baseUrl": "https://api.example", "auth": { "apiKey": { "header": "X-Key" } } }),
        );
        Kind::Api.check_client_spec(&sent).unwrap();
        let mut spec = sent.clone();
        Kind::Api.set_refs(&mut spec, "vc-apic-x", &keys);
        assert_eq!(
            spec["auth"]["apiKey"]["secretRef"],
            json!({ "name": "vc-apic-x", "key": "apiKey" })
        );
        assert_eq!(spec["tls"]["caSecretRef"]["key"], "ca.crt");
        Kind::Api.strip_refs(&mut spec);
        assert_eq!(spec, sent);

        let mut ftp =
            obj(json!({ "host": "ftp.example", "ssh": { "insecureSkipHostKeyCheck": false } }));
        let keys: CredentialSet = [
            Credential::Username,
            Credential::Password,
            Credential::KnownHosts,
        ]
        .into_iter()
        .collect();
        let before = ftp.clone();
        Kind::Ftp.set_refs(&mut ftp, "vc-ftpc-x", &keys);
        assert_eq!(ftp["credentialsSecretRef"], json!({ "name": "vc-ftpc-x" }));
        assert_eq!(ftp["ssh"]["knownHostsSecretRef"]["key"], "known_hosts");
        assert!(Kind::Ftp.check_client_spec(&ftp).is_err());
        Kind::Ftp.strip_refs(&mut ftp);
        assert_eq!(ftp, before);
    }

    #[test]
    fn managed_fields_are_refused_by_name() {
        let e = Kind::Webhook
            .check_client_spec(&obj(json!({ "signing": {} })))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.signing"));
        let e = Kind::Api
            .check_client_spec(&obj(
                json!({ "auth": { "oauth2": { "clientSecretRef": {} } } }),
            ))
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("spec.auth.oauth2.clientSecretRef"));
    }
}
