//! What a job is: a serde value with a name ([`Job`]), its options ([`JobOptions`],
//! [`EnqueueOptions`]), what its handler may answer ([`JobError`]) and what it can see while it runs
//! ([`JobContext`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::policy::RetryPolicy;
use crate::store::{Failure, JobId};

/// A job type: its arguments as a serde value, and the name its records carry (keep it stable
/// across deploys: a durable record whose name no handler claims goes to the dead set).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tubemail_jobs::{Job, JobOptions, RetryPolicy};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendReceipt { order: u64 }
///
/// impl Job for SendReceipt {
///     const NAME: &'static str = "send_receipt";
///     fn options() -> JobOptions {
///         JobOptions { queue: "mail".into(), retry: RetryPolicy::sidekiq(5), ..JobOptions::default() }
///     }
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The job's name in its durable record.
    const NAME: &'static str;

    /// The options of every job of this type (an enqueue may override them).
    fn options() -> JobOptions {
        JobOptions::default()
    }
}

/// A job type's options.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    /// Its queue ["default"].
    pub queue: String,
    /// 0 (first) to 9 (last) within its queue [0].
    pub priority: u8,
    /// When a failure runs again [Sidekiq's: 25 retries].
    pub retry: RetryPolicy,
    /// Retries stop once this long has passed since the first failure [none].
    pub retry_for: Option<Duration>,
    /// A run's time limit: past it the run is stopped and counts as a failure [none].
    pub timeout: Option<Duration>,
    /// At most one job of this type with the same arguments (and queue) enqueued, scheduled,
    /// retrying or running within this time [none].
    pub unique_for: Option<Duration>,
    /// Whether a job out of retries goes to the dead set (true) or is dropped and counted [true].
    pub dead: bool,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            queue: "default".into(),
            priority: 0,
            retry: RetryPolicy::default(),
            retry_for: None,
            timeout: None,
            unique_for: None,
            dead: true,
        }
    }
}

/// When an enqueued job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Now.
    Now,
    /// After this long.
    In(Duration),
    /// At this time (a time in the past means now, as Sidekiq).
    At(SystemTime),
}

/// How a job's unique key is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unique {
    /// From the job's name, queue and arguments, held this long.
    Args(Duration),
    /// This key, held this long.
    Key(String, Duration),
}

/// One enqueue's options: each `Some` overrides the job type's [`JobOptions`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnqueueOptions {
    /// When it is due.
    pub when: Option<When>,
    /// Its queue.
    pub queue: Option<String>,
    /// Its priority, 0 to 9.
    pub priority: Option<u8>,
    /// Its retry policy.
    pub retry: Option<RetryPolicy>,
    /// Its retry window.
    pub retry_for: Option<Duration>,
    /// Its time limit per run.
    pub timeout: Option<Duration>,
    /// Its unique key.
    pub unique: Option<Unique>,
}

impl EnqueueOptions {
    /// Due after `delay`.
    pub fn delay(delay: Duration) -> Self {
        EnqueueOptions { when: Some(When::In(delay)), ..Self::default() }
    }

    /// Due at `at`.
    pub fn at(at: SystemTime) -> Self {
        EnqueueOptions { when: Some(When::At(at)), ..Self::default() }
    }

    /// Due after `delay` (as [`EnqueueOptions::delay`], on options already set).
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.when = Some(When::In(delay));
        self
    }

    /// In queue `queue`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// With priority `priority` (0 first, 9 last).
    #[must_use]
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// With retry policy `retry`.
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// With a time limit per run.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Unique by `key` for `ttl`.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>, ttl: Duration) -> Self {
        self.unique = Some(Unique::Key(key.into(), ttl));
        self
    }

    /// Unique by its name, queue and arguments for `ttl`.
    #[must_use]
    pub fn unique_for(mut self, ttl: Duration) -> Self {
        self.unique = Some(Unique::Args(ttl));
        self
    }
}

/// What a handler answers when a run does not succeed. Any error converts into
/// [`JobError::Retry`] with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// Retry on the job's policy.
    Retry(String),
    /// Retry after this wait (still counted against the policy's retries).
    RetryIn(Duration, String),
    /// Drop the job: it is counted as discarded, never retried.
    Discard(String),
    /// Send the job straight to the dead set.
    Kill(String),
}

impl JobError {
    pub(crate) fn into_failure(self) -> Failure {
        match self {
            JobError::Retry(reason) => Failure::Retry { reason, delay_ms: None },
            JobError::RetryIn(wait, reason) => {
                Failure::Retry { reason, delay_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)) }
            }
            JobError::Discard(reason) => Failure::Discard { reason },
            JobError::Kill(reason) => Failure::Kill { reason },
        }
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(r) => write!(f, "retry: {r}"),
            JobError::RetryIn(d, r) => write!(f, "retry in {d:?}: {r}"),
            JobError::Discard(r) => write!(f, "discard: {r}"),
            JobError::Kill(r) => write!(f, "kill: {r}"),
        }
    }
}

impl<E: std::error::Error> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::Retry(e.to_string())
    }
}

/// A flag a running job's cancellation raises.
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    raised: AtomicBool,
    /// Whether the job is running (a worker may hold jobs it claimed ahead and not yet started, and
    /// outcomes not yet settled).
    started: AtomicBool,
    notify: Notify,
}

impl CancelFlag {
    pub(crate) fn start(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// The run ended (its outcome waits to be settled): no longer counted as running.
    pub(crate) fn finish(&self) {
        self.started.store(false, Ordering::Relaxed);
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    pub(crate) async fn raised(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }
}

/// What a running job can see and do: its id, its retries so far, whether it was cancelled or the
/// workers are stopping (for handlers that check between steps), and the jobs themselves (so that a
/// first job can enqueue its follow-ups).
#[derive(Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) retries: u32,
    pub(crate) tick: Option<i64>,
    pub(crate) cancel: Arc<CancelFlag>,
    /// What every job of one worker shares: one reference count per worker, not one on the jobs'
    /// shared state per job (a count that every core touches).
    pub(crate) worker: Arc<WorkerContext>,
}

/// What the jobs of one worker share.
pub(crate) struct WorkerContext {
    pub(crate) jobs: crate::Jobs,
    pub(crate) stopping: watch::Receiver<bool>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext").field("id", &self.id).field("retries", &self.retries).finish()
    }
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// Retries before this run (0 on the first run).
    pub fn retry_count(&self) -> u32 {
        self.retries
    }

    /// For a periodic job, the cron tick it was enqueued for (ms since the Unix epoch).
    pub fn periodic_tick(&self) -> Option<i64> {
        self.tick
    }

    /// The jobs, to enqueue follow-ups.
    pub fn jobs(&self) -> &crate::Jobs {
        &self.worker.jobs
    }

    /// Whether the job was cancelled (an async handler is also stopped at its next `.await`).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_raised()
    }

    /// Resolves when the job is cancelled.
    pub async fn cancelled(&self) {
        self.cancel.raised().await;
    }

    /// Whether the workers are shutting down: a long handler should stop at its next safe point
    /// and return an error to be retried, or, as iteration jobs do, checkpoint.
    pub fn is_stopping(&self) -> bool {
        *self.worker.stopping.borrow()
    }
}
