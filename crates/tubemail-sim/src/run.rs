//! One simulated run of the built-in scenario.

use std::sync::Arc;
use std::time::Duration;

use super::check::{check, Expectation, QueueExpectation, Report};
use super::fault::FaultPlan;
use super::history::History;
use super::inject::Injector;
use tubemail::message::Payload;
use tubemail::probe::Bugs;
use tubemail::probe::{FaultKind, Probe, What};
use tubemail::stats::Stats;
use tubemail::subscriber::{Delivery, Outcome, SubscribeOptions};
use tubemail::topology::{DeliveryMode, QueueSpec, TopicKind, TopicSpec, Topology};
use tubemail::{Broker, Publisher};

/// Publishes a retry after a lost confirm at most this often per message.
pub const PUBLISH_ATTEMPTS_MAX: u32 = 3;
/// Simulated time a run may take to settle before it is declared stuck.
pub const SETTLE_TIME_MAX: Duration = Duration::from_secs(120);
/// The scenario's ack deadline, in simulated time.
pub const SCENARIO_ACK_TIMEOUT: Duration = Duration::from_millis(200);

/// The built-in scenario: a topic routing every message to a `work` queue with two competing
/// consumers (judged for FIFO among first deliveries) and to an `ordered` single-active-consumer
/// queue with prefetch 1 (judged for per-key order), both dead-lettering to `dead`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The delivery mode of `work` and `ordered`.
    pub mode: DeliveryMode,
    /// Messages to publish.
    pub messages: u32,
    /// The faults.
    pub plan: FaultPlan,
    #[doc(hidden)]
    pub bugs: Bugs,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            mode: DeliveryMode::AtLeastOnce,
            messages: 1000,
            plan: FaultPlan::all(),
            bugs: Bugs::default(),
        }
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct SimRun {
    /// The seed.
    pub seed: u64,
    /// Every event, in order.
    pub history: History,
    /// The broker's counters at the end.
    pub stats: Stats,
    /// The checkers' verdict.
    pub report: Report,
    /// Whether every queue was empty and settled before [`SETTLE_TIME_MAX`].
    pub settled: bool,
    /// Publishes whose confirmed queues differ from what the reference matcher says their key
    /// reaches (checked against the topology's bindings with `routing::pattern_matches`).
    pub misrouted: Vec<String>,
}

impl SimRun {
    /// Whether the mode's promise held, the run settled, routing matched the reference matcher, and
    /// the broker's counters balance.
    pub fn ok(&self) -> bool {
        self.settled && self.report.ok() && self.misrouted.is_empty() && self.stats.conserved()
    }
}

/// Runs the scenario once with `seed`, on a fresh single-threaded actix system under paused time.
pub fn run(scenario: &Scenario, seed: u64) -> SimRun {
    actix::System::with_tokio_rt(paused_runtime).block_on(run_inside(scenario.clone(), seed))
}

fn topology(mode: DeliveryMode) -> Topology {
    let spec = QueueSpec::default()
        .delivery(mode)
        .ack_timeout(SCENARIO_ACK_TIMEOUT)
        .delivery_limit(50)
        .dead_letter("dead");
    Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic))
        .queue("work", spec.clone())
        .queue("ordered", spec.single_active_consumer(true))
        .queue("dead", QueueSpec::default())
        .bind("events", "work", "#")
        .bind("events", "ordered", "#")
}

/// What the checkers expect of the scenario's queues.
pub fn expectation(mode: DeliveryMode) -> Expectation {
    let mut expect = Expectation::default();
    expect.queues.insert("work".into(), QueueExpectation { mode, fifo: true, per_key_order: false });
    expect.queues.insert("ordered".into(), QueueExpectation { mode, fifo: true, per_key_order: true });
    expect
}

async fn run_inside(scenario: Scenario, seed: u64) -> SimRun {
    let injector = Arc::new(Injector::new(seed, scenario.plan.clone(), scenario.bugs));
    let broker =
        Broker::builder(topology(scenario.mode)).probe(injector.clone()).start().expect("a valid topology");
    let ack = |_: Delivery<u32>| Outcome::Ack;
    for (queue, prefetch, consumers) in [("work", 8, 2), ("ordered", 1, 2), ("dead", 64, 1)] {
        for _ in 0..consumers {
            let options = SubscribeOptions::default().prefetch(prefetch);
            broker.subscribe_sync_with(queue, options, ack).await.expect("the queue exists");
        }
    }
    let publisher = broker.publisher("events").expect("the topic exists");
    let workload = (0..scenario.messages).map(|i| (format!("k{}", i % 8), Payload::value(i)));
    publish_all(&publisher, &injector, workload).await;
    let settled = settle(&broker).await;
    let stats = broker.stats().await;
    broker.shutdown(Duration::ZERO).await;
    let history = injector.take_history();
    let report = check(&history, &expectation(scenario.mode));
    let misrouted = misrouted(&history, &topology(scenario.mode));
    SimRun { seed, history, stats, report, settled, misrouted }
}

/// Compares every confirm with the reference matcher over the topology's bindings.
pub(super) fn misrouted(history: &History, topology: &Topology) -> Vec<String> {
    let mut keys = std::collections::BTreeMap::new();
    let mut wrong = Vec::new();
    for event in history.events() {
        match &event.what {
            What::Publish { msg, key, .. } => {
                keys.insert(*msg, key.clone());
            }
            What::Confirm { msg, queues, refused } => {
                let Some(key) = keys.get(msg) else { continue };
                let mut expected: Vec<&str> = topology
                    .bindings
                    .iter()
                    .filter(|b| tubemail::routing::pattern_matches(&b.key, key))
                    .filter_map(|b| b.target.queue())
                    .collect();
                expected.sort_unstable();
                expected.dedup();
                let mut got: Vec<&str> = queues.iter().chain(refused).map(String::as_str).collect();
                got.sort_unstable();
                if got != expected {
                    wrong.push(format!(
                        "message {} with key {key:?} reached {got:?}, not {expected:?}",
                        msg.0
                    ));
                }
            }
            _ => {}
        }
    }
    wrong
}

/// Publishes a workload in order; a lost confirm makes the publisher publish again with the same id,
/// up to [`PUBLISH_ATTEMPTS_MAX`] times. Actors get to run every ten messages.
pub(super) async fn publish_all(
    publisher: &Publisher,
    injector: &Injector,
    workload: impl IntoIterator<Item = (String, Payload)>,
) {
    for (i, (key, payload)) in workload.into_iter().enumerate() {
        let Ok((id, _)) = publisher.publish_as(&key, payload.clone(), None, 1).await else { break };
        let mut attempt = 1;
        while attempt < PUBLISH_ATTEMPTS_MAX && injector.strikes(FaultKind::ConfirmLoss) {
            injector.fault(FaultKind::ConfirmLoss, Some(id), None);
            injector.record(What::ConfirmLost { msg: id });
            attempt += 1;
            let _ = publisher.publish_as(&key, payload.clone(), Some(id), attempt).await;
        }
        if i % 10 == 9 {
            // Let the actors work while publishing goes on, so faults meet a moving system.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A current-thread runtime under paused time, for one simulated run.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a runtime")
}

/// Waits (in simulated time) until no queue holds a ready or unsettled message.
pub(super) async fn settle(broker: &Broker) -> bool {
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while waited < SETTLE_TIME_MAX {
        tokio::time::sleep(step).await;
        waited += step;
        let stats = broker.stats().await;
        if stats.queues.values().all(|q| q.ready == 0 && q.in_flight == 0) {
            return true;
        }
    }
    false
}
