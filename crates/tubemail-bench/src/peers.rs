//! The peers of the fan-out benchmark: the same shape ([`FANOUT_BINDINGS`], [`FANOUT_KEYS`] in turn, one
//! consumer per queue) through RabbitMQ (AMQP 0-9-1, `lapin`) and NATS (core and JetStream,
//! `async-nats`) running on this machine, so that tubemail's figures sit next to real brokers' in one
//! table. Built only with the cargo feature `peers`.
//!
//! Every function here builds its own tokio runtime (two workers), blocks until the run is over, and
//! cleans up what it declared (exchange and queues, or the JetStream stream). Every wait is bounded:
//! connecting by [`CONNECT_TIMEOUT`], the run by [`RUN_TIMEOUT`] (past it the run is
//! [`PeerError::Failed`]), clean-up by [`CLEANUP_TIMEOUT`]. Names are unique per run (process id, clock,
//! counter), so runs never see each other's messages.
//!
//! What is measured: from the first publish to the last delivery handled, as in
//! [`fanout_tubemail`](super::fanout_tubemail); set-up and clean-up are not timed. Each payload carries
//! the publish time in its first 8 bytes (nanoseconds since the run's start, little-endian), from which
//! every delivery's latency is recorded; under a flood this is mostly queueing delay, not the latency
//! of a lightly loaded broker. Payloads shorter than 8 bytes carry no stamp and give no latency.
//!
//! How the AMQP patterns map to NATS subjects (see [`nats_subjects`]): `*` stays `*`; a trailing `#`
//! becomes `>`, and since AMQP's `#` also matches zero words while NATS's `>` needs at least one token,
//! `a.#` is two subscriptions (`a` and `a.>`); `#` alone is `>`. Every subject is put under a per-run
//! prefix, so `>` means "any key of this run" (AMQP's `#` on a routing key of one or more words). A `#`
//! that is not last has no NATS equivalent; the fan-out shape has none. JetStream servers before 2.10
//! take one filter subject per consumer, so the `contracts.#` queue is two consumers there, read by one
//! subscriber.

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use smallvec::SmallVec;

use super::{FANOUT_BINDINGS, FANOUT_KEYS};
use tubemail::ids::QueueId;
use tubemail::routing::RoutingTable;
use tubemail::topology::TopicKind;

/// Where RabbitMQ listens (AMQP 0-9-1, guest/guest, vhost `/`).
pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";

/// Where NATS listens (with JetStream enabled).
pub const NATS_ADDR: &str = "127.0.0.1:4222";

/// The TCP probe's and the clients' connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one run may take, set-up, publishing and delivering together; past it the run fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest clean-up (deleting what a run declared, closing connections) may take.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// NATS core: how long a subscriber waits without a message before it takes the rest as lost.
pub const NATS_QUIET: Duration = Duration::from_secs(2);

/// RabbitMQ with manual acks: unacked deliveries per consumer (`basic.qos` prefetch count), the same
/// as tubemail's subscribers in the fan-out shape. JetStream pulls in batches of this size.
pub const PREFETCH: u16 = 256;

/// RabbitMQ with manual acks: one `basic.ack` with `multiple` per this many deliveries (and one for
/// the last).
pub const ACK_EVERY: u64 = 64;

/// JetStream: unacked messages per consumer before the server stops sending (`max_ack_pending`).
pub const JETSTREAM_MAX_ACK_PENDING: i64 = 1024;

/// Publishes awaiting their confirm (RabbitMQ publisher confirms, JetStream publish acks) before the
/// publisher waits for the oldest.
pub const CONFIRM_WINDOW: usize = 1024;

const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);
const LATENCY_MAX_NS: u64 = 3_600_000_000_000;

/// One peer system's result of the fan-out shape.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerResult {
    /// `"rabbitmq"` (auto-ack), `"rabbitmq-ack"` (manual acks), `"nats"` (core) or `"nats-jetstream"`.
    pub system: &'static str,
    /// `"at-most-once"` or `"at-least-once"`.
    pub mode: &'static str,
    /// Messages published; for RabbitMQ and JetStream, each one confirmed by the broker.
    pub published: u64,
    /// Deliveries handled by the consumers.
    pub deliveries: u64,
    /// Deliveries the shape makes from `published` messages (15 per 8).
    pub expected: u64,
    /// Deliveries that never came: `expected - deliveries` (NATS core drops under a flood).
    pub lost: u64,
    /// From the first publish to the last delivery handled.
    pub elapsed: Duration,
    /// Median publish-to-handled latency in microseconds (`None` without deliveries or stamps).
    pub p50_us: Option<f64>,
    /// 99th percentile publish-to-handled latency in microseconds.
    pub p99_us: Option<f64>,
}

impl PeerResult {
    /// Deliveries per second (0 for an empty run).
    pub fn deliveries_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.deliveries as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a peer could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Nothing answered at the peer's address: it is not running on this machine.
    #[error("{system} not reachable at {addr}: {reason}")]
    Unreachable {
        /// The system, as in [`PeerResult::system`].
        system: &'static str,
        /// The address tried.
        addr: String,
        /// The connect error.
        reason: String,
    },
    /// The peer's program is not installed on this machine; `how` says how to install it.
    #[error("{system} is not installed: {how}")]
    Missing {
        /// The system, as in [`PeerResult::system`].
        system: &'static str,
        /// The command that installs it.
        how: &'static str,
    },
    /// The peer answered but the run failed (a protocol error, a nack, a timeout).
    #[error("{system} failed: {reason}")]
    Failed {
        /// The system, as in [`PeerResult::system`].
        system: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Whether something accepts TCP connections at `addr` (a connect with a 500 ms timeout).
pub fn reachable(addr: &str) -> bool {
    probe(addr, Duration::from_millis(500)).is_ok()
}

fn probe(addr: &str, timeout: Duration) -> Result<(), String> {
    let addrs = addr.to_socket_addrs().map_err(|e| e.to_string())?;
    let mut last = format!("{addr} resolves to no address");
    for sa in addrs {
        match TcpStream::connect_timeout(&sa, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// The NATS subjects that together match what the AMQP topic `pattern` matches, on keys of one or more
/// non-empty words: `*` stays, a trailing `#` becomes `>` and, because `#` also matches zero words,
/// `a.#` is both `a` and `a.>` (`#` alone is `>`). `None` for a `#` that is not last, which NATS
/// cannot express.
pub fn nats_subjects(pattern: &str) -> Option<Vec<String>> {
    let words: Vec<&str> = pattern.split('.').collect();
    let (last, init) = words.split_last()?;
    if init.contains(&"#") {
        return None;
    }
    if *last != "#" {
        return Some(vec![pattern.to_string()]);
    }
    if init.is_empty() {
        return Some(vec![">".to_string()]);
    }
    let base = init.join(".");
    Some(vec![base.clone(), format!("{base}.>")])
}

/// The fan-out shape through RabbitMQ: a topic exchange with the four bindings, one exclusive
/// auto-deleted queue per binding (unique names per run), one consumer per queue on its own channel of
/// a consuming connection, one publisher on a connection of its own with publisher confirms on (at
/// most [`CONFIRM_WINDOW`] awaiting). With `manual_ack` false the consumers are auto-ack
/// (`"rabbitmq"`, at-most-once); with it true they have a prefetch of [`PREFETCH`] and ack with
/// `multiple` every [`ACK_EVERY`] deliveries (`"rabbitmq-ack"`, at-least-once). Messages are transient
/// and queues non-durable, like tubemail's in-memory queues.
pub fn fanout_rabbitmq(messages: u64, payload: usize, manual_ack: bool) -> Result<PeerResult, PeerError> {
    let system = if manual_ack { "rabbitmq-ack" } else { "rabbitmq" };
    let mode = if manual_ack { "at-least-once" } else { "at-most-once" };
    reach(system, RABBITMQ_ADDR)?;
    block_on(system, async move {
        let uri = format!("amqp://guest:guest@{RABBITMQ_ADDR}/%2f");
        let run = tokio::time::timeout(RUN_TIMEOUT, rabbitmq_run(&uri, messages, payload, manual_ack));
        match run.await {
            Ok(Ok(run)) => Ok(run.into_result(system, mode, messages)),
            Ok(Err(reason)) => Err(PeerError::Failed { system, reason }),
            Err(_) => Err(timed_out(system)),
        }
    })
}

async fn rabbitmq_run(uri: &str, messages: u64, payload: usize, manual_ack: bool) -> Result<Run, String> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

    let connect = |name: &'static str| async move {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(uri, props)).await {
            Ok(conn) => conn.map_err(err("connect")),
            Err(_) => Err("connect: timed out".to_string()),
        }
    };
    let consuming = connect("tubemail-bench-consumers").await?;
    let publishing = connect("tubemail-bench-publisher").await?;
    let id = run_id();
    let exchange = format!("tubemail.bench.{id}");
    let admin = consuming.create_channel().await.map_err(err("channel"))?;
    let auto_delete = ExchangeDeclareOptions { auto_delete: true, ..Default::default() };
    admin
        .exchange_declare(exchange.as_str().into(), ExchangeKind::Topic, auto_delete, FieldTable::default())
        .await
        .map_err(err("exchange.declare"))?;

    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let mut consumers = Vec::new();
    for ((queue, pattern), want) in FANOUT_BINDINGS.iter().zip(wants) {
        let queue = format!("{exchange}.{queue}");
        let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        admin
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await
            .map_err(err("queue.declare"))?;
        admin
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(err("queue.bind"))?;
        let channel = consuming.create_channel().await.map_err(err("channel"))?;
        if manual_ack {
            channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.map_err(err("basic.qos"))?;
        }
        let options = BasicConsumeOptions { no_ack: !manual_ack, ..Default::default() };
        let consumer = channel
            .basic_consume(queue.as_str().into(), "".into(), options, FieldTable::default())
            .await
            .map_err(err("basic.consume"))?;
        consumers.push(tokio::spawn(async move {
            let mut tally = Tally::new(payload);
            let mut consumer = consumer;
            let mut unacked = 0;
            while tally.count < want {
                let delivery = match consumer.next().await {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(format!("consume: {e}")),
                    None => return Err("consumer cancelled by the broker".to_string()),
                };
                tally.handled(base, &delivery.data);
                if manual_ack {
                    unacked += 1;
                    if unacked >= ACK_EVERY || tally.count == want {
                        let multiple = BasicAckOptions { multiple: true };
                        channel.basic_ack(delivery.delivery_tag, multiple).await.map_err(err("basic.ack"))?;
                        unacked = 0;
                    }
                }
            }
            Ok(tally)
        }));
    }

    let channel = publishing.create_channel().await.map_err(err("channel"))?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(err("confirm.select"))?;
    let start = Instant::now();
    let mut confirmed = 0_u64;
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..messages {
        let body = stamped(base, payload);
        let key = FANOUT_KEYS[(i % 8) as usize];
        let confirm = channel
            .basic_publish(
                exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .map_err(err("basic.publish"))?;
        window.push_back(confirm);
        if window.len() > CONFIRM_WINDOW {
            let oldest = window.pop_front().expect("window is not empty");
            confirmed_ok(oldest).await?;
            confirmed += 1;
        }
    }
    for confirm in window.drain(..) {
        confirmed_ok(confirm).await?;
        confirmed += 1;
    }
    let run = Run::gather(start, confirmed, consumers).await;

    // Clean-up: the queues are exclusive and go with the consuming connection; the exchange is
    // auto-deleted with its last binding, and deleted here as well.
    let cleanup = async {
        let _ = admin.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
        let _ = publishing.close(200, "bench done".into()).await;
        let _ = consuming.close(200, "bench done".into()).await;
    };
    let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await;
    run
}

async fn confirmed_ok(
    confirm: impl Future<Output = lapin::Result<lapin::Confirmation>>,
) -> Result<(), String> {
    match confirm.await.map_err(err("publisher confirm"))? {
        c if c.is_ack() => Ok(()),
        _ => Err("publish nacked by the broker".to_string()),
    }
}

/// The fan-out shape through NATS core (`"nats"`, at-most-once): subjects under a per-run prefix, the
/// bindings mapped by [`nats_subjects`] (so the `contracts.#` queue is two subscriptions, `contracts`
/// and `contracts.>`, read by one subscriber), one connection per subscriber and one for the
/// publisher, subscriptions confirmed by a flush before the first publish. NATS core has no flow
/// control: a subscriber that falls behind loses messages (the client's 65,536-message buffer per
/// subscription fills, or the server cuts a slow consumer). Subscribers stop at their expected count
/// or after [`NATS_QUIET`] without a message, and what never came is reported as `lost`.
pub fn fanout_nats(messages: u64, payload: usize) -> Result<PeerResult, PeerError> {
    let system = "nats";
    reach(system, NATS_ADDR)?;
    block_on(system, async move {
        match tokio::time::timeout(RUN_TIMEOUT, nats_run(messages, payload)).await {
            Ok(Ok(run)) => Ok(run.into_result(system, "at-most-once", messages)),
            Ok(Err(reason)) => Err(PeerError::Failed { system, reason }),
            Err(_) => Err(timed_out(system)),
        }
    })
}

async fn nats_run(messages: u64, payload: usize) -> Result<Run, String> {
    let prefix = format!("tubemail.bench.{}", run_id());
    let publisher = nats_connect().await?;
    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let mut subscribers = Vec::new();
    for ((_, pattern), want) in FANOUT_BINDINGS.iter().zip(wants) {
        let client = nats_connect().await?;
        let mut subs = Vec::new();
        for subject in nats_subjects(pattern).ok_or_else(|| format!("no NATS subject for {pattern}"))? {
            subs.push(client.subscribe(format!("{prefix}.{subject}")).await.map_err(err("subscribe"))?);
        }
        client.flush().await.map_err(err("flush"))?;
        let mut merged = stream::select_all(subs);
        subscribers.push(tokio::spawn(async move {
            let _client = client;
            let mut tally = Tally::new(payload);
            while tally.count < want {
                match tokio::time::timeout(NATS_QUIET, merged.next()).await {
                    Ok(Some(message)) => tally.handled(base, &message.payload),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(tally)
        }));
    }
    let subjects: Vec<async_nats::Subject> =
        FANOUT_KEYS.iter().map(|key| async_nats::Subject::from(format!("{prefix}.{key}"))).collect();
    let start = Instant::now();
    for i in 0..messages {
        let subject = subjects[(i % 8) as usize].clone();
        publisher.publish(subject, stamped(base, payload).into()).await.map_err(err("publish"))?;
    }
    publisher.flush().await.map_err(err("flush"))?;
    Run::gather(start, messages, subscribers).await
}

/// The fan-out shape through NATS JetStream (`"nats-jetstream"`, at-least-once): one memory-storage
/// stream over the run's subjects (unique name per run, deleted afterwards, and its messages expire
/// after ten minutes should a run die before that), one durable pull consumer per binding with
/// explicit acks (the `contracts.#` queue is two consumers, `contracts` and `contracts.>`, as servers
/// before 2.10 take one filter subject each), each subscriber on its own connection pulling batches of
/// [`PREFETCH`] with at most [`JETSTREAM_MAX_ACK_PENDING`] unacked and acking every message; the
/// publisher awaits every publish ack (at most [`CONFIRM_WINDOW`] outstanding).
pub fn fanout_jetstream(messages: u64, payload: usize) -> Result<PeerResult, PeerError> {
    let system = "nats-jetstream";
    reach(system, NATS_ADDR)?;
    block_on(system, async move {
        let id = run_id();
        let stream_name = format!("TUBEMAIL_BENCH_{}", id.replace('-', "_"));
        let prefix = format!("tubemail.bench.{id}");
        let admin = match nats_connect().await {
            Ok(client) => async_nats::jetstream::new(client),
            Err(reason) => return Err(PeerError::Failed { system, reason }),
        };
        let run = tokio::time::timeout(
            RUN_TIMEOUT,
            jetstream_run(&admin, &stream_name, &prefix, messages, payload),
        );
        let run = run.await;
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, admin.delete_stream(&stream_name)).await;
        match run {
            Ok(Ok(run)) => Ok(run.into_result(system, "at-least-once", messages)),
            Ok(Err(reason)) => Err(PeerError::Failed { system, reason }),
            Err(_) => Err(timed_out(system)),
        }
    })
}

async fn jetstream_run(
    admin: &async_nats::jetstream::Context,
    stream_name: &str,
    prefix: &str,
    messages: u64,
    payload: usize,
) -> Result<Run, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    use async_nats::jetstream::stream::{Config, StorageType};

    let config = Config {
        name: stream_name.to_string(),
        subjects: vec![format!("{prefix}.>")],
        storage: StorageType::Memory,
        max_age: Duration::from_secs(600),
        ..Default::default()
    };
    admin.create_stream(config).await.map_err(err("create stream"))?;
    let base = Instant::now();
    let wants = per_queue_expected(messages);
    let mut subscribers = Vec::new();
    for ((queue, pattern), want) in FANOUT_BINDINGS.iter().zip(wants) {
        let js = async_nats::jetstream::new(nats_connect().await?);
        let stream = js.get_stream(stream_name).await.map_err(err("get stream"))?;
        let mut feeds = Vec::new();
        let subjects = nats_subjects(pattern).ok_or_else(|| format!("no NATS subject for {pattern}"))?;
        for (n, subject) in subjects.into_iter().enumerate() {
            let config = pull::Config {
                durable_name: Some(format!("{queue}-{n}")),
                filter_subject: format!("{prefix}.{subject}"),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                max_ack_pending: JETSTREAM_MAX_ACK_PENDING,
                ..Default::default()
            };
            let consumer = stream.create_consumer(config).await.map_err(err("create consumer"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(PREFETCH.into())
                .messages()
                .await
                .map_err(err("pull"))?;
            feeds.push(messages);
        }
        let mut merged = stream::select_all(feeds);
        subscribers.push(tokio::spawn(async move {
            let _js = js;
            let mut tally = Tally::new(payload);
            while tally.count < want {
                let message = match merged.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => return Err(format!("pull: {e}")),
                    None => return Err("consumer stream ended".to_string()),
                };
                tally.handled(base, &message.payload);
                message.ack().await.map_err(|e| format!("ack: {e}"))?;
            }
            Ok(tally)
        }));
    }

    let subjects: Vec<async_nats::Subject> =
        FANOUT_KEYS.iter().map(|key| async_nats::Subject::from(format!("{prefix}.{key}"))).collect();
    let start = Instant::now();
    let mut acked = 0_u64;
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..messages {
        let subject = subjects[(i % 8) as usize].clone();
        let ack = admin.publish(subject, stamped(base, payload).into()).await.map_err(err("publish"))?;
        window.push_back(ack);
        if window.len() > CONFIRM_WINDOW {
            window.pop_front().expect("window is not empty").await.map_err(err("publish ack"))?;
            acked += 1;
        }
    }
    for ack in window.drain(..) {
        ack.await.map_err(err("publish ack"))?;
        acked += 1;
    }
    Run::gather(start, acked, subscribers).await
}

/// What one consumer handled.
pub(crate) struct Tally {
    pub(crate) count: u64,
    last: Option<Instant>,
    latency: Option<Histogram<u64>>,
}

impl Tally {
    pub(crate) fn new(payload: usize) -> Self {
        let latency =
            (payload >= 8).then(|| Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("bounds"));
        Tally { count: 0, last: None, latency }
    }

    pub(crate) fn handled(&mut self, base: Instant, body: &[u8]) {
        let now = Instant::now();
        self.count += 1;
        self.last = Some(now);
        if let (Some(latency), Some(stamp)) = (self.latency.as_mut(), body.get(..8)) {
            let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
            let at = now.duration_since(base).as_nanos() as u64;
            latency.saturating_record(at.saturating_sub(sent).max(1));
        }
    }
}

/// What the consumers of one run handled together.
pub(crate) struct Run {
    published: u64,
    deliveries: u64,
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
}

impl Run {
    pub(crate) async fn gather(
        start: Instant,
        published: u64,
        consumers: Vec<tokio::task::JoinHandle<Result<Tally, String>>>,
    ) -> Result<Run, String> {
        let mut run = Run { published, deliveries: 0, elapsed: Duration::ZERO, latency: None };
        for consumer in consumers {
            let tally = consumer.await.map_err(err("consumer task"))??;
            run.deliveries += tally.count;
            if let Some(last) = tally.last {
                run.elapsed = run.elapsed.max(last.saturating_duration_since(start));
            }
            match (&mut run.latency, tally.latency) {
                (Some(all), Some(one)) => all.add(one).map_err(err("latency histogram"))?,
                (all @ None, one) => *all = one,
                (Some(_), None) => {}
            }
        }
        Ok(run)
    }

    pub(crate) fn into_result(self, system: &'static str, mode: &'static str, messages: u64) -> PeerResult {
        let expected = super::fanout_deliveries(messages);
        let quantile = |q: f64| {
            self.latency.as_ref().filter(|h| !h.is_empty()).map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        PeerResult {
            system,
            mode,
            published: self.published,
            deliveries: self.deliveries,
            expected,
            lost: expected.saturating_sub(self.deliveries),
            elapsed: self.elapsed,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
        }
    }
}

/// Deliveries each queue of [`FANOUT_BINDINGS`] gets from `messages` publishes, by tubemail's own
/// matcher.
pub(crate) fn per_queue_expected(messages: u64) -> [u64; 4] {
    let mut table = RoutingTable::new(TopicKind::Topic);
    for (i, (_, pattern)) in FANOUT_BINDINGS.iter().enumerate() {
        table.bind(QueueId(i as u32), pattern, 1).expect("valid pattern");
    }
    let mut per_key = [[0_u64; 4]; 8];
    let mut out = SmallVec::new();
    for (k, key) in FANOUT_KEYS.iter().enumerate() {
        table.route(key, &mut out);
        for q in &out {
            per_key[k][q.0 as usize] += 1;
        }
    }
    let mut wants = [0_u64; 4];
    for (k, row) in per_key.iter().enumerate() {
        let times = messages / 8 + u64::from((k as u64) < messages % 8);
        for (want, hits) in wants.iter_mut().zip(row) {
            *want += hits * times;
        }
    }
    wants
}

/// A payload of `payload` bytes stamped with the time since `base` in its first 8 bytes.
pub(crate) fn stamped(base: Instant, payload: usize) -> Vec<u8> {
    let mut body = vec![0xAB_u8; payload];
    if let Some(stamp) = body.get_mut(..8) {
        stamp.copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
    }
    body
}

pub(crate) fn run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or_default();
    format!("{}-{clock}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub(crate) async fn nats_connect() -> Result<async_nats::Client, String> {
    let options = async_nats::ConnectOptions::new().connection_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(NATS_ADDR)).await {
        Ok(client) => client.map_err(err("connect")),
        Err(_) => Err("connect: timed out".to_string()),
    }
}

pub(crate) fn reach(system: &'static str, addr: &str) -> Result<(), PeerError> {
    probe(addr, Duration::from_millis(500)).map_err(|reason| PeerError::Unreachable {
        system,
        addr: addr.to_string(),
        reason,
    })
}

pub(crate) fn block_on<F, T>(system: &'static str, run: F) -> Result<T, PeerError>
where
    F: Future<Output = Result<T, PeerError>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tubemail-peer")
        .enable_all()
        .build()
        .map_err(|e| PeerError::Failed { system, reason: format!("tokio runtime: {e}") })?;
    let result = runtime.block_on(run);
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

pub(crate) fn timed_out(system: &'static str) -> PeerError {
    PeerError::Failed { system, reason: format!("no result within {} s", RUN_TIMEOUT.as_secs()) }
}

pub(crate) fn err<E: Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_hash_to_gt_and_keep_star() {
        assert_eq!(nats_subjects("orders.*"), Some(vec!["orders.*".to_string()]));
        assert_eq!(nats_subjects("orders.paid"), Some(vec!["orders.paid".to_string()]));
        assert_eq!(nats_subjects("#"), Some(vec![">".to_string()]));
        assert_eq!(
            nats_subjects("contracts.#"),
            Some(vec!["contracts".to_string(), "contracts.>".to_string()])
        );
        assert_eq!(nats_subjects("a.#.b"), None);
    }

    #[test]
    fn a_closed_port_is_unreachable_and_said_so_in_one_line() {
        assert!(!reachable("127.0.0.1:1"));
        let e = reach("rabbitmq", "127.0.0.1:1").expect_err("nothing listens on port 1");
        let line = e.to_string();
        assert!(line.starts_with("rabbitmq not reachable at 127.0.0.1:1: "), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn per_queue_counts_add_up_to_the_shape() {
        for messages in [0, 1, 7, 8, 9, 2_000, 2_003] {
            assert_eq!(per_queue_expected(messages).iter().sum::<u64>(), crate::fanout_deliveries(messages));
        }
        assert_eq!(per_queue_expected(8), [3, 1, 8, 3]);
    }
}
