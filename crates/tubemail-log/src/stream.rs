//! A stream: partitions chosen by key, and the syncer thread that gives `fsync` its promise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::config::{Fsync, StreamConfig};
use crate::partition::{Append, Maintenance, Partition};
use crate::LogError;

/// Where an appended record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Appended {
    /// Its partition.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
}

/// A stream of partitions.
pub struct Stream {
    name: String,
    config: Arc<StreamConfig>,
    partitions: Vec<Arc<Partition>>,
    round_robin: AtomicU32,
    control: Arc<Control>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("name", &self.name).field("config", &self.config).finish()
    }
}

/// The syncer's thread and whether the stream was abandoned (shared with the simulator's handle).
#[derive(Default)]
pub(crate) struct Control {
    partitions: Vec<Arc<Partition>>,
    /// Whether the policy syncs at all (not `never`, and on disk).
    syncs: bool,
    syncer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<SyncerShared>,
    abandoned: AtomicBool,
}

impl Control {
    /// Stops the syncer without its last sync and marks the stream so that neither `close` nor
    /// `Drop` syncs or checkpoints it, and its partitions so that they take no more appends: what a
    /// crash leaves.
    pub(crate) fn abandon(&self) {
        if self.abandoned.swap(true, Ordering::AcqRel) {
            return;
        }
        for p in &self.partitions {
            p.abandon();
        }
        if let Some(thread) = self.syncer.lock().expect("syncer").take() {
            self.shared.flags.lock().expect("syncer").abandon = true;
            self.shared.cond.notify_one();
            let _ = thread.join();
        }
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    pub(crate) fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    /// The syncer's work, once, on the caller's thread (unless the policy is `never`).
    pub(crate) fn sync_once(&self) {
        if !self.syncs || self.abandoned() {
            return;
        }
        for p in &self.partitions {
            if p.needs_sync() {
                p.sync_now();
            }
        }
    }
}

/// What the syncer is asked to do.
#[derive(Default)]
struct Flags {
    /// Sync now (an append under `always`).
    wake: bool,
    /// Sync once more and stop (the clean close).
    stop: bool,
    /// Stop without syncing (a crash).
    abandon: bool,
}

/// The syncer's wake-ups.
#[derive(Default)]
pub(crate) struct SyncerShared {
    flags: Mutex<Flags>,
    cond: Condvar,
}

impl SyncerShared {
    pub(crate) fn wake(&self) {
        let mut flags = self.flags.lock().expect("syncer");
        if !flags.wake {
            flags.wake = true;
            self.cond.notify_one();
        }
    }
}

/// The partition a key goes to: CRC-32C of the key modulo the partitions (stable across processes and
/// versions, as a record's partition must be).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    crc32c::crc32c(key) % partitions
}

impl Stream {
    pub(crate) fn open(name: &str, dir: Option<PathBuf>, config: StreamConfig) -> Result<Self, LogError> {
        let config = Arc::new(config);
        let shared = Arc::new(SyncerShared::default());
        let needs_syncer = dir.is_some() && config.fsync != Fsync::Never;
        // Under the simulator, syncs happen on its thread, in its order (see `crate::sim`).
        let simulated = crate::sim::simulating();
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for p in 0..config.partitions {
            let pdir = dir.as_ref().map(|d| d.join(p.to_string()));
            let syncer = needs_syncer.then(|| shared.clone());
            partitions.push(Arc::new(Partition::open(p, pdir, config.clone(), syncer, simulated)?));
        }
        let control = Arc::new(Control {
            partitions: partitions.clone(),
            syncs: needs_syncer,
            shared,
            ..Control::default()
        });
        let stream =
            Self { name: name.to_owned(), config, partitions, round_robin: AtomicU32::new(0), control };
        if needs_syncer && !simulated {
            stream.start_syncer()?;
        }
        if simulated {
            crate::sim::opened(crate::sim::SimStream::new(name, stream.control.clone()));
        }
        Ok(stream)
    }

    fn start_syncer(&self) -> Result<(), LogError> {
        let shared = self.control.shared.clone();
        let partitions = self.partitions.clone();
        let interval = match self.config.fsync {
            Fsync::Interval => Some(Duration::from_millis(self.config.fsync_interval_ms)),
            _ => None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("tubemail-sync-{}", self.name))
            .spawn(move || loop {
                let (stop, abandon) = {
                    let mut flags = shared.flags.lock().expect("syncer");
                    if !flags.wake && !flags.stop && !flags.abandon {
                        flags = match interval {
                            Some(period) => shared.cond.wait_timeout(flags, period).expect("syncer").0,
                            None => shared.cond.wait(flags).expect("syncer"),
                        };
                    }
                    flags.wake = false;
                    (flags.stop, flags.abandon)
                };
                if abandon {
                    return;
                }
                // One fdatasync per partition covers every append written before it started.
                for p in &partitions {
                    if p.needs_sync() {
                        p.sync_now();
                    }
                }
                if stop {
                    return;
                }
            })
            .map_err(|e| LogError::io("spawn the syncer of", std::path::Path::new(&self.name), e))?;
        *self.control.syncer.lock().expect("syncer") = Some(thread);
        Ok(())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Its partitions.
    pub fn partitions(&self) -> &[Arc<Partition>] {
        &self.partitions
    }

    /// Partition `p`.
    ///
    /// # Errors
    /// [`LogError::UnknownPartition`].
    pub fn partition(&self, p: u32) -> Result<&Arc<Partition>, LogError> {
        self.partitions
            .get(p as usize)
            .ok_or(LogError::UnknownPartition { partition: p, partitions: self.config.partitions })
    }

    /// The partition a record goes to: by key, or round robin without one.
    pub fn choose_partition(&self, key: Option<&[u8]>) -> u32 {
        match key {
            Some(key) => partition_for_key(key, self.config.partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % self.config.partitions,
        }
    }

    /// Writes one record. It is acked once [`Partition::acked`] (or `wait_acked`) of its offset
    /// returns: at once unless the policy is `always`.
    ///
    /// # Errors
    /// As [`Partition::append`].
    pub fn append(&self, record: Append<'_>) -> Result<Appended, LogError> {
        let partition = self.choose_partition(record.key);
        let (offset, _) = self.partitions[partition as usize].append(&[record])?;
        Ok(Appended { partition, offset })
    }

    /// Writes one record and blocks until it is acked.
    ///
    /// # Errors
    /// As [`Partition::append`] and [`Partition::wait_acked`].
    pub fn append_blocking(&self, record: Append<'_>) -> Result<Appended, LogError> {
        let appended = self.append(record)?;
        self.partitions[appended.partition as usize].wait_acked(appended.offset)?;
        Ok(appended)
    }

    /// Applies retention and compaction to every partition.
    ///
    /// # Errors
    /// The first partition's error.
    pub fn maintain(&self, now: i64) -> Result<Maintenance, LogError> {
        let mut total = Maintenance::default();
        for p in &self.partitions {
            let m = p.maintain(now)?;
            total.segments_deleted += m.segments_deleted;
            total.segments_compacted += m.segments_compacted;
            total.records_removed += m.records_removed;
        }
        Ok(total)
    }

    /// Syncs and checkpoints every partition and stops the syncer: the clean close. Also done on drop.
    /// Does nothing to an abandoned stream.
    ///
    /// # Errors
    /// The first partition's error.
    pub fn close(&self) -> Result<(), LogError> {
        if self.control.abandoned() {
            return Ok(());
        }
        if let Some(thread) = self.control.syncer.lock().expect("syncer").take() {
            self.control.shared.flags.lock().expect("syncer").stop = true;
            self.control.shared.cond.notify_one();
            let _ = thread.join();
        }
        self.partitions.iter().try_for_each(|p| p.close())
    }

    /// For the simulator (`tubemail-sim`), not for applications: leaves the stream as a crash of its
    /// process would. The syncer stops without its last sync, no checkpoint is written, appends fail
    /// ([`LogError::Failed`]), and neither [`Stream::close`] nor `Drop` closes it afterwards: what was
    /// written stays in the files (the page cache), what was synced is what a power loss would keep.
    #[doc(hidden)]
    pub fn abandon(&self) {
        self.control.abandon();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
