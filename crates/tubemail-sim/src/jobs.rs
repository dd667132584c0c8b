//! The jobs scenario: background jobs on disk under seeded faults, on one thread with tokio's
//! paused clock, so that a seed replays the same run event for event.
//!
//! A driver enqueues plain jobs (some failing before they succeed, some slow enough to hit their
//! timeout, some unique, some scheduled), iteration jobs and a periodic job, cancels some, and
//! between steps lets simulated time pass; at seeded steps the process crashes (its tasks stop where
//! they are, the journal is abandoned) or shuts down gracefully, and restarts, sometimes with its
//! wall clock jumped ahead. At the end a last process runs until nothing is left.
//!
//! The checkers ([`check_jobs`]) read the history: every acked enqueue ends completed, dead or
//! cancelled (none lost or stuck); no run of a retry starts before the policy's wait; two jobs of one
//! unique key are never enqueued at once; each periodic tick is enqueued once; an iteration job
//! handles every item at least once, re-handles after an interruption at most the items since its
//! last checkpoint, and its checkpoint never moves back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tubemail::jobs::{
    enumerators, Cancelled, EnqueueError, EnqueueOptions, Enumerator, Fsync, IterationJob, IterationSettings,
    Job, JobContext, JobError, JobId, Jobs, Pool, Refused, RetryPolicy,
};

/// The wall clock at the first start.
const EPOCH_S: u64 = 1_700_000_000;
/// A retry's policy in the scenario: Sidekiq's, 3 retries.
const RETRIES: u32 = 3;
/// The periodic job's cron expression: every 20 s.
const CRON: &str = "*/20 * * * * *";
/// A run's time limit.
const TIMEOUT_MS: u64 = 1_000;
/// How long a shutdown waits before it interrupts running jobs.
const SHUTDOWN_TIMEOUT_MS: u64 = 300;
/// Items of each iteration job.
const ITEMS: u64 = 30;

/// The scenario's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsScenario {
    /// Driver steps per run.
    pub steps: u32,
    #[doc(hidden)]
    pub bugs: tubemail::jobs::broken::JobBugs,
}

impl Default for JobsScenario {
    fn default() -> Self {
        JobsScenario { steps: 40, bugs: Default::default() }
    }
}

/// What the history records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobsWhat {
    /// The run's settings.
    Config {
        /// Workers.
        workers: usize,
        /// The iteration jobs' checkpoint interval.
        checkpoint_items: u64,
    },
    /// A process started (`life`), with its wall clock.
    Start {
        /// Which life.
        life: u32,
        /// The wall clock's start, in ms.
        wall_ms: i64,
    },
    /// An enqueue was acked.
    Enqueued {
        /// The job.
        job: u64,
        /// Its unique key, and how long it holds (ms).
        unique: Option<(String, u64)>,
        /// How many runs fail before one succeeds.
        failures: u8,
        /// Whether every run outlives its 1 s timeout.
        slow: bool,
    },
    /// An enqueue was refused by a unique key.
    Duplicate {
        /// The key.
        key: String,
    },
    /// An iteration job was enqueued.
    EnqueuedIteration {
        /// The job.
        job: u64,
    },
    /// A run began.
    RunStart {
        /// The job.
        job: u64,
        /// Its retries before this run.
        retries: u32,
    },
    /// A run ended with this result.
    RunEnd {
        /// The job.
        job: u64,
        /// Its retries before this run.
        retries: u32,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The periodic job ran for its tick.
    TickRun {
        /// The tick (wall-clock ms).
        tick: i64,
        /// The job's id.
        id: u64,
    },
    /// An iteration job handled an item.
    Item {
        /// The job.
        job: u64,
        /// The item.
        item: u64,
    },
    /// An iteration job's checkpointed progress as a new process found it.
    Progress {
        /// The job.
        job: u64,
        /// Items up to its checkpoint.
        items: u64,
    },
    /// An iteration job finished.
    IterationDone {
        /// The job.
        job: u64,
    },
    /// A job was cancelled (waiting, or running).
    Cancelled {
        /// The job.
        job: u64,
    },
    /// The process crashed.
    Crash,
    /// The process shut down gracefully.
    Shutdown {
        /// Jobs interrupted at the timeout.
        interrupted: usize,
    },
    /// At the end, the jobs left in the store, and the dead ones.
    End {
        /// Jobs left that are not dead.
        left: Vec<u64>,
        /// Dead jobs.
        dead: Vec<u64>,
    },
}

/// One event: when (µs of simulated time) and what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsEvent {
    /// Simulated time, µs since the run began.
    pub at_us: u64,
    /// What happened.
    pub what: JobsWhat,
}

impl fmt::Display for JobsEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>12} {:?}", self.at_us, self.what)
    }
}

/// A run's events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobsHistory {
    events: Vec<JobsEvent>,
}

impl JobsHistory {
    /// The events, in order.
    pub fn events(&self) -> &[JobsEvent] {
        &self.events
    }

    /// A hash of the history (FNV-1a of its MessagePack), the same for the same seed.
    pub fn hash(&self) -> u64 {
        let bytes = rmp_serde::to_vec(&self.events).expect("events encode");
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
    }
}

/// What one run produced.
#[derive(Debug, Clone)]
pub struct JobsRun {
    /// The seed.
    pub seed: u64,
    /// The history.
    pub history: JobsHistory,
    /// How often each fault fired.
    pub faults: BTreeMap<&'static str, u64>,
    /// The promises broken.
    pub violations: Vec<String>,
}

impl JobsRun {
    /// Whether every promise held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

struct Recorder {
    events: Vec<JobsEvent>,
    t0: tokio::time::Instant,
}

type Shared = Arc<Mutex<Recorder>>;

fn record(shared: &Shared, what: JobsWhat) {
    let mut r = shared.lock().expect("history");
    let at_us = r.t0.elapsed().as_micros() as u64;
    r.events.push(JobsEvent { at_us, what });
}

thread_local! {
    /// The recorder of the run on this thread (handlers are plain functions of their job).
    static RECORDER: std::cell::RefCell<Option<Shared>> = const { std::cell::RefCell::new(None) };
}

fn note(what: JobsWhat) {
    RECORDER.with(|r| {
        if let Some(shared) = r.borrow().as_ref() {
            record(shared, what);
        }
    });
}

/// A plain job: fails its first `failures` runs, works `work_ms` (past its 1 s timeout when slow).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimJob {
    key: u64,
    failures: u8,
    work_ms: u64,
}

impl Job for SimJob {
    const NAME: &'static str = "sim_job";
}

/// The periodic job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tick;

impl Job for Tick {
    const NAME: &'static str = "sim_tick";
}

/// An iteration job over [`ITEMS`] items of 0 to 50 ms each.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimIteration {
    key: u64,
}

impl Job for SimIteration {
    const NAME: &'static str = "sim_iteration";
}

impl IterationJob for SimIteration {
    type Item = u64;
    type Cursor = u64;

    fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<u64, u64>, JobError> {
        Ok(enumerators::range(0..ITEMS, cursor))
    }

    async fn each_iteration(&self, item: u64, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis((self.key * 7 + item * 13) % 50)).await;
        note(JobsWhat::Item { job: self.key, item });
        Ok(())
    }

    fn on_complete(&self, _ctx: &JobContext) {
        note(JobsWhat::IterationDone { job: self.key });
    }
}

fn start(dir: &std::path::Path, seed: u64, wall_ms: i64, workers: usize, checkpoint_items: u64) -> Jobs {
    Jobs::builder()
        .dir(dir)
        // No sync thread: acks at once, and nothing runs off this thread (a process crash keeps
        // what was written, as the page cache does).
        .fsync(Fsync::Never)
        // Time is tokio's paused clock alone: no alarm thread's wake-ups.
        .precise_schedule(false)
        .seed(seed)
        .start_time(UNIX_EPOCH + Duration::from_millis(wall_ms as u64))
        .shutdown_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS))
        .maintenance_every(Duration::from_secs(86_400 * 365))
        .pool(Pool::new("sim", workers).queue("default"))
        .iteration_settings(IterationSettings {
            checkpoint_items,
            checkpoint_every: Duration::from_secs(3_600),
            max_job_runtime: Duration::from_millis(400),
        })
        .iteration::<SimIteration>()
        .handle(|job: SimJob, ctx: JobContext| async move {
            let retries = ctx.retry_count();
            note(JobsWhat::RunStart { job: job.key, retries });
            tokio::time::sleep(Duration::from_millis(job.work_ms)).await;
            let ok = u32::from(job.failures) <= retries;
            note(JobsWhat::RunEnd { job: job.key, retries, ok });
            if ok {
                Ok(())
            } else {
                Err(JobError::Retry("simulated failure".into()))
            }
        })
        .handle(|_: Tick, ctx: JobContext| async move {
            if let Some(tick) = ctx.periodic_tick() {
                note(JobsWhat::TickRun { tick, id: ctx.id().0 });
            }
            Ok(())
        })
        .periodic("tick", CRON, &Tick)
        .start()
        .expect("the scenario's jobs start")
}

/// Runs the jobs scenario once with `seed`.
pub fn run_jobs(scenario: &JobsScenario, seed: u64) -> JobsRun {
    let previous = tubemail::jobs::broken::set_thread_bugs(scenario.bugs);
    let dir = tempfile::Builder::new().prefix("tubemail-sim-jobs-").tempdir().expect("a temporary directory");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a paused runtime");
    let (history, faults) = runtime.block_on(drive(scenario, seed, dir.path()));
    tubemail::jobs::broken::set_thread_bugs(previous);
    let violations = check_jobs(&history);
    JobsRun { seed, history, faults, violations }
}

async fn drive(
    scenario: &JobsScenario,
    seed: u64,
    dir: &std::path::Path,
) -> (JobsHistory, BTreeMap<&'static str, u64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6a6f_6273);
    let shared: Shared =
        Arc::new(Mutex::new(Recorder { events: Vec::new(), t0: tokio::time::Instant::now() }));
    RECORDER.with(|r| *r.borrow_mut() = Some(shared.clone()));
    let workers = rng.gen_range(1..=4);
    let checkpoint_items = rng.gen_range(1..=6);
    record(&shared, JobsWhat::Config { workers, checkpoint_items });
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let t0 = tokio::time::Instant::now();
    let wall = |jump: i64| (EPOCH_S * 1_000) as i64 + t0.elapsed().as_millis() as i64 + jump;
    let mut jump = 0i64;
    let mut life_no = 0u32;
    let mut next_key = 0u64;
    let mut ids: Vec<(JobId, u64)> = Vec::new();
    let new_life = |life_no: &mut u32, jump: i64| {
        *life_no += 1;
        let wall_ms = wall(jump);
        record(&shared, JobsWhat::Start { life: *life_no, wall_ms });
        start(dir, seed.wrapping_add(u64::from(*life_no)), wall_ms, workers, checkpoint_items)
    };
    let mut life = new_life(&mut life_no, jump);
    let progress = |life: &Jobs, ids: &[(JobId, u64)]| {
        for (id, key) in ids {
            if let Some(record) = life.job(*id) {
                if record.progress.started {
                    note(JobsWhat::Progress { job: *key, items: record.progress.items });
                }
            }
        }
    };
    for _ in 0..scenario.steps {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3_000))).await;
        match rng.gen_range(0..100) {
            0..=44 => {
                let key = next_key;
                next_key += 1;
                let failures = if rng.gen_bool(0.3) { rng.gen_range(1..=5) } else { 0 };
                // Slow: past its timeout on every run; long: past a shutdown's wait, within its timeout.
                let (slow, long) = (rng.gen_bool(0.08), rng.gen_bool(0.15));
                let work_ms = if slow {
                    TIMEOUT_MS + 500
                } else if long {
                    800
                } else {
                    rng.gen_range(0..200)
                };
                let job = SimJob { key, failures, work_ms };
                let mut options = EnqueueOptions::default()
                    .retry(RetryPolicy::sidekiq(RETRIES))
                    .timeout(Duration::from_millis(TIMEOUT_MS));
                let unique = rng
                    .gen_bool(0.3)
                    .then(|| (format!("u{}", rng.gen_range(0..3)), rng.gen_range(10..300) * 1_000));
                if let Some((k, ttl)) = &unique {
                    options = options.unique_key(k.clone(), Duration::from_millis(*ttl));
                }
                if rng.gen_bool(0.2) {
                    options = options.after(Duration::from_millis(rng.gen_range(0..30_000)));
                }
                match life.enqueue_with(job, options).await {
                    Ok(id) => {
                        ids.push((id, key));
                        record(&shared, JobsWhat::Enqueued { job: key, unique, failures, slow });
                    }
                    Err(EnqueueError::Refused(Refused::Duplicate { key, .. })) => {
                        record(&shared, JobsWhat::Duplicate { key });
                    }
                    Err(e) => panic!("the scenario's enqueue failed: {e}"),
                }
            }
            45..=54 => {
                let key = next_key;
                next_key += 1;
                let id = life.enqueue(SimIteration { key }).await.expect("an iteration job enqueues");
                ids.push((id, key));
                record(&shared, JobsWhat::EnqueuedIteration { job: key });
            }
            55..=64 if !ids.is_empty() => {
                let (id, key) = ids[rng.gen_range(0..ids.len())];
                match life.cancel(id).await.expect("cancel") {
                    Cancelled::Removed | Cancelled::Running => {
                        record(&shared, JobsWhat::Cancelled { job: key });
                        *faults.entry("cancel").or_default() += 1;
                    }
                    Cancelled::NotFound => {}
                }
            }
            65..=79 => {
                life.crash().await;
                record(&shared, JobsWhat::Crash);
                *faults.entry("crash").or_default() += 1;
                drop(life);
                if rng.gen_bool(0.3) {
                    jump += rng.gen_range(0..120_000);
                    *faults.entry("clock_jump").or_default() += 1;
                }
                life = new_life(&mut life_no, jump);
                progress(&life, &ids);
            }
            80..=87 => {
                let report = life.shutdown().await;
                record(&shared, JobsWhat::Shutdown { interrupted: report.interrupted });
                *faults.entry("shutdown").or_default() += 1;
                *faults.entry("interrupted_at_timeout").or_default() += report.interrupted as u64;
                drop(life);
                life = new_life(&mut life_no, jump);
                progress(&life, &ids);
            }
            _ => {}
        }
    }
    // The end: everything runs out (retries wait at most 3^4 + 15 + 40 s each).
    for _ in 0..2_000 {
        let sizes = life.stats().sizes;
        if sizes.total == sizes.dead {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let dead: BTreeSet<JobId> = life.dead().iter().map(|r| r.id).collect();
    let mut left = Vec::new();
    let mut dead_keys = Vec::new();
    for (id, key) in &ids {
        if dead.contains(id) {
            dead_keys.push(*key);
        } else if life.job(*id).is_some() {
            left.push(*key);
        }
    }
    life.shutdown().await;
    record(&shared, JobsWhat::End { left, dead: dead_keys });
    RECORDER.with(|r| *r.borrow_mut() = None);
    let events = std::mem::take(&mut shared.lock().expect("history").events);
    for event in &events {
        let kind = match &event.what {
            JobsWhat::Duplicate { .. } => "unique_refused",
            JobsWhat::RunEnd { ok: false, .. } => "handler_failure",
            JobsWhat::Enqueued { slow: true, .. } => "slow_job_timeouts",
            JobsWhat::TickRun { .. } => "periodic_runs",
            _ => continue,
        };
        *faults.entry(kind).or_default() += 1;
    }
    (JobsHistory { events }, faults)
}

/// The promises, read from a history; each violation names the job and what broke.
pub fn check_jobs(history: &JobsHistory) -> Vec<String> {
    let mut out = Vec::new();
    let mut checkpoint_items = u64::MAX;
    // Wall-clock µs minus simulated µs in the current life (the clock may jump at a restart).
    let mut offset_us = 0i64;
    let wall = |at_us: u64, offset_us: i64| at_us as i64 + offset_us;
    let mut plain: BTreeMap<u64, (u8, bool)> = BTreeMap::new();
    let mut iterations: BTreeSet<u64> = BTreeSet::new();
    let mut succeeded: BTreeSet<u64> = BTreeSet::new();
    let mut died: BTreeSet<u64> = BTreeSet::new();
    let mut cancelled: BTreeSet<u64> = BTreeSet::new();
    let mut finished: BTreeSet<u64> = BTreeSet::new();
    let mut ended: Option<(Vec<u64>, Vec<u64>)> = None;
    // Unique keys: key -> (holder, until, in wall-clock µs).
    let mut held: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    // Each job's last failure, in wall-clock µs, and the retries before the run that failed.
    let mut last_failure: BTreeMap<u64, (i64, u32)> = BTreeMap::new();
    let mut slow_pending: BTreeMap<u64, (i64, u32)> = BTreeMap::new();
    let mut ticks: BTreeMap<i64, BTreeSet<u64>> = BTreeMap::new();
    let mut items: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut checkpoint: BTreeMap<u64, u64> = BTreeMap::new();
    let policy_wait_us = |retries_before: u32| (u64::from(retries_before).pow(4) + 15) as i64 * 1_000_000;
    for event in history.events() {
        let now = wall(event.at_us, offset_us);
        match &event.what {
            JobsWhat::Config { checkpoint_items: c, .. } => checkpoint_items = *c,
            JobsWhat::Start { wall_ms, .. } => offset_us = wall_ms * 1_000 - event.at_us as i64,
            JobsWhat::Enqueued { job, unique, failures, slow } => {
                if let Some((key, ttl_ms)) = unique {
                    if let Some(&(holder, until)) = held.get(key) {
                        let released = succeeded.contains(&holder)
                            || died.contains(&holder)
                            || cancelled.contains(&holder);
                        if !released && now < until {
                            out.push(format!(
                                "unique key {key}: job {job} enqueued while job {holder} held it"
                            ));
                        }
                    }
                    held.insert(key.clone(), (*job, now + *ttl_ms as i64 * 1_000));
                }
                plain.insert(*job, (*failures, *slow));
            }
            JobsWhat::EnqueuedIteration { job } => {
                iterations.insert(*job);
            }
            JobsWhat::RunStart { job, retries } => {
                // A slow run fails at its timeout, unless a crash or shutdown stopped it first: known
                // once the job starts again with one retry more.
                if let Some((started, before)) = slow_pending.remove(job) {
                    if *retries > before {
                        last_failure.insert(*job, (started + TIMEOUT_MS as i64 * 1_000, before));
                    }
                }
                if *retries > 0 {
                    if let Some(&(failed_at, before)) = last_failure.get(job) {
                        if now + 2_000 < failed_at + policy_wait_us(before) {
                            out.push(format!(
                                "job {job}: retry {retries} started {} ms after its failure, before the policy's {} s",
                                (now - failed_at) / 1_000,
                                policy_wait_us(before) / 1_000_000
                            ));
                        }
                    }
                }
                if plain.get(job).is_some_and(|(_, slow)| *slow) {
                    slow_pending.insert(*job, (now, *retries));
                    if *retries >= RETRIES {
                        // Its last run: it dies at its timeout (counted as released from now, which
                        // can only hide a unique violation, never invent one).
                        died.insert(*job);
                    }
                }
            }
            JobsWhat::RunEnd { job, retries, ok } => {
                if *ok {
                    succeeded.insert(*job);
                } else {
                    last_failure.insert(*job, (now, *retries));
                    if *retries >= RETRIES {
                        died.insert(*job);
                    }
                }
            }
            JobsWhat::TickRun { tick, id } => {
                ticks.entry(*tick).or_default().insert(*id);
            }
            JobsWhat::Item { job, item } => {
                items.entry(*job).or_default().insert(*item);
            }
            JobsWhat::Progress { job, items: at } => {
                let before = checkpoint.get(job).copied().unwrap_or(0);
                if *at < before {
                    out.push(format!("iteration job {job}: its checkpoint moved back from {before} to {at}"));
                }
                checkpoint.insert(*job, (*at).max(before));
                let handled = items.get(job).map_or(0, |s| s.len() as u64);
                if handled > *at + checkpoint_items {
                    out.push(format!(
                        "iteration job {job}: {handled} items handled, checkpoint at {at} (every {checkpoint_items}): more than an interval to handle again"
                    ));
                }
                if *at > handled {
                    out.push(format!(
                        "iteration job {job}: checkpoint at {at} items, only {handled} handled"
                    ));
                }
            }
            JobsWhat::IterationDone { job } => {
                finished.insert(*job);
            }
            JobsWhat::Cancelled { job } => {
                cancelled.insert(*job);
            }
            JobsWhat::End { left, dead } => ended = Some((left.clone(), dead.clone())),
            JobsWhat::Duplicate { .. } | JobsWhat::Crash | JobsWhat::Shutdown { .. } => {}
        }
    }
    for (tick, ids) in &ticks {
        if ids.len() > 1 {
            out.push(format!("periodic tick {tick} was enqueued {} times: {ids:?}", ids.len()));
        }
    }
    let Some((left, dead)) = ended else {
        out.push("the run did not end".into());
        return out;
    };
    let dead: BTreeSet<u64> = dead.into_iter().collect();
    for job in left {
        out.push(format!("job {job} is stuck: neither completed, dead nor cancelled at the end"));
    }
    for (job, (failures, _)) in &plain {
        if !(succeeded.contains(job) || dead.contains(job) || cancelled.contains(job)) {
            out.push(format!("job {job} (failing {failures} times) was lost: acked, then neither completed, dead nor cancelled"));
        }
    }
    for job in &iterations {
        if cancelled.contains(job) || dead.contains(job) {
            continue;
        }
        let handled = items.get(job).map_or(0, |s| s.len() as u64);
        if !finished.contains(job) || handled < ITEMS {
            out.push(format!(
                "iteration job {job}: {handled} of {ITEMS} items handled, finished: {}",
                finished.contains(job)
            ));
        }
    }
    out
}
