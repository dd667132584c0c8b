//! Benchmark scenarios, shared by `cargo bench` and `tubemail bench`: tubemail and a raw baseline of
//! the same shape, measured in the same process so that their ratio is meaningful on a noisy machine.
//!
//! The fan-out shape: one publisher, one topic with four queues bound by `orders.*`, `orders.paid`,
//! `#` and `contracts.#`, eight routing keys in turn (15 deliveries per 8 publishes), one subscriber
//! per queue, payloads of a given size. The baseline is the same shape from raw crossbeam-channel
//! threads: one publisher thread matching keys with the same routing table and sending an `Arc` of the
//! payload into one bounded channel per queue, and one thread per queue receiving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::ids::QueueId;
use crate::routing::RoutingTable;
use crate::topology::{Delivery as DeliveryMode, Overflow, QueueSpec, TopicKind, TopicSpec, Topology};
use crate::{Broker, Delivery, Outcome, SubscribeOptions};
#[cfg(feature = "peers")]
pub mod peers;

pub mod hot;
pub mod memory;
pub mod shapes;

/// The bindings of the fan-out shape: (queue, pattern).
pub const FANOUT_BINDINGS: [(&str, &str); 4] = [
    ("q-orders-any", "orders.*"),
    ("q-orders-paid", "orders.paid"),
    ("q-all", "#"),
    ("q-contracts", "contracts.#"),
];

/// The routing keys of the fan-out shape, published in turn.
pub const FANOUT_KEYS: [&str; 8] = [
    "orders.paid",
    "orders.placed",
    "orders.cancelled",
    "contracts.signed",
    "contracts.disputed.high",
    "users.created",
    "orders.paid.eu",
    "contracts",
];

/// Depth of each tubemail queue in the fan-out shape (`block` overflow, so nothing is lost).
pub const FANOUT_DEPTH_MAX: usize = 10_000;

/// Capacity of each baseline channel, equal to a queue actor's mailbox.
pub const BASELINE_CHANNEL_CAPACITY: usize = crate::queue::QUEUE_MAILBOX_CAPACITY;

/// One measured run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Messages published.
    pub published: u64,
    /// Deliveries handled by subscribers.
    pub deliveries: u64,
    /// From the first publish to the last delivery handled.
    pub elapsed: Duration,
}

impl Measurement {
    /// Deliveries per second.
    pub fn deliveries_per_sec(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }
}

/// The topology of the fan-out shape.
pub fn fanout_topology(mode: DeliveryMode) -> Topology {
    let mut topology = Topology::new().topic("orders", TopicSpec::new(TopicKind::Topic));
    for (queue, pattern) in FANOUT_BINDINGS {
        topology = topology
            .queue(
                queue,
                QueueSpec::default().delivery(mode).depth_max(FANOUT_DEPTH_MAX).overflow(Overflow::Block),
            )
            .bind("orders", queue, pattern);
    }
    topology
}

/// How many deliveries `messages` publishes of the fan-out shape make.
pub fn fanout_deliveries(messages: u64) -> u64 {
    let table = fanout_table();
    let mut out = SmallVec::new();
    (0..messages)
        .map(|i| {
            table.route(FANOUT_KEYS[(i % 8) as usize], &mut out);
            out.len() as u64
        })
        .sum()
}

fn fanout_table() -> RoutingTable {
    let mut table = RoutingTable::new(TopicKind::Topic);
    for (i, (_, pattern)) in FANOUT_BINDINGS.iter().enumerate() {
        table.bind(QueueId(i as u32), pattern, 1).expect("valid pattern");
    }
    table
}

/// Runs the fan-out shape through tubemail, all actors on one arbiter (this thread), the publisher a
/// task on the same arbiter.
pub fn fanout_tubemail(messages: u64, payload: usize, mode: DeliveryMode) -> Measurement {
    let expected = fanout_deliveries(messages);
    actix::System::new().block_on(async move {
        let broker = Broker::start(fanout_topology(mode)).expect("valid topology");
        let handled = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
        let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
        for (queue, _) in FANOUT_BINDINGS {
            let (handled, done_tx) = (handled.clone(), done_tx.clone());
            let handler = move |_: Delivery<Bytes>| {
                if handled.fetch_add(1, Ordering::Relaxed) + 1 == expected {
                    if let Some(tx) = done_tx.lock().expect("bench lock").take() {
                        let _ = tx.send(Instant::now());
                    }
                }
                Outcome::Ack
            };
            let options = SubscribeOptions::default().prefetch(256);
            broker.subscribe_sync(queue, options, handler).await.expect("queue exists");
        }
        let publisher = broker.publisher("orders").expect("topic exists");
        // The publisher is an application thread of its own, as the baseline's is; the broker's actors
        // share the arbiter thread.
        let body = vec![0xAB_u8; payload];
        let start = Instant::now();
        let publishing = std::thread::spawn(move || {
            futures::executor::block_on(async move {
                for i in 0..messages {
                    let key = FANOUT_KEYS[(i % 8) as usize];
                    publisher.publish_bytes(key, Bytes::copy_from_slice(&body)).await.expect("publish");
                }
            })
        });
        let end = done_rx.await.expect("all deliveries handled");
        publishing.join().expect("publisher thread");
        Measurement { published: messages, deliveries: handled.load(Ordering::Relaxed), elapsed: end - start }
    })
}

/// Runs the fan-out shape on raw crossbeam-channel threads.
pub fn fanout_baseline(messages: u64, payload: usize) -> Measurement {
    let table = fanout_table();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..FANOUT_BINDINGS.len())
        .map(|_| crossbeam_channel::bounded::<Arc<[u8]>>(BASELINE_CHANNEL_CAPACITY))
        .unzip();
    let consumers: Vec<_> = receivers
        .into_iter()
        .map(|rx| {
            std::thread::spawn(move || {
                let mut count = 0_u64;
                while rx.recv().is_ok() {
                    count += 1;
                }
                (count, Instant::now())
            })
        })
        .collect();
    let body = vec![0xAB_u8; payload];
    let start = Instant::now();
    let mut out = SmallVec::new();
    for i in 0..messages {
        table.route(FANOUT_KEYS[(i % 8) as usize], &mut out);
        let payload: Arc<[u8]> = Arc::from(&body[..]);
        for q in &out {
            senders[q.0 as usize].send(payload.clone()).expect("consumer alive");
        }
    }
    drop(senders);
    let mut deliveries = 0;
    let mut end = start;
    for consumer in consumers {
        let (count, finished) = consumer.join().expect("consumer thread");
        deliveries += count;
        end = end.max(finished);
    }
    Measurement { published: messages, deliveries, elapsed: end - start }
}
