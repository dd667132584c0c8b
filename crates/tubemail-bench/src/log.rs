//! The event log ([`tubemail_log`]) against raw file writes of the same bytes, and (feature `peers`)
//! against NATS JetStream and Redis Streams: `tubemail bench log`.
//!
//! Every record is a 4-byte key and a value of the given size (100 bytes in the targets),
//! framed by [`tubemail_log::record::encode`]: 134 bytes on disk at 100. Streams have one partition,
//! and every appender is one thread appending records one at a time through [`Stream::append`]:
//!
//! - **memory**: [`LogDir::memory`], one producer.
//! - **never / interval**: a log directory in the system's temp folder, one producer; an append is
//!   acked when it returns.
//! - **always** with `in_flight` N: one producer that never has more than N appends unacked: before
//!   appending record `i` it waits ([`Partition::wait_acked`]) for record `i - N`. The stream's syncer
//!   thread `fdatasync`s everything written so far, so the N appends in flight share a sync (group
//!   commit); N = 1 is one sync per record.
//! - **baseline**: the same frames written with one `write` call per record (as the log writes them)
//!   to one file per partition (one file), by one writer; `interval` syncs once a second from the
//!   writer, `always` calls `fdatasync` after every record.
//! - **consume**: in memory, a reader thread reading ([`Partition::read`]) as the producer appends,
//!   until it has every record.
//! - **reopen**: a log of `records` records written and closed, then [`LogDir::open`] and
//!   [`LogDir::open_stream`] timed; the index memory is [`tubemail_log::PartitionInfo::index_entries`]
//!   × [`INDEX_ENTRY_BYTES`].
//!
//! Runs under `always` stop after [`ALWAYS_BUDGET`] (a one-sync-per-record run at 8,000 syncs/s would
//! take minutes for a million records); the others append every record. After each run the log is
//! read back from its first offset, and `lost` is the appended records it does not hold; a baseline
//! file's lost records are those its length is short of. Temporary folders are removed after each
//! run. Only appending (or reading) is timed: opening, verifying and removing are not.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tubemail_log::record;
pub use tubemail_log::Fsync;
use tubemail_log::{Append, LogDir, Partition, Stream, StreamConfig};

/// Bytes of each record's key.
pub const KEY_BYTES: usize = 4;
/// The appends in flight measured under `fsync = "always"`.
pub const IN_FLIGHT: [u32; 3] = [1, 16, 256];
/// How long a run under `always` appends at most (the others append every record).
pub const ALWAYS_BUDGET: Duration = Duration::from_secs(1);
/// Bytes an index entry takes in memory: 8 in the offset index, 12 in the time index.
pub const INDEX_ENTRY_BYTES: u64 = 20;
/// The reader kept up when it had every record within this factor of the producer's time.
pub const KEPT_UP_FACTOR: f64 = 1.5;
/// The stream's name in the temporary log directories.
pub const STREAM: &str = "bench";
/// Records per read of the consuming reader and of the verification.
const READ_RECORDS: usize = 8192;
/// Bytes per read (the log reads a segment 1 MiB at a time).
const READ_BYTES: usize = 1 << 20;

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRun {
    /// `tubemail`, `baseline`, `nats-jetstream` or `redis-streams`.
    pub system: &'static str,
    /// `memory`, `never`, `interval` or `always` (for a peer, the policy its durability matches).
    pub fsync: &'static str,
    /// `append` or `consume`.
    pub op: &'static str,
    /// Appends (or publishes) in flight at most.
    pub in_flight: u32,
    /// Records appended and acked (or consumed).
    pub records: u64,
    /// Bytes written: whole frames for tubemail and the baseline, key and value for a peer.
    pub bytes: u64,
    /// From the first append to the last ack (or the last record read).
    pub elapsed: Duration,
    /// Records acked (or appended, for a reader) that are not there afterwards.
    pub lost: u64,
    /// `fdatasync` calls, where counted.
    pub syncs: Option<u64>,
    /// A reader's time over its producer's, for `consume` runs.
    pub over_producer: Option<f64>,
}

impl LogRun {
    /// Records per second (0 for an empty run).
    pub fn records_per_sec(&self) -> f64 {
        per_sec(self.records, self.elapsed)
    }

    /// Bytes per second (0 for an empty run).
    pub fn bytes_per_sec(&self) -> f64 {
        per_sec(self.bytes, self.elapsed)
    }

    /// For a `consume` run: whether the reader had every record within [`KEPT_UP_FACTOR`] of the
    /// producer's time.
    pub fn kept_up(&self) -> Option<bool> {
        self.over_producer.map(|f| f <= KEPT_UP_FACTOR)
    }
}

fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// What reopening a log found.
#[derive(Debug, Clone, PartialEq)]
pub struct Reopen {
    /// Records in the log.
    pub records: u64,
    /// Bytes of frames in the log.
    pub bytes: u64,
    /// Segments of its partition.
    pub segments: usize,
    /// [`LogDir::open`] and [`LogDir::open_stream`] together.
    pub elapsed: Duration,
    /// Index entries held in memory after the open.
    pub index_entries: u64,
    /// Records written that the reopened log does not hold.
    pub lost: u64,
    /// Whether the open started from the clean close's checkpoint.
    pub from_checkpoint: bool,
}

impl Reopen {
    /// Bytes of index held in memory.
    pub fn index_bytes(&self) -> u64 {
        self.index_entries * INDEX_ENTRY_BYTES
    }

    /// Index memory over the data's bytes.
    pub fn index_ratio(&self) -> f64 {
        if self.bytes == 0 {
            0.0
        } else {
            self.index_bytes() as f64 / self.bytes as f64
        }
    }
}

/// The fsync policy's name as the results show it (`memory` for a log in memory).
pub fn fsync_name(fsync: Option<Fsync>) -> &'static str {
    fsync.map_or("memory", Fsync::as_str)
}

/// The frame of one benchmark record, in bytes.
pub fn frame_bytes(payload: usize) -> u64 {
    record::frame_len(Some(&[0; KEY_BYTES]), Some(&vec![0; payload])) as u64
}

fn key(i: u64) -> [u8; KEY_BYTES] {
    (i as u32).to_le_bytes()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn config(fsync: Fsync) -> StreamConfig {
    StreamConfig { partitions: 1, fsync, ..StreamConfig::default() }
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// A temporary folder in the system's temp folder, removed when dropped.
fn temp_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new().prefix("tubemail-bench-log-").tempdir().map_err(err("create a temp folder"))
}

/// Appends up to `records` records through tubemail, in memory (`fsync` `None`) or on disk, with at
/// most `in_flight` appends unacked (which only `always` leaves unacked: the others ack when the
/// append returns); runs under `always` stop after [`ALWAYS_BUDGET`].
///
/// # Errors
/// The log's error, as text.
pub fn tubemail(
    fsync: Option<Fsync>,
    in_flight: u32,
    records: u64,
    payload: usize,
) -> Result<LogRun, String> {
    let value = vec![0xAB_u8; payload];
    let dir = match fsync {
        Some(_) => Some(temp_dir()?),
        None => None,
    };
    let log = match &dir {
        Some(dir) => LogDir::open(dir.path().join("log")).map_err(err("open the log"))?,
        None => LogDir::memory(),
    };
    let stream = log.stream(STREAM, config(fsync.unwrap_or(Fsync::Never))).map_err(err("open the stream"))?;
    let budget = (fsync == Some(Fsync::Always)).then_some(ALWAYS_BUDGET);
    let (appended, elapsed) = produce(&stream, records, &value, in_flight, budget)?;
    let partition = stream.partition(0).map_err(err("partition"))?;
    let syncs = fsync.map(|_| partition.syncs());
    let lost = appended.saturating_sub(count(partition)?);
    stream.close().map_err(err("close the stream"))?;
    Ok(LogRun {
        system: "tubemail",
        fsync: fsync_name(fsync),
        op: "append",
        in_flight,
        records: appended,
        bytes: appended * frame_bytes(payload),
        elapsed,
        lost,
        syncs,
        over_producer: None,
    })
}

/// One producer appending up to `records` records, with at most `in_flight` unacked under `always`;
/// stops at `budget` when given. Returns the records appended (every one acked) and the time taken.
fn produce(
    stream: &Stream,
    records: u64,
    value: &[u8],
    in_flight: u32,
    budget: Option<Duration>,
) -> Result<(u64, Duration), String> {
    let partition = stream.partition(0).map_err(err("partition"))?;
    let waits = stream.config().fsync == Fsync::Always;
    let timestamp = now_ms();
    let window = u64::from(in_flight.max(1));
    let start = Instant::now();
    let mut appended = 0;
    while appended < records {
        if appended % 64 == 0 && budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        if waits && appended >= window {
            // No more than `in_flight` unacked once this one is written.
            partition.wait_acked(appended - window).map_err(err("ack"))?;
        }
        let key = key(appended);
        let put = stream
            .append(Append { key: Some(&key), value: Some(value), timestamp })
            .map_err(err("append"))?;
        debug_assert_eq!(put.offset, appended);
        appended += 1;
    }
    if appended > 0 {
        partition.wait_acked(appended - 1).map_err(err("ack"))?;
    }
    Ok((appended, start.elapsed()))
}

/// The records a partition holds, read from its first offset.
fn count(partition: &Partition) -> Result<u64, String> {
    let mut from = partition.start();
    let mut records = 0;
    loop {
        let batch = partition.read(from, READ_RECORDS, READ_BYTES).map_err(err("read back"))?;
        let Some(last) = batch.last() else { return Ok(records) };
        records += batch.len() as u64;
        from = last.offset + 1;
    }
}

/// In memory: one producer appending `records` records and a reader thread reading them as they come.
/// Returns the producer's run and the reader's (`consume`, with its time over the producer's).
///
/// # Errors
/// The log's error, as text.
pub fn consume(records: u64, payload: usize) -> Result<(LogRun, LogRun), String> {
    let value = vec![0xAB_u8; payload];
    let log = LogDir::memory();
    let stream = Arc::new(log.stream(STREAM, config(Fsync::Never)).map_err(err("open the stream"))?);
    let go = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stream, go) = (stream.clone(), go.clone());
        std::thread::Builder::new()
            .name("tubemail-bench-reader".into())
            .spawn(move || -> Result<(u64, Instant), String> {
                let partition = stream.partition(0).map_err(err("partition"))?;
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let (mut from, mut read) = (0, 0);
                while read < records {
                    if partition.end() <= from {
                        // Caught up: let the producer (on the other core, or on this one) go on.
                        std::thread::yield_now();
                        continue;
                    }
                    let batch = partition.read(from, READ_RECORDS, READ_BYTES).map_err(err("read"))?;
                    if let Some(last) = batch.last() {
                        read += batch.len() as u64;
                        from = last.offset + 1;
                    }
                }
                Ok((read, Instant::now()))
            })
            .map_err(err("spawn the reader"))?
    };
    go.store(true, Ordering::Release);
    let start = Instant::now();
    let produced = produce(&stream, records, &value, 1, None);
    let read = reader.join().map_err(|_| "the reader panicked".to_string())?;
    let (appended, producer_elapsed) = produced?;
    let (read, done) = read?;
    let reader_elapsed = done.saturating_duration_since(start);
    let frame = frame_bytes(payload);
    let producer = LogRun {
        system: "tubemail",
        fsync: "memory",
        op: "append",
        in_flight: 1,
        records: appended,
        bytes: appended * frame,
        elapsed: producer_elapsed,
        lost: 0,
        syncs: None,
        over_producer: None,
    };
    let reader = LogRun {
        op: "consume",
        records: read,
        bytes: read * frame,
        elapsed: reader_elapsed,
        lost: appended.saturating_sub(read),
        over_producer: Some(reader_elapsed.as_secs_f64() / producer_elapsed.as_secs_f64().max(1e-9)),
        ..producer.clone()
    };
    Ok((producer, reader))
}

/// The baseline: the same frames written with one `write` per record to one file, by one writer,
/// with the same fsync policy (`interval`: once a second; `always`: after every record, for at most
/// [`ALWAYS_BUDGET`]).
///
/// # Errors
/// The file's error, as text.
pub fn baseline(fsync: Fsync, records: u64, payload: usize) -> Result<LogRun, String> {
    let value = vec![0xAB_u8; payload];
    let dir = temp_dir()?;
    let path = dir.path().join("00000000000000000000.log");
    let mut file = File::create(&path).map_err(err("create the baseline file"))?;
    let timestamp = now_ms();
    let interval = Duration::from_millis(StreamConfig::default().fsync_interval_ms);
    let budget = (fsync == Fsync::Always).then_some(ALWAYS_BUDGET);
    let mut frame = Vec::with_capacity(frame_bytes(payload) as usize);
    let mut syncs = 0;
    let start = Instant::now();
    let mut last_sync = start;
    let mut written = 0;
    while written < records {
        if written % 64 == 0 && budget.is_some_and(|b| start.elapsed() >= b) {
            break;
        }
        frame.clear();
        record::encode(&mut frame, written, timestamp, Some(&key(written)), Some(&value));
        file.write_all(&frame).map_err(err("write"))?;
        let sync = match fsync {
            Fsync::Always => true,
            Fsync::Interval => last_sync.elapsed() >= interval,
            Fsync::Never => false,
        };
        if sync {
            file.sync_data().map_err(err("fdatasync"))?;
            last_sync = Instant::now();
            syncs += 1;
        }
        written += 1;
    }
    let elapsed = start.elapsed();
    let frame = frame_bytes(payload);
    let on_disk = file_len(&path)? / frame;
    Ok(LogRun {
        system: "baseline",
        fsync: fsync.as_str(),
        op: "append",
        in_flight: 1,
        records: written,
        bytes: written * frame,
        elapsed,
        lost: written.saturating_sub(on_disk),
        syncs: Some(syncs),
        over_producer: None,
    })
}

fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path).map(|m| m.len()).map_err(err("stat the baseline file"))
}

/// Writes `records` records (fsync `never`, one per append, not timed), closes the log, and times its
/// reopening: [`LogDir::open`] and [`LogDir::open_stream`]. The files are in the page cache then (they
/// were just written).
///
/// # Errors
/// The log's error, as text.
pub fn reopen(records: u64, payload: usize) -> Result<Reopen, String> {
    let value = vec![0xAB_u8; payload];
    let dir = temp_dir()?;
    let path = dir.path().join("log");
    {
        let log = LogDir::open(&path).map_err(err("open the log"))?;
        let stream = log.stream(STREAM, config(Fsync::Never)).map_err(err("open the stream"))?;
        // One record per append, as the producer runs do: the sparse index gets an entry per 4 KiB
        // of frames then (a batch's frames share one entry).
        produce(&stream, records, &value, 1, None)?;
        stream.close().map_err(err("close the stream"))?;
    }
    let start = Instant::now();
    let log = LogDir::open(&path).map_err(err("reopen the log"))?;
    let stream = log.open_stream(STREAM).map_err(err("reopen the stream"))?;
    let elapsed = start.elapsed();
    let partition = stream.partition(0).map_err(err("partition"))?;
    let info = partition.info();
    let held = count(partition)?;
    Ok(Reopen {
        records: info.end - info.start,
        bytes: info.bytes,
        segments: info.segments.len(),
        elapsed,
        index_entries: info.index_entries,
        lost: records.saturating_sub(held),
        from_checkpoint: partition.recovered().from_checkpoint,
    })
}

#[cfg(feature = "peers")]
pub use peers::{jetstream, redis_streams, JETSTREAM_STREAM, PEER_BUDGET, REDIS_ADDR};

#[cfg(feature = "peers")]
mod peers {
    //! The peers: JetStream (a file-storage stream) and Redis Streams, on this machine.

    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use futures::stream::{FuturesOrdered, StreamExt};

    use super::{key, LogRun, KEY_BYTES};
    use crate::peers::{self, PeerError, NATS_ADDR, RUN_TIMEOUT};

    /// Where Redis listens.
    pub const REDIS_ADDR: &str = "127.0.0.1:6379";
    /// The JetStream stream's name (recreated by each run, deleted after).
    pub const JETSTREAM_STREAM: &str = "tubemail_bench_log";
    /// The subject the JetStream runs publish to.
    const JETSTREAM_SUBJECT: &str = "tubemail.bench.log";
    /// How long one peer run publishes at most.
    pub const PEER_BUDGET: Duration = Duration::from_secs(3);
    /// Entries per `XREADGROUP`.
    const REDIS_READ_COUNT: usize = 1000;

    fn failed(system: &'static str) -> impl Fn(String) -> PeerError {
        move |reason| PeerError::Failed { system, reason }
    }

    /// Publishes up to `records` records of `payload` bytes to a file-storage JetStream stream
    /// ([`JETSTREAM_STREAM`], recreated), with at most `in_flight` publishes awaiting their PubAck,
    /// for at most [`PEER_BUDGET`]; `lost` is the acked records the stream does not hold afterwards.
    /// JetStream acks a publish once its file store has it, and syncs that store on a timer, not per
    /// message: its `fsync` is reported as `interval`.
    ///
    /// # Errors
    /// [`PeerError::Unreachable`] when nothing listens at [`NATS_ADDR`], else [`PeerError::Failed`].
    pub fn jetstream(in_flight: u32, records: u64, payload: usize) -> Result<LogRun, PeerError> {
        let system = "nats-jetstream";
        peers::reach(system, NATS_ADDR)?;
        peers::block_on(system, async move {
            let run = tokio::time::timeout(RUN_TIMEOUT, jetstream_run(in_flight, records, payload));
            match run.await {
                Ok(run) => run.map_err(failed(system)),
                Err(_) => Err(peers::timed_out(system)),
            }
        })
    }

    async fn jetstream_run(in_flight: u32, records: u64, payload: usize) -> Result<LogRun, String> {
        use async_nats::jetstream::stream::{Config, StorageType};

        let js = async_nats::jetstream::new(peers::nats_connect().await?);
        // A stream left by a run that died is recreated empty.
        let _ = js.delete_stream(JETSTREAM_STREAM).await;
        let config = Config {
            name: JETSTREAM_STREAM.to_string(),
            subjects: vec![JETSTREAM_SUBJECT.to_string()],
            storage: StorageType::File,
            max_age: Duration::from_secs(600),
            ..Default::default()
        };
        js.create_stream(config).await.map_err(peers::err("create stream"))?;
        let run = async {
            let subject = async_nats::Subject::from(JETSTREAM_SUBJECT);
            let body = bytes::Bytes::from(vec![0xAB_u8; payload]);
            let window = in_flight.max(1) as usize;
            let mut pending = VecDeque::with_capacity(window);
            let (mut sent, mut acked) = (0_u64, 0_u64);
            let start = Instant::now();
            while sent < records && !(sent % 64 == 0 && start.elapsed() >= PEER_BUDGET) {
                let ack = js.publish(subject.clone(), body.clone()).await.map_err(peers::err("publish"))?;
                pending.push_back(ack);
                sent += 1;
                if pending.len() >= window {
                    pending.pop_front().expect("one").await.map_err(peers::err("publish ack"))?;
                    acked += 1;
                }
            }
            for ack in pending.drain(..) {
                ack.await.map_err(peers::err("publish ack"))?;
                acked += 1;
            }
            let elapsed = start.elapsed();
            let mut stream = js.get_stream(JETSTREAM_STREAM).await.map_err(peers::err("get stream"))?;
            let stored = stream.info().await.map_err(peers::err("stream info"))?.state.messages;
            Ok(LogRun {
                system: "nats-jetstream",
                fsync: "interval",
                op: "append",
                in_flight,
                records: acked,
                bytes: acked * payload as u64,
                elapsed,
                lost: acked.saturating_sub(stored),
                syncs: None,
                over_producer: None,
            })
        };
        let run: Result<LogRun, String> = run.await;
        let _ = tokio::time::timeout(peers::CLEANUP_TIMEOUT, js.delete_stream(JETSTREAM_STREAM)).await;
        run
    }

    /// Redis Streams: `XADD` of up to `records` records (a 4-byte key field and a `payload`-byte
    /// value field) to a stream key of this run, at most `in_flight` awaiting their reply (a window of
    /// pipelined commands on one connection), for at most [`PEER_BUDGET`]; then the same records read
    /// by one consumer of a consumer group (`XREADGROUP` of [`REDIS_READ_COUNT`], each batch acked with
    /// `XACK`). Returns the append run and the consume run; the key is deleted after. `fsync` is the
    /// server's own setting: `memory` without an append-only file (`appendonly no`: RDB snapshots
    /// only), else its `appendfsync` (`always`, `interval` for `everysec`, `never` for `no`).
    ///
    /// # Errors
    /// [`PeerError::Unreachable`] when nothing listens at [`REDIS_ADDR`], else [`PeerError::Failed`].
    pub fn redis_streams(
        in_flight: u32,
        records: u64,
        payload: usize,
    ) -> Result<(LogRun, LogRun), PeerError> {
        let system = "redis-streams";
        peers::reach(system, REDIS_ADDR)?;
        peers::block_on(system, async move {
            let run = tokio::time::timeout(RUN_TIMEOUT, redis_run(in_flight, records, payload));
            match run.await {
                Ok(run) => run.map_err(failed(system)),
                Err(_) => Err(peers::timed_out(system)),
            }
        })
    }

    async fn redis_run(in_flight: u32, records: u64, payload: usize) -> Result<(LogRun, LogRun), String> {
        let client = redis::Client::open(format!("redis://{REDIS_ADDR}/")).map_err(peers::err("client"))?;
        let connect = client.get_multiplexed_async_connection();
        let mut con = match tokio::time::timeout(peers::CONNECT_TIMEOUT, connect).await {
            Ok(con) => con.map_err(peers::err("connect"))?,
            Err(_) => return Err("connect: timed out".to_string()),
        };
        let fsync = redis_fsync(&mut con).await?;
        let stream_key = format!("tubemail:bench:log:{}", peers::run_id());
        let run = redis_append_and_consume(&mut con, &stream_key, fsync, in_flight, records, payload).await;
        let delete = redis::cmd("DEL").arg(&stream_key).to_owned();
        let _ = tokio::time::timeout(peers::CLEANUP_TIMEOUT, delete.query_async::<i64>(&mut con)).await;
        run
    }

    /// The server's durability, as an fsync policy name.
    async fn redis_fsync(con: &mut redis::aio::MultiplexedConnection) -> Result<&'static str, String> {
        let get = |name: &'static str| {
            let mut con = con.clone();
            async move {
                let pair: Vec<String> = redis::cmd("CONFIG")
                    .arg("GET")
                    .arg(name)
                    .query_async(&mut con)
                    .await
                    .map_err(peers::err("CONFIG GET"))?;
                Ok::<_, String>(pair.get(1).cloned().unwrap_or_default())
            }
        };
        if get("appendonly").await? != "yes" {
            return Ok("memory");
        }
        Ok(match get("appendfsync").await?.as_str() {
            "always" => "always",
            "everysec" => "interval",
            _ => "never",
        })
    }

    async fn redis_append_and_consume(
        con: &mut redis::aio::MultiplexedConnection,
        stream_key: &str,
        fsync: &'static str,
        in_flight: u32,
        records: u64,
        payload: usize,
    ) -> Result<(LogRun, LogRun), String> {
        let value = vec![0xAB_u8; payload];
        let window = in_flight.max(1) as usize;
        let mut pending = FuturesOrdered::new();
        let (mut sent, mut acked) = (0_u64, 0_u64);
        let start = Instant::now();
        while sent < records && !(sent % 64 == 0 && start.elapsed() >= PEER_BUDGET) {
            let mut con = con.clone();
            let command = redis::cmd("XADD")
                .arg(stream_key)
                .arg("*")
                .arg("k")
                .arg(&key(sent)[..])
                .arg("v")
                .arg(&value[..])
                .to_owned();
            pending.push_back(async move { command.query_async::<String>(&mut con).await });
            sent += 1;
            if pending.len() >= window {
                pending.next().await.expect("one").map_err(peers::err("XADD"))?;
                acked += 1;
            }
        }
        while let Some(reply) = pending.next().await {
            reply.map_err(peers::err("XADD"))?;
            acked += 1;
        }
        let elapsed = start.elapsed();
        let stored: u64 =
            redis::cmd("XLEN").arg(stream_key).query_async(con).await.map_err(peers::err("XLEN"))?;
        let bytes = (KEY_BYTES + payload) as u64;
        let append = LogRun {
            system: "redis-streams",
            fsync,
            op: "append",
            in_flight,
            records: acked,
            bytes: acked * bytes,
            elapsed,
            lost: acked.saturating_sub(stored),
            syncs: None,
            over_producer: None,
        };

        let group = "tubemail-bench";
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream_key)
            .arg(group)
            .arg("0")
            .query_async::<String>(con)
            .await
            .map_err(peers::err("XGROUP CREATE"))?;
        let options =
            redis::streams::StreamReadOptions::default().group(group, "reader").count(REDIS_READ_COUNT);
        let start = Instant::now();
        let mut read = 0_u64;
        while read < acked {
            let reply: redis::streams::StreamReadReply =
                redis::AsyncCommands::xread_options(con, &[stream_key], &[">"], &options)
                    .await
                    .map_err(peers::err("XREADGROUP"))?;
            let ids: Vec<String> =
                reply.keys.into_iter().flat_map(|k| k.ids.into_iter().map(|id| id.id)).collect();
            if ids.is_empty() {
                break;
            }
            read += ids.len() as u64;
            let _: i64 =
                redis::AsyncCommands::xack(con, stream_key, group, &ids).await.map_err(peers::err("XACK"))?;
        }
        let consume = LogRun {
            op: "consume",
            in_flight: 1,
            records: read,
            bytes: read * bytes,
            elapsed: start.elapsed(),
            lost: acked.saturating_sub(read),
            ..append.clone()
        };
        Ok((append, consume))
    }
}
