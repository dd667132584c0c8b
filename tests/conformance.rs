//! One conformance suite, run against every backend: the in-process broker, RabbitMQ (the
//! `rabbitmq` feature) and NATS JetStream (the `nats` feature). Each scenario is written once
//! against the `Broker` API; where a backend differs, the difference is a test of its own and a row
//! of the table in `docs/BACKENDS.md`.
//!
//! The remote backends are the services on this machine (RabbitMQ on 127.0.0.1:5672, NATS on
//! 127.0.0.1:4222): a test fails, saying so, when one is not running. Every run uses names of its
//! own and deletes its queues at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{Broker, Confirm, DeathReason, Delivery, Outcome, Topology};

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
const NATS: &str = "nats://127.0.0.1:4222";

/// How long a scenario waits for a delivery that must come.
const ARRIVES: Duration = Duration::from_secs(10);
/// How long a scenario waits to be sure a delivery does not come.
const QUIET: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Local,
    #[cfg_attr(not(feature = "rabbitmq"), allow(dead_code))]
    RabbitMq,
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Nats,
}

/// A prefix unique to this test in this run, so that runs never see each other's queues.
fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "tmc_{test}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn reachable(addr: &str, what: &str) {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("{what} is not running on {addr}: start it (the conformance suite runs against it in CI)");
    }
}

/// Starts `toml` (with `{p}` replaced by the run's prefix) on `backend`.
async fn start(backend: Backend, p: &str, toml: &str) -> (Broker, Topology) {
    let topology = Topology::from_toml_str(&toml.replace("{p}", p)).unwrap();
    let builder = Broker::builder(topology.clone());
    let broker = match backend {
        Backend::Local => builder.start().unwrap(),
        Backend::RabbitMq => {
            reachable("127.0.0.1:5672", "RabbitMQ");
            builder.rabbitmq(RABBITMQ).connect().await.unwrap()
        }
        Backend::Nats => {
            reachable("127.0.0.1:4222", "NATS");
            builder.nats(NATS).connect().await.unwrap()
        }
    };
    (broker, topology)
}

/// Shuts down and deletes every queue of the topology on a remote backend (with a broker of its
/// own, since the first has shut down).
async fn finish(backend: Backend, broker: Broker, topology: Topology) {
    broker.shutdown(Duration::from_secs(2)).await;
    if backend == Backend::Local {
        return;
    }
    let cleaner = Broker::connect(topology.clone()).await;
    let cleaner = match (backend, cleaner) {
        (_, Ok(b)) if b.endpoint().is_some() => b,
        (Backend::RabbitMq, _) => {
            Broker::builder(topology.clone()).rabbitmq(RABBITMQ).connect().await.unwrap()
        }
        _ => Broker::builder(topology.clone()).nats(NATS).connect().await.unwrap(),
    };
    for queue in topology.queues.keys() {
        let _ = cleaner.delete_queue(queue).await;
    }
    cleaner.shutdown(Duration::from_secs(1)).await;
    #[cfg(feature = "rabbitmq")]
    if backend == Backend::RabbitMq {
        delete_exchanges(&topology).await;
    }
}

/// Deletes the run's exchanges (the broker API deletes queues, not topics).
#[cfg(feature = "rabbitmq")]
async fn delete_exchanges(topology: &Topology) {
    use lapin::options::ExchangeDeleteOptions;
    let props = lapin::ConnectionProperties::default();
    let conn = lapin::Connection::connect(RABBITMQ, props).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    for (topic, spec) in &topology.topics {
        let _ = channel.exchange_delete(topic.as_str().into(), ExchangeDeleteOptions::default()).await;
        if spec.alternate.is_some() {
            let alternate = format!("tubemail.alternate.{topic}");
            let _ =
                channel.exchange_delete(alternate.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
    }
    let _ = conn.close(200, "clean".into()).await;
}

/// What a handler saw.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    value: u64,
    delivery_count: u32,
    redelivered: bool,
    deaths: Vec<(String, DeathReason)>,
}

/// Subscribes a handler that records each delivery and answers with `outcome(delivery)`.
async fn record(
    broker: &Broker,
    queue: &str,
    mut outcome: impl FnMut(&Seen) -> Outcome + Send + 'static,
) -> (tubemail::Subscription, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = broker
        .subscribe_sync(queue, move |d: Delivery<u64>| {
            let seen = Seen {
                key: d.key().to_owned(),
                value: *d,
                delivery_count: d.delivery_count(),
                redelivered: d.redelivered(),
                deaths: d.deaths().iter().map(|x| (x.queue.to_string(), x.reason)).collect(),
            };
            let out = outcome(&seen);
            let _ = tx.send(seen);
            out
        })
        .await
        .unwrap();
    (sub, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    match tokio::time::timeout(ARRIVES, rx.recv()).await {
        Ok(Some(seen)) => seen,
        _ => panic!("{what}: no delivery within {ARRIVES:?}"),
    }
}

async fn quiet(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) {
    if let Ok(Some(seen)) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("{what}: an unexpected delivery {seen:?}");
    }
}

/// RabbitMQ's own topic-exchange cases (rabbit_exchange_type_topic tests), as (pattern, key,
/// matches). `#` in the middle of a pattern is left to [`middle_hash`], since NATS cannot express it.
const TOPIC_CASES: &[(&str, &str, bool)] = &[
    ("a.b.c", "a.b.c", true),
    ("a.*.c", "a.b.c", true),
    ("a.*.c", "a.c", false),
    ("a.b.*", "a.b.c", true),
    ("a.b.*", "a.b", false),
    ("a.b.*", "a.b.c.d", false),
    ("#", "a.b.c", true),
    ("#", "a", true),
    ("a.#", "a.b.c", true),
    ("a.#", "a", true),
    ("a.#", "b.a", false),
    ("*.b.c", "a.b.c", true),
    ("*.*", "a.b", true),
    ("*.*", "a.b.c", false),
    ("*", "a", true),
    ("*.#", "a", true),
    ("*.#", "a.b.c", true),
];

async fn routing_matrix(backend: Backend) {
    let p = prefix("routing");
    let mut toml = String::from("[topics.{p}_t]\nkind = \"topic\"\n");
    for (i, (pattern, _, _)) in TOPIC_CASES.iter().enumerate() {
        toml += &format!(
            "[queues.{{p}}_q{i}]\n[[bindings]]\ntopic = \"{{p}}_t\"\nqueue = \"{{p}}_q{i}\"\nkey = \"{pattern}\"\n"
        );
    }
    let (broker, topology) = start(backend, &p, &toml).await;
    // Every key is published once; queue i must receive exactly the keys its pattern matches.
    for (j, (_, key, _)) in TOPIC_CASES.iter().enumerate() {
        broker.publish(&format!("{p}_t"), key, j as u64).await.unwrap();
    }
    for (i, (pattern, key, matches)) in TOPIC_CASES.iter().enumerate() {
        assert_eq!(tubemail::routing::pattern_matches(pattern, key), *matches, "the case's own verdict");
        let want: Vec<u64> = (0..TOPIC_CASES.len())
            .filter(|&j| tubemail::routing::pattern_matches(pattern, TOPIC_CASES[j].1))
            .map(|j| j as u64)
            .collect();
        let (sub, mut rx) = record(&broker, &format!("{p}_q{i}"), |_| Outcome::Ack).await;
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next(&mut rx, &format!("pattern {pattern:?}")).await.value);
        }
        quiet(&mut rx, &format!("pattern {pattern:?}: nothing more")).await;
        got.sort_unstable();
        assert_eq!(got, want, "pattern {pattern:?}");
        sub.unsubscribe(Duration::from_secs(1)).await;
    }
    finish(backend, broker, topology).await;
}

async fn confirms_and_alternate(backend: Backend) {
    let p = prefix("confirms");
    let toml = r#"
        [topics.{p}_plain]
        kind = "direct"
        [topics.{p}_alt]
        kind = "direct"
        alternate = "{p}_unrouted"
        [queues.{p}_a]
        [queues.{p}_b]
        [queues.{p}_unrouted]
        [[bindings]]
        topic = "{p}_plain"
        queue = "{p}_a"
        key = "k"
        [[bindings]]
        topic = "{p}_plain"
        queue = "{p}_b"
        key = "k"
        [[bindings]]
        topic = "{p}_alt"
        queue = "{p}_a"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let plain = format!("{p}_plain");
    assert_eq!(broker.publish(&plain, "k", 1_u64).await.unwrap(), Confirm::Routed { queues: 2 });
    assert_eq!(
        broker.publish(&plain, "other", 2_u64).await.unwrap(),
        Confirm::Unroutable { alternate: None }
    );
    let alt = broker.publish(&format!("{p}_alt"), "other", 3_u64).await.unwrap();
    assert_eq!(alt, Confirm::Unroutable { alternate: Some(format!("{p}_unrouted")) });
    let (_sub, mut rx) = record(&broker, &format!("{p}_unrouted"), |_| Outcome::Ack).await;
    assert_eq!(next(&mut rx, "the alternate queue").await.value, 3);
    let stats = broker.stats().await;
    let t = &stats.topics[&plain];
    assert_eq!((t.published, t.routed_publishes, t.unroutable), (2, 1, 1));
    finish(backend, broker, topology).await;
}

async fn ack_nack_reject(backend: Backend) {
    let p = prefix("settle");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_work]
        delivery = "at-least-once"
        dead_letter = "{p}_dead"
        [queues.{p}_dead]
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    // The first delivery is nacked with requeue, the second rejected, the third acked.
    let (_sub, mut rx) =
        record(&broker, &format!("{p}_work"), |seen| match (seen.value, seen.delivery_count) {
            (1, 1) => Outcome::Nack { requeue: true },
            (2, _) => Outcome::Reject,
            _ => Outcome::Ack,
        })
        .await;
    let (_dead, mut dead_rx) = record(&broker, &format!("{p}_dead"), |_| Outcome::Ack).await;
    broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
    let first = next(&mut rx, "first delivery").await;
    assert_eq!((first.value, first.delivery_count, first.redelivered), (1, 1, false));
    let again = next(&mut rx, "redelivery after nack").await;
    assert_eq!((again.value, again.delivery_count, again.redelivered), (1, 2, true));
    broker.publish(&format!("{p}_t"), "k", 2_u64).await.unwrap();
    assert_eq!(next(&mut rx, "the rejected one").await.value, 2);
    let dead = next(&mut dead_rx, "the dead letter").await;
    assert_eq!(dead.value, 2);
    assert_eq!(dead.key, "k", "a dead letter keeps its routing key");
    assert_eq!(dead.deaths.first(), Some(&(format!("{p}_work"), DeathReason::Rejected)));
    broker.idle().await;
    let stats = broker.stats().await;
    let work = &stats.queues[&format!("{p}_work")];
    assert_eq!((work.acked, work.nacked, work.dead_lettered), (1, 2, 1), "{work:?}");
    finish(backend, broker, topology).await;
}

async fn delivery_limit(backend: Backend) {
    let p = prefix("limit");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_work]
        delivery = "at-least-once"
        delivery_limit = 2
        dead_letter = "{p}_dead"
        [queues.{p}_dead]
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (_sub, mut rx) = record(&broker, &format!("{p}_work"), |_| Outcome::Nack { requeue: true }).await;
    let (_dead, mut dead_rx) = record(&broker, &format!("{p}_dead"), |_| Outcome::Ack).await;
    broker.publish(&format!("{p}_t"), "k", 7_u64).await.unwrap();
    assert_eq!(next(&mut rx, "delivery 1").await.delivery_count, 1);
    assert_eq!(next(&mut rx, "delivery 2").await.delivery_count, 2);
    let dead = next(&mut dead_rx, "dead letter at the limit").await;
    assert_eq!(dead.deaths.first().map(|d| d.1), Some(DeathReason::DeliveryLimit));
    quiet(&mut rx, "no third delivery with a limit of 2").await;
    finish(backend, broker, topology).await;
}

async fn overflow(backend: Backend) {
    let p = prefix("overflow");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_head]
        depth_max = 2
        overflow = "drop-head"
        [queues.{p}_refuse]
        depth_max = 2
        overflow = "reject-publish"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_head"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_refuse"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let t = format!("{p}_t");
    for i in 1..=2_u64 {
        assert_eq!(broker.publish(&t, "k", i).await.unwrap(), Confirm::Routed { queues: 2 });
    }
    let third = broker.publish(&t, "k", 3_u64).await.unwrap();
    assert_eq!(third, Confirm::Refused { accepted: 1, queues: vec![format!("{p}_refuse")] });
    let (_head, mut head_rx) = record(&broker, &format!("{p}_head"), |_| Outcome::Ack).await;
    let (_refuse, mut refuse_rx) = record(&broker, &format!("{p}_refuse"), |_| Outcome::Ack).await;
    let head: Vec<u64> =
        vec![next(&mut head_rx, "head 1").await.value, next(&mut head_rx, "head 2").await.value];
    assert_eq!(head, [2, 3], "drop-head dropped the oldest");
    let refuse =
        vec![next(&mut refuse_rx, "refuse 1").await.value, next(&mut refuse_rx, "refuse 2").await.value];
    assert_eq!(refuse, [1, 2], "reject-publish kept the first two");
    finish(backend, broker, topology).await;
}

async fn ttl_dead_letters(backend: Backend) {
    let p = prefix("ttl");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_short]
        message_ttl_ms = 100
        dead_letter = "{p}_dead"
        [queues.{p}_dead]
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_short"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    broker.publish(&format!("{p}_t"), "k", 5_u64).await.unwrap();
    let (_dead, mut dead_rx) = record(&broker, &format!("{p}_dead"), |_| Outcome::Ack).await;
    let dead = next(&mut dead_rx, "the expired message").await;
    assert_eq!(dead.deaths.first().map(|d| d.1), Some(DeathReason::Expired));
    finish(backend, broker, topology).await;
}

async fn single_active_consumer(backend: Backend) {
    let p = prefix("sac");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_q]
        delivery = "at-least-once"
        single_active_consumer = true
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_q"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (first, mut first_rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Ack).await;
    let (_second, mut second_rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Ack).await;
    for i in 0..4_u64 {
        broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
    }
    for i in 0..4 {
        assert_eq!(next(&mut first_rx, "the active consumer").await.value, i);
    }
    quiet(&mut second_rx, "the waiting consumer").await;
    // The active one leaves: the other takes over.
    first.unsubscribe(Duration::from_secs(1)).await;
    broker.publish(&format!("{p}_t"), "k", 9_u64).await.unwrap();
    assert_eq!(next(&mut second_rx, "the consumer that took over").await.value, 9);
    finish(backend, broker, topology).await;
}

async fn consumer_crash(backend: Backend) {
    let p = prefix("crash");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_alo]
        delivery = "at-least-once"
        [queues.{p}_amo]
        delivery = "at-most-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_alo"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_amo"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let crash_first = |seen: &Seen| {
        if seen.delivery_count == 1 {
            panic!("the handler crashes on a first delivery");
        }
        Outcome::Ack
    };
    let (_alo, mut alo_rx) = record_crashing(&broker, &format!("{p}_alo"), crash_first).await;
    let (_amo, mut amo_rx) = record_crashing(&broker, &format!("{p}_amo"), crash_first).await;
    broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
    let again = next(&mut alo_rx, "at-least-once: redelivered after the crash").await;
    assert_eq!((again.value, again.delivery_count), (1, 2));
    quiet(&mut amo_rx, "at-most-once: lost with the crash").await;
    finish(backend, broker, topology).await;
}

/// As [`record`], but the delivery is reported before the handler decides (and may panic).
async fn record_crashing(
    broker: &Broker,
    queue: &str,
    outcome: impl Fn(&Seen) -> Outcome + Send + 'static,
) -> (tubemail::Subscription, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = broker
        .subscribe_sync(queue, move |d: Delivery<u64>| {
            let seen = Seen {
                key: d.key().to_owned(),
                value: *d,
                delivery_count: d.delivery_count(),
                redelivered: d.redelivered(),
                deaths: Vec::new(),
            };
            if seen.delivery_count > 1 {
                let _ = tx.send(seen.clone());
            }
            outcome(&seen)
        })
        .await
        .unwrap();
    (sub, rx)
}

/// A handler that asks for a retry after a delay gets the message again no sooner than that, its
/// delivery count raised (in process: the queue's schedule; NATS: a delayed `-NAK`; RabbitMQ: the
/// delivery held, then requeued).
async fn retry_after_a_delay(backend: Backend) {
    let p = prefix("retry");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_work]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
        key = "k"
    "#;
    const AFTER: Duration = Duration::from_millis(1500);
    let (broker, topology) = start(backend, &p, toml).await;
    let (_sub, mut rx) = record(&broker, &format!("{p}_work"), |seen| match seen.delivery_count {
        1 => Outcome::Retry { after: AFTER },
        _ => Outcome::Ack,
    })
    .await;
    broker.publish(&format!("{p}_t"), "k", 4_u64).await.unwrap();
    let first = next(&mut rx, "first delivery").await;
    let handled = std::time::Instant::now();
    assert_eq!((first.value, first.delivery_count), (4, 1));
    let again = next(&mut rx, "the retry").await;
    let waited = handled.elapsed();
    assert_eq!((again.value, again.delivery_count, again.redelivered), (4, 2, true));
    // The first handler's return and the retry's arrival are a few milliseconds from the clock reads.
    assert!(waited >= AFTER - Duration::from_millis(50), "retried after {waited:?}");
    broker.idle().await;
    let work = broker.stats().await.queues[&format!("{p}_work")].clone();
    assert_eq!((work.acked, work.nacked), (1, 1), "{work:?}");
    finish(backend, broker, topology).await;
}

/// A delayed publish: in process, scheduled and delivered no sooner than its delay; on a remote
/// backend, refused with a typed error (RabbitMQ needs a plugin, NATS 2.9 has no scheduled messages).
async fn delayed_publish(backend: Backend) {
    let p = prefix("delayed");
    let toml = r#"
        [topics.{p}_t]
        kind = "direct"
        [queues.{p}_work]
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
        key = "k"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let delay = Duration::from_millis(800);
    let published = std::time::Instant::now();
    match (backend, broker.publish_in(&format!("{p}_t"), "k", 5_u64, delay).await) {
        (Backend::Local, Ok(confirm)) => {
            assert_eq!(confirm, Confirm::Routed { queues: 1 });
            let (_sub, mut rx) = record(&broker, &format!("{p}_work"), |_| Outcome::Ack).await;
            assert_eq!(next(&mut rx, "the delayed message").await.value, 5);
            assert!(published.elapsed() >= delay, "delivered after {:?}", published.elapsed());
        }
        (Backend::Local, Err(e)) => panic!("a delayed publish failed in process: {e}"),
        (_, Err(tubemail::PublishError::Remote(tubemail::remote::RemoteError::Unsupported { what, .. }))) => {
            assert_eq!(what, "delay a publish");
        }
        (_, other) => panic!("a remote backend took a delayed publish: {other:?}"),
    }
    finish(backend, broker, topology).await;
}

/// Two queues bound to one topic dead-letter their copies of one message into one dead-letter
/// queue: both copies arrive, each with its own death (no deduplication across copies).
async fn dead_letters_from_two_queues(backend: Backend) {
    let p = prefix("twodead");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_a]
        delivery = "at-least-once"
        dead_letter = "{p}_dead"
        [queues.{p}_b]
        delivery = "at-least-once"
        dead_letter = "{p}_dead"
        [queues.{p}_dead]
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_a"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_b"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (_a, _) = record(&broker, &format!("{p}_a"), |_| Outcome::Reject).await;
    let (_b, _) = record(&broker, &format!("{p}_b"), |_| Outcome::Reject).await;
    let (_dead, mut dead_rx) = record(&broker, &format!("{p}_dead"), |_| Outcome::Ack).await;
    assert_eq!(broker.publish(&format!("{p}_t"), "k", 6_u64).await.unwrap(), Confirm::Routed { queues: 2 });
    let mut from: Vec<String> = Vec::new();
    for _ in 0..2 {
        let dead = next(&mut dead_rx, "a dead letter from each queue").await;
        assert_eq!(dead.value, 6);
        from.push(dead.deaths.first().expect("a death").0.clone());
    }
    from.sort();
    assert_eq!(from, [format!("{p}_a"), format!("{p}_b")]);
    quiet(&mut dead_rx, "nothing more").await;
    finish(backend, broker, topology).await;
}

/// A subscriber's prefetch bounds what it holds unsettled, deferred deliveries included: with a
/// prefetch of 2 and a handler that defers, the third message waits until one is acked.
async fn prefetch_bounds_deferred(backend: Backend) {
    let p = prefix("prefetch");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_work]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let options = tubemail::SubscribeOptions::default().prefetch(2);
    broker
        .subscribe_with(&format!("{p}_work"), options, move |d: Delivery<u64>| {
            tx.send((*d, d.acker())).unwrap();
            async { Outcome::Defer }
        })
        .await
        .unwrap();
    for i in 0..5_u64 {
        broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
    }
    async fn arrives(rx: &mut mpsc::UnboundedReceiver<(u64, tubemail::Acker)>) -> (u64, tubemail::Acker) {
        let next = tokio::time::timeout(ARRIVES, rx.recv()).await;
        next.expect("a delivery within the prefetch").expect("the handler runs")
    }
    let (first, acker) = arrives(&mut rx).await;
    let (second, _) = arrives(&mut rx).await;
    assert_eq!((first, second), (0, 1));
    if let Ok(Some((v, _))) = tokio::time::timeout(QUIET, rx.recv()).await {
        panic!("a third delivery ({v}) past a prefetch of 2, with both unsettled");
    }
    acker.ack(false).await.unwrap();
    let (third, _) = arrives(&mut rx).await;
    assert_eq!(third, 2, "room for one more once one is acked");
    finish(backend, broker, topology).await;
}

/// Deliveries settled later through their `Acker` (after `Defer`) are counted as outcomes are: an
/// ack `acked`; a reject `nacked` and, without a dead-letter queue, `dropped.rejected`.
async fn acker_settlements_are_counted(backend: Backend) {
    let p = prefix("ackercount");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_work]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sub = broker
        .subscribe(&format!("{p}_work"), move |d: Delivery<u64>| {
            tx.send((*d, d.acker())).unwrap();
            async { Outcome::Defer }
        })
        .await
        .unwrap();
    for i in 0..2_u64 {
        broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
    }
    let mut held = std::collections::BTreeMap::new();
    while held.len() < 2 {
        let next = tokio::time::timeout(ARRIVES, rx.recv()).await;
        let (v, acker) = next.expect("both deliveries").expect("the handler runs");
        held.insert(v, acker);
    }
    held[&0].ack(false).await.unwrap();
    held[&1].reject().await.unwrap();
    let q = broker.stats().await.queues[&format!("{p}_work")].clone();
    assert_eq!((q.acked, q.nacked, q.dropped.rejected), (1, 1, 1), "{q:?}");
    sub.unsubscribe(Duration::from_secs(1)).await;
    finish(backend, broker, topology).await;
}

/// Unsubscribing gives back what the subscriber held unsettled: the report counts it requeued, and
/// the next subscriber gets it, redelivered.
async fn unsubscribe_gives_back(backend: Backend) {
    let p = prefix("giveback");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_work]
        delivery = "at-least-once"
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_work"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (first, mut rx) = record(&broker, &format!("{p}_work"), |_| Outcome::Defer).await;
    for i in 0..2_u64 {
        broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
    }
    for _ in 0..2 {
        next(&mut rx, "a deferred delivery").await;
    }
    let report = first.unsubscribe(Duration::from_millis(300)).await;
    assert_eq!(report.requeued, 2, "{report:?}");
    let (_second, mut rx) = record(&broker, &format!("{p}_work"), |_| Outcome::Ack).await;
    let mut again = [next(&mut rx, "given back").await, next(&mut rx, "given back").await];
    again.sort_by_key(|s| s.value);
    assert_eq!(again.iter().map(|s| (s.value, s.redelivered)).collect::<Vec<_>>(), [(0, true), (1, true)]);
    finish(backend, broker, topology).await;
}

macro_rules! conformance {
    (everywhere: [$($scenario:ident),* $(,)?], not_on_nats: [$($no_nats:ident),* $(,)?] $(,)?) => {
        mod local {
            use super::*;
            $(#[actix::test] async fn $scenario() { super::$scenario(Backend::Local).await })*
            $(#[actix::test] async fn $no_nats() { super::$no_nats(Backend::Local).await })*
        }
        #[cfg(feature = "rabbitmq")]
        mod rabbitmq {
            use super::*;
            $(#[actix::test] async fn $scenario() { super::$scenario(Backend::RabbitMq).await })*
            $(#[actix::test] async fn $no_nats() { super::$no_nats(Backend::RabbitMq).await })*
        }
        /// What NATS does instead of the scenarios it leaves out is in `nats_differences`.
        #[cfg(feature = "nats")]
        mod nats {
            use super::*;
            $(#[actix::test] async fn $scenario() { super::$scenario(Backend::Nats).await })*
        }
    };
}

conformance!(
    everywhere: [
        routing_matrix,
        confirms_and_alternate,
        ack_nack_reject,
        delivery_limit,
        overflow,
        consumer_crash,
        ack_timeout,
        retry_after_a_delay,
        delayed_publish,
        dead_letters_from_two_queues,
        prefetch_bounds_deferred,
        acker_settlements_are_counted,
        unsubscribe_gives_back,
    ],
    not_on_nats: [ttl_dead_letters, single_active_consumer]
);

/// Where RabbitMQ differs from the in-process broker: each difference of `docs/BACKENDS.md`, shown.
#[cfg(feature = "rabbitmq")]
mod rabbitmq_differences {
    use super::*;

    /// A `hash` topic is RabbitMQ's consistent-hash exchange, a plugin: with it enabled, each key goes
    /// to exactly one queue; without it, connecting fails with an error that says how to enable it.
    #[actix::test]
    async fn a_hash_topic_needs_the_consistent_hash_plugin() {
        let p = prefix("hash");
        let toml = r#"
            [topics.{p}_t]
            kind = "hash"
            [queues.{p}_a]
            [queues.{p}_b]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_a"
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_b"
        "#;
        reachable("127.0.0.1:5672", "RabbitMQ");
        let topology = Topology::from_toml_str(&toml.replace("{p}", &p)).unwrap();
        match Broker::builder(topology.clone()).rabbitmq(RABBITMQ).connect().await {
            Err(e) => {
                let text = e.to_string();
                assert!(text.contains("rabbitmq_consistent_hash_exchange"), "{text}");
                // The queues were declared before the exchange failed: clean them.
                let mut plain = topology.clone();
                plain.topics.clear();
                plain.bindings.clear();
                let cleaner = Broker::builder(plain.clone()).rabbitmq(RABBITMQ).connect().await.unwrap();
                for q in plain.queues.keys() {
                    cleaner.delete_queue(q).await.unwrap();
                }
            }
            Ok(broker) => {
                for i in 0..20_u64 {
                    let confirm = broker.publish(&format!("{p}_t"), &format!("k{i}"), i).await.unwrap();
                    assert_eq!(confirm, Confirm::Routed { queues: 1 });
                }
                broker.idle().await;
                let stats = broker.stats().await;
                let (a, b) = (stats.queues[&format!("{p}_a")].ready, stats.queues[&format!("{p}_b")].ready);
                assert_eq!(a + b, 20, "each key went to exactly one queue");
                finish(Backend::RabbitMq, broker, topology).await;
            }
        }
    }

    /// `overflow = "block"` has no server-side limit on RabbitMQ (it has no blocking overflow): the
    /// publisher is slowed by the client's window of unconfirmed publishes and RabbitMQ's own flow
    /// control, not by `depth_max`.
    #[actix::test]
    async fn a_block_queue_is_not_bounded_by_depth_max() {
        let p = prefix("block");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            depth_max = 2
            overflow = "block"
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        for i in 0..5_u64 {
            let confirm = tokio::time::timeout(ARRIVES, broker.publish(&format!("{p}_t"), "k", i)).await;
            assert_eq!(confirm.expect("no wait for room").unwrap(), Confirm::Routed { queues: 1 });
        }
        let stats = broker.stats().await;
        assert_eq!(stats.queues[&format!("{p}_q")].ready, 5, "RabbitMQ holds all five");
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// `try_publish` cannot wait for a remote confirm: it answers `Sent`, and the message arrives.
    #[actix::test]
    async fn try_publish_answers_sent() {
        let p = prefix("try");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        assert_eq!(broker.try_publish(&format!("{p}_t"), "k", 4_u64).unwrap(), Confirm::Sent);
        let (_sub, mut rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Ack).await;
        assert_eq!(next(&mut rx, "the message sent without waiting").await.value, 4);
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// At most once on RabbitMQ is auto-ack: RabbitMQ sends an auto-ack consumer everything ready
    /// (no prefetch bound), and the client buffers it. What a subscriber still buffers when it leaves
    /// was acked as it was sent: lost, and counted (the report's `lost`, the queue's
    /// `dropped.lost_at_most_once`); every message is handled, lost, or still in the queue.
    #[actix::test]
    async fn at_most_once_deliveries_buffered_when_the_subscriber_leaves_are_counted_lost() {
        let p = prefix("amolost");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-most-once"
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let queue = format!("{p}_q");
        for i in 0..200_u64 {
            broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
        }
        let handled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = handled.clone();
        let sub = broker
            .subscribe(&queue, move |_: Delivery<u64>| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Ack
                }
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = sub.unsubscribe(Duration::from_secs(2)).await;
        let handled = handled.load(std::sync::atomic::Ordering::SeqCst);
        let q = broker.stats().await.queues[&queue].clone();
        assert!(report.lost > 0, "a slow subscriber left with deliveries buffered: {report:?}");
        assert_eq!(q.dropped.lost_at_most_once, report.lost);
        assert_eq!(handled + report.lost + q.ready, 200, "handled {handled}, {report:?}, {q:?}");
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// A subscription whose channel RabbitMQ closes for an error of its own (here a nack of a delivery
    /// an earlier ack of `multiple` already settled: `PRECONDITION_FAILED`) consumes anew on a new
    /// channel, and the next message arrives. (It once ended for good, with only a warning.)
    #[actix::test]
    async fn a_subscription_whose_channel_failed_consumes_anew() {
        let p = prefix("chanfail");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-least-once"
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _sub = broker
            .subscribe(&format!("{p}_q"), move |d: Delivery<u64>| {
                let first = *d == 0 && !d.redelivered();
                tx.send((*d, d.acker())).unwrap();
                async move {
                    match first {
                        // Held for a second, then nacked: by then the ack below settled it.
                        true => Outcome::Retry { after: Duration::from_secs(1) },
                        false => Outcome::Defer,
                    }
                }
            })
            .await
            .unwrap();
        broker.publish(&format!("{p}_t"), "k", 0_u64).await.unwrap();
        broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
        let mut acker = None;
        while acker.is_none() {
            let (v, a) = tokio::time::timeout(ARRIVES, rx.recv()).await.expect("both arrive").unwrap();
            if v == 1 {
                acker = Some(a);
            }
        }
        // Covers message 0 on the server too: the held nack then names an unknown tag.
        acker.unwrap().ack(true).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.publish(&format!("{p}_t"), "k", 2_u64).await.unwrap();
        loop {
            let next = tokio::time::timeout(ARRIVES, rx.recv()).await;
            let (v, _) = next.expect("a message after the channel's failure arrives").unwrap();
            if v == 2 {
                break;
            }
        }
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// A delivery held for a retry's delay (RabbitMQ has no delayed requeue) is given back when its
    /// subscriber leaves: counted `requeued`, and its hold ends with the subscription.
    #[actix::test]
    async fn a_delivery_held_for_a_retry_is_given_back_when_the_subscriber_leaves() {
        let p = prefix("retryleave");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-least-once"
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let (sub, mut rx) =
            record(&broker, &format!("{p}_q"), |_| Outcome::Retry { after: Duration::from_secs(600) }).await;
        broker.publish(&format!("{p}_t"), "k", 7_u64).await.unwrap();
        assert_eq!(next(&mut rx, "the delivery").await.value, 7);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let report = sub.unsubscribe(Duration::from_secs(2)).await;
        assert_eq!(report.requeued, 1, "{report:?}");
        let (_again, mut rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Ack).await;
        let seen = next(&mut rx, "the held delivery, given back").await;
        assert!(seen.value == 7 && seen.redelivered, "{seen:?}");
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// A burst of `try_publish` that fills the window of unconfirmed publishes: each takes one place
    /// and its message is sent on it, so the window frees as confirms come, a `publish` after the
    /// burst is confirmed, and every message arrives. (Each spawned send once waited for a second
    /// place: a full window was then held by sends that could never start, and stayed full.)
    #[actix::test]
    async fn a_burst_of_try_publish_that_fills_the_window_does_not_stall_it() {
        let p = prefix("tryburst");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let topic = format!("{p}_t");
        let mut sent = 0_u64;
        // Spawned sends do not run before this loop yields (one thread): the window fills.
        while let Ok(confirm) = broker.try_publish(&topic, "k", sent) {
            assert_eq!(confirm, Confirm::Sent);
            sent += 1;
        }
        assert_eq!(sent, tubemail::remote::PUBLISH_WINDOW_MAX as u64, "the window bounds the burst");
        let confirm = tokio::time::timeout(ARRIVES, broker.publish(&topic, "k", sent)).await;
        assert_eq!(confirm.expect("the window frees").unwrap(), Confirm::Routed { queues: 1 });
        let (_sub, mut rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Ack).await;
        let mut values = Vec::new();
        for _ in 0..=sent {
            values.push(next(&mut rx, "every message of the burst and the publish after it").await.value);
        }
        values.sort_unstable();
        assert_eq!(values, (0..=sent).collect::<Vec<_>>());
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// A death's time is RabbitMQ's wall clock (milliseconds since the Unix epoch), where the
    /// in-process broker counts from its own start.
    #[actix::test]
    async fn a_death_time_is_the_wall_clock() {
        let p = prefix("deathtime");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-least-once"
            dead_letter = "{p}_dead"
            [queues.{p}_dead]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let (_sub, _rx) = record(&broker, &format!("{p}_q"), |_| Outcome::Reject).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        broker
            .subscribe_sync(&format!("{p}_dead"), move |d: Delivery<u64>| {
                let _ = tx.send(d.deaths().first().map(|d| d.at_ms));
                Outcome::Ack
            })
            .await
            .unwrap();
        broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
        let at_ms = tokio::time::timeout(ARRIVES, rx.recv()).await.unwrap().unwrap().unwrap();
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(now_ms.abs_diff(at_ms) < 120_000, "death at {at_ms} ms, now {now_ms} ms since the epoch");
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// A classic queue (here an `auto_delete` one) has no delivery limit on RabbitMQ: a message
    /// nacked with requeue comes a third time where the in-process queue would dead-letter it; and
    /// it only flags a redelivery, so `delivery_count` is 2 for every one.
    #[actix::test]
    async fn a_classic_queue_has_no_delivery_limit() {
        let p = prefix("classiclimit");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-least-once"
            auto_delete = true
            delivery_limit = 2
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        let mut n = 0;
        let (sub, mut rx) = record(&broker, &format!("{p}_q"), move |_| {
            n += 1;
            if n <= 2 {
                Outcome::Nack { requeue: true }
            } else {
                Outcome::Ack
            }
        })
        .await;
        broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
        // Nor does a classic queue count deliveries: every redelivery says 2.
        let counts = [
            next(&mut rx, "delivery 1").await.delivery_count,
            next(&mut rx, "delivery 2").await.delivery_count,
            next(&mut rx, "delivery 3, past a limit of 2").await.delivery_count,
        ];
        assert_eq!(counts, [1, 2, 2]);
        sub.unsubscribe(Duration::from_secs(1)).await;
        finish(Backend::RabbitMq, broker, topology).await;
    }

    /// The remote broker keeps the books: `ready` is the remote queue's depth, `enqueued` is not
    /// known here (0), so `conserved()` does not apply.
    #[actix::test]
    async fn stats_ready_is_the_remote_depth() {
        let p = prefix("stats");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::RabbitMq, &p, toml).await;
        for i in 0..3_u64 {
            broker.publish(&format!("{p}_t"), "k", i).await.unwrap();
        }
        let q = broker.stats().await.queues[&format!("{p}_q")].clone();
        assert_eq!((q.ready, q.enqueued, q.delivered), (3, 0, 0), "{q:?}");
        finish(Backend::RabbitMq, broker, topology).await;
    }
}

/// A deferred delivery left unsettled past the queue's `ack_timeout` comes again.
async fn ack_timeout(backend: Backend) {
    let p = prefix("acktimeout");
    let toml = r#"
        [topics.{p}_t]
        kind = "fanout"
        [queues.{p}_q]
        delivery = "at-least-once"
        ack_timeout_ms = 300
        [[bindings]]
        topic = "{p}_t"
        queue = "{p}_q"
    "#;
    let (broker, topology) = start(backend, &p, toml).await;
    let (_sub, mut rx) = record(&broker, &format!("{p}_q"), |seen| {
        if seen.delivery_count == 1 {
            Outcome::Defer
        } else {
            Outcome::Ack
        }
    })
    .await;
    broker.publish(&format!("{p}_t"), "k", 3_u64).await.unwrap();
    assert_eq!(next(&mut rx, "the deferred delivery").await.delivery_count, 1);
    let again = next(&mut rx, "redelivered after the ack timeout").await;
    assert_eq!((again.value, again.delivery_count), (3, 2));
    finish(backend, broker, topology).await;
}

/// Where NATS JetStream differs from the in-process broker: each difference of `docs/BACKENDS.md`.
#[cfg(feature = "nats")]
mod nats_differences {
    use super::*;

    /// JetStream 2.9 has no single active consumer: a topology that asks for one is refused at
    /// connect, naming the queue and the setting.
    #[actix::test]
    async fn single_active_consumer_is_refused() {
        let p = prefix("natssac");
        reachable("127.0.0.1:4222", "NATS");
        let toml = format!("[queues.{p}_q]\nsingle_active_consumer = true\n");
        let topology = Topology::from_toml_str(&toml).unwrap();
        let err = Broker::builder(topology).nats(NATS).connect().await.expect_err("refused");
        let text = err.to_string();
        assert!(text.contains("single_active_consumer") && text.contains(&format!("{p}_q")), "{text}");
    }

    /// A message whose TTL runs out is removed by JetStream (`max_age`) without a dead letter.
    #[actix::test]
    async fn an_expired_message_is_not_dead_lettered() {
        let p = prefix("natsttl");
        let toml = r#"
            [topics.{p}_t]
            kind = "direct"
            [queues.{p}_short]
            message_ttl_ms = 200
            dead_letter = "{p}_dead"
            [queues.{p}_dead]
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_short"
            key = "k"
        "#;
        let (broker, topology) = start(Backend::Nats, &p, toml).await;
        broker.publish(&format!("{p}_t"), "k", 5_u64).await.unwrap();
        let (_dead, mut dead_rx) = record(&broker, &format!("{p}_dead"), |_| Outcome::Ack).await;
        // Well past the TTL (JetStream expires on a timer of its own).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        quiet(&mut dead_rx, "no dead letter for an expired message").await;
        let stats = broker.stats().await;
        assert_eq!(stats.queues[&format!("{p}_short")].ready, 0, "the expired message is gone");
        finish(Backend::Nats, broker, topology).await;
    }

    /// A handler that runs past the ack timeout keeps its message: the client sends JetStream a
    /// progress ack twice per `AckWait`, so it is not redelivered meanwhile (in process, the ack
    /// deadline redelivers it).
    #[actix::test]
    async fn a_long_handler_keeps_its_message() {
        let p = prefix("natslong");
        let toml = r#"
            [topics.{p}_t]
            kind = "fanout"
            [queues.{p}_q]
            delivery = "at-least-once"
            ack_timeout_ms = 300
            [[bindings]]
            topic = "{p}_t"
            queue = "{p}_q"
        "#;
        let (broker, topology) = start(Backend::Nats, &p, toml).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        broker
            .subscribe(&format!("{p}_q"), move |d: Delivery<u64>| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(d.delivery_count());
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    Outcome::Ack
                }
            })
            .await
            .unwrap();
        broker.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap();
        let first = tokio::time::timeout(ARRIVES, rx.recv()).await.unwrap().unwrap();
        assert_eq!(first, 1);
        if let Ok(Some(again)) = tokio::time::timeout(Duration::from_millis(2000), rx.recv()).await {
            panic!("redelivered (delivery {again}) while its handler ran");
        }
        finish(Backend::Nats, broker, topology).await;
    }

    /// Bindings live in the publishing client: a binding made at run time by one process routes
    /// that process's publishes only.
    #[actix::test]
    async fn a_run_time_binding_routes_its_own_process_only() {
        let p = prefix("natsbind");
        let toml = r#"
            [topics.{p}_t]
            kind = "direct"
            [queues.{p}_q]
        "#;
        let (one, topology) = start(Backend::Nats, &p, toml).await;
        let (other, _) = start(Backend::Nats, &p, toml).await;
        assert!(one.bind(&format!("{p}_t"), &format!("{p}_q"), "k").await.unwrap());
        assert_eq!(one.publish(&format!("{p}_t"), "k", 1_u64).await.unwrap(), Confirm::Routed { queues: 1 });
        let elsewhere = other.publish(&format!("{p}_t"), "k", 2_u64).await.unwrap();
        assert_eq!(elsewhere, Confirm::Unroutable { alternate: None });
        other.shutdown(Duration::from_secs(1)).await;
        finish(Backend::Nats, one, topology).await;
    }
}

/// A remote broker that does not answer is a clear error at once, naming the URL without its
/// password, on every backend (no retrying in the background, no panic).
#[cfg(any(feature = "rabbitmq", feature = "nats"))]
#[actix::test]
async fn an_unreachable_broker_is_an_error_at_once() {
    let topology = Topology::from_toml_str("[queues.q]\n").unwrap();
    let mut urls = Vec::new();
    if cfg!(feature = "rabbitmq") {
        urls.push("amqp://guest:secret@127.0.0.1:1/%2f");
    }
    if cfg!(feature = "nats") {
        urls.push("nats://127.0.0.1:1");
    }
    for url in urls {
        let started = std::time::Instant::now();
        let err = Broker::builder(topology.clone())
            .remote(url)
            .connect()
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: took {:?}", started.elapsed());
        assert!(text.contains("cannot connect") && text.contains("127.0.0.1:1"), "{text}");
        assert!(!text.contains("secret"), "the password stays out of errors: {text}");
    }
}
