//! Property test of the queue state machine: random specs and random sequences of enqueues,
//! dispatches, settlements, consumer changes and time passing, with the invariants checked after
//! every step.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::ids::MessageId;
use crate::message::{Death, Payload};
use crate::queue::NO_SLOT;

const NAME: &str = "q";
const DEAD_LETTER: &str = "dlq";

#[derive(Debug, Clone)]
enum Op {
    /// A publish: takes a publisher credit under the reject and block policies, as the actor's
    /// publishers do, and is refused without one.
    Publish,
    /// A publish due `ms` from now (`publish_in`).
    PublishIn {
        ms: u64,
    },
    /// A dead letter from another queue (no credit); `cyclic` ones already died in our dead-letter queue.
    DeadLetterIn {
        cyclic: bool,
    },
    Dispatch,
    /// A dispatch that the consumer's mailbox refuses.
    DispatchUndone,
    /// Dispatch until nothing more goes out, as the actor's pump does.
    Pump,
    Ack {
        consumer: usize,
        pick: usize,
        multiple: bool,
        bogus: bool,
    },
    Nack {
        consumer: usize,
        pick: usize,
        multiple: bool,
        requeue: bool,
        bogus: bool,
    },
    /// A retry with a delay (`Outcome::Retry`).
    Retry {
        consumer: usize,
        pick: usize,
        ms: u64,
        bogus: bool,
    },
    /// At-most-once: handlers finished (more than outstanding when `bogus`).
    Processed {
        consumer: usize,
        n: u32,
        bogus: bool,
    },
    /// At-most-once: a handler rejected its message.
    Rejected {
        consumer: usize,
    },
    StaleSettle {
        consumer: usize,
    },
    AddConsumer {
        prefetch: u32,
    },
    RemoveConsumer {
        consumer: usize,
    },
    Restart {
        consumer: usize,
    },
    Drain {
        consumer: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Publish),
        2 => (0..2000u64).prop_map(|ms| Op::PublishIn { ms }),
        2 => (0..4usize, 0..8usize, 0..2000u64, prop::bool::weighted(0.1))
            .prop_map(|(consumer, pick, ms, bogus)| Op::Retry { consumer, pick, ms, bogus }),
        1 => any::<bool>().prop_map(|cyclic| Op::DeadLetterIn { cyclic }),
        3 => Just(Op::Dispatch),
        1 => Just(Op::DispatchUndone),
        2 => Just(Op::Pump),
        4 => (0..4usize, 0..8usize, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(consumer, pick, multiple, bogus)| Op::Ack { consumer, pick, multiple, bogus }),
        3 => (0..4usize, 0..8usize, any::<bool>(), any::<bool>(), prop::bool::weighted(0.1)).prop_map(
            |(consumer, pick, multiple, requeue, bogus)| Op::Nack { consumer, pick, multiple, requeue, bogus }
        ),
        3 => (0..4usize, 1..4u32, prop::bool::weighted(0.1))
            .prop_map(|(consumer, n, bogus)| Op::Processed { consumer, n, bogus }),
        1 => (0..4usize).prop_map(|consumer| Op::Rejected { consumer }),
        1 => (0..4usize).prop_map(|consumer| Op::StaleSettle { consumer }),
        2 => (0..4u32).prop_map(|prefetch| Op::AddConsumer { prefetch }),
        1 => (0..4usize).prop_map(|consumer| Op::RemoveConsumer { consumer }),
        1 => (0..4usize).prop_map(|consumer| Op::Restart { consumer }),
        1 => (0..4usize).prop_map(|consumer| Op::Drain { consumer }),
        2 => (1..700u64).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn overflow() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::DropHead),
        Just(Overflow::RejectPublish),
        Just(Overflow::RejectPublishDlx),
        Just(Overflow::Block)
    ]
}

fn spec() -> impl Strategy<Value = QueueSpec> {
    (
        1..5usize,
        overflow(),
        any::<bool>(),
        1..6u64,
        1..4u32,
        any::<bool>(),
        prop::option::of(100..600u64),
        any::<bool>(),
    )
        .prop_map(|(depth_max, overflow, at_most_once, ack_timeout, limit, dlq, ttl, single)| {
            let delivery = if at_most_once { DeliveryMode::AtMostOnce } else { DeliveryMode::AtLeastOnce };
            QueueSpec {
                depth_max,
                overflow,
                delivery,
                ack_timeout: Duration::from_millis(ack_timeout * 100),
                delivery_limit: limit,
                dead_letter: dlq.then(|| DEAD_LETTER.to_owned()),
                message_ttl: ttl.map(Duration::from_millis),
                single_active_consumer: single,
                ..QueueSpec::default()
            }
        })
}

/// Drives a [`QueueState`] as the actor does, and checks it after every step.
struct Harness {
    st: QueueState,
    now: Instant,
    /// Publisher credits left (reject and block policies), as the actor's semaphore.
    credits: Option<usize>,
    next_msg: u64,
    next_consumer: u64,
    /// At-most-once: every message ever dispatched.
    dispatched: HashSet<MessageId>,
    /// The seq of the latest first delivery.
    last_first_seq: Option<u64>,
    /// Messages published with a delay.
    delayed: HashSet<MessageId>,
    /// Dead-letter effects seen.
    dead_letters: u64,
    /// A durable queue's journal, as the publisher and the actor write it: the slots given out, and
    /// those with an enqueue record that no tombstone followed.
    journal: Option<(u64, BTreeSet<u64>)>,
}

impl Harness {
    fn new(spec: QueueSpec, base: Instant) -> Self {
        let credits = (spec.overflow != Overflow::DropHead).then_some(spec.depth_max);
        Self {
            st: QueueState::new(NAME.into(), spec, base),
            now: base,
            credits,
            next_msg: 1,
            next_consumer: 1,
            dispatched: HashSet::new(),
            last_first_seq: None,
            delayed: HashSet::new(),
            dead_letters: 0,
            journal: None,
        }
    }

    /// A durable queue's harness: messages get journal slots, and what leaves is checked against
    /// the journal's model.
    fn journaled(spec: QueueSpec, base: Instant) -> Self {
        let mut h = Self::new(spec, base);
        h.st.set_journaled();
        h.journal = Some((0, BTreeSet::new()));
        h
    }

    /// A new message's slot, journaled (or [`NO_SLOT`] for a queue that is not durable).
    fn slot(&mut self) -> u64 {
        let Some((next, live)) = &mut self.journal else { return NO_SLOT };
        let slot = *next;
        *next += 1;
        live.insert(slot);
        slot
    }

    fn at_most_once(&self) -> bool {
        self.st.spec.delivery == DeliveryMode::AtMostOnce
    }

    fn message(&mut self, deaths: Vec<Death>) -> Arc<Message> {
        let id = MessageId(self.next_msg);
        self.next_msg += 1;
        Arc::new(Message { id, key: "k".into(), payload: Payload::value(id.0), deaths: deaths.into() })
    }

    fn consumer(&self, pick: usize) -> Option<usize> {
        let n = self.st.consumers.len();
        (n > 0).then(|| pick % n)
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Publish => self.publish(None),
            Op::PublishIn { ms } => self.publish(Some(Duration::from_millis(ms))),
            Op::Retry { consumer, pick, ms, bogus } => {
                let after = Duration::from_millis(ms);
                self.settle_unacked(consumer, pick, bogus, |tag| SettleOp::Retry {
                    tag: DeliveryTag(tag),
                    after,
                });
            }
            Op::DeadLetterIn { cyclic } => self.dead_letter_in(cyclic),
            Op::Dispatch => {
                if let Some(d) = self.st.dispatch(self.now) {
                    self.dispatched(&d);
                }
            }
            Op::DispatchUndone => self.dispatch_undone(),
            Op::Pump => {
                while let Some(d) = self.st.dispatch(self.now) {
                    self.dispatched(&d);
                }
            }
            Op::Ack { consumer, pick, multiple, bogus } => {
                self.settle_unacked(consumer, pick, bogus, |tag| SettleOp::Ack {
                    tag: DeliveryTag(tag),
                    multiple,
                });
            }
            Op::Nack { consumer, pick, multiple, requeue, bogus } => {
                self.settle_unacked(consumer, pick, bogus, |tag| SettleOp::Nack {
                    tag: DeliveryTag(tag),
                    multiple,
                    requeue,
                });
            }
            Op::Processed { consumer, n, bogus } => self.processed(consumer, n, bogus),
            Op::Rejected { consumer } => self.rejected(consumer),
            Op::StaleSettle { consumer } => self.stale_settle(consumer),
            Op::AddConsumer { prefetch } => {
                let id = ConsumerId(self.next_consumer);
                self.next_consumer += 1;
                self.st.add_consumer(id, prefetch);
            }
            Op::RemoveConsumer { consumer } => self.remove_consumer(consumer),
            Op::Restart { consumer } => self.restart(consumer),
            Op::Drain { consumer } => {
                let Some(i) = self.consumer(consumer) else { return };
                let id = self.st.consumers[i].id;
                let held = self.st.consumers[i].in_flight();
                assert_eq!(self.st.drain_consumer(id), Some(held));
            }
            Op::Advance { ms } => self.advance(Duration::from_millis(ms)),
        }
    }

    fn dead_letter_in(&mut self, cyclic: bool) {
        let (queue, reason) =
            if cyclic { (DEAD_LETTER, DeathReason::Expired) } else { ("elsewhere", DeathReason::Rejected) };
        let death = Death { queue: queue.into(), reason, count: 1, at_ms: 0 };
        let msg = self.message(vec![death]);
        let full = self.st.depth() >= self.st.spec.depth_max;
        let expected = if full && self.st.spec.overflow != Overflow::DropHead {
            Enqueued::Refused
        } else {
            Enqueued::Accepted
        };
        let slot = self.slot();
        assert_eq!(self.st.enqueue(msg, false, self.now, slot), expected, "dead letter into a full queue");
    }

    /// A dispatch that the consumer's mailbox refuses, undone as the actor does.
    fn dispatch_undone(&mut self) {
        let last_first_seq = self.last_first_seq;
        let Some(d) = self.st.dispatch(self.now) else { return };
        self.dispatched(&d);
        if self.at_most_once() {
            self.dispatched.remove(&d.msg.id);
        }
        self.last_first_seq = last_first_seq;
        let (out, redelivery) = (self.st.stats(), u64::from(d.delivery_count > 1));
        self.st.undo_dispatch(d);
        let back = self.st.stats();
        assert_eq!(
            (back.delivered, back.redelivered, back.in_flight, back.ready),
            (out.delivered - 1, out.redelivered - redelivery, out.in_flight - 1, out.ready + 1),
            "undo restores the counters"
        );
    }

    fn stale_settle(&mut self, consumer: usize) {
        let Some(i) = self.consumer(consumer) else { return };
        let (id, epoch) = (self.st.consumers[i].id, self.st.consumers[i].epoch);
        let before = self.st.stats();
        let op = SettleOp::Ack { tag: DeliveryTag(1), multiple: true };
        assert_eq!(self.st.settle(id, epoch.wrapping_add(1), op, self.now), Err(SettleError::Stale));
        assert_eq!(self.st.stats(), before, "a stale settlement changed the queue");
    }

    fn remove_consumer(&mut self, consumer: usize) {
        let Some(i) = self.consumer(consumer) else { return };
        let now = self.now;
        let c = &self.st.consumers[i];
        let (id, held, outstanding) = (c.id, c.unacked.len() as u64, u64::from(c.outstanding));
        assert_eq!(self.st.remove_consumer(id, now), Some((held, outstanding)));
        assert_eq!(self.st.remove_consumer(id, now), None, "removed twice");
        let late = self.st.settle(id, 0, SettleOp::Processed(1), now);
        assert_eq!(late, Err(SettleError::UnknownConsumer), "a removed consumer settled");
    }

    fn restart(&mut self, consumer: usize) {
        let Some(i) = self.consumer(consumer) else { return };
        let (id, epoch) = (self.st.consumers[i].id, self.st.consumers[i].epoch);
        let restarts = self.st.stats().restarts;
        self.st.consumer_restarted(id, epoch.wrapping_add(1), self.now);
        assert_eq!(self.st.consumer_in_flight(id), Some(0), "a restarted consumer holds nothing");
        assert_eq!(self.st.stats().restarts, restarts + 1);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        self.st.expire(now);
        for c in &self.st.consumers {
            let late = c.unacked.iter().any(|u| u.deadline <= now);
            assert!(!late, "an unacked delivery outlived its deadline");
        }
        let head = self.st.ready.front().and_then(|e| self.st.instant(e.expires_at));
        assert!(head.is_none_or(|at| at > now), "an expired message stayed at the head");
        let due = self.st.scheduled.first_key_value().map(|((due, _), _)| *due);
        assert!(due.is_none_or(|due| due > now), "a due message stayed scheduled");
    }

    fn publish(&mut self, delay: Option<Duration>) {
        let now = self.now;
        let msg = self.message(Vec::new());
        if delay.is_some_and(|d| !d.is_zero()) {
            self.delayed.insert(msg.id);
        }
        let delay = delay.map_or(Delay::NONE, Delay::of);
        let stamp = |slot| Stamp { slot, delay, topic: TopicIndex::NONE };
        match &mut self.credits {
            None => {
                let slot = self.slot();
                assert_eq!(self.st.enqueue_stamped(msg, false, now, stamp(slot)), Enqueued::Accepted);
            }
            Some(credits) if *credits > 0 => {
                *credits -= 1;
                let slot = self.slot();
                assert_eq!(self.st.enqueue_stamped(msg, true, now, stamp(slot)), Enqueued::Accepted);
            }
            Some(_) => {
                if self.st.spec.overflow == Overflow::RejectPublishDlx {
                    self.st.dead_letter_refused(msg, now);
                }
            }
        }
        if self.st.spec.overflow == Overflow::DropHead {
            let held = self.st.depth();
            assert!(held <= self.st.spec.depth_max, "drop-head holds {held} after an enqueue");
        }
    }

    fn dispatched(&mut self, d: &Dispatch) {
        let spec = &self.st.spec;
        assert!(d.delivery_count >= 1 && d.delivery_count <= spec.delivery_limit, "{d:?}");
        assert!(
            self.st.instant(d.place.expires_at).is_none_or(|at| at > self.now),
            "an expired message was dispatched: {d:?}"
        );
        if spec.single_active_consumer {
            assert_eq!(d.consumer, self.st.consumers[0].id, "dispatched past the single active consumer");
        }
        let c = self.st.consumers.iter().find(|c| c.id == d.consumer).expect("dispatched to a consumer");
        assert!(!c.draining, "dispatched to a draining consumer");
        assert_eq!(d.epoch, c.epoch);
        if spec.delivery == DeliveryMode::AtMostOnce {
            assert!(self.dispatched.insert(d.msg.id), "at-most-once dispatched {:?} twice", d.msg.id);
        }
        // A delayed message takes its place by publish order when it is due, behind younger ones
        // already delivered: the others' first deliveries stay in order.
        if d.delivery_count == 1 && !self.delayed.contains(&d.msg.id) {
            if let Some(last) = self.last_first_seq {
                assert!(
                    d.place.seq > last,
                    "first deliveries out of enqueue order: {} after {last}",
                    d.place.seq
                );
            }
            self.last_first_seq = Some(d.place.seq);
        }
    }

    /// Settles a tag of a consumer's unacked deliveries (or a tag it does not hold, when `bogus`), and
    /// checks the answer against what the consumer held.
    fn settle_unacked(&mut self, consumer: usize, pick: usize, bogus: bool, op: impl Fn(u64) -> SettleOp) {
        if self.at_most_once() {
            return;
        }
        let Some(i) = self.consumer(consumer) else { return };
        let c = &self.st.consumers[i];
        let (id, epoch) = (c.id, c.epoch);
        let tags: Vec<u64> = c.unacked.iter().map(|u| u.tag).collect();
        let tag =
            if bogus || tags.is_empty() { c.next_tag + 1 + pick as u64 } else { tags[pick % tags.len()] };
        let op = op(tag);
        let multiple =
            matches!(op, SettleOp::Ack { multiple: true, .. } | SettleOp::Nack { multiple: true, .. });
        let covered = tags.iter().filter(|&&t| if multiple { t <= tag } else { t == tag }).count() as u64;
        let (ack, before) = (matches!(op, SettleOp::Ack { .. }), self.st.stats());
        let result = self.st.settle(id, epoch, op, self.now);
        if bogus && !multiple {
            assert_eq!(result, Err(SettleError::UnknownTag(DeliveryTag(tag))));
        }
        if covered == 0 {
            assert_eq!(result, Err(SettleError::UnknownTag(DeliveryTag(tag))));
            assert_eq!(self.st.stats(), before, "a refused settlement changed the queue");
            return;
        }
        assert_eq!(result, Ok(()));
        let after = self.st.stats();
        if ack {
            assert_eq!(after.acked, before.acked + covered);
        } else {
            assert_eq!(after.nacked, before.nacked + covered);
        }
        let left: Vec<u64> = self.st.consumers[i].unacked.iter().map(|u| u.tag).collect();
        let expected: Vec<u64> =
            tags.into_iter().filter(|&t| if multiple { t > tag } else { t != tag }).collect();
        assert_eq!(left, expected, "the settlement took other tags than those it covers");
    }

    fn processed(&mut self, consumer: usize, n: u32, bogus: bool) {
        if !self.at_most_once() {
            return;
        }
        let Some(i) = self.consumer(consumer) else { return };
        let c = &self.st.consumers[i];
        let (id, epoch, outstanding) = (c.id, c.epoch, c.outstanding);
        let n = if bogus { outstanding + n } else { n.min(outstanding) };
        if n == 0 {
            return;
        }
        let before = self.st.stats();
        let result = self.st.settle(id, epoch, SettleOp::Processed(n), self.now);
        if outstanding == 0 {
            assert!(matches!(result, Err(SettleError::NothingOutstanding(_))), "{result:?}");
            assert_eq!(self.st.stats(), before);
        } else {
            // More reported than outstanding (a queue restart forgot some) settles what is outstanding.
            assert_eq!(result, Ok(()));
            assert_eq!(self.st.stats().acked, before.acked + u64::from(n.min(outstanding)));
        }
    }

    fn rejected(&mut self, consumer: usize) {
        if !self.at_most_once() {
            return;
        }
        let Some(i) = self.consumer(consumer) else { return };
        let c = &self.st.consumers[i];
        let (id, epoch, outstanding) = (c.id, c.epoch, c.outstanding);
        let msg = self.message(Vec::new());
        let result = self.st.settle(id, epoch, SettleOp::Rejected(msg), self.now);
        assert_eq!(result.is_ok(), outstanding > 0, "{result:?}");
    }

    /// Collects what the actor would: freed credits and dead-letter effects.
    fn collect(&mut self) {
        let freed = self.st.take_credits_freed();
        match &mut self.credits {
            Some(credits) => *credits += freed,
            None => assert_eq!(freed, 0, "drop-head queues hold no credits"),
        }
        let effects: Vec<Effect> = self.st.take_effects().collect();
        let mut tombstoned = self.st.take_left();
        if self.journal.is_none() {
            assert!(tombstoned.is_empty(), "a queue without a journal listed {tombstoned:?} as left");
        }
        tombstoned.extend(effects.iter().filter_map(|Effect::DeadLetter { left, .. }| *left));
        if let Some((_, live)) = &mut self.journal {
            for (slot, _) in tombstoned {
                assert!(live.remove(&slot), "slot {slot} tombstoned, but not held (or twice)");
            }
        }
        for Effect::DeadLetter { msg, .. } in effects {
            assert!(self.st.spec.dead_letter.is_some(), "dead-lettered without a dead-letter queue");
            let death = msg.deaths().first().expect("a dead letter records its death");
            assert_eq!(&*death.queue, NAME);
            self.dead_letters += 1;
        }
    }

    fn check(&self) {
        let st = &self.st;
        let stats = st.stats();
        assert!(stats.conserved(), "not conserved: {stats:?}");
        assert_eq!(
            self.dead_letters,
            stats.dead_lettered + stats.refused_dead_lettered,
            "dead letters counted differ from those handed to the dead-letter queue: {stats:?}"
        );
        let held: usize = st.consumers.iter().map(Consumer::in_flight).sum();
        assert_eq!(stats.in_flight, held as u64, "in_flight differs from what consumers hold");
        assert_eq!((stats.ready, stats.scheduled), (st.ready.len() as u64, st.scheduled.len() as u64));
        for ((_, seq), e) in &st.scheduled {
            assert_eq!(*seq, e.seq, "a scheduled entry filed under another position");
        }

        let seqs: Vec<u64> = st.ready.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ready is not in seq order: {seqs:?}");

        if let Some((_, live)) = &self.journal {
            let held: BTreeSet<u64> = st
                .ready
                .iter()
                .chain(st.scheduled.values())
                .map(|e| e.seq)
                .chain(st.consumers.iter().flat_map(|c| c.unacked.iter().map(|u| u.entry.seq)))
                .collect();
            assert_eq!(live, &held, "the journal would replay other messages than the queue holds");
        }
        let mut ids = HashSet::new();
        for e in st.ready.iter().chain(st.scheduled.values()) {
            assert!(ids.insert(e.msg.id), "{:?} is ready (or scheduled) twice", e.msg.id);
        }
        for c in &st.consumers {
            for u in &c.unacked {
                assert!(
                    ids.insert(u.entry.msg.id),
                    "{:?} is both ready and in flight, or twice",
                    u.entry.msg.id
                );
                assert!(!u.entry.credited, "an unacked delivery holds a publisher credit");
            }
            let window = if c.prefetch == 0 { st.spec.depth_max } else { c.prefetch as usize };
            assert!(c.in_flight() <= window, "consumer holds {} over its prefetch {window}", c.in_flight());
            let tags: Vec<u64> = c.unacked.iter().map(|u| u.tag).collect();
            assert!(tags.windows(2).all(|w| w[0] < w[1]), "unacked tags out of order: {tags:?}");
            assert!(tags.last().is_none_or(|&t| t <= c.next_tag));
        }

        let held = || st.ready.iter().chain(st.scheduled.values());
        let fresh = held().filter(|e| e.deliveries == 0).count();
        let credited = held().filter(|e| e.credited).count();
        match self.credits {
            None => assert!(fresh <= st.spec.depth_max, "drop-head holds {fresh} never-delivered messages"),
            Some(credits) => {
                assert_eq!(credits + credited, st.spec.depth_max, "publisher credits leaked or doubled")
            }
        }
    }

    /// Deletes the queue, as expiry or auto-delete do, and checks that it ends empty and balanced.
    fn delete(&mut self) {
        self.st.delete();
        self.collect();
        self.check();
        let stats = self.st.stats();
        assert!(stats.deleted);
        assert_eq!((stats.ready, stats.in_flight, stats.consumers), (0, 0, 0), "{stats:?}");
        if let Some(credits) = self.credits {
            assert_eq!(credits, self.st.spec.depth_max, "a deleted queue kept publisher credits");
        }
    }
}

fn run(spec: QueueSpec, ops: &[Op], delete: bool) {
    run_with(Harness::new(spec, Instant::now()), ops, delete);
}

fn run_with(mut h: Harness, ops: &[Op], delete: bool) {
    for op in ops {
        h.apply(op);
        h.collect();
        h.check();
    }
    if delete {
        h.delete();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn queue_state_keeps_its_invariants(
        spec in spec(),
        ops in prop::collection::vec(op(), 1..160),
    ) {
        run(spec, &ops, false);
    }

    /// A durable queue's journal (enqueue records, minus the tombstones of what left) holds
    /// exactly the messages the queue holds, ready or unacked, after every step: what a crash then
    /// would replay.
    #[test]
    fn a_durable_queue_journals_exactly_what_it_holds(
        spec in spec(),
        ops in prop::collection::vec(op(), 1..160),
        delete in any::<bool>(),
    ) {
        run_with(Harness::journaled(spec, Instant::now()), &ops, delete);
    }

    #[test]
    fn a_deleted_queue_ends_empty_and_balanced(
        spec in spec(),
        ops in prop::collection::vec(op(), 1..80),
    ) {
        run(spec, &ops, true);
    }
}

#[test]
fn a_requeued_message_returns_ahead_of_younger_ones() {
    let base = Instant::now();
    let mut h = Harness::new(QueueSpec::default(), base);
    for _ in 0..3 {
        h.apply(&Op::Publish);
    }
    h.apply(&Op::AddConsumer { prefetch: 1 });
    let first = h.st.dispatch(base).expect("a ready message and a consumer with room");
    h.st.settle(
        first.consumer,
        0,
        SettleOp::Nack { tag: DeliveryTag(first.tag.0), multiple: false, requeue: true },
        base,
    )
    .unwrap();
    let again = h.st.dispatch(base).expect("the requeued message");
    assert_eq!((again.msg.id, again.delivery_count), (first.msg.id, 2));
    h.collect();
    h.check();
}

/// A harness with `n` ready messages and one consumer that holds the first of them.
fn one_in_flight(spec: QueueSpec, n: usize) -> Harness {
    let mut h = Harness::new(spec, Instant::now());
    for _ in 0..n {
        h.apply(&Op::Publish);
    }
    h.apply(&Op::AddConsumer { prefetch: 1 });
    h.apply(&Op::Dispatch);
    h.collect();
    h.check();
    h
}

// Deliberately broken states: each check above must catch its violation.

#[test]
#[should_panic(expected = "not conserved")]
fn check_catches_a_message_that_vanishes() {
    let mut h = one_in_flight(QueueSpec::default(), 3);
    h.st.ready.pop_back();
    h.check();
}

#[test]
#[should_panic(expected = "the journal would replay other messages")]
fn check_catches_an_ack_that_is_not_tombstoned() {
    let base = Instant::now();
    let mut h = Harness::journaled(QueueSpec::default(), base);
    h.apply(&Op::Publish);
    h.apply(&Op::AddConsumer { prefetch: 1 });
    h.apply(&Op::Dispatch);
    h.apply(&Op::Ack { consumer: 0, pick: 0, multiple: true, bogus: false });
    // The actor would tombstone these; forgetting them leaves an acked message in the journal.
    h.st.take_left();
    h.collect();
    h.check();
}

#[test]
#[should_panic(expected = "ready is not in seq order")]
fn check_catches_ready_out_of_order() {
    let mut h = one_in_flight(QueueSpec::default(), 3);
    h.st.ready.swap(0, 1);
    h.check();
}

#[test]
#[should_panic(expected = "both ready and in flight")]
fn check_catches_a_message_both_ready_and_in_flight() {
    let mut h = one_in_flight(QueueSpec::default(), 3);
    let held = h.st.consumers[0].unacked[0].entry.clone();
    let dropped = h.st.ready.pop_back().expect("ready messages");
    h.st.ready.push_back(Entry { seq: dropped.seq, ..held });
    h.check();
}

#[test]
#[should_panic(expected = "over its prefetch")]
fn check_catches_a_consumer_over_its_prefetch() {
    let mut h = one_in_flight(QueueSpec::default(), 3);
    h.st.consumers[0].prefetch = 2;
    h.apply(&Op::Dispatch);
    h.st.consumers[0].prefetch = 1;
    h.check();
}

#[test]
#[should_panic(expected = "drop-head holds")]
fn check_catches_drop_head_over_depth_max() {
    let mut h = Harness::new(QueueSpec::default().depth_max(2).overflow(Overflow::DropHead), Instant::now());
    h.st.spec.depth_max = 3;
    h.apply(&Op::Publish);
    h.apply(&Op::Publish);
    h.apply(&Op::Publish);
    h.st.spec.depth_max = 2;
    h.check();
}

#[test]
#[should_panic(expected = "at-most-once dispatched")]
fn check_catches_an_at_most_once_message_dispatched_twice() {
    let spec = QueueSpec::default().delivery(DeliveryMode::AtMostOnce);
    let mut h = Harness::new(spec, Instant::now());
    h.apply(&Op::Publish);
    h.apply(&Op::AddConsumer { prefetch: 0 });
    let d = h.st.dispatch(h.now).expect("a dispatch");
    h.dispatched(&d);
    h.dispatched(&d);
}

#[test]
#[should_panic(expected = "first deliveries out of enqueue order")]
fn check_catches_first_deliveries_out_of_order() {
    let mut h = one_in_flight(QueueSpec::default(), 3);
    h.st.consumers[0].prefetch = 0;
    h.st.ready.swap(0, 1);
    h.apply(&Op::Pump);
}

#[test]
#[should_panic(expected = "dead letters counted differ")]
fn check_catches_a_dead_letter_counted_but_not_handed_over() {
    let spec = QueueSpec::default().dead_letter(DEAD_LETTER);
    let mut h = one_in_flight(spec, 1);
    let tag = h.st.consumers[0].unacked[0].tag;
    let id = h.st.consumers[0].id;
    h.st.settle(id, 0, SettleOp::Nack { tag: DeliveryTag(tag), multiple: false, requeue: false }, h.now)
        .unwrap();
    h.st.effects.clear();
    h.collect();
    h.check();
}

/// Every queued message has one entry per queue it waits in; the memory benchmark's per-message
/// figure is made of these (and the message and payload).
#[test]
fn a_queue_entry_stays_small() {
    assert!(size_of::<Entry>() <= 32, "Entry is {} bytes", size_of::<Entry>());
}
