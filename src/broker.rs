//! The broker: starts a topology's actors and is the handle to publish, subscribe and inspect.
//!
//! # Delivery guarantees
//! Every publish ends one way, in its confirm and in the topic's counters: routed to some queues,
//! refused by every target, or unroutable (to the alternate queue, or dropped and counted). A publish
//! racing the deletion of its queue either reaches the queue before the deletion (and is counted in
//! that incarnation, as `dropped.deleted` if it was still there) or finds it gone and is routed as if
//! it had never existed. Each queue then keeps its own delivery mode's promise.
//!
//! # Ordering
//! A publisher's messages reach each queue in publish order. Queue ids are never reused: a statistic,
//! a binding or a cached route of a deleted queue can never reach a queue re-declared under its name.
//!
//! # Backpressure
//! `publish` waits only where a queue's policy is `block` (the default) or a `drop-head` queue's inbox
//! is full; `try_publish` never waits and hands the value back. Placement: queues spread over the
//! broker's arbiters (see [`BrokerBuilder::arbiters`]), subscribers beside their queue.
//!
//! # Shutdown
//! [`Broker::shutdown`] refuses new work, releases waiting publishers, delivers what is ready within
//! its timeout, retires every subscriber (drain, stop, remove: the routine
//! [`Subscription::unsubscribe`] uses), stops every actor and the broker's own arbiters, and reports
//! final counters; afterwards every method answers `Closed`, and the broker's memory is freed when
//! the last handle is dropped.

mod bridge;
mod publisher;
mod registry;
mod remote;
mod streams;
mod subscription;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use self::bridge::BRIDGE_RETRY_AFTER;
pub use self::publisher::{Publisher, DELAY_MAX};
use self::registry::Registry;
pub use self::registry::DELETED_QUEUES_KEPT_MAX;
use self::remote::RemoteBroker;
pub use self::streams::GROUP_NAME_MAX;
use self::subscription::Subscriber;
pub use self::subscription::{Subscription, UnsubscribeReport};
use crate::ids::QueueId;
use crate::probe::ProbeRef;
use crate::protocol::{Bind, Delete, GetStats, Stop, Subscribe, Unbind};
use crate::queue::state::QueueState;
use crate::queue::{InsertError, QueueActor, QueueHandle, QueueHost};
use crate::routing::RoutingError;
use crate::stats::{DeletedQueue, QueueStats, Stats};
use crate::stream::Streams;
use crate::subscriber::{
    AsyncRunner, Delivery, Handler, Outcome, Placement, Runner, SubscribeOptions, SubscriberActor, SyncRunner,
};
use crate::topic::{StreamRoutes, TopicActor, TopicHandle};
use crate::topology::{QueueSpec, Target, Topology, TopologyError};

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
    /// `try_publish` on a remote broker: handed to the connection, within the window of unconfirmed
    /// publishes; the remote's confirm comes later and is counted in the topic's [`Stats`].
    Sent,
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
    /// The payload could not be encoded as MessagePack for a remote broker.
    #[error("cannot encode the payload: {0}")]
    Encode(String),
    /// The remote broker failed the publish (a lost connection): the message may not have been
    /// stored; publish it again (consumers must be idempotent, as at-least-once always needs).
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
    /// A delayed publish asked for more than [`DELAY_MAX`].
    #[error("a delay of {delay:?} is longer than the {max:?} a publish may wait")]
    DelayTooLong {
        /// The delay asked for.
        delay: Duration,
        /// [`DELAY_MAX`].
        max: Duration,
    },
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
    /// The remote broker refused the consumer or could not be reached.
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
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
    /// The remote broker refused the binding or could not be reached.
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
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
    /// Every queue id has been used: 2³² queues were declared in this broker's life.
    #[error("the broker has used every queue id")]
    IdsExhausted,
    /// A durable queue's journal could not be opened (locked, damaged, or an I/O error).
    #[error("cannot open the journal of queue {queue:?}: {reason}")]
    Journal {
        /// The queue.
        queue: String,
        /// The log's words.
        reason: String,
    },
    /// The remote broker refused the queue or could not be reached.
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed,
}

/// Why a queue could not be deleted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeleteError {
    /// No queue of that name (or it has been deleted already).
    #[error("no queue named {0:?}")]
    UnknownQueue(String),
    /// The remote broker could not delete it.
    #[error(transparent)]
    Remote(crate::remote::RemoteError),
    /// The broker has shut down.
    #[error("the broker has shut down")]
    Closed,
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The topology is invalid.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Called outside an actix system: start the broker inside `#[actix::main]`,
    /// `actix::System::new().block_on(..)` or `#[actix::test]`.
    #[error(
        "no actix system runs on this thread: start the broker inside #[actix::main], \
         actix::System::new().block_on(..) or #[actix::test]"
    )]
    NoActixSystem,
    /// An arbiter count of 0 or above [`ARBITERS_MAX`].
    #[error("a broker runs on 1 to {ARBITERS_MAX} arbiters, not {0}")]
    Arbiters(usize),
    /// The data directory or a stream in it could not be opened: locked by another process, not a
    /// log, damaged, or an I/O error (each names the file).
    #[error("cannot open the streams: {0}")]
    Log(#[from] tubemail_log::LogError),
    /// A durable queue's journal could not be opened or replayed (damaged, or an I/O error).
    #[error("cannot open the journal of queue {queue:?}: {error}")]
    Journal {
        /// The queue.
        queue: String,
        /// The log's error, naming the file.
        error: tubemail_log::LogError,
    },
    /// The remote broker could not be reached, or refused the topology.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// A remote broker was named (a builder's [`BrokerBuilder::remote`] or the topology's
    /// `connect`) but the broker was started with the synchronous `start`: connecting waits for the
    /// network, so use `Broker::connect(topology).await` or `BrokerBuilder::connect().await`.
    #[error("topology names a remote broker ({0}): start it with `Broker::connect(topology).await`")]
    NeedsConnect(String),
}

/// What shutting down found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether this call shut the broker down; `false` when an earlier call had (the rest of the
    /// report is then empty but for `stats`).
    pub shut_down: bool,
    /// Whether every subscriber settled what it held before the timeout.
    pub drained: bool,
    /// Whether every subscriber stopped by itself before the timeout (see `interrupted`).
    pub stopped: bool,
    /// Handlers interrupted at the timeout (see [`UnsubscribeReport::interrupted`]).
    pub interrupted: u64,
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
    /// The remote backend, when the broker runs on RabbitMQ or NATS (see [`crate::remote`]).
    remote: Option<Arc<RemoteBroker>>,
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
    arbiters: Option<usize>,
}

impl BrokerBuilder {
    /// Runs the broker on the remote broker at `url` (`amqp://…` for RabbitMQ, `nats://…` for NATS
    /// JetStream), overriding the topology's `connect`; start it with [`BrokerBuilder::connect`].
    pub fn remote(mut self, url: impl Into<String>) -> Self {
        self.topology.connect = Some(url.into());
        self
    }

    /// Runs the broker on RabbitMQ at `url` (`amqp://guest:guest@127.0.0.1:5672/%2f`), through the
    /// `rabbitmq` feature; start it with [`BrokerBuilder::connect`].
    pub fn rabbitmq(self, url: impl Into<String>) -> Self {
        self.remote(url)
    }

    /// Runs the broker on NATS JetStream at `url` (`nats://127.0.0.1:4222`), through the `nats`
    /// feature; start it with [`BrokerBuilder::connect`].
    pub fn nats(self, url: impl Into<String>) -> Self {
        self.remote(url)
    }

    /// Starts the broker: in this process, as [`BrokerBuilder::start`] does, or on the remote broker
    /// the topology's `connect` (or [`BrokerBuilder::remote`]) names, declaring the topology there
    /// (idempotently) first.
    ///
    /// # Errors
    /// As [`BrokerBuilder::start`]; [`StartError::Remote`] when the remote broker cannot be reached,
    /// refuses a declaration, or the backend is not built in.
    pub async fn connect(self) -> Result<Broker, StartError> {
        let Some(url) = self.topology.connect.clone() else { return self.start() };
        let endpoint = crate::remote::Endpoint::parse(&url)?;
        self.topology.validate()?;
        if let Some(stream) = self.topology.streams.keys().next() {
            return Err(StartError::Remote(crate::remote::RemoteError::Unsupported {
                backend: endpoint.backend(),
                what: format!("keep stream {stream:?}"),
                hint: "streams live in process; run the topology's streams on a broker started with \
                       `Broker::start`"
                    .to_owned(),
            }));
        }
        let arbiter = current_arbiter().ok_or(StartError::NoActixSystem)?;
        let remote = RemoteBroker::connect(endpoint, self.topology).await?;
        let clock = crate::stream::Clock::new(Instant::now());
        let streams = Streams::open(None, &Default::default(), clock)?;
        let arbiters = registry::Arbiters::start(arbiter.clone(), 1);
        let registry = Arc::new(Registry::new(arbiter, arbiters, None, streams, 0));
        Ok(Broker { registry, remote: Some(Arc::new(remote)) })
    }
}

/// How often a broker applies retention and compaction to its streams (see
/// [`Broker::maintain_streams`] to do it now).
pub const STREAM_MAINTENANCE_EVERY: Duration = Duration::from_secs(30);

impl BrokerBuilder {
    /// Reports fault sites and events to `probe` (the simulator's seam; see [`crate::probe`]). A
    /// probed broker runs on one arbiter, the simulator's one thread.
    pub fn probe(mut self, probe: Arc<dyn crate::probe::Probe>) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Spreads queues and their subscribers over `n` arbiters (threads): the one the broker starts
    /// on and `n - 1` of its own. Default: one per core ([`std::thread::available_parallelism`]), so
    /// that a slow handler of one queue does not delay the queues on the other arbiters; but one
    /// when the broker starts under tokio's paused clock (`tokio::time::pause`, in tests), which
    /// other arbiters' runtimes would not share. One arbiter is also the fastest path for a single
    /// queue. The queue with id `i` lives on arbiter `i % n`, and every subscriber beside its queue.
    pub fn arbiters(mut self, n: usize) -> Self {
        self.arbiters = Some(n);
        self
    }

    /// Keeps streams in `dir` (created if missing, locked while the broker runs), overriding the
    /// topology's `data_dir`. Without a directory, streams live in memory.
    pub fn data_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.topology.data_dir = Some(dir.into());
        self
    }

    /// Starts the broker, as [`Broker::start`] does.
    ///
    /// # Errors
    /// [`StartError::Topology`] when the topology is invalid.
    pub fn start(self) -> Result<Broker, StartError> {
        if let Some(url) = &self.topology.connect {
            return Err(StartError::NeedsConnect(crate::remote::redact(url)));
        }
        let arbiters = match (&self.probe, self.arbiters) {
            (Some(_), _) => 1,
            (None, Some(n)) => n,
            // Under tokio's paused clock (a test), other arbiters' runtimes would not see the
            // pause: one arbiter keeps every actor on the test's clock.
            (None, None) if clock_paused() => 1,
            (None, None) => std::thread::available_parallelism().map_or(1, usize::from).min(ARBITERS_MAX),
        };
        if !(1..=ARBITERS_MAX).contains(&arbiters) {
            return Err(StartError::Arbiters(arbiters));
        }
        Broker::start_with(self.topology, self.probe, arbiters)
    }
}

impl Broker {
    /// Starts a broker for `topology` on the current arbiter.
    ///
    /// # Errors
    /// [`StartError::Topology`] when the topology is invalid; [`StartError::NoActixSystem`] when called
    /// outside an actix system.
    pub fn start(topology: Topology) -> Result<Broker, StartError> {
        Self::builder(topology).start()
    }

    /// Starts a broker for `topology`: on the remote broker its `connect` line names (RabbitMQ or
    /// NATS JetStream, see [`crate::remote`]), else in this process as [`Broker::start`] does. The one
    /// entry point for code that should run on either.
    ///
    /// # Errors
    /// As [`BrokerBuilder::connect`].
    pub async fn connect(topology: Topology) -> Result<Broker, StartError> {
        Self::builder(topology).connect().await
    }

    /// Where this broker runs: `None` in this process, else the remote broker's endpoint.
    pub fn endpoint(&self) -> Option<&crate::remote::Endpoint> {
        self.remote.as_deref().map(|r| &r.endpoint)
    }

    /// A builder, for a broker with more than a topology: a [`Probe`](crate::probe::Probe) for the
    /// simulator, arbiters, a data directory, a remote backend.
    pub fn builder(topology: Topology) -> BrokerBuilder {
        BrokerBuilder { topology, probe: None, arbiters: None }
    }

    fn start_with(topology: Topology, probe: ProbeRef, arbiters: usize) -> Result<Broker, StartError> {
        topology.validate()?;
        for warning in topology.warnings() {
            tracing::warn!("{warning}");
        }
        let arbiter = current_arbiter().ok_or(StartError::NoActixSystem)?;
        let clock = crate::stream::Clock::new(Instant::now());
        let streams = Streams::open(topology.data_dir.as_deref(), &topology.streams, clock)?;
        let arbiters = registry::Arbiters::start(arbiter.clone(), arbiters);
        let topics = topology.topics.len();
        let registry = Arc::new(Registry::new(arbiter, arbiters, probe, streams, topics));
        let broker = Broker { registry, remote: None };
        if !topology.streams.is_empty() || topology.queues.values().any(|q| q.durable) {
            broker.start_stream_maintenance();
        }
        for (name, spec) in &topology.queues {
            broker.start_queue(name, spec.clone()).map_err(|e| match e {
                InsertError::Journal(e) => StartError::Journal { queue: name.clone(), error: e },
                _ => StartError::Topology(TopologyError::invalid(
                    format!("queues.{name}"),
                    "declared twice".to_owned(),
                )),
            })?;
        }
        for (index, (name, spec)) in topology.topics.iter().enumerate() {
            let (mut actor, table) = TopicActor::new(spec.kind);
            let queue_id = |q: &str| broker.registry.queue(q).map(|h| h.id);
            let mut stream_bindings = Vec::new();
            for b in topology.bindings.iter().filter(|b| &b.topic == name) {
                match &b.target {
                    Target::Queue(q) => {
                        let queue = queue_id(q).expect("a validated topology binds declared queues");
                        actor
                            .bind_now(queue, &b.key, b.weight)
                            .expect("a validated topology has valid bindings");
                    }
                    Target::Stream(s) => {
                        let stream = broker
                            .registry
                            .streams
                            .get(s)
                            .expect("a validated topology binds declared streams");
                        stream_bindings.push((stream.clone(), b.key.clone()));
                    }
                }
            }
            let streams = if stream_bindings.is_empty() {
                None
            } else {
                Some(
                    StreamRoutes::new(spec.kind, stream_bindings)
                        .expect("a validated topology has valid bindings"),
                )
            };
            let handle = TopicHandle {
                name: name.as_str().into(),
                kind: spec.kind,
                alternate: spec.alternate.as_deref().and_then(queue_id),
                table,
                cache: crate::topic::RouteCache::new(),
                counters: Default::default(),
                addr: TopicActor::start_in_arbiter(&broker.registry.arbiter, |_| actor),
                streams,
                index: crate::queue::TopicIndex::of(index),
                undecodable: broker.registry.undecodable_by_topic.clone(),
            };
            broker.registry.insert_topic(Arc::new(handle));
        }
        Ok(broker)
    }

    fn start_queue(&self, name: &str, spec: QueueSpec) -> Result<Arc<QueueHandle>, InsertError> {
        let registry = &self.registry;
        registry.queues.insert(name, |id| {
            let name: Arc<str> = name.into();
            let credits = QueueHandle::credits_for(&spec);
            let counters = Arc::new(crate::queue::SideCounters {
                topics: registry.undecodable_by_topic.clone(),
                ..Default::default()
            });
            let mut state = QueueState::new(name.clone(), spec.clone(), registry.started);
            let journal = match spec.durable {
                false => None,
                true => Some(Arc::new(self.replay_journal(&name, &spec, &mut state, credits.as_deref())?)),
            };
            let journal_ = journal.clone();
            let (inbox, inbox_rx) = crate::queue::inbox(QueueHandle::inbox_bound(&spec));
            let host = Arc::downgrade(registry) as std::sync::Weak<dyn QueueHost>;
            let (probe, credits_, counters_) =
                (registry.probe.clone(), credits.clone(), Arc::clone(&counters));
            // Built on its arbiter: the actor holds its inbox in an `Rc`, never leaving that thread.
            let arbiter = registry.arbiters.for_queue(id).clone();
            let addr = QueueActor::start_in_arbiter(&arbiter, move |_| {
                let shared =
                    crate::queue::Shared { credits: credits_, counters: counters_, journal: journal_ };
                QueueActor::new(id, inbox_rx, state, host, probe, shared)
            });
            Ok(Arc::new(QueueHandle { id, name, addr, arbiter, inbox, spec, credits, counters, journal }))
        })
    }

    /// Opens a durable queue's journal and puts what it holds back into `state`, before the queue
    /// takes any publish or subscription; message ids continue past the highest it holds.
    fn replay_journal(
        &self,
        name: &str,
        spec: &QueueSpec,
        state: &mut QueueState,
        credits: Option<&tokio::sync::Semaphore>,
    ) -> Result<crate::queue::Journal, InsertError> {
        let streams = &self.registry.streams;
        let open = |dir: &_| crate::queue::Journal::open(dir, name, spec.fsync, streams.clock);
        let (journal, replay) = streams.with_dir(open).map_err(InsertError::Journal)?;
        if let Some(max) = replay.max_id {
            self.registry.message_ids_past(max);
        }
        if self.registry.probe.is_none() {
            // Ids of messages acked (and compacted away) in an earlier process are in no journal:
            // a broker with durable queues numbers its messages from the wall clock's nanoseconds,
            // past every id an earlier process handed out (none publishes one id per nanosecond),
            // so that an idempotent consumer never takes a new message for one it has seen.
            self.registry.message_ids_past(crate::ids::MessageId(wall_clock_nanos()));
        }
        // Replayed messages hold publisher credits as published ones do, as far as there are.
        let credited = match credits {
            None => 0,
            Some(c) => {
                let n = replay.messages.len().min(c.available_permits());
                c.forget_permits(n)
            }
        };
        state.set_journaled();
        state.restore(replay.messages, credited, streams.clock.now_ms(), Instant::now());
        Ok(journal)
    }

    /// Declares a queue at run time; declaring an existing queue with the same spec does nothing.
    /// Safe to call from several threads at once: each name gets one queue.
    ///
    /// # Errors
    /// [`DeclareError::Topology`] for an invalid spec or dead-letter reference,
    /// [`DeclareError::Conflict`] when the name exists with another spec, [`DeclareError::Closed`]
    /// after shutdown.
    pub fn declare_queue(&self, name: &str, spec: QueueSpec) -> Result<(), DeclareError> {
        if self.registry.is_closed() {
            return Err(DeclareError::Closed);
        }
        if let Some(remote) = &self.remote {
            return Err(DeclareError::Remote(crate::remote::RemoteError::Unsupported {
                backend: remote.endpoint.backend(),
                what: format!("declare queue {name:?} without waiting"),
                hint: "declaring on a remote broker waits for it: use `Broker::declare`".to_owned(),
            }));
        }
        let mut check = Topology::new().queue(name, spec.clone());
        check.data_dir = self.registry.streams.path();
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
        match self.start_queue(name, spec.clone()) {
            Ok(_) => Ok(()),
            Err(InsertError::Exists) => match self.registry.queue(name) {
                Some(existing) if existing.spec != spec => Err(DeclareError::Conflict(name.to_owned())),
                // The same spec, or deleted in the meantime: the caller's queue exists or existed.
                _ => Ok(()),
            },
            Err(InsertError::IdsExhausted) => Err(DeclareError::IdsExhausted),
            Err(InsertError::Journal(e)) => {
                Err(DeclareError::Journal { queue: name.to_owned(), reason: e.to_string() })
            }
        }
    }

    /// Declares a queue at run time, on whichever backend the broker runs: as
    /// [`Broker::declare_queue`] in process, and on a remote broker once it confirmed the
    /// declaration. The form to use in code that may run on RabbitMQ or NATS.
    ///
    /// # Errors
    /// As [`Broker::declare_queue`]; [`DeclareError::Remote`] when the remote broker refuses it.
    pub async fn declare(&self, name: &str, spec: QueueSpec) -> Result<(), DeclareError> {
        match &self.remote {
            Some(_) if self.registry.is_closed() => Err(DeclareError::Closed),
            Some(remote) => remote.declare_queue(name, spec).await,
            None => self.declare_queue(name, spec),
        }
    }

    /// Deletes a queue: it is unbound everywhere, its subscribers' unacked deliveries and its ready
    /// messages are counted as `dropped.deleted` (dead letters it had already made are passed on),
    /// and its final counters stay in [`Broker::stats`] under [`Stats::deleted_queues`]. A publish
    /// racing the deletion either reaches the queue before it goes (and is counted there) or finds
    /// it gone (and is routed as if it never existed).
    ///
    /// # Errors
    /// [`DeleteError::UnknownQueue`] when there is no such queue, [`DeleteError::Closed`] after
    /// shutdown.
    pub async fn delete_queue(&self, name: &str) -> Result<QueueStats, DeleteError> {
        if self.registry.is_closed() {
            return Err(DeleteError::Closed);
        }
        if let Some(remote) = &self.remote {
            return remote.delete_queue(name).await;
        }
        let queue = self.registry.queue(name).ok_or_else(|| DeleteError::UnknownQueue(name.to_owned()))?;
        queue.addr.send(Delete).await.map_err(|_| DeleteError::UnknownQueue(name.to_owned()))
    }

    /// A publisher for one topic, which skips the name lookup on each publish.
    ///
    /// # Errors
    /// [`PublishError::UnknownTopic`]; [`PublishError::Closed`] after shutdown.
    pub fn publisher(&self, topic: &str) -> Result<Publisher, PublishError> {
        if self.registry.is_closed() {
            return Err(PublishError::Closed);
        }
        if let Some(remote) = &self.remote {
            return Ok(Publisher::remote(Arc::clone(remote), topic));
        }
        let topic = self.registry.topic(topic).ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        Ok(Publisher::local(topic, self.registry.clone()))
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

    /// Publishes a typed value that no subscriber receives before `delay` has passed: each target
    /// queue keeps its copy aside (counted in [`QueueStats::scheduled`](crate::QueueStats::scheduled)
    /// and against its `depth_max`) and makes it ready when it is due, at its place in publish order,
    /// so that it does not wait behind messages published after it. Its time to live counts from its
    /// due time; a durable queue keeps the due time in its journal, so that a restart does not deliver
    /// it early. A stream bound to the topic records it at once (a log is in publish order). As a
    /// scheduled job in Sidekiq or a message through RabbitMQ's delayed-message exchange; the
    /// confirm says which queues took it, as [`Broker::publish`]'s does.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tubemail::{Broker, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
    ///
    /// # actix::System::new().block_on(async {
    /// tokio::time::pause();
    /// let topology = Topology::new()
    ///     .topic("reminders", TopicSpec::new(TopicKind::Direct))
    ///     .queue("mail", QueueSpec::default())
    ///     .bind("reminders", "mail", "mail");
    /// let broker = Broker::start(topology)?;
    /// let text = "renew your plan".to_owned();
    /// broker.publish_in("reminders", "mail", text, Duration::from_secs(3600)).await?;
    /// assert_eq!(broker.stats().await.queues["mail"].scheduled, 1);
    /// let (tx, rx) = tokio::sync::oneshot::channel();
    /// let mut tx = Some(tx);
    /// let _sub = broker.subscribe("mail", move |d: tubemail::Delivery<String>| {
    ///     tx.take().map(|tx| tx.send((tokio::time::Instant::now(), (*d).clone())));
    ///     async { Outcome::Ack }
    /// })
    /// .await?;
    /// let published = tokio::time::Instant::now();
    /// let (at, text) = rx.await?;
    /// assert_eq!(text, "renew your plan");
    /// assert!(at - published >= Duration::from_secs(3599), "delivered after its delay");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # }).unwrap();
    /// ```
    ///
    /// # Errors
    /// As [`Broker::publish`]; [`PublishError::DelayTooLong`] past [`DELAY_MAX`];
    /// [`PublishError::Remote`] with [`RemoteError::Unsupported`](crate::remote::RemoteError::Unsupported)
    /// on a remote broker (neither RabbitMQ without its delayed-message plugin nor NATS 2.9 schedules
    /// a message).
    pub async fn publish_in<T: Serialize + Send + Sync + 'static>(
        &self,
        topic: &str,
        key: &str,
        value: T,
        delay: Duration,
    ) -> Result<Confirm, PublishError> {
        self.publisher(topic)?.publish_in(key, value, delay).await
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
        match self.publisher(topic) {
            Ok(publisher) => publisher.try_publish(key, value),
            Err(PublishError::Closed) => Err(TryPublishError::Closed(value)),
            Err(e) => Err(TryPublishError::Invalid(e)),
        }
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

    /// Subscribes a synchronous handler with the queue's default prefetch: a function that decides
    /// at once, without a future to poll or allocate. The fastest kind of subscriber.
    ///
    /// # Errors
    /// As [`Broker::subscribe`].
    pub async fn subscribe_sync<T, F>(&self, queue: &str, handler: F) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
    {
        self.subscribe_sync_with(queue, SubscribeOptions::default(), handler).await
    }

    /// Subscribes a synchronous handler with options.
    ///
    /// # Errors
    /// As [`Broker::subscribe_with`].
    pub async fn subscribe_sync_with<T, F>(
        &self,
        queue: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
    {
        self.start_subscriber::<T, _>(queue, options, SyncRunner::inline(handler)).await
    }

    /// Subscribes a handler that blocks (file or network I/O without async, heavy computation, a
    /// lock held long): it runs on a thread of its own, one delivery at a time, so that it never
    /// stalls the queues and subscribers that share its arbiter. A sync handler that turns out to
    /// block (a batch holding its arbiter for [`BLOCKING_THRESHOLD`](crate::subscriber::BLOCKING_THRESHOLD))
    /// is moved to a thread of its own the same way, with a warning through `tracing`.
    ///
    /// Shutdown: past an unsubscribe's timeout the delivery in progress is abandoned (requeued at
    /// least once, counted lost at most once) while the thread finishes it; its outcome is ignored.
    ///
    /// # Errors
    /// As [`Broker::subscribe`].
    pub async fn subscribe_blocking<T, F>(
        &self,
        queue: &str,
        handler: F,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
    {
        self.subscribe_blocking_with(queue, SubscribeOptions::default(), handler).await
    }

    /// [`Broker::subscribe_blocking`] with options.
    ///
    /// # Errors
    /// As [`Broker::subscribe_with`].
    pub async fn subscribe_blocking_with<T, F>(
        &self,
        queue: &str,
        options: SubscribeOptions,
        handler: F,
    ) -> Result<Subscription, SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        F: FnMut(Delivery<T>) -> Outcome + Send + 'static,
    {
        let runner = SyncRunner::own_thread(handler, format!("tubemail-{queue}-blocking"));
        self.start_subscriber::<T, _>(queue, options, runner).await
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
        if self.registry.is_closed() {
            return Err(SubscribeError::Closed);
        }
        if let Some(remote) = &self.remote {
            let consumer = self.registry.consumer_id();
            remote.subscribe::<T, R>(&self.registry.arbiter, consumer, queue, options, runner).await?;
            return Ok(Subscription { consumer, queue: queue.into(), broker: self.clone() });
        }
        let unknown = || SubscribeError::UnknownQueue(queue.to_owned());
        let handle = self.registry.queue(queue).ok_or_else(unknown)?;
        let consumer = self.registry.consumer_id();
        let prefetch = options.prefetch.unwrap_or(handle.spec.prefetch_default);
        let probe = self.registry.probe.clone();
        let stopping = Arc::default();
        let place = Placement {
            queue_addr: handle.addr.clone(),
            queue: handle.name.clone(),
            consumer,
            mode: handle.spec.delivery,
            prefetch,
            stopping: Arc::clone(&stopping),
            counters: handle.counters.clone(),
            on_undecodable: options.on_undecodable,
        };
        let actor = SubscriberActor::<T, R>::new(place, runner, probe);
        // Beside its queue: deliveries and settlements never cross threads.
        let addr = SubscriberActor::start_in_arbiter(&handle.arbiter, |_| actor);
        let stop = addr.clone().recipient::<Stop>();
        let subscribe = Subscribe { consumer, prefetch, recipient: addr.recipient() };
        if !matches!(handle.addr.send(subscribe).await, Ok(Ok(()))) {
            let _ = stop.send(Stop).await;
            return Err(unknown());
        }
        let subscriber = Subscriber { consumer, queue: handle.addr.clone(), stop, stopping };
        self.registry.subscriptions.insert(subscriber);
        Ok(Subscription { consumer, queue: handle.name.clone(), broker: self.clone() })
    }

    /// Binds a queue to a topic at run time. `Ok(false)` when the binding existed already.
    ///
    /// # Errors
    /// [`BindError`] for unknown names or an invalid key; [`BindError::Closed`] after shutdown.
    pub async fn bind(&self, topic: &str, queue: &str, key: &str) -> Result<bool, BindError> {
        if let Some(remote) = self.remote_open().map_err(|()| BindError::Closed)? {
            return remote.bind(topic, queue, key, true).await;
        }
        let (topic, queue) = self.resolve(topic, queue)?;
        let bind = Bind { queue, key: key.to_owned(), weight: 1 };
        topic.addr.send(bind).await.map_err(|_| BindError::Closed)?.map_err(BindError::Routing)
    }

    /// Removes a binding. `Ok(false)` when there was no such binding.
    ///
    /// # Errors
    /// [`BindError`] for unknown names; [`BindError::Closed`] after shutdown.
    pub async fn unbind(&self, topic: &str, queue: &str, key: &str) -> Result<bool, BindError> {
        if let Some(remote) = self.remote_open().map_err(|()| BindError::Closed)? {
            return remote.bind(topic, queue, key, false).await;
        }
        let (topic, queue) = self.resolve(topic, queue)?;
        topic.addr.send(Unbind { queue, key: key.to_owned() }).await.map_err(|_| BindError::Closed)
    }

    /// The remote backend, if any; `Err` after shutdown.
    fn remote_open(&self) -> Result<Option<&Arc<RemoteBroker>>, ()> {
        match &self.remote {
            Some(_) if self.registry.is_closed() => Err(()),
            remote => Ok(remote.as_ref()),
        }
    }

    fn resolve(&self, topic: &str, queue: &str) -> Result<(Arc<TopicHandle>, QueueId), BindError> {
        if self.registry.is_closed() {
            return Err(BindError::Closed);
        }
        let t = self.registry.topic(topic).ok_or_else(|| BindError::UnknownTopic(topic.to_owned()))?;
        let q = self.registry.queue(queue).ok_or_else(|| BindError::UnknownQueue(queue.to_owned()))?;
        Ok((t, q.id))
    }

    /// A snapshot of every topic's and queue's counters, deleted queue incarnations included.
    ///
    /// Each queue answers after the messages already in its mailbox, so a quiet broker's snapshot is
    /// exact. After shutdown, the final counters.
    pub async fn stats(&self) -> Stats {
        if let Some(stats) = self.registry.final_stats() {
            return stats;
        }
        if let Some(remote) = &self.remote {
            return remote.stats().await;
        }
        let mut stats = Stats::default();
        for (name, topic) in self.registry.topics.load().iter() {
            stats.topics.insert(name.clone(), topic.stats());
        }
        // Live queues first: one deleted between the two reads is then in the graveyard's read.
        let live: Vec<Arc<QueueHandle>> = self.registry.queues.load().by_id.values().cloned().collect();
        let mut seen = Vec::new();
        for queue in live {
            if let Ok(q) = queue.addr.send(GetStats).await {
                seen.push(queue.id);
                stats.queues.insert(queue.name.to_string(), q);
            }
        }
        let (deleted, folded) = self.registry.graveyard();
        for (id, name, q) in deleted {
            if seen.contains(&id) {
                // Deleted after answering: its final counters supersede the live answer.
                stats.queues.remove(&name);
            }
            stats.deleted_queues.push(DeletedQueue { name, id, stats: q });
        }
        stats.deleted_folded = folded;
        stats.streams = self.registry.streams.stats();
        stats
    }

    /// Resolves once the broker is idle: no publish waits for room in a queue, and every queue is
    /// idle (nothing waits in its inbox, nothing is in flight, and nothing is ready unless the queue
    /// has no subscriber to take it). Use it in tests and at the end of a batch instead of polling
    /// [`Broker::stats`]. A publish waiting for room in a full `block` queue without subscribers
    /// never lets the broker be idle: bound the wait with a timeout where that can happen. Resolves
    /// at once after shutdown. May be awaited from any thread.
    pub async fn idle(&self) {
        if let Some(remote) = self.remote.clone() {
            if !self.registry.is_closed() {
                let _ = self.on_arbiter(async move { remote.idle().await }).await;
            }
            return;
        }
        let registry = self.registry.clone();
        let _ = self
            .on_arbiter(async move {
                while !registry.is_closed() {
                    let queues: Vec<Arc<QueueHandle>> =
                        registry.queues.load().by_id.values().cloned().collect();
                    let far = Instant::now() + Duration::from_secs(86_400 * 365);
                    if registry::wait_idle(&queues, far, true).await && registry.publishes_waiting() == 0 {
                        return;
                    }
                    tokio::time::sleep(IDLE_RECHECK).await;
                }
            })
            .await;
    }

    /// Runs `f` on the broker's arbiter and returns its output: for the methods that wait with
    /// tokio's timers, so that they may be awaited from any thread or executor. `None` when the
    /// arbiter has stopped.
    async fn on_arbiter<F>(&self, f: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let spawned = self.registry.arbiter.spawn(async move {
            let _ = tx.send(f.await);
        });
        if !spawned {
            return None;
        }
        rx.await.ok()
    }

    /// Shuts the broker down, within `timeout`:
    /// 1. publishes, subscriptions, declarations and bindings are refused from now on
    ///    ([`PublishError::Closed`] and its kin), and publishers waiting for room in a `block` queue
    ///    are released (their confirm counts the queues that took the message);
    /// 2. the ready messages of every queue that has subscribers are delivered, and everything in
    ///    flight settled, as long as the timeout allows;
    /// 3. every subscriber is retired as [`Subscription::unsubscribe`] does: stopped once its running
    ///    handler returns, with what it still held requeued (at least once) or counted lost (at most
    ///    once);
    /// 4. every queue and topic actor stops, and the broker lets go of them, so that dropping the
    ///    last `Broker` handle frees its memory.
    ///
    /// The report's `stats` are final: what is `ready` in them was left undelivered (a queue without
    /// subscribers, or the timeout). A second call reports `shut_down: false` and the same counters.
    /// May be called from any thread, inside or outside an async runtime.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        if self.registry.closed.swap(true, Ordering::AcqRel) {
            let stats = self.registry.wait_final_stats().await;
            return ShutdownReport {
                shut_down: false,
                drained: true,
                stopped: true,
                stats,
                ..Default::default()
            };
        }
        if let Some(remote) = self.remote.clone() {
            let report = self.on_arbiter(async move { remote.shutdown(timeout).await }).await;
            let report = report.unwrap_or_default();
            self.registry.set_final_stats(report.stats.clone());
            self.registry.arbiters.stop();
            return report;
        }
        let registry = self.registry.clone();
        let report = self.on_arbiter(async move { shutdown_on_arbiter(registry, timeout).await }).await;
        let mut report = report.unwrap_or_default();
        report.shut_down = true;
        self.registry.set_final_stats(report.stats.clone());
        report
    }
}

/// The most arbiters a broker spreads over.
pub const ARBITERS_MAX: usize = 64;

/// How long [`Broker::idle`] waits before it looks again at publishes waiting for room.
const IDLE_RECHECK: Duration = Duration::from_millis(1);

/// Whether tokio's clock is paused on this thread's runtime: paused, it does not move while the
/// thread sleeps.
fn clock_paused() -> bool {
    let before = Instant::now();
    std::thread::sleep(Duration::from_micros(20));
    Instant::now() == before
}

/// Nanoseconds since the Unix epoch (0 before it).
pub(crate) fn wall_clock_nanos() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX / 2))
}

/// The current arbiter, if this thread runs an actix system.
fn current_arbiter() -> Option<actix::ArbiterHandle> {
    std::panic::catch_unwind(Arbiter::current).ok()
}

async fn shutdown_on_arbiter(registry: Arc<Registry>, timeout: Duration) -> ShutdownReport {
    let deadline = Instant::now() + timeout;
    let queues = registry.queues.load().by_id.values().cloned().collect::<Vec<_>>();
    for queue in &queues {
        queue.release_waiting_publishers();
    }
    // The released publishers count their confirms; the final counters wait for them (they return
    // at once, as every credit is closed).
    while registry.publishes_waiting() > 0 && Instant::now() < deadline {
        tokio::time::sleep(IDLE_RECHECK).await;
    }
    // Scheduled messages are not waited for: they stay (durable queues keep them) for the next start.
    let drained_queues = registry::wait_idle(&queues, deadline, false).await;
    let subscribers = registry.subscriptions.take_all();
    let drains = subscribers.iter().map(|s| subscription::drain(s, deadline));
    let drained = futures::future::join_all(drains).await.into_iter().all(|d| d);
    let stops = subscribers.iter().map(|s| subscription::stop(s, deadline));
    let stops = futures::future::join_all(stops).await;
    let interrupted = stops.iter().filter(|stopped| !**stopped).count() as u64;
    let stopped = interrupted == 0;
    let mut report =
        ShutdownReport { drained: drained && drained_queues, stopped, interrupted, ..Default::default() };
    for subscriber in &subscribers {
        let r = subscription::remove(subscriber, UnsubscribeReport::default()).await;
        report.requeued += r.requeued;
        report.lost += r.lost;
    }
    let streams = registry.streams.stats();
    for journal in queues.iter().filter_map(|q| q.journal.as_ref()) {
        journal.close();
    }
    registry.streams.close().await;
    report.stats = registry.stop_everything().await;
    report.stats.streams = streams;
    registry.arbiters.stop();
    report
}
