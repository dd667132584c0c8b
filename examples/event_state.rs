//! Two ways to keep a copy of another module's state from its events, and what reordering does to them.
//!
//! The Orders module owns delivery addresses (the source of truth) and changes each several times. An
//! outbox relay publishes the events, but out of order and some of them twice (several relay workers,
//! retries after a lost confirm), as happens whenever more than one path leads to the queue.
//!
//! - Event-carried state transfer: each event carries the whole address and its version. A consumer
//!   that keeps the last event to arrive ends with stale addresses; one that keeps the highest version
//!   ([`VersionedState`], last writer wins by version) ends with the source's state.
//! - Id-only notifications: each event says only "order N changed", and the consumer re-reads the
//!   source of truth. Its effect ("copy the current address of N") does not depend on which
//!   notification came first, so order and duplicates do not matter: each notification leaves the
//!   outbox only after its change is committed, so the last one handled reads the last change. The
//!   price is a read of the source per event, and a source reachable when the event is handled.
//!
//! Run it with `cargo run --example event_state`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tubemail::consumer::{ApplyVersioned, VersionedState};
use tubemail::{Broker, Delivery, Outcome, QueueSpec, Stats, TopicKind, TopicSpec, Topology};

/// Orders whose address changes.
const ORDERS: u32 = 4;
/// Changes per order (versions 1 to this).
const VERSIONS: u64 = 4;
/// Where the addresses move to, one street per version.
const STREETS: [&str; VERSIONS as usize] = ["Elm", "Oak", "Ash", "Fir"];
/// Seeds the relay's shuffle and its duplicates.
const SEED: u64 = 11;

/// The event that carries the state: the whole address, with its version.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddressChanged {
    order: u32,
    version: u64,
    street: String,
}

/// The event that carries only an id: "go and look".
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderChanged {
    order: u32,
}

/// The Orders module's own table: order -> (version, street).
type Addresses = BTreeMap<u32, (u64, String)>;

fn topology() -> Topology {
    Topology::new()
        .topic("orders", TopicSpec::new(TopicKind::Topic))
        .queue("shipping-by-arrival", QueueSpec::default())
        .queue("shipping-by-version", QueueSpec::default())
        .queue("shipping-notified", QueueSpec::default())
        .bind("orders", "shipping-by-arrival", "orders.address_changed")
        .bind("orders", "shipping-by-version", "orders.address_changed")
        .bind("orders", "shipping-notified", "orders.changed")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("no handler panics holding a lock")
}

/// The Orders module changes every address `VERSIONS` times, writing each change to its outbox.
fn change_addresses(source: &Mutex<Addresses>) -> Vec<AddressChanged> {
    let mut outbox = Vec::new();
    for version in 1..=VERSIONS {
        for order in 1..=ORDERS {
            let street = format!("{order} {} Street", STREETS[version as usize - 1]);
            lock(source).insert(order, (version, street.clone()));
            outbox.push(AddressChanged { order, version, street });
        }
    }
    outbox
}

/// The relay: publishes the outbox shuffled, a quarter of it twice.
fn relay_order<T: Clone>(outbox: &[T], rng: &mut ChaCha8Rng) -> Vec<T> {
    let mut sent: Vec<T> = outbox.to_vec();
    sent.extend(outbox.iter().filter(|_| rng.gen_ratio(1, 4)).cloned());
    sent.shuffle(rng);
    sent
}

/// Waits until the broker is idle (`Broker::idle`), within ten minutes of the paused clock.
async fn wait_quiet(broker: &Broker) -> Stats {
    let idle = tokio::time::timeout(Duration::from_secs(600), broker.idle()).await;
    idle.expect("the broker went quiet");
    broker.stats().await
}

fn print_state(label: &str, state: &Addresses, truth: &Addresses) {
    let verdict = if state == truth { "matches the source" } else { "DIVERGED from the source" };
    println!("{label}: {verdict}");
    for (order, (version, street)) in state {
        let mark = if truth.get(order) == Some(&(*version, street.clone())) { "" } else { "   <- stale" };
        println!("    order {order}: v{version} {street:?}{mark}");
    }
}

#[actix::main]
async fn main() {
    tokio::time::pause();
    let broker = Broker::start(topology()).expect("the topology is valid");

    // Event-carried state, kept naively: the last event to arrive wins.
    let by_arrival = Arc::new(Mutex::new(Addresses::new()));
    let last = by_arrival.clone();
    let keep_last = move |d: Delivery<AddressChanged>| {
        lock(&last).insert(d.order, (d.version, d.street.clone()));
        async { Outcome::Ack }
    };
    broker.subscribe("shipping-by-arrival", keep_last).await.expect("queue declared");

    // Event-carried state, kept by version: the highest version wins.
    let by_version = VersionedState::new();
    let extract = |e: &AddressChanged| (e.order, e.version, e.street.clone());
    let handler = ApplyVersioned::new(by_version.clone(), extract);
    broker.subscribe("shipping-by-version", handler).await.expect("queue declared");

    // Id-only notifications: re-read the source of truth for the order named.
    let source = Arc::new(Mutex::new(Addresses::new()));
    let notified = Arc::new(Mutex::new(Addresses::new()));
    let (truth, copy) = (source.clone(), notified.clone());
    let reread = move |d: Delivery<OrderChanged>| {
        let current = lock(&truth).get(&d.order).cloned();
        if let Some(current) = current {
            lock(&copy).insert(d.order, current);
        }
        async { Outcome::Ack }
    };
    broker.subscribe("shipping-notified", reread).await.expect("queue declared");

    let outbox = change_addresses(&source);
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let orders = broker.publisher("orders").expect("topic declared");
    let state_events = relay_order(&outbox, &mut rng);
    let notifications = relay_order(&outbox, &mut rng);
    println!(
        "orders made {} changes; the relay published {} state events and {} notifications, shuffled\n",
        outbox.len(),
        state_events.len(),
        notifications.len()
    );
    for event in &state_events {
        orders.publish("orders.address_changed", event.clone()).await.expect("broker open");
    }
    for event in &notifications {
        let notification = OrderChanged { order: event.order };
        orders.publish("orders.changed", notification).await.expect("broker open");
    }
    let stats = wait_quiet(&broker).await;
    assert!(stats.conserved(), "a message was lost without a reason: {stats:#?}");

    let truth = lock(&source).clone();
    let by_arrival = lock(&by_arrival).clone();
    let counts = by_version.stats();
    let by_version = by_version.snapshot();
    let notified = lock(&notified).clone();
    print_state("source of truth (Orders)", &truth, &truth);
    print_state("\nstate events, last to arrive wins", &by_arrival, &truth);
    print_state("\nstate events, highest version wins (VersionedState)", &by_version, &truth);
    println!(
        "    ({} events applied; {} stale and {} duplicate events dropped)",
        counts.applied, counts.stale, counts.duplicate
    );
    print_state("\nid-only notifications, source re-read", &notified, &truth);

    assert_ne!(by_arrival, truth, "this seed's shuffle should leave some address stale");
    assert_eq!(by_version, truth, "versioned state converges despite reordering and duplicates");
    assert_eq!(notified, truth, "re-reading the source converges whatever the order");
    broker.shutdown(Duration::from_secs(1)).await;
}
