//! Deterministic simulation: the same actors as production on one thread under paused time, with
//! seeded faults injected at the links between them, a history of every event, and checkers that judge
//! each delivery mode by its own promise.
//!
//! # Determinism
//! A simulated run uses one current-thread tokio runtime with paused time
//! (`actix::System::with_tokio_rt`), so actors run in a fixed order and time advances only when every
//! actor waits. Every random choice comes from one ChaCha generator seeded by the run's seed, and ids
//! come from counters. The same seed and fault plan give the same history, event for event.
//!
//! # Failure injection
//! See [`FaultPlan`]: drops, duplicates and delays on the queue → subscriber link, ack loss on the way
//! back, subscriber crashes before or after the handler, queue restarts that lose the in-memory state,
//! lost publisher confirms (the publisher retries with the same message id), and slow handlers. The
//! runtime meets the simulator at one seam, [`tubemail::probe`]: the injector here implements its
//! `Probe` trait, and the events and reasons a history records are its typed vocabulary.
//!
//! The log scenario ([`log`], [`run_log`]) puts a stream on disk and its consumer groups through
//! process kills, power losses, torn writes and handler crashes, and judges the log's and the groups'
//! promises ([`LogPromise`]); it meets the log at `tubemail_log::sim`, whose streams sync on the
//! simulator's thread and can be abandoned as a crash leaves them.

pub mod check;
mod fault;
mod harness;
pub mod history;
mod inject;
pub mod jobs;
mod lifecycle;
pub mod log;
mod run;
pub mod strategy;

pub use fault::{FaultPlan, MsRange};
pub use harness::{Harness, Verdict};
pub use lifecycle::{run_lifecycle, LifecycleRun, LIFECYCLE_OPS, LIFECYCLE_QUEUES, LIFECYCLE_SHUTDOWN};
pub use log::{run_log, LogFault, LogPromise, LogRun, LogScenario, LogViolation};
pub use run::{
    expectation, run, Scenario, SimRun, PUBLISH_ATTEMPTS_MAX, SCENARIO_ACK_TIMEOUT, SETTLE_TIME_MAX,
};
#[doc(hidden)]
pub use tubemail::probe::Bugs;
#[doc(hidden)]
pub use tubemail_log::broken::LogBugs;

pub use tubemail::probe::{DropReason, FaultKind, HandlerOutcome, RedeliverReason, What};
