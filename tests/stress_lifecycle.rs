//! A bounded multi-threaded stress test of what the single-threaded simulator cannot reach: several
//! publisher threads, topology churn (delete, re-declare, bind, unbind), subscribers coming and going
//! with handlers that panic, nack and sleep, then a shutdown. At the end every confirmed copy is
//! enqueued in some queue incarnation, and every counter balances.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tubemail::{
    Broker, Confirm, Delivery, DeliveryMode, Outcome, Overflow, QueueSpec, SubscribeOptions, TopicKind,
    TopicSpec, Topology,
};

const PUBLISHERS: u32 = 3;
const PUBLISHES: u32 = 6_000;
const CHURN_ROUNDS: u32 = 240;
const QUEUES: [&str; 4] = ["alo", "amo", "blocking", "spare"];

fn spec(name: &str) -> QueueSpec {
    match name {
        "amo" => QueueSpec::default().delivery(DeliveryMode::AtMostOnce).dead_letter("dead"),
        "blocking" => QueueSpec::default().overflow(Overflow::Block).depth_max(16),
        _ => {
            QueueSpec::default().ack_timeout(Duration::from_millis(50)).delivery_limit(5).dead_letter("dead")
        }
    }
}

fn topology() -> Topology {
    let mut topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Topic).alternate("unrouted"))
        .queue("dead", QueueSpec::default())
        .queue("unrouted", QueueSpec::default());
    for q in QUEUES {
        topology = topology.queue(q, spec(q)).bind("t", q, "#");
    }
    topology
}

/// A handler that acks most deliveries, nacks some, panics on some and sleeps on some.
fn handler(seen: Arc<AtomicU64>) -> impl FnMut(Delivery<u32>) -> Outcome + Send + 'static {
    move |d: Delivery<u32>| {
        seen.fetch_add(1, Ordering::Relaxed);
        match *d % 50 {
            0 if !d.redelivered() => panic!("a handler fails"),
            1 => Outcome::Nack { requeue: true },
            2 => Outcome::Reject,
            3 => {
                std::thread::sleep(Duration::from_millis(1));
                Outcome::Ack
            }
            _ => Outcome::Ack,
        }
    }
}

#[actix::test]
async fn publishing_threads_against_topology_churn_conserve_every_message() {
    let broker = Broker::start(topology()).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let confirmed = Arc::new(AtomicU64::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for p in 0..PUBLISHERS {
        let (broker, confirmed, done) = (broker.clone(), confirmed.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..PUBLISHES {
                let key = format!("p{p}.k{}", i % 7);
                match futures::executor::block_on(broker.publish("t", &key, i)) {
                    Ok(Confirm::Routed { queues }) => {
                        assert!(queues > 0, "routed to no queue");
                        confirmed.fetch_add(u64::from(queues), Ordering::Relaxed);
                    }
                    Ok(Confirm::Refused { accepted, .. }) => {
                        confirmed.fetch_add(u64::from(accepted), Ordering::Relaxed);
                    }
                    Ok(Confirm::Unroutable { alternate: Some(_) }) => {
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Confirm::Unroutable { alternate: None }) => {}
                    Ok(Confirm::Sent) => unreachable!("only a remote broker's try_publish answers Sent"),
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
            done.send(()).unwrap();
        });
    }
    let mut subscriptions = Vec::new();
    for round in 0..CHURN_ROUNDS {
        let queue = QUEUES[(round % 4) as usize];
        match round % 6 {
            0 => {
                let options = SubscribeOptions::default().prefetch(1 + round % 16);
                if let Ok(s) = broker.subscribe_sync_with(queue, options, handler(seen.clone())).await {
                    subscriptions.push(s);
                }
            }
            1 if !subscriptions.is_empty() => {
                let s = subscriptions.swap_remove((round as usize) % subscriptions.len());
                s.unsubscribe(Duration::from_millis(u64::from(round % 3) * 5)).await;
            }
            2 => {
                let _ = broker.delete_queue(queue).await;
            }
            3 => {
                let _ = broker.declare_queue(queue, spec(queue));
                let _ = broker.bind("t", queue, "#").await;
            }
            4 => {
                let _ = broker.unbind("t", queue, "#").await;
            }
            _ => {
                let _ = broker.bind("t", queue, &format!("p{}.#", round % PUBLISHERS)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Subscribers for every queue, so that blocked publishers get room and finish.
    for q in QUEUES.into_iter().chain(["dead", "unrouted"]) {
        let _ = broker.declare_queue(q, spec(q));
        subscriptions.push(broker.subscribe_sync(q, handler(seen.clone())).await.unwrap());
    }
    for _ in 0..PUBLISHERS {
        done_rx.recv().await.expect("a publisher thread finished");
    }
    let report = broker.shutdown(Duration::from_secs(2)).await;
    let stats = report.stats;
    assert!(stats.conserved(), "{stats:?}");
    let enqueued_from_topics: u64 = stats.topics["t"].routed;
    assert_eq!(
        enqueued_from_topics,
        confirmed.load(Ordering::Relaxed),
        "confirmed copies and routed copies differ"
    );
    let published: u64 = stats.topics["t"].published;
    assert_eq!(published, u64::from(PUBLISHERS * PUBLISHES));
    assert!(seen.load(Ordering::Relaxed) > 0, "no handler ran");
}
