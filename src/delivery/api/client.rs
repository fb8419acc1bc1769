//! HTTP clients for clients' APIs: one per TLS material (CA bundle, client certificate), each
//! resolving through the SSRF guard, following no redirects (a 3xx is an answer the mapping
//! did not expect, and a redirect could lead the credentials elsewhere).

use std::sync::Arc;
use std::time::Duration;

use crate::delivery::http::{GuardedResolver, PerTls, TlsMaterialError, tls_config};
use crate::endpoint::TlsMaterial;
use crate::ssrf::TargetGuard;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared HTTP clients, one per TLS material.
pub(crate) struct Clients {
    guard: Arc<TargetGuard>,
    by_tls: PerTls<reqwest::Client>,
}

impl Clients {
    pub(crate) fn new(guard: Arc<TargetGuard>) -> Self {
        Clients {
            guard,
            by_tls: PerTls::default(),
        }
    }

    pub(crate) fn guard(&self) -> &TargetGuard {
        &self.guard
    }

    /// The client for `tls` (whose fingerprint is `id`), built on first use.
    pub(crate) fn get(
        &self,
        id: &[u8; 32],
        tls: &TlsMaterial,
    ) -> Result<reqwest::Client, TlsMaterialError> {
        self.by_tls.get(id, || {
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls_config(tls)?)
                .redirect(reqwest::redirect::Policy::none())
                // A proxy would resolve the target itself, bypassing the guarded resolver.
                .no_proxy()
                .dns_resolver(GuardedResolver {
                    guard: self.guard.clone(),
                })
                .referer(false)
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| TlsMaterialError(format!("HTTP client: {e}")))
        })
    }
}
