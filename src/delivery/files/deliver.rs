//! The orchestration of one file delivery, knowing no protocol: names first, then existing
//! files, then staging under temporary names, then renames in one burst; `vehicle.deleted`
//! removes exactly the recorded files.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::images::Downloader;
use super::names::{
    Facts, TempNames, Templates, display_dir, extension, is_below, is_safe_recorded_path, parent,
    path, render,
};
use super::outcome::{Failure, UploadResult};
use super::pool::{Lease, Pools, SESSION_IDLE, quit_all};
use super::stage::{StagePlan, stage};
use super::transport::Transport;
use super::{ftp, sftp};
use crate::api::EventType;
use crate::api::ftp::{FtpProtocol, Layout, OnExisting};
use crate::ingest::Envelope;
use crate::ingest::envelope::Image;
use crate::routing::FtpTarget;
use crate::ssrf::TargetGuard;

/// How often expired sessions are looked for, at most.
const JANITOR_TICK: Duration = Duration::from_secs(10);

/// Why the uploader could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("TLS configuration: {0}")]
    Tls(#[from] crate::delivery::http::TlsMaterialError),
    #[error("cannot build the image download client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Uploads events to file servers. Cheap to clone; clones share the download client and the
/// session pools.
#[derive(Clone)]
pub struct Uploader {
    inner: Arc<Inner>,
}

struct Inner {
    images: Downloader,
    guard: Arc<TargetGuard>,
    ftp: Pools<ftp::Session>,
    sftp: Pools<sftp::Session>,
    janitor: AtomicBool,
    /// [`SESSION_IDLE`] unless set, in milliseconds.
    session_idle_ms: AtomicU64,
}

impl std::fmt::Debug for Uploader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploader")
            .field("max_image_bytes", &self.inner.images.max_image_bytes())
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// `max_image_bytes` caps each image download.
    pub fn new(guard: TargetGuard, max_image_bytes: u64) -> Result<Self, UploadError> {
        let guard = Arc::new(guard);
        Ok(Uploader {
            inner: Arc::new(Inner {
                images: Downloader::new(guard.clone(), max_image_bytes)?,
                guard,
                ftp: Pools::default(),
                sftp: Pools::default(),
                janitor: AtomicBool::new(false),
                session_idle_ms: AtomicU64::new(SESSION_IDLE.as_millis() as u64),
            }),
        })
    }

    /// Shares every pool's `maxConnections` with the other replicas from now on (set once);
    /// an idle session then holds its slot for `idle` at most.
    pub fn share_session_limits(&self, slots: Arc<dyn super::pool::SessionSlots>, idle: Duration) {
        let _ = self.inner.ftp.slots.set(slots.clone());
        let _ = self.inner.sftp.slots.set(slots);
        self.set_session_idle(idle);
    }

    /// How long an unused session stays open for reuse.
    pub fn set_session_idle(&self, idle: Duration) {
        let ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        self.inner.session_idle_ms.store(ms, Ordering::Relaxed);
    }

    /// Sessions opened so far (logins), for metrics and tests of reuse.
    pub fn sessions_opened(&self) -> u64 {
        self.inner.ftp.opened() + self.inner.sftp.opened()
    }

    /// FTP and SFTP sessions open now (in use or idle).
    pub fn sessions_open(&self) -> (i64, i64) {
        (self.inner.ftp.open(), self.inner.sftp.open())
    }

    /// Sessions waiting in the pools for reuse.
    pub fn idle_sessions(&self) -> usize {
        self.inner.ftp.idle() + self.inner.sftp.idle()
    }

    /// Quits every idle session (at shutdown).
    pub async fn close_idle(&self) {
        quit_all(self.inner.ftp.take_idle(|_| true)).await;
        quit_all(self.inner.sftp.take_idle(|_| true)).await;
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
        let sftp = target.endpoint.protocol == FtpProtocol::Sftp;
        let outcome = match event.type_ {
            EventType::VehicleDeleted if sftp => {
                self.delete(&self.inner.sftp, target, event, uploaded, start)
                    .await
            }
            EventType::VehicleDeleted => {
                self.delete(&self.inner.ftp, target, event, uploaded, start)
                    .await
            }
            t if EventType::FTP.contains(&t) && sftp => {
                self.upload(&self.inner.sftp, target, event, start).await
            }
            t if EventType::FTP.contains(&t) => {
                self.upload(&self.inner.ftp, target, event, start).await
            }
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

    async fn checkout<T: Transport>(
        &self,
        pools: &Pools<T>,
        target: &FtpTarget,
    ) -> Result<Lease<T>, Failure> {
        let idle = self.inner.session_idle();
        pools
            .checkout(
                &target.endpoint,
                target.max_connections,
                &self.inner.guard,
                idle,
            )
            .await
    }

    async fn upload<T: Transport>(
        &self,
        pools: &Pools<T>,
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
        let mut lease = self.checkout(pools, target).await?;
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
        let staging = stage(
            &self.inner.images,
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

    async fn delete<T: Transport>(
        &self,
        pools: &Pools<T>,
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
                tracing::warn!(path = %p, "recorded path is not a plain path; not deleted");
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
        let mut lease = self.checkout(pools, target).await?;
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
                let expired_ftp = inner.ftp.take_idle(|i| i.since.elapsed() >= idle);
                let expired_sftp = inner.sftp.take_idle(|i| i.since.elapsed() >= idle);
                drop(inner);
                quit_all(expired_ftp).await;
                quit_all(expired_sftp).await;
                tokio::time::sleep(JANITOR_TICK.min(idle / 2)).await;
            }
        });
    }
}

impl Inner {
    fn session_idle(&self) -> Duration {
        Duration::from_millis(self.session_idle_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ftp::FtpRules;
    use crate::endpoint::FtpEndpoint;
    use serde_json::json;

    #[test]
    fn deliver_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let Ok(uploader) = Uploader::new(TargetGuard::default(), 1) else {
            panic!("uploader")
        };
        let target = FtpTarget {
            endpoint: FtpEndpoint::example(),
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
