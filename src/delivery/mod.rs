//! Delivery to clients' systems: scheduling (`dispatcher`, `fair`), one attempt for every
//! kind (`attempt`), retry rules (`retry`), webhooks (`webhook`, `signing`), FTP (`ftp`,
//! `upload`).

pub mod attempt;
pub mod dispatcher;
pub mod fair;
pub mod ftp;
pub(crate) mod http;
pub mod retry;
pub mod signing;
pub mod upload;
pub mod webhook;
