//! Where a client's self-service resources live: the one Namespace a cluster admin annotated
//! `connect.vehicles.io/self-service-client: <clientId>`.

use axum::http::StatusCode;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::ListParams;

use super::labels::NAMESPACE_ANNOTATION;
use crate::api::CLIENTS_ANNOTATION;
use crate::manage::ApiError;
use crate::tenancy::AllowedClients;

/// A client's self-service namespace.
pub struct Home {
    pub namespace: String,
    /// Whether the namespace's `connect.vehicles.io/clients` annotation allows the client
    /// (without it, resources there get no events: `Ready=False/ClientNotAllowed`).
    pub allows_client: bool,
}

impl Home {
    /// Creating or changing a resource that could never receive anything is refused.
    pub fn require_allowed(&self, client: &str) -> Result<(), ApiError> {
        if self.allows_client {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "client_not_allowed",
            format!(
                "namespace {} is the self-service namespace of client {client:?}, but its {CLIENTS_ANNOTATION} annotation does not allow that client, so its resources would get no events; ask the cluster admin to add it",
                self.namespace
            ),
        ))
    }
}

/// The self-service namespace of `client_id`: exactly one, or a refusal that says why.
pub async fn home_of(kube: &kube::Client, client_id: &str) -> Result<Home, ApiError> {
    // Annotations cannot be selected by the API server: a metadata list of all namespaces.
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let list = namespaces
        .list_metadata(&ListParams::default())
        .await
        .map_err(|e| ApiError::unavailable(format!("listing namespaces: {e}")))?;
    let mut homes: Vec<Home> = list
        .items
        .iter()
        .filter_map(|ns| {
            let annotations = ns.metadata.annotations.as_ref()?;
            let owner = annotations.get(NAMESPACE_ANNOTATION)?;
            (owner.trim() == client_id).then(|| Home {
                namespace: ns.metadata.name.clone().unwrap_or_default(),
                allows_client: AllowedClients::parse(
                    annotations.get(CLIENTS_ANNOTATION).map(String::as_str),
                )
                .allows(client_id),
            })
        })
        .collect();
    match homes.len() {
        1 => Ok(homes.remove(0)),
        0 => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "self_service_disabled",
            format!(
                "client {client_id:?} has no self-service namespace: a cluster admin designates one by annotating a Namespace {NAMESPACE_ANNOTATION}: {client_id}"
            ),
        )),
        _ => {
            let names: Vec<&str> = homes.iter().map(|h| h.namespace.as_str()).collect();
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "misconfigured",
                format!(
                    "client {client_id:?} has {} self-service namespaces ({}); exactly one Namespace may carry {NAMESPACE_ANNOTATION}: {client_id}, ask the cluster admin to remove the others",
                    names.len(),
                    names.join(", ")
                ),
            ))
        }
    }
}
