//! The same seed replays the same run, twice in this process, for several seeds and both delivery
//! modes (`tubemail-cli`'s `replay_in_a_child_process` test replays them in another process).

use tubemail::DeliveryMode;
use tubemail_sim::{run, FaultPlan, Scenario};

const SEEDS: [u64; 4] = [0, 7, 42, 1_000_003];

fn scenario(mode: DeliveryMode) -> Scenario {
    Scenario { mode, messages: 200, plan: FaultPlan::all(), ..Default::default() }
}

#[test]
fn a_seed_replays_the_same_history_in_this_process() {
    for mode in [DeliveryMode::AtLeastOnce, DeliveryMode::AtMostOnce] {
        for seed in SEEDS {
            let (a, b) = (run(&scenario(mode), seed), run(&scenario(mode), seed));
            assert!(a.history.len() > 400, "{}", a.history.len());
            assert_eq!(a.history.hash(), b.history.hash(), "{mode:?} seed {seed}");
            assert_eq!(a.history, b.history);
            assert!(a.settled && a.stats.conserved(), "{:?}", a.stats);
        }
    }
}

#[test]
fn different_seeds_give_different_histories() {
    let hashes: Vec<u64> =
        SEEDS.iter().map(|&s| run(&scenario(DeliveryMode::AtLeastOnce), s).history.hash()).collect();
    let mut unique = hashes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len(), "{hashes:?}");
}
