//! The integration tests, as one test binary (`cargo test --test it [filter]`): built and
//! linked once, with one control plane for all of them. Each module used to be a binary of
//! its own; `support` is what they share. Tests run side by side on that control plane:
//! each operator a test starts serves only its own scope (`support::scope`), and a test's
//! namespaces, clients and names are its own.

// In tests/support, not here: the benchmarks include two of its files by path.
#[path = "../support/mod.rs"]
mod support;

mod api_delivery;
mod api_e2e;
mod chart;
mod console;
mod crash_safety;
mod crd_validation;
mod crds;
mod delivery_e2e;
mod delivery_log;
mod disk_full;
mod feed;
mod ftp_controller;
mod ftp_e2e;
mod ftp_pasv;
mod ftp_probe;
mod ftp_upload;
mod ftp_vsftpd;
mod gitops_health;
mod health_scripts;
mod ingest_auth;
mod jetstream;
mod jetstream_failover;
mod jetstream_manage;
mod jetstream_owners;
mod jetstream_partition;
mod jetstream_status;
mod kube_basics;
mod kubectl_plugin;
mod metrics;
mod naming_props;
mod openapi;
mod prereqs;
mod replay;
mod secret_selector;
mod self_service;
mod sftp_controller;
mod sftp_peer;
mod sftp_upload;
mod status_budget;
mod trust_controller;
mod trust_delivery;
mod watch_selector;
mod webhook_controller;
mod webhook_delivery;
mod webhook_tls;
