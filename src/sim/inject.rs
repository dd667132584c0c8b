//! The injector: the run's one seeded random number generator, its fault plan and its history.

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::{Duration, Instant};

use super::fault::{FaultPlan, MsRange};
use super::history::{FaultKind, History, What};
use crate::ids::MessageId;

/// Events a history makes room for up front.
const HISTORY_CAPACITY: usize = 16_384;

/// Deliberately broken variants of the runtime, to prove that the checkers catch real bugs. Off in
/// every run unless a test turns one on.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// A queue forgets to requeue what a crashed subscriber held.
    pub forget_requeue_on_crash: bool,
    /// The at-most-once path runs a duplicated delivery.
    pub at_most_once_redelivers: bool,
    /// A router skips the last matching binding.
    pub router_skips_binding: bool,
    /// A requeued message goes to the back of the queue.
    pub requeue_at_back: bool,
}

/// Shared by every actor of a simulated broker.
#[derive(Debug)]
pub(crate) struct Injector {
    plan: FaultPlan,
    rng: Mutex<ChaCha8Rng>,
    history: Mutex<History>,
    start: Instant,
    pub(crate) bugs: Bugs,
}

impl Injector {
    pub(crate) fn new(seed: u64, plan: FaultPlan, bugs: Bugs) -> Self {
        Self {
            plan,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            // A run of a thousand messages records about ten thousand events.
            history: Mutex::new(History::with_capacity(HISTORY_CAPACITY)),
            start: Instant::now(),
            bugs,
        }
    }

    /// Whether a fault of `kind` strikes now (no draw when its probability is zero, so that turning
    /// one kind off does not change when the others strike).
    pub(crate) fn strikes(&self, kind: FaultKind) -> bool {
        let p = self.plan.probability(kind);
        p > 0.0 && self.rng.lock().expect("injector rng").gen_bool(p)
    }

    /// Records a fault, with the message and queue it struck.
    pub(crate) fn fault(&self, kind: FaultKind, msg: Option<MessageId>, queue: Option<&str>) {
        self.record(What::Fault { kind, msg, queue: queue.map(str::to_owned) });
    }

    pub(crate) fn delay(&self) -> Duration {
        self.pick(self.plan.delay_ms)
    }

    pub(crate) fn slowness(&self) -> Duration {
        self.pick(self.plan.slow_ms)
    }

    fn pick(&self, range: MsRange) -> Duration {
        Duration::from_millis(self.rng.lock().expect("injector rng").gen_range(range.min..=range.max))
    }

    pub(crate) fn record(&self, what: What) {
        let at = Instant::now().saturating_duration_since(self.start).as_micros() as u64;
        self.history.lock().expect("injector history").push(at, what);
    }

    pub(crate) fn take_history(&self) -> History {
        std::mem::take(&mut *self.history.lock().expect("injector history"))
    }
}
