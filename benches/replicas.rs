//! Replicas benchmark (`make bench`): on loopback, in one run, a client with a few webhook
//! subscriptions, and
//! (a) deliveries/s of one operator on the embedded store, one operator on JetStream and three
//!     operators sharing the partitions on JetStream (3 nats-server nodes, stream R3), each
//!     repetition beside a fresh measurement of the plain hyper client's limit;
//! (b) failover: three operators under a steady load; one is SIGKILLed, and the time from the
//!     kill until every vehicle's events posted after it arrive again is measured (the slowest
//!     vehicle is the one whose partition waits for the lease); the victim is started again
//!     and the partitions rebalance before the next kill.
//! Prints figures (medians, ratios, RSS per replica, CPU per delivery); asserts nothing about
//! speed. Sizes: VC_BENCH_EVENTS (deliveries per repetition, default 20000), VC_BENCH_REPS
//! (default 3), VC_BENCH_SUBS (subscriptions, default 10), VC_BENCH_KILLS (default 10),
//! VC_BENCH_LEASE_SECONDS (the partitions' lease, default 5), VC_BENCH_RATE (events/s during
//! the kills, default 300).

mod support;
use support::sink::{Sink, event, limit_once, receive, wait_count};
use support::{cpu_seconds, env_usize, median, rss_mib};

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use futures::{StreamExt, stream};
use http_body_util::Full;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use vc_envtest::ControlPlane;
use vc_envtest::nats::NatsCluster;
use vc_envtest::operator::{Launch, OperatorProcess, TOKEN};
use vehicle_connect::api::WebhookSubscription;

const CLIENT: &str = "dealer-replicas";
/// Vehicles the events are spread over.
const VEHICLES: usize = 300;

struct Setup {
    cp: &'static ControlPlane,
    nats: NatsCluster,
    data: tempfile::TempDir,
    lease: u64,
}

impl Setup {
    /// `count` operators, on the embedded store (`ids` empty) or on JetStream as `ids`.
    async fn operators(&self, name: &str, ids: &[&str]) -> anyhow::Result<Vec<OperatorProcess>> {
        let bin = env!("CARGO_BIN_EXE_vehicle-connect");
        if ids.is_empty() {
            let launch = Launch::new(bin).rust_log("warn");
            return Ok(vec![
                OperatorProcess::start(self.cp, self.data.path().join(name), launch).await?,
            ]);
        }
        let lease = self.lease.to_string();
        let urls = self.nats.urls();
        let starts = ids.iter().map(|id| {
            let launch = Launch::new(bin).rust_log("warn").args(&[
                "--store",
                &urls,
                "--replica-id",
                id,
                "--partition-lease-seconds",
                &lease,
            ]);
            OperatorProcess::start(
                self.cp,
                self.data.path().join(format!("{name}-{id}")),
                launch,
            )
        });
        futures::future::try_join_all(starts).await
    }
}

/// Posts `events` in batches of 100 to the operators' ingest in turn (8 requests in flight);
/// a refused or failed batch goes to the next operator.
async fn post_all(http: &reqwest::Client, ingests: &[String], events: Vec<serde_json::Value>) {
    let batches: Vec<Vec<serde_json::Value>> = events.chunks(100).map(|c| c.to_vec()).collect();
    stream::iter(batches.into_iter().enumerate())
        .map(|(i, batch)| {
            let http = http.clone();
            async move {
                let body = serde_json::to_vec(&batch).expect("json");
                let mut last = String::new();
                for k in 0..ingests.len() * 20 {
                    let url = &ingests[(i + k) % ingests.len()];
                    let r = http
                        .post(url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 202 => return,
                        Ok(r) => {
                            last = format!("{} {}", r.status(), r.text().await.unwrap_or_default())
                        }
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("a batch was refused by every operator for 20 rounds: {last}");
            }
        })
        .buffer_unordered(8)
        .for_each(|_| async {})
        .await;
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("VC_BENCH_EVENTS", 20_000);
    let reps = env_usize("VC_BENCH_REPS", 3).max(1);
    let subs = env_usize("VC_BENCH_SUBS", 10).max(1);
    let kills = env_usize("VC_BENCH_KILLS", 10);
    let lease = env_usize("VC_BENCH_LEASE_SECONDS", 5).max(1) as u64;
    let rate = env_usize("VC_BENCH_RATE", 300).max(100);

    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/{*path}", post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = Bytes::from(serde_json::to_vec(&event(CLIENT, "evt_limit_000000", 1))?);
    let hyper: HyperClient<HttpConnector, Full<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    println!(
        "replicas benchmark: {n} deliveries per repetition to {subs} subscription(s), {reps} repetitions, {kills} kills at {rate} events/s with a {lease} s lease, loopback, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await?;
    let client = cp.client().await?;
    let ns = cp
        .namespace_with_annotations("replicas-bench", &[("connect.vehicles.io/clients", "*")])
        .await?;
    let pp = PatchParams::apply("vc-bench").force();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns.name)
        .patch(
            "signing",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "signing" },
                "stringData": { "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
            })),
        )
        .await?;
    let whs: Api<WebhookSubscription> = Api::namespaced(client.clone(), &ns.name);
    for i in 0..subs {
        let name = format!("replicas-{i:03}");
        whs.patch(&name, &pp, &Patch::Apply(json!({
            "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
            "metadata": { "name": name },
            "spec": { "url": format!("http://127.0.0.1:{port}/r/{i}"), "clientId": CLIENT,
                      "events": ["vehicle.processed"], "signing": { "secretRef": { "name": "signing" } },
                      "maxConcurrency": 64 }
        }))).await?;
    }
    let setup = Setup {
        cp,
        nats: NatsCluster::start(3).await?,
        data: tempfile::tempdir()?,
        lease,
    };
    let nats_pids: Vec<u32> = (0..3).filter_map(|i| setup.nats.pid(i)).collect();
    let http = reqwest::Client::new();
    let events_per_rep = (n / subs).max(1);
    let deliveries = (events_per_rep * subs) as u64;

    // (a) throughput.
    let mut summary = Vec::new();
    for (label, ids) in [
        ("embedded store, 1 operator", &[][..]),
        ("JetStream, 1 operator", &["one-0"][..]),
        (
            "JetStream, 3 operators",
            &["three-0", "three-1", "three-2"][..],
        ),
    ] {
        // Ids and dir names: letters, digits and `_` only.
        let tag: String = label.chars().filter(char::is_ascii_alphanumeric).collect();
        let ops = setup.operators(&tag, ids).await?;
        let ingests: Vec<String> = ops.iter().map(|o| o.url("/v1/events")).collect();
        let pids: Vec<u32> = ops.iter().map(OperatorProcess::pid).collect();
        // Warm-up, which also waits for the replicas to own every partition between them.
        sink.count.store(0, Ordering::Relaxed);
        let warm: Vec<_> = (0..VEHICLES)
            .map(|v| event(CLIENT, &format!("evt_warm_{tag}_{v}"), v))
            .collect();
        post_all(&http, &ingests, warm).await;
        if wait_count(&sink, (VEHICLES * subs) as u64, Duration::from_secs(120))
            .await
            .is_none()
        {
            anyhow::bail!("{label}: the warm-up was not delivered in 120 s");
        }
        let (mut rates, mut limits, mut ratios, mut cpu_op, mut cpu_nats) =
            (vec![], vec![], vec![], vec![], vec![]);
        for rep in 0..reps {
            let limit = limit_once(&hyper, &sink, port, &body, n).await;
            sink.count.store(0, Ordering::Relaxed);
            let events: Vec<_> = (0..events_per_rep)
                .map(|i| event(CLIENT, &format!("evt_{tag}_{rep}_{i:07}"), i % VEHICLES))
                .collect();
            let (op0, nats0) = (cpu_of(&pids), cpu_of(&nats_pids));
            let start = Instant::now();
            post_all(&http, &ingests, events).await;
            if wait_count(&sink, deliveries, Duration::from_secs(300))
                .await
                .is_none()
            {
                println!(
                    "(a) {label}, repetition {rep}: only {} of {deliveries} delivered in 300 s",
                    sink.count.load(Ordering::Relaxed)
                );
                continue;
            }
            let r = deliveries as f64 / start.elapsed().as_secs_f64();
            rates.push(r);
            limits.push(limit);
            ratios.push(100.0 * r / limit);
            cpu_op.push((cpu_of(&pids) - op0) * 1e6 / deliveries as f64);
            cpu_nats.push((cpu_of(&nats_pids) - nats0) * 1e6 / deliveries as f64);
        }
        let rss: Vec<String> = pids
            .iter()
            .map(|p| format!("{:.0}", rss_mib(*p, "VmHWM:")))
            .collect();
        let (rate, ratio) = (median(rates.clone()), median(ratios.clone()));
        println!(
            "(a) {label}: median {rate:.0} deliveries/s = {ratio:.0}% of the limit (median {:.0} req/s); runs {}; CPU per delivery (µs, median): operators {:.0}, nats-servers {:.0}; peak RSS per operator (MiB): {}",
            median(limits),
            rates
                .iter()
                .map(|r| format!("{r:.0}/s"))
                .collect::<Vec<_>>()
                .join(", "),
            median(cpu_op),
            median(cpu_nats),
            rss.join(", ")
        );
        summary.push(format!("{label} {rate:.0}/s ({ratio:.0}%)"));
        drop(ops);
    }
    println!(
        "RESULT throughput (median of {reps}, ratio to the plain hyper limit in the same repetition): {}",
        summary.join("; ")
    );

    // (b) failover under load.
    if kills == 0 {
        return Ok(());
    }
    let ids = ["fail-0", "fail-1", "fail-2"];
    let mut ops: Vec<Option<OperatorProcess>> = setup
        .operators("failover", &ids)
        .await?
        .into_iter()
        .map(Some)
        .collect();
    sink.track.store(true, Ordering::Relaxed);
    sink.arrivals.lock().unwrap().clear();
    let ingests: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        ops.iter().flatten().map(|o| o.url("/v1/events")).collect(),
    ));
    // (posted at, vehicle) by id.
    let posted: Arc<Mutex<HashMap<String, (Instant, usize)>>> = Arc::default();
    let load = {
        let (http, ingests, posted) = (http.clone(), ingests.clone(), posted.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = rate / 100;
            for b in 0u64.. {
                tick.tick().await;
                let batch: Vec<_> = (0..per_tick)
                    .map(|k| {
                        let v = (b as usize * per_tick + k) % VEHICLES;
                        (format!("evt_fail_{b:08}_{k}"), v)
                    })
                    .collect();
                let (http, ingests, posted) = (http.clone(), ingests.clone(), posted.clone());
                tokio::spawn(async move {
                    let events: Vec<_> =
                        batch.iter().map(|(id, v)| event(CLIENT, id, *v)).collect();
                    let body = serde_json::to_vec(&events).expect("json");
                    let urls = ingests.lock().unwrap().clone();
                    for k in 0..urls.len() * 5 {
                        let sent = Instant::now();
                        let r = http
                            .post(&urls[(b as usize + k) % urls.len()])
                            .bearer_auth(TOKEN)
                            .header("content-type", "application/json")
                            .timeout(Duration::from_secs(5))
                            .body(body.clone())
                            .send()
                            .await;
                        if r.is_ok_and(|r| r.status() == 202) {
                            let mut p = posted.lock().unwrap();
                            for (id, v) in batch {
                                p.insert(id, (sent, v));
                            }
                            return;
                        }
                    }
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(lease + 3)).await;
    let mut failovers = Vec::new();
    for kill in 0..kills {
        let victim = kill % ids.len();
        let killed_at = Instant::now();
        if let Some(op) = ops[victim].as_mut() {
            op.kill();
        }
        let victim_url = ops[victim].as_ref().map(|o| o.url("/v1/events"));
        ingests
            .lock()
            .unwrap()
            .retain(|u| Some(u) != victim_url.as_ref());
        tokio::time::sleep(Duration::from_secs(2 * lease + 4)).await;
        // Per vehicle: the first event posted after the kill, and when it first arrived.
        let arrivals = sink.arrivals.lock().unwrap().clone();
        let mut first: HashMap<usize, (Instant, String)> = HashMap::new();
        for (id, (at, v)) in posted.lock().unwrap().iter() {
            if *at >= killed_at && first.get(v).is_none_or(|(t, _)| at < t) {
                first.insert(*v, (*at, id.clone()));
            }
        }
        let mut worst = 0.0f64;
        let mut missing = 0;
        for (_, id) in first.values() {
            match arrivals.get(id) {
                Some(arrived) => worst = worst.max(arrived.duration_since(killed_at).as_secs_f64()),
                None => missing += 1,
            }
        }
        println!(
            "(b) kill {kill}: fail-{victim} SIGKILLed; every vehicle's deliveries resumed {worst:.1} s after the kill ({} vehicles{})",
            first.len(),
            if missing > 0 {
                format!(", {missing} not yet")
            } else {
                String::new()
            }
        );
        if missing == 0 {
            failovers.push(worst);
        }
        if let Some(op) = ops[victim].take() {
            let op = op.restart(setup.cp).await?;
            ingests.lock().unwrap().push(op.url("/v1/events"));
            ops[victim] = Some(op);
        }
        // The restarted replica takes its share back once the old keys expire.
        tokio::time::sleep(Duration::from_secs(lease + 3)).await;
    }
    load.abort();
    let max = failovers.iter().copied().fold(0.0, f64::max);
    println!(
        "RESULT failover (3 operators, lease {lease} s, {rate} events/s): median {:.1} s, max {max:.1} s over {} kills ({} did not resume within {} s)",
        median(failovers.clone()),
        failovers.len(),
        kills - failovers.len(),
        2 * lease + 4
    );
    Ok(())
}
