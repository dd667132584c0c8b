//! The jobs scenario: its promises hold over seeds, a seed replays the same history, and each
//! broken variant of the jobs is caught.

use tubemail::jobs::broken::JobBugs;
use tubemail_sim::jobs::{run_jobs, JobsScenario};

#[test]
fn every_promise_holds_over_seeds() {
    let scenario = JobsScenario::default();
    for seed in 0..60 {
        let run = run_jobs(&scenario, seed);
        assert!(run.ok(), "seed {seed}: {:?}", run.violations);
    }
}

#[test]
fn a_seed_replays_the_same_history() {
    let scenario = JobsScenario::default();
    for seed in [3, 17] {
        let (a, b) = (run_jobs(&scenario, seed), run_jobs(&scenario, seed));
        assert_eq!(a.history.hash(), b.history.hash(), "seed {seed}");
        assert!(a.history.events().len() > 20, "seed {seed} did something");
    }
}

/// The first seed (of `max`) on which the checkers catch `bugs`.
fn caught(bugs: JobBugs, max: u64) -> Option<(u64, Vec<String>)> {
    let scenario = JobsScenario { bugs, ..JobsScenario::default() };
    let found = (0..max).map(|seed| (seed, run_jobs(&scenario, seed))).find(|(_, run)| !run.ok());
    let found = found.map(|(s, r)| (s, r.violations));
    if let Some((seed, violations)) = &found {
        println!("{bugs:?} caught on seed {seed}: {}", violations[0]);
    }
    found
}

#[test]
fn a_checkpoint_written_before_its_item_is_caught() {
    let found = caught(JobBugs { checkpoint_before_item: true, ..JobBugs::default() }, 1_000);
    let (seed, violations) = found.expect("caught within 1,000 seeds");
    assert!(violations.iter().any(|v| v.contains("iteration job")), "seed {seed}: {violations:?}");
}

#[test]
fn a_shutdown_that_drops_running_jobs_is_caught() {
    let found = caught(JobBugs { shutdown_drops_running: true, ..JobBugs::default() }, 1_000);
    let (seed, violations) = found.expect("caught within 1,000 seeds");
    assert!(
        violations.iter().any(|v| v.contains("lost") || v.contains("items handled")),
        "seed {seed}: {violations:?}"
    );
}

#[test]
fn a_unique_lock_released_on_retry_is_caught() {
    let found = caught(JobBugs { unique_released_on_retry: true, ..JobBugs::default() }, 1_000);
    let (seed, violations) = found.expect("caught within 1,000 seeds");
    assert!(violations.iter().any(|v| v.contains("unique key")), "seed {seed}: {violations:?}");
}
