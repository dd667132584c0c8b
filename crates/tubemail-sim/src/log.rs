//! The log scenario: a stream on disk under seeded crashes, with consumer groups reading it.
//!
//! One stream (1 to 4 partitions, an fsync policy, compacted or deleting by retention, all drawn
//! from the seed) lives in a temporary directory. A driver task appends records with keys from a
//! small set (tombstones too when compacted), reads partitions back, runs retention and compaction,
//! ticks the `interval` syncer, and makes members join and leave two consumer groups, one at least
//! once and one at most once, whose handlers take their time and sometimes panic in the middle of a
//! batch. Between its steps it crashes the process:
//!
//! - a **process kill** abandons every stream (no last sync, no checkpoint; what was written stays,
//!   as the page cache keeps it) and drops the broker and every task wherever it was, then a new
//!   broker opens the directory;
//! - a **power loss** does the same and also cuts every active segment back to what an `fdatasync`
//!   covered, as a machine losing its page cache would; closed segments are kept whole (the OS wrote
//!   them back long before), and so is what a clean shutdown left;
//! - a **torn write**, after a kill, leaves part of a frame, a whole-length frame whose payload was
//!   only partly written, or zeros at the end of an active segment;
//! - a **clean shutdown** (not a fault) stops the broker and starts it again.
//!
//! Each life of the process is one actix system on this thread under paused time, with a broker
//! started on one arbiter inside [`tubemail_log::sim::simulated`], so that the streams sync on this
//! thread and the simulator holds a handle to crash them. Every choice comes from the seed; record
//! timestamps (the broker's clock starts at the wall clock) never enter the history. The history is
//! judged by [`check_log`].

mod check;
mod history;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tubemail::probe::Bugs;
use tubemail::stream::StartFrom;
use tubemail::{Broker, DeliveryMode, GroupMember, GroupOptions, StreamRecord, StreamSpec, Topology};
use tubemail_log::broken::LogBugs;
use tubemail_log::sim::{ActiveSegment, SimStream};
use tubemail_log::{Cleanup, Fsync};

pub use self::check::{check_log, LogPromise, LogViolation};
pub use self::history::{LogEvent, LogFault, LogHistory, LogWhat, Seen};
use crate::run::paused_runtime;

/// The scenario's stream.
pub const LOG_STREAM: &str = "events";
/// The at-least-once consumer group.
pub const GROUP_ALO: &str = "alo";
/// The at-most-once consumer group.
pub const GROUP_AMO: &str = "amo";
/// Keys appends draw from.
pub const LOG_KEYS: u32 = 10;

/// How likely a handler panics, per record.
const CRASH_P: f64 = 0.03;
/// Simulated time the groups get to catch up at the end of a run.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Records a reader takes at once (a partition holds fewer in a run).
const READ_MAX: usize = 4096;

/// The log scenario's knobs: how long a run is, and the broken variants to turn on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogScenario {
    /// Driver steps per run (appends, reads, maintenance, members coming and going, crashes).
    pub steps: u32,
    #[doc(hidden)]
    pub bugs: Bugs,
    #[doc(hidden)]
    pub log_bugs: LogBugs,
}

impl Default for LogScenario {
    fn default() -> Self {
        Self { steps: 120, bugs: Bugs::default(), log_bugs: LogBugs::default() }
    }
}

/// What one run of the log scenario produced.
#[derive(Debug, Clone)]
pub struct LogRun {
    /// The seed.
    pub seed: u64,
    /// Every event, in order.
    pub history: LogHistory,
    /// How often each driver step ran.
    pub ops: BTreeMap<&'static str, u64>,
    /// What broke, if anything.
    pub violations: Vec<LogViolation>,
}

impl LogRun {
    /// Whether every promise held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Faults by kind.
    pub fn faults(&self) -> BTreeMap<LogFault, u64> {
        self.history.fault_counts()
    }
}

/// What a handler panics with when the scenario crashes it: the panic hook stays quiet about it.
struct SimulatedCrash;

/// Keeps the default panic hook from printing the scenario's deliberate handler panics (other panics
/// print as before).
fn quiet_simulated_crashes() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<SimulatedCrash>() {
                previous(info);
            }
        }));
    });
}

/// Turns the broken variants on for this thread, and off again when dropped.
struct ThreadBugs;

impl ThreadBugs {
    fn set(bugs: Bugs, log_bugs: LogBugs) -> Self {
        tubemail::probe::set_thread_bugs(bugs);
        tubemail_log::broken::set_thread_bugs(log_bugs);
        Self
    }
}

impl Drop for ThreadBugs {
    fn drop(&mut self) {
        tubemail::probe::set_thread_bugs(Bugs::default());
        tubemail_log::broken::set_thread_bugs(LogBugs::default());
    }
}

/// Where the runs' directories go: memory-backed `/dev/shm` when there is one (the simulator models
/// durability itself; a real disk would only make each `fdatasync` slow), else the temp directory.
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
            return shm.to_owned();
        }
        std::env::temp_dir()
    })
}

/// What the run's handlers and driver share.
struct Shared {
    history: LogHistory,
    /// The handlers' draws.
    rng: ChaCha8Rng,
    /// Simulated µs of the lives before this one.
    base_us: u64,
    /// When this life started, in its runtime's clock (`None` between lives).
    life_start: Option<tokio::time::Instant>,
    /// Members whose handler panicked.
    crashed: BTreeSet<u32>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.base_us + self.life_start.map_or(0, |s| s.elapsed().as_micros() as u64)
    }

    fn record(&mut self, what: LogWhat) {
        let at = self.now_us();
        self.history.push(at, what);
    }
}

type SharedRef = Arc<Mutex<Shared>>;

fn record(shared: &SharedRef, what: LogWhat) {
    shared.lock().expect("log scenario state").record(what);
}

/// A member the driver holds.
struct Member {
    group: &'static str,
    number: u32,
    handle: GroupMember,
}

/// How a life of the process ended.
enum LifeEnd {
    /// Killed (a power loss too when `power_loss`); each stream's active segments as the crash left them.
    Crash { power_loss: bool, segments: Vec<(String, Vec<ActiveSegment>)> },
    /// Shut down cleanly, to be started again.
    Restart { segments: Vec<(String, Vec<ActiveSegment>)> },
    /// The run is over (or the log did not open).
    Done,
}

/// The run's state across lives.
struct Ctx {
    dir: PathBuf,
    topology: Topology,
    compacted: bool,
    interval: bool,
    shared: SharedRef,
    rng: ChaCha8Rng,
    steps_left: u32,
    seq: u64,
    next_member: u32,
    /// Per segment file, bytes known to be on disk from earlier lives (synced, or left by a clean
    /// shutdown).
    durable: BTreeMap<PathBuf, u64>,
    ops: BTreeMap<&'static str, u64>,
    committed: BTreeMap<(&'static str, u32), u64>,
}

/// Runs the log scenario once with `seed`: a fresh directory, one actix system per life of the
/// process, all on this thread.
pub fn run_log(scenario: &LogScenario, seed: u64) -> LogRun {
    quiet_simulated_crashes();
    let _bugs = ThreadBugs::set(scenario.bugs, scenario.log_bugs);
    let dir = tempfile::Builder::new()
        .prefix("tubemail-sim-log-")
        .tempdir_in(scratch())
        .expect("a temporary directory for the log scenario");
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6c6f_6773_6365_6e65);
    let partitions = rng.gen_range(1..=4);
    let fsync = [Fsync::Always, Fsync::Interval, Fsync::Never][rng.gen_range(0..3)];
    let compacted = rng.gen_bool(0.5);
    let spec = StreamSpec {
        partitions,
        segment_bytes: tubemail_log::config::SEGMENT_BYTES_MIN,
        fsync,
        // The simulator's ticks are the interval: the policy's syncs come at seeded steps.
        fsync_interval_ms: 3_600_000,
        cleanup: if compacted { Cleanup::Compact } else { Cleanup::Delete },
        retention_records: (!compacted).then(|| rng.gen_range(20..80)),
        ..StreamSpec::default()
    };
    let segment_bytes = spec.segment_bytes;
    let topology = Topology::new().stream(LOG_STREAM, spec).data_dir(dir.path());
    let shared = Arc::new(Mutex::new(Shared {
        history: LogHistory::default(),
        rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6861_6e64_6c65_7273),
        base_us: 0,
        life_start: None,
        crashed: BTreeSet::new(),
    }));
    record(
        &shared,
        LogWhat::Config { partitions, fsync: fsync.as_str().to_owned(), compacted, segment_bytes },
    );
    let mut ctx = Ctx {
        dir: dir.path().to_owned(),
        topology,
        compacted,
        interval: fsync == Fsync::Interval,
        shared: shared.clone(),
        rng,
        steps_left: scenario.steps,
        seq: 0,
        next_member: 1,
        durable: BTreeMap::new(),
        ops: BTreeMap::new(),
        committed: BTreeMap::new(),
    };
    for life in 0.. {
        let end = actix::System::with_tokio_rt(paused_runtime).block_on(run_life(&mut ctx, life));
        match end {
            LifeEnd::Done => break,
            LifeEnd::Restart { segments } => {
                for seg in segments.iter().flat_map(|(_, s)| s) {
                    if let Some(path) = &seg.path {
                        ctx.durable.insert(path.clone(), seg.len);
                    }
                }
            }
            LifeEnd::Crash { power_loss, segments } => ctx.after_crash(power_loss, &segments),
        }
    }
    let ops = std::mem::take(&mut ctx.ops);
    drop(ctx);
    let history = std::mem::take(&mut shared.lock().expect("log scenario state").history);
    drop(dir);
    let violations = check_log(&history);
    LogRun { seed, history, ops, violations }
}

impl Ctx {
    fn op(&mut self, name: &'static str) {
        *self.ops.entry(name).or_insert(0) += 1;
    }

    fn record(&self, what: LogWhat) {
        record(&self.shared, what);
    }

    /// After a crash's broker is gone: a power loss cuts what no sync covered, a kill may leave a
    /// torn write.
    fn after_crash(&mut self, power_loss: bool, segments: &[(String, Vec<ActiveSegment>)]) {
        let mut cuts = Vec::new();
        for (stream, active) in segments {
            for seg in active {
                let Some(path) = &seg.path else { continue };
                let durable = self.durable.get(path).copied().unwrap_or(0).min(seg.len).max(seg.synced);
                if power_loss && seg.len > durable {
                    let file =
                        std::fs::OpenOptions::new().write(true).open(path).expect("the active segment");
                    file.set_len(durable).expect("a power loss cuts the active segment");
                    cuts.push(format!("{stream}/{} -{}B", seg.partition, seg.len - durable));
                }
                self.durable.insert(path.clone(), durable);
            }
        }
        let (kind, detail) = if power_loss {
            let lost = if cuts.is_empty() { "nothing unsynced".to_owned() } else { cuts.join(" ") };
            (LogFault::PowerLoss, format!("lost {lost}"))
        } else {
            (LogFault::ProcessKill, String::new())
        };
        self.record(LogWhat::Fault { kind, detail });
        if !power_loss && self.rng.gen_bool(0.5) {
            self.torn_write(segments);
        }
    }

    /// Leaves a torn write at the end of one of the stream's active segments.
    fn torn_write(&mut self, segments: &[(String, Vec<ActiveSegment>)]) {
        let Some((_, active)) = segments.iter().find(|(s, _)| s == LOG_STREAM) else { return };
        let seg = &active[self.rng.gen_range(0..active.len())];
        let Some(path) = &seg.path else { return };
        let key = format!("k{}", self.rng.gen_range(0..LOG_KEYS));
        let value = format!("torn.{}", "y".repeat(self.rng.gen_range(8..60)));
        let mut frame = Vec::new();
        tubemail_log::record::encode(&mut frame, seg.end, 0, Some(key.as_bytes()), Some(value.as_bytes()));
        let (shape, bytes) = match self.rng.gen_range(0..3) {
            0 => {
                frame.truncate(self.rng.gen_range(1..frame.len()));
                ("a partial frame", frame)
            }
            1 => {
                // The length and header landed; the end of the payload did not.
                let unwritten = self.rng.gen_range(1..value.len());
                let len = frame.len();
                frame[len - unwritten..].fill(0);
                ("a whole-length frame with its payload's end unwritten", frame)
            }
            _ => ("zeros", vec![0; self.rng.gen_range(1..64)]),
        };
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(path).expect("the active segment");
        let at = file.metadata().expect("the active segment's length").len();
        file.write_all_at(&bytes, at).expect("a torn write");
        let detail = format!("{LOG_STREAM}/{}: {shape}, {} bytes", seg.partition, bytes.len());
        self.record(LogWhat::Fault { kind: LogFault::TornWrite, detail });
    }
}

/// One life of the process: a broker on the directory, driver steps until a crash, a clean restart
/// or the end of the run.
async fn run_life(ctx: &mut Ctx, life: u32) -> LifeEnd {
    ctx.shared.lock().expect("log scenario state").life_start = Some(tokio::time::Instant::now());
    let end = life_inner(ctx, life).await;
    let mut shared = ctx.shared.lock().expect("log scenario state");
    shared.base_us = shared.now_us();
    shared.life_start = None;
    end
}

async fn life_inner(ctx: &mut Ctx, life: u32) -> LifeEnd {
    let builder = Broker::builder(ctx.topology.clone()).data_dir(&ctx.dir).arbiters(1);
    let (broker, streams) = tubemail_log::sim::simulated(|| builder.start());
    let broker = match broker {
        Ok(broker) => broker,
        Err(e) => {
            ctx.record(LogWhat::OpenFailed { error: e.to_string() });
            return LifeEnd::Done;
        }
    };
    let stats = broker.stats().await;
    let partitions = stats
        .streams
        .get(LOG_STREAM)
        .map_or_else(Vec::new, |s| s.partitions.values().map(|p| (p.start, p.end)).collect());
    ctx.record(LogWhat::Opened { life, partitions });
    observe_commits(ctx, &broker).await;
    let mut members = Vec::new();
    for group in [GROUP_ALO, GROUP_AMO] {
        for _ in 0..ctx.rng.gen_range(1..=2) {
            join(ctx, &broker, &mut members, group).await;
        }
    }
    loop {
        if ctx.steps_left == 0 {
            finish(ctx, &broker, &mut members).await;
            broker.shutdown(Duration::from_secs(1)).await;
            return LifeEnd::Done;
        }
        ctx.steps_left -= 1;
        match ctx.rng.gen_range(0..100) {
            0..=44 => {
                ctx.op("append");
                for _ in 0..ctx.rng.gen_range(1..=4) {
                    append(ctx, &broker).await;
                }
            }
            45..=56 => {
                ctx.op("pause");
                tokio::time::sleep(Duration::from_millis(ctx.rng.gen_range(1..=10))).await;
            }
            57..=63 => {
                let group = [GROUP_ALO, GROUP_AMO][ctx.rng.gen_range(0..2)];
                if live(ctx, &members, group) < 3 {
                    ctx.op("join");
                    join(ctx, &broker, &mut members, group).await;
                }
            }
            64..=69 => {
                let candidates: Vec<usize> =
                    (0..members.len()).filter(|&i| !crashed(ctx, &members[i])).collect();
                if !candidates.is_empty() {
                    ctx.op("leave");
                    let m = members.swap_remove(candidates[ctx.rng.gen_range(0..candidates.len())]);
                    ctx.record(LogWhat::Leave { group: m.group.to_owned(), member: m.number });
                    m.handle.leave().await;
                }
            }
            70..=75 => {
                ctx.op("read");
                let p = ctx.rng.gen_range(0..partition_count(&broker).await);
                read(ctx, &broker, p).await;
            }
            76..=80 => {
                ctx.op("maintenance");
                match broker.maintain_streams() {
                    Ok(m) => ctx.record(LogWhat::Maintenance {
                        deleted: m.segments_deleted,
                        compacted: m.segments_compacted,
                        removed: m.records_removed,
                    }),
                    Err(e) => ctx.record(LogWhat::Failed { what: format!("maintenance: {e}") }),
                }
                for p in 0..partition_count(&broker).await {
                    read(ctx, &broker, p).await;
                }
            }
            81..=86 => {
                if ctx.interval {
                    ctx.op("tick");
                    for s in &streams {
                        s.sync();
                    }
                    ctx.record(LogWhat::Tick);
                }
            }
            87..=91 => return crash(ctx, &streams, false),
            92..=94 => return crash(ctx, &streams, true),
            95..=97 => {
                ctx.op("clean-restart");
                broker.shutdown(Duration::from_secs(1)).await;
                ctx.record(LogWhat::CleanShutdown);
                return LifeEnd::Restart { segments: snapshot(&streams) };
            }
            _ => {
                ctx.op("pause");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        prune(ctx, &mut members);
        for group in [GROUP_ALO, GROUP_AMO] {
            if live(ctx, &members, group) == 0 && ctx.rng.gen_bool(0.5) {
                join(ctx, &broker, &mut members, group).await;
            }
        }
        observe_commits(ctx, &broker).await;
    }
}

fn snapshot(streams: &[SimStream]) -> Vec<(String, Vec<ActiveSegment>)> {
    streams.iter().map(|s| (s.name().to_owned(), s.active_segments())).collect()
}

/// Crashes every stream where it stands; the broker and its tasks go with this life's system.
fn crash(ctx: &mut Ctx, streams: &[SimStream], power_loss: bool) -> LifeEnd {
    ctx.op(if power_loss { "power-loss" } else { "kill" });
    for s in streams {
        s.abandon();
    }
    LifeEnd::Crash { power_loss, segments: snapshot(streams) }
}

async fn partition_count(broker: &Broker) -> u32 {
    broker.stats().await.streams.get(LOG_STREAM).map_or(1, |s| s.partitions.len() as u32).max(1)
}

fn crashed(ctx: &Ctx, m: &Member) -> bool {
    ctx.shared.lock().expect("log scenario state").crashed.contains(&m.number)
}

fn live(ctx: &Ctx, members: &[Member], group: &str) -> usize {
    members.iter().filter(|m| m.group == group && !crashed(ctx, m)).count()
}

/// Lets go of crashed members (they already left their group).
fn prune(ctx: &Ctx, members: &mut Vec<Member>) {
    members.retain(|m| !crashed(ctx, m));
}

async fn append(ctx: &mut Ctx, broker: &Broker) {
    ctx.seq += 1;
    let seq = ctx.seq;
    let key = format!("k{}", ctx.rng.gen_range(0..LOG_KEYS));
    let tombstone = ctx.compacted && ctx.rng.gen_bool(0.1);
    ctx.record(LogWhat::Append { seq, key: key.clone(), tombstone });
    let result = if tombstone {
        broker.append_tombstone(LOG_STREAM, &key).await
    } else {
        let value = format!("v{seq}.{}", "x".repeat(ctx.rng.gen_range(10..120)));
        broker.append_bytes(LOG_STREAM, &key, value.into_bytes()).await
    };
    match result {
        Ok(a) => ctx.record(LogWhat::Acked { seq, partition: a.partition, offset: a.offset }),
        Err(e) => ctx.record(LogWhat::AppendFailed { seq, error: e.to_string() }),
    }
}

/// What a record is, as the history names it.
fn seen(r: &StreamRecord) -> Seen {
    let seq = r.value.as_deref().and_then(|v| {
        let text = std::str::from_utf8(v).ok()?;
        text.strip_prefix('v')?.split('.').next()?.parse().ok()
    });
    Seen { offset: r.offset, key: r.key_str().map(str::to_owned), seq, tombstone: r.is_tombstone() }
}

/// Reads a partition whole, from its start, and records the read.
async fn read(ctx: &mut Ctx, broker: &Broker, partition: u32) {
    if let Some((from, records)) = read_all(ctx, broker, partition) {
        ctx.record(LogWhat::Read { partition, from, records });
    }
}

/// A partition's start and records; a failure is recorded.
fn read_all(ctx: &mut Ctx, broker: &Broker, partition: u32) -> Option<(u64, Vec<Seen>)> {
    let mut reader = match broker.reader(LOG_STREAM, partition, StartFrom::Earliest) {
        Ok(reader) => reader,
        Err(e) => {
            ctx.record(LogWhat::ReadFailed { partition, error: e.to_string() });
            return None;
        }
    };
    let from = reader.position();
    let mut records = Vec::new();
    loop {
        match reader.poll(READ_MAX) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => records.extend(batch.iter().map(seen)),
            Err(e) => {
                ctx.record(LogWhat::ReadFailed { partition, error: e.to_string() });
                return None;
            }
        }
    }
    Some((from, records))
}

async fn join(ctx: &mut Ctx, broker: &Broker, members: &mut Vec<Member>, group: &'static str) {
    let number = ctx.next_member;
    ctx.next_member += 1;
    let mode = if group == GROUP_ALO { DeliveryMode::AtLeastOnce } else { DeliveryMode::AtMostOnce };
    let options = GroupOptions {
        start: StartFrom::Earliest,
        mode,
        commit_every: ctx.rng.gen_range(1..=5),
        batch: ctx.rng.gen_range(1..=8),
    };
    ctx.record(LogWhat::Join { group: group.to_owned(), member: number });
    let shared = ctx.shared.clone();
    let handler = move |r: StreamRecord| {
        let shared = shared.clone();
        async move {
            let partition = r.partition;
            let (pause, crash) = {
                let mut s = shared.lock().expect("log scenario state");
                s.record(LogWhat::HandlerStart {
                    group: group.to_owned(),
                    member: number,
                    partition,
                    record: seen(&r),
                });
                let pause = s.rng.gen_bool(0.3).then(|| s.rng.gen_range(1..=4));
                (pause, s.rng.gen_bool(CRASH_P))
            };
            if let Some(ms) = pause {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut s = shared.lock().expect("log scenario state");
            if crash {
                s.record(LogWhat::Crash {
                    group: group.to_owned(),
                    member: number,
                    partition,
                    offset: r.offset,
                });
                s.record(LogWhat::Fault {
                    kind: LogFault::ConsumerCrash,
                    detail: format!("{group} member {number}, partition {partition}, offset {}", r.offset),
                });
                s.crashed.insert(number);
                drop(s);
                std::panic::panic_any(SimulatedCrash);
            }
            s.record(LogWhat::HandlerEnd {
                group: group.to_owned(),
                member: number,
                partition,
                offset: r.offset,
            });
        }
    };
    match broker.join_group(LOG_STREAM, group, options, handler).await {
        Ok(handle) => members.push(Member { group, number, handle }),
        Err(e) => ctx.record(LogWhat::Failed { what: format!("joining {group}: {e}") }),
    }
}

/// Records every committed offset that changed since it was last seen.
async fn observe_commits(ctx: &mut Ctx, broker: &Broker) {
    let stats = broker.stats().await;
    let Some(stream) = stats.streams.get(LOG_STREAM) else { return };
    for group in [GROUP_ALO, GROUP_AMO] {
        let Some(g) = stream.groups.get(group) else { continue };
        for (&partition, p) in &g.partitions {
            let Some(offset) = p.committed else { continue };
            if ctx.committed.insert((group, partition), offset) != Some(offset) {
                ctx.record(LogWhat::Committed { group: group.to_owned(), partition, offset });
            }
        }
    }
}

/// The end of a run: every group gets a member and catches up, then every partition is read whole.
async fn finish(ctx: &mut Ctx, broker: &Broker, members: &mut Vec<Member>) {
    let step = Duration::from_millis(5);
    let mut waited = Duration::ZERO;
    let caught_up = loop {
        prune(ctx, members);
        for group in [GROUP_ALO, GROUP_AMO] {
            if live(ctx, members, group) == 0 {
                join(ctx, broker, members, group).await;
            }
        }
        observe_commits(ctx, broker).await;
        let stats = broker.stats().await;
        let done = stats.streams.get(LOG_STREAM).is_some_and(|s| {
            [GROUP_ALO, GROUP_AMO].iter().all(|g| {
                s.partitions.iter().all(|(p, ps)| {
                    let committed =
                        s.groups.get(*g).and_then(|g| g.partitions.get(p)).and_then(|p| p.committed);
                    ps.end == ps.start || committed.is_some_and(|c| c >= ps.end)
                })
            })
        });
        if done {
            break true;
        }
        if waited >= DRAIN_MAX {
            break false;
        }
        tokio::time::sleep(step).await;
        waited += step;
    };
    ctx.record(LogWhat::Drained { caught_up, waited_ms: waited.as_millis() as u64 });
    let stats = broker.stats().await;
    let Some(stream) = stats.streams.get(LOG_STREAM) else { return };
    for (&partition, p) in &stream.partitions {
        if let Some((start, records)) = read_all(ctx, broker, partition) {
            ctx.record(LogWhat::Final { partition, start, end: p.end, records });
        }
    }
}
