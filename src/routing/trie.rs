//! The trie of topic patterns: routing cost follows the key and its matches, not the bindings.

use rustc_hash::FxHashMap;

use smallvec::SmallVec;

use super::pattern::words;
use crate::ids::QueueId;

const ROOT: usize = 0;

/// Topic patterns stored as paths of words. Nodes live in an arena with a free list; a node exists
/// only while some binding's path runs through it.
#[derive(Debug, Clone)]
pub(super) struct TopicTrie {
    nodes: Vec<Node>,
    free: Vec<usize>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Looked up, inserted and removed by word, never iterated, so no order reaches behaviour; the
    /// hash (FxHash) has no seed, so the trie is the same in every process.
    exact: FxHashMap<Box<str>, usize>,
    star: Option<usize>,
    hash: Option<usize>,
    /// The queues whose pattern ends here, ascending and each once.
    queues: SmallVec<[QueueId; 2]>,
}

impl Node {
    fn is_unused(&self) -> bool {
        self.queues.is_empty() && self.star.is_none() && self.hash.is_none() && self.exact.is_empty()
    }
}

/// The edge a pattern word follows. Patterns are validated, so `*` and `#` are only ever whole words.
#[derive(Clone, Copy)]
enum Edge<'a> {
    Exact(&'a str),
    Star,
    Hash,
}

impl<'a> Edge<'a> {
    fn of(word: &'a str) -> Self {
        match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            word => Edge::Exact(word),
        }
    }
}

/// A run of trie visits still to do: `node`, with the key's words before `from` consumed, then the
/// same node at every later position up to `to` (exclusive). A `#` child is one run over the
/// positions it can start at, so the stack stays short.
#[derive(Clone, Copy)]
struct Visit {
    node: usize,
    from: usize,
    to: usize,
}

impl Default for TopicTrie {
    fn default() -> Self {
        TopicTrie { nodes: vec![Node::default()], free: Vec::new() }
    }
}

impl TopicTrie {
    /// Binds `queue` with `pattern`; false if it already was.
    pub(super) fn insert(&mut self, pattern: &str, queue: QueueId) -> bool {
        let mut node = ROOT;
        for word in words(pattern) {
            node = match self.child(node, Edge::of(word)) {
                Some(child) => child,
                None => self.add_child(node, Edge::of(word)),
            };
        }
        let queues = &mut self.nodes[node].queues;
        match queues.binary_search(&queue) {
            Ok(_) => false,
            Err(at) => {
                queues.insert(at, queue);
                true
            }
        }
    }

    /// Unbinds `queue` from `pattern` and frees the nodes that lead nowhere any more; false if it
    /// was not bound.
    pub(super) fn remove(&mut self, pattern: &str, queue: QueueId) -> bool {
        let edges: SmallVec<[Edge<'_>; 16]> = words(pattern).map(Edge::of).collect();
        let mut path: SmallVec<[usize; 16]> = SmallVec::with_capacity(edges.len() + 1);
        path.push(ROOT);
        for edge in &edges {
            match self.child(path[path.len() - 1], *edge) {
                Some(child) => path.push(child),
                None => return false,
            }
        }
        let queues = &mut self.nodes[path[path.len() - 1]].queues;
        let Ok(at) = queues.binary_search(&queue) else {
            return false;
        };
        queues.remove(at);
        for depth in (1..path.len()).rev() {
            if !self.nodes[path[depth]].is_unused() {
                break;
            }
            self.unlink(path[depth - 1], edges[depth - 1]);
            self.release(path[depth]);
        }
        true
    }

    /// Appends the queues of every pattern that matches `key`, possibly more than once each.
    /// Returns how many (node, position) visits it made, for the tests of its cost: each pair is
    /// visited at most once.
    pub(super) fn route(&self, key: &str, out: &mut SmallVec<[QueueId; 8]>) -> usize {
        let mut key_words: SmallVec<[&str; 16]> = SmallVec::new();
        if !key.is_empty() {
            for word in key.split('.') {
                key_words.push(word);
            }
        }
        let key = key_words;
        let mut stack: SmallVec<[Visit; 32]> = SmallVec::new();
        stack.push(Visit { node: ROOT, from: 0, to: 1 });
        // Per `#` node reached: the first key position from which all its runs are already queued.
        let mut hash_runs: SmallVec<[(usize, usize); 8]> = SmallVec::new();
        let mut visits = 0;
        while let Some(top) = stack.last_mut() {
            let (id, position) = (top.node, top.from);
            top.from += 1;
            if top.from == top.to {
                stack.pop();
            }
            visits += 1;
            let node = &self.nodes[id];
            match key.get(position) {
                None => out.extend_from_slice(&node.queues),
                Some(word) => {
                    let next = Visit { node: 0, from: position + 1, to: position + 2 };
                    if let Some(&child) = node.exact.get(*word) {
                        stack.push(Visit { node: child, ..next });
                    }
                    if let Some(child) = node.star {
                        stack.push(Visit { node: child, ..next });
                    }
                }
            }
            if let Some(hash) = node.hash {
                // `#` may take any number of words from here on: the node after it continues
                // matching at this position or any later one.
                let to = claim_positions(&mut hash_runs, hash, position, key.len() + 1);
                if position < to {
                    stack.push(Visit { node: hash, from: position, to });
                }
            }
        }
        visits
    }

    /// Nodes in use, the root included.
    #[cfg(test)]
    pub(super) fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    fn child(&self, node: usize, edge: Edge<'_>) -> Option<usize> {
        let node = &self.nodes[node];
        match edge {
            Edge::Exact(word) => node.exact.get(word).copied(),
            Edge::Star => node.star,
            Edge::Hash => node.hash,
        }
    }

    fn add_child(&mut self, parent: usize, edge: Edge<'_>) -> usize {
        let child = match self.free.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        };
        let parent = &mut self.nodes[parent];
        match edge {
            Edge::Exact(word) => {
                parent.exact.insert(word.into(), child);
            }
            Edge::Star => parent.star = Some(child),
            Edge::Hash => parent.hash = Some(child),
        }
        child
    }

    fn unlink(&mut self, parent: usize, edge: Edge<'_>) {
        let parent = &mut self.nodes[parent];
        match edge {
            Edge::Exact(word) => {
                parent.exact.remove(word);
            }
            Edge::Star => parent.star = None,
            Edge::Hash => parent.hash = None,
        }
    }

    fn release(&mut self, node: usize) {
        self.nodes[node] = Node::default();
        self.free.push(node);
    }
}

/// Claims the positions from `from` up to `end` for the `#` node `hash`, less those an earlier run
/// already claimed, and returns where the new run stops. The claimed positions of a node are always
/// a suffix `[first, end)` of the key, so one number per node records them.
fn claim_positions(runs: &mut SmallVec<[(usize, usize); 8]>, hash: usize, from: usize, end: usize) -> usize {
    match runs.binary_search_by_key(&hash, |(node, _)| *node) {
        Ok(at) => {
            let first = runs[at].1;
            runs[at].1 = first.min(from);
            first
        }
        Err(at) => {
            runs.insert(at, (hash, from));
            end
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(trie: &TopicTrie, key: &str) -> Vec<u32> {
        let mut out = SmallVec::new();
        trie.route(key, &mut out);
        let mut ids: Vec<u32> = out.iter().map(|q| q.0).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    #[test]
    fn insert_and_remove_report_whether_anything_changed() {
        let mut trie = TopicTrie::default();
        assert!(trie.insert("a.*", QueueId(1)));
        assert!(!trie.insert("a.*", QueueId(1)));
        assert!(trie.insert("a.*", QueueId(0)));
        assert!(trie.remove("a.*", QueueId(1)));
        assert!(!trie.remove("a.*", QueueId(1)));
        assert!(!trie.remove("a.b", QueueId(0)));
        assert!(!trie.remove("a.*.c", QueueId(0)));
        assert_eq!(routed(&trie, "a.x"), [0]);
    }

    #[test]
    fn removing_the_last_binding_frees_every_node() {
        let mut trie = TopicTrie::default();
        let patterns = ["a.b.c", "a.*.#", "#", "#.#.x", "", "a..b", "*.*"];
        for round in 0..50 {
            for (i, pattern) in patterns.iter().enumerate() {
                assert!(trie.insert(pattern, QueueId(i as u32 + round)));
            }
            assert!(trie.live_nodes() > 1);
            for (i, pattern) in patterns.iter().enumerate().rev() {
                assert!(trie.remove(pattern, QueueId(i as u32 + round)));
            }
            assert_eq!(trie.live_nodes(), 1);
        }
        // The arena never grew past one round's worth of nodes.
        assert!(trie.nodes.len() <= 20, "{}", trie.nodes.len());
    }

    #[test]
    fn removal_keeps_nodes_that_other_bindings_use() {
        let mut trie = TopicTrie::default();
        trie.insert("a.b", QueueId(1));
        trie.insert("a.b.c", QueueId(2));
        trie.insert("a", QueueId(3));
        let all = trie.live_nodes();
        assert!(trie.remove("a.b", QueueId(1)));
        assert_eq!(trie.live_nodes(), all);
        assert_eq!(routed(&trie, "a.b.c"), [2]);
        assert!(trie.remove("a.b.c", QueueId(2)));
        assert_eq!(trie.live_nodes(), 2);
        assert_eq!(routed(&trie, "a"), [3]);
    }

    #[test]
    fn route_visits_each_node_and_position_at_most_once() {
        let mut trie = TopicTrie::default();
        let patterns = [
            "#.#.#.#.#.x",
            "#.a.#.a.#.a.#.a.#.b",
            "#.*.#.*.#.*.#",
            "*.#.*.#.*",
            "#.#.#.#.#.#.#.#.#.#.#.#.#.#.#.#",
        ];
        for (i, pattern) in patterns.iter().enumerate() {
            trie.insert(pattern, QueueId(i as u32));
        }
        let key = vec!["a"; 120].join(".");
        let bound = trie.live_nodes() * 121;
        let mut out = SmallVec::new();
        let visits = trie.route(&key, &mut out);
        assert!(visits <= bound, "{visits} visits, bound {bound}");
        let mut ids: Vec<u32> = out.iter().map(|q| q.0).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids, [2, 3, 4]);
    }

    #[test]
    fn route_cost_follows_the_key_not_the_bindings() {
        let mut trie = TopicTrie::default();
        for i in 0..10_000 {
            trie.insert(&format!("orders.region{i}.*"), QueueId(i));
        }
        let mut out = SmallVec::new();
        let visits = trie.route("orders.region42.paid", &mut out);
        assert_eq!(out.as_slice(), [QueueId(42)]);
        assert_eq!(visits, 4);
        out.clear();
        assert_eq!(trie.route("invoices.x.y", &mut out), 1);
        assert!(out.is_empty());
    }

    #[test]
    fn claimed_positions_shrink_to_a_suffix() {
        let mut runs = SmallVec::new();
        assert_eq!(claim_positions(&mut runs, 7, 3, 10), 10);
        assert_eq!(claim_positions(&mut runs, 7, 5, 10), 3);
        assert_eq!(claim_positions(&mut runs, 7, 1, 10), 3);
        assert_eq!(claim_positions(&mut runs, 7, 0, 10), 1);
        assert_eq!(claim_positions(&mut runs, 2, 4, 10), 10);
        assert_eq!(runs.as_slice(), [(2, 4), (7, 0)]);
    }
}
