//! The same seed replays the same history in a child process (the `tubemail replay` command) as in
//! this one, for several seeds and both delivery modes, and for the log scenario.

use std::process::Command;

use tubemail::DeliveryMode;
use tubemail_sim::{run, run_log, FaultPlan, LogScenario, Scenario};

const SEEDS: [u64; 4] = [0, 7, 42, 1_000_003];

/// The two tests run one at a time: with the built-in scenario running on another thread of this
/// process, the log scenario's history was seen to differ (not across processes, nor between debug
/// and release); the cause is not found yet, and is in the session notes.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn scenario(mode: DeliveryMode) -> Scenario {
    Scenario { mode, messages: 200, plan: FaultPlan::all(), ..Default::default() }
}

#[test]
fn a_child_process_replays_the_same_history() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (mode, name) in
        [(DeliveryMode::AtLeastOnce, "at-least-once"), (DeliveryMode::AtMostOnce, "at-most-once")]
    {
        for seed in SEEDS {
            let here = run(&scenario(mode), seed).history.hash();
            let out = Command::new(env!("CARGO_BIN_EXE_tubemail"))
                .args([
                    "replay",
                    "--seed",
                    &seed.to_string(),
                    "--mode",
                    name,
                    "--messages",
                    "200",
                    "--faults",
                    "all",
                ])
                .output()
                .expect("the tubemail command runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout.lines().find(|l| l.starts_with("history hash ")).expect("a hash line");
            let there = u64::from_str_radix(line.trim_start_matches("history hash "), 16).expect("hex");
            assert_eq!(here, there, "{name} seed {seed}: this process and a child process differ");
        }
    }
}

#[test]
fn a_child_process_replays_the_same_log_history() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for seed in SEEDS {
        let here = run_log(&LogScenario::default(), seed).history.hash();
        let out = Command::new(env!("CARGO_BIN_EXE_tubemail"))
            .args(["replay", "--scenario", "log", "--seed", &seed.to_string()])
            .output()
            .expect("the tubemail command runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("history hash ")).expect("a hash line");
        let there = u64::from_str_radix(line.trim_start_matches("history hash "), 16).expect("hex");
        assert_eq!(here, there, "log seed {seed}: this process and a child process differ");
    }
}
