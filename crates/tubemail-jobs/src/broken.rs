//! Deliberately broken variants of the jobs, for the simulator's own tests that prove its checkers
//! catch real bugs. The switches exist in every build; they take effect only with the `broken`
//! feature, which only tubemail-sim's dev-dependencies (through the core's `broken` feature) turn
//! on. Switched per thread, so that other tests in the same process are unaffected.

use std::cell::Cell;

/// Which bugs are on for this thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobBugs {
    /// An iteration job checkpoints an item's cursor before it handles the item.
    pub checkpoint_before_item: bool,
    /// A shutdown's interruption drops running jobs instead of putting them back.
    pub shutdown_drops_running: bool,
    /// A unique job's lock is released when it fails and waits for its retry.
    pub unique_released_on_retry: bool,
}

thread_local! {
    static BUGS: Cell<JobBugs> = const { Cell::new(JobBugs {
        checkpoint_before_item: false,
        shutdown_drops_running: false,
        unique_released_on_retry: false,
    }) };
}

/// Sets this thread's bugs; returns the previous ones.
pub fn set_thread_bugs(bugs: JobBugs) -> JobBugs {
    BUGS.with(|b| b.replace(bugs))
}

/// This thread's bugs.
pub fn bugs() -> JobBugs {
    BUGS.with(Cell::get)
}
