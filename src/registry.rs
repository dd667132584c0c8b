//! The broker's directory of topics and queues, read lock-free on the publish path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::{Addr, ArbiterHandle, Recipient};
use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::ids::{ConsumerId, MessageId, QueueId};
use crate::queue::{QueueActor, QueueHandle};
use crate::stats::QueueStats;
use crate::subscriber::Stop;
use crate::topic::{TopicHandle, UnbindQueue};

/// Queues by id (the publish path) and by name (the control path).
#[derive(Default)]
pub(crate) struct QueueMap {
    pub(crate) by_id: Vec<Option<Arc<QueueHandle>>>,
    pub(crate) by_name: BTreeMap<String, QueueId>,
}

type Subscriptions = BTreeMap<ConsumerId, (Addr<QueueActor>, Recipient<Stop>)>;

pub(crate) struct Registry {
    queues: ArcSwap<QueueMap>,
    /// Bumped after each change of `queues`, so that cached routes holding queue handles can tell
    /// they are current with one plain load.
    queues_generation: AtomicU64,
    pub(crate) topics: ArcSwap<BTreeMap<String, Arc<TopicHandle>>>,
    /// Final counters of deleted queues.
    graveyard: Mutex<BTreeMap<String, QueueStats>>,
    /// Live subscriptions, for shutdown.
    subscriptions: Mutex<Subscriptions>,
    /// Serializes writers of the maps above (readers never wait).
    writers: Mutex<()>,
    pub(crate) started: Instant,
    pub(crate) arbiter: ArbiterHandle,
    pub(crate) closed: AtomicBool,
    /// The simulation's injector, when the broker runs in one.
    pub(crate) probe: crate::probe::ProbeRef,
    next_message: AtomicU64,
    next_consumer: AtomicU64,
}

impl Registry {
    pub(crate) fn new(arbiter: ArbiterHandle, probe: crate::probe::ProbeRef) -> Self {
        Self {
            queues: ArcSwap::from_pointee(QueueMap::default()),
            queues_generation: AtomicU64::new(0),
            topics: ArcSwap::from_pointee(BTreeMap::new()),
            graveyard: Mutex::new(BTreeMap::new()),
            subscriptions: Mutex::new(BTreeMap::new()),
            writers: Mutex::new(()),
            started: Instant::now(),
            arbiter,
            closed: AtomicBool::new(false),
            probe,
            next_message: AtomicU64::new(1),
            next_consumer: AtomicU64::new(1),
        }
    }

    pub(crate) fn message_id(&self) -> MessageId {
        MessageId(self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn consumer_id(&self) -> ConsumerId {
        ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn queues(&self) -> arc_swap::Guard<Arc<QueueMap>> {
        self.queues.load()
    }

    /// The generation of the queue table: never ahead of what [`Registry::queues`] returns after it.
    pub(crate) fn queues_generation(&self) -> u64 {
        self.queues_generation.load(Ordering::Acquire)
    }

    /// Replaces the queue table (under the writers' lock) and bumps its generation.
    fn store_queues(&self, map: QueueMap) {
        self.queues.store(Arc::new(map));
        self.queues_generation.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        let map = self.queues.load();
        let id = map.by_name.get(name)?;
        map.by_id[id.0 as usize].clone()
    }

    pub(crate) fn next_queue_id(&self) -> QueueId {
        QueueId(self.queues.load().by_id.len() as u32)
    }

    pub(crate) fn insert_queue(&self, handle: Arc<QueueHandle>) {
        let _writer = self.writers.lock().expect("registry writers lock");
        let old = self.queues.load();
        let mut by_id = old.by_id.clone();
        let mut by_name = old.by_name.clone();
        let id = handle.id;
        by_name.insert(handle.name.to_string(), id);
        if by_id.len() <= id.0 as usize {
            by_id.resize(id.0 as usize + 1, None);
        }
        by_id[id.0 as usize] = Some(handle);
        self.store_queues(QueueMap { by_id, by_name });
    }

    pub(crate) fn insert_topic(&self, handle: Arc<TopicHandle>) {
        let _writer = self.writers.lock().expect("registry writers lock");
        let mut topics = BTreeMap::clone(&self.topics.load());
        topics.insert(handle.name.to_string(), handle);
        self.topics.store(Arc::new(topics));
    }

    /// Forgets a deleted queue, keeps its final counters, and unbinds it from every topic.
    pub(crate) fn remove_queue(&self, id: QueueId, stats: QueueStats) {
        let _writer = self.writers.lock().expect("registry writers lock");
        let old = self.queues.load();
        let Some(Some(handle)) = old.by_id.get(id.0 as usize) else { return };
        let name = handle.name.to_string();
        let mut by_id = old.by_id.clone();
        let mut by_name = old.by_name.clone();
        by_id[id.0 as usize] = None;
        by_name.remove(&name);
        self.store_queues(QueueMap { by_id, by_name });
        self.graveyard.lock().expect("graveyard lock").insert(name, stats);
        for topic in self.topics.load().values() {
            // Publishers already skip the missing queue; this only tidies the routing table.
            topic.addr.do_send(UnbindQueue(id));
        }
    }

    pub(crate) fn track_subscription(
        &self,
        consumer: ConsumerId,
        queue: Addr<QueueActor>,
        stop: Recipient<Stop>,
    ) {
        self.subscriptions.lock().expect("subscriptions lock").insert(consumer, (queue, stop));
    }

    pub(crate) fn untrack_subscription(&self, consumer: ConsumerId) {
        self.subscriptions.lock().expect("subscriptions lock").remove(&consumer);
    }

    pub(crate) fn take_subscriptions(&self) -> BTreeMap<ConsumerId, (Addr<QueueActor>, Recipient<Stop>)> {
        std::mem::take(&mut *self.subscriptions.lock().expect("subscriptions lock"))
    }

    pub(crate) fn graveyard(&self) -> BTreeMap<String, QueueStats> {
        self.graveyard.lock().expect("graveyard lock").clone()
    }
}
