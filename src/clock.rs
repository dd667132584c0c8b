//! Record timestamps for the log: streams and durable queues' journals.

/// Record timestamps: the wall clock when the broker started, moved on by tokio's clock (so a test
/// under a paused clock controls them too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    epoch_ms: i64,
    started: tokio::time::Instant,
}

impl Clock {
    pub(crate) fn new(started: tokio::time::Instant) -> Self {
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self { epoch_ms, started }
    }

    /// Milliseconds since the Unix epoch, now.
    pub(crate) fn now_ms(&self) -> i64 {
        self.epoch_ms + self.started.elapsed().as_millis() as i64
    }
}
