//! HTTP clients for clients' APIs: one per TLS material (CA bundle, client certificate), each
//! resolving through the SSRF guard, following no redirects (a 3xx is an answer the mapping
//! did not expect, and a redirect could lead the credentials elsewhere).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::delivery::http::GuardedResolver;
use crate::endpoint::ApiTlsMaterial;
use crate::ssrf::TargetGuard;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients kept at once; beyond it the cache starts over (each holds idle connections).
const MAX_CLIENTS: usize = 1024;

/// TLS material that cannot be used; names what is wrong (never the key).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsMaterialError(pub String);

/// Builds the rustls configuration `tls` describes: its CA bundle instead of the web roots,
/// and its client certificate for mTLS.
pub fn tls_config(tls: &ApiTlsMaterial) -> Result<rustls::ClientConfig, TlsMaterialError> {
    let fail = |m: String| TlsMaterialError(m);
    let roots = crate::delivery::http::root_store(tls.ca_pem.as_deref()).map_err(fail)?;
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

/// Shared HTTP clients, one per TLS material.
pub(crate) struct Clients {
    guard: Arc<TargetGuard>,
    by_tls: Mutex<HashMap<[u8; 32], reqwest::Client>>,
}

impl Clients {
    pub(crate) fn new(guard: Arc<TargetGuard>) -> Self {
        Clients {
            guard,
            by_tls: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn guard(&self) -> &TargetGuard {
        &self.guard
    }

    /// The client for `tls` (whose fingerprint is `id`), built on first use.
    pub(crate) fn get(
        &self,
        id: &[u8; 32],
        tls: &ApiTlsMaterial,
    ) -> Result<reqwest::Client, TlsMaterialError> {
        let key = *id;
        let mut map = self.by_tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let client = reqwest::Client::builder()
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
            .map_err(|e| TlsMaterialError(format!("HTTP client: {e}")))?;
        if map.len() >= MAX_CLIENTS {
            map.clear();
        }
        map.insert(key, client.clone());
        Ok(client)
    }
}
