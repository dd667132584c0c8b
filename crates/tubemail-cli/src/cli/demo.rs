//! `tubemail demo`: a modular monolith whose modules talk through topics and queues.
//!
//! - Orders publishes `orders.placed`, `orders.cancelled` and now and then `returns.requested`, which
//!   no module binds (it lands in the `unrouted` alternate queue).
//! - Contracts consumes placed orders and enqueues its follow-ups: `contracts.signed` or
//!   `contracts.disputed` on the `contracts` topic.
//! - Partners hears placed orders and signed contracts from two topics on one queue (n:1).
//! - Support handles cancellations and disputes at least once; its handler fails now and then (the
//!   message is redelivered) and always fails on poisoned tickets, which reach `support-dead` after
//!   three deliveries.
//! - Business counts everything at most once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tubemail::jobs::{
    enumerators, EnqueueOptions, Enumerator, IterationJob, IterationSettings, Job, JobContext, JobError,
    Jobs, RetryPolicy,
};
use tubemail::remote::{admin, Endpoint};
use tubemail::{Broker, Delivery, Outcome, ShutdownReport, Stats, Topology};

/// The demo's topology; `{p}` is [`REMOTE_PREFIX`] on a remote broker, nothing in process.
const TOPOLOGY: &str = r#"
[topics.{p}orders]
kind = "topic"
alternate = "{p}unrouted"

[topics.{p}contracts]
kind = "topic"

[queues.{p}contracts-orders]
delivery = "at-least-once"

[queues.{p}partners-events]
delivery = "at-least-once"

[queues.{p}support-tickets]
delivery = "at-least-once"
delivery_limit = 3
dead_letter = "{p}support-dead"

[queues.{p}support-dead]

[queues.{p}business-analytics]
delivery = "at-most-once"
depth_max = 100000

[queues.{p}unrouted]

[[bindings]]
topic = "{p}orders"
queue = "{p}contracts-orders"
key = "orders.placed"

[[bindings]]
topic = "{p}orders"
queue = "{p}partners-events"
key = "orders.placed"

[[bindings]]
topic = "{p}contracts"
queue = "{p}partners-events"
key = "contracts.signed"

[[bindings]]
topic = "{p}orders"
queue = "{p}support-tickets"
key = "orders.cancelled"

[[bindings]]
topic = "{p}contracts"
queue = "{p}support-tickets"
key = "contracts.disputed"

[[bindings]]
topic = "{p}orders"
queue = "{p}business-analytics"
key = "orders.#"

[[bindings]]
topic = "{p}contracts"
queue = "{p}business-analytics"
key = "contracts.#"
"#;

/// An event of the demo's modules.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    order: u32,
    cents: u64,
}

/// The prefix of the demo's names on a remote broker, so that they never meet a user's.
const REMOTE_PREFIX: &str = "tubemail_demo_";

/// How long the demo waits for a remote broker's queues to drain before it shuts down.
const REMOTE_DRAIN_MAX: Duration = Duration::from_secs(60);

pub(crate) fn run(orders: u32, seed: u64, on: Option<&str>) -> Result<(), String> {
    actix::System::new().block_on(async move {
        match on {
            None => demo(orders, seed).await,
            Some(url) => remote_demo(orders, seed, url).await,
        }
    })
}

fn topology(prefix: &str) -> Result<Topology, String> {
    Topology::from_toml_str(&TOPOLOGY.replace("{p}", prefix)).map_err(|e| e.to_string())
}

async fn demo(orders: u32, seed: u64) -> Result<(), String> {
    let broker = Broker::start(topology("")?).map_err(|e| e.to_string())?;
    println!("tubemail demo: {orders} orders through a modular monolith (seed {seed})\n");
    let final_report = modules(&broker, orders, seed, "").await?;
    println!("conservation holds: {}", final_report.stats.conserved());
    background_jobs(orders).await?;
    if final_report.stats.conserved() {
        Ok(())
    } else {
        Err("conservation failed: a message was lost without a reason".to_owned())
    }
}

/// The demo with its topics, queues and bindings on the remote broker at `url`: declared there
/// (after deleting what an interrupted run may have left), deleted at the end whatever happened.
async fn remote_demo(orders: u32, seed: u64, url: &str) -> Result<(), String> {
    let topology = topology(REMOTE_PREFIX)?;
    remove(url, &topology).await?;
    let broker = Broker::builder(topology.clone()).remote(url).connect().await.map_err(|e| e.to_string())?;
    let backend = broker.endpoint().map_or("a remote broker", |e| e.backend());
    // The URL without its user and password.
    let at = url.rsplit_once('@').map_or(url, |(_, host)| host);
    println!("tubemail demo: {orders} orders through a modular monolith (seed {seed})");
    println!("  topics, queues and bindings: on {backend} at {at}, named {REMOTE_PREFIX}*");
    println!("  the modules' publishers and handlers: in this process");
    println!("  background jobs: in this process (tubemail::jobs, journaled in a temporary directory)\n");
    let ran = modules(&broker, orders, seed, REMOTE_PREFIX).await;
    let removed = remove(url, &topology).await;
    let report = ran?;
    removed.map_err(|e| format!("the demo ran, but deleting its queues failed: {e}"))?;
    println!(
        "deleted from {backend}: the {} queues named {REMOTE_PREFIX}*, and what routes to them",
        topology.queues.len()
    );
    // The queues' own counters (enqueued, ready) are the remote broker's: only the topics' balance
    // is this process's to check.
    println!(
        "(`enqueued`, and dead letters the broker moves itself, are {backend}'s counts, not this process's)"
    );
    let conserved = report.stats.topics.values().all(tubemail::TopicStats::conserved);
    println!("every publish confirmed by {backend} was routed, refused or unroutable: {conserved}");
    background_jobs(orders).await?;
    if conserved {
        Ok(())
    } else {
        Err("conservation failed: a publish ended no known way".to_owned())
    }
}

/// Deletes the demo's queues (with their messages) from the remote broker at `url`, and on
/// RabbitMQ its exchanges too.
async fn remove(url: &str, topology: &Topology) -> Result<(), String> {
    match Endpoint::parse(url).map_err(|e| e.to_string())? {
        // Over a connection of its own that does not retry: an unreachable broker fails at once.
        Endpoint::RabbitMq(_) => admin::delete(url, topology).await.map_err(|e| e.to_string()),
        // A queue is a stream there, and a topic nothing the broker keeps.
        Endpoint::Nats(_) => {
            let cleaner = Broker::builder(topology.clone()).remote(url).connect().await;
            let cleaner = cleaner.map_err(|e| e.to_string())?;
            for queue in topology.queues.keys() {
                cleaner.delete_queue(queue).await.map_err(|e| e.to_string())?;
            }
            cleaner.shutdown(Duration::ZERO).await;
            Ok(())
        }
    }
}

/// Runs the modules on `broker` (names prefixed with `p`) and shuts it down.
async fn modules(broker: &Broker, orders: u32, seed: u64, p: &str) -> Result<ShutdownReport, String> {
    let revenue = Arc::new(AtomicU64::new(0));
    let dead_reasons = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    subscribe_modules(broker, seed, p, revenue.clone(), dead_reasons.clone()).await?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let orders_topic = broker.publisher(&format!("{p}orders")).map_err(|e| e.to_string())?;
    for order in 0..orders {
        let roll: f64 = rng.gen();
        let key = if roll < 0.8 {
            "orders.placed"
        } else if roll < 0.97 {
            "orders.cancelled"
        } else {
            "returns.requested"
        };
        let event = Event { order, cents: rng.gen_range(100..100_000) };
        orders_topic.publish(key, event).await.map_err(|e| e.to_string())?;
        if order % 100 == 99 {
            // Pace the Orders module so the table shows traffic while it flows.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        if order % 1000 == 500 {
            print_table(&broker.stats().await, "while running");
        }
    }
    match broker.endpoint() {
        None => wait_quiet(broker, p).await,
        Some(_) => {
            let _ = tokio::time::timeout(REMOTE_DRAIN_MAX, broker.idle()).await;
        }
    }
    let final_report = broker.shutdown(Duration::from_secs(2)).await;
    print_table(&final_report.stats, "final");
    let dead = dead_reasons.lock().expect("demo lock").clone();
    println!("dead letters in {p}support-dead by reason: {dead:?}");
    println!("business revenue seen (at most once): {:.2}", revenue.load(Ordering::Relaxed) as f64 / 100.0);
    Ok(final_report)
}

async fn subscribe_modules(
    broker: &Broker,
    seed: u64,
    p: &str,
    revenue: Arc<AtomicU64>,
    dead_reasons: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
) -> Result<(), String> {
    let contracts = broker.publisher(&format!("{p}contracts")).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC0);
    let contracts_handler = move |d: Delivery<Event>| {
        // The first job enqueues its follow-up, rather than doing everything in one step.
        let key = if rng.gen_bool(0.9) { "contracts.signed" } else { "contracts.disputed" };
        let (contracts, event) = (contracts.clone(), (*d).clone());
        async move {
            match contracts.publish(key, event).await {
                Ok(_) => Outcome::Ack,
                Err(_) => Outcome::Nack { requeue: true },
            }
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5E);
    let support_handler = move |d: Delivery<Event>| {
        let poisoned = d.order % 97 == 13;
        let flaky = rng.gen_bool(0.15);
        async move {
            if poisoned || flaky {
                Outcome::Nack { requeue: true }
            } else {
                Outcome::Ack
            }
        }
    };
    let business_handler = move |d: Delivery<Event>| {
        revenue.fetch_add(d.cents, Ordering::Relaxed);
        async { Outcome::Ack }
    };
    let dead_handler = move |d: Delivery<Event>| {
        let reason = d.deaths().first().map(|death| death.reason.to_string()).unwrap_or_default();
        *dead_reasons.lock().expect("demo lock").entry(reason).or_default() += 1;
        async { Outcome::Ack }
    };
    let fail = |e: tubemail::SubscribeError| e.to_string();
    let partners = |_: Delivery<Event>| async { Outcome::Ack };
    broker.subscribe(&format!("{p}contracts-orders"), contracts_handler).await.map_err(fail)?;
    broker.subscribe(&format!("{p}partners-events"), partners).await.map_err(fail)?;
    broker.subscribe(&format!("{p}partners-events"), partners).await.map_err(fail)?;
    broker.subscribe(&format!("{p}support-tickets"), support_handler).await.map_err(fail)?;
    broker.subscribe(&format!("{p}business-analytics"), business_handler).await.map_err(fail)?;
    broker.subscribe(&format!("{p}support-dead"), dead_handler).await.map_err(fail)?;
    Ok(())
}

/// Waits until no queue has work left, or two seconds at most.
async fn wait_quiet(broker: &Broker, p: &str) {
    let unrouted = format!("{p}unrouted");
    for _ in 0..200 {
        let stats = broker.stats().await;
        let busy = stats.queues.iter().any(|(name, q)| *name != unrouted && (q.ready > 0 || q.in_flight > 0));
        if !busy {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn print_table(stats: &Stats, title: &str) {
    println!("-- {title}");
    println!("{stats}");
}

/// The Business module's invoice job: the invoice of order 13 never goes through.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SendInvoice {
    order: u32,
}

impl Job for SendInvoice {
    const NAME: &'static str = "send_invoice";
}

/// The Support module's reindex over every order: an iteration job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reindex {
    orders: u64,
}

impl Job for Reindex {
    const NAME: &'static str = "reindex";
}

static REINDEXED: AtomicU64 = AtomicU64::new(0);

impl IterationJob for Reindex {
    type Item = u64;
    type Cursor = u64;

    fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<u64, u64>, JobError> {
        Ok(enumerators::range(0..self.orders, cursor))
    }

    async fn each_iteration(&self, _order: u64, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_micros(500)).await;
        REINDEXED.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn on_resume(&self, ctx: &JobContext) {
        let from = ctx.jobs().job(ctx.id()).map_or(0, |r| r.progress.items);
        println!("  reindex resumed in the new process from its checkpoint: {from} orders done");
    }
}

/// Jobs in a directory, as a deploy sees them: invoices retried into the dead set, a reindex
/// interrupted by a shutdown and resumed by the next process.
fn demo_jobs(dir: &std::path::Path) -> Result<Jobs, String> {
    Jobs::builder()
        .dir(dir)
        .shutdown_timeout(Duration::from_millis(50))
        .iteration_settings(IterationSettings { checkpoint_items: 100, ..IterationSettings::default() })
        .iteration::<Reindex>()
        .handle(|job: SendInvoice, _ctx: JobContext| async move {
            if job.order == 13 {
                return Err(JobError::Retry("the mail server refuses order 13".into()));
            }
            Ok(())
        })
        .start()
        .map_err(|e| e.to_string())
}

async fn background_jobs(orders: u32) -> Result<(), String> {
    println!("\n-- background jobs (tubemail::jobs, journaled on disk)");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let jobs = demo_jobs(dir.path())?;
    let quick = EnqueueOptions::default().retry(RetryPolicy::Fixed { retries: 3, delay_ms: 20 });
    for order in 10..20 {
        jobs.enqueue_with(SendInvoice { order }, quick.clone()).await.map_err(|e| e.to_string())?;
    }
    let reindex = jobs.enqueue(Reindex { orders: u64::from(orders) }).await.map_err(|e| e.to_string())?;
    while jobs.dead().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for dead in jobs.dead() {
        println!(
            "  {} {} died after {} retries: {}",
            dead.name,
            dead.id,
            dead.retries,
            dead.error.as_deref().unwrap_or("-")
        );
    }
    // A deploy: this process stops mid-reindex...
    let report = jobs.shutdown().await;
    let done = REINDEXED.load(Ordering::Relaxed);
    println!(
        "  deploy: shutdown with the reindex at {done} of {orders} orders; {} jobs left for the next process",
        report.left.total
    );
    drop(jobs);
    // ... and the next one carries on.
    let jobs = demo_jobs(dir.path())?;
    while jobs.job(reindex).is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "  reindex complete: {} orders handled in all, {} of them again after the restart (at most the checkpoint interval, 100)",
        REINDEXED.load(Ordering::Relaxed),
        REINDEXED.load(Ordering::Relaxed).saturating_sub(u64::from(orders))
    );
    let dead = jobs.dead().len();
    jobs.shutdown().await;
    if dead == 1 && REINDEXED.load(Ordering::Relaxed) >= u64::from(orders) {
        Ok(())
    } else {
        Err(format!(
            "the jobs demo went wrong: {dead} dead jobs, {} orders reindexed",
            REINDEXED.load(Ordering::Relaxed)
        ))
    }
}
