//! The broker's stream methods: append, read, join a consumer group, maintain.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::{Broker, STREAM_MAINTENANCE_EVERY};
use crate::message::PayloadError;
use crate::stream::{
    AppendError, Appended, GroupError, GroupMember, GroupOptions, ReadError, Reader, StartFrom, StreamHandle,
    StreamRecord,
};

/// The longest consumer group name.
pub const GROUP_NAME_MAX: usize = 200;

impl Broker {
    /// Appends `value` (as MessagePack) to `stream` under `key` (an empty key is no key: keyless
    /// records spread round robin) and resolves once it is acked under the stream's fsync policy.
    ///
    /// # Errors
    /// [`AppendError::UnknownStream`], [`AppendError::Encode`], [`AppendError::Log`] (a record over
    /// `max_record_bytes`, a full disk, a failed sync: nothing of it stays), [`AppendError::Closed`].
    pub async fn append<T: Serialize>(
        &self,
        stream: &str,
        key: &str,
        value: &T,
    ) -> Result<Appended, AppendError> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| PayloadError::Encode {
            type_name: std::any::type_name::<T>(),
            reason: e.to_string(),
        })?;
        self.append_raw(stream, key, Some(&bytes)).await
    }

    /// Appends raw bytes; see [`Broker::append`].
    ///
    /// # Errors
    /// As [`Broker::append`].
    pub async fn append_bytes(
        &self,
        stream: &str,
        key: &str,
        value: impl Into<Bytes>,
    ) -> Result<Appended, AppendError> {
        self.append_raw(stream, key, Some(&value.into())).await
    }

    /// Appends a tombstone: `key` with no value, which compaction later removes with every older
    /// record of the key (after the stream's `delete_retention_ms`).
    ///
    /// # Errors
    /// As [`Broker::append`].
    pub async fn append_tombstone(&self, stream: &str, key: &str) -> Result<Appended, AppendError> {
        self.append_raw(stream, key, None).await
    }

    async fn append_raw(
        &self,
        stream: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Appended, AppendError> {
        if self.registry.is_closed() {
            return Err(AppendError::Closed);
        }
        let handle = self.stream(stream).ok_or_else(|| AppendError::UnknownStream(stream.to_owned()))?;
        let appended = handle.write(key, value, self.registry.streams.clock.now_ms())?;
        handle.acked(appended).await?;
        Ok(appended)
    }

    fn stream(&self, name: &str) -> Option<&Arc<StreamHandle>> {
        self.registry.streams.get(name)
    }

    /// A reader of one partition of `stream`, from `from`: replays, then tails (see [`Reader`]).
    ///
    /// # Errors
    /// [`ReadError::UnknownStream`], or the log's error for an unknown partition.
    pub fn reader(&self, stream: &str, partition: u32, from: StartFrom) -> Result<Reader, ReadError> {
        let handle = self.stream(stream).ok_or_else(|| ReadError::UnknownStream(stream.to_owned()))?;
        Ok(Reader::new(handle.name.clone(), handle.partition(partition)?.clone(), from)?)
    }

    /// Partition `partition` of `stream` in the storage engine, for tools that read it directly: a
    /// backfill job's enumerator (`tubemail::jobs::enumerators::partition`), say.
    ///
    /// # Errors
    /// [`ReadError::UnknownStream`], or the log's error for an unknown partition.
    pub fn stream_partition(
        &self,
        stream: &str,
        partition: u32,
    ) -> Result<Arc<tubemail_log::Partition>, ReadError> {
        let handle = self.stream(stream).ok_or_else(|| ReadError::UnknownStream(stream.to_owned()))?;
        Ok(handle.partition(partition)?.clone())
    }

    /// The partition a key's records go to in `stream`.
    ///
    /// # Errors
    /// [`ReadError::UnknownStream`].
    pub fn partition_for(&self, stream: &str, key: &str) -> Result<u32, ReadError> {
        let handle = self.stream(stream).ok_or_else(|| ReadError::UnknownStream(stream.to_owned()))?;
        let partitions = handle.log.partitions().len() as u32;
        Ok(tubemail_log::partition_for_key(key.as_bytes(), partitions))
    }

    /// Joins consumer group `group` on `stream` with `handler`: the group's partitions are shared
    /// among its members (each read by one member at a time) and rebalanced as members join, leave
    /// or crash (a handler that panics takes its member out of the group). Committed offsets are
    /// kept in the broker's log, so a group resumes where it stopped, in this process or the next.
    /// Handlers run on the broker's arbiter; their futures need not be `Send`.
    ///
    /// # Errors
    /// [`GroupError::UnknownStream`], [`GroupError::InvalidName`], [`GroupError::Options`],
    /// [`GroupError::Closed`].
    pub async fn join_group<F, Fut>(
        &self,
        stream: &str,
        group: &str,
        options: GroupOptions,
        handler: F,
    ) -> Result<GroupMember, GroupError>
    where
        F: Fn(StreamRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        if self.registry.is_closed() {
            return Err(GroupError::Closed);
        }
        if group.is_empty() || group.len() > GROUP_NAME_MAX || group.contains('\0') {
            return Err(GroupError::InvalidName(group.to_owned()));
        }
        let handle = self.stream(stream).ok_or_else(|| GroupError::UnknownStream(stream.to_owned()))?;
        let group = self.registry.streams.group(handle, group, &self.registry.arbiter);
        group.join(options, handler).await
    }

    /// Applies retention and compaction to every stream, and compacts every durable queue's journal,
    /// now (the broker also does it every [`STREAM_MAINTENANCE_EVERY`], and compacts a journal as
    /// soon as it has grown by its size after its last compaction plus one segment).
    ///
    /// # Errors
    /// The log's error; what was done before it stays done.
    pub fn maintain_streams(&self) -> Result<tubemail_log::Maintenance, tubemail_log::LogError> {
        let mut total = self.registry.streams.maintain()?;
        let queues: Vec<_> = self.registry.queues.load().by_id.values().cloned().collect();
        for journal in queues.iter().filter_map(|q| q.journal.as_ref()).filter(|j| !j.is_deleted()) {
            let m = journal.compact()?;
            total.segments_deleted += m.segments_deleted;
            total.segments_compacted += m.segments_compacted;
            total.records_removed += m.records_removed;
        }
        Ok(total)
    }

    /// Runs stream maintenance every [`STREAM_MAINTENANCE_EVERY`] on a blocking thread (compaction
    /// reads and rewrites segments), until the broker shuts down.
    pub(super) fn start_stream_maintenance(&self) {
        let registry = Arc::downgrade(&self.registry);
        self.registry.arbiter.spawn(async move {
            loop {
                tokio::time::sleep(STREAM_MAINTENANCE_EVERY).await;
                let Some(registry) = registry.upgrade().filter(|r| !r.is_closed()) else { return };
                let broker = Broker { registry, remote: None };
                let run = tokio::task::spawn_blocking(move || broker.maintain_streams());
                if let Ok(Err(e)) = run.await {
                    tracing::error!(error = %e, "stream maintenance failed");
                }
            }
        });
    }
}
