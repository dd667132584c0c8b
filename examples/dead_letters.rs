//! Dead letters: where messages go when they cannot be handled, and how to see why.
//!
//! What it shows:
//! - A delivery limit: `payments` gives a message `DELIVERY_LIMIT` deliveries. Its consumer nacks
//!   poison payments with requeue every time, so they are dead-lettered (reason `delivery_limit`)
//!   once the limit is reached; a malformed payment is rejected at once (reason `rejected`).
//! - A time to live: `reminders` drops what is not consumed within `TTL`; it has no consumer here,
//!   so its messages expire and are dead-lettered (reason `expired`).
//! - A `reject-publish` queue: `audit` holds `AUDIT_DEPTH` messages at most and refuses the rest;
//!   the publisher's confirm names the queue that refused (nothing is dead-lettered: the message
//!   never entered).
//! - A consumer on the dead-letter queue `dead` prints each message's death history (RabbitMQ's
//!   `x-death`): the queue it died in, why, and how often.
//!
//! Time is paused (tokio's test clock), so the TTL passes at once. It ends by asserting that every
//! message is accounted for (`Stats::conserved`).
//!
//! Run it with `cargo run --example dead_letters`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tubemail::{
    Broker, Confirm, DeathReason, Delivery, Outcome, Overflow, QueueSpec, Stats, TopicKind, TopicSpec,
    Topology,
};

const DELIVERY_LIMIT: u32 = 3;
const TTL: Duration = Duration::from_millis(500);
const AUDIT_DEPTH: usize = 2;

/// A payment; `poison` ones always fail, `malformed` ones can never succeed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    id: u32,
    poison: bool,
    malformed: bool,
}

/// What every queue of this example carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Event {
    Payment(Payment),
    Reminder(String),
    Audit(String),
}

fn topology() -> Topology {
    let payments = QueueSpec::default().delivery_limit(DELIVERY_LIMIT).dead_letter("dead");
    let reminders = QueueSpec::default().message_ttl(TTL).dead_letter("dead");
    let audit = QueueSpec::default().depth_max(AUDIT_DEPTH).overflow(Overflow::RejectPublish);
    Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic))
        .queue("payments", payments)
        .queue("reminders", reminders)
        .queue("audit", audit)
        .queue("dead", QueueSpec::default())
        .bind("events", "payments", "payments.*")
        .bind("events", "reminders", "reminders.*")
        .bind("events", "audit", "audit.*")
}

/// The payments consumer: acks good payments, nacks poison ones with requeue (they may be
/// transient failures, as far as it knows), rejects malformed ones at once.
async fn start_payments(broker: &Broker) {
    let handler = |d: Delivery<Event>| async move {
        let Event::Payment(p) = &*d else { return Outcome::Reject };
        match (p.malformed, p.poison) {
            (true, _) => {
                println!("payments: payment {} is malformed: rejected", p.id);
                Outcome::Reject
            }
            (false, true) => {
                println!("payments: payment {} failed on delivery {}: requeued", p.id, d.delivery_count());
                Outcome::Nack { requeue: true }
            }
            (false, false) => {
                println!("payments: payment {} done", p.id);
                Outcome::Ack
            }
        }
    };
    broker.subscribe("payments", handler).await.expect("queue declared");
}

/// The dead-letter consumer: prints each death history and reports the newest reason.
async fn start_dead(broker: &Broker) -> mpsc::UnboundedReceiver<DeathReason> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |d: Delivery<Event>| {
        println!("dead:     {:?} (key {}, message {})", *d, d.key(), d.id().0);
        for death in d.deaths() {
            // `DeathReason`'s `Display` ignores width, so pad its string.
            let reason = death.reason.to_string();
            println!(
                "            died in {:<9} reason {reason:<14} count {} at {} ms",
                death.queue, death.count, death.at_ms
            );
        }
        if let Some(newest) = d.deaths().first() {
            tx.send(newest.reason).expect("main waits for the dead letters");
        }
        async { Outcome::Ack }
    };
    broker.subscribe("dead", handler).await.expect("queue declared");
    rx
}

/// Publishes the audit entries: the queue holds `AUDIT_DEPTH`, the confirms of the rest say refused.
async fn publish_audit(broker: &Broker) -> usize {
    let mut refused = 0;
    for i in 0..AUDIT_DEPTH + 2 {
        let entry = Event::Audit(format!("entry {i}"));
        let confirm = broker.publish("events", "audit.entry", entry).await.expect("broker running");
        println!("audit:    entry {i}: {confirm:?}");
        if let Confirm::Refused { accepted, queues } = &confirm {
            assert_eq!((*accepted, queues.as_slice()), (0, ["audit".to_owned()].as_slice()));
            refused += 1;
        }
    }
    refused
}

/// Waits until the broker is idle (`Broker::idle`), within ten minutes of the paused clock.
async fn wait_quiet(broker: &Broker) -> Stats {
    let idle = tokio::time::timeout(Duration::from_secs(600), broker.idle()).await;
    idle.expect("the broker went quiet");
    broker.stats().await
}

#[actix::main]
async fn main() {
    tokio::time::pause();
    let broker = Broker::start(topology()).expect("the topology is valid");
    start_payments(&broker).await;
    let mut dead = start_dead(&broker).await;

    let payments =
        [(1, false, false), (2, true, false), (3, false, true), (4, false, false), (5, true, false)];
    for (id, poison, malformed) in payments {
        let payment = Event::Payment(Payment { id, poison, malformed });
        broker.publish("events", "payments.card", payment).await.expect("broker running");
    }
    for who in ["ada", "grace"] {
        broker
            .publish("events", "reminders.email", Event::Reminder(format!("remind {who}")))
            .await
            .expect("running");
    }
    let refused = publish_audit(&broker).await;

    // Nobody consumes reminders: once the TTL has passed they expire into `dead`.
    tokio::time::sleep(TTL * 2).await;
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let wait = tokio::time::timeout(Duration::from_secs(60), dead.recv());
        reasons.push(wait.await.expect("every dead letter arrives").expect("dead consumer running"));
    }
    reasons.sort();
    let stats = wait_quiet(&broker).await;
    let report = broker.shutdown(Duration::from_secs(1)).await;

    println!();
    for (name, q) in &stats.queues {
        println!(
            "{name:<9} enqueued {}, refused {}, delivered {}, acked {}, nacked {}, dead-lettered {}, ready {}",
            q.enqueued, q.refused, q.delivered, q.acked, q.nacked, q.dead_lettered, q.ready
        );
    }
    use DeathReason::{DeliveryLimit, Expired, Rejected};
    assert_eq!(reasons, [Rejected, Expired, Expired, DeliveryLimit, DeliveryLimit]);
    assert_eq!(refused, 2, "two audit entries refused");
    assert_eq!(stats.queues["audit"].refused, 2);
    assert_eq!(stats.queues["payments"].dead_lettered, 3);
    assert_eq!(stats.queues["reminders"].dead_lettered, 2);
    assert_eq!(stats.queues["dead"].acked, 5);
    assert!(report.stats.conserved(), "a message was lost without a reason: {:#?}", report.stats);
    println!("conservation holds: refused publishes never entered; every other message is accounted for");
}
