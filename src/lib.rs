//! vehicle-connect: a Kubernetes operator that delivers vehicle-imaging events to clients'
//! systems as signed webhooks and FTP uploads.
//!
//! Data flow: `api` (CRD types) → `controller` (one reconciler per kind: validate, resolve,
//! register) → `routing` (pure in-memory index of delivery targets, keyed by object uid).
//! `ingest` routes each event and stores it with its pending deliveries in `store` (the
//! durable queue); `delivery::dispatcher` pages them per target into per-vehicle lanes and
//! runs each attempt through `delivery::attempt` (webhook or FTP), with `delivery::retry`
//! deciding when to try again; `status` builds conditions and writes resource status.

pub mod api;
pub mod cluster;
pub mod controller;
pub mod delivery;
pub mod endpoint;
pub mod ingest;
pub mod manage;
pub mod mapping;
pub mod metrics;
pub mod naming;
pub mod routing;
pub mod ssrf;
pub mod status;
pub mod store;
pub mod tenancy;
