//! The same seed replays the same run.

use tubemail::sim::{run, FaultPlan, Scenario};
use tubemail::DeliveryMode;

#[test]
fn a_seed_replays_the_same_history() {
    let scenario = Scenario {
        messages: 200,
        plan: FaultPlan::all(),
        mode: DeliveryMode::AtLeastOnce,
        ..Default::default()
    };
    let a = run(&scenario, 7);
    let b = run(&scenario, 7);
    assert!(a.history.len() > 400, "{}", a.history.len());
    assert_eq!(a.history, b.history);
    assert!(a.settled, "{:?}", a.stats);
    assert!(a.stats.conserved(), "{:?}", a.stats);
}
