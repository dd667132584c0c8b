//! Prefetch: a subscriber holds at most `prefetch` unsettled deliveries, however many are ready.

use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    Acker, Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, TopicKind, TopicSpec, Topology,
};

const PREFETCH: u32 = 3;
const MESSAGES: u32 = 10;

#[actix::test]
async fn a_deferring_subscriber_never_holds_more_than_its_prefetch() {
    tokio::time::pause();
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", QueueSpec::default())
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    for i in 0..MESSAGES {
        broker.publish("t", "", i).await.unwrap();
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(u32, Acker)>();
    broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(PREFETCH), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send((*d, d.acker())).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();

    let mut held = Vec::new();
    for _ in 0..PREFETCH {
        held.push(rx.recv().await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err(), "a delivery beyond the prefetch");
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.in_flight, q.ready), (u64::from(PREFETCH), u64::from(MESSAGES - PREFETCH)), "{q:?}");

    // Each ack makes room for exactly one more.
    let mut acked = 0;
    while acked < MESSAGES {
        let (_, acker) = held.remove(0);
        acker.ack(false).await.unwrap();
        acked += 1;
        if acked + (held.len() as u32) < MESSAGES {
            held.push(rx.recv().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(rx.try_recv().is_err(), "a delivery beyond the prefetch after {acked} acks");
        let q = broker.stats().await.queues["q"].clone();
        let ready = u64::from(MESSAGES - acked) - held.len() as u64;
        assert_eq!((q.in_flight, q.ready), (held.len() as u64, ready), "after {acked} acks: {q:?}");
        assert!(q.in_flight <= u64::from(PREFETCH), "{q:?}");
    }
    let stats = broker.stats().await;
    assert_eq!(stats.queues["q"].acked, u64::from(MESSAGES));
    assert!(stats.conserved(), "{stats:?}");
}
