//! `tubemail log`: the event log's directories on the command line. `inspect` shows streams,
//! partitions and segments, `dump` prints records, `verify` checks every frame, `append` writes JSON
//! lines and prints each record's place once it is acked, and `torture` kills an appender with
//! SIGKILL again and again and checks that no acked record was lost.
//!
//! Exit codes: 0 when done (and sound), 1 when the log is damaged, locked, cannot be read or written,
//! or a check failed, 2 when what was asked cannot be served as asked (a bad argument or input line,
//! an unknown stream or partition, an offset out of range) — 2 is also clap's code for a bad command
//! line.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tubemail_log::{
    Append, Appended, Fsync, LogDir, LogError, Partition, PartitionInfo, Record, Recovered, Stream,
    StreamConfig,
};

/// What opening a directory does, said in each command's help.
const OPENING: &str =
    "Opening DIR takes its lock (exit 1 while a broker or another command holds it) and runs \
                       recovery, which cuts a torn tail left by a crash and writes the recovery checkpoint.";

#[derive(Debug, Subcommand)]
pub(crate) enum LogCommand {
    /// Shows streams, their settings, partitions and segments.
    ///
    /// Each stream's settings and, per partition, its start and end offsets, bytes, segments (base
    /// offset, last offset, bytes) and index entries.
    #[command(after_help = OPENING)]
    Inspect {
        /// The log directory.
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prints records, one line each.
    ///
    /// Partition, offset, time, key and value, separated by tabs: the key and the value are a JSON
    /// string when the bytes are UTF-8, `{"hex": "..."}` when they are not, `null` when absent (a
    /// tombstone's value is `null`). Partitions are printed in turn, each in offset order.
    #[command(after_help = OPENING)]
    Dump {
        /// The log directory.
        dir: PathBuf,
        /// The stream.
        #[arg(long)]
        stream: String,
        /// Only this partition (default: every partition, in turn).
        #[arg(long)]
        partition: Option<u32>,
        /// The first offset (default: the partition's start); needs --partition when the stream has
        /// several. An offset before the start or past the end is refused (exit 2).
        #[arg(long, conflicts_with = "from_time")]
        from: Option<u64>,
        /// Start, in each partition, at the first record at or after this time (RFC 3339, e.g.
        /// 2024-05-01T12:00:00Z or 2024-05-01T14:00:00.250+02:00).
        #[arg(long, value_parser = parse_rfc3339)]
        from_time: Option<i64>,
        /// Records at most, over all partitions printed (1 to 2^63).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
        limit: Option<u64>,
        /// JSON lines: {"partition", "offset", "timestamp" (ms since the epoch), "time", "key",
        /// "value"}.
        #[arg(long)]
        json: bool,
    },
    /// Checks every record of every partition; exit 1 naming the file and byte of any damage.
    ///
    /// Reads every frame and checks its CRC-32C, its structure and the offsets' order; reports the
    /// torn tails that recovery cut on opening (a crash's, not damage). Exit 0 when sound, 1 naming
    /// the file and byte position of each damage.
    #[command(after_help = OPENING)]
    Verify {
        /// The log directory.
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Appends JSON lines from stdin; prints `PARTITION OFFSET` for each once it is acked.
    ///
    /// Each line is `{"key": K, "value": V}`, appended at the current time; `PARTITION OFFSET` is
    /// printed for each record, in input order, once it is acked. A string is stored as
    /// its UTF-8 bytes, any other JSON value as its compact JSON text; a missing or null key means
    /// none (the partition is then chosen round robin), a null value is a tombstone (it needs a
    /// key). A bad line stops the command with exit 2, naming the line; every record before it is
    /// acked and printed.
    #[command(after_help = OPENING)]
    Append {
        /// The log directory (created when missing or empty).
        dir: PathBuf,
        /// The stream: created when missing, with default settings and --partitions and --fsync;
        /// otherwise opened with its stored settings.
        #[arg(long)]
        stream: String,
        /// Partitions of a new stream, 1 to 1,024 [1]; an existing stream keeps its own, and
        /// another count is refused.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        partitions: Option<u32>,
        /// When records are forced to disk, and so when they are acked [interval for a new stream];
        /// given for an existing stream, it replaces the stored policy (and is stored).
        #[arg(long, value_enum)]
        fsync: Option<FsyncArg>,
    },
    /// Kills an appender with SIGKILL again and again; exit 1 if an acked record was lost.
    ///
    /// Runs `log append` in a child process on stream `torture` (2 partitions, 64 KiB segments),
    /// feeds it records, kills it with SIGKILL at a random moment (after 1 to 2,000 acks, or within
    /// 30 ms of its start) and reopens the directory in this process (counting the torn tails that
    /// recovery cuts), N times; then checks that every acked record is at its partition and offset
    /// with its exact value, that offsets are dense and that every frame verifies. Exit 1 when an
    /// acked record was lost or the log is damaged. Progress is shown on a terminal only.
    Torture {
        /// The directory to torture: missing or empty (see --fresh).
        #[arg(long)]
        dir: PathBuf,
        /// How many times the appender is killed (1 to 100,000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        kills: u64,
        /// The stream's fsync policy.
        #[arg(long, value_enum, default_value = "always")]
        fsync: FsyncArg,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The seed of the kill moments and the values' lengths (default: from the clock; the
        /// report names it).
        #[arg(long)]
        seed: Option<u64>,
        /// Wipe --dir first when it holds a tubemail log (a previous run); any other directory is
        /// never wiped.
        #[arg(long)]
        fresh: bool,
    },
}

/// The fsync policies, as the command line names them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum FsyncArg {
    /// Acked once on disk (fdatasync, shared by concurrent appends).
    Always,
    /// Acked once written; synced every fsync_interval_ms.
    Interval,
    /// Acked once written; the OS writes back in its own time.
    Never,
}

impl FsyncArg {
    fn policy(self) -> Fsync {
        match self {
            FsyncArg::Always => Fsync::Always,
            FsyncArg::Interval => Fsync::Interval,
            FsyncArg::Never => Fsync::Never,
        }
    }
}

/// A failure and its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// What was asked cannot be served as asked: exit 2.
    fn usage(message: impl Into<String>) -> Self {
        Self { code: 2, message: message.into() }
    }

    /// The log or a check failed: exit 1.
    fn failed(message: impl Into<String>) -> Self {
        Self { code: 1, message: message.into() }
    }

    fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<LogError> for Failure {
    fn from(e: LogError) -> Self {
        let code = match e {
            LogError::Io { .. }
            | LogError::Corrupt { .. }
            | LogError::Locked { .. }
            | LogError::Failed { .. }
            | LogError::Closed => 1,
            LogError::NotALog { .. }
            | LogError::RecordTooLarge { .. }
            | LogError::BatchSize { .. }
            | LogError::KeyRequired
            | LogError::OffsetBeforeStart { .. }
            | LogError::OffsetPastEnd { .. }
            | LogError::UnknownPartition { .. }
            | LogError::UnknownStream(_)
            | LogError::InvalidName(_)
            | LogError::InvalidConfig { .. }
            | LogError::PartitionsChanged { .. } => 2,
        };
        Self { code, message: e.to_string() }
    }
}

/// Runs a `tubemail log` command; errors go to stderr as `error: ...`.
pub(crate) fn run(command: LogCommand) -> ExitCode {
    let result = match command {
        LogCommand::Inspect { dir, json } => inspect(&dir, json),
        LogCommand::Dump { dir, stream, partition, from, from_time, limit, json } => {
            let args = DumpArgs { stream, partition, from, from_time, limit, json };
            dump(&dir, &args)
        }
        LogCommand::Verify { dir, json } => verify(&dir, json),
        LogCommand::Append { dir, stream, partitions, fsync } => {
            append(&dir, &stream, partitions, fsync.map(FsyncArg::policy))
        }
        LogCommand::Torture { dir, kills, fsync, json, seed, fresh } => {
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            });
            torture(&TortureArgs { dir, kills, fsync: fsync.policy(), json, seed, fresh })
        }
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// inspect

fn inspect(dir: &Path, json: bool) -> Result<ExitCode, Failure> {
    let log = LogDir::open_existing(dir)?;
    let mut streams = Vec::new();
    for name in log.stream_names()? {
        let stream =
            log.open_stream(&name).map_err(|e| Failure::from(e).context(format!("stream {name}")))?;
        let partitions: Vec<(PartitionInfo, Recovered)> =
            stream.partitions().iter().map(|p| (p.info(), p.recovered())).collect();
        streams.push((name, stream.config().clone(), partitions));
        stream.close()?;
    }
    let groups = groups(&log, &streams)?;
    if json {
        let list: Vec<Value> = streams
            .iter()
            .map(|(name, config, partitions)| {
                let partitions: Vec<Value> = partitions
                    .iter()
                    .map(|(p, recovered)| {
                        let segments: Vec<Value> = p
                            .segments
                            .iter()
                            .map(|s| {
                                json!({
                                    "base": s.base,
                                    "file": format!("{:020}.log", s.base),
                                    "last": s.last,
                                    "bytes": s.bytes,
                                    "max_timestamp": s.max_timestamp,
                                })
                            })
                            .collect();
                        json!({
                            "partition": p.partition,
                            "start": p.start,
                            "end": p.end,
                            "bytes": p.bytes,
                            "index_entries": p.index_entries,
                            "torn_bytes_cut": recovered.torn_bytes,
                            "segments": segments,
                        })
                    })
                    .collect();
                json!({
                    "name": name,
                    "settings": serde_json::to_value(config).expect("settings serialize"),
                    "partitions": partitions,
                })
            })
            .collect();
        let groups: Vec<Value> = groups
            .iter()
            .map(|g| {
                let partitions: Vec<Value> = g
                    .partitions
                    .iter()
                    .map(|&(partition, committed, end, lag)| {
                        json!({"partition": partition, "committed": committed, "end": end, "lag": lag})
                    })
                    .collect();
                let lag: u64 = g.partitions.iter().map(|p| p.3).sum();
                json!({"group": g.group, "stream": g.stream, "lag": lag, "partitions": partitions})
            })
            .collect();
        println!("{}", json!({ "dir": dir.display().to_string(), "streams": list, "groups": groups }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    let _ = (|| -> std::io::Result<()> {
        writeln!(out, "{}: {}", dir.display(), plural(streams.len() as u64, "stream"))?;
        for (name, config, partitions) in &streams {
            writeln!(out, "stream {name}: {}", settings(config))?;
            for (p, recovered) in partitions {
                let torn = match recovered.torn_bytes {
                    0 => String::new(),
                    n => format!(", {n} torn bytes cut by recovery"),
                };
                writeln!(
                    out,
                    "  partition {}: start {}, end {}, {}, {}, {}{torn}",
                    p.partition,
                    p.start,
                    p.end,
                    plural(p.bytes, "byte"),
                    plural(p.segments.len() as u64, "segment"),
                    plural(p.index_entries, "index entry"),
                )?;
                for s in &p.segments {
                    let offsets = match s.last {
                        Some(last) => format!("offsets {}..={last}", s.base),
                        None => "no records".to_owned(),
                    };
                    writeln!(out, "    segment {:020}: {offsets}, {}", s.base, plural(s.bytes, "byte"))?;
                }
            }
        }
        for g in &groups {
            let lag: u64 = g.partitions.iter().map(|p| p.3).sum();
            writeln!(out, "group {} on stream {}: lag {lag}", g.group, g.stream)?;
            for &(partition, committed, end, lag) in &g.partitions {
                let committed =
                    committed.map_or_else(|| "nothing committed".to_owned(), |c| format!("committed {c}"));
                writeln!(out, "  partition {partition}: {committed}, end {end}, lag {lag}")?;
            }
        }
        Ok(())
    })();
    Ok(ExitCode::SUCCESS)
}

/// A stream as `inspect` shows it: its name, settings, and each partition's figures.
type StreamView = (String, StreamConfig, Vec<(PartitionInfo, Recovered)>);

/// A consumer group's committed offsets on one stream: (partition, committed, end, lag).
struct GroupView {
    group: String,
    stream: String,
    partitions: Vec<(u32, Option<u64>, u64, u64)>,
}

/// The groups whose commits the broker keeps in the offsets stream, with their lag on each partition
/// of the streams in `streams`.
fn groups(log: &LogDir, streams: &[StreamView]) -> Result<Vec<GroupView>, Failure> {
    if !streams.iter().any(|(name, ..)| name == tubemail_log::offsets::STREAM) {
        return Ok(Vec::new());
    }
    let offsets = log.open_stream(tubemail_log::offsets::STREAM)?;
    let committed = tubemail_log::offsets::read_all(&offsets)?;
    offsets.close()?;
    let mut views: Vec<GroupView> = Vec::new();
    for (group, stream) in committed.keys().map(|(g, s, _)| (g.clone(), s.clone())) {
        if views.last().is_some_and(|v| v.group == group && v.stream == stream) {
            continue;
        }
        let Some((_, _, partitions)) = streams.iter().find(|(name, ..)| *name == stream) else { continue };
        let partitions = partitions
            .iter()
            .map(|(p, _)| {
                let c = committed.get(&(group.clone(), stream.clone(), p.partition)).copied();
                (p.partition, c, p.end, p.end.saturating_sub(c.unwrap_or(p.start).max(p.start)))
            })
            .collect();
        views.push(GroupView { group, stream, partitions });
    }
    Ok(views)
}

/// A stream's settings on one line.
fn settings(c: &StreamConfig) -> String {
    let fsync = match c.fsync {
        Fsync::Interval => format!("fsync interval (every {} ms)", c.fsync_interval_ms),
        other => format!("fsync {}", other.as_str()),
    };
    let cleanup = serde_json::to_value(c.cleanup).expect("cleanup serializes");
    let mut retention: Vec<String> = [
        c.retention_ms.map(|v| format!("retention_ms {v}")),
        c.retention_bytes.map(|v| format!("retention_bytes {v}")),
        c.retention_records.map(|v| format!("retention_records {v}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if retention.is_empty() {
        retention.push("no retention".to_owned());
    }
    let mut line = format!(
        "{}, {fsync}, cleanup {}, {}, segment_bytes {}, segment_ms {}, max_record_bytes {}",
        plural(u64::from(c.partitions), "partition"),
        cleanup.as_str().unwrap_or_default(),
        retention.join(", "),
        c.segment_bytes,
        c.segment_ms,
        c.max_record_bytes
    );
    if c.cleanup.compacts() {
        line.push_str(&format!(", delete_retention_ms {}", c.delete_retention_ms));
    }
    line
}

fn plural(n: u64, what: &str) -> String {
    match (n, what) {
        (1, _) => format!("1 {what}"),
        (_, "index entry") => format!("{n} index entries"),
        _ => format!("{n} {what}s"),
    }
}

// ---------------------------------------------------------------------------------------------
// dump

struct DumpArgs {
    stream: String,
    partition: Option<u32>,
    from: Option<u64>,
    from_time: Option<i64>,
    limit: Option<u64>,
    json: bool,
}

fn dump(dir: &Path, args: &DumpArgs) -> Result<ExitCode, Failure> {
    let log = LogDir::open_existing(dir)?;
    let stream = log.open_stream(&args.stream)?;
    let partitions: Vec<&Arc<Partition>> = match args.partition {
        Some(p) => vec![stream.partition(p)?],
        None => stream.partitions().iter().collect(),
    };
    if args.from.is_some() && args.partition.is_none() && partitions.len() > 1 {
        return Err(Failure::usage(format!(
            "--from is an offset in one partition: choose it with --partition (stream {} has {})",
            args.stream,
            partitions.len()
        )));
    }
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut out = BufWriter::new(std::io::stdout().lock());
    for p in partitions {
        let in_partition = |e: LogError| Failure::from(e).context(format!("partition {}", p.id()));
        let mut from = match (args.from, args.from_time) {
            (Some(offset), _) => offset,
            (None, Some(time)) => p.offset_for_time(time).map_err(in_partition)?,
            (None, None) => p.start(),
        };
        let end = p.end();
        // Refuses an offset out of range before printing anything of this partition.
        p.read(from, 0, 0).map_err(in_partition)?;
        while left > 0 && from < end {
            let batch = p.read(from, left.min(1024) as usize, 1 << 20).map_err(in_partition)?;
            let Some(last) = batch.last() else { break };
            from = last.offset + 1;
            for r in &batch {
                if write_record(&mut out, p.id(), r, args.json).is_err() {
                    // A closed pipe (`| head`) ends the listing quietly.
                    return Ok(ExitCode::SUCCESS);
                }
            }
            left -= batch.len() as u64;
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// Bytes as JSON: a string when they are UTF-8, `{"hex": "..."}` when not, `null` when absent.
fn bytes_value(bytes: Option<&[u8]>) -> Value {
    match bytes {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_owned()),
            Err(_) => json!({ "hex": b.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
        },
    }
}

fn write_record(out: &mut impl Write, partition: u32, r: &Record, json: bool) -> std::io::Result<()> {
    let key = bytes_value(r.key.as_deref());
    let value = bytes_value(r.value.as_deref());
    let time = format_rfc3339(r.timestamp);
    if json {
        let line = json!({
            "partition": partition,
            "offset": r.offset,
            "timestamp": r.timestamp,
            "time": time,
            "key": key,
            "value": value,
        });
        writeln!(out, "{line}")
    } else {
        writeln!(out, "{partition}\t{}\t{time}\t{key}\t{value}", r.offset)
    }
}

// ---------------------------------------------------------------------------------------------
// verify

fn verify(dir: &Path, json: bool) -> Result<ExitCode, Failure> {
    let log = LogDir::open_existing(dir)?;
    let mut rows: Vec<Value> = Vec::new();
    let mut damage: Vec<String> = Vec::new();
    let (mut records, mut torn) = (0u64, 0u64);
    for name in log.stream_names()? {
        let stream = match log.open_stream(&name) {
            Ok(stream) => stream,
            Err(e) => {
                // Recovery refuses damage in an active segment's tail: the whole stream is unread.
                damage.push(format!("stream {name}: {e}"));
                rows.push(damaged_row(&name, None, None, &e));
                continue;
            }
        };
        for p in stream.partitions() {
            let cut = p.recovered().torn_bytes;
            torn += cut;
            match p.verify() {
                Ok(n) => {
                    records += n;
                    rows.push(json!({
                        "stream": name, "partition": p.id(), "ok": true, "records": n, "torn_bytes_cut": cut,
                    }));
                }
                Err(e) => {
                    damage.push(format!("{name}/{}: {e}", p.id()));
                    rows.push(damaged_row(&name, Some(p.id()), Some(cut), &e));
                }
            }
        }
        stream.close()?;
    }
    let ok = damage.is_empty();
    if json {
        println!("{}", json!({ "ok": ok, "records": records, "torn_bytes_cut": torn, "partitions": rows }));
    } else {
        for row in &rows {
            let place = match row["partition"].as_u64() {
                Some(p) => format!("{}/{p}", row["stream"].as_str().unwrap_or_default()),
                None => format!("{} (every partition)", row["stream"].as_str().unwrap_or_default()),
            };
            let cut = match row["torn_bytes_cut"].as_u64() {
                Some(n) if n > 0 => format!(" (recovery cut a torn tail of {n} bytes)"),
                _ => String::new(),
            };
            if row["ok"] == true {
                println!("{place}: {} ok{cut}", plural(row["records"].as_u64().unwrap_or(0), "record"));
            } else {
                println!("{place}: DAMAGED: {}{cut}", row["error"].as_str().unwrap_or_default());
            }
        }
        if ok {
            println!("sound: {} in {}", plural(records, "record"), plural(rows.len() as u64, "partition"));
        }
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    for d in &damage {
        eprintln!("error: {d}");
    }
    Ok(ExitCode::FAILURE)
}

fn damaged_row(stream: &str, partition: Option<u32>, torn: Option<u64>, e: &LogError) -> Value {
    let mut row = json!({
        "stream": stream, "partition": partition, "ok": false, "torn_bytes_cut": torn, "error": e.to_string(),
    });
    if let LogError::Corrupt { file, position, why } = e {
        row["file"] = json!(file);
        row["position"] = json!(position);
        row["why"] = json!(why);
    }
    row
}

// ---------------------------------------------------------------------------------------------
// append

/// Records appended and not yet acked at most, while more input is already at hand.
const IN_FLIGHT_MAX: usize = 4096;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Opens `name`, creating it with default settings plus `partitions` and `fsync` when missing; an
/// existing stream keeps its settings but for `fsync` (and refuses another partition count).
fn open_or_create(
    log: &LogDir,
    name: &str,
    partitions: Option<u32>,
    fsync: Option<Fsync>,
) -> Result<Stream, Failure> {
    match log.open_stream(name) {
        Ok(stream) => {
            let mut config = stream.config().clone();
            let changed = partitions.is_some_and(|p| p != config.partitions)
                || fsync.is_some_and(|f| f != config.fsync);
            if !changed {
                return Ok(stream);
            }
            drop(stream);
            config.partitions = partitions.unwrap_or(config.partitions);
            config.fsync = fsync.unwrap_or(config.fsync);
            Ok(log.stream(name, config)?)
        }
        Err(LogError::UnknownStream(_)) => {
            let defaults = StreamConfig::default();
            let config = StreamConfig {
                partitions: partitions.unwrap_or(defaults.partitions),
                fsync: fsync.unwrap_or(defaults.fsync),
                ..defaults
            };
            Ok(log.stream(name, config)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// A record's key or value from its JSON: a string's UTF-8 bytes, any other value's compact text.
fn json_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => Some(other.to_string().into_bytes()),
    }
}

/// An input line's key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One input line as a key and a value.
fn parse_line(line: &str) -> Result<KeyValue, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(fields) = v else {
        return Err(r#"not a JSON object: each line is {"key": ..., "value": ...}"#.to_owned());
    };
    if let Some(other) = fields.keys().find(|k| *k != "key" && *k != "value") {
        return Err(format!(r#"unknown field {other:?} (a line has "key" and "value")"#));
    }
    let Some(value) = fields.get("value") else {
        return Err(r#"no "value" (null for a tombstone)"#.to_owned());
    };
    let key = fields.get("key").and_then(json_bytes);
    let value = json_bytes(value);
    if key.is_none() && value.is_none() {
        return Err("a tombstone (a null value) needs a key".to_owned());
    }
    Ok((key, value))
}

fn append(
    dir: &Path,
    name: &str,
    partitions: Option<u32>,
    fsync: Option<Fsync>,
) -> Result<ExitCode, Failure> {
    let log = LogDir::open(dir)?;
    let stream = open_or_create(&log, name, partitions, fsync)?;
    let mut input = BufReader::with_capacity(1 << 16, std::io::stdin());
    let mut out = std::io::stdout().lock();
    let mut in_flight: Vec<Appended> = Vec::new();
    let mut line = String::new();
    let mut number = 0u64;
    let result = loop {
        // Waiting for input with records in flight would hold back their acks: print them first.
        let more_at_hand = input.buffer().contains(&b'\n');
        if !in_flight.is_empty() && (!more_at_hand || in_flight.len() >= IN_FLIGHT_MAX) {
            print_acks(&stream, &mut in_flight, &mut out)?;
        }
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                break Err(Failure::usage(format!("stdin line {}: not UTF-8", number + 1)))
            }
            Err(e) => break Err(Failure::failed(format!("cannot read stdin after line {number}: {e}"))),
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = match parse_line(line.trim_end_matches(['\n', '\r'])) {
            Ok(kv) => kv,
            Err(why) => break Err(Failure::usage(format!("stdin line {number}: {why}"))),
        };
        let record = Append { key: key.as_deref(), value: value.as_deref(), timestamp: now_ms() };
        match stream.append(record) {
            Ok(appended) => in_flight.push(appended),
            Err(e) => break Err(Failure::from(e).context(format!("stdin line {number}"))),
        }
    };
    // Whatever stopped the input, the records before it are acked and printed.
    print_acks(&stream, &mut in_flight, &mut out)?;
    stream.close()?;
    result.map(|()| ExitCode::SUCCESS)
}

fn print_acks(stream: &Stream, in_flight: &mut Vec<Appended>, out: &mut impl Write) -> Result<(), Failure> {
    for a in in_flight.drain(..) {
        stream.partition(a.partition)?.wait_acked(a.offset)?;
        writeln!(out, "{} {}", a.partition, a.offset)
            .and_then(|()| out.flush())
            .map_err(|e| Failure::failed(format!("cannot write to stdout: {e}")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// torture

struct TortureArgs {
    dir: PathBuf,
    kills: u64,
    fsync: Fsync,
    json: bool,
    seed: u64,
    fresh: bool,
}

/// The stream the torture appends to, and its settings: small segments, so that kills also land
/// around segment rolls.
const TORTURE_STREAM: &str = "torture";
const TORTURE_PARTITIONS: u32 = 2;
const TORTURE_SEGMENT_BYTES: u64 = 64 << 10;

/// SplitMix64: the values' lengths, a function of the seed and the record's number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record `i`'s key and value: unique values of 6 to about 1,000 bytes.
fn torture_record(seed: u64, i: u64) -> (String, String) {
    let padding = (mix(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d)) % 1000) as usize;
    (format!("k{}", i % 16), format!("v{i}-{}", "x".repeat(padding)))
}

/// Prepares the directory: missing or empty, or (with --fresh) a log that is wiped.
fn prepare_torture_dir(dir: &Path, fresh: bool) -> Result<(), Failure> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(Failure::usage(format!("--dir {}: {e}", dir.display()))),
    };
    if entries == 0 {
        return Ok(());
    }
    if !fresh {
        return Err(Failure::usage(format!(
            "--dir {} is not empty (a previous run?): remove it, choose another, or pass --fresh",
            dir.display()
        )));
    }
    if !dir.join(tubemail_log::dir::MARKER_FILE).is_file() {
        return Err(Failure::usage(format!(
            "--fresh wipes only a tubemail log directory, and {} holds other files",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).map_err(|e| Failure::failed(format!("cannot wipe {}: {e}", dir.display())))
}

/// When the appender is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// After this many acks.
    Acks(u64),
    /// This long after its start, acked or not.
    Time(Duration),
}

/// One appender's life: what it acked, as `(partition, offset, record number)`.
struct Round {
    acked: Vec<(u32, u64, u64)>,
    /// The first record number not fed to it.
    next: u64,
}

fn spawn_appender(dir: &Path, fsync: Fsync) -> Result<Child, Failure> {
    let exe =
        std::env::current_exe().map_err(|e| Failure::failed(format!("cannot find this program: {e}")))?;
    let partitions = TORTURE_PARTITIONS.to_string();
    Command::new(exe)
        .arg("log")
        .arg("append")
        .arg(dir)
        .args(["--stream", TORTURE_STREAM, "--partitions", &partitions, "--fsync", fsync.as_str()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure::failed(format!("cannot start the appender: {e}")))
}

/// Runs an appender from record `first`, kills it at `kill`, and returns what it acked.
fn round(dir: &Path, fsync: Fsync, seed: u64, first: u64, kill: KillAt) -> Result<Round, Failure> {
    let started = Instant::now();
    let mut child = spawn_appender(dir, fsync)?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let mut stdin = BufWriter::new(stdin);
        let mut i = first;
        loop {
            let (key, value) = torture_record(seed, i);
            // Counted as fed before the write: a line cut by the kill is never reused.
            i += 1;
            if writeln!(stdin, r#"{{"key":"{key}","value":"{value}"}}"#).is_err() {
                return i;
            }
        }
    });
    let (acks, acks_in) = mpsc::channel::<Result<(u32, u64), String>>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let parsed = line
                .split_once(' ')
                .and_then(|(p, o)| Some((p.parse::<u32>().ok()?, o.parse::<u64>().ok()?)))
                .ok_or(line);
            if acks.send(parsed).is_err() {
                return;
            }
        }
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let mut acked = Vec::new();
    let mut killed = false;
    let mut bad_line = None;
    let mut take = |ack: Result<(u32, u64), String>, acked: &mut Vec<(u32, u64, u64)>| match ack {
        Ok((p, o)) => acked.push((p, o, first + acked.len() as u64)),
        Err(line) => bad_line = bad_line.take().or(Some(line)),
    };
    loop {
        let wait = match kill {
            KillAt::Acks(n) if acked.len() as u64 >= n => None,
            KillAt::Acks(_) => Some(Duration::from_secs(60)),
            KillAt::Time(d) => d.checked_sub(started.elapsed()),
        };
        let Some(wait) = wait else { break };
        match acks_in.recv_timeout(wait) {
            Ok(ack) => take(ack, &mut acked),
            Err(mpsc::RecvTimeoutError::Timeout) if matches!(kill, KillAt::Time(_)) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::failed("the appender acked nothing for 60 s"));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // It ended before its kill: an error of its own.
                let status = child.wait().map_err(|e| Failure::failed(format!("appender: {e}")))?;
                let text = errors.join().unwrap_or_default();
                return Err(Failure::failed(format!(
                    "the appender stopped by itself ({status}) after {} acks: {}",
                    acked.len(),
                    text.trim()
                )));
            }
        }
    }
    if child.try_wait().ok().flatten().is_none() {
        child.kill().map_err(|e| Failure::failed(format!("cannot kill the appender: {e}")))?;
        killed = true;
    }
    let status = child.wait().map_err(|e| Failure::failed(format!("appender: {e}")))?;
    // Acks it printed before it died are acks all the same.
    for ack in acks_in.iter() {
        take(ack, &mut acked);
    }
    let _ = reader.join();
    let next = writer.join().map_err(|_| Failure::failed("the feeding thread panicked"))?;
    let text = errors.join().unwrap_or_default();
    if !killed {
        return Err(Failure::failed(format!("the appender stopped by itself ({status}): {}", text.trim())));
    }
    if let Some(line) = bad_line {
        return Err(Failure::failed(format!("the appender printed {line:?}, not PARTITION OFFSET")));
    }
    Ok(Round { acked, next })
}

/// What a reopen of the tortured directory found.
#[derive(Default)]
struct Checked {
    recovered: u64,
    unacked_recovered: u64,
    lost_acked: u64,
    damage: Vec<String>,
}

/// Reopens the directory in-process: counts the partitions whose recovery cut a torn tail and,
/// when `acked` is given, checks every record against what was fed and acked.
fn reopen(dir: &Path, seed: u64, acked: Option<&[(u32, u64, u64)]>) -> Result<(u64, Checked), Failure> {
    let log = LogDir::open(dir).map_err(|e| Failure::from(e).context("reopening after a kill"))?;
    let stream = match log.open_stream(TORTURE_STREAM) {
        Ok(stream) => stream,
        // Killed before it created the stream: nothing was acked.
        Err(LogError::UnknownStream(_)) => return Ok((0, Checked::default())),
        Err(e @ LogError::Corrupt { .. }) => {
            return Ok((0, Checked { damage: vec![e.to_string()], ..Checked::default() }));
        }
        Err(e) => return Err(Failure::from(e).context("reopening after a kill")),
    };
    let torn = stream.partitions().iter().filter(|p| p.recovered().torn_bytes > 0).count() as u64;
    let Some(acked) = acked else {
        stream.close()?;
        return Ok((torn, Checked::default()));
    };
    let mut checked = Checked::default();
    let mut expected: std::collections::HashMap<(u32, u64), u64> = std::collections::HashMap::new();
    for &(p, o, i) in acked {
        if expected.insert((p, o), i).is_some() {
            // Two acks for one place: the first record acked there was overwritten.
            checked.lost_acked += 1;
            checked.damage.push(format!("{p}/{o} was acked twice"));
        }
    }
    let mut matched = 0u64;
    let mut seen = HashSet::new();
    for p in stream.partitions() {
        let id = p.id();
        if p.start() != 0 {
            checked.damage.push(format!("partition {id} starts at {}, not 0", p.start()));
        }
        match p.verify() {
            Ok(_) => {}
            Err(e) => checked.damage.push(format!("partition {id}: {e}")),
        }
        let mut next = p.start();
        let mut dense = p.start();
        while next < p.end() {
            let batch = match p.read(next, 4096, 8 << 20) {
                Ok(batch) => batch,
                Err(e) => {
                    checked.damage.push(format!("partition {id}: {e}"));
                    break;
                }
            };
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            for r in &batch {
                checked.recovered += 1;
                let place = format!("{id}/{}", r.offset);
                if r.offset != dense {
                    checked.damage.push(format!("{place}: offsets are not dense (expected {dense})"));
                }
                dense = r.offset + 1;
                let number = r
                    .value
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.strip_prefix('v')?.split_once('-')?.0.parse::<u64>().ok());
                let Some(number) = number else {
                    checked.damage.push(format!("{place} holds a value that was never fed"));
                    continue;
                };
                let (key, value) = torture_record(seed, number);
                if r.key.as_deref() != Some(key.as_bytes()) || r.value.as_deref() != Some(value.as_bytes()) {
                    checked.damage.push(format!("{place} holds record {number} altered"));
                    continue;
                }
                if !seen.insert(number) {
                    checked.damage.push(format!("{place} holds record {number} a second time"));
                }
                match expected.get(&(id, r.offset)) {
                    Some(&acked_number) if acked_number == number => matched += 1,
                    Some(&acked_number) => {
                        checked.damage.push(format!(
                            "{place} holds record {number}; record {acked_number} was acked there"
                        ));
                    }
                    None => checked.unacked_recovered += 1,
                }
            }
        }
    }
    checked.lost_acked += expected.len() as u64 - matched;
    stream.close()?;
    Ok((torn, checked))
}

fn torture(args: &TortureArgs) -> Result<ExitCode, Failure> {
    prepare_torture_dir(&args.dir, args.fresh)?;
    let started = Instant::now();
    {
        let log = LogDir::open(&args.dir)?;
        let config = StreamConfig {
            partitions: TORTURE_PARTITIONS,
            segment_bytes: TORTURE_SEGMENT_BYTES,
            fsync: args.fsync,
            ..StreamConfig::default()
        };
        log.stream(TORTURE_STREAM, config)?.close()?;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(args.kills);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} kills {msg}").expect("template"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut acked: Vec<(u32, u64, u64)> = Vec::new();
    let mut next = 0u64;
    let mut torn_tails = 0u64;
    let mut checked = Checked::default();
    let mut kills = 0;
    for kill in 1..=args.kills {
        let at = if rng.gen_ratio(1, 4) {
            KillAt::Time(Duration::from_millis(rng.gen_range(0..=30)))
        } else {
            KillAt::Acks(rng.gen_range(1..=2000))
        };
        let round = round(&args.dir, args.fsync, args.seed, next, at)
            .map_err(|f| f.context(format!("kill {kill}")))?;
        acked.extend(round.acked);
        next = round.next;
        let last = kill == args.kills;
        let (torn, found) = reopen(&args.dir, args.seed, last.then_some(acked.as_slice()))?;
        torn_tails += torn;
        kills = kill;
        if !found.damage.is_empty() && !last {
            checked = found;
            break;
        }
        checked = found;
        bar.inc(1);
        bar.set_message(format!("{} acked", acked.len()));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let ok = checked.lost_acked == 0 && checked.damage.is_empty();
    if args.json {
        let report = json!({
            "kills": kills,
            "fsync": args.fsync.as_str(),
            "seed": args.seed,
            "acked": acked.len(),
            "recovered": checked.recovered,
            "unacked_recovered": checked.unacked_recovered,
            "lost_acked": checked.lost_acked,
            "torn_tails_truncated": torn_tails,
            "damage": checked.damage.iter().take(20).collect::<Vec<_>>(),
            "seconds": (seconds * 1000.0).round() / 1000.0,
        });
        println!("{report}");
    } else {
        println!(
            "torture: {} under fsync {} (seed {}), {TORTURE_PARTITIONS} partitions, in {seconds:.1} s",
            plural(kills, "kill"),
            args.fsync.as_str(),
            args.seed
        );
        println!(
            "acked {}, recovered {} ({} written but never acked), lost_acked {}, torn_tails_truncated {torn_tails}",
            acked.len(),
            checked.recovered,
            checked.unacked_recovered,
            checked.lost_acked
        );
        if ok {
            println!(
                "every acked record is at its offset with its value; offsets are dense; every frame verifies"
            );
        }
    }
    if ok {
        return Ok(ExitCode::SUCCESS);
    }
    for d in checked.damage.iter().take(20) {
        eprintln!("error: {d}");
    }
    if checked.lost_acked > 0 {
        eprintln!("error: {} acked records were lost", checked.lost_acked);
    }
    Ok(ExitCode::FAILURE)
}

// ---------------------------------------------------------------------------------------------
// RFC 3339

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses an RFC 3339 time (`2024-05-01T12:00:00Z`, `2024-05-01 14:00:00.250+02:00`) into
/// milliseconds since the Unix epoch; fractions past milliseconds are cut.
pub(crate) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{s:?} is not an RFC 3339 time ({why}); e.g. 2024-05-01T12:00:00Z");
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let sep = |i: usize, want: &[u8]| b.get(i).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return Err(bad("the form is YYYY-MM-DDTHH:MM:SS followed by Z or an offset"));
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (digits(0..4), digits(5..7), digits(8..10), digits(11..13), digits(14..16), digits(17..19))
    else {
        return Err(bad("a field is not digits"));
    };
    let year = i64::from(year);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    let mut millis = 0i64;
    if b.get(at) == Some(&b'.') {
        let start = at + 1;
        at = start;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return Err(bad("no digits after the decimal point"));
        }
        let fraction = &s[start..at.min(start + 3)];
        millis = fraction.parse::<i64>().expect("digits") * 10_i64.pow(3 - fraction.len() as u32);
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && sep(at + 3, b":") => {
            let (Some(h), Some(m)) = (digits(at + 1..at + 3), digits(at + 4..at + 6)) else {
                return Err(bad("the offset is not digits"));
            };
            if h > 23 || m > 59 {
                return Err(bad("no such offset"));
            }
            let minutes = i64::from(h * 60 + m);
            if sign == b'-' {
                -minutes
            } else {
                minutes
            }
        }
        None => return Err(bad("no time zone: add Z for UTC or an offset such as +02:00")),
        Some(_) => return Err(bad("the end is neither Z nor an offset such as +02:00")),
    };
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC, to the millisecond.
pub(crate) fn format_rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_to_milliseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00Z"), Ok(1_714_564_800_000));
        assert_eq!(parse_rfc3339("2024-05-01T14:00:00.250+02:00"), Ok(1_714_564_800_250));
        assert_eq!(parse_rfc3339("2024-05-01 11:30:00.1234-00:30"), Ok(1_714_564_800_123));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999z"), Ok(-1));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:00:00",
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00Zjunk",
            "２０２４-05-01T12:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn times_print_as_rfc3339_and_parse_back() {
        for ms in [0, -1, 1_714_564_800_250, 951_782_400_000, 4_102_444_799_999] {
            let text = format_rfc3339(ms);
            assert_eq!(parse_rfc3339(&text), Ok(ms), "{text}");
        }
        assert_eq!(format_rfc3339(1_714_564_800_250), "2024-05-01T12:00:00.250Z");
    }

    #[test]
    fn input_lines_give_keys_and_values() {
        let kv = |k: Option<&str>, v: Option<&str>| {
            (k.map(|k| k.as_bytes().to_vec()), v.map(|v| v.as_bytes().to_vec()))
        };
        assert_eq!(parse_line(r#"{"key":"a","value":"b"}"#), Ok(kv(Some("a"), Some("b"))));
        assert_eq!(parse_line(r#"{"value":{"n": [1, 2]}}"#), Ok(kv(None, Some(r#"{"n":[1,2]}"#))));
        assert_eq!(parse_line(r#"{"key":7,"value":null}"#), Ok(kv(Some("7"), None)));
        assert_eq!(parse_line(r#"{"key":null,"value":""}"#), Ok(kv(None, Some(""))));
        for bad in [r#"{"key":"a"}"#, r#"{"value":null}"#, r#"{"value":1,"ky":2}"#, "[1]", "{", "value"] {
            assert!(parse_line(bad).is_err(), "{bad:?} parsed");
        }
    }
}
