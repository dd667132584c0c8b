//! Competing consumers: a queue hands its messages out round robin among the consumers with room.

mod common;
use common::wait_until;

use tokio::sync::mpsc;
use tubemail::{Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology};

fn topology() -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", QueueSpec::default())
        .bind("t", "q", "")
}

async fn consumer(
    broker: &Broker,
    name: &'static str,
    prefetch: u32,
    outcome: Outcome,
    tx: mpsc::UnboundedSender<(&'static str, u32)>,
) {
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(prefetch), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((name, *d)).unwrap();
                outcome
            }
        })
        .await
        .unwrap();
}

fn got(seen: &[(&str, u32)], name: &str) -> Vec<u32> {
    seen.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v).collect()
}

#[actix::test]
async fn messages_are_handed_out_round_robin() {
    tokio::time::pause();
    let broker = Broker::start(topology()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    for name in ["a", "b", "c"] {
        consumer(&broker, name, 64, Outcome::Ack, tx.clone()).await;
    }
    for i in 0..12_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..12 {
        seen.push(rx.recv().await.unwrap());
    }
    assert_eq!(got(&seen, "a"), [0, 3, 6, 9]);
    assert_eq!(got(&seen, "b"), [1, 4, 7, 10]);
    assert_eq!(got(&seen, "c"), [2, 5, 8, 11]);
    let stats = wait_until(&broker, "every ack", |s| s.queues["q"].acked == 12).await;
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn a_consumer_without_room_is_skipped() {
    tokio::time::pause();
    let broker = Broker::start(topology()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    // `a` holds one delivery forever; `b` acks.
    consumer(&broker, "a", 1, Outcome::Defer, tx.clone()).await;
    consumer(&broker, "b", 64, Outcome::Ack, tx.clone()).await;
    for i in 0..6_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(rx.recv().await.unwrap());
    }
    assert_eq!(got(&seen, "a"), [0]);
    assert_eq!(got(&seen, "b"), [1, 2, 3, 4, 5]);
    let stats = wait_until(&broker, "b's acks", |s| s.queues["q"].acked == 5).await;
    let q = &stats.queues["q"];
    assert_eq!((q.in_flight, q.ready), (1, 0), "{q:?}");
}
