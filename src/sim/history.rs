//! Stub of the run history (replaced by the full module).
#![allow(missing_docs)]
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;
use crate::message::DeathReason;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_us: u64,
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    Publish { msg: MessageId, key: String, attempt: u32 },
    Confirm { msg: MessageId, queues: Vec<String>, refused: Vec<String> },
    ConfirmLost { msg: MessageId },
    Enqueue { msg: MessageId, queue: String },
    Deliver { msg: MessageId, queue: String, consumer: u64, tag: u64, attempt: u32 },
    HandlerStart { msg: MessageId, queue: String, consumer: u64, tag: u64 },
    HandlerEnd { msg: MessageId, queue: String, consumer: u64, tag: u64, outcome: String },
    Ack { msg: MessageId, queue: String, consumer: u64, tag: u64 },
    Nack { msg: MessageId, queue: String, requeue: bool },
    Redeliver { msg: MessageId, queue: String, reason: String },
    DeadLetter { msg: MessageId, queue: String, reason: DeathReason },
    Drop { msg: MessageId, queue: String, reason: String },
    Fault { kind: FaultKind, msg: Option<MessageId>, queue: Option<String> },
    Crash { queue: String, consumer: u64, before_handler: bool },
    QueueRestart { queue: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    Drop,
    Duplicate,
    Delay,
    AckLoss,
    CrashBefore,
    CrashAfter,
    QueueRestart,
    ConfirmLoss,
    Slow,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&mut self, at_us: u64, what: What) {
        self.events.push(Event { at_us, what });
    }
    pub fn events(&self) -> &[Event] {
        &self.events
    }
    pub fn len(&self) -> usize {
        self.events.len()
    }
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl FaultKind {
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
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_string(self).unwrap_or_default();
        f.write_str(s.trim_matches('"'))
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_str(&format!("\"{s}\"")).map_err(|_| format!("unknown fault kind {s:?}"))
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>10.3}ms {:?}", self.at_us as f64 / 1000.0, self.what)
    }
}
