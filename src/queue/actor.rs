//! The queue actor: turns messages into calls on [`QueueState`] and carries out its effects.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use actix::dev::SendError;
use actix::prelude::*;
use smallvec::SmallVec;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::{Duration, Instant};

use super::state::{Dispatch, Effect, Place, QueueState, SettleError, SettleOp, Stamp};
use super::{InboxReceiver, Journal, QueueHost, TrySendError, CONTROL_MAILBOX_MAX, INBOX_BATCH_MAX, NO_SLOT};
use crate::ids::{ConsumerId, QueueId};
use crate::message::Message;
use crate::probe::{FaultKind, ProbeRef, What};
use crate::protocol::{
    Delete, Deliver, DeliverItem, Drain, Enqueue, GetStats, ManualSettle, QueueGone, Refuse, Restarted,
    Settle, Shut, Subscribe, Unsubscribe, WhenIdle,
};
use crate::stats::QueueStats;

/// Runs the dispatch loop once the mailbox has been drained (coalesced).
#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

/// One pump's deliveries to one consumer, and where each message stood, should the delivery fail.
struct Batch {
    consumer: ConsumerId,
    epoch: u32,
    items: Vec<DeliverItem>,
    places: Vec<Place>,
}

/// The queue actor.
pub(crate) struct QueueActor {
    id: QueueId,
    /// The receiving end of the data inbox; taken by the inbox stream when the actor starts, and
    /// drained directly before stats and deletion.
    inbox: Rc<InboxReceiver>,
    state: QueueState,
    /// Where dead letters go, and who learns of the deletion; weak, so that the broker can be freed.
    host: Weak<dyn QueueHost>,
    credits: Option<Arc<Semaphore>>,
    counters: Arc<super::SideCounters>,
    subscribers: Vec<(ConsumerId, Recipient<Deliver>)>,
    drains: BTreeMap<ConsumerId, oneshot::Sender<()>>,
    /// Waiters for the queue to be idle.
    idle_waiters: Vec<(oneshot::Sender<bool>, bool)>,
    /// Dead letters waiting for room in their dead-letter queue's inbox.
    dead_letters_pending: usize,
    /// The one pending timer and when it fires: one timer per actor, moved only when an earlier
    /// deadline appears, so actix never rescans a pile of timers.
    timer: Option<(Instant, SpawnHandle)>,
    idle_since: Option<Instant>,
    had_consumer: bool,
    deleted: bool,
    pump_scheduled: bool,
    /// Whether the state reads the clock on enqueue and dispatch (TTL, ack deadlines); when not, the
    /// actor passes it the start time and spares a clock read per message.
    timed: bool,
    started: Instant,
    /// Dispatches of the current pump, by consumer, reused between pumps.
    outbox: Vec<Batch>,
    /// The simulator's probe, when the queue runs in one.
    probe: ProbeRef,
    /// A durable queue's journal: delivered records and tombstones are written here.
    journal: Option<Arc<Journal>>,
}

/// What a queue actor shares with its publishers' side (its [`QueueHandle`](super::QueueHandle)).
pub(crate) struct Shared {
    pub(crate) credits: Option<Arc<Semaphore>>,
    pub(crate) counters: Arc<super::SideCounters>,
    pub(crate) journal: Option<Arc<Journal>>,
}

impl QueueActor {
    pub(crate) fn new(
        id: QueueId,
        inbox: InboxReceiver,
        state: QueueState,
        host: Weak<dyn QueueHost>,
        probe: ProbeRef,
        shared: Shared,
    ) -> Self {
        let Shared { credits, counters, journal } = shared;
        let state = state.traced(probe.clone());
        let spec = state.spec();
        let timed = spec.message_ttl.is_some() || spec.delivery == crate::topology::DeliveryMode::AtLeastOnce;
        let started = Instant::now();
        Self {
            id,
            inbox: Rc::new(inbox),
            timed,
            started,
            pump_scheduled: false,
            outbox: Vec::new(),
            probe,
            state,
            host,
            credits,
            counters,
            subscribers: Vec::new(),
            drains: BTreeMap::new(),
            idle_waiters: Vec::new(),
            dead_letters_pending: 0,
            timer: None,
            idle_since: Some(started),
            had_consumer: false,
            deleted: false,
            journal,
        }
    }

    /// The time to pass to the state: the clock when the state needs it, the start time otherwise.
    fn now(&self) -> Instant {
        if self.timed || self.state.scheduled_len() > 0 {
            Instant::now()
        } else {
            self.started
        }
    }

    /// Runs the dispatch loop after the messages waiting in the mailbox, so that one pump hands each
    /// subscriber a batch.
    fn schedule_pump(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.notify(Pump);
        }
    }

    /// Dispatches what it can, one batch per subscriber, then carries out effects and moves the timer.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        let mut outbox = std::mem::take(&mut self.outbox);
        while let Some(d) = self.state.dispatch(now) {
            self.trace_dispatch(&d);
            let at = match outbox.iter().position(|b| b.consumer == d.consumer) {
                Some(at) => at,
                None => {
                    outbox.push(Batch {
                        consumer: d.consumer,
                        epoch: d.epoch,
                        items: Vec::new(),
                        places: Vec::new(),
                    });
                    outbox.len() - 1
                }
            };
            let batch = &mut outbox[at];
            // Batches are reused between pumps; a consumer's epoch changes when it restarts.
            batch.epoch = d.epoch;
            let topic = d.topic();
            batch.items.push(DeliverItem { tag: d.tag, msg: d.msg, delivery_count: d.delivery_count, topic });
            batch.places.push(d.place);
        }
        for batch in outbox.iter_mut().filter(|b| !b.items.is_empty()) {
            self.deliver(batch, now, ctx);
        }
        outbox.retain(|b| self.subscribers.iter().any(|(id, _)| *id == b.consumer));
        self.outbox = outbox;
        if self.auto_delete_due() {
            self.delete(ctx);
            return;
        }
        self.after(ctx);
    }

    /// Sends one subscriber its batch; a full or closed mailbox gives every dispatch back.
    fn deliver(&mut self, batch: &mut Batch, now: Instant, ctx: &mut Context<Self>) {
        let mut items = std::mem::take(&mut batch.items);
        if self.probe.is_some() {
            items = self.inject_link_faults(batch, items, ctx);
        }
        let recipient = self.subscribers.iter().find(|(id, _)| *id == batch.consumer).map(|(_, r)| r);
        // A durable at-least-once queue records each delivery's count once it is on its way.
        let delivered: Option<Vec<(u64, u32)>> =
            self.journal.as_ref().filter(|_| self.at_least_once()).map(|_| {
                items
                    .iter()
                    .zip(&batch.places)
                    .map(|(item, place)| (place.seq, item.delivery_count))
                    .collect()
            });
        let (items, gone) = match recipient {
            None => (items, true),
            Some(r) => match r.try_send(Deliver { epoch: batch.epoch, items }) {
                Ok(()) => {
                    batch.places.clear();
                    if let (Some(journal), Some(delivered)) = (&self.journal, delivered) {
                        journal.delivered(&delivered);
                    }
                    return;
                }
                Err(SendError::Full(d)) => (d.items, false),
                Err(SendError::Closed(d)) => (d.items, true),
            },
        };
        if self.probe.is_some() {
            // Faults reshaped the batch, so it cannot be undone in order: treat it as lost on the way
            // (at least once, the ack deadline brings it back).
            let mut tags: Vec<crate::ids::DeliveryTag> = Vec::new();
            for item in &items {
                if !tags.contains(&item.tag) {
                    tags.push(item.tag);
                    self.state.lost_in_transit(batch.consumer, &item.msg);
                }
            }
            batch.places.clear();
        } else {
            self.undo(batch, items);
        }
        if gone {
            // The subscriber actor is gone without unsubscribing: treat it as a consumer that left.
            self.remove(batch.consumer, now);
        }
    }

    /// Whether a fault drops this settlement on the ack link (acks and nacks; at-most-once handlers'
    /// reports are auto-acks and never cross it).
    fn ack_lost(&self, op: &SettleOp) -> bool {
        let Some(probe) = &self.probe else { return false };
        let on_the_wire = matches!(op, SettleOp::Ack { .. } | SettleOp::Nack { .. });
        let lost = on_the_wire && probe.strikes(FaultKind::AckLoss);
        if lost {
            probe.fault(FaultKind::AckLoss, None, Some(self.state.name()));
        }
        lost
    }

    /// Records a dispatch in a simulation's history, in the order the queue hands messages out.
    fn trace_dispatch(&self, d: &Dispatch) {
        let Some(probe) = &self.probe else { return };
        probe.record(What::Deliver {
            msg: d.msg.id,
            queue: self.state.name().to_owned(),
            consumer: d.consumer.0,
            tag: d.tag.0,
            attempt: d.delivery_count,
        });
    }

    /// Drops, duplicates and delays deliveries on their way to the subscriber, as the fault plan says.
    /// A dropped at-least-once delivery stays unacked and comes back after the ack deadline; a dropped
    /// at-most-once one is lost, and counted.
    fn inject_link_faults(
        &mut self,
        batch: &mut Batch,
        items: Vec<DeliverItem>,
        ctx: &mut Context<Self>,
    ) -> Vec<DeliverItem> {
        let probe = self.probe.clone().expect("called in simulation");
        let queue = self.state.name().to_owned();
        let mut kept = Vec::with_capacity(items.len());
        let mut places = Vec::with_capacity(items.len());
        for (item, place) in items.into_iter().zip(std::mem::take(&mut batch.places)) {
            if probe.strikes(FaultKind::Drop) {
                probe.fault(FaultKind::Drop, Some(item.msg.id), Some(&queue));
                self.state.lost_in_transit(batch.consumer, &item.msg);
                continue;
            }
            if probe.strikes(FaultKind::Delay) {
                probe.fault(FaultKind::Delay, Some(item.msg.id), Some(&queue));
                self.send_later(batch.consumer, batch.epoch, item, probe.delay(), ctx);
                continue;
            }
            if probe.strikes(FaultKind::Duplicate) {
                probe.fault(FaultKind::Duplicate, Some(item.msg.id), Some(&queue));
                let copy = DeliverItem {
                    tag: item.tag,
                    msg: item.msg.clone(),
                    delivery_count: item.delivery_count,
                    topic: item.topic,
                };
                kept.push(copy);
                places.push(place);
            }
            kept.push(item);
            places.push(place);
        }
        batch.places = places;
        kept
    }

    fn send_later(
        &mut self,
        consumer: ConsumerId,
        epoch: u32,
        item: DeliverItem,
        delay: Duration,
        ctx: &mut Context<Self>,
    ) {
        ctx.run_later(delay, move |act, _| {
            let msg = item.msg.clone();
            let recipient = act.subscribers.iter().find(|(id, _)| *id == consumer).map(|(_, r)| r);
            let sent = recipient.is_some_and(|r| r.try_send(Deliver { epoch, items: vec![item] }).is_ok());
            if !sent {
                // The subscriber is gone or full: at least once, the ack deadline brings it back.
                act.state.lost_in_transit(consumer, &msg);
            }
        });
    }

    fn undo(&mut self, batch: &mut Batch, items: Vec<DeliverItem>) {
        let places = std::mem::take(&mut batch.places);
        for (item, place) in items.into_iter().zip(places).rev() {
            let DeliverItem { tag, msg, delivery_count, .. } = item;
            let (consumer, epoch) = (batch.consumer, batch.epoch);
            self.state.undo_dispatch(Dispatch { consumer, epoch, tag, msg, delivery_count, place });
        }
    }

    /// Carries out the state's effects after a message was handled; every handler ends here or in
    /// `pump`, so conservation is checked after every transition in debug builds.
    fn after(&mut self, ctx: &mut Context<Self>) {
        self.state.debug_assert_conserved();
        let freed = self.state.take_credits_freed();
        if let (true, Some(credits)) = (freed > 0, &self.credits) {
            credits.add_permits(freed);
        }
        let effects: SmallVec<[Effect; 4]> = self.state.take_effects().collect();
        for effect in effects {
            match effect {
                Effect::DeadLetter { msg, refused, left } => self.dead_letter(msg, refused, left, ctx),
            }
        }
        if let Some(journal) = &self.journal {
            let left = self.state.take_left();
            if !left.is_empty() {
                journal.settled(&left);
            }
            let retried = self.state.take_retried();
            if !retried.is_empty() {
                let now = Instant::now();
                let retried: Vec<(u64, u32, Duration)> = retried
                    .into_iter()
                    .map(|(slot, count, due)| (slot, count, due.saturating_duration_since(now)))
                    .collect();
                journal.retried(&retried);
            }
        }
        self.finish_drains();
        self.answer_idle_waiters(ctx);
        self.arm_timer(ctx);
    }

    /// Idle: nothing waits in the inbox or for a dead-letter queue, nothing is in flight, and
    /// nothing is ready unless no subscriber could take it.
    fn is_idle(&self, scheduled: bool) -> bool {
        let held = self.state.ready_len() + if scheduled { self.state.scheduled_len() } else { 0 };
        let stuck_or_empty = held == 0 || self.state.consumer_count() == 0;
        self.inbox.is_empty()
            && self.dead_letters_pending == 0
            && self.state.in_flight() == 0
            && stuck_or_empty
    }

    fn answer_idle_waiters(&mut self, _ctx: &mut Context<Self>) {
        if self.idle_waiters.is_empty() {
            return;
        }
        let (idle, busy): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.idle_waiters).into_iter().partition(|(_, s)| self.is_idle(*s));
        self.idle_waiters = busy;
        for (waiter, _) in idle {
            let _ = waiter.send(false);
        }
    }

    /// Passes a dead letter to the dead-letter queue; `left` is its slot in this queue's journal,
    /// tombstoned once the copy is in its target (journaled there first when the target is durable).
    fn dead_letter(
        &mut self,
        msg: Arc<Message>,
        refused: bool,
        left: Option<(u64, bool)>,
        ctx: &mut Context<Self>,
    ) {
        let host = self.host.upgrade();
        let target = self.state.spec().dead_letter.as_deref().and_then(|name| host?.dead_letter_queue(name));
        let Some(target) = target else {
            self.state.dead_letter_lost(refused);
            self.settle_in_journal(left);
            return;
        };
        // Under `fsync = "always"` the copy's enqueue record is awaited before this queue's
        // tombstone is written, so that a power loss cannot keep the tombstone and lose the copy.
        let mut synced_at = None;
        let slot = match target.journal.as_ref().filter(|j| !j.is_deleted()) {
            None => NO_SLOT,
            Some(journal) => match journal.enqueue_payload(&msg, None) {
                Ok((slot, offset)) => {
                    if journal.fsync() == tubemail_log::Fsync::Always {
                        synced_at = Some((journal.clone(), offset));
                    }
                    slot
                }
                Err(e) => {
                    // Kept in this queue's journal (not tombstoned): it comes back here at the next start.
                    tracing::warn!(queue = %target.name, error = %e, "a dead-letter journal refused a message");
                    self.state.dead_letter_lost(refused);
                    return;
                }
            },
        };
        let target_journal = target.journal.clone();
        match target.inbox.try_send(Enqueue { msg, credited: false, stamp: Stamp::slot(slot) }) {
            Ok(()) => self.settle_after(left, synced_at, ctx),
            Err(TrySendError::Full(e)) => {
                // The dead-letter queue's inbox is full: wait for room without blocking this queue.
                // Pending sends are bounded by the messages this queue held.
                self.dead_letters_pending += 1;
                ctx.spawn(async move { target.inbox.send(e).await.is_ok() }.into_actor(self).map(
                    move |sent, act, ctx| {
                        act.dead_letters_pending -= 1;
                        if sent {
                            act.settle_after(left, synced_at, ctx);
                        } else {
                            act.state.dead_letter_lost(refused);
                            if let Some(j) = &target_journal {
                                j.settled(&[(slot, false)]);
                            }
                            act.settle_in_journal(left);
                        }
                        act.answer_idle_waiters(ctx);
                        act.stop_when_done(ctx);
                    },
                ));
            }
            Err(TrySendError::Closed(_)) => {
                self.state.dead_letter_lost(refused);
                if let Some(j) = &target_journal {
                    j.settled(&[(slot, false)]);
                }
                self.settle_in_journal(left);
            }
        }
    }

    /// Tombstones a message that left this durable queue once `synced_at` (its copy's enqueue
    /// record in a dead-letter queue's journal) is acked; at once without one. A stop in between
    /// leaves the message in both journals: at least once.
    fn settle_after(
        &mut self,
        left: Option<(u64, bool)>,
        synced_at: Option<(Arc<Journal>, u64)>,
        ctx: &mut Context<Self>,
    ) {
        match (synced_at, left.is_some() && self.journal.is_some()) {
            (Some((journal, offset)), true) => {
                ctx.spawn(async move { journal.acked(offset).await.is_ok() }.into_actor(self).map(
                    move |synced, act, _| {
                        if synced {
                            act.settle_in_journal(left);
                        }
                    },
                ));
            }
            _ => self.settle_in_journal(left),
        }
    }

    /// Tombstones a message that left this durable queue.
    fn settle_in_journal(&self, left: Option<(u64, bool)>) {
        if let (Some(journal), Some(left)) = (&self.journal, left) {
            journal.settled(&[left]);
        }
    }

    fn at_least_once(&self) -> bool {
        self.state.spec().delivery == crate::topology::DeliveryMode::AtLeastOnce
    }

    fn enqueue(&mut self, msg: Enqueue) {
        let timed =
            self.state.spec().message_ttl.is_some() || msg.stamp.delay != crate::protocol::Delay::NONE;
        let now = if timed { Instant::now() } else { self.started };
        // Dead letters take a credit like publishes do, so that `depth_max` bounds both.
        let credited = msg.credited || self.take_credit();
        if self.credits.is_some() && !credited {
            self.state.refuse_dead_letter(&msg.msg, msg.stamp.slot);
        } else {
            self.state.enqueue_stamped(msg.msg, credited, now, msg.stamp);
        }
    }

    /// Takes in what waits in the inbox, so that stats and deletion see every accepted message.
    fn drain_inbox(&mut self) {
        let inbox = self.inbox.clone();
        while let Some(msg) = inbox.try_recv() {
            self.enqueue(msg);
        }
    }

    fn take_credit(&self) -> bool {
        self.credits.as_ref().and_then(|c| c.try_acquire().ok()).map(|permit| permit.forget()).is_some()
    }

    fn finish_drains(&mut self) {
        if self.drains.is_empty() {
            return;
        }
        let done: Vec<ConsumerId> = self
            .drains
            .keys()
            .copied()
            .filter(|&c| self.state.consumer_in_flight(c).is_none_or(|n| n == 0))
            .collect();
        for consumer in done {
            if let Some(tx) = self.drains.remove(&consumer) {
                let _ = tx.send(());
            }
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let expiry = match (self.state.spec().expires, self.idle_since) {
            (Some(after), Some(since)) => Some(since + after),
            _ => None,
        };
        match (self.state.next_deadline(), expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(wake) = self.next_wake() else { return };
        if let Some((at, handle)) = self.timer {
            if at <= wake {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = wake.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.on_timer(ctx);
        });
        self.timer = Some((wake, handle));
    }

    fn on_timer(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let (Some(after), Some(since)) = (self.state.spec().expires, self.idle_since) {
            if now >= since + after {
                tracing::debug!(queue = %self.state.name().to_owned(), "queue expired unused");
                self.delete(ctx);
                return;
            }
        }
        self.state.expire(now);
        self.pump(ctx);
    }

    fn remove(&mut self, consumer: ConsumerId, now: Instant) -> (u64, u64) {
        self.subscribers.retain(|(id, _)| *id != consumer);
        let released = self.state.remove_consumer(consumer, now).unwrap_or((0, 0));
        if self.state.consumer_count() == 0 {
            self.idle_since = Some(Instant::now());
        }
        released
    }

    /// Auto-delete queues go when their last consumer has left (if they ever had one).
    fn auto_delete_due(&self) -> bool {
        self.state.spec().auto_delete && self.had_consumer && self.state.consumer_count() == 0
    }

    fn delete(&mut self, ctx: &mut Context<Self>) -> QueueStats {
        if !self.deleted {
            self.close();
            // Dead letters made before the deletion are passed on, not dropped with the queue.
            self.after(ctx);
            self.state.delete();
            if let Some(journal) = &self.journal {
                // Deleting a durable queue deletes its journal.
                journal.delete();
            }
            self.after(ctx);
            let stats = self.stats();
            if let Some(probe) = &self.probe {
                probe.record(What::QueueDeleted { queue: self.state.name().to_owned() });
            }
            if let Some(host) = self.host.upgrade() {
                host.queue_deleted(self.id, stats);
            }
            self.stop_when_done(ctx);
        }
        self.stats()
    }

    /// Closes the inbox (taking in what publishers placed before the close), releases publishers
    /// waiting for credit and answers waiters; [`QueueActor::stop_when_done`] stops the actor after.
    fn close(&mut self) {
        self.deleted = true;
        if crate::probe::bug(&self.probe, |b| b.delete_drains_before_close) {
            // Broken on purpose: what a publisher places after this drain is never taken in.
            self.drain_inbox();
        } else {
            self.inbox.close();
            self.drain_inbox();
            if let Some(credits) = &self.credits {
                credits.close();
            }
        }
        self.subscribers.clear();
        for (_, done) in std::mem::take(&mut self.drains) {
            let _ = done.send(());
        }
        for (waiter, _) in self.idle_waiters.drain(..) {
            let _ = waiter.send(true);
        }
    }

    /// A closed queue stops once no dead letter of its own waits for room in a dead-letter queue's
    /// inbox: stopping drops the actor's pending futures, and with them those dead letters.
    fn stop_when_done(&mut self, ctx: &mut Context<Self>) {
        if self.deleted && self.dead_letters_pending == 0 {
            ctx.stop();
        }
    }

    fn stats(&self) -> QueueStats {
        let mut stats = self.state.stats();
        stats.refused += self.counters.refused.load(Ordering::Relaxed);
        stats.undecodable = self.counters.undecodable.load(Ordering::Relaxed);
        if let Some(journal) = &self.journal {
            stats.journal_bytes = journal.bytes();
        }
        stats
    }
}

impl Actor for QueueActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CONTROL_MAILBOX_MAX);
        ctx.add_stream(Inbox(self.inbox.clone()));
        self.arm_timer(ctx);
    }
}

impl StreamHandler<Vec<Enqueue>> for QueueActor {
    fn handle(&mut self, batch: Vec<Enqueue>, ctx: &mut Self::Context) {
        if let Some(probe) = self.probe.clone() {
            if probe.strikes(FaultKind::QueueRestart) {
                let queue = self.state.name().to_owned();
                probe.fault(FaultKind::QueueRestart, None, Some(&queue));
                probe.record(What::QueueRestart { queue });
                self.state.restart();
            }
        }
        for msg in batch {
            self.enqueue(msg);
        }
        self.pump(ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // Every sender is gone: the broker is being dropped. The actor stops with its arbiter.
    }
}

impl Handler<Refuse> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Refuse, ctx: &mut Self::Context) {
        self.state.dead_letter_refused(msg.msg, Instant::now());
        self.after(ctx);
    }
}

impl Handler<Subscribe> for QueueActor {
    type Result = Result<(), QueueGone>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Self::Context) -> Self::Result {
        if self.deleted {
            return Err(QueueGone);
        }
        self.state.add_consumer(msg.consumer, msg.prefetch);
        self.subscribers.push((msg.consumer, msg.recipient));
        self.had_consumer = true;
        self.idle_since = None;
        self.pump(ctx);
        Ok(())
    }
}

impl Handler<Settle> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, ctx: &mut Self::Context) {
        let now = Instant::now();
        for op in msg.ops {
            if self.ack_lost(&op) {
                continue;
            }
            match self.state.settle(msg.consumer, msg.epoch, op, now) {
                Ok(()) | Err(SettleError::Stale) => {}
                Err(e) => {
                    tracing::debug!(queue = %self.state.name().to_owned(), error = %e, "late settlement")
                }
            }
        }
        self.after(ctx);
        self.schedule_pump(ctx);
    }
}

impl Handler<ManualSettle> for QueueActor {
    type Result = Result<(), SettleError>;

    fn handle(&mut self, msg: ManualSettle, ctx: &mut Self::Context) -> Self::Result {
        let result = self.state.settle(msg.consumer, msg.epoch, msg.op, Instant::now());
        self.pump(ctx);
        result
    }
}

impl Handler<Restarted> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Restarted, ctx: &mut Self::Context) {
        let now = Instant::now();
        let old_epoch = msg.epoch.wrapping_sub(1);
        for op in msg.ops {
            let _ = self.state.settle(msg.consumer, old_epoch, op, now);
        }
        self.state.consumer_restarted(msg.consumer, msg.epoch, now);
        self.pump(ctx);
    }
}

impl Handler<Drain> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: Drain, _ctx: &mut Self::Context) {
        match self.state.drain_consumer(msg.consumer) {
            Some(0) | None => {
                let _ = msg.done.send(());
            }
            Some(_) => {
                self.drains.insert(msg.consumer, msg.done);
            }
        }
    }
}

impl Handler<Unsubscribe> for QueueActor {
    type Result = MessageResult<Unsubscribe>;

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Self::Context) -> Self::Result {
        let released = self.remove(msg.consumer, Instant::now());
        if let Some(tx) = self.drains.remove(&msg.consumer) {
            let _ = tx.send(());
        }
        if self.auto_delete_due() {
            self.delete(ctx);
        } else {
            self.pump(ctx);
        }
        MessageResult(released)
    }
}

impl Handler<GetStats> for QueueActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _msg: GetStats, ctx: &mut Self::Context) -> Self::Result {
        self.drain_inbox();
        self.pump(ctx);
        MessageResult(self.stats())
    }
}

impl Handler<Delete> for QueueActor {
    type Result = MessageResult<Delete>;

    fn handle(&mut self, _msg: Delete, ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.delete(ctx))
    }
}

impl Handler<Shut> for QueueActor {
    type Result = MessageResult<Shut>;

    fn handle(&mut self, _msg: Shut, ctx: &mut Self::Context) -> Self::Result {
        if !self.deleted {
            self.close();
            self.after(ctx);
            self.stop_when_done(ctx);
        }
        MessageResult(self.stats())
    }
}

impl Handler<WhenIdle> for QueueActor {
    type Result = ();

    fn handle(&mut self, msg: WhenIdle, ctx: &mut Self::Context) {
        self.drain_inbox();
        self.pump(ctx);
        if self.deleted || self.is_idle(msg.scheduled) {
            let _ = msg.done.send(true);
        } else {
            self.idle_waiters.push((msg.done, msg.scheduled));
        }
    }
}

impl Handler<Pump> for QueueActor {
    type Result = ();

    fn handle(&mut self, _: Pump, ctx: &mut Self::Context) {
        self.pump_scheduled = false;
        self.pump(ctx);
    }
}

/// The data inbox as a stream of batches, so that actix calls the actor once per batch.
struct Inbox(Rc<InboxReceiver>);

impl futures::Stream for Inbox {
    type Item = Vec<Enqueue>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let mut batch = Vec::new();
        match self.0.poll_recv_many(cx, &mut batch, INBOX_BATCH_MAX) {
            std::task::Poll::Ready(0) => std::task::Poll::Ready(None),
            std::task::Poll::Ready(_) => std::task::Poll::Ready(Some(batch)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
