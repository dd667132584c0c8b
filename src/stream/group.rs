//! Consumer groups: a stream's partitions shared among the members of a group, each partition read
//! by one member at a time, with committed offsets that survive the process.
//!
//! A rebalance (a member joins, leaves or crashes) stops a moving partition's old owner after its
//! running record, lets it commit, and only then starts the new owner from the committed offset: no
//! partition is ever read by two members of one group at once (Kafka's eager rebalance). Partitions
//! are assigned in ranges over the members in join order.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::ArbiterHandle;
use futures::FutureExt;
use tokio::sync::{oneshot, Notify};
use tubemail_log::LogError;

use super::{start_offset, Clock, Offsets, StartFrom, StreamHandle, StreamRecord, READ_BATCH_MAX};
use crate::stats::{GroupPartitionStats, GroupStats};
use crate::topology::DeliveryMode;

/// Records an at-least-once member handles between two commits, at most.
pub const COMMIT_EVERY_MAX: u32 = 1_000_000;

/// How a member consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupOptions {
    /// Where a partition without a committed offset starts [earliest].
    pub start: StartFrom,
    /// `AtLeastOnce` commits after the handler (a crash redelivers up to `commit_every` records);
    /// `AtMostOnce` commits each record before its handler runs (a crash skips it) [at least once].
    pub mode: DeliveryMode,
    /// At least once: records handled between two commits, 1 to [`COMMIT_EVERY_MAX`] [100]. A member
    /// also commits when it catches up and when it stops.
    pub commit_every: u32,
    /// Records read ahead at once, 1 to [`READ_BATCH_MAX`] [256].
    pub batch: usize,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self { start: StartFrom::Earliest, mode: DeliveryMode::AtLeastOnce, commit_every: 100, batch: 256 }
    }
}

impl GroupOptions {
    fn check(&self) -> Result<(), GroupError> {
        if !(1..=COMMIT_EVERY_MAX).contains(&self.commit_every) {
            return Err(GroupError::Options(format!("commit_every must be 1 to {COMMIT_EVERY_MAX}")));
        }
        if !(1..=READ_BATCH_MAX).contains(&self.batch) {
            return Err(GroupError::Options(format!("batch must be 1 to {READ_BATCH_MAX}")));
        }
        Ok(())
    }
}

/// Why a member could not join.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No stream of that name is declared.
    #[error("unknown stream {0:?}")]
    UnknownStream(String),
    /// A group name out of 1 to 200 bytes, or holding a NUL.
    #[error("invalid group name {0:?}: 1 to 200 bytes, no NUL")]
    InvalidName(String),
    /// Options out of range.
    #[error("invalid group options: {0}")]
    Options(String),
    /// The broker is shut down.
    #[error("the broker is shut down")]
    Closed,
}

/// What a member did, when it left.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaveReport {
    /// Records its handler finished.
    pub processed: u64,
    /// Whether it had crashed (its handler panicked) before it left.
    pub crashed: bool,
}

type BoxHandler = Arc<dyn Fn(StreamRecord) -> Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// A member of a consumer group; [`GroupMember::leave`] hands its partitions to the others (as
/// dropping it does, without waiting).
pub struct GroupMember {
    group: Arc<Group>,
    id: u64,
    left: bool,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember").field("group", &self.group.name).field("id", &self.id).finish()
    }
}

impl GroupMember {
    /// Its id in the group (ascending in join order).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The partitions it owns now.
    pub fn partitions(&self) -> Vec<u32> {
        self.group.owned_by(self.id)
    }

    /// Records its handler finished so far.
    pub fn processed(&self) -> u64 {
        self.group.member_counters(self.id).0
    }

    /// Whether its handler panicked (it then left the group).
    pub fn crashed(&self) -> bool {
        self.group.member_counters(self.id).1
    }

    /// Leaves the group: each of its partitions stops after the running record, commits (at least
    /// once), and goes to the remaining members.
    pub async fn leave(mut self) -> LeaveReport {
        self.left = true;
        let (processed, crashed) = self.group.member_counters(self.id);
        self.group.leave(self.id).await;
        LeaveReport { processed, crashed }
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if !self.left {
            let (group, id) = (self.group.clone(), self.id);
            self.group.arbiter.spawn(async move { group.leave(id).await });
        }
    }
}

/// A stop request for one partition task.
#[derive(Default)]
struct Stop {
    requested: AtomicBool,
    notify: Notify,
}

impl Stop {
    fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.requested() {
                return;
            }
            notified.await;
        }
    }
}

struct Task {
    member: u64,
    stop: Arc<Stop>,
    done: oneshot::Receiver<()>,
}

struct Member {
    handler: BoxHandler,
    options: GroupOptions,
    processed: Arc<AtomicU64>,
    crashed: Arc<AtomicBool>,
}

#[derive(Default)]
struct State {
    members: BTreeMap<u64, Member>,
    tasks: BTreeMap<u32, Task>,
    closed: bool,
}

/// One consumer group on one stream.
pub(crate) struct Group {
    pub(crate) name: Arc<str>,
    stream: Arc<StreamHandle>,
    offsets: Arc<Offsets>,
    clock: Clock,
    arbiter: ArbiterHandle,
    /// Held across a whole rebalance: rebalances never interleave.
    state: tokio::sync::Mutex<State>,
    /// Owners for stats, readable without waiting for a rebalance.
    owners: Mutex<BTreeMap<u32, u64>>,
    /// (processed, crashed) of members that left, kept for their reports.
    past: Mutex<BTreeMap<u64, (u64, bool)>>,
    next_member: AtomicU64,
    processed: AtomicU64,
    crashed: AtomicU64,
    skipped_by_retention: AtomicU64,
    rebalances: AtomicU64,
    commit_errors: AtomicU64,
}

impl Group {
    pub(crate) fn new(
        name: &str,
        stream: Arc<StreamHandle>,
        offsets: Arc<Offsets>,
        clock: Clock,
        arbiter: ArbiterHandle,
    ) -> Self {
        Self {
            name: name.into(),
            stream,
            offsets,
            clock,
            arbiter,
            state: tokio::sync::Mutex::default(),
            owners: Mutex::default(),
            past: Mutex::default(),
            next_member: AtomicU64::new(1),
            processed: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            skipped_by_retention: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            commit_errors: AtomicU64::new(0),
        }
    }

    /// Adds a member and rebalances.
    pub(crate) async fn join<F, Fut>(
        self: &Arc<Self>,
        options: GroupOptions,
        handler: F,
    ) -> Result<GroupMember, GroupError>
    where
        F: Fn(StreamRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        options.check()?;
        let handler: BoxHandler = Arc::new(move |r| Box::pin(handler(r)));
        let mut state = self.state.lock().await;
        if state.closed {
            return Err(GroupError::Closed);
        }
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        let member = Member { handler, options, processed: Arc::default(), crashed: Arc::default() };
        state.members.insert(id, member);
        self.rebalance(&mut state).await;
        Ok(GroupMember { group: self.clone(), id, left: false })
    }

    async fn leave(self: &Arc<Self>, id: u64) {
        let mut state = self.state.lock().await;
        if let Some(m) = state.members.remove(&id) {
            self.remember(id, &m);
            self.rebalance(&mut state).await;
        }
    }

    async fn crashed(self: &Arc<Self>, id: u64) {
        self.crashed.fetch_add(1, Ordering::Relaxed);
        self.leave(id).await;
    }

    /// Stops every member (shutdown): each partition after its running record, committing.
    pub(crate) async fn close(&self) {
        let mut state = self.state.lock().await;
        state.closed = true;
        let members = std::mem::take(&mut state.members);
        for (id, m) in &members {
            self.remember(*id, m);
        }
        for (_, task) in std::mem::take(&mut state.tasks) {
            task.stop.request();
            let _ = task.done.await;
        }
        self.owners.lock().expect("owners").clear();
    }

    fn remember(&self, id: u64, m: &Member) {
        let record = (m.processed.load(Ordering::Relaxed), m.crashed.load(Ordering::Relaxed));
        self.past.lock().expect("past members").insert(id, record);
    }

    fn member_counters(&self, id: u64) -> (u64, bool) {
        if let Some(&past) = self.past.lock().expect("past members").get(&id) {
            return past;
        }
        // A live member: its counters are in the state; read them without waiting for a rebalance.
        match self.state.try_lock() {
            Ok(state) => state.members.get(&id).map_or((0, false), |m| {
                (m.processed.load(Ordering::Relaxed), m.crashed.load(Ordering::Relaxed))
            }),
            Err(_) => (0, false),
        }
    }

    fn owned_by(&self, id: u64) -> Vec<u32> {
        self.owners.lock().expect("owners").iter().filter(|(_, &m)| m == id).map(|(&p, _)| p).collect()
    }

    /// Assigns partitions in ranges over the members in join order; stops every moving partition's
    /// old owner (awaiting its commit) before its new owner starts.
    async fn rebalance(self: &Arc<Self>, state: &mut State) {
        self.rebalances.fetch_add(1, Ordering::Relaxed);
        let partitions = self.stream.log.partitions().len() as u32;
        let members: Vec<u64> = state.members.keys().copied().collect();
        let desired = |p: u32| -> Option<u64> {
            if members.is_empty() {
                return None;
            }
            let i = (u64::from(p) * members.len() as u64 / u64::from(partitions)) as usize;
            Some(members[i])
        };
        // Revoke first, every moving partition, and wait for each to stop.
        let moving: Vec<u32> =
            state.tasks.iter().filter(|(&p, t)| desired(p) != Some(t.member)).map(|(&p, _)| p).collect();
        let mut stopping = Vec::new();
        for p in &moving {
            let task = state.tasks.remove(p).expect("listed");
            task.stop.request();
            stopping.push(task.done);
        }
        for done in stopping {
            let _ = done.await;
        }
        for p in 0..partitions {
            let Some(owner) = desired(p) else { continue };
            if state.tasks.contains_key(&p) {
                continue;
            }
            let member = &state.members[&owner];
            let task = self.start_task(owner, member, p);
            state.tasks.insert(p, task);
        }
        *self.owners.lock().expect("owners") = state.tasks.iter().map(|(&p, t)| (p, t.member)).collect();
    }

    fn start_task(self: &Arc<Self>, member_id: u64, member: &Member, partition: u32) -> Task {
        let stop = Arc::new(Stop::default());
        let (done_tx, done) = oneshot::channel();
        let run = PartitionRun {
            group: self.clone(),
            member: member_id,
            partition,
            handler: member.handler.clone(),
            options: member.options,
            processed: member.processed.clone(),
            crashed: member.crashed.clone(),
            stop: stop.clone(),
        };
        // Handlers' futures need not be `Send`: the task is made and run on the broker's arbiter.
        self.arbiter.spawn_fn(move || {
            actix::spawn(async move {
                let crashed = run.run().await;
                let (group, member) = (run.group.clone(), run.member);
                let _ = done_tx.send(());
                if crashed {
                    group.crashed(member).await;
                }
            });
        });
        Task { member: member_id, stop, done }
    }

    pub(crate) fn stream_name(&self) -> &str {
        &self.stream.name
    }

    pub(crate) fn stats(&self) -> GroupStats {
        let owners = self.owners.lock().expect("owners").clone();
        let committed = self.offsets.of_group(&self.name, &self.stream.name);
        let mut stats = group_stats(&self.stream, &committed, &owners);
        stats.members = owners.values().collect::<std::collections::BTreeSet<_>>().len() as u32;
        stats.processed = self.processed.load(Ordering::Relaxed);
        stats.crashed = self.crashed.load(Ordering::Relaxed);
        stats.skipped_by_retention = self.skipped_by_retention.load(Ordering::Relaxed);
        stats.rebalances = self.rebalances.load(Ordering::Relaxed);
        stats.commit_errors = self.commit_errors.load(Ordering::Relaxed);
        stats
    }
}

/// A group's per-partition figures from its committed offsets.
pub(crate) fn group_stats(
    stream: &StreamHandle,
    committed: &BTreeMap<u32, u64>,
    owners: &BTreeMap<u32, u64>,
) -> GroupStats {
    let mut stats = GroupStats::default();
    for p in stream.log.partitions() {
        let id = p.id();
        let c = committed.get(&id).copied();
        let lag = p.end().saturating_sub(c.unwrap_or(p.start()).max(p.start()));
        stats.partitions.insert(
            id,
            GroupPartitionStats { committed: c, end: p.end(), lag, owner: owners.get(&id).copied() },
        );
    }
    stats
}

/// One member's reading of one partition.
struct PartitionRun {
    group: Arc<Group>,
    member: u64,
    partition: u32,
    handler: BoxHandler,
    options: GroupOptions,
    processed: Arc<AtomicU64>,
    crashed: Arc<AtomicBool>,
    stop: Arc<Stop>,
}

impl PartitionRun {
    async fn commit(&self, offset: u64) {
        let g = &self.group;
        // Each stream syncs on its own clock under `interval`: the records a commit counts go to
        // disk first, so that a machine crash never keeps a commit past records it lost.
        if let Ok(partition) = g.stream.partition(self.partition) {
            if partition.syncs_to_disk() && partition.synced_end() < offset {
                let partition = partition.clone();
                let synced = if partition.is_simulated() {
                    partition.sync()
                } else {
                    // An fdatasync: off the arbiter.
                    tokio::task::spawn_blocking(move || partition.sync()).await.unwrap_or(Ok(()))
                };
                if let Err(e) = synced {
                    g.commit_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(group = %g.name, stream = %g.stream.name, partition = self.partition,
                        error = %e, "the records a commit counts could not be synced: not committed");
                    return;
                }
            }
        }
        if let Err(e) =
            g.offsets.commit(&g.name, &g.stream.name, self.partition, offset, g.clock.now_ms()).await
        {
            g.commit_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(group = %g.name, stream = %g.stream.name, partition = self.partition, error = %e, "commit failed");
        }
    }

    /// Reads until stopped; whether the handler panicked.
    async fn run(&self) -> bool {
        let g = &self.group;
        let Ok(partition) = g.stream.partition(self.partition).cloned() else { return false };
        let committed = g.offsets.get(&g.name, &g.stream.name, self.partition);
        let mut pos = match committed {
            Some(c) => c,
            None => start_offset(&partition, self.options.start).unwrap_or(partition.start()),
        };
        let mut last_commit = committed.unwrap_or(pos);
        let at_least_once = self.options.mode == DeliveryMode::AtLeastOnce;
        while !self.stop.requested() {
            let end = partition.end();
            let batch = match partition.read(pos, self.options.batch, 1 << 20) {
                Ok(batch) => batch,
                Err(LogError::OffsetBeforeStart { start, .. }) => {
                    g.skipped_by_retention.fetch_add(start - pos, Ordering::Relaxed);
                    tracing::warn!(group = %g.name, stream = %g.stream.name, partition = self.partition,
                        skipped = start - pos, "retention removed records before the group read them");
                    pos = start;
                    continue;
                }
                Err(e) => {
                    tracing::error!(group = %g.name, stream = %g.stream.name, partition = self.partition,
                        error = %e, "cannot read: the partition stops for this member until a rebalance");
                    self.stop.wait().await;
                    break;
                }
            };
            if batch.is_empty() {
                // Nothing from `pos` up to `end`: compaction may have removed every record there.
                // Committed in both modes (at most once, only such a jump leaves `pos` past it).
                pos = pos.max(end);
                if pos > last_commit {
                    self.commit(pos).await;
                    last_commit = pos;
                }
                tokio::select! {
                    () = partition.wait_past(pos) => {}
                    () = self.stop.wait() => {}
                }
                continue;
            }
            for r in batch {
                if self.stop.requested() {
                    break;
                }
                let offset = r.offset;
                let commit_first =
                    !at_least_once || crate::probe::thread_bug(|b| b.group_commits_before_handling);
                if commit_first {
                    // At most once: committed before the handler runs.
                    self.commit(offset + 1).await;
                    last_commit = offset + 1;
                }
                let record = StreamRecord::new(&g.stream.name, self.partition, r);
                if AssertUnwindSafe((self.handler)(record)).catch_unwind().await.is_err() {
                    tracing::error!(group = %g.name, stream = %g.stream.name, partition = self.partition,
                        offset, "a group handler panicked: the member leaves the group");
                    self.crashed.store(true, Ordering::Relaxed);
                    return true;
                }
                pos = offset + 1;
                self.processed.fetch_add(1, Ordering::Relaxed);
                g.processed.fetch_add(1, Ordering::Relaxed);
                if at_least_once && pos - last_commit >= u64::from(self.options.commit_every) {
                    self.commit(pos).await;
                    last_commit = pos;
                }
            }
        }
        if at_least_once && pos > last_commit {
            self.commit(pos).await;
        }
        false
    }
}
