//! Helpers shared by integration tests (`mod support;` in each test file).

// Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod ftp_server;
pub mod lying_ftp;
pub mod operator;
pub mod process;
pub mod receiver;
pub mod scope;
pub mod vsftpd;
