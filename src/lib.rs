//! vehicle-connect: a Kubernetes operator that delivers vehicle-imaging events to clients'
//! systems as signed webhooks and FTP uploads.
//!
//! Data flow: `api` (CRD types) → `controller` (one reconciler per kind: validate, resolve,
//! register) → `routing` (pure in-memory index of delivery targets) → `delivery`;
//! `status` builds conditions and is the one writer of resource status.

pub mod api;
pub mod controller;
pub mod delivery;
pub mod ingest;
pub mod metrics;
pub mod naming;
pub mod routing;
pub mod ssrf;
pub mod status;
pub mod store;
pub mod tenancy;
