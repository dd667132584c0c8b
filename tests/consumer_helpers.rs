//! The consumer helpers through the real broker: an idempotent consumer turns at-least-once delivery
//! into an exactly-once effect (and where it cannot), and versioned state converges despite reordering
//! and duplicates. Each guarantee is shown next to a variant without the helper, which breaks it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tubemail::consumer::{
    apply_versioned_sync, idempotent_sync, Applied, ApplyVersioned, Begin, Claim, DedupStore, DedupWindow,
    Idempotent, VersionedState, DEDUP_WINDOW_DEFAULT, DEDUP_WINDOW_MAX,
};
use tubemail::ids::MessageId;
use tubemail::{
    Broker, Delivery, Handler, Outcome, QueueSpec, Stats, SubscribeOptions, TopicKind, TopicSpec, Topology,
};

const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Messages published in the lost-ack scenarios.
const MESSAGES: u32 = 9;
/// The first ack of every message divisible by this is lost.
const LOST_ACK_EVERY: u32 = 3;

/// The handles must cross threads: subscribers run on the broker's arbiter, readers anywhere.
const _: fn() = || {
    fn require_send_sync<T: Send + Sync>() {}
    require_send_sync::<DedupStore>();
    require_send_sync::<DedupWindow>();
    require_send_sync::<Claim>();
    require_send_sync::<VersionedState<u32, String>>();
};

fn topology(spec: QueueSpec) -> Topology {
    Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout)).queue("q", spec).bind("t", "q", "")
}

async fn start(spec: QueueSpec) -> Broker {
    tokio::time::pause();
    Broker::start(topology(spec)).unwrap()
}

async fn publish_all(broker: &Broker, count: u32) {
    for value in 1..=count {
        broker.publish("t", "", value).await.unwrap();
    }
}

async fn wait_until(broker: &Broker, what: &str, done: impl Fn(&Stats) -> bool) -> Stats {
    for _ in 0..1_000 {
        let stats = broker.stats().await;
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("waited in vain for {what}: {:?}", broker.stats().await);
}

async fn wait_acked(broker: &Broker, acked: u32) -> Stats {
    let stats = wait_until(broker, "every ack", |s| s.queues["q"].acked == u64::from(acked)).await;
    assert!(stats.conserved(), "{stats:?}");
    stats
}

/// How often the effect ran, per message value.
#[derive(Clone, Default)]
struct Effects(Arc<Mutex<BTreeMap<u32, u32>>>);

impl Effects {
    fn run(&self, value: u32) {
        *self.0.lock().unwrap().entry(value).or_default() += 1;
    }

    fn counts(&self) -> BTreeMap<u32, u32> {
        self.0.lock().unwrap().clone()
    }

    /// Every value in `1..=MESSAGES` ran `expected(value)` times.
    fn assert(&self, messages: u32, expected: impl Fn(u32) -> u32) {
        let want: BTreeMap<u32, u32> = (1..=messages).map(|v| (v, expected(v))).collect();
        assert_eq!(self.counts(), want, "effects per message");
    }
}

/// The effect, done and acked.
fn effect(effects: &Effects) -> impl Handler<u32> {
    let effects = effects.clone();
    move |d: Delivery<u32>| {
        effects.run(*d);
        async { Outcome::Ack }
    }
}

/// Loses the first ack of the messages `lose` picks, as a process that dies after its handler returned
/// and before the ack reached the queue: the queue sees the delivery unsettled (`Defer`, never
/// settled) and redelivers it after the ack deadline.
fn losing_first_acks<H: Handler<u32>>(lose: fn(u32) -> bool, mut inner: H) -> impl Handler<u32> {
    move |d: Delivery<u32>| {
        let lost = !d.redelivered() && lose(*d);
        let run = inner.handle(d);
        async move {
            match run.await {
                Outcome::Ack if lost => Outcome::Defer,
                outcome => outcome,
            }
        }
    }
}

fn every_third(value: u32) -> bool {
    value.is_multiple_of(LOST_ACK_EVERY)
}

fn lost_acks() -> u64 {
    u64::from(MESSAGES / LOST_ACK_EVERY)
}

async fn run_with_lost_acks(handler: impl Handler<u32>) -> Stats {
    let broker = start(QueueSpec::default().ack_timeout(ACK_TIMEOUT)).await;
    broker.subscribe("q", losing_first_acks(every_third, handler)).await.unwrap();
    publish_all(&broker, MESSAGES).await;
    let stats = wait_acked(&broker, MESSAGES).await;
    assert_eq!(stats.queues["q"].redelivered, lost_acks(), "each lost ack redelivered once");
    stats
}

#[actix::test]
async fn with_idempotent_lost_acks_run_each_effect_exactly_once() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    run_with_lost_acks(Idempotent::new(store.clone(), effect(&effects))).await;
    effects.assert(MESSAGES, |_| 1);
    let stats = store.stats();
    assert_eq!(stats.duplicates_skipped, lost_acks(), "{stats:?}");
    assert_eq!((stats.recorded, stats.len, stats.in_progress), (u64::from(MESSAGES), MESSAGES as usize, 0));
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn without_idempotent_lost_acks_run_their_effects_twice() {
    let effects = Effects::default();
    run_with_lost_acks(effect(&effects)).await;
    effects.assert(MESSAGES, |v| if every_third(v) { 2 } else { 1 });
}

#[actix::test]
async fn the_sync_variant_runs_each_effect_exactly_once() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    let broker = start(QueueSpec::default().ack_timeout(ACK_TIMEOUT)).await;
    let run = effects.clone();
    let mut inner = idempotent_sync(store.clone(), move |d: Delivery<u32>| {
        run.run(*d);
        Outcome::Ack
    });
    let lossy = move |d: Delivery<u32>| {
        let lost = !d.redelivered() && every_third(*d);
        match inner(d) {
            Outcome::Ack if lost => Outcome::Defer,
            outcome => outcome,
        }
    };
    broker.subscribe_sync_with("q", SubscribeOptions::default(), lossy).await.unwrap();
    publish_all(&broker, MESSAGES).await;
    wait_acked(&broker, MESSAGES).await;
    effects.assert(MESSAGES, |_| 1);
    assert_eq!(store.stats().duplicates_skipped, lost_acks());
}

#[actix::test]
async fn the_store_outlives_a_subscription_and_serves_the_next() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    let broker = start(QueueSpec::default()).await;
    let first = broker
        .subscribe("q", losing_first_acks(|_| true, Idempotent::new(store.clone(), effect(&effects))))
        .await
        .unwrap();
    publish_all(&broker, MESSAGES).await;
    wait_until(&broker, "every delivery held", |s| s.queues["q"].in_flight == u64::from(MESSAGES)).await;
    // Every ack was lost: unsubscribing puts all the messages back.
    let report = first.unsubscribe(Duration::from_millis(100)).await;
    assert_eq!(report.requeued, u64::from(MESSAGES));

    broker.subscribe("q", Idempotent::new(store.clone(), effect(&effects))).await.unwrap();
    wait_acked(&broker, MESSAGES).await;
    effects.assert(MESSAGES, |_| 1);
    assert_eq!(store.stats().duplicates_skipped, u64::from(MESSAGES));
}

/// Runs the effect, then panics on the first delivery of message 2: the crash falls after the effect
/// and before the ack.
fn panicking_after_the_effect(effects: &Effects) -> impl Handler<u32> {
    let (effects, panicked) = (effects.clone(), Arc::new(AtomicBool::new(false)));
    move |d: Delivery<u32>| {
        effects.run(*d);
        if *d == 2 && !panicked.swap(true, Ordering::SeqCst) {
            panic!("crash after the effect, before the ack");
        }
        async { Outcome::Ack }
    }
}

/// The gap the module docs name: the id is recorded when the handler returns `Ack`, so a crash between
/// the effect and the return repeats the effect. Kept as a test so that the docs stay true.
#[actix::test]
async fn idempotent_alone_repeats_an_effect_that_a_panic_interrupted_before_the_ack() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    let broker = start(QueueSpec::default()).await;
    broker
        .subscribe("q", Idempotent::new(store.clone(), panicking_after_the_effect(&effects)))
        .await
        .unwrap();
    publish_all(&broker, 3).await;
    let stats = wait_acked(&broker, 3).await;
    assert_eq!(stats.queues["q"].restarts, 1);
    effects.assert(3, |v| if v == 2 { 2 } else { 1 });
    let dedup = store.stats();
    assert_eq!((dedup.abandoned, dedup.recorded, dedup.in_progress), (1, 3, 0), "{dedup:?}");
    assert!(dedup.conserved(), "{dedup:?}");
}

/// The honest design: the effect and the record of its id are one step in the user's own state, so a
/// crash after it finds the id recorded.
#[actix::test]
async fn an_effect_recorded_in_the_same_step_as_its_id_survives_a_panic_before_the_ack() {
    #[derive(Default)]
    struct Ledger {
        seen: DedupWindow,
        effects: BTreeMap<u32, u32>,
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let broker = start(QueueSpec::default()).await;
    let (state, panicked) = (ledger.clone(), AtomicBool::new(false));
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            {
                let mut ledger = state.lock().unwrap();
                if ledger.seen.record(d.id()) {
                    *ledger.effects.entry(*d).or_default() += 1;
                }
            }
            if *d == 2 && !panicked.swap(true, Ordering::SeqCst) {
                panic!("crash after the effect, before the ack");
            }
            async { Outcome::Ack }
        })
        .await
        .unwrap();
    publish_all(&broker, 3).await;
    let stats = wait_acked(&broker, 3).await;
    assert_eq!(stats.queues["q"].restarts, 1);
    assert!(stats.queues["q"].redelivered >= 1, "{stats:?}");
    let effects = ledger.lock().unwrap().effects.clone();
    assert_eq!(effects, BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
}

#[actix::test]
async fn a_deferred_outcome_is_not_recorded_so_the_redelivery_runs_again() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    let broker = start(QueueSpec::default().ack_timeout(ACK_TIMEOUT)).await;
    let run = effects.clone();
    let defers_first = move |d: Delivery<u32>| {
        run.run(*d);
        let outcome = if d.redelivered() { Outcome::Ack } else { Outcome::Defer };
        async move { outcome }
    };
    broker.subscribe("q", Idempotent::new(store.clone(), defers_first)).await.unwrap();
    publish_all(&broker, 1).await;
    wait_acked(&broker, 1).await;
    effects.assert(1, |_| 2);
    let dedup = store.stats();
    assert_eq!((dedup.not_acked, dedup.recorded, dedup.duplicates_skipped), (1, 1, 0), "{dedup:?}");
}

/// A handler that outlives its ack deadline: the copy redelivered to a second subscriber sharing the
/// store is nacked with requeue, not run beside the first; the first run's ack is late, and the copy
/// after it is skipped as a duplicate.
#[actix::test]
async fn a_copy_of_a_message_in_progress_elsewhere_is_requeued_not_run_twice() {
    let (effects, store) = (Effects::default(), DedupStore::default());
    let broker = start(QueueSpec::default().ack_timeout(ACK_TIMEOUT)).await;
    let slow_first = |effects: Effects| {
        move |d: Delivery<u32>| {
            let effects = effects.clone();
            async move {
                if !d.redelivered() {
                    tokio::time::sleep(ACK_TIMEOUT * 3).await;
                }
                effects.run(*d);
                Outcome::Ack
            }
        }
    };
    for _ in 0..2 {
        let handler = Idempotent::new(store.clone(), slow_first(effects.clone()));
        broker.subscribe("q", handler).await.unwrap();
    }
    publish_all(&broker, 1).await;
    let stats = wait_acked(&broker, 1).await;
    effects.assert(1, |_| 1);
    let dedup = store.stats();
    assert_eq!(dedup.recorded, 1, "{dedup:?}");
    assert!(dedup.concurrent_duplicates >= 1, "{dedup:?}");
    assert!(dedup.duplicates_skipped >= 1, "{dedup:?}");
    assert!(dedup.conserved(), "{dedup:?}");
    assert_eq!(stats.queues["q"].dead_lettered + stats.queues["q"].dropped.total(), 0, "{stats:?}");
}

/// The window bounds what is recognised: a copy that arrives after `window` other ids were recorded
/// runs again.
async fn lost_first_ack_then_another_message(window: usize) -> Effects {
    let (effects, store) = (Effects::default(), DedupStore::new(window));
    let broker = start(QueueSpec::default().ack_timeout(ACK_TIMEOUT)).await;
    let handler = losing_first_acks(|v| v == 1, Idempotent::new(store.clone(), effect(&effects)));
    broker.subscribe("q", handler).await.unwrap();
    publish_all(&broker, 2).await;
    wait_acked(&broker, 2).await;
    assert_eq!(store.len(), window.min(2));
    effects
}

#[actix::test]
async fn a_redelivery_within_the_window_is_recognised() {
    lost_first_ack_then_another_message(2).await.assert(2, |_| 1);
}

#[actix::test]
async fn a_redelivery_beyond_the_window_runs_again() {
    lost_first_ack_then_another_message(1).await.assert(2, |v| if v == 1 { 2 } else { 1 });
}

#[test]
fn the_window_keeps_the_last_ids_and_evicts_the_oldest() {
    let store = DedupStore::new(3);
    for id in (1..=5).map(MessageId) {
        let Begin::Run(claim) = store.begin(id) else { panic!("{id:?} is new") };
        assert_eq!(claim.finish(Outcome::Ack), Outcome::Ack);
    }
    let remembered: Vec<u64> = (1..=5).filter(|&i| store.contains(MessageId(i))).collect();
    assert_eq!(remembered, [3, 4, 5]);
    let stats = store.stats();
    assert_eq!((stats.len, stats.evicted, stats.recorded), (3, 2, 5));
    assert!(matches!(store.begin(MessageId(1)), Begin::Run(_)), "an evicted id is new again");
}

#[test]
fn the_window_is_clamped_to_its_bounds() {
    assert_eq!(DedupStore::default().window(), DEDUP_WINDOW_DEFAULT);
    assert_eq!(DedupStore::new(0).window(), 1);
    assert_eq!(DedupStore::new(usize::MAX).window(), DEDUP_WINDOW_MAX);
    assert_eq!(DedupWindow::new(usize::MAX).window(), DEDUP_WINDOW_MAX);
}

#[test]
fn a_claim_records_only_an_ack_and_a_dropped_claim_releases_its_id() {
    let store = DedupStore::new(10);
    let id = MessageId(1);
    let Begin::Run(claim) = store.begin(id) else { panic!("new") };
    assert!(matches!(store.begin(id), Begin::InProgress));
    claim.finish(Outcome::Nack { requeue: true });
    assert!(!store.contains(id), "a nack is not recorded");
    let Begin::Run(claim) = store.begin(id) else { panic!("released") };
    drop(claim);
    let Begin::Run(claim) = store.begin(id) else { panic!("released") };
    claim.finish(Outcome::Ack);
    assert!(matches!(store.begin(id), Begin::Duplicate));
    let stats = store.stats();
    let counts = (stats.begun, stats.not_acked, stats.abandoned, stats.recorded);
    assert_eq!(counts, (5, 1, 1, 1), "{stats:?}");
    assert_eq!((stats.concurrent_duplicates, stats.duplicates_skipped), (1, 1));
    assert!(stats.conserved(), "{stats:?}");
}

proptest! {
    /// The window against a model: the last `window` distinct ids recorded, in order.
    #[test]
    fn the_window_remembers_exactly_the_last_ids_recorded(
        window in 1_usize..6,
        ids in prop::collection::vec(0_u64..16, 0..64),
    ) {
        let mut dedup = DedupWindow::new(window);
        let mut model: Vec<u64> = Vec::new();
        for id in ids {
            let remembered = model.iter().rev().take(window).any(|&m| m == id);
            prop_assert_eq!(dedup.record(MessageId(id)), !remembered);
            if !remembered {
                model.push(id);
            }
            prop_assert!(dedup.len() <= window);
            let last: Vec<u64> = model.iter().rev().take(window).copied().collect();
            for probe in 0..16 {
                prop_assert_eq!(dedup.contains(MessageId(probe)), last.contains(&probe));
            }
            prop_assert_eq!(dedup.evicted(), (model.len() - dedup.len()) as u64);
        }
    }
}

/// A versioned update: version `v` of key `k` always carries the same value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Update {
    key: u32,
    version: u64,
    value: String,
}

impl Update {
    fn new(key: u32, version: u64) -> Self {
        Self { key, version, value: format!("k{key}v{version}") }
    }
}

/// The state the updates give applied in version order: the highest version of each key.
fn in_order(updates: &[Update]) -> BTreeMap<u32, (u64, String)> {
    let mut sorted = updates.to_vec();
    sorted.sort_by_key(|u| u.version);
    sorted.into_iter().map(|u| (u.key, (u.version, u.value))).collect()
}

/// Versions 1 to 5 of eight keys, a third of them twice, shuffled.
fn shuffled_updates(seed: u64) -> Vec<Update> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut updates = Vec::new();
    for key in 0..8 {
        for version in 1..=5 {
            updates.push(Update::new(key, version));
            if rng.gen_ratio(1, 3) {
                updates.push(Update::new(key, version));
            }
        }
    }
    updates.shuffle(&mut rng);
    updates
}

#[actix::test]
async fn shuffled_versioned_updates_with_duplicates_converge_to_the_in_order_state() {
    tokio::time::pause();
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("versioned", QueueSpec::default())
        .queue("versioned-sync", QueueSpec::default())
        .queue("arrival", QueueSpec::default())
        .bind("t", "versioned", "")
        .bind("t", "versioned-sync", "")
        .bind("t", "arrival", "");
    let broker = Broker::start(topology).unwrap();
    let extract = |u: &Update| (u.key, u.version, u.value.clone());
    let (versioned, versioned_sync) = (VersionedState::new(), VersionedState::new());
    broker.subscribe("versioned", ApplyVersioned::new(versioned.clone(), extract)).await.unwrap();
    let handler = apply_versioned_sync(versioned_sync.clone(), extract);
    broker.subscribe_sync_with("versioned-sync", SubscribeOptions::default(), handler).await.unwrap();
    // The broken variant: the last update to arrive wins, whatever its version.
    let arrival = Arc::new(Mutex::new(BTreeMap::new()));
    let last = arrival.clone();
    broker
        .subscribe("arrival", move |d: Delivery<Update>| {
            last.lock().unwrap().insert(d.key, (d.version, d.value.clone()));
            async { Outcome::Ack }
        })
        .await
        .unwrap();

    let updates = shuffled_updates(7);
    for update in &updates {
        broker.publish("t", "", update.clone()).await.unwrap();
    }
    let published = updates.len() as u64;
    let stats = wait_until(&broker, "every ack", |s| s.queues.values().all(|q| q.acked == published)).await;
    assert!(stats.conserved(), "{stats:?}");

    let want = in_order(&updates);
    assert_eq!(versioned.snapshot(), want);
    assert_eq!(versioned_sync.snapshot(), want);
    assert_ne!(*arrival.lock().unwrap(), want, "arrival order alone converges for this seed: pick another");
    let counts = versioned.stats();
    assert_eq!(counts.applied + counts.stale + counts.duplicate, published, "{counts:?}");
    assert!(counts.stale > 0 && counts.duplicate > 0, "the shuffle should reorder and repeat: {counts:?}");
    assert_eq!(counts.keys, 8);
}

#[test]
fn an_update_applies_only_above_the_version_held() {
    let state = VersionedState::<&str, &str>::new();
    assert_eq!(state.apply("a", 2, "two"), Applied::Applied);
    assert_eq!(state.apply("a", 2, "other two"), Applied::Duplicate);
    assert_eq!(state.apply("a", 1, "one"), Applied::Stale);
    assert_eq!(state.apply("a", 3, "three"), Applied::Applied);
    assert_eq!(state.get(&"a"), Some((3, "three")));
    assert_eq!((state.version(&"a"), state.version(&"b")), (Some(3), None));
    let stats = state.stats();
    assert_eq!((stats.keys, stats.applied, stats.stale, stats.duplicate), (1, 2, 1, 1));
}

/// Updates, some repeated, in a shuffled order of delivery.
fn arbitrary_deliveries() -> impl Strategy<Value = (Vec<Update>, Vec<Update>)> {
    let update = (0_u32..4, 0_u64..8).prop_map(|(key, version)| Update::new(key, version));
    prop::collection::vec((update, 1_usize..3), 0..40).prop_flat_map(|picked| {
        let updates: Vec<Update> = picked.iter().map(|(u, _)| u.clone()).collect();
        let copies: Vec<Update> = picked.into_iter().flat_map(|(u, n)| std::iter::repeat_n(u, n)).collect();
        (Just(updates), Just(copies).prop_shuffle())
    })
}

proptest! {
    #[test]
    fn versioned_state_converges_whatever_the_order_and_the_duplicates(
        (updates, deliveries) in arbitrary_deliveries(),
    ) {
        let state = VersionedState::new();
        for u in &deliveries {
            state.apply(u.key, u.version, u.value.clone());
        }
        prop_assert_eq!(state.snapshot(), in_order(&updates));
        let stats = state.stats();
        prop_assert_eq!(stats.applied + stats.stale + stats.duplicate, deliveries.len() as u64);
    }
}
