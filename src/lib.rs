//! # tubemail: a message broker inside your process
//!
//! Applications that are one process (a modular monolith) still need what distributed messaging gives:
//! topics that route an event to several modules, queues that buffer work, at-least-once delivery with
//! acks and dead letters. tubemail gives the broker inside the process: topic routers, queue buffers and
//! subscribers are [actix](https://docs.rs/actix) actors with bounded mailboxes, and every message that
//! leaves without an ack is counted with its reason.
//!
//! ```
//! use tubemail::{Broker, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
//!
//! # actix::System::new().block_on(async {
//! let topology = Topology::from_toml_str(r#"
//!     [topics.events]
//!     kind = "topic"
//!
//!     [queues.billing]
//!     delivery = "at-least-once"
//!
//!     [[bindings]]
//!     topic = "events"
//!     queue = "billing"
//!     key = "orders.#"
//! "#).unwrap();
//! let broker = Broker::start(topology).unwrap();
//! let (seen, mut billed) = tokio::sync::mpsc::unbounded_channel();
//! broker.subscribe("billing", move |d: Delivery<String>| {
//!     let seen = seen.clone();
//!     async move {
//!         println!("billing saw {} on {}", *d, d.key());
//!         seen.send(d.clone()).unwrap();
//!         Outcome::Ack
//!     }
//! }).await.unwrap();
//! broker.publish("events", "orders.42.paid", "order 42 paid".to_string()).await.unwrap();
//! // Shutdown delivers what is ready within its timeout, then stops every subscriber.
//! let report = broker.shutdown(std::time::Duration::from_secs(1)).await;
//! assert_eq!(billed.try_recv().as_deref(), Ok("order 42 paid"), "the handler ran");
//! assert_eq!(report.stats.queues["billing"].acked, 1);
//! assert!(report.stats.conserved());
//! # });
//! ```
//!
//! The pieces: [`topology`] declares topics, queues and bindings; [`routing`] matches keys;
//! [`queue`] buffers, dispatches and redelivers; [`subscriber`] runs handlers; [`Broker`] ties them
//! together; [`stats`] counts everything; [`probe`] is the simulator's seam (the simulator itself is
//! the crate `tubemail-sim`). See `docs/ARCHITECTURE.md` for the crates, the modules' layers, the
//! actors and their messages.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod broker;
mod clock;
pub mod consumer;
pub mod ids;
/// Background jobs: typed jobs with Sidekiq's retries, a dead set, unique and periodic jobs, worker
/// pools, graceful shutdown, and iteration jobs that resume from their last checkpoint, durable on
/// the storage engine of streams (the `tubemail-jobs` crate, behind the default `jobs` feature).
#[cfg(feature = "jobs")]
pub use tubemail_jobs as jobs;
#[doc(hidden)]
pub mod internals;
pub mod message;
pub mod probe;
mod protocol;
pub mod queue;
pub mod remote;
pub mod routing;
pub mod stats;
pub mod stream;
pub mod subscriber;
pub(crate) mod topic;
pub mod topology;

pub use broker::{
    BindError, Broker, BrokerBuilder, Confirm, DeclareError, DeleteError, PublishError, Publisher,
    ShutdownReport, StartError, SubscribeError, Subscription, TryPublishError, UnsubscribeReport,
    ARBITERS_MAX, BRIDGE_RETRY_AFTER, DELAY_MAX, DELETED_QUEUES_KEPT_MAX, GROUP_NAME_MAX,
    STREAM_MAINTENANCE_EVERY,
};
pub use bytes::Bytes;
pub use message::{Death, DeathReason, Message, Payload, PayloadError, TypedValue};
pub use stats::{
    DeletedQueue, Dropped, GroupPartitionStats, GroupStats, PartitionStats, QueueStats, Stats, StreamStats,
    TopicStats,
};
pub use stream::{
    AppendError, Appended, GroupError, GroupMember, GroupOptions, ReadError, Reader, StartFrom, StreamRecord,
};
pub use subscriber::{AckError, Acker, Delivery, Handler, Outcome, SubscribeOptions, UndecodableHook};
pub use topology::{
    Cleanup, DeliveryMode, Fsync, Overflow, QueueSpec, StreamSpec, Target, TopicKind, TopicSpec, Topology,
    TopologyError,
};

/// The README's examples, run as doctests so that it stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
