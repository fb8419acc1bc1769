//! Delivery to clients' systems.

pub mod ftp;
pub mod webhook;
