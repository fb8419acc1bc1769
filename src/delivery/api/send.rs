//! One request of a chain on the wire: URL checks, credentials, the idempotency key, the body
//! (JSON, or an image streamed from its URL as the raw body or a multipart part), and the
//! answer read within a cap.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::Inner;
use super::auth::{auth_header, credential_texts, mask};
use crate::delivery::files::outcome::Failure;
use crate::delivery::http as guarded;
use crate::delivery::retry::parse_retry_after;
use crate::endpoint::{ApiCredentials, ApiEndpoint};
use crate::ingest::envelope::Image;

/// Most of an answer kept (for captures and failure messages).
const MAX_ANSWER: usize = 256 * 1024;
/// Most of an answer shown in a failure message.
const SHOWN_ANSWER: usize = 300;

/// A request ready to send, but for credentials.
pub(super) struct Request {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

pub(super) enum Body {
    Empty,
    Json(Vec<u8>),
    /// The image's bytes are the body.
    Raw(Image),
    /// `multipart/form-data`: text `fields`, then the image as the part `field`.
    Multipart {
        field: String,
        fields: Vec<(String, String)>,
        image: Image,
    },
}

/// The API's answer.
pub(super) struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The image of the body when the API answered before it was sent whole (and verified).
    pub unsent_image: Option<Image>,
    /// The start of the body for messages, the request's credentials masked in it.
    pub shown: String,
}

/// Why a request did not get an answer worth judging, or what the answer means.
#[derive(Debug)]
pub(super) struct Fail {
    pub retryable: bool,
    pub reason: String,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl Fail {
    pub fn retry(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Fail {
            retryable: true,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Fail {
            retryable: false,
            reason: reason.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    fn from_failure(f: Failure) -> Self {
        Fail {
            retryable: f.retryable,
            reason: f.reason.to_owned(),
            message: f.message,
            retry_after: None,
        }
    }
}

/// The URL as messages show it: no query (it may hold keys).
pub(super) fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

/// Sends `req` with the endpoint's credentials and `idempotency_key`. With OAuth2, a 401 to
/// a cached token fetches a new one and sends once more.
pub(super) async fn send(
    inner: &Inner,
    ep: &ApiEndpoint,
    req: &Request,
    idempotency_key: &str,
) -> Result<Answer, Fail> {
    let client = inner
        .clients
        .get(&ep.tls_id, &ep.tls)
        .map_err(|e| Fail::permanent("TlsConfigInvalid", e.0))?;
    guarded::check_literal(inner.clients.guard(), &req.url)
        .map_err(|e| Fail::permanent(e.reason(), format!("{}: {e}", shown(&req.url))))?;
    let mut stale: Option<String> = None;
    loop {
        let token = match &ep.auth {
            ApiCredentials::OAuth2(c) => Some(
                inner
                    .tokens
                    .get(&client, c, stale.as_deref(), ep.timeout)
                    .await
                    .map_err(|e| Fail::retry(e.reason, e.message))?,
            ),
            _ => None,
        };
        let answer = send_once(inner, &client, ep, req, idempotency_key, token.as_deref()).await?;
        if answer.status == 401 && stale.is_none() && token.is_some() {
            tracing::debug!(url = %shown(&req.url), "401 to an OAuth2 token; fetching a new one");
            stale = token;
            continue;
        }
        return Ok(answer);
    }
}

async fn send_once(
    inner: &Inner,
    client: &reqwest::Client,
    ep: &ApiEndpoint,
    req: &Request,
    idempotency_key: &str,
    token: Option<&str>,
) -> Result<Answer, Fail> {
    let url = shown(&req.url);
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Fail::permanent("InvalidRequest", format!("header name {name:?}")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            Fail::permanent(
                "InvalidRequest",
                format!("header {name}: not a header value"),
            )
        })?;
        headers.append(name, value);
    }
    if let Some((name, value)) = auth_header(&ep.auth, token) {
        headers.insert(name, value);
    } else if !matches!(ep.auth, ApiCredentials::None) {
        return Err(Fail::permanent(
            "InvalidCredentials",
            "the credentials from the Secret are not usable in a header",
        ));
    }
    headers.insert(
        ep.idempotency_header.clone(),
        HeaderValue::from_str(idempotency_key)
            .map_err(|_| Fail::permanent("InvalidRequest", "idempotency key"))?,
    );
    if !headers.contains_key(http::header::USER_AGENT)
        && let Ok(v) = HeaderValue::from_str(&inner.user_agent)
    {
        headers.insert(http::header::USER_AGENT, v);
    }
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(
            http::header::ACCEPT,
            HeaderValue::from_static("application/json, */*;q=0.5"),
        );
    }

    // How the image's stream ended: verified, or its own failure (size, checksum, download);
    // `None` while it has not.
    let image_end: Arc<Mutex<Option<Result<(), Failure>>>> = Arc::default();
    let mut builder = client
        .request(req.method.clone(), req.url.clone())
        .timeout(ep.timeout);
    match &req.body {
        Body::Empty => {}
        Body::Json(bytes) => {
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            builder = builder.body(bytes.clone());
        }
        Body::Raw(image) => {
            let body = inner.images.open(image).await.map_err(Fail::from_failure)?;
            let content_type = image
                .content_type
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok())
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            headers.insert(http::header::CONTENT_TYPE, content_type);
            let stream = body.into_verified_stream(image_end.clone());
            builder = builder.body(reqwest::Body::wrap_stream(stream));
        }
        Body::Multipart {
            field,
            fields,
            image,
        } => {
            let body = inner.images.open(image).await.map_err(Fail::from_failure)?;
            let mut form = reqwest::multipart::Form::new();
            for (name, value) in fields {
                form = form.text(name.clone(), value.clone());
            }
            let stream = body.into_verified_stream(image_end.clone());
            let mut part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(stream))
                .file_name(image_file_name(image));
            if let Some(ct) = &image.content_type {
                part = part
                    .mime_str(ct)
                    .map_err(|_| Fail::permanent("InvalidImage", format!("content type {ct:?}")))?;
            }
            form = form.part(field.clone(), part);
            builder = builder.multipart(form);
        }
    }
    // After the body: multipart sets its own content type with the boundary.
    let builder = builder.headers(headers);

    let start = Instant::now();
    let sent = builder.send().await;
    let mut resp = match sent {
        Ok(r) => r,
        Err(e) => {
            if let Some(Err(f)) = image_end.lock().ok().and_then(|mut s| s.take()) {
                return Err(Fail::from_failure(f));
            }
            return Err(request_error(&url, e));
        }
    };
    let status = resp.status().as_u16();
    let headers = std::mem::take(resp.headers_mut());
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ANSWER.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break,
            Err(e) => return Err(request_error(&url, e)),
        }
    }
    tracing::debug!(%url, status, elapsed = ?start.elapsed(), "API request answered");
    // An API may answer before it has the whole body: the answer counts for the image only if
    // the image was verified by then.
    let ended = image_end.lock().ok().and_then(|mut s| s.take());
    let unsent_image = match (&req.body, ended) {
        (_, Some(Err(f))) => return Err(Fail::from_failure(f)),
        (Body::Raw(image) | Body::Multipart { image, .. }, None) => Some(image.clone()),
        _ => None,
    };
    // An API may repeat the credentials it refuses; status and Events are readable by anyone
    // who may read the resource.
    let text = mask(
        &String::from_utf8_lossy(&body),
        &credential_texts(&ep.auth, token),
    );
    let shown = text.trim().chars().take(SHOWN_ANSWER).collect();
    Ok(Answer {
        status,
        headers,
        body: body.into(),
        unsent_image,
        shown,
    })
}

fn image_file_name(image: &Image) -> String {
    let ext = match image.content_type.as_deref() {
        Some("image/png") => "png",
        Some("image/webp") => "webp",
        Some("image/gif") => "gif",
        _ => "jpg",
    };
    format!("{}.{ext}", image.index)
}

fn request_error(url: &str, e: reqwest::Error) -> Fail {
    let e = e.without_url();
    if let Some(t) = guarded::target_error(&e) {
        return Fail::permanent(t.reason(), format!("{url}: {t}"));
    }
    let chain = guarded::error_chain(&e);
    if e.is_timeout() {
        Fail::retry("Timeout", format!("{url}: {chain}"))
    } else if let Some(t) = guarded::tls_error(&e) {
        Fail::retry(
            "TlsError",
            format!("{url}: {chain}{}", guarded::tls_hint(t)),
        )
    } else if e.is_connect() {
        Fail::retry("ConnectionFailed", format!("{url}: {chain}"))
    } else {
        Fail::retry("RequestFailed", format!("{url}: {chain}"))
    }
}

/// What an answer that the mapping accepts means when it came before the image was sent
/// whole: the API cannot have taken the image. The image is downloaded again and checked, so
/// that a wrong one fails for good as it would have on the wire; a right one is sent again.
pub(super) async fn answered_early(
    inner: &Inner,
    request: &str,
    url: &str,
    status: u16,
    image: &Image,
) -> Fail {
    let checked = match inner.images.open(image).await {
        Ok(body) => body.drain().await,
        Err(f) => Err(f),
    };
    match checked {
        Err(f) => Fail::from_failure(f),
        Ok(_) => Fail::retry(
            "AnsweredEarly",
            format!(
                "request {request:?}: {url} answered {status} before image {} was sent whole",
                image.index
            ),
        ),
    }
}

/// What an answer that the mapping does not expect means: 5xx, 408 and 429 are worth
/// retrying (after `Retry-After` if given), other statuses are not.
pub(super) fn judge(request: &str, url: &str, answer: &Answer) -> Fail {
    let status = answer.status;
    let message = if answer.shown.is_empty() {
        format!("request {request:?}: {url} answered {status}")
    } else {
        format!(
            "request {request:?}: {url} answered {status}: {}",
            answer.shown
        )
    };
    if status >= 500 || status == 408 || status == 429 {
        Fail {
            retryable: true,
            reason: "HttpStatus".into(),
            message,
            retry_after: answer
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        }
    } else if status == 401 || status == 403 {
        // Credentials can be fixed without losing the events.
        Fail::retry("Unauthorized", message)
    } else {
        Fail::permanent("HttpStatus", message)
    }
}
