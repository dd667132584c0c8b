//! The RabbitMQ backend, through `lapin`: topics are exchanges, queues are queues (quorum queues
//! where the spec needs a delivery limit), bindings are bindings; every publish is confirmed.
//!
//! The mapping, and where it differs from the in-process broker, is in `docs/BACKENDS.md`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};

use super::{
    redact, Backend, BoxFut, Consumer, Depth, Incoming, Outgoing, RemoteError, RemoteSettle, Sent, Settler,
    CONFIRM_TIMEOUT, CONTENT_TYPE,
};
use crate::ids::{DeliveryTag, MessageId};
use crate::message::{Death, DeathReason, DEATHS_MAX};
use crate::protocol::AckError;
use crate::protocol::SettleError;
use crate::routing::TopicKind;
use crate::topology::{DeliveryMode, Overflow, QueueSpec, Target, Topology};

const BACKEND: &str = "rabbitmq";

/// The exchange that takes a topic's unroutable messages to its alternate queue.
pub(crate) fn alternate_exchange(topic: &str) -> String {
    format!("tubemail.alternate.{topic}")
}

fn io(what: &str) -> impl Fn(lapin::Error) -> RemoteError + '_ {
    move |e| RemoteError::Io { backend: BACKEND, reason: format!("{what}: {e}") }
}

fn declare_error(what: String) -> impl FnOnce(lapin::Error) -> RemoteError {
    move |e| {
        let text = e.to_string();
        let hint = if text.contains("PRECONDITION_FAILED") || text.contains("inequivalent") {
            " (it exists with other arguments: `tubemail diff` shows how; delete it or change the file)"
        } else if text.contains("x-consistent-hash") || text.contains("invalid exchange type") {
            " (a `hash` topic needs RabbitMQ's consistent-hash exchange: \
             `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`)"
        } else {
            ""
        };
        RemoteError::Declare { backend: BACKEND, what, reason: format!("{text}{hint}") }
    }
}

/// The RabbitMQ queue type a spec maps to: quorum queues for at-least-once (replicated, and they
/// count deliveries for `x-delivery-limit`); classic queues for at-most-once (nothing is redelivered,
/// so neither matters, and they are faster) and where a quorum queue cannot do what the spec asks
/// (`auto_delete`, `reject-publish-dlx`).
pub(crate) fn queue_type(spec: &QueueSpec) -> &'static str {
    if spec.delivery == DeliveryMode::AtMostOnce
        || spec.auto_delete
        || spec.overflow == Overflow::RejectPublishDlx
    {
        "classic"
    } else {
        "quorum"
    }
}

/// The arguments a queue is declared with on RabbitMQ, by name (`x-…`), as text for `diff`.
pub(crate) fn queue_arguments(spec: &QueueSpec) -> BTreeMap<&'static str, AMQPValue> {
    let mut args = BTreeMap::new();
    let kind = queue_type(spec);
    args.insert("x-queue-type", AMQPValue::LongString(kind.into()));
    if kind == "quorum" && spec.delivery_limit > 0 {
        // tubemail counts deliveries, RabbitMQ returns: a limit of N deliveries is N - 1 returns.
        args.insert("x-delivery-limit", AMQPValue::LongLongInt(i64::from(spec.delivery_limit - 1)));
    }
    let overflow = match spec.overflow {
        Overflow::Block => None,
        Overflow::DropHead => Some("drop-head"),
        Overflow::RejectPublish => Some("reject-publish"),
        Overflow::RejectPublishDlx => Some("reject-publish-dlx"),
    };
    if let Some(overflow) = overflow {
        let mut max = i64::try_from(spec.depth_max).unwrap_or(i64::MAX);
        if kind == "quorum" && spec.overflow == Overflow::RejectPublish {
            // Measured on RabbitMQ 3.10: a quorum queue refuses a publish only once it is over its
            // `x-max-length`, so it holds one more; tubemail's `depth_max` N is its N - 1.
            max = (max - 1).max(0);
        }
        args.insert("x-max-length", AMQPValue::LongLongInt(max));
        args.insert("x-overflow", AMQPValue::LongString(overflow.into()));
    }
    if let Some(ttl) = spec.message_ttl {
        args.insert("x-message-ttl", AMQPValue::LongLongInt(millis(ttl)));
    }
    if let Some(expires) = spec.expires {
        args.insert("x-expires", AMQPValue::LongLongInt(millis(expires).max(1)));
    }
    if let Some(dl) = &spec.dead_letter {
        // Through the default exchange, which routes by queue name.
        args.insert("x-dead-letter-exchange", AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key", AMQPValue::LongString(dl.as_str().into()));
    }
    if spec.single_active_consumer {
        args.insert("x-single-active-consumer", AMQPValue::Boolean(true));
    }
    args
}

/// How a queue is declared beside its arguments: durable, but for a classic `auto_delete` queue
/// (a quorum queue cannot be auto-deleted).
pub(crate) fn queue_options(spec: &QueueSpec) -> QueueDeclareOptions {
    let classic_auto_delete = spec.auto_delete && queue_type(spec) == "classic";
    QueueDeclareOptions {
        durable: !classic_auto_delete,
        auto_delete: classic_auto_delete,
        ..Default::default()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn table(args: BTreeMap<&'static str, AMQPValue>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert(k.into(), v);
    }
    table
}

/// The exchange type a topic kind maps to.
pub(crate) fn exchange_kind(kind: TopicKind) -> ExchangeKind {
    match kind {
        TopicKind::Topic => ExchangeKind::Topic,
        TopicKind::Direct => ExchangeKind::Direct,
        TopicKind::Fanout => ExchangeKind::Fanout,
        TopicKind::Hash => ExchangeKind::Custom("x-consistent-hash".to_owned()),
    }
}

/// The binding key on RabbitMQ: the key, or for a hash topic the weight.
pub(crate) fn binding_key(kind: TopicKind, key: &str, weight: u32) -> String {
    match kind {
        TopicKind::Hash => weight.to_string(),
        TopicKind::Fanout => String::new(),
        _ => key.to_owned(),
    }
}

/// A connection to RabbitMQ with a confirming publish channel.
pub(crate) struct RabbitMq {
    link: Arc<Link>,
    publish: Mutex<Channel>,
    /// Ids of publishes whose `basic.return` lapin paired with another publish's confirm (at most
    /// [`PUBLISH_WINDOW_MAX`](super::PUBLISH_WINDOW_MAX): one per publish in flight; each leaves when
    /// its publish's confirm reads it).
    stray_returns: Mutex<std::collections::BTreeSet<u64>>,
    /// Whether `stray_returns` may hold anything: a confirm reads the set only then (no lock per
    /// publish).
    strays: std::sync::atomic::AtomicBool,
}

/// The connection, and its recovery. tubemail recovers it, not lapin: lapin's automatic recovery
/// stalled about once in ten broker restarts (`tests/remote_restart.rs`: it dropped a handshake
/// error it got while connecting and stayed "connecting", so no connection was made again and
/// every publish was refused for minutes). Here a connection that is not connected is made anew
/// by the next caller that needs one (a publish, a declaration, a subscriber consuming again), at
/// most one attempt each [`RECONNECT_EVERY`], each within twice `CONNECT_TIMEOUT` (the TCP
/// connect, then the handshake).
struct Link {
    url: String,
    props: ConnectionProperties,
    conn: Mutex<Arc<Connection>>,
    /// One reconnection at a time; holds when the last one failed.
    reconnecting: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Closed by tubemail (shutdown): never made anew.
    closed: std::sync::atomic::AtomicBool,
}

impl Link {
    fn current(&self) -> Arc<Connection> {
        Arc::clone(&self.conn.lock().expect("not poisoned"))
    }

    /// Whether `conn` is up (without lapin's recovery, a connection that went down stays down).
    fn alive(conn: &Connection) -> bool {
        conn.status().connected()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The connection: the current one while it is up, else a new one (an error while the broker
    /// cannot be reached, at once when the last attempt failed less than [`RECONNECT_EVERY`] ago).
    async fn connection(&self) -> Result<Arc<Connection>, RemoteError> {
        let conn = self.current();
        if Self::alive(&conn) || self.is_closed() {
            return Ok(conn);
        }
        let mut last_failure = self.reconnecting.lock().await;
        let conn = self.current();
        if Self::alive(&conn) || self.is_closed() {
            return Ok(conn);
        }
        if let Some(at) = *last_failure {
            if at.elapsed() < RECONNECT_EVERY {
                return Err(RemoteError::Connect {
                    url: redact(&self.url),
                    reason: "the connection was lost; reconnecting".to_owned(),
                });
            }
        }
        // Noted before the attempt: one its caller gives up on (a publish's deadline drops it)
        // counts as failed too.
        *last_failure = Some(tokio::time::Instant::now());
        let fresh = match open(&self.url, self.props.clone()).await {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => {
                // Noted again at its end: the callers queued behind a slow attempt fail at once.
                *last_failure = Some(tokio::time::Instant::now());
                return Err(e);
            }
        };
        *last_failure = None;
        // Installed under the lock that `close` sets `closed` under: a shutdown either sees this
        // connection (and closes it) or happened before (and this one is closed here).
        let installed = {
            let mut conn = self.conn.lock().expect("not poisoned");
            let open = !self.is_closed();
            if open {
                *conn = Arc::clone(&fresh);
            }
            open
        };
        if !installed {
            close_within(fresh.close(200, "tubemail shut down".into())).await;
            return Ok(fresh);
        }
        tracing::warn!(url = %redact(&self.url), "the RabbitMQ connection was lost: connected anew");
        Ok(fresh)
    }
}

/// Opens a connection, failing at once when nothing listens and within `CONNECT_TIMEOUT` when
/// the broker accepts but does not answer (a broker starting up).
async fn open(url: &str, props: ConnectionProperties) -> Result<Connection, RemoteError> {
    let uri: lapin::uri::AMQPUri =
        url.parse().map_err(|e: String| RemoteError::Connect { url: redact(url), reason: e })?;
    let addr = format!("{}:{}", uri.authority.host, uri.authority.port);
    match tokio::time::timeout(super::CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(RemoteError::Connect { url: redact(url), reason: format!("{addr}: {e}") }),
        Err(_) => {
            return Err(RemoteError::Connect { url: redact(url), reason: format!("{addr}: timed out") })
        }
    }
    match tokio::time::timeout(super::CONNECT_TIMEOUT, Connection::connect(url, props)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(RemoteError::Connect { url: redact(url), reason: e.to_string() }),
        Err(_) => Err(RemoteError::Connect { url: redact(url), reason: "timed out".to_owned() }),
    }
}

/// At most one attempt to connect again per this while the broker cannot be reached (callers in
/// between get an error at once).
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// The longest a close waits for the broker's close-ok: a connection that died silently never
/// sends it, and lapin stops its heartbeats while closing.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes a connection or channel, waiting at most [`CLOSE_TIMEOUT`] (what is left unacked on it the
/// broker gives back either way).
async fn close_within<T>(close: impl std::future::Future<Output = T>) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// Attempts to consume again that find no such queue before a subscription ends (one per
/// [`RECONNECT_EVERY`]).
const GONE_AFTER: u32 = 10;

impl RabbitMq {
    /// Connects and declares the topology. The connection is recovered by tubemail (see [`Link`]):
    /// after a network failure or a broker restart, the next publish connects anew and each
    /// subscriber consumes anew; what was unacked on the lost connection the broker redelivers.
    pub(crate) async fn connect(url: &str, topology: &Topology) -> Result<RabbitMq, RemoteError> {
        let props = ConnectionProperties::default().with_connection_name("tubemail".into());
        Self::connect_with(url, props, topology).await
    }

    /// Connects with `props` and declares the topology.
    pub(crate) async fn connect_with(
        url: &str,
        props: ConnectionProperties,
        topology: &Topology,
    ) -> Result<RabbitMq, RemoteError> {
        let conn = open(url, props.clone()).await?;
        let publish = confirming_channel(&conn).await?;
        let link = Link {
            url: url.to_owned(),
            props,
            conn: Mutex::new(Arc::new(conn)),
            reconnecting: tokio::sync::Mutex::new(None),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        let rabbit = RabbitMq {
            link: Arc::new(link),
            publish: Mutex::new(publish),
            stray_returns: Mutex::default(),
            strays: std::sync::atomic::AtomicBool::new(false),
        };
        rabbit.declare(topology).await?;
        Ok(rabbit)
    }

    pub(crate) async fn channel(&self) -> Result<Channel, RemoteError> {
        self.link.connection().await?.create_channel().await.map_err(io("channel.open"))
    }

    /// Declares every queue, exchange and binding of `topology`: idempotent, and an error naming
    /// the object where RabbitMQ has it with other arguments.
    pub(crate) async fn declare(&self, topology: &Topology) -> Result<(), RemoteError> {
        for (name, spec) in &topology.queues {
            self.declare_queue_now(name, spec).await?;
        }
        for (name, spec) in &topology.topics {
            let mut args = FieldTable::default();
            if let Some(alt) = &spec.alternate {
                let exchange = alternate_exchange(name);
                let channel = self.channel().await?;
                let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        ExchangeKind::Fanout,
                        options,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(declare_error(format!("exchange {exchange:?}")))?;
                channel
                    .queue_bind(
                        alt.as_str().into(),
                        exchange.as_str().into(),
                        "".into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .map_err(declare_error(format!("binding of {exchange:?} to {alt:?}")))?;
                args.insert("alternate-exchange".into(), AMQPValue::LongString(exchange.into()));
            }
            let channel = self.channel().await?;
            let options = ExchangeDeclareOptions { durable: true, ..Default::default() };
            channel
                .exchange_declare(name.as_str().into(), exchange_kind(spec.kind), options, args)
                .await
                .map_err(declare_error(format!("exchange {name:?} ({})", spec.kind)))?;
        }
        let channel = self.channel().await?;
        for b in &topology.bindings {
            let Target::Queue(queue) = &b.target else { continue };
            let kind = topology.topics[&b.topic].kind;
            let key = binding_key(kind, &b.key, b.weight);
            channel
                .queue_bind(
                    queue.as_str().into(),
                    b.topic.as_str().into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(declare_error(format!("binding {:?} → {queue:?} ({:?})", b.topic, b.key)))?;
        }
        Ok(())
    }

    async fn declare_queue_now(&self, name: &str, spec: &QueueSpec) -> Result<(), RemoteError> {
        // A refused declaration closes its channel: each gets a channel of its own.
        let channel = self.channel().await?;
        channel
            .queue_declare(name.into(), queue_options(spec), table(queue_arguments(spec)))
            .await
            .map_err(declare_error(format!("queue {name:?}")))?;
        close_within(channel.close(200, "declared".into())).await;
        Ok(())
    }

    async fn publish_channel(&self) -> Result<Channel, RemoteError> {
        let current = self.publish.lock().expect("not poisoned").clone();
        if current.status().connected() {
            return Ok(current);
        }
        // Closed by an error of its own (a publish to an exchange deleted behind our back), or
        // with its connection: anew.
        let fresh = confirming_channel(&*self.link.connection().await?).await?;
        *self.publish.lock().expect("not poisoned") = fresh.clone();
        Ok(fresh)
    }
}

/// A channel with `qos` (at least once) and a consumer of `queue` on it.
async fn subscribe(
    link: &Link,
    queue: &str,
    at_most_once: bool,
    qos: u16,
) -> Result<(Arc<Connection>, Channel, lapin::Consumer), RemoteError> {
    let conn = link.connection().await?;
    let channel = conn.create_channel().await.map_err(io("channel.open"))?;
    if !at_most_once {
        channel.basic_qos(qos, BasicQosOptions::default()).await.map_err(io("basic.qos"))?;
    }
    let options = BasicConsumeOptions { no_ack: at_most_once, ..Default::default() };
    let consumer = channel
        .basic_consume(queue.into(), "".into(), options, FieldTable::default())
        .await
        // "home node ... is down": a queue on a cluster node that is restarting, not a queue gone.
        .map_err(|e| match e.to_string().contains("NOT_FOUND") && !e.to_string().contains("home node") {
            true => RemoteError::Declare {
                backend: BACKEND,
                what: format!("queue {queue:?}"),
                reason: "no such queue on RabbitMQ (deleted there?): run `tubemail declare`".to_owned(),
            },
            false => io("basic.consume")(e),
        })?;
    Ok((conn, channel, consumer))
}

/// What a subscriber needs to consume anew once its connection was lost.
struct Resubscribe {
    link: Arc<Link>,
    queue: String,
    at_most_once: bool,
    qos: u16,
    /// The subscriber's current channel (closed when it unsubscribes).
    channel: Arc<Mutex<Channel>>,
    /// Set when it unsubscribed: it is not consumed anew.
    left: Arc<std::sync::atomic::AtomicBool>,
}

impl Resubscribe {
    /// A consumer on a new connection, tried every [`RECONNECT_EVERY`] until one is made (`None`
    /// once the subscriber left, tubemail closed the connection, or the queue is gone). What the old channel held
    /// unacked the broker gives back, redelivered.
    async fn again(&self) -> Option<(Arc<Connection>, lapin::Consumer)> {
        let mut not_found = 0;
        loop {
            let closed = self.link.closed.load(std::sync::atomic::Ordering::Acquire);
            if closed || self.left.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            // Bounded: on a connection that died silently, lapin would wait for the heartbeat.
            let attempt = subscribe(&self.link, &self.queue, self.at_most_once, self.qos);
            let attempt = tokio::time::timeout(CONFIRM_TIMEOUT, attempt).await.unwrap_or_else(|_| {
                Err(RemoteError::Io {
                    backend: BACKEND,
                    reason: format!("no answer within {CONFIRM_TIMEOUT:?}"),
                })
            });
            match attempt {
                Ok((conn, channel, consumer)) => {
                    // Left while the attempt ran (its close found the old channel): this one closes
                    // too, before it delivers anything.
                    if self.left.load(std::sync::atomic::Ordering::Acquire) {
                        close_within(channel.close(200, "unsubscribed".into())).await;
                        return None;
                    }
                    *self.channel.lock().expect("not poisoned") = channel;
                    tracing::warn!(queue = %self.queue, "consuming again on a new RabbitMQ connection");
                    return Some((conn, consumer));
                }
                // Gone from RabbitMQ (an auto-delete queue goes with its consumer's connection),
                // attempt after attempt for [`GONE_AFTER`] (not a queue still being recovered by
                // a broker starting up): the subscription ends, as a cancellation by the broker
                // ends it.
                Err(e @ RemoteError::Declare { .. }) if not_found + 1 >= GONE_AFTER => {
                    tracing::error!(queue = %self.queue, error = %e, "the queue is gone: the subscription ends");
                    return None;
                }
                Err(RemoteError::Declare { .. }) => {
                    not_found += 1;
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consuming again failed; retrying");
                    tokio::time::sleep(RECONNECT_EVERY).await;
                }
            }
        }
    }
}

async fn confirming_channel(conn: &Connection) -> Result<Channel, RemoteError> {
    let channel = conn.create_channel().await.map_err(io("channel.open"))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(io("confirm.select"))?;
    Ok(channel)
}

impl Backend for RabbitMq {
    fn publish<'a>(&'a self, out: Outgoing<'a>) -> BoxFut<'a, Result<Sent, RemoteError>> {
        // One deadline over the whole publish: a channel opened or a publish sent during a
        // connection loss can wait without end in lapin (a promise whose resolver was dropped).
        let publish = async move {
            let channel = self.publish_channel().await?;
            let props = BasicProperties::default()
                .with_content_type(CONTENT_TYPE.into())
                .with_message_id(out.id.0.to_string().into())
                .with_delivery_mode(2);
            let options = BasicPublishOptions { mandatory: true, ..Default::default() };
            let confirm = channel
                .basic_publish(out.topic.into(), out.key.into(), options, &out.body, props)
                .await
                .map_err(io("basic.publish"))?;
            match confirm.await {
                Err(e) => Err(io("publisher confirm")(e)),
                // lapin pairs a `basic.return` with the next confirm it reads (with an ack of
                // `multiple`, whichever of its publishes comes first): a return is this publish's
                // only when it carries this publish's id. Another's is noted for that publish, whose
                // confirm comes without it (unless that publish's task read its confirm first:
                // then it was counted routed, and its note stays until the bound evicts it; ids
                // never repeat).
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {
                    if !self.strays.load(std::sync::atomic::Ordering::Acquire) {
                        return Ok(Sent::Confirmed);
                    }
                    let mut stray = self.stray_returns.lock().expect("not poisoned");
                    let returned = stray.remove(&out.id.0);
                    self.strays.store(!stray.is_empty(), std::sync::atomic::Ordering::Release);
                    Ok(if returned { Sent::Returned } else { Sent::Confirmed })
                }
                Ok(Confirmation::Ack(Some(returned))) => {
                    let other =
                        returned.delivery.properties.message_id().as_ref().map(|m| m.as_str().to_owned());
                    match other.as_deref().map(str::parse::<u64>) {
                        Some(Ok(other)) if other == out.id.0 => Ok(Sent::Returned),
                        Some(Ok(other)) => {
                            let mut stray = self.stray_returns.lock().expect("not poisoned");
                            if stray.len() >= super::PUBLISH_WINDOW_MAX {
                                stray.pop_first();
                            }
                            stray.insert(other);
                            self.strays.store(true, std::sync::atomic::Ordering::Release);
                            tracing::debug!(
                                returned = other,
                                confirmed = out.id.0,
                                "a return paired with another publish's confirm"
                            );
                            Ok(Sent::Confirmed)
                        }
                        _ => {
                            tracing::warn!(returned = ?other, "RabbitMQ returned a message without tubemail's id");
                            Ok(Sent::Confirmed)
                        }
                    }
                }
                Ok(Confirmation::Nack(_)) => Ok(Sent::Refused),
            }
        };
        Box::pin(async move {
            match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
                Ok(sent) => sent,
                Err(_) => Err(RemoteError::Io {
                    backend: BACKEND,
                    reason: format!("no publisher confirm within {CONFIRM_TIMEOUT:?}"),
                }),
            }
        })
    }

    fn consume<'a>(
        &'a self,
        queue: &'a str,
        spec: &'a QueueSpec,
        prefetch: u32,
    ) -> BoxFut<'a, Result<Consumer, RemoteError>> {
        Box::pin(async move {
            let at_most_once = spec.delivery == DeliveryMode::AtMostOnce;
            let qos = u16::try_from(prefetch).unwrap_or(u16::MAX);
            let (conn, channel, consumer) = subscribe(&self.link, queue, at_most_once, qos).await?;
            let settler = Arc::new(RabbitSettler { ackers: Mutex::default(), holds: Mutex::default() });
            let ackers = Arc::clone(&settler);
            // The subscriber's channel (a new one after a reconnection), and whether it left.
            let current = Arc::new(Mutex::new(channel));
            let left = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let resubscribe = Resubscribe {
                link: Arc::clone(&self.link),
                queue: queue.to_owned(),
                at_most_once,
                qos,
                channel: Arc::clone(&current),
                left: Arc::clone(&left),
            };
            let mut next_tag = 0_u64;
            let deliveries = futures::stream::unfold(
                (Some((conn, consumer)), resubscribe),
                move |(mut consumer, resubscribe)| {
                    async move {
                        loop {
                            if let Some((conn, stream)) = consumer.as_mut() {
                                // Judged on the consumer's own connection, and only when it did
                                // not deliver (nothing per delivery).
                                let alive = |conn: &Arc<Connection>| {
                                    Link::alive(conn) && Arc::ptr_eq(conn, &resubscribe.link.current())
                                };
                                match stream.next().await {
                                    Some(Ok(delivery)) => {
                                        return Some((Ok(delivery), (consumer, resubscribe)))
                                    }
                                    // Failed on its own (the connection is up): as it comes.
                                    Some(Err(e)) if alive(conn) => {
                                        return Some((Err(io("consume")(e)), (consumer, resubscribe)))
                                    }
                                    // Cancelled by the broker (its channel still open) or by the
                                    // subscriber: the end. A channel closed by an error of its own
                                    // (an unknown delivery tag, RabbitMQ's `consumer_timeout`)
                                    // consumes anew below: the broker redelivers what it held.
                                    None if alive(conn)
                                        && (resubscribe.left.load(std::sync::atomic::Ordering::Acquire)
                                            || resubscribe
                                                .channel
                                                .lock()
                                                .expect("not poisoned")
                                                .status()
                                                .connected()) =>
                                    {
                                        return None
                                    }
                                    _ => drop(consumer.take()),
                                }
                            }
                            // The connection was given up: consume anew on a new one.
                            consumer = resubscribe.again().await;
                            consumer.as_ref()?;
                        }
                    }
                },
            )
            .map(move |delivery| {
                let delivery = delivery?;
                next_tag += 1;
                let incoming = incoming(next_tag, &delivery);
                if !at_most_once {
                    let mut held = ackers.ackers.lock().expect("not poisoned");
                    // A lost channel's deliveries (redelivered on this one) leave at the first new
                    // delivery: settling one finds no such tag, refused as before.
                    if held.first_key_value().is_some_and(|(_, a)| !a.usable()) {
                        held.retain(|_, a| a.usable());
                    }
                    held.insert(next_tag, delivery.acker);
                }
                Ok(incoming)
            });
            let giving_back = Arc::clone(&settler);
            let cancel: Box<dyn FnOnce() -> BoxFut<'static, u64> + Send> = Box::new(move || {
                Box::pin(async move {
                    // Closing the channel requeues what it delivered and nobody acked: the
                    // deliveries this subscriber held unsettled, and any lapin still buffered.
                    left.store(true, std::sync::atomic::Ordering::Release);
                    let held = giving_back
                        .ackers
                        .lock()
                        .expect("not poisoned")
                        .values()
                        .filter(|a| a.usable())
                        .count() as u64
                        + giving_back.end_holds();
                    let closing = current.lock().expect("not poisoned").clone();
                    close_within(closing.close(200, "unsubscribed".into())).await;
                    held
                })
            });
            Ok(Consumer { deliveries: Box::pin(deliveries), settler, cancel, auto_acked: at_most_once })
        })
    }

    fn depth<'a>(&'a self, queue: &'a str) -> BoxFut<'a, Result<Depth, RemoteError>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            let options = QueueDeclareOptions { passive: true, ..Default::default() };
            let q = channel.queue_declare(queue.into(), options, FieldTable::default()).await;
            let q = q.map_err(io("queue.declare (passive)"))?;
            close_within(channel.close(200, "depth".into())).await;
            Ok(Depth { ready: u64::from(q.message_count()), consumers: u64::from(q.consumer_count()) })
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
            let channel = self.channel().await?;
            let n = channel.queue_delete(name.into(), QueueDeleteOptions::default()).await;
            let n = n.map_err(io("queue.delete"))?;
            close_within(channel.close(200, "deleted".into())).await;
            Ok(u64::from(n))
        })
    }

    fn bind<'a>(
        &'a self,
        topic: &'a str,
        kind: TopicKind,
        queue: &'a str,
        key: &'a str,
        bind: bool,
    ) -> BoxFut<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            let channel = self.channel().await?;
            let key: ShortString = binding_key(kind, key, 1).into();
            let done = if bind {
                let options = QueueBindOptions::default();
                channel.queue_bind(queue.into(), topic.into(), key, options, FieldTable::default()).await
            } else {
                channel.queue_unbind(queue.into(), topic.into(), key, FieldTable::default()).await
            };
            done.map_err(declare_error(format!("binding {topic:?} → {queue:?}")))?;
            close_within(channel.close(200, "bound".into())).await;
            Ok(())
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let current = {
                let conn = self.link.conn.lock().expect("not poisoned");
                self.link.closed.store(true, std::sync::atomic::Ordering::Release);
                Arc::clone(&conn)
            };
            close_within(current.close(200, "tubemail shut down".into())).await;
        })
    }
}

/// Reads what tubemail needs of a RabbitMQ delivery: its id, key, delivery count and deaths.
fn incoming(tag: u64, delivery: &lapin::message::Delivery) -> Incoming {
    let props = &delivery.properties;
    let id = props.message_id().as_ref().and_then(|id| id.as_str().parse().ok()).unwrap_or(0);
    let headers = props.headers().as_ref().map(FieldTable::inner);
    let header = |name: &str| headers.and_then(|h| h.get(name));
    // Quorum queues count returns in `x-delivery-count`; classic queues only flag a redelivery.
    let delivery_count = match header("x-delivery-count").and_then(int) {
        Some(returns) => u32::try_from(returns).unwrap_or(u32::MAX - 1).saturating_add(1),
        None => 1 + u32::from(delivery.redelivered),
    };
    let (deaths, original_key) = match header("x-death") {
        Some(AMQPValue::FieldArray(entries)) => deaths(entries.as_slice()),
        _ => (Vec::new(), None),
    };
    Incoming {
        tag,
        key: original_key.map_or_else(|| delivery.routing_key.as_str().into(), Into::into),
        body: bytes::Bytes::copy_from_slice(&delivery.data),
        id: MessageId(id),
        delivery_count,
        deaths,
    }
}

pub(crate) fn int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

pub(crate) fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// RabbitMQ's `x-death` (newest first) as tubemail's deaths, and the key the message was first
/// published with (dead-lettering through the default exchange changes its routing key).
fn deaths(entries: &[AMQPValue]) -> (Vec<Death>, Option<String>) {
    let mut out = Vec::new();
    let mut key = None;
    for entry in entries.iter().take(DEATHS_MAX) {
        let AMQPValue::FieldTable(t) = entry else { continue };
        let t = t.inner();
        let reason = match t.get("reason").and_then(text).as_deref() {
            Some("rejected") => DeathReason::Rejected,
            Some("expired") => DeathReason::Expired,
            Some("maxlen") => DeathReason::Maxlen,
            Some("delivery_limit") => DeathReason::DeliveryLimit,
            _ => continue,
        };
        let queue = t.get("queue").and_then(text).unwrap_or_default();
        let count = t.get("count").and_then(int).map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX));
        let at_ms =
            t.get("time").and_then(int).map_or(0, |s| u64::try_from(s).unwrap_or(0).saturating_mul(1000));
        if let Some(AMQPValue::FieldArray(keys)) = t.get("routing-keys") {
            key = keys.as_slice().first().and_then(text);
        }
        out.push(Death { queue: queue.into(), reason, count, at_ms });
    }
    (out, key)
}

/// Settles through each delivery's own lapin acker, so that a delivery of a channel that was
/// lost since is refused (its tag would name another message on a new channel) instead of
/// settling the wrong one.
struct RabbitSettler {
    /// Unsettled deliveries: at most the subscription's prefetch.
    ackers: Mutex<BTreeMap<u64, lapin::Acker>>,
    /// Deliveries held for a retry's delay, each by a task that nacks it when due (at most the
    /// prefetch: each holds a prefetch slot): aborted, and counted given back, when the subscriber
    /// leaves (closing the channel requeues them).
    holds: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl RabbitSettler {
    /// Ends the retry holds still waiting; returns how many deliveries they held.
    fn end_holds(&self) -> u64 {
        let holds = std::mem::take(&mut *self.holds.lock().expect("not poisoned"));
        let waiting = holds.iter().filter(|h| !h.is_finished()).count() as u64;
        for hold in holds {
            hold.abort();
        }
        waiting
    }
}

impl Settler for RabbitSettler {
    fn settle(self: Arc<Self>, tag: u64, op: RemoteSettle) -> BoxFut<'static, Result<u64, AckError>> {
        let multiple =
            matches!(op, RemoteSettle::Ack { multiple: true } | RemoteSettle::Nack { multiple: true, .. });
        let (acker, settled) = {
            let mut ackers = self.ackers.lock().expect("not poisoned");
            let acker = ackers.remove(&tag);
            // Counted: the deliveries of the current channel (a lost channel's are redelivered).
            let mut settled = u64::from(acker.as_ref().is_some_and(lapin::Acker::usable));
            if multiple && acker.is_some() {
                ackers.retain(|t, a| {
                    let covered = *t < tag;
                    settled += u64::from(covered && a.usable());
                    !covered
                });
            }
            (acker, settled)
        };
        Box::pin(async move {
            let acker = acker.ok_or(AckError::Refused(SettleError::UnknownTag(DeliveryTag(tag))))?;
            if !acker.usable() {
                return Err(AckError::Remote);
            }
            let done = match op {
                RemoteSettle::Ack { multiple } => acker.ack(BasicAckOptions { multiple }).await,
                RemoteSettle::Nack { multiple, requeue } => {
                    acker.nack(BasicNackOptions { multiple, requeue }).await
                }
                // Quorum queues count deliveries themselves; a classic queue cannot tell.
                RemoteSettle::Reject | RemoteSettle::DeliveryLimit => {
                    acker.reject(BasicRejectOptions { requeue: false }).await
                }
                RemoteSettle::Retry { after } => {
                    // RabbitMQ has no delayed requeue: the delivery is held (a prefetch slot) and
                    // given back when due. A lost channel redelivers it sooner (at least once).
                    let hold = after.min(super::RABBITMQ_RETRY_HOLD_MAX);
                    let task = tokio::spawn(async move {
                        tokio::time::sleep(hold).await;
                        let _ = acker.nack(BasicNackOptions { multiple: false, requeue: true }).await;
                    });
                    let mut holds = self.holds.lock().expect("not poisoned");
                    holds.retain(|h| !h.is_finished());
                    holds.push(task);
                    return Ok(1);
                }
            };
            // `Ok(false)`: the channel was lost after the check above (the acker is poisoned), so
            // nothing was settled and the delivery comes again: not a success.
            match done {
                Ok(true) => Ok(settled),
                Ok(false) | Err(_) => Err(AckError::Remote),
            }
        })
    }
}
