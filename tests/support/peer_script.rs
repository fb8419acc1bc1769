//! The peer servers' scripts (`scripts/vsftpd.sh`, `scripts/sshd.sh`) as child processes: they
//! print `key=value` lines then `ready`, and stop (cleaning up) on SIGTERM.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Runs `cmd` and reads its `key=value` lines until `ready`, on a thread so that a hung
/// script times out; a script that exits or hangs is stopped and its stderr reported.
pub fn start(mut cmd: Command, name: &str) -> anyhow::Result<(Child, HashMap<String, String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {name}"))?;
    let stdout = child.stdout.take().context("script stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line == "ready";
            if tx.send(line).is_err() || done {
                break;
            }
        }
    });
    let mut fields = HashMap::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line == "ready" => return Ok((child, fields)),
            Ok(line) => {
                if let Some((k, v)) = line.split_once('=') {
                    fields.insert(k.to_string(), v.to_string());
                }
            }
            Err(_) => {
                stop(&mut child);
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                bail!("{name} did not get ready: {}", stderr.trim());
            }
        }
    }
}

/// SIGTERM, not `Child::kill`'s SIGKILL, so the script stops its server and removes what it
/// made; then waits for it.
pub fn stop(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so not reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let _ = child.wait();
}
