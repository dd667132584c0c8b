//! Single active consumer: only the oldest consumer receives; when it leaves, the next takes over and
//! receives the rest in publish order, the first's unacked deliveries requeued at their positions.

use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    Acker, Broker, Delivery, Outcome, QueueSpec, SubscribeOptions, Subscription, TopicKind, TopicSpec,
    Topology,
};

type Seen = (u32, bool, Acker);

/// A subscriber that acks even values and defers odd ones, reporting each delivery.
async fn subscriber(broker: &Broker, prefetch: u32) -> (Subscription, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = broker
        .subscribe_with("q", SubscribeOptions::default().prefetch(prefetch), move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                let outcome = if (*d).is_multiple_of(2) { Outcome::Ack } else { Outcome::Defer };
                tx.send((*d, d.redelivered(), d.acker())).unwrap();
                outcome
            }
        })
        .await
        .unwrap();
    (sub, rx)
}

#[actix::test]
async fn only_the_first_consumer_receives_and_the_second_takes_over_in_order() {
    tokio::time::pause();
    let topology = Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", QueueSpec::default().single_active_consumer(true))
        .bind("t", "q", "");
    let broker = Broker::start(topology).unwrap();
    let (first, mut first_rx) = subscriber(&broker, 4).await;
    let (_second, mut second_rx) = subscriber(&broker, 64).await;
    for i in 0..10_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    // The first acks 0, 2, 4, 6 and holds 1, 3, 5, 7 (its prefetch); 8 and 9 stay ready.
    let mut first_seen = Vec::new();
    for _ in 0..8 {
        first_seen.push(first_rx.recv().await.unwrap().0);
    }
    assert_eq!(first_seen, (0..8).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(second_rx.try_recv().is_err(), "the second consumer received while the first was active");
    let q = broker.stats().await.queues["q"].clone();
    assert_eq!((q.acked, q.in_flight, q.ready), (4, 4, 2), "{q:?}");

    let report = first.unsubscribe(Duration::from_millis(100)).await;
    assert_eq!(report.requeued, 4);
    let mut second_seen = Vec::new();
    for _ in 0..6 {
        let (value, redelivered, acker) = second_rx.recv().await.unwrap();
        second_seen.push((value, redelivered));
        if value % 2 == 1 {
            acker.ack(false).await.unwrap();
        }
    }
    assert_eq!(second_seen, [(1, true), (3, true), (5, true), (7, true), (8, false), (9, false)]);
    let stats = broker.stats().await;
    let q = &stats.queues["q"];
    assert_eq!((q.acked, q.in_flight, q.ready, q.consumers), (10, 0, 0, 1), "{q:?}");
    assert!(stats.conserved(), "{stats:?}");
}
