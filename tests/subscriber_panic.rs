//! A handler that panics: the subscriber restarts. At-least-once: what it held is redelivered and
//! nothing is lost. At-most-once: the panicking delivery is lost (and counted), never delivered twice.

mod common;
use common::wait_until;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    Broker, Delivery, DeliveryMode, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology,
};

fn topology(spec: QueueSpec) -> Topology {
    Topology::new().topic("t", TopicSpec::new(TopicKind::Fanout)).queue("q", spec).bind("t", "q", "")
}

#[actix::test]
async fn at_least_once_redelivers_what_the_panicking_subscriber_held_and_loses_nothing() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    for i in 0..10_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let panicked = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let flag = panicked.clone();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            let (tx, flag) = (tx.clone(), flag.clone());
            async move {
                if *d == 3 && !flag.swap(true, Ordering::SeqCst) {
                    panic!("handler fails on message 3");
                }
                tx.send((*d, d.delivery_count())).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    let stats = wait_until(&broker, "every ack", |s| s.queues["q"].acked == 10).await;
    assert!(panicked.load(Ordering::SeqCst));
    let mut handled: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    while let Ok((value, count)) = rx.try_recv() {
        handled.entry(value).or_default().push(count);
    }
    assert_eq!(handled.keys().copied().collect::<Vec<_>>(), (0..10).collect::<Vec<_>>(), "lost messages");
    assert_eq!(handled[&3], [2], "the panicking delivery comes back as a redelivery");
    // Everything dispatched after it was held unacked by the subscriber at the panic: redelivered.
    for value in 4..10 {
        assert_eq!(handled[&value], [2], "message {value} held at the panic");
    }
    let q = &stats.queues["q"];
    assert_eq!(q.restarts, 1, "{q:?}");
    assert_eq!((q.enqueued, q.acked, q.ready, q.in_flight, q.dropped.total()), (10, 10, 0, 0, 0), "{q:?}");
    assert!(q.redelivered >= 7, "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_panic_before_the_future_is_built_is_caught_too() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default())).unwrap();
    let panicked = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let flag = panicked.clone();
    broker
        .subscribe("q", move |d: Delivery<u32>| {
            if *d == 1 && !flag.swap(true, Ordering::SeqCst) {
                panic!("handler fails on message 1 before returning a future");
            }
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let stats = wait_until(&broker, "every ack", |s| s.queues["q"].acked == 3).await;
    let mut handled = BTreeSet::new();
    while let Ok(value) = rx.try_recv() {
        handled.insert(value);
    }
    assert_eq!(handled, BTreeSet::from([0, 1, 2]));
    assert_eq!(stats.queues["q"].restarts, 1);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn at_most_once_counts_the_panicking_delivery_lost_and_never_delivers_it_again() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().delivery(DeliveryMode::AtMostOnce))).unwrap();
    for i in 0..5_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(1), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                if *d == 2 {
                    panic!("handler fails on message 2");
                }
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    let stats = wait_until(&broker, "the queue to empty", |s| {
        let q = &s.queues["q"];
        q.ready == 0 && q.in_flight == 0 && q.acked == 4
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut handled = Vec::new();
    while let Ok(value) = rx.try_recv() {
        handled.push(value);
    }
    assert_eq!(handled, [0, 1, 2, 3, 4], "message 2 delivered again, or others lost");
    let q = &broker.stats().await.queues["q"];
    assert_eq!((q.restarts, q.dropped.lost_at_most_once, q.delivered, q.redelivered), (1, 1, 5, 0), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}
