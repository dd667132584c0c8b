//! The record of one simulated run: every event, stamped with simulated time.
//!
//! A [`History`] is append-only and plain data. The simulator pushes one [`Event`] for everything that
//! happens to a message (published, confirmed, enqueued, delivered, handled, acked, redelivered,
//! dead-lettered, dropped) and for every fault it injects; the checkers in [`super::check`] read it
//! afterwards, and a failing run prints it.
//!
//! # Determinism
//!
//! The same seed gives the same history, event for event, and so the same [`History::hash`]. The hash
//! is FNV-1a (64 bits) over the MessagePack encoding ([`History::to_msgpack`]), both fixed formats, so
//! it is stable across processes, platforms and Rust versions: a run recorded on one machine can be
//! replayed and compared on another. (`std`'s `DefaultHasher` promises none of that.)
//!
//! # Formats
//!
//! - JSON lines ([`History::to_json_lines`]): one event per line, its fields flat beside `at_us` and an
//!   `event` tag, for people and `jq`. [`History::from_json_lines`] reads them back.
//! - MessagePack ([`History::to_msgpack`], named fields): compact, for saving runs and for hashing.
//! - [`Display`](fmt::Display): one readable line per event, as in failure reports:
//!   `    12.345ms deliver msg=7 queue=billing consumer=3 tag=2 attempt=1`.
//!
//! # Time
//!
//! `at_us` counts simulated microseconds since the run started. The simulated clock only moves forward,
//! so times do not decrease along a recorded history; the checkers rely on the order of events, never
//! on their times, and accept any history.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::message::DeathReason;

/// The events of one run, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    events: Vec<Event>,
}

/// One thing that happened, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Simulated microseconds since the run started.
    pub at_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub what: What,
}

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
        /// What the handler asked for (`ack`, `nack`, `reject`, ...).
        outcome: String,
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
        /// Why: `nack`, `ack_timeout`, `consumer_crash`, `consumer_left`.
        reason: String,
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
        /// Why: `overflow`, `expired`, `rejected`, `delivery_limit`, `deleted`, `dead_letter_cycle`,
        /// `lost_at_most_once`, `fault_drop`, `queue_restart`, ...
        reason: String,
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

/// A string that names no [`FaultKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault kind {0:?} (the kinds: {kinds})", kinds = FaultKind::names())]
pub struct ParseFaultKindError(pub String);

/// Why bytes or text could not be read as a [`History`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The bytes are not a MessagePack history.
    #[error("history does not decode from msgpack: {reason}")]
    Msgpack {
        /// The decoder's explanation.
        reason: String,
    },
    /// A line is not a JSON event.
    #[error("history line {line} is not a json event: {reason}")]
    JsonLine {
        /// The line, counting from 1.
        line: usize,
        /// The parser's explanation.
        reason: String,
    },
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty history with room for `events` events.
    pub fn with_capacity(events: usize) -> Self {
        Self { events: Vec::with_capacity(events) }
    }

    /// Appends an event that happened `at_us` simulated microseconds into the run.
    pub fn push(&mut self, at_us: u64, what: What) {
        self.events.push(Event { at_us, what });
    }

    /// The events, in the order they were pushed.
    pub fn events(&self) -> &[Event] {
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

    /// One JSON object per event, one per line, each line ending in `\n`.
    ///
    /// ```
    /// use tubemail::ids::MessageId;
    /// use tubemail::sim::history::{History, What};
    ///
    /// let mut h = History::new();
    /// h.push(1500, What::Enqueue { msg: MessageId(7), queue: "billing".into() });
    /// let line = r#"{"at_us":1500,"event":"enqueue","msg":7,"queue":"billing"}"#;
    /// assert_eq!(h.to_json_lines(), format!("{line}\n"));
    /// assert_eq!(History::from_json_lines(&h.to_json_lines()), Ok(h));
    /// ```
    pub fn to_json_lines(&self) -> String {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail, and every event serializes (plain fields, string keys).
        self.write_json_lines(&mut out).expect("a history always serializes to json");
        String::from_utf8(out).expect("serde_json writes utf-8")
    }

    /// Writes [`History::to_json_lines`] to `w`.
    ///
    /// # Errors
    /// What `w` returns.
    pub fn write_json_lines(&self, mut w: impl io::Write) -> io::Result<()> {
        for event in &self.events {
            serde_json::to_writer(&mut w, event)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Reads what [`History::to_json_lines`] wrote; blank lines are skipped.
    ///
    /// # Errors
    /// [`HistoryError::JsonLine`] naming the first line that is not an event.
    pub fn from_json_lines(text: &str) -> Result<History, HistoryError> {
        let mut history = History::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let event = serde_json::from_str(line)
                .map_err(|e| HistoryError::JsonLine { line: i + 1, reason: e.to_string() })?;
            history.events.push(event);
        }
        Ok(history)
    }

    /// The history as MessagePack, with named fields (rmp-serde's `to_vec_named`).
    pub fn to_msgpack(&self) -> Vec<u8> {
        // Every field is a plain value with a known length, which rmp-serde always encodes.
        rmp_serde::to_vec_named(self).expect("a history always serializes to msgpack")
    }

    /// Reads what [`History::to_msgpack`] wrote.
    ///
    /// # Errors
    /// [`HistoryError::Msgpack`] when the bytes are not a history.
    pub fn from_msgpack(bytes: &[u8]) -> Result<History, HistoryError> {
        rmp_serde::from_slice(bytes).map_err(|e| HistoryError::Msgpack { reason: e.to_string() })
    }

    /// FNV-1a (64 bits) over [`History::to_msgpack`]: equal histories hash equal in every process,
    /// on every platform and with every Rust version.
    ///
    /// ```
    /// use tubemail::sim::history::History;
    ///
    /// assert_eq!(History::new().hash(), History::new().hash());
    /// ```
    pub fn hash(&self) -> u64 {
        fnv1a64(&self.to_msgpack())
    }

    /// How many faults of each kind were injected (kinds that never struck are absent).
    pub fn fault_counts(&self) -> BTreeMap<FaultKind, u64> {
        let mut counts = BTreeMap::new();
        for event in &self.events {
            if let What::Fault { kind, .. } = event.what {
                *counts.entry(kind).or_insert(0) += 1;
            }
        }
        counts
    }
}

use crate::routing::hash::fnv1a64;

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
            What::Crash { .. } | What::QueueRestart { .. } => None,
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
            | What::QueueRestart { queue } => Some(queue),
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
            What::Redeliver { reason, .. } | What::Drop { reason, .. } => write!(f, " reason={reason}"),
            What::DeadLetter { reason, .. } => write!(f, " reason={reason}"),
            What::Fault { kind, .. } => write!(f, " kind={kind}"),
            What::Crash { consumer, before_handler, .. } => {
                write!(f, " consumer={consumer} before_handler={before_handler}")
            }
            What::ConfirmLost { .. } | What::Enqueue { .. } | What::QueueRestart { .. } => Ok(()),
        }
    }
}

/// `    12.345ms deliver msg=7 queue=billing consumer=3 tag=2 attempt=1`: the time in simulated
/// milliseconds, right-aligned, then the event.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = format!("{}.{:03}ms", self.at_us / 1000, self.at_us % 1000);
        write!(f, "{ms:>12} {}", self.what)
    }
}

/// Every event, one per line.
impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.events.iter().try_for_each(|e| writeln!(f, "{e}"))
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

    fn names() -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> History {
        let mut h = History::new();
        h.push(0, What::Publish { msg: MessageId(1), key: "orders.1".into(), attempt: 1 });
        h.push(5, What::Enqueue { msg: MessageId(1), queue: "billing".into() });
        h.push(9, What::Confirm { msg: MessageId(1), queues: vec!["billing".into()], refused: vec![] });
        h.push(
            12_345,
            What::Deliver { msg: MessageId(1), queue: "billing".into(), consumer: 3, tag: 2, attempt: 1 },
        );
        h.push(12_400, What::Fault { kind: FaultKind::AckLoss, msg: Some(MessageId(1)), queue: None });
        h.push(
            12_500,
            What::DeadLetter { msg: MessageId(1), queue: "billing".into(), reason: DeathReason::Expired },
        );
        h.push(13_000, What::Fault { kind: FaultKind::AckLoss, msg: None, queue: Some("billing".into()) });
        h.push(14_000, What::Fault { kind: FaultKind::Slow, msg: None, queue: None });
        h
    }

    #[test]
    fn json_lines_are_flat_one_per_line_and_read_back() {
        let h = sample();
        let text = h.to_json_lines();
        assert_eq!(text.lines().count(), h.len());
        assert!(
            text.starts_with("{\"at_us\":0,\"event\":\"publish\",\"msg\":1,\"key\":\"orders.1\""),
            "{text}"
        );
        assert!(
            text.contains("\"event\":\"fault\",\"kind\":\"ack-loss\",\"msg\":1,\"queue\":null"),
            "{text}"
        );
        assert!(text.contains("\"reason\":\"expired\""), "{text}");
        assert_eq!(History::from_json_lines(&text), Ok(h));
    }

    #[test]
    fn a_bad_json_line_is_named() {
        let text = format!("{}\n\nnot json\n", sample().to_json_lines().lines().next().unwrap_or(""));
        assert!(matches!(History::from_json_lines(&text), Err(HistoryError::JsonLine { line: 3, .. })));
    }

    #[test]
    fn msgpack_round_trips_and_refuses_garbage() {
        let h = sample();
        assert_eq!(History::from_msgpack(&h.to_msgpack()), Ok(h));
        assert!(matches!(History::from_msgpack(&[0xc1, 0x00]), Err(HistoryError::Msgpack { .. })));
    }

    #[test]
    fn hash_follows_content() {
        let (a, mut b) = (sample(), sample());
        assert_eq!(a.hash(), b.hash());
        b.push(15_000, What::QueueRestart { queue: "billing".into() });
        assert_ne!(a.hash(), b.hash());
        let mut c = sample();
        c.events[0].at_us = 1;
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn fault_counts_count_each_kind() {
        let counts = sample().fault_counts();
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            vec![(FaultKind::AckLoss, 2), (FaultKind::Slow, 1)]
        );
    }

    #[test]
    fn events_read_as_one_line() {
        let h = sample();
        assert_eq!(
            h.events()[3].to_string(),
            "    12.345ms deliver msg=1 queue=billing consumer=3 tag=2 attempt=1"
        );
        assert_eq!(h.events()[0].to_string(), "     0.000ms publish msg=1 key=\"orders.1\" attempt=1");
        assert_eq!(h.events()[2].to_string(), "     0.009ms confirm msg=1 queues=[billing] refused=[]");
        assert_eq!(h.events()[5].to_string(), "    12.500ms dead_letter msg=1 queue=billing reason=expired");
        assert_eq!(h.events()[4].to_string(), "    12.400ms fault msg=1 kind=ack-loss");
        assert_eq!(h.to_string().lines().count(), h.len());
    }

    #[test]
    fn name_is_the_json_tag() {
        for event in sample().events() {
            let json = serde_json::to_value(event).unwrap_or_default();
            assert_eq!(json["event"], event.what.name());
        }
    }

    #[test]
    fn fault_kinds_parse_their_own_names_and_match_serde() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.to_string().parse::<FaultKind>(), Ok(kind));
            assert_eq!(serde_json::to_string(&kind).unwrap_or_default(), format!("\"{kind}\""));
        }
        let err = "ack_loss".parse::<FaultKind>();
        assert_eq!(err, Err(ParseFaultKindError("ack_loss".into())));
        assert_eq!(
            err.map_err(|e| e.to_string()),
            Err("unknown fault kind \"ack_loss\" (the kinds: drop, duplicate, delay, ack-loss, crash-before, \
                 crash-after, queue-restart, confirm-loss, slow)"
                .to_owned())
        );
    }
}
