//! Which test operator serves which resources. Tests share one control plane, so every
//! operator they start (in-process or as a process) watches only resources labelled with its
//! own scope (`--watch-label-selector`): operators of tests running side by side never
//! reconcile, write status or Events for, or deliver to each other's resources.
//!
//! A scope's namespaces carry its label; [`super::operator::apply_value`] copies it onto our
//! resources applied there, so tests do not label them by hand.

use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};
use vc_envtest::{ControlPlane, TestNamespace};

/// The label (on namespaces and on our resources) naming the operator that serves them.
pub const LABEL: &str = "tests.connect.vehicles.io/operator";

/// One operator's share of the control plane.
#[derive(Clone, Debug)]
pub struct Scope(String);

impl Scope {
    /// A scope of its own, named after `name` and unique in this process.
    pub fn new(name: &str) -> Scope {
        static N: AtomicUsize = AtomicUsize::new(0);
        Scope(format!("{name}-{}", N.fetch_add(1, Ordering::Relaxed)))
    }

    /// The operator's `--watch-label-selector`.
    pub fn selector(&self) -> String {
        format!("{LABEL}={}", self.0)
    }

    /// A fresh namespace (name starting with `prefix`) of this scope whose annotation allows
    /// `clients`.
    pub async fn namespace(&self, cp: &ControlPlane, prefix: &str, clients: &str) -> TestNamespace {
        cp.namespace_labelled(
            prefix,
            &[(LABEL, &self.0)],
            &[("connect.vehicles.io/clients", clients)],
        )
        .await
        .expect("namespace")
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Labels `v`, one of our resources going into `ns`, with the scope of `ns`; panics if `ns`
/// has none (no test operator would ever serve it).
pub async fn label(client: &Client, ns: &str, v: &mut serde_json::Value) {
    let is_ours = v["apiVersion"]
        .as_str()
        .is_some_and(|a| a.starts_with("connect.vehicles.io/"));
    if !is_ours {
        return;
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    let namespace = nss.get(ns).await.expect("namespace");
    let Some(scope) = namespace.metadata.labels.and_then(|mut l| l.remove(LABEL)) else {
        panic!("namespace {ns} belongs to no test operator: make it with Scope::namespace");
    };
    v["metadata"]["labels"][LABEL] = scope.into();
}
