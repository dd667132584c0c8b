//! Benchmark scenarios, shared by `cargo bench` and `tubemail bench`: tubemail and a raw baseline of
//! the same shape, measured in the same process so that their ratio is meaningful on a noisy machine.
//!
//! The fan-out shape: one publisher, one topic with four queues bound by `orders.*`, `orders.paid`,
//! `#` and `contracts.#`, eight routing keys in turn (15 deliveries per 8 publishes), one subscriber
//! per queue, payloads of a given size. The baseline is the same shape from raw crossbeam-channel
//! threads: one publisher thread matching keys with the same routing table and sending an `Arc` of the
//! payload into one bounded channel per queue, and one thread per queue receiving. Other shapes (work
//! queue, wide, a user's own) are in [`shapes`]; every shape's queues hold at most
//! [`shapes::SHAPE_DEPTH_MAX`] ready messages with `block` overflow, so nothing is lost.

use std::time::Duration;

use tubemail::topology::{DeliveryMode, TopicKind};
#[cfg(feature = "peers")]
pub mod peers;
#[cfg(feature = "peers")]
pub mod remote;

pub mod jobs;
pub mod log;
pub mod memory;
pub mod placement;
pub mod shapes;

/// The bindings of the fan-out shape: (queue, pattern).
pub const FANOUT_BINDINGS: [(&str, &str); 4] = [
    ("q-orders-any", "orders.*"),
    ("q-orders-paid", "orders.paid"),
    ("q-all", "#"),
    ("q-contracts", "contracts.#"),
];

/// The routing keys of the fan-out shape, published in turn.
pub const FANOUT_KEYS: [&str; 8] = [
    "orders.paid",
    "orders.placed",
    "orders.cancelled",
    "contracts.signed",
    "contracts.disputed.high",
    "users.created",
    "orders.paid.eu",
    "contracts",
];

/// Capacity of each baseline channel, equal to a queue actor's mailbox.
pub const BASELINE_CHANNEL_CAPACITY: usize = tubemail::internals::QUEUE_INBOX_CAPACITY;

/// One measured run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Messages published.
    pub published: u64,
    /// Deliveries handled by subscribers.
    pub deliveries: u64,
    /// From the first publish to the last delivery handled.
    pub elapsed: Duration,
}

impl Measurement {
    /// Deliveries per second.
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }
}

/// How many deliveries `messages` publishes of the fan-out shape make.
pub fn fanout_deliveries(messages: u64) -> u64 {
    fanout_shape().deliveries(messages)
}

/// The fan-out shape as a generic [`shapes::Shape`].
pub fn fanout_shape() -> shapes::Shape {
    shapes::Shape {
        kind: TopicKind::Topic,
        queues: FANOUT_BINDINGS.iter().map(|(q, _)| (*q).to_owned()).collect(),
        bindings: FANOUT_BINDINGS.iter().enumerate().map(|(i, (_, p))| (i, (*p).to_owned())).collect(),
        consumers: 1,
        keys: FANOUT_KEYS.iter().map(|k| (*k).to_owned()).collect(),
        arbiters: Some(1),
    }
}

/// Runs the fan-out shape through tubemail: all actors on one arbiter (this thread), the publisher on
/// a thread of its own.
pub fn fanout_tubemail(messages: u64, payload: usize, mode: DeliveryMode) -> Measurement {
    shapes::run_tubemail(&fanout_shape(), messages, payload, mode)
}

/// Runs the fan-out shape on raw crossbeam-channel threads.
pub fn fanout_baseline(messages: u64, payload: usize) -> Measurement {
    shapes::run_baseline(&fanout_shape(), messages, payload)
}
