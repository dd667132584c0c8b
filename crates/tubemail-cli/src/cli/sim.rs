//! `tubemail check` and `tubemail replay`: the built-in, lifecycle and log scenarios under injected
//! faults.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tubemail::probe::{FaultKind, What};
use tubemail::DeliveryMode;
use tubemail_sim::{run, run_lifecycle, run_log, FaultPlan, LogFault, LogRun, LogScenario, Scenario, SimRun};

use super::SimScenario;

pub(crate) struct CheckArgs {
    pub(crate) mode: DeliveryMode,
    pub(crate) faults: FaultPlan,
    pub(crate) faults_arg: String,
    pub(crate) seeds: u64,
    pub(crate) first_seed: u64,
    pub(crate) messages: u32,
    pub(crate) json: bool,
    pub(crate) scenario: super::SimScenario,
}

struct Violation {
    seed: u64,
    summary: String,
    lifecycle: bool,
}

/// Runs `seeds` seeds on every core; exit code 0 when the mode's promise held on every one.
pub(crate) fn check(args: &CheckArgs) -> Result<bool, String> {
    if args.scenario == SimScenario::Log {
        return Ok(check_log(args));
    }
    if args.scenario == SimScenario::Jobs {
        return Ok(check_jobs(args));
    }
    let scenario = Scenario {
        mode: args.mode,
        messages: args.messages,
        plan: args.faults.clone(),
        ..Default::default()
    };
    let faults = Mutex::new(BTreeMap::<FaultKind, u64>::new());
    let violations = Mutex::new(Vec::<Violation>::new());
    let elapsed = over_seeds(args, |seed| {
        if args.scenario != SimScenario::Lifecycle {
            let outcome = run(&scenario, seed);
            tally(&outcome.history, &faults);
            if !outcome.ok() {
                let summary = summary(&outcome);
                violations.lock().expect("violations").push(Violation { seed, summary, lifecycle: false });
            }
        }
        if args.scenario != SimScenario::BuiltIn {
            let outcome = run_lifecycle(&scenario, seed);
            tally(&outcome.history, &faults);
            if !outcome.ok() {
                let summary = outcome.violations.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
                violations.lock().expect("violations").push(Violation { seed, summary, lifecycle: true });
            }
        }
    });
    let faults = faults.into_inner().expect("faults");
    let mut violations = violations.into_inner().expect("violations");
    violations.sort_by_key(|v| v.seed);
    let mode = args.mode.as_str();
    let replay = |v: &Violation| {
        let scenario = if v.lifecycle { "lifecycle" } else { "built-in" };
        format!(
            "tubemail replay --seed {} --faults {} --mode {mode} --messages {} --scenario {scenario}",
            v.seed, args.faults_arg, args.messages
        )
    };
    if args.json {
        let faults: BTreeMap<String, u64> = faults.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let list: Vec<_> = violations
            .iter()
            .map(|v| json!({"seed": v.seed, "violation": v.summary, "replay": replay(v)}))
            .collect();
        let out = json!({
            "mode": mode,
            "seeds": args.seeds,
            "messages": args.messages,
            "faults_plan": args.faults.to_string(),
            "runs_per_sec": args.seeds as f64 / elapsed,
            "faults": faults,
            "violations": list,
        });
        println!("{out}");
    } else {
        println!(
            "{} seeds of {} messages, {mode}, faults {}: {:.0} runs/s",
            args.seeds,
            args.messages,
            args.faults,
            args.seeds as f64 / elapsed
        );
        println!("faults fired:");
        for kind in FaultKind::ALL {
            println!("  {:<14} {}", kind.to_string(), faults.get(&kind).copied().unwrap_or(0));
        }
        if violations.is_empty() {
            println!("the {mode} promise held on every seed");
        }
        for v in &violations {
            println!("seed {}: {}\n  replay: {}", v.seed, v.summary, replay(v));
        }
    }
    Ok(violations.is_empty())
}

/// The log scenario over `seeds` seeds on every core; whether every promise held on every one.
fn check_log(args: &CheckArgs) -> bool {
    let scenario = LogScenario::default();
    let faults = Mutex::new(BTreeMap::<LogFault, u64>::new());
    let violations = Mutex::new(Vec::<(u64, String)>::new());
    let elapsed = over_seeds(args, |seed| {
        let outcome = run_log(&scenario, seed);
        let mut all = faults.lock().expect("faults");
        for (kind, n) in outcome.faults() {
            *all.entry(kind).or_default() += n;
        }
        drop(all);
        if !outcome.ok() {
            violations.lock().expect("violations").push((seed, log_summary(&outcome)));
        }
    });
    let faults = faults.into_inner().expect("faults");
    let mut violations = violations.into_inner().expect("violations");
    violations.sort_by_key(|v| v.0);
    let replay = |seed: u64| format!("tubemail replay --scenario log --seed {seed}");
    if args.json {
        let faults: BTreeMap<String, u64> =
            LogFault::ALL.iter().map(|k| (k.to_string(), faults.get(k).copied().unwrap_or(0))).collect();
        let list: Vec<_> = violations
            .iter()
            .map(|(seed, summary)| json!({"seed": seed, "violation": summary, "replay": replay(*seed)}))
            .collect();
        let out = json!({
            "scenario": "log",
            "seeds": args.seeds,
            "runs_per_sec": args.seeds as f64 / elapsed,
            "faults": faults,
            "violations": list,
        });
        println!("{out}");
    } else {
        println!("{} seeds of the log scenario: {:.0} runs/s", args.seeds, args.seeds as f64 / elapsed);
        println!("faults fired:");
        for kind in LogFault::ALL {
            println!("  {:<14} {}", kind.to_string(), faults.get(&kind).copied().unwrap_or(0));
        }
        if violations.is_empty() {
            println!("every promise of the log and its groups held on every seed");
        }
        for (seed, summary) in &violations {
            println!("seed {seed}: {summary}\n  replay: {}", replay(*seed));
        }
    }
    violations.is_empty()
}

/// Runs `each` over the seeds `args` names, on every core, with a progress bar on a terminal; the
/// seconds it took.
fn over_seeds(args: &CheckArgs, each: impl Fn(u64) + Sync) -> f64 {
    let next = AtomicU64::new(0);
    let bar = ProgressBar::new(args.seeds);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds {per_sec} {eta}").expect("template"),
    );
    let started = Instant::now();
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.seeds {
                    break;
                }
                each(args.first_seed.wrapping_add(i));
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();
    started.elapsed().as_secs_f64()
}

/// The first violations of a failed log run, one per line.
fn check_jobs(args: &CheckArgs) -> bool {
    use tubemail_sim::jobs::{run_jobs, JobsScenario};
    let scenario = JobsScenario::default();
    let faults = Mutex::new(BTreeMap::<&'static str, u64>::new());
    let violations = Mutex::new(Vec::<(u64, String)>::new());
    let elapsed = over_seeds(args, |seed| {
        let outcome = run_jobs(&scenario, seed);
        let mut all = faults.lock().expect("faults");
        for (kind, n) in &outcome.faults {
            *all.entry(kind).or_default() += n;
        }
        drop(all);
        if !outcome.ok() {
            let summary = outcome.violations.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
            violations.lock().expect("violations").push((seed, summary));
        }
    });
    let faults = faults.into_inner().expect("faults");
    let mut violations = violations.into_inner().expect("violations");
    violations.sort_by_key(|v| v.0);
    let replay = |seed: u64| format!("tubemail replay --scenario jobs --seed {seed}");
    if args.json {
        let list: Vec<_> = violations
            .iter()
            .map(|(seed, summary)| json!({"seed": seed, "violation": summary, "replay": replay(*seed)}))
            .collect();
        let out = json!({
            "scenario": "jobs", "seeds": args.seeds, "runs_per_sec": args.seeds as f64 / elapsed,
            "faults": faults, "violations": list,
        });
        println!("{out}");
    } else {
        println!("{} seeds of the jobs scenario: {:.0} runs/s", args.seeds, args.seeds as f64 / elapsed);
        println!("faults fired:");
        for (kind, n) in &faults {
            println!("  {kind:<24} {n}");
        }
        if violations.is_empty() {
            println!("every promise of the jobs held on every seed");
        }
        for (seed, summary) in &violations {
            println!("seed {seed}: {summary}\n  replay: {}", replay(*seed));
        }
    }
    violations.is_empty()
}

fn log_summary(outcome: &LogRun) -> String {
    let mut lines: Vec<String> = outcome.violations.iter().take(5).map(ToString::to_string).collect();
    if outcome.violations.len() > 5 {
        lines.push(format!("... {} more", outcome.violations.len() - 5));
    }
    lines.join("\n  ")
}

fn tally(history: &tubemail_sim::history::History, faults: &Mutex<BTreeMap<FaultKind, u64>>) {
    let mut counts = BTreeMap::<FaultKind, u64>::new();
    for event in history.events() {
        if let What::Fault { kind, .. } = &event.what {
            *counts.entry(*kind).or_default() += 1;
        }
    }
    let mut faults = faults.lock().expect("faults");
    for (kind, n) in counts {
        *faults.entry(kind).or_default() += n;
    }
}

fn summary(outcome: &SimRun) -> String {
    if !outcome.settled {
        return "the run did not settle: messages still ready or unsettled".to_owned();
    }
    if !outcome.stats.conserved() {
        return format!("the broker's counters do not balance: {:?}", outcome.stats);
    }
    if let Some(first) = outcome.misrouted.first() {
        return format!("misrouted: {first}");
    }
    outcome.report.to_string().lines().take(12).collect::<Vec<_>>().join("\n  ")
}

/// Prints the history of one run, one event per line.
pub(crate) fn replay(scenario: &Scenario, seed: u64, full: bool, which: SimScenario) -> bool {
    use std::io::Write;
    // A closed pipe (`| head`) ends the listing quietly: every line is written, never printed.
    let mut out = std::io::stdout().lock();
    if which == SimScenario::Jobs {
        let outcome = tubemail_sim::jobs::run_jobs(&tubemail_sim::jobs::JobsScenario::default(), seed);
        let faults: Vec<String> = outcome.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let run = Listed { hash: outcome.history.hash(), ops: None, faults, violations: &outcome.violations };
        print_run(&mut out, outcome.history.events(), full, &run);
        return outcome.ok();
    }
    if which == SimScenario::Log {
        let outcome = run_log(&LogScenario::default(), seed);
        let faults: Vec<String> = outcome.faults().iter().map(|(k, n)| format!("{k}={n}")).collect();
        let ops = format!("{:?}", outcome.ops);
        let run =
            Listed { hash: outcome.history.hash(), ops: Some(ops), faults, violations: &outcome.violations };
        print_run(&mut out, outcome.history.events(), full, &run);
        return outcome.ok();
    }
    if which == SimScenario::Lifecycle {
        let outcome = run_lifecycle(scenario, seed);
        print_history(&mut out, &outcome.history, full);
        let _ = writeln!(out, "operations: {:?}", outcome.ops);
        for v in &outcome.violations {
            let _ = writeln!(out, "violation: {v}");
        }
        if outcome.ok() {
            let _ = writeln!(out, "every promise held");
        }
        return outcome.ok();
    }
    let outcome = run(scenario, seed);
    print_history(&mut out, &outcome.history, full);
    let _ = writeln!(out, "{}", outcome.report);
    outcome.ok()
}

/// What a listed run ends with: its hash, its operations, its faults and its violations.
struct Listed<'a, V> {
    hash: u64,
    ops: Option<String>,
    faults: Vec<String>,
    violations: &'a [V],
}

/// Prints the events of a log or jobs run (the first 200 unless `full`), then what `run` holds.
fn print_run<E: std::fmt::Display, V: std::fmt::Display>(
    out: &mut impl std::io::Write,
    events: &[E],
    full: bool,
    run: &Listed<'_, V>,
) {
    let _ = (|| -> std::io::Result<()> {
        print_events(out, events, full)?;
        writeln!(out, "history hash {:016x}", run.hash)?;
        if let Some(ops) = &run.ops {
            writeln!(out, "operations: {ops}")?;
        }
        writeln!(out, "faults: {}", run.faults.join(" "))?;
        for v in run.violations {
            writeln!(out, "violation: {v}")?;
        }
        if run.violations.is_empty() {
            writeln!(out, "every promise held")?;
        }
        Ok(())
    })();
}

/// Prints a history (the first 200 events unless `full`) and its hash.
fn print_history(out: &mut impl std::io::Write, history: &tubemail_sim::history::History, full: bool) {
    let _ = (|| -> std::io::Result<()> {
        print_events(out, history.events(), full)?;
        writeln!(out, "history hash {:016x}", history.hash())
    })();
}

/// Prints events one per line: the first 200 unless `full`, then how many more there are.
fn print_events<E: std::fmt::Display>(
    out: &mut impl std::io::Write,
    events: &[E],
    full: bool,
) -> std::io::Result<()> {
    let shown = if full { events.len() } else { events.len().min(200) };
    for event in &events[..shown] {
        writeln!(out, "{event}")?;
    }
    if shown < events.len() {
        writeln!(out, "... {} more events (--full shows all)", events.len() - shown)?;
    }
    Ok(())
}
