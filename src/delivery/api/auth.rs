//! Credentials on API requests, and OAuth2 client-credentials tokens (RFC 6749 §4.4):
//! fetched from the token endpoint, cached per client until shortly before they expire,
//! fetched again once when the API answers 401 to a cached token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderValue;
use serde::Deserialize;
use tokio::time::Instant;

use crate::endpoint::{ApiCredentials, OAuth2Client};

/// A token is fetched again this long before it expires.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint does not say (`expires_in` is optional).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// OAuth2 clients whose tokens are kept at once.
const MAX_SLOTS: usize = 4096;

/// Why no token could be had: the reason and message an attempt reports; all retryable,
/// since a fixed Secret or a recovered endpoint lets the events through.
#[derive(Debug, Clone)]
pub(crate) struct TokenError {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires_at: Instant,
}

/// One client's token, fetched by one task at a time.
type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// OAuth2 tokens per client; one fetch at a time per client (a burst of attempts waits for
/// the one fetch instead of asking the endpoint a thousand times).
#[derive(Default)]
pub(crate) struct Tokens {
    slots: Mutex<HashMap<[u8; 32], Slot>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn slot_key(c: &OAuth2Client) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [
        c.token_url.as_str(),
        &c.client_id,
        &c.client_secret,
        c.audience.as_deref().unwrap_or(""),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for s in &c.scopes {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    h.update([u8::from(c.basic)]);
    h.finalize().into()
}

impl Tokens {
    /// A bearer token for `c`: the cached one unless it is `stale` (the API refused it) or
    /// about to expire.
    pub(crate) async fn get(
        &self,
        client: &reqwest::Client,
        c: &OAuth2Client,
        stale: Option<&str>,
        timeout: Duration,
    ) -> Result<String, TokenError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // A changed Secret gets a new slot; the old ones go when there are too many.
            if slots.len() >= MAX_SLOTS {
                slots.clear();
            }
            slots.entry(slot_key(c)).or_default().clone()
        };
        let mut cached = slot.lock().await;
        if let Some(t) = cached.as_ref()
            && Some(t.value.as_str()) != stale
            && t.expires_at > Instant::now() + EXPIRY_MARGIN
        {
            return Ok(t.value.clone());
        }
        *cached = None;
        let token = fetch(client, c, timeout).await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }
}

async fn fetch(
    client: &reqwest::Client,
    c: &OAuth2Client,
    timeout: Duration,
) -> Result<Token, TokenError> {
    let fail = |reason: &'static str, message: String| TokenError { reason, message };
    let shown = {
        let mut u = c.token_url.clone();
        u.set_query(None);
        u.to_string()
    };
    let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
    let scope = c.scopes.join(" ");
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    if let Some(a) = &c.audience {
        form.push(("audience", a));
    }
    if !c.basic {
        form.push(("client_id", &c.client_id));
        form.push(("client_secret", &c.client_secret));
    }
    let body = serde_urlencoded_pairs(&form);
    let mut req = client
        .post(c.token_url.clone())
        .timeout(timeout)
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(http::header::ACCEPT, "application/json")
        .body(body);
    if c.basic {
        // RFC 6749 §2.3.1: both parts form-encoded before Basic encoding.
        req = req.basic_auth(
            form_encode(&c.client_id),
            Some(form_encode(&c.client_secret)),
        );
    }
    let start = Instant::now();
    let mut resp = req.send().await.map_err(|e| {
        let e = e.without_url();
        if let Some(t) = crate::delivery::http::target_error(&e) {
            return fail(t.reason(), format!("token endpoint {shown}: {t}"));
        }
        fail(
            if e.is_timeout() {
                "TokenTimeout"
            } else {
                "TokenEndpointFailed"
            },
            format!(
                "token endpoint {shown}: {}",
                crate::delivery::http::error_chain(&e)
            ),
        )
    })?;
    let status = resp.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| {
        fail(
            "TokenEndpointFailed",
            format!(
                "token endpoint {shown}: reading the answer: {}",
                e.without_url()
            ),
        )
    })? {
        if bytes.len() + chunk.len() > MAX_TOKEN_RESPONSE {
            return Err(fail(
                "TokenEndpointFailed",
                format!("token endpoint {shown}: answer larger than {MAX_TOKEN_RESPONSE} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        // The error body (RFC 6749 §5.2) names the problem; a careless endpoint repeats the
        // client secret in it.
        let detail = mask(&String::from_utf8_lossy(&bytes), &client_secret_texts(c));
        let detail: String = detail.chars().take(200).collect();
        let reason = if matches!(status.as_u16(), 400 | 401 | 403) {
            "TokenRefused"
        } else {
            "TokenEndpointFailed"
        };
        return Err(fail(
            reason,
            format!("token endpoint {shown} answered {status}: {detail}"),
        ));
    }
    let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| {
        fail(
            "TokenEndpointFailed",
            format!("token endpoint {shown}: answer is not a token response: {e}"),
        )
    })?;
    if let Some(tt) = &parsed.token_type
        && !tt.eq_ignore_ascii_case("bearer")
    {
        return Err(fail(
            "TokenEndpointFailed",
            format!("token endpoint {shown}: token_type {tt:?}, only Bearer is supported"),
        ));
    }
    if HeaderValue::from_str(&format!("Bearer {}", parsed.access_token)).is_err()
        || parsed.access_token.is_empty()
    {
        return Err(fail(
            "TokenEndpointFailed",
            format!("token endpoint {shown}: access_token is not usable in a header"),
        ));
    }
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_LIFETIME);
    tracing::debug!(token_url = %shown, ?lifetime, elapsed = ?start.elapsed(), "OAuth2 token fetched");
    Ok(Token {
        value: parsed.access_token,
        expires_at: start + lifetime,
    })
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn serde_urlencoded_pairs(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The `Authorization` (or API-key) header for a request, given the OAuth2 token if any.
/// Marked sensitive so that it never shows in logs.
pub(crate) fn auth_header(
    creds: &ApiCredentials,
    oauth_token: Option<&str>,
) -> Option<(http::HeaderName, HeaderValue)> {
    let (name, value) = match creds {
        ApiCredentials::None => return None,
        ApiCredentials::Basic { username, password } => (
            http::header::AUTHORIZATION,
            format!("Basic {}", basic_token(username, password)),
        ),
        ApiCredentials::Bearer(t) => (http::header::AUTHORIZATION, format!("Bearer {t}")),
        ApiCredentials::Header { name, prefix, key } => (name.clone(), format!("{prefix}{key}")),
        ApiCredentials::OAuth2(_) => (
            http::header::AUTHORIZATION,
            format!("Bearer {}", oauth_token?),
        ),
    };
    let mut value = HeaderValue::from_str(&value).ok()?;
    value.set_sensitive(true);
    Some((name, value))
}

fn basic_token(username: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
}

/// Every form in which a request's credentials (`token`: its OAuth2 access token) went out,
/// so that an API repeating them in an answer has them masked before the answer is shown.
pub(crate) fn credential_texts(creds: &ApiCredentials, token: Option<&str>) -> Vec<String> {
    let mut out = match creds {
        ApiCredentials::None => Vec::new(),
        ApiCredentials::Basic { username, password } => vec![
            password.clone(),
            format!("{username}:{password}"),
            basic_token(username, password),
        ],
        ApiCredentials::Bearer(t) => vec![t.clone()],
        ApiCredentials::Header { prefix, key, .. } => vec![key.clone(), format!("{prefix}{key}")],
        ApiCredentials::OAuth2(c) => client_secret_texts(c),
    };
    out.extend(token.map(str::to_owned));
    out
}

/// The forms in which an OAuth2 client's secret goes to its token endpoint.
fn client_secret_texts(c: &OAuth2Client) -> Vec<String> {
    vec![
        c.client_secret.clone(),
        form_encode(&c.client_secret),
        basic_token(&form_encode(&c.client_id), &form_encode(&c.client_secret)),
    ]
}

pub(crate) use crate::delivery::http::mask;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_a_credential_is_masked() {
        let basic = ApiCredentials::Basic {
            username: "u".into(),
            password: "p:w".into(),
        };
        let texts = credential_texts(&basic, None);
        let echoed = format!("bad Basic {} (u:p:w, p:w)", basic_token("u", "p:w"));
        assert_eq!(mask(&echoed, &texts), "bad Basic *** (***, ***)");

        let key = ApiCredentials::Header {
            name: http::HeaderName::from_static("x-api-key"),
            prefix: "ApiKey ".into(),
            key: "k-123".into(),
        };
        let texts = credential_texts(&key, None);
        assert_eq!(
            mask("got 'ApiKey k-123', key k-123", &texts),
            "got '***', key ***"
        );

        let oauth = ApiCredentials::OAuth2(OAuth2Client {
            token_url: url::Url::parse("https://idp.example/token").unwrap(),
            client_id: "c".into(),
            client_secret: "s/+=".into(),
            scopes: Vec::new(),
            audience: None,
            basic: true,
        });
        let texts = credential_texts(&oauth, Some("tok"));
        assert_eq!(mask("s/+= s%2F%2B%3D tok", &texts), "*** *** ***");
        assert_eq!(mask("nothing here", &[String::new()]), "nothing here");
    }
}
