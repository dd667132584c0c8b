//! Subscriptions: the handles users hold, the broker's record of them, and the one routine that
//! retires a subscriber, used alike by [`Subscription::unsubscribe`] and by shutdown.
//!
//! # Shutdown
//! Retiring a subscriber takes three steps, in this order:
//! 1. **drain**: the queue stops delivering to it and waits, up to the timeout, until everything it
//!    was handed is settled;
//! 2. **stop**: the subscriber is told to stop; it runs no handler for deliveries still in its
//!    mailbox, sends the settlements it has batched, and stops once its running handler (if any)
//!    returns. The routine waits for that, within what is left of the timeout;
//! 3. **remove**: the queue forgets the consumer, requeueing (at least once) or counting lost (at
//!    most once) what it still held, which is exactly what no handler ran for.
//!
//! So a handler never runs after `unsubscribe` returned, and a delivery is never both handled and
//! counted lost. The exception is a handler still running when the timeout passes: the report says
//! `stopped: false`, and what that handler settles later is ignored (at least once, its message was
//! requeued and may run again elsewhere; at most once, it was counted lost).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Addr, Recipient};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::ids::ConsumerId;
use crate::probe::{ProbeRef, What};
use crate::protocol::{Drain, Stop, Unsubscribe};
use crate::queue::QueueActor;
use crate::subscriber::StopSignal;

/// What unsubscribing found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnsubscribeReport {
    /// Whether everything the subscriber held was settled before the timeout.
    pub drained: bool,
    /// Whether the subscriber stopped by itself before the timeout (its running handler returned);
    /// when not, its running handler was interrupted (see `interrupted`).
    pub stopped: bool,
    /// Handlers interrupted at the timeout: their futures were dropped at an await point, and their
    /// deliveries requeued (at least once) or counted lost (at most once). Handlers must therefore be
    /// safe to stop at any await, as Sidekiq's jobs are at a deploy.
    pub interrupted: u64,
    /// Unacked deliveries put back in the queue (at-least-once): no handler ran for them, or one was
    /// interrupted.
    pub requeued: u64,
    /// Deliveries counted lost (at-most-once): no handler ran for them, or one was interrupted.
    pub lost: u64,
}

/// Where a subscriber lives: its queue, and how to stop it.
#[derive(Clone)]
pub(crate) struct Subscriber {
    pub(crate) consumer: ConsumerId,
    pub(crate) queue: Addr<QueueActor>,
    pub(crate) stop: Recipient<Stop>,
    /// Requested before `Stop` is sent: the subscriber then skips the deliveries still in its
    /// mailbox, so that `Stop` does not wait behind them; past the timeout, interrupts its handler.
    pub(crate) stopping: Arc<StopSignal>,
}

/// The broker's live subscriptions, by consumer.
#[derive(Default)]
pub(crate) struct Subscriptions(Mutex<BTreeMap<ConsumerId, Subscriber>>);

impl Subscriptions {
    pub(crate) fn insert(&self, subscriber: Subscriber) {
        self.0.lock().expect("subscriptions lock").insert(subscriber.consumer, subscriber);
    }

    /// Takes the subscriber out of the record; `None` when shutdown (or an earlier call) took it.
    pub(crate) fn take(&self, consumer: ConsumerId) -> Option<Subscriber> {
        self.0.lock().expect("subscriptions lock").remove(&consumer)
    }

    pub(crate) fn take_all(&self) -> Vec<Subscriber> {
        std::mem::take(&mut *self.0.lock().expect("subscriptions lock")).into_values().collect()
    }
}

/// Drains, stops and removes `subscriber` (see the module docs), by `deadline`.
pub(crate) async fn retire(subscriber: Subscriber, deadline: Instant, probe: &ProbeRef) -> UnsubscribeReport {
    let drained = drain(&subscriber, deadline).await;
    if crate::probe::bug(probe, |b| b.unsubscribe_returns_early) {
        // Broken on purpose: the subscriber is told to stop but not waited for, and runs the handlers
        // of what is still in its mailbox after the queue counted it lost (or requeued it).
        let _ = subscriber.stop.try_send(Stop);
        return remove(&subscriber, UnsubscribeReport { drained, ..Default::default() }).await;
    }
    let stopped = stop(&subscriber, deadline).await;
    let interrupted = u64::from(!stopped);
    remove(&subscriber, UnsubscribeReport { drained, stopped, interrupted, ..Default::default() }).await
}

/// Step 1: waits until the queue says the subscriber holds nothing.
pub(crate) async fn drain(subscriber: &Subscriber, deadline: Instant) -> bool {
    let (done, drained) = oneshot::channel();
    let drain = Drain { consumer: subscriber.consumer, done };
    if subscriber.queue.send(drain).await.is_err() {
        return true; // The queue is gone, and with it everything the subscriber held.
    }
    matches!(tokio::time::timeout_at(deadline, drained).await, Ok(Ok(())))
}

/// Step 2: stops the subscriber and waits until it has; past `deadline`, interrupts its running
/// handler. Whether it stopped without an interruption.
pub(crate) async fn stop(subscriber: &Subscriber, deadline: Instant) -> bool {
    subscriber.stopping.request();
    let stopped = subscriber.stop.send(Stop);
    tokio::pin!(stopped);
    if tokio::time::timeout_at(deadline, &mut stopped).await.is_ok() {
        return true; // Answered, or already stopped: either way it runs no more handlers.
    }
    subscriber.stopping.interrupt();
    // The handler's future is dropped at its next poll, and `Stop` runs right after. A handler that
    // never yields (a blocking loop) holds its arbiter anyway; nothing can stop it.
    let _ = stopped.await;
    false
}

/// Step 3: the queue forgets the consumer.
pub(crate) async fn remove(subscriber: &Subscriber, mut report: UnsubscribeReport) -> UnsubscribeReport {
    if let Ok((requeued, lost)) = subscriber.queue.send(Unsubscribe { consumer: subscriber.consumer }).await {
        report.requeued = requeued;
        report.lost = lost;
    }
    report
}

/// A running subscription. Dropping it leaves the subscriber running; call
/// [`Subscription::unsubscribe`] to stop it.
pub struct Subscription {
    pub(crate) consumer: ConsumerId,
    pub(crate) queue: Arc<str>,
    pub(crate) broker: crate::Broker,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("queue", &self.queue).field("consumer", &self.consumer).finish()
    }
}

impl Subscription {
    /// The consumer id.
    pub fn consumer(&self) -> ConsumerId {
        self.consumer
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops deliveries, waits up to `timeout` for the handler to settle what it holds and for the
    /// subscriber to stop, then requeues (at-least-once) or counts lost (at-most-once) the rest. No
    /// handler of this subscription runs after it returns, unless the report says `stopped: false`.
    /// A queue with `auto_delete` is deleted when its last subscriber leaves this way.
    ///
    /// May be called from any thread, inside or outside an async runtime: the waiting runs on the
    /// broker's arbiter.
    ///
    /// After [`Broker::shutdown`](crate::Broker::shutdown), which retired every subscriber, the
    /// report is empty and says `drained` and `stopped`.
    pub async fn unsubscribe(self, timeout: Duration) -> UnsubscribeReport {
        if let Some(remote) = self.broker.remote.clone() {
            let consumer = self.consumer;
            let retired = self.broker.on_arbiter(async move { remote.unsubscribe(consumer, timeout).await });
            return retired.await.unwrap_or(UnsubscribeReport {
                drained: true,
                stopped: true,
                ..Default::default()
            });
        }
        let Some(subscriber) = self.broker.registry.subscriptions.take(self.consumer) else {
            return UnsubscribeReport { drained: true, stopped: true, ..Default::default() };
        };
        let probe = self.broker.registry.probe.clone();
        let (queue, consumer) = (self.queue.to_string(), self.consumer.0);
        let retired = self.broker.on_arbiter(async move {
            let report = retire(subscriber, Instant::now() + timeout, &probe).await;
            if let Some(probe) = &probe {
                probe.record(What::Unsubscribed { queue, consumer });
            }
            report
        });
        retired.await.unwrap_or_default()
    }
}
