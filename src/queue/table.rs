//! The queue table: every live queue by id (the publish path) and by name (the control path), read
//! without locks and replaced whole under one writers' lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};

use super::QueueHandle;
use crate::ids::QueueId;

/// Queues by id and by name, one immutable snapshot.
#[derive(Default)]
pub(crate) struct QueueMap {
    pub(crate) by_id: BTreeMap<QueueId, Arc<QueueHandle>>,
    pub(crate) by_name: BTreeMap<String, QueueId>,
}

/// The live queues. Ids are never reused: a re-declared queue is a new incarnation with a new id, so
/// a cached route, a statistic or a binding of the old one can never reach the new one.
pub(crate) struct QueueTable {
    map: ArcSwap<QueueMap>,
    /// Bumped after each change of `map`, so that cached routes holding queue handles can tell they
    /// are current with one plain load.
    generation: AtomicU64,
    /// Serializes writers (readers never wait), and holds the next id.
    writers: Mutex<u32>,
}

/// Why a queue could not be added.
#[derive(Debug)]
pub(crate) enum InsertError {
    /// A live queue has the name.
    Exists,
    /// Every queue id has been used (2³² incarnations).
    IdsExhausted,
    /// A durable queue's journal could not be opened.
    Journal(tubemail_log::LogError),
}

impl QueueTable {
    pub(crate) fn new() -> Self {
        Self {
            map: ArcSwap::from_pointee(QueueMap::default()),
            generation: AtomicU64::new(0),
            writers: Mutex::new(0),
        }
    }

    pub(crate) fn load(&self) -> Guard<Arc<QueueMap>> {
        self.map.load()
    }

    /// The generation of the table: never ahead of what [`QueueTable::load`] returns after it.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<QueueHandle>> {
        let map = self.map.load();
        let id = map.by_name.get(name)?;
        map.by_id.get(id).cloned()
    }

    /// Adds the queue `make` builds from its new id, unless a live queue has the name. The id is
    /// taken and the table replaced under the writers' lock, so concurrent declarations never share
    /// an id.
    pub(crate) fn insert(
        &self,
        name: &str,
        make: impl FnOnce(QueueId) -> Result<Arc<QueueHandle>, InsertError>,
    ) -> Result<Arc<QueueHandle>, InsertError> {
        let mut next = self.writers.lock().expect("queue table writers lock");
        let old = self.map.load();
        if old.by_name.contains_key(name) {
            return Err(InsertError::Exists);
        }
        let id = QueueId(*next);
        let after = next.checked_add(1).ok_or(InsertError::IdsExhausted)?;
        let handle = make(id)?;
        *next = after;
        debug_assert_eq!(handle.id, id, "a queue handle carries the id it was built for");
        let mut by_id = old.by_id.clone();
        let mut by_name = old.by_name.clone();
        by_name.insert(name.to_owned(), id);
        by_id.insert(id, handle.clone());
        self.store(QueueMap { by_id, by_name });
        Ok(handle)
    }

    /// Removes the queue `id`, if it is still in the table; returns its handle.
    pub(crate) fn remove(&self, id: QueueId) -> Option<Arc<QueueHandle>> {
        let _writer = self.writers.lock().expect("queue table writers lock");
        let old = self.map.load();
        let handle = old.by_id.get(&id)?.clone();
        let mut by_id = old.by_id.clone();
        let mut by_name = old.by_name.clone();
        by_id.remove(&id);
        by_name.remove(&*handle.name);
        self.store(QueueMap { by_id, by_name });
        Some(handle)
    }

    /// Empties the table (at shutdown); returns the queues it held, by id.
    pub(crate) fn clear(&self) -> Vec<Arc<QueueHandle>> {
        let _writer = self.writers.lock().expect("queue table writers lock");
        let old = self.map.load();
        let handles = old.by_id.values().cloned().collect();
        self.store(QueueMap::default());
        handles
    }

    fn store(&self, map: QueueMap) {
        self.map.store(Arc::new(map));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}
