//! The running jobs: the store behind one lock, the journal on the storage engine, worker pools,
//! the scheduler (due jobs, periodic ticks, the log's maintenance) and shutdown.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::FutureExt;
use rustc_hash::FxHashMap;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tubemail_log::{Append, Cleanup, Fsync, LogDir, LogError, Partition, Stream, StreamConfig};

use crate::iteration::{self, IterationJob, IterationSettings, Outcome};
use crate::job::{
    CancelFlag, EnqueueOptions, Job, JobContext, JobError, JobOptions, Unique, When, WorkerContext,
};
use crate::outbox::Outbox;
use crate::store::{
    Cancelled, Counters, Failure, JobId, JobRecord, JobState, JobStore, Limits, NewJob, Progress, Refused,
    Sizes,
};

/// The stream that holds the jobs' journal.
pub const JOURNAL_STREAM: &str = "__jobs";

/// The largest arguments a job may have, encoded: 8 MiB, so that its record (arguments, names, a
/// unique key, an error) fits the journal's 16 MiB record bound.
pub const ARGS_MAX: usize = 8 << 20;

/// The longest delay an enqueue accepts: 100 years.
pub const DELAY_MAX: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The most workers a pool may have.
pub const POOL_CONCURRENCY_MAX: usize = 10_000;

/// How often the scheduler runs the journal's retention and compaction.
pub const MAINTENANCE_EVERY: Duration = Duration::from_secs(30);

/// The journal's segment size: small, so that compaction (which works on closed segments) keeps the
/// journal near the live jobs' size.
pub const JOURNAL_SEGMENT_BYTES: u64 = 8 << 20;

type RunFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

trait Handler: Send + Sync {
    fn start(&self, claim: &Claimed, ctx: JobContext) -> RunFuture;

    /// Whether its runs go on (on a thread of tokio's blocking pool) when their future is dropped.
    fn blocking(&self) -> bool {
        false
    }
}

fn undecodable<T>(e: &rmp_serde::decode::Error) -> RunFuture {
    let reason = format!("arguments do not decode as {}: {e}", std::any::type_name::<T>());
    Box::pin(std::future::ready(Outcome::Failed(Failure::Kill { reason })))
}

fn outcome_of(result: Result<(), JobError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => Outcome::Failed(e.into_failure()),
    }
}

struct AsyncHandler<T, F>(F, PhantomData<fn() -> T>);

impl<T, F, Fut> Handler for AsyncHandler<T, F>
where
    T: Job,
    F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn start(&self, claim: &Claimed, ctx: JobContext) -> RunFuture {
        match rmp_serde::from_slice::<T>(claim.args.as_slice()) {
            Ok(job) => Box::pin((self.0)(job, ctx).map(outcome_of)),
            Err(e) => undecodable::<T>(&e),
        }
    }
}

struct BlockingHandler<T, F>(Arc<F>, PhantomData<fn() -> T>);

impl<T, F> Handler for BlockingHandler<T, F>
where
    T: Job,
    F: Fn(T, JobContext) -> Result<(), JobError> + Send + Sync + 'static,
{
    fn start(&self, claim: &Claimed, ctx: JobContext) -> RunFuture {
        match rmp_serde::from_slice::<T>(claim.args.as_slice()) {
            Ok(job) => {
                let f = self.0.clone();
                let task = tokio::task::spawn_blocking(move || f(job, ctx));
                Box::pin(async move {
                    match task.await {
                        Ok(result) => outcome_of(result),
                        Err(e) if e.is_panic() => {
                            Outcome::Failed(Failure::Kill { reason: panic_reason(e.into_panic()) })
                        }
                        Err(e) => Outcome::Failed(Failure::Retry { reason: e.to_string(), delay_ms: None }),
                    }
                })
            }
            Err(e) => undecodable::<T>(&e),
        }
    }

    fn blocking(&self) -> bool {
        true
    }
}

struct IterationHandler<T>(IterationSettings, PhantomData<fn() -> T>);

impl<T: IterationJob> Handler for IterationHandler<T> {
    fn start(&self, claim: &Claimed, ctx: JobContext) -> RunFuture {
        match rmp_serde::from_slice::<T>(claim.args.as_slice()) {
            Ok(job) => Box::pin(iteration::run(job, claim.progress.clone(), ctx, self.0)),
            Err(e) => undecodable::<T>(&e),
        }
    }
}

fn panic_reason(panic: Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("the handler panicked: {text}")
}

/// How a pool chooses between its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Always the first queue with a job, in the order given.
    Strict,
    /// A queue drawn at random by weight among those with a job (Sidekiq's weighted queues).
    Weighted,
}

/// A pool of workers serving queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    name: String,
    concurrency: usize,
    queues: Vec<(Arc<str>, u32)>,
    order: Order,
}

impl Pool {
    /// A pool of `concurrency` workers (1 to [`POOL_CONCURRENCY_MAX`]).
    pub fn new(name: impl Into<String>, concurrency: usize) -> Self {
        Pool { name: name.into(), concurrency, queues: Vec::new(), order: Order::Strict }
    }

    /// Serves `queue` with weight 1.
    #[must_use]
    pub fn queue(self, queue: &str) -> Self {
        self.weighted_queue(queue, 1)
    }

    /// Serves `queue` with `weight` (used when the order is [`Order::Weighted`]).
    #[must_use]
    pub fn weighted_queue(mut self, queue: &str, weight: u32) -> Self {
        self.queues.push((Arc::from(queue), weight));
        self
    }

    /// Sets how the pool chooses between its queues.
    #[must_use]
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }
}

struct PoolState {
    spec: Pool,
    wake: Notify,
}

struct Periodic {
    name: String,
    cron: croner::Cron,
    job: NewJob,
}

/// Why the jobs did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The journal could not be opened.
    #[error("cannot open the jobs' journal: {0}")]
    Log(#[from] LogError),
    /// Not inside a tokio runtime (an actix system is one).
    #[error("Jobs::start needs a tokio runtime (call it inside #[actix::main], #[tokio::main] or a runtime's block_on)")]
    NoRuntime,
    /// A setting is out of range.
    #[error("invalid jobs setting {field}: {why}")]
    Invalid {
        /// Which.
        field: String,
        /// What is wrong.
        why: String,
    },
    /// A cron expression did not parse.
    #[error("periodic job {name}: cron expression {expr:?} does not parse: {why}")]
    Cron {
        /// The periodic job.
        name: String,
        /// The expression.
        expr: String,
        /// The parser's words.
        why: String,
    },
}

/// Why an enqueue was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// No handler is registered under this name.
    #[error("no handler is registered for job {0:?}")]
    UnknownJob(String),
    /// No pool serves this queue, so the job would never run.
    #[error("no pool serves queue {0:?} (add one with JobsBuilder::pool)")]
    UnknownQueue(String),
    /// The unique key is held.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// An option is out of range.
    #[error("invalid enqueue option: {0}")]
    Invalid(String),
    /// The arguments do not serialize.
    #[error("the arguments of {name} do not encode: {why}")]
    Encode {
        /// The job's name.
        name: &'static str,
        /// The encoder's words.
        why: String,
    },
    /// The journal failed: the job may still run (as a publish whose confirm was lost).
    #[error("the journal failed: {0}")]
    Log(#[from] LogError),
    /// The jobs were shut down.
    #[error("the jobs are shut down")]
    Closed,
}

/// What a shutdown did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Whether this call shut the jobs down (false when they already were).
    pub shut_down: bool,
    /// Jobs running when the shutdown began.
    pub running: usize,
    /// Of those, jobs interrupted at the timeout and put back at the front of their queue.
    pub interrupted: usize,
    /// Jobs left in the store (they run in the next process when the journal is on disk).
    pub left: Sizes,
}

/// The jobs' figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStats {
    /// Counters since start.
    pub counters: Counters,
    /// Jobs in each state.
    pub sizes: Sizes,
}

impl std::fmt::Display for JobStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        writeln!(
            f,
            "enqueued {}  completed {}  retried {}  died {}  discarded {}  cancelled {}  interrupted {}  trimmed {}  duplicates {}",
            c.enqueued, c.completed, c.retried, c.died, c.discarded, c.cancelled, c.interrupted, c.trimmed, c.duplicates
        )?;
        let s = &self.sizes;
        write!(f, "scheduled {}  executing {}  dead {}  available", s.scheduled, s.executing, s.dead)?;
        for (queue, n) in &s.available {
            write!(f, "  {queue}={n}")?;
        }
        Ok(())
    }
}

/// Where the time comes from: the wall clock at start, advanced by tokio's clock (so that paused
/// time and the simulator drive schedules, retries and cron ticks).
#[derive(Debug, Clone, Copy)]
struct Clock {
    base_ms: i64,
    /// The moment the wall clock read exactly `base_ms`: a start at 10.7 ms counts from 10 ms
    /// 0.7 ms earlier, so that `now_ms` never lags the wall clock by the fraction it dropped (which
    /// made scheduled jobs start up to a millisecond late).
    base: tokio::time::Instant,
}

impl Clock {
    /// The clock of a start at `wall`, taken now.
    fn starting_at(wall: SystemTime) -> Self {
        let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let base_ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
        let fraction = since_epoch - Duration::from_millis(since_epoch.as_millis() as u64);
        let now = tokio::time::Instant::now();
        Clock { base_ms, base: now.checked_sub(fraction).unwrap_or(now) }
    }

    fn now_ms(&self) -> i64 {
        self.base_ms.saturating_add(i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX))
    }

    /// Now in microseconds since the epoch.
    fn now_us(&self) -> i64 {
        self.us_at(tokio::time::Instant::now())
    }

    /// `at` in microseconds since the epoch.
    fn us_at(&self, at: tokio::time::Instant) -> i64 {
        let since = at.saturating_duration_since(self.base);
        self.base_ms
            .saturating_mul(1_000)
            .saturating_add(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// Now, to the nanosecond, as time since the Unix epoch.
    fn now_exact(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.base_ms).unwrap_or(0)) + self.base.elapsed()
    }

    /// The moment of `us` microseconds since the epoch on tokio's clock.
    fn instant_at_us(&self, us: i64) -> tokio::time::Instant {
        let after = u64::try_from(us.saturating_sub(self.base_ms.saturating_mul(1_000))).unwrap_or(0);
        later_by(self.base, Duration::from_micros(after))
    }
}

struct Shared {
    store: JobStore,
    rng: fastrand::Rng,
    running: FxHashMap<JobId, Arc<CancelFlag>>,
}

impl Shared {
    /// Jobs running: claimed and started.
    fn started(&self) -> usize {
        self.running.values().filter(|flag| flag.is_started()).count()
    }
}

struct Inner {
    shared: parking_lot::Mutex<Shared>,
    journal: Option<(Stream, Arc<Partition>)>,
    /// The journal's writes on their way to it (with a journal).
    outbox: Option<Arc<Outbox>>,
    /// Set once the journal is closed (a shutdown's end) or abandoned (a crash): nothing is
    /// appended after. A shutdown cancelled before its end leaves it unset, and the drop appends
    /// what the workers settled.
    journal_done: AtomicBool,
    /// Whether the outbox has a thread of its own appending (a multi-threaded runtime): then a
    /// worker settling its jobs does not append.
    appender: bool,
    /// Each registered name's place in `handler_list`.
    handlers: BTreeMap<Arc<str>, usize>,
    handler_list: Vec<Arc<dyn Handler>>,
    pools: Vec<PoolState>,
    serving: BTreeMap<Arc<str>, Vec<usize>>,
    scheduler: Arc<Notify>,
    idle: Notify,
    clock: Clock,
    stopping: watch::Sender<bool>,
    /// `stopping`'s value, for a worker to read between jobs: a load of a line no one writes, where
    /// `watch::Receiver::borrow` takes a read lock that every core's worker writes.
    stop: AtomicBool,
    interrupt: watch::Sender<bool>,
    closed: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown_timeout: Duration,
    maintenance_every: Duration,
    precise: bool,
    /// When the next scheduled job is due (µs since the epoch; `i64::MAX` for none), kept by
    /// every change of the store: a worker running a batch looks at it between jobs.
    next_due_us: AtomicI64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(outbox) = &self.outbox {
            outbox.stop();
            // Dropped without a shutdown, or with one cancelled before its end (a runtime that
            // ended, a panic, a timeout around `shutdown`): what the workers settled is appended
            // before the journal closes. After a crash it is lost, as a crash loses it.
            if !self.journal_done.load(Ordering::Acquire) {
                if let Err(e) = outbox.drain() {
                    tracing::error!(%e, "the jobs' journal failed as the jobs were dropped");
                }
            }
        }
    }
}

/// Background jobs: see the [crate docs](crate). Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs").field("durable", &self.inner.journal.is_some()).finish()
    }
}

enum Storage {
    Memory,
    Dir(PathBuf),
    Log(Arc<LogDir>),
}

/// Sets up [`Jobs`]: storage, handlers, pools, periodic jobs.
pub struct JobsBuilder {
    storage: Storage,
    fsync: Fsync,
    handlers: BTreeMap<Arc<str>, Arc<dyn Handler>>,
    pools: Vec<Pool>,
    periodic: Vec<(String, String, Result<NewJob, String>)>,
    limits: Limits,
    seed: Option<u64>,
    start_time: Option<SystemTime>,
    shutdown_timeout: Duration,
    iteration: IterationSettings,
    workers: bool,
    maintenance_every: Duration,
    precise: bool,
}

impl Jobs {
    /// A builder: jobs in memory, one pool of 10 workers on queue "default", Sidekiq's defaults.
    pub fn builder() -> JobsBuilder {
        JobsBuilder {
            storage: Storage::Memory,
            fsync: Fsync::Always,
            handlers: BTreeMap::new(),
            pools: Vec::new(),
            periodic: Vec::new(),
            limits: Limits::default(),
            seed: None,
            start_time: None,
            shutdown_timeout: Duration::from_secs(25),
            iteration: IterationSettings::default(),
            workers: true,
            maintenance_every: MAINTENANCE_EVERY,
            precise: true,
        }
    }
}

impl JobsBuilder {
    /// Keeps the jobs in a log directory on disk (created if missing, locked while open).
    #[must_use]
    pub fn dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.storage = Storage::Dir(path.into());
        self
    }

    /// Keeps the jobs in an open log (a broker's data directory, say).
    #[must_use]
    pub fn log(mut self, log: Arc<LogDir>) -> Self {
        self.storage = Storage::Log(log);
        self
    }

    /// The journal's fsync policy [`always`: an enqueue returns once its record is on disk].
    #[must_use]
    pub fn fsync(mut self, fsync: Fsync) -> Self {
        self.fsync = fsync;
        self
    }

    /// Registers an async handler for job type `T` (it runs on the runtime's threads: it must not
    /// block; see [`JobsBuilder::handle_blocking`]).
    #[must_use]
    pub fn handle<T, F, Fut>(mut self, handler: F) -> Self
    where
        T: Job,
        F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        self.handlers.insert(Arc::from(T::NAME), Arc::new(AsyncHandler(handler, PhantomData)));
        self
    }

    /// Registers a blocking handler for job type `T`: it runs on tokio's blocking pool, so it stalls
    /// no other queue. It cannot be stopped mid-run: its timeout and a cancellation take effect when
    /// it returns (its worker waits for it, so the job is neither retried nor its unique key
    /// released while it runs; a run that succeeded after all completes), or where it checks
    /// [`JobContext::is_cancelled`]. A shutdown's interruption does not wait for it: its job is put
    /// back and runs again in the next process, as Sidekiq's; a handler that checks
    /// [`JobContext::is_stopping`] can end sooner.
    #[must_use]
    pub fn handle_blocking<T, F>(mut self, handler: F) -> Self
    where
        T: Job,
        F: Fn(T, JobContext) -> Result<(), JobError> + Send + Sync + 'static,
    {
        self.handlers.insert(Arc::from(T::NAME), Arc::new(BlockingHandler(Arc::new(handler), PhantomData)));
        self
    }

    /// Registers iteration job type `T` with the builder's iteration settings.
    #[must_use]
    pub fn iteration<T: IterationJob>(mut self) -> Self {
        self.handlers
            .insert(Arc::from(T::NAME), Arc::new(IterationHandler::<T>(self.iteration, PhantomData)));
        self
    }

    /// The checkpoint and yield settings of iteration jobs registered after this call.
    #[must_use]
    pub fn iteration_settings(mut self, settings: IterationSettings) -> Self {
        self.iteration = settings;
        self
    }

    /// Adds a worker pool (without any, one pool of 10 workers serves "default").
    #[must_use]
    pub fn pool(mut self, pool: Pool) -> Self {
        self.pools.push(pool);
        self
    }

    /// Enqueues `job` on each tick of cron expression `cron` (five fields, or six with seconds
    /// first; UTC), once per tick across restarts. Ticks missed while no process ran are not made
    /// up. A bad expression fails [`JobsBuilder::start`].
    #[must_use]
    pub fn periodic<T: Job>(mut self, name: &str, cron: &str, job: &T) -> Self {
        let prepare = Prepare::new::<T>(None, None);
        let new =
            new_job(job, &EnqueueOptions::default(), &prepare, 0, Duration::ZERO).map_err(|e| e.to_string());
        self.periodic.push((name.to_owned(), cron.to_owned(), new));
        self
    }

    /// The store's bounds.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The seed of the retry jitter and the weighted queue choice [drawn from the OS].
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The wall-clock time at start [now]; time then advances with tokio's clock.
    #[must_use]
    pub fn start_time(mut self, at: SystemTime) -> Self {
        self.start_time = Some(at);
        self
    }

    /// How long a shutdown waits for running jobs before it interrupts them [25 s, as Sidekiq].
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How often the dead set is trimmed by age and the journal compacted [30 s].
    #[must_use]
    pub fn maintenance_every(mut self, every: Duration) -> Self {
        self.maintenance_every = every;
        self
    }

    /// Whether a thread of its own wakes the scheduler at due times [true]. tokio's timer counts
    /// whole milliseconds and rounds up, so without it a scheduled job is promoted up to a
    /// millisecond late; with it, within the OS's timer slack (about 50 µs). Turn it off where time
    /// is tokio's alone (paused time, the simulator): there it adds only wake-ups that replay differently.
    #[must_use]
    pub fn precise_schedule(mut self, on: bool) -> Self {
        self.precise = on;
        self
    }

    /// Whether this process runs workers and the scheduler [true]. Without them it only enqueues
    /// and inspects (a tool, or a process that must not run jobs); the pools still say which queues
    /// exist.
    #[must_use]
    pub fn workers(mut self, run: bool) -> Self {
        self.workers = run;
        self
    }

    /// Opens the journal (replaying it), and starts the pools and the scheduler on the current
    /// tokio runtime.
    ///
    /// # Errors
    /// [`StartError`]: no runtime, the journal, a bad cron expression, a bad pool.
    pub fn start(self) -> Result<Jobs, StartError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StartError::NoRuntime);
        }
        let mut pools = self.pools;
        if pools.is_empty() {
            pools.push(Pool::new("default", 10).queue("default"));
        }
        let mut serving: BTreeMap<Arc<str>, Vec<usize>> = BTreeMap::new();
        for (i, pool) in pools.iter().enumerate() {
            let invalid = |why: String| StartError::Invalid { field: format!("pool {}", pool.name), why };
            if !(1..=POOL_CONCURRENCY_MAX).contains(&pool.concurrency) {
                return Err(invalid(format!(
                    "concurrency {} (1 to {POOL_CONCURRENCY_MAX})",
                    pool.concurrency
                )));
            }
            if pool.queues.is_empty() {
                return Err(invalid("serves no queue".into()));
            }
            for (queue, weight) in &pool.queues {
                if let Some(why) = queue_problem(queue) {
                    return Err(invalid(why));
                }
                if *weight == 0 && pool.order == Order::Weighted {
                    return Err(invalid(format!("queue {queue} has weight 0")));
                }
                serving.entry(queue.clone()).or_default().push(i);
            }
        }
        let parser = croner::parser::CronParser::builder().seconds(croner::parser::Seconds::Optional).build();
        let mut periodic = Vec::new();
        for (name, expr, job) in self.periodic {
            let cron = parser.parse(&expr).map_err(|e| StartError::Cron {
                name: name.clone(),
                expr: expr.clone(),
                why: e.to_string(),
            })?;
            let job =
                job.map_err(|why| StartError::Invalid { field: format!("periodic job {name}"), why })?;
            if !serving.contains_key(&job.queue) {
                return Err(StartError::Invalid {
                    field: format!("periodic job {name}"),
                    why: format!("no pool serves its queue {}", job.queue),
                });
            }
            periodic.push(Periodic { name, cron, job });
        }
        let wall = self.start_time.unwrap_or_else(SystemTime::now);
        let clock = Clock::starting_at(wall);
        let now = clock.now_ms();
        let log = match self.storage {
            Storage::Memory => None,
            Storage::Dir(path) => Some(Arc::new(LogDir::open(path)?)),
            Storage::Log(log) => Some(log),
        };
        let (store, journal) = match log {
            None => (JobStore::new(self.limits, false), None),
            Some(log) => {
                let config = StreamConfig {
                    cleanup: Cleanup::Compact,
                    fsync: self.fsync,
                    segment_bytes: JOURNAL_SEGMENT_BYTES,
                    delete_retention_ms: 0,
                    max_record_bytes: 16 << 20,
                    ..StreamConfig::default()
                };
                let stream = log.stream(JOURNAL_STREAM, config)?;
                let partition = stream.partition(0)?.clone();
                let records = read_journal(&partition)?;
                let (store, bad) = JobStore::recover(self.limits, records, now);
                for (key, why) in bad {
                    tracing::error!(?key, %why, "a job record in the journal does not decode; skipped");
                }
                (store, Some((stream, partition)))
            }
        };
        let rng = self.seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let outbox = journal.as_ref().map(|(_, partition)| Outbox::new(Arc::clone(partition)));
        // A thread appends where workers run in parallel; on one thread it would only take turns
        // with them, and a seed's run must not depend on when it does.
        let multi_threaded =
            tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        let appender = match &outbox {
            Some(outbox) if multi_threaded && self.workers => {
                let outbox = Arc::clone(outbox);
                std::thread::Builder::new()
                    .name("tubemail-jobs-journal".into())
                    .spawn(move || outbox.run())
                    .map_err(|e| StartError::Invalid {
                        field: "journal appender".into(),
                        why: e.to_string(),
                    })?;
                true
            }
            _ => false,
        };
        let inner = Arc::new(Inner {
            shared: parking_lot::Mutex::new(Shared { store, rng, running: FxHashMap::default() }),
            journal,
            outbox,
            journal_done: AtomicBool::new(false),
            appender,
            handlers: self.handlers.keys().enumerate().map(|(i, name)| (name.clone(), i)).collect(),
            handler_list: self.handlers.into_values().collect(),
            pools: pools.into_iter().map(|spec| PoolState { spec, wake: Notify::new() }).collect(),
            serving,
            scheduler: Arc::new(Notify::new()),
            idle: Notify::new(),
            clock,
            stopping: watch::Sender::new(false),
            stop: AtomicBool::new(false),
            interrupt: watch::Sender::new(false),
            closed: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
            shutdown_timeout: self.shutdown_timeout,
            maintenance_every: self.maintenance_every,
            precise: self.precise,
            next_due_us: AtomicI64::new(i64::MAX),
        });
        let jobs = Jobs { inner: inner.clone() };
        // Recovery may have journaled interruptions.
        {
            let mut shared = inner.shared.lock();
            jobs.flush(&mut shared)?;
        }
        let mut tasks = Vec::new();
        if self.workers {
            for (p, pool) in inner.pools.iter().enumerate() {
                for _ in 0..pool.spec.concurrency {
                    tasks.push(tokio::spawn(worker(jobs.clone(), p)));
                }
            }
            tasks.push(tokio::spawn(scheduler(jobs.clone(), periodic)));
        }
        *inner.tasks.lock().expect("tasks") = tasks;
        Ok(jobs)
    }
}

fn queue_problem(queue: &str) -> Option<String> {
    if queue.is_empty() || queue.len() > 255 {
        return Some(format!("queue name {queue:?}: 1 to 255 bytes"));
    }
    None
}

/// A journal entry: a key and its value, or `None` for a tombstone.
pub type Entry = (Vec<u8>, Option<Vec<u8>>);

/// Reads a jobs journal's entries in order (for `JobStore::recover`, and `tubemail jobs inspect`).
///
/// # Errors
/// The log's.
pub fn read_journal(partition: &Partition) -> Result<Vec<Entry>, LogError> {
    let mut out = Vec::new();
    let mut next = partition.start();
    let end = partition.end();
    while next < end {
        let records = partition.read(next, 4096, 16 << 20)?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        for r in records {
            if let Some(key) = r.key {
                out.push((key.to_vec(), r.value.map(|v| v.to_vec())));
            }
        }
    }
    Ok(out)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole microseconds, rounded up: a due time is never before the moment asked for.
fn ceil_us(d: Duration) -> i64 {
    i64::try_from(d.as_nanos().div_ceil(1_000)).unwrap_or(i64::MAX)
}

/// A due time in microseconds as the store keeps it: milliseconds and the microseconds past them;
/// never before `now` (ms).
fn due_parts(us: i64, now: i64) -> (i64, u16) {
    if us < now.saturating_mul(1_000) {
        return (now, 0);
    }
    (us.div_euclid(1_000), u16::try_from(us.rem_euclid(1_000)).unwrap_or(0))
}

/// What a batch of jobs of one type shares: its type's options, and the names the store already
/// holds (so that a job's name and queue cost no allocation).
struct Prepare<'a> {
    defaults: JobOptions,
    name: Arc<str>,
    /// The queues the pools serve (`None`: not known yet, nothing is refused).
    queues: Option<&'a BTreeMap<Arc<str>, Vec<usize>>>,
    /// The type's default queue as [`Prepare::queue`] gives it: looked up once per batch (`None`
    /// when it is refused: each job then says why).
    default_queue: Option<Arc<str>>,
}

impl<'a> Prepare<'a> {
    fn new<T: Job>(
        names: Option<&BTreeMap<Arc<str>, usize>>,
        queues: Option<&'a BTreeMap<Arc<str>, Vec<usize>>>,
    ) -> Self {
        let name = names
            .and_then(|n| n.get_key_value(T::NAME))
            .map_or_else(|| Arc::from(T::NAME), |(k, _)| k.clone());
        let defaults = T::options();
        let default_queue = Self::lookup(queues, &defaults.queue).ok();
        Prepare { defaults, name, queues, default_queue }
    }

    /// Queue `queue`'s name as the pools hold it (no allocation); unknown when no pool serves it.
    fn queue(&self, queue: Option<&str>) -> Result<Arc<str>, EnqueueError> {
        match queue {
            None => match &self.default_queue {
                Some(queue) => Ok(queue.clone()),
                None => Self::lookup(self.queues, &self.defaults.queue),
            },
            Some(queue) => Self::lookup(self.queues, queue),
        }
    }

    fn lookup(
        queues: Option<&BTreeMap<Arc<str>, Vec<usize>>>,
        queue: &str,
    ) -> Result<Arc<str>, EnqueueError> {
        if let Some(why) = queue_problem(queue) {
            return Err(EnqueueError::Invalid(why));
        }
        match queues {
            None => Ok(Arc::from(queue)),
            Some(served) => served
                .get_key_value(queue)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| EnqueueError::UnknownQueue(queue.to_owned())),
        }
    }
}

thread_local! {
    /// Where arguments are encoded before they are copied out at their exact size.
    static ENCODING: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `job` as MessagePack, in a buffer of exactly its size: one allocation per job, and a buffer that
/// `Bytes` holds without a shared header of its own (a `Vec` with spare capacity would need one).
fn encode_args<T: Job>(job: &T) -> Result<Bytes, EnqueueError> {
    ENCODING.with_borrow_mut(|buf| {
        buf.clear();
        let encoded = rmp_serde::encode::write(buf, job)
            .map_err(|e| EnqueueError::Encode { name: T::NAME, why: e.to_string() });
        let args = encoded.map(|()| Bytes::copy_from_slice(buf));
        // A huge job's buffer is not kept for the thread's life.
        if buf.capacity() > 64 << 10 {
            *buf = Vec::new();
        }
        args
    })
}

/// The hash of encoded arguments in a unique key made from them: SipHash-1-3 with zero keys over
/// the length (8 bytes, little-endian) and the bytes, fixed, since the key is journaled (std's
/// `DefaultHasher` computes the same today on 64-bit targets, and may change).
fn args_hash(args: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(&(args.len() as u64).to_le_bytes());
    h.write(args);
    h.finish()
}

/// A job ready to enter the store; `now` in milliseconds and `exact` (the same moment to the
/// nanosecond, since the Unix epoch) for its due time.
fn new_job<T: Job>(
    job: &T,
    options: &EnqueueOptions,
    prepare: &Prepare<'_>,
    now: i64,
    exact: Duration,
) -> Result<NewJob, EnqueueError> {
    let defaults = &prepare.defaults;
    let args = encode_args(job)?;
    if args.len() > ARGS_MAX {
        return Err(EnqueueError::Invalid(format!(
            "arguments of {} bytes encoded (at most {ARGS_MAX})",
            args.len()
        )));
    }
    let queue = prepare.queue(options.queue.as_deref())?;
    let priority = options.priority.unwrap_or(defaults.priority);
    if priority > 9 {
        return Err(EnqueueError::Invalid(format!("priority {priority} (0 to 9)")));
    }
    let policy = options.retry.unwrap_or(defaults.retry);
    if let Some(why) = policy.problem() {
        return Err(EnqueueError::Invalid(why));
    }
    let due = match options.when.unwrap_or(When::Now) {
        When::Now => None,
        When::In(delay) => {
            if delay > DELAY_MAX {
                return Err(EnqueueError::Invalid(format!("a delay of {delay:?} (at most 100 years)")));
            }
            Some(due_parts(ceil_us(exact + delay), now))
        }
        When::At(at) => {
            let us = match at.duration_since(UNIX_EPOCH) {
                Ok(d) => ceil_us(d),
                Err(_) => 0,
            };
            if us.div_euclid(1_000).saturating_sub(now)
                > i64::try_from(DELAY_MAX.as_millis()).unwrap_or(i64::MAX)
            {
                return Err(EnqueueError::Invalid("a time more than 100 years ahead".into()));
            }
            Some(due_parts(us, now))
        }
    };
    let unique = match options.unique.clone().or_else(|| defaults.unique_for.map(Unique::Args)) {
        None => None,
        Some(Unique::Key(key, ttl)) => {
            if key.len() > 1024 {
                return Err(EnqueueError::Invalid(format!(
                    "a unique key of {} bytes (at most 1,024)",
                    key.len()
                )));
            }
            Some((key, millis(ttl)))
        }
        Some(Unique::Args(ttl)) => {
            Some((format!("{}:{queue}:{:016x}", T::NAME, args_hash(&args)), millis(ttl)))
        }
    };
    Ok(NewJob {
        name: prepare.name.clone(),
        queue,
        args,
        priority,
        run_at: due.map(|(ms, _)| ms),
        due_micros: due.map_or(0, |(_, us)| us),
        policy,
        retry_for_ms: options.retry_for.or(defaults.retry_for).map(millis),
        timeout_ms: options.timeout.or(defaults.timeout).map(millis),
        dead: defaults.dead,
        unique,
    })
}

impl Jobs {
    fn now(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Publishes when the next scheduled job is due, for workers to look at without the lock.
    fn note_due(&self, shared: &Shared) {
        self.inner.next_due_us.store(shared.store.next_due_us().unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Appends the store's pending writes to the journal, after any handed to the outbox before
    /// (and notes the next due time); returns the last offset written.
    fn flush(&self, shared: &mut Shared) -> Result<Option<u64>, LogError> {
        match self.hand_in(shared) {
            Some(_) => self.drain(),
            None => Ok(None),
        }
    }

    /// Hands the store's pending writes to the outbox, under the store's lock (which orders them),
    /// for the caller to [`Jobs::drain`] once it released the lock (and notes the next due time).
    /// Returns `None` when it had none, else whether the outbox is past its bound.
    fn hand_in(&self, shared: &mut Shared) -> Option<bool> {
        self.note_due(shared);
        let outbox = self.inner.outbox.as_ref()?;
        if !shared.store.has_writes() {
            return None;
        }
        Some(outbox.push(shared.store.take_writes(), self.now()))
    }

    /// Appends what was handed to the outbox (see [`Jobs::hand_in`]); returns the last offset
    /// written.
    fn drain(&self) -> Result<Option<u64>, LogError> {
        self.inner.outbox.as_ref().map_or(Ok(None), |outbox| outbox.drain())
    }

    /// Hands the store's pending writes to the outbox's thread, which appends them outside the
    /// store's lock (in order, after the writes before), or appends them as [`Jobs::flush`] where
    /// there is no such thread; for what nobody waits for (jobs settled by a worker).
    fn flush_later(&self, shared: &mut Shared) -> Result<(), LogError> {
        if !self.inner.appender {
            return self.flush(shared).map(|_| ());
        }
        if self.hand_in(shared) == Some(true) {
            // The disk does not keep up: this writer appends, under the lock (backpressure).
            self.drain()?;
        }
        Ok(())
    }

    /// Gives `records` the ids reserved from `first` and appends them to the journal (outside the
    /// store's lock); returns the last offset, or how many records were appended before an error.
    fn write_ahead(
        &self,
        partition: &Partition,
        records: &mut [Box<JobRecord>],
        first: JobId,
    ) -> Result<u64, (usize, LogError)> {
        let mut keys = Vec::with_capacity(records.len());
        let mut values = Vec::with_capacity(records.len());
        for (i, record) in records.iter_mut().enumerate() {
            record.id = JobId(first.0 + i as u64);
            record.order = i64::try_from(record.id.0).unwrap_or(i64::MAX);
            keys.push(crate::store::job_key(record.id));
            values.push(crate::store::encode(record));
        }
        let now = self.now();
        let appends: Vec<Append<'_>> = keys
            .iter()
            .zip(&values)
            .map(|(key, value)| Append { key: Some(key), value: Some(value), timestamp: now })
            .collect();
        let mut last = 0;
        let mut appended = 0;
        for slice in appends.chunks(tubemail_log::BATCH_RECORDS_MAX) {
            last = partition.append(slice).map_err(|e| (appended, e))?.1;
            appended += slice.len();
        }
        Ok(last)
    }

    async fn acked(&self, offset: Option<u64>) -> Result<(), LogError> {
        match (&self.inner.journal, offset) {
            (Some((_, partition)), Some(offset)) => partition.acked(offset).await,
            _ => Ok(()),
        }
    }

    fn wake(&self, queue: &str) {
        if let Some(pools) = self.inner.serving.get(queue) {
            for &p in pools {
                self.inner.pools[p].wake.notify_one();
            }
        }
    }

    /// Enqueues `job` now with its type's options; resolves once the journal holds it under the
    /// fsync policy.
    ///
    /// # Errors
    /// [`EnqueueError`].
    pub async fn enqueue<T: Job>(&self, job: T) -> Result<JobId, EnqueueError> {
        self.enqueue_with(job, EnqueueOptions::default()).await
    }

    /// Enqueues `job` to run after `delay`.
    ///
    /// # Errors
    /// [`EnqueueError`]; a delay over 100 years is [`EnqueueError::Invalid`].
    pub async fn enqueue_in<T: Job>(&self, job: T, delay: Duration) -> Result<JobId, EnqueueError> {
        self.enqueue_with(job, EnqueueOptions::delay(delay)).await
    }

    /// Enqueues `job` to run at `at` (now, when `at` has passed).
    ///
    /// # Errors
    /// [`EnqueueError`].
    pub async fn enqueue_at<T: Job>(&self, job: T, at: SystemTime) -> Result<JobId, EnqueueError> {
        self.enqueue_with(job, EnqueueOptions::at(at)).await
    }

    /// Enqueues `job` with `options` overriding its type's.
    ///
    /// # Errors
    /// [`EnqueueError`].
    pub async fn enqueue_with<T: Job>(&self, job: T, options: EnqueueOptions) -> Result<JobId, EnqueueError> {
        let mut ids = self.enqueue_all(std::iter::once((job, options))).await?;
        ids.pop().expect("one job").map_err(EnqueueError::Refused)
    }

    /// Enqueues many jobs of one type with one wait for the journal (one append per
    /// [`BATCH_RECORDS_MAX`](tubemail_log::BATCH_RECORDS_MAX) records); each gets its id or the
    /// reason it was refused (a unique key held, a full store). When the journal fails midway, the
    /// jobs already in it may still run (as publishes whose confirm was lost).
    ///
    /// # Errors
    /// [`EnqueueError`] for what refuses the whole batch (unknown job or queue, bad options, the
    /// journal, closed).
    pub async fn enqueue_bulk<T: Job>(
        &self,
        jobs: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Result<JobId, Refused>>, EnqueueError> {
        self.enqueue_all(jobs.into_iter().map(|j| (j, EnqueueOptions::default()))).await
    }

    async fn enqueue_all<T: Job>(
        &self,
        jobs: impl IntoIterator<Item = (T, EnqueueOptions)>,
    ) -> Result<Vec<Result<JobId, Refused>>, EnqueueError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(EnqueueError::Closed);
        }
        if !self.inner.handlers.contains_key(T::NAME) {
            return Err(EnqueueError::UnknownJob(T::NAME.into()));
        }
        let exact = self.inner.clock.now_exact();
        let now = i64::try_from(exact.as_millis()).unwrap_or(i64::MAX);
        let jobs = jobs.into_iter();
        let mut prepared = Vec::with_capacity(jobs.size_hint().0);
        let prepare = Prepare::new::<T>(Some(&self.inner.handlers), Some(&self.inner.serving));
        for (job, options) in jobs {
            // The record is made here, outside the lock: under it, a job only gets its id and place.
            prepared.push(new_job(&job, &options, &prepare, now, exact)?.into_record(now));
        }
        let mut offset = None;
        // With a journal, a bulk without unique keys is written ahead: its records get reserved ids
        // and places, are encoded and appended outside the store's lock, and only then enter the
        // store, a chunk per hold of the lock. No worker sees a job before its record is in the
        // journal, so no tombstone can precede its record, and nothing can refuse it any more. (A
        // bulk held under the lock for its encoding and append kept workers and due jobs waiting.)
        // The first journal error of a written-ahead bulk: what was appended still enters the store
        // (it is durable, and would run after a restart anyway), then the error is returned.
        let mut failed: Option<LogError> = None;
        let ahead = match &self.inner.journal {
            Some((_, partition)) if !prepared.is_empty() && prepared.iter().all(|r| r.unique.is_none()) => {
                let n = prepared.len() as u64;
                let first = self.inner.shared.lock().store.reserve(n);
                match first {
                    Some(first) => {
                        match self.write_ahead(partition, &mut prepared, first) {
                            Ok(last) => offset = Some(last),
                            Err((appended, e)) => {
                                self.inner.shared.lock().store.unreserve((prepared.len() - appended) as u64);
                                prepared.truncate(appended);
                                failed = Some(e);
                            }
                        }
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        };
        // Otherwise (unique keys, whose refusals only the store knows; a store near its bound) the
        // records still get their ids and encoding here, and are appended under the lock.
        let mut encoded: Vec<Option<Vec<u8>>> = Vec::new();
        if !ahead && self.inner.journal.is_some() && !prepared.is_empty() {
            let first = self.inner.shared.lock().store.reserve_ids(prepared.len() as u64);
            encoded.reserve_exact(prepared.len());
            for (i, record) in prepared.iter_mut().enumerate() {
                record.id = JobId(first.0 + i as u64);
                record.order = i64::try_from(record.id.0).unwrap_or(i64::MAX);
                encoded.push(Some(crate::store::encode(record)));
            }
        }
        let mut encoded = encoded.into_iter();
        let mut results = Vec::with_capacity(prepared.len());
        let mut prepared = prepared.into_iter().peekable();
        // A chunk at a time in memory and when written ahead: the lock is held for
        // [`ENQUEUE_CHUNK`] jobs, not a whole bulk, so workers claim and due jobs are promoted between
        // chunks. Appended under the lock, one hold and one append per bulk (chunks with an append
        // each measured 30% fewer durable jobs/s).
        let chunk = if self.inner.journal.is_none() || ahead { ENQUEUE_CHUNK } else { usize::MAX };
        while prepared.peek().is_some() {
            let mut ready_queues: Vec<Arc<str>> = Vec::new();
            let mut scheduled = false;
            {
                let mut shared = self.inner.shared.lock();
                for record in prepared.by_ref().take(chunk) {
                    let later = record.state == JobState::Scheduled;
                    let queue = (!later
                        && ready_queues
                            .last()
                            .is_none_or(|q| !Arc::ptr_eq(q, &record.queue) && **q != *record.queue))
                    .then(|| record.queue.clone());
                    let result = if ahead {
                        Ok(shared.store.enqueue_reserved(record, now))
                    } else {
                        shared.store.enqueue_encoded(record, encoded.next().flatten(), now)
                    };
                    if result.is_ok() {
                        scheduled |= later;
                        ready_queues.extend(queue);
                    }
                    results.push(result);
                }
                match self.flush(&mut shared) {
                    Ok(last) => offset = offset.max(last),
                    // Written ahead, the rest of the bulk is durable already: it goes in regardless.
                    Err(e) if ahead => {
                        failed.get_or_insert(e);
                    }
                    Err(e) => return Err(e.into()),
                }
                // Handed to a waiting worker, if any: the enqueuer would take it back at once for
                // its next chunk, and workers (and due jobs) would wait for the whole bulk.
                parking_lot::MutexGuard::unlock_fair(shared);
            }
            ready_queues.sort();
            ready_queues.dedup();
            for queue in &ready_queues {
                self.wake(queue);
            }
            if scheduled {
                self.inner.scheduler.notify_one();
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        self.acked(offset).await?;
        Ok(results)
    }

    pub(crate) async fn checkpoint(
        &self,
        id: JobId,
        cursor: Option<Bytes>,
        items: u64,
        runtime_ms: u64,
    ) -> Result<(), LogError> {
        let handed = {
            let mut shared = self.inner.shared.lock();
            shared.store.checkpoint(id, cursor, items, runtime_ms);
            self.hand_in(&mut shared).is_some()
        };
        let offset = if handed { self.drain()? } else { None };
        self.acked(offset).await
    }

    /// Cancels job `id`: a waiting job leaves at once; a running one is stopped (an async handler at
    /// its next `.await`, a blocking one when it returns or checks) and then leaves.
    pub async fn cancel(&self, id: JobId) -> Result<Cancelled, LogError> {
        let (cancelled, handed) = {
            let mut shared = self.inner.shared.lock();
            let cancelled = shared.store.cancel(id);
            if cancelled == Cancelled::Running {
                if let Some(flag) = shared.running.get(&id) {
                    flag.raise();
                }
            }
            (cancelled, self.hand_in(&mut shared).is_some())
        };
        // A waiting job cancelled may have been the last one `idle` waited for (no run ends to
        // tell it).
        self.inner.idle.notify_waiters();
        let offset = if handed { self.drain()? } else { None };
        self.acked(offset).await?;
        Ok(cancelled)
    }

    /// A job's record: its state, retries, last error, progress.
    pub fn job(&self, id: JobId) -> Option<JobRecord> {
        self.inner.shared.lock().store.get(id).cloned()
    }

    /// The dead set, newest first.
    pub fn dead(&self) -> Vec<JobRecord> {
        self.inner.shared.lock().store.dead().into_iter().cloned().collect()
    }

    /// Puts dead job `id` back in its queue with its retries reset; false when it is not dead, or
    /// when its unique key is held by another job within the key's TTL (it takes its key again).
    ///
    /// # Errors
    /// The journal's.
    pub fn retry_dead(&self, id: JobId) -> Result<bool, LogError> {
        self.dead_op(|store, now| usize::from(store.retry_dead(id, now))).map(|n| n == 1)
    }

    /// Puts every dead job back in its queue; returns how many.
    ///
    /// # Errors
    /// The journal's.
    pub fn retry_all_dead(&self) -> Result<usize, LogError> {
        self.dead_op(|store, now| {
            let ids: Vec<JobId> = store.dead().iter().map(|r| r.id).collect();
            ids.into_iter().filter(|id| store.retry_dead(*id, now)).count()
        })
    }

    /// Deletes dead job `id`; false when it is not dead.
    ///
    /// # Errors
    /// The journal's.
    pub fn delete_dead(&self, id: JobId) -> Result<bool, LogError> {
        self.dead_op(|store, _| usize::from(store.delete_dead(id))).map(|n| n == 1)
    }

    /// Deletes every dead job; returns how many.
    ///
    /// # Errors
    /// The journal's.
    pub fn clear_dead(&self) -> Result<usize, LogError> {
        self.dead_op(|store, _| {
            let ids: Vec<JobId> = store.dead().iter().map(|r| r.id).collect();
            ids.into_iter().filter(|id| store.delete_dead(*id)).count()
        })
    }

    fn dead_op(&self, op: impl FnOnce(&mut JobStore, i64) -> usize) -> Result<usize, LogError> {
        let now = self.now();
        let mut queues = Vec::new();
        let n = {
            let mut shared = self.inner.shared.lock();
            let n = op(&mut shared.store, now);
            queues.extend(shared.store.sizes().available.into_keys());
            self.flush(&mut shared)?;
            n
        };
        for queue in queues {
            self.wake(&queue);
        }
        Ok(n)
    }

    /// The figures.
    pub fn stats(&self) -> JobStats {
        let shared = self.inner.shared.lock();
        JobStats { counters: shared.store.counters(), sizes: shared.store.sizes() }
    }

    /// Resolves when no job is available or executing (scheduled and retrying jobs may wait).
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let shared = self.inner.shared.lock();
                let sizes = shared.store.sizes();
                if sizes.executing == 0 && sizes.available.values().all(|&n| n == 0) {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Stops the jobs as Sidekiq does: workers stop fetching; running jobs get up to the shutdown
    /// timeout (iteration jobs stop after their current item and checkpoint); then the rest are
    /// interrupted and put back at the front of their queue. The journal is synced and closed.
    pub async fn shutdown(&self) -> ShutdownReport {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return ShutdownReport::default();
        }
        let running = self.inner.shared.lock().started();
        self.inner.stop.store(true, Ordering::Release);
        self.inner.stopping.send_replace(true);
        let deadline = later_by(tokio::time::Instant::now(), self.inner.shutdown_timeout);
        let mut interrupted = 0;
        let mut deadline_passed = false;
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let left = self.inner.shared.lock().running.len();
            if left == 0 {
                break;
            }
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline), if !deadline_passed => {
                    deadline_passed = true;
                    interrupted = self.inner.shared.lock().started();
                    self.inner.interrupt.send_replace(true);
                }
            }
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks"));
        for task in tasks {
            let _ = task.await;
        }
        {
            let mut shared = self.inner.shared.lock();
            if let Err(e) = self.flush(&mut shared) {
                tracing::error!(%e, "the jobs' journal failed at shutdown");
            }
        }
        self.inner.journal_done.store(true, Ordering::Release);
        if let Some(outbox) = &self.inner.outbox {
            outbox.stop();
            // What the workers handed in last, appended before the journal closes.
            if let Err(e) = outbox.drain() {
                tracing::error!(%e, "the jobs' journal failed at shutdown");
            }
        }
        if let Some((stream, _)) = &self.inner.journal {
            if let Err(e) = stream.close() {
                tracing::error!(%e, "the jobs' journal did not close cleanly");
            }
        }
        let left = self.inner.shared.lock().store.sizes();
        ShutdownReport { shut_down: true, running, interrupted, left }
    }

    /// What a crash leaves (for tests and the simulator): the tasks stop where they are, the journal
    /// is abandoned without its last sync or checkpoint, and the directory is unlocked once every
    /// handle is dropped. Running handlers' futures are dropped mid-run.
    #[doc(hidden)]
    pub async fn crash(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.journal_done.store(true, Ordering::Release);
        if let Some(outbox) = &self.inner.outbox {
            outbox.stop();
        }
        if let Some((stream, _)) = &self.inner.journal {
            stream.abandon();
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks"));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The journal's stream, for inspection.
    pub fn journal(&self) -> Option<&Stream> {
        self.inner.journal.as_ref().map(|(s, _)| s)
    }

    /// Claims up to `ahead` jobs for a worker of `pool` into `batch`, the store's lock held: at most
    /// the pool's fair share of what its chosen queue holds, so that a worker holds back nothing
    /// another worker could have started. Jobs that have come due are promoted first: under load
    /// the workers see a due job at their next claim, sooner than the scheduler task would be polled
    /// among them. Returns whether the pool has more ready.
    fn claim_locked(
        &self,
        shared: &mut Shared,
        pool: usize,
        ahead: usize,
        batch: &mut VecDeque<Claimed>,
    ) -> bool {
        if let Some(due) = shared.store.next_due_us() {
            let now_us = self.inner.clock.now_us();
            if due <= now_us {
                let mut queues = shared.store.promote_due(now_us);
                self.note_due(shared);
                queues.dedup();
                for queue in &queues {
                    self.wake(queue);
                }
            }
        }
        let spec = &self.inner.pools[pool].spec;
        for taken in 0..ahead.max(1) {
            let Some(queue) = self.choose(shared, spec) else { break };
            // Past the first, only while every other worker could take as many.
            let min_ready = spec.concurrency.saturating_mul(taken).max(1);
            let Some(record) = shared.store.claim_if(&spec.queues[queue].0, min_ready) else { break };
            let claimed = Claimed::of(record, &self.inner.handlers);
            shared.running.insert(claimed.id, claimed.cancel.clone());
            batch.push_back(claimed);
        }
        spec.queues.iter().any(|(q, _)| shared.store.has_ready(q))
    }

    /// The queue a worker of `spec` takes its next job from: its place in `spec.queues`.
    fn choose(&self, shared: &mut Shared, spec: &Pool) -> Option<usize> {
        match spec.order {
            // One queue: the claim finds whether it has a job.
            Order::Strict if spec.queues.len() == 1 => Some(0),
            Order::Strict => spec.queues.iter().position(|(q, _)| shared.store.has_ready(q)),
            Order::Weighted => {
                let candidates: Vec<(usize, u32)> = spec
                    .queues
                    .iter()
                    .enumerate()
                    .filter(|(_, (q, _))| shared.store.has_ready(q))
                    .map(|(i, (_, w))| (i, *w))
                    .collect();
                let total: u64 = candidates.iter().map(|(_, w)| u64::from(*w)).sum();
                if total == 0 {
                    None
                } else {
                    let mut draw = shared.rng.u64(0..total);
                    candidates
                        .into_iter()
                        .find(|(_, w)| {
                            if draw < u64::from(*w) {
                                true
                            } else {
                                draw -= u64::from(*w);
                                false
                            }
                        })
                        .map(|(i, _)| i)
                }
            }
        }
    }

    /// Runs a claimed job: `None` when a shutdown's timeout interrupted it.
    async fn execute(
        &self,
        claim: &Claimed,
        worker: &Arc<WorkerContext>,
        interrupt: &mut watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let handler = match &claim.handler {
            Ok(i) => &self.inner.handler_list[*i],
            Err(name) => {
                return Some(Outcome::Failed(Failure::Kill {
                    reason: format!(
                        "no handler is registered for job {name:?} (did the code change between deploys?)"
                    ),
                }))
            }
        };
        let cancel = &claim.cancel;
        if cancel.is_raised() {
            return Some(Outcome::Cancelled);
        }
        cancel.start();
        let ctx = JobContext {
            id: claim.id,
            retries: claim.retries,
            tick: claim.tick,
            cancel: cancel.clone(),
            worker: worker.clone(),
        };
        let future = match std::panic::catch_unwind(AssertUnwindSafe(|| handler.start(claim, ctx))) {
            Err(panic) => return Some(Outcome::Failed(Failure::Kill { reason: panic_reason(panic) })),
            Ok(future) => future,
        };
        let mut guarded = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
        let timeout = claim.timeout_ms.map(Duration::from_millis);
        // The run first: a handler that is done at its first poll costs no waiter on the
        // interruption or the cancellation (a run that ended is not interrupted).
        let early = tokio::select! {
            biased;
            result = with_timeout(guarded.as_mut(), timeout) => match result {
                Some(Ok(outcome)) => return Some(outcome),
                Some(Err(panic)) => return Some(Outcome::Failed(Failure::Kill { reason: panic_reason(panic) })),
                None => Some(Outcome::Failed(Failure::Retry {
                    reason: format!("timed out after {} ms", claim.timeout_ms.unwrap_or(0)),
                    delay_ms: None,
                })),
            },
            // Outside tokio's budget: a handler that spends the task's budget on every poll (a busy
            // channel) must not keep a shutdown's interruption from being seen.
            _ = tokio::task::unconstrained(interrupt.wait_for(|stop| *stop)) => return None,
            () = cancel.raised() => Some(Outcome::Cancelled),
        };
        if !handler.blocking() {
            // Dropped, an async run stops where it waits.
            return early;
        }
        // A blocking run goes on on its thread: its timeout and its cancellation take effect when
        // it returns, so that its job is not run again (a retry), nor its unique key released (a
        // cancellation), while it still runs. A shutdown's interruption does not wait for it.
        tokio::select! {
            biased;
            // A run that succeeded after all completes: its work is done.
            result = guarded => match result {
                Ok(Outcome::Done) => Some(Outcome::Done),
                _ => early,
            },
            _ = tokio::task::unconstrained(interrupt.wait_for(|stop| *stop)) => None,
        }
    }

    /// Settles the runs in `done`, gives back the claimed jobs left in `batch` (they never
    /// started: each takes its old place again), and, under the same lock, claims the worker's next
    /// `ahead` jobs into `batch` unless the workers are stopping (one lock per batch of jobs). Returns
    /// whether the pool has more ready.
    fn settle(
        &self,
        done: &mut Vec<(JobId, Option<Outcome>)>,
        batch: &mut VecDeque<Claimed>,
        pool: usize,
        ahead: Option<usize>,
    ) -> bool {
        let now = self.now();
        let mut queues_again = Vec::new();
        // Completed jobs' records, freed after the lock is released.
        let mut finished = Vec::new();
        let last;
        let more;
        {
            let mut shared = self.inner.shared.lock();
            let shared = &mut *shared;
            for (id, outcome) in done.drain(..) {
                // A cancellation told its caller the job stops and leaves (`Cancelled::Running`):
                // a run that ended otherwise meanwhile (a failure, a yield, an interruption) is not
                // retried or put back. A run that succeeded leaves as completed.
                // (Looked up only for a run that did not succeed: nothing more per completed job.)
                let outcome = match outcome {
                    Some(Outcome::Done) => Some(Outcome::Done),
                    _ if shared.running.get(&id).is_some_and(|flag| flag.is_raised()) => {
                        Some(Outcome::Cancelled)
                    }
                    other => other,
                };
                match outcome {
                    Some(Outcome::Done) => {
                        finished.extend(shared.store.complete(id));
                    }
                    Some(Outcome::Failed(failure)) => {
                        if let Some(fate) = shared.store.fail(id, failure.clone(), now, &mut shared.rng) {
                            tracing::warn!(%id, ?failure, ?fate, "job failed");
                            if matches!(fate, crate::store::Fate::Retry { .. }) {
                                self.inner.scheduler.notify_one();
                            }
                        }
                    }
                    Some(Outcome::Yield) => {
                        shared.store.put_back(id, false, now);
                        queues_again.extend(shared.store.get(id).map(|r| r.queue.clone()));
                    }
                    #[cfg(feature = "broken")]
                    None if crate::broken::bugs().shutdown_drops_running => {
                        finished.extend(shared.store.complete(id));
                    }
                    Some(Outcome::Stopped) | None => {
                        shared.store.put_back(id, true, now);
                    }
                    Some(Outcome::Cancelled) => {
                        shared.store.finish_cancelled(id);
                    }
                }
                shared.running.remove(&id);
            }
            Self::give_back_locked(shared, batch);
            if let Err(e) = self.flush_later(shared) {
                tracing::error!(%e, "the jobs' journal failed");
            }
            more = match ahead {
                Some(ahead) if !self.inner.stop.load(Ordering::Acquire) => {
                    self.claim_locked(shared, pool, ahead, batch)
                }
                _ => self.inner.pools[pool].spec.queues.iter().any(|(q, _)| shared.store.has_ready(q)),
            };
            // `idle` and `shutdown` wait for no job running: nothing to tell them before that.
            last = shared.running.is_empty();
        }
        drop(finished);
        queues_again.dedup();
        for queue in &queues_again {
            self.wake(queue);
        }
        if last {
            self.inner.idle.notify_waiters();
        }
        more
    }
}

impl Jobs {
    fn give_back_locked(shared: &mut Shared, batch: &mut VecDeque<Claimed>) {
        for claimed in batch.drain(..) {
            if claimed.cancel.is_raised() {
                shared.store.finish_cancelled(claimed.id);
            } else {
                shared.store.unclaim(claimed.id);
            }
            shared.running.remove(&claimed.id);
        }
    }
}

/// A job a worker claimed: what it needs to run it, copied from the record under the store's lock,
/// and its cancellation flag.
struct Claimed {
    id: JobId,
    /// Its handler's place in `Inner::handler_list`, or its name when no handler is registered.
    handler: Result<usize, Arc<str>>,
    args: Args,
    retries: u32,
    timeout_ms: Option<u64>,
    progress: Progress,
    /// The periodic tick it was enqueued for.
    tick: Option<i64>,
    cancel: Arc<CancelFlag>,
}

impl Claimed {
    fn of(record: &JobRecord, handlers: &BTreeMap<Arc<str>, usize>) -> Self {
        Claimed {
            id: record.id,
            handler: handlers.get(&*record.name).copied().ok_or_else(|| record.name.clone()),
            args: Args::of(&record.args),
            retries: record.retries,
            timeout_ms: record.timeout_ms,
            progress: record.progress.clone(),
            tick: record.periodic.as_ref().map(|(_, tick)| *tick),
            cancel: Arc::new(CancelFlag::default()),
        }
    }
}

/// Arguments up to this many bytes are copied into a claim; longer ones are shared with the record.
const ARGS_INLINE: usize = 46;

/// A claimed job's arguments: small ones copied (a copy of a few bytes costs less than a reference
/// count, and the record's buffer is never converted to a shared one), longer ones shared.
enum Args {
    Inline(u8, [u8; ARGS_INLINE]),
    Shared(Bytes),
}

impl Args {
    fn of(bytes: &Bytes) -> Self {
        match u8::try_from(bytes.len()) {
            Ok(len) if usize::from(len) <= ARGS_INLINE => {
                let mut inline = [0; ARGS_INLINE];
                inline[..bytes.len()].copy_from_slice(bytes);
                Args::Inline(len, inline)
            }
            _ => Args::Shared(bytes.clone()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Args::Inline(len, inline) => &inline[..usize::from(*len)],
            Args::Shared(bytes) => bytes,
        }
    }
}

/// Jobs an enqueue inserts per hold of the store's lock (a bulk takes it once per chunk, and hands
/// it to a waiting worker between chunks): in memory, and with a journal when the bulk was written
/// ahead (no unique keys, room in the store); otherwise a bulk is one hold and one append.
pub const ENQUEUE_CHUNK: usize = 128;

/// The most jobs a worker claims at once: a run of short jobs (each within
/// [`CLAIM_AHEAD_BUDGET`]) is claimed and settled a batch at a time, one lock for many jobs. A worker
/// never claims ahead more than its pool's share of what the queue holds.
pub const CLAIM_AHEAD_MAX: usize = 64;

/// How long a worker runs jobs it claimed ahead before it settles them and gives back the rest
/// (at once when a job is still running then).
pub const CLAIM_AHEAD_BUDGET: Duration = Duration::from_micros(200);

/// `at` plus `d`, or a century past `at` where that overflows (a timeout of `Duration::MAX`: no
/// deadline to speak of).
fn later_by(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d).unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 86_400))
}

async fn with_timeout<F: Future>(future: F, timeout: Option<Duration>) -> Option<F::Output> {
    match timeout {
        None => Some(future.await),
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
    }
}

/// A worker: claims a batch (one job, or more while jobs are short), runs them one at a time, and
/// settles them together.
async fn worker(jobs: Jobs, pool: usize) {
    let mut stopping = jobs.inner.stopping.subscribe();
    let mut interrupt = jobs.inner.interrupt.subscribe();
    let context = Arc::new(WorkerContext { jobs: jobs.clone(), stopping: stopping.clone() });
    let mut batch: VecDeque<Claimed> = VecDeque::new();
    let mut done: Vec<(JobId, Option<Outcome>)> = Vec::new();
    let mut ahead = 1;
    loop {
        if jobs.inner.stop.load(Ordering::Acquire) || *stopping.borrow() {
            return;
        }
        let notified = jobs.inner.pools[pool].wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let more = {
            let mut shared = jobs.inner.shared.lock();
            jobs.claim_locked(&mut shared, pool, ahead, &mut batch)
        };
        if batch.is_empty() {
            tokio::select! {
                biased;
                _ = stopping.changed() => {}
                () = &mut notified => {}
            }
            continue;
        }
        let mut more = more;
        while !batch.is_empty() {
            if more {
                jobs.inner.pools[pool].wake.notify_one();
            }
            // One timer per batch: past it, what is left of the batch goes back.
            let started = tokio::time::Instant::now();
            // Outside tokio's budget, as the interruption: a busy handler must not starve it.
            let budget = tokio::task::unconstrained(tokio::time::sleep_until(started + CLAIM_AHEAD_BUDGET));
            tokio::pin!(budget);
            let mut within = true;
            while let Some(claimed) = batch.pop_front() {
                if jobs.inner.stop.load(Ordering::Acquire) {
                    batch.push_front(claimed);
                    break;
                }
                let run = jobs.execute(&claimed, &context, &mut interrupt);
                tokio::pin!(run);
                let outcome = tokio::select! {
                    biased;
                    outcome = &mut run => outcome,
                    () = &mut budget, if within && !(batch.is_empty() && done.is_empty()) => {
                        // The job runs long: settle what ran, give back what it held.
                        within = false;
                        if jobs.settle(&mut done, &mut batch, pool, None) {
                            jobs.inner.pools[pool].wake.notify_one();
                        }
                        run.await
                    }
                };
                claimed.cancel.finish();
                done.push((claimed.id, outcome));
                let now = tokio::time::Instant::now();
                if within && now - started > CLAIM_AHEAD_BUDGET {
                    within = false;
                }
                // A scheduled job come due is promoted at the next claim: settle now.
                if !within || jobs.inner.clock.us_at(now) >= jobs.inner.next_due_us.load(Ordering::Relaxed) {
                    break;
                }
                // A run of ready handlers never returns Pending: yield when tokio's budget says so.
                tokio::task::consume_budget().await;
            }
            ahead = if within { (ahead * 2).min(CLAIM_AHEAD_MAX) } else { (ahead / 2).max(1) };
            more = jobs.settle(&mut done, &mut batch, pool, Some(ahead));
        }
    }
}

/// Wakes the scheduler at the moment it asks for, on a thread of its own, to within the OS's timer
/// slack: tokio's timer would round the moment up to its next millisecond. The scheduler still
/// sleeps on tokio's timer too (paused time, the simulator); the thread holds only the scheduler's
/// `Notify`, and ends when the alarm drops.
struct Alarm {
    state: Arc<(Mutex<AlarmState>, Condvar)>,
}

#[derive(Default)]
struct AlarmState {
    /// The moment asked for, on tokio's clock, and when that is on the thread's clock.
    at: Option<(tokio::time::Instant, std::time::Instant)>,
    /// The last moment it rang for: asked again (the scheduler found nothing due, as on a paused
    /// clock), it does not ring again.
    rang: Option<tokio::time::Instant>,
    closed: bool,
}

impl Alarm {
    fn start(scheduler: Arc<Notify>) -> Option<Alarm> {
        let state = Arc::new((Mutex::new(AlarmState::default()), Condvar::new()));
        let theirs = state.clone();
        let spawned = std::thread::Builder::new()
            .name("tubemail-jobs-alarm".into())
            .spawn(move || Alarm::run(&theirs, &scheduler));
        match spawned {
            Ok(_) => Some(Alarm { state }),
            Err(e) => {
                tracing::warn!(%e, "no alarm thread: scheduled jobs start up to a millisecond later");
                None
            }
        }
    }

    /// Rings at `at` (tokio's clock), replacing the moment set before.
    fn set(&self, at: tokio::time::Instant) {
        let (lock, ring) = &*self.state;
        let mut state = lock.lock().expect("alarm");
        if state.rang == Some(at) || state.at.is_some_and(|(asked, _)| asked == at) {
            return;
        }
        let deadline = std::time::Instant::now() + at.saturating_duration_since(tokio::time::Instant::now());
        state.at = Some((at, deadline));
        ring.notify_one();
    }

    fn run(state: &(Mutex<AlarmState>, Condvar), scheduler: &Notify) {
        let (lock, ring) = state;
        let mut guard = lock.lock().expect("alarm");
        loop {
            if guard.closed {
                return;
            }
            let now = std::time::Instant::now();
            match guard.at {
                Some((at, deadline)) if deadline <= now => {
                    guard.at = None;
                    guard.rang = Some(at);
                    scheduler.notify_one();
                }
                Some((_, deadline)) => guard = ring.wait_timeout(guard, deadline - now).expect("alarm").0,
                None => guard = ring.wait(guard).expect("alarm"),
            }
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let (lock, ring) = &*self.state;
        if let Ok(mut state) = lock.lock() {
            state.closed = true;
        }
        ring.notify_one();
    }
}

async fn scheduler(jobs: Jobs, periodic: Vec<Periodic>) {
    let mut stopping = jobs.inner.stopping.subscribe();
    let clock = jobs.inner.clock;
    let alarm = if jobs.inner.precise { Alarm::start(jobs.inner.scheduler.clone()) } else { None };
    let next_tick = |p: &Periodic, after: i64| -> Option<i64> {
        let at = chrono::DateTime::from_timestamp_millis(after)?;
        p.cron.find_next_occurrence(&at, false).ok().map(|t| t.timestamp_millis())
    };
    let start = clock.now_ms();
    let mut ticks: Vec<Option<i64>> = {
        let shared = jobs.inner.shared.lock();
        periodic
            .iter()
            .map(|p| next_tick(p, start.max(shared.store.last_tick(&p.name).unwrap_or(i64::MIN))))
            .collect()
    };
    let mut maintenance = clock
        .now_ms()
        .saturating_add(i64::try_from(jobs.inner.maintenance_every.as_millis()).unwrap_or(i64::MAX));
    loop {
        if *stopping.borrow() {
            return;
        }
        let notified = jobs.inner.scheduler.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let now_us = clock.now_us();
        let now = now_us.div_euclid(1_000);
        let (queues, next_due) = {
            let mut shared = jobs.inner.shared.lock();
            let mut queues = shared.store.promote_due(now_us);
            for (p, tick) in periodic.iter().zip(ticks.iter_mut()) {
                while let Some(at) = *tick {
                    if at > now {
                        break;
                    }
                    let mut job = p.job.clone();
                    job.run_at = None;
                    match shared.store.enqueue_tick(&p.name, at, job, now) {
                        Ok(Some(_)) => queues.push(p.job.queue.clone()),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(periodic = %p.name, tick = at, %e, "periodic tick not enqueued")
                        }
                    }
                    *tick = next_tick(p, at.max(now));
                }
            }
            if let Err(e) = jobs.flush(&mut shared) {
                tracing::error!(%e, "the jobs' journal failed");
            }
            (queues, shared.store.next_due_us())
        };
        let mut queues = queues;
        queues.sort();
        queues.dedup();
        for queue in &queues {
            jobs.wake(queue);
        }
        if now >= maintenance {
            maintenance = now
                .saturating_add(i64::try_from(jobs.inner.maintenance_every.as_millis()).unwrap_or(i64::MAX));
            {
                let mut shared = jobs.inner.shared.lock();
                shared.store.trim_dead(now);
                let _ = jobs.flush(&mut shared);
            }
            if jobs.inner.journal.is_some() {
                let owner = jobs.clone();
                // Compaction reads and rewrites files: off the runtime's threads.
                let done = tokio::task::spawn_blocking(move || {
                    owner.inner.journal.as_ref().map(|(stream, _)| stream.maintain(now))
                });
                if let Ok(Some(Err(e))) = done.await {
                    tracing::error!(%e, "the jobs' journal maintenance failed");
                }
            }
        }
        let wake_us = [next_due, ticks.iter().flatten().min().map(|ms| ms.saturating_mul(1_000))]
            .into_iter()
            .flatten()
            .fold(maintenance.saturating_mul(1_000), i64::min);
        let wake_at = clock.instant_at_us(wake_us);
        if let Some(alarm) = &alarm {
            alarm.set(wake_at);
        }
        let sleep = tokio::time::sleep_until(wake_at);
        tokio::select! {
            biased;
            _ = stopping.changed() => {}
            () = &mut notified => {}
            () = sleep => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::args_hash;

    /// The hash of a unique key's arguments is journaled: it must never change. The values pinned
    /// are those `DefaultHasher` gave when keys were made with it (journals written then keep
    /// their keys): `{"n": 7}` as MessagePack, and no arguments.
    #[test]
    fn the_arguments_hash_of_a_unique_key_is_fixed() {
        assert_eq!(format!("{:016x}", args_hash(b"\x81\xa1n\x07")), "53b44f6e7796afd5");
        assert_eq!(format!("{:016x}", args_hash(b"")), "bd60acb658c79e45");
    }
}
