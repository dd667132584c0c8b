//! Hooks into private machinery for tubemail's own benchmarks (`benches/hot_paths.rs` and
//! `tubemail-bench`): the queue state machine's enqueue, dispatch and ack without actors, and the route
//! cache on its own. Not part of the API: hidden from the docs, and free to change.

use std::sync::Arc;

use tokio::time::Instant;

use crate::ids::QueueId;
use crate::ids::{ConsumerId, MessageId};
use crate::message::{Deaths, Message, Payload};
use crate::queue::state::{QueueState, SettleOp};
use crate::routing::RoutingTable;
use crate::topology::{DeliveryMode, QueueSpec};
use smallvec::SmallVec;

/// A queue state with one consumer, and a message to enqueue over and over.
pub struct QueueBench {
    state: QueueState,
    msg: Arc<Message>,
    now: Instant,
    mode: DeliveryMode,
}

impl QueueBench {
    /// A queue of the given delivery mode with one consumer of prefetch `prefetch`.
    pub fn new(mode: DeliveryMode, prefetch: u32) -> Self {
        let now = Instant::now();
        let spec = QueueSpec::default().delivery(mode).depth_max(1 << 20);
        let mut state = QueueState::new("bench".into(), spec, now);
        state.add_consumer(ConsumerId(1), prefetch);
        let msg = Arc::new(Message {
            id: MessageId(1),
            key: "orders.paid".into(),
            payload: Payload::Bytes(bytes::Bytes::from_static(&[0xAB; 64])),
            deaths: Deaths::NONE,
        });
        Self { state, msg, now, mode }
    }

    /// Enqueues `n` messages, dispatches them all, and settles them with one cumulative ack
    /// (at-least-once) or one report (at-most-once). Returns how many were dispatched.
    pub fn cycle(&mut self, n: u32) -> u32 {
        for _ in 0..n {
            self.state.enqueue(self.msg.clone(), false, self.now, crate::queue::NO_SLOT);
        }
        let mut last = 0;
        let mut dispatched = 0;
        while let Some(d) = self.state.dispatch(self.now) {
            last = d.tag.0;
            dispatched += 1;
        }
        let op = match self.mode {
            DeliveryMode::AtLeastOnce => SettleOp::Ack { tag: crate::ids::DeliveryTag(last), multiple: true },
            DeliveryMode::AtMostOnce => SettleOp::Processed(dispatched),
        };
        self.state.settle(ConsumerId(1), 0, op, self.now).expect("settled");
        let _ = self.state.take_credits_freed();
        dispatched
    }
}

/// The route cache in front of `table`, for the `bindings` benchmark: looks up each of `keys` in turn,
/// `lookups` times, and returns how many queues the lookups found.
pub fn route_cached(table: &RoutingTable, keys: &[String], lookups: u64) -> usize {
    let snapshot = crate::topic::Snapshot { table: table.clone(), generation: 1 };
    let cache = crate::topic::RouteCache::new();
    let mut out: SmallVec<[QueueId; 8]> = SmallVec::new();
    let mut found = 0;
    for i in 0..lookups {
        cache.route(&snapshot, &keys[(i % keys.len() as u64) as usize], &mut out);
        found += out.len();
    }
    found
}

/// Capacity of a queue's inbox, the bound the benchmarks give their baseline channels.
pub const QUEUE_INBOX_CAPACITY: usize = crate::queue::DROP_HEAD_INBOX_MAX;
