//! The checkers catch real bugs: each deliberately broken variant of the runtime is caught within
//! 1,000 seeds, and the correct runtime passes the same seeds.

use tubemail::DeliveryMode;
use tubemail_sim::{run, Bugs, FaultPlan, Scenario};

const SEEDS: u64 = 1000;

/// The first seed on which the scenario breaks its promise, if any within `SEEDS`.
fn first_failing(scenario: &Scenario) -> Option<u64> {
    (0..SEEDS).find(|&seed| !run(scenario, seed).ok())
}

fn scenario(mode: DeliveryMode, faults: &str, bugs: Bugs) -> Scenario {
    Scenario { mode, messages: 100, plan: faults.parse().expect("fault kinds"), bugs }
}

#[test]
fn a_queue_that_forgets_to_requeue_on_crash_is_caught() {
    let bugs = Bugs { forget_requeue_on_crash: true, ..Bugs::default() };
    let broken = scenario(DeliveryMode::AtLeastOnce, "crash-before,crash-after", bugs);
    let seed = first_failing(&broken).expect("caught within 1000 seeds");
    let correct = Scenario { bugs: Bugs::default(), ..broken };
    assert!(run(&correct, seed).ok(), "the correct runtime fails seed {seed} too");
}

#[test]
fn an_at_most_once_path_that_redelivers_is_caught() {
    let bugs = Bugs { at_most_once_redelivers: true, ..Bugs::default() };
    let broken = scenario(DeliveryMode::AtMostOnce, "duplicate", bugs);
    let seed = first_failing(&broken).expect("caught within 1000 seeds");
    let correct = Scenario { bugs: Bugs::default(), ..broken };
    assert!(run(&correct, seed).ok(), "the correct runtime fails seed {seed} too");
}

#[test]
fn a_router_that_skips_a_matching_binding_is_caught() {
    let bugs = Bugs { router_skips_binding: true, ..Bugs::default() };
    let broken = scenario(DeliveryMode::AtLeastOnce, "none", bugs);
    let seed = first_failing(&broken).expect("caught within 1000 seeds");
    let correct = Scenario { bugs: Bugs::default(), ..broken };
    assert!(run(&correct, seed).ok(), "the correct runtime fails seed {seed} too");
}

#[test]
fn a_queue_that_reorders_on_requeue_is_caught() {
    let bugs = Bugs { requeue_at_back: true, ..Bugs::default() };
    let broken = scenario(DeliveryMode::AtLeastOnce, "crash-before,crash-after,drop", bugs);
    let seed = first_failing(&broken).expect("caught within 1000 seeds");
    let correct = Scenario { bugs: Bugs::default(), ..broken };
    assert!(run(&correct, seed).ok(), "the correct runtime fails seed {seed} too");
}

#[test]
fn the_correct_runtime_keeps_both_promises_under_every_fault() {
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        let scenario = Scenario { mode, messages: 200, plan: FaultPlan::all(), bugs: Bugs::default() };
        for seed in 0..50 {
            let outcome = run(&scenario, seed);
            assert!(outcome.ok(), "{mode:?} seed {seed}: {}", outcome.report);
        }
    }
}
