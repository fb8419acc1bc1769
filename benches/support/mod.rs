//! Helpers shared by the benchmarks.

/// A size from the environment, or the default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `/proc/PID/status` memory field (`VmRSS:`, `VmHWM:`) in MiB.
pub fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Starts `vehicle-connect run` against `kubeconfig` on 127.0.0.1:`port` with its store in
/// `data_dir`, loopback targets allowed, logging warnings to `log`, plus `extra` arguments.
#[allow(dead_code)]
pub fn spawn_operator(
    kubeconfig: &std::path::Path,
    data_dir: &std::path::Path,
    port: u16,
    log: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<std::process::Child> {
    use std::process::{Command, Stdio};
    let log = std::fs::File::create(log)?;
    Ok(Command::new(env!("CARGO_BIN_EXE_vehicle-connect"))
        .args(["run", "--allow-targets", "127.0.0.0/8", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?)
}
