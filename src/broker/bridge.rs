//! Bridges: a queue of one broker forwarded to a topic of another, so that a module can move out of
//! the process one at a time (a local queue forwarded to RabbitMQ or NATS, a remote queue consumed
//! into a local topic), as RabbitMQ's shovel does.
//!
//! # Delivery guarantees
//! At least once: a message is acked at its source only once the destination confirmed it; a
//! publish that fails (a lost connection) or that the destination refuses (a full `reject-publish`
//! queue) is nacked back to the source after [`BRIDGE_RETRY_AFTER`], and comes again, until the
//! source queue's `delivery_limit` dead-letters it. A message the destination routes nowhere is
//! acked: the destination counts it (`TopicStats::unroutable`), as it would a publish of its own.
//! The destination gives the message an id of its own; its key and payload (MessagePack) travel.
//!
//! # Ordering
//! With a prefetch of 1, in the source queue's order; with more, publishes overlap and a retried
//! one falls behind the others, as a redelivery does.
//!
//! # Backpressure
//! At most the subscription's prefetch of messages is between the source and the destination's
//! confirm; a destination that waits (a `block` queue, a full window) slows the bridge down.
//!
//! # Shutdown
//! A bridge is a [`Subscription`] of the source: [`Subscription::unsubscribe`] stops it, and what it
//! held unconfirmed goes back to the source queue.

use std::time::Duration;

use bytes::Bytes;

use super::{Broker, Confirm, SubscribeError, Subscription};
use crate::subscriber::{Delivery, Outcome, SubscribeOptions};

/// How long a bridge waits before it gives a message it could not forward back to its source.
pub const BRIDGE_RETRY_AFTER: Duration = Duration::from_millis(200);

impl Broker {
    /// Forwards every message of this broker's `queue` to `topic` of `to` (another broker, in this
    /// process or remote), with its key, at least once (see the module's guarantees). Returns the
    /// source subscription; `options` set its prefetch, the most messages in transit at once.
    ///
    /// ```
    /// use tubemail::{Broker, Delivery, Outcome, SubscribeOptions, Topology};
    ///
    /// # actix::System::new().block_on(async {
    /// let here = Broker::start(Topology::from_toml_str(r##"
    ///     [topics.events]
    ///     [queues.outbox]
    ///     delivery = "at-least-once"
    ///     [[bindings]]
    ///     topic = "events"
    ///     queue = "outbox"
    ///     key = "#"
    /// "##).unwrap()).unwrap();
    /// // Another broker: on RabbitMQ this would be `Broker::builder(t).rabbitmq(url).connect().await`.
    /// let there = Broker::start(Topology::from_toml_str(r##"
    ///     [topics.orders]
    ///     [queues.billing]
    ///     [[bindings]]
    ///     topic = "orders"
    ///     queue = "billing"
    ///     key = "orders.#"
    /// "##).unwrap()).unwrap();
    /// here.forward("outbox", &there, "orders", SubscribeOptions::default()).await.unwrap();
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// there.subscribe_sync("billing", move |d: Delivery<String>| { tx.send(d.value().clone()).unwrap(); Outcome::Ack }).await.unwrap();
    /// here.publish("events", "orders.7.paid", "order 7 paid".to_string()).await.unwrap();
    /// assert_eq!(rx.recv().await.as_deref(), Some("order 7 paid"));
    /// # });
    /// ```
    ///
    /// # Errors
    /// As [`Broker::subscribe`] for the source queue.
    pub async fn forward(
        &self,
        queue: &str,
        to: &Broker,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let (to, topic) = (to.clone(), std::sync::Arc::<str>::from(topic));
        let handler = move |d: Delivery<Bytes>| {
            let (to, topic) = (to.clone(), topic.clone());
            async move {
                let failed = match to.publish_bytes(&topic, d.key(), d.value().clone()).await {
                    Ok(Confirm::Routed { .. } | Confirm::Unroutable { .. } | Confirm::Sent) => {
                        return Outcome::Ack
                    }
                    Ok(Confirm::Refused { queues, .. }) => format!("refused by {queues:?}"),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(topic = %topic, key = d.key(), reason = %failed, "bridge: not forwarded; given back to its source");
                tokio::time::sleep(BRIDGE_RETRY_AFTER).await;
                Outcome::Nack { requeue: true }
            }
        };
        self.subscribe_with(queue, options, handler).await
    }
}
