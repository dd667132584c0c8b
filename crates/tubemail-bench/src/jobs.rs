//! `tubemail bench jobs`: no-op jobs enqueued and performed, in memory and durable (`fsync =
//! "always"`), against a baseline of the same work (arguments encoded, sent, decoded, a no-op
//! handler called) on a plain thread pool fed by a crossbeam channel; and the start delay of
//! scheduled jobs under that load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tubemail::jobs::{EnqueueOptions, Fsync, Job, JobError, Jobs, Pool};

/// The longest start delay measured, in µs (a minute): longer ones count as a minute.
pub const DELAY_MAX_US: u64 = 60_000_000;

/// Jobs per bulk enqueue.
pub const BATCH: usize = 1_000;
/// Jobs enqueued and not yet performed, at most, on both sides: the baseline's channel holds this
/// many, and tubemail's producer waits for room as the baseline's blocks on a full channel, so that
/// neither is measured with a backlog the other does not hold.
pub const BACKLOG: usize = BATCH * 4;
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

/// tubemail's jobs: `n` no-op jobs enqueued in batches of [`BATCH`], at most [`BACKLOG`] ahead of
/// the workers, and performed by a pool of [`workers`]; with `scheduled` > 0, that many jobs scheduled 50 to 550 ms ahead, whose start
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
        // Told after each batch's worth of jobs performed: the producer waits on it for room.
        let room = Arc::new(tokio::sync::Notify::new());
        // Bounded up front: `saturating_record` clamps to the histogram's range and never grows
        // it, so a histogram made with `new` read every delay past 2 ms as about 2 ms.
        let delays = Arc::new(std::sync::Mutex::new(
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, DELAY_MAX_US, 3).map_err(|e| e.to_string())?,
        ));
        let (count, seen, freed) = (done.clone(), delays.clone(), room.clone());
        let mut builder = Jobs::builder()
            .pool(Pool::new("bench", workers()).queue("default"))
            .handle(move |_: Noop, _| {
                if (count.fetch_add(1, Ordering::AcqRel) + 1) % BATCH as u64 == 0 {
                    freed.notify_one();
                }
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
            // Room for the batch: more than BACKLOG - BATCH ahead means at least a batch's worth
            // still to perform, whose last one notifies.
            loop {
                let freed = room.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if next - done.load(Ordering::Acquire) + batch <= BACKLOG as u64 {
                    break;
                }
                freed.await;
            }
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
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(BACKLOG);
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

#[cfg(feature = "peers")]
pub use peers::{apalis, sidekiq, APALIS_JOBS, REDIS_DB, SIDEKIQ_INSTALL, SIDEKIQ_JOBS};

#[cfg(feature = "peers")]
mod peers {
    //! The peers: Sidekiq (a `sidekiq` process, Ruby, on this machine's Redis) and apalis with its
    //! Redis storage, each in Redis database [`REDIS_DB`] under keys of its run's own name, deleted
    //! after the run.

    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::{workers, JobsRun, Noop, BATCH};
    use crate::log::REDIS_ADDR;
    use crate::peers::{self, PeerError, CLEANUP_TIMEOUT, CONNECT_TIMEOUT, RUN_TIMEOUT};

    /// The Redis database the peers use (never flushed: each run deletes its own keys).
    pub const REDIS_DB: u8 = 9;
    /// How to install Sidekiq 6.4 on Debian.
    pub const SIDEKIQ_INSTALL: &str = "apt-get install -y ruby-sidekiq";
    /// Jobs of a Sidekiq run (at most `--messages`): it performs some thousands a second.
    pub const SIDEKIQ_JOBS: u64 = 20_000;
    /// Jobs of an apalis run (at most `--messages`). Fewer than 8,000: apalis-redis 1.0 enqueues every
    /// job into its scheduled set, due at once, and its fetch script promotes all the due jobs with one
    /// Lua `unpack`, which fails past about 8,000 values ("too many results to unpack"), stopping the
    /// worker; with 20,000 jobs pushed in batches the backlog reached that.
    pub const APALIS_JOBS: u64 = 5_000;
    /// How long the `sidekiq` process may take to boot and perform a first job.
    const SIDEKIQ_BOOT: Duration = Duration::from_secs(30);

    fn redis_url() -> String {
        format!("redis://{REDIS_ADDR}/{REDIS_DB}")
    }

    fn failed(system: &'static str) -> impl Fn(String) -> PeerError {
        move |reason| PeerError::Failed { system, reason }
    }

    /// Deletes the keys of database [`REDIS_DB`] that start with `prefix` (SCAN, then DEL).
    fn delete_keys(prefix: &str) -> Result<(), String> {
        let client = redis::Client::open(redis_url()).map_err(peers::err("client"))?;
        let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(peers::err("connect"))?;
        con.set_read_timeout(Some(CLEANUP_TIMEOUT)).map_err(peers::err("timeout"))?;
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut con)
            .map_err(peers::err("SCAN"))?
            .filter_map(Result::ok)
            .collect();
        for chunk in keys.chunks(500) {
            redis::cmd("DEL").arg(chunk).query::<i64>(&mut con).map_err(peers::err("DEL"))?;
        }
        Ok(())
    }

    /// apalis-redis's sorted set of the queues it has seen (members `QUEUE:workers`).
    const APALIS_QUEUES: &str = "core:apalis:queues:list";

    fn redis_query(command: &redis::Cmd) -> Result<(), String> {
        let client = redis::Client::open(redis_url()).map_err(peers::err("client"))?;
        let mut con = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(peers::err("connect"))?;
        con.set_read_timeout(Some(CLEANUP_TIMEOUT)).map_err(peers::err("timeout"))?;
        command.query::<redis::Value>(&mut con).map(drop).map_err(peers::err("cleanup"))
    }

    /// The job class the `sidekiq` process loads (`-r`): a no-op that counts in memory and, at the
    /// last job of the run, sets the run's done key; a job of argument -1 sets the ready key.
    const SIDEKIQ_JOB_RB: &str = r##"require "sidekiq"

Sidekiq.logger.level = Logger::WARN

class TubemailBenchNoop
  include Sidekiq::Worker
  sidekiq_options retry: false, queue: ENV.fetch("TUBEMAIL_BENCH_QUEUE")

  TOTAL = Integer(ENV.fetch("TUBEMAIL_BENCH_JOBS"))
  KEY = ENV.fetch("TUBEMAIL_BENCH_KEY")
  COUNT = [0]
  LOCK = Mutex.new

  def perform(n)
    if n.negative?
      Sidekiq.redis { |r| r.set("#{KEY}:ready", "1") }
      return
    end
    done = LOCK.synchronize { COUNT[0] += 1 }
    Sidekiq.redis { |r| r.set("#{KEY}:done", done.to_s) } if done == TOTAL
  end
end
"##;

    /// The client: waits for a first job to run, says `ready`, reads `go`, pushes the run's jobs with
    /// `Sidekiq::Client.push_bulk` in batches, waits for the done key and says `done`.
    const SIDEKIQ_CLIENT_RB: &str = r##"require_relative "job"
$stdout.sync = true
key = TubemailBenchNoop::KEY
Sidekiq::Client.push("class" => TubemailBenchNoop, "args" => [-1])
deadline = Time.now + Integer(ENV.fetch("TUBEMAIL_BENCH_BOOT_SECS"))
until Sidekiq.redis { |r| r.get("#{key}:ready") }
  abort "sidekiq performed no job within #{ENV["TUBEMAIL_BENCH_BOOT_SECS"]} s" if Time.now > deadline
  sleep 0.01
end
puts "ready"
exit 1 unless $stdin.gets
batch = Integer(ENV.fetch("TUBEMAIL_BENCH_BATCH"))
(0...TubemailBenchNoop::TOTAL).each_slice(batch) do |slice|
  Sidekiq::Client.push_bulk("class" => TubemailBenchNoop, "args" => slice.map { |i| [i] })
end
sleep 0.001 until Sidekiq.redis { |r| r.get("#{key}:done") }
puts "done"
"##;

    fn on_path(program: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    }

    /// Kills and reaps the child processes of a run when dropped.
    struct Children(Vec<Child>);

    impl Drop for Children {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Sidekiq 6.4: `n` no-op jobs pushed with `Sidekiq::Client.push_bulk` in batches of [`BATCH`]
    /// by a Ruby client and performed by a `sidekiq -c workers()` process (its per-job log lines
    /// off), both on Redis database [`REDIS_DB`]; timed from the first push to the last job
    /// performed, after the process has performed a first job.
    ///
    /// # Errors
    /// [`PeerError::Missing`] when `sidekiq` is not installed, [`PeerError::Unreachable`] when Redis
    /// does not answer, else [`PeerError::Failed`].
    pub fn sidekiq(n: u64) -> Result<JobsRun, PeerError> {
        let system = "sidekiq";
        if !on_path("sidekiq") || !on_path("ruby") {
            return Err(PeerError::Missing { system, how: SIDEKIQ_INSTALL });
        }
        peers::reach(system, REDIS_ADDR)?;
        let id = peers::run_id();
        let queue = format!("tubemail_bench_{id}");
        let key = format!("tubemail:bench:jobs:{id}");
        let run = sidekiq_run(n, &queue, &key).map_err(failed(system));
        let cleanup = delete_keys(&format!("queue:{queue}")).and_then(|()| delete_keys(&key));
        let cleanup = cleanup.and_then(|()| redis_query(redis::cmd("SREM").arg("queues").arg(&queue)));
        let run = run?;
        cleanup.map_err(failed(system))?;
        Ok(run)
    }

    fn sidekiq_run(n: u64, queue: &str, key: &str) -> Result<JobsRun, String> {
        let dir = tempfile::tempdir().map_err(peers::err("temp dir"))?;
        let job = dir.path().join("job.rb");
        std::fs::write(&job, SIDEKIQ_JOB_RB).map_err(peers::err("job.rb"))?;
        let client = dir.path().join("client.rb");
        std::fs::write(&client, SIDEKIQ_CLIENT_RB).map_err(peers::err("client.rb"))?;
        let log = dir.path().join("sidekiq.log");
        let env = [
            ("REDIS_URL", redis_url()),
            ("TUBEMAIL_BENCH_QUEUE", queue.to_string()),
            ("TUBEMAIL_BENCH_JOBS", n.to_string()),
            ("TUBEMAIL_BENCH_KEY", key.to_string()),
            ("TUBEMAIL_BENCH_BATCH", BATCH.to_string()),
            ("TUBEMAIL_BENCH_BOOT_SECS", SIDEKIQ_BOOT.as_secs().to_string()),
        ];
        let mut children = Children(Vec::new());
        let server = Command::new("sidekiq")
            .args(["-c", &workers().to_string(), "-q", queue, "-r"])
            .arg(&job)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(peers::err("sidekiq.log"))?)
            .spawn()
            .map_err(peers::err("sidekiq"))?;
        children.0.push(server);
        let mut ruby = Command::new("ruby")
            .arg(&client)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(peers::err("ruby client"))?;
        let (stdin, stdout) = (ruby.stdin.take(), ruby.stdout.take());
        let stderr = ruby.stderr.take();
        children.0.push(ruby);
        let (mut stdin, stdout) = stdin.zip(stdout).ok_or("ruby client: no pipes")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let why = move |what: &str, log: &std::path::Path| {
            let mut said = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut said);
            }
            let server = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = said.lines().chain(server.lines()).rev().take(3).collect();
            format!("{what}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
        };
        match lines.recv_timeout(SIDEKIQ_BOOT + Duration::from_secs(5)) {
            Ok(Ok(line)) if line == "ready" => {}
            _ => {
                children.0.iter_mut().for_each(|c| drop(c.kill()));
                return Err(why("no first job performed", &log));
            }
        }
        let start = Instant::now();
        stdin.write_all(b"go\n").and_then(|()| stdin.flush()).map_err(peers::err("ruby client"))?;
        match lines.recv_timeout(RUN_TIMEOUT) {
            Ok(Ok(line)) if line == "done" => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("not done within {} s", RUN_TIMEOUT.as_secs()))
            }
            _ => {
                children.0.iter_mut().for_each(|c| drop(c.kill()));
                return Err(why("the run stopped", &log));
            }
        }
        let elapsed = start.elapsed();
        Ok(JobsRun {
            system: "sidekiq",
            storage: "durable",
            jobs: n,
            elapsed,
            p99_start_delay_us: None,
            scheduled: 0,
        })
    }

    /// Jobs performed by the apalis handler of the current run.
    static APALIS_DONE: AtomicU64 = AtomicU64::new(0);

    async fn apalis_noop(job: Noop) -> Result<(), apalis::prelude::BoxDynError> {
        std::hint::black_box(job.n);
        APALIS_DONE.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// apalis 1 with its Redis storage (default configuration, a queue of the run's own name on
    /// database [`REDIS_DB`]): `n` no-op jobs pushed with `push_bulk` in batches of [`BATCH`] and
    /// performed by one worker with a concurrency of [`workers`], on a tokio runtime of as many
    /// threads; timed from the first push to the last job performed.
    ///
    /// # Errors
    /// [`PeerError::Unreachable`] when Redis does not answer, else [`PeerError::Failed`].
    pub fn apalis(n: u64) -> Result<JobsRun, PeerError> {
        let system = "apalis";
        peers::reach(system, REDIS_ADDR)?;
        let queue = format!("tubemail-bench-apalis-{}", peers::run_id());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers())
            .enable_all()
            .build()
            .map_err(|e| PeerError::Failed { system, reason: format!("tokio runtime: {e}") })?;
        let run = runtime.block_on(async {
            match tokio::time::timeout(RUN_TIMEOUT, apalis_run(n, &queue)).await {
                Ok(run) => run.map_err(failed(system)),
                Err(_) => Err(peers::timed_out(system)),
            }
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        // The run's keys, and its queue's name in apalis's list of queues.
        let cleanup = delete_keys(&queue)
            .and_then(|()| redis_query(redis::cmd("ZREM").arg(APALIS_QUEUES).arg(format!("{queue}:workers"))))
            .map_err(failed(system));
        let run = run?;
        cleanup?;
        Ok(run)
    }

    async fn apalis_run(n: u64, queue: &str) -> Result<JobsRun, String> {
        use apalis::prelude::*;
        use apalis_redis::{Config, RedisStorage};

        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, apalis_redis::connect(redis_url())).await {
            Ok(conn) => conn.map_err(peers::err("connect"))?,
            Err(_) => return Err("connect: timed out".into()),
        };
        let mut storage = RedisStorage::<Noop>::new(conn).with_config(Config::default().queue(queue));
        APALIS_DONE.store(0, Ordering::Relaxed);
        let mut worker = Some(
            WorkerBuilder::new(format!("{queue}-worker"))
                .backend(storage.clone())
                .concurrency(workers())
                .build(apalis_noop),
        );
        // The worker starts after the first batch is pushed, within the timed span: a worker whose
        // first fetch finds nothing parks until its next heartbeat (30 s by default), which would
        // time apalis's heartbeat rather than its jobs.
        let start = Instant::now();
        let mut running = None;
        let mut next = 0;
        while next < n {
            let batch = (n - next).min(BATCH as u64);
            storage
                .push_bulk((next..next + batch).map(|n| Noop { n }).collect())
                .await
                .map_err(peers::err("push_bulk"))?;
            next += batch;
            if let Some(worker) = worker.take() {
                running = Some(tokio::spawn(worker.run()));
            }
        }
        let Some(running) = running else { return Err("no jobs".into()) };
        while APALIS_DONE.load(Ordering::Relaxed) < n {
            if running.is_finished() {
                return Err(match running.await {
                    Ok(Ok(())) => "the worker stopped".into(),
                    Ok(Err(e)) => format!("the worker stopped: {e}"),
                    Err(e) => format!("the worker panicked: {e}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = start.elapsed();
        running.abort();
        Ok(JobsRun {
            system: "apalis",
            storage: "durable",
            jobs: n,
            elapsed,
            p99_start_delay_us: None,
            scheduled: 0,
        })
    }
}
