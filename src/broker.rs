//! The broker: starts a topology's actors and is the handle to publish, subscribe and inspect.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::ids::{MessageId, QueueId};
use crate::message::{Deaths, Message, Payload};
use crate::probe::{self, ProbeRef, What};
use crate::queue::state::QueueState;
use crate::queue::{Delete, Drain, GetStats, Offer, QueueActor, QueueHandle, Subscribe, Unsubscribe};
use crate::registry::Registry;
use crate::routing::{validate_key, RoutingError};
use crate::stats::Stats;
use crate::subscriber::{
    AsyncRunner, Delivery, Handler, Outcome, Runner, Stop, SubscribeOptions, SubscriberActor, Subscription,
    SyncRunner,
};
use crate::topic::{Bind, Route, TopicActor, TopicHandle, Unbind};
use crate::topology::{QueueSpec, Topology, TopologyError};

/// The outcome of one publish: exactly one per publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// Every queue it routed to accepted it.
    Routed {
        /// How many queues.
        queues: u32,
    },
    /// No binding matched. With an alternate queue the message was kept there.
    Unroutable {
        /// The alternate queue that took it, if any.
        alternate: Option<String>,
    },
    /// At least one target queue refused it (full under `reject-publish`); the others kept it.
    Refused {
        /// How many queues accepted it.
        accepted: u32,
        /// The queues that refused it, in queue order.
        queues: Vec<String>,
    },
}

/// Why a publish could not be attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No topic of that name.
    #[error("no topic named {0:?}")]
    UnknownTopic(String),
    /// The routing key is invalid (over 255 bytes).
    #[error(transparent)]
    Key(#[from] RoutingError),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed,
}

/// Why `try_publish` did not publish; hands the value back where nothing took it.
#[derive(Debug, thiserror::Error)]
pub enum TryPublishError<T> {
    /// No room without waiting (a full mailbox, or a full `block` queue); no queue took the message.
    #[error("no room to publish without waiting")]
    Full(T),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed(T),
    /// The publish is invalid.
    #[error(transparent)]
    Invalid(PublishError),
}

impl<T> TryPublishError<T> {
    /// The value, when it was handed back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            TryPublishError::Full(v) | TryPublishError::Closed(v) => Some(v),
            TryPublishError::Invalid(_) => None,
        }
    }
}

/// Why a subscription could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// No queue of that name (or it has been deleted).
    #[error("no queue named {0:?}")]
    UnknownQueue(String),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed,
}

/// Why a binding could not be changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// No topic of that name.
    #[error("no topic named {0:?}")]
    UnknownTopic(String),
    /// No queue of that name.
    #[error("no queue named {0:?}")]
    UnknownQueue(String),
    /// The key or pattern is invalid.
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed,
}

/// Why a queue could not be declared.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeclareError {
    /// The spec is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A queue of that name exists with another spec.
    #[error("queue {0:?} exists with a different spec")]
    Conflict(String),
}

/// Why the broker could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// What shutting down found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether every subscriber settled what it held before the timeout.
    pub drained: bool,
    /// Unacked deliveries requeued at the end (at-least-once); they are in `stats` as ready.
    pub requeued: u64,
    /// Deliveries counted lost at the end (at-most-once).
    pub lost: u64,
    /// The final counters; `ready` messages were never delivered.
    pub stats: Stats,
}

/// An in-process broker. Cheap to clone; every clone is the same broker.
///
/// Start it inside an actix system (`#[actix::main]`, `actix::System::new().block_on(..)`, or
/// `#[actix::test]`): its actors live on the arbiter it was started on, which is the placement that
/// measured fastest (see docs/ARCHITECTURE.md). Its methods may be called from any thread.
///
/// ```
/// use tubemail::{Broker, Confirm, Outcome, Topology, TopicSpec, QueueSpec, TopicKind};
///
/// # actix::System::new().block_on(async {
/// let topology = Topology::new()
///     .topic("events", TopicSpec::new(TopicKind::Topic))
///     .queue("billing", QueueSpec::default())
///     .bind("events", "billing", "orders.*.paid");
/// let broker = Broker::start(topology).unwrap();
///
/// let (tx, mut rx) = tokio::sync::mpsc::channel(1);
/// broker
///     .subscribe("billing", move |order: tubemail::Delivery<u64>| {
///         let tx = tx.clone();
///         async move {
///             tx.send(*order).await.unwrap();
///             Outcome::Ack
///         }
///     })
///     .await
///     .unwrap();
///
/// let confirm = broker.publish("events", "orders.42.paid", 42_u64).await.unwrap();
/// assert_eq!(confirm, Confirm::Routed { queues: 1 });
/// assert_eq!(rx.recv().await, Some(42));
/// # });
/// ```
#[derive(Clone)]
pub struct Broker {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

/// Starts a [`Broker`] with options beyond its topology; made by [`Broker::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `start`"]
pub struct BrokerBuilder {
    topology: Topology,
    probe: ProbeRef,
}

impl BrokerBuilder {
    /// Reports fault sites and events to `probe` (the simulator's seam; see [`crate::probe`]).
    pub fn probe(mut self, probe: Arc<dyn crate::probe::Probe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Starts the broker, as [`Broker::start`] does.
    ///
    /// # Errors
    /// [`StartError::Topology`] when the topology is invalid.
    pub fn start(self) -> Result<Broker, StartError> {
        Broker::start_with(self.topology, self.probe)
    }
}

impl Broker {
    /// Validates the topology and starts its actors on the current arbiter.
    ///
    /// # Errors
    /// [`StartError::Topology`] when the topology is invalid.
    ///
    /// # Panics
    /// When called outside an actix system.
    pub fn start(topology: Topology) -> Result<Broker, StartError> {
        Self::start_with(topology, None)
    }

    /// A builder, for a broker with more than a topology: a [`Probe`](crate::probe::Probe) for the
    /// simulator.
    pub fn builder(topology: Topology) -> BrokerBuilder {
        BrokerBuilder { topology, probe: None }
    }

    fn start_with(topology: Topology, probe: ProbeRef) -> Result<Broker, StartError> {
        topology.validate()?;
        let registry = Arc::new(Registry::new(Arbiter::current(), probe));
        let broker = Broker { registry };
        for (name, spec) in &topology.queues {
            broker.start_queue(name, spec.clone());
        }
        for (name, spec) in &topology.topics {
            let (mut actor, table) = TopicActor::new(spec.kind);
            let queue_id = |q: &str| broker.registry.queue(q).expect("validated queue").id;
            for b in topology.bindings.iter().filter(|b| &b.topic == name) {
                actor.bind_now(queue_id(&b.queue), &b.key, b.weight).expect("validated binding");
            }
            let handle = TopicHandle {
                name: name.as_str().into(),
                kind: spec.kind,
                alternate: spec.alternate.as_deref().map(queue_id),
                table,
                cache: crate::topic::RouteCache::new(),
                counters: Default::default(),
                addr: TopicActor::start_in_arbiter(&broker.registry.arbiter, |_| actor),
            };
            broker.registry.insert_topic(Arc::new(handle));
        }
        Ok(broker)
    }

    fn start_queue(&self, name: &str, spec: QueueSpec) -> Arc<QueueHandle> {
        let id = self.registry.next_queue_id();
        let name: Arc<str> = name.into();
        let credits = QueueHandle::credits_for(&spec);
        let refused = Arc::default();
        let state = QueueState::new(name.clone(), spec.clone(), self.registry.started);
        let (inbox, inbox_rx) = crate::queue::inbox(QueueHandle::inbox_bound(&spec));
        let (registry, credits_, refused_) = (self.registry.clone(), credits.clone(), Arc::clone(&refused));
        // Built on its arbiter: the actor holds its inbox in an `Rc`, never leaving that thread.
        let addr = QueueActor::start_in_arbiter(&self.registry.arbiter, move |_| {
            QueueActor::new(id, inbox_rx, state, registry, credits_, refused_)
        });
        let handle = Arc::new(QueueHandle { id, name, addr, inbox, spec, credits, refused });
        self.registry.insert_queue(handle.clone());
        handle
    }

    /// Declares a queue at run time; declaring an existing queue with the same spec does nothing.
    ///
    /// # Errors
    /// [`DeclareError::Topology`] for an invalid spec or dead-letter reference,
    /// [`DeclareError::Conflict`] when the name exists with another spec.
    pub fn declare_queue(&self, name: &str, spec: QueueSpec) -> Result<(), DeclareError> {
        if let Some(existing) = self.registry.queue(name) {
            return if existing.spec == spec { Ok(()) } else { Err(DeclareError::Conflict(name.to_owned())) };
        }
        let mut check = Topology::new().queue(name, spec.clone());
        if let Some(dl) = spec.dead_letter.as_deref().filter(|dl| *dl != name) {
            if self.registry.queue(dl).is_none() {
                return Err(TopologyError::invalid(
                    format!("queues.{name}.dead_letter"),
                    format!("no queue named {dl:?} is declared"),
                )
                .into());
            }
            check = check.queue(dl, QueueSpec::default());
        }
        check.validate()?;
        self.start_queue(name, spec);
        Ok(())
    }

    /// Deletes a queue: it is unbound everywhere, its subscribers' unacked deliveries and its ready
    /// messages are counted as `dropped.deleted`, and its final counters stay in [`Broker::stats`].
    ///
    /// # Errors
    /// [`SubscribeError::UnknownQueue`] when there is no such queue.
    pub async fn delete_queue(&self, name: &str) -> Result<crate::stats::QueueStats, SubscribeError> {
        let queue = self.registry.queue(name).ok_or_else(|| SubscribeError::UnknownQueue(name.to_owned()))?;
        queue.addr.send(Delete).await.map_err(|_| SubscribeError::UnknownQueue(name.to_owned()))
    }

    /// A publisher for one topic, which skips the name lookup on each publish.
    ///
    /// # Errors
    /// [`PublishError::UnknownTopic`].
    pub fn publisher(&self, topic: &str) -> Result<Publisher, PublishError> {
        let handle = self.registry.topics.load().get(topic).cloned();
        let topic = handle.ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        Ok(Publisher { topic, registry: self.registry.clone() })
    }

    /// Publishes a typed value; waits only where a queue's policy is `block` or a mailbox is full.
    ///
    /// The value is shared, never copied or encoded, by every queue it reaches.
    /// Cancellation: dropping the future while it waits may leave the message in some target queues
    /// and not others.
    ///
    /// # Errors
    /// [`PublishError`] when the topic is unknown, the key invalid or the broker shut down.
    pub async fn publish<T: Serialize + Send + Sync + 'static>(
        &self,
        topic: &str,
        key: &str,
        value: T,
    ) -> Result<Confirm, PublishError> {
        self.publisher(topic)?.publish(key, value).await
    }

    /// Publishes raw bytes (MessagePack when a typed subscriber reads them).
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub async fn publish_bytes(
        &self,
        topic: &str,
        key: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<Confirm, PublishError> {
        self.publisher(topic)?.publish_bytes(key, bytes).await
    }

    /// Publishes without waiting.
    ///
    /// # Errors
    /// [`TryPublishError::Full`] with the value when no target queue could take it now;
    /// [`TryPublishError::Invalid`] for an unknown topic or invalid key.
    pub fn try_publish<T: Serialize + Send + Sync + 'static>(
        &self,
        topic: &str,
        key: &str,
        value: T,
    ) -> Result<Confirm, TryPublishError<T>> {
        self.publisher(topic).map_err(TryPublishError::Invalid)?.try_publish(key, value)
    }

    /// Subscribes a handler to a queue with the queue's default prefetch.
    ///
    /// # Errors
    /// [`SubscribeError::UnknownQueue`].
    pub async fn subscribe<T, H>(&self, queue: &str, handler: H) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        H: Handler<T>,
    {
        self.subscribe_with(queue, SubscribeOptions::default(), handler).await
    }

    /// Subscribes a handler to a queue.
    ///
    /// # Errors
    /// [`SubscribeError::UnknownQueue`]; [`SubscribeError::Closed`] after shutdown.
    pub async fn subscribe_with<T, H>(
        &self,
        queue: &str,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        H: Handler<T>,
    {
        self.start_subscriber::<T, _>(queue, options, AsyncRunner(handler)).await
    }

    /// Subscribes a synchronous handler: a function that decides at once, without a future to poll or
    /// allocate. The fastest kind of subscriber.
    ///
    /// # Errors
    /// As [`Broker::subscribe_with`].
    pub async fn subscribe_sync<T, F>(
        &self,
        queue: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
    {
        self.start_subscriber::<T, _>(queue, options, SyncRunner(handler)).await
    }

    async fn start_subscriber<T, R>(
        &self,
        queue: &str,
        options: SubscribeOptions,
        runner: R,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        R: Runner<T>,
    {
        if self.registry.closed.load(Ordering::Acquire) {
            return Err(SubscribeError::Closed);
        }
        let unknown = || SubscribeError::UnknownQueue(queue.to_owned());
        let handle = self.registry.queue(queue).ok_or_else(unknown)?;
        let consumer = self.registry.consumer_id();
        let prefetch = options.prefetch.unwrap_or(handle.spec.prefetch_default);
        let probe = self.registry.probe.clone();
        let (addr, name, mode) = (handle.addr.clone(), handle.name.clone(), handle.spec.delivery);
        let actor = SubscriberActor::<T, R>::new(addr, name, consumer, mode, prefetch, runner, probe);
        let addr = SubscriberActor::start_in_arbiter(&self.registry.arbiter, |_| actor);
        let stop = addr.clone().recipient::<Stop>();
        let subscribe = Subscribe { consumer, prefetch, recipient: addr.recipient() };
        match handle.addr.send(subscribe).await {
            Ok(Ok(())) => {}
            _ => {
                let _ = stop.send(Stop).await;
                return Err(unknown());
            }
        }
        self.registry.track_subscription(consumer, handle.addr.clone(), stop.clone());
        Ok(Subscription::new(handle.addr.clone(), consumer, handle.name.clone(), stop, self.registry.clone()))
    }

    /// Binds a queue to a topic at run time. `Ok(false)` when the binding existed already.
    ///
    /// # Errors
    /// [`BindError`] for unknown names or an invalid key.
    pub async fn bind(&self, topic: &str, queue: &str, key: &str) -> Result<bool, BindError> {
        let (topic, queue) = self.resolve(topic, queue)?;
        let bind = Bind { queue, key: key.to_owned(), weight: 1 };
        topic.addr.send(bind).await.map_err(|_| BindError::Closed)?.map_err(BindError::Routing)
    }

    /// Removes a binding. `Ok(false)` when there was no such binding.
    ///
    /// # Errors
    /// [`BindError`] for unknown names.
    pub async fn unbind(&self, topic: &str, queue: &str, key: &str) -> Result<bool, BindError> {
        let (topic, queue) = self.resolve(topic, queue)?;
        topic.addr.send(Unbind { queue, key: key.to_owned() }).await.map_err(|_| BindError::Closed)
    }

    fn resolve(&self, topic: &str, queue: &str) -> Result<(Arc<TopicHandle>, QueueId), BindError> {
        let t = self.registry.topics.load().get(topic).cloned();
        let t = t.ok_or_else(|| BindError::UnknownTopic(topic.to_owned()))?;
        let q = self.registry.queue(queue).ok_or_else(|| BindError::UnknownQueue(queue.to_owned()))?;
        Ok((t, q.id))
    }

    /// A snapshot of every topic's and queue's counters (deleted queues included).
    ///
    /// Each queue answers after the messages already in its mailbox, so a quiet broker's snapshot is
    /// exact.
    pub async fn stats(&self) -> Stats {
        let mut stats = Stats::default();
        for (name, topic) in self.registry.topics.load().iter() {
            stats.topics.insert(name.clone(), topic.stats());
        }
        stats.queues = self.registry.graveyard();
        let queues = self.registry.queues().by_id.clone();
        for queue in queues.into_iter().flatten() {
            if let Ok(q) = queue.addr.send(GetStats).await {
                stats.queues.insert(queue.name.to_string(), q);
            }
        }
        stats
    }

    /// Stops accepting publishes and subscriptions, drains every subscriber for up to `timeout`, then
    /// requeues (at-least-once) or counts lost (at-most-once) what is still unsettled.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        self.registry.closed.store(true, Ordering::Release);
        let subscriptions = self.registry.take_subscriptions();
        let deadline = Instant::now() + timeout;
        let mut report = ShutdownReport { drained: true, ..Default::default() };
        let mut waits = Vec::new();
        for (consumer, (queue, _)) in &subscriptions {
            let (done, drained) = tokio::sync::oneshot::channel();
            if queue.send(Drain { consumer: *consumer, done }).await.is_ok() {
                waits.push(drained);
            }
        }
        for drained in waits {
            let ok = matches!(tokio::time::timeout_at(deadline, drained).await, Ok(Ok(())));
            report.drained &= ok;
        }
        for (consumer, (queue, stop)) in subscriptions {
            if let Ok((requeued, lost)) = queue.send(Unsubscribe { consumer }).await {
                report.requeued += requeued;
                report.lost += lost;
            }
            // Not awaited: a subscriber handles `Stop` only once its running handler ends.
            stop.do_send(Stop);
        }
        report.stats = self.stats().await;
        report
    }
}

/// Publishes to one topic.
#[derive(Clone)]
pub struct Publisher {
    topic: Arc<TopicHandle>,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("topic", &self.topic.name).finish()
    }
}

/// How far a publish got without waiting.
struct Attempt {
    route: Route,
    /// The alternate queue's name, for [`Route::Alternate`].
    alternate: Option<Arc<str>>,
    accepted: u32,
    /// The accepting queues' names, kept only in a simulation.
    accepted_names: Option<Vec<String>>,
    refused: SmallVec<[Arc<str>; 1]>,
    /// Target queues that need waiting for (or, for `try_publish`, could not take it now).
    waiting: SmallVec<[Arc<QueueHandle>; 2]>,
    /// The message, when the publisher still holds a reference: kept for the waiting queues.
    held: Option<Arc<Message>>,
}

impl Publisher {
    /// Publishes a typed value. See [`Broker::publish`].
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub async fn publish<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Confirm, PublishError> {
        self.publish_payload(key, Payload::value(value)).await
    }

    /// Publishes raw bytes. See [`Broker::publish_bytes`].
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub async fn publish_bytes(&self, key: &str, bytes: impl Into<Bytes>) -> Result<Confirm, PublishError> {
        // Never cloned on the way: every queue shares the message, and subscribers read the bytes in
        // place, so a `Bytes` made from a `Vec` is never promoted to a shared buffer (an allocation).
        self.publish_payload(key, Payload::Bytes(bytes.into())).await
    }

    /// Publishes without waiting. See [`Broker::try_publish`].
    ///
    /// # Errors
    /// As [`Broker::try_publish`].
    pub fn try_publish<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Confirm, TryPublishError<T>> {
        match self.check(key) {
            Ok(()) => {}
            Err(PublishError::Closed) => return Err(TryPublishError::Closed(value)),
            Err(e) => return Err(TryPublishError::Invalid(e)),
        }
        let msg = self.message(key, Payload::value(value), None);
        let mut attempt = self.route_and_offer(key, msg);
        if attempt.route == Route::Unroutable {
            return Ok(self.unroutable());
        }
        if attempt.accepted == 0 && attempt.refused.is_empty() && !attempt.waiting.is_empty() {
            self.topic.counters.published.fetch_sub(1, Ordering::Relaxed);
            let msg = attempt.held.take().expect("a queue with no room hands the message back");
            return Err(TryPublishError::Full(take_value(msg)));
        }
        for queue in attempt.waiting.drain(..) {
            queue.refused.fetch_add(1, Ordering::Relaxed);
            attempt.refused.push(queue.name.clone());
        }
        Ok(self.confirm(attempt))
    }

    async fn publish_payload(&self, key: &str, payload: Payload) -> Result<Confirm, PublishError> {
        self.publish_as(key, payload, None, 1).await.map(|(_, confirm)| confirm)
    }

    /// Publishes a payload with a given message id, or a new one when `id` is `None`; `attempt_no`
    /// counts from 1. A publisher that lost a confirm publishes again with the same id, so that an
    /// idempotent consumer can tell the copies apart (the simulator's `confirm-loss` fault does so).
    /// Returns the id and the confirm.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    #[doc(hidden)]
    pub async fn publish_as(
        &self,
        key: &str,
        payload: Payload,
        id: Option<MessageId>,
        attempt_no: u32,
    ) -> Result<(MessageId, Confirm), PublishError> {
        self.check(key)?;
        let msg = self.message(key, payload, id);
        let id = msg.id;
        if let Some(probe) = &self.registry.probe {
            probe.record(What::Publish { msg: id, key: key.to_owned(), attempt: attempt_no });
        }
        let mut attempt = self.route_and_offer(key, msg);
        if attempt.route == Route::Unroutable {
            self.record_confirm(id, Vec::new(), Vec::new());
            return Ok((id, self.unroutable()));
        }
        let held = attempt.held.take();
        for queue in std::mem::take(&mut attempt.waiting) {
            let msg = held.clone().expect("a queue with no room hands the message back");
            match queue.offer(msg).await {
                Offer::Accepted => {
                    attempt.accepted += 1;
                    if let Some(names) = &mut attempt.accepted_names {
                        names.push(queue.name.to_string());
                    }
                }
                Offer::Refused => attempt.refused.push(queue.name.clone()),
                Offer::Full(_) | Offer::Closed => {}
            }
        }
        if let Some(names) = attempt.accepted_names.take() {
            let refused = attempt.refused.iter().map(|q| q.to_string()).collect();
            self.record_confirm(id, names, refused);
        }
        Ok((id, self.confirm(attempt)))
    }

    fn record_confirm(&self, msg: MessageId, queues: Vec<String>, refused: Vec<String>) {
        if let Some(probe) = &self.registry.probe {
            probe.record(What::Confirm { msg, queues, refused });
        }
    }

    fn check(&self, key: &str) -> Result<(), PublishError> {
        validate_key(key)?;
        if self.registry.closed.load(Ordering::Acquire) {
            return Err(PublishError::Closed);
        }
        Ok(())
    }

    fn message(&self, key: &str, payload: Payload, id: Option<MessageId>) -> Arc<Message> {
        self.topic.counters.published.fetch_add(1, Ordering::Relaxed);
        let id = id.unwrap_or_else(|| self.registry.message_id());
        Arc::new(Message { id, key: key.into(), payload, deaths: Deaths::NONE })
    }

    /// Counts an unroutable publish (no binding, no alternate queue) and confirms it.
    fn unroutable(&self) -> Confirm {
        self.topic.counters.unroutable.fetch_add(1, Ordering::Relaxed);
        self.topic.counters.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
        Confirm::Unroutable { alternate: None }
    }

    /// Routes `msg` and offers it to every target queue without waiting.
    fn route_and_offer(&self, key: &str, msg: Arc<Message>) -> Attempt {
        let skips_binding = probe::bug(&self.registry.probe, |b| b.router_skips_binding);
        self.topic.with_route(key, &self.registry, |route, targets| {
            match targets {
                // Broken on purpose: the last matching binding is skipped.
                [kept @ .., _] if skips_binding && !kept.is_empty() => self.attempt(msg, route, kept),
                _ => self.attempt(msg, route, targets),
            }
        })
    }

    /// Offers `msg` to `targets` without waiting. The last target gets the publisher's own reference
    /// rather than a clone, sparing a reference count round trip with the broker's thread; the message
    /// comes back in `Attempt::held` when a queue hands it back (no room now).
    fn attempt(&self, msg: Arc<Message>, route: Route, targets: &[Arc<QueueHandle>]) -> Attempt {
        let accepted_names = self.registry.probe.as_ref().map(|_| Vec::new());
        let alternate = match (route, targets) {
            (Route::Alternate, [queue]) => Some(queue.name.clone()),
            _ => None,
        };
        let mut attempt = Attempt {
            route,
            alternate,
            accepted: 0,
            accepted_names,
            refused: SmallVec::new(),
            waiting: SmallVec::new(),
            held: None,
        };
        let mut msg = Some(msg);
        for (i, queue) in targets.iter().enumerate() {
            let offered = if i + 1 == targets.len() { msg.take() } else { msg.clone() };
            let offered = offered.expect("the publisher holds the message until the last target");
            match queue.try_offer(offered) {
                Offer::Accepted => {
                    attempt.accepted += 1;
                    if let Some(names) = &mut attempt.accepted_names {
                        names.push(queue.name.to_string());
                    }
                }
                Offer::Refused => attempt.refused.push(queue.name.clone()),
                Offer::Full(back) => {
                    attempt.waiting.push(queue.clone());
                    attempt.held = Some(back);
                }
                Offer::Closed => {}
            }
        }
        if attempt.held.is_none() {
            attempt.held = msg;
        }
        attempt
    }

    fn confirm(&self, attempt: Attempt) -> Confirm {
        let counters = &self.topic.counters;
        counters.routed.fetch_add(u64::from(attempt.accepted), Ordering::Relaxed);
        if !attempt.refused.is_empty() {
            counters.refused.fetch_add(attempt.refused.len() as u64, Ordering::Relaxed);
        }
        if let Route::Alternate = attempt.route {
            counters.unroutable.fetch_add(1, Ordering::Relaxed);
            if let (1, Some(name)) = (attempt.accepted, &attempt.alternate) {
                counters.alternate.fetch_add(1, Ordering::Relaxed);
                return Confirm::Unroutable { alternate: Some(name.to_string()) };
            }
            counters.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
        }
        if attempt.refused.is_empty() {
            Confirm::Routed { queues: attempt.accepted }
        } else {
            let queues = attempt.refused.iter().map(|q| q.to_string()).collect();
            Confirm::Refused { accepted: attempt.accepted, queues }
        }
    }
}

/// Recovers the published value from a message that no queue took.
fn take_value<T: Send + Sync + 'static>(msg: Arc<Message>) -> T {
    let msg =
        Arc::try_unwrap(msg).unwrap_or_else(|_| unreachable!("no queue holds a message it did not take"));
    match msg.payload {
        Payload::Value(value) => match Payload::any(value).downcast::<T>().map(Arc::try_unwrap) {
            Ok(Ok(value)) => value,
            _ => unreachable!("the payload was built from this T and not shared"),
        },
        Payload::Bytes(_) => unreachable!("try_publish builds a typed payload"),
    }
}
