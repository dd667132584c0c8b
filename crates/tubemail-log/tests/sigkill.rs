//! The durability claim, tested as it is made: a child process appends and prints each acked record,
//! and is killed with SIGKILL at a moment of its work; every record it reported acked must be there,
//! intact, at its offset, with offsets dense, under every fsync policy.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tubemail_log::{Append, Fsync, LogDir, StreamConfig};

const CHILD_DIR: &str = "TUBEMAIL_LOG_SIGKILL_DIR";
const CHILD_FSYNC: &str = "TUBEMAIL_LOG_SIGKILL_FSYNC";
const CHILD_ACKS: &str = "TUBEMAIL_LOG_SIGKILL_ACKS";

fn config(fsync: Fsync) -> StreamConfig {
    StreamConfig { partitions: 2, segment_bytes: 64 << 10, fsync, ..StreamConfig::default() }
}

/// The child: appends until killed, writing `ACK PARTITION OFFSET N` to a file (not its stdout,
/// which the test harness shares) for each acked record.
#[test]
#[ignore = "the child process of acked_records_survive_sigkill_under_every_fsync_policy"]
fn sigkill_child_appender() {
    let (Ok(dir), Ok(fsync), Ok(acks)) =
        (std::env::var(CHILD_DIR), std::env::var(CHILD_FSYNC), std::env::var(CHILD_ACKS))
    else {
        return;
    };
    let log = LogDir::open(&dir).unwrap();
    let stream = log.stream("t", config(fsync.parse().unwrap())).unwrap();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(acks).unwrap();
    for n in 0u64.. {
        let key = format!("key-{}", n % 16);
        let value = format!("value-{n}-{}", "x".repeat((n % 200) as usize));
        let a = stream
            .append_blocking(Append {
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                timestamp: n as i64,
            })
            .unwrap();
        // One `write` per line: a kill leaves whole lines only.
        out.write_all(format!("ACK {} {} {n}\n", a.partition, a.offset).as_bytes()).unwrap();
    }
}

/// The complete (newline-ended) lines of an acks file.
fn ack_lines(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(String::from).collect()
}

#[test]
fn acked_records_survive_sigkill_under_every_fsync_policy() {
    for fsync in [Fsync::Always, Fsync::Interval, Fsync::Never] {
        let dir = tempfile::tempdir().unwrap();
        let mut acked = Vec::new();
        for (round, wait_for) in [300_usize, 1_500, 50, 800].into_iter().enumerate() {
            let acks = dir.path().with_extension(format!("acks-{round}"));
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "sigkill_child_appender", "--test-threads=1"])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_FSYNC, fsync.as_str())
                .env(CHILD_ACKS, &acks)
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            // Each line is written (by one `write`) once its record is acked.
            let mut lines: Vec<String> = Vec::new();
            for _ in 0..60_000 {
                lines = ack_lines(&acks);
                if lines.len() >= wait_for {
                    break;
                }
                assert!(child.try_wait().unwrap().is_none(), "the child died before it was killed");
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(lines.len() >= wait_for, "the child acked {} records in a minute", lines.len());
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // What the child acked before the kill: every complete line, read after it is dead.
            for line in ack_lines(&acks) {
                let mut parts = line.trim_start_matches("ACK ").split_whitespace().map(|p| p.parse::<u64>());
                let (Some(Ok(partition)), Some(Ok(offset)), Some(Ok(n))) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    panic!("a garbled ack line: {line}");
                };
                acked.push((partition as u32, offset, n, round));
            }
        }
        let log = LogDir::open(dir.path()).unwrap();
        let stream = log.open_stream("t").unwrap();
        for p in stream.partitions() {
            let records = p.read(0, usize::MAX, usize::MAX).unwrap();
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as u64, "{fsync:?}: offsets are dense");
            }
            for &(partition, offset, n, round) in acked.iter().filter(|a| a.0 == p.id()) {
                let r = records.get(offset as usize).unwrap_or_else(|| {
                    panic!("{fsync:?}: acked record {n} (round {round}) at {partition}/{offset} is lost")
                });
                let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
                assert!(
                    value.starts_with(&format!("value-{n}-")),
                    "{fsync:?}: {partition}/{offset} holds {value}"
                );
            }
            assert_eq!(p.verify().unwrap() as usize, records.len());
        }
    }
}

const CHILD_OPENS: &str = "TUBEMAIL_LOG_SIGKILL_OPENS";

/// The child: opens and closes a stream until killed, creating the file `ready` (beside the
/// directory) once it has the directory.
#[test]
#[ignore = "the child process of a_stream_keeps_its_settings_when_killed_while_opening"]
fn sigkill_child_opener() {
    let Ok(dir) = std::env::var(CHILD_OPENS) else { return };
    let log = LogDir::open(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).with_extension("ready"), "").unwrap();
    loop {
        drop(log.open_stream("t").unwrap());
    }
}

/// Every open used to rewrite `stream.toml` in place: a kill between its truncation and its write
/// left it empty, and the stream came back with the default settings (one partition instead of two).
#[test]
fn a_stream_keeps_its_settings_when_killed_while_opening() {
    let dir = tempfile::tempdir().unwrap();
    let config = StreamConfig { partitions: 2, fsync: Fsync::Never, ..StreamConfig::default() };
    drop(LogDir::open(dir.path()).unwrap().stream("t", config.clone()).unwrap());
    for round in 0..40_u64 {
        let ready = dir.path().with_extension("ready");
        let _ = std::fs::remove_file(&ready);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "sigkill_child_opener", "--test-threads=1"])
            .env(CHILD_OPENS, dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Signalled through a file: the child's stdout is its test harness's too.
        for _ in 0..60_000 {
            if ready.exists() {
                break;
            }
            assert!(child.try_wait().unwrap().is_none(), "the child died before it was killed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ready.exists(), "the child never opened the directory");
        std::thread::sleep(Duration::from_micros(round * 97 % 5_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let log = LogDir::open(dir.path()).unwrap();
        let stream = log.open_stream("t").unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(stream.config(), &config, "round {round}: the settings survive");
    }
}
