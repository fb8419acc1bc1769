//! The management API beside ingest: what operators and clients use to see, redo and set up
//! deliveries (delivery log, retry, replay, test sends, self-service resources, the console).
//!
//! Every request carries a manage token (`--manage-token-file`, the feed's format): `*` is the
//! platform operator and sees every target; a token naming clients is those clients'
//! self-service and never sees or touches anything of another client. The resources stay the
//! source of truth: this API reads the store and the routing registry, and writes resources
//! through the Kubernetes API like any other client.

pub mod console;
pub mod deliveries;
pub mod preview;
pub mod replay;
pub mod replicas;
pub mod selfservice;
pub mod targets;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::delivery::dispatcher::Dispatcher;
use crate::ingest::ErrorBody;
use crate::ingest::tokens::{Grant, TokenSet};
use crate::metrics::Metrics;
use crate::routing::Registry;
use crate::store::Store;

/// What every management handler may use.
#[derive(Clone)]
pub struct ManageState {
    pub tokens: TokenSet,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub registry: Arc<Registry>,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    /// Labels what self-service writes needs for this operator's own selectors.
    pub self_service: selfservice::SelfServiceSettings,
    /// The log replicas share (`--store nats://…`): redeliveries and replays go through it,
    /// to whichever replica owns the vehicle's partition.
    pub log: Option<crate::store::jetstream::JetStreamLog>,
    /// The other replicas' delivery logs, asked over NATS (`--store nats://…`).
    pub replicas: Option<replicas::Replicas>,
}

/// Who is asking, by their token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub grant: Grant,
}

impl Caller {
    /// The platform operator (`*`): every client, every target.
    pub fn is_platform(&self) -> bool {
        self.grant == Grant::AnyClient
    }

    /// Whether the caller may see and act on what belongs to `client_id`.
    pub fn may_see(&self, client_id: &str) -> bool {
        self.grant.allows(client_id)
    }
}

impl ManageState {
    /// The caller of a request, from its `Authorization: Bearer` header.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(ApiError::unauthorized)?;
        self.caller_of(token)
    }

    /// The caller holding `token` (the console keeps it in a cookie, not a header).
    pub fn caller_of(&self, token: &str) -> Result<Caller, ApiError> {
        self.tokens
            .grant(token)
            .map(|grant| Caller { grant })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this manage token is not known (--manage-token-file)",
                )
            })
    }
}

/// A refused management request: the status and the body every `/v1` error has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            message: message.into(),
            field: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a manage token is required: Authorization: Bearer <token>",
        )
    }

    /// Something that does not exist, or that the caller may not see: the same answer, so a
    /// client cannot probe for another client's names.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// A bad parameter or body field, named.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field.into()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.error,
                message: self.message,
                field: self.field,
            }),
        )
            .into_response()
    }
}

/// The management routes; each part adds its own.
pub fn router(state: ManageState) -> Router {
    Router::new()
        .merge(targets::routes())
        .merge(preview::routes())
        .merge(console::routes())
        .merge(deliveries::routes())
        .merge(replay::routes())
        .merge(selfservice::routes())
        .with_state(state)
}
