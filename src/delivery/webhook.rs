//! Webhook delivery: one signed HTTP POST per attempt, its classification, and the retry
//! schedule (backoff, when to give up).
//!
//! One [`WebhookSender`] (one connection-pooling HTTP/1.1 client) serves every target. The
//! SSRF guard runs at connect time through a custom DNS resolver, so a name that re-resolves
//! to a forbidden address after the reconciler checked it (DNS rebinding) is still refused;
//! IP literals, which bypass the resolver, are checked before each request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Response, StatusCode};

use super::retry::parse_retry_after;
use super::signing::sign;
use crate::routing::{WebhookAuth, WebhookTarget};
use crate::ssrf::{TargetError, TargetGuard};

/// How much of a response body is read; enough for an error message, bounded against a
/// receiver that streams forever.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// How much of that body goes into a failure message (status, Kubernetes Events).
const MAX_MESSAGE_BODY: usize = 300;
/// Idle keep-alive connections are closed after this; receivers often close at 60-120 s.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// Outcome of one delivery attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered 2xx.
    Delivered { status: u16, elapsed: Duration },
    /// Worth retrying later: timeouts, connection errors, 408, 429, 5xx.
    Retryable {
        /// Short CamelCase reason, e.g. `Timeout`, `ConnectionRefused`, `HttpStatus`.
        reason: String,
        message: String,
        status: Option<u16>,
        /// The receiver's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        elapsed: Duration,
    },
    /// Retrying cannot help: other 4xx, redirects, a refused target, a bad header.
    Permanent {
        reason: String,
        message: String,
        status: Option<u16>,
        elapsed: Duration,
    },
    /// HTTP 410: the receiver says the endpoint is gone; the caller suspends the subscription.
    Gone { elapsed: Duration },
}

impl AttemptResult {
    pub fn elapsed(&self) -> Duration {
        match self {
            AttemptResult::Delivered { elapsed, .. }
            | AttemptResult::Retryable { elapsed, .. }
            | AttemptResult::Permanent { elapsed, .. }
            | AttemptResult::Gone { elapsed } => *elapsed,
        }
    }

    /// The HTTP status the receiver answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AttemptResult::Delivered { status, .. } => Some(*status),
            AttemptResult::Retryable { status, .. } | AttemptResult::Permanent { status, .. } => {
                *status
            }
            AttemptResult::Gone { .. } => Some(410),
        }
    }

    /// CamelCase reason of a failure (`None` when delivered).
    pub fn reason(&self) -> Option<&str> {
        match self {
            AttemptResult::Delivered { .. } => None,
            AttemptResult::Retryable { reason, .. } | AttemptResult::Permanent { reason, .. } => {
                Some(reason)
            }
            AttemptResult::Gone { .. } => Some("Gone"),
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, AttemptResult::Delivered { .. })
    }
}

/// Why the sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("user agent {0:?} is not a valid header value")]
    InvalidUserAgent(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Sends webhook attempts. Cheap to share (`Arc`); one client, one connection pool.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    guard: Arc<TargetGuard>,
}

impl WebhookSender {
    pub fn new(guard: TargetGuard, user_agent: &str) -> Result<Self, SenderError> {
        let ua = HeaderValue::from_str(user_agent)
            .map_err(|_| SenderError::InvalidUserAgent(user_agent.to_string()))?;
        let guard = Arc::new(guard);

        let tls = super::http::tls_config()?;

        let client = reqwest::Client::builder()
            .user_agent(ua)
            .tls_backend_preconfigured(tls)
            // A redirect could lead anywhere, past the guard's view of the URL.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the target itself, bypassing the guarded resolver.
            .no_proxy()
            .dns_resolver(super::http::GuardedResolver {
                guard: guard.clone(),
            })
            .referer(false)
            .tcp_nodelay(true)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(SenderError::Client)?;
        Ok(WebhookSender { client, guard })
    }

    /// One attempt: POST `body` (the event JSON, bytes as given) to the target.
    pub async fn send(&self, target: &WebhookTarget, event_id: &str, body: &[u8]) -> AttemptResult {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + target.timeout;
        let request = match self.build(target, event_id, body) {
            Ok(r) => r,
            Err(fail) => return fail.permanent(start.elapsed()),
        };

        let response = match tokio::time::timeout_at(deadline, request.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return classify_error(e, start),
            Err(_) => {
                return AttemptResult::Retryable {
                    reason: "Timeout".into(),
                    message: format!("no response within {:?}", target.timeout),
                    status: None,
                    retry_after: None,
                    elapsed: start.elapsed(),
                };
            }
        };
        classify_response(response, deadline, start).await
    }

    fn build(
        &self,
        target: &WebhookTarget,
        event_id: &str,
        body: &[u8],
    ) -> Result<reqwest::RequestBuilder, Failure> {
        let url = &target.url;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::new(
                "InvalidUrl",
                format!("scheme {:?} is not http or https", url.scheme()),
            ));
        }
        // IP literals never reach the resolver, so the guard sees them here.
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            Some(url::Host::Domain(_)) => None,
            None => return Err(Failure::new("InvalidUrl", "the URL has no host")),
        };
        if let Some(ip) = literal {
            self.guard
                .check_ip(url.host_str().unwrap_or_default(), ip)
                .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        }

        let mut headers = HeaderMap::with_capacity(target.headers.len() + 4);
        for (name, value) in &target.headers {
            // The value may be a credential: name the header, never print the value.
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                Failure::new(
                    "InvalidHeader",
                    format!("{name:?} is not a valid header name"),
                )
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                Failure::new(
                    "InvalidHeader",
                    format!("the value of header {name} is not a valid header value"),
                )
            })?;
            headers.append(n, v);
        }
        // Set after the static headers so that those can never replace them.
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if !target.signing_keys.is_empty() {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let id = HeaderValue::from_str(event_id).map_err(|_| {
                Failure::new("InvalidEventId", "the event id is not a valid header value")
            })?;
            let sig = sign(&target.signing_keys, event_id, ts, body);
            let sig = HeaderValue::from_str(&sig)
                .map_err(|_| Failure::new("InvalidSignature", "signature is not ASCII"))?;
            headers.insert("webhook-id", id);
            headers.insert("webhook-timestamp", HeaderValue::from(ts));
            headers.insert("webhook-signature", sig);
        }

        let mut req = self
            .client
            .post(url.clone())
            .headers(headers)
            .body(body.to_vec());
        req = match &target.auth {
            WebhookAuth::None => req,
            WebhookAuth::Basic { username, password } => req.basic_auth(username, Some(password)),
            WebhookAuth::Bearer(token) => req.bearer_auth(token),
        };
        Ok(req)
    }
}

/// A failure found before anything was sent.
struct Failure {
    reason: &'static str,
    message: String,
}

impl Failure {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }

    fn permanent(self, elapsed: Duration) -> AttemptResult {
        AttemptResult::Permanent {
            reason: self.reason.into(),
            message: self.message,
            status: None,
            elapsed,
        }
    }
}

async fn classify_response(
    mut response: Response,
    deadline: tokio::time::Instant,
    start: Instant,
) -> AttemptResult {
    let status = response.status();
    let code = status.as_u16();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let location = response
        .headers()
        .get(header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());

    // Read (a bounded part of) the body: for the failure message, and so that a fully read
    // response hands its keep-alive connection back to the pool. The receiver has already
    // answered, so a slow or broken body changes nothing about the outcome.
    let mut body = Vec::new();
    let _ = tokio::time::timeout_at(deadline, read_capped(&mut response, &mut body)).await;
    drop(response);
    let elapsed = start.elapsed();

    if status.is_success() {
        return AttemptResult::Delivered {
            status: code,
            elapsed,
        };
    }
    if status == StatusCode::GONE {
        return AttemptResult::Gone { elapsed };
    }
    if status.is_redirection() {
        let to = location.map_or_else(
            || "without a Location".to_string(),
            |l| format!("to {}", snippet(l.as_bytes())),
        );
        return AttemptResult::Permanent {
            reason: "Redirect".into(),
            message: format!(
                "HTTP {} redirects {to}; redirects are not followed",
                status_text(status)
            ),
            status: Some(code),
            elapsed,
        };
    }
    let mut message = format!("HTTP {}", status_text(status));
    let text = snippet(&body);
    if !text.is_empty() {
        message.push_str(": ");
        message.push_str(&text);
    }
    let retryable = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if retryable {
        AttemptResult::Retryable {
            reason: "HttpStatus".into(),
            message,
            status: Some(code),
            retry_after,
            elapsed,
        }
    } else {
        AttemptResult::Permanent {
            reason: "HttpStatus".into(),
            message,
            status: Some(code),
            elapsed,
        }
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of the body into `buf`, which keeps what
/// arrived when the read fails or is cancelled by the deadline.
async fn read_capped(response: &mut Response, buf: &mut Vec<u8>) {
    while buf.len() < MAX_RESPONSE_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BODY - buf.len();
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// A short single-line excerpt of a response body for messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        let sep = if chars > 0 { Some(' ') } else { None };
        for c in sep
            .into_iter()
            .chain(word.chars().filter(|c| !c.is_control()))
        {
            if chars == MAX_MESSAGE_BODY {
                out.push('…');
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

/// Classifies an error before a response arrived (connect, TLS, write, read of headers).
fn classify_error(err: reqwest::Error, start: Instant) -> AttemptResult {
    // The URL may carry a token in its query: keep it out of messages.
    let err = err.without_url();
    let elapsed = start.elapsed();
    let mut message = err.to_string();
    let mut target_error = None;
    let mut io_kind = None;
    let mut tls = false;
    let mut source = std::error::Error::source(&err);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        if let Some(t) = e.downcast_ref::<TargetError>() {
            target_error = Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        source = e.source();
    }

    if let Some(t) = target_error {
        let message = t.to_string();
        return match t {
            TargetError::Unresolvable { .. } => AttemptResult::Retryable {
                reason: t.reason().into(),
                message,
                status: None,
                retry_after: None,
                elapsed,
            },
            TargetError::NotAllowed { .. } | TargetError::InternalName { .. } => {
                AttemptResult::Permanent {
                    reason: t.reason().into(),
                    message,
                    status: None,
                    elapsed,
                }
            }
        };
    }

    // An auth value that is no valid header: retrying the same request cannot help.
    if err.is_builder() {
        return AttemptResult::Permanent {
            reason: "InvalidRequest".into(),
            message,
            status: None,
            elapsed,
        };
    }

    use std::io::ErrorKind as K;
    let reason = if err.is_timeout() || matches!(io_kind, Some(K::TimedOut)) {
        "Timeout"
    } else if tls {
        "TlsError"
    } else {
        match io_kind {
            Some(K::ConnectionRefused) => "ConnectionRefused",
            Some(K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe) => "ConnectionReset",
            Some(K::UnexpectedEof) => "ConnectionClosed",
            _ if err.is_connect() => "ConnectionFailed",
            _ => "RequestFailed",
        }
    };
    AttemptResult::Retryable {
        reason: reason.into(),
        message,
        status: None,
        retry_after: None,
        elapsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_short_single_lines() {
        assert_eq!(snippet(b"  bad\r\n request \t"), "bad request");
        let long = "x".repeat(10_000);
        let s = snippet(long.as_bytes());
        assert!(s.chars().count() <= MAX_MESSAGE_BODY + 1);
        assert!(s.ends_with('…'));
        assert_eq!(
            snippet("é".repeat(400).as_bytes()).chars().count(),
            MAX_MESSAGE_BODY + 1
        );
    }
}
