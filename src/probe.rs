//! The one seam between the runtime and a simulator: where a fault may strike, and what is recorded.
//!
//! The broker calls a [`Probe`] at the points where the simulator injects faults (a delivery on the
//! queue → subscriber link, a settlement on the way back, a subscriber before and after its handler,
//! a queue actor, a publisher's confirm) and where it records an event for the history. A broker
//! started without one (every production broker) skips each site with one predictable branch on a
//! `None`; `tubemail-sim` implements the trait with its seeded generator, fault plan and history.
//!
//! The vocabulary is typed and shared by the runtime, the history and the checkers: [`What`] happened,
//! [`FaultKind`] struck, a message was dropped for a [`DropReason`] or redelivered for a
//! [`RedeliverReason`], a handler ended with a [`HandlerOutcome`]. Each serializes to the snake-case
//! (fault kinds: kebab-case) name that histories have always carried, so recorded histories and their
//! hashes read the same.
//!
//! # Failure injection
//! A probe decides whether a fault strikes ([`Probe::strikes`]) and how long a delay or a slow handler
//! lasts; the runtime then carries the fault out and counts what it cost (a dropped at-most-once
//! delivery is `dropped.fault`, a restarted queue's messages `dropped.queue_restart`), so the broker's
//! conservation holds under every fault.
//!
//! # Broken variants
//! [`Bugs`] names deliberately broken variants of the runtime, so that the simulator's own tests can
//! prove its checkers catch real bugs. The runtime acts on them only when compiled with the `broken`
//! feature, which only `tubemail-sim`'s tests enable ([`BROKEN_VARIANTS_COMPILED`] says whether this
//! build has them); no application or release build of the command contains them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::message::DeathReason;

/// Whether this build of the runtime acts on [`Bugs`] (the `broken` feature).
pub const BROKEN_VARIANTS_COMPILED: bool = cfg!(feature = "broken");

/// Where faults strike and events are recorded; implemented by the simulator.
///
/// Called from the broker's actors on their own arbiter: an implementation must be cheap and must
/// not block. A deterministic simulator draws every answer from one seeded generator, in call order.
pub trait Probe: Send + Sync + fmt::Debug + 'static {
    /// Whether a fault of `kind` strikes now.
    fn strikes(&self, kind: FaultKind) -> bool;
    /// How long a [`FaultKind::Delay`] holds a delivery back.
    fn delay(&self) -> Duration;
    /// How long a [`FaultKind::Slow`] handler takes.
    fn slowness(&self) -> Duration;
    /// Records an event.
    fn record(&self, what: What);
    /// Records a fault, with the message and queue it struck.
    fn fault(&self, kind: FaultKind, msg: Option<MessageId>, queue: Option<&str>) {
        self.record(What::Fault { kind, msg, queue: queue.map(str::to_owned) });
    }
    /// The broken variants this run asks for (none by default).
    fn bugs(&self) -> Bugs {
        Bugs::default()
    }
}

/// A broker's probe: `None` in production.
pub(crate) type ProbeRef = Option<Arc<dyn Probe>>;

/// Whether the probe asks for the broken variant `bug`; always `false` without the `broken` feature,
/// so that the broken code paths are not even compiled.
#[inline(always)]
pub(crate) fn bug(probe: &ProbeRef, bug: impl Fn(&Bugs) -> bool) -> bool {
    #[cfg(feature = "broken")]
    {
        probe.as_ref().is_some_and(|p| bug(&p.bugs()))
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = (probe, bug);
        false
    }
}

/// Deliberately broken variants of the runtime, to prove that the checkers catch real bugs. Off in
/// every run unless a test turns one on; acted on only with the `broken` feature.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// A queue forgets to requeue what a crashed subscriber held.
    pub forget_requeue_on_crash: bool,
    /// The at-most-once path runs a duplicated delivery.
    pub at_most_once_redelivers: bool,
    /// A router skips the last matching binding.
    pub router_skips_binding: bool,
    /// A requeued message goes to the back of the queue.
    pub requeue_at_back: bool,
    /// A deleted queue takes in what its inbox holds but never closes it: a publish that gets room
    /// after that is confirmed and never counted.
    pub delete_drains_before_close: bool,
    /// `unsubscribe` returns without waiting for the subscriber to stop, which goes on running the
    /// handlers of deliveries already in its mailbox.
    pub unsubscribe_returns_early: bool,
    /// An at-least-once consumer group commits a record's offset before its handler runs (as at most
    /// once does), so that a crash in the handler skips the record. Consumer groups run without a
    /// probe: this one is turned on per thread, with [`set_thread_bugs`].
    pub group_commits_before_handling: bool,
}

#[cfg(feature = "broken")]
thread_local! {
    static THREAD_BUGS: std::cell::Cell<Bugs> = std::cell::Cell::new(Bugs::default());
}

/// Turns the broken variants `bugs` on for the code that runs on this thread and takes no probe
/// (consumer groups: their members run on the broker's arbiter, which is the simulator's one thread),
/// and returns what was on before. Without the `broken` feature, nothing is turned on. Per thread, so
/// that tests running in parallel do not see each other's bugs.
#[doc(hidden)]
pub fn set_thread_bugs(bugs: Bugs) -> Bugs {
    #[cfg(feature = "broken")]
    {
        THREAD_BUGS.with(|b| b.replace(bugs))
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = bugs;
        Bugs::default()
    }
}

/// Whether this thread asks for the broken variant `bug` (see [`set_thread_bugs`]); always `false`
/// without the `broken` feature.
#[inline(always)]
pub(crate) fn thread_bug(bug: impl Fn(&Bugs) -> bool) -> bool {
    #[cfg(feature = "broken")]
    {
        THREAD_BUGS.with(|b| bug(&b.get()))
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = bug;
        false
    }
}

/// Why a message left a queue without an ack or a dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The queue was full: drop-head overflow, or a dead letter refused for want of room.
    Overflow,
    /// Died of a full queue with no dead-letter queue to go to.
    Maxlen,
    /// Its time to live ran out, with no dead-letter queue.
    Expired,
    /// Rejected (or nacked without requeue), with no dead-letter queue.
    Rejected,
    /// Delivered as often as the queue allows, with no dead-letter queue.
    DeliveryLimit,
    /// Its queue was deleted.
    Deleted,
    /// Dead-lettering it again would have closed a cycle.
    DeadLetterCycle,
    /// An at-most-once delivery whose subscriber stopped or crashed before handling it.
    LostAtMostOnce,
    /// An at-most-once delivery an injected fault dropped on the way to its subscriber.
    FaultDrop,
    /// Its queue restarted and lost its in-memory state (an injected fault).
    QueueRestart,
}

impl DropReason {
    /// Every reason, in declaration order.
    pub const ALL: [DropReason; 10] = [
        DropReason::Overflow,
        DropReason::Maxlen,
        DropReason::Expired,
        DropReason::Rejected,
        DropReason::DeliveryLimit,
        DropReason::Deleted,
        DropReason::DeadLetterCycle,
        DropReason::LostAtMostOnce,
        DropReason::FaultDrop,
        DropReason::QueueRestart,
    ];

    /// The reason's name, snake-case as in histories: `delivery_limit`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Overflow => "overflow",
            DropReason::Maxlen => "maxlen",
            DropReason::Expired => "expired",
            DropReason::Rejected => "rejected",
            DropReason::DeliveryLimit => "delivery_limit",
            DropReason::Deleted => "deleted",
            DropReason::DeadLetterCycle => "dead_letter_cycle",
            DropReason::LostAtMostOnce => "lost_at_most_once",
            DropReason::FaultDrop => "fault_drop",
            DropReason::QueueRestart => "queue_restart",
        }
    }
}

impl From<DeathReason> for DropReason {
    fn from(reason: DeathReason) -> Self {
        match reason {
            DeathReason::Rejected => DropReason::Rejected,
            DeathReason::Expired => DropReason::Expired,
            DeathReason::Maxlen => DropReason::Maxlen,
            DeathReason::DeliveryLimit => DropReason::DeliveryLimit,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why a queue put a message back to be delivered again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedeliverReason {
    /// Nacked with requeue.
    Nack,
    /// Not settled before the queue's ack deadline.
    AckTimeout,
    /// Its subscriber crashed (a handler panic, or an injected crash).
    ConsumerCrash,
    /// Its subscriber unsubscribed before settling it.
    ConsumerLeft,
    /// Its handler asked for it again after a delay (`Outcome::Retry`, `Acker::retry`).
    Retry,
}

impl RedeliverReason {
    /// The reason's name, snake-case as in histories: `ack_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedeliverReason::Nack => "nack",
            RedeliverReason::AckTimeout => "ack_timeout",
            RedeliverReason::ConsumerCrash => "consumer_crash",
            RedeliverReason::ConsumerLeft => "consumer_left",
            RedeliverReason::Retry => "retry",
        }
    }
}

impl fmt::Display for RedeliverReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a handler ended, as a history records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerOutcome {
    /// It returned `Outcome::Ack`.
    Ack,
    /// It returned `Outcome::Nack` with `requeue: true`.
    NackRequeue,
    /// It returned `Outcome::Nack` with `requeue: false`.
    Nack,
    /// It returned `Outcome::Reject`.
    Reject,
    /// It returned `Outcome::Defer`.
    Defer,
    /// It returned `Outcome::Retry`.
    Retry,
    /// It panicked.
    Panic,
}

impl HandlerOutcome {
    /// The outcome's name, snake-case as in histories: `nack_requeue`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandlerOutcome::Ack => "ack",
            HandlerOutcome::NackRequeue => "nack_requeue",
            HandlerOutcome::Nack => "nack",
            HandlerOutcome::Reject => "reject",
            HandlerOutcome::Defer => "defer",
            HandlerOutcome::Retry => "retry",
            HandlerOutcome::Panic => "panic",
        }
    }
}

impl fmt::Display for HandlerOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A string that names no [`FaultKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault kind {0:?} (the kinds: {kinds})", kinds = FaultKind::names())]
pub struct ParseFaultKindError(pub String);

/// What happened to a message, a queue or a consumer. Consumers and delivery tags are the plain
/// numbers of [`ConsumerId`](crate::ids::ConsumerId) and [`DeliveryTag`](crate::ids::DeliveryTag).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// The publisher sent a message. `attempt` > 1: a retry after a lost confirm, with the same id.
    Publish {
        /// The message.
        msg: MessageId,
        /// Its routing key.
        key: String,
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// The confirm the publisher received.
    Confirm {
        /// The message.
        msg: MessageId,
        /// The queues that accepted it.
        queues: Vec<String>,
        /// The queues that refused it (full under reject-publish).
        refused: Vec<String>,
    },
    /// A fault ate the confirm: the outcome of the publish is unknown to the publisher.
    ConfirmLost {
        /// The message.
        msg: MessageId,
    },
    /// A queue accepted a copy (from a topic, or a dead letter from another queue).
    Enqueue {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
    },
    /// A queue handed a message to a consumer.
    Deliver {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// The consumer.
        consumer: u64,
        /// The delivery tag.
        tag: u64,
        /// 1 for the first delivery of this copy, then counting redeliveries.
        attempt: u32,
    },
    /// A subscriber started its handler.
    HandlerStart {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// The consumer.
        consumer: u64,
        /// The delivery tag.
        tag: u64,
    },
    /// A subscriber's handler returned.
    HandlerEnd {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// The consumer.
        consumer: u64,
        /// The delivery tag.
        tag: u64,
        /// What the handler asked for, or that it panicked.
        outcome: HandlerOutcome,
    },
    /// The queue settled a message by an ack: one event per message, also for an ack with `multiple`.
    Ack {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// The consumer that acked it.
        consumer: u64,
        /// Its delivery tag.
        tag: u64,
    },
    /// The queue received a nack or reject.
    Nack {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// Whether it asked for the message to be requeued.
        requeue: bool,
    },
    /// The queue put a message back to be delivered again.
    Redeliver {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// Why.
        reason: RedeliverReason,
    },
    /// The queue passed a message to its dead-letter queue.
    DeadLetter {
        /// The message.
        msg: MessageId,
        /// The queue it died in.
        queue: String,
        /// Why.
        reason: DeathReason,
    },
    /// A message left the queue without an ack or a dead letter.
    Drop {
        /// The message.
        msg: MessageId,
        /// The queue.
        queue: String,
        /// Why.
        reason: DropReason,
    },
    /// The simulator injected a fault.
    Fault {
        /// Which.
        kind: FaultKind,
        /// The message it struck, if one.
        msg: Option<MessageId>,
        /// The queue it struck, if one.
        queue: Option<String>,
    },
    /// A subscriber crashed.
    Crash {
        /// The queue it consumed from.
        queue: String,
        /// The consumer.
        consumer: u64,
        /// Whether it crashed before running its handler (else after, before its ack).
        before_handler: bool,
    },
    /// A queue actor restarted, losing its in-memory state.
    QueueRestart {
        /// The queue.
        queue: String,
    },
    /// A queue was deleted (its counters are final).
    QueueDeleted {
        /// The queue.
        queue: String,
    },
    /// An unsubscribe returned: no handler of the consumer may start after this.
    Unsubscribed {
        /// The queue.
        queue: String,
        /// The consumer.
        consumer: u64,
    },
}

/// The kinds of fault the simulator injects, as fault plans name them (kebab-case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A delivery vanishes on the queue → subscriber link.
    Drop,
    /// A delivery arrives twice.
    Duplicate,
    /// A delivery arrives late, so later ones overtake it.
    Delay,
    /// A settlement (ack or nack) vanishes on the subscriber → queue link.
    AckLoss,
    /// A subscriber crashes before running its handler.
    CrashBefore,
    /// A subscriber crashes after its handler ran, before its ack.
    CrashAfter,
    /// A queue actor restarts, losing its in-memory state.
    QueueRestart,
    /// A publisher's confirm is lost, and the publisher publishes again.
    ConfirmLoss,
    /// A handler takes long.
    Slow,
}

impl What {
    /// The event's name, as its `event` tag in JSON: `publish`, `confirm_lost`, `handler_start`, ...
    pub fn name(&self) -> &'static str {
        match self {
            What::Publish { .. } => "publish",
            What::Confirm { .. } => "confirm",
            What::ConfirmLost { .. } => "confirm_lost",
            What::Enqueue { .. } => "enqueue",
            What::Deliver { .. } => "deliver",
            What::HandlerStart { .. } => "handler_start",
            What::HandlerEnd { .. } => "handler_end",
            What::Ack { .. } => "ack",
            What::Nack { .. } => "nack",
            What::Redeliver { .. } => "redeliver",
            What::DeadLetter { .. } => "dead_letter",
            What::Drop { .. } => "drop",
            What::Fault { .. } => "fault",
            What::Crash { .. } => "crash",
            What::QueueRestart { .. } => "queue_restart",
            What::QueueDeleted { .. } => "queue_deleted",
            What::Unsubscribed { .. } => "unsubscribed",
        }
    }

    /// The message the event is about, if it is about one.
    pub fn msg(&self) -> Option<MessageId> {
        match self {
            What::Publish { msg, .. }
            | What::Confirm { msg, .. }
            | What::ConfirmLost { msg }
            | What::Enqueue { msg, .. }
            | What::Deliver { msg, .. }
            | What::HandlerStart { msg, .. }
            | What::HandlerEnd { msg, .. }
            | What::Ack { msg, .. }
            | What::Nack { msg, .. }
            | What::Redeliver { msg, .. }
            | What::DeadLetter { msg, .. }
            | What::Drop { msg, .. } => Some(*msg),
            What::Fault { msg, .. } => *msg,
            What::Crash { .. }
            | What::QueueRestart { .. }
            | What::QueueDeleted { .. }
            | What::Unsubscribed { .. } => None,
        }
    }

    /// The one queue the event happened in, if one (a confirm names several, a publish none).
    pub fn queue(&self) -> Option<&str> {
        match self {
            What::Publish { .. } | What::Confirm { .. } | What::ConfirmLost { .. } => None,
            What::Enqueue { queue, .. }
            | What::Deliver { queue, .. }
            | What::HandlerStart { queue, .. }
            | What::HandlerEnd { queue, .. }
            | What::Ack { queue, .. }
            | What::Nack { queue, .. }
            | What::Redeliver { queue, .. }
            | What::DeadLetter { queue, .. }
            | What::Drop { queue, .. }
            | What::Crash { queue, .. }
            | What::QueueRestart { queue }
            | What::QueueDeleted { queue }
            | What::Unsubscribed { queue, .. } => Some(queue),
            What::Fault { queue, .. } => queue.as_deref(),
        }
    }
}

/// `deliver msg=7 queue=billing consumer=3 tag=2 attempt=1`: the name, then the fields.
impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        if let Some(msg) = self.msg() {
            write!(f, " msg={}", msg.0)?;
        }
        if let Some(queue) = self.queue() {
            write!(f, " queue={queue}")?;
        }
        match self {
            What::Publish { key, attempt, .. } => write!(f, " key={key:?} attempt={attempt}"),
            What::Confirm { queues, refused, .. } => {
                write!(f, " queues=[{}] refused=[{}]", queues.join(","), refused.join(","))
            }
            What::Deliver { consumer, tag, attempt, .. } => {
                write!(f, " consumer={consumer} tag={tag} attempt={attempt}")
            }
            What::HandlerStart { consumer, tag, .. } | What::Ack { consumer, tag, .. } => {
                write!(f, " consumer={consumer} tag={tag}")
            }
            What::HandlerEnd { consumer, tag, outcome, .. } => {
                write!(f, " consumer={consumer} tag={tag} outcome={outcome}")
            }
            What::Nack { requeue, .. } => write!(f, " requeue={requeue}"),
            What::Redeliver { reason, .. } => write!(f, " reason={reason}"),
            What::Drop { reason, .. } => write!(f, " reason={reason}"),
            What::DeadLetter { reason, .. } => write!(f, " reason={reason}"),
            What::Fault { kind, .. } => write!(f, " kind={kind}"),
            What::Crash { consumer, before_handler, .. } => {
                write!(f, " consumer={consumer} before_handler={before_handler}")
            }
            What::Unsubscribed { consumer, .. } => write!(f, " consumer={consumer}"),
            What::ConfirmLost { .. }
            | What::Enqueue { .. }
            | What::QueueRestart { .. }
            | What::QueueDeleted { .. } => Ok(()),
        }
    }
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Drop,
        FaultKind::Duplicate,
        FaultKind::Delay,
        FaultKind::AckLoss,
        FaultKind::CrashBefore,
        FaultKind::CrashAfter,
        FaultKind::QueueRestart,
        FaultKind::ConfirmLoss,
        FaultKind::Slow,
    ];

    pub(crate) fn names() -> String {
        FaultKind::ALL.map(FaultKind::as_str).join(", ")
    }

    /// The kind's name, kebab-case as in fault plans and JSON: `ack-loss`.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Drop => "drop",
            FaultKind::Duplicate => "duplicate",
            FaultKind::Delay => "delay",
            FaultKind::AckLoss => "ack-loss",
            FaultKind::CrashBefore => "crash-before",
            FaultKind::CrashAfter => "crash-after",
            FaultKind::QueueRestart => "queue-restart",
            FaultKind::ConfirmLoss => "confirm-loss",
            FaultKind::Slow => "slow",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Parses the kebab-case name ([`FaultKind::as_str`]).
impl FromStr for FaultKind {
    type Err = ParseFaultKindError;

    fn from_str(s: &str) -> Result<Self, ParseFaultKindError> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| ParseFaultKindError(s.to_owned()))
    }
}
