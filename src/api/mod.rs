//! Custom resource types (group `connect.vehicles.io`, version `v1alpha1`) and the pieces
//! they share. The generated YAML lives in `crds/` and is checked against these types by a
//! test.

pub mod common;
pub mod event;
pub mod ftp;
pub mod webhook;

pub use common::*;
pub use event::EventType;
pub use ftp::{FtpConnection, FtpConnectionSpec, FtpConnectionStatus};
pub use webhook::{WebhookSubscription, WebhookSubscriptionSpec, WebhookSubscriptionStatus};

use kube::CustomResourceExt;

/// API group of every kind here.
pub const GROUP: &str = "connect.vehicles.io";
/// Namespace annotation that lists the clients a namespace may receive events of.
pub const CLIENTS_ANNOTATION: &str = "connect.vehicles.io/clients";
/// Finalizer that removes a resource's delivery target before it goes away.
pub const FINALIZER: &str = "connect.vehicles.io/cleanup";

/// Each CRD as `(file name under crds/, YAML)`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    [WebhookSubscription::crd(), FtpConnection::crd()]
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
            Ok((name, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// All CRDs as one multi-document YAML: what `vehicle-connect crd` prints.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?
        .into_iter()
        .map(|(_, y)| format!("---\n{y}"))
        .collect())
}
