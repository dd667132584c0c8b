//! Publishers: route a message on the publishing thread and offer it to every target queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use smallvec::SmallVec;

use super::registry::Registry;
use super::remote::RemoteBroker;
use super::{Confirm, PublishError, TryPublishError};
use crate::ids::MessageId;
use crate::message::{Deaths, Message, Payload};
use crate::probe::{self, What};
use crate::protocol::Delay;
use crate::queue::{Journal, Offer, QueueHandle, Stamp, NO_SLOT};
use crate::routing::validate_key;
use crate::stream::{Appended, StreamHandle};
use crate::topic::{Route, TopicHandle};

/// Publishes to one topic.
#[derive(Clone)]
pub struct Publisher(Target);

#[derive(Clone)]
enum Target {
    Local(LocalPublisher),
    Remote { broker: Arc<RemoteBroker>, topic: Arc<str> },
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let topic = match &self.0 {
            Target::Local(p) => &*p.topic.name,
            Target::Remote { topic, .. } => &**topic,
        };
        f.debug_struct("Publisher").field("topic", &topic).finish()
    }
}

impl Publisher {
    pub(super) fn local(topic: Arc<TopicHandle>, registry: Arc<Registry>) -> Self {
        Publisher(Target::Local(LocalPublisher { topic, registry }))
    }

    pub(super) fn remote(broker: Arc<RemoteBroker>, topic: &str) -> Self {
        Publisher(Target::Remote { broker, topic: topic.into() })
    }

    /// Publishes a typed value. See [`Broker::publish`](crate::Broker::publish).
    ///
    /// # Errors
    /// As [`Broker::publish`](crate::Broker::publish).
    pub async fn publish<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Confirm, PublishError> {
        match &self.0 {
            Target::Local(p) => p.publish_payload(key, Payload::value(value)).await,
            Target::Remote { broker, topic } => broker.publish(topic, key, Payload::value(value)).await,
        }
    }

    /// Publishes a typed value delivered no sooner than `delay` from now. See
    /// [`Broker::publish_in`](crate::Broker::publish_in).
    ///
    /// # Errors
    /// As [`Broker::publish_in`](crate::Broker::publish_in).
    pub async fn publish_in<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        value: T,
        delay: std::time::Duration,
    ) -> Result<Confirm, PublishError> {
        match &self.0 {
            Target::Local(p) => p.publish_in(key, Payload::value(value), delay).await,
            Target::Remote { broker, .. } => {
                check_delay(delay)?;
                Err(PublishError::Remote(crate::remote::RemoteError::Unsupported {
                    backend: broker.endpoint.backend(),
                    what: "delay a publish".to_owned(),
                    hint: "RabbitMQ needs its delayed-message plugin and NATS 2.9 has no scheduled \
                           messages: publish when due, or keep the delay in process"
                        .to_owned(),
                }))
            }
        }
    }

    /// Publishes raw bytes. See [`Broker::publish_bytes`](crate::Broker::publish_bytes).
    ///
    /// # Errors
    /// As [`Broker::publish`](crate::Broker::publish).
    pub async fn publish_bytes(&self, key: &str, bytes: impl Into<Bytes>) -> Result<Confirm, PublishError> {
        // Never cloned on the way: every queue shares the message, and subscribers read the bytes in
        // place, so a `Bytes` made from a `Vec` is never promoted to a shared buffer (an allocation).
        let payload = Payload::Bytes(bytes.into());
        match &self.0 {
            Target::Local(p) => p.publish_payload(key, payload).await,
            Target::Remote { broker, topic } => broker.publish(topic, key, payload).await,
        }
    }

    /// Publishes without waiting. See [`Broker::try_publish`](crate::Broker::try_publish).
    ///
    /// # Errors
    /// As [`Broker::try_publish`](crate::Broker::try_publish).
    pub fn try_publish<T: Serialize + Send + Sync + 'static>(
        &self,
        key: &str,
        value: T,
    ) -> Result<Confirm, TryPublishError<T>> {
        match &self.0 {
            Target::Local(p) => p.try_publish(key, value),
            Target::Remote { broker, topic } => broker.try_publish(topic, key, value),
        }
    }

    /// Publishes a payload with a given message id, or a new one when `id` is `None`; `attempt_no`
    /// counts from 1. A publisher that lost a confirm publishes again with the same id, so that an
    /// idempotent consumer can tell the copies apart (the simulator's `confirm-loss` fault does so).
    /// Returns the id and the confirm. In process only: a remote broker's publish gets a new id.
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
        match &self.0 {
            Target::Local(p) => p.publish_as(key, payload, id, attempt_no).await,
            Target::Remote { broker, topic } => {
                broker.publish(topic, key, payload).await.map(|c| (id.unwrap_or(MessageId(0)), c))
            }
        }
    }
}

/// Publishes to one topic of the in-process broker.
#[derive(Clone)]
pub(crate) struct LocalPublisher {
    pub(super) topic: Arc<TopicHandle>,
    pub(super) registry: Arc<Registry>,
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
    /// Target queues that need waiting for (or, for `try_publish`, could not take it now), with the
    /// message's slot in each one's journal ([`NO_SLOT`] for a queue that is not durable).
    waiting: SmallVec<[(Arc<QueueHandle>, u64); 2]>,
    /// Enqueue records appended to durable queues' journals, to await under their fsync policy.
    journaled: SmallVec<[(Arc<Journal>, u64); 1]>,
    /// The payload as MessagePack, once a journal needed it (encoded once for every journal).
    encoded: Option<Result<Bytes, String>>,
    /// Target queues found closed (deleted, or shut down, after the route was read).
    closed: u32,
    /// The message, when the publisher still holds a reference: kept for the waiting queues.
    held: Option<Arc<Message>>,
    /// How long after its queues take it it may be delivered.
    when: Delay,
}

impl Attempt {
    /// Whether no target took or refused the message: each was closed.
    fn reached_none(&self) -> bool {
        self.accepted == 0 && self.refused.is_empty() && self.waiting.is_empty() && self.closed > 0
    }
}

impl LocalPublisher {
    fn try_publish<T: Serialize + Send + Sync + 'static>(
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
        let streams = self.stream_targets(key);
        let bytes = (!streams.is_empty()).then(|| msg.payload.to_bytes());
        let mut attempt = self.route_and_offer(key, msg, !streams.is_empty(), Delay::NONE);
        // Written, not awaited: `try_publish` never waits, so its confirm does not cover a stream's
        // `fsync = "always"` (use `publish` for that).
        let _written = self.write_streams(&streams, key, bytes, &mut attempt);
        if attempt.route == Route::Unroutable {
            return Ok(self.unroutable());
        }
        if attempt.reached_none() {
            let msg = attempt.held.take().expect("a closed queue hands the message back");
            return Ok(self.try_alternate(msg, Delay::NONE).0);
        }
        for (queue, slot) in &attempt.waiting {
            // Written to a journal, not taken by its queue: the record goes.
            unjournal(queue, *slot);
        }
        if attempt.accepted == 0 && attempt.refused.is_empty() && !attempt.waiting.is_empty() {
            self.topic.counters.published.fetch_sub(1, Ordering::Relaxed);
            let msg = attempt.held.take().expect("a queue with no room hands the message back");
            return Err(TryPublishError::Full(take_value(msg)));
        }
        for (queue, _) in attempt.waiting.drain(..) {
            queue.counters.refused.fetch_add(1, Ordering::Relaxed);
            attempt.refused.push(queue.name.clone());
        }
        Ok(self.confirm(attempt))
    }

    async fn publish_payload(&self, key: &str, payload: Payload) -> Result<Confirm, PublishError> {
        self.publish_as(key, payload, None, 1).await.map(|(_, confirm)| confirm)
    }

    pub(super) async fn publish_in(
        &self,
        key: &str,
        payload: Payload,
        delay: std::time::Duration,
    ) -> Result<Confirm, PublishError> {
        check_delay(delay)?;
        self.publish_when(key, payload, None, 1, Delay::of(delay)).await.map(|(_, confirm)| confirm)
    }

    async fn publish_as(
        &self,
        key: &str,
        payload: Payload,
        id: Option<MessageId>,
        attempt_no: u32,
    ) -> Result<(MessageId, Confirm), PublishError> {
        self.publish_when(key, payload, id, attempt_no, Delay::NONE).await
    }

    async fn publish_when(
        &self,
        key: &str,
        payload: Payload,
        id: Option<MessageId>,
        attempt_no: u32,
        when: Delay,
    ) -> Result<(MessageId, Confirm), PublishError> {
        self.check(key)?;
        let msg = self.message(key, payload, id);
        let id = msg.id;
        if let Some(probe) = &self.registry.probe {
            probe.record(What::Publish { msg: id, key: key.to_owned(), attempt: attempt_no });
        }
        let streams = self.stream_targets(key);
        let bytes = (!streams.is_empty()).then(|| msg.payload.to_bytes());
        let mut attempt = self.route_and_offer(key, msg, !streams.is_empty(), when);
        let written = self.write_streams(&streams, key, bytes, &mut attempt);
        for (stream, appended) in written {
            if stream.acked(appended).await.is_err() {
                // A failed sync: the record is not acked, so the copy counts as refused.
                stream.append_errors.fetch_add(1, Ordering::Relaxed);
                attempt.accepted -= 1;
                attempt.refused.push(stream.name.clone());
            }
        }
        if attempt.route == Route::Unroutable {
            self.record_confirm(id, Vec::new(), Vec::new());
            return Ok((id, self.unroutable()));
        }
        let mut held = attempt.held.take();
        // Counted until its confirm is counted too, so that shutdown's final counters include it.
        let _waiting = (!attempt.waiting.is_empty()).then(|| self.registry.publish_waits());
        if !attempt.waiting.is_empty() {
            for (queue, slot) in std::mem::take(&mut attempt.waiting) {
                let msg = held.clone().expect("a queue with no room hands the message back");
                match queue.offer(msg, self.stamp(slot, when)).await {
                    Offer::Accepted => {
                        attempt.accepted += 1;
                        if let Some(names) = &mut attempt.accepted_names {
                            names.push(queue.name.to_string());
                        }
                    }
                    Offer::Refused => {
                        unjournal(&queue, slot);
                        attempt.refused.push(queue.name.clone());
                    }
                    Offer::Closed(back) => {
                        unjournal(&queue, slot);
                        attempt.closed += 1;
                        held = Some(back);
                    }
                    Offer::Full(_) => unreachable!("a waiting offer ends accepted, refused or closed"),
                }
            }
        }
        await_journals(&mut attempt).await;
        let names = attempt.accepted_names.take();
        let refused: Vec<String> = attempt.refused.iter().map(|q| q.to_string()).collect();
        let confirm = if attempt.reached_none() {
            // Every queue it was routed to is gone (deleted, or shut down) as it was routed.
            let msg = held.take().expect("a closed queue hands the message back");
            let (confirm, journaled) = self.try_alternate(msg, when);
            if let Some((journal, offset)) = journaled {
                if let Err(e) = journal.acked(offset).await {
                    tracing::error!(error = %e, "a durable alternate queue's journal failed to sync");
                }
            }
            confirm
        } else {
            self.confirm(attempt)
        };
        if let Some(names) = names {
            let names = match &confirm {
                Confirm::Unroutable { alternate: Some(q) } if names.is_empty() => vec![q.clone()],
                _ => names,
            };
            self.record_confirm(id, names, refused);
        }
        Ok((id, confirm))
    }

    /// An unroutable publish: to the topic's alternate queue if it has a live one, else dropped and
    /// counted. With a durable alternate queue, also the enqueue record to await.
    fn try_alternate(&self, msg: Arc<Message>, when: Delay) -> (Confirm, Option<(Arc<Journal>, u64)>) {
        let alternate =
            self.topic.alternate.and_then(|id| self.registry.queues.load().by_id.get(&id).cloned());
        let counters = &self.topic.counters;
        counters.unroutable.fetch_add(1, Ordering::Relaxed);
        if let Some(queue) = alternate {
            let journal = queue.journal.as_ref().filter(|j| !j.is_deleted());
            let journaled = match journal.map(|j| j.enqueue_payload(&msg, when.duration())) {
                None => Ok(None),
                Some(Ok((slot, offset))) => Ok(Some((slot, offset))),
                Some(Err(e)) => Err(e),
            };
            if let Ok(journaled) = journaled {
                let slot = journaled.map_or(NO_SLOT, |(slot, _)| slot);
                if let Offer::Accepted = queue.try_offer(msg, self.stamp(slot, when)) {
                    counters.routed.fetch_add(1, Ordering::Relaxed);
                    counters.alternate.fetch_add(1, Ordering::Relaxed);
                    let confirm = Confirm::Unroutable { alternate: Some(queue.name.to_string()) };
                    let journal = journal.zip(journaled).map(|(j, (_, offset))| (j.clone(), offset));
                    return (confirm, journal);
                }
                unjournal(&queue, slot);
            }
        }
        counters.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
        (Confirm::Unroutable { alternate: None }, None)
    }

    /// Appends `msg`'s enqueue record to a durable queue's journal before it is offered; returns its
    /// slot ([`NO_SLOT`] for other queues), or `None` when the journal refused it (the copy is then
    /// refused, and the confirm names the queue).
    fn journal(&self, queue: &QueueHandle, msg: &Message, attempt: &mut Attempt) -> Option<u64> {
        let Some(journal) = queue.journal.as_ref().filter(|j| !j.is_deleted()) else { return Some(NO_SLOT) };
        let encoded =
            attempt.encoded.get_or_insert_with(|| msg.payload.to_bytes().map_err(|e| e.to_string()));
        let result = match encoded {
            Ok(bytes) => journal.enqueue(msg, bytes, attempt.when.duration()).map_err(|e| e.to_string()),
            Err(e) => Err(e.clone()),
        };
        match result {
            Ok((slot, offset)) => {
                attempt.journaled.push((journal.clone(), offset));
                Some(slot)
            }
            Err(e) => {
                tracing::warn!(queue = %queue.name, error = %e, "a durable queue's journal refused a message");
                queue.counters.refused.fetch_add(1, Ordering::Relaxed);
                attempt.refused.push(queue.name.clone());
                None
            }
        }
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

    /// The streams bound to the topic that `key` is appended to (none without stream bindings: one
    /// branch on the publish path).
    fn stream_targets(&self, key: &str) -> SmallVec<[Arc<StreamHandle>; 2]> {
        match &self.topic.streams {
            Some(routes) => routes.route(key),
            None => SmallVec::new(),
        }
    }

    /// Writes the message's bytes to each stream, counting each copy as accepted or refused; returns
    /// what was written, for the caller to await its acks.
    fn write_streams(
        &self,
        streams: &[Arc<StreamHandle>],
        key: &str,
        bytes: Option<Result<Bytes, crate::message::PayloadError>>,
        attempt: &mut Attempt,
    ) -> SmallVec<[(Arc<StreamHandle>, Appended); 2]> {
        let mut written = SmallVec::new();
        let Some(bytes) = bytes else { return written };
        let now = self.registry.streams.clock.now_ms();
        for stream in streams {
            let result = match &bytes {
                Ok(bytes) => stream.write(key, Some(bytes), now).map_err(|e| e.to_string()),
                Err(e) => {
                    stream.append_errors.fetch_add(1, Ordering::Relaxed);
                    Err(e.to_string())
                }
            };
            match result {
                Ok(appended) => {
                    attempt.accepted += 1;
                    written.push((stream.clone(), appended));
                }
                Err(e) => {
                    tracing::warn!(stream = %stream.name, error = %e, "a stream refused a published copy");
                    attempt.refused.push(stream.name.clone());
                }
            }
        }
        written
    }

    /// Routes `msg` and offers it to every target queue without waiting. With streams matched too
    /// (`streams`), a key no queue binding matches is routed (to the streams), not unroutable.
    fn route_and_offer(&self, key: &str, msg: Arc<Message>, streams: bool, when: Delay) -> Attempt {
        let skips_binding = probe::bug(&self.registry.probe, |b| b.router_skips_binding);
        self.topic.with_route(key, &self.registry.queues, |route, targets| {
            if streams && route != Route::Queues {
                return self.attempt(msg, Route::Queues, &[], when);
            }
            match targets {
                // Broken on purpose: the last matching binding is skipped.
                [kept @ .., _] if skips_binding && !kept.is_empty() => self.attempt(msg, route, kept, when),
                _ => self.attempt(msg, route, targets, when),
            }
        })
    }

    /// What travels with a copy to a queue: its journal slot there, its due time, this topic.
    fn stamp(&self, slot: u64, when: Delay) -> Stamp {
        Stamp { slot, delay: when, topic: self.topic.index }
    }

    /// Offers `msg` to `targets` without waiting. The last target gets the publisher's own reference
    /// rather than a clone, sparing a reference count round trip with the broker's thread; the message
    /// comes back in `Attempt::held` when a queue hands it back (no room now).
    fn attempt(&self, msg: Arc<Message>, route: Route, targets: &[Arc<QueueHandle>], when: Delay) -> Attempt {
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
            journaled: SmallVec::new(),
            encoded: None,
            closed: 0,
            held: None,
            when,
        };
        let mut msg = Some(msg);
        for (i, queue) in targets.iter().enumerate() {
            let offered = if i + 1 == targets.len() { msg.take() } else { msg.clone() };
            let offered = offered.expect("the publisher holds the message until the last target");
            let slot = match queue.journal {
                None => NO_SLOT,
                Some(_) => match self.journal(queue, &offered, &mut attempt) {
                    Some(slot) => slot,
                    None => {
                        attempt.held.get_or_insert(offered);
                        continue;
                    }
                },
            };
            match queue.try_offer(offered, self.stamp(slot, when)) {
                Offer::Accepted => {
                    attempt.accepted += 1;
                    if let Some(names) = &mut attempt.accepted_names {
                        names.push(queue.name.to_string());
                    }
                }
                Offer::Refused => {
                    unjournal(queue, slot);
                    attempt.refused.push(queue.name.clone());
                }
                Offer::Full(back) => {
                    attempt.waiting.push((queue.clone(), slot));
                    attempt.held = Some(back);
                }
                Offer::Closed(back) => {
                    unjournal(queue, slot);
                    attempt.closed += 1;
                    attempt.held = Some(back);
                }
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
            if attempt.refused.is_empty() {
                return Confirm::Unroutable { alternate: None };
            }
            let queues = attempt.refused.iter().map(|q| q.to_string()).collect();
            return Confirm::Refused { accepted: 0, queues };
        }
        if attempt.accepted > 0 {
            counters.routed_publishes.fetch_add(1, Ordering::Relaxed);
        } else if !attempt.refused.is_empty() {
            counters.refused_publishes.fetch_add(1, Ordering::Relaxed);
        }
        if attempt.refused.is_empty() {
            Confirm::Routed { queues: attempt.accepted }
        } else {
            let queues = attempt.refused.iter().map(|q| q.to_string()).collect();
            Confirm::Refused { accepted: attempt.accepted, queues }
        }
    }
}

/// Tombstones the enqueue record of a copy that `queue` did not take.
fn unjournal(queue: &QueueHandle, slot: u64) {
    if let (Some(journal), true) = (&queue.journal, slot != NO_SLOT) {
        journal.settled(&[(slot, false)]);
    }
}

/// Waits until every enqueue record of the publish is acked under its journal's fsync policy; a
/// journal that failed to sync makes its copy refused (the confirm names the queue), as a stream's.
async fn await_journals(attempt: &mut Attempt) {
    for (journal, offset) in std::mem::take(&mut attempt.journaled) {
        if let Err(e) = journal.acked(offset).await {
            tracing::error!(queue = %journal.queue(), error = %e, "a durable queue's journal failed to sync");
            attempt.accepted = attempt.accepted.saturating_sub(1);
            attempt.refused.push(journal.queue().clone());
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

/// The longest delay a publish may ask for: a year, past which a delay is more likely a unit mistake
/// (milliseconds read as seconds) than a schedule.
pub const DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 60 * 60);

/// Refuses a delay past [`DELAY_MAX`].
pub(super) fn check_delay(delay: std::time::Duration) -> Result<(), PublishError> {
    if delay > DELAY_MAX {
        return Err(PublishError::DelayTooLong { delay, max: DELAY_MAX });
    }
    Ok(())
}
