//! Delivery to clients' systems: scheduling (`dispatcher`), webhooks, FTP.

pub mod dispatcher;
pub mod ftp;
pub mod webhook;
