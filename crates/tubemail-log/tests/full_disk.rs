//! A full disk (here: a file-size limit, `ulimit -f`, with SIGXFSZ ignored so that writes fail with
//! EFBIG as they would with ENOSPC): the append gets a typed error naming the file, nothing acked is
//! lost, nothing half-written stays, and the log opens and takes appends again afterwards.

use std::io::Write;
use std::process::Command;

use tubemail_log::{Append, Fsync, LogDir, LogError, StreamConfig};

const CHILD_DIR: &str = "TUBEMAIL_LOG_FULL_DISK_DIR";

fn config() -> StreamConfig {
    StreamConfig { fsync: Fsync::Always, ..StreamConfig::default() }
}

/// The child: appends until the log refuses, printing `OFFSET` for each acked record and then the
/// error's text.
#[test]
#[ignore = "the child process of a_full_disk_fails_appends_with_a_typed_error_and_loses_nothing"]
fn full_disk_child_appender() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let log = LogDir::open(&dir).unwrap();
    let stream = log.stream("t", config()).unwrap();
    let mut out = std::io::stdout().lock();
    let value = vec![b'v'; 300];
    for n in 0u64.. {
        match stream.append_blocking(Append { key: Some(b"k"), value: Some(&value), timestamp: n as i64 }) {
            Ok(a) => writeln!(out, "acked {}", a.offset).unwrap(),
            Err(e) => {
                let kind = if matches!(e, LogError::Io { .. }) { "io" } else { "other" };
                writeln!(out, "error {kind} {e}").unwrap();
                return;
            }
        }
        out.flush().unwrap();
    }
}

#[test]
fn a_full_disk_fails_appends_with_a_typed_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // 32 blocks of 1 KiB: the segment file cannot grow past 32 KiB.
    let script = format!(
        "ulimit -f 32; trap '' XFSZ; exec '{}' --ignored --exact full_disk_child_appender --nocapture --test-threads=1",
        exe.display()
    );
    let out = Command::new("bash").args(["-c", &script]).env(CHILD_DIR, dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The test harness prints its own words before the child's first line: look for the markers.
    let acked: Vec<u64> = stdout.lines().filter_map(|l| l.split("acked ").nth(1)?.parse().ok()).collect();
    let error = stdout.lines().find_map(|l| l.find("error ").map(|i| &l[i..]));
    let error = error.unwrap_or_else(|| panic!("no error:\n{stdout}"));
    assert!(error.starts_with("error io cannot write") && error.contains(".log"), "{error}");
    assert!(error.contains("File too large"), "{error}");
    assert_eq!(acked, (0..acked.len() as u64).collect::<Vec<_>>(), "acks in order, none missed");
    assert!(acked.len() > 50, "{} acked before the disk filled", acked.len());
    let log = LogDir::open(dir.path()).unwrap();
    let stream = log.open_stream("t").unwrap();
    let p = stream.partition(0).unwrap();
    assert_eq!(p.recovered().torn_bytes, 0, "a failed write is cut back at once, not left for recovery");
    assert_eq!(p.end(), acked.len() as u64, "every acked record, and nothing half-written");
    assert_eq!(p.verify().unwrap(), acked.len() as u64);
    let more = stream.append_blocking(Append { key: None, value: Some(b"after"), timestamp: 0 }).unwrap();
    assert_eq!(more.offset, acked.len() as u64);
}
