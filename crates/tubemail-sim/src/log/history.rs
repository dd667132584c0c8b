//! The log scenario's history: what the driver did to the stream, what the log answered, what the
//! consumer groups' handlers saw, and every fault, stamped with simulated time.
//!
//! Hashed as the queue scenarios' histories are (FNV-1a over the MessagePack encoding), so that a
//! seed's run can be compared across processes and builds. Record timestamps (the broker's clock
//! starts at the wall clock) are never recorded.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A fault the log scenario injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFault {
    /// The process dies (kill -9): every stream is abandoned without its last sync or checkpoint,
    /// handlers stop wherever they are, and what was written stays in the page cache.
    ProcessKill,
    /// The machine loses power: as a kill, and every active segment loses what no `fdatasync`
    /// covered.
    PowerLoss,
    /// After a kill, a write the crash tore: part of a frame, a whole-length frame whose payload was
    /// only partly written, or zeros the file system allocated, at the end of an active segment.
    TornWrite,
    /// A group member's handler panics in the middle of a batch: the member crashes and leaves.
    ConsumerCrash,
}

impl LogFault {
    /// Every kind, in declaration order.
    pub const ALL: [LogFault; 4] =
        [LogFault::ProcessKill, LogFault::PowerLoss, LogFault::TornWrite, LogFault::ConsumerCrash];

    /// The kind's name, kebab-case as in JSON: `process-kill`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFault::ProcessKill => "process-kill",
            LogFault::PowerLoss => "power-loss",
            LogFault::TornWrite => "torn-write",
            LogFault::ConsumerCrash => "consumer-crash",
        }
    }
}

impl fmt::Display for LogFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A record as a reader or a handler saw it: its offset, its key, and the append that wrote it (the
/// sequence number in its value), if its value names one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Its offset.
    pub offset: u64,
    /// Its key.
    pub key: Option<String>,
    /// The sequence number of the append that wrote it; `None` for a tombstone, or for a value no
    /// append of the scenario could have written.
    pub seq: Option<u64>,
    /// Whether it is a tombstone.
    pub tombstone: bool,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogWhat {
    /// The run's stream, drawn from the seed.
    Config {
        /// Partitions.
        partitions: u32,
        /// `always`, `interval` or `never`.
        fsync: String,
        /// Whether the stream is compacted (else retention by records deletes old segments).
        compacted: bool,
        /// The segment size.
        segment_bytes: u64,
    },
    /// A broker opened the data directory (the first start, or a restart after a crash or a clean
    /// shutdown): each partition's first offset and end, as recovery found them.
    Opened {
        /// The process's life, from 0.
        life: u32,
        /// Per partition: (start, end).
        partitions: Vec<(u64, u64)>,
    },
    /// The broker could not open the directory.
    OpenFailed {
        /// Why.
        error: String,
    },
    /// An append was sent.
    Append {
        /// Its sequence number (in its value).
        seq: u64,
        /// Its key.
        key: String,
        /// Whether it is a tombstone (no value).
        tombstone: bool,
    },
    /// The append was acked.
    Acked {
        /// Its sequence number.
        seq: u64,
        /// Its partition.
        partition: u32,
        /// Its offset.
        offset: u64,
    },
    /// The append failed.
    AppendFailed {
        /// Its sequence number.
        seq: u64,
        /// Why.
        error: String,
    },
    /// A reader read a partition from its start.
    Read {
        /// The partition.
        partition: u32,
        /// The reader's first position (the partition's start).
        from: u64,
        /// The records, in the order read.
        records: Vec<Seen>,
    },
    /// A read failed.
    ReadFailed {
        /// The partition.
        partition: u32,
        /// Why.
        error: String,
    },
    /// The last read of a partition, once the groups caught up: everything it holds.
    Final {
        /// The partition.
        partition: u32,
        /// Its start.
        start: u64,
        /// Its end.
        end: u64,
        /// Every record.
        records: Vec<Seen>,
    },
    /// Retention and compaction ran.
    Maintenance {
        /// Segments retention deleted.
        deleted: u64,
        /// Segments compaction rewrote.
        compacted: u64,
        /// Records compaction removed.
        removed: u64,
    },
    /// An `interval` tick: every partition with unsynced appends synced.
    Tick,
    /// A member joined a group.
    Join {
        /// The group.
        group: String,
        /// The scenario's number for the member.
        member: u32,
    },
    /// A member left its group (the leave returned).
    Leave {
        /// The group.
        group: String,
        /// The member.
        member: u32,
    },
    /// A handler started on a record.
    HandlerStart {
        /// The group.
        group: String,
        /// The member.
        member: u32,
        /// The partition.
        partition: u32,
        /// The record.
        record: Seen,
    },
    /// A handler returned.
    HandlerEnd {
        /// The group.
        group: String,
        /// The member.
        member: u32,
        /// The partition.
        partition: u32,
        /// The record's offset.
        offset: u64,
    },
    /// A handler panicked (the member crashes and leaves).
    Crash {
        /// The group.
        group: String,
        /// The member.
        member: u32,
        /// The partition.
        partition: u32,
        /// The record's offset.
        offset: u64,
    },
    /// A group's committed offset of a partition, as the broker's stats showed it, when it changed.
    Committed {
        /// The group.
        group: String,
        /// The partition.
        partition: u32,
        /// The committed offset (the next to read).
        offset: u64,
    },
    /// A fault struck.
    Fault {
        /// Which.
        kind: LogFault,
        /// What it did, in words (bytes lost per partition, the torn write's shape).
        detail: String,
    },
    /// Something the scenario asked of the log failed (maintenance, a join).
    Failed {
        /// What, and why.
        what: String,
    },
    /// The end of the run: whether both groups caught up with every partition's end once the faults
    /// stopped, and how long that took in simulated time.
    Drained {
        /// Whether they did.
        caught_up: bool,
        /// Simulated milliseconds waited.
        waited_ms: u64,
    },
    /// The broker shut down cleanly (every stream synced and checkpointed), to be started again.
    CleanShutdown,
}

impl fmt::Display for LogWhat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen = |s: &Seen| match (s.seq, s.tombstone) {
            (_, true) => format!("{}:{}=tombstone", s.offset, s.key.as_deref().unwrap_or("")),
            (Some(seq), false) => format!("{}:{}=v{seq}", s.offset, s.key.as_deref().unwrap_or("")),
            (None, false) => format!("{}:{}=?", s.offset, s.key.as_deref().unwrap_or("")),
        };
        let list = |records: &[Seen]| records.iter().map(seen).collect::<Vec<_>>().join(" ");
        match self {
            LogWhat::Config { partitions, fsync, compacted, segment_bytes } => write!(
                f,
                "config partitions={partitions} fsync={fsync} compacted={compacted} segment_bytes={segment_bytes}"
            ),
            LogWhat::Opened { life, partitions } => {
                let p: Vec<String> = partitions.iter().map(|(s, e)| format!("{s}..{e}")).collect();
                write!(f, "opened life={life} partitions=[{}]", p.join(" "))
            }
            LogWhat::OpenFailed { error } => write!(f, "open_failed error={error:?}"),
            LogWhat::Append { seq, key, tombstone } => {
                write!(f, "append seq={seq} key={key} tombstone={tombstone}")
            }
            LogWhat::Acked { seq, partition, offset } => {
                write!(f, "acked seq={seq} partition={partition} offset={offset}")
            }
            LogWhat::AppendFailed { seq, error } => write!(f, "append_failed seq={seq} error={error:?}"),
            LogWhat::Read { partition, from, records } => {
                write!(f, "read partition={partition} from={from} [{}]", list(records))
            }
            LogWhat::ReadFailed { partition, error } => {
                write!(f, "read_failed partition={partition} error={error:?}")
            }
            LogWhat::Final { partition, start, end, records } => {
                write!(f, "final partition={partition} start={start} end={end} [{}]", list(records))
            }
            LogWhat::Maintenance { deleted, compacted, removed } => {
                write!(f, "maintenance deleted={deleted} compacted={compacted} removed={removed}")
            }
            LogWhat::Tick => f.write_str("tick"),
            LogWhat::Join { group, member } => write!(f, "join group={group} member={member}"),
            LogWhat::Leave { group, member } => write!(f, "leave group={group} member={member}"),
            LogWhat::HandlerStart { group, member, partition, record } => write!(
                f,
                "handler_start group={group} member={member} partition={partition} {}",
                seen(record)
            ),
            LogWhat::HandlerEnd { group, member, partition, offset } => {
                write!(f, "handler_end group={group} member={member} partition={partition} offset={offset}")
            }
            LogWhat::Crash { group, member, partition, offset } => {
                write!(f, "crash group={group} member={member} partition={partition} offset={offset}")
            }
            LogWhat::Committed { group, partition, offset } => {
                write!(f, "committed group={group} partition={partition} offset={offset}")
            }
            LogWhat::Fault { kind, detail } => write!(f, "fault kind={kind} {detail}"),
            LogWhat::CleanShutdown => f.write_str("clean_shutdown"),
            LogWhat::Failed { what } => write!(f, "failed what={what:?}"),
            LogWhat::Drained { caught_up, waited_ms } => {
                write!(f, "drained caught_up={caught_up} waited_ms={waited_ms}")
            }
        }
    }
}

/// One thing that happened, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Simulated microseconds since the run started (over every life of the process).
    pub at_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub what: LogWhat,
}

/// `    12.345ms acked seq=7 partition=1 offset=3`.
impl fmt::Display for LogEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = format!("{}.{:03}ms", self.at_us / 1000, self.at_us % 1000);
        write!(f, "{ms:>12} {}", self.what)
    }
}

/// The events of one run of the log scenario, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogHistory {
    events: Vec<LogEvent>,
}

impl LogHistory {
    /// Appends an event.
    pub fn push(&mut self, at_us: u64, what: LogWhat) {
        self.events.push(LogEvent { at_us, what });
    }

    /// The events, in order.
    pub fn events(&self) -> &[LogEvent] {
        &self.events
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The history as MessagePack, with named fields.
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a history always serializes to msgpack")
    }

    /// FNV-1a (64 bits) over [`LogHistory::to_msgpack`], as [`crate::history::History::hash`].
    pub fn hash(&self) -> u64 {
        tubemail::routing::fnv1a64(&self.to_msgpack())
    }

    /// How many faults of each kind struck (kinds that never struck are absent).
    pub fn fault_counts(&self) -> BTreeMap<LogFault, u64> {
        let mut counts = BTreeMap::new();
        for event in &self.events {
            if let LogWhat::Fault { kind, .. } = event.what {
                *counts.entry(kind).or_insert(0) += 1;
            }
        }
        counts
    }
}

/// Every event, one per line.
impl fmt::Display for LogHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.events.iter().try_for_each(|e| writeln!(f, "{e}"))
    }
}
