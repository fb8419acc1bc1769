//! Reading a partition in order and handing it over at its floor
//! (`store::jetstream::partition`), on a real 3-node NATS cluster: the new owner starts right
//! after the floor the old one wrote, replays the unfinished tail first and in order, sees
//! only its partition and then new events as they come; a stale owner cannot move a floor
//! its successor has moved; a NATS node dying mid-read changes none of it.

use std::time::Duration;

use futures::StreamExt;
use vc_envtest::nats::NatsCluster;
use vehicle_connect::store::NewEvent;
use vehicle_connect::store::jetstream::partition::{FloorError, Partitions};
use vehicle_connect::store::jetstream::{
    JetStreamError, JetStreamLog, JetStreamOptions, partition,
};

fn event(client: &str, id: usize, vehicle: &str) -> NewEvent {
    NewEvent {
        client: client.into(),
        id: format!("e-{id}"),
        body: format!(r#"{{"id":"e-{id}","vehicle":"{vehicle}"}}"#).into_bytes(),
        lane: vehicle.into(),
        event_type: "vehicle.processed",
        targets: vec![format!("webhook/{client}/sink")],
    }
}

/// `$e` retried for up to 20 s while it fails with an error `$transient` accepts: after a
/// NATS node dies, the stream and the bucket elect new leaders and answer nothing meanwhile
/// (ingest would answer 503 and the client retry).
macro_rules! retried {
    ($e:expr, $transient:expr) => {{
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match $e {
                Err(e) if $transient(&e) && std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        }
    }};
}

fn kv_blip(e: &FloorError) -> bool {
    matches!(e, FloorError::Kv { .. })
}

/// The next `n` events of a reader, failing on an error or a 20 s wait.
async fn next_n<S>(reader: &mut S, n: usize) -> Vec<(u64, String)>
where
    S: futures::Stream<
            Item = Result<
                vehicle_connect::store::jetstream::LoggedEvent,
                vehicle_connect::store::jetstream::JetStreamError,
            >,
        > + Unpin,
{
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), reader.next()).await {
            Ok(Some(Ok(e))) => got.push((e.event.seq, e.event.id)),
            Ok(Some(Err(e))) => panic!("reading: {e}"),
            Ok(None) => panic!("reader ended after {} of {n}", got.len()),
            Err(_) => panic!("no event for 20 s after {} of {n}", got.len()),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_owner_resumes_at_the_floor_in_order_and_a_stale_owner_cannot_move_it() {
    let mut nats = NatsCluster::start(3)
        .await
        .unwrap_or_else(|e| panic!("could not start a 3-node NATS cluster: {e:#}"));
    let options = JetStreamOptions::default();
    let log = JetStreamLog::connect(&nats.urls(), &options)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:#}"));
    let parts = Partitions::open(&log, 3)
        .await
        .unwrap_or_else(|e| panic!("open floors: {e}"));

    // One vehicle's events, with another partition's interleaved (they must not show).
    let k = partition("dealer-1", "veh-1", log.partitions());
    let other = (0..)
        .map(|v| format!("veh-x{v}"))
        .find(|v| partition("dealer-1", v, log.partitions()) != k)
        .unwrap_or_default();
    let mut mine = Vec::new();
    for i in 0..200 {
        let batch = vec![
            event("dealer-1", i, "veh-1"),
            event("dealer-1", 1000 + i, &other),
        ];
        let out = log
            .accept(batch)
            .await
            .unwrap_or_else(|e| panic!("accept: {e}"));
        mine.push((out[0].seq(), format!("e-{i}")));
    }

    // Owner A reads 80, finishes 60 (20 in flight) and dies.
    let floor_a = parts.floor(k).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(floor_a.seq, 0);
    let mut reader_a = Box::pin(
        parts
            .read_after(k, floor_a.seq)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let got = next_n(&mut reader_a, 80).await;
    assert_eq!(
        got,
        mine[..80],
        "owner A read out of order or another partition"
    );
    let floor_a = parts
        .advance(k, floor_a, mine[59].0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(reader_a);

    // Owner B resumes right after the floor: the unfinished tail first, in order, then the rest.
    let floor_b = parts.floor(k).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(floor_b.seq, mine[59].0);
    let mut reader_b = Box::pin(
        parts
            .read_after(k, floor_b.seq)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let mut got = next_n(&mut reader_b, 70).await;
    // A NATS node dies mid-read (perhaps the one serving B's ephemeral consumer): the reader
    // goes on where it was, in order, with nothing skipped or repeated.
    nats.kill(0);
    got.extend(next_n(&mut reader_b, 70).await);
    assert_eq!(
        got,
        mine[60..],
        "owner B did not resume at the floor in order"
    );
    let floor_b = retried!(parts.advance(k, floor_b, mine[99].0).await, kv_blip)
        .unwrap_or_else(|e| panic!("{e}"));

    // A, stale, tries to record its in-flight work: refused, B's floor stands.
    match retried!(parts.advance(k, floor_a, mine[79].0).await, kv_blip) {
        Err(FloorError::Moved { partition }) => assert_eq!(partition, k),
        other => panic!("a stale owner moved the floor: {other:?}"),
    }
    let now = retried!(parts.floor(k).await, kv_blip).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(now.seq, mine[99].0);
    // Never down: B moving to a lower seq keeps its floor.
    let same = parts
        .advance(k, floor_b, mine[10].0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(same, floor_b);

    // New events reach the live reader as they come.
    let out = retried!(
        log.accept(vec![event("dealer-1", 500, "veh-1")]).await,
        |_: &JetStreamError| true
    )
    .unwrap_or_else(|e| panic!("accept: {e}"));
    let waited = std::time::Instant::now();
    let got = next_n(&mut reader_b, 1).await;
    eprintln!("live event after {:?}", waited.elapsed());
    assert_eq!(got, [(out[0].seq(), "e-500".to_owned())]);
}
