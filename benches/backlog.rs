//! Memory with a large backlog: 1,000,000 pending deliveries for a held (suspended)
//! subscription, posted through the real ingest API of the operator process, against the real
//! control plane. Prints the operator's RSS while the backlog builds, once it is all pending,
//! and after a restart that resumes it (memory must follow the deliveries in flight, not the
//! backlog). Sizes: VC_BENCH_BACKLOG_EVENTS (1,000,000), VC_BENCH_BACKLOG_VEHICLES (10,000).

mod support;

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::{env_usize, rss_mib};
use vc_envtest::ControlPlane;
use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events = env_usize("VC_BENCH_BACKLOG_EVENTS", 1_000_000);
    let vehicles = env_usize("VC_BENCH_BACKLOG_VEHICLES", 10_000).max(1);
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await?;
    let client = cp.client().await?;
    let ns = cp
        .namespace_with_annotations("backlog-bench", &[("connect.vehicles.io/clients", "*")])
        .await?;
    let whs: Api<vehicle_connect::api::WebhookSubscription> =
        Api::namespaced(client.clone(), &ns.name);
    whs.patch(
        "held",
        &PatchParams::apply("vc-bench").force(),
        &Patch::Apply(json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": "held" },
            "spec": { "url": "http://127.0.0.1:9/held", "clientId": "dealer-backlog",
                      "events": ["vehicle.processed"], "suspend": true }
        })),
    )
    .await?;
    let data = tempfile::tempdir()?;
    let http = reqwest::Client::new();
    let launch = Launch::new(env!("CARGO_BIN_EXE_vehicle-connect"))
        .args(&["--max-pending-deliveries", "5000000"])
        .rust_log("warn");
    let op = OperatorProcess::start(cp, data.path().join("store"), launch).await?;
    let pid = op.pid();
    let rss_start = rss_mib(pid, "VmRSS:");
    println!(
        "backlog benchmark: {events} events for one suspended subscription, {vehicles} vehicles, batches of 1,000; RSS at start {rss_start:.0} MiB"
    );

    let started = Instant::now();
    let url = op.url("/v1/events");
    let batches = events.div_ceil(1000);
    let mut done = 0usize;
    let mut peak_during = 0f64;
    let mut posts = stream::iter(0..batches)
        .map(|b| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let batch: Vec<_> = (b * 1000..((b + 1) * 1000).min(events))
                    .map(|i| {
                        json!({
                            "id": format!("bk-{i}"), "type": "vehicle.processed",
                            "timestamp": "2026-11-27T10:15:30Z", "clientId": "dealer-backlog",
                            "data": { "vehicle": { "id": format!("veh-{}", i % vehicles), "vin": "WVWZZZ1JZXW000001" } }
                        })
                    })
                    .collect();
                let r = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(serde_json::Value::Array(batch).to_string())
                    .send()
                    .await?;
                anyhow::ensure!(r.status().as_u16() == 202, "ingest answered {}", r.status());
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(4);
    while let Some(r) = posts.next().await {
        r?;
        done += 1;
        if done.is_multiple_of(50) {
            peak_during = peak_during.max(rss_mib(pid, "VmRSS:"));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_now = rss_mib(pid, "VmRSS:");
    println!(
        "(a) {events} deliveries pending after {secs:.1}s ({:.0} events/s): RSS {rss_now:.0} MiB now ({:.0} bytes per pending delivery above the start), {peak_during:.0} MiB highest sampled while posting, VmHWM {:.0} MiB",
        events as f64 / secs,
        (rss_now - rss_start) * 1024.0 * 1024.0 / events as f64,
        rss_mib(pid, "VmHWM:"),
    );

    // Restart: the backlog is resumed from the store.
    let restarted = Instant::now();
    let op = op.restart(cp).await?;
    let ready = restarted.elapsed();
    let pid = op.pid();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let metrics = http.get(op.url("/metrics")).send().await?.text().await?;
    let depth = metrics
        .lines()
        .find(|l| l.starts_with("vehicle_connect_queue_depth"))
        .unwrap_or("vehicle_connect_queue_depth ?");
    println!(
        "(b) after a restart with the backlog pending: ready in {:.2}s; 10 s later RSS {:.0} MiB, VmHWM {:.0} MiB ({depth})",
        ready.as_secs_f64(),
        rss_mib(pid, "VmRSS:"),
        rss_mib(pid, "VmHWM:"),
    );
    drop(op);
    Ok(())
}
