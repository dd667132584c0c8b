//! Queue lifecycle: `expires` deletes a queue unused for that long, and `auto_delete` deletes it when
//! its last consumer leaves. A deleted queue's messages are counted as `dropped.deleted`.

mod common;
use common::wait_until;

use std::time::Duration;

use tokio::sync::mpsc;
use tubemail::{
    Broker, Delivery, Outcome, QueueSpec, QueueStats, SubscribeError, Subscription, TopicKind, TopicSpec,
    Topology,
};

const EXPIRES: Duration = Duration::from_secs(10);

fn topology(spec: QueueSpec) -> Topology {
    Topology::new()
        .topic("t", TopicSpec::new(TopicKind::Fanout))
        .queue("q", spec)
        .queue("other", QueueSpec::default())
        .bind("t", "q", "")
        .bind("t", "other", "")
}

async fn q(broker: &Broker) -> QueueStats {
    broker.stats().await.queue("q").expect("live or deleted").clone()
}

async fn subscribe_acking(broker: &Broker) -> (Subscription, mpsc::UnboundedReceiver<u32>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                Outcome::Ack
            }
        })
        .await
        .unwrap();
    (sub, rx)
}

#[actix::test]
async fn an_unused_queue_is_deleted_after_expires_and_not_before() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().expires(EXPIRES))).unwrap();
    for i in 0..2_u32 {
        broker.publish("t", "", i).await.unwrap();
    }
    tokio::time::sleep(EXPIRES - Duration::from_millis(100)).await;
    let before = q(&broker).await;
    assert!(!before.deleted, "deleted before expires: {before:?}");
    assert_eq!(before.ready, 2);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = q(&broker).await;
    assert!(after.deleted, "not deleted after expires: {after:?}");
    assert_eq!((after.ready, after.dropped.deleted, after.dead_lettered), (0, 2, 0), "{after:?}");

    // Publishes to its topic no longer reach it; the other queue still gets them.
    broker.publish("t", "", 9_u32).await.unwrap();
    let stats = broker.stats().await;
    assert_eq!(stats.queue("q").expect("deleted").enqueued, 2, "a deleted queue took a message");
    assert_eq!(stats.queues["other"].enqueued, 3);
    assert!(stats.conserved(), "{stats:?}");
    assert!(matches!(broker.subscribe("q", |_: Delivery<u32>| async { Outcome::Ack }).await,
        Err(SubscribeError::UnknownQueue(name)) if name == "q"));
}

#[actix::test]
async fn a_consumer_keeps_an_expiring_queue_alive() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().expires(EXPIRES))).unwrap();
    let (sub, mut rx) = subscribe_acking(&broker).await;
    tokio::time::sleep(EXPIRES * 6).await;
    assert!(!q(&broker).await.deleted, "deleted while it had a consumer");
    broker.publish("t", "", 1_u32).await.unwrap();
    assert_eq!(rx.recv().await, Some(1));

    let report = sub.unsubscribe(Duration::from_secs(1)).await;
    assert!(report.drained);
    // The clock restarts when the last consumer leaves.
    tokio::time::sleep(EXPIRES - Duration::from_millis(100)).await;
    assert!(!q(&broker).await.deleted, "deleted sooner than expires after its consumer left");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(q(&broker).await.deleted, "not deleted once unused for expires");
}

#[actix::test]
async fn auto_delete_deletes_when_the_last_consumer_leaves_not_before() {
    tokio::time::pause();
    let broker = Broker::start(topology(QueueSpec::default().auto_delete(true))).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!q(&broker).await.deleted, "deleted before it ever had a consumer");

    let (first, _rx1) = subscribe_acking(&broker).await;
    let (second, mut rx2) = subscribe_acking(&broker).await;
    first.unsubscribe(Duration::from_secs(1)).await;
    let stats = q(&broker).await;
    assert!(!stats.deleted, "deleted while a consumer remained: {stats:?}");
    assert_eq!(stats.consumers, 1);
    broker.publish("t", "", 3_u32).await.unwrap();
    assert_eq!(rx2.recv().await, Some(3));
    wait_until(&broker, "the ack", |s| s.queues["q"].acked == 1).await;

    broker.publish("t", "", 4_u32).await.unwrap();
    // Wait for the delivery so the message is in flight or acked, then leave.
    assert_eq!(rx2.recv().await, Some(4));
    second.unsubscribe(Duration::from_secs(1)).await;
    let stats = broker.stats().await;
    let q = stats.queue("q").expect("deleted");
    assert!(q.deleted, "not deleted when its last consumer left: {q:?}");
    assert_eq!(q.consumers, 0);
    assert!(stats.conserved(), "{stats:?}");
}

#[actix::test]
async fn deleting_a_queue_counts_held_deliveries_as_deleted() {
    // A consumer holds deliveries at their delivery limit when the queue is deleted: as the docs of
    // `Broker::delete_queue` say, they are counted as `dropped.deleted`, not dead-lettered (RabbitMQ does
    // not dead-letter the messages of a deleted queue).
    tokio::time::pause();
    let spec = QueueSpec::default().delivery_limit(1).dead_letter("other");
    let broker = Broker::start(
        Topology::new()
            .topic("t", TopicSpec::new(TopicKind::Direct))
            .queue("q", spec)
            .queue("other", QueueSpec::default())
            .bind("t", "q", "k"),
    )
    .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _sub = broker
        .subscribe("q", move |d: Delivery<u32>| {
            let tx = tx.clone();
            async move {
                tx.send(*d).unwrap();
                Outcome::Defer
            }
        })
        .await
        .unwrap();
    broker.publish("t", "k", 1_u32).await.unwrap();
    broker.publish("t", "k", 2_u32).await.unwrap();
    assert_eq!(rx.recv().await, Some(1));
    let final_q = broker.delete_queue("q").await.unwrap();
    assert!(final_q.deleted);
    assert!(final_q.conserved(), "{final_q:?}");
    assert_eq!((final_q.dropped.deleted, final_q.dead_lettered), (2, 0), "{final_q:?}");
    let stats = broker.stats().await;
    let other = &stats.queues["other"];
    assert_eq!(
        final_q.dead_lettered, other.enqueued,
        "q counts dead letters that never reached its dead-letter queue: q {final_q:?}, dlq {other:?}"
    );
    assert!(stats.conserved(), "{stats:?}");
}
