//! Placement: what spreading queues over arbiters buys.
//!
//! - [`cpu_bound`]: many independent queues, each with a handler that computes for a while; the same
//!   run on one arbiter and on several, in one process, so that their ratio is meaningful.
//! - [`isolation`]: one queue whose handler sleeps (blocking its thread), another queue fed at a
//!   steady pace; the other queue's publish → handler latency, on one arbiter and on several.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tubemail::{Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology};

use crate::Measurement;

/// Queues of the CPU-bound scenario.
pub const CPU_BOUND_QUEUES: usize = 8;
/// How long the slow handler of the isolation scenario blocks its thread, per message.
pub const SLOW_HANDLER: Duration = Duration::from_millis(200);
/// The pace of the other queue's publisher in the isolation scenario.
pub const ISOLATION_INTERVAL: Duration = Duration::from_millis(2);

fn direct(queues: &[String]) -> Topology {
    let mut topology = Topology::new().topic("t", TopicSpec::new(TopicKind::Direct));
    for q in queues {
        let spec = QueueSpec::default().depth_max(100_000).overflow(tubemail::Overflow::Block);
        topology = topology.queue(q, spec).bind("t", q, q);
    }
    topology
}

/// Spins for about `work`, as a handler that computes does.
fn compute(work: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0_u64;
    while start.elapsed() < work {
        for i in 0..64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

/// `messages` spread over [`CPU_BOUND_QUEUES`] queues, each handled by a sync handler that computes
/// for `work`, on `arbiters` arbiters; the publisher on a thread of its own.
pub fn cpu_bound(arbiters: usize, messages: u64, work: Duration) -> Measurement {
    let queues: Vec<String> = (0..CPU_BOUND_QUEUES).map(|i| format!("q{i}")).collect();
    actix::System::new().block_on(async move {
        let broker = Broker::builder(direct(&queues)).arbiters(arbiters).start().expect("a valid topology");
        let handled = Arc::new(AtomicU64::new(0));
        for q in &queues {
            let handled = handled.clone();
            let handler = move |_: Delivery<u32>| {
                std::hint::black_box(compute(work));
                handled.fetch_add(1, Ordering::Relaxed);
                Outcome::Ack
            };
            broker
                .subscribe_sync_with(q, SubscribeOptions::default().prefetch(256), handler)
                .await
                .expect("queue");
        }
        let publisher = broker.publisher("t").expect("topic");
        let start = Instant::now();
        let publishing = std::thread::spawn(move || {
            futures::executor::block_on(async move {
                for i in 0..messages {
                    let key = &queues[(i % CPU_BOUND_QUEUES as u64) as usize];
                    publisher.publish(key, i as u32).await.expect("publish");
                }
            })
        });
        while handled.load(Ordering::Relaxed) < messages {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        publishing.join().expect("the publisher thread");
        broker.shutdown(Duration::from_secs(1)).await;
        Measurement { published: messages, deliveries: messages, elapsed }
    })
}

/// The isolation scenario on `arbiters` arbiters for `run`: a `slow` queue whose sync handler blocks
/// its thread for [`SLOW_HANDLER`] per message (fed one message per `SLOW_HANDLER`), and a `fast`
/// queue fed every [`ISOLATION_INTERVAL`]; returns the `fast` queue's publish → handler latencies in
/// microseconds. The slow handler is not marked blocking: the watchdog and the placement keep it
/// from stalling the other queue.
pub fn isolation(arbiters: usize, run: Duration) -> hdrhistogram::Histogram<u64> {
    let queues = vec!["slow".to_owned(), "fast".to_owned()];
    actix::System::new().block_on(async move {
        let broker = Broker::builder(direct(&queues)).arbiters(arbiters).start().expect("a valid topology");
        let histogram = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new(3).expect("a histogram")));
        let seen = Arc::new(AtomicU64::new(0));
        broker
            .subscribe_sync("slow", |_: Delivery<u32>| {
                std::thread::sleep(SLOW_HANDLER);
                Outcome::Ack
            })
            .await
            .expect("queue");
        let (h, s) = (histogram.clone(), seen.clone());
        let epoch = Instant::now();
        broker
            .subscribe_sync("fast", move |d: Delivery<u64>| {
                let sent = Duration::from_nanos(*d);
                let _ = h
                    .lock()
                    .expect("histogram")
                    .record(epoch.elapsed().saturating_sub(sent).as_micros() as u64);
                s.fetch_add(1, Ordering::Relaxed);
                Outcome::Ack
            })
            .await
            .expect("queue");
        let publisher = broker.publisher("t").expect("topic");
        let published = Arc::new(AtomicU64::new(0));
        let count = published.clone();
        let publishing = std::thread::spawn(move || {
            futures::executor::block_on(async move {
                let start = Instant::now();
                let mut next_slow = start;
                let mut i = 0_u32;
                while start.elapsed() < run {
                    let due = start + ISOLATION_INTERVAL * i;
                    while Instant::now() < due {
                        std::hint::spin_loop();
                    }
                    if Instant::now() >= next_slow {
                        publisher.publish("slow", 0_u32).await.expect("publish");
                        next_slow += SLOW_HANDLER;
                    }
                    publisher.publish("fast", epoch.elapsed().as_nanos() as u64).await.expect("publish");
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        });
        // Never block this thread: it is an arbiter, and its actors must run while the publisher does.
        while !publishing.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publishing.join().expect("the publisher thread");
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.load(Ordering::Relaxed) < published.load(Ordering::Relaxed) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        broker.shutdown(Duration::from_millis(10)).await;
        let h = histogram.lock().expect("histogram").clone();
        h
    })
}
