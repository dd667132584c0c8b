use std::time::Duration;

use tubemail::{Broker, Confirm, Delivery, Outcome, QueueSpec, TopicKind, TopicSpec, Topology};

#[actix::test]
async fn publish_reaches_subscriber() {
    let topology = Topology::new()
        .topic("events", TopicSpec::new(TopicKind::Topic))
        .queue("billing", QueueSpec::default())
        .bind("events", "billing", "orders.*.paid");
    let broker = Broker::start(topology).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    broker
        .subscribe("billing", move |d: Delivery<u64>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).await.unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    for i in 0..10u64 {
        assert_eq!(
            broker.publish("events", "orders.1.paid", i).await.unwrap(),
            Confirm::Routed { queues: 1 }
        );
    }
    for i in 0..10u64 {
        assert_eq!(rx.recv().await, Some(i));
    }
    let report = broker.shutdown(Duration::from_secs(1)).await;
    let q = &report.stats.queues["billing"];
    assert_eq!(q.acked, 10, "{q:?}");
    assert!(report.stats.conserved(), "{:?}", report.stats);
}
