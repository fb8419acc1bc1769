//! Webhook delivery: one signed HTTP POST per attempt, its classification, and the retry
//! schedule (backoff, when to give up).
//!
//! One [`WebhookSender`] serves every target: one connection-pooling HTTP/1.1 client
//! (hyper's) for those that trust the system roots, one per CA bundle for those with a
//! private CA (`spec.tls`). What does not change between a target's requests (URI, static
//! headers, auth, client) is built on its first attempt and reused. The SSRF guard runs at connect time through a
//! custom DNS resolver, so a name that re-resolves to a forbidden address after the
//! reconciler checked it (DNS rebinding) is still refused; IP literals, which bypass the
//! resolver, are checked before each request.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::http::{GuardedResolver, PerTls, TlsMaterialError, tls_config};
use super::retry::parse_retry_after;
use super::signing::{hmac_keys, sign_with};
use crate::endpoint::TlsMaterial;
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
    Tls(#[from] TlsMaterialError),
}

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;
type HttpClient = Client<Connector, Full<Bytes>>;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Sends webhook attempts. Cheap to clone; clones share the clients and their connection
/// pools.
#[derive(Clone)]
pub struct WebhookSender {
    clients: Arc<Clients>,
    guard: Arc<TargetGuard>,
    user_agent: HeaderValue,
    prepared: Arc<PreparedCache>,
}

/// One client for every target that trusts the system roots, and one per CA bundle of the
/// targets that bring their own.
struct Clients {
    system: HttpClient,
    private: PerTls<HttpClient>,
    guard: Arc<TargetGuard>,
}

impl Clients {
    /// The client of a target with TLS material `tls` (fingerprint `id`): `None` for the
    /// shared one.
    fn get(&self, id: &[u8; 32], tls: &TlsMaterial) -> Result<Option<HttpClient>, Failure> {
        if tls.ca_pem.is_none() && tls.client_cert.is_none() {
            return Ok(None);
        }
        self.private
            .get(id, || Ok(client(&self.guard, tls_config(tls)?)))
            .map(Some)
            .map_err(|e: TlsMaterialError| Failure::new("TlsConfigInvalid", e.0))
    }
}

/// A pooling HTTP/1.1 client that resolves through the guard and speaks TLS with `tls`.
fn client(guard: &Arc<TargetGuard>, tls: rustls::ClientConfig) -> HttpClient {
    // No proxy: one would resolve the target itself, bypassing the guarded resolver.
    let mut http = HttpConnector::new_with_resolver(GuardedResolver {
        guard: guard.clone(),
    });
    // https URLs are passed on to the TLS layer.
    http.enforce_http(false);
    http.set_nodelay(true);
    // The TCP keepalive and user timeout reqwest set, which notice a dead peer on a
    // pooled connection.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    // Not hyper-rustls's builder: it requires an empty ALPN list, and ours offers
    // `http/1.1` (as the reqwest client did).
    let https = HttpsConnector::from((http, Arc::new(tls)));
    // Redirects are never followed (a redirect could lead anywhere, past the guard's
    // view of the URL): hyper's client does not follow them.
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // A receiver's answer is a status line and a few headers: reading it 2 KiB at a
        // time, not into hyper's adaptive 8 KiB-and-up buffer, keeps each of up to 1,024
        // pooled connections small (longer answers are read in more steps).
        .http1_read_buf_exact_size(2048)
        .build(https)
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    pub fn new(guard: TargetGuard, user_agent: &str) -> Result<Self, SenderError> {
        let user_agent = HeaderValue::from_str(user_agent)
            .map_err(|_| SenderError::InvalidUserAgent(user_agent.to_string()))?;
        let guard = Arc::new(guard);
        let system = client(&guard, tls_config(&TlsMaterial::default())?);
        Ok(WebhookSender {
            clients: Arc::new(Clients {
                system,
                private: PerTls::default(),
                guard: guard.clone(),
            }),
            guard,
            user_agent,
            prepared: Arc::default(),
        })
    }

    /// One attempt: POST `body` (the event JSON, bytes as given) to the target.
    pub async fn send(&self, target: &WebhookTarget, event_id: &str, body: &[u8]) -> AttemptResult {
        self.send_answered(target, event_id, body).await.0
    }

    /// [`Self::send`], with the start of the receiver's answer (at most
    /// [`crate::store::MAX_RESPONSE_SNIPPET`] bytes, credentials masked) for the delivery log.
    pub async fn send_answered(
        &self,
        target: &WebhookTarget,
        event_id: &str,
        body: &[u8],
    ) -> (AttemptResult, Option<String>) {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + target.timeout;
        let (request, private) = match self.build(target, event_id, body) {
            Ok(r) => r,
            Err(fail) => return (fail.permanent(start.elapsed()), None),
        };
        let client = private.as_ref().unwrap_or(&self.clients.system);

        let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return (classify_error(&e, start), None),
            Err(_) => {
                let result = AttemptResult::Retryable {
                    reason: "Timeout".into(),
                    message: format!("no response within {:?}", target.timeout),
                    status: None,
                    retry_after: None,
                    elapsed: start.elapsed(),
                };
                return (result, None);
            }
        };
        let (result, answered) = classify_response(response, deadline, start).await;
        // Only worked out when there is something to mask (it allocates).
        let secrets = if answered.is_empty() && result.is_delivered() {
            Vec::new()
        } else {
            secrets(&target.auth)
        };
        let response = (!answered.is_empty()).then(|| {
            let text = String::from_utf8_lossy(&answered);
            let text = crate::delivery::http::mask(&text, &secrets);
            crate::store::truncate(&text, crate::store::MAX_RESPONSE_SNIPPET).to_owned()
        });
        if result.is_delivered() {
            return (result, response);
        }
        (mask_credentials(result, &secrets), response)
    }

    /// The request and the client of its target (`None`: the shared one), or why it cannot
    /// be sent; failures are checked in a fixed order, so that a target with several
    /// problems always reports the same one.
    fn build(
        &self,
        target: &WebhookTarget,
        event_id: &str,
        body: &[u8],
    ) -> Result<(Request<Full<Bytes>>, Option<HttpClient>), Failure> {
        let prepared = self.prepared.get(target, &self.user_agent, &self.clients);
        // IP literals never reach the resolver, so the guard sees them here.
        if let Some(ip) = prepared.literal.clone()? {
            self.guard
                .check_ip(target.url.host_str().unwrap_or_default(), ip)
                .map_err(|e| Failure::new(e.reason(), e.to_string()))?;
        }
        let client = prepared.client.clone()?;
        let parts = prepared.parts.as_ref().map_err(Failure::clone)?;

        // Sized once: growing a clone of the static headers was a rehash per request.
        let tail = parts.fixed.as_ref().map_or(0, |f| f.tail.len());
        let mut headers = HeaderMap::with_capacity(parts.headers.len() + 3 + tail);
        for (name, value) in &parts.headers {
            headers.append(name.clone(), value.clone());
        }
        if !target.signing_keys.is_empty() {
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let id = HeaderValue::from_str(event_id).map_err(|_| {
                Failure::new("InvalidEventId", "the event id is not a valid header value")
            })?;
            let sig = sign_with(&prepared.hmac_keys, event_id, ts, body);
            let sig = HeaderValue::try_from(sig)
                .map_err(|_| Failure::new("InvalidSignature", "signature is not ASCII"))?;
            // Inserted after the static headers so that those can never replace them.
            headers.insert(WEBHOOK_ID, id);
            headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
            headers.insert(WEBHOOK_SIGNATURE, sig);
        }
        let fixed = parts.fixed.as_ref().map_err(Failure::clone)?;
        for (name, value) in &fixed.tail {
            headers.append(name.clone(), value.clone());
        }

        let mut request = Request::new(Full::new(Bytes::copy_from_slice(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = fixed.uri.clone();
        *request.headers_mut() = headers;
        Ok((request, client))
    }
}

/// What does not change between the attempts of one target, built on its first attempt:
/// parsing the URL and validating header names and values on every request was a large
/// share of delivery's CPU.
#[derive(Default)]
struct PreparedCache {
    /// Keyed by the target's address: a target is immutable in the registry (a change is
    /// a new object). [`Prepared::describes`] covers an address reused by another target.
    map: RwLock<HashMap<usize, Arc<Prepared>>>,
    /// Size at which entries unused since the last sweep (targets replaced or removed) are
    /// dropped; grows with the number of targets in use.
    sweep_at: AtomicUsize,
}

/// Entries kept before the first sweep.
const PREPARED_SWEEP_MIN: usize = 1024;

impl PreparedCache {
    fn get(
        &self,
        target: &WebhookTarget,
        user_agent: &HeaderValue,
        clients: &Clients,
    ) -> Arc<Prepared> {
        let key = std::ptr::from_ref(target) as usize;
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = map.get(&key)
                && p.describes(target)
            {
                // Checked first: a store to a shared flag on every request would bounce
                // its cache line between the workers.
                if !p.used.load(Ordering::Relaxed) {
                    p.used.store(true, Ordering::Relaxed);
                }
                return p.clone();
            }
        }
        let prepared = Arc::new(Prepared::new(target, user_agent, clients));
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let sweep_at = self
            .sweep_at
            .load(Ordering::Relaxed)
            .max(PREPARED_SWEEP_MIN);
        if map.len() >= sweep_at {
            map.retain(|_, p| p.used.swap(false, Ordering::Relaxed));
            self.sweep_at.store(2 * map.len(), Ordering::Relaxed);
        }
        map.insert(key, prepared.clone());
        prepared
    }
}

struct Prepared {
    // What it was built from, to tell whether it describes a target.
    url: url::Url,
    auth: WebhookAuth,
    static_headers: Vec<(String, String)>,
    signing_keys: Vec<Vec<u8>>,
    tls_id: [u8; 32],
    hmac_keys: Vec<ring::hmac::Key>,
    /// The target's own client (`None`: the shared one), or why its TLS material is unusable.
    client: Result<Option<HttpClient>, Failure>,
    /// Used since the last sweep.
    used: AtomicBool,
    /// The host as an IP literal, to check before each request; or why the URL is unusable.
    literal: Result<Option<IpAddr>, Failure>,
    parts: Result<Parts, Failure>,
}

/// The request without its per-attempt headers.
struct Parts {
    /// The static headers and `content-type` (and the URL's credentials).
    headers: HeaderMap,
    /// What follows the signature headers; or why the request cannot be built (a failure
    /// reported after an invalid event id).
    fixed: Result<Fixed, Failure>,
}

struct Fixed {
    uri: Uri,
    /// Appended after the signature headers: authorization, then accept and user-agent
    /// unless a static header set them.
    tail: Vec<(HeaderName, HeaderValue)>,
}

impl Prepared {
    fn new(target: &WebhookTarget, user_agent: &HeaderValue, clients: &Clients) -> Self {
        let url = &target.url;
        let (url_auth, bare_url) = split_credentials(url);
        let parts = base_headers(&target.headers, url_auth).map(|headers| {
            let fixed = fixed_parts(&target.auth, &headers, &bare_url, user_agent);
            Parts { headers, fixed }
        });
        Prepared {
            url: url.clone(),
            auth: target.auth.clone(),
            static_headers: target.headers.clone(),
            signing_keys: target.signing_keys.clone(),
            tls_id: target.tls_id,
            hmac_keys: hmac_keys(&target.signing_keys),
            client: clients.get(&target.tls_id, &target.tls),
            used: AtomicBool::new(true),
            literal: literal_host(url),
            parts,
        }
    }

    fn describes(&self, target: &WebhookTarget) -> bool {
        self.url == target.url
            && self.auth == target.auth
            && self.static_headers == target.headers
            && self.signing_keys == target.signing_keys
            && self.tls_id == target.tls_id
    }
}

fn literal_host(url: &url::Url) -> Result<Option<IpAddr>, Failure> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Failure::new(
            "InvalidUrl",
            format!("scheme {:?} is not http or https", url.scheme()),
        ));
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => Ok(Some(ip.into())),
        Some(url::Host::Ipv6(ip)) => Ok(Some(ip.into())),
        Some(url::Host::Domain(_)) => Ok(None),
        None => Err(Failure::new("InvalidUrl", "the URL has no host")),
    }
}

/// Credentials in the URL become Basic auth, and the URL is sent without them (what
/// reqwest did, kept).
fn split_credentials(url: &url::Url) -> (Option<HeaderValue>, Cow<'_, url::Url>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode(s.as_bytes())
            .decode_utf8()
            .map(Cow::into_owned)
    };
    if !url.has_authority() {
        return (None, Cow::Borrowed(url));
    }
    let Ok(username) = decode(url.username()) else {
        return (None, Cow::Borrowed(url));
    };
    let password = url.password().and_then(|p| decode(p).ok());
    if username.is_empty() && password.is_none() {
        return (None, Cow::Borrowed(url));
    }
    let mut bare = url.clone();
    // Cannot fail: the URL has an authority.
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    (basic_auth(&username, password.as_deref()), Cow::Owned(bare))
}

fn basic_auth(username: &str, password: Option<&str>) -> Option<HeaderValue> {
    let mut value = String::from("Basic ");
    base64::engine::general_purpose::STANDARD.encode_string(
        format!("{username}:{}", password.unwrap_or_default()),
        &mut value,
    );
    sensitive(HeaderValue::try_from(value).ok()?)
}

fn sensitive(mut value: HeaderValue) -> Option<HeaderValue> {
    value.set_sensitive(true);
    Some(value)
}

/// The static headers, then `content-type`; after the URL's credentials, which a static
/// `Authorization` header replaces.
fn base_headers(
    headers: &[(String, String)],
    url_auth: Option<HeaderValue>,
) -> Result<HeaderMap, Failure> {
    let mut ours = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
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
        ours.append(n, v);
    }
    // Set after the static headers so that those can never replace it.
    ours.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let Some(url_auth) = url_auth else {
        return Ok(ours);
    };
    let mut all = HeaderMap::with_capacity(ours.len() + 1);
    all.insert(header::AUTHORIZATION, url_auth);
    for name in ours.keys() {
        let mut values = ours.get_all(name).iter();
        if let Some(first) = values.next() {
            all.insert(name.clone(), first.clone());
        }
        for v in values {
            all.append(name.clone(), v.clone());
        }
    }
    Ok(all)
}

/// The parts after the signature headers. Failures keep reqwest's messages, which the
/// statuses and Events of existing subscriptions carry.
fn fixed_parts(
    auth: &WebhookAuth,
    headers: &HeaderMap,
    url: &url::Url,
    user_agent: &HeaderValue,
) -> Result<Fixed, Failure> {
    let invalid = |what: &str| Failure::new("InvalidRequest", format!("builder error: {what}"));
    let mut tail = Vec::with_capacity(3);
    let auth = match auth {
        WebhookAuth::None => None,
        WebhookAuth::Basic { username, password } => Some(
            basic_auth(username, Some(password))
                .ok_or_else(|| invalid("failed to parse header value"))?,
        ),
        // Never printed: a token that is no header value is only reported as such.
        WebhookAuth::Bearer(token) => Some(
            HeaderValue::try_from(format!("Bearer {token}"))
                .ok()
                .and_then(sensitive)
                .ok_or_else(|| invalid("failed to parse header value"))?,
        ),
    };
    if let Some(value) = auth {
        tail.push((header::AUTHORIZATION, value));
    }
    if !headers.contains_key(header::ACCEPT) {
        tail.push((header::ACCEPT, HeaderValue::from_static("*/*")));
    }
    if !headers.contains_key(header::USER_AGENT) {
        tail.push((header::USER_AGENT, user_agent.clone()));
    }
    let uri = url
        .as_str()
        .parse::<Uri>()
        .map_err(|_| invalid("Parsed Url is not a valid Uri"))?;
    Ok(Fixed { uri, tail })
}

/// A failure found before anything was sent.
#[derive(Clone, Debug)]
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

/// The verdict on a response, and the first [`crate::store::MAX_RESPONSE_SNIPPET`] bytes of
/// its body.
async fn classify_response(
    response: Response<Incoming>,
    deadline: tokio::time::Instant,
    start: Instant,
) -> (AttemptResult, Vec<u8>) {
    let status = response.status();
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
    // What is kept is bounded: a failure's message needs a little more than the log.
    let mut incoming = response.into_body();
    let mut body = Vec::new();
    let keep = if status.is_success() {
        crate::store::MAX_RESPONSE_SNIPPET
    } else {
        MAX_RESPONSE_BODY
    };
    let _ = tokio::time::timeout_at(deadline, read_capped(&mut incoming, &mut body, keep)).await;
    drop(incoming);
    let elapsed = start.elapsed();
    let (result, mut body) = verdict(status, retry_after, location, body, elapsed);
    body.truncate(crate::store::MAX_RESPONSE_SNIPPET);
    (result, body)
}

fn verdict(
    status: StatusCode,
    retry_after: Option<Duration>,
    location: Option<String>,
    body: Vec<u8>,
    elapsed: Duration,
) -> (AttemptResult, Vec<u8>) {
    let code = status.as_u16();
    if status.is_success() {
        let result = AttemptResult::Delivered {
            status: code,
            elapsed,
        };
        return (result, body);
    }
    if status == StatusCode::GONE {
        return (AttemptResult::Gone { elapsed }, body);
    }
    if status.is_redirection() {
        let to = location.map_or_else(
            || "without a Location".to_string(),
            |l| format!("to {}", snippet(l.as_bytes())),
        );
        let result = AttemptResult::Permanent {
            reason: "Redirect".into(),
            message: format!(
                "HTTP {} redirects {to}; redirects are not followed",
                status_text(status)
            ),
            status: Some(code),
            elapsed,
        };
        return (result, body);
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
    let result = if retryable {
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
    };
    (result, body)
}

/// What a receiver's answer must never show: the target's credentials, in every form sent.
fn secrets(auth: &WebhookAuth) -> Vec<String> {
    use base64::Engine as _;
    match auth {
        WebhookAuth::None => Vec::new(),
        WebhookAuth::Basic { username, password } => {
            let pair = format!("{username}:{password}");
            vec![
                base64::engine::general_purpose::STANDARD.encode(&pair),
                pair,
                password.clone(),
            ]
        }
        WebhookAuth::Bearer(token) => vec![token.clone()],
    }
}

/// A receiver that repeats what it refused (a 401 echoing the Authorization header) must not
/// put the credentials into status and Events.
fn mask_credentials(mut r: AttemptResult, secrets: &[String]) -> AttemptResult {
    if secrets.is_empty() {
        return r;
    }
    if let AttemptResult::Retryable { message, .. } | AttemptResult::Permanent { message, .. } =
        &mut r
    {
        *message = crate::delivery::http::mask(message, secrets);
    }
    r
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("{} {r}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// Reads at most [`MAX_RESPONSE_BODY`] bytes of the body, the first `keep` of them into `buf`
/// (the rest are discarded); `buf` keeps what arrived when the read fails or is cancelled by
/// the deadline.
async fn read_capped(body: &mut Incoming, buf: &mut Vec<u8>, keep: usize) {
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Some(chunk) = frame.data_ref() else {
                    continue;
                };
                let take = chunk.len().min(MAX_RESPONSE_BODY - read);
                let room = keep.saturating_sub(buf.len()).min(take);
                buf.extend_from_slice(&chunk[..room]);
                read += take;
            }
            Some(Err(_)) | None => break,
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
fn classify_error(err: &hyper_util::client::legacy::Error, start: Instant) -> AttemptResult {
    let elapsed = start.elapsed();
    // reqwest's opening words, which messages in statuses and Events began with: kept.
    // hyper's errors never carry the URL (whose query may hold a token).
    let mut message = String::from("error sending request");
    let mut target_error = None;
    let mut io_kind = None;
    let mut timeout = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string());
        if let Some(t) = e.downcast_ref::<TargetError>() {
            target_error = Some(t);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            timeout = true;
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

    use std::io::ErrorKind as K;
    let tls = super::http::tls_error(err);
    if let Some(t) = tls {
        message.push_str(super::http::tls_hint(t));
    }
    let reason = if timeout || matches!(io_kind, Some(K::TimedOut)) {
        "Timeout"
    } else if tls.is_some() {
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
    fn a_receiver_echoing_the_credentials_does_not_put_them_into_the_failure() {
        use base64::Engine as _;
        let basic = WebhookAuth::Basic {
            username: "dms".into(),
            password: "s3cr:et".into(),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode("dms:s3cr:et");
        let echoed = AttemptResult::Permanent {
            reason: "HttpStatus".into(),
            message: format!("HTTP 401: bad Authorization: Basic {b64} (dms:s3cr:et)"),
            status: Some(401),
            elapsed: Duration::ZERO,
        };
        let masked = mask_credentials(echoed, &secrets(&basic));
        let AttemptResult::Permanent { message, .. } = &masked else {
            panic!("{masked:?}");
        };
        assert!(
            !message.contains("s3cr") && !message.contains(&b64),
            "{message}"
        );
        assert!(
            message.starts_with("HTTP 401: bad Authorization: Basic ***"),
            "{message}"
        );

        let bearer = WebhookAuth::Bearer("tok-123".into());
        let echoed = AttemptResult::Retryable {
            reason: "HttpStatus".into(),
            message: "HTTP 503: token tok-123 rejected".into(),
            status: Some(503),
            retry_after: None,
            elapsed: Duration::ZERO,
        };
        let AttemptResult::Retryable { message, .. } = mask_credentials(echoed, &secrets(&bearer))
        else {
            panic!("kind changed");
        };
        assert_eq!(message, "HTTP 503: token *** rejected");
    }

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

    fn sender(allow: &str) -> WebhookSender {
        let allow = crate::ssrf::parse_allow_list(allow).unwrap();
        WebhookSender::new(TargetGuard::new(allow), "vc-test/1").unwrap()
    }

    fn target(url: &str) -> WebhookTarget {
        WebhookTarget {
            url: url.parse().unwrap(),
            auth: WebhookAuth::None,
            signing_keys: vec![b"0123456789abcdef".to_vec()],
            headers: vec![],
            timeout: Duration::from_secs(5),
            retry: crate::api::RetryPolicy::default(),
            max_concurrency: 1,
            tls: TlsMaterial::default(),
            tls_id: TlsMaterial::default().fingerprint(),
        }
    }

    /// The request's headers as sent, in order, with the per-attempt values masked.
    fn header_lines(r: &Request<Full<Bytes>>) -> Vec<String> {
        r.headers()
            .iter()
            .map(|(n, v)| match n.as_str() {
                "webhook-timestamp" | "webhook-signature" => format!("{n}: *"),
                _ => format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())),
            })
            .collect()
    }

    fn failure(
        r: Result<(Request<Full<Bytes>>, Option<HttpClient>), Failure>,
    ) -> (&'static str, String) {
        match r {
            Ok(_) => panic!("built"),
            Err(f) => (f.reason, f.message),
        }
    }

    #[test]
    fn requests_carry_the_headers_in_reqwests_order() {
        let s = sender("127.0.0.0/8");
        let mut t = target("http://127.0.0.1:9/hook?x=1#frag");
        t.headers = vec![
            ("X-A".into(), "1".into()),
            ("x-a".into(), "2".into()),
            ("Content-Type".into(), "text/plain".into()),
            ("Accept".into(), "text/plain".into()),
        ];
        t.auth = WebhookAuth::Bearer("tok".into());
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "http://127.0.0.1:9/hook?x=1");
        assert_eq!(
            header_lines(&r),
            [
                "x-a: 1",
                "x-a: 2",
                "content-type: application/json",
                "accept: text/plain",
                "webhook-id: evt_1",
                "webhook-timestamp: *",
                "webhook-signature: *",
                "authorization: Bearer tok",
                "user-agent: vc-test/1",
            ]
        );
        assert!(r.headers()[header::AUTHORIZATION].is_sensitive());

        // Unsigned: a static webhook-id stays.
        t.signing_keys.clear();
        t.headers = vec![("webhook-id".into(), "static".into())];
        t.auth = WebhookAuth::None;
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        assert_eq!(
            header_lines(&r),
            [
                "webhook-id: static",
                "content-type: application/json",
                "accept: */*",
                "user-agent: vc-test/1",
            ]
        );
    }

    #[test]
    fn url_credentials_become_basic_auth_and_leave_the_url() {
        let s = sender("127.0.0.0/8");
        let mut t = target("http://us%20er:p%40ss@127.0.0.1:9/h");
        t.signing_keys.clear();
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        assert_eq!(r.uri(), "http://127.0.0.1:9/h");
        // base64("us er:p@ss")
        assert_eq!(r.headers()[header::AUTHORIZATION], "Basic dXMgZXI6cEBzcw==");
        assert!(r.headers()[header::AUTHORIZATION].is_sensitive());

        // The configured auth comes on top; a static Authorization header replaces the URL's.
        t.auth = WebhookAuth::Basic {
            username: "u".into(),
            password: "".into(),
        };
        t.headers = vec![("Authorization".into(), "Static x".into())];
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        let auth: Vec<_> = r.headers().get_all(header::AUTHORIZATION).iter().collect();
        assert_eq!(auth, ["Static x", "Basic dTo="]);
    }

    #[test]
    fn failures_before_sending_are_reported_in_a_fixed_order() {
        let strict = sender("");
        let open = sender("127.0.0.0/8");
        let mut t = target("ftp://127.0.0.1/h");
        t.headers = vec![("bad name".into(), "v".into())];
        t.auth = WebhookAuth::Bearer("secret\npart".into());
        assert_eq!(failure(strict.build(&t, "evt\n1", b"{}")).0, "InvalidUrl");

        t.url = "http://127.0.0.1:9/h".parse().unwrap();
        assert_eq!(
            failure(strict.build(&t, "evt\n1", b"{}")).0,
            "TargetNotAllowed"
        );
        assert_eq!(
            failure(open.build(&t, "evt\n1", b"{}")),
            (
                "InvalidHeader",
                "\"bad name\" is not a valid header name".into()
            )
        );

        t.headers = vec![("x-secret".into(), "sec\nret".into())];
        assert_eq!(
            failure(open.build(&t, "evt\n1", b"{}")),
            (
                "InvalidHeader",
                "the value of header x-secret is not a valid header value".into()
            )
        );

        t.headers.clear();
        assert_eq!(failure(open.build(&t, "evt\n1", b"{}")).0, "InvalidEventId");
        // The token is never printed.
        assert_eq!(
            failure(open.build(&t, "evt_1", b"{}")),
            (
                "InvalidRequest",
                "builder error: failed to parse header value".into()
            )
        );
        // Unsigned, the event id is no header.
        t.signing_keys.clear();
        t.auth = WebhookAuth::None;
        assert!(open.build(&t, "evt\n1", b"{}").is_ok());
    }

    #[test]
    fn prepared_parts_follow_the_target() {
        let s = sender("127.0.0.0/8");
        let ua = s.user_agent.clone();
        let mut t = target("http://127.0.0.1:9/h");
        let first = s.prepared.get(&t, &ua, &s.clients);
        assert!(Arc::ptr_eq(&first, &s.prepared.get(&t, &ua, &s.clients)));
        // The same address with other contents (a target dropped, another allocated there).
        t.headers = vec![("x-new".into(), "1".into())];
        let second = s.prepared.get(&t, &ua, &s.clients);
        assert!(!Arc::ptr_eq(&first, &second));
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        assert_eq!(r.headers()["x-new"], "1");
        // Rotated signing keys at the same address: signed with the new key, never the cached one.
        t.signing_keys = vec![b"fedcba9876543210".to_vec()];
        assert!(!Arc::ptr_eq(&second, &s.prepared.get(&t, &ua, &s.clients)));
        let r = s.build(&t, "evt_1", b"{}").unwrap().0;
        let ts: i64 = r.headers()["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let want = crate::delivery::signing::sign(&t.signing_keys, "evt_1", ts, b"{}");
        assert_eq!(r.headers()["webhook-signature"], want.as_str());
    }

    #[test]
    fn prepared_parts_of_targets_no_longer_used_are_dropped() {
        let cache = PreparedCache::default();
        let s = sender("");
        let ua = HeaderValue::from_static("ua");
        let make = |set: &str| -> Vec<WebhookTarget> {
            (0..PREPARED_SWEEP_MIN)
                .map(|i| target(&format!("http://{set}.example/{i}")))
                .collect()
        };
        let (old, new) = (make("old"), make("new"));
        for t in old.iter().chain(&new) {
            cache.get(t, &ua, &s.clients);
        }
        // The first sweep (at the old ones' count) kept them all: they had just been added.
        assert_eq!(cache.map.read().unwrap().len(), 2 * PREPARED_SWEEP_MIN);
        for t in &new {
            cache.get(t, &ua, &s.clients);
        }
        cache.get(&target("http://another.example/"), &ua, &s.clients);
        assert_eq!(cache.map.read().unwrap().len(), PREPARED_SWEEP_MIN + 1);
        assert!(new.iter().all(|t| {
            let key = std::ptr::from_ref(t) as usize;
            cache.map.read().unwrap().contains_key(&key)
        }));
    }

    /// A server on 127.0.0.1 that reads one request (or a first packet) and then does `then`.
    async fn server<F, Fut>(then: F) -> std::net::SocketAddr
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        use tokio::io::AsyncReadExt as _;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                then(s).await;
            }
        });
        addr
    }

    fn retryable(r: AttemptResult) -> (String, String) {
        match r {
            AttemptResult::Retryable {
                reason, message, ..
            } => (reason, message),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn errors_keep_their_reasons_and_messages() {
        use tokio::io::AsyncWriteExt as _;
        let s = sender("127.0.0.0/8");
        let send = |url: String| {
            let s = s.clone();
            async move { retryable(s.send(&target(&url), "evt_1", b"{}").await) }
        };

        let closes = server(|s| async move { drop(s) }).await;
        assert_eq!(
            send(format!("http://{closes}/")).await,
            (
                "RequestFailed".into(),
                "error sending request: client error (SendRequest): connection closed before message completed".into()
            )
        );
        let resets = server(|s| async move {
            let _ = s.set_zero_linger();
        })
        .await;
        let (reason, message) = send(format!("http://{resets}/")).await;
        assert_eq!(reason, "ConnectionReset", "{message}");
        assert!(
            message.starts_with(
                "error sending request: client error (SendRequest): connection error: "
            ),
            "{message}"
        );
        // TLS to a plain HTTP server, which answers the handshake with an HTTP error.
        let plain = server(|mut s| async move {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        })
        .await;
        assert_eq!(
            send(format!("https://{plain}/")).await,
            (
                "TlsError".into(),
                "error sending request: client error (Connect): received corrupt message of type InvalidContentType".into()
            )
        );
        let (reason, message) = send("http://no-such-host.invalid/".into()).await;
        assert_eq!(reason, "TargetUnresolvable", "{message}");
        assert!(
            message.starts_with("cannot resolve no-such-host.invalid: "),
            "{message}"
        );
    }

    /// An HTTPS server on 127.0.0.1 answering 200 to every request, with a self-signed
    /// certificate (its own CA, in PEM).
    async fn tls_server() -> (std::net::SocketAddr, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, cert.cert.pem())
    }

    fn with_ca(mut t: WebhookTarget, ca_pem: &str) -> WebhookTarget {
        t.tls = TlsMaterial {
            ca_pem: Some(ca_pem.as_bytes().to_vec()),
            client_cert: None,
        };
        t.tls_id = t.tls.fingerprint();
        t
    }

    #[tokio::test]
    async fn a_private_ca_is_trusted_only_by_the_targets_that_name_it() {
        let s = sender("127.0.0.0/8");
        let (addr, ca) = tls_server().await;
        let url = format!("https://{addr}/hook");

        let (reason, message) = retryable(s.send(&target(&url), "evt_1", b"{}").await);
        assert_eq!(reason, "TlsError", "{message}");
        assert!(message.contains("UnknownIssuer"), "{message}");
        assert!(
            message.ends_with("put its CA in spec.tls.caSecretRef)"),
            "{message}"
        );

        let own = with_ca(target(&url), &ca);
        let r = s.send(&own, "evt_1", b"{}").await;
        assert!(r.is_delivered(), "{r:?}");
        // The shared client did not learn the CA.
        let r = s.send(&target(&url), "evt_2", b"{}").await;
        assert_eq!(r.reason(), Some("TlsError"), "{r:?}");

        // A bundle that is not PEM fails before anything is sent, naming the problem.
        let r = s
            .send(&with_ca(target(&url), "not a certificate"), "evt_1", b"{}")
            .await;
        let AttemptResult::Permanent {
            reason, message, ..
        } = r
        else {
            panic!("{r:?}");
        };
        assert_eq!(reason, "TlsConfigInvalid");
        assert_eq!(message, "CA bundle holds no PEM certificate");
    }

    #[test]
    fn a_rotated_ca_gets_a_client_of_its_own() {
        let s = sender("127.0.0.0/8");
        let ua = s.user_agent.clone();
        let pem = |name: &str| {
            rcgen::generate_simple_self_signed(vec![name.to_string()])
                .unwrap()
                .cert
                .pem()
        };
        let t = target("https://127.0.0.1:9/h");
        let shared = s.prepared.get(&t, &ua, &s.clients);
        assert!(
            matches!(shared.client, Ok(None)),
            "system roots: the shared client"
        );
        let old = with_ca(t, &pem("old"));
        let first = s.prepared.get(&old, &ua, &s.clients);
        assert!(matches!(first.client, Ok(Some(_))));
        assert!(Arc::ptr_eq(&first, &s.prepared.get(&old, &ua, &s.clients)));
        let new = with_ca(old, &pem("new"));
        assert!(!Arc::ptr_eq(&first, &s.prepared.get(&new, &ua, &s.clients)));
        assert_eq!(s.clients.private.len(), 2);
    }
}
