//! Consumer helpers: an exactly-once *effect* from at-least-once delivery.
//!
//! An at-least-once queue may deliver a message more than once: after a lost ack (the ack deadline),
//! a nack with requeue, a handler panic or an unsubscribe. Two helpers make the repetition harmless:
//!
//! - [`Idempotent`] wraps a [`Handler`](crate::Handler) and de-duplicates by message id
//!   ([`Delivery::id`](crate::Delivery::id)) within a bounded window kept in a [`DedupStore`], the way
//!   JetStream de-duplicates by `Nats-Msg-Id`. [`idempotent_sync`] does the same for
//!   [`Broker::subscribe_sync`](crate::Broker::subscribe_sync).
//! - [`VersionedState`] keeps the latest version of each key (last writer wins, by version rather than
//!   by arrival), for event-carried state transfer; [`ApplyVersioned`] and [`apply_versioned_sync`]
//!   apply each delivery to it.
//!
//! ```
//! use tubemail::consumer::{DedupStore, Idempotent};
//! use tubemail::{Broker, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
//!
//! # actix::System::new().block_on(async {
//! let topology = Topology::new()
//!     .topic("orders", TopicSpec::new(TopicKind::Fanout))
//!     .queue("billing", QueueSpec::default())
//!     .bind("orders", "billing", "");
//! let broker = Broker::start(topology).unwrap();
//! // Kept outside the subscriber: it survives restarts and resubscriptions.
//! let store = DedupStore::default();
//! let (charged, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let charge = move |order: Delivery<u64>| {
//!     charged.send((order.id(), *order)).unwrap();
//!     async { Outcome::Ack }
//! };
//! broker.subscribe("billing", Idempotent::new(store.clone(), charge)).await.unwrap();
//! broker.publish("orders", "", 42_u64).await.unwrap();
//! let (id, order) = rx.recv().await.unwrap();
//! assert_eq!(order, 42);
//! // Recorded once the handler acked: a redelivery of `id` would be acked without charging again.
//! assert!(store.contains(id));
//! # });
//! ```
//!
//! # Delivery guarantees
//! [`Idempotent`] runs the inner handler for an id at most once *to completion*: it records the id when
//! the inner handler returns [`Outcome::Ack`](crate::Outcome::Ack), and afterwards acks every copy of
//! that id without running the handler (counted in [`DedupStats::duplicates_skipped`]). An attempt
//! that ends otherwise (`Nack`, `Reject`, `Defer`, a panic) is not recorded, so the redelivery runs
//! the handler again: that is what makes a failed attempt retryable.
//!
//! This is exactly-once only for effects that are complete when the handler returns `Ack`, and whose
//! completion and recording nothing can separate. A handler that performs its effect and then panics
//! (or whose process dies) before returning leaves the id unrecorded: the redelivery performs the
//! effect again. No wrapper can close that gap, since only the handler knows whether its effect
//! happened. Two designs do close it:
//! - record the id in the same step as the effect: keep a [`DedupWindow`] inside the state the effect
//!   changes, under the same lock or in the same database transaction (a "transactional inbox"), and
//!   check it before the effect;
//! - make the effect idempotent itself, as [`VersionedState`] does: applying an update twice is a
//!   no-op.
//!
//! Message ids are given by the broker to each publish, and are unique within one broker. A publisher
//! that publishes the same thing twice makes two ids, which are not duplicates of each other (JetStream
//! de-duplicates at publish, by an id the publisher chooses; tubemail leaves that to the publisher).
//! One publish routed to several queues carries one id in all of them: share a store between the
//! subscribers of one queue (competing consumers, or one consumer across restarts), not between queues
//! whose handlers do different things, or one queue's handler would skip what another already did.
//!
//! Concurrent duplicates: a message whose ack deadline passes while its handler still runs is
//! redelivered, possibly to another subscriber sharing the store. That copy finds its id in progress
//! and is nacked with requeue (counted in [`DedupStats::concurrent_duplicates`]) rather than run twice;
//! once the first run acks, the next copy is skipped as a duplicate. Each such requeue is a delivery
//! and counts towards the queue's `delivery_limit`, so an ack timeout shorter than the handler's run
//! can get a message dead-lettered (reason `delivery_limit`) although its effect happened once. Set
//! the ack timeout above the slowest handler run.
//!
//! A handler that settles by hand (returns `Defer` and later uses the
//! [`Acker`](crate::Acker)) is not recorded by [`Idempotent`], which cannot see the later settlement:
//! use [`DedupStore::begin`] and [`Claim::finish`] directly, finishing the claim once the ack went
//! through.
//!
//! [`VersionedState`] converges to the state the updates give in version order, whatever order they
//! arrive in and however often, provided each key's versions grow with every change and one version
//! names one value. A version can be a counter kept by the source of truth, or an `updated_at`
//! timestamp with a tiebreaker (two changes in the same millisecond must not share a version). Equal
//! versions are [`Applied::Duplicate`] and keep the value first stored.
//!
//! # Ordering
//! Neither helper reorders or holds deliveries: a duplicate is acked at once, anything else runs in
//! delivery order as the subscriber runs it. [`VersionedState`] makes the final state independent of
//! the order of updates, not the intermediate states: a reader may never see version 2 of a key if
//! version 3 arrived first. Event notifications that carry only an id, and whose handler re-reads the
//! source of truth, need no versions at all (the handler's effect does not depend on the order); the
//! example `examples/event_state.rs` contrasts the two.
//!
//! # Backpressure
//! A [`DedupStore`] remembers the last `window` ids recorded, oldest evicted first
//! ([`DEDUP_WINDOW_DEFAULT`] = 10,000, at most [`DEDUP_WINDOW_MAX`]): memory is bounded by the window,
//! about 40 bytes per id. A copy that arrives after `window` other ids were recorded since its first
//! run is not recognised and runs again. Choose a window above the number of messages the subscribers
//! complete within the longest redelivery delay (the ack timeout, or an unsubscribe timeout), as
//! JetStream's two-minute window must cover a publisher's retries. The window counts ids rather than
//! time so that it needs no clock and its memory has a fixed bound. Ids in progress are at most one per
//! subscriber sharing the store, since a subscriber runs one handler at a time.
//!
//! A [`VersionedState`] holds one entry per key, never one per message: stale and duplicate updates do
//! not grow it, so its size is that of the domain (orders, accounts), which the application bounds.
//!
//! # Shutdown
//! Both stores live outside the subscribers, behind an [`Arc`](std::sync::Arc): they survive a handler
//! panic (the subscriber restarts), an unsubscribe, and a new subscription given a clone of the store.
//! They are in memory: they do not survive the process, and a [`DedupStore`] must not outlive its
//! broker, whose successor numbers messages afresh. A handler future dropped before it finishes (a
//! panic, or the subscriber stopped) releases its claim (counted in [`DedupStats::abandoned`]), so the
//! redelivery runs it again.

mod dedup;
mod idempotent;
mod versioned;

pub use dedup::{Begin, Claim, DedupStats, DedupStore, DedupWindow, DEDUP_WINDOW_DEFAULT, DEDUP_WINDOW_MAX};
pub use idempotent::{idempotent_sync, Idempotent, IdempotentFuture};
pub use versioned::{apply_versioned_sync, Applied, ApplyVersioned, VersionedState, VersionedStats};
