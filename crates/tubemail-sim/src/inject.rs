//! The injector: the run's one seeded random number generator, its fault plan and its history.

use std::sync::Mutex;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::{Duration, Instant};

use super::fault::{FaultPlan, MsRange};
use super::history::History;
use tubemail::probe::{Bugs, FaultKind, Probe, What};

/// Events a history makes room for up front.
const HISTORY_CAPACITY: usize = 16_384;

/// Shared by every actor of a simulated broker.
#[derive(Debug)]
pub(crate) struct Injector {
    plan: FaultPlan,
    rng: Mutex<ChaCha8Rng>,
    history: Mutex<History>,
    start: Instant,
    bugs: Bugs,
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

    fn pick(&self, range: MsRange) -> Duration {
        Duration::from_millis(self.rng.lock().expect("injector rng").gen_range(range.min..=range.max))
    }

    pub(crate) fn take_history(&self) -> History {
        std::mem::take(&mut *self.history.lock().expect("injector history"))
    }
}

impl Probe for Injector {
    /// No draw when the kind's probability is zero, so that turning one kind off does not change
    /// when the others strike.
    fn strikes(&self, kind: FaultKind) -> bool {
        let p = self.plan.probability(kind);
        p > 0.0 && self.rng.lock().expect("injector rng").gen_bool(p)
    }

    fn delay(&self) -> Duration {
        self.pick(self.plan.delay_ms)
    }

    fn slowness(&self) -> Duration {
        self.pick(self.plan.slow_ms)
    }

    fn record(&self, what: What) {
        let at = Instant::now().saturating_duration_since(self.start).as_micros() as u64;
        self.history.lock().expect("injector history").push(at, what);
    }

    fn bugs(&self) -> Bugs {
        self.bugs
    }
}
