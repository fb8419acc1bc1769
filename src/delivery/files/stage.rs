//! Storing one event's files under their temporary names: the images one after the other as
//! they download (or the archive of them), then the metadata file.

use serde_json::{Value, json};

use super::archive::ZipStream;
use super::images::Downloader;
use super::names::{TempNames, parent};
use super::outcome::Failure;
use super::pool::{DirState, Lease};
use super::transport::Transport;
use crate::ingest::Envelope;
use crate::ingest::envelope::Image;
use k8s_openapi::jiff::Timestamp;

/// What [`stage`] works from.
pub(super) struct StagePlan<'a> {
    /// Per image, in index order: file (or entry) name, final path, temporary path.
    pub(super) names: &'a [(String, String, String)],
    pub(super) images: &'a [Image],
    /// Whether image `i` is stored as a file of its own.
    pub(super) write_image: &'a (dyn Fn(usize) -> bool + Send + Sync),
    /// The archive to write, as for `names`.
    pub(super) archive: Option<&'a (String, String, String)>,
    /// The archive's name for the metadata file, also when the archive is not rewritten.
    pub(super) archive_name: Option<&'a str>,
    /// The metadata file to write: final and temporary path.
    pub(super) metadata: Option<&'a (String, String)>,
    pub(super) time: Timestamp,
    pub(super) ev: &'a Envelope,
    pub(super) temps: &'a TempNames,
}

/// A file stored under its temporary name, waiting for its rename.
pub(super) struct Staged {
    pub(super) temp: String,
    pub(super) path: String,
    pub(super) bytes: u64,
}

/// Stores, under their temporary names, the images one after the other as they download
/// (or the archive of them), then the metadata file; `staged` lists what was stored, in
/// rename order, including a temporary whose transfer failed (so it is discarded).
pub(super) async fn stage<T: Transport>(
    images: &Downloader,
    lease: &mut Lease<T>,
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
                    let mut body = images.open(img).await?;
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
                let mut body = images.open(img).await?;
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
            None if plan.metadata.is_some() => images.open(img).await?.drain().await?,
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
