//! Hooks for tubemail's simulator (`tubemail-sim`), hidden from the documentation: not for
//! applications.
//!
//! The simulator runs a broker and its streams on one thread and crashes them at seeded moments. For
//! a seed to replay the same run, nothing may happen on another thread or by the wall clock, and the
//! simulator must be able to crash a stream the broker owns. [`simulated`] gives both: streams opened
//! inside it (on this thread) run without a syncer thread and hand the simulator a [`SimStream`].
//!
//! A simulated stream differs from a production one only in *when* it syncs, never in what a sync
//! promises:
//! - under `always`, an append syncs on the appender's thread before it returns (production wakes
//!   the syncer thread and the appender waits for it: group commit);
//! - under `interval`, only [`SimStream::sync`] syncs (the simulator's tick), besides rolls and the
//!   clean close;
//! - checkpoints are written at open, roll and close, never by elapsed wall-clock time.
//!
//! Production streams never enter this module: the hooks cost a thread-local read when a stream is
//! opened, and nothing on the append, read or sync paths.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use crate::stream::Control;

thread_local! {
    /// The streams opened on this thread inside [`simulated`], when inside it.
    static OPENED: RefCell<Option<Vec<SimStream>>> = const { RefCell::new(None) };
}

/// Runs `f`; the streams opened on this thread while it runs are simulated (see the module) and
/// returned, in the order they were opened.
pub fn simulated<R>(f: impl FnOnce() -> R) -> (R, Vec<SimStream>) {
    struct Restore(Option<Vec<SimStream>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            OPENED.with(|o| *o.borrow_mut() = previous);
        }
    }
    let previous = OPENED.with(|o| o.borrow_mut().replace(Vec::new()));
    let restore = Restore(previous);
    let out = f();
    let opened = OPENED.with(|o| o.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (out, opened)
}

/// Whether a stream opened now is simulated.
pub(crate) fn simulating() -> bool {
    OPENED.with(|o| o.borrow().is_some())
}

/// Hands a simulated stream to the simulator.
pub(crate) fn opened(stream: SimStream) {
    OPENED.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            list.push(stream);
        }
    });
}

/// The simulator's handle on a stream that something else (the broker) owns.
#[derive(Clone)]
pub struct SimStream {
    name: String,
    control: Arc<Control>,
}

impl std::fmt::Debug for SimStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStream").field("name", &self.name).finish()
    }
}

impl SimStream {
    pub(crate) fn new(name: &str, control: Arc<Control>) -> Self {
        Self { name: name.to_owned(), control }
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Crashes the stream as its process would crash: see [`crate::Stream::abandon`].
    pub fn abandon(&self) {
        self.control.abandon();
    }

    /// Syncs every partition with unsynced appends: an `interval` tick. Does nothing under `never`
    /// or to an abandoned stream.
    pub fn sync(&self) {
        self.control.sync_once();
    }

    /// Each partition's active segment: its file, its length and what a sync covered.
    pub fn active_segments(&self) -> Vec<ActiveSegment> {
        self.control.partitions().iter().map(|p| p.active_segment()).collect()
    }
}

/// A partition's active segment, as a power loss would find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSegment {
    /// The partition.
    pub partition: u32,
    /// The segment's base offset.
    pub base: u64,
    /// Its `.log` file (`None` in memory).
    pub path: Option<PathBuf>,
    /// Bytes of whole frames written (in the page cache at least).
    pub len: u64,
    /// Bytes an `fdatasync` of this process covered: what a power loss keeps.
    pub synced: u64,
    /// The partition's high watermark.
    pub end: u64,
}
