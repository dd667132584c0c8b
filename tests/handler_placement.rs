//! Handlers that cannot stall each other: queues and their subscribers spread over arbiters, a
//! blocking handler runs on a thread of its own, and a sync handler found blocking is moved to one.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{Broker, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};

fn topology(queues: &[&str]) -> Topology {
    let mut topology = Topology::new().topic("t", TopicSpec::new(TopicKind::Direct));
    for q in queues {
        topology = topology.queue(*q, QueueSpec::default()).bind("t", *q, *q);
    }
    topology
}

/// Subscribes a sync handler that reports the thread each delivery ran on, after `work`.
async fn on_threads(broker: &Broker, queue: &str, work: Duration) -> mpsc::UnboundedReceiver<(u32, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    broker
        .subscribe_sync(queue, move |d: Delivery<u32>| {
            std::thread::sleep(work);
            let name = std::thread::current().name().unwrap_or("unnamed").to_owned();
            tx.send((*d, name)).unwrap();
            Outcome::Ack
        })
        .await
        .unwrap();
    rx
}

#[actix::test]
async fn queues_spread_over_the_arbiters_with_their_subscribers() {
    let broker = Broker::builder(topology(&["a", "b"])).arbiters(2).start().unwrap();
    let threads = Arc::new(Mutex::new(Vec::<(String, ThreadId)>::new()));
    for q in ["a", "b"] {
        let (threads, name) = (threads.clone(), q.to_owned());
        broker
            .subscribe_sync(q, move |_: Delivery<u32>| {
                threads.lock().unwrap().push((name.clone(), std::thread::current().id()));
                Outcome::Ack
            })
            .await
            .unwrap();
        broker.publish("t", q, 1_u32).await.unwrap();
    }
    broker.idle().await;
    let threads = threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 2, "{threads:?}");
    assert_ne!(threads[0].1, threads[1].1, "both queues' handlers ran on one arbiter: {threads:?}");
    broker.shutdown(Duration::from_secs(1)).await;
}

#[actix::test]
async fn one_arbiter_when_asked_runs_every_handler_on_the_starting_thread() {
    let broker = Broker::builder(topology(&["a", "b"])).arbiters(1).start().unwrap();
    let here = std::thread::current().id();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for q in ["a", "b"] {
        let tx = tx.clone();
        broker
            .subscribe_sync(q, move |_: Delivery<u32>| {
                tx.send(std::thread::current().id()).unwrap();
                Outcome::Ack
            })
            .await
            .unwrap();
        broker.publish("t", q, 1_u32).await.unwrap();
    }
    assert_eq!((rx.recv().await, rx.recv().await), (Some(here), Some(here)));
}

#[actix::test]
async fn a_blocking_subscription_runs_on_a_thread_of_its_own() {
    let broker = Broker::builder(topology(&["a"])).arbiters(1).start().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    broker
        .subscribe_blocking("a", move |d: Delivery<u32>| {
            tx.send((*d, std::thread::current().name().map(str::to_owned))).unwrap();
            Outcome::Ack
        })
        .await
        .unwrap();
    for i in 0..3_u32 {
        broker.publish("t", "a", i).await.unwrap();
    }
    for i in 0..3_u32 {
        let (value, thread) = rx.recv().await.unwrap();
        assert_eq!(value, i, "in order");
        assert_eq!(thread.as_deref(), Some("tubemail-a-blocking"));
    }
    broker.idle().await;
    assert_eq!(broker.stats().await.queues["a"].acked, 3);
}

#[actix::test]
async fn a_sync_handler_found_blocking_moves_off_the_arbiter() {
    let broker = Broker::builder(topology(&["slow"])).arbiters(1).start().unwrap();
    let mut rx = on_threads(&broker, "slow", Duration::from_millis(120)).await;
    for i in 0..3_u32 {
        broker.publish("t", "slow", i).await.unwrap();
        // One at a time, so that each is its own batch.
        let (value, thread) = rx.recv().await.unwrap();
        assert_eq!(value, i);
        if i == 0 {
            assert!(!thread.starts_with("tubemail-slow-"), "the first ran on the arbiter: {thread}");
        } else {
            assert!(thread.starts_with("tubemail-slow-"), "delivery {i} still ran on the arbiter: {thread}");
        }
    }
}

#[actix::test]
async fn a_panic_in_a_blocking_handler_restarts_the_subscriber_and_requeues() {
    let broker = Broker::builder(topology(&["a"])).arbiters(1).start().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut first = true;
    broker
        .subscribe_blocking("a", move |d: Delivery<u32>| {
            if std::mem::take(&mut first) {
                panic!("the first delivery fails");
            }
            tx.send((*d, d.redelivered())).unwrap();
            Outcome::Ack
        })
        .await
        .unwrap();
    broker.publish("t", "a", 7_u32).await.unwrap();
    assert_eq!(rx.recv().await, Some((7, true)));
    broker.idle().await;
    let q = broker.stats().await.queues["a"].clone();
    assert_eq!((q.acked, q.restarts), (1, 1), "{q:?}");
}
