//! Generic benchmark shapes: one publisher, one topic, some queues with competing subscribers; run
//! through tubemail and through raw crossbeam-channel threads doing the same matching.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;

use super::{Measurement, BASELINE_CHANNEL_CAPACITY};
use tubemail::ids::QueueId;
use tubemail::routing::RoutingTable;
use tubemail::topology::{DeliveryMode, Overflow, QueueSpec, TopicKind, TopicSpec, Topology};
use tubemail::{Broker, Delivery, Outcome, SubscribeOptions};

/// Depth of each queue in a shape (`block` overflow, so nothing is lost).
pub const SHAPE_DEPTH_MAX: usize = 10_000;
/// Prefetch of each subscriber in a shape.
pub const SHAPE_PREFETCH: u32 = 256;

/// A benchmark shape: a topic of `kind`, queues bound by `(queue, key)`, `consumers` competing
/// subscribers per queue, routing keys published in turn.
#[derive(Debug, Clone)]
pub struct Shape {
    /// The topic's kind.
    pub kind: TopicKind,
    /// Queue names, in order.
    pub queues: Vec<String>,
    /// Bindings: (index into `queues`, key or pattern).
    pub bindings: Vec<(usize, String)>,
    /// Competing subscribers per queue.
    pub consumers: usize,
    /// Routing keys, published in turn.
    pub keys: Vec<String>,
    /// The broker's arbiters; `None` for its default (one per core). The built-in shapes measure one
    /// arbiter: on two cores, a publisher thread and two arbiters fanning out to four queues run at
    /// 0.3–0.5× the baseline, against 0.8× on one arbiter (the `arbiters` scenario measures what
    /// spreading buys when handlers do work).
    pub arbiters: Option<usize>,
}

impl Shape {
    /// The routing table of the shape, queue ids being indexes into `queues`.
    pub fn table(&self) -> RoutingTable {
        let mut table = RoutingTable::new(self.kind);
        for (q, key) in &self.bindings {
            table.bind(QueueId(*q as u32), key, 1).expect("valid binding");
        }
        table
    }

    /// Deliveries that `messages` publishes make.
    pub fn deliveries(&self, messages: u64) -> u64 {
        self.deliveries_per_queue(messages).iter().sum()
    }

    /// Deliveries that `messages` publishes make to each queue, in the order of `queues`.
    pub fn deliveries_per_queue(&self, messages: u64) -> Vec<u64> {
        let table = self.table();
        let mut out = SmallVec::new();
        let mut per_queue = vec![0_u64; self.queues.len()];
        let keys = self.keys.len() as u64;
        for (i, key) in self.keys.iter().enumerate() {
            // Publishes of this key: one per round of keys, plus one in the last, partial round.
            let published = messages / keys + u64::from((i as u64) < messages % keys);
            table.route(key, &mut out);
            for q in &out {
                per_queue[q.0 as usize] += published;
            }
        }
        per_queue
    }

    fn start(&self, mode: DeliveryMode) -> Broker {
        let builder = Broker::builder(self.topology(mode));
        let builder = match self.arbiters {
            Some(n) => builder.arbiters(n),
            None => builder,
        };
        builder.start().expect("a valid topology")
    }

    fn topology(&self, mode: DeliveryMode) -> Topology {
        let mut t = Topology::new().topic("t", TopicSpec::new(self.kind));
        let spec = QueueSpec::default().delivery(mode).depth_max(SHAPE_DEPTH_MAX).overflow(Overflow::Block);
        for q in &self.queues {
            t = t.queue(q, spec.clone());
        }
        for (q, key) in &self.bindings {
            t = t.bind("t", &self.queues[*q], key);
        }
        t
    }
}

/// Runs a shape through tubemail: actors on one arbiter (this thread), the publisher on a thread of
/// its own; only publishing and delivering is timed.
pub fn run_tubemail(shape: &Shape, messages: u64, payload: usize, mode: DeliveryMode) -> Measurement {
    let per_queue = shape.deliveries_per_queue(messages);
    let shape = shape.clone();
    actix::System::new().block_on(async move {
        let broker = shape.start(mode);
        let handled = Arc::new(AtomicU64::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
        let done = Arc::new(Done { queues_left: AtomicU64::new(0), at: Mutex::new(Some(done_tx)) });
        for (queue, &expected) in shape.queues.iter().zip(&per_queue) {
            if expected > 0 {
                done.queues_left.fetch_add(1, Ordering::Relaxed);
            }
            // A lone subscriber counts in a local variable, as the baseline's consumer threads do;
            // competing subscribers share a counter per queue.
            let queue_handled = Arc::new(AtomicU64::new(0));
            for _ in 0..shape.consumers {
                let (handled, done, queue_handled) = (handled.clone(), done.clone(), queue_handled.clone());
                let alone = shape.consumers == 1;
                let mut local = 0_u64;
                let handler = move |_: Delivery<Bytes>| {
                    local += 1;
                    let finished = if alone {
                        local == expected
                    } else {
                        queue_handled.fetch_add(1, Ordering::Relaxed) + 1 == expected
                    };
                    if finished {
                        handled.fetch_add(if alone { local } else { expected }, Ordering::Relaxed);
                        done.queue_finished();
                    }
                    Outcome::Ack
                };
                let options = SubscribeOptions::default().prefetch(SHAPE_PREFETCH);
                broker.subscribe_sync_with(queue, options, handler).await.expect("queue exists");
            }
        }
        let publisher = broker.publisher("t").expect("topic exists");
        let keys = shape.keys.clone();
        let body = vec![0xAB_u8; payload];
        let start = Instant::now();
        let publishing = std::thread::spawn(move || {
            futures::executor::block_on(async move {
                for i in 0..messages {
                    let key = &keys[(i % keys.len() as u64) as usize];
                    publisher.publish_bytes(key, Bytes::copy_from_slice(&body)).await.expect("publish");
                }
            })
        });
        let expected: u64 = per_queue.iter().sum();
        let end = if expected == 0 { Instant::now() } else { done_rx.await.expect("all deliveries handled") };
        publishing.join().expect("publisher thread");
        Measurement { published: messages, deliveries: handled.load(Ordering::Relaxed), elapsed: end - start }
    })
}

/// Tells the run when every queue has had all its deliveries handled.
struct Done {
    queues_left: AtomicU64,
    at: Mutex<Option<tokio::sync::oneshot::Sender<Instant>>>,
}

impl Done {
    fn queue_finished(&self) {
        if self.queues_left.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(tx) = self.at.lock().expect("bench lock").take() {
                let _ = tx.send(Instant::now());
            }
        }
    }
}

/// Runs a shape on raw crossbeam-channel threads: a publisher thread matching keys with the same
/// routing table and sending an `Arc` of the payload into one bounded channel per queue, and
/// `consumers` threads receiving from each channel (competing, as crossbeam channels are MPMC).
pub fn run_baseline(shape: &Shape, messages: u64, payload: usize) -> Measurement {
    let table = shape.table();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shape.queues.len())
        .map(|_| crossbeam_channel::bounded::<Arc<[u8]>>(BASELINE_CHANNEL_CAPACITY))
        .unzip();
    let mut threads = Vec::new();
    for rx in receivers {
        for _ in 0..shape.consumers {
            let rx = rx.clone();
            threads.push(std::thread::spawn(move || {
                let mut count = 0_u64;
                while rx.recv().is_ok() {
                    count += 1;
                }
                (count, Instant::now())
            }));
        }
    }
    let body = vec![0xAB_u8; payload];
    let start = Instant::now();
    let mut out = SmallVec::new();
    for i in 0..messages {
        table.route(&shape.keys[(i % shape.keys.len() as u64) as usize], &mut out);
        let payload: Arc<[u8]> = Arc::from(&body[..]);
        for q in &out {
            senders[q.0 as usize].send(payload.clone()).expect("consumer alive");
        }
    }
    drop(senders);
    let (mut deliveries, mut end) = (0, start);
    for t in threads {
        let (count, finished) = t.join().expect("consumer thread");
        deliveries += count;
        end = end.max(finished);
    }
    Measurement { published: messages, deliveries, elapsed: end - start }
}

/// The work-queue shape: one queue, four competing consumers, acks.
pub fn work_queue() -> Shape {
    Shape {
        kind: TopicKind::Direct,
        queues: vec!["jobs".into()],
        bindings: vec![(0, "jobs".into())],
        consumers: 4,
        keys: vec!["jobs".into()],
        arbiters: Some(1),
    }
}

/// The wide shape: one fanout topic, `queues` queues, one subscriber each.
pub fn wide(queues: usize) -> Shape {
    Shape {
        kind: TopicKind::Fanout,
        queues: (0..queues).map(|i| format!("q{i}")).collect(),
        bindings: (0..queues).map(|i| (i, String::new())).collect(),
        consumers: 1,
        keys: vec!["any".into()],
        arbiters: Some(1),
    }
}

/// Routing alone: keys per second a topic with `bindings` distinct pattern bindings routes: through
/// the route cache and trie as a publisher sees them, through the trie alone, and (the baseline)
/// through a scan of every binding with the reference matcher. The scan gets fewer lookups (at least
/// 64) to keep the run short: the last value is how many it ran.
pub fn bindings(bindings: usize, lookups: u64) -> (f64, f64, f64, u64) {
    let patterns: Vec<String> =
        (0..bindings).map(|i| format!("tenant{}.orders.{}.*", i % 1000, i / 1000)).collect();
    let keys: Vec<String> =
        (0..64).map(|i| format!("tenant{}.orders.{}.paid", (i * 37) % 1000, i % 7)).collect();
    let mut table = RoutingTable::new(TopicKind::Topic);
    for (i, p) in patterns.iter().enumerate() {
        table.bind(QueueId(i as u32), p, 1).expect("valid pattern");
    }
    let mut out = SmallVec::new();
    let start = Instant::now();
    let mut found = 0;
    for i in 0..lookups {
        table.route(&keys[(i % 64) as usize], &mut out);
        found += out.len();
    }
    let trie = lookups as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    found += tubemail::internals::route_cached(&table, &keys, lookups);
    let cached = lookups as f64 / start.elapsed().as_secs_f64();
    // The baseline scans every binding, so it gets fewer lookups to keep the run short.
    let scans = (lookups / bindings as u64).clamp(64, lookups);
    let start = Instant::now();
    for i in 0..scans {
        let key = &keys[(i % 64) as usize];
        found += patterns.iter().filter(|p| tubemail::routing::pattern_matches(p, key)).count();
    }
    let scan = scans as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box(found);
    (cached, trie, scan, scans)
}

/// Waits at most this long for a paced run's deliveries.
const PACED_WAIT_MAX: Duration = Duration::from_secs(60);

/// Latency of a paced publisher: `rate` messages per second through a one-queue shape, each
/// publish→handler latency recorded (microseconds) in an HDR histogram.
pub fn latency_tubemail(rate: u64, messages: u64, mode: DeliveryMode) -> hdrhistogram::Histogram<u64> {
    let shape = Shape { consumers: 1, ..work_queue() };
    actix::System::new().block_on(async move {
        let broker = shape.start(mode);
        let histogram = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3).expect("histogram")));
        let seen = Arc::new(AtomicU64::new(0));
        let (h, s) = (histogram.clone(), seen.clone());
        let handler = move |d: Delivery<(u64, u64)>| {
            let sent = Duration::new(d.0, d.1 as u32);
            let now = EPOCH.with(|e| e.elapsed());
            let _ = h.lock().expect("histogram").record(now.saturating_sub(sent).as_micros() as u64);
            s.fetch_add(1, Ordering::Relaxed);
            Outcome::Ack
        };
        broker
            .subscribe_sync_with("jobs", SubscribeOptions::default().prefetch(SHAPE_PREFETCH), handler)
            .await
            .expect("queue");
        let publisher = broker.publisher("t").expect("topic");
        let epoch = EPOCH.with(|e| *e);
        let publishing = std::thread::spawn(move || {
            let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
            let start = Instant::now();
            futures::executor::block_on(async move {
                for i in 0..messages {
                    let due = start + interval * i as u32;
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                    let sent = epoch.elapsed();
                    publisher
                        .publish("jobs", (sent.as_secs(), u64::from(sent.subsec_nanos())))
                        .await
                        .expect("publish");
                }
            })
        });
        let deadline = Instant::now() + PACED_WAIT_MAX;
        while seen.load(Ordering::Relaxed) < messages && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publishing.join().expect("publisher thread");
        let h = histogram.lock().expect("histogram").clone();
        h
    })
}

thread_local! {
    static EPOCH: Instant = *PROCESS_EPOCH;
}

static PROCESS_EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// The same paced publisher over a crossbeam channel to one consumer thread.
pub fn latency_baseline(rate: u64, messages: u64) -> hdrhistogram::Histogram<u64> {
    let (tx, rx) = crossbeam_channel::bounded::<Instant>(BASELINE_CHANNEL_CAPACITY);
    let consumer = std::thread::spawn(move || {
        let mut h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        while let Ok(sent) = rx.recv() {
            let _ = h.record(sent.elapsed().as_micros() as u64);
        }
        h
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    for i in 0..messages {
        let due = start + interval * i as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        tx.send(Instant::now()).expect("consumer alive");
    }
    drop(tx);
    consumer.join().expect("consumer thread")
}

#[cfg(test)]
mod tests {
    /// Per queue, eight publishes of the fan-out keys reach `orders.*` 3 times, `orders.paid` once,
    /// `#` 8 times and `contracts.#` 3 times: 15 deliveries, the figure the benchmarks quote.
    #[test]
    fn fanout_deliveries_per_queue_for_one_round_and_a_partial_one() {
        let shape = crate::fanout_shape();
        assert_eq!(shape.deliveries_per_queue(8), [3, 1, 8, 3]);
        assert_eq!(shape.deliveries(8), 15);
        // Ten publishes: one round, then `orders.paid` and `orders.placed` once more.
        assert_eq!(shape.deliveries_per_queue(10), [5, 2, 10, 3]);
    }
}
