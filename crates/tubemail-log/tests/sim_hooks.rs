//! The hooks the simulator needs: simulated streams that sync on the caller's thread, a stream
//! abandoned as a crash leaves it, and the bytes of each active segment a sync covered.

use std::path::Path;

use tubemail_log::partition::CHECKPOINT_FILE;
use tubemail_log::sim::{simulated, SimStream};
use tubemail_log::{Append, Fsync, LogDir, LogError, Stream, StreamConfig};

fn config(fsync: Fsync) -> StreamConfig {
    StreamConfig { partitions: 1, fsync, fsync_interval_ms: 3_600_000, ..StreamConfig::default() }
}

fn put(stream: &Stream, n: u64) {
    let value = format!("value-{n}");
    let append = Append { key: Some(b"k"), value: Some(value.as_bytes()), timestamp: n as i64 };
    stream.partition(0).unwrap().append(&[append]).unwrap();
}

fn open(dir: &Path, fsync: Fsync) -> (LogDir, Stream, SimStream) {
    let log = LogDir::open(dir).unwrap();
    let (stream, mut sims) = simulated(|| log.stream("t", config(fsync)));
    assert_eq!(sims.len(), 1);
    (log, stream.unwrap(), sims.remove(0))
}

/// The checkpoint's byte position.
fn checkpoint(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("streams/t/0").join(CHECKPOINT_FILE)).unwrap();
    u64::from_le_bytes(bytes[8..16].try_into().unwrap())
}

#[test]
fn a_simulated_stream_syncs_as_its_policy_says_on_the_callers_thread() {
    for fsync in [Fsync::Always, Fsync::Interval, Fsync::Never] {
        let dir = tempfile::tempdir().unwrap();
        let (_log, stream, sim) = open(dir.path(), fsync);
        for n in 0..5 {
            put(&stream, n);
        }
        let p = stream.partition(0).unwrap();
        // Acked at once under every policy: `always` synced before the append returned.
        assert_eq!(p.end(), 5, "{fsync:?}");
        let seg = &sim.active_segments()[0];
        assert!(seg.len > 0);
        let expected = if fsync == Fsync::Always { seg.len } else { 0 };
        assert_eq!(seg.synced, expected, "{fsync:?}");
        assert_eq!(p.synced_position(), (0, expected), "{fsync:?}");
        // The simulator's tick: an `interval` sync.
        sim.sync();
        let synced = sim.active_segments()[0].synced;
        let expected = if fsync == Fsync::Never { 0 } else { seg.len };
        assert_eq!(synced, expected, "{fsync:?} after a tick");
    }
}

#[test]
fn an_abandoned_stream_is_left_as_a_crash_leaves_it() {
    for simulate in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let log = LogDir::open(dir.path()).unwrap();
        let stream = if simulate {
            simulated(|| log.stream("t", config(Fsync::Interval))).0.unwrap()
        } else {
            // A production stream, with its syncer thread.
            log.stream("t", config(Fsync::Interval)).unwrap()
        };
        for n in 0..5 {
            put(&stream, n);
        }
        let p = stream.partition(0).unwrap().clone();
        stream.abandon();
        let refused = p.append(&[Append { key: None, value: Some(b"late"), timestamp: 9 }]);
        assert!(matches!(refused, Err(LogError::Failed { .. })), "{refused:?}");
        drop(stream);
        // No last sync and no checkpoint: the one written at open still says 0.
        assert_eq!(p.synced_position(), (0, 0), "simulated {simulate}");
        assert_eq!(checkpoint(dir.path()), 0, "simulated {simulate}");
        drop((p, log));
        // What was written is still there (the page cache), and recovery finds it.
        let log = LogDir::open(dir.path()).unwrap();
        let stream = log.stream("t", config(Fsync::Interval)).unwrap();
        assert_eq!(stream.partition(0).unwrap().end(), 5);
    }
}

#[test]
fn a_clean_close_still_syncs_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stream, sim) = open(dir.path(), Fsync::Interval);
    for n in 0..5 {
        put(&stream, n);
    }
    stream.close().unwrap();
    let seg = &sim.active_segments()[0];
    assert_eq!(seg.synced, seg.len);
    assert_eq!(checkpoint(dir.path()), seg.len);
    drop((stream, log));
}

#[test]
fn what_a_power_loss_keeps_reopens_as_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let (log, stream, sim) = open(dir.path(), Fsync::Interval);
    for n in 0..3 {
        put(&stream, n);
    }
    sim.sync();
    for n in 3..7 {
        put(&stream, n);
    }
    stream.abandon();
    let seg = sim.active_segments().remove(0);
    drop((stream, log, sim));
    // The power loss: the active segment keeps what the tick synced.
    let file = std::fs::OpenOptions::new().write(true).open(seg.path.as_ref().unwrap()).unwrap();
    file.set_len(seg.synced).unwrap();
    let (_log, stream, _) = open(dir.path(), Fsync::Interval);
    assert_eq!(stream.partition(0).unwrap().end(), 3);
}

/// Records that recovery finds after a crash were written, but perhaps never synced: the page cache
/// kept them. They are acked and readable as soon as the stream opens, so they must be on disk by
/// then. Were they not, an idle partition would keep them unsynced for as long as no append comes to
/// it (its syncer only syncs partitions with new appends), a power loss would take records acked
/// long before (beyond what `interval` allows), and a consumer group's commit synced since would
/// point past the end of the partition (the simulator found this: an at-least-once group then
/// skipped the records appended after the power loss).
#[test]
fn records_recovered_after_a_crash_are_synced_when_the_stream_opens() {
    for fsync in [Fsync::Interval, Fsync::Always] {
        let dir = tempfile::tempdir().unwrap();
        let (log, stream, _) = open(dir.path(), Fsync::Interval);
        for n in 0..5 {
            put(&stream, n);
        }
        stream.abandon();
        drop((stream, log));
        let (_log, stream, sim) = open(dir.path(), fsync);
        assert_eq!(stream.partition(0).unwrap().end(), 5);
        let seg = &sim.active_segments()[0];
        assert_eq!(seg.synced, seg.len, "{fsync:?}: recovered records are acked but not synced");
    }
}
