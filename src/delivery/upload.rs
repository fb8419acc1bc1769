//! FTP uploads: one event for one FtpConnection puts the vehicle's images (one file each, or
//! one zip archive) and an optional metadata JSON on the client's server, named by its rules;
//! `vehicle.deleted` removes exactly the files recorded for that vehicle when the rules ask
//! for it (never files found by a name pattern, which can belong to another vehicle).
//!
//! Atomic to the receiver (SPEC "Delivery semantics"): every file is stored under a temporary
//! name (`.vc-tmp-<unix time>-<attempt key>-<unique>-<n>`, a dot file that most pollers
//! ignore) in its final directory and renamed once complete, so a final name only ever holds a
//! whole file. Renames wait until every image of the event is downloaded, verified (size,
//! SHA-256) and stored: a bad image, or a connection that breaks while storing, leaves only
//! temporaries, never half a vehicle. The metadata file is renamed last and marks the vehicle
//! complete. Temporaries are unique per attempt; the first session that stores into a
//! directory deletes the ones a dead session left there (older than [`STALE_TEMP_AFTER`], or
//! of an earlier attempt of the same event and server).
//!
//! Memory does not grow with the number or size of images: each image is streamed from its
//! HTTP response to the FTP data connection (or, in the `zip` layout, through the archive
//! writer into the data connection) a chunk at a time, hashed on the way.
//!
//! Sessions are pooled per endpoint (server, account and settings): at most
//! `maxConnections` at once, reused after a NOOP, closed after [`SESSION_IDLE`] unused
//! (adjustable with [`Uploader::set_session_idle`]).

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::Offset;
use serde::Deserialize;
use serde_json::{Value, json};
use suppaftp::tokio::{AsyncRustlsStream, TransferStream};
use suppaftp::{FtpError, Status};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};

use crate::api::EventType;
use crate::api::ftp::{FtpRules, Layout, OnExisting};
use crate::delivery::ftp::{self, FtpEndpoint, FtpStream, ProbeError, Session};
use crate::delivery::http::{self, GuardedResolver};
use crate::ingest::Envelope;
use crate::ingest::envelope::Image;
use crate::naming::{NamingContext, Template, join_path};
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
/// Longest image request until its headers, and longest image body after that.
const IMAGE_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_REDIRECTS: usize = 5;
/// Size of each write to an FTP data connection; each is bounded by the command timeout.
const WRITE_CHUNK: usize = 64 * 1024;
const TEMP_PREFIX: &str = ".vc-tmp-";
/// A temporary older than this is a dead session's leftover: no delivery runs this long.
pub const STALE_TEMP_AFTER: Duration = Duration::from_secs(6 * 3600);
/// Directory listings are foreign input: at most this many bytes and entries are read, and
/// the whole listing within the command timeout.
pub const MAX_LISTING_BYTES: usize = 8 << 20;
pub const MAX_LISTING_ENTRIES: usize = 100_000;
/// Longest listing line kept; longer ones name no file of ours (segments are <= 255 bytes).
const MAX_LISTING_LINE: usize = 4096;

/// What one delivery did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadResult {
    /// Files were written (images or the archive, and the metadata file).
    Uploaded {
        vin: Option<String>,
        files: u32,
        bytes: u64,
        elapsed: Duration,
        /// Every final remote path this delivery wrote, metadata file included: what a later
        /// `vehicle.deleted` is to remove.
        paths: Vec<String>,
    },
    /// `vehicle.deleted`: the vehicle's recorded files were removed.
    Deleted {
        vin: Option<String>,
        files: u32,
        elapsed: Duration,
        /// The recorded paths that were removed (those already gone are not listed).
        paths: Vec<String>,
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
    /// `vehicle.deleted` removes `uploaded`, the paths recorded for that vehicle at this
    /// target (from earlier [`UploadResult::Uploaded`]), when `rules.deleteOnVehicleDeleted`.
    pub async fn deliver(
        &self,
        target: &FtpTarget,
        event: &Envelope,
        uploaded: &[String],
    ) -> UploadResult {
        let start = Instant::now();
        self.start_janitor();
        let outcome = match event.type_ {
            EventType::VehicleDeleted => self.delete(target, event, uploaded, start).await,
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
        let temps = TempNames::new(&ev.id, &target.endpoint);
        let temp = |field, suffix: &str| path(field, base, &dir, &temps.name(suffix));
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

        let on_existing = rules.on_existing;
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
        // The metadata lists every image with its checksum: all are needed for it.
        if write_meta.is_none() && write_archive.is_none() && !(0..images.len()).any(write_image) {
            return Ok(UploadResult::Skipped {
                reason: format!(
                    "all {} files exist in {} on {} (onExisting: skip)",
                    finals.len(),
                    display_dir(finals[0]),
                    lease.target()
                ),
            });
        }

        let mut staged = Vec::with_capacity(finals.len());
        let staging = self
            .stage(
                &mut lease,
                StagePlan {
                    names: &names,
                    images: &images,
                    write_image: &write_image,
                    archive: write_archive,
                    archive_name: archive.as_ref().map(|(n, _, _)| n.as_str()),
                    metadata: write_meta,
                    time: facts.time,
                    ev,
                    temps: &temps,
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
            paths: staged.into_iter().map(|s| s.path).collect(),
        })
    }

    /// Stores, under their temporary names, the images one after the other as they download
    /// (or the archive of them), then the metadata file; `staged` lists what was stored, in
    /// rename order, including a temporary whose transfer failed (so it is discarded).
    async fn stage(
        &self,
        lease: &mut Lease,
        plan: StagePlan<'_>,
        staged: &mut Vec<Staged>,
    ) -> Result<(), Failure> {
        let dir = parent(&plan.names[0].1);
        let known = lease.ensure_dir(dir).await?;
        lease.clean_temps(dir, known, plan.temps).await?;
        let cached = known == DirState::Cached;
        let mut listed = Vec::with_capacity(plan.images.len());
        let mut zip = match plan.archive {
            Some((_, final_path, temp)) => {
                let transfer = lease.open_store(dir, cached, temp).await;
                staged.push(Staged {
                    temp: temp.clone(),
                    path: final_path.clone(),
                    bytes: 0,
                });
                Some((transfer?, ZipStream::new(plan.time)))
            }
            None => None,
        };
        for (i, img) in plan.images.iter().enumerate() {
            let (name, final_path, temp) = &plan.names[i];
            let copied = match zip.as_mut() {
                Some((transfer, archive)) => {
                    let entry = async {
                        let mut body = self.open_image(img).await?;
                        let header = archive.start(name, body.limit)?;
                        lease.write(transfer, &header).await?;
                        body.copy(lease, transfer, Some(archive)).await
                    };
                    match entry.await {
                        Ok(c) => c,
                        Err(e) => {
                            // Closed cleanly, so the session stays usable and the partial
                            // archive can be deleted.
                            if let Some((transfer, _)) = zip.take() {
                                let _ = lease.close_store(transfer).await;
                            }
                            return Err(e);
                        }
                    }
                }
                None if (plan.write_image)(i) => {
                    // The response first: an image that is not there creates no temporary.
                    let mut body = self.open_image(img).await?;
                    let transfer = lease.open_store(dir, cached, temp).await;
                    staged.push(Staged {
                        temp: temp.clone(),
                        path: final_path.clone(),
                        bytes: 0,
                    });
                    let mut transfer = transfer?;
                    let copied = body.copy(lease, &mut transfer, None).await;
                    // Closed cleanly also after a bad image, so the session stays usable and
                    // the temporary can be deleted.
                    let closed = lease.close_store(transfer).await;
                    let copied = copied?;
                    closed?;
                    if let Some(s) = staged.last_mut() {
                        s.bytes = copied.0;
                    }
                    copied
                }
                // Only its size and checksum, for the metadata file.
                None if plan.metadata.is_some() => self.open_image(img).await?.drain().await?,
                // Exists, and no metadata file lists it.
                None => continue,
            };
            let (bytes, sha256) = copied;
            listed.push(json!({
                "index": img.index,
                "fileName": name,
                "bytes": bytes,
                "sha256": sha256,
            }));
        }
        if let Some((mut transfer, archive)) = zip {
            let tail = archive.finish();
            let written = match tail {
                Ok((tail, total)) => lease.write(&mut transfer, &tail).await.map(|()| total),
                Err(e) => Err(e),
            };
            let closed = lease.close_store(transfer).await;
            let total = written?;
            closed?;
            if let Some(s) = staged.last_mut() {
                s.bytes = total;
            }
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
            let transfer = lease.open_store(dir, cached, temp).await;
            staged.push(Staged {
                temp: temp.clone(),
                path: final_path.clone(),
                bytes: data.len() as u64,
            });
            let mut transfer = transfer?;
            let written = lease.write(&mut transfer, &data).await;
            let closed = lease.close_store(transfer).await;
            written?;
            closed?;
        }
        Ok(())
    }

    /// `vehicle.deleted`: deletes exactly `recorded`, the paths uploads wrote for this vehicle
    /// at this target, then the per-vehicle directories they leave empty. Never by pattern:
    /// with names like `{stock}{index}.{ext}`, vehicle A1's pattern matches A12's files.
    async fn delete(
        &self,
        target: &FtpTarget,
        ev: &Envelope,
        recorded: &[String],
        start: Instant,
    ) -> Result<UploadResult, Failure> {
        let rules = &target.rules;
        if !rules.delete_on_vehicle_deleted {
            return Ok(UploadResult::Skipped {
                reason: "rules.deleteOnVehicleDeleted is off".to_string(),
            });
        }
        let facts = Facts::of(ev)?;
        let mut paths: Vec<&str> = Vec::with_capacity(recorded.len());
        for p in recorded {
            // Our own record, but checked like any path we act on.
            if is_safe_recorded_path(p) {
                if !paths.contains(&p.as_str()) {
                    paths.push(p);
                }
            } else {
                tracing::warn!(path = %p, "recorded FTP path is not a plain path; not deleted");
            }
        }
        if paths.is_empty() {
            return Ok(UploadResult::Skipped {
                reason: format!(
                    "no files of vehicle {} are recorded for {}",
                    facts.vehicle_label(),
                    target.endpoint.target()
                ),
            });
        }
        // Metadata files were renamed last, so they come last in each record: delete in
        // reverse, so the commit marker never outlives the files it lists.
        paths.reverse();
        let mut lease = self.checkout(target).await?;
        let mut removed = Vec::new();
        for p in &paths {
            if lease.remove(p).await? {
                removed.push(p.to_string());
            }
        }
        // Per-vehicle directories only: never the base directory, nor anything above it.
        if !rules.directory.is_empty() {
            let base = parent(&path("baseDirectory", &rules.base_directory, "", "x")?).to_string();
            let mut dirs: Vec<&str> = paths.iter().map(|p| parent(p)).collect();
            dirs.sort_unstable();
            dirs.dedup();
            for d in dirs {
                if is_below(d, &base) {
                    lease.remove_dir(d).await?;
                }
            }
        }
        Ok(if removed.is_empty() {
            UploadResult::Skipped {
                reason: format!(
                    "the {} recorded files of vehicle {} are already gone from {}",
                    paths.len(),
                    facts.vehicle_label(),
                    lease.target()
                ),
            }
        } else {
            UploadResult::Deleted {
                vin: facts.vin.clone(),
                files: removed.len() as u32,
                elapsed: start.elapsed(),
                paths: removed,
            }
        })
    }

    /// Requests one image and checks what can be checked before its body: the URL, the
    /// guard, the status and the announced length.
    async fn open_image(&self, img: &Image) -> Result<ImageBody, Failure> {
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
        let request = self.inner.http.get(url.clone()).send();
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
        Ok(Lease::new(pool, Conn::new(session), permit))
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
    /// Directories whose stale temporaries this session has deleted.
    cleaned: HashSet<String>,
}

impl Conn {
    fn new(session: Session) -> Self {
        Conn {
            session,
            dirs: HashSet::new(),
            cleaned: HashSet::new(),
        }
    }
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
    temps: &'a TempNames,
}

/// A file stored under its temporary name, waiting for its rename.
struct Staged {
    temp: String,
    path: String,
    bytes: u64,
}

/// An open STOR.
struct Transfer {
    stream: TransferStream<AsyncRustlsStream>,
    path: String,
    /// A write failed or timed out: the data connection is in an unknown state.
    broken: bool,
}

/// What [`Lease::ensure_dir`] knew of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirState {
    /// Known from this session's cache (it may have been removed since).
    Cached,
    /// Created just now: it is empty.
    Created,
    /// Existed before (MKD refused), or the login directory.
    Existing,
}

/// The response of one image, read a chunk at a time within the size cap and the image
/// timeout, hashed as it goes.
struct ImageBody {
    response: reqwest::Response,
    label: String,
    declared: Option<u64>,
    cap: u64,
    /// Most bytes accepted: the declared size, else the cap.
    limit: u64,
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
    async fn copy(
        &mut self,
        lease: &mut Lease,
        transfer: &mut Transfer,
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

    /// Reads the body for its size and checksum only.
    async fn drain(mut self) -> Result<(u64, String), Failure> {
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

/// Output of the zip writer, taken after each step and sent on.
#[derive(Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A STORED archive (the images are compressed already) written as a stream, entries in the
/// order given and dated with the event time. A stream cannot go back to fill in an entry's
/// CRC and size, so each entry ends with a data descriptor (APPNOTE 4.3.9), which readers
/// take from the central directory.
struct ZipStream {
    zip: zip::ZipWriter<zip::write::StreamWriter<SharedBuf>>,
    out: SharedBuf,
    when: zip::DateTime,
    total: u64,
}

impl ZipStream {
    fn new(time: Timestamp) -> Self {
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
        let out = SharedBuf::default();
        ZipStream {
            zip: zip::ZipWriter::new_stream(out.clone()),
            out,
            when,
            total: 0,
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let out = std::mem::take(&mut *lock(&self.out.0));
        self.total += out.len() as u64;
        out
    }

    /// Starts the entry `name` of at most `limit` bytes; returns the bytes to send.
    fn start(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, Failure> {
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .last_modified_time(self.when)
            .unix_permissions(0o644)
            .large_file(limit >= u64::from(u32::MAX));
        self.zip.start_file(name, options).map_err(zip_failure)?;
        Ok(self.take())
    }

    fn write(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Failure> {
        self.zip.write_all(chunk).map_err(zip_failure)?;
        Ok(self.take())
    }

    /// The central directory to send, and the archive's size.
    fn finish(self) -> Result<(Vec<u8>, u64), Failure> {
        let ZipStream {
            zip, out, total, ..
        } = self;
        zip.finish().map_err(zip_failure)?;
        let tail = std::mem::take(&mut *lock(&out.0));
        let total = total + tail.len() as u64;
        Ok((tail, total))
    }
}

fn zip_failure(e: impl std::fmt::Display) -> Failure {
    Failure::permanent("ZipFailed", format!("building the archive: {e}"))
}

/// Temporary names of one attempt: `.vc-tmp-<unix seconds>-<attempt key>-<unique>-<suffix>`.
/// The key is a hash of the raw event id and the FTP account (ids that sanitise alike,
/// `a:b` and `a_b`, differ); the unique part is random per process and counted per attempt,
/// so two attempts never share a name. The time lets a later session tell a dead session's
/// leftovers from files in use.
struct TempNames {
    prefix: String,
    key: String,
}

impl TempNames {
    fn new(event_id: &str, ep: &FtpEndpoint) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let process = *PROCESS.get_or_init(rand::random::<u32>);
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        // Not the host or port: the same server may be reached by another address.
        for part in [event_id.as_bytes(), ep.username.as_bytes()] {
            d.update(&(part.len() as u64).to_be_bytes());
            d.update(part);
        }
        let key = hex(&d.finish().as_ref()[..8]);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let now = Timestamp::now().as_second().max(0);
        TempNames {
            prefix: format!("{TEMP_PREFIX}{now}-{key}-{process:08x}{n:x}-"),
            key,
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    /// Whether `name` (a listing entry) is a temporary to delete: one of ours that is older
    /// than [`STALE_TEMP_AFTER`], or from an earlier attempt of this event on this server
    /// (only one attempt runs at a time, so that one is dead). Legacy names
    /// (`.vc-tmp-<event>-<n>`) carry no time and are left alone.
    fn is_leftover(&self, name: &str, now: i64) -> bool {
        let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
            return false;
        };
        if name.starts_with(&self.prefix) {
            return false;
        }
        let mut parts = rest.splitn(3, '-');
        let (Some(time), Some(key)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(time) = time.parse::<i64>() else {
            return false;
        };
        let stale = i64::try_from(STALE_TEMP_AFTER.as_secs()).unwrap_or(i64::MAX);
        key.len() == self.key.len() && (key == self.key || now.saturating_sub(time) > stale)
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

    /// Opens a STOR of `path`. A directory known from this session's cache may have been
    /// removed since: on a 55x reply it is created again and the STOR repeated once.
    async fn open_store(
        &mut self,
        dir: &str,
        cached: bool,
        path: &str,
    ) -> Result<Transfer, Failure> {
        match self.open_store_once(path).await {
            Ok(t) => Ok(t),
            Err(FtpFailure::Reply { code, .. }) if cached && (550..=553).contains(&code) => {
                self.conn()?.dirs.clear();
                self.ensure_dir(dir).await?;
                self.open_store_once(path).await.map_err(Failure::from)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn open_store_once(&mut self, path: &str) -> Result<Transfer, FtpFailure> {
        let stream = self
            .cmd("storing", path, {
                let p = path.to_owned();
                move |s| Box::pin(s.put_with_stream(p))
            })
            .await?;
        // In use until closed: a lease dropped half-way must not return it to the pool.
        self.usable = false;
        Ok(Transfer {
            stream,
            path: path.to_string(),
            broken: false,
        })
    }

    /// Writes `data` to an open STOR, each piece bounded by the command timeout.
    async fn write(&mut self, t: &mut Transfer, data: &[u8]) -> Result<(), Failure> {
        let limit = self.command_timeout;
        for chunk in data.chunks(WRITE_CHUNK) {
            let failure = match timeout(limit, t.stream.write_all(chunk)).await {
                Ok(Ok(())) => continue,
                // The data connection is gone; what the server kept is a partial temporary.
                Ok(Err(e)) => ftp_failure(
                    &self.target,
                    "storing",
                    &t.path,
                    FtpError::ConnectionError(e),
                )
                .into(),
                Err(_) => timed_out(&self.target, "storing", &t.path, limit),
            };
            t.broken = true;
            return Err(failure);
        }
        Ok(())
    }

    /// Ends a STOR and reads the server's verdict. After a failed write the connection is
    /// given up instead.
    async fn close_store(&mut self, t: Transfer) -> Result<(), Failure> {
        let limit = self.command_timeout;
        if t.broken {
            return Err(Failure::retry(
                "ConnectionLost",
                format!("storing {} on {}: transfer broken", t.path, self.target),
            ));
        }
        match timeout(limit, t.stream.finish()).await {
            Ok(Ok(())) => {
                self.usable = true;
                Ok(())
            }
            Ok(Err(e)) => {
                let f = ftp_failure(&self.target, "storing", &t.path, e);
                self.usable = f.session_usable();
                Err(f.into())
            }
            Err(_) => Err(timed_out(&self.target, "storing", &t.path, limit)),
        }
    }

    /// Creates `dir` and its parents unless known to exist. Replies to MKD are ignored: the
    /// usual one is "exists", and any other problem shows in the STOR that follows.
    async fn ensure_dir(&mut self, dir: &str) -> Result<DirState, Failure> {
        if dir.is_empty() || dir == "/" {
            return Ok(DirState::Existing);
        }
        if self.conn()?.dirs.contains(dir) {
            return Ok(DirState::Cached);
        }
        let mut prefixes = Vec::new();
        for (i, c) in dir.char_indices().skip(1) {
            if c == '/' {
                prefixes.push(&dir[..i]);
            }
        }
        prefixes.push(dir);
        let mut state = DirState::Existing;
        for prefix in prefixes {
            if self.conn()?.dirs.contains(prefix) {
                continue;
            }
            state = match self
                .cmd("creating directory", prefix, {
                    let p = prefix.to_owned();
                    move |s| Box::pin(s.mkdir(p))
                })
                .await
            {
                Ok(()) => DirState::Created,
                Err(FtpFailure::Reply { .. }) => DirState::Existing,
                Err(FtpFailure::Other(f)) => return Err(f),
            };
            self.conn()?.dirs.insert(prefix.to_string());
        }
        Ok(state)
    }

    /// Deletes the temporaries in `dir` that dead sessions left ([`TempNames::is_leftover`]),
    /// once per session and directory. Best effort: a listing or a DELE that the server
    /// refuses does not stop the upload.
    async fn clean_temps(
        &mut self,
        dir: &str,
        known: DirState,
        temps: &TempNames,
    ) -> Result<(), Failure> {
        if known == DirState::Created {
            // Just created: nothing in it.
            self.conn()?.cleaned.insert(dir.to_string());
        }
        if self.conn()?.cleaned.contains(dir) {
            return Ok(());
        }
        let names = match self.list(dir).await {
            Ok(names) => names,
            Err(e) if self.usable => {
                tracing::debug!(server = %self.target, dir, error = %e.message, "cannot list for stale temporaries");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let now = Timestamp::now().as_second();
        for name in names.iter().filter(|n| temps.is_leftover(n, now)) {
            let file = child(dir, name);
            match self.remove(&file).await {
                Ok(_) => {
                    tracing::info!(server = %self.target, path = %file, "deleted a temporary left by an earlier session")
                }
                Err(e) if self.usable => {
                    tracing::debug!(server = %self.target, path = %file, error = %e.message, "cannot delete a stale temporary")
                }
                Err(e) => return Err(e),
            }
        }
        self.conn()?.cleaned.insert(dir.to_string());
        Ok(())
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
    /// or empty directory lists nothing. The listing is foreign input: at most
    /// [`MAX_LISTING_BYTES`] and [`MAX_LISTING_ENTRIES`], all within the command timeout.
    async fn list(&mut self, dir: &str) -> Result<Vec<String>, Failure> {
        const WHAT: &str = "listing";
        let limit = self.command_timeout;
        let deadline = Instant::now() + limit;
        let command = if dir.is_empty() {
            "NLST".to_string()
        } else {
            format!("NLST {dir}")
        };
        let opened = self
            .cmd(WHAT, dir, move |s| {
                Box::pin(
                    s.custom_data_command(command, &[Status::AboutToSend, Status::AlreadyOpen]),
                )
            })
            .await;
        let transfer = match opened {
            Ok((_, transfer)) => transfer,
            // "No files found" (450/550) is how several servers list an empty directory.
            Err(FtpFailure::Reply {
                code: 450 | 550, ..
            }) => return Ok(Vec::new()),
            Err(f) => return Err(f.into()),
        };
        self.usable = false;
        let mut reader = tokio::io::BufReader::new(transfer);
        let mut names = Vec::new();
        let read = timeout_at(deadline, read_listing(&mut reader, &mut names)).await;
        let target = self.target.clone();
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                // Dropping the data connection aborts the listing; suppaftp reads the
                // transfer's reply before the next command.
                drop(reader);
                self.usable = true;
                return Err(Failure::permanent(
                    "ListingTooLarge",
                    format!(
                        "{WHAT} {} on {target}: more than {MAX_LISTING_BYTES} bytes or {MAX_LISTING_ENTRIES} entries",
                        display_dir_path(dir)
                    ),
                ));
            }
            Ok(Err(e)) => {
                return Err(ftp_failure(&target, WHAT, dir, FtpError::ConnectionError(e)).into());
            }
            Err(_) => return Err(timed_out(&target, WHAT, dir, limit)),
        }
        match timeout_at(deadline, reader.into_inner().finish()).await {
            Ok(Ok(())) => {
                self.usable = true;
                Ok(names)
            }
            Ok(Err(e)) => {
                let f = ftp_failure(&target, WHAT, dir, e);
                self.usable = f.session_usable();
                Err(f.into())
            }
            Err(_) => Err(timed_out(&target, WHAT, dir, limit)),
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

/// Reads NLST lines into `names` (last path segments); false when the listing passed
/// [`MAX_LISTING_BYTES`] or [`MAX_LISTING_ENTRIES`] (reading stops there).
async fn read_listing<R>(reader: &mut R, names: &mut Vec<String>) -> std::io::Result<bool>
where
    R: tokio::io::AsyncBufRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let (mut total, mut entries) = (0usize, 0usize);
    let mut line = Vec::new();
    loop {
        line.clear();
        let room = (MAX_LISTING_BYTES - total) as u64 + 1;
        let n = (&mut *reader)
            .take(room)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(true);
        }
        total += n;
        entries += 1;
        if total > MAX_LISTING_BYTES || entries > MAX_LISTING_ENTRIES {
            return Ok(false);
        }
        if line.len() > MAX_LISTING_LINE {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        if let Some(name) = text.trim_end().rsplit('/').next()
            && !name.is_empty()
            && name != "."
            && name != ".."
        {
            names.push(name.to_string());
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
        // The server named a data address the guard refuses: retrying cannot help.
        FtpError::ConnectionError(_) if ftp::data_target_refused(&e).is_some() => {
            FtpFailure::Other(Failure::permanent("TargetNotAllowed", message))
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

/// Whether a recorded path is one we could have written: no `..` or `.` segment, no empty
/// name, no backslash or control character.
fn is_safe_recorded_path(p: &str) -> bool {
    !p.is_empty()
        && !p.ends_with('/')
        && !p.chars().any(|c| c == '\\' || c.is_control())
        && p.split('/').all(|seg| seg != ".." && seg != ".")
}

/// Whether `dir` lies strictly inside `base` (both as [`join_path`] writes them).
fn is_below(dir: &str, base: &str) -> bool {
    match base {
        "" => !dir.is_empty() && !dir.starts_with('/'),
        "/" => dir.len() > 1 && dir.starts_with('/'),
        b => dir
            .strip_prefix(b)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/')),
    }
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

    fn endpoint() -> FtpEndpoint {
        FtpEndpoint {
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
        }
    }

    #[test]
    fn temp_names_are_hidden_single_segments() {
        let t = TempNames::new("evt:01/../x", &endpoint()).name("3");
        assert!(t.starts_with(".vc-tmp-"), "{t}");
        assert!(
            !t.contains('/') && !t.contains(':') && !t.contains(".."),
            "{t}"
        );
        assert!(join_path("/in", "", &t).is_ok());
    }

    #[test]
    fn temp_names_are_unique_per_event_and_attempt() {
        let ep = endpoint();
        // These ids sanitise to the same text; their temporaries must still differ.
        let (a, b) = (TempNames::new("a:b", &ep), TempNames::new("a_b", &ep));
        assert_ne!(a.name("1"), b.name("1"));
        assert_ne!(a.key, b.key);
        // Two attempts of one event: same key, different names.
        let again = TempNames::new("a:b", &ep);
        assert_eq!(a.key, again.key);
        assert_ne!(a.name("1"), again.name("1"));
    }

    #[test]
    fn leftovers_are_stale_or_earlier_attempts_of_the_same_event() {
        let ep = endpoint();
        let now = Timestamp::now().as_second();
        let mine = TempNames::new("evt-1", &ep);
        let other = TempNames::new("evt-2", &ep);
        let earlier = TempNames::new("evt-1", &ep);
        // Our own, and another event's fresh temporaries, stay.
        assert!(!mine.is_leftover(&mine.name("1"), now));
        assert!(!mine.is_leftover(&other.name("1"), now));
        // An earlier attempt of this event is dead.
        assert!(mine.is_leftover(&earlier.name("1"), now));
        // Anyone's, once older than the bound.
        let old = now - STALE_TEMP_AFTER.as_secs() as i64 - 1;
        let stale = format!(".vc-tmp-{old}-{}-0000000000-2", other.key);
        assert!(mine.is_leftover(&stale, now));
        let fresh = format!(".vc-tmp-{}-{}-0000000000-2", now - 60, other.key);
        assert!(!mine.is_leftover(&fresh, now));
        // Not ours, or not in our format: never.
        for name in [
            "photo.jpg",
            ".vc-tmpx",
            ".vc-tmp-evt_cut-1-1",
            &format!(".vc-tmp-{old}-short-1"),
            &format!(".vc-tmp-{old}"),
        ] {
            assert!(!mine.is_leftover(name, now), "{name}");
        }
    }

    #[tokio::test]
    async fn listings_are_capped_in_bytes_and_entries() {
        let mut names = Vec::new();
        let ok = b"/in/a.jpg\r\nb.jpg\n.\n..\n\n".to_vec();
        assert!(read_listing(&mut &ok[..], &mut names).await.unwrap());
        assert_eq!(names, ["a.jpg", "b.jpg"]);
        // One endless line: stops after the byte cap, does not buffer more.
        let huge = vec![b'x'; MAX_LISTING_BYTES + 10];
        let mut names = Vec::new();
        assert!(!read_listing(&mut &huge[..], &mut names).await.unwrap());
        assert!(names.is_empty());
        let many = "a\n".repeat(MAX_LISTING_ENTRIES + 1).into_bytes();
        let mut names = Vec::new();
        assert!(!read_listing(&mut &many[..], &mut names).await.unwrap());
        assert_eq!(names.len(), MAX_LISTING_ENTRIES);
    }

    #[test]
    fn recorded_paths_and_directories() {
        assert!(is_safe_recorded_path("/in/A1_1.jpg"));
        assert!(is_safe_recorded_path("in/A1_1.jpg"));
        for bad in ["", "/in/", "/in/../etc/passwd", "/in/./x", "a\\b", "a\nb"] {
            assert!(!is_safe_recorded_path(bad), "{bad:?}");
        }
        assert!(is_below("/in/A1", "/in"));
        assert!(!is_below("/in", "/in"));
        assert!(!is_below("/inbox/A1", "/in"));
        assert!(!is_below("/", "/in"));
        assert!(is_below("/A1", "/"));
        assert!(!is_below("/", "/"));
        assert!(is_below("A1", ""));
        assert!(!is_below("", ""));
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
        let mut z = ZipStream::new(Timestamp::UNIX_EPOCH);
        let mut data = z.start("b_01.jpg", 1000).unwrap();
        data.extend(z.write(&[1u8; 600]).unwrap());
        data.extend(z.write(&[1u8; 400]).unwrap());
        data.extend(z.start("a_02.jpg", 10).unwrap());
        data.extend(z.write(&[2u8; 10]).unwrap());
        let (tail, total) = z.finish().unwrap();
        data.extend(tail);
        assert_eq!(total, data.len() as u64);
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(data)).unwrap();
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
            endpoint: endpoint(),
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
        let fut = uploader.deliver(&target, &ev, &[]);
        assert_send(&fut);
    }
}
