//! Pieces of an HTTP client that honours the SSRF guard, for the clients that reach URLs that
//! events or resources name (webhooks, image downloads, APIs). The guard runs at connect time
//! through a DNS resolver, so a name that re-resolves to a forbidden address (DNS rebinding)
//! is still refused; IP literals never reach a resolver and are checked before each request.
//!
//! TLS: every client (and FTPS) trusts the system's roots, read once here, or instead a
//! resource's own CA bundle; clients with a bundle of their own are kept per bundle.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name as HyperName;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::endpoint::TlsMaterial;
use crate::ssrf::{TargetError, TargetGuard};

/// DNS lookups get their own bound; request timeouts bound them too.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material that cannot be used; names what is wrong (never the key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsMaterialError(pub String);

/// The rustls configuration of an HTTP client (webhooks, image downloads, APIs): the ring
/// provider the rest of the operator uses, `tls`'s CA bundle instead of the system roots,
/// its client certificate for mTLS; HTTP/1.1 only.
pub fn tls_config(tls: &TlsMaterial) -> Result<rustls::ClientConfig, TlsMaterialError> {
    let fail = |m: String| TlsMaterialError(m);
    let roots = root_store(tls.ca_pem.as_deref()).map_err(fail)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(format!("TLS setup: {e}")))?
    .with_root_certificates(roots);
    let mut config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(format!("client certificate is not valid PEM: {e}")))?;
            if chain.is_empty() {
                return Err(fail("client certificate holds no PEM certificate".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|_| fail("client key is not a PEM private key".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail(format!("client certificate and key do not fit: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The roots to trust: the PEM CA bundle a resource names, alone (a private CA replaces the
/// system roots, as it does for every kind), or the system's. `Err` says what is wrong with
/// the bundle.
pub(crate) fn root_store(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::RootCertStore>, String> {
    let Some(pem) = ca_pem else {
        return Ok(SYSTEM_ROOTS.clone());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("CA bundle is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA bundle holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("CA bundle holds no PEM certificate".to_string());
    }
    Ok(Arc::new(roots))
}

/// The system's trust store, read once (parsing it costs milliseconds, and every client and
/// FTPS session starts from it).
static SYSTEM_ROOTS: LazyLock<Arc<rustls::RootCertStore>> =
    LazyLock::new(|| Arc::new(system_roots(rustls_native_certs::load_native_certs())));

/// The certificates the system store holds (the image's `/etc/ssl/certs`, or `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` when set). A system without any gets the bundled Mozilla roots, with a
/// warning: refusing every public HTTPS target would help no one.
fn system_roots(found: rustls_native_certs::CertificateResult) -> rustls::RootCertStore {
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system's CA certificates");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            "no CA certificate in the system trust store (/etc/ssl/certs, SSL_CERT_FILE, SSL_CERT_DIR); trusting the bundled Mozilla roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        tracing::info!(
            roots = added,
            ignored,
            "trusting the system's CA certificates"
        );
    }
    roots
}

/// Clients (whose type is `C`) built once per TLS material, by its fingerprint, so that a
/// rotated CA gets a new client and targets sharing one share its connection pool.
pub(crate) struct PerTls<C> {
    map: Mutex<HashMap<[u8; 32], C>>,
}

/// Clients kept at once; beyond it the cache starts over (each holds idle connections).
const MAX_CLIENTS: usize = 1024;

impl<C> Default for PerTls<C> {
    fn default() -> Self {
        PerTls {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<C: Clone> PerTls<C> {
    /// The client of material `id`, built by `build` on first use.
    pub(crate) fn get<E>(
        &self,
        id: &[u8; 32],
        build: impl FnOnce() -> Result<C, E>,
    ) -> Result<C, E> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(id) {
            return Ok(c.clone());
        }
        let client = build()?;
        if map.len() >= MAX_CLIENTS {
            map.clear();
        }
        map.insert(*id, client.clone());
        Ok(client)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Checks a URL whose host is an IP literal; names are checked by [`GuardedResolver`].
pub(crate) fn check_literal(guard: &TargetGuard, url: &url::Url) -> Result<(), TargetError> {
    let ip: IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        Some(url::Host::Domain(_)) | None => return Ok(()),
    };
    guard.check_ip(url.host_str().unwrap_or_default(), ip)
}

/// Resolves with tokio and refuses addresses the guard blocks, at connect time: reqwest's
/// resolver (image downloads) and hyper-util's, a `tower::Service<Name>` (webhooks).
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) guard: Arc<TargetGuard>,
}

impl GuardedResolver {
    fn lookup(
        &self,
        host: &str,
    ) -> impl Future<Output = Result<Vec<SocketAddr>, TargetError>> + Send + 'static {
        let guard = self.guard.clone();
        let host = host.to_string();
        // Port 0: the connector puts the URL's port on each address.
        async move { guard.check_host(&host, 0, DNS_TIMEOUT).await }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let lookup = self.lookup(name.as_str());
        Box::pin(async move {
            let addrs = lookup.await.map_err(|e| Box::new(e) as BoxError)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

impl tower_service::Service<HyperName> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    // The guard's own error (not boxed again), so that it is found in the source chain.
    type Error = TargetError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, TargetError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), TargetError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: HyperName) -> Self::Future {
        let lookup = self.lookup(name.as_str());
        Box::pin(async move { lookup.await.map(Vec::into_iter) })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The guard's refusal somewhere in an error's source chain, if that is why it failed.
pub(crate) fn target_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a TargetError> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<TargetError>() {
            return Some(t);
        }
        source = e.source();
    }
    None
}

/// The rustls error somewhere in an error's source chain, if TLS is why it failed. TLS
/// streams wrap it in an `io::Error` (hyper-rustls in one more), whose `source()` skips what
/// it wraps: the walk steps into it instead.
pub(crate) fn tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        source = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped),
            None => e.source(),
        };
    }
    None
}

/// What to do about a TLS failure, when the fix is the resource's to make.
pub(crate) fn tls_hint(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            " (the server's certificate is not signed by a CA this operator trusts; put its CA in spec.tls.caSecretRef)"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => " (the server's certificate does not name this host)",
        _ => "",
    }
}

/// The error and its sources on one line, `a: b: c`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let text = e.to_string();
        // reqwest and hyper often repeat their source's text.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// `text` with every one of `secrets` replaced by `***` (longest first, so that a secret
/// holding another is masked whole).
pub(crate) fn mask(text: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in secrets {
        if out.contains(s) {
            out = out.replace(s, "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(name: &str) -> String {
        rcgen::generate_simple_self_signed(vec![name.to_string()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn the_system_store_is_read_once_and_a_bundle_replaces_it() {
        let system = root_store(None).unwrap();
        assert!(Arc::ptr_eq(&system, &root_store(None).unwrap()));
        assert!(!system.is_empty());
        let expected = rustls_native_certs::load_native_certs().certs.len();
        if expected > 0 {
            // This machine has a store: it is what is trusted, not the bundled roots.
            assert!(system.len() <= expected && system.len() * 10 >= expected * 9);
        }

        let two = format!("{}{}", pem("a"), pem("b"));
        assert_eq!(root_store(Some(two.as_bytes())).unwrap().len(), 2);
        assert_eq!(
            root_store(Some(b"no PEM here")).unwrap_err(),
            "CA bundle holds no PEM certificate"
        );
        let broken = "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n";
        assert!(
            root_store(Some(broken.as_bytes()))
                .unwrap_err()
                .starts_with("CA bundle is not valid PEM"),
        );
    }

    #[test]
    fn a_system_without_certificates_falls_back_to_the_bundled_roots() {
        let none = rustls_native_certs::CertificateResult::default();
        assert_eq!(
            system_roots(none).len(),
            webpki_roots::TLS_SERVER_ROOTS.len()
        );
        let mut one = rustls_native_certs::CertificateResult::default();
        let der = rcgen::generate_simple_self_signed(vec!["a".to_string()])
            .unwrap()
            .cert
            .der()
            .clone();
        one.certs.push(der);
        assert_eq!(system_roots(one).len(), 1);
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper-rustls hands it on: tokio-rustls's io::Error, in another one.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls.clone(),
        ));
        #[derive(Debug, thiserror::Error)]
        #[error("connect")]
        struct Outer(#[source] std::io::Error);
        let outer = Outer(io);
        assert_eq!(tls_error(&outer), Some(&tls));
        assert!(tls_hint(&tls).contains("spec.tls.caSecretRef"));
        let plain = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(tls_error(&plain), None);
    }
}
