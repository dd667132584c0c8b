//! The routing table: bindings in insertion order, and an index per kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::hash::HashRing;
use super::trie::TopicTrie;
use super::{validate_pattern, RoutingError, TopicKind, WEIGHT_MAX};
use crate::ids::QueueId;

/// One binding of a queue to a topic, as [`RoutingTable::bindings`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The bound queue.
    pub queue: QueueId,
    /// The binding key: a pattern for [`TopicKind::Topic`], ignored by [`TopicKind::Fanout`].
    pub key: String,
    /// The binding's share of the buckets for [`TopicKind::Hash`]; no effect for other kinds.
    pub weight: u32,
}

/// The routing index of one topic: its bindings, and the queues a routing key reaches.
///
/// See the [module docs](super) for the matching rules, the cost of each operation and what is
/// deterministic.
///
/// ```
/// use smallvec::SmallVec;
/// use tubemail::ids::QueueId;
/// use tubemail::routing::{RoutingTable, TopicKind};
///
/// let mut table = RoutingTable::new(TopicKind::Hash);
/// for queue in 0..4 {
///     table.bind(QueueId(queue), "", 1)?;
/// }
/// let mut out = SmallVec::new();
/// table.route("customer-17", &mut out);
/// assert_eq!(out.len(), 1);
/// let first = out[0];
/// table.route("customer-17", &mut out);
/// assert_eq!(out.as_slice(), &[first]);
/// # Ok::<(), tubemail::routing::RoutingError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Every binding, keyed by insertion sequence number.
    entries: BTreeMap<u64, Binding>,
    /// Per queue, its binding keys and their sequence numbers.
    by_queue: BTreeMap<QueueId, BTreeMap<Box<str>, u64>>,
    next_seq: u64,
    index: Index,
}

#[derive(Debug, Clone)]
enum Index {
    Topic(TopicTrie),
    /// Binding key to its queues, ascending and each once.
    Direct(BTreeMap<Box<str>, SmallVec<[QueueId; 2]>>),
    /// Routes to the keys of `by_queue`.
    Fanout,
    Hash(HashRing),
}

impl RoutingTable {
    /// An empty table for a topic of this kind.
    pub fn new(kind: TopicKind) -> Self {
        let index = match kind {
            TopicKind::Topic => Index::Topic(TopicTrie::default()),
            TopicKind::Direct => Index::Direct(BTreeMap::new()),
            TopicKind::Fanout => Index::Fanout,
            TopicKind::Hash => Index::Hash(HashRing::default()),
        };
        RoutingTable { entries: BTreeMap::new(), by_queue: BTreeMap::new(), next_seq: 0, index }
    }

    /// The kind the table was made for.
    pub fn kind(&self) -> TopicKind {
        match self.index {
            Index::Topic(_) => TopicKind::Topic,
            Index::Direct(_) => TopicKind::Direct,
            Index::Fanout => TopicKind::Fanout,
            Index::Hash(_) => TopicKind::Hash,
        }
    }

    /// Binds `queue` to the topic with binding key `key`, and returns whether the binding is new.
    ///
    /// Binding the same (queue, key) pair again is not an error, as AMQP's `queue.bind` is
    /// idempotent: it returns `Ok(false)` and the binding keeps its place in insertion order but
    /// takes the new `weight`. Only [`TopicKind::Hash`] checks and uses the weight; other kinds
    /// store it as given.
    ///
    /// # Errors
    ///
    /// Refuses the binding, and changes nothing, when [`validate_pattern`] refuses `key`
    /// ([`RoutingError::PatternTooLong`], [`RoutingError::InvalidPattern`]) or, for a hash table, when
    /// `weight` is 0 ([`RoutingError::ZeroWeight`]) or over [`WEIGHT_MAX`]
    /// ([`RoutingError::WeightTooLarge`]).
    ///
    /// ```
    /// use tubemail::ids::QueueId;
    /// use tubemail::routing::{RoutingError, RoutingTable, TopicKind};
    ///
    /// let mut table = RoutingTable::new(TopicKind::Topic);
    /// assert_eq!(table.bind(QueueId(1), "orders.#", 1), Ok(true));
    /// assert_eq!(table.bind(QueueId(1), "orders.#", 1), Ok(false));
    /// assert!(matches!(
    ///     table.bind(QueueId(1), "orders.pa*d", 1),
    ///     Err(RoutingError::InvalidPattern { .. })
    /// ));
    /// assert_eq!(table.len(), 1);
    /// ```
    pub fn bind(&mut self, queue: QueueId, key: &str, weight: u32) -> Result<bool, RoutingError> {
        let kind = self.kind();
        validate_pattern(kind, key)?;
        if kind == TopicKind::Hash {
            check_weight(weight)?;
        }
        if let Some(seq) = self.by_queue.get(&queue).and_then(|keys| keys.get(key)) {
            self.reweigh(*seq, weight);
            return Ok(false);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_queue.entry(queue).or_default().insert(key.into(), seq);
        let binding = Binding { queue, key: key.to_owned(), weight };
        self.entries.insert(seq, binding);
        match &mut self.index {
            Index::Topic(trie) => {
                let added = trie.insert(key, queue);
                debug_assert!(added, "the trie held a binding the table did not");
            }
            Index::Direct(keys) => insert_sorted(keys.entry(key.into()).or_default(), queue),
            Index::Fanout => {}
            // The new binding has the highest sequence number, so its buckets go last.
            Index::Hash(ring) => ring.push(queue, weight),
        }
        Ok(true)
    }

    /// Removes the binding of `queue` with binding key `key`; false if there was none.
    ///
    /// For [`TopicKind::Hash`], the buckets of the bindings after it shift down, so keys move between
    /// queues; removing the last binding moves only the keys it owned.
    pub fn unbind(&mut self, queue: QueueId, key: &str) -> bool {
        let Some(keys) = self.by_queue.get_mut(&queue) else {
            return false;
        };
        let Some(seq) = keys.remove(key) else {
            return false;
        };
        if keys.is_empty() {
            self.by_queue.remove(&queue);
        }
        self.entries.remove(&seq);
        self.unindex(queue, key);
        self.rebuild_ring();
        true
    }

    /// Removes every binding of `queue`, as when the queue is deleted, and returns how many there
    /// were.
    pub fn unbind_queue(&mut self, queue: QueueId) -> usize {
        let Some(keys) = self.by_queue.remove(&queue) else {
            return 0;
        };
        for (key, seq) in &keys {
            self.entries.remove(seq);
            self.unindex(queue, key);
        }
        self.rebuild_ring();
        keys.len()
    }

    /// Writes into `out` the queues that a message with routing key `key` reaches: each at most
    /// once, in ascending [`QueueId`] order. `out` is cleared first, and keeps its capacity for reuse.
    ///
    /// The key's length is not checked here (see [`validate_key`](super::validate_key)). A
    /// [`TopicKind::Hash`] table writes exactly one queue when it has any binding.
    ///
    /// ```
    /// use smallvec::SmallVec;
    /// use tubemail::ids::QueueId;
    /// use tubemail::routing::{RoutingTable, TopicKind};
    ///
    /// let mut table = RoutingTable::new(TopicKind::Direct);
    /// table.bind(QueueId(3), "paid", 1)?;
    /// table.bind(QueueId(1), "paid", 1)?;
    /// let mut out = SmallVec::new();
    /// table.route("paid", &mut out);
    /// assert_eq!(out.as_slice(), &[QueueId(1), QueueId(3)]);
    /// # Ok::<(), tubemail::routing::RoutingError>(())
    /// ```
    pub fn route(&self, key: &str, out: &mut SmallVec<[QueueId; 8]>) {
        out.clear();
        match &self.index {
            Index::Topic(trie) => {
                trie.route(key, out);
                out.sort_unstable();
                out.dedup();
            }
            Index::Direct(keys) => {
                if let Some(queues) = keys.get(key) {
                    out.extend_from_slice(queues);
                }
            }
            Index::Fanout => out.extend(self.by_queue.keys().copied()),
            Index::Hash(ring) => out.extend(ring.pick(key)),
        }
    }

    /// Every binding, in the order they were first bound.
    pub fn bindings(&self) -> Vec<Binding> {
        self.entries.values().cloned().collect()
    }

    /// How many bindings the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no binding.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn reweigh(&mut self, seq: u64, weight: u32) {
        let Some(binding) = self.entries.get_mut(&seq) else {
            return;
        };
        if binding.weight != weight {
            binding.weight = weight;
            self.rebuild_ring();
        }
    }

    /// Removes one binding from the kind's index; the hash ring is rebuilt separately, once.
    fn unindex(&mut self, queue: QueueId, key: &str) {
        match &mut self.index {
            Index::Topic(trie) => {
                let removed = trie.remove(key, queue);
                debug_assert!(removed, "the table held a binding the trie did not");
            }
            Index::Direct(keys) => {
                if let Some(queues) = keys.get_mut(key) {
                    queues.retain(|bound| *bound != queue);
                    if queues.is_empty() {
                        keys.remove(key);
                    }
                }
            }
            Index::Fanout | Index::Hash(_) => {}
        }
    }

    fn rebuild_ring(&mut self) {
        if let Index::Hash(ring) = &mut self.index {
            ring.rebuild(self.entries.values().map(|b| (b.queue, b.weight)));
        }
    }

    #[cfg(test)]
    fn live_trie_nodes(&self) -> usize {
        match &self.index {
            Index::Topic(trie) => trie.live_nodes(),
            _ => 0,
        }
    }
}

fn check_weight(weight: u32) -> Result<(), RoutingError> {
    match weight {
        0 => Err(RoutingError::ZeroWeight),
        w if w > WEIGHT_MAX => Err(RoutingError::WeightTooLarge { weight }),
        _ => Ok(()),
    }
}

fn insert_sorted(queues: &mut SmallVec<[QueueId; 2]>, queue: QueueId) {
    if let Err(at) = queues.binary_search(&queue) {
        queues.insert(at, queue);
    }
}

#[cfg(test)]
mod tests {
    use super::super::pattern_matches;
    use super::*;

    fn q(ids: &[u32]) -> Vec<QueueId> {
        ids.iter().copied().map(QueueId).collect()
    }

    fn route(table: &RoutingTable, key: &str) -> Vec<QueueId> {
        let mut out = SmallVec::new();
        table.route(key, &mut out);
        out.to_vec()
    }

    fn table(kind: TopicKind, bindings: &[(u32, &str)]) -> RoutingTable {
        let mut table = RoutingTable::new(kind);
        for (queue, key) in bindings {
            table.bind(QueueId(*queue), key, 1).unwrap();
        }
        table
    }

    const KINDS: [TopicKind; 4] = [TopicKind::Topic, TopicKind::Direct, TopicKind::Fanout, TopicKind::Hash];

    #[test]
    fn a_new_table_is_empty_and_routes_nowhere() {
        for kind in KINDS {
            let table = RoutingTable::new(kind);
            assert_eq!(table.kind(), kind);
            assert!(table.is_empty());
            assert_eq!(table.len(), 0);
            assert!(table.bindings().is_empty());
            assert!(route(&table, "").is_empty());
            assert!(route(&table, "a.b").is_empty());
        }
    }

    #[test]
    fn route_clears_out_first() {
        for kind in KINDS {
            let table = RoutingTable::new(kind);
            let mut out: SmallVec<[QueueId; 8]> = q(&[9, 9, 9]).into_iter().collect();
            table.route("a", &mut out);
            assert!(out.is_empty(), "{kind}");
        }
    }

    #[test]
    fn topic_routes_by_the_semantics_examples() {
        let t = table(TopicKind::Topic, &[(1, "a.#.b")]);
        for key in ["a.b", "a..b", "a.x.b", "a.x.y.b"] {
            assert_eq!(route(&t, key), q(&[1]), "{key}");
        }
        assert!(route(&t, "a.b.c").is_empty());

        let t = table(TopicKind::Topic, &[(1, "#"), (2, "#.#"), (3, ""), (4, "*"), (5, "#.*.#")]);
        assert_eq!(route(&t, ""), q(&[1, 2, 3]));
        assert_eq!(route(&t, "oneword"), q(&[1, 2, 4, 5]));

        let t = table(TopicKind::Topic, &[(1, "*"), (2, "*.*")]);
        assert_eq!(route(&t, "oneword"), q(&[1]));
        assert_eq!(route(&t, "."), q(&[2]));
        assert_eq!(route(&t, "a."), q(&[2]));
    }

    #[test]
    fn topic_empty_words_are_words() {
        let t = table(TopicKind::Topic, &[(1, "a..b"), (2, "a.*.b"), (3, "a.b")]);
        assert_eq!(route(&t, "a..b"), q(&[1, 2]));
        assert_eq!(route(&t, "a.b"), q(&[3]));
        assert_eq!(route(&t, "a.x.b"), q(&[2]));
    }

    #[test]
    fn a_queue_gets_one_copy_however_many_bindings_match() {
        for kind in KINDS {
            let t = table(kind, &[(7, "a.b"), (7, "a.*"), (7, "#"), (3, "a.b"), (7, "*.b")]);
            let routed = route(&t, "a.b");
            let mut unique = routed.clone();
            unique.dedup();
            assert_eq!(routed, unique, "{kind}");
            match kind {
                TopicKind::Hash => assert_eq!(routed.len(), 1),
                _ => assert_eq!(routed, q(&[3, 7]), "{kind}"),
            }
        }
    }

    #[test]
    fn routes_come_out_in_ascending_queue_order() {
        let t = table(TopicKind::Topic, &[(9, "#"), (2, "a"), (5, "*"), (1, "a.#")]);
        assert_eq!(route(&t, "a"), q(&[1, 2, 5, 9]));
        let t = table(TopicKind::Fanout, &[(9, ""), (2, "x"), (5, "y")]);
        assert_eq!(route(&t, "anything"), q(&[2, 5, 9]));
    }

    #[test]
    fn topic_agrees_with_pattern_matches_on_a_fixed_set() {
        let patterns =
            ["", "#", "*", "a", "a.*", "*.b", "a.#", "#.b", "#.a.#", "*.*", "a..b", "#.#", "*.#.*"];
        let bindings: Vec<(u32, &str)> = patterns.iter().enumerate().map(|(i, p)| (i as u32, *p)).collect();
        let t = table(TopicKind::Topic, &bindings);
        for key in ["", "a", "b", "a.b", "a..b", "b.a", ".", "a.a.a", "x.a.y.b"] {
            let expected: Vec<QueueId> = bindings
                .iter()
                .filter(|(_, p)| pattern_matches(p, key))
                .map(|(queue, _)| QueueId(*queue))
                .collect();
            assert_eq!(route(&t, key), expected, "{key:?}");
        }
    }

    #[test]
    fn topic_route_on_long_keys_with_many_hashes_finishes() {
        let t = table(
            TopicKind::Topic,
            &[(1, "#.#.#.#.#.x"), (2, "#.a.#.a.#.a.#.a.#.a.#"), (3, "#.#.#.#.#.#.#.#.#.#")],
        );
        let key = vec!["a"; 127].join(".");
        assert_eq!(route(&t, &key), q(&[2, 3]));
        assert_eq!(route(&t, &(key + ".x")), q(&[1, 2, 3]));
    }

    #[test]
    fn direct_is_exact_equality() {
        let t = table(TopicKind::Direct, &[(1, "a.b"), (2, "a.*"), (3, "#"), (4, "")]);
        assert_eq!(route(&t, "a.b"), q(&[1]));
        assert_eq!(route(&t, "a.*"), q(&[2]));
        assert_eq!(route(&t, "a.x"), q(&[]));
        assert_eq!(route(&t, "#"), q(&[3]));
        assert_eq!(route(&t, ""), q(&[4]));
        assert_eq!(route(&t, "a.b."), q(&[]));
    }

    #[test]
    fn fanout_ignores_the_key() {
        let t = table(TopicKind::Fanout, &[(1, "a"), (2, ""), (1, "b")]);
        for key in ["", "a", "zzz", "#"] {
            assert_eq!(route(&t, key), q(&[1, 2]));
        }
    }

    #[test]
    fn hash_sends_each_key_to_exactly_one_queue_and_keeps_it() {
        let t = table(TopicKind::Hash, &[(1, ""), (2, ""), (3, ""), (4, "")]);
        let copy = t.clone();
        let mut seen = [0usize; 5];
        for i in 0..10_000 {
            let key = format!("key-{i}");
            let routed = route(&t, &key);
            assert_eq!(routed.len(), 1);
            assert_eq!(route(&t, &key), routed);
            assert_eq!(route(&copy, &key), routed);
            seen[routed[0].0 as usize] += 1;
        }
        for share in &seen[1..] {
            assert!((2_000..3_000).contains(share), "{seen:?}");
        }
    }

    #[test]
    fn hash_adding_a_binding_moves_about_a_fifth_of_keys_all_to_it() {
        let mut t = table(TopicKind::Hash, &[(1, ""), (2, ""), (3, ""), (4, "")]);
        let keys: Vec<String> = (0..10_000).map(|i| format!("key-{i}")).collect();
        let before: Vec<Vec<QueueId>> = keys.iter().map(|k| route(&t, k)).collect();
        t.bind(QueueId(5), "", 1).unwrap();
        let mut moved = 0;
        for (key, old) in keys.iter().zip(&before) {
            let new = route(&t, key);
            if &new != old {
                moved += 1;
                assert_eq!(new, q(&[5]), "{key} moved elsewhere");
            }
        }
        assert!((1_000..=3_000).contains(&moved), "{moved} keys moved");

        // Taking the new last binding away puts every key back.
        assert!(t.unbind(QueueId(5), ""));
        let after: Vec<Vec<QueueId>> = keys.iter().map(|k| route(&t, k)).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn hash_weights_are_shares() {
        let mut t = RoutingTable::new(TopicKind::Hash);
        t.bind(QueueId(1), "", 1).unwrap();
        t.bind(QueueId(2), "", 4).unwrap();
        let to_two = (0..10_000).filter(|i| route(&t, &format!("k{i}")) == q(&[2])).count();
        assert!((7_500..8_500).contains(&to_two), "{to_two}");
        // Re-binding updates the weight in place.
        assert_eq!(t.bind(QueueId(2), "", 1), Ok(false));
        assert_eq!(t.bindings()[1].weight, 1);
        let to_two = (0..10_000).filter(|i| route(&t, &format!("k{i}")) == q(&[2])).count();
        assert!((4_500..5_500).contains(&to_two), "{to_two}");
    }

    #[test]
    fn hash_routes_are_pinned() {
        // If this fails, messages would change queues across versions: fix the change instead.
        let t = table(TopicKind::Hash, &[(0, ""), (1, ""), (2, ""), (3, ""), (4, "")]);
        let routed: Vec<u32> = ["", "a", "orders.eu.paid", "customer-17", "key-9999"]
            .iter()
            .map(|key| route(&t, key)[0].0)
            .collect();
        assert_eq!(routed, PINNED_ROUTES);
    }

    const PINNED_ROUTES: [u32; 5] = [1, 3, 0, 1, 2];

    #[test]
    fn hash_weights_are_checked() {
        let mut t = RoutingTable::new(TopicKind::Hash);
        assert_eq!(t.bind(QueueId(1), "", 0), Err(RoutingError::ZeroWeight));
        assert_eq!(
            t.bind(QueueId(1), "", WEIGHT_MAX + 1),
            Err(RoutingError::WeightTooLarge { weight: 1001 })
        );
        assert_eq!(t.bind(QueueId(1), "", WEIGHT_MAX), Ok(true));
        assert_eq!(t.bind(QueueId(1), "", 0), Err(RoutingError::ZeroWeight));
        assert_eq!(t.bindings()[0].weight, WEIGHT_MAX);
        // Other kinds ignore the weight.
        for kind in [TopicKind::Topic, TopicKind::Direct, TopicKind::Fanout] {
            let mut t = RoutingTable::new(kind);
            assert_eq!(t.bind(QueueId(1), "a", 0), Ok(true));
            assert_eq!(t.bind(QueueId(2), "a", u32::MAX), Ok(true));
            assert_eq!(route(&t, "a"), q(&[1, 2]));
        }
    }

    #[test]
    fn bad_binding_keys_are_refused_and_change_nothing() {
        for kind in KINDS {
            let mut t = table(kind, &[(1, "a")]);
            let long = "a".repeat(256);
            assert_eq!(t.bind(QueueId(2), &long, 1), Err(RoutingError::PatternTooLong { len: 256 }));
            assert_eq!(t.len(), 1);
        }
        let mut t = RoutingTable::new(TopicKind::Topic);
        for bad in ["orders.pa*d", "a#", "a.#b.c"] {
            assert!(matches!(t.bind(QueueId(1), bad, 1), Err(RoutingError::InvalidPattern { .. })));
        }
        assert!(t.is_empty());
        assert_eq!(t.live_trie_nodes(), 1);
    }

    #[test]
    fn bind_is_idempotent() {
        for kind in KINDS {
            let mut t = RoutingTable::new(kind);
            assert_eq!(t.bind(QueueId(1), "a.b", 1), Ok(true));
            assert_eq!(t.bind(QueueId(2), "a.b", 1), Ok(true));
            assert_eq!(t.bind(QueueId(1), "a.c", 1), Ok(true));
            assert_eq!(t.bind(QueueId(1), "a.b", 3), Ok(false));
            assert_eq!(t.len(), 3);
            let keys: Vec<(u32, String, u32)> =
                t.bindings().into_iter().map(|b| (b.queue.0, b.key, b.weight)).collect();
            assert_eq!(keys, [(1, "a.b".into(), 3), (2, "a.b".into(), 1), (1, "a.c".into(), 1)], "{kind}");
        }
    }

    #[test]
    fn unbind_removes_one_binding() {
        for kind in KINDS {
            let mut t = table(kind, &[(1, "a"), (2, "a"), (1, "b")]);
            assert!(t.unbind(QueueId(1), "a"), "{kind}");
            assert!(!t.unbind(QueueId(1), "a"), "{kind}");
            assert!(!t.unbind(QueueId(3), "a"), "{kind}");
            assert!(!t.unbind(QueueId(2), "b"), "{kind}");
            assert!(!t.unbind(QueueId(2), &"a".repeat(300)), "{kind}");
            assert_eq!(t.len(), 2);
            let left: Vec<(u32, String)> = t.bindings().into_iter().map(|b| (b.queue.0, b.key)).collect();
            assert_eq!(left, [(2, "a".into()), (1, "b".into())]);
            match kind {
                TopicKind::Topic | TopicKind::Direct => {
                    assert_eq!(route(&t, "a"), q(&[2]));
                    assert_eq!(route(&t, "b"), q(&[1]));
                }
                TopicKind::Fanout => assert_eq!(route(&t, "a"), q(&[1, 2])),
                TopicKind::Hash => assert_eq!(route(&t, "a").len(), 1),
            }
        }
    }

    #[test]
    fn unbind_queue_removes_all_of_its_bindings() {
        for kind in KINDS {
            let mut t = table(kind, &[(1, "a"), (2, "a"), (1, "b"), (1, "#")]);
            assert_eq!(t.unbind_queue(QueueId(1)), 3, "{kind}");
            assert_eq!(t.unbind_queue(QueueId(1)), 0, "{kind}");
            assert_eq!(t.unbind_queue(QueueId(9)), 0, "{kind}");
            assert_eq!(t.len(), 1);
            assert_eq!(route(&t, "a"), q(&[2]), "{kind}");
            if matches!(kind, TopicKind::Topic | TopicKind::Direct) {
                assert!(route(&t, "b").is_empty(), "{kind}");
            }
            assert_eq!(t.unbind_queue(QueueId(2)), 1);
            assert!(t.is_empty());
            assert!(route(&t, "a").is_empty());
        }
    }

    #[test]
    fn rebinding_after_unbind_goes_to_the_end() {
        let mut t = table(TopicKind::Direct, &[(1, "a"), (2, "b")]);
        assert!(t.unbind(QueueId(1), "a"));
        assert_eq!(t.bind(QueueId(1), "a", 1), Ok(true));
        let order: Vec<u32> = t.bindings().iter().map(|b| b.queue.0).collect();
        assert_eq!(order, [2, 1]);
    }

    #[test]
    fn churn_does_not_leak_trie_nodes() {
        let mut t = RoutingTable::new(TopicKind::Topic);
        for round in 0..200u32 {
            for i in 0..10 {
                let key = format!("r{round}.q{i}.*.#.x{}", round % 7);
                assert_eq!(t.bind(QueueId(i), &key, 1), Ok(true));
            }
            for i in (0..10).step_by(2) {
                assert!(t.unbind(QueueId(i), &format!("r{round}.q{i}.*.#.x{}", round % 7)));
            }
            for i in (1..10).step_by(2) {
                assert_eq!(t.unbind_queue(QueueId(i)), 1);
            }
            assert!(t.is_empty());
            assert_eq!(t.live_trie_nodes(), 1);
        }
    }
}
