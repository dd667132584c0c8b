//! The jobs' state machine: no async, no clock, no threads. Time is passed in (milliseconds since
//! the Unix epoch), randomness comes from the caller's seeded generator, and every change that must
//! survive a crash is put in an outbox of journal writes (`take_writes`) that the runtime appends to
//! the storage engine in the order they were made. The exception: records enqueued with
//! [`JobStore::enqueue_reserved`] were appended by the runtime before they entered the store.
//!
//! A job's states are Oban's vocabulary: `scheduled` (waiting for its time), `available` (ready in
//! its queue), `executing`, `retryable` (failed, waiting for its retry), `dead`. Completed, discarded
//! and cancelled jobs leave the store (a tombstone in the journal) and are counted.
//!
//! What is journaled: a job's record whenever it is created or its durable fields change (retry
//! count, due time, cursor, progress, death, interruption), a tombstone when it leaves, and each
//! periodic job's last enqueued tick. Moving a due job to its queue and claiming it are not
//! journaled: after a crash, a scheduled job whose time has come is available, and an executing one
//! is available again (jobs run at least once).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::policy::RetryPolicy;

mod table;
use table::JobTable;

/// A job's id: unique in its store, never reused (ids continue past the highest after a restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for its time.
    Scheduled,
    /// Ready in its queue.
    Available,
    /// Claimed by a worker.
    Executing,
    /// Failed, waiting for its retry.
    Retryable,
    /// In the dead set.
    Dead,
}

impl JobState {
    /// The state's name, as `jobs inspect` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Executing => "executing",
            JobState::Retryable => "retryable",
            JobState::Dead => "dead",
        }
    }
}

/// An iteration job's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The last checkpointed cursor (MessagePack), `None` before the first checkpoint.
    pub cursor: Option<Bytes>,
    /// Items handled up to that cursor.
    pub items: u64,
    /// Times the job stopped before its end (shutdown, maximum run time, crash), and resumed.
    pub interruptions: u32,
    /// Time spent running, up to the last checkpoint, in milliseconds.
    pub runtime_ms: u64,
    /// Whether `on_start` has run.
    pub started: bool,
}

/// A unique job's lock: no other job with the key until `until` (or until this job leaves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniqueLock {
    /// The key.
    pub key: String,
    /// When the lock lapses, in ms since the epoch.
    pub until: i64,
}

/// A job as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The registered name of its type.
    pub name: Arc<str>,
    /// Its queue.
    pub queue: Arc<str>,
    /// Its arguments (MessagePack).
    pub args: Bytes,
    /// 0 (first) to 9 (last) within its queue.
    pub priority: u8,
    /// Its state.
    pub state: JobState,
    /// When it was enqueued.
    pub enqueued_at: i64,
    /// When it is due (scheduled and retryable jobs), or when it became available.
    pub run_at: i64,
    /// Retries so far.
    pub retries: u32,
    /// Its retry policy.
    pub policy: RetryPolicy,
    /// Retries stop once this long has passed since the first failure.
    pub retry_for_ms: Option<u64>,
    /// When it first failed.
    pub first_failed_at: Option<i64>,
    /// Its time limit per run.
    pub timeout_ms: Option<u64>,
    /// Whether a job that runs out of retries goes to the dead set (true) or is dropped.
    pub dead: bool,
    /// Its unique lock.
    pub unique: Option<UniqueLock>,
    /// The periodic job and tick it was enqueued for.
    pub periodic: Option<(String, i64)>,
    /// Its last error.
    pub error: Option<String>,
    /// When it died.
    pub died_at: Option<i64>,
    /// Its progress (iteration jobs).
    pub progress: Progress,
    /// Its place among jobs of its priority (smaller first): its id; once a scheduled or retried
    /// job comes due, the place of the first job enqueued since its due time less
    /// [`DUE_LEAD_MS`]; below every id when put back at the front of its queue.
    pub order: i64,
    /// The microseconds past `run_at` that it is due (0 to 999): a job enqueued for a time is
    /// promoted within a fraction of a millisecond of it, never before. Records written before it
    /// existed read as 0 (their `run_at` was rounded up to the millisecond).
    #[serde(default)]
    pub due_micros: u16,
}

impl JobRecord {
    /// When it is due, in microseconds since the epoch.
    pub fn due_us(&self) -> i64 {
        self.run_at.saturating_mul(1_000).saturating_add(i64::from(self.due_micros))
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The registered name.
    pub name: Arc<str>,
    /// The queue.
    pub queue: Arc<str>,
    /// The arguments (MessagePack).
    pub args: Bytes,
    /// 0 (first) to 9.
    pub priority: u8,
    /// When it is due, in milliseconds (`None`: now).
    pub run_at: Option<i64>,
    /// The microseconds past `run_at` that it is due (0 to 999).
    pub due_micros: u16,
    /// Its retry policy.
    pub policy: RetryPolicy,
    /// Retries stop this long after the first failure.
    pub retry_for_ms: Option<u64>,
    /// Its time limit per run.
    pub timeout_ms: Option<u64>,
    /// Whether it goes to the dead set when out of retries.
    pub dead: bool,
    /// A unique key and how long it holds, in milliseconds.
    pub unique: Option<(String, u64)>,
}

impl NewJob {
    /// The job's record, without its id and place (the store gives those, see
    /// [`JobStore::enqueue_record`]): made before the store's lock is taken.
    pub fn into_record(self, now: i64) -> Box<JobRecord> {
        let run_at = self.run_at.unwrap_or(now);
        let due_micros = if self.run_at.is_some() { self.due_micros.min(999) } else { 0 };
        let later = run_at > now || (run_at == now && due_micros > 0);
        let unique = self.unique.map(|(key, ttl_ms)| UniqueLock {
            key,
            until: now.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
        });
        Box::new(JobRecord {
            id: JobId(0),
            name: self.name,
            queue: self.queue,
            args: self.args,
            priority: self.priority.min(9),
            state: if later { JobState::Scheduled } else { JobState::Available },
            enqueued_at: now,
            run_at,
            retries: 0,
            policy: self.policy,
            retry_for_ms: self.retry_for_ms,
            first_failed_at: None,
            timeout_ms: self.timeout_ms,
            dead: self.dead,
            unique,
            periodic: None,
            error: None,
            died_at: None,
            progress: Progress::default(),
            order: 0,
            due_micros,
        })
    }
}

/// A journal write: the record for `key`, or its tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// `j` + the job id (8 bytes, big-endian), or `p` + a periodic job's name.
    pub key: Vec<u8>,
    /// The value; `None` deletes the key.
    pub value: Option<Vec<u8>>,
}

/// The key of job `id`'s record.
pub fn job_key(id: JobId) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(b'j');
    key.extend_from_slice(&id.0.to_be_bytes());
    key
}

/// The key of the id reservation.
pub const RESERVED_KEY: &[u8] = b"n";

/// Ids reserved per reservation record.
pub const ID_BLOCK: u64 = 4_096;

/// The key of periodic job `name`'s last tick.
pub fn tick_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(b'p');
    key.extend_from_slice(name.as_bytes());
    key
}

/// Why an enqueue was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A job with the same unique key is enqueued, scheduled, retrying or running.
    #[error("a job with unique key {key:?} exists ({existing}) until {until} ms")]
    Duplicate {
        /// The key.
        key: String,
        /// The job holding it.
        existing: JobId,
        /// When its lock lapses.
        until: i64,
    },
    /// The store holds `jobs_max` jobs.
    #[error("the job store is full ({max} jobs)")]
    Full {
        /// The bound.
        max: usize,
    },
}

/// Why a run ended without success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Retry per the policy, or after `delay_ms` when given.
    Retry {
        /// What went wrong.
        reason: String,
        /// The handler's own wait.
        delay_ms: Option<u64>,
    },
    /// Drop the job (counted as discarded).
    Discard {
        /// Why.
        reason: String,
    },
    /// Straight to the dead set.
    Kill {
        /// Why.
        reason: String,
    },
}

/// The longest failure reason a record keeps, in bytes (longer ones are cut at a character
/// boundary): the record, arguments included, must fit the journal's record bound.
pub const ERROR_MAX: usize = 4_096;

impl Failure {
    /// The failure with its reason cut to [`ERROR_MAX`] bytes.
    fn bounded(self) -> Failure {
        let cut = |mut reason: String| {
            if reason.len() > ERROR_MAX {
                let mut end = ERROR_MAX;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            reason
        };
        match self {
            Failure::Retry { reason, delay_ms } => Failure::Retry { reason: cut(reason), delay_ms },
            Failure::Discard { reason } => Failure::Discard { reason: cut(reason) },
            Failure::Kill { reason } => Failure::Kill { reason: cut(reason) },
        }
    }
}

/// What became of a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It runs again at `at`.
    Retry {
        /// When.
        at: i64,
    },
    /// It went to the dead set.
    Dead,
    /// It was dropped.
    Discarded,
}

/// What `cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The job was waiting and is gone.
    Removed,
    /// The job is running: the runtime interrupts it, and `finish_cancelled` removes it.
    Running,
    /// No such job (finished, never enqueued, or in the dead set: delete it there).
    NotFound,
}

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Jobs the store holds at most, in every state [1,000,000]; an enqueue beyond is refused.
    pub jobs_max: usize,
    /// Jobs the dead set keeps, oldest trimmed first [10,000, as Sidekiq].
    pub dead_max: usize,
    /// How long the dead set keeps a job, in milliseconds [180 days, as Sidekiq].
    pub dead_max_age_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { jobs_max: 1_000_000, dead_max: 10_000, dead_max_age_ms: 180 * 86_400_000 }
    }
}

/// Counters since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Jobs enqueued (periodic ticks included).
    pub enqueued: u64,
    /// Runs that succeeded.
    pub completed: u64,
    /// Failures that led to a retry.
    pub retried: u64,
    /// Jobs that went to the dead set.
    pub died: u64,
    /// Jobs dropped on a `Discard` or with retries out and `dead = false`.
    pub discarded: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Runs interrupted (shutdown, maximum run time, crash) and put back.
    pub interrupted: u64,
    /// Dead jobs trimmed by the dead set's bounds.
    pub trimmed: u64,
    /// Enqueues refused by a unique lock.
    pub duplicates: u64,
    /// Dead jobs retried from the dead set.
    pub resurrected: u64,
}

/// The jobs' state.
#[derive(Debug)]
pub struct JobStore {
    jobs: JobTable,
    ready: BTreeMap<Arc<str>, ReadyQueue>,
    timed: BTreeSet<(i64, JobId)>,
    /// How many jobs are executing (their records say which: no index to keep per claim).
    executing: usize,
    /// Places reserved for records on their way in ([`JobStore::reserve`]).
    pending: usize,
    dead: BTreeSet<(i64, JobId)>,
    unique: BTreeMap<String, (JobId, i64)>,
    ticks: BTreeMap<String, i64>,
    next_id: u64,
    /// Ids below this are taken: journaled a block ahead, so that ids are never reused after a
    /// restart even when compaction removed the newest jobs' records.
    reserved: u64,
    front: i64,
    /// The first id enqueued in each millisecond of the last [`DUE_LEAD_MS`] (at most one entry
    /// per millisecond, so at most `DUE_LEAD_MS + 1`): where a job come due takes its place.
    recent: VecDeque<(i64, u64)>,
    counters: Counters,
    limits: Limits,
    journaled: bool,
    writes: Vec<Write>,
}

/// Puts `record` (job `id`) among its queue's available jobs; the queue's name is cloned only for
/// a queue's first job (a clone per job would touch a count shared by every core).
fn make_ready(ready: &mut BTreeMap<Arc<str>, ReadyQueue>, record: &JobRecord, id: JobId) {
    match ready.get_mut(&*record.queue) {
        Some(queue) => queue.insert(record.priority, (record.order, id)),
        None => ready.entry(record.queue.clone()).or_default().insert(record.priority, (record.order, id)),
    }
}

/// How far ahead a job that came due (scheduled, retried after its wait, a periodic tick) goes:
/// ahead of the jobs enqueued at most this long before its due time, behind older ones. Its place
/// is that of the first job enqueued since its due time less this lead (a place by id alone made a
/// job scheduled 50 ms ahead wait, once due, behind every job a flood enqueued meanwhile); a job
/// enqueued to run at once is passed only by jobs due within this lead after its enqueue, so no
/// stream of due jobs (retries, ticks) holds it back for longer.
pub const DUE_LEAD_MS: i64 = 1_000;

/// A queue's available jobs in claim order: by priority (0 first), then by place (`order`, then
/// id). Jobs mostly come in that order (ids grow; an interrupted job goes to the front), so each
/// priority keeps them in a sorted deque, a push and a pop at its ends; the few that come out of
/// order (jobs come due, placed by due time) wait in a B-tree, and a claim takes the smaller of the
/// two firsts. A B-tree alone cost 6% of the workers' time at a
/// backlog of 400,000.
#[derive(Debug, Default)]
struct ReadyQueue {
    lanes: [Lane; 10],
    len: usize,
}

#[derive(Debug, Default)]
struct Lane {
    /// In order, first at the front; never a key of `gone` at either end.
    sorted: VecDeque<(i64, JobId)>,
    others: BTreeSet<(i64, JobId)>,
    /// Keys removed from the middle of `sorted` (a cancelled job), skipped when they reach its
    /// front: a removal in place would move half a deep backlog under the lock, per cancel.
    gone: BTreeSet<(i64, JobId)>,
}

impl Lane {
    /// Drops removed keys from both ends of `sorted`.
    fn trim(&mut self) {
        while self.sorted.front().is_some_and(|k| self.gone.remove(k)) {
            self.sorted.pop_front();
        }
        while self.sorted.back().is_some_and(|k| self.gone.remove(k)) {
            self.sorted.pop_back();
        }
    }
}

impl ReadyQueue {
    fn insert(&mut self, priority: u8, key: (i64, JobId)) {
        let lane = &mut self.lanes[usize::from(priority.min(9))];
        if lane.gone.remove(&key) {
            // Removed from the middle and back again: its place in `sorted` is still there.
            self.len += 1;
            return;
        }
        match (lane.sorted.front(), lane.sorted.back()) {
            (_, None) => lane.sorted.push_back(key),
            (_, Some(back)) if key > *back => lane.sorted.push_back(key),
            (Some(front), _) if key < *front => lane.sorted.push_front(key),
            _ => {
                lane.others.insert(key);
            }
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<JobId> {
        if self.len == 0 {
            return None;
        }
        for lane in &mut self.lanes {
            let key = match (lane.sorted.front(), lane.others.first()) {
                (Some(a), Some(b)) if b < a => lane.others.pop_first(),
                (Some(_), _) => lane.sorted.pop_front(),
                (None, Some(_)) => lane.others.pop_first(),
                (None, None) => continue,
            };
            lane.trim();
            self.len -= 1;
            return key.map(|(_, id)| id);
        }
        None
    }

    fn remove(&mut self, priority: u8, key: (i64, JobId)) -> bool {
        let lane = &mut self.lanes[usize::from(priority.min(9))];
        let removed = lane.others.remove(&key)
            || (!lane.gone.contains(&key)
                && lane.sorted.binary_search(&key).is_ok()
                && lane.gone.insert(key));
        lane.trim();
        self.len -= usize::from(removed);
        removed
    }

    fn contains(&self, priority: u8, key: (i64, JobId)) -> bool {
        let lane = &self.lanes[usize::from(priority.min(9))];
        lane.others.contains(&key) || (lane.sorted.binary_search(&key).is_ok() && !lane.gone.contains(&key))
    }
}

/// A record's journal value.
pub fn encode(record: &JobRecord) -> Vec<u8> {
    rmp_serde::to_vec(record).expect("a job record encodes")
}

impl JobStore {
    /// An empty store. `journaled` false keeps no outbox (memory-only jobs).
    pub fn new(limits: Limits, journaled: bool) -> Self {
        JobStore {
            jobs: JobTable::default(),
            ready: BTreeMap::new(),
            timed: BTreeSet::new(),
            executing: 0,
            pending: 0,
            dead: BTreeSet::new(),
            unique: BTreeMap::new(),
            ticks: BTreeMap::new(),
            next_id: 1,
            reserved: 1,
            front: 0,
            recent: VecDeque::new(),
            counters: Counters::default(),
            limits,
            journaled,
            writes: Vec::new(),
        }
    }

    /// Rebuilds a store from its journal: `records` are `(key, value)` in journal order (a `None`
    /// value deletes the key); the last write of each key wins. Jobs that were executing are
    /// available again, at the front of their queue, with one more interruption (journaled). Records
    /// that do not decode are returned as `(key, error)`, and skipped.
    pub fn recover(
        limits: Limits,
        records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
        now: i64,
    ) -> (Self, Vec<(Vec<u8>, String)>) {
        let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for (key, value) in records {
            latest.insert(key, value);
        }
        let mut store = JobStore::new(limits, true);
        let mut bad = Vec::new();
        for (key, value) in latest {
            let Some(value) = value else { continue };
            match key.first() {
                Some(b'j') => match rmp_serde::from_slice::<JobRecord>(&value) {
                    // A record under another job's key (a damaged journal) would be indexed twice;
                    // the largest id leaves no id after it.
                    Ok(record) if job_key(record.id) != key || record.id.0 == u64::MAX => {
                        bad.push((key, format!("job {}'s record does not match its key", record.id)));
                    }
                    Ok(record) => {
                        store.next_id = store.next_id.max(record.id.0 + 1);
                        store.front = store.front.min(record.order);
                        if let Some((name, tick)) = &record.periodic {
                            let last = store.ticks.entry(name.clone()).or_insert(*tick);
                            *last = (*last).max(*tick);
                        }
                        store.insert(Box::new(record), now);
                    }
                    Err(e) => bad.push((key, e.to_string())),
                },
                Some(b'n') => match <[u8; 8]>::try_from(value.as_slice()) {
                    Ok(bytes) => store.next_id = store.next_id.max(u64::from_be_bytes(bytes)),
                    Err(_) => bad.push((key, "a reservation is 8 bytes".into())),
                },
                Some(b'p') => {
                    let name = String::from_utf8_lossy(&key[1..]).into_owned();
                    match <[u8; 8]>::try_from(value.as_slice()) {
                        Ok(bytes) => {
                            let tick = i64::from_be_bytes(bytes);
                            let last = store.ticks.entry(name).or_insert(tick);
                            *last = (*last).max(tick);
                        }
                        Err(_) => bad.push((key, "a tick is 8 bytes".into())),
                    }
                }
                _ => bad.push((key, "unknown record kind".into())),
            }
        }
        // The first job of each millisecond of the last second, as the enqueues noted them: a job
        // that comes due right after the restart passes the backlog of its last second, as it
        // would have without the restart.
        let since = now.saturating_sub(DUE_LEAD_MS);
        let mut recent: Vec<(i64, u64)> = store
            .jobs
            .values()
            .filter(|r| (since..=now).contains(&r.enqueued_at))
            .map(|r| (r.enqueued_at, r.id.0))
            .collect();
        recent.sort_unstable();
        for (ms, id) in recent {
            if store.recent.back().is_none_or(|&(last, _)| last < ms) {
                store.recent.push_back((ms, id));
            }
        }
        // Executing when the process stopped: interrupted; they run again first.
        let mut executing: Vec<JobId> =
            store.jobs.values().filter(|r| r.state == JobState::Executing).map(|r| r.id).collect();
        executing.sort_unstable();
        for id in executing {
            store.put_back(id, true, now);
        }
        store.promote_due(now.saturating_mul(1_000));
        (store, bad)
    }

    fn insert(&mut self, mut record: Box<JobRecord>, now: i64) {
        let id = record.id;
        if let Some(lock) = &record.unique {
            if record.state != JobState::Dead {
                self.unique.insert(lock.key.clone(), (id, lock.until));
            }
        }
        match record.state {
            JobState::Scheduled | JobState::Retryable if record.due_us() > now.saturating_mul(1_000) => {
                self.timed.insert((record.due_us(), id));
            }
            JobState::Scheduled | JobState::Retryable | JobState::Available => {
                // Come due while the process was down: at its id's place (what was enqueued
                // before the restart is not known by time).
                record.state = JobState::Available;
                make_ready(&mut self.ready, &record, id);
            }
            JobState::Executing => {
                self.executing += 1;
            }
            JobState::Dead => {
                self.dead.insert((record.died_at.unwrap_or(now), id));
            }
        }
        self.jobs.insert(id, record);
    }

    fn journal(&mut self, id: JobId) {
        if self.journaled {
            let value = self.jobs.get(&id).map(encode);
            self.writes.push(Write { key: job_key(id), value });
        }
    }

    fn remove(&mut self, id: JobId) -> Option<Box<JobRecord>> {
        let record = self.jobs.remove(&id)?;
        if let Some(lock) = &record.unique {
            if self.unique.get(&lock.key).is_some_and(|(holder, _)| *holder == id) {
                self.unique.remove(&lock.key);
            }
        }
        if self.journaled {
            self.writes.push(Write { key: job_key(id), value: None });
        }
        Some(record)
    }

    /// Notes that job `id` was enqueued at `now` (ms): the first of each millisecond is kept for
    /// [`DUE_LEAD_MS`].
    fn note_enqueued(&mut self, id: JobId, now: i64) {
        if self.recent.back().is_none_or(|&(ms, _)| ms < now) {
            self.recent.push_back((now, id.0));
            let oldest = now.saturating_sub(DUE_LEAD_MS);
            while self.recent.front().is_some_and(|&(ms, _)| ms < oldest) {
                self.recent.pop_front();
            }
        }
    }

    /// The place of a job due at `due_us`: that of the first job enqueued since its due time less
    /// [`DUE_LEAD_MS`] (just before it, or just after it when the due job's id is the larger: a
    /// place is shared, then ids decide), or behind every job when none was enqueued since. Never
    /// 0, which [`JobStore::enqueue_encoded`] reads as "no place yet".
    fn due_place(&self, due_us: i64) -> i64 {
        let from = due_us.div_euclid(1_000).saturating_sub(DUE_LEAD_MS);
        let first = self.recent.partition_point(|&(ms, _)| ms < from);
        let id = self.recent.get(first).map_or(self.next_id, |&(_, id)| id);
        i64::try_from(id).unwrap_or(i64::MAX).max(1)
    }

    fn next_id(&mut self) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        if self.next_id > self.reserved {
            self.reserved = self.next_id + ID_BLOCK;
            if self.journaled {
                self.writes.push(Write {
                    key: RESERVED_KEY.to_vec(),
                    value: Some(self.reserved.to_be_bytes().to_vec()),
                });
            }
        }
        id
    }

    /// The journal writes made since the last call, in order.
    pub fn take_writes(&mut self) -> Vec<Write> {
        std::mem::take(&mut self.writes)
    }

    /// Whether writes are waiting.
    pub fn has_writes(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Enqueues a job.
    ///
    /// # Errors
    /// [`Refused::Duplicate`] when its unique key is held; [`Refused::Full`] at `jobs_max`.
    pub fn enqueue(&mut self, job: NewJob, now: i64) -> Result<JobId, Refused> {
        self.enqueue_tagged(job, None, now)
    }

    fn enqueue_tagged(
        &mut self,
        job: NewJob,
        periodic: Option<(String, i64)>,
        now: i64,
    ) -> Result<JobId, Refused> {
        let mut record = job.into_record(now);
        if let Some((_, tick)) = &periodic {
            // A tick came due at its time: placed as a scheduled job come due.
            record.order = self.due_place(tick.saturating_mul(1_000));
        }
        record.periodic = periodic;
        self.enqueue_record(record, now)
    }

    /// Enqueues a record made by [`NewJob::into_record`] (outside the store's lock: the record is
    /// allocated and filled there; here it only gets its id and its place).
    ///
    /// # Errors
    /// As [`JobStore::enqueue`].
    pub fn enqueue_record(&mut self, record: Box<JobRecord>, now: i64) -> Result<JobId, Refused> {
        self.enqueue_encoded(record, None, now)
    }

    /// Reserves `n` consecutive ids, the first returned, for records that are given their id (and
    /// journal encoding) outside the store's lock, then enqueued with [`JobStore::enqueue_encoded`].
    /// Ids refused later are simply never used.
    pub fn reserve_ids(&mut self, n: u64) -> JobId {
        let first = JobId(self.next_id);
        if n > 0 {
            self.next_id += n - 1;
            self.next_id();
        }
        first
    }

    /// Reserves `n` ids and `n` places within `jobs_max` for records written to the journal before
    /// they enter the store ([`JobStore::enqueue_reserved`]); `None` when the store may not hold
    /// them all. A reservation that is not used must be given back ([`JobStore::unreserve`]).
    pub fn reserve(&mut self, n: u64) -> Option<JobId> {
        let wanted = usize::try_from(n).ok()?;
        if self.jobs.len().saturating_add(self.pending).saturating_add(wanted) > self.limits.jobs_max {
            return None;
        }
        self.pending += wanted;
        Some(self.reserve_ids(n))
    }

    /// Gives back `n` places of a reservation (its ids are never used).
    pub fn unreserve(&mut self, n: u64) {
        self.pending = self.pending.saturating_sub(usize::try_from(n).unwrap_or(usize::MAX));
    }

    /// Enqueues a record with a reserved id and place (see [`JobStore::reserve`]) whose journal
    /// write was appended already: nothing is journaled here, and nothing can refuse it (a record
    /// with a unique key is never enqueued this way).
    pub fn enqueue_reserved(&mut self, mut record: Box<JobRecord>, now: i64) -> JobId {
        debug_assert!(record.unique.is_none() && record.id.0 != 0 && record.id.0 < self.next_id);
        self.pending = self.pending.saturating_sub(1);
        let id = record.id;
        record.order = i64::try_from(id.0).unwrap_or(i64::MAX);
        self.insert(record, now);
        self.note_enqueued(id, now);
        self.counters.enqueued += 1;
        id
    }

    /// Enqueues `record`: with its id 0 it gets the next id here; otherwise its id came from
    /// [`JobStore::reserve_ids`]. Its place is its id unless it has one (a periodic tick's), and
    /// `encoded`, when given, is its journal value (encoded outside the lock; the record must not
    /// change in between).
    ///
    /// # Errors
    /// As [`JobStore::enqueue`].
    pub fn enqueue_encoded(
        &mut self,
        mut record: Box<JobRecord>,
        encoded: Option<Vec<u8>>,
        now: i64,
    ) -> Result<JobId, Refused> {
        if self.jobs.len().saturating_add(self.pending) >= self.limits.jobs_max {
            return Err(Refused::Full { max: self.limits.jobs_max });
        }
        if let Some(lock) = &record.unique {
            if let Some(&(existing, until)) = self.unique.get(&lock.key) {
                if until > now && self.jobs.contains_key(&existing) {
                    self.counters.duplicates += 1;
                    return Err(Refused::Duplicate { key: lock.key.clone(), existing, until });
                }
            }
        }
        if record.id.0 == 0 {
            record.id = self.next_id();
        }
        let id = record.id;
        // Its place is its id, unless it was given one (a periodic tick's due time).
        if record.order == 0 {
            record.order = i64::try_from(id.0).unwrap_or(i64::MAX);
        }
        debug_assert!(id.0 < self.next_id && !self.jobs.contains_key(&id), "{id} was reserved");
        self.insert(record, now);
        self.note_enqueued(id, now);
        match encoded {
            Some(value) if self.journaled => self.writes.push(Write { key: job_key(id), value: Some(value) }),
            _ => self.journal(id),
        }
        self.counters.enqueued += 1;
        Ok(id)
    }

    /// Enqueues periodic job `name`'s `tick` unless that tick (or a later one) was enqueued before:
    /// each tick once, across restarts (the job's record carries its tick, and the tick is journaled
    /// after it, so a crash between the two still finds it).
    ///
    /// # Errors
    /// As [`JobStore::enqueue`].
    pub fn enqueue_tick(
        &mut self,
        name: &str,
        tick: i64,
        job: NewJob,
        now: i64,
    ) -> Result<Option<JobId>, Refused> {
        if self.ticks.get(name).is_some_and(|&last| last >= tick) {
            return Ok(None);
        }
        let id = self.enqueue_tagged(job, Some((name.to_owned(), tick)), now)?;
        self.ticks.insert(name.to_owned(), tick);
        if self.journaled {
            self.writes.push(Write { key: tick_key(name), value: Some(tick.to_be_bytes().to_vec()) });
        }
        Ok(Some(id))
    }

    /// The last tick enqueued for periodic job `name`.
    pub fn last_tick(&self, name: &str) -> Option<i64> {
        self.ticks.get(name).copied()
    }

    /// Moves scheduled and retryable jobs due by `now_us` (microseconds since the epoch) to their
    /// queues; returns the queues that got jobs (with repeats).
    pub fn promote_due(&mut self, now_us: i64) -> Vec<Arc<str>> {
        let mut queues = Vec::new();
        while let Some(&(at, id)) = self.timed.first() {
            if at > now_us {
                break;
            }
            self.timed.pop_first();
            let place = self.due_place(at);
            if let Some(record) = self.jobs.get_mut(&id) {
                record.state = JobState::Available;
                record.order = place;
                make_ready(&mut self.ready, record, id);
                queues.push(record.queue.clone());
            }
        }
        queues
    }

    /// When the next scheduled or retryable job is due, in microseconds since the epoch.
    pub fn next_due_us(&self) -> Option<i64> {
        self.timed.first().map(|&(at, _)| at)
    }

    /// Whether queue `queue` has an available job.
    pub fn has_ready(&self, queue: &str) -> bool {
        self.ready.get(queue).is_some_and(|set| set.len > 0)
    }

    /// Claims the first available job of `queue` (lowest priority number, then first place): it is
    /// executing, and its record says what to run. Nothing is copied here: a worker takes what it
    /// needs (a name shared by every job of a type is not reference-counted once per job).
    pub fn claim(&mut self, queue: &str) -> Option<&JobRecord> {
        self.claim_if(queue, 1)
    }

    /// Claims as [`JobStore::claim`] when `queue` has at least `min_ready` jobs available.
    pub fn claim_if(&mut self, queue: &str, min_ready: usize) -> Option<&JobRecord> {
        let set = self.ready.get_mut(queue)?;
        if set.len < min_ready {
            return None;
        }
        let id = set.pop()?;
        let record = self.jobs.get_mut(&id).expect("a ready job exists");
        record.state = JobState::Executing;
        self.executing += 1;
        Some(record)
    }

    /// Gives back a job claimed but never started: it takes its old place in its queue again. No
    /// interruption is counted and nothing is journaled (the journal never saw the claim).
    pub fn unclaim(&mut self, id: JobId) -> bool {
        if !self.executing(id) {
            return false;
        }
        let record = self.jobs.get_mut(&id).expect("an executing job exists");
        record.state = JobState::Available;
        make_ready(&mut self.ready, record, id);
        true
    }

    /// How many jobs of `queue` are available.
    pub fn ready_len(&self, queue: &str) -> usize {
        self.ready.get(queue).map_or(0, |set| set.len)
    }

    /// Whether `id` is executing; if so it stops being counted so (its caller moves it on).
    fn executing(&mut self, id: JobId) -> bool {
        let is = self.jobs.get(&id).is_some_and(|r| r.state == JobState::Executing);
        if is {
            self.executing -= 1;
        }
        is
    }

    /// A run succeeded: the job leaves, its unique lock with it. Returns its record (for the caller
    /// to drop outside its lock), `None` when it was not executing.
    pub fn complete(&mut self, id: JobId) -> Option<Box<JobRecord>> {
        if !self.executing(id) {
            return None;
        }
        self.counters.completed += 1;
        self.remove(id)
    }

    /// A run failed: retry per the policy (or the handler's own delay), discard, or kill.
    pub fn fail(&mut self, id: JobId, failure: Failure, now: i64, rng: &mut fastrand::Rng) -> Option<Fate> {
        if !self.executing(id) {
            return None;
        }
        let record = self.jobs.get_mut(&id).expect("an executing job exists");
        let failure = failure.bounded();
        match failure {
            Failure::Discard { reason } => {
                record.error = Some(reason);
                self.remove(id);
                self.counters.discarded += 1;
                Some(Fate::Discarded)
            }
            Failure::Kill { reason } => {
                record.error = Some(reason);
                self.bury(id, now);
                Some(Fate::Dead)
            }
            Failure::Retry { reason, delay_ms } => {
                record.error = Some(reason);
                let first = *record.first_failed_at.get_or_insert(now);
                let within = record
                    .retry_for_ms
                    .is_none_or(|limit| now.saturating_sub(first) < i64::try_from(limit).unwrap_or(i64::MAX));
                if record.retries < record.policy.retries() && within {
                    let wait = delay_ms.map_or_else(
                        || record.policy.delay_ms(record.retries, rng),
                        |d| d.min(crate::policy::RETRY_DELAY_MAX_MS),
                    );
                    record.retries += 1;
                    record.state = JobState::Retryable;
                    #[cfg(feature = "broken")]
                    if crate::broken::bugs().unique_released_on_retry {
                        if let Some(lock) = &record.unique {
                            self.unique.remove(&lock.key);
                        }
                    }
                    record.run_at = now.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX));
                    record.due_micros = 0;
                    let at = record.run_at;
                    self.timed.insert((record.due_us(), id));
                    self.journal(id);
                    self.counters.retried += 1;
                    Some(Fate::Retry { at })
                } else if record.dead {
                    self.bury(id, now);
                    Some(Fate::Dead)
                } else {
                    self.remove(id);
                    self.counters.discarded += 1;
                    Some(Fate::Discarded)
                }
            }
        }
    }

    fn bury(&mut self, id: JobId, now: i64) {
        let record = self.jobs.get_mut(&id).expect("a job to bury exists");
        record.state = JobState::Dead;
        record.died_at = Some(now);
        if let Some(lock) = &record.unique {
            if self.unique.get(&lock.key).is_some_and(|(holder, _)| *holder == id) {
                self.unique.remove(&lock.key);
            }
        }
        self.dead.insert((now, id));
        self.journal(id);
        self.counters.died += 1;
        self.trim_dead(now);
    }

    /// Trims the dead set to its bounds (oldest first); returns how many went.
    pub fn trim_dead(&mut self, now: i64) -> usize {
        let oldest_kept = now.saturating_sub(i64::try_from(self.limits.dead_max_age_ms).unwrap_or(i64::MAX));
        let mut trimmed = 0;
        while let Some(&(died, id)) = self.dead.first() {
            if self.dead.len() <= self.limits.dead_max && died >= oldest_kept {
                break;
            }
            self.dead.pop_first();
            self.remove(id);
            trimmed += 1;
        }
        self.counters.trimmed += trimmed as u64;
        trimmed
    }

    /// Puts an executing job back in its queue: at the front for an interruption (shutdown, crash),
    /// at the back when an iteration job yields its turn after its maximum run time. An
    /// interruption is counted and journaled with the job's progress.
    pub fn put_back(&mut self, id: JobId, interrupted: bool, now: i64) -> bool {
        if !self.executing(id) {
            return false;
        }
        let order = if interrupted {
            self.front = self.front.saturating_sub(1);
            self.counters.interrupted += 1;
            self.front
        } else {
            i64::try_from(self.next_id().0).unwrap_or(i64::MAX)
        };
        let record = self.jobs.get_mut(&id).expect("an executing job exists");
        record.state = JobState::Available;
        record.run_at = now;
        record.due_micros = 0;
        record.order = order;
        record.progress.interruptions += 1;
        make_ready(&mut self.ready, record, id);
        self.journal(id);
        true
    }

    /// Records an iteration job's checkpoint (journaled).
    pub fn checkpoint(&mut self, id: JobId, cursor: Option<Bytes>, items: u64, runtime_ms: u64) -> bool {
        let Some(record) = self.jobs.get_mut(&id) else { return false };
        if record.state != JobState::Executing {
            return false;
        }
        record.progress.cursor = cursor;
        record.progress.items = items;
        record.progress.runtime_ms = runtime_ms;
        record.progress.started = true;
        self.journal(id);
        true
    }

    /// Cancels a waiting job, or reports that it is running.
    pub fn cancel(&mut self, id: JobId) -> Cancelled {
        let Some(record) = self.jobs.get(&id) else { return Cancelled::NotFound };
        match record.state {
            JobState::Executing => Cancelled::Running,
            JobState::Dead => Cancelled::NotFound,
            JobState::Available => {
                if let Some(set) = self.ready.get_mut(&record.queue) {
                    set.remove(record.priority, (record.order, id));
                }
                self.remove(id);
                self.counters.cancelled += 1;
                Cancelled::Removed
            }
            JobState::Scheduled | JobState::Retryable => {
                self.timed.remove(&(record.due_us(), id));
                self.remove(id);
                self.counters.cancelled += 1;
                Cancelled::Removed
            }
        }
    }

    /// A running job that was cancelled has stopped: it leaves.
    pub fn finish_cancelled(&mut self, id: JobId) -> bool {
        if !self.executing(id) {
            return false;
        }
        self.remove(id);
        self.counters.cancelled += 1;
        true
    }

    /// The dead set, newest first.
    pub fn dead(&self) -> Vec<&JobRecord> {
        self.dead.iter().rev().filter_map(|(_, id)| self.jobs.get(id)).collect()
    }

    /// Puts dead job `id` back in its queue with its retries reset (Sidekiq's "retry now").
    pub fn retry_dead(&mut self, id: JobId, now: i64) -> bool {
        let Some(record) = self.jobs.get(&id) else { return false };
        if record.state != JobState::Dead {
            return false;
        }
        // Its unique lock, released at its death, is taken again while its TTL runs: refused
        // while another live job holds the key (two jobs of one key never run within its TTL).
        let relock = match &record.unique {
            Some(lock) if lock.until > now => {
                if let Some(&(holder, until)) = self.unique.get(&lock.key) {
                    if holder != id && until > now && self.jobs.contains_key(&holder) {
                        return false;
                    }
                }
                Some((lock.key.clone(), lock.until))
            }
            _ => None,
        };
        if let Some((key, until)) = relock {
            self.unique.insert(key, (id, until));
        }
        self.dead.remove(&(record.died_at.unwrap_or(now), id));
        let record = self.jobs.get_mut(&id).expect("checked");
        record.state = JobState::Available;
        record.retries = 0;
        record.first_failed_at = None;
        record.died_at = None;
        record.run_at = now;
        record.due_micros = 0;
        let place = self.next_id();
        let record = self.jobs.get_mut(&id).expect("checked");
        // At the back of its queue, as a job enqueued now (its old place may be a due one).
        record.order = i64::try_from(place.0).unwrap_or(i64::MAX);
        make_ready(&mut self.ready, record, id);
        self.journal(id);
        self.counters.resurrected += 1;
        true
    }

    /// Deletes dead job `id`.
    pub fn delete_dead(&mut self, id: JobId) -> bool {
        let Some(record) = self.jobs.get(&id) else { return false };
        if record.state != JobState::Dead {
            return false;
        }
        self.dead.remove(&(record.died_at.unwrap_or(0), id));
        self.remove(id).is_some()
    }

    /// A job's record.
    pub fn get(&self, id: JobId) -> Option<&JobRecord> {
        self.jobs.get(&id)
    }

    /// Every job, by id.
    pub fn all(&self) -> Vec<&JobRecord> {
        let mut all: Vec<&JobRecord> = self.jobs.values().collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Jobs in each state, and available jobs per queue.
    pub fn sizes(&self) -> Sizes {
        Sizes {
            available: self.ready.iter().map(|(q, set)| (q.to_string(), set.len)).collect(),
            scheduled: self.timed.len(),
            executing: self.executing,
            dead: self.dead.len(),
            total: self.jobs.len(),
        }
    }

    /// Checks the store's own invariants (each job indexed once, by its state); used by tests and
    /// the simulator.
    pub fn check(&self) -> Result<(), String> {
        let mut ready = 0;
        for (queue, set) in &self.ready {
            let held: usize =
                set.lanes.iter().map(|lane| lane.sorted.len() - lane.gone.len() + lane.others.len()).sum();
            if held != set.len {
                return Err(format!("queue {queue} holds {held} jobs, {} counted", set.len));
            }
            for lane in &set.lanes {
                if !lane.sorted.iter().zip(lane.sorted.iter().skip(1)).all(|(a, b)| a < b) {
                    return Err(format!("queue {queue}'s deque is out of order"));
                }
            }
            ready += set.len;
        }
        let executing = self.jobs.values().filter(|r| r.state == JobState::Executing).count();
        if executing != self.executing {
            return Err(format!("{executing} jobs executing, {} counted", self.executing));
        }
        let indexed = ready + self.timed.len() + self.executing + self.dead.len();
        if indexed != self.jobs.len() {
            return Err(format!("{} jobs, {indexed} indexed", self.jobs.len()));
        }
        for record in self.jobs.values() {
            let ok = match record.state {
                JobState::Available => self
                    .ready
                    .get(&record.queue)
                    .is_some_and(|s| s.contains(record.priority, (record.order, record.id))),
                JobState::Scheduled | JobState::Retryable => {
                    self.timed.contains(&(record.due_us(), record.id))
                }
                JobState::Executing => true,
                JobState::Dead => self.dead.iter().any(|(_, id)| *id == record.id),
            };
            if !ok {
                return Err(format!("{} is {} but not indexed so", record.id, record.state.as_str()));
            }
        }
        Ok(())
    }
}

/// How many jobs are where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// Available jobs per queue.
    pub available: BTreeMap<String, usize>,
    /// Scheduled and retryable jobs.
    pub scheduled: usize,
    /// Executing jobs.
    pub executing: usize,
    /// The dead set.
    pub dead: usize,
    /// All jobs.
    pub total: usize,
}

#[cfg(test)]
mod tests;
