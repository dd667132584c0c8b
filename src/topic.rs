//! Topics: routing tables owned by a topic actor, read by publishers.
//!
//! As in RabbitMQ, where an exchange is a table that the publishing channel consults rather than a
//! process of its own, a publish is routed on the publisher's side: it reads the topic's current
//! routing table (an immutable snapshot, swapped atomically when bindings change) and hands the
//! message to each matching queue. The topic actor owns the table and serializes changes to it. This
//! removes one actor hop (and its allocations and wake-ups) from every publish, and lets every publish
//! return its confirm at once.
//!
//! # Delivery guarantees
//! A publish reaches each matching queue at most once, however many of its bindings match. A message
//! that matches nothing goes to the topic's alternate queue when there is one; otherwise it is counted
//! as `dropped_unroutable` and the confirm says [`Confirm::Unroutable`](crate::Confirm::Unroutable).
//!
//! # Ordering
//! Messages from one publisher reach each queue in publish order. A binding change is visible to every
//! publish that starts after the change was applied.
//!
//! # Backpressure
//! Routing never waits; each target queue applies its own overflow policy.
//!
//! # Shutdown
//! The topic actor stops with the broker; the tables it published stay readable until then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::ids::QueueId;
use crate::protocol::{Bind, StopTopic, Unbind, UnbindQueue};
use crate::queue::QueueHandle;
use crate::queue::QueueTable;
use crate::queue::{TopicIndex, TopicTally};
use crate::routing::{RoutingError, RoutingTable};
use crate::stats::TopicStats;
use crate::stream::StreamHandle;
use crate::topology::TopicKind;

/// The topic's counters, updated by publishers.
#[derive(Debug, Default)]
pub(crate) struct TopicCounters {
    pub(crate) published: AtomicU64,
    pub(crate) routed: AtomicU64,
    pub(crate) unroutable: AtomicU64,
    pub(crate) alternate: AtomicU64,
    pub(crate) dropped_unroutable: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) routed_publishes: AtomicU64,
    pub(crate) refused_publishes: AtomicU64,
}

/// A topic as publishers see it.
pub(crate) struct TopicHandle {
    pub(crate) name: Arc<str>,
    pub(crate) kind: TopicKind,
    pub(crate) alternate: Option<QueueId>,
    pub(crate) table: Arc<Published>,
    pub(crate) cache: RouteCache<Arc<QueueHandle>>,
    pub(crate) counters: TopicCounters,
    pub(crate) addr: Addr<TopicActor>,
    /// The streams bound to the topic, when there are any (bound in the topology).
    pub(crate) streams: Option<StreamRoutes>,
    /// Its position among the broker's topics: what its queue copies carry.
    pub(crate) index: TopicIndex,
    /// Payloads of the wrong type, per topic: the broker's table, counted by subscribers.
    pub(crate) undecodable: Arc<TopicTally>,
}

/// A topic's stream bindings: a routing table whose ids index `targets`.
pub(crate) struct StreamRoutes {
    table: RoutingTable,
    targets: Vec<Arc<StreamHandle>>,
}

impl StreamRoutes {
    /// Routes for `bindings` (stream, key) on a topic of `kind`.
    pub(crate) fn new(
        kind: TopicKind,
        bindings: impl IntoIterator<Item = (Arc<StreamHandle>, String)>,
    ) -> Result<Self, RoutingError> {
        let mut table = RoutingTable::new(kind);
        let mut targets: Vec<Arc<StreamHandle>> = Vec::new();
        for (stream, key) in bindings {
            let id = match targets.iter().position(|t| Arc::ptr_eq(t, &stream)) {
                Some(i) => i,
                None => {
                    targets.push(stream);
                    targets.len() - 1
                }
            };
            table.bind(QueueId(id as u32), &key, 1)?;
        }
        Ok(Self { table, targets })
    }

    /// The streams `key` is appended to, each once.
    pub(crate) fn route(&self, key: &str) -> SmallVec<[Arc<StreamHandle>; 2]> {
        let mut ids = SmallVec::<[QueueId; 8]>::new();
        self.table.route(key, &mut ids);
        ids.iter().map(|id| self.targets[id.0 as usize].clone()).collect()
    }
}

/// Where a publish goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Queues,
    Alternate,
    Unroutable,
}

impl TopicHandle {
    /// Runs `f` with the route of `key` and its target queues (the alternate queue for
    /// [`Route::Alternate`]; none for [`Route::Unroutable`] or a deleted queue).
    ///
    /// A cached route is used in place, under its cache set's lock, and costs two plain atomic loads
    /// (the topic's and the queue table's generations) besides the hash and compare; only a miss loads
    /// the routing snapshot and the queue table (`arc_swap`) and resolves queue ids to handles.
    pub(crate) fn with_route<R>(
        &self,
        key: &str,
        queues: &QueueTable,
        f: impl FnOnce(Route, &[Arc<QueueHandle>]) -> R,
    ) -> R {
        // A fan-out topic routes every key alike: one cached route serves them all.
        let cache_key = if self.kind == TopicKind::Fanout { "" } else { key };
        let generations = (self.table.generation.load(Ordering::Acquire), queues.generation());
        let f = match self.cache.try_hit(cache_key, generations, f) {
            Ok(result) => return result,
            Err(f) => f,
        };
        let snapshot = self.table.snapshot.load();
        let queues = queues.load();
        let mut ids = SmallVec::<[QueueId; 8]>::new();
        snapshot.table.route(key, &mut ids);
        let route = match (ids.is_empty(), self.alternate) {
            (false, _) => Route::Queues,
            (true, Some(alternate)) => {
                ids.push(alternate);
                Route::Alternate
            }
            (true, None) => Route::Unroutable,
        };
        let mut targets: SmallVec<[Arc<QueueHandle>; 4]> =
            ids.iter().filter_map(|id| queues.by_id.get(id).cloned()).collect();
        let route = match (route, targets.is_empty(), self.alternate) {
            // Every matching queue was deleted and the topic has not dropped its bindings yet: the
            // key reaches no live queue.
            (Route::Queues, true, Some(alternate)) => match queues.by_id.get(&alternate) {
                Some(queue) => {
                    targets.push(queue.clone());
                    Route::Alternate
                }
                None => Route::Unroutable,
            },
            (Route::Queues, true, None) | (Route::Alternate, true, _) => Route::Unroutable,
            (route, ..) => route,
        };
        self.cache.insert(cache_key, (snapshot.generation, generations.1), route, &targets);
        f(route, &targets)
    }

    pub(crate) fn stats(&self) -> TopicStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TopicStats {
            published: get(&c.published),
            routed: get(&c.routed),
            unroutable: get(&c.unroutable),
            alternate: get(&c.alternate),
            dropped_unroutable: get(&c.dropped_unroutable),
            refused: get(&c.refused),
            routed_publishes: get(&c.routed_publishes),
            refused_publishes: get(&c.refused_publishes),
            bindings: self.table.snapshot.load().table.len() as u64,
            undecodable: self.undecodable.get(self.index),
        }
    }
}

/// A published routing table. The generation tells cached routes of an older table apart.
pub(crate) struct Snapshot {
    pub(crate) table: RoutingTable,
    pub(crate) generation: u64,
}

/// A topic's current routing table, and its generation mirrored for a check without `arc_swap`.
pub(crate) struct Published {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Stored after the snapshot: never ahead of it.
    pub(crate) generation: AtomicU64,
}

/// Routes a topic's route cache holds: sets of [`ROUTE_CACHE_WAYS`].
pub(crate) const ROUTE_CACHE_SLOTS: usize = 256;
/// Ways per set of the route cache: two keys whose hashes share a set both stay cached, where a
/// direct-mapped cache let them evict each other on every publish (two of the fan-out benchmark's
/// eight keys did).
const ROUTE_CACHE_WAYS: usize = 2;
/// Routing keys longer than this are not cached.
const ROUTE_CACHE_KEY_MAX: usize = 64;

/// A two-way set-associative cache of recent routes of a topic, by routing key: most applications
/// publish a few hundred distinct keys, and a hit costs a hash and a comparison instead of a trie walk
/// and a lookup of each target queue. Each set has its own lock, taken with `try_lock` so that
/// publishers never wait for one another: a busy set is a miss. An entry holds the generations of the
/// routing table and of the queue table it was made from, and matches only while both are current.
pub(crate) struct RouteCache<T> {
    sets: Box<[CacheSet<T>]>,
}

/// One set of the route cache: its ways, the most recently used first.
type CacheSet<T> = Mutex<[Option<CachedRoute<T>>; ROUTE_CACHE_WAYS]>;

struct CachedRoute<T> {
    /// The routing table's and the queue table's generations.
    generations: (u64, u64),
    key: Box<str>,
    route: Route,
    targets: SmallVec<[T; 4]>,
}

impl<T> CachedRoute<T> {
    fn matches(&self, generations: (u64, u64), key: &str) -> bool {
        // A fan-out topic's one route has the empty key: spare that compare the call to `memcmp`,
        // which measured a fifth of a one-queue publish.
        self.generations == generations
            && self.key.len() == key.len()
            && (key.is_empty() || &*self.key == key)
    }
}

impl<T: Clone> RouteCache<T> {
    pub(crate) fn new() -> Self {
        let sets = ROUTE_CACHE_SLOTS / ROUTE_CACHE_WAYS;
        Self { sets: (0..sets).map(|_| Mutex::new([None, None])).collect() }
    }

    /// Runs `f` on the current cached route of `key`, under its set's lock; hands `f` back on a miss
    /// or a busy set.
    pub(crate) fn try_hit<R, F: FnOnce(Route, &[T]) -> R>(
        &self,
        key: &str,
        generations: (u64, u64),
        f: F,
    ) -> Result<R, F> {
        if key.len() > ROUTE_CACHE_KEY_MAX {
            return Err(f);
        }
        let Ok(mut set) = self.set(key).try_lock() else { return Err(f) };
        let [newest, older] = &mut *set;
        if older.as_ref().is_some_and(|hit| hit.matches(generations, key)) {
            // The most recently used route goes first; the other becomes the next to be evicted.
            std::mem::swap(newest, older);
        }
        match newest.as_ref().filter(|hit| hit.matches(generations, key)) {
            Some(hit) => Ok(f(hit.route, &hit.targets)),
            None => Err(f),
        }
    }

    /// Caches a route, evicting the set's least recently used one (nothing when the set is busy).
    pub(crate) fn insert(&self, key: &str, generations: (u64, u64), route: Route, targets: &[T]) {
        if key.len() > ROUTE_CACHE_KEY_MAX {
            return;
        }
        let Ok(mut set) = self.set(key).try_lock() else { return };
        let [newest, older] = &mut *set;
        *older = newest.take();
        *newest = Some(CachedRoute { generations, key: key.into(), route, targets: targets.into() });
    }

    fn set(&self, key: &str) -> &CacheSet<T> {
        &self.sets[set_of(key) % self.sets.len()]
    }
}

impl RouteCache<QueueId> {
    /// Routes `key` through the cache as publishers do, for a table of queue ids: the `bindings`
    /// benchmark and the tests.
    pub(crate) fn route(&self, snapshot: &Snapshot, key: &str, out: &mut SmallVec<[QueueId; 8]>) {
        let generations = (snapshot.generation, 0);
        let hit = self
            .try_hit(key, generations, |_, targets| {
                out.clear();
                out.extend_from_slice(targets);
            })
            .is_ok();
        if !hit {
            snapshot.table.route(key, out);
            self.insert(key, generations, Route::Queues, out);
        }
    }
}

/// The cache set of a key: FNV-1a, finalized so that its low bits depend on every byte.
fn set_of(key: &str) -> usize {
    let hash = crate::routing::hash::fmix64(crate::routing::hash::fnv1a64(key.as_bytes()));
    hash as usize
}

/// The topic actor: owns the routing table and publishes snapshots of it.
pub(crate) struct TopicActor {
    table: RoutingTable,
    generation: u64,
    published: Arc<Published>,
}

impl TopicActor {
    pub(crate) fn new(kind: TopicKind) -> (Self, Arc<Published>) {
        let snapshot = Snapshot { table: RoutingTable::new(kind), generation: 0 };
        let published =
            Arc::new(Published { snapshot: ArcSwap::from_pointee(snapshot), generation: AtomicU64::new(0) });
        (Self { table: RoutingTable::new(kind), generation: 0, published: published.clone() }, published)
    }

    /// Applies a change before the actor starts (the topology's own bindings).
    pub(crate) fn bind_now(&mut self, queue: QueueId, key: &str, weight: u32) -> Result<bool, RoutingError> {
        let added = self.table.bind(queue, key, weight)?;
        self.publish();
        Ok(added)
    }

    fn publish(&mut self) {
        self.generation += 1;
        let snapshot = Snapshot { table: self.table.clone(), generation: self.generation };
        self.published.snapshot.store(Arc::new(snapshot));
        self.published.generation.store(self.generation, Ordering::Release);
    }
}

impl Actor for TopicActor {
    type Context = Context<Self>;
}

impl Handler<StopTopic> for TopicActor {
    type Result = ();

    fn handle(&mut self, _: StopTopic, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<Bind> for TopicActor {
    type Result = Result<bool, RoutingError>;

    fn handle(&mut self, msg: Bind, _ctx: &mut Self::Context) -> Self::Result {
        self.bind_now(msg.queue, &msg.key, msg.weight)
    }
}

impl Handler<Unbind> for TopicActor {
    type Result = bool;

    fn handle(&mut self, msg: Unbind, _ctx: &mut Self::Context) -> bool {
        let removed = self.table.unbind(msg.queue, &msg.key);
        if removed {
            self.publish();
        }
        removed
    }
}

impl Handler<UnbindQueue> for TopicActor {
    type Result = usize;

    fn handle(&mut self, msg: UnbindQueue, _ctx: &mut Self::Context) -> usize {
        let removed = self.table.unbind_queue(msg.0);
        if removed > 0 {
            self.publish();
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn snapshot(bindings: &[(u32, String)], generation: u64) -> Snapshot {
        let mut table = RoutingTable::new(TopicKind::Topic);
        for (queue, pattern) in bindings {
            table.bind(QueueId(*queue), pattern, 1).expect("valid pattern");
        }
        Snapshot { table, generation }
    }

    fn word() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "c", "orders", "paid"]).prop_map(str::to_owned)
    }

    fn key() -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 1..4).prop_map(|w| w.join("."))
    }

    fn pattern() -> impl Strategy<Value = String> {
        let word = prop_oneof![word(), Just("*".to_owned()), Just("#".to_owned())];
        prop::collection::vec(word, 1..4).prop_map(|w| w.join("."))
    }

    proptest! {
        /// Whatever hits, misses and evictions a key sequence makes (more distinct keys than slots
        /// included), and across a change of routing table, the cache routes as the table does.
        #[test]
        fn cached_routes_equal_the_tables(
            before in prop::collection::vec((0..4_u32, pattern()), 0..6),
            after in prop::collection::vec((0..4_u32, pattern()), 0..6),
            keys in prop::collection::vec(key(), 1..200),
            filler in 0..400_usize,
        ) {
            let cache = RouteCache::new();
            let tables = [snapshot(&before, 1), snapshot(&after, 2)];
            let (mut cached, mut direct) = (SmallVec::new(), SmallVec::new());
            for (i, key) in keys.iter().enumerate() {
                let table = &tables[usize::from(i >= keys.len() / 2)];
                cache.route(table, key, &mut cached);
                table.table.route(key, &mut direct);
                prop_assert_eq!(&cached, &direct, "key {}", key);
                // Distinct keys beyond the cache's size force evictions.
                cache.route(table, &format!("filler.{}", (i * 7 + filler) % 600), &mut cached);
            }
        }
    }

    /// Two keys of one set both stay cached: they no longer evict each other.
    #[test]
    fn two_keys_of_one_set_are_both_cached() {
        let table = snapshot(&[(0, "orders.*".to_owned())], 1);
        let first = "orders.a";
        let sets = ROUTE_CACHE_SLOTS / ROUTE_CACHE_WAYS;
        let second = (0..)
            .map(|i| format!("orders.k{i}"))
            .find(|k| set_of(k) % sets == set_of(first) % sets)
            .expect("some key shares the set");
        let cache = RouteCache::new();
        let mut out = SmallVec::new();
        cache.route(&table, first, &mut out);
        cache.route(&table, &second, &mut out);
        let set = cache.sets[set_of(first) % sets].lock().expect("unlocked");
        let keys: Vec<&str> = set.iter().flatten().map(|r| &*r.key).collect();
        assert_eq!(keys, [second.as_str(), first]);
    }
}
