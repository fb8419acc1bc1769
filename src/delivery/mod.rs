//! Delivery to clients' systems.

pub mod ftp;
