//! A durable queue's journal: a compacted stream of the storage engine (one partition, named
//! [`JOURNAL_PREFIX`] + the queue's name) from which the queue is rebuilt when the broker starts.
//!
//! Every message the queue holds has a *slot*, a number unique in the journal (it is also the
//! message's position in the queue, so that replay and requeues keep FIFO order). Records are keyed
//! by slot, so that compaction keeps the last of each:
//! - `e` + slot (big-endian u64): the enqueue record, MessagePack of [`EnqueueRecord`] (message id,
//!   routing key, payload bytes, death history, deliveries so far), appended before the copy enters
//!   the queue's inbox; the publisher confirms once it is acked under the queue's fsync policy;
//! - `d` + slot: the delivery count (u32, little-endian) after each at-least-once delivery, a record
//!   of its own so that a delivery costs a few dozen bytes, not a copy of the payload; after a retry
//!   with a delay, the count followed by the due time (i64, little-endian, milliseconds since the
//!   Unix epoch), so that a restart keeps the retry waiting;
//! - tombstones of both keys when the message leaves the queue (ack, reject, overflow, TTL, delivery
//!   limit, dead-lettering once the copy is in its target). They are not awaited: a tombstone lost to
//!   a crash brings the message back once more, which at-least-once allows.
//!
//! Replay reads the journal in offset order and keeps, per slot, the last enqueue and delivered
//! records that no tombstone followed.
//!
//! # Compaction
//! [`Journal::compact`] closes the active segment, compacts every segment and removes those left
//! empty (`Partition::compact_all`), so that afterwards the journal holds the live records only
//! (tombstones are kept for 0 ms, plus those of the current millisecond). It runs once the journal
//! has grown by its size after the last compaction plus one segment, so the journal stays within
//! twice its live records at the last compaction plus one segment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tubemail_log::{Append, Cleanup, Fsync, LogDir, LogError, Maintenance, Stream, StreamConfig};

use crate::clock::Clock;
use crate::ids::MessageId;
use crate::message::{Death, Message, Payload};

pub use crate::topology::{DURABLE_NAME_MAX, JOURNAL_PREFIX};

/// A journal's segments: compaction keeps a journal within twice its live records plus one of them.
pub const JOURNAL_SEGMENT_BYTES: u64 = 4 << 20;
/// Records in one append of delivered records or tombstones, at most (the log's batch limit).
const JOURNAL_BATCH_MAX: usize = tubemail_log::partition::BATCH_RECORDS_MAX;

/// The slot of a message that has none: not journaled.
pub(crate) const NO_SLOT: u64 = u64::MAX;

/// An enqueue record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EnqueueRecord {
    pub(crate) id: u64,
    pub(crate) key: String,
    pub(crate) payload: Bytes,
    pub(crate) deaths: Vec<Death>,
    pub(crate) deliveries: u32,
    /// A delayed publish's due time, in milliseconds since the Unix epoch (absent in records
    /// written before delays existed).
    #[serde(default)]
    pub(crate) due_ms: Option<i64>,
}

/// A message taken back from a journal.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub(crate) slot: u64,
    pub(crate) msg: Message,
    /// Deliveries so far (its last delivered record, or its enqueue record's count).
    pub(crate) deliveries: u32,
    /// When its time to live started, in milliseconds since the Unix epoch: its enqueue, or its
    /// delayed publish's due time.
    pub(crate) ttl_from_ms: i64,
    /// Not to be delivered before this, in milliseconds since the Unix epoch: a delayed publish or a
    /// retry with a delay (the later of the two).
    pub(crate) due_ms: Option<i64>,
}

/// What replaying a journal found.
#[derive(Debug, Default)]
pub(crate) struct Replay {
    /// In slot (queue) order.
    pub(crate) messages: Vec<Replayed>,
    /// The highest message id in the journal.
    pub(crate) max_id: Option<MessageId>,
    /// The slot after the highest the journal mentions.
    pub(crate) next_slot: u64,
    /// Slots with a delivered record and no enqueue record (a crash tore the tombstones of a
    /// settlement apart): tombstoned at open, so that compaction removes them.
    pub(crate) orphans: Vec<u64>,
}

fn key(kind: u8, slot: u64) -> [u8; 9] {
    let mut k = [kind; 9];
    k[1..].copy_from_slice(&slot.to_be_bytes());
    k
}

fn parse_key(k: &[u8]) -> Option<(u8, u64)> {
    let (&kind, slot) = k.split_first()?;
    Some((kind, u64::from_be_bytes(slot.try_into().ok()?)))
}

const ENQUEUED: u8 = b'e';
const DELIVERED: u8 = b'd';

/// The journal's stream settings: compacted, tombstones dropped at the next compaction.
pub(crate) fn journal_config(fsync: Fsync) -> StreamConfig {
    StreamConfig {
        partitions: 1,
        cleanup: Cleanup::Compact,
        delete_retention_ms: 0,
        segment_bytes: JOURNAL_SEGMENT_BYTES,
        max_record_bytes: tubemail_log::config::RECORD_BYTES_LIMIT,
        fsync,
        ..StreamConfig::default()
    }
}

/// A durable queue's journal.
pub(crate) struct Journal {
    queue: Arc<str>,
    log: Stream,
    /// The stream's folder, removed when the queue is deleted.
    dir: Option<PathBuf>,
    next_slot: AtomicU64,
    clock: Clock,
    /// Bytes appended since the last compaction.
    grown: AtomicU64,
    /// The journal's bytes after the last compaction.
    compacted_bytes: AtomicU64,
    compacting: AtomicBool,
    deleted: AtomicBool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens (or creates) the journal of `queue` in `dir` and replays it.
    pub(crate) fn open(
        dir: &LogDir,
        queue: &str,
        fsync: Fsync,
        clock: Clock,
    ) -> Result<(Self, Replay), LogError> {
        let name = format!("{JOURNAL_PREFIX}{queue}");
        let log = dir.stream(&name, journal_config(fsync))?;
        let replay = replay(&log)?;
        let orphans: Vec<[u8; 9]> = replay.orphans.iter().map(|&slot| key(DELIVERED, slot)).collect();
        let now = clock.now_ms();
        let tombstones: Vec<Append<'_>> =
            orphans.iter().map(|k| Append { key: Some(k), value: None, timestamp: now }).collect();
        for chunk in tombstones.chunks(JOURNAL_BATCH_MAX) {
            log.partition(0)?.append(chunk)?;
        }
        let bytes = log.partition(0)?.info().bytes;
        let journal = Self {
            queue: queue.into(),
            dir: dir.path().map(|p| p.join("streams").join(&name)),
            log,
            next_slot: AtomicU64::new(replay.next_slot),
            clock,
            grown: AtomicU64::new(0),
            compacted_bytes: AtomicU64::new(bytes),
            compacting: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        };
        Ok((journal, replay))
    }

    /// The journal's fsync policy.
    pub(crate) fn fsync(&self) -> Fsync {
        self.log.config().fsync
    }

    /// The queue's name.
    pub(crate) fn queue(&self) -> &Arc<str> {
        &self.queue
    }

    /// Whether the queue was deleted (its journal with it).
    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Appends the enqueue record of `msg` (its payload as `payload`), due `delay` from now when it
    /// has one; returns its slot and offset (await [`Journal::acked`] for the fsync policy's promise).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        msg: &Message,
        payload: &Bytes,
        delay: Option<std::time::Duration>,
    ) -> Result<(u64, u64), LogError> {
        let record = EnqueueRecord {
            id: msg.id.0,
            key: msg.key.to_string(),
            payload: payload.clone(),
            deaths: msg.deaths().to_vec(),
            deliveries: 0,
            due_ms: delay.map(|d| self.ms_after(d)),
        };
        let value = rmp_serde::to_vec(&record).expect("an enqueue record encodes");
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let k = key(ENQUEUED, slot);
        let appended =
            self.append(&[Append { key: Some(&k), value: Some(&value), timestamp: self.now() }])?;
        Ok((slot, appended))
    }

    /// Appends the enqueue record of a message whose payload may still need encoding.
    pub(crate) fn enqueue_payload(
        self: &Arc<Self>,
        msg: &Message,
        delay: Option<std::time::Duration>,
    ) -> Result<(u64, u64), String> {
        let bytes = msg.payload.to_bytes().map_err(|e| e.to_string())?;
        self.enqueue(msg, &bytes, delay).map_err(|e| e.to_string())
    }

    /// The wall clock's milliseconds `after` from now.
    fn ms_after(&self, after: std::time::Duration) -> i64 {
        self.now().saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX))
    }

    /// Records retries with a delay: `(slot, delivery count, due after)`.
    pub(crate) fn retried(self: &Arc<Self>, retries: &[(u64, u32, std::time::Duration)]) {
        let values: Vec<[u8; 12]> = retries
            .iter()
            .map(|&(_, n, after)| {
                let mut v = [0; 12];
                v[..4].copy_from_slice(&n.to_le_bytes());
                v[4..].copy_from_slice(&self.ms_after(after).to_le_bytes());
                v
            })
            .collect();
        self.append_delivered(retries.iter().map(|&(slot, _, _)| slot), &values, "retry");
    }

    /// Appends a delivered record per slot, with its value.
    fn append_delivered<V: AsRef<[u8]>>(
        self: &Arc<Self>,
        slots: impl Iterator<Item = u64>,
        values: &[V],
        what: &str,
    ) {
        let keys: Vec<[u8; 9]> = slots.map(|slot| key(DELIVERED, slot)).collect();
        let now = self.now();
        let records: Vec<Append<'_>> = keys
            .iter()
            .zip(values)
            .map(|(k, v)| Append { key: Some(k), value: Some(v.as_ref()), timestamp: now })
            .collect();
        self.append_all(&records, what);
    }

    /// Resolves once the record at `offset` is acked under the journal's fsync policy.
    pub(crate) async fn acked(&self, offset: u64) -> Result<(), LogError> {
        self.log.partition(0)?.acked(offset).await
    }

    /// Records deliveries: `(slot, delivery count)`.
    pub(crate) fn delivered(self: &Arc<Self>, deliveries: &[(u64, u32)]) {
        let values: Vec<[u8; 4]> = deliveries.iter().map(|&(_, n)| n.to_le_bytes()).collect();
        self.append_delivered(deliveries.iter().map(|&(slot, _)| slot), &values, "delivered");
    }

    /// Tombstones the messages that left the queue: `(slot, whether it was delivered)`.
    pub(crate) fn settled(self: &Arc<Self>, left: &[(u64, bool)]) {
        let mut keys = Vec::with_capacity(left.len() * 2);
        for &(slot, delivered) in left.iter().filter(|(slot, _)| *slot != NO_SLOT) {
            keys.push(key(ENQUEUED, slot));
            if delivered {
                keys.push(key(DELIVERED, slot));
            }
        }
        let now = self.now();
        let records: Vec<Append<'_>> =
            keys.iter().map(|k| Append { key: Some(k), value: None, timestamp: now }).collect();
        self.append_all(&records, "tombstone");
    }

    fn append_all(self: &Arc<Self>, records: &[Append<'_>], what: &str) {
        for chunk in records.chunks(JOURNAL_BATCH_MAX) {
            if chunk.is_empty() || self.is_deleted() {
                return;
            }
            if let Err(e) = self.append(chunk) {
                // A lost delivered record undercounts deliveries after a restart; a lost tombstone
                // redelivers the message once more (at least once). Neither loses a message.
                tracing::warn!(queue = %self.queue, error = %e, "the journal refused a {what} record");
            }
        }
    }

    /// Appends records and returns the first offset; starts a compaction when the journal has grown
    /// past its bound.
    fn append(self: &Arc<Self>, records: &[Append<'_>]) -> Result<u64, LogError> {
        let bytes: usize = records.iter().map(|r| tubemail_log::record::frame_len(r.key, r.value)).sum();
        let (first, _) = self.log.partition(0)?.append(records)?;
        let grown = self.grown.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        if grown > self.compacted_bytes.load(Ordering::Relaxed) + JOURNAL_SEGMENT_BYTES {
            self.compact_soon();
        }
        Ok(first)
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Compacts on tokio's blocking pool (or here, outside a runtime), once at a time.
    fn compact_soon(self: &Arc<Self>) {
        if self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let journal = self.clone();
        let run = move || {
            if let Err(e) = journal.compact() {
                tracing::error!(queue = %journal.queue, error = %e, "compacting the journal failed");
            }
            journal.compacting.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => run(),
        }
    }

    /// Compacts the journal now: afterwards it holds its live records only.
    pub(crate) fn compact(&self) -> Result<Maintenance, LogError> {
        let partition = self.log.partition(0)?;
        let m = partition.compact_all(self.now())?;
        self.grown.store(0, Ordering::Relaxed);
        self.compacted_bytes.store(partition.info().bytes, Ordering::Relaxed);
        Ok(m)
    }

    /// The journal's bytes now.
    pub(crate) fn bytes(&self) -> u64 {
        self.log.partition(0).map_or(0, |p| p.info().bytes)
    }

    /// Syncs and checkpoints the journal: the clean close (at shutdown). The journal takes nothing
    /// afterwards, and dropping it later touches no file (another broker may own them by then).
    pub(crate) fn close(&self) {
        if let Err(e) = self.log.close() {
            tracing::error!(queue = %self.queue, error = %e, "closing the journal failed");
        }
        self.log.abandon();
    }

    /// The queue is deleted: its journal goes with it.
    pub(crate) fn delete(&self) {
        if self.deleted.swap(true, Ordering::AcqRel) {
            return;
        }
        self.log.abandon();
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::error!(queue = %self.queue, error = %e, "removing the journal failed");
            }
        }
    }
}

/// Reads a journal: the last enqueue and delivered records of each slot that no tombstone followed.
pub(crate) fn replay(log: &Stream) -> Result<Replay, LogError> {
    let p = log.partition(0)?;
    let mut enqueued: BTreeMap<u64, (EnqueueRecord, i64)> = BTreeMap::new();
    let mut delivered: BTreeMap<u64, (u32, Option<i64>)> = BTreeMap::new();
    let mut next_slot = 0;
    p.for_each_record(16 << 20, |r| {
        let Some((kind, slot)) = r.key.as_deref().and_then(parse_key) else { return };
        next_slot = next_slot.max(slot.saturating_add(1));
        match (kind, r.value) {
            (ENQUEUED, Some(v)) => match rmp_serde::from_slice::<EnqueueRecord>(&v) {
                Ok(e) => {
                    enqueued.insert(slot, (e, r.timestamp));
                }
                Err(e) => tracing::error!(slot, error = %e, "an enqueue record does not decode"),
            },
            (ENQUEUED, None) => {
                enqueued.remove(&slot);
            }
            (DELIVERED, Some(v)) => {
                let count = v.get(..4).and_then(|n| <[u8; 4]>::try_from(n).ok()).map(u32::from_le_bytes);
                let due = v.get(4..12).and_then(|d| <[u8; 8]>::try_from(d).ok()).map(i64::from_le_bytes);
                if let Some(n) = count {
                    delivered.insert(slot, (n, due));
                }
            }
            (DELIVERED, None) => {
                delivered.remove(&slot);
            }
            _ => {}
        }
    })?;
    let max_id = enqueued.values().map(|(e, _)| MessageId(e.id)).max();
    let orphans = delivered.keys().filter(|slot| !enqueued.contains_key(slot)).copied().collect();
    let messages = enqueued
        .into_iter()
        .map(|(slot, (e, enqueued_ms))| {
            let (count, retry_due) = delivered.get(&slot).copied().unwrap_or((0, None));
            let deliveries = count.max(e.deliveries);
            let due_ms = e.due_ms.max(retry_due);
            let ttl_from_ms = e.due_ms.unwrap_or(enqueued_ms);
            let msg = Message {
                id: MessageId(e.id),
                key: e.key.into(),
                payload: Payload::Bytes(e.payload),
                deaths: e.deaths.into(),
            };
            Replayed { slot, msg, deliveries, ttl_from_ms, due_ms }
        })
        .collect();
    Ok(Replay { messages, max_id, next_slot, orphans })
}

#[cfg(test)]
mod tests;
