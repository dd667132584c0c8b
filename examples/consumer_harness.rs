//! Property-testing a consumer against delivery faults with `tubemail_sim::Harness`.
//!
//! A payments consumer charges each payment. Under at-least-once delivery with duplicated
//! deliveries, lost acks and crashes after the handler ran, the plain consumer charges some payments
//! twice: the harness finds a seed, shrinks it to a small case and prints what replays it. The same
//! consumer wrapped in `Idempotent`, with a dedup store that outlives restarts, passes every seed.
//!
//! Run: `cargo run --example consumer_harness`

use std::collections::BTreeMap;
use std::time::Duration;

use tubemail::consumer::{DedupStore, Idempotent};
use tubemail::{Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
use tubemail_sim::{FaultPlan, Harness};

/// Charges per payment.
type Charges = BTreeMap<u32, u32>;

fn harness(idempotent: bool) -> Harness<u32, Charges> {
    let topology = Topology::new()
        .topic("payments", TopicSpec::new(TopicKind::Fanout))
        .queue("billing", QueueSpec::default().ack_timeout(Duration::from_millis(200)))
        .bind("payments", "billing", "");
    Harness::<u32, Charges>::new(topology, "payments")
        .workload(|n| (0..n as u32).map(|i| (format!("payment.{i}"), i)).collect())
        .subscribe(move |broker, charges| {
            Box::pin(async move {
                let charge = move |d: Delivery<u32>| {
                    *charges.lock().expect("charges").entry(*d).or_default() += 1;
                    async { Outcome::Ack }
                };
                if idempotent {
                    let handler = Idempotent::new(DedupStore::default(), charge);
                    broker.subscribe("billing", handler).await.expect("the queue exists");
                } else {
                    broker.subscribe("billing", charge).await.expect("the queue exists");
                }
            })
        })
        .invariant(|charges, workload| match workload.iter().find(|(_, p)| charges.get(p) != Some(&1)) {
            Some((_, p)) => {
                Err(format!("payment {p} charged {} times", charges.get(p).copied().unwrap_or(0)))
            }
            None => Ok(()),
        })
}

fn main() {
    let plan: FaultPlan = "duplicate,ack-loss,crash-after".parse().expect("fault kinds");
    match harness(false).check(500, 100, &plan) {
        Ok(()) => panic!("the plain consumer should have been caught"),
        Err(failure) => println!("plain consumer, caught and shrunk:\n{failure}\n"),
    }
    match harness(true).check(500, 100, &plan) {
        Ok(()) => println!("idempotent consumer: every payment charged once on 500 seeds"),
        Err(failure) => panic!("the idempotent consumer failed:\n{failure}"),
    }
}
