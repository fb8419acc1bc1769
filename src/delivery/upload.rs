//! FTP uploads: one event for one FtpConnection puts the vehicle's images (one file each, or
//! one zip archive) and an optional metadata JSON on the client's server, named by its rules;
//! `vehicle.deleted` removes them again when the rules ask for it.
//!
//! Atomic to the receiver (SPEC "Delivery semantics"): every file is stored under a temporary
//! name (`.vc-tmp-<event>-<n>`, a dot file that most pollers ignore) in its final directory and
//! renamed once complete, so a final name only ever holds a whole file. Renames wait until
//! every image of the event is downloaded, verified (size, SHA-256) and stored: a bad image, or
//! a connection that breaks while storing, leaves only temporaries, never half a vehicle. The
//! metadata file is renamed last and marks the vehicle complete. A temporary left by a broken
//! connection is replaced by the next attempt, which stores under the same name.
//!
//! Downloads run on their own task while the session stores what has arrived, so a vehicle
//! costs about max(download, upload) rather than their sum. Memory: a few images per delivery
//! in the `files` layout; the whole archive in the `zip` layout, which is built in memory.
//!
//! Sessions are pooled per endpoint (server, account and settings): at most
//! `maxConnections` at once, reused after a NOOP, closed after [`SESSION_IDLE`] unused
//! (adjustable with [`Uploader::set_session_idle`]).

use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;
use serde::Deserialize;
use serde_json::{Value, json};
use suppaftp::FtpError;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout};

use crate::api::EventType;
use crate::api::ftp::{FtpRules, Layout, OnExisting};
use crate::delivery::ftp::{self, FtpEndpoint, FtpStream, ProbeError, Session};
use crate::delivery::http::{self, GuardedResolver};
use crate::ingest::Envelope;
use crate::ingest::envelope::Image;
use crate::naming::{NamingContext, Placeholder, Template, join_path, sanitize};
use crate::routing::FtpTarget;
use crate::ssrf::TargetGuard;

/// An unused pooled session is closed after this; servers drop idle ones at 60-300 s.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);
/// How often expired sessions are looked for, at most.
const JANITOR_TICK: Duration = Duration::from_secs(10);
/// A pooled session must answer NOOP within this before it is reused; a dead one is
/// replaced by a new connection rather than waited on for the whole command timeout.
const NOOP_TIMEOUT: Duration = Duration::from_secs(5);

const IMAGE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two pieces of an image body.
const IMAGE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest whole image request, body included.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REDIRECTS: usize = 5;
/// Images of one event downloaded at once.
const DOWNLOAD_CONCURRENCY: usize = 4;
/// Size of each write to an FTP data connection; each is bounded by the command timeout.
const WRITE_CHUNK: usize = 64 * 1024;
const TEMP_PREFIX: &str = ".vc-tmp-";

/// What one delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadResult {
    /// Files were written (images or the archive, and the metadata file).
    Uploaded {
        vin: Option<String>,
        files: u32,
        bytes: u64,
        elapsed: Duration,
    },
    /// `vehicle.deleted`: the vehicle's files were removed.
    Deleted {
        vin: Option<String>,
        files: u32,
        elapsed: Duration,
    },
    /// Nothing to do: no images, every file exists with `onExisting: skip`, an event this
    /// connection does not act on.
    Skipped { reason: String },
    /// Worth retrying: network errors, timeouts, 4xx FTP replies, image server 5xx.
    Retryable { reason: String, message: String },
    /// Retrying cannot help: 5xx FTP replies, image 404, checksum mismatch, an existing file
    /// with `onExisting: fail`, a template that does not render for this vehicle.
    Permanent { reason: String, message: String },
}

impl UploadResult {
    /// CamelCase reason of a failure or skip-less outcome; `None` on success.
    pub fn reason(&self) -> Option<&str> {
        match self {
            UploadResult::Retryable { reason, .. } | UploadResult::Permanent { reason, .. } => {
                Some(reason)
            }
            UploadResult::Skipped { .. } => Some("Skipped"),
            UploadResult::Uploaded { .. } | UploadResult::Deleted { .. } => None,
        }
    }

    /// Whether the event is done with (success or nothing to do).
    pub fn is_done(&self) -> bool {
        matches!(
            self,
            UploadResult::Uploaded { .. }
                | UploadResult::Deleted { .. }
                | UploadResult::Skipped { .. }
        )
    }
}

/// Why the uploader could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the image download client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Uploads events to FTP servers. Cheap to clone; clones share the download client and the
/// session pools.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    max_image_bytes: u64,
    guard: Arc<TargetGuard>,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    janitor: AtomicBool,
    sessions_opened: AtomicU64,
    /// [`SESSION_IDLE`] unless set, in milliseconds.
    session_idle_ms: AtomicU64,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("max_image_bytes", &self.inner.max_image_bytes)
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// `max_image_bytes` caps each image download.
    pub fn new(guard: TargetGuard, max_image_bytes: u64) -> Result<Self, UploadError> {
        let guard = Arc::new(guard);
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
            .tls_backend_preconfigured(http::tls_config()?)
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
        Ok(Uploader {
            inner: Arc::new(Inner {
                http: client,
                max_image_bytes,
                guard,
                pools: Mutex::new(HashMap::new()),
                janitor: AtomicBool::new(false),
                sessions_opened: AtomicU64::new(0),
                session_idle_ms: AtomicU64::new(SESSION_IDLE.as_millis() as u64),
            }),
        })
    }

    /// How long an unused session stays open for reuse.
    pub fn set_session_idle(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.session_idle_ms.store(ms, Ordering::Relaxed);
    }

    /// FTP sessions opened so far (logins), for metrics and tests of reuse.
    pub fn sessions_opened(&self) -> u64 {
        self.inner.sessions_opened.load(Ordering::Relaxed)
    }

    /// Sessions waiting in the pools for reuse.
    pub fn idle_sessions(&self) -> usize {
        let pools = lock(&self.inner.pools);
        pools.values().map(|p| lock(&p.idle).len()).sum()
    }

    /// Quits every idle session (at shutdown).
    pub async fn close_idle(&self) {
        let idle = self.inner.take_idle(|_| true);
        quit_all(idle).await;
    }

    /// Handles one event for one FtpConnection: image events upload the images by the rules;
    /// `vehicle.deleted` removes the vehicle's files when `rules.deleteOnVehicleDeleted`.
    pub async fn deliver(&self, target: &FtpTarget, event: &Envelope) -> UploadResult {
        let start = Instant::now();
        self.start_janitor();
        let outcome = match event.type_ {
            EventType::VehicleDeleted => self.delete(target, event, start).await,
            t if EventType::FTP.contains(&t) => self.upload(target, event, start).await,
            t => Ok(UploadResult::Skipped {
                reason: format!("FTP connections do not act on {t} events"),
            }),
        };
        let result = outcome.unwrap_or_else(Failure::into_result);
        tracing::debug!(
            event = %event.id,
            server = %target.endpoint.target(),
            result = ?result,
            "FTP delivery"
        );
        result
    }

    async fn upload(
        &self,
        target: &FtpTarget,
        ev: &Envelope,
        start: Instant,
    ) -> Result<UploadResult, Failure> {
        let rules = &target.rules;
        let facts = Facts::of(ev)?;
        let ctx = facts.context(ev);
        let mut images: Vec<Image> = match ev.data.get("images") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Failure::permanent("InvalidEvent", format!("data.images: {e}")))?,
        };
        if images.is_empty() {
            return Ok(UploadResult::Skipped {
                reason: format!("the {} event carries no images", ev.type_),
            });
        }
        images.sort_by_key(|i| i.index);
        if let Some(w) = images.windows(2).find(|w| w[0].index == w[1].index) {
            return Err(Failure::permanent(
                "InvalidEvent",
                format!("two images have index {}", w[0].index),
            ));
        }
        let single = matches!(
            ev.type_,
            EventType::VehicleImageUploaded | EventType::ImageCroppedProcessed
        );
        if single && rules.layout == Layout::Zip {
            // Rebuilding the vehicle's archive from one image would drop all the others.
            return Ok(UploadResult::Skipped {
                reason: format!(
                    "{} carries single images; the zip layout writes whole archives from vehicle.processed and vehicle.images_uploaded",
                    ev.type_
                ),
            });
        }

        // Every name first: a template that does not render costs no download.
        let templates = Templates::parse(rules)?;
        let base = rules.base_directory.as_str();
        let dir = render("directory", &templates.directory, &ctx)?;
        let temp = |field, suffix: &str| path(field, base, &dir, &temp_name(&ev.id, suffix));
        let mut names = Vec::with_capacity(images.len());
        for img in &images {
            let name = render(
                "fileName",
                &templates.file,
                &ctx.for_image(img.index, extension(img)),
            )?;
            // Checked as a path also in the zip layout: a valid single name in the archive.
            let final_path = path("fileName", base, &dir, &name)?;
            names.push((name, final_path, temp("fileName", &img.index.to_string())?));
        }
        let archive = match rules.layout {
            Layout::Files => None,
            Layout::Zip => {
                let name = render("archiveName", &templates.archive, &ctx)?;
                let final_path = path("archiveName", base, &dir, &name)?;
                Some((name, final_path, temp("archiveName", "zip")?))
            }
        };
        // Single-image events would rewrite the list with just their image.
        let metadata = match (&templates.metadata, single) {
            (Some(t), false) => {
                let name = render("metadata.fileName", t, &ctx)?;
                Some((
                    path("metadata.fileName", base, &dir, &name)?,
                    temp("metadata.fileName", "json")?,
                ))
            }
            _ => None,
        };
        let finals: Vec<&str> = match &archive {
            None => names.iter().map(|(_, p, _)| p.as_str()).collect(),
            Some((_, p, _)) => vec![p.as_str()],
        }
        .into_iter()
        .chain(metadata.iter().map(|(p, _)| p.as_str()))
        .collect();

        // Downloads run while the session is taken and checked; with `skip` they wait for
        // the checks, as existing files need none.
        let on_existing = rules.on_existing;
        let mut downloads =
            (on_existing != OnExisting::Skip).then(|| self.spawn_downloads(images.clone()));
        let mut lease = self.checkout(target).await?;
        let mut existing = HashSet::new();
        if on_existing != OnExisting::Overwrite {
            for p in &finals {
                if lease.exists(p).await? {
                    if on_existing == OnExisting::Fail {
                        return Err(Failure::permanent(
                            "FileExists",
                            format!("{p} exists on {} (onExisting: fail)", lease.target()),
                        ));
                    }
                    existing.insert(p.to_string());
                }
            }
        }
        let write_meta = metadata.as_ref().filter(|(p, _)| !existing.contains(p));
        let write_archive = archive.as_ref().filter(|(_, p, _)| !existing.contains(p));
        let write_image = |i: usize| archive.is_none() && !existing.contains(&names[i].1);
        let downloads = match downloads.take() {
            Some(d) => d,
            None => {
                // The metadata lists every image with its checksum: all are needed for it.
                let needed: Vec<Image> = images
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        write_meta.is_some() || write_archive.is_some() || write_image(*i)
                    })
                    .map(|(_, img)| img.clone())
                    .collect();
                if needed.is_empty() {
                    return Ok(UploadResult::Skipped {
                        reason: format!(
                            "all {} files exist in {} on {} (onExisting: skip)",
                            finals.len(),
                            display_dir(finals[0]),
                            lease.target()
                        ),
                    });
                }
                self.spawn_downloads(needed)
            }
        };

        let mut staged = Vec::with_capacity(finals.len());
        let staging = self
            .stage(
                &mut lease,
                downloads,
                StagePlan {
                    names: &names,
                    images: &images,
                    write_image: &write_image,
                    archive: write_archive,
                    archive_name: archive.as_ref().map(|(n, _, _)| n.as_str()),
                    metadata: write_meta,
                    time: facts.time,
                    ev,
                },
                &mut staged,
            )
            .await;
        if let Err(e) = staging {
            for s in &staged {
                lease.discard(&s.temp).await;
            }
            return Err(e);
        }
        // Renames last and in a burst: the files of this attempt appear together, the
        // metadata file (staged last) after all others.
        let mut bytes = 0;
        for (i, s) in staged.iter().enumerate() {
            if let Err(e) = lease.rename_into_place(&s.temp, &s.path, on_existing).await {
                for s in &staged[i..] {
                    lease.discard(&s.temp).await;
                }
                return Err(e);
            }
            bytes += s.bytes;
        }
        Ok(UploadResult::Uploaded {
            vin: facts.vin.clone(),
            files: staged.len() as u32,
            bytes,
            elapsed: start.elapsed(),
        })
    }

    /// Stores, under their temporary names, the images as they arrive (or the archive once
    /// all have), then the metadata file; `staged` lists what was stored, in rename order.
    async fn stage(
        &self,
        lease: &mut Lease,
        mut downloads: Downloads,
        plan: StagePlan<'_>,
        staged: &mut Vec<Staged>,
    ) -> Result<(), Failure> {
        let dir = parent(&plan.names[0].1);
        let cached = lease.ensure_dir(dir).await?;
        let position: HashMap<u32, usize> = plan
            .images
            .iter()
            .enumerate()
            .map(|(i, img)| (img.index, i))
            .collect();
        let mut listed = Vec::with_capacity(plan.images.len());
        let mut entries = Vec::new();
        while let Some(blob) = downloads.rx.recv().await {
            let blob = blob?;
            let i = position.get(&blob.index).copied().unwrap_or_default();
            let (name, final_path, temp) = &plan.names[i];
            listed.push(json!({
                "index": blob.index,
                "fileName": name,
                "bytes": blob.data.len(),
                "sha256": blob.sha256,
            }));
            if plan.archive.is_some() {
                entries.push((name.clone(), blob.data));
            } else if (plan.write_image)(i) {
                lease.stage_file(dir, cached, temp, &blob.data).await?;
                staged.push(Staged {
                    temp: temp.clone(),
                    path: final_path.clone(),
                    bytes: blob.data.len() as u64,
                });
            }
        }
        if listed.len() < downloads.expected {
            // The channel closed early without an error: the download task died.
            return Err(Failure::retry(
                "DownloadFailed",
                "the image download task ended early".to_string(),
            ));
        }
        if let Some((_, final_path, temp)) = plan.archive {
            let time = plan.time;
            let data = tokio::task::spawn_blocking(move || build_zip(entries, time))
                .await
                .map_err(|e| Failure::retry("ZipFailed", format!("zip task: {e}")))??;
            lease.stage_file(dir, cached, temp, &data).await?;
            staged.push(Staged {
                temp: temp.clone(),
                path: final_path.clone(),
                bytes: data.len() as u64,
            });
        }
        if let Some((final_path, temp)) = plan.metadata {
            let ev = plan.ev;
            let mut doc = json!({
                "id": ev.id,
                "type": ev.type_.as_str(),
                "timestamp": ev.timestamp,
                "clientId": ev.client_id,
                "userId": ev.user_id,
                "vehicle": ev.data.get("vehicle").cloned().unwrap_or(Value::Null),
                "user": ev.data.get("user").cloned().unwrap_or(Value::Null),
                "images": [],
            });
            if let Some(archive) = plan.archive_name {
                doc["archive"] = json!(archive);
            }
            doc["images"] = Value::Array(listed);
            let data = serde_json::to_vec_pretty(&doc)
                .map_err(|e| Failure::permanent("InvalidEvent", format!("metadata JSON: {e}")))?;
            lease.stage_file(dir, cached, temp, &data).await?;
            staged.push(Staged {
                temp: temp.clone(),
                path: final_path.clone(),
                bytes: data.len() as u64,
            });
        }
        Ok(())
    }

    /// Downloads `images` in index order on a task of their own, so that downloading
    /// overlaps storing; at most [`DOWNLOAD_CONCURRENCY`] run at once and a few wait done.
    fn spawn_downloads(&self, images: Vec<Image>) -> Downloads {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let expected = images.len();
        let uploader = self.clone();
        let task = tokio::spawn(async move {
            let mut blobs = futures::stream::iter(images)
                .map(|img| {
                    let uploader = uploader.clone();
                    async move { uploader.download(&img).await }
                })
                .buffered(DOWNLOAD_CONCURRENCY);
            while let Some(blob) = blobs.next().await {
                let failed = blob.is_err();
                // A closed channel: the delivery gave up.
                if tx.send(blob).await.is_err() || failed {
                    break;
                }
            }
        });
        Downloads { rx, task, expected }
    }

    /// `vehicle.deleted`: lists the vehicle's directory and deletes every entry that the
    /// rules' name templates render for this vehicle with any index, extension, date, time
    /// or event ([`Template::matches`]): a listing finds the files of every earlier upload,
    /// however many images they had, where rendering names for indexes 1..=N would need N.
    async fn delete(
        &self,
        target: &FtpTarget,
        ev: &Envelope,
        start: Instant,
    ) -> Result<UploadResult, Failure> {
        let rules = &target.rules;
        if !rules.delete_on_vehicle_deleted {
            return Ok(UploadResult::Skipped {
                reason: "rules.deleteOnVehicleDeleted is off".to_string(),
            });
        }
        let facts = Facts::of(ev)?;
        let ctx = facts.context(ev);
        let templates = Templates::parse(rules)?;
        if templates.directory.varies_per_upload() {
            return Err(Failure::permanent(
                "CannotLocateFiles",
                format!(
                    "rules.directory {:?} uses {{date}}, {{time}} or {{event}}, so the directory of earlier uploads is unknown",
                    templates.directory.source()
                ),
            ));
        }
        // Metadata first: the commit marker must not outlive the files it lists.
        let mut kinds: Vec<(&'static str, &Template)> = Vec::new();
        if let Some(t) = &templates.metadata {
            kinds.push(("metadata.fileName", t));
        }
        kinds.push(match rules.layout {
            Layout::Files => ("fileName", &templates.file),
            Layout::Zip => ("archiveName", &templates.archive),
        });
        let identifies = |t: &Template| {
            t.placeholders().any(|p| {
                matches!(
                    p,
                    Placeholder::Vin | Placeholder::Stock | Placeholder::Vehicle
                )
            })
        };
        if !identifies(&templates.directory) && !kinds.iter().all(|(_, t)| identifies(t)) {
            return Err(Failure::permanent(
                "CannotLocateFiles",
                "the rules name no vehicle ({vin}, {stock} or {vehicle} in the directory or every file name), so other vehicles' files could match".to_string(),
            ));
        }
        // Fail on values the templates need and the event lacks before connecting.
        for (field, t) in &kinds {
            t.matches(&ctx, "")
                .map_err(|e| Failure::permanent("TemplateError", format!("rules.{field}: {e}")))?;
        }
        let dir = render("directory", &templates.directory, &ctx)?;
        let dir_path = parent(&path("directory", &rules.base_directory, &dir, "x")?).to_string();

        let mut lease = self.checkout(target).await?;
        let listing = lease.list(&dir_path).await?;
        let mut deleted = 0u32;
        for (_, t) in &kinds {
            for name in &listing {
                // Checked above: matching cannot fail here.
                if t.matches(&ctx, name).unwrap_or(false) {
                    let file = child(&dir_path, name);
                    if lease.remove(&file).await? {
                        deleted += 1;
                    }
                }
            }
        }
        if !rules.directory.is_empty() && deleted > 0 {
            lease.remove_dir(&dir_path).await?;
        }
        Ok(if deleted == 0 {
            UploadResult::Skipped {
                reason: format!(
                    "no files of vehicle {} in {} on {}",
                    facts.vehicle_label(),
                    display_dir_path(&dir_path),
                    lease.target()
                ),
            }
        } else {
            UploadResult::Deleted {
                vin: facts.vin.clone(),
                files: deleted,
                elapsed: start.elapsed(),
            }
        })
    }

    /// Downloads one image within the size caps and checks its SHA-256 when given.
    async fn download(&self, img: &Image) -> Result<Blob, Failure> {
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
        http::check_literal(&self.inner.guard, &url)
            .map_err(|e| Failure::permanent(e.reason(), format!("{label}: {e}")))?;
        let cap = self.inner.max_image_bytes;
        let declared = img.bytes;
        if let Some(d) = declared.filter(|d| *d > cap) {
            return Err(Failure::permanent(
                "ImageTooLarge",
                format!("{label}: {d} bytes declared; the limit is {cap}"),
            ));
        }
        let too_big = |got: u64| match declared {
            Some(d) => Failure::permanent(
                "ImageSizeMismatch",
                format!("{label}: more than the {d} bytes the event declares ({got} so far)"),
            ),
            None => Failure::permanent(
                "ImageTooLarge",
                format!("{label}: larger than the limit of {cap} bytes ({got} so far)"),
            ),
        };
        let limit = declared.unwrap_or(cap);

        let mut response = self
            .inner
            .http
            .get(url.clone())
            .timeout(IMAGE_TIMEOUT)
            .send()
            .await
            .map_err(|e| http_failure(&label, e))?;
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
        if let Some(len) = response.content_length().filter(|l| *l > limit) {
            return Err(too_big(len));
        }
        let mut data = Vec::with_capacity(
            usize::try_from(
                declared
                    .or(response.content_length())
                    .unwrap_or(0)
                    .min(limit),
            )
            .unwrap_or(0),
        );
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| http_failure(&label, e))?
        {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_big((data.len() + chunk.len()) as u64));
            }
            digest.update(&chunk);
            data.extend_from_slice(&chunk);
        }
        if let Some(d) = declared.filter(|d| *d != data.len() as u64) {
            return Err(Failure::permanent(
                "ImageSizeMismatch",
                format!("{label}: {} bytes, the event declares {d}", data.len()),
            ));
        }
        let sha256 = hex(digest.finish().as_ref());
        if let Some(want) = &img.sha256
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
        Ok(Blob {
            index: img.index,
            data,
            sha256,
        })
    }

    /// A logged-in session for the target's endpoint: an idle pooled one that answers NOOP,
    /// or a new one, once fewer than `maxConnections` are in use.
    async fn checkout(&self, target: &FtpTarget) -> Result<Lease, Failure> {
        let ep = &target.endpoint;
        let pool = self.inner.pool(ep, target.max_connections);
        let permit = pool.permits.clone().acquire_owned().await.map_err(|_| {
            Failure::retry("Shutdown", "the FTP session pool is closed".to_string())
        })?;
        loop {
            let idle = lock(&pool.idle).pop();
            let Some(idle) = idle else { break };
            if idle.since.elapsed() >= self.inner.session_idle() {
                tokio::spawn(quit_all(vec![idle.conn]));
                continue;
            }
            let mut conn = idle.conn;
            match timeout(NOOP_TIMEOUT, conn.session.stream_mut().noop()).await {
                Ok(Ok(())) => return Ok(Lease::new(pool, conn, permit)),
                Ok(Err(e)) => {
                    tracing::debug!(server = %ep.target(), error = %ftp::describe(&e), "pooled FTP session is dead");
                }
                Err(_) => {
                    tracing::debug!(server = %ep.target(), "pooled FTP session did not answer NOOP");
                }
            }
        }
        // Checks the host again (its addresses may have changed) and connects to exactly the
        // addresses it approves; data connections are checked too.
        let session = ftp::connect(ep, &self.inner.guard)
            .await
            .map_err(|e| match e {
                ProbeError::TargetNotAllowed(_) => Failure::permanent(e.reason(), e.to_string()),
                e => connect_failure(e),
            })?;
        self.inner.sessions_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Lease::new(
            pool,
            Conn {
                session,
                dirs: HashSet::new(),
            },
            permit,
        ))
    }

    fn start_janitor(&self) {
        if self.inner.janitor.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                // Ends with the uploader.
                let Some(inner) = weak.upgrade() else { break };
                let idle = inner.session_idle();
                let expired = inner.take_idle(|i| i.since.elapsed() >= idle);
                drop(inner);
                quit_all(expired).await;
                tokio::time::sleep(JANITOR_TICK.min(idle / 2)).await;
            }
        });
    }
}

impl Inner {
    fn session_idle(&self) -> Duration {
        Duration::from_millis(self.session_idle_ms.load(Ordering::Relaxed))
    }

    fn pool(&self, ep: &FtpEndpoint, max_connections: u32) -> Arc<Pool> {
        let max = max_connections.max(1) as usize;
        let key = PoolKey::of(ep, max);
        lock(&self.pools)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    permits: Arc::new(Semaphore::new(max)),
                    max,
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Takes the idle sessions that `expired` selects, and forgets pools that are unused.
    fn take_idle(&self, expired: impl Fn(&Idle) -> bool) -> Vec<Conn> {
        let mut out = Vec::new();
        let mut pools = lock(&self.pools);
        pools.retain(|_, pool| {
            let mut idle = lock(&pool.idle);
            let (gone, keep): (Vec<Idle>, Vec<Idle>) = idle.drain(..).partition(&expired);
            *idle = keep;
            out.extend(gone.into_iter().map(|i| i.conn));
            // Only the map holds it (checkouts clone it under this lock) and no session is
            // out: dropping it loses nothing, and a later checkout makes a fresh one.
            !(idle.is_empty()
                && Arc::strong_count(pool) == 1
                && pool.permits.available_permits() == pool.max)
        });
        out
    }
}

async fn quit_all(conns: Vec<Conn>) {
    futures::future::join_all(conns.into_iter().map(|c| async move {
        // Politeness only: the socket closes when the session drops anyway.
        let _ = timeout(NOOP_TIMEOUT, c.session.quit()).await;
    }))
    .await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here is left half-updated by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions of one endpoint. Different settings (or a rotated password) make another pool,
/// so a session never outlives the configuration it was opened with.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    digest: [u8; 32],
    max: usize,
}

impl PoolKey {
    fn of(ep: &FtpEndpoint, max: usize) -> Self {
        let protocol = format!("{:?}", ep.protocol);
        let port = ep.port.to_be_bytes();
        let flags = [
            u8::from(ep.passive),
            u8::from(ep.epsv),
            u8::from(ep.nat_workaround),
        ];
        let connect = ep.connect_timeout.as_millis().to_be_bytes();
        let command = ep.command_timeout.as_millis().to_be_bytes();
        // A digest rather than the fields: the key lives long and holds no password.
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            ep.host.as_bytes(),
            &port,
            protocol.as_bytes(),
            ep.username.as_bytes(),
            ep.password.as_bytes(),
            ep.ca_pem.as_deref().unwrap_or_default(),
            &flags,
            &connect,
            &command,
        ] {
            d.update(&(part.len() as u64).to_be_bytes());
            d.update(part);
        }
        let mut digest = [0u8; 32];
        digest.copy_from_slice(d.finish().as_ref());
        PoolKey { digest, max }
    }
}

struct Pool {
    permits: Arc<Semaphore>,
    max: usize,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: Conn,
    since: std::time::Instant,
}

/// A session and the directories known to exist on it (so MKD runs once per directory).
struct Conn {
    session: Session,
    dirs: HashSet<String>,
}

/// A checked-out session. Returned to the pool on drop unless a command failed in a way
/// that leaves the connection unusable, or was cancelled half-way.
struct Lease {
    pool: Arc<Pool>,
    conn: Option<Conn>,
    /// False while a command is in flight and after a connection-level failure.
    usable: bool,
    target: String,
    command_timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Before the permit is released, so a waiter finds the session.
        if self.usable
            && let Some(conn) = self.conn.take()
        {
            lock(&self.pool.idle).push(Idle {
                conn,
                since: std::time::Instant::now(),
            });
        }
    }
}

/// What [`Uploader::stage`] works from.
struct StagePlan<'a> {
    /// Per image, in index order: file (or entry) name, final path, temporary path.
    names: &'a [(String, String, String)],
    images: &'a [Image],
    /// Whether image `i` is stored as a file of its own.
    write_image: &'a (dyn Fn(usize) -> bool + Send + Sync),
    /// The archive to write, as for `names`.
    archive: Option<&'a (String, String, String)>,
    /// The archive's name for the metadata file, also when the archive is not rewritten.
    archive_name: Option<&'a str>,
    /// The metadata file to write: final and temporary path.
    metadata: Option<&'a (String, String)>,
    time: Timestamp,
    ev: &'a Envelope,
}

/// A file stored under its temporary name, waiting for its rename.
struct Staged {
    temp: String,
    path: String,
    bytes: u64,
}

/// Images arriving from [`Uploader::spawn_downloads`]; dropping it stops the downloads.
struct Downloads {
    rx: tokio::sync::mpsc::Receiver<Result<Blob, Failure>>,
    task: tokio::task::JoinHandle<()>,
    expected: usize,
}

impl Drop for Downloads {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lease {
    fn new(pool: Arc<Pool>, conn: Conn, permit: OwnedSemaphorePermit) -> Self {
        Lease {
            target: conn.session.target().to_string(),
            command_timeout: conn.session.command_timeout(),
            pool,
            conn: Some(conn),
            usable: true,
            _permit: permit,
        }
    }

    fn target(&self) -> &str {
        &self.target
    }

    fn conn(&mut self) -> Result<&mut Conn, Failure> {
        let target = &self.target;
        self.conn.as_mut().ok_or_else(|| closed(target))
    }

    /// One control command, bounded by the command timeout.
    async fn cmd<T, F>(&mut self, what: &'static str, path: &str, op: F) -> Result<T, FtpFailure>
    where
        F: for<'a> FnOnce(
            &'a mut FtpStream,
        ) -> futures::future::BoxFuture<'a, suppaftp::FtpResult<T>>,
    {
        let t = self.command_timeout;
        let target = self.target.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(FtpFailure::Other(closed(&target)));
        };
        self.usable = false;
        let stream = conn.session.stream_mut();
        let result = match timeout(t, op(stream)).await {
            Ok(r) => r,
            Err(_) => return Err(FtpFailure::Other(timed_out(&target, what, path, t))),
        };
        match result {
            Ok(v) => {
                self.usable = true;
                Ok(v)
            }
            Err(e) => {
                let f = ftp_failure(&target, what, path, e);
                self.usable = f.session_usable();
                Err(f)
            }
        }
    }

    /// STOR of `data` to `path`, each step bounded by the command timeout.
    async fn store(&mut self, path: &str, data: &[u8]) -> Result<(), FtpFailure> {
        const WHAT: &str = "storing";
        let t = self.command_timeout;
        let target = self.target.clone();
        let Some(conn) = self.conn.as_mut() else {
            return Err(FtpFailure::Other(closed(&target)));
        };
        self.usable = false;
        let stream = conn.session.stream_mut();
        let fail = |e| ftp_failure(&target, WHAT, path, e);
        let mut transfer = match timeout(t, stream.put_with_stream(path)).await {
            Ok(Ok(transfer)) => transfer,
            Ok(Err(e)) => {
                let f = fail(e);
                self.usable = f.session_usable();
                return Err(f);
            }
            Err(_) => return Err(FtpFailure::Other(timed_out(&target, WHAT, path, t))),
        };
        for chunk in data.chunks(WRITE_CHUNK) {
            match timeout(t, transfer.write_all(chunk)).await {
                Ok(Ok(())) => {}
                // The data connection is gone; what the server kept is a partial temporary.
                Ok(Err(e)) => return Err(fail(FtpError::ConnectionError(e))),
                Err(_) => return Err(FtpFailure::Other(timed_out(&target, WHAT, path, t))),
            }
        }
        match timeout(t, transfer.finish()).await {
            Ok(Ok(())) => {
                self.usable = true;
                Ok(())
            }
            Ok(Err(e)) => {
                let f = fail(e);
                self.usable = f.session_usable();
                Err(f)
            }
            Err(_) => Err(FtpFailure::Other(timed_out(&target, WHAT, path, t))),
        }
    }

    /// Creates `dir` and its parents unless known to exist. Replies to MKD are ignored: the
    /// usual one is "exists", and any other problem shows in the STOR that follows. Returns
    /// whether the directory was only known from the cache.
    async fn ensure_dir(&mut self, dir: &str) -> Result<bool, Failure> {
        if dir.is_empty() || dir == "/" || self.conn()?.dirs.contains(dir) {
            return Ok(!dir.is_empty() && dir != "/");
        }
        let mut prefixes = Vec::new();
        for (i, c) in dir.char_indices().skip(1) {
            if c == '/' {
                prefixes.push(&dir[..i]);
            }
        }
        prefixes.push(dir);
        for prefix in prefixes {
            if self.conn()?.dirs.contains(prefix) {
                continue;
            }
            match self
                .cmd("creating directory", prefix, {
                    let p = prefix.to_owned();
                    move |s| Box::pin(s.mkdir(p))
                })
                .await
            {
                Ok(()) | Err(FtpFailure::Reply { .. }) => {}
                Err(FtpFailure::Other(f)) => return Err(f),
            }
            self.conn()?.dirs.insert(prefix.to_string());
        }
        Ok(false)
    }

    /// Whether a file exists: SIZE, or a listing of its directory where SIZE is not
    /// implemented.
    async fn exists(&mut self, path: &str) -> Result<bool, Failure> {
        match self
            .cmd("checking", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.size(p))
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(FtpFailure::Reply { code: 550, .. }) => Ok(false),
            Err(FtpFailure::Reply {
                code: 500 | 501 | 502 | 504,
                ..
            }) => {
                let name = path.rsplit('/').next().unwrap_or(path);
                Ok(self.list(parent(path)).await?.iter().any(|n| n == name))
            }
            Err(f) => Err(f.into()),
        }
    }

    /// Names in `dir` (last path segments; servers differ in what NLST prints). A missing
    /// or empty directory lists nothing.
    async fn list(&mut self, dir: &str) -> Result<Vec<String>, Failure> {
        let arg = (!dir.is_empty()).then_some(dir);
        match self
            .cmd("listing", dir, {
                let arg = arg.map(str::to_owned);
                move |s| Box::pin(async move { s.nlst(arg.as_deref()).await })
            })
            .await
        {
            Ok(lines) => Ok(lines
                .iter()
                .filter_map(|l| l.trim_end().rsplit('/').next())
                .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                .map(str::to_string)
                .collect()),
            // "No files found" (450/550) is how several servers list an empty directory.
            Err(FtpFailure::Reply {
                code: 450 | 550, ..
            }) => Ok(Vec::new()),
            Err(f) => Err(f.into()),
        }
    }

    /// DELE; false when there was no such file.
    async fn remove(&mut self, path: &str) -> Result<bool, Failure> {
        match self
            .cmd("deleting", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.rm(p))
            })
            .await
        {
            Ok(()) => Ok(true),
            Err(FtpFailure::Reply { code: 550, .. }) => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// RMD, ignoring refusals (typically: not empty, because other files live there).
    async fn remove_dir(&mut self, dir: &str) -> Result<(), Failure> {
        match self
            .cmd("removing directory", dir, {
                let d = dir.to_owned();
                move |s| Box::pin(s.rmdir(d))
            })
            .await
        {
            Ok(()) | Err(FtpFailure::Reply { .. }) => Ok(()),
            Err(FtpFailure::Other(f)) => Err(f),
        }
    }

    /// Deletes a temporary after a failure, if the session still works.
    async fn discard(&mut self, temp: &str) {
        if self.usable
            && let Err(e) = self.remove(temp).await
        {
            tracing::debug!(server = %self.target, path = temp, error = %e.message, "could not delete a temporary file");
        }
    }

    /// STOR of a temporary. A directory known from this session's cache may have been
    /// removed since: on a 55x reply it is created again and the STOR repeated once.
    async fn stage_file(
        &mut self,
        dir: &str,
        cached: bool,
        temp: &str,
        data: &[u8],
    ) -> Result<(), Failure> {
        match self.store(temp, data).await {
            Ok(()) => Ok(()),
            Err(FtpFailure::Reply { code, .. }) if cached && (550..=553).contains(&code) => {
                self.conn()?.dirs.clear();
                self.ensure_dir(dir).await?;
                self.store(temp, data).await.map_err(Failure::from)
            }
            Err(e) => {
                let e = Failure::from(e);
                // A failed STOR may leave a partial temporary behind.
                self.discard(temp).await;
                Err(e)
            }
        }
    }

    /// RNFR/RNTO. With `overwrite`, servers that refuse to rename over an existing file
    /// (Windows ones) get the file deleted first; POSIX servers (vsftpd, libunftp) replace
    /// it atomically on the first try.
    async fn rename_into_place(
        &mut self,
        temp: &str,
        path: &str,
        on_existing: OnExisting,
    ) -> Result<(), Failure> {
        let first = self
            .cmd("renaming into place", path, {
                let (from, to) = (temp.to_owned(), path.to_owned());
                move |s| Box::pin(s.rename(from, to))
            })
            .await;
        match first {
            Ok(()) => Ok(()),
            Err(FtpFailure::Reply { code, .. })
                if on_existing == OnExisting::Overwrite && (500..600).contains(&code) =>
            {
                self.remove(path).await?;
                self.cmd("renaming into place", path, {
                    let (from, to) = (temp.to_owned(), path.to_owned());
                    move |s| Box::pin(s.rename(from, to))
                })
                .await
                .map_err(Failure::from)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A failed FTP command: a reply (the session is still usable) or anything else.
#[derive(Debug)]
enum FtpFailure {
    Reply { code: u32, failure: Failure },
    Other(Failure),
}

impl FtpFailure {
    fn session_usable(&self) -> bool {
        // 421: the server is closing the connection.
        matches!(self, FtpFailure::Reply { code, .. } if *code != 421)
    }
}

impl From<FtpFailure> for Failure {
    fn from(f: FtpFailure) -> Failure {
        match f {
            FtpFailure::Reply { failure, .. } | FtpFailure::Other(failure) => failure,
        }
    }
}

fn ftp_failure(target: &str, what: &str, path: &str, e: FtpError) -> FtpFailure {
    let detail = ftp::describe(&e);
    let message = format!("{what} {path} on {target}: {detail}");
    match e {
        FtpError::UnexpectedResponse(r) => {
            let code = reply_code(&r);
            let failure = match code {
                421 => Failure::retry("ServiceUnavailable", message),
                400..=499 => Failure::retry("FtpTransientReply", message),
                530 => Failure::permanent("NotLoggedIn", message),
                550 => Failure::permanent("FileUnavailable", message),
                552 => Failure::permanent("StorageExceeded", message),
                553 => Failure::permanent("FileNameNotAllowed", message),
                500..=599 => Failure::permanent("FtpPermanentReply", message),
                _ => return FtpFailure::Other(Failure::retry("ProtocolError", message)),
            };
            FtpFailure::Reply { code, failure }
        }
        FtpError::ConnectionError(_) => {
            FtpFailure::Other(Failure::retry("ConnectionLost", message))
        }
        FtpError::SecureError(_) => FtpFailure::Other(Failure::retry("TlsFailed", message)),
        _ => FtpFailure::Other(Failure::retry("ProtocolError", message)),
    }
}

/// The reply code; suppaftp maps codes it has no name for to 0, so read those from the text.
fn reply_code(r: &suppaftp::types::Response) -> u32 {
    match r.status.code() {
        0 => r
            .body
            .get(..3)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        code => code,
    }
}

/// Only after the lease dropped its session, which it does not while in use.
fn closed(target: &str) -> Failure {
    Failure::retry(
        "ConnectionLost",
        format!("the session with {target} is closed"),
    )
}

fn timed_out(target: &str, what: &str, path: &str, after: Duration) -> Failure {
    Failure::retry(
        "Timeout",
        format!("no answer from {target} within {after:?} while {what} {path}"),
    )
}

/// Connecting and logging in fail for reasons of the connection, not of the event: all are
/// retried, so events wait out a wrong password or certificate until it is fixed (the
/// `Connected` condition says what) or the retry policy gives up.
fn connect_failure(e: ProbeError) -> Failure {
    Failure::retry(e.reason(), e.to_string())
}

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

/// A failure on the way; becomes [`UploadResult::Retryable`] or [`UploadResult::Permanent`].
#[derive(Debug)]
struct Failure {
    retryable: bool,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn retry(reason: &'static str, message: String) -> Self {
        Failure {
            retryable: true,
            reason,
            message,
        }
    }

    fn permanent(reason: &'static str, message: String) -> Self {
        Failure {
            retryable: false,
            reason,
            message,
        }
    }

    fn into_result(self) -> UploadResult {
        let (reason, message) = (self.reason.to_string(), self.message);
        if self.retryable {
            UploadResult::Retryable { reason, message }
        } else {
            UploadResult::Permanent { reason, message }
        }
    }
}

/// A downloaded, verified image.
struct Blob {
    index: u32,
    data: Vec<u8>,
    sha256: String,
}

/// `data.vehicle` fields that names are made of.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VehicleFields {
    id: Option<String>,
    vin: Option<String>,
    stock_number: Option<String>,
    make: Option<String>,
    model: Option<String>,
    year: Option<u16>,
}

struct Facts {
    vin: Option<String>,
    vehicle: VehicleFields,
    time: Timestamp,
}

impl Facts {
    fn of(ev: &Envelope) -> Result<Facts, Failure> {
        let vehicle: VehicleFields = match ev.data.get("vehicle") {
            None | Some(Value::Null) => VehicleFields::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Failure::permanent("InvalidEvent", format!("data.vehicle: {e}")))?,
        };
        let time = ev.timestamp.parse::<Timestamp>().map_err(|e| {
            Failure::permanent("InvalidEvent", format!("timestamp {:?}: {e}", ev.timestamp))
        })?;
        Ok(Facts {
            vin: vehicle.vin.clone(),
            vehicle,
            time,
        })
    }

    fn context<'a>(&'a self, ev: &'a Envelope) -> NamingContext<'a> {
        let v = &self.vehicle;
        NamingContext {
            vin: v.vin.as_deref(),
            stock: v.stock_number.as_deref(),
            index: None,
            ext: None,
            client: &ev.client_id,
            user: ev.user_id.as_deref(),
            vehicle: v.id.as_deref(),
            make: v.make.as_deref(),
            model: v.model.as_deref(),
            year: v.year,
            event: ev.type_,
            time: self.time,
        }
    }

    fn vehicle_label(&self) -> String {
        self.vehicle
            .vin
            .clone()
            .or_else(|| self.vehicle.id.clone())
            .unwrap_or_else(|| "?".to_string())
    }
}

struct Templates {
    directory: Template,
    file: Template,
    archive: Template,
    metadata: Option<Template>,
}

impl Templates {
    fn parse(rules: &FtpRules) -> Result<Templates, Failure> {
        let parse = |field: &str, source: &str| {
            Template::parse(source)
                .map_err(|e| Failure::permanent("InvalidRules", format!("rules.{field}: {e}")))
        };
        Ok(Templates {
            directory: parse("directory", &rules.directory)?,
            file: parse("fileName", &rules.file_name)?,
            archive: parse("archiveName", &rules.archive_name)?,
            metadata: match &rules.metadata {
                Some(m) => Some(parse("metadata.fileName", &m.file_name)?),
                None => None,
            },
        })
    }
}

fn render(field: &str, t: &Template, ctx: &NamingContext<'_>) -> Result<String, Failure> {
    t.render(ctx)
        .map_err(|e| Failure::permanent("TemplateError", format!("rules.{field}: {e}")))
}

fn path(field: &str, base: &str, dir: &str, name: &str) -> Result<String, Failure> {
    join_path(base, dir, name)
        .map_err(|e| Failure::permanent("UnsafePath", format!("rules.{field}: {e}")))
}

/// The directory part of a path from [`join_path`] (empty: the login directory).
fn parent(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some(("", _)) => "/",
        Some((dir, _)) => dir,
        None => "",
    }
}

fn child(dir: &str, name: &str) -> String {
    match dir {
        "" => name.to_string(),
        "/" => format!("/{name}"),
        d => format!("{d}/{name}"),
    }
}

fn display_dir(file: &str) -> &str {
    display_dir_path(parent(file))
}

fn display_dir_path(dir: &str) -> &str {
    if dir.is_empty() {
        "the login directory"
    } else {
        dir
    }
}

/// `.vc-tmp-<event id>-<suffix>`: per event and file, so a retry replaces its own leftover.
fn temp_name(event_id: &str, suffix: &str) -> String {
    // The id is sanitised like template values (no ':' for Windows servers).
    format!("{TEMP_PREFIX}{}-{suffix}", sanitize(event_id))
}

/// The image's file extension: from the URL path if it names an image type, else from
/// `contentType`, else `jpg`. JPEG spellings become `jpg`, TIFF ones `tif`.
fn extension(img: &Image) -> &'static str {
    let from_url = url::Url::parse(&img.url).ok().and_then(|u| {
        let last = u.path_segments()?.next_back()?.to_string();
        let (_, ext) = last.rsplit_once('.')?;
        known_extension(&ext.to_ascii_lowercase())
    });
    let from_type = || {
        let ct = img.content_type.as_deref()?;
        let essence = ct.split(';').next()?.trim().to_ascii_lowercase();
        known_extension(essence.strip_prefix("image/")?)
    };
    from_url.or_else(from_type).unwrap_or("jpg")
}

fn known_extension(s: &str) -> Option<&'static str> {
    Some(match s {
        "jpg" | "jpeg" | "jpe" | "jfif" | "pjpeg" => "jpg",
        "png" => "png",
        "webp" => "webp",
        "gif" => "gif",
        "avif" => "avif",
        "heic" => "heic",
        "heif" => "heif",
        "tif" | "tiff" => "tif",
        "bmp" => "bmp",
        _ => return None,
    })
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

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One STORED (uncompressed: the images are compressed already) archive with the entries in
/// the given order, dated with the event time.
fn build_zip(entries: Vec<(String, Vec<u8>)>, time: Timestamp) -> Result<Vec<u8>, Failure> {
    use zip::write::SimpleFileOptions;
    let fail = |e: &dyn std::fmt::Display| {
        Failure::permanent("ZipFailed", format!("building the archive: {e}"))
    };
    let t = Offset::UTC.to_datetime(time);
    let when = zip::DateTime::from_date_and_time(
        u16::try_from(t.year()).unwrap_or(1980),
        t.month().unsigned_abs(),
        t.day().unsigned_abs(),
        t.hour().unsigned_abs(),
        t.minute().unsigned_abs(),
        t.second().unsigned_abs(),
    )
    .unwrap_or_default();
    let size: usize = entries
        .iter()
        .map(|(n, d)| d.len() + 2 * n.len() + 128)
        .sum();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::with_capacity(size + 64)));
    for (name, data) in entries {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(when)
            .unix_permissions(0o644)
            .large_file(data.len() as u64 >= u64::from(u32::MAX));
        w.start_file(name.as_str(), options).map_err(|e| fail(&e))?;
        w.write_all(&data).map_err(|e| fail(&e))?;
    }
    Ok(w.finish().map_err(|e| fail(&e))?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(url: &str, content_type: Option<&str>) -> Image {
        Image {
            index: 1,
            url: url.to_string(),
            content_type: content_type.map(str::to_string),
            bytes: None,
            sha256: None,
        }
    }

    #[test]
    fn extension_from_url_then_content_type_then_jpg() {
        assert_eq!(extension(&image("https://c.example/a/1.PNG", None)), "png");
        assert_eq!(
            extension(&image("https://c.example/1.jpeg?sig=x", Some("image/png"))),
            "jpg"
        );
        assert_eq!(
            extension(&image("https://c.example/img?id=1", Some("image/webp"))),
            "webp"
        );
        assert_eq!(
            extension(&image("https://c.example/x.php", Some("IMAGE/TIFF; q=1"))),
            "tif"
        );
        assert_eq!(extension(&image("https://c.example/x", None)), "jpg");
        assert_eq!(
            extension(&image("https://c.example/x", Some("application/pdf"))),
            "jpg"
        );
    }

    #[test]
    fn temp_names_are_hidden_single_segments() {
        let t = temp_name("evt:01/../x", "3");
        assert!(t.starts_with(".vc-tmp-"), "{t}");
        assert!(
            !t.contains('/') && !t.contains(':') && !t.contains(".."),
            "{t}"
        );
        assert!(join_path("/in", "", &t).is_ok());
    }

    #[test]
    fn parents_and_children() {
        assert_eq!(parent("/in/a.jpg"), "/in");
        assert_eq!(parent("/a.jpg"), "/");
        assert_eq!(parent("a.jpg"), "");
        assert_eq!(parent("in/x/a.jpg"), "in/x");
        assert_eq!(child("", "a"), "a");
        assert_eq!(child("/", "a"), "/a");
        assert_eq!(child("/in", "a"), "/in/a");
    }

    #[test]
    fn shown_urls_drop_secrets() {
        let u = url::Url::parse("https://u:p@cdn.example/v/1.jpg?sig=abc#f").unwrap();
        assert_eq!(shown_url(&u), "https://cdn.example/v/1.jpg");
    }

    #[test]
    fn reply_codes_without_a_name_are_read_from_the_text() {
        let r = suppaftp::types::Response::new(
            suppaftp::Status::Unknown,
            b"554 Requested action not taken\r\n".to_vec(),
        );
        assert_eq!(reply_code(&r), 554);
        let f = ftp_failure("h:21", "storing", "/a", FtpError::UnexpectedResponse(r));
        assert!(matches!(&f, FtpFailure::Reply { code: 554, failure } if !failure.retryable));
        let r = suppaftp::types::Response::new(
            suppaftp::Status::ActionAborted,
            b"451 Local error\r\n".to_vec(),
        );
        let f = ftp_failure("h:21", "storing", "/a", FtpError::UnexpectedResponse(r));
        assert!(matches!(&f, FtpFailure::Reply { code: 451, failure } if failure.retryable));
        let f = ftp_failure(
            "h:21",
            "storing",
            "/a",
            FtpError::ConnectionError(std::io::ErrorKind::BrokenPipe.into()),
        );
        assert!(!f.session_usable());
    }

    #[test]
    fn zip_is_stored_in_order() {
        let entries = vec![
            ("b_01.jpg".to_string(), vec![1u8; 1000]),
            ("a_02.jpg".to_string(), vec![2u8; 10]),
        ];
        let data = build_zip(entries, Timestamp::UNIX_EPOCH).unwrap();
        let mut z = zip::ZipArchive::new(Cursor::new(data)).unwrap();
        assert_eq!(z.len(), 2);
        let first = z.by_index(0).unwrap();
        assert_eq!(first.name().unwrap(), "b_01.jpg");
        assert_eq!(first.compression(), zip::CompressionMethod::Stored);
        assert_eq!(first.size(), 1000);
    }

    #[test]
    fn deliver_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let Ok(uploader) = Uploader::new(TargetGuard::default(), 1) else {
            panic!("uploader")
        };
        let target = FtpTarget {
            endpoint: FtpEndpoint {
                host: "ftp.example.com".into(),
                port: 21,
                protocol: crate::api::ftp::FtpProtocol::Ftp,
                username: "u".into(),
                password: "p".into(),
                ca_pem: None,
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                passive: true,
                epsv: false,
                nat_workaround: true,
            },
            rules: FtpRules::default(),
            retry: Default::default(),
            max_connections: 1,
        };
        let ev = Envelope {
            id: "e".into(),
            type_: EventType::VehicleProcessed,
            timestamp: "2026-01-01T00:00:00Z".into(),
            client_id: "c".into(),
            user_id: None,
            data: json!({}),
        };
        let fut = uploader.deliver(&target, &ev);
        assert_send(&fut);
    }
}
