//! Helpers shared by the integration tests (`tests/it`); the benchmarks include some files
//! of it by path.

// Some of the peer servers' API has no caller right now (accounts, passive ports, greeting;
// vsftpd's root, sshd's host key types); the benchmarks include some of these files by path.
pub mod arrivals;
pub mod browser;
pub mod dms;
#[allow(dead_code)]
pub mod ftp_server;
pub mod health;
pub mod lying_ftp;
pub mod operator;
pub mod peer_script;
pub mod process;
pub mod receiver;
pub mod scope;
#[allow(dead_code)]
pub mod sshd;
pub mod tls;
#[allow(dead_code)]
pub mod vsftpd;
