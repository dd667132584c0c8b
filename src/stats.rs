//! Counters: what every topic and queue did with every message, so nothing is lost silently.
//!
//! # Conservation
//! For every queue, at any quiet moment:
//!
//! `enqueued = acked + dead_lettered + dropped.total() + ready + in_flight`
//!
//! where `acked` counts, for at-most-once queues, the deliveries whose handler finished. Every copy a
//! topic routes is `enqueued` by exactly one queue, so the sums over queues balance the topics'
//! `routed` counts plus the dead letters that queues pass to each other (refused `reject-publish-dlx`
//! publishes included).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Handed out, not yet settled.
    pub in_flight: u64,
    /// Subscribers now.
    pub consumers: u64,
    /// Handler panics among this queue's subscribers (each one a restart).
    pub restarts: u64,
    /// Whether the queue has been deleted (its counters are final).
    pub deleted: bool,
}

impl QueueStats {
    /// Whether `enqueued` equals everything that left plus everything still held.
    pub fn conserved(&self) -> bool {
        self.enqueued == self.acked + self.dead_lettered + self.dropped.total() + self.ready + self.in_flight
    }
}

/// A topic's counters, a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// Publishes.
    pub published: u64,
    /// Copies accepted by queues (one per queue per publish), the alternate queue included.
    pub routed: u64,
    /// Publishes that matched no binding (whether or not an alternate queue took them).
    pub unroutable: u64,
    /// Unroutable publishes taken by the alternate queue.
    pub alternate: u64,
    /// Unroutable publishes dropped, for want of an alternate queue.
    pub dropped_unroutable: u64,
    /// Copies refused by a queue (reject-publish, or a full mailbox under `try_publish`).
    pub refused: u64,
    /// Bindings now.
    pub bindings: u64,
}

/// A snapshot of every topic and queue, deleted queues included, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicStats>,
    /// Queues by name.
    pub queues: BTreeMap<String, QueueStats>,
}

impl Stats {
    /// Whether every queue conserves its messages, and the copies the topics routed plus the dead
    /// letters queues passed on equal what the queues enqueued.
    pub fn conserved(&self) -> bool {
        let routed: u64 = self.topics.values().map(|t| t.routed).sum();
        let dead: u64 = self.queues.values().map(|q| q.dead_lettered + q.refused_dead_lettered).sum();
        let enqueued: u64 = self.queues.values().map(|q| q.enqueued).sum();
        self.queues.values().all(QueueStats::conserved) && routed + dead == enqueued
    }
}
