//! Property tests of topic routing: the routing trie against the reference matcher, and the
//! reference matcher against an independently written one.

use proptest::prelude::*;
use smallvec::SmallVec;
use tubemail::ids::QueueId;
use tubemail::routing::{pattern_matches, RoutingTable, TopicKind};

const PATTERN_WORDS: [&str; 6] = ["a", "b", "c", "", "*", "#"];
const KEY_WORDS: [&str; 4] = ["a", "b", "c", ""];

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&PATTERN_WORDS[..]), 0..6).prop_map(|w| w.join("."))
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&KEY_WORDS[..]), 0..6).prop_map(|w| w.join("."))
}

fn queue() -> impl Strategy<Value = QueueId> {
    (0u32..8).prop_map(QueueId)
}

fn route(table: &RoutingTable, key: &str) -> Vec<QueueId> {
    let mut out = SmallVec::new();
    table.route(key, &mut out);
    out.to_vec()
}

/// The queues whose binding matches, by `matches`, sorted and each once.
fn expected(bindings: &[(QueueId, String)], key: &str, matches: impl Fn(&str, &str) -> bool) -> Vec<QueueId> {
    let mut queues: Vec<QueueId> =
        bindings.iter().filter(|(_, pattern)| matches(pattern, key)).map(|(queue, _)| *queue).collect();
    queues.sort();
    queues.dedup();
    queues
}

/// Words as the semantics define them, written apart from the crate's own splitting.
fn split(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

/// A second matcher, by dynamic programming: `reach[i][j]` says whether the first `i` pattern words
/// match the first `j` key words.
fn dp_matches(pattern: &str, key: &str) -> bool {
    let (p, k) = (split(pattern), split(key));
    let mut reach = vec![vec![false; k.len() + 1]; p.len() + 1];
    reach[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=k.len() {
            reach[i][j] = match p[i - 1] {
                "#" => reach[i - 1][j] || (j > 0 && reach[i][j - 1]),
                "*" => j > 0 && reach[i - 1][j - 1],
                word => j > 0 && k[j - 1] == word && reach[i - 1][j - 1],
            };
        }
    }
    reach[p.len()][k.len()]
}

/// A wrong matcher, where `#` needs at least one word: the checks below must catch it.
fn broken_matches(pattern: &str, key: &str) -> bool {
    let (p, k) = (split(pattern), split(key));
    let mut reach = vec![vec![false; k.len() + 1]; p.len() + 1];
    reach[0][0] = true;
    for i in 1..=p.len() {
        for j in 0..=k.len() {
            reach[i][j] = match p[i - 1] {
                "#" => j > 0 && (reach[i - 1][j - 1] || reach[i][j - 1]),
                "*" => j > 0 && reach[i - 1][j - 1],
                word => j > 0 && k[j - 1] == word && reach[i - 1][j - 1],
            };
        }
    }
    reach[p.len()][k.len()]
}

#[derive(Debug, Clone)]
enum Op {
    Bind(QueueId, String),
    Unbind(QueueId, String),
    UnbindQueue(QueueId),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (queue(), pattern()).prop_map(|(q, p)| Op::Bind(q, p)),
        2 => (queue(), pattern()).prop_map(|(q, p)| Op::Unbind(q, p)),
        1 => queue().prop_map(Op::UnbindQueue),
    ]
}

/// Applies `op` to the table and to a plain list of bindings in insertion order, checking that both
/// report the same change.
fn apply(table: &mut RoutingTable, model: &mut Vec<(QueueId, String)>, op: &Op) {
    match op {
        Op::Bind(queue, pattern) => {
            let new = !model.iter().any(|(q, p)| q == queue && p == pattern);
            if new {
                model.push((*queue, pattern.clone()));
            }
            assert_eq!(table.bind(*queue, pattern, 1), Ok(new), "{op:?}");
        }
        Op::Unbind(queue, pattern) => {
            let before = model.len();
            model.retain(|(q, p)| !(q == queue && p == pattern));
            assert_eq!(table.unbind(*queue, pattern), model.len() < before, "{op:?}");
        }
        Op::UnbindQueue(queue) => {
            let before = model.len();
            model.retain(|(q, _)| q != queue);
            assert_eq!(table.unbind_queue(*queue), before - model.len(), "{op:?}");
        }
    }
}

/// A table of `kind` after `ops`, with the model of its bindings, checked to agree.
fn built(kind: TopicKind, ops: &[Op]) -> (RoutingTable, Vec<(QueueId, String)>) {
    let mut table = RoutingTable::new(kind);
    let mut model = Vec::new();
    for op in ops {
        apply(&mut table, &mut model, op);
    }
    assert_same_bindings(&table, &model);
    (table, model)
}

fn assert_same_bindings(table: &RoutingTable, model: &[(QueueId, String)]) {
    let listed: Vec<(QueueId, String)> = table.bindings().into_iter().map(|b| (b.queue, b.key)).collect();
    assert_eq!(listed, model);
    assert_eq!(table.len(), model.len());
    assert_eq!(table.is_empty(), model.is_empty());
}

proptest! {
    #[test]
    fn topic_route_equals_the_reference_matcher(
        bindings in prop::collection::vec((queue(), pattern()), 0..24),
        keys in prop::collection::vec(key(), 1..16),
    ) {
        let mut table = RoutingTable::new(TopicKind::Topic);
        for (queue, pattern) in &bindings {
            table.bind(*queue, pattern, 1).unwrap();
        }
        for key in &keys {
            prop_assert_eq!(route(&table, key), expected(&bindings, key, pattern_matches), "{:?}", key);
        }
    }

    #[test]
    fn topic_route_follows_bind_and_unbind(
        ops in prop::collection::vec(op(), 0..48),
        keys in prop::collection::vec(key(), 1..16),
    ) {
        let (mut table, model) = built(TopicKind::Topic, &ops);
        for key in &keys {
            prop_assert_eq!(route(&table, key), expected(&model, key, pattern_matches), "{:?}", key);
        }
        // Unbinding everything leaves a table that routes nowhere.
        for queue in 0..8 {
            table.unbind_queue(QueueId(queue));
        }
        prop_assert!(table.is_empty());
        for key in &keys {
            prop_assert!(route(&table, key).is_empty());
        }
    }

    #[test]
    fn direct_and_fanout_follow_bind_and_unbind(
        ops in prop::collection::vec(op(), 0..48),
        keys in prop::collection::vec(key(), 1..16),
    ) {
        for kind in [TopicKind::Direct, TopicKind::Fanout] {
            let (table, model) = built(kind, &ops);
            for key in keys.iter().chain(model.iter().map(|(_, p)| p)) {
                let want = match kind {
                    TopicKind::Direct => expected(&model, key, |p, k| p == k),
                    _ => expected(&model, key, |_, _| true),
                };
                prop_assert_eq!(route(&table, key), want, "{} {:?}", kind, key);
            }
        }
    }

    #[test]
    fn hash_picks_one_bound_queue_the_same_way_every_time(
        ops in prop::collection::vec(op(), 0..48),
        keys in prop::collection::vec(key(), 1..16),
    ) {
        let (table, model) = built(TopicKind::Hash, &ops);
        // A table built from the same bindings from scratch routes the same way.
        let mut fresh = RoutingTable::new(TopicKind::Hash);
        for (queue, pattern) in &model {
            fresh.bind(*queue, pattern, 1).unwrap();
        }
        for key in &keys {
            let routed = route(&table, key);
            prop_assert_eq!(routed.len(), usize::from(!model.is_empty()));
            prop_assert!(routed.iter().all(|queue| model.iter().any(|(q, _)| q == queue)));
            prop_assert_eq!(&route(&fresh, key), &routed);
        }
    }

    #[test]
    fn reference_matcher_agrees_with_dynamic_programming(pattern in pattern(), key in key()) {
        prop_assert_eq!(pattern_matches(&pattern, &key), dp_matches(&pattern, &key));
    }

    /// Longer patterns over fewer words, so that several `#`s with literal words between them,
    /// where a matcher must choose how many words each `#` takes, come up often.
    #[test]
    fn reference_matcher_agrees_with_dynamic_programming_on_many_hashes(
        pattern in prop::collection::vec(prop::sample::select(&["a", "b", "*", "#"][..]), 0..10)
            .prop_map(|w| w.join(".")),
        keys in prop::collection::vec(
            prop::collection::vec(prop::sample::select(&["a", "b"][..]), 0..12)
                .prop_map(|w| w.join(".")),
            1..16,
        ),
    ) {
        for key in &keys {
            prop_assert_eq!(pattern_matches(&pattern, key), dp_matches(&pattern, key), "{:?}", key);
        }
    }
}

#[test]
fn dynamic_programming_matcher_follows_the_semantics() {
    for key in ["a.b", "a..b", "a.x.b", "a.x.y.b"] {
        assert!(dp_matches("a.#.b", key), "{key}");
    }
    assert!(!dp_matches("a.#.b", "a.b.c"));
    assert!(dp_matches("#", "") && dp_matches("#.#", "") && dp_matches("", ""));
    assert!(!dp_matches("*", "") && !dp_matches("#.*.#", ""));
    assert!(dp_matches("*", "oneword") && !dp_matches("*.*", "oneword"));
}

/// Every check can fail: the strategies above reach inputs where a plausible wrong matcher differs
/// from the right one, so the agreement properties are not vacuous.
#[test]
fn a_broken_matcher_would_be_caught() {
    let mut disagreements = 0;
    for pattern in ["#", "a.#", "#.b", "a.#.b", "#.#", "*.#"] {
        for key in ["", "a", "b", "a.b", "a.c.b"] {
            if broken_matches(pattern, key) != dp_matches(pattern, key) {
                assert_eq!(pattern_matches(pattern, key), dp_matches(pattern, key));
                disagreements += 1;
            }
        }
    }
    assert!(disagreements >= 5, "{disagreements}");
}
