//! Counters: what every topic and queue did with every message, so nothing is lost silently.
//!
//! # Conservation
//! For every queue, at any quiet moment:
//!
//! `enqueued = acked + dead_lettered + dropped.total() + ready + scheduled + in_flight`
//!
//! where `acked` counts, for at-most-once queues, the deliveries whose handler finished. Every copy a
//! topic routes is `enqueued` by exactly one queue, so the sums over queues balance the topics'
//! `routed` counts plus the dead letters that queues pass to each other (refused `reject-publish-dlx`
//! publishes included). Deleted queue incarnations count too: a queue deleted and declared again
//! under the same name is two sets of counters, the first in [`Stats::deleted_queues`].
//!
//! For every topic, every publish ends one way:
//!
//! `published = routed_publishes + refused_publishes + unroutable`
//!
//! (routed to at least one queue; refused by every target; or reaching no live queue, whether or not
//! the alternate queue took it).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::QueueId;

/// Why a message left a queue without being acked or dead-lettered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Pushed out of a full queue (drop-head without a dead-letter queue), or refused as a dead letter by
    /// a full dead-letter queue.
    pub overflow: u64,
    /// Its time to live ran out, without a dead-letter queue.
    pub expired: u64,
    /// Rejected without a dead-letter queue.
    pub rejected: u64,
    /// Delivered more often than the delivery limit, without a dead-letter queue.
    pub delivery_limit: u64,
    /// Handed to an at-most-once subscriber that died, or left, before handling it.
    pub lost_at_most_once: u64,
    /// Still in the queue when the queue was deleted (expiry, auto-delete, explicit delete), or
    /// dead-lettered to a queue that had been deleted.
    pub deleted: u64,
    /// Dead-lettering would have closed a cycle without a rejection.
    pub dead_letter_cycle: u64,
    /// Lost with the queue's in-memory state when the queue actor restarted (simulation faults).
    pub queue_restart: u64,
    /// At-most-once deliveries dropped on the way to the subscriber by an injected fault.
    pub fault: u64,
    /// Publishes refused under `reject-publish-dlx` whose dead-letter queue had been deleted (the
    /// publisher's confirm said refused; not part of this queue's conservation, as they never entered).
    pub refused_dead_letter_lost: u64,
}

impl Dropped {
    /// All drops of messages that were in the queue (`refused_dead_letter_lost` never were).
    pub fn total(&self) -> u64 {
        self.overflow
            + self.expired
            + self.rejected
            + self.delivery_limit
            + self.lost_at_most_once
            + self.deleted
            + self.dead_letter_cycle
            + self.queue_restart
            + self.fault
    }
}

/// A queue's counters, a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Copies accepted into the queue (from topics, and dead letters from other queues).
    pub enqueued: u64,
    /// Publishes refused under `reject-publish`/`reject-publish-dlx` or with a full mailbox (never
    /// enqueued here; the publisher's confirm named this queue).
    pub refused: u64,
    /// Deliveries handed to subscribers, redeliveries included.
    pub delivered: u64,
    /// Deliveries that were redeliveries.
    pub redelivered: u64,
    /// Settled by an ack (at-least-once) or by the handler finishing (at-most-once).
    pub acked: u64,
    /// Nacks and rejects received.
    pub nacked: u64,
    /// Passed to the dead-letter queue.
    pub dead_lettered: u64,
    /// Publishes refused under `reject-publish-dlx` and passed straight to the dead-letter queue.
    pub refused_dead_lettered: u64,
    /// Left without an ack, by reason.
    pub dropped: Dropped,
    /// Waiting for a subscriber.
    pub ready: u64,
    /// Waiting for their due time (delayed publishes, retries with a delay); ready when due.
    pub scheduled: u64,
    /// Handed out, not yet settled.
    pub in_flight: u64,
    /// Subscribers now.
    pub consumers: u64,
    /// Handler panics among this queue's subscribers (each one a restart).
    pub restarts: u64,
    /// Deliveries whose payload a subscriber could not decode into its type: rejected (dead-lettered
    /// or dropped as `rejected`). A publisher and a subscriber that disagree on the message type.
    pub undecodable: u64,
    /// Messages a durable queue took back from its journal when the broker started (counted in
    /// `enqueued` too).
    pub recovered: u64,
    /// Bytes of a durable queue's journal (0 for other queues).
    pub journal_bytes: u64,
    /// Whether the queue has been deleted (its counters are final).
    pub deleted: bool,
}

impl QueueStats {
    /// Whether `enqueued` equals everything that left plus everything still held.
    pub fn conserved(&self) -> bool {
        self.enqueued
            == self.acked
                + self.dead_lettered
                + self.dropped.total()
                + self.ready
                + self.scheduled
                + self.in_flight
    }

    /// Adds `other`'s counters to these (for totals over several queues).
    pub fn add(&mut self, other: &QueueStats) {
        self.enqueued += other.enqueued;
        self.refused += other.refused;
        self.delivered += other.delivered;
        self.redelivered += other.redelivered;
        self.acked += other.acked;
        self.nacked += other.nacked;
        self.dead_lettered += other.dead_lettered;
        self.refused_dead_lettered += other.refused_dead_lettered;
        self.dropped.add(&other.dropped);
        self.ready += other.ready;
        self.scheduled += other.scheduled;
        self.in_flight += other.in_flight;
        self.consumers += other.consumers;
        self.restarts += other.restarts;
        self.undecodable += other.undecodable;
        self.recovered += other.recovered;
        self.journal_bytes += other.journal_bytes;
        self.deleted |= other.deleted;
    }
}

impl Dropped {
    fn add(&mut self, other: &Dropped) {
        self.overflow += other.overflow;
        self.expired += other.expired;
        self.rejected += other.rejected;
        self.delivery_limit += other.delivery_limit;
        self.lost_at_most_once += other.lost_at_most_once;
        self.deleted += other.deleted;
        self.dead_letter_cycle += other.dead_letter_cycle;
        self.queue_restart += other.queue_restart;
        self.fault += other.fault;
        self.refused_dead_letter_lost += other.refused_dead_letter_lost;
    }
}

/// A topic's counters, a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// Publishes.
    pub published: u64,
    /// Copies accepted by queues (one per queue per publish), the alternate queue included.
    pub routed: u64,
    /// Publishes that at least one queue accepted.
    pub routed_publishes: u64,
    /// Publishes that every target queue refused.
    pub refused_publishes: u64,
    /// Publishes that reached no live queue: no binding matched, or every queue they matched was
    /// deleted (or shut down) as they were routed; whether or not an alternate queue took them.
    pub unroutable: u64,
    /// Unroutable publishes taken by the alternate queue.
    pub alternate: u64,
    /// Unroutable publishes dropped, for want of an alternate queue.
    pub dropped_unroutable: u64,
    /// Copies refused by a queue (reject-publish, or a full mailbox under `try_publish`).
    pub refused: u64,
    /// Bindings now.
    pub bindings: u64,
    /// Deliveries of this topic's messages whose payload a subscriber could not decode into its
    /// type (each queue copy counts; the queues' [`QueueStats::undecodable`] count them too).
    pub undecodable: u64,
}

impl TopicStats {
    /// Whether every publish ended one way: routed, refused, or unroutable.
    pub fn conserved(&self) -> bool {
        self.published == self.routed_publishes + self.refused_publishes + self.unroutable
    }
}

/// The final counters of a deleted queue incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedQueue {
    /// Its name (a live queue may have it now).
    pub name: String,
    /// Its incarnation: ids are never reused within a broker.
    pub id: QueueId,
    /// Its final counters.
    pub stats: QueueStats,
}

/// A stream's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    /// Records appended (directly and through topics).
    pub appended: u64,
    /// Appends the log refused or failed (too large, a full disk, a failed sync): the appender was
    /// told, and nothing of them stays.
    pub append_errors: u64,
    /// Each partition's first kept offset, end (the next offset) and bytes.
    pub partitions: BTreeMap<u32, PartitionStats>,
    /// Consumer groups by name: the live ones, and those with committed offsets only.
    pub groups: BTreeMap<String, GroupStats>,
}

/// One partition of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    /// The first offset kept.
    pub start: u64,
    /// The next offset (the high watermark).
    pub end: u64,
    /// Bytes of its segments.
    pub bytes: u64,
    /// Segments.
    pub segments: u64,
    /// Offsets below this are on disk (an `fdatasync` covered them); with a data directory and
    /// `fsync = "interval"`, what a machine crash would keep.
    pub synced: u64,
}

/// A consumer group on one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    /// Members now.
    pub members: u32,
    /// Per partition: committed offset, end, lag and owner.
    pub partitions: BTreeMap<u32, GroupPartitionStats>,
    /// Records handlers finished (in this process).
    pub processed: u64,
    /// Members whose handler panicked (each left the group).
    pub crashed: u64,
    /// Records retention removed before the group read them.
    pub skipped_by_retention: u64,
    /// Rebalances (joins, leaves, crashes).
    pub rebalances: u64,
    /// Commits the log failed (each is retried by the next commit).
    pub commit_errors: u64,
}

impl GroupStats {
    /// Records not yet committed, over every partition.
    pub fn lag(&self) -> u64 {
        self.partitions.values().map(|p| p.lag).sum()
    }
}

/// A group's view of one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPartitionStats {
    /// The committed offset (the next to read), if the group committed one.
    pub committed: Option<u64>,
    /// The partition's end.
    pub end: u64,
    /// Records from the committed offset (or the partition's start) to the end.
    pub lag: u64,
    /// The member reading it now.
    pub owner: Option<u64>,
}

/// A snapshot of every topic and queue, deleted queue incarnations included.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicStats>,
    /// Live queues by name (at shutdown: the queues as they were stopped).
    pub queues: BTreeMap<String, QueueStats>,
    /// Deleted queue incarnations, oldest first: the newest
    /// [`DELETED_QUEUES_KEPT_MAX`](crate::DELETED_QUEUES_KEPT_MAX).
    pub deleted_queues: Vec<DeletedQueue>,
    /// The summed counters of older deleted incarnations.
    pub deleted_folded: QueueStats,
    /// Streams by name.
    pub streams: BTreeMap<String, StreamStats>,
}

impl Stats {
    /// Every queue incarnation's counters: the live ones, the deleted ones, and the folded total.
    pub fn all_queues(&self) -> impl Iterator<Item = &QueueStats> {
        self.queues.values().chain(self.deleted_queues.iter().map(|d| &d.stats)).chain([&self.deleted_folded])
    }

    /// The counters of the queue named `name`: the live one, else its latest deleted incarnation.
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues
            .get(name)
            .or_else(|| self.deleted_queues.iter().rev().find(|d| d.name == name).map(|d| &d.stats))
    }

    /// Whether every queue incarnation conserves its messages, every topic accounts for every
    /// publish, and the copies the topics routed plus the dead letters queues passed on equal what
    /// the queues enqueued.
    pub fn conserved(&self) -> bool {
        let routed: u64 = self.topics.values().map(|t| t.routed).sum();
        let dead: u64 = self.all_queues().map(|q| q.dead_lettered + q.refused_dead_lettered).sum();
        // Messages durable queues took back from their journals came from an earlier process.
        let enqueued: u64 = self.all_queues().map(|q| q.enqueued - q.recovered).sum();
        self.all_queues().all(QueueStats::conserved)
            && self.topics.values().all(TopicStats::conserved)
            && routed + dead == enqueued
    }
}

const TABLE_HEADER: [&str; 10] =
    ["queue", "enqueued", "delivered", "redeliv", "acked", "dead", "dropped", "ready", "unack", "cons"];

fn table_row(f: &mut fmt::Formatter<'_>, name: &str, q: &QueueStats) -> fmt::Result {
    writeln!(
        f,
        "{:<20} {:>9} {:>9} {:>7} {:>9} {:>6} {:>7} {:>6} {:>6} {:>5}",
        name,
        q.enqueued,
        q.delivered,
        q.redelivered,
        q.acked,
        q.dead_lettered,
        q.dropped.total(),
        q.ready,
        q.in_flight,
        q.consumers
    )
}

/// One line of counters: `enqueued 3, delivered 3, acked 3, ...`.
impl fmt::Display for QueueStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "enqueued {}, delivered {} (redelivered {}), acked {}, dead-lettered {}, dropped {}, ready {}, \
             unacked {}, consumers {}",
            self.enqueued,
            self.delivered,
            self.redelivered,
            self.acked,
            self.dead_lettered,
            self.dropped.total(),
            self.ready,
            self.in_flight,
            self.consumers
        )?;
        if self.scheduled > 0 {
            write!(f, ", scheduled {}", self.scheduled)?;
        }
        Ok(())
    }
}

/// A table with a row per queue (deleted incarnations marked), then a line per topic.
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = TABLE_HEADER;
        writeln!(
            f,
            "{:<20} {:>9} {:>9} {:>7} {:>9} {:>6} {:>7} {:>6} {:>6} {:>5}",
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]
        )?;
        for (name, q) in &self.queues {
            table_row(f, name, q)?;
        }
        for d in &self.deleted_queues {
            table_row(f, &format!("{} (deleted #{})", d.name, d.id.0), &d.stats)?;
        }
        for (name, t) in &self.topics {
            writeln!(
                f,
                "topic {name}: published {}, routed copies {}, unroutable {} (to alternate {})",
                t.published, t.routed, t.unroutable, t.alternate
            )?;
        }
        for (name, s) in &self.streams {
            let records: u64 = s.partitions.values().map(|p| p.end - p.start).sum();
            let bytes: u64 = s.partitions.values().map(|p| p.bytes).sum();
            writeln!(
                f,
                "stream {name}: {} partitions, appended {}, append errors {}, {records} records kept, {bytes} bytes",
                s.partitions.len(),
                s.appended,
                s.append_errors
            )?;
            for (group, g) in &s.groups {
                writeln!(
                    f,
                    "  group {group}: {} members, processed {}, lag {}, crashed {}, skipped by retention {}",
                    g.members,
                    g.processed,
                    g.lag(),
                    g.crashed,
                    g.skipped_by_retention
                )?;
            }
        }
        Ok(())
    }
}
