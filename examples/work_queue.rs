//! A work queue: one queue of jobs, four competing workers.
//!
//! What it shows:
//! - Competing consumers: the queue hands its jobs out round robin among the workers with room.
//! - Prefetch: each worker holds at most `PREFETCH` unsettled jobs, so a slow worker does not hoard
//!   work the others could do.
//! - Outcome acks on an at-least-once queue: a worker returns `Outcome::Ack` when a job is done and
//!   `Outcome::Nack { requeue: true }` when it fails; the failed job goes back to its place in the
//!   queue and is redelivered, marked redelivered, perhaps to another worker.
//! - Every job is done at least once, and the queue's `redelivered` counter equals the nacks.
//!
//! Failures come from seeded ChaCha generators (one per worker), so a run is repeatable; the work
//! itself is a sleep on tokio's paused clock, so it costs no real time.
//!
//! Run it with `cargo run --example work_queue`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tubemail::{Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology};

const JOBS: u32 = 200;
const WORKERS: usize = 4;
/// Unsettled jobs per worker at most.
const PREFETCH: u32 = 4;
/// Chance that one attempt at a job fails.
const FAILURE_RATE: f64 = 0.2;
/// Attempts at one job before the queue gives up on it; far above what `FAILURE_RATE` needs.
const DELIVERY_LIMIT: u32 = 20;
const SEED: u64 = 2024;

/// A unit of work.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u32,
    /// Simulated work, in milliseconds of the paused clock.
    cost_ms: u64,
}

/// What one worker did.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    done: u32,
    failed: u32,
    redeliveries_seen: u32,
}

fn topology() -> Topology {
    Topology::new()
        .topic("jobs", TopicSpec::new(TopicKind::Direct))
        .queue("work", QueueSpec::default().delivery_limit(DELIVERY_LIMIT))
        .bind("jobs", "work", "job")
}

async fn start_worker(
    broker: &Broker,
    worker: usize,
    tallies: Arc<Mutex<[Tally; WORKERS]>>,
    done: mpsc::UnboundedSender<u32>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(SEED + worker as u64);
    let handler = move |job: Delivery<Job>| {
        let fails = rng.gen_bool(FAILURE_RATE);
        let (tallies, done) = (tallies.clone(), done.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(job.cost_ms)).await;
            let mut tallies = tallies.lock().expect("no handler panics holding the lock");
            let tally = &mut tallies[worker];
            tally.redeliveries_seen += u32::from(job.redelivered());
            if fails {
                tally.failed += 1;
                return Outcome::Nack { requeue: true };
            }
            tally.done += 1;
            done.send(job.id).expect("main waits for every job");
            Outcome::Ack
        }
    };
    let options = SubscribeOptions::default().prefetch(PREFETCH);
    broker.subscribe_with("work", options, handler).await.expect("queue declared");
}

/// Waits until the broker is idle (`Broker::idle`), within ten minutes of the paused clock.
async fn wait_quiet(broker: &Broker) {
    let idle = tokio::time::timeout(Duration::from_secs(600), broker.idle()).await;
    idle.expect("the broker went quiet");
}

#[actix::main]
async fn main() {
    tokio::time::pause();
    let broker = Broker::start(topology()).expect("the topology is valid");
    let tallies = Arc::new(Mutex::new([Tally::default(); WORKERS]));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    for worker in 0..WORKERS {
        start_worker(&broker, worker, tallies.clone(), done_tx.clone()).await;
    }
    drop(done_tx);

    let jobs = broker.publisher("jobs").expect("topic declared");
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    for id in 0..JOBS {
        jobs.publish("job", Job { id, cost_ms: rng.gen_range(1..=20) }).await.expect("broker running");
    }

    let mut times_done: BTreeMap<u32, u32> = BTreeMap::new();
    while times_done.len() < JOBS as usize {
        let wait = tokio::time::timeout(Duration::from_secs(60), done_rx.recv());
        let id = wait.await.expect("every job is done in time").expect("workers are running");
        *times_done.entry(id).or_default() += 1;
    }
    wait_quiet(&broker).await;
    let report = broker.shutdown(Duration::from_secs(1)).await;

    let tallies = *tallies.lock().expect("no handler panics holding the lock");
    println!(
        "{JOBS} jobs, {WORKERS} workers with prefetch {PREFETCH}, {FAILURE_RATE} failure rate (seed {SEED})"
    );
    println!("{:<8} {:>5} {:>7} {:>13}", "worker", "done", "failed", "redeliveries");
    for (worker, t) in tallies.iter().enumerate() {
        println!("{:<8} {:>5} {:>7} {:>13}", worker, t.done, t.failed, t.redeliveries_seen);
    }
    let q = &report.stats.queues["work"];
    println!(
        "queue work: enqueued {}, delivered {}, redelivered {}, acked {}, nacked {}, dead-lettered {}",
        q.enqueued, q.delivered, q.redelivered, q.acked, q.nacked, q.dead_lettered
    );

    assert!(times_done.values().all(|&n| n >= 1), "a job was never done");
    assert_eq!(tallies.iter().map(|t| t.done).sum::<u32>(), JOBS, "every job done, and once");
    let failed: u32 = tallies.iter().map(|t| t.failed).sum();
    assert_eq!(q.redelivered, u64::from(failed), "every failure redelivered once");
    assert_eq!(q.dead_lettered + q.dropped.total(), 0, "no job given up on");
    assert!(tallies.iter().all(|t| t.done > 0), "every worker competed for jobs");
    assert!(report.stats.conserved(), "a job was lost without a reason: {:#?}", report.stats);
    println!("every job done at least once; {failed} failures, each redelivered once");
}
