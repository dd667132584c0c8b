//! Streams in the broker (issue #11): declared in a topology, appended to directly and through topic
//! bindings, read by readers and consumer groups, durable across a restart on a data directory.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_until;
use tubemail::stream::StartFrom;
use tubemail::{
    AppendError, Broker, Confirm, DeliveryMode, GroupError, GroupOptions, QueueSpec, StartError,
    StreamRecord, StreamSpec, TopicKind, TopicSpec, Topology,
};

fn spec(partitions: u32) -> StreamSpec {
    StreamSpec { partitions, ..StreamSpec::default() }
}

fn with_stream(partitions: u32) -> Topology {
    Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
        .queue("billing", QueueSpec::default())
        .queue("unrouted", QueueSpec::default())
        .stream("orders", spec(partitions))
        .bind("events", "billing", "orders.*.paid")
        .bind_stream("events", "orders", "orders.#")
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_topology_file_declares_streams_and_stream_bindings() {
    let text = r#"
data_dir = "var/log"

[topics.events]
[queues.billing]
[streams.orders]
partitions = 4
cleanup = "compact,delete"
fsync = "always"

[[bindings]]
topic = "events"
queue = "billing"
key = "orders.*.paid"

[[bindings]]
topic = "events"
stream = "orders"
key = "orders.#"
"#;
    let t = Topology::from_toml_str(text).unwrap();
    assert_eq!(t.data_dir.as_deref(), Some(std::path::Path::new("var/log")));
    let orders = &t.streams["orders"];
    assert_eq!(
        (orders.partitions, orders.fsync, orders.cleanup),
        (4, tubemail::Fsync::Always, tubemail::Cleanup::CompactDelete)
    );
    assert_eq!(t.bindings[1].target, tubemail::Target::Stream("orders".into()));
}

#[test]
fn a_bad_stream_field_is_named_with_its_line() {
    let err = Topology::from_toml_str("[streams.orders]\npartitions = 0\n").unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("streams.orders.partitions"), "{err}");
    let err = Topology::from_toml_str("[streams.orders]\nfsync = \"sometimes\"\n").unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("fsync"), "{err}");
    let both =
        "[topics.t]\n[queues.q]\n[streams.s]\n[[bindings]]\ntopic = \"t\"\nqueue = \"q\"\nstream = \"s\"\n";
    let err = Topology::from_toml_str(both).unwrap_err().to_string();
    assert!(err.contains("line 7") && err.contains("not both"), "{err}");
    let unknown = "[topics.t]\n[[bindings]]\ntopic = \"t\"\nstream = \"nope\"\n";
    let err = Topology::from_toml_str(unknown).unwrap_err().to_string();
    assert!(err.contains("line 4") && err.contains("no stream named"), "{err}");
    let internal = Topology::new().stream("__mine", spec(1)).validate().unwrap_err().to_string();
    assert!(internal.contains("broker's own"), "{internal}");
}

#[actix::test]
async fn a_publish_is_appended_to_a_bound_stream_with_the_same_confirm_as_a_queue() {
    let broker = Broker::start(with_stream(2)).unwrap();
    // Both the queue and the stream: two targets.
    assert_eq!(
        broker.publish("events", "orders.7.paid", 7_u64).await.unwrap(),
        Confirm::Routed { queues: 2 }
    );
    // Only the stream: routed, so not to the alternate queue.
    assert_eq!(
        broker.publish("events", "orders.7.created", 8_u64).await.unwrap(),
        Confirm::Routed { queues: 1 }
    );
    assert_eq!(
        broker.publish("events", "users.1", 9_u64).await.unwrap(),
        Confirm::Unroutable { alternate: Some("unrouted".into()) }
    );
    let stats = broker.stats().await;
    assert_eq!(stats.streams["orders"].appended, 2);
    assert!(stats.topics["events"].conserved(), "{:?}", stats.topics["events"]);
    assert_eq!(stats.queues["unrouted"].enqueued, 1);
    let mut values = BTreeMap::new();
    for p in 0..2 {
        let mut reader = broker.reader("orders", p, StartFrom::Earliest).unwrap();
        for r in reader.poll(10).unwrap() {
            values.insert(r.key_str().unwrap().to_owned(), r.value::<u64>().unwrap());
        }
    }
    assert_eq!(values, BTreeMap::from([("orders.7.created".to_owned(), 8), ("orders.7.paid".to_owned(), 7)]));
}

#[actix::test]
async fn records_with_one_key_keep_their_order_in_one_partition_and_offsets_are_dense() {
    let broker = Broker::start(Topology::new().stream("orders", spec(4))).unwrap();
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for i in 0..200_u64 {
        let key = format!("order-{}", i % 5);
        let a = broker.append("orders", &key, &i).await.unwrap();
        assert_eq!(a.partition, broker.partition_for("orders", &key).unwrap());
        by_partition.entry(a.partition).or_default().push(a.offset);
    }
    for offsets in by_partition.values() {
        assert_eq!(*offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "dense from 0");
    }
    let p = broker.partition_for("orders", "order-3").unwrap();
    let mut reader = broker.reader("orders", p, StartFrom::Earliest).unwrap();
    let of_3: Vec<u64> = reader
        .poll(1000)
        .unwrap()
        .iter()
        .filter(|r| r.key_str() == Some("order-3"))
        .map(|r| r.value::<u64>().unwrap())
        .collect();
    assert_eq!(of_3, (0..40).map(|i| i * 5 + 3).collect::<Vec<_>>(), "in append order");
}

#[actix::test]
async fn a_reader_replays_from_an_offset_and_then_tails() {
    let broker = Broker::start(Topology::new().stream("log", spec(1))).unwrap();
    for i in 0..10_u32 {
        broker.append("log", "", &i).await.unwrap();
    }
    let mut reader = broker.reader("log", 0, StartFrom::Offset(7)).unwrap();
    let replayed: Vec<u32> = reader.poll(100).unwrap().iter().map(|r| r.value().unwrap()).collect();
    assert_eq!(replayed, [7, 8, 9]);
    let appender = broker.clone();
    let tail = actix::spawn(async move { reader.next().await.unwrap().value::<u32>().unwrap() });
    tokio::task::yield_now().await;
    appender.append("log", "", &10_u32).await.unwrap();
    assert_eq!(tail.await.unwrap(), 10);
    let mut latest = broker.reader("log", 0, StartFrom::Latest).unwrap();
    assert!(latest.poll(10).unwrap().is_empty());
    assert_eq!(latest.position(), 11);
}

#[actix::test]
async fn a_reader_starts_at_the_first_record_at_or_after_a_time() {
    tokio::time::pause();
    let broker = Broker::start(Topology::new().stream("log", spec(1))).unwrap();
    let mut times = Vec::new();
    for i in 0..10_u32 {
        let a = broker.append("log", "", &i).await.unwrap();
        let mut reader = broker.reader("log", 0, StartFrom::Offset(a.offset)).unwrap();
        times.push(reader.poll(1).unwrap()[0].timestamp);
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    assert!(
        times.windows(2).all(|w| w[1] - w[0] == 60_000),
        "the broker's clock moves with tokio's: {times:?}"
    );
    let mut reader = broker.reader("log", 0, StartFrom::Timestamp(times[6] - 1)).unwrap();
    assert_eq!(
        reader.poll(100).unwrap().iter().map(|r| r.value::<u32>().unwrap()).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    let past_the_end = broker.reader("log", 0, StartFrom::Timestamp(times[9] + 1)).unwrap();
    assert_eq!(past_the_end.position(), 10);
}

#[actix::test]
async fn bad_input_to_streams_gets_typed_errors() {
    let topology = Topology::new().stream("small", StreamSpec { max_record_bytes: 100, ..spec(2) });
    let broker = Broker::start(topology).unwrap();
    assert!(matches!(broker.append("nope", "", &1).await, Err(AppendError::UnknownStream(_))));
    let big = vec![7_u8; 500];
    let err = broker.append_bytes("small", "k", big).await.unwrap_err();
    assert!(matches!(err, AppendError::Log(tubemail_log::LogError::RecordTooLarge { .. })), "{err}");
    assert_eq!(broker.stats().await.streams["small"].append_errors, 1);
    assert!(broker.reader("small", 9, StartFrom::Earliest).is_err());
    let handler = |_: StreamRecord| async {};
    assert!(matches!(
        broker.join_group("small", "", GroupOptions::default(), handler).await,
        Err(GroupError::InvalidName(_))
    ));
    let bad = GroupOptions { commit_every: 0, ..GroupOptions::default() };
    assert!(matches!(broker.join_group("small", "g", bad, handler).await, Err(GroupError::Options(_))));
    assert!(matches!(
        broker.join_group("nope", "g", GroupOptions::default(), handler).await,
        Err(GroupError::UnknownStream(_))
    ));
}

/// Handled records, by (partition, offset), and a check that no partition is in two handlers at once.
#[derive(Default)]
struct Tally {
    handled: Mutex<Vec<(u32, u64, u64)>>,
    busy: Mutex<BTreeSet<u32>>,
    overlaps: AtomicU64,
}

impl Tally {
    fn handler(
        self: &Arc<Self>,
        member: u64,
    ) -> impl Fn(StreamRecord) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + Sync + 'static
    {
        let tally = self.clone();
        move |r: StreamRecord| {
            let tally = tally.clone();
            Box::pin(async move {
                if !tally.busy.lock().unwrap().insert(r.partition) {
                    tally.overlaps.fetch_add(1, Ordering::Relaxed);
                }
                // Long enough that rebalances find handlers mid-record.
                tokio::time::sleep(Duration::from_millis(1)).await;
                tally.handled.lock().unwrap().push((r.partition, r.offset, member));
                tally.busy.lock().unwrap().remove(&r.partition);
            })
        }
    }
}

async fn lag_zero(broker: &Broker, stream: &str, group: &str) {
    wait_until(broker, "the group to catch up", |s| {
        s.streams[stream]
            .groups
            .get(group)
            .is_some_and(|g| g.lag() == 0 && g.partitions.values().all(|p| p.committed.is_some()))
    })
    .await;
}

#[actix::test]
async fn a_group_shares_partitions_and_rebalances_without_two_readers_of_one_partition() {
    let broker = Broker::start(Topology::new().stream("orders", spec(4))).unwrap();
    for i in 0..400_u64 {
        broker.append("orders", &format!("k{i}"), &i).await.unwrap();
    }
    let tally = Arc::new(Tally::default());
    let one =
        broker.join_group("orders", "billing", GroupOptions::default(), tally.handler(1)).await.unwrap();
    let two =
        broker.join_group("orders", "billing", GroupOptions::default(), tally.handler(2)).await.unwrap();
    assert_eq!(one.partitions().len() + two.partitions().len(), 4);
    assert!(one.partitions().iter().all(|p| !two.partitions().contains(p)));
    // Records keep coming while a third member joins and the first leaves.
    for i in 400..600_u64 {
        broker.append("orders", &format!("k{i}"), &i).await.unwrap();
    }
    let handled = |n: usize| {
        let tally = tally.clone();
        async move {
            while tally.handled.lock().unwrap().len() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    handled(450).await;
    let three =
        broker.join_group("orders", "billing", GroupOptions::default(), tally.handler(3)).await.unwrap();
    handled(550).await;
    one.leave().await;
    for i in 600..800_u64 {
        broker.append("orders", &format!("k{i}"), &i).await.unwrap();
    }
    lag_zero(&broker, "orders", "billing").await;
    assert_eq!(tally.overlaps.load(Ordering::Relaxed), 0, "a partition was in two handlers at once");
    let handled = tally.handled.lock().unwrap().clone();
    let distinct: BTreeSet<(u32, u64)> = handled.iter().map(|&(p, o, _)| (p, o)).collect();
    assert_eq!(distinct.len(), 800, "every record handled");
    assert_eq!(handled.len(), 800, "and, with clean rebalances, once");
    let g = &broker.stats().await.streams["orders"].groups["billing"];
    assert_eq!((g.members, g.lag(), g.crashed), (2, 0, 0), "{g:?}");
    drop((two, three));
}

#[actix::test]
async fn a_crashed_member_leaves_and_its_record_is_redelivered_at_least_once() {
    let broker = Broker::start(Topology::new().stream("s", spec(1))).unwrap();
    for i in 0..20_u64 {
        broker.append("s", "", &i).await.unwrap();
    }
    let failed_once = Arc::new(AtomicBool::new(false));
    let crashing = {
        let failed = failed_once.clone();
        move |r: StreamRecord| {
            let failed = failed.clone();
            async move {
                if r.offset == 5 && !failed.swap(true, Ordering::Relaxed) {
                    panic!("a handler bug");
                }
            }
        }
    };
    let options = GroupOptions { commit_every: 1, ..GroupOptions::default() };
    let first = broker.join_group("s", "g", options, crashing).await.unwrap();
    let tally = Arc::new(Tally::default());
    let second = broker.join_group("s", "g", options, tally.handler(2)).await.unwrap();
    lag_zero(&broker, "s", "g").await;
    assert!(first.crashed());
    let offsets: Vec<u64> = tally.handled.lock().unwrap().iter().map(|&(_, o, _)| o).collect();
    assert_eq!(offsets.first(), Some(&5), "the crashed record goes to the next owner");
    assert_eq!(*offsets.last().unwrap(), 19);
    assert_eq!(broker.stats().await.streams["s"].groups["g"].crashed, 1);
    assert_eq!(second.partitions(), [0]);
}

#[actix::test]
async fn at_most_once_a_crashed_record_is_never_handled_again() {
    let broker = Broker::start(Topology::new().stream("s", spec(1))).unwrap();
    for i in 0..20_u64 {
        broker.append("s", "", &i).await.unwrap();
    }
    let options = GroupOptions { mode: DeliveryMode::AtMostOnce, ..GroupOptions::default() };
    let first = broker
        .join_group("s", "g", options, |r: StreamRecord| async move {
            assert_ne!(r.offset, 5, "a handler bug");
        })
        .await
        .unwrap();
    let tally = Arc::new(Tally::default());
    let _second = broker.join_group("s", "g", options, tally.handler(2)).await.unwrap();
    lag_zero(&broker, "s", "g").await;
    // At most once, the offsets are committed before the handlers run: wait for the last one too.
    wait_until(&broker, "the last handler", |s| s.streams["s"].groups["g"].processed == 19).await;
    assert!(first.crashed());
    let offsets: Vec<u64> = tally.handled.lock().unwrap().iter().map(|&(_, o, _)| o).collect();
    assert_eq!(offsets, (6..20).collect::<Vec<_>>(), "offset 5 was committed before its handler ran");
}

#[actix::test]
async fn records_and_committed_offsets_survive_a_restart_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::new().stream("orders", spec(2)).data_dir(dir.path());
    let handled = Arc::new(AtomicU64::new(0));
    {
        let broker = Broker::start(topology.clone()).unwrap();
        for i in 0..100_u64 {
            broker.append("orders", &format!("k{i}"), &i).await.unwrap();
        }
        let count = handled.clone();
        let member = broker
            .join_group("orders", "g", GroupOptions::default(), move |_| {
                count.fetch_add(1, Ordering::Relaxed);
                async {}
            })
            .await
            .unwrap();
        lag_zero(&broker, "orders", "g").await;
        // A second process may not open the directory while this one runs.
        assert!(matches!(
            Broker::builder(Topology::new()).data_dir(dir.path()).start(),
            Err(StartError::Log(tubemail_log::LogError::Locked { .. }))
        ));
        drop(member);
        broker.shutdown(SECOND).await;
    }
    assert_eq!(handled.load(Ordering::Relaxed), 100);
    let broker = Broker::start(topology).unwrap();
    let stats = broker.stats().await;
    let kept: u64 = stats.streams["orders"].partitions.values().map(|p| p.end).sum();
    assert_eq!(kept, 100);
    assert_eq!(stats.streams["orders"].groups["g"].lag(), 0, "the committed offsets came back");
    for i in 100..110_u64 {
        broker.append("orders", &format!("k{i}"), &i).await.unwrap();
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let _member = broker
        .join_group("orders", "g", GroupOptions::default(), move |r: StreamRecord| {
            record.lock().unwrap().push(r.value::<u64>().unwrap());
            async {}
        })
        .await
        .unwrap();
    lag_zero(&broker, "orders", "g").await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (100..110).collect::<Vec<_>>(), "the group resumed where it stopped");
    broker.shutdown(SECOND).await;
}

/// Under `interval` each stream syncs on its own clock: a group syncs the records it commits first,
/// so a machine crash never keeps a commit past records it lost.
#[actix::test]
async fn under_fsync_interval_a_commit_never_gets_ahead_of_the_synced_records() {
    let dir = tempfile::tempdir().unwrap();
    // An interval long enough that only the group's commit can have synced the records.
    let slow = StreamSpec { fsync: tubemail::Fsync::Interval, fsync_interval_ms: 3_600_000, ..spec(1) };
    let topology = Topology::new().stream("read", slow.clone()).stream("unread", slow).data_dir(dir.path());
    let broker = Broker::start(topology).unwrap();
    for i in 0..10_u64 {
        broker.append("read", "", &i).await.unwrap();
        broker.append("unread", "", &i).await.unwrap();
    }
    let _member = broker.join_group("read", "g", GroupOptions::default(), |_| async {}).await.unwrap();
    lag_zero(&broker, "read", "g").await;
    let stats = broker.stats().await;
    let committed = stats.streams["read"].groups["g"].partitions[&0].committed.unwrap();
    assert_eq!(committed, 10);
    assert!(stats.streams["read"].partitions[&0].synced >= committed, "{:?}", stats.streams["read"]);
    assert_eq!(stats.streams["unread"].partitions[&0].synced, 0, "nothing else synced them");
    broker.shutdown(SECOND).await;
}

#[actix::test]
async fn records_retention_removed_before_a_group_read_them_are_counted() {
    let small = StreamSpec { segment_bytes: 4096, retention_records: Some(10), ..spec(1) };
    let broker = Broker::start(Topology::new().stream("s", small)).unwrap();
    for i in 0..5_u64 {
        broker.append("s", "", &i).await.unwrap();
    }
    // The group reads and commits five records, then is away while a thousand more come and go.
    let member = broker.join_group("s", "slow", GroupOptions::default(), |_| async {}).await.unwrap();
    lag_zero(&broker, "s", "slow").await;
    member.leave().await;
    for i in 5..1000_u64 {
        broker.append("s", "", &i).await.unwrap();
    }
    assert!(broker.maintain_streams().unwrap().segments_deleted > 0);
    let start = broker.stats().await.streams["s"].partitions[&0].start;
    assert!(start > 5);
    let _member = broker.join_group("s", "slow", GroupOptions::default(), |_| async {}).await.unwrap();
    lag_zero(&broker, "s", "slow").await;
    let g = &broker.stats().await.streams["s"].groups["slow"];
    assert_eq!(g.skipped_by_retention, start - 5, "{g:?}");
    assert_eq!(g.processed, 5 + (1000 - start), "{g:?}");
}

#[actix::test]
async fn shutdown_stops_group_members_and_reports_streams() {
    let broker = Broker::start(Topology::new().stream("s", spec(2))).unwrap();
    for i in 0..50_u64 {
        broker.append("s", &format!("{i}"), &i).await.unwrap();
    }
    let _member = broker.join_group("s", "g", GroupOptions::default(), |_| async {}).await.unwrap();
    lag_zero(&broker, "s", "g").await;
    let report = broker.shutdown(SECOND).await;
    assert_eq!(report.stats.streams["s"].appended, 50);
    assert!(matches!(broker.append("s", "", &1).await, Err(AppendError::Closed)));
    assert!(matches!(
        broker.join_group("s", "g", GroupOptions::default(), |_| async {}).await,
        Err(GroupError::Closed)
    ));
}

/// Records compaction removed from the end of a partition (a key's tombstone past
/// `delete_retention_ms`, and its older value, at the end of a closed segment whose successor is
/// still empty: a crash right after a roll leaves one) leave an empty range below the partition's
/// end. A group member and a tailing reader at the start of that range must move past it and wait
/// for the next append; they used to read nothing, find the end already past their position, and
/// read again without ever yielding, which froze the broker's arbiter (found by the simulator, with
/// a compaction broken on purpose that removed a partition's last record).
#[test]
fn a_group_and_a_reader_move_past_records_compaction_removed_at_the_end() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let spec = StreamSpec {
        partitions: 1,
        cleanup: tubemail::Cleanup::Compact,
        delete_retention_ms: 1,
        ..StreamSpec::default()
    };
    {
        let log = tubemail_log::LogDir::open(dir.path()).unwrap();
        let s = log.stream("s", spec.clone()).unwrap();
        for value in [Some(&b"v"[..]), None] {
            let append = tubemail_log::Append { key: Some(b"k"), value, timestamp: 1 };
            s.append_blocking(append).unwrap();
        }
        s.close().unwrap();
    }
    std::fs::File::create(dir.path().join("streams/s/0").join(format!("{:020}.log", 2))).unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let path = dir.path().to_owned();
    // The broker on a thread of its own: were its arbiter to spin, this test's thread reports it.
    std::thread::spawn(move || {
        actix::System::new().block_on(async move {
            let topology = Topology::new().stream("s", spec);
            let broker = Broker::builder(topology).data_dir(&path).start().unwrap();
            let removed = broker.maintain_streams().unwrap().records_removed;
            tx.send(format!("compaction removed {removed}")).unwrap();
            let mut reader = broker.reader("s", 0, StartFrom::Earliest).unwrap();
            let handled = tx.clone();
            let _member = broker
                .join_group("s", "g", GroupOptions::default(), move |r: StreamRecord| {
                    let _ = handled.send(format!("group {}", r.offset));
                    async {}
                })
                .await
                .unwrap();
            let at_most_once = GroupOptions { mode: DeliveryMode::AtMostOnce, ..GroupOptions::default() };
            let _other = broker.join_group("s", "h", at_most_once, |_: StreamRecord| async {}).await.unwrap();
            // The members read the empty range before anything else is appended, and commit past it.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let stats = broker.stats().await;
            for group in ["g", "h"] {
                let committed = stats.streams["s"].groups[group].partitions[&0].committed;
                tx.send(format!("{group} committed {committed:?}")).unwrap();
            }
            broker.append_bytes("s", "k2", "after").await.unwrap();
            let r = reader.next().await.unwrap();
            let _ = tx.send(format!("reader {}", r.offset));
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
    });
    let mut got = Vec::new();
    while got.len() < 5 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => got.push(line),
            Err(_) => panic!("the broker stopped answering after {got:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        ["compaction removed 2", "g committed Some(2)", "group 2", "h committed Some(2)", "reader 2"]
    );
}
