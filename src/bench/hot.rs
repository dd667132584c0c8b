//! The hot paths on their own, for criterion regressions: the queue state machine's enqueue,
//! dispatch and ack, without actors.

use std::sync::Arc;

use tokio::time::Instant;

use crate::ids::{ConsumerId, MessageId};
use crate::message::{Deaths, Message, Payload};
use crate::queue::state::{QueueState, SettleOp};
use crate::topology::{Delivery as DeliveryMode, QueueSpec};

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
            self.state.enqueue(self.msg.clone(), false, self.now);
        }
        let mut last = 0;
        let mut dispatched = 0;
        while let Some(d) = self.state.dispatch(self.now) {
            last = d.tag.0;
            dispatched += 1;
        }
        let op = match self.mode {
            DeliveryMode::AtLeastOnce => SettleOp::Ack { tag: last, multiple: true },
            DeliveryMode::AtMostOnce => SettleOp::Processed(dispatched),
        };
        self.state.settle(ConsumerId(1), 0, op, self.now).expect("settled");
        let _ = self.state.take_credits_freed();
        dispatched
    }
}
