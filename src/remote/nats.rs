//! The NATS JetStream backend, through `async-nats`: every queue is a stream with work-queue
//! retention and one durable pull consumer that the queue's subscribers share.
//!
//! Why not a stream per topic with the bindings as subjects: JetStream refuses two streams whose
//! subjects overlap, so two queues bound to one topic by overlapping patterns (`orders.*` and
//! `orders.#`) cannot be two streams listening to the topic's subjects; and a stream per topic with a
//! consumer per queue (interest retention) has no per-queue `max_msgs`, discard policy or age, which
//! `depth_max`, `overflow` and `message_ttl` need (and NATS 2.9 takes one filter subject per
//! consumer or source). So the publishing client routes, with the same matcher as in process (the
//! topology's bindings, which every tubemail process shares), and publishes one copy to each target
//! queue's stream, each acked: the confirm is exact (`Routed { queues }`, and `Refused` names the full
//! queue). The key travels in a header; the subject is the queue's.
//!
//! Names: a queue `NAME` is the stream `TMQ_<name>_<hash>` on subject `tmq.<name>_<hash>`, where
//! `<name>` keeps `[A-Za-z0-9_-]` of the name (others become `_`) and `<hash>` is the FNV-1a hash of
//! the whole name in 8 hex digits, so that two names never share a stream; its consumer is `TMC_…`
//! with the same suffix.
//!
//! The mapping (what tubemail promises | what NATS does):
//! - topic kinds and patterns | routed by the client from the topology (`*`, `#` as AMQP, zero-word
//!   `#` included, `hash` topics too); a process that is not tubemail publishes to a queue's subject
//! - at-least-once queue | stream, work-queue retention, file storage; durable pull consumer, explicit
//!   acks, `AckWait` = `ack_timeout`
//! - at-most-once queue | the same stream; the client acks each message as it arrives
//! - `depth_max` + `drop-head` / `reject-publish` | `max_msgs` + discard old / new (`block`: no limit,
//!   as on RabbitMQ); a dropped head or an expired message goes without a dead letter
//! - `message_ttl` | `max_age` (expired messages are removed by the server: no dead letter)
//! - `delivery_limit` | counted by the client from the message's `delivered`: past the limit it is
//!   dead-lettered with reason `delivery_limit` (published to the dead-letter queue, acked there,
//!   only then acked here) without running the handler
//! - Reject / Nack without requeue | dead-lettered by the client the same way (reason `rejected`),
//!   or terminated without a dead-letter queue; Nack with requeue | `-NAK`
//! - deaths | the header `Tubemail-Deaths`, newest first
//! - message ids | `Nats-Msg-Id` = `ID-ORIGIN` (the tubemail id, a token of the publishing
//!   connection), deduplicated by each queue's stream within its 2-minute window: two processes
//!   whose ids overlap never deduplicate each other's messages; a dead letter's id is its copy's id
//!   with the queue it died in, the dead-letter queue and its death, so that copies of one message
//!   dead-lettered by two queues into one both arrive
//! - `single_active_consumer`, `expires`, `auto_delete` | not in JetStream 2.9: refused at connect
//! - prefetch | the pull batch of each subscriber, and the most deliveries it holds unsettled
//!   (deferred ones included): the next is handed to its handler only when one is settled (the
//!   consumer's `max_ack_pending` is 65,535)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;

use super::{
    jetstream_names, redact, Backend, BoxFut, Consumer, Depth, Incoming, Outgoing, RemoteError, RemoteSettle,
    Sent, Settler, CONTENT_TYPE,
};
use crate::ids::{DeliveryTag, MessageId};
use crate::message::{Death, DeathReason, DEATHS_MAX};
use crate::protocol::AckError;
use crate::protocol::SettleError;
use crate::routing::TopicKind;
use crate::topology::{DeliveryMode, Overflow, QueueSpec, Topology};

const BACKEND: &str = "nats";
/// How long each step of closing the connection may take at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A queue stream's description: this, then the queue's name (read back by `tubemail diff`).
pub(crate) const QUEUE_DESCRIPTION: &str = "tubemail queue ";
const KEY_HEADER: &str = "Tubemail-Key";
const DEATHS_HEADER: &str = "Tubemail-Deaths";
/// The consumer's `max_ack_pending`: subscribers bound what they hold by their pull batches.
const MAX_ACK_PENDING: i64 = 65_535;
/// How long a pull waits for messages before it asks again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// How long a JetStream API request or a publish's ack may take (async-nats' default; the context
/// has one timeout for both): below [`CONFIRM_TIMEOUT`](super::CONFIRM_TIMEOUT), so that a publish to a stopped server fails
/// within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// When a message given back at unsubscribe comes again: after the subscriber's last pull request
/// has expired on the server (JetStream 2.9 cannot cancel one), which would otherwise take the
/// message into a closed inbox, where it waits out `AckWait`.
const GIVE_BACK_AFTER: Duration = Duration::from_millis(5_500);

fn io(what: &'static str) -> impl Fn(&dyn std::fmt::Display) -> RemoteError {
    move |e| RemoteError::Io { backend: BACKEND, reason: format!("{what}: {e}") }
}

pub(crate) fn stream_name(queue: &str) -> String {
    super::jetstream_names(queue).stream
}

fn subject(queue: &str) -> String {
    super::jetstream_names(queue).subject
}

fn consumer_name(queue: &str) -> String {
    super::jetstream_names(queue).consumer
}

/// The stream a queue is declared as.
pub(crate) fn stream_config(queue: &str, spec: &QueueSpec) -> Config {
    let (max_messages, discard) = match spec.overflow {
        Overflow::Block => (-1, DiscardPolicy::Old),
        Overflow::DropHead => (i64::try_from(spec.depth_max).unwrap_or(i64::MAX), DiscardPolicy::Old),
        Overflow::RejectPublish | Overflow::RejectPublishDlx => {
            (i64::try_from(spec.depth_max).unwrap_or(i64::MAX), DiscardPolicy::New)
        }
    };
    Config {
        name: stream_name(queue),
        description: Some(format!("{QUEUE_DESCRIPTION}{queue}")),
        subjects: vec![subject(queue)],
        retention: RetentionPolicy::WorkQueue,
        storage: StorageType::File,
        max_messages,
        discard,
        max_age: spec.message_ttl.unwrap_or_default(),
        num_replicas: 1,
        ..Default::default()
    }
}

pub(crate) fn consumer_config(queue: &str, spec: &QueueSpec) -> pull::Config {
    pull::Config {
        durable_name: Some(consumer_name(queue)),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: spec.ack_timeout,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

/// What JetStream 2.9 cannot do of a queue spec.
pub(crate) fn unsupported(queue: &str, spec: &QueueSpec) -> Option<RemoteError> {
    let what = if spec.single_active_consumer {
        "single_active_consumer"
    } else if spec.expires.is_some() {
        "expires"
    } else if spec.auto_delete {
        "auto_delete"
    } else {
        return None;
    };
    Some(RemoteError::Unsupported {
        backend: BACKEND,
        what: format!("give queue {queue:?} {what}"),
        hint: "JetStream 2.9 has no such consumer or stream setting: leave it out of the queue, or run it \
               on RabbitMQ or in process"
            .to_owned(),
    })
}

/// A connection to NATS with its JetStream context.
pub(crate) struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    /// This connection's part of every `Nats-Msg-Id` (the process and the moment it connected, in
    /// hex): tubemail ids from two processes may meet, their message ids may not.
    origin: String,
    /// Queues' subjects, computed once.
    subjects: std::sync::RwLock<BTreeMap<Arc<str>, Arc<str>>>,
}

impl Nats {
    fn subject_of(&self, queue: &Arc<str>) -> Arc<str> {
        if let Some(subject) = self.subjects.read().expect("not poisoned").get(queue) {
            return Arc::clone(subject);
        }
        let subject: Arc<str> = subject(queue).into();
        self.subjects.write().expect("not poisoned").insert(Arc::clone(queue), Arc::clone(&subject));
        subject
    }

    pub(crate) async fn connect(url: &str, topology: &Topology) -> Result<Nats, RemoteError> {
        for (name, spec) in &topology.queues {
            if let Some(e) = unsupported(name, spec) {
                return Err(e);
            }
        }
        let options =
            async_nats::ConnectOptions::new().name("tubemail").connection_timeout(super::CONNECT_TIMEOUT);
        let client = tokio::time::timeout(super::CONNECT_TIMEOUT, options.connect(url))
            .await
            .map_err(|_| RemoteError::Connect { url: redact(url), reason: "timed out".to_owned() })?
            .map_err(|e| RemoteError::Connect { url: redact(url), reason: e.to_string() })?;
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let connected =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // And a count of this process's connections: two made within one tick of a coarse clock
        // must not share an origin.
        static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let origin = format!("{:x}{:x}{nth:x}", std::process::id(), connected.as_nanos());
        let nats = Nats { client, js, origin, subjects: Default::default() };
        for (name, spec) in &topology.queues {
            nats.declare_queue_now(name, spec).await?;
        }
        Ok(nats)
    }

    /// Creates the queue's stream and consumer, or checks that they are as the spec says.
    pub(crate) async fn declare_queue_now(&self, name: &str, spec: &QueueSpec) -> Result<(), RemoteError> {
        if let Some(e) = unsupported(name, spec) {
            return Err(e);
        }
        let want = stream_config(name, spec);
        let declare = |reason: String| RemoteError::Declare {
            backend: BACKEND,
            what: format!("queue {name:?}"),
            reason,
        };
        match self.js.get_stream(&want.name).await {
            Ok(mut stream) => {
                let info = stream.info().await.map_err(|e| declare(e.to_string()))?;
                let have = &info.config;
                let same = have.subjects == want.subjects
                    && have.retention == want.retention
                    && have.max_messages == want.max_messages
                    && (have.max_messages < 0 || have.discard == want.discard)
                    && have.max_age == want.max_age;
                if !same {
                    return Err(declare(format!(
                        "stream {} exists with other settings (max_msgs {}, discard {:?}, max_age {:?}): \
                         `tubemail diff` shows how; delete it or change the file",
                        want.name, have.max_messages, have.discard, have.max_age
                    )));
                }
            }
            Err(_) => {
                self.js.create_stream(want.clone()).await.map_err(|e| declare(e.to_string()))?;
            }
        }
        let stream = self.js.get_stream(&want.name).await.map_err(|e| declare(e.to_string()))?;
        stream
            .get_or_create_consumer::<pull::Config>(&consumer_name(name), consumer_config(name, spec))
            .await
            .map_err(|e| declare(format!("consumer: {e}")))?;
        Ok(())
    }
}

/// Publishes one copy to the stream of the queue whose subject is `subject`, with `dedupe` as its
/// `Nats-Msg-Id`; `Ok(false)` when the stream refused it (full, discard new).
async fn publish_to(
    js: &jetstream::Context,
    subject: &str,
    key: &str,
    body: bytes::Bytes,
    dedupe: &str,
    deaths: Option<String>,
) -> Result<bool, RemoteError> {
    let mut headers = HeaderMap::new();
    headers.insert(KEY_HEADER, key);
    headers.insert("Content-Type", CONTENT_TYPE);
    headers.insert("Nats-Msg-Id", dedupe);
    if let Some(deaths) = deaths {
        headers.insert(DEATHS_HEADER, deaths.as_str());
    }
    let ack = js.publish_with_headers(subject.to_owned(), headers, body).await;
    let ack = ack.map_err(|e| io("publish")(&e))?;
    // The ack future has its own timer (the context's `REQUEST_TIMEOUT`): a second one here would
    // cost a timer per copy.
    match ack.await {
        Err(e) if e.kind() == PublishErrorKind::TimedOut => Err(RemoteError::Io {
            backend: BACKEND,
            reason: format!("no publish ack within {REQUEST_TIMEOUT:?}"),
        }),
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("maximum messages") => Ok(false),
        Err(e) => Err(io("publish ack")(&e)),
    }
}

impl Backend for Nats {
    fn publish<'a>(&'a self, out: Outgoing<'a>) -> BoxFut<'a, Result<Sent, RemoteError>> {
        Box::pin(async move {
            // The client routes: `out.targets` are the queues the topology's bindings give.
            let mut refused = false;
            let (key, id) = (out.key, out.id);
            let copies = out.targets.iter().map(|q| {
                let (subject, body) = (self.subject_of(q), out.body.clone());
                // `ID-ORIGIN`: the tubemail id and this connection. A stream is one queue's and
                // deduplicates on its own, so the queue need not be in it (the server stores and
                // hashes every id for its window: short ids are part of the publish rate).
                let dedupe = format!("{}-{}", id.0, self.origin);
                async move { publish_to(&self.js, &subject, key, body, &dedupe, None).await }
            });
            for copy in futures::future::join_all(copies).await {
                refused |= !copy?;
            }
            Ok(if out.targets.is_empty() {
                Sent::Returned
            } else if refused {
                Sent::Refused
            } else {
                Sent::Confirmed
            })
        })
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        spec: &'a QueueSpec,
        prefetch: u32,
    ) -> BoxFut<'a, Result<Consumer, RemoteError>> {
        Box::pin(async move {
            let stream = self.js.get_stream(stream_name(queue)).await.map_err(|e| io("get stream")(&e))?;
            let consumer: jetstream::consumer::Consumer<pull::Config> =
                stream.get_consumer(&consumer_name(queue)).await.map_err(|e| io("get consumer")(&e))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(prefetch.max(1) as usize)
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| io("pull")(&e))?;
            let at_most_once = spec.delivery == DeliveryMode::AtMostOnce;
            let settler = Arc::new(NatsSettler {
                held: Mutex::default(),
                room: tokio::sync::Notify::new(),
                prefetch: prefetch.max(1) as usize,
                js: self.js.clone(),
                queue: queue.to_owned(),
                dead_letter: spec.dead_letter.clone(),
            });
            let held = Arc::clone(&settler);
            let mut next_tag = 0_u64;
            let deliveries = messages.filter_map(move |message| {
                let held = Arc::clone(&held);
                next_tag += 1;
                let tag = next_tag;
                async move {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => return Some(Err(io("pull")(&e))),
                    };
                    let incoming = incoming(tag, &message);
                    if at_most_once {
                        // Acked as it arrives: a crash from here on loses it, as at-most-once may.
                        let _ = message.ack().await;
                        return Some(Ok(incoming));
                    }
                    // The prefetch bounds what the subscriber holds unsettled, deferred deliveries
                    // included, as RabbitMQ's `basic.qos` does.
                    held.wait_for_room().await;
                    held.held.lock().expect("not poisoned").insert(tag, message);
                    Some(Ok(incoming))
                }
            });
            let giving_back = Arc::clone(&settler);
            let cancel: Box<dyn FnOnce() -> BoxFut<'static, u64> + Send> = Box::new(move || {
                Box::pin(async move {
                    // What this subscriber held unsettled goes back once its pull request has expired
                    // (`GIVE_BACK_AFTER`), not after `AckWait`.
                    let held: Vec<_> = std::mem::take(&mut *giving_back.held.lock().expect("not poisoned"))
                        .into_values()
                        .collect();
                    let given_back = held.len() as u64;
                    for message in held {
                        let _ = message.ack_with(AckKind::Nak(Some(GIVE_BACK_AFTER))).await;
                    }
                    given_back
                })
            });
            Ok(Consumer { deliveries: Box::pin(deliveries), settler, cancel, auto_acked: false })
        })
    }

    fn depth<'a>(&'a self, queue: &'a str) -> BoxFut<'a, Result<Depth, RemoteError>> {
        Box::pin(async move {
            let stream = self.js.get_stream(stream_name(queue)).await.map_err(|e| io("get stream")(&e))?;
            let mut consumer: jetstream::consumer::Consumer<pull::Config> =
                stream.get_consumer(&consumer_name(queue)).await.map_err(|e| io("get consumer")(&e))?;
            let info = consumer.info().await.map_err(|e| io("consumer info")(&e))?;
            Ok(Depth { ready: info.num_pending, consumers: info.num_waiting as u64 })
        })
    }

    fn declare_queue<'a>(
        &'a self,
        name: &'a str,
        spec: &'a QueueSpec,
    ) -> BoxFut<'a, Result<(), RemoteError>> {
        Box::pin(self.declare_queue_now(name, spec))
    }

    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<u64, RemoteError>> {
        Box::pin(async move {
            let mut stream = self.js.get_stream(stream_name(name)).await.map_err(|e| io("get stream")(&e))?;
            let held = stream.info().await.map(|i| i.state.messages).unwrap_or(0);
            self.js.delete_stream(stream_name(name)).await.map_err(|e| io("delete stream")(&e))?;
            Ok(held)
        })
    }

    fn bind<'a>(
        &'a self,
        _topic: &'a str,
        _kind: TopicKind,
        _queue: &'a str,
        _key: &'a str,
        _bind: bool,
    ) -> BoxFut<'a, Result<(), RemoteError>> {
        // Bindings live in the routing client (see the module's docs): nothing to change on NATS.
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            // Each step within CLOSE_TIMEOUT: a server that is down leaves a flush waiting while
            // the client reconnects (without end, by default).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.flush()).await;
            // The connection ends once its subscriptions drained, not when the last clone of the
            // client drops (a `Broker` kept after its shutdown).
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.drain()).await;
        })
    }
}

/// Reads what tubemail needs of a JetStream message.
fn incoming(tag: u64, message: &jetstream::Message) -> Incoming {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    Incoming {
        tag,
        key: key_of(message).into(),
        body: message.payload.clone(),
        id: id_of(message),
        delivery_count: u32::try_from(delivered).unwrap_or(1).max(1),
        deaths: deaths_of(message),
    }
}

fn header<'m>(message: &'m jetstream::Message, name: &str) -> Option<&'m str> {
    message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str())
}

fn key_of(message: &jetstream::Message) -> &str {
    header(message, KEY_HEADER).unwrap_or_default()
}

/// The tubemail message id, the first part of `Nats-Msg-Id` (0 for a message from elsewhere).
fn id_of(message: &jetstream::Message) -> MessageId {
    let id = header(message, "Nats-Msg-Id").and_then(|id| id.split('-').next()?.parse().ok());
    MessageId(id.unwrap_or(0))
}

fn deaths_of(message: &jetstream::Message) -> Vec<Death> {
    header(message, DEATHS_HEADER).map(parse_deaths).unwrap_or_default()
}

/// `queue|reason|count|at_ms` entries separated by `;`, newest first.
fn format_deaths(deaths: &[Death]) -> String {
    deaths
        .iter()
        .take(DEATHS_MAX)
        .map(|d| format!("{}|{}|{}|{}", d.queue, d.reason, d.count, d.at_ms))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_deaths(text: &str) -> Vec<Death> {
    text.split(';')
        .filter_map(|entry| {
            let mut parts = entry.split('|');
            let queue = parts.next()?;
            let reason = match parts.next()? {
                "rejected" => DeathReason::Rejected,
                "expired" => DeathReason::Expired,
                "maxlen" => DeathReason::Maxlen,
                "delivery_limit" => DeathReason::DeliveryLimit,
                _ => return None,
            };
            let count = parts.next()?.parse().ok()?;
            let at_ms = parts.next()?.parse().ok()?;
            Some(Death { queue: queue.into(), reason, count, at_ms })
        })
        .take(DEATHS_MAX)
        .collect()
}

/// An unsettled message (its headers hold its key and deaths, for a dead letter).
type Held = jetstream::Message;

/// Settles through each message's own reply subject.
struct NatsSettler {
    /// Unsettled messages with their deaths and key: at most `prefetch`.
    held: Mutex<BTreeMap<u64, Held>>,
    /// Woken when a held message is settled.
    room: tokio::sync::Notify,
    /// The most messages held unsettled.
    prefetch: usize,
    js: jetstream::Context,
    queue: String,
    dead_letter: Option<String>,
}

impl NatsSettler {
    /// Waits until the subscriber holds fewer than its prefetch.
    async fn wait_for_room(&self) {
        loop {
            let settled = self.room.notified();
            if self.held.lock().expect("not poisoned").len() < self.prefetch {
                return;
            }
            settled.await;
        }
    }

    /// Takes `tag` (with `multiple`, every tag up to it) out of the held messages.
    fn take(&self, tag: u64, multiple: bool) -> smallvec::SmallVec<[Held; 1]> {
        let taken: smallvec::SmallVec<[Held; 1]> = {
            let mut held = self.held.lock().expect("not poisoned");
            if multiple {
                let tags: Vec<u64> = held.range(..=tag).map(|(t, _)| *t).collect();
                tags.iter().filter_map(|t| held.remove(t)).collect()
            } else {
                held.remove(&tag).into_iter().collect()
            }
        };
        if !taken.is_empty() {
            // One waiter at most (the subscriber's stream): `notify_one` leaves a permit when it is
            // not waiting yet, and takes no lock.
            self.room.notify_one();
        }
        taken
    }

    /// Publishes the message to the dead-letter queue with its new death, waits for that ack, and
    /// only then acks it here; terminates it without a dead-letter queue.
    async fn dead_letter_or_drop(&self, tag: u64, reason: DeathReason) -> Result<(), AckError> {
        let held = self.take(tag, false).pop();
        let message = held.ok_or(AckError::Refused(SettleError::UnknownTag(DeliveryTag(tag))))?;
        self.dead_letter_or_drop_held(message, reason).await
    }

    /// [`NatsSettler::dead_letter_or_drop`] for a message already taken from `held`.
    async fn dead_letter_or_drop_held(&self, message: Held, reason: DeathReason) -> Result<(), AckError> {
        let (mut deaths, key) = (deaths_of(&message), key_of(&message).to_owned());
        if let Some(dl) = &self.dead_letter {
            let at_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let count = deaths
                .iter()
                .find(|d| *d.queue == *self.queue && d.reason == reason)
                .map_or(1, |d| d.count + 1);
            deaths.retain(|d| !(*d.queue == *self.queue && d.reason == reason));
            deaths.insert(0, Death { queue: self.queue.as_str().into(), reason, count, at_ms });
            // The message keeps its id; the dead-letter stream deduplicates each death of each copy
            // once: the copy's own `Nats-Msg-Id`, the queue it dies in (copies of one message in two
            // queues share an id) and the dead-letter queue.
            let (subject, from) = (subject(dl), jetstream_names(&self.queue).subject);
            // A message published without an id (not by tubemail) is named by its place in its
            // stream, the same at each redelivery: one fallback for all such messages would let the
            // dead-letter stream drop the second as a duplicate of the first.
            let copy = match header(&message, "Nats-Msg-Id") {
                Some(id) => id.to_owned(),
                None => format!("s{}", message.info().map(|i| i.stream_sequence).unwrap_or(0)),
            };
            let dedupe = format!("{copy}-{}-{}-{reason}{count}", &from[4..], &subject[4..]);
            let deaths = Some(format_deaths(&deaths));
            match publish_to(&self.js, &subject, &key, message.payload.clone(), &dedupe, deaths).await {
                Ok(true) => {}
                _ => {
                    // Not taken by the dead-letter queue: given back, to come again.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    return Err(AckError::Remote);
                }
            }
            message.ack().await.map_err(|_| AckError::Remote)
        } else {
            message.ack_with(AckKind::Term).await.map_err(|_| AckError::Remote)
        }
    }
}

impl Settler for NatsSettler {
    fn progress(self: Arc<Self>, tag: u64) -> BoxFut<'static, ()> {
        Box::pin(async move {
            let message = self.held.lock().expect("not poisoned").get(&tag).cloned();
            if let Some(message) = message {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        })
    }

    fn settle(self: Arc<Self>, tag: u64, op: RemoteSettle) -> BoxFut<'static, Result<u64, AckError>> {
        let unknown = AckError::Refused(SettleError::UnknownTag(DeliveryTag(tag)));
        match op {
            RemoteSettle::Nack { requeue: false, multiple: true } => Box::pin(async move {
                // Every held delivery up to `tag`, taken at once, each dead-lettered (or dropped) on
                // its own, as RabbitMQ's `basic.nack` with `multiple` does. One that fails is given
                // back (to come again) and the others go on; what settled is counted.
                let messages: Vec<Held> = {
                    let mut held = self.held.lock().expect("not poisoned");
                    if !held.contains_key(&tag) {
                        return Err(unknown);
                    }
                    let tags: Vec<u64> = held.range(..=tag).map(|(t, _)| *t).collect();
                    tags.iter().filter_map(|t| held.remove(t)).collect()
                };
                self.room.notify_one();
                let (mut settled, mut failed) = (0, None);
                for message in messages {
                    match self.dead_letter_or_drop_held(message, DeathReason::Rejected).await {
                        Ok(()) => settled += 1,
                        Err(e) => failed = Some(e),
                    }
                }
                match failed {
                    Some(e) if settled == 0 => Err(e),
                    _ => Ok(settled),
                }
            }),
            RemoteSettle::Nack { requeue: false, .. } | RemoteSettle::Reject => {
                Box::pin(
                    async move { self.dead_letter_or_drop(tag, DeathReason::Rejected).await.map(|()| 1) },
                )
            }
            RemoteSettle::DeliveryLimit => Box::pin(async move {
                self.dead_letter_or_drop(tag, DeathReason::DeliveryLimit).await.map(|()| 1)
            }),
            RemoteSettle::Retry { after } => {
                // JetStream's own delayed redelivery (`-NAK {"delay": …}`).
                let message = self.take(tag, false).pop();
                Box::pin(async move {
                    let message = message.ok_or(unknown)?;
                    message
                        .ack_with(AckKind::Nak(Some(after)))
                        .await
                        .map(|()| 1)
                        .map_err(|_| AckError::Remote)
                })
            }
            RemoteSettle::Ack { multiple } | RemoteSettle::Nack { multiple, requeue: true } => {
                let messages = self.take(tag, multiple);
                let kind =
                    if matches!(op, RemoteSettle::Ack { .. }) { AckKind::Ack } else { AckKind::Nak(None) };
                Box::pin(async move {
                    if messages.is_empty() {
                        return Err(unknown);
                    }
                    let settled = messages.len() as u64;
                    for m in messages {
                        m.ack_with(kind).await.map_err(|_| AckError::Remote)?;
                    }
                    Ok(settled)
                })
            }
        }
    }
}
