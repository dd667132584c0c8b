//! Iteration jobs (Shopify's job-iteration, Sidekiq's IterableJob): a job built from an enumerator
//! over a cursor, which handles one item at a time, checkpoints its cursor in its durable record,
//! yields its worker after a maximum run time, stops cleanly on shutdown, and resumes from its last
//! checkpoint after any interruption, a kill -9 included.
//!
//! # Delivery guarantees
//! Every item is handled at least once. After an interruption the job re-handles at most the items
//! since its last checkpoint: fewer than `checkpoint_items`, plus the one being handled, unless
//! `checkpoint_every` passed first. A cursor is saved only after its item succeeded, so it never moves
//! back past a checkpoint.
//!
//! # Ordering
//! Items in the enumerator's order. A job that yields after `max_job_runtime` goes to the back of its
//! queue, so long jobs take turns with short ones.
//!
//! # Backpressure
//! One item at a time per job; the enumerator is pulled, never buffered ahead.
//!
//! # Shutdown
//! On shutdown the job stops after its current item, checkpoints, runs `on_shutdown` and is put
//! back at the front of its queue, without using up a retry. Past the shutdown timeout it is stopped
//! mid-item and resumes from its last checkpoint.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::job::{Job, JobContext, JobError};
use crate::store::Progress;

/// An enumerator: items with the cursor that resumes after them.
pub type Enumerator<I, C> = Box<dyn Iterator<Item = Result<(I, C), JobError>> + Send>;

/// When an iteration job checkpoints and yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IterationSettings {
    /// Checkpoint after this many items [100].
    pub checkpoint_items: u64,
    /// ... or once this long has passed since the last checkpoint [5 s, as Sidekiq's IterableJob].
    pub checkpoint_every: Duration,
    /// After this long the job checkpoints and goes to the back of its queue [5 min, as Shopify].
    pub max_job_runtime: Duration,
}

impl Default for IterationSettings {
    fn default() -> Self {
        IterationSettings {
            checkpoint_items: 100,
            checkpoint_every: Duration::from_secs(5),
            max_job_runtime: Duration::from_secs(300),
        }
    }
}

/// A job that iterates: see the [module docs](self).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tubemail_jobs::{enumerators, Enumerator, IterationJob, Job, JobContext, JobError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Reindex { products: u64 }
/// impl Job for Reindex { const NAME: &'static str = "reindex"; }
///
/// impl IterationJob for Reindex {
///     type Item = u64;
///     type Cursor = u64;
///     fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<u64, u64>, JobError> {
///         Ok(enumerators::range(0..self.products, cursor))
///     }
///     async fn each_iteration(&self, product: u64, _ctx: &JobContext) -> Result<(), JobError> {
///         let _ = product; // reindex one product
///         Ok(())
///     }
/// }
/// ```
pub trait IterationJob: Job + Sync {
    /// What one iteration handles.
    type Item: Send + 'static;
    /// Where the enumerator resumes (saved as MessagePack in the job's record).
    type Cursor: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The enumerator from `cursor` (`None`: the start), yielding items with the cursor after each.
    ///
    /// # Errors
    /// A [`JobError`] fails the run as a handler's error does.
    fn build_enumerator(
        &self,
        cursor: Option<Self::Cursor>,
    ) -> Result<Enumerator<Self::Item, Self::Cursor>, JobError>;

    /// Handles one item.
    fn each_iteration(
        &self,
        item: Self::Item,
        ctx: &JobContext,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// Once, before the first item of the first run.
    fn on_start(&self, _ctx: &JobContext) {}
    /// Before the first item of every later run.
    fn on_resume(&self, _ctx: &JobContext) {}
    /// Every time the job stops before its end (shutdown or maximum run time).
    fn on_shutdown(&self, _ctx: &JobContext) {}
    /// Once, after the last item.
    fn on_complete(&self, _ctx: &JobContext) {}
}

/// Ready-made enumerators.
pub mod enumerators {
    use super::*;

    /// The integers of `range`, resuming after `cursor` (the last handled).
    pub fn range(range: Range<u64>, cursor: Option<u64>) -> Enumerator<u64, u64> {
        let start = cursor.map_or(range.start, |c| c.saturating_add(1).max(range.start));
        Box::new((start..range.end).map(|i| Ok((i, i))))
    }

    /// The items of `items` (cloned), resuming after index `cursor`.
    pub fn slice<T: Clone + Send + Sync + 'static>(
        items: Arc<[T]>,
        cursor: Option<usize>,
    ) -> Enumerator<T, usize> {
        let start = cursor.map_or(0, |c| c.saturating_add(1));
        let len = items.len();
        Box::new((start..len).map(move |i| Ok((items[i].clone(), i))))
    }

    /// The records of a stream partition from offset `from` up to its end when the job started (so
    /// that a backfill ends), resuming after offset `cursor`; records retention removed are
    /// skipped. Reads go to the log in batches of 256 records.
    pub fn partition(
        partition: Arc<tubemail_log::Partition>,
        from: u64,
        cursor: Option<u64>,
    ) -> Enumerator<tubemail_log::Record, u64> {
        let end = partition.end();
        let mut next = cursor.map_or(from, |c| c.saturating_add(1));
        let mut batch = std::collections::VecDeque::new();
        Box::new(std::iter::from_fn(move || loop {
            if let Some(record) = batch.pop_front() {
                let record: tubemail_log::Record = record;
                next = record.offset + 1;
                let offset = record.offset;
                return Some(Ok((record, offset)));
            }
            if next >= end {
                return None;
            }
            next = next.max(partition.start());
            match partition.read(next, 256, 1 << 20) {
                Ok(records) if records.is_empty() => return None,
                Ok(records) => batch.extend(records.into_iter().filter(|r| r.offset < end)),
                Err(e) => return Some(Err(JobError::Retry(e.to_string()))),
            }
            if batch.is_empty() {
                return None;
            }
        }))
    }
}

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Done,
    Failed(crate::store::Failure),
    /// Maximum run time reached: back of the queue.
    Yield,
    /// Stopping: front of the queue.
    Stopped,
    /// Cancelled while running: the job leaves.
    Cancelled,
}

/// The largest cursor an iteration job may checkpoint, encoded: 4 MiB, so that its record (with
/// arguments of up to [`ARGS_MAX`](crate::ARGS_MAX)) fits the journal's 16 MiB record bound. A
/// larger cursor kills the job (to the dead set, with the reason): a checkpoint the journal could
/// not take would leave the job to resume from an older one.
pub const CURSOR_MAX: usize = 4 << 20;

fn encode_cursor<C: Serialize>(cursor: &C) -> Result<Bytes, JobError> {
    let bytes =
        rmp_serde::to_vec(cursor).map_err(|e| JobError::Kill(format!("cursor does not encode: {e}")))?;
    if bytes.len() > CURSOR_MAX {
        return Err(JobError::Kill(format!(
            "a cursor of {} bytes encoded (at most {CURSOR_MAX})",
            bytes.len()
        )));
    }
    Ok(Bytes::from(bytes))
}

pub(crate) async fn run<T: IterationJob>(
    job: T,
    progress: Progress,
    ctx: JobContext,
    settings: IterationSettings,
) -> Outcome {
    let cursor: Option<T::Cursor> = match &progress.cursor {
        None => None,
        Some(bytes) => match rmp_serde::from_slice(bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                return Outcome::Failed(
                    JobError::Kill(format!("saved cursor does not decode: {e}")).into_failure(),
                )
            }
        },
    };
    let jobs = ctx.jobs().clone();
    let started = tokio::time::Instant::now();
    let mut items = progress.items;
    let mut saved = progress.cursor.clone();
    let runtime = |now: tokio::time::Instant| {
        progress.runtime_ms.saturating_add(u64::try_from((now - started).as_millis()).unwrap_or(u64::MAX))
    };
    if progress.started {
        job.on_resume(&ctx);
    } else {
        job.on_start(&ctx);
        if let Err(e) = jobs.checkpoint(ctx.id, saved.clone(), items, progress.runtime_ms).await {
            return Outcome::Failed(crate::store::Failure::Retry { reason: e.to_string(), delay_ms: None });
        }
    }
    let mut enumerator = match job.build_enumerator(cursor) {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(e.into_failure()),
    };
    let mut since = 0u64;
    let mut last_checkpoint = started;
    loop {
        let Some(next) = enumerator.next() else {
            if since > 0 {
                let _ =
                    jobs.checkpoint(ctx.id, saved.clone(), items, runtime(tokio::time::Instant::now())).await;
            }
            job.on_complete(&ctx);
            return Outcome::Done;
        };
        #[cfg(feature = "broken")]
        if crate::broken::bugs().checkpoint_before_item {
            if let Ok((_, cursor)) = &next {
                if let Ok(bytes) = encode_cursor(cursor) {
                    let _ = jobs
                        .checkpoint(ctx.id, Some(bytes), items + 1, runtime(tokio::time::Instant::now()))
                        .await;
                }
            }
        }
        let handled = match next {
            Ok((item, cursor)) => match job.each_iteration(item, &ctx).await {
                Ok(()) => encode_cursor(&cursor),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let now = tokio::time::Instant::now();
        match handled {
            Ok(cursor) => {
                saved = Some(cursor);
                items += 1;
                since += 1;
            }
            Err(e) => {
                if since > 0 {
                    let _ = jobs.checkpoint(ctx.id, saved.clone(), items, runtime(now)).await;
                }
                return Outcome::Failed(e.into_failure());
            }
        }
        let stopping = ctx.is_stopping();
        let yielding = now - started >= settings.max_job_runtime;
        if stopping
            || yielding
            || since >= settings.checkpoint_items
            || now - last_checkpoint >= settings.checkpoint_every
        {
            if let Err(e) = jobs.checkpoint(ctx.id, saved.clone(), items, runtime(now)).await {
                return Outcome::Failed(crate::store::Failure::Retry {
                    reason: e.to_string(),
                    delay_ms: None,
                });
            }
            since = 0;
            last_checkpoint = now;
        }
        if stopping || yielding {
            job.on_shutdown(&ctx);
            return if stopping { Outcome::Stopped } else { Outcome::Yield };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::enumerators;
    use std::sync::Arc;

    #[test]
    fn range_resumes_after_its_cursor() {
        let all: Vec<u64> = enumerators::range(0..5, None).map(|r| r.unwrap().0).collect();
        assert_eq!(all, [0, 1, 2, 3, 4]);
        let rest: Vec<u64> = enumerators::range(0..5, Some(2)).map(|r| r.unwrap().0).collect();
        assert_eq!(rest, [3, 4]);
        assert_eq!(enumerators::range(0..5, Some(4)).count(), 0);
    }

    #[test]
    fn slice_resumes_after_its_cursor() {
        let items: Arc<[&str]> = Arc::from(vec!["a", "b", "c"]);
        let rest: Vec<(&str, usize)> = enumerators::slice(items, Some(0)).map(|r| r.unwrap()).collect();
        assert_eq!(rest, [("b", 1), ("c", 2)]);
    }

    #[test]
    fn partition_reads_to_the_end_it_saw_and_resumes() {
        let log = tubemail_log::LogDir::memory();
        let stream = log.stream("s", tubemail_log::StreamConfig::default()).unwrap();
        for i in 0..600u32 {
            let v = i.to_be_bytes();
            stream
                .append_blocking(tubemail_log::Append { key: None, value: Some(&v), timestamp: 0 })
                .unwrap();
        }
        let p = stream.partition(0).unwrap().clone();
        let offsets: Vec<u64> = enumerators::partition(p.clone(), 0, None).map(|r| r.unwrap().1).collect();
        assert_eq!(offsets, (0..600).collect::<Vec<_>>());
        let rest: Vec<u64> = enumerators::partition(p, 0, Some(597)).map(|r| r.unwrap().1).collect();
        assert_eq!(rest, [598, 599]);
    }
}
