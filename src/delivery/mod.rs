//! Delivery to clients' systems: scheduling (`dispatcher`, `fair`, `recent`), one attempt for every
//! kind (`attempt`), retry rules (`retry`), webhooks (`webhook`, `signing`), files on FTP
//! and SFTP servers (`files`), requests to clients' own APIs (`api`).

pub mod api;
pub mod attempt;
pub mod dispatcher;
pub mod fair;
pub mod files;
pub(crate) mod http;
/// The rustls setup of every HTTP client here (also the kubectl plugin's).
pub use http::tls_config;
mod recent;
pub mod retry;
pub mod signing;
pub mod webhook;
