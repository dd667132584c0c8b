//! The lifecycle scenario: the topology changes while messages flow. A publisher task publishes
//! while a second task, on the same thread, declares, deletes and re-declares queues, binds and
//! unbinds them, subscribes and unsubscribes, and finally shuts the broker down; every choice comes
//! from the run's seed, and the fault plan's faults strike as in the built-in scenario.
//!
//! # What is judged
//! - **conservation over the whole run**: every queue incarnation (deleted ones included) accounts
//!   for every message it took, every topic for every publish (routed, refused or unroutable), and the
//!   copies topics routed equal what queues enqueued ([`Stats::conserved`]);
//! - **no handler after unsubscribe**: once an unsubscribe has returned, no handler of that consumer
//!   starts ([`What::Unsubscribed`] followed by a [`What::HandlerStart`] of the consumer);
//! - **the broker stops**: shutdown returns, and reports it shut the broker down.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tubemail::probe::{FaultKind, Probe, What};
use tubemail::{
    Broker, Delivery, DeliveryMode, Outcome, Overflow, Payload, QueueSpec, Stats, SubscribeOptions,
    Subscription, TopicKind, TopicSpec, Topology,
};

use crate::history::History;
use crate::inject::Injector;
use crate::run::{paused_runtime, Scenario, PUBLISH_ATTEMPTS_MAX, SCENARIO_ACK_TIMEOUT, SETTLE_TIME_MAX};

/// The queues the scenario declares and deletes.
pub const LIFECYCLE_QUEUES: [&str; 4] = ["q0", "q1", "q2", "q3"];
/// Lifecycle operations per run.
pub const LIFECYCLE_OPS: u32 = 60;
/// The shutdown timeout at the end of a run.
pub const LIFECYCLE_SHUTDOWN: Duration = Duration::from_millis(200);

/// What one run of the lifecycle scenario produced.
#[derive(Debug, Clone)]
pub struct LifecycleRun {
    /// The seed.
    pub seed: u64,
    /// Every event, in order.
    pub history: History,
    /// The broker's final counters (after shutdown).
    pub stats: Stats,
    /// How often each operation ran.
    pub ops: BTreeMap<&'static str, u64>,
    /// What broke, if anything.
    pub violations: Vec<String>,
}

impl LifecycleRun {
    /// Whether every promise held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A queue of the scenario: `q1` and `q3` block their publishers when full, so that deletions and
/// shutdown meet publishers waiting for room.
fn spec(name: &str, mode: DeliveryMode) -> QueueSpec {
    let spec = QueueSpec::default().delivery(mode).ack_timeout(SCENARIO_ACK_TIMEOUT).delivery_limit(50);
    match name {
        "q1" | "q3" => spec.overflow(Overflow::Block).depth_max(4),
        _ => spec.dead_letter("dead"),
    }
}

fn topology(mode: DeliveryMode) -> Topology {
    let mut topology = Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
        .queue("dead", QueueSpec::default())
        .queue("unrouted", QueueSpec::default());
    for q in LIFECYCLE_QUEUES {
        topology = topology.queue(q, spec(q, mode)).bind("events", q, "#");
    }
    topology
}

/// Runs the lifecycle scenario once with `seed`, on a fresh single-threaded actix system under
/// paused time.
pub fn run_lifecycle(scenario: &Scenario, seed: u64) -> LifecycleRun {
    actix::System::with_tokio_rt(paused_runtime).block_on(run_inside(scenario.clone(), seed))
}

async fn run_inside(scenario: Scenario, seed: u64) -> LifecycleRun {
    let injector = Arc::new(Injector::new(seed, scenario.plan.clone(), scenario.bugs));
    let broker =
        Broker::builder(topology(scenario.mode)).probe(injector.clone()).start().expect("a valid topology");
    let publishing = actix::spawn(publish(broker.clone(), injector.clone(), scenario.messages));
    let ops = churn(&broker, scenario.mode, seed).await;
    let mut violations = Vec::new();
    // Publishes may wait for room in a full `block` queue; shutdown releases them.
    let report = match tokio::time::timeout(SETTLE_TIME_MAX, broker.shutdown(LIFECYCLE_SHUTDOWN)).await {
        Ok(report) => report,
        Err(_) => {
            violations.push("shutdown never returned".to_owned());
            Default::default()
        }
    };
    if tokio::time::timeout(SETTLE_TIME_MAX, publishing).await.is_err() {
        violations.push("a publish still waits after shutdown returned".to_owned());
    }
    let history = injector.take_history();
    if !report.shut_down {
        violations.push("shutdown did not report shutting the broker down".to_owned());
    }
    let stats = broker.stats().await;
    if report.shut_down && stats != report.stats {
        violations.push("the counters changed after shutdown returned".to_owned());
    }
    if !report.stats.conserved() {
        violations.push(format!("the counters do not balance: {}", unbalanced(&report.stats)));
    }
    violations.extend(handlers_after_unsubscribe(&history));
    LifecycleRun { seed, history, stats: report.stats, ops, violations }
}

/// Publishes `messages`, a lost confirm making the publisher publish again with the same id.
async fn publish(broker: Broker, injector: Arc<Injector>, messages: u32) {
    let Ok(publisher) = broker.publisher("events") else { return };
    for i in 0..messages {
        let key = format!("k{}.{}", i % 4, i % 3);
        let Ok((id, _)) = publisher.publish_as(&key, Payload::value(i), None, 1).await else { return };
        let mut attempt = 1;
        while attempt < PUBLISH_ATTEMPTS_MAX && injector.strikes(FaultKind::ConfirmLoss) {
            injector.fault(FaultKind::ConfirmLoss, Some(id), None);
            injector.record(What::ConfirmLost { msg: id });
            attempt += 1;
            let _ = publisher.publish_as(&key, Payload::value(i), Some(id), attempt).await;
        }
        if i % 5 == 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The lifecycle operations, drawn from the seed; returns how often each ran.
async fn churn(broker: &Broker, mode: DeliveryMode, seed: u64) -> BTreeMap<&'static str, u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6c69_6665_6379_636c);
    let mut subscriptions: Vec<Subscription> = Vec::new();
    let mut ops = BTreeMap::new();
    for _ in 0..LIFECYCLE_OPS {
        let queue = LIFECYCLE_QUEUES[rng.gen_range(0..LIFECYCLE_QUEUES.len())];
        let op = match rng.gen_range(0..100) {
            0..=24 => subscribe(broker, queue, rng.gen_range(1..=8))
                .await
                .map(|s| subscriptions.push(s))
                .map(|_| "subscribe"),
            25..=44 if !subscriptions.is_empty() => {
                let sub = subscriptions.swap_remove(rng.gen_range(0..subscriptions.len()));
                let timeout = Duration::from_millis([0, 2, 20, 300][rng.gen_range(0..4)]);
                sub.unsubscribe(timeout).await;
                Some("unsubscribe")
            }
            45..=59 => broker.delete_queue(queue).await.ok().map(|_| "delete"),
            60..=74 => broker.declare_queue(queue, spec(queue, mode)).ok().map(|_| "declare"),
            75..=89 => broker
                .bind("events", queue, ["#", "k1.#", "*.2"][rng.gen_range(0..3)])
                .await
                .ok()
                .map(|_| "bind"),
            _ => broker.unbind("events", queue, "#").await.ok().map(|_| "unbind"),
        };
        if let Some(op) = op {
            *ops.entry(op).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..4))).await;
    }
    ops
}

async fn subscribe(broker: &Broker, queue: &str, prefetch: u32) -> Option<Subscription> {
    let options = SubscribeOptions::default().prefetch(prefetch);
    broker.subscribe_sync_with(queue, options, |_: Delivery<u32>| Outcome::Ack).await.ok()
}

/// A handler that started after its consumer's unsubscribe returned.
fn handlers_after_unsubscribe(history: &History) -> Vec<String> {
    let mut gone = BTreeSet::new();
    let mut found = Vec::new();
    for event in history.events() {
        match &event.what {
            What::Unsubscribed { consumer, .. } => {
                gone.insert(*consumer);
            }
            What::HandlerStart { consumer, msg, queue, .. } if gone.contains(consumer) => {
                found.push(format!(
                "consumer {consumer} started a handler for msg={} in {queue} after its unsubscribe returned",
                msg.0
            ))
            }
            _ => {}
        }
    }
    found
}

/// Which counters do not balance.
fn unbalanced(stats: &Stats) -> String {
    let mut parts = Vec::new();
    for (name, q) in &stats.queues {
        if !q.conserved() {
            parts.push(format!("queue {name}: {q:?}"));
        }
    }
    for d in &stats.deleted_queues {
        if !d.stats.conserved() {
            parts.push(format!("deleted queue {} (id {}): {:?}", d.name, d.id.0, d.stats));
        }
    }
    for (name, t) in &stats.topics {
        if !t.conserved() {
            parts.push(format!("topic {name}: {t:?}"));
        }
    }
    let routed: u64 = stats.topics.values().map(|t| t.routed).sum();
    let dead: u64 = stats.all_queues().map(|q| q.dead_lettered + q.refused_dead_lettered).sum();
    let enqueued: u64 = stats.all_queues().map(|q| q.enqueued).sum();
    if routed + dead != enqueued {
        parts.push(format!("routed {routed} + dead letters {dead} != enqueued {enqueued}"));
    }
    parts.join("; ")
}
