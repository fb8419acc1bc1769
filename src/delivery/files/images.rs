//! Image downloads: each image is requested through the SSRF guard, streamed a chunk at a time
//! within its size cap and timeout, and hashed on the way.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};

use super::archive::ZipStream;
use super::deliver::UploadError;
use super::names::hex;
use super::outcome::Failure;
use super::pool::Lease;
use super::transport::Transport;
use crate::delivery::http::{self, GuardedResolver};
use crate::endpoint::TlsMaterial;
use crate::ingest::envelope::Image;
use crate::ssrf::TargetGuard;

const IMAGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two pieces of an image body.
const IMAGE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest image request until its headers, and longest image body after that.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REDIRECTS: usize = 5;

/// The HTTP client images are downloaded with: redirects and names checked by the guard.
pub(crate) struct Downloader {
    http: reqwest::Client,
    guard: Arc<TargetGuard>,
    max_image_bytes: u64,
}

impl Downloader {
    /// `max_image_bytes` caps each image download.
    pub(crate) fn new(guard: Arc<TargetGuard>, max_image_bytes: u64) -> Result<Self, UploadError> {
        let redirect_guard = guard.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            if !matches!(attempt.url().scheme(), "http" | "https") {
                return attempt.error("redirect to a URL that is not http(s)");
            }
            // Names are checked by the resolver; a literal address never reaches it.
            match http::check_literal(&redirect_guard, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(http::tls_config(&TlsMaterial::default())?)
            .redirect(redirects)
            // A proxy would resolve the target itself, bypassing the guarded resolver.
            .no_proxy()
            .dns_resolver(GuardedResolver {
                guard: guard.clone(),
            })
            .referer(false)
            .connect_timeout(IMAGE_CONNECT_TIMEOUT)
            .read_timeout(IMAGE_READ_TIMEOUT)
            .build()
            .map_err(UploadError::Client)?;
        Ok(Downloader {
            http: client,
            guard,
            max_image_bytes,
        })
    }

    pub(super) fn max_image_bytes(&self) -> u64 {
        self.max_image_bytes
    }

    /// Requests one image and checks what can be checked before its body: the URL, the
    /// guard, the status and the announced length.
    pub(crate) async fn open(&self, img: &Image) -> Result<ImageBody, Failure> {
        let url = url::Url::parse(&img.url).map_err(|e| {
            Failure::permanent("InvalidImageUrl", format!("image {}: {e}", img.index))
        })?;
        let label = format!("image {} ({})", img.index, shown_url(&url));
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::permanent(
                "InvalidImageUrl",
                format!("{label}: not an http(s) URL"),
            ));
        }
        http::check_literal(&self.guard, &url)
            .map_err(|e| Failure::permanent(e.reason(), format!("{label}: {e}")))?;
        let cap = self.max_image_bytes;
        let declared = img.bytes;
        if let Some(d) = declared.filter(|d| *d > cap) {
            return Err(Failure::permanent(
                "ImageTooLarge",
                format!("{label}: {d} bytes declared; the limit is {cap}"),
            ));
        }
        let request = self.http.get(url.clone()).send();
        let response = match timeout(IMAGE_TIMEOUT, request).await {
            Ok(r) => r.map_err(|e| http_failure(&label, e))?,
            Err(_) => {
                return Err(Failure::retry(
                    "ImageTimeout",
                    format!("{label}: no response within {IMAGE_TIMEOUT:?}"),
                ));
            }
        };
        let status = response.status();
        if !status.is_success() {
            let text = format!("{label}: HTTP {status}");
            return Err(
                if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Failure::retry("ImageServerError", text)
                } else if matches!(status.as_u16(), 404 | 410) {
                    Failure::permanent("ImageNotFound", text)
                } else if status.is_redirection() {
                    Failure::permanent("ImageRedirect", format!("{text}: redirect not followed"))
                } else {
                    Failure::permanent("ImageRefused", text)
                },
            );
        }
        let body = ImageBody {
            response,
            label,
            declared,
            cap,
            limit: declared.unwrap_or(cap),
            want: img.sha256.clone(),
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            got: 0,
            deadline: Instant::now() + IMAGE_TIMEOUT,
        };
        if let Some(len) = body.response.content_length().filter(|l| *l > body.limit) {
            return Err(body.too_big(len));
        }
        Ok(body)
    }
}

/// The response of one image, read a chunk at a time within the size cap and the image
/// timeout, hashed as it goes.
pub(crate) struct ImageBody {
    response: reqwest::Response,
    label: String,
    declared: Option<u64>,
    cap: u64,
    /// Most bytes accepted: the declared size, else the cap.
    pub(super) limit: u64,
    want: Option<String>,
    digest: ring::digest::Context,
    got: u64,
    deadline: Instant,
}

impl ImageBody {
    fn too_big(&self, got: u64) -> Failure {
        let label = &self.label;
        match self.declared {
            Some(d) => Failure::permanent(
                "ImageSizeMismatch",
                format!("{label}: more than the {d} bytes the event declares ({got} so far)"),
            ),
            None => Failure::permanent(
                "ImageTooLarge",
                format!(
                    "{label}: larger than the limit of {} bytes ({got} so far)",
                    self.cap
                ),
            ),
        }
    }

    async fn next(&mut self) -> Result<Option<bytes::Bytes>, Failure> {
        let chunk = match timeout_at(self.deadline, self.response.chunk()).await {
            Ok(c) => c.map_err(|e| http_failure(&self.label, e))?,
            Err(_) => {
                return Err(Failure::retry(
                    "ImageTimeout",
                    format!("{}: body not complete within {IMAGE_TIMEOUT:?}", self.label),
                ));
            }
        };
        let Some(chunk) = chunk else { return Ok(None) };
        let got = self.got + chunk.len() as u64;
        if got > self.limit {
            return Err(self.too_big(got));
        }
        self.got = got;
        self.digest.update(&chunk);
        Ok(Some(chunk))
    }

    /// Streams the body into `transfer` (through `archive` when given); returns its size
    /// and SHA-256 once verified.
    pub(super) async fn copy<T: Transport>(
        &mut self,
        lease: &mut Lease<T>,
        transfer: &mut T::Upload,
        mut archive: Option<&mut ZipStream>,
    ) -> Result<(u64, String), Failure> {
        while let Some(chunk) = self.next().await? {
            match archive.as_deref_mut() {
                Some(zip) => {
                    let out = zip.write(&chunk)?;
                    lease.write(transfer, &out).await?;
                }
                None => lease.write(transfer, &chunk).await?,
            }
        }
        self.verify()
    }

    /// The body as a stream for an outgoing request, checked as [`Self::copy`] checks it. The
    /// last piece is held back until size and checksum are verified: on a mismatch the
    /// stream ends in an error instead, so the request body is never complete and the peer
    /// never takes a wrong image. How it ended is left in `ended`: `Ok` once the image is
    /// verified (before its last piece goes out), else the failure; `None` while it has not.
    pub(crate) fn into_verified_stream(
        self,
        ended: Arc<std::sync::Mutex<Option<Result<(), Failure>>>>,
    ) -> impl futures::Stream<Item = Result<bytes::Bytes, ImageStreamError>> + Send + 'static {
        let end = move |r: Result<(), Failure>| {
            let e = r
                .as_ref()
                .err()
                .map(|f| ImageStreamError(f.message.clone()));
            if let Ok(mut slot) = ended.lock() {
                *slot = Some(r);
            }
            e
        };
        futures::stream::unfold(
            (self, None::<bytes::Bytes>, false),
            move |(mut body, mut held, done)| {
                let end = end.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        let failed = match body.next().await {
                            Ok(Some(chunk)) => match held.replace(chunk) {
                                Some(prev) => return Some((Ok(prev), (body, held, false))),
                                None => continue,
                            },
                            Ok(None) => match body.verify() {
                                Ok(_) => {
                                    end(Ok(()));
                                    return held.map(|last| (Ok(last), (body, None, true)));
                                }
                                Err(f) => f,
                            },
                            Err(f) => f,
                        };
                        let e = end(Err(failed)).unwrap_or_else(|| ImageStreamError(String::new()));
                        return Some((Err(e), (body, None, true)));
                    }
                }
            },
        )
    }

    /// Reads the body for its size and checksum only.
    pub(crate) async fn drain(mut self) -> Result<(u64, String), Failure> {
        while self.next().await?.is_some() {}
        self.verify()
    }

    fn verify(&mut self) -> Result<(u64, String), Failure> {
        let label = &self.label;
        if let Some(d) = self.declared.filter(|d| *d != self.got) {
            return Err(Failure::permanent(
                "ImageSizeMismatch",
                format!("{label}: {} bytes, the event declares {d}", self.got),
            ));
        }
        let digest = std::mem::replace(
            &mut self.digest,
            ring::digest::Context::new(&ring::digest::SHA256),
        );
        let sha256 = hex(digest.finish().as_ref());
        if let Some(want) = &self.want
            && !want.eq_ignore_ascii_case(&sha256)
        {
            return Err(Failure::permanent(
                "ChecksumMismatch",
                format!(
                    "{label}: SHA-256 is {sha256}, the event says {}",
                    want.to_ascii_lowercase()
                ),
            ));
        }
        Ok((self.got, sha256))
    }
}

/// An image stream's failure, as the HTTP client sees it; the [`Failure`] itself is kept
/// for the attempt's outcome.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ImageStreamError(String);

fn http_failure(label: &str, e: reqwest::Error) -> Failure {
    // The URL may carry a signature in its query; the label shows it without.
    let e = e.without_url();
    if let Some(t) = http::target_error(&e) {
        return Failure::permanent(t.reason(), format!("{label}: {t}"));
    }
    let chain = http::error_chain(&e);
    if e.is_timeout() {
        Failure::retry("ImageTimeout", format!("{label}: {chain}"))
    } else if e.is_redirect() {
        Failure::permanent("ImageRedirect", format!("{label}: {chain}"))
    } else {
        Failure::retry("ImageDownloadFailed", format!("{label}: {chain}"))
    }
}

/// A URL for messages: no credentials, query or fragment (they may hold signatures).
fn shown_url(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_drop_secrets() {
        let u = url::Url::parse("https://u:p@cdn.example/v/1.jpg?sig=abc#f").unwrap();
        assert_eq!(shown_url(&u), "https://cdn.example/v/1.jpg");
    }
}
