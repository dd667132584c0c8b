//! Small copyable identifiers used across the runtime.

use serde::{Deserialize, Serialize};

/// Identifies a queue inside one broker. Assigned in declaration order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueId(pub u32);

/// Identifies a topic inside one broker. Assigned in declaration order, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub u32);

/// Identifies a consumer (one subscription) of a queue. Never reused within a broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConsumerId(pub u64);

/// Identifies a published message. Unique within a broker; from a seeded generator in simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageId(pub u64);

/// A delivery tag: numbers the deliveries made to one consumer, starting at 1, as AMQP numbers them
/// per channel. `ack` with `multiple` covers every unsettled tag of that consumer up to this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeliveryTag(pub u64);
