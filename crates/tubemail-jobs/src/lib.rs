//! Background jobs for a modular monolith, as Sidekiq and Shopify's job-iteration run them, durable
//! on tubemail's storage engine.
//!
//! A job is a serde value with a name ([`Job`]); a handler is registered per job type; jobs are
//! enqueued now, after a delay, at a time, or in bulk; failures are retried on Sidekiq's schedule
//! (or a policy of your own) and end in a dead set that can be listed, retried and deleted; unique
//! jobs hold a lock across retries; periodic jobs follow cron expressions, once per tick; iteration
//! jobs ([`IterationJob`]) checkpoint their cursor and resume from it.
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use serde::{Deserialize, Serialize};
//! use tubemail_jobs::{Job, JobError, Jobs};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Charge { order: u64, cents: u64 }
//! impl Job for Charge { const NAME: &'static str = "charge"; }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let charged = Arc::new(AtomicU32::new(0));
//! let seen = charged.clone();
//! let dir = tempfile::tempdir()?;
//! let jobs = Jobs::builder()
//!     .dir(dir.path())
//!     .handle(move |job: Charge, _ctx| {
//!         let seen = seen.clone();
//!         async move {
//!             assert_eq!(job.cents, 4_200);
//!             seen.fetch_add(1, Ordering::SeqCst);
//!             Ok::<_, JobError>(())
//!         }
//!     })
//!     .start()?;
//! jobs.enqueue(Charge { order: 7, cents: 4_200 }).await?; // on disk when this returns
//! jobs.idle().await;
//! assert_eq!(charged.load(Ordering::SeqCst), 1);
//! jobs.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery guarantees
//! At least once. An enqueue returns once the job's record is in the journal under the fsync policy
//! (`always` by default: on disk). A job runs until a run succeeds, is discarded, cancelled, or dies;
//! a run interrupted by a crash, a kill -9 or a shutdown's timeout runs again in full (iteration jobs
//! from their last checkpoint), so handlers must be idempotent. Nothing leaves silently: completed,
//! retried, died, discarded, cancelled, interrupted and trimmed jobs are counted ([`Jobs::stats`]).
//! A job's completion reaches the journal shortly after the job ran (a thread of its own appends
//! what workers settle, outside the store's lock): a kill -9 in between runs the job again.
//!
//! # Ordering
//! Within a queue: priority (0 first); within a priority, jobs interrupted by a shutdown first,
//! then the order of enqueue, where a job that comes due (scheduled, retried after its wait, a
//! periodic tick) takes the place of the jobs enqueued [`store::DUE_LEAD_MS`] (a second) before its
//! due time: it does not wait again behind a backlog enqueued while it waited for its time, and a
//! job enqueued to run at once is passed only by jobs due within that second after it. With several
//! workers, jobs run concurrently and may finish in any order: where order matters, use one worker,
//! or let a first job enqueue its follow-ups ([`JobContext::jobs`]).
//!
//! # Backpressure
//! The store holds at most [`Limits::jobs_max`] jobs (an enqueue beyond is refused with
//! [`Refused::Full`]); the dead set at most [`Limits::dead_max`]; each pool runs at most its
//! concurrency; a policy retries at most [`policy::RETRIES_MAX`] times. A worker whose jobs are short
//! claims up to [`CLAIM_AHEAD_MAX`] at once (never more than every other worker of its pool could
//! also take) and settles them together; once a job runs past [`CLAIM_AHEAD_BUDGET`] (on tokio's
//! timer: about a millisecond) it settles what ran and gives back what it held, so `executing` and
//! `completed` lag by about that much, and a job of a better priority enqueued meanwhile waits for
//! the held ones (at most one batch). A bulk enqueue holds the store's lock [`ENQUEUE_CHUNK`] jobs at
//! a time and hands it to a waiting worker between chunks; with a journal its records are written
//! ahead of the store, outside the lock, unless the bulk has unique keys or may not fit the store
//! (then it is one hold and one append). A job's arguments are at most [`ARGS_MAX`]. Settled jobs'
//! journal writes wait for the journal's thread in an outbox of at most [`OUTBOX_WRITES_MAX`]
//! writes; past it, a settling worker appends them itself, under the store's lock. Writes a failed
//! append leaves are kept for the next try, up to that bound; past it (a journal that keeps
//! refusing) they are dropped and their number logged as an error. A failure's reason is kept to
//! [`store::ERROR_MAX`] bytes.
//!
//! # Shutdown
//! [`Jobs::shutdown`] as Sidekiq: stop fetching, wait up to the shutdown timeout (25 s), then
//! interrupt the jobs still running and put them back at the front of their queue; sync and close
//! the journal. A durable job resumes in the next process.
//!
//! # Where handlers run
//! Async handlers ([`JobsBuilder::handle`]) and iteration jobs run as tokio tasks on the runtime that
//! started the jobs; they must not block. Blocking handlers ([`JobsBuilder::handle_blocking`]) run on
//! tokio's blocking pool, where they stall no other queue; a blocking run cannot be stopped, so its
//! timeout and a cancellation take effect when it returns (its worker waits for it).

#[doc(hidden)]
pub mod broken;
pub mod iteration;
pub mod job;
mod outbox;
pub mod policy;
pub use outbox::OUTBOX_WRITES_MAX;
mod runtime;
pub mod store;

pub use iteration::{enumerators, Enumerator, IterationJob, IterationSettings, CURSOR_MAX};
pub use job::{EnqueueOptions, Job, JobContext, JobError, JobOptions, Unique, When};
pub use policy::RetryPolicy;
pub use runtime::{
    read_journal, EnqueueError, Entry, JobStats, Jobs, JobsBuilder, Order, Pool, ShutdownReport, StartError,
    ARGS_MAX, CLAIM_AHEAD_BUDGET, CLAIM_AHEAD_MAX, DELAY_MAX, ENQUEUE_CHUNK, JOURNAL_SEGMENT_BYTES,
    JOURNAL_STREAM, MAINTENANCE_EVERY, POOL_CONCURRENCY_MAX,
};
pub use store::{Cancelled, Counters, JobId, JobRecord, JobState, Limits, Progress, Refused, Sizes};
pub use tubemail_log::{Fsync, BATCH_RECORDS_MAX};
