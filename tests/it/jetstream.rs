//! The JetStream event log (`vehicle_connect::store::jetstream`) against real nats-server
//! processes on 127.0.0.1 (built by scripts/build-nats.sh; see vc_envtest::nats): a 3-node
//! cluster with the stream at R3, one node SIGKILLed under load, two SIGSTOPped (no quorum).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use vc_envtest::nats::NatsCluster;
use vehicle_connect::store::jetstream::{
    DEFAULT_PARTITIONS, JetStreamError, JetStreamLog, JetStreamOptions, STREAM, partition,
};
use vehicle_connect::store::{AcceptOutcome, NewEvent};

async fn cluster(n: usize) -> NatsCluster {
    match NatsCluster::start(n).await {
        Ok(c) => c,
        Err(e) => panic!("could not start a {n}-node NATS cluster: {e:#}"),
    }
}

async fn connect(urls: &str, options: &JetStreamOptions) -> JetStreamLog {
    match JetStreamLog::connect(urls, options).await {
        Ok(log) => log,
        Err(e) => panic!("JetStreamLog::connect({urls}): {e:#}"),
    }
}

fn event(client: &str, id: &str, vehicle: &str) -> NewEvent {
    NewEvent {
        client: client.into(),
        id: id.into(),
        body: format!(r#"{{"id":"{id}","vehicle":"{vehicle}","client":"{client}"}}"#).into_bytes(),
        lane: vehicle.into(),
        event_type: "vehicle.processed",
        targets: vec![
            format!("webhook/{client}/sink"),
            format!("ftp/{client}/archive"),
        ],
    }
}

/// Reads `seq` and checks it is `expected` in every field the log keeps.
async fn assert_logged(log: &JetStreamLog, seq: u64, expected: &NewEvent) {
    let got = match log.event(seq).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("event {seq} ({}) is not in the stream", expected.id),
        Err(e) => panic!("reading event {seq}: {e:#}"),
    };
    assert_eq!(got.event.seq, seq);
    assert_eq!(got.event.id, expected.id);
    assert_eq!(got.client, expected.client);
    assert_eq!(got.event.lane, expected.lane);
    assert_eq!(got.event.body, expected.body);
    assert_eq!(got.event_type, expected.event_type);
    assert_eq!(got.targets, expected.targets);
    assert_eq!(
        got.partition,
        partition(&expected.client, &expected.lane, log.partitions())
    );
}

#[test]
fn partitions_are_pinned_spread_and_in_range() {
    // Pinned: a change moves vehicles to other partitions, which a running cluster (its
    // partition owners) must never see between two versions.
    assert_eq!(partition("acme", "WVW123", 16), 14);
    assert_eq!(partition("acme", "WVW124", 16), 7);
    assert_eq!(partition("other", "WVW123", 16), 0);
    assert_eq!(partition("acme", "WVW123", 0), 0);
    assert_ne!(
        partition("ab", "c", u32::MAX),
        partition("a", "bc", u32::MAX)
    );
    let mut counts = [0u32; DEFAULT_PARTITIONS as usize];
    for v in 0..1600 {
        let p = partition("acme", &format!("vehicle-{v}"), DEFAULT_PARTITIONS);
        counts[p as usize] += 1;
    }
    // 100 per partition on average; a hash that clusters would leave some nearly empty.
    assert!(
        counts.iter().all(|&c| (50..=150).contains(&c)),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_accept_dedupe_and_read_back() {
    let nats = cluster(3).await;
    let log = connect(&nats.urls(), &JetStreamOptions::default()).await;

    let info = log.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(2 * 3600));
    let replicas = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
    assert_eq!(
        replicas, 2,
        "R3: a leader and two replicas: {:?}",
        info.cluster
    );

    // 1,000 events, 100 vehicles of two clients, in batches of 50.
    let events: Vec<NewEvent> = (0..1000)
        .map(|i| {
            let client = if i % 2 == 0 { "acme" } else { "globex" };
            event(client, &format!("evt-{i}"), &format!("VIN{:03}", i % 100))
        })
        .collect();
    let started = Instant::now();
    let mut seqs = Vec::with_capacity(events.len());
    for batch in events.chunks(50) {
        let outcomes = log.accept(batch.to_vec()).await.unwrap();
        assert_eq!(outcomes.len(), batch.len());
        for o in outcomes {
            match o {
                AcceptOutcome::New { seq } => seqs.push(seq),
                dup => panic!("a first accept answered {dup:?}"),
            }
        }
    }
    eprintln!("1,000 accepts at R3 in {:?}", started.elapsed());
    // Every event its own sequence, in the order accepted.
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for (seq, e) in seqs.iter().zip(&events) {
        assert_logged(&log, *seq, e).await;
    }

    // The same (client, id) again: a duplicate naming the first sequence, nothing written.
    // The same id from another client is another event.
    let again = log
        .accept(vec![
            event("acme", "evt-10", "VIN010"),
            event("globex", "evt-10", "VIN010"),
            event("globex", "evt-10", "VIN010"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], AcceptOutcome::Duplicate { seq: seqs[10] });
    let AcceptOutcome::New { seq: other } = again[1] else {
        panic!("another client's evt-10 answered {:?}", again[1]);
    };
    assert!(other > seqs[999]);
    // A repeat within one batch takes its first's answer.
    assert_eq!(again[2], AcceptOutcome::Duplicate { seq: other });
    assert_logged(&log, other, &event("globex", "evt-10", "VIN010")).await;
    assert_eq!(log.info().await.unwrap().state.messages, 1001);

    // Values a NATS header cannot carry as they are still come back unchanged.
    let odd = NewEvent {
        lane: "VIN 1,2%".into(),
        targets: vec!["webhook/ns/a,b".into(), "ftp/ns/c d".into()],
        ..event("cli ent", "id\r\nwith: breaks", "x")
    };
    let [AcceptOutcome::New { seq }] = log.accept(vec![odd.clone()]).await.unwrap()[..] else {
        panic!("the odd event was not accepted as new");
    };
    assert_logged(&log, seq, &odd).await;
    assert_eq!(
        log.accept(vec![odd.clone()]).await.unwrap(),
        vec![AcceptOutcome::Duplicate { seq }]
    );

    assert!(log.event(seq + 1000).await.unwrap().is_none());
}

/// Accepts `batch`, retrying the same events (same ids) until JetStream acknowledges them
/// all, as an ingest client does after a 503. Returns the outcomes and the errors seen.
async fn accept_until_acked(
    log: &JetStreamLog,
    batch: &[NewEvent],
    errors: &mut Vec<String>,
) -> Vec<AcceptOutcome> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match log.accept(batch.to_vec()).await {
            Ok(outcomes) => return outcomes,
            Err(e) => {
                errors.push(format!("{e:#}"));
                assert!(
                    Instant::now() < deadline,
                    "no accept for a minute; errors: {errors:#?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_stream_leader_mid_load_loses_no_acknowledged_event() {
    let mut nats = cluster(3).await;
    let log = connect(&nats.urls(), &JetStreamOptions::default()).await;

    let events: Vec<NewEvent> = (0..2000)
        .map(|i| event("acme", &format!("load-{i}"), &format!("VIN{:02}", i % 40)))
        .collect();
    let batches: Vec<Vec<NewEvent>> = events.chunks(20).map(<[_]>::to_vec).collect();
    let producer = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut acked: BTreeMap<String, AcceptOutcome> = BTreeMap::new();
            let mut errors = Vec::new();
            for batch in &batches {
                // Paced, so that the kill below lands in the middle of the load.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let outcomes = accept_until_acked(&log, batch, &mut errors).await;
                for (e, o) in batch.iter().zip(outcomes) {
                    acked.insert(e.id.clone(), o);
                }
            }
            (acked, errors)
        })
    };

    // Kill the node leading the stream once a part of the load is in.
    let deadline = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let info = log.info().await.unwrap();
        if info.state.messages >= 400 {
            break info;
        }
        assert!(Instant::now() < deadline, "the load did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let leader = info.cluster.and_then(|c| c.leader);
    let victim = leader
        .as_deref()
        .and_then(|l| l.strip_prefix('n'))
        .and_then(|i| i.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no stream leader named n<i>: {leader:?}"));
    nats.kill(victim);
    assert!(
        !producer.is_finished(),
        "the load was over before the kill: nothing was tested"
    );
    let killed_at = info.state.messages;
    eprintln!("SIGKILLed n{victim}, the stream leader, at {killed_at}+ messages of 2000");

    let (acked, errors) = producer.await.unwrap();
    let kinds: std::collections::BTreeSet<String> = errors
        .iter()
        .map(|e| {
            e.split_once(": ")
                .map_or(e.as_str(), |(_, why)| why)
                .to_owned()
        })
        .collect();
    eprintln!(
        "{} accepts failed (and were retried) while the stream failed over: {kinds:#?}",
        errors.len()
    );
    assert_eq!(acked.len(), events.len());
    // Every acknowledged event is on the survivors under its sequence; one stored copy each
    // (an accept retried after a lost ack is answered as a duplicate of the stored one).
    let mut seqs = HashSet::new();
    for e in &events {
        let seq = acked[&e.id].seq();
        assert!(seqs.insert(seq), "two events at sequence {seq}");
        assert_logged(&log, seq, e).await;
    }
    let info = log.info().await.unwrap();
    assert_eq!(info.state.messages, events.len() as u64, "{:?}", info.state);

    // The killed node comes back on its store dir and catches up.
    nats.restart(victim).await.unwrap();
    let back = connect(&nats.url(victim), &JetStreamOptions::default()).await;
    let more = accept_until_acked(
        &back,
        &[event("acme", "after-restart", "VIN00")],
        &mut Vec::new(),
    )
    .await;
    assert!(matches!(more[..], [AcceptOutcome::New { .. }]), "{more:?}");
    let info = back.info().await.unwrap();
    assert_eq!(info.state.messages, events.len() as u64 + 1);
    let cluster = info.cluster.unwrap();
    assert!(
        cluster.replicas.iter().all(|r| r.current && !r.offline),
        "replicas not all current after the restart: {cluster:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_an_accept_times_out_instead_of_claiming_durability() {
    let mut nats = cluster(3).await;
    let options = JetStreamOptions {
        ack_timeout: Duration::from_secs(2),
        ..JetStreamOptions::default()
    };
    // Connected to n0 only, which stays up: the server answers, the quorum does not.
    let log = connect(&nats.url(0), &options).await;
    let first = log
        .accept(vec![event("acme", "q-1", "VIN1")])
        .await
        .unwrap();
    assert!(
        matches!(first[..], [AcceptOutcome::New { .. }]),
        "{first:?}"
    );

    nats.stop(1).unwrap();
    nats.stop(2).unwrap();
    let started = Instant::now();
    let stalled = log.accept(vec![event("acme", "q-2", "VIN1")]).await;
    let waited = started.elapsed();
    match &stalled {
        Err(e @ JetStreamError::AckTimeout { key, after }) => {
            assert_eq!(key, "acme/q-2");
            assert_eq!(*after, Duration::from_secs(2));
            let text = e.to_string();
            assert!(
                text.contains("not durable") && text.contains(STREAM),
                "{text}"
            );
        }
        other => panic!("an accept without a quorum answered {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );

    // One node back: a quorum of two; the same event goes in (stored once, whether or not
    // the stalled attempt reached the log before).
    nats.cont(1).unwrap();
    let q2 = accept_until_acked(&log, &[event("acme", "q-2", "VIN1")], &mut Vec::new()).await;
    assert_logged(&log, q2[0].seq(), &event("acme", "q-2", "VIN1")).await;

    // The other stalled node is killed and restarted on its store dir: all three current.
    nats.kill(2);
    nats.restart(2).await.unwrap();
    let q3 = accept_until_acked(&log, &[event("acme", "q-3", "VIN1")], &mut Vec::new()).await;
    assert!(matches!(q3[..], [AcceptOutcome::New { .. }]), "{q3:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = log.info().await.unwrap();
        let cluster = info.cluster.clone().unwrap();
        if info.state.messages == 3 && cluster.replicas.iter().all(|r| r.current && !r.offline) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all replicas current after the restart: {:?} {cluster:?}",
            info.state
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (seq, id) in [
        (first[0].seq(), "q-1"),
        (q2[0].seq(), "q-2"),
        (q3[0].seq(), "q-3"),
    ] {
        assert_logged(&log, seq, &event("acme", id, "VIN1")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_takes_one_replica_and_caps_the_duplicate_window() {
    let nats = match NatsCluster::single().await {
        Ok(n) => n,
        Err(e) => panic!("could not start a NATS server: {e:#}"),
    };
    let options = JetStreamOptions {
        max_age: Duration::from_secs(600),
        max_bytes: Some(64 * 1024 * 1024),
        partitions: 4,
        ..JetStreamOptions::single_node()
    };
    let log = connect(&nats.urls(), &options).await;
    let info = log.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 1);
    assert_eq!(info.config.max_age, Duration::from_secs(600));
    // The 2-hour default window is cut to max_age, which JetStream requires.
    assert_eq!(info.config.duplicate_window, Duration::from_secs(600));
    assert_eq!(info.config.max_bytes, 64 * 1024 * 1024);

    let e = event("acme", "solo", "VIN9");
    let [AcceptOutcome::New { seq }] = log.accept(vec![e.clone()]).await.unwrap()[..] else {
        panic!("not accepted as new");
    };
    assert_logged(&log, seq, &e).await;
    assert!(log.event(seq).await.unwrap().unwrap().partition < 4);

    // Batches far past the acks that may be in flight at once (4,096), one alone and eight
    // side by side: windows take their ack slots whole, so none waits on another forever.
    let big: Vec<NewEvent> = (0..6000)
        .map(|i| event("bulk", &format!("b-{i}"), &format!("VIN{}", i % 7)))
        .collect();
    let outcomes = log.accept(big).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, AcceptOutcome::New { .. }))
    );
    let side_by_side = (0..8).map(|t| {
        let log = log.clone();
        tokio::spawn(async move {
            let batch = (0..1000)
                .map(|i| event("bulk", &format!("t{t}-{i}"), "VIN1"))
                .collect();
            log.accept(batch).await
        })
    });
    for done in futures::future::join_all(side_by_side).await {
        let outcomes = done.unwrap().unwrap();
        assert_eq!(outcomes.len(), 1000);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, AcceptOutcome::New { .. }))
        );
    }
    assert_eq!(log.info().await.unwrap().state.messages, 1 + 6000 + 8000);

    // Reconnecting with other limits updates the stream in place.
    let log = connect(
        &nats.urls(),
        &JetStreamOptions {
            max_age: Duration::from_secs(1200),
            ..options.clone()
        },
    )
    .await;
    assert_eq!(
        log.info().await.unwrap().config.max_age,
        Duration::from_secs(1200)
    );
    assert_eq!(
        log.accept(vec![e.clone()]).await.unwrap(),
        vec![AcceptOutcome::Duplicate { seq }]
    );
}

/// Replay records: published to the event's own partition with the one target and when the
/// original was accepted; one request id is stored once however often it is published (two
/// replicas carrying out one `spec.replay`); the pull feed and the replay scan never show a
/// record as an event of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_records_go_to_the_partition_once_and_stay_out_of_the_feed() {
    use vehicle_connect::store::FeedQuery;
    use vehicle_connect::store::jetstream::replay::ReplayRecord;
    let nats = match NatsCluster::single().await {
        Ok(n) => n,
        Err(e) => panic!("could not start a NATS server: {e:#}"),
    };
    let log = connect(&nats.urls(), &JetStreamOptions::single_node()).await;
    let since = vehicle_connect::delivery::dispatcher::now_ms();
    let originals: Vec<NewEvent> = (0..5)
        .map(|i| event("acme", &format!("r-{i}"), &format!("VIN{i}")))
        .collect();
    log.accept(originals.clone()).await.unwrap();
    let found = log
        .scan("acme", since, u64::MAX, 100, |_| true)
        .await
        .unwrap();
    assert_eq!(found.len(), 5);
    let records = |request: &str| -> Vec<ReplayRecord> {
        found
            .iter()
            .map(|e| ReplayRecord {
                msg_id: format!("replay/uid/{request}/{}", e.event.id),
                event: e.clone(),
                target: "webhook/acme/sink/uid".into(),
            })
            .collect()
    };
    assert_eq!(log.replay(records("one")).await.unwrap(), vec![true; 5]);
    // The same request again (another replica): stored already.
    assert_eq!(log.replay(records("one")).await.unwrap(), vec![false; 5]);
    assert_eq!(log.info().await.unwrap().state.messages, 10);

    // Each record is in its event's partition, right after it, for the one target.
    let parts = vehicle_connect::store::jetstream::partition::Partitions::open(&log, 1)
        .await
        .unwrap();
    for (i, original) in found.iter().enumerate() {
        let read: Vec<_> = {
            use futures::StreamExt;
            let stream = parts.read_after(original.partition, 0).await.unwrap();
            let mut stream = std::pin::pin!(stream);
            let mut got = Vec::new();
            let id = format!("r-{i}");
            while got
                .iter()
                .filter(|e: &&vehicle_connect::store::jetstream::LoggedEvent| e.event.id == id)
                .count()
                < 2
            {
                match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
                    Ok(Some(e)) => got.push(e.unwrap()),
                    Ok(None) => panic!("partition {}: the reader ended", original.partition),
                    Err(_) => panic!("partition {}: nothing within 10 s", original.partition),
                }
            }
            got
        };
        let mine: Vec<_> = read
            .iter()
            .filter(|e| e.event.id == format!("r-{i}"))
            .collect();
        assert_eq!(mine.len(), 2, "the event and its record: {read:?}");
        assert_eq!(mine[0].replay_of, None);
        assert_eq!(mine[1].replay_of, Some(original.event.received_unix_ms));
        assert_eq!(mine[1].targets, vec!["webhook/acme/sink/uid".to_owned()]);
        assert_eq!(mine[1].event.body, original.event.body);
        assert_eq!(mine[1].event.lane, original.event.lane);
    }

    // The feed and the scan: the five events, once each.
    let page = log
        .feed(&FeedQuery {
            client: "acme".into(),
            after: None,
            types: Vec::new(),
            limit: 100,
            max_bytes: 1 << 20,
            max_scan: 1000,
        })
        .await
        .unwrap();
    assert_eq!(page.events.len(), 5, "records are not feed events");
    let again = log
        .scan("acme", since, u64::MAX, 100, |_| true)
        .await
        .unwrap();
    assert_eq!(again.len(), 5, "records are not replayed themselves");
    // A limit: one more than asked, so the caller knows where it stopped.
    let cut = log
        .scan("acme", since, u64::MAX, 2, |_| true)
        .await
        .unwrap();
    assert_eq!(cut.len(), 3);
}
