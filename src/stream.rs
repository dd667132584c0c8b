//! Streams: an event log inside the broker (Kafka's topics, JetStream's streams).
//!
//! A stream is declared in the topology (`[streams.NAME]`), is appended to directly
//! ([`Broker::append`](crate::Broker::append)) or through a topic binding (`[[bindings]] stream =
//! "NAME"`), and is read by [`Reader`]s (from an offset or a time, without a group) and by consumer
//! groups ([`Broker::join_group`](crate::Broker::join_group)), which keep their own committed offsets.
//! Records live in [`tubemail_log`], on disk under the broker's data directory or in memory.
//!
//! ```
//! use tubemail::stream::StartFrom;
//! use tubemail::{Broker, StreamSpec, Topology};
//!
//! # actix::System::new().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let topology = Topology::new().stream("orders", StreamSpec { partitions: 2, ..StreamSpec::default() });
//! let broker = Broker::builder(topology.clone()).data_dir(dir.path()).start().unwrap();
//! let put = broker.append("orders", "order-1", &"paid").await.unwrap();
//! broker.shutdown(std::time::Duration::from_secs(1)).await;
//!
//! // A new process (here: a new broker on the same directory) reads it back.
//! let broker = Broker::builder(topology).data_dir(dir.path()).start().unwrap();
//! let mut reader = broker.reader("orders", put.partition, StartFrom::Earliest).unwrap();
//! let record = reader.next().await.unwrap();
//! assert_eq!((record.key_str(), record.value::<String>().unwrap()), (Some("order-1"), "paid".to_owned()));
//! # });
//! ```
//!
//! # Delivery guarantees
//! An append (direct or through a topic) is confirmed once the stream's fsync policy is met (see
//! [`Fsync`](crate::topology::Fsync)): with `always`, once on disk; otherwise once in the page cache,
//! which a process crash (kill -9) never loses. A consumer group delivers at least once (commit after
//! the handler) or at most once (commit before), as the group's [`DeliveryMode`] says; records that
//! retention removed before a group read them are counted as `skipped_by_retention`, never silently.
//!
//! # Ordering
//! Records with the same key go to one partition (CRC-32C of the key) and keep their append order
//! there; keyless records (an empty key) spread round robin. Offsets are dense per partition from 0
//! and never reused. A group member reads each of its partitions in order.
//!
//! # Backpressure
//! Appends never wait for room (a log has no depth limit; retention bounds it); a group member reads
//! at most `batch` records ahead of its handler. Readers pull.
//!
//! # Shutdown
//! [`Broker::shutdown`](crate::Broker::shutdown) stops every group member after its running record
//! (committing what it handled), syncs every stream and writes its recovery checkpoint, and unlocks
//! the data directory, so the next broker on it opens without scanning.

pub(crate) mod group;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use tubemail_log::{Append, LogDir, LogError, Partition, Stream, StreamConfig};

use crate::message::PayloadError;

pub use self::group::{GroupError, GroupMember, GroupOptions, LeaveReport, COMMIT_EVERY_MAX};
pub use tubemail_log::Appended;

/// The internal stream of committed group offsets (compacted: one record per group, stream and
/// partition survives).
pub const OFFSETS_STREAM: &str = tubemail_log::offsets::STREAM;
/// Records a reader or group member reads at once, at most.
pub const READ_BATCH_MAX: usize = 65_536;

pub(crate) use crate::clock::Clock;

/// Where a reader, or a group new to a partition, starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The first record kept (JetStream's `DeliverAll`; the default, so a new module can rebuild its
    /// state from history).
    #[default]
    Earliest,
    /// Only records appended from now on (Kafka's default `auto.offset.reset`).
    Latest,
    /// From this offset (clamped into what the partition holds).
    Offset(u64),
    /// From the first record at or after this time, in milliseconds since the Unix epoch.
    Timestamp(i64),
}

/// A record of a stream, as readers and group handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The stream's name.
    pub stream: Arc<str>,
    /// Its partition.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, when it was appended.
    pub timestamp: i64,
    /// Its key (the routing key it was published with), if any.
    pub key: Option<Bytes>,
    /// Its value (MessagePack for typed values); `None` for a tombstone.
    pub value: Option<Bytes>,
}

impl StreamRecord {
    fn new(stream: &Arc<str>, partition: u32, r: tubemail_log::Record) -> Self {
        Self {
            stream: stream.clone(),
            partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key,
            value: r.value,
        }
    }

    /// The key as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Whether this record deletes its key (a key and no value).
    pub fn is_tombstone(&self) -> bool {
        self.key.is_some() && self.value.is_none()
    }

    /// The value decoded from MessagePack as a `T`.
    ///
    /// # Errors
    /// [`PayloadError::Decode`] when it does not decode (or is a tombstone).
    pub fn value<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        let expected = std::any::type_name::<T>();
        let bytes = self.value.as_deref().ok_or_else(|| PayloadError::Decode {
            expected,
            reason: "a tombstone has no value".to_owned(),
        })?;
        rmp_serde::from_slice(bytes).map_err(|e| PayloadError::Decode { expected, reason: e.to_string() })
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// No stream of that name is declared.
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    /// The value could not be encoded.
    #[error(transparent)]
    Encode(#[from] PayloadError),
    /// The log refused or failed it (too large, a full disk, a failed sync); nothing of it stays.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The broker is shut down.
    #[error("the broker is shut down")]
    Closed,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No stream of that name is declared.
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    /// The log's error: an unknown partition, an offset out of range, damage.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// A stream as the broker holds it.
pub(crate) struct StreamHandle {
    pub(crate) name: Arc<str>,
    pub(crate) log: Arc<Stream>,
    pub(crate) appended: AtomicU64,
    pub(crate) append_errors: AtomicU64,
}

impl StreamHandle {
    pub(crate) fn new(name: &str, log: Stream) -> Self {
        Self {
            name: name.into(),
            log: Arc::new(log),
            appended: AtomicU64::new(0),
            append_errors: AtomicU64::new(0),
        }
    }

    /// Writes a record (an empty key is no key); it is acked once [`StreamHandle::acked`] returns.
    pub(crate) fn write(
        &self,
        key: &str,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<Appended, LogError> {
        let key = (!key.is_empty()).then_some(key.as_bytes());
        match self.log.append(Append { key, value, timestamp }) {
            Ok(appended) => {
                self.appended.fetch_add(1, Ordering::Relaxed);
                Ok(appended)
            }
            Err(e) => {
                self.append_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Resolves once `appended` is acked under the stream's fsync policy.
    pub(crate) async fn acked(&self, appended: Appended) -> Result<(), LogError> {
        self.log.partition(appended.partition)?.acked(appended.offset).await
    }

    pub(crate) fn partition(&self, p: u32) -> Result<&Arc<Partition>, LogError> {
        self.log.partition(p)
    }
}

/// Reads one partition in order, without a group: replay from an offset or a time, then tail.
pub struct Reader {
    stream: Arc<str>,
    partition: Arc<Partition>,
    next: u64,
    buffer: VecDeque<StreamRecord>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("stream", &self.stream)
            .field("partition", &self.partition.id())
            .field("next", &self.next)
            .finish()
    }
}

/// How many records a reader fetches at once.
const READER_BATCH: usize = 256;

impl Reader {
    pub(crate) fn new(
        stream: Arc<str>,
        partition: Arc<Partition>,
        from: StartFrom,
    ) -> Result<Self, LogError> {
        let next = start_offset(&partition, from)?;
        Ok(Self { stream, partition, next, buffer: VecDeque::new() })
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.buffer.front().map_or(self.next, |r| r.offset)
    }

    /// Moves to `offset`.
    pub fn seek(&mut self, offset: u64) {
        self.buffer.clear();
        self.next = offset;
    }

    /// Up to `max` records from the position, without waiting (none at the end).
    ///
    /// # Errors
    /// [`LogError::OffsetBeforeStart`] when retention removed the position ([`Reader::seek`] to the
    /// partition's start to go on), [`LogError::Corrupt`] on damage.
    pub fn poll(&mut self, max: usize) -> Result<Vec<StreamRecord>, LogError> {
        let max = max.clamp(1, READ_BATCH_MAX);
        let mut out: Vec<StreamRecord> = self.buffer.drain(..self.buffer.len().min(max)).collect();
        if out.len() < max {
            let records = self.partition.read(self.next, max - out.len(), 1 << 20)?;
            out.extend(records.into_iter().map(|r| StreamRecord::new(&self.stream, self.partition.id(), r)));
        }
        if let Some(last) = out.last() {
            self.next = self.next.max(last.offset + 1);
        }
        Ok(out)
    }

    /// The next record, waiting for one to be appended at the end (tailing).
    ///
    /// # Errors
    /// As [`Reader::poll`].
    pub async fn next(&mut self) -> Result<StreamRecord, LogError> {
        loop {
            if let Some(r) = self.buffer.pop_front() {
                return Ok(r);
            }
            let end = self.partition.end();
            let records = self.partition.read(self.next, READER_BATCH, 1 << 20)?;
            match records.last() {
                Some(last) => {
                    self.next = last.offset + 1;
                    let id = self.partition.id();
                    self.buffer.extend(records.into_iter().map(|r| StreamRecord::new(&self.stream, id, r)));
                }
                None => {
                    // Nothing from here up to `end`: compaction may have removed every record there.
                    self.next = self.next.max(end);
                    self.partition.wait_past(self.next).await;
                }
            }
        }
    }
}

/// The offset `from` names in `partition`, clamped into what it holds.
pub(crate) fn start_offset(partition: &Partition, from: StartFrom) -> Result<u64, LogError> {
    let (start, end) = (partition.start(), partition.end());
    Ok(match from {
        StartFrom::Earliest => start,
        StartFrom::Latest => end,
        StartFrom::Offset(o) => o.clamp(start, end),
        StartFrom::Timestamp(t) => partition.offset_for_time(t)?.clamp(start, end),
    })
}

/// Committed group offsets: a map in memory, each change appended to [`OFFSETS_STREAM`] (compacted)
/// before it counts, and read back at start.
pub(crate) struct Offsets {
    log: Stream,
    committed: Mutex<BTreeMap<(String, String, u32), u64>>,
}

impl Offsets {
    /// Opens the offsets stream in `dir` with `fsync` (the strictest of the broker's streams), and
    /// reads every commit in it.
    pub(crate) fn open(dir: &LogDir, fsync: tubemail_log::Fsync) -> Result<Self, LogError> {
        let config = StreamConfig {
            partitions: 1,
            cleanup: tubemail_log::Cleanup::Compact,
            segment_bytes: 16 << 20,
            fsync,
            ..StreamConfig::default()
        };
        let log = dir.stream(OFFSETS_STREAM, config)?;
        let committed = tubemail_log::offsets::read_all(&log)?;
        Ok(Self { log, committed: Mutex::new(committed) })
    }

    pub(crate) fn get(&self, group: &str, stream: &str, partition: u32) -> Option<u64> {
        let key = (group.to_owned(), stream.to_owned(), partition);
        self.committed.lock().expect("offsets").get(&key).copied()
    }

    /// Commits `offset` (the next to read) and resolves once it is acked. Offsets never go back:
    /// a lower one is ignored.
    pub(crate) async fn commit(
        &self,
        group: &str,
        stream: &str,
        partition: u32,
        offset: u64,
        timestamp: i64,
    ) -> Result<(), LogError> {
        let map_key = (group.to_owned(), stream.to_owned(), partition);
        if self.committed.lock().expect("offsets").get(&map_key).is_some_and(|&c| c >= offset) {
            return Ok(());
        }
        let key = tubemail_log::offsets::key(group, stream, partition);
        let value = tubemail_log::offsets::value(offset);
        let appended =
            self.log.append(Append { key: Some(key.as_bytes()), value: Some(&value), timestamp })?;
        self.log.partition(0)?.acked(appended.offset).await?;
        let mut committed = self.committed.lock().expect("offsets");
        let entry = committed.entry(map_key).or_insert(0);
        debug_assert!(offset >= *entry, "committed offsets are monotonic");
        *entry = (*entry).max(offset);
        Ok(())
    }

    /// The committed offsets of `group` on `stream`, by partition.
    pub(crate) fn of_group(&self, group: &str, stream: &str) -> BTreeMap<u32, u64> {
        let committed = self.committed.lock().expect("offsets");
        committed
            .iter()
            .filter(|((g, s, _), _)| g == group && s == stream)
            .map(|((_, _, p), &o)| (*p, o))
            .collect()
    }

    /// Every (group, stream) with commits.
    pub(crate) fn groups(&self) -> Vec<(String, String)> {
        let committed = self.committed.lock().expect("offsets");
        let mut out: Vec<(String, String)> =
            committed.keys().map(|(g, s, _)| (g.clone(), s.clone())).collect();
        out.dedup();
        out
    }

    pub(crate) fn close(&self) -> Result<(), LogError> {
        self.log.close()
    }

    pub(crate) fn maintain(&self, now: i64) -> Result<(), LogError> {
        self.log.maintain(now).map(|_| ())
    }
}

/// A broker's streams: its log directory, its streams, the committed offsets and the live groups.
pub(crate) struct Streams {
    dir: Mutex<Option<LogDir>>,
    pub(crate) by_name: BTreeMap<String, Arc<StreamHandle>>,
    pub(crate) offsets: Arc<Offsets>,
    pub(crate) groups: Mutex<BTreeMap<(String, String), Arc<group::Group>>>,
    pub(crate) clock: Clock,
}

impl Streams {
    /// Opens the streams of `specs` in `dir` (in memory without one). The offsets stream syncs as
    /// the strictest of them does, so that a commit is as durable as the records it counts.
    pub(crate) fn open(
        dir: Option<&std::path::Path>,
        specs: &BTreeMap<String, StreamConfig>,
        clock: Clock,
    ) -> Result<Self, LogError> {
        let log = match dir {
            Some(dir) => LogDir::open(dir)?,
            None => LogDir::memory(),
        };
        let mut by_name = BTreeMap::new();
        for (name, spec) in specs {
            by_name.insert(name.clone(), Arc::new(StreamHandle::new(name, log.stream(name, spec.clone())?)));
        }
        let strictest = specs
            .values()
            .map(|s| s.fsync)
            .min_by_key(|f| match f {
                tubemail_log::Fsync::Always => 0,
                tubemail_log::Fsync::Interval => 1,
                tubemail_log::Fsync::Never => 2,
            })
            .unwrap_or(tubemail_log::Fsync::Never);
        let offsets = Arc::new(Offsets::open(&log, strictest)?);
        Ok(Self { dir: Mutex::new(Some(log)), by_name, offsets, groups: Mutex::default(), clock })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<StreamHandle>> {
        self.by_name.get(name)
    }

    /// The data directory, when the broker has one.
    pub(crate) fn path(&self) -> Option<std::path::PathBuf> {
        self.dir.lock().expect("log dir").as_ref().and_then(|d| d.path().map(|p| p.to_owned()))
    }

    /// Runs `f` on the broker's log directory (durable queues' journals live there too).
    pub(crate) fn with_dir<R>(&self, f: impl FnOnce(&LogDir) -> Result<R, LogError>) -> Result<R, LogError> {
        let dir = self.dir.lock().expect("log dir");
        f(dir.as_ref().ok_or_else(|| LogError::Failed { why: "the broker's log is closed".to_owned() })?)
    }

    /// The group `group` on `stream`, made on first use.
    pub(crate) fn group(
        &self,
        stream: &Arc<StreamHandle>,
        group: &str,
        arbiter: &actix::ArbiterHandle,
    ) -> Arc<group::Group> {
        let mut groups = self.groups.lock().expect("groups");
        groups
            .entry((stream.name.to_string(), group.to_owned()))
            .or_insert_with(|| {
                Arc::new(group::Group::new(
                    group,
                    stream.clone(),
                    self.offsets.clone(),
                    self.clock,
                    arbiter.clone(),
                ))
            })
            .clone()
    }

    /// Retention and compaction of every stream, now.
    pub(crate) fn maintain(&self) -> Result<tubemail_log::Maintenance, LogError> {
        let now = self.clock.now_ms();
        let mut total = tubemail_log::Maintenance::default();
        for s in self.by_name.values() {
            let m = s.log.maintain(now)?;
            total.segments_deleted += m.segments_deleted;
            total.segments_compacted += m.segments_compacted;
            total.records_removed += m.records_removed;
        }
        self.offsets.maintain(now)?;
        Ok(total)
    }

    pub(crate) fn stats(&self) -> BTreeMap<String, crate::stats::StreamStats> {
        let live: Vec<Arc<group::Group>> = self.groups.lock().expect("groups").values().cloned().collect();
        let mut out = BTreeMap::new();
        for (name, s) in &self.by_name {
            let mut stats = crate::stats::StreamStats {
                appended: s.appended.load(Ordering::Relaxed),
                append_errors: s.append_errors.load(Ordering::Relaxed),
                ..Default::default()
            };
            for p in s.log.partitions() {
                let info = p.info();
                let ps = crate::stats::PartitionStats {
                    start: info.start,
                    end: info.end,
                    bytes: info.bytes,
                    segments: info.segments.len() as u64,
                    synced: p.synced_end(),
                };
                stats.partitions.insert(p.id(), ps);
            }
            for g in live.iter().filter(|g| g.stream_name() == name.as_str()) {
                stats.groups.insert(g.name.to_string(), g.stats());
            }
            for (group, stream) in self.offsets.groups() {
                if stream == *name && !stats.groups.contains_key(&group) {
                    let committed = self.offsets.of_group(&group, &stream);
                    stats.groups.insert(group, group::group_stats(s, &committed, &BTreeMap::new()));
                }
            }
            out.insert(name.clone(), stats);
        }
        out
    }

    /// Stops every group member (each commits what it handled), syncs and checkpoints every stream,
    /// and unlocks the directory.
    pub(crate) async fn close(&self) {
        let groups: Vec<Arc<group::Group>> = self.groups.lock().expect("groups").values().cloned().collect();
        for g in groups {
            g.close().await;
        }
        for s in self.by_name.values() {
            if let Err(e) = s.log.close() {
                tracing::error!(stream = %s.name, error = %e, "closing the stream failed");
            }
        }
        if let Err(e) = self.offsets.close() {
            tracing::error!(error = %e, "closing the offsets stream failed");
        }
        self.dir.lock().expect("log dir").take();
    }
}
