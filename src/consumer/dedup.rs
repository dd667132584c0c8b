//! The de-duplication window (a plain struct) and the store that shares it between subscribers.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::ids::MessageId;
use crate::Outcome;

/// Default window of a [`DedupStore`] or [`DedupWindow`]: the last 10,000 recorded ids.
pub const DEDUP_WINDOW_DEFAULT: usize = 10_000;
/// The largest window: 16,777,216 ids (about 640 MiB), as a queue's largest `depth_max`.
pub const DEDUP_WINDOW_MAX: usize = 16_777_216;

/// The last `window` message ids recorded, the oldest evicted first.
///
/// A plain struct, without lock or clock. Keep one inside the state that a handler's effect changes,
/// and record the id in the same step as the effect (under the same lock, in the same transaction):
/// then no crash can fall between the effect and its record, which [`Idempotent`](super::Idempotent)
/// alone cannot promise (see the [module docs](super#delivery-guarantees)).
///
/// ```
/// use std::collections::BTreeMap;
/// use tubemail::consumer::DedupWindow;
/// use tubemail::ids::MessageId;
///
/// #[derive(Default)]
/// struct Ledger {
///     seen: DedupWindow,
///     charged: BTreeMap<u64, u64>,
/// }
///
/// impl Ledger {
///     /// The charge and its record are one step: whoever holds the ledger sees both or neither.
///     fn charge(&mut self, id: MessageId, order: u64, cents: u64) {
///         if self.seen.record(id) {
///             *self.charged.entry(order).or_default() += cents;
///         }
///     }
/// }
///
/// let mut ledger = Ledger::default();
/// ledger.charge(MessageId(7), 42, 1_000);
/// ledger.charge(MessageId(7), 42, 1_000); // a redelivery
/// assert_eq!(ledger.charged[&42], 1_000);
/// ```
#[derive(Debug, Clone)]
pub struct DedupWindow {
    /// Recorded ids, oldest first.
    order: VecDeque<MessageId>,
    /// The same ids, for membership only: its iteration order never reaches behaviour.
    members: HashSet<MessageId>,
    window: usize,
    evicted: u64,
}

impl Default for DedupWindow {
    fn default() -> Self {
        Self::new(DEDUP_WINDOW_DEFAULT)
    }
}

impl DedupWindow {
    /// A window of the last `window` ids, clamped to `1..=`[`DEDUP_WINDOW_MAX`]. Memory grows with the
    /// ids recorded, up to the window.
    pub fn new(window: usize) -> Self {
        let window = window.clamp(1, DEDUP_WINDOW_MAX);
        Self { order: VecDeque::new(), members: HashSet::new(), window, evicted: 0 }
    }

    /// How many ids it remembers at most.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Whether `id` is among the ids remembered.
    pub fn contains(&self, id: MessageId) -> bool {
        self.members.contains(&id)
    }

    /// Records `id`, evicting the oldest id when the window is full. Returns `false`, and changes
    /// nothing, when `id` is remembered already (its place is not refreshed: as JetStream, the window
    /// keeps the first copy).
    pub fn record(&mut self, id: MessageId) -> bool {
        if !self.members.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.window {
            let oldest = self.order.pop_front().expect("a window over its bound is not empty");
            assert!(self.members.remove(&oldest), "an evicted id was a member");
            self.evicted += 1;
        }
        assert!(self.order.len() == self.members.len(), "the order and the membership agree");
        true
    }

    /// How many ids it remembers.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// How many ids it has forgotten to stay within the window.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

/// Counters of a [`DedupStore`], a snapshot.
///
/// Every [`DedupStore::begin`] is counted once: `begun = recorded + not_acked + abandoned +
/// in_progress + duplicates_skipped + concurrent_duplicates` ([`DedupStats::conserved`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DedupStats {
    /// The window in use.
    pub window: usize,
    /// Ids remembered now.
    pub len: usize,
    /// Ids being handled now.
    pub in_progress: usize,
    /// Deliveries looked up ([`DedupStore::begin`] calls).
    pub begun: u64,
    /// Runs that acked: their ids were recorded.
    pub recorded: u64,
    /// Runs that ended without an ack (`Nack`, `Reject`, `Defer`): not recorded, to be retried.
    pub not_acked: u64,
    /// Runs that never finished (the handler panicked, or its future was dropped): not recorded.
    pub abandoned: u64,
    /// Deliveries of a recorded id: acked without running the handler.
    pub duplicates_skipped: u64,
    /// Deliveries of an id in progress elsewhere: nacked with requeue rather than run twice.
    pub concurrent_duplicates: u64,
    /// Recorded ids forgotten to stay within the window.
    pub evicted: u64,
}

impl DedupStats {
    /// Whether every delivery looked up is accounted for.
    pub fn conserved(&self) -> bool {
        let settled = self.recorded + self.not_acked + self.abandoned + self.in_progress as u64;
        self.begun == settled + self.duplicates_skipped + self.concurrent_duplicates
    }
}

/// What [`DedupStore::begin`] found.
#[derive(Debug)]
#[must_use = "a claim that is dropped unfinished is counted abandoned"]
pub enum Begin {
    /// New: run the handler, then [`Claim::finish`] with its outcome.
    Run(Claim),
    /// Recorded already: ack without running the handler.
    Duplicate,
    /// Being handled elsewhere now: requeue rather than run it twice.
    InProgress,
}

/// The right to handle one id, held while its handler runs.
///
/// Dropping it unfinished (a panic, a cancelled future) releases the id without recording it. It is
/// `Send`: a handler that settles by hand (returns `Defer`) moves it along with the delivery's
/// [`Acker`](crate::Acker), and finishes it with `Outcome::Ack` once the ack went through.
#[derive(Debug)]
#[must_use = "a claim that is dropped unfinished is counted abandoned"]
pub struct Claim {
    store: DedupStore,
    id: MessageId,
    finished: bool,
}

impl Claim {
    /// The id claimed.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Ends the run: records the id when `outcome` is [`Outcome::Ack`], releases it otherwise.
    /// Returns `outcome`.
    pub fn finish(mut self, outcome: Outcome) -> Outcome {
        self.finished = true;
        let mut shared = self.store.lock();
        shared.release(self.id);
        if outcome == Outcome::Ack {
            assert!(shared.window.record(self.id), "a claimed id was not recorded before");
            shared.stats.recorded += 1;
        } else {
            shared.stats.not_acked += 1;
        }
        outcome
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.finished {
            let mut shared = self.store.lock();
            shared.release(self.id);
            shared.stats.abandoned += 1;
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    window: DedupWindow,
    /// Ids claimed and not finished: at most one per subscriber sharing the store.
    in_progress: HashSet<MessageId>,
    stats: DedupStats,
}

impl Shared {
    fn release(&mut self, id: MessageId) {
        assert!(self.in_progress.remove(&id), "a claimed id was in progress");
    }
}

/// The ids handled, shared by every subscriber (and every incarnation of one) given a clone.
///
/// Cheap to clone; every clone is the same store. See the [module docs](super) for what it promises.
///
/// ```
/// use tubemail::consumer::{Begin, DedupStore};
/// use tubemail::ids::MessageId;
/// use tubemail::Outcome;
///
/// let store = DedupStore::new(2);
/// for id in [1, 2, 3].map(MessageId) {
///     let Begin::Run(claim) = store.begin(id) else { unreachable!("each id is new") };
///     claim.finish(Outcome::Ack);
/// }
/// assert!(matches!(store.begin(MessageId(3)), Begin::Duplicate));
/// // Id 1 was evicted to keep the window at 2: a copy of it would run again.
/// assert!(!store.contains(MessageId(1)));
/// assert_eq!((store.len(), store.stats().evicted), (2, 1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DedupStore {
    shared: Arc<Mutex<Shared>>,
}

impl DedupStore {
    /// A store remembering the last `window` recorded ids, clamped to `1..=`[`DEDUP_WINDOW_MAX`]
    /// ([`DEDUP_WINDOW_DEFAULT`] with [`DedupStore::default`]).
    pub fn new(window: usize) -> Self {
        let shared = Shared { window: DedupWindow::new(window), ..Shared::default() };
        Self { shared: Arc::new(Mutex::new(shared)) }
    }

    /// Forgets every recorded id: what a store kept in the subscriber's memory would do on a restart.
    /// Only the broken variant the simulation tests use calls it.
    pub(crate) fn forget_all(&self) {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let window = shared.window.window();
        shared.window = DedupWindow::new(window);
    }

    /// How many ids it remembers at most.
    pub fn window(&self) -> usize {
        self.lock().window.window()
    }

    /// Whether `id` has been recorded (and not evicted).
    pub fn contains(&self, id: MessageId) -> bool {
        self.lock().window.contains(id)
    }

    /// How many ids it remembers.
    pub fn len(&self) -> usize {
        self.lock().window.len()
    }

    /// Whether it remembers none.
    pub fn is_empty(&self) -> bool {
        self.lock().window.is_empty()
    }

    /// Its counters.
    pub fn stats(&self) -> DedupStats {
        let shared = self.lock();
        DedupStats {
            window: shared.window.window(),
            len: shared.window.len(),
            in_progress: shared.in_progress.len(),
            evicted: shared.window.evicted(),
            ..shared.stats
        }
    }

    /// Looks `id` up before handling it, and claims it when it is new. What [`Idempotent`] does for
    /// each delivery; call it directly to settle by hand (see the [module
    /// docs](super#delivery-guarantees)).
    ///
    /// [`Idempotent`]: super::Idempotent
    pub fn begin(&self, id: MessageId) -> Begin {
        let mut shared = self.lock();
        shared.stats.begun += 1;
        if shared.window.contains(id) {
            shared.stats.duplicates_skipped += 1;
            Begin::Duplicate
        } else if !shared.in_progress.insert(id) {
            shared.stats.concurrent_duplicates += 1;
            Begin::InProgress
        } else {
            drop(shared);
            Begin::Run(Claim { store: self.clone(), id, finished: false })
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // No user code runs under this lock and each update leaves the state whole, so a poisoned lock
        // (a failed assertion) still holds a usable state.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
