//! Jobs as users run them: enqueue, retry, die, come back from the dead set, unique and periodic
//! jobs, cancellation, timeouts, shutdown and restart, with tokio's paused clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tubemail_jobs::{
    Cancelled, EnqueueError, EnqueueOptions, Job, JobError, JobOptions, JobState, Jobs, Order, Pool, Refused,
    RetryPolicy, StartError,
};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Work {
    n: u64,
}

impl Job for Work {
    const NAME: &'static str = "work";
}

/// When each run started, in ms of tokio's clock since the test began.
type Runs = Arc<Mutex<Vec<(u64, u64)>>>;

fn start_time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn clock_ms(t0: tokio::time::Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// A handler that fails its first `failures` runs of each job, and records every run.
fn flaky(
    runs: Runs,
    failures: u32,
    t0: tokio::time::Instant,
) -> impl Fn(Work, tubemail_jobs::JobContext) -> std::future::Ready<Result<(), JobError>> + Send + Sync {
    move |job: Work, ctx| {
        runs.lock().unwrap().push((job.n, clock_ms(t0)));
        std::future::ready(if ctx.retry_count() < failures {
            Err(JobError::Retry("flaky".into()))
        } else {
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn an_enqueued_job_runs_its_handler_once() {
    let runs: Runs = Arc::default();
    let t0 = tokio::time::Instant::now();
    let jobs = Jobs::builder().handle(flaky(runs.clone(), 0, t0)).start().unwrap();
    let id = jobs.enqueue(Work { n: 1 }).await.unwrap();
    jobs.idle().await;
    assert_eq!(runs.lock().unwrap().iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
    assert!(jobs.job(id).is_none(), "a completed job leaves the store");
    assert_eq!(jobs.stats().counters.completed, 1);
    let report = jobs.shutdown().await;
    assert!(report.shut_down);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_sidekiqs_schedule_in_simulated_time() {
    let runs: Runs = Arc::default();
    let t0 = tokio::time::Instant::now();
    let jobs =
        Jobs::builder().seed(3).start_time(start_time()).handle(flaky(runs.clone(), 3, t0)).start().unwrap();
    jobs.enqueue(Work { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(400)).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4, "three failures, then success: {runs:?}");
    for count in 0..3u64 {
        let wait = runs[count as usize + 1].1 - runs[count as usize].1;
        let low = (count.pow(4) + 15) * 1_000;
        let high = low + 10 * (count + 1) * 1_000;
        assert!((low..=high + 5).contains(&wait), "retry {count} after {wait} ms, expected {low}..{high}");
    }
    let counters = jobs.stats().counters;
    assert_eq!((counters.retried, counters.completed, counters.died), (3, 1, 0));
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_job_out_of_retries_goes_to_the_dead_set_and_comes_back_from_it() {
    let runs = Arc::new(AtomicU32::new(0));
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (count, failing) = (runs.clone(), broken.clone());
    let jobs = Jobs::builder()
        .handle(move |_: Work, _| {
            count.fetch_add(1, Ordering::SeqCst);
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(JobError::Retry("flaky".into()))
                } else {
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    let options = EnqueueOptions::default().retry(RetryPolicy::Fixed { retries: 2, delay_ms: 1_000 });
    let id = jobs.enqueue_with(Work { n: 9 }, options).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "the first run and two retries");
    let dead = jobs.dead();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].state, JobState::Dead);
    assert_eq!(dead[0].error.as_deref(), Some("flaky"));
    // Fixed, and retried from the dead set with its retries reset.
    broken.store(false, Ordering::SeqCst);
    assert!(jobs.retry_dead(id).unwrap());
    assert_eq!(jobs.job(id).unwrap().retries, 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4);
    assert!(jobs.dead().is_empty());
    assert!(!jobs.retry_dead(id).unwrap(), "it is no longer dead");
    let c = jobs.stats().counters;
    assert_eq!((c.died, c.resurrected, c.completed), (1, 1, 1));
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn kill_discard_and_panic_each_end_as_they_say() {
    #[derive(Serialize, Deserialize)]
    struct Bad {
        how: String,
    }
    impl Job for Bad {
        const NAME: &'static str = "bad";
    }
    let jobs = Jobs::builder()
        .handle(|job: Bad, _| async move {
            match job.how.as_str() {
                "kill" => Err(JobError::Kill("poison".into())),
                "discard" => Err(JobError::Discard("obsolete".into())),
                _ => panic!("boom"),
            }
        })
        .start()
        .unwrap();
    let kill = jobs.enqueue(Bad { how: "kill".into() }).await.unwrap();
    jobs.enqueue(Bad { how: "discard".into() }).await.unwrap();
    let panic = jobs.enqueue(Bad { how: "panic".into() }).await.unwrap();
    jobs.idle().await;
    let dead = jobs.dead();
    let reason = |id| dead.iter().find(|r| r.id == id).and_then(|r| r.error.clone()).unwrap();
    assert_eq!(reason(kill), "poison");
    assert!(reason(panic).contains("panicked: boom"), "{}", reason(panic));
    let c = jobs.stats().counters;
    assert_eq!((c.died, c.discarded, c.retried), (2, 1, 0));
    // The dead set can be emptied one by one or all at once.
    assert!(jobs.delete_dead(kill).unwrap());
    assert_eq!(jobs.clear_dead().unwrap(), 1);
    assert!(jobs.dead().is_empty());
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_dead_set_is_trimmed_to_its_bound_oldest_first() {
    let jobs = Jobs::builder()
        .limits(tubemail_jobs::Limits { dead_max: 3, ..Default::default() })
        .handle(|_: Work, _| async { Err::<(), _>(JobError::Kill("no".into())) })
        .start()
        .unwrap();
    for n in 0..5 {
        jobs.enqueue(Work { n }).await.unwrap();
        jobs.idle().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead: Vec<u64> =
        jobs.dead().iter().map(|r| rmp_serde::from_slice::<Work>(&r.args).unwrap().n).collect();
    assert_eq!(dead, [4, 3, 2], "newest first, the two oldest trimmed");
    assert_eq!(jobs.stats().counters.trimmed, 2);
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn scheduled_jobs_run_at_their_time_and_a_past_time_runs_now() {
    let runs: Runs = Arc::default();
    let t0 = tokio::time::Instant::now();
    let jobs = Jobs::builder().start_time(start_time()).handle(flaky(runs.clone(), 0, t0)).start().unwrap();
    jobs.enqueue_in(Work { n: 1 }, Duration::from_secs(10)).await.unwrap();
    jobs.enqueue_at(Work { n: 2 }, start_time() - Duration::from_secs(60)).await.unwrap();
    jobs.enqueue_at(Work { n: 3 }, start_time() + Duration::from_secs(5)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), [2, 3, 1]);
    assert!(runs[0].1 < 5, "{runs:?}");
    assert!((5_000..5_002).contains(&runs[1].1), "{runs:?}");
    assert!((10_000..10_002).contains(&runs[2].1), "{runs:?}");
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_unique_job_holds_its_key_across_retries_until_it_succeeds() {
    let runs: Runs = Arc::default();
    let t0 = tokio::time::Instant::now();
    let jobs = Jobs::builder().handle(flaky(runs.clone(), 1, t0)).start().unwrap();
    let once = || EnqueueOptions::default().unique_for(Duration::from_secs(3_600));
    let first = jobs.enqueue_with(Work { n: 1 }, once()).await.unwrap();
    match jobs.enqueue_with(Work { n: 1 }, once()).await {
        Err(EnqueueError::Refused(Refused::Duplicate { existing, .. })) => assert_eq!(existing, first),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    jobs.enqueue_with(Work { n: 2 }, once()).await.expect("other arguments are another key");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs.job(first).unwrap().state, JobState::Retryable);
    assert!(jobs.enqueue_with(Work { n: 1 }, once()).await.is_err(), "held across the retry");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(jobs.job(first).is_none(), "succeeded on its retry");
    jobs.enqueue_with(Work { n: 1 }, once()).await.expect("released on success");
    assert_eq!(jobs.stats().counters.duplicates, 2);
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_unique_lock_lapses_at_its_ttl_and_is_released_on_death() {
    let jobs = Jobs::builder()
        .handle(|_: Work, _| async { Err::<(), _>(JobError::Retry("later".into())) })
        .start()
        .unwrap();
    let key = |ttl| EnqueueOptions::default().unique_key("nightly", Duration::from_secs(ttl));
    let first = jobs.enqueue_with(Work { n: 1 }, key(30)).await.unwrap();
    assert!(jobs.enqueue_with(Work { n: 2 }, key(30)).await.is_err());
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(jobs.job(first).is_some(), "still retrying");
    jobs.enqueue_with(Work { n: 3 }, key(30)).await.expect("the lock lapsed at its TTL");
    let dies =
        EnqueueOptions::default().unique_key("k2", Duration::from_secs(3_600)).retry(RetryPolicy::None);
    jobs.enqueue_with(Work { n: 4 }, dies.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    jobs.enqueue_with(Work { n: 5 }, dies).await.expect("released when the holder died");
    jobs.shutdown().await;
}

/// A unique job retried from the dead set takes its key again while the key's TTL runs, and is
/// refused while another job holds it: two jobs of one key never wait or run together.
#[tokio::test(start_paused = true)]
async fn a_unique_job_retried_from_the_dead_set_takes_its_key_again() {
    let jobs = Jobs::builder()
        .handle(|job: Work, _| async move {
            match job.n {
                1 | 2 => Err(JobError::Kill("dies".into())),
                _ => {
                    tokio::time::sleep(Duration::from_secs(3_600)).await;
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    let key = |k: &str| EnqueueOptions::default().unique_key(k, Duration::from_secs(7_200));
    // Its key free: back from the dead set with it.
    let dead = jobs.enqueue_with(Work { n: 1 }, key("a")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs.job(dead).unwrap().state, JobState::Dead);
    assert!(jobs.retry_dead(dead).unwrap());
    assert!(
        matches!(
            jobs.enqueue_with(Work { n: 3 }, key("a")).await,
            Err(EnqueueError::Refused(Refused::Duplicate { .. }))
        ),
        "the job back from the dead set holds its key"
    );
    // Its key taken meanwhile by another job: it stays dead.
    let dead = jobs.enqueue_with(Work { n: 2 }, key("b")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(jobs.job(dead).unwrap().state, JobState::Dead);
    jobs.enqueue_with(Work { n: 4 }, key("b")).await.expect("released at its death");
    assert!(!jobs.retry_dead(dead).unwrap(), "the key is held by the other job");
    assert_eq!(jobs.job(dead).unwrap().state, JobState::Dead);
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_periodic_job_is_enqueued_once_per_tick_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let runs: Runs = Arc::default();
    let t0 = tokio::time::Instant::now();
    let start = |runs: Runs| {
        Jobs::builder()
            .dir(dir.path())
            // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
            .fsync(tubemail_jobs::Fsync::Never)
            .fsync(tubemail_jobs::Fsync::Never)
            .start_time(start_time())
            .handle(flaky(runs, 0, t0))
            .periodic("every-second", "* * * * * *", &Work { n: 7 })
            .start()
            .unwrap()
    };
    let jobs = start(runs.clone());
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    assert_eq!(runs.lock().unwrap().len(), 5, "ticks at 1 s .. 5 s");
    jobs.shutdown().await;
    drop(jobs);
    // The same wall-clock start again: ticks 1..5 s were enqueued by the first process.
    let again: Runs = Arc::default();
    let jobs = start(again.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(again.lock().unwrap().len(), 0, "no tick enqueued twice");
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_bad_cron_expression_or_no_runtime_is_a_clear_start_error() {
    let err = Jobs::builder()
        .handle(|_: Work, _| async { Ok(()) })
        .periodic("typo", "61 * * * *", &Work { n: 0 })
        .start()
        .unwrap_err();
    assert!(matches!(err, StartError::Cron { .. }), "{err}");
    assert!(err.to_string().contains("typo"), "{err}");
    let outside = std::thread::spawn(|| Jobs::builder().start().map(|_| ()).unwrap_err()).join().unwrap();
    assert!(matches!(outside, StartError::NoRuntime), "{outside}");
}

#[tokio::test(start_paused = true)]
async fn bad_enqueues_are_typed_errors() {
    #[derive(Serialize, Deserialize)]
    struct Unregistered;
    impl Job for Unregistered {
        const NAME: &'static str = "unregistered";
    }
    let jobs = Jobs::builder().handle(|_: Work, _| async { Ok(()) }).start().unwrap();
    assert!(matches!(jobs.enqueue(Unregistered).await, Err(EnqueueError::UnknownJob(_))));
    let elsewhere = EnqueueOptions::default().queue("nobody-serves-this");
    assert!(matches!(jobs.enqueue_with(Work { n: 0 }, elsewhere).await, Err(EnqueueError::UnknownQueue(_))));
    let absurd = jobs.enqueue_in(Work { n: 0 }, Duration::from_secs(u64::MAX / 4)).await;
    assert!(matches!(absurd, Err(EnqueueError::Invalid(_))), "{absurd:?}");
    let priority = jobs.enqueue_with(Work { n: 0 }, EnqueueOptions::default().priority(10)).await;
    assert!(matches!(priority, Err(EnqueueError::Invalid(_))));
    #[derive(Serialize, Deserialize)]
    struct Huge(bytes::Bytes);
    impl Job for Huge {
        const NAME: &'static str = "huge";
    }
    let jobs_huge = Jobs::builder().handle(|_: Huge, _| async { Ok(()) }).start().unwrap();
    let huge = jobs_huge.enqueue(Huge(vec![7; tubemail_jobs::ARGS_MAX + 1].into())).await;
    assert!(
        matches!(&huge, Err(EnqueueError::Invalid(why)) if why.contains("at most")),
        "arguments past ARGS_MAX are refused: {huge:?}"
    );
    assert_eq!(jobs_huge.stats().sizes.total, 0, "nothing of it was stored");
    jobs_huge.shutdown().await;
    jobs.shutdown().await;
    assert!(matches!(jobs.enqueue(Work { n: 0 }).await, Err(EnqueueError::Closed)));
}

#[tokio::test(start_paused = true)]
async fn a_waiting_job_and_a_running_job_can_be_cancelled() {
    let started = Arc::new(AtomicU32::new(0));
    let seen = started.clone();
    let jobs = Jobs::builder()
        .handle(move |_: Work, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok(())
            }
        })
        .start()
        .unwrap();
    let later = jobs.enqueue_in(Work { n: 1 }, Duration::from_secs(60)).await.unwrap();
    let running = jobs.enqueue(Work { n: 2 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(jobs.job(running).unwrap().state, JobState::Executing);
    assert_eq!(jobs.cancel(later).await.unwrap(), Cancelled::Removed);
    assert_eq!(jobs.cancel(running).await.unwrap(), Cancelled::Running);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(jobs.job(running).is_none());
    assert_eq!(jobs.cancel(running).await.unwrap(), Cancelled::NotFound);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "the cancelled scheduled job never ran");
    assert_eq!(jobs.stats().counters.cancelled, 2);
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_is_stopped_and_retried() {
    let runs: Runs = Arc::default();
    let seen = runs.clone();
    let t0 = tokio::time::Instant::now();
    let jobs = Jobs::builder()
        .handle(move |job: Work, ctx| {
            seen.lock().unwrap().push((job.n, clock_ms(t0)));
            let slow = ctx.retry_count() == 0;
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(())
            }
        })
        .start()
        .unwrap();
    let options = EnqueueOptions::default()
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::Fixed { retries: 1, delay_ms: 100 });
    let id = jobs.enqueue_with(Work { n: 1 }, options).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_050)).await;
    let record = jobs.job(id).unwrap();
    assert_eq!(record.state, JobState::Retryable);
    assert!(record.error.unwrap().contains("timed out after 2000 ms"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.lock().unwrap().len(), 2);
    assert!(jobs.job(id).is_none());
    jobs.shutdown().await;
}

/// A running job cancelled just as a shutdown interrupts it leaves as cancelled: the caller was told
/// it stops and leaves (`Cancelled::Running`), so it is not put back to run in the next process.
#[tokio::test(start_paused = true)]
async fn a_running_job_cancelled_as_the_shutdown_interrupts_it_is_not_put_back() {
    let jobs = Jobs::builder()
        .handle(move |_: Work, _| async {
            tokio::time::sleep(Duration::from_secs(3_600)).await;
            Ok(())
        })
        .shutdown_timeout(Duration::ZERO)
        .start()
        .unwrap();
    let id = jobs.enqueue(Work { n: 1 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(jobs.job(id).unwrap().state, JobState::Executing);
    // Both before the worker runs again: it sees the interruption first.
    assert_eq!(jobs.cancel(id).await.unwrap(), Cancelled::Running);
    jobs.shutdown().await;
    assert!(jobs.job(id).is_none(), "the cancelled job was put back: {:?}", jobs.job(id));
    let counters = jobs.stats().counters;
    assert_eq!((counters.cancelled, counters.interrupted), (1, 0));
}

/// Enqueues a job with a 20 ms timeout and one immediate retry, and waits (real time, at most 10 s)
/// until it has left.
async fn run_blocking_past_its_timeout(jobs: &Jobs) {
    let options = EnqueueOptions::default()
        .timeout(Duration::from_millis(20))
        .retry(RetryPolicy::Fixed { retries: 1, delay_ms: 0 });
    let id = jobs.enqueue_with(Work { n: 1 }, options).await.unwrap();
    let waited = std::time::Instant::now();
    while jobs.job(id).is_some() {
        assert!(waited.elapsed() < Duration::from_secs(10), "the job ends");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A blocking handler cannot be stopped: past its timeout it runs on on its thread, and its retry
/// waits for that run to return (two runs of one job never overlap). Real threads and real time:
/// the handler sleeps on tokio's blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_run_past_its_timeout_is_retried_only_once_it_returns() {
    // (started, ended) of each run.
    let runs: Arc<Mutex<Vec<(std::time::Instant, std::time::Instant)>>> = Arc::default();
    let seen = runs.clone();
    let jobs = Jobs::builder()
        .handle_blocking(move |_: Work, ctx| {
            let started = std::time::Instant::now();
            seen.lock().unwrap().push((started, started));
            if ctx.retry_count() == 0 {
                std::thread::sleep(Duration::from_millis(300));
                seen.lock().unwrap()[0].1 = std::time::Instant::now();
                // Failed after its timeout: retried (a run that succeeded after all would complete).
                return Err(JobError::Retry("slow and failed".into()));
            }
            Ok(())
        })
        .start()
        .unwrap();
    run_blocking_past_its_timeout(&jobs).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "the run past its timeout, then its retry");
    assert!(runs[1].0 >= runs[0].1, "the retry started after the first run returned: {runs:?}");
    jobs.shutdown().await;
}

/// A blocking run that succeeds after its timeout completes: its work is done, it is not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_run_that_succeeds_past_its_timeout_completes() {
    let runs = Arc::new(AtomicU32::new(0));
    let seen = runs.clone();
    let jobs = Jobs::builder()
        .handle_blocking(move |_: Work, _| {
            seen.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        })
        .start()
        .unwrap();
    run_blocking_past_its_timeout(&jobs).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let counters = jobs.stats().counters;
    assert_eq!((counters.completed, counters.retried), (1, 0));
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn strict_pools_drain_the_first_queue_first_and_weighted_pools_share() {
    #[derive(Serialize, Deserialize)]
    struct Tagged {
        queue: String,
    }
    impl Job for Tagged {
        const NAME: &'static str = "tagged";
    }
    for order in [Order::Strict, Order::Weighted] {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let jobs = Jobs::builder()
            .seed(5)
            .pool(Pool::new("one", 1).weighted_queue("critical", 3).weighted_queue("low", 1).order(order))
            .handle(move |job: Tagged, _| {
                log.lock().unwrap().push(job.queue);
                async { Ok(()) }
            })
            .start()
            .unwrap();
        for _ in 0..200 {
            for q in ["low", "critical"] {
                jobs.enqueue_with(Tagged { queue: q.into() }, EnqueueOptions::default().queue(q))
                    .await
                    .unwrap();
            }
        }
        jobs.idle().await;
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 400);
        let critical_in_first_half = seen[..200].iter().filter(|q| *q == "critical").count();
        match order {
            // The first job may start before the rest are enqueued.
            Order::Strict => assert!(critical_in_first_half >= 199, "{critical_in_first_half}"),
            Order::Weighted => {
                assert!((120..190).contains(&critical_in_first_half), "{critical_in_first_half}")
            }
        }
        jobs.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn priorities_order_jobs_within_a_queue() {
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let log = seen.clone();
    let jobs = Jobs::builder()
        .pool(Pool::new("one", 1).queue("default"))
        .handle(move |job: Work, _| {
            log.lock().unwrap().push(job.n);
            async { Ok(()) }
        })
        .start()
        .unwrap();
    // Enqueued together, before any worker runs (the runtime is single-threaded).
    let ids = jobs.enqueue_bulk([Work { n: 1 }, Work { n: 2 }]).await.unwrap();
    assert_eq!(ids.len(), 2);
    jobs.enqueue_with(Work { n: 3 }, EnqueueOptions::default().priority(0)).await.unwrap();
    jobs.enqueue_with(Work { n: 4 }, EnqueueOptions::default().priority(9)).await.unwrap();
    jobs.idle().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(*seen.last().unwrap(), 4, "priority 9 runs last: {seen:?}");
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_running_jobs_then_puts_the_rest_back_and_the_next_process_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let start = |slow: bool, done: Arc<AtomicU32>| {
        Jobs::builder()
            .dir(dir.path())
            // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
            .fsync(tubemail_jobs::Fsync::Never)
            .shutdown_timeout(Duration::from_secs(25))
            .pool(Pool::new("two", 2).queue("default"))
            .handle(move |job: Work, _| {
                let done = done.clone();
                async move {
                    if slow && job.n == 1 {
                        tokio::time::sleep(Duration::from_secs(3_600)).await;
                    } else if slow {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let jobs = start(true, done.clone());
    jobs.enqueue(Work { n: 1 }).await.unwrap();
    jobs.enqueue(Work { n: 2 }).await.unwrap();
    jobs.enqueue(Work { n: 3 }).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = jobs.shutdown().await;
    assert_eq!(report.running, 2);
    assert_eq!(report.interrupted, 1, "the hour-long job is interrupted at 25 s");
    assert_eq!(done.load(Ordering::SeqCst), 1, "the 5 s job finished within the timeout");
    assert_eq!(report.left.total, 2, "the interrupted job and the one never fetched");
    drop(jobs);
    let next = Arc::new(AtomicU32::new(0));
    let jobs = start(false, next.clone());
    jobs.idle().await;
    assert_eq!(next.load(Ordering::SeqCst), 2, "both run in the next process");
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_executing_jobs_run_again_and_acked_enqueues_survive() {
    let dir = tempfile::tempdir().unwrap();
    let start = |count: Arc<AtomicU32>, hang: bool| {
        Jobs::builder()
            .dir(dir.path())
            // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
            .fsync(tubemail_jobs::Fsync::Never)
            .handle(move |_: Work, _| {
                count.fetch_add(1, Ordering::SeqCst);
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let first = Arc::new(AtomicU32::new(0));
    let jobs = start(first.clone(), true);
    let ids: Vec<_> = futures::future::join_all((0..30).map(|n| jobs.enqueue(Work { n }))).await;
    assert!(ids.iter().all(Result::is_ok));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(first.load(Ordering::SeqCst), 10, "ten workers started ten jobs");
    jobs.crash().await;
    drop(jobs);
    let second = Arc::new(AtomicU32::new(0));
    let jobs = start(second.clone(), false);
    jobs.idle().await;
    assert_eq!(second.load(Ordering::SeqCst), 30, "every job ran to completion in the next process");
    // Claims are not journaled (a plain job's run leaves no record until it ends), so the next
    // process sees the ten as available, not as interrupted; iteration jobs journal their start.
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_whose_job_the_new_code_does_not_know_goes_to_the_dead_set() {
    let dir = tempfile::tempdir().unwrap();
    #[derive(Serialize, Deserialize)]
    struct Old {
        text: String,
    }
    impl Job for Old {
        const NAME: &'static str = "old";
    }
    #[derive(Serialize, Deserialize)]
    struct Renamed {
        count: u64,
    }
    impl Job for Renamed {
        // Same name, arguments of another shape.
        const NAME: &'static str = "work";
    }
    let jobs = Jobs::builder()
        .dir(dir.path())
        // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
        .fsync(tubemail_jobs::Fsync::Never)
        .pool(Pool::new("none-yet", 1).queue("paused"))
        .handle(|_: Old, _| async { Ok(()) })
        .handle(|_: Renamed, _| async { Ok(()) })
        .start()
        .unwrap();
    let paused = || EnqueueOptions::default().queue("paused");
    let gone = jobs.enqueue_with(Old { text: "x".into() }, paused()).await.unwrap();
    let reshaped = jobs.enqueue_with(Renamed { count: 1 }, paused()).await.unwrap();
    jobs.crash().await;
    drop(jobs);
    // The next deploy: "old" is gone and "work" takes a string.
    #[derive(Serialize, Deserialize)]
    struct NewWork {
        label: String,
    }
    impl Job for NewWork {
        const NAME: &'static str = "work";
    }
    let jobs = Jobs::builder()
        .dir(dir.path())
        // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
        .fsync(tubemail_jobs::Fsync::Never)
        .pool(Pool::new("now", 1).queue("paused"))
        .handle(|_: NewWork, _| async { Ok(()) })
        .start()
        .unwrap();
    jobs.idle().await;
    let dead = jobs.dead();
    let reason = |id| dead.iter().find(|r| r.id == id).and_then(|r| r.error.clone()).unwrap_or_default();
    assert!(reason(gone).contains("no handler is registered for job \"old\""), "{}", reason(gone));
    assert!(reason(reshaped).contains("do not decode"), "{}", reason(reshaped));
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_job_can_enqueue_its_follow_up() {
    #[derive(Serialize, Deserialize)]
    struct Step {
        n: u32,
    }
    impl Job for Step {
        const NAME: &'static str = "step";
        fn options() -> JobOptions {
            JobOptions { queue: "steps".into(), ..JobOptions::default() }
        }
    }
    let order: Arc<Mutex<Vec<u32>>> = Arc::default();
    let seen = order.clone();
    let jobs = Jobs::builder()
        .pool(Pool::new("steps", 4).queue("steps"))
        .handle(move |step: Step, ctx| {
            seen.lock().unwrap().push(step.n);
            async move {
                if step.n < 5 {
                    ctx.jobs().enqueue(Step { n: step.n + 1 }).await?;
                }
                Ok(())
            }
        })
        .start()
        .unwrap();
    jobs.enqueue(Step { n: 1 }).await.unwrap();
    for _ in 0..10 {
        jobs.idle().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(*order.lock().unwrap(), [1, 2, 3, 4, 5], "in order, though four workers run");
    jobs.shutdown().await;
}

/// A job enqueued for a moment between two milliseconds never starts before it, and not a whole
/// millisecond after it either, whatever fraction of a millisecond the process started at.
#[tokio::test(start_paused = true)]
async fn a_scheduled_job_never_starts_before_its_time() {
    let started_at = start_time() + Duration::from_micros(700);
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = starts.clone();
    let t0 = tokio::time::Instant::now();
    let jobs = Jobs::builder()
        .start_time(started_at)
        .handle(move |job: Work, _| {
            seen.lock().unwrap().push((job.n, t0.elapsed()));
            std::future::ready(Ok::<(), JobError>(()))
        })
        .start()
        .unwrap();
    // Due 2.4 ms and 5.0 ms after the start (in wall time), and 1.5 ms from now by delay.
    jobs.enqueue_at(Work { n: 1 }, started_at + Duration::from_micros(2_400)).await.unwrap();
    jobs.enqueue_at(Work { n: 2 }, started_at + Duration::from_millis(5)).await.unwrap();
    jobs.enqueue_in(Work { n: 3 }, Duration::from_micros(1_500)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    jobs.idle().await;
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    let due = [Duration::from_micros(2_400), Duration::from_millis(5), Duration::from_micros(1_500)];
    assert_eq!(starts.len(), 3, "{starts:?}");
    for ((n, at), due) in starts.iter().zip(due) {
        assert!(*at >= due, "job {n} started at {at:?}, before its {due:?}");
        // Due times are kept to the microsecond; tokio's (paused) timer wakes at its next millisecond.
        assert!(*at <= due + Duration::from_millis(1), "job {n} started at {at:?}, long after {due:?}");
    }
    jobs.shutdown().await;
}

/// A worker takes a run of short jobs a batch at a time (one lock for many): a job cancelled while
/// its worker holds it unstarted never runs, and a job that runs long gives back what its worker
/// held, for another worker to take, with no interruption counted.
#[tokio::test(start_paused = true)]
async fn a_worker_claims_short_jobs_ahead_and_gives_back_what_it_holds() {
    let ids: Arc<Mutex<Vec<tubemail_jobs::JobId>>> = Arc::default();
    let ran: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let cancelled = Arc::new(Mutex::new(None));
    let gate = Arc::new(tokio::sync::Notify::new());
    let (ids_seen, ran_seen, cancelled_seen, gate_seen) =
        (ids.clone(), ran.clone(), cancelled.clone(), gate.clone());
    let jobs = Jobs::builder()
        .pool(Pool::new("one", 1).queue("default"))
        .handle(move |job: Work, ctx| {
            let (ids, ran, cancelled, gate) =
                (ids_seen.clone(), ran_seen.clone(), cancelled_seen.clone(), gate_seen.clone());
            async move {
                ran.lock().unwrap().push((job.n, ctx.jobs().stats().sizes.executing));
                if job.n == 20 {
                    let next = ids.lock().unwrap()[21];
                    *cancelled.lock().unwrap() = Some(ctx.jobs().cancel(next).await.unwrap());
                }
                if job.n == 40 {
                    gate.notified().await;
                }
                Ok::<_, JobError>(())
            }
        })
        .start()
        .unwrap();
    let got = jobs.enqueue_bulk((0..300).map(|n| Work { n })).await.unwrap();
    *ids.lock().unwrap() = got.into_iter().map(Result::unwrap).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let held = ran.lock().unwrap().iter().map(|&(_, executing)| executing).max().unwrap();
    assert!(held > 1, "one worker held several jobs at once");
    assert_eq!(
        *cancelled.lock().unwrap(),
        Some(Cancelled::Running),
        "job 21 was held, unstarted, by the worker"
    );
    let stats = jobs.stats();
    assert_eq!(stats.sizes.executing, 1, "job 40 runs long: what its worker held went back");
    assert_eq!(stats.sizes.available["default"], 259, "jobs 41 to 299 wait in their queue");
    gate.notify_one();
    jobs.idle().await;
    let ran: Vec<u64> = ran.lock().unwrap().iter().map(|&(n, _)| n).collect();
    assert_eq!(
        ran,
        (0..300).filter(|&n| n != 21).collect::<Vec<_>>(),
        "in order, and the cancelled job never ran"
    );
    let counters = jobs.stats().counters;
    assert_eq!((counters.completed, counters.cancelled, counters.interrupted), (299, 1, 0));
    jobs.shutdown().await;
}

/// A bulk enqueue larger than a chunk of the store's lock keeps one result per job, in order: a full
/// store refuses the tail and keeps the head.
#[tokio::test(start_paused = true)]
async fn a_bulk_enqueue_past_the_store_bound_refuses_its_tail_in_order() {
    let jobs = Jobs::builder()
        .limits(tubemail_jobs::Limits { jobs_max: 200, ..tubemail_jobs::Limits::default() })
        .workers(false)
        .handle(|_: Work, _| std::future::ready(Ok::<(), JobError>(())))
        .start()
        .unwrap();
    const { assert!(tubemail_jobs::ENQUEUE_CHUNK < 200, "the bulk spans several chunks") };
    let results = jobs.enqueue_bulk((0..300).map(|n| Work { n })).await.unwrap();
    assert_eq!(results.len(), 300);
    assert!(results[..200].iter().all(Result::is_ok));
    assert!(results[200..].iter().all(|r| *r == Err(Refused::Full { max: 200 })));
    let ids: Vec<u64> = results[..200].iter().map(|r| r.as_ref().unwrap().0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in the order of the bulk");
    assert_eq!(jobs.stats().sizes.available["default"], 200);
    jobs.shutdown().await;
}

/// A durable bulk is written ahead of the store, in appends of at most the log's batch bound: a
/// bulk past it is kept whole across a restart; near the store's bound the bulk takes the path that
/// refuses its tail, and what it refused is not in the journal.
#[tokio::test(start_paused = true)]
async fn a_durable_bulk_past_the_logs_batch_bound_and_near_the_store_bound_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bulk = tubemail_jobs::BATCH_RECORDS_MAX as u64 + 100;
    let start = || {
        Jobs::builder()
            .dir(dir.path())
            .fsync(tubemail_jobs::Fsync::Never)
            .limits(tubemail_jobs::Limits {
                jobs_max: bulk as usize + 10,
                ..tubemail_jobs::Limits::default()
            })
            .workers(false)
            .handle(|_: Work, _| std::future::ready(Ok::<(), JobError>(())))
            .start()
            .unwrap()
    };
    let jobs = start();
    let results = jobs.enqueue_bulk((0..bulk).map(|n| Work { n })).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    let tail = jobs.enqueue_bulk((0..20).map(|n| Work { n })).await.unwrap();
    assert!(tail[..10].iter().all(Result::is_ok));
    assert!(tail[10..].iter().all(|r| *r == Err(Refused::Full { max: bulk as usize + 10 })));
    let last = tail[9].as_ref().unwrap().0;
    jobs.shutdown().await;
    drop(jobs);
    let jobs = start();
    let sizes = jobs.stats().sizes;
    assert_eq!(sizes.total, bulk as usize + 10, "every accepted job, and no refused one");
    let next = jobs.enqueue_bulk([Work { n: 0 }]).await.unwrap();
    assert!(next[0].is_err(), "the store is full again after the restart");
    jobs.shutdown().await;
    assert!(last > bulk, "ids in order across both bulks");
}

/// When the journal fails before a written-ahead bulk reached it, the bulk is an error and nothing
/// of it is in the store: no job runs that the caller was told failed.
#[tokio::test(start_paused = true)]
async fn a_bulk_the_journal_refuses_is_an_error_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::builder()
        .dir(dir.path())
        .fsync(tubemail_jobs::Fsync::Never)
        .workers(false)
        .handle(|_: Work, _| std::future::ready(Ok::<(), JobError>(())))
        .start()
        .unwrap();
    jobs.enqueue_bulk((0..3).map(|n| Work { n })).await.unwrap();
    jobs.journal().unwrap().abandon();
    let failed = jobs.enqueue_bulk((0..5).map(|n| Work { n })).await;
    assert!(matches!(failed, Err(EnqueueError::Log(_))), "{failed:?}");
    assert_eq!(jobs.stats().sizes.total, 3, "only the jobs enqueued before");
}

/// A handler that spends the task's whole budget on every poll (a channel that is always ready)
/// is still interrupted at the shutdown's timeout. Real time: on the paused clock a busy runtime
/// never lets time advance.
#[tokio::test]
async fn a_handler_that_is_never_idle_is_interrupted_at_the_shutdown_timeout() {
    let jobs = Jobs::builder()
        .shutdown_timeout(Duration::from_millis(50))
        .handle(|_: Work, _| async {
            loop {
                tokio::task::consume_budget().await;
            }
        })
        .start()
        .unwrap();
    jobs.enqueue(Work { n: 1 }).await.unwrap();
    while jobs.stats().sizes.executing == 0 {
        tokio::task::yield_now().await;
    }
    let report = tokio::time::timeout(Duration::from_secs(20), jobs.shutdown())
        .await
        .expect("the shutdown ends: the busy run is interrupted");
    assert_eq!((report.running, report.interrupted), (1, 1));
    assert_eq!(report.left.total, 1, "the interrupted job is put back");
}

/// A job retried at once, for a test on real time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Settled {
    n: u64,
}

impl Job for Settled {
    const NAME: &'static str = "settled";

    fn options() -> JobOptions {
        JobOptions { retry: RetryPolicy::Fixed { retries: 3, delay_ms: 0 }, ..JobOptions::default() }
    }
}

/// On a multi-threaded runtime, a thread of its own appends what workers settle, outside the store's
/// lock: the journal must still get every record before its tombstone, and a shutdown must append
/// what is left. Two enqueuers and two workers race on 20,000 jobs, with retries (each record is
/// written again before its tombstone); after the shutdown, the next process finds nothing left
/// to run, and runs nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_jobs_reach_the_journal_in_order_from_the_appender_thread() {
    const PER_ENQUEUER: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let count = runs.clone();
    let jobs = Jobs::builder()
        .dir(dir.path())
        .fsync(tubemail_jobs::Fsync::Never)
        .pool(Pool::new("two", 2).queue("default"))
        .handle(move |job: Settled, ctx| {
            count.fetch_add(1, Ordering::SeqCst);
            // One job in ten fails once and is retried at once: its record is written again.
            let fail = job.n.is_multiple_of(10) && ctx.retry_count() == 0;
            std::future::ready(if fail { Err(JobError::Retry("once".into())) } else { Ok(()) })
        })
        .start()
        .unwrap();
    let enqueuers: Vec<_> = (0..2_u64)
        .map(|e| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                for chunk in 0..PER_ENQUEUER / 100 {
                    let first = e * PER_ENQUEUER + chunk * 100;
                    let ids = jobs.enqueue_bulk((first..first + 100).map(|n| Settled { n })).await.unwrap();
                    assert!(ids.iter().all(Result::is_ok));
                }
            })
        })
        .collect();
    for enqueuer in enqueuers {
        enqueuer.await.unwrap();
    }
    let all = 2 * PER_ENQUEUER;
    let retried = all / 10;
    while u64::from(runs.load(Ordering::SeqCst)) < all + retried {
        jobs.idle().await;
        tokio::task::yield_now().await;
    }
    let report = jobs.shutdown().await;
    assert_eq!(report.left.total, 0);
    assert_eq!(jobs.stats().counters.completed, all);
    drop(jobs);
    let again = Arc::new(AtomicU32::new(0));
    let count = again.clone();
    let jobs = Jobs::builder()
        .dir(dir.path())
        .fsync(tubemail_jobs::Fsync::Never)
        .handle(move |_: Settled, _| {
            count.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<(), JobError>(()))
        })
        .start()
        .unwrap();
    jobs.idle().await;
    assert_eq!(jobs.stats().sizes.total, 0, "nothing left in the journal");
    assert_eq!(
        again.load(Ordering::SeqCst),
        0,
        "a completed job came back: a tombstone was lost or came first"
    );
    jobs.shutdown().await;
}
