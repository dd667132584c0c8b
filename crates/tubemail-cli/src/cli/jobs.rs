//! `tubemail jobs`: the jobs' journal on the command line. `inspect` shows queues, scheduled and
//! retrying jobs, the dead set and iteration progress; `torture` kills a worker process with SIGKILL
//! again and again and checks that every acked enqueue ran and that iteration jobs re-handle no more
//! than their checkpoint interval after each kill.
//!
//! Exit codes: 0 when done (and sound), 1 when the journal cannot be read or a check failed, 2 when
//! what was asked cannot be served as asked.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tubemail::jobs::{
    enumerators, Enumerator, Fsync, IterationJob, IterationSettings, Job, JobContext, JobError, JobState,
    Jobs, Pool,
};
use tubemail_log::LogDir;

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// Shows a jobs directory: queues with their sizes and latency, scheduled and retrying jobs,
    /// the dead set, iteration progress. The directory must not be open in another process.
    Inspect {
        /// The jobs' directory (`JobsBuilder::dir`).
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Kills a worker process with SIGKILL again and again; exit 1 if an acked job was lost.
    ///
    /// Enqueues plain jobs (half of which enqueue a follow-up) and iteration jobs, then runs a child
    /// worker process on the directory and kills it with SIGKILL at a random moment (10 to 150 ms
    /// after its start), N times; then lets a last child run every job to its end. Every job's
    /// effects are appended to a file; the check: every acked enqueue ran, every iteration item was
    /// handled, and after each kill an iteration job re-handled at most its checkpoint interval.
    Torture {
        /// The directory: missing or empty.
        #[arg(long)]
        dir: PathBuf,
        /// How many times the worker is killed (1 to 10,000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        kills: u64,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The seed of the kill moments (default: from the clock; the report names it).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The torture's worker (run by `torture`).
    #[command(hide = true)]
    TortureWorker {
        dir: PathBuf,
        /// Exit once no job is left.
        #[arg(long)]
        until_done: bool,
    },
}

/// Runs a `tubemail jobs` command.
pub(crate) fn run(command: JobsCommand) -> ExitCode {
    let result = match command {
        JobsCommand::Inspect { dir, json } => inspect(&dir, json),
        JobsCommand::Torture { dir, kills, json, seed } => {
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            });
            torture(&dir, kills, json, seed)
        }
        JobsCommand::TortureWorker { dir, until_done } => torture_worker(&dir, until_done),
    };
    match result {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn failed(message: impl std::fmt::Display) -> Failure {
    (1, message.to_string())
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(failed)
}

// ---------------------------------------------------------------------------------------------
// inspect

fn inspect(dir: &Path, as_json: bool) -> Result<ExitCode, Failure> {
    if !dir.join(tubemail_log::dir::MARKER_FILE).is_file() {
        return Err((2, format!("{} is not a jobs directory (no tubemail log in it)", dir.display())));
    }
    let log = LogDir::open_existing(dir).map_err(failed)?;
    let stream = log.open_stream(tubemail::jobs::JOURNAL_STREAM).map_err(|e| match e {
        tubemail_log::LogError::UnknownStream(_) => (2, format!("{} holds no jobs", dir.display())),
        other => failed(other),
    })?;
    let partition = stream.partition(0).map_err(failed)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    let entries = tubemail::jobs::read_journal(partition).map_err(failed)?;
    let (store, bad) = tubemail::jobs::store::JobStore::recover(Default::default(), entries, now);
    let sizes = store.sizes();
    let all = store.all();
    let mut queues: BTreeMap<String, (usize, i64)> = BTreeMap::new();
    for record in &all {
        if record.state == JobState::Available {
            let entry = queues.entry(record.queue.to_string()).or_insert((0, 0));
            entry.0 += 1;
            entry.1 = entry.1.max(now - record.run_at);
        }
    }
    let cursor = |bytes: &Option<tubemail::Bytes>| -> serde_json::Value {
        bytes.as_ref().map_or(serde_json::Value::Null, |b| {
            rmp_serde::from_slice::<serde_json::Value>(b)
                .unwrap_or_else(|_| json!(format!("{} bytes", b.len())))
        })
    };
    let job_json = |r: &tubemail::jobs::JobRecord| {
        json!({
            "id": r.id.0, "name": &*r.name, "queue": &*r.queue, "state": r.state.as_str(),
            "retries": r.retries, "run_at_ms": r.run_at, "error": r.error, "died_at_ms": r.died_at,
        })
    };
    let scheduled: Vec<_> =
        all.iter().filter(|r| r.state == JobState::Scheduled).map(|r| job_json(r)).collect();
    let retrying: Vec<_> =
        all.iter().filter(|r| r.state == JobState::Retryable).map(|r| job_json(r)).collect();
    let dead: Vec<_> = store.dead().iter().map(|r| job_json(r)).collect();
    let iterating: Vec<_> = all
        .iter()
        .filter(|r| r.progress.started)
        .map(|r| {
            json!({
                "id": r.id.0, "name": &*r.name, "state": r.state.as_str(), "cursor": cursor(&r.progress.cursor),
                "items": r.progress.items, "interruptions": r.progress.interruptions,
                "runtime_ms": r.progress.runtime_ms,
            })
        })
        .collect();
    if as_json {
        let report = json!({
            "jobs": sizes.total,
            "queues": queues.iter().map(|(q, (n, latency))| json!({"queue": q, "available": n, "latency_ms": latency})).collect::<Vec<_>>(),
            "scheduled": scheduled, "retrying": retrying, "dead": dead, "iterating": iterating,
            "undecodable_records": bad.len(),
        });
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} jobs ({} scheduled or retrying, {} dead)",
        dir.display(),
        sizes.total,
        sizes.scheduled,
        sizes.dead
    );
    println!("\nqueue                 available   latency");
    for (queue, (n, latency)) in &queues {
        println!("{queue:<20} {n:>10} {:>8.1} s", *latency as f64 / 1000.0);
    }
    for (title, list) in [("scheduled", &scheduled), ("retrying", &retrying), ("dead", &dead)] {
        println!("\n{title}: {}", list.len());
        for job in list.iter().take(20) {
            println!("  {job}");
        }
    }
    println!("\niteration jobs: {}", iterating.len());
    for job in &iterating {
        println!("  {job}");
    }
    if !bad.is_empty() {
        println!("\n{} records do not decode (skipped)", bad.len());
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// torture

/// Plain jobs the torture enqueues; the even ones enqueue a follow-up.
const PLAIN_JOBS: u64 = 3_000;
/// Iteration jobs, and items in each.
const ITERATION_JOBS: u64 = 20;
const ITEMS: u64 = 400;
/// The iteration jobs' checkpoint interval.
const CHECKPOINT_ITEMS: u64 = 10;
const FOLLOW_UP: u64 = 1_000_000;
const EFFECTS: &str = "effects.log";

#[derive(Serialize, Deserialize)]
struct Plain {
    n: u64,
}

impl Job for Plain {
    const NAME: &'static str = "torture_plain";
}

#[derive(Serialize, Deserialize)]
struct Iterate {
    job: u64,
}

impl Job for Iterate {
    const NAME: &'static str = "torture_iterate";
}

/// The effects file, shared by the worker's handlers: each effect is one `write` of one line.
static EFFECTS_FILE: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

fn effect(line: String) {
    if let Some(file) = EFFECTS_FILE.get() {
        let mut file = file.lock().expect("effects");
        file.write_all(line.as_bytes()).expect("the effects file takes a line");
    }
}

impl IterationJob for Iterate {
    type Item = u64;
    type Cursor = u64;

    fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<u64, u64>, JobError> {
        Ok(enumerators::range(0..ITEMS, cursor))
    }

    async fn each_iteration(&self, item: u64, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_micros(200)).await;
        effect(format!("i {} {item}\n", self.job));
        Ok(())
    }
}

fn torture_jobs(dir: &Path, workers: bool) -> Result<Jobs, tubemail::jobs::StartError> {
    Jobs::builder()
        .dir(dir)
        .workers(workers)
        .fsync(Fsync::Always)
        .pool(Pool::new("workers", 8).queue("default"))
        .iteration_settings(IterationSettings {
            checkpoint_items: CHECKPOINT_ITEMS,
            checkpoint_every: Duration::from_secs(3_600),
            max_job_runtime: Duration::from_millis(40),
        })
        .iteration::<Iterate>()
        .handle(|job: Plain, ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_micros(300)).await;
            if job.n < FOLLOW_UP && job.n.is_multiple_of(2) {
                ctx.jobs().enqueue(Plain { n: FOLLOW_UP + job.n }).await?;
                // Acked: the follow-up must run, whatever happens next.
                effect(format!("e {}\n", FOLLOW_UP + job.n));
            }
            effect(format!("p {}\n", job.n));
            Ok(())
        })
        .start()
}

fn torture_worker(dir: &Path, until_done: bool) -> Result<ExitCode, Failure> {
    let file =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(EFFECTS)).map_err(failed)?;
    let _ = EFFECTS_FILE.set(std::sync::Mutex::new(file));
    effect(format!("start {}\n", std::process::id()));
    runtime()?.block_on(async {
        let jobs = torture_jobs(&dir.join("jobs"), true).map_err(failed)?;
        if until_done {
            loop {
                jobs.idle().await;
                if jobs.stats().sizes.total == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            jobs.shutdown().await;
        } else {
            std::future::pending::<()>().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// What the effects file says.
#[derive(Default)]
struct Effects {
    /// Runs of each plain job.
    plain: BTreeMap<u64, u64>,
    /// Follow-ups whose enqueue was acked.
    acked_follow_ups: BTreeSet<u64>,
    /// Each worker's life: the iteration items it handled.
    lives: Vec<Vec<(u64, u64)>>,
    /// Effects recorded by the workers that were killed (all but the last).
    before_last: u64,
}

fn read_effects(path: &Path) -> Result<Effects, Failure> {
    let text = std::fs::read_to_string(path).map_err(failed)?;
    let mut effects = Effects::default();
    let mut seen = 0;
    for line in text.lines() {
        seen += 1;
        let words: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match (words.first().copied(), num(1), num(2)) {
            (Some("start"), _, _) => {
                effects.lives.push(Vec::new());
                effects.before_last = seen;
            }
            (Some("p"), Some(n), _) => *effects.plain.entry(n).or_insert(0) += 1,
            (Some("e"), Some(n), _) => {
                effects.acked_follow_ups.insert(n);
            }
            (Some("i"), Some(job), Some(item)) => {
                if let Some(life) = effects.lives.last_mut() {
                    life.push((job, item));
                }
            }
            // A line cut by a kill: only the last one can be.
            _ => {}
        }
    }
    Ok(effects)
}

fn torture(dir: &Path, kills: u64, as_json: bool, seed: u64) -> Result<ExitCode, Failure> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => {
            return Err((2, format!("--dir {} is not empty: remove it or choose another", dir.display())))
        }
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(failed)?,
        Err(e) => return Err((2, format!("--dir {}: {e}", dir.display()))),
    }
    let started = Instant::now();
    // Enqueue everything, acked on disk, in this process.
    runtime()?.block_on(async {
        let jobs = torture_jobs(&dir.join("jobs"), false).map_err(failed)?;
        jobs.enqueue_bulk((0..PLAIN_JOBS).map(|n| Plain { n })).await.map_err(failed)?;
        jobs.enqueue_bulk((0..ITERATION_JOBS).map(|job| Iterate { job })).await.map_err(failed)?;
        jobs.shutdown().await;
        Ok::<_, Failure>(())
    })?;
    let exe = std::env::current_exe().map_err(failed)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let bar = if std::io::stderr().is_terminal() && !as_json {
        let bar = ProgressBar::new(kills);
        bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} kills").expect("template"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let worker = |until_done: bool| {
        let mut command = Command::new(&exe);
        command.args(["jobs", "torture-worker"]).arg(dir);
        if until_done {
            command.arg("--until-done");
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(failed)
    };
    for _ in 0..kills {
        let mut child = worker(false)?;
        std::thread::sleep(Duration::from_millis(rng.gen_range(10..=150)));
        if let Some(status) = child.try_wait().map_err(failed)? {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().expect("piped"), &mut err);
            return Err(failed(format!("the worker ended before its kill ({status}): {err}")));
        }
        child.kill().map_err(failed)?;
        child.wait().map_err(failed)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut last = worker(true)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = last.try_wait().map_err(failed)? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = last.kill();
            return Err(failed("the last worker did not finish the jobs within 300 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(last.stderr.as_mut().expect("piped"), &mut err);
        return Err(failed(format!("the last worker failed ({status}): {err}")));
    }
    let effects = read_effects(&dir.join(EFFECTS))?;
    // Every acked enqueue ran: the initial jobs and every follow-up whose enqueue was acked.
    let expected: Vec<u64> = (0..PLAIN_JOBS).chain(effects.acked_follow_ups.iter().copied()).collect();
    let lost_plain = expected.iter().filter(|n| !effects.plain.contains_key(n)).count() as u64;
    let runs: u64 = effects.plain.values().sum();
    // Every item of every iteration job handled; re-handled items per interruption.
    let mut handled: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut reprocessed_max = 0u64;
    let mut reprocessed_total = 0u64;
    for life in &effects.lives {
        let mut again: BTreeMap<u64, u64> = BTreeMap::new();
        for &(job, item) in life {
            if !handled.entry(job).or_default().insert(item) {
                *again.entry(job).or_insert(0) += 1;
            }
        }
        reprocessed_max = reprocessed_max.max(again.values().copied().max().unwrap_or(0));
        reprocessed_total += again.values().sum::<u64>();
    }
    let lost_items: u64 =
        (0..ITERATION_JOBS).map(|job| ITEMS - handled.get(&job).map_or(0, |s| s.len() as u64)).sum();
    let left = runtime()?.block_on(async {
        let log = Arc::new(LogDir::open(dir.join("jobs")).map_err(failed)?);
        let jobs = Jobs::builder().log(log).workers(false).start().map_err(failed)?;
        let stats = jobs.stats();
        jobs.shutdown().await;
        Ok::<_, Failure>(stats.sizes.total)
    })?;
    let jobs_total = expected.len() as u64 + ITERATION_JOBS;
    let lost = lost_plain + lost_items;
    let ok = lost == 0 && left == 0 && reprocessed_max <= CHECKPOINT_ITEMS;
    let seconds = started.elapsed().as_secs_f64();
    if as_json {
        println!(
            "{}",
            json!({
                "kills": kills, "seed": seed, "jobs": jobs_total,
                "completed": jobs_total - lost_plain - (0..ITERATION_JOBS).filter(|j| handled.get(j).map_or(0, |s| s.len() as u64) < ITEMS).count() as u64,
                "lost": lost, "left": left, "plain_runs": runs, "reprocessed_max": reprocessed_max,
                "reprocessed_total": reprocessed_total, "checkpoint_interval": CHECKPOINT_ITEMS,
                "effects_before_the_last_worker": effects.before_last,
                "seconds": (seconds * 1000.0).round() / 1000.0,
            })
        );
    } else {
        println!("jobs torture: {kills} kills (seed {seed}) in {seconds:.1} s");
        println!(
            "{jobs_total} jobs ({} plain with {} acked follow-ups, {ITERATION_JOBS} iteration jobs of {ITEMS} items); \
             lost {lost}, left {left}; plain runs {runs} (re-runs are at-least-once)",
            PLAIN_JOBS,
            effects.acked_follow_ups.len()
        );
        println!("effects recorded by the killed workers: {}", effects.before_last);
        println!(
            "iteration items re-handled after a kill: at most {reprocessed_max} per interruption (checkpoint every \
             {CHECKPOINT_ITEMS}), {reprocessed_total} in all"
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
