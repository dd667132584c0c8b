//! A one-call harness for users' own consumers: a topology, a workload, handlers and an invariant on
//! the final state, run over many seeds under injected faults, shrunk to a small failing case.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::check::{check, Expectation, QueueExpectation, Report};
use super::fault::FaultPlan;
use super::history::History;
use super::inject::Injector;
use super::run::{paused_runtime, publish_all, settle};
use tubemail::message::Payload;
use tubemail::probe::Bugs;
use tubemail::probe::FaultKind;
use tubemail::topology::Topology;
use tubemail::Broker;

type Subscribe<S> = Box<dyn Fn(Broker, Arc<Mutex<S>>) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;
type Workload<P> = Box<dyn Fn(usize) -> Vec<(String, P)> + Send + Sync>;
type Invariant<P, S> = Box<dyn Fn(&S, &[(String, P)]) -> Result<(), String> + Send + Sync>;

/// Runs a user's topology, workload and handlers under a fault plan, seed after seed, and checks both
/// the delivery promise of each queue (with [`check`]) and the user's own invariant on the final state.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use tubemail_sim::{FaultPlan, Harness};
/// use tubemail::{Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
///
/// let topology = Topology::new()
///     .topic("events", TopicSpec::new(TopicKind::Fanout))
///     .queue("counter", QueueSpec::default())
///     .bind("events", "counter", "");
/// // A consumer that counts each message once: it remembers the ids it has seen.
/// let harness = Harness::<u32, (Vec<u64>, u64)>::new(topology, "events")
///     .workload(|n| (0..n as u32).map(|i| (format!("k{i}"), i)).collect())
///     .subscribe(|broker, state| {
///         Box::pin(async move {
///             broker
///                 .subscribe_sync("counter", move |d: Delivery<u32>| {
///                     let mut s = state.lock().unwrap();
///                     if !s.0.contains(&d.id().0) {
///                         s.0.push(d.id().0);
///                         s.1 += 1;
///                     }
///                     Outcome::Ack
///                 })
///                 .await
///                 .unwrap();
///         })
///     })
///     .invariant(|state, workload| {
///         if state.1 == workload.len() as u64 { Ok(()) } else { Err(format!("counted {}", state.1)) }
///     });
/// let plan: FaultPlan = "duplicate,ack-loss,crash-after".parse().unwrap();
/// harness.check(20, 50, &plan).expect("exactly-once effect");
/// ```
pub struct Harness<P, S> {
    topology: Topology,
    topic: String,
    workload: Workload<P>,
    subscribe: Subscribe<S>,
    invariant: Invariant<P, S>,
    expect: Expectation,
}

impl<P, S> Harness<P, S>
where
    P: Clone + Serialize + Send + Sync + 'static,
    S: Default + Send + 'static,
{
    /// A harness publishing to `topic` of `topology`. Every queue is judged by its own delivery mode
    /// unless [`Harness::expect`] says otherwise.
    pub fn new(topology: Topology, topic: &str) -> Self {
        let mut expect = Expectation::default();
        for (name, spec) in &topology.queues {
            expect.queues.insert(
                name.clone(),
                QueueExpectation { mode: spec.delivery, fifo: false, per_key_order: false },
            );
        }
        Self {
            topology,
            topic: topic.to_owned(),
            workload: Box::new(|_| Vec::new()),
            subscribe: Box::new(|_, _| Box::pin(async {})),
            invariant: Box::new(|_, _| Ok(())),
            expect,
        }
    }

    /// The messages to publish for a run of `n`: (routing key, value), in order.
    pub fn workload(mut self, f: impl Fn(usize) -> Vec<(String, P)> + Send + Sync + 'static) -> Self {
        self.workload = Box::new(f);
        self
    }

    /// Subscribes the handlers under test, given the broker and the run's shared state.
    pub fn subscribe(
        mut self,
        f: impl Fn(Broker, Arc<Mutex<S>>) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync + 'static,
    ) -> Self {
        self.subscribe = Box::new(f);
        self
    }

    /// The user's invariant on the final state, given the workload.
    pub fn invariant(
        mut self,
        f: impl Fn(&S, &[(String, P)]) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.invariant = Box::new(f);
        self
    }

    /// What to check of one queue (the delivery mode, FIFO, per-key order).
    pub fn expect(mut self, queue: &str, expectation: QueueExpectation) -> Self {
        self.expect.queues.insert(queue.to_owned(), expectation);
        self
    }

    /// One run: `messages` messages under `plan` with `seed`.
    pub fn run(&self, seed: u64, messages: usize, plan: &FaultPlan) -> Verdict {
        let system = actix::System::with_tokio_rt(paused_runtime);
        let (history, settled, state) = system.block_on(self.run_inside(seed, messages, plan.clone()));
        let workload = (self.workload)(messages);
        let invariant = (self.invariant)(&state, &workload);
        let report = check(&history, &self.expect);
        Verdict { seed, messages, plan: plan.clone(), history, report, settled, invariant }
    }

    async fn run_inside(&self, seed: u64, messages: usize, plan: FaultPlan) -> (History, bool, S) {
        let injector = Arc::new(Injector::new(seed, plan, Bugs::default()));
        let broker =
            Broker::builder(self.topology.clone()).probe(injector.clone()).start().expect("a valid topology");
        let state = Arc::new(Mutex::new(S::default()));
        (self.subscribe)(broker.clone(), state.clone()).await;
        let publisher = broker.publisher(&self.topic).expect("the harness's topic exists");
        let workload = (self.workload)(messages).into_iter().map(|(key, value)| (key, Payload::value(value)));
        publish_all(&publisher, &injector, workload).await;
        let settled = settle(&broker).await;
        broker.shutdown(Duration::ZERO).await;
        drop(broker);
        let state = std::mem::take(&mut *state.lock().expect("harness state"));
        (injector.take_history(), settled, state)
    }

    /// Runs seeds `0..seeds`; on the first failure, shrinks it (fewer messages, fewer fault kinds)
    /// to the smallest case that still fails, and returns it.
    ///
    /// # Errors
    /// The smallest failing case, printable, with the seed and plan that replay it.
    pub fn check(&self, seeds: u64, messages: usize, plan: &FaultPlan) -> Result<(), Box<Verdict>> {
        for seed in 0..seeds {
            let verdict = self.run(seed, messages, plan);
            if !verdict.ok() {
                return Err(Box::new(self.shrink(verdict)));
            }
        }
        Ok(())
    }

    fn shrink(&self, mut failing: Verdict) -> Verdict {
        // Fewer messages first: halve while it still fails, then step down.
        let mut n = failing.messages;
        while n > 1 {
            let smaller = self.run(failing.seed, n / 2, &failing.plan);
            if smaller.ok() {
                break;
            }
            n /= 2;
            failing = smaller;
        }
        // Then switch fault kinds off one at a time while it still fails.
        for kind in FaultKind::ALL {
            if failing.plan.probability(kind) == 0.0 {
                continue;
            }
            let mut plan = failing.plan.clone();
            plan.set_probability(kind, 0.0);
            let fewer = self.run(failing.seed, failing.messages, &plan);
            if !fewer.ok() {
                failing = fewer;
            }
        }
        failing
    }
}

/// One run's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The seed that replays it.
    pub seed: u64,
    /// Messages published.
    pub messages: usize,
    /// The fault plan.
    pub plan: FaultPlan,
    /// Every event.
    pub history: History,
    /// The delivery checkers' report.
    pub report: Report,
    /// Whether the broker settled in time.
    pub settled: bool,
    /// The user's invariant.
    pub invariant: Result<(), String>,
}

impl Verdict {
    /// Whether the delivery promises and the invariant held.
    pub fn ok(&self) -> bool {
        self.settled && self.report.ok() && self.invariant.is_ok()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} with {} messages under faults {}", self.seed, self.messages, self.plan)?;
        if !self.settled {
            writeln!(f, "the run did not settle")?;
        }
        if let Err(e) = &self.invariant {
            writeln!(f, "invariant broken: {e}")?;
        }
        if !self.report.ok() {
            write!(f, "{}", self.report)?;
        }
        write!(f, "replay: harness.run({}, {}, &\"{}\".parse()?)", self.seed, self.messages, self.plan)
    }
}
