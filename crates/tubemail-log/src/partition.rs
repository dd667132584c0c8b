//! A partition: an ordered list of segments, one writer, a high watermark, group commit, recovery,
//! retention and compaction.
//!
//! # Delivery guarantees
//! An append is acked (its `Pending` resolves) once the partition's fsync policy is met; an acked
//! record is never lost by a process crash under any policy, and by a machine crash only as the
//! policy says (see [`Fsync`]). Offsets below the high watermark are acked; a reader never sees a
//! record above it, so nothing unacked is ever read, let alone half-written.
//!
//! # Ordering
//! Offsets are dense from 0 and given in append order; they are never reused, even after retention
//! or compaction (compaction leaves gaps that readers skip).
//!
//! # Backpressure
//! Appends write to the page cache under the partition's lock and never wait for room; under
//! `fsync = "always"` an appender waits for the sync that covers its record, shared by every append
//! written before it started (group commit).
//!
//! # Shutdown
//! [`Partition::close`] syncs (unless `never`) and writes the recovery checkpoint, so the next open
//! scans nothing; after a crash, the next open scans only the active segment's tail past the
//! checkpoint, cuts a torn last frame, and (unless `never`) syncs what it keeps before it is read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;

use crate::config::{Fsync, StreamConfig};
use crate::record::{self, Record};
use crate::segment::{file_name, Segment};
use crate::LogError;

/// The recovery checkpoint's file, in a partition's folder.
pub const CHECKPOINT_FILE: &str = "recovery-point";
/// Checkpoints are written at most this often while appending (and always at close and roll).
const CHECKPOINT_EVERY_SECS: u64 = 1;
/// Records at most in one append call.
pub const BATCH_RECORDS_MAX: usize = 65_536;

/// A partition of a stream.
pub struct Partition {
    id: u32,
    dir: Option<PathBuf>,
    config: Arc<StreamConfig>,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// The next offset to write: records below it are written (in the page cache, or in memory).
    next: AtomicU64,
    /// The high watermark: records below it are acked and readable.
    acked: AtomicU64,
    /// The first offset kept (retention moves it).
    start: AtomicU64,
    sync: SyncState,
    /// Serializes retention and compaction.
    maintenance: Mutex<()>,
    recovered: Recovered,
    /// The stream's syncer, woken by appends under `always`.
    syncer: Option<Arc<crate::stream::SyncerShared>>,
    /// Opened under the simulator ([`crate::sim`]): no syncer thread (an append under `always` syncs
    /// on the appender's thread, an `interval` tick is the simulator's), no checkpoint by wall-clock
    /// time, so that a seed replays the same files.
    simulated: bool,
    /// Set by [`Partition::close`] under the writer's lock: no append is written after the close's
    /// last sync, and a later one gets [`LogError::Closed`] rather than wait for a syncer that has
    /// stopped.
    closed: AtomicBool,
}

/// What the open of a partition found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Bytes of torn frames cut from the active segment's end.
    pub torn_bytes: u64,
    /// Whether a checkpoint let the open skip what it vouched for.
    pub from_checkpoint: bool,
}

struct Writer {
    active: Arc<Segment>,
    /// The active segment's first timestamp (for `segment_ms`), kept here so that an append does
    /// not lock the segment's meta to decide whether to roll.
    active_first_timestamp: Option<i64>,
    frames: Vec<u8>,
    last_checkpoint: Instant,
}

#[derive(Default)]
struct SyncState {
    /// Offsets below this are on disk.
    synced: Mutex<u64>,
    changed: Condvar,
    notify: tokio::sync::Notify,
    /// `fdatasync` calls made for acks (group commit makes them fewer than appends).
    syncs: AtomicU64,
    /// Async waiters (`acked`, `wait_past`) now: appends skip the wake-up (a lock inside tokio's
    /// `Notify`) when there are none. A waiter counts itself and registers before it reads the
    /// watermark, an appender moves the watermark before it reads the count, each with a `SeqCst`
    /// fence between: one of them sees the other (`tests/loom_ack.rs`).
    waiting: std::sync::atomic::AtomicUsize,
    /// Held by whoever syncs: the syncer thread, or a blocked appender that syncs for itself (and
    /// every append written before it) rather than wait for the syncer's wake-up.
    leader: Mutex<()>,
    /// Set when an fdatasync failed: the partition then refuses appends (as PostgreSQL learned, a
    /// failed fsync cannot be retried safely).
    failed: Mutex<Option<String>>,
    /// Whether `failed` is set: the append path reads this, not the lock.
    has_failed: AtomicBool,
}

impl SyncState {
    /// After the watermark moved: wakes the async waiters, if any (the fence pairs with the one in
    /// [`Waiting::new`]; `tests/loom_ack.rs` models the pair).
    fn wake_waiters(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// An async waiter, counted while it waits.
struct Waiting<'a>(&'a SyncState);

impl<'a> Waiting<'a> {
    /// Counts a waiter. The caller then registers with the `Notify` and reads the watermark; the
    /// fence makes the count visible to an appender before that read (see `wake_waiters`).
    fn new(sync: &'a SyncState) -> Self {
        sync.waiting.fetch_add(1, Ordering::Relaxed);
        Self(sync)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One record to append.
#[derive(Debug, Clone, Copy)]
pub struct Append<'a> {
    /// Its key (required in a compacted stream).
    pub key: Option<&'a [u8]>,
    /// Its value; `None` with a key is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// Retention and compaction's work on one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Closed segments deleted by retention.
    pub segments_deleted: u64,
    /// Closed segments rewritten by compaction.
    pub segments_compacted: u64,
    /// Records compaction removed (older values of a key, expired tombstones).
    pub records_removed: u64,
}

/// A partition's figures, for `tubemail log inspect` and stats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition.
    pub partition: u32,
    /// The first offset kept.
    pub start: u64,
    /// The high watermark (the next offset to be acked).
    pub end: u64,
    /// Bytes of frames in all segments.
    pub bytes: u64,
    /// Its segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Index entries in memory (8 bytes each, plus 12 for the time index).
    pub index_entries: u64,
}

/// One segment's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its base offset (its file's name).
    pub base: u64,
    /// Its last offset, if it has records.
    pub last: Option<u64>,
    /// Bytes of frames.
    pub bytes: u64,
    /// Its newest record's timestamp.
    pub max_timestamp: i64,
}

impl Partition {
    /// Opens (or creates) partition `id` in `dir`, or in memory without one.
    pub(crate) fn open(
        id: u32,
        dir: Option<PathBuf>,
        config: Arc<StreamConfig>,
        syncer: Option<Arc<crate::stream::SyncerShared>>,
        simulated: bool,
    ) -> Result<Self, LogError> {
        let max_frame = config.max_record_bytes as usize;
        let mut segments = BTreeMap::new();
        let mut recovered = Recovered::default();
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|e| LogError::io("create", dir, e))?;
            let cleaning = dir.join(".cleaning");
            if cleaning.exists() {
                std::fs::remove_dir_all(&cleaning).map_err(|e| LogError::io("remove", &cleaning, e))?;
            }
            let bases = segment_bases(dir)?;
            let checkpoint = read_checkpoint(dir);
            for (i, &base) in bases.iter().enumerate() {
                let active = i + 1 == bases.len();
                let trusted = match checkpoint {
                    Some((b, pos)) if active && b == base => {
                        recovered.from_checkpoint = true;
                        pos
                    }
                    _ => 0,
                };
                // Below a checkpoint of synced bytes (any policy but `never`), damage is corruption,
                // never a torn tail to cut: those records were acked.
                let strict = if config.fsync == Fsync::Never { 0 } else { trusted };
                let (segment, torn) = Segment::open(dir, base, active, trusted, strict, max_frame)?;
                recovered.torn_bytes += torn;
                segments.insert(base, Arc::new(segment));
            }
        }
        let last_written =
            segments.values().rev().find_map(|s| s.meta.lock().expect("segment meta").last_offset);
        let next =
            last_written.map_or(0, |last| last + 1).max(segments.keys().next_back().copied().unwrap_or(0));
        let start = segments.keys().next().copied().unwrap_or(0);
        let active = match segments.values().next_back() {
            Some(active) => active.clone(),
            None => {
                let segment = Arc::new(new_segment(dir.as_deref(), next)?);
                segments.insert(next, segment.clone());
                segment
            }
        };
        let first_timestamp = active.meta.lock().expect("segment meta").first_timestamp;
        let partition = Self {
            id,
            dir,
            config,
            segments: RwLock::new(segments),
            writer: Mutex::new(Writer {
                active_first_timestamp: first_timestamp,
                active,
                frames: Vec::new(),
                last_checkpoint: Instant::now(),
            }),
            next: AtomicU64::new(next),
            acked: AtomicU64::new(next),
            start: AtomicU64::new(start),
            sync: SyncState::default(),
            maintenance: Mutex::new(()),
            recovered,
            syncer,
            simulated,
            closed: AtomicBool::new(false),
        };
        *partition.sync.synced.lock().expect("synced") = next;
        if partition.dir.is_some() && partition.config.fsync != Fsync::Never {
            // What recovery found may be in the page cache only (a crash kept it there), and it is
            // acked and readable from now on: on disk first, as an append's bytes are.
            let active = partition.writer.lock().expect("writer").active.clone();
            active.sync()?;
        }
        // What was found is now the state to recover to: a checkpoint right away, of synced bytes
        // (unless the policy is `never`, whose checkpoints are only hints).
        partition.write_checkpoint()?;
        Ok(partition)
    }

    /// The partition's number.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// What the open found.
    pub fn recovered(&self) -> Recovered {
        self.recovered
    }

    /// For the simulator (`tubemail-sim`), not for applications: the active segment's base offset
    /// and the bytes of it that an `fdatasync` of this process covered, which is what a power loss
    /// keeps of it (a segment opened by recovery starts at 0: its bytes may be in the page cache only).
    #[doc(hidden)]
    pub fn synced_position(&self) -> (u64, u64) {
        let active = self.writer.lock().expect("writer").active.clone();
        (active.base, active.synced())
    }

    /// Offsets below this are on disk: an `fdatasync` covered them (on disk under `always` and
    /// `interval`; under `never` only what a roll or a close synced).
    pub fn synced_end(&self) -> u64 {
        *self.sync.synced.lock().expect("synced")
    }

    /// Whether the partition syncs its records to disk (on disk, under `always` or `interval`).
    pub fn syncs_to_disk(&self) -> bool {
        self.dir.is_some() && self.config.fsync != Fsync::Never
    }

    /// Syncs every record written so far (an `fdatasync`, blocking), where the partition syncs at
    /// all ([`Partition::syncs_to_disk`]): what a consumer group does before it commits an offset
    /// under `interval`, so that a commit never reaches the disk before the records it counts.
    ///
    /// # Errors
    /// [`LogError::Failed`] when the sync failed.
    pub fn sync(&self) -> Result<(), LogError> {
        if self.syncs_to_disk() {
            self.sync_now();
        }
        self.check_failed()
    }

    /// Whether the stream runs inside the simulator (syncs on the caller's thread).
    #[doc(hidden)]
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// The active segment as the simulator sees it.
    pub(crate) fn active_segment(&self) -> crate::sim::ActiveSegment {
        let active = self.writer.lock().expect("writer").active.clone();
        crate::sim::ActiveSegment {
            partition: self.id,
            base: active.base,
            path: active.path.clone(),
            len: active.len(),
            synced: active.synced(),
            end: self.end(),
        }
    }

    /// `fdatasync` calls made so far by the syncer (group commit: fewer than appends).
    pub fn syncs(&self) -> u64 {
        self.sync.syncs.load(Ordering::Relaxed)
    }

    /// The high watermark: the next offset to be acked.
    pub fn end(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// The first offset kept.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::Acquire)
    }

    /// Writes `records` at the next offsets and returns the first and last; they are acked (and
    /// readable) at once unless the policy is `always`, where [`Partition::wait_acked`] or
    /// [`Partition::acked`] waits for the covering sync.
    ///
    /// # Errors
    /// [`LogError::RecordTooLarge`], [`LogError::KeyRequired`] in a compacted stream,
    /// [`LogError::Failed`] after a failed sync, [`LogError::Io`] (nothing of the batch stays).
    pub fn append(&self, records: &[Append<'_>]) -> Result<(u64, u64), LogError> {
        if records.is_empty() || records.len() > BATCH_RECORDS_MAX {
            return Err(LogError::BatchSize { records: records.len(), max: BATCH_RECORDS_MAX });
        }
        let max = self.config.max_record_bytes as usize;
        for r in records {
            let bytes = record::frame_len(r.key, r.value);
            if bytes > max {
                return Err(LogError::RecordTooLarge { bytes, max });
            }
            if r.key.is_none() && self.config.cleanup.compacts() {
                return Err(LogError::KeyRequired);
            }
        }
        self.check_failed()?;
        let mut writer = self.writer.lock().expect("writer");
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        let first = self.next.load(Ordering::Relaxed);
        let last = first + records.len() as u64 - 1;
        let mut frames = std::mem::take(&mut writer.frames);
        frames.clear();
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for (i, r) in records.iter().enumerate() {
            record::encode(&mut frames, first + i as u64, r.timestamp, r.key, r.value);
            min_ts = min_ts.min(r.timestamp);
            max_ts = max_ts.max(r.timestamp);
        }
        if self.should_roll(&writer, frames.len() as u64, records[0].timestamp) {
            self.roll(&mut writer, first)?;
        }
        writer.active_first_timestamp.get_or_insert(min_ts);
        let written = writer.active.append(&frames, first, last, min_ts, max_ts);
        writer.frames = frames;
        written?;
        self.next.store(last + 1, Ordering::Release);
        if let (Fsync::Always, Some(syncer)) = (self.config.fsync, &self.syncer) {
            drop(writer);
            if self.simulated {
                self.sync_now();
            } else {
                syncer.wake();
            }
        } else {
            self.acked.store(last + 1, Ordering::Release);
            self.sync.wake_waiters();
            // Under `interval` the syncer writes the checkpoints, of synced bytes only; under
            // `never` nothing is synced, and a checkpoint is only a hint of how far to scan.
            let hint = self.config.fsync == Fsync::Never;
            if hint
                && self.dir.is_some()
                && !self.simulated
                && writer.last_checkpoint.elapsed().as_secs() >= CHECKPOINT_EVERY_SECS
            {
                writer.last_checkpoint = Instant::now();
                drop(writer);
                // A checkpoint is a hint for the next open: its failure costs a longer scan only.
                let _ = self.write_checkpoint();
            }
        }
        Ok((first, last))
    }

    fn should_roll(&self, writer: &Writer, bytes: u64, timestamp: i64) -> bool {
        let len = writer.active.len();
        if len == 0 {
            return false;
        }
        let too_big = len + bytes > self.config.segment_bytes;
        let first = writer.active_first_timestamp;
        let too_old = first.is_some_and(|t| timestamp.saturating_sub(t) >= self.config.segment_ms as i64);
        too_big || too_old
    }

    /// Closes the active segment and starts one at `base`.
    fn roll(&self, writer: &mut Writer, base: u64) -> Result<(), LogError> {
        let sync = self.config.fsync != Fsync::Never;
        writer.active.seal(sync)?;
        let segment = Arc::new(new_segment(self.dir.as_deref(), base)?);
        self.segments.write().expect("segments").insert(base, segment.clone());
        writer.active = segment;
        writer.active_first_timestamp = None;
        writer.last_checkpoint = Instant::now();
        self.write_checkpoint_of(&writer.active, 0)
    }

    /// Blocks until offset `offset` is acked.
    ///
    /// # Errors
    /// [`LogError::Failed`] when a sync failed.
    pub fn wait_acked(&self, offset: u64) -> Result<(), LogError> {
        let mut synced = self.sync.synced.lock().expect("synced");
        loop {
            self.check_failed()?;
            if self.end() > offset {
                return Ok(());
            }
            self.check_closed(offset)?;
            // No sync running: this thread syncs, sparing the hop to the syncer thread and back.
            if self.config.fsync == Fsync::Always && self.syncer.is_some() {
                if let Ok(_leader) = self.sync.leader.try_lock() {
                    drop(synced);
                    self.sync_locked();
                    synced = self.sync.synced.lock().expect("synced");
                    continue;
                }
            }
            // Syncs notify under this lock; appends that ack at once do not, hence the timeout.
            synced = self
                .sync
                .changed
                .wait_timeout(synced, std::time::Duration::from_millis(10))
                .expect("synced")
                .0;
        }
    }

    /// Resolves once offset `offset` is acked.
    ///
    /// # Errors
    /// [`LogError::Failed`] when a sync failed.
    pub async fn acked(&self, offset: u64) -> Result<(), LogError> {
        if self.end() > offset {
            return Ok(());
        }
        let _waiting = Waiting::new(&self.sync);
        loop {
            let notified = self.sync.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            std::sync::atomic::fence(Ordering::SeqCst);
            self.check_failed()?;
            if self.acked.load(Ordering::Acquire) > offset {
                return Ok(());
            }
            self.check_closed(offset)?;
            notified.await;
        }
    }

    /// Resolves once the high watermark passes `offset` (a tailing reader's wait).
    pub async fn wait_past(&self, offset: u64) {
        if self.end() > offset {
            return;
        }
        let _waiting = Waiting::new(&self.sync);
        loop {
            let notified = self.sync.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.acked.load(Ordering::Acquire) > offset || self.check_failed().is_err() {
                return;
            }
            notified.await;
        }
    }

    /// A crash of the stream (see [`crate::Stream::abandon`]): no more appends.
    pub(crate) fn abandon(&self) {
        let mut failed = self.sync.failed.lock().expect("failed");
        failed.get_or_insert_with(|| "the stream was abandoned as a crash leaves it".to_owned());
        self.sync.has_failed.store(true, Ordering::Release);
        drop(failed);
        self.sync.changed.notify_all();
        self.sync.notify.notify_waiters();
    }

    /// After a close, an offset the close's sync did not ack never will be.
    fn check_closed(&self, offset: u64) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire)
            && self.acked.load(Ordering::Acquire) <= offset
            && !self.needs_sync()
        {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    fn check_failed(&self) -> Result<(), LogError> {
        if !self.sync.has_failed.load(Ordering::Acquire) {
            return Ok(());
        }
        match &*self.sync.failed.lock().expect("failed") {
            Some(why) => Err(LogError::Failed { why: why.clone() }),
            None => Ok(()),
        }
    }

    /// Whether written records wait for a sync.
    pub(crate) fn needs_sync(&self) -> bool {
        self.next.load(Ordering::Acquire) > *self.sync.synced.lock().expect("synced")
    }

    /// Syncs what is written and acks it (under `always`). Called by the stream's syncer thread:
    /// every append written before the call shares this one `fdatasync`.
    pub(crate) fn sync_now(&self) {
        let _leader = self.sync.leader.lock().expect("sync leader");
        self.sync_locked();
    }

    /// [`Partition::sync_now`] with the leader's lock held.
    fn sync_locked(&self) {
        // Read together under the writer's lock: every byte of the records below `target` is below
        // `len` in `active` (or in a sealed segment, which was synced when it was sealed).
        let (target, active, len) = {
            let writer = self.writer.lock().expect("writer");
            (self.next.load(Ordering::Acquire), writer.active.clone(), writer.active.len())
        };
        if target <= *self.sync.synced.lock().expect("synced") {
            return;
        }
        match active.sync() {
            Ok(()) => {
                self.sync.syncs.fetch_add(1, Ordering::Relaxed);
                let mut synced = self.sync.synced.lock().expect("synced");
                *synced = (*synced).max(target);
                if self.config.fsync == Fsync::Always {
                    self.acked.fetch_max(target, Ordering::Release);
                }
                drop(synced);
                self.sync.changed.notify_all();
                self.sync.wake_waiters();
                let mut writer = self.writer.lock().expect("writer");
                if !self.simulated && writer.last_checkpoint.elapsed().as_secs() >= CHECKPOINT_EVERY_SECS {
                    writer.last_checkpoint = Instant::now();
                    drop(writer);
                    // Of synced bytes only: recovery then reports damage below it as corruption.
                    let _ = self.write_checkpoint_of(&active, len);
                }
            }
            Err(e) => {
                *self.sync.failed.lock().expect("failed") = Some(e.to_string());
                self.sync.has_failed.store(true, Ordering::Release);
                self.sync.changed.notify_all();
                self.sync.wake_waiters();
            }
        }
    }

    /// Syncs, acks and checkpoints everything written: the partition's clean close.
    ///
    /// # Errors
    /// [`LogError::Io`] when the sync or the checkpoint fails.
    pub fn close(&self) -> Result<(), LogError> {
        {
            let _writer = self.writer.lock().expect("writer");
            self.closed.store(true, Ordering::Release);
        }
        if self.config.fsync != Fsync::Never {
            self.sync_now();
            self.check_failed()?;
        }
        self.write_checkpoint()
    }

    fn write_checkpoint(&self) -> Result<(), LogError> {
        let active = self.writer.lock().expect("writer").active.clone();
        self.write_checkpoint_of(&active, active.len())
    }

    fn write_checkpoint_of(&self, active: &Segment, position: u64) -> Result<(), LogError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let mut bytes = Vec::with_capacity(20);
        bytes.extend_from_slice(&active.base.to_le_bytes());
        bytes.extend_from_slice(&position.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let path = dir.join(CHECKPOINT_FILE);
        std::fs::write(&path, &bytes).map_err(|e| LogError::io("write", &path, e))
    }

    /// Reads records from `from`, up to `max_records` and about `max_bytes`.
    ///
    /// # Errors
    /// [`LogError::OffsetBeforeStart`] below the first kept offset, [`LogError::OffsetPastEnd`]
    /// past the high watermark, [`LogError::Corrupt`] on damage.
    pub fn read(&self, from: u64, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, LogError> {
        let (start, end) = (self.start(), self.end());
        if from < start {
            return Err(LogError::OffsetBeforeStart { offset: from, start });
        }
        if from > end {
            return Err(LogError::OffsetPastEnd { offset: from, end });
        }
        let mut out = Vec::new();
        let segments: Vec<Arc<Segment>> = {
            let segments = self.segments.read().expect("segments");
            let first = segments.range(..=from).next_back().map_or(start, |(&b, _)| b);
            segments.range(first..).map(|(_, s)| s.clone()).collect()
        };
        let max_frame = self.config.max_record_bytes as usize;
        for segment in segments {
            if out.len() >= max_records || segment.base >= end {
                break;
            }
            let from = out.last().map_or(from, |r: &Record| r.offset + 1);
            let done = segment.read(from, end, max_records - out.len(), max_bytes, max_frame, &mut out)?;
            if !done {
                break;
            }
        }
        Ok(out)
    }

    /// Calls `f` with every record from the start to the high watermark, in offset order, reading
    /// 4,096 records (or about `max_bytes`, but at least one record) at a time: how a compacted
    /// stream's state is read back at open.
    ///
    /// # Errors
    /// As [`Partition::read`].
    pub fn for_each_record(&self, max_bytes: usize, mut f: impl FnMut(Record)) -> Result<(), LogError> {
        let mut from = self.start();
        loop {
            let records = self.read(from, 4096, max_bytes)?;
            let Some(last) = records.last() else { return Ok(()) };
            from = last.offset + 1;
            records.into_iter().for_each(&mut f);
        }
    }

    /// The first offset whose record's timestamp is at or after `timestamp` (the high watermark when
    /// none is).
    ///
    /// # Errors
    /// [`LogError::Corrupt`] on damage.
    pub fn offset_for_time(&self, timestamp: i64) -> Result<u64, LogError> {
        let segments: Vec<Arc<Segment>> = self.segments.read().expect("segments").values().cloned().collect();
        let end = self.end();
        for segment in segments {
            if segment.meta.lock().expect("segment meta").max_timestamp < timestamp {
                continue;
            }
            let mut from = segment.offset_for_time(timestamp).unwrap_or(segment.base).max(self.start());
            loop {
                let batch = match self.read(from, 1024, 1 << 20) {
                    Ok(batch) => batch,
                    Err(LogError::OffsetPastEnd { .. }) => return Ok(end),
                    Err(e) => return Err(e),
                };
                let Some(last) = batch.last() else { return Ok(end) };
                if let Some(r) = batch.iter().find(|r| r.timestamp >= timestamp) {
                    return Ok(r.offset);
                }
                from = last.offset + 1;
            }
        }
        Ok(end)
    }

    /// Applies retention and compaction to closed segments, as the stream's cleanup says. `now` is
    /// milliseconds since the Unix epoch.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`]; what was done before stays done.
    pub fn maintain(&self, now: i64) -> Result<Maintenance, LogError> {
        let _one = self.maintenance.lock().expect("maintenance");
        let mut work = Maintenance::default();
        if self.config.cleanup.deletes() {
            work.segments_deleted = self.apply_retention(now)?;
        }
        if self.config.cleanup.compacts() {
            let (segments, records) = self.compact(now)?;
            work.segments_compacted = segments;
            work.records_removed = records;
        }
        Ok(work)
    }

    /// Compacts the whole partition, for a log whose records matter only by key (a durable queue's
    /// journal): closes the active segment when it holds records (so that its records, tombstones
    /// above all, count too), compacts every closed segment as [`Partition::maintain`] does, and
    /// removes the closed segments left empty (the partition's start moves past those at the front).
    /// Afterwards the partition holds the last record of each key that is not an expired tombstone,
    /// and nothing else. Offsets never change; a read skips the ranges of removed segments.
    ///
    /// # Errors
    /// [`LogError::Io`] or [`LogError::Corrupt`]; what was done before stays done.
    pub fn compact_all(&self, now: i64) -> Result<Maintenance, LogError> {
        let _one = self.maintenance.lock().expect("maintenance");
        {
            let mut writer = self.writer.lock().expect("writer");
            if writer.active.len() > 0 {
                let base = self.next.load(Ordering::Acquire);
                self.roll(&mut writer, base)?;
            }
        }
        let (segments_compacted, records_removed) = self.compact(now)?;
        let mut segments_deleted = 0;
        let active = self.writer.lock().expect("writer").active.base;
        for segment in self.closed_segments() {
            if segment.len() > 0 {
                continue;
            }
            let mut segments = self.segments.write().expect("segments");
            segments.remove(&segment.base);
            let first = segments.keys().next().copied().unwrap_or(active);
            self.start.store(self.start().max(first.min(active)), Ordering::Release);
            drop(segments);
            segment.remove_files()?;
            segments_deleted += 1;
        }
        Ok(Maintenance { segments_deleted, segments_compacted, records_removed })
    }

    fn closed_segments(&self) -> Vec<Arc<Segment>> {
        let active = self.writer.lock().expect("writer").active.base;
        self.segments.read().expect("segments").range(..active).map(|(_, s)| s.clone()).collect()
    }

    fn apply_retention(&self, now: i64) -> Result<u64, LogError> {
        let c = &self.config;
        let closed = self.closed_segments();
        let mut total: u64 = self.segments.read().expect("segments").values().map(|s| s.len()).sum();
        let end = self.end();
        let mut deleted = 0;
        for (i, segment) in closed.iter().enumerate() {
            let next_base =
                closed.get(i + 1).map_or_else(|| self.writer.lock().expect("writer").active.base, |s| s.base);
            let max_ts = segment.meta.lock().expect("segment meta").max_timestamp;
            let by_age = c.retention_ms.is_some_and(|ms| max_ts < now.saturating_sub(ms as i64));
            let by_bytes = c.retention_bytes.is_some_and(|max| total - segment.len() >= max);
            let by_records = c.retention_records.is_some_and(|max| end - next_base >= max);
            if !(by_age || by_bytes || by_records) {
                break;
            }
            self.segments.write().expect("segments").remove(&segment.base);
            self.start.store(next_base, Ordering::Release);
            total -= segment.len();
            segment.remove_files()?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Keeps the last record of each key in closed segments, and drops tombstones older than
    /// `delete_retention_ms`. Offsets never change; each rewritten segment replaces its file
    /// atomically (a rename), so a crash leaves the old or the new one.
    fn compact(&self, now: i64) -> Result<(u64, u64), LogError> {
        let closed = self.closed_segments();
        let max_frame = self.config.max_record_bytes as usize;
        // The last offset of each key in the closed segments. Only looked up, never iterated.
        let mut last: HashMap<Bytes, u64> = HashMap::new();
        let mut contents = Vec::with_capacity(closed.len());
        // Broken: the second-to-last offset of each key is kept instead of its last.
        let keeps_previous = crate::broken::bug(|b| b.compaction_drops_latest);
        let mut previous: HashMap<Bytes, u64> = HashMap::new();
        for segment in &closed {
            let mut records = Vec::new();
            segment.read(0, u64::MAX, usize::MAX, usize::MAX, max_frame, &mut records)?;
            for r in &records {
                if let Some(key) = &r.key {
                    if let Some(before) = last.insert(key.clone(), r.offset) {
                        if keeps_previous {
                            previous.insert(key.clone(), before);
                        }
                    }
                }
            }
            contents.push(records);
        }
        if keeps_previous {
            for (key, before) in previous {
                last.insert(key, before);
            }
        }
        let (mut rewritten, mut removed) = (0, 0);
        for (segment, records) in closed.iter().zip(contents) {
            let keep = |r: &Record| {
                let Some(key) = &r.key else { return true };
                let latest = last.get(key) == Some(&r.offset);
                let expired_tombstone = r.is_tombstone()
                    && r.timestamp.saturating_add(self.config.delete_retention_ms as i64) < now;
                latest && !expired_tombstone
            };
            let kept: Vec<&Record> = records.iter().filter(|r| keep(r)).collect();
            if kept.len() == records.len() {
                continue;
            }
            removed += (records.len() - kept.len()) as u64;
            rewritten += 1;
            let replacement = self.rewrite(segment.base, &kept)?;
            self.segments.write().expect("segments").insert(segment.base, Arc::new(replacement));
        }
        Ok((rewritten, removed))
    }

    fn rewrite(&self, base: u64, records: &[&Record]) -> Result<Segment, LogError> {
        let staging = self.dir.as_ref().map(|d| d.join(".cleaning"));
        if let Some(staging) = &staging {
            std::fs::create_dir_all(staging).map_err(|e| LogError::io("create", staging, e))?;
        }
        let segment = new_segment(staging.as_deref(), base)?;
        let mut frames = Vec::new();
        for r in records {
            frames.clear();
            record::encode(&mut frames, r.offset, r.timestamp, r.key.as_deref(), r.value.as_deref());
            segment.append(&frames, r.offset, r.offset, r.timestamp, r.timestamp)?;
        }
        let (Some(dir), Some(staging)) = (&self.dir, &staging) else { return Ok(segment) };
        segment.seal(true)?;
        // The frames first: a crash before the index files' renames leaves an index that the next
        // open finds wrong and rebuilds.
        for ext in ["log", "index", "timeindex"] {
            let (from, to) = (staging.join(file_name(base, ext)), dir.join(file_name(base, ext)));
            std::fs::rename(&from, &to).map_err(|e| LogError::io("rename", &from, e))?;
        }
        sync_dir(dir)?;
        let (segment, _) = Segment::open(dir, base, false, 0, 0, self.config.max_record_bytes as usize)?;
        Ok(segment)
    }

    /// The partition's figures.
    pub fn info(&self) -> PartitionInfo {
        let segments: Vec<Arc<Segment>> = self.segments.read().expect("segments").values().cloned().collect();
        let infos: Vec<SegmentInfo> = segments
            .iter()
            .map(|s| {
                let meta = s.meta.lock().expect("segment meta");
                SegmentInfo {
                    base: s.base,
                    last: meta.last_offset,
                    bytes: s.len(),
                    max_timestamp: meta.max_timestamp,
                }
            })
            .collect();
        PartitionInfo {
            partition: self.id,
            start: self.start(),
            end: self.end(),
            bytes: infos.iter().map(|s| s.bytes).sum(),
            index_entries: segments.iter().map(|s| s.index_entries() as u64).sum(),
            segments: infos,
        }
    }

    /// Reads every record of every segment, checking each frame: `tubemail log verify`.
    ///
    /// # Errors
    /// The first damage found, naming its file and byte position.
    pub fn verify(&self) -> Result<u64, LogError> {
        let segments: Vec<Arc<Segment>> = self.segments.read().expect("segments").values().cloned().collect();
        let max_frame = self.config.max_record_bytes as usize;
        let mut records = 0;
        let mut previous: Option<u64> = None;
        for segment in segments {
            let mut out = Vec::new();
            segment.read(0, u64::MAX, usize::MAX, usize::MAX, max_frame, &mut out)?;
            for r in &out {
                if previous.is_some_and(|p| r.offset <= p) {
                    return Err(LogError::Corrupt {
                        file: segment.describe(),
                        position: 0,
                        why: "offsets out of order across segments",
                    });
                }
                previous = Some(r.offset);
            }
            records += out.len() as u64;
        }
        Ok(records)
    }
}

fn new_segment(dir: Option<&Path>, base: u64) -> Result<Segment, LogError> {
    match dir {
        Some(dir) => Segment::create(dir, base),
        None => Ok(Segment::memory(base)),
    }
}

/// The base offsets of the segment files in `dir`, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log") {
            match stem.parse::<u64>() {
                Ok(base) if stem.len() == 20 => bases.push(base),
                _ => {
                    return Err(LogError::NotALog {
                        path: entry.path(),
                        why: "a .log file whose name is not a 20-digit base offset".into(),
                    })
                }
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// The checkpoint: the active segment's base and a byte position below which its frames were whole
/// when it was written.
fn read_checkpoint(dir: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(dir.join(CHECKPOINT_FILE)).ok()?;
    if bytes.len() != 20 || crc32c::crc32c(&bytes[..16]).to_le_bytes() != bytes[16..20] {
        return None;
    }
    let base = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let position = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    Some((base, position))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| LogError::io("fsync", dir, e))
}
