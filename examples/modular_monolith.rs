//! A modular monolith: four modules of one application (Orders, Billing, Shipping, Analytics) that
//! know nothing of each other and talk only through tubemail topics and queues.
//!
//! What it shows:
//! - 1:n: one `orders.placed` event reaches the queues of Billing, Shipping and Analytics.
//! - n:1: Shipping's one queue is bound to two topics (`orders`, `billing`), and Analytics' one queue
//!   to all three (`orders`, `billing`, `shipping`).
//! - Idempotent at-least-once consumers: Billing charges some orders and then "dies" before acking
//!   (it returns `Outcome::Defer` and never settles). The ack deadline redelivers the message;
//!   Billing recognises its id and acks without charging twice.
//! - A first job that enqueues its follow-ups: charging publishes `billing.paid`, which Shipping turns
//!   into `shipping.dispatched`.
//! - Event-carried state transfer: every order event carries the whole delivery address with a
//!   version. Shipping keeps its own copy and ignores an update older than the one it holds.
//!
//! It ends by printing the broker's stats and asserting that every message is accounted for
//! (`Stats::conserved`). Time is paused (tokio's test clock), so the 1 s ack deadline costs nothing.
//!
//! Run it with `cargo run --example modular_monolith`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tubemail::ids::MessageId;
use tubemail::{Broker, Delivery, Outcome, Publisher, QueueSpec, Stats, TopicKind, TopicSpec, Topology};

/// Orders the Orders module places.
const ORDERS: u32 = 6;
/// Billing loses its first ack for every order divisible by this.
const LOST_ACK_EVERY: u32 = 3;
/// How long Billing's queue waits for an ack before it redelivers.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// A delivery address, carried whole by every event that changes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Address {
    /// Grows with every change; a copy with a lower version is stale.
    version: u32,
    street: String,
}

/// The application's events. The routing key names the kind; the payload carries the state.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Event {
    OrderPlaced { order: u32, cents: u64, address: Address },
    AddressChanged { order: u32, address: Address },
    Paid { order: u32, cents: u64 },
    Dispatched { order: u32, street: String },
}

fn topology() -> Topology {
    let topic = || TopicSpec::new(TopicKind::Topic);
    Topology::new()
        .topic("orders", topic())
        .topic("billing", topic())
        .topic("shipping", topic())
        .queue("billing-inbox", QueueSpec::default().ack_timeout(ACK_TIMEOUT))
        .queue("shipping-inbox", QueueSpec::default())
        .queue("analytics-inbox", QueueSpec::default())
        // 1:n: `orders.placed` goes to three modules.
        .bind("orders", "billing-inbox", "orders.placed")
        .bind("orders", "shipping-inbox", "orders.placed")
        .bind("orders", "analytics-inbox", "orders.#")
        // n:1: Shipping hears two topics on one queue, Analytics three.
        .bind("orders", "shipping-inbox", "orders.address_changed")
        .bind("billing", "shipping-inbox", "billing.paid")
        .bind("billing", "analytics-inbox", "billing.#")
        .bind("shipping", "analytics-inbox", "shipping.#")
}

/// Billing's own records.
#[derive(Debug, Default)]
struct Ledger {
    /// Message ids already handled: a redelivery of one of them changes nothing.
    handled: HashSet<MessageId>,
    /// Cents charged per order.
    charged: BTreeMap<u32, u64>,
    /// Redeliveries recognised and skipped.
    duplicates: u32,
}

/// Shipping's own copy of the state it needs, filled from events.
#[derive(Debug, Default)]
struct Depot {
    handled: HashSet<MessageId>,
    addresses: BTreeMap<u32, Address>,
    dispatched: BTreeMap<u32, String>,
    stale_ignored: u32,
}

impl Depot {
    /// Keeps `address` unless the depot already holds a newer one (or the same one).
    fn apply(&mut self, order: u32, address: &Address) {
        match self.addresses.get(&order) {
            Some(held) if held.version >= address.version => {
                self.stale_ignored += 1;
                println!(
                    "shipping:  order {order}: ignored address v{} ({:?}), holds v{}",
                    address.version, address.street, held.version
                );
            }
            _ => {
                println!("shipping:  order {order}: address v{} is {:?}", address.version, address.street);
                self.addresses.insert(order, address.clone());
            }
        }
    }
}

/// Analytics' counts.
#[derive(Debug, Default)]
struct Counts {
    handled: HashSet<MessageId>,
    by_key: BTreeMap<String, u32>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("a module's state lock is never poisoned: handlers do not panic holding it")
}

async fn start_billing(broker: &Broker, ledger: Arc<Mutex<Ledger>>) {
    let billing = broker.publisher("billing").expect("topic declared");
    let handler = move |d: Delivery<Event>| {
        let (ledger, billing) = (ledger.clone(), billing.clone());
        async move {
            let Event::OrderPlaced { order, cents, .. } = *d else { return Outcome::Reject };
            let duplicate = lock(&ledger).handled.contains(&d.id());
            if duplicate {
                lock(&ledger).duplicates += 1;
                println!(
                    "billing:   order {order}: redelivered (delivery {}), already charged",
                    d.delivery_count()
                );
                return Outcome::Ack;
            }
            // The first job enqueues its follow-up; only once that is published is the order done.
            if billing.publish("billing.paid", Event::Paid { order, cents }).await.is_err() {
                return Outcome::Nack { requeue: true };
            }
            let mut ledger = lock(&ledger);
            ledger.handled.insert(d.id());
            *ledger.charged.entry(order).or_default() += cents;
            println!("billing:   order {order}: charged {cents} cents, published billing.paid");
            if order % LOST_ACK_EVERY == 0 {
                // As a process that dies after its side effects and before its ack: nothing settles the
                // delivery, so the queue redelivers it after the ack deadline.
                println!("billing:   order {order}: crashed before acking");
                return Outcome::Defer;
            }
            Outcome::Ack
        }
    };
    broker.subscribe("billing-inbox", handler).await.expect("queue declared");
}

async fn start_shipping(broker: &Broker, depot: Arc<Mutex<Depot>>) {
    let shipping = broker.publisher("shipping").expect("topic declared");
    let handler = move |d: Delivery<Event>| {
        let (depot, shipping) = (depot.clone(), shipping.clone());
        async move {
            if lock(&depot).handled.contains(&d.id()) {
                return Outcome::Ack;
            }
            let outcome = match &*d {
                Event::OrderPlaced { order, address, .. } | Event::AddressChanged { order, address } => {
                    lock(&depot).apply(*order, address);
                    Outcome::Ack
                }
                Event::Paid { order, .. } => dispatch(&depot, &shipping, *order).await,
                Event::Dispatched { .. } => Outcome::Reject,
            };
            // Remembered only once handled, so that a requeued delivery is tried again.
            if outcome == Outcome::Ack {
                lock(&depot).handled.insert(d.id());
            }
            outcome
        }
    };
    broker.subscribe("shipping-inbox", handler).await.expect("queue declared");
}

/// Ships a paid order to the address Shipping holds, and tells the others.
async fn dispatch(depot: &Mutex<Depot>, shipping: &Publisher, order: u32) -> Outcome {
    let street = lock(depot).addresses.get(&order).map(|a| a.street.clone());
    let Some(street) = street else { return Outcome::Nack { requeue: true } };
    let event = Event::Dispatched { order, street: street.clone() };
    if shipping.publish("shipping.dispatched", event).await.is_err() {
        return Outcome::Nack { requeue: true };
    }
    println!("shipping:  order {order}: dispatched to {street:?}");
    lock(depot).dispatched.insert(order, street);
    Outcome::Ack
}

async fn start_analytics(broker: &Broker, counts: Arc<Mutex<Counts>>) {
    let handler = move |d: Delivery<Event>| {
        let mut counts = lock(&counts);
        if counts.handled.insert(d.id()) {
            *counts.by_key.entry(d.key().to_owned()).or_default() += 1;
        }
        async { Outcome::Ack }
    };
    broker.subscribe("analytics-inbox", handler).await.expect("queue declared");
}

/// The Orders module: places orders, then changes two addresses, one change arriving late.
async fn run_orders(broker: &Broker) {
    let orders = broker.publisher("orders").expect("topic declared");
    let publish = |key: &'static str, event: Event| {
        let orders = orders.clone();
        async move { orders.publish(key, event).await.expect("orders topic is open") }
    };
    for order in 1..=ORDERS {
        let address = Address { version: 1, street: format!("{order} Old Road") };
        println!("orders:    order {order} placed");
        publish("orders.placed", Event::OrderPlaced { order, cents: u64::from(order) * 1_000, address })
            .await;
    }
    // Version 2 of order 2's address was sent before version 3 but reaches the broker after it (a slow
    // retry upstream), so it carries older state than Shipping already holds.
    let changes = [(2, 3, "3 New Lane"), (2, 2, "2 Mid Street"), (5, 2, "5 Park Row")];
    for (order, version, street) in changes {
        println!("orders:    order {order}: address v{version} is {street:?}");
        let address = Address { version, street: street.to_owned() };
        publish("orders.address_changed", Event::AddressChanged { order, address }).await;
    }
}

/// Waits until the broker is idle (`Broker::idle`), within ten minutes of the paused clock.
async fn wait_quiet(broker: &Broker) {
    let idle = tokio::time::timeout(Duration::from_secs(600), broker.idle()).await;
    idle.expect("the broker went quiet");
}

fn print_stats(stats: &Stats) {
    print!("{stats}");
}

#[actix::main]
async fn main() {
    tokio::time::pause();
    let broker = Broker::start(topology()).expect("the topology is valid");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let depot = Arc::new(Mutex::new(Depot::default()));
    let counts = Arc::new(Mutex::new(Counts::default()));
    start_billing(&broker, ledger.clone()).await;
    start_shipping(&broker, depot.clone()).await;
    start_analytics(&broker, counts.clone()).await;

    run_orders(&broker).await;
    wait_quiet(&broker).await;
    let report = broker.shutdown(Duration::from_secs(1)).await;

    let (ledger, depot, counts) = (lock(&ledger), lock(&depot), lock(&counts));
    println!(
        "\nbilling charged {} orders once each; {} redeliveries skipped",
        ledger.charged.len(),
        ledger.duplicates
    );
    println!(
        "shipping dispatched {:?}; {} stale address updates ignored",
        depot.dispatched, depot.stale_ignored
    );
    println!("analytics counted {:?}\n", counts.by_key);
    print_stats(&report.stats);

    let expected_charges: BTreeMap<u32, u64> = (1..=ORDERS).map(|o| (o, u64::from(o) * 1_000)).collect();
    assert_eq!(ledger.charged, expected_charges, "every order charged exactly once");
    assert_eq!(ledger.duplicates, ORDERS / LOST_ACK_EVERY, "every lost ack was redelivered once");
    assert_eq!(depot.dispatched[&2], "3 New Lane", "the stale version 2 address was ignored");
    assert_eq!(depot.stale_ignored, 1);
    assert_eq!(report.stats.queues["billing-inbox"].redelivered, u64::from(ORDERS / LOST_ACK_EVERY));
    assert!(report.stats.conserved(), "a message was lost without a reason: {:#?}", report.stats);
    println!("\nconservation holds: every message was acked, dead-lettered, dropped with a reason or is still queued");
}
