//! Scale benchmark (`make bench`): many WebhookSubscriptions and FtpConnections on the local
//! control plane; reports the time until all are Ready=True, reconciles per second and the
//! operator's peak RSS. Prints figures; asserts nothing about speed.
//!
//! Sizes: VC_BENCH_WEBHOOKS (default 10000), VC_BENCH_FTP (default 1000), each FtpConnection
//! with its own account on one of VC_BENCH_FTP_SERVERS (default 4) in-process FTP servers.

mod support;
use support::{env_usize, rss_mib};

#[path = "../tests/support/ftp_server.rs"]
#[allow(dead_code)]
mod ftp_server;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vc_envtest::operator::{Launch, OperatorProcess};
use vehicle_connect::api::{FtpConnection, WebhookSubscription};

fn ready(conds: Option<&Vec<Condition>>) -> bool {
    conds.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Counts objects of kind K that are Ready=True, from one watch.
fn count_ready<K, F>(client: Client, counter: Arc<AtomicUsize>, conds: F)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(&K) -> Option<&Vec<Condition>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut s = watcher(Api::<K>::all(client), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Ok(Some(o)) = s.try_next().await {
            let key = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
            if ready(conds(&o)) {
                seen.insert(key);
            } else {
                seen.remove(&key);
            }
            counter.store(seen.len(), Ordering::Relaxed);
        }
    });
}

async fn apply_all(client: &Client, objects: Vec<(String, Value)>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let pp = PatchParams::apply("vc-bench").force();
    let errors = stream::iter(objects)
        .map(|(ns, v)| {
            let client = client.clone();
            let pp = pp.clone();
            async move {
                let name = v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let r = match v["kind"].as_str() {
                    Some("Secret") => Api::<Secret>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&v))
                        .await
                        .map(|_| ()),
                    Some("WebhookSubscription") => {
                        Api::<WebhookSubscription>::namespaced(client, &ns)
                            .patch(&name, &pp, &Patch::Apply(&v))
                            .await
                            .map(|_| ())
                    }
                    _ => Api::<FtpConnection>::namespaced(client, &ns)
                        .patch(&name, &pp, &Patch::Apply(&v))
                        .await
                        .map(|_| ()),
                };
                r.err()
            }
        })
        .buffer_unordered(32)
        .filter_map(|e| async move { e })
        .collect::<Vec<_>>()
        .await;
    if let Some(first) = errors.first() {
        anyhow::bail!(
            "{} objects could not be created; the first error: {first}",
            errors.len()
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let webhooks = env_usize("VC_BENCH_WEBHOOKS", 10_000);
    let ftps = env_usize("VC_BENCH_FTP", 1_000);
    let servers = env_usize("VC_BENCH_FTP_SERVERS", 4).max(1);
    println!(
        "scale benchmark: {webhooks} WebhookSubscriptions, {ftps} FtpConnections on {servers} local FTP servers ({} cores)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let cp = ControlPlane::shared();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    cp.install_crds(&root.join("crds")).await?;
    let client = cp.client().await?;

    // FTP servers with one account per FtpConnection.
    let mut ftp = Vec::new();
    for s in 0..servers {
        let mut b = ftp_server::FtpServer::builder();
        for i in (s..ftps).step_by(servers) {
            b = b.account(&format!("user{i}"), &format!("pw{i}"));
        }
        if ftps == 0 {
            b = b.account("nobody", "nothing");
        }
        ftp.push(b.start().await?);
    }

    let mut namespaces = Vec::new();
    for i in 0..10 {
        let ns = cp
            .namespace_with_annotations(
                &format!("bench{i}"),
                &[("connect.vehicles.io/clients", "*")],
            )
            .await?;
        namespaces.push(ns.name.clone());
    }
    let mut objects = Vec::new();
    for ns in &namespaces {
        objects.push((
            ns.clone(),
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" },
                "stringData": { "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
            }),
        ));
    }
    for i in 0..ftps {
        objects.push((
            namespaces[i % 10].clone(),
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": { "name": format!("ftp-{i:04}") },
                "stringData": { "username": format!("user{i}"), "password": format!("pw{i}") }
            }),
        ));
    }
    for i in 0..webhooks {
        objects.push((
            namespaces[i % 10].clone(),
            json!({
                "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                "metadata": { "name": format!("whs-{i:05}") },
                "spec": {
                    "url": format!("http://127.0.0.1:{}/hook/{i}", 20000 + i % 1000),
                    "clientId": format!("dealer-{}", i % 400),
                    "events": ["vehicle.processed", "vehicle.deleted"],
                    "signing": { "secretRef": { "name": "signing" } }
                }
            }),
        ));
    }
    for i in 0..ftps {
        objects.push((
            namespaces[i % 10].clone(),
            json!({
                "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "FtpConnection",
                "metadata": { "name": format!("ftp-{i:04}") },
                "spec": {
                    "host": "127.0.0.1", "port": ftp[i % servers].port(),
                    "credentialsSecretRef": { "name": format!("ftp-{i:04}") },
                    "clientId": format!("dealer-{}", i % 400),
                    "rules": { "layout": if i % 2 == 0 { "files" } else { "zip" } }
                }
            }),
        ));
    }
    let n = objects.len();
    let secs = apply_all(&client, objects).await?;
    println!(
        "  created {n} objects (Secrets and resources) in {secs:.1}s ({:.0}/s), before the operator starts",
        n as f64 / secs
    );

    let whs_ready = Arc::new(AtomicUsize::new(0));
    let ftp_ready = Arc::new(AtomicUsize::new(0));
    count_ready::<WebhookSubscription, _>(client.clone(), whs_ready.clone(), |o| {
        o.status.as_ref().map(|s| &s.conditions)
    });
    count_ready::<FtpConnection, _>(client.clone(), ftp_ready.clone(), |o| {
        o.status.as_ref().map(|s| &s.conditions)
    });

    // The operator as its own process, so its RSS is its own.
    let data = tempfile::tempdir()?;
    let started = Instant::now();
    let launch = Launch::new(env!("CARGO_BIN_EXE_vehicle-connect")).rust_log("warn");
    let op = OperatorProcess::start(cp, data.path().join("store"), launch).await?;
    // `start` returns once /readyz says 200: every existing resource registered for routing.
    let t_ready = Some(started.elapsed());
    let pid = op.pid();
    let deadline = Duration::from_secs(600);
    let mut last = Instant::now();
    let (mut t_whs, mut t_ftp) = (None, None);
    while started.elapsed() < deadline {
        let (w, f) = (
            whs_ready.load(Ordering::Relaxed),
            ftp_ready.load(Ordering::Relaxed),
        );
        if t_whs.is_none() && w >= webhooks {
            t_whs = Some(started.elapsed());
        }
        if t_ftp.is_none() && f >= ftps {
            t_ftp = Some(started.elapsed());
        }
        if t_whs.is_some() && t_ftp.is_some() {
            break;
        }
        if last.elapsed() >= Duration::from_secs(5) {
            println!(
                "  … {:>4.0}s: {w}/{webhooks} webhooks, {f}/{ftps} FTP ready; operator RSS {:.0} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib(pid, "VmRSS:")
            );
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: what the operator holds with everything registered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = rss_mib(pid, "VmRSS:");
    let peak = rss_mib(pid, "VmHWM:");
    // A restart with everything in place: /readyz waits until every existing resource is
    // registered for routing (not for the reconciles), so this is the ingest outage.
    let restarted = Instant::now();
    let op = op.restart(cp).await?;
    let t_ready_again = Some(restarted.elapsed());
    drop(op);
    let total = webhooks + ftps;
    let fmt = |t: Option<Duration>| {
        t.map(|t| format!("{:.1}s", t.as_secs_f64()))
            .unwrap_or_else(|| "not within 600s".into())
    };
    println!(
        "RESULT /readyz 200 (every existing resource registered for routing): {} after the first start, {} after a restart with all {total} in place",
        fmt(t_ready),
        t_ready_again
            .map(|t| format!("{:.2}s", t.as_secs_f64()))
            .unwrap_or_else(|| "not within 120s".into())
    );
    println!("RESULT webhooks Ready=True: {webhooks} in {}", fmt(t_whs));
    println!(
        "RESULT ftp connections Ready=True (real login probes): {ftps} in {}",
        fmt(t_ftp)
    );
    if let (Some(a), Some(b)) = (t_whs, t_ftp) {
        let t = a.max(b);
        println!(
            "RESULT all {total} Ready in {:.1}s (aim: 30 s); {:.0} resources/s through their first reconcile",
            t.as_secs_f64(),
            total as f64 / t.as_secs_f64()
        );
    }
    println!("RESULT operator RSS: peak {peak:.1} MiB, settled {settled:.1} MiB (aim: ≤ 128 MiB)");
    for s in ftp {
        s.stop().await;
    }
    Ok(())
}
