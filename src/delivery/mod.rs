//! Delivery to clients' systems: scheduling (`dispatcher`, `fair`, `recent`), one attempt for every
//! kind (`attempt`), retry rules (`retry`), webhooks (`webhook`, `signing`), files on FTP
//! and SFTP servers (`files`), requests to clients' own APIs (`api`).

pub mod api;
pub mod attempt;
pub mod dispatcher;
pub mod fair;
pub mod files;
pub(crate) mod http;
mod recent;
pub mod retry;
pub mod signing;
pub mod webhook;
