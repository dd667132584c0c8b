//! Threads at once: appenders on every partition, readers tailing them, and retention and compaction
//! running beside them. Offsets stay dense and ascending for every appender's view, readers never see
//! a record out of order or half-written, and nothing acked goes missing but what retention removed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tubemail_log::{Append, Cleanup, Fsync, LogDir, LogError, Stream, StreamConfig};

const APPENDERS: usize = 4;
const EACH: u64 = 3_000;

fn run(log: &LogDir, fsync: Fsync, cleanup: Cleanup) {
    let config = StreamConfig {
        partitions: 3,
        segment_bytes: 8192,
        retention_records: Some(2_000),
        cleanup,
        fsync,
        ..StreamConfig::default()
    };
    let stream = Arc::new(log.stream("s", config).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|t| {
            let stream = stream.clone();
            std::thread::spawn(move || {
                let mut mine: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
                for i in 0..EACH {
                    let key = format!("t{t}-k{}", i % 50);
                    let value = format!("{t}:{i}");
                    let a = stream
                        .append_blocking(Append {
                            key: Some(key.as_bytes()),
                            value: Some(value.as_bytes()),
                            timestamp: 0,
                        })
                        .unwrap();
                    mine.entry(a.partition).or_default().push(a.offset);
                }
                mine
            })
        })
        .collect();
    let readers: Vec<_> = (0..3_u32)
        .map(|p| {
            let (stream, done) = (stream.clone(), done.clone());
            std::thread::spawn(move || tail(&stream, p, &done))
        })
        .collect();
    let cleaner = {
        let (stream, done) = (stream.clone(), done.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !done.load(Ordering::Acquire) {
                stream.maintain(i64::MAX / 2).unwrap();
                runs += 1;
                std::thread::yield_now();
            }
            runs
        })
    };
    let views: Vec<BTreeMap<u32, Vec<u64>>> = appenders.into_iter().map(|a| a.join().unwrap()).collect();
    done.store(true, Ordering::Release);
    let read: Vec<u64> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(cleaner.join().unwrap() > 0);
    // Each appender's offsets rise in every partition; together they are every offset, once.
    let mut all: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for view in &views {
        for (p, offsets) in view {
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{fsync:?} {cleanup:?}");
            all.entry(*p).or_default().extend(offsets);
        }
    }
    for (p, mut offsets) in all {
        offsets.sort_unstable();
        assert_eq!(
            offsets,
            (0..offsets.len() as u64).collect::<Vec<_>>(),
            "{fsync:?} {cleanup:?}: partition {p}"
        );
        assert_eq!(stream.partition(p).unwrap().end(), offsets.len() as u64);
    }
    assert!(read.iter().sum::<u64>() > 0);
    for p in stream.partitions() {
        p.verify().unwrap();
    }
}

/// Tails partition `p` until `done` and it is caught up; returns the records read. Offsets only rise;
/// a position retention removed is skipped to the start (as a group counts it).
fn tail(stream: &Stream, p: u32, done: &AtomicBool) -> u64 {
    let partition = stream.partition(p).unwrap();
    let (mut next, mut read) = (0, 0);
    loop {
        match partition.read(next, 500, 1 << 20) {
            Ok(records) => {
                for r in &records {
                    assert!(r.offset >= next, "offsets only rise");
                    assert!(r.value.as_deref().is_some_and(|v| v.contains(&b':')), "a whole record");
                    next = r.offset + 1;
                    read += 1;
                }
                if records.is_empty() && done.load(Ordering::Acquire) && next >= partition.end() {
                    return read;
                }
            }
            Err(LogError::OffsetBeforeStart { start, .. }) => next = start,
            Err(e) => panic!("partition {p}: {e}"),
        }
    }
}

#[test]
fn appenders_readers_and_retention_at_once_in_memory() {
    run(&LogDir::memory(), Fsync::Never, Cleanup::Delete);
}

#[test]
fn appenders_readers_retention_and_compaction_at_once_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    run(&LogDir::open(dir.path()).unwrap(), Fsync::Never, Cleanup::CompactDelete);
}

#[test]
fn appenders_share_syncs_beside_readers_and_compaction_under_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    run(&LogDir::open(dir.path()).unwrap(), Fsync::Always, Cleanup::Compact);
}
