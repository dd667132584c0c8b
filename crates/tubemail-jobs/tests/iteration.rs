//! Iteration jobs: checkpoints, a maximum run time, shutdown, a crash, and the callbacks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tubemail_jobs::{
    enumerators, Enumerator, IterationJob, IterationSettings, Job, JobContext, JobError, Jobs, Pool,
};

/// What the test sees: items handled (with repeats) and callbacks, in order.
#[derive(Default)]
struct Seen {
    items: Vec<u64>,
    events: Vec<&'static str>,
}

static SEEN: Mutex<Option<Arc<Mutex<Seen>>>> = Mutex::new(None);

fn seen() -> Arc<Mutex<Seen>> {
    SEEN.lock().unwrap().get_or_insert_with(Default::default).clone()
}

#[derive(Serialize, Deserialize)]
struct Backfill {
    items: u64,
    /// Each item takes this long (simulated).
    item_ms: u64,
}

impl Job for Backfill {
    const NAME: &'static str = "backfill";
}

impl IterationJob for Backfill {
    type Item = u64;
    type Cursor = u64;

    fn build_enumerator(&self, cursor: Option<u64>) -> Result<Enumerator<u64, u64>, JobError> {
        Ok(enumerators::range(0..self.items, cursor))
    }

    async fn each_iteration(&self, item: u64, _ctx: &JobContext) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(self.item_ms)).await;
        seen().lock().unwrap().items.push(item);
        Ok(())
    }

    fn on_start(&self, _: &JobContext) {
        seen().lock().unwrap().events.push("start");
    }
    fn on_resume(&self, _: &JobContext) {
        seen().lock().unwrap().events.push("resume");
    }
    fn on_shutdown(&self, _: &JobContext) {
        seen().lock().unwrap().events.push("shutdown");
    }
    fn on_complete(&self, _: &JobContext) {
        seen().lock().unwrap().events.push("complete");
    }
}

// The tests share `SEEN`: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn reset() {
    *SEEN.lock().unwrap() = Some(Arc::default());
}

fn settings(items: u64, every_s: u64, max_runtime_s: u64) -> IterationSettings {
    IterationSettings {
        checkpoint_items: items,
        checkpoint_every: Duration::from_secs(every_s),
        max_job_runtime: Duration::from_secs(max_runtime_s),
    }
}

fn start(dir: &std::path::Path, settings: IterationSettings) -> Jobs {
    Jobs::builder()
        .dir(dir)
        // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
        .fsync(tubemail_jobs::Fsync::Never)
        .pool(Pool::new("one", 1).queue("default"))
        .iteration_settings(settings)
        .iteration::<Backfill>()
        .start()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_iteration_job_handles_every_item_once_without_interruptions() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset();
    let dir = tempfile::tempdir().unwrap();
    let jobs = start(dir.path(), settings(10, 3_600, 3_600));
    jobs.enqueue(Backfill { items: 95, item_ms: 1 }).await.unwrap();
    jobs.idle().await;
    {
        let seen = seen();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.items, (0..95).collect::<Vec<_>>());
        assert_eq!(seen.events, ["start", "complete"]);
    }
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_crash_it_resumes_from_its_last_checkpoint() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset();
    let dir = tempfile::tempdir().unwrap();
    let jobs = start(dir.path(), settings(10, 3_600, 3_600));
    let id = jobs.enqueue(Backfill { items: 100, item_ms: 10 }).await.unwrap();
    // 37 items handled (and a fraction of the 38th) when the process dies.
    tokio::time::sleep(Duration::from_millis(375)).await;
    let progress = jobs.job(id).unwrap().progress;
    assert_eq!(progress.items, 30, "checkpointed every 10 items");
    jobs.crash().await;
    drop(jobs);
    let handled_before = seen().lock().unwrap().items.len() as u64;
    assert_eq!(handled_before, 37);
    let jobs = start(dir.path(), settings(10, 3_600, 3_600));
    jobs.idle().await;
    {
        let seen = seen();
        let seen = seen.lock().unwrap();
        // Every item at least once; re-handled only those since the checkpoint (30..37).
        let mut distinct = seen.items.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (0..100).collect::<Vec<_>>());
        let reprocessed = seen.items.len() as u64 - 100;
        assert_eq!(reprocessed, 7, "items 30..37 again: {:?}", &seen.items[35..45]);
        assert!(reprocessed < 10, "within the checkpoint interval");
        assert_eq!(seen.events, ["start", "resume", "complete"]);
        let counters = jobs.stats().counters;
        assert_eq!(counters.interrupted, 1);
    }
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn on_shutdown_it_stops_after_its_item_checkpoints_and_the_next_process_resumes_without_repeats() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset();
    let dir = tempfile::tempdir().unwrap();
    let jobs = start(dir.path(), settings(1_000, 3_600, 3_600));
    let id = jobs.enqueue(Backfill { items: 50, item_ms: 10 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(205)).await;
    let report = jobs.shutdown().await;
    assert_eq!(report.interrupted, 0, "it stopped by itself, within the timeout");
    assert_eq!(report.left.total, 1);
    drop(jobs);
    let jobs = start(dir.path(), settings(1_000, 3_600, 3_600));
    let record = jobs.job(id).unwrap();
    assert_eq!(record.progress.items, 21, "stopped after its 21st item, checkpointed");
    assert_eq!(record.progress.interruptions, 1);
    jobs.idle().await;
    {
        let seen = seen();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.items, (0..50).collect::<Vec<_>>(), "no item twice");
        assert_eq!(seen.events, ["start", "shutdown", "resume", "complete"]);
    }
    jobs.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn after_its_maximum_run_time_it_yields_to_other_jobs_and_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    reset();
    #[derive(Serialize, Deserialize)]
    struct Short;
    impl Job for Short {
        const NAME: &'static str = "short";
    }
    let dir = tempfile::tempdir().unwrap();
    let jobs = Jobs::builder()
        .dir(dir.path())
        // Paused time: a real sync thread would let tokio's clock jump ahead while an enqueue waits.
        .fsync(tubemail_jobs::Fsync::Never)
        .pool(Pool::new("one", 1).queue("default"))
        .iteration_settings(settings(1_000, 3_600, 1))
        .iteration::<Backfill>()
        .handle(|_: Short, _| async {
            seen().lock().unwrap().events.push("short");
            Ok(())
        })
        .start()
        .unwrap();
    jobs.enqueue(Backfill { items: 250, item_ms: 10 }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    jobs.enqueue(Short).await.unwrap();
    jobs.idle().await;
    {
        let seen = seen();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.items, (0..250).collect::<Vec<_>>());
        // 1 s of 10 ms items: it yields after its 100th, the short job runs, then it resumes.
        assert_eq!(seen.events, ["start", "shutdown", "short", "resume", "shutdown", "resume", "complete"]);
    }
    jobs.shutdown().await;
}
