//! Deliberately broken variants of the log, so that the simulator's own tests can prove its checkers
//! catch real bugs (as the core's `probe::Bugs`). Hidden from the documentation; the log acts on them
//! only when compiled with the `broken` feature, which only `tubemail-sim`'s tests enable (through
//! the core's `broken` feature): no application or release build of the command contains them.
//!
//! The switch is per thread, so that tests running in parallel do not see each other's bugs: the
//! simulator runs a whole broker on one thread, and recovery (opening a stream) and maintenance
//! ([`crate::Stream::maintain`]) run on the thread that calls them.

/// Whether this build of the log acts on [`LogBugs`] (the `broken` feature).
pub const BROKEN_VARIANTS_COMPILED: bool = cfg!(feature = "broken");

/// The broken variants of the log; all off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBugs {
    /// Recovery keeps a torn last frame whose CRC fails (a whole-length frame with part of its
    /// payload unwritten) instead of cutting it: it "repairs" the frame's CRC and reads it as a record.
    pub recovery_keeps_torn_record: bool,
    /// Compaction keeps the second-to-last record of a key instead of its last one.
    pub compaction_drops_latest: bool,
}

#[cfg(feature = "broken")]
thread_local! {
    static BUGS: std::cell::Cell<LogBugs> = const {
        std::cell::Cell::new(LogBugs { recovery_keeps_torn_record: false, compaction_drops_latest: false })
    };
}

/// Turns the broken variants `bugs` on for this thread (all off: `LogBugs::default()`) and returns
/// what was on before. Without the `broken` feature, nothing is turned on.
pub fn set_thread_bugs(bugs: LogBugs) -> LogBugs {
    #[cfg(feature = "broken")]
    {
        BUGS.with(|b| b.replace(bugs))
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = bugs;
        LogBugs::default()
    }
}

/// Whether this thread asks for the broken variant `bug`; always `false` without the `broken`
/// feature, so that the broken paths are not even compiled.
#[inline(always)]
#[allow(dead_code)]
pub(crate) fn bug(bug: impl Fn(&LogBugs) -> bool) -> bool {
    #[cfg(feature = "broken")]
    {
        BUGS.with(|b| bug(&b.get()))
    }
    #[cfg(not(feature = "broken"))]
    {
        let _ = bug;
        false
    }
}
