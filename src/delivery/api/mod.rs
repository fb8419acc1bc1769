//! Delivery to clients' own APIs (ApiConnection): each event becomes the chain of requests its
//! mapping names, sent in order; the chain stops at the first failure and its retry resumes
//! at that request (and that image), with the values captured so far. Every request carries
//! an idempotency key that is the same on every retry, so the API can drop repeats of a
//! request that reached it before a crash or a lost answer.
//!
//! State per target in the store: `remote/<lane>` (values captured for a vehicle, written
//! durably before the next request uses them) and `chain/<seq>` (how far an event got).

mod auth;
mod chain;
mod client;
mod send;

use std::sync::Arc;

use crate::delivery::attempt::{Answer, Attempt, Delivery};
use crate::delivery::files::images::Downloader;
use crate::routing::ApiTarget;
use crate::ssrf::TargetGuard;
use crate::store::Store;

/// Why the API sender could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ApiSenderError {
    #[error(transparent)]
    Images(#[from] crate::delivery::files::UploadError),
}

/// Sends events to clients' APIs. Cheap to clone.
#[derive(Clone)]
pub struct ApiSender {
    inner: Arc<Inner>,
}

struct Inner {
    clients: client::Clients,
    tokens: auth::Tokens,
    images: Downloader,
    store: Store,
    user_agent: String,
}

impl ApiSender {
    pub fn new(
        guard: TargetGuard,
        store: Store,
        max_image_bytes: u64,
        user_agent: &str,
    ) -> Result<Self, ApiSenderError> {
        let guard = Arc::new(guard);
        Ok(ApiSender {
            inner: Arc::new(Inner {
                clients: client::Clients::new(guard.clone()),
                tokens: auth::Tokens::default(),
                images: Downloader::new(guard, max_image_bytes)?,
                store,
                user_agent: user_agent.to_owned(),
            }),
        })
    }

    /// One attempt of the event at `target`: the rest of its chain.
    pub async fn deliver(&self, target: &ApiTarget, d: Delivery<'_>) -> Attempt {
        chain::run(&self.inner, target, d, &mut Answer::default()).await
    }

    /// [`Self::deliver`], noting the last answer of the API into `answer`.
    pub async fn deliver_answered(
        &self,
        target: &ApiTarget,
        d: Delivery<'_>,
        answer: &mut Answer,
    ) -> Attempt {
        chain::run(&self.inner, target, d, answer).await
    }
}
