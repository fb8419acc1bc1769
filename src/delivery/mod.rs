//! Delivery to clients' systems: scheduling (`dispatcher`), webhooks, FTP.

pub mod attempt;
pub mod dispatcher;
pub mod fair;
pub mod ftp;
pub(crate) mod http;
pub mod retry;
pub mod signing;
pub mod upload;
pub mod webhook;
