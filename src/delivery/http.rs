//! Pieces of an HTTP client that honours the SSRF guard, for clients that fetch from URLs
//! that events or resources name (image downloads). The guard runs at connect time through
//! a DNS resolver, so a name that re-resolves to a forbidden address (DNS rebinding) is still
//! refused; IP literals never reach a resolver and are checked with [`check_literal`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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

/// Checks a URL whose host is an IP literal; names are checked by [`GuardedResolver`].
pub(crate) fn check_literal(guard: &TargetGuard, url: &url::Url) -> Result<(), TargetError> {
    let ip: IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        Some(url::Host::Domain(_)) | None => return Ok(()),
    };
    guard.check_ip(url.host_str().unwrap_or_default(), ip)
}

/// Resolves with tokio and refuses addresses the guard blocks, at connect time.
pub(crate) struct GuardedResolver {
    pub(crate) guard: Arc<TargetGuard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port on each address.
            let addrs = guard
                .check_host(&host, 0, DNS_TIMEOUT)
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
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
