//! The storage engine as its users meet it: appends and reads across segment rolls and reopens, torn
//! tails, damage, locks, bad input, retention, compaction and group commit; on disk and in memory.

use std::path::Path;
use std::sync::Arc;

use tubemail_log::{Append, Cleanup, Fsync, LogDir, LogError, Record, Stream, StreamConfig};

fn small(partitions: u32) -> StreamConfig {
    StreamConfig { partitions, segment_bytes: 4096, fsync: Fsync::Never, ..StreamConfig::default() }
}

fn put(stream: &Stream, key: &str, value: &str, timestamp: i64) -> tubemail_log::Appended {
    stream
        .append_blocking(Append { key: Some(key.as_bytes()), value: Some(value.as_bytes()), timestamp })
        .unwrap()
}

fn all(stream: &Stream, partition: u32) -> Vec<Record> {
    let p = stream.partition(partition).unwrap();
    p.read(p.start(), usize::MAX, usize::MAX).unwrap()
}

fn value(r: &Record) -> &str {
    std::str::from_utf8(r.value.as_deref().unwrap()).unwrap()
}

/// The active segment's file of partition 0 (the newest .log).
fn last_segment(dir: &Path, stream: &str) -> std::path::PathBuf {
    let pdir = dir.join("streams").join(stream).join("0");
    let mut logs: Vec<_> = std::fs::read_dir(&pdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn records_keep_their_offsets_and_order_across_rolls_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("orders", small(1)).unwrap();
        for i in 0..500 {
            let a = put(&s, "k", &format!("value-{i}"), i);
            assert_eq!((a.partition, a.offset), (0, i as u64));
        }
        assert!(s.partition(0).unwrap().info().segments.len() >= 4, "4 KiB segments roll");
    }
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("orders").unwrap();
    let p = s.partition(0).unwrap();
    assert!(p.recovered().from_checkpoint, "a clean close leaves a checkpoint");
    assert_eq!(p.recovered().torn_bytes, 0);
    let records = all(&s, 0);
    assert_eq!(records.len(), 500);
    for (i, r) in records.iter().enumerate() {
        assert_eq!((r.offset, value(r)), (i as u64, format!("value-{i}").as_str()));
    }
    assert_eq!(put(&s, "k", "after", 500).offset, 500, "offsets go on from where they were");
    assert_eq!(
        p.read(250, 3, usize::MAX).unwrap().iter().map(|r| r.offset).collect::<Vec<_>>(),
        [250, 251, 252]
    );
}

#[test]
fn the_same_key_goes_to_the_same_partition_and_keyless_records_spread() {
    let log = LogDir::memory();
    let s = log.stream("events", small(4)).unwrap();
    let first = put(&s, "user-7", "a", 0).partition;
    for _ in 0..20 {
        assert_eq!(put(&s, "user-7", "b", 0).partition, first);
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        seen.insert(
            s.append_blocking(Append { key: None, value: Some(b"x"), timestamp: 0 }).unwrap().partition,
        );
    }
    assert_eq!(seen.len(), 4, "round robin reaches every partition");
}

#[test]
fn a_torn_last_record_is_cut_and_everything_before_it_stays() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("t", StreamConfig { fsync: Fsync::Never, ..StreamConfig::default() }).unwrap();
        for i in 0..100 {
            put(&s, "k", &format!("v{i}"), i);
        }
    }
    // A crash in the middle of the last write: its frame is cut short, and garbage zeros follow.
    let file = last_segment(dir.path(), "t");
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len - 5).unwrap();
    std::fs::remove_file(dir.path().join("streams/t/0/recovery-point")).unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("t").unwrap();
    let p = s.partition(0).unwrap();
    assert!(p.recovered().torn_bytes > 0);
    assert_eq!(p.end(), 99, "the torn record is gone, and only it");
    assert_eq!(all(&s, 0).len(), 99);
    assert_eq!(put(&s, "k", "again", 0).offset, 99, "its offset is written anew: it was never acked");
}

#[test]
fn trailing_zeros_from_a_crash_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("t", small(1)).unwrap();
        put(&s, "k", "v", 0);
    }
    let file = last_segment(dir.path(), "t");
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len + 300).unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("t").unwrap();
    assert_eq!(s.partition(0).unwrap().recovered().torn_bytes, 300);
    assert_eq!(all(&s, 0).len(), 1);
}

#[test]
fn damage_before_the_tail_is_reported_with_its_file_and_position_and_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("t", small(1)).unwrap();
        for i in 0..200 {
            put(&s, "k", &format!("value-{i:04}"), i);
        }
    }
    // Flip a byte inside the first segment's third frame.
    let first = dir.path().join("streams/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let at = 2 * tubemail_log::record::frame_len(Some(b"k"), Some(b"value-0000")) + 20;
    bytes[at] ^= 0xff;
    std::fs::write(&first, &bytes).unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("t").unwrap();
    let p = s.partition(0).unwrap();
    let err = p.verify().unwrap_err();
    let LogError::Corrupt { file, position, .. } = &err else { panic!("{err:?}") };
    assert!(file.ends_with("00000000000000000000.log"), "{err}");
    assert_eq!(*position, 2 * tubemail_log::record::frame_len(Some(b"k"), Some(b"value-0000")) as u64);
    assert!(matches!(p.read(0, usize::MAX, usize::MAX), Err(LogError::Corrupt { .. })));
    // What is past the damage stays readable.
    assert_eq!(p.read(150, 1, usize::MAX).unwrap()[0].offset, 150);
}

#[test]
fn a_directory_is_locked_by_the_process_that_opened_it() {
    let dir = tempfile::tempdir().unwrap();
    let held = LogDir::open(dir.path()).unwrap();
    assert!(matches!(LogDir::open(dir.path()), Err(LogError::Locked { .. })));
    drop(held);
    LogDir::open(dir.path()).unwrap();
}

#[test]
fn a_directory_that_is_not_a_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    let err = LogDir::open(dir.path()).unwrap_err();
    assert!(matches!(err, LogError::NotALog { .. }), "{err}");
    assert!(matches!(LogDir::open_existing(dir.path().join("missing")), Err(LogError::NotALog { .. })));
}

/// A crash while the first open wrote the marker used to leave an empty (or cut) marker in an
/// otherwise empty directory, refused from then on as "an unknown marker".
#[test]
fn a_marker_cut_by_a_crash_while_the_directory_was_made_is_written_again() {
    for cut in ["", "tubemail log"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tubemail-log"), cut).unwrap();
        assert!(
            matches!(LogDir::open_existing(dir.path()), Err(LogError::NotALog { .. })),
            "inspection never makes a log"
        );
        let log = LogDir::open(dir.path()).unwrap_or_else(|e| panic!("marker {cut:?}: {e}"));
        drop(log.stream("t", small(1)).unwrap());
        drop(log);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tubemail-log")).unwrap(),
            "tubemail log format 1\n"
        );
        LogDir::open_existing(dir.path()).unwrap();
    }
    // Beside anything else, a cut marker is not the log's: refused.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tubemail-log"), "").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    assert!(matches!(LogDir::open(dir.path()), Err(LogError::NotALog { .. })));
}

#[test]
fn bad_input_gets_typed_errors() {
    let log = LogDir::memory();
    let s = log.stream("t", StreamConfig { max_record_bytes: 100, ..small(2) }).unwrap();
    let big = vec![0u8; 200];
    let err = s.append(Append { key: None, value: Some(&big), timestamp: 0 }).unwrap_err();
    assert!(matches!(err, LogError::RecordTooLarge { max: 100, .. }), "{err}");
    put(&s, "a", "b", 0);
    let p = s.partition(0).unwrap();
    assert!(matches!(p.read(p.end() + 1, 1, 1), Err(LogError::OffsetPastEnd { .. })));
    assert!(p.read(p.end(), 1, 1).unwrap().is_empty(), "reading at the end waits for nothing");
    assert!(matches!(s.partition(9), Err(LogError::UnknownPartition { partition: 9, partitions: 2 })));
    assert!(matches!(log.stream("../x", small(1)), Err(LogError::InvalidName(_))));
    assert!(matches!(
        log.stream("t2", StreamConfig { partitions: 0, ..small(1) }),
        Err(LogError::InvalidConfig { field: "partitions", .. })
    ));
    let compacted = log.stream("c", StreamConfig { cleanup: Cleanup::Compact, ..small(1) }).unwrap();
    assert!(matches!(
        compacted.append(Append { key: None, value: Some(b"x"), timestamp: 0 }),
        Err(LogError::KeyRequired)
    ));
}

#[test]
fn partitions_cannot_change_under_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    drop(log.stream("t", small(2)).unwrap());
    assert!(matches!(
        log.stream("t", small(3)),
        Err(LogError::PartitionsChanged { on_disk: 2, asked: 3, .. })
    ));
}

/// A crash used to be able to leave `stream.toml` empty (each open rewrote it in place), and an empty
/// file read as the default settings: one partition, so the records of the others vanished.
#[test]
fn a_settings_file_without_partitions_is_refused_not_read_as_defaults() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("t", small(2)).unwrap();
        for i in 0..20 {
            put(&s, &format!("key-{i}"), "v", i);
        }
    }
    let settings = dir.path().join("streams/t/stream.toml");
    std::fs::write(&settings, "").unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let err = log.open_stream("t").unwrap_err();
    let LogError::NotALog { path, why } = &err else { panic!("{err:?}") };
    assert_eq!(path, &settings, "{err}");
    assert!(why.contains("partitions"), "{err}");
}

/// Opening a stream writes its settings only when they change, and then as a whole (a new file
/// renamed over the old one), never leaving a temporary file behind.
#[test]
fn reopening_a_stream_rewrites_its_settings_only_when_they_change() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let settings = dir.path().join("streams/t/stream.toml");
    drop(log.stream("t", small(2)).unwrap());
    let inode = std::fs::metadata(&settings).unwrap().ino();
    drop(log.open_stream("t").unwrap());
    drop(log.stream("t", small(2)).unwrap());
    assert_eq!(std::fs::metadata(&settings).unwrap().ino(), inode, "unchanged settings are left alone");
    drop(log.stream("t", StreamConfig { fsync: Fsync::Always, ..small(2) }).unwrap());
    assert_ne!(std::fs::metadata(&settings).unwrap().ino(), inode, "changed settings replace the file");
    assert_eq!(log.open_stream("t").unwrap().config().fsync, Fsync::Always);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("streams/t"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".new")), "{names:?}");
}

#[test]
fn retention_drops_whole_closed_segments_by_records_bytes_and_age() {
    for storage in ["disk", "memory"] {
        let dir = tempfile::tempdir().unwrap();
        let log = if storage == "disk" { LogDir::open(dir.path()).unwrap() } else { LogDir::memory() };
        let by_records = log.stream("r", StreamConfig { retention_records: Some(100), ..small(1) }).unwrap();
        for i in 0..1000 {
            put(&by_records, "k", "some value of a few bytes", i);
        }
        let p = by_records.partition(0).unwrap();
        let deleted = by_records.maintain(1000).unwrap().segments_deleted;
        assert!(deleted > 0, "{storage}");
        assert!(p.end() - p.start() >= 100, "{storage}: at least the records asked for stay");
        assert!(p.end() - p.start() < 100 + 200, "{storage}: and not much more: {}", p.start());
        assert!(matches!(p.read(0, 1, 1), Err(LogError::OffsetBeforeStart { .. })), "{storage}");
        assert_eq!(all(&by_records, 0).first().unwrap().offset, p.start(), "{storage}");

        let by_age = log.stream("a", StreamConfig { retention_ms: Some(1_000), ..small(1) }).unwrap();
        for i in 0..1000 {
            put(&by_age, "k", "some value of a few bytes", i * 10);
        }
        by_age.maintain(10_000).unwrap();
        let p = by_age.partition(0).unwrap();
        let oldest = all(&by_age, 0).first().unwrap().timestamp;
        assert!(oldest > 10_000 - 1_000 - 2_000, "{storage}: old segments went ({oldest})");
        let by_bytes = log.stream("b", StreamConfig { retention_bytes: Some(8192), ..small(1) }).unwrap();
        for i in 0..1000 {
            put(&by_bytes, "k", "some value of a few bytes", i);
        }
        by_bytes.maintain(0).unwrap();
        assert!(by_bytes.partition(0).unwrap().info().bytes <= 8192 + 4096, "{storage}");
        assert!(p.start() > 0);
    }
}

#[test]
fn compaction_keeps_each_keys_last_record_and_never_changes_offsets() {
    for storage in ["disk", "memory"] {
        let dir = tempfile::tempdir().unwrap();
        let log = if storage == "disk" { LogDir::open(dir.path()).unwrap() } else { LogDir::memory() };
        let config = StreamConfig { cleanup: Cleanup::Compact, delete_retention_ms: 1_000, ..small(1) };
        let s = log.stream("users", config).unwrap();
        for i in 0..600_i64 {
            put(&s, &format!("user-{}", i % 10), &format!("v{i}"), i);
        }
        // user-3 is deleted: a tombstone.
        s.append_blocking(Append { key: Some(b"user-3"), value: None, timestamp: 600 }).unwrap();
        for i in 601..700_i64 {
            put(&s, "user-0", &format!("v{i}"), i);
        }
        let before = all(&s, 0);
        let active_base = s.partition(0).unwrap().info().segments.last().unwrap().base;
        let work = s.maintain(700).unwrap();
        assert!(work.segments_compacted > 0 && work.records_removed > 0, "{storage}: {work:?}");
        let after = all(&s, 0);
        // Every record left is one that was there, at its offset; the active segment is untouched.
        for r in &after {
            assert!(before.contains(r), "{storage}: {r:?} was not there before");
        }
        let untouched: Vec<&Record> = before.iter().filter(|r| r.offset >= active_base).collect();
        assert_eq!(untouched, after.iter().filter(|r| r.offset >= active_base).collect::<Vec<_>>());
        // The latest value of every key is still there, and the tombstone too (younger than 1 s).
        let latest = |records: &[Record], key: &str| {
            records.iter().rev().find(|r| r.key.as_deref() == Some(key.as_bytes())).cloned()
        };
        for k in 0..10 {
            let key = format!("user-{k}");
            assert_eq!(latest(&before, &key), latest(&after, &key), "{storage}: {key}");
        }
        assert!(latest(&after, "user-3").unwrap().is_tombstone());
        // Later, the tombstone itself goes (it is in a closed segment).
        for i in 700..900_i64 {
            put(&s, "user-0", &format!("v{i}"), i);
        }
        s.maintain(10_000).unwrap();
        assert!(all(&s, 0).iter().all(|r| r.key.as_deref() != Some(&b"user-3"[..])), "{storage}");
        assert_eq!(s.partition(0).unwrap().verify().unwrap() as usize, all(&s, 0).len());
    }
}

#[test]
fn compacted_segments_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("c", StreamConfig { cleanup: Cleanup::Compact, ..small(1) }).unwrap();
        for i in 0..500_i64 {
            put(&s, &format!("k{}", i % 7), &format!("v{i}"), i);
        }
        s.maintain(500).unwrap();
        all(&s, 0)
    };
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("c").unwrap();
    assert_eq!(all(&s, 0), expected);
}

/// `compact_all` (a durable queue's journal): the active segment's records count too, expired
/// tombstones go with the records they deleted, and the segments left empty are removed, also after
/// a reopen; offsets never change and what is kept reads back.
#[test]
fn compacting_a_whole_partition_keeps_only_the_live_keys_and_removes_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig { cleanup: Cleanup::Compact, delete_retention_ms: 0, ..small(1) };
    let kept = {
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("j", config.clone()).unwrap();
        for i in 0..400_i64 {
            put(&s, &format!("k{i}"), &"x".repeat(50), i);
            if i % 40 != 0 {
                // Deleted at once: in the active segment, or in a closed one.
                s.append_blocking(Append {
                    key: Some(format!("k{i}").as_bytes()),
                    value: None,
                    timestamp: i,
                })
                .unwrap();
            }
        }
        let p = s.partition(0).unwrap();
        let (segments, end) = (p.info().segments.len(), p.end());
        assert!(segments > 5, "{segments} segments");
        let work = p.compact_all(1_000).unwrap();
        assert!(work.segments_deleted > 0, "{work:?}");
        let info = p.info();
        assert!(info.segments.len() < segments, "{info:?}");
        assert_eq!(p.end(), end, "offsets never change");
        let kept = all(&s, 0);
        let keys: Vec<String> =
            kept.iter().map(|r| String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap()).collect();
        assert_eq!(keys, (0..10).map(|i| format!("k{}", i * 40)).collect::<Vec<_>>());
        assert!(info.bytes <= 10 * 200, "{} bytes for 10 live records", info.bytes);
        // Appends go on past the end.
        assert_eq!(put(&s, "k-after", "v", 2_000).offset, end);
        all(&s, 0)
    };
    let log = LogDir::open(dir.path()).unwrap();
    let s = log.open_stream("j").unwrap();
    assert_eq!(all(&s, 0), kept, "the compacted partition reads back after a reopen");
}

#[test]
fn a_reader_finds_the_first_record_at_or_after_a_time() {
    let log = LogDir::memory();
    let s = log.stream("t", small(1)).unwrap();
    for i in 0..1000_i64 {
        put(&s, "k", "v", 1_000 + i * 10);
    }
    let p = s.partition(0).unwrap();
    assert_eq!(p.offset_for_time(0).unwrap(), 0);
    assert_eq!(p.offset_for_time(1_000 + 500 * 10).unwrap(), 500);
    assert_eq!(p.offset_for_time(1_000 + 500 * 10 - 5).unwrap(), 500);
    assert_eq!(p.offset_for_time(1_000_000).unwrap(), 1000, "past the newest: the end");
}

#[test]
fn concurrent_appends_under_fsync_always_share_their_syncs() {
    const THREADS: usize = 8;
    const EACH: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    let s =
        Arc::new(log.stream("g", StreamConfig { fsync: Fsync::Always, ..StreamConfig::default() }).unwrap());
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let v = format!("{t}-{i}");
                    let a = s
                        .append_blocking(Append { key: None, value: Some(v.as_bytes()), timestamp: 0 })
                        .unwrap();
                    assert!(s.partition(0).unwrap().end() > a.offset, "acked means readable");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let p = s.partition(0).unwrap();
    assert_eq!(p.end(), (THREADS * EACH) as u64);
    assert!(p.syncs() < (THREADS * EACH) as u64, "{} syncs for {} appends", p.syncs(), THREADS * EACH);
    assert!(p.syncs() > 0);
}

#[tokio::test]
async fn a_tailing_reader_wakes_when_a_record_is_acked() {
    let log = LogDir::memory();
    let s = Arc::new(log.stream("t", small(1)).unwrap());
    let writer = s.clone();
    let reader = tokio::spawn(async move {
        let p = writer.partition(0).unwrap().clone();
        p.wait_past(0).await;
        p.read(0, 10, usize::MAX).unwrap()
    });
    tokio::task::yield_now().await;
    put(&s, "k", "hello", 0);
    let read = reader.await.unwrap();
    assert_eq!(value(&read[0]), "hello");
}

#[test]
fn damage_below_a_synced_checkpoint_is_corruption_not_a_torn_tail() {
    for (fsync, cut) in [(Fsync::Always, false), (Fsync::Interval, false), (Fsync::Never, true)] {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = LogDir::open(dir.path()).unwrap();
            let s = log.stream("t", StreamConfig { fsync, ..StreamConfig::default() }).unwrap();
            for i in 0..10 {
                put(&s, "k", &format!("v{i}"), i);
            }
        }
        // A byte of the last record's value flips on disk (the clean close checkpointed it).
        let file = last_segment(dir.path(), "t");
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let log = LogDir::open(dir.path()).unwrap();
        match log.open_stream("t") {
            Ok(s) if cut => {
                assert_eq!(s.partition(0).unwrap().end(), 9, "{fsync:?}: never synced, so cut as torn")
            }
            Err(LogError::Corrupt { file, .. }) if !cut => assert!(file.ends_with(".log"), "{fsync:?}"),
            other => panic!("{fsync:?}: {other:?}"),
        }
    }
}

#[test]
fn a_segment_rolls_once_its_first_record_is_segment_ms_old() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        // The second round reopens: the active segment's first timestamp comes back from disk.
        let log = LogDir::open(dir.path()).unwrap();
        let s = log.stream("t", StreamConfig { segment_ms: 1_000, ..small(1) }).unwrap();
        let base = round * 3_000;
        put(&s, "k", "a", base);
        put(&s, "k", "b", base + 999);
        let before = s.partition(0).unwrap().info().segments.len();
        put(&s, "k", "c", base + 1_000);
        assert_eq!(s.partition(0).unwrap().info().segments.len(), before + 1, "round {round}");
    }
}

#[test]
fn a_closed_stream_refuses_appends_instead_of_leaving_them_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogDir::open(dir.path()).unwrap();
    for fsync in [Fsync::Always, Fsync::Interval, Fsync::Never] {
        let name = format!("s-{}", fsync.as_str());
        let stream = log.stream(&name, StreamConfig { fsync, ..small(1) }).unwrap();
        let before = put(&stream, "k", "before", 1);
        stream.close().unwrap();
        let refused = stream.append_blocking(Append { key: Some(b"k"), value: Some(b"after"), timestamp: 2 });
        assert!(matches!(refused, Err(LogError::Closed)), "{fsync:?}: {refused:?}");
        let p = stream.partition(0).unwrap();
        // What was appended before the close is acked, and nothing after it was written.
        p.wait_acked(before.offset).unwrap();
        assert_eq!(p.end(), before.offset + 1, "{fsync:?}");
    }
}
