//! Memory: bytes per queued message, per idle queue and per idle subscriber, from the growth of the
//! live heap (when the binary counts it) or of the resident set, and the peak resident set.

use std::time::Duration;

use bytes::Bytes;

use tubemail::topology::{Overflow, QueueSpec, TopicKind, TopicSpec, Topology};
use tubemail::{Broker, Delivery, Outcome};

/// What the memory runs found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryReport {
    /// Resident bytes per message held in one queue, payload included.
    pub per_queued_message: f64,
    /// The payload size of those messages.
    pub payload: usize,
    /// Resident bytes per idle queue (declared, bound, no messages, no subscriber).
    pub per_idle_queue: f64,
    /// Resident bytes per idle subscriber (subscribed to an empty queue).
    pub per_idle_subscriber: f64,
    /// The process's peak resident set, bytes (`VmHWM`).
    pub peak_rss: u64,
}

impl MemoryReport {
    /// Bytes per queued message beyond its payload.
    pub fn overhead_per_message(&self) -> f64 {
        self.per_queued_message - self.payload as f64
    }
}

static LIVE_BYTES: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

/// Installs a probe of the live heap bytes (the `tubemail` command counts them in its global
/// allocator). Without one, measurements use the resident set, which an allocator's reuse of freed
/// pages blurs.
pub fn set_live_bytes_probe(probe: fn() -> usize) {
    let _ = LIVE_BYTES.set(probe);
}

/// Bytes in use now: live heap bytes when a probe is installed, else the resident set.
fn used() -> u64 {
    match LIVE_BYTES.get() {
        Some(probe) => probe() as u64,
        None => rss(),
    }
}

/// The resident set now, bytes (0 where `/proc` is not there).
pub fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

/// The peak resident set, bytes (0 where `/proc` is not there).
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: 0 kB");
    line.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()).unwrap_or(0) * 1024
}

/// Runs the three measurements, each on a fresh broker.
pub fn measure(messages: u64, payload: usize, queues: usize, subscribers: usize) -> MemoryReport {
    MemoryReport {
        per_queued_message: queued(messages, payload),
        payload,
        per_idle_queue: idle_queues(queues),
        per_idle_subscriber: idle_subscribers(subscribers),
        peak_rss: peak_rss(),
    }
}

fn queued(messages: u64, payload: usize) -> f64 {
    actix::System::new().block_on(async move {
        let depth = messages as usize + 1;
        let topology = Topology::new()
            .topic("t", TopicSpec::new(TopicKind::Fanout))
            .queue("held", QueueSpec::default().depth_max(depth).overflow(Overflow::Block))
            .bind("t", "held", "");
        let broker = Broker::builder(topology).arbiters(1).start().expect("valid topology");
        let publisher = broker.publisher("t").expect("topic");
        let body = vec![0xAB_u8; payload];
        let before = used();
        for _ in 0..messages {
            publisher.publish_bytes("k", Bytes::copy_from_slice(&body)).await.expect("publish");
        }
        while broker.stats().await.queues["held"].ready < messages {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        grown_since(before) / messages as f64
    })
}

fn idle_queues(queues: usize) -> f64 {
    actix::System::new().block_on(async move {
        let before = used();
        let mut topology = Topology::new().topic("t", TopicSpec::new(TopicKind::Topic));
        for i in 0..queues {
            topology = topology.queue(format!("q{i}"), QueueSpec::default()).bind(
                "t",
                format!("q{i}"),
                format!("k.{i}"),
            );
        }
        let broker = Broker::builder(topology).arbiters(1).start().expect("valid topology");
        broker.stats().await;
        let grown = grown_since(before) / queues as f64;
        drop(broker);
        grown
    })
}

fn idle_subscribers(subscribers: usize) -> f64 {
    actix::System::new().block_on(async move {
        let topology = Topology::new().queue("q", QueueSpec::default());
        let broker = Broker::builder(topology).arbiters(1).start().expect("valid topology");
        let before = used();
        let mut subs = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            subs.push(broker.subscribe_sync("q", |_: Delivery<Bytes>| Outcome::Ack).await.expect("queue"));
        }
        broker.stats().await;
        grown_since(before) / subscribers as f64
    })
}

/// Bytes gained since `before` (the counter may wrap when blocks allocated before counting are freed).
fn grown_since(before: u64) -> f64 {
    (used().wrapping_sub(before) as i64).max(0) as f64
}
