//! Remote backends: the same [`Broker`](crate::Broker) API, topology and handlers on RabbitMQ (the
//! `rabbitmq` feature, through `lapin`) or NATS JetStream (the `nats` feature, through `async-nats`),
//! for when one process is no longer enough.
//!
//! The backend is chosen when the broker starts: [`Broker::connect`](crate::Broker::connect) reads
//! the topology's `connect = "amqp://…"` (or `nats://…`) line, and
//! [`BrokerBuilder::remote`](crate::BrokerBuilder::remote) names a URL in code. Without either, the
//! broker runs in this process. Payloads travel as MessagePack (`rmp-serde`), content type
//! [`CONTENT_TYPE`]; topics, queues and bindings keep their names on the remote broker.
//!
//! What differs from the in-process broker, backend by backend, is the table in `docs/BACKENDS.md`;
//! each difference has a test of its own in `tests/conformance.rs`.
//!
//! # Delivery guarantees
//! A publish returns once the remote broker confirmed it (RabbitMQ's publisher confirms, JetStream's
//! publish acks): a confirmed message is the remote broker's to keep. At-least-once queues settle
//! with the remote's acks, so an unacked delivery comes back (`redelivered`) after a consumer, a
//! connection or this process is lost; at-most-once queues are acked on delivery. Nothing leaves
//! silently: every publish the remote refused or returned is counted in [`TopicStats`].
//!
//! # Ordering
//! One publisher's messages reach a queue in publish order; redeliveries may overtake, as on the
//! in-process broker.
//!
//! # Backpressure
//! Unconfirmed publishes are bounded by [`PUBLISH_WINDOW_MAX`] per broker: `publish` waits for room,
//! `try_publish` hands the value back. Each subscription holds at most its prefetch of unsettled
//! deliveries (the remote's flow control: `basic.qos`, or a pull consumer's batch).
//!
//! # Shutdown
//! [`Broker::shutdown`](crate::Broker::shutdown) stops fetching, lets running handlers settle within
//! the timeout, then closes the subscriptions' channels: what was delivered and not acked goes back
//! to the remote queue (at-least-once) and is reported as `requeued`. Ready messages stay on the
//! remote broker for the next consumer, which is what a remote queue is for.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use crate::ids::MessageId;
use crate::message::Death;
use crate::protocol::AckError;
use crate::routing::TopicKind;
use crate::topology::{QueueSpec, Topology};

pub mod admin;
#[cfg(feature = "nats")]
pub(crate) mod nats;
#[cfg(feature = "rabbitmq")]
pub(crate) mod rabbitmq;

/// The content type of every payload tubemail sends to a remote broker.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// The most publishes awaiting the remote broker's confirm at once, per broker.
pub const PUBLISH_WINDOW_MAX: usize = 1024;

/// The most unsettled deliveries a subscription asks a remote broker for when its prefetch is 0
/// (unlimited in process): RabbitMQ's `basic.qos` takes at most 65,535.
pub const REMOTE_PREFETCH_MAX: u32 = 65_535;

/// How long a publish waits for the remote broker's confirm before it fails with
/// [`PublishError::Remote`] (a client can leave a publish on a closed channel unanswered). On NATS a
/// publish's ack times out sooner, after the JetStream context's 5 s.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to a remote broker may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one read of a remote queue's depth may take in [`Broker::stats`](crate::Broker::stats)
/// (a queue whose read fails or times out keeps this side's figures); a shutdown waits at least
/// this long for its report's depths, past its own deadline.
pub const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A remote broker, named by its URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `amqp://` or `amqps://`: RabbitMQ.
    RabbitMq(String),
    /// `nats://` or `tls://`: NATS with JetStream.
    Nats(String),
}

impl Endpoint {
    /// Reads a URL: `amqp://guest:guest@127.0.0.1:5672/%2f`, `nats://127.0.0.1:4222`.
    ///
    /// # Errors
    /// [`RemoteError::UnknownScheme`] for any other scheme.
    pub fn parse(url: &str) -> Result<Endpoint, RemoteError> {
        match crate::topology::remote_backend(url) {
            Some("rabbitmq") => Ok(Endpoint::RabbitMq(url.to_owned())),
            Some(_) => Ok(Endpoint::Nats(url.to_owned())),
            None => Err(RemoteError::UnknownScheme(url.to_owned())),
        }
    }

    /// The backend's name: `rabbitmq` or `nats`.
    pub fn backend(&self) -> &'static str {
        match self {
            Endpoint::RabbitMq(_) => "rabbitmq",
            Endpoint::Nats(_) => "nats",
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        match self {
            Endpoint::RabbitMq(url) | Endpoint::Nats(url) => url,
        }
    }
}

/// What went wrong with a remote broker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// A URL whose scheme names no backend.
    #[error("{0:?} names no backend: use amqp://… for RabbitMQ or nats://… for NATS JetStream")]
    UnknownScheme(String),
    /// The backend is not compiled into this build.
    #[error("this build of tubemail has no {backend} backend: enable the crate feature {feature:?}")]
    NotBuilt {
        /// `rabbitmq` or `nats`.
        backend: &'static str,
        /// The cargo feature that builds it.
        feature: &'static str,
    },
    /// The remote broker could not be reached, or refused the login.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The client's words.
        reason: String,
    },
    /// The remote broker refused a declaration (a queue that exists with other arguments, a plugin
    /// that is not enabled).
    #[error("{backend} refused to declare {what}: {reason}")]
    Declare {
        /// `rabbitmq` or `nats`.
        backend: &'static str,
        /// What: `queue "billing"`, `exchange "events"`.
        what: String,
        /// The remote's words, and what to do.
        reason: String,
    },
    /// The topology uses something this backend cannot do.
    #[error("{backend} cannot {what}: {hint}")]
    Unsupported {
        /// `rabbitmq` or `nats`.
        backend: &'static str,
        /// What the topology asks for.
        what: String,
        /// What to do instead.
        hint: String,
    },
    /// The connection failed during an operation (and is being recovered where the backend can).
    #[error("{backend}: {reason}")]
    Io {
        /// `rabbitmq` or `nats`.
        backend: &'static str,
        /// The client's words.
        reason: String,
    },
}

/// The JetStream names of a tubemail queue on NATS: its stream, the subject its messages are
/// published to (the routing key in the header `Tubemail-Key`), and its durable pull consumer. For
/// processes that publish to or read a queue without tubemail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamNames {
    /// The stream (work-queue retention).
    pub stream: String,
    /// The subject the stream takes.
    pub subject: String,
    /// The durable pull consumer the queue's subscribers share.
    pub consumer: String,
}

/// The JetStream names of `queue` (see [`JetStreamNames`]).
pub fn jetstream_names(queue: &str) -> JetStreamNames {
    let suffix = {
        let clean: String = queue
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
            .collect();
        format!("{clean}_{:08x}", crate::routing::fnv1a64(queue.as_bytes()) as u32)
    };
    JetStreamNames {
        stream: format!("TMQ_{suffix}"),
        subject: format!("tmq.{suffix}"),
        consumer: format!("TMC_{suffix}"),
    }
}

/// A URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message to publish.
#[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
pub(crate) struct Outgoing<'a> {
    pub(crate) topic: &'a str,
    pub(crate) key: &'a str,
    pub(crate) body: Bytes,
    pub(crate) id: MessageId,
    /// The queues the topology's bindings route it to (or the alternate queue when none), for a
    /// backend whose client routes (NATS); RabbitMQ routes on the server.
    pub(crate) targets: &'a [Arc<str>],
}

/// What the remote broker said of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(any(feature = "rabbitmq", feature = "nats")), allow(dead_code))]
pub(crate) enum Sent {
    /// Confirmed: stored in every queue it routed to (or in the alternate's).
    Confirmed,
    /// Confirmed, but routed nowhere (RabbitMQ's `basic.return` of a mandatory publish).
    Returned,
    /// Refused (RabbitMQ's `basic.nack`: a full `reject-publish` queue).
    Refused,
}

/// One delivery as a backend hands it over, before decoding.
pub(crate) struct Incoming {
    /// The backend's handle for settling it, unique within the consumer.
    pub(crate) tag: u64,
    pub(crate) key: compact_str::CompactString,
    pub(crate) body: Bytes,
    pub(crate) id: MessageId,
    pub(crate) delivery_count: u32,
    pub(crate) deaths: Vec<Death>,
}

/// How a handler's outcome reaches the remote broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteSettle {
    Ack {
        multiple: bool,
    },
    Nack {
        multiple: bool,
        requeue: bool,
    },
    Reject,
    /// Put back, to be delivered again once `after` has passed (`Outcome::Retry`).
    Retry {
        after: std::time::Duration,
    },
    /// Delivered more often than the queue's `delivery_limit` (seen by a backend whose server does
    /// not count: dead-lettered with reason `delivery_limit`, or dropped).
    DeliveryLimit,
}

/// The longest a RabbitMQ delivery is held unacked for a retry with a delay before it is given back
/// (RabbitMQ has no delayed requeue; its `consumer_timeout`, 30 minutes by default, closes a channel
/// whose delivery stays unacked longer).
pub const RABBITMQ_RETRY_HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Settles a consumer's deliveries on the remote broker.
pub(crate) trait Settler: Send + Sync + 'static {
    /// Settles delivery `tag` (and every unsettled one before it, with `multiple`); returns how many
    /// deliveries that settled.
    fn settle(self: Arc<Self>, tag: u64, op: RemoteSettle) -> BoxFut<'static, Result<u64, AckError>>;

    /// Tells the remote that the delivery's handler is still at work (JetStream's progress ack);
    /// nothing where the remote has no per-delivery deadline (RabbitMQ).
    fn progress(self: Arc<Self>, _tag: u64) -> BoxFut<'static, ()> {
        Box::pin(async {})
    }
}

impl std::fmt::Debug for dyn Settler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settler")
    }
}

/// A consumer on a remote queue.
pub(crate) struct Consumer {
    pub(crate) deliveries: Pin<Box<dyn Stream<Item = Result<Incoming, RemoteError>> + Send>>,
    pub(crate) settler: Arc<dyn Settler>,
    /// Cancels the consumer and gives back what it holds unsettled (requeued by the remote); answers
    /// how many deliveries that was.
    pub(crate) cancel: Box<dyn FnOnce() -> BoxFut<'static, u64> + Send>,
    /// Whether the remote acked each delivery as it sent it (RabbitMQ's auto-ack, at most once):
    /// what `deliveries` still holds once the consumer is cancelled was sent and is lost, counted
    /// (`lost_at_most_once`). JetStream's at-most-once deliveries are acked as the stream yields
    /// them: one not yielded is redelivered.
    pub(crate) auto_acked: bool,
}

/// A queue's depth as the remote broker reports it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Depth {
    pub(crate) ready: u64,
    pub(crate) consumers: u64,
}

/// What a remote backend does; the broker's generic part (routing mirror, counters, subscriptions,
/// handler loops) is `broker::remote::RemoteBroker`.
pub(crate) trait Backend: Send + Sync + 'static {
    fn publish<'a>(&'a self, out: Outgoing<'a>) -> BoxFut<'a, Result<Sent, RemoteError>>;
    fn consume<'a>(
        &'a self,
        queue: &'a str,
        spec: &'a QueueSpec,
        prefetch: u32,
    ) -> BoxFut<'a, Result<Consumer, RemoteError>>;
    fn depth<'a>(&'a self, queue: &'a str) -> BoxFut<'a, Result<Depth, RemoteError>>;
    fn declare_queue<'a>(&'a self, name: &'a str, spec: &'a QueueSpec)
        -> BoxFut<'a, Result<(), RemoteError>>;
    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<u64, RemoteError>>;
    fn bind<'a>(
        &'a self,
        topic: &'a str,
        kind: TopicKind,
        queue: &'a str,
        key: &'a str,
        bind: bool,
    ) -> BoxFut<'a, Result<(), RemoteError>>;
    fn close(&self) -> BoxFut<'_, ()>;
}

/// Connects to `endpoint` and declares `topology` on it.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    topology: &Topology,
) -> Result<Arc<dyn Backend>, RemoteError> {
    match endpoint {
        #[cfg(feature = "rabbitmq")]
        Endpoint::RabbitMq(url) => Ok(Arc::new(rabbitmq::RabbitMq::connect(url, topology).await?)),
        #[cfg(not(feature = "rabbitmq"))]
        Endpoint::RabbitMq(_) => {
            let _ = topology;
            Err(RemoteError::NotBuilt { backend: "rabbitmq", feature: "rabbitmq" })
        }
        #[cfg(feature = "nats")]
        Endpoint::Nats(url) => Ok(Arc::new(nats::Nats::connect(url, topology).await?)),
        #[cfg(not(feature = "nats"))]
        Endpoint::Nats(_) => {
            let _ = topology;
            Err(RemoteError::NotBuilt { backend: "nats", feature: "nats" })
        }
    }
}
