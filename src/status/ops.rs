//! Operational signals to the platform (`--ops-webhook-url`): a target's delivery turned
//! failing or delayed, recovered, was held by a 410 Gone or suspended. Each is POSTed as
//! JSON, signed the Standard Webhooks way when a secret is given, with a few retries. Sending
//! never holds up delivery or status writes: signals go through a bounded queue, and when it
//! is full (the platform is down for long) new ones are dropped and logged.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::routing::TargetKey;
use crate::status::Check;

/// Signals waiting to be sent at most.
const QUEUE: usize = 1000;
/// Attempts per signal, the first one included.
const ATTEMPTS: u32 = 5;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalType {
    /// `Delivering` turned False: attempts keep failing.
    DeliveryFailing,
    /// `Delivering` turned False: the oldest pending event has waited too long.
    DeliveryDelayed,
    /// `Delivering` turned True again.
    Recovered,
    /// The receiver answered 410 Gone: delivery holds until the spec changes.
    Gone,
    /// The resource was suspended (`spec.suspend`).
    Suspended,
    /// `spec.suspend` was lifted: delivery goes on with what queued meanwhile.
    Resumed,
}

impl SignalType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::DeliveryFailing => "target.delivery_failing",
            SignalType::DeliveryDelayed => "target.delivery_delayed",
            SignalType::Recovered => "target.recovered",
            SignalType::Gone => "target.gone",
            SignalType::Suspended => "target.suspended",
            SignalType::Resumed => "target.resumed",
        }
    }
}

#[derive(Serialize)]
struct Target {
    kind: &'static str,
    namespace: String,
    name: String,
}

#[derive(Serialize)]
struct Body {
    #[serde(rename = "type")]
    type_: &'static str,
    target: Target,
    reason: String,
    message: String,
    at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("reading the ops webhook secret file {path}: {source}")]
    Secret {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the ops webhook secret: {0}")]
    BadSecret(String),
    #[error("the ops webhook URL {0:?} is not an absolute http(s) URL")]
    BadUrl(String),
    #[error("the ops webhook client: {0}")]
    Client(String),
}

/// The platform's operational webhook.
pub struct OpsWebhook {
    queue: mpsc::Sender<Body>,
}

impl std::fmt::Debug for OpsWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpsWebhook")
    }
}

impl OpsWebhook {
    /// Starts the sender (inside a Tokio runtime). `secret_file` holds one or more `whsec_`
    /// secrets, each signing every request.
    pub fn start(url: &str, secret_file: Option<&Path>) -> Result<OpsWebhook, OpsError> {
        let parsed = url::Url::parse(url).map_err(|_| OpsError::BadUrl(url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(OpsError::BadUrl(url.to_owned()));
        }
        let keys = match secret_file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| OpsError::Secret {
                    path: p.display().to_string(),
                    source,
                })?;
                crate::controller::secrets::decode_whsec(text.trim())
                    .map_err(OpsError::BadSecret)?
            }
            None => Vec::new(),
        };
        let tls = crate::delivery::http::tls_config(&crate::endpoint::TlsMaterial::default())
            .map_err(|e| OpsError::Client(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(TIMEOUT)
            .user_agent(concat!("vehicle-connect/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OpsError::Client(e.to_string()))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_all(
            client,
            parsed,
            crate::delivery::signing::hmac_keys(&keys),
            rx,
        ));
        Ok(OpsWebhook { queue })
    }

    /// Queues a signal about `key`; never waits.
    pub fn signal(&self, type_: SignalType, key: &TargetKey, check: &Check) {
        let body = Body {
            type_: type_.as_str(),
            target: Target {
                kind: key.kind.as_str(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            },
            reason: check.reason.clone(),
            message: crate::status::redact(&check.message),
            at: Timestamp::now().to_string(),
        };
        if self.queue.try_send(body).is_err() {
            tracing::warn!(signal = type_.as_str(), namespace = %key.namespace, name = %key.name, "ops webhook queue full or stopped; signal dropped");
        }
    }
}

async fn send_all(
    client: reqwest::Client,
    url: url::Url,
    keys: Vec<ring::hmac::Key>,
    mut rx: mpsc::Receiver<Body>,
) {
    while let Some(body) = rx.recv().await {
        let Ok(bytes) = serde_json::to_vec(&body) else {
            continue;
        };
        let id = format!("ops_{:016x}", rand::random::<u64>());
        for attempt in 1..=ATTEMPTS {
            let ts = Timestamp::now().as_second();
            let mut req = client
                .post(url.clone())
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", ts.to_string());
            if !keys.is_empty() {
                req = req.header(
                    "webhook-signature",
                    crate::delivery::signing::sign_with(&keys, &id, ts, &bytes),
                );
            }
            let outcome = req.body(bytes.clone()).send().await;
            match outcome {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(
                        signal = body.type_,
                        status = r.status().as_u16(),
                        attempt,
                        "ops webhook refused the signal"
                    )
                }
                Err(e) => {
                    tracing::warn!(signal = body.type_, error = %e, attempt, "ops webhook not reached")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
        }
    }
}
