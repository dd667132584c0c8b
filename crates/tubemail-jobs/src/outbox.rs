//! The journal's writes on their way to disk: taken from the store under its lock, in the order the
//! store made them, and appended by one appender at a time, so that the journal holds them in that
//! order (a record is never appended after its own tombstone).
//!
//! Why not append under the store's lock: an append can wait 1–15 ms while ext4 commits its journal
//! for a concurrent `fdatasync`, and every worker waits for the store's lock meanwhile (measured:
//! a durable scheduled job's p99 start delay of 2–12 ms came from there). A worker settling its
//! jobs hands their writes to the outbox and goes on; a thread of its own appends them
//! ([`Outbox::run`]). What must be in the journal before the caller goes on (a checkpoint, a
//! cancellation, a periodic tick before its job can run, a shutdown) is drained at once
//! ([`Outbox::drain`]), which appends everything handed in before it, in order.
//!
//! On a current-thread runtime (the simulator, tests with paused time) there is no thread: every
//! write is drained where it is made, so a run is the same for a seed.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use tubemail_log::{Append, LogError, Partition};

use crate::store::Write;

/// Writes handed to the outbox and not yet appended, at most: past it, the writer drains them
/// itself (backpressure on the workers when the disk does not keep up).
pub const OUTBOX_WRITES_MAX: usize = 65_536;

/// How long the appender's thread waits after a failed append before it tries again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) struct Outbox {
    partition: Arc<Partition>,
    pending: Mutex<Pending>,
    /// Signalled when writes are handed in, or when the outbox stops.
    more: Condvar,
    /// Held while appending (one appender at a time): the last offset appended.
    appender: Mutex<Option<u64>>,
}

#[derive(Default)]
struct Pending {
    /// Batches of writes in the store's order, each with the time it was made (ms since the epoch).
    batches: Vec<(i64, Vec<Write>)>,
    writes: usize,
    stopped: bool,
    /// Writes dropped (a journal that kept refusing): every drain fails from then on.
    lost: usize,
}

/// An error the journal gives every time for the same write (too large, no key, a bad batch).
fn never(e: &LogError) -> bool {
    matches!(e, LogError::RecordTooLarge { .. } | LogError::KeyRequired | LogError::BatchSize { .. })
}

fn lost(writes: usize) -> LogError {
    LogError::Io {
        op: "append",
        path: "the jobs' journal".into(),
        source: std::io::Error::other(format!(
            "{writes} writes were dropped after the journal kept refusing them; restart to recover from the journal"
        )),
    }
}

impl Outbox {
    pub(crate) fn new(partition: Arc<Partition>) -> Arc<Outbox> {
        Arc::new(Outbox {
            partition,
            pending: Mutex::new(Pending::default()),
            more: Condvar::new(),
            appender: Mutex::new(None),
        })
    }

    /// Hands in `writes` made at `now` (called under the store's lock, which orders them). Returns
    /// whether the outbox holds more than [`OUTBOX_WRITES_MAX`]: the caller should drain it.
    pub(crate) fn push(&self, writes: Vec<Write>, now: i64) -> bool {
        if writes.is_empty() {
            return false;
        }
        let mut pending = self.pending.lock();
        if pending.lost > 0 {
            // The journal already lost writes (see [`Outbox::drain`]): these go with them.
            pending.lost += writes.len();
            return false;
        }
        pending.writes += writes.len();
        pending.batches.push((now, writes));
        let full = pending.writes > OUTBOX_WRITES_MAX;
        drop(pending);
        self.more.notify_one();
        full
    }

    /// Appends every write handed in so far, after any append under way; returns the last offset
    /// appended (at or past the offset of every write handed in before the call).
    ///
    /// # Errors
    /// The journal's. What was not appended stays in the outbox, first, for the next drain to try
    /// again (a write appended twice is harmless: the last write of a key wins, and the order
    /// holds), so a caller never gets an offset for writes that are not in the journal. Past
    /// [`OUTBOX_WRITES_MAX`] kept writes (a journal that keeps refusing), they are dropped, their
    /// number logged, and every later drain fails: the journal no longer holds what the store did.
    /// A single write the journal can never take (over its record bound) is dropped and logged,
    /// and does not hold back the others.
    pub(crate) fn drain(&self) -> Result<Option<u64>, LogError> {
        let mut last = self.appender.lock();
        let batches = {
            let mut pending = self.pending.lock();
            if pending.lost > 0 {
                return Err(lost(pending.lost));
            }
            pending.writes = 0;
            std::mem::take(&mut pending.batches)
        };
        for (i, (now, writes)) in batches.iter().enumerate() {
            if let Err(e) = self.append(*now, writes, &mut last) {
                self.keep(batches.into_iter().skip(i).collect(), &e);
                return Err(e);
            }
        }
        Ok(*last)
    }

    /// Appends one batch, at most [`tubemail_log::BATCH_RECORDS_MAX`] records at a time.
    fn append(&self, now: i64, writes: &[Write], last: &mut Option<u64>) -> Result<(), LogError> {
        let appends: Vec<Append<'_>> = writes
            .iter()
            .map(|w| Append { key: Some(&w.key), value: w.value.as_deref(), timestamp: now })
            .collect();
        for slice in appends.chunks(tubemail_log::BATCH_RECORDS_MAX) {
            match self.partition.append(slice) {
                Ok((_, offset)) => *last = Some(offset),
                // The journal checks a slice before it writes any of it: one at a time, the
                // writes it can take go in, and the one it never will is dropped.
                Err(e) if never(&e) => {
                    for one in slice {
                        match self.partition.append(std::slice::from_ref(one)) {
                            Ok((_, offset)) => *last = Some(offset),
                            Err(e) if never(&e) => {
                                tracing::error!(%e, key = ?one.key, "a jobs' journal write the journal refuses is dropped");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Puts back what a failed drain did not append, ahead of what was handed in meanwhile, up
    /// to the bound.
    fn keep(&self, mut kept: Vec<(i64, Vec<Write>)>, e: &LogError) {
        let mut pending = self.pending.lock();
        kept.append(&mut pending.batches);
        pending.writes = kept.iter().map(|(_, w)| w.len()).sum();
        pending.batches = kept;
        if pending.writes > OUTBOX_WRITES_MAX {
            tracing::error!(
                dropped = pending.writes,
                %e,
                "the jobs' journal keeps refusing writes: the outbox's writes are dropped"
            );
            pending.lost = pending.writes;
            pending.batches.clear();
            pending.writes = 0;
        }
    }

    /// The appender's loop, on a thread of its own: appends what is handed in until the outbox
    /// stops (what is left then is the stopper's to drain, or lost with a crash). After a failed
    /// append it waits [`RETRY_AFTER`] before it tries again.
    pub(crate) fn run(self: Arc<Self>) {
        loop {
            {
                let mut pending = self.pending.lock();
                while pending.batches.is_empty() && !pending.stopped {
                    self.more.wait(&mut pending);
                }
                if pending.stopped {
                    return;
                }
            }
            if let Err(e) = self.drain() {
                tracing::error!(%e, "the jobs' journal failed; its writes are kept and tried again");
                let mut pending = self.pending.lock();
                if pending.lost > 0 {
                    // Nothing more to try: every drain fails now. Wait for the stop.
                    while !pending.stopped {
                        self.more.wait(&mut pending);
                    }
                } else if !pending.stopped {
                    self.more.wait_for(&mut pending, RETRY_AFTER);
                }
            }
        }
    }

    /// Ends [`Outbox::run`] (without appending what is pending).
    pub(crate) fn stop(&self) {
        self.pending.lock().stopped = true;
        self.more.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tubemail_log::{Cleanup, LogDir, StreamConfig};

    fn write(n: u32) -> Write {
        Write { key: n.to_be_bytes().to_vec(), value: Some(vec![1]) }
    }

    #[test]
    fn a_failed_append_keeps_its_writes_until_the_bound_then_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogDir::open(dir.path()).unwrap();
        let config = StreamConfig { cleanup: Cleanup::Compact, ..StreamConfig::default() };
        let stream = log.stream("jobs", config).unwrap();
        let partition = Arc::clone(stream.partition(0).unwrap());
        let outbox = Outbox::new(Arc::clone(&partition));
        assert!(!outbox.push(vec![write(0), write(1)], 0));
        assert_eq!(outbox.drain().unwrap(), Some(1));
        // A journal that refuses (closed here): the writes stay, and no offset is returned for them.
        partition.close().unwrap();
        outbox.push(vec![write(2)], 0);
        outbox.push(vec![write(3)], 0);
        assert!(outbox.drain().is_err());
        assert_eq!(outbox.pending.lock().writes, 2, "kept for the next drain");
        assert!(outbox.drain().is_err());
        assert_eq!(outbox.pending.lock().writes, 2, "kept once, not twice");
        // Past the bound, a journal that keeps refusing does not make the outbox grow.
        let many: Vec<Write> = (0..OUTBOX_WRITES_MAX as u32).map(write).collect();
        assert!(outbox.push(many, 0), "past the bound: the writer should drain");
        assert!(outbox.drain().is_err());
        assert_eq!(outbox.pending.lock().writes, 0, "dropped (and logged) past the bound");
        assert!(outbox.pending.lock().batches.is_empty());
        // From then on no drain claims its writes are in the journal.
        outbox.push(vec![write(4)], 0);
        assert!(outbox.drain().is_err(), "writes were lost: every drain fails");
        assert_eq!(outbox.pending.lock().writes, 0);
    }

    #[test]
    fn a_write_the_journal_never_takes_is_dropped_and_the_others_go_in() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogDir::open(dir.path()).unwrap();
        let config =
            StreamConfig { cleanup: Cleanup::Compact, max_record_bytes: 1_024, ..StreamConfig::default() };
        let stream = log.stream("jobs", config).unwrap();
        let partition = Arc::clone(stream.partition(0).unwrap());
        let outbox = Outbox::new(Arc::clone(&partition));
        let huge = Write { key: b"huge".to_vec(), value: Some(vec![0; 4_096]) };
        outbox.push(vec![write(0), huge, write(1)], 0);
        outbox.push(vec![write(2)], 0);
        assert_eq!(outbox.drain().unwrap(), Some(2), "three of the four writes appended");
        assert_eq!(outbox.pending.lock().writes, 0);
    }
}
