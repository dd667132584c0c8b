//! Subscribers: actors that run a handler for each delivery and settle it with the queue.
//!
//! # Delivery guarantees
//! A handler returns an [`Outcome`]. On an at-least-once queue, `Ack` settles the delivery, `Nack`
//! with requeue puts it back at its original position, `Nack` without requeue or `Reject`
//! dead-letters it (reason `rejected`), `Retry { after }` puts it back to be delivered again once
//! `after` has passed (its delivery count raised, dead-lettered past the queue's `delivery_limit`),
//! and `Defer` leaves it unacked until the handler's [`Acker`] settles it (or the ack deadline
//! redelivers it). On an at-most-once queue the message was already settled when it was handed out:
//! a `Nack`, `Reject` or `Retry` dead-letters it, it is never redelivered.
//!
//! A handler that panics is caught (actix's `Supervisor` restarts only actors that stop themselves, so
//! the subscriber catches the unwind itself) and the subscriber restarts: every delivery it held is
//! requeued (at-least-once) or counted lost (at-most-once), and deliveries already in its mailbox from
//! before the restart are discarded, since the queue requeued them. The handler value itself is kept.
//!
//! # Ordering
//! One subscriber runs one handler at a time, in delivery order.
//!
//! # Backpressure
//! At most `prefetch` deliveries are unsettled per subscriber (0: up to the queue's `depth_max`). Acks
//! are batched: the outcomes of the deliveries handled in one turn of the actor travel to the queue as
//! one message, with runs of acks folded into one cumulative ack (AMQP's `multiple`), at most
//! [`SETTLE_BATCH_MAX`] at a time.
//!
//! # Shutdown
//! [`Subscription::unsubscribe`](crate::Subscription::unsubscribe) stops new deliveries, waits up to a
//! timeout for the handler to settle what it holds and for the subscriber to stop (interrupting a
//! handler still running at the timeout), then requeues (or counts lost) the rest. A sync handler
//! that blocks runs on a thread of its own ([`Broker::subscribe_blocking`](crate::Broker::subscribe_blocking),
//! or moved there by the watchdog after [`BLOCKING_THRESHOLD`]).

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::SendError;
use actix::prelude::*;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use smallvec::SmallVec;

use tokio::time::Instant;

use crate::ids::{ConsumerId, DeliveryTag, MessageId};
use crate::message::{Death, Message, Value};
use crate::probe::{self, FaultKind, HandlerOutcome, ProbeRef, What};
pub use crate::protocol::AckError;
use crate::protocol::{Deliver, DeliverItem, ManualSettle, Restarted, Settle, Stop};
use crate::queue::state::SettleOp;
use crate::queue::QueueActor;
use crate::topology::DeliveryMode;

/// How long a batch of deliveries may hold its arbiter before the watchdog deems its handler
/// blocking (see [`Broker::subscribe_blocking`](crate::Broker::subscribe_blocking)).
pub const BLOCKING_THRESHOLD: Duration = Duration::from_millis(50);

/// The most deliveries a subscriber with prefetch 0 (unlimited) has in its mailbox at once.
pub const UNLIMITED_PREFETCH_WINDOW_MAX: usize = 1024;

/// The most settlements a subscriber batches into one message to its queue.
pub const SETTLE_BATCH_MAX: usize = 64;
/// Tags an at-most-once subscriber remembers, to skip duplicated deliveries.
const SEEN_TAGS_MAX: usize = 4096;
/// Mailbox room a subscriber keeps beyond its prefetch, for control messages.
const MAILBOX_SLACK: usize = 8;

/// What a handler decided about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done: remove the message.
    Ack,
    /// Failed: requeue it (at its original position) or, without requeue, dead-letter it.
    Nack {
        /// Whether to requeue.
        requeue: bool,
    },
    /// Refuse it: dead-letter it (reason `rejected`) or drop it. The same as `Nack { requeue: false }`.
    Reject,
    /// Leave it unsettled: the handler settles it later through [`Delivery::acker`].
    Defer,
    /// Failed, try again later: put it back, ready again once `after` has passed (at its original
    /// position, its delivery count raised), or dead-letter it past the queue's `delivery_limit`; a
    /// durable queue keeps the due time across a restart. As Sidekiq's retry set or a JetStream
    /// `NakWithDelay`; the policy (how long, how often) is the handler's, which sees
    /// [`Delivery::delivery_count`]. On an at-most-once queue, as `Nack`: the message already left.
    Retry {
        /// How long to wait before delivering it again.
        after: Duration,
    },
}

impl From<Outcome> for HandlerOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Ack => HandlerOutcome::Ack,
            Outcome::Nack { requeue: true } => HandlerOutcome::NackRequeue,
            Outcome::Nack { requeue: false } => HandlerOutcome::Nack,
            Outcome::Reject => HandlerOutcome::Reject,
            Outcome::Defer => HandlerOutcome::Defer,
            Outcome::Retry { .. } => HandlerOutcome::Retry,
        }
    }
}

/// Runs for each delivery of a subscription.
///
/// Implemented for every `FnMut(Delivery<T>) -> impl Future<Output = Outcome>`; the future runs on the
/// broker's arbiter and need not be `Send`.
pub trait Handler<T>: Send + 'static {
    /// The future the handler returns.
    type Future: Future<Output = Outcome> + 'static;

    /// Handles one delivery.
    fn handle(&mut self, delivery: Delivery<T>) -> Self::Future;

    /// Called when the subscriber restarts after a crash (a panic in the handler, or an injected
    /// crash), before it handles anything more. The handler value itself is kept; the default does
    /// nothing.
    fn restarted(&mut self) {}
}

impl<T, F, Fut> Handler<T> for F
where
    F: FnMut(Delivery<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Outcome> + 'static,
{
    type Future = Fut;

    fn handle(&mut self, delivery: Delivery<T>) -> Fut {
        self(delivery)
    }
}

/// What running a handler gave: an outcome now, or a future to wait for.
pub(crate) enum Run {
    Done(Outcome),
    Pending(Pin<Box<dyn Future<Output = Outcome>>>),
}

impl Run {
    /// The same outcome, reported only after `delay` of (simulated) time.
    fn slowed(self, delay: std::time::Duration) -> Run {
        Run::Pending(Box::pin(async move {
            tokio::time::sleep(delay).await;
            match self {
                Run::Done(outcome) => outcome,
                Run::Pending(future) => future.await,
            }
        }))
    }
}

/// A handler as the subscriber actor runs it: async handlers are polled once in place and boxed only
/// when they have to wait; sync handlers never are.
pub(crate) trait Runner<T>: Send + 'static {
    fn run(&mut self, delivery: Delivery<T>) -> Run;

    fn restarted(&mut self) {}

    /// Moves the handler off the arbiter, onto a thread of its own; whether it could (only a sync
    /// handler can: an async handler's future is not `Send`).
    fn move_off_arbiter(&mut self, _thread_name: String) -> bool {
        false
    }
}

/// Runs an async [`Handler`].
pub(crate) struct AsyncRunner<H>(pub(crate) H);

impl<T: 'static, H: Handler<T>> Runner<T> for AsyncRunner<H> {
    fn run(&mut self, delivery: Delivery<T>) -> Run {
        let mut future = Box::pin(self.0.handle(delivery));
        // A future that is not ready is polled again, with the actor's waker, by `ctx.wait`.
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(outcome) => Run::Done(outcome),
            std::task::Poll::Pending => Run::Pending(future),
        }
    }

    fn restarted(&mut self) {
        self.0.restarted();
    }
}

/// Runs a synchronous handler: in place on the arbiter, or on a thread of its own once it is known
/// to block ([`Broker::subscribe_blocking`](crate::Broker::subscribe_blocking), or the watchdog).
pub(crate) enum SyncRunner<F> {
    Inline(F),
    OwnThread(BlockingThread<F>),
    /// Only while moving.
    Moving,
}

impl<F: Send + 'static> SyncRunner<F> {
    pub(crate) fn inline(handler: F) -> Self {
        SyncRunner::Inline(handler)
    }

    pub(crate) fn own_thread(handler: F, thread_name: String) -> Self {
        SyncRunner::OwnThread(BlockingThread::start(handler, thread_name))
    }
}

impl<T: Send + Sync + 'static, F> Runner<T> for SyncRunner<F>
where
    F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
{
    fn run(&mut self, delivery: Delivery<T>) -> Run {
        match self {
            SyncRunner::Inline(handler) => Run::Done(handler(delivery)),
            SyncRunner::OwnThread(thread) => thread.run(delivery),
            SyncRunner::Moving => unreachable!("a runner is moved between two deliveries"),
        }
    }

    fn move_off_arbiter(&mut self, thread_name: String) -> bool {
        match std::mem::replace(self, SyncRunner::Moving) {
            SyncRunner::Inline(handler) => *self = SyncRunner::own_thread(handler, thread_name),
            other => *self = other,
        }
        true
    }
}

/// A job for a blocking handler's thread.
type Job<F> = Box<dyn FnOnce(&mut F) + Send>;

/// A thread that runs one subscriber's blocking handler, one delivery at a time (the subscriber
/// waits for each outcome before it sends the next, so the job channel holds at most one). It ends
/// when the subscriber drops it.
pub(crate) struct BlockingThread<F> {
    jobs: crossbeam_channel::Sender<Job<F>>,
}

impl<F: Send + 'static> BlockingThread<F> {
    fn start(mut handler: F, thread_name: String) -> Self {
        let (jobs, rx) = crossbeam_channel::bounded::<Job<F>>(1);
        let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
            for job in rx {
                job(&mut handler);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no thread for a blocking handler; its deliveries will be requeued");
        }
        Self { jobs }
    }

    fn run<T: Send + Sync + 'static>(&mut self, delivery: Delivery<T>) -> Run
    where
        F: FnMut(Delivery<T>) -> Outcome,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job<F> = Box::new(move |handler: &mut F| {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| handler(delivery)));
            let _ = tx.send(outcome);
        });
        if self.jobs.try_send(job).is_err() {
            // Never full (one job at a time); gone only if the thread could not start: a panic here
            // restarts the subscriber, which requeues (or counts) the delivery.
            std::panic::panic_any("the blocking handler's thread is gone");
        }
        Run::Pending(Box::pin(async move {
            match rx.await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(_) => std::panic::panic_any("the blocking handler's thread is gone"),
            }
        }))
    }
}

/// The subscriber's link to its queue, shared by its deliveries.
#[derive(Debug)]
pub(crate) struct QueueLink {
    queue: Addr<QueueActor>,
    consumer: ConsumerId,
}

/// Where a delivery is settled: its queue actor, or a remote broker.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    Local(Arc<QueueLink>),
    #[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
    Remote(Arc<dyn crate::remote::Settler>),
}

/// One delivery: the value, and what is known of its journey.
#[derive(Debug)]
pub struct Delivery<T> {
    value: Value<T>,
    msg: Arc<Message>,
    tag: DeliveryTag,
    epoch: u32,
    delivery_count: u32,
    link: Link,
}

impl<T: 'static> Deref for Delivery<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.value.get(&self.msg.payload)
    }
}

impl<T: 'static> Delivery<T> {
    /// The value.
    pub fn value(&self) -> &T {
        self.value.get(&self.msg.payload)
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.msg.id
    }

    /// The routing key it was published with.
    pub fn key(&self) -> &str {
        &self.msg.key
    }

    /// The delivery tag (per subscriber, from 1).
    pub fn tag(&self) -> DeliveryTag {
        self.tag
    }

    /// Whether it was delivered before (AMQP's `redelivered`).
    pub fn redelivered(&self) -> bool {
        self.delivery_count > 1
    }

    /// How often it has been delivered, this time included (`x-delivery-count` + 1).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Its death history, newest first (for deliveries from a dead-letter queue).
    pub fn deaths(&self) -> &[Death] {
        self.msg.deaths.as_slice()
    }

    /// The message itself.
    pub fn message(&self) -> &Arc<Message> {
        &self.msg
    }

    /// A delivery from a remote broker.
    #[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
    pub(crate) fn remote(
        value: Value<T>,
        msg: Arc<Message>,
        tag: DeliveryTag,
        delivery_count: u32,
        link: Link,
    ) -> Self {
        Delivery { value, msg, tag, epoch: 0, delivery_count, link }
    }

    /// A handle to settle this delivery later; return [`Outcome::Defer`] from the handler to use it.
    pub fn acker(&self) -> Acker {
        Acker { link: self.link.clone(), tag: self.tag, epoch: self.epoch }
    }
}

/// Settles a deferred delivery, or with `multiple` every unsettled one up to it.
#[derive(Debug, Clone)]
pub struct Acker {
    link: Link,
    tag: DeliveryTag,
    epoch: u32,
}

impl Acker {
    /// The delivery tag this acker settles.
    pub fn tag(&self) -> DeliveryTag {
        self.tag
    }

    /// Acks the delivery; with `multiple`, every unsettled delivery of this subscriber up to it.
    ///
    /// # Errors
    /// [`AckError::Refused`] with [`SettleError::UnknownTag`] when the delivery is not unsettled (already
    /// settled, or redelivered after its ack deadline).
    pub async fn ack(&self, multiple: bool) -> Result<(), AckError> {
        self.settle(SettleOp::Ack { tag: self.tag, multiple }).await
    }

    /// Nacks the delivery (or every unsettled one up to it): requeued, or dead-lettered.
    ///
    /// # Errors
    /// As [`Acker::ack`].
    pub async fn nack(&self, multiple: bool, requeue: bool) -> Result<(), AckError> {
        self.settle(SettleOp::Nack { tag: self.tag, multiple, requeue }).await
    }

    /// Puts the delivery back, ready again once `after` has passed (see [`Outcome::Retry`]).
    ///
    /// # Errors
    /// As [`Acker::ack`].
    pub async fn retry(&self, after: Duration) -> Result<(), AckError> {
        self.settle(SettleOp::Retry { tag: self.tag, after }).await
    }

    /// Rejects the delivery: dead-lettered (reason `rejected`) or dropped.
    ///
    /// # Errors
    /// As [`Acker::ack`].
    pub async fn reject(&self) -> Result<(), AckError> {
        self.nack(false, false).await
    }

    async fn settle(&self, op: SettleOp) -> Result<(), AckError> {
        match &self.link {
            Link::Local(link) => {
                let msg = ManualSettle { consumer: link.consumer, epoch: self.epoch, op };
                link.queue.send(msg).await.map_err(|_| AckError::QueueGone)?.map_err(AckError::Refused)
            }
            Link::Remote(settler) => {
                use crate::remote::RemoteSettle;
                let (tag, op) = match op {
                    SettleOp::Ack { tag, multiple } => (tag, RemoteSettle::Ack { multiple }),
                    SettleOp::Nack { tag, multiple, requeue } => {
                        (tag, RemoteSettle::Nack { multiple, requeue })
                    }
                    SettleOp::Retry { tag, after } => (tag, RemoteSettle::Retry { after }),
                    SettleOp::Processed(_) | SettleOp::Rejected(_) => return Ok(()),
                };
                Arc::clone(settler).settle(tag.0, op).await.map(|_| ())
            }
        }
    }
}

/// Options of one subscription.
#[derive(Clone, Default)]
pub struct SubscribeOptions {
    /// Unsettled deliveries at most (0 = up to the queue's `depth_max`); `None` takes the queue's
    /// `prefetch_default`.
    pub prefetch: Option<u32>,
    /// Called with each message whose payload is not of the subscriber's type, before the message is
    /// rejected (dead-lettered where the queue has a dead-letter queue) and counted in the queue's
    /// [`QueueStats::undecodable`](crate::QueueStats::undecodable).
    pub on_undecodable: Option<UndecodableHook>,
}

/// A subscriber-side hook for payloads of the wrong type: see [`SubscribeOptions::on_undecodable`].
/// It runs on the subscriber's thread, so it should be quick (count, log, alert).
pub type UndecodableHook = Arc<dyn Fn(&Message, &crate::PayloadError) + Send + Sync>;

impl std::fmt::Debug for SubscribeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("prefetch", &self.prefetch)
            .field("on_undecodable", &self.on_undecodable.as_ref().map(|_| "Fn"))
            .finish()
    }
}

impl SubscribeOptions {
    /// Sets the prefetch.
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Sets the hook called for each payload of the wrong type.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
    /// let mismatched = Arc::new(AtomicU64::new(0));
    /// let seen = mismatched.clone();
    /// let options = tubemail::SubscribeOptions::default().on_undecodable(move |msg, error| {
    ///     seen.fetch_add(1, Ordering::Relaxed);
    ///     eprintln!("message {:?} with key {}: {error}", msg.id(), msg.key());
    /// });
    /// assert!(options.on_undecodable.is_some());
    /// ```
    pub fn on_undecodable(
        mut self,
        hook: impl Fn(&Message, &crate::PayloadError) + Send + Sync + 'static,
    ) -> Self {
        self.on_undecodable = Some(Arc::new(hook));
        self
    }
}

/// Flushes batched settlements.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// Why a subscriber restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Its handler panicked.
    Panicked,
    /// The simulator crashed it before its handler ran.
    InjectedBeforeHandler,
    /// The simulator crashed it after its handler ran, before the ack.
    InjectedAfterHandler,
}

/// The subscriber actor.
pub(crate) struct SubscriberActor<T, H> {
    link: Arc<QueueLink>,
    mode: DeliveryMode,
    prefetch: u32,
    handler: Box<H>,
    epoch: u32,
    pending: SmallVec<[SettleOp; 2]>,
    processed: u32,
    /// Every tag up to this one is settled or has its settlement in `pending`.
    contiguous: u64,
    flush_scheduled: bool,
    /// Deliveries received and not yet handled, in order; bounded by the prefetch.
    backlog: VecDeque<DeliverItem>,
    /// A handler future is pending.
    running: bool,
    /// At most once: the tags handled in this incarnation, newest [`SEEN_TAGS_MAX`].
    seen: BTreeSet<u64>,
    queue: Arc<str>,
    /// Set by the unsubscriber before it sends `Stop`: run no more handlers.
    stopping: Arc<StopSignal>,
    counters: Arc<crate::queue::SideCounters>,
    on_undecodable: Option<UndecodableHook>,
    /// The watchdog has found a blocking handler (and moved it, if it could).
    moved_off_arbiter: bool,
    probe: ProbeRef,
    _value: PhantomData<fn() -> T>,
}

/// How a subscriber is told to stop: first to run no more handlers, then, past the unsubscriber's
/// timeout, to interrupt the handler it is running (its future is dropped at its next await point).
#[derive(Debug, Default)]
pub(crate) struct StopSignal {
    requested: AtomicBool,
    interrupt: AtomicBool,
    waker: futures::task::AtomicWaker,
}

impl StopSignal {
    /// Run no more handlers.
    pub(crate) fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Drop the running handler's future.
    pub(crate) fn interrupt(&self) {
        self.interrupt.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// A pending handler's future that ends with `None` when its subscriber is interrupted.
struct Interruptible {
    future: Pin<Box<dyn Future<Output = Outcome>>>,
    signal: Arc<StopSignal>,
}

impl Future for Interruptible {
    type Output = Option<Outcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Outcome>> {
        self.signal.waker.register(cx.waker());
        if self.signal.interrupt.load(Ordering::Acquire) {
            return std::task::Poll::Ready(None);
        }
        self.future.as_mut().poll(cx).map(Some)
    }
}

/// Where a subscriber consumes, and how.
pub(crate) struct Placement {
    pub(crate) queue_addr: Addr<QueueActor>,
    pub(crate) queue: Arc<str>,
    pub(crate) consumer: ConsumerId,
    pub(crate) mode: DeliveryMode,
    pub(crate) prefetch: u32,
    /// Set by the unsubscriber before it sends `Stop`.
    pub(crate) stopping: Arc<StopSignal>,
    /// The queue's counters kept outside its actor (undecodable payloads).
    pub(crate) counters: Arc<crate::queue::SideCounters>,
    /// The subscription's hook for payloads of the wrong type.
    pub(crate) on_undecodable: Option<UndecodableHook>,
}

impl<T, H> SubscriberActor<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Runner<T>,
{
    /// Builds the actor for `place` around `handler`.
    pub(crate) fn new(place: Placement, handler: H, probe: ProbeRef) -> Self {
        let Placement { queue_addr, queue, consumer, mode, prefetch, stopping, counters, on_undecodable } =
            place;
        Self {
            link: Arc::new(QueueLink { queue: queue_addr, consumer }),
            mode,
            prefetch,
            handler: Box::new(handler),
            epoch: 0,
            pending: SmallVec::new(),
            processed: 0,
            contiguous: 0,
            flush_scheduled: false,
            backlog: VecDeque::new(),
            running: false,
            seen: BTreeSet::new(),
            queue,
            stopping,
            counters,
            on_undecodable,
            moved_off_arbiter: false,
            probe,
            _value: PhantomData,
        }
    }

    fn record(&mut self, tag: u64, msg: &Arc<Message>, outcome: Outcome, ctx: &mut Context<Self>) {
        match self.mode {
            DeliveryMode::AtMostOnce => match outcome {
                Outcome::Ack | Outcome::Defer => self.processed += 1,
                Outcome::Nack { .. } | Outcome::Reject | Outcome::Retry { .. } => {
                    self.pending.push(SettleOp::Rejected(msg.clone()))
                }
            },
            DeliveryMode::AtLeastOnce => self.record_at_least_once(tag, outcome),
        }
        // A run of handled at-most-once deliveries travels as one `Processed(n)`: count it as one op.
        if self.pending.len() + usize::from(self.processed > 0) >= SETTLE_BATCH_MAX {
            self.flush(ctx);
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }

    fn record_at_least_once(&mut self, tag: u64, outcome: Outcome) {
        let in_order = tag == self.contiguous + 1;
        let op = match outcome {
            Outcome::Defer => return,
            Outcome::Ack if in_order => {
                self.contiguous = tag;
                if let Some(SettleOp::Ack { tag: last, multiple: true }) = self.pending.last_mut() {
                    *last = DeliveryTag(tag);
                    return;
                }
                SettleOp::Ack { tag: DeliveryTag(tag), multiple: true }
            }
            Outcome::Ack => SettleOp::Ack { tag: DeliveryTag(tag), multiple: false },
            Outcome::Nack { requeue } => SettleOp::Nack { tag: DeliveryTag(tag), multiple: false, requeue },
            Outcome::Reject => SettleOp::Nack { tag: DeliveryTag(tag), multiple: false, requeue: false },
            Outcome::Retry { after } => SettleOp::Retry { tag: DeliveryTag(tag), after },
        };
        if in_order {
            self.contiguous = tag;
        }
        self.pending.push(op);
    }

    fn take_ops(&mut self) -> SmallVec<[SettleOp; 2]> {
        let mut ops = std::mem::take(&mut self.pending);
        if self.processed > 0 {
            ops.push(SettleOp::Processed(std::mem::take(&mut self.processed)));
        }
        ops
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        let ops = self.take_ops();
        if ops.is_empty() {
            return;
        }
        let settle = Settle { consumer: self.link.consumer, epoch: self.epoch, ops };
        if let Err(SendError::Full(settle)) = self.link.queue.try_send(settle) {
            // The queue's mailbox is full: wait for room rather than lose the settlements.
            let queue = self.link.queue.clone();
            ctx.wait(
                async move {
                    queue.send(settle).await.ok();
                }
                .into_actor(self),
            );
        }
    }

    fn adopt(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.pending.clear();
        self.processed = 0;
        self.contiguous = 0;
        self.seen.clear();
        self.backlog.clear();
    }

    /// Runs handlers over the backlog in order until one has to wait.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while !self.running {
            let Some(item) = self.backlog.pop_front() else { return };
            self.run(item, ctx);
        }
    }

    fn run(&mut self, item: DeliverItem, ctx: &mut Context<Self>) {
        if self.stopping.requested() {
            // Unsubscribing: the queue requeues (or counts lost) what no handler ran for.
            return;
        }
        let DeliverItem { tag: DeliveryTag(tag), msg, delivery_count, topic } = item;
        if self.mode == DeliveryMode::AtMostOnce && !self.first_time(tag) {
            // A duplicated delivery: at most once, the handler never runs twice.
            return;
        }
        if let Some(probe) = &self.probe {
            if probe.strikes(FaultKind::CrashBefore) {
                probe.fault(FaultKind::CrashBefore, Some(msg.id), Some(&self.queue));
                return self.crashed(ctx, Crash::InjectedBeforeHandler);
            }
            let (queue, consumer) = (self.queue.to_string(), self.link.consumer.0);
            probe.record(What::HandlerStart { msg: msg.id, queue, consumer, tag });
        }
        let value = match msg.payload.read_value::<T>() {
            Ok(value) => value,
            Err(e) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                self.counters.topics.add(topic);
                tracing::warn!(consumer = self.link.consumer.0, error = %e, "undecodable payload rejected");
                if let Some(hook) = &self.on_undecodable {
                    // A panicking hook must not take the subscriber down with it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&msg, &e)));
                }
                return self.record(tag, &msg, Outcome::Reject, ctx);
            }
        };
        let epoch = self.epoch;
        let delivery = Delivery {
            value,
            msg: msg.clone(),
            tag: DeliveryTag(tag),
            epoch,
            delivery_count,
            link: Link::Local(self.link.clone()),
        };
        let mut run = std::panic::catch_unwind(AssertUnwindSafe(|| self.handler.run(delivery)));
        if let (Some(probe), Ok(ran)) = (&self.probe, &mut run) {
            if probe.strikes(FaultKind::Slow) {
                probe.fault(FaultKind::Slow, Some(msg.id), Some(&self.queue));
                *ran = Run::slowed(std::mem::replace(ran, Run::Done(Outcome::Ack)), probe.slowness());
            }
        }
        match run {
            Ok(Run::Done(outcome)) => self.finished(epoch, tag, &msg, Ok(outcome), ctx),
            Ok(Run::Pending(future)) => {
                self.running = true;
                let future = Interruptible { future, signal: self.stopping.clone() };
                let future = AssertUnwindSafe(future).catch_unwind();
                ctx.wait(future.into_actor(self).map(move |result, act, ctx| {
                    act.running = false;
                    match result {
                        // Interrupted by an unsubscriber past its timeout: the delivery stays
                        // unsettled, and the queue requeues it (or counts it lost).
                        Ok(None) => {}
                        Ok(Some(outcome)) => act.finished(epoch, tag, &msg, Ok(outcome), ctx),
                        Err(panic) => act.finished(epoch, tag, &msg, Err(panic), ctx),
                    }
                    act.drive(ctx);
                }));
            }
            Err(_) => self.crashed(ctx, Crash::Panicked),
        }
    }

    /// At most once: whether this tag is new in this incarnation (duplicates are skipped). The
    /// record is bounded: tags far below the newest are forgotten, as the queue never holds more than
    /// the prefetch window in flight.
    fn first_time(&mut self, tag: u64) -> bool {
        // Outside a simulation nothing duplicates a delivery on its way (an actor mailbox delivers each
        // message once), so only a simulated link needs the record.
        if self.probe.is_none() || probe::bug(&self.probe, |b| b.at_most_once_redelivers) {
            return true;
        }
        let fresh = self.seen.insert(tag);
        while self.seen.len() > SEEN_TAGS_MAX {
            self.seen.pop_first();
        }
        fresh
    }

    fn finished(
        &mut self,
        epoch: u32,
        tag: u64,
        msg: &Arc<Message>,
        result: std::thread::Result<Outcome>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(probe) = &self.probe {
            let (queue, consumer) = (self.queue.to_string(), self.link.consumer.0);
            let outcome = match &result {
                Ok(outcome) => HandlerOutcome::from(*outcome),
                Err(_) => HandlerOutcome::Panic,
            };
            probe.record(What::HandlerEnd { msg: msg.id, queue, consumer, tag, outcome });
            if result.is_ok() && self.epoch == epoch && probe.strikes(FaultKind::CrashAfter) {
                probe.fault(FaultKind::CrashAfter, Some(msg.id), Some(&self.queue));
                return self.crashed(ctx, Crash::InjectedAfterHandler);
            }
        }
        match result {
            Ok(outcome) if self.epoch == epoch => self.record(tag, msg, outcome, ctx),
            Ok(_) => {}
            Err(_) => self.crashed(ctx, Crash::Panicked),
        }
    }

    /// Runs handlers over a batch of deliveries, in order, until one has to wait.
    fn take(&mut self, d: Deliver, ctx: &mut Context<Self>) {
        if d.epoch > self.epoch {
            // The queue restarted and forgot what this subscriber held: start a new incarnation.
            self.adopt(d.epoch);
        }
        if d.epoch != self.epoch {
            // Delivered before a restart: the queue has requeued (or counted) it already.
            return;
        }
        if self.running || !self.backlog.is_empty() {
            self.backlog.extend(d.items);
            return self.drive(ctx);
        }
        let mut items = d.items.into_iter();
        while let Some(item) = items.next() {
            self.run(item, ctx);
            if self.epoch != d.epoch {
                // The handler panicked: the queue requeues (or counts) the rest of the batch.
                return;
            }
            if self.running {
                self.backlog.extend(items);
                return;
            }
        }
    }

    /// The watchdog: a batch that held the arbiter for [`BLOCKING_THRESHOLD`] or more had a handler
    /// that blocks. A sync handler then moves to a thread of its own, so that it no longer stalls the
    /// queues and subscribers that share its arbiter; an async one (whose future is not `Send`) is
    /// reported. Reads tokio's clock once per batch, not per delivery.
    fn watch(&mut self, took: Duration) {
        if took < BLOCKING_THRESHOLD || self.moved_off_arbiter {
            return;
        }
        self.moved_off_arbiter = true;
        let (queue, consumer) = (&*self.queue, self.link.consumer.0);
        let name = format!("tubemail-{queue}-{consumer}");
        if self.handler.move_off_arbiter(name) {
            tracing::warn!(
                queue,
                consumer,
                ?took,
                "a handler held its arbiter; it now runs on a thread of its own"
            );
        } else {
            tracing::warn!(
                queue,
                consumer,
                ?took,
                "an async handler held its arbiter: await instead of blocking, or use subscribe_blocking"
            );
        }
    }

    /// The subscriber restarts: a handler panicked, or the simulation crashed it.
    fn crashed(&mut self, ctx: &mut Context<Self>, crash: Crash) {
        if crash == Crash::Panicked {
            tracing::warn!(consumer = self.link.consumer.0, "handler panicked; restarting the subscriber");
        }
        if let Some(probe) = &self.probe {
            let (queue, consumer) = (self.queue.to_string(), self.link.consumer.0);
            probe.record(What::Crash {
                queue,
                consumer,
                before_handler: crash == Crash::InjectedBeforeHandler,
            });
        }
        self.seen.clear();
        self.handler.restarted();
        let ops = self.take_ops();
        self.epoch = self.epoch.wrapping_add(1);
        self.contiguous = 0;
        // The queue requeues (or counts lost) everything this incarnation held, the backlog included.
        self.backlog.clear();
        let restarted = Restarted { consumer: self.link.consumer, epoch: self.epoch, ops };
        let queue = self.link.queue.clone();
        ctx.wait(
            async move {
                queue.send(restarted).await.ok();
            }
            .into_actor(self),
        );
    }
}

impl<T, H> Actor for SubscriberActor<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Runner<T>,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let window = if self.prefetch == 0 { UNLIMITED_PREFETCH_WINDOW_MAX } else { self.prefetch as usize };
        ctx.set_mailbox_capacity(window + MAILBOX_SLACK);
    }
}

impl<T, H> actix::Handler<Deliver> for SubscriberActor<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Runner<T>,
{
    type Result = ();

    fn handle(&mut self, d: Deliver, ctx: &mut Self::Context) {
        let started = Instant::now();
        self.take(d, ctx);
        self.watch(started.elapsed());
    }
}

impl<T, H> actix::Handler<Flush> for SubscriberActor<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Runner<T>,
{
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        self.flush_scheduled = false;
        self.flush(ctx);
    }
}

impl<T, H> actix::Handler<Stop> for SubscriberActor<T, H>
where
    T: DeserializeOwned + Send + Sync + 'static,
    H: Runner<T>,
{
    type Result = ResponseActFuture<Self, ()>;

    /// Runs only once the running handler (if any) has returned: sends the batched settlements,
    /// forgets the backlog (the queue requeues or counts it), and stops; answered after that.
    fn handle(&mut self, _: Stop, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping.request();
        self.backlog.clear();
        let ops = self.take_ops();
        let queue = self.link.queue.clone();
        let settle = Settle { consumer: self.link.consumer, epoch: self.epoch, ops };
        let flushed = async move {
            if !settle.ops.is_empty() {
                let _ = queue.send(settle).await;
            }
        };
        Box::pin(flushed.into_actor(self).map(|(), _act, ctx| ctx.stop()))
    }
}
