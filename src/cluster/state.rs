//! The state a vehicle's deliveries carry from one to the next (an ApiConnection's captured
//! remote ids and chain progress, an FtpConnection's uploaded paths), in the KV bucket
//! `vc-state`, so that the replica a vehicle's partition moves to continues with it: without
//! it, the next event of a vehicle the client's system already knows would create it there a
//! second time. One writer per vehicle at a time (the partition's owner), so plain puts.

use async_nats::jetstream::kv;
use futures::future::BoxFuture;

use super::counters::digest_key;
use crate::store::SharedState;

/// The bucket of shared per-vehicle state.
pub const BUCKET: &str = "vc-state";

pub struct KvState {
    kv: kv::Store,
}

impl KvState {
    pub async fn open(
        context: &async_nats::jetstream::Context,
        replicas: usize,
    ) -> anyhow::Result<KvState> {
        let kv = super::open_bucket(
            context,
            BUCKET,
            "vehicle-connect: per-vehicle state of each target",
            replicas,
        )
        .await?;
        Ok(KvState { kv })
    }

    fn key(target: &str, key: &str) -> String {
        format!("{}.{}", digest_key("s", target), digest_key("k", key))
    }
}

impl SharedState for KvState {
    fn get<'a>(
        &'a self,
        target: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            match self.kv.entry(Self::key(target, key)).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some(e.value.to_vec())),
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn put<'a>(
        &'a self,
        target: &'a str,
        key: &'a str,
        value: Option<Vec<u8>>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let k = Self::key(target, key);
            match value {
                Some(v) => self
                    .kv
                    .put(k, v.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => self.kv.delete(k).await.map_err(|e| e.to_string()),
            }
        })
    }
}
