//! Reading Secret values for a resource, only from its own namespace, only of the types a
//! delivery credential has, and (with `--secret-selector`) only Secrets carrying the
//! selected labels. Values are never logged; problems become `SecretNotFound`,
//! `SecretNotAllowed` or `SecretInvalid` checks naming the field.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;

use super::KindContext;
use crate::api::SecretKeyRef;
use crate::status::Check;

/// Secrets already read, kept while the Secret's resourceVersion (from the metadata watch)
/// is unchanged: 10,000 subscriptions sharing one signing Secret cost one GET, not 10,000.
#[derive(Default)]
pub struct SecretCache {
    /// (namespace, name) → (resourceVersion, Secret).
    entries: Mutex<HashMap<SecretId, (String, Arc<Secret>)>>,
}

type SecretId = (String, String);

impl SecretCache {
    fn get(&self, ns: &str, name: &str, rv: &str) -> Option<Arc<Secret>> {
        let e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.get(&(ns.to_string(), name.to_string()))
            .filter(|(v, _)| v == rv)
            .map(|(_, s)| s.clone())
    }

    fn put(&self, ns: &str, name: &str, secret: Arc<Secret>) {
        if let Some(rv) = secret.metadata.resource_version.clone() {
            let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            e.insert((ns.to_string(), name.to_string()), (rv, secret));
        }
    }

    /// Drops entries whose Secret is gone or changed (called now and then).
    pub fn retain_current(&self, current: impl Fn(&str, &str, &str) -> bool) {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        e.retain(|(ns, name), (rv, _)| current(ns, name, rv));
    }
}

/// Secret types a resource may point at. Everything else (service-account tokens, Helm
/// release records, registry and bootstrap credentials, ...) is never a delivery credential,
/// and reading it would hand whoever may create a subscription a Secret they may not read.
pub const ALLOWED_TYPES: [&str; 3] = ["Opaque", "kubernetes.io/basic-auth", "kubernetes.io/tls"];

/// The key of a private key in a `kubernetes.io/ssh-auth` Secret, also read from the others.
pub const SSH_PRIVATE_KEY: &str = "ssh-privatekey";

/// Whether a Secret of type `t` (None: unset, which Kubernetes treats as Opaque) may be used.
pub fn type_allowed(t: Option<&str>) -> bool {
    t.is_none_or(|t| t.is_empty() || ALLOWED_TYPES.contains(&t))
}

/// Checks `--secret-selector` with the API server (one metadata list of at most one
/// item), so a typo stops the start instead of failing every watch.
pub async fn check_selector(client: &kube::Client, selector: &str) -> Result<(), kube::Error> {
    super::check_selector::<Secret>(client, selector).await
}

/// What a reconcile found under a Secret name.
enum Fetched {
    Found(Arc<Secret>),
    /// Exists, but without the labels `--secret-selector` asks for (value never read).
    NotSelected,
    Missing,
}

/// Fetches Secrets of one namespace for one reconcile.
pub struct SecretReader<'a> {
    api: Api<Secret>,
    ns: String,
    ctx: &'a KindContext,
    cache: BTreeMap<String, Fetched>,
}

impl<'a> SecretReader<'a> {
    pub fn new(ctx: &'a KindContext, ns: &str) -> Self {
        SecretReader {
            api: Api::namespaced(ctx.shared.client.clone(), ns),
            ns: ns.to_string(),
            ctx,
            cache: BTreeMap::new(),
        }
    }

    async fn fetch(&self, name: &str) -> Result<Fetched, kube::Error> {
        let meta = self.ctx.secrets.get(&ObjectRef::new(name).within(&self.ns));
        if let Some(rv) = meta
            .as_ref()
            .and_then(|m| m.metadata.resource_version.as_deref())
            && let Some(s) = self.ctx.shared.secret_values.get(&self.ns, name, rv)
        {
            return Ok(Fetched::Found(s));
        }
        let found = match &self.ctx.shared.settings.secret_selector {
            None => self.api.get_opt(name).await?,
            // The API server applies the selector: a Secret without the labels is never
            // transferred, only its existence is asked (for a clear message).
            Some(sel) => {
                let lp = ListParams::default()
                    .fields(&format!("metadata.name={name}"))
                    .labels(sel);
                match self.api.list(&lp).await?.items.into_iter().next() {
                    Some(s) => Some(s),
                    None if self.api.get_metadata_opt(name).await?.is_some() => {
                        return Ok(Fetched::NotSelected);
                    }
                    None => None,
                }
            }
        };
        Ok(match found {
            Some(s) => {
                let s = Arc::new(s);
                self.ctx.shared.secret_values.put(&self.ns, name, s.clone());
                Fetched::Found(s)
            }
            None => Fetched::Missing,
        })
    }

    /// The value of `key` in Secret `name`, as text with trailing line breaks removed (a
    /// common slip when Secrets are made from files). `field` names the spec field for the
    /// message. Outer `Err` is an API error; inner `Err` a check to report.
    pub async fn value(
        &mut self,
        name: &str,
        key: &str,
        field: &str,
    ) -> Result<Result<String, Check>, kube::Error> {
        self.bytes(name, key, field)
            .await
            .map(|r| r.and_then(|b| text(name, key, field, b)))
    }

    /// Like [`Self::value`], also from a Secret of type `kubernetes.io/ssh-auth`: SSH key
    /// authentication never sends the key, only a signature bound to one session, so using
    /// it against a server the resource names cannot leak it.
    pub async fn ssh_key(
        &mut self,
        name: &str,
        key: &str,
        field: &str,
    ) -> Result<Result<String, Check>, kube::Error> {
        self.raw(name, key, field, true)
            .await
            .map(|r| r.and_then(|b| text(name, key, field, b)))
    }

    /// The PEM CA bundle `r` names (key `ca.crt` unless set), checked now, so that a
    /// bundle no connection could use is reported naming `field`, not at the first attempt.
    pub async fn ca_bundle(
        &mut self,
        r: &SecretKeyRef,
        field: &str,
    ) -> Result<Result<Vec<u8>, Check>, kube::Error> {
        let key = r.key_or("ca.crt");
        let pem = match self.bytes(&r.name, key, field).await? {
            Ok(b) => b,
            Err(c) => return Ok(Err(c)),
        };
        Ok(match crate::delivery::http::root_store(Some(&pem)) {
            Ok(_) => Ok(pem),
            Err(why) => Err(Check::fail(
                "SecretInvalid",
                format!("key {key:?} of Secret {:?} ({field}): {why}", r.name),
            )),
        })
    }

    /// Raw bytes of `key` in Secret `name`.
    pub async fn bytes(
        &mut self,
        name: &str,
        key: &str,
        field: &str,
    ) -> Result<Result<Vec<u8>, Check>, kube::Error> {
        self.raw(name, key, field, false).await
    }

    async fn raw(
        &mut self,
        name: &str,
        key: &str,
        field: &str,
        ssh_auth: bool,
    ) -> Result<Result<Vec<u8>, Check>, kube::Error> {
        if !self.cache.contains_key(name) {
            let s = self.fetch(name).await?;
            self.cache.insert(name.to_string(), s);
        }
        let ns = &self.ns;
        let secret = match self.cache.get(name) {
            Some(Fetched::Found(s)) => s,
            Some(Fetched::NotSelected) => {
                let sel = self
                    .ctx
                    .shared
                    .settings
                    .secret_selector
                    .as_deref()
                    .unwrap_or_default();
                return Ok(Err(Check::fail(
                    "SecretNotAllowed",
                    format!(
                        "Secret {name:?} ({field}) lacks the labels this operator is limited to ({sel}); an administrator of the namespace labels Secrets meant for delivery"
                    ),
                )));
            }
            Some(Fetched::Missing) | None => {
                return Ok(Err(Check::fail(
                    "SecretNotFound",
                    format!(
                        "Secret {name:?} ({field}) not found in namespace {ns:?}; create it there"
                    ),
                )));
            }
        };
        let ssh_typed = ssh_auth && secret.type_.as_deref() == Some("kubernetes.io/ssh-auth");
        if !ssh_typed && !type_allowed(secret.type_.as_deref()) {
            return Ok(Err(Check::fail(
                "SecretNotAllowed",
                format!(
                    "Secret {name:?} ({field}) is of type {:?}, which is never a delivery credential; use a Secret of type {}",
                    secret.type_.as_deref().unwrap_or_default(),
                    ALLOWED_TYPES.join(", ")
                ),
            )));
        }
        let value = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.clone())
            .or_else(|| {
                secret
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|s| s.clone().into_bytes())
            });
        Ok(match value {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(Check::fail(
                "SecretInvalid",
                format!("key {key:?} of Secret {name:?} ({field}) is empty"),
            )),
            None => Err(Check::fail(
                "SecretInvalid",
                format!("Secret {name:?} ({field}) has no key {key:?}"),
            )),
        })
    }
}

/// A Secret value as text, trailing line breaks removed.
fn text(name: &str, key: &str, field: &str, bytes: Vec<u8>) -> Result<String, Check> {
    String::from_utf8(bytes)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
        .map_err(|_| {
            Check::fail(
                "SecretInvalid",
                format!("key {key:?} of Secret {name:?} ({field}) is not UTF-8 text"),
            )
        })
}

/// Decodes Standard Webhooks secrets: one or more `whsec_<base64>` separated by whitespace.
pub fn decode_whsec(value: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for (i, item) in value.split_whitespace().enumerate() {
        let b64 = item
            .strip_prefix("whsec_")
            .ok_or_else(|| format!("item {} does not start with whsec_", i + 1))?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| format!("item {} is not whsec_ followed by base64", i + 1))?;
        if key.len() < 16 {
            return Err(format!("item {} is shorter than 16 bytes", i + 1));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no whsec_ secret found".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_values() {
        let k = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        assert_eq!(decode_whsec(k).unwrap().len(), 1);
        assert_eq!(decode_whsec(&format!("{k} \n{k}\n")).unwrap().len(), 2);
        assert!(decode_whsec("").is_err());
        assert!(decode_whsec("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_whsec("whsec_!!!").is_err());
        assert!(decode_whsec("whsec_YWJj").is_err(), "too short");
    }

    #[test]
    fn only_credential_types_are_allowed() {
        for t in [
            None,
            Some(""),
            Some("Opaque"),
            Some("kubernetes.io/basic-auth"),
            Some("kubernetes.io/tls"),
        ] {
            assert!(type_allowed(t), "{t:?}");
        }
        for t in [
            "kubernetes.io/service-account-token",
            "helm.sh/release.v1",
            "kubernetes.io/dockercfg",
            "kubernetes.io/dockerconfigjson",
            "bootstrap.kubernetes.io/token",
            "kubernetes.io/ssh-auth",
            "example.com/anything",
        ] {
            assert!(!type_allowed(Some(t)), "{t}");
        }
    }
}
