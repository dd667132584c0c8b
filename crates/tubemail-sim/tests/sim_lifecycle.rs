//! The lifecycle scenario: queues declared, deleted, re-declared, bound and unbound, subscribers
//! coming and going, and a shutdown, while messages flow under injected faults. The promise holds on
//! every seed; each deliberately broken variant of the lifecycle is caught within 1,000 seeds; the
//! same seed replays the same run.

use tubemail::DeliveryMode;
use tubemail_sim::{run_lifecycle, Bugs, FaultPlan, Scenario};

fn scenario(mode: DeliveryMode, bugs: Bugs) -> Scenario {
    Scenario { mode, messages: 200, plan: FaultPlan::all(), bugs }
}

#[test]
fn the_lifecycle_keeps_every_promise_on_every_seed() {
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        let mut ops = std::collections::BTreeMap::new();
        for seed in 0..60 {
            let run = run_lifecycle(&scenario(mode, Bugs::default()), seed);
            assert!(run.ok(), "{mode} seed {seed}: {:?}", run.violations);
            for (op, n) in run.ops {
                *ops.entry(op).or_insert(0) += n;
            }
        }
        for op in ["subscribe", "unsubscribe", "delete", "declare", "bind", "unbind"] {
            assert!(ops.get(op).copied().unwrap_or(0) > 10, "{mode}: {op} ran {:?} times", ops.get(op));
        }
    }
}

/// The first seed, below 1,000, on which `bugs` breaks a promise.
fn caught_at(mode: DeliveryMode, bugs: Bugs) -> Option<u64> {
    (0..1000).find(|&seed| !run_lifecycle(&scenario(mode, bugs), seed).ok())
}

#[test]
fn a_delete_that_drains_before_it_closes_is_caught() {
    let bugs = Bugs { delete_drains_before_close: true, ..Bugs::default() };
    let seed = caught_at(DeliveryMode::AtLeastOnce, bugs).expect("caught within 1,000 seeds");
    let broken = run_lifecycle(&scenario(DeliveryMode::AtLeastOnce, bugs), seed);
    let lost = |v: &String| v.contains("do not balance") || v.contains("still waits");
    assert!(broken.violations.iter().any(lost), "seed {seed}: {:?}", broken.violations);
    let run = run_lifecycle(&scenario(DeliveryMode::AtLeastOnce, Bugs::default()), seed);
    assert!(run.ok(), "the correct broker fails seed {seed} too: {:?}", run.violations);
}

#[test]
fn an_unsubscribe_that_returns_before_its_subscriber_stopped_is_caught() {
    let bugs = Bugs { unsubscribe_returns_early: true, ..Bugs::default() };
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        let seed = caught_at(mode, bugs).expect("caught within 1,000 seeds");
        let broken = run_lifecycle(&scenario(mode, bugs), seed);
        assert!(
            broken.violations.iter().any(|v| v.contains("after its unsubscribe returned")),
            "{:?}",
            broken.violations
        );
        assert!(run_lifecycle(&scenario(mode, Bugs::default()), seed).ok(), "{mode}: seed {seed}");
    }
}

#[test]
fn a_lifecycle_seed_replays_the_same_history() {
    for seed in [3, 99] {
        let a = run_lifecycle(&scenario(DeliveryMode::AtLeastOnce, Bugs::default()), seed);
        let b = run_lifecycle(&scenario(DeliveryMode::AtLeastOnce, Bugs::default()), seed);
        assert_eq!(a.history.hash(), b.history.hash(), "seed {seed}");
    }
}
