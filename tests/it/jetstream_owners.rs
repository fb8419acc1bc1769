//! Partition ownership (`store::jetstream::owners`) against a real 3-node NATS cluster on
//! 127.0.0.1: every partition gets exactly one owner, a killed replica's partitions are taken
//! over within the lease time, a stalled replica stops owning before anyone else starts, a
//! replica leaving hands over at once, and a NATS node's death changes none of that. A
//! sampler checks every 5 ms, all along, that no partition has two owners at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use vc_envtest::nats::NatsCluster;
use vehicle_connect::store::jetstream::owners::{Owners, OwnersOptions};

const PARTITIONS: u32 = 16;
const TTL: Duration = Duration::from_secs(2);

async fn cluster() -> NatsCluster {
    match NatsCluster::start(3).await {
        Ok(c) => c,
        Err(e) => panic!("could not start a 3-node NATS cluster: {e:#}"),
    }
}

async fn replica(urls: &str, id: &str) -> Owners {
    let addrs: Vec<&str> = urls.split(',').collect();
    let client = async_nats::ConnectOptions::new()
        .name(id)
        .connect(addrs)
        .await
        .unwrap_or_else(|e| panic!("connect {urls}: {e}"));
    let js = async_nats::jetstream::new(client);
    let options = OwnersOptions {
        partitions: PARTITIONS,
        ttl: TTL,
        replicas: 3,
        drain: Duration::ZERO,
    };
    // Just after the cluster forms, JetStream may not answer bucket creation for a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Owners::join(&js, id, options.clone()).await {
            Ok(o) => return o,
            Err(e) if Instant::now() < deadline => {
                eprintln!("join {id}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("join {id}: {e}"),
        }
    }
}

/// Drives `o`'s rounds while `on` is set (cleared: a stalled replica that keeps its state).
fn drive(o: &Owners, on: Arc<AtomicBool>) -> JoinHandle<()> {
    let o = o.clone();
    tokio::spawn(async move {
        loop {
            if on.load(Ordering::Acquire) {
                let _ = o.tick().await;
            }
            tokio::time::sleep(TTL / 4).await;
        }
    })
}

/// Checks every 5 ms that no partition is owned twice; counts violations.
fn sampler(replicas: Vec<Owners>) -> (Arc<AtomicUsize>, JoinHandle<()>) {
    let bad = Arc::new(AtomicUsize::new(0));
    let b = bad.clone();
    let task = tokio::spawn(async move {
        loop {
            let mut seen = [0u8; PARTITIONS as usize];
            for o in &replicas {
                for p in o.owned() {
                    seen[p as usize] += 1;
                }
            }
            if let Some(p) = seen.iter().position(|n| *n > 1) {
                eprintln!("partition {p} has {} owners", seen[p]);
                b.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (bad, task)
}

/// Waits until `live` together own every partition, each its share (16 over 3: 6, 5, 5);
/// returns how long that took.
async fn until_balanced(live: &[&Owners], limit: Duration) -> Duration {
    let start = Instant::now();
    let (low, high) = (
        (PARTITIONS / live.len() as u32) as usize,
        PARTITIONS.div_ceil(live.len() as u32) as usize,
    );
    loop {
        let counts: Vec<usize> = live.iter().map(|o| o.owned().len()).collect();
        let total: usize = counts.iter().sum();
        if total == PARTITIONS as usize && counts.iter().all(|c| (low..=high).contains(c)) {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!(
                "not balanced after {limit:?}: {:?}",
                live.iter()
                    .map(|o| (o.id().to_owned(), o.owned()))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas on the cluster, driven and balanced, with the two-owner sampler running.
struct Pair {
    a: Owners,
    a_on: Arc<AtomicBool>,
    b: Owners,
    b_on: Arc<AtomicBool>,
    bad: Arc<AtomicUsize>,
    sampling: JoinHandle<()>,
    _driving: [JoinHandle<()>; 2],
}

async fn pair(nats: &NatsCluster) -> Pair {
    let a = replica(&nats.urls(), "replica-a").await;
    let b = replica(&nats.urls(), "replica-b").await;
    let (bad, sampling) = sampler(vec![a.clone(), b.clone()]);
    let (a_on, b_on) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let _driving = [drive(&a, a_on.clone()), drive(&b, b_on.clone())];
    until_balanced(&[&a, &b], Duration::from_secs(15)).await;
    Pair {
        a,
        a_on,
        b,
        b_on,
        bad,
        sampling,
        _driving,
    }
}

fn never_two_owners(bad: &AtomicUsize, sampling: JoinHandle<()>) {
    sampling.abort();
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "a partition had two owners at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitions_are_shared_once_and_taken_over_when_a_replica_dies() {
    let mut nats = cluster().await;
    // Each replica talks to its own NATS node.
    let a = replica(&nats.url(0), "replica-a").await;
    let b = replica(&nats.url(1), "replica-b").await;
    let c = replica(&nats.url(2), "replica-c").await;
    let (bad, sampling) = sampler(vec![a.clone(), b.clone(), c.clone()]);
    let on = || Arc::new(AtomicBool::new(true));
    let _da = drive(&a, on());
    let _db = drive(&b, on());
    let dc = drive(&c, on());

    let took = until_balanced(&[&a, &b, &c], Duration::from_secs(15)).await;
    eprintln!("3 replicas share {PARTITIONS} partitions after {took:?}");

    // Killed: its task ends without releasing anything (as SIGKILL would).
    dc.abort();
    let killed = Instant::now();
    let took = until_balanced(&[&a, &b], TTL * 4).await;
    eprintln!(
        "a killed replica's partitions were taken over after {:?} (ttl {TTL:?})",
        killed.elapsed()
    );
    assert!(
        took >= TTL / 2,
        "taken over before its keys could expire: {took:?}"
    );

    // A NATS node dies: ownership goes on through the other two (replica a reconnects).
    nats.kill(0);
    tokio::time::sleep(TTL * 2).await;
    until_balanced(&[&a, &b], TTL * 6).await;

    never_two_owners(&bad, sampling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_replica_stops_owning_before_another_takes_over() {
    let nats = cluster().await;
    let Pair {
        a,
        a_on,
        b,
        bad,
        sampling,
        ..
    } = pair(&nats).await;

    // a stalls (a long GC pause, SIGSTOP, a partitioned network): no more rounds, state kept.
    a_on.store(false, Ordering::Release);
    let stalled = Instant::now();
    while !a.owned().is_empty() {
        assert!(
            stalled.elapsed() < TTL,
            "a stalled replica still owns {:?} after the ttl",
            a.owned()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stopped = stalled.elapsed();
    until_balanced(&[&b], TTL * 4).await;
    eprintln!(
        "stalled replica stopped owning after {stopped:?}; the other owned everything after {:?}",
        stalled.elapsed()
    );

    // a wakes up: its old revisions are stale, it must not resume them, and it gets its
    // share back through fresh keys.
    a_on.store(true, Ordering::Release);
    until_balanced(&[&a, &b], TTL * 6).await;

    never_two_owners(&bad, sampling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_leaves_or_joins_hands_partitions_over_within_a_round() {
    let nats = cluster().await;
    let Pair {
        a,
        b,
        b_on,
        bad,
        sampling,
        ..
    } = pair(&nats).await;

    // A clean shutdown releases at once: far sooner than the ttl a kill costs.
    b_on.store(false, Ordering::Release);
    b.leave().await;
    let left = Instant::now();
    until_balanced(&[&a], TTL * 2).await;
    let took = left.elapsed();
    eprintln!("after a clean leave the other replica owned everything in {took:?}");
    assert!(took < TTL, "a clean leave took {took:?}, as long as a kill");

    // A replica joining gets its share: the one holding everything releases half.
    b_on.store(true, Ordering::Release);
    until_balanced(&[&a, &b], TTL * 4).await;

    never_two_owners(&bad, sampling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_given_one_id_never_own_one_partition_together() {
    let nats = cluster().await;
    // A force-deleted pod still running beside its replacement: same id, two processes.
    let twin = replica(&nats.urls(), "replica-a").await;
    let a = replica(&nats.urls(), "replica-a").await;
    let (bad, sampling) = sampler(vec![a.clone(), twin.clone()]);
    let twin_on = Arc::new(AtomicBool::new(true));
    let _twin = drive(&twin, twin_on.clone());
    until_balanced(&[&twin], Duration::from_secs(15)).await;
    let _a = drive(&a, Arc::new(AtomicBool::new(true)));

    // The twin stalls until its keys expire and the other takes them all, then wakes: the
    // keys name its id, but it must not take the other's writes for its own lost renewals.
    twin_on.store(false, Ordering::Release);
    until_balanced(&[&a], TTL * 4).await;
    twin_on.store(true, Ordering::Release);
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(
        a.owned().len() + twin.owned().len(),
        PARTITIONS as usize,
        "a: {:?}, twin: {:?}",
        a.owned(),
        twin.owned()
    );
    never_two_owners(&bad, sampling);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_whose_answer_was_lost_keeps_the_partition() {
    let nats = cluster().await;
    let a = replica(&nats.urls(), "replica-a").await;
    let _driving = drive(&a, Arc::new(AtomicBool::new(true)));
    until_balanced(&[&a], Duration::from_secs(15)).await;

    // A renewal that reached the server but whose answer was lost: the key holds a's token
    // at a revision a never saw. Written here out of band, through another connection.
    let client = async_nats::connect(nats.urls().split(',').collect::<Vec<_>>())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let kv = async_nats::jetstream::new(client)
        .get_key_value("vc-owners")
        .await
        .unwrap_or_else(|e| panic!("bucket: {e}"));
    let p = a.owned()[0];
    // Renewed a few times by now: every write of a's, not only the first, holds its token.
    tokio::time::sleep(TTL).await;
    let value = kv
        .get(format!("p.{p}"))
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(
        value.as_deref(),
        Some(a.token()),
        "the key does not hold a's token"
    );
    kv.put(format!("p.{p}"), a.token().to_vec().into())
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));

    // a keeps it through the next renewals, without a moment of not owning it.
    let start = Instant::now();
    while start.elapsed() < TTL * 2 {
        assert!(
            a.owns(p),
            "dropped partition {p} after a lost renewal answer"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
