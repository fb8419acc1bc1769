//! Pieces of an HTTP client that honours the SSRF guard, for the clients that reach URLs that
//! events or resources name (webhooks, image downloads). The guard runs at connect time
//! through a DNS resolver, so a name that re-resolves to a forbidden address (DNS rebinding)
//! is still refused; IP literals never reach a resolver and are checked before each request.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::dns::Name as HyperName;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::ssrf::{TargetError, TargetGuard};

/// DNS lookups get their own bound; request timeouts bound them too.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls with the ring provider the rest of the operator uses and the bundled web PKI
/// roots, which a distroless image has while it has no system store. HTTP/1.1 only.
pub(crate) fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The roots to trust: the PEM CA bundle a resource names (only it), or the web PKI roots.
/// `Err` says what is wrong with the bundle.
pub(crate) fn root_store(ca_pem: Option<&[u8]>) -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CA bundle is not valid PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA bundle holds an unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("CA bundle holds no PEM certificate".to_string());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
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
