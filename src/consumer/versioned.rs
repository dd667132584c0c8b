//! Last writer wins, by version: keyed state filled from events that carry it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{Delivery, Handler, Outcome};

/// What [`VersionedState::apply`] did with an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applied {
    /// Newer than the version held (or the key was new): stored.
    Applied,
    /// Older than the version held: dropped.
    Stale,
    /// The version held: dropped, the value first stored kept.
    Duplicate,
}

/// Counters of a [`VersionedState`], a snapshot. `applied + stale + duplicate` is the number of
/// updates offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionedStats {
    /// Keys held.
    pub keys: usize,
    /// Updates stored.
    pub applied: u64,
    /// Updates older than the version held, dropped.
    pub stale: u64,
    /// Updates of the version held, dropped.
    pub duplicate: u64,
}

struct Versions<K, V, N> {
    entries: BTreeMap<K, (N, V)>,
    stats: VersionedStats,
}

/// The latest version of each key's value: an update is stored only if its version is greater than
/// the one held, so the state ends as the updates give it in version order, whatever order they
/// arrive in and however often.
///
/// `N` is the version: any ordered type, a `u64` counter by default, or an `updated_at` with a
/// tiebreaker. Each change of a key needs a greater version than the last (see the [module
/// docs](super#delivery-guarantees)). To delete a key without forgetting its version (a later stale
/// update would bring it back), store a tombstone: `V = Option<T>`.
///
/// Cheap to clone; every clone is the same state.
///
/// ```
/// use tubemail::consumer::{Applied, VersionedState};
///
/// let addresses = VersionedState::<u32, &str>::new();
/// assert_eq!(addresses.apply(7, 3, "3 New Lane"), Applied::Applied);
/// assert_eq!(addresses.apply(7, 2, "2 Mid Street"), Applied::Stale); // arrived late
/// assert_eq!(addresses.apply(7, 3, "3 New Lane"), Applied::Duplicate); // redelivered
/// assert_eq!(addresses.get(&7), Some((3, "3 New Lane")));
/// ```
pub struct VersionedState<K, V, N = u64> {
    versions: Arc<Mutex<Versions<K, V, N>>>,
}

impl<K, V, N> Clone for VersionedState<K, V, N> {
    fn clone(&self) -> Self {
        Self { versions: self.versions.clone() }
    }
}

impl<K: Ord, V, N: Ord> Default for VersionedState<K, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug, V: fmt::Debug, N: fmt::Debug> fmt::Debug for VersionedState<K, V, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions = self.lock();
        f.debug_struct("VersionedState")
            .field("entries", &versions.entries)
            .field("stats", &versions.stats)
            .finish()
    }
}

impl<K: Ord, V, N: Ord> VersionedState<K, V, N> {
    /// An empty state.
    pub fn new() -> Self {
        let versions = Versions { entries: BTreeMap::new(), stats: VersionedStats::default() };
        Self { versions: Arc::new(Mutex::new(versions)) }
    }

    /// Stores `value` as `key`'s version `version` if that is greater than the version held.
    pub fn apply(&self, key: K, version: N, value: V) -> Applied {
        let mut versions = self.lock();
        let applied = match versions.entries.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert((version, value));
                Applied::Applied
            }
            Entry::Occupied(mut entry) => match version.cmp(&entry.get().0) {
                std::cmp::Ordering::Greater => {
                    entry.insert((version, value));
                    Applied::Applied
                }
                std::cmp::Ordering::Equal => Applied::Duplicate,
                std::cmp::Ordering::Less => Applied::Stale,
            },
        };
        let stats = &mut versions.stats;
        match applied {
            Applied::Applied => stats.applied += 1,
            Applied::Stale => stats.stale += 1,
            Applied::Duplicate => stats.duplicate += 1,
        }
        applied
    }

    /// The version and value held for `key`.
    pub fn get(&self, key: &K) -> Option<(N, V)>
    where
        N: Clone,
        V: Clone,
    {
        self.lock().entries.get(key).cloned()
    }

    /// The version held for `key`.
    pub fn version(&self, key: &K) -> Option<N>
    where
        N: Clone,
    {
        self.lock().entries.get(key).map(|(version, _)| version.clone())
    }

    /// Every key's version and value, in key order.
    pub fn snapshot(&self) -> BTreeMap<K, (N, V)>
    where
        K: Clone,
        N: Clone,
        V: Clone,
    {
        self.lock().entries.clone()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Its counters.
    pub fn stats(&self) -> VersionedStats {
        let versions = self.lock();
        VersionedStats { keys: versions.entries.len(), ..versions.stats }
    }
}

impl<K, V, N> VersionedState<K, V, N> {
    fn lock(&self) -> MutexGuard<'_, Versions<K, V, N>> {
        // A panic under this lock can only come from a user's `Ord` or `Clone`, which leaves the map
        // as the standard library left it: whole.
        self.versions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handler that applies each delivery to a [`VersionedState`] and acks it, stale and duplicate
/// updates included (they are counted in [`VersionedStats`]: the state already holds newer news).
///
/// `extract` reads the key, the version and the value from a payload.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tubemail::consumer::{ApplyVersioned, VersionedState};
/// use tubemail::{Broker, QueueSpec, TopicKind, TopicSpec, Topology};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct AddressChanged { order: u32, version: u64, street: String }
///
/// # actix::System::new().block_on(async {
/// tokio::time::pause();
/// let topology = Topology::new()
///     .topic("orders", TopicSpec::new(TopicKind::Fanout))
///     .queue("shipping", QueueSpec::default())
///     .bind("orders", "shipping", "");
/// let broker = Broker::start(topology).unwrap();
/// let addresses = VersionedState::new();
/// let extract = |e: &AddressChanged| (e.order, e.version, e.street.clone());
/// broker.subscribe("shipping", ApplyVersioned::new(addresses.clone(), extract)).await.unwrap();
/// // Version 2 arrives after version 3, and version 3 twice.
/// for (version, street) in [(1, "Old Road"), (3, "New Lane"), (2, "Mid Street"), (3, "New Lane")] {
///     let event = AddressChanged { order: 7, version, street: street.into() };
///     broker.publish("orders", "", event).await.unwrap();
/// }
/// while addresses.stats().applied + addresses.stats().stale + addresses.stats().duplicate < 4 {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
/// }
/// assert_eq!(addresses.get(&7), Some((3, "New Lane".to_string())));
/// assert_eq!((addresses.stats().stale, addresses.stats().duplicate), (1, 1));
/// # });
/// ```
pub struct ApplyVersioned<K, V, N, F> {
    state: VersionedState<K, V, N>,
    extract: F,
}

impl<K, V, N, F> fmt::Debug for ApplyVersioned<K, V, N, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplyVersioned").finish_non_exhaustive()
    }
}

impl<K, V, N, F> ApplyVersioned<K, V, N, F> {
    /// Applies to `state` what `extract` reads from each delivery.
    pub fn new(state: VersionedState<K, V, N>, extract: F) -> Self {
        Self { state, extract }
    }

    /// The state.
    pub fn state(&self) -> &VersionedState<K, V, N> {
        &self.state
    }
}

impl<T, K, V, N, F> Handler<T> for ApplyVersioned<K, V, N, F>
where
    T: 'static,
    K: Ord + Send + 'static,
    V: Send + 'static,
    N: Ord + Send + 'static,
    F: FnMut(&T) -> (K, N, V) + Send + 'static,
{
    type Future = Ready<Outcome>;

    fn handle(&mut self, delivery: Delivery<T>) -> Ready<Outcome> {
        let (key, version, value) = (self.extract)(delivery.value());
        self.state.apply(key, version, value);
        ready(Outcome::Ack)
    }
}

/// [`ApplyVersioned`] as a synchronous handler, for
/// [`Broker::subscribe_sync`](crate::Broker::subscribe_sync).
pub fn apply_versioned_sync<T, K, V, N, F>(
    state: VersionedState<K, V, N>,
    mut extract: F,
) -> impl FnMut(Delivery<T>) -> Outcome + Send + 'static
where
    T: 'static,
    K: Ord + Send + 'static,
    V: Send + 'static,
    N: Ord + Send + 'static,
    F: FnMut(&T) -> (K, N, V) + Send + 'static,
{
    move |delivery| {
        let (key, version, value) = extract(delivery.value());
        state.apply(key, version, value);
        Outcome::Ack
    }
}
