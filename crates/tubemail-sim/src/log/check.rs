//! The log scenario's checkers: each promise of the log and of consumer groups, judged over a
//! [`LogHistory`] in event order.
//!
//! The checkers keep a model of every partition: the records acked at each offset and not yet
//! explained away. A record leaves the model only for a reason the promise allows: retention deleted
//! it (a delete stream's reader starts past it), compaction removed it (a compacted stream's reader
//! skips it while a later record of its key is in the model), or a power loss took it under
//! `interval` or `never` (recovery ends the partition before it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::history::{LogFault, LogHistory, LogWhat, Seen};
use super::{GROUP_ALO, GROUP_AMO};

/// A promise of the log or of its consumer groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogPromise {
    /// No acked record is lost, except what the fsync policy allows a power loss to take (the
    /// unsynced tail under `interval` and `never`), what retention deletes from the front, and older
    /// records of a key that compaction replaces by a later one.
    AckedKept,
    /// Offsets are given in append order, once each; the records of one key go to one partition; a
    /// group member handles a partition in order.
    PartitionOrder,
    /// Offsets are dense: no offset skipped (in a stream that is not compacted).
    DenseOffsets,
    /// Every record read or handled is one an append wrote, at the offset its ack named.
    OnlyAppended,
    /// A group's committed offset of a partition never goes back (but where a power loss under
    /// `interval` or `never` took unsynced commits).
    CommitsMonotonic,
    /// An at-least-once group handles every record the log holds at the end.
    AtLeastOnce,
    /// An at-most-once group never handles a record twice (but where a power loss under `interval`
    /// or `never` took the commit that recorded it).
    AtMostOnce,
    /// No partition is handled by two members of a group at once.
    OneOwner,
    /// The log opens after every crash, takes every append and reads back.
    Available,
    /// The groups catch up with the end of the log once the faults stop.
    CatchUp,
}

impl LogPromise {
    /// The promise's name, kebab-case.
    pub fn as_str(self) -> &'static str {
        match self {
            LogPromise::AckedKept => "acked-records-kept",
            LogPromise::PartitionOrder => "partition-order",
            LogPromise::DenseOffsets => "dense-offsets",
            LogPromise::OnlyAppended => "only-appended-records",
            LogPromise::CommitsMonotonic => "commits-monotonic",
            LogPromise::AtLeastOnce => "at-least-once",
            LogPromise::AtMostOnce => "at-most-once",
            LogPromise::OneOwner => "one-owner-per-partition",
            LogPromise::Available => "log-available",
            LogPromise::CatchUp => "groups-catch-up",
        }
    }
}

impl fmt::Display for LogPromise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogViolation {
    /// Which promise.
    pub promise: LogPromise,
    /// The index of the event where it was found.
    pub event: usize,
    /// What is wrong, in words.
    pub what: String,
}

impl fmt::Display for LogViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (event {})", self.promise, self.what, self.event)
    }
}

/// Who wrote a record: the append's sequence number, or (a tombstone) its key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ident {
    seq: Option<u64>,
    key: Option<String>,
    tombstone: bool,
}

impl Ident {
    fn of(s: &Seen) -> Self {
        // A value names its append; a tombstone only has its key.
        let key = if s.seq.is_some() { None } else { s.key.clone() };
        Self { seq: s.seq, key, tombstone: s.tombstone }
    }

    fn describe(&self) -> String {
        match (self.seq, &self.key) {
            (Some(seq), _) => format!("v{seq}"),
            (None, Some(key)) if self.tombstone => format!("a tombstone of {key}"),
            (None, key) => format!("an unknown value (key {key:?})"),
        }
    }
}

/// A record the model holds.
#[derive(Debug, Clone)]
struct Entry {
    ident: Ident,
    key: String,
}

#[derive(Default)]
struct Checker {
    violations: Vec<LogViolation>,
    event: usize,
    always: bool,
    compacted: bool,
    /// Appends by sequence number: (key, tombstone).
    appends: BTreeMap<u64, (String, bool)>,
    /// Per partition, the acked records not explained away.
    model: Vec<BTreeMap<u64, Entry>>,
    /// Per partition, every record ever acked at each offset (a reuse after a power loss adds one).
    ever: Vec<BTreeMap<u64, Vec<Ident>>>,
    /// Per partition, the next offset an append should get.
    next: Vec<u64>,
    /// The partition each key's records went to.
    key_partition: BTreeMap<String, u32>,
    power_loss: bool,
    /// Power losses that could take acked records or commits (not under `always`).
    loss_epoch: u64,
    /// (group, partition) -> the member with a handler running there.
    running: BTreeMap<(String, u32), u32>,
    /// (group, member, partition) -> the record its handler is on.
    current: BTreeMap<(String, u32, u32), (u64, Ident)>,
    /// (group, member, partition) -> the last offset handled since the group's last rebalance.
    last_handled: BTreeMap<(String, u32, u32), u64>,
    /// At most once: (partition, offset, record) -> the loss epoch of its first handler start.
    amo_started: BTreeMap<(u32, u64, Ident), u64>,
    /// At least once: (partition, offset, record) handled to the end.
    alo_done: BTreeSet<(u32, u64, Ident)>,
    /// (group, partition) -> (committed offset, loss epoch when seen).
    committed: BTreeMap<(String, u32), (u64, u64)>,
}

/// Judges a history of the log scenario; empty when every promise held.
pub fn check_log(history: &LogHistory) -> Vec<LogViolation> {
    let mut c = Checker::default();
    for (i, event) in history.events().iter().enumerate() {
        c.event = i;
        c.step(&event.what);
    }
    c.violations
}

impl Checker {
    fn violation(&mut self, promise: LogPromise, what: String) {
        self.violations.push(LogViolation { promise, event: self.event, what });
    }

    fn partition_ok(&mut self, partition: u32) -> bool {
        if (partition as usize) < self.model.len() {
            return true;
        }
        self.violation(LogPromise::PartitionOrder, format!("partition {partition} does not exist"));
        false
    }

    fn step(&mut self, what: &LogWhat) {
        match what {
            LogWhat::Config { partitions, fsync, compacted, .. } => {
                let n = *partitions as usize;
                self.always = fsync == "always";
                self.compacted = *compacted;
                self.model = vec![BTreeMap::new(); n];
                self.ever = vec![BTreeMap::new(); n];
                self.next = vec![0; n];
            }
            LogWhat::Append { seq, key, tombstone } => {
                self.appends.insert(*seq, (key.clone(), *tombstone));
            }
            LogWhat::Acked { seq, partition, offset } => self.acked(*seq, *partition, *offset),
            LogWhat::AppendFailed { seq, error } => {
                self.violation(LogPromise::Available, format!("append v{seq} failed: {error}"));
            }
            LogWhat::Opened { partitions, .. } => self.opened(partitions),
            LogWhat::OpenFailed { error } => {
                self.violation(LogPromise::Available, format!("the log did not open: {error}"));
            }
            LogWhat::Read { partition, from, records } => {
                if self.partition_ok(*partition) {
                    let upto = records.last().map_or(*from, |r| r.offset + 1);
                    self.read(*partition, *from, upto, records);
                }
            }
            LogWhat::ReadFailed { partition, error } => {
                self.violation(
                    LogPromise::Available,
                    format!("a read of partition {partition} failed: {error}"),
                );
            }
            LogWhat::Final { partition, start, end, records } => {
                if self.partition_ok(*partition) {
                    self.final_read(*partition, *start, *end, records);
                }
            }
            LogWhat::Fault { kind: LogFault::ProcessKill | LogFault::PowerLoss, .. } => {
                if matches!(what, LogWhat::Fault { kind: LogFault::PowerLoss, .. }) {
                    self.power_loss = true;
                }
                self.stopped();
            }
            LogWhat::CleanShutdown => self.stopped(),
            LogWhat::Failed { what } => self.violation(LogPromise::Available, what.clone()),
            LogWhat::Drained { caught_up, waited_ms } => {
                if !caught_up {
                    self.violation(
                        LogPromise::CatchUp,
                        format!("the groups had not caught up after {waited_ms} ms without faults"),
                    );
                }
            }
            LogWhat::Fault { .. } | LogWhat::Maintenance { .. } | LogWhat::Tick => {}
            LogWhat::Join { group, .. } | LogWhat::Leave { group, .. } => self.rebalanced(group),
            LogWhat::HandlerStart { group, member, partition, record } => {
                if self.partition_ok(*partition) {
                    self.handler_start(group, *member, *partition, record);
                }
            }
            LogWhat::HandlerEnd { group, member, partition, offset } => {
                self.handler_stop(group, *member, *partition);
                if let Some((at, ident)) = self.current.remove(&(group.clone(), *member, *partition)) {
                    if at == *offset && group == GROUP_ALO {
                        self.alo_done.insert((*partition, at, ident));
                    }
                }
            }
            LogWhat::Crash { group, member, partition, .. } => {
                self.handler_stop(group, *member, *partition);
                self.current.remove(&(group.clone(), *member, *partition));
                self.rebalanced(group);
            }
            LogWhat::Committed { group, partition, offset } => {
                let key = (group.clone(), *partition);
                if let Some(&(before, epoch)) = self.committed.get(&key) {
                    if *offset < before && epoch == self.loss_epoch {
                        self.violation(
                            LogPromise::CommitsMonotonic,
                            format!(
                                "group {group} committed {offset} on partition {partition} after {before}"
                            ),
                        );
                    }
                }
                self.committed.insert(key, (*offset, self.loss_epoch));
            }
        }
    }

    fn acked(&mut self, seq: u64, partition: u32, offset: u64) {
        if !self.partition_ok(partition) {
            return;
        }
        let p = partition as usize;
        let next = self.next[p];
        if offset < next {
            self.violation(
                LogPromise::PartitionOrder,
                format!("v{seq} acked at offset {offset} of partition {partition}, below its end {next}"),
            );
        } else if offset > next {
            self.violation(
                LogPromise::DenseOffsets,
                format!("v{seq} acked at offset {offset} of partition {partition}: offsets {next}..{offset} skipped"),
            );
        }
        self.next[p] = self.next[p].max(offset + 1);
        let Some((key, tombstone)) = self.appends.get(&seq).cloned() else {
            self.violation(LogPromise::OnlyAppended, format!("an ack for v{seq}, never appended"));
            return;
        };
        let ident = if tombstone {
            Ident { seq: None, key: Some(key.clone()), tombstone: true }
        } else {
            Ident { seq: Some(seq), key: None, tombstone: false }
        };
        if let Some(&before) = self.key_partition.get(&key) {
            if before != partition {
                self.violation(
                    LogPromise::PartitionOrder,
                    format!(
                        "v{seq} with key {key} went to partition {partition}, its key's records to {before}"
                    ),
                );
            }
        }
        self.key_partition.insert(key.clone(), partition);
        self.ever[p].entry(offset).or_default().push(ident.clone());
        self.model[p].insert(offset, Entry { ident, key });
    }

    /// The broker opened the directory: what recovery found against what was acked.
    fn opened(&mut self, partitions: &[(u64, u64)]) {
        self.stopped();
        self.last_handled.clear();
        let may_lose = self.power_loss && !self.always;
        if may_lose {
            self.loss_epoch += 1;
        }
        if partitions.len() != self.model.len() {
            self.violation(
                LogPromise::Available,
                format!("the log reopened with {} partitions, not {}", partitions.len(), self.model.len()),
            );
            return;
        }
        for (p, &(start, end)) in partitions.iter().enumerate() {
            let next = self.next[p];
            if end > next {
                self.violation(
                    LogPromise::OnlyAppended,
                    format!(
                        "recovery ended partition {p} at {end}, past its last acked offset {}",
                        next as i64 - 1
                    ),
                );
            } else if end < next && !may_lose {
                let why = if self.power_loss { "a power loss under fsync=always" } else { "a process crash" };
                self.violation(
                    LogPromise::AckedKept,
                    format!("after {why}, recovery ended partition {p} at {end}: acked offsets {end}..{next} lost"),
                );
            }
            self.model[p].retain(|&o, _| o < end);
            self.next[p] = end;
            self.explain_start(p, start);
        }
        self.power_loss = false;
    }

    /// Records below a partition's start: retention deleted them (a delete stream), or they are lost.
    fn explain_start(&mut self, p: usize, start: u64) {
        let below: Vec<u64> = self.model[p].range(..start).map(|(&o, _)| o).collect();
        if below.is_empty() {
            return;
        }
        if self.compacted {
            self.violation(
                LogPromise::AckedKept,
                format!(
                    "partition {p} of a compacted stream starts at {start}: acked offsets {below:?} gone"
                ),
            );
        }
        for o in below {
            self.model[p].remove(&o);
        }
    }

    /// The process stopped: no handler runs any more.
    fn stopped(&mut self) {
        self.running.clear();
        self.current.clear();
    }

    fn rebalanced(&mut self, group: &str) {
        self.last_handled.retain(|(g, _, _), _| g != group);
    }

    /// Whether `seen` at its offset is a record an append wrote there.
    fn appended(&mut self, partition: u32, seen: &Seen, how: &str) -> bool {
        let ident = Ident::of(seen);
        let known = self.ever[partition as usize].get(&seen.offset).is_some_and(|all| all.contains(&ident));
        if !known {
            let acked = match self.ever[partition as usize].get(&seen.offset) {
                Some(all) => all.iter().map(Ident::describe).collect::<Vec<_>>().join(", "),
                None => "nothing".to_owned(),
            };
            self.violation(
                LogPromise::OnlyAppended,
                format!(
                    "{how} {} at offset {} of partition {partition}, where {acked} was acked",
                    ident.describe(),
                    seen.offset
                ),
            );
        }
        known
    }

    fn read(&mut self, partition: u32, from: u64, upto: u64, records: &[Seen]) {
        let p = partition as usize;
        let mut previous: Option<u64> = None;
        for r in records {
            if previous.is_some_and(|o| r.offset <= o) || r.offset < from {
                self.violation(
                    LogPromise::PartitionOrder,
                    format!(
                        "a read of partition {partition} returned offset {} after {previous:?}",
                        r.offset
                    ),
                );
            }
            let expected = previous.map_or(from, |o| o + 1);
            if !self.compacted && r.offset != expected {
                self.violation(
                    LogPromise::DenseOffsets,
                    format!(
                        "a read of partition {partition} returned offset {} where {expected} was due",
                        r.offset
                    ),
                );
            }
            previous = Some(r.offset);
            self.appended(partition, r, "a read returned");
        }
        self.explain_start(p, from);
        // Every acked record in the range read must be there, or (compacted) replaced by a later one.
        let returned: BTreeSet<u64> = records.iter().map(|r| r.offset).collect();
        let missing: Vec<(u64, Entry)> = self.model[p]
            .range(from..upto)
            .filter(|(o, _)| !returned.contains(o))
            .map(|(&o, e)| (o, e.clone()))
            .collect();
        for (offset, entry) in missing {
            let replaced =
                self.compacted && self.model[p].range(offset + 1..).any(|(_, later)| later.key == entry.key);
            if !replaced {
                self.violation(
                    LogPromise::AckedKept,
                    format!(
                        "{} (key {}) acked at offset {offset} of partition {partition} is missing",
                        entry.ident.describe(),
                        entry.key
                    ),
                );
            }
            self.model[p].remove(&offset);
        }
    }

    fn final_read(&mut self, partition: u32, start: u64, end: u64, records: &[Seen]) {
        let p = partition as usize;
        let next = self.next[p];
        if end > next {
            self.violation(
                LogPromise::OnlyAppended,
                format!(
                    "partition {partition} ends at {end}, past its last acked offset {}",
                    next as i64 - 1
                ),
            );
        } else if end < next {
            self.violation(
                LogPromise::AckedKept,
                format!("partition {partition} ends at {end}: acked offsets {end}..{next} lost"),
            );
        }
        self.read(partition, start, end.max(next), records);
        for r in records {
            let done = self.alo_done.contains(&(partition, r.offset, Ident::of(r)));
            if !done {
                self.violation(
                    LogPromise::AtLeastOnce,
                    format!(
                        "group {GROUP_ALO} never finished {} at offset {} of partition {partition}",
                        Ident::of(r).describe(),
                        r.offset
                    ),
                );
            }
        }
    }

    fn handler_start(&mut self, group: &str, member: u32, partition: u32, record: &Seen) {
        let slot = (group.to_owned(), partition);
        if let Some(&other) = self.running.get(&slot) {
            if other != member {
                self.violation(
                    LogPromise::OneOwner,
                    format!(
                        "member {member} of {group} started offset {} of partition {partition} while member {other} \
                         was handling a record there",
                        record.offset
                    ),
                );
            }
        }
        self.running.insert(slot, member);
        let key = (group.to_owned(), member, partition);
        if let Some(&last) = self.last_handled.get(&key) {
            if record.offset <= last {
                self.violation(
                    LogPromise::PartitionOrder,
                    format!(
                        "member {member} of {group} handled offset {} of partition {partition} after offset {last}",
                        record.offset
                    ),
                );
            }
        }
        self.last_handled.insert(key.clone(), record.offset);
        self.appended(partition, record, "a handler got");
        let ident = Ident::of(record);
        self.current.insert(key, (record.offset, ident.clone()));
        if group == GROUP_AMO {
            let id = (partition, record.offset, ident);
            if let Some(&epoch) = self.amo_started.get(&id) {
                if epoch == self.loss_epoch {
                    self.violation(
                        LogPromise::AtMostOnce,
                        format!(
                            "group {group} handled {} at offset {} of partition {partition} twice",
                            id.2.describe(),
                            record.offset
                        ),
                    );
                }
            }
            self.amo_started.insert(id, self.loss_epoch);
        }
    }

    fn handler_stop(&mut self, group: &str, member: u32, partition: u32) {
        let slot = (group.to_owned(), partition);
        if self.running.get(&slot) == Some(&member) {
            self.running.remove(&slot);
        }
    }
}
