//! The broker's directory: its topics, its queue table, the final counters of deleted queues, and the
//! ids it hands out. Read lock-free on the publish path.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::ArbiterHandle;
use arc_swap::ArcSwap;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::subscription::Subscriptions;
use crate::ids::{ConsumerId, MessageId, QueueId};
use crate::probe::ProbeRef;
use crate::protocol::{Shut, StopTopic, UnbindQueue, WhenIdle};
use crate::queue::{QueueHandle, QueueHost, QueueTable};
use crate::stats::{DeletedQueue, QueueStats, Stats};
use crate::topic::TopicHandle;

/// The most deleted queues whose final counters [`Broker::stats`](crate::Broker::stats) keeps; the
/// oldest are folded into one total beyond it, so that churn cannot grow the broker without bound.
pub const DELETED_QUEUES_KEPT_MAX: usize = 1024;

pub(crate) struct Registry {
    pub(crate) queues: QueueTable,
    pub(crate) topics: ArcSwap<BTreeMap<String, Arc<TopicHandle>>>,
    /// Final counters of deleted queue incarnations, oldest first.
    graveyard: Mutex<Graveyard>,
    pub(crate) subscriptions: Subscriptions,
    /// Serializes writers of `topics` (readers never wait).
    writers: Mutex<()>,
    pub(crate) started: Instant,
    /// The arbiter the broker started on: topics, and the broker's own timed work.
    pub(crate) arbiter: ArbiterHandle,
    /// Where queues and their subscribers live (see [`Arbiters`]).
    pub(crate) arbiters: Arbiters,
    pub(crate) closed: AtomicBool,
    /// The simulator's probe, when the broker runs in one.
    pub(crate) probe: ProbeRef,
    next_message: AtomicU64,
    next_consumer: AtomicU64,
    /// Publishes waiting for room in a queue (the slow path only: the fast path never waits).
    publishes_waiting: AtomicU64,
    /// The counters at shutdown, once it has finished.
    final_stats: Mutex<Option<Stats>>,
    shut_down: Notify,
    /// Streams, their log directory and consumer groups.
    pub(crate) streams: crate::stream::Streams,
    /// Payloads of the wrong type per topic, shared by every queue's subscribers.
    pub(crate) undecodable_by_topic: Arc<crate::queue::TopicTally>,
}

/// The arbiters a broker's queues and subscribers spread over: the one it started on, and `n - 1`
/// threads of its own, stopped at shutdown (or when the broker is dropped). A queue with id `i` lives
/// on arbiter `i % n`, and every subscriber beside its queue, so a delivery never crosses threads.
pub(crate) struct Arbiters {
    handles: Vec<ArbiterHandle>,
    owned: Mutex<Vec<actix::Arbiter>>,
}

impl Arbiters {
    /// The current arbiter and `n - 1` new ones.
    pub(crate) fn start(home: ArbiterHandle, n: usize) -> Self {
        let owned: Vec<actix::Arbiter> = (1..n).map(|_| actix::Arbiter::new()).collect();
        let mut handles = vec![home];
        handles.extend(owned.iter().map(actix::Arbiter::handle));
        Self { handles, owned: Mutex::new(owned) }
    }

    /// The arbiter of the queue `id`.
    pub(crate) fn for_queue(&self, id: QueueId) -> &ArbiterHandle {
        &self.handles[id.0 as usize % self.handles.len()]
    }

    /// Stops the broker's own arbiter threads (the actors on them are dropped).
    pub(crate) fn stop(&self) {
        for arbiter in self.owned.lock().expect("arbiters lock").drain(..) {
            arbiter.stop();
        }
    }
}

impl Drop for Arbiters {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A publish waiting for room, counted while it waits.
pub(crate) struct PublishWaits<'a>(&'a AtomicU64);

impl Drop for PublishWaits<'_> {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "every waiting publish was counted");
    }
}

/// Deleted queues' final counters: the newest by incarnation, the older ones summed.
#[derive(Default)]
pub(crate) struct Graveyard {
    /// Each with its inbox's count of messages that arrived after the close.
    pub(crate) recent: BTreeMap<QueueId, (String, QueueStats, Arc<AtomicU64>)>,
    pub(crate) folded: QueueStats,
}

/// A deleted incarnation's counters with its late arrivals: enqueued, and dropped with the queue.
fn with_late(stats: &QueueStats, late: &AtomicU64) -> QueueStats {
    let late = late.load(Ordering::Relaxed);
    let mut stats = stats.clone();
    stats.enqueued += late;
    stats.dropped.deleted += late;
    stats
}

impl Registry {
    pub(crate) fn new(
        arbiter: ArbiterHandle,
        arbiters: Arbiters,
        probe: ProbeRef,
        streams: crate::stream::Streams,
        topics: usize,
    ) -> Self {
        Self {
            undecodable_by_topic: Arc::new(crate::queue::TopicTally::new(topics)),
            arbiters,
            queues: QueueTable::new(),
            topics: ArcSwap::from_pointee(BTreeMap::new()),
            graveyard: Mutex::new(Graveyard::default()),
            subscriptions: Subscriptions::default(),
            writers: Mutex::new(()),
            started: Instant::now(),
            arbiter,
            closed: AtomicBool::new(false),
            probe,
            next_message: AtomicU64::new(1),
            next_consumer: AtomicU64::new(1),
            publishes_waiting: AtomicU64::new(0),
            final_stats: Mutex::new(None),
            shut_down: Notify::new(),
            streams,
        }
    }

    pub(crate) fn message_id(&self) -> MessageId {
        MessageId(self.next_message.fetch_add(1, Ordering::Relaxed))
    }

    /// New message ids from now on are above `max` (a durable queue's journal holds ids up to it).
    pub(crate) fn message_ids_past(&self, max: MessageId) {
        self.next_message.fetch_max(max.0 + 1, Ordering::Relaxed);
    }

    pub(crate) fn consumer_id(&self) -> ConsumerId {
        ConsumerId(self.next_consumer.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a publish waiting for room until the guard drops.
    pub(crate) fn publish_waits(&self) -> PublishWaits<'_> {
        self.publishes_waiting.fetch_add(1, Ordering::AcqRel);
        PublishWaits(&self.publishes_waiting)
    }

    pub(crate) fn publishes_waiting(&self) -> u64 {
        self.publishes_waiting.load(Ordering::Acquire)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.queues.get(name)
    }

    pub(crate) fn topic(&self, name: &str) -> Option<Arc<TopicHandle>> {
        self.topics.load().get(name).cloned()
    }

    pub(crate) fn insert_topic(&self, handle: Arc<TopicHandle>) {
        let _writer = self.writers.lock().expect("registry writers lock");
        let mut topics = BTreeMap::clone(&self.topics.load());
        topics.insert(handle.name.to_string(), handle);
        self.topics.store(Arc::new(topics));
    }

    /// Forgets every topic (at shutdown); returns them.
    pub(crate) fn clear_topics(&self) -> Vec<Arc<TopicHandle>> {
        let _writer = self.writers.lock().expect("registry writers lock");
        let topics = self.topics.swap(Arc::new(BTreeMap::new()));
        topics.values().cloned().collect()
    }

    /// Keeps the final counters of a deleted incarnation.
    pub(crate) fn bury(&self, handle: &QueueHandle, stats: QueueStats) {
        let mut graveyard = self.graveyard.lock().expect("graveyard lock");
        graveyard.recent.insert(handle.id, (handle.name.to_string(), stats, handle.inbox.late()));
        while graveyard.recent.len() > DELETED_QUEUES_KEPT_MAX {
            let (_, (_, oldest, late)) = graveyard.recent.pop_first().expect("more than the maximum");
            graveyard.folded.add(&with_late(&oldest, &late));
        }
    }

    /// The deleted incarnations' counters: `(id, name, stats)` oldest first, and the folded total.
    pub(crate) fn graveyard(&self) -> (Vec<(QueueId, String, QueueStats)>, QueueStats) {
        let graveyard = self.graveyard.lock().expect("graveyard lock");
        let recent =
            graveyard.recent.iter().map(|(id, (n, s, late))| (*id, n.clone(), with_late(s, late))).collect();
        (recent, graveyard.folded.clone())
    }
}

impl Registry {
    pub(crate) fn final_stats(&self) -> Option<Stats> {
        self.final_stats.lock().expect("final stats lock").clone()
    }

    pub(crate) fn set_final_stats(&self, stats: Stats) {
        *self.final_stats.lock().expect("final stats lock") = Some(stats);
        self.shut_down.notify_waiters();
    }

    /// The final counters, once the shutdown under way has finished.
    pub(crate) async fn wait_final_stats(&self) -> Stats {
        loop {
            let notified = self.shut_down.notified();
            if let Some(stats) = self.final_stats() {
                return stats;
            }
            notified.await;
        }
    }

    /// Stops every queue and topic actor and lets go of them; returns the final counters.
    pub(crate) async fn stop_everything(&self) -> Stats {
        let mut stats = Stats::default();
        for queue in self.queues.clear() {
            if let Ok(q) = queue.addr.send(Shut).await {
                stats.queues.insert(queue.name.to_string(), with_late(&q, &queue.inbox.late()));
            }
        }
        for topic in self.clear_topics() {
            stats.topics.insert(topic.name.to_string(), topic.stats());
            let _ = topic.addr.send(StopTopic).await;
        }
        let (deleted, folded) = self.graveyard();
        stats.deleted_queues =
            deleted.into_iter().map(|(id, name, stats)| DeletedQueue { name, id, stats }).collect();
        stats.deleted_folded = folded;
        stats
    }
}

/// Waits until every queue of `queues` is idle (see [`WhenIdle`]; `scheduled`: scheduled messages
/// count as work) or `deadline` passes; whether they all were.
pub(crate) async fn wait_idle(queues: &[Arc<QueueHandle>], deadline: Instant, scheduled: bool) -> bool {
    loop {
        let mut all_at_once = true;
        for queue in queues {
            let (done, idle) = oneshot::channel();
            if queue.addr.send(WhenIdle { done, scheduled }).await.is_err() {
                continue; // Deleted: nothing left to wait for.
            }
            match tokio::time::timeout_at(deadline, idle).await {
                Ok(Ok(at_once)) => all_at_once &= at_once,
                Ok(Err(_)) => {}
                Err(_) => return false,
            }
        }
        // Dead letters may have moved work to a queue asked earlier: done only after a pass in
        // which every queue was idle when asked.
        if all_at_once {
            return true;
        }
    }
}

/// What a queue actor may ask of its broker: nothing but where its dead letters go and that it is gone.
impl QueueHost for Registry {
    fn dead_letter_queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.queues.get(name)
    }

    fn queue_deleted(&self, id: QueueId, stats: QueueStats) {
        let Some(handle) = self.queues.remove(id) else { return };
        self.bury(&handle, stats);
        for topic in self.topics.load().values() {
            // Publishers already skip the missing queue (its id is never reused); this only tidies
            // the routing table. Spawned, so that a busy topic delays nothing here.
            let addr = topic.addr.clone();
            self.arbiter.spawn(async move {
                let _ = addr.send(UnbindQueue(id)).await;
            });
        }
    }
}
