//! `tubemail bench jobs`: no-op jobs enqueued and performed, in memory and durable (`fsync =
//! "always"`), against a baseline of the same work (arguments encoded, sent, decoded, a no-op
//! handler called) on a plain thread pool fed by a crossbeam channel; and the start delay of
//! scheduled jobs under that load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tubemail::jobs::{EnqueueOptions, Fsync, Job, JobError, Jobs, Pool};

/// Jobs per bulk enqueue.
pub const BATCH: usize = 1_000;
/// Workers of tubemail's pool and threads of the baseline's.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from).clamp(2, 16)
}

/// One measurement.
#[derive(Debug, Clone)]
pub struct JobsRun {
    /// `tubemail` or `baseline`.
    pub system: &'static str,
    /// `memory` or `durable`.
    pub storage: &'static str,
    /// Jobs performed.
    pub jobs: u64,
    /// From the first enqueue to the last job performed.
    pub elapsed: Duration,
    /// The 99th percentile of scheduled jobs' start after their due time, in µs.
    pub p99_start_delay_us: Option<u64>,
    /// Scheduled jobs measured.
    pub scheduled: u64,
}

impl JobsRun {
    /// Jobs per second.
    pub fn jobs_per_sec(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
}

#[derive(Serialize, Deserialize)]
struct Timed {
    due_us: u64,
}

impl Job for Timed {
    const NAME: &'static str = "timed";
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// tubemail's jobs: `n` no-op jobs enqueued in batches of [`BATCH`] and performed by a pool of
/// [`workers`]; with `scheduled` > 0, that many jobs scheduled 50 to 550 ms ahead, whose start
/// delay after their due time is measured while the load runs.
///
/// # Errors
/// When the jobs do not start or an enqueue fails.
pub fn tubemail(durable: bool, n: u64, scheduled: u64) -> Result<JobsRun, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers())
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let delays = Arc::new(std::sync::Mutex::new(
            hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?,
        ));
        let (count, seen) = (done.clone(), delays.clone());
        let mut builder = Jobs::builder()
            .pool(Pool::new("bench", workers()).queue("default"))
            .handle(move |_: Noop, _| {
                count.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<(), JobError>(()))
            })
            .handle(move |job: Timed, _| {
                let late = now_us().saturating_sub(job.due_us);
                seen.lock().expect("delays").saturating_record(late);
                std::future::ready(Ok::<(), JobError>(()))
            });
        if durable {
            builder = builder.dir(dir.path()).fsync(Fsync::Always);
        }
        let jobs = builder.start().map_err(|e| e.to_string())?;
        let start = Instant::now();
        // The scheduled jobs are enqueued beside the load, one at a time, as an application would.
        let scheduler = jobs.clone();
        let timed = tokio::spawn(async move {
            for i in 0..scheduled {
                let ahead = Duration::from_micros(50_000 + (i * 500_000) / scheduled.max(1));
                let due = SystemTime::now() + ahead;
                let due_us = due.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
                scheduler
                    .enqueue_with(Timed { due_us }, EnqueueOptions::at(due))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        });
        let mut next = 0;
        while next < n {
            let batch = (n - next).min(BATCH as u64);
            jobs.enqueue_bulk((next..next + batch).map(|n| Noop { n })).await.map_err(|e| e.to_string())?;
            next += batch;
        }
        while done.load(Ordering::Relaxed) < n {
            jobs.idle().await;
            tokio::task::yield_now().await;
        }
        let elapsed = start.elapsed();
        timed.await.map_err(|e| e.to_string())??;
        // The scheduled jobs' due times may lie past the load.
        while delays.lock().expect("delays").len() < scheduled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        jobs.shutdown().await;
        let h = delays.lock().expect("delays");
        Ok(JobsRun {
            system: "tubemail",
            storage: if durable { "durable" } else { "memory" },
            jobs: n,
            elapsed,
            p99_start_delay_us: (scheduled > 0).then(|| h.value_at_quantile(0.99)),
            scheduled,
        })
    })
}

/// The baseline: the same no-op work on [`workers`] threads fed by a bounded crossbeam channel, each
/// job's arguments encoded as MessagePack by the producer and decoded by the worker.
pub fn baseline(n: u64) -> JobsRun {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(BATCH * 4);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..workers())
        .map(|_| {
            let (rx, done) = (rx.clone(), done.clone());
            std::thread::spawn(move || {
                while let Ok(bytes) = rx.recv() {
                    let job: Noop = rmp_serde::from_slice(&bytes).expect("decodes");
                    std::hint::black_box(job.n);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..n {
        tx.send(rmp_serde::to_vec(&Noop { n: i }).expect("encodes")).expect("workers run");
    }
    drop(tx);
    for t in threads {
        t.join().expect("worker");
    }
    JobsRun {
        system: "baseline",
        storage: "memory",
        jobs: done.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        p99_start_delay_us: None,
        scheduled: 0,
    }
}
