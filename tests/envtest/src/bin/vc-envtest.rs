//! `make cluster` / `make cluster-down`: a local control plane that outlives this command.
//!
//!   vc-envtest up   [--dir .local/cluster] [--kubeconfig .local/kubeconfig]
//!   vc-envtest down [--dir .local/cluster]

use std::path::PathBuf;

use anyhow::{Result, bail};
use vc_envtest::{ControlPlane, pid_alive, stop_detached};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let mut dir = PathBuf::from(".local/cluster");
    let mut kubeconfig = PathBuf::from(".local/kubeconfig");
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--dir", Some(v)) => dir = v.into(),
            ("--kubeconfig", Some(v)) => kubeconfig = v.into(),
            _ => {
                bail!("unknown argument {a}; usage: vc-envtest up|down [--dir D] [--kubeconfig F]")
            }
        }
    }
    match cmd.as_str() {
        "up" => {
            if let Ok(pid) = std::fs::read_to_string(dir.join("kube-apiserver.pid")) {
                if pid.trim().parse().is_ok_and(pid_alive) && kubeconfig.exists() {
                    println!(
                        "control plane already running; kubeconfig: {}",
                        kubeconfig.display()
                    );
                    return Ok(());
                }
                // A stale run (e.g. after a reboot): clear it before starting again.
                stop_detached(&dir)?;
            }
            let cp = ControlPlane::start_detached(&dir)?;
            if let Some(parent) = kubeconfig.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&cp.kubeconfig, &kubeconfig)?;
            println!(
                "control plane ready in {:.2}s at {} (etcd pid {}, kube-apiserver pid {})",
                cp.startup.as_secs_f64(),
                cp.server,
                cp.etcd_pid,
                cp.apiserver_pid
            );
            println!(
                "kubeconfig: {}   logs: {}",
                kubeconfig.display(),
                cp.dir.display()
            );
            println!("try: kubectl --kubeconfig {} get ns", kubeconfig.display());
        }
        // Used by the harness's own test: start an owned control plane, print its pids,
        // then die abruptly; the kernel must take both children down with us.
        "hold-and-abort" => {
            let cp = ControlPlane::shared();
            println!("pids {} {}", cp.etcd_pid, cp.apiserver_pid);
            std::thread::sleep(std::time::Duration::from_millis(200));
            std::process::abort();
        }
        "down" => {
            let stopped = stop_detached(&dir)?;
            let _ = std::fs::remove_file(&kubeconfig);
            println!("stopped {} process(es)", stopped.len());
        }
        _ => bail!("usage: vc-envtest up|down [--dir D] [--kubeconfig F]"),
    }
    Ok(())
}
