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

use serde::{Deserialize, Serialize};

pub use tubemail::probe::{FaultKind, What};

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
    /// use tubemail_sim::history::History;
    /// use tubemail_sim::What;
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
    /// use tubemail_sim::history::History;
    ///
    /// assert_eq!(History::new().hash(), History::new().hash());
    /// ```
    pub fn hash(&self) -> u64 {
        tubemail::routing::fnv1a64(&self.to_msgpack())
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

#[cfg(test)]
mod tests {
    use super::*;
    use tubemail::ids::MessageId;
    use tubemail::message::DeathReason;
    use tubemail::probe::ParseFaultKindError;

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
