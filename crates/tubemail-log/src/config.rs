//! A stream's settings: partitions, segments, retention, compaction and the fsync policy.

use serde::{Deserialize, Serialize};

/// When appended bytes are forced to disk, and so what an acknowledged append survives.
///
/// | policy | an append is acked | survives a process crash (kill -9) | survives a machine crash |
/// |---|---|---|---|
/// | `always` | once its bytes are on disk (`fdatasync`; concurrent appends share one: group commit) | yes | yes |
/// | `interval` | once written to the page cache | yes | all but the last `fsync_interval_ms` |
/// | `never` | once written to the page cache | yes | what the OS flushed by itself |
///
/// A process crash never loses an acked record under any policy: its bytes are in the kernel's page
/// cache, which outlives the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// Acked after `fdatasync`.
    Always,
    /// Synced every `fsync_interval_ms` by a background thread.
    #[default]
    Interval,
    /// Never synced by tubemail (the OS writes back on its own schedule).
    Never,
}

impl Fsync {
    /// Its name in files and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
            Fsync::Never => "never",
        }
    }
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "interval" => Ok(Fsync::Interval),
            "never" => Ok(Fsync::Never),
            other => Err(format!("unknown fsync policy {other:?} (always, interval or never)")),
        }
    }
}

/// What happens to closed segments (Kafka's `cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Cleanup {
    /// Whole closed segments are deleted by age, bytes or records.
    #[default]
    #[serde(rename = "delete")]
    Delete,
    /// Closed segments keep the last record of each key.
    #[serde(rename = "compact")]
    Compact,
    /// Both.
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl Cleanup {
    /// Whether closed segments are compacted.
    pub fn compacts(self) -> bool {
        matches!(self, Cleanup::Compact | Cleanup::CompactDelete)
    }

    /// Whether retention deletes closed segments.
    pub fn deletes(self) -> bool {
        matches!(self, Cleanup::Delete | Cleanup::CompactDelete)
    }
}

/// Partitions at most in one stream.
pub const PARTITIONS_MAX: u32 = 1024;
/// The largest record (frame) a stream may allow: 64 MiB.
pub const RECORD_BYTES_LIMIT: u32 = 64 << 20;
/// The smallest segment: 4 KiB.
pub const SEGMENT_BYTES_MIN: u64 = 4 << 10;
/// The largest segment: 1 GiB (positions in the index are 32-bit).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// A stream's settings. Every field has a default (shown in brackets), as in a topology file's
/// `[streams.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Partitions, 1 to 1,024 [1]. Fixed once the stream exists on disk.
    pub partitions: u32,
    /// Closed segments whose newest record is older than this are deleted [none: kept].
    pub retention_ms: Option<u64>,
    /// Closed segments are deleted, oldest first, while a partition holds more bytes [none].
    pub retention_bytes: Option<u64>,
    /// Closed segments are deleted, oldest first, while a partition would keep at least this many
    /// records without them [none].
    pub retention_records: Option<u64>,
    /// `delete`, `compact` or `compact,delete` [delete].
    pub cleanup: Cleanup,
    /// How long a tombstone stays in a compacted stream, so that a reader from the start still sees
    /// the delete [86,400,000: one day, as Kafka].
    pub delete_retention_ms: u64,
    /// A segment is closed and a new one started past this many bytes, 4 KiB to 1 GiB [128 MiB]. A
    /// segment holds at least one record, so a record larger than this gets a segment of its own.
    pub segment_bytes: u64,
    /// ... or once its first record is this old [604,800,000: seven days].
    pub segment_ms: u64,
    /// The largest record frame accepted, key and value included, up to 64 MiB [1 MiB].
    pub max_record_bytes: u32,
    /// `always`, `interval` or `never` [interval].
    pub fsync: Fsync,
    /// The period of `interval` syncs [1,000].
    pub fsync_interval_ms: u64,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_ms: None,
            retention_bytes: None,
            retention_records: None,
            cleanup: Cleanup::Delete,
            delete_retention_ms: 86_400_000,
            segment_bytes: 128 << 20,
            segment_ms: 604_800_000,
            max_record_bytes: 1 << 20,
            fsync: Fsync::Interval,
            fsync_interval_ms: 1_000,
        }
    }
}

impl StreamConfig {
    /// The settings' problems, as `(field, what is wrong)`; empty when they are valid.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1..=PARTITIONS_MAX).contains(&self.partitions) {
            out.push(("partitions", format!("{} is outside 1..={PARTITIONS_MAX}", self.partitions)));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            out.push((
                "segment_bytes",
                format!("{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}", self.segment_bytes),
            ));
        }
        let min_record = crate::record::FRAME_MIN as u32;
        if !(min_record..=RECORD_BYTES_LIMIT).contains(&self.max_record_bytes) {
            out.push((
                "max_record_bytes",
                format!("{} is outside {min_record}..={RECORD_BYTES_LIMIT}", self.max_record_bytes),
            ));
        }
        if self.segment_ms == 0 {
            out.push(("segment_ms", "must be at least 1".to_owned()));
        }
        if self.fsync_interval_ms == 0 {
            out.push(("fsync_interval_ms", "must be at least 1".to_owned()));
        }
        out
    }
}
