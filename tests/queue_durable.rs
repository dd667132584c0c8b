//! Durable queues: what a journal brings back after a crash (the log abandoned as a kill -9 leaves
//! it) or a restart, and what it never brings back.

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tubemail::{
    Broker, DeathReason, Delivery, Outcome, QueueSpec, StartError, SubscribeOptions, TopicKind, TopicSpec,
    Topology, TopologyError,
};

const SECOND: Duration = Duration::from_secs(1);

/// One life of a process: an actix system of its own, under tokio's paused clock. Everything the
/// broker holds is dropped with it.
fn life<Fut: Future>(f: impl FnOnce() -> Fut) -> Fut::Output {
    actix::System::new().block_on(async move {
        tokio::time::pause();
        f().await
    })
}

/// Starts a broker whose log can be crashed: every stream it opens (journals too) is abandoned by
/// `crash`, as a kill -9 leaves files: what was written stays, nothing more is synced.
fn start_crashable(topology: Topology) -> (Broker, Vec<tubemail_log::sim::SimStream>) {
    let (broker, streams) = tubemail_log::sim::simulated(|| Broker::start(topology));
    (broker.unwrap(), streams)
}

fn crash(streams: &[tubemail_log::sim::SimStream]) {
    for s in streams {
        s.abandon();
    }
}

fn topology(dir: &Path, spec: QueueSpec) -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec.durable(true))
        .bind("t", "q", "")
        .data_dir(dir)
}

/// A delivery as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    value: u64,
    id: u64,
    redelivered: bool,
    count: u32,
    deaths: Vec<(String, DeathReason, u32)>,
}

fn seen(d: &Delivery<u64>) -> Seen {
    Seen {
        value: *d.value(),
        id: d.id().0,
        redelivered: d.redelivered(),
        count: d.delivery_count(),
        deaths: d.deaths().iter().map(|x| (x.queue.to_string(), x.reason, x.count)).collect(),
    }
}

/// Subscribes `handler`, recording every delivery.
async fn record(
    broker: &Broker,
    queue: &str,
    handler: impl Fn(&Delivery<u64>) -> Outcome + Send + Sync + 'static,
) -> Arc<Mutex<Vec<Seen>>> {
    let seen_all = Arc::new(Mutex::new(Vec::new()));
    let log = seen_all.clone();
    let options = SubscribeOptions::default().prefetch(0);
    broker
        .subscribe_sync_with(queue, options, move |d: Delivery<u64>| {
            log.lock().unwrap().push(seen(&d));
            handler(&d)
        })
        .await
        .unwrap();
    seen_all
}

#[test]
fn after_a_crash_unacked_messages_come_back_redelivered_with_their_count_and_acked_ones_never() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), QueueSpec::default());
    let first_ids = life(|| async {
        let (broker, streams) = start_crashable(t.clone());
        for i in 0..10_u64 {
            broker.publish("t", "", i).await.unwrap();
        }
        // 0..4 acked; 4..7 nacked once, then held unacked; 7..10 held unacked at once.
        let seen = record(&broker, "q", |d| match *d.value() {
            0..4 => Outcome::Ack,
            4..7 if d.delivery_count() == 1 => Outcome::Nack { requeue: true },
            _ => Outcome::Defer,
        })
        .await;
        let stats = common::wait_until(&broker, "the first life's deliveries", |s| {
            let q = &s.queues["q"];
            q.acked == 4 && q.in_flight == 6 && q.ready == 0
        })
        .await;
        assert!(stats.queues["q"].journal_bytes > 0);
        crash(&streams);
        let ids: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.id).collect();
        ids
    });
    let later = life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let stats = broker.stats().await;
        assert_eq!(stats.queues["q"].recovered, 6, "{:?}", stats.queues["q"]);
        assert_eq!(stats.queues["q"].ready, 6);
        let seen = record(&broker, "q", |_| Outcome::Ack).await;
        broker.publish("t", "", 100_u64).await.unwrap();
        common::wait_until(&broker, "every delivery", |s| s.queues["q"].acked == 7).await;
        let report = broker.shutdown(SECOND).await;
        assert!(report.stats.conserved(), "{:?}", report.stats);
        let seen = seen.lock().unwrap().clone();
        seen
    });
    let by_value: BTreeMap<u64, &Seen> = later.iter().map(|s| (s.value, s)).collect();
    assert_eq!(by_value.keys().copied().collect::<Vec<_>>(), [4, 5, 6, 7, 8, 9, 100], "{later:?}");
    for v in 4..7 {
        let s = by_value[&v];
        assert!(s.redelivered && s.count == 3, "nacked once, held once, then this: {s:?}");
    }
    for v in 7..10 {
        let s = by_value[&v];
        assert!(s.redelivered && s.count == 2, "held once, then this: {s:?}");
    }
    let new_id = by_value[&100].id;
    assert!(first_ids.iter().all(|&id| id < new_id), "ids continue past the replayed ones: {new_id}");
    // A clean restart: everything was acked, nothing comes back, and although no journal holds an
    // id any more, new ids do not reuse those of the acked messages.
    life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let q = broker.stats().await.queues["q"].clone();
        assert_eq!((q.recovered, q.ready), (0, 0), "{q:?}");
        let seen = record(&broker, "q", |_| Outcome::Ack).await;
        broker.publish("t", "", 200_u64).await.unwrap();
        broker.idle().await;
        let id = seen.lock().unwrap()[0].id;
        assert!(id > new_id, "a new id {id} after the ids of an earlier process, up to {new_id}");
        broker.shutdown(SECOND).await;
    });
}

#[test]
fn confirmed_publishes_survive_a_crash_in_publish_order() {
    for fsync in [tubemail::Fsync::Always, tubemail::Fsync::Interval, tubemail::Fsync::Never] {
        let dir = tempfile::tempdir().unwrap();
        let t = topology(dir.path(), QueueSpec::default().fsync(fsync));
        life(|| async {
            let (broker, streams) = start_crashable(t.clone());
            for i in 0..50_u64 {
                broker.publish("t", "", i).await.unwrap();
            }
            crash(&streams);
        });
        let values = life(|| async {
            let broker = Broker::start(t.clone()).unwrap();
            let seen = record(&broker, "q", |_| Outcome::Ack).await;
            broker.idle().await;
            let values: Vec<u64> = seen.lock().unwrap().iter().map(|s| s.value).collect();
            values
        });
        assert_eq!(values, (0..50).collect::<Vec<_>>(), "{fsync:?}");
    }
}

#[test]
fn dead_letters_and_their_death_history_survive_a_crash() {
    for fsync in [tubemail::Fsync::Always, tubemail::Fsync::Interval] {
        dead_letters_survive_a_crash(fsync);
    }
}

fn dead_letters_survive_a_crash(fsync: tubemail::Fsync) {
    let dir = tempfile::tempdir().unwrap();
    let durable = QueueSpec::default().durable(true).fsync(fsync);
    let t = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", durable.clone().dead_letter("dead"))
        .queue("dead", durable)
        .bind("t", "q", "")
        .data_dir(dir.path());
    life(|| async {
        let (broker, streams) = start_crashable(t.clone());
        for i in 0..3_u64 {
            broker.publish("t", "", i).await.unwrap();
        }
        record(&broker, "q", |_| Outcome::Reject).await;
        common::wait_until(&broker, "the dead letters", |s| s.queues["dead"].ready == 3).await;
        tokio::task::yield_now().await; // the source's tombstones, written once the copies are acked
        crash(&streams);
    });
    let seen = life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let stats = broker.stats().await;
        assert_eq!((stats.queues["q"].recovered, stats.queues["dead"].recovered), (0, 3));
        let seen = record(&broker, "dead", |_| Outcome::Ack).await;
        broker.idle().await;
        let seen = seen.lock().unwrap().clone();
        seen
    });
    assert_eq!(seen.iter().map(|s| s.value).collect::<Vec<_>>(), [0, 1, 2]);
    for s in &seen {
        assert_eq!(s.deaths, [("q".to_owned(), DeathReason::Rejected, 1)], "{s:?}");
        assert!(!s.redelivered, "never delivered from the dead-letter queue: {s:?}");
    }
}

#[test]
fn a_message_replayed_after_its_last_allowed_delivery_is_dead_lettered_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let t = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", QueueSpec::default().durable(true).delivery_limit(2).dead_letter("dead"))
        .queue("dead", QueueSpec::default().durable(true))
        .bind("t", "q", "")
        .data_dir(dir.path());
    life(|| async {
        let (broker, streams) = start_crashable(t.clone());
        broker.publish("t", "", 1_u64).await.unwrap();
        broker.publish("t", "", 2_u64).await.unwrap();
        // 1 is delivered twice (the limit) and held; 2 once.
        record(&broker, "q", |d| match (*d.value(), d.delivery_count()) {
            (1, 1) => Outcome::Nack { requeue: true },
            _ => Outcome::Defer,
        })
        .await;
        common::wait_until(&broker, "three deliveries", |s| s.queues["q"].delivered == 3).await;
        crash(&streams);
    });
    let (in_q, in_dead) = life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let in_q = record(&broker, "q", |_| Outcome::Ack).await;
        let in_dead = record(&broker, "dead", |_| Outcome::Ack).await;
        broker.idle().await;
        let stats = broker.shutdown(SECOND).await.stats;
        assert_eq!(stats.queues["q"].dead_lettered, 1, "{:?}", stats.queues["q"]);
        let (a, b) = (in_q.lock().unwrap().clone(), in_dead.lock().unwrap().clone());
        (a, b)
    });
    assert_eq!(in_q.iter().map(|s| (s.value, s.count)).collect::<Vec<_>>(), [(2, 2)]);
    assert_eq!(in_dead.iter().map(|s| s.value).collect::<Vec<_>>(), [1]);
    assert_eq!(in_dead[0].deaths, [("q".to_owned(), DeathReason::DeliveryLimit, 1)]);
}

/// Sums the sizes of the files under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

#[test]
fn compaction_keeps_a_journal_within_twice_its_live_messages_plus_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), QueueSpec::default().depth_max(100_000));
    let journal = dir.path().join("streams").join(format!("{}q", tubemail::queue::JOURNAL_PREFIX));
    let payload = vec![7_u8; 1000];
    const PUBLISHED: u64 = 10_000;
    const HELD: u64 = 100;
    let (published, held) = (PUBLISHED, HELD);
    let disk = life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        // Every 100th message stays unacked: 100 live messages of 1,000 bytes at the end.
        broker
            .subscribe_sync_with(
                "q",
                SubscribeOptions::default().prefetch(0),
                |d: Delivery<tubemail::Bytes>| {
                    if d.id().0.is_multiple_of(PUBLISHED / HELD) {
                        Outcome::Defer
                    } else {
                        Outcome::Ack
                    }
                },
            )
            .await
            .unwrap();
        for _ in 0..published {
            broker.publish_bytes("t", "", payload.clone()).await.unwrap();
        }
        common::wait_until(&broker, "every ack", |s| s.queues["q"].acked == published - held).await;
        // Tombstones stay until a compaction after the millisecond they were written in.
        tokio::time::sleep(Duration::from_millis(2)).await;
        broker.maintain_streams().unwrap();
        let disk = disk_bytes(&journal);
        assert_eq!(broker.stats().await.queues["q"].in_flight, held);
        broker.shutdown(SECOND).await;
        disk
    });
    let live = held * payload.len() as u64;
    let bound = 2 * live + tubemail::queue::JOURNAL_SEGMENT_BYTES;
    println!("journal on disk {disk} bytes, live payloads {live} bytes, bound {bound}");
    assert!(disk <= bound, "the journal takes {disk} bytes on disk, above {bound}");
    assert!(disk >= live, "the live messages are on disk: {disk} bytes");
    // And it still holds every live message.
    let recovered = life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let q = broker.stats().await.queues["q"].clone();
        broker.shutdown(SECOND).await;
        q.recovered
    });
    assert_eq!(recovered, held);
}

#[test]
fn a_queue_that_is_not_durable_keeps_no_journal_and_nothing_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let t = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("plain", QueueSpec::default())
        .queue("q", QueueSpec::default().durable(true))
        .bind("t", "plain", "")
        .bind("t", "q", "")
        .data_dir(dir.path());
    life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        broker.publish("t", "", 1_u64).await.unwrap();
        let stats = broker.shutdown(SECOND).await.stats;
        assert_eq!(stats.queues["plain"].journal_bytes, 0);
        assert!(stats.queues["q"].journal_bytes > 0);
    });
    let streams: Vec<String> = std::fs::read_dir(dir.path().join("streams"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!streams.iter().any(|s| s.contains("plain")), "{streams:?}");
    life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        let stats = broker.stats().await;
        assert_eq!((stats.queues["plain"].ready, stats.queues["q"].ready), (0, 1));
        broker.shutdown(SECOND).await;
    });
}

#[test]
fn deleting_a_durable_queue_deletes_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let t = topology(dir.path(), QueueSpec::default());
    let journal = dir.path().join("streams").join(format!("{}q", tubemail::queue::JOURNAL_PREFIX));
    life(|| async {
        let broker = Broker::start(t.clone()).unwrap();
        broker.publish("t", "", 1_u64).await.unwrap();
        assert!(journal.exists());
        let stats = broker.delete_queue("q").await.unwrap();
        assert_eq!(stats.dropped.deleted, 1);
        assert!(!journal.exists(), "the journal went with its queue");
        // Declared again, it starts empty.
        broker.declare_queue("q", QueueSpec::default().durable(true)).unwrap();
        assert_eq!(broker.stats().await.queues["q"].recovered, 0);
        broker.shutdown(SECOND).await;
    });
}

#[test]
fn a_durable_queue_without_a_data_directory_is_refused_naming_the_queue() {
    let text = "[topics.t]\nkind = \"fanout\"\n\n[queues.billing]\ndurable = true\n";
    let err = Topology::from_toml_str(text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 5, column 11: queues.billing.durable: a durable queue needs a data directory (`data_dir` in the \
         file, or `Broker::builder(t).data_dir(path)`)"
    );
    let bad_name = "data_dir = \"/tmp/x\"\n[queues.\"billing/eu\"]\nfsync = \"always\"\ndurable = true\n";
    let err = Topology::from_toml_str(bad_name).unwrap_err();
    assert!(err.to_string().starts_with("line 4, column 11: queues.billing/eu.durable: "), "{err}");
    let err = Topology::from_toml_str("[queues.q]\nfsync = \"sometimes\"\n").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
    let in_code = Topology::new().queue("billing", QueueSpec::default().durable(true));
    let started = life(|| async { Broker::start(in_code.clone()).map(|_| ()) });
    match started {
        Err(StartError::Topology(TopologyError::Invalid { field, .. })) => {
            assert_eq!(field, "queues.billing.durable")
        }
        other => panic!("{other:?}"),
    }
    // With a directory from the builder, the same topology starts.
    let dir = tempfile::tempdir().unwrap();
    life(|| async {
        let broker = Broker::builder(in_code.clone()).data_dir(dir.path()).start().unwrap();
        broker.shutdown(SECOND).await;
    });
}
