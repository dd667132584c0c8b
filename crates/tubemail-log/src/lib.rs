//! tubemail's storage engine: an append-only, segmented log, on disk or in memory with one code path.
//!
//! Streams hold partitions; a partition holds segments named by their base offset; a segment holds
//! frames (length, CRC-32C, a version byte, the record) with a sparse offset index and a time index.
//! The broker's streams, and the durable queues and jobs built on them, are records in this log. The
//! format and its recovery are documented in `docs/LOG_FORMAT.md`.
//!
//! ```
//! use tubemail_log::{Append, LogDir, StreamConfig};
//!
//! let dir = tempfile::tempdir()?;
//! let log = LogDir::open(dir.path())?;
//! let orders = log.stream("orders", StreamConfig { partitions: 4, ..StreamConfig::default() })?;
//! let put = orders.append_blocking(Append { key: Some(b"order-1"), value: Some(b"paid"), timestamp: 1 })?;
//! let read = orders.partition(put.partition)?.read(put.offset, 10, 1 << 20)?;
//! assert_eq!(read[0].value.as_deref(), Some(&b"paid"[..]));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```
//!
//! # Delivery guarantees, Ordering, Backpressure, Shutdown
//! See [`partition`]: acks follow the fsync policy ([`Fsync`]); offsets are dense and in append
//! order per partition; appends never wait for room; a clean close leaves a checkpoint and a crash
//! leaves a tail that the next open scans and cuts where torn.

#[doc(hidden)]
pub mod broken;
pub mod config;
pub mod dir;
pub mod offsets;
pub mod partition;
pub mod record;
pub(crate) mod segment;
#[doc(hidden)]
pub mod sim;
pub mod stream;

use std::path::{Path, PathBuf};

pub use config::{Cleanup, Fsync, StreamConfig};
pub use dir::LogDir;
pub use partition::{
    Append, Maintenance, Partition, PartitionInfo, Recovered, SegmentInfo, BATCH_RECORDS_MAX,
};
pub use record::Record;
pub use stream::{partition_for_key, Appended, Stream};

/// What went wrong in the log: each says what and where.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed (a full disk is `ENOSPC` here); nothing half-written stays.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A frame that does not check, outside a torn tail.
    #[error("corrupt log: {file} at byte {position}: {why}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// The frame's byte position in it.
        position: u64,
        /// What does not check.
        why: &'static str,
    },
    /// Another process (or another open in this one) holds the directory.
    #[error("{path} is locked by another process (one process opens a log directory at a time)")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The path is not a log directory.
    #[error("{path} is not a tubemail log: {why}")]
    NotALog {
        /// The path.
        path: PathBuf,
        /// Why not.
        why: String,
    },
    /// A record larger than the stream's `max_record_bytes`.
    #[error("a record of {bytes} bytes (framed) is over the stream's max_record_bytes of {max}")]
    RecordTooLarge {
        /// The record's framed size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// An append of no records, or of too many at once.
    #[error("an append of {records} records: 1 to {max} at once")]
    BatchSize {
        /// Records given.
        records: usize,
        /// The limit.
        max: usize,
    },
    /// A keyless record in a compacted stream.
    #[error("a compacted stream's records need a key")]
    KeyRequired,
    /// An offset below the first one kept.
    #[error("offset {offset} is before the partition's start {start} (retention removed it)")]
    OffsetBeforeStart {
        /// The offset asked for.
        offset: u64,
        /// The first offset kept.
        start: u64,
    },
    /// An offset past the high watermark.
    #[error("offset {offset} is past the partition's end {end}")]
    OffsetPastEnd {
        /// The offset asked for.
        offset: u64,
        /// The high watermark.
        end: u64,
    },
    /// A partition the stream does not have.
    #[error("partition {partition} does not exist (the stream has {partitions})")]
    UnknownPartition {
        /// The partition asked for.
        partition: u32,
        /// How many there are.
        partitions: u32,
    },
    /// A stream the directory does not hold.
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    /// A stream name out of the allowed alphabet or length.
    #[error("invalid stream name {0:?}: 1 to 200 of A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// A setting out of range.
    #[error("invalid stream setting {field}: {why}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        why: String,
    },
    /// A stream reopened with another partition count.
    #[error("stream {stream:?} has {on_disk} partitions on disk; {asked} asked (keys would move)")]
    PartitionsChanged {
        /// The stream.
        stream: String,
        /// On disk.
        on_disk: u32,
        /// Asked for.
        asked: u32,
    },
    /// The stream was closed (its broker or jobs shut down): it takes no more appends.
    #[error("the stream is closed")]
    Closed,
    /// A sync failed earlier: the partition takes no more appends until it is reopened.
    #[error("the partition failed to sync ({why}); reopen the log")]
    Failed {
        /// The sync's error.
        why: String,
    },
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        LogError::Io { op, path: path.to_owned(), source }
    }
}
