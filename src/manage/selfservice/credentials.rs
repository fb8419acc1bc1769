//! The `credentials` of a request body: which credentials there are, the Secret keys each is
//! written to, and what a request changes. Values only ever go into the Secret's data;
//! nothing here prints them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::kind::Kind;
use crate::manage::ApiError;

/// One credential of a request's `credentials`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Credential {
    Basic,
    BearerToken,
    SigningSecret,
    ApiKey,
    OAuth2,
    Username,
    Password,
    PrivateKey,
    Passphrase,
    KnownHosts,
    CaCertificate,
    ClientCertificate,
}

const ALL: [Credential; 12] = [
    Credential::Basic,
    Credential::BearerToken,
    Credential::SigningSecret,
    Credential::ApiKey,
    Credential::OAuth2,
    Credential::Username,
    Credential::Password,
    Credential::PrivateKey,
    Credential::Passphrase,
    Credential::KnownHosts,
    Credential::CaCertificate,
    Credential::ClientCertificate,
];

impl Credential {
    /// Its field in `credentials`.
    pub fn name(self) -> &'static str {
        match self {
            Credential::Basic => "basic",
            Credential::BearerToken => "bearerToken",
            Credential::SigningSecret => "signingSecret",
            Credential::ApiKey => "apiKey",
            Credential::OAuth2 => "oauth2",
            Credential::Username => "username",
            Credential::Password => "password",
            Credential::PrivateKey => "privateKey",
            Credential::Passphrase => "passphrase",
            Credential::KnownHosts => "knownHosts",
            Credential::CaCertificate => "caCertificate",
            Credential::ClientCertificate => "clientCertificate",
        }
    }

    fn from_name(s: &str) -> Option<Credential> {
        ALL.into_iter().find(|k| k.name() == s)
    }

    /// The Secret keys it is written to (the operator's defaults where it has one).
    pub fn secret_keys(self) -> &'static [&'static str] {
        match self {
            Credential::Basic => &["username", "password"],
            Credential::BearerToken => &["token"],
            Credential::SigningSecret => &["signing-secret"],
            Credential::ApiKey => &["apiKey"],
            Credential::OAuth2 => &["client-id", "client-secret"],
            Credential::Username => &["username"],
            Credential::Password => &["password"],
            Credential::PrivateKey => &["ssh-privatekey"],
            Credential::Passphrase => &["passphrase"],
            Credential::KnownHosts => &["known_hosts"],
            Credential::CaCertificate => &["ca.crt"],
            Credential::ClientCertificate => &["tls.crt", "tls.key"],
        }
    }

    /// Ways to authenticate to a webhook or API: setting one replaces another.
    fn is_http_auth(self) -> bool {
        matches!(
            self,
            Credential::Basic | Credential::BearerToken | Credential::ApiKey | Credential::OAuth2
        )
    }
}

/// Credentials a resource has (its Secret's [`super::labels::CREDENTIALS_ANNOTATION`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CredentialSet(BTreeSet<Credential>);

impl CredentialSet {
    pub fn has(&self, k: Credential) -> bool {
        self.0.contains(&k)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|k| k.name().to_string()).collect()
    }

    /// The annotation's value.
    pub fn annotation(&self) -> String {
        self.names().join(",")
    }

    /// From the annotation's value (unknown names are dropped).
    pub fn parse(annotation: &str) -> CredentialSet {
        annotation
            .split(',')
            .filter_map(|n| Credential::from_name(n.trim()))
            .collect()
    }
}

impl FromIterator<Credential> for CredentialSet {
    fn from_iter<I: IntoIterator<Item = Credential>>(iter: I) -> Self {
        CredentialSet(iter.into_iter().collect())
    }
}

/// What a request's `credentials` change: values to write, credentials to remove (`null`).
#[derive(Default)]
pub struct Change {
    /// Secret key → value.
    pub data: BTreeMap<&'static str, String>,
    pub set: CredentialSet,
    pub removed: CredentialSet,
}

impl Change {
    /// Reads `credentials` (absent: no change) for `kind`; every refusal names its field.
    pub fn parse(kind: Kind, credentials: Option<&Value>) -> Result<Change, ApiError> {
        let mut change = Change::default();
        let Some(credentials) = credentials else {
            return Ok(change);
        };
        let Some(map) = credentials.as_object() else {
            return Err(ApiError::invalid(
                "credentials",
                "credentials must be an object",
            ));
        };
        for (name, value) in map {
            let field = format!("credentials.{name}");
            let key = Credential::from_name(name)
                .filter(|k| kind.takes(*k))
                .ok_or_else(|| {
                    ApiError::invalid(
                        &field,
                        format!("{} takes no credential {name:?}", kind.segment()),
                    )
                })?;
            if value.is_null() {
                change.removed.0.insert(key);
                continue;
            }
            let values = values_of(key, value).map_err(|why| ApiError::invalid(&field, why))?;
            for (secret_key, v) in key.secret_keys().iter().zip(values) {
                change.data.insert(secret_key, v);
            }
            change.set.0.insert(key);
        }
        Ok(change)
    }

    /// The credentials a resource has after this change to `before`.
    pub fn apply_to(&self, before: &CredentialSet) -> CredentialSet {
        let replaces_auth = self.set.0.iter().any(|k| k.is_http_auth());
        let mut after: BTreeSet<Credential> = before
            .0
            .iter()
            .copied()
            .filter(|k| !(self.removed.has(*k) || (replaces_auth && k.is_http_auth())))
            .collect();
        after.extend(self.set.0.iter().copied());
        CredentialSet(after)
    }

    /// Secret keys to remove: those of credentials `before` had and `after` has not.
    pub fn stale_keys(before: &CredentialSet, after: &CredentialSet) -> Vec<&'static str> {
        let kept: BTreeSet<&str> = after
            .0
            .iter()
            .flat_map(|k| k.secret_keys())
            .copied()
            .collect();
        before
            .0
            .iter()
            .flat_map(|k| k.secret_keys())
            .copied()
            .filter(|k| !kept.contains(k))
            .collect()
    }
}

/// Checks what `kind` needs of the credentials it ends with.
pub fn check_complete(kind: Kind, keys: &CredentialSet) -> Result<(), ApiError> {
    if kind == Kind::Ftp {
        if !keys.has(Credential::Username) {
            return Err(ApiError::invalid(
                "credentials.username",
                "an FTP connection needs credentials.username",
            ));
        }
        if !keys.has(Credential::Password) && !keys.has(Credential::PrivateKey) {
            return Err(ApiError::invalid(
                "credentials.password",
                "an FTP connection needs credentials.password (or, for sftp, credentials.privateKey)",
            ));
        }
    }
    if keys.has(Credential::Basic) && keys.has(Credential::BearerToken) {
        return Err(ApiError::invalid(
            "credentials.bearerToken",
            "send one of credentials.basic or credentials.bearerToken",
        ));
    }
    Ok(())
}

/// The values of one credential, in the order of [`Credential::secret_keys`]. A refusal says what
/// was expected, never what was sent.
fn values_of(key: Credential, value: &Value) -> Result<Vec<String>, String> {
    let values = match key {
        Credential::Basic => {
            let b: UserPassword = parse(value, r#"{"username": "…", "password": "…"}"#)?;
            vec![b.username, b.password]
        }
        Credential::OAuth2 => {
            let o: OAuth2Client = parse(value, r#"{"clientId": "…", "clientSecret": "…"}"#)?;
            vec![o.client_id, o.client_secret]
        }
        Credential::ClientCertificate => {
            let c: ClientCertificate =
                parse(value, r#"{"certificate": "PEM", "privateKey": "PEM"}"#)?;
            vec![c.certificate, c.private_key]
        }
        _ => vec![
            value
                .as_str()
                .ok_or("must be a string (or null to remove it)")?
                .to_string(),
        ],
    };
    if values.iter().any(|v| v.is_empty()) {
        return Err("must not be empty".into());
    }
    Ok(values)
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value, shape: &str) -> Result<T, String> {
    T::deserialize(value).map_err(|_| format!("must be {shape} (or null to remove it)"))
}

/// HTTP Basic credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPassword {
    pub username: String,
    pub password: String,
}

/// OAuth2 client credentials (the token endpoint and scopes are in `spec.auth.oauth2`).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuth2Client {
    pub client_id: String,
    pub client_secret: String,
}

/// A client certificate for mTLS, PEM.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientCertificate {
    pub certificate: String,
    pub private_key: String,
}

/// Credentials of a self-service resource, written to a Secret in the client's namespace
/// and never returned. On `PUT`, a field left out keeps what the resource had, `null`
/// removes it, and a new way to authenticate (`basic`, `bearerToken`, `apiKey`, `oauth2`)
/// replaces the previous one.
#[derive(ToSchema)]
#[schema(example = json!({ "basic": { "username": "vc", "password": "s3cret" }, "signingSecret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }))]
#[allow(dead_code)] // The schema of `credentials`; requests are read field by field.
pub struct Credentials {
    /// Webhooks and API connections: HTTP Basic auth (`spec.auth.basic`).
    pub basic: Option<UserPassword>,
    /// Webhooks and API connections: `Authorization: Bearer` (`spec.auth.bearer`).
    #[schema(rename = "bearerToken")]
    pub bearer_token: Option<String>,
    /// Webhooks: Standard Webhooks signing secrets, `whsec_<base64>`, space separated
    /// (`spec.signing`).
    #[schema(rename = "signingSecret")]
    pub signing_secret: Option<String>,
    /// API connections: the key of `spec.auth.apiKey` (whose `header` and `prefix` are in
    /// the spec).
    #[schema(rename = "apiKey")]
    pub api_key: Option<String>,
    /// API connections: client id and secret of `spec.auth.oauth2` (whose `tokenUrl` is in
    /// the spec).
    pub oauth2: Option<OAuth2Client>,
    /// FTP connections: the login (required).
    pub username: Option<String>,
    /// FTP connections: the password (or `privateKey` for sftp).
    pub password: Option<String>,
    /// FTP connections (sftp): an OpenSSH or PEM private key.
    #[schema(rename = "privateKey")]
    pub private_key: Option<String>,
    /// FTP connections (sftp): the private key's passphrase.
    pub passphrase: Option<String>,
    /// FTP connections (sftp): the server's host keys, `known_hosts` format
    /// (`spec.ssh.knownHostsSecretRef`).
    #[schema(rename = "knownHosts")]
    pub known_hosts: Option<String>,
    /// All kinds: CA certificate(s) to trust, PEM (webhooks `spec.tls`, FTPS `caSecretRef`,
    /// API `spec.tls.caSecretRef`).
    #[schema(rename = "caCertificate")]
    pub ca_certificate: Option<String>,
    /// API connections: a client certificate for mTLS (`spec.tls.clientCertSecretRef`).
    #[schema(rename = "clientCertificate")]
    pub client_certificate: Option<ClientCertificate>,
}

/// The `credentials` of a stored resource's Secret, as names.
pub fn names_of(annotations: Option<&BTreeMap<String, String>>) -> CredentialSet {
    annotations
        .and_then(|a| a.get(super::labels::CREDENTIALS_ANNOTATION))
        .map(|v| CredentialSet::parse(v))
        .unwrap_or_default()
}

/// `data` of a Secret merge patch: values base64-encoded, removed keys `null`.
pub fn data_patch(change: &Change, stale: &[&str]) -> Map<String, Value> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = Map::new();
    for k in stale {
        data.insert((*k).to_string(), Value::Null);
    }
    for (k, v) in &change.data {
        data.insert((*k).to_string(), Value::String(b64.encode(v)));
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_and_apply() {
        let c = Change::parse(
            Kind::Webhook,
            Some(&json!({ "basic": { "username": "u", "password": "p" }, "signingSecret": "whsec_x" })),
        )
        .unwrap();
        assert_eq!(c.data["username"], "u");
        assert_eq!(c.data["signing-secret"], "whsec_x");
        let keys = c.apply_to(&CredentialSet::default());
        assert_eq!(keys.annotation(), "basic,signingSecret");
        // A bearer token replaces Basic; null removes the signing secret.
        let c2 = Change::parse(
            Kind::Webhook,
            Some(&json!({ "bearerToken": "t", "signingSecret": null })),
        )
        .unwrap();
        let after = c2.apply_to(&keys);
        assert_eq!(after.annotation(), "bearerToken");
        assert_eq!(
            Change::stale_keys(&keys, &after),
            ["username", "password", "signing-secret"]
        );
        assert_eq!(CredentialSet::parse(&after.annotation()), after);
    }

    #[test]
    fn refusals_name_the_field_and_never_the_value() {
        let e = |kind, v: Value| Change::parse(kind, Some(&v)).err().unwrap();
        let err = e(Kind::Webhook, json!({ "apiKey": "k" }));
        assert_eq!(err.field.as_deref(), Some("credentials.apiKey"));
        let err = e(Kind::Ftp, json!({ "password": 42 }));
        assert_eq!(err.field.as_deref(), Some("credentials.password"));
        let err = e(
            Kind::Webhook,
            json!({ "basic": { "username": "u", "pasword": "hunter2" } }),
        );
        assert!(!err.message.contains("hunter2"), "{}", err.message);
        assert!(
            e(Kind::Ftp, json!({ "password": "" }))
                .message
                .contains("empty")
        );
        let ftp = Change::parse(Kind::Ftp, Some(&json!({ "password": "p" }))).unwrap();
        let err = check_complete(Kind::Ftp, &ftp.apply_to(&CredentialSet::default())).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("credentials.username"));
    }
}
