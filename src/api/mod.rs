//! Custom resource types (group `connect.vehicles.io`, version `v1alpha1`) and the pieces
//! they share. The generated YAML lives in `crds/` and is checked against these types by a
//! test.

pub mod apiconnection;
pub mod common;
mod crd_schema;
pub mod event;
pub mod ftp;
pub mod webhook;

pub use apiconnection::{ApiConnection, ApiConnectionSpec, ApiConnectionStatus};
pub use common::*;
pub use crd_schema::CONDITION_MESSAGE_MAX;
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
    [
        WebhookSubscription::crd(),
        FtpConnection::crd(),
        ApiConnection::crd(),
    ]
    .into_iter()
    .map(|mut crd| {
        crd_schema::tighten(&mut crd);
        let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("crd"));
        let mut value = serde_yaml::to_value(&crd)?;
        unwrap_descriptions(&mut value);
        Ok((name, serde_yaml::to_string(&value)?))
    })
    .collect()
}

/// Doc comments wrap at 100 columns; `kubectl explain` would show those breaks mid-sentence.
/// Single line breaks become spaces; blank lines (paragraphs) stay.
fn unwrap_descriptions(v: &mut serde_yaml::Value) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            for (k, val) in m.iter_mut() {
                if k.as_str() == Some("description")
                    && let serde_yaml::Value::String(text) = val
                {
                    *text = text
                        .split("\n\n")
                        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join("\n\n");
                } else {
                    unwrap_descriptions(val);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// All CRDs as one multi-document YAML: what `vehicle-connect crd` prints.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    Ok(crd_files()?
        .into_iter()
        .map(|(_, y)| format!("---\n{y}"))
        .collect())
}
