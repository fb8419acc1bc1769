//! Scale benchmark (`make bench`): many WebhookSubscriptions and FtpConnections on the local
//! control plane; reports the time until all are Ready=True, reconciles per second and the
//! operator's peak RSS. Prints figures; asserts nothing about speed.
//!
//! Sizes: VC_BENCH_WEBHOOKS (default 10000), VC_BENCH_FTP (default 1000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use vc_envtest::ControlPlane;
use vehicle_connect::api::{FtpConnection, WebhookSubscription};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn is_ready(
    conds: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> bool {
    conds.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let webhooks = env_usize("VC_BENCH_WEBHOOKS", 10_000);
    let ftps = env_usize("VC_BENCH_FTP", 1_000);
    let cp = ControlPlane::shared();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cp.install_crds(&root.join("crds")).await?;
    let client = cp.client().await?;
    let pp = PatchParams::apply("vc-bench").force();

    // Ten namespaces share the load, as teams would.
    let namespaces: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..10 {
            let ns = cp
                .namespace_with_annotations(
                    &format!("bench{i}"),
                    &[("connect.vehicles.io/clients", "*")],
                )
                .await?;
            v.push(ns.name.clone());
            let secrets: Api<k8s_openapi::api::core::v1::Secret> =
                Api::namespaced(client.clone(), &ns.name);
            secrets
                .patch(
                    "signing",
                    &pp,
                    &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" },
                        "stringData": { "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
                    })),
                )
                .await?;
        }
        v
    };

    println!("scale benchmark: {webhooks} WebhookSubscriptions, {ftps} FtpConnections");
    let created = Instant::now();
    stream::iter(0..webhooks)
        .map(|i| {
            let client = client.clone();
            let ns = namespaces[i % namespaces.len()].clone();
            let pp = pp.clone();
            async move {
                let api: Api<WebhookSubscription> = Api::namespaced(client, &ns);
                let name = format!("whs-{i:05}");
                api.patch(
                    &name,
                    &pp,
                    &Patch::Apply(json!({
                        "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                        "metadata": { "name": name },
                        "spec": {
                            "url": format!("http://127.0.0.1:{}/hook/{i}", 20000 + i % 1000),
                            "clientId": format!("dealer-{}", i % 400),
                            "events": ["vehicle.processed", "vehicle.deleted"],
                            "signing": { "secretRef": { "name": "signing" } }
                        }
                    })),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .for_each(|r| async move {
            if let Err(e) = r {
                eprintln!("create failed: {e}");
            }
        })
        .await;
    let create_secs = created.elapsed().as_secs_f64();
    println!(
        "  created {webhooks} WebhookSubscriptions in {create_secs:.1}s ({:.0}/s)",
        webhooks as f64 / create_secs
    );

    // The operator as a separate process, so its RSS is its own.
    let log = std::fs::File::create(cp.dir.join("operator-bench.log"))?;
    let mut op = Command::new(env!("CARGO_BIN_EXE_vehicle-connect"))
        .args(["run", "--allow-targets", "127.0.0.0/8"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()?;
    let pid = op.id();
    let started = Instant::now();

    let whs: Api<WebhookSubscription> = Api::all(client.clone());
    let ftp: Api<FtpConnection> = Api::all(client.clone());
    let deadline = Duration::from_secs(600);
    let mut last_report = Instant::now();
    let all_ready = loop {
        let w = whs.list(&ListParams::default()).await?;
        let wr = w
            .items
            .iter()
            .filter(|o| is_ready(o.status.as_ref().map(|s| &s.conditions)))
            .count();
        let f = ftp.list(&ListParams::default()).await?;
        let fr = f
            .items
            .iter()
            .filter(|o| is_ready(o.status.as_ref().map(|s| &s.conditions)))
            .count();
        if wr >= webhooks && fr >= ftps {
            break Some(started.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!(
                "  … {:.0}s: {wr}/{webhooks} webhooks, {fr}/{ftps} ftp ready, operator RSS peak {:.0} MiB",
                started.elapsed().as_secs_f64(),
                peak_rss_mib(pid)
            );
            last_report = Instant::now();
        }
        if started.elapsed() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let rss = peak_rss_mib(pid);
    terminate(pid);
    let _ = op.wait();
    let total = webhooks + ftps;
    match all_ready {
        Some(t) => {
            println!(
                "RESULT all {total} resources Ready=True in {:.1}s (aim: 60s)",
                t.as_secs_f64()
            );
            println!(
                "RESULT reconciles/s (first pass): {:.0}",
                total as f64 / t.as_secs_f64()
            );
        }
        None => println!("RESULT NOT all ready within {deadline:?}"),
    }
    println!("RESULT operator peak RSS: {rss:.1} MiB (aim: < 256 MiB)");
    Ok(())
}

/// SIGTERM to the operator (graceful shutdown).
fn terminate(pid: u32) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
}
