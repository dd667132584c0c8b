//! `tubemail log`: `append` then `dump` give back every key, value and tombstone at the place the
//! append acked; `inspect --json` has the named fields; `verify` names the file and byte of damage;
//! `dump` refuses what it cannot serve with exit 2; `torture` loses no acked record; bad arguments
//! are refused clearly and never panic.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tubemail_log::{Append, LogDir, StreamConfig};

/// Runs the binary with `args` and `input` on its stdin.
fn tubemail_with(args: &[&str], input: impl AsRef<[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tubemail"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run tubemail {args:?}: {e}"));
    let mut stdin = child.stdin.take().expect("piped");
    // The command may stop reading early (a bad line): a closed pipe is no failure of the test.
    let _ = stdin.write_all(input.as_ref());
    drop(stdin);
    child.wait_with_output().expect("tubemail runs")
}

fn tubemail(args: &[&str]) -> Output {
    tubemail_with(args, "")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("temp path is UTF-8")
}

fn json_lines(out: &Output) -> Vec<Value> {
    stdout(out).lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect()
}

/// A stream of 4 KiB segments made in this process: `records` records of key `k` and a value of 10
/// bytes each, at timestamps 1,000 ms apart.
fn small_segments(dir: &Path, records: u64) -> usize {
    let log = LogDir::open(dir).unwrap();
    let config = StreamConfig { segment_bytes: 4096, ..StreamConfig::default() };
    let stream = log.stream("small", config).unwrap();
    for i in 0..records {
        let value = format!("value-{i:04}");
        let a = Append { key: Some(b"k"), value: Some(value.as_bytes()), timestamp: i as i64 * 1000 };
        stream.append_blocking(a).unwrap();
    }
    tubemail_log::record::frame_len(Some(b"k"), Some(b"value-0000"))
}

#[test]
fn append_then_dump_gives_back_keys_values_and_tombstones_where_they_were_acked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let input = [
        r#"{"key": "order-1", "value": "paid"}"#,
        r#"{"key": "order-2", "value": {"total": 12.5, "items": [1, 2]}}"#,
        r#"{"key": "order-1", "value": null}"#,
        r#"{"value": "no key"}"#,
        "",
        r#"{"key": 42, "value": "a number key"}"#,
        r#"{"key": "order-3", "value": ""}"#,
        r#"{"key": null, "value": "ünïcödé\ttab"}"#,
    ];
    let records: Vec<&str> = input.iter().copied().filter(|l| !l.is_empty()).collect();
    let text = input.join("\n") + "\n";
    let out = tubemail_with(&["log", "append", arg(&log), "--stream", "orders", "--partitions", "3"], &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let acks: Vec<(u64, u64)> = stdout(&out)
        .lines()
        .map(|l| {
            let (p, o) = l.split_once(' ').unwrap_or_else(|| panic!("{l:?} is not PARTITION OFFSET"));
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect();
    assert_eq!(acks.len(), records.len(), "one ack per record");
    // Offsets are dense per partition, in input order.
    for p in 0..3 {
        let offsets: Vec<u64> = acks.iter().filter(|a| a.0 == p).map(|a| a.1).collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "partition {p}");
    }
    assert_eq!(acks[0].0, acks[2].0, "the same key goes to the same partition");

    let out = tubemail(&["log", "dump", arg(&log), "--stream", "orders", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dumped = json_lines(&out);
    assert_eq!(dumped.len(), records.len());
    let places: Vec<(u64, u64)> =
        dumped.iter().map(|r| (r["partition"].as_u64().unwrap(), r["offset"].as_u64().unwrap())).collect();
    let mut sorted = acks.clone();
    sorted.sort();
    assert_eq!(places, sorted, "partitions in turn, each in offset order");
    for (line, place) in records.iter().zip(&acks) {
        let fed: Value = serde_json::from_str(line).unwrap();
        let got = dumped
            .iter()
            .find(|r| (r["partition"].as_u64(), r["offset"].as_u64()) == (Some(place.0), Some(place.1)))
            .unwrap();
        let as_stored = |v: &Value| match v {
            Value::Null => Value::Null,
            Value::String(s) => Value::String(s.clone()),
            other => Value::String(other.to_string()),
        };
        assert_eq!(got["key"], as_stored(fed.get("key").unwrap_or(&Value::Null)), "{line}");
        assert_eq!(got["value"], as_stored(&fed["value"]), "{line}");
        assert!(got["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "the wall clock: {got}");
        assert!(got["time"].as_str().unwrap().ends_with('Z'), "{got}");
    }

    // Text: partition, offset, time, key and value, tab separated, one line per record.
    let out =
        tubemail(&["log", "dump", arg(&log), "--stream", "orders", "--partition", &acks[0].0.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first: Vec<&str> = text.lines().next().unwrap().split('\t').collect();
    assert_eq!(first.len(), 5, "{text}");
    assert_eq!(
        (first[0], first[1], first[3], first[4]),
        (acks[0].0.to_string().as_str(), "0", "\"order-1\"", "\"paid\"")
    );
    let tombstone =
        text.lines().find(|l| l.contains("\"order-1\"\tnull")).expect("the tombstone's value is null");
    assert_eq!(tombstone.split('\t').nth(1), Some(acks[2].1.to_string().as_str()), "{text}");

    // A second append continues the offsets with the stored settings; another partition count is
    // refused by the log.
    let out = tubemail_with(
        &["log", "append", arg(&log), "--stream", "orders"],
        "{\"key\": \"order-1\", \"value\": \"again\"}\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let held = acks.iter().filter(|a| a.0 == acks[0].0).count();
    assert_eq!(stdout(&out), format!("{} {held}\n", acks[0].0));
    let out = tubemail_with(
        &["log", "append", arg(&log), "--stream", "orders", "--partitions", "5"],
        "{\"value\": 1}\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("3 partitions on disk; 5 asked"), "{}", stderr(&out));
}

#[test]
fn dump_shows_bytes_that_are_not_utf8_as_hex_and_starts_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = LogDir::open(dir.path()).unwrap();
        let stream = log.stream("raw", StreamConfig::default()).unwrap();
        stream
            .append_blocking(Append { key: Some(&[0xff, 0x00]), value: Some(&[0xc3, 0x28]), timestamp: 0 })
            .unwrap();
        stream.append_blocking(Append { key: None, value: Some(b"ok"), timestamp: 86_400_000 }).unwrap();
    }
    let out = tubemail(&["log", "dump", arg(dir.path()), "--stream", "raw", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dumped = json_lines(&out);
    assert_eq!(dumped[0]["key"], serde_json::json!({"hex": "ff00"}));
    assert_eq!(dumped[0]["value"], serde_json::json!({"hex": "c328"}));
    assert_eq!(dumped[0]["time"], "1970-01-01T00:00:00.000Z");
    let out = tubemail(&[
        "log",
        "dump",
        arg(dir.path()),
        "--stream",
        "raw",
        "--from-time",
        "1970-01-01T12:00:00+02:00",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\t1\t1970-01-02T00:00:00.000Z\tnull\t\"ok\"\n");
    let out =
        tubemail(&["log", "dump", arg(dir.path()), "--stream", "raw", "--from-time", "2000-01-01T00:00:00Z"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "", "no record at or after the time");
}

#[test]
fn dump_starts_at_the_time_given_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    small_segments(dir.path(), 300);
    let out = tubemail(&[
        "log",
        "dump",
        arg(dir.path()),
        "--stream",
        "small",
        "--from-time",
        "1970-01-01T00:03:20.500Z",
        "--limit",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let offsets: Vec<&str> = text.lines().map(|l| l.split('\t').nth(1).unwrap()).collect();
    assert_eq!(offsets, ["201", "202"], "the first record at or after 200.5 s");
}

#[test]
fn inspect_json_shows_settings_partitions_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let frame = small_segments(dir.path(), 300) as u64;
    let out = tubemail(&["log", "inspect", arg(dir.path()), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    let streams = json["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    let s = &streams[0];
    assert_eq!(s["name"], "small");
    assert_eq!(s["settings"]["partitions"], 1);
    assert_eq!(s["settings"]["fsync"], "interval");
    assert_eq!(s["settings"]["cleanup"], "delete");
    assert_eq!(s["settings"]["segment_bytes"], 4096);
    assert!(s.get("consumer_groups").is_none(), "no consumer groups yet");
    let p = &s["partitions"][0];
    assert_eq!(
        (p["partition"].as_u64(), p["start"].as_u64(), p["end"].as_u64()),
        (Some(0), Some(0), Some(300))
    );
    assert_eq!(p["bytes"].as_u64(), Some(300 * frame));
    assert_eq!(p["torn_bytes_cut"], 0);
    let segments = p["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 4, "4 KiB segments of 99 frames: {segments:?}");
    assert!(p["index_entries"].as_u64().unwrap() >= segments.len() as u64);
    let mut next_base = 0;
    for seg in segments {
        assert_eq!(seg["base"].as_u64(), Some(next_base), "{seg}");
        assert_eq!(seg["file"], format!("{next_base:020}.log"));
        let last = seg["last"].as_u64().unwrap();
        assert_eq!(seg["bytes"].as_u64(), Some((last + 1 - next_base) * frame));
        next_base = last + 1;
    }
    assert_eq!(next_base, 300);

    let out = tubemail(&["log", "inspect", arg(dir.path())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("stream small: 1 partition, fsync interval"), "{text}");
    assert!(text.contains("partition 0: start 0, end 300"), "{text}");
    assert!(text.contains("segment 00000000000000000000: offsets 0..="), "{text}");
}

#[test]
fn verify_passes_a_sound_log_and_names_the_file_and_byte_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let frame = small_segments(dir.path(), 300);
    let out = tubemail(&["log", "verify", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("small/0: 300 records ok"), "{}", stdout(&out));

    // Flip a byte inside the third frame of the first (closed) segment.
    let first = dir.path().join("streams/small/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[2 * frame + 33] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    let out = tubemail(&["log", "verify", arg(dir.path())]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let said = stdout(&out) + &stderr(&out);
    assert!(said.contains(&first.display().to_string()), "{said}");
    assert!(said.contains(&format!("at byte {}", 2 * frame)), "{said}");
    assert!(said.contains("CRC-32C"), "{said}");

    let out = tubemail(&["log", "verify", arg(dir.path()), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let json: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(json["ok"], false);
    let p = &json["partitions"][0];
    assert_eq!((p["ok"].as_bool(), p["position"].as_u64()), (Some(false), Some(2 * frame as u64)));
    assert_eq!(p["file"], first.display().to_string());
}

#[test]
fn verify_reports_a_torn_tail_that_recovery_cut() {
    let dir = tempfile::tempdir().unwrap();
    small_segments(dir.path(), 10);
    // A crash in the middle of a write: half a frame at the active segment's end.
    let active = dir.path().join("streams/small/0/00000000000000000000.log");
    let mut file = std::fs::OpenOptions::new().append(true).open(&active).unwrap();
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 1, 3, 10]).unwrap();
    drop(file);
    let out = tubemail(&["log", "verify", arg(dir.path()), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(
        (json["ok"].as_bool(), json["torn_bytes_cut"].as_u64(), json["records"].as_u64()),
        (Some(true), Some(11), Some(10))
    );
}

#[test]
fn dump_refuses_what_it_cannot_serve_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    small_segments(dir.path(), 20);
    let d = arg(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (&["log", "dump", d, "--stream", "nope"], "unknown stream \"nope\""),
        (
            &["log", "dump", d, "--stream", "small", "--from", "21"],
            "offset 21 is past the partition's end 20",
        ),
        (&["log", "dump", d, "--stream", "small", "--partition", "3"], "partition 3 does not exist"),
        (&["log", "dump", d, "--stream", "../x"], "invalid stream name"),
        (&["log", "dump", "/no/such/log", "--stream", "small"], "no such directory"),
        (&["log", "inspect", "/no/such/log"], "no such directory"),
        (&["log", "verify", "/no/such/log"], "no such directory"),
    ];
    for (args, says) in cases {
        let out = tubemail(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(stdout(&out), "", "{args:?} printed records");
    }
    let out = tubemail(&["log", "dump", d, "--stream", "small", "--from", "20"]);
    assert!(out.status.success() && stdout(&out).is_empty(), "the end itself is an empty dump: {out:?}");
    let out = tubemail(&["log", "dump", d, "--stream", "small", "--from", "18"]);
    assert_eq!(stdout(&out).lines().count(), 2, "{out:?}");
}

#[test]
fn a_bad_input_line_is_named_and_everything_before_it_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let input = "{\"value\": \"one\"}\n{\"value\": \"two\"}\n\n{\"value\": 3}\n{\"valu\": 4}\n{\"value\": \"five\"}\n";
    let out = tubemail_with(&["log", "append", arg(&log), "--stream", "s"], input);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(stdout(&out), "0 0\n0 1\n0 2\n");
    assert!(stderr(&out).contains("stdin line 5: unknown field \"valu\""), "{}", stderr(&out));
    let out = tubemail(&["log", "dump", arg(&log), "--stream", "s", "--json"]);
    let values: Vec<Value> = json_lines(&out).iter().map(|r| r["value"].clone()).collect();
    assert_eq!(values, ["one", "two", "3"]);
    for (line, says) in [
        (&b"not json\n"[..], "stdin line 1: not JSON"),
        (b"{\"key\": null, \"value\": null}\n", "needs a key"),
        (b"{\"value\": 1}\n\n[]\n", "stdin line 3: not a JSON object"),
        (b"{\"value\": 1}\n{\"value\": \"\xff\"}\n", "stdin line 2: not UTF-8"),
    ] {
        let out = tubemail_with(&["log", "append", arg(&log), "--stream", "s"], line);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

#[test]
fn a_locked_directory_is_refused_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    small_segments(dir.path(), 1);
    let _held = LogDir::open(dir.path()).unwrap();
    for args in [&["log", "inspect", arg(dir.path())][..], &["log", "verify", arg(dir.path())]] {
        let out = tubemail(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert!(stderr(&out).contains("is locked by another process"), "{}", stderr(&out));
    }
}

#[test]
fn torture_loses_no_acked_record() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("torture");
    let started = std::time::Instant::now();
    let out = tubemail(&["log", "torture", "--dir", arg(&target), "--kills", "5", "--json", "--seed", "7"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!(report["kills"], 5);
    assert_eq!(report["lost_acked"], 0, "{report}");
    assert_eq!(report["damage"], serde_json::json!([]), "{report}");
    assert!(report["acked"].as_u64().unwrap() > 0, "{report}");
    assert!(report["recovered"].as_u64() >= report["acked"].as_u64(), "{report}");
    assert!(report["torn_tails_truncated"].is_u64(), "{report}");
    assert!(started.elapsed().as_secs() < 60, "a quick test");
    // The directory is now a previous run's: refused, unless --fresh.
    let again = ["log", "torture", "--dir", arg(&target), "--kills", "1", "--json"];
    let out = tubemail(&again);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    let out = tubemail(&[&again[..], &["--fresh"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    assert_eq!((report["kills"].as_u64(), report["lost_acked"].as_u64()), (Some(1), Some(0)));
}

/// Zero, negative, huge or contradictory values are refused clearly (exit 1 or 2, a message on
/// stderr), and none panics (exit 101).
#[test]
fn bad_log_arguments_are_refused_and_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    small_segments(dir.path(), 3);
    let d = arg(dir.path());
    let other = tempfile::tempdir().unwrap();
    let keep = other.path().join("precious.txt");
    std::fs::write(&keep, "not a log").unwrap();
    let o = arg(other.path());
    let cases: &[&[&str]] = &[
        &["log", "torture", "--dir", "/tmp/never-made", "--kills", "0"],
        &["log", "torture", "--dir", "/tmp/never-made", "--kills", "-1"],
        &["log", "torture", "--dir", "/tmp/never-made", "--kills", "100001"],
        &["log", "torture", "--dir", "/tmp/never-made", "--kills", "1", "--fsync", "sometimes"],
        &["log", "torture", "--kills", "1"],
        &["log", "torture", "--dir", o, "--kills", "1"],
        &["log", "torture", "--dir", o, "--kills", "1", "--fresh"],
        &["log", "append", d, "--stream", "new", "--partitions", "0"],
        &["log", "append", d, "--stream", "new", "--partitions", "1025"],
        &["log", "append", d, "--stream", "new", "--fsync", "often"],
        &["log", "append", d, "--stream", ""],
        &["log", "append", o, "--stream", "s"],
        &["log", "dump", d, "--stream", "small", "--limit", "0"],
        &["log", "dump", d, "--stream", "small", "--from", "-1"],
        &["log", "dump", d, "--stream", "small", "--from-time", "yesterday"],
        &["log", "dump", d, "--stream", "small", "--from-time", "2024-05-01T12:00:00"],
        &["log", "dump", d, "--stream", "small", "--from", "1", "--from-time", "2024-05-01T12:00:00Z"],
        &["log", "dump", d],
        &["log", "inspect", o],
        &["log", "verify"],
    ];
    for args in cases {
        let out = tubemail(args);
        let code = out.status.code();
        assert!(matches!(code, Some(1) | Some(2)), "{args:?} exited {code:?}: {}", stderr(&out));
        assert!(!stderr(&out).trim().is_empty(), "{args:?} said nothing on stderr");
        assert!(!stderr(&out).contains("panicked"), "{args:?} panicked: {}", stderr(&out));
    }
    assert_eq!(
        std::fs::read_to_string(&keep).unwrap(),
        "not a log",
        "--fresh wiped a directory that is not a log"
    );
    assert!(!Path::new("/tmp/never-made").exists());
}

/// A broker's consumer group, seen from the command line: its committed offsets and lag per
/// partition, read from the offsets stream the broker keeps beside the streams.
#[test]
fn inspect_shows_a_brokers_consumer_groups_with_their_lag() {
    use tubemail::{Broker, GroupOptions, StreamSpec, Topology};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let topology = Topology::new()
        .stream("orders", StreamSpec { partitions: 2, ..StreamSpec::default() })
        .data_dir(&data);
    actix::System::new().block_on(async {
        let broker = Broker::start(topology).unwrap();
        for i in 0..10_u32 {
            broker.append("orders", &format!("k{i}"), &i).await.unwrap();
        }
        let member =
            broker.join_group("orders", "billing", GroupOptions::default(), |_| async {}).await.unwrap();
        while broker.stats().await.streams["orders"].groups["billing"].lag() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        member.leave().await;
        // Two more that the group has not read: its lag.
        broker.append("orders", "late-1", &1_u32).await.unwrap();
        broker.append("orders", "late-2", &2_u32).await.unwrap();
        broker.shutdown(std::time::Duration::from_secs(1)).await;
    });
    let out = tubemail(&["log", "inspect", data.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{v}");
    assert_eq!(
        (groups[0]["group"].as_str(), groups[0]["stream"].as_str()),
        (Some("billing"), Some("orders"))
    );
    assert_eq!(groups[0]["lag"], 2);
    let committed: u64 =
        groups[0]["partitions"].as_array().unwrap().iter().map(|p| p["committed"].as_u64().unwrap()).sum();
    assert_eq!(committed, 10);
    let text = stdout(&tubemail(&["log", "inspect", data.to_str().unwrap()]));
    assert!(text.contains("group billing on stream orders: lag 2"), "{text}");
}
