//! The queue as a plain state machine: enqueue, dispatch, settle, requeue, expire, dead-letter.
//!
//! No actix, no async, no clock: the caller passes `now`. The actor in `actor.rs` turns messages into
//! calls here and carries out the [`Effect`]s; the property tests drive it directly.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ids::{ConsumerId, DeliveryTag, MessageId};
use crate::message::{DeathReason, Message};
use crate::probe::{self, DropReason, ProbeRef, RedeliverReason, What};
#[cfg(test)]
pub(crate) use crate::protocol::Delay;
pub(crate) use crate::protocol::{SettleError, SettleOp, Stamp, TopicIndex};
use crate::stats::QueueStats;
use crate::topology::{DeliveryMode, Overflow, QueueSpec};

/// A message waiting in the queue, or in flight to a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) msg: Arc<Message>,
    /// Position in the queue: requeued messages return to it.
    pub(crate) seq: u64,
    pub(crate) expires_at: Expiry,
    /// Deliveries so far (`x-delivery-count`).
    pub(crate) deliveries: u32,
    /// Whether it holds one of the publishers' credits (reject and block policies).
    pub(crate) credited: bool,
    /// The topic it was published to (in what was padding: the entry stays 32 bytes).
    pub(crate) topic: TopicIndex,
}

#[derive(Debug)]
struct Unacked {
    tag: u64,
    deadline: Instant,
    entry: Entry,
}

#[derive(Debug)]
struct Consumer {
    id: ConsumerId,
    epoch: u32,
    prefetch: u32,
    next_tag: u64,
    /// At-least-once: deliveries awaiting settlement, in tag (and so deadline) order.
    unacked: VecDeque<Unacked>,
    /// At-most-once: deliveries handed out whose handler has not reported back.
    outstanding: u32,
    /// Its mailbox refused a delivery; skipped until it settles something.
    blocked: bool,
    /// Unsubscribing: receives nothing more.
    draining: bool,
}

impl Consumer {
    fn new(id: ConsumerId, prefetch: u32) -> Self {
        Consumer {
            id,
            epoch: 0,
            prefetch,
            next_tag: 0,
            unacked: VecDeque::new(),
            outstanding: 0,
            blocked: false,
            draining: false,
        }
    }

    fn in_flight(&self) -> usize {
        self.unacked.len() + self.outstanding as usize
    }
}

/// One delivery handed out by [`QueueState::dispatch`].
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub(crate) consumer: ConsumerId,
    pub(crate) epoch: u32,
    pub(crate) tag: DeliveryTag,
    pub(crate) msg: Arc<Message>,
    pub(crate) delivery_count: u32,
    pub(crate) place: Place,
}

impl Dispatch {
    /// The topic the message was published to.
    pub(crate) fn topic(&self) -> TopicIndex {
        self.place.topic
    }
}

/// Where a dispatched message stood in the queue, to put it back if its delivery fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    pub(crate) seq: u64,
    pub(crate) expires_at: Expiry,
    pub(crate) credited: bool,
    pub(crate) topic: TopicIndex,
}

/// When a message expires, in nanoseconds after its queue started; [`Expiry::NEVER`] without a TTL.
/// Eight bytes where an `Option<Instant>` takes sixteen, in every entry of every queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Expiry(u64);

impl Expiry {
    /// No time to live.
    pub(crate) const NEVER: Expiry = Expiry(u64::MAX);
}

/// Something the actor must carry out on the state's behalf.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Enqueue into the dead-letter queue (the death is already recorded). `refused`: a publish
    /// refused under `reject-publish-dlx`, rather than a message that left the queue. `left`: its
    /// slot in this queue's journal, tombstoned once the copy is in its target (durable queues).
    DeadLetter { msg: Arc<Message>, refused: bool, left: Option<(u64, bool)> },
}

/// What [`QueueState::enqueue`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueued {
    Accepted,
    /// A dead letter arrived at a full queue that does not drop its head; counted as overflow.
    Refused,
}

/// How far a queue restart moves every consumer's epoch: far past the epochs a subscriber reaches by
/// crashing (one each), so that a crash report from before the restart is recognized as stale.
const QUEUE_RESTART_EPOCH_STEP: u32 = 1 << 16;

/// The queue.
#[derive(Debug)]
pub(crate) struct QueueState {
    name: Arc<str>,
    spec: QueueSpec,
    started: Instant,
    ready: VecDeque<Entry>,
    /// Messages not to be delivered before a moment (delayed publishes, retries with a delay), by
    /// that moment and then position; each moves to its place in `ready` when due. Counted with
    /// `ready` against `depth_max`.
    scheduled: BTreeMap<(Instant, u64), Entry>,
    next_seq: u64,
    consumers: Vec<Consumer>,
    next_consumer: usize,
    stats: QueueStats,
    effects: Vec<Effect>,
    credits_freed: usize,
    /// Whether the queue keeps a journal (durable): then entries' `seq` is their journal slot, and
    /// what leaves the queue is listed in `left` for the actor to tombstone.
    journaled: bool,
    /// Journal slots of the messages that left since the last [`QueueState::take_left`], and
    /// whether each was delivered (it has a delivered record). Bounded by what the queue held.
    left: Vec<(u64, bool)>,
    /// Journal slots of the messages put back with a delay since the last
    /// [`QueueState::take_retried`], with their delivery count and due time (durable queues only).
    retried: Vec<(u64, u32, Instant)>,
    /// The simulation's recorder, when this queue runs in one.
    probe: ProbeRef,
}

impl QueueState {
    pub(crate) fn new(name: Arc<str>, spec: QueueSpec, started: Instant) -> Self {
        Self {
            name,
            spec,
            started,
            ready: VecDeque::new(),
            scheduled: BTreeMap::new(),
            next_seq: 0,
            consumers: Vec::new(),
            next_consumer: 0,
            stats: QueueStats::default(),
            effects: Vec::new(),
            credits_freed: 0,
            journaled: false,
            left: Vec::new(),
            retried: Vec::new(),
            probe: None,
        }
    }

    /// Makes this a durable queue's state: entries are numbered by their journal slots.
    pub(crate) fn set_journaled(&mut self) {
        self.journaled = true;
    }

    /// Takes back messages replayed from the journal, in slot order, before the queue starts:
    /// ready, with their delivery counts (so the next delivery is marked redelivered) and their
    /// remaining time to live. `credited`: how many of them hold a publisher credit (the first).
    /// A message still due later (a delayed publish or a retry) waits that much longer, counted
    /// from `now`; its time to live counts from its delayed publish's due time.
    pub(crate) fn restore(
        &mut self,
        replayed: Vec<super::journal::Replayed>,
        credited: usize,
        now_ms: i64,
        now: Instant,
    ) {
        let later = |ms: i64| Duration::from_millis(ms.saturating_sub(now_ms).max(0) as u64);
        for (i, r) in replayed.into_iter().enumerate() {
            let expires_at = match self.spec.message_ttl {
                Some(ttl) => {
                    let born = r.ttl_from_ms;
                    let age = Duration::from_millis(now_ms.saturating_sub(born).max(0) as u64);
                    let left = ttl.saturating_sub(age) + later(born);
                    let at = now.saturating_duration_since(self.started) + left;
                    Expiry(u64::try_from(at.as_nanos()).unwrap_or(u64::MAX))
                }
                None => Expiry::NEVER,
            };
            let msg = Arc::new(r.msg);
            self.stats.enqueued += 1;
            self.stats.recovered += 1;
            self.note(|queue| What::Enqueue { msg: msg.id, queue });
            let entry = Entry {
                msg,
                seq: r.slot,
                expires_at,
                deliveries: r.deliveries,
                credited: i < credited,
                topic: TopicIndex::NONE,
            };
            match r.due_ms.filter(|&due| due > now_ms) {
                Some(due) => self.schedule(entry, now + later(due)),
                None => self.insert_ready(entry),
            }
        }
        self.debug_assert_conserved();
    }

    /// Journal slots of the messages put back with a delay since the last call, with their delivery
    /// counts and due times (durable queues only).
    pub(crate) fn take_retried(&mut self) -> Vec<(u64, u32, Instant)> {
        std::mem::take(&mut self.retried)
    }

    /// Journal slots of the messages that left since the last call (durable queues only).
    pub(crate) fn take_left(&mut self) -> Vec<(u64, bool)> {
        std::mem::take(&mut self.left)
    }

    /// Notes that `entry` left the queue, for its journal.
    #[inline]
    fn leave(&mut self, entry: &Entry) {
        if self.journaled && entry.seq != super::journal::NO_SLOT {
            self.left.push((entry.seq, entry.deliveries > 0));
        }
    }

    /// Records this queue's events into a simulation's history.
    pub(crate) fn traced(mut self, probe: ProbeRef) -> Self {
        self.probe = probe;
        self
    }

    fn note(&self, what: impl FnOnce(String) -> What) {
        if let Some(probe) = &self.probe {
            probe.record(what(self.name.to_string()));
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn spec(&self) -> &QueueSpec {
        &self.spec
    }

    /// Messages waiting for a consumer.
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Messages waiting for their due time.
    pub(crate) fn scheduled_len(&self) -> usize {
        self.scheduled.len()
    }

    /// What counts against `depth_max`: the ready messages and those waiting for their due time.
    fn depth(&self) -> usize {
        self.ready.len() + self.scheduled.len()
    }

    /// Deliveries handed out and not yet settled.
    pub(crate) fn in_flight(&self) -> u64 {
        self.stats.in_flight
    }

    pub(crate) fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Effects produced since the last call.
    pub(crate) fn take_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// Publisher credits freed since the last call (credited messages that left the ready list).
    pub(crate) fn take_credits_freed(&mut self) -> usize {
        std::mem::take(&mut self.credits_freed)
    }

    /// Accepts a message. `credited` messages were admitted by a publisher's credit and are always
    /// accepted; others (dead letters) obey the overflow policy when the queue is full.
    /// `slot`: the message's journal slot in a durable queue ([`NO_SLOT`](super::journal::NO_SLOT)
    /// otherwise), which is then its position.
    pub(crate) fn enqueue(&mut self, msg: Arc<Message>, credited: bool, now: Instant, slot: u64) -> Enqueued {
        self.enqueue_stamped(msg, credited, now, Stamp::slot(slot))
    }

    /// As [`QueueState::enqueue`], with what travels beside the message: its journal slot, its due
    /// time (a message due later waits in the schedule, its time to live counted from then) and its
    /// topic.
    pub(crate) fn enqueue_stamped(
        &mut self,
        msg: Arc<Message>,
        credited: bool,
        now: Instant,
        stamp: Stamp,
    ) -> Enqueued {
        let Stamp { slot, delay, topic } = stamp;
        let due = delay.duration().map(|d| now + d);
        self.stats.enqueued += 1;
        let full = self.depth() >= self.spec.depth_max;
        if full && !credited && self.spec.overflow != Overflow::DropHead {
            self.stats.dropped.overflow += 1;
            if self.journaled {
                self.left.push((slot, false));
            }
            return Enqueued::Refused;
        }
        let due = due.filter(|&due| due > now);
        let expires_at = match self.spec.message_ttl {
            // Saturates 584 years after the queue started, where it means never.
            Some(ttl) => {
                let from = due.unwrap_or(now);
                Expiry(u64::try_from((from + ttl - self.started).as_nanos()).unwrap_or(u64::MAX))
            }
            None => Expiry::NEVER,
        };
        self.note(|queue| What::Enqueue { msg: msg.id, queue });
        // Publishers number a durable queue's messages as they journal them, and may reach the
        // inbox out of that order: each takes its place by slot.
        let seq = if self.journaled {
            slot
        } else {
            self.next_seq += 1;
            self.next_seq - 1
        };
        let entry = Entry { msg, seq, expires_at, deliveries: 0, credited, topic };
        match due {
            Some(due) => self.schedule(entry, due),
            None if self.journaled => self.insert_ready(entry),
            None => self.ready.push_back(entry),
        }
        while self.spec.overflow == Overflow::DropHead && self.depth() > self.spec.depth_max {
            let head = match self.pop_ready() {
                Some(head) => head,
                // Only scheduled messages: the one due first goes.
                None => self.pop_scheduled().expect("queue over depth_max is not empty"),
            };
            self.dead_letter(head, DeathReason::Maxlen, now);
        }
        self.debug_assert_conserved();
        Enqueued::Accepted
    }

    /// Keeps `entry` until `due`.
    fn schedule(&mut self, entry: Entry, due: Instant) {
        self.scheduled.insert((due, entry.seq), entry);
    }

    /// Takes the scheduled message due first, out of the schedule (its credit freed).
    fn pop_scheduled(&mut self) -> Option<Entry> {
        let (_, entry) = self.scheduled.pop_first()?;
        if entry.credited {
            self.credits_freed += 1;
        }
        Some(entry)
    }

    /// Moves every scheduled message due by `now` to its place among the ready ones: its position
    /// in publish order (a delayed publish) or its original position (a retry), as a requeued
    /// message returns to its place.
    fn promote_due(&mut self, now: Instant) {
        while self.scheduled.first_key_value().is_some_and(|((due, _), _)| *due <= now) {
            let (_, entry) = self.scheduled.pop_first().expect("checked");
            self.insert_ready(entry);
        }
    }

    /// Whether every message this queue took is acked, dead-lettered, dropped with a reason, ready
    /// or in flight.
    pub(crate) fn conserved(&self) -> bool {
        let s = &self.stats;
        let held = self.depth() as u64 + s.in_flight;
        s.enqueued == s.acked + s.dead_lettered + s.dropped.total() + held
    }

    /// Conservation, checked at the end of every transition in debug builds (and so in every test).
    #[inline]
    pub(crate) fn debug_assert_conserved(&self) {
        debug_assert!(self.conserved(), "queue {} lost count of a message: {:?}", self.name, self.stats());
    }

    /// Dead-letters a publish refused under `reject-publish-dlx` (the refusal itself is counted by the
    /// publishers' side).
    pub(crate) fn dead_letter_refused(&mut self, msg: Arc<Message>, now: Instant) {
        if self.spec.dead_letter.is_some() {
            self.stats.refused_dead_lettered += 1;
            let died = msg.died(&self.name, DeathReason::Maxlen, self.ms_since_start(now));
            self.effects.push(Effect::DeadLetter { msg: Arc::new(died), refused: true, left: None });
        }
    }

    /// Hands the next ready message to the next consumer with room, round robin (or to the single
    /// active consumer). `None` when nothing is ready or no consumer has room.
    pub(crate) fn dispatch(&mut self, now: Instant) -> Option<Dispatch> {
        if !self.scheduled.is_empty() {
            self.promote_due(now);
        }
        self.expire_head(now);
        if self.journaled {
            self.dead_letter_replayed_past_limit(now);
        }
        if self.ready.is_empty() {
            return None;
        }
        let index = self.pick_consumer()?;
        let mut entry = self.pop_ready().expect("checked not empty");
        entry.deliveries += 1;
        self.stats.delivered += 1;
        self.stats.in_flight += 1;
        if entry.deliveries > 1 {
            self.stats.redelivered += 1;
        }
        let at_least_once = self.spec.delivery == DeliveryMode::AtLeastOnce;
        let deadline = now + self.spec.ack_timeout;
        let consumer = &mut self.consumers[index];
        consumer.next_tag += 1;
        let place = Place {
            seq: entry.seq,
            expires_at: entry.expires_at,
            credited: entry.credited,
            topic: entry.topic,
        };
        let delivery_count = entry.deliveries;
        // At least once the queue keeps the entry until it is settled; at most once the message
        // leaves with the delivery, moved rather than shared (no reference count traffic).
        let msg = if at_least_once {
            let msg = entry.msg.clone();
            entry.credited = false;
            consumer.unacked.push_back(Unacked { tag: consumer.next_tag, deadline, entry });
            msg
        } else {
            consumer.outstanding += 1;
            if self.journaled && entry.seq != super::journal::NO_SLOT {
                // At most once, a message leaves the queue as it is handed out.
                self.left.push((entry.seq, false));
            }
            entry.msg
        };
        let dispatch = Dispatch {
            consumer: consumer.id,
            epoch: consumer.epoch,
            tag: DeliveryTag(consumer.next_tag),
            msg,
            delivery_count,
            place,
        };
        self.debug_assert_conserved();
        Some(dispatch)
    }

    /// Takes back the last dispatch, which the consumer's mailbox refused: the message returns to its
    /// place, the counters to their values, and the consumer is skipped until it settles something.
    pub(crate) fn undo_dispatch(&mut self, d: Dispatch) {
        let at_least_once = self.spec.delivery == DeliveryMode::AtLeastOnce;
        let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == d.consumer) else { return };
        debug_assert_eq!(consumer.next_tag, d.tag.0, "only the last dispatch can be undone");
        consumer.next_tag = less(consumer.next_tag, 1, "next_tag");
        consumer.blocked = true;
        if at_least_once {
            let last = consumer.unacked.pop_back();
            debug_assert!(last.is_some_and(|u| u.tag == d.tag.0), "undone dispatch is the newest unacked");
        } else {
            consumer.outstanding = less(u64::from(consumer.outstanding), 1, "outstanding") as u32;
            if self.journaled {
                if let Some(at) = self.left.iter().rposition(|(slot, _)| *slot == d.place.seq) {
                    self.left.remove(at);
                }
            }
        }
        self.stats.delivered = less(self.stats.delivered, 1, "delivered");
        self.stats.in_flight = less(self.stats.in_flight, 1, "in_flight");
        if d.delivery_count > 1 {
            self.stats.redelivered = less(self.stats.redelivered, 1, "redelivered");
        }
        if d.place.credited {
            self.credits_freed = less(self.credits_freed as u64, 1, "credits_freed") as usize;
        }
        let entry = Entry {
            msg: d.msg,
            seq: d.place.seq,
            expires_at: d.place.expires_at,
            deliveries: d.delivery_count - 1,
            credited: d.place.credited,
            topic: d.place.topic,
        };
        self.insert_ready(entry);
        self.debug_assert_conserved();
    }

    /// Applies one settlement from a consumer.
    pub(crate) fn settle(
        &mut self,
        consumer: ConsumerId,
        epoch: u32,
        op: SettleOp,
        now: Instant,
    ) -> Result<(), SettleError> {
        let index = self.consumer_index(consumer).ok_or(SettleError::UnknownConsumer)?;
        if self.consumers[index].epoch != epoch {
            return Err(SettleError::Stale);
        }
        self.consumers[index].blocked = false;
        match op {
            SettleOp::Ack { tag: DeliveryTag(tag), multiple: true } => {
                // The common case (cumulative acks): the settled entries are dropped where they lie,
                // with no vector gathered for them.
                let unacked = &mut self.consumers[index].unacked;
                let count = unacked.partition_point(|u| u.tag <= tag);
                if count == 0 {
                    return Err(SettleError::UnknownTag(DeliveryTag(tag)));
                }
                self.stats.acked += count as u64;
                self.stats.in_flight = less(self.stats.in_flight, count as u64, "in_flight");
                let settled = unacked.drain(..count);
                if !self.journaled && self.probe.is_none() {
                    drop(settled);
                } else {
                    let acked: Vec<(MessageId, u64, u64)> =
                        settled.map(|u| (u.entry.msg.id, u.tag, u.entry.seq)).collect();
                    for (msg, tag, slot) in acked {
                        if self.journaled && slot != super::journal::NO_SLOT {
                            self.left.push((slot, true));
                        }
                        self.note(|queue| What::Ack { msg, queue, consumer: consumer.0, tag });
                    }
                }
            }
            SettleOp::Ack { tag: DeliveryTag(tag), multiple: false } => {
                let settled = self.take_unacked(index, tag, false)?;
                self.stats.acked += settled.len() as u64;
                self.stats.in_flight = less(self.stats.in_flight, settled.len() as u64, "in_flight");
                for (_, entry) in &settled {
                    self.leave(entry);
                }
                for (tag, entry) in &settled {
                    let (msg, tag) = (entry.msg.id, *tag);
                    self.note(|queue| What::Ack { msg, queue, consumer: consumer.0, tag });
                }
            }
            SettleOp::Nack { tag: DeliveryTag(tag), multiple, requeue } => {
                let settled = self.take_unacked(index, tag, multiple)?;
                self.stats.nacked += settled.len() as u64;
                self.stats.in_flight = less(self.stats.in_flight, settled.len() as u64, "in_flight");
                for (_, entry) in settled {
                    let msg = entry.msg.id;
                    self.note(|queue| What::Nack { msg, queue, requeue });
                    if requeue {
                        self.requeue(entry, now, RedeliverReason::Nack);
                    } else {
                        self.dead_letter(entry, DeathReason::Rejected, now);
                    }
                }
            }
            SettleOp::Processed(n) => {
                let n = self.take_outstanding(index, n)?;
                self.stats.acked += u64::from(n);
            }
            SettleOp::Rejected(msg) => {
                self.take_outstanding(index, 1)?;
                self.stats.nacked += 1;
                // It left this queue (and its journal) when it was handed out.
                let seq = super::journal::NO_SLOT;
                let entry = Entry {
                    msg,
                    seq,
                    expires_at: Expiry::NEVER,
                    deliveries: 1,
                    credited: false,
                    topic: TopicIndex::NONE,
                };
                self.dead_letter(entry, DeathReason::Rejected, now);
            }
            SettleOp::Retry { tag: DeliveryTag(tag), after } => {
                let settled = self.take_unacked(index, tag, false)?;
                self.stats.nacked += settled.len() as u64;
                self.stats.in_flight = less(self.stats.in_flight, settled.len() as u64, "in_flight");
                for (_, entry) in settled {
                    let msg = entry.msg.id;
                    self.note(|queue| What::Nack { msg, queue, requeue: true });
                    self.retry(entry, now, now + after);
                }
            }
        }
        Ok(())
    }

    /// A consumer's handler panicked: everything it holds is requeued (at-least-once) or counted lost
    /// (at-most-once), and later deliveries carry `epoch`.
    pub(crate) fn consumer_restarted(&mut self, consumer: ConsumerId, epoch: u32, now: Instant) {
        let Some(index) = self.consumer_index(consumer) else { return };
        self.stats.restarts += 1;
        if epoch <= self.consumers[index].epoch {
            // The queue restarted since that incarnation and already forgot what it held; what it
            // delivered since carries a newer epoch, which the subscriber adopts.
            return;
        }
        self.release_consumer(index, now, RedeliverReason::ConsumerCrash);
        let c = &mut self.consumers[index];
        c.epoch = epoch;
        c.blocked = false;
    }

    pub(crate) fn add_consumer(&mut self, id: ConsumerId, prefetch: u32) {
        self.consumers.push(Consumer::new(id, prefetch));
    }

    /// Stops dispatching to a consumer; returns how many deliveries it still holds.
    pub(crate) fn drain_consumer(&mut self, id: ConsumerId) -> Option<usize> {
        let index = self.consumer_index(id)?;
        self.consumers[index].draining = true;
        Some(self.consumers[index].in_flight())
    }

    pub(crate) fn consumer_in_flight(&self, id: ConsumerId) -> Option<usize> {
        self.consumer_index(id).map(|i| self.consumers[i].in_flight())
    }

    /// Removes a consumer, requeueing (at-least-once) or counting lost (at-most-once) what it still
    /// holds. Returns `(requeued, lost)`, or `None` when it was not subscribed.
    pub(crate) fn remove_consumer(&mut self, id: ConsumerId, now: Instant) -> Option<(u64, u64)> {
        let index = self.consumer_index(id)?;
        let released = self.release_consumer(index, now, RedeliverReason::ConsumerLeft);
        self.consumers.remove(index);
        if self.next_consumer > index {
            self.next_consumer -= 1;
        }
        Some(released)
    }

    /// A dead letter could not be handed over: its dead-letter queue has been deleted.
    pub(crate) fn dead_letter_lost(&mut self, refused: bool) {
        if refused {
            self.stats.refused_dead_lettered =
                less(self.stats.refused_dead_lettered, 1, "refused_dead_lettered");
            self.stats.dropped.refused_dead_letter_lost += 1;
        } else {
            self.stats.dead_lettered = less(self.stats.dead_lettered, 1, "dead_lettered");
            self.stats.dropped.deleted += 1;
        }
    }

    /// Counts a dead letter refused for want of room (a full queue whose policy is not drop-head).
    pub(crate) fn refuse_dead_letter(&mut self, msg: &Message, slot: u64) {
        if self.journaled && slot != super::journal::NO_SLOT {
            self.left.push((slot, false));
        }
        let msg = msg.id;
        self.note(|queue| What::Drop { msg, queue, reason: DropReason::Overflow });
        self.stats.enqueued += 1;
        self.stats.dropped.overflow += 1;
    }

    /// Redelivers what passed its ack deadline and drops or dead-letters expired ready messages.
    pub(crate) fn expire(&mut self, now: Instant) {
        for index in 0..self.consumers.len() {
            while self.consumers[index].unacked.front().is_some_and(|u| u.deadline <= now) {
                let late = self.consumers[index].unacked.pop_front().expect("front exists");
                self.stats.in_flight = less(self.stats.in_flight, 1, "in_flight");
                self.requeue(late.entry, now, RedeliverReason::AckTimeout);
            }
        }
        self.promote_due(now);
        self.expire_head(now);
    }

    /// The next moment [`QueueState::expire`] has work: the head's expiry, the earliest ack
    /// deadline, or the first scheduled message's due time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let head = self.ready.front().and_then(|e| self.instant(e.expires_at));
        let acks = self.consumers.iter().filter_map(|c| c.unacked.front().map(|u| u.deadline)).min();
        let due = self.scheduled.first_key_value().map(|((due, _), _)| *due);
        [head, acks, due].into_iter().flatten().min()
    }

    /// Empties the queue as it is deleted: ready messages are counted as dropped (`deleted`), as
    /// RabbitMQ does not dead-letter the messages of a deleted queue.
    /// Deliveries still held by consumers are counted the same way: unacked ones as `deleted`,
    /// at-most-once ones as `lost_at_most_once`.
    pub(crate) fn delete(&mut self) {
        let consumers = std::mem::take(&mut self.consumers);
        self.forget(consumers, DropReason::Deleted);
        self.effects.clear();
        self.stats.deleted = true;
    }

    /// The queue actor restarts and loses its in-memory state: every ready and unacked message is
    /// dropped (`queue_restart`) and consumers stay subscribed, holding nothing.
    pub(crate) fn restart(&mut self) {
        let consumers: Vec<Consumer> = self
            .consumers
            .iter_mut()
            .map(|c| {
                // A new incarnation of the queue: settlements of deliveries it no longer knows are
                // stale, and the subscriber adopts the new epoch with its next delivery.
                c.epoch = c.epoch.wrapping_add(QUEUE_RESTART_EPOCH_STEP);
                c.blocked = false;
                Consumer {
                    unacked: std::mem::take(&mut c.unacked),
                    outstanding: std::mem::take(&mut c.outstanding),
                    ..Consumer::new(c.id, c.prefetch)
                }
            })
            .collect();
        self.forget(consumers, DropReason::QueueRestart);
    }

    fn forget(&mut self, consumers: Vec<Consumer>, reason: DropReason) {
        let mut gone = 0;
        for c in consumers {
            let lost = u64::from(c.outstanding);
            self.stats.in_flight = less(self.stats.in_flight, c.unacked.len() as u64 + lost, "in_flight");
            self.stats.dropped.lost_at_most_once += lost;
            gone += c.unacked.len() as u64;
            for u in &c.unacked {
                let msg = u.entry.msg.id;
                self.note(|queue| What::Drop { msg, queue, reason });
                self.leave(&u.entry);
            }
        }
        let ready = std::mem::take(&mut self.ready);
        let scheduled = std::mem::take(&mut self.scheduled);
        for e in ready.iter().chain(scheduled.values()) {
            let msg = e.msg.id;
            self.note(|queue| What::Drop { msg, queue, reason });
            self.leave(e);
            if e.credited {
                self.credits_freed += 1;
            }
        }
        gone += (ready.len() + scheduled.len()) as u64;
        match reason {
            DropReason::Deleted => self.stats.dropped.deleted += gone,
            _ => self.stats.dropped.queue_restart += gone,
        }
    }

    /// At-most-once deliveries that a fault dropped on the way to `consumer`: lost, and counted.
    pub(crate) fn lost_in_transit(&mut self, consumer: ConsumerId, msg: &Message) {
        let Some(index) = self.consumer_index(consumer) else { return };
        if self.take_outstanding(index, 1).is_ok() {
            let msg = msg.id;
            self.note(|queue| What::Drop { msg, queue, reason: DropReason::FaultDrop });
            self.stats.dropped.fault += 1;
        }
    }

    /// The counters now.
    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            ready: self.ready.len() as u64,
            scheduled: self.scheduled.len() as u64,
            consumers: self.consumers.len() as u64,
            ..self.stats.clone()
        }
    }

    fn consumer_index(&self, id: ConsumerId) -> Option<usize> {
        self.consumers.iter().position(|c| c.id == id)
    }

    fn pick_consumer(&mut self) -> Option<usize> {
        let window = self.spec.depth_max;
        let has_room = |c: &Consumer| {
            !c.blocked
                && !c.draining
                && c.in_flight() < if c.prefetch == 0 { window } else { c.prefetch as usize }
        };
        if self.spec.single_active_consumer {
            // The active consumer is the oldest one; the next takes over only once it has left, so a
            // draining active consumer still holds the others back and order is kept.
            return self.consumers.first().filter(|c| has_room(c)).map(|_| 0);
        }
        let n = self.consumers.len();
        let start = self.next_consumer;
        let found = (0..n).map(|i| (start + i) % n).find(|&i| has_room(&self.consumers[i]))?;
        self.next_consumer = (found + 1) % n;
        Some(found)
    }

    fn take_unacked(
        &mut self,
        index: usize,
        tag: u64,
        multiple: bool,
    ) -> Result<Vec<(u64, Entry)>, SettleError> {
        let unacked = &mut self.consumers[index].unacked;
        if multiple {
            let count = unacked.partition_point(|u| u.tag <= tag);
            if count == 0 {
                return Err(SettleError::UnknownTag(DeliveryTag(tag)));
            }
            return Ok(unacked.drain(..count).map(|u| (u.tag, u.entry)).collect());
        }
        let at = unacked
            .binary_search_by_key(&tag, |u| u.tag)
            .map_err(|_| SettleError::UnknownTag(DeliveryTag(tag)))?;
        let u = unacked.remove(at).expect("found by search");
        Ok(vec![(u.tag, u.entry)])
    }

    fn take_outstanding(&mut self, index: usize, n: u32) -> Result<u32, SettleError> {
        let c = &mut self.consumers[index];
        if c.outstanding == 0 {
            return Err(SettleError::NothingOutstanding(n));
        }
        // After a queue restart forgot some, fewer may be outstanding than reported.
        let n = n.min(c.outstanding);
        c.outstanding = less(u64::from(c.outstanding), u64::from(n), "outstanding") as u32;
        self.stats.in_flight = less(self.stats.in_flight, u64::from(n), "in_flight");
        Ok(n)
    }

    fn release_consumer(&mut self, index: usize, now: Instant, reason: RedeliverReason) -> (u64, u64) {
        let forget = reason == RedeliverReason::ConsumerCrash
            && probe::bug(&self.probe, |b| b.forget_requeue_on_crash);
        let c = &mut self.consumers[index];
        let held: Vec<Entry> = c.unacked.drain(..).map(|u| u.entry).collect();
        let lost = u64::from(std::mem::take(&mut c.outstanding));
        let requeued = held.len() as u64;
        self.stats.in_flight = less(self.stats.in_flight, requeued + lost, "in_flight");
        self.stats.dropped.lost_at_most_once += lost;
        if forget {
            // Broken on purpose: what the crashed consumer held vanishes without a trace.
            self.stats.enqueued = less(self.stats.enqueued, requeued, "enqueued");
            return (0, lost);
        }
        for entry in held.into_iter().rev() {
            self.requeue(entry, now, reason);
        }
        (requeued, lost)
    }

    /// Puts a message back at its original position, or dead-letters it past the delivery limit.
    fn requeue(&mut self, entry: Entry, now: Instant, reason: RedeliverReason) {
        if entry.deliveries >= self.spec.delivery_limit {
            self.dead_letter(entry, DeathReason::DeliveryLimit, now);
        } else {
            let msg = entry.msg.id;
            self.note(|queue| What::Redeliver { msg, queue, reason });
            self.insert_ready(entry);
        }
    }

    /// Puts a message back, ready again at `due` (a retry with a delay), or dead-letters it past the
    /// delivery limit.
    fn retry(&mut self, entry: Entry, now: Instant, due: Instant) {
        if entry.deliveries >= self.spec.delivery_limit {
            return self.dead_letter(entry, DeathReason::DeliveryLimit, now);
        }
        let msg = entry.msg.id;
        self.note(|queue| What::Redeliver { msg, queue, reason: RedeliverReason::Retry });
        if due <= now {
            return self.insert_ready(entry);
        }
        if self.journaled && entry.seq != super::journal::NO_SLOT {
            self.retried.push((entry.seq, entry.deliveries, due));
        }
        self.schedule(entry, due);
    }

    fn insert_ready(&mut self, entry: Entry) {
        if probe::bug(&self.probe, |b| b.requeue_at_back) {
            // Broken on purpose: a requeued message loses its place.
            return self.ready.push_back(entry);
        }
        let at = self.ready.partition_point(|e| e.seq < entry.seq);
        self.ready.insert(at, entry);
    }

    /// The moment `expiry` stands for, `None` for never.
    pub(crate) fn instant(&self, expiry: Expiry) -> Option<Instant> {
        (expiry != Expiry::NEVER).then(|| self.started + Duration::from_nanos(expiry.0))
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        let entry = self.ready.pop_front()?;
        if entry.credited {
            self.credits_freed += 1;
        }
        Some(entry)
    }

    /// A message replayed from the journal after its last allowed delivery (the crash came before
    /// its ack) is dead-lettered when it reaches the head, as the requeue after that delivery would
    /// have done; not at replay, when its dead-letter queue may not be started yet.
    fn dead_letter_replayed_past_limit(&mut self, now: Instant) {
        while self.ready.front().is_some_and(|e| e.deliveries >= self.spec.delivery_limit) {
            let entry = self.pop_ready().expect("front exists");
            self.dead_letter(entry, DeathReason::DeliveryLimit, now);
        }
    }

    fn expire_head(&mut self, now: Instant) {
        while self.ready.front().is_some_and(|e| self.instant(e.expires_at).is_some_and(|at| at <= now)) {
            let entry = self.pop_ready().expect("front exists");
            self.dead_letter(entry, DeathReason::Expired, now);
        }
    }

    fn dead_letter(&mut self, entry: Entry, reason: DeathReason, now: Instant) {
        let msg = entry.msg.id;
        let Some(target) = &self.spec.dead_letter else {
            self.leave(&entry);
            self.note(|queue| What::Drop { msg, queue, reason: reason.into() });
            let dropped = &mut self.stats.dropped;
            match reason {
                DeathReason::Maxlen => dropped.overflow += 1,
                DeathReason::Expired => dropped.expired += 1,
                DeathReason::Rejected => dropped.rejected += 1,
                DeathReason::DeliveryLimit => dropped.delivery_limit += 1,
            }
            return;
        };
        if entry.msg.would_cycle(target) {
            self.leave(&entry);
            self.note(|queue| What::Drop { msg, queue, reason: DropReason::DeadLetterCycle });
            self.stats.dropped.dead_letter_cycle += 1;
            return;
        }
        self.note(|queue| What::DeadLetter { msg, queue, reason });
        self.stats.dead_lettered += 1;
        let died = entry.msg.died(&self.name, reason, self.ms_since_start(now));
        let left = (self.journaled && entry.seq != super::journal::NO_SLOT)
            .then_some((entry.seq, entry.deliveries > 0));
        self.effects.push(Effect::DeadLetter { msg: Arc::new(died), refused: false, left });
    }

    fn ms_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }
}

/// `counter - n`; a counter never goes below zero, which a debug assertion checks by name (release
/// builds clamp rather than wrap).
#[inline]
fn less(counter: u64, n: u64, what: &'static str) -> u64 {
    debug_assert!(counter >= n, "{what} would go below zero: {counter} - {n}");
    counter.saturating_sub(n)
}

#[cfg(test)]
mod tests;
