//! The harness catches a consumer that is not idempotent, and a dedup window that forgets on restart,
//! while the idempotent consumer with a store that outlives restarts passes.

use std::collections::BTreeMap;
use std::time::Duration;

use tubemail::consumer::{DedupStore, Idempotent};
use tubemail::{Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};
use tubemail_sim::{FaultPlan, Harness};

type Effects = BTreeMap<u32, u32>;

fn topology() -> Topology {
    Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Fanout))
        .queue("payments", QueueSpec::default().ack_timeout(Duration::from_millis(200)))
        .bind("events", "payments", "")
}

/// A harness whose handler charges each payment (an effect per value) through `wrap`.
fn harness(wrap: fn(DedupStore) -> Option<Mode>) -> Harness<u32, Effects> {
    Harness::<u32, Effects>::new(topology(), "events")
        .workload(|n| (0..n as u32).map(|i| (format!("pay.{i}"), i)).collect())
        .subscribe(move |broker, effects| {
            Box::pin(async move {
                let charge = move |d: Delivery<u32>| {
                    *effects.lock().unwrap().entry(*d).or_default() += 1;
                    async { Outcome::Ack }
                };
                let store = DedupStore::default();
                match wrap(store.clone()) {
                    None => broker.subscribe("payments", charge).await.unwrap(),
                    Some(Mode::Idempotent) => {
                        broker.subscribe("payments", Idempotent::new(store, charge)).await.unwrap()
                    }
                    Some(Mode::Forgetful) => broker
                        .subscribe("payments", Idempotent::forgetting_on_restart(store, charge))
                        .await
                        .unwrap(),
                };
            })
        })
        .invariant(|effects, workload| {
            for (_, value) in workload {
                match effects.get(value) {
                    Some(1) => {}
                    other => return Err(format!("payment {value} charged {other:?} times")),
                }
            }
            Ok(())
        })
}

enum Mode {
    Idempotent,
    Forgetful,
}

fn plan() -> FaultPlan {
    "duplicate,ack-loss,crash-after".parse().unwrap()
}

#[test]
fn a_consumer_that_is_not_idempotent_is_caught_and_shrunk() {
    let failure = harness(|_| None).check(1000, 40, &plan()).expect_err("double charges under at-least-once");
    assert!(failure.invariant.is_err(), "{failure}");
    assert!(failure.messages <= 40, "{failure}");
    let printed = failure.to_string();
    assert!(printed.contains(&format!("seed {}", failure.seed)), "{printed}");
}

#[test]
fn the_idempotent_consumer_charges_each_payment_once() {
    harness(|_| Some(Mode::Idempotent)).check(200, 40, &plan()).unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn a_dedup_window_that_forgets_on_restart_is_caught() {
    let failure =
        harness(|_| Some(Mode::Forgetful)).check(1000, 40, &plan()).expect_err("caught within 1000 seeds");
    assert!(failure.invariant.is_err(), "{failure}");
}
