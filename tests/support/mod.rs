//! Helpers shared by the integration tests (`tests/it`); the benchmarks include some files
//! of it by path.

// Some of the FTP servers' API has no caller right now (accounts, passive ports, greeting;
// vsftpd's root); the benchmarks include these two files by path too.
#[allow(dead_code)]
pub mod ftp_server;
pub mod lying_ftp;
pub mod operator;
pub mod process;
pub mod receiver;
pub mod scope;
#[allow(dead_code)]
pub mod vsftpd;
