//! The broker's side of a remote backend (see [`crate::remote`]): the routing mirror, counters,
//! subscriptions and their handler loops, the same for every backend.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use smallvec::SmallVec;
use tokio::sync::Semaphore;

use super::{
    BindError, Confirm, DeclareError, DeleteError, PublishError, ShutdownReport, SubscribeError,
    TryPublishError, UnsubscribeReport,
};
use crate::ids::{ConsumerId, DeliveryTag, MessageId, QueueId};
use crate::message::{Message, Payload};
use crate::protocol::AckError;
use crate::remote::{
    redact, Backend, BoxFut, Consumer, Endpoint, Incoming, Outgoing, RemoteError, RemoteSettle, Sent,
    Settler, CONNECT_TIMEOUT, DEPTH_TIMEOUT, PUBLISH_WINDOW_MAX, REMOTE_PREFETCH_MAX,
};
use crate::routing::{validate_key, RoutingTable, TopicKind};
use crate::stats::{QueueStats, Stats, TopicStats};
use crate::subscriber::{Delivery, Outcome, Run, Runner, SubscribeOptions};
use crate::topology::{DeliveryMode, QueueSpec, Target, Topology};

/// How often [`Broker::idle`](crate::Broker::idle) asks the remote broker for its queues' depths.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// A topic's bindings as this process knows them, to tell a publish's confirm how many queues it
/// reached (the remote broker confirms a message, not its routes).
struct Mirror {
    kind: TopicKind,
    table: RoutingTable,
    alternate: Option<String>,
}

/// Counters kept on this side: each queue's behind a lock of its own, held by its subscriptions'
/// loops, so that a delivery never looks its queue up.
#[derive(Default)]
struct Counts {
    topics: BTreeMap<String, TopicStats>,
    queues: BTreeMap<String, Arc<Mutex<QueueStats>>>,
}

impl Counts {
    fn queue(&mut self, name: &str) -> Arc<Mutex<QueueStats>> {
        Arc::clone(self.queues.entry(name.to_owned()).or_default())
    }
}

type Deliveries = Pin<Box<dyn Stream<Item = Result<Incoming, RemoteError>> + Send>>;

struct RemoteSub {
    queue: String,
    stop: Arc<StopFlag>,
    done: tokio::sync::oneshot::Receiver<LoopEnd>,
    cancel: Box<dyn FnOnce() -> BoxFut<'static, u64> + Send>,
    /// Whether the remote acked each delivery as it sent it (see [`Consumer::auto_acked`]).
    auto_acked: bool,
}

/// How a subscription's loop ended.
#[derive(Default)]
struct LoopEnd {
    /// The deliveries' stream, when the loop stopped on its subscription's leave: what it still
    /// holds once the consumer is cancelled was sent and never handled.
    rest: Option<Deliveries>,
}

#[derive(Default)]
struct StopFlag {
    set: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StopFlag {
    fn set(&self) {
        self.set.store(true, Ordering::Release);
        // One waiter, the loop: a permit is stored if it is not waiting now.
        self.notify.notify_one();
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }
}

/// The broker's side of a remote backend: routing mirror, counters, subscriptions.
pub(crate) struct RemoteBroker {
    pub(crate) endpoint: Endpoint,
    backend: Arc<dyn Backend>,
    topology: RwLock<Topology>,
    mirrors: RwLock<BTreeMap<String, Mirror>>,
    queue_ids: RwLock<BTreeMap<String, QueueId>>,
    /// The same, by id, for the targets of a publish.
    queue_names: RwLock<BTreeMap<QueueId, Arc<str>>>,
    counts: Arc<Mutex<Counts>>,
    subs: Mutex<BTreeMap<ConsumerId, RemoteSub>>,
    window: Arc<Semaphore>,
    next_id: AtomicU64,
    in_flight: Arc<AtomicU64>,
    runtime: tokio::runtime::Handle,
}

impl RemoteBroker {
    pub(crate) async fn connect(endpoint: Endpoint, topology: Topology) -> Result<RemoteBroker, RemoteError> {
        let backend =
            match tokio::time::timeout(CONNECT_TIMEOUT, crate::remote::connect(&endpoint, &topology)).await {
                Ok(backend) => backend?,
                Err(_) => {
                    let reason = format!("no answer within {CONNECT_TIMEOUT:?}");
                    return Err(RemoteError::Connect { url: redact(endpoint.url()), reason });
                }
            };
        let broker = RemoteBroker {
            endpoint,
            backend,
            topology: RwLock::new(Topology::new()),
            mirrors: RwLock::default(),
            queue_ids: RwLock::default(),
            queue_names: RwLock::default(),
            counts: Arc::default(),
            subs: Mutex::default(),
            window: Arc::new(Semaphore::new(PUBLISH_WINDOW_MAX)),
            // Ids unique across processes that publish to one remote broker: the wall clock's
            // nanoseconds at start, then one by one (no process publishes one per nanosecond).
            next_id: AtomicU64::new(super::wall_clock_nanos()),
            in_flight: Arc::default(),
            runtime: tokio::runtime::Handle::current(),
        };
        broker.mirror(&topology);
        *broker.topology.write().expect("not poisoned") = topology;
        Ok(broker)
    }

    fn mirror(&self, topology: &Topology) {
        let mut ids = self.queue_ids.write().expect("not poisoned");
        let mut names = self.queue_names.write().expect("not poisoned");
        for name in topology.queues.keys() {
            // Never reused: a deleted queue's id stays out of every later route.
            let next = QueueId(u32::try_from(names.len() + 1).unwrap_or(u32::MAX));
            let id = *ids.entry(name.clone()).or_insert(next);
            names.entry(id).or_insert_with(|| Arc::from(name.as_str()));
        }
        drop(names);
        let mut mirrors = self.mirrors.write().expect("not poisoned");
        let mut counts = self.counts.lock().expect("not poisoned");
        for (name, spec) in &topology.topics {
            let mut table = RoutingTable::new(spec.kind);
            for b in topology.bindings.iter().filter(|b| &b.topic == name) {
                if let Target::Queue(q) = &b.target {
                    let _ = table.bind(ids[q], &b.key, b.weight);
                }
            }
            mirrors
                .insert(name.clone(), Mirror { kind: spec.kind, table, alternate: spec.alternate.clone() });
            counts.topics.entry(name.clone()).or_default();
        }
        for name in topology.queues.keys() {
            counts.queues.entry(name.clone()).or_default();
        }
    }

    fn queue_spec(&self, queue: &str) -> Option<QueueSpec> {
        self.topology.read().expect("not poisoned").queues.get(queue).cloned()
    }

    /// The targets a publish reaches by this process's bindings, and the alternate queue.
    fn route(
        &self,
        topic: &str,
        key: &str,
    ) -> Result<(SmallVec<[QueueId; 8]>, Option<String>), PublishError> {
        let mirrors = self.mirrors.read().expect("not poisoned");
        let mirror = mirrors.get(topic).ok_or_else(|| PublishError::UnknownTopic(topic.to_owned()))?;
        validate_key(key)?;
        let mut out: SmallVec<[QueueId; 8]> = SmallVec::new();
        mirror.table.route(key, &mut out);
        Ok((out, mirror.alternate.clone()))
    }

    pub(crate) async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: Payload,
    ) -> Result<Confirm, PublishError> {
        let (route, alternate) = self.route(topic, key)?;
        let body = payload.to_bytes().map_err(|e| PublishError::Encode(e.to_string()))?;
        let _permit = self.window.acquire().await.map_err(|_| PublishError::Closed)?;
        self.send(topic, key, body, &route, alternate).await
    }

    /// Sends a publish whose place in the window its caller holds, and waits for its confirm.
    async fn send(
        &self,
        topic: &str,
        key: &str,
        body: Bytes,
        route: &[QueueId],
        alternate: Option<String>,
    ) -> Result<Confirm, PublishError> {
        let id = MessageId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let targets = self.target_names(route, alternate.as_deref());
        let sent = self.backend.publish(Outgoing { topic, key, body, id, targets: &targets }).await;
        let sent = sent.map_err(PublishError::Remote)?;
        Ok(self.confirmed(topic, route, alternate, sent))
    }

    fn confirmed(&self, topic: &str, route: &[QueueId], alternate: Option<String>, sent: Sent) -> Confirm {
        let targets = u32::try_from(route.len()).unwrap_or(u32::MAX);
        // The queues that can refuse a publish: a full `reject-publish` queue is the only reason.
        let refusing = match sent {
            Sent::Refused => self.refusing(route),
            _ => Vec::new(),
        };
        let mut counts = self.counts.lock().expect("not poisoned");
        if !counts.topics.contains_key(topic) {
            counts.topics.insert(topic.to_owned(), TopicStats::default());
        }
        let t = counts.topics.get_mut(topic).expect("inserted above");
        t.published += 1;
        match sent {
            Sent::Confirmed if targets > 0 => {
                t.routed += u64::from(targets);
                t.routed_publishes += 1;
                Confirm::Routed { queues: targets }
            }
            Sent::Confirmed if alternate.is_some() => {
                t.unroutable += 1;
                t.alternate += 1;
                Confirm::Unroutable { alternate }
            }
            Sent::Confirmed => {
                // Routed by bindings this process does not know (declared by another): one at least.
                tracing::warn!(
                    topic,
                    "the remote broker routed a message this topology routes nowhere: run `tubemail diff`"
                );
                t.routed += 1;
                t.routed_publishes += 1;
                Confirm::Routed { queues: 1 }
            }
            Sent::Returned => {
                t.unroutable += 1;
                t.dropped_unroutable += 1;
                Confirm::Unroutable { alternate: None }
            }
            Sent::Refused => {
                // The remote does not say which queue refused: the targets that refuse when full
                // are named, the others counted as accepting.
                let refused = u32::try_from(refusing.len()).unwrap_or(u32::MAX).max(1);
                t.refused_publishes += 1;
                t.refused += u64::from(refused);
                t.routed += u64::from(targets.saturating_sub(refused));
                for q in &refusing {
                    counts.queue(q).lock().expect("not poisoned").refused += 1;
                }
                Confirm::Refused { accepted: targets.saturating_sub(refused), queues: refusing }
            }
        }
    }

    /// The names of the queues of `route`, or the alternate queue when it is empty.
    fn target_names(&self, route: &[QueueId], alternate: Option<&str>) -> SmallVec<[Arc<str>; 8]> {
        if route.is_empty() {
            return alternate.map(Arc::from).into_iter().collect();
        }
        let names = self.queue_names.read().expect("not poisoned");
        route.iter().filter_map(|id| names.get(id).cloned()).collect()
    }

    /// The names of the queues among `route` whose overflow policy refuses publishes.
    fn refusing(&self, route: &[QueueId]) -> Vec<String> {
        let ids = self.queue_ids.read().expect("not poisoned");
        let topology = self.topology.read().expect("not poisoned");
        let refuses = |name: &String| {
            topology.queues.get(name).is_some_and(|q| {
                matches!(
                    q.overflow,
                    crate::topology::Overflow::RejectPublish | crate::topology::Overflow::RejectPublishDlx
                )
            })
        };
        ids.iter()
            .filter(|(name, id)| route.contains(id) && refuses(name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub(crate) fn try_publish<T: serde::Serialize + Send + Sync + 'static>(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        value: T,
    ) -> Result<Confirm, TryPublishError<T>> {
        let (route, alternate) = match self.route(topic, key) {
            Ok(routed) => routed,
            Err(e) => return Err(TryPublishError::Invalid(e)),
        };
        let Ok(permit) = Arc::clone(&self.window).try_acquire_owned() else {
            return Err(TryPublishError::Full(value));
        };
        let body = match Payload::value(value).to_bytes() {
            Ok(body) => body,
            Err(e) => return Err(TryPublishError::Invalid(PublishError::Encode(e.to_string()))),
        };
        let (this, topic, key) = (Arc::clone(self), topic.to_owned(), key.to_owned());
        self.runtime.spawn(async move {
            // The place taken above is this publish's: it waits for no other (a burst that filled
            // the window would otherwise hold every place, each task waiting for a second one).
            let _permit = permit;
            if let Err(e) = this.send(&topic, &key, body, &route, alternate).await {
                // Counted, never silent: the topic's `refused_publishes`.
                tracing::warn!(topic, key, error = %e, "a try_publish to the remote broker failed");
                let mut counts = this.counts.lock().expect("not poisoned");
                let t = counts.topics.entry(topic).or_default();
                t.published += 1;
                t.refused_publishes += 1;
            }
        });
        Ok(Confirm::Sent)
    }

    pub(crate) async fn subscribe<T, R>(
        &self,
        arbiter: &actix::ArbiterHandle,
        consumer: ConsumerId,
        queue: &str,
        options: SubscribeOptions,
        runner: R,
    ) -> Result<(), SubscribeError>
    where
        T: DeserializeOwned + Send + Sync + 'static,
        R: Runner<T>,
    {
        let spec = self.queue_spec(queue).ok_or_else(|| SubscribeError::UnknownQueue(queue.to_owned()))?;
        let prefetch = match options.prefetch.unwrap_or(spec.prefetch_default) {
            0 => REMOTE_PREFETCH_MAX.min(u32::try_from(spec.depth_max).unwrap_or(u32::MAX)),
            n => n.min(REMOTE_PREFETCH_MAX),
        };
        let remote = self.backend.consume(queue, &spec, prefetch).await.map_err(SubscribeError::Remote)?;
        let Consumer { deliveries, settler, cancel, auto_acked } = remote;
        let stop = Arc::new(StopFlag::default());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let counts = self.counts.lock().expect("not poisoned").queue(queue);
        let dead_letters = spec.dead_letter.is_some();
        let acker_settler: Arc<dyn Settler> = Arc::new(CountedSettler {
            settler: Arc::clone(&settler),
            counts: Arc::clone(&counts),
            dead_letters,
        });
        let sub_loop = SubLoop {
            queue: queue.into(),
            mode: spec.delivery,
            dead_letters,
            ack_timeout: spec.ack_timeout,
            delivery_limit: spec.delivery_limit,
            consumer,
            settler,
            acker_settler,
            stop: Arc::clone(&stop),
            counts,
            in_flight: Arc::clone(&self.in_flight),
            on_undecodable: options.on_undecodable,
        };
        // Handlers' futures need not be `Send`: the loop runs on the broker's arbiter.
        let spawned = arbiter.spawn_fn(move || {
            actix::spawn(async move {
                let end = sub_loop.run::<T, R>(deliveries, runner).await;
                let _ = done_tx.send(end);
            });
        });
        if !spawned {
            let _ = cancel().await;
            return Err(SubscribeError::Closed);
        }
        self.counts.lock().expect("not poisoned").queue(queue).lock().expect("not poisoned").consumers += 1;
        let sub = RemoteSub { queue: queue.to_owned(), stop, done, cancel, auto_acked };
        self.subs.lock().expect("not poisoned").insert(consumer, sub);
        Ok(())
    }

    pub(crate) async fn unsubscribe(&self, consumer: ConsumerId, timeout: Duration) -> UnsubscribeReport {
        let Some(sub) = self.subs.lock().expect("not poisoned").remove(&consumer) else {
            return UnsubscribeReport { drained: true, stopped: true, ..Default::default() };
        };
        self.retire(sub, timeout).await
    }

    async fn retire(&self, sub: RemoteSub, timeout: Duration) -> UnsubscribeReport {
        let RemoteSub { queue, stop, done, cancel, auto_acked } = sub;
        stop.set();
        let end = tokio::time::timeout(timeout, done).await;
        // Closing the consumer gives back what it fetched and did not settle: the remote requeues
        // it (at-least-once); at-most-once deliveries were acked when they arrived.
        let given_back = cancel().await;
        // Auto-acked deliveries the client still buffers (sent before the consumer's cancel took
        // effect) are lost: counted, never silent.
        let mut lost = 0;
        let stopped = matches!(end, Ok(Ok(_)));
        if let Ok(Ok(LoopEnd { rest: Some(mut rest) })) = end {
            if auto_acked {
                while let Some(Some(delivery)) = rest.next().now_or_never() {
                    lost += u64::from(delivery.is_ok());
                }
            }
        }
        if let Some(q) = self.counts.lock().expect("not poisoned").queues.get(&queue) {
            let mut q = q.lock().expect("not poisoned");
            q.consumers = q.consumers.saturating_sub(1);
            q.dropped.lost_at_most_once += lost;
        }
        let at_least_once = self.queue_spec(&queue).is_none_or(|s| s.delivery == DeliveryMode::AtLeastOnce);
        if stopped {
            let requeued = if at_least_once { given_back } else { 0 };
            UnsubscribeReport { drained: given_back == 0, stopped: true, interrupted: 0, requeued, lost }
        } else {
            UnsubscribeReport {
                drained: false,
                stopped: false,
                interrupted: 1,
                requeued: if at_least_once { given_back.max(1) } else { 0 },
                lost: u64::from(!at_least_once),
            }
        }
    }

    /// The counters this side keeps, without the remote's depths.
    fn local_stats(&self) -> Stats {
        let (mut topics, queues) = {
            let counts = self.counts.lock().expect("not poisoned");
            let queues: BTreeMap<String, QueueStats> = counts
                .queues
                .iter()
                .map(|(name, q)| (name.clone(), q.lock().expect("not poisoned").clone()))
                .collect();
            (counts.topics.clone(), queues)
        };
        let bindings: BTreeMap<String, u64> = {
            let mirrors = self.mirrors.read().expect("not poisoned");
            mirrors.iter().map(|(n, m)| (n.clone(), m.table.len() as u64)).collect()
        };
        for (name, t) in &mut topics {
            t.bindings = bindings.get(name).copied().unwrap_or(0);
        }
        Stats { topics, queues, ..Default::default() }
    }

    /// The counters, with each queue's depth and consumers as the remote reports them (each read
    /// within [`DEPTH_TIMEOUT`]; a queue whose read fails or times out keeps this side's figures).
    pub(crate) async fn stats(&self) -> Stats {
        let mut stats = self.local_stats();
        for (name, q) in &mut stats.queues {
            if let Ok(Ok(depth)) = tokio::time::timeout(DEPTH_TIMEOUT, self.backend.depth(name)).await {
                q.ready = depth.ready;
                q.consumers = depth.consumers;
            }
        }
        stats
    }

    pub(crate) async fn idle(&self) {
        // Deliveries a client holds before its handler loop takes them are not in the remote's
        // ready count: idle is two quiet looks in a row, one poll apart.
        let mut quiet = 0;
        loop {
            let subscribed: Vec<String> = {
                let subs = self.subs.lock().expect("not poisoned");
                subs.values().map(|s| s.queue.clone()).collect()
            };
            let publishing = self.window.available_permits() < PUBLISH_WINDOW_MAX;
            let mut busy = publishing || self.in_flight.load(Ordering::Acquire) > 0;
            for queue in &subscribed {
                if busy {
                    break;
                }
                busy = self.backend.depth(queue).await.is_ok_and(|d| d.ready > 0);
            }
            quiet = if busy { 0 } else { quiet + 1 };
            if quiet == 2 {
                return;
            }
            tokio::time::sleep(IDLE_POLL).await;
        }
    }

    pub(crate) async fn declare_queue(&self, name: &str, spec: QueueSpec) -> Result<(), DeclareError> {
        let mut check = Topology::new().queue(name, spec.clone());
        if let Some(dl) = spec.dead_letter.as_deref().filter(|dl| *dl != name) {
            let known = self.queue_spec(dl);
            let dl_spec = known.ok_or_else(|| {
                DeclareError::Topology(crate::topology::TopologyError::invalid(
                    format!("queues.{name}.dead_letter"),
                    format!("no queue named {dl:?}"),
                ))
            })?;
            check = check.queue(dl, dl_spec);
        }
        check.validate()?;
        if let Some(existing) = self.queue_spec(name) {
            return if existing == spec { Ok(()) } else { Err(DeclareError::Conflict(name.to_owned())) };
        }
        self.backend.declare_queue(name, &spec).await.map_err(DeclareError::Remote)?;
        self.topology.write().expect("not poisoned").queues.insert(name.to_owned(), spec);
        self.mirror(&Topology::new().queue(name, QueueSpec::default()));
        Ok(())
    }

    pub(crate) async fn delete_queue(&self, name: &str) -> Result<QueueStats, DeleteError> {
        if self.queue_spec(name).is_none() {
            return Err(DeleteError::UnknownQueue(name.to_owned()));
        }
        let retiring: Vec<RemoteSub> = {
            let mut subs = self.subs.lock().expect("not poisoned");
            let ids: Vec<ConsumerId> =
                subs.iter().filter(|(_, s)| s.queue == name).map(|(c, _)| *c).collect();
            ids.iter().filter_map(|c| subs.remove(c)).collect()
        };
        for sub in retiring {
            self.retire(sub, Duration::ZERO).await;
        }
        let dropped = self.backend.delete_queue(name).await.map_err(DeleteError::Remote)?;
        self.topology.write().expect("not poisoned").queues.remove(name);
        let id = self.queue_ids.write().expect("not poisoned").remove(name);
        if let Some(id) = id {
            // Kept in `queue_names` (so that a re-declared queue gets a new id); out of every route.
            for mirror in self.mirrors.write().expect("not poisoned").values_mut() {
                mirror.table.unbind_queue(id);
            }
        }
        let counted = self.counts.lock().expect("not poisoned").queues.remove(name);
        let mut stats = counted.map(|q| q.lock().expect("not poisoned").clone()).unwrap_or_default();
        stats.dropped.deleted = dropped;
        stats.deleted = true;
        Ok(stats)
    }

    pub(crate) async fn bind(
        &self,
        topic: &str,
        queue: &str,
        key: &str,
        bind: bool,
    ) -> Result<bool, BindError> {
        let kind = {
            let mirrors = self.mirrors.read().expect("not poisoned");
            mirrors.get(topic).map(|m| m.kind).ok_or_else(|| BindError::UnknownTopic(topic.to_owned()))?
        };
        let id = self.queue_ids.read().expect("not poisoned").get(queue).copied();
        let id = id.ok_or_else(|| BindError::UnknownQueue(queue.to_owned()))?;
        if bind {
            crate::routing::validate_pattern(kind, key)?;
        }
        self.backend.bind(topic, kind, queue, key, bind).await.map_err(BindError::Remote)?;
        let mut mirrors = self.mirrors.write().expect("not poisoned");
        let mirror = mirrors.get_mut(topic).expect("checked above");
        Ok(if bind { mirror.table.bind(id, key, 1)? } else { mirror.table.unbind(id, key) })
    }

    pub(crate) async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let subs: Vec<RemoteSub> =
            std::mem::take(&mut *self.subs.lock().expect("not poisoned")).into_values().collect();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut report =
            ShutdownReport { shut_down: true, drained: true, stopped: true, ..Default::default() };
        for sub in subs {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.retire(sub, left).await;
            report.drained &= r.drained;
            report.stopped &= r.stopped;
            report.interrupted += r.interrupted;
            report.requeued += r.requeued;
            report.lost += r.lost;
        }
        // Unconfirmed publishes finish (or fail, counted) before the connection closes.
        let _ = tokio::time::timeout(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            self.window.acquire_many(PUBLISH_WINDOW_MAX as u32),
        )
        .await;
        // Within what is left of the deadline, and at least DEPTH_TIMEOUT: reading a remote
        // queue's depth opens a channel, which can wait long on a lost connection.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(DEPTH_TIMEOUT);
        if let Ok(stats) = tokio::time::timeout(left, self.stats()).await {
            report.stats = stats;
        } else {
            tracing::warn!("the remote broker did not answer for its queues' depths at shutdown");
            report.stats = self.local_stats();
        }
        self.window.close();
        self.backend.close().await;
        report
    }
}

/// One subscription's handler loop, on the broker's arbiter.
struct SubLoop {
    queue: Arc<str>,
    mode: DeliveryMode,
    /// Whether the queue has a dead-letter queue.
    dead_letters: bool,
    /// How long a deferred delivery may stay unsettled before this side gives it back.
    ack_timeout: Duration,
    /// Deliveries of one message at most (0: no limit).
    delivery_limit: u32,
    consumer: ConsumerId,
    settler: Arc<dyn Settler>,
    /// `settler` as a handler's `Acker` reaches it (after `Defer`): its settlements counted as
    /// outcomes are. Made once per subscription, shared by every delivery.
    acker_settler: Arc<dyn Settler>,
    stop: Arc<StopFlag>,
    /// This queue's counters.
    counts: Arc<Mutex<QueueStats>>,
    in_flight: Arc<AtomicU64>,
    on_undecodable: Option<crate::subscriber::UndecodableHook>,
}

impl SubLoop {
    fn count(&self, f: impl FnOnce(&mut QueueStats)) {
        f(&mut self.counts.lock().expect("not poisoned"));
    }

    async fn run<T, R>(self, mut deliveries: Deliveries, mut runner: R) -> LoopEnd
    where
        T: DeserializeOwned + Send + Sync + 'static,
        R: Runner<T>,
    {
        loop {
            if self.stop.is_set() {
                return LoopEnd { rest: Some(deliveries) };
            }
            // The stream first: a busy stream costs no waiter on the stop flag per message (checked
            // above each turn).
            let next = tokio::select! {
                biased;
                next = deliveries.next() => next,
                () = self.stop.notify.notified() => return LoopEnd { rest: Some(deliveries) },
            };
            let incoming = match next {
                Some(Ok(incoming)) => incoming,
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "remote consumer error");
                    continue;
                }
                None => {
                    tracing::warn!(queue = %self.queue, "the remote broker ended the consumer");
                    return LoopEnd::default();
                }
            };
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            self.handle::<T, R>(incoming, &mut runner).await;
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    async fn handle<T, R>(&self, incoming: Incoming, runner: &mut R)
    where
        T: DeserializeOwned + Send + Sync + 'static,
        R: Runner<T>,
    {
        let Incoming { tag, key, body, id, delivery_count, deaths } = incoming;
        let at_least_once = self.mode == DeliveryMode::AtLeastOnce;
        if at_least_once && self.delivery_limit > 0 && delivery_count > self.delivery_limit {
            // Past the limit (a server that does not count, as JetStream here): dead-lettered
            // without running the handler, as the in-process queue does.
            if let Err(e) = Arc::clone(&self.settler).settle(tag, RemoteSettle::DeliveryLimit).await {
                tracing::warn!(queue = %self.queue, tag, error = %e, "dead-lettering at the delivery limit failed; it comes again");
                return;
            }
            self.count(|q| count_settled(q, RemoteSettle::DeliveryLimit, 1, self.dead_letters));
            return;
        }
        self.count(|q| {
            q.delivered += 1;
            q.redelivered += u64::from(delivery_count > 1);
        });
        let msg = Arc::new(Message { id, key, payload: Payload::Bytes(body), deaths: deaths.into() });
        let value = match msg.payload.read_value::<T>() {
            Ok(value) => value,
            Err(e) => {
                self.count(|q| q.undecodable += 1);
                tracing::warn!(queue = %self.queue, error = %e, "undecodable payload rejected");
                if let Some(hook) = &self.on_undecodable {
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| hook(&msg, &e)));
                }
                return self.settle(tag, Outcome::Reject).await;
            }
        };
        let link = crate::subscriber::Link::Remote(Arc::clone(&self.acker_settler));
        let delivery = Delivery::remote(value, msg, DeliveryTag(tag), delivery_count, link);
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| runner.run(delivery))) {
            Ok(Run::Done(outcome)) => Ok(outcome),
            Ok(Run::Pending(future)) => {
                // A handler that runs long tells the remote it is still at work, twice per ack
                // timeout (JetStream's progress ack), so that a slow handler's message is not
                // redelivered to another subscriber while it runs.
                let mut running = std::pin::pin!(AssertUnwindSafe(future).catch_unwind());
                let every = (self.ack_timeout / 2).max(Duration::from_millis(10));
                loop {
                    tokio::select! {
                        outcome = &mut running => break outcome,
                        () = tokio::time::sleep(every), if self.mode == DeliveryMode::AtLeastOnce => {
                            Arc::clone(&self.settler).progress(tag).await;
                        }
                    }
                }
            }
            Err(panic) => Err(panic),
        };
        match outcome {
            Ok(outcome) => self.settle(tag, outcome).await,
            Err(_) => {
                // As in process: a panicking handler's delivery is requeued (at least once).
                tracing::warn!(queue = %self.queue, consumer = self.consumer.0, "handler panicked; its delivery is requeued");
                runner.restarted();
                self.settle(tag, Outcome::Nack { requeue: true }).await;
            }
        }
    }

    async fn settle(&self, tag: u64, outcome: Outcome) {
        let op = match outcome {
            Outcome::Defer if self.mode == DeliveryMode::AtLeastOnce => {
                // The queue's `ack_timeout`, kept on this side (RabbitMQ before 3.12 has no
                // per-queue consumer timeout): a deferred delivery still unsettled then is given
                // back and redelivered. Settled before, the late nack finds no such tag.
                let (settler, after) = (Arc::clone(&self.settler), self.ack_timeout);
                actix::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = settler.settle(tag, RemoteSettle::Nack { multiple: false, requeue: true }).await;
                });
                return;
            }
            Outcome::Defer => return,
            Outcome::Ack => RemoteSettle::Ack { multiple: false },
            Outcome::Nack { requeue } => RemoteSettle::Nack { multiple: false, requeue },
            Outcome::Reject => RemoteSettle::Reject,
            Outcome::Retry { .. } if self.mode == DeliveryMode::AtMostOnce => RemoteSettle::Reject,
            Outcome::Retry { after } => RemoteSettle::Retry { after },
        };
        if self.mode == DeliveryMode::AtLeastOnce {
            if let Err(e) = Arc::clone(&self.settler).settle(tag, op).await {
                tracing::warn!(queue = %self.queue, tag, error = %e, "settling on the remote broker failed; it redelivers");
                return;
            }
        }
        self.count(|q| count_settled(q, op, 1, self.dead_letters));
    }
}

/// Counts `n` deliveries settled by `op` as the in-process queue does: every nack and reject is
/// `nacked`; one that is not requeued is dead-lettered, or dropped as `rejected` (`delivery_limit`
/// past the limit) without a dead-letter queue.
fn count_settled(q: &mut QueueStats, op: RemoteSettle, n: u64, dead_letters: bool) {
    match op {
        RemoteSettle::Ack { .. } => q.acked += n,
        RemoteSettle::Nack { requeue: true, .. } | RemoteSettle::Retry { .. } => q.nacked += n,
        RemoteSettle::DeliveryLimit if dead_letters => q.dead_lettered += n,
        RemoteSettle::DeliveryLimit => q.dropped.delivery_limit += n,
        RemoteSettle::Nack { requeue: false, .. } | RemoteSettle::Reject => {
            q.nacked += n;
            match dead_letters {
                true => q.dead_lettered += n,
                false => q.dropped.rejected += n,
            }
        }
    }
}

/// A subscription's settler as a handler's `Acker` reaches it: each settlement it makes is counted
/// in the queue's figures.
struct CountedSettler {
    settler: Arc<dyn Settler>,
    counts: Arc<Mutex<QueueStats>>,
    dead_letters: bool,
}

impl Settler for CountedSettler {
    fn settle(self: Arc<Self>, tag: u64, op: RemoteSettle) -> BoxFut<'static, Result<u64, AckError>> {
        Box::pin(async move {
            let settled = Arc::clone(&self.settler).settle(tag, op).await?;
            count_settled(&mut self.counts.lock().expect("not poisoned"), op, settled, self.dead_letters);
            Ok(settled)
        })
    }

    fn progress(self: Arc<Self>, tag: u64) -> BoxFut<'static, ()> {
        Arc::clone(&self.settler).progress(tag)
    }
}
