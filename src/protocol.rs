//! The actors' protocol: every message the queue, topic and subscriber actors exchange, in one place,
//! so that no actor's module needs another's.
//!
//! Data reaches a queue through its inbox ([`Enqueue`]), never through an actor mailbox; every other
//! message here is control, sent with `send` (answered) or `try_send` (bounded), never `do_send`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use smallvec::SmallVec;
use tokio::sync::oneshot;

use crate::ids::{ConsumerId, DeliveryTag, QueueId};
use crate::message::Message;
use crate::routing::RoutingError;
use crate::stats::QueueStats;

// The queue's messages.

/// How a consumer settles deliveries.
#[derive(Debug, Clone)]
pub(crate) enum SettleOp {
    /// Acks `tag`, or with `multiple` every unsettled tag up to it.
    Ack { tag: DeliveryTag, multiple: bool },
    /// Nacks `tag` (or every unsettled tag up to it): requeued, or dead-lettered as `rejected`.
    Nack { tag: DeliveryTag, multiple: bool, requeue: bool },
    /// At-most-once: this many handlers finished.
    Processed(u32),
    /// At-most-once: a handler rejected this message; dead-letter it as `rejected`.
    Rejected(Arc<Message>),
    /// Puts `tag` back, ready again once `after` has passed (a retry with a delay), or dead-letters
    /// it past the delivery limit.
    Retry { tag: DeliveryTag, after: Duration },
}

/// Why a manual settlement failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The queue refused it (unknown tag, a consumer that left or restarted).
    #[error(transparent)]
    Refused(#[from] SettleError),
    /// The queue has been deleted or the broker stopped.
    #[error("the queue is gone")]
    QueueGone,
    /// The remote broker's connection or channel was lost before the settlement reached it: the
    /// remote broker redelivers the message (at least once).
    #[error("the remote broker's channel was lost; the delivery comes again")]
    Remote,
}

/// Why a settlement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    /// The tag is not an unsettled delivery of this consumer (never delivered, already settled, or
    /// redelivered after its ack deadline).
    #[error("delivery tag {} is not unsettled on this consumer", .0 .0)]
    UnknownTag(DeliveryTag),
    /// At most once: a report of `n` handled deliveries when none are outstanding (a queue restart
    /// forgot them).
    #[error("{0} deliveries reported handled, none outstanding")]
    NothingOutstanding(u32),
    /// The consumer is not subscribed (any more).
    #[error("consumer is not subscribed to this queue")]
    UnknownConsumer,
    /// The consumer restarted since the delivery; the delivery was already requeued.
    #[error("delivery belongs to an earlier incarnation of the consumer")]
    Stale,
}

/// A message for the queue (from a publisher, or a dead letter from another queue), through its inbox.
#[derive(Debug)]
pub(crate) struct Enqueue {
    pub(crate) msg: Arc<Message>,
    pub(crate) credited: bool,
    pub(crate) stamp: Stamp,
}

/// What travels beside a message to one queue: its journal slot there, when it may be delivered, and
/// the topic it was published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Its slot in a durable queue's journal, `NO_SLOT` otherwise.
    pub(crate) slot: u64,
    /// Not delivered before this long after its queue takes it (a delayed publish).
    pub(crate) delay: Delay,
    /// The topic it was published to, for per-topic counters ([`TopicIndex::NONE`] for dead letters
    /// and messages replayed from a journal).
    pub(crate) topic: TopicIndex,
}

impl Stamp {
    /// A copy with a journal slot, due at once, from no topic (a dead letter).
    pub(crate) fn slot(slot: u64) -> Self {
        Stamp { slot, delay: Delay::NONE, topic: TopicIndex::NONE }
    }
}

/// How long after its queue takes it a message may first be delivered (a delayed publish): in
/// milliseconds up to 2³¹ − 1 (24 days), in seconds beyond (the top bit set), rounded up, so that it
/// is never early; the copy reaches its queue microseconds after the publish. Four bytes, which fit
/// beside the topic and the credit: the inbox message stays 24 bytes. An `Option<Instant>` grew it
/// to 40 (fan-out at most once, one run: 3.26-3.38M deliveries/s before, 2.91-2.98M after), eight
/// bytes of nanoseconds to 32 (3.13-3.19M in that run without any due time; 3.24-3.28M with this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delay(u32);

impl Delay {
    /// At once.
    pub(crate) const NONE: Delay = Delay(0);
    const IN_SECONDS: u32 = 1 << 31;

    /// `delay`, rounded up to the millisecond (to the second past 24 days).
    pub(crate) fn of(delay: std::time::Duration) -> Self {
        if delay.is_zero() {
            return Delay::NONE;
        }
        let ms = delay.as_nanos().div_ceil(1_000_000);
        match u32::try_from(ms) {
            Ok(ms) if ms < Self::IN_SECONDS => Delay(ms),
            _ => {
                let s = delay.as_nanos().div_ceil(1_000_000_000);
                Delay(Self::IN_SECONDS | u32::try_from(s).unwrap_or(u32::MAX).min(Self::IN_SECONDS - 1))
            }
        }
    }

    /// The delay; `None` for at once.
    pub(crate) fn duration(self) -> Option<std::time::Duration> {
        match self.0 {
            0 => None,
            v if v & Self::IN_SECONDS != 0 => {
                Some(std::time::Duration::from_secs(u64::from(v & !Self::IN_SECONDS)))
            }
            ms => Some(std::time::Duration::from_millis(u64::from(ms))),
        }
    }
}

/// A topic's position in the broker's list of topics: two bytes, carried in the padding of every
/// queue entry and delivery, where a field on the shared [`Message`] cost eight bytes per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TopicIndex(pub(crate) u16);

impl TopicIndex {
    /// No topic (a dead letter, a message replayed from a journal, or a topic past the
    /// [`TopicIndex::MAX`]th).
    pub(crate) const NONE: TopicIndex = TopicIndex(u16::MAX);
    /// Topics counted per index; the later ones count under their queues only.
    pub(crate) const MAX: usize = u16::MAX as usize;

    /// The index of the `i`th topic, or [`TopicIndex::NONE`] past the maximum.
    pub(crate) fn of(i: usize) -> Self {
        u16::try_from(i).ok().filter(|&i| (i as usize) < Self::MAX).map_or(Self::NONE, TopicIndex)
    }
}

/// A publish refused under `reject-publish-dlx`, to be dead-lettered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Refuse {
    pub(crate) msg: Arc<Message>,
}

/// Deliveries to one subscriber, in tag order: everything one pump of the queue handed it.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Deliver {
    pub(crate) epoch: u32,
    pub(crate) items: Vec<DeliverItem>,
}

/// One delivery.
#[derive(Debug)]
pub(crate) struct DeliverItem {
    pub(crate) tag: DeliveryTag,
    pub(crate) msg: Arc<Message>,
    pub(crate) delivery_count: u32,
    /// The topic it was published to.
    pub(crate) topic: TopicIndex,
}

/// Registers a subscriber.
#[derive(Message)]
#[rtype(result = "Result<(), QueueGone>")]
pub(crate) struct Subscribe {
    pub(crate) consumer: ConsumerId,
    pub(crate) prefetch: u32,
    pub(crate) recipient: Recipient<Deliver>,
}

/// The queue has been deleted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueGone;

/// Settlements from a subscriber's handlers, batched.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Settle {
    pub(crate) consumer: ConsumerId,
    pub(crate) epoch: u32,
    pub(crate) ops: SmallVec<[SettleOp; 2]>,
}

/// One settlement from the manual-ack API, answered.
#[derive(Message)]
#[rtype(result = "Result<(), SettleError>")]
pub(crate) struct ManualSettle {
    pub(crate) consumer: ConsumerId,
    pub(crate) epoch: u32,
    pub(crate) op: SettleOp,
}

/// A subscriber's handler panicked; it restarts as `epoch` after settling `ops`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Restarted {
    pub(crate) consumer: ConsumerId,
    pub(crate) epoch: u32,
    pub(crate) ops: SmallVec<[SettleOp; 2]>,
}

/// Stops deliveries to a consumer; answers once it holds nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain {
    pub(crate) consumer: ConsumerId,
    pub(crate) done: oneshot::Sender<()>,
}

/// Removes a consumer; answers `(requeued, lost)`.
#[derive(Message)]
#[rtype(result = "(u64, u64)")]
pub(crate) struct Unsubscribe {
    pub(crate) consumer: ConsumerId,
}

/// Asks for the counters.
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub(crate) struct GetStats;

/// Deletes the queue.
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub(crate) struct Delete;

/// Stops the queue at shutdown: its inbox closes, what it holds stays counted as ready; answers its
/// final counters.
#[derive(Message)]
#[rtype(result = "QueueStats")]
pub(crate) struct Shut;

/// Answers once the queue is idle: nothing waits in its inbox, nothing is in flight, and nothing is
/// ready (nor, with `scheduled`, waiting for its due time) unless no subscriber could take it. The
/// answer says whether it was idle when asked.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WhenIdle {
    pub(crate) done: oneshot::Sender<bool>,
    /// Whether scheduled messages are work to wait for (`Broker::idle`: yes; shutdown: no, it
    /// leaves them for the next start).
    pub(crate) scheduled: bool,
}

// The topic's messages.

/// Adds a binding.
#[derive(Message)]
#[rtype(result = "Result<bool, RoutingError>")]
pub(crate) struct Bind {
    pub(crate) queue: QueueId,
    pub(crate) key: String,
    pub(crate) weight: u32,
}

/// Removes a binding.
#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct Unbind {
    pub(crate) queue: QueueId,
    pub(crate) key: String,
}

/// Removes every binding of a queue.
#[derive(Message)]
#[rtype(result = "usize")]
pub(crate) struct UnbindQueue(pub(crate) QueueId);

/// Stops the topic actor (at shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopTopic;

// The subscriber's messages.

/// Stops a subscriber actor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Stop;
